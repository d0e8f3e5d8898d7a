"""Format detection, `load_model` and `save_model`: the public checkpoint API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from xlmtrain.interop.hf import is_hf_dir, read_hf_config, read_hf_weights, write_hf_dir
from xlmtrain.interop.native import is_native_dir, read_native, write_native
from xlmtrain.interop.original import read_original
from xlmtrain.interop.weights import CheckpointError, LoadReport, load_weights
from xlmtrain.model.config import ConfigError, XLMConfig
from xlmtrain.model.heads import HEADS, XLMHeadModel, build_model

RUN_MODEL_DIR = "model"  # a training run dir keeps its transformers-format export here


@dataclass
class Checkpoint:
    """A checkpoint read from disk, before a model is built from it."""

    config: XLMConfig
    state_dict: dict[str, Tensor]
    head: str | None
    """The head the checkpoint was saved with, when the format records it."""
    format: Literal["xlmtrain", "hf", "original"]
    directory: Path | None
    """The directory holding tokenizer files, for directory formats."""
    word2id: dict[str, int] | None = None
    """An original checkpoint's dictionary (`dico_word2id`)."""


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Detect the format of `path` and read it.

    Formats: an xlmtrain dir (`xlmtrain_model.json`), a transformers dir (`config.json` + weights), a run
    dir (containing `model/` in transformers format), or an original XLM `.pth` file.

    Raises:
        CheckpointError: unknown format (naming the path), unreadable or inconsistent files.
    """
    path = Path(path)
    if path.is_file():
        config, state, word2id = read_original(path)
        return Checkpoint(
            config, state, "lm" if any(k.startswith("pred_layer.") for k in state) else None, "original", None, word2id
        )
    if is_native_dir(path):
        config, head, state = read_native(path)
        return Checkpoint(config, state, head, "xlmtrain", path)
    if is_hf_dir(path):
        config, head = read_hf_config(path)
        return Checkpoint(config, read_hf_weights(path), head, "hf", path)
    if is_hf_dir(path / RUN_MODEL_DIR):
        return read_checkpoint(path / RUN_MODEL_DIR)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    raise CheckpointError(
        f"{path}: unknown checkpoint format (expected an original XLM .pth file, a directory with "
        "xlmtrain_model.json, a transformers directory with config.json + model.safetensors/pytorch_model.bin, "
        f"or a run directory with {RUN_MODEL_DIR}/)"
    )


def model_from_checkpoint(
    checkpoint: Checkpoint, head: str, source: str, **config_overrides: Any
) -> tuple[XLMHeadModel, LoadReport]:
    """Build the `head` model for `checkpoint` (config overrides applied) and load its weights strictly."""
    try:
        config = checkpoint.config.replace(source=source, **config_overrides)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    model = build_model(config, head)
    return model, load_weights(model, checkpoint.state_dict, source)


def load_model(path: str | Path, head: str = "lm", **config_overrides: Any) -> XLMHeadModel:
    """Load any supported checkpoint as the model with the named head, in eval mode.

    Args:
        path: an xlmtrain dir, a transformers dir, a run dir or an original XLM `.pth`.
        head: `lm`, `sequence_classification`, `token_classification`, `multiple_choice`,
            `question_answering_simple` or `question_answering`. A head absent from the checkpoint is
            freshly initialised (and logged), as transformers does.
        **config_overrides: XLMConfig fields to change, e.g. `causal=True` or `num_labels=3`.

    Raises:
        CheckpointError: unknown format, missing / unexpected keys, wrong shapes, vocabulary mismatch.
        UnsupportedFeatureError: asm, memory layers.
        ValueError: unknown head.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    model, _ = model_from_checkpoint(read_checkpoint(path), head, str(path), **config_overrides)
    return model.eval()


def head_name(model: XLMHeadModel) -> str:
    """The `HEADS` name of a model instance."""
    return next(name for name, cls in HEADS.items() if type(model) is cls)


def save_model(model: XLMHeadModel, path: str | Path, format: Literal["xlmtrain", "hf"] = "xlmtrain") -> None:
    """Save `model` as an xlmtrain checkpoint dir or a transformers dir (`from_pretrained`-loadable)."""
    writers = {"xlmtrain": write_native, "hf": write_hf_dir}
    if format not in writers:
        raise ValueError(f"unknown format {format!r}; choose one of {sorted(writers)}")
    writers[format](model, head_name(model), Path(path))
