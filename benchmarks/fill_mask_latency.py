"""Fill-mask latency: `xlmtrain.inference.fill_masks` vs transformers' `pipeline("fill-mask")` (not a test).

    python benchmarks/fill_mask_latency.py               # small shape (dim 256, 4 layers), 2 threads
    python benchmarks/fill_mask_latency.py --quick       # tiny shape, seconds (smoke run)

Both sides load the same exported model directory (a randomly initialised `XLMWithLMHead` of the shape,
vocabulary and tokenizer of a preprocessed synthetic corpus, without language embeddings so that
transformers' pipeline, which passes no `langs`, runs the same network) and complete the same synthetic `io`
sentences with one mask each, text in, top-5 out. Timed: milliseconds per sentence at batch size 1
(interactive use) and 8 (a `--input` file), median of interleaved repeats so background load hits both
alike. The pipeline wraps a sentence as `<s> .. </s>` (transformers' layout), xlmtrain as `</s> .. </s>`
(XLM's), so their answers legitimately differ; correctness is checked instead by feeding the ids xlmtrain
built to the transformers model directly: the top-5 real words must be the same (else RuntimeError).
`main` returns {batch size: transformers time / xlmtrain time}.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchlib import SHAPES, format_table, machine_line, peak_rss_mb
from xlmtrain.data.dictionary import N_SPECIALS
from xlmtrain.data.preprocessed import PreprocessedData, ensure_preprocessed
from xlmtrain.data.synthetic import render, sample_meaning, write_corpus
from xlmtrain.inference import InferenceModel, fill_masks, load_inference_model
from xlmtrain.inference.loading import pad_batch
from xlmtrain.inference.masked_lm import encode_masked
from xlmtrain.interop.load import save_model
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead

BATCH_SIZES = (1, 8)


def build_model_dir(root: Path, shape_name: str) -> Path:
    """A preprocessed synthetic corpus and a random model of `shape_name` exported with its tokenizer."""
    raw = write_corpus(root / "raw", langs=("io", "vo"), n_mono=2000, n_para=200, seed=0)
    prep = ensure_preprocessed(
        raw, root / "prep", bpe_merges=500, valid_lines=50, test_lines=50, workers=1, progress=False
    )
    data = PreprocessedData(prep)
    shape = SHAPES[shape_name]
    config = XLMConfig(
        vocab_size=len(data.dictionary),
        emb_dim=shape.dim,
        n_layers=shape.layers,
        n_heads=shape.heads,
        n_langs=2,
        use_lang_emb=False,
        lang2id=data.lang2id,
        id2lang={i: lang for lang, i in data.lang2id.items()},
    )
    torch.manual_seed(0)
    save_model(XLMWithLMHead(config), root / "model", format="hf")
    data.tokenizer().save_pretrained(root / "model")
    return root / "model"


def masked_sentences(n: int) -> list[str]:
    """`n` synthetic io sentences, one word replaced by `<mask>`."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        words = render(sample_meaning(rng), "io").split()
        words[rng.randrange(len(words) - 1)] = "<mask>"
        out.append(" ".join(words))
    return out


def check_same_top5(ours: InferenceModel, hf_model: torch.nn.Module, texts: list[str]) -> None:
    """xlmtrain's top-5 == the transformers model's top-5 real words on the same ids; RuntimeError if not."""
    ids = [encode_masked(ours, t, "io").ids for t in texts]
    inputs = pad_batch(ids, ours.dictionary.pad_index, None)
    with torch.no_grad():
        logits = hf_model(input_ids=inputs["input_ids"], lengths=inputs["lengths"]).logits  # (bs, slen, V)
    logits = logits[inputs["input_ids"] == ours.dictionary.mask_index]  # (n_masks, V)
    logits[:, :N_SPECIALS] = float("-inf")
    theirs = logits.topk(5, dim=-1).indices.tolist()
    mine = [[c.token_id for c in p[0].completions] for p in fill_masks(ours, texts, "io", top_k=5)]
    if mine != theirs:
        raise RuntimeError(f"top-5 answers differ: xlmtrain {mine[:2]}... vs transformers {theirs[:2]}...")


def per_sentence_ms(fn: Callable[[], object], n_sentences: int) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start) / n_sentences


def main(argv: list[str] | None = None) -> dict[int, float]:
    """Run the benchmark, print a table, return {batch size: speedup of xlmtrain over transformers}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape and few repeats")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import XLMTokenizer, XLMWithLMHeadModel, pipeline

    repeats, n = (3, 16) if args.quick else (10, 64)
    texts = masked_sentences(n)
    hf_texts = [t.replace("<mask>", "<special1>") for t in texts]  # its mask token
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp), "tiny" if args.quick else "small")
        ours = load_inference_model(model_dir, need_lm_head=True)
        hf_model = XLMWithLMHeadModel.from_pretrained(model_dir).eval()
        check_same_top5(ours, hf_model, texts)
        hf = pipeline(
            "fill-mask", model=hf_model, tokenizer=XLMTokenizer.from_pretrained(model_dir), top_k=5, device="cpu"
        )
        sides: dict[tuple[str, int], Callable[[], object]] = {}
        for bs in BATCH_SIZES:
            sides["xlmtrain", bs] = lambda bs=bs: fill_masks(ours, texts, "io", top_k=5, batch_size=bs)
            sides["transformers", bs] = lambda bs=bs: hf(hf_texts, batch_size=bs)
        for fn in sides.values():
            fn()  # warm-up: Moses/BPE caches, allocator
        times: dict[tuple[str, int], list[float]] = {key: [] for key in sides}
        for _ in range(repeats):  # interleaved
            for key, fn in sides.items():
                times[key].append(per_sentence_ms(fn, n))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(machine_line(args.threads))
    print(
        f"fill-mask, {n} sentences, top-5, ms/sentence: median (min-max) of {repeats}; process peak RSS "
        f"{peak_rss_mb():.0f} MB (both models resident)"
    )
    rows, speedups = [], {}
    for bs in BATCH_SIZES:
        speedups[bs] = median["transformers", bs] / median["xlmtrain", bs]
        spread = {side: f"{median[side, bs]:.2f} ({min(times[side, bs]):.2f}-{max(times[side, bs]):.2f})"
                  for side in ("xlmtrain", "transformers")}  # fmt: skip
        rows.append([bs, spread["xlmtrain"], spread["transformers"], f"{speedups[bs]:.2f}x"])
    print(format_table(["batch", "xlmtrain", "transformers", "speedup"], rows))
    return speedups


if __name__ == "__main__":
    main()
