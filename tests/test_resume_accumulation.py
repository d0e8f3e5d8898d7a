"""Resume with gradient accumulation > 1 (and dropout on): 10 + 10 optimizer steps with a restart in between give
the weights, batch state and losses of 20 uninterrupted steps, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_pretrain import _cfg, _losses
from xlmtrain.__main__ import run as run_job

COMMON = ("trainer.accumulate_grad_batches=2", "export=false", "trainer.val_check_interval=1000",
          "checkpoint.every_n_train_steps=10", "model.dropout=0.1", "model.attention_dropout=0.1")  # fmt: skip


@pytest.mark.slow
def test_resume_with_accumulation_is_exact(synthetic_prep: Path, tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_job(_cfg(synthetic_prep, whole, "mlm_tlm", "trainer.max_steps=20", *COMMON))
    run_job(_cfg(synthetic_prep, split, "mlm_tlm", "trainer.max_steps=10", *COMMON))
    run_job(_cfg(synthetic_prep, split, "mlm_tlm", "trainer.max_steps=20", *COMMON))
    a = torch.load(whole / "checkpoints/last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 20
    # 2 micro-batches per step: the batch counter is at 40, not 20 (a resume that counted steps would be off).
    assert a["xlmtrain_batches"]["index"] == b["xlmtrain_batches"]["index"] == 40
    assert a["xlmtrain_batches"] == b["xlmtrain_batches"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], rtol=0, atol=0, msg=key)
    assert _losses(split) == _losses(whole)
