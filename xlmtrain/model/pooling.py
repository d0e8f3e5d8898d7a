"""Sentence vectors from hidden states: `first` (the leading `</s>`, XLM's `SentenceEmbedder`) or `mean`
(over the sentence's real positions, both `</s>` included). One definition for inference embeddings and
the alignment objectives, so a model trained on a pooling is evaluated with exactly that pooling."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Pooling = Literal["first", "mean"]
POOLINGS = ("first", "mean")


def pool_hidden(hidden: Tensor, lengths: Tensor, pooling: Pooling) -> Tensor:
    """(bs, dim) sentence vectors of right-padded `hidden (bs, slen, dim)` with `lengths (bs,)` real tokens.

    Raises ValueError on an unknown pooling.
    """
    if pooling == "first":
        return hidden[:, 0]  # (bs, dim)
    if pooling == "mean":
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]  # (bs, slen)
        summed = (hidden * keep[..., None].to(hidden.dtype)).sum(1)  # (bs, dim)
        return summed / lengths[:, None].to(hidden.dtype)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
