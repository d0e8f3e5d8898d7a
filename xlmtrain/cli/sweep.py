"""The table printed at the end of a sweep (`python -m xlmtrain -m ...`): one row per job's run dir.

A Hydra callback (`conf/hydra/default.yaml: callbacks.sweep_table`): when the multirun ends, in the process
that launched it (locally, or waiting for the submitit jobs), it lists the run dirs under `hydra.sweep.dir`
(`sweep_dir`) with their overrides (as each job recorded them in its `run.json`), state, steps and final metrics, and
writes the same table to `<sweep_dir>/sweep.txt`. Every run under the sweep dir is listed, earlier sweeps'
included: give a sweep its own `sweep_dir=` to see it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xlmtrain.training.run_identity import RunIdentityError, read_record
from xlmtrain.training.run_status import find_runs, format_table, summarize_run


def job_overrides(run_dir: Path) -> str:
    """The job's command-line overrides, as it recorded them in run.json (empty if it has no record)."""
    try:
        record = read_record(run_dir)
    except RunIdentityError:
        return "(unreadable run.json)"
    overrides = record.overrides if record is not None else []
    return " ".join(o for o in overrides if not o.startswith(("hydra.", "+launcher")))


class SweepTable(Callback):
    """Print (and save) the sweep table when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = [summarize_run(d) for d in find_runs(sweep_dir)] if sweep_dir.is_dir() else []
        if not runs:
            return
        extra = {r.run_dir: {"overrides": job_overrides(r.run_dir)} for r in runs}
        table = format_table(runs, extra, root=sweep_dir)
        (sweep_dir / "sweep.txt").write_text(table + "\n")
        print(f"\nsweep {sweep_dir} ({len(runs)} runs):\n{table}", flush=True)
