#!/bin/bash
# Multi-node training with torchrun under SLURM: one torchrun per node, one process per GPU.
#
#   sbatch gym/scripts/slurm_multinode.sh                       # 2 nodes x 8 GPUs, the defaults
#   sbatch --nodes 4 gym/scripts/slurm_multinode.sh --preset 2048x24 --fsdp --activation_checkpointing
#
# Arguments after the script name go to train_humanoid_qwen_dt.py (any experiment flag works).
# Run from the repository's top folder; the job cds into gym/. Rank 0 (first node) logs and writes
# checkpoints into $OUT_DIR, which must be on storage every node sees (FSDP ranks each write
# their shards there). Resume a stopped job by submitting it again with --resume (same OUT_DIR).
#SBATCH --job-name=dt-qwen3
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# The first node of the allocation hosts the rendezvous.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}
OUT_DIR=${OUT_DIR:-runs/humanoid-qwen3-$SLURM_JOB_NAME}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

cd "$(dirname "$0")/.."  # gym/
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_id "$SLURM_JOB_ID" \
    --rdzv_backend c10d \
    --rdzv_endpoint "$HEAD_NODE:$PORT" \
    train_humanoid_qwen_dt.py --out_dir "$OUT_DIR" "$@"
