#!/usr/bin/env bash
# Several processes on this machine, talking over 127.0.0.1: what the tests run, and a dress
# rehearsal for many hosts. On a machine with NVIDIA GPUs each process gets its own share of them
# (CUDA_VISIBLE_DEVICES; the GPUs must divide evenly); without, each gets DEVICES fake CPU devices.
# Stopped (Ctrl-C, SIGTERM), it stops every process it started: each saves a checkpoint first.
#   bash launch/local.sh 2 --config=configs/cifar10_cpu.py --workdir=runs/two_processes
set -euo pipefail
PROCESSES=${1:?number of processes}; shift
DEVICES=${DEVICES:-2}
PORT=${PORT:-12355}
gpus=$( (nvidia-smi --list-gpus 2>/dev/null || true) | grep -c '^GPU' || true)
if ((gpus > 0)); then
  if ((gpus % PROCESSES != 0)); then
    echo "error: ${gpus} GPUs do not divide between ${PROCESSES} processes; start a divisor of ${gpus}" >&2
    exit 2
  fi
  per_process=$((gpus / PROCESSES))
else
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
fi
pids=()
# shellcheck disable=SC2329  # called by the trap below
stop() {
  trap - INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  exit 130
}
trap stop INT TERM
for ((i = 0; i < PROCESSES; i++)); do
  if ((gpus > 0)); then
    export CUDA_VISIBLE_DEVICES
    CUDA_VISIBLE_DEVICES=$(seq -s, $((i * per_process)) $(((i + 1) * per_process - 1)))
  fi
  python main.py "$@" --coordinator_address="127.0.0.1:${PORT}" --num_processes="${PROCESSES}" --process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=$?; done
exit "${status}"
