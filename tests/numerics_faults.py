"""Faults injected into real training runs by the numerics tests (a callback Hydra can build:
`+callbacks.fault._target_=tests.numerics_faults.PoisonAtBatch +callbacks.fault.batch=K`)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class PoisonAtBatch(Callback):
    """Before training batch `batch` (the batch source's counter), set the embedding LayerNorm's weights to
    `value`: that step's loss is `value`-poisoned (NaN by default) and so is every later state, as a bad batch or
    an overflow would leave it. Fires only for that batch, so a run that skips the batch never sees it."""

    def __init__(self, batch: int, value: float = float("nan")) -> None:
        self.batch, self.value = batch, value

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch.index == self.batch:
            with torch.no_grad():
                pl_module.model.transformer.layer_norm_emb.weight.fill_(self.value)
