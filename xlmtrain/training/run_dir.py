"""The life of a run dir around a training job: hold it, check that it is this run, archive on request, record.

`RunDir(path, rank_zero=...)` is what a job opens first (`with RunDir(...) as run:`):
1. `RunLock`: a second live training into the same dir is refused with one line (rank 0 holds it);
2. `run.start(resume, allow_changes, identity, settings)` decides, before any work, what this start is:
   - `resume="never"`: the previous run's files move to `<run_dir>/previous-<UTC time>/` (nothing is lost; the
     run's `.hydra/` snapshot and its open `train.log` stay: they are this start's), and a new run begins;
   - `resume="auto"`: a recorded run with another identity is refused (`RunIdentityError`, naming the keys and
     the ways out); the same run (or a safe / allowed change of it) resumes from its newest valid checkpoint;
     a dir with checkpoints but no `run.json` (made before run identity existed) is resumed as it was;
   - a `.ckpt` path: resumes that file, with the same identity check against the dir's record.
   Call it once with `data_known=False` before resolving the data (every key but the data content is checked),
   then again with the data fingerprint: a changed model or lr is refused before any preprocessing.
3. `with run.reporting(max_steps) as status:` around the work: `status.json` says `running`, then what
   `status.ended(state, step)` says (`finished`, `preempted`), or `stopped_on_nan` / `failed` (with the error) if
   the block raises; the lock is released when the `with RunDir` block ends, whatever happened. A start refused
   by the lock or the identity check writes nothing into the run dir.

`run.json` keeps a `run_id` drawn at the run's first start and kept by every continuation (the loggers' run
id, `run_id_for`: a resumed run appends to its wandb run; a new run, a `resume=never` restart or another sweep
job gets its own).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from xlmtrain.training.numerics import NumericsStopped
from xlmtrain.training.run_identity import (
    Continuation,
    RunRecord,
    check_continuation,
    fingerprint,
    read_record,
    record_continuation,
    write_record,
)
from xlmtrain.training.run_lock import LOCK_FILE, RunLock
from xlmtrain.training.run_status import write_status

log = logging.getLogger(__name__)

ARCHIVE_PREFIX = "previous-"
KEPT_ON_ARCHIVE = (".hydra", LOCK_FILE, f"{LOCK_FILE}.takeover")
DATA_KEY = "data.fingerprint"


@dataclass
class RunStart:
    """What `RunDir.start` decided."""

    checkpoint: str | None
    """The checkpoint to resume from (None: a new run)."""
    continuation: Continuation | None
    """Changes against the recorded run (None: a new run, or no record to compare with)."""
    archived: Path | None
    """Where `resume=never` moved the previous run's files."""
    run_id: str
    """The run's id for loggers (kept across continuations)."""


def archive_previous_run(run_dir: Path, logs: tuple[str, ...] = ()) -> Path | None:
    """Move the run dir's content to `previous-<UTC time>/` (None when there is nothing to move). `.hydra/`,
    the lock and earlier archives stay; open log files (`logs`) are copied and emptied, so the handle that
    writes them keeps writing this start's log in place."""
    movable = [p for p in sorted(run_dir.iterdir()) if p.name not in KEPT_ON_ARCHIVE
               and not p.name.startswith(ARCHIVE_PREFIX)] if run_dir.is_dir() else []  # fmt: skip
    if not any(p.name not in logs for p in movable):
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    archive = run_dir / f"{ARCHIVE_PREFIX}{stamp}"
    n = 1
    while archive.exists():
        n += 1
        archive = run_dir / f"{ARCHIVE_PREFIX}{stamp}-{n}"
    archive.mkdir()
    for path in movable:
        if path.name in logs:
            shutil.copy2(path, archive / path.name)
            with open(path, "r+") as f:
                f.truncate(0)
        else:
            os.replace(path, archive / path.name)
    return archive


def run_id_for(run_dir: str | os.PathLike, resume: str) -> str:
    """The loggers' id of the run a start will train: the recorded one when it continues (`resume` not never and
    a run.json with an id), else a new one (`<dir name>-<8 random hex>`)."""
    record = None
    if resume != "never":
        try:
            record = read_record(run_dir)
        except ValueError:
            record = None  # the start itself reports the unreadable record
    if record is not None and record.run_id:
        return record.run_id
    return f"{Path(run_dir).name or 'run'}-{uuid.uuid4().hex[:8]}"


class _Status:
    def __init__(self) -> None:
        self.state: str | None = None
        self.step: int | None = None
        self.message = ""

    def ended(self, state: str, step: int | None, message: str = "") -> None:
        self.state, self.step, self.message = state, step, message


