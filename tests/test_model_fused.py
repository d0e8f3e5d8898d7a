"""The fused CPU training paths (issue #7): dropout masks, dropout + residual, projection + CE, tied lookup.

Each is compared with the plain PyTorch composition it replaces, on values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xlmtrain.model.config import XLMConfig
from xlmtrain.model.dropout import dropout, dropout_add, dropout_mask
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.model.losses import linear_cross_entropy
from xlmtrain.model.tied_embedding import TiedGradSlot, tied_embedding


def test_dropout_mask_rounds_p_to_sixteen_bits_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    mask = dropout_mask(torch.Size([1000, 1000]), 0.1)
    p_rounded = 6554 / 65536  # round(0.1 * 2^16) / 2^16
    values = torch.unique(mask)
    # Exactly (in float32): kept values scaled by the rounded keep probability, so E[mask] = 1 exactly. The default
    # tolerance (atol 1e-5) let a scale from the unrounded p (1/0.9: 7e-6 off) through.
    torch.testing.assert_close(values, torch.tensor([0.0, 1 / (1 - p_rounded)]), rtol=0, atol=0)
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - p_rounded) < 5 * (p_rounded * (1 - p_rounded) / 1e6) ** 0.5  # 5 sigma of a binomial
    assert abs(mask.mean().item() - 1.0) < 2e-3


def test_dropout_mask_follows_the_torch_seed_and_every_bit_chunk_is_used() -> None:
    torch.manual_seed(5)
    a = dropout_mask(torch.Size([4001]), 0.5)  # odd size: the last 64-bit draw is cut
    torch.manual_seed(5)
    b = dropout_mask(torch.Size([4001]), 0.5)
    assert torch.equal(a, b)
    # Each 64-bit draw feeds 4 consecutive elements; all four 16-bit chunks must be fair coins at p = 0.5.
    chunks = (a[:4000] == 0).float().view(-1, 4).mean(dim=0)
    assert ((chunks - 0.5).abs() < 0.06).all(), chunks


def test_dropout_gradient_is_the_mask_and_eval_is_identity() -> None:
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(1)
    out = dropout(x, 0.3, training=True)
    grad = torch.randn_like(out)
    out.backward(grad)
    mask = torch.where(x != 0, out / x, torch.zeros_like(x)).detach()
    torch.testing.assert_close(x.grad, grad * mask)
    assert dropout(x, 0.3, training=False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_mask(torch.Size([3]), 1.5)


def test_dropout_add_is_residual_plus_dropout_with_the_same_draws() -> None:
    x, residual = torch.randn(5, 7, requires_grad=True), torch.randn(5, 7, requires_grad=True)
    torch.manual_seed(2)
    fused = dropout_add(x, residual, 0.25, training=True)
    fused.sum().backward()
    fused_grads = (x.grad.clone(), residual.grad.clone())
    x.grad = residual.grad = None
    torch.manual_seed(2)
    plain = residual + dropout(x, 0.25, training=True)
    plain.sum().backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_grads, (x.grad, residual.grad))


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_cross_entropy_equals_linear_then_cross_entropy(with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 16, generator=g, requires_grad=True)
    weight = (torch.randn(50, 16, generator=g) * 3).requires_grad_()  # large logits: softmax far from uniform
    bias = torch.randn(50, generator=g).requires_grad_() if with_bias else None
    targets = torch.tensor([0, 49, 3, 3, 7, 12, 0, 25, 49])  # repeated targets exercise index_add
    row_grads = torch.rand(9, generator=g)  # any upstream gradient, not only sum / mean
    params = [hidden, weight] + ([bias] if with_bias else [])

    ours = linear_cross_entropy(hidden, weight, bias, targets)
    ours_grads = torch.autograd.grad((ours * row_grads).sum(), params)
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
    ref_grads = torch.autograd.grad((ref * row_grads).sum(), params)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"labels \(n,\)"):
        linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), None, torch.zeros(3, dtype=torch.long))


def test_tied_lookup_returns_slot_gradient_plus_rows_except_the_padding_row() -> None:
    weight = torch.randn(6, 3, requires_grad=True)
    ids = torch.tensor([[1, 2, 2], [0, 5, 0]])  # 0 = padding
    slot = TiedGradSlot()
    out = tied_embedding(ids, weight, padding_idx=0, slot=slot)
    head_grad = torch.randn(6, 3)
    slot.grad = head_grad.clone()  # as the fused loss's backward would have left it
    upstream = torch.randn(2, 3, 3)
    out.backward(upstream)
    expected = head_grad.clone()
    for (i, j), token in zip(torch.cartesian_prod(torch.arange(2), torch.arange(3)).tolist(), ids.flatten().tolist()):
        if token != 0:
            expected[token] += upstream[i, j]
    torch.testing.assert_close(weight.grad, expected)
    assert slot.grad is None  # handed over, not kept alive


@pytest.mark.parametrize("objective", ["mlm", "tlm", "clm"])
def test_masked_lm_loss_equals_logits_then_cross_entropy(objective: str) -> None:
    """Eval mode (no dropout): the fused training loss and its gradients equal `forward(...).logits` + CE on
    every parameter, including the tied matrix (both of its gradients) and its padding row."""
    torch.manual_seed(0)
    config = XLMConfig(vocab_size=90, emb_dim=16, n_layers=2, n_heads=2, n_langs=2, causal=objective == "clm")
    model = XLMWithLMHead(config).eval()
    ids = torch.randint(4, 90, (3, 8))  # no special ids; padding placed below
    lengths = torch.tensor([8, 6, 8])
    ids[1, 6:] = config.pad_index
    inputs: dict = {"lengths": lengths, "langs": torch.randint(0, 2, (3, 8))}
    if objective == "tlm":
        inputs["position_ids"] = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]] * 3)
    pred_mask = torch.arange(8)[None, :] < lengths[:, None] - 1
    if objective != "clm":
        pred_mask &= torch.rand(3, 8) < 0.5
        pred_mask[0, 0] = True
    targets = torch.randint(0, 90, (int(pred_mask.sum()),))

    ours = model.masked_lm_loss(ids, pred_mask, targets, **inputs)
    ours.sum().backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    ref = F.cross_entropy(model(ids, pred_mask=pred_mask, **inputs).logits, targets, reduction="none")
    ref.sum().backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours_grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_masked_lm_loss_under_cpu_autocast_falls_back_to_the_unfused_pair() -> None:
    torch.manual_seed(0)
    model = XLMWithLMHead(XLMConfig(vocab_size=40, emb_dim=16, n_layers=1, n_heads=2)).eval()
    ids = torch.randint(4, 40, (2, 6))
    pred_mask = torch.ones(2, 6, dtype=torch.bool)
    targets = torch.randint(0, 40, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.masked_lm_loss(ids, pred_mask, targets)
    losses.sum().backward()
    assert losses.dtype == torch.float32 and model.transformer.embeddings.weight.grad is not None
    ref = F.cross_entropy(model(ids, pred_mask=pred_mask).logits, targets, reduction="none")
    torch.testing.assert_close(losses, ref, rtol=0.05, atol=0.05)  # bf16 logits


def test_linear_cross_entropy_in_bf16_computes_the_softmax_in_fp32() -> None:
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 8, generator=g).bfloat16().requires_grad_()
    weight = torch.randn(20, 8, generator=g).bfloat16().requires_grad_()
    targets = torch.tensor([0, 3, 19, 7, 7])
    losses = linear_cross_entropy(hidden, weight, None, targets)
    losses.sum().backward()
    assert losses.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    ref = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")
    torch.testing.assert_close(losses, ref)
