"""`python -m xlmtrain [+recipe=NAME] [key=value ...]`: Hydra's config -> typed settings -> a job.

The config's `job` names the job: `pretrain` (default, `xlmtrain.jobs.pretrain`) or `finetune`
(`+recipe=xnli`, `+recipe=token_classification`; `xlmtrain.jobs.finetune`). This is the only module that
reads the pretraining/fine-tuning config; `_target_` nodes (optimizer, scheduler, trainer, loggers,
callbacks) are instantiated here and handed to the job built.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from xlmtrain.cli import run_names
from xlmtrain.cli.errors import one_line_errors, quiet_known_noise, route_lightning_logs
from xlmtrain.config_dir import conf_dir
from xlmtrain.data.pipeline import PreprocessSettings
from xlmtrain.jobs.finetune import (
    FinetuneSettings,
    PretrainedModel,
    SyntheticNLI,
    TaskSettings,
    finetune,
)
from xlmtrain.jobs.pretrain import (
    DataSettings,
    PretrainSettings,
    SyntheticCorpus,
    pretrain,
)
from xlmtrain.objectives.data import BatchSettings, MaskingSettings
from xlmtrain.training.run_dir import run_id_for
from xlmtrain.training.run_identity import split_config

run_names.register()  # `${xlmtrain.run_name:...}` in conf/xlmtrain.yaml


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True)


def _run_files(cfg: DictConfig) -> dict[str, str]:
    """The config snapshot Hydra would write (`.hydra/config.yaml`, `overrides.yaml`), written by the job once the
    run dir is known to be this run's (Hydra's own writing is off: it would overwrite a refused run's snapshot)."""
    files = {".hydra/config.yaml": OmegaConf.to_yaml(cfg)}
    if HydraConfig.initialized():
        files[".hydra/overrides.yaml"] = OmegaConf.to_yaml(OmegaConf.create(list(HydraConfig.get().overrides.task)))
    return files


def pretrain_settings(cfg: DictConfig) -> PretrainSettings:
    """The pretraining job's settings from a composed config."""
    resume = cfg.resume.checkpoint or cfg.resume.mode
    with open_dict(cfg):
        cfg.run_id = run_id_for(cfg.run_dir, str(resume))  # before the loggers are built: they carry it
    identity, run_settings = split_config(_plain(cfg), data_fingerprint="")
    model = _plain(cfg.model)
    compile_model = bool(model.pop("compile", False))  # a build switch, not an XLMConfig field
    masking = _plain(cfg.objective.masking)
    synthetic = _plain(cfg.data.synthetic)
    return PretrainSettings(
        run_dir=Path(cfg.run_dir),
        cache_dir=Path(cfg.paths.cache_dir).expanduser(),
        seed=cfg.seed,
        resume=str(resume),
        export=bool(cfg.export),
        data=DataSettings(
            dir=None if cfg.data.dir is None else Path(cfg.data.dir),
            synthetic=SyntheticCorpus(**{**synthetic, "langs": tuple(synthetic["langs"])}),
            preprocess=PreprocessSettings(**_plain(cfg.data.preprocess)),
            batching=BatchSettings(**_plain(cfg.data.batching)),
        ),
        model=model,
        compile=compile_model,
        streams=_plain(cfg.objective.streams),
        masking=MaskingSettings(**{**masking, "keep_rand": tuple(masking["keep_rand"])}),
        lg_sampling_factor=cfg.objective.lg_sampling_factor,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler),
        trainer=instantiate(cfg.trainer, _partial_=True),
        loggers=[instantiate(c) for c in cfg.logger],
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
        identity=identity,
        run_settings=run_settings,
        allow_changes=tuple(cfg.resume.allow_changes),
        run_id=cfg.run_id,
        snapshot=_run_files(cfg),
    )


def finetune_settings(cfg: DictConfig) -> FinetuneSettings:
    """The fine-tuning job's settings from a composed config."""
    with open_dict(cfg):
        cfg.run_id = run_id_for(cfg.run_dir, "never")  # a fine-tuning run starts afresh every time
    synthetic = cfg.data.get("synthetic")
    return FinetuneSettings(
        run_dir=Path(cfg.run_dir),
        seed=cfg.seed,
        task=TaskSettings(**_plain(cfg.task)),
        pretrained=PretrainedModel(path=Path(cfg.model.init), codes=cfg.model.codes, lowercase=cfg.model.lowercase),
        data_dir=None if cfg.data.dir is None else Path(cfg.data.dir),
        synthetic=None if synthetic is None else SyntheticNLI(**_plain(synthetic)),
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        encoder_lr=cfg.optim.optimizer.lr,
        head_lr=cfg.optim.head_lr,
        trainer=instantiate(cfg.trainer, _partial_=True),
        loggers=[instantiate(c) for c in cfg.logger],
    )


JOBS: dict[str, tuple[Callable[[DictConfig], Any], Callable[[Any], dict[str, Any]]]] = {
    "pretrain": (pretrain_settings, pretrain),
    "finetune": (finetune_settings, finetune),
}
"""`job:` value -> (settings from the config, the job)."""


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the job `cfg.job` names from a composed config; returns the job's summary."""
    if cfg.job not in JOBS:
        raise ValueError(f"job={cfg.job}: unknown; choose from {', '.join(JOBS)}")
    to_settings, job = JOBS[cfg.job]
    return job(to_settings(cfg))


@hydra.main(config_path=str(conf_dir()), config_name="xlmtrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `python -m xlmtrain`.

    The run dir is Hydra's output dir, so `hydra.run.dir=D` and `run_dir=D` mean the same; in a sweep each job's
    is `<sweep_dir>/<run_name>`. xlmtrain's own errors are one line `error: ...` and exit code 2
    (`HYDRA_FULL_ERROR=1` for the traceback); in a sweep a failed job is reported and the sweep goes on.
    """
    hydra_cfg = HydraConfig.get()
    with open_dict(cfg):
        cfg.run_dir = hydra_cfg.runtime.output_dir
    quiet_known_noise()
    route_lightning_logs()
    with one_line_errors() as failed:
        run(cfg)
    if failed.error is not None and hydra_cfg.mode != RunMode.MULTIRUN:
        sys.exit(2)
