"""`python -m xlmtrain.fill_mask MODEL "Bonjour, je suis un modèle <mask>." --lang fr [--top-k 5] [--input FILE]`.

Prints the top-k completions of every `<mask>` (alias of XLM's `<special1>`) with their probabilities.
Sentences come from the command line and/or `--input FILE` (one per line; empty lines are skipped and
counted). Python equivalent: `xlmtrain.inference.fill_mask(model, text, lang, top_k=5)`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xlmtrain.cli.model_args import add_model_arguments, load_from_args, run
from xlmtrain.inference.masked_lm import MaskPrediction, encode_masked, fill_masks
from xlmtrain.inference.textio import read_lines

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; argparse exits with code 2 on malformed arguments."""
    parser = argparse.ArgumentParser(prog="python -m xlmtrain.fill_mask", description=__doc__.split("\n\n")[1])
    add_model_arguments(parser)
    parser.add_argument("text", nargs="*", help="sentences with <mask>")
    parser.add_argument("--lang", required=True, help="language of the sentences (one of the model's languages)")
    parser.add_argument("--input", type=Path, help="file with one sentence per line")
    parser.add_argument("--top-k", type=int, default=5, help="completions per mask (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    args = parser.parse_args(argv)
    if not args.text and args.input is None:
        parser.error("give a sentence or --input FILE")
    return args


def format_predictions(text: str, predictions: list[MaskPrediction]) -> str:
    """The sentence, then for each mask its completions: probability, BPE piece, filled sentence."""
    lines = [text]
    for mask in predictions:
        if len(predictions) > 1:
            lines.append(f"  mask {mask.index + 1}:")
        for rank, c in enumerate(mask.completions, start=1):
            lines.append(f"  {rank:>2}. {c.probability:.4f}  {c.token:<16} {c.sequence}")
    return "\n".join(lines)


def fill_mask_command(args: argparse.Namespace) -> None:
    """Validate every sentence (naming the file line of a bad one), then predict and print."""
    sentences = [("argument", i + 1, text) for i, text in enumerate(args.text)]
    if args.input is not None:
        empty = 0
        for number, line in enumerate(read_lines(args.input), start=1):
            if line.strip():
                sentences.append((str(args.input), number, line))
            else:
                empty += 1
        if empty:
            log.warning("%s: skipped %d empty line(s)", args.input, empty)
    if not sentences:
        raise ValueError(f"{args.input}: no sentences")
    model = load_from_args(args, need_lm_head=True)
    model.lang_id(args.lang)  # unknown language: fail before any work
    for source, number, text in sentences:
        try:
            encode_masked(model, text, args.lang)
        except ValueError as err:
            raise ValueError(f"{source}:{number}: {err}") from None
    texts = [text for _, _, text in sentences]
    results = fill_masks(model, texts, args.lang, top_k=args.top_k, batch_size=args.batch_size)
    print("\n\n".join(format_predictions(text, predictions) for text, predictions in zip(texts, results)))


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input (one-line message)."""
    args = parse_args(argv)
    return run(lambda: fill_mask_command(args))
