"""The typed blocks of the fine-tuning config: `task` (`TaskSettings`, `SyntheticNLI`) and `pretrained`
(`PretrainedModel`), and the task kinds. `FinetuneSettings` (jobs/finetune.py) gathers them with the built
`_target_` objects.

Free of Lightning and torch on purpose: `python -m xlmtrain` checks the whole config against these types before
it imports the training stack, so a bad value fails in a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KINDS = {
    # kind: (head, metric, plot file)
    "pair_classification": ("sequence_classification", "accuracy", "xnli_accuracy.png"),
    "token_classification": ("token_classification", "f1", "tagging_f1.png"),
}


@dataclass(frozen=True)
class SyntheticNLI:
    """The synthetic NLI task (when there is no data dir), over the synthetic languages the model knows."""

    n_train: int
    n_valid: int
    n_test: int
    seed: int
    shared_names: int | None
    """None: the pretraining run's `data.synthetic.shared_names` (its data.json), else jobs/finetune.py's `DEFAULT_SHARED_NAMES`."""


@dataclass(frozen=True)
class TaskSettings:
    """The `task:` config block (conf/recipe/xnli.yaml, token_classification.yaml, which hold the defaults)."""

    kind: str
    """pair_classification (XNLI-style, accuracy) or token_classification (CoNLL tags, F1)."""
    data_dir: Path | None
    """Task data folder (see `tasks/readers.py`); None: the synthetic NLI task."""
    synthetic: SyntheticNLI | None
    """The synthetic NLI task's settings (used when `data_dir` is None)."""
    train_langs: list[str] | None
    """Fine-tuning languages; None: [en] with data_dir, [io] for the synthetic task."""
    eval_langs: list[str] | None
    """Languages evaluated; None: every language of the valid data."""
    select_on: str
    """Keep the checkpoint with the best valid metric of this language, or `avg` (mean over languages)."""
    max_len: int
    """Tokens per sentence, its `</s>`s included (XLM's max_len); longer sentences are clipped and counted."""
    batch_size: int
    """Training pairs / sentences per optimizer step."""
    eval_batch_size: int
    epoch_size: int
    """Training examples per epoch (drawn at random, XLM's epoch_size); -1: one pass over the train data."""
    finetune_layers: int | None
    """Train only the top N layers (the embeddings count as layer 0); None: all; 0: the head only."""
    head_dropout: float
    """Dropout before the classifier of pair classification (XLM's glue-xnli `--dropout`, 0 there)."""
    strict_langs: bool
    """For a model with language embeddings: refuse (instead of skipping with one warning) evaluation languages
    it has no embedding for. A training language it lacks is always refused; a model without language
    embeddings takes any language."""
    num_workers: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task.kind: unknown {self.kind!r}; choose from {', '.join(KINDS)}")
        for name in ("max_len", "batch_size", "eval_batch_size"):
            if getattr(self, name) < (3 if name == "max_len" else 1):
                raise ValueError(f"task.{name}={getattr(self, name)} is too small")
        if self.epoch_size == 0 or self.epoch_size < -1:
            raise ValueError(f"task.epoch_size={self.epoch_size}: expected -1 or a positive number")


@dataclass(frozen=True)
class PretrainedModel:
    """`pretrained`: the checkpoint fine-tuning starts from."""

    path: Path
    """An xlmtrain run dir, a transformers / xlmtrain model dir, or an original XLM .pth file."""
    codes: Path | None
    """The fastBPE codes of an original .pth (directories carry their merges)."""
    lowercase: bool
    """Lowercase and strip accents (an original .pth's text pipeline)."""
