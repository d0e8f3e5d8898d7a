"""Worker steps of the preprocessor: the BPE sample of a chunk -> words (+ word counts), and a chunk -> token-id
arrays.

A *job* is a contiguous range of rows of one source (a monolingual corpus, or both sides of a parallel pair read
in lockstep, so an empty side drops the whole pair and alignment is never lost). The BPE sample is the first
`sample_per_block` rows of every block of `SAMPLE_BLOCK` rows (global row numbers, so the sample does not depend
on how the work is cut into jobs). `sample_job` tokenises a job's sample rows into a words file (one line per
sample row) and counts their train words; `binarize_job` reads every row again, takes the words of sample rows
from that file instead of tokenising them twice, and writes the job's arrays, then, last and atomically, its
stats file: the marker that the job is done (a re-run skips it). Every function here is a top-level function of
picklable arguments so that a process pool can run it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np

from xlmtrain.data.bpe import BPE
from xlmtrain.data.dictionary import N_SPECIALS, Dictionary
from xlmtrain.data.inputs import Decoder, InvalidUTF8Error, Source, read_rows
from xlmtrain.data.moses import MosesPipeline

__all__ = [
    "SAMPLE_BLOCK",
    "SPLITS",
    "BinarizeArgs",
    "BinarizeStats",
    "InvalidUTF8Error",
    "Job",
    "TokenizeStats",
    "binarize_job",
    "ids_from_pieces",
    "sample_job",
]

SPLITS = ("train", "valid", "test")
SAMPLE_BLOCK = 1000


@dataclass
class Job:
    """Rows `[first_line, first_line + n_lines)` of `source`, read from `starts` (one position per file).
    `valid`/`test` are the held-out global row numbers inside the range; row r is in the BPE sample when
    `r % SAMPLE_BLOCK < sample_per_block`."""

    index: int
    source: Source
    starts: tuple[int, ...]
    first_line: int
    n_lines: int
    valid: frozenset[int]
    test: frozenset[int]
    sample_per_block: int

    def split_of(self, row: int) -> str:
        return "valid" if row in self.valid else "test" if row in self.test else "train"

    def in_sample(self, row: int) -> bool:
        return row % SAMPLE_BLOCK < self.sample_per_block

    def words_path(self, work_dir: str | Path) -> Path:
        return Path(work_dir) / "sample" / f"job{self.index:06d}.words"

    def ids_prefix(self, work_dir: str | Path, split: str, side: int) -> Path:
        return Path(work_dir) / "jobs" / f"job{self.index:06d}.{split}.{side}"

    def done_path(self, work_dir: str | Path) -> Path:
        return Path(work_dir) / "jobs" / f"job{self.index:06d}.done.json"


@dataclass
class TokenizeStats:
    """What happened to the rows of a job (summed over the jobs of a source by the preprocessor)."""

    lines: int = 0
    empty_dropped: int = 0
    invalid_utf8: int = 0
    invalid_utf8_dropped: int = 0
    invalid_utf8_first: str | None = None


@lru_cache(maxsize=64)
def _pipeline(lang: str, lowercase: bool) -> MosesPipeline:
    return MosesPipeline(lang, lowercase)


def sample_job(job: Job, work_dir: str, lowercase: bool, on_invalid_utf8: str) -> Counter[str]:
    """Tokenise the job's sample rows into its words file (per sample row, in order: the words of each side
    joined by spaces, sides separated by a tab; an empty line for a row skipped for invalid UTF-8) and return
    the counts of their train words. Raises InvalidUTF8Error / PreprocessError naming file:line."""
    counts: Counter[str] = Counter()
    pipes = [_pipeline(lang, lowercase) for lang in job.source.langs]
    path = job.words_path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    row = job.first_line
    with open(tmp, "w", encoding="utf-8") as out:
        for texts in read_rows(job.source, job.starts, job.first_line, job.n_lines, Decoder(on_invalid_utf8)):
            if job.in_sample(row):
                if any(t is None for t in texts):
                    out.write("\n")
                else:
                    sides = [pipe(t) for pipe, t in zip(pipes, texts)]  # type: ignore[arg-type]
                    if job.split_of(row) == "train" and all(sides):
                        for words in sides:
                            counts.update(words)
                    out.write("\t".join(" ".join(w) for w in sides) + "\n")
            row += 1
    os.replace(tmp, path)
    return counts


def _job_words(
    job: Job, work_dir: str, lowercase: bool, on_invalid_utf8: str, stats: TokenizeStats
) -> Iterator[tuple[str, list[list[str]]]]:
    """`(split, words of each side)` of the job's kept rows, in order; the words of sample rows come from the
    sample's words file when there is one. A row skipped for invalid UTF-8 or with an empty side is counted in
    `stats` and dropped."""
    pipes = [_pipeline(lang, lowercase) for lang in job.source.langs]
    decode = Decoder(on_invalid_utf8)
    path = job.words_path(work_dir)
    sampled = open(path, encoding="utf-8") if job.sample_per_block and path.is_file() else None
    row = job.first_line
    try:
        for texts in read_rows(job.source, job.starts, job.first_line, job.n_lines, decode):
            stats.lines += 1
            cached = sampled.readline().rstrip("\n") if sampled is not None and job.in_sample(row) else None
            split = job.split_of(row)
            row += 1
            if any(t is None for t in texts):
                stats.invalid_utf8_dropped += 1
                continue
            if cached is None:
                sides = [pipe(t) for pipe, t in zip(pipes, texts)]  # type: ignore[arg-type]
            else:
                sides = [side.split(" ") if side else [] for side in cached.split("\t")]
            if not all(sides):
                stats.empty_dropped += 1
                continue
            yield split, sides
    finally:
        if sampled is not None:
            sampled.close()
    stats.invalid_utf8 += decode.invalid
    stats.invalid_utf8_first = stats.invalid_utf8_first or decode.first


def ids_from_pieces(pieces: list[str], dico: Dictionary) -> tuple[list[int], int]:
    """Map BPE pieces to ids (`<unk>` fallback); pieces that are special tokens other than `<unk>` are dropped
    as XLM's binariser does. Returns `(ids, n_dropped_specials)`."""
    get, unk = dico.word2id.get, dico.unk_index
    ids = [get(p, unk) for p in pieces]
    kept = [i for i in ids if i >= N_SPECIALS or i == unk]
    return kept, len(ids) - len(kept)


