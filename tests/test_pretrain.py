"""End-to-end pretraining through the Hydra config: tiny runs, outputs, transformers parity, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR
from xlmtrain.__main__ import pretrain_settings
from xlmtrain.__main__ import run as run_job
from xlmtrain.jobs.pretrain import setup
from xlmtrain.objectives.batches import concat_pair
from xlmtrain.training.report import read_metrics

TINY = [
    "model.emb_dim=32",
    "model.n_heads=2",
    "data.batching.batch_size=8",
    "data.batching.bptt=32",
    "data.batching.valid_max_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "optim.optimizer.lr=3e-3",
    "optim.scheduler.warmup_steps=5",
]


def _cfg(prep: Path, run_dir: Path, recipe: str, *extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "xlmtrain",
            overrides=[f"+recipe={recipe}", f"data.dir={prep}", f"run_dir={run_dir}", *TINY, *extra],
        )


def _losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(run_dir / "metrics.csv") if "train_loss" in r]


def _check_loss_falls(run_dir: Path) -> None:
    losses = _losses(run_dir)
    assert len(losses) >= 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.3, f"loss did not fall: {first:.3f} -> {last:.3f}"


def test_metrics_rows_count_optimizer_steps_and_hold_only_the_trained_streams_loss(
    synthetic_prep: Path, tmp_path: Path
) -> None:
    """Rows, checkpoints and the progress bar count steps alike (row s = the s-th update; the validation after s
    updates is row s, as is its checkpoint), and a per-stream loss cell is filled only on that stream's steps."""
    run = tmp_path / "run"
    run_job(_cfg(synthetic_prep, run, "mlm", "trainer.max_steps=6", "trainer.val_check_interval=3", "export=false"))
    rows = read_metrics(run / "metrics.csv")
    train = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "valid_mlm_ppl" in r] == [3, 6]
    best = torch.load(next((run / "checkpoints").glob("best-*.ckpt")), weights_only=True, map_location="cpu")
    assert best["global_step"] in (3, 6)
    for r in train:  # lambda 1: the trained stream's cell is the step's loss; no other stream's stale value
        (stream,) = [k for k in r if k.startswith("train_") and k != "train_loss"]
        assert r[stream] == r["train_loss"], r
    assert {k for r in train for k in r if k.startswith("train_") and k != "train_loss"} == {
        "train_io_mlm_loss",
        "train_vo_mlm_loss",
    }


