"""Load a pretrained model with a fresh task head, and the tokenizer it was trained with, from any format
`xlmtrain.load_model` reads: an xlmtrain run dir, a transformers / xlmtrain model dir, or an original XLM
`.pth` (whose dictionary travels in the file; its BPE codes must be given)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xlmtrain.data.dictionary import N_SPECIALS, Dictionary
from xlmtrain.data.tokenizer import XLMTokenizer, load_tokenizer
from xlmtrain.interop.load import model_from_checkpoint, read_checkpoint
from xlmtrain.model.heads import XLMHeadModel

log = logging.getLogger(__name__)


def tokenizer_from_word2id(word2id: dict[str, int], codes: Path, lang2id: dict[str, int], lowercase: bool) -> XLMTokenizer:
    """An original checkpoint's `dico_word2id` + fastBPE codes -> `XLMTokenizer`.

    Raises ValueError when the ids are not contiguous from 0 (the dictionary would be misread).
    """
    words = [w for w, _ in sorted(word2id.items(), key=lambda kv: kv[1])]
    if sorted(word2id.values()) != list(range(len(words))) or len(words) < N_SPECIALS:
        raise ValueError("the checkpoint's dictionary ids are not 0..n-1; cannot rebuild its tokenizer")
    return XLMTokenizer(Dictionary(words[N_SPECIALS:]), codes, lang2id, lowercase)


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
        CheckpointError: unreadable / inconsistent checkpoint (from `read_checkpoint`).
        FileNotFoundError: no tokenizer next to a directory checkpoint, or `codes` missing for a `.pth`.
        ValueError: the tokenizer's vocabulary size differs from the model's.
    """
    checkpoint = read_checkpoint(init)
    model, report = model_from_checkpoint(checkpoint, head, str(init), **config_overrides)
    if report.newly_initialized:
        log.info("%s: new %s head parameters %s", init, head, report.newly_initialized)
    if checkpoint.format == "original":
        if codes is None or not Path(codes).is_file():
            raise FileNotFoundError(f"{init} is an original XLM checkpoint: set model.codes to its BPE codes file (got {codes})")
        tokenizer = tokenizer_from_word2id(checkpoint.word2id or {}, Path(codes), checkpoint.config.lang2id or {}, lowercase)
    else:
        tokenizer = load_tokenizer(checkpoint.directory or init)
    if len(tokenizer.dictionary) != model.config.vocab_size:
        raise ValueError(
            f"{init}: tokenizer has {len(tokenizer.dictionary)} words but the model's vocab_size is {model.config.vocab_size}"
        )
    return model, tokenizer
