"""The pretraining job behind `python -m xlmtrain [+recipe=clm|mlm|tlm|mlm_tlm]`: typed settings -> setup -> fit -> report.

- settings: `PretrainSettings` (built from the Hydra config by `xlmtrain/cli/train.py`, or by hand).
- setup: resolve the data (none: generate the synthetic corpus and preprocess it into the cache; a raw folder:
  preprocess it into the cache; a folder with manifest.json: use it), record it in `<run_dir>/data.json`,
  expand the streams over the data's languages, build the model config from the data's vocabulary and
  languages, the batch sources, the Lightning module and the trainer.
- fit: train, resuming from `<run_dir>/checkpoints` by default (`resume`). The run dir is held and checked first
  (`training/run_dir.py`: lock, run identity, `resume=never` archive, status); a bad step seen by the numerics
  guard rolls the run back to its newest checkpoint with that batch skipped (`training/numerics.py`).
- report: `<run_dir>/checkpoints/last.ckpt`, `<run_dir>/model/` (transformers XLM format, with tokenizer
  files), `<run_dir>/training_curves.png`, and a printed summary of `<run_dir>/metrics.csv`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from xlmtrain.data.preprocessed import PreprocessedData, ensure_preprocessed
from xlmtrain.data.synthetic import write_corpus
from xlmtrain.inference.callback import RetrievalCallback
from xlmtrain.jobs.pretrain_config import DataSettings, ObjectiveSettings, StreamSettings, SyntheticCorpus
from xlmtrain.model.config import XLMConfig
from xlmtrain.objectives.data import PretrainBatches, ValidBatches
from xlmtrain.objectives.pretrain import OptimizerFactory, PretrainModule, SchedulerFactory
from xlmtrain.objectives.streams import StreamSpec, expand_langs
from xlmtrain.training.checkpoint_io import AtomicCheckpointIO
from xlmtrain.training.numerics import NUMERICS_FILE, NumericsGuard, NumericsRollback, RollbackPlan
from xlmtrain.training.precision import enable_tf32_on_cuda
from xlmtrain.training.preemption import PreemptionCallback, cluster_environment_plugins
from xlmtrain.training.progress import StepProgressBar
from xlmtrain.training.report import final_metrics, format_summary, plot_curves
from xlmtrain.training.resume import (
    OptimizerSettingsOnResume,
    ResumeAgreement,
    find_resume_checkpoint,
    truncate_metrics_csv,
    validated_step,
)
from xlmtrain.training.run_data import write_run_data
from xlmtrain.training.run_dir import DATA_KEY, RunDir, closing_loggers
from xlmtrain.training.run_identity import data_fingerprint
from xlmtrain.training.run_lock import launcher_is_rank_zero

TrainerFactory = Callable[..., pl.Trainer]


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class PretrainSettings:
    """Everything one pretraining run needs; the `_target_` parts (optimizer, scheduler, trainer, loggers,
    callbacks) arrive built, as factories or objects."""

    run_dir: Path
    cache_dir: Path
    """Where generated and preprocessed data is cached (`paths.cache_dir`)."""
    seed: int
    """Seeds model init, data order, stream choice and masking."""
    resume: str
    """auto (the run in run_dir, from its newest valid checkpoint), never (archive it, start anew), or a .ckpt path."""
    export: bool
    """Export <run_dir>/model/ and the training-curve plot at the end."""
    compile: bool
    """torch.compile the model's forward in place (state-dict keys unchanged)."""
    data: DataSettings
    model: XLMConfig
    """The architecture (`conf/model/*`); vocabulary size and languages are replaced by the data's."""
    embed_init_std: float | None
    """Std of the normal init of the word/language embeddings (`model.embed_init_std`); None: `emb_dim ** -0.5`,
    XLM's init (transformers' XLMConfig default, 2048 ** -0.5, is right only for dim 2048)."""
    objective: ObjectiveSettings
    optimizer: OptimizerFactory
    scheduler: SchedulerFactory
    trainer: TrainerFactory
    """`trainer(logger=..., callbacks=..., plugins=...)` -> `pl.Trainer`."""
    loggers: list[Any] = field(default_factory=list)
    callbacks: list[pl.Callback] = field(default_factory=list)
    identity: Mapping[str, Any] = field(default_factory=dict)
    """What defines the run (`training.run_identity.split_config`); setup adds the data content's fingerprint."""
    run_settings: Mapping[str, Any] = field(default_factory=dict)
    """The run's other (safe) settings, recorded with its continuations in run.json."""
    allow_changes: tuple[str, ...] = ()
    """Identity keys this start may change (`resume.allow_changes`)."""
    run_id: str | None = None
    """The loggers' run id (`run_dir.run_id_for`); None: drawn at the run's first start."""
    snapshot: Mapping[str, str] = field(default_factory=dict)
    """Files written into the run dir once it is known to be this run's (the config snapshot `.hydra/*.yaml`)."""
    overrides: tuple[str, ...] = ()
    """The command line's overrides, recorded in run.json (the sweep table shows them)."""


