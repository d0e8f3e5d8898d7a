"""Learning-rate schedules stepped once per optimizer update (reference §A5.1).

`warmup_schedule(optimizer, ...)` returns a `LambdaLR` whose factor multiplies each group's base lr:
a linear warmup from `warmup_init_lr` to `lr` over `warmup_steps`, then
- `inverse_sqrt`: `lr * sqrt(warmup_steps / step)` (XLM's `adam_inverse_sqrt`),
- `linear`: linear decay to 0 at `max_steps`,
- `cosine`: half-cosine decay to `min_lr_ratio * lr` at `max_steps`,
- `constant`: `lr`.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("inverse_sqrt", "linear", "cosine", "constant")


def lr_factor(
    step: int,
    *,
    kind: str,
    warmup_steps: int,
    warmup_init_ratio: float,
    max_steps: int,
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based: the update about to be made)."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_init_ratio + (1.0 - warmup_init_ratio) * step / warmup_steps
    if kind == "inverse_sqrt":
        return math.sqrt(max(warmup_steps, 1) / max(step, 1))
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    kind: str = "inverse_sqrt",
    warmup_steps: int = 4000,
    warmup_init_lr: float = 1e-7,
    max_steps: int = -1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Build the per-step scheduler; raises `ValueError` on an unknown kind or a missing `max_steps`.

    Args:
        optimizer: its groups' `lr` is the peak learning rate.
        kind: one of `SCHEDULES`.
        warmup_steps: linear warmup length in optimizer steps (0: none).
        warmup_init_lr: learning rate at step 0 (XLM default 1e-7).
        max_steps: total optimizer steps, needed by `linear` and `cosine`.
        min_lr_ratio: final lr of `cosine` as a fraction of the peak.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"optim.scheduler.kind: unknown schedule {kind!r}; choose from {', '.join(SCHEDULES)}")
    if kind in ("linear", "cosine") and max_steps <= 0:
        raise ValueError(f"optim.scheduler.kind={kind} needs trainer.max_steps > 0")
    peak = optimizer.param_groups[0]["lr"]
    ratio = min(1.0, warmup_init_lr / peak)

    def factor(step: int) -> float:
        return lr_factor(
            step,
            kind=kind,
            warmup_steps=warmup_steps,
            warmup_init_ratio=ratio,
            max_steps=max_steps,
            min_lr_ratio=min_lr_ratio,
        )

    return LambdaLR(optimizer, factor)
