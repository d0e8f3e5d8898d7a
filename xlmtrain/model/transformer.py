"""`XLMTransformer`: the XLM encoder with transformers' `XLMModel` semantics and state-dict keys.

Post-LN blocks, embedding LayerNorm, exact-erf GELU or ReLU, optional language embeddings, learned or
frozen sinusoidal positions. Attention runs through `scaled_dot_product_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmtrain.model.config import XLMConfig
from xlmtrain.model.dropout import dropout, dropout_add
from xlmtrain.model.tied_embedding import TiedGradSlot, tied_embedding


@dataclass
class EncoderOutput:
    """Result of `XLMTransformer.encode`."""

    last_hidden_state: Tensor
    """(bs, slen, dim) output of the last block, zero at padded positions."""
    hidden_states: tuple[Tensor, ...] | None = None
    """n_layers + 1 tensors (bs, slen, dim): the embedding output, then each block's output."""


@dataclass
class SelectedPositions:
    """Where `encode` computes outputs (`output_positions`), laid out beforehand: built on the CPU with the batch
    (`select_positions`), it spares the encoder the host syncs a bool mask needs (its per-row maximum, boolean
    indexing). A dataclass of tensors, so Lightning moves it to the device with the batch."""

    mask: Tensor
    """bool (bs, slen): the selected positions."""
    slots: Tensor
    """long (bs, m), m = max selected per row: each row's selected positions in increasing order, then filler."""
    used: Tensor
    """long (n_sel,): indices of the selected slots in the flattened (bs * m) slots, row-major."""
    flat: Tensor
    """long (n_sel,): indices of the selected positions in the flattened (bs * slen) positions, row-major."""


def select_positions(mask: Tensor) -> SelectedPositions:
    """The layout of the bool (bs, slen) `mask`; reads its per-row maximum (free on the CPU, a sync elsewhere)."""
    counts = mask.sum(dim=1)  # (bs,)
    m = int(counts.max()) if mask.size(0) else 0
    # A stable sort puts each row's selected positions first, in increasing order.
    slots = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :m]  # (bs, m)
    used = torch.arange(m, device=mask.device)[None, :] < counts[:, None]  # (bs, m)
    return SelectedPositions(mask, slots, used.flatten().nonzero().squeeze(1), mask.flatten().nonzero().squeeze(1))


def sinusoidal_table(n_positions: int, dim: int) -> Tensor:
    """XLM's position table: `pos / 10000**(2*(j//2)/dim)`, sin on even columns, cos on odd ones. (n_pos, dim)."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (n_pos, 1)
    j = torch.arange(dim, dtype=torch.float64)
    angles = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (n_pos, dim)
    table = torch.empty(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()


def init_weights(module: nn.Module, config: XLMConfig) -> None:
    """transformers' XLM init: Linear N(0, init_std) + zero bias, Embedding N(0, embed_init_std) + zero pad row."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=config.init_std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=config.embed_init_std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype matmuls on `tensor` run in: the autocast dtype of its device when autocast is on."""
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


