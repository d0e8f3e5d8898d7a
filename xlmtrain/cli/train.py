"""`python -m xlmtrain [+recipe=NAME] [key=value ...]`: Hydra's config -> typed settings -> a job.

The config's `job` names the job: `pretrain` (default, `xlmtrain.jobs.pretrain`) or `finetune`
(`+recipe=xnli`, `+recipe=token_classification`; `xlmtrain.jobs.finetune`). This is the only module that
reads the pretraining/fine-tuning config. The whole composed config is checked first, before any work
(`PretrainConfig` / `FinetuneConfig` below, `xlmtrain.settings`): an unknown key or a value of the wrong
type, in our settings or in the arguments of a `_target_` node, exits with code 2 and one line
(`error: data.batching.batch_size: expected int, got 1.5 (float)`). The schema's blocks come from the
Lightning-free `jobs/*_config.py`; the job modules (and Lightning) are imported only once the settings passed,
so a bad value fails in seconds. Then the `_target_` nodes (optimizer and scheduler factories, the Trainer as a
partial, loggers, callbacks) are instantiated and the job runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from xlmtrain.cli.defaults import store_defaults
from xlmtrain.config_dir import conf_dir
from xlmtrain.data.pipeline import PreprocessSettings
from xlmtrain.jobs.finetune_config import PretrainedModel, TaskSettings
from xlmtrain.jobs.pretrain_config import DataSettings, ObjectiveSettings
from xlmtrain.objectives.alignment import AlignmentSettings
from xlmtrain.objectives.data import BatchSettings, MaskingSettings
from xlmtrain.settings import SettingsError, check_call, typed

if TYPE_CHECKING:
    from xlmtrain.jobs.finetune import FinetuneSettings
    from xlmtrain.jobs.pretrain import PretrainSettings

# ---------------------------------------------------------------- defaults that live in dataclasses

DEFAULTS_NODES = {
    "batching_defaults": BatchSettings,  # conf/data/synthetic.yaml: data.batching
    "preprocess_defaults": PreprocessSettings,  # conf/data/synthetic.yaml: data.preprocess
    "masking_defaults": MaskingSettings,  # conf/objective/mlm.yaml: objective.masking
    "alignment_defaults": AlignmentSettings,  # conf/objective/mlm.yaml: objective.alignment
}
"""Stored (`cli/defaults.py`) when this module is imported, before any config is composed."""
for _name, _cls in DEFAULTS_NODES.items():
    store_defaults(_name, _cls)


# ---------------------------------------------------------------- the config tree's schema


@dataclass(frozen=True)
class Paths:
    """`paths` (conf/paths/default.yaml)."""

    cache_dir: Path
    """Where generated and preprocessed data is cached."""


@dataclass(frozen=True)
class Checkpointing:
    """`checkpoint` (read by `callbacks.last`)."""

    every_n_train_steps: int


@dataclass(frozen=True)
class Optim:
    """`optim` (conf/optim/*.yaml): `_target_` nodes, checked against their targets' signatures."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    head_lr: float | None = None
    """Fine-tuning only: the classifier head's learning rate (the encoder's is `optimizer.lr`)."""


@dataclass(frozen=True)
class RunConfig:
    """The keys of conf/xlmtrain.yaml every job has."""

    job: str
    """pretrain, or finetune (+recipe=xnli, +recipe=token_classification)."""
    run_name: str
    run_dir: Path
    resume: str
    """Pretraining: auto, never, or a .ckpt path (fine-tuning always starts afresh)."""
    seed: int
    checkpoint: Checkpointing
    export: bool
    """Export <run_dir>/model/ at the end (and, pretraining, the training-curve plot)."""
    compile: bool
    """torch.compile the model's forward in place."""
    paths: Paths
    optim: Optim
    trainer: dict[str, Any]
    """`lightning.pytorch.Trainer` arguments (checked against its signature)."""
    logger: list[dict[str, Any]]


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """The composed config of `job: pretrain`."""

    data: DataSettings
    model: dict[str, Any]
    """XLMConfig fields (checked against XLMConfig) + `embed_init_std` (null: emb_dim ** -0.5)."""
    objective: ObjectiveSettings
    callbacks: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class FinetuneConfig(RunConfig):
    """The composed config of `job: finetune`."""

    pretrained: PretrainedModel
    task: TaskSettings


# ---------------------------------------------------------------- config -> settings


def pretrain_settings(cfg: DictConfig) -> PretrainSettings:
    """The pretraining job's settings from a composed config; `SettingsError` (one line) on a bad key or value."""
    config = typed(PretrainConfig, _plain(cfg), "")
    # Only a config that passed is worth the training stack's import time (Lightning, most of torch).
    from xlmtrain.jobs.pretrain import PretrainSettings
    from xlmtrain.model.config import XLMConfig

    _check_targets(config)
    model = dict(config.model)
    embed_init_std = model.pop("embed_init_std", None)
    check_call(XLMConfig, model, "model")
    if embed_init_std is not None and not isinstance(embed_init_std, (int, float)):
        raise SettingsError(f"model.embed_init_std: expected float | None, got {embed_init_std!r}")
    return PretrainSettings(
        run_dir=config.run_dir,
        cache_dir=config.paths.cache_dir.expanduser(),
        seed=config.seed,
        resume=config.resume,
        export=config.export,
        compile=config.compile,
        data=config.data,
        model=XLMConfig(**model),
        embed_init_std=embed_init_std,
        objective=config.objective,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler),
        trainer=instantiate(cfg.trainer, _partial_=True),
        loggers=[instantiate(c) for c in cfg.logger],
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
    )


def finetune_settings(cfg: DictConfig) -> FinetuneSettings:
    """The fine-tuning job's settings from a composed config; `SettingsError` (one line) on a bad key or value."""
    config = typed(FinetuneConfig, _plain(cfg), "")
    if config.optim.head_lr is None:
        raise SettingsError("optim.head_lr: missing (expected float)")
    from xlmtrain.jobs.finetune import FinetuneSettings  # the training stack, once the config passed

    _check_targets(config)
    return FinetuneSettings(
        run_dir=config.run_dir,
        seed=config.seed,
        task=config.task,
        pretrained=config.pretrained,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if config.optim.scheduler else None,
        encoder_lr=config.optim.optimizer["lr"],
        head_lr=config.optim.head_lr,
        trainer=instantiate(cfg.trainer, _partial_=True),
        loggers=[instantiate(c) for c in cfg.logger],
        export=config.export,
        compile=config.compile,
    )


def _plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers; SettingsError naming a mandatory (`???`) key left unset."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise SettingsError(f"{error.full_key}: missing (set it on the command line)") from None


def _check_targets(config: RunConfig) -> None:
    """Every `_target_` node's arguments against its target's signature."""
    nodes: list[tuple[str, Any]] = [("optim.optimizer", config.optim.optimizer), ("trainer", config.trainer)]
    if config.optim.scheduler:
        nodes.append(("optim.scheduler", config.optim.scheduler))
    nodes += [(f"logger[{i}]", node) for i, node in enumerate(config.logger)]
    nodes += [(f"callbacks.{name}", node) for name, node in (getattr(config, "callbacks", None) or {}).items()]
    for key, node in nodes:
        if not isinstance(node, dict) or "_target_" not in node:
            raise SettingsError(f"{key}: expected a node with a _target_, got {node!r}")
        check_call(node["_target_"], node, key)


# ---------------------------------------------------------------- dispatch


JOBS: dict[str, tuple[Callable[[DictConfig], Any], str]] = {
    "pretrain": (pretrain_settings, "xlmtrain.jobs.pretrain:pretrain"),
    "finetune": (finetune_settings, "xlmtrain.jobs.finetune:finetune"),
}
"""`job:` value -> (settings from the config, the job as `module:function`, imported once the settings passed)."""


def job_and_settings(cfg: DictConfig) -> tuple[Callable[[Any], dict[str, Any]], Any]:
    """The job `cfg.job` names and its settings; `SettingsError` on an unknown job, key or wrong type."""
    if cfg.get("job") not in JOBS:
        raise SettingsError(f"job: expected one of {', '.join(JOBS)}, got {cfg.get('job')!r}")
    to_settings, job = JOBS[cfg.job]
    settings = to_settings(cfg)
    module, function = job.split(":")
    return getattr(importlib.import_module(module), function), settings


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the job a composed config names; returns the job's summary (`SettingsError` before any work)."""
    job, settings = job_and_settings(cfg)
    return job(settings)


@hydra.main(config_path=str(conf_dir()), config_name="xlmtrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `python -m xlmtrain`; a bad setting exits with code 2 and one line on stderr."""
    try:
        job, settings = job_and_settings(cfg)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    job(settings)
