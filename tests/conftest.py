"""Shared fixtures: Hydra's global state is cleared around every test; a tiny synthetic corpus, preprocessed once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"


@pytest.fixture(autouse=True)
def _clean_hydra() -> Iterator[None]:
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def synthetic_prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preprocessed two-language synthetic corpus (io, vo; 1500 sentences each, 1500 pairs)."""
    from xlmtrain.data.preprocessed import ensure_preprocessed
    from xlmtrain.data.synthetic import write_corpus

    root = tmp_path_factory.mktemp("synthetic")
    raw = write_corpus(root / "raw", langs=("io", "vo"), n_mono=1500, n_para=1500, seed=0)
    return ensure_preprocessed(raw, root / "cache", bpe_merges=300, valid_lines=100, test_lines=100, workers=1, progress=False)
