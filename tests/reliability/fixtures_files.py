"""Shared by the reliability tests: small real images under any name, and fingerprints of whole trees."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image


def tiny_jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small, decodable JPEG whose pixels depend on seed (so twins differ)."""
    image = Image.new("RGB", size)
    image.putdata([((x * 4 + seed * 37) % 256, (y * 5 + seed * 11) % 256, (x + y + seed) % 256)
                   for y in range(size[1]) for x in range(size[0])])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tiny_png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(tiny_jpeg(seed))).save(buffer, format="PNG")
    return buffer.getvalue()


def write(root: Path | str, rel: str, data: bytes) -> None:
    """Write data at root/rel; rel may hold any byte a file name can (surrogate escapes included)."""
    path = os.path.join(os.fsencode(str(root)), os.fsencode(rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def tree_fingerprint(root: Path | str) -> dict[str, str]:
    """{relative name: sha256 of a file | 'link -> target' | 'dir'} of everything below root, links not followed
    (names as bytes decoded with surrogate escapes)."""
    out: dict[str, str] = {}
    root = os.fsencode(str(root))
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.fsdecode(os.path.relpath(path, root))
            if os.path.islink(path):
                out[rel] = f"link -> {os.fsdecode(os.readlink(path))}"
            elif os.path.isdir(path):
                out[rel] = "dir"
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    out[rel] = hashlib.sha256(handle.read()).hexdigest()
            else:
                out[rel] = "special"
    return out
