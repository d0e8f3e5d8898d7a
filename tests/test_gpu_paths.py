"""The GPU code paths, checked on CPU where the behaviour shows there (issue #17): bf16-mixed training with
gradient clipping and the fused AdamW, the padding bias under bf16 autocast, RNG states gathered on the
strategy's root device and restored per rank (CUDA's through the same code with a fake generator)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.test_pretrain import _cfg, _losses
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.transformer import XLMTransformer
from xlmtrain.objectives.pretrain import PretrainModule
from xlmtrain.training import rng


def test_bf16_mixed_trains_with_clipping_and_the_fused_adamw_like_fp32(
    synthetic_prep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xlmtrain.cli.train import train

    clipped: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def counting_clip(parameters, max_norm, *args, **kwargs):  # type: ignore[no-untyped-def]
        norm = real_clip(parameters, max_norm, *args, **kwargs)
        clipped.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting_clip)
    # A clip value below the gradient norms of these steps, so clipping changes every update.
    common = ["trainer.max_steps=12", "trainer.val_check_interval=100", "trainer.gradient_clip_val=0.5",
              "model.dropout=0", "model.attention_dropout=0", "export=false"]  # fmt: skip
    train(_cfg(synthetic_prep, tmp_path / "fp32", "mlm_tlm", *common))
    fp32_clips = len(clipped)
    summary = train(_cfg(synthetic_prep, tmp_path / "bf16", "mlm_tlm", *common, "trainer.precision=bf16-mixed"))
    assert summary["steps"] == 12
    assert fp32_clips == 12 and len(clipped) == 24, clipped  # clipped at every step under both precisions
    assert min(clipped) > 0.5  # the clip value was below every norm: it acted
    fp32, bf16 = torch.tensor(_losses(tmp_path / "fp32")), torch.tensor(_losses(tmp_path / "bf16"))
    assert len(fp32) == len(bf16) == 12 and torch.isfinite(bf16).all()
    # bf16 matmuls (8-bit mantissa): the per-step losses stay within 2% of fp32's over 12 clipped updates.
    torch.testing.assert_close(bf16, fp32, rtol=0.02, atol=0.0)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_all_padding_row_gives_no_nan_under_bf16_autocast(training: bool) -> None:
    torch.manual_seed(0)
    model = XLMTransformer(XLMConfig(vocab_size=40, emb_dim=16, n_layers=2, n_heads=2)).train(training)
    ids = torch.randint(14, 40, (2, 6))
    keep = torch.ones(2, 6, dtype=torch.long)
    keep[1] = 0  # a row of padding only: all its keys are masked
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, attention_mask=keep)
    assert torch.isfinite(out).all()


class _MetaRootStrategy:
    """A 2-rank strategy stub whose root device is `meta`, unlike the CPU the module's tensors live on (as after
    teardown on a GPU); its all-gather refuses inputs that are not on the root device, as NCCL refuses CPU ones."""

    root_device = torch.device("meta")

    def __init__(self) -> None:
        self.gathered: list[torch.device] = []

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        assert tensor.device == self.root_device, f"collective input on {tensor.device}, root is {self.root_device}"
        self.gathered.append(tensor.device)
        return torch.zeros(2, *tensor.shape, dtype=tensor.dtype)  # meta tensors hold no data to copy back


def test_checkpoint_rng_gather_runs_on_the_strategy_root_device(monkeypatch: pytest.MonkeyPatch) -> None:
    config = XLMConfig(vocab_size=40, emb_dim=16, n_layers=1, n_heads=2)
    module = PretrainModule(config.to_dict(), [{"objective": "mlm", "langs": "en"}], optimizer=torch.optim.AdamW)
    strategy = _MetaRootStrategy()
    trainer = SimpleNamespace(strategy=strategy, world_size=2)
    monkeypatch.setattr(PretrainModule, "trainer", property(lambda self: trainer))
    monkeypatch.setattr(module, "all_gather", strategy.all_gather)
    # A fake accelerator generator on the root device: CUDA's state goes through the same gather.
    monkeypatch.setattr(rng, "device_rng", lambda device: rng.DeviceRng(get=lambda: torch.zeros(5, dtype=torch.uint8),
                                                                         set=lambda s: None))  # fmt: skip
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert strategy.gathered == [torch.device("meta")] * 2
    assert checkpoint[rng.CPU_KEY].shape[0] == 2 and checkpoint[rng.DEVICE_KEY].shape == (2, 5)


def test_rng_states_are_saved_and_restored_per_rank_cpu_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    device_states = {0: torch.arange(4, dtype=torch.uint8), 1: torch.arange(4, 8, dtype=torch.uint8)}
    current = {"rank": 0}
    restored: list[torch.Tensor] = []
    fake = rng.DeviceRng(get=lambda: device_states[current["rank"]].clone(), set=restored.append)
    monkeypatch.setattr(rng, "device_rng", lambda device: fake)

    # Two ranks' states, as the all-gather would return them: each rank contributes its own.
    saved_cpu = []
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        saved_cpu.append(torch.get_rng_state())
    gather_calls = iter([torch.stack(saved_cpu), torch.stack([device_states[0], device_states[1]])])
    checkpoint = rng.gather_rng_states(lambda t: next(gather_calls), torch.device("cpu"), world_size=2)

    torch.manual_seed(0)
    assert rng.restore_rng_states(checkpoint, torch.device("cpu"), rank=1, world_size=2)
    assert torch.equal(torch.get_rng_state(), saved_cpu[1])
    assert torch.equal(restored[-1], device_states[1])  # rank 1 gets rank 1's device state, not rank 0's
    # Another world size: nothing is restored (the streams cannot be continued).
    assert not rng.restore_rng_states(checkpoint, torch.device("cpu"), rank=0, world_size=3)
    assert len(restored) == 1


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_embeddings_feed_the_model_on_its_own_device(pooling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retrieval callback's `embed_ids` on a model whose parameters are not on the CPU (`meta` here, CUDA on
    a GPU): every input reaches the encoder on that device, and the embeddings come back on the CPU."""
    from xlmtrain.inference.embeddings import embed_ids
    from xlmtrain.model.heads import XLMWithLMHead
    from xlmtrain.model.transformer import EncoderOutput

    model = XLMWithLMHead(XLMConfig(vocab_size=40, emb_dim=8, n_layers=1, n_heads=2)).to("meta")
    seen: list[torch.device] = []

    def encode(**inputs: torch.Tensor) -> EncoderOutput:
        seen.extend(t.device for t in inputs.values() if isinstance(t, torch.Tensor))
        bs, slen = inputs["input_ids"].shape
        return EncoderOutput(torch.ones(bs, slen, 8, device="meta"))

    monkeypatch.setattr(model.transformer, "encode", encode)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: torch.ones(t.shape) if t.is_meta else t)  # meta -> data
    out = embed_ids(model, [[1, 20, 1], [1, 21, 22, 1]], lang_id=0, pooling=pooling, batch_size=2)
    assert seen and set(seen) == {torch.device("meta")}
    assert out.shape == (2, 8) and out.device.type == "cpu"
