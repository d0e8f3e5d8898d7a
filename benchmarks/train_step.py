"""Training-step throughput: xlmtrain's MLM/TLM step vs transformers' `XLMWithLMHeadModel` (not a test).

    python benchmarks/train_step.py                      # small + base, batch 16 x 128, 2 threads
    python benchmarks/train_step.py --quick              # tiny shape, seconds (smoke run)

Both sides train the same batches (same corrupted ids, same targets), with the same threads, in the same
process, steps interleaved so that background load hits both alike:
- xlmtrain: the `PretrainModule` step without Lightning: `XLMWithLMHead.masked_lm_loss` (logits only at the
  ~15% predicted positions, projection + CE fused), mean CE, backward, `clip_grad_norm_(5.0)` (conf/trainer), AdamW.
- transformers: as its `run_mlm` example trains it through `Trainer`: labels at the masked positions and -100
  elsewhere, full-vocabulary logits and CE at every position, backward, `clip_grad_norm_(1.0)` (Trainer's
  `max_grad_norm`), AdamW with `fused=True` (Trainer's default `adamw_torch_fused` on torch >= 2.8).
Both optimizers are fused AdamW, lr 1e-4, weight decay 0 (`--unfused-adam` to use the for-loop one on both).
fp32 by default; `--bf16` runs both under bf16 autocast; `--compile` adds a third contender, xlmtrain compiled
(`model.compile()`, as `compile=true`), and the last line is then the compiled one's speedup.
`--device cuda` runs both on the GPU (every step synchronised before the clock stops; MFU against the matmul peak of
the run's dtype, bf16 with `--bf16`, measured on the GPU in the same run); `benchmarks/gpu_check.sh` runs it so.

Tokens per step = batch x slen input positions. MFU = analytic matmul FLOPs of the step (see
`benchlib.train_step_flops`: 3 x (L * T * (24 d^2 + 4 slen d) + 2 d V * n_logits), n_logits = predicted
positions for xlmtrain, every position for transformers) / step time / the fp32 `torch.mm` GFLOP/s measured
in this run. Peak RSS is the whole process's (both models are resident). The last line is
`<shape> mlm speedup vs transformers: X.XXx` (ratio of median tokens/s) for the last shape.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import XLMConfig as HFXLMConfig
from transformers import XLMWithLMHeadModel

from benchlib import (
    SHAPES,
    Shape,
    format_table,
    machine_description,
    matmul_peak_gflops,
    time_interleaved,
    train_step_flops,
)
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead
from xlmtrain.objectives.batches import LMBatch, concat_pair, constant_langs, with_host_layout
from xlmtrain.objectives.masking import mask_tokens

MASK_INDEX, PAD_INDEX, EOS_INDEX, FIRST_WORD = 5, 2, 1, 14
XLMTRAIN_CLIP, TRANSFORMERS_CLIP = 5.0, 1.0


@dataclass
class Pair:
    """One batch in both input conventions."""

    xlm: LMBatch
    hf: dict[str, torch.Tensor]


def model_config(shape: Shape) -> XLMConfig:
    """XLM config of a benchmark shape: two languages (TLM needs them), dropout 0.1 as XLM's defaults."""
    return XLMConfig(vocab_size=shape.vocab, emb_dim=shape.dim, n_layers=shape.layers, n_heads=shape.heads, n_langs=2)


def _hf_inputs(batch: LMBatch) -> dict[str, torch.Tensor]:
    labels = torch.full_like(batch.input_ids, -100)
    labels[batch.pred_mask] = batch.labels  # run_mlm's collator: -100 at every unmasked position
    inputs = {"input_ids": batch.input_ids, "langs": batch.langs, "lengths": batch.lengths, "labels": labels}
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids
    return inputs


