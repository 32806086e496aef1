#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker, in the README's virtual environment; JAX
# finds the coordinator, the number of processes and each one's id from the TPU environment. The
# run is started detached on each worker (it outlives this ssh session; its output goes to
# ~/alexnet_jax/run.log there), so a dropped connection does not end it.
#   bash launch/tpu-pod.sh my-tpu us-central2-b --config=configs/imagenet2012_paper.py --workdir=/shared/runs/paper
#   gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=0 --command="tail -f alexnet_jax/run.log"
# The workdir must be one every worker shares, on a POSIX filesystem (Filestore, NFS): Orbax
# commits a checkpoint by renaming its directory, which gcsfuse refuses by default (mounted with
# -o rename-dir-limit=1000000 it renames, though not atomically). The dataset (dataset.data_dir)
# must be at the same path on every worker.
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; shift 2
args=$(printf ' %q' "$@")  # quoted again, so that the workers' shell splits them as given here
gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all \
  --command="cd alexnet_jax && . .venv/bin/activate && nohup setsid python main.py${args} > run.log 2>&1 < /dev/null &"
