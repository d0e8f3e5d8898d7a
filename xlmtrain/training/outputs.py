"""Outputs that never destroy inputs: the checks and atomic writes shared by `xlmtrain.embed` and `xlmtrain.convert`.

A command refuses, before any work, an output that is one of its inputs or contains one (writing there
would destroy what it reads), and an output that already exists unless `--overwrite` is given. The output
is then written aside (`.<name>.tmp-<pid>-<random>` in the same folder) and moved into place only when
complete, so a failure or a kill leaves the previous output (or none), never half of one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xlmtrain.training.checkpoint_io import TMP_MARKER


class OutputError(ValueError):
    """An output that would destroy an input, or replace an existing file without `--overwrite`."""


def _same_or_inside(inner: Path, outer: Path) -> bool:
    """Whether `inner` is `outer` or lies inside it (symlinks and hard links resolved)."""
    if inner.exists() and outer.exists() and os.path.samefile(inner, outer):
        return True
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def check_output(output: Path, inputs: Iterable[Path | None], *, overwrite: bool, option: str = "output") -> None:
    """Refuse `output` if it is or contains one of `inputs`, or exists and `overwrite` is false.

    Raises:
        OutputError: naming the output, the input it would destroy, or the `--overwrite` way out.
    """
    for source in inputs:
        if source is not None and _same_or_inside(Path(source), output):
            what = "is" if _same_or_inside(output, Path(source)) else "contains"
            raise OutputError(f"{option} {output} {what} the input {source}: refusing to write over it")
    if output.exists() and not overwrite:
        raise OutputError(f"{option} {output} already exists; pass --overwrite to replace it")


def _tmp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_output_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it takes `path`'s place (an existing `path` is
    moved aside first and deleted after), on failure it is removed and `path` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    old = _tmp_sibling(path) if path.exists() else None
    try:
        yield tmp
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
