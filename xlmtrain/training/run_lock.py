"""A live training holds its run dir: `<run_dir>/.lock` names its pid, host, start time and SLURM job id.

`RunLock(run_dir).acquire()` creates the file with `O_EXCL`. If it already exists, the holder is judged:
- same host and the pid is gone (or is another process now: its start time differs) -> stale, taken over;
- same SLURM job id as ours and another SLURM_RESTART_COUNT -> the previous incarnation of this requeued
  job (possibly on another node) -> stale, taken over;
- otherwise it is live (or on another host, where we cannot tell) -> `RunLockedError`, one line naming the
  holder and how to remove a lock that is really stale.
Take-overs are serialised by an `flock` on `<run_dir>/.lock.takeover`, so two processes finding the same
stale lock cannot both win. `release()` removes the file only while it is still ours.

No torch or Lightning here: `python -m xlmtrain.runs` reads locks and must start quickly.

Only one process of a training holds the lock: global rank 0 (read from the launcher's environment before
any process group exists, `launcher_is_rank_zero()`); other ranks of the same job do not take it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run dir."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run dir."""

    pid: int
    host: str
    started: str
    slurm_job_id: str | None = None
    slurm_restart: str | None = None
    """SLURM_RESTART_COUNT: a requeued job has the same id and a higher count."""
    process_start: str | None = None
    """The pid's start time in clock ticks since boot (/proc/<pid>/stat field 22): tells a reused pid apart."""
    token: str = ""

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"pid {self.pid} on {self.host}{job}, since {self.started}"


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` needs for this job (`<array id>_<task id>` for array jobs); None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def launcher_is_rank_zero() -> bool:
    """Whether this process is global rank 0 as the launcher set it (RANK, SLURM_PROCID, or Lightning's own
    subprocess launcher's LOCAL_RANK + NODE_RANK); True when started by hand."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name]) == 0
    return all(os.environ.get(name, "0") in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK"))


def process_start_time(pid: int) -> str | None:
    """Start time of `pid` (Linux /proc), None where unavailable or the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    return stat[stat.rindex(")") + 2 :].split()[19]


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """The lock of one run dir; a context manager (`with RunLock(run_dir):`)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.holder: LockHolder | None = None
        self.took_over: LockHolder | None = None
        """The stale holder replaced by `acquire`, if any."""

    def _me(self) -> LockHolder:
        return LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            slurm_job_id=slurm_job_id(),
            slurm_restart=os.environ.get("SLURM_RESTART_COUNT", "0") if slurm_job_id() else None,
            process_start=process_start_time(os.getpid()),
            token=uuid.uuid4().hex,
        )

    def read(self) -> LockHolder | None:
        """The current holder, None without a lock file; an unreadable file reads as a holder of pid 0."""
        try:
            data = json.loads(self.path.read_text())
            return LockHolder(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # A writer killed between create and write leaves an empty file: nobody can hold that lock.
            return LockHolder(pid=0, host=socket.gethostname(), started="?")

    def is_stale(self, holder: LockHolder) -> bool:
        """Whether `holder` cannot be a live training of this run dir (see the module docstring)."""
        me_job = slurm_job_id()
        # The same job after a requeue is a new incarnation; within one incarnation, judge the process.
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        if me_job is not None and holder.slurm_job_id == me_job and holder.slurm_restart != restart:
            return True
        if holder.host != socket.gethostname():
            return False
        if holder.pid <= 0 or not pid_alive(holder.pid):
            return True
        if holder.pid == os.getpid():
            return False
        start = process_start_time(holder.pid)
        return holder.process_start is not None and start is not None and start != holder.process_start

    def acquire(self) -> RunLock:
        """Take the run dir. Raises `RunLockedError` (one line) if a live process holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = self._me()
        payload = json.dumps(asdict(me)).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._take_over_if_stale(payload)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
        self.holder = me
        return self

    def _take_over_if_stale(self, payload: bytes) -> None:
        with open(self.run_dir / f"{LOCK_FILE}.takeover", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            holder = self.read()
            if holder is not None and not self.is_stale(holder):
                raise RunLockedError(
                    f"{self.run_dir} is in use by another training ({holder.describe()}); wait for it, use another "
                    f"run_name=... / run_dir=..., or, if that process is really gone, delete {self.path}"
                )
            tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, self.path)
            self.took_over = holder

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self.holder is None:
            return
        current = self.read()
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        self.holder = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
