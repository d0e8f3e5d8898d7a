"""DDP with dropout on: what 2 CPU processes compute, exactly, and that a SIGKILLed 2-process run restarted with the
same command continues bit for bit.

With dropout, a 2-process run cannot equal a 1-process run bit for bit: each rank draws its own dropout masks.
The exact guarantee is the 1-process computation of the global batch with rank r's rows dropped out by rank r's
generator (rank 0 keeps the seeded stream, rank r > 0 is reseeded with `seed + r` at train start:
`tests/test_ddp_sharding.py::test_ranks_get_their_own_dropout_stream`). `test_two_ranks_are_one_process_replaying_
each_ranks_rows_with_its_generator` checks it on a real run: from a mid-run checkpoint (weights, batch state,
every rank's generator), a single process replaying both ranks' rows, each with that rank's saved generator,
gets the loss the 2 processes logged for that step.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.cli_runs import (
    checkpoint_steps,
    final_weights,
    resumed_from,
    run,
    start,
    tiny_overrides,
    train_rows,
    valid_rows,
)
from tests.conftest import CONF_DIR
from tests.test_ddp import CPU_DDP
from xlmtrain.__main__ import pretrain_settings
from xlmtrain.jobs.pretrain import setup
from xlmtrain.objectives.pretrain import STATE_KEY
from xlmtrain.training.report import read_metrics
from xlmtrain.training.resume import validated_step
from xlmtrain.training.rng import CPU_KEY

pytestmark = pytest.mark.slow

MAX_STEPS, EVERY, KILL_AFTER = 24, 6, 8  # the kill lands past the step-6 checkpoint, 16 steps before the end
TIMEOUT = 1800  # seconds per run: a 2-process run takes ~1 min alone, far longer on a shared, loaded machine
DROPOUT = ["model.dropout=0.1", "model.attention_dropout=0.1"]  # the tiny model has none by default
SETTINGS = [f"trainer.max_steps={MAX_STEPS}", f"checkpoint.every_n_train_steps={EVERY}",
            "trainer.val_check_interval=12", "export=false", *DROPOUT]  # fmt: skip


def _args(prep: Path, run_dir: Path) -> list[str]:
    return [*tiny_overrides(prep, run_dir, "mlm_tlm"), *SETTINGS, *CPU_DDP, "trainer.devices=2"]


@pytest.fixture(scope="module")
def reference(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process run."""
    run_dir = tmp_path_factory.mktemp("ddp_reference") / "run"
    run(_args(synthetic_prep, run_dir), run_dir.parent, timeout=TIMEOUT)
    return run_dir


@pytest.fixture(scope="module")
def killed(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 2-process run SIGKILLed (both ranks, as a node failure would) after step KILL_AFTER was logged."""
    run_dir = tmp_path_factory.mktemp("ddp_killed") / "run"
    proc = start(_args(synthetic_prep, run_dir), run_dir.parent, new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not any(r["step"] >= KILL_AFTER for r in train_rows(run_dir)):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"run ended or stalled before step {KILL_AFTER}:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    # What the killed run left, kept apart from the restart (which overwrites both).
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", run_dir.parent / "killed.ckpt")
    shutil.copy(run_dir / "metrics.csv", run_dir.parent / "killed_metrics.csv")
    return run_dir


def _replayed_loss(prep: Path, work: Path, checkpoint: dict, generators: list[torch.Tensor]) -> float:
    """The training loss of the batch after `checkpoint`, computed in THIS process: rank r's rows of the global
    batch (the job's own batch source, configured as rank r of 2) through the checkpoint's weights in training
    mode, with torch's generator set to `generators[r]`; the ranks' CE sums over the global target count."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=[*tiny_overrides(prep, work, "mlm_tlm"), *SETTINGS])
    module, _, _ = setup(pretrain_settings(cfg))
    module.load_state_dict(checkpoint["state_dict"])
    module.train()
    shares = []
    for rank, generator in enumerate(generators):
        module.train_batches.configure(rank=rank, world_size=len(generators))
        module.train_batches.restore(checkpoint[STATE_KEY])
        item = next(iter(module.train_batches))
        torch.set_rng_state(generator)
        with torch.no_grad():
            shares.append(module.target_losses(item.batch).sum() / item.n_targets)
    return float(item.lambda_ * torch.stack(shares).sum())


def test_two_ranks_are_one_process_replaying_each_ranks_rows_with_its_generator(
    synthetic_prep: Path, tmp_path: Path, killed: Path
) -> None:
    checkpoint = torch.load(killed.parent / "killed.ckpt", weights_only=True, map_location="cpu")
    step = int(checkpoint["global_step"])
    rows = read_metrics(killed.parent / "killed_metrics.csv")
    logged = {int(r["step"]): r["train_loss"] for r in rows if "train_loss" in r}[step + 1]  # the update after it
    generators = [state.clone() for state in checkpoint[CPU_KEY]]  # rows of one (2, n) tensor: own storage
    assert len(generators) == 2 and not torch.equal(generators[0], generators[1]), "one dropout stream per rank"

    replayed = _replayed_loss(synthetic_prep, tmp_path / "a", checkpoint, generators)
    assert replayed == pytest.approx(logged, rel=1e-6, abs=0), (replayed, logged)
    # The check can fail: rank 1's rows dropped out with rank 0's generator give another loss.
    same_stream = _replayed_loss(synthetic_prep, tmp_path / "b", checkpoint, [generators[0], generators[0]])
    assert same_stream != pytest.approx(logged, rel=1e-4), (same_stream, logged)


def test_sigkilled_two_process_run_restarted_is_bit_identical(
    synthetic_prep: Path, killed: Path, reference: Path
) -> None:
    saved_step = validated_step(killed / "checkpoints" / "last.ckpt")
    assert saved_step % EVERY == 0 and EVERY <= saved_step < MAX_STEPS
    assert max(r["step"] for r in train_rows(killed)) >= KILL_AFTER  # rows the restart must not duplicate

    before = checkpoint_steps(killed)
    out = run(_args(synthetic_prep, killed), killed.parent, timeout=TIMEOUT)
    assert before[resumed_from(out, killed)] == saved_step
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out, out
    ours, theirs = ([(r["step"], r["train_loss"], r["lr"]) for r in train_rows(d)] for d in (killed, reference))
    assert [r[0] for r in ours] == list(range(1, MAX_STEPS + 1)), "every step logged exactly once"
    assert ours == theirs  # bit for bit, dropout on: every rank's generator was restored
    assert valid_rows(killed) == valid_rows(reference)
    a, b = final_weights(killed), final_weights(reference)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
