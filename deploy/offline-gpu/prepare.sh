#!/bin/bash
# Here (the development machine): pack what a lent, offline GPU machine needs into two folders that git ignores.
#   bash deploy/offline-gpu/prepare.sh BASE_CONFIG.json [CANDIDATES.json]   (default: candidates.json)
#   INIT=MODEL_DIR: every candidate starts from that exported model (copied to .gpudata/init) instead of its init_from
# .gpudata/: the base config's photos at load size (python -m dpe_core.training.pack; never the test split), one
# config per candidate of candidates.json, the 12 MP photo the speed benchmarks read. .whl/: the wheels the
# GPU image lacks (its python has torch, numpy, pillow, safetensors, fsspec; not pydantic or exifread).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: prepare.sh BASE_CONFIG.json [CANDIDATES.json]}
export CANDIDATES=${2:-deploy/offline-gpu/candidates.json} INIT=${INIT:-}
PY=${PY:-.venv/bin/python}
# shellcheck source=deploy/offline-gpu/common.sh
. deploy/offline-gpu/common.sh
exclude_from_git .gpudata .whl
rm -rf .gpudata .whl
$PY -m dpe_core.training.pack "$BASE" .gpudata
if [ -n "$INIT" ]; then mkdir -p .gpudata/init && cp "$INIT/model.json" "$INIT/model.safetensors" .gpudata/init/; fi
$PY - <<'PY'
import json
import os
base = json.load(open(".gpudata/train_config.json"))
spec = json.load(open(os.environ["CANDIDATES"]))
init = {"init_from": ".gpudata/init"} if os.environ["INIT"] else {}
for name, update in spec["runs"].items():
    config = base | spec["common"] | update | init | {"checkpoint_url": f"/tmp/runs/{name}/checkpoints"}
    json.dump(config, open(f".gpudata/{name}.json", "w"), indent=1)
print("candidates:", " ".join(spec["runs"]))
PY
copy_speed_photo
versions=$($PY -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic_core|annotated-types|typing-inspection|exifread)==' || true)
# shellcheck disable=SC2086
download_wheels .whl --no-deps $versions
du -sh .gpudata .whl
