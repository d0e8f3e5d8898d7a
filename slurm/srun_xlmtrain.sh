#!/usr/bin/env bash
# Shared body of the xlmtrain sbatch templates (they set resources, then exec this script).
# Starts one training process per SLURM task with srun, as Lightning's SLURM environment requires,
# and tells the trainer the task layout through Hydra overrides appended after the user's ones.
#
# Device: an allocation with GPUs (SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE from --gpus-per-node /
# --gres=gpu:N, or a CUDA_VISIBLE_DEVICES list) trains with trainer.accelerator=gpu trainer.precision=bf16-mixed,
# any other with trainer.accelerator=cpu trainer.precision=32-true. These two go BEFORE the user's overrides,
# so an explicit trainer.accelerator= / trainer.precision= on the command line wins.
#
#   XLMTRAIN_CMD   the training command (default `python -m xlmtrain`); split on spaces.
#   MASTER_PORT    default 15000 + SLURM_JOB_ID % 20000: jobs sharing a node get different ports,
#                  and a requeued job (same id) gets the same one.
set -euo pipefail
: "${SLURM_JOB_ID:?run this through sbatch (slurm/*.sbatch), not directly}"
export MASTER_PORT=${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 20000))}
read -r -a cmd <<< "${XLMTRAIN_CMD:-python -m xlmtrain}"

gpus_on_node() {
  # SLURM_GPUS_PER_NODE may carry a type ("h100:4"); CUDA_VISIBLE_DEVICES lists ids ("0,1"; SLURM sets
  # "NoDevFiles" or nothing when no GPU is allocated).
  local n=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
  n=${n##*:}
  if [[ -z "$n" && -n "${CUDA_VISIBLE_DEVICES:-}" && "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]]; then
    local ids
    IFS=, read -r -a ids <<< "$CUDA_VISIBLE_DEVICES"
    n=${#ids[@]}
  fi
  [[ "$n" =~ ^[0-9]+$ ]] || n=0
  echo "$n"
}
gpus=$(gpus_on_node)
if (( gpus > 0 )); then
  device=(trainer.accelerator=gpu trainer.precision=bf16-mixed)
else
  device=(trainer.accelerator=cpu trainer.precision=32-true)
fi
echo "[xlmtrain-slurm] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NNODES} node(s) x" \
  "${SLURM_NTASKS_PER_NODE} task(s) on ${SLURM_JOB_NODELIST}, ${gpus} GPU(s) per node (${device[*]}), MASTER_PORT=$MASTER_PORT"
exec srun --kill-on-bad-exit=1 "${cmd[@]}" "${device[@]}" "$@" \
  trainer.devices="$SLURM_NTASKS_PER_NODE" trainer.num_nodes="$SLURM_NNODES" trainer.strategy=ddp
