"""Elastic exact resume: a run checkpointed with 2 DDP processes and resumed with 1 (and 1 -> 2) continues with the
stream choices and batches of an uninterrupted 2-process run, and its per-step losses within 1e-5 relative.

Why it holds: batch sizes are global and every rank builds the same global batch `k` from counters (stream
choice seeded by `(seed, k)`, masking by `(seed, k, 1)`, one global data order), then trains its slice of rows
(`xlmtrain/objectives/data.py`); the checkpoint's batch state is therefore the same for any number of
processes. What does not carry over is dropout: the checkpoint holds one generator per rank, and a run resumed
with another world size cannot continue them (`training/rng.py`), so with dropout on the masks after the resume
are fresh ones: the same data and schedule, statistically (not bitwise) the same run. Hence dropout 0 here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.cli_runs import final_weights, resumed_from, run, tiny_overrides, train_rows
from tests.test_ddp import CPU_DDP

pytestmark = pytest.mark.slow

STEPS, HALF = 12, 6
TIMEOUT = 1800  # seconds per run: a 2-process run takes ~1 min alone, far longer on a shared, loaded machine
SETTINGS = ["model.dropout=0", "model.attention_dropout=0", f"checkpoint.every_n_train_steps={HALF}",
            f"trainer.val_check_interval={HALF}", "export=false"]  # fmt: skip


def _args(prep: Path, run_dir: Path, steps: int, processes: int) -> list[str]:
    world = [*CPU_DDP, "trainer.devices=2"] if processes == 2 else []
    return [*tiny_overrides(prep, run_dir, "mlm_tlm"), *SETTINGS, f"trainer.max_steps={steps}", *world]


def _streams(run_dir: Path) -> list[str]:
    """The stream trained at each step: the per-stream loss column equal to `train_loss` (mlm_tlm's lambdas are 1,
    so `train_loss` is the drawn stream's CE; the other streams' columns repeat values of earlier steps)."""
    names = []
    for row in train_rows(run_dir):
        drawn = [k for k, v in row.items() if k.endswith("_loss") and k != "train_loss" and v == row["train_loss"]]
        assert len(drawn) == 1, row
        names.append(drawn[0])
    return names


@pytest.fixture(scope="module")
def uninterrupted(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("elastic_reference") / "run"
    run(_args(synthetic_prep, run_dir, STEPS, 2), run_dir.parent, timeout=TIMEOUT)
    return run_dir


def _resumed_with(prep: Path, run_dir: Path, before: int, after: int) -> Path:
    """HALF steps with `before` processes, then the same run continued to STEPS with `after` processes."""
    run(_args(prep, run_dir, HALF, before), run_dir.parent, timeout=TIMEOUT)
    out = run(_args(prep, run_dir, STEPS, after), run_dir.parent, timeout=TIMEOUT)
    assert resumed_from(out, run_dir).name == "last.ckpt", out
    assert ("GLOBAL_RANK: 1, MEMBER: 2/2" in out) == (after == 2), out
    return run_dir


def _assert_continues(run_dir: Path, reference: Path) -> None:
    ours, theirs = train_rows(run_dir), train_rows(reference)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, STEPS + 1))
    # The same stream at every step, all three of them drawn (bit-identical choices: names, not numbers).
    assert _streams(run_dir) == _streams(reference)
    assert set(_streams(reference)) == {"train_io_mlm_loss", "train_vo_mlm_loss", "train_io-vo_tlm_loss"}
    assert [r["lr"] for r in ours] == [r["lr"] for r in theirs]  # the schedule continues by step
    torch.testing.assert_close(torch.tensor([r["train_loss"] for r in ours]),
                               torch.tensor([r["train_loss"] for r in theirs]), rtol=1e-5, atol=0)  # fmt: skip
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (run_dir, reference))
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["xlmtrain_batches"] == b["xlmtrain_batches"]  # the same data positions: the same batches were read
    wa, wb = final_weights(run_dir), final_weights(reference)
    for key in wb:
        # k_lin.bias: its gradient is rounding noise (a constant added to every key cancels in the softmax,
        # `tests/test_ddp_sharding.py::test_key_bias_gradient_is_rounding_noise`), which Adam scales to lr-sized
        # steps; two summation orders move it differently, so it is not compared.
        if not key.endswith("k_lin.bias"):
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


def test_two_processes_resumed_with_one_continue_the_run(synthetic_prep: Path, tmp_path: Path,
                                                         uninterrupted: Path) -> None:  # fmt: skip
    run_dir = _resumed_with(synthetic_prep, tmp_path / "run", before=2, after=1)
    # Steps before the checkpoint: the same command as the reference's, so bit for bit.
    assert train_rows(run_dir)[:HALF] == train_rows(uninterrupted)[:HALF]
    _assert_continues(run_dir, uninterrupted)


def test_one_process_resumed_with_two_continues_the_run(synthetic_prep: Path, tmp_path: Path,
                                                        uninterrupted: Path) -> None:  # fmt: skip
    _assert_continues(_resumed_with(synthetic_prep, tmp_path / "run", before=1, after=2), uninterrupted)
