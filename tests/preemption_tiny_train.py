"""A tiny standalone Lightning run wired like the xlmtrain CLI will be, for the preemption/SLURM tests.

    python tests/preemption_tiny_train.py run_dir=DIR trainer.max_steps=40 [step_sleep=0.1]
        [trainer.devices=2 trainer.num_nodes=1 trainer.strategy=ddp]

Arguments are Hydra-style ``key=value`` overrides, so the sbatch templates can run this script in
place of ``python -m xlmtrain`` (they append the ``trainer.*`` overrides).

Uses ``AtomicCheckpointIO``, ``PreemptionCallback`` and ``find_resume_checkpoint`` exactly as the
real CLI should: resume from ``DIR/checkpoints`` if it holds a valid checkpoint, exit 0 after a
preemption. Under ``srun`` it runs DDP (gloo, CPU) with one process per SLURM task. Each rank appends
one JSON line per optimizer step to ``DIR/steps.rank<R>.jsonl`` and writes ``DIR/result.rank<R>.json``
at the end, which is what the tests inspect.
"""

from __future__ import annotations

import sys
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from xlmtrain.training.checkpoint_io import AtomicCheckpointIO
from xlmtrain.training.preemption import PreemptionCallback, cluster_environment_plugins
from xlmtrain.training.resume import find_resume_checkpoint


class TinyRegression(pl.LightningModule):
    """A 4->1 linear regression that logs every optimizer step of every rank to a JSONL file."""

    def __init__(self, run_dir: Path, step_sleep: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.run_dir = run_dir
        self.step_sleep = step_sleep

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        time.sleep(self.step_sleep)  # gives the tests time to signal mid-run
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_train_batch_end(self, outputs: dict, batch: list[torch.Tensor], batch_idx: int) -> None:
        record = {
            "step": self.trainer.global_step,
            "loss": float(outputs["loss"]),
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
            "world_size": self.trainer.world_size,
        }
        with open(self.run_dir / f"steps.rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


OPTIONS = {
    "run_dir": Path,
    "step_sleep": float,
    "trainer.max_steps": int,
    "trainer.devices": int,
    "trainer.num_nodes": int,
    "trainer.strategy": str,
}


def parse_overrides(argv: list[str]) -> dict:
    """Parse ``key=value`` arguments of the keys in ``OPTIONS``; an unknown key is an error."""
    values: dict = {"step_sleep": 0.1, "trainer.max_steps": 40, "trainer.devices": 1,
                    "trainer.num_nodes": 1, "trainer.strategy": "auto"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise SystemExit(f"unknown argument {arg!r}: expected key=value with key in {sorted(OPTIONS)}")
        values[key] = OPTIONS[key](value)
    if "run_dir" not in values:
        raise SystemExit("missing run_dir=<dir>")
    return values


def main() -> None:
    args = parse_overrides(sys.argv[1:])
    run_dir = args["run_dir"]
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"

    pl.seed_everything(0, verbose=False)
    x = torch.randn(4096, 4)
    data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))
    preemption = PreemptionCallback(ckpt_dir)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args["trainer.devices"],
        num_nodes=args["trainer.num_nodes"],
        strategy=args["trainer.strategy"],
        plugins=[AtomicCheckpointIO(), *cluster_environment_plugins()],
        callbacks=[preemption],
        max_steps=args["trainer.max_steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    resume_from = find_resume_checkpoint(ckpt_dir)
    module = TinyRegression(run_dir, args["step_sleep"])
    trainer.fit(module, DataLoader(data, batch_size=8), ckpt_path=resume_from)
    result = {
        "global_step": trainer.global_step,
        "preempted": preemption.preempted,
        "resumed_from": None if resume_from is None else str(resume_from),
        "world_size": trainer.world_size,
        "weight": module.layer.weight.detach().flatten().tolist(),
    }
    (run_dir / f"result.rank{trainer.global_rank}.json").write_text(json.dumps(result))
    # After a preemption the process ends here with status 0, as the CLI will.


if __name__ == "__main__":
    main()
