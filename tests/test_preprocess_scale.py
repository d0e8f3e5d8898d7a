"""Preprocessing at scale: BPE on a spread sample, resume from finished chunks, shards + merge, table inputs
(jsonl / parquet / `datasets` folders), the one cache key, the cache under concurrent starts, refusals."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xlmtrain.data import binarize, pipeline
from xlmtrain.data.bpe import learn_bpe, write_codes
from xlmtrain.data.moses import MosesPipeline
from xlmtrain.data.pipeline import PreprocessError, PreprocessSettings, preprocess
from xlmtrain.data.preprocessed import PreprocessedData, ensure_preprocessed

WORDS = {
    "en": "the cat sat on a mat it's don't hello world 3.5 café dog runs fast slow green".split(),
    "fr": "le chat est sur la table l'amour aujourd'hui élève être chien vert rapide".split(),
}


def _lines(lang: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    # a rare word per line makes the vocabulary depend on which lines are learned on
    return [" ".join(rng.choice(WORDS[lang], size=rng.integers(1, 9))) + f" w{lang}{i}x ." for i in range(n)]


def _write_raw(d: Path, n_mono: int = 60, n_para: int = 40) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "en.txt").write_text("\n".join(_lines("en", n_mono, 0)) + "\n")
    (d / "fr.txt").write_text("\n".join(_lines("fr", n_mono, 1)) + "\n")
    (d / "en-fr.en").write_text("\n".join(_lines("en", n_para, 2)) + "\n")
    (d / "en-fr.fr").write_text("\n".join(_lines("fr", n_para, 3)) + "\n")
    return d


def _settings(**kw) -> PreprocessSettings:
    base = dict(bpe_merges=80, valid_lines=3, test_lines=2, workers=1, chunk_lines=9, progress=False)
    return PreprocessSettings(**{**base, **kw})


def _corpora(out: Path) -> dict[str, tuple[list[int], list[int]]]:
    """Every corpus of a build as (flat token ids, offsets), read through PreprocessedData."""
    data = PreprocessedData(out)
    result = {}
    for split in data.manifest["splits"]:
        for lang in data.manifest["monolingual"]:
            c = data.mono(split, lang)
            result[f"{split}.{lang}"] = (np.asarray(c.tokens).tolist(), np.asarray(c.offsets).tolist())
        for pair in data.pairs:
            l1, l2 = pair.split("-")
            for lang, c in zip((l1, l2), data.parallel(split, l1, l2)):
                result[f"{split}.{pair}.{lang}"] = (np.asarray(c.tokens).tolist(), np.asarray(c.offsets).tolist())
    return result


def test_bpe_learned_on_the_spread_sample_only(tmp_path):
    # 2500 rows, ~5% sample: rows r with r % 1000 < k, k = ceil(1000 * sample_bytes / input_bytes)
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = _lines("en", 2500, 7)
    lines[5] += " ψψ"  # a character only in a sampled row ...
    lines[1500] += " жж"  # ... and one only in an unsampled row
    (raw / "en.txt").write_text("\n".join(lines) + "\n")
    size = (raw / "en.txt").stat().st_size
    sample_mb = size * 0.05 / 1e6
    k = int(np.ceil(1000 * sample_mb * 1e6 / size))
    s = _settings(bpe_sample_mb=sample_mb, valid_lines=0, test_lines=0, chunk_lines=700)
    m = preprocess(raw, tmp_path / "out", s)
    pipe = MosesPipeline("en")
    counts = Counter(w for r, line in enumerate(lines) if r % 1000 < k for w in pipe(line))
    write_codes(learn_bpe(counts, s.bpe_merges), tmp_path / "expected_codes")
    assert (tmp_path / "out" / "codes").read_text() == (tmp_path / "expected_codes").read_text()
    # the vocabulary is the sample's: pieces of the sampled row's character, none of the unsampled one's,
    # which becomes <unk> (id 3) in the output
    vocab = (tmp_path / "out" / "vocab.txt").read_text()
    assert "ψ" in vocab and "ж" not in vocab
    data = PreprocessedData(tmp_path / "out")
    assert 3 in data.mono("train", "en")[1500].tolist() and 3 not in data.mono("train", "en")[5].tolist()
    # every row is still in the output (the sample only decides codes and vocabulary)
    assert sum(m["counts"]["en"]["sentences"].values()) == 2500
    # how the work is cut into chunks, and the worker count, change nothing
    m2 = preprocess(raw, tmp_path / "out2", _settings(bpe_sample_mb=sample_mb, valid_lines=0, test_lines=0,
                                                      chunk_lines=333, workers=2))  # fmt: skip
    assert m2["cache_key"] == m["cache_key"]
    for f in m["files"]:
        assert (tmp_path / "out" / f).read_bytes() == (tmp_path / "out2" / f).read_bytes(), f


def test_killed_run_continues_from_finished_chunks(tmp_path, monkeypatch):
    raw = _write_raw(tmp_path / "raw")
    clean = preprocess(raw, tmp_path / "clean", _settings())
    calls: list[int] = []
    real = binarize.binarize_job

    def dies_at_job_4(job, args):
        if job.index == 4:
            raise KeyboardInterrupt  # as a kill in the middle of the build
        calls.append(job.index)
        return real(job, args)

    monkeypatch.setattr(pipeline, "binarize_job", dies_at_job_4)
    with pytest.raises(KeyboardInterrupt):
        preprocess(raw, tmp_path / "out", _settings())
    assert calls == [0, 1, 2, 3] and not (tmp_path / "out" / "manifest.json").exists()

    def counting(job, args):
        calls.append(job.index)
        return real(job, args)

    monkeypatch.setattr(pipeline, "binarize_job", counting)
    calls.clear()
    m = preprocess(raw, tmp_path / "out", _settings())
    assert calls == list(range(4, len(calls) + 4))  # jobs 0-3 were not redone
    assert m["counts"] == clean["counts"] and _corpora(tmp_path / "out") == _corpora(tmp_path / "clean")
    assert not (tmp_path / "out" / ".build").exists()


def test_shards_then_merge_equal_one_process_build(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    s = _settings(bpe_sample_mb=0.002)  # a real sample (the input is ~5 kB)
    single = preprocess(raw, tmp_path / "single", s)
    out = tmp_path / "sharded"
    preprocess(raw, out, s, step="learn")
    preprocess(raw, out, s, shard="1/3")
    with pytest.raises(PreprocessError, match=r"shards \[0, 2\] of 3 are not finished; run shard=0/3"):
        preprocess(raw, out, s, step="merge")
    preprocess(raw, out, s, shard="0/3")
    preprocess(raw, out, s, shard="2/3")
    merged = preprocess(raw, out, s, step="merge")
    assert merged["shards"] == 3 and merged["counts"] == single["counts"]
    assert merged["cache_key"] == single["cache_key"]
    for name in ("codes", "vocab.txt"):
        assert (out / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    assert _corpora(out) == _corpora(tmp_path / "single")
    # the merged corpora point at the shards' token files: no copy of the token data
    assert not list(out.glob("*.tokens")) and len(list((out / "shards").rglob("*.tokens"))) > 0
    first = [PreprocessedData(d).mono("train", "en")[0].tolist() for d in (out, tmp_path / "single")]
    assert first[0] == first[1]
    assert not (out / ".build").exists()


def test_shard_needs_codes_and_vocab_first(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    with pytest.raises(PreprocessError, match="run step=learn first"):
        preprocess(raw, tmp_path / "o", _settings(), shard="0/2")
    with pytest.raises(PreprocessError, match=r"shard='2/2': expected I/N"):
        preprocess(raw, tmp_path / "o", _settings(), shard="2/2")


def test_given_codes_and_vocab_are_used(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    first = tmp_path / "first"
    preprocess(raw, first, _settings())
    other = _write_raw(tmp_path / "raw2", n_mono=30, n_para=20)
    s = _settings(codes=str(first / "codes"), vocab=str(first / "vocab.txt"))
    out = tmp_path / "o"
    preprocess(other, out, s, shard="0/2")  # no learn step needed
    preprocess(other, out, s, shard="1/2")
    preprocess(other, out, s, step="merge")
    assert (out / "vocab.txt").read_bytes() == (first / "vocab.txt").read_bytes()
    assert _corpora(out) == _corpora(preprocess_dir(other, tmp_path / "single", s))


def preprocess_dir(raw: Path, out: Path, s: PreprocessSettings) -> Path:
    preprocess(raw, out, s)
    return out


def _table_dirs(tmp_path: Path, n_mono: int = 30, n_para: int = 20) -> tuple[Path, dict[str, Path]]:
    """The same corpora as raw text and as jsonl, parquet and `datasets` folders."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = _write_raw(tmp_path / "raw", n_mono, n_para)
    mono = {lang: (raw / f"{lang}.txt").read_text().splitlines() for lang in ("en", "fr")}
    pair = {lang: (raw / f"en-fr.{lang}").read_text().splitlines() for lang in ("en", "fr")}
    dirs = {kind: tmp_path / kind for kind in ("jsonl", "parquet", "arrow")}
    for d in dirs.values():
        d.mkdir()
    for lang, rows in mono.items():
        jsonl = "".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(rows))
        (dirs["jsonl"] / f"{lang}.jsonl").write_text(jsonl)
        pq.write_table(pa.table({"text": rows}), dirs["parquet"] / f"{lang}.parquet", row_group_size=7)
        datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(dirs["arrow"] / lang))
    # the pair given as fr-en: columns by language name, sides sorted by the preprocessor
    jsonl = "".join(json.dumps({"fr": f, "en": e}) + "\n" for e, f in zip(pair["en"], pair["fr"]))
    (dirs["jsonl"] / "fr-en.jsonl").write_text(jsonl)
    pq.write_table(pa.table({"en": pair["en"], "fr": pair["fr"]}), dirs["parquet"] / "en-fr.parquet", row_group_size=6)
    datasets.Dataset.from_dict({"en": pair["en"], "fr": pair["fr"]}).save_to_disk(str(dirs["arrow"] / "en-fr"))
    return raw, dirs


