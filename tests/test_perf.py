"""Speed work (issue #7): numerics of the fast paths and smoke runs of the benchmarks (no timing assertions)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.model.transformer import _attention_with_dropout

sys.path.insert(0, str(REPO / "benchmarks"))
import benchlib  # noqa: E402


def _qkv(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 5, 4, generator=g) for _ in range(3)]  # (bs, h, slen, hd)


@pytest.mark.parametrize("case", ["plain", "padding", "causal"])
def test_cpu_dropout_attention_is_sdpa_without_dropout(case: str) -> None:
    q, k, v = _qkv(0)
    bias = None
    if case == "padding":
        bias = torch.zeros(2, 1, 1, 5)
        bias[1, ..., 3:] = torch.finfo(torch.float32).min
    causal = case == "causal"
    # p -> 0 leaves the dropout draw in place but scales by 1 / (1 - p) ~ 1: the attention math must match SDPA.
    ours = _attention_with_dropout(q, k, v, bias, causal, dropout_p=1e-12)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_cpu_dropout_attention_drops_and_rescales() -> None:
    q, k, v = _qkv(1)
    q = torch.zeros_like(q)  # uniform weights 1/slen everywhere
    v = torch.ones_like(v)
    torch.manual_seed(0)
    out = _attention_with_dropout(q, k, v, None, False, dropout_p=0.5)
    # Each output = (kept weights) * 2 / slen: a multiple of 2/5 between 0 and 2, with mean near 1.
    kept = out[..., 0] * 5 / 2
    assert torch.allclose(kept, kept.round(), atol=1e-5)
    assert 0.6 < out.mean().item() < 1.4


@pytest.mark.parametrize("padded", [False, True])
def test_training_forward_with_dropout_equals_transformers(padded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train mode, dropout on everywhere: with torch's bernoulli masks in place of our cheaper CPU draws, the
    same seed gives transformers' numbers, so every dropout sits where transformers has it, in the same order."""
    from transformers import XLMConfig as HFXLMConfig
    from transformers import XLMWithLMHeadModel

    def torch_mask(shape: torch.Size, p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype).bernoulli_(1 - p).div_(1 - p)  # what F.dropout draws on CPU

    monkeypatch.setattr("xlmtrain.model.dropout.dropout_mask", torch_mask)

    config = XLMConfig(vocab_size=60, emb_dim=32, n_layers=2, n_heads=2, n_langs=2, dropout=0.2, attention_dropout=0.3)
    hf = XLMWithLMHeadModel(HFXLMConfig(**config.to_dict())).train()
    ours = XLMWithLMHead(config).train()
    ours.load_state_dict(hf.state_dict(), strict=False)
    ids = torch.randint(14, 60, (3, 7), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([7, 5, 7] if padded else [7, 7, 7])
    langs = torch.ones_like(ids)
    torch.manual_seed(3)
    theirs = hf(input_ids=ids, lengths=lengths, langs=langs).logits
    torch.manual_seed(3)
    mine = ours(ids, lengths=lengths, langs=langs).logits
    real = torch.arange(7)[None, :] < lengths[:, None]
    torch.testing.assert_close(mine[real], theirs[real], rtol=1e-4, atol=1e-5)


def test_train_step_flops_by_hand() -> None:
    shape = benchlib.Shape("t", vocab=100, dim=8, layers=2, heads=2)
    # encoder: 2 layers * 10 tokens * (24 * 64 + 4 * 5 * 8) = 20 * 1696; head: 2 * 8 * 100 * 3 logits rows.
    assert benchlib.encoder_forward_flops(shape, n_tokens=10, slen=5) == 20 * 1696
    assert benchlib.train_step_flops(shape, n_tokens=10, slen=5, n_logits=3) == 3 * (20 * 1696 + 4800)


def test_train_step_flops_with_selected_last_block_by_hand() -> None:
    shape = benchlib.Shape("t", vocab=100, dim=8, layers=2, heads=2)
    # layer 1 full: 10 * 1696; last layer: k, v at 10 tokens (10 * 4 * 64) + 3 rows * (20 * 64 + 4 * 5 * 8).
    assert benchlib.encoder_forward_flops(shape, 10, 5, last_block_rows=3) == 16960 + 2560 + 3 * 1440
    assert benchlib.train_step_flops(shape, 10, 5, 3, last_block_rows=3) == 3 * (16960 + 2560 + 4320 + 4800)


def test_model_compile_flag_and_fused_adam_in_build(synthetic_prep: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from xlmtrain.__main__ import pretrain_settings
    from xlmtrain.config_dir import conf_dir
    from xlmtrain.jobs.pretrain import setup

    overrides = [f"data.dir={synthetic_prep}", f"run_dir={tmp_path}", "+recipe=mlm"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        eager = compose("xlmtrain", overrides=overrides)
        compiled = compose("xlmtrain", overrides=[*overrides, "compile=true"])
    assert eager.compile is False and eager.optim.optimizer.fused is True
    module, _, _ = setup(pretrain_settings(eager))
    assert module.model._compiled_call_impl is None and "compile" not in module.hparams["model_config"]
    module, _, _ = setup(pretrain_settings(compiled))
    assert module.model._compiled_call_impl is not None  # compiled in place: state-dict keys unchanged
    assert all(not key.startswith("_orig_mod") for key in module.model.state_dict())
    optimizer = module.optimizer_factory(module.parameters())
    assert optimizer.defaults["fused"] is True


def test_step_stats_and_table() -> None:
    stats = benchlib.StepStats([2.0, 1.0, 4.0])
    assert stats.tokens_per_s(8) == (4.0, 2.0, 8.0)
    assert stats.median_s == 2.0
    # An even number of steps: tokens over the median time (8 / 1.5), not the mean of the two middle rates (6).
    assert benchlib.StepStats([1.0, 2.0]).tokens_per_s(8)[0] == pytest.approx(16 / 3)
    table = benchlib.format_table(["a", "bb"], [[1, 22], [333, 4]])
    assert table.splitlines() == ["| a   | bb |", "|-----|----|", "| 1   | 22 |", "| 333 | 4  |"]


def test_train_step_quick(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark runs, and the speedups it prints are what its own table says: the ratio of the median step
    times (tokens per step are the same on both sides), i.e. transformers' s/step over xlmtrain's."""
    import train_step

    train_step.main(["--quick"])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {(cells[1], cells[2]): cells for line in lines if line.startswith("| tiny ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}  # fmt: skip
    assert set(rows) == {(o, f) for o in ("mlm", "tlm") for f in ("xlmtrain", "transformers")}
    for objective in ("mlm", "tlm"):
        ours, theirs = rows[objective, "xlmtrain"], rows[objective, "transformers"]
        # tok/s (median) is batch x slen over the median step time, printed to whole tokens (5 digits on a fast
        # machine, 3 on a loaded one); s/step only to 3 decimals, too coarse on a fast machine (tiny steps of
        # ~0.01 s) to recompute a 2-decimal speedup from. Tolerance: both rates' rounding + the speedup's 2 decimals.
        ours_rate, theirs_rate = float(ours[3]), float(theirs[3])
        by_time = ours_rate / theirs_rate
        rounding = by_time * (0.5 / ours_rate + 0.5 / theirs_rate) + 0.0051
        assert float(ours[10].rstrip("x")) == pytest.approx(by_time, abs=rounding), (ours, theirs)
        tokens, step_s = float(ours[3]), float(ours[6])  # tok/s x s/step = batch x slen, up to s/step's rounding
        assert abs(tokens * step_s - 4 * 32) <= tokens * 0.0005 + 0.01 * 4 * 32, (tokens, step_s)
    speedup = lines[-1]
    assert speedup.startswith("tiny mlm speedup vs transformers: ") and speedup.endswith("x")
    assert speedup.split(": ")[1] == rows["mlm", "xlmtrain"][10]


def test_train_step_sides_compute_the_same_loss_and_gradients() -> None:
    """The two timed steps do the same work: on the same weights and batch, xlmtrain's training loss (fused,
    at the predicted positions) equals transformers' `run_mlm` loss, and so do the gradients."""
    import train_step
    from transformers import XLMConfig as HFXLMConfig
    from transformers import XLMWithLMHeadModel

    shape = benchlib.SHAPES["tiny"]
    config = train_step.model_config(shape).replace(dropout=0.0, attention_dropout=0.0)
    hf = XLMWithLMHeadModel(HFXLMConfig(**config.to_dict())).train()
    ours = XLMWithLMHead(config).train()
    ours.load_state_dict(hf.state_dict(), strict=False)
    for objective in ("mlm", "tlm"):
        pair = train_step.make_batch(objective, shape, 4, 32, torch.Generator().manual_seed(3))
        hf.zero_grad()
        ours.zero_grad()
        theirs_loss = hf(**pair.hf).loss
        ours_loss = train_step.TrainingLoss(ours)(pair.xlm).mean()
        torch.testing.assert_close(ours_loss, theirs_loss, rtol=1e-5, atol=1e-6)
        theirs_loss.backward()
        ours_loss.backward()
        theirs_grads = dict(hf.named_parameters())
        for name, param in ours.named_parameters():
            torch.testing.assert_close(param.grad, theirs_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_train_step_batches_agree() -> None:
    """Both frameworks train on the same targets: -100 labels everywhere but at xlmtrain's pred_mask."""
    import train_step

    shape = benchlib.SHAPES["tiny"]
    for objective in ("mlm", "tlm"):
        pair = train_step.make_batch(objective, shape, 4, 32, torch.Generator().manual_seed(0))
        labels = pair.hf["labels"]
        assert torch.equal(labels != -100, pair.xlm.pred_mask)
        assert torch.equal(labels[pair.xlm.pred_mask], pair.xlm.labels)
        assert pair.xlm.input_ids.shape == (4, 32)


@pytest.mark.slow
def test_data_wait_quick(tmp_path: Path) -> None:
    import data_wait

    fraction = data_wait.main(["--quick", "--workdir", str(tmp_path)])
    assert 0.0 < fraction < 1.0


def test_ddp_scaling_table_by_hand(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """What `benchmarks/ddp_scaling.py` computes from the step times (the timed DDP runs themselves are replaced:
    `tests/test_ddp.py` runs DDP for real): tokens/s = processes x batch x slen / median step seconds,
    efficiency = tokens/s / (processes x the 1-process 1-thread rate)."""
    import ddp_scaling

    seconds = {(1, 2): [1.0, 2.0, 9.0], (1, 1): [2.0, 2.0, 2.0], (2, 1): [2.0, 3.0, 4.0]}
    monkeypatch.setattr(ddp_scaling, "run_layout", lambda args, p, t: (seconds[p, t], 100.0))
    rates = ddp_scaling.main(["--quick"])  # batch 4 x slen 32 per process: 128 tokens
    assert rates == {(1, 2): 64.0, (1, 1): 64.0, (2, 1): pytest.approx(256 / 3)}
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 ")]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == ["2", "1", "85", "64", "128", "1.33x", "67%", "100"]
