"""The preprocessor: a folder of corpora -> BPE codes, vocabulary, memory-mapped corpora, manifest, tokenizer.

Inputs (`inputs.py`): raw text (`<lang>.txt`, `<l1>-<l2>.<l1>` + `.<l2>`), JSON lines, Parquet and `datasets`
folders. The steps, each a function below:
1. `plan_build`: discover the sources and scan each once (row counts, chunk start positions, content hashes),
   draw the held-out rows, cut the work into jobs of `chunk_lines` rows, compute the build key.
2. `learn_codes_and_vocab`: tokenise the BPE sample in `workers` processes (the first rows of every block of
   1000 rows: about `bpe_sample_mb` MB of input spread over all of it; everything when the input is smaller),
   learn BPE codes on its train words, and build the vocabulary from the BPE pieces of those words (or take
   the given `codes` / `vocab` files).
3. `binarize_jobs`: in `workers` processes, tokenise (sample rows: read back from step 2), BPE and id-map every
   job; a job's stats file, written last and atomically, marks it done, so a killed run continues from its
   finished jobs.
4. `write_corpora`: concatenate the job arrays into `{split}.{lang}` / `{split}.{l1}-{l2}.{lang}` (l1 < l2).
5. `write_manifest`: `hf_tokenizer/` and, last, `manifest.json`.
Work happens in `OUTPUT/.build/` (tagged with the build key, removed at the end). Memory stays bounded: every
step streams its input; what is held is one job's rows, the sample's word counts and the vocabulary.

Sharded (`step=learn`, then `shard=I/N` for every I, possibly on other machines sharing OUTPUT, then
`step=merge`): step 2 runs once; shard I runs steps 3-4 for the I-th of N contiguous ranges of jobs into
`OUTPUT/shards/I-of-N/`; the merge writes, per corpus, a header listing the shards' token files and one offsets
file (no copy of the token data), then the manifest. The ids equal those of a one-process build.

Held-out rows: for each source, `valid_lines + test_lines` distinct row numbers are drawn with
`numpy.random.default_rng([split_seed, crc32(source name)])`; the first `valid_lines` draws are valid, the rest
test; everything else is train. The choice depends only on the row count, the seed and the name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from xlmtrain.data.binarize import (
    SAMPLE_BLOCK,
    SPLITS,
    BinarizeArgs,
    BinarizeStats,
    Job,
    TokenizeStats,
    binarize_job,
    read_stats,
    sample_job,
    stats_dict,
    stats_from_dict,
)
from xlmtrain.data.bpe import BPE, learn_bpe, write_codes
from xlmtrain.data.dictionary import Dictionary, VocabError
from xlmtrain.data.indexed import VERSION as INDEXED_VERSION
from xlmtrain.data.indexed import IndexedCorpus, IndexedCorpusWriter, write_parts_header
from xlmtrain.data.inputs import Columns, PreprocessError, Scan, Source, discover, scan
from xlmtrain.data.tokenizer import XLMTokenizer

MANIFEST_VERSION = 2
STEPS = ("all", "learn", "merge")
_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass
class PreprocessSettings:
    """Every knob of the preprocessor. Fields marked (output) change the result and are part of the cache key."""

    bpe_merges: int = 30000
    """(output) Number of BPE merges to learn."""
    bpe_sample_mb: float = 64.0
    """(output) MB of input (file bytes) the codes and vocabulary are learned on: the first rows of every block
    of 1000 rows, spread over the whole input (0: learn on everything). Inputs up to this size are learned on
    entirely; vocabulary counts (and `min_count`) are counts in the sample."""
    codes: str | None = None
    """(output, by content) fastBPE codes to use instead of learning them."""
    vocab: str | None = None
    """(output, by content) XLM vocabulary (`word count` lines) to use with `codes` instead of building one."""
    lowercase_and_strip_accents: bool = False
    """(output) XLM-15 style lowercasing + accent stripping after tokenisation."""
    min_count: int = 0
    """(output) Keep only vocabulary words seen at least this many times in the sample (0: keep all)."""
    max_vocab: int = 0
    """(output) Keep only ids below this, specials included (0: no limit); rarer words become `<unk>`."""
    valid_lines: int = 5000
    """(output) Held-out validation lines per input file/pair."""
    test_lines: int = 5000
    """(output) Held-out test lines per input file/pair."""
    split_seed: int = 0
    """(output) Seed of the held-out line selection."""
    max_len: int = 0
    """(output) Sentences longer than this many BPE tokens are truncated or dropped (0: keep all)."""
    long_lines: str = "truncate"
    """(output) `truncate` or `drop` (a pair is dropped as a whole) sentences over `max_len`."""
    on_invalid_utf8: str = "error"
    """(output) `error` (name file:line), `replace` (U+FFFD) or `skip` (drop the line/pair), counted."""
    text_column: str = "text"
    """(output) Column of monolingual JSON lines / Parquet / `datasets` inputs."""
    pair_column: str = "LANG"
    """(output) Columns of parallel table inputs, `LANG` replaced by each language code."""
    workers: int = 2
    """Processes for tokenisation and binarisation (1: in-process)."""
    chunk_lines: int = 20000
    """Lines per job handed to a worker."""
    progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        checks = {
            "bpe_merges": self.bpe_merges >= 0,
            "bpe_sample_mb": self.bpe_sample_mb >= 0,
            "vocab": self.vocab is None or self.codes is not None,
            "min_count": self.min_count >= 0,
            "max_vocab": self.max_vocab == 0 or self.max_vocab >= 15,
            "valid_lines": self.valid_lines >= 0,
            "test_lines": self.test_lines >= 0,
            "max_len": self.max_len >= 0,
            "long_lines": self.long_lines in ("truncate", "drop"),
            "on_invalid_utf8": self.on_invalid_utf8 in ("error", "replace", "skip"),
            "workers": self.workers >= 1,
            "chunk_lines": self.chunk_lines >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            hint = " (a vocab needs the codes it was built with: give codes= too)" if bad[0] == "vocab" else ""
            raise PreprocessError(f"invalid setting {bad[0]}={getattr(self, bad[0])!r}{hint}")

    def output_settings(self) -> dict[str, Any]:
        """The settings that change the output (the cache key's part; given files by content hash)."""
        skip = {"workers", "chunk_lines", "progress"}
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        for name in ("codes", "vocab"):
            if out[name] is not None:
                out[name] = _file_hash(Path(out[name]), name)
        return out


def _file_hash(path: Path, setting: str) -> str:
    if not path.is_file():
        raise PreprocessError(f"{setting}={path}: no such file")
    return hashlib.sha256(path.read_bytes()).hexdigest()


JobStats = tuple[TokenizeStats, BinarizeStats]


@dataclass
class BuildPlan:
    """What a build reads and does: sources, their scans, the jobs (in source order), the build key."""

    input_dir: Path
    settings: PreprocessSettings
    sources: list[Source]
    scans: dict[str, Scan]
    jobs: list[Job]
    key: str

    def jobs_of(self, source: Source, jobs: Iterable[Job] | None = None) -> list[Job]:
        return [j for j in (self.jobs if jobs is None else jobs) if j.source.name == source.name]


def build_key(settings: PreprocessSettings, hashes: dict[str, str]) -> str:
    """THE key of a build: output settings, input content hashes, manifest and corpus format versions."""
    blob = json.dumps(
        {
            "settings": settings.output_settings(),
            "inputs": hashes,
            "manifest": MANIFEST_VERSION,
            "indexed": INDEXED_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def plan_build(input_dir: str | Path, settings: PreprocessSettings) -> BuildPlan:
    """Step 1: scan every input once and cut the work into jobs. Raises PreprocessError naming
    the file (layout, language code, lengths of a pair, columns, too few rows for the held-out splits)."""
    s, input_dir = settings, Path(input_dir)
    sources = discover(input_dir, Columns(s.text_column, s.pair_column))
    scans = {src.name: scan(src, s.chunk_lines) for src in sources}
    hashes = {name: h for sc in scans.values() for name, h in sc.hashes.items()}
    per_block = _sample_per_block(s.bpe_sample_mb, sum(_size(p) for src in sources for p in src.paths))
    jobs: list[Job] = []
    for src in sources:
        sc = scans[src.name]
        valid, test = _held_out(src, sc.n_lines, s)
        for c in range(len(sc.starts[0])):
            lo, hi = c * s.chunk_lines, min((c + 1) * s.chunk_lines, sc.n_lines)
            if hi > lo:
                jobs.append(
                    Job(
                        len(jobs),
                        src,
                        tuple(st[c] for st in sc.starts),
                        lo,
                        hi - lo,
                        _in_range(valid, lo, hi),
                        _in_range(test, lo, hi),
                        per_block,
                    )
                )
    return BuildPlan(input_dir, s, sources, scans, jobs, build_key(s, hashes))


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _sample_per_block(sample_mb: float, input_bytes: int) -> int:
    """Rows of every block of SAMPLE_BLOCK rows that are in the BPE sample."""
    if sample_mb <= 0 or input_bytes <= sample_mb * 1e6:
        return SAMPLE_BLOCK
    return max(1, math.ceil(SAMPLE_BLOCK * sample_mb * 1e6 / input_bytes))


def _held_out(source: Source, n_lines: int, s: PreprocessSettings) -> tuple[np.ndarray, np.ndarray]:
    n_held = s.valid_lines + s.test_lines
    if n_held and n_lines <= n_held:
        raise PreprocessError(
            f"{source.paths[0]}: {n_lines} lines, but valid_lines + test_lines = {n_held} must leave train lines; "
            f"set smaller held-out sizes (preprocess CLI: valid_lines=N test_lines=N; training CLI: "
            f"data.preprocess.valid_lines=N data.preprocess.test_lines=N)"
        )
    rng = np.random.default_rng([s.split_seed, zlib.crc32(source.name.encode())])
    picked = rng.choice(n_lines, size=n_held, replace=False) if n_held else np.zeros(0, dtype=np.int64)
    return np.sort(picked[: s.valid_lines]), np.sort(picked[s.valid_lines :])


def _in_range(sorted_ids: np.ndarray, lo: int, hi: int) -> frozenset[int]:
    return frozenset(int(i) for i in sorted_ids[np.searchsorted(sorted_ids, lo) : np.searchsorted(sorted_ids, hi)])


@contextlib.contextmanager
def _pool(workers: int, n_jobs: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """One process pool for both worker passes (a spawned worker pays ~0.5 s CPU of imports); None means
    run in-process."""
    if workers == 1 or n_jobs <= 1:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, n_jobs)) as pool:
        yield pool


def _each(fn: Callable, jobs: list, pool: multiprocessing.pool.Pool | None, desc: str, progress: bool) -> Iterator:
    """`fn(job)` for every job, in `pool` (or in-process), yielded in job order as they finish."""
    bar = tqdm(total=len(jobs), desc=desc, unit="chunk", disable=not progress)
    for result in (map if pool is None else pool.imap)(fn, jobs):
        bar.update()
        yield result
    bar.close()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created), held for the block; others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Sample:
    def __init__(self, work: Path, s: PreprocessSettings) -> None:
        self.args = (str(work), s.lowercase_and_strip_accents, s.on_invalid_utf8)

    def __call__(self, job: Job) -> Counter[str]:
        return sample_job(job, *self.args)


class _Binarize:
    def __init__(self, args: BinarizeArgs) -> None:
        self.args = args

    def __call__(self, job: Job) -> tuple[TokenizeStats, BinarizeStats]:
        return binarize_job(job, self.args)


def learn_codes_and_vocab(plan: BuildPlan, work: Path, pool: multiprocessing.pool.Pool | None) -> Dictionary:
    """Step 2: `work/codes` and `work/vocab.txt` (each written atomically; kept when both are there)."""
    s = plan.settings
    codes, vocab = work / "codes", work / "vocab.txt"
    if codes.is_file() and vocab.is_file():
        return Dictionary.read_vocab(vocab)
    if s.codes is not None:
        _copy_atomic(Path(s.codes), codes)
    if s.vocab is not None:
        try:
            dico = Dictionary.read_vocab(s.vocab)
        except VocabError as err:
            raise PreprocessError(f"vocab={s.vocab}: {err}") from None
        _copy_atomic(Path(s.vocab), vocab)
        return dico
    word_counts: Counter[str] = Counter()
    for counts in _each(_Sample(work, s), plan.jobs, pool, "sample", s.progress):
        word_counts.update(counts)
    if s.codes is None:
        tmp = work / f"codes.tmp{os.getpid()}"
        write_codes(learn_bpe(word_counts, s.bpe_merges), tmp)
        os.replace(tmp, codes)
    dico = _build_vocab(word_counts, BPE(codes), s)
    tmp = work / f"vocab.txt.tmp{os.getpid()}"
    dico.write_vocab(tmp)
    os.replace(tmp, vocab)
    return dico


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f"{dst.name}.tmp{os.getpid()}")  # shards on several machines may copy at once
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def binarize_jobs(
    plan: BuildPlan, jobs: list[Job], work: Path, dico: Dictionary, pool: multiprocessing.pool.Pool | None
) -> dict[int, JobStats]:
    """Step 3: every job's arrays under `work/jobs/`; jobs finished by an earlier run (their marker file is
    there) are not redone."""
    s = plan.settings
    args = BinarizeArgs(
        str(work),
        str(work / "codes"),
        str(work / "vocab.txt"),
        dico.dtype_name,
        s.max_len,
        s.long_lines,
        s.lowercase_and_strip_accents,
        s.on_invalid_utf8,
    )
    stats = {j.index: read_stats(j.done_path(work)) for j in jobs if j.done_path(work).is_file()}
    pending = [j for j in jobs if j.index not in stats]
    stats.update((j.index, r) for j, r in zip(pending, _each(_Binarize(args), pending, pool, "binarize", s.progress)))
    return stats