def test_jsonl_parquet_and_datasets_inputs_equal_raw_text(tmp_path):
    raw, dirs = _table_dirs(tmp_path)
    expected = _corpora(preprocess_dir(raw, tmp_path / "out-raw", _settings()))
    for kind, d in dirs.items():
        m = preprocess(d, tmp_path / f"out-{kind}", _settings(workers=2 if kind == "parquet" else 1))
        assert m["pairs"] == ["en-fr"] and m["monolingual"] == ["en", "fr"], kind
        assert _corpora(tmp_path / f"out-{kind}") == expected, kind


def test_table_column_names_are_settings(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = _write_raw(tmp_path / "raw", 30, 20)
    d = tmp_path / "t"
    d.mkdir()
    pq.write_table(pa.table({"sentence": (raw / "en.txt").read_text().splitlines()}), d / "en.parquet")
    pair = {f"text_{lang}": (raw / f"en-fr.{lang}").read_text().splitlines() for lang in ("en", "fr")}
    (d / "en-fr.jsonl").write_text("".join(json.dumps(dict(zip(pair, row))) + "\n" for row in zip(*pair.values())))
    with pytest.raises(PreprocessError, match=r"en\.parquet: no column 'text'.*text_column="):
        preprocess(d, tmp_path / "o", _settings())
    m = preprocess(d, tmp_path / "o", _settings(text_column="sentence", pair_column="text_LANG"))
    assert m["counts"]["en"]["lines"] == 30 and m["counts"]["en-fr"]["lines"] == 20


@pytest.mark.parametrize(
    ("line", "message"),
    [('{"text": "ok"', r"en\.jsonl:3: not valid JSON"), ('{"other": "x"}', r"en\.jsonl:3: no column 'text'"),
     ('{"text": null}', r"en\.jsonl:3: column 'text' is null"), ('["x"]', r"en\.jsonl:3: expected a JSON object")],
)  # fmt: skip
def test_bad_jsonl_rows_name_file_and_line(tmp_path, line, message):
    d = tmp_path / "in"
    d.mkdir()
    rows = [json.dumps({"text": f"hello world {i}"}) for i in range(20)]
    rows[2] = line
    (d / "en.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(PreprocessError, match=message):
        preprocess(d, tmp_path / "o", _settings())


def test_null_in_parquet_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "in"
    d.mkdir()
    rows = [f"hello world {i}" for i in range(20)]
    rows[11] = None
    pq.write_table(pa.table({"text": rows}), d / "en.parquet", row_group_size=4)
    with pytest.raises(PreprocessError, match=r"en\.parquet:12: column 'text' is null"):
        preprocess(d, tmp_path / "o", _settings())


def test_one_cache_key_with_format_versions(tmp_path, monkeypatch):
    raw = _write_raw(tmp_path / "raw")
    kw = dict(bpe_merges=60, valid_lines=3, test_lines=2, workers=1, progress=False)
    a = ensure_preprocessed(raw, tmp_path / "cache", **kw)
    assert PreprocessedData(a).manifest["cache_key"].startswith(a.name)
    monkeypatch.setattr(pipeline, "INDEXED_VERSION", pipeline.INDEXED_VERSION + 1)
    b = ensure_preprocessed(raw, tmp_path / "cache", **kw)
    monkeypatch.setattr(pipeline, "MANIFEST_VERSION", pipeline.MANIFEST_VERSION + 1)
    c = ensure_preprocessed(raw, tmp_path / "cache", **kw)
    assert len({a, b, c}) == 3


def _ensure_in_child(raw: str, cache: str, start_at: float, log: str) -> str:
    """A fresh process: count its builds in `log`, wait for the common start, ask for the cache entry."""
    from xlmtrain.data import preprocessed

    real = preprocessed.build

    def logged_build(plan, output, force=False):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # a build long enough for the other process to arrive while it runs
        return real(plan, output, force)

    preprocessed.build = logged_build
    time.sleep(max(0.0, start_at - time.time()))
    out = preprocessed.ensure_preprocessed(raw, cache, bpe_merges=60, valid_lines=3, test_lines=2, workers=1,
                                           progress=False)  # fmt: skip
    return str(out)


def test_concurrent_cold_cache_builds_once(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        start_at = time.time() + 6.0  # both children imported and waiting by then
        args = (str(raw), str(tmp_path / "cache"), start_at, str(log))
        outs = pool.starmap(_ensure_in_child, [args, args])
    assert outs[0] == outs[1]
    assert len(log.read_text().splitlines()) == 1  # one process built, the other waited and reused it
    assert PreprocessedData(outs[0]).manifest["counts"]["en"]["lines"] == 60
    name = Path(outs[0]).name
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [name, f"{name}.lock"]  # no .partial left


def test_corrupt_manifest_is_one_line_naming_the_file(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    out = tmp_path / "o"
    preprocess(raw, out, _settings())
    (out / "manifest.json").write_text('{"format": "xlmtrain-prepro')
    for call in (lambda: PreprocessedData(out), lambda: preprocess(raw, out, _settings())):
        with pytest.raises(PreprocessError, match=rf"{out / 'manifest.json'}: corrupt manifest") as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_onto_input_is_refused(tmp_path, where):
    raw = _write_raw(tmp_path / "raw")
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    out = raw if where == "same" else raw / "prep"
    with pytest.raises(PreprocessError, match="overlaps input"):
        preprocess(raw, out, _settings())
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before


def test_error_hints_work_as_written(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    with pytest.raises(PreprocessError, match=r"data\.preprocess\.valid_lines=N data\.preprocess\.test_lines=N"):
        preprocess(raw, tmp_path / "o", _settings(valid_lines=30, test_lines=30))
    (raw / "fr.txt").write_bytes(b"caf\xe9\n" + (raw / "fr.txt").read_bytes())
    with pytest.raises(PreprocessError, match=r"fr\.txt:1: invalid UTF-8.*on_invalid_utf8=replace.*"
                                              r"data\.preprocess\.on_invalid_utf8=replace"):  # fmt: skip
        preprocess(raw, tmp_path / "o", _settings())
    # the overrides the hints name compose in the training config as written
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [
            "data.preprocess.on_invalid_utf8=replace",
            "data.preprocess.valid_lines=7",
            "data.preprocess.test_lines=7",
            "data.preprocess.text_column=sentence",
        ]
        cfg = compose("xlmtrain", overrides=overrides)
    assert cfg.data.preprocess.on_invalid_utf8 == "replace" and cfg.data.preprocess.valid_lines == 7
    fixed = preprocess(raw, tmp_path / "o", _settings(on_invalid_utf8="replace"))
    assert fixed["counts"]["fr"]["invalid_utf8"] == 1


def test_preprocess_cli_shard_steps(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    out = tmp_path / "cli"
    base = [sys.executable, "-m", "xlmtrain.preprocess", f"input={raw}", f"output={out}", "bpe_merges=40",
            "valid_lines=3", "test_lines=2", "chunk_lines=9", "workers=1", "progress=false"]  # fmt: skip
    for extra in (["step=learn"], ["shard=0/2"], ["shard=1/2"], ["step=merge"]):
        run = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    assert PreprocessedData(out).manifest["shards"] == 2
    bad = subprocess.run([*base[:3], f"input={raw}", f"output={raw}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: output=")
    assert len(bad.stderr.strip().splitlines()) == 1
