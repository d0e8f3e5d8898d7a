"""The Hydra config tree: every file composes, recipes and READMEs agree, typos fail with Hydra's message."""

from __future__ import annotations

import re

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from tests.conftest import CONF_DIR, REPO
from xlmtrain.config_dir import conf_dir
from xlmtrain.objectives.streams import StreamSpec, expand_langs


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("xlmtrain", overrides=overrides)


RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
# recipe and launcher are appended (`+recipe=`, `+launcher=`), not overridden; launcher: test_slurm_templates.py.
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF_DIR.iterdir()
          if g.is_dir() and g.name not in ("recipe", "launcher")}  # fmt: skip


def test_conf_dir_is_found() -> None:
    assert conf_dir() == CONF_DIR


def test_shipped_recipes() -> None:
    assert {"clm", "mlm", "tlm", "mlm_tlm", "tlm_align", "mlm_tlm_xlco"} <= set(RECIPES)


# Fine-tuning recipes (`job: finetune`, possibly through another recipe) have no pretraining objective;
# tests/test_tasks.py checks them.
PRETRAIN_RECIPES = [r for r in RECIPES if _compose([f"+recipe={r}"]).job == "pretrain"]


@pytest.mark.parametrize("recipe", PRETRAIN_RECIPES)
def test_every_recipe_composes_and_builds(recipe: str) -> None:
    cfg = _compose([f"+recipe={recipe}"])
    OmegaConf.resolve(cfg)
    assert cfg.objective.name == recipe and cfg.run_dir == f"runs/{recipe}"
    for stream in cfg.objective.streams:
        langs = OmegaConf.to_container(stream.langs) if OmegaConf.is_list(stream.langs) else stream.langs
        for lang in expand_langs(langs, ["en", "fr"], ["en-fr"]):
            StreamSpec(**{**stream, "langs": lang})
    optimizer = hydra.utils.instantiate(cfg.optim.optimizer)
    assert optimizer.func.__name__ == "AdamW"
    for cb in cfg.callbacks.values():
        hydra.utils.instantiate(cb)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts if g != "hydra"])
def test_every_group_option_composes(group: str, option: str) -> None:
    """Selecting an option puts every value its file sets into the composed config (an option extending
    another, e.g. model=base on tiny, overrides its parent's values), and the result resolves."""
    cfg = _compose([f"{group}={option}"])
    own = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    if isinstance(own, DictConfig):
        own.pop("defaults", None)
    composed = OmegaConf.to_container(cfg[group], resolve=False)
    expected = OmegaConf.to_container(own, resolve=False)
    if isinstance(expected, dict):
        flat_composed, flat_expected = _leaves(composed), _leaves(expected)
        assert flat_expected and flat_expected.items() <= flat_composed.items(), {
            k: (v, flat_composed.get(k)) for k, v in flat_expected.items() if flat_composed.get(k) != v
        }
    else:
        assert composed == expected
    OmegaConf.resolve(cfg)


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: repr(node)}


def test_every_yaml_starts_with_its_command() -> None:
    for path in CONF_DIR.rglob("*.yaml"):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
        assert any("python -m xlmtrain" in line for line in header), f"{path}: no command comment at the top"


def test_override_typo_fails_with_hydra_message() -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override 'trainer.max_step'"):
        _compose(["trainer.max_step=10"])
    with pytest.raises(ConfigCompositionException, match="Could not find 'recipe/tlmm'"):
        _compose(["+recipe=tlmm"])


def test_lightning_names_and_run_dir() -> None:
    cfg = _compose(["+recipe=mlm_tlm", "run_dir=/scratch/r1", "trainer=ddp"])
    OmegaConf.resolve(cfg)
    for key in ("max_steps", "log_every_n_steps", "devices", "num_nodes", "strategy", "precision",
                "gradient_clip_val", "accumulate_grad_batches"):  # fmt: skip
        assert key in cfg.trainer
    assert cfg.trainer.strategy == "ddp"
    assert cfg.callbacks.last.dirpath == "/scratch/r1/checkpoints"
    assert cfg.callbacks.last.every_n_train_steps == cfg.checkpoint.every_n_train_steps
    assert "${now:" not in (CONF_DIR / "hydra" / "default.yaml").read_text()


def test_gpu_trainers_default_to_bf16_mixed_and_cpu_stays_fp32() -> None:
    for group, accelerator, strategy in (("gpu", "gpu", "auto"), ("ddp", "gpu", "ddp")):
        trainer = _compose([f"trainer={group}"]).trainer
        assert (trainer.accelerator, trainer.precision, trainer.strategy) == (accelerator, "bf16-mixed", strategy)
    assert _compose([]).trainer.precision == "32-true"


def test_readme_recipes_exist() -> None:
    readmes = list((REPO / "recipes").rglob("README.md")) + [p for p in (REPO / "README.md",) if p.is_file()]
    quoted = {m for p in readmes for m in re.findall(r"\+recipe=([A-Za-z0-9_]+)", p.read_text())}
    assert quoted, "the recipe READMEs quote +recipe=NAME commands"
    assert quoted <= set(RECIPES), f"READMEs quote unknown recipes: {quoted - set(RECIPES)}"


def test_preprocess_knobs_are_the_dataclass_defaults() -> None:
    """conf/preprocess.yaml restates no knob: the composed knobs are `PreprocessSettings`' defaults (stored from the
    dataclass by the CLI module), each settable on the command line without `+`."""
    import dataclasses

    import xlmtrain.preprocess  # noqa: F401  (the CLI stores the `preprocess_defaults` node)
    from xlmtrain.data.pipeline import PreprocessSettings

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("preprocess", overrides=["input=a", "output=b", "min_count=3"])
    knobs = {
        k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("input", "output", "force", "step", "shard")
    }
    assert knobs == {**dataclasses.asdict(PreprocessSettings()), "min_count": 3}


@pytest.mark.parametrize(
    ("path", "block", "cls"),
    [
        ("data/synthetic.yaml", "preprocess", "xlmtrain.data.pipeline:PreprocessSettings"),
        ("data/synthetic.yaml", "batching", "xlmtrain.objectives.data:BatchSettings"),
        ("objective/mlm.yaml", "masking", "xlmtrain.objectives.data:MaskingSettings"),
        ("objective/mlm.yaml", "alignment", "xlmtrain.objectives.alignment:AlignmentSettings"),
    ],
)
def test_group_yaml_restates_no_dataclass_default(path: str, block: str, cls: str) -> None:
    """The block starts from the dataclass's defaults node and sets only values that differ from them; composed,
    it holds every field (so each is settable without `+`)."""
    import dataclasses
    import importlib

    import yaml

    module, name = cls.split(":")
    fields = dataclasses.fields(getattr(importlib.import_module(module), name))
    defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in fields}
    raw = yaml.safe_load((CONF_DIR / path).read_text())
    restated = {k: v for k, v in (raw.get(block) or {}).items() if k in defaults and v == defaults[k]}
    assert not restated, f"{path}: {block} restates dataclass defaults {restated}"
    composed = OmegaConf.to_container(_compose(["+recipe=mlm_tlm_xlco"]))
    group = composed["data" if path.startswith("data/") else "objective"][block]
    assert set(group) == set(defaults)
