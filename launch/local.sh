#!/usr/bin/env bash
# Several processes on this machine, talking over 127.0.0.1: what the tests run, and a dress
# rehearsal for many hosts. Each process gets DEVICES fake CPU devices (on a GPU machine, give each
# process its own GPUs with CUDA_VISIBLE_DEVICES instead).
#   bash launch/local.sh 2 --config=configs/cifar10_cpu.py --workdir=runs/two_processes
set -euo pipefail
PROCESSES=${1:?number of processes}; shift
DEVICES=${DEVICES:-2}
PORT=${PORT:-12355}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
pids=()
for ((i = 0; i < PROCESSES; i++)); do
  python main.py "$@" --coordinator_address="127.0.0.1:${PORT}" --num_processes="${PROCESSES}" --process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=$?; done
exit "${status}"
