"""`python -m xlmtrain [+recipe=NAME] [key=value ...]`: Hydra's config -> typed settings -> a job.

The config's `job` names the job: `pretrain` (default, `xlmtrain.jobs.pretrain`) or `finetune`
(`+recipe=xnli`, `+recipe=token_classification`; `xlmtrain.jobs.finetune`). This is the only module that
reads the pretraining/fine-tuning config; `_target_` nodes (optimizer, scheduler, trainer, loggers,
callbacks) are instantiated here and handed to the job built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xlmtrain.config_dir import conf_dir
from xlmtrain.data.pipeline import PreprocessSettings
from xlmtrain.jobs.finetune import FinetuneSettings, PretrainedModel, SyntheticNLI, TaskSettings, finetune
from xlmtrain.jobs.pretrain import DataSettings, PretrainSettings, SyntheticCorpus, pretrain
from xlmtrain.objectives.alignment import AlignmentSettings
from xlmtrain.objectives.data import BatchSettings, MaskingSettings


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True)


def pretrain_settings(cfg: DictConfig) -> PretrainSettings:
    """The pretraining job's settings from a composed config."""
    model = _plain(cfg.model)
    compile_model = bool(model.pop("compile", False))  # a build switch, not an XLMConfig field
    masking = _plain(cfg.objective.masking)
    synthetic = _plain(cfg.data.synthetic)
    return PretrainSettings(
        run_dir=Path(cfg.run_dir),
        cache_dir=Path(cfg.paths.cache_dir).expanduser(),
        seed=cfg.seed,
        resume=str(cfg.resume),
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
        alignment=AlignmentSettings(**_plain(cfg.objective.alignment)),
        lg_sampling_factor=cfg.objective.lg_sampling_factor,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler),
        trainer=instantiate(cfg.trainer, _partial_=True),
        loggers=[instantiate(c) for c in cfg.logger],
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
    )


def finetune_settings(cfg: DictConfig) -> FinetuneSettings:
    """The fine-tuning job's settings from a composed config."""
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
    """Hydra entry point of `python -m xlmtrain`."""
    run(cfg)
