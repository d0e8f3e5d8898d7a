"""`python -m xlmtrain [+recipe=NAME] [key=value ...]`: pretrain an XLM model with Lightning, configured by Hydra.

The job: resolve the data (none: generate the synthetic corpus and preprocess it into the cache; a raw
folder: preprocess it into the cache; a folder with manifest.json: use it), build the model config from
the data's vocabulary and languages, train (resuming from `<run_dir>/checkpoints` by default), then write
`<run_dir>/checkpoints/last.ckpt`, `<run_dir>/metrics.csv`, `<run_dir>/model/` (transformers XLM format,
with tokenizer files), `<run_dir>/training_curves.png` and print a summary.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from xlmtrain.cli.config_dir import conf_dir
from xlmtrain.data.preprocessed import PreprocessedData, ensure_preprocessed
from xlmtrain.data.synthetic import write_corpus
from xlmtrain.model.config import XLMConfig
from xlmtrain.objectives.alignment import AlignmentSettings
from xlmtrain.objectives.data import BatchSettings, MaskingSettings, PretrainBatches, ValidBatches
from xlmtrain.objectives.pretrain import PretrainModule
from xlmtrain.objectives.streams import StreamSpec

log = logging.getLogger(__name__)


def resolve_data(data_cfg: DictConfig, cache_dir: Path) -> Path:
    """Return a preprocessed data folder for `data.dir` (raw or preprocessed) or the synthetic corpus."""
    settings = OmegaConf.to_container(data_cfg.preprocess, resolve=True)
    if data_cfg.dir is None:
        syn = OmegaConf.to_container(data_cfg.synthetic, resolve=True)
        # shared_names=0 (the default corpus) keeps the cache key it had before the option existed.
        hashed = {k: v for k, v in syn.items() if not (k == "shared_names" and v == 0)}
        key = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:12]
        raw = cache_dir / "synthetic" / key
        if not raw.is_dir():
            # Written aside and renamed, so an interrupted generation is never mistaken for a complete one.
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_mkdir(raw.parent)))
            write_corpus(tmp, langs=tuple(syn["langs"]), n_mono=syn["n_mono"], n_para=syn["n_para"], seed=syn["seed"],
                         shared_names=syn.get("shared_names", 0))
            try:
                os.replace(tmp, raw)
            except OSError:
                if not raw.is_dir():
                    raise
                # Another run generated the same (deterministic) corpus first: use theirs.
                shutil.rmtree(tmp)
        return ensure_preprocessed(raw, cache_dir / "preprocessed", **settings)
    directory = Path(data_cfg.dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"data.dir={data_cfg.dir}: no such directory")
    if (directory / "manifest.json").is_file():
        return directory
    return ensure_preprocessed(directory, cache_dir / "preprocessed", **settings)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def expand_streams(streams: Sequence[Any], data: PreprocessedData) -> list[StreamSpec]:
    """`objective.streams` entries -> `StreamSpec`s; `langs: '*'` is every monolingual language of the data,
    `'*-*'` every parallel pair. Raises ValueError naming the entry on an unknown key or missing data."""
    mono = [name for name in data.manifest["monolingual"]]
    specs = []
    for i, entry in enumerate(streams):
        fields = dict(entry)
        where = f"objective.streams[{i}]"
        unknown = set(fields) - {"objective", "langs", "lambda_", "weight"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected objective, langs, lambda_, weight")
        langs = str(fields.get("langs", ""))
        choices = {"*": mono, "*-*": data.pairs}.get(langs, [langs])
        if not choices:
            kind = "monolingual" if langs == "*" else "parallel"
            raise ValueError(f"{where}: langs {langs!r} but {data.directory} has no {kind} data")
        for langs_i in choices:
            try:
                spec = StreamSpec(**{**fields, "langs": langs_i})
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from None
            available = data.pairs if spec.is_pair else mono
            name = "-".join(sorted(spec.lang_list)) if spec.is_pair else spec.langs
            if name not in available:
                raise ValueError(f"{where}: no data for {spec.langs!r} in {data.directory} (have {available})")
            specs.append(spec)
    return specs


def model_config(model_cfg: DictConfig, data: PreprocessedData) -> XLMConfig:
    """`conf/model/*` sizes + the data's vocabulary size and languages."""
    lang2id = dict(data.lang2id)
    return XLMConfig(
        **OmegaConf.to_container(model_cfg, resolve=True),
        vocab_size=len(data.dictionary),
        n_langs=len(lang2id),
        lang2id=lang2id,
        id2lang={i: lang for lang, i in lang2id.items()},
        embed_init_std=model_cfg.emb_dim**-0.5,
    )


def resume_path(resume: str, ckpt_dir: Path) -> str | None:
    """`auto`: newest valid checkpoint in `ckpt_dir` (None if none); `never`: None; else a .ckpt path."""
    from xlmtrain.training.resume import find_resume_checkpoint

    if resume == "never":
        return None
    if resume == "auto":
        found = find_resume_checkpoint(ckpt_dir)
        return str(found) if found else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint (use auto, never or a .ckpt path)")
    return resume


