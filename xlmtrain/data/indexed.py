"""Memory-mapped binarised corpora (XLM's stream layout, no pickles).

A corpus `prefix` is three files:
- `prefix.json`: the versioned header `{"format": "xlmtrain-indexed", "version": 1, "dtype", "n_sentences",
  "n_tokens"}`;
- `prefix.tokens`: the flat token ids, every sentence followed by `</s>` (id 1): `s1 </s> s2 </s> ...`;
  dtype uint16 when the vocabulary has fewer than 65,536 words, else int32 (XLM's rule);
- `prefix.offsets`: int64, `n_sentences + 1` entries; sentence i is `tokens[offsets[i] : offsets[i+1] - 1]`.

A corpus merged from shards (version 2) has no `prefix.tokens`: its header lists `parts`, the prefixes (relative
to the header's folder) of the shards' corpora whose token files, in order, make up its token stream, and its
`prefix.offsets` indexes that stream. Readers see one corpus either way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xlmtrain.data.dictionary import Dictionary

FORMAT = "xlmtrain-indexed"
VERSION = 1
PARTS_VERSION = 2


class IndexedCorpusWriter:
    """Appends sentences (or whole pre-built chunks) to a new corpus at `prefix`; `close()` writes the header."""

    def __init__(self, prefix: str | Path, dtype: str) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._tokens = open(f"{prefix}.tokens", "wb")
        self._offsets = open(f"{prefix}.offsets", "wb")
        self._offsets.write(np.zeros(1, dtype=np.int64).tobytes())
        self.n_sentences = 0
        self.n_tokens = 0

    def add_chunk(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append sentences given as a flat array (each sentence followed by `</s>`) and their lengths
        (without `</s>`)."""
        ends = self.n_tokens + np.cumsum(np.asarray(lengths, dtype=np.int64) + 1)
        self._tokens.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self._offsets.write(ends.tobytes())
        self.n_sentences += len(lengths)
        self.n_tokens += int(len(tokens))

    def add(self, ids: list[int]) -> None:
        """Append one sentence (without `</s>`)."""
        self.add_chunk(np.asarray([*ids, Dictionary.eos_index]), np.asarray([len(ids)]))

    def close(self) -> None:
        self._tokens.close()
        self._offsets.close()
        header = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype.name,
            "n_sentences": self.n_sentences,
            "n_tokens": self.n_tokens,
        }
        Path(f"{self.prefix}.json").write_text(json.dumps(header, indent=1) + "\n")

    def __enter__(self) -> IndexedCorpusWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexedCorpus:
    """Read-only memory-mapped corpus. Opening it reads only the header; token pages load on access.

    `len()` is the number of sentences, `corpus[i]` the ids of sentence i without `</s>`, `.tokens` the flat
    stream (with `</s>` after each sentence), `.offsets` the `n+1` sentence starts, `.lengths` the sentence
    lengths without `</s>`. Pickles as its path: a DataLoader worker reopens the mmap.
    """

    def __init__(self, prefix: str | Path) -> None:
        """Raises FileNotFoundError / ValueError naming the header file when it is missing or not ours."""
        self.prefix = Path(prefix)
        header_path = Path(f"{prefix}.json")
        if not header_path.is_file():
            raise FileNotFoundError(f"{header_path}: no corpus header (is {prefix} a preprocessed corpus?)")
        try:
            header = json.loads(header_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{header_path}: corrupt corpus header, not valid JSON ({err})") from None
        if header.get("format") != FORMAT or header.get("version") not in (VERSION, PARTS_VERSION):
            raise ValueError(
                f"{header_path}: format {header.get('format')!r} version {header.get('version')!r}, "
                f"expected {FORMAT!r} version {VERSION} or {PARTS_VERSION}"
            )
        self.header = header
        n, t = header["n_sentences"], header["n_tokens"]
        if "parts" in header:
            parts = [IndexedCorpus(header_path.parent / p) for p in header["parts"]]
            self.tokens = PartTokens([part.tokens for part in parts], header["dtype"])
            if len(self.tokens) != t:
                raise ValueError(f"{header_path}: parts hold {len(self.tokens)} tokens, header says {t}")
        else:
            self.tokens = self._map(f"{prefix}.tokens", header["dtype"], t)
        self.offsets = self._map(f"{prefix}.offsets", "int64", n + 1)

    @staticmethod
    def _map(path: str, dtype: str, count: int) -> np.ndarray:
        size = Path(path).stat().st_size
        if size != count * np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: {size} bytes, header says {count} x {dtype}")
        if count == 0:  # np.memmap cannot map an empty file
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sentence {i} out of range for {len(self)} sentences in {self.prefix}")
        i %= len(self)
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1] - 1])

    @property
    def lengths(self) -> np.ndarray:
        """Sentence lengths without `</s>` (an in-RAM int64 array of `len(self)` entries)."""
        return self.lengths_of(slice(None))

    def lengths_of(self, ids: np.ndarray | slice) -> np.ndarray:
        """Lengths without `</s>` of the sentences `ids` (int64), reading only their offsets."""
        return np.asarray(self.offsets[1:][ids] - self.offsets[:-1][ids], dtype=np.int64) - 1

    @property
    def n_tokens(self) -> int:
        """Tokens in the stream, `</s>` included."""
        return int(self.header["n_tokens"])

    def __reduce__(self) -> tuple:
        return (IndexedCorpus, (str(self.prefix),))

    def __repr__(self) -> str:
        return f"IndexedCorpus({str(self.prefix)!r}, sentences={len(self)}, tokens={self.n_tokens})"


