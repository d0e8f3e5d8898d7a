"""Read and write transformers XLM directories (config.json + model.safetensors / pytorch_model.bin)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from xlmtrain.interop.original import safe_torch_load
from xlmtrain.interop.weights import BASE_PREFIX, CheckpointError, exportable_state_dict
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import HF_ARCHITECTURES, XLMHeadModel

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_ARCHITECTURE_HEADS = {arch: head for head, arch in HF_ARCHITECTURES.items()}


def is_hf_dir(path: Path) -> bool:
    """Whether `path` looks like a transformers model directory."""
    return (path / CONFIG_FILE).is_file() and ((path / SAFETENSORS_FILE).is_file() or (path / BIN_FILE).is_file())


def read_json(path: Path) -> dict:
    """Parse a JSON object file; raises CheckpointError naming the file and line on bad JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_hf_config(path: Path) -> tuple[XLMConfig, str | None]:
    """The XLMConfig of a transformers dir, and the head its `architectures` names (None if not an XLM head).

    Raises CheckpointError for a non-XLM model_type, ConfigError / UnsupportedFeatureError for bad values.
    """
    data = read_json(path / CONFIG_FILE)
    if data.get("model_type", "xlm") != "xlm":
        raise CheckpointError(f"{path / CONFIG_FILE}: model_type {data['model_type']!r} is not 'xlm'")
    architectures = data.get("architectures") or []
    head = next((_ARCHITECTURE_HEADS[a] for a in architectures if a in _ARCHITECTURE_HEADS), None)
    fields = {k: v for k, v in data.items() if k != "architectures"}  # rewritten on export from the head
    return XLMConfig.from_dict(fields, source=str(path / CONFIG_FILE)), head


def read_hf_weights(path: Path) -> dict[str, Tensor]:
    """The state dict of a transformers dir, keys normalised to head-model form (`transformer.*` + head keys).

    `model.safetensors` is preferred; `pytorch_model.bin` is read with `torch.load(weights_only=True)`.
    A bare `XLMModel` (keys without the `transformer.` prefix) gets the prefix.
    """
    file = path / SAFETENSORS_FILE
    try:
        if file.is_file():
            state = load_file(str(file))
        else:
            file = path / BIN_FILE
            # The allow-listed unpickler: a refused global is one error naming it, without torch's advice to
            # set weights_only=False (never to be followed for a downloaded file).
            state = safe_torch_load(file)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read weights: {err}") from None
    if not any(k.startswith(BASE_PREFIX) for k in state):
        state = {BASE_PREFIX + k: v for k, v in state.items()}
    return state


def write_hf_dir(model: XLMHeadModel, head: str, path: Path) -> None:
    """Write `model` as a transformers directory that `<transformers class>.from_pretrained` loads cleanly.

    config.json gets `model_type: xlm` and `architectures`; the tied LM output weight is stored once, as
    `transformer.embeddings.weight` (transformers re-ties `pred_layer.proj.weight` on load).
    """
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [HF_ARCHITECTURES[head]]
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(exportable_state_dict(model), str(path / SAFETENSORS_FILE), metadata={"format": "pt"})


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the transformers tokenizer files present in `src` to `dst`; returns the names copied."""
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    dst.mkdir(parents=True, exist_ok=True)
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    return copied
