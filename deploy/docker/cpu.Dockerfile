# syntax=docker/dockerfile:1
# dpe's CPU image: the Prefect server, the one-shot `dpe deploy`, the Prefect worker that runs the flow processes
# (no GPU, torch never imported there), the Dask scheduler and optional CPU-only Dask workers. Build context: the
# repository root (deploy/compose.yaml builds it as dpe-cpu):
#   docker build -f deploy/docker/cpu.Dockerfile -t dpe-cpu .
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim-bookworm

# torch's CPU build (its own index: the default PyPI wheel brings the CUDA libraries, gigabytes the CPU roles never use).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DPE_CHECKOUT=/opt/dpe \
    DASK_CONFIG=/opt/dpe/deploy/dask/dask.yaml

RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

WORKDIR /opt/dpe
# An editable install of this checkout: `dpe deploy` reads deploy/prefect.yaml next to the code, and the Prefect
# worker's pull step changes into DPE_CHECKOUT (= this folder) before it imports the flow.
COPY pyproject.toml README.md ./
COPY dpe_core ./dpe_core
COPY tasks ./tasks
COPY flows ./flows
COPY deploy ./deploy
RUN pip install -c deploy/docker/constraints.txt -e . \
    && python -c "import dpe_core, flows.cli, prefect, prefect_dask, dask, distributed, asyncpg"

# An unprivileged user owning the checkout (`prefect deploy` and the flows may write beside it) and /data.
RUN useradd --create-home --uid 1000 dpe && mkdir -p /data && chown -R dpe:dpe /opt/dpe /data
USER dpe
EXPOSE 4200 8786 8787
CMD ["dpe", "--help"]
