"""Learning-rate schedules against values computed by hand from their formulas (XLM's `adam_inverse_sqrt`:
xlm/optim.py `AdamInverseSqrtWithWarmup.get_lr_for_step`), at chosen steps, through the scheduler that
training steps, and through the shipped config."""

from __future__ import annotations

import math

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR
from xlmtrain.training.lr import warmup_schedule

PEAK, INIT, WARMUP, MAX_STEPS = 1e-3, 1e-7, 4, 20


def _lrs(n_steps: int, **kwargs: object) -> list[float]:
    """The lr each of the first `n_steps` optimizer updates is made with (read before the update, as training)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=PEAK)
    scheduler = warmup_schedule(optimizer, **kwargs)
    lrs = []
    for _ in range(n_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# Warmup (every kind): XLM's linspace from warmup_init_lr to lr: update n uses INIT + n * (PEAK - INIT) / WARMUP.
WARMUP_LRS = {0: 1e-7, 1: 2.500750e-4, 2: 5.0005e-4, 3: 7.500250e-4}


def test_inverse_sqrt_as_xlm() -> None:
    lrs = _lrs(101, kind="inverse_sqrt", warmup_steps=WARMUP, warmup_init_lr=INIT)
    for step, lr in WARMUP_LRS.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-9), step
    # After warmup XLM uses decay_factor / sqrt(n) with decay_factor = lr * sqrt(warmup): 1e-3 at n = 4,
    # 5e-4 at n = 16, 2e-4 at n = 100; and sqrt(4/5) * 1e-3 at n = 5 (an off-by-one in n shows there).
    assert lrs[4] == pytest.approx(1e-3, rel=1e-12)
    assert lrs[5] == pytest.approx(8.94427191e-4, rel=1e-8)
    assert lrs[16] == pytest.approx(5e-4, rel=1e-12)
    assert lrs[100] == pytest.approx(2e-4, rel=1e-12)


def test_linear_decays_to_zero_at_max_steps() -> None:
    lrs = _lrs(MAX_STEPS + 1, kind="linear", warmup_steps=WARMUP, warmup_init_lr=INIT, max_steps=MAX_STEPS)
    for step, lr in WARMUP_LRS.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-9), step
    # (step - 4) / 16 of the way from 1e-3 to 0.
    assert lrs[4] == pytest.approx(1e-3) and lrs[8] == pytest.approx(7.5e-4) and lrs[12] == pytest.approx(5e-4)
    assert lrs[19] == pytest.approx(6.25e-5) and lrs[20] == 0.0


def test_cosine_reaches_its_floor() -> None:
    lrs = _lrs(MAX_STEPS + 1, kind="cosine", warmup_steps=WARMUP, warmup_init_lr=INIT, max_steps=MAX_STEPS,
               min_lr_ratio=0.1)  # fmt: skip
    for step, lr in WARMUP_LRS.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-9), step
    # 1e-4 + 9e-4 * (1 + cos(pi * (step - 4) / 16)) / 2: 1e-3, 5.5e-4 half way, 1e-4 at the end.
    assert lrs[4] == pytest.approx(1e-3) and lrs[12] == pytest.approx(5.5e-4) and lrs[20] == pytest.approx(1e-4)
    assert lrs[8] == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[8] == pytest.approx(8.681981e-4, rel=1e-6)


def test_constant_after_warmup_and_no_warmup() -> None:
    lrs = _lrs(10, kind="constant", warmup_steps=WARMUP, warmup_init_lr=INIT)
    assert lrs[2] == pytest.approx(5.0005e-4) and lrs[4:] == [pytest.approx(1e-3)] * 6
    assert _lrs(3, kind="constant", warmup_steps=0) == [pytest.approx(1e-3)] * 3  # no warmup: peak from step 0
    # inverse_sqrt without warmup: lr / sqrt(n), n counted from 1 (XLM would give 0: its decay factor is lr * sqrt(0)).
    assert _lrs(5, kind="inverse_sqrt", warmup_steps=0) == pytest.approx(
        [1e-3, 1e-3, 1e-3 / 2**0.5, 1e-3 / 3**0.5, 5e-4]
    )


def test_bad_schedule_settings() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        _lrs(1, kind="step")
    with pytest.raises(ValueError, match="needs trainer.max_steps > 0"):
        _lrs(1, kind="cosine", max_steps=-1)


def test_shipped_config_is_xlm_adam_inverse_sqrt() -> None:
    """`conf/optim/adam.yaml` builds this schedule with XLM's defaults (warmup 4000 from 1e-7)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=["optim.optimizer.lr=1e-4"])  # no recipe: the shipped defaults
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = hydra.utils.instantiate(cfg.optim.optimizer)([param])
    scheduler = hydra.utils.instantiate(cfg.optim.scheduler)(optimizer, max_steps=cfg.trainer.max_steps)
    factor = scheduler.lr_lambdas[0]
    assert 1e-4 * factor(0) == pytest.approx(1e-7)
    assert 1e-4 * factor(2000) == pytest.approx(1e-7 + 2000 * (1e-4 - 1e-7) / 4000)
    assert 1e-4 * factor(16000) == pytest.approx(5e-5)  # 1e-4 * sqrt(4000) / sqrt(16000)
