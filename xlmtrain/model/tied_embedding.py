"""The word-embedding lookup of a tied LM head, summing both gradients of the shared matrix in one buffer.

With `nn.Embedding` tied to the output projection, backward builds the lookup's gradient as a dense
(vocab, dim) zero tensor plus the looked-up rows (61 MB zero-filled at the base shape), then autograd adds
it to the projection's dense gradient. Here the fused LM loss (`linear_cross_entropy(..., slot=...)`) hands
its gradient of the matrix to a `TiedGradSlot` instead of returning it, and the lookup's backward, which
autograd always runs later (it is upstream of every layer), adds its rows into that buffer in place and
returns the sum. The parameter therefore still receives exactly one gradient, at the end of backward, so
accumulation, hooks and DDP's bucketed all-reduce see what they would see without the fusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class TiedGradSlot:
    """Carries the LM head's gradient of the tied matrix from the loss's backward to the lookup's backward."""

    def __init__(self) -> None:
        self.grad: Tensor | None = None


class _TiedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        weight: Tensor,
        ids: Tensor,
        padding_idx: int | None,
        slot: TiedGradSlot,
    ) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.slot, ctx.weight_shape = padding_idx, slot, weight.shape
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        (ids,) = ctx.saved_tensors
        grad = ctx.slot.grad
        ctx.slot.grad = None
        if grad is None:  # the head contributed nothing (its loss was not part of this backward)
            grad = grad_out.new_zeros(ctx.weight_shape)
        rows = grad_out.reshape(-1, grad_out.size(-1))  # (n, dim)
        flat_ids = ids.reshape(-1)
        if ctx.padding_idx is not None:  # nn.Embedding's rule: the padding row gets no gradient from lookups
            rows = rows * (flat_ids != ctx.padding_idx).unsqueeze(1).to(rows.dtype)
        return grad.index_add_(0, flat_ids, rows), None, None, None


def tied_embedding(ids: Tensor, weight: Tensor, padding_idx: int | None, slot: TiedGradSlot) -> Tensor:
    """`F.embedding(ids, weight)` whose weight gradient is the slot's gradient plus the looked-up rows."""
    return _TiedEmbedding.apply(weight, ids, padding_idx, slot)
