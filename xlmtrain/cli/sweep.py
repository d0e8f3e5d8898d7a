"""A sweep's job names and its table (`python -m xlmtrain -m ...`): one row per job's run dir.

A Hydra callback (`conf/hydra/default.yaml: callbacks.sweep_table`). When the multirun starts it hands the keys the
sweep varies to the jobs (`cli/run_names.py` names each job from them). When it ends, in the process that
launched it (locally, or waiting for the submitit jobs), it lists the run dirs under `hydra.sweep.dir`
(`sweep_dir`) with their overrides (as each job recorded them in its `run.json`), state, steps and final
metrics, and writes the same table to `<sweep_dir>/sweep.txt`. Every run under the sweep dir is listed, earlier sweeps'
included: give a sweep its own `sweep_dir=` to see it alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from xlmtrain.cli.run_names import SWEPT_KEYS_ENV
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


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys of the sweep overrides (`lr=1e-3,3e-3`, `seed=range(3)`, `choice(...)`) among `overrides`."""
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


class SweepTable(Callback):
    """Name the jobs from what the sweep varies (`on_multirun_start`), and print (and save) the sweep table when
    the multirun ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(list(config.hydra.overrides.task)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = [summarize_run(d) for d in find_runs(sweep_dir)] if sweep_dir.is_dir() else []
        if not runs:
            return
        extra = {r.run_dir: {"overrides": job_overrides(r.run_dir)} for r in runs}
        table = format_table(runs, extra, root=sweep_dir)
        (sweep_dir / "sweep.txt").write_text(table + "\n")
        print(f"\nsweep {sweep_dir} ({len(runs)} runs):\n{table}", flush=True)
