"""Import original facebookresearch/XLM `.pth` checkpoints without executing pickled code.

The file is read by torch's weights-only unpickler (it handles both the legacy and the zip `torch.save`
formats), whose allow-list we extend with exactly the numpy globals that `params` arrays need. Any other
global, e.g. `os.system`, is refused before it is called, and the error names it.
"""

from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xlmtrain.interop.weights import BASE_PREFIX, CheckpointError
from xlmtrain.model.config import ConfigError, UnsupportedFeatureError, XLMConfig

_NUMPY_GLOBALS = [
    np.ndarray,
    np.dtype,
    (np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),  # files written with numpy < 2
    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    # numpy >= 1.25 pickles a dtype through its class (e.g. numpy.dtypes.Float64DType)
    *(cls for cls in vars(np.dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)),
]
# params key -> XLMConfig field; the indices come from the dictionary the checkpoint was trained with.
_PARAM_FIELDS = {
    "n_words": "vocab_size",
    "emb_dim": "emb_dim",
    "n_layers": "n_layers",
    "n_heads": "n_heads",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "gelu_activation": "gelu_activation",
    "sinusoidal_embeddings": "sinusoidal_embeddings",
    "n_langs": "n_langs",
    "use_lang_emb": "use_lang_emb",
    "lang2id": "lang2id",
    "id2lang": "id2lang",
    "bos_index": "bos_index",
    "eos_index": "eos_index",
    "pad_index": "pad_index",
    "unk_index": "unk_index",
    "mask_index": "mask_index",
    "asm": "asm",
}
_REQUIRED_PARAMS = ("emb_dim", "n_layers", "n_heads", "n_langs")
_DECODER_KEYS = ("encoder_attn.", "layer_norm15.")


def safe_torch_load(path: Path) -> Any:
    """`torch.load` through the allow-listed unpickler; raises CheckpointError naming a refused global."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(err))
        if found:
            name = found.group(1) or found.group(2)
            message = f"{path}: refused to unpickle global '{name}' (not in xlmtrain's allow-list)"
            raise CheckpointError(message) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {str(err).splitlines()[0]}") from None
    except (RuntimeError, OSError, EOFError, struct.error) as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {err}") from None


def _to_python(value: Any) -> Any:
    """numpy / one-element tensor scalars in `params` -> Python numbers."""
    if isinstance(value, np.generic) or (isinstance(value, Tensor) and value.numel() == 1):
        return value.item()
    return value


def config_from_params(
    params: dict[str, Any], model: dict[str, Tensor], dico_size: int | None, source: str
) -> XLMConfig:
    """Build the XLMConfig of an original checkpoint from its argparse `params` dict and its weights."""
    if params.get("use_memory"):
        raise UnsupportedFeatureError(
            f"{source}: product-key memory layers (params 'use_memory'=true) are not supported by xlmtrain"
        )
    missing = [k for k in _REQUIRED_PARAMS if k not in params]
    if missing:
        raise CheckpointError(f"{source}: params lack the key(s) {missing}")
    kwargs = {field: _to_python(params[key]) for key, field in _PARAM_FIELDS.items() if key in params}
    kwargs.setdefault("vocab_size", dico_size)
    if kwargs["vocab_size"] is None:
        raise CheckpointError(f"{source}: params lack 'n_words' and there is no 'dico_id2word'")
    positions = model.get(BASE_PREFIX + "position_embeddings.weight")
    if positions is not None:
        kwargs["max_position_embeddings"] = positions.shape[0]
    try:
        return XLMConfig(**kwargs)
    except ConfigError as err:
        raise type(err)(f"{source}: {err}") from None


def original_state_dict(model: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Original encoder keys -> head-model keys: strip `module.`, prefix everything but `pred_layer.*`."""
    if model and all(k.startswith("module.") for k in model):
        model = {k[len("module.") :]: v for k, v in model.items()}
    memory = sorted(k for k in model if k.startswith("memories."))
    if memory:
        raise UnsupportedFeatureError(
            f"{source}: product-key memory keys {memory[:3]}... are not supported by xlmtrain"
        )
    decoder = sorted(k for k in model if k.startswith(_DECODER_KEYS))
    if decoder:
        raise UnsupportedFeatureError(f"{source}: decoder keys {decoder[:3]}... are not supported by xlmtrain")
    return {k if k.startswith("pred_layer.") else BASE_PREFIX + k: v for k, v in model.items()}


def read_original(path: Path) -> tuple[XLMConfig, dict[str, Tensor], dict[str, int] | None]:
    """(config, state dict in head-model keys, dico word2id or None) of an original XLM `.pth`.

    Raises:
        CheckpointError: unreadable file, a refused pickle global, missing `model` / `params` keys.
        UnsupportedFeatureError: asm, memory layers or decoder weights.
    """
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict with keys 'model' and 'params'")
    missing = [k for k in ("model", "params") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing} (found {sorted(map(str, checkpoint))})")
    state = original_state_dict(dict(checkpoint["model"]), str(path))
    word2id = checkpoint.get("dico_word2id")
    id2word = checkpoint.get("dico_id2word")
    dico_size = len(id2word) if id2word is not None else None
    config = config_from_params(dict(checkpoint["params"]), state, dico_size, str(path))
    if dico_size is not None and dico_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: 'dico_id2word' has {dico_size} words but params 'n_words' is {config.vocab_size}"
        )
    return config, state, word2id
