"""DDP scaling on CPU: xlmtrain's MLM step in 1 process vs 2 gloo processes on the same cores (not a test).

    python benchmarks/ddp_scaling.py               # small shape, 16 x 128 per process
    python benchmarks/ddp_scaling.py --quick       # tiny shape (smoke run)

Layouts: 1 process x 2 threads, 1 process x 1 thread, 2 processes x 1 thread (DistributedDataParallel,
gloo all-reduce). Each process trains its own batch (global batch = processes x batch), so tokens/s =
processes x batch x slen / median step time of rank 0. Efficiency = tokens/s / (processes x tokens/s of
1 process x 1 thread).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from train_step import TrainingLoss, adamw, make_batch, model_config, xlmtrain_step

from benchlib import SHAPES, format_table, machine_line, peak_rss_mb
from xlmtrain.model.heads import XLMWithLMHead


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, threads: int, out: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts them)
        shape = SHAPES[args.shape]
        model = XLMWithLMHead(model_config(shape)).train()
        ddp = DistributedDataParallel(TrainingLoss(model))
        optimizer = adamw(model, fused=True)
        generator = torch.Generator().manual_seed(100 + rank)
        batches = [make_batch("mlm", shape, args.batch_size, args.slen, generator).xlm for _ in range(2)]
        seconds = []
        for i in range(args.warmup + args.repeats):
            dist.barrier()
            start = time.perf_counter()
            xlmtrain_step(ddp, optimizer, batches[i % 2])
            seconds.append(time.perf_counter() - start)
        # torch 2.13 stashes a Python object in the thread-local state of every backward, and the gloo works DDP
        # launches there keep a copy, which the gloo thread frees after the work (it needs the GIL for that).
        # Destroying DDP right after the last backward can deadlock: the main thread joins the gloo thread
        # inside the process group's destructor while holding the GIL (seen about once in 15 runs). Sleeping
        # releases the GIL so the gloo thread frees every finished work first.
        dist.barrier()
        time.sleep(0.2)
        if rank == 0:
            out.put((seconds[args.warmup :], peak_rss_mb()))
    finally:
        dist.destroy_process_group()


def run_layout(args: argparse.Namespace, processes: int, threads: int) -> tuple[list[float], float]:
    """(step seconds, peak RSS MB) of rank 0 for `processes` DDP ranks of `threads` threads each."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(
        _worker, args=(processes, _free_port(), args, threads, queue), nprocs=processes, start_method="spawn"
    )
    return queue.get(timeout=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--slen", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny shape, batch 4 x 32, 1 + 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.batch_size, args.slen, args.warmup, args.repeats = "tiny", 4, 32, 1, 2
    return args


def main(argv: list[str] | None = None) -> dict[tuple[int, int], float]:
    """Run every layout, print the table; returns tokens/s by (processes, threads)."""
    args = parse_args(argv)
    rates, extremes, rss = {}, {}, {}
    for processes, threads in ((1, 2), (1, 1), (2, 1)):
        seconds, rss[(processes, threads)] = run_layout(args, processes, threads)
        tokens = processes * args.batch_size * args.slen
        rates[(processes, threads)] = tokens / statistics.median(seconds)
        extremes[(processes, threads)] = (tokens / max(seconds), tokens / min(seconds))
    single = rates[(1, 1)]
    rows = [
        [p, t, f"{rate:.0f}", f"{extremes[p, t][0]:.0f}", f"{extremes[p, t][1]:.0f}", f"{rate / rates[(1, 2)]:.2f}x",
         f"{100 * rate / (p * single):.0f}%", f"{rss[p, t]:.0f}"]
        for (p, t), rate in rates.items()
    ]  # fmt: skip
    print(f"{machine_line(2)}; shape {args.shape}, {args.batch_size} x {args.slen} per process")
    header = ["processes", "threads each", "tok/s med", "min", "max", "vs 1x2", "efficiency", "peak RSS MB (rank 0)"]
    print(format_table(header, rows))
    return rates


if __name__ == "__main__":
    main()
