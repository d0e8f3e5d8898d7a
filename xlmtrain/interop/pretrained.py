"""`load_model_and_tokenizer`: the one loader of a model together with the tokenizer it was trained with, for
fine-tuning (a fresh task head) and inference (the checkpoint's own head) alike, from every format
`xlmtrain.load_model` reads: an xlmtrain run dir, a transformers / xlmtrain model dir, or an original XLM `.pth`
(whose dictionary travels in the file; its BPE codes must be given)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xlmtrain.data.tokenizer import XLMTokenizer
from xlmtrain.interop.load import model_from_checkpoint, read_checkpoint
from xlmtrain.interop.tokenizer import checkpoint_tokenizer
from xlmtrain.interop.weights import CheckpointError
from xlmtrain.model.heads import XLMHeadModel

log = logging.getLogger(__name__)


def load_model_and_tokenizer(
    path: str | Path,
    head: str | None = None,
    *,
    codes: str | Path | None = None,
    lowercase: bool = True,
    tokenizer_dir: str | Path | None = None,
    codes_option: str = "codes",
    need_lm_head: bool = False,
    **config_overrides: Any,
) -> tuple[XLMHeadModel, XLMTokenizer]:
    """The model at `path` with `head` (None: the checkpoint's own head, else `lm`; a head the checkpoint lacks is
    freshly initialised and logged) and its tokenizer, checked against the model's vocabulary size.

    Args:
        path: run dir, model dir or original `.pth`.
        head: an `xlmtrain.model.heads.HEADS` name, or None for the checkpoint's own.
        codes: the fastBPE codes of an original `.pth` (ignored for directories, which carry merges.txt).
        lowercase: lowercase and strip accents, for an original `.pth` (its XNLI-15/17/100 models do).
        tokenizer_dir: a tokenizer dir overriding the one found next to the model.
        codes_option: how the caller's user passes `codes` (named in the error when it is missing).
        need_lm_head: refuse a checkpoint that carries another head, or none (a fill-mask needs a trained LM).
        **config_overrides: XLMConfig fields, e.g. `num_labels=3`.

    Raises:
        CheckpointError: unreadable / inconsistent checkpoint, `codes` missing for a `.pth`, a tokenizer whose
            vocabulary size differs from the model's, or (with `need_lm_head`) no masked-LM head.
        FileNotFoundError: no tokenizer next to a directory checkpoint.
    """
    checkpoint = read_checkpoint(path)
    if need_lm_head and checkpoint.head not in ("lm", None):
        raise CheckpointError(
            f"{path}: carries a {checkpoint.head!r} head, not a masked-LM head; fill-mask needs a pretrained LM"
        )
    if need_lm_head and checkpoint.head is None:
        raise CheckpointError(f"{path}: has no masked-LM output layer (bare encoder weights); fill-mask needs one")
    chosen = head or checkpoint.head or "lm"
    model, report = model_from_checkpoint(checkpoint, chosen, str(path), **config_overrides)
    if report.newly_initialized:
        log.info("%s: new %s head parameters %s", path, chosen, report.newly_initialized)
    tokenizer = checkpoint_tokenizer(
        checkpoint,
        path,
        vocab_size=model.config.vocab_size,
        codes=codes,
        lowercase=lowercase,
        codes_option=codes_option,
        tokenizer_dir=tokenizer_dir,
    )
    return model, tokenizer
