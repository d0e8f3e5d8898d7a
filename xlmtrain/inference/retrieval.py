"""Bitext retrieval: for each sentence, find its translation among all candidates by embedding similarity.

P@1 is the percentage of source lines whose best-scoring target is the aligned line (same index), in
each direction. Scoring:
- `cosine`: cosine similarity.
- `margin`: the ratio margin of Artetxe & Schwenk (2019), used for bitext mining (LASER, BUCC):
  `cos(x, y) / (mean_{z in NN_k(x)} cos(x, z) / 2 + mean_{z in NN_k(y)} cos(y, z) / 2)`, where
  `NN_k(x)` are the k nearest targets of source x and `NN_k(y)` the k nearest sources of target y. It
  penalises "hubs" (vectors close to everything), which cosine retrieval keeps choosing.

`center=True` first subtracts each side's mean embedding, removing the language-specific offset that
dominates cosine between languages ("language-neutral" centring, Libovický et al. 2020).

Similarities are computed `chunk` rows at a time, so memory is O(chunk * n), not O(n^2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from xlmtrain.inference.embeddings import Pooling, embed_sentences
from xlmtrain.inference.loading import InferenceModel

Scoring = Literal["cosine", "margin"]
SCORINGS = ("cosine", "margin")


class LineCountMismatchError(ValueError):
    """The two sides of a bitext do not have the same number of lines."""


def _normalize(x: np.ndarray | Tensor, center: bool) -> Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
    if center:
        x = x - x.mean(0, keepdim=True)
    return torch.nn.functional.normalize(x, dim=-1)


def _knn_mean(x: Tensor, y: Tensor, k: int, chunk: int) -> Tensor:
    """(n_x,) mean cosine of each row of `x` to its `k` most similar rows of `y` (both unit-norm)."""
    k = min(k, y.shape[0])
    return torch.cat([(x[i : i + chunk] @ y.T).topk(k, dim=1).values.mean(1) for i in range(0, x.shape[0], chunk)])


def _best(x: Tensor, y: Tensor, rx: Tensor | None, ry: Tensor | None, chunk: int) -> Tensor:
    """(n_x,) index of the best row of `y` for each row of `x`: cosine, or margin given the kNN means."""
    best = []
    for i in range(0, x.shape[0], chunk):
        scores = x[i : i + chunk] @ y.T  # (chunk, n_y)
        if rx is not None and ry is not None:
            scores = scores / ((rx[i : i + chunk, None] + ry[None, :]) / 2)
        best.append(scores.argmax(1))
    return torch.cat(best)


def best_matches(
    src: np.ndarray | Tensor,
    tgt: np.ndarray | Tensor,
    *,
    scoring: Scoring = "cosine",
    k: int = 4,
    center: bool = False,
    chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Best target index for every source row and best source index for every target row.

    Args:
        src, tgt: (n_src, dim) and (n_tgt, dim) embeddings (any scale; cosine normalises them).
        scoring: `cosine` or `margin` (see the module docstring).
        k: neighbourhood size of the margin.
        center: subtract each side's mean first.
        chunk: rows scored at once.

    Raises ValueError on an unknown scoring, a non-positive k, or mismatched dimensions.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
    if k < 1:
        raise ValueError(f"margin k must be >= 1, got {k}")
    x, y = _normalize(src, center), _normalize(tgt, center)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"embeddings must be 2-D with the same width, got {tuple(x.shape)} and {tuple(y.shape)}")
    rx = ry = None
    if scoring == "margin":
        rx, ry = _knn_mean(x, y, k, chunk), _knn_mean(y, x, k, chunk)
    return _best(x, y, rx, ry, chunk), _best(y, x, ry, rx, chunk)


def precision_at_1(best: Tensor) -> float:
    """Percentage of rows i whose best match is i (aligned data: line i translates line i)."""
    return 100.0 * int((best == torch.arange(len(best))).sum()) / len(best) if len(best) else 0.0


def retrieval_p_at_1(
    src: np.ndarray | Tensor, tgt: np.ndarray | Tensor, *, scoring: Scoring = "cosine", k: int = 4, center: bool = False
) -> tuple[float, float]:
    """P@1 (%) source -> target and target -> source of aligned embeddings (row i of both is one pair).

    Raises LineCountMismatchError when the row counts differ, ValueError as `best_matches`.
    """
    if len(src) != len(tgt):
        raise LineCountMismatchError(f"aligned embeddings need equal row counts, got {len(src)} and {len(tgt)}")
    s2t, t2s = best_matches(src, tgt, scoring=scoring, k=k, center=center)
    return precision_at_1(s2t), precision_at_1(t2s)


@dataclass(frozen=True)
class RetrievalResult:
    """P@1 of one aligned pair of files in both directions (percentages), with what produced it."""

    src_lang: str
    tgt_lang: str
    sentences: int
    scoring: str
    pooling: str
    layer: int
    center: bool
    p_at_1_src2tgt: float
    p_at_1_tgt2src: float
    chance: float
    src_empty: int = 0
    tgt_empty: int = 0
    src_truncated: int = 0
    tgt_truncated: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def table(self) -> str:
        """A small plain-text table."""
        rows = [
            ("direction", "P@1 (%)"),
            (f"{self.src_lang} -> {self.tgt_lang}", f"{self.p_at_1_src2tgt:.2f}"),
            (f"{self.tgt_lang} -> {self.src_lang}", f"{self.p_at_1_tgt2src:.2f}"),
            ("chance", f"{self.chance:.2f}"),
        ]
        width = max(len(r[0]) for r in rows)
        head = (
            f"bitext retrieval: {self.sentences} pairs, {self.scoring} scoring, {self.pooling} pooling, "
            f"layer {self.layer}{', centred' if self.center else ''}"
        )
        return "\n".join([head, *(f"  {a:<{width}}  {b:>8}" for a, b in rows)])


def evaluate_retrieval(
    model: InferenceModel,
    src_lines: Sequence[str],
    tgt_lines: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    *,
    scoring: Scoring = "margin",
    k: int = 4,
    pooling: Pooling = "mean",
    layer: int = -1,
    center: bool = True,
    batch_size: int = 64,
    names: tuple[str, str] = ("source", "target"),
) -> RetrievalResult:
    """Embed two aligned lists of raw lines and return their P@1 in both directions.

    Raises:
        LineCountMismatchError: naming both inputs (`names`) and their line counts.
        UnknownLanguageError, ValueError: bad language, pooling, layer or scoring.
    """
    if len(src_lines) != len(tgt_lines):
        raise LineCountMismatchError(
            f"{names[0]} has {len(src_lines)} lines but {names[1]} has {len(tgt_lines)}: aligned files need equal counts"
        )
    if not src_lines:
        raise ValueError(f"{names[0]}: no lines to retrieve")
    common = dict(pooling=pooling, layer=layer, batch_size=batch_size)
    src, src_stats = embed_sentences(model, src_lines, src_lang, **common)
    tgt, tgt_stats = embed_sentences(model, tgt_lines, tgt_lang, **common)
    for stats, name in ((src_stats, names[0]), (tgt_stats, names[1])):
        stats.warn(name, model.max_len)
    p12, p21 = retrieval_p_at_1(src, tgt, scoring=scoring, k=k, center=center)
    return RetrievalResult(
        src_lang,
        tgt_lang,
        len(src_lines),
        scoring,
        pooling,
        layer,
        center,
        p12,
        p21,
        chance=100.0 / len(src_lines),
        src_empty=src_stats.empty,
        tgt_empty=tgt_stats.empty,
        src_truncated=src_stats.truncated,
        tgt_truncated=tgt_stats.truncated,
    )