class MultiHeadAttention(nn.Module):
    """Self-attention with transformers' projection names (`q_lin`, `k_lin`, `v_lin`, `out_lin`)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_lin = nn.Linear(dim, dim)
        self.k_lin = nn.Linear(dim, dim)
        self.v_lin = nn.Linear(dim, dim)
        self.out_lin = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, attn_bias: Tensor | None, is_causal: bool, query_input: Tensor | None = None
    ) -> Tensor:
        """Keys and values from x (bs, slen, dim); queries from `query_input` (bs, m, dim), default x.

        attn_bias: None or additive, broadcastable to (bs, h, m, slen). Returns (bs, m, dim).
        """
        bs, slen, dim = x.shape
        query_input = x if query_input is None else query_input
        m = query_input.size(1)
        hd = dim // self.n_heads
        q = self.q_lin(query_input).view(bs, m, self.n_heads, hd).transpose(1, 2)  # (bs, h, m, hd)
        k = self.k_lin(x).view(bs, slen, self.n_heads, hd).transpose(1, 2)  # (bs, h, slen, hd)
        v = self.v_lin(x).view(bs, slen, self.n_heads, hd).transpose(1, 2)  # (bs, h, slen, hd)
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p > 0 and x.device.type == "cpu":
            # On CPU, SDPA with dropout falls back to its math kernel, which adds a NaN-safe softmax (three
            # more passes over the scores) and copies of q, k, v: ~1.5x slower fwd+bwd than these few ops.
            context = _attention_with_dropout(q, k, v, attn_bias, is_causal, dropout_p)
        else:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, is_causal=is_causal
            )  # (bs, h, m, hd)
        return self.out_lin(context.transpose(1, 2).reshape(bs, m, dim))  # (bs, m, dim)


def _attention_with_dropout(
    q: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor | None, is_causal: bool, dropout_p: float
) -> Tensor:
    """softmax(q k^T / sqrt(hd) + bias) with dropout, times v: SDPA's semantics. q (bs, h, m, hd), k, v
    (bs, h, slen, hd); `is_causal` needs m == slen (queries at every position)."""
    scores = torch.matmul(q * q.size(-1) ** -0.5, k.transpose(-1, -2))  # (bs, h, m, slen)
    if is_causal:
        slen = q.size(-2)
        future = torch.ones(slen, slen, dtype=torch.bool, device=q.device).triu(1)  # (slen, slen)
        scores.masked_fill_(future, float("-inf"))
    elif attn_bias is not None:
        scores.add_(attn_bias)  # broadcast; in place is safe: matmul saves q and k, not scores
    weights = dropout(torch.softmax(scores, dim=-1), dropout_p, training=True)  # (bs, h, m, slen)
    return torch.matmul(weights, v)  # (bs, h, m, hd)


class TransformerFFN(nn.Module):
    """lin1 -> GELU(erf) or ReLU -> lin2. XLM's dropout after lin2 (none between the activation and lin2) is
    applied by the block together with the residual add (`dropout_add`)."""

    def __init__(self, dim: int, hidden_dim: int, gelu: bool) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = F.gelu if gelu else F.relu

    def forward(self, x: Tensor) -> Tensor:
        """x (bs, slen, dim) -> (bs, slen, dim)."""
        return self.lin2(self.act(self.lin1(x)))


class XLMTransformer(nn.Module):
    """The XLM encoder. Parameter names equal transformers' `XLMModel` state-dict keys."""

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.emb_dim
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, dim)
        if config.has_lang_embeddings:
            self.lang_embeddings = nn.Embedding(config.n_langs, dim)
        self.embeddings = nn.Embedding(config.vocab_size, dim, padding_idx=config.pad_index)
        self.layer_norm_emb = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attentions = nn.ModuleList()
        self.layer_norm1 = nn.ModuleList()
        self.ffns = nn.ModuleList()
        self.layer_norm2 = nn.ModuleList()
        for _ in range(config.n_layers):
            self.attentions.append(MultiHeadAttention(dim, config.n_heads, config.attention_dropout))
            self.layer_norm1.append(nn.LayerNorm(dim, eps=config.layer_norm_eps))
            self.ffns.append(TransformerFFN(dim, 4 * dim, config.gelu_activation))
            self.layer_norm2.append(nn.LayerNorm(dim, eps=config.layer_norm_eps))
        self.apply(lambda m: init_weights(m, config))
        if config.sinusoidal_embeddings:
            with torch.no_grad():
                self.position_embeddings.weight.copy_(sinusoidal_table(config.max_position_embeddings, dim))
            # Frozen as in the original XLM (transformers 5.x leaves the table trainable).
            self.position_embeddings.weight.requires_grad_(False)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        langs: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        lengths: Tensor | None = None,
        causal: bool | None = None,
        output_positions: Tensor | None = None,
    ) -> Tensor:
        """Last hidden state (bs, slen, dim), or (n_sel, dim) with `output_positions`; see `encode`."""
        return self.encode(
            input_ids,
            attention_mask=attention_mask,
            langs=langs,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            lengths=lengths,
            causal=causal,
            output_positions=output_positions,
        ).last_hidden_state

    def encode(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        langs: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        lengths: Tensor | None = None,
        causal: bool | None = None,
        output_hidden_states: bool = False,
        output_positions: Tensor | SelectedPositions | None = None,
        word_grad_slot: TiedGradSlot | None = None,
        padded: bool | None = None,
    ) -> EncoderOutput:
        """Run the encoder.

        Args:
            input_ids: (bs, slen) token ids.
            attention_mask: (bs, slen), 1 = keep. Replaces the `lengths` mask, both for attention keys
                and for zeroing padded hidden states.
            langs: (bs, slen) language ids; ignored unless the model has language embeddings.
            token_type_ids: (bs, slen); added through the *word* embedding table, as transformers does.
            position_ids: (bs, slen); default `arange(slen)` (pass restarted positions for TLM pairs).
            lengths: (bs,) right-padded lengths; default = number of non-pad tokens per row.
            causal: lower-triangular attention; default `config.causal`. Padding is not combined into a
                causal mask (as XLM and transformers): with right padding it cannot be reached anyway.
            output_hidden_states: also return the embedding output and every block's output.
            output_positions: bool (bs, slen), or its `SelectedPositions` layout built with the batch (no host
                sync): `last_hidden_state` is then `(n_sel, dim)`, the final hidden states at these positions
                in row-major order, equal to the full computation gathered there. Non-causal: the last block
                computes keys and values at every position but its queries, attention output, LayerNorms and
                FFN only at the selected ones (MLM/TLM: ~15% of the rows); in training mode the dropout draws
                differ from the full path (same distribution). Causal, or with `output_hidden_states`: the full
                path runs and its last state is gathered.
            word_grad_slot: the word lookup's weight gradient is this slot's (filled by a tied LM head's fused
                loss) plus the looked-up rows: see `tied_embedding`.
            padded: whether any position is masked, if the caller knows it on the host (pretraining batches
                do); None: read from the mask (a host sync on accelerators, skipped for causal attention).

        Raises:
            ValueError: on shapes that do not match `input_ids`, sequences longer than the position table without
                `position_ids`, or (on CPU) position ids outside it.
        """
        causal = self.config.causal if causal is None else causal
        selected = self._check_inputs(input_ids, attention_mask, langs, position_ids, output_positions)
        attention_mask = self._attention_mask(input_ids, attention_mask, lengths)  # (bs, slen), nonzero = keep
        tensor = self._embed(input_ids, langs, token_type_ids, position_ids, word_grad_slot)  # (bs, slen, dim)
        if padded is None:
            padded = self._has_padding(attention_mask, causal)
        mask = attention_mask.unsqueeze(-1).to(tensor.dtype) if padded else None  # (bs, slen, 1)
        if mask is not None:
            tensor = tensor * mask  # multiplies as transformers does
        attn_bias = self._padding_bias(attention_mask, tensor) if padded and not causal else None

        hidden_states = [tensor] if output_hidden_states else None
        # MLM/TLM: the last block only at the selected rows. Causal attention keeps its full last block with
        # `is_causal` (flash-eligible; CLM predicts almost every position anyway) and gathers afterwards.
        last_selected = selected is not None and not output_hidden_states and not causal
        for i in range(self.config.n_layers - 1 if last_selected else self.config.n_layers):
            tensor = self._block(i, tensor, attn_bias, causal)
            if mask is not None:
                tensor = tensor * mask
            if hidden_states is not None:
                hidden_states.append(tensor)
        states = tuple(hidden_states) if hidden_states is not None else None
        if selected is None:
            return EncoderOutput(tensor, states)
        if not last_selected:
            return EncoderOutput(_rows(tensor, selected.flat), states)
        return EncoderOutput(self._selected_block(tensor, selected, attn_bias, mask))

    def _check_inputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        langs: Tensor | None,
        position_ids: Tensor | None,
        output_positions: Tensor | SelectedPositions | None,
    ) -> SelectedPositions | None:
        """Raise ValueError on shapes unlike `input_ids`' or a sequence longer than the position table; return
        the selected positions' layout (computed here from a bool mask: a host sync off the CPU)."""
        bs, slen = input_ids.shape
        limit = self.config.max_position_embeddings
        # With explicit position_ids (TLM pairs restart at the second sentence, as XLM) the sequence may be longer
        # than the table: each side up to `limit` positions. Their values are checked on CPU (free there; on an
        # accelerator it would be a host sync, and the embedding lookup fails on its own).
        if position_ids is None and slen > limit:
            raise ValueError(f"sequence length {slen} exceeds max_position_embeddings={limit}")
        if position_ids is not None and position_ids.device.type == "cpu" and int(position_ids.max()) >= limit:
            raise ValueError(f"position id {int(position_ids.max())} exceeds max_position_embeddings={limit}")
        selected_mask = output_positions.mask if isinstance(output_positions, SelectedPositions) else output_positions
        named = (("attention_mask", attention_mask), ("langs", langs), ("position_ids", position_ids))
        for name, tensor in (*named, ("output_positions", selected_mask)):
            if tensor is not None and tensor.shape != (bs, slen):
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {(bs, slen)} like input_ids")
        if selected_mask is not None and selected_mask.dtype != torch.bool:
            raise ValueError(f"output_positions must be a bool tensor, got {selected_mask.dtype}")
        if output_positions is None or isinstance(output_positions, SelectedPositions):
            return output_positions
        return select_positions(output_positions)

    def _attention_mask(self, input_ids: Tensor, attention_mask: Tensor | None, lengths: Tensor | None) -> Tensor:
        """`attention_mask` as given, else from `lengths` (default: the non-pad count of each row). (bs, slen)."""
        if attention_mask is not None:
            return attention_mask
        if lengths is None:
            lengths = (input_ids != self.config.pad_index).sum(dim=1)  # (bs,)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        return positions[None, :] < lengths[:, None]  # (bs, slen)

    def _embed(
        self,
        input_ids: Tensor,
        langs: Tensor | None,
        token_type_ids: Tensor | None,
        position_ids: Tensor | None,
        word_grad_slot: TiedGradSlot | None,
    ) -> Tensor:
        """Words + positions (+ languages, + token types through the word table) -> LayerNorm -> dropout."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.size(1), device=input_ids.device)[None, :]  # (1, slen)
        if word_grad_slot is None:
            words = self.embeddings(input_ids)  # (bs, slen, dim)
        else:
            words = tied_embedding(input_ids, self.embeddings.weight, self.embeddings.padding_idx, word_grad_slot)
        tensor = words + self.position_embeddings(position_ids)  # (bs, slen, dim)
        if langs is not None and self.config.has_lang_embeddings:
            tensor = tensor + self.lang_embeddings(langs)
        if token_type_ids is not None:
            tensor = tensor + self.embeddings(token_type_ids)
        return dropout(self.layer_norm_emb(tensor), self.config.dropout, self.training)

    @staticmethod
    def _has_padding(attention_mask: Tensor, causal: bool) -> bool:
        """Whether any position is masked, when the caller did not say (`padded`).

        Without padding the hidden-state mask multiplies are skipped (one pass fwd + bwd per layer). Knowing it
        is a host sync: free on CPU; on accelerators causal runs keep the multiplies rather than sync (the
        non-causal ones sync, unless the batch says `padded`, as pretraining batches do). Under torch.compile
        the multiplies are fused into neighbouring kernels, so they stay, and the graph has no break here.
        """
        if torch.compiler.is_compiling() or (causal and attention_mask.device.type != "cpu"):
            return True
        return not bool((attention_mask != 0).all())

    @staticmethod
    def _padding_bias(attention_mask: Tensor, tensor: Tensor) -> Tensor:
        """Additive key bias (bs, 1, 1, slen): 0 where kept, finfo.min at padding.

        finfo.min rather than a boolean mask: a query whose keys are all masked then gets uniform weights,
        exactly as transformers' masked_fill(finfo.min), instead of NaN. In the dtype the scores are computed
        in: under bf16 autocast an fp32 finfo.min would round to -inf (NaN again).
        """
        dtype = _compute_dtype(tensor)
        bias = torch.zeros(tensor.size(0), 1, 1, tensor.size(1), dtype=dtype, device=tensor.device)
        return bias.masked_fill_(attention_mask[:, None, None, :] == 0, torch.finfo(dtype).min)

    def _block(
        self, i: int, x: Tensor, attn_bias: Tensor | None, causal: bool, query_input: Tensor | None = None
    ) -> Tensor:
        """Block i: keys/values from x (bs, slen, dim), everything else on the rows of `query_input` (bs, m, dim),
        default x. Returns (bs, m, dim)."""
        attn = self.attentions[i](x, attn_bias, causal, query_input)
        residual = x if query_input is None else query_input
        p, training = self.config.dropout, self.training
        tensor = self.layer_norm1[i](dropout_add(attn, residual, p, training))
        return self.layer_norm2[i](dropout_add(self.ffns[i](tensor), tensor, p, training))

    def _selected_block(
        self, x: Tensor, selected: SelectedPositions, attn_bias: Tensor | None, mask: Tensor | None
    ) -> Tensor:
        """The last block's output at the selected positions of its input x (bs, slen, dim): (n_sel, dim),
        row-major. Non-causal only.

        Each row's selected positions are packed left into m = max-per-row query slots (unused slots repeat
        unselected positions and are dropped), so attention stays a batched (bs, h, m, slen) product; the
        padding bias (bs, 1, 1, slen) or None applies to every query as it is.
        """
        bs, _, dim = x.shape
        m = selected.slots.size(1)
        queries = x.gather(1, selected.slots[..., None].expand(bs, m, dim))  # (bs, m, dim)
        out = _rows(self._block(self.config.n_layers - 1, x, attn_bias, False, queries), selected.used)  # (n_sel, dim)
        if mask is not None:
            out = out * _rows(mask, selected.flat)  # (n_sel, 1): zero at selected padding, as the full path
        return out


def _rows(x: Tensor, flat_index: Tensor) -> Tensor:
    """Rows `flat_index` of x (bs, n, ...) flattened to (bs * n, ...): an index_select, no host sync."""
    return x.flatten(0, 1).index_select(0, flat_index)