class PartTokens:
    """The token streams of several corpora read as one: slicing (step 1) and `np.asarray` like an array,
    copying only the slice asked for."""

    def __init__(self, parts: list[np.ndarray], dtype: str) -> None:
        self.parts = [p for p in parts if len(p)]
        self.dtype = np.dtype(dtype)
        self.starts = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            lo, hi, step = key.indices(len(self))
            if step != 1:
                raise IndexError("PartTokens supports contiguous slices only")
            if hi <= lo:
                return np.zeros(0, dtype=self.dtype)
            first = int(np.searchsorted(self.starts, lo, side="right")) - 1
            pieces = []
            k = first
            while k < len(self.parts) and self.starts[k] < hi:
                a, b = max(lo, self.starts[k]) - self.starts[k], min(hi, self.starts[k + 1]) - self.starts[k]
                pieces.append(self.parts[k][a:b])
                k += 1
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        i = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"token {key} out of range for {len(self)} tokens")
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][i - self.starts[k]]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype)
        return whole if dtype is None else whole.astype(dtype)


def write_parts_header(prefix: str | Path, parts: list[IndexedCorpus]) -> None:
    """Make `prefix` the concatenation of `parts` (same dtype) without copying their tokens: a version-2
    header naming them (relative paths) and one offsets file, written block by block."""
    prefix = Path(prefix)
    dtypes = {p.header["dtype"] for p in parts}
    if len(dtypes) > 1:
        raise ValueError(f"{prefix}: parts of different dtypes {sorted(dtypes)}")
    n_tokens = n_sentences = 0
    with open(f"{prefix}.offsets", "wb") as f:
        f.write(np.zeros(1, dtype=np.int64).tobytes())
        for part in parts:
            for lo in range(1, len(part.offsets), 1 << 20):
                f.write((np.asarray(part.offsets[lo : lo + (1 << 20)]) + n_tokens).tobytes())
            n_tokens += part.n_tokens
            n_sentences += len(part)
    header = {
        "format": FORMAT,
        "version": PARTS_VERSION,
        "dtype": dtypes.pop() if dtypes else "uint16",
        "n_sentences": n_sentences,
        "n_tokens": n_tokens,
        "parts": [os.path.relpath(p.prefix, prefix.parent) for p in parts],
    }
    Path(f"{prefix}.json").write_text(json.dumps(header, indent=1) + "\n")
