"""Strict weight loading shared by every checkpoint format."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from xlmtrain.model.heads import XLMHeadModel

log = logging.getLogger(__name__)

TIED_KEY = "pred_layer.proj.weight"
EMBEDDINGS_KEY = "transformer.embeddings.weight"
BASE_PREFIX = "transformer."


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded exactly (the message names the file and the keys)."""


@dataclass
class LoadReport:
    """What `load_weights` did besides copying matching tensors."""

    newly_initialized: list[str] = field(default_factory=list)
    """The requested head's parameters absent from the checkpoint (it was saved with another head)."""
    ignored: list[str] = field(default_factory=list)
    """Another head's parameters present in the checkpoint and not used."""


def _is_position_ids(key: str) -> bool:
    return key == "position_ids" or key.endswith(".position_ids")


def load_weights(model: XLMHeadModel, state_dict: dict[str, Tensor], source: str) -> LoadReport:
    """Copy `state_dict` (keys as transformers' head models: `transformer.*` + head keys) into `model`.

    Only `position_ids` buffers and, when the checkpoint carries another head (or none), that head's keys
    and the requested head's fresh parameters are tolerated, and reported. Everything else must match.

    Raises:
        CheckpointError: naming `source` and the keys, for missing or unexpected encoder keys, a partial
            head, wrong shapes, a vocabulary size mismatch, or a tied weight that differs from the embeddings.
    """
    state_dict = {k: v for k, v in state_dict.items() if not _is_position_ids(k)}
    expected = model.state_dict()
    if TIED_KEY in expected and EMBEDDINGS_KEY in state_dict:
        # transformers stores the tied output weight once, as the embeddings; a .bin may hold both copies
        if TIED_KEY in state_dict and not torch.equal(state_dict[TIED_KEY], state_dict[EMBEDDINGS_KEY]):
            raise CheckpointError(f"{source}: '{TIED_KEY}' differs from '{EMBEDDINGS_KEY}' but xlmtrain ties them")
        state_dict[TIED_KEY] = state_dict[EMBEDDINGS_KEY]

    embeddings = state_dict.get(EMBEDDINGS_KEY)
    vocab_size = model.config.vocab_size
    if embeddings is not None and embeddings.shape[0] != vocab_size:
        raise CheckpointError(
            f"{source}: vocabulary size mismatch: config vocab_size={vocab_size} but '{EMBEDDINGS_KEY}' has "
            f"{embeddings.shape[0]} rows"
        )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    report = LoadReport()
    missing_base = [k for k in missing if k.startswith(BASE_PREFIX)]
    unexpected_base = [k for k in unexpected if k.startswith(BASE_PREFIX)]
    if missing_base or unexpected_base:
        raise CheckpointError(
            f"{source}: encoder keys do not match the config: missing {missing_base}, unexpected {unexpected_base}"
        )
    head_keys = [k for k in expected if not k.startswith(BASE_PREFIX)]
    has_own_head = any(k in state_dict for k in head_keys if k != TIED_KEY)
    if has_own_head and (missing or unexpected):
        raise CheckpointError(f"{source}: head keys do not match: missing {missing}, unexpected {unexpected}")
    report.newly_initialized, report.ignored = missing, unexpected
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"{source}: wrong shapes: {'; '.join(wrong)}")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
    if missing:
        log.warning("%s: newly initialised (not in the checkpoint): %s", source, missing)
    if unexpected:
        log.warning("%s: ignored another head's weights: %s", source, unexpected)
    return report


def exportable_state_dict(model: XLMHeadModel) -> dict[str, Tensor]:
    """The state dict to save: contiguous CPU tensors, the tied output weight stored once (as the embeddings)."""
    state = model.state_dict()
    if TIED_KEY in state:
        del state[TIED_KEY]
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}
