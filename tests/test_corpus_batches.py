"""Memory-mapped corpora and the stream / sentence / parallel iterators, against hand-computed layouts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.conftest import indexed_corpus
from xlmtrain.data.corpus_batches import ParallelBatches, SentenceBatches, StreamBatches
from xlmtrain.data.indexed import IndexedCorpus


def test_indexed_layout_and_pickle(tmp_path):
    c = indexed_corpus(tmp_path / "c", [[20, 21], [], [22]])
    assert c.tokens.tolist() == [20, 21, 1, 1, 22, 1]  # every sentence followed by </s>, no leading </s>
    assert len(c) == 3 and c[0].tolist() == [20, 21] and c[1].tolist() == [] and c[-1].tolist() == [22]
    assert c.lengths.tolist() == [2, 0, 1] and isinstance(c.tokens, np.memmap)
    assert pickle.loads(pickle.dumps(c)).tokens.tolist() == c.tokens.tolist()
    assert len(pickle.dumps(c)) < 200  # pickles as its path


def test_indexed_rejects_truncated_file(tmp_path):
    indexed_corpus(tmp_path / "c", [[20, 21]])
    (tmp_path / "c.tokens").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="c.tokens"):
        IndexedCorpus(tmp_path / "c")


def test_stream_matches_xlm_layout(tmp_path):
    # 7 tokens: 10 11 1 12 13 14 1; bs=2, bptt=2 -> 2 chunks, buffer of 8 with one leading </s>:
    # buffer 1 10 11 1 | 12 13 14 1 -> columns, data = </s> row then rows of the columns.
    c = indexed_corpus(tmp_path / "c", [[10, 11], [12, 13, 14]])
    s = StreamBatches(c, bptt=2, batch_size=2, shuffle=False)
    batches = [x.tolist() for x, _ in s]
    assert batches == [[[1, 1], [1, 12]], [[10, 11], [13, 14]]]
    x, lengths = next(iter(StreamBatches(c, bptt=2, batch_size=2, shuffle=False)))
    assert x.dtype == torch.int64 and lengths.tolist() == [2, 2]


def test_sentence_batches_layout(tmp_path):
    c = indexed_corpus(tmp_path / "c", [[20, 21, 22], [23], [24, 25]])
    batches = list(SentenceBatches(c, batch_size=2, group_by_size=False, shuffle=False, max_len=None))
    (x, lengths), (x2, _) = batches
    assert x.tolist() == [[1, 20, 21, 22, 1], [1, 23, 1, 2, 2]] and lengths.tolist() == [5, 3]
    assert x2.tolist() == [[1, 24, 25, 1]]
    assert SentenceBatches(c, batch_size=2, max_len=2, shuffle=False).n_too_long == 1


def test_tokens_per_batch_and_grouping(tmp_path):
    c = indexed_corpus(tmp_path / "c", [[20] * 5, [21], [22] * 3, [23]])
    # sizes (len+2) 7,3,5,3; sorted stable: idx 1,3,2,0 -> cumsum 3,6,11,18 // 6 = 0,1,1,3
    it = SentenceBatches(c, tokens_per_batch=6, shuffle=False, max_len=None)
    firsts = [x[:, 1].tolist() for x, _ in it]
    assert firsts == [[21], [23, 22], [20]]


def test_parallel_drops_empty_and_long_pairs(tmp_path):
    a = indexed_corpus(tmp_path / "a", [[20], [], [21, 22], [23] * 5])
    b = indexed_corpus(tmp_path / "b", [[30], [31], [32], [33]])
    it = ParallelBatches(a, b, batch_size=8, max_len=3, shuffle=False, group_by_size=False)
    (x1, l1), (x2, l2) = next(it)
    assert it.n_dropped == 2
    assert x1.tolist() == [[1, 20, 1, 2], [1, 21, 22, 1]] and x2.tolist() == [[1, 30, 1], [1, 32, 1]]
    assert l1.tolist() == [3, 4] and l2.tolist() == [3, 3]


def _take(it, k):
    out = []
    for _ in range(k):
        b = next(it)
        out.append(torch.cat([t.flatten() for t in _flat(b)]))
    return out


def _flat(b):
    return [t for item in b for t in (item if isinstance(item, tuple) else (item,))]


@pytest.mark.parametrize("kind", ["stream", "sentence", "parallel"])
def test_resume_disjoint_ranks_and_determinism(tmp_path, kind):
    rng = np.random.default_rng(0)
    sents = [rng.integers(14, 60, size=rng.integers(1, 9)).tolist() for _ in range(60)]
    c1, c2 = indexed_corpus(tmp_path / "a", sents), indexed_corpus(tmp_path / "b", sents[::-1])

    def make(rank=0, world=1, seed=3):
        if kind == "stream":
            return StreamBatches(c1, bptt=4, batch_size=3, seed=seed, rank=rank, world_size=world)
        if kind == "sentence":
            return SentenceBatches(c1, tokens_per_batch=40, seed=seed, rank=rank, world_size=world)
        return ParallelBatches(c1, c2, batch_size=5, seed=seed, rank=rank, world_size=world)

    n_epoch = len(make())
    full = _take(make(), 2 * n_epoch + 3)  # crosses two epoch boundaries: infinite
    it = make()
    _take(it, n_epoch + 1)
    state = it.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(_take(resumed, n_epoch + 2), full[n_epoch + 1 :]))
    assert all(torch.equal(a, b) for a, b in zip(_take(make(), 5), full[:5]))  # deterministic for a seed
    assert not all(torch.equal(a, b) for a, b in zip(_take(make(seed=4), 5), full[:5]))
    # ranks: disjoint shards covering the same number of batches
    r0, r1 = make(0, 2), make(1, 2)
    items0 = {int(i) for i in r0._current_order()}
    items1 = {int(i) for i in r1._current_order()}
    assert len(items0) == len(items1) > 0 and not items0 & items1


def test_pad_right_by_hand() -> None:
    from xlmtrain.data.padding import pad_right

    ids, lengths = pad_right([[5, 6, 7], [8], np.array([9, 10])], pad_index=2)
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2], [9, 10, 2]] and ids.dtype == torch.long
    assert lengths.tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="at least one"):
        pad_right([], pad_index=2)


def test_every_epoch_is_a_new_permutation(tmp_path):
    """Shuffled iterators visit every batch once per epoch, in a different order each epoch (XLM reshuffles
    every epoch): sentence batches and stream batches, 3 epochs each."""
    c = indexed_corpus(tmp_path / "c", [[20 + i] for i in range(8)])
    sentences = SentenceBatches(c, batch_size=1, seed=0, shuffle=True, group_by_size=False)
    stream = StreamBatches(c, bptt=2, batch_size=1, seed=0, shuffle=True)
    for it, n in ((sentences, 8), (stream, len(stream))):
        epochs = [[tuple(next(it)[0].flatten().tolist()) for _ in range(n)] for _ in range(3)]
        assert all(sorted(e) == sorted(epochs[0]) and len(set(e)) == n for e in epochs)
        assert epochs[0] != epochs[1] and epochs[1] != epochs[2], epochs
