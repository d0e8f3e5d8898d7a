"""The inputs of the preprocessor: which files of a folder are corpora, and reading their rows in bounded memory.

Layouts of `DIR` (every name's language codes are checked):
- raw text: monolingual `<lang>.txt`; parallel, line-aligned `<l1>-<l2>.<l1>` + `<l1>-<l2>.<l2>`;
- JSON lines: `<lang>.jsonl` (one object per line, column `text`) and `<l1>-<l2>.jsonl` (columns `<l1>`, `<l2>`);
- Parquet: `<lang>.parquet` / `<l1>-<l2>.parquet`, the same columns;
- a `datasets` `save_to_disk` folder named `<lang>` or `<l1>-<l2>` (holding `state.json`), the same columns.
Column names are settings: `text_column`, and `pair_column`, a name in which `LANG` stands for the language code
(default `LANG`: the columns are named `en`, `fr`; `text_LANG` would read `text_en`, `text_fr`).

A source is read row by row from a *position*: a byte offset for text and JSON lines (found by one scan), a row
number for Parquet and `datasets` folders (Parquet is iterated by row groups with pyarrow; a `datasets` folder is
memory-mapped Arrow read in batches). Line breaks inside a JSON/Parquet/Arrow value become spaces (a value is one
sentence, as a line of a text file). Errors name the file and the line (row, 1-based).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import xxhash

from xlmtrain.data.languages import check_language

_LANG = r"[a-z][a-z_]*"
_TEXT_MONO = re.compile(rf"^({_LANG})\.txt$")
_TEXT_PARA = re.compile(rf"^({_LANG})-({_LANG})\.({_LANG})$")
_TABLE = re.compile(rf"^({_LANG})(?:-({_LANG}))?\.(jsonl|parquet)$")
_DATASET = re.compile(rf"^({_LANG})(?:-({_LANG}))?$")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85\x0b\x0c]+")
_HASH_BLOCK = 1 << 22


class PreprocessError(ValueError):
    """Bad input (the message names the file, line or setting) or an output folder that cannot be (re)used."""


class InvalidUTF8Error(PreprocessError):
    """A line is not valid UTF-8 and `on_invalid_utf8=error`."""


@dataclass(frozen=True)
class Columns:
    """Column names of table inputs: `text` for monolingual rows, `pair` (`LANG` replaced by the language
    code) for parallel rows."""

    text: str = "text"
    pair: str = "LANG"


@dataclass(frozen=True)
class Source:
    """One monolingual corpus (`langs=(lang,)`) or one parallel pair (`langs=(l1, l2)`, l1 < l2).

    `kind` is `text` (one file per language), `jsonl`, `parquet` or `arrow` (one file or folder, one column per
    language, `columns` in `langs` order)."""

    name: str  # "en" or "en-fr"
    langs: tuple[str, ...]
    kind: str
    paths: tuple[Path, ...]
    columns: tuple[str, ...] = ()

    def corpus_name(self, split: str, side: int) -> str:
        if len(self.langs) == 1:
            return f"{split}.{self.name}"
        return f"{split}.{self.name}.{self.langs[side]}"

    @property
    def label(self) -> str:
        """The file(s) to name in a message."""
        return " + ".join(map(str, self.paths))


def discover(input_dir: Path, columns: Columns = Columns()) -> list[Source]:
    """The sources of `input_dir`, monolingual first, each group by name. Raises PreprocessError naming the file for
    an unknown layout, an unknown language code, a parallel text file without its other side, or a corpus given
    twice (as `en-fr` and `fr-en`, or in two formats)."""
    if not input_dir.is_dir():
        raise PreprocessError(f"input={input_dir} is not a directory")
    found: dict[str, Source] = {}
    sides: dict[tuple[str, str], dict[str, Path]] = {}

    def add(source: Source, where: Path) -> None:
        if source.name in found:
            raise PreprocessError(f"{where}: corpus {source.name} is given twice (also {found[source.name].label})")
        found[source.name] = source

    for path in sorted(p for p in input_dir.iterdir() if not p.name.startswith(".")):
        if path.is_dir():
            m = _DATASET.match(path.name)
            if not m or not (path / "state.json").is_file():
                raise PreprocessError(
                    f"{path}: not an input (a folder must be a `datasets` save_to_disk folder named "
                    "<lang> or <l1>-<l2>)"
                )
            add(_table_source(m[1], m[2], "arrow", path, columns), path)
        elif m := _TEXT_MONO.match(path.name):
            check_language(m[1], str(path))
            add(Source(m[1], (m[1],), "text", (path,)), path)
        elif m := _TABLE.match(path.name):
            add(_table_source(m[1], m[2], m[3], path, columns), path)
        elif m := _TEXT_PARA.match(path.name):
            l1, l2, lang = m[1], m[2], m[3]
            for code in (l1, l2):
                check_language(code, str(path))
            if lang not in (l1, l2) or l1 == l2:
                raise PreprocessError(f"{path}: a parallel file must be named <l1>-<l2>.<l1> or <l1>-<l2>.<l2>")
            sides.setdefault((l1, l2), {})[lang] = path
        else:
            raise PreprocessError(
                f"{path}: not an input file (expected <lang>.txt, <l1>-<l2>.<l1> / <l1>-<l2>.<l2>, "
                "<lang>.jsonl, <lang>.parquet, <l1>-<l2>.jsonl / .parquet, or a datasets folder <lang> / <l1>-<l2>)"
            )
    for (l1, l2), files in sides.items():
        for lang in (l1, l2):
            if lang not in files:
                other = next(iter(files.values()))
                raise PreprocessError(f"{other}: missing the other side {input_dir / f'{l1}-{l2}.{lang}'}")
        a, b = sorted((l1, l2))
        add(Source(f"{a}-{b}", (a, b), "text", (files[a], files[b])), files[l1])
    if not found:
        raise PreprocessError(
            f"input={input_dir}: no <lang>.txt, <l1>-<l2>.<lang>, .jsonl, .parquet or datasets inputs"
        )
    mono = sorted(n for n, s in found.items() if len(s.langs) == 1)
    para = sorted(n for n, s in found.items() if len(s.langs) == 2)
    return [found[n] for n in mono + para]


def _table_source(l1: str, l2: str | None, kind: str, path: Path, columns: Columns) -> Source:
    for code in (l1, l2) if l2 else (l1,):
        check_language(code, str(path))
    if l2 is None:
        return Source(l1, (l1,), kind, (path,), (columns.text,))
    if l1 == l2:
        raise PreprocessError(f"{path}: a parallel input needs two different languages")
    a, b = sorted((l1, l2))
    return Source(f"{a}-{b}", (a, b), kind, (path,), tuple(columns.pair.replace("LANG", x) for x in (a, b)))


@dataclass(frozen=True)
class Scan:
    """A source's row count, the start position of every `chunk_lines`-th row in each of its files (byte offsets
    for text/jsonl, row numbers otherwise) and the xxh3-128 of its files, by file name."""

    n_lines: int
    starts: tuple[tuple[int, ...], ...]
    hashes: dict[str, str]


def scan(source: Source, chunk_lines: int) -> Scan:
    """Read the source once (streaming). Raises PreprocessError for parallel text files of different lengths, a
    Parquet/`datasets` input without a needed column, or an unreadable Parquet/`datasets` input."""
    if source.kind in ("text", "jsonl"):
        scans = [_scan_lines(p, chunk_lines) for p in source.paths]
        counts = [n for n, _, _ in scans]
        if len(set(counts)) > 1:
            raise PreprocessError(
                f"parallel files differ in length: {source.paths[0]} has {counts[0]} lines, "
                f"{source.paths[1]} has {counts[1]} lines"
            )
        hashes = {p.name: h for p, (_, _, h) in zip(source.paths, scans)}
        return Scan(counts[0], tuple(tuple(o) for _, o, _ in scans), hashes)
    n_rows = _table_rows(source)
    starts = tuple(range(0, n_rows, chunk_lines)) or (0,)
    return Scan(n_rows, (starts,), {source.paths[0].name: _hash_path(source.paths[0])})


def _scan_lines(path: Path, chunk_lines: int) -> tuple[int, list[int], str]:
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


def _hash_path(path: Path) -> str:
    """xxh3-128 of a file, or of a folder's files (names and contents, in name order)."""
    hasher = xxhash.xxh3_128()
    for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        hasher.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                hasher.update(block)
    return hasher.hexdigest()


