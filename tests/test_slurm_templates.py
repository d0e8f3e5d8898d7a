"""The sbatch templates on a real local SLURM: validation, a 2-task DDP job, a USR1 preemption."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from slurm_harness import REPO, LocalSlurm, local_slurm  # noqa: F401 (fixture)

from tests.cli_runs import CLI, checkpoint_steps, exported_weights, resumed_from, tiny_overrides, train_rows
from tests.conftest import CONF_DIR
from xlmtrain.training.resume import validated_step

pytestmark = pytest.mark.slurm

TEMPLATES = sorted((REPO / "slurm").glob("*.sbatch"))
# This machine is one node with 2 CPUs and no GPU: shrink each template's allocation to fit, keep all else.
FIT_LOCAL = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=00:10:00"]
SRUN_SCRIPT = REPO / "slurm" / "srun_xlmtrain.sh"
# Templates that train (they launch srun_xlmtrain.sh); preprocess_array.sbatch is CPU-only preprocessing.
TRAINING_TEMPLATES = [t for t in TEMPLATES if SRUN_SCRIPT.name in t.read_text()]


def test_templates_are_shipped() -> None:
    assert {t.name for t in TEMPLATES} == {
        "pretrain_single_node.sbatch",
        "pretrain_multi_node.sbatch",
        "finetune.sbatch",
        "preprocess_array.sbatch",
    }


@pytest.mark.slow  # needs the local SLURM, which the fixture installs with apt as root: not in `make test`
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_template_passes_sbatch_test_only(local_slurm: LocalSlurm, template: Path) -> None:
    result = local_slurm.run("sbatch", "--test-only", *FIT_LOCAL, str(template), "+recipe=tlm", check=False)
    assert result.returncode == 0, result.stderr
    assert "to start at" in result.stderr


def test_training_templates_are_found() -> None:
    assert {t.name for t in TRAINING_TEMPLATES} >= {"pretrain_single_node.sbatch", "pretrain_multi_node.sbatch"}


@pytest.mark.parametrize("template", TRAINING_TEMPLATES, ids=lambda t: t.name)
def test_templates_ask_for_one_gpu_per_task(template: Path) -> None:
    lines = template.read_text().splitlines()
    tasks = [line.split("=")[1] for line in lines if line.startswith("#SBATCH --ntasks-per-node=")]
    gpus = [line.split("=")[1] for line in lines if line.startswith("#SBATCH --gpus-per-node=")]
    assert len(tasks) == len(gpus) == 1 and tasks == gpus, (tasks, gpus)


GPU_ALLOCATIONS = {
    "gpus_on_node": {"SLURM_GPUS_ON_NODE": "4"},
    "gpus_per_node_typed": {"SLURM_GPUS_PER_NODE": "h100:2"},
    "cuda_visible_devices": {"CUDA_VISIBLE_DEVICES": "0,1"},
}
CPU_ALLOCATIONS = {
    "nothing": {},
    "zero_gpus": {"SLURM_GPUS_ON_NODE": "0"},
    "no_dev_files": {"CUDA_VISIBLE_DEVICES": "NoDevFiles"},
}


def _srun_args(tmp_path: Path, allocation: dict[str, str], *user: str) -> list[str]:
    """What `srun_xlmtrain.sh` passes to srun, with a fake `srun` on PATH that prints its arguments."""
    import os
    import subprocess

    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update({"PATH": f"{fake.parent}:{env['PATH']}", "SLURM_JOB_ID": "7", "SLURM_NNODES": "1",
                "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "n1", **allocation})  # fmt: skip
    out = subprocess.run(["bash", str(SRUN_SCRIPT), *user], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize("allocation", list(GPU_ALLOCATIONS), ids=str)
def test_srun_script_trains_on_gpus_in_bf16_when_the_allocation_has_gpus(tmp_path: Path, allocation: str) -> None:
    args = _srun_args(tmp_path, GPU_ALLOCATIONS[allocation], "+recipe=tlm")
    assert args[-6:] == ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "+recipe=tlm", "trainer.devices=2",
                         "trainer.num_nodes=1", "trainer.strategy=ddp"], args  # fmt: skip


@pytest.mark.parametrize("allocation", list(CPU_ALLOCATIONS), ids=str)
def test_srun_script_trains_on_cpus_in_fp32_without_gpus(tmp_path: Path, allocation: str) -> None:
    args = _srun_args(tmp_path, CPU_ALLOCATIONS[allocation], "+recipe=tlm")
    assert args[-6:-4] == ["trainer.accelerator=cpu", "trainer.precision=32-true"], args


def test_srun_script_lets_the_user_override_the_device(tmp_path: Path) -> None:
    args = _srun_args(tmp_path, GPU_ALLOCATIONS["gpus_on_node"], "trainer.precision=32-true")
    # Hydra applies overrides in order: the user's comes after the script's choice and wins.
    assert args.index("trainer.precision=32-true") > args.index("trainer.precision=bf16-mixed")


def submit(slurm: LocalSlurm, prep: Path, run_dir: Path, *overrides: str) -> str:
    """Submit the single-node template running the real CLI on a tiny TLM config; return the job id."""
    run_dir.mkdir(parents=True)
    result = slurm.run(
        "sbatch", "--parsable", *FIT_LOCAL, f"--chdir={run_dir}", f"--output={run_dir}/%x-%j.out",
        str(REPO / "slurm" / "pretrain_single_node.sbatch"), *tiny_overrides(prep, run_dir), *overrides,
        extra_env={"XLMTRAIN_CMD": " ".join(CLI), "XLMTRAIN_ROOT": str(REPO)},
    )  # fmt: skip
    return result.stdout.strip().split(";")[0]


def job_log(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in run_dir.glob("*.out"))


@pytest.mark.slow
def test_two_task_job_trains_and_exports(local_slurm: LocalSlurm, synthetic_prep: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = submit(local_slurm, synthetic_prep, run_dir, "trainer.max_steps=12", "trainer.val_check_interval=6")
    fields = local_slurm.wait_for(job, 300, JobState={"COMPLETED", "FAILED", "CANCELLED"})
    log = job_log(run_dir)
    assert fields["JobState"] == "COMPLETED", log
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "distributed_backend=gloo" in log, log
    # No GPU in this allocation: the script chose the CPU in fp32 by itself (the test passes no accelerator).
    assert "0 GPU(s) per node (trainer.accelerator=cpu trainer.precision=32-true)" in log, log
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, 13))
    assert validated_step(run_dir / "checkpoints" / "last.ckpt") == 12
    assert set(exported_weights(run_dir)) and (run_dir / "model" / "config.json").is_file()


@pytest.mark.slow
def test_usr1_preemption_requeues_and_resumes(local_slurm: LocalSlurm, synthetic_prep: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    steps = 150
    job = submit(local_slurm, synthetic_prep, run_dir, f"trainer.max_steps={steps}", "trainer.val_check_interval=50")
    deadline = time.monotonic() + 240
    while not any(r["step"] >= 4 for r in train_rows(run_dir)):
        assert time.monotonic() < deadline, job_log(run_dir)
        assert local_slurm.job_fields(job)["JobState"] in {"PENDING", "RUNNING"}, job_log(run_dir)
        time.sleep(0.2)
    local_slurm.run("scancel", "--signal=USR1", job)  # to the job steps (the srun tasks), as --signal=USR1@90 does

    local_slurm.wait_for(job, 120, JobState="PENDING", Restarts="1")
    before = checkpoint_steps(run_dir)
    # No `scontrol update StartTime=now`: a requeued job restarted before its revoked credential expires
    # (AuthInfo=cred_expire=10 in slurm/local_slurm.sh) is killed with "Job credential revoked"; it restarts
    # by itself ~11 s after the requeue.
    fields = local_slurm.wait_for(job, 400, JobState={"COMPLETED", "FAILED", "CANCELLED"})
    log = job_log(run_dir)
    assert fields["JobState"] == "COMPLETED", log
    assert fields["Restarts"] == "1", fields
    saved = run_dir / "checkpoints" / "last.ckpt"
    preempted_at = int(re.search(rf"SIGUSR1 at step (\d+): saved {saved}; SLURM job {job} requeued", log).group(1))
    assert 3 < preempted_at < steps, log
    assert before[resumed_from(log, run_dir)] == preempted_at, log
    # Every step logged once across both attempts, and the finished run exported its model.
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, steps + 1))
    assert validated_step(saved) == steps
    assert set(exported_weights(run_dir))


def test_submitit_launcher_config_composes() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=["+launcher=slurm", "+recipe=tlm", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.signal_delay_s, launcher.max_num_timeout, launcher.tasks_per_node, launcher.gpus_per_node) == (
        90, 3, 8, 8)  # fmt: skip
    # submitit owns requeue: the callback only saves; DDP with Lightning's layout taken from the launcher.
    assert cfg.callbacks.preemption.requeue is False and cfg.trainer.strategy == "ddp"
    assert cfg.trainer._get_node("devices")._value() == "${hydra:launcher.tasks_per_node}"
    assert cfg.trainer._get_node("num_nodes")._value() == "${hydra:launcher.nodes}"
