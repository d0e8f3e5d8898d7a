"""Run identity: what defines a run, the refusal naming what changed, safe changes recorded, allowed changes applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR
from xlmtrain.training.lr import lr_factor, warmup_schedule
from xlmtrain.training.run_identity import (
    RunIdentityError,
    RunRecord,
    apply_optimizer_settings,
    check_continuation,
    fingerprint,
    read_record,
    record_continuation,
    split_config,
    write_record,
)


def _config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=["+recipe=tlm", "run_dir=/tmp/x", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def _split(*overrides: str, data: str = "d0") -> tuple[dict, dict]:
    return split_config(_config(*overrides), data)


def test_identity_holds_what_defines_a_run_and_nothing_else() -> None:
    identity, settings = _split()
    for key in ("model.emb_dim", "model.use_lang_emb", "optim.optimizer.lr", "optim.scheduler.warmup_steps",
                "objective.streams", "seed", "data.batching.batch_size", "trainer.max_steps", "trainer.precision",
                "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "data.fingerprint"):  # fmt: skip
        assert key in identity, key
    for key in ("trainer.val_check_interval", "trainer.log_every_n_steps", "trainer.devices", "trainer.num_nodes",
                "trainer.enable_progress_bar", "checkpoint.every_n_train_steps", "run_dir", "data.dir",
                "compile", "objective.monitor", "data.batching.valid_max_batches"):  # fmt: skip
        assert key in settings and key not in identity, key
    assert not any(k.startswith(("logger", "callbacks")) for k in identity)
    assert identity["data.fingerprint"] == "d0"


def test_fingerprint_changes_with_the_run_not_with_safe_settings() -> None:
    base = fingerprint(_split()[0])
    assert fingerprint(_split("trainer.val_check_interval=7", "trainer.devices=2", "logger=tensorboard")[0]) == base
    assert fingerprint(_split("model=small")[0]) != base
    assert fingerprint(_split("optim.optimizer.lr=1e-3")[0]) != base
    assert fingerprint(_split("seed=1")[0]) != base
    assert fingerprint(_split(data="d1")[0]) != base  # other data content, same path
    assert fingerprint(_split("trainer.max_steps=900")[0]) == base  # its own rule, below


def test_other_model_is_refused_naming_the_key_and_the_ways_out() -> None:
    record = RunRecord(*_split())
    with pytest.raises(RunIdentityError) as error:
        check_continuation(record, *_split("model=small"), run_dir="runs/tlm")
    message = str(error.value)
    assert "\n" not in message
    assert "model.emb_dim (64 -> 256)" in message and "model.n_layers (2 -> 4)" in message
    assert "run_name=" in message and "resume=never" in message
    # model=small is a real-text size: XLM's dropout 0.1 / 0.1 where tiny has 0.
    assert "model.dropout (0.0 -> 0.1)" in message
    assert "resume.allow_changes=[model.attention_dropout,model.dropout,model.emb_dim,model.n_layers]" in message
    assert "runs/tlm holds another run" in message


def test_safe_changes_pass_and_are_recorded(tmp_path: Path) -> None:
    record = RunRecord(*_split())
    write_record(tmp_path, record)
    identity, settings = _split("trainer.val_check_interval=50", "trainer.max_steps=1200")
    continuation = check_continuation(read_record(tmp_path), identity, settings)
    assert continuation.safe == {"trainer.max_steps": (600, 1200), "trainer.val_check_interval": (200, 50)}
    assert continuation.allowed == {}
    write_record(tmp_path, record_continuation(record, continuation, identity, settings, step=600))
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["continuations"][0]["step"] == 600
    assert saved["continuations"][0]["safe"]["trainer.max_steps"] == [600, 1200]
    assert saved["fingerprint"] == fingerprint(identity)
    assert read_record(tmp_path).settings["trainer.val_check_interval"] == 50


def test_max_steps_rule_depends_on_the_schedule() -> None:
    record = RunRecord(*_split("optim.scheduler.kind=cosine"))
    with pytest.raises(RunIdentityError, match=r"trainer.max_steps \(600 -> 1200\)"):
        check_continuation(record, *_split("optim.scheduler.kind=cosine", "trainer.max_steps=1200"))
    with pytest.raises(RunIdentityError, match=r"trainer.max_steps"):  # fewer steps: never silently
        check_continuation(RunRecord(*_split()), *_split("trainer.max_steps=300"))
    allowed = check_continuation(record, *_split("optim.scheduler.kind=cosine", "trainer.max_steps=1200"),
                                 allow_changes=["trainer.max_steps"])  # fmt: skip
    assert allowed.allowed == {"trainer.max_steps": (600, 1200)}


def test_allow_changes_lets_named_keys_through_only() -> None:
    record = RunRecord(*_split())
    continuation = check_continuation(record, *_split("optim.optimizer.lr=1e-3"), allow_changes=["optim.optimizer.lr"])
    assert continuation.allowed == {"optim.optimizer.lr": (3e-3, 1e-3)}
    with pytest.raises(RunIdentityError, match="seed"):
        check_continuation(record, *_split("optim.optimizer.lr=1e-3", "seed=3"), allow_changes=["optim.optimizer.lr"])
    with pytest.raises(RunIdentityError, match=r"allow_changes: \['optim.lr'\] are not settings"):
        check_continuation(record, *_split(), allow_changes=["optim.lr"])


def test_malformed_record_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunIdentityError, match=r"run.json: unreadable run record"):
        read_record(tmp_path)
    assert read_record(tmp_path / "absent") is None


def test_new_lr_applies_from_the_resume_step_on() -> None:
    """The rule documented for resume.allow_changes=[optim.optimizer.lr]: the checkpoint's optimizer and
    scheduler states come back (Adam moments, step count), and the lr at every step s >= the resume step is
    new_lr * factor(s); without apply_optimizer_settings the old lr would silently stay."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4))
    schedule = {"kind": "inverse_sqrt", "warmup_steps": 5, "warmup_init_lr": 1e-7}
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = warmup_schedule(opt, **schedule)
    for _ in range(8):
        param.grad = torch.ones(4)
        opt.step()
        sched.step()
    opt_state, sched_state = opt.state_dict(), sched.state_dict()

    new = torch.optim.AdamW([param], lr=5e-4, weight_decay=0.1)
    new_sched = warmup_schedule(new, **schedule)
    new.load_state_dict(opt_state)
    new_sched.load_state_dict(sched_state)
    assert new.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(8, kind="inverse_sqrt", warmup_steps=5,
                                                                        warmup_init_ratio=1e-4, max_steps=-1))  # fmt: skip
    apply_optimizer_settings(new, new_sched, {"lr": 5e-4, "weight_decay": 0.1, "betas": [0.9, 0.999]})
    factor = sched.lr_lambdas[0]
    assert new.param_groups[0]["lr"] == pytest.approx(5e-4 * factor(8))
    assert new.param_groups[0]["weight_decay"] == 0.1 and new.param_groups[0]["betas"] == (0.9, 0.999)
    assert int(new.state[param]["step"]) == 8  # the moments and step count are the checkpoint's
    for step in (9, 10):
        param.grad = torch.ones(4)
        new.step()
        new_sched.step()
        assert new.param_groups[0]["lr"] == pytest.approx(5e-4 * factor(step))


def test_devices_and_nodes_are_safe_but_the_global_batch_is_identity() -> None:
    """`data.batching.batch_size` is the GLOBAL batch (split over the ranks, `objectives/data.py`), so a run may
    continue on other devices/nodes (an elastic 2 -> 1 / 1 -> 2 resume) as long as batch_size x accumulation, the
    rows per optimizer step, is unchanged; changing either factor is refused in one line."""
    record = RunRecord(*_split("trainer.devices=2"))
    continuation = check_continuation(record, *_split("trainer.devices=1", "trainer.num_nodes=2"))
    assert continuation.safe == {"trainer.devices": (2, 1), "trainer.num_nodes": (1, 2)} and not continuation.allowed
    for change, key in (("data.batching.batch_size=16", "data.batching.batch_size (128 -> 16)"),
                        ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches (1 -> 2)")):  # fmt: skip
        with pytest.raises(RunIdentityError) as error:
            check_continuation(record, *_split("trainer.devices=2", change))
        assert key in str(error.value) and "\n" not in str(error.value)
