#!/usr/bin/env bash
# Idempotent installer for a fresh machine (only Python >= 3.11, pip and git there): Debian packages the
# tests use (exiftool; with --with-browser also chromium and chromium-driver), a virtual environment in .venv with dpe
# and its dev extras. Used by .ci/run (--with-browser) and deploy/enhance-local.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# exiftool: the metadata tests compare tags with it. --with-browser: chromium and chromium-driver, for
# tests/ops/test_ui.py (the Prefect UI in headless Chromium, driven by Python playwright, a dev extra, with this
# binary; never `playwright install`); left out by default, it is not needed to enhance photos.
debs=()
command -v exiftool >/dev/null 2>&1 || debs+=(libimage-exiftool-perl)
if [ "${1:-}" = "--with-browser" ]; then
  [ -x /usr/bin/chromium ] || debs+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || debs+=(chromium-driver)
fi
if [ ${#debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi

pip_install() {
  local log
  log=$(mktemp)
  if ! .venv/bin/pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2
    exit 1
  fi
  rm -f "$log"
}
# torch first and pinned: the 2.13.0 CPU wheel lies on disk on our machines; an unpinned resolve would
# fetch a multi-GB CUDA build. Any torch >= 2.4 works (pyproject).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip_install torch==2.13.0
fi
if ! .venv/bin/python -c "import dpe_core, flows, prefect, dask, distributed, s3fs, moto, pytest, matplotlib, playwright" 2>/dev/null; then
  pip_install -e '.[dev]'
fi
.venv/bin/python -c "import torch, prefect, dask, distributed, s3fs, PIL, pillow_heif, safetensors, exifread, moto, playwright"
