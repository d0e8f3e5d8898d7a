#!/usr/bin/env bash
# End-to-end on the bundled synthetic languages: raw text -> preprocess -> pretrain (MLM+TLM, and MLM only) -> export -> probe.
# Usage: bash recipes/synthetic/run.sh [WORK_DIR]   (about 5 minutes on 2 CPU cores)
set -euo pipefail
WORK=${1:-work/synthetic}
mkdir -p "$WORK"
python -c "from xlmtrain.data.synthetic import write_corpus; write_corpus('$WORK/raw', langs=('io', 'vo'), n_mono=20000, n_para=20000, seed=0, shared_names=40)"
python -m xlmtrain.preprocess input="$WORK/raw" output="$WORK/prep" bpe_merges=2000 valid_lines=500 test_lines=500
python -m xlmtrain +recipe=tlm data.dir="$WORK/prep" run_dir="$WORK/runs/tlm"
python -m xlmtrain +recipe=mlm data.dir="$WORK/prep" run_dir="$WORK/runs/mlm"
python recipes/synthetic/probe.py "$WORK/runs/tlm" "$WORK/runs/mlm"
