"""Summarise a fine-tuning sweep (XNLI protocol): mean +- std over seeds under a declared model-selection rule,
beside the published XLM rows. The library behind `python -m xlmtrain.report SWEEP_DIR`.

A sweep is a folder holding run dirs, each with the `results.csv` a fine-tuning job writes (`lang,split,
accuracy,n`) and the `run.json` it records (its command line's overrides and its seed; never Hydra's `.hydra/`).
Runs whose overrides differ only in `seed` (and in where they write: `run_dir`, `run_name`, `hydra.*`) are one
configuration; its seeds are its repetitions. Selection rules
(every one picks by the mean over seeds; ties go to the first configuration in sorted order):
- `en_dev`: one configuration for every language, the best by mean dev accuracy of the training language
  (`en`): honest zero-shot, no target-language data touches the choice.
- `target_dev`: per language, the configuration with the best mean dev accuracy in that language (what XLM's
  authors did, XLM issue #110; it uses target-language dev data).
- `oracle`: per language, the configuration with the best mean TEST accuracy in that language (an upper bound:
  selection on the test set).
Each language then reports the test accuracy of its configuration: mean and sample standard deviation over its
seeds. The average row is the mean over languages; its std is over seeds of the per-seed averages (given when
every selected configuration has the same seeds).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xlmtrain.tasks.published import PUBLISHED_XNLI, XNLI_LANGS
from xlmtrain.training.run_identity import RunIdentityError, read_record

RULES = ("en_dev", "target_dev", "oracle")
_IDENTITY_KEYS = ("seed", "run_dir", "run_name")
"""Overrides that do not change what a run is: its seed (the repetition) and where it writes."""


class SweepError(ValueError):
    """A sweep folder that cannot be summarised (no runs, a bad results.csv, a seed seen twice)."""


@dataclass
class Run:
    """One fine-tuning run: its configuration (overrides without seed and output location), seed, accuracies."""

    directory: Path
    config: str
    seed: str
    accuracy: dict[tuple[str, str], float] = field(default_factory=dict)
    """(split, lang) -> accuracy %; splits `valid` and `test`."""


@dataclass
class LanguageRow:
    """The reported test accuracy of one language (or `avg`) under a rule."""

    lang: str
    config: str
    seeds: list[str]
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (NaN with one seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan


@dataclass
class SweepReport:
    rule: str
    train_lang: str
    rows: list[LanguageRow]
    """Languages in the paper's order, then the others alphabetically, then `avg`."""
    configs: dict[str, dict[str, float]]
    """Configuration -> {"n": seeds, "<train_lang> dev": mean, "test avg": mean}: the sweep at a glance."""


def _overrides(run_dir: Path) -> tuple[str, str]:
    """(configuration key, seed) of a run from the `run.json` it recorded: its command line's overrides less the
    seed and where it wrote, and the seed it ran with (`-` for a run without a record)."""
    try:
        record = read_record(run_dir)
    except RunIdentityError as error:
        raise SweepError(str(error)) from None
    if record is None:
        return "(defaults)", "-"
    kept = []
    for item in record.overrides:
        key = item.lstrip("+~").partition("=")[0]
        if key not in _IDENTITY_KEYS and not key.startswith("hydra."):
            kept.append(item)
    return " ".join(sorted(kept)) or "(defaults)", str(record.identity.get("seed", "-"))