def test_train_loss_is_the_mean_over_a_steps_accumulated_draws(synthetic_prep: Path, tmp_path: Path) -> None:
    """With 2 draws per update, a row's train_loss is what the update minimised (the draws' mean, lambda 1) and a
    stream's cell the mean of its draws in that step: two streams -> the mean of their cells, one -> its cell."""
    run = tmp_path / "run"
    run_job(
        _cfg(synthetic_prep, run, "mlm", "trainer.max_steps=5", "trainer.accumulate_grad_batches=2", "export=false")
    )
    train = [r for r in read_metrics(run / "metrics.csv") if "train_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    n_cells = []
    for r in train:
        cells = [v for k, v in r.items() if k.startswith("train_") and k != "train_loss"]
        n_cells.append(len(cells))
        assert r["train_loss"] == pytest.approx(sum(cells) / len(cells), rel=1e-6), r
    assert set(n_cells) == {1, 2}  # both cases occur with this seed


def test_tlm_run_outputs_and_transformers_parity(synthetic_prep: Path, tmp_path: Path) -> None:
    from transformers import XLMWithLMHeadModel

    run = tmp_path / "run"
    cfg = _cfg(synthetic_prep, run, "tlm", "trainer.max_steps=40", "trainer.val_check_interval=20")
    summary = run_job(cfg)
    assert summary["steps"] == 40
    _check_loss_falls(run)
    for name in ("checkpoints/last.ckpt", "metrics.csv", "training_curves.png", "model/config.json",
                 "model/model.safetensors", "model/vocab.json", "model/merges.txt", "model/tokenizer_config.json"):  # fmt: skip
        assert (run / name).is_file(), name
    rows = read_metrics(run / "metrics.csv")
    assert any("valid_io-vo_tlm_ppl" in r and "valid_io-vo_tlm_acc" in r for r in rows)
    # The best checkpoint is the validation with the lowest objective.monitor (valid_tlm_ppl for tlm, mode min).
    validations = [(r["valid_tlm_ppl"], int(r["step"])) for r in rows if "valid_tlm_ppl" in r]
    assert len(validations) == 2 and validations[0][0] != validations[1][0]
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    best_step = torch.load(best, weights_only=True, map_location="cpu")["global_step"]
    assert best_step == min(validations)[1], (best, validations)  # a validation row carries its checkpoint's step
    # The lr each update used (logged in training_step) is the warmup + inverse-sqrt schedule by hand:
    # peak 3e-3, 5 warmup steps from 1e-7 (TINY), then 3e-3 * sqrt(5 / step).
    # Row s is update s (1-based); its lr is the schedule's value after s - 1 scheduler steps.
    lrs = {int(r["step"]) - 1: r["lr"] for r in rows if "lr" in r}
    assert sorted(lrs) == list(range(40))
    assert lrs[0] == pytest.approx(1e-7) and lrs[2] == pytest.approx(1e-7 + 2 * (3e-3 - 1e-7) / 5)
    assert (
        lrs[5] == pytest.approx(3e-3)
        and lrs[20] == pytest.approx(3e-3 / 2)
        and lrs[39] == pytest.approx(3e-3 * (5 / 39) ** 0.5)
    )

    # Same logits from the Lightning module's model and from transformers on a TLM batch.
    module, _, data = setup(pretrain_settings(_cfg(synthetic_prep, tmp_path / "unused", "tlm")))
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    module.load_state_dict(state)
    module.eval()
    hf = XLMWithLMHeadModel.from_pretrained(run / "model").eval()
    c1, c2 = data.parallel("valid", "io", "vo")
    x1 = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor([1, *c1[i].tolist(), 1]) for i in range(3)], batch_first=True, padding_value=2
    )
    x2 = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor([1, *c2[i].tolist(), 1]) for i in range(3)], batch_first=True, padding_value=2
    )
    len1 = torch.tensor([len(c1[i]) + 2 for i in range(3)])
    len2 = torch.tensor([len(c2[i]) + 2 for i in range(3)])
    pair = concat_pair(x1, len1, x2, len2, lang1_id=data.lang2id["io"], lang2_id=data.lang2id["vo"], pad_index=2)
    with torch.no_grad():
        ours = module.model(pair.ids, langs=pair.langs, position_ids=pair.position_ids, lengths=pair.lengths).logits
        theirs = hf(pair.ids, langs=pair.langs, position_ids=pair.position_ids, lengths=pair.lengths).logits
    real = torch.arange(pair.ids.shape[1])[None, :] < pair.lengths[:, None]
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["clm", "mlm", "mlm_tlm"])
def test_every_recipe_loss_falls(synthetic_prep: Path, tmp_path: Path, recipe: str) -> None:
    run_job(_cfg(synthetic_prep, tmp_path / recipe, recipe, "trainer.max_steps=60", "trainer.val_check_interval=30",
               "export=false"))  # fmt: skip
    _check_loss_falls(tmp_path / recipe)
    rows = read_metrics(tmp_path / recipe / "metrics.csv")
    expected = {"clm": ["valid_io_clm_ppl", "valid_clm_ppl"], "mlm": ["valid_vo_mlm_acc", "valid_mlm_ppl"],
                "mlm_tlm": ["valid_io_mlm_ppl", "valid_io-vo_tlm_acc", "valid_mlm_acc"]}[recipe]  # fmt: skip
    for name in expected:
        assert any(name in r for r in rows), name


@pytest.mark.slow
def test_resume_is_exact(synthetic_prep: Path, tmp_path: Path) -> None:
    """20 + 20 steps with a restart in between give the weights of 40 uninterrupted steps."""
    common = ("model.dropout=0", "model.attention_dropout=0", "export=false", "trainer.val_check_interval=1000",
              "checkpoint.every_n_train_steps=20")  # fmt: skip
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_job(_cfg(synthetic_prep, whole, "mlm_tlm", "trainer.max_steps=40", *common))
    run_job(_cfg(synthetic_prep, split, "mlm_tlm", "trainer.max_steps=20", *common))
    run_job(_cfg(synthetic_prep, split, "mlm_tlm", "trainer.max_steps=40", *common))
    a = torch.load(whole / "checkpoints/last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    assert a["xlmtrain_batches"] == b["xlmtrain_batches"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], rtol=0, atol=0, msg=key)
    assert len(_losses(split)) == len(_losses(whole)), "metrics.csv keeps the first half after the restart"
