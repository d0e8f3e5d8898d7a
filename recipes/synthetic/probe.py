"""Print masked-token accuracy in one language with and without its translation in context.

Usage: python recipes/synthetic/probe.py RUN_DIR [RUN_DIR ...] [--context io --target vo]
Each RUN_DIR is a finished `python -m xlmtrain` run (its `model/` and `data.json`, the resolved data dir, are read).
Two target choices: XLM's evaluation masking (15% of the tokens, `.` included) and one content word per
sentence (any token but `.`), which the sentence alone cannot determine and its translation does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.interop.load import load_model
from xlmtrain.objectives.probe import context_accuracy
from xlmtrain.training.run_data import read_run_data


def main() -> None:
    """Parse arguments, probe each run, print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--context", default="io")
    parser.add_argument("--target", default="vo")
    args = parser.parse_args()
    for run in args.runs:
        data = PreprocessedData(read_run_data(run)["resolved_dir"])
        model = load_model(run / "model")
        for label, targets in (("15% of tokens", {}), ("one content word", {"skip_words": (".",)})):
            alone = context_accuracy(model, data, args.context, args.target, with_context=False, **targets)
            paired = context_accuracy(model, data, args.context, args.target, with_context=True, **targets)
            print(
                f"{run}: {args.target} masked {label}: accuracy alone {alone:.1f}%, "
                f"with {args.context} translation in context {paired:.1f}% (gain {paired - alone:+.1f})"
            )


if __name__ == "__main__":
    main()
