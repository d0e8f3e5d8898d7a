#!/usr/bin/env bash
# Shared body of the xlmtrain sbatch templates (they set resources, then exec this script).
# Starts one training process per SLURM task with srun, as Lightning's SLURM environment requires,
# and tells the trainer the task layout through Hydra overrides appended after the user's ones.
#
#   XLMTRAIN_CMD   the training command (default `python -m xlmtrain`); split on spaces.
#   MASTER_PORT    default 15000 + SLURM_JOB_ID % 20000: jobs sharing a node get different ports,
#                  and a requeued job (same id) gets the same one.
set -euo pipefail
: "${SLURM_JOB_ID:?run this through sbatch (slurm/*.sbatch), not directly}"
export MASTER_PORT=${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 20000))}
read -r -a cmd <<< "${XLMTRAIN_CMD:-python -m xlmtrain}"
echo "[xlmtrain-slurm] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NNODES} node(s) x" \
  "${SLURM_NTASKS_PER_NODE} task(s) on ${SLURM_JOB_NODELIST}, MASTER_PORT=$MASTER_PORT"
exec srun --kill-on-bad-exit=1 "${cmd[@]}" "$@" \
  trainer.devices="$SLURM_NTASKS_PER_NODE" trainer.num_nodes="$SLURM_NNODES" trainer.strategy=ddp
