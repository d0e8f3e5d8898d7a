"""Checkpoint interop: transformers dirs, original XLM `.pth` files and xlmtrain's own format."""

from xlmtrain.interop.load import load_model, read_checkpoint, save_model
from xlmtrain.interop.weights import CheckpointError

__all__ = ["CheckpointError", "load_model", "read_checkpoint", "save_model"]
