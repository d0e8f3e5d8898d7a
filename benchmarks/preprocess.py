"""Preprocessing throughput and memory (not a test).

    python benchmarks/preprocess.py --mb 50 --workdir /tmp/xlmtrain-bench

Generates a multilingual corpus (4 monolingual languages + one parallel pair, Zipf-distributed words with
accents/punctuation/digits), then measures, each in a fresh subprocess:
- `xlmtrain`: the full preprocessor (`workers=2`: tokenise, learn BPE, vocab, binarise, export);
- `baseline`: what a user does by hand, single process: sacremoses punctuation normalisation + tokenisation,
  then fastBPE applied with the same codes (no BPE learning, no binarisation);
- `iterate`: StreamBatches / SentenceBatches over the built train corpora (peak RSS vs corpus size).
Prints wall-clock MB/s and sentences/s, CPU seconds (user + system, the phase and all its processes), the
speedup of xlmtrain over the baseline in wall-clock (what a user waits; needs 2 free cores to reach 2x from
parallelism alone) and in CPU time (independent of other load on the machine), the 1-minute load average
before and after, and peak RSS (largest process) of each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LANGS = {"en": "thwaesrnoil", "fr": "éèaeiousrtnlç", "de": "äöüaeinrstßh", "es": "ñáéaeiosrnld"}
PUNCT = [",", ".", "!", "?", ";", ":", "'s", "(", ")", '"']


def _vocabulary(letters: str, rng: np.random.Generator, n: int = 20000) -> np.ndarray:
    words = {"".join(rng.choice(list(letters), size=rng.integers(2, 11))) for _ in range(n)}
    return np.array(sorted(words))


def generate(root: Path, mb: float, seed: int = 0) -> int:
    """Write ~`mb` MB of raw text under root/raw (4 mono files + en-fr pair); returns the line count."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = {lang: _vocabulary(letters, rng) for lang, letters in LANGS.items()}
    per_file = mb * 1e6 / (len(LANGS) + 2)
    n_lines = 0

    def lines(lang: str, target: float):
        size = 0
        zipf = np.minimum(rng.zipf(1.2, size=4_000_000), len(vocab[lang])) - 1
        k = 0
        while size < target:
            n = int(rng.integers(3, 30))
            if k + n > len(zipf):
                k = 0
            words = list(vocab[lang][zipf[k : k + n]])
            k += n
            words[0] = words[0].capitalize()
            if rng.random() < 0.3:
                words.insert(int(rng.integers(len(words))), str(int(rng.integers(0, 10000))))
            if rng.random() < 0.5:
                words.insert(int(rng.integers(len(words))), PUNCT[int(rng.integers(len(PUNCT)))])
            line = " ".join(words) + "."
            size += len(line.encode()) + 1
            yield line

    for lang in LANGS:
        with open(raw / f"{lang}.txt", "w", encoding="utf-8") as f:
            for line in lines(lang, per_file):
                f.write(line + "\n")
                n_lines += 1
    with open(raw / "en-fr.en", "w", encoding="utf-8") as fe, open(raw / "en-fr.fr", "w", encoding="utf-8") as ff:
        for le, lf in zip(lines("en", per_file), lines("fr", per_file * 10)):
            fe.write(le + "\n")
            ff.write(lf + "\n")
            n_lines += 2
    return n_lines


def phase_xlmtrain(root: Path, merges: int) -> None:
    from xlmtrain.data.pipeline import PreprocessSettings, preprocess

    shutil.rmtree(root / "out", ignore_errors=True)  # a cold build, not a cache hit
    settings = PreprocessSettings(bpe_merges=merges, valid_lines=500, test_lines=500, workers=2, progress=False)
    preprocess(root / "raw", root / "out", settings)


def phase_baseline(root: Path) -> None:
    import fastBPE
    import sacremoses

    bpe = fastBPE.fastBPE(str(root / "out" / "codes"))
    with open(root / "baseline.bpe", "w", encoding="utf-8") as out:
        for path in sorted((root / "raw").iterdir()):
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


def phase_iterate(root: Path, n_batches: int) -> None:
    from xlmtrain.data.preprocessed import PreprocessedData
    from xlmtrain.data.streams import SentenceBatches, StreamBatches

    data = PreprocessedData(root / "out")
    for lang in data.manifest["monolingual"]:
        stream = StreamBatches(data.mono("train", lang), bptt=256, batch_size=32, seed=0)
        sent = SentenceBatches(data.mono("train", lang), tokens_per_batch=4000, seed=0)
        for _ in range(n_batches):
            next(stream)
            next(sent)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(args: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system of the phase and every process it started) and peak RSS (MB,
    the largest process: the phase or one of its workers) of a phase run in a fresh interpreter (the phase
    prints its own peak as its last stdout line)."""
    cpu, start = _children_cpu_s(), time.perf_counter()
    run = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - start, _children_cpu_s() - cpu, float(run.stdout.split()[-1])


def _peak_rss_mb() -> float:
    usage = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(usage) / 1024  # Linux reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default 50)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/xlmtrain-bench"))
    p.add_argument("--merges", type=int, default=30000)
    p.add_argument("--phase", choices=["xlmtrain", "baseline", "iterate"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        phases = {"xlmtrain": lambda: phase_xlmtrain(a.workdir, a.merges), "baseline": lambda: phase_baseline(a.workdir),
                  "iterate": lambda: phase_iterate(a.workdir, 200)}  # fmt: skip
        phases[a.phase]()
        print(_peak_rss_mb())
        return

    n_lines = generate(a.workdir, a.mb)
    size_mb = sum(f.stat().st_size for f in (a.workdir / "raw").iterdir()) / 1e6
    common = ["--workdir", str(a.workdir), "--merges", str(a.merges)]
    load_before = os.getloadavg()[0]
    ours, ours_cpu, ours_rss = _measure(["--phase", "xlmtrain", *common])
    base, base_cpu, base_rss = _measure(["--phase", "baseline", *common])
    it, _, it_rss = _measure(["--phase", "iterate", *common])
    result = {
        "corpus_mb": round(size_mb, 1), "lines": n_lines, "bpe_merges": a.merges,
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cores": os.cpu_count(),
        "xlmtrain_s": round(ours, 1), "xlmtrain_cpu_s": round(ours_cpu, 1), "xlmtrain_mb_s": round(size_mb / ours, 2),
        "xlmtrain_sent_s": round(n_lines / ours), "xlmtrain_peak_rss_mb": round(ours_rss),
        "baseline_s": round(base, 1), "baseline_cpu_s": round(base_cpu, 1), "baseline_mb_s": round(size_mb / base, 2),
        "baseline_sent_s": round(n_lines / base), "baseline_peak_rss_mb": round(base_rss),
        "speedup_wall": round(base / ours, 2), "speedup_cpu": round(base_cpu / ours_cpu, 2),
        "iterate_peak_rss_mb": round(it_rss), "iterate_s": round(it, 1),
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
