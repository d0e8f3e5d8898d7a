"""The run-dir lock: a live holder refuses a second training, a dead one is taken over, a requeued job takes its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from xlmtrain.training.run_lock import (
    LOCK_FILE,
    RunLock,
    RunLockedError,
    launcher_is_rank_zero,
    process_start_time,
)

HOLD = """
import sys, time
from xlmtrain.training.run_lock import RunLock
print("imported", flush=True)
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(run_dir: Path, **fields: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = {"pid": 1, "host": socket.gethostname(), "started": "then", "slurm_job_id": None, "slurm_restart": None,
              "process_start": None, "token": "x", **fields}  # fmt: skip
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def test_acquire_records_the_holder_and_release_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    with RunLock(tmp_path / "run") as lock:
        saved = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert saved["pid"] == lock.holder.pid and saved["host"] == socket.gethostname()
        assert saved["slurm_job_id"] == "4242"
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_live_holder_refuses_a_second_training(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert [proc.stdout.readline().strip() for _ in range(2)] == ["imported", "held"]
        with pytest.raises(RunLockedError) as error:
            RunLock(tmp_path).acquire()
        message = str(error.value)
        assert f"pid {proc.pid} on {socket.gethostname()}" in message and "\n" not in message
        assert "run_name=" in message
    finally:
        proc.kill()
        proc.wait()
    # Killed: its lock is stale now and is taken over.
    lock = RunLock(tmp_path).acquire()
    assert lock.took_over is not None and lock.took_over.pid == proc.pid
    lock.release()


def test_stale_locks_are_taken_over(tmp_path: Path) -> None:
    _write_lock(tmp_path / "dead", pid=_dead_pid())
    assert RunLock(tmp_path / "dead").acquire().took_over is not None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / LOCK_FILE).write_text("")  # a writer killed between create and write
    assert RunLock(tmp_path / "empty").acquire().took_over is not None
    # A live pid that is another process than the one that locked (pid reuse): its start time differs.
    _write_lock(tmp_path / "reused", pid=1, process_start="1")
    assert RunLock(tmp_path / "reused").acquire().took_over is not None


def test_other_host_or_live_pid_is_not_taken_over(tmp_path: Path) -> None:
    _write_lock(tmp_path / "remote", pid=_dead_pid(), host="another-node")
    with pytest.raises(RunLockedError, match="on another-node"):
        RunLock(tmp_path / "remote").acquire()
    _write_lock(tmp_path / "init", pid=1)  # pid 1 is alive; no start time recorded: cannot call it stale
    with pytest.raises(RunLockedError):
        RunLock(tmp_path / "init").acquire()


def test_a_requeued_slurm_job_takes_its_own_lock_from_another_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    _write_lock(tmp_path, pid=1, host="node-a", slurm_job_id="77", slurm_restart="0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(RunLockedError):  # same incarnation, other node: really another live process
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert RunLock(tmp_path).acquire().took_over.host == "node-a"


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    _write_lock(tmp_path, pid=12345, token="someone-else")
    lock.release()
    assert (tmp_path / LOCK_FILE).exists()


def test_take_overs_are_serialised(tmp_path: Path) -> None:
    """Two processes finding the same stale lock must not both take it: the take-over holds an flock, so a
    taker waits while another is inside; once let in, it sees the new live holder and refuses."""
    import fcntl
    import select

    _write_lock(tmp_path, pid=_dead_pid())
    with open(tmp_path / f"{LOCK_FILE}.takeover", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # we are "inside" a take-over
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "imported"
            ready, _, _ = select.select([proc.stdout], [], [], 3.0)
            assert not ready, "took the lock while another take-over was in progress"
            _write_lock(tmp_path, pid=os.getpid(), process_start=process_start_time(os.getpid()), token="me")
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
        try:
            assert proc.wait(timeout=60) == 1  # refused: the lock is ours (live) now
        finally:
            proc.kill()


def test_only_global_rank_zero_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not launcher_is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert not launcher_is_rank_zero()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert launcher_is_rank_zero()
