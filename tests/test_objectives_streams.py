"""Stream specs and mixing proportions (XLM §A4.1, §A4.6)."""

from __future__ import annotations

import pytest
import torch

from xlmtrain.objectives.streams import StreamMixture, StreamSpec, smoothed_probs


def test_spec_validation_and_names() -> None:
    assert StreamSpec("tlm", "en-fr").name == "en-fr_tlm"
    assert StreamSpec("clm", "en-fr").is_pair
    with pytest.raises(ValueError, match="tlm needs a language pair"):
        StreamSpec("tlm", "en")
    with pytest.raises(ValueError, match="mlm on a pair is tlm"):
        StreamSpec("mlm", "en-fr")
    with pytest.raises(ValueError, match="objective must be one of"):
        StreamSpec("mt", "en")
    with pytest.raises(ValueError, match="lambda schedule"):
        StreamSpec("mlm", "en", lambda_="0:1,x")


def test_smoothed_probs_match_formula() -> None:
    q = smoothed_probs([900, 100], alpha=0.5)
    assert q[0] == pytest.approx(0.75)  # sqrt(.9) / (sqrt(.9) + sqrt(.1)) = 3 / 4
    assert smoothed_probs([900, 100], alpha=-1) == [0.5, 0.5]
    assert smoothed_probs([900, 100], alpha=1.0) == pytest.approx([0.9, 0.1])


def test_mixture_proportions_over_many_draws() -> None:
    specs = [StreamSpec("mlm", "en"), StreamSpec("mlm", "fr"), StreamSpec("tlm", "en-fr")]
    mix = StreamMixture(specs, {"en_mlm": 900, "fr_mlm": 100, "en-fr_tlm": 50}, alpha=0.5)
    # The mlm group keeps its weight 2 and splits it 3:1; tlm keeps 1: probabilities 1/2, 1/6, 1/3.
    assert mix.probabilities(0) == pytest.approx([0.5, 1 / 6, 1 / 3])
    g = torch.Generator().manual_seed(0)
    hist = torch.bincount(torch.tensor([mix.draw(0, g) for _ in range(6000)]), minlength=3) / 6000
    assert hist.tolist() == pytest.approx([0.5, 1 / 6, 1 / 3], abs=0.02)


def test_zero_lambda_streams_are_not_drawn() -> None:
    specs = [StreamSpec("mlm", "en"), StreamSpec("tlm", "en-fr", lambda_="0:0,100:0,200:1")]
    mix = StreamMixture(specs, {"en_mlm": 10, "en-fr_tlm": 10}, alpha=-1)
    assert mix.probabilities(0) == [1.0, 0.0]
    assert mix.probabilities(200) == [0.5, 0.5]
    only_late = StreamMixture([specs[1]], {"en-fr_tlm": 10}, alpha=-1)
    with pytest.raises(ValueError, match="every stream has lambda 0 at step 3"):
        only_late.probabilities(3)
