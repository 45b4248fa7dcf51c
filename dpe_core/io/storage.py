"""fsspec storage helpers: read, list, and atomic writes for any URL (local, file://, memory://, s3://...).

Writes are atomic: local files go to a temporary file in the destination folder and are renamed with
os.replace; object stores get one put of the finished bytes (never a streaming write that an exception
could leave half-uploaded).
"""

from __future__ import annotations

import os
import tempfile
import uuid

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL or local path."""
    return url_to_fs(url, **storage_options)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join_url(base: str, *parts: str) -> str:
    """Join URL/path segments with '/' (works for local paths and object-store URLs)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _read_umask() -> int:
    # os.umask can only be read by setting it; do it once at import, not in writer threads.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def read_bytes(url: str, **storage_options) -> bytes:
    """Whole object/file as bytes. Opens read-only; raises FileNotFoundError when missing."""
    fs, path = filesystem(url, **storage_options)
    return fs.cat_file(path)


def exists(url: str, **storage_options) -> bool:
    fs, path = filesystem(url, **storage_options)
    return fs.exists(path)


def write_bytes_atomic(url: str, data: bytes, **storage_options) -> None:
    """Write data to url so that readers see either the old object or the complete new one."""
    fs, path = filesystem(url, **storage_options)
    if is_local(fs):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dpe-tmp-", suffix=f"-{uuid.uuid4().hex[:8]}", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask).
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent and not fs.exists(parent):
        try:
            fs.makedirs(parent, exist_ok=True)
        except (NotImplementedError, PermissionError):
            pass  # object stores have no real folders
    fs.pipe_file(path, data)


def list_files(
    url: str, patterns: str | list[str] | tuple[str, ...] = "**", *, extensions=None, **storage_options
) -> list[str]:
    """Sorted paths (relative to url, '/'-separated) of the files under url matching any glob pattern.

    patterns: glob(s) relative to url ("**" = everything below, "*.jpg" = this level only).
    extensions: optional iterable of extensions (".jpg", "png"; case-insensitive) to keep.
    """
    fs, root = filesystem(url, **storage_options)
    root = root.rstrip("/")
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    exts = None
    if extensions is not None:
        exts = {("." + e.lstrip(".")).lower() for e in extensions}
    found: set[str] = set()
    for pat in pats:
        pat = pat.lstrip("/")
        if pat in ("**", "**/*"):
            hits = fs.find(root)
        else:
            hits = fs.glob(f"{root}/{pat}")
        for hit in hits:
            hit = hit if isinstance(hit, str) else str(hit)
            if fs.isdir(hit):
                continue
            rel = hit[len(root) :].lstrip("/") if hit.startswith(root) else hit.rsplit("/", 1)[-1]
            if exts is not None and os.path.splitext(rel)[1].lower() not in exts:
                continue
            found.add(rel)
    return sorted(found)
