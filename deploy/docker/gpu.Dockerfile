# syntax=docker/dockerfile:1
# dpe's CUDA image for the Dask GPU workers: torch built for CUDA (its wheels carry the CUDA runtime and cuDNN; the
# host needs the NVIDIA driver and the NVIDIA Container Toolkit), dpe[gpu] (dask-cuda with its dask/distributed pins)
# and deploy/dask/gpu-worker.sh as the command: one pinned `dask worker --resources GPU=1` per visible GPU. Build
# context: the repository root (deploy/compose.yaml builds it as dpe-gpu):
#   docker build -f deploy/docker/gpu.Dockerfile -t dpe-gpu .
# CUDA 12 drivers: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 --build-arg DPE_EXTRA=gpu-cu12
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_SPEC=torch
ARG DPE_EXTRA=gpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DPE_CHECKOUT=/opt/dpe \
    DASK_CONFIG=/opt/dpe/deploy/dask/dask.yaml \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

WORKDIR /opt/dpe
# The same code as the CPU image (flows check that every worker runs the flow's dpe before any work).
COPY pyproject.toml README.md ./
COPY dpe_core ./dpe_core
COPY tasks ./tasks
COPY flows ./flows
COPY deploy ./deploy
RUN pip install -c deploy/docker/constraints.txt -e ".[${DPE_EXTRA}]" \
    && python -c "import dpe_core, tasks, torch, distributed, importlib.metadata as m; m.version('dask-cuda')"

# An unprivileged user owning the checkout (`prefect deploy` and the flows may write beside it) and /data.
RUN useradd --create-home --uid 1000 dpe && mkdir -p /data && chown -R dpe:dpe /opt/dpe /data
USER dpe
EXPOSE 8789
# The scheduler address; gpu-worker.sh needs PREFECT_API_URL in the environment (compose sets it).
CMD ["bash", "deploy/dask/gpu-worker.sh", "tcp://dask-scheduler:8786"]
