"""Batch iterators over memory-mapped corpora, used by the pretraining objectives.

All tensors are batch-major int64. Training iterators (`shuffle=True`) are infinite: each pass ("epoch")
visits this rank's items in a permutation seeded by `(seed, rank, epoch)`; evaluation iterators
(`shuffle=False`) make one pass in order. Ranks take disjoint shards (item `i` belongs to rank
`i % world_size`; every rank gets the same number of items, the remainder is left out). `state_dict()` is
`{"epoch", "position"}`: loading it into a new iterator built with the same arguments resumes at the exact next
batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from xlmtrain.data.dictionary import Dictionary
from xlmtrain.data.indexed import IndexedCorpus


class _ResumableBatches:
    """Epoch/position bookkeeping shared by every iterator; subclasses define the items and their batches."""

    def __init__(self, n_items: int, seed: int, rank: int, world_size: int, shuffle: bool) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self._shard = np.arange(rank, (n_items // world_size) * world_size, world_size)
        if shuffle and len(self._shard) == 0:
            raise ValueError(f"no batches for rank {rank} of {world_size} ({n_items} in all): the corpus is too small")
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.rank, self.epoch])
                self._order = rng.permutation(self._shard)
            else:
                self._order = self._shard
        return self._order

    def __len__(self) -> int:
        """Batches in one pass of this rank."""
        return len(self._shard)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        order = self._epoch_order()
        if self.position >= len(order):
            if not self.shuffle:
                raise StopIteration
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
            order = self._epoch_order()
        item = int(order[self.position])
        self.position += 1
        return self._batch(item)

    def _batch(self, item: int) -> Any:
        raise NotImplementedError

    def batch_at(self, item: int) -> Any:
        """Batch number `item` of the unsharded, unshuffled order (random access for evaluation); the iterator's
        position does not move."""
        self._epoch_order()  # builds this pass's plan (sentence iterators)
        return self._batch(item)

    def state_dict(self) -> dict[str, int]:
        """Where the iterator stands: the next batch is batch `position` of pass `epoch`."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()` of an iterator built with the same arguments."""
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