class RunDir:
    """A run dir held by this job; see the module docstring.

    Args:
        path: the run dir (created).
        rank_zero: whether this process is global rank 0 (takes the lock, writes the records); other ranks only
            compute the same decision.
        logs: names of log files this process has open in the run dir (kept in place by `resume=never`).
    """

    def __init__(self, path: str | os.PathLike, *, rank_zero: bool = True, logs: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.rank_zero = rank_zero
        self.logs = logs
        self.lock = RunLock(self.path)
        self.record: RunRecord | None = None
        self.started: RunStart | None = None
        self.confirmed = False
        self.overrides: list[str] = []
        """Whether `start` ran with the data known (run.json written)."""

    def __enter__(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.rank_zero:
            self.lock.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.rank_zero:
            self.lock.release()

    def start(self, resume: str, allow_changes: list[str] | tuple[str, ...], identity: dict[str, Any],
              settings: dict[str, Any], *, data_known: bool = True, run_id: str | None = None,
              snapshot: Mapping[str, str] | None = None, overrides: Sequence[str] = ()) -> RunStart:  # fmt: skip
        """Decide what this start is (see the module docstring); writes `run.json` once `data_known`, and the
        `snapshot` files (name relative to the run dir -> text, e.g. `.hydra/config.yaml`) once the dir is known
        to be this run's; `overrides` (the command line's) are recorded in run.json.

        Raises:
            RunIdentityError: the dir holds another run (or `allow_changes` names unknown keys).
            FileNotFoundError: `resume` is a path that does not exist.
        """
        from xlmtrain.training.resume import find_resume_checkpoint

        archived = None
        if self.started is not None:  # second call (data now known): the archive decision is made
            archived = self.started.archived
        elif resume == "never" and self.rank_zero:
            archived = archive_previous_run(self.path, self.logs)
            if archived is not None:
                print(f"[xlmtrain] resume=never: moved the previous run to {archived}", flush=True)
        record = None if resume == "never" else read_record(self.path)
        continuation = None
        if record is not None:
            current = dict(identity) if data_known else {**identity, DATA_KEY: record.identity.get(DATA_KEY)}
            continuation = check_continuation(record, current, settings, allow_changes, run_dir=self.path)
        if resume == "never":
            checkpoint = None
        elif resume == "auto":
            found = find_resume_checkpoint(self.path / "checkpoints")
            checkpoint = str(found) if found else None
        elif Path(resume).is_file():
            checkpoint = resume
        else:
            raise FileNotFoundError(
                f"resume.checkpoint={resume}: no such checkpoint (give an existing .ckpt, or resume=auto|never)"
            )
        if record is not None and record.run_id:
            run_id = record.run_id
        elif self.started is not None:
            run_id = self.started.run_id
        else:
            run_id = run_id or run_id_for(self.path, "never")
        self.started = RunStart(checkpoint, continuation, archived, run_id)
        if self.rank_zero:
            self._write_snapshot(snapshot)
        if overrides:
            self.overrides = list(overrides)
        if data_known:
            self._write_record(record, continuation, identity, settings, checkpoint, run_id)
            self.confirmed = True
        return self.started

    def _write_record(self, record: RunRecord | None, continuation: Continuation | None, identity: dict[str, Any],
                      settings: dict[str, Any], checkpoint: str | None, run_id: str) -> None:  # fmt: skip
        if record is None:
            if checkpoint is not None:
                log.warning("%s has checkpoints but no run.json (an older run): resuming without an identity check",
                            self.path)  # fmt: skip
            new = RunRecord(dict(identity), dict(settings), [], run_id)
        else:
            step = _checkpoint_step(checkpoint)
            new = record_continuation(record, continuation, identity, settings, step)
            for key, (old, value) in {**continuation.safe, **continuation.allowed}.items():
                log.info("continuing %s with %s: %s -> %s", self.path, key, old, value)
        new.overrides = list(self.overrides)
        self.record = new
        if self.rank_zero:
            write_record(self.path, new)
            if record is not None and record.fingerprint != new.fingerprint:
                log.warning("run %s continues with allowed changes: fingerprint %s -> %s", self.path,
                            record.fingerprint, fingerprint(identity))  # fmt: skip

    def record_new_run(self, identity: dict[str, Any], settings: dict[str, Any], *, run_id: str,
                       overrides: Sequence[str] = (), snapshot: Mapping[str, str] | None = None) -> None:  # fmt: skip
        """Record a run that always starts afresh (fine-tuning): a new `run.json` and the `snapshot` files."""
        self.record = RunRecord(dict(identity), dict(settings), [], run_id, list(overrides))
        if self.rank_zero:
            self._write_snapshot(snapshot)
            write_record(self.path, self.record)

    def _write_snapshot(self, snapshot: Mapping[str, str] | None) -> None:
        for name, text in (snapshot or {}).items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(text)

    @contextmanager
    def reporting(self, *, max_steps: int | None = None, monitor: str | None = None) -> Iterator[_Status]:
        """`status.json` around the work: `running`, then the state the block gives (`status.ended(...)`), or
        `stopped_on_nan` / `failed` with the one-line error if it raises (rank 0 writes)."""
        status = _Status()
        write = self.rank_zero

        def record(state: str, step: int | None, message: str = "") -> None:
            if write:
                write_status(self.path, state, step=step, max_steps=max_steps, message=message, monitor=monitor)

        record("running", _checkpoint_step(self.started.checkpoint) if self.started else None)
        try:
            yield status
        except NumericsStopped as error:
            record("stopped_on_nan", None, str(error))
            raise
        except BaseException as error:
            record("failed", None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
            raise
        if status.state is not None:
            record(status.state, status.step, status.message)


@contextmanager
def closing_loggers(loggers: list[Any]) -> Iterator[None]:
    """End the loggers' runs when the job ends: wandb keeps one global run per process, and the next job of the
    same process (a notebook, a test) would otherwise log into this run whatever id it was given."""
    try:
        yield
    finally:
        for logger in loggers:
            experiment = getattr(logger, "_experiment", None)
            if type(logger).__name__ == "WandbLogger" and experiment is not None:
                experiment.finish()


def _checkpoint_step(checkpoint: str | None) -> int:
    if checkpoint is None:
        return 0
    from xlmtrain.training.resume import validated_step

    return validated_step(checkpoint)
