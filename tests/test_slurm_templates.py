"""The sbatch templates on a real local SLURM: validation, a 2-task DDP job, a USR1 preemption."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from slurm_harness import REPO, LocalSlurm, local_slurm  # noqa: F401 (fixture)

pytestmark = pytest.mark.slurm

TEMPLATES = sorted((REPO / "slurm").glob("*.sbatch"))
# This machine is one node with 2 CPUs: shrink each template's allocation to fit, keep all else.
FIT_LOCAL = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=00:10:00"]
TINY_TRAIN = f"python {REPO / 'tests' / 'preemption_tiny_train.py'}"


def test_templates_are_shipped() -> None:
    assert {t.name for t in TEMPLATES} == {"pretrain_single_node.sbatch", "pretrain_multi_node.sbatch", "finetune.sbatch"}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_template_passes_sbatch_test_only(local_slurm: LocalSlurm, template: Path) -> None:
    result = local_slurm.run("sbatch", "--test-only", *FIT_LOCAL, str(template), "+recipe=tlm", check=False)
    assert result.returncode == 0, result.stderr
    assert "to start at" in result.stderr


def submit(slurm: LocalSlurm, run_dir: Path, *overrides: str) -> str:
    """Submit the single-node template running the tiny script; return the job id."""
    run_dir.mkdir(parents=True)
    result = slurm.run(
        "sbatch", "--parsable", f"--chdir={run_dir}", f"--output={run_dir}/%x-%j.out",
        str(REPO / "slurm" / "pretrain_single_node.sbatch"), f"run_dir={run_dir}", *overrides,
        extra_env={"XLMTRAIN_CMD": TINY_TRAIN, "XLMTRAIN_ROOT": str(REPO), "PYTHONPATH": str(REPO)},
    )
    return result.stdout.strip().split(";")[0]


def read_steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def job_log(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in run_dir.glob("*.out"))


@pytest.mark.slow
def test_two_task_job_trains_on_both_ranks(local_slurm: LocalSlurm, tmp_path: Path) -> None:
    job = submit(local_slurm, tmp_path / "run", "trainer.max_steps=12", "step_sleep=0")
    fields = local_slurm.wait_for(job, 180, JobState={"COMPLETED", "FAILED", "CANCELLED"})
    log = job_log(tmp_path / "run")
    assert fields["JobState"] == "COMPLETED", log
    for rank in (0, 1):
        result = json.loads((tmp_path / "run" / f"result.rank{rank}.json").read_text())
        assert result == {**result, "global_step": 12, "world_size": 2, "preempted": False}
        assert [s["step"] for s in read_steps(tmp_path / "run" / f"steps.rank{rank}.jsonl")] == list(range(1, 13))
    # DDP keeps the replicas identical: both ranks end with the same weights.
    weights = [json.loads((tmp_path / "run" / f"result.rank{r}.json").read_text())["weight"] for r in (0, 1)]
    assert weights[0] == weights[1]


@pytest.mark.slow
def test_usr1_preemption_requeues_and_resumes(local_slurm: LocalSlurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = submit(local_slurm, run_dir, "trainer.max_steps=40", "step_sleep=0.2")
    deadline = time.monotonic() + 180
    while min(len(read_steps(run_dir / f"steps.rank{r}.jsonl")) for r in (0, 1)) < 5:
        assert time.monotonic() < deadline, job_log(run_dir)
        time.sleep(0.3)
    local_slurm.run("scancel", "--signal=USR1", job)  # to the job steps (the srun tasks), as --signal=USR1@90 does

    local_slurm.wait_for(job, 60, JobState="PENDING", Restarts="1")
    local_slurm.run("scontrol", "update", f"jobid={job}", "StartTime=now")  # skip the requeue hold
    fields = local_slurm.wait_for(job, 240, JobState={"COMPLETED", "FAILED", "CANCELLED"})
    log = job_log(run_dir)
    assert fields["JobState"] == "COMPLETED", log
    assert fields["Restarts"] == "1", fields
    assert f"SLURM job {job} requeued" in log

    for rank in (0, 1):
        steps = read_steps(run_dir / f"steps.rank{rank}.jsonl")
        first = [s["step"] for s in steps if s["restart"] == 0]
        second = [s["step"] for s in steps if s["restart"] == 1]
        # The first attempt stopped right after the step it checkpointed; the second continued from
        # the next step (nothing repeated, nothing skipped) to max_steps.
        assert first == list(range(1, len(first) + 1)) and len(first) < 40, log
        assert second == list(range(first[-1] + 1, 41)), log
        result = json.loads((run_dir / f"result.rank{rank}.json").read_text())
        assert result["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
        assert result["global_step"] == 40


def test_submitit_launcher_yaml_composes(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    (tmp_path / "launcher").mkdir()
    (tmp_path / "launcher" / "slurm.yaml").write_text((REPO / "slurm" / "hydra_launcher_submitit_slurm.yaml").read_text())
    (tmp_path / "main.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        launcher = compose("main", overrides=["+launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.signal_delay_s, launcher.max_num_timeout, launcher.tasks_per_node) == (90, 3, 8)
