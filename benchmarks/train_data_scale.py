"""Training-side data cost vs corpus size: peak RSS of the batch source, and mid-epoch resume cost (not a test).

    python benchmarks/train_data_scale.py PREPROCESSED_DIR [PREPROCESSED_DIR ...] [--steps 10000]

For each preprocessed folder (e.g. the 100 MB and 1 GB outputs of benchmarks/preprocess.py,
`/tmp/bench/100mb/out-w2` and `/tmp/bench/1000mb/out-w2`), in a fresh process: build the pretraining batch source
(`PretrainBatches`, an MLM stream per language and TLM on every pair, XLM's batch settings), draw `--steps`
batches, and report the peak RSS of the process. Resume: the state after batch 10 and after batch `--steps` is
restored into a new batch source, timed until its first batch, and that batch is checked to equal the batch the
uninterrupted source drew next (exact resume). Issue #15's targets: RSS within 10% between sizes; resume at step
10,000 within 2x of step 10 (O(1): positions are restored, nothing is replayed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _source(directory: Path):  # noqa: ANN202
    from xlmtrain.data.preprocessed import PreprocessedData
    from xlmtrain.objectives.data import BatchSettings, MaskingSettings, PretrainBatches
    from xlmtrain.objectives.streams import StreamSpec

    data = PreprocessedData(directory)
    specs = [StreamSpec("mlm", lang) for lang in data.manifest["monolingual"]]
    specs += [StreamSpec("tlm", pair) for pair in data.pairs]
    dico = data.dictionary
    return PretrainBatches(specs, data, vocab_size=len(dico), mask_index=dico.mask_index, pad_index=dico.pad_index,
                           counts=dico.counts, batching=BatchSettings(), masking=MaskingSettings(), seed=0)  # fmt: skip


def _same(a, b) -> bool:  # noqa: ANN001 (two TrainItems)
    import torch

    def equal(x, y) -> bool:  # noqa: ANN001 (tensors, dataclasses of them, or plain values)
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if dataclasses.is_dataclass(x):
            return type(x) is type(y) and all(
                equal(getattr(x, f.name), getattr(y, f.name)) for f in dataclasses.fields(x)
            )
        return x == y

    return (a.stream, a.index) == (b.stream, b.index) and equal(a.batch, b.batch)


def measure(directory: Path, steps: int) -> dict:
    start = time.perf_counter()
    source = _source(directory)
    it = iter(source)
    states, nexts = {}, {}
    for k in range(steps + 1):
        item = next(it)
        if k in (10, steps):
            states[k] = source.state_after(k)
        if k - 1 in states and k - 1 not in nexts:
            nexts[k - 1] = item
    nexts[steps] = next(it)
    draw_s = time.perf_counter() - start
    # after the draws, one source alive: anonymous memory (the batch plans, the process) vs file-backed pages
    # (the memory-mapped token files the draws touched: page cache, which the kernel reclaims under pressure)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    anon, file = (int(status[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile"))
    resume = {}
    for k, state in states.items():
        t = time.perf_counter()
        fresh = _source(directory)
        fresh.restore(state)
        first = next(iter(fresh))
        resume[k] = {"s": round(time.perf_counter() - t, 3), "exact": _same(first, nexts[k])}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = sum(c["tokens"]["train"] for c in source.data.manifest["counts"].values())
    return {"dir": str(directory), "train_tokens": tokens, "steps": steps, "draw_s": round(draw_s, 1),
            "peak_rss_mb": round(rss), "rss_anon_mb": round(anon), "rss_file_mb": round(file), "resume": {str(k): v for k, v in resume.items()}}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(a.dirs[0], a.steps)))
        return
    results = []
    for d in a.dirs:
        run = subprocess.run([sys.executable, __file__, str(d), "--steps", str(a.steps), "--one"], check=True,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    if len(results) > 1:
        big, small = results[-1], results[0]
        for key, what in (("peak_rss_mb", "peak RSS (anonymous + file-backed)"), ("rss_anon_mb", "anonymous RSS")):
            print(f"{what} {big[key]} MB vs {small[key]} MB: {big[key] / small[key]:.2f}x (target <= 1.10x)")
    for r in results:
        k10, kn = r["resume"]["10"], r["resume"][str(r["steps"])]
        print(f"{r['dir']}: resume at step {r['steps']} {kn['s']} s vs step 10 {k10['s']} s "
              f"({kn['s'] / k10['s']:.2f}x, target <= 2x); exact: {k10['exact'] and kn['exact']}")  # fmt: skip


if __name__ == "__main__":
    main()