def write_corpora(plan: BuildPlan, jobs: list[Job], work: Path, dtype: str, out: Path) -> list[str]:
    """Step 4: join the jobs' arrays into the corpora under `out` (the job files stay until the build is done:
    a re-run after a kill here skips the finished jobs and needs them);
    returns the file names written."""
    files = []
    for src in plan.sources:
        for split in SPLITS:
            for side in range(len(src.langs)):
                name = src.corpus_name(split, side)
                with IndexedCorpusWriter(out / name, dtype) as writer:
                    for job in plan.jobs_of(src, jobs):
                        prefix = job.ids_prefix(work, split, side)
                        writer.add_chunk(
                            np.fromfile(f"{prefix}.tokens", dtype=dtype),
                            np.fromfile(f"{prefix}.lengths", dtype=np.int64),
                        )
                files += [f"{name}.json", f"{name}.tokens", f"{name}.offsets"]
    return files


def write_manifest(
    plan: BuildPlan,
    out: Path,
    dico: Dictionary,
    files: list[str],
    counts: dict[str, dict],
    extra: dict[str, Any] | None = None,
) -> dict:
    """Step 5: `codes`, `vocab.txt` (from `out/.build` unless there), `hf_tokenizer/` and, last,
    `manifest.json`."""
    s, work = plan.settings, out / ".build"
    for name in ("codes", "vocab.txt"):
        if not (out / name).is_file():
            _copy_atomic(work / name, out / name)
    languages = sorted({lang for src in plan.sources for lang in src.langs})
    lang2id = {lang: i for i, lang in enumerate(languages)}
    XLMTokenizer(dico, out / "codes", lang2id, s.lowercase_and_strip_accents).save_pretrained(out / "hf_tokenizer")
    with open(out / "codes", encoding="utf-8") as f:
        n_merges = sum(1 for _ in f)
    manifest = {
        "format": "xlmtrain-preprocessed",
        "version": MANIFEST_VERSION,
        "cache_key": plan.key,
        "languages": languages,
        "lang2id": lang2id,
        "monolingual": [src.name for src in plan.sources if len(src.langs) == 1],
        "pairs": [src.name for src in plan.sources if len(src.langs) == 2],
        "splits": list(SPLITS),
        "vocab_size": len(dico),
        "dtype": dico.dtype_name,
        "n_bpe_merges": n_merges,
        "counts": counts,
        "settings": s.output_settings(),
        "inputs": {name: h for sc in plan.scans.values() for name, h in sc.hashes.items()},
        **(extra or {}),
        "files": ["codes", "vocab.txt", *files],
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, out / "manifest.json")
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def read_manifest(path: Path) -> dict:
    """`manifest.json` as a dict; PreprocessError naming the file when it is not valid JSON."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        hint = "rebuild it (python -m xlmtrain.preprocess ... force=true, or delete the folder if it is a cache entry)"
        raise PreprocessError(f"{path}: corrupt manifest, not valid JSON ({err}); {hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "xlmtrain-preprocessed":
        raise PreprocessError(f"{path}: not an xlmtrain preprocess manifest")
    return manifest


def ensure_not_input(input_dir: Path, output: Path) -> None:
    a, b = input_dir.resolve(), output.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise PreprocessError(
            f"output={output} overlaps input={input_dir}: the preprocessor never writes into or "
            "over its input; choose another output folder"
        )


def _open_work(output: Path, key: str, may_reset: bool) -> Path:
    """`output/.build`, tagged with `key`: kept when it holds work of this build (a re-run continues it);
    one of another build is removed when `may_reset`, else refused."""
    work = output / ".build"
    tag = work / "key"
    if tag.is_file() and tag.read_text().strip() != key:
        if not may_reset:
            raise PreprocessError(
                f"{work} holds the work of another build (other inputs or settings); run step=learn again first"
            )
        shutil.rmtree(work)
    (work / "jobs").mkdir(parents=True, exist_ok=True)
    if not tag.is_file():
        tmp = work / f"key.tmp{os.getpid()}"
        tmp.write_text(key + "\n")
        os.replace(tmp, tag)
    return work


def _prepare_output(output: Path, key: str, force: bool) -> dict | None:
    """The existing manifest when `output` already holds this exact build; otherwise make `output` ready (empty
    but for the work of this build) or raise PreprocessError."""
    manifest_path = output / "manifest.json"
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path)
        if manifest.get("cache_key") == key:
            return manifest
        if not force:
            raise PreprocessError(
                f"{output} holds a preprocess build with other inputs or settings ({manifest_path}); "
                "use another output dir, or force=true to rebuild it"
            )
        for name in [*manifest.get("files", []), "manifest.json"]:
            (output / name).unlink(missing_ok=True)
        for name in ("hf_tokenizer", "shards", ".build"):
            shutil.rmtree(output / name, ignore_errors=True)
    if output.exists() and any(p.name not in (".build", "shards") for p in output.iterdir()):
        raise PreprocessError(f"{output} is not empty and is not a preprocess output (no manifest.json)")
    output.mkdir(parents=True, exist_ok=True)
    return None


def _lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def build(plan: BuildPlan, output: Path, force: bool = False) -> dict:
    """Steps 2-5 in this process (and its worker pool) into `output`; returns the manifest. The caller holds
    the output's lock."""
    s = plan.settings
    if (manifest := _prepare_output(output, plan.key, force)) is not None:
        return manifest
    work = _open_work(output, plan.key, may_reset=True)
    with _pool(s.workers, len(plan.jobs)) as pool:
        dico = learn_codes_and_vocab(plan, work, pool)
        stats = binarize_jobs(plan, plan.jobs, work, dico, pool)
    files = write_corpora(plan, plan.jobs, work, dico.dtype_name, output)
    counts = {
        src.name: _source_counts(plan.scans[src.name].n_lines, [stats[j.index] for j in plan.jobs_of(src)])
        for src in plan.sources
    }
    return write_manifest(plan, output, dico, files, counts)


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N) with 0 <= I < N; PreprocessError naming the setting otherwise."""
    m = _SHARD.match(str(text).strip())
    if not m or not int(m[1]) < int(m[2]):
        raise PreprocessError(f"shard={text!r}: expected I/N with 0 <= I < N (e.g. shard=0/4)")
    return int(m[1]), int(m[2])


def shard_jobs(jobs: list[Job], index: int, n_shards: int) -> list[Job]:
    """The index-th of `n_shards` contiguous, near-equal ranges of `jobs`."""
    return jobs[index * len(jobs) // n_shards : (index + 1) * len(jobs) // n_shards]


def _shard_dir(output: Path, index: int, n_shards: int) -> Path:
    return output / "shards" / f"{index:05d}-of-{n_shards:05d}"


def learn_step(plan: BuildPlan, output: Path, force: bool = False) -> None:
    """`step=learn`: codes and vocabulary into `output/.build/` for the shards (the caller holds the lock)."""
    if _prepare_output(output, plan.key, force) is not None:
        return
    work = _open_work(output, plan.key, may_reset=True)
    with _pool(plan.settings.workers, len(plan.jobs)) as pool:
        learn_codes_and_vocab(plan, work, pool)


def build_shard(plan: BuildPlan, output: Path, index: int, n_shards: int) -> Path:
    """`shard=I/N`: steps 3-4 for shard I into `output/shards/I-of-N/` (skipped when done). Needs the codes and
    vocabulary of `step=learn` in `output/.build/` (or given as `codes=` + `vocab=`)."""
    s = plan.settings
    done = _shard_dir(output, index, n_shards) / "shard.json"
    if done.is_file() and json.loads(done.read_text()).get("cache_key") == plan.key:
        return done.parent
    work = _open_work(output, plan.key, may_reset=False)
    if not ((work / "codes").is_file() and (work / "vocab.txt").is_file()):
        if s.codes is None or s.vocab is None:
            raise PreprocessError(
                f"{work}: no codes and vocab.txt; run step=learn first (same input, output and "
                "settings), or give codes= and vocab="
            )
        learn_codes_and_vocab(plan, work, None)
    dico = Dictionary.read_vocab(work / "vocab.txt")
    jobs = shard_jobs(plan.jobs, index, n_shards)
    shard = done.parent
    shard.mkdir(parents=True, exist_ok=True)
    with _pool(s.workers, len(jobs)) as pool:
        stats = binarize_jobs(plan, jobs, work, dico, pool)
    files = write_corpora(plan, jobs, work, dico.dtype_name, shard)
    record = {
        "cache_key": plan.key,
        "index": index,
        "n_shards": n_shards,
        "files": files,
        "stats": {str(i): [vars(t), stats_dict(b)] for i, (t, b) in stats.items()},
    }
    tmp = shard / f"shard.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, done)
    for job in jobs:  # the shard's corpora hold them now
        for path in [*(work / "jobs").glob(f"job{job.index:06d}.*"), job.words_path(work)]:
            path.unlink(missing_ok=True)
    return shard


def merge_shards(plan: BuildPlan, output: Path) -> dict:
    """`step=merge`: one header + offsets file per corpus over the shards' token files, then the manifest
    (the caller holds the lock). Raises PreprocessError naming the missing or foreign shards."""
    manifest_path = output / "manifest.json"
    if manifest_path.is_file() and read_manifest(manifest_path).get("cache_key") == plan.key:
        return read_manifest(manifest_path)
    records = []
    for path in sorted((output / "shards").glob("*-of-*/shard.json")):
        record = json.loads(path.read_text())
        if record.get("cache_key") == plan.key:
            records.append(record)
    sizes = {r["n_shards"] for r in records}
    if len(sizes) != 1:
        raise PreprocessError(
            f"{output / 'shards'}: no complete set of shards of this build (found shard counts "
            f"{sorted(sizes)}); run shard=I/N for every I first"
        )
    n_shards = sizes.pop()
    missing = sorted(set(range(n_shards)) - {r["index"] for r in records})
    if missing:
        raise PreprocessError(
            f"{output / 'shards'}: shards {missing} of {n_shards} are not finished; run "
            f"shard={missing[0]}/{n_shards} first"
        )
    records.sort(key=lambda r: r["index"])
    dico = Dictionary.read_vocab(output / ".build" / "vocab.txt")
    files = []
    for src in plan.sources:
        for split in SPLITS:
            for side in range(len(src.langs)):
                name = src.corpus_name(split, side)
                parts = [IndexedCorpus(_shard_dir(output, r["index"], n_shards) / name) for r in records]
                write_parts_header(output / name, parts)
                files += [f"{name}.json", f"{name}.offsets"]
    stats = {int(i): (TokenizeStats(**t), stats_from_dict(b)) for r in records for i, (t, b) in r["stats"].items()}
    counts = {
        src.name: _source_counts(plan.scans[src.name].n_lines, [stats[j.index] for j in plan.jobs_of(src)])
        for src in plan.sources
    }
    return write_manifest(plan, output, dico, files, counts, {"shards": n_shards})


def preprocess(
    input_dir: str | Path,
    output_dir: str | Path,
    settings: PreprocessSettings | None = None,
    force: bool = False,
    step: str = "all",
    shard: str | None = None,
) -> dict:
    """Run the preprocessor (or one step of a sharded build); returns the manifest (a cache hit returns the
    existing one at once; `step=learn` and `shard=I/N` return `{"step": ..., "output": ...}`).

    Raises:
        PreprocessError: unknown file layout or language code, parallel files of different lengths (both files
            and counts named), too few lines for the held-out splits, an output that overlaps the input, an
            output dir built differently (unless `force`), a merge before every shard is done.
            Also: unreadable table inputs, bad JSON, missing columns, nulls (file and row named).
            InvalidUTF8Error (a PreprocessError): invalid UTF-8 with `on_invalid_utf8=error` (file:line named).
    """
    s = settings or PreprocessSettings()
    input_dir, output = Path(input_dir), Path(output_dir)
    if step not in STEPS:
        raise PreprocessError(f"step={step!r}: expected one of {', '.join(STEPS)} (or shard=I/N)")
    ensure_not_input(input_dir, output)
    plan = plan_build(input_dir, s)
    if shard is not None:
        index, n_shards = parse_shard(shard)
        return {"step": "shard", "output": str(build_shard(plan, output, index, n_shards))}
    output.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_path(output)):
        if step == "learn":
            learn_step(plan, output, force)
            return {"step": "learn", "output": str(output / ".build")}
        if step == "merge":
            return merge_shards(plan, output)
        return build(plan, output, force)


def _build_vocab(word_counts: Counter[str], bpe: BPE, s: PreprocessSettings) -> Dictionary:
    """Counts of the BPE pieces of the train words, sorted; then `min_count` and `max_vocab`."""
    words = list(word_counts)
    piece_counts: Counter[str] = Counter()
    for start in range(0, len(words), 100_000):
        batch = words[start : start + 100_000]
        for word, pieces in zip(batch, bpe.apply(batch)):
            n = word_counts[word]
            for piece in pieces.split(" "):
                piece_counts[piece] += n
    dico = Dictionary.from_counts(piece_counts)
    if s.min_count:
        dico = dico.min_count(s.min_count)
    if s.max_vocab:
        dico = dico.max_vocab(s.max_vocab)
    return dico


def _source_counts(n_lines: int, stats: Iterable[tuple[TokenizeStats, BinarizeStats]]) -> dict:
    """Every line of an input accounted for: lines = sum(sentences) + empty_dropped + too_long_dropped +
    invalid_utf8_dropped."""
    c: dict[str, Any] = {
        "lines": n_lines,
        "empty_dropped": 0,
        "invalid_utf8": 0,
        "invalid_utf8_dropped": 0,
        "invalid_utf8_first": None,
        "too_long_dropped": 0,
        "truncated": 0,
        "special_tokens_dropped": 0,
        "unk_tokens": 0,
        "sentences": dict.fromkeys(SPLITS, 0),
        "tokens": dict.fromkeys(SPLITS, 0),
    }
    for t, b in stats:
        c["empty_dropped"] += t.empty_dropped + b.empty_dropped
        c["invalid_utf8"] += t.invalid_utf8
        c["invalid_utf8_dropped"] += t.invalid_utf8_dropped
        c["invalid_utf8_first"] = c["invalid_utf8_first"] or t.invalid_utf8_first
        c["too_long_dropped"] += b.too_long_dropped
        c["truncated"] += b.truncated
        c["special_tokens_dropped"] += b.special_dropped
        c["unk_tokens"] += b.unk_tokens
        for split in SPLITS:
            c["sentences"][split] += b.sentences[split]
            c["tokens"][split] += b.tokens[split]
    return c
