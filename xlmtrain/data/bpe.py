"""Learn BPE codes in fastBPE's format from a word-count table, and apply them with fastBPE.

Learning is the incremental algorithm (as fastBPE/subword-nmt): pair counts are computed once, an index maps
each pair to the words containing it, and each merge only revisits those words; a lazy max-heap finds the best
pair. Tie-break (deterministic, unlike fastBPE's hash order): among pairs with the highest count, the smallest
`(left, right)` in codepoint order is merged first.
"""

from __future__ import annotations

import heapq
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

EOW = "</w>"


def _merge_word(word: list[str], left: str, right: str) -> list[str]:
    """Merge the non-overlapping occurrences of (left, right), left to right (fastBPE's apply order)."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == left and word[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_bpe(word_counts: dict[str, int], n_merges: int) -> list[tuple[str, str, int]]:
    """Learn up to `n_merges` merges over `word_counts` (a word never contains an ASCII space).

    Returns `(left, right, count)` in merge order; word-final pieces carry `</w>`. Stops early when no pair
    is left.
    """
    words: list[list[str]] = []
    freqs: list[int] = []
    for word, n in word_counts.items():
        if word and n > 0:
            words.append([*word[:-1], word[-1] + EOW])
            freqs.append(n)
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, (word, n) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += n
            where[pair].add(wi)
    # Max-heap on count, then min on (left, right): entries are (-count, left, right); stale entries
    # (whose count changed since they were pushed) are skipped when popped.
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str, int]] = []
    while heap and len(merges) < n_merges:
        neg, left, right = heapq.heappop(heap)
        count = pair_counts.get((left, right), 0)
        if count <= 0 or -neg != count:
            continue
        merges.append((left, right, count))
        changed: set[tuple[str, str]] = set()
        for wi in where.pop((left, right)):
            old = words[wi]
            new = _merge_word(old, left, right)
            if len(new) == len(old):
                continue
            n = freqs[wi]
            for pair in zip(old, old[1:]):
                pair_counts[pair] -= n
                changed.add(pair)
            for pair in zip(new, new[1:]):
                pair_counts[pair] += n
                where[pair].add(wi)
                changed.add(pair)
            words[wi] = new
        del pair_counts[(left, right)]
        for pair in changed:
            c = pair_counts.get(pair, 0)
            if c > 0:
                heapq.heappush(heap, (-c, *pair))
            else:
                pair_counts.pop(pair, None)
    return merges


def write_codes(merges: Iterable[tuple[str, str, int]], path: str | Path) -> None:
    """Write fastBPE's codes file: `left right count` per line, newline-terminated."""
    with open(path, "w", encoding="utf-8") as f:
        for left, right, count in merges:
            f.write(f"{left} {right} {count}\n")


def read_codes(path: str | Path) -> list[tuple[str, str, int]]:
    """Read a codes or merges file; a missing count column (transformers' merges.txt) reads as 1.

    Raises ValueError naming `path:line` for a line that is not `left right [count]`.
    """
    merges = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (2, 3) or (len(fields) == 3 and not fields[2].isdigit()):
                raise ValueError(f"{path}:{lineno}: expected 'left right [count]', got {line.rstrip()!r}")
            merges.append((fields[0], fields[1], int(fields[2]) if len(fields) == 3 else 1))
    return merges


class BPE:
    """fastBPE applied to space-separated words; pieces carry fastBPE's `@@` continuation marker."""

    def __init__(self, codes_path: str | Path) -> None:
        """Load codes; a 2-column merges file is rewritten with counts first (fastBPE needs 3 columns)."""
        import fastBPE

        self.codes_path = str(codes_path)
        merges = read_codes(codes_path)
        with open(codes_path, encoding="utf-8") as f:
            first = f.readline().split()
        if len(first) == 3:
            self._bpe = fastBPE.fastBPE(self.codes_path)
        else:
            fd, tmp = tempfile.mkstemp(suffix=".codes")
            os.close(fd)
            try:
                write_codes(merges, tmp)
                self._bpe = fastBPE.fastBPE(tmp)
            finally:
                os.unlink(tmp)

    def apply(self, lines: list[str]) -> list[str]:
        """BPE-segment each line of space-separated words."""
        return self._bpe.apply(lines)

    def __getstate__(self) -> dict:
        return {"codes_path": self.codes_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["codes_path"])
