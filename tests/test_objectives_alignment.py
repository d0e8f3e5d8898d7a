"""Alignment objectives (translation ranking, XLCo) vs hand-computed values; pooling; the XLCo queue and momentum;
the pair batch; the cross-rank gather with gradient against a 1-process computation (2 gloo processes)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xlmtrain.model.pooling import pool_hidden
from xlmtrain.objectives.alignment import (
    AlignmentSettings,
    XLCoState,
    in_batch_accuracy,
    shard_sizes,
    translation_ranking_loss,
    xlco_loss,
)
from xlmtrain.objectives.batches import pair_batch, pair_rank_rows


def _lse_loss(pos: float, *others: float) -> float:
    """-log softmax of `pos` among `pos, *others` (logits)."""
    return -pos + math.log(sum(math.exp(v) for v in (pos, *others)))


def test_translation_ranking_margin_only_on_positives_both_directions_scaled() -> None:
    # Unit vectors with cos(x, y) = [[1, .6], [0, .8]].
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = translation_ranking_loss(3 * x, y, global_rows=2, margin=0.3, scale=10.0, gather=False)  # scale-free input
    # x -> y: row 0 logits [10 (1 - .3), 10 * .6], row 1 [10 * 0, 10 (.8 - .3)];
    # y -> x (cosines transposed): row 0 [10 (1 - .3), 10 * 0], row 1 [10 * .6, 10 (.8 - .3)].
    expected = torch.tensor([_lse_loss(7.0, 6.0) + _lse_loss(7.0, 0.0), _lse_loss(5.0, 0.0) + _lse_loss(5.0, 6.0)])
    torch.testing.assert_close(loss, expected)


def test_translation_ranking_without_margin_is_plain_softmax() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = translation_ranking_loss(x, y, global_rows=2, margin=0.0, scale=1.0, gather=False)
    expected = torch.tensor([_lse_loss(1.0, 0.6) + _lse_loss(1.0, 0.0), _lse_loss(0.8, 0.0) + _lse_loss(0.8, 0.6)])
    torch.testing.assert_close(loss, expected)


def test_pooling_first_and_mean_over_real_tokens() -> None:
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])  # (2, 3, 1); row 0 has 2 real tokens
    lengths = torch.tensor([2, 3])
    torch.testing.assert_close(pool_hidden(hidden, lengths, "first"), torch.tensor([[1.0], [2.0]]))
    torch.testing.assert_close(pool_hidden(hidden, lengths, "mean"), torch.tensor([[2.0], [4.0]]))
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool_hidden(hidden, lengths, "max")  # type: ignore[arg-type]


def test_in_batch_accuracy_counts_both_directions() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.1], [1.0, 0.0]])
    # x -> y: cos(x0, y) = [.995, 1] picks y1 (miss), cos(x1, y) = [.0995, 0] picks y0 (miss);
    # y -> x: y0 picks x0 (hit), y1 picks x0 (miss). 1 hit of 4.
    assert float(in_batch_accuracy(x, y)) == pytest.approx(25.0)


def _state(queue_size: int, momentum: float = 0.9, dim: int = 2) -> XLCoState:
    encoder = torch.nn.Linear(dim, dim, bias=False)
    return XLCoState(encoder, dim, AlignmentSettings(xlco_queue_size=queue_size, xlco_momentum=momentum))


def test_queue_is_a_ring_of_the_latest_keys() -> None:
    state = _state(3)
    assert state.negatives().shape == (0, 2)
    state.enqueue(torch.tensor([[1.0, 0], [2, 0]]))
    torch.testing.assert_close(state.negatives(), torch.tensor([[1.0, 0], [2, 0]]))
    state.enqueue(torch.tensor([[3.0, 0], [4, 0]]))  # 4 overwrites the oldest (1)
    torch.testing.assert_close(state.queue, torch.tensor([[4.0, 0], [2, 0], [3, 0]]))
    assert int(state.queue_filled) == 3 and int(state.queue_next) == 1
    state.enqueue(torch.tensor([[5.0, 0], [6, 0], [7, 0], [8, 0]]))  # more than the queue: the last 3, in ring order
    assert sorted(state.queue[:, 0].tolist()) == [6.0, 7.0, 8.0] and int(state.queue_next) == 1
    negatives = state.negatives()
    state.enqueue(torch.tensor([[9.0, 0]]))
    assert 9.0 not in negatives[:, 0].tolist()  # a copy: the backward of a loss that used it is not disturbed


def test_queue_is_in_the_state_dict_and_key_encoder_has_no_gradient() -> None:
    state = _state(4)
    state.enqueue(torch.ones(2, 2))
    keys = set(state.state_dict())
    assert {"queue", "queue_next", "queue_filled", "key_encoder.weight"} <= keys
    assert not any(p.requires_grad for p in state.parameters())
    state.train()
    assert not state.key_encoder.training


def test_momentum_update_is_an_ema_of_the_online_weights() -> None:
    online = torch.nn.Linear(2, 2, bias=False)
    state = XLCoState(online, 2, AlignmentSettings(xlco_momentum=0.9))
    before = state.key_encoder.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    state.update_momentum(online)
    torch.testing.assert_close(state.key_encoder.weight, 0.9 * before + 0.1 * online.weight)


def test_xlco_loss_hand_computed_with_queue_and_keys_to_enqueue() -> None:
    state = _state(4)
    state.enqueue(torch.tensor([[0.0, 1.0]]))  # one queued key
    q_src = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised: e0, e1
    q_tgt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k_src = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k_tgt = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    loss, keys = xlco_loss(q_src, q_tgt, k_src, k_tgt, state.negatives(), global_rows=2, scale=2.0, gather=False)
    state.enqueue(keys)
    # src queries vs [k_tgt0, k_tgt1, queue0]: q0=e0 -> [.8, 0, 0], q1=e1 -> [.6, 1, 1] (positive index 1).
    # tgt queries vs [k_src0, k_src1, queue0]: q0=e0 -> [1, 0, 0], q1=(.6,.8) -> [.6, .8, .8] (positive 1).
    expected = torch.tensor(
        [_lse_loss(1.6, 0.0, 0.0) + _lse_loss(2.0, 0.0, 0.0), _lse_loss(2.0, 1.2, 2.0) + _lse_loss(1.6, 1.2, 1.6)]
    )
    torch.testing.assert_close(loss, expected)
    assert int(state.queue_filled) == 5 - 1  # 1 + the 4 keys of this batch, capped at 4
    torch.testing.assert_close(state.queue[1], torch.tensor([1.0, 0.0]))  # src keys first, normalised


def test_pair_batch_and_rank_rows() -> None:
    x1 = torch.tensor([[1, 7, 1, 2], [1, 8, 9, 1], [1, 5, 1, 2]])
    x2 = torch.tensor([[1, 4, 4, 4, 1], [1, 6, 1, 2, 2], [1, 3, 1, 2, 2]])
    batch = pair_batch(x1, torch.tensor([3, 4, 3]), x2, torch.tensor([5, 3, 3]), lang1_id=0, lang2_id=1)
    assert batch.global_rows == 3 and batch.src_langs.eq(0).all() and batch.tgt_langs.eq(1).all()
    last = pair_rank_rows(batch, 1, 2)  # tensor_split: rows [0, 1] and [2]
    assert last.global_rows == 3
    assert last.src_ids.tolist() == [[1, 5, 1]] and last.tgt_ids.tolist() == [[1, 3, 1]]
    first = pair_rank_rows(batch, 0, 2)
    assert first.src_ids.shape == (2, 4) and first.tgt_ids.shape == (2, 5)
    with pytest.raises(ValueError, match="batch 7 has 3 rows for 4 ranks"):
        pair_rank_rows(batch, 0, 4, where="batch 7")
    assert shard_sizes(5, 2) == [3, 2] and shard_sizes(4, 3) == [2, 1, 1]


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="objective.alignment.pooling"):
        AlignmentSettings(pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective.alignment.xlco_momentum"):
        AlignmentSettings(xlco_momentum=1.0)


# --- gather with gradient: 2 gloo processes vs 1 process ---------------------------------------------------------

GLOBAL_ROWS, DIM = 5, 4  # 5 pairs over 2 ranks: 3 + 2, unequal shards


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(GLOBAL_ROWS, DIM, generator=g),
        torch.randn(GLOBAL_ROWS, DIM, generator=g),
        torch.randn(DIM, DIM, generator=g),
    )


def _loss_and_grad(src: torch.Tensor, tgt: torch.Tensor, weight: torch.Tensor, gather: bool, world: int):
    """Loss normalised as `PretrainModule` does (sum over local pairs * world / global pairs) and the weight's grad."""
    w = weight.clone().requires_grad_(True)
    loss = translation_ranking_loss(src @ w, tgt @ w, global_rows=GLOBAL_ROWS, margin=0.2, scale=5.0, gather=gather)
    total = loss.sum() * world / GLOBAL_ROWS
    total.backward()
    return loss.detach(), w.grad


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        src, tgt, weight = _inputs()
        rows = torch.tensor_split(torch.arange(GLOBAL_ROWS), 2)[rank]
        loss, grad = _loss_and_grad(src[rows], tgt[rows], weight, True, 2)
        dist.all_reduce(grad)  # what DDP does with the parameter gradients: average
        out[rank] = (loss, grad / 2)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_gathered_negatives_on_two_ranks_equal_one_process() -> None:
    src, tgt, weight = _inputs()
    loss_one, grad_one = _loss_and_grad(src, tgt, weight, True, 1)  # no process group: gather is the identity
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        results = dict(out)
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), loss_one)
    for rank in (0, 1):
        torch.testing.assert_close(results[rank][1], grad_one)


