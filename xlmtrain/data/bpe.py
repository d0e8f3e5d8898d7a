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
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

EOW = "</w>"


def _merge_word(word: list[str], left: str, right: str, merged: str) -> tuple[list[str], list[int], list[int]] | None:
    """Merge the non-overlapping occurrences of (left, right), left to right (fastBPE's apply order).

    Returns the new word, the positions (in `word`) of the pairs that disappear and the positions (in the new
    word) of the pairs that appear (all other pairs are unchanged), or None when the pair does not occur.
    """
    out: list[str] | None = None
    gone: list[int] = []
    born: list[int] = []
    last = len(word) - 1
    copied = search = 0  # word[:copied] is in out; no merge starts before search
    try:
        for _ in range(word.count(left)):  # list.index scans in C; a word is short, a pair in it rare
            j = word.index(left, search)
            if j >= last:
                break
            if word[j + 1] != right:
                search = j + 1
                continue
            if out is None:
                out = word[:j]
            else:
                out += word[copied:j]
            q = len(out)
            out.append(merged)
            # old pairs j-1, j, j+1 and new pairs q-1, q touch the merge; a merge ending at j-1 already
            # listed old pair j-1 and new pair q-1
            if gone and gone[-1] == j - 1:
                gone += [j, j + 1]
                born.append(q)
            else:
                gone += [j - 1, j, j + 1]
                born += [q - 1, q]
            copied = search = j + 2
    except ValueError:  # left == right: a merge used up an occurrence that count() saw
        pass
    if out is None:
        return None
    out += word[copied:]
    return out, [p for p in gone if 0 <= p < last], [p for p in born if 0 <= p < len(out) - 1]


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
    pair_counts: dict[tuple[str, str], int] = {}
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, (word, n) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + n
            where[pair].add(wi)
    # Max-heap on count, then min on (left, right): entries are (-count, left, right). Invariant: every pair
    # has an entry whose count is >= its true count (a pair is pushed when its count grows, not when it
    # shrinks); a popped entry above the true count is pushed again with the true count, so the first entry
    # popped at its true count is the best pair.
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str, int]] = []
    while heap and len(merges) < n_merges:
        neg, left, right = heapq.heappop(heap)
        count = pair_counts.get((left, right), 0)
        if count <= 0 or -neg < count:
            continue
        if -neg > count:
            heapq.heappush(heap, (-count, left, right))
            continue
        merges.append((left, right, count))
        merged = left + right
        delta: dict[tuple[str, str], int] = {}
        for wi in where.pop((left, right)):
            old = words[wi]
            result = _merge_word(old, left, right, merged)
            if result is None:  # an earlier merge took the pair away from this word
                continue
            new, gone, born = result
            n = freqs[wi]
            for p in gone:
                pair = (old[p], old[p + 1])
                delta[pair] = delta.get(pair, 0) - n
            for p in born:
                pair = (new[p], new[p + 1])
                delta[pair] = delta.get(pair, 0) + n
                where[pair].add(wi)
            words[wi] = new
        for pair, d in delta.items():
            c = pair_counts.get(pair, 0) + d
            pair_counts[pair] = c
            if d > 0:
                heapq.heappush(heap, (-c, *pair))
        del pair_counts[(left, right)]
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
