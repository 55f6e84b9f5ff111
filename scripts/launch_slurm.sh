#!/usr/bin/env bash
# rltool on a SLURM cluster: one task per machine, each runs `accelerate launch` for its GPUs, with its
# machine rank taken from SLURM; machine 0 (the first host of the allocation) is the rendezvous point.
#
#   sbatch --nodes=2 scripts/launch_slurm.sh algo=grpo actors=qwen2.5_7b_instruct trainer.prompts_per_step=64
#
# Environment: GPUS_PER_NODE (default: SLURM_GPUS_ON_NODE or 8), MASTER_PORT (29500), RUN_DIR (shared by all
# machines: checkpoints hold every rank's DeepSpeed shard, so it must be on a filesystem they all see),
# RLTOOL_HARDWARE (multinode), ACCELERATE (accelerate). Global rank 0 claims RUN_DIR once, before the other ranks
# read it (one holding another run: every rank writes to RUN_DIR-2); to continue a run, pass resume=$RUN_DIR.
#SBATCH --job-name=rltool
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail

export GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}
export RUN_DIR=${RUN_DIR:-outputs/slurm-$SLURM_JOB_ID}
export RLTOOL_HARDWARE=${RLTOOL_HARDWARE:-multinode}
export ACCELERATE=${ACCELERATE:-accelerate}
# The accelerate config shipped inside the installed package: sbatch runs a spooled copy of this script, so
# a path relative to the script would not point into the checkout.
CONFIG="$(python -c 'import importlib.resources as r; print(r.files("rltool") / "zero3.yaml")')"
export CONFIG

# Single quotes: SLURM_NODEID is each task's own, read on its machine.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
  exec $ACCELERATE launch --config_file "$CONFIG" \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --num_processes "$((SLURM_NNODES * GPUS_PER_NODE))" \
    --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    -m rltool train hardware="$RLTOOL_HARDWARE" hardware.num_machines="$SLURM_NNODES" \
    hydra.run.dir="$RUN_DIR" "$@"' rltool "$@"
