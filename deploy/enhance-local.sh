#!/usr/bin/env bash
# The main job on a fresh machine: install if needed, then enhance a folder of photos with the bundled
# default model (embedded defaults: a local Prefect server and a local Dask cluster).
#   bash deploy/enhance-local.sh SRC DST [dpe enhance options...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/deploy/install.sh"
exec "$root/.venv/bin/dpe" enhance "$@"
