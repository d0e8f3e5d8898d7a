"""`PretrainModule`: CLM / MLM / TLM pretraining over a mixture of streams, as a LightningModule.

Mapping XLM onto Lightning (reference §A4.1): in XLM every stream step is its own forward, backward
and optimizer update. Here each Lightning training batch comes from one stream, drawn by
`StreamMixture` with a seeded generator, and each Lightning step is one optimizer update. With
`trainer.accumulate_grad_batches=k`, k draws (each from its own stream) make one update whose gradient is
their MEAN: Lightning divides each draw's loss by k before backward. XLM's `--accumulate_gradients` sums them
(a gradient k times larger, which Adam's update ignores except through eps and clipping at clip_grad_norm;
tests/test_training_semantics.py). Lambdas and mixture probabilities are evaluated at the optimizer step
(`batch // k`).
The loss is `lambda(step) * mean CE` over the predicted positions only (the model's `pred_mask` path).
Batches, masking and stream choice are built by `PretrainBatches`; their random state is saved in the
checkpoint (`on_save_checkpoint`) as of the last batch actually trained on, so prefetching does not
shift a resumed run.

The alignment streams (`trans_rank`, `xlco`: `xlmtrain.objectives.alignment`) encode the two sides of
a pair separately and their loss is `lambda(step) * mean per-pair loss`; XLCo's momentum encoder and
queue (`self.xlco`) are part of the module's state dict, so checkpoints carry them, and not of `self.model`,
so export is unchanged. Their validation logs `valid_<pair>_<objective>_loss` (in-batch, no queue) and
`_acc`, the in-batch translation retrieval accuracy of the trained encoder (both directions, percent).

Validation runs every stream on its valid split with XLM's deterministic masking and logs
`valid_<langs>_<objective>_{ppl,acc}` (e.g. `valid_en_mlm_ppl`, `valid_en-fr_tlm_acc`): perplexity is `exp` of
the stream's token-weighted mean CE, accuracy a percentage (as XLM). Averages as XLM's `run_all_evals`: the
MEAN of the per-stream values over monolingual streams `valid_mlm_{ppl,acc}`, `valid_clm_{ppl,acc}` (TLM is
not in the MLM average) and over pair streams `valid_tlm_{ppl,acc}`; so en at ppl 10 on 100k tokens and sw at
ppl 40 on 10k give `valid_mlm_ppl` 25. The token-weighted group values (exp of the pooled CE: 11.3 there) are
logged as `valid_{mlm,clm,tlm}_{ppl,acc}_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.objectives.alignment import (
    AlignmentSettings,
    XLCoState,
    in_batch_accuracy,
    sentence_vectors,
    translation_ranking_loss,
    xlco_loss,
)
from xlmtrain.objectives.batches import LMBatch, PairBatch
from xlmtrain.objectives.data import PretrainBatches, TrainItem, ValidBatches, ValidItem
from xlmtrain.objectives.streams import ALIGNMENT_OBJECTIVES, StreamSpec
from xlmtrain.training.precision import clip_gradients
from xlmtrain.training.prefetch import BackgroundBatches
from xlmtrain.training.rng import CPU_KEY as RNG_KEY
from xlmtrain.training.rng import DEVICE_KEY as DEVICE_RNG_KEY
from xlmtrain.training.rng import gather_rng_states, restore_rng_states

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
STATE_KEY = "xlmtrain_batches"
PREFETCH_BATCHES = 4  # built ahead on accelerators; far below the batch states kept for checkpoints (64)


class PretrainModule(pl.LightningModule):
    """A `XLMWithLMHead` trained on CLM/MLM/TLM streams; see the module docstring for the semantics."""

    def __init__(
        self,
        config: XLMConfig,
        streams: Sequence[StreamSpec],
        *,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        train_batches: PretrainBatches | None = None,
        valid_batches: ValidBatches | None = None,
        alignment: AlignmentSettings | Mapping[str, Any] | None = None,
    ) -> None:
        """
        Args:
            config: the model's configuration (saved as the hyperparameter `model_config`, `XLMConfig.to_dict()`).
            streams: the training streams (saved as the hyperparameter `streams`, their fields).
            optimizer: `optimizer(params)` -> torch optimizer (a Hydra `_partial_` factory).
            scheduler: `scheduler(optimizer, max_steps=...)` -> LR scheduler stepped every optimizer step.
            train_batches: the training batch source (None when only loading weights or validating).
            valid_batches: the validation batch source (None: no validation).
            alignment: settings of the `trans_rank` / `xlco` streams (saved as a hyperparameter; None: defaults).
        """
        super().__init__()
        if alignment is None or isinstance(alignment, Mapping):
            alignment = AlignmentSettings(**dict(alignment or {}))
        self.save_hyperparameters(
            {
                "model_config": config.to_dict(),
                "streams": [_stream_fields(s) for s in streams],
                "alignment": asdict(alignment),
            }
        )
        self.config = config
        self.specs = list(streams)
        self.model = XLMWithLMHead(self.config)
        self.alignment = alignment
        # XLCo's momentum encoder and queue; a copy of the initial encoder, as MoCo starts.
        uses_xlco = any(s.objective == "xlco" for s in self.specs)
        self.xlco = XLCoState(self.model.transformer, self.config.emb_dim, alignment) if uses_xlco else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self._pending_batch_state: dict[str, Any] | None = None
        self._pending_rng_states: dict[str, torch.Tensor] | None = None
        self._step_loss: tuple[TrainItem, torch.Tensor] | None = None
        self._last_trained_index = -1
        self._draws_step = -1  # the optimizer step being logged, and its draws so far: (stream, lambda * CE, CE)
        self._draws: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.valid_specs = list(valid_batches.specs if valid_batches else self.specs)
        # Token-weighted means: one CE and one accuracy metric per stream and per average group.
        present = {spec.average_group for spec in self.valid_specs}
        groups = [spec.name for spec in self.valid_specs] + [g for g in ("mlm", "clm", "tlm") if g in present]
        self.valid_ce = torch.nn.ModuleDict({_key(n): MeanMetric() for n in groups})
        self.valid_acc = torch.nn.ModuleDict({_key(n): MeanMetric() for n in groups})

    def _encoder_inputs(self, batch: LMBatch) -> dict[str, torch.Tensor | bool | None]:
        # `langs` always goes in: the transformer alone decides whether it has language embeddings to use.
        return {
            "langs": batch.langs,
            "position_ids": batch.position_ids,
            "lengths": batch.lengths,
            "causal": batch.causal,
            "padded": batch.padded,
        }

    def forward(self, batch: LMBatch) -> torch.Tensor:
        """Logits `(n_pred, vocab)` at `batch.pred_mask`, row-major."""
        return self.model(batch.input_ids, pred_mask=batch.pred_mask, **self._encoder_inputs(batch)).logits

    def target_losses(self, batch: LMBatch) -> torch.Tensor:
        """Cross-entropy `(n_pred,)` of each target (fused projection + CE: no logits are kept)."""
        selected = batch.pred_mask if batch.selected is None else batch.selected  # the host-built layout: no sync
        return self.model.masked_lm_loss(batch.input_ids, selected, batch.labels, **self._encoder_inputs(batch))

    def _sides(self, batch: PairBatch, encoder: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, dim) pooled vectors of both sides of `batch` through `encoder`."""
        pooling = self.alignment.pooling
        src = sentence_vectors(encoder, batch.src_ids, batch.src_lengths, batch.src_langs, pooling)
        tgt = sentence_vectors(encoder, batch.tgt_ids, batch.tgt_lengths, batch.tgt_langs, pooling)
        return src, tgt

    def alignment_losses(self, batch: PairBatch, objective: str) -> torch.Tensor:
        """Per-pair training loss `(n_pairs,)` of a `trans_rank` or `xlco` batch (this rank's pairs, negatives from
        every rank's when `alignment.gather_negatives`). XLCo first moves the momentum encoder, then enqueues
        this batch's keys."""
        a = self.alignment
        src, tgt = self._sides(batch, self.model.transformer)
        if objective == "trans_rank":
            loss = translation_ranking_loss(
                src, tgt, global_rows=batch.global_rows, margin=a.margin, scale=a.scale, gather=a.gather_negatives
            )
        else:
            self.xlco.update_momentum(self.model.transformer)
            with torch.no_grad():
                key_src, key_tgt = self._sides(batch, self.xlco.key_encoder)
            loss, keys = xlco_loss(
                src,
                tgt,
                key_src,
                key_tgt,
                self.xlco.negatives(),
                global_rows=batch.global_rows,
                scale=a.xlco_scale,
                gather=a.gather_negatives,
            )
            self.xlco.enqueue(keys)
        # The LM head's bias is the one trained weight these steps do not reach: a zero-weighted term gives it a
        # (zero) gradient, as DDP without find_unused_parameters needs every step; 1 process does the same.
        return loss + 0.0 * self.model.pred_layer.proj.bias.sum()

    def training_step(self, item: TrainItem, batch_idx: int) -> dict[str, torch.Tensor]:
        """`{"loss": lambda * mean CE of the drawn stream over the global batch (rank-scaled, see below),
        "ce": the global mean CE, detached}`; `ce` is what `training.numerics.NumericsGuard` judges (NaN,
        spikes), read without a host sync here.

        Under DDP each rank holds a slice of the global batch (`rank_rows`); `item.n_targets` counts the
        targets of ALL ranks (known on the host: every rank draws the global batch), so the loss needs no
        collective before backward. The rank's loss is scaled by the world size because DDP averages gradients:
        the update is then the 1-process update of the global batch. The logged global mean is reduced after
        backward (`on_after_backward`).
        """
        spec = self.specs[item.stream]
        if isinstance(item.batch, PairBatch):
            ce_sum = self.alignment_losses(item.batch, spec.objective).sum()  # over this rank's pairs
        else:
            ce_sum = self.target_losses(item.batch).sum()
        # This rank's share of the global mean, made global in place by `on_after_backward` (the tensor returned
        # here as "ce", which `NumericsGuard` reads after the step).
        ce_mean = ce_sum.detach() / item.n_targets
        self._step_loss = (item, ce_mean)
        self._last_trained_index = item.index
        return {"loss": item.lambda_ * ce_sum * (self.trainer.world_size / item.n_targets), "ce": ce_mean}

    def on_after_backward(self) -> None:
        """Make the draw's mean CE global and log the optimizer step's losses.

        Under DDP the ranks' shares are all-reduced here, in place, after DDP's gradient buckets (on NCCL the
        reduce is enqueued on the device without a host wait), so the "ce" of the step's output is the global
        mean by the time `NumericsGuard` reads it, identical on every rank.

        `train_loss` is what the update minimised: the mean over the step's draws (accumulated micro-batches) of
        `lambda * CE`; `train_<stream>_loss` the mean CE of that stream's draws in the step. Lightning keeps the
        last value logged, so the running means are logged after each draw; and it re-logs an on_step value at
        every later step until it is logged again, so the per-stream cells are cleared when a step starts
        (metrics.csv then has a value only where that stream trained).
        """
        if self._step_loss is None:
            return
        (item, ce_mean), self._step_loss = self._step_loss, None
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(ce_mean)  # the default group: Lightning's DDP process group
        if self._draws_step != self.global_step:  # the step's first draw
            self._draws_step, self._draws = self.global_step, []
            stream_keys = {f"on_after_backward.train_{spec.name}_loss" for spec in self.specs}
            for key, result in self.trainer._results.items():
                if key in stream_keys:
                    result.reset()
        spec = self.specs[item.stream]
        self._draws.append((spec.name, item.lambda_ * ce_mean, ce_mean))
        bs = len(item.batch.src_ids if isinstance(item.batch, PairBatch) else item.batch.input_ids)
        stream_ce = torch.stack([ce for name, _, ce in self._draws if name == spec.name]).mean()
        self.log(f"train_{spec.name}_loss", stream_ce, on_step=True, on_epoch=False, batch_size=bs)
        step_loss = torch.stack([loss for _, loss, _ in self._draws]).mean()
        self.log("train_loss", step_loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=bs)
        self.log("step", float(self.global_step + 1), on_step=True, on_epoch=False, batch_size=bs)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, also for the fused optimizer under bf16-mixed (see `training.precision`)."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def validation_step(self, item: ValidItem, batch_idx: int) -> None:
        """Accumulate token-weighted CE and accuracy of one deterministic validation batch (pair-weighted loss and
        in-batch retrieval accuracy for the alignment streams)."""
        spec = self.valid_specs[item.stream]
        if isinstance(item.batch, PairBatch):
            loss, acc, n = self._alignment_validation(item.batch, spec.objective)
        else:
            logits = self(item.batch).float()
            labels = item.batch.labels
            n = labels.numel()
            loss = F.cross_entropy(logits, labels)
            acc = 100.0 * (logits.argmax(-1) == labels).float().mean()
        for key in (spec.name, spec.average_group):
            if key is not None:
                self.valid_ce[_key(key)].update(loss, weight=n)
                self.valid_acc[_key(key)].update(acc, weight=n)

    def _alignment_validation(self, batch: PairBatch, objective: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(mean in-batch loss, in-batch retrieval accuracy %, pairs) of a validation pair batch; no queue, no
        momentum update, no gather (validation batches are whole on each rank)."""
        a = self.alignment
        src, tgt = self._sides(batch, self.model.transformer)
        n = batch.src_ids.shape[0]
        if objective == "trans_rank":
            loss = translation_ranking_loss(src, tgt, global_rows=n, margin=a.margin, scale=a.scale, gather=False)
        else:
            key_src, key_tgt = self._sides(batch, self.xlco.key_encoder)
            loss, _ = xlco_loss(src, tgt, key_src, key_tgt, None, global_rows=n, scale=a.xlco_scale, gather=False)
        return loss.mean(), in_batch_accuracy(src, tgt), n

    def on_validation_epoch_end(self) -> None:
        """Log `valid_<name>_ppl` / `valid_<name>_acc` for every stream (`valid_<name>_loss` instead of a
        perplexity for the alignment streams), XLM's averages (the mean over a group's streams) and the
        token-weighted `valid_<group>_{ppl,acc}_tokens` (synced across ranks)."""
        # Every rank computes every metric in the same order (each compute is a collective), also for a stream
        # it had no batch of: skipping by the local `update_called` would leave the other ranks' sync unmatched.
        # A stream no rank validated gives 0/0 = NaN on all of them alike and is not logged.
        groups = {spec.name: spec.average_group for spec in self.valid_specs}
        per_stream: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for key, ce_metric in self.valid_ce.items():
            name = _unkey(key)
            ce, acc = ce_metric.compute(), self.valid_acc[key].compute()
            ce_metric.reset()
            self.valid_acc[key].reset()
            if torch.isnan(ce):
                continue
            if name.endswith(tuple(f"_{o}" for o in ALIGNMENT_OBJECTIVES)):
                self.log(f"valid_{name}_loss", ce, sync_dist=True)
                self.log(f"valid_{name}_acc", acc, sync_dist=True)
                continue
            ppl = torch.exp(ce)
            if name not in groups:  # an average group: token-weighted over its streams
                self.log(f"valid_{name}_ppl_tokens", ppl, sync_dist=True)
                self.log(f"valid_{name}_acc_tokens", acc, sync_dist=True)
                continue
            self.log(f"valid_{name}_ppl", ppl, sync_dist=True)
            self.log(f"valid_{name}_acc", acc, sync_dist=True)
            if groups[name] is not None:
                per_stream.setdefault(groups[name], []).append((ppl, acc))
        for group, values in per_stream.items():  # XLM's averages: the mean of the per-stream values
            self.log(f"valid_{group}_ppl", torch.stack([p for p, _ in values]).mean(), sync_dist=True)
            self.log(f"valid_{group}_acc", torch.stack([a for _, a in values]).mean(), sync_dist=True)
        self.log("step", float(self.global_step))

    def configure_optimizers(self) -> Any:
        """The optimizer over all parameters and, if configured, a per-step LR scheduler."""
        # Only trained weights: XLCo's momentum encoder is frozen (it follows the encoder by EMA).
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, max_steps=self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> PretrainBatches | BackgroundBatches[TrainItem]:
        """The stream mixture (an iterable of `TrainItem`), positioned at the restored state; on an accelerator
        built ahead in a background thread (pinned memory on CUDA), on the CPU in the training loop itself (there
        the thread would only compete with the step for the same cores)."""
        if self.train_batches is None:
            raise RuntimeError("PretrainModule was built without train_batches")
        self.train_batches.configure(
            rank=self.global_rank,
            world_size=self.trainer.world_size,
            accumulate=self.trainer.accumulate_grad_batches,
        )
        if self._pending_batch_state is not None:
            self.train_batches.restore(self._pending_batch_state)
            self._pending_batch_state = None
        device = self.trainer.strategy.root_device
        if device.type == "cpu":
            return self.train_batches
        return BackgroundBatches(self.train_batches, depth=PREFETCH_BATCHES, pin_memory=device.type == "cuda")

    def val_dataloader(self) -> ValidBatches | list:
        """Deterministic validation batches of every stream (empty when none were given)."""
        if self.valid_batches is None:
            return []
        self.valid_batches.configure(rank=self.global_rank, world_size=self.trainer.world_size)
        return self.valid_batches

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the batch source's state as of the last trained batch (not the prefetched one) and every
        rank's RNG states (CPU and CUDA: dropout), so a resumed run continues bit for bit."""
        if self.train_batches is not None and self._last_trained_index >= 0:
            checkpoint[STATE_KEY] = self.train_batches.state_after(self._last_trained_index)
        # Every rank runs this hook (only rank 0 writes the file), so the gathers are matched collectives.
        strategy = self.trainer.strategy
        checkpoint.update(gather_rng_states(self.all_gather, strategy.root_device, self.trainer.world_size))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved batch and RNG states; they are applied when training starts."""
        self._pending_batch_state = checkpoint.get(STATE_KEY)
        self._pending_rng_states = {key: checkpoint[key] for key in (RNG_KEY, DEVICE_RNG_KEY) if key in checkpoint}

    def on_train_start(self) -> None:
        """Restore this rank's RNG states from the checkpoint (only if it was saved with the same world size:
        otherwise the dropout streams cannot be continued, and a fresh seed is as good as any)."""
        states, self._pending_rng_states = self._pending_rng_states, None
        world, rank = self.trainer.world_size, self.global_rank
        if states and restore_rng_states(states, self.trainer.strategy.root_device, rank, world):
            return
        if rank > 0:
            # Every rank was seeded alike (identical init); give each its own dropout stream, or all ranks
            # would drop the same units. Rank 0 keeps the seed, so a 1-process run is unchanged. (manual_seed
            # seeds the CUDA generators too.)
            torch.manual_seed(torch.initial_seed() + rank)

    def on_train_batch_start(self, batch: TrainItem, batch_idx: int) -> None:
        """Keep Lightning's logging cadence on optimizer steps. `log_every_n_steps` counts
        `fit_loop.epoch_loop._batches_that_stepped`, which Lightning does not save up to date: on restart it adds
        one to the saved value, right for a checkpoint saved mid-step, one too many for the one saved at the end of
        training. It is `global_step` here (one optimizer step per Lightning step, accumulated micro-batches
        included)."""
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.trainer.global_step


def _stream_fields(spec: StreamSpec) -> dict[str, Any]:
    return {"objective": spec.objective, "langs": spec.lang_key, "lambda_": spec.lambda_, "weight": spec.weight}


def _key(name: str) -> str:
    # ModuleDict keys cannot contain '.', and '-' is kept readable by swapping it.
    return name.replace("-", "__")


def _unkey(key: str) -> str:
    return key.replace("__", "-")