def build(cfg: DictConfig) -> tuple[PretrainModule, pl.Trainer, PreprocessedData]:
    """Everything `train` needs, from a composed config."""
    from xlmtrain.training.checkpoint_io import AtomicCheckpointIO
    from xlmtrain.training.preemption import cluster_environment_plugins

    pl.seed_everything(cfg.seed, workers=True)
    data = PreprocessedData(resolve_data(cfg.data, Path(cfg.paths.cache_dir).expanduser()))
    specs = expand_streams(cfg.objective.streams, data)
    compile_model = bool(cfg.model.get("compile", False))  # a build switch, not an XLMConfig field
    config = model_config(OmegaConf.create({k: v for k, v in cfg.model.items() if k != "compile"}), data)
    batching = BatchSettings(**OmegaConf.to_container(cfg.data.batching, resolve=True))
    m = OmegaConf.to_container(cfg.objective.masking, resolve=True)
    masking = MaskingSettings(**{**m, "keep_rand": tuple(m["keep_rand"])})
    dico = data.dictionary
    common = dict(n_words=len(dico), batching=batching, masking=masking, mask_index=dico.mask_index, pad_index=dico.pad_index)
    train = PretrainBatches(
        specs, data, counts=dico.counts, lg_sampling_factor=cfg.objective.lg_sampling_factor, seed=cfg.seed, **common
    )
    valid = ValidBatches(specs, data, **common)
    module = PretrainModule(
        config.to_dict(),
        [{"objective": s.objective, "langs": s.langs, "lambda_": s.lambda_, "weight": s.weight} for s in specs],
        optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
        scheduler=hydra.utils.instantiate(cfg.optim.scheduler),
        train_batches=train,
        valid_batches=valid,
        alignment=AlignmentSettings(**OmegaConf.to_container(cfg.objective.alignment, resolve=True)),
    )
    if compile_model:
        module.model.compile()  # in place: state-dict keys (checkpoints, export) stay those of the eager model
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger]
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values()]
    trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO(), *cluster_environment_plugins()]
    )
    return module, trainer, data


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one pretraining job and write its outputs; returns the summary (also printed).

    After a preemption (SIGUSR1/SIGTERM, see `PreemptionCallback`) it returns right after the
    checkpoint is saved, without the final checkpoint, export or summary: `{"preempted": True, ...}`.
    """
    from xlmtrain.training.preemption import PreemptionCallback
    from xlmtrain.training.resume import truncate_metrics_csv, validated_step

    run_dir = Path(cfg.run_dir)
    module, trainer, data = build(cfg)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = resume_path(str(cfg.resume), ckpt_dir)
    metrics = run_dir / "metrics.csv"
    if trainer.is_global_zero:
        if ckpt_path is None:
            metrics.unlink(missing_ok=True)  # a fresh run must not append to an old run's curves
        else:
            # Rows a killed run flushed after its last checkpoint are logged again by this run.
            truncate_metrics_csv(metrics, validated_step(ckpt_path))
            print(f"[xlmtrain] resuming from {ckpt_path}", flush=True)
    trainer.fit(module, ckpt_path=ckpt_path)
    preemption = next((c for c in trainer.callbacks if isinstance(c, PreemptionCallback)), None)
    if preemption is not None and preemption.preempted:
        return {"run_dir": str(run_dir), "steps": trainer.global_step, "preempted": True}
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": trainer.global_step}
    if trainer.is_global_zero:
        if cfg.export:
            from xlmtrain.interop.load import save_model

            model_dir = run_dir / "model"
            save_model(module.model, model_dir, format="hf")
            data.tokenizer().save_pretrained(model_dir)
            summary["model"] = str(model_dir)
            if metrics.is_file():
                summary["plot"] = str(plot_curves(metrics, run_dir / "training_curves.png"))
        summary.update(final_metrics(metrics))
        print(format_summary(summary))
    return summary


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of Lightning's metrics.csv as dicts of the non-empty numeric cells."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def final_metrics(path: Path) -> dict[str, float]:
    """The first and last training loss and the last value of every validation metric."""
    if not path.is_file():
        return {}
    out: dict[str, float] = {}
    losses = [r["train_loss"] for r in read_metrics(path) if "train_loss" in r]
    if losses:
        out["train_loss_first"], out["train_loss_last"] = losses[0], losses[-1]
    for row in read_metrics(path):
        out.update({k: v for k, v in row.items() if k.startswith("valid_")})
    return out


def plot_curves(metrics: Path, png: Path) -> Path:
    """Training loss and validation perplexities against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics)
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
    train_rows = [r for r in rows if "train_loss" in r]
    ax_loss.plot([r["step"] for r in train_rows], [r["train_loss"] for r in train_rows], lw=0.8)
    ax_loss.set(xlabel="step", ylabel="train loss (lambda x CE)", title="training")
    names = sorted({k for r in rows for k in r if k.startswith("valid_") and k.endswith("_ppl")})
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if name in r]
        ax_ppl.plot(*zip(*pts), marker="o", label=name)
    ax_ppl.set(xlabel="step", ylabel="perplexity", title="validation", yscale="log")
    if names:
        ax_ppl.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block."""
    lines = ["", "xlmtrain run summary"]
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else value
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)


@hydra.main(config_path=str(conf_dir()), config_name="xlmtrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `python -m xlmtrain`: pretraining, or the job a recipe names in `job:`
    (e.g. `+recipe=xnli` sets `job: xlmtrain.tasks.job.finetune`)."""
    if cfg.get("job"):
        hydra.utils.get_method(cfg.job)(cfg)
        return
    train(cfg)
