"""Session fixture that runs a real one-machine SLURM (slurm/local_slurm.sh) for the SLURM tests.

Import the fixture into a test module (``from slurm_harness import local_slurm``). It starts the
cluster once per session in a private state directory, always stops it at the end, and skips the
requesting tests, printing why, when the daemons cannot start (not root, no apt, no munge...).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "slurm" / "local_slurm.sh"


@dataclass(frozen=True)
class LocalSlurm:
    """A running local cluster: ``env`` has ``SLURM_CONF`` for every client command."""

    env: dict[str, str]

    def run(
        self, *cmd: str, check: bool = True, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster and return its completed process."""
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check, timeout=120)

    def job_fields(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (``JobState``, ``Restarts``, ``ExitCode``...)."""
        text = self.run("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for(self, job_id: str, timeout: float, **expected: str | set[str]) -> dict[str, str]:
        """Poll ``scontrol show job`` until every field matches (a value or a set of values).

        Fails the test with the last fields seen after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job_fields(job_id)
            if all(fields.get(k) in (v if isinstance(v, set) else {v}) for k, v in expected.items()):
                return fields
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id}: wanted {expected} within {timeout} s, last seen {fields}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """Start slurm/local_slurm.sh for the session (skip with the reason if it cannot start)."""
    state_dir = tmp_path_factory.mktemp("local-slurm")
    env = {**os.environ, "LOCAL_SLURM_DIR": str(state_dir), "SLURM_CONF": str(state_dir / "slurm.conf")}
    try:
        started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
        if started.returncode != 0:
            reason = (started.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"local SLURM could not start ({SCRIPT.name} start exited {started.returncode}): {reason}")
        yield LocalSlurm(env=env)
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