class StreamBatches(_ResumableBatches):
    """XLM's StreamDataset: the corpus as one token stream (`s1 </s> s2 </s> ...`), left-padded with `</s>` to
    `n_chunks * bptt * batch_size` tokens, split into `batch_size` contiguous columns, each preceded by one
    `</s>`; chunk `i` is rows `[i*bptt, (i+1)*bptt)`. Yields `(x (batch_size, bptt), lengths (batch_size,))`
    with `lengths == bptt`; chunks cross sentence boundaries and hold no padding. Reads only the tokens of
    each batch from the mmap."""

    def __init__(
        self,
        corpus: IndexedCorpus,
        bptt: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.corpus, self.bptt, self.batch_size = corpus, bptt, batch_size
        n_tokens = corpus.n_tokens
        self.n_chunks = math.ceil(n_tokens / (batch_size * bptt))
        self._column = self.n_chunks * bptt  # tokens per column
        self._pad = self._column * batch_size - n_tokens  # leading </s> of the buffer
        super().__init__(self.n_chunks, seed, rank, world_size, shuffle)

    def _buffer(self, start: int, stop: int) -> np.ndarray:
        """Buffer positions [start, stop): `</s>` padding first, then the corpus tokens."""
        out = np.full(stop - start, Dictionary.eos_index, dtype=np.int64)
        lo = max(start, self._pad)
        if lo < stop:
            out[lo - start :] = self.corpus.tokens[lo - self._pad : stop - self._pad]
        return out

    def _batch(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        first_row = item * self.bptt
        for col in range(self.batch_size):
            base = col * self._column - 1  # data row r of this column is buffer[base + r]; row 0 is </s>
            if first_row == 0:
                rows.append(np.concatenate([[Dictionary.eos_index], self._buffer(base + 1, base + self.bptt)]))
            else:
                rows.append(self._buffer(base + first_row, base + first_row + self.bptt))
        x = torch.from_numpy(np.stack(rows))  # (bs, bptt)
        return x, torch.full((self.batch_size,), self.bptt, dtype=torch.long)


def _plan_batches(
    lengths: np.ndarray, indices: np.ndarray, batch_size: int | None, tokens_per_batch: int | None, group_by_size: bool
) -> list[np.ndarray]:
    """XLM's `get_iterator` batching of `indices` (already permuted or in order): optional stable sort by length,
    then `batch_size` sentences (np.array_split) or a `tokens_per_batch` budget (cumulative length // budget)."""
    if group_by_size:
        indices = indices[np.argsort(lengths[indices], kind="mergesort")]
    if tokens_per_batch:
        batch_ids = np.cumsum(lengths[indices]) // tokens_per_batch
        cuts = np.flatnonzero(np.diff(batch_ids)) + 1
        return [b for b in np.split(indices, cuts) if len(b)]
    return [b for b in np.array_split(indices, math.ceil(len(indices) / batch_size)) if len(b)] if len(indices) else []


def _collate(corpus: IndexedCorpus, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`x (bs, L)` rows `</s> w1..wn </s> <pad>...` and `lengths = n + 2`."""
    sents = [corpus[int(i)] for i in indices]
    lengths = torch.tensor([len(s) + 2 for s in sents], dtype=torch.long)
    x = torch.full((len(sents), int(lengths.max())), Dictionary.pad_index, dtype=torch.long)
    x[:, 0] = Dictionary.eos_index
    for row, s in enumerate(sents):
        x[row, 1 : len(s) + 1] = torch.from_numpy(s.astype(np.int64))
        x[row, len(s) + 1] = Dictionary.eos_index
    return x, lengths


class _SentencePlan(_ResumableBatches):
    """Batches of sentence indices, re-planned each pass: permute (when shuffling) the kept sentences, group by
    length, cut into batches, shuffle the batch order; rank r takes batches r, r + world_size, ..."""

    def __init__(
        self,
        kept: np.ndarray,
        sizes: np.ndarray,
        batch_size: int | None,
        tokens_per_batch: int | None,
        group_by_size: bool,
        seed: int,
        rank: int,
        world_size: int,
        shuffle: bool,
    ) -> None:
        if (batch_size is None) == (tokens_per_batch is None):
            raise ValueError("give exactly one of batch_size and tokens_per_batch")
        self._kept, self._sizes = kept, sizes
        self._args = (batch_size, tokens_per_batch, group_by_size)
        n_batches = len(self._plan(np.random.default_rng([seed, 0])))
        super().__init__(n_batches, seed, rank, world_size, shuffle)
        self._current: list[np.ndarray] = []

    def _plan(self, rng: np.random.Generator | None) -> list[np.ndarray]:
        indices = rng.permutation(self._kept) if rng is not None else self._kept
        batches = _plan_batches(self._sizes, indices, *self._args)
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _epoch_order(self) -> np.ndarray:
        # Same plan on every rank (seeded by seed and epoch only) so the shards stay disjoint; the batch count
        # can vary with the permutation under a token budget, so this rank's shard is recomputed per pass.
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
            plan = self._plan(rng)
            per_rank = len(plan) // self.world_size
            self._current = plan
            self._order = np.arange(self.rank, per_rank * self.world_size, self.world_size)
        return self._order

    def _indices(self, item: int) -> np.ndarray:
        return self._current[item]


class SentenceBatches(_SentencePlan):
    """XLM's `Dataset` iterator over one corpus: yields `(x (bs, L), lengths (bs,))`, rows
    `</s> w1..wn </s> <pad>..`, `lengths = n + 2`. Sentences longer than `max_len` are left out (counted in
    `n_too_long`); `max_len=None` keeps all (evaluation)."""

    def __init__(
        self,
        corpus: IndexedCorpus,
        batch_size: int | None = None,
        tokens_per_batch: int | None = None,
        max_len: int | None = 100,
        group_by_size: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.corpus = corpus
        lengths = corpus.lengths
        keep = lengths <= max_len if max_len else np.ones(len(lengths), dtype=bool)
        self.n_too_long = int((~keep).sum())
        super().__init__(
            np.flatnonzero(keep),
            lengths + 2,
            batch_size,
            tokens_per_batch,
            group_by_size,
            seed,
            rank,
            world_size,
            shuffle,
        )

    def _batch(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _collate(self.corpus, self._indices(item))


class ParallelBatches(_SentencePlan):
    """XLM's `ParallelDataset` iterator: yields aligned `((x1, len1), (x2, len2))` in the order of the corpora
    given. Pairs with an empty side or a side longer than `max_len` are left out (counted in `n_dropped`);
    grouping and token budgets use `len1 + len2 + 4`; `max_sentences` keeps only the first kept pairs."""

    def __init__(
        self,
        corpus1: IndexedCorpus,
        corpus2: IndexedCorpus,
        batch_size: int | None = None,
        tokens_per_batch: int | None = None,
        max_len: int | None = 100,
        group_by_size: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        max_sentences: int | None = None,
    ) -> None:
        if len(corpus1) != len(corpus2):
            raise ValueError(f"{corpus1.prefix} has {len(corpus1)} sentences, {corpus2.prefix} has {len(corpus2)}")
        self.corpus1, self.corpus2 = corpus1, corpus2
        len1, len2 = corpus1.lengths, corpus2.lengths
        keep = (len1 > 0) & (len2 > 0)
        if max_len:
            keep &= (len1 <= max_len) & (len2 <= max_len)
        self.n_dropped = int((~keep).sum())
        kept = np.flatnonzero(keep)[:max_sentences]  # XLM's evaluation `n_sentences`: the first pairs only
        super().__init__(
            kept, len1 + len2 + 4, batch_size, tokens_per_batch, group_by_size, seed, rank, world_size, shuffle
        )

    def _batch(self, item: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices(item)
        return _collate(self.corpus1, indices), _collate(self.corpus2, indices)
