"""`python -m xlmtrain.convert SRC DST --to {hf,xlmtrain} [--codes CODES] [--head HEAD]`.

Converts between original XLM `.pth`, transformers directories and xlmtrain checkpoints, with the weights
loaded strictly on the way (a lossy or partial conversion is an error). Tokenizer files travel along:
copied from a directory source, or built from an original checkpoint's dictionary.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xlmtrain.interop.hf import copy_tokenizer_files
from xlmtrain.interop.load import model_from_checkpoint, read_checkpoint, save_model
from xlmtrain.interop.vocab import write_tokenizer_files
from xlmtrain.interop.weights import CheckpointError
from xlmtrain.model.heads import HEADS

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; argparse exits with code 2 on malformed arguments."""
    parser = argparse.ArgumentParser(prog="python -m xlmtrain.convert", description=__doc__.split("\n\n")[1])
    parser.add_argument("src", type=Path, help="original .pth, transformers dir, xlmtrain dir or run dir")
    parser.add_argument("dst", type=Path, help="output directory")
    parser.add_argument("--to", required=True, choices=["hf", "xlmtrain"], help="output format")
    parser.add_argument("--codes", type=Path, help="fastBPE codes of an original checkpoint (-> merges.txt)")
    parser.add_argument("--head", choices=sorted(HEADS), help="head to convert (default: the checkpoint's, else lm)")
    parser.add_argument(
        "--no-lowercase",
        action="store_true",
        help="original checkpoints: the model was trained on cased, accented text (tokenizer_config.json)",
    )
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> list[str]:
    """Run one conversion; returns notes to print. Raises a ValueError subclass on bad input."""
    if args.codes is not None and not args.codes.is_file():
        raise CheckpointError(f"{args.codes}: --codes file not found")
    checkpoint = read_checkpoint(args.src)
    head = args.head or checkpoint.head or "lm"
    model, report = model_from_checkpoint(checkpoint, head, str(args.src))
    save_model(model, args.dst, format=args.to)
    notes = [f"wrote {args.to} checkpoint ({head} head) to {args.dst}"]
    if report.newly_initialized:
        notes.append(f"newly initialised (absent from {args.src}): {report.newly_initialized}")
    if checkpoint.word2id is not None:
        notes += write_tokenizer_files(
            checkpoint.word2id,
            args.dst,
            lang2id=checkpoint.config.lang2id,
            codes=args.codes,
            do_lowercase_and_remove_accent=not args.no_lowercase,
        )
    else:
        if args.codes is not None:
            notes.append(f"--codes ignored: {args.src} carries no original dictionary")
        if checkpoint.directory is not None:
            copied = copy_tokenizer_files(checkpoint.directory, args.dst)
            if copied:
                notes.append(f"copied tokenizer files {copied}")
    return notes


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success and 2 on bad input (the error is printed on one line)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        notes = convert(args)
    except ValueError as err:  # CheckpointError, ConfigError and bad heads are all ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in notes:
        print(note)
    return 0