def _table_rows(source: Source) -> int:
    """Row count of a Parquet file or `datasets` folder, after checking its columns."""
    path = source.paths[0]
    try:
        if source.kind == "parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path)
            names, n_rows = meta.schema_arrow.names, meta.metadata.num_rows
        else:
            dataset = _load_dataset(str(path))
            names, n_rows = dataset.column_names, len(dataset)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise PreprocessError(f"{path}: cannot be read as {source.kind} ({err})") from None
    for column in source.columns:
        if column not in names:
            raise PreprocessError(
                f"{path}: no column {column!r} (columns: {names}); set the column names with "
                "text_column= / pair_column= (training CLI: data.preprocess.text_column=...)"
            )
    return n_rows


@lru_cache(maxsize=8)
def _load_dataset(path: str):  # noqa: ANN202 (datasets.Dataset; imported lazily)
    import datasets

    dataset = datasets.load_from_disk(path)
    if not isinstance(dataset, datasets.Dataset):
        raise PreprocessError(f"{path}: a DatasetDict; save one split (dataset['train'].save_to_disk(...)) per folder")
    return dataset


def read_rows(
    source: Source, starts: tuple[int, ...], first_line: int, n_lines: int, decode: Decoder
) -> Iterator[tuple[str | None, ...]]:
    """The texts of rows `[first_line, first_line + n_lines)` (one per language), the reading starting at
    `starts` (one position per file). A text is None when its line was skipped for invalid UTF-8
    (`decode` counts what it repaired or skipped).

    Raises InvalidUTF8Error / PreprocessError naming `file:line` (bad UTF-8, bad JSON, a missing column, a null).
    """
    if source.kind == "text":
        yield from _text_rows(source, starts, first_line, n_lines, decode)
    elif source.kind == "jsonl":
        yield from _jsonl_rows(source, starts[0], first_line, n_lines, decode)
    else:
        yield from _table_rows_at(source, first_line, n_lines)


