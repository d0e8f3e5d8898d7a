"""Numerical parity of xlmtrain's XLM core and heads with transformers, on random weights in fp32."""

from __future__ import annotations

import pytest
import torch
import transformers

from xlmtrain.interop.weights import load_weights
from xlmtrain.model import XLMConfig, build_model

TOL = 1e-5
BS, SLEN, VOCAB = 3, 12, 100
TINY = dict(vocab_size=VOCAB, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64, num_labels=2)

# name -> (config changes, padding mode, extra inputs). Every feature of the issue is on in some row.
CASES = {
    "base_lengths": (dict(), "lengths", ()),
    "sinusoidal_langs_mask": (dict(sinusoidal_embeddings=True, n_langs=3), "attention_mask", ("langs",)),
    "no_lang_emb_relu": (dict(n_langs=3, use_lang_emb=False, gelu_activation=False), "lengths", ("langs",)),
    "causal_tlm_positions": (dict(causal=True, n_langs=2), "lengths", ("langs", "position_ids")),
    "causal_relu_sinusoidal_mask": (
        dict(causal=True, gelu_activation=False, sinusoidal_embeddings=True),
        "attention_mask",
        (),
    ),
    "unpadded_token_types": (dict(n_langs=2), "none", ("langs", "token_type_ids")),
    "empty_row_mask": (dict(n_langs=3), "empty_row", ("langs",)),
}

HF_CLASSES = {
    "lm": transformers.XLMWithLMHeadModel,
    "sequence_classification": transformers.XLMForSequenceClassification,
    "token_classification": transformers.XLMForTokenClassification,
    "multiple_choice": transformers.XLMForMultipleChoice,
    "question_answering_simple": transformers.XLMForQuestionAnsweringSimple,
    "question_answering": transformers.XLMForQuestionAnswering,
}


def make_inputs(changes: dict, padding: str, extras: tuple[str, ...], gen: torch.Generator) -> dict:
    """Random ids, right padding given by `lengths` or `attention_mask`, and the requested extra inputs."""
    ids = torch.randint(14, VOCAB, (BS, SLEN), generator=gen)
    lengths = torch.tensor([SLEN, 9, 5] if padding != "empty_row" else [SLEN, 6, 0])
    keep = torch.arange(SLEN)[None, :] < lengths[:, None]
    inputs: dict = {}
    if padding != "none":
        ids = ids.masked_fill(~keep, 2)
        if padding == "lengths":
            inputs["lengths"] = lengths
        else:
            inputs["attention_mask"] = keep.long()
    if "langs" in extras:
        inputs["langs"] = torch.randint(0, changes["n_langs"], (BS, SLEN), generator=gen)
    if "position_ids" in extras:  # TLM layout: positions restart at the second sentence
        inputs["position_ids"] = torch.cat([torch.arange(5), torch.arange(SLEN - 5)]).repeat(BS, 1)
    if "token_type_ids" in extras:
        inputs["token_type_ids"] = torch.randint(0, 2, (BS, SLEN), generator=gen)
    return {"input_ids": ids, **inputs}


def make_pair(head: str, changes: dict, seed: int = 0):
    """A transformers model with perturbed random weights and the xlmtrain model loaded from its state dict."""
    torch.manual_seed(seed)
    hf = HF_CLASSES[head](transformers.XLMConfig(**TINY, **changes))
    with torch.no_grad():  # move every LayerNorm / bias off its trivial init so they are really compared
        for param in hf.parameters():
            param.add_(0.05 * torch.randn_like(param))
    ours = build_model(XLMConfig.from_dict(hf.config.to_dict()), head)
    report = load_weights(ours, hf.state_dict(), "hf")
    assert not report.newly_initialized and not report.ignored
    return hf.eval(), ours.eval()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= TOL