# ---------------------------------------------------------------- the job


def pretrain(settings: PretrainSettings) -> dict[str, Any]:
    """Run one pretraining job and write its outputs; returns the summary (also printed).

    Before any work the run dir is taken (`RunLockedError` if another training holds it) and checked
    (`RunIdentityError` if it holds another run). After a preemption (SIGUSR1/SIGTERM/SIGINT, see
    `PreemptionCallback`) it returns right after the checkpoint is saved, without the final checkpoint, export
    or summary: `{"preempted": True, ...}`. A bad step (`NumericsGuard`) rolls back to the newest checkpoint and
    skips its batch; past the guard's `max_rollbacks`, `NumericsStopped`. `status.json` says how it ended.
    """
    with RunDir(settings.run_dir, rank_zero=launcher_is_rank_zero(), logs=LOG_FILES) as run:
        run.start(settings.resume, settings.allow_changes, dict(settings.identity), dict(settings.run_settings),
                  data_known=False, run_id=settings.run_id, snapshot=settings.snapshot,
                  overrides=settings.overrides)  # fmt: skip
        with run.reporting(max_steps=_max_steps(settings)) as status, closing_loggers(settings.loggers):
            module, trainer, data = _fit_with_rollbacks(settings, run)
            if _preempted(trainer):
                status.ended("preempted", trainer.global_step, "stopped on a signal; the same command resumes it")
                return {"run_dir": str(settings.run_dir), "steps": trainer.global_step, "preempted": True}
            summary = report(settings, module, trainer, data)
            status.ended("finished", trainer.global_step)
            return summary


LOG_FILES = ("train.log",)
"""Log files the CLI keeps open in the run dir (`resume=never` copies and empties them instead of moving them)."""


def _max_steps(settings: PretrainSettings) -> int | None:
    return getattr(settings.trainer, "keywords", {}).get("max_steps")


def _fit_with_rollbacks(settings: PretrainSettings, run: RunDir) -> tuple[PretrainModule, pl.Trainer, PreprocessedData]:
    """setup + fit; on `NumericsRollback` record it, rebuild and resume from the newest checkpoint (every checkpoint
    on disk was checked by the guard before it was written), with the bad batch skipped."""
    guard = next((c for c in settings.callbacks if isinstance(c, NumericsGuard)), None)
    plan = RollbackPlan(settings.run_dir, guard.max_rollbacks if guard else 0, write=run.rank_zero)
    checkpoint = None
    while True:
        module, trainer, data = setup(settings, run, skip_batches=plan.skip_batches)
        if checkpoint is None and not plan.rollbacks:
            checkpoint = run.started.checkpoint
        try:
            fit(settings, module, trainer, checkpoint)
            return module, trainer, data
        except NumericsRollback as error:
            found = find_resume_checkpoint(settings.run_dir / "checkpoints")
            checkpoint = str(found) if found else None
            step = validated_step(found) if found else 0
            plan.roll_back(error, step)  # NumericsStopped past max_rollbacks
            if run.rank_zero:
                print(f"[xlmtrain] {error}; rolling back to step {step} and skipping batch {error.bad.batch} "
                      f"(rollback {plan.rollbacks} of at most {plan.max_rollbacks}; {settings.run_dir / NUMERICS_FILE})",
                      flush=True)  # fmt: skip