class Decoder:
    """UTF-8 decoding with the `on_invalid_utf8` policy; counts what it repaired or skipped."""

    def __init__(self, on_invalid: str) -> None:
        self.on_invalid = on_invalid
        self.invalid = 0
        self.first: str | None = None

    def __call__(self, raw: bytes, where: str) -> str | None:
        """Decode one line; None means skip it (on_invalid_utf8=skip)."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.on_invalid == "error":
                raise InvalidUTF8Error(
                    f"{where}: invalid UTF-8 (set on_invalid_utf8=replace or skip; from the training CLI "
                    "data.preprocess.on_invalid_utf8=replace)"
                ) from None
            self.invalid += 1
            self.first = self.first or where
            return raw.decode("utf-8", errors="replace") if self.on_invalid == "replace" else None


def _text_rows(
    source: Source, starts: tuple[int, ...], first_line: int, n_lines: int, decode: Decoder
) -> Iterator[tuple[str | None, ...]]:
    files = [open(p, "rb") for p in source.paths]
    try:
        for f, off in zip(files, starts):
            f.seek(off)
        for k in range(n_lines):
            line_no = first_line + k + 1
            yield tuple(decode(f.readline().rstrip(b"\r\n"), f"{p}:{line_no}") for f, p in zip(files, source.paths))
    finally:
        for f in files:
            f.close()


def _jsonl_rows(
    source: Source, start: int, first_line: int, n_lines: int, decode: Decoder
) -> Iterator[tuple[str | None, ...]]:
    path = source.paths[0]
    with open(path, "rb") as f:
        f.seek(start)
        for k in range(n_lines):
            where = f"{path}:{first_line + k + 1}"
            text = decode(f.readline(), where)
            if text is None:
                yield (None,) * len(source.columns)
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise PreprocessError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise PreprocessError(
                    f"{where}: expected a JSON object with {list(source.columns)}, got {type(row).__name__}"
                )
            yield tuple(_cell(row.get(c, _MISSING), c, where) for c in source.columns)


_MISSING = object()


def _cell(value: object, column: str, where: str) -> str:
    if value is _MISSING:
        raise PreprocessError(f"{where}: no column {column!r} (set text_column= / pair_column=)")
    if not isinstance(value, str):
        raise PreprocessError(
            f"{where}: column {column!r} is {'null' if value is None else type(value).__name__}, expected a string"
        )
    return _LINE_BREAKS.sub(" ", value)


def _table_rows_at(source: Source, first_line: int, n_lines: int) -> Iterator[tuple[str, ...]]:
    """Rows of a Parquet file (only the row groups that overlap the range are read) or a `datasets` folder
    (memory-mapped Arrow), in batches of at most 4096 rows."""
    path = source.paths[0]
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        groups, group_row, row = [], 0, 0  # the overlapping row groups; group_row: first row of groups[0]
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row + n > first_line and row < first_line + n_lines:
                if not groups:
                    group_row = row
                groups.append(g)
            row += n
        batches = pf.iter_batches(batch_size=4096, row_groups=groups, columns=list(source.columns))
        row = group_row  # the row number of the next row the batches give
    else:
        table = _load_dataset(str(path)).data.table.select(list(source.columns))
        batches = iter(table.slice(first_line, n_lines).to_batches(max_chunksize=4096))
        row = first_line
    end = first_line + n_lines
    for batch in batches:
        cols = [batch.column(c).to_pylist() for c in source.columns]
        for values in zip(*cols):
            if row >= end:
                return
            if row >= first_line:
                where = f"{path}:{row + 1}"
                yield tuple(_cell(v, c, where) for v, c in zip(values, source.columns))
            row += 1
