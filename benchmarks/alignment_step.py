"""The training step of a `trans_rank` stream vs two plain training passes of the same encoder (not a test).

    python benchmarks/alignment_step.py              # small shape, 64 pairs of 2 x ~40 tokens, 2 threads
    python benchmarks/alignment_step.py --quick      # tiny shape, seconds (smoke run)

A translation-ranking step encodes both sides of a pair batch separately, pools them, scores every pair
against every candidate (a (bs, bs) cosine matrix in both directions, LaBSE's margin softmax) and back-propagates.
Its floor is the same two encoder passes with a trivial loss: forward both sides, pool, sum, backward. Each
contender ends with `clip_grad_norm_(5.0)` and an AdamW step, as `PretrainModule` trains (without Lightning).
The steps are interleaved so background load hits both alike; the last line is
`trans_rank step overhead vs two plain encoder passes: +X.X%` (ratio of median step times).
"""

from __future__ import annotations

import argparse

import torch

from benchlib import SHAPES, format_table, machine_line, time_interleaved
from xlmtrain.model.config import XLMConfig
from xlmtrain.objectives.alignment import AlignmentSettings
from xlmtrain.objectives.batches import PairBatch, pair_batch
from xlmtrain.objectives.pretrain import PretrainModule
from xlmtrain.objectives.streams import StreamSpec


def _batch(vocab: int, pairs: int, mean_len: int, generator: torch.Generator) -> PairBatch:
    sides = []
    for _ in range(2):
        lengths = torch.randint(mean_len // 2, mean_len * 3 // 2, (pairs,), generator=generator)  # (bs,)
        ids = torch.randint(14, vocab, (pairs, int(lengths.max())), generator=generator)  # (bs, slen)
        ids[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]] = 2
        ids[:, 0] = 1
        sides.append((ids, lengths))
    (x1, len1), (x2, len2) = sides
    return pair_batch(x1, len1, x2, len2, lang1_id=0, lang2_id=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shape, few steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = SHAPES["tiny" if args.quick else "small"]
    repeats = 3 if args.quick else args.repeats
    config = XLMConfig(vocab_size=shape.vocab, emb_dim=shape.dim, n_layers=shape.layers, n_heads=shape.heads,
                       n_langs=2, use_lang_emb=False, dropout=0.1, attention_dropout=0.1)  # fmt: skip
    module = PretrainModule(config, [StreamSpec("trans_rank", "en-fr")], optimizer=torch.optim.AdamW,
                            alignment=AlignmentSettings())  # fmt: skip
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.0)
    batch = _batch(shape.vocab, args.pairs, 40, torch.Generator().manual_seed(0))

    def finish(loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def trans_rank_step() -> None:
        finish(module.alignment_losses(batch, "trans_rank").mean())

    def two_passes() -> None:
        src, tgt = module._sides(batch, module.model.transformer)
        finish(src.sum() + tgt.sum())

    print(machine_line(args.threads))
    stats = time_interleaved({"trans_rank step": trans_rank_step, "two plain encoder passes": two_passes},
                             warmup=2, repeats=repeats)  # fmt: skip
    tokens = int(batch.src_lengths.sum() + batch.tgt_lengths.sum())
    rows = [(name, f"{s.median_s * 1000:.1f}", f"{min(s.seconds) * 1000:.1f}", f"{max(s.seconds) * 1000:.1f}",
             f"{tokens / s.median_s:.0f}") for name, s in stats.items()]  # fmt: skip
    print(f"shape {shape.name} (vocab {shape.vocab}, dim {shape.dim}, {shape.layers} layers), {args.pairs} pairs, "
          f"{tokens} tokens per step, {repeats} interleaved steps each")  # fmt: skip
    print(format_table(["contender", "median ms", "min ms", "max ms", "tokens/s"], rows))
    ratio = stats["trans_rank step"].median_s / stats["two plain encoder passes"].median_s
    print(f"trans_rank step overhead vs two plain encoder passes: {100 * (ratio - 1):+.1f}%")


if __name__ == "__main__":
    main()
