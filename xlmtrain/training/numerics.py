"""Numerics guardrails: a NaN or a loss spike never reaches a checkpoint; the run rolls back and skips the batch.

`NumericsGuard` (a Lightning callback, `conf/callbacks/default.yaml: numerics`) watches every optimizer step's
global training loss (the per-target mean CE, all-reduced, returned by the training step as `ce`) and the
gradient norm before clipping (logged as `grad_norm`, next to the per-stream losses in metrics.csv). A step is
bad when its loss or gradient norm is not finite, or its loss exceeds `spike_factor` x the median of the last
`window` good losses *of the same stream* (streams differ in level: MLM vs TLM), once `min_history` are known.

When it looks: reading a device value is a host sync, so on accelerators the values stay on the device and
are read together every `check_every_n_steps` steps (default `trainer.log_every_n_steps`, where logging reads
them anyway) and before every checkpoint write; on CPU every step (free). A bad step raises
`NumericsRollback` out of `fit`, on every rank alike (the values are global). Before every checkpoint write the
pending values are checked and the parameters must be finite: a checkpoint is written only from a state whose
every step was checked, so no checkpoint on disk is poisoned, and the checkpoint records the guard's history
(`xlmtrain_numerics`) so a resumed run judges spikes exactly as an uninterrupted one.

The job (`RollbackPlan`) then records the bad batch in `<run_dir>/numerics.json` (step, batch, stream, language,
loss, gradient norm, reason, the step rolled back to), rebuilds, resumes from the newest checkpoint (all good)
with that batch skipped (`PretrainBatches(skip_batches=...)`: its data is drawn and dropped, so every other
batch is unchanged), and after `max_rollbacks` rollbacks in one invocation stops with `NumericsStopped` (one
line). A later start of the same run still skips every batch `numerics.json` lists.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from xlmtrain.training.checkpoint_io import atomic_write_bytes

NUMERICS_FILE = "numerics.json"
CHECKPOINT_KEY = "xlmtrain_numerics"


@dataclass(frozen=True)
class BadStep:
    """One optimizer step whose numbers were bad."""

    step: int
    """Optimizer step (1-based, as metrics.csv rows and checkpoints count) that trained on the batch."""
    batch: int
    """Global batch counter of the batch source (what `skip_batches` takes)."""
    stream: str
    langs: str
    loss: float
    grad_norm: float | None
    reason: str

    def describe(self) -> str:
        norm = "" if self.grad_norm is None else f", grad norm {self.grad_norm:.4g}"
        return (f"step {self.step} (batch {self.batch}, stream {self.stream}, language {self.langs}): {self.reason}, "
                f"loss {self.loss:.4g}{norm}")  # fmt: skip


class NumericsRollback(FloatingPointError):
    """A bad step was seen: roll back to the last checkpoint and skip its batch."""

    def __init__(self, bad: BadStep) -> None:
        super().__init__(f"bad numerics at {bad.describe()}")
        self.bad = bad


class NumericsStopped(FloatingPointError):
    """The guard rolled back `max_rollbacks` times in one start and gave up (one-line message)."""


class NumericsGuard(Callback):
    """See the module docstring.

    Args:
        spike_factor: a loss above this multiple of its stream's running median is a spike; None: no spike check.
        window: how many recent good losses per stream the median is over.
        min_history: losses a stream needs before spikes are judged (early training falls fast).
        max_rollbacks: rollbacks allowed in one start before `NumericsStopped`.
        check_every_n_steps: read the values every N steps on accelerators (None: `trainer.log_every_n_steps`);
            always every step on CPU and before every checkpoint write.
    """

    def __init__(self, spike_factor: float | None = 5.0, window: int = 100, min_history: int = 20,
                 max_rollbacks: int = 3, check_every_n_steps: int | None = None) -> None:  # fmt: skip
        if spike_factor is not None and spike_factor <= 1:
            raise ValueError(f"numerics.spike_factor={spike_factor}: must be > 1 (or null to disable)")
        if window < 1 or min_history < 1 or max_rollbacks < 0:
            raise ValueError("numerics: window and min_history must be >= 1, max_rollbacks >= 0")
        self.spike_factor, self.window, self.min_history = spike_factor, window, min_history
        self.max_rollbacks, self.check_every_n_steps = max_rollbacks, check_every_n_steps
        self.history: dict[str, deque[float]] = {}
        self._pending: list[tuple[int, int, str, str, torch.Tensor, torch.Tensor | None]] = []
        self._grad_norm: torch.Tensor | None = None
        self._step_at_batch_start = -1

    # -- collecting -------------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """Gradient norm before clipping (unscaled under AMP), logged as `grad_norm`; stays on the device."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        self._grad_norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0).detach()
        pl_module.log("grad_norm", self._grad_norm, on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if trainer.global_step == self._step_at_batch_start or not isinstance(outputs, dict) or "ce" not in outputs:
            return  # mid accumulation (judged with the step's last batch) or not a pretraining step
        spec = pl_module.specs[batch.stream]
        self._pending.append((trainer.global_step, int(batch.index), spec.name, spec.lang_key,
                              outputs["ce"].detach(), self._grad_norm))  # fmt: skip
        self._grad_norm = None
        every = self.check_every_n_steps or max(trainer.log_every_n_steps, 1)
        if outputs["ce"].device.type == "cpu" or trainer.global_step % every == 0:
            self.check(trainer)

    # -- judging ----------------------------------------------------------------------------------------------
    def check(self, trainer: pl.Trainer) -> None:
        """Judge the pending steps in order (one host read for all); raise `NumericsRollback` at the first bad one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([p[4].float().reshape(()).cpu() for p in pending]).tolist()
        norms = [None if p[5] is None else float(p[5]) for p in pending]
        # fp16 AMP: an inf gradient is the loss scaler's business (it skips that step), not a bad state.
        judge_norm = not str(trainer.precision).startswith("16")
        for (step, index, stream, langs, _, _), loss, norm in zip(pending, losses, norms):
            reason = self.judge(stream, loss, norm if judge_norm else None)
            if reason is not None:
                raise NumericsRollback(BadStep(step, index, stream, langs, loss, norm, reason))
            history = self.history.setdefault(stream, deque(maxlen=self.window))
            history.append(loss)

    def judge(self, stream: str, loss: float, grad_norm: float | None) -> str | None:
        """Why this step is bad, or None if it is fine (does not record it)."""
        if not math.isfinite(loss):
            return "non-finite loss"
        if grad_norm is not None and not math.isfinite(grad_norm):
            return "non-finite gradient norm"
        history = self.history.get(stream, ())
        if self.spike_factor is not None and len(history) >= self.min_history:
            median = statistics.median(history)
            if loss > self.spike_factor * median:
                return f"loss spike ({loss / median:.1f}x the running median {median:.4g}, limit {self.spike_factor}x)"
        return None

    # -- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to let an unchecked or non-finite state be written; record the history with it."""
        self.check(trainer)
        params = [p.detach() for p in pl_module.parameters()]
        if params and not torch.isfinite(torch.stack(torch._foreach_norm(params))).all():
            raise NumericsRollback(BadStep(trainer.global_step, -1, "?", "?", math.nan, None,
                                           "non-finite parameters before a checkpoint write"))  # fmt: skip
        checkpoint[CHECKPOINT_KEY] = {"checked_step": trainer.global_step,
                                      "history": {k: list(v) for k, v in self.history.items()}}  # fmt: skip

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY) or {}
        self.history = {k: deque(v, maxlen=self.window) for k, v in saved.get("history", {}).items()}
        self._pending = []


