"""Numeric settings of the GPU paths: gradient clipping under bf16-mixed with fused optimizers, TF32 matmuls.

Lightning's `MixedPrecision.clip_gradients` refuses every optimizer whose step "supports AMP scaling" (fused
Adam/AdamW/SGD), because under fp16 a `GradScaler` would unscale inside that step, after clipping saw scaled
gradients. bf16-mixed has no scaler (`plugin.scaler is None`): the gradients are the true gradients, so clipping
them before the fused step is exactly fp32's clipping. `clip_gradients` clips there through Lightning's plain
`Precision.clip_gradients` and leaves every other case (fp16 with a scaler included) to Lightning, refusal and all.
Keeping the fused optimizer keeps the fp32 CPU step as fast as before (`conf/optim/adam.yaml`).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType


def clip_gradients(
    module: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    clip_val: float | None,
    algorithm: str | None,
) -> None:
    """`LightningModule.configure_gradient_clipping`'s default, except that bf16-mixed clips fused optimizers too."""
    plugin = module.trainer.precision_plugin
    if isinstance(plugin, MixedPrecision) and plugin.scaler is None and clip_val:
        kind = GradClipAlgorithmType(algorithm or GradClipAlgorithmType.NORM)
        Precision.clip_gradients(plugin, optimizer, clip_val=clip_val, gradient_clip_algorithm=kind)
        return
    module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)


def enable_tf32_on_cuda() -> None:
    """fp32 matmuls and convolutions in TF32 on CUDA (the `high` matmul precision); nothing without CUDA.

    What is left in fp32 under bf16-mixed (LayerNorm, softmax statistics, the fp32 CE) does not need the full
    23-bit mantissa; fp32-true runs on Ampere+ GPUs gain ~8x matmul throughput.
    """
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
