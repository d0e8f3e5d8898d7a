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
from xlmtrain.objectives.streams import StreamSpec
from xlmtrain.training import rng


def test_bf16_mixed_trains_with_clipping_and_the_fused_adamw_like_fp32(
    synthetic_prep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xlmtrain.__main__ import run as train

    clipped: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def counting_clip(parameters, max_norm, *args, **kwargs):  # type: ignore[no-untyped-def]
        norm = real_clip(parameters, max_norm, *args, **kwargs)
        clipped.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting_clip)
    # The dtype every training step's matmuls run in, as autocast says inside the step: bf16-mixed must not
    # silently train in fp32 (losses equal to fp32's would pass the 2% check below).
    step_dtypes: list[torch.dtype] = []
    real_step = PretrainModule.training_step

    def recording_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        on = torch.is_autocast_enabled("cpu")
        step_dtypes.append(torch.get_autocast_dtype("cpu") if on else torch.float32)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(PretrainModule, "training_step", recording_step)
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
    assert step_dtypes == [torch.float32] * 12 + [torch.bfloat16] * 12, step_dtypes
    assert not torch.equal(bf16, fp32), "bf16-mixed gave fp32's losses bit for bit: it did not run in bf16"
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
    module = PretrainModule(config, [StreamSpec("mlm", "en")], optimizer=torch.optim.AdamW)
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


class _HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the aten ops that make the host wait for a CUDA device: reading a value (`.item()`, `bool()`,
    `int()`), `nonzero` (and boolean-mask indexing, which calls it), `masked_select`. On CPU they are visible
    here though free."""

    SYNCS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if name.startswith(self.SYNCS) or (name == "aten.index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)):  # fmt: skip
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _lm_batch(causal: bool, padded: bool):  # type: ignore[no-untyped-def]
    from xlmtrain.objectives.batches import LMBatch, with_host_layout

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(14, 40, (3, 7), generator=generator)
    lengths = torch.tensor([7, 5 if padded else 7, 7])
    ids[1, int(lengths[1]) :] = 2
    pred_mask = (torch.rand(3, 7, generator=generator) < 0.4) & (torch.arange(7)[None] < lengths[:, None])
    pred_mask[:, 1] = True
    labels = ids[pred_mask]
    return with_host_layout(LMBatch(ids, lengths, None, None, pred_mask, labels, causal=causal))


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("causal", [False, True], ids=["mlm", "clm"])
def test_training_loss_with_the_host_layout_makes_no_host_sync(causal: bool, padded: bool) -> None:
    """The pretraining step's forward and backward (`masked_lm_loss` with the batch's `SelectedPositions` and
    `padded`) runs no op that would stall on a GPU, and gives exactly the bool-mask path's losses."""
    from xlmtrain.model.heads import XLMWithLMHead

    torch.manual_seed(0)
    config = XLMConfig(vocab_size=40, emb_dim=16, n_layers=2, n_heads=2, dropout=0.0, attention_dropout=0.0)
    model = XLMWithLMHead(config)
    batch = _lm_batch(causal, padded)
    assert batch.padded is padded
    inputs = {"lengths": batch.lengths, "causal": causal}
    reference = model.masked_lm_loss(batch.input_ids, batch.pred_mask, batch.labels, **inputs)
    with _HostSyncs() as syncs:
        losses = model.masked_lm_loss(batch.input_ids, batch.selected, batch.labels, padded=batch.padded, **inputs)
        losses.sum().backward()
    assert syncs.seen == []
    torch.testing.assert_close(losses, reference, rtol=0, atol=0)


