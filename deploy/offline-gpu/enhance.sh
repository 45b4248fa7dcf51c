#!/bin/bash
# There (the lent GPU machine, in the repo's root, .gpuwhl carried beside it; the look models moved out of the
# working tree for the call: the wheels and the repo must fit 64 MiB together):
#   bash deploy/offline-gpu/enhance.sh [PHOTOS]
# `dpe enhance` (Prefect + Dask, one worker pinned to the GPU) against the bare single-process loop on PHOTOS
# files made from the one real 12 MP test photo (.gpudata/testdata/natural/lomiri_sunset.jpg, with its metadata:
# each a different crop, some mirrored, so no two files are the same), then the 12 and 24 MP full-resolution path
# with decode and encode (the bare loop on 10 files of the photo upscaled to 24 MP).
# Results in $OUT/enhance.txt.
# Here, once: bash deploy/offline-gpu/enhance.sh --prepare   (the Prefect/Dask wheels into .gpuwhl, the photo into
# .gpudata/testdata); the call carries [".gpuwhl", ".gpudata/testdata"].
set -u
# shellcheck source=deploy/offline-gpu/common.sh
. "$(dirname "$0")/common.sh"
if [ "${1:-}" = --prepare ]; then
  exclude_from_git .gpuwhl
  rm -rf .gpuwhl && mkdir .gpuwhl
  # Everything the flows import travels except what the GPU image has (common.sh), dependencies included.
  download_wheels .gpuwhl --platform any prefect==3.9.1 prefect-dask==0.3.7 distributed==2026.8.0 dask==2026.8.0 \
    typer==0.29.2 rich==15.0.0 exifread==3.5.1 pydantic==2.14.4 pydantic-settings
  rm -f .gpuwhl/fsspec-* .gpuwhl/numpy-* .gpuwhl/pillow-*
  copy_speed_photo
  du -sh .gpuwhl .gpudata/testdata
  exit 0
fi
PHOTOS=${1:-200}; OUT=${OUT:-/tmp/out}; PY=${PY:-python3}; mkdir -p "$OUT"
install_wheels .gpuwhl || exit 3
export PYTHONPATH=$PYTHONPATH:$PWD PYTHONUNBUFFERED=1 DPE_TESTDATA=$PWD/.gpudata/testdata
SRC=/tmp/photos; rm -rf $SRC /tmp/photos24; mkdir -p $SRC /tmp/photos24
$PY - "$PHOTOS" <<'PY'
import random, sys
from multiprocessing import Pool
from PIL import Image, ImageOps

SOURCE = ".gpudata/testdata/natural/lomiri_sunset.jpg"


def make(job):
    """One file: a seeded crop (85-100% per side; every other one mirrored), or for 24 MP an upscaled crop."""
    i, big = job
    original = Image.open(SOURCE)
    extra = {k: original.info[k] for k in ("exif", "icc_profile") if original.info.get(k)}
    rng, (w, h) = random.Random(2026 + i + 1000 * big), original.size
    if big:  # the photo upscaled to 6000x4000 (the size of real 24 MP camera files)
        x, y = rng.randint(0, w // 20), rng.randint(0, h // 20)
        crop = original.crop((x, y, x + w * 19 // 20, y + h * 19 // 20)).resize((6000, 4000), Image.LANCZOS)
        crop.save(f"/tmp/photos24/photo-{i:03d}.jpg", quality=92, **extra)
        return
    f = rng.uniform(0.85, 1.0)
    cw, ch = int(w * f), int(h * f)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = original.crop((x, y, x + cw, y + ch))
    (ImageOps.mirror(crop) if i % 2 else crop).save(f"/tmp/photos/photo-{i:03d}.jpg", quality=92, **extra)


with Pool() as pool:
    pool.map(make, [(i, False) for i in range(int(sys.argv[1]))] + [(i, True) for i in range(10)])
print(f"{sys.argv[1]} photos of 10-12 MP and 10 of 24 MP from {SOURCE}")
PY
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  timeout 330 $PY benchmarks/pipeline_speed.py --photos $SRC --modes full --workers 1 --copies 1 --probe-shards 0
  echo "pipeline_speed rc=$?"
  # 24 MP: the bare loop alone (read, decode, enhance full, encode, atomic write), photos/s
  rm -rf /tmp/bare-out; timeout 90 $PY benchmarks/pipeline_speed.py --bare /tmp/photos24 /tmp/bare-out full default \
    | tail -n 1 | sed "s/^/24 MP bare loop: /"
} 2>&1 | tee "$OUT/enhance.txt"