def make_batch(objective: str, shape: Shape, bs: int, slen: int, generator: torch.Generator) -> Pair:
    """A random MLM stream batch (bs, slen), or a TLM pair batch padded to slen, masked as XLM does."""
    if objective == "mlm":
        ids = torch.randint(FIRST_WORD, shape.vocab, (bs, slen), generator=generator)
        lengths = torch.full((bs,), slen)
        position_ids, langs = None, constant_langs(ids, 0)
    else:
        half = slen // 2
        sides = []
        for _ in range(2):
            x = torch.randint(FIRST_WORD, shape.vocab, (bs, half), generator=generator)
            lens = torch.randint(half // 2, half + 1, (bs,), generator=generator)
            lens[0] = half  # the longest pair fills slen exactly
            x[:, 0] = EOS_INDEX
            x[torch.arange(bs), lens - 1] = EOS_INDEX
            sides += [x, lens]
        pair = concat_pair(*sides, lang1_id=0, lang2_id=1, pad_index=PAD_INDEX)
        ids, lengths, position_ids, langs = pair.ids, pair.lengths, pair.position_ids, pair.langs
    masked = mask_tokens(ids, lengths, vocab_size=shape.vocab, mask_index=MASK_INDEX, generator=generator)
    batch = LMBatch(masked.input_ids, lengths, position_ids, langs, masked.pred_mask, masked.labels, causal=False)
    # As `PretrainBatches` hands it to the training step: the predicted positions laid out on the host.
    return Pair(with_host_layout(batch), _hf_inputs(batch))


def to_device(pair: Pair, device: torch.device) -> Pair:
    """Both inputs of a batch on `device` (Lightning moves the batch so before the training step)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return Pair(move_data_to_device(pair.xlm, device), {k: v.to(device) for k, v in pair.hf.items()})


def adamw(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    """AdamW lr 1e-4, no weight decay (xlmtrain's conf/optim and Trainer's defaults)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused or None)


