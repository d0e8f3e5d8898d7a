"""Data-path cost: fraction of training time spent producing batches (not a test).

    python benchmarks/data_wait.py                # model=small, MLM+TLM recipe, batch 16 x 128, 30 steps
    python benchmarks/data_wait.py --quick        # tiny model, 8 steps (smoke run)

Trains through the real path (`python -m xlmtrain`'s `build`: Hydra config `+recipe=mlm_tlm`, preprocessed
synthetic corpus, `PretrainModule`, Lightning `Trainer`), and times every `next()` on the training batch
source (stream draw, mmap reads, pair layout, masking): that is the time the step waits for data, since
batches are built in the training process. Fraction = mean seconds per `next()` / mean seconds per step (wall time from
the start of step `--skip` to the end of the last step: warm-up and the first batches are excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir

from benchlib import format_table, machine_line, peak_rss_mb
from xlmtrain.__main__ import pretrain_settings
from xlmtrain.config_dir import conf_dir
from xlmtrain.data.preprocessed import ensure_preprocessed
from xlmtrain.data.synthetic import write_corpus
from xlmtrain.jobs.pretrain import setup


class TimedBatches:
    """Wraps the training batch source; records the seconds spent in each `next()` (everything else delegates)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.inner)
        while True:
            start = time.perf_counter()
            item = next(iterator)
            self.seconds.append(time.perf_counter() - start)
            yield item


class StepClock(pl.Callback):
    """Wall-clock times at the start and at the end of every training batch."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/xlmtrain-bench-data"))
    parser.add_argument("--model", default="small", help="conf/model group option")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bptt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.batch_size, args.bptt, args.steps, args.skip = "tiny", 8, 32, 8, 2
    return args


def main(argv: list[str] | None = None) -> float:
    """Run, print the table and return the waiting fraction."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    raw = write_corpus(args.workdir / "raw", n_mono=3000, n_para=3000, seed=0)
    prep = ensure_preprocessed(raw, args.workdir / "cache", bpe_merges=1000, valid_lines=100, test_lines=100,
                               workers=1, progress=False)  # fmt: skip
    overrides = [
        "+recipe=mlm_tlm", f"model={args.model}", f"data.dir={prep}", f"run_dir={args.workdir / 'run'}",
        f"data.batching.batch_size={args.batch_size}", f"data.batching.bptt={args.bptt}",
        f"trainer.max_steps={args.steps}", "trainer.val_check_interval=1000000", "+trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "~callbacks.best",
        "checkpoint.every_n_train_steps=1000000",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=overrides)
    module, trainer, _ = setup(pretrain_settings(cfg))
    timed = TimedBatches(module.train_batches)
    module.train_batches = timed
    clock = StepClock()
    trainer.callbacks.append(clock)
    trainer.fit(module)
    # Lightning fetches one batch ahead, so compare mean seconds per fetch with mean seconds per step.
    steps = args.steps - args.skip
    step_s = (clock.ends[-1] - clock.starts[args.skip]) / steps
    fetch_s = sum(timed.seconds[args.skip + 1 :]) / len(timed.seconds[args.skip + 1 :])
    fraction = fetch_s / step_s
    tokens = args.batch_size * args.bptt
    rates = sorted(tokens / (end - start) for start, end in zip(clock.starts[args.skip :], clock.ends[args.skip :]))
    print(machine_line(args.threads))
    print(format_table(
        ["model", "batch", "steps", "s/step", "tok/s med", "min", "max", "peak RSS MB", "batch build ms/step", "waiting"],
        [[args.model, f"{args.batch_size} x {args.bptt}", steps, f"{step_s:.3f}", f"{statistics.median(rates):.0f}",
          f"{rates[0]:.0f}", f"{rates[-1]:.0f}", f"{peak_rss_mb():.0f}", f"{1000 * fetch_s:.1f}", f"{100 * fraction:.2f}%"]],
    ))  # fmt: skip
    print(f"data waiting: {100 * fraction:.2f}% of step time")
    return fraction


if __name__ == "__main__":
    main()
