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

from xlmtrain.interop.hf import TOKENIZER_FILES, copy_tokenizer_files
from xlmtrain.interop.load import model_from_checkpoint, read_checkpoint, save_model
from xlmtrain.interop.tokenizer import checkpoint_tokenizer
from xlmtrain.interop.vocab import write_tokenizer_files
from xlmtrain.interop.weights import CheckpointError
from xlmtrain.model.heads import HEADS
from xlmtrain.training.outputs import atomic_output_dir, check_output

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; argparse exits with code 2 on malformed arguments."""
    parser = argparse.ArgumentParser(prog="python -m xlmtrain.convert", description=__doc__.split("\n\n")[1])
    parser.add_argument("src", type=Path, help="original .pth, transformers dir, xlmtrain dir or run dir")
    parser.add_argument("dst", type=Path, help="output directory")
    parser.add_argument("--to", required=True, choices=["hf", "xlmtrain"], help="output format")
    parser.add_argument("--codes", type=Path, help="fastBPE codes of an original checkpoint (-> merges.txt)")
    parser.add_argument("--head", choices=sorted(HEADS), help="head to convert (default: the checkpoint's, else lm)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument(
        "--no-lowercase",
        action="store_true",
        help="original checkpoints: the model was trained on cased, accented text (tokenizer_config.json)",
    )
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> list[str]:
    """Run one conversion; returns notes to print. Raises a ValueError subclass on bad input.

    DST is checked before anything is read (not SRC, not inside... see `check_output`; an existing DST
    needs `--overwrite`), written aside and moved into place when complete. A directory source's tokenizer
    files are checked against the model's vocabulary size before they are copied.
    """
    if args.codes is not None and not args.codes.is_file():
        raise CheckpointError(f"{args.codes}: --codes file not found")
    check_output(args.dst, [args.src, args.codes], overwrite=args.overwrite, option="DST")
    checkpoint = read_checkpoint(args.src)
    if checkpoint.directory is not None:
        check_output(args.dst, [checkpoint.directory], overwrite=args.overwrite, option="DST")
    head = args.head or checkpoint.head or "lm"
    model, report = model_from_checkpoint(checkpoint, head, str(args.src))
    copy_from = None
    directory = checkpoint.directory
    if checkpoint.word2id is None and directory is not None and any((directory / n).is_file() for n in TOKENIZER_FILES):
        # As fill_mask / embed do: a model must not travel with a tokenizer of another vocabulary.
        checkpoint_tokenizer(checkpoint, args.src, vocab_size=model.config.vocab_size)
        copy_from = directory
    notes = [f"wrote {args.to} checkpoint ({head} head) to {args.dst}"]
    if report.newly_initialized:
        notes.append(f"newly initialised (absent from {args.src}): {report.newly_initialized}")
    with atomic_output_dir(args.dst) as out:
        save_model(model, out, format=args.to)
        if checkpoint.word2id is not None:
            notes += write_tokenizer_files(
                checkpoint.word2id,
                out,
                lang2id=checkpoint.config.lang2id,
                codes=args.codes,
                do_lowercase_and_remove_accent=not args.no_lowercase,
            )
        else:
            if args.codes is not None:
                notes.append(f"--codes ignored: {args.src} carries no original dictionary")
            if copy_from is not None:
                notes.append(f"copied tokenizer files {copy_tokenizer_files(copy_from, out)}")
    return notes


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success and 2 on bad input (the error is printed on one line)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        notes = convert(args)
    except (ValueError, FileNotFoundError) as err:  # CheckpointError, ConfigError, OutputError, bad heads
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in notes:
        print(note)
    return 0
