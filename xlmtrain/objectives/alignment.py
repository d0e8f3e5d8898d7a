"""Sentence-level cross-lingual alignment objectives on translation pairs: translation ranking and XLCo.

Both encode the two sides of a pair batch separately with the model's encoder, pool each sentence to one
vector (`xlmtrain.model.pooling`) and score every sentence against every candidate translation:

- **Translation ranking** (`trans_rank`, LaBSE: Feng et al. 2020/2022, "Language-agnostic BERT Sentence
  Embedding", after Yang et al. 2019's additive margin softmax): for source i and the candidate targets j,
  `logit_ij = scale * (cos(x_i, y_j) - margin * [j == i])`, a softmax cross-entropy over j with target i, in
  both directions (x -> y and y -> x), summed per pair. The margin is subtracted from the positive only: the
  true translation has to beat every other candidate by at least `margin` in cosine before the loss stops
  pushing. Candidates are the batch's other translations, and under DDP optionally every rank's
  (`gather_negatives`): the global batch then has the same negatives however it is split over ranks.
- **XLCo** (InfoXLM: Chi et al. 2021, "InfoXLM: An Information-Theoretic Framework for Cross-Lingual Language
  Model Pre-Training", Sec. 3.2, after MoCo: He et al. 2020): queries from the trained encoder, keys from a
  momentum encoder (an exponential moving average of the trained encoder, never back-propagated), negatives
  from a queue of keys of earlier batches. `logit = scale * cos(q_i, k)` over the positive key (the translation
  of i), the batch's other keys and the queue; cross-entropy with the positive as target, in both directions.

Decision (XLCo): the momentum encoder and queue are kept, as InfoXLM has them, rather than an in-batch variant.
An in-batch variant with no margin would be translation ranking again (one way to do each thing), while the
queue is what gives XLCo many negatives at a small batch size. The cost is one extra copy of the encoder's
weights (no gradients, no optimizer moments: ~+25% of the training state under Adam, not 2x) and one forward
pass without graph per side. Both live in `XLCoState`, a submodule of the pretraining module, so the
checkpoint's `state_dict` holds the momentum weights, the queue and its pointer and exact resume holds; they are
not part of the exported model (`PretrainModule.model`). The key encoder runs without dropout: keys must be a
deterministic function of the momentum weights (as MoCo's, whose key encoder is only slowly varying).

Losses return per-pair sums over this rank's rows; the caller divides by the global number of pairs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from xlmtrain.model.pooling import POOLINGS, Pooling, pool_hidden


@dataclass(frozen=True)
class AlignmentSettings:
    """Settings of the alignment streams (`objective.alignment`).

    Attributes:
        pooling: sentence vector: `mean` over the sentence or `first` (the leading `</s>`).
        margin: translation ranking's additive margin, subtracted from the positive's cosine.
        scale: translation ranking's logit scale (inverse temperature) on cosines.
        gather_negatives: under DDP, score against every rank's pairs (all_gather with gradient), so the
            negatives do not depend on how the global batch is split; False: this rank's pairs only.
        xlco_scale: XLCo's logit scale (InfoXLM's inverse temperature).
        xlco_momentum: the momentum encoder's EMA coefficient per XLCo step (weights = m * weights + (1 - m) * online).
        xlco_queue_size: keys of earlier batches kept as XLCo negatives (0: in-batch keys only).
    """

    pooling: Pooling = "mean"
    margin: float = 0.3
    scale: float = 20.0
    gather_negatives: bool = True
    xlco_scale: float = 20.0
    xlco_momentum: float = 0.999
    xlco_queue_size: int = 4096

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"objective.alignment.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not 0 <= self.margin < 2:
            raise ValueError(f"objective.alignment.margin must be in [0, 2) (a cosine margin), got {self.margin}")
        for name in ("scale", "xlco_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"objective.alignment.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.xlco_momentum < 1:
            raise ValueError(f"objective.alignment.xlco_momentum must be in [0, 1), got {self.xlco_momentum}")
        if self.xlco_queue_size < 0:
            raise ValueError(f"objective.alignment.xlco_queue_size must be >= 0, got {self.xlco_queue_size}")


def shard_sizes(global_rows: int, world_size: int) -> list[int]:
    """Rows of each rank when `global_rows` are split as `torch.tensor_split` splits them (first ranks +1)."""
    base, extra = divmod(global_rows, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; backward hands each rank the gradient of EVERY rank's loss w.r.t. its rows.

    Rank r's loss uses rank q's rows as candidates, so the gradient of the global loss w.r.t. q's rows is the
    sum over ranks of each rank's local gradient: an all_reduce(sum) of the gathered gradient, then q's slice.
    (Returning only the local slice of the local gradient, a common mistake, drops the other ranks' terms.)
    """

    @staticmethod
    def forward(ctx, rows: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        longest = max(sizes)
        padded = F.pad(rows, (0, 0, 0, longest - rows.shape[0])).contiguous()  # (longest, dim): equal shapes
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])  # (global_rows, dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        lo = sum(ctx.sizes[: ctx.rank])
        return grad[lo : lo + ctx.sizes[ctx.rank]], None, None