def test_causal_attention_stays_flash_eligible_in_the_last_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLM with predicted positions: every block calls SDPA with `is_causal` and no dense mask (flash-eligible)."""
    from xlmtrain.model import transformer

    calls: list[tuple[bool, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((attn_mask is None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(transformer.F, "scaled_dot_product_attention", recording)
    model = XLMTransformer(XLMConfig(vocab_size=40, emb_dim=16, n_layers=3, n_heads=2)).eval()
    batch = _lm_batch(causal=True, padded=False)
    out = model.encode(batch.input_ids, causal=True, output_positions=batch.selected, padded=False)
    assert calls == [(True, True)] * 3
    full = model.encode(batch.input_ids, causal=True).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state, full[batch.pred_mask], rtol=0, atol=0)


@pytest.mark.parametrize(("mine", "rank0"), [("b.ckpt", "a.ckpt"), (None, "a.ckpt"), ("a.ckpt", None)])
def test_ranks_that_picked_another_checkpoint_than_rank_0_all_stop(mine: str | None, rank0: str | None) -> None:
    from xlmtrain.training.resume import ResumeAgreement

    decisions: list[bool] = []

    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
        decisions.append(decision)
        return decision  # the other ranks agreed: the result is this rank's

    strategy = SimpleNamespace(broadcast=lambda obj, src=0: rank0, reduce_boolean_decision=reduce_boolean_decision)
    trainer = SimpleNamespace(world_size=2, global_rank=1, strategy=strategy)
    with pytest.raises(RuntimeError, match=f"rank 0 chose {rank0}, rank 1 {mine}"):
        ResumeAgreement(mine).setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert decisions == [False]
    ResumeAgreement(rank0).setup(trainer, None, "fit")  # type: ignore[arg-type]  # the same choice: no error


def _pretrain_batches(prep: Path):  # type: ignore[no-untyped-def]
    from xlmtrain.data.preprocessed import PreprocessedData
    from xlmtrain.objectives.data import BatchSettings, MaskingSettings, PretrainBatches
    from xlmtrain.objectives.streams import StreamSpec

    data = PreprocessedData(prep)
    specs = [StreamSpec("mlm", "io"), StreamSpec("tlm", "io-vo")]
    dico = data.dictionary
    return PretrainBatches(specs, data, vocab_size=len(dico), mask_index=dico.mask_index, pad_index=dico.pad_index,
                           counts=dico.counts, batching=BatchSettings(batch_size=4, bptt=16), masking=MaskingSettings(), seed=3)  # fmt: skip


def test_background_batches_yield_the_same_items_and_checkpoint_states(synthetic_prep: Path) -> None:
    """Built ahead in a thread, the items and the state saved for the last trained one are those of iterating the
    source directly, so prefetching does not shift a resumed run."""
    from itertools import islice

    from xlmtrain.training.prefetch import BackgroundBatches

    direct = _pretrain_batches(synthetic_prep)
    expected = list(islice(iter(direct), 6))
    expected_state = direct.state_after(3)
    ahead = _pretrain_batches(synthetic_prep)
    background = BackgroundBatches(ahead, depth=3)
    got = list(islice(iter(background), 6))  # the worker has built up to 3 more meanwhile
    assert [i.index for i in got] == [i.index for i in expected] == list(range(6))
    for a, b in zip(got, expected):
        assert a.stream == b.stream and a.n_targets == b.n_targets
        assert torch.equal(a.batch.input_ids, b.batch.input_ids) and torch.equal(a.batch.labels, b.batch.labels)
    assert ahead.state_after(3) == expected_state
    background.close()


def test_background_batches_raise_the_source_error_at_its_item() -> None:
    from xlmtrain.training.prefetch import BackgroundBatches

    def source():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise ValueError("corpus file truncated")

    seen = []
    with pytest.raises(ValueError, match="corpus file truncated"):
        for item in BackgroundBatches(source(), depth=2):
            seen.append(item)  # noqa: PERF402 (the loop must run until the error)
    assert seen == [1, 2]


def test_training_batches_come_from_the_background_worker_on_accelerators_only(
    synthetic_prep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xlmtrain.training.prefetch import BackgroundBatches

    config = XLMConfig(vocab_size=40, emb_dim=16, n_layers=1, n_heads=2)
    module = PretrainModule(config, [StreamSpec("mlm", "io")], optimizer=torch.optim.AdamW,
                            train_batches=_pretrain_batches(synthetic_prep))  # fmt: skip
    for device, background, pinned in (("cpu", False, None), ("cuda", True, True), ("mps", True, False)):
        trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), world_size=1,
                                  accumulate_grad_batches=1)  # fmt: skip
        monkeypatch.setattr(PretrainModule, "trainer", property(lambda self, t=trainer: t))
        monkeypatch.setattr(PretrainModule, "global_rank", property(lambda self: 0))
        loader = module.train_dataloader()
        assert isinstance(loader, BackgroundBatches) is background
        if background:
            assert loader.pin_memory is pinned and loader.source is module.train_batches
