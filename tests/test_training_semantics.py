"""What one pretraining update does, checked against the maths done by hand in the test: MLM's 80/10/10
corruption as the shipped config builds it, gradient accumulation (Lightning's averaging), gradient clipping.

The updates run through the real job setup (`xlmtrain.jobs.pretrain.setup`) + Lightning Trainer with the optimizer swapped for SGD(lr=1),
so the parameter change IS the (accumulated, clipped) gradient; the expected gradient is computed here with
plain autograd on the same batches."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR
from xlmtrain.__main__ import pretrain_settings
from xlmtrain.jobs.pretrain import setup

TINY = ["model.emb_dim=32", "model.n_heads=2", "model.n_layers=2", "model.dropout=0", "model.attention_dropout=0",
        "data.batching.batch_size=4", "data.batching.bptt=16", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.val_check_interval=1000", "+trainer.limit_val_batches=0",
        "export=false", "resume=never"]  # fmt: skip


def build(cfg):
    """`(module, trainer, data)` of the pretraining job for a composed config."""
    return setup(pretrain_settings(cfg))


def _cfg(prep: Path, run_dir: Path, recipe: str, *extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "xlmtrain", overrides=[f"+recipe={recipe}", f"data.dir={prep}", f"run_dir={run_dir}", *TINY, *extra]
        )


# ---------------------------------------------------------------- MLM corruption as configured


def test_mlm_split_as_configured_is_80_10_10(synthetic_prep: Path, tmp_path: Path) -> None:
    """The batches `+recipe=mlm` trains on (config -> MaskingSettings -> PretrainBatches -> mask_tokens).

    Over N targets the fraction replaced by <mask> is Binomial(N, 0.8 + 0.1 / V) / N (a random id can also
    be <mask>), kept Binomial(N, 0.1 + 0.1 / V) / N. Bound: 5 standard deviations (false alarm < 1e-6;
    the draw is seeded anyway). With N >= 20000 the sd of the mask share is <= 0.0029, so 5 sd = 0.014,
    and a 70/20/10 (or 90/5/5) split, 0.1 away, fails by more than 30 sd."""
    module, _, data = build(_cfg(synthetic_prep, tmp_path, "mlm", "data.batching.batch_size=128"))
    vocab_size, mask = len(data.dictionary), data.dictionary.mask_index
    n = n_mask = n_keep = n_candidates = 0
    for item in module.train_batches:
        b = item.batch
        corrupted = b.input_ids[b.pred_mask]
        n += len(b.labels)
        n_mask += int((corrupted == mask).sum())
        n_keep += int((corrupted == b.labels).sum())
        n_candidates += int((b.lengths - 1).sum())  # position 0 of a stream row is never a target
        if n >= 20000:
            break
    for observed, p in ((n_mask / n, 0.8 + 0.1 / vocab_size), (n_keep / n, 0.1 + 0.1 / vocab_size)):
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n), (observed, p, n)
    # word_pred 0.15 of the candidate positions, same 5-sd bound.
    assert abs(n / n_candidates - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n_candidates)


# ---------------------------------------------------------------- one update, by hand


def _sgd_update(cfg) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], object]:
    """(weights before, weights after) of `trainer.max_steps` SGD(lr=1) updates of the module `build(cfg)` makes."""
    module, trainer, _ = build(cfg)
    module.optimizer_factory = functools.partial(torch.optim.SGD, lr=1.0)
    module.scheduler_factory = None
    module.double()  # float64: the update is exact up to the training loss's float32 CE
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module)
    return before, dict(module.model.state_dict()), module


def _reference_items(cfg, n: int, accumulate: int):
    """A second, identical build (same seed: same init and batches) and the first `n` training items."""
    module, _, _ = build(cfg)
    module.double()
    module.train_batches.configure(accumulate=accumulate)
    items = []
    for item in module.train_batches:
        items.append(item)
        if len(items) == n:
            return module, items


def _mean_ce(module, batch) -> torch.Tensor:
    """Mean CE at the batch's targets from the model's logits and `F.cross_entropy` (not the fused training loss)."""
    return torch.nn.functional.cross_entropy(module(batch), batch.labels)


def _grads(module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in module.model.named_parameters()}


def _concat(items):
    from dataclasses import replace

    batches = [i.batch for i in items]
    cat = functools.partial(torch.cat, dim=0)
    return replace(batches[0], input_ids=cat([b.input_ids for b in batches]), lengths=cat([b.lengths for b in batches]),
                   langs=cat([b.langs for b in batches]), pred_mask=cat([b.pred_mask for b in batches]),
                   labels=cat([b.labels for b in batches]))  # fmt: skip


ONE_STREAM = "objective.streams=[{objective: clm, langs: io, lambda_: 1, weight: 1}]"


def test_accumulation_is_one_update_of_the_k_fold_batch(synthetic_prep: Path, tmp_path: Path) -> None:
    """accumulate_grad_batches=3: one update = the mean of the 3 micro-batches' mean-CE gradients (Lightning
    divides each micro-batch loss by 3). On one CLM stream every row has bptt targets, so the 3 micro-batches
    have equal target counts and that is exactly the gradient of the mean CE of the 3-fold batch."""
    k = 3
    cfg = _cfg(synthetic_prep, tmp_path, "clm", ONE_STREAM, "trainer.max_steps=1",
               f"trainer.accumulate_grad_batches={k}", "trainer.gradient_clip_val=null")  # fmt: skip
    before, after, _ = _sgd_update(cfg)
    ref, items = _reference_items(cfg, k, accumulate=k)
    assert all(torch.equal(before[n], p) for n, p in ref.model.state_dict().items()), "same seed, same init"
    assert len({i.index for i in items}) == k, "k different micro-batches"
    counts = [len(i.batch.labels) for i in items]
    assert len(set(counts)) == 1, counts
    mean_of_means = _grads(ref, sum(_mean_ce(ref, i.batch) for i in items) / k)
    big_batch = _grads(ref, _mean_ce(ref, _concat(items)))
    for name, grad in mean_of_means.items():
        torch.testing.assert_close(grad, big_batch[name], rtol=1e-9, atol=1e-12, msg=name)
        # The training loss takes the fused projection + CE, whose CE is float32: float32-level agreement.
        torch.testing.assert_close(before[name] - after[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_accumulated_micro_batches_use_the_update_step(synthetic_prep: Path, tmp_path: Path) -> None:
    """Lambda schedules count optimizer updates, not micro-batches: with accumulation 2 and lambda '0:0.5,10:1',
    micro-batch k has lambda 0.5 + 0.05 * (k // 2) up to update 10. (Each micro-batch is its own stream draw, as XLM's
    accumulation sums the gradients of whatever streams ran in between.)"""
    cfg = _cfg(
        synthetic_prep,
        tmp_path,
        "clm",
        "objective.streams=[{objective: clm, langs: io, lambda_: '0:0.5,10:1', weight: 1}]",
    )
    _, items = _reference_items(cfg, 30, accumulate=2)
    assert [i.lambda_ for i in items] == pytest.approx([min(1.0, 0.5 + 0.05 * (k // 2)) for k in range(30)])


def test_clipping_bounds_the_update_norm(synthetic_prep: Path, tmp_path: Path) -> None:
    """trainer.gradient_clip_val=c (norm clipping, XLM's clip_grad_norm): the update is c * g / |g| over all
    parameters together, the tied embedding's two gradients summed first."""
    clip = 1e-3
    cfg = _cfg(synthetic_prep, tmp_path, "mlm", "trainer.max_steps=1", f"trainer.gradient_clip_val={clip}")
    before, after, _ = _sgd_update(cfg)
    ref, items = _reference_items(cfg, 1, accumulate=1)
    grads = _grads(ref, _mean_ce(ref, items[0].batch) * items[0].lambda_)
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    assert total > 100 * clip, "the gradient is far above the clip value, so clipping acts"
    update = {n: before[n] - after[n] for n in grads}
    assert torch.sqrt(sum((u.double() ** 2).sum() for u in update.values())) == pytest.approx(clip, rel=1e-5)
    for name, grad in grads.items():
        # torch's clip_grad_norm_ scales by clip / (|g| + 1e-6).
        torch.testing.assert_close(update[name], grad * (clip / (total + 1e-6)), rtol=1e-4, atol=1e-10, msg=name)


def test_shipped_clip_is_xlm_clip_grad_norm_5() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=["+recipe=mlm_tlm"])
    assert cfg.trainer.gradient_clip_val == 5.0 and cfg.trainer.get("gradient_clip_algorithm", "norm") == "norm"
