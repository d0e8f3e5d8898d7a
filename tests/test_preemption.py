"""PreemptionCallback in-process: signal timing, handler ownership. Real signals to the real training CLI are
in `test_resume_kill.py`, under SLURM in `test_slurm_templates.py`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from torch.utils.data import DataLoader, TensorDataset

from xlmtrain.training.checkpoint_io import AtomicCheckpointIO
from xlmtrain.training.preemption import PreemptionCallback
from xlmtrain.training.resume import find_resume_checkpoint, validated_step


class SelfSignalling(pl.LightningModule):
    """Sends itself ``signum`` during training batch ``signal_at_batch`` (0-based)."""

    def __init__(self, signum: int, signal_at_batch: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.signum, self.signal_at_batch = signum, signal_at_batch

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == self.signal_at_batch:
            os.kill(os.getpid(), self.signum)
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(
    tmp_path: Path, module: pl.LightningModule, accumulate: int = 1, **trainer_kwargs: object
) -> PreemptionCallback:
    callback = PreemptionCallback(tmp_path / "ckpt", requeue=False)
    trainer = pl.Trainer(
        max_steps=20,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[callback],
        plugins=[AtomicCheckpointIO(), *trainer_kwargs.pop("plugins", [])],
        **trainer_kwargs,
    )
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(256, 4)), batch_size=4))
    return callback


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_saves_after_the_current_step_and_stops(
    tmp_path: Path, signum: signal.Signals, capsys: pytest.CaptureFixture
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    callback = fit(tmp_path, SelfSignalling(signum, signal_at_batch=4))
    assert callback.preempted and callback.checkpoint_path == tmp_path / "ckpt" / "last.ckpt"
    assert validated_step(callback.checkpoint_path) == 5  # batch 4 is the 5th optimizer step
    assert (
        f"{signum.name} at step 5: saved {callback.checkpoint_path}; run the same command again"
        in capsys.readouterr().out
    )
    assert {s: signal.getsignal(s) for s in before} == before  # handlers given back


def test_signal_mid_accumulation_waits_for_the_optimizer_step(tmp_path: Path) -> None:
    # accumulate 3: optimizer steps after batches 2, 5, 8; a signal in batch 3 is acted on after batch 5.
    callback = fit(tmp_path, SelfSignalling(signal.SIGUSR1, signal_at_batch=3), accumulate=3)
    assert validated_step(callback.checkpoint_path) == 2


def test_no_signal_no_checkpoint(tmp_path: Path) -> None:
    callback = fit(tmp_path, SelfSignalling(signal.SIGUSR1, signal_at_batch=-1))
    assert not callback.preempted and find_resume_checkpoint(tmp_path / "ckpt") is None


def test_refuses_lightning_auto_requeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "t",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_JOB_ID": "7",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="auto_requeue=True"):
        fit(tmp_path, SelfSignalling(signal.SIGUSR1, -1), plugins=[SLURMEnvironment(auto_requeue=True)])


class SignalInSetup(SelfSignalling):
    def setup(self, stage: str) -> None:
        os.kill(os.getpid(), self.signum)  # before training starts: acted on at the first step


class Failing(SelfSignalling):
    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        raise RuntimeError("boom")


def test_signal_before_training_is_acted_on_at_first_step(tmp_path: Path) -> None:
    callback = fit(tmp_path, SignalInSetup(signal.SIGUSR1, -1))
    assert validated_step(callback.checkpoint_path) == 1


def test_handlers_given_back_when_fit_fails(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, Failing(signal.SIGUSR1, -1))
    assert {s: signal.getsignal(s) for s in before} == before
