"""End-to-end preprocessor on tiny corpora written by the tests: layout, counts, bad input, cache."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from xlmtrain.data.binarize import InvalidUTF8Error
from xlmtrain.data.pipeline import PreprocessError, PreprocessSettings, preprocess
from xlmtrain.data.preprocessed import PreprocessedData, ensure_preprocessed

WORDS = {
    "en": "the cat sat on a mat it's don't hello world 3.5 café".split(),
    "fr": "le chat est sur la table l'amour aujourd'hui élève être".split(),
}


def _lines(lang, n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[lang], size=rng.integers(1, 9))) + " ." for _ in range(n)]


def _settings(**kw):
    base = dict(bpe_merges=60, valid_lines=3, test_lines=2, workers=1, chunk_lines=7, progress=False)
    return PreprocessSettings(**{**base, **kw})


@pytest.fixture
def raw(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    en = _lines("en", 40, 0)
    en[4] = "   "  # dropped, counted
    (d / "en.txt").write_text("\n".join(en) + "\n")
    (d / "fr.txt").write_text("\n".join(_lines("fr", 30, 1)))  # no final newline: still 30 lines
    pe, pf = _lines("en", 25, 2), _lines("fr", 25, 3)
    pf[6] = ""  # the pair is dropped on both sides
    (d / "fr-en.en").write_text("\n".join(pe) + "\n")
    (d / "fr-en.fr").write_text("\n".join(pf) + "\n")
    return d


def test_end_to_end_layout_counts_and_alignment(raw, tmp_path):
    out = tmp_path / "out"
    m = preprocess(raw, out, _settings(workers=2))
    assert m["languages"] == ["en", "fr"] and m["lang2id"] == {"en": 0, "fr": 1} and m["pairs"] == ["en-fr"]
    c = m["counts"]
    assert c["en"]["empty_dropped"] == 1 and c["en-fr"]["empty_dropped"] == 1
    for name, lines in (("en", 40), ("fr", 30), ("en-fr", 25)):
        assert c[name]["lines"] == lines
        assert sum(c[name]["sentences"].values()) + c[name]["empty_dropped"] == lines
    data = PreprocessedData(out)
    tok = data.tokenizer()
    en_fr, fr_en = data.parallel("train", "en", "fr"), data.parallel("train", "fr", "en")
    assert en_fr[0].prefix == fr_en[1].prefix and len(en_fr[0]) == len(en_fr[1]) == c["en-fr"]["sentences"]["train"]
    # the stored ids are the tokenizer's ids of the raw lines, in order (pair line 6 skipped)
    held = set()
    for split in ("valid", "test"):
        held |= {tuple(data.parallel(split, "en", "fr")[0][i]) for i in range(len(data.parallel(split, "en", "fr")[0]))}
    pe = (raw / "fr-en.en").read_text().splitlines()
    expected = [tok.encode(line, "en") for i, line in enumerate(pe) if i != 6]
    stored = [en_fr[0][i].tolist() for i in range(len(en_fr[0]))]
    assert [e for e in expected if tuple(e) not in held] == stored
    train_en = data.mono("train", "en")
    assert train_en.tokens.dtype == np.uint16 and int((np.asarray(train_en.tokens) == 1).sum()) == len(train_en)
    vocab = (out / "vocab.txt").read_text().splitlines()
    counts = [int(v.split()[1]) for v in vocab]
    assert counts == sorted(counts, reverse=True) and len(vocab) + 14 == m["vocab_size"]
    assert (out / "hf_tokenizer" / "merges.txt").read_text() == (out / "codes").read_text()
    assert not (out / ".build").exists()


def test_workers_do_not_change_output_and_cache_hit(raw, tmp_path):
    m1 = preprocess(raw, tmp_path / "a", _settings(workers=1))
    m2 = preprocess(raw, tmp_path / "b", _settings(workers=2, chunk_lines=5))
    for f in m1["files"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    (tmp_path / "a" / "train.en.tokens").write_bytes(b"")  # a cache hit must not rebuild
    assert preprocess(raw, tmp_path / "a", _settings()) == m1
    assert (tmp_path / "a" / "train.en.tokens").read_bytes() == b""
    assert m2["cache_key"] == m1["cache_key"]


def test_other_settings_refused_then_forced(raw, tmp_path):
    preprocess(raw, tmp_path / "o", _settings())
    with pytest.raises(PreprocessError, match="force=true"):
        preprocess(raw, tmp_path / "o", _settings(bpe_merges=30))
    m = preprocess(raw, tmp_path / "o", _settings(bpe_merges=30), force=True)
    assert m["settings"]["bpe_merges"] == 30 and m["n_bpe_merges"] <= 30
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("user data")
    with pytest.raises(PreprocessError, match="not empty"):
        preprocess(raw, tmp_path / "x", _settings())


def test_parallel_length_mismatch_names_both_files(raw, tmp_path):
    (raw / "fr-en.fr").write_text("un\ndeux\n")
    with pytest.raises(PreprocessError, match=r"fr-en\.en has 25 lines.*fr-en\.fr has 2 lines"):
        preprocess(raw, tmp_path / "o", _settings())


@pytest.mark.parametrize("name", ["xx.txt", "en-qq.en", "notes.md"])
def test_unknown_language_or_layout_names_the_file(raw, tmp_path, name):
    (raw / name).write_text("hello\n" * 20)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        preprocess(raw, tmp_path / "o", _settings())


def test_invalid_utf8_modes(raw, tmp_path):
    (raw / "fr-en.fr").write_bytes((raw / "fr-en.fr").read_bytes().replace(b"chat", b"ch\xffat", 1))
    bad_line = next(i for i, line in enumerate((raw / "fr-en.fr").read_bytes().split(b"\n"), 1) if b"\xff" in line)
    with pytest.raises(InvalidUTF8Error, match=rf"fr-en\.fr:{bad_line}: invalid UTF-8"):
        preprocess(raw, tmp_path / "e", _settings())
    rep = preprocess(raw, tmp_path / "r", _settings(on_invalid_utf8="replace"))["counts"]["en-fr"]
    assert rep["invalid_utf8"] == 1 and rep["invalid_utf8_first"].endswith(f"fr-en.fr:{bad_line}")
    skip = preprocess(raw, tmp_path / "s", _settings(on_invalid_utf8="skip"))["counts"]["en-fr"]
    assert skip["invalid_utf8_dropped"] == 1
    assert sum(skip["sentences"].values()) == sum(rep["sentences"].values()) - 1


def test_max_len_truncate_and_drop(raw, tmp_path):
    t = preprocess(raw, tmp_path / "t", _settings(max_len=4))
    assert t["counts"]["en"]["truncated"] > 0
    assert PreprocessedData(tmp_path / "t").mono("train", "en").lengths.max() <= 4
    d = preprocess(raw, tmp_path / "d", _settings(max_len=4, long_lines="drop"))["counts"]
    for name in ("en", "en-fr"):
        assert d[name]["too_long_dropped"] > 0
        assert (
            sum(d[name]["sentences"].values()) + d[name]["too_long_dropped"] + d[name]["empty_dropped"]
            == d[name]["lines"]
        )


def test_ensure_preprocessed_reuses_cache(raw, tmp_path):
    kw = dict(bpe_merges=60, valid_lines=3, test_lines=2, workers=1, progress=False)
    a = ensure_preprocessed(raw, tmp_path / "cache", **kw)
    assert ensure_preprocessed(raw, tmp_path / "cache", **kw) == a
    assert ensure_preprocessed(raw, tmp_path / "cache", **{**kw, "bpe_merges": 20}) != a


def test_cli_runs_and_rejects_typos(raw, tmp_path):
    cmd = [sys.executable, "-m", "xlmtrain.preprocess", f"input={raw}", f"output={tmp_path / 'cli'}",
           "bpe_merges=40", "valid_lines=3", "test_lines=2", "progress=false"]  # fmt: skip
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["settings"]["bpe_merges"] == 40
    bad = subprocess.run([*cmd[:4], "bpe_merge=40"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "bpe_merge" in bad.stderr
