"""`XLMConfig`: the XLM hyper-parameters, with transformers' field names and defaults.

`XLMConfig.from_dict` / `XLMConfig.to_dict` read and write transformers' `config.json` layout, so a
config round-trips in both directions; keys xlmtrain does not model are kept in `extra` and written back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SUMMARY_TYPES = ("first", "last", "mean", "cls_index")
SUMMARY_ACTIVATIONS = (None, "tanh", "relu", "gelu", "linear")

# transformers' `attribute_map` plus its pre-5.x spellings: JSON key -> XLMConfig field.
_ALIASES = {
    "n_words": "vocab_size",
    "hidden_size": "emb_dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "bos_token_id": "bos_index",
    "eos_token_id": "eos_index",
    "pad_token_id": "pad_index",
}
# Fields transformers 5.x writes under another name.
_JSON_NAMES = {"bos_index": "bos_token_id", "eos_index": "eos_token_id", "pad_index": "pad_token_id"}
_DEFAULT_NUM_LABELS = 2  # transformers' default; it writes id2label only when num_labels differs


class ConfigError(ValueError):
    """An invalid XLM configuration (the message names the source and the key)."""


class UnsupportedFeatureError(ConfigError):
    """A valid original-XLM / transformers option that xlmtrain deliberately does not implement."""


@dataclass
class XLMConfig:
    """XLM encoder hyper-parameters; names and defaults are those of `transformers.XLMConfig`."""

    vocab_size: int = 30145
    """Number of rows of the token embedding table (`n_words` in the original code)."""
    emb_dim: int = 2048
    """Model width; the FFN is 4 * emb_dim wide."""
    n_layers: int = 12
    """Number of post-LN Transformer blocks."""
    n_heads: int = 16
    """Attention heads per block; must divide emb_dim."""
    dropout: float = 0.1
    """Dropout after the embeddings, the attention output and the FFN output."""
    attention_dropout: float = 0.1
    """Dropout on the attention weights."""
    gelu_activation: bool = True
    """Exact (erf) GELU in the FFN when true, ReLU otherwise."""
    sinusoidal_embeddings: bool = False
    """Frozen sinusoidal position table instead of learned positions."""
    causal: bool = False
    """Default attention mode: lower-triangular (CLM) when true; `forward(causal=...)` overrides it."""
    asm: bool = False
    """Adaptive softmax output layer; refused (not supported by xlmtrain)."""
    n_langs: int = 1
    """Number of languages; language embeddings exist only when n_langs > 1 and use_lang_emb."""
    use_lang_emb: bool = True
    """Add a learned language embedding per token (only when n_langs > 1)."""
    max_position_embeddings: int = 512
    """Rows of the position table: the longest sequence the model accepts."""
    embed_init_std: float = 2048**-0.5
    """Std of the normal init of the embedding tables (a constant, as transformers, not emb_dim**-0.5)."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm."""
    init_std: float = 0.02
    """Std of the normal init of every Linear weight (biases start at zero): transformers' XLM init. The original
    XLM keeps PyTorch's default Linear init (Kaiming-uniform, bound 1/sqrt(fan_in), uniform biases) and
    initialises the embeddings with N(0, emb_dim**-0.5); xlmtrain follows transformers (pretraining sets
    embed_init_std = emb_dim**-0.5 as XLM), so a fresh model's Linear layers differ from a fresh XLM's."""
    bos_index: int = 0
    """Id of `<s>` (JSON key `bos_token_id`)."""
    eos_index: int = 1
    """Id of `</s>`, the sentence delimiter (JSON key `eos_token_id`)."""
    pad_index: int = 2
    """Id of `<pad>`; its embedding row starts at zero (JSON key `pad_token_id`). The lookup gives it no gradient
    (`padding_idx`), but the output projection is tied to the same matrix, so the row does get the LM loss's
    gradient through the softmax (as in XLM and transformers) and moves away from zero during training."""
    unk_index: int = 3
    """Id of `<unk>`."""
    mask_index: int = 5
    """Id of the MLM mask token `<special1>`."""
    is_encoder: bool = True
    """Must be true: xlmtrain, like transformers, implements the encoder only."""
    summary_type: str = "first"
    """How the sequence summary head pools: first, last, mean or cls_index."""
    summary_use_proj: bool = True
    """Add a Linear projection in the sequence summary head."""
    summary_activation: str | None = None
    """Activation after the summary projection: None, tanh, relu, gelu or linear."""
    summary_proj_to_labels: bool = True
    """Project the summary to num_labels (else to emb_dim)."""
    summary_first_dropout: float = 0.1
    """Dropout on the pooled vector, before the summary projection."""
    start_n_top: int = 5
    """Beam size over answer starts in the SQuAD head at inference."""
    end_n_top: int = 5
    """Beam size over answer ends per start in the SQuAD head at inference."""
    mask_token_id: int | None = 0
    """transformers' generation helper id (not the tokenizer's mask id, which is mask_index)."""
    lang_id: int = 0
    """Language id transformers' generation fills `langs` with."""
    lang2id: dict[str, int] | None = None
    """Language code -> language id."""
    id2lang: dict[int, str] | None = None
    """Language id -> language code (keys are strings in JSON)."""
    num_labels: int = 2
    """Output classes of the classification / token / multiple-choice / QA heads."""
    id2label: dict[int, str] | None = None
    """Class names by output id (XNLI: contradiction, neutral, entailment; a tagger's tags), written to
    config.json as `id2label` / `label2id`; None (or a count other than num_labels): transformers' LABEL_i."""
    problem_type: str | None = None
    """Sequence classification loss: regression, single_label_classification or multi_label_classification;
    None infers it from num_labels and the label dtype, as transformers does."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of the source config.json that xlmtrain does not model; written back unchanged."""

    def __post_init__(self) -> None:
        if self.id2lang is not None:
            self.id2lang = {int(k): v for k, v in self.id2lang.items()}
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if self.asm:
            raise UnsupportedFeatureError(
                "adaptive softmax (key 'asm'=true) is not supported by xlmtrain; use asm=false"
            )
        if not self.is_encoder:
            raise UnsupportedFeatureError("a decoder (key 'is_encoder'=false) is not supported by xlmtrain")
        for name in ("vocab_size", "emb_dim", "n_layers", "n_heads", "max_position_embeddings", "num_labels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"key '{name}' must be >= 1, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads != 0:
            raise ConfigError(f"key 'emb_dim' ({self.emb_dim}) must be divisible by 'n_heads' ({self.n_heads})")
        if self.n_langs < 1:
            raise ConfigError(f"key 'n_langs' must be >= 1, got {self.n_langs}")
        for name in ("dropout", "attention_dropout", "summary_first_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"key '{name}' must be in [0, 1), got {getattr(self, name)}")
        for name in ("bos_index", "eos_index", "pad_index", "unk_index", "mask_index"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                value = getattr(self, name)
                raise ConfigError(f"key '{name}'={value} is outside the vocabulary [0, {self.vocab_size})")
        if self.summary_type not in SUMMARY_TYPES:
            raise ConfigError(f"key 'summary_type' must be one of {SUMMARY_TYPES}, got {self.summary_type!r}")
        if self.summary_activation not in SUMMARY_ACTIVATIONS:
            raise ConfigError(
                f"key 'summary_activation' must be one of {SUMMARY_ACTIVATIONS}, got {self.summary_activation!r}"
            )
        self._check_languages()

    def _check_languages(self) -> None:
        for name in ("lang2id", "id2lang"):
            mapping = getattr(self, name)
            if mapping is not None and len(mapping) != self.n_langs:
                raise ConfigError(f"key '{name}' has {len(mapping)} languages but 'n_langs' is {self.n_langs}")
        if self.lang2id is not None and self.id2lang is not None:
            if {i: lang for lang, i in self.lang2id.items()} != self.id2lang:
                raise ConfigError("keys 'lang2id' and 'id2lang' are not inverse mappings")

    @property
    def has_lang_embeddings(self) -> bool:
        """Whether the model has a language embedding table (and therefore uses `langs`)."""
        return self.n_langs > 1 and self.use_lang_emb

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> XLMConfig:
        """Build a config from a transformers `config.json` dict (aliases accepted, unknown keys kept in `extra`).

        Raises `ConfigError` (naming `source` and the key) on conflicting aliases or invalid values, and
        `UnsupportedFeatureError` for `asm=true` or original-XLM memory layers (`use_memory=true`).
        """
        if data.get("use_memory"):
            raise UnsupportedFeatureError(
                f"{source}: product-key memory layers (key 'use_memory'=true) are not supported by xlmtrain"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            name = _ALIASES.get(key, key)
            if name in names:
                if name in kwargs and kwargs[name] != value:
                    raise ConfigError(f"{source}: key '{key}'={value!r} conflicts with its alias ({kwargs[name]!r})")
                kwargs[name] = value
            elif key != "model_type":
                extra[key] = value
        if "id2label" in kwargs:
            extra.pop("label2id", None)  # derived from id2label when written
            if "num_labels" not in kwargs:
                kwargs["num_labels"] = len(kwargs["id2label"])
        try:
            return cls(**kwargs, extra=extra)
        except ConfigError as err:
            raise type(err)(f"{source}: {err}") from None
        except TypeError as err:  # e.g. a string where a number is expected
            raise ConfigError(f"{source}: invalid value in config: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The transformers `config.json` dict (`model_type: xlm`, transformers 5.x key names, `extra` merged)."""
        out: dict[str, Any] = {"model_type": "xlm"}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "num_labels", "id2label"):
                continue
            value = getattr(self, f.name)
            if f.name in ("lang2id", "id2lang", "problem_type") and value is None:
                continue
            if f.name == "id2lang":
                value = {str(k): v for k, v in value.items()}
            out[_JSON_NAMES.get(f.name, f.name)] = value
        out.update(self.extra)
        names = self.id2label if self.id2label is not None and len(self.id2label) == self.num_labels else None
        if names is None and self.num_labels != _DEFAULT_NUM_LABELS:
            names = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if names is not None:
            out["id2label"] = {str(i): name for i, name in sorted(names.items())}
            out["label2id"] = {name: i for i, name in sorted(names.items())}
        return out

    def replace(self, source: str = "<overrides>", **changes: Any) -> XLMConfig:
        """A copy with `changes` applied; raises `ConfigError` naming an unknown key."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown XLMConfig key(s) {unknown}")
        return dataclasses.replace(self, **changes)
