"""The translation-in-context probe on hand-checkable cases."""

from __future__ import annotations

from pathlib import Path

import torch

from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.objectives.probe import context_accuracy


def test_probe_runs_same_targets_in_both_conditions(synthetic_prep: Path) -> None:
    data = PreprocessedData(synthetic_prep)
    torch.manual_seed(0)
    config = XLMConfig(vocab_size=len(data.dictionary), emb_dim=32, n_layers=1, n_heads=2, n_langs=2)
    model = XLMWithLMHead(config)
    # A model whose output bias makes one word win everywhere predicts the same thing in both layouts.
    with torch.no_grad():
        model.pred_layer.proj.bias.fill_(-1e4)
        model.pred_layer.proj.bias[20] = 1e4
    alone = context_accuracy(model, data, "io", "vo", with_context=False)
    paired = context_accuracy(model, data, "io", "vo", with_context=True)
    assert alone == paired
    assert 0.0 <= alone < 50.0
