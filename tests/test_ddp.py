"""DDP on 2 CPU processes (gloo) takes the same optimizer steps as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.cli_runs import (
    CLI,
    clean_env,
    final_weights,
    run,
    tiny_overrides,
    train_rows,
    valid_rows,
)

RUN = ["trainer.max_steps=12", "trainer.val_check_interval=6", "model.dropout=0", "model.attention_dropout=0",
       "export=false"]  # fmt: skip
CPU_DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true"]  # trainer=ddp alone: GPUs, bf16


@pytest.mark.slow
def test_two_processes_match_one_process_step_for_step(synthetic_prep: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    run([*tiny_overrides(synthetic_prep, one, "mlm_tlm"), *RUN], tmp_path)
    out = run([*tiny_overrides(synthetic_prep, two, "mlm_tlm"), *RUN, *CPU_DDP, "trainer.devices=2"], tmp_path)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out and "distributed_backend=gloo" in out, out

    a, b = train_rows(one), train_rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    # The same loss every step to float tolerance (the 3 streams of mlm_tlm give losses far apart, so a
    # different stream or different rows on either rank would show; `test_ddp_sharding` checks both directly).
    torch.testing.assert_close(torch.tensor([r["train_loss"] for r in b]), torch.tensor([r["train_loss"] for r in a]),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    # Validation is sharded over ranks and reduced token-weighted: the same numbers.
    va, vb = valid_rows(one), valid_rows(two)
    assert len(va) == len(vb) == 2 and set(va[-1]) == set(vb[-1])
    for key in va[-1]:
        assert vb[-1][key] == pytest.approx(va[-1][key], rel=1e-4), key
    wa, wb = final_weights(one), final_weights(two)
    assert wa.keys() == wb.keys()
    for key in wa:
        # The key bias cancels in the softmax: its gradient is rounding noise (zero in exact arithmetic,
        # `test_ddp_sharding.py::test_key_bias_gradient_is_rounding_noise`), which Adam scales up to lr-sized
        # steps, so it differs between any two summation orders and is not compared.
        if not key.endswith("k_lin.bias"):
            torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_training_steps_run_no_collective_before_backward_and_all_on_the_root_device(
    synthetic_prep: Path, tmp_path: Path
) -> None:
    """Every torch.distributed collective of a 2-process gloo run, logged by `tests/collective_probe`: none inside
    `training_step` (DDP's gradient buckets aside, which are C++), one all-reduce of the loss after each backward,
    the preemption agreement every `check_every_n_steps`, and every input on the strategy's root device."""
    steps, poll = 12, 5
    env = {**clean_env(), "XLMTRAIN_COLLECTIVE_LOG": str(tmp_path / "collectives")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "collective_probe"), env.get("PYTHONPATH", "")])
    args = [*tiny_overrides(synthetic_prep, tmp_path / "run", "mlm_tlm"), *RUN[1:], f"trainer.max_steps={steps}",
            "trainer.val_check_interval=1000", *CPU_DDP, "trainer.devices=2",
            f"callbacks.preemption.check_every_n_steps={poll}"]  # fmt: skip
    proc = subprocess.run(CLI + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = sorted(tmp_path.glob("collectives.*"))
    assert len(logs) == 2, logs
    for log in logs:
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert all(device == "cpu" for c in calls for device in c["devices"]), calls  # gloo: the root device is cpu
        assert not [c for c in calls if "training_step" in c["stack"]], "a collective before backward"
        after_backward = [c for c in calls if "on_after_backward" in c["stack"]]
        assert [c["name"] for c in after_backward] == ["all_reduce"] * steps
        polls = [c for c in calls if "reduce_boolean_decision" in c["stack"] and "on_train_batch_end" in c["stack"]]
        assert len([c for c in polls if c["name"] == "all_reduce"]) == steps // poll, polls


@pytest.mark.slow
def test_validation_with_fewer_batches_than_ranks_matches_one_process(synthetic_prep: Path, tmp_path: Path) -> None:
    """valid_max_batches=1 under 2 ranks: rank 1 validates nothing, yet computes (and syncs) every metric like
    rank 0, so the collectives stay matched and the numbers are the 1-process ones."""
    one, two = tmp_path / "one", tmp_path / "two"
    short = [*RUN[1:], "trainer.max_steps=4", "trainer.val_check_interval=4", "data.batching.valid_max_batches=1"]
    run([*tiny_overrides(synthetic_prep, one, "mlm_tlm"), *short], tmp_path)
    run([*tiny_overrides(synthetic_prep, two, "mlm_tlm"), *short, *CPU_DDP, "trainer.devices=2"], tmp_path, timeout=180)
    va, vb = valid_rows(one), valid_rows(two)
    assert len(va) == len(vb) == 1 and set(va[0]) == set(vb[0]) and any(k.endswith("_ppl") for k in va[0])
    for key in va[0]:
        assert vb[0][key] == pytest.approx(va[0][key], rel=1e-4), key


ALIGN = ["objective.streams=[{objective:tlm,langs:io-vo},{objective:trans_rank,langs:io-vo},"
         "{objective:xlco,langs:io-vo}]", "objective.alignment.xlco_queue_size=20", "callbacks=default"]  # fmt: skip


@pytest.mark.slow
def test_alignment_streams_with_gathered_negatives_match_one_process(synthetic_prep: Path, tmp_path: Path) -> None:
    """trans_rank and xlco rank each pair against every rank's pairs (all_gather with gradient): 2 processes with 4
    pairs each take the 1-process steps of the 8-pair batch, and XLCo's queue holds the same keys."""
    one, two = tmp_path / "one", tmp_path / "two"
    run([*tiny_overrides(synthetic_prep, one, "tlm_align"), *RUN, *ALIGN], tmp_path, timeout=900)
    run([*tiny_overrides(synthetic_prep, two, "tlm_align"), *RUN, *ALIGN, *CPU_DDP, "trainer.devices=2"], tmp_path,
        timeout=900)  # fmt: skip
    a, b = train_rows(one), train_rows(two)
    assert {k for r in a for k in r if k.endswith(("trans_rank_loss", "xlco_loss"))} == {
        "train_io-vo_trans_rank_loss",
        "train_io-vo_xlco_loss",
    }
    torch.testing.assert_close(torch.tensor([r["train_loss"] for r in b]), torch.tensor([r["train_loss"] for r in a]),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    va, vb = valid_rows(one), valid_rows(two)
    for key in va[-1]:
        assert vb[-1][key] == pytest.approx(va[-1][key], rel=1e-4), key
    wa, wb = final_weights(one), final_weights(two)
    assert "xlco.queue" in wa and int(wa["xlco.queue_filled"]) == 20
    for key in wa:
        if not key.endswith("k_lin.bias"):  # see above
            torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-5, msg=key)
