"""The fine-tuning job behind `python -m xlmtrain +recipe=xnli` and `+recipe=token_classification`:
typed settings -> setup -> fit -> report.

- settings: `FinetuneSettings` (built from the Hydra config by `xlmtrain/cli/train.py`, or by hand).
- setup: load the pretrained model with a fresh head and its tokenizer; read the task data (`task.data_dir`,
  or the synthetic NLI task when it is None); encode every (split, language); build the loaders, the module
  and the trainer.
- fit: fine-tune on `task.train_langs`, validating every language each epoch; keep the best checkpoint by
  `task.select_on`; re-evaluate valid and test with it.
- report: `<run_dir>/results.csv`, `results.md`, the bar chart (`xnli_accuracy.png` / `tagging_f1.png`),
  the fine-tuned `model/`, and the printed table (`metrics.csv` is written by the logger).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, RandomSampler

from xlmtrain.data.synthetic import LANGUAGES as SYNTHETIC_LANGUAGES
from xlmtrain.data.tokenizer import XLMTokenizer
from xlmtrain.interop.pretrained import load_model_and_tokenizer
from xlmtrain.jobs.finetune_config import KINDS, PretrainedModel, TaskSettings
from xlmtrain.objectives.pretrain import OptimizerFactory, SchedulerFactory
from xlmtrain.tasks.encoding import EncodedSet, collate, encode_pairs, encode_tagged
from xlmtrain.tasks.finetune import FinetuneModule
from xlmtrain.tasks.readers import NLI_LABELS, Split, find_nli_data, find_tagging_data
from xlmtrain.tasks.results import markdown_table, plot_results, write_csv
from xlmtrain.tasks.synthetic_nli import synthetic_nli_data
from xlmtrain.training.checkpoint_io import AtomicCheckpointIO
from xlmtrain.training.precision import enable_tf32_on_cuda
from xlmtrain.training.run_data import read_run_data

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything one fine-tuning run needs; the `_target_` parts arrive built, as factories or objects."""

    run_dir: Path
    seed: int
    task: TaskSettings
    pretrained: PretrainedModel
    optimizer: OptimizerFactory
    """The encoder's learning rate is this factory's lr (`encoder_lr`)."""
    encoder_lr: float
    head_lr: float
    trainer: Any
    """`trainer(logger=..., callbacks=..., plugins=...)` -> `pl.Trainer`."""
    scheduler: SchedulerFactory | None = None
    loggers: list[Any] = field(default_factory=list)
    export: bool = True
    """Export the fine-tuned model (transformers XLM format, with tokenizer files) to <run_dir>/model/."""
    compile: bool = False
    """torch.compile the model's forward in place (state-dict keys unchanged), as pretraining's `compile`."""


DEFAULT_SHARED_NAMES = 40
"""conf/data/synthetic.yaml's `shared_names`: what a pretraining run used when its data.json is absent."""


@dataclass
class _Setup:
    module: FinetuneModule
    tokenizer: XLMTokenizer
    train_langs: list[str]
    train_loader: DataLoader
    valid_loaders: list[DataLoader]
    test_loaders: list[DataLoader]


# ---------------------------------------------------------------- the job


def finetune(settings: FinetuneSettings) -> dict[str, Any]:
    """Run one fine-tuning job; returns the summary (results by split and language)."""
    pl.seed_everything(settings.seed, workers=True)
    enable_tf32_on_cuda()
    job = setup(settings)
    trainer, best = _trainer(settings)
    fit(job, trainer, best)
    return report(settings, job, trainer, best)