def head_labels(head: str, gen: torch.Generator) -> dict:
    if head == "lm":
        labels = torch.randint(0, VOCAB, (BS, SLEN), generator=gen)
        return {"labels": labels.masked_fill(torch.rand(BS, SLEN, generator=gen) < 0.5, -100)}
    if head == "sequence_classification":
        return {"labels": torch.randint(0, 2, (BS,), generator=gen)}
    if head == "token_classification":
        return {"labels": torch.randint(0, 2, (BS, SLEN), generator=gen)}
    if head == "multiple_choice":
        return {"labels": torch.randint(0, 2, (BS // 3,), generator=gen)}
    positions = {"start_positions": torch.tensor([1, 3, 0]), "end_positions": torch.tensor([4, 5, 2])}
    if head == "question_answering":
        positions |= {"cls_index": torch.tensor([0, 0, 0]), "is_impossible": torch.tensor([0.0, 1.0, 0.0])}
    return positions


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("head", sorted(HF_CLASSES))
def test_head_parity(head: str, case: str) -> None:
    changes, padding, extras = CASES[case]
    gen = torch.Generator().manual_seed(1)
    inputs = make_inputs(changes, padding, extras, gen)
    if head == "multiple_choice":  # (1, 3 choices, slen); transformers drops `lengths` here
        if "lengths" in inputs:
            lengths = inputs.pop("lengths")
            inputs["attention_mask"] = (torch.arange(SLEN)[None, :] < lengths[:, None]).long()
        inputs = {k: v[None] for k, v in inputs.items()}
    hf, ours = make_pair(head, changes)
    labels = head_labels(head, gen)
    with torch.no_grad():
        expected, got = hf(**inputs), ours(**inputs)
        expected_loss, got_loss = hf(**inputs, **labels).loss, ours(**inputs, **labels).loss
    fields = {
        "question_answering": ["start_top_log_probs", "end_top_log_probs", "cls_logits"],
        "question_answering_simple": ["start_logits", "end_logits"],
    }.get(head, ["logits"])
    for field in fields:
        assert close(getattr(expected, field), getattr(got, field)), field
    if head == "question_answering":
        assert torch.equal(expected.start_top_index, got.start_top_index)
        assert torch.equal(expected.end_top_index, got.end_top_index)
    assert abs(expected_loss.item() - got_loss.item()) <= TOL


# In float64 the two agree to ~2e-8 (transformers' XLM takes its attention softmax in float32 even in float64:
# `softmax(scores.float())`), so a 1e-7 tolerance separates real differences from that noise: an FFN scaled by
# 1.0001 moves every head's outputs by >= 1e-6 (fp32 at 1e-5 misses it on the multiple-choice and QA heads).
TOL64 = 1e-7


# Not the all-pad row: transformers gives NaN there in float64 (its fp32 outputs are finite and compared above).
@pytest.mark.parametrize("case", sorted(set(CASES) - {"empty_row_mask"}))
@pytest.mark.parametrize("head", sorted(HF_CLASSES))
def test_head_parity_float64(head: str, case: str) -> None:
    changes, padding, extras = CASES[case]
    gen = torch.Generator().manual_seed(1)
    inputs = make_inputs(changes, padding, extras, gen)
    if head == "multiple_choice":
        if "lengths" in inputs:
            lengths = inputs.pop("lengths")
            inputs["attention_mask"] = (torch.arange(SLEN)[None, :] < lengths[:, None]).long()
        inputs = {k: v[None] for k, v in inputs.items()}
    hf, ours = make_pair(head, changes)
    hf, ours = hf.double(), ours.double()
    labels = head_labels(head, gen)
    with torch.no_grad():
        expected, got = hf(**inputs), ours(**inputs)
        losses = hf(**inputs, **labels).loss, ours(**inputs, **labels).loss
    fields = {
        "question_answering": ["start_top_log_probs", "end_top_log_probs", "cls_logits"],
        "question_answering_simple": ["start_logits", "end_logits"],
    }.get(head, ["logits"])
    for field, (a, b) in [("loss", losses), *((f, (getattr(expected, f), getattr(got, f))) for f in fields)]:
        assert a.dtype == b.dtype == torch.float64 and a.shape == b.shape, field
        assert (a - b).abs().max().item() <= TOL64, (field, (a - b).abs().max().item())


def test_hidden_states_match_every_layer_and_padding_is_zero() -> None:
    hf, ours = make_pair("lm", dict(n_langs=3))
    inputs = make_inputs(dict(n_langs=3), "empty_row", ("langs",), torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf.transformer(**inputs, output_hidden_states=True).hidden_states
        got = ours.transformer.encode(**inputs, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == 3
    assert all(close(a, b) for a, b in zip(expected, got))
    assert got[-1][2].abs().max() == 0  # the empty row is zeroed by the mask multiply, not NaN


def test_lm_gradients_match() -> None:
    hf, ours = make_pair("lm", dict(n_langs=3))
    hf.train(), ours.train()
    hf.config.dropout = 0.0  # dropout RNG differs between implementations; switch it off on both sides
    for module in [*hf.modules(), *ours.modules()]:
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.0
    ours.config.dropout = 0.0
    gen = torch.Generator().manual_seed(3)
    inputs = make_inputs(dict(n_langs=3), "lengths", ("langs",), gen)
    labels = head_labels("lm", gen)
    hf(**inputs, **labels).loss.backward()
    ours(**inputs, **labels).loss.backward()
    expected = {k: p.grad for k, p in hf.named_parameters()}
    got = {k: p.grad for k, p in ours.named_parameters()}
    assert set(got) == set(expected)
    for key in expected:
        assert close(expected[key], got[key]), key
    assert ours.pred_layer.proj.weight is ours.transformer.embeddings.weight


def test_pred_mask_fast_path_equals_gathered_full_logits() -> None:
    _, ours = make_pair("lm", dict())
    gen = torch.Generator().manual_seed(4)
    inputs = make_inputs(dict(), "lengths", (), gen)
    pred_mask = torch.rand(BS, SLEN, generator=gen) < 0.3
    pred_mask[0, 0] = True
    targets = torch.randint(0, VOCAB, (BS, SLEN), generator=gen)
    with torch.no_grad():
        full = ours(**inputs, labels=targets.masked_fill(~pred_mask, -100))
        fast = ours(**inputs, pred_mask=pred_mask, labels=targets[pred_mask])
    assert fast.logits.shape == (int(pred_mask.sum()), VOCAB)
    assert torch.allclose(fast.logits, full.logits[pred_mask], atol=1e-6)
    assert abs(fast.loss.item() - full.loss.item()) <= 1e-6


def test_langs_are_ignored_without_language_embeddings() -> None:
    _, ours = make_pair("lm", dict(n_langs=3, use_lang_emb=False))
    ids = torch.randint(14, VOCAB, (2, 6))
    with torch.no_grad():
        a = ours(ids, langs=torch.zeros_like(ids)).logits
        b = ours(ids, langs=torch.full_like(ids, 2)).logits
    assert not hasattr(ours.transformer, "lang_embeddings")
    assert torch.equal(a, b)


def test_sinusoidal_table_matches_transformers_and_is_frozen() -> None:
    hf_table = torch.empty(64, 32)
    transformers.models.xlm.modeling_xlm.create_sinusoidal_embeddings(64, 32, hf_table)
    ours = build_model(XLMConfig(**TINY, sinusoidal_embeddings=True))
    assert torch.allclose(ours.transformer.position_embeddings.weight, hf_table, atol=1e-6)
    assert not ours.transformer.position_embeddings.weight.requires_grad


def test_fresh_init_follows_transformers() -> None:
    torch.manual_seed(0)
    config = XLMConfig(**{**TINY, "vocab_size": 2000, "emb_dim": 64})
    model = build_model(config)
    emb = model.transformer.embeddings.weight
    assert emb[config.pad_index].abs().max() == 0
    assert abs(emb.std().item() - config.embed_init_std) < 0.002
    lin = model.transformer.attentions[0].q_lin
    assert abs(lin.weight.std().item() - config.init_std) < 0.003 and lin.bias.abs().max() == 0


# The selected-rows last block (`output_positions`, used by `pred_mask`) against transformers' full model.
SELECTED_CASES = [
    "base_lengths",
    "sinusoidal_langs_mask",
    "causal_tlm_positions",
    "unpadded_token_types",
    "empty_row_mask",
]


def _pred_mask(gen: torch.Generator, inputs: dict) -> torch.Tensor:
    """~30% of the positions, uneven per row; a row without any (row 1) and selected padding included."""
    pred_mask = torch.rand(BS, SLEN, generator=gen) < 0.3
    pred_mask[0, 0] = pred_mask[0, SLEN - 1] = True
    pred_mask[1] = False
    pred_mask[2, SLEN - 1] = True  # a padded position in every padded case: zero hidden state, as transformers
    return pred_mask


def _no_dropout(*models: torch.nn.Module) -> None:
    for model in models:
        model.config.dropout = 0.0
        for module in model.modules():
            if hasattr(module, "dropout") and isinstance(module.dropout, float):
                module.dropout = 0.0


@pytest.mark.parametrize("case", SELECTED_CASES)
def test_pred_mask_last_block_equals_transformers_full_logits(case: str) -> None:
    changes, padding, extras = CASES[case]
    gen = torch.Generator().manual_seed(5)
    inputs = make_inputs(changes, padding, extras, gen)
    pred_mask = _pred_mask(gen, inputs)
    targets = torch.randint(0, VOCAB, (BS, SLEN), generator=gen)
    hf, ours = make_pair("lm", changes)
    with torch.no_grad():
        full = hf(**inputs, labels=targets.masked_fill(~pred_mask, -100))
        fast = ours(**inputs, pred_mask=pred_mask, labels=targets[pred_mask])
    assert fast.logits.shape == (int(pred_mask.sum()), VOCAB)
    assert close(fast.logits, full.logits[pred_mask])
    assert abs(fast.loss.item() - full.loss.item()) <= TOL


@pytest.mark.parametrize("case", ["base_lengths", "causal_tlm_positions", "unpadded_token_types"])
def test_pred_mask_last_block_gradients_equal_transformers(case: str) -> None:
    changes, padding, extras = CASES[case]
    gen = torch.Generator().manual_seed(6)
    inputs = make_inputs(changes, padding, extras, gen)
    pred_mask = _pred_mask(gen, inputs) & (inputs["input_ids"] != 2)  # MLM never predicts padding
    targets = torch.randint(0, VOCAB, (BS, SLEN), generator=gen)
    hf, ours = make_pair("lm", changes)
    hf.train(), ours.train()
    _no_dropout(hf, ours)
    hf(**inputs, labels=targets.masked_fill(~pred_mask, -100)).loss.backward()
    ours(**inputs, pred_mask=pred_mask, labels=targets[pred_mask]).loss.backward()
    expected = {k: p.grad for k, p in hf.named_parameters()}
    for key, param in ours.named_parameters():
        assert close(expected[key], param.grad), key


def test_output_positions_without_any_selected_row_and_with_hidden_states() -> None:
    _, ours = make_pair("lm", dict())
    inputs = make_inputs(dict(), "lengths", (), torch.Generator().manual_seed(7))
    none = torch.zeros(BS, SLEN, dtype=torch.bool)
    some = torch.zeros(BS, SLEN, dtype=torch.bool)
    some[0, 3] = some[2, 1] = True
    with torch.no_grad():
        assert ours.transformer(**inputs, output_positions=none).shape == (0, 32)
        full = ours.transformer(**inputs)
        with_states = ours.transformer.encode(**inputs, output_positions=some, output_hidden_states=True)
        fast = ours.transformer(**inputs, output_positions=some)
    assert close(with_states.last_hidden_state, full[some]) and close(fast, full[some])
    assert close(with_states.hidden_states[-1], full)
    with pytest.raises(ValueError, match="output_positions must be a bool tensor"):
        ours.transformer(**inputs, output_positions=some.long())
