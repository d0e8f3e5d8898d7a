"""DDP batch sharding: every rank draws the same stream, and the ranks' row slices are the 1-process batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.objectives.data import BatchSettings, MaskingSettings, PretrainBatches, TrainItem, ValidBatches
from xlmtrain.objectives.streams import StreamSpec

SPECS = [StreamSpec("mlm", "io"), StreamSpec("clm", "vo"), StreamSpec("tlm", "io-vo")]


def _batches(prep: Path, rank: int, world: int, n: int, **batching: int) -> list[TrainItem]:
    data = PreprocessedData(prep)
    source = PretrainBatches(
        SPECS, data, vocab_size=len(data.dictionary), mask_index=data.dictionary.mask_index,
        pad_index=data.dictionary.pad_index, counts=data.dictionary.counts,
        batching=BatchSettings(**{"batch_size": 6, "bptt": 16, **batching}), masking=MaskingSettings(), seed=3,
    )  # fmt: skip
    source.configure(rank=rank, world_size=world)
    out = []
    for item in source:
        out.append(item)
        if len(out) == n:
            return out


def _pad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("batching", [{}, {"tokens_per_batch": 200}], ids=["batch_size", "tokens_per_batch"])
def test_rank_slices_union_is_the_single_process_batch(synthetic_prep: Path, world: int, batching: dict) -> None:
    whole = _batches(synthetic_prep, 0, 1, 24, **batching)
    ranks = [_batches(synthetic_prep, r, world, 24, **batching) for r in range(world)]
    assert {s.objective for s in SPECS} == {SPECS[i.stream].objective for i in whole}  # every stream drawn
    for k, item in enumerate(whole):
        parts = [r[k] for r in ranks]
        assert [p.stream for p in parts] == [item.stream] * world, f"batch {k}: ranks drew different streams"
        assert [p.index for p in parts] == [k] * world and {p.lambda_ for p in parts} == {item.lambda_}
        b = item.batch
        width = b.input_ids.shape[1]
        rows = [p.batch.input_ids.shape[0] for p in parts]
        assert sum(rows) == b.input_ids.shape[0] and max(rows) - min(rows) <= 1
        real = torch.arange(width)[None, :] < b.lengths[:, None]  # (bs, width)
        for name in ("input_ids", "pred_mask", "langs", "position_ids"):
            mine = [getattr(p.batch, name) for p in parts]
            if getattr(b, name) is None:
                assert all(m is None for m in mine)
                continue
            # A slice keeps only the columns its own rows need (the others are padding in all its rows).
            assert [m.shape[1] for m in mine] == [int(p.batch.lengths.max()) for p in parts]
            joined = torch.cat([_pad(m, width, 0) for m in mine])
            torch.testing.assert_close(joined[real], getattr(b, name)[real], rtol=0, atol=0, msg=name)
        assert not b.pred_mask[~real].any()
        torch.testing.assert_close(torch.cat([p.batch.lengths for p in parts]), b.lengths)
        torch.testing.assert_close(torch.cat([p.batch.labels for p in parts]), b.labels)
        assert all(p.batch.causal == b.causal for p in parts)


def test_too_few_rows_for_the_ranks_is_named(synthetic_prep: Path) -> None:
    with pytest.raises(ValueError, match=r"batch 0 of stream .* has 2 rows for 4 ranks: raise data.batching"):
        _batches(synthetic_prep, 0, 4, 1, batch_size=2)


def test_validation_union_does_not_depend_on_world_size(synthetic_prep: Path) -> None:
    data = PreprocessedData(synthetic_prep)

    def items(rank: int, world: int) -> list:
        source = ValidBatches(SPECS, data, vocab_size=len(data.dictionary), mask_index=data.dictionary.mask_index,
                              pad_index=data.dictionary.pad_index, masking=MaskingSettings(),
                              batching=BatchSettings(valid_batch_size=8, bptt=16, valid_max_batches=4))  # fmt: skip
        source.configure(rank=rank, world_size=world)
        return [(i.stream, i.batch.input_ids.tolist(), i.batch.labels.tolist()) for i in source]

    whole = items(0, 1)
    split = items(0, 2) + items(1, 2)
    assert len(whole) == 12 and sorted(split) == sorted(whole)


def test_ranks_get_their_own_dropout_stream() -> None:
    """Ranks are seeded alike for identical init; at train start rank r > 0 moves to its own RNG stream, that of
    `seed + r` (a function of the seed and the rank only, so a rerun draws the same masks on every rank)."""
    from types import SimpleNamespace

    from xlmtrain.model.config import XLMConfig
    from xlmtrain.objectives.pretrain import PretrainModule

    config = XLMConfig(vocab_size=30, emb_dim=8, n_layers=1, n_heads=2)
    draws = {}
    for rank in (0, 1):
        torch.manual_seed(7)
        module = PretrainModule(config, [], optimizer=torch.optim.SGD)
        module._trainer = SimpleNamespace(world_size=2, global_rank=rank)
        module.on_train_start()
        draws[rank] = torch.rand(4)
    torch.manual_seed(7)
    PretrainModule(config, [], optimizer=torch.optim.SGD)
    assert torch.equal(draws[0], torch.rand(4)), "rank 0 keeps the seeded stream (1-process runs unchanged)"
    torch.manual_seed(7 + 1)
    assert torch.equal(draws[1], torch.rand(4)), "rank 1 draws from the stream of seed + 1"
    assert not torch.equal(draws[0], draws[1])


def test_key_bias_gradient_is_rounding_noise() -> None:
    """Why the DDP parity tests do not compare `k_lin.bias`: adding b to every key adds q.b to every score of a
    query, which the softmax cancels, so its gradient is exactly zero in exact arithmetic (here < 1e-10 of the
    query bias's in float64, padding and masked positions included). In float32 it is rounding noise, and Adam,
    which divides by the gradient's own scale, turns that noise into lr-sized steps that differ between any two
    summation orders (1 vs 2 processes)."""
    from xlmtrain.model.config import XLMConfig
    from xlmtrain.model.heads import XLMWithLMHead

    torch.manual_seed(0)
    model = XLMWithLMHead(XLMConfig(vocab_size=50, emb_dim=16, n_layers=2, n_heads=2)).double()
    lengths = torch.tensor([7, 5, 3])
    ids = torch.randint(5, 50, (3, 7)).masked_fill(torch.arange(7) >= lengths[:, None], 2)  # pad id 2
    pred_mask = (torch.rand(3, 7) < 0.5) & (torch.arange(7) < lengths[:, None])
    pred_mask[:, 0] = True
    model.masked_lm_loss(ids, pred_mask, ids[pred_mask], lengths=lengths).sum().backward()
    for layer in model.transformer.attentions:
        key, query = layer.k_lin.bias.grad.abs().max(), layer.q_lin.bias.grad.abs().max()
        assert query > 1e-7 and key < 1e-10 * query, (key, query)
