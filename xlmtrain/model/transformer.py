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


@dataclass
class EncoderOutput:
    """Result of `XLMTransformer.encode`."""

    last_hidden_state: Tensor
    """(bs, slen, dim) output of the last block, zero at padded positions."""
    hidden_states: tuple[Tensor, ...] | None = None
    """n_layers + 1 tensors (bs, slen, dim): the embedding output, then each block's output."""


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

    def forward(self, x: Tensor, attn_bias: Tensor | None, is_causal: bool) -> Tensor:
        """x (bs, slen, dim); attn_bias None or additive (bs, 1, 1, slen). Returns (bs, slen, dim)."""
        bs, slen, dim = x.shape
        split = (bs, slen, self.n_heads, dim // self.n_heads)
        q = self.q_lin(x).view(split).transpose(1, 2)  # (bs, h, slen, hd)
        k = self.k_lin(x).view(split).transpose(1, 2)  # (bs, h, slen, hd)
        v = self.v_lin(x).view(split).transpose(1, 2)  # (bs, h, slen, hd)
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p > 0 and x.device.type == "cpu":
            # On CPU, SDPA with dropout falls back to its math kernel, which adds a NaN-safe softmax (three
            # more passes over the scores) and copies of q, k, v: ~1.5x slower fwd+bwd than these few ops.
            context = _attention_with_dropout(q, k, v, attn_bias, is_causal, dropout_p)
        else:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, is_causal=is_causal
            )  # (bs, h, slen, hd)
        return self.out_lin(context.transpose(1, 2).reshape(bs, slen, dim))  # (bs, slen, dim)


def _attention_with_dropout(
    q: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor | None, is_causal: bool, dropout_p: float
) -> Tensor:
    """softmax(q k^T / sqrt(hd) + bias) with dropout, times v: SDPA's semantics. q, k, v (bs, h, slen, hd)."""
    scores = torch.matmul(q * q.size(-1) ** -0.5, k.transpose(-1, -2))  # (bs, h, slen, slen)
    if is_causal:
        slen = q.size(-2)
        future = torch.ones(slen, slen, dtype=torch.bool, device=q.device).triu(1)  # (slen, slen)
        scores.masked_fill_(future, float("-inf"))
    elif attn_bias is not None:
        scores.add_(attn_bias)  # (bs, 1, 1, slen) broadcast; in place is safe: matmul saves q and k, not scores
    weights = F.dropout(torch.softmax(scores, dim=-1), p=dropout_p)  # (bs, h, slen, slen)
    return torch.matmul(weights, v)  # (bs, h, slen, hd)


class TransformerFFN(nn.Module):
    """lin1 -> GELU(erf) or ReLU -> lin2 -> dropout (no dropout between the activation and lin2, as XLM)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float, gelu: bool) -> None:
        super().__init__()
        self.dropout = dropout
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = F.gelu if gelu else F.relu

    def forward(self, x: Tensor) -> Tensor:
        """x (bs, slen, dim) -> (bs, slen, dim)."""
        return F.dropout(self.lin2(self.act(self.lin1(x))), p=self.dropout, training=self.training)


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
            self.ffns.append(TransformerFFN(dim, 4 * dim, config.dropout, config.gelu_activation))
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
    ) -> Tensor:
        """Last hidden state (bs, slen, dim); see `encode` for the arguments."""
        return self.encode(
            input_ids,
            attention_mask=attention_mask,
            langs=langs,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            lengths=lengths,
            causal=causal,
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

        Raises:
            ValueError: on shapes that do not match `input_ids` or sequences longer than the position table.
        """
        bs, slen = input_ids.shape
        causal = self.config.causal if causal is None else causal
        if slen > self.config.max_position_embeddings:
            limit = self.config.max_position_embeddings
            raise ValueError(f"sequence length {slen} exceeds max_position_embeddings={limit}")
        for name, tensor in (("attention_mask", attention_mask), ("langs", langs), ("position_ids", position_ids)):
            if tensor is not None and tensor.shape != (bs, slen):
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {(bs, slen)} like input_ids")
        if attention_mask is None:
            if lengths is None:
                lengths = (input_ids != self.config.pad_index).sum(dim=1)  # (bs,)
            positions = torch.arange(slen, device=input_ids.device)
            attention_mask = positions[None, :] < lengths[:, None]  # (bs, slen)
        keep = attention_mask != 0  # (bs, slen)

        if position_ids is None:
            position_ids = torch.arange(slen, device=input_ids.device)[None, :]  # (1, slen)
        tensor = self.embeddings(input_ids) + self.position_embeddings(position_ids)  # (bs, slen, dim)
        if langs is not None and self.config.has_lang_embeddings:
            tensor = tensor + self.lang_embeddings(langs)
        if token_type_ids is not None:
            tensor = tensor + self.embeddings(token_type_ids)
        tensor = self.layer_norm_emb(tensor)
        tensor = F.dropout(tensor, p=self.config.dropout, training=self.training)
        # Without padding the hidden-state mask is all ones: skip its multiplies (one pass fwd + bwd per layer).
        # Knowing it is a host sync: free on CPU, and already needed for the bias of non-causal attention, so
        # causal runs on accelerators keep the multiplies rather than add a sync.
        padded = not bool(keep.all()) if not causal or input_ids.device.type == "cpu" else True
        mask = None
        if padded:
            mask = attention_mask.unsqueeze(-1).to(tensor.dtype)  # (bs, slen, 1), multiplies as transformers does
            tensor = tensor * mask

        attn_bias = None
        if not causal and padded:
            # Additive finfo.min rather than a boolean mask: a query whose keys are all masked then gets
            # uniform weights, exactly as transformers' masked_fill(finfo.min), instead of NaN.
            attn_bias = torch.zeros(bs, 1, 1, slen, dtype=tensor.dtype, device=tensor.device)
            attn_bias.masked_fill_(~keep[:, None, None, :], torch.finfo(tensor.dtype).min)  # (bs, 1, 1, slen)

        hidden_states = [tensor] if output_hidden_states else None
        for attention, norm1, ffn, norm2 in zip(self.attentions, self.layer_norm1, self.ffns, self.layer_norm2):
            attn = attention(tensor, attn_bias, is_causal=causal)  # (bs, slen, dim)
            tensor = norm1(tensor + F.dropout(attn, p=self.config.dropout, training=self.training))
            tensor = norm2(tensor + ffn(tensor))
            if mask is not None:
                tensor = tensor * mask
            if hidden_states is not None:
                hidden_states.append(tensor)
        return EncoderOutput(tensor, tuple(hidden_states) if hidden_states is not None else None)