def setup(
    settings: PretrainSettings, run: RunDir | None = None, *, skip_batches: frozenset[int] = frozenset()
) -> tuple[PretrainModule, pl.Trainer, PreprocessedData]:
    """The module (model, streams, batch sources), the trainer and the data of a run. With `run`, the data
    content is checked against the run's identity (and recorded) as soon as it is known."""
    pl.seed_everything(settings.seed, workers=True)
    enable_tf32_on_cuda()
    data = PreprocessedData(resolve_data(settings.data, settings.cache_dir))
    if run is not None and not run.confirmed:
        identity = {**settings.identity, DATA_KEY: data_fingerprint(data.directory)}
        run.start(
            settings.resume, settings.allow_changes, identity, dict(settings.run_settings), run_id=settings.run_id
        )
    specs = expand_streams(settings.objective.streams, data)
    config = model_config(settings.model, data, settings.embed_init_std)
    dico = data.dictionary
    common = dict(vocab_size=len(dico), batching=settings.data.batching, masking=settings.objective.masking,
                  mask_index=dico.mask_index, pad_index=dico.pad_index)  # fmt: skip
    train = PretrainBatches(
        specs,
        data,
        counts=dico.counts,
        lg_sampling_factor=settings.objective.lg_sampling_factor,
        mixture=settings.objective.mixture,
        seed=settings.seed,
        skip_batches=skip_batches,
        **common,
    )
    valid = ValidBatches(specs, data, **common)
    module = PretrainModule(
        config,
        specs,
        optimizer=settings.optimizer,
        scheduler=settings.scheduler,
        train_batches=train,
        valid_batches=valid,
        alignment=settings.objective.alignment,
    )
    for callback in settings.callbacks:
        if isinstance(callback, RetrievalCallback):
            callback.use_data(data)  # the held-out bitext it embeds is this run's data
    if settings.compile:
        module.model.compile()  # in place: state-dict keys (checkpoints, export) stay those of the eager model
    # On a resume the config's optimizer settings (an allowed new lr) hold from the resume step on.
    extra: list[pl.Callback] = [
        OptimizerSettingsOnResume(getattr(settings.optimizer, "keywords", {})),
    ]
    if getattr(settings.trainer, "keywords", {}).get("enable_progress_bar", True):
        extra.append(StepProgressBar())  # step / max_steps, not batches of an epoch the stream mixture lacks
    trainer = settings.trainer(
        logger=list(settings.loggers),
        callbacks=[*settings.callbacks, *extra],
        plugins=[AtomicCheckpointIO(), *cluster_environment_plugins()],
    )
    if trainer.is_global_zero:
        _record_data(settings, data)
    return module, trainer, data


def fit(settings: PretrainSettings, module: PretrainModule, trainer: pl.Trainer, ckpt_path: str | None) -> None:
    """Train, from `ckpt_path` (None: from scratch)."""
    metrics = settings.run_dir / "metrics.csv"
    if trainer.is_global_zero:
        if ckpt_path is None:
            metrics.unlink(missing_ok=True)  # a fresh run must not append to an old run's curves
        else:
            # Rows a killed run flushed after its last checkpoint are logged again by this run.
            truncate_metrics_csv(metrics, validated_step(ckpt_path))
            print(f"[xlmtrain] resuming from {ckpt_path}", flush=True)
    trainer.callbacks.append(ResumeAgreement(ckpt_path))  # every rank must have picked rank 0's checkpoint
    trainer.fit(module, ckpt_path=ckpt_path)


def report(
    settings: PretrainSettings, module: PretrainModule, trainer: pl.Trainer, data: PreprocessedData
) -> dict[str, Any]:
    """Final checkpoint, export, plot and summary of a run that trained to the end."""
    run_dir = settings.run_dir
    # After fit, teardown has moved the module to the CPU; the RNG gather of `on_save_checkpoint` still runs on
    # the strategy's root device (NCCL refuses CPU tensors), so this save works on GPUs too.
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": trainer.global_step}
    if trainer.is_global_zero:
        metrics = run_dir / "metrics.csv"
        if settings.export:
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


