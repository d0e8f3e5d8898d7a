"""`linear_cross_entropy`: output projection and cross-entropy in one autograd node.

`F.cross_entropy(F.linear(h, W, b), t)` keeps the logits, a log-softmax copy of them, and in backward
allocates two more (n, V) tensors (zeros for the NLL gradient, the log-softmax gradient). Here the logits
buffer is turned in place into exp(logits - rowmax) and kept; backward writes the gradient through the two
matmuls without ever forming softmax - onehot as a tensor:

    dlogits = diag(g / s) exp - diag(g) onehot(t)        (s = row sums of exp, g = upstream row gradients)
    dh = (exp @ W) * (g / s) - W[t] * g
    dW = exp^T @ (h * g / s) - index_add(t, h * g)
    db = (g / s) @ exp - index_add(t, g)

Same numbers as the unfused pair up to fp32 rounding (`tests/test_model_fused.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xlmtrain.model.tied_embedding import TiedGradSlot


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        slot: TiedGradSlot | None,
    ) -> Tensor:
        logits = hidden @ weight.t() if bias is None else torch.addmm(bias, hidden, weight.t())  # (n, V)
        target_logits = logits.gather(1, labels[:, None]).squeeze(1)  # (n,)
        row_max = logits.amax(dim=1, keepdim=True)  # (n, 1)
        exp = logits.sub_(row_max).exp_()  # (n, V), in place: the logits are not needed any more
        sum_exp = exp.sum(dim=1)  # (n,)
        ctx.save_for_backward(hidden, weight, exp, sum_exp, labels)
        ctx.has_bias, ctx.slot = bias is not None, slot
        return sum_exp.log() + row_max.squeeze(1) - target_logits  # (n,) = logsumexp - target logit

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_losses: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        hidden, weight, exp, sum_exp, labels = ctx.saved_tensors
        grad_losses = grad_losses.to(exp.dtype)
        row_scale = (grad_losses / sum_exp)[:, None]  # (n, 1)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (exp @ weight).mul_(row_scale).sub_(weight[labels] * grad_losses[:, None])  # (n, d)
        if ctx.needs_input_grad[1] or ctx.slot is not None:
            grad_weight = exp.t() @ (hidden * row_scale)  # (V, d)
            grad_weight.index_add_(0, labels, hidden * grad_losses[:, None], alpha=-1)
            if ctx.slot is not None:  # handed to the tied lookup's backward, which returns the sum
                ctx.slot.grad, grad_weight = grad_weight, None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = row_scale.squeeze(1) @ exp  # (V,)
            grad_bias.index_add_(0, labels, grad_losses, alpha=-1)
        return grad_hidden, grad_weight, grad_bias, None, None


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, slot: TiedGradSlot | None = None
) -> Tensor:
    """Per-row cross-entropy of `hidden @ weight.T + bias` against `labels`: (n,) from hidden (n, d),
    weight (V, d), bias (V,) or None, labels (n,) int64 in [0, V). Fused for fp32 inputs; in other dtypes,
    under autocast or under torch.compile it is the unfused pair, with the CE in fp32.

    With `slot` (weight tied to a `tied_embedding` lookup with the same slot) the weight's gradient is handed
    to that lookup's backward instead of being returned here."""
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (n, d) and labels (n,), got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    # Low precision (autocast or bf16/fp16 weights) keeps its matmul and takes an fp32 softmax; under
    # torch.compile inductor fuses the pair itself.
    low_precision = torch.is_autocast_enabled(hidden.device.type) or hidden.dtype != torch.float32
    if low_precision or torch.compiler.is_compiling():
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, reduction="none")
    if slot is not None:
        weight = weight.detach()  # its gradient travels through the slot
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, slot)
