"""Shared fixtures: Hydra's global state is cleared around every test; a tiny synthetic corpus, preprocessed once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

# conf/xlmtrain.yaml's default `run_name` uses the CLI's `${xlmtrain.run_name:...}` resolver, registered when the
# CLI is imported (through its `python -m` shim): tests that compose the config with Hydra's compose API need it,
# and the importing also stores the config nodes the group YAML starts from (cli/defaults.py).
import xlmtrain.__main__  # noqa: F401, E402

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"


# Fixtures that install or start system services (apt as root): tests using them must be marked slow, so the
# default suite (`make test` = `-m "not slow"`) never tries to install anything.
SYSTEM_FIXTURES = {"local_slurm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        i.nodeid
        for i in items
        if SYSTEM_FIXTURES & set(getattr(i, "fixturenames", ())) and not i.get_closest_marker("slow")
    ]
    if unmarked:
        raise pytest.UsageError(f"tests needing root/apt must be marked slow: {unmarked}")


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
    return ensure_preprocessed(
        raw, root / "cache", bpe_merges=300, valid_lines=100, test_lines=100, workers=1, progress=False
    )


@pytest.fixture(scope="session")
def default_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `paths.cache_dir` for the session's default-recipe runs: the synthetic corpus is generated and
    preprocessed once."""
    return tmp_path_factory.mktemp("xlmtrain_cache")


def _default_run(recipe: str, cache_dir: Path, run_dir: Path) -> Path:
    """`python -m xlmtrain +recipe=<recipe>` with its defaults (seed 0, no data.dir) into `run_dir`, with the
    data record `run_dir/data.json` (its resolved data dir and data settings)."""
    from hydra import compose, initialize_config_dir

    from xlmtrain.__main__ import run as run_job

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "xlmtrain",
            overrides=[
                f"+recipe={recipe}",
                f"paths.cache_dir={cache_dir}",
                f"run_dir={run_dir}",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
            ],
        )
    GlobalHydra.instance().clear()
    run_job(cfg)
    return run_dir


@pytest.fixture(scope="session")
def tlm_default_run(default_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of the default `+recipe=tlm` (600 steps, ~25 s CPU); for slow tests only."""
    return _default_run("tlm", default_cache_dir, tmp_path_factory.mktemp("runs") / "tlm")


@pytest.fixture(scope="session")
def mlm_default_run(default_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of the default `+recipe=mlm` (same model, steps, lr and tokens per step as `+recipe=tlm`)."""
    return _default_run("mlm", default_cache_dir, tmp_path_factory.mktemp("runs") / "mlm")


def indexed_corpus(path: Path, sentences: list[list[int]]) -> IndexedCorpus:  # noqa: F821 (imported inside)
    """A memory-mapped corpus (uint16) at `path` holding `sentences`, for the iterator tests."""
    from xlmtrain.data.indexed import IndexedCorpus, IndexedCorpusWriter

    with IndexedCorpusWriter(path, "uint16") as writer:
        for s in sentences:
            writer.add(s)
    return IndexedCorpus(path)
