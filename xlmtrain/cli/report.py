"""`python -m xlmtrain.report SWEEP_DIR [--select en_dev|target_dev|oracle] [--train-lang en] [--out DIR]`:
summarise a fine-tuning sweep (run dirs with results.csv + .hydra/overrides.yaml) into per-language XNLI test
accuracy, mean ± std over seeds under the declared model-selection rule, beside the published XLM rows
(`xlmtrain.tasks.sweep`). Writes `xnli_report_<rule>.{csv,md,png}` and prints the table."""

from __future__ import annotations

import argparse
from pathlib import Path

from xlmtrain.cli.model_args import run
from xlmtrain.tasks.sweep import RULES, markdown, write_report


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 with a one-line `error: ...` on bad input (no runs, a bad results.csv, a repeated seed)."""
    parser = argparse.ArgumentParser(prog="python -m xlmtrain.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="folder holding the sweep's run dirs")
    parser.add_argument(
        "--select",
        choices=RULES,
        default="en_dev",
        help="en_dev: one configuration by the training language's dev (zero-shot honest); "
        "target_dev: per language by its dev (as XLM's authors); oracle: per language by test",
    )
    parser.add_argument("--train-lang", default="en", help="the fine-tuning language (en_dev selects on its dev)")
    parser.add_argument("--out", type=Path, help="output folder (default: SWEEP_DIR)")
    args = parser.parse_args(argv)

    def command() -> None:
        if not args.sweep_dir.is_dir():
            raise FileNotFoundError(f"{args.sweep_dir}: no such directory")
        report = write_report(args.sweep_dir, args.select, args.train_lang, args.out)
        out = args.out or args.sweep_dir
        print(markdown(report))
        print(f"\nwritten: {out}/xnli_report_{args.select}.csv, .md, .png")

    return run(command)
