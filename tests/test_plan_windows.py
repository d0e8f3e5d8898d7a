"""Windowed epoch plans of sentence / parallel batches: bounded memory, XLM's plan when the corpus fits a window.

Corpora written here: sentence i starts with the token `100 + i`, so every row of a batch names its sentence.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import indexed_corpus
from xlmtrain.data.corpus_batches import KeyedPermutation, ParallelBatches, SentenceBatches
from xlmtrain.data.indexed import IndexedCorpus

N = 300
MAX_LEN = 10


@pytest.fixture
def pair(tmp_path: Path) -> tuple[IndexedCorpus, IndexedCorpus, np.ndarray, np.ndarray]:
    """(side 1, side 2, sizes len1 + len2 + 4, kept mask): side 1 has 1..14 tokens, side 2 1..12 (some over MAX_LEN)
    or none for every 7th pair."""
    rng = np.random.default_rng(0)
    len1 = rng.integers(1, 15, size=N)
    len2 = np.where(np.arange(N) % 7 == 3, 0, rng.integers(1, 13, size=N))
    side1 = [[100 + i] + [20] * (int(n) - 1) for i, n in enumerate(len1)]
    side2 = [[30] * int(n) for n in len2]
    kept = (len1 <= MAX_LEN) & (len2 > 0) & (len2 <= MAX_LEN)
    return indexed_corpus(tmp_path / "a", side1), indexed_corpus(tmp_path / "b", side2), len1 + len2 + 4, kept


def _pairs(c1, c2, **kw) -> ParallelBatches:
    sizing = {} if "batch_size" in kw or "tokens_per_batch" in kw else {"batch_size": 4}
    return ParallelBatches(c1, c2, max_len=MAX_LEN, seed=5, **sizing, **kw)


def _ids(batch) -> list[int]:
    (x1, _), _ = batch
    return (x1[:, 1] - 100).tolist()


def _draw(it, n: int) -> list[tuple[dict, list[int]]]:
    """`n` batches as (state before the batch, sentence ids)."""
    out = []
    for _ in range(n):
        state = it.state_dict()
        out.append((state, _ids(next(it))))
    return out


def _epochs(it, n_epochs: int) -> list[list[tuple[int, list[int]]]]:
    """The batches of the first `n_epochs` passes, each as (window, sentence ids)."""
    epochs: list[list[tuple[int, list[int]]]] = [[] for _ in range(n_epochs)]
    while True:
        ids = _ids(next(it))  # the iterator moves to the batch's epoch/window before returning it
        if it.epoch == n_epochs:
            return epochs
        epochs[it.epoch].append((it.window, ids))


def test_keyed_permutation_is_a_bijection() -> None:
    for n in (1, 2, 3, 5, 16, 17, 1000, 4097):
        image = KeyedPermutation(n, np.random.SeedSequence(n))(np.arange(n))
        assert sorted(image.tolist()) == list(range(n)), n
    a, b = (KeyedPermutation(1000, np.random.SeedSequence(s))(np.arange(1000)) for s in (1, 2))
    assert (a != np.arange(1000)).mean() > 0.9 and (a != b).mean() > 0.9  # keyed, not the identity


def test_windows_cover_each_kept_pair_once_as_random_length_grouped_subsets(pair) -> None:
    c1, c2, sizes, kept = pair
    it = _pairs(c1, c2, plan_window=16)
    assert it.n_windows == math.ceil(N / 16) and it.n_dropped == int((~kept).sum()) > 0
    epochs = _epochs(it, 3)
    windows_of_epoch = []
    for batches in epochs:
        drawn = [i for _, ids in batches for i in ids]
        assert sorted(drawn) == np.flatnonzero(kept).tolist()  # every kept pair once, dropped ones never
        windows: dict[int, list[list[int]]] = {}
        for w, ids in batches:
            windows.setdefault(w, []).append(ids)
        assert sorted(windows) == list(range(it.n_windows))  # visited in order, each once
        assert [w for w, _ in batches] == sorted(w for w, _ in batches)
        for w, group in windows.items():
            members = [i for ids in group for i in ids]
            # a random subset of the corpus, not a contiguous run (real corpora are ordered by document)
            assert max(members) - min(members) > 3 * 16, (w, sorted(members))
            # length-grouped inside the window: the batches are cuts of one length-sorted list
            spans = sorted((min(sizes[ids]), max(sizes[ids])) for ids in group)
            assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:])), (w, spans)
        windows_of_epoch.append({w: sorted(i for ids in g for i in ids) for w, g in windows.items()})
    assert windows_of_epoch[0][0] != windows_of_epoch[1][0] != windows_of_epoch[2][0]  # new windows each epoch
    assert max(len(g) for g in epochs[0]) > 1  # batches of several pairs: the grouping check means something


@pytest.mark.parametrize("sizing", [{"batch_size": 3}, {"tokens_per_batch": 40}], ids=["batch_size", "tokens"])
def test_resume_from_every_state_equals_the_uninterrupted_sequence(pair, sizing) -> None:
    c1, c2, _, _ = pair
    it = _pairs(c1, c2, plan_window=16, **sizing)
    per_epoch = len(it)
    full = _draw(it, 2 * per_epoch + 20)  # two epoch boundaries, every window boundary of two epochs
    states = [s for s, _ in full]
    assert all(set(s) == {"epoch", "window", "position"} for s in states)  # O(1) state
    # at a window's end the state still names it; the same point named as the next window's start resumes too
    ends = [k for k in range(1, len(states)) if states[k]["position"] == 1]
    starts = [{**states[k], "position": 0} for k in ends]
    assert {s["epoch"] for s in starts} == {0, 1, 2} and len(starts) > 2 * it.n_windows - 2
    for k, state in [*enumerate(states[:-3]), *((k - 1, s) for k, s in zip(ends, starts) if k < len(states) - 3)]:
        resumed = _pairs(c1, c2, plan_window=16, **sizing)
        resumed.load_state_dict(state)
        assert [ids for _, ids in _draw(resumed, 3)] == [ids for _, ids in full[k : k + 3]], (k, state)


def _xlm_plan(sizes: np.ndarray, kept: np.ndarray, seed: int, epoch: int, batch_size: int | None,
              tokens_per_batch: int | None) -> list[list[int]]:  # fmt: skip
    """XLM's whole-corpus epoch plan, written out (the algorithm before windows): permute the kept ids, stable
    sort by size, cut, shuffle the batch order; one generator seeded (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(kept)
    order = order[np.argsort(sizes[order], kind="mergesort")]
    if tokens_per_batch:
        cuts = np.flatnonzero(np.diff(np.cumsum(sizes[order]) // tokens_per_batch)) + 1
        batches = [b for b in np.split(order, cuts) if len(b)]
    else:
        batches = np.array_split(order, math.ceil(len(order) / batch_size))
    return [batches[i].tolist() for i in rng.permutation(len(batches))]


@pytest.mark.parametrize("sizing", [{"batch_size": 3}, {"tokens_per_batch": 40}], ids=["batch_size", "tokens"])
@pytest.mark.parametrize("plan_window", [0, N, 10 * N])
def test_a_corpus_of_one_window_gets_xlm_whole_corpus_plan(pair, sizing, plan_window) -> None:
    c1, c2, sizes, kept = pair
    it = _pairs(c1, c2, plan_window=plan_window, **sizing)
    assert it.n_windows == 1
    got = _epochs(it, 3)
    for epoch in range(3):
        expected = _xlm_plan(sizes, np.flatnonzero(kept), 5, epoch, sizing.get("batch_size"),
                             sizing.get("tokens_per_batch"))  # fmt: skip
        assert [ids for _, ids in got[epoch]] == expected, epoch


def test_sentence_batches_window_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 15, size=N)
    c = indexed_corpus(tmp_path / "c", [[100 + i] + [20] * (int(n) - 1) for i, n in enumerate(lengths)])
    it = SentenceBatches(c, batch_size=4, max_len=MAX_LEN, seed=2, plan_window=32)
    assert it.n_windows == math.ceil(N / 32) and it.n_too_long == int((lengths > MAX_LEN).sum())
    drawn = [i for _ in range(len(it)) for i in (next(it)[0][:, 1] - 100).tolist()]
    assert sorted(drawn) == np.flatnonzero(lengths <= MAX_LEN).tolist()


def test_a_state_without_window_loads_only_into_a_one_window_plan(pair) -> None:
    c1, c2, _, _ = pair
    one = _pairs(c1, c2)  # the default window holds the whole corpus
    expected = _draw(one, 8)[5:]
    old = {"epoch": 0, "position": 5}  # as saved before windowed plans
    resumed = _pairs(c1, c2)
    resumed.load_state_dict(old)
    assert _draw(resumed, 3) == [({**old, "window": 0}, expected[0][1]), *expected[1:]]
    with pytest.raises(ValueError, match=r"spans 19 windows: resume with data.batching.plan_window=0"):
        _pairs(c1, c2, plan_window=16).load_state_dict(old)
    with pytest.raises(ValueError, match="window 19 is out of range"):
        _pairs(c1, c2, plan_window=16).load_state_dict({"epoch": 0, "window": 19, "position": 0})


def test_plan_window_reaches_the_training_pair_streams(synthetic_prep: Path) -> None:
    from xlmtrain.data.preprocessed import PreprocessedData
    from xlmtrain.objectives.data import BatchSettings, MaskingSettings, PretrainBatches
    from xlmtrain.objectives.streams import StreamSpec
    from xlmtrain.training.run_identity import is_identity_key

    assert is_identity_key("data.batching.plan_window")  # a resume with another window is refused, not reordered

    data = PreprocessedData(synthetic_prep)
    dico = data.dictionary

    def source(plan_window: int) -> PretrainBatches:
        return PretrainBatches([StreamSpec("mlm", "io"), StreamSpec("tlm", "io-vo")], data, vocab_size=len(dico),
                               mask_index=dico.mask_index, pad_index=dico.pad_index, counts=dico.counts,
                               batching=BatchSettings(batch_size=4, bptt=16, plan_window=plan_window),
                               masking=MaskingSettings(), seed=1)  # fmt: skip

    windowed = source(256)
    assert windowed._iterators[1].n_windows == math.ceil(len(data.parallel("train", "io", "vo")[0]) / 256) > 1
    old_state = {"index": 3, "streams": [{"epoch": 0, "position": 2}, {"epoch": 0, "position": 1}]}
    with pytest.raises(ValueError, match=r"^stream io-vo_tlm: .* resume with data.batching.plan_window=0$"):
        windowed.restore(old_state)
    whole = source(0)
    whole.restore(old_state)  # XLM's whole-corpus plan: a state saved before windows resumes
    assert whole._iterators[1].state_dict() == {"epoch": 0, "window": 0, "position": 1}