@dataclass
class BinarizeStats:
    """Counts of one job's binarisation."""

    truncated: int = 0
    empty_dropped: int = 0
    too_long_dropped: int = 0
    special_dropped: int = 0
    unk_tokens: int = 0
    sentences: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)


class WordIds:
    """Word -> ids, memoised. fastBPE segments each space-separated word on its own and `ids_from_pieces` maps
    each piece on its own, so a sentence's ids are the concatenation of its words' ids; each distinct word
    goes through fastBPE once (in batches) instead of once per occurrence.

    Attributes: `ids` (word -> ids), `specials` (word -> pieces dropped as special tokens, only words with
    some), `bpe`, `dico`.
    """

    MAX_CACHED = 500_000  # bounds the memory of a worker on corpora with very many distinct words

    def __init__(self, codes: str, vocab: str) -> None:
        self.bpe, self.dico = BPE(codes), Dictionary.read_vocab(vocab)
        self.ids: dict[str, list[int]] = {}
        self.specials: dict[str, int] = {}

    def add(self, sentences: list[list[str]]) -> None:
        """Make sure every word of `sentences` is in `ids`."""
        missing = list({w for words in sentences for w in words if w not in self.ids})
        if len(self.ids) + len(missing) > self.MAX_CACHED:
            self.ids.clear()
            self.specials.clear()
            missing = list({w for words in sentences for w in words})
        for word, pieces in zip(missing, self.bpe.apply(missing)):
            self.ids[word], n_special = ids_from_pieces(pieces.split(" "), self.dico)
            if n_special:
                self.specials[word] = n_special


