"""Fine-tuning metrics as summable count vectors, so batches (and ranks) are combined by addition.

- accuracy: counts `[correct, n]`;
- tagging F1: counts `[true positive spans, predicted spans, gold spans, sentences]`; spans are entities
  (conlleval rules) when every tag is `O` or `B-x`/`I-x`, else each non-`O` token is its own span.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from xlmtrain.tasks.encoding import IGNORE_INDEX


def accuracy_counts(logits: Tensor, labels: Tensor) -> Tensor:
    """logits (bs, n_labels), labels (bs,) -> `[correct, n]` (float64)."""
    correct = (logits.argmax(-1) == labels).sum()
    return torch.stack([correct, torch.tensor(labels.numel(), device=labels.device)]).double()


def is_bio(tags: Sequence[str]) -> bool:
    """Whether the tag set is BIO (`O`, `B-type`, `I-type`), so F1 is entity-level."""
    return all(t == "O" or (t[:2] in ("B-", "I-") and len(t) > 2) for t in tags)


def spans(tags: Sequence[str], bio: bool) -> set[tuple[int, int, str]]:
    """`(start, end, type)` spans: BIO entities (an `I-` after `O` or another type opens an entity, as
    conlleval), or, for other tag sets, one span per non-`O` token."""
    if not bio:
        return {(i, i + 1, t) for i, t in enumerate(tags) if t != "O"}
    found = set()
    start, kind = None, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, tag_type = tag[:1], tag[2:]
        if start is not None and (prefix in ("O", "B") or tag_type != kind):
            found.add((start, i, kind))
            start = None
        if prefix in ("B", "I") and start is None:
            start, kind = i, tag_type
    return found


def span_counts(logits: Tensor, labels: Tensor, id2tag: Sequence[str], bio: bool) -> Tensor:
    """logits (bs, slen, n_tags), labels (bs, slen) with IGNORE_INDEX off the first pieces ->
    `[true positives, predicted, gold, sentences]` (float64)."""
    predictions = logits.argmax(-1)  # (bs, slen)
    tp = n_pred = n_gold = 0
    for pred_row, gold_row in zip(predictions.tolist(), labels.tolist()):
        words = [(p, g) for p, g in zip(pred_row, gold_row) if g != IGNORE_INDEX]
        predicted = spans([id2tag[p] for p, _ in words], bio)
        gold = spans([id2tag[g] for _, g in words], bio)
        tp, n_pred, n_gold = tp + len(predicted & gold), n_pred + len(predicted), n_gold + len(gold)
    return torch.tensor([tp, n_pred, n_gold, labels.shape[0]], dtype=torch.float64)


def score(counts: Tensor, metric: str) -> tuple[float, int]:
    """(metric value in %, number of examples) from summed counts of `accuracy` or `f1`."""
    if metric == "accuracy":
        correct, n = counts.tolist()
        return 100.0 * correct / max(n, 1), int(n)
    tp, n_pred, n_gold, n = counts.tolist()
    return 100.0 * 2 * tp / max(n_pred + n_gold, 1), int(n)
