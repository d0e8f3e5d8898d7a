"""XLM's vocabulary: special tokens at fixed ids, then words sorted by count.

The ids are those of the original facebookresearch/XLM `Dictionary` so that released checkpoints and
transformers' `XLMTokenizer` agree with ours: `<s>`=0, `</s>`=1, `<pad>`=2, `<unk>`=3,
`<special0>`..`<special9>`=4..13 (the mask token is `<special1>`=5) and real words from 14.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BOS_WORD = "<s>"
EOS_WORD = "</s>"
PAD_WORD = "<pad>"
UNK_WORD = "<unk>"
SPECIAL_WORDS = [f"<special{i}>" for i in range(10)]
SPECIALS = [BOS_WORD, EOS_WORD, PAD_WORD, UNK_WORD, *SPECIAL_WORDS]
N_SPECIALS = len(SPECIALS)  # 14: the first id of a real word
MASK_WORD = SPECIAL_WORDS[1]


class VocabError(ValueError):
    """A vocabulary file that XLM's `read_vocab` would reject."""


class Dictionary:
    """Bidirectional word <-> id map with XLM's special ids and per-word counts.

    Attributes:
        id2word: list, `id2word[i]` is the word of id `i`.
        word2id: dict, the inverse of `id2word`.
        counts: list of counts aligned with `id2word` (0 for the specials).
        bos_index, eos_index, pad_index, unk_index, mask_index: 0, 1, 2, 3, 5.
        n_skipped: vocab-file lines skipped by `read_vocab` (U+2028, not 2 fields, duplicates).
    """

    bos_index = 0
    eos_index = 1
    pad_index = 2
    unk_index = 3
    mask_index = 5

    def __init__(self, words: Iterable[str] = (), counts: Iterable[int] | None = None) -> None:
        """Build from the real words (ids 14..) in order; `counts` defaults to zeros.

        Raises:
            ValueError: a word repeats, or is a special token.
        """
        words = list(words)
        counts = [0] * len(words) if counts is None else list(counts)
        if len(counts) != len(words):
            raise ValueError(f"{len(words)} words but {len(counts)} counts")
        self.id2word: list[str] = SPECIALS + words
        self.counts: list[int] = [0] * N_SPECIALS + counts
        self.word2id: dict[str, int] = {w: i for i, w in enumerate(self.id2word)}
        if len(self.word2id) != len(self.id2word):
            seen: set[str] = set()
            dup = next(w for w in self.id2word if w in seen or seen.add(w))  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate word in dictionary: {dup!r}")
        self.n_skipped = 0

    def __len__(self) -> int:
        return len(self.id2word)

    def __contains__(self, word: str) -> bool:
        return word in self.word2id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dictionary) and self.id2word == other.id2word

    def __getitem__(self, index: int) -> str:
        return self.id2word[index]

    def index(self, word: str) -> int:
        """Id of `word`, or `unk_index` when it is not in the dictionary."""
        return self.word2id.get(word, self.unk_index)

    @property
    def words(self) -> list[str]:
        """The real words (ids 14..), without the specials."""
        return self.id2word[N_SPECIALS:]

    @classmethod
    def read_vocab(cls, path: str | Path) -> Dictionary:
        """Read a `word count` file with XLM's `read_vocab` semantics.

        Line i gets id `14 + i - skipped`; lines containing U+2028, not splitting (str.split) into exactly
        two fields, or repeating an earlier word are skipped and counted in `n_skipped`.

        Raises:
            VocabError: a count is not all digits, or counts are not sorted in non-increasing order
                (`path:line` named).
        """
        words: list[str] = []
        counts: list[int] = []
        seen = set(SPECIALS)
        skipped = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.rstrip("\n").split()
                if "\u2028" in line or len(fields) != 2 or fields[0] in seen:
                    skipped += 1
                    continue
                word, count = fields
                if not count.isdigit():
                    raise VocabError(f"{path}:{lineno}: count {count!r} is not a non-negative integer")
                if counts and int(count) > counts[-1]:
                    raise VocabError(
                        f"{path}:{lineno}: counts must be sorted in decreasing order ({count} after {counts[-1]})"
                    )
                seen.add(word)
                words.append(word)
                counts.append(int(count))
        dico = cls(words, counts)
        dico.n_skipped = skipped
        return dico

    def write_vocab(self, path: str | Path) -> None:
        """Write the real words as `word count` lines (the specials are implicit, as in XLM)."""
        with open(path, "w", encoding="utf-8") as f:
            for word, count in zip(self.id2word[N_SPECIALS:], self.counts[N_SPECIALS:]):
                f.write(f"{word} {count}\n")

    def max_vocab(self, n: int) -> Dictionary:
        """A copy keeping only ids `< n` (`n` includes the 14 specials, as XLM's `--max_vocab`)."""
        if n < N_SPECIALS:
            raise ValueError(f"max_vocab={n} must be at least {N_SPECIALS} (the special tokens)")
        return Dictionary(self.id2word[N_SPECIALS:n], self.counts[N_SPECIALS:n])

    def min_count(self, c: int) -> Dictionary:
        """A copy keeping the specials and the words with count >= `c`."""
        kept = [(w, n) for w, n in zip(self.id2word[N_SPECIALS:], self.counts[N_SPECIALS:]) if n >= c]
        return Dictionary([w for w, _ in kept], [n for _, n in kept])

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> Dictionary:
        """Words sorted by count descending, then by token (codepoint order); specials in the counts are dropped."""
        items = sorted(((w, n) for w, n in counts.items() if w not in SPECIALS), key=lambda x: (-x[1], x[0]))
        return cls([w for w, _ in items], [n for _, n in items])

    @property
    def dtype_name(self) -> str:
        """The token dtype XLM uses for this vocabulary: uint16 below 65,536 words, else int32."""
        return "uint16" if len(self) < 65536 else "int32"
