"""Worker steps of the preprocessor: raw text chunk -> words (+ word counts), and words -> token-id arrays.

A *job* is a contiguous range of lines of one monolingual file, or of both files of a parallel pair read in
lockstep (so an empty side drops the whole pair and alignment is never lost). Every function here is a
top-level function of picklable arguments so that a process pool can run it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np

from xlmtrain.data.bpe import BPE
from xlmtrain.data.dictionary import N_SPECIALS, Dictionary
from xlmtrain.data.moses import MosesPipeline

SPLITS = ("train", "valid", "test")
_SPLIT_CODE = {"train": "T", "valid": "V", "test": "E"}
_CODE_SPLIT = {v: k for k, v in _SPLIT_CODE.items()}


class InvalidUTF8Error(ValueError):
    """A line is not valid UTF-8 and `on_invalid_utf8=error`."""


@dataclass
class Job:
    """Lines `[first_line, first_line + n_lines)` of `paths` (1 file, or the 2 sides of a pair), starting at
    byte `offsets[k]` in `paths[k]`. `valid`/`test` are the held-out global line numbers inside the range."""

    index: int
    paths: list[str]
    langs: list[str]
    offsets: list[int]
    first_line: int
    n_lines: int
    valid: frozenset[int]
    test: frozenset[int]
    work_dir: str

    @property
    def words_path(self) -> Path:
        return Path(self.work_dir) / f"job{self.index:06d}.words"

    def ids_prefix(self, split: str, side: int) -> Path:
        return Path(self.work_dir) / f"job{self.index:06d}.{split}.{side}"


@dataclass
class TokenizeStats:
    """What happened to the lines of one job (summed over jobs of an input by the preprocessor)."""

    lines: int = 0
    empty_dropped: int = 0
    invalid_utf8: int = 0
    invalid_utf8_dropped: int = 0
    invalid_utf8_first: str | None = None
    word_counts: Counter[str] = field(default_factory=Counter)


@lru_cache(maxsize=64)
def _pipeline(lang: str, lowercase: bool) -> MosesPipeline:
    return MosesPipeline(lang, lowercase)


def _decode(raw: bytes, where: str, on_invalid: str, stats: TokenizeStats) -> str | None:
    """Decode one line; None means skip it (on_invalid_utf8=skip)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if on_invalid == "error":
            raise InvalidUTF8Error(f"{where}: invalid UTF-8 (set on_invalid_utf8=replace or skip)") from None
        stats.invalid_utf8 += 1
        stats.invalid_utf8_first = stats.invalid_utf8_first or where
        return raw.decode("utf-8", errors="replace") if on_invalid == "replace" else None


def tokenize_job(job: Job, lowercase: bool, on_invalid_utf8: str) -> TokenizeStats:
    """Tokenise the job's lines into `job.words_path` (`<split code>\\t<words side 0>[\\t<words side 1>]`),
    counting train words; an empty (after tokenisation), undecodable-and-skipped or any-side-empty line is
    dropped and counted."""
    stats = TokenizeStats()
    pipes = [_pipeline(lang, lowercase) for lang in job.langs]
    files = [open(p, "rb") for p in job.paths]
    try:
        for f, off in zip(files, job.offsets):
            f.seek(off)
        with open(job.words_path, "w", encoding="utf-8") as out:
            for k in range(job.n_lines):
                line_no = job.first_line + k
                raws = [f.readline().rstrip(b"\r\n") for f in files]
                stats.lines += 1
                texts = [_decode(r, f"{p}:{line_no + 1}", on_invalid_utf8, stats) for r, p in zip(raws, job.paths)]
                if any(t is None for t in texts):
                    stats.invalid_utf8_dropped += 1
                    continue
                sides = [pipe(t) for pipe, t in zip(pipes, texts)]  # type: ignore[arg-type]
                if not all(sides):
                    stats.empty_dropped += 1
                    continue
                split = "valid" if line_no in job.valid else "test" if line_no in job.test else "train"
                if split == "train":
                    for words in sides:
                        stats.word_counts.update(words)
                out.write(_SPLIT_CODE[split] + "\t" + "\t".join(" ".join(w) for w in sides) + "\n")
    finally:
        for f in files:
            f.close()
    return stats


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

    MAX_CACHED = 2_000_000  # bounds the memory of a worker on corpora with very many distinct words

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


@lru_cache(maxsize=2)
def _load_word_ids(codes: str, vocab: str) -> WordIds:
    return WordIds(codes, vocab)


def binarize_job(job: Job, codes: str, vocab: str, dtype: str, max_len: int, long_lines: str) -> BinarizeStats:
    """BPE + id-map the job's words file into per-split, per-side flat arrays (`.tokens` with `</s>` after each
    sentence, `.lengths`). `max_len > 0` truncates (`long_lines=truncate`) or drops (`drop`; the whole pair
    for parallel data) sentences longer than `max_len` BPE tokens."""
    word_ids = _load_word_ids(codes, vocab)
    eos, unk = word_ids.dico.eos_index, word_ids.dico.unk_index
    n_sides = len(job.paths)
    stats = BinarizeStats()
    buf: dict[tuple[str, int], tuple[list[int], list[int]]] = {
        (s, k): ([], []) for s in SPLITS for k in range(n_sides)
    }
    with open(job.words_path, encoding="utf-8") as f:
        fields = [line.rstrip("\n").split("\t") for line in f]
    sides = [[fl[1 + k].split(" ") for fl in fields] for k in range(n_sides)]
    word_ids.add([words for side in sides for words in side])
    ids_of, specials = word_ids.ids.__getitem__, word_ids.specials
    for j, fl in enumerate(fields):
        split = _CODE_SPLIT[fl[0]]
        sents = [list(chain.from_iterable(map(ids_of, side[j]))) for side in sides]
        if specials:
            stats.special_dropped += sum(specials.get(w, 0) for side in sides for w in side[j])
        if max_len > 0 and any(len(s) > max_len for s in sents):
            if long_lines == "drop":
                stats.too_long_dropped += 1
                continue
            stats.truncated += sum(len(s) > max_len for s in sents)
            sents = [s[:max_len] for s in sents]
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
    for (split, k), (toks, lens) in buf.items():
        prefix = job.ids_prefix(split, k)
        np.asarray(toks, dtype=dtype).tofile(f"{prefix}.tokens")
        np.asarray(lens, dtype=np.int64).tofile(f"{prefix}.lengths")
    return stats
