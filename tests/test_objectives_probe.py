"""The translation-in-context probe on hand-checkable cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xlmtrain.data.corpus_batches import ParallelBatches
from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.objectives.masking import mask_tokens_eval
from xlmtrain.objectives.probe import context_accuracy


def test_probe_runs_same_targets_in_both_conditions(synthetic_prep: Path) -> None:
    """A model whose output bias makes "." win everywhere is right exactly where "." is a target, with or
    without the context: both conditions score the share of "." among XLM's eval-masked targets, counted
    here from the vo sentences and `mask_tokens_eval` with the probe's documented seeds (seed + batch number)."""
    data = PreprocessedData(synthetic_prep)
    dot = data.dictionary.index(".")
    torch.manual_seed(0)
    config = XLMConfig(vocab_size=len(data.dictionary), emb_dim=32, n_layers=1, n_heads=2, n_langs=2)
    model = XLMWithLMHead(config)
    with torch.no_grad():
        model.pred_layer.proj.bias.fill_(-1e4)
        model.pred_layer.proj.bias[dot] = 1e4
    io, vo = data.parallel("valid", "io", "vo")
    n_dot = n_targets = 0
    batches = ParallelBatches(io, vo, batch_size=32, max_len=None, group_by_size=False, shuffle=False)
    for j, (_, (ids, lengths)) in enumerate(batches):  # the probe's vo batches, in corpus order
        masked = mask_tokens_eval(ids, lengths, mask_index=5, generator=torch.Generator().manual_seed(j))
        n_dot += int((masked.labels == dot).sum())
        n_targets += masked.labels.numel()
    expected = 100.0 * n_dot / n_targets
    assert 3.0 < expected < 30.0  # "." is one target in several, never none or all
    alone = context_accuracy(model, data, "io", "vo", with_context=False)
    paired = context_accuracy(model, data, "io", "vo", with_context=True)
    assert alone == pytest.approx(expected, abs=1e-9)
    assert paired == pytest.approx(expected, abs=1e-9)


def test_one_word_targets_skip_the_given_words(synthetic_prep: Path) -> None:
    data = PreprocessedData(synthetic_prep)
    dot = data.dictionary.index(".")
    torch.manual_seed(0)
    config = XLMConfig(vocab_size=len(data.dictionary), emb_dim=32, n_layers=1, n_heads=2, n_langs=2)
    model = XLMWithLMHead(config)
    # A model that always predicts "." is right exactly where "." is a target.
    with torch.no_grad():
        model.pred_layer.proj.bias.fill_(-1e4)
        model.pred_layer.proj.bias[dot] = 1e4
    # One target per vo sentence, uniform over its tokens ("ne" is io only): "." is 1 of ~5, never 0 or all.
    assert 5.0 < context_accuracy(model, data, "io", "vo", with_context=True, skip_words=("ne",)) < 40.0
    for with_context in (False, True):
        assert context_accuracy(model, data, "io", "vo", with_context=with_context, skip_words=(".",)) == 0.0
    with pytest.raises(ValueError, match="not in the vocabulary"):
        context_accuracy(model, data, "io", "vo", with_context=False, skip_words=("no-such-word",))
