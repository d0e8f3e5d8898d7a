"""XLMConfig: transformers config.json round trips, aliases, validation and refused features."""

from __future__ import annotations

import json

import pytest
import transformers

from xlmtrain.model import ConfigError, UnsupportedFeatureError, XLMConfig


def hf_json(tmp_path, **kwargs) -> dict:
    transformers.XLMConfig(**kwargs).save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


def test_transformers_json_round_trips_exactly(tmp_path) -> None:
    data = hf_json(
        tmp_path,
        vocab_size=100,
        emb_dim=32,
        n_layers=2,
        n_heads=4,
        n_langs=2,
        num_labels=3,
        lang2id={"en": 0, "fr": 1},
        id2lang={0: "en", 1: "fr"},
        bptt=256,
    )
    config = XLMConfig.from_dict(data)
    assert config.id2lang == {0: "en", 1: "fr"} and config.num_labels == 3 and config.pad_index == 2
    assert config.extra["bptt"] == 256 and "transformers_version" in config.extra
    assert config.to_dict() == data


def test_xlmtrain_dict_loads_in_transformers() -> None:
    ours = XLMConfig(
        vocab_size=64,
        emb_dim=48,
        n_layers=3,
        n_heads=6,
        n_langs=3,
        causal=True,
        num_labels=4,
        pad_index=7,
        lang2id={"a": 0, "b": 1, "c": 2},
    )
    theirs = transformers.XLMConfig.from_dict(ours.to_dict())
    assert (theirs.n_words, theirs.emb_dim, theirs.n_layers, theirs.n_heads) == (64, 48, 3, 6)
    assert theirs.causal and theirs.num_labels == 4 and theirs.pad_index == 7 and theirs.n_langs == 3
    assert XLMConfig.from_dict(ours.to_dict()).to_dict() == ours.to_dict()


def test_label_names_travel_to_transformers_and_back(tmp_path) -> None:
    ours = XLMConfig(
        vocab_size=64,
        emb_dim=32,
        n_layers=1,
        n_heads=4,
        num_labels=3,
        id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
    )
    data = ours.to_dict()
    assert data["id2label"] == {"0": "contradiction", "1": "neutral", "2": "entailment"}
    assert data["label2id"] == {"contradiction": 0, "neutral": 1, "entailment": 2}
    theirs = transformers.XLMConfig.from_dict(data)
    assert theirs.id2label == {0: "contradiction", 1: "neutral", 2: "entailment"} and theirs.num_labels == 3
    theirs.save_pretrained(tmp_path)
    back = XLMConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert back.id2label == ours.id2label and back.num_labels == 3 and "label2id" not in back.extra
    # Without names (or with a stale count) transformers' LABEL_i are written.
    assert ours.replace(num_labels=4).to_dict()["id2label"] == {str(i): f"LABEL_{i}" for i in range(4)}


def test_aliases_and_conflicts() -> None:
    config = XLMConfig.from_dict(
        {
            "n_words": 50,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "pad_index": 4,
            "pad_token_id": 4,
        }
    )
    assert (config.vocab_size, config.emb_dim, config.n_layers, config.n_heads, config.pad_index) == (50, 16, 1, 2, 4)
    with pytest.raises(ConfigError, match=r"cfg.json: key 'n_words'=51 conflicts"):
        XLMConfig.from_dict({"vocab_size": 50, "n_words": 51}, source="cfg.json")


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"asm": True}, UnsupportedFeatureError, r"c.json: adaptive softmax \(key 'asm'=true\) is not supported"),
        ({"use_memory": True}, UnsupportedFeatureError, r"c.json: .*'use_memory'=true\) are not supported by xlmtrain"),
        ({"emb_dim": 30, "n_heads": 4}, ConfigError, r"c.json: key 'emb_dim' \(30\) must be divisible by 'n_heads'"),
        ({"n_langs": 0}, ConfigError, r"key 'n_langs' must be >= 1"),
        ({"n_langs": 2, "lang2id": {"en": 0}}, ConfigError, r"key 'lang2id' has 1 languages but 'n_langs' is 2"),
        ({"vocab_size": 5}, ConfigError, r"key 'mask_index'=5 is outside the vocabulary"),
        ({"dropout": 1.5}, ConfigError, r"key 'dropout' must be in \[0, 1\)"),
        ({"summary_type": "attn"}, ConfigError, r"key 'summary_type'"),
    ],
)
def test_invalid_configs_name_file_and_key(data: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        XLMConfig.from_dict(data, source="c.json")


def test_replace_rejects_unknown_keys() -> None:
    assert XLMConfig().replace(causal=True).causal
    with pytest.raises(ConfigError, match=r"unknown XLMConfig key\(s\) \['casual'\]"):
        XLMConfig().replace(casual=True)
