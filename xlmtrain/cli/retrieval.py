"""`python -m xlmtrain.retrieval MODEL --src FILE.en --tgt FILE.fr --src-lang en --tgt-lang fr [--scoring cosine|margin]`.

Embeds both sides of an aligned bitext (line i of --src translates line i of --tgt) and prints P@1 of
retrieving the aligned line among all lines, in both directions, with chance level; `--output` writes
the same as JSON. Python equivalent: `xlmtrain.inference.evaluate_retrieval(model, src_lines, tgt_lines,
src_lang, tgt_lang)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xlmtrain.cli.model_args import add_model_arguments, load_from_args, run
from xlmtrain.inference.embeddings import POOLINGS
from xlmtrain.inference.retrieval import SCORINGS, LineCountMismatchError, evaluate_retrieval
from xlmtrain.inference.textio import count_lines, read_lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; argparse exits with code 2 on malformed arguments."""
    parser = argparse.ArgumentParser(prog="python -m xlmtrain.retrieval", description=__doc__.split("\n\n")[1])
    add_model_arguments(parser)
    parser.add_argument("--src", type=Path, required=True, help="source side, one sentence per line")
    parser.add_argument("--tgt", type=Path, required=True, help="target side, aligned line by line")
    parser.add_argument("--src-lang", required=True)
    parser.add_argument("--tgt-lang", required=True)
    # Defaults: the combination that measured best on the synthetic languages (recipes/synthetic/README.md),
    # the same as the `callbacks=retrieval` defaults.
    parser.add_argument(
        "--scoring", choices=SCORINGS, default="margin", help="ratio margin (bitext mining; default) or cosine"
    )
    parser.add_argument("--k", type=int, default=4, help="neighbours of the margin (default 4)")
    parser.add_argument(
        "--pooling", choices=POOLINGS, default="mean", help="mean over tokens (default) or first (XLM's)"
    )
    parser.add_argument("--layer", type=int, default=-1, help="-1 = last block, 0 = embedding output")
    parser.add_argument(
        "--center",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="subtract each side's mean embedding before scoring (default on)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    return parser.parse_args(argv)


def retrieval_command(args: argparse.Namespace) -> None:
    """Check the files (before loading the model), evaluate, print the table, write JSON."""
    for path in (args.src, args.tgt):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
    n_src, n_tgt = count_lines(args.src), count_lines(args.tgt)
    if n_src != n_tgt:
        raise LineCountMismatchError(
            f"{args.src} has {n_src} lines but {args.tgt} has {n_tgt}: aligned files need equal counts"
        )
    model = load_from_args(args)
    result = evaluate_retrieval(
        model,
        list(read_lines(args.src)),
        list(read_lines(args.tgt)),
        args.src_lang,
        args.tgt_lang,
        scoring=args.scoring,
        k=args.k,
        pooling=args.pooling,
        layer=args.layer,
        center=args.center,
        batch_size=args.batch_size,
        names=(str(args.src), str(args.tgt)),
    )
    print(result.table())
    if args.output is not None:
        payload = {"model": str(args.model), "src": str(args.src), "tgt": str(args.tgt), **result.to_dict()}
        args.output.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.output}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input (one-line message)."""
    args = parse_args(argv)
    return run(lambda: retrieval_command(args))
