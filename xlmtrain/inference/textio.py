"""Reading the plain-text inputs of the inference commands: UTF-8, one sentence per line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def read_lines(path: str | Path) -> Iterator[str]:
    """Lines of a UTF-8 file without their line ending; ValueError naming file and line if not UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid UTF-8 ({err.reason})") from None


def count_lines(path: str | Path) -> int:
    """Number of lines (a last line without newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")
