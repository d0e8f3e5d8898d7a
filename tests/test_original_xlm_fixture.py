"""An original facebookresearch/XLM checkpoint that owes nothing to xlmtrain's or transformers' assumptions.

The weights are created here in the original state-dict layout (xlm/model/transformer.py `TransformerModel`:
`position_embeddings`, `lang_embeddings`, `embeddings`, `layer_norm_emb`, `attentions.N.{q,k,v,out}_lin`,
`layer_norm1.N`, `ffns.N.lin1/lin2`, `layer_norm2.N`, `pred_layer.proj`), saved as the original trainer saves
them (`model`, `params`, `dico_id2word`, `dico_word2id`, `dico_counts`), and the expected logits come from
`original_fwd` below: a line-by-line port of the original `TransformerModel.fwd` + `PredLayer.get_scores`
(commit cd281d3 of github.com/facebookresearch/XLM), written with plain torch functions on the saved tensors.
Nothing in this file imports xlmtrain.model or transformers; `xlmtrain.load_model` must reproduce the port.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xlmtrain import load_model

N_MAX_POSITIONS = 512  # xlm/model/transformer.py
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"] + [f"<special{i}>" for i in range(10)]  # xlm/data/dictionary.py


def original_weights(p: dict, gen: torch.Generator) -> OrderedDict:
    """Random weights with the original keys and shapes (nn.Linear weights are (out, in)); LayerNorms moved off
    their (1, 0) init so that they matter. `pred_layer.proj.weight` IS `embeddings.weight` (share_inout_emb)."""
    dim, hidden = p["emb_dim"], 4 * p["emb_dim"]

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    w = OrderedDict()
    if p["sinusoidal_embeddings"]:  # create_sinusoidal_embeddings
        enc = np.array(
            [[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(N_MAX_POSITIONS)]
        )
        table = torch.zeros(N_MAX_POSITIONS, dim)
        table[:, 0::2] = torch.FloatTensor(np.sin(enc[:, 0::2]))
        table[:, 1::2] = torch.FloatTensor(np.cos(enc[:, 1::2]))
        w["position_embeddings.weight"] = table
    else:
        w["position_embeddings.weight"] = rnd(N_MAX_POSITIONS, dim)
    if p["n_langs"] > 1 and p["use_lang_emb"]:
        w["lang_embeddings.weight"] = rnd(p["n_langs"], dim)
    w["embeddings.weight"] = rnd(p["n_words"], dim)
    w["embeddings.weight"][p["pad_index"]] = 0  # Embedding(padding_idx=pad_index)
    w["layer_norm_emb.weight"], w["layer_norm_emb.bias"] = 1 + rnd(dim, scale=0.1), rnd(dim, scale=0.1)
    for i in range(p["n_layers"]):
        for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
            w[f"attentions.{i}.{lin}.weight"], w[f"attentions.{i}.{lin}.bias"] = rnd(dim, dim), rnd(dim)
        w[f"layer_norm1.{i}.weight"], w[f"layer_norm1.{i}.bias"] = 1 + rnd(dim, scale=0.1), rnd(dim, scale=0.1)
        w[f"ffns.{i}.lin1.weight"], w[f"ffns.{i}.lin1.bias"] = rnd(hidden, dim), rnd(hidden)
        w[f"ffns.{i}.lin2.weight"], w[f"ffns.{i}.lin2.bias"] = rnd(dim, hidden), rnd(dim)
        w[f"layer_norm2.{i}.weight"], w[f"layer_norm2.{i}.bias"] = 1 + rnd(dim, scale=0.1), rnd(dim, scale=0.1)
    w["pred_layer.proj.weight"] = w["embeddings.weight"]
    w["pred_layer.proj.bias"] = rnd(p["n_words"])
    return w


def original_fwd(w: dict, p: dict, x: torch.Tensor, lengths: torch.Tensor, langs: torch.Tensor | None,
                 causal: bool = False) -> torch.Tensor:  # fmt: skip
    """TransformerModel.fwd (eval: dropout off, no cache, no memory, encoder) then PredLayer.get_scores at every
    position. `x`, `langs`: (slen, bs) as the original; returns scores (slen, bs, n_words)."""
    dim, n_heads = p["emb_dim"], p["n_heads"]
    slen, bs = x.size()
    x = x.transpose(0, 1)
    # get_masks
    alen = torch.arange(slen, dtype=torch.long)
    mask = alen < lengths[:, None]
    attn_mask = alen[None, None, :].repeat(bs, slen, 1) <= alen[None, :, None] if causal else mask
    positions = torch.arange(slen).unsqueeze(0)
    if langs is not None:
        langs = langs.transpose(0, 1)
    tensor = F.embedding(x, w["embeddings.weight"], padding_idx=p["pad_index"])
    tensor = tensor + F.embedding(positions, w["position_embeddings.weight"]).expand_as(tensor)
    if langs is not None and p["use_lang_emb"]:
        tensor = tensor + F.embedding(langs, w["lang_embeddings.weight"])
    tensor = F.layer_norm(tensor, (dim,), w["layer_norm_emb.weight"], w["layer_norm_emb.bias"], eps=1e-12)
    tensor *= mask.unsqueeze(-1).to(tensor.dtype)
    for i in range(p["n_layers"]):
        # MultiHeadAttention.forward
        dim_per_head = dim // n_heads
        mask_reshape = (bs, 1, slen, slen) if attn_mask.dim() == 3 else (bs, 1, 1, slen)

        def lin(name: str, t: torch.Tensor, i: int = i) -> torch.Tensor:
            return F.linear(t, w[f"attentions.{i}.{name}.weight"], w[f"attentions.{i}.{name}.bias"])

        def shape(t: torch.Tensor, dim_per_head: int = dim_per_head) -> torch.Tensor:
            return t.view(bs, -1, n_heads, dim_per_head).transpose(1, 2)

        q, k, v = shape(lin("q_lin", tensor)), shape(lin("k_lin", tensor)), shape(lin("v_lin", tensor))
        q = q / math.sqrt(dim_per_head)
        scores = torch.matmul(q, k.transpose(2, 3))
        scores.masked_fill_((attn_mask == 0).view(mask_reshape).expand_as(scores), -float("inf"))
        weights = F.softmax(scores.float(), dim=-1).type_as(scores)
        context = torch.matmul(weights, v).transpose(1, 2).contiguous().view(bs, -1, n_heads * dim_per_head)
        tensor = tensor + lin("out_lin", context)
        tensor = F.layer_norm(tensor, (dim,), w[f"layer_norm1.{i}.weight"], w[f"layer_norm1.{i}.bias"], eps=1e-12)
        # TransformerFFN.forward
        hidden = F.linear(tensor, w[f"ffns.{i}.lin1.weight"], w[f"ffns.{i}.lin1.bias"])
        hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0))) if p["gelu_activation"] else F.relu(hidden)
        tensor = tensor + F.linear(hidden, w[f"ffns.{i}.lin2.weight"], w[f"ffns.{i}.lin2.bias"])
        tensor = F.layer_norm(tensor, (dim,), w[f"layer_norm2.{i}.weight"], w[f"layer_norm2.{i}.bias"], eps=1e-12)
        tensor *= mask.unsqueeze(-1).to(tensor.dtype)
    tensor = tensor.transpose(0, 1)  # (slen, bs, dim)
    return F.linear(tensor, w["pred_layer.proj.weight"], w["pred_layer.proj.bias"])


def original_params(**changes: object) -> dict:
    """The `params` entries the original trainer pickles (argparse namespace as a dict), for a tiny model."""
    langs = ["de", "en", "fr"]
    params = {
        "n_words": 40, "emb_dim": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.1, "attention_dropout": 0.1,
        "gelu_activation": True, "sinusoidal_embeddings": False, "share_inout_emb": True, "asm": False,
        "n_langs": 3, "use_lang_emb": True, "lang2id": {lang: i for i, lang in enumerate(langs)},
        "id2lang": dict(enumerate(langs)), "bos_index": 0, "eos_index": 1, "pad_index": 2, "unk_index": 3,
        "mask_index": 5, "encoder_only": True, "use_memory": False,
    }  # fmt: skip
    params.update(changes)
    return params


CONFIGS = {
    "learned_positions_langs_gelu": {},
    "sinusoidal_relu_one_language": dict(
        sinusoidal_embeddings=True, gelu_activation=False, n_langs=1, lang2id={"en": 0}, id2lang={0: "en"}
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_load_model_reproduces_the_original_forward(name: str, tmp_path: Path) -> None:
    params = original_params(**CONFIGS[name])
    gen = torch.Generator().manual_seed(0)
    weights = original_weights(params, gen)
    words = SPECIALS + [f"w{i}@@" if i % 3 else f"w{i}" for i in range(params["n_words"] - len(SPECIALS))]
    torch.save({
        "model": weights, "params": params,
        "dico_id2word": dict(enumerate(words)), "dico_word2id": {w: i for i, w in enumerate(words)},
        "dico_counts": {w: 0 if i < len(SPECIALS) else 1000 - i for i, w in enumerate(words)},
    }, tmp_path / "original.pth")  # fmt: skip

    # Two sentences laid out as the original batches them: </s> w.. </s> <pad>..; langs per position.
    lengths = torch.tensor([9, 6])
    x = torch.randint(14, params["n_words"], (9, 2), generator=gen)  # (slen, bs)
    x[0], x[lengths - 1, torch.arange(2)] = 1, 1
    x[6:, 1] = params["pad_index"]
    langs = torch.randint(0, params["n_langs"], (9, 2), generator=gen) if params["n_langs"] > 1 else None
    with torch.no_grad():
        expected = original_fwd(weights, params, x, lengths, langs).transpose(0, 1)  # (bs, slen, n_words)
        model = load_model(tmp_path / "original.pth")
        got = model(x.T.contiguous(), lengths=lengths, langs=None if langs is None else langs.T.contiguous()).logits
    real = torch.arange(9)[None, :] < lengths[:, None]
    assert got.shape == expected.shape
    assert expected[real].abs().max() > 1.0, "logits of a real size, not all near 0"
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)
    # The dictionary came along: ids -> words as the original's dico_id2word.
    assert model.config.vocab_size == len(words)


def test_original_causal_forward_matches(tmp_path: Path) -> None:
    """CLM checkpoints: the original's causal mask (`get_masks(causal=True)`), same weights."""
    params = original_params()
    gen = torch.Generator().manual_seed(1)
    weights = original_weights(params, gen)
    torch.save({"model": weights, "params": params, "dico_id2word": dict(enumerate(SPECIALS + ["a"] * 26))},
               tmp_path / "clm.pth")  # fmt: skip
    x = torch.randint(14, 40, (7, 2), generator=gen)
    lengths = torch.tensor([7, 7])
    langs = torch.ones_like(x)
    with torch.no_grad():
        expected = original_fwd(weights, params, x, lengths, langs, causal=True).transpose(0, 1)
        got = load_model(tmp_path / "clm.pth")(x.T.contiguous(), lengths=lengths, langs=langs.T, causal=True).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
