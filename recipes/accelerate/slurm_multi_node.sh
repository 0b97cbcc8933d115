#!/usr/bin/env bash
# SLURM: 2 nodes x 8 GPUs. sbatch recipes/accelerate/slurm_multi_node.sh
#SBATCH --job-name=mmdiff
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --signal=TERM@120          # SIGTERM 2 minutes before the limit: the Trainer checkpoints and exits
set -euo pipefail
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_IP
srun bash -c 'accelerate launch --config_file recipes/accelerate/multi_node.yaml \
    --num_machines "$SLURM_NNODES" --num_processes $((SLURM_NNODES * 8)) \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_IP" --main_process_port 29500 \
    recipes/image_train.py --config recipes/configs/image_imagenet256_dit_xl2.yaml \
    --output_dir "runs/$SLURM_JOB_NAME" --resume_from_checkpoint latest'
