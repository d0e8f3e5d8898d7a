"""Sentence embeddings: one vector per line from a chosen layer, `first` (XLM's `SentenceEmbedder`: the
hidden state of the leading `</s>`) or `mean` (mean over the sentence's positions, both `</s>` included).

Batches are length-sorted (little padding) and the original order is restored. `embed_file` streams a
file in chunks and writes an `.npy` through `numpy.lib.format.open_memmap`, so memory is bounded by the
chunk size, not the file size. Empty lines are embedded as the empty sentence `</s> </s>` (rows stay
aligned with lines) and counted; lines longer than the position table are truncated and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor

from xlmtrain.inference.loading import (
    EncodedLine,
    InferenceModel,
    model_device,
    pad_batch,
)
from xlmtrain.inference.textio import count_lines, read_lines
from xlmtrain.model.heads import XLMHeadModel
from xlmtrain.model.pooling import POOLINGS, Pooling, pool_hidden

log = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """What happened to the input lines: total, embedded as empty, truncated to the position table."""

    lines: int = 0
    empty: int = 0
    truncated: int = 0

    def add(self, encoded: Sequence[EncodedLine]) -> None:
        self.lines += len(encoded)
        self.empty += sum(e.empty for e in encoded)
        self.truncated += sum(e.truncated for e in encoded)

    def warn(self, source: str, max_len: int) -> None:
        """Log the empty and truncated counts (once per input, not per line)."""
        if self.empty:
            log.warning("%s: %d empty line(s) embedded as an empty sentence (rows kept aligned)", source, self.empty)
        if self.truncated:
            log.warning("%s: %d line(s) longer than %d tokens truncated", source, self.truncated, max_len)


def check_pooling(pooling: str, layer: int, n_layers: int) -> None:
    """Raise ValueError on an unknown pooling or a layer outside `-(n_layers+1) .. n_layers`
    (layer 0 is the embedding output, 1..n_layers the blocks, -1 the last block)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if not -(n_layers + 1) <= layer <= n_layers:
        raise ValueError(f"layer {layer} out of range for a {n_layers}-layer model (0 = embeddings, -1 = last block)")


@torch.no_grad()
def embed_ids(
    model: XLMHeadModel,
    lines: Sequence[Sequence[int]],
    *,
    lang_id: int | None,
    pooling: Pooling = "first",
    layer: int = -1,
    batch_size: int = 64,
) -> Tensor:
    """Embeddings (n, dim) float32 of already wrapped id lists (`</s> .. </s>`), in input order.

    `lang_id` is fed as `langs` (None: no language ids; a model without language embeddings ignores them);
    padding is the model's `config.pad_index`. Inputs go to the model's device; the result is on the CPU.
    Raises ValueError on a bad pooling or layer.
    """
    config = model.config
    device = model_device(model)
    check_pooling(pooling, layer, config.n_layers)
    out = torch.empty(len(lines), config.emb_dim)  # (n, dim)
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs = pad_batch([list(lines[i]) for i in rows], config.pad_index, lang_id, device)
        encoded = model.transformer.encode(**inputs, output_hidden_states=layer != -1)
        hidden = encoded.last_hidden_state if layer == -1 else encoded.hidden_states[layer]  # (bs, slen, dim)
        out[torch.as_tensor(rows)] = pool_hidden(hidden, inputs["lengths"], pooling).float().cpu()
    return out


def embed_sentences(
    model: InferenceModel,
    lines: Iterable[str],
    lang: str,
    *,
    pooling: Pooling = "first",
    layer: int = -1,
    batch_size: int = 64,
) -> tuple[np.ndarray, EmbedStats]:
    """Embeddings (n, dim) float32 of raw text lines in `lang`, in order, and the input statistics.

    Raises UnknownLanguageError for a language the model does not know, ValueError on pooling/layer.
    """
    lang_id = model.lang_id(lang)
    encoded = [model.encode(line, lang) for line in lines]
    stats = EmbedStats()
    stats.add(encoded)
    vectors = embed_ids(
        model.model,
        [e.ids for e in encoded],
        lang_id=lang_id,
        pooling=pooling,
        layer=layer,
        batch_size=batch_size,
    )
    return vectors.numpy(), stats


def embed_file(
    model: InferenceModel,
    input_path: str | Path,
    lang: str,
    output_path: str | Path,
    *,
    pooling: Pooling = "first",
    layer: int = -1,
    batch_size: int = 64,
    chunk_lines: int = 20000,
    progress: bool = True,
) -> EmbedStats:
    """Embed every line of `input_path` into the `.npy` file `output_path` ((n_lines, dim) float32).

    The file is read `chunk_lines` lines at a time (each chunk length-sorted into batches) and rows are
    written into a memory-mapped output, so memory does not grow with the file.

    Raises FileNotFoundError (missing input), ValueError (empty file, not UTF-8 naming the line, bad
    pooling/layer), UnknownLanguageError.
    """
    from tqdm import tqdm

    lang_id = model.lang_id(lang)
    check_pooling(pooling, layer, model.model.config.n_layers)
    n = count_lines(input_path)
    if n == 0:
        raise ValueError(f"{input_path}: empty file, nothing to embed")
    out = open_memmap(output_path, mode="w+", dtype=np.float32, shape=(n, model.model.config.emb_dim))
    stats = EmbedStats()
    lines = read_lines(input_path)
    with tqdm(total=n, unit="line", disable=not progress, desc=f"embed {Path(input_path).name}") as bar:
        while chunk := list(islice(lines, chunk_lines)):
            encoded = [model.encode(line, lang) for line in chunk]
            vectors = embed_ids(
                model.model,
                [e.ids for e in encoded],
                lang_id=lang_id,
                pooling=pooling,
                layer=layer,
                batch_size=batch_size,
            )
            out[stats.lines : stats.lines + len(chunk)] = vectors.numpy()
            stats.add(encoded)
            bar.update(len(chunk))
    out.flush()
    del out
    return stats
