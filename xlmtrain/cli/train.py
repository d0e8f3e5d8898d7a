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

The run dir is Hydra's output dir, so `hydra.run.dir=D` and `run_dir=D` mean the same; in a sweep (`-m`) each
job's is `<sweep_dir>/<run_name>`, named from its overrides (`cli/run_names.py`), and a table of the jobs ends
the sweep (`cli/sweep.py`). The run's identity (`training/run_identity.py`) is computed here from the composed
config and checked by the job against the run dir before any work. xlmtrain's own errors are one line
`error: ...` with exit code 2 (`cli/errors.py`; `HYDRA_FULL_ERROR=1` for the traceback).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from xlmtrain.cli import run_names
from xlmtrain.cli.defaults import store_defaults
from xlmtrain.cli.errors import one_line_errors, quiet_known_noise, route_lightning_logs
from xlmtrain.config_dir import conf_dir
from xlmtrain.data.pipeline import PreprocessSettings
from xlmtrain.jobs.finetune_config import PretrainedModel, TaskSettings
from xlmtrain.jobs.pretrain_config import DataSettings, ObjectiveSettings
from xlmtrain.objectives.alignment import AlignmentSettings
from xlmtrain.objectives.data import BatchSettings, MaskingSettings
from xlmtrain.settings import SettingsError, check_call, typed

run_names.register()  # `${xlmtrain.run_name:...}` in conf/xlmtrain.yaml

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
class Resume:
    """`resume` (conf/resume/*.yaml): which run a start continues."""

    mode: Literal["auto", "never"]
    """auto: continue the run in run_dir (same identity, or safe changes); never: archive it and start anew."""
    allow_changes: tuple[str, ...] = ()
    """Identity keys this start may change (e.g. `[optim.optimizer.lr]`: the new lr applies from the resume step)."""
    checkpoint: Path | None = None
    """Resume from this .ckpt file instead of the newest valid checkpoint in <run_dir>/checkpoints."""


@dataclass(frozen=True)
class RunConfig:
    """The keys of conf/xlmtrain.yaml every job has."""

    job: str
    """pretrain, or finetune (+recipe=xnli, +recipe=token_classification)."""
    run_name: str
    run_dir: Path
    sweep_dir: Path
    """A sweep's jobs go to <sweep_dir>/<run_name>, its table to <sweep_dir>/sweep.txt."""
    run_id: str | None
    """The loggers' run id; set here from <run_dir>/run.json (kept by a continuation, new for a new run)."""
    resume: Resume
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
    from xlmtrain.training.run_dir import run_id_for
    from xlmtrain.training.run_identity import split_config

    resume = str(config.resume.checkpoint or config.resume.mode)
    with open_dict(cfg):
        cfg.run_id = run_id_for(config.run_dir, resume)  # before the loggers are built: they carry it
    identity, run_settings = split_config(_plain(cfg), data_fingerprint="")
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
        resume=resume,
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
        identity=identity,
        run_settings=run_settings,
        allow_changes=config.resume.allow_changes,
        run_id=cfg.run_id,
        snapshot=_run_files(cfg),
        overrides=_overrides(),
    )


def finetune_settings(cfg: DictConfig) -> FinetuneSettings:
    """The fine-tuning job's settings from a composed config; `SettingsError` (one line) on a bad key or value."""
    config = typed(FinetuneConfig, _plain(cfg), "")
    if config.optim.head_lr is None:
        raise SettingsError("optim.head_lr: missing (expected float)")
    from xlmtrain.jobs.finetune import FinetuneSettings  # the training stack, once the config passed
    from xlmtrain.training.run_dir import run_id_for
    from xlmtrain.training.run_identity import split_config

    _check_targets(config)
    with open_dict(cfg):
        cfg.run_id = run_id_for(config.run_dir, "never")  # a fine-tuning run starts afresh every time
    identity, run_settings = split_config(_plain(cfg), data_fingerprint="")
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
        identity=identity,
        run_settings=run_settings,
        run_id=cfg.run_id,
        overrides=_overrides(),
        snapshot=_run_files(cfg),
    )


def _plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers; SettingsError naming a mandatory (`???`) key left unset."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise SettingsError(f"{error.full_key}: missing (set it on the command line)") from None


def _overrides() -> tuple[str, ...]:
    """The command line's overrides (none outside a Hydra run, e.g. the compose API)."""
    return tuple(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ()


def _run_files(cfg: DictConfig) -> dict[str, str]:
    """The config snapshot Hydra would write (`.hydra/config.yaml`, `overrides.yaml`), written by the job once the
    run dir is known to be this run's (Hydra's own writing is off: it would overwrite a refused run's snapshot)."""
    files = {".hydra/config.yaml": OmegaConf.to_yaml(cfg)}
    if HydraConfig.initialized():
        files[".hydra/overrides.yaml"] = OmegaConf.to_yaml(OmegaConf.create(list(_overrides())))
    return files


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
    """Hydra entry point of `python -m xlmtrain`: xlmtrain's own errors (a bad setting, data, checkpoint, a run dir
    holding another run or held by another training) exit with code 2 and one line on stderr; in a sweep a failed
    job is reported and the sweep goes on."""
    hydra_cfg = HydraConfig.get()
    with open_dict(cfg):
        cfg.run_dir = hydra_cfg.runtime.output_dir  # hydra.run.dir=D moves the whole run, as run_dir=D does
    quiet_known_noise()
    route_lightning_logs()
    with one_line_errors() as failed:
        run(cfg)
    if failed.error is not None and hydra_cfg.mode != RunMode.MULTIRUN:
        sys.exit(2)