def _preempted(trainer: pl.Trainer) -> bool:
    preemption = next((c for c in trainer.callbacks if isinstance(c, PreemptionCallback)), None)
    return preemption is not None and preemption.preempted


# ---------------------------------------------------------------- setup steps


def resolve_data(settings: DataSettings, cache_dir: Path) -> Path:
    """Return a preprocessed data folder for `settings.dir` (raw or preprocessed) or the synthetic corpus."""
    preprocess = dataclasses.asdict(settings.preprocess)
    if settings.dir is None:
        return ensure_preprocessed(
            synthetic_corpus(settings.synthetic, cache_dir), cache_dir / "preprocessed", **preprocess
        )
    directory = Path(settings.dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"data.dir={settings.dir}: no such directory")
    if (directory / "manifest.json").is_file():
        return directory
    return ensure_preprocessed(directory, cache_dir / "preprocessed", **preprocess)


def synthetic_corpus(corpus: SyntheticCorpus, cache_dir: Path) -> Path:
    """The raw synthetic corpus under `cache_dir/synthetic/<key>`, generated once (also when runs race for it)."""
    described = {**dataclasses.asdict(corpus), "langs": list(corpus.langs)}
    # shared_names=0 (the default corpus) keeps the cache key it had before the option existed.
    hashed = {k: v for k, v in described.items() if not (k == "shared_names" and v == 0)}
    key = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:12]
    raw = cache_dir / "synthetic" / key
    if not raw.is_dir():
        # Written aside and renamed, so an interrupted generation is never mistaken for a complete one.
        raw.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=raw.parent))
        write_corpus(tmp, langs=tuple(corpus.langs), n_mono=corpus.n_mono, n_para=corpus.n_para, seed=corpus.seed,
                     shared_names=corpus.shared_names)  # fmt: skip
        try:
            os.replace(tmp, raw)
        except OSError:
            if not raw.is_dir():
                raise
            # Another run generated the same (deterministic) corpus first: use theirs.
            shutil.rmtree(tmp)
    return raw


def _record_data(settings: PretrainSettings, data: PreprocessedData) -> None:
    """`<run_dir>/data.json`: the resolved data dir and the data settings, for later jobs and tools."""
    described = dataclasses.asdict(settings.data)
    described["dir"] = None if settings.data.dir is None else str(settings.data.dir)
    write_run_data(settings.run_dir, {**described, "resolved_dir": str(data.directory)})


def expand_streams(streams: Sequence[StreamSettings], data: PreprocessedData) -> list[StreamSpec]:
    """`objective.streams` entries -> `StreamSpec`s; `langs` as `expand_langs` (`'*'`, `'*-*'`, `'*<->*'`, a
    list). Raises ValueError naming the entry on an invalid stream or missing data."""
    mono = [name for name in data.manifest["monolingual"]]
    specs = []
    for i, entry in enumerate(streams):
        fields = dataclasses.asdict(entry)
        where = f"objective.streams[{i}]"
        langs = entry.langs
        choices = expand_langs(langs, mono, data.pairs)
        if not choices:
            kind = "monolingual" if langs == "*" else "parallel"
            raise ValueError(f"{where}: langs {langs!r} but {data.directory} has no {kind} data")
        for langs_i in choices:
            try:
                spec = StreamSpec(**{**fields, "langs": langs_i})
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from None
            available = data.pairs if spec.is_pair else mono
            name = "-".join(sorted(spec.langs))
            if name not in available:
                raise ValueError(f"{where}: no data for {spec.lang_key!r} in {data.directory} (have {available})")
            specs.append(spec)
    return specs


def model_config(architecture: XLMConfig, data: PreprocessedData, embed_init_std: float | None) -> XLMConfig:
    """The architecture with the data's vocabulary size and languages, and its embedding init std (None:
    XLM's `emb_dim ** -0.5`)."""
    lang2id = dict(data.lang2id)
    return architecture.replace(
        embed_init_std=architecture.emb_dim**-0.5 if embed_init_std is None else embed_init_std,
        vocab_size=len(data.dictionary),
        n_langs=len(lang2id),
        lang2id=lang2id,
        id2lang={i: lang for lang, i in lang2id.items()},
    )
