"""Find the checkpoint a (re)started run should resume from, skipping damaged files."""

from __future__ import annotations

import csv
import io
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from xlmtrain.training.checkpoint_io import atomic_write_bytes, load_checkpoint_file
from xlmtrain.training.run_identity import apply_optimizer_settings, optimizer_hyperparameters

log = logging.getLogger(__name__)


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated, damaged or not a Lightning checkpoint."""


def validated_step(path: str | os.PathLike) -> int:
    """Return the ``global_step`` stored in the Lightning checkpoint ``path`` after checking it.

    Checks, in order: the zip container is complete (a truncated write loses the central directory
    at the end), every member's CRC matches (``torch.load`` itself never checks them, so a flipped
    byte in a tensor would load silently), and the pickled metadata loads with
    ``weights_only=True`` and has Lightning's ``global_step`` and ``state_dict``. Tensor storages are
    memory-mapped, so besides the CRC pass (one sequential read) this costs little memory.

    Raises:
        CorruptCheckpointError: naming the file and what is wrong with it.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
        if bad_member is not None:
            raise CorruptCheckpointError(f"{path}: CRC mismatch in archive member {bad_member!r}")
        checkpoint = load_checkpoint_file(path, mmap=True)
    except CorruptCheckpointError:
        raise
    except Exception as error:  # any failure to read means "do not resume from this file"
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CorruptCheckpointError(f"{path}: {type(error).__name__}: {first_line}") from error
    missing = [key for key in ("global_step", "state_dict") if key not in checkpoint]
    if missing:
        raise CorruptCheckpointError(f"{path}: not a Lightning checkpoint (missing {', '.join(missing)})")
    return int(checkpoint["global_step"])


def find_resume_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """Return the newest valid checkpoint in ``ckpt_dir``, or ``None`` if there is none.

    Candidates are all ``*.ckpt`` files directly in ``ckpt_dir`` (``last.ckpt``, Lightning's
    ``hpc_ckpt_N.ckpt``, step/epoch checkpoints, the preemption checkpoint); hidden files, i.e. the
    temporary files of an interrupted atomic write, are ignored. "Newest" means the highest
    ``global_step`` stored in the file, ties broken by modification time. Every invalid candidate is
    logged as a warning naming the file and the error, and never returned. A symlink (Lightning's
    ``save_last="link"``) is returned as its target.

    Args:
        ckpt_dir: the run's checkpoint directory; a missing directory means a fresh run.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    best: tuple[int, float, Path] | None = None
    seen: set[Path] = set()
    for candidate in sorted(ckpt_dir.glob("*.ckpt")):
        if candidate.name.startswith("."):
            continue
        target = candidate.resolve()
        if target in seen or not target.is_file():
            continue
        seen.add(target)
        try:
            step = validated_step(target)
        except CorruptCheckpointError as error:
            log.warning("skipping corrupt checkpoint %s (%s)", candidate, error)
            continue
        key = (step, target.stat().st_mtime, target)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


def truncate_metrics_csv(path: str | os.PathLike, resume_step: int) -> int:
    """Drop the rows of a Lightning ``metrics.csv`` logged at ``step >= resume_step``; return how many.

    A run killed after its last checkpoint (step ``resume_step``) may have flushed rows for the steps
    it then trained; the resumed run logs those steps again, so without this they would appear twice.
    Rows carry the optimizer step they belong to (a training row of step ``s`` is the ``s``-th update, the
    validation after ``s`` updates also says ``s``, as the checkpoint of that moment does); the resumed run
    redoes steps ``resume_step + 1`` on, i.e. rows ``step > resume_step``, and not the validation of
    ``resume_step`` itself, which is kept.
    The file is rewritten atomically; a missing file is left missing.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    kept = [row for row in rows if not row.get("step") or int(float(row["step"])) <= resume_step]
    if len(kept) == len(rows):
        return 0
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_bytes(out.getvalue().encode(), path)
    return len(rows) - len(kept)


class ResumeAgreement(Callback):
    """Stop every rank with one error if the ranks would resume from different checkpoints.

    Each rank picks its checkpoint before `fit` (Lightning fixes `ckpt_path` before the process group exists, so
    rank 0's choice cannot be handed to the others in time); on a shared file system seen at different moments
    (NFS attribute caches, a checkpoint written by a previous attempt still settling) they could differ, and
    ranks would then train from different weights and batch positions. At `setup`, with the process group up,
    rank 0's choice is broadcast and every rank compares it with its own; any difference stops all of them
    before a checkpoint is loaded.
    """

    def __init__(self, ckpt_path: str | os.PathLike | None) -> None:
        self.ckpt_path = None if ckpt_path is None else str(ckpt_path)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Compare this rank's choice with rank 0's; raise RuntimeError on every rank if any rank differs."""
        if trainer.world_size == 1:
            return
        chosen = trainer.strategy.broadcast(self.ckpt_path, src=0)
        if not trainer.strategy.reduce_boolean_decision(chosen == self.ckpt_path, all=True):
            raise RuntimeError(
                f"ranks disagree on the checkpoint to resume from: rank 0 chose {chosen}, rank {trainer.global_rank} "
                f"{self.ckpt_path}; give resume.checkpoint=<path to one .ckpt> to choose for all ranks"
            )


class OptimizerSettingsOnResume(Callback):
    """Trainer callback: on a resumed fit, the config's optimizer hyperparameters (`optim.optimizer` without
    `_target_`/`_partial_`) replace the checkpoint's from the resume step on (see `apply_optimizer_settings`).
    Lightning restores optimizer and scheduler states before `on_train_start`, so this runs after them."""

    def __init__(self, hyperparameters: Mapping[str, Any]) -> None:
        self.hyperparameters = optimizer_hyperparameters(hyperparameters)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        schedulers = trainer.lr_scheduler_configs
        for i, optimizer in enumerate(trainer.optimizers):
            scheduler = schedulers[i].scheduler if i < len(schedulers) else None
            apply_optimizer_settings(optimizer, scheduler, self.hyperparameters)
