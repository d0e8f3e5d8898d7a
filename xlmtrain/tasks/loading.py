"""Load a pretrained model with a fresh task head, and the tokenizer it was trained with, from any format
`xlmtrain.load_model` reads: an xlmtrain run dir, a transformers / xlmtrain model dir, or an original XLM
`.pth` (whose dictionary travels in the file; its BPE codes must be given)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xlmtrain.data.tokenizer import XLMTokenizer
from xlmtrain.interop.load import model_from_checkpoint, read_checkpoint
from xlmtrain.interop.tokenizer import checkpoint_tokenizer
from xlmtrain.model.heads import XLMHeadModel

log = logging.getLogger(__name__)


def load_pretrained(
    init: str | Path, head: str, *, codes: str | Path | None = None, lowercase: bool = True, **config_overrides: Any
) -> tuple[XLMHeadModel, XLMTokenizer]:
    """The `head` model initialised from `init` (head freshly initialised unless the checkpoint has it) and
    the model's tokenizer.

    Args:
        init: run dir, model dir or original `.pth`.
        head: an `xlmtrain.model.heads.HEADS` name.
        codes: the fastBPE codes of an original `.pth` (ignored for directories, which carry merges.txt).
        lowercase: lowercase and strip accents, for an original `.pth` (its XNLI-15/17/100 models do).
        **config_overrides: XLMConfig fields, e.g. `num_labels=3`.

    Raises:
        CheckpointError: unreadable / inconsistent checkpoint, `codes` missing for a `.pth`, or a tokenizer
            whose vocabulary size differs from the model's (see `checkpoint_tokenizer`).
        FileNotFoundError: no tokenizer next to a directory checkpoint.
    """
    checkpoint = read_checkpoint(init)
    model, report = model_from_checkpoint(checkpoint, head, str(init), **config_overrides)
    if report.newly_initialized:
        log.info("%s: new %s head parameters %s", init, head, report.newly_initialized)
    tokenizer = checkpoint_tokenizer(
        checkpoint,
        init,
        vocab_size=model.config.vocab_size,
        codes=codes,
        lowercase=lowercase,
        codes_option="pretrained.codes=FILE",
    )
    return model, tokenizer