# --- pair streams in the mixture ---------------------------------------------------------------------------------


def _pair_items(prep, rank: int, world: int, n: int):
    from xlmtrain.data.preprocessed import PreprocessedData
    from xlmtrain.objectives.data import BatchSettings, MaskingSettings, PretrainBatches
    from xlmtrain.objectives.streams import StreamSpec

    data = PreprocessedData(prep)
    source = PretrainBatches(
        [StreamSpec("tlm", "io-vo"), StreamSpec("trans_rank", "io-vo")], data, vocab_size=len(data.dictionary),
        mask_index=data.dictionary.mask_index, pad_index=data.dictionary.pad_index, counts=data.dictionary.counts, batching=BatchSettings(batch_size=5), masking=MaskingSettings(), seed=4,
    )  # fmt: skip
    source.configure(rank=rank, world_size=world)
    return source, [item for _, item in zip(range(n), source)]


def test_trans_rank_batches_are_the_pairs_whole_and_split_over_ranks(synthetic_prep) -> None:
    from xlmtrain.data.preprocessed import PreprocessedData
    from xlmtrain.objectives.batches import PairBatch

    data = PreprocessedData(synthetic_prep)
    io, vo = data.parallel("train", "io", "vo")
    _, whole = _pair_items(synthetic_prep, 0, 1, 12)
    pairs = [item for item in whole if item.stream == 1]
    assert pairs and all(isinstance(item.batch, PairBatch) for item in pairs)
    for item in pairs:
        b = item.batch
        assert (
            b.global_rows == 5 and b.src_langs.eq(data.lang2id["io"]).all() and b.tgt_langs.eq(data.lang2id["vo"]).all()
        )
        for row in range(5):  # each row is `</s> sentence </s>` of an aligned pair: find the io sentence, check its vo
            src = b.src_ids[row, 1 : int(b.src_lengths[row]) - 1].tolist()
            tgt = b.tgt_ids[row, 1 : int(b.tgt_lengths[row]) - 1].tolist()
            index = next(i for i in range(len(io)) if io[i].tolist() == src and vo[i].tolist() == tgt)
            assert index >= 0
    ranks = [_pair_items(synthetic_prep, r, 2, 12)[1] for r in range(2)]
    for k, item in enumerate(whole):
        if item.stream != 1:
            continue
        parts = [r[k].batch for r in ranks]
        assert [p.global_rows for p in parts] == [5, 5] and [len(p.src_ids) for p in parts] == [3, 2]
        for side in ("src", "tgt"):
            rows = [
                row[: int(n)].tolist()
                for p in parts
                for row, n in zip(getattr(p, f"{side}_ids"), getattr(p, f"{side}_lengths"))
            ]
            full = getattr(item.batch, f"{side}_ids")
            assert rows == [row[: int(n)].tolist() for row, n in zip(full, getattr(item.batch, f"{side}_lengths"))]


