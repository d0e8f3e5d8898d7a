"""MLM/TLM corruption with XLM's exact semantics (reference §A4.3) and its deterministic eval masking (§A5.3).

All functions are batch-major: `ids` is `(bs, slen)`. Targets come out in row-major order of the
`(bs, slen)` prediction mask, which is the order `XLMWithLMHead(..., pred_mask=...)` returns logits in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskedTokens:
    """The result of masking a batch.

    Attributes:
        input_ids: `(bs, slen)` corrupted ids fed to the model.
        pred_mask: `(bs, slen)` bool, True where the model must predict the original token.
        labels: `(n_pred,)` original ids at `pred_mask`, row-major.
    """

    input_ids: torch.Tensor
    pred_mask: torch.Tensor
    labels: torch.Tensor


def sampling_weights(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-vocabulary-id weights `count ** -alpha` for `sample_alpha` masking.

    Ids with a zero count (XLM's 14 specials, `<pad>`, unseen words) get weight 0 so they are never
    chosen as targets. `counts` is a `(vocab_size,)` tensor of corpus frequencies.
    """
    counts = counts.to(torch.float64)
    weights = counts.clamp(min=1.0).pow(-alpha)
    weights[counts <= 0] = 0.0
    return weights.to(torch.float32)


def mask_tokens(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    *,
    vocab_size: int,
    mask_index: int,
    generator: torch.Generator,
    word_pred: float = 0.15,
    keep_rand: tuple[float, float, float] = (0.8, 0.1, 0.1),
    token_weights: torch.Tensor | None = None,
) -> MaskedTokens:
    """Choose MLM targets and corrupt them as XLM's `mask_out` does.

    Args:
        ids: `(bs, slen)` int64 token ids, right-padded.
        lengths: `(bs,)` number of real (non-pad) tokens per row.
        vocab_size: vocabulary size; random replacements are uniform over `[0, vocab_size)`, specials included.
        mask_index: id of the mask token (XLM's `<special1>` = 5).
        generator: CPU generator carrying all randomness (checkpointable, seeded by the caller).
        word_pred: target rate.
        keep_rand: probabilities of (mask, keep, random) for each target.
        token_weights: `(vocab_size,)` from `sampling_weights`. None: an independent Bernoulli(word_pred) per
            position. Given: exactly `ceil(word_pred * bs * slen)` positions drawn without replacement
            with weight `token_weights[id]` (zero-weight ids are never drawn).

    Position 0 of every row and every pad position are never targets. Raises `ValueError` on bad rates.
    """
    if not 0.0 < word_pred < 1.0:
        raise ValueError(f"word_pred must be in (0, 1), got {word_pred}")
    if len(keep_rand) != 3 or abs(sum(keep_rand) - 1.0) > 1e-6 or min(keep_rand) < 0:
        raise ValueError(f"keep_rand must be 3 non-negative probabilities summing to 1, got {keep_rand}")
    bs, slen = ids.shape
    device = ids.device
    ids_cpu = ids.cpu()
    valid = torch.arange(slen)[None, :] < lengths.cpu()[:, None]  # (bs, slen)
    valid[:, 0] = False
    if token_weights is None:
        pred_mask = (torch.rand(bs, slen, generator=generator) < word_pred) & valid
    else:
        weights = token_weights[ids_cpu].flatten() * valid.flatten()  # (bs*slen,)
        n_target = min(math.ceil(word_pred * bs * slen), int((weights > 0).sum()))
        pred_mask = torch.zeros(bs * slen, dtype=torch.bool)
        if n_target > 0:
            chosen = torch.multinomial(weights, n_target, replacement=False, generator=generator)
            pred_mask[chosen] = True
        pred_mask = pred_mask.view(bs, slen)
    labels = ids_cpu[pred_mask]  # (n_pred,)
    probs = torch.tensor(keep_rand, dtype=torch.float)
    action = torch.multinomial(probs, len(labels), replacement=True, generator=generator)
    random_ids = torch.randint(vocab_size, (len(labels),), generator=generator)
    corrupted = torch.where(action == 0, torch.full_like(labels, mask_index), labels)
    corrupted = torch.where(action == 2, random_ids, corrupted)
    input_ids = ids_cpu.clone()
    input_ids[pred_mask] = corrupted
    return MaskedTokens(input_ids.to(device), pred_mask.to(device), labels.to(device))


def mask_tokens_eval(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    *,
    mask_index: int,
    generator: torch.Generator,
    word_pred: float = 0.15,
) -> MaskedTokens:
    """Deterministic evaluation masking (XLM's `evaluate_mlm`).

    A Bernoulli(word_pred) draw per position, excluding position 0 and every position from
    `length - 1` on (the closing `</s>` and padding); each row keeps at least one target (a position
    is drawn uniformly among its allowed ones when the draw chose none). Every target is replaced by
    the mask token: no keep/random branch, no frequency weighting. Seed `generator` identically for
    each evaluation to make numbers comparable across runs.
    """
    bs, slen = ids.shape
    device = ids.device
    ids_cpu = ids.cpu()
    positions = torch.arange(slen)[None, :]
    allowed = (positions >= 1) & (positions < lengths.cpu()[:, None] - 1)  # (bs, slen)
    if not bool(allowed.any(dim=1).all()):
        raise ValueError("mask_tokens_eval needs every row to have at least 3 tokens (length >= 3)")
    pred_mask = (torch.rand(bs, slen, generator=generator) < word_pred) & allowed
    empty = ~pred_mask.any(dim=1)
    if bool(empty.any()):
        # Uniform pick among allowed positions: argmax of random scores restricted to them.
        scores = torch.rand(bs, slen, generator=generator).masked_fill(~allowed, -1.0)
        fallback = scores.argmax(dim=1)
        rows = empty.nonzero().flatten()
        pred_mask[rows, fallback[rows]] = True
    labels = ids_cpu[pred_mask]
    input_ids = ids_cpu.masked_fill(pred_mask, mask_index)
    return MaskedTokens(input_ids.to(device), pred_mask.to(device), labels.to(device))
