"""What a finished run reports: rows of its metrics.csv, first/last losses, the training-curve plot, a summary."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of Lightning's metrics.csv as dicts of the non-empty numeric cells."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def final_metrics(path: Path) -> dict[str, float]:
    """The first and last training loss and the last value of every validation metric."""
    if not path.is_file():
        return {}
    out: dict[str, float] = {}
    rows = read_metrics(path)
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    if losses:
        out["train_loss_first"], out["train_loss_last"] = losses[0], losses[-1]
    for row in rows:
        out.update({k: v for k, v in row.items() if k.startswith("valid_")})
    return out


def plot_curves(metrics: Path, png: Path) -> Path:
    """Training loss and validation perplexities against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics)
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
    train_rows = [r for r in rows if "train_loss" in r]
    ax_loss.plot([r["step"] for r in train_rows], [r["train_loss"] for r in train_rows], lw=0.8)
    ax_loss.set(xlabel="step", ylabel="train loss (lambda x CE)", title="training")
    names = sorted({k for r in rows for k in r if k.startswith("valid_") and k.endswith("_ppl")})
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if name in r]
        ax_ppl.plot(*zip(*pts), marker="o", label=name)
    ax_ppl.set(xlabel="step", ylabel="perplexity", title="validation", yscale="log")
    if names:
        ax_ppl.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block."""
    lines = ["", "xlmtrain run summary"]
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else value
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)