def read_results(path: Path) -> dict[tuple[str, str], float]:
    """`results.csv` -> {(split, lang): accuracy}; `avg` rows skipped. SweepError names the file and line."""
    out: dict[tuple[str, str], float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"lang", "split", "accuracy"} <= set(reader.fieldnames):
            raise SweepError(f"{path}: expected a header lang,split,accuracy,n, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if row["lang"] == "avg":
                continue
            try:
                out[(row["split"], row["lang"])] = float(row["accuracy"])
            except (TypeError, ValueError):
                raise SweepError(f"{path}:{line}: accuracy {row['accuracy']!r} is not a number") from None
    return out


def read_sweep(sweep_dir: Path) -> list[Run]:
    """Every run dir under `sweep_dir` (a folder with results.csv). Raises SweepError when there is none or when
    one configuration has the same seed twice (the two run dirs are named)."""
    runs = []
    seen: dict[tuple[str, str], Path] = {}
    for results in sorted(Path(sweep_dir).rglob("results.csv")):
        run_dir = results.parent
        config, seed = _overrides(run_dir)
        if (config, seed) in seen:
            raise SweepError(
                f"{seen[config, seed]} and {run_dir}: the same configuration ({config}) with the same seed {seed}"
            )
        seen[config, seed] = run_dir
        runs.append(Run(run_dir, config, seed, read_results(results)))
    if not runs:
        raise SweepError(f"{sweep_dir}: no run dir with a results.csv below it")
    return runs


def _by_config(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.config, r.seed)):
        groups.setdefault(run.config, []).append(run)
    return groups


def _mean(runs: Sequence[Run], split: str, lang: str) -> float | None:
    values = [r.accuracy[(split, lang)] for r in runs if (split, lang) in r.accuracy]
    return statistics.fmean(values) if values else None


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _best(groups: dict[str, list[Run]], split: str, lang: str) -> str | None:
    """The configuration with the highest mean accuracy of (split, lang); the first one on ties."""
    best, best_value = None, -math.inf
    for config, members in groups.items():
        value = _mean(members, split, lang)
        if value is not None and value > best_value:
            best, best_value = config, value
    return best


def ordered(langs: set[str]) -> list[str]:
    """The paper's order, then alphabetical."""
    return [lang for lang in XNLI_LANGS if lang in langs] + sorted(langs - set(XNLI_LANGS))


def summarise(runs: Sequence[Run], rule: str = "en_dev", train_lang: str = "en") -> SweepReport:
    """Per-language test accuracy (mean, std over seeds) of the configuration `rule` selects (module docstring).

    Raises SweepError on an unknown rule, or for `en_dev` when no run has dev results in `train_lang`.
    """
    if rule not in RULES:
        raise SweepError(f"select={rule!r}: expected one of {', '.join(RULES)}")
    groups = _by_config(runs)
    langs = ordered({lang for r in runs for split, lang in r.accuracy if split == "test"})
    fixed = None
    if rule == "en_dev":
        fixed = _best(groups, "valid", train_lang)
        if fixed is None:
            raise SweepError(f"select=en_dev: no run has valid results for the training language {train_lang!r}")
    rows = []
    for lang in langs:
        config = fixed or _best(groups, "valid" if rule == "target_dev" else "test", lang)
        if config is None:
            continue
        members = [r for r in groups[config] if ("test", lang) in r.accuracy]
        if members:
            rows.append(
                LanguageRow(lang, config, [r.seed for r in members], [r.accuracy[("test", lang)] for r in members])
            )
    if rows:
        rows.append(_average(rows))
    configs = {
        config: {"n": len(members), f"{train_lang} dev": _nan_if_none(_mean(members, "valid", train_lang)),
                 "test avg": statistics.fmean(_nan_if_none(_mean(members, "test", lang)) for lang in langs)}
        for config, members in groups.items()
    }  # fmt: skip
    return SweepReport(rule, train_lang, rows, configs)


def _average(rows: Sequence[LanguageRow]) -> LanguageRow:
    """Mean over languages; per-seed averages (hence a std) when every language has the same seeds."""
    seeds = rows[0].seeds
    configs = sorted({r.config for r in rows})
    config = configs[0] if len(configs) == 1 else "per language"
    if all(r.seeds == seeds for r in rows):
        values = [statistics.fmean(r.values[i] for r in rows) for i in range(len(seeds))]
        return LanguageRow("avg", config, list(seeds), values)
    return LanguageRow("avg", config, [], [statistics.fmean(r.mean for r in rows)])


def _cell(mean: float, std: float) -> str:
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def published_avg(name: str, langs: Sequence[str]) -> float | None:
    values = [PUBLISHED_XNLI[name][lang] for lang in langs if lang in PUBLISHED_XNLI[name]]
    return statistics.fmean(values) if values and len(values) == len(langs) else None


