"""fsspec storage helpers: read, list, and atomic writes for any URL (local, file://, memory://, s3://...).

Writes are atomic: local files go to a temporary file in the destination folder and are renamed with
os.replace; object stores get one put of the finished bytes (never a streaming write that an exception
could leave half-uploaded).
"""

from __future__ import annotations

import os
import stat
import tempfile
import uuid

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL or local path. Secret-looking storage options (key, secret,
    token ...) are remembered so that error texts never show them (dpe_core.io.redact)."""
    if storage_options:
        from dpe_core.io.redact import register_secrets

        register_secrets(storage_options)
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


def read_bytes(url: str, max_bytes: int | None = None, **storage_options) -> bytes:
    """Whole object/file as bytes. Opens read-only; raises FileNotFoundError when missing.

    max_bytes: refuse a file larger than this with InputTooLargeError naming its size, checked on the stored
    size before any byte is read; the read itself is bounded too (see ``read_path_bytes``).
    """
    fs, path = filesystem(url, **storage_options)
    if max_bytes is None:
        return fs.cat_file(path)
    return read_path_bytes(fs, path, max_bytes=max_bytes, name=url)


def read_path_bytes(fs: fsspec.AbstractFileSystem, path: str, *, max_bytes: int | None = None,
                    name: str | None = None) -> bytes:
    """Bytes of ``path`` inside ``fs`` (a path, never re-parsed as a URL), opened read-only.

    With ``max_bytes``: the stored size is checked first (local: fstat of the opened file; object stores: the
    object's size) and a larger file raises InputTooLargeError naming ``name``, its size and the limit, before
    a byte is read; the read then stops at ``max_bytes + 1`` bytes, so a file that grows meanwhile, or a device
    or pipe that never ends, is refused too instead of filling memory.
    """
    name = path if name is None else name
    if max_bytes is None:
        if is_local(fs):
            with open(path, "rb") as handle:
                return handle.read()
        return fs.cat_file(path)
    from dpe_core.io.limits import check_input_size  # local import: limits -> errors -> redact

    # Before opening: a FIFO blocks open() until a writer comes, so it must be refused from its stat.
    check_path_size(fs, path, max_bytes=max_bytes, name=name)
    if is_local(fs):
        with open(path, "rb") as handle:
            _check_local(name, os.fstat(handle.fileno()), max_bytes)  # the file opened may not be the one stated
            data = handle.read(max_bytes + 1)
    else:
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
    if len(data) > max_bytes:
        check_input_size(name, len(data), max_bytes)
    return data


def check_path_size(fs: fsspec.AbstractFileSystem, path: str, *, max_bytes: int, name: str | None = None) -> int | None:
    """Refuse ``path`` before reading it when it is larger than ``max_bytes`` (InputTooLargeError naming
    ``name``, the size and the limit) or, locally, not a regular file (StorageError: a device or pipe would
    never end). Returns the stored size (None when the store does not say)."""
    name = path if name is None else name
    if is_local(fs):
        info = os.stat(path)
        _check_local(name, info, max_bytes)
        return info.st_size
    from dpe_core.io.limits import check_input_size

    size = fs.size(path)
    check_input_size(name, size, max_bytes)
    return size


def _check_local(name: str, info: os.stat_result, max_bytes: int) -> None:
    from dpe_core.io.errors import StorageError
    from dpe_core.io.limits import check_input_size

    if not stat.S_ISREG(info.st_mode):
        raise StorageError(name, "not a regular file (a device, pipe or socket is never read)")
    check_input_size(name, info.st_size, max_bytes)


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


class UnsafeTarget(Exception):
    """A write refused because its target is unsafe (a link, an original, a name outside the folder). Not an
    OSError: retrying cannot help, and storage retries must not try."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _open_dir_no_follow(name: str, dir_fd: int, shown: str, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if _is_link_at(name, dir_fd):
            raise UnsafeTarget(f"{shown} is a symbolic link (links inside a destination are never followed)") from exc
        raise
    try:
        os.mkdir(name, 0o777, dir_fd=dir_fd)
    except FileExistsError:
        pass
    return _open_dir_no_follow(name, dir_fd, shown, create=False)


def _is_link_at(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def write_bytes_under(root: str, parts: list[str] | tuple[str, ...], data: bytes, *,
                      forbidden_dirs: frozenset[tuple[int, int]] = frozenset(),
                      forbidden_file: tuple[int, int] | None = None, temp_tag: str = "") -> None:
    """Atomically write data to root/parts[0]/.../parts[-1] on the local disk without following any symbolic
    link below root.

    Each folder is opened relative to its parent with O_NOFOLLOW (created when missing), the bytes go to a temp
    file in the last folder, are fsynced and renamed over the name (a link at the name itself is replaced, never
    written through). Raises UnsafeTarget when a folder below root is a link, when a folder is one of
    forbidden_dirs ((device, inode) pairs: the source folders), or when the name is the file forbidden_file
    (the input itself, reached through another name). root itself may be reached through links. temp_tag: put in
    the temp file's name (``.dpe-tmp-<tag>-...``: the destination lock's owner id).
    """
    if not parts or any(p in ("", ".", "..") or "/" in p for p in parts):
        raise UnsafeTarget(f"{'/'.join(parts)!r} is not a plain relative name")
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for depth, name in enumerate(parts[:-1]):
            shown = "/".join(parts[: depth + 1])
            child = _open_dir_no_follow(name, fd, shown, create=True)
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in forbidden_dirs:
                raise UnsafeTarget(f"{shown} is a source folder")
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and forbidden_file is not None and (st.st_dev, st.st_ino) == forbidden_file:
            raise UnsafeTarget(f"{'/'.join(parts)} is the input file itself")
        tmp = f".dpe-tmp-{temp_tag or uuid.uuid4().hex[:12]}-{uuid.uuid4().hex[:8]}"
        tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         0o666, dir_fd=fd)  # 0666 minus the umask, as a plain open() would
        try:
            with os.fdopen(tmp_fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=fd)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(fd)


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
