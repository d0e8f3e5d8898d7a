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
        position_ids: `(bs, slen)` position ids, or None for `arange(slen)`.
        langs: `(bs, slen)` language ids, or None when the model has one language.
        pred_mask: `(bs, slen)` bool, where logits are computed.
        labels: `(n_pred,)` ids to predict, row-major over `pred_mask`.
        causal: True for CLM (left-to-right attention).
        selected: `pred_mask`'s layout for the encoder, computed on the host (`with_host_layout`), or None.
        padded: whether any row is shorter than `slen`, known on the host, or None (the encoder then reads it).
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    position_ids: torch.Tensor | None
    langs: torch.Tensor | None
    pred_mask: torch.Tensor
    labels: torch.Tensor
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
        position_ids: `(bs, slen)` restarting at 0 where sentence b starts and counting on over padding.
        langs: `(bs, slen)` `lang1_id` on the first `len1` tokens, `lang2_id` from there on (padding included).
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    position_ids: torch.Tensor
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
    Positions restart at 0 for b, so each side may use the whole position table; padding positions are 0.
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
    # Padding gets position 0 (XLM continues counting over it): pads are masked, and a long pair (each side up to
    # the position table, as XLM accepts) must not index past the table there.
    positions = torch.where(in_b_real, cols - len1[:, None], torch.where(in_a, cols, 0))
    langs = torch.where(in_b, torch.full_like(cols, lang2_id), torch.full_like(cols, lang1_id))
    return PairLayout(ids=ids, lengths=lengths, position_ids=positions, langs=langs)


def next_token_labels(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLM prediction mask and targets: position t predicts `ids[t+1]` for every t < length - 1.

    Returns `(pred_mask (bs, slen) bool, labels (n_pred,))`. On a stream chunk (`lengths == slen`) this is
    every position but the last with labels `x[1:]` (XLM's `clm_step`).
    """
    bs, slen = ids.shape
    pred_mask = torch.arange(slen, device=ids.device)[None, :] < (lengths[:, None] - 1)  # (bs, slen)
    labels = ids[:, 1:][pred_mask[:, :-1]]  # (n_pred,)
    return pred_mask, labels


def constant_langs(ids: torch.Tensor, lang_id: int) -> torch.Tensor:
    """A `(bs, slen)` language-id tensor filled with `lang_id` for a monolingual batch."""
    return torch.full_like(ids, lang_id)


@dataclass
class PairBatch:
    """A translation-pair batch for the alignment objectives: the two sides padded separately, each row
    `</s> w1..wn </s> <pad>...` (XLM's sentence layout), row i of both sides one pair.

    Attributes:
        src_ids: `(bs, s1)` first side, in the stream's order (`en-fr`: en).
        src_lengths: `(bs,)` real tokens per row of `src_ids`.
        src_langs: `(bs, s1)` the first language's id.
        tgt_ids, tgt_lengths, tgt_langs: the same for the second side.
        global_rows: pairs in the global batch this batch is a slice of (all ranks together).
    """

    src_ids: torch.Tensor
    src_lengths: torch.Tensor
    src_langs: torch.Tensor
    tgt_ids: torch.Tensor
    tgt_lengths: torch.Tensor
    tgt_langs: torch.Tensor
    global_rows: int


def pair_batch(
    x1: torch.Tensor, len1: torch.Tensor, x2: torch.Tensor, len2: torch.Tensor, *, lang1_id: int, lang2_id: int
) -> PairBatch:
    """A `PairBatch` from aligned sentence batches `x1 (bs, s1)`, `x2 (bs, s2)` (as `ParallelBatches` yields)."""
    if x1.shape[0] != x2.shape[0]:
        raise ValueError(f"pair sides have different batch sizes: {x1.shape[0]} vs {x2.shape[0]}")
    return PairBatch(x1, len1, constant_langs(x1, lang1_id), x2, len2, constant_langs(x2, lang2_id), x1.shape[0])


def rank_row_range(bs: int, rank: int, world_size: int, *, where: str = "batch") -> tuple[int, int]:
    """Rows `[lo, hi)` of a global batch of `bs` rows that rank `rank` of `world_size` trains on: the contiguous
    slice `torch.tensor_split` gives it. Raises ValueError naming `where` if a rank would get no rows."""
    if bs < world_size:
        raise ValueError(
            f"{where} has {bs} rows for {world_size} ranks: raise data.batching.batch_size (or tokens_per_batch)"
        )
    rows = torch.tensor_split(torch.arange(bs), world_size)[rank]
    return int(rows[0]), int(rows[-1]) + 1


def pair_rank_rows(batch: PairBatch, rank: int, world_size: int, *, where: str = "batch") -> PairBatch:
    """Rank `rank`'s contiguous slice of a global `PairBatch` (the rows `torch.tensor_split` gives it), each side's
    trailing all-pad columns dropped. Raises ValueError naming `where` if a rank would get no rows."""
    if world_size == 1:
        return batch
    bs = batch.src_ids.shape[0]
    lo, hi = rank_row_range(bs, rank, world_size, where=where)
    s1, s2 = int(batch.src_lengths[lo:hi].max()), int(batch.tgt_lengths[lo:hi].max())
    return PairBatch(
        batch.src_ids[lo:hi, :s1],
        batch.src_lengths[lo:hi],
        batch.src_langs[lo:hi, :s1],
        batch.tgt_ids[lo:hi, :s2],
        batch.tgt_lengths[lo:hi],
        batch.tgt_langs[lo:hi, :s2],
        bs,
    )
