"""Validation as XLM's evaluator: one-column stream layout, XLM's size limits, long pairs, averages of
per-language perplexities. Corpora are written here with hand-chosen tokens."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR, indexed_corpus
from xlmtrain.__main__ import run as run_job
from xlmtrain.data.corpus_batches import ParallelBatches
from xlmtrain.data.dictionary import Dictionary
from xlmtrain.data.indexed import IndexedCorpus
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.transformer import XLMTransformer
from xlmtrain.objectives.batches import concat_pair
from xlmtrain.objectives.data import BatchSettings, MaskingSettings, ValidBatches, xlm_eval_limits
from xlmtrain.objectives.streams import StreamSpec
from xlmtrain.training.report import read_metrics

E = 1


class _Data:
    """The two methods ValidBatches reads, over corpora written here."""

    def __init__(self, langs: list[str], mono: dict[str, IndexedCorpus], para: dict[str, tuple] | None = None):
        self.lang2id = {lang: i for i, lang in enumerate(sorted(langs))}
        self._mono, self._para = mono, para or {}

    def mono(self, split: str, lang: str) -> IndexedCorpus:
        return self._mono[lang]

    def parallel(self, split: str, lang1: str, lang2: str) -> tuple[IndexedCorpus, IndexedCorpus]:
        return self._para[f"{lang1}-{lang2}"]


def _unmasked_rows(batches: ValidBatches) -> list[list[int]]:
    rows = []
    for item in batches:
        ids = item.batch.input_ids.clone()
        ids[item.batch.pred_mask] = item.batch.labels
        rows += ids.tolist()
    return rows


def _valid(data: _Data, lang: str, *, bptt: int, rows: int, split: str = "valid", **batching) -> ValidBatches:
    return ValidBatches([StreamSpec("mlm", lang)], data, vocab_size=64, split=split, mask_index=Dictionary.mask_index,
                        pad_index=Dictionary.pad_index,
                        batching=BatchSettings(bptt=bptt, valid_batch_size=rows, **batching), masking=MaskingSettings())  # fmt: skip


def test_stream_validation_is_one_column_as_xlm(tmp_path: Path) -> None:
    # Stream: 20 21 22 23 </s> 24 .. 28 </s> 29 30 31 </s> = 15 tokens; one column of 2 chunks of bptt 8 holds 16:
    # 1 leading </s> of padding (XLM's batch size 1), then a row of </s> starts the column, the last token drops.
    corpus = indexed_corpus(tmp_path / "aa", [[20, 21, 22, 23], [24, 25, 26, 27, 28], [29, 30, 31]])
    rows = _unmasked_rows(_valid(_Data(["aa"], {"aa": corpus}), "aa", bptt=8, rows=3))
    assert rows == [[E, E, 20, 21, 22, 23, E, 24], [25, 26, 27, 28, E, 29, 30, 31]]
    # 16 columns (the old layout) would have padded the column start with 16 * 8 - 15 = 113 scored </s>.


def test_xlm_limits_subsample_streams_and_cap_pairs(tmp_path: Path) -> None:
    # XLM's Evaluator.get_iterator: <= 5 languages whole; > 5: every 5th chunk (test 10th), 1500 (test 300) pairs;
    # > 30: non-XNLI-15 languages and test every 10th, 600 pairs.
    assert xlm_eval_limits(2, "valid", "en") == (1, None) and xlm_eval_limits(5, "test", "en") == (1, None)
    assert xlm_eval_limits(15, "valid", "en") == (5, 1500) and xlm_eval_limits(15, "test", "en") == (10, 300)
    assert xlm_eval_limits(100, "valid", "sw") == (5, 1500) and xlm_eval_limits(100, "valid", "eu") == (10, 600)
    assert xlm_eval_limits(100, "test", "en") == (10, 600)
    # 12 chunks of bptt 4 (48 tokens = 12 sentences of 3 words + </s>) in a 6-language run: chunks 0, 5, 10.
    sentences = [[20 + i, 30 + i, 40 + i] for i in range(12)]
    corpus = indexed_corpus(tmp_path / "aa", sentences)
    data = _Data(["aa", "bb", "cc", "dd", "ee", "ff"], {"aa": corpus})
    column = [E] + [t for s in sentences for t in (*s, E)]  # the column: no padding (48 = 12 * 4)
    chunks = [column[4 * i : 4 * i + 4] for i in range(12)]
    assert _unmasked_rows(_valid(data, "aa", bptt=4, rows=2)) == [chunks[0], chunks[5], chunks[10]]
    assert _unmasked_rows(_valid(data, "aa", bptt=4, rows=2, split="test")) == [chunks[0], chunks[10]]
    assert len(_unmasked_rows(_valid(data, "aa", bptt=4, rows=2, valid_limits="none"))) == 12
    # The pair cap keeps the first kept pairs (an empty side is never kept).
    side1 = indexed_corpus(tmp_path / "p1", [[20], [], [21], [22]])
    side2 = indexed_corpus(tmp_path / "p2", [[30], [31], [32], [33]])
    pairs = ParallelBatches(
        side1, side2, batch_size=8, max_len=None, group_by_size=False, shuffle=False, max_sentences=2
    )
    (x1, _), (x2, _) = pairs.batch_at(0)
    assert x1[:, 1].tolist() == [20, 21] and x2[:, 1].tolist() == [30, 32]


def test_long_validation_pairs_use_restarted_positions() -> None:
    # Each side up to the position table (8 here), as XLM: 6 + 6 tokens run; one side of 9 is refused.
    config = XLMConfig(vocab_size=40, emb_dim=16, n_layers=1, n_heads=2, max_position_embeddings=8)
    model = XLMTransformer(config).eval()
    x1 = torch.tensor([[E, 20, 21, 22, 23, E], [E, 20, E, 2, 2, 2]])
    x2 = torch.tensor([[E, 30, 31, 32, 33, E], [E, 30, E, 2, 2, 2]])
    pair = concat_pair(x1, torch.tensor([6, 3]), x2, torch.tensor([6, 3]), lang1_id=0, lang2_id=0, pad_index=2)
    assert pair.ids.shape == (2, 12) and int(pair.position_ids.max()) == 5
    out = model(pair.ids, position_ids=pair.position_ids, lengths=pair.lengths)
    assert out.shape == (2, 12, 16)
    with pytest.raises(ValueError, match="sequence length 12 exceeds max_position_embeddings=8"):
        model(pair.ids, lengths=pair.lengths)
    with pytest.raises(ValueError, match="position id 8 exceeds max_position_embeddings=8"):
        model(pair.ids, position_ids=torch.arange(12)[None, :].expand(2, 12) % 9, lengths=pair.lengths)


def test_valid_mlm_ppl_is_the_mean_of_language_perplexities(synthetic_prep: Path, tmp_path: Path) -> None:
    # XLM: en at ppl 10 on 100k tokens and sw at 40 on 10k average to 25, not exp(pooled CE) = 11.3.
    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=[
            "+recipe=mlm", f"data.dir={synthetic_prep}", f"run_dir={run}", "model.emb_dim=32", "model.n_heads=2",
            "data.batching.batch_size=8", "data.batching.bptt=32", "data.batching.valid_max_batches=3",
            "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "export=false"])  # fmt: skip
    run_job(cfg)
    (row,) = [r for r in read_metrics(run / "metrics.csv") if "valid_mlm_ppl" in r]
    io, vo = row["valid_io_mlm_ppl"], row["valid_vo_mlm_ppl"]
    assert io != pytest.approx(vo)
    assert row["valid_mlm_ppl"] == pytest.approx((io + vo) / 2, rel=1e-5)
    assert row["valid_mlm_acc"] == pytest.approx((row["valid_io_mlm_acc"] + row["valid_vo_mlm_acc"]) / 2, rel=1e-5)
    # The token-weighted value (exp of the pooled CE, a token-weighted geometric mean) lies between the two.
    assert min(io, vo) < row["valid_mlm_ppl_tokens"] < max(io, vo)
    assert row["valid_mlm_ppl_tokens"] != pytest.approx(row["valid_mlm_ppl"], rel=1e-5)
    assert math.isfinite(row["valid_mlm_acc_tokens"])
