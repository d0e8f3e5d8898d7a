"""AtomicCheckpointIO, safe loading and find_resume_checkpoint on real Lightning checkpoints."""

from __future__ import annotations

import fractions
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from xlmtrain.training.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from xlmtrain.training.resume import CorruptCheckpointError, find_resume_checkpoint, validated_step

REPO = Path(__file__).resolve().parents[1]


class Tiny(pl.LightningModule):
    def __init__(self, cfg: object) -> None:
        super().__init__()
        self.save_hyperparameters()  # nested plain containers, as the jobs pass (never Hydra's)
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def lightning_ckpts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with Lightning checkpoints at steps 2, 4 and 6 written through AtomicCheckpointIO."""
    ckpt_dir = tmp_path_factory.mktemp("ckpts")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        plugins=[AtomicCheckpointIO()],
        default_root_dir=ckpt_dir,
        callbacks=[
            pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", every_n_train_steps=2, save_top_k=-1)
        ],
    )
    cfg = {"model": {"emb_dim": 32, "langs": ["en", "fr"]}, "lr": 0.01, "path": None}
    trainer.fit(Tiny(cfg), DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4))
    return ckpt_dir


def copy_ckpts(src: Path, dst: Path) -> dict[int, Path]:
    dst.mkdir()
    out = {}
    for path in sorted(src.glob("*.ckpt")):
        target = dst / path.name
        target.write_bytes(path.read_bytes())
        out[validated_step(target)] = target
    return out


def test_checkpoints_load_weights_only_with_nested_hparams(lightning_ckpts: Path) -> None:
    ckpt = AtomicCheckpointIO().load_checkpoint(lightning_ckpts / "stepstep=6.ckpt")
    assert ckpt["global_step"] == 6
    assert ckpt["hyper_parameters"]["cfg"]["model"]["langs"] == ["en", "fr"]
    assert sorted(p.name for p in lightning_ckpts.iterdir()) == [
        "stepstep=2.ckpt",
        "stepstep=4.ckpt",
        "stepstep=6.ckpt",
    ]
    assert oct((lightning_ckpts / "stepstep=6.ckpt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_load_refuses_unlisted_classes_and_weights_only_false(tmp_path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint(
        {"global_step": 1, "state_dict": {}, "x": fractions.Fraction(1, 3)}, tmp_path / "a.ckpt"
    )
    with pytest.raises(pickle.UnpicklingError, match="fractions.Fraction"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="weights_only=False"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "a.ckpt", weights_only=False)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_resume_picks_highest_step_not_newest_mtime(lightning_ckpts: Path, tmp_path: Path) -> None:
    by_step = copy_ckpts(lightning_ckpts, tmp_path / "c")
    os.utime(by_step[2], (time.time() + 100, time.time() + 100))  # step 2 touched last
    (tmp_path / "c" / ".last.ckpt.tmp-123-abcd").write_bytes(b"partial")  # a killed write's leftover
    assert find_resume_checkpoint(tmp_path / "c") == by_step[6]
    assert find_resume_checkpoint(tmp_path / "missing") is None


def test_truncated_and_bitflipped_checkpoints_are_reported_and_skipped(
    lightning_ckpts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    by_step = copy_ckpts(lightning_ckpts, tmp_path / "c")
    data = by_step[6].read_bytes()
    by_step[6].write_bytes(data[: len(data) // 2])  # truncated write
    archive = zipfile.ZipFile(by_step[4])
    member = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    header = by_step[4].read_bytes()
    name_len, extra_len = (
        int.from_bytes(header[member.header_offset + 26 : member.header_offset + 28], "little"),
        int.from_bytes(header[member.header_offset + 28 : member.header_offset + 30], "little"),
    )
    flipped = bytearray(header)
    flipped[member.header_offset + 30 + name_len + extra_len] ^= 0xFF  # one byte of a tensor's data
    by_step[4].write_bytes(bytes(flipped))
    with caplog.at_level(logging.WARNING, logger="xlmtrain.training.resume"):
        assert find_resume_checkpoint(tmp_path / "c") == by_step[2]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"skipping corrupt checkpoint {by_step[6]}" in messages and "BadZipFile" in messages
    assert f"skipping corrupt checkpoint {by_step[4]}" in messages and "CRC mismatch" in messages
    with pytest.raises(CorruptCheckpointError, match="CRC mismatch"):
        validated_step(by_step[4])


@pytest.mark.parametrize("dropped", ["global_step", "state_dict"])
def test_a_checkpoint_missing_a_key_is_named_in_one_line_and_skipped(
    lightning_ckpts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, dropped: str
) -> None:
    """A readable file that lacks one of Lightning's keys (another tool's .ckpt, a hand-edited one) is refused with
    one line naming the file and the key, never resumed from; `resume=auto` falls back to the next newest."""
    by_step = copy_ckpts(lightning_ckpts, tmp_path / "c")
    checkpoint = load_checkpoint_file(by_step[6])
    del checkpoint[dropped]
    AtomicCheckpointIO().save_checkpoint(checkpoint, by_step[6])
    with pytest.raises(CorruptCheckpointError) as error:
        validated_step(by_step[6])
    assert str(error.value) == f"{by_step[6]}: not a Lightning checkpoint (missing {dropped})"
    with caplog.at_level(logging.WARNING, logger="xlmtrain.training.resume"):
        assert find_resume_checkpoint(tmp_path / "c") == by_step[4]
    assert f"skipping corrupt checkpoint {by_step[6]}" in caplog.text and f"missing {dropped}" in caplog.text


WRITER = """
import sys, torch
from xlmtrain.training.checkpoint_io import AtomicCheckpointIO
io, step = AtomicCheckpointIO(), 0
while True:
    step += 1
    io.save_checkpoint({"global_step": step, "state_dict": {"w": torch.full((2_000_000,), float(step))}}, sys.argv[1])
"""


@pytest.mark.slow
def test_kill_during_writes_never_leaves_a_corrupt_last_ckpt(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites an 8 MB last.ckpt in a loop, at staggered moments, until kills have
    landed inside the file write at least twice (the temp file exists only while writing, a small part of each
    save on a fast disk: a fixed 8 attempts once missed it)."""
    last = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed_mid_write = 0
    for attempt in range(60):
        if killed_mid_write >= 2:
            break
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(last)], env=env)
        deadline = time.monotonic() + 60
        while not last.exists() or validated_step(last) < 2:  # at least one overwrite happened
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.01)
        time.sleep(0.013 * (attempt % 8))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        leftovers = list(tmp_path.glob(".last.ckpt.tmp-*"))
        killed_mid_write += bool(leftovers)
        step = validated_step(last)  # raises if the visible file is damaged
        assert torch.equal(load_checkpoint_file(last)["state_dict"]["w"], torch.full((2_000_000,), float(step)))
        assert find_resume_checkpoint(tmp_path) == last
        for leftover in leftovers:
            leftover.unlink()
        last.unlink()
    assert killed_mid_write > 0, "no kill landed inside a write: the test did not exercise the race"
