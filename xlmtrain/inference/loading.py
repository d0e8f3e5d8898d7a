"""`InferenceModel`: a trained model together with its tokenizer, turning raw lines into model inputs.

Every inference entry point (fill-mask, embeddings, retrieval) goes through this class, so that they all
tokenise exactly as the model was trained (the preprocessor's Moses + lowercasing + BPE pipeline), wrap a
sentence as XLM did (`</s> w1 .. wn </s>`, positions from 0), truncate to the position table, and set the
language id only when the model has language embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from xlmtrain.data.dictionary import Dictionary
from xlmtrain.data.languages import check_language
from xlmtrain.data.padding import pad_right
from xlmtrain.data.tokenizer import XLMTokenizer
from xlmtrain.interop.pretrained import load_model_and_tokenizer
from xlmtrain.model.heads import XLMHeadModel

log = logging.getLogger(__name__)


class UnknownLanguageError(ValueError):
    """A language code the model (or, for a model without languages, xlmtrain) does not know."""


@dataclass(frozen=True)
class EncodedLine:
    """One line as model input: `ids` = `</s> pieces.. </s>`; `truncated` when pieces were cut off to fit
    `max_position_embeddings`; `empty` when the line had no tokens."""

    ids: list[int]
    truncated: bool
    empty: bool


@dataclass
class InferenceModel:
    """A model in eval mode, its tokenizer and where they came from (for messages)."""

    model: XLMHeadModel
    tokenizer: XLMTokenizer
    source: str
    _warned_no_lang_emb: bool = field(default=False, repr=False)

    @property
    def dictionary(self) -> Dictionary:
        return self.tokenizer.dictionary

    @property
    def max_len(self) -> int:
        """Longest input the position table allows, both `</s>` included."""
        return self.model.config.max_position_embeddings

    @property
    def languages(self) -> dict[str, int]:
        """The model's `lang2id` (from its config, else its tokenizer); empty for a model without languages."""
        return dict(self.model.config.lang2id or self.tokenizer.lang2id or {})

    def lang_id(self, lang: str) -> int | None:
        """The id to feed as `langs` for `lang`, or None when the model has no language embeddings.

        Raises:
            UnknownLanguageError: `lang` is not one of the model's languages (or, for a model that lists
                none, not a language code xlmtrain knows).
        """
        languages = self.languages
        if languages and lang not in languages:
            raise UnknownLanguageError(
                f"unknown language {lang!r} for {self.source} (its languages: {', '.join(sorted(languages))})"
            )
        if not languages:
            try:
                check_language(lang, self.source)
            except ValueError as err:
                raise UnknownLanguageError(str(err)) from None
        if not self.model.config.has_lang_embeddings:
            if not self._warned_no_lang_emb:
                log.warning(
                    "%s has no language embeddings: the language %r only selects the tokenizer's Moses rules",
                    self.source,
                    lang,
                )
                self._warned_no_lang_emb = True
            return None
        return languages[lang]

    def encode(self, text: str, lang: str) -> EncodedLine:
        """Tokenise one line of raw text in `lang` as the preprocessor does and wrap it."""
        return wrap_sentence(self.tokenizer.encode(text, lang), self.dictionary.eos_index, self.max_len)


def wrap_sentence(ids: list[int], eos_index: int, max_len: int) -> EncodedLine:
    """`</s> ids </s>` (XLM's sentence layout), `ids` cut so that the whole fits `max_len` positions."""
    keep = max_len - 2
    return EncodedLine([eos_index, *ids[:keep], eos_index], truncated=len(ids) > keep, empty=not ids)


def pad_batch(
    lines: list[list[int]], pad_index: int, lang_id: int | None, device: torch.device | None = None
) -> dict[str, Tensor]:
    """Right-padded `input_ids` (bs, slen), `lengths` (bs,) and, when `lang_id` is given, constant `langs`, on
    `device` (the model's: inputs built on the CPU would not reach a model on a GPU; default CPU)."""
    input_ids, lengths = pad_right(lines, pad_index)  # (bs, slen), (bs,)
    inputs = {"input_ids": input_ids, "lengths": lengths}
    if lang_id is not None:
        inputs["langs"] = torch.full_like(input_ids, lang_id)
    return {name: tensor.to(device, non_blocking=True) for name, tensor in inputs.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters (where its inputs must be)."""
    return next(model.parameters()).device


def load_inference_model(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    codes: str | Path | None = None,
    lowercase: bool = True,
    need_lm_head: bool = False,
) -> InferenceModel:
    """Load a model and its tokenizer for inference.

    Args:
        path: anything `xlmtrain.load_model` reads: a run dir, a transformers or xlmtrain dir, or an
            original XLM `.pth` (which carries its dictionary; give its fastBPE `codes`).
        tokenizer: a tokenizer dir (preprocess output, `hf_tokenizer/`, model dir) overriding the one
            found next to the model.
        codes: fastBPE codes of an original `.pth` checkpoint.
        lowercase: original `.pth` only: the model was trained on lowercased, accent-stripped text.
        need_lm_head: refuse a checkpoint that carries another head (a fine-tuned classifier has no
            trained masked-LM output layer).

    Raises:
        CheckpointError: unreadable model, missing codes, vocabulary size mismatch, wrong head.
        FileNotFoundError: no tokenizer found next to the model.
    """
    model, tok = load_model_and_tokenizer(
        path,
        codes=codes,
        lowercase=lowercase,
        tokenizer_dir=tokenizer,
        codes_option="--codes FILE",
        need_lm_head=need_lm_head,
    )
    return InferenceModel(model.eval(), tok, str(path))


def as_inference_model(model: InferenceModel | str | Path, *, need_lm_head: bool = False) -> InferenceModel:
    """Pass an `InferenceModel` through; load a path with `load_inference_model`."""
    if isinstance(model, InferenceModel):
        return model
    return load_inference_model(model, need_lm_head=need_lm_head)
