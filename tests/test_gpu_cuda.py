"""The GPU paths on a CUDA device (issue #17; run by `benchmarks/gpu_check.sh`). Skipped with the reason without CUDA.

Tolerances: fp32 with TF32 off, logits within 1e-4 of transformers' (CUDA kernels sum in other orders than the CPU's,
where parity is 1e-5); bf16 autocast vs fp32 on the same weights: logits within 0.1 absolute, per-target CE within 2%.
"""

from __future__ import annotations

import pytest
import torch

from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.model.transformer import XLMTransformer
from xlmtrain.training import rng

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)"),
]
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _config(**overrides: object) -> XLMConfig:
    return XLMConfig(**{"vocab_size": 300, "emb_dim": 64, "n_layers": 3, "n_heads": 4, "n_langs": 2, **overrides})


def _batch(bs: int = 4, slen: int = 24, padded: bool = True, causal: bool = False):  # type: ignore[no-untyped-def]
    from xlmtrain.objectives.batches import LMBatch, with_host_layout

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(14, 300, (bs, slen), generator=generator)
    lengths = torch.full((bs,), slen)
    if padded:
        lengths[1:] = torch.randint(slen // 2, slen, (bs - 1,), generator=generator)
        for row in range(bs):
            ids[row, int(lengths[row]) :] = 2
    keep = torch.arange(slen)[None] < lengths[:, None]
    pred_mask = (torch.rand(bs, slen, generator=generator) < 0.2) & keep
    pred_mask[:, 1] = True
    langs = torch.zeros_like(ids)
    batch = LMBatch(ids, lengths, None, langs, pred_mask, ids[pred_mask], causal=causal)
    return with_host_layout(batch)


def _to(batch, device):  # type: ignore[no-untyped-def]
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)


@pytest.mark.parametrize("causal", [False, True], ids=["mlm", "clm"])
def test_logits_and_loss_equal_transformers_on_cuda_fp32(causal: bool) -> None:
    from transformers import XLMConfig as HFXLMConfig
    from transformers import XLMWithLMHeadModel

    config = _config(causal=causal)
    hf = XLMWithLMHeadModel(HFXLMConfig(**config.to_dict())).eval().to(CUDA)
    ours = XLMWithLMHead(config).eval().to(CUDA)
    ours.load_state_dict(hf.state_dict(), strict=False)
    batch = _to(_batch(causal=causal), CUDA)
    inputs = {"langs": batch.langs, "lengths": batch.lengths}
    with torch.no_grad():
        theirs = hf(batch.input_ids, **inputs).logits  # (bs, slen, V)
        full = ours(batch.input_ids, causal=causal, **inputs).logits
        selected = ours(batch.input_ids, pred_mask=batch.selected, causal=causal, padded=batch.padded, **inputs).logits
    keep = torch.arange(batch.input_ids.size(1), device=CUDA)[None] < batch.lengths[:, None]
    torch.testing.assert_close(full[keep], theirs[keep], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(selected, theirs[batch.pred_mask], rtol=1e-4, atol=1e-4)


def test_bf16_autocast_stays_close_to_fp32_on_cuda() -> None:
    model = XLMWithLMHead(_config()).eval().to(CUDA)
    batch = _to(_batch(), CUDA)
    inputs = {"langs": batch.langs, "lengths": batch.lengths, "padded": batch.padded}
    with torch.no_grad():
        fp32 = model(batch.input_ids, pred_mask=batch.selected, **inputs).logits
        ce32 = model.masked_lm_loss(batch.input_ids, batch.selected, batch.labels, **inputs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(batch.input_ids, pred_mask=batch.selected, **inputs).logits.float()
            ce16 = model.masked_lm_loss(batch.input_ids, batch.selected, batch.labels, **inputs).float()
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.1)
    torch.testing.assert_close(ce16, ce32, rtol=0.02, atol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["mlm", "clm"])
def test_training_loss_has_no_host_sync_on_cuda(causal: bool) -> None:
    """The pretraining step's forward + backward with the batch's host layout: no implicit CUDA sync."""
    model = XLMWithLMHead(_config(dropout=0.1, attention_dropout=0.1)).train().to(CUDA)
    batch = _to(_batch(causal=causal), CUDA)
    inputs = {"langs": batch.langs, "lengths": batch.lengths, "causal": causal, "padded": batch.padded}
    model.masked_lm_loss(batch.input_ids, batch.selected, batch.labels, **inputs).sum().backward()  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = model.masked_lm_loss(batch.input_ids, batch.selected, batch.labels, **inputs)
        losses.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("causal", [False, True], ids=["unpadded_mlm", "clm"])
def test_flash_attention_serves_unpadded_and_causal_batches(causal: bool) -> None:
    """Only the flash kernel allowed: it takes no mask, so it works only if no dense mask reaches SDPA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = XLMWithLMHead(_config(causal=causal)).train().to(CUDA)
    batch = _to(_batch(padded=False, causal=causal), CUDA)
    inputs = {"langs": batch.langs, "lengths": batch.lengths, "causal": causal, "padded": False}
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model.masked_lm_loss(batch.input_ids, batch.selected, batch.labels, **inputs)
    losses.sum().backward()
    assert torch.isfinite(losses).all()


def test_all_padding_row_on_cuda_under_bf16() -> None:
    model = XLMTransformer(_config()).eval().to(CUDA)
    ids = torch.randint(14, 300, (2, 8), device=CUDA)
    keep = torch.ones(2, 8, dtype=torch.long, device=CUDA)
    keep[1] = 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids, attention_mask=keep)
    assert torch.isfinite(out).all()


def test_cuda_rng_state_round_trip() -> None:
    """The checkpoint code path (`gather_rng_states` / `restore_rng_states`) on the real CUDA generator."""
    torch.manual_seed(0)
    states = rng.gather_rng_states(lambda t: t[None], CUDA, world_size=1)
    assert rng.DEVICE_KEY in states and states[rng.DEVICE_KEY].device.type == "cpu"
    first = torch.nn.functional.dropout(torch.ones(1000, device=CUDA), 0.5)
    torch.rand(10, device=CUDA)  # move the generator on
    assert rng.restore_rng_states(states, CUDA, rank=0, world_size=1)
    again = torch.nn.functional.dropout(torch.ones(1000, device=CUDA), 0.5)
    assert torch.equal(first, again)


def test_embeddings_of_a_cuda_model_equal_the_cpu_ones() -> None:
    from xlmtrain.inference.embeddings import embed_ids

    model = XLMWithLMHead(_config()).eval()
    lines = [[1, 20, 21, 1], [1, 22, 1], [1, 23, 24, 25, 26, 1]]
    cpu = embed_ids(model, lines, lang_id=0, pooling="mean", batch_size=2)
    cuda = embed_ids(model.to(CUDA), lines, lang_id=0, pooling="mean", batch_size=2)
    assert cuda.device.type == "cpu"
    torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)
