"""The fine-tuning job behind `python -m xlmtrain +recipe=xnli` and `+recipe=token_classification`.

Steps: load the pretrained model (`model.init`) with a fresh head and its tokenizer; read the task data
(`data.dir`, or the synthetic NLI task when it is null); encode every (split, language); fine-tune on
`task.train_langs`, validating every language each epoch; keep the best checkpoint by `task.select_on`;
re-evaluate valid and test with it; write `<run_dir>/results.csv`, `results.md`, the bar chart
(`xnli_accuracy.png` / `tagging_f1.png`), `metrics.csv`, the fine-tuned `model/`, and print the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, RandomSampler

from xlmtrain.data.synthetic import LANGUAGES as SYNTHETIC_LANGUAGES
from xlmtrain.data.tokenizer import XLMTokenizer
from xlmtrain.tasks.encoding import EncodedSet, collate, encode_pairs, encode_tagged
from xlmtrain.tasks.finetune import FinetuneModule
from xlmtrain.tasks.loading import load_pretrained
from xlmtrain.tasks.readers import NLI_LABELS, Split, find_nli_data, find_tagging_data
from xlmtrain.tasks.results import markdown_table, plot_results, write_csv
from xlmtrain.tasks.synthetic_nli import synthetic_nli_data

log = logging.getLogger(__name__)

KINDS = {
    # kind: (head, metric, plot file)
    "pair_classification": ("sequence_classification", "accuracy", "xnli_accuracy.png"),
    "token_classification": ("token_classification", "f1", "tagging_f1.png"),
}


@dataclass
class TaskSettings:
    """The `task:` config block (conf/task/*.yaml)."""

    kind: str
    """pair_classification (XNLI-style, accuracy) or token_classification (CoNLL tags, F1)."""
    train_langs: list[str] | None = None
    """Fine-tuning languages; None: [en] with data.dir, [io] for the synthetic task."""
    eval_langs: list[str] | None = None
    """Languages evaluated; None: every language of the valid data."""
    select_on: str = "avg"
    """Keep the checkpoint with the best valid metric of this language, or `avg` (mean over languages)."""
    max_len: int = 256
    """Tokens per sentence, its `</s>`s included (XLM's max_len); longer sentences are clipped and counted."""
    batch_size: int = 8
    """Training pairs / sentences per optimizer step."""
    eval_batch_size: int = 64
    epoch_size: int = -1
    """Training examples per epoch (drawn at random, XLM's epoch_size); -1: one pass over the train data."""
    finetune_layers: int | None = None
    """Train only the top N layers (the embeddings count as layer 0); None: all; 0: the head only."""
    head_dropout: float = 0.1
    """Dropout before the classifier of pair classification (XLM's glue-xnli `--dropout`, 0 there)."""
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task.kind: unknown {self.kind!r}; choose from {', '.join(KINDS)}")
        for name in ("max_len", "batch_size", "eval_batch_size"):
            if getattr(self, name) < (3 if name == "max_len" else 1):
                raise ValueError(f"task.{name}={getattr(self, name)} is too small")
        if self.epoch_size == 0 or self.epoch_size < -1:
            raise ValueError(f"task.epoch_size={self.epoch_size}: expected -1 or a positive number")


def task_settings(task_cfg: DictConfig) -> TaskSettings:
    """`cfg.task` -> TaskSettings; ValueError naming an unknown key."""
    values = OmegaConf.to_container(task_cfg, resolve=True)
    known = {f.name for f in fields(TaskSettings)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"task: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    return TaskSettings(**values)


DEFAULT_SHARED_NAMES = 40
"""conf/data/synthetic.yaml's `shared_names`: what a pretraining run used when its config snapshot is absent."""


def pretraining_shared_names(run_dir: Path) -> int:
    """`data.synthetic.shared_names` of the pretraining run in `run_dir` (its `.hydra/config.yaml` snapshot),
    so that the synthetic NLI task uses the names the model was pretrained with; `DEFAULT_SHARED_NAMES` if the
    snapshot is absent (a model dir, or a run not started from the command line)."""
    snapshot = run_dir / ".hydra" / "config.yaml"
    if not snapshot.is_file():
        return DEFAULT_SHARED_NAMES
    names = OmegaConf.select(OmegaConf.load(snapshot), "data.synthetic.shared_names", default=0)
    return DEFAULT_SHARED_NAMES if names is None else int(names)


def task_data(cfg: DictConfig, settings: TaskSettings, model_langs: list[str]) -> tuple[Split, list[str]]:
    """(examples by split and language, training languages) from `data.dir` or the synthetic NLI task."""
    if cfg.data.dir is None:
        if settings.kind != "pair_classification":
            raise ValueError("data.dir is required for token_classification (CoNLL {split}.{lang} files)")
        train_langs = settings.train_langs or ["io"]
        eval_langs = settings.eval_langs or [lang for lang in SYNTHETIC_LANGUAGES if lang in model_langs]
        if not set(train_langs) <= set(eval_langs) or not eval_langs:
            raise ValueError(
                f"model.init={cfg.model.init} knows {model_langs}: the synthetic NLI task needs a model pretrained on "
                f"the synthetic languages {train_langs} (python -m xlmtrain +recipe=tlm), or set data.dir"
            )
        syn = cfg.data.synthetic
        names = syn.get("shared_names")
        if names is None:
            names = pretraining_shared_names(Path(cfg.model.init).expanduser())
        data = synthetic_nli_data(train_langs, eval_langs, n_train=syn.n_train, n_valid=syn.n_valid, n_test=syn.n_test, seed=syn.seed,
                                   shared_names=names)
        return data, train_langs
    train_langs = settings.train_langs or ["en"]
    finder = find_nli_data if settings.kind == "pair_classification" else find_tagging_data
    data = finder(Path(cfg.data.dir).expanduser(), train_langs)
    if settings.eval_langs is not None:
        absent = [lang for lang in settings.eval_langs if lang not in data["valid"]]
        if absent:
            raise ValueError(f"task.eval_langs: no validation data for {absent} in {cfg.data.dir}")
        data = {split: {k: v for k, v in by_lang.items() if split == "train" or k in settings.eval_langs} for split, by_lang in data.items()}
    return data, train_langs


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
                log.warning("%s: %d of %d examples clipped to task.max_len=%d", source, encoded.n_truncated, len(examples), settings.max_len)
            out[split][lang] = encoded
    return out


def _loaders(sets: dict[str, EncodedSet], batch_size: int, pad_index: int, workers: int) -> list[DataLoader]:
    return [
        DataLoader(s.rows, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=lambda r: collate(r, pad_index))
        for s in sets.values()
    ]


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Run one fine-tuning job from a composed config; returns the summary (results by split and language)."""
    from xlmtrain.interop.load import save_model
    from xlmtrain.training.checkpoint_io import AtomicCheckpointIO

    settings = task_settings(cfg.task)
    head, metric, plot_name = KINDS[settings.kind]
    run_dir = Path(cfg.run_dir)
    pl.seed_everything(cfg.seed, workers=True)

    # Tags (hence the head size) come from the data; the synthetic NLI data needs the model's languages.
    init = str(Path(cfg.model.init).expanduser())
    tags: list[str] = []
    if settings.kind == "token_classification":
        data, train_langs = task_data(cfg, settings, [])
        tags = sorted({t for by_lang in data.values() for sents in by_lang.values() for s in sents for t in s.tags})
        overrides: dict[str, Any] = {"num_labels": len(tags), "id2label": dict(enumerate(tags))}
    else:
        labels = dict(enumerate(NLI_LABELS))  # XLM's order: contradiction 0, neutral 1, entailment 2
        overrides = {"num_labels": 3, "id2label": labels, "summary_first_dropout": settings.head_dropout}
    model, tokenizer = load_pretrained(init, head, codes=cfg.model.codes, lowercase=cfg.model.lowercase, **overrides)
    lang2id = model.config.lang2id or tokenizer.lang2id
    if settings.kind == "pair_classification":
        data, train_langs = task_data(cfg, settings, list(lang2id))
    limit = model.config.max_position_embeddings
    if 2 * settings.max_len - 1 > limit:
        raise ValueError(f"task.max_len={settings.max_len}: pairs could reach {2 * settings.max_len - 1} tokens, over the model's max_position_embeddings={limit}")
    encoded = encode_all(data, settings, tokenizer, lang2id, {t: i for i, t in enumerate(tags)})

    pad = tokenizer.dictionary.pad_index
    train_rows = [row for s in encoded["train"].values() for row in s.rows]
    n_samples = len(train_rows) if settings.epoch_size == -1 else settings.epoch_size
    sampler = RandomSampler(train_rows, num_samples=n_samples, generator=torch.Generator().manual_seed(cfg.seed))
    train_loader = DataLoader(train_rows, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.num_workers,
                              collate_fn=lambda r: collate(r, pad))  # fmt: skip
    valid_loaders = _loaders(encoded["valid"], settings.eval_batch_size, pad, settings.num_workers)
    test_loaders = _loaders(encoded["test"], settings.eval_batch_size, pad, settings.num_workers)
    eval_langs = {split: list(encoded[split]) for split in ("valid", "test")}
    if settings.select_on != "avg" and settings.select_on not in eval_langs["valid"]:
        raise ValueError(f"task.select_on={settings.select_on}: not avg nor one of the valid languages {eval_langs['valid']}")

    module = FinetuneModule(
        model,
        eval_langs=eval_langs,
        metric=metric,
        optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
        scheduler=hydra.utils.instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        encoder_lr=cfg.optim.optimizer.lr,
        head_lr=cfg.optim.head_lr,
        finetune_layers=settings.finetune_layers,
        id2tag=tags,
    )
    ckpt_dir = run_dir / "checkpoints"
    for stale in [*ckpt_dir.glob("best-*.ckpt"), run_dir / "metrics.csv"]:
        stale.unlink(missing_ok=True)  # a fine-tuning run starts afresh: an older best would be restored otherwise
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch}", monitor=f"valid_{settings.select_on}_{metric}",
                           mode="max", save_top_k=1, auto_insert_metric_name=False)  # fmt: skip
    trainer = hydra.utils.instantiate(
        cfg.trainer, logger=[hydra.utils.instantiate(c) for c in cfg.logger], callbacks=[best], plugins=[AtomicCheckpointIO()]
    )
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=valid_loaders)
    trainer.validate(module, valid_loaders, ckpt_path=best.best_model_path, verbose=False)
    if test_loaders:
        trainer.test(module, test_loaders, ckpt_path=best.best_model_path, verbose=False)

    summary: dict[str, Any] = {"run_dir": str(run_dir), "best_checkpoint": best.best_model_path, "results": module.results}
    if trainer.is_global_zero:
        table = markdown_table(module.results, metric, train_langs)
        write_csv(module.results, run_dir / "results.csv", metric)
        (run_dir / "results.md").write_text(table + "\n")
        plot_results(module.results, run_dir / plot_name, metric, train_langs, 100 / 3 if metric == "accuracy" else None)
        save_model(module.model, run_dir / "model", format="hf")
        tokenizer.save_pretrained(run_dir / "model")
        print(f"\n{settings.kind} results ({metric} %, best checkpoint by valid_{settings.select_on}; * = fine-tuning language)")
        print(table)
        final = module.results.get("test") or module.results["valid"]
        zero_shot = {lang: v for lang, (v, _) in final.items() if lang not in train_langs}
        if zero_shot:
            summary["zero_shot_avg"] = sum(zero_shot.values()) / len(zero_shot)
            chance = " (chance 33.33)" if metric == "accuracy" else ""
            print(f"zero-shot {metric} on {', '.join(zero_shot)} (never seen in fine-tuning): {summary['zero_shot_avg']:.2f}{chance}")
        print(f"results: {run_dir / 'results.csv'}, {run_dir / 'results.md'}, {run_dir / plot_name}; model: {run_dir / 'model'}")
    return summary
