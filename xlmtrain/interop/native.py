"""xlmtrain's own checkpoint format: `xlmtrain_model.json` (config + head + version) + `model.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from xlmtrain.interop.hf import SAFETENSORS_FILE, read_json
from xlmtrain.interop.weights import CheckpointError, exportable_state_dict
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import HEADS, XLMHeadModel

MANIFEST_FILE = "xlmtrain_model.json"
FORMAT_VERSION = 1


def is_native_dir(path: Path) -> bool:
    """Whether `path` is an xlmtrain checkpoint directory."""
    return (path / MANIFEST_FILE).is_file()


def read_native(path: Path) -> tuple[XLMConfig, str, dict[str, Tensor]]:
    """(config, head, state dict) of an xlmtrain checkpoint.

    Raises CheckpointError / ConfigError naming the file and the key.
    """
    manifest_path = path / MANIFEST_FILE
    manifest = read_json(manifest_path)
    for key in ("format_version", "head", "config"):
        if key not in manifest:
            raise CheckpointError(f"{manifest_path}: missing key '{key}'")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path}: key 'format_version'={manifest['format_version']!r}, "
            f"this xlmtrain reads {FORMAT_VERSION}"
        )
    if manifest["head"] not in HEADS:
        raise CheckpointError(f"{manifest_path}: key 'head'={manifest['head']!r} is not one of {sorted(HEADS)}")
    config = XLMConfig.from_dict(manifest["config"], source=f"{manifest_path} (config)")
    try:
        state = load_file(str(path / SAFETENSORS_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path / SAFETENSORS_FILE}: cannot read weights: {err}") from None
    return config, manifest["head"], state


def write_native(model: XLMHeadModel, head: str, path: Path) -> None:
    """Write `model` (with head name `head`) as an xlmtrain checkpoint directory."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"format_version": FORMAT_VERSION, "head": head, "config": model.config.to_dict()}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(exportable_state_dict(model), str(path / SAFETENSORS_FILE), metadata={"format": "pt"})
