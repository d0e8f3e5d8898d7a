"""The preprocessor: a folder of raw text -> BPE codes, vocabulary, memory-mapped corpora, manifest, tokenizer.

Input layout: monolingual `DIR/<lang>.txt`; parallel line-aligned `DIR/<l1>-<l2>.<l1>` + `DIR/<l1>-<l2>.<l2>`.
Steps: (1) scan every file once (line counts, chunk offsets, content hashes); (2) in `workers` processes,
Moses-tokenise each chunk to a words file and count train words; (3) learn BPE codes jointly over all train
words; (4) build the vocabulary from the BPE'd train word counts; (5) in `workers` processes, BPE + id-map each
chunk; (6) concatenate chunks into `{split}.{lang}` / `{split}.{l1}-{l2}.{lang}` corpora (l1 < l2); (7) write
`hf_tokenizer/` and, last, `manifest.json`. Work happens in `OUTPUT/.build/`, removed at the end.

Held-out lines: for each input (file or pair), `valid_lines + test_lines` distinct line numbers are drawn with
`numpy.random.default_rng([split_seed, crc32(input name)])`; the first `valid_lines` draws are valid, the rest
test; everything else is train. The choice depends only on the line count, the seed and the name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import multiprocessing.pool
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from tqdm import tqdm

from xlmtrain.data import binarize
from xlmtrain.data.binarize import SPLITS, Job
from xlmtrain.data.bpe import BPE, learn_bpe, write_codes
from xlmtrain.data.dictionary import Dictionary
from xlmtrain.data.indexed import VERSION as INDEXED_VERSION
from xlmtrain.data.indexed import IndexedCorpusWriter
from xlmtrain.data.languages import check_language
from xlmtrain.data.tokenizer import XLMTokenizer

MANIFEST_VERSION = 1
_MONO = re.compile(r"^([a-z][a-z_]*)\.txt$")
_PARA = re.compile(r"^([a-z][a-z_]*)-([a-z][a-z_]*)\.([a-z][a-z_]*)$")


class PreprocessError(ValueError):
    """Bad input or an output directory that cannot be (re)used."""


@dataclass
class PreprocessSettings:
    """Every knob of the preprocessor. Fields marked (output) change the result and are part of the cache key."""

    bpe_merges: int = 30000
    """(output) Number of BPE merges to learn."""
    lowercase_and_strip_accents: bool = False
    """(output) XLM-15 style lowercasing + accent stripping after tokenisation."""
    min_count: int = 0
    """(output) Keep only vocabulary words seen at least this many times in train (0: keep all)."""
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
    workers: int = 2
    """Processes for tokenisation and binarisation (1: in-process)."""
    chunk_lines: int = 20000
    """Lines per job handed to a worker."""
    progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        checks = {
            "bpe_merges": self.bpe_merges >= 0,
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
            raise PreprocessError(f"invalid setting {bad[0]}={getattr(self, bad[0])!r}")

    def output_settings(self) -> dict[str, Any]:
        """The settings that change the output (the cache key's part)."""
        skip = {"workers", "chunk_lines", "progress"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass
class Source:
    """One monolingual file (`langs=[lang]`) or one parallel pair (`langs=[l1, l2]`, l1 < l2)."""

    name: str  # "en" or "en-fr"
    langs: list[str]
    paths: list[Path]

    def corpus_name(self, split: str, side: int) -> str:
        if len(self.langs) == 1:
            return f"{split}.{self.name}"
        return f"{split}.{self.name}.{self.langs[side]}"


def discover(input_dir: Path) -> list[Source]:
    """The inputs of `input_dir` in name order. Raises PreprocessError naming the file for an unknown layout,
    an unknown language code, a parallel file without its other side, or a pair given in both orders."""
    if not input_dir.is_dir():
        raise PreprocessError(f"input={input_dir} is not a directory")
    mono: list[Source] = []
    sides: dict[tuple[str, str], dict[str, Path]] = {}
    for path in sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        if m := _MONO.match(path.name):
            check_language(m[1], str(path))
            mono.append(Source(m[1], [m[1]], [path]))
        elif m := _PARA.match(path.name):
            l1, l2, lang = m[1], m[2], m[3]
            for code in (l1, l2):
                check_language(code, str(path))
            if lang not in (l1, l2) or l1 == l2:
                raise PreprocessError(f"{path}: a parallel file must be named <l1>-<l2>.<l1> or <l1>-<l2>.<l2>")
            sides.setdefault((l1, l2), {})[lang] = path
        else:
            raise PreprocessError(
                f"{path}: not an input file (expected <lang>.txt or <l1>-<l2>.<l1> / <l1>-<l2>.<l2>)"
            )
    para: dict[str, Source] = {}
    for (l1, l2), files in sides.items():
        for lang in (l1, l2):
            if lang not in files:
                other = next(iter(files.values()))
                raise PreprocessError(f"{other}: missing the other side {input_dir / f'{l1}-{l2}.{lang}'}")
        a, b = sorted((l1, l2))
        name = f"{a}-{b}"
        if name in para:
            raise PreprocessError(f"{files[l1]}: pair {a}-{b} is given twice (as {l1}-{l2} and {l2}-{l1})")
        para[name] = Source(name, [a, b], [files[a], files[b]])
    sources = mono + [para[k] for k in sorted(para)]
    if not sources:
        raise PreprocessError(f"input={input_dir}: no <lang>.txt or <l1>-<l2>.<lang> files")
    return sources


def scan_file(path: Path, chunk_lines: int) -> tuple[int, list[int], str]:
    """Line count (a last line without newline counts), byte offset of every `chunk_lines`-th line, xxh3 hash."""
    offsets, n, pos = [0], 0, 0
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for line in f:
            hasher.update(line)
            n += 1
            pos += len(line)
            if n % chunk_lines == 0:
                offsets.append(pos)
    return n, offsets, hasher.hexdigest()


def _held_out(source: Source, n_lines: int, s: PreprocessSettings) -> tuple[np.ndarray, np.ndarray]:
    n_held = s.valid_lines + s.test_lines
    if n_held and n_lines <= n_held:
        raise PreprocessError(
            f"{source.paths[0]}: {n_lines} lines, but valid_lines + test_lines = {n_held} must leave train lines"
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
    if workers == 1 or n_jobs == 1:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, n_jobs)) as pool:
        yield pool


def _run(fn: Callable, jobs: list, pool: multiprocessing.pool.Pool | None, desc: str, progress: bool) -> list:
    """`[fn(job) for job in jobs]`, in `pool` (or in-process), in job order, with a progress bar."""
    bar = tqdm(total=len(jobs), desc=desc, unit="chunk", disable=not progress)
    results = []
    for result in (map if pool is None else pool.imap)(fn, jobs):
        results.append(result)
        bar.update()
    bar.close()
    return results


class _Tokenize:
    def __init__(self, s: PreprocessSettings) -> None:
        self.lowercase, self.on_invalid = s.lowercase_and_strip_accents, s.on_invalid_utf8

    def __call__(self, job: Job) -> binarize.TokenizeStats:
        return binarize.tokenize_job(job, self.lowercase, self.on_invalid)


class _Binarize:
    def __init__(self, codes: Path, vocab: Path, dtype: str, s: PreprocessSettings) -> None:
        self.args = (str(codes), str(vocab), dtype, s.max_len, s.long_lines)

    def __call__(self, job: Job) -> binarize.BinarizeStats:
        return binarize.binarize_job(job, *self.args)


def _cache_key(settings: PreprocessSettings, hashes: dict[str, str]) -> str:
    blob = json.dumps(
        {"settings": settings.output_settings(), "inputs": hashes, "manifest": MANIFEST_VERSION,
         "indexed": INDEXED_VERSION}, sort_keys=True)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


def _prepare_output(output: Path, key: str, force: bool) -> dict | None:
    """The existing manifest when `output` already holds this exact build; otherwise make `output` ready
    (empty) or raise PreprocessError."""
    manifest_path = output / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("cache_key") == key:
            return manifest
        if not force:
            raise PreprocessError(
                f"{output} holds a preprocess build with other inputs or settings ({manifest_path}); "
                "use another output dir, or force=true to rebuild it"
            )
        for name in [*manifest.get("files", []), "manifest.json"]:
            (output / name).unlink(missing_ok=True)
        shutil.rmtree(output / "hf_tokenizer", ignore_errors=True)
    shutil.rmtree(output / ".build", ignore_errors=True)  # an interrupted earlier run
    if output.exists() and any(output.iterdir()):
        raise PreprocessError(f"{output} is not empty and is not a preprocess output (no manifest.json)")
    output.mkdir(parents=True, exist_ok=True)
    return None


def input_hashes(input_dir: str | Path, chunk_lines: int = 20000) -> dict[str, str]:
    """xxh3-128 of every input file, by file name (also validates the input layout)."""
    return {p.name: scan_file(p, chunk_lines)[2] for src in discover(Path(input_dir)) for p in src.paths}


def preprocess(input_dir: str | Path, output_dir: str | Path, settings: PreprocessSettings | None = None,
               force: bool = False) -> dict:  # fmt: skip
    """Run the whole preprocessor; returns the manifest (a cache hit returns the existing one at once).

    Raises:
        PreprocessError: unknown file layout or language code, parallel files of different lengths (both files
            and counts named), too few lines for the held-out splits, or an output dir built differently
            (unless `force`).
        binarize.InvalidUTF8Error: invalid UTF-8 with `on_invalid_utf8=error` (file:line named).
    """
    s = settings or PreprocessSettings()
    input_dir, output = Path(input_dir), Path(output_dir)
    sources = discover(input_dir)
    scans = {p: scan_file(p, s.chunk_lines) for src in sources for p in src.paths}
    for src in sources:
        counts = [scans[p][0] for p in src.paths]
        if len(set(counts)) > 1:
            raise PreprocessError(
                f"parallel files differ in length: {src.paths[0]} has {counts[0]} lines, "
                f"{src.paths[1]} has {counts[1]} lines"
            )
    hashes = {p.name: scans[p][2] for p in scans}
    key = _cache_key(s, hashes)
    if (manifest := _prepare_output(output, key, force)) is not None:
        return manifest
    work = output / ".build"
    work.mkdir()

    jobs_of: dict[str, list[Job]] = {}
    for src in sources:
        n_lines, offsets = scans[src.paths[0]][0], [scans[p][1] for p in src.paths]
        valid, test = _held_out(src, n_lines, s)
        jobs_of[src.name] = []
        for c in range(len(offsets[0])):
            lo = c * s.chunk_lines
            hi = min(lo + s.chunk_lines, n_lines)
            if hi <= lo:
                continue
            jobs_of[src.name].append(
                Job(sum(map(len, jobs_of.values())), [str(p) for p in src.paths], src.langs, [o[c] for o in offsets],
                    lo, hi - lo, _in_range(valid, lo, hi), _in_range(test, lo, hi), str(work))  # fmt: skip
            )
    all_jobs = [j for js in jobs_of.values() for j in js]

    with _pool(s.workers, len(all_jobs)) as pool:
        tok_stats = _run(_Tokenize(s), all_jobs, pool, "tokenize", s.progress)
        word_counts: Counter[str] = Counter()
        for st in tok_stats:
            word_counts.update(st.word_counts)
            st.word_counts = Counter()

        codes_path, vocab_path = output / "codes", output / "vocab.txt"
        write_codes(learn_bpe(word_counts, s.bpe_merges), codes_path)
        dico = _build_vocab(word_counts, BPE(codes_path), s)
        dico.write_vocab(vocab_path)
        del word_counts

        bin_stats = _run(_Binarize(codes_path, vocab_path, dico.dtype_name, s), all_jobs, pool, "binarize",
                         s.progress)  # fmt: skip
    files = _concatenate(sources, jobs_of, dico.dtype_name, output)
    languages = sorted({lang for src in sources for lang in src.langs})
    lang2id = {lang: i for i, lang in enumerate(languages)}
    XLMTokenizer(dico, codes_path, lang2id, s.lowercase_and_strip_accents).save_pretrained(output / "hf_tokenizer")
    shutil.rmtree(work)

    by_job = {j.index: (t, b) for j, t, b in zip(all_jobs, tok_stats, bin_stats)}
    manifest = {
        "format": "xlmtrain-preprocessed",
        "version": MANIFEST_VERSION,
        "cache_key": key,
        "languages": languages,
        "lang2id": lang2id,
        "monolingual": [src.name for src in sources if len(src.langs) == 1],
        "pairs": [src.name for src in sources if len(src.langs) == 2],
        "splits": list(SPLITS),
        "vocab_size": len(dico),
        "dtype": dico.dtype_name,
        "n_bpe_merges": sum(1 for _ in open(codes_path, encoding="utf-8")),
        "counts": {src.name: _source_counts(src, [by_job[j.index] for j in jobs_of[src.name]], scans) for src in sources},
        "settings": s.output_settings(),
        "inputs": hashes,
        "files": ["codes", "vocab.txt", *files],
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


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


def _concatenate(sources: list[Source], jobs_of: dict[str, list[Job]], dtype: str, output: Path) -> list[str]:
    """Join the per-job arrays into the final corpora; returns the file names written."""
    files = []
    for src in sources:
        for split in SPLITS:
            for side in range(len(src.langs)):
                name = src.corpus_name(split, side)
                with IndexedCorpusWriter(output / name, dtype) as writer:
                    for job in jobs_of[src.name]:
                        prefix = job.ids_prefix(split, side)
                        writer.add_chunk(np.fromfile(f"{prefix}.tokens", dtype=dtype),
                                         np.fromfile(f"{prefix}.lengths", dtype=np.int64))  # fmt: skip
                files += [f"{name}.json", f"{name}.tokens", f"{name}.offsets"]
    return files


def _source_counts(src: Source, stats: Iterable[tuple[binarize.TokenizeStats, binarize.BinarizeStats]],
                   scans: dict) -> dict:  # fmt: skip
    """Every line of an input accounted for: lines = sum(sentences) + empty_dropped + too_long_dropped +
    invalid_utf8_dropped."""
    c: dict[str, Any] = {"lines": scans[src.paths[0]][0], "empty_dropped": 0, "invalid_utf8": 0,
                         "invalid_utf8_dropped": 0, "invalid_utf8_first": None, "too_long_dropped": 0, "truncated": 0,
                         "special_tokens_dropped": 0, "unk_tokens": 0,
                         "sentences": dict.fromkeys(SPLITS, 0), "tokens": dict.fromkeys(SPLITS, 0)}  # fmt: skip
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
