"""Shared by tests/tasks and tests/system: folders of real test photos, hashing, report reading."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

# Small real photos with rich metadata (GPS, ICC, XMP, IPTC, maker notes, orientation), plus PNG and WebP.
ARCHIVE = {
    "2004/canon_s40.jpg": "camera/canon_s40.jpg",
    "2004/trip/nikon_d2h_gps_xmp.jpg": "camera/nikon_d2h_gps_xmp.jpg",
    "2004/trip/nikon_e4600_icc_xmp.jpg": "camera/nikon_e4600_icc_xmp.jpg",
    "2011/iphone4s_gps.jpg": "camera/iphone4s_gps.jpg",
    "2011/iphone4s_orient6_lensinfo.jpg": "camera/iphone4s_orient6_lensinfo.jpg",
    "2011/nokia_n70_iptc.jpg": "camera/nokia_n70_iptc.jpg",
    "2015/pentax_k3ii_gps_icc_xmp.jpg": "camera/pentax_k3ii_gps_icc_xmp.jpg",
    "2015/panasonic_gf1_orient6.jpg": "camera/panasonic_gf1_orient6.jpg",
    "scans/chelsea.png": "natural/chelsea.png",
    "scans/hopper_6.webp": "orientation/hopper_6.webp",
}

# Damaged or hostile files from edge/ with the failure class the report must name.
CORRUPT = {
    "bad/truncated_premature_end.jpg": "edge/truncated_premature_end.jpg",
    "bad/corrupt_random.jpg": "edge/corrupt_random.jpg",
    "bad/corrupt_png_sig.png": "edge/corrupt_png_sig.png",
    "bad/bomb_800gpx.png": "edge/bomb_800gpx.png",
}


def make_folder(root: Path, testdata: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, src in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(testdata / src, target)
    return root


def sha256_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def image_files(root: Path) -> list[str]:
    """Relative paths of the photo outputs under a destination (bookkeeping and temp files excluded)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".dpe" not in p.relative_to(root).parts)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_report(dest: Path) -> list[dict]:
    runs = sorted((dest / ".dpe" / "runs").iterdir())
    return read_jsonl(runs[-1] / "report.jsonl")

