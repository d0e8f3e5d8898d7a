"""The per-language results of a fine-tuning run: printed table, `results.csv`, `results.md` and a bar chart."""

from __future__ import annotations

import csv
from pathlib import Path

from xlmtrain.tasks.published import XNLI_LANGS

Results = dict[str, dict[str, tuple[float, int]]]  # split -> lang -> (metric %, n)


def ordered_langs(results: Results) -> list[str]:
    """Languages of all splits, XNLI's (the paper's) order first, then alphabetical."""
    langs = {lang for split in results.values() for lang in split}
    return [lang for lang in XNLI_LANGS if lang in langs] + sorted(langs - set(XNLI_LANGS))


def with_average(results: Results) -> Results:
    """Each split plus an `avg` row: the unweighted mean over languages (as the paper), n summed."""
    out: Results = {}
    for split, by_lang in results.items():
        values = [v for v, _ in by_lang.values()]
        out[split] = {**by_lang, "avg": (sum(values) / len(values), sum(n for _, n in by_lang.values()))}
    return out


def write_csv(results: Results, path: Path, metric: str) -> Path:
    """`lang,split,<metric>,n` rows (values in %, 2 decimals), `avg` rows included."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lang", "split", metric, "n"])
        full = with_average(results)
        for split, by_lang in full.items():
            for lang in [*ordered_langs(results), "avg"]:
                if lang in by_lang:
                    writer.writerow([lang, split, f"{by_lang[lang][0]:.2f}", by_lang[lang][1]])
    return path


def markdown_table(results: Results, metric: str, train_langs: list[str]) -> str:
    """One row per language (`*` marks training languages) plus `avg`, one column per split."""
    full = with_average(results)
    splits = [s for s in ("valid", "test") if s in full]
    lines = [
        f"| lang | {' | '.join(f'{s} {metric}' for s in splits)} | n ({splits[-1]}) |",
        "|---|" + "---:|" * (len(splits) + 1),
    ]
    for lang in [*ordered_langs(results), "avg"]:
        cells = [f"{full[s][lang][0]:.2f}" if lang in full[s] else "" for s in splits]
        n = full[splits[-1]].get(lang, (0.0, ""))[1]
        name = f"{lang}*" if lang in train_langs else lang
        lines.append(f"| {name} | {' | '.join(cells)} | {n} |")
    return "\n".join(lines)


def plot_results(results: Results, path: Path, metric: str, train_langs: list[str], chance: float | None) -> Path:
    """Bar chart of the last split's per-language metric (training languages hatched), average and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "test" if "test" in results else "valid"
    langs = ordered_langs({split: results[split]})
    values = [results[split][lang][0] for lang in langs]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(langs) + 2), 3.5))
    bars = ax.bar(langs, values, color=["#888" if lang in train_langs else "#3a7" for lang in langs])
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.axhline(sum(values) / len(values), color="k", lw=0.8, label="average")
    if chance is not None:
        ax.axhline(chance, color="r", ls="--", lw=0.8, label="chance")
    ax.set(ylabel=f"{split} {metric} (%)", ylim=(0, 100), title=f"{split} {metric}; grey = fine-tuning languages")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
