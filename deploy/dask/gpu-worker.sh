#!/usr/bin/env bash
# dpe's Dask workers on one GPU machine: one `dask worker` per GPU, pinned with CUDA_VISIBLE_DEVICES, declaring the
# Dask resource GPU=1 (dpe sends inference shards only to such workers), one thread each.
#
#   PREFECT_API_URL=http://prefect:4200/api [AWS_...=...] bash deploy/dask/gpu-worker.sh tcp://head:8786 [dask worker options]
#
# The workers keep the environment this script is given: PREFECT_API_URL (required: workers report task runs
# there), storage credentials (AWS_*, FSSPEC_*, GOOGLE_*, AZURE_*), PREFECT_API_KEY, and DASK_CONFIG (default: the
# dask.yaml beside this script, which unsets distributed's MALLOC_TRIM_THRESHOLD_: torch runs ~1.6x faster). Nothing
# is reset: the variables are inherited by each worker as they are here.
#
# Other settings (environment):
#   CUDA_VISIBLE_DEVICES   GPUs to use, e.g. "0,1" (default: every GPU `nvidia-smi -L` lists)
#   DPE_WORKER_NAME        name prefix (default: this host's name); workers are named PREFIX-gpu-ID
#   DPE_TLS_CA, DPE_TLS_CERT, DPE_TLS_KEY   PEM files for a tls:// scheduler (docs/operations.md)
#   DPE_WORKER_MODELS      models each worker keeps loaded (default 2)
#   DPE_USE_DASK_CUDA=1    start `dask cuda worker` instead (dpe[gpu]: one pinned worker per visible GPU)
# Stop with SIGTERM/SIGINT: the workers are stopped (each by its process id) and the script waits for them.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,20p' "$0" >&2
    exit 2
fi
scheduler="$1"
shift
here="$(cd "$(dirname "$0")" && pwd)"
if [[ -z "${PREFECT_API_URL:-}" ]]; then
    echo "gpu-worker.sh: PREFECT_API_URL is not set: dpe's tasks on these workers report to the Prefect API" >&2
    exit 2
fi
export DASK_CONFIG="${DASK_CONFIG:-$here/dask.yaml}"
dask="${DASK:-dask}"  # the `dask` command of the environment dpe is installed in (activate it, or set DASK)
if ! command -v "$dask" >/dev/null; then
    echo "gpu-worker.sh: no \`$dask\` command: activate the environment with dpe installed, or set DASK" >&2
    exit 2
fi

tls=()
if [[ -n "${DPE_TLS_CA:-}${DPE_TLS_CERT:-}${DPE_TLS_KEY:-}" ]]; then
    tls=(--tls-ca-file "${DPE_TLS_CA:?}" --tls-cert "${DPE_TLS_CERT:?}" --tls-key "${DPE_TLS_KEY:?}")
fi

if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=',' read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
else
    mapfile -t gpus < <(nvidia-smi -L 2>/dev/null | sed -n 's/^GPU \([0-9]*\):.*/\1/p')
fi
if [[ ${#gpus[@]} -eq 0 ]]; then
    echo "gpu-worker.sh: no GPU found (set CUDA_VISIBLE_DEVICES, or check nvidia-smi)" >&2
    exit 2
fi
prefix="${DPE_WORKER_NAME:-$(hostname)}"

pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap stop TERM INT

if [[ "${DPE_USE_DASK_CUDA:-0}" == "1" ]]; then
    # dask-cuda pins each worker itself; its CLI passes only CUDA_VISIBLE_DEVICES to the worker processes' env
    # option, the rest is inherited from this process (kept here).
    CUDA_VISIBLE_DEVICES="$(IFS=','; echo "${gpus[*]}")" "$dask" cuda worker "$scheduler" --resources GPU=1 \
        --nthreads 1 --name "$prefix-gpu" "${tls[@]}" "$@" &
    pids+=($!)
else
    for gpu in "${gpus[@]}"; do
        gpu="${gpu// /}"
        CUDA_VISIBLE_DEVICES="$gpu" "$dask" worker "$scheduler" --nworkers 1 --nthreads 1 --resources GPU=1 \
            --name "$prefix-gpu-$gpu" "${tls[@]}" "$@" &
        pids+=($!)
    done
fi
echo "gpu-worker.sh: ${#pids[@]} worker process(es) for GPUs ${gpus[*]} -> $scheduler (DASK_CONFIG=$DASK_CONFIG)" >&2
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
# A signal interrupts `wait`: wait again for workers that are still closing.
for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" 2>/dev/null || true; done
done
exit "$status"
