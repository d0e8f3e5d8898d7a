"""Faults injected into real training runs by the numerics tests (a callback Hydra can build:
`+callbacks.fault._target_=tests.numerics_faults.PoisonAtBatch +callbacks.fault.batches=[K]`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class PoisonAtBatch(Callback):
    """Before each training batch in `batches` (the batch source's counter), set the embedding LayerNorm's
    weights to `value`: that step's loss is `value`-poisoned (NaN by default) and so is every later state, as a
    bad batch or an overflow would leave it. A run that skips those batches never sees the fault."""

    def __init__(self, batches: Sequence[int], value: float = float("nan")) -> None:
        self.batches, self.value = {int(b) for b in batches}, value

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch.index in self.batches:
            with torch.no_grad():
                pl_module.model.transformer.layer_norm_emb.weight.fill_(self.value)
