"""Default run names: different experiments never share a run dir, a continuation finds its own.

`run_name: ${xlmtrain.run_name:${objective.name}}` (conf/xlmtrain.yaml) resolves to the recipe's name (else the
objective's), followed by the command line's overrides that change what the run is:
- a plain run: only overrides of identity keys (`training/run_identity.py`: model, data content, objective,
  optim, seed, numerics) and `data.dir`. So `+recipe=tlm model=small` is `tlm_model=small`, while
  `+recipe=tlm trainer.max_steps=1200` is still `tlm` and continues that run;
- a sweep job (`-m`): the overrides the sweep varies (`optim.optimizer.lr=1e-3,3e-3` -> `tlm_optim.optimizer.lr=
  0.001`; sweeping a safe key must not put two jobs in one dir either), so each job has its own run dir under
  `<sweep_dir>`, named from its overrides, the same after a requeue (no clock in it). The swept keys are found
  by `SweptKeys` (a Hydra callback, `cli/sweep.py`) in the launching process and handed to the jobs in the
  environment (`XLMTRAIN_SWEPT_KEYS`; sbatch passes it on to submitit's jobs); without it, every override
  counts. Another sweep with other fixed settings in the same `sweep_dir` gets the same names and is refused
  by the run identity check, one line per job: give each sweep its own `sweep_dir=`.
Outside a Hydra run (the compose API in tests) there are no overrides: the base name.

Run-dir and Hydra keys (`run_dir`, `run_name`, `sweep_dir`, `resume`, `hydra.*`, `+launcher`, `paths.*`) never
count; values with `/` have it replaced by `_`; a name over 100 characters is cut and given a hash suffix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection

from omegaconf import OmegaConf

RESOLVER = "xlmtrain.run_name"
NEVER_IN_NAME = ("run_dir", "run_name", "sweep_dir", "resume", "hydra", "launcher", "paths", "recipe")
MAX_LEN = 100
SWEPT_KEYS_ENV = "XLMTRAIN_SWEPT_KEYS"
"""Comma-separated keys the running sweep varies (set by `cli/sweep.py::SweepTable.on_multirun_start`)."""


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _names_the_run(key: str) -> bool:
    """Whether an override of `key` (a dotted key, or a config group such as `model`) changes the run's identity."""
    from xlmtrain.training.run_identity import IDENTITY_PREFIXES, MAX_STEPS, is_identity_key

    if key == "data.dir":
        return True
    if key == MAX_STEPS:
        return False  # a longer run of the same experiment continues it (its own rule in run_identity)
    group_prefix = f"{key}."
    return is_identity_key(key) or any(p == group_prefix for p in IDENTITY_PREFIXES)


def run_name(base: str, overrides: list[str], *, multirun: bool, swept: Collection[str] | None = None) -> str:
    """The default run name for these command-line overrides (see the module docstring); `swept`: the keys a
    sweep varies (None: unknown, every override of a sweep job counts)."""
    recipe = next((o.split("=", 1)[1] for o in overrides if _key(o) == "recipe" and "=" in o), None)
    parts = [recipe or base]
    for override in sorted(overrides):
        key = _key(override)
        if key.split(".")[0] in NEVER_IN_NAME or "=" not in override:
            continue
        if (multirun and (swept is None or key in swept)) or (not multirun and _names_the_run(key)):
            parts.append(override.lstrip("+~").replace("/", "_"))
    name = "_".join(parts)
    if len(name) > MAX_LEN:
        name = f"{name[: MAX_LEN - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def _resolve(base: str) -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return str(base)
    hydra = HydraConfig.get()
    swept = os.environ.get(SWEPT_KEYS_ENV)
    return run_name(str(base), list(hydra.overrides.task), multirun=hydra.mode == RunMode.MULTIRUN,
                    swept=None if swept is None else swept.split(","))  # fmt: skip


def register() -> None:
    """Make `${xlmtrain.run_name:BASE}` available to configs (idempotent)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve)
