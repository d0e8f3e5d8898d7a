"""Run `python -m xlmtrain` as a real subprocess with a tiny configuration (shared by the DDP, kill/resume
and SLURM tests), and read back what the run wrote."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from xlmtrain.training.report import read_metrics
from xlmtrain.training.resume import validated_step

CLI = [sys.executable, "-m", "xlmtrain"]


def tiny_overrides(prep: Path, run_dir: Path, recipe: str = "tlm") -> list[str]:
    """A 2-layer dim-32 model on the preprocessed folder `prep`, logging every step into `run_dir`."""
    return [
        f"+recipe={recipe}", f"data.dir={prep}", f"run_dir={run_dir}", "model.emb_dim=32", "model.n_heads=2",
        "data.batching.batch_size=8", "data.batching.bptt=32", "data.batching.valid_max_batches=2",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "optim.optimizer.lr=3e-3", "optim.scheduler.warmup_steps=5",
    ]  # fmt: skip


def clean_env() -> dict[str, str]:
    """This environment without SLURM's variables (a test may itself run inside a SLURM job)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def start(args: list[str], cwd: Path, *, new_session: bool = False) -> subprocess.Popen:
    """Start `python -m xlmtrain ARGS` with stdout and stderr merged into `.stdout`; `new_session`: in its own
    process group, so `os.killpg(proc.pid, ...)` reaches every process of the run (DDP ranks included)."""
    return subprocess.Popen(CLI + args, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=new_session)  # fmt: skip


def run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run `python -m xlmtrain ARGS` to completion; return its output, failing with it on a non-zero exit."""
    proc = start(args, cwd)
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out
    return out


def train_rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv rows that carry a training loss, in file order."""
    path = run_dir / "metrics.csv"
    return [r for r in read_metrics(path) if "train_loss" in r] if path.is_file() else []


def valid_rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv rows of validation runs, in file order."""
    return [r for r in read_metrics(run_dir / "metrics.csv") if any(k.startswith("valid_") for k in r)]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model state at the end of the run (from checkpoints/last.ckpt)."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]


def exported_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The exported model/model.safetensors tensors."""
    return load_file(run_dir / "model" / "model.safetensors")


def checkpoint_steps(run_dir: Path) -> dict[Path, int]:
    """The step of every checkpoint in the run dir now (files are overwritten later: read before a restart)."""
    return {path: validated_step(path) for path in (run_dir / "checkpoints").glob("*.ckpt")}


def resumed_from(out: str, run_dir: Path) -> Path:
    """The checkpoint a restarted run printed it resumes from."""
    found = re.search(rf"resuming from ({re.escape(str(run_dir / 'checkpoints'))}/\S+\.ckpt)", out)
    assert found, out
    return Path(found.group(1))
