#!/bin/bash
# Sourced by the offline-GPU scripts (prepare.sh, run.sh, style.sh, enhance.sh), run from the repo's root.
# The lent machine's Python (3.12) has torch, numpy, pillow, safetensors and fsspec; everything else travels as
# wheels, and what travels stays out of git.

# exclude_from_git NAME...: keep each top-level folder out of git (and so out of the tracked tree that is sent).
exclude_from_git() {
  mkdir -p .git/info
  local d
  for d in "$@"; do grep -qxF "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
}

# download_wheels DIR PIP_ARGS...: binary wheels for the lent machine's Python (CPython 3.12, manylinux x86-64).
download_wheels() {
  local dir=$1; shift
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" "$@"
}

# install_wheels DIR: there, install DIR/*.whl offline into /tmp/site and put it first on PYTHONPATH.
install_wheels() {
  ${PY:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$1"/*.whl || return 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

# copy_speed_photo: the real 12 MP photo the GPU speed benchmarks read, into .gpudata/testdata/natural.
copy_speed_photo() {
  mkdir -p .gpudata/testdata/natural
  cp "${DPE_TESTDATA:-../shared/testdata}/natural/lomiri_sunset.jpg" .gpudata/testdata/natural/
}
