"""`resolve_data`: the synthetic corpus is generated once into the cache, also when two runs race for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlmtrain.data.pipeline import PreprocessSettings
from xlmtrain.jobs import pretrain as pretrain_job
from xlmtrain.jobs.pretrain import DataSettings, SyntheticCorpus
from xlmtrain.objectives.data import BatchSettings


def _data_cfg() -> DataSettings:
    corpus = SyntheticCorpus(langs=("io", "vo"), n_mono=5, n_para=5, seed=0, shared_names=0)
    return DataSettings(dir=None, synthetic=corpus, preprocess=PreprocessSettings(), batching=BatchSettings())


def test_a_run_that_loses_the_generation_race_uses_the_winners_corpus(tmp_path: Path, monkeypatch) -> None:
    generated: list[Path] = []

    def write_corpus_while_another_run_finishes_first(out: Path, **kwargs) -> None:
        (out / "io.txt").write_text("ours\n")
        # The temp dir is `.<key>-<random>` beside the final `<key>` dir.
        winner = out.parent / out.name.split("-")[0].lstrip(".")
        winner.mkdir()
        (winner / "io.txt").write_text("theirs\n")
        generated.append(winner)

    monkeypatch.setattr(pretrain_job, "write_corpus", write_corpus_while_another_run_finishes_first)
    monkeypatch.setattr(pretrain_job, "ensure_preprocessed", lambda raw, cache, **s: raw)
    raw = pretrain_job.resolve_data(_data_cfg(), tmp_path)
    assert raw == generated[0] and (raw / "io.txt").read_text() == "theirs\n"
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [raw.name], "the loser's temp dir is removed"


def test_an_unrelated_rename_failure_is_not_hidden(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pretrain_job, "write_corpus", lambda out, **kwargs: None)

    def failing_replace(src, dst) -> None:
        raise PermissionError(f"cannot rename {src}")

    monkeypatch.setattr(pretrain_job.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        pretrain_job.resolve_data(_data_cfg(), tmp_path)
