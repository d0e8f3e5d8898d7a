"""`python -m xlmtrain.runs [DIR]`: list the runs under DIR (default `runs`) with their state, steps and headline metrics.

States: running, finished, preempted (the same command resumes), failed (the message says why; "process
gone" for a run killed without a word), stopped_on_nan (the numerics guard gave up; `numerics.json` lists the
skipped batches). Reads only what runs record (status.json, run.json, .lock, metrics.csv, results.csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xlmtrain.training.run_status import find_runs, format_table, summarize_run


def main(argv: list[str] | None = None) -> int:
    """Print the table; 2 with a one-line error if DIR does not exist."""
    parser = argparse.ArgumentParser(prog="python -m xlmtrain.runs", description=__doc__.split("\n\n")[1])
    parser.add_argument("dir", nargs="?", type=Path, default=Path("runs"), help="a run dir or a folder of runs")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: {args.dir}: no such directory", file=sys.stderr)
        return 2
    runs = [summarize_run(d) for d in find_runs(args.dir)]
    if not runs:
        print(f"no runs under {args.dir}")
        return 0
    print(format_table(runs, root=args.dir))
    return 0
