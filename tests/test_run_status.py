"""Run status and `python -m xlmtrain.runs`: states as runs record them, a dead "running" run shown as failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_run_lock import _dead_pid, _write_lock
from xlmtrain.runs import main
from xlmtrain.training.run_status import find_runs, summarize_run, write_status

METRICS = "lr,step,train_loss,train_io_mlm_loss,valid_mlm_ppl,valid_io_mlm_ppl\n" \
          "0.1,1,5.0,5.0,,\n0.1,2,4.0,4.0,,\n,2,,,30.5,31.0\n0.1,3,3.5,3.5,,\n"  # fmt: skip


def _run(root: Path, name: str, state: str | None, step: int = 3, metrics: str = METRICS) -> Path:
    run_dir = root / name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.csv").write_text(metrics)
    if state is not None:
        write_status(run_dir, state, step=step, max_steps=10, monitor="valid_mlm_ppl",
                     message="NaN x3" if state == "stopped_on_nan" else "")  # fmt: skip
    return run_dir


def test_summary_reads_state_steps_and_headline_metrics(tmp_path: Path) -> None:
    summary = summarize_run(_run(tmp_path, "a", "finished"))
    assert (summary.state, summary.step, summary.max_steps) == ("finished", 3, 10)
    assert summary.metrics == {"train_loss": 3.5, "valid_mlm_ppl": 30.5}


def test_running_without_a_live_lock_is_failed(tmp_path: Path) -> None:
    dead = _run(tmp_path, "dead", "running", step=0)
    _write_lock(dead, pid=_dead_pid())
    summary = summarize_run(dead)
    assert summary.state == "failed" and "process gone" in summary.message
    assert summary.step == 3  # from metrics.csv: the run got further than its status says
    live = _run(tmp_path, "live", "running")
    _write_lock(live, pid=1, process_start=None)  # pid 1 is alive
    assert summarize_run(live).state == "running"


def test_unknown_state_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown run state 'done'"):
        write_status(tmp_path, "done")


def test_runs_command_lists_every_run_with_its_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    for name, state in [("a", "finished"), ("b", "preempted"), ("c", "failed"), ("sweep/lr=1e-3", "stopped_on_nan")]:
        _run(root, name, state)
    _run(root, "old", None)  # predates status.json: no model/ -> unknown
    (root / "a" / "model").mkdir()  # a run dir's own subfolders are not runs
    assert find_runs(root) == sorted(root / n for n in ("a", "b", "c", "old", "sweep/lr=1e-3"))
    assert main([str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "state", "step", "train_loss", "valid_mlm_ppl"]
    rows = {line.split()[0]: line.split() for line in out[1:6]}
    assert rows["a"][1:] == ["finished", "3/10", "3.5", "30.5"]
    assert rows["sweep/lr=1e-3"][1] == "stopped_on_nan" and rows["old"][1] == "unknown"
    assert out[-1].endswith("lr=1e-3: NaN x3")
    assert main([str(tmp_path / "absent")]) == 2


def test_runs_module_entry_point(tmp_path: Path) -> None:
    _run(tmp_path, "r", "finished")
    out = subprocess.run([sys.executable, "-m", "xlmtrain.runs", str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "finished" in out and json.loads((tmp_path / "r" / "status.json").read_text())["step"] == 3
    # A listing imports no torch (hundreds of runs, on a login node).
    subprocess.run([sys.executable, "-c", "import sys, xlmtrain.runs; assert 'torch' not in sys.modules"], check=True)
