"""`logger=tensorboard` and `logger=wandb` work with no network: each writes its files beside metrics.csv."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_pretrain import _cfg
from xlmtrain.__main__ import run as run_job
from xlmtrain.training.report import read_metrics


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_logger_writes_offline(synthetic_prep: Path, tmp_path: Path, monkeypatch, logger: str) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # wandb's own cache/config stays out of $HOME
    run = tmp_path / "run"
    cfg = _cfg(synthetic_prep, run, "mlm", f"logger={logger}", "trainer.max_steps=3", "export=false")
    assert run_job(cfg)["steps"] == 3
    assert any("train_loss" in r for r in read_metrics(run / "metrics.csv"))
    if logger == "tensorboard":
        assert list(run.rglob("events.out.tfevents.*")), "no TensorBoard event file"
    else:
        offline_runs = list(run.rglob("offline-run-*"))
        assert offline_runs and list(offline_runs[0].glob("*.wandb")), "no offline wandb run"
