"""`callbacks=retrieval`: bitext retrieval P@1 logged during pretraining."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR
from xlmtrain.__main__ import run as run_job
from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.inference.callback import RetrievalCallback
from xlmtrain.inference.embeddings import embed_ids
from xlmtrain.inference.loading import wrap_sentence
from xlmtrain.inference.retrieval import retrieval_p_at_1
from xlmtrain.interop.load import load_model
from xlmtrain.training.report import read_metrics

TINY = [
    "model.emb_dim=32",
    "model.n_heads=2",
    "data.batching.batch_size=8",
    "data.batching.valid_max_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("xlmtrain", overrides=list(overrides))


def _p_at_1(run: Path, data: PreprocessedData, n: int, pooling: str = "first") -> tuple[float, float]:
    """P@1 io->vo, vo->io of the exported model on the first `n` valid pairs, computed outside Lightning."""
    model = load_model(run / "model")
    sides = []
    for lang, corpus in zip(("io", "vo"), data.parallel("valid", "io", "vo")):
        lines = [wrap_sentence(corpus[i].tolist(), 1, 512).ids for i in range(n)]
        sides.append(embed_ids(model, lines, lang_id=data.lang2id[lang], pooling=pooling))
    return retrieval_p_at_1(*sides)


def test_callback_config_keeps_default_callbacks() -> None:
    cfg = _cfg("callbacks=retrieval")
    assert {"last", "best", "retrieval"} <= set(cfg.callbacks)
    with pytest.raises(ValueError, match="unknown scoring 'dot'"):
        RetrievalCallback(scoring="dot")
    with pytest.raises(ValueError, match="not of the form l1-l2"):
        RetrievalCallback(pairs=["io"])


def test_callback_logs_p_at_1_of_the_trained_model(synthetic_prep: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(
        "+recipe=tlm",
        f"data.dir={synthetic_prep}",
        f"run_dir={run}",
        *TINY,
        "callbacks=retrieval",
        "callbacks.retrieval.n_sentences=30",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        # _p_at_1's embedding and scoring (the callback's default is mean pooling, centred, margin)
        "callbacks.retrieval.pooling=first",
        "callbacks.retrieval.scoring=cosine",
        "callbacks.retrieval.center=false",
    )
    run_job(cfg)
    rows = [r for r in read_metrics(run / "metrics.csv") if "valid_io-vo_retrieval_p@1" in r]
    assert [r["step"] for r in rows] == [2, 4]  # validation after steps 2 and 4
    assert all("valid_vo-io_retrieval_p@1" in r for r in rows)
    # The last logged values are those of the exported (final) model, recomputed independently.
    expected = _p_at_1(run, PreprocessedData(synthetic_prep), 30)
    assert (rows[-1]["valid_io-vo_retrieval_p@1"], rows[-1]["valid_vo-io_retrieval_p@1"]) == pytest.approx(expected)
