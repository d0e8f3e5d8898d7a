"""Preprocessing throughput and memory up to gigabytes of text (not a test).

    python benchmarks/preprocess.py --mb 1000 --workdir /tmp/bench   # the issue #15 run (~25 min, quiet 2 cores)
    python benchmarks/preprocess.py --mb 20                          # a quick functional check

Generates a multilingual corpus whose vocabulary grows like real text's (Heaps' law): every language draws word
ranks from a Zipf law over 3 million ranks (exponent 1.3: the top 100k words cover ~97% of the tokens and the
distinct words grow like tokens^0.77), and rank r is spelt with syllables of the language's script (Latin with
accents for en/fr/de, Cyrillic for ru, Greek for el), so frequent words are short and new words keep appearing
as the corpus grows; sentences get capitals, numbers and punctuation. Five monolingual files plus the en-fr pair.
For `--mb` above 100, a 100 MB corpus is measured too (the reference for the memory target and the size the hand
baseline runs at).

Each phase runs in a fresh subprocess; for each corpus size it prints:
- `xlmtrain w=1`, `xlmtrain w=2`: the whole preprocessor, cold (BPE codes + vocabulary learned on the default
  `bpe_sample_mb` sample, tokenise, BPE, binarise, manifest, `hf_tokenizer/`) with `workers=1` and `workers=2`;
- `baseline` (sizes <= 100 MB, or `--baseline-max-mb`): what a user does by hand, one process: sacremoses punctuation normalisation +
  tokenisation, then fastBPE applied with the same codes (no BPE learning, no binarisation);
- `iterate`: StreamBatches / SentenceBatches over the built train corpora.
Columns: wall seconds, MB/s, CPU seconds (user + system of the phase and its processes), peak RSS of the
largest process and peak of the sum over the phase's processes (sampled every 0.1 s), the 1-minute load.
The targets of issue #15 are checked at the end (peak RSS <= 1.5 GB at 1 GB and within 20% of its value at
100 MB; w=2 >= 1.7x w=1; xlmtrain >= 3x the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

SCRIPTS = {
    "en": ("bcdfghklmnprstvw", "aeiouy"),
    "fr": ("bcdfgjlmnprstv", "aeiouéèàû"),
    "de": ("bdfghklmnrstwzß", "aeiouäöü"),
    "ru": ("бвгджзклмнпрстфх", "аеиоуыэюя"),
    "el": ("βγδζθκλμνξπρστφχ", "αεηιουω"),
}
PUNCT = np.array([",", "!", "?", ";", ":", "'s", "(", ")", '"', "-"])
N_RANKS = 3_000_000
ZIPF_EXPONENT = 1.3
BASELINE_MAX_MB = 100


def _syllables(lang: str) -> list[str]:
    consonants, vowels = SCRIPTS[lang]
    return [c + v for c in consonants for v in vowels] + list(vowels)


def _spell(ranks: np.ndarray, syllables: list[str]) -> np.ndarray:
    """Rank r -> the digits of r + 1 in base len(syllables), as syllables (frequent ranks give short words)."""
    base = len(syllables)
    out = np.empty(len(ranks), dtype=object)
    for i, r in enumerate(ranks.tolist()):
        r += 1
        word = ""
        while r:
            r, d = divmod(r, base)
            word += syllables[d]
        out[i] = word
    return out


class _Language:
    def __init__(self, lang: str, rng: np.random.Generator) -> None:
        self.syllables, self.rng = _syllables(lang), rng
        self.spelt: dict[int, str] = {}

    def lines(self, target_bytes: float):
        """Yield lines until about `target_bytes` bytes (UTF-8, newlines included) were produced."""
        rng, size = self.rng, 0
        while size < target_bytes:
            ranks = (rng.zipf(ZIPF_EXPONENT, size=200_000) - 1) % N_RANKS
            uniq, inverse = np.unique(ranks, return_inverse=True)
            new = [r for r in uniq.tolist() if r not in self.spelt]
            for r, w in zip(new, _spell(np.array(new, dtype=np.int64), self.syllables)):
                self.spelt[r] = w
            words = np.array([self.spelt[r] for r in uniq.tolist()], dtype=object)[inverse]
            lengths = rng.integers(3, 30, size=len(words) // 15)
            ends = np.cumsum(lengths)
            numbers, punct = rng.integers(0, 10000, size=len(lengths)), rng.integers(0, len(PUNCT), size=len(lengths))
            coin = rng.random((len(lengths), 2))
            start = 0
            for i, end in enumerate(ends.tolist()):
                if end > len(words):
                    break
                sent = list(words[start:end])
                start = end
                sent[0] = sent[0].capitalize()
                if coin[i, 0] < 0.3:
                    sent.insert(len(sent) // 2, str(numbers[i]))
                if coin[i, 1] < 0.5:
                    sent.insert(len(sent) - 1, PUNCT[punct[i]])
                line = " ".join(sent) + "."
                size += len(line.encode()) + 1
                yield line
                if size >= target_bytes:
                    return


def generate(raw: Path, mb: float, seed: int = 0) -> int:
    """Write ~`mb` MB under `raw` (5 monolingual files + the en-fr pair); returns the line count. A corpus
    generated before with the same size and seed is reused."""
    stamp = raw / ".generated.json"
    spec = {"mb": mb, "seed": seed, "zipf": ZIPF_EXPONENT, "version": 2}
    if stamp.is_file() and json.loads(stamp.read_text())["spec"] == spec:
        return json.loads(stamp.read_text())["lines"]
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    per_file = mb * 1e6 / (len(SCRIPTS) + 2)
    n_lines = 0
    for k, lang in enumerate(SCRIPTS):
        with open(raw / f"{lang}.txt", "w", encoding="utf-8") as f:
            for line in _Language(lang, np.random.default_rng([seed, k])).lines(per_file):
                f.write(line + "\n")
                n_lines += 1
    en, fr = _Language("en", np.random.default_rng([seed, 10])), _Language("fr", np.random.default_rng([seed, 11]))
    with open(raw / "en-fr.en", "w", encoding="utf-8") as fe, open(raw / "en-fr.fr", "w", encoding="utf-8") as ff:
        for le, lf in zip(en.lines(per_file), fr.lines(per_file * 10)):
            fe.write(le + "\n")
            ff.write(lf + "\n")
            n_lines += 2
    stamp.write_text(json.dumps({"spec": spec, "lines": n_lines}))
    return n_lines


def phase_xlmtrain(root: Path, merges: int, workers: int) -> None:
    from xlmtrain.data.pipeline import PreprocessSettings, preprocess

    out = root / f"out-w{workers}"
    shutil.rmtree(out, ignore_errors=True)  # a cold build, not a cache hit
    settings = PreprocessSettings(bpe_merges=merges, valid_lines=500, test_lines=500, workers=workers, progress=False)
    preprocess(root / "raw", out, settings)


def phase_baseline(root: Path) -> None:
    import fastBPE
    import sacremoses

    bpe = fastBPE.fastBPE(str(root / "out-w2" / "codes"))
    with open(root / "baseline.bpe", "w", encoding="utf-8") as out:
        for path in sorted((root / "raw").glob("[a-z]*")):
            lang = path.suffix.lstrip(".") if path.suffix != ".txt" else path.stem
            norm, tok = sacremoses.MosesPunctNormalizer(lang=lang), sacremoses.MosesTokenizer(lang=lang)
            batch = []
            with open(path, encoding="utf-8") as f:
                for line in f:
                    batch.append(tok.tokenize(norm.normalize(line.rstrip("\n")), escape=False, return_str=True))
                    if len(batch) == 10000:
                        out.write("\n".join(bpe.apply(batch)) + "\n")
                        batch = []
            if batch:
                out.write("\n".join(bpe.apply(batch)) + "\n")
    (root / "baseline.bpe").unlink()


def phase_iterate(root: Path, n_batches: int) -> None:
    from xlmtrain.data.corpus_batches import SentenceBatches, StreamBatches
    from xlmtrain.data.preprocessed import PreprocessedData

    data = PreprocessedData(root / "out-w2")
    for lang in data.manifest["monolingual"]:
        stream = StreamBatches(data.mono("train", lang), bptt=256, batch_size=32, seed=0)
        sent = SentenceBatches(data.mono("train", lang), tokens_per_batch=4000, seed=0)
        for _ in range(n_batches):
            next(stream)
            next(sent)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(args: list[str]) -> dict:
    """Run a phase in a fresh interpreter: wall s, CPU s (the phase and every process it started), peak RSS MB
    of its largest process (the kernel's maximum) and of the sum over its processes (sampled every 0.1 s)."""
    cpu, start = _children_cpu_s(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak_sum, done = [0.0], threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                peak_sum[0] = max(peak_sum[0], total / 2**20)
            except psutil.Error:
                pass
            done.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"phase {args[1]} failed (exit {proc.returncode})")
    return {"s": time.perf_counter() - start, "cpu_s": _children_cpu_s() - cpu,
            "rss_max_mb": float(stdout.split()[-1]), "rss_sum_mb": peak_sum[0]}  # fmt: skip


def _peak_rss_mb() -> float:
    usage = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(usage) / 1024  # Linux reports KiB


def run_size(workdir: Path, mb: float, merges: int, baseline_max_mb: float) -> dict:
    root = workdir / f"{mb:g}mb"
    t = time.perf_counter()
    n_lines = generate(root / "raw", mb)
    gen_s = time.perf_counter() - t
    size_mb = sum(f.stat().st_size for f in (root / "raw").glob("[a-z]*")) / 1e6
    common = ["--workdir", str(root), "--merges", str(merges)]
    load = os.getloadavg()[0]
    rows = {"w1": _measure(["--phase", "w1", *common]), "w2": _measure(["--phase", "w2", *common])}
    if mb <= baseline_max_mb:
        rows["baseline"] = _measure(["--phase", "baseline", *common])
    rows["iterate"] = _measure(["--phase", "iterate", *common])
    for name, r in rows.items():
        r["mb_s"] = size_mb / r["s"] if name != "iterate" else None
    words = json.loads((root / "out-w2" / "manifest.json").read_text())
    return {"corpus_mb": size_mb, "lines": n_lines, "generate_s": gen_s, "load_avg_1min": [load, os.getloadavg()[0]],
            "vocab_size": words["vocab_size"], "phases": rows}  # fmt: skip


def _table(results: list[dict]) -> str:
    out = ["| corpus MB | phase | wall s | MB/s | CPU s | peak RSS MB (largest) | peak RSS MB (sum) |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for res in results:
        for name, r in res["phases"].items():
            mbs = f"{r['mb_s']:.2f}" if r["mb_s"] else "-"
            out.append(f"| {res['corpus_mb']:.0f} | {name} | {r['s']:.1f} | {mbs} | {r['cpu_s']:.1f} | "
                       f"{r['rss_max_mb']:.0f} | {r['rss_sum_mb']:.0f} |")  # fmt: skip
    return "\n".join(out)


def _targets(results: list[dict]) -> list[str]:
    lines = []
    big = results[-1]
    rss = big["phases"]["w2"]["rss_sum_mb"]
    lines.append(f"peak RSS (sum, w=2) at {big['corpus_mb']:.0f} MB: {rss:.0f} MB (target <= 1536)")
    if len(results) > 1:
        ref = results[0]["phases"]["w2"]["rss_sum_mb"]
        lines.append(f"peak RSS {big['corpus_mb']:.0f} MB vs {results[0]['corpus_mb']:.0f} MB: {rss / ref:.2f}x "
                     "(target <= 1.20x)")  # fmt: skip
    for res in results:
        p = res["phases"]
        ratio = p["w1"]["s"] / p["w2"]["s"]
        lines.append(f"{res['corpus_mb']:.0f} MB: w=2 / w=1 throughput {ratio:.2f}x (target >= 1.7x)")
        if "baseline" in p:
            wall, cpu = p["baseline"]["s"] / p["w2"]["s"], p["baseline"]["cpu_s"] / p["w2"]["cpu_s"]
            lines.append(f"{res['corpus_mb']:.0f} MB: xlmtrain w=2 vs sacremoses + fastBPE by hand "
                         f"{wall:.2f}x wall, {cpu:.2f}x CPU (target >= 3x)")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default 50; above 100, 100 MB runs too)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/xlmtrain-bench"))
    p.add_argument("--merges", type=int, default=30000)
    p.add_argument("--baseline-max-mb", type=float, default=BASELINE_MAX_MB,
                   help=f"run the hand baseline at sizes up to this (default {BASELINE_MAX_MB}; ~2 s/MB on one core)")  # fmt: skip
    p.add_argument("--phase", choices=["w1", "w2", "baseline", "iterate"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        phases = {"w1": lambda: phase_xlmtrain(a.workdir, a.merges, 1),
                  "w2": lambda: phase_xlmtrain(a.workdir, a.merges, 2),
                  "baseline": lambda: phase_baseline(a.workdir),
                  "iterate": lambda: phase_iterate(a.workdir, 200)}  # fmt: skip
        phases[a.phase]()
        print(_peak_rss_mb())
        return
    sizes = sorted({min(a.mb, BASELINE_MAX_MB), a.mb})
    results = [run_size(a.workdir, mb, a.merges, a.baseline_max_mb) for mb in sizes]
    print(json.dumps(results, indent=1))
    print(
        f"\ncores {os.cpu_count()}, bpe_merges {a.merges}, load average (1 min) before/after each size: "
        + ", ".join(f"{r['load_avg_1min'][0]:.1f}/{r['load_avg_1min'][1]:.1f}" for r in results)
    )
    print(_table(results))
    print("\n".join(_targets(results)))


if __name__ == "__main__":
    main()
