"""Typed settings: one validation of the whole composed config before any work, one-line errors naming the key,
the expected type and the value (`settings.py` and the schema in `cli/train.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR, REPO
from xlmtrain.__main__ import finetune_settings, pretrain_settings
from xlmtrain.objectives.data import BatchSettings
from xlmtrain.settings import SettingsError, check_call, typed


@dataclass(frozen=True)
class Inner:
    size: int
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    pair: tuple[float, float]
    path: Path | None
    mode: Literal["min", "max"] = "min"
    tags: tuple[str, ...] = ()


def test_typed_builds_nested_dataclasses_and_converts_values() -> None:
    built = typed(Outer, {"name": "a", "inner": {"size": 3, "scale": 2}, "pair": [1, 0.5], "path": "x/y",
                          "tags": ["p", "q"]}, "root")  # fmt: skip
    assert built == Outer("a", Inner(3, 2.0), (1.0, 0.5), Path("x/y"), "min", ("p", "q"))
    assert isinstance(built.inner.scale, float) and isinstance(built.pair, tuple)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inner": {"size": 1.5}}, "root.inner.size: expected int, got 1.5 (float)"),
        ({"inner": {"size": True}}, "root.inner.size: expected int, got True (bool)"),
        ({"inner": {"size": 1, "sise": 2}}, "root.inner.sise: unknown key (expected one of size, scale)"),
        ({"pair": [1, 2, 3]}, "root.pair: expected 2 values (tuple[float, float]), got [1, 2, 3] (list)"),
        ({"path": 3}, "root.path: expected Path | None, got 3 (int)"),
        ({"mode": "mean"}, "root.mode: expected one of 'min', 'max', got 'mean' (str)"),
        ({"name": None}, "root.name: expected str, got None (NoneType)"),
    ],
)
def test_typed_names_the_key_the_type_and_the_value(values: dict, message: str) -> None:
    good = {"name": "a", "inner": {"size": 3}, "pair": [1, 2], "path": None}
    with pytest.raises(SettingsError) as error:
        typed(Outer, {**good, **values}, "root")
    assert str(error.value) == message


def test_typed_reports_a_missing_key_and_post_init_checks() -> None:
    with pytest.raises(SettingsError, match=r"^root\.inner: missing \(expected Inner\)$"):
        typed(Outer, {"name": "a", "pair": [1, 2], "path": None}, "root")
    with pytest.raises(SettingsError, match=r"^data\.batching\.batch_size must be > 0, got 0$"):
        typed(BatchSettings, {"batch_size": 0}, "data.batching")


def test_check_call_against_a_targets_signature() -> None:
    check_call("torch.optim.AdamW", {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4}, "optim.optimizer")
    with pytest.raises(SettingsError, match=r"^optim\.optimizer\.lr: expected float \| Tensor, got 'fast' \(str\)$"):
        check_call("torch.optim.AdamW", {"lr": "fast"}, "optim.optimizer")
    with pytest.raises(SettingsError, match=r"^trainer\.max_steps: expected int, got 'abc' \(str\)$"):
        check_call("lightning.pytorch.Trainer", {"max_steps": "abc"}, "trainer")
    with pytest.raises(SettingsError, match=r"^trainer\.max_stepz: unknown key \(expected one of accelerator, "):
        check_call("lightning.pytorch.Trainer", {"max_stepz": 3}, "trainer")
    with pytest.raises(SettingsError, match=r"^logger\[0\]\._target_: cannot import 'no\.such\.Logger'$"):
        check_call("no.such.Logger", {}, "logger[0]")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("xlmtrain", overrides=list(overrides))


@pytest.mark.parametrize("recipe", ["clm", "mlm", "tlm", "mlm_tlm"])
def test_every_pretraining_recipe_passes_the_schema(recipe: str, tmp_path: Path) -> None:
    settings = pretrain_settings(_compose(f"+recipe={recipe}", f"run_dir={tmp_path}"))
    assert settings.embed_init_std is None and settings.model.emb_dim == 64 and settings.compile is False
    assert isinstance(settings.data.batching.batch_size, int) and settings.objective.streams


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batching.batch_size=1.5", "data.batching.batch_size: expected int, got 1.5 (float)"),
        ("optim.optimizer.lr=fast", "optim.optimizer.lr: expected float | Tensor, got 'fast' (str)"),
        ("trainer.max_steps=abc", "trainer.max_steps: expected int, got 'abc' (str)"),
        ("model.emb_dim=abc", "model.emb_dim: expected int, got 'abc' (str)"),
        ("+model.emb_dims=3", "model.emb_dims: unknown key (expected one of "),
        (
            "objective.streams=[{objective: mlm, langs: '*', lambda_: 1, weigth: 1}]",
            "objective.streams[0].weigth: unknown key",
        ),
        ("optim.scheduler.warmup_steps=1.5", "optim.scheduler.warmup_steps: expected int, got 1.5 (float)"),
        (
            "callbacks.last.every_n_train_steps=x",
            "callbacks.last.every_n_train_steps: expected int | None, got 'x' (str)",
        ),
        ("seed=0.5", "seed: expected int, got 0.5 (float)"),
    ],
)
def test_a_bad_setting_fails_before_any_work_naming_its_key(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as error:
        pretrain_settings(_compose("+recipe=tlm", f"run_dir={tmp_path}", override))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir()), "nothing is written before the check"


def test_finetuning_schema_and_its_mandatory_data_dir() -> None:
    settings = finetune_settings(_compose("+recipe=xnli"))
    assert settings.task.data_dir is None and settings.task.synthetic.n_train == 6000 and settings.head_lr == 5e-4
    with pytest.raises(SettingsError, match=r"^task\.data_dir: missing \(set it on the command line\)$"):
        finetune_settings(_compose("+recipe=token_classification"))
    with pytest.raises(SettingsError, match=r"^pretrained\.lowercase: expected bool, got 'yes' \(str\)$"):
        finetune_settings(_compose("+recipe=xnli", "pretrained.lowercase=yes"))


@pytest.mark.slow
def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "xlmtrain", "+recipe=tlm", "data.batching.batch_size=1.5", f"run_dir={tmp_path / 'r'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: data.batching.batch_size: expected int, got 1.5 (float)"
    # Hydra itself snapshots the config into the run dir (.hydra/) before calling us; nothing of the job's.
    written = {p.name for p in (tmp_path / "r").iterdir()} if (tmp_path / "r").exists() else set()
    assert not written & {"checkpoints", "data.json", "run.json", "metrics.csv", "model"}, written


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+recipe=tlm", "data.batching.batch_size=1.5"], "data.batching.batch_size: expected int, got 1.5 (float)"),
        (["+recipe=xnli", "pretrained.lowercase=yes"], "pretrained.lowercase: expected bool, got 'yes' (str)"),
    ],
)
def test_cli_checks_the_config_before_importing_the_training_stack(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    """What keeps a typo cheap: the schema check runs before Lightning and the job modules are imported
    (`-X importtime` lists every module the process imported, on stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "xlmtrain", *overrides, f"run_dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    imports = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[1].strip() for line in imports}
    assert done.returncode == 2, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if line not in imports] == [f"error: {message}"]
    assert "xlmtrain.settings" in imported  # the listing is real: the schema's own module is in it
    assert not {"lightning", "xlmtrain.jobs.pretrain", "xlmtrain.jobs.finetune"} & imported