@dataclass
class NumericsRecord:
    """`<run_dir>/numerics.json`: every skipped batch (with where the run rolled back to), across starts."""

    skipped: list[dict[str, Any]]

    @property
    def skip_batches(self) -> frozenset[int]:
        return frozenset(int(s["batch"]) for s in self.skipped if int(s["batch"]) >= 0)


def read_numerics(run_dir: str | os.PathLike) -> NumericsRecord:
    """The run's record (empty if absent). Raises ValueError naming a malformed file."""
    path = Path(run_dir) / NUMERICS_FILE
    if not path.is_file():
        return NumericsRecord([])
    try:
        return NumericsRecord(list(json.loads(path.read_text())["skipped"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable numerics record ({error})") from None


class RollbackPlan:
    """What a job does with `NumericsRollback`: record, count, and say whether to go on.

    Args:
        run_dir: where `numerics.json` lives.
        max_rollbacks: rollbacks allowed in this start.
        write: whether this process writes the record (global rank 0).
    """

    def __init__(self, run_dir: str | os.PathLike, max_rollbacks: int, *, write: bool = True) -> None:
        self.run_dir, self.max_rollbacks, self.write = Path(run_dir), max_rollbacks, write
        self.record = read_numerics(run_dir)
        self.rollbacks = 0

    @property
    def skip_batches(self) -> frozenset[int]:
        return self.record.skip_batches

    def roll_back(self, error: NumericsRollback, resume_step: int) -> None:
        """Record the bad batch and the step the run goes back to; raise `NumericsStopped` past the limit."""
        self.rollbacks += 1
        entry = {**asdict(error.bad), "rolled_back_to": resume_step, "rollback": self.rollbacks,
                 "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        self.record.skipped.append(entry)
        if self.write:
            text = json.dumps({"skipped": self.record.skipped}, indent=1) + "\n"
            atomic_write_bytes(text.encode(), self.run_dir / NUMERICS_FILE)
        if self.rollbacks > self.max_rollbacks:
            raise NumericsStopped(
                f"stopped after {self.max_rollbacks} numerics rollbacks (last: {error.bad.describe()}); no checkpoint "
                f"holds a bad state; lower optim.optimizer.lr or raise callbacks.numerics.spike_factor, then run the "
                f"same command with resume.allow_changes=[...] (skipped batches: {self.run_dir / NUMERICS_FILE})"
            )
