"""Numerics guardrails: bad steps are judged, never checkpointed, recorded, skipped; the guard gives up after N."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR
from xlmtrain.__main__ import pretrain_settings
from xlmtrain.jobs.pretrain import setup
from xlmtrain.training.checkpoint_io import load_checkpoint_file
from xlmtrain.training.numerics import (
    CHECKPOINT_KEY,
    BadStep,
    NumericsGuard,
    NumericsRollback,
    NumericsStopped,
    RollbackPlan,
    read_numerics,
)

TRAINER = SimpleNamespace(precision="32-true", global_step=10)


def _pending(
    guard: NumericsGuard, step: int, stream: str, loss: float, norm: float | None = 1.0, batch: int = -1
) -> None:
    guard._pending.append((step, step if batch < 0 else batch, stream, stream.split("_")[0], torch.tensor(loss),
                           None if norm is None else torch.tensor(norm)))  # fmt: skip


def test_judge_names_non_finite_values_and_spikes_over_the_streams_own_median() -> None:
    guard = NumericsGuard(spike_factor=3.0, window=5, min_history=3)
    assert guard.judge("en_mlm", math.nan, 1.0) == "non-finite loss"
    assert guard.judge("en_mlm", 2.0, math.inf) == "non-finite gradient norm"
    assert guard.judge("en_mlm", 100.0, 1.0) is None  # no history yet: early training falls fast
    guard.history["en_mlm"] = __import__("collections").deque([2.0, 2.2, 1.8], maxlen=5)
    assert guard.judge("en_mlm", 5.9, 1.0) is None
    assert guard.judge("en_mlm", 6.1, 1.0).startswith("loss spike (3.0x the running median 2")
    assert guard.judge("en-fr_tlm", 6.1, 1.0) is None  # another stream has its own level
    assert NumericsGuard(spike_factor=None, min_history=1).judge("x", 1e9, 1.0) is None
    with pytest.raises(ValueError, match="spike_factor"):
        NumericsGuard(spike_factor=0.5)


def test_check_reads_pending_steps_in_order_and_stops_at_the_first_bad_one() -> None:
    guard = NumericsGuard(spike_factor=3.0, min_history=2)
    for step, loss in enumerate([4.0, 3.0, 2.0]):
        _pending(guard, step, "io_mlm", loss)
    _pending(guard, 3, "io-vo_tlm", 9.0, batch=17)
    _pending(guard, 4, "io_mlm", 9.5, batch=18)  # a spike: 9.5 > 3 x median(4, 3, 2)
    _pending(guard, 5, "io_mlm", math.nan, batch=19)  # fallout of the bad step: not the one to skip
    with pytest.raises(NumericsRollback) as error:
        guard.check(TRAINER)
    bad = error.value.bad
    assert (bad.step, bad.batch, bad.stream, bad.langs) == (4, 18, "io_mlm", "io")
    assert "loss spike" in bad.reason
    assert list(guard.history["io_mlm"]) == [4.0, 3.0, 2.0] and list(guard.history["io-vo_tlm"]) == [9.0]
    assert guard._pending == []


def test_inf_gradient_under_fp16_is_the_scalers_business() -> None:
    guard = NumericsGuard()
    _pending(guard, 0, "io_mlm", 2.0, math.inf)
    guard.check(SimpleNamespace(precision="16-mixed"))
    _pending(guard, 1, "io_mlm", 2.0, math.inf)
    with pytest.raises(NumericsRollback, match="non-finite gradient norm"):
        guard.check(TRAINER)


def test_checkpoint_write_is_refused_for_unchecked_bad_steps_or_nan_weights() -> None:
    guard = NumericsGuard()
    module = torch.nn.Linear(2, 2)
    _pending(guard, 9, "io_mlm", math.nan)
    checkpoint: dict = {}
    with pytest.raises(NumericsRollback, match="non-finite loss"):
        guard.on_save_checkpoint(TRAINER, module, checkpoint)
    assert CHECKPOINT_KEY not in checkpoint
    _pending(guard, 9, "io_mlm", 2.5)
    guard.on_save_checkpoint(TRAINER, module, checkpoint)
    assert checkpoint[CHECKPOINT_KEY] == {"checked_step": 10, "history": {"io_mlm": [2.5]}}
    restored = NumericsGuard()
    restored.on_load_checkpoint(TRAINER, module, checkpoint)
    assert list(restored.history["io_mlm"]) == [2.5]
    with torch.no_grad():
        module.weight[0, 0] = math.inf
    with pytest.raises(NumericsRollback, match="non-finite parameters"):
        guard.on_save_checkpoint(TRAINER, module, {})


def test_rollback_plan_records_every_skip_and_stops_after_max_rollbacks(tmp_path: Path) -> None:
    plan = RollbackPlan(tmp_path, max_rollbacks=2)
    for i, batch in enumerate([5, 9]):
        plan.roll_back(NumericsRollback(BadStep(batch, batch, "io-vo_tlm", "io-vo", math.nan, None, "non-finite loss")),
                       resume_step=4 + i)  # fmt: skip
    assert plan.skip_batches == {5, 9}
    with pytest.raises(NumericsStopped) as error:
        plan.roll_back(NumericsRollback(BadStep(12, 12, "io-vo_tlm", "io-vo", 40.0, 2.0, "loss spike")), resume_step=8)
    assert "\n" not in str(error.value) and "stopped after 2 numerics rollbacks" in str(error.value)
    saved = json.loads((tmp_path / "numerics.json").read_text())["skipped"]
    assert [(s["batch"], s["stream"], s["langs"], s["rolled_back_to"]) for s in saved] == [
        (5, "io-vo_tlm", "io-vo", 4), (9, "io-vo_tlm", "io-vo", 5), (12, "io-vo_tlm", "io-vo", 8)]  # fmt: skip
    # A later start of the run skips them all, and counts its own rollbacks afresh.
    again = RollbackPlan(tmp_path, max_rollbacks=2)
    assert again.skip_batches == {5, 9, 12} and again.rollbacks == 0
    assert read_numerics(tmp_path / "none").skipped == []


def _cfg(prep: Path, run_dir: Path, *extra: str):
    from tests.cli_runs import tiny_overrides

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("xlmtrain", overrides=[*tiny_overrides(prep, run_dir, "mlm_tlm"), *extra])


def test_skipped_batches_leave_every_other_batch_unchanged(synthetic_prep: Path, tmp_path: Path) -> None:
    module, _, _ = setup(pretrain_settings(_cfg(synthetic_prep, tmp_path)))
    source = module.train_batches
    plain = [(item.index, item.stream, item.batch.input_ids) for _, item in zip(range(12), source)]
    source.skip_batches = frozenset({3, 7})
    skipped = [(item.index, item.stream, item.batch.input_ids) for _, item in zip(range(10), source)]
    expected = [p for p in plain if p[0] not in (3, 7)]
    assert [s[:2] for s in skipped] == [e[:2] for e in expected]
    assert all(torch.equal(s[2], e[2]) for s, e in zip(skipped, expected))


@pytest.mark.parametrize("every", [1, 1000])
def test_a_nan_step_never_reaches_a_checkpoint(synthetic_prep: Path, tmp_path: Path, every: int) -> None:
    """A real Lightning run poisoned before batch 6 (the 7th update): fit stops with NumericsRollback naming step 7,
    batch 6 and its stream, right at that step on CPU, whether or not a checkpoint write follows it; with
    checkpoints every step the newest is step 6 (the state before the bad step), and every checkpoint is finite."""
    run_dir = tmp_path / "run"
    cfg = _cfg(synthetic_prep, run_dir, "trainer.max_steps=20", f"checkpoint.every_n_train_steps={every}",
               "+callbacks.fault._target_=tests.numerics_faults.PoisonAtBatch", "+callbacks.fault.batches=[6]")  # fmt: skip
    module, trainer, _ = setup(pretrain_settings(cfg))
    with pytest.raises(NumericsRollback) as error:
        trainer.fit(module)
    bad = error.value.bad
    assert (bad.step, bad.batch, bad.reason) == (7, 6, "non-finite loss")
    assert bad.stream in ("io_mlm", "vo_mlm", "io-vo_tlm") and bad.langs in ("io", "vo", "io-vo")
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint = load_checkpoint_file(path)
        assert checkpoint["global_step"] <= 6, path
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()), path
        assert checkpoint[CHECKPOINT_KEY]["checked_step"] == checkpoint["global_step"]
    assert trainer.global_step == 7  # stopped right after the bad step's update, before the next batch
    if every == 1:
        assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "grad_norm" in header and {"train_io_mlm_loss", "train_io-vo_tlm_loss"} <= set(header)
