"""Batch sources of pretraining: the seeded stream mixture (training) and deterministic validation.

Both turn the data pipeline's iterators (`StreamBatches` for monolingual streams, `ParallelBatches`
for pairs) into `LMBatch`es for the stream's objective. All randomness is derived from counters, not
from running generator state: the stream of training batch `k` is drawn with a generator seeded by
`(seed, k)`, its masking with `(seed, k, 1)`, validation masking with `(eval_seed, stream, batch)`.
So the state of a run is the batch counter plus the data iterators' `{epoch, position}` (pair streams add
the planning `window`), each O(1): resuming plans only the window it falls in.

Data parallelism (DDP over `world_size` ranks). `batch_size` / `tokens_per_batch` are GLOBAL: every rank
walks the same data order, builds the same global batch `k` (the same stream, the same rows, the same
masking: nothing above depends on the rank) and trains on its own contiguous slice of rows
(`torch.tensor_split(rows, world_size)[rank]`, padding columns beyond the slice's longest row dropped).
The slices are disjoint and together are exactly the batch one process would train on, so with the loss
normalised by the global number of targets (`PretrainModule`) a W-process run takes the same optimizer
steps as a 1-process run with the same global batch, up to float summation order. Materialising the
global batch costs each rank a read of `batch_size` rows of token ids, which is negligible next to the
forward pass, and is what makes the masking of the union independent of how it is split. The batch state
(counter + positions) is therefore identical on every rank, so rank 0's checkpoint resumes all of them.
Validation batches are sharded by batch over ranks; their masking is keyed by the global batch number.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from xlmtrain.data.corpus_batches import DEFAULT_PLAN_WINDOW, ParallelBatches, StreamBatches
from xlmtrain.data.indexed import IndexedCorpus
from xlmtrain.objectives.batches import (
    LMBatch,
    PairBatch,
    concat_pair,
    constant_langs,
    next_token_labels,
    pair_batch,
    pair_rank_rows,
    rank_row_range,
    with_host_layout,
)
from xlmtrain.objectives.masking import mask_tokens, mask_tokens_eval, sampling_weights
from xlmtrain.objectives.streams import ALIGNMENT_OBJECTIVES, StreamMixture, StreamSpec

_KEEP_STATES = 64  # states of recent batches kept for checkpointing; far above Lightning's prefetch depth


class CorpusSource(Protocol):
    """What the batch sources need from preprocessed data (`xlmtrain.data.preprocessed.PreprocessedData`)."""

    lang2id: dict[str, int]

    def mono(self, split: str, lang: str) -> IndexedCorpus: ...

    def parallel(self, split: str, lang1: str, lang2: str) -> tuple[IndexedCorpus, IndexedCorpus]: ...


@dataclass(frozen=True)
class BatchSettings:
    """How batches are cut.

    Attributes:
        batch_size: rows per batch (stream columns for monolingual streams, sentence pairs for pairs).
        bptt: tokens per row of a monolingual stream batch.
        tokens_per_batch: token budget of a pair batch instead of `batch_size` (None: use batch_size).
        max_len: pairs with a side longer than this (BPE tokens) are left out of training.
        group_by_size: sort pairs by length before cutting batches (less padding).
        plan_window: pairs per planning window of the training pair streams: each pass is planned `plan_window`
            random pairs at a time (XLM's shuffle, length grouping and cutting inside the window), so the plan's
            memory does not grow with the corpus; 0: the whole corpus in one window, XLM's plan exactly (as is any
            corpus no larger than the window). Default `DEFAULT_PLAN_WINDOW` (2**18, see there).
        valid_batch_size: rows per validation batch. Monolingual validation streams are laid out in ONE column,
            as XLM evaluates them (batch size 1: at most bptt - 1 leading `</s>` of padding), and
            `valid_batch_size` consecutive bptt-chunks of that column make one batch.
        valid_max_batches: validation batches per stream (None: no cap beyond `valid_limits`).
        valid_limits: `xlm`: XLM's evaluation limits (`Evaluator.get_iterator`), by the number of languages of
            the data: up to 5, whole splits; more, every 5th stream chunk (test: 10th) and the first 1500 pairs
            (test: 300); over 30, as that but non-XNLI-15 languages and test at every 10th chunk, 600 pairs.
            `none`: whole splits.
    """

    batch_size: int = 32
    bptt: int = 256
    tokens_per_batch: int | None = None
    max_len: int = 100
    group_by_size: bool = True
    plan_window: int = DEFAULT_PLAN_WINDOW
    valid_batch_size: int = 16
    valid_max_batches: int | None = None
    valid_limits: str = "xlm"

    def __post_init__(self) -> None:
        for name in ("batch_size", "bptt", "max_len", "valid_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.batching.{name} must be > 0, got {getattr(self, name)}")
        if self.plan_window < 0:
            raise ValueError(f"data.batching.plan_window must be >= 0 (0: the whole corpus), got {self.plan_window}")
        if self.valid_limits not in ("xlm", "none"):
            raise ValueError(f"data.batching.valid_limits must be xlm or none, got {self.valid_limits!r}")


@dataclass(frozen=True)
class MaskingSettings:
    """MLM/TLM corruption (XLM's `--word_pred`, `--word_mask_keep_rand`, `--sample_alpha`).

    Attributes:
        word_pred: fraction of tokens to predict.
        keep_rand: probabilities of replacing a target by the mask token, keeping it, or a random id.
        sample_alpha: 0: Bernoulli targets; > 0: exact-count targets weighted by `count^-sample_alpha`.
        eval_seed: seed of the deterministic validation masking.
    """

    word_pred: float = 0.15
    keep_rand: tuple[float, float, float] = (0.8, 0.1, 0.1)
    sample_alpha: float = 0.0
    eval_seed: int = 0


@dataclass
class TrainItem:
    """One training batch: `batch` (this rank's rows) from stream `stream`, loss coefficient `lambda_`, global batch
    counter `index`, and `n_targets`, the number of targets of the GLOBAL batch (all ranks' rows): the loss is
    normalised by it without a collective. For the alignment objectives (`trans_rank`, `xlco`) `batch` is a
    `PairBatch` and `n_targets` the global number of pairs."""

    batch: LMBatch | PairBatch
    stream: int
    lambda_: float
    index: int
    n_targets: int


@dataclass
class ValidItem:
    """One validation batch of stream `stream` (an `LMBatch`, or a `PairBatch` for the alignment objectives)."""

    batch: LMBatch | PairBatch
    stream: int


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def _pair_corpora(data: CorpusSource, split: str, spec: StreamSpec) -> tuple[IndexedCorpus, IndexedCorpus]:
    lang1, lang2 = spec.langs
    return data.parallel(split, lang1, lang2)


class _Builder:
    """Turns raw iterator output into the `LMBatch` of a stream's objective."""

    def __init__(self, data: CorpusSource, vocab_size: int, mask_index: int, pad_index: int) -> None:
        self.lang2id = data.lang2id
        self.vocab_size, self.mask_index, self.pad_index = vocab_size, mask_index, pad_index

    def layout(
        self, spec: StreamSpec, raw: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`(ids, lengths, position_ids or None, langs)` of a raw batch."""
        if spec.is_pair:
            (x1, len1), (x2, len2) = raw
            lang1, lang2 = spec.langs
            pair = concat_pair(
                x1, len1, x2, len2, lang1_id=self.lang2id[lang1], lang2_id=self.lang2id[lang2], pad_index=self.pad_index
            )
            return pair.ids, pair.lengths, pair.position_ids, pair.langs
        x, lengths = raw
        return x, lengths, None, constant_langs(x, self.lang2id[spec.langs[0]])

    def pair(self, spec: StreamSpec, raw: Any) -> PairBatch:
        """The two sides of a raw pair batch, padded separately (the alignment objectives)."""
        (x1, len1), (x2, len2) = raw
        lang1, lang2 = spec.langs
        return pair_batch(x1, len1, x2, len2, lang1_id=self.lang2id[lang1], lang2_id=self.lang2id[lang2])

    def clm(
        self, ids: torch.Tensor, lengths: torch.Tensor, position_ids: torch.Tensor | None, langs: torch.Tensor
    ) -> LMBatch:
        pred_mask, labels = next_token_labels(ids, lengths)
        return LMBatch(ids, lengths, position_ids, langs, pred_mask, labels, causal=True)


def rank_rows(batch: LMBatch, rank: int, world_size: int, *, where: str = "batch") -> LMBatch:
    """Rank `rank`'s contiguous slice of the rows of a global `batch`, trailing all-pad columns dropped.

    `labels` are row-major over `pred_mask`, so the slice's labels are a contiguous run of them.
    Raises ValueError naming `where` if the batch has fewer rows than ranks (a rank would get none).
    """
    if world_size == 1:
        return batch
    lo, hi = rank_row_range(batch.input_ids.shape[0], rank, world_size, where=where)
    slen = int(batch.lengths[lo:hi].max())
    per_row = batch.pred_mask.sum(dim=1)  # (bs,)
    t_lo, t_hi = int(per_row[:lo].sum()), int(per_row[:hi].sum())

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[lo:hi, :slen]  # (rows, slen)

    return replace(
        batch,
        input_ids=cut(batch.input_ids),
        lengths=batch.lengths[lo:hi],
        position_ids=cut(batch.position_ids),
        langs=cut(batch.langs),
        pred_mask=cut(batch.pred_mask),
        labels=batch.labels[t_lo:t_hi],
    )


class PretrainBatches:
    """Infinite iterable of `TrainItem`s drawn from a `StreamMixture`; resumable via `state_after`/`restore`."""

    def __init__(
        self,
        specs: Sequence[StreamSpec],
        data: CorpusSource,
        *,
        vocab_size: int,
        mask_index: int,
        pad_index: int,
        counts: Sequence[int],
        batching: BatchSettings,
        masking: MaskingSettings,
        lg_sampling_factor: float = -1.0,
        mixture: str = "xlm",
        seed: int = 0,
        skip_batches: Collection[int] = (),
    ) -> None:
        """
        Args:
            specs: the training streams.
            data: preprocessed corpora (`mono`, `parallel`, `lang2id`).
            vocab_size: vocabulary size (random replacement range).
            counts: per-id corpus counts of the dictionary (for `sample_alpha`).
            batching, masking: see `BatchSettings`, `MaskingSettings`.
            lg_sampling_factor: alpha of language sampling inside a stream group (< 0: follow weights only).
            mixture: how stream groups share the steps, `xlm` or `weights` (`StreamMixture`).
            seed: seed of stream choice, masking and data order.
            skip_batches: batch counters whose data is drawn and dropped (the numerics guard's bad batches);
                every other batch is the one it would have been.
        """
        self.specs = list(specs)
        self.skip_batches = frozenset(skip_batches)
        self.data, self.batching, self.masking, self.seed = data, batching, masking, seed
        self.builder = _Builder(data, vocab_size, mask_index, pad_index)
        self.token_weights = (
            sampling_weights(torch.tensor(list(counts)), masking.sample_alpha) if masking.sample_alpha > 0 else None
        )
        sizes = {
            spec.name: len(_pair_corpora(data, "train", spec)[0] if spec.is_pair else data.mono("train", spec.langs[0]))
            for spec in self.specs
        }
        self.mixture = StreamMixture(self.specs, sizes, lg_sampling_factor, mixture)
        self.rank, self.world_size, self.accumulate = 0, 1, 1
        self._iterators: list[Any] = []
        self._next_index = 0
        self._states: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._states_lock = threading.Lock()  # batches may be built in a background thread (`BackgroundBatches`)
        self.configure()

    def configure(self, rank: int = 0, world_size: int = 1, accumulate: int = 1) -> None:
        """(Re)build the per-stream iterators for this rank; resets positions (load a state afterwards)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.rank, self.world_size, self.accumulate = rank, world_size, max(1, int(accumulate))
        b = self.batching
        self._iterators = []
        for i, spec in enumerate(self.specs):
            # The global data order (rank 0 of 1) on every rank: ranks split each batch by rows, not the corpus.
            common = dict(seed=self.seed + i, rank=0, world_size=1, shuffle=True)
            if spec.is_pair:
                c1, c2 = _pair_corpora(self.data, "train", spec)
                sizing = (
                    {"tokens_per_batch": b.tokens_per_batch} if b.tokens_per_batch else {"batch_size": b.batch_size}
                )
                it = ParallelBatches(
                    c1,
                    c2,
                    max_len=b.max_len,
                    group_by_size=b.group_by_size,
                    plan_window=b.plan_window,
                    **sizing,
                    **common,
                )
            else:
                it = StreamBatches(self.data.mono("train", spec.langs[0]), b.bptt, b.batch_size, **common)
            self._iterators.append(it)
        self._next_index = 0
        self._states.clear()
        self._start = self.next_state()

    def _make(self, spec: StreamSpec, raw: Any, generator: torch.Generator) -> LMBatch | PairBatch:
        if spec.objective in ALIGNMENT_OBJECTIVES:
            return self.builder.pair(spec, raw)
        ids, lengths, position_ids, langs = self.builder.layout(spec, raw)
        if spec.objective == "clm":
            return self.builder.clm(ids, lengths, position_ids, langs)
        m = self.masking
        masked = mask_tokens(
            ids,
            lengths,
            vocab_size=self.builder.vocab_size,
            mask_index=self.builder.mask_index,
            generator=generator,
            word_pred=m.word_pred,
            keep_rand=tuple(m.keep_rand),
            token_weights=self.token_weights,
        )
        return LMBatch(masked.input_ids, lengths, position_ids, langs, masked.pred_mask, masked.labels, causal=False)

    def __iter__(self) -> Iterator[TrainItem]:
        # Every new iteration starts at the configured/restored position, so an iterator that is built,
        # prefetched from and discarded never shifts the data of the one that trains.
        self._apply(self._start)
        while True:
            k = self._next_index
            step = k // self.accumulate
            stream = self.mixture.draw(step, _generator(self.seed, k, 0))
            spec = self.specs[stream]
            if k in self.skip_batches:
                next(self._iterators[stream])  # consumed, so the stream's later batches stay where they were
                self._next_index = k + 1
                continue
            batch = self._make(spec, next(self._iterators[stream]), _generator(self.seed, k, 1))
            where = f"batch {k} of stream {spec.name}"
            if isinstance(batch, PairBatch):
                n_targets = batch.global_rows
                batch = pair_rank_rows(batch, self.rank, self.world_size, where=where)
            else:
                n_targets = batch.labels.numel()
                batch = with_host_layout(rank_rows(batch, self.rank, self.world_size, where=where))
            self._next_index = k + 1
            state = {"index": k + 1, "streams": [it.state_dict() for it in self._iterators]}
            with self._states_lock:
                self._states[k] = state
                while len(self._states) > _KEEP_STATES:
                    self._states.popitem(last=False)
            yield TrainItem(batch=batch, stream=stream, lambda_=spec.schedule(step), index=k, n_targets=n_targets)

    def state_after(self, index: int) -> dict[str, Any]:
        """State that resumes right after training batch `index`; raises KeyError if it is too old."""
        with self._states_lock:
            if index not in self._states:
                raise KeyError(f"no saved batch state for batch {index} (kept: {list(self._states)[:1]}..)")
            return self._states[index]

    def next_state(self) -> dict[str, Any]:
        """State of the next batch to be produced (ahead of training by Lightning's prefetch).

        Deliberately not named `state_dict`: Lightning would then save this prefetch-shifted state itself.
        """
        return {"index": self._next_index, "streams": [it.state_dict() for it in self._iterators]}

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from `state_after(...)` / `next_state()` of a source built with the same arguments."""
        if len(state["streams"]) != len(self._iterators):
            raise ValueError(
                f"checkpoint has batch state for {len(state['streams'])} streams, this run has {len(self._iterators)}"
            )
        self._start = copy.deepcopy(state)
        self._apply(self._start)

    def _apply(self, state: dict[str, Any]) -> None:
        self._next_index = int(state["index"])
        for spec, it, s in zip(self.specs, self._iterators, state["streams"]):
            try:
                it.load_state_dict(s)
            except ValueError as error:
                raise ValueError(f"stream {spec.name}: {error}") from None
        self._states.clear()


_XNLI15 = frozenset("ar bg de el en es fr hi ru sw th tr ur vi zh".split())


def xlm_eval_limits(n_langs: int, split: str, lang: str) -> tuple[int, int | None]:
    """XLM's evaluation limits (`Evaluator.get_iterator`): `(stream subsample, pairs kept or None)` for a run over
    `n_langs` languages, on `split` (valid/test), for stream language `lang` (the first of a pair)."""
    if n_langs > 30:
        rare = split == "test" or lang not in _XNLI15
        return (10, 600) if rare else (5, 1500)
    if n_langs > 5:
        return (10, 300) if split == "test" else (5, 1500)
    return 1, None


class ValidBatches:
    """Finite iterable of `ValidItem`s: every stream's valid split in order, masked deterministically."""

    def __init__(
        self,
        specs: Sequence[StreamSpec],
        data: CorpusSource,
        *,
        vocab_size: int,
        mask_index: int,
        pad_index: int,
        batching: BatchSettings,
        masking: MaskingSettings,
        split: str = "valid",
    ) -> None:
        """Validation of `specs` on `split` (`valid` or `test`); see `PretrainBatches` for the arguments."""
        self.specs, self.data, self.split = list(specs), data, split
        self.batching, self.masking = batching, masking
        self.builder = _Builder(data, vocab_size, mask_index, pad_index)
        self.rank, self.world_size = 0, 1

    def configure(self, rank: int = 0, world_size: int = 1) -> None:
        """Shard the validation batches over ranks."""
        self.rank, self.world_size = rank, world_size

    def _limits(self, spec: StreamSpec) -> tuple[int, int | None]:
        if self.batching.valid_limits == "none":
            return 1, None
        return xlm_eval_limits(len(self.data.lang2id), self.split, spec.langs[0])

    def _global_batches(self, spec: StreamSpec) -> Iterator[Any]:
        """Every rank's view of the global validation batches of `spec`, in order (tokens read lazily)."""
        b = self.batching
        subsample, max_pairs = self._limits(spec)
        if spec.is_pair:
            c1, c2 = _pair_corpora(self.data, self.split, spec)
            pairs = ParallelBatches(
                c1,
                c2,
                batch_size=b.valid_batch_size,
                max_len=None,
                group_by_size=False,
                shuffle=False,
                max_sentences=max_pairs,
            )
            return (lambda i=i: pairs.batch_at(i) for i in range(len(pairs)))
        # One column (XLM's batch size 1), every `subsample`-th bptt chunk; `valid_batch_size` chunks per batch.
        column = StreamBatches(self.data.mono(self.split, spec.langs[0]), b.bptt, 1, shuffle=False)
        chunks = list(range(0, len(column), subsample))
        groups = [chunks[i : i + b.valid_batch_size] for i in range(0, len(chunks), b.valid_batch_size)]

        def stacked(group: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            parts = [column.batch_at(c) for c in group]
            return torch.cat([x for x, _ in parts]), torch.cat([n for _, n in parts])  # (len(group), bptt)

        return (lambda g=g: stacked(g) for g in groups)

    def __iter__(self) -> Iterator[ValidItem]:
        limit = self.batching.valid_max_batches
        for stream, spec in enumerate(self.specs):
            for j, load in enumerate(self._global_batches(spec)):
                # Global batch j belongs to rank j % W; keying the masking and the limit by j keeps validation
                # independent of W.
                if limit is not None and j >= limit:
                    break
                if j % self.world_size != self.rank:
                    continue
                raw = load()
                if spec.objective in ALIGNMENT_OBJECTIVES:
                    yield ValidItem(batch=self.builder.pair(spec, raw), stream=stream)
                    continue
                ids, lengths, position_ids, langs = self.builder.layout(spec, raw)
                if spec.objective == "clm":
                    batch = self.builder.clm(ids, lengths, position_ids, langs)
                else:
                    masked = mask_tokens_eval(
                        ids,
                        lengths,
                        mask_index=self.builder.mask_index,
                        generator=_generator(self.masking.eval_seed, stream, j),
                        word_pred=self.masking.word_pred,
                    )
                    batch = LMBatch(
                        masked.input_ids, lengths, position_ids, langs, masked.pred_mask, masked.labels, causal=False
                    )
                yield ValidItem(batch=batch, stream=stream)
