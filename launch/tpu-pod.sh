#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker; JAX finds the coordinator, the number of
# processes and each one's id from the TPU environment. The workdir must be one every worker
# shares (a gcsfuse-mounted bucket or NFS).
#   bash launch/tpu-pod.sh my-tpu us-central2-b --config=configs/imagenet2012_paper.py --workdir=/shared/runs/paper
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; shift 2
gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all \
  --command="cd alexnet_jax && python main.py $*"
