"""Atomic checkpoint writes and allow-listed checkpoint reads for Lightning.

A checkpoint is serialised into memory, written to a temporary file in the destination directory,
fsync'ed, and moved over the destination with ``os.replace`` (atomic on POSIX), after which the
directory entry itself is fsync'ed. A process killed at any moment therefore leaves either the old
complete file or the new complete file under the checkpoint's name, plus at most a stray
``.<name>.tmp-*`` file that resume discovery ignores.

Reads always use ``torch.load(weights_only=True)``. Lightning checkpoints hold more than tensors:
loop/callback state uses ``collections.defaultdict`` (hyperparameters are plain dicts: the jobs receive
typed settings, never Hydra containers). Those classes are allow-listed for the duration of a load through
``torch.serialization.safe_globals`` (a context manager: nothing is added to torch's global
allowlist). Any other global in a checkpoint is refused with torch's error naming it.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

# Classes a Lightning checkpoint of this project may reference besides tensors and primitives.
# All are plain data containers: unpickling them runs no user code.
SAFE_CHECKPOINT_GLOBALS: list[Any] = [
    collections.defaultdict,
    collections.OrderedDict,
    typing.Any,
    int,
    float,
    str,
    bool,
    list,
    dict,
    tuple,
    set,
    pathlib.PosixPath,
]

TMP_MARKER = ".tmp-"
"""Infix of the temporary files written next to a checkpoint (``.<name>.tmp-XXXX``)."""


def atomic_write_bytes(data: bytes | memoryview, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never observed partially written.

    The bytes go to a temporary file in the same directory (so the rename cannot cross file
    systems), which is fsync'ed, renamed over ``path`` and followed by an fsync of the directory so
    the rename itself survives a power loss. The temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = path.parent / f".{path.name}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # os.open with mode 0o666 keeps the umask's permissions (mkstemp would force 0o600).
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and the project's allow-listed classes.

    Args:
        path: checkpoint file written by ``torch.save`` (Lightning's ``.ckpt``).
        map_location: as for ``torch.load``.
        mmap: map tensor storages instead of reading them (cheap metadata reads of big files).

    Raises:
        FileNotFoundError: the file does not exist.
        pickle.UnpicklingError: the file references a class outside ``SAFE_CHECKPOINT_GLOBALS``.
        RuntimeError: the file is not a readable torch archive (e.g. truncated).
    """
    with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
        return torch.load(Path(path), map_location=map_location, weights_only=True, mmap=mmap)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` with atomic, fsync'ed writes and allow-listed ``weights_only`` reads.

    Use as ``Trainer(plugins=[AtomicCheckpointIO()])``. Lightning's own ``TorchCheckpointIO``
    already renames through fsspec but neither fsyncs nor restricts what loading may unpickle.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        """Serialise ``checkpoint`` and atomically replace ``path`` with it.

        Raises:
            TypeError: ``storage_options`` was given (this plugin has none).
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(buffer.getbuffer(), path)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load ``path`` with ``weights_only=True`` (see ``load_checkpoint_file``).

        Raises:
            FileNotFoundError: the checkpoint does not exist.
            ValueError: ``weights_only=False`` was requested; this project never unpickles
                arbitrary objects.
        """
        if weights_only is False:
            raise ValueError(f"refusing weights_only=False for {path}: extend SAFE_CHECKPOINT_GLOBALS instead")
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint_file(path, map_location=map_location)
