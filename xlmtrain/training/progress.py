"""The training progress bar in optimizer steps (`step 120/600`), not batches of an epoch.

Pretraining draws from an infinite stream mixture: Lightning's bar counted batches of an epoch that does not
exist (`Epoch 0/-2`, and `90/30` after a resume). This one shows the trainer's global step against
`trainer.max_steps`, starting where a resumed run starts.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """`TQDMProgressBar` counting optimizer steps (see the module docstring)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        bar.n = bar.last_print_n = trainer.global_step
        bar.set_description("step")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()
