"""Command-line pieces shared by `xlmtrain.fill_mask`, `xlmtrain.embed` and `xlmtrain.retrieval`: the
model/tokenizer arguments and the bad-input contract (one-line `error: ...` on stderr, exit code 2)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from xlmtrain.inference.loading import InferenceModel, load_inference_model

EXIT_BAD_INPUT = 2


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and the options that locate its tokenizer."""
    parser.add_argument("model", type=Path, help="run dir, transformers dir, xlmtrain dir or original XLM .pth")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer dir overriding the one next to the model")
    parser.add_argument("--codes", type=Path, help="fastBPE codes of an original .pth checkpoint")
    parser.add_argument(
        "--no-lowercase", action="store_true", help="original .pth: the model was trained on cased, accented text"
    )


def load_from_args(args: argparse.Namespace, *, need_lm_head: bool = False) -> InferenceModel:
    """The `InferenceModel` the parsed arguments name."""
    return load_inference_model(
        args.model,
        tokenizer=args.tokenizer,
        codes=args.codes,
        lowercase=not args.no_lowercase,
        need_lm_head=need_lm_head,
    )


def run(command: Callable[[], None]) -> int:
    """Run a command body: 0 on success, 2 with a one-line message on bad input (a ValueError subclass,
    a missing file, or a missing optional segmenter for zh/th/ja)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        command()
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
