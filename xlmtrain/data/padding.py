"""`pad_right`: id sequences of different lengths as one right-padded batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_right(seqs: Sequence[Sequence[int]], pad_index: int) -> tuple[Tensor, Tensor]:
    """`(input_ids (bs, slen) int64 padded with pad_index, lengths (bs,))`, slen = the longest sequence."""
    if not seqs:
        raise ValueError("pad_right needs at least one sequence")
    lengths = torch.tensor([len(ids) for ids in seqs], dtype=torch.long)
    input_ids = torch.full((len(seqs), int(lengths.max())), pad_index, dtype=torch.long)
    for row, ids in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return input_ids, lengths