def _load_word_ids(codes: str, vocab: str) -> WordIds:
    """The worker's `WordIds` of these files (reloaded when either file changed since)."""
    stamp = tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, (codes, vocab)))
    return _cached_word_ids(codes, vocab, stamp)


@lru_cache(maxsize=2)
def _cached_word_ids(codes: str, vocab: str, stamp: tuple) -> WordIds:
    return WordIds(codes, vocab)


@dataclass(frozen=True)
class BinarizeArgs:
    """What every `binarize_job` call of a build shares."""

    work_dir: str
    codes: str
    vocab: str
    dtype: str
    max_len: int
    long_lines: str
    lowercase: bool
    on_invalid_utf8: str


def binarize_job(job: Job, a: BinarizeArgs) -> tuple[TokenizeStats, BinarizeStats]:
    """Tokenise (or read the sample's words), BPE and id-map the job's rows into per-split, per-side flat arrays
    (`.tokens` with `</s>` after each sentence, `.lengths`); then write the stats file, the job's completion
    marker. `max_len > 0` truncates (`long_lines=truncate`) or drops (`drop`; the whole pair for parallel data)
    sentences longer than `max_len` BPE tokens."""
    done = job.done_path(a.work_dir)
    word_ids = _load_word_ids(a.codes, a.vocab)
    eos, unk = word_ids.dico.eos_index, word_ids.dico.unk_index
    n_sides = len(job.source.langs)
    tok, stats = TokenizeStats(), BinarizeStats()
    rows = list(_job_words(job, a.work_dir, a.lowercase, a.on_invalid_utf8, tok))
    word_ids.add([words for _, sides in rows for words in sides])
    ids_of, specials = word_ids.ids.__getitem__, word_ids.specials
    buf: dict[tuple[str, int], tuple[list[int], list[int]]] = {(s, k): ([], []) for s in SPLITS for k in range(n_sides)}
    for split, sides in rows:
        sents = [list(chain.from_iterable(map(ids_of, words))) for words in sides]
        if specials:
            stats.special_dropped += sum(specials.get(w, 0) for words in sides for w in words)
        if a.max_len > 0 and any(len(s) > a.max_len for s in sents):
            if a.long_lines == "drop":
                stats.too_long_dropped += 1
                continue
            stats.truncated += sum(len(s) > a.max_len for s in sents)
            sents = [s[: a.max_len] for s in sents]
        if not all(sents):  # every piece of a side was a dropped special token
            stats.empty_dropped += 1
            continue
        for k, ids in enumerate(sents):
            toks, lens = buf[(split, k)]
            toks += ids
            toks.append(eos)
            lens.append(len(ids))
            stats.unk_tokens += ids.count(unk)
        stats.sentences[split] += 1
        stats.tokens[split] += sum(len(s) for s in sents)
    done.parent.mkdir(parents=True, exist_ok=True)
    for (split, k), (toks, lens) in buf.items():
        prefix = job.ids_prefix(a.work_dir, split, k)
        np.asarray(toks, dtype=a.dtype).tofile(f"{prefix}.tokens")
        np.asarray(lens, dtype=np.int64).tofile(f"{prefix}.lengths")
    tmp = done.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"tokenize": vars(tok), "binarize": stats_dict(stats)}))
    os.replace(tmp, done)
    return tok, stats


def stats_dict(stats: BinarizeStats) -> dict:
    """`stats` as JSON-ready dict (`dataclasses.asdict` would turn the Counters into Counters of pairs)."""
    return {**vars(stats), "sentences": dict(stats.sentences), "tokens": dict(stats.tokens)}


def stats_from_dict(d: dict) -> BinarizeStats:
    return BinarizeStats(**{**d, "sentences": Counter(d["sentences"]), "tokens": Counter(d["tokens"])})


def read_stats(path: Path) -> tuple[TokenizeStats, BinarizeStats]:
    """The stats a finished job recorded in its marker file."""
    d = json.loads(path.read_text())
    return TokenizeStats(**d["tokenize"]), stats_from_dict(d["binarize"])
