"""The tokenizer a checkpoint was trained with: one rule for every entry point that loads a model to use it."""

from __future__ import annotations

from pathlib import Path

from xlmtrain.data.dictionary import N_SPECIALS, Dictionary
from xlmtrain.data.tokenizer import XLMTokenizer, load_tokenizer
from xlmtrain.interop.load import Checkpoint
from xlmtrain.interop.weights import CheckpointError


def checkpoint_tokenizer(
    checkpoint: Checkpoint,
    source: str | Path,
    *,
    vocab_size: int,
    codes: str | Path | None = None,
    lowercase: bool = True,
    codes_option: str = "codes",
    tokenizer_dir: str | Path | None = None,
) -> XLMTokenizer:
    """The tokenizer of `checkpoint` (read from `source`), checked against the model's `vocab_size`.

    A directory checkpoint carries its tokenizer files. An original XLM `.pth` carries only its dictionary
    (`dico_word2id`): its fastBPE `codes` must be given, and `lowercase` says whether it was trained on
    lowercased, accent-stripped text (the XNLI-15/17/100 models were). `codes_option` names the option
    that sets `codes`, for the error message. `tokenizer_dir` (a preprocess output, `hf_tokenizer/` or model
    dir) overrides whatever the checkpoint carries.

    Raises:
        CheckpointError: codes missing for a `.pth`, dictionary ids not 0..n-1, or a tokenizer whose
            vocabulary size differs from the model's.
        FileNotFoundError: no tokenizer files next to a directory checkpoint.
    """
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif checkpoint.word2id is not None:
        if codes is None or not Path(codes).is_file():
            raise CheckpointError(f"{source}: an original XLM checkpoint needs its fastBPE codes ({codes_option})")
        words = [w for w, _ in sorted(checkpoint.word2id.items(), key=lambda item: item[1])]
        if sorted(checkpoint.word2id.values()) != list(range(len(words))) or len(words) < N_SPECIALS:
            raise CheckpointError(f"{source}: the dictionary ids are not 0..n-1; cannot rebuild its tokenizer")
        tokenizer = XLMTokenizer(Dictionary(words[N_SPECIALS:]), codes, checkpoint.config.lang2id or {}, lowercase)
    else:
        tokenizer = load_tokenizer(checkpoint.directory or source)
    if len(tokenizer.dictionary) != vocab_size:
        raise CheckpointError(
            f"{source}: tokenizer has {len(tokenizer.dictionary)} words but the model's vocab_size is {vocab_size}"
        )
    return tokenizer
