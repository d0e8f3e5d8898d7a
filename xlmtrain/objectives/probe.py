"""Does a model use a translation in context? Masked-token accuracy in one language with and without the
aligned sentence of the other language before it (the TLM layout), on the same deterministic masks.

A TLM-trained model should gain from the context; an MLM-only model should not (it never saw pairs).
Two ways to choose the targets: XLM's evaluation masking (`word_pred` of all tokens, `.` and suffixes
included), or one word per sentence among those not in `skip_words` (e.g. `skip_words=(".",)` on the
synthetic languages scores only content words, which a sentence alone cannot determine).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xlmtrain.data.corpus_batches import ParallelBatches
from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.objectives.batches import concat_pair, constant_langs
from xlmtrain.objectives.masking import MaskedTokens, mask_tokens_eval


@torch.no_grad()
def context_accuracy(
    model: XLMWithLMHead,
    data: PreprocessedData,
    context_lang: str,
    target_lang: str,
    *,
    with_context: bool,
    split: str = "valid",
    batch_size: int = 32,
    word_pred: float = 0.15,
    skip_words: Sequence[str] = (),
    seed: int = 0,
) -> float:
    """Accuracy (%) of predicting masked `target_lang` tokens of `split`, optionally with the
    `context_lang` translation first (`</s> ctx </s> </s> masked target </s>`, positions restarting).

    Targets: with no `skip_words`, `mask_tokens_eval(word_pred)`; else exactly one token per sentence,
    uniform among those not in `skip_words` (`word_pred` unused). Both are 100% mask token, seeded by
    `seed` and the batch number, so the two conditions and different models see the same masks."""
    model.eval()
    ctx_corpus, tgt_corpus = data.parallel(split, context_lang, target_lang)
    batches = ParallelBatches(
        ctx_corpus, tgt_corpus, batch_size=batch_size, max_len=None, group_by_size=False, shuffle=False
    )
    pad, mask_index = data.dictionary.pad_index, data.dictionary.mask_index
    ctx_id, tgt_id = data.lang2id[context_lang], data.lang2id[target_lang]
    unknown = [w for w in skip_words if w not in data.dictionary.word2id]
    if unknown:
        raise ValueError(f"context_accuracy: skip_words {unknown} are not in the vocabulary of {data.directory}")
    skip_ids = torch.tensor([data.dictionary.index(w) for w in skip_words], dtype=torch.long)
    correct = total = 0
    for j, ((xc, lc), (xt, lt)) in enumerate(batches):
        generator = torch.Generator().manual_seed(seed + j)
        if skip_words:
            masked = _mask_one_word(xt, lt, skip_ids, mask_index=mask_index, generator=generator)
        else:
            masked = mask_tokens_eval(xt, lt, mask_index=mask_index, generator=generator, word_pred=word_pred)
        if with_context:
            pair = concat_pair(xc, lc, masked.input_ids, lt, lang1_id=ctx_id, lang2_id=tgt_id, pad_index=pad)
            # The same layout applied to the mask puts the target-side predictions at their new columns.
            pred = concat_pair(
                torch.zeros_like(xc), lc, masked.pred_mask.long(), lt, lang1_id=0, lang2_id=0, pad_index=0
            )
            ids, lengths, position_ids, langs, pred_mask = (
                pair.ids,
                pair.lengths,
                pair.position_ids,
                pair.langs,
                pred.ids.bool(),
            )
        else:
            ids, lengths, position_ids, pred_mask = masked.input_ids, lt, None, masked.pred_mask
            langs = constant_langs(ids, tgt_id)
        out = model(ids, pred_mask=pred_mask, langs=langs, position_ids=position_ids, lengths=lengths)
        correct += int((out.logits.argmax(-1) == masked.labels).sum())
        total += masked.labels.numel()
    return 100.0 * correct / max(total, 1)


def _mask_one_word(
    ids: torch.Tensor, lengths: torch.Tensor, skip_ids: torch.Tensor, *, mask_index: int, generator: torch.Generator
) -> MaskedTokens:
    """Mask one token per row of `</s> w.. </s>` sentences, uniform among the words not in `skip_ids`."""
    bs, slen = ids.shape
    cols = torch.arange(slen)[None, :]
    allowed = (cols >= 1) & (cols < lengths[:, None] - 1) & ~torch.isin(ids, skip_ids)  # (bs, slen)
    if not bool(allowed.any(dim=1).all()):
        raise ValueError("context_accuracy: a target sentence has no word outside skip_words")
    scores = torch.rand(bs, slen, generator=generator).masked_fill(~allowed, -1.0)
    pred_mask = torch.zeros(bs, slen, dtype=torch.bool)
    pred_mask[torch.arange(bs), scores.argmax(dim=1)] = True
    return MaskedTokens(ids.masked_fill(pred_mask, mask_index), pred_mask, ids[pred_mask])
