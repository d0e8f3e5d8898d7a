"""Run identity: what defines a training run, recorded in its run dir, so a run dir never becomes another run.

A run is defined by its model, its data (the content of the preprocessed folder, not its path), its
objective and streams, its optimizer and schedule, the training numerics (precision, clipping, accumulation)
and its seed. `run_identity(config, data_fingerprint)` flattens those settings of a plain resolved config dict
into dotted keys (`model.emb_dim`, `optim.optimizer.lr`, ...); `fingerprint()` hashes them. Everything else
is a *safe* setting: it changes how the run is watched or where it runs, not what it computes
(`trainer.val_check_interval`, `trainer.log_every_n_steps`, `checkpoint.*`, `logger`, `callbacks`,
`trainer.devices` / `num_nodes` / `strategy` (batches are global), the progress bar, `data.dir` when the data
content is the same, validation sizes, `objective.monitor`).

`trainer.max_steps` has its own rule: a larger value is safe when the LR schedule does not depend on it
(`inverse_sqrt`, `constant`); with `linear` / `cosine` it would reshape the whole schedule, so it needs
`resume.allow_changes=[trainer.max_steps]` like any identity key.

`<run_dir>/run.json` holds `{format_version, run_id, fingerprint, identity, settings, continuations, overrides}`:
the identity, the safe settings of the first start, one entry per continuation that changed something
(`{started, step, safe: {key: [old, new]}, allowed: {...}}`) and the latest start's command-line overrides. `check_continuation` compares a new start with
the record: safe changes pass, keys listed in `allow_changes` pass, anything else raises `RunIdentityError`
naming the keys and the ways out.

What an allowed change means when the run resumes (`training/resume.py::OptimizerSettingsOnResume` applies it): the current
config's optimizer hyperparameters and LR schedule replace the checkpoint's from the resume step on (a new
`optim.optimizer.lr` is the new peak: the lr at step s is `new_lr * factor(s)` for every s >= the resume step;
steps before keep what they had). Model and data settings take effect as built (weights that no longer fit
fail to load, with the checkpoint error naming the keys).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
FORMAT_VERSION = 1

IDENTITY_PREFIXES: tuple[str, ...] = (
    "model.",
    "data.batching.",
    "objective.",
    "optim.",
    "seed",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "trainer.gradient_clip_algorithm",
    "trainer.precision",
    "trainer.max_steps",
)
"""Dotted-key prefixes of the settings that define a run (plus `data.fingerprint`, the data content)."""

SAFE_WITHIN_IDENTITY: tuple[str, ...] = (
    "data.batching.valid_batch_size",
    "data.batching.valid_max_batches",
    "objective.monitor",
    "objective.monitor_mode",
    "objective.masking.eval_seed",
)
"""Keys under the identity prefixes that only change validation, checkpoint selection or speed."""

MAX_STEPS = "trainer.max_steps"
HORIZON_FREE_SCHEDULES = ("inverse_sqrt", "constant")
"""LR schedules whose factor does not depend on `trainer.max_steps` (so a larger max_steps is a safe change)."""


class RunIdentityError(ValueError):
    """A run dir holds another run (or a malformed record); the message names the keys and the ways out."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> `{dotted.key: leaf}`; lists stay values (streams are compared as a whole list)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def is_identity_key(key: str) -> bool:
    """Whether the dotted config key is part of what defines a run (`IDENTITY_PREFIXES` less `SAFE_WITHIN_IDENTITY`)."""
    if any(key == s or key.startswith(f"{s}.") for s in SAFE_WITHIN_IDENTITY):
        return False
    return any(key == p or key.startswith(p) if p.endswith(".") else key == p for p in IDENTITY_PREFIXES)


def split_config(config: Mapping[str, Any], data_fingerprint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, safe settings) of a plain resolved config dict, both flat. Hydra's own `hydra.*` is left out."""
    flat = flatten({k: v for k, v in config.items() if k != "hydra"})
    identity = {k: v for k, v in flat.items() if is_identity_key(k)}
    identity["data.fingerprint"] = data_fingerprint
    settings = {k: v for k, v in flat.items() if not is_identity_key(k)}
    return dict(sorted(identity.items())), dict(sorted(settings.items()))


def fingerprint(identity: Mapping[str, Any]) -> str:
    """Short hash of the identity (without `trainer.max_steps`, which has its own rule): equal iff equal runs."""
    hashed = {k: v for k, v in identity.items() if k != MAX_STEPS}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:12]


def data_fingerprint(data_dir: str | os.PathLike) -> str:
    """Hash of a preprocessed folder's `manifest.json` (its inputs' hashes and settings): the data's content,
    whatever path it is read from."""
    manifest = Path(data_dir) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`{key: (old, new)}` of the keys whose values differ (a key missing on one side is `None` there)."""
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


@dataclass
class RunRecord:
    """The content of `<run_dir>/run.json`."""

    identity: dict[str, Any]
    settings: dict[str, Any]
    continuations: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""
    """Drawn at the run's first start, kept by its continuations: the loggers' run id."""
    overrides: list[str] = field(default_factory=list)
    """The command line's overrides of the latest start (what sweep tables and `xlmtrain.report` group runs by)."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "run_id": self.run_id, "fingerprint": self.fingerprint,
                "identity": self.identity, "settings": self.settings, "continuations": self.continuations,
                "overrides": self.overrides}  # fmt: skip