def precision_context(bf16: bool, device: str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` (Lightning's `bf16-mixed`, Trainer's `bf16=True`), or nothing (fp32)."""
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class TrainingLoss(nn.Module):
    """forward(batch) = the per-target losses of `PretrainModule.training_step` (`masked_lm_loss`): the unit DDP
    wraps, as Lightning's DDP wraps the PretrainModule whose training step calls it."""

    def __init__(self, model: XLMWithLMHead) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: LMBatch) -> torch.Tensor:
        return self.model.masked_lm_loss(
            batch.input_ids,
            batch.pred_mask if batch.selected is None else batch.selected,
            batch.labels,
            langs=batch.langs,
            position_ids=batch.position_ids,
            lengths=batch.lengths,
            causal=batch.causal,
            padded=batch.padded,
        )  # (n_pred,): fused projection + CE at the predicted positions


def xlmtrain_step(loss: nn.Module, optimizer: torch.optim.Optimizer, batch: LMBatch, bf16: bool = False) -> None:
    """`PretrainModule.training_step` + Lightning's clipping and optimizer step, without Lightning. `loss` is a
    `TrainingLoss` (or a DDP wrapping one)."""
    with precision_context(bf16, batch.input_ids.device.type):
        losses = loss(batch)
    losses.mean().backward()
    nn.utils.clip_grad_norm_(loss.parameters(), XLMTRAIN_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _finish(batch.input_ids.device)


def transformers_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, inputs: dict[str, torch.Tensor], bf16: bool = False
) -> None:
    """One `Trainer` step of run_mlm: loss over full-vocabulary logits with -100 labels, clip, AdamW."""
    device = inputs["input_ids"].device
    with precision_context(bf16, device.type):
        loss = model(**inputs).loss
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), TRANSFORMERS_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _finish(device)


def _finish(device: torch.device) -> None:
    """Wait for the step's kernels (CUDA runs asynchronously; CPU ops are done when they return)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(fn: Callable[[object], None], items: list) -> Callable[[], None]:
    position = iter(range(10**9))
    return lambda: fn(items[next(position) % len(items)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="small,base", help="comma-separated: tiny, small, base")
    parser.add_argument("--objectives", default="mlm,tlm", help="comma-separated: mlm, tlm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--slen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per contender")
    parser.add_argument(
        "--compile", action="store_true", help="also time xlmtrain under torch.compile (last line: its speedup)"
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (CPUs with AVX512-BF16/AMX)")
    parser.add_argument("--unfused-adam", action="store_true", help="for-loop AdamW on both sides")
    parser.add_argument("--quick", action="store_true", help="tiny shape, batch 4 x 32, 1 + 2 steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both models and batches on it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.batch_size, args.slen, args.warmup, args.repeats = "tiny", 4, 32, 1, 2
    if args.compile:  # every batch shape (n_pred varies) compiled twice (static, then dynamic) before timing
        args.warmup = max(args.warmup, 8)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table, then the speedup line last."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    peak_dtype = torch.bfloat16 if args.bf16 and device.type == "cuda" else torch.float32
    bs, slen = args.batch_size, args.slen
    tokens = bs * slen
    peaks = [matmul_peak_gflops(device=device, dtype=peak_dtype)]
    rows, speedups = [], {}
    for shape in (SHAPES[s] for s in args.shapes.split(",")):
        config = model_config(shape)
        hf_model = XLMWithLMHeadModel(HFXLMConfig(**config.to_dict())).train().to(device)
        # xlmtrain eager, plus xlmtrain compiled in place (as `compile=true` in build) with --compile.
        variants = ["xlmtrain", "xlmtrain compiled"] if args.compile else ["xlmtrain"]
        xlm_models = {}
        for name in variants:
            xlm_models[name] = XLMWithLMHead(config).train().to(device)
            xlm_models[name].load_state_dict(hf_model.state_dict(), strict=False)  # same weights (no position_ids)
            if name == "xlmtrain compiled":
                xlm_models[name].compile()
        fused = not args.unfused_adam
        xlm_opts = {name: adamw(model, fused) for name, model in xlm_models.items()}
        hf_opt = adamw(hf_model, fused)
        for objective in args.objectives.split(","):
            generator = torch.Generator().manual_seed(1)
            batches = [to_device(make_batch(objective, shape, bs, slen, generator), device) for _ in range(4)]
            n_pred = statistics.mean(b.xlm.labels.numel() for b in batches)
            steps = {
                name: _cycle(
                    # Defaults bind this model's loss and optimizer once, at definition (on purpose).
                    lambda b, m=TrainingLoss(model), o=xlm_opts[name]: xlmtrain_step(m, o, b.xlm, args.bf16),  # noqa: B008
                    batches,
                )
                for name, model in xlm_models.items()
            }
            steps["transformers"] = _cycle(
                lambda b, m=hf_model, o=hf_opt: transformers_step(m, o, b.hf, args.bf16), batches
            )
            stats = time_interleaved(steps, warmup=args.warmup, repeats=args.repeats)
            peaks.append(matmul_peak_gflops(device=device, dtype=peak_dtype))
            hf_rate = stats["transformers"].tokens_per_s(tokens)[0]
            ratios = {name: stats[name].tokens_per_s(tokens)[0] / hf_rate for name in xlm_models}
            speedups[(shape.name, objective)] = ratios[variants[-1]]
            for name, st in stats.items():
                med, lo, hi = st.tokens_per_s(tokens)
                ours = name != "transformers"  # logits and the last block only at the predicted positions
                flops = train_step_flops(shape, tokens, slen, n_pred if ours else tokens, n_pred if ours else None)
                rows.append(
                    [
                        shape.name,
                        objective,
                        name,
                        f"{med:.0f}",
                        f"{lo:.0f}",
                        f"{hi:.0f}",
                        f"{st.median_s:.3f}",
                        f"{st.peak_rss_mb:.0f}",
                        f"{flops / 1e9:.1f}",
                        flops / st.median_s / 1e9,
                        f"{ratios[name]:.2f}x" if ours else "",
                    ]
                )
        del xlm_models, hf_model, xlm_opts, hf_opt
    peak = statistics.median(peaks)
    for row in rows:
        row[9] = f"{100 * row[9] / peak:.0f}%"
    print(f"machine: {machine_description(args.threads)}")
    what = f"{'bf16' if peak_dtype == torch.bfloat16 else 'fp32'} matmul peak on {device.type}"
    size = "8192^3" if device.type == "cuda" else "1024x4096x1024"
    print(
        f"{what} ({size} torch.mm): median {peak:.1f} GFLOP/s over {len(peaks)} measurements "
        f"({min(peaks):.1f}-{max(peaks):.1f}); batch {bs} x {slen}, warmup {args.warmup}, {args.repeats} timed steps"
        f"{', xlmtrain compiled' if args.compile else ''}"
        f"{', bf16 autocast' + (' (MFU still vs fp32 peak)' if peak_dtype == torch.float32 else '') if args.bf16 else ''}"
        f"{', unfused AdamW' if args.unfused_adam else ''}"
    )
    header = [
        "shape",
        "obj",
        "framework",
        "tok/s med",
        "min",
        "max",
        "s/step",
        "peak RSS MB",
        "GFLOP/step",
        "MFU",
        "speedup",
    ]
    print(format_table(header, rows))
    last_shape = args.shapes.split(",")[-1]
    if (last_shape, "mlm") in speedups:
        print(f"{last_shape} mlm speedup vs transformers: {speedups[(last_shape, 'mlm')]:.2f}x")


if __name__ == "__main__":
    main()
