#!/usr/bin/env bash
# Single-node launch: one process per GPU (or CPU processes with gloo when there is no GPU).
#   launch/torchrun.sh 8 --config examples/4ds_b_8gpu.yaml --data /path/to/videos
#   launch/torchrun.sh 4 --tp 2 --pp 2          # the CPU demo on 4 gloo processes
set -euo pipefail
nproc="${1:?usage: launch/torchrun.sh NPROC [megavid.pretrain flags...]}"
shift
# Hopper+: with TP>1 and no FSDP, one hardware queue keeps TP comms ordered with compute.
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec torchrun --standalone --nproc-per-node "$nproc" -m megavid.pretrain "$@"
