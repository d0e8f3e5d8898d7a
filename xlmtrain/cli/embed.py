"""`python -m xlmtrain.embed MODEL --input FILE --lang fr --output FILE.npy [--pooling first|mean] [--layer -1]`.

Writes one float32 row per input line ((n_lines, emb_dim) `.npy`), in input order. Lines are read in
chunks, length-sorted into batches and written to a memory-mapped output, so large files fit in memory.
Python equivalent: `xlmtrain.inference.embed_sentences(model, lines, lang)` / `embed_file(...)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xlmtrain.cli.model_args import add_model_arguments, load_from_args, run
from xlmtrain.inference.embeddings import POOLINGS, embed_file
from xlmtrain.training.outputs import atomic_output_file, check_output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; argparse exits with code 2 on malformed arguments."""
    parser = argparse.ArgumentParser(prog="python -m xlmtrain.embed", description=__doc__.split("\n\n")[1])
    add_model_arguments(parser)
    parser.add_argument("--input", type=Path, required=True, help="UTF-8 text, one sentence per line")
    parser.add_argument("--lang", required=True, help="language of the lines (one of the model's languages)")
    parser.add_argument("--output", type=Path, required=True, help="output .npy file")
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="first",
        help="first: hidden state of the leading </s> (XLM); mean: mean over the sentence's tokens",
    )
    parser.add_argument("--layer", type=int, default=-1, help="-1 = last block, 0 = embedding output, i = block i")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass")
    parser.add_argument("--chunk-lines", type=int, default=20000, help="lines read (and sorted) at a time")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def embed_command(args: argparse.Namespace) -> None:
    """Embed the file and print what was written. The output is refused before any work if it is an input
    (the text, the model, its tokenizer or codes) or exists without `--overwrite`; it is written aside and
    moved into place when complete."""
    if not args.input.is_file():
        raise FileNotFoundError(f"{args.input}: --input file not found")
    check_output(
        args.output, [args.input, args.model, args.tokenizer, args.codes], overwrite=args.overwrite, option="--output"
    )
    model = load_from_args(args)
    with atomic_output_file(args.output) as tmp:
        stats = embed_file(
            model,
            args.input,
            args.lang,
            tmp,
            pooling=args.pooling,
            layer=args.layer,
            batch_size=args.batch_size,
            chunk_lines=args.chunk_lines,
            progress=not args.no_progress,
        )
    stats.warn(str(args.input), model.max_len)
    print(
        f"wrote {stats.lines} x {model.model.config.emb_dim} embeddings to {args.output} "
        f"({stats.empty} empty, {stats.truncated} truncated)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input (one-line message)."""
    args = parse_args(argv)
    return run(lambda: embed_command(args))
