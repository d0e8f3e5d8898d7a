"""Dictionary (XLM read_vocab semantics) and BPE learning/application."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from xlmtrain.data.bpe import BPE, learn_bpe, write_codes
from xlmtrain.data.dictionary import Dictionary, VocabError


def test_special_ids_and_read_vocab_skips(tmp_path):
    vocab = tmp_path / "vocab"
    vocab.write_text("the 10\nbad line here\ncat 7\nthe 5\nx\u2028y 4\nmat 3\n", encoding="utf-8")
    d = Dictionary.read_vocab(vocab)
    assert d.id2word[:6] == ["<s>", "</s>", "<pad>", "<unk>", "<special0>", "<special1>"]
    assert (d.bos_index, d.eos_index, d.pad_index, d.unk_index, d.mask_index) == (0, 1, 2, 3, 5)
    assert d.id2word[13] == "<special9>"
    # line i -> 14 + i - skipped: the, cat, mat; 3 lines skipped (3 fields, duplicate, U+2028)
    assert [d.index(w) for w in ("the", "cat", "mat", "dog")] == [14, 15, 16, 3]
    assert d.n_skipped == 3 and len(d) == 17 and d.counts[14:] == [10, 7, 3]


def test_read_vocab_rejects_unsorted_and_bad_counts(tmp_path):
    (tmp_path / "v1").write_text("a 1\nb 2\n")
    with pytest.raises(VocabError, match="v1:2"):
        Dictionary.read_vocab(tmp_path / "v1")
    (tmp_path / "v2").write_text("a x1\n")
    with pytest.raises(VocabError, match="v2:1"):
        Dictionary.read_vocab(tmp_path / "v2")


def test_max_vocab_min_count_and_order():
    d = Dictionary.from_counts({"b": 5, "a": 5, "c": 9, "d": 1, "</s>": 3})
    assert d.words == ["c", "a", "b", "d"]  # count desc, then token; specials dropped
    assert d.max_vocab(16).words == ["c", "a"]
    assert d.min_count(5).words == ["c", "a", "b"]
    assert d.dtype_name == "uint16"


def test_learn_bpe_hand_example():
    # pairs: (e,s)=6+3, (s,t</w>)=9, (l,o)=7; after es/est</w>/lo, ties at 6 go to the smallest (left, right)
    merges = learn_bpe({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 5)
    assert merges == [("e", "s", 9), ("es", "t</w>", 9), ("l", "o", 7), ("e", "w", 6), ("ew", "est</w>", 6)]


def _naive_learn(word_counts, n):
    """Reference: recount every pair before each merge."""
    words = {tuple([*w[:-1], w[-1] + "</w>"]): c for w, c in word_counts.items()}
    out = []
    for _ in range(n):
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        (a, b), c = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        out.append((a, b, c))
        new = {}
        for w, cnt in words.items():
            merged, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == (a, b):
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            new[tuple(merged)] = new.get(tuple(merged), 0) + cnt
        words = new
    return out


@pytest.mark.parametrize("seed, letters, max_len", [(0, "abcaab", 8), (1, "aaab", 14), (2, "abcdéf日", 10)])
def test_incremental_equals_naive_recount(seed, letters, max_len):
    # "aaab": long runs of one symbol, so (x, x) merges overlap and consecutive merges share a neighbour
    rng = random.Random(seed)
    counts = {"".join(rng.choice(letters) for _ in range(rng.randint(1, max_len))): rng.randint(1, 20)
              for _ in range(300)}  # fmt: skip
    assert learn_bpe(counts, 150) == _naive_learn(counts, 150)


def test_fastbpe_applies_learned_codes(tmp_path):
    write_codes(learn_bpe({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 20), tmp_path / "codes")
    bpe = BPE(tmp_path / "codes")
    # lowest: e+s, es+t</w>, l+o, then (lo, w) learned from "lower" -> low est</w>
    assert bpe.apply(["newest low lowest"]) == ["newest low low@@ est"]