def gather_rows(rows: Tensor, global_rows: int) -> tuple[Tensor, int]:
    """`(all ranks' rows (global_rows, dim), offset of this rank's first row)`, differentiable (see `_GatherRows`).

    Without an initialised process group (or with one process) the rows themselves and offset 0.
    Raises ValueError if this rank's row count does not match its share of `global_rows`.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows, 0
    rank, sizes = dist.get_rank(), shard_sizes(global_rows, dist.get_world_size())
    if rows.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {rows.shape[0]} rows, expected {sizes[rank]} of {global_rows}")
    return _GatherRows.apply(rows, sizes, rank), sum(sizes[:rank])


def ranking_loss(
    queries: Tensor, candidates: Tensor, offset: int, *, scale: float, margin: float = 0.0, extra: Tensor | None = None
) -> Tensor:
    """Per-query softmax cross-entropy `(n,)`: query i's positive is candidate `offset + i`.

    Args:
        queries: (n, dim) unit vectors.
        candidates: (N, dim) unit vectors, N >= offset + n.
        offset: index of query 0's positive among the candidates (this rank's first global row).
        scale: logit scale; margin: subtracted from the positive's cosine before scaling.
        extra: (Q, dim) unit vectors appended as further negatives (XLCo's queue), or None.
    """
    scores = queries @ candidates.T  # (n, N) cosines
    target = torch.arange(queries.shape[0], device=queries.device) + offset  # (n,)
    if margin:
        scores = scores - margin * F.one_hot(target, candidates.shape[0]).to(scores.dtype)
    if extra is not None and extra.shape[0]:
        scores = torch.cat([scores, queries @ extra.T.to(queries.dtype)], dim=1)  # (n, N + Q)
    return F.cross_entropy(scale * scores, target, reduction="none")


def translation_ranking_loss(
    src: Tensor, tgt: Tensor, *, global_rows: int, margin: float, scale: float, gather: bool
) -> Tensor:
    """LaBSE's bidirectional additive-margin softmax, per pair `(n,)` (x -> y plus y -> x).

    `src`, `tgt`: (n, dim) pooled vectors of this rank's pairs (any scale; normalised here). `gather`: score
    against every rank's pairs (`gather_rows`); `global_rows` is the global batch's pair count.
    """
    x, y = F.normalize(src.float(), dim=-1), F.normalize(tgt.float(), dim=-1)  # (n, dim)
    all_x, offset = gather_rows(x, global_rows) if gather else (x, 0)
    all_y, _ = gather_rows(y, global_rows) if gather else (y, 0)
    return ranking_loss(x, all_y, offset, scale=scale, margin=margin) + ranking_loss(
        y, all_x, offset, scale=scale, margin=margin
    )


def sentence_vectors(
    encoder: nn.Module, ids: Tensor, lengths: Tensor, langs: Tensor | None, pooling: Pooling
) -> Tensor:
    """(bs, dim) pooled last-layer states of `ids (bs, slen)` through an `XLMTransformer` (bidirectional)."""
    hidden = encoder.encode(ids, lengths=lengths, langs=langs, causal=False).last_hidden_state  # (bs, slen, dim)
    return pool_hidden(hidden, lengths, pooling)


def in_batch_accuracy(src: Tensor, tgt: Tensor) -> Tensor:
    """Percentage of pairs whose nearest candidate by cosine (both directions averaged) is their translation."""
    scores = F.normalize(src.float(), dim=-1) @ F.normalize(tgt.float(), dim=-1).T  # (n, n)
    target = torch.arange(scores.shape[0], device=scores.device)
    hits = (scores.argmax(1) == target).float().mean() + (scores.argmax(0) == target).float().mean()
    return 50.0 * hits


class XLCoState(nn.Module):
    """XLCo's momentum encoder and key queue (see the module docstring); buffers and frozen weights, so they are in
    the module's `state_dict` (checkpoints) and move with it between devices."""

    def __init__(self, encoder: nn.Module, dim: int, settings: AlignmentSettings) -> None:
        """`encoder` (the trained one) is copied as the momentum encoder's initial weights."""
        super().__init__()
        self.momentum, self.queue_size = settings.xlco_momentum, settings.xlco_queue_size
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.register_buffer("queue", torch.zeros(self.queue_size, dim))  # (queue_size, dim) unit keys
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))  # ring position of the next key
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # valid keys in the queue

    def train(self, mode: bool = True) -> XLCoState:
        """The key encoder stays in eval mode (no dropout) whatever the module's mode."""
        super().train(mode)
        self.key_encoder.eval()
        return self

    @torch.no_grad()
    def update_momentum(self, encoder: nn.Module) -> None:
        """`key = m * key + (1 - m) * online` for every weight (MoCo's update, once per XLCo step)."""
        for key, online in zip(self.key_encoder.parameters(), encoder.parameters(), strict=True):
            key.mul_(self.momentum).add_(online.detach(), alpha=1.0 - self.momentum)

    def negatives(self) -> Tensor:
        """(filled, dim) a copy of the queued keys (empty until the first enqueue); a copy, because the loss's
        backward needs them after `enqueue` has overwritten the ring."""
        return self.queue[: int(self.queue_filled)].clone()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write `keys (n, dim)` into the ring, oldest first overwritten; more keys than the queue keeps the last."""
        if self.queue_size == 0:
            return
        keys = keys.detach()[-self.queue_size :].to(self.queue.dtype)
        n, start = keys.shape[0], int(self.queue_next)
        slots = (torch.arange(n, device=self.queue.device) + start) % self.queue_size
        self.queue[slots] = keys
        self.queue_next.fill_((start + n) % self.queue_size)
        self.queue_filled.fill_(min(int(self.queue_filled) + n, self.queue_size))


def xlco_loss(
    query_src: Tensor,
    query_tgt: Tensor,
    key_src: Tensor,
    key_tgt: Tensor,
    queued: Tensor | None,
    *,
    global_rows: int,
    scale: float,
    gather: bool,
) -> tuple[Tensor, Tensor]:
    """InfoXLM's XLCo per pair `(n,)`, both directions, and the batch's keys (every rank's) to enqueue.

    `query_*`: (n, dim) pooled vectors of the trained encoder; `key_*`: (n, dim) of the momentum encoder (no
    gradient); `queued`: (Q, dim) `XLCoState.negatives()` before this batch, or None. Query src i's positive is
    key tgt i; its negatives are the other keys of the (global) batch and the queue.
    """
    qx, qy = F.normalize(query_src.float(), dim=-1), F.normalize(query_tgt.float(), dim=-1)
    kx, ky = F.normalize(key_src.float(), dim=-1).detach(), F.normalize(key_tgt.float(), dim=-1).detach()
    all_kx, offset = gather_rows(kx, global_rows) if gather else (kx, 0)
    all_ky, _ = gather_rows(ky, global_rows) if gather else (ky, 0)
    loss = ranking_loss(qx, all_ky, offset, scale=scale, extra=queued) + ranking_loss(
        qy, all_kx, offset, scale=scale, extra=queued
    )
    return loss, torch.cat([all_kx, all_ky])
