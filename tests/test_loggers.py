"""`logger=tensorboard` and `logger=wandb` work with no network: each writes its files beside metrics.csv."""

from __future__ import annotations

import re
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


def test_wandb_run_id_is_the_runs_own_and_kept_on_resume(synthetic_prep: Path, tmp_path: Path, monkeypatch) -> None:
    """Each run gets its own wandb id (run.json's run_id, not the run name every `+recipe=mlm` run shares); a
    continuation appends to it; `resume=never` starts a new wandb run."""
    import json

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = tmp_path / "run"

    def start(*extra: str) -> str:
        run_job(_cfg(synthetic_prep, run, "mlm", "logger=wandb", "export=false", *extra))
        return json.loads((run / "run.json").read_text())["run_id"]

    first = start("trainer.max_steps=2")
    assert first.startswith("run-") and first != "mlm"
    assert start("trainer.max_steps=3") == first  # resumed: same wandb run
    third = start("trainer.max_steps=2", "resume=never")
    assert third != first
    # wandb names a run's folder offline-run-<YYYYMMDD_HHMMSS>-<id>, adding -1, -2 when a folder of that second exists
    folder = re.compile(r"offline-run-\d{8}_\d{6}-(run-[0-9a-f]+)(?:-\d+)?")
    ids = {folder.fullmatch(p.name).group(1) for p in run.rglob("offline-run-*") if p.is_dir()}
    # exactly two wandb runs: the continuation logged to the first run's id (a new id there would be a third)
    assert ids == {first, third}, ids