def setup(settings: FinetuneSettings) -> _Setup:
    """Model with a fresh head, tokenizer, encoded task data, loaders and module."""
    task = settings.task
    head, metric, _ = KINDS[task.kind]
    # Tags (hence the head size) come from the data; the synthetic NLI data needs the model's languages.
    tags: list[str] = []
    if task.kind == "token_classification":
        data, train_langs = task_data(settings, [])
        tags = sorted({t for by_lang in data.values() for sents in by_lang.values() for s in sents for t in s.tags})
        overrides: dict[str, Any] = {"num_labels": len(tags), "id2label": dict(enumerate(tags))}
    else:
        labels = dict(enumerate(NLI_LABELS))  # XLM's order: contradiction 0, neutral 1, entailment 2
        overrides = {"num_labels": 3, "id2label": labels, "summary_first_dropout": task.head_dropout}
    pretrained = settings.pretrained
    model, tokenizer = load_model_and_tokenizer(
        Path(pretrained.path).expanduser(),
        head,
        codes=pretrained.codes,
        lowercase=pretrained.lowercase,
        codes_option="pretrained.codes=FILE",
        **overrides,
    )
    lang2id = model.config.lang2id or tokenizer.lang2id
    if task.kind == "pair_classification":
        data, train_langs = task_data(settings, list(lang2id))
    data, lang2id = usable_languages(data, train_langs, lang2id, model.config.has_lang_embeddings, task.strict_langs)
    limit = model.config.max_position_embeddings
    if 2 * task.max_len - 1 > limit:
        raise ValueError(
            f"task.max_len={task.max_len}: pairs could reach {2 * task.max_len - 1} tokens, over the model's max_position_embeddings={limit}"
        )
    encoded = encode_all(data, task, tokenizer, lang2id, {t: i for i, t in enumerate(tags)})

    pad = tokenizer.dictionary.pad_index
    train_rows = [row for s in encoded["train"].values() for row in s.rows]
    n_samples = len(train_rows) if task.epoch_size == -1 else task.epoch_size
    sampler = RandomSampler(train_rows, num_samples=n_samples, generator=torch.Generator().manual_seed(settings.seed))
    train_loader = DataLoader(train_rows, batch_size=task.batch_size, sampler=sampler, num_workers=task.num_workers,
                              collate_fn=lambda r: collate(r, pad))  # fmt: skip
    eval_langs = {split: list(encoded[split]) for split in ("valid", "test")}
    if task.select_on != "avg" and task.select_on not in eval_langs["valid"]:
        raise ValueError(
            f"task.select_on={task.select_on}: not avg nor one of the valid languages {eval_langs['valid']}"
        )
    module = FinetuneModule(
        model,
        eval_langs=eval_langs,
        metric=metric,
        optimizer=settings.optimizer,
        scheduler=settings.scheduler,
        encoder_lr=settings.encoder_lr,
        head_lr=settings.head_lr,
        finetune_layers=task.finetune_layers,
        id2tag=tags,
    )
    if settings.compile:
        module.model.compile()  # in place: the best checkpoint and the export keep the eager model's keys
    return _Setup(
        module=module,
        tokenizer=tokenizer,
        train_langs=train_langs,
        train_loader=train_loader,
        valid_loaders=_loaders(encoded["valid"], task.eval_batch_size, pad, task.num_workers),
        test_loaders=_loaders(encoded["test"], task.eval_batch_size, pad, task.num_workers),
    )


