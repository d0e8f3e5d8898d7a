"""`resolve_data`: the synthetic corpus is generated once into the cache, also when two runs race for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from xlmtrain.cli import train as train_cli


def _data_cfg() -> OmegaConf:
    return OmegaConf.create(
        {"dir": None, "preprocess": {}, "synthetic": {"langs": ["io", "vo"], "n_mono": 5, "n_para": 5, "seed": 0}}
    )


def test_a_run_that_loses_the_generation_race_uses_the_winners_corpus(tmp_path: Path, monkeypatch) -> None:
    generated: list[Path] = []

    def write_corpus_while_another_run_finishes_first(out: Path, **kwargs) -> None:
        (out / "io.txt").write_text("ours\n")
        # The temp dir is `.<key>-<random>` beside the final `<key>` dir.
        winner = out.parent / out.name.split("-")[0].lstrip(".")
        winner.mkdir()
        (winner / "io.txt").write_text("theirs\n")
        generated.append(winner)

    monkeypatch.setattr(train_cli, "write_corpus", write_corpus_while_another_run_finishes_first)
    monkeypatch.setattr(train_cli, "ensure_preprocessed", lambda raw, cache, **s: raw)
    raw = train_cli.resolve_data(_data_cfg(), tmp_path)
    assert raw == generated[0] and (raw / "io.txt").read_text() == "theirs\n"
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [raw.name], "the loser's temp dir is removed"


def test_an_unrelated_rename_failure_is_not_hidden(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train_cli, "write_corpus", lambda out, **kwargs: None)

    def failing_replace(src, dst) -> None:
        raise PermissionError(f"cannot rename {src}")

    monkeypatch.setattr(train_cli.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        train_cli.resolve_data(_data_cfg(), tmp_path)
