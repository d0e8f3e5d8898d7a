"""Batch layouts of XLM's objectives (reference §A4.2, §A4.4), batch-major.

Sentence batches use XLM's layout `</s> w1..wn </s> <pad>...` per row with `lengths` counting both
`</s>`; stream batches are contiguous `(bs, bptt)` chunks with no padding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from xlmtrain.model.transformer import SelectedPositions, select_positions


@dataclass
class LMBatch:
    """One model input plus its prediction targets; Lightning moves it to the device as a dataclass.

    Attributes:
        input_ids: `(bs, slen)` ids fed to the model (already corrupted for MLM/TLM).
        lengths: `(bs,)` real tokens per row (padding is at the end).
        positions: `(bs, slen)` position ids, or None for `arange(slen)`.
        langs: `(bs, slen)` language ids, or None when the model has one language.
        pred_mask: `(bs, slen)` bool, where logits are computed.
        targets: `(n_pred,)` ids to predict, row-major over `pred_mask`.
        causal: True for CLM (left-to-right attention).
        selected: `pred_mask`'s layout for the encoder, computed on the host (`with_host_layout`), or None.
        padded: whether any row is shorter than `slen`, known on the host, or None (the encoder then reads it).
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    positions: torch.Tensor | None
    langs: torch.Tensor | None
    pred_mask: torch.Tensor
    targets: torch.Tensor
    causal: bool
    selected: SelectedPositions | None = None
    padded: bool | None = None


def with_host_layout(batch: LMBatch) -> LMBatch:
    """`batch` with `selected` and `padded` filled in while its tensors are on the CPU, so the forward on an
    accelerator needs no host sync for them (a per-row maximum, boolean indexing, an all-kept check)."""
    padded = bool((batch.lengths < batch.input_ids.size(1)).any())
    return replace(batch, selected=select_positions(batch.pred_mask), padded=padded)


@dataclass(frozen=True)
class PairLayout:
    """Two sentence batches concatenated for TLM or parallel CLM.

    Attributes:
        ids: `(bs, len1+len2 max)` `</s> a </s> </s> b </s> <pad>...`.
        lengths: `(bs,)` `len1 + len2`.
        positions: `(bs, slen)` restarting at 0 where sentence b starts and counting on over padding.
        langs: `(bs, slen)` `lang1_id` on the first `len1` tokens, `lang2_id` from there on (padding included).
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    positions: torch.Tensor
    langs: torch.Tensor


def concat_pair(
    x1: torch.Tensor,
    len1: torch.Tensor,
    x2: torch.Tensor,
    len2: torch.Tensor,
    *,
    lang1_id: int,
    lang2_id: int,
    pad_index: int,
) -> PairLayout:
    """Concatenate aligned sentence batches `x1 (bs, s1)` and `x2 (bs, s2)` as XLM's `concat_batches`
    with `reset_positions=True`. Sentence a comes first, as the stream name orders them (`en-fr`: en).
    """
    if x1.shape[0] != x2.shape[0]:
        raise ValueError(f"pair sides have different batch sizes: {x1.shape[0]} vs {x2.shape[0]}")
    bs = x1.shape[0]
    lengths = len1 + len2  # (bs,)
    slen = int(lengths.max())
    cols = torch.arange(slen)[None, :].expand(bs, slen)  # (bs, slen)
    in_a = cols < len1[:, None]
    in_b = ~in_a
    in_b_real = in_b & (cols < lengths[:, None])
    a_ids = torch.gather(x1, 1, cols.clamp(max=x1.shape[1] - 1))  # (bs, slen)
    b_ids = torch.gather(x2, 1, (cols - len1[:, None]).clamp(0, x2.shape[1] - 1))  # (bs, slen)
    ids = torch.where(in_a, a_ids, torch.where(in_b_real, b_ids, torch.full_like(a_ids, pad_index)))
    positions = torch.where(in_b, cols - len1[:, None], cols)
    langs = torch.where(in_b, torch.full_like(cols, lang2_id), torch.full_like(cols, lang1_id))
    return PairLayout(ids=ids, lengths=lengths, positions=positions, langs=langs)


def next_token_targets(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLM prediction mask and targets: position t predicts `ids[t+1]` for every t < length - 1.

    Returns `(pred_mask (bs, slen) bool, targets (n_pred,))`. On a stream chunk (`lengths == slen`) this is
    every position but the last with targets `x[1:]` (XLM's `clm_step`).
    """
    bs, slen = ids.shape
    pred_mask = torch.arange(slen, device=ids.device)[None, :] < (lengths[:, None] - 1)  # (bs, slen)
    targets = ids[:, 1:][pred_mask[:, :-1]]  # (n_pred,)
    return pred_mask, targets


def constant_langs(ids: torch.Tensor, lang_id: int) -> torch.Tensor:
    """A `(bs, slen)` language-id tensor filled with `lang_id` for a monolingual batch."""
    return torch.full_like(ids, lang_id)