def _trainer(settings: FinetuneSettings) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The trainer, with a checkpoint callback keeping the best epoch by `task.select_on`."""
    ckpt_dir = settings.run_dir / "checkpoints"
    for stale in [*ckpt_dir.glob("best-*.ckpt"), settings.run_dir / "metrics.csv"]:
        stale.unlink(missing_ok=True)  # a fine-tuning run starts afresh: an older best would be restored otherwise
    metric = KINDS[settings.task.kind][1]
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch}", monitor=f"valid_{settings.task.select_on}_{metric}",
                           mode="max", save_top_k=1, auto_insert_metric_name=False)  # fmt: skip
    trainer = settings.trainer(logger=list(settings.loggers), callbacks=[best], plugins=[AtomicCheckpointIO()])
    return trainer, best


def fit(job: _Setup, trainer: pl.Trainer, best: ModelCheckpoint) -> None:
    """Fine-tune, then re-evaluate valid and test with the best checkpoint; a run that stopped before its first
    scheduled validation (e.g. `trainer.max_steps` inside the first epoch) is evaluated with its final weights."""
    trainer.fit(job.module, train_dataloaders=job.train_loader, val_dataloaders=job.valid_loaders)
    ckpt_path = best.best_model_path or None
    if ckpt_path is None:
        log.warning("no validation ran during training (stopped at step %d): evaluating the final weights",
                    trainer.global_step)  # fmt: skip
    trainer.validate(job.module, job.valid_loaders, ckpt_path=ckpt_path, verbose=False)
    if job.test_loaders:
        trainer.test(job.module, job.test_loaders, ckpt_path=ckpt_path, verbose=False)


def report(settings: FinetuneSettings, job: _Setup, trainer: pl.Trainer, best: ModelCheckpoint) -> dict[str, Any]:
    """Results table, CSV, chart and fine-tuned model (rank 0); the summary."""
    from xlmtrain.interop.load import save_model

    run_dir, kind, select_on = settings.run_dir, settings.task.kind, settings.task.select_on
    _, metric, plot_name = KINDS[kind]
    module, train_langs = job.module, job.train_langs
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "best_checkpoint": best.best_model_path,
        "results": module.results,
    }
    if not trainer.is_global_zero:
        return summary
    table = markdown_table(module.results, metric, train_langs)
    write_csv(module.results, run_dir / "results.csv", metric)
    (run_dir / "results.md").write_text(table + "\n")
    plot_results(module.results, run_dir / plot_name, metric, train_langs, 100 / 3 if metric == "accuracy" else None)
    outputs = [run_dir / "results.csv", run_dir / "results.md", run_dir / plot_name]
    if settings.export:
        save_model(module.model, run_dir / "model", format="hf")
        job.tokenizer.save_pretrained(run_dir / "model")
        summary["model"] = str(run_dir / "model")
        outputs.append(run_dir / "model")
    print(f"\n{kind} results ({metric} %, best checkpoint by valid_{select_on}; * = fine-tuning language)")
    print(table)
    final = module.results.get("test") or module.results["valid"]
    zero_shot = {lang: v for lang, (v, _) in final.items() if lang not in train_langs}
    if zero_shot:
        summary["zero_shot_avg"] = sum(zero_shot.values()) / len(zero_shot)
        chance = " (chance 33.33)" if metric == "accuracy" else ""
        print(
            f"zero-shot {metric} on {', '.join(zero_shot)} (never seen in fine-tuning): {summary['zero_shot_avg']:.2f}{chance}"
        )
    print(f"outputs: {', '.join(map(str, outputs))}")
    return summary


# ---------------------------------------------------------------- setup steps


def pretraining_shared_names(run_dir: Path) -> int:
    """`data.synthetic.shared_names` the pretraining run in `run_dir` recorded (its data.json), so that the
    synthetic NLI task uses the names the model was pretrained with; `DEFAULT_SHARED_NAMES` if the run
    recorded none (a model dir, or a run older than data.json)."""
    names = read_run_data(run_dir).get("synthetic", {}).get("shared_names")
    return DEFAULT_SHARED_NAMES if names is None else int(names)


def task_data(settings: FinetuneSettings, model_langs: list[str]) -> tuple[Split, list[str]]:
    """(examples by split and language, training languages) from `data_dir` or the synthetic NLI task."""
    task = settings.task
    if task.data_dir is None:
        if task.kind != "pair_classification":
            raise ValueError("task.data_dir is required for token_classification (CoNLL {split}.{lang} files)")
        train_langs = task.train_langs or ["io"]
        eval_langs = task.eval_langs or [lang for lang in SYNTHETIC_LANGUAGES if lang in model_langs]
        if not set(train_langs) <= set(eval_langs) or not eval_langs:
            raise ValueError(
                f"pretrained.path={settings.pretrained.path} knows {model_langs}: the synthetic NLI task needs a model "
                f"pretrained on the synthetic languages {train_langs} (python -m xlmtrain +recipe=tlm), or set task.data_dir"
            )
        syn = task.synthetic
        if syn is None:
            raise ValueError("task.synthetic is null: set it, or task.data_dir")
        names = syn.shared_names
        if names is None:
            names = pretraining_shared_names(Path(settings.pretrained.path).expanduser())
        data = synthetic_nli_data(train_langs, eval_langs, n_train=syn.n_train, n_valid=syn.n_valid, n_test=syn.n_test,
                                  seed=syn.seed, shared_names=names)  # fmt: skip
        return data, train_langs
    train_langs = task.train_langs or ["en"]
    finder = find_nli_data if task.kind == "pair_classification" else find_tagging_data
    data = finder(Path(task.data_dir).expanduser(), train_langs)
    if task.eval_langs is not None:
        absent = [lang for lang in task.eval_langs if lang not in data["valid"]]
        if absent:
            raise ValueError(f"task.eval_langs: no validation data for {absent} in {task.data_dir}")
        data = {
            split: {k: v for k, v in by_lang.items() if split == "train" or k in task.eval_langs}
            for split, by_lang in data.items()
        }
    return data, train_langs


def usable_languages(
    data: Split, train_langs: list[str], lang2id: dict[str, int], has_lang_embeddings: bool, strict: bool
) -> tuple[Split, dict[str, int]]:
    """The task data the model can read, and the language ids to encode it with.

    A model without language embeddings never reads language ids: every language is kept and encoded with id 0
    (an empty map). A model with them: a training language it lacks raises ValueError (one line); evaluation
    languages it lacks raise with `strict`, else are dropped with one warning listing them.
    """
    if not has_lang_embeddings:
        return data, {}
    known = sorted(lang2id)
    missing_train = [lang for lang in train_langs if lang not in lang2id]
    if missing_train:
        raise ValueError(
            f"task.train_langs: {missing_train} not among the model's languages {known}: a model with language "
            f"embeddings cannot be fine-tuned on a language it has no embedding for"
        )
    missing = sorted({lang for split in ("valid", "test") for lang in data.get(split, {}) if lang not in lang2id})
    if missing and strict:
        raise ValueError(
            f"task.strict_langs: the data has {missing}, languages the model has no embedding for ({known})"
        )
    if missing:
        log.warning("skipping evaluation languages the model has no language embedding for: %s (model: %s; "
                    "task.strict_langs=true refuses them)", ", ".join(missing), ", ".join(known))  # fmt: skip
    kept = {split: {lang: ex for lang, ex in by_lang.items() if lang in lang2id} for split, by_lang in data.items()}
    return kept, lang2id


def encode_all(
    data: Split, settings: TaskSettings, tokenizer: XLMTokenizer, lang2id: dict[str, int], tag2id: dict[str, int]
) -> dict[str, dict[str, EncodedSet]]:
    """Encode every (split, language), logging how many examples `max_len` clipped."""
    out: dict[str, dict[str, EncodedSet]] = {}
    for split, by_lang in data.items():
        out[split] = {}
        for lang, examples in by_lang.items():
            source = f"{split}/{lang}"
            if settings.kind == "pair_classification":
                encoded = encode_pairs(examples, tokenizer, lang2id, settings.max_len, source)
            else:
                encoded = encode_tagged(examples, tokenizer, lang2id, tag2id, settings.max_len, source)
            if encoded.n_truncated:
                log.warning(
                    "%s: %d of %d examples clipped to task.max_len=%d",
                    source,
                    encoded.n_truncated,
                    len(examples),
                    settings.max_len,
                )
            out[split][lang] = encoded
    return out


def _loaders(sets: dict[str, EncodedSet], batch_size: int, pad_index: int, workers: int) -> list[DataLoader]:
    return [
        DataLoader(
            s.rows,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=lambda r: collate(r, pad_index),
        )
        for s in sets.values()
    ]