def write_csv(report: SweepReport, path: Path) -> Path:
    """`lang,select,config,n_seeds,mean,std,<published rows>` (published columns empty where not published)."""
    names = list(PUBLISHED_XNLI)
    langs = [r.lang for r in report.rows if r.lang != "avg"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["lang", "select", "config", "n_seeds", "mean", "std", *names])
        for row in report.rows:
            if row.lang == "avg":
                published = [published_avg(name, langs) for name in names]
            else:
                published = [PUBLISHED_XNLI[name].get(row.lang) for name in names]
            std = "" if math.isnan(row.std) else f"{row.std:.2f}"
            writer.writerow([row.lang, report.rule, row.config, len(row.seeds), f"{row.mean:.2f}", std,
                             *("" if p is None else f"{p:.2f}" for p in published)])  # fmt: skip
    return path


def markdown(report: SweepReport) -> str:
    """The per-language table beside the published rows, the rule, and the sweep's configurations."""
    names = list(PUBLISHED_XNLI)
    langs = [r.lang for r in report.rows if r.lang != "avg"]
    lines = [
        (
            f"XNLI test accuracy (%), mean ± std over seeds; model selection `{report.rule}` "
            f"(training language {report.train_lang})."
        ),
        "",
        f"| lang | this sweep | seeds | {' | '.join(names)} | configuration |",
        "|---|---:|---:|" + "---:|" * len(names) + "---|",
    ]
    for row in report.rows:
        if row.lang == "avg":
            published = [published_avg(name, langs) for name in names]
        else:
            published = [PUBLISHED_XNLI[name].get(row.lang) for name in names]
        cells = ["" if p is None else f"{p:.1f}" for p in published]
        lines.append(
            f"| {row.lang} | {_cell(row.mean, row.std)} | {len(row.seeds)} | {' | '.join(cells)} | {row.config} |"
        )
    lines += [
        "",
        (
            "Published: Lample & Conneau 2019, Table 1 (zero-shot, selected per language on its dev set). The "
            "average of the published rows is over the languages above."
        ),
        "",
        f"| configuration | seeds | {report.train_lang} dev (mean) | test avg (mean) |",
        "|---|---:|---:|---:|",
    ]
    for config, stats in report.configs.items():
        lines.append(f"| {config} | {stats['n']} | {stats[f'{report.train_lang} dev']:.2f} | {stats['test avg']:.2f} |")
    return "\n".join(lines)


def plot(report: SweepReport, path: Path) -> Path:
    """Grouped bars per language: this sweep (std as error bar) and each published row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    langs = [r.lang for r in rows]
    names = list(PUBLISHED_XNLI)
    width = 0.8 / (1 + len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(langs) + 2), 3.8))
    xs = range(len(langs))
    ax.bar([x - 0.4 + width / 2 for x in xs], [r.mean for r in rows], width,
           yerr=[0 if math.isnan(r.std) else r.std for r in rows], capsize=2, label=f"this sweep ({report.rule})")  # fmt: skip
    plain = [r.lang for r in rows if r.lang != "avg"]
    for k, name in enumerate(names, start=1):
        values = [published_avg(name, plain) if lang == "avg" else PUBLISHED_XNLI[name].get(lang) for lang in langs]
        ax.bar(
            [x - 0.4 + width * (k + 0.5) for x in xs], [math.nan if v is None else v for v in values], width, label=name
        )
    ax.set_xticks(list(xs), langs)
    ax.set(ylabel="XNLI test accuracy (%)", ylim=(0, 100), title=f"mean ± std over seeds, selection {report.rule}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    sweep_dir: Path, rule: str = "en_dev", train_lang: str = "en", out_dir: Path | None = None
) -> SweepReport:
    """Read the sweep, summarise it and write `xnli_report_<rule>.{csv,md,png}` into `out_dir` (default
    `sweep_dir`)."""
    report = summarise(read_sweep(sweep_dir), rule, train_lang)
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(report, out / f"xnli_report_{rule}.csv")
    (out / f"xnli_report_{rule}.md").write_text(markdown(report) + "\n", encoding="utf-8")
    plot(report, out / f"xnli_report_{rule}.png")
    return report