def test_pair_stream_state_resumes_at_the_next_batch(synthetic_prep) -> None:
    source, items = _pair_items(synthetic_prep, 0, 1, 10)
    state = source.state_after(5)
    again, _ = _pair_items(synthetic_prep, 0, 1, 0)
    again.restore(state)
    resumed = [item for _, item in zip(range(4), again)]
    for a, b in zip(resumed, items[6:]):
        assert a.stream == b.stream and a.index == b.index
        first = a.batch.src_ids if a.stream == 1 else a.batch.input_ids
        assert torch.equal(first, b.batch.src_ids if b.stream == 1 else b.batch.input_ids)


def _module(objective: str, **alignment):
    from xlmtrain.model.config import XLMConfig
    from xlmtrain.objectives.pretrain import PretrainModule
    from xlmtrain.objectives.streams import StreamSpec

    config = XLMConfig(vocab_size=40, emb_dim=8, n_layers=1, n_heads=2, n_langs=2, use_lang_emb=False)
    return PretrainModule(config, [StreamSpec(objective, "io-vo")], optimizer=torch.optim.SGD, alignment=alignment)


def _toy_pairs(n: int = 4) -> PairBatch:  # noqa: F821
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randint(6, 40, (n, 5), generator=g), torch.randint(6, 40, (n, 6), generator=g)
    x1[:, 0] = x2[:, 0] = 1
    return pair_batch(x1, torch.full((n,), 5), x2, torch.full((n,), 6), lang1_id=0, lang2_id=1)


