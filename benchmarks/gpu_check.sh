#!/usr/bin/env bash
# One-command check of every GPU path of xlmtrain (issues #15 item 6 and #17), for a short GPU slot.
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine: <= 8 min, table + logs in $GPU_CHECK_OUT
#   bash benchmarks/gpu_check.sh --prepare    # on a CPU machine with internet, BEFORE the slot (see below)
#
# Without a CUDA device it prints one line and exits 0 (seconds). With one, it writes to GPU_CHECK_OUT
# (default gpu_check_out/) a log per step and table.md, prints the table, then one line per issue-#17 item
# saying where it was checked, and last `gpu base mlm speedup vs transformers: X.XXx`. Steps:
#   cuda_tests   pytest -m cuda tests/test_gpu_cuda.py: parity with transformers on CUDA (fp32 <= 1e-4 with TF32 off;
#                bf16 autocast: logits within 0.1 abs, per-token CE within 2% of fp32), no host sync in the training
#                forward/backward, flash SDPA for causal and unpadded batches, the all-padding row under bf16, CUDA RNG
#                states saved/restored, embeddings of a CUDA model.
#   train_step   benchmarks/train_step.py --device cuda --bf16 on the base shape, batch 32 x 256: xlmtrain vs
#                transformers' XLMWithLMHeadModel, MFU against the bf16 matmul peak measured in the same run.
#   base_200     python -m xlmtrain +recipe=mlm_tlm model=base trainer=gpu (bf16-mixed, clipping 5.0, fused AdamW),
#                200 steps with the retrieval callback (tokens/s from a 20-step run's time subtracted).
#   resume       the same run stopped at 100 steps and resumed to 200: per-step losses vs the uninterrupted run.
#   ddp_N        trainer=ddp trainer.devices=N for N = 1, 2, 4, 8 up to the visible GPUs (tokens/s per GPU count);
#                with N >= 2 every torch.distributed collective is logged (tests/collective_probe) and must take
#                CUDA tensors (NCCL), none inside training_step.
#
# Environment: PYTHON (default .venv/bin/python if present, else python3; torch is never installed by this script),
# GPU_CHECK_OUT (output folder), GPU_CHECK_WHEELS (default .whl/: pure-Python wheels installed with
# `pip install --no-index --no-deps --target` into GPU_CHECK_DEPS, default /tmp/xlmtrain_gpu_check_deps, when the
# packages are missing), GPU_CHECK_DATA (default gpu_check_data/: the synthetic corpus preprocessed beforehand, used
# when fastBPE is missing on the GPU machine).
#
# --prepare (CPU machine, internet; both folders are git-ignored: carry them to the GPU machine):
#   .whl/             python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#                       --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0 sacremoses==0.2.0
#                       regex click joblib; python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#                       (an sdist only: built here into a py3-none-any wheel)
#   gpu_check_data/   the default synthetic corpus (conf/data/synthetic.yaml) preprocessed by this checkout.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
OUT=${GPU_CHECK_OUT:-$REPO/gpu_check_out}
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}
DEPS=${GPU_CHECK_DEPS:-/tmp/xlmtrain_gpu_check_deps}
DATA=${GPU_CHECK_DATA:-$REPO/gpu_check_data}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$WHEELS" hydra-core==1.3.2 omegaconf==2.3.0 sacremoses==0.2.0 regex click joblib
  # omegaconf needs antlr4 4.9.*, published as an sdist only: build its pure-Python wheel here.
  "$PY" -m pip wheel --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3
  # A file, not stdin: the preprocessing workers are spawned processes that re-import the main module.
  prepare_py=$(mktemp --suffix=.py)
  cat > "$prepare_py" <<'EOF'
import shutil, sys, tempfile
from pathlib import Path
from xlmtrain.data.preprocessed import ensure_preprocessed
from xlmtrain.data.synthetic import write_corpus

if __name__ == "__main__":
    out = Path(sys.argv[1]) / "synthetic"
    with tempfile.TemporaryDirectory() as tmp:  # conf/data/synthetic.yaml's corpus and preprocessing
        raw = write_corpus(Path(tmp) / "raw", langs=("io", "vo"), n_mono=20000, n_para=20000, seed=0, shared_names=40)
        built = ensure_preprocessed(raw, Path(tmp) / "cache", bpe_merges=2000, valid_lines=500, test_lines=500,
                                    workers=2, progress=False)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(built, out)
    print(f"prepared {out}")
EOF
  "$PY" "$prepare_py" "$DATA"
  rm -f "$prepare_py"
  echo "gpu_check: prepared $WHEELS and $DATA; carry both (e.g. the device tool's carry: [.whl, gpu_check_data])"
  exit 0
fi

gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null) || gpus=0
if [[ ! "$gpus" =~ ^[0-9]+$ ]] || (( gpus == 0 )); then
  echo "gpu_check: no CUDA device visible to $PY (or no torch there): nothing to check on this machine, exit 0"
  exit 0
fi

mkdir -p "$OUT"
: > "$OUT/summary.txt"
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
note "gpu_check: $gpus CUDA device(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)')"

# Pure-Python packages missing here come from carried wheels.
if ! "$PY" -c 'import hydra, omegaconf, sacremoses' 2>/dev/null && compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --target "$DEPS" "$WHEELS"/*.whl > "$OUT/wheels.log" 2>&1 \
    && export PYTHONPATH="$DEPS:$PYTHONPATH" && note "gpu_check: installed $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $DEPS"
fi
missing=$("$PY" - <<'EOF'
import importlib.util
names = ["hydra", "omegaconf", "sacremoses", "lightning", "torchmetrics", "transformers", "safetensors", "pytest",
         "fastBPE"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
[[ -n "$missing" ]] && note "gpu_check: missing here: $missing"
DATA_ARGS=()
if [[ -f "$DATA/synthetic/manifest.json" ]]; then
  DATA_ARGS=("data.dir=$DATA/synthetic")
elif [[ " $missing " == *" fastBPE "* ]]; then
  note "gpu_check: fastBPE missing and no $DATA/synthetic/manifest.json (run --prepare on a CPU machine): training steps will fail"
fi

ROWS=()
SPEEDUP_LINE=""
# step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, add a table row.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  LAST_SECONDS=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
  local status=ok
  (( rc == 124 )) && status="TIMEOUT (${limit}s)"
  (( rc != 0 && rc != 124 )) && status="FAILED (rc $rc)"
  LAST_STATUS=$status
  ROWS+=("| $name | $status | $(printf '%.0f' "$LAST_SECONDS") s | ${STEP_NOTE:-} |")
  STEP_NOTE=""
  note "gpu_check: $name $status in $(printf '%.0f' "$LAST_SECONDS") s (log $OUT/$name.log)"
}

# 1. CUDA tests (parity fp32/bf16, host syncs, flash, padding row, RNG, embeddings).
STEP_NOTE="see log: pytest summary"
step cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_gpu_cuda.py -rs
ROWS[-1]="${ROWS[-1]% |} $(tail -n 1 "$OUT/cuda_tests.log") |"

# 2. Train-step benchmark vs transformers, bf16, base shape, MFU vs the bf16 peak of this run.
step train_step 150 "$PY" benchmarks/train_step.py --device cuda --bf16 --shapes base --objectives mlm \
  --batch-size 32 --slen 256 --threads 16 --warmup 5 --repeats 20
SPEEDUP_LINE=$(grep -E '^base mlm speedup vs transformers' "$OUT/train_step.log" | tail -n 1)
ROWS[-1]="${ROWS[-1]% |} ${SPEEDUP_LINE:-no speedup line} |"

# 3. model=base, bf16-mixed, 200 steps (tokens/s: 200-step time minus a 20-step run's, over 180 steps).
TRAIN=(+recipe=mlm_tlm model=base trainer=gpu trainer.val_check_interval=100 trainer.log_every_n_steps=10
       trainer.enable_progress_bar=false data.batching.batch_size=64 data.batching.bptt=256 export=false
       "${DATA_ARGS[@]}")
TOKENS_PER_STEP=$((64 * 256))
# rate STEPS T_LONG T_SHORT: tokens/s of STEPS steps timed as the difference of two runs' wall times.
rate() { awk -v n="$1" -v a="$2" -v b="$3" -v t="$TOKENS_PER_STEP" 'BEGIN { if (a > b) printf "%.0f", n * t / (a - b); else print "?" }'; }
step base_20 240 "$PY" -m xlmtrain "${TRAIN[@]}" trainer.max_steps=20 run_dir="$OUT/base_20" resume=never
t20=$LAST_SECONDS
step base_200 300 "$PY" -m xlmtrain "${TRAIN[@]}" callbacks=retrieval trainer.max_steps=200 run_dir="$OUT/base_200" \
  resume=never
t200=$LAST_SECONDS
base_rate=$(rate 180 "$t200" "$t20")
retrieval=$(grep -o "valid_io-vo_retrieval_p@1[^,]*" "$OUT/base_200/metrics.csv" 2>/dev/null | head -n 1)
ROWS[-1]="${ROWS[-1]% |} ~${base_rate} tok/s (mlm_tlm, 64 x 256/step; incl. validation); retrieval logged: $([[ -f $OUT/base_200/metrics.csv ]] && grep -c retrieval "$OUT/base_200/metrics.csv" | sed 's/^0$/no/;s/^[1-9].*/yes/') |"

