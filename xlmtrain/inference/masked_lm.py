"""Fill-mask: the model's top-k completions for every `<mask>` in a sentence.

`<mask>` is an alias of XLM's mask token `<special1>` (id 5); both are accepted. The text around each
mask goes through the model's own pipeline for the language (Moses, lowercasing as trained, BPE) while
the mask itself is kept out of it (Moses would split `<mask>` into `< mask >`), so each mask stands for
one BPE piece. The sentence is wrapped `</s> .. </s>` as XLM trained, positions start at 0, and every
position gets the language id when the model has language embeddings.

Probabilities are the softmax over the whole vocabulary at the mask; special tokens are never proposed
as completions. Several masks are predicted independently in one forward pass (as transformers'
`pipeline("fill-mask")` does); each completion's `sequence` is the sentence with that mask filled and
the other masks left as `<mask>`, detokenised.

    >>> from xlmtrain.inference import load_inference_model, fill_mask
    >>> model = load_inference_model("runs/tlm")                      # any format load_model reads
    >>> for mask in fill_mask(model, "Bonjour, je suis un modèle <mask>.", lang="fr", top_k=5):
    ...     for c in mask.completions:
    ...         print(f"{c.probability:.3f} {c.token} {c.sequence}")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from xlmtrain.data.dictionary import MASK_WORD, N_SPECIALS
from xlmtrain.data.moses import detokenize
from xlmtrain.inference.loading import (
    EncodedLine,
    InferenceModel,
    as_inference_model,
    model_device,
    pad_batch,
    wrap_sentence,
)

MASK_ALIAS = "<mask>"
_MASK_SPLIT = re.compile(f"({re.escape(MASK_ALIAS)}|{re.escape(MASK_WORD)})")


class NoMaskError(ValueError):
    """The text contains no `<mask>` (nor `<special1>`)."""


@dataclass(frozen=True)
class Completion:
    """One candidate for a mask: the BPE piece (`@@` marks a word-internal piece), its id, its
    probability and the detokenised sentence with the mask replaced by it."""

    token: str
    token_id: int
    probability: float
    sequence: str


@dataclass(frozen=True)
class MaskPrediction:
    """The completions (best first) of the `index`-th mask of a sentence (0-based, left to right)."""

    index: int
    completions: list[Completion]


def encode_masked(model: InferenceModel, text: str, lang: str) -> EncodedLine:
    """`</s> .. </s>` ids of `text` with each `<mask>` / `<special1>` as the mask id.

    Raises NoMaskError when there is no mask, ValueError when truncation to the position table would
    cut a mask off.
    """
    parts = _MASK_SPLIT.split(text)  # text, mask, text, mask, ..., text
    if len(parts) == 1:
        raise NoMaskError(f"no {MASK_ALIAS} (or {MASK_WORD}) in {text!r}")
    mask_index = model.dictionary.mask_index
    ids: list[int] = []
    for i, part in enumerate(parts):
        ids += [mask_index] if i % 2 else model.tokenizer.encode(part, lang)
    encoded = wrap_sentence(ids, model.dictionary.eos_index, model.max_len)
    if encoded.ids.count(mask_index) < ids.count(mask_index):
        raise ValueError(f"a mask lies beyond the model's {model.max_len} positions; shorten the text")
    return encoded


def _render(model: InferenceModel, ids: list[int], lang: str) -> str:
    """Detokenised text of `ids`; mask ids shown as `<mask>`, other specials dropped."""
    mask_index = model.dictionary.mask_index
    pieces = [MASK_ALIAS if i == mask_index else model.dictionary[i] for i in ids if i >= N_SPECIALS or i == mask_index]
    text = " ".join(pieces).replace("@@ ", "")
    return detokenize(text.removesuffix("@@").split(" "), lang) if text else ""


@torch.no_grad()
def fill_masks(
    model: InferenceModel | str | Path, texts: Sequence[str], lang: str, *, top_k: int = 5, batch_size: int = 32
) -> list[list[MaskPrediction]]:
    """Top-k completions of every mask of every text, one list of `MaskPrediction` per text.

    Args:
        model: an `InferenceModel` or a path `load_inference_model` reads.
        texts: raw sentences in `lang`, each with at least one `<mask>`.
        lang: one of the model's languages (it selects the Moses rules and the language id).
        top_k: completions per mask (at most the number of non-special words).
        batch_size: sentences per forward pass.

    Raises:
        NoMaskError: a text without a mask. UnknownLanguageError: `lang` unknown to the model.
        ValueError: `top_k < 1`, a mask beyond the position table.
    """
    model = as_inference_model(model, need_lm_head=True)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    top_k = min(top_k, len(model.dictionary) - N_SPECIALS)
    lang_id = model.lang_id(lang)
    encoded = [encode_masked(model, text, lang).ids for text in texts]
    mask_index = model.dictionary.mask_index
    results: list[list[MaskPrediction]] = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        inputs = pad_batch(rows, model.dictionary.pad_index, lang_id, model_device(model.model))
        pred_mask = inputs["input_ids"] == mask_index  # (bs, slen); padding is never the mask id
        logits = model.model(**inputs, pred_mask=pred_mask).logits  # (n_masks, vocab), row-major
        probs = logits.float().softmax(-1)
        probs[:, :N_SPECIALS] = 0.0  # rank real words only; probabilities stay those of the full softmax
        top = probs.topk(top_k, dim=-1)
        cursor = 0
        for ids in rows:
            masks = [j for j, i in enumerate(ids) if i == mask_index]
            predictions = []
            for index, column in enumerate(masks):
                completions = []
                for p, token_id in zip(top.values[cursor].tolist(), top.indices[cursor].tolist()):
                    filled = ids[:column] + [token_id] + ids[column + 1 :]
                    completions.append(
                        Completion(model.dictionary[token_id], token_id, p, _render(model, filled, lang))
                    )
                predictions.append(MaskPrediction(index, completions))
                cursor += 1
            results.append(predictions)
    return results


def fill_mask(model: InferenceModel | str | Path, text: str, lang: str, *, top_k: int = 5) -> list[MaskPrediction]:
    """Top-k completions of every mask in one sentence; see `fill_masks`."""
    return fill_masks(model, [text], lang, top_k=top_k)[0]
