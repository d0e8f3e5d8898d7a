"""Stream specs and mixing proportions (XLM §A4.1, §A4.6)."""

from __future__ import annotations

import pytest
import torch

from xlmtrain.objectives.streams import StreamMixture, StreamSpec, expand_langs, smoothed_probs


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


XNLI15 = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()


def _xnli15_specs() -> list[StreamSpec]:
    # XLM README's XNLI-15 --mlm_steps: 15 languages, en-X for the 14 others, then X-en.
    others = [lang for lang in XNLI15 if lang != "en"]
    pairs = [f"en-{lang}" for lang in others] + [f"{lang}-en" for lang in others]
    return [StreamSpec("mlm", lang) for lang in XNLI15] + [StreamSpec("tlm", pair) for pair in pairs]


def test_xlm_mixture_balances_groups_as_xlm_loop() -> None:
    specs = _xnli15_specs()
    sizes = {s.name: 1000 for s in specs}
    xlm = StreamMixture(specs, sizes, alpha=-1, mixture="xlm")
    p = xlm.probabilities(0)
    # XLM's iteration: min(5, 15) MLM steps + min(5, 28) TLM steps -> 50:50; uniform inside each group.
    assert p[:15] == pytest.approx([0.5 / 15] * 15)
    assert p[15:] == pytest.approx([0.5 / 28] * 28)
    assert xlm.steps_per_iteration == 10
    weights = StreamMixture(specs, sizes, alpha=-1, mixture="weights")
    assert sum(weights.probabilities(0)[:15]) == pytest.approx(15 / 43)  # the old 35:65


def test_xlm_mixture_caps_each_group_at_five_steps() -> None:
    # 7 MLM languages -> 5 steps, 2 TLM pairs -> 2 steps, 1 CLM language -> 1 step: shares 5/8, 2/8, 1/8.
    specs = [StreamSpec("mlm", f"l{i}") for i in range(7)] + [StreamSpec("tlm", "l0-l1"), StreamSpec("tlm", "l1-l0")]
    specs.append(StreamSpec("clm", "l0"))
    mix = StreamMixture(specs, {s.name: 10 for s in specs}, alpha=-1)
    p = mix.probabilities(0)
    assert p[:7] == pytest.approx([5 / 8 / 7] * 7)
    assert p[7:9] == pytest.approx([1 / 8, 1 / 8])
    assert p[9] == pytest.approx(1 / 8)
    assert mix.steps_per_iteration == 8
    with pytest.raises(ValueError, match="objective.mixture='xl'"):
        StreamMixture(specs, {s.name: 10 for s in specs}, alpha=-1, mixture="xl")


def test_xlm_mixture_smooths_inside_groups_and_directions_share_the_pair() -> None:
    # XLM's iteration: 1 MLM step + min(5, 3) = 3 TLM steps -> 1/4 : 3/4. alpha 0.5 on the pair sizes 900 (en-fr,
    # both directions) and 100 (de-en): sqrt weights 30:30:10 = 3:3:1 inside TLM's 3/4.
    specs = [
        StreamSpec("mlm", "en"),
        StreamSpec("tlm", "en-fr"),
        StreamSpec("tlm", "fr-en"),
        StreamSpec("tlm", "de-en"),
    ]
    mix = StreamMixture(specs, {"en_mlm": 5, "en-fr_tlm": 900, "fr-en_tlm": 900, "de-en_tlm": 100}, alpha=0.5)
    assert mix.probabilities(0) == pytest.approx([0.25, 0.75 * 3 / 7, 0.75 * 3 / 7, 0.75 * 1 / 7])


def test_expand_langs_patterns() -> None:
    mono, pairs = ["de", "en", "fr"], ["de-en", "en-fr"]
    assert expand_langs("*", mono, pairs) == mono
    assert expand_langs("*-*", mono, pairs) == pairs
    assert expand_langs("*<->*", mono, pairs) == ["de-en", "en-de", "en-fr", "fr-en"]
    assert expand_langs(["en", "fr-en", "*-*"], mono, pairs) == ["en", "fr-en", "de-en", "en-fr"]
    assert expand_langs("en-fr", mono, pairs) == ["en-fr"]