# 4. Exact resume on GPU: 100 steps, then resumed to 200, vs the uninterrupted run's losses.
step resume_100 240 "$PY" -m xlmtrain "${TRAIN[@]}" callbacks=retrieval trainer.max_steps=100 run_dir="$OUT/resumed" \
  resume=never
step resume_200 240 "$PY" -m xlmtrain "${TRAIN[@]}" callbacks=retrieval trainer.max_steps=200 run_dir="$OUT/resumed"
resume_diff=$("$PY" - "$OUT" <<'EOF'
import csv, sys
def losses(path):
    with open(path) as f:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")}
try:
    a, b = losses(f"{sys.argv[1]}/base_200/metrics.csv"), losses(f"{sys.argv[1]}/resumed/metrics.csv")
    steps = [s for s in a if s >= 100 and s in b]
    print(f"max rel loss diff over {len(steps)} logged steps after the resume: "
          f"{max(abs(a[s] - b[s]) / abs(a[s]) for s in steps):.2e}" if steps else "no common steps")
except Exception as error:  # a failed run: the table says so
    print(f"not compared ({error})")
EOF
)
ROWS[-1]="${ROWS[-1]% |} $resume_diff (CUDA RNG restored; bitwise needs deterministic kernels) |"

# 5. DDP on every visible GPU count, collectives logged for N >= 2.
for n in 1 2 4 8 "$gpus"; do
  (( n > gpus )) && continue
  [[ " ${done_counts:-} " == *" $n "* ]] && continue
  done_counts="${done_counts:-} $n"
  DDP=(trainer=ddp "trainer.devices=$n" trainer.max_steps=120 trainer.val_check_interval=1000)
  if (( n >= 2 )); then
    rm -f "$OUT"/collectives_$n.*
    step "ddp_$n" 240 env XLMTRAIN_COLLECTIVE_LOG="$OUT/collectives_$n" \
      PYTHONPATH="$REPO/tests/collective_probe:$PYTHONPATH" "$PY" -m xlmtrain "${TRAIN[@]}" "${DDP[@]}" \
      run_dir="$OUT/ddp_$n" resume=never
  else
    step "ddp_$n" 240 "$PY" -m xlmtrain "${TRAIN[@]}" "${DDP[@]}" run_dir="$OUT/ddp_$n" resume=never
  fi
  ddp_rate=$(rate 100 "$LAST_SECONDS" "$t20")
  extra=""
  if (( n >= 2 )); then
    extra=$("$PY" - "$OUT/collectives_$n" <<'EOF'
import glob, json, sys
calls = [json.loads(l) for p in glob.glob(sys.argv[1] + ".*") for l in open(p)]
off = [c for c in calls if any(not d.startswith("cuda") for d in c["devices"])]
inside = [c for c in calls if "training_step" in c["stack"]]
print(f"{len(calls)} collectives logged, {len(off)} with a non-CUDA input, {len(inside)} inside training_step")
EOF
)
  fi
  ROWS[-1]="${ROWS[-1]% |} ~${ddp_rate} tok/s global with $n GPU(s) (global batch 64 x 256; 100 steps) $extra |"
done

{
  echo "| step | status | time | result |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} > "$OUT/table.md"
cat "$OUT/table.md"
cat <<EOF | tee -a "$OUT/summary.txt"
#17 bf16-mixed trains with clipping + fused AdamW: base_200 / resume (trainer=gpu); CPU: tests/test_gpu_paths.py
#17 padding bias in the compute dtype (all-padding row, bf16): cuda_tests test_all_padding_row_on_cuda
#17 TF32 on CUDA, trainer=gpu/ddp default bf16-mixed: every training step here uses trainer=gpu/ddp defaults
#17 sbatch templates pick the GPU + bf16-mixed: CPU-tested (tests/test_slurm_templates.py); no SLURM on this machine
#17 collectives only on the root device (NCCL) incl. the post-fit checkpoint: ddp_N (N >= 2) collective log; one GPU: n/a
#17 CUDA RNG saved/restored per rank: cuda_tests test_cuda_rng_state_round_trip + resume row
#17 retrieval callback / embeddings on the model's device: base_200 (callbacks=retrieval) + cuda_tests test_embeddings
#17 no collective before backward, preemption polled every N steps: ddp_N (N >= 2) log; CPU: tests/test_ddp.py
#17 no host sync in the training forward/backward: cuda_tests test_training_loss_has_no_host_sync_on_cuda
#17 flash SDPA for causal (is_causal) and unpadded batches: cuda_tests test_flash_attention_*
EOF
echo "gpu ${SPEEDUP_LINE:-base mlm speedup vs transformers: n/a (train_step failed, see $OUT/train_step.log)}" \
  | tee -a "$OUT/summary.txt"
