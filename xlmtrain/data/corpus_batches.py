"""Batch iterators over memory-mapped corpora, used by the pretraining objectives.

All tensors are batch-major int64. Training iterators (`shuffle=True`) are infinite: each pass ("epoch")
visits this rank's batches in a new seeded order; evaluation iterators (`shuffle=False`) make one pass in
order. A pass is planned in units: the whole pass for stream batches, one window of `plan_window` random
sentences at a time for sentence and parallel batches (memory O(window), not O(corpus)). `state_dict()` is
`{"epoch", "position"}` (sentence plans add `"window"`): loading it into a new iterator built with the same
arguments resumes at the exact next batch, planning only the unit it falls in.
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
    """Epoch/unit/position bookkeeping shared by every iterator: subclasses plan a unit of a pass (`_plan_unit`:
    this rank's item numbers in visiting order) and make the batch of an item (`_batch`)."""

    _units_per_pass = 1

    def __init__(self, seed: int, rank: int, world_size: int, shuffle: bool) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None

    def _plan_unit(self) -> np.ndarray:
        raise NotImplementedError

    def _next_unit(self) -> None:
        """Move to the next unit of the pass (here the pass is one unit: the next pass)."""
        self.epoch += 1

    def _current_order(self) -> np.ndarray:
        if self._order is None:
            self._order = self._plan_unit()
        return self._order

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        order = self._current_order()
        skipped = 0
        while self.position >= len(order):
            if not self.shuffle:
                raise StopIteration
            skipped += 1  # a unit can hold no batch of this rank; a whole pass of such units never ends
            if skipped > self._units_per_pass:
                raise ValueError(
                    f"no batches for rank {self.rank} of {self.world_size} in a whole pass: the corpus is too small"
                )
            self._next_unit()
            self.position, self._order = 0, None
            order = self._current_order()
        item = int(order[self.position])
        self.position += 1
        return self._batch(item)

    def _batch(self, item: int) -> Any:
        raise NotImplementedError

    def batch_at(self, item: int) -> Any:
        """Batch number `item` of the unsharded, unshuffled order (random access for evaluation); the iterator's
        position does not move."""
        self._current_order()  # builds the plan (sentence iterators)
        return self._batch(item)

    def state_dict(self) -> dict[str, int]:
        """Where the iterator stands: the next batch is batch `position` of the current unit of pass `epoch`."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()` of an iterator built with the same arguments."""
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


class StreamBatches(_ResumableBatches):
    """XLM's StreamDataset: the corpus as one token stream (`s1 </s> s2 </s> ...`), left-padded with `</s>` to
    `n_chunks * bptt * batch_size` tokens, split into `batch_size` contiguous columns, each preceded by one
    `</s>`; chunk `i` is rows `[i*bptt, (i+1)*bptt)`. Yields `(x (batch_size, bptt), lengths (batch_size,))`
    with `lengths == bptt`; chunks cross sentence boundaries and hold no padding. Reads only the tokens of
    each batch from the mmap. Ranks take disjoint shards of chunks (chunk `i` belongs to rank `i % world_size`;
    every rank gets the same number, the remainder is left out), visited in a permutation seeded by
    `(seed, rank, epoch)`."""

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
        super().__init__(seed, rank, world_size, shuffle)
        self.corpus, self.bptt, self.batch_size = corpus, bptt, batch_size
        n_tokens = corpus.n_tokens
        self.n_chunks = math.ceil(n_tokens / (batch_size * bptt))
        self._column = self.n_chunks * bptt  # tokens per column
        self._pad = self._column * batch_size - n_tokens  # leading </s> of the buffer
        self._shard = np.arange(rank, (self.n_chunks // world_size) * world_size, world_size)
        if shuffle and len(self._shard) == 0:
            raise ValueError(
                f"no batches for rank {rank} of {world_size} ({self.n_chunks} in all): the corpus is too small"
            )

    def _plan_unit(self) -> np.ndarray:
        if not self.shuffle:
            return self._shard
        return np.random.default_rng([self.seed, self.rank, self.epoch]).permutation(self._shard)

    def __len__(self) -> int:
        """Batches in one pass of this rank."""
        return len(self._shard)

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


_FEISTEL_ROUNDS = 6
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))  # splitmix64's finaliser multipliers


class KeyedPermutation:
    """A pseudo-random bijection of [0, n) keyed by a `SeedSequence`, evaluated at any positions without being
    materialised (memory O(positions)): a balanced Feistel network over the 2*h-bit numbers (4**h >= n), with
    cycle-walking (re-applying the network until the value falls inside [0, n), a bijection of [0, n) because
    the network is one of [0, 4**h)); at most 4x n values, so a few passes on average."""

    def __init__(self, n: int, key: np.random.SeedSequence) -> None:
        self.n = n
        self._half = max(1, ((n - 1).bit_length() + 1) // 2)
        self._mask = np.uint64((1 << self._half) - 1)
        self._keys = key.generate_state(_FEISTEL_ROUNDS, np.uint64)

    def _network(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        for key in self._keys:
            z = (right ^ key) * _MIX[0]  # the round function: splitmix64's mixer of (right, key), wrapping
            z = (z ^ (z >> np.uint64(31))) * _MIX[1]
            left, right = right, left ^ ((z ^ (z >> np.uint64(29))) & self._mask)
        return (left << half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        out = self._network(np.asarray(positions, dtype=np.uint64))
        outside = np.flatnonzero(out >= self.n)
        while len(outside):
            out[outside] = self._network(out[outside])
            outside = outside[out[outside] >= self.n]
        return out.astype(np.int64)


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


_COUNT_BLOCK = 1 << 20  # sentences measured at a time when counting the kept ones (bounded memory)

DEFAULT_PLAN_WINDOW = 1 << 18
"""Sentences per planning window (262144): planning one costs ~15 MB for a moment and keeps ~3 MB (ids and batch
arrays), whatever the corpus size; with ~2.6k sentences per length of 1..100 tokens, grouping by length inside it
pads about as little as over the whole corpus (benchmarks/README.md)."""


class _SentencePlan(_ResumableBatches):
    """Batches of sentence ids, planned one window at a time so that memory is O(plan_window), not O(corpus).

    A shuffled pass cuts the corpus into windows of `plan_window` RANDOM sentences (real corpora are ordered by
    article or document, so contiguous runs would not do): window w holds the images of positions
    [w*W, (w+1)*W) under a pseudo-random bijection of the sentence ids keyed by (seed, epoch)
    (`KeyedPermutation`). Inside a window, XLM's plan: the kept sentences permuted, stably sorted by length
    (`group_by_size`), cut into batches, the batch order shuffled; rank r takes batches r, r + world_size, ... of
    each window; windows are visited in order. A corpus of one window (`plan_window=0` or >= the corpus) has no
    bijection and its window is seeded by (seed, epoch), so its plan is XLM's whole-corpus plan exactly.
    Evaluation (`shuffle=False`): one window, every sentence in order.

    Subclasses give `_measure(ids) -> (sizes, keep)` (batching sizes of sentences `ids`, and which are kept).
    """

    def __init__(
        self,
        n_sentences: int,
        batch_size: int | None,
        tokens_per_batch: int | None,
        group_by_size: bool,
        plan_window: int,
        seed: int,
        rank: int,
        world_size: int,
        shuffle: bool,
        max_sentences: int | None = None,
    ) -> None:
        if (batch_size is None) == (tokens_per_batch is None):
            raise ValueError("give exactly one of batch_size and tokens_per_batch")
        if plan_window < 0:
            raise ValueError(f"plan_window must be >= 0 (0: the whole corpus), got {plan_window}")
        if max_sentences is not None and shuffle:
            raise ValueError("max_sentences (the first kept sentences) is for evaluation iterators (shuffle=False)")
        super().__init__(seed, rank, world_size, shuffle)
        self._args = (batch_size, tokens_per_batch, group_by_size)
        self.n_sentences, self.max_sentences = n_sentences, max_sentences
        one_window = not shuffle or plan_window == 0 or n_sentences <= plan_window
        self.window_size = max(1, n_sentences) if one_window else plan_window
        self.n_windows = max(1, math.ceil(n_sentences / self.window_size))
        self._units_per_pass = self.n_windows
        self.window = 0
        self.n_kept = sum(
            int(self._measure(np.arange(lo, min(lo + _COUNT_BLOCK, n_sentences)))[1].sum())
            for lo in range(0, n_sentences, _COUNT_BLOCK)
        )
        if shuffle and self.n_kept == 0:
            raise ValueError(f"no batches for rank {rank} of {world_size} (no sentence kept): the corpus is too small")
        self._current: list[np.ndarray] = []

    def _measure(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _window_ids(self, epoch: int, window: int) -> np.ndarray:
        """The sentence ids of a window, sorted (a run of positions through the pass's bijection)."""
        lo = window * self.window_size
        positions = np.arange(lo, min(lo + self.window_size, self.n_sentences))
        if self.n_windows == 1:
            return positions
        key = np.random.SeedSequence([self.seed, epoch]).spawn(1)[0]  # independent of the windows' rngs below
        return np.sort(KeyedPermutation(self.n_sentences, key)(positions))

    def _window_batches(self, epoch: int, window: int) -> list[np.ndarray]:
        """The batches (sentence ids) of a window in visiting order, before the split over ranks."""
        ids = self._window_ids(epoch, window)
        sizes, keep = self._measure(ids)
        kept, sizes = ids[keep][: self.max_sentences], sizes[keep][: self.max_sentences]
        # window 0 is seeded (seed, epoch) as XLM's whole-corpus plan was: a one-window corpus gets exactly it
        rng = np.random.default_rng([self.seed, epoch] + ([window] if window else [])) if self.shuffle else None
        order = rng.permutation(len(kept)) if rng is not None else np.arange(len(kept))
        batches = _plan_batches(sizes, order, *self._args)  # of positions into `kept`
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [kept[b] for b in batches]

    def _plan_unit(self) -> np.ndarray:
        self._current = self._window_batches(self.epoch, self.window)
        per_rank = len(self._current) // self.world_size
        return np.arange(self.rank, per_rank * self.world_size, self.world_size)

    def _next_unit(self) -> None:
        self.window += 1
        if self.window == self.n_windows:
            self.epoch, self.window = self.epoch + 1, 0

    def __len__(self) -> int:
        """Batches of this rank in pass `epoch` (plans every window in turn: O(window) memory, O(corpus) time)."""
        return sum(len(self._window_batches(self.epoch, w)) // self.world_size for w in range(self.n_windows))

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "window": self.window}

    def load_state_dict(self, state: dict[str, int]) -> None:
        window = int(state.get("window", 0))
        if "window" not in state and self.n_windows > 1:
            raise ValueError(
                f"the batch state has no planning window (saved with a whole-corpus plan) and this corpus of "
                f"{self.n_sentences} sentences spans {self.n_windows} windows: resume with data.batching.plan_window=0"
            )
        if not 0 <= window < self.n_windows:
            raise ValueError(f"the batch state's window {window} is out of range: this plan has {self.n_windows}")
        super().load_state_dict(state)
        self.window = window

    def _indices(self, item: int) -> np.ndarray:
        return self._current[item]


class SentenceBatches(_SentencePlan):
    """XLM's `Dataset` iterator over one corpus: yields `(x (bs, L), lengths (bs,))`, rows
    `</s> w1..wn </s> <pad>..`, `lengths = n + 2`. Sentences longer than `max_len` are left out (counted in
    `n_too_long`); `max_len=None` keeps all (evaluation). `plan_window`: see `_SentencePlan`."""

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
        plan_window: int = DEFAULT_PLAN_WINDOW,
    ) -> None:
        self.corpus, self.max_len = corpus, max_len
        super().__init__(
            len(corpus), batch_size, tokens_per_batch, group_by_size, plan_window, seed, rank, world_size, shuffle
        )
        self.n_too_long = len(corpus) - self.n_kept

    def _measure(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = self.corpus.lengths_of(ids)
        return lengths + 2, lengths <= self.max_len if self.max_len else np.ones(len(ids), dtype=bool)

    def _batch(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _collate(self.corpus, self._indices(item))


class ParallelBatches(_SentencePlan):
    """XLM's `ParallelDataset` iterator: yields aligned `((x1, len1), (x2, len2))` in the order of the corpora
    given. Pairs with an empty side or a side longer than `max_len` are left out (counted in `n_dropped`);
    grouping and token budgets use `len1 + len2 + 4`; `max_sentences` keeps only the first kept pairs
    (evaluation). `plan_window`: see `_SentencePlan`."""

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
        plan_window: int = DEFAULT_PLAN_WINDOW,
    ) -> None:
        if len(corpus1) != len(corpus2):
            raise ValueError(f"{corpus1.prefix} has {len(corpus1)} sentences, {corpus2.prefix} has {len(corpus2)}")
        self.corpus1, self.corpus2, self.max_len = corpus1, corpus2, max_len
        super().__init__(
            len(corpus1),
            batch_size,
            tokens_per_batch,
            group_by_size,
            plan_window,
            seed,
            rank,
            world_size,
            shuffle,
            max_sentences,
        )
        self.n_dropped = len(corpus1) - self.n_kept

    def _measure(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        len1, len2 = self.corpus1.lengths_of(ids), self.corpus2.lengths_of(ids)
        keep = (len1 > 0) & (len2 > 0)
        if self.max_len:
            keep &= (len1 <= self.max_len) & (len2 <= self.max_len)
        return len1 + len2 + 4, keep

    def _batch(self, item: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices(item)
        return _collate(self.corpus1, indices), _collate(self.corpus2, indices)
