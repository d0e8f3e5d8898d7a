"""Masking statistics and exactness (XLM §A4.3, §A5.3)."""

from __future__ import annotations

import pytest
import torch

from xlmtrain.objectives.masking import mask_tokens, mask_tokens_eval, sampling_weights

VOCAB_SIZE, PAD, MASK, EOS = 60, 2, 5, 1


def _batch(bs: int = 64, slen: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, slen + 1, (bs,), generator=g)
    ids = torch.randint(14, VOCAB_SIZE, (bs, slen), generator=g)
    ids[:, 0] = EOS
    ids[torch.arange(bs), lengths - 1] = EOS
    ids[torch.arange(slen)[None, :] >= lengths[:, None]] = PAD
    return ids, lengths


def test_bernoulli_rates_and_80_10_10() -> None:
    ids, lengths = _batch()
    g = torch.Generator().manual_seed(1)
    n_cand = n_pred = n_mask = n_keep = n_rand_other = 0
    for _ in range(200):
        out = mask_tokens(ids, lengths, vocab_size=VOCAB_SIZE, mask_index=MASK, generator=g)
        assert not out.pred_mask[:, 0].any(), "position 0 is never a target"
        assert not out.pred_mask[ids == PAD].any(), "pad is never a target"
        assert torch.equal(out.labels, ids[out.pred_mask])
        assert torch.equal(out.input_ids[~out.pred_mask], ids[~out.pred_mask])
        corrupted = out.input_ids[out.pred_mask]
        n_cand += int((lengths - 1).sum())
        n_pred += len(out.labels)
        n_mask += int((corrupted == MASK).sum())
        n_keep += int((corrupted == out.labels).sum())
        n_rand_other += int(((corrupted != MASK) & (corrupted != out.labels)).sum())
    assert n_pred / n_cand == pytest.approx(0.15, abs=0.005)
    # A random id equals the target (or the mask id) with probability 1/60 each: correct for it.
    p_rand_hit = 1 / VOCAB_SIZE
    assert n_mask / n_pred == pytest.approx(0.8 + 0.1 * p_rand_hit, abs=0.01)
    assert n_keep / n_pred == pytest.approx(0.1 + 0.1 * p_rand_hit, abs=0.01)
    assert n_rand_other / n_pred == pytest.approx(0.1 * (1 - 2 * p_rand_hit), abs=0.01)


def test_random_replacements_are_uniform_over_vocab() -> None:
    ids, lengths = _batch(bs=256, slen=40)
    g = torch.Generator().manual_seed(2)
    replaced = torch.cat(
        [
            (
                out := mask_tokens(
                    ids,
                    lengths,
                    vocab_size=VOCAB_SIZE,
                    mask_index=MASK,
                    generator=g,
                    word_pred=0.5,
                    keep_rand=(0.0, 0.0, 1.0),
                )
            ).input_ids[out.pred_mask]
            for _ in range(10)
        ]
    )
    hist = torch.bincount(replaced, minlength=VOCAB_SIZE).float()
    assert hist[:14].sum() > 0, "XLM draws random ids over the whole vocabulary, specials included"
    expected = len(replaced) / VOCAB_SIZE
    assert ((hist - expected).abs() / expected).max() < 0.2


def test_sample_alpha_exact_count_and_frequency_weighting() -> None:
    counts = torch.zeros(VOCAB_SIZE)
    counts[14:] = torch.arange(1, VOCAB_SIZE - 13).float() ** 2  # word 14 rare, word 59 frequent
    weights = sampling_weights(counts, alpha=0.5)
    assert weights[:14].sum() == 0
    assert weights[15] == pytest.approx(0.5)  # count 4 -> 4^-0.5
    ids, lengths = _batch(bs=32, slen=30)
    g = torch.Generator().manual_seed(3)
    rare = frequent = 0
    for _ in range(100):
        out = mask_tokens(ids, lengths, vocab_size=VOCAB_SIZE, mask_index=MASK, generator=g, token_weights=weights)
        assert len(out.labels) == -(-15 * 32 * 30 // 100)  # ceil(0.15 * bs * slen)
        assert (out.labels >= 14).all(), "specials (</s>, pad) have weight 0"
        assert not out.pred_mask[:, 0].any()
        rare += int((out.labels < 24).sum())
        frequent += int((out.labels >= 50).sum())
    assert rare > 3 * frequent


def test_bad_rates_raise() -> None:
    ids, lengths = _batch(bs=2)
    g = torch.Generator()
    with pytest.raises(ValueError, match="word_pred"):
        mask_tokens(ids, lengths, vocab_size=VOCAB_SIZE, mask_index=MASK, generator=g, word_pred=0.0)
    with pytest.raises(ValueError, match="keep_rand"):
        mask_tokens(ids, lengths, vocab_size=VOCAB_SIZE, mask_index=MASK, generator=g, keep_rand=(0.5, 0.1, 0.1))


def test_eval_masking_is_deterministic_all_mask_and_nonempty() -> None:
    ids, lengths = _batch(bs=128, slen=12)
    lengths[:4] = 3  # one allowed position each: the word between the two </s>
    ids[:4, 3:] = PAD
    outs = [
        mask_tokens_eval(ids, lengths, mask_index=MASK, generator=torch.Generator().manual_seed(0)) for _ in range(2)
    ]
    assert torch.equal(outs[0].pred_mask, outs[1].pred_mask)
    out = outs[0]
    assert out.pred_mask.any(dim=1).all(), "at least one target per row"
    assert (out.input_ids[out.pred_mask] == MASK).all()
    last = torch.arange(12)[None, :] >= (lengths[:, None] - 1)
    assert not out.pred_mask[last].any() and not out.pred_mask[:, 0].any()
    assert out.pred_mask[:4, 1].all()
