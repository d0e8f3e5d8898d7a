"""What a run says about itself: `<run_dir>/status.json`, and the listing of runs built from it.

The training job writes `status.json` (atomically) when it starts (`running`) and when it ends: `finished`,
`preempted` (checkpoint saved on a signal; the same command resumes), `failed` (an error, named in
`message`), `stopped_on_nan` (the numerics guard gave up after its rollbacks), with the step reached.
A `running` status whose lock (`run_lock.py`) is gone or stale is shown as `failed` ("process gone"): the
process died without saying so (SIGKILL, node failure); the same command resumes it.

`summarize_run(dir)` reads only what runs record (status.json, run.json, .lock, metrics.csv, results.csv):
never a checkpoint, and imports no torch, so listing hundreds of runs is quick. `find_runs(root)` finds run dirs under a folder
(a dir holding status.json, run.json, or checkpoints/ + metrics.csv for runs that predate status.json).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlmtrain.training.run_lock import RunLock

STATUS_FILE = "status.json"
STATES = ("running", "finished", "preempted", "failed", "stopped_on_nan")


def write_status(run_dir: str | os.PathLike, state: str, *, step: int | None = None, max_steps: int | None = None,
                 message: str = "", monitor: str | None = None) -> Path:  # fmt: skip
    """Record the run's state in `<run_dir>/status.json` (atomic). Raises ValueError on an unknown state."""
    # torch comes with it: only a writer (a training) needs it.
    from xlmtrain.training.checkpoint_io import atomic_write_bytes

    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; expected one of {STATES}")
    record = {
        "state": state,
        "step": step,
        "max_steps": max_steps,
        "message": " ".join(message.split()),
        "monitor": monitor,
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = Path(run_dir) / STATUS_FILE
    atomic_write_bytes((json.dumps(record, indent=1) + "\n").encode(), path)
    return path


def read_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded status, None if absent or unreadable (a listing must not fail on one odd run)."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def metric_rows(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a Lightning metrics.csv as dicts of their non-empty numeric cells ([] if absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            cells = {}
            for key, value in row.items():
                try:
                    cells[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(cells)
    return rows


@dataclass
class RunSummary:
    """One line of `python -m xlmtrain.runs`."""

    run_dir: Path
    state: str
    step: int | None
    max_steps: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    fingerprint: str | None = None


def headline_metrics(run_dir: Path, monitor: str | None) -> dict[str, float]:
    """The last training loss and the last value of the monitored metric (else of every `valid_*` average),
    or the fine-tuning results' averages."""
    out: dict[str, float] = {}
    rows = metric_rows(run_dir / "metrics.csv")
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    if losses:
        out["train_loss"] = losses[-1]
    valid = {k: v for r in rows for k, v in r.items() if k.startswith("valid_")}
    if monitor and monitor in valid:
        out[monitor] = valid[monitor]
    else:
        out.update({k: v for k, v in valid.items() if k.count("_") == 2})  # averages: valid_<group>_<metric>
    results = run_dir / "results.csv"
    if results.is_file():
        with open(results, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("lang") == "avg":
                    metric = next(k for k in row if k not in ("lang", "split", "n"))
                    out[f"{row['split']}_avg_{metric}"] = float(row[metric])
    return out


def summarize_run(run_dir: str | os.PathLike) -> RunSummary:
    """The state, steps and headline metrics of one run dir (see the module docstring)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) or {}
    state = status.get("state")
    message = status.get("message", "")
    if state == "running":
        lock = RunLock(run_dir)
        holder = lock.read()
        if holder is None or lock.is_stale(holder):
            state, message = "failed", "process gone without a final status (killed?); the same command resumes it"
    rows = metric_rows(run_dir / "metrics.csv")
    step = status.get("step")
    if step is None or status.get("state") in (None, "running"):  # metrics.csv is newer than a running status
        steps = [int(r["step"]) for r in rows if "train_loss" in r and "step" in r]
        step = max(steps) if steps else step
    if state is None:
        state = "finished" if (run_dir / "model").is_dir() else "unknown"
    fingerprint = None
    try:
        fingerprint = json.loads((run_dir / "run.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        pass
    return RunSummary(run_dir, state, step, status.get("max_steps"), headline_metrics(run_dir, status.get("monitor")),
                      message, fingerprint)  # fmt: skip


def is_run_dir(path: Path) -> bool:
    """Whether `path` looks like a run dir."""
    return (
        (path / STATUS_FILE).is_file()
        or (path / "run.json").is_file()
        or ((path / "checkpoints").is_dir() and (path / "metrics.csv").is_file())
    )


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run dirs at or under `root`, sorted; archived runs (`previous-*`) are listed too."""
    root = Path(root)
    found = [root] if is_run_dir(root) else []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("checkpoints", "model", ".hydra", "wandb", "tensorboard"))
        found += [Path(dirpath) / d for d in dirnames if is_run_dir(Path(dirpath) / d)]
    return sorted(set(found))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def format_table(runs: Iterable[RunSummary], extra: Mapping[Path, Mapping[str, str]] | None = None,
                 root: Path | None = None) -> str:  # fmt: skip
    """A plain-text table: run dir, state, step/max, any `extra` columns per run (e.g. sweep overrides), and
    the union of the headline metrics."""
    runs = list(runs)
    extra = extra or {}
    extra_cols = sorted({k for cols in extra.values() for k in cols})
    metric_cols = sorted({k for r in runs for k in r.metrics})
    header = ["run", "state", "step", *extra_cols, *metric_cols]
    lines = [header]
    for r in runs:
        name = (
            str(r.run_dir.relative_to(root)) if root is not None and r.run_dir.is_relative_to(root) else str(r.run_dir)
        )
        steps = "" if r.step is None else f"{r.step}" + (f"/{r.max_steps}" if r.max_steps and r.max_steps > 0 else "")
        cols = extra.get(r.run_dir, {})
        lines.append([name or ".", r.state, steps, *(cols.get(c, "") for c in extra_cols),
                      *(_cell(r.metrics.get(c)) for c in metric_cols)])  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines]
    notes = [f"{r.run_dir}: {r.message}" for r in runs if r.message and r.state in ("failed", "stopped_on_nan")]
    return "\n".join(text + notes)
