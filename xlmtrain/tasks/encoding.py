"""Examples -> model inputs, as XLM's XNLI recipe: text through the model's own tokenizer, then
`</s> A </s> B </s>` (one shared middle `</s>`) with continuous positions and the example's language id on
every token; a tagged sentence is `</s> pieces </s>` with its tag on the first piece of each word.

Truncation follows XLM: each sentence, with its surrounding `</s>`, keeps at most `max_len` tokens
(`max_len - 2` pieces); the counts are returned so the job can report them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from xlmtrain.data.dictionary import Dictionary
from xlmtrain.data.padding import pad_right
from xlmtrain.data.tokenizer import XLMTokenizer
from xlmtrain.tasks.readers import NLIExample, TaggedSentence

IGNORE_INDEX = -100
"""Label of positions without a target (separators, non-first pieces, padding)."""


@dataclass(frozen=True)
class Encoded:
    """One model input row: `ids` (with separators), `label` (an int, or one id per token), `lang_id`."""

    ids: tuple[int, ...]
    label: int | tuple[int, ...]
    lang_id: int


@dataclass
class EncodedSet:
    """The rows of one (split, language) and how many of its examples were truncated."""

    rows: list[Encoded]
    n_truncated: int


def language_id(lang: str, lang2id: dict[str, int], source: str) -> int:
    """The model's id for `lang`; a model without language ids (empty `lang2id`) takes 0 for every language.

    Raises ValueError naming `source` when the model does not know `lang`.
    """
    if not lang2id:
        return 0
    if lang not in lang2id:
        raise ValueError(
            f"{source}: language {lang!r} is not one the model was trained on ({', '.join(sorted(lang2id))})"
        )
    return lang2id[lang]


def _clip(pieces: list[int], max_len: int) -> tuple[list[int], bool]:
    keep = max_len - 2  # room for the sentence's two </s>
    return pieces[:keep], len(pieces) > keep


def encode_pairs(
    examples: Sequence[NLIExample], tokenizer: XLMTokenizer, lang2id: dict[str, int], max_len: int, source: str
) -> EncodedSet:
    """`</s> premise </s> hypothesis </s>` rows; each sentence clipped to `max_len` tokens with its `</s>`s."""
    eos = tokenizer.dictionary.eos_index
    rows, n_truncated = [], 0
    for example in examples:
        lang_id = language_id(example.lang, lang2id, source)
        a, cut_a = _clip(tokenizer.encode(example.premise, example.lang), max_len)
        b, cut_b = _clip(tokenizer.encode(example.hypothesis, example.lang), max_len)
        n_truncated += cut_a or cut_b
        rows.append(Encoded((eos, *a, eos, *b, eos), example.label, lang_id))
    return EncodedSet(rows, n_truncated)


def encode_tagged(
    sentences: Sequence[TaggedSentence],
    tokenizer: XLMTokenizer,
    lang2id: dict[str, int],
    tag2id: dict[str, int],
    max_len: int,
    source: str,
) -> EncodedSet:
    """`</s> pieces </s>` rows with the word's tag id on its first BPE piece and IGNORE_INDEX elsewhere.

    A word the pipeline reduces to nothing (e.g. only non-printing characters) becomes one `<unk>`, so
    every word keeps a prediction. Words past `max_len` are dropped (counted as truncated).
    """
    dico: Dictionary = tokenizer.dictionary
    rows, n_truncated = [], 0
    for sentence in sentences:
        lang_id = language_id(sentence.lang, lang2id, source)
        pieces: list[int] = []
        labels: list[int] = []
        for word, tag in zip(sentence.words, sentence.tags):
            ids = tokenizer.encode(word, sentence.lang) or [dico.unk_index]
            pieces.extend(ids)
            labels.extend([tag2id[tag]] + [IGNORE_INDEX] * (len(ids) - 1))
        pieces, cut = _clip(pieces, max_len)
        labels = labels[: len(pieces)]
        n_truncated += cut
        rows.append(Encoded((dico.eos_index, *pieces, dico.eos_index), (IGNORE_INDEX, *labels, IGNORE_INDEX), lang_id))
    return EncodedSet(rows, n_truncated)


def collate(rows: Sequence[Encoded], pad_index: int) -> dict[str, Tensor]:
    """Right-padded batch: `input_ids`, `lengths`, `position_ids` (0..slen-1), `langs` (the row's language
    on every position) and `labels` (`(bs,)` for sequence labels, `(bs, slen)` padded with IGNORE_INDEX)."""
    input_ids, lengths = pad_right([r.ids for r in rows], pad_index)  # (bs, slen), (bs,)
    bs, slen = input_ids.shape
    position_ids = torch.arange(slen)[None, :].expand(bs, slen).clone()  # (bs, slen)
    langs = torch.tensor([r.lang_id for r in rows])[:, None].expand(bs, slen).clone()  # (bs, slen)
    if isinstance(rows[0].label, int):
        labels = torch.tensor([r.label for r in rows])  # (bs,)
    else:
        labels = torch.full((bs, slen), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row.label)] = torch.tensor(row.label)
    return {"input_ids": input_ids, "lengths": lengths, "position_ids": position_ids, "langs": langs, "labels": labels}
