"""Preemption handling: SIGUSR1/SIGTERM -> checkpoint at the next optimizer step -> requeue or stop.

Ownership of requeue. Lightning's ``SLURMEnvironment(auto_requeue=True)`` (its default under SLURM)
saves ``hpc_ckpt_N.ckpt`` *inside the signal handler*, i.e. at an arbitrary point of a step (possibly
between two parameter updates of ``optimizer.step``, or while another rank is inside a collective),
and reloads it only for ``fit(ckpt_path=None)``. This module owns requeue instead, and Lightning's
must be switched off (``cluster_environment_plugins()`` does that; ``PreemptionCallback`` refuses to
run next to an auto-requeueing ``SLURMEnvironment``). The signal handlers only record the signal;
the work happens in ``on_train_batch_end`` after an optimizer step, where all ranks agree (one
boolean all-reduce, a blocking collective: under DDP only every ``check_every_n_steps`` optimizer steps, so
the reaction comes that many steps later at most) and then together:

1. save ``<dirpath>/<filename>`` (default ``last.ckpt``) through the trainer, so the configured
   ``CheckpointIO`` (``AtomicCheckpointIO``) writes it atomically;
2. under SLURM (``SLURM_JOB_ID`` set) rank 0 runs ``scontrol requeue <job id>``; the restarted job
   finds the checkpoint with ``find_resume_checkpoint``;
3. ask the trainer to stop, without the validation Lightning would run first; ``fit`` returns
   normally and the caller exits with status 0 when ``preempted`` is set (a line printed on rank 0
   says how to resume).

Under submitit (Hydra's ``submitit_slurm`` launcher with ``max_num_timeout > 0``) submitit owns
requeue: construct the callback with ``requeue=False`` there.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from xlmtrain.training.run_lock import slurm_job_id

log = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
"""SIGINT (Ctrl-C) too: it saves after the current step and stops (never requeues); a second Ctrl-C aborts at once."""


def cluster_environment_plugins() -> list[SLURMEnvironment]:
    """Trainer plugins that hand requeue ownership to ``PreemptionCallback``.

    Inside a SLURM job (as Lightning detects it) this is ``[SLURMEnvironment(auto_requeue=False)]``
    so Lightning still reads ranks and the master address from SLURM but installs no requeue
    handler; elsewhere it is empty (an explicit ``SLURMEnvironment`` outside SLURM would break).
    """
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class PreemptionCallback(Callback):
    """Checkpoint on SIGUSR1/SIGTERM at the next optimizer step, then requeue (SLURM) or stop.

    Args:
        dirpath: checkpoint directory of the run (the one ``find_resume_checkpoint`` scans).
        filename: name of the preemption checkpoint inside ``dirpath``.
        requeue: run ``scontrol requeue`` after saving; default: whether ``SLURM_JOB_ID`` is set.
            Pass ``False`` when something else (submitit) owns requeue.
        signals: signals that mean "preempted".
        check_every_n_steps: under DDP, agree on the signal every this many optimizer steps (the agreement is a
            blocking collective; keep this many steps well inside SLURM's `--signal` grace time). A single
            process checks every step (no collective).

    Attributes:
        preempted: set once the checkpoint is saved and the trainer asked to stop.
        checkpoint_path: the saved checkpoint (``None`` until preempted).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        filename: str = "last.ckpt",
        requeue: bool | None = None,
        signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS,
        check_every_n_steps: int = 10,
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"PreemptionCallback: check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.requeue = slurm_job_id() is not None if requeue is None else requeue
        self.signals = signals
        self.check_every_n_steps = check_every_n_steps
        self.preempted = False
        self.checkpoint_path: Path | None = None
        self._received: signal.Signals | None = None
        self._step_at_batch_start = -1
        self._pre_fit_handlers: dict[signal.Signals, Any] = {}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record: saving here would run at an arbitrary point of a step and, under DDP,
        # possibly inside another collective.
        if self._received is None:
            self._received = signal.Signals(signum)
            if signum == signal.SIGINT:
                print("[xlmtrain] Ctrl-C: saving after the current step (Ctrl-C again to abort now)", flush=True)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Start recording the signals (so one arriving during setup is acted on at the first step).

        Raises:
            ValueError: the trainer's cluster environment is an auto-requeueing ``SLURMEnvironment``.
        """
        # The signal connector reads the same private attribute to decide on its own handlers.
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            raise ValueError(
                "PreemptionCallback owns requeue but Lightning's SLURMEnvironment(auto_requeue=True) is active: "
                "pass Trainer(plugins=cluster_environment_plugins()) (xlmtrain.training.preemption)"
            )
        if stage == "fit":
            self._install_handlers()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take the signals back from Lightning, which composed its own SIGTERM handler around ours."""
        self._install_handlers()

    def _install_handlers(self) -> None:
        for signum in self.signals:
            self._pre_fit_handlers.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._on_signal)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remember the step so ``on_train_batch_end`` can tell whether an optimizer step happened."""
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After an optimizer step: if any rank was signalled, save, requeue (rank 0) and stop."""
        if trainer.global_step == self._step_at_batch_start:
            return  # mid gradient accumulation: the accumulated gradients are not in a checkpoint
        if trainer.world_size > 1 and trainer.global_step % self.check_every_n_steps:
            return  # global_step is the same on every rank: all skip or all agree together
        if not trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            return
        path = self.dirpath / self.filename
        trainer.save_checkpoint(path)
        self.checkpoint_path = path
        self.preempted = True
        trainer.should_stop = True
        # Lightning validates before honouring should_stop; that would spend the preemption grace period
        # (and log a validation the resumed run never repeats). Skip it; the loop reads this flag right after
        # this hook (a validation scheduled at exactly this step is skipped too: the restart does not redo it).
        trainer.fit_loop.epoch_loop._skip_next_val = True
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                # Its `on_train_end` would write one more `save_last` file for this step, with the epoch marked
                # finished, which resume would then prefer (same step, newer): tell it this step is saved.
                callback._last_global_step_saved = trainer.global_step
                callback._last_checkpoint_saved = str(path)
        if not trainer.is_global_zero:
            return
        reason = self._received.name if self._received is not None else "a signal on another rank"
        job_id = slurm_job_id()
        if self.requeue and job_id is not None and self._received != signal.SIGINT:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
            if result.returncode == 0:
                how = f"SLURM job {job_id} requeued; it resumes from this checkpoint when it restarts"
            else:
                how = f"`scontrol requeue {job_id}` failed ({result.stderr.strip()}); resubmit the job to resume"
        else:
            how = "run the same command again to resume from it"
        # A plain print: this line is for the person reading the job log, whatever the log level.
        print(f"[xlmtrain] {reason} at step {trainer.global_step}: saved {path}; {how}", flush=True)

    def _restore_handlers(self) -> None:
        for signum, handler in self._pre_fit_handlers.items():
            signal.signal(signum, handler)
        self._pre_fit_handlers = {}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give the signals back. Until here they stay recorded: the SIGTERM that follows a requeue
        must not reach Lightning's handler, which would run a collective inside the handler."""
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Give the signals back when fit fails (Lightning calls no ``teardown`` hook then)."""
        # Lightning's signal connector restores, after this hook, the handlers it saw when fit started,
        # which were ours (installed in setup): make it restore the pre-fit ones instead.
        original = trainer._signal_connector._original_handlers
        for signum, handler in self._pre_fit_handlers.items():
            if signum in original:
                original[signum] = handler
        self._restore_handlers()
