"""Measurement helpers shared by the benchmarks: matmul peak, step timing, peak RSS, FLOP counts, tables.

Benchmarks import it as a sibling module (`python benchmarks/X.py` puts `benchmarks/` on `sys.path`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Shape:
    """Model shape of a benchmark row (XLM sizes)."""

    name: str
    vocab: int
    dim: int
    layers: int
    heads: int


SHAPES: dict[str, Shape] = {
    "tiny": Shape("tiny", 1000, 64, 2, 2),  # smoke runs (--quick) only
    "small": Shape("small", 8000, 256, 4, 4),
    "base": Shape("base", 30000, 512, 6, 8),
}


def matmul_peak_gflops(
    m: int = 1024,
    k: int = 4096,
    n: int = 1024,
    repeats: int = 10,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """`torch.mm` GFLOP/s of an (m, k) x (k, n) product in `dtype` on `device` (median of repeats): on the CPU at
    the current thread count; on CUDA at 8192^3 (the sizes given are for the CPU), synchronised."""
    device = torch.device(device)
    if device.type == "cuda":
        m = k = n = 8192
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)

    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        torch.mm(a, b)
    wait()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        wait()
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0; no-op elsewhere)."""
    if _CLEAR_REFS.exists():
        _CLEAR_REFS.write_text("5")


def peak_rss_mb() -> float:
    """Peak resident set size of this process since the last `reset_peak_rss`, in MB (0 if unknown)."""
    if not _STATUS.exists():
        return 0.0
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class StepStats:
    """Wall-clock seconds of timed steps and the process peak RSS seen while they ran."""

    seconds: list[float]
    peak_rss_mb: float = 0.0

    def tokens_per_s(self, tokens: int) -> tuple[float, float, float]:
        """(tokens / median step time, min, max) tokens/s for steps of `tokens` tokens each. The median is taken
        over step times, so the table's tok/s and s/step agree for an even number of steps too (the median
        of the rates would average two rates instead)."""
        rates = [tokens / s for s in self.seconds]
        return tokens / self.median_s, min(rates), max(rates)

    @property
    def median_s(self) -> float:
        """Median step time in seconds."""
        return statistics.median(self.seconds)


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, StepStats]:
    """Run every step function `warmup` times, then `repeats` rounds of one call each, in turn.

    Interleaving puts the contenders under the same background load. Each function must end with the
    work finished (on CPU every op is synchronous). Peak RSS is the process peak during that function's calls.
    """
    stats = {name: StepStats([]) for name in steps}
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    for _ in range(repeats):
        for name, fn in steps.items():
            reset_peak_rss()
            start = time.perf_counter()
            fn()
            stats[name].seconds.append(time.perf_counter() - start)
            stats[name].peak_rss_mb = max(stats[name].peak_rss_mb, peak_rss_mb())
    return stats


def encoder_forward_flops(shape: Shape, n_tokens: int, slen: int, last_block_rows: int | None = None) -> float:
    """Matmul FLOPs of one encoder forward over `n_tokens` positions in rows of `slen`.

    Per layer and token: q, k, v, out projections 4 * 2 d^2, FFN 2 * 2 * d * 4d, attention scores and
    weighted values 2 * 2 * slen * d. With `last_block_rows` (xlmtrain's `output_positions`), the last
    block computes k and v at every token but the rest only at that many rows. Embedding lookups,
    LayerNorm, GELU, softmax are not counted.
    """
    d = shape.dim
    per_token = 24 * d * d + 4 * slen * d
    if last_block_rows is None:
        return shape.layers * n_tokens * per_token
    last = n_tokens * 4 * d * d + last_block_rows * (20 * d * d + 4 * slen * d)
    return (shape.layers - 1) * n_tokens * per_token + last


def train_step_flops(
    shape: Shape, n_tokens: int, slen: int, n_logits: int, last_block_rows: int | None = None
) -> float:
    """Matmul FLOPs of forward + backward: 3 x (encoder forward + 2 * d * vocab per row of logits)."""
    encoder = encoder_forward_flops(shape, n_tokens, slen, last_block_rows)
    return 3 * (encoder + 2 * shape.dim * shape.vocab * n_logits)


def machine_description(threads: int) -> str:
    """CPU model, logical CPUs, torch version and thread count, one line."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {threads} threads"


def machine_line(threads: int) -> str:
    """`machine: <description>; fp32 matmul peak X GFLOP/s`, the peak measured now at `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak = matmul_peak_gflops()
    finally:
        torch.set_num_threads(previous)
    return f"machine: {machine_description(threads)}; fp32 matmul peak (1024x4096x1024 torch.mm) {peak:.1f} GFLOP/s"


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pipes), columns padded to their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