def read_record(run_dir: str | os.PathLike) -> RunRecord | None:
    """The run's record, or None if the run dir has none (or a run.json without an identity: a run from before
    run identity). Raises `RunIdentityError` naming a malformed file."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "identity" not in data:
            return None
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        return RunRecord(dict(data["identity"]), dict(data["settings"]), list(data.get("continuations", [])),
                         str(data.get("run_id", "")), [str(o) for o in data.get("overrides", [])])  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunIdentityError(f"{path}: unreadable run record ({error}); move it aside to start a new run") from None


def write_record(run_dir: str | os.PathLike, record: RunRecord) -> Path:
    """Write the record into `<run_dir>/run.json` atomically; other writers' sections (the job's `data`) stay."""
    from xlmtrain.training.checkpoint_io import atomic_write_bytes  # torch: only where a record is written

    path = Path(run_dir) / RUN_FILE
    try:
        existing = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        existing = {}
    merged = {**(existing if isinstance(existing, dict) else {}), **record.to_json()}
    atomic_write_bytes((json.dumps(merged, indent=1, default=str) + "\n").encode(), path)
    return path


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Continuation:
    """What a resumed start changed: `safe` and explicitly `allowed` keys, each `{key: (old, new)}`."""

    safe: dict[str, tuple[Any, Any]]
    allowed: dict[str, tuple[Any, Any]]


def check_continuation(
    record: RunRecord,
    identity: Mapping[str, Any],
    settings: Mapping[str, Any],
    allow_changes: Iterable[str] = (),
    *,
    run_dir: str | os.PathLike = "",
) -> Continuation:
    """Whether a start with (`identity`, `settings`) may continue the run of `record`.

    Raises:
        RunIdentityError: identity keys differ and are not all in `allow_changes` (one line naming the keys,
            their old and new values, and the ways out: another `run_name=`/`run_dir=`, `resume=never`, or
            `resume.allow_changes=[...]`); or `allow_changes` names a key that is not a setting.
    """
    allowed_keys = set(allow_changes)
    unknown = sorted(k for k in allowed_keys if k not in identity and k not in record.identity and k not in settings)
    if unknown:
        raise RunIdentityError(f"resume.allow_changes: {unknown} are not settings of this run")
    changed = diff(record.identity, identity)
    safe: dict[str, tuple[Any, Any]] = {}
    old_steps, new_steps = changed.get(MAX_STEPS, (None, None))
    if MAX_STEPS in changed and MAX_STEPS not in allowed_keys:
        schedule = identity.get("optim.scheduler.kind", "constant")  # no scheduler: a constant lr
        grows = isinstance(old_steps, int) and isinstance(new_steps, int) and (new_steps > old_steps or new_steps == -1)
        if grows and schedule in HORIZON_FREE_SCHEDULES:
            safe[MAX_STEPS] = changed.pop(MAX_STEPS)
    refused = {k: v for k, v in changed.items() if k not in allowed_keys}
    if refused:
        what = ", ".join(f"{k} ({_short(old)} -> {_short(new)})" for k, (old, new) in refused.items())
        where = f"{run_dir} holds" if run_dir else "the run dir holds"
        raise RunIdentityError(
            f"{where} another run (fingerprint {record.fingerprint}): {what} differ; "
            f"use another run_name=... (or run_dir=...), resume=never to archive that run and start over, or "
            f"resume.allow_changes=[{','.join(refused)}] to continue it with the new values"
        )
    allowed = {k: v for k, v in changed.items() if k in allowed_keys}
    safe.update(diff(record.settings, settings))
    return Continuation(safe=safe, allowed=allowed)


def record_continuation(record: RunRecord, continuation: Continuation, identity: Mapping[str, Any],
                        settings: Mapping[str, Any], step: int) -> RunRecord:  # fmt: skip
    """The record after a continuation at `step`: the new identity and settings, with the change history."""
    history = list(record.continuations)
    if continuation.safe or continuation.allowed:
        history.append({
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "step": step,
            "safe": {k: list(v) for k, v in continuation.safe.items()},
            "allowed": {k: list(v) for k, v in continuation.allowed.items()},
        })  # fmt: skip
    return RunRecord(dict(identity), dict(settings), history, record.run_id)


def optimizer_hyperparameters(optimizer_config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of an `optim.optimizer` block (Hydra's `_target_` / `_partial_` left out)."""
    return {k: v for k, v in optimizer_config.items() if not k.startswith("_")}


def apply_optimizer_settings(optimizer: Any, scheduler: Any, hyperparameters: Mapping[str, Any]) -> None:
    """Make the config's optimizer hyperparameters hold from now on, after a checkpoint restored its own.

    `optimizer.load_state_dict` brings back the checkpoint's param-group values (lr, betas, eps, weight decay)
    and `LambdaLR.load_state_dict` its `base_lrs`, so without this a changed lr would be silently ignored.
    Here every group's hyperparameters become the config's, `lr` as the schedule's new base: the scheduler's
    `base_lrs` and the groups' `initial_lr` are set to it and the current lr recomputed at the restored step.
    Sequence values (betas) are stored as tuples, as torch builds them.
    """
    values = {
        k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in hyperparameters.items()
    }
    for group in optimizer.param_groups:
        for key, value in values.items():
            if key in group and key not in ("params", "lr"):
                group[key] = value
        if "lr" in values:
            group["initial_lr"] = values["lr"]
            group["lr"] = values["lr"]
    if scheduler is not None and "lr" in values and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [values["lr"] for _ in optimizer.param_groups]
        # LambdaLR's closed form at the restored step (its get_lr() warns when called outside step()).
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
