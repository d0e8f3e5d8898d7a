"""Killing the real training CLI and starting the same command again continues the run bit for bit.

Every run here is `python -m xlmtrain` in a subprocess, with dropout on (so the RNG state matters), several
streams (stream positions, masking counters), warmup (LR scheduler) and Adam (optimizer state); each is
compared with one uninterrupted run: per-step losses in metrics.csv and the exported weights, exactly.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.cli_runs import (
    checkpoint_steps,
    exported_weights,
    final_weights,
    resumed_from,
    run,
    start,
    tiny_overrides,
    train_rows,
    valid_rows,
)
from xlmtrain.training.resume import validated_step

MAX_STEPS, EVERY = 96, 8
# Long enough that a kill sent at step ~11 (or ~3) lands well before the end even when steps take milliseconds;
# which checkpoint it follows then depends on the machine's speed, so the tests accept any multiple of EVERY.
STEPS = [f"trainer.max_steps={MAX_STEPS}", f"checkpoint.every_n_train_steps={EVERY}", "trainer.val_check_interval=32"]
# The tiny model has no dropout by default (conf/model/tiny.yaml): switch it on, or the RNG state would not matter.
DROPOUT = ["model.dropout=0.1", "model.attention_dropout=0.1"]

pytestmark = pytest.mark.slow


def _args(prep: Path, run_dir: Path) -> list[str]:
    return [*tiny_overrides(prep, run_dir, "mlm_tlm"), *STEPS, *DROPOUT]


# TLM beside both alignment objectives: pair batches, XLCo's momentum encoder and a queue that wraps (8 pairs x 2
# sides = 16 keys per XLCo step into 20 slots), all of which the checkpoint must carry.
ALIGN = ["objective.streams=[{objective:tlm,langs:io-vo},{objective:trans_rank,langs:io-vo},"
         "{objective:xlco,langs:io-vo}]", "objective.alignment.xlco_queue_size=20", "callbacks=default"]  # fmt: skip


ALIGN_STEPS = 40  # shorter than the others: three streams, two of them two encoder passes per step


def _align_args(prep: Path, run_dir: Path) -> list[str]:
    steps = [
        f"trainer.max_steps={ALIGN_STEPS}",
        f"checkpoint.every_n_train_steps={EVERY}",
        "trainer.val_check_interval=16",
    ]
    return [*tiny_overrides(prep, run_dir, "tlm_align"), *steps, *ALIGN, *DROPOUT]


@pytest.fixture(scope="module")
def reference(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(_args(synthetic_prep, run_dir), run_dir.parent)
    return run_dir


@pytest.fixture(scope="module")
def align_reference(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("align_reference") / "run"
    run(_align_args(synthetic_prep, run_dir), run_dir.parent, timeout=900)
    return run_dir


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    """Poll metrics.csv (written row by row) until the run logged training step `step`."""
    deadline = time.monotonic() + timeout
    while not any(r["step"] >= step for r in train_rows(run_dir)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"run ended or stalled before step {step}:\n{proc.communicate()[0]}")
        time.sleep(0.05)


def _assert_same_run(run_dir: Path, reference: Path, max_steps: int = MAX_STEPS) -> None:
    # Only the columns logged every step: Lightning repeats a per-stream loss column's last value on the
    # steps of other streams, so those cells depend on when the process started.
    ours, theirs = ([(r["step"], r["train_loss"], r["lr"]) for r in train_rows(d)] for d in (run_dir, reference))
    assert [r[0] for r in ours] == list(range(1, max_steps + 1)), "every step logged exactly once"
    assert ours == theirs  # bit for bit
    assert valid_rows(run_dir) == valid_rows(reference)
    a, b = exported_weights(run_dir), exported_weights(reference)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_sigkill_after_a_checkpoint_then_restart_is_bit_identical(synthetic_prep: Path, tmp_path: Path,
                                                                 reference: Path) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    proc = start(_args(synthetic_prep, run_dir), tmp_path)
    _wait_for_step(proc, run_dir, 11)  # past the step-8 checkpoint and validation, before the next one
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    saved_step = validated_step(run_dir / "checkpoints" / "last.ckpt")
    assert saved_step % EVERY == 0 and EVERY <= saved_step < MAX_STEPS
    assert max(r["step"] for r in train_rows(run_dir)) >= 11  # rows the restart must not duplicate
    assert not (run_dir / "model").exists()

    before = checkpoint_steps(run_dir)
    out = run(_args(synthetic_prep, run_dir), tmp_path)
    assert before[resumed_from(out, run_dir)] == saved_step  # last.ckpt or the best checkpoint of the same step
    _assert_same_run(run_dir, reference)


def test_sigkill_with_alignment_streams_then_restart_is_bit_identical(synthetic_prep: Path, tmp_path: Path,
                                                                     align_reference: Path) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    proc = start(_align_args(synthetic_prep, run_dir), tmp_path)
    _wait_for_step(proc, run_dir, 11, timeout=900)  # 3 streams, 2 of them two encoder passes: slower steps
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    saved_step = validated_step(run_dir / "checkpoints" / "last.ckpt")
    assert saved_step % EVERY == 0 and EVERY <= saved_step < ALIGN_STEPS
    run(_align_args(synthetic_prep, run_dir), tmp_path, timeout=900)
    _assert_same_run(run_dir, align_reference, ALIGN_STEPS)
    # Every stream was trained, and XLCo's state (momentum weights, queue, ring position) is continued exactly.
    losses = {k for r in train_rows(run_dir) for k in r if k.startswith("train_io-vo_")}
    assert losses == {"train_io-vo_tlm_loss", "train_io-vo_trans_rank_loss", "train_io-vo_xlco_loss"}, losses
    ours, theirs = final_weights(run_dir), final_weights(align_reference)
    xlco = [k for k in theirs if k.startswith("xlco.")]
    assert "xlco.queue" in xlco and "xlco.queue_next" in xlco and "xlco.key_encoder.embeddings.weight" in xlco
    assert int(theirs["xlco.queue_filled"]) == 20
    for key in xlco:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # SIGINT: Ctrl-C does the same
def test_sigterm_saves_exits_zero_and_the_next_start_resumes(synthetic_prep: Path, tmp_path: Path, reference: Path,
                                                            signum: signal.Signals) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    proc = start(_args(synthetic_prep, run_dir), tmp_path)
    _wait_for_step(proc, run_dir, 3)
    proc.send_signal(signum)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    saved = run_dir / "checkpoints" / "last.ckpt"
    step = validated_step(saved)
    assert 3 < step < MAX_STEPS
    assert f"{signum.name} at step {step}: saved {saved}; run the same command again to resume from it" in out
    assert not (run_dir / "model").exists(), "a preempted run does not export"
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    # last.ckpt written once at the signal (no last-v1.ckpt), besides any best-*.ckpt of earlier validations.
    assert "last.ckpt" in names and all(n == "last.ckpt" or n.startswith("best-") for n in names), names
    assert "xlmtrain run summary" not in out

    before = checkpoint_steps(run_dir)
    out = run(_args(synthetic_prep, run_dir), tmp_path)
    assert before[resumed_from(out, run_dir)] == step
    _assert_same_run(run_dir, reference)