def test_module_trans_rank_loss_is_the_pooled_encoder_loss() -> None:
    module = _module("trans_rank", pooling="first", margin=0.1, scale=7.0)
    batch = _toy_pairs()
    module.eval()  # no dropout: both computations see the same network
    enc = module.model.transformer
    src = enc.encode(batch.src_ids, lengths=batch.src_lengths, langs=batch.src_langs).last_hidden_state[:, 0]
    tgt = enc.encode(batch.tgt_ids, lengths=batch.tgt_lengths, langs=batch.tgt_langs).last_hidden_state[:, 0]
    expected = translation_ranking_loss(src, tgt, global_rows=4, margin=0.1, scale=7.0, gather=False)
    torch.testing.assert_close(module.alignment_losses(batch, "trans_rank"), expected)
    assert module.xlco is None and module.hparams["alignment"]["margin"] == 0.1


def test_module_xlco_moves_momentum_enqueues_and_keeps_state_out_of_the_model() -> None:
    module = _module("xlco", xlco_queue_size=6, xlco_momentum=0.5)
    with torch.no_grad():
        for p in module.model.transformer.parameters():
            p.add_(0.1)
    key_before = module.xlco.key_encoder.embeddings.weight.clone()
    module.alignment_losses(_toy_pairs(), "xlco")
    online = module.model.transformer.embeddings.weight
    torch.testing.assert_close(module.xlco.key_encoder.embeddings.weight, 0.5 * key_before + 0.5 * online)
    assert int(module.xlco.queue_filled) == 6  # 4 pairs x 2 sides = 8 keys, capped at the queue size
    keys = module.state_dict().keys()
    assert "xlco.queue" in keys and "xlco.key_encoder.embeddings.weight" in keys
    assert not any(k.startswith("xlco") for k in module.model.state_dict())  # export (self.model) unchanged
    trained = {id(p) for p in module.parameters() if p.requires_grad}
    assert not any(id(p) in trained for p in module.xlco.parameters())
