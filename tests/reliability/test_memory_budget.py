"""Memory per worker is bounded by configuration: photos read ahead and written behind the model stay within
``max_inflight_mb``, whatever ``io_threads`` is (tasks/photo_pipeline.py PhotoPipeline). Measured in a real process:
its peak resident memory, and the shard's own account of the bytes it had in flight."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SIDE = (3000, 2000)  # 18 MB of decoded pixels per photo
PHOTO_MB = SIDE[0] * SIDE[1] * 3 / 2**20

SCRIPT = """
import json, sys, time
from tasks.enhance import EnhanceJob, Shard, process_shard

class SlowModel:  # a model slower than reading: photos pile up ahead of it unless something stops them
    def enhance(self, photo, mode="paper"):
        time.sleep(0.2)
        return photo.with_pixels(photo.pixels.copy())

job = EnhanceJob.model_validate_json(sys.argv[1])
shard = Shard.model_validate_json(sys.argv[2])
result = process_shard(shard, job, enhancer_factory=SlowModel)
with open("/proc/self/status") as handle:
    peak = next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": peak, "peak_inflight_mb": result.peak_inflight_mb, "counts": result.counts}))
"""


def _photos(testdata: Path, root: Path, count: int) -> list[dict]:
    from PIL import Image

    from tasks.plan import WorkItem

    rng = random.Random(3)
    base = Image.open(testdata / "natural" / "chelsea.png").convert("RGB")
    items = []
    for i in range(count):
        w, h = base.size
        x, y = rng.randint(0, w // 4), rng.randint(0, h // 4)
        image = base.crop((x, y, x + 3 * w // 4, y + 3 * h // 4)).resize(SIDE)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        rel = f"p{i:02d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(buffer.getvalue())
        items.append(WorkItem(rel, str(root / rel), len(buffer.getvalue()), "v", rel).to_dict())
    return items


def _run(tmp_path: Path, src: Path, items: list[dict], budget_mb: int) -> dict:
    from tasks.enhance import EnhanceJob, Shard

    dest = tmp_path / f"out-{budget_mb}"
    job = EnhanceJob(model_uri="stub", dest_url=str(dest), records_url=str(dest / ".dpe" / "records" / "r"),
                     source_url=str(src), mode="paper", prefetch=True, overlap_cpu=True, io_threads=8,
                     decode_timeout_s=0, max_inflight_mb=budget_mb)
    done = subprocess.run([sys.executable, "-c", SCRIPT, job.model_dump_json(),
                           Shard(index=0, items=items).model_dump_json()],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["counts"] == {"ok": len(items)}
    return result


def test_photos_in_flight_stay_within_the_byte_budget(testdata, tmp_path):
    src = tmp_path / "src"
    items = _photos(testdata, src, 9)
    small = _run(tmp_path, src, items, budget_mb=32)
    large = _run(tmp_path, src, items, budget_mb=4096)
    # The shard's own account: within the budget plus one photo (the one the model needs always proceeds, and a
    # read ahead is charged by estimate until decoded).
    assert small["peak_inflight_mb"] <= 32 + 1.5 * PHOTO_MB, small
    assert large["peak_inflight_mb"] >= 5 * PHOTO_MB, large  # 8 I/O threads read far ahead when allowed to
    # What the operating system saw: the bounded worker peaked well below the unbounded one.
    assert small["peak_rss_mb"] < large["peak_rss_mb"] - 3 * PHOTO_MB, (small, large)
