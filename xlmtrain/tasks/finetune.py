"""`FinetuneModule`: the Lightning module of both fine-tuning jobs (sequence-pair and token classification).

XLM's recipe: separate learning rates for the encoder and the head (one optimizer, two parameter
groups), optionally only the top `finetune_layers` layers trained (layer 0 = the embeddings), the
pretraining dropout kept. Each validation / test dataloader is one language; its metric is logged as
`{split}_{lang}_{metric}` with the unweighted average over languages as `{split}_avg_{metric}` (the
paper's average), and kept in `results[split][lang] = (value, n)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from xlmtrain.model.heads import XLMHeadModel
from xlmtrain.tasks.metrics import accuracy_counts, is_bio, score, span_counts
from xlmtrain.training.precision import clip_gradients

_EMBEDDING_MODULES = ("embeddings", "position_embeddings", "lang_embeddings", "layer_norm_emb")
_BLOCK_MODULES = ("attentions", "layer_norm1", "ffns", "layer_norm2")


def encoder_layer(name: str) -> int:
    """XLM's layer number of an encoder parameter name (`transformer.` stripped): 0 for the embeddings,
    i + 1 for block i."""
    module, _, rest = name.partition(".")
    if module in _EMBEDDING_MODULES:
        return 0
    if module in _BLOCK_MODULES:
        return int(rest.split(".")[0]) + 1
    raise ValueError(f"parameter {name!r} belongs to no encoder layer")


def param_groups(
    model: XLMHeadModel, *, encoder_lr: float, head_lr: float, finetune_layers: int | None
) -> list[dict[str, Any]]:
    """Optimizer groups `encoder` and `head`; encoder parameters outside the top `finetune_layers` layers
    (None: all, embeddings included; 0: head only) are frozen (`requires_grad=False`).

    Raises ValueError when `finetune_layers` is negative or exceeds n_layers + 1.
    """
    n_layers = model.config.n_layers
    if finetune_layers is not None and not 0 <= finetune_layers <= n_layers + 1:
        raise ValueError(
            f"task.finetune_layers={finetune_layers}: expected null or 0..{n_layers + 1} (n_layers + embeddings)"
        )
    lowest = 0 if finetune_layers is None else n_layers + 1 - finetune_layers
    encoder = []
    for name, param in model.transformer.named_parameters():
        if param.requires_grad and encoder_layer(name) < lowest:
            param.requires_grad_(False)
        if param.requires_grad:
            encoder.append(param)
    head = [p for n, p in model.named_parameters() if not n.startswith("transformer.")]
    groups = [{"name": "head", "params": head, "lr": head_lr}]
    if encoder:
        groups.insert(0, {"name": "encoder", "params": encoder, "lr": encoder_lr})
    return groups


class FinetuneModule(pl.LightningModule):
    """Fine-tune `model` (a sequence- or token-classification head model) on batches from
    `xlmtrain.tasks.encoding.collate`.

    Args:
        model: the model; its loss is the training loss.
        eval_langs: split -> languages, in the order of that split's dataloaders.
        metric: `accuracy` (sequence labels) or `f1` (token tags; needs `id2tag`).
        optimizer: a factory `params -> Optimizer` (Hydra `_partial_`); the groups carry their own lr.
        scheduler: a factory `optimizer -> LRScheduler` stepped every optimizer step, or None.
        encoder_lr, head_lr, finetune_layers: see `param_groups`.
        id2tag: tag names by id, for `f1`.
    """

    def __init__(
        self,
        model: XLMHeadModel,
        *,
        eval_langs: dict[str, list[str]],
        metric: str,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None,
        encoder_lr: float,
        head_lr: float,
        finetune_layers: int | None,
        id2tag: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if metric not in ("accuracy", "f1") or (metric == "f1" and not id2tag):
            raise ValueError(f"metric must be accuracy or f1 (with id2tag), got {metric!r}")
        self.model: nn.Module = model
        self.eval_langs = eval_langs
        self.metric = metric
        self.id2tag = list(id2tag or [])
        self._bio = is_bio(self.id2tag)
        self._optimizer, self._scheduler = optimizer, scheduler
        self._groups = param_groups(model, encoder_lr=encoder_lr, head_lr=head_lr, finetune_layers=finetune_layers)
        self._counts: dict[int, Tensor] = {}
        self.results: dict[str, dict[str, tuple[float, int]]] = {}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _count(self, batch: dict[str, Tensor], dataloader_idx: int) -> None:
        logits = self(batch)
        if self.metric == "accuracy":
            counts = accuracy_counts(logits, batch["labels"]).cpu()
        else:
            counts = span_counts(logits, batch["labels"], self.id2tag, self._bio)
        self._counts[dataloader_idx] = self._counts.get(dataloader_idx, 0) + counts

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count(batch, dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count(batch, dataloader_idx)

    def _report(self, split: str) -> None:
        results = {}
        for i, lang in enumerate(self.eval_langs[split]):
            counts = self.trainer.strategy.reduce(self._counts[i].to(self.device), reduce_op="sum")
            results[lang] = score(counts.cpu(), self.metric)
            self.log(f"{split}_{lang}_{self.metric}", results[lang][0])
        average = sum(v for v, _ in results.values()) / len(results)
        self.log(f"{split}_avg_{self.metric}", average)
        self.results[split] = results
        self._counts = {}

    def on_validation_epoch_end(self) -> None:
        self._report("valid")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def configure_optimizers(self) -> Any:
        optimizer = self._optimizer(self._groups)
        if self._scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._scheduler(optimizer), "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, also for the fused optimizer under bf16-mixed (see `training.precision`)."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
