"""Plain helpers shared by the tasks: listing with sizes, relative paths, patterns, JSON lines, storage config.

No Prefect, no torch here: the flow process imports this module. Storage goes through fsspec
(``dpe_core.io.storage`` for writes). Credentials never travel as parameters: fsspec reads them from the
environment (AWS_* for s3fs, ``FSSPEC_<PROTOCOL>_<KWARG>`` or fsspec config files) or from a Prefect Secret
block loaded into ``fsspec.config.conf`` on each process (see ``apply_storage_config``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

# Input formats -> file extensions (lower case). "mpo" is a JPEG with extra frames (stereo cameras).
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "jpeg": (".jpg", ".jpeg", ".jpe"),
    "png": (".png",),
    "tiff": (".tif", ".tiff"),
    "webp": (".webp",),
    "heic": (".heic", ".heif"),
    "mpo": (".mpo",),
}
DEFAULT_FORMATS = ("jpeg", "png", "tiff", "webp", "heic", "mpo")
TMP_PREFIX = ".dpe-tmp-"  # dpe_core.io.storage.write_bytes_atomic's local temp files
STATE_DIR = ".dpe"  # bookkeeping folder inside a destination: manifest, shard records, run reports


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def fs_root(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol and trailing '/') of a folder URL."""
    fs, path = url_to_fs(url)
    return fs, path.rstrip("/") or "/"


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        if part:
            out = f"{out}/{part.strip('/')}"
    return out


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path inside fs back to a URL (plain path for local files)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


@dataclass(frozen=True)
class FileEntry:
    """One listed file: relative posix path under the listed root, full URL, size in bytes, version stamp.

    version: the object store's ETag where there is one, else the modification time; with the size it tells
    whether an input changed since an output was made from it.
    """

    rel: str
    url: str
    size: int
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return str(info[key]).strip('"')
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is not None:
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return ""


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def matches(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """fnmatch-style patterns on the relative path ('*' also crosses '/'); a pattern without '/' also tests
    the file name, so '*.jpg' and 'IMG_*' do what one expects at any depth."""

    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(rel, pattern) or ("/" not in pattern and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1],
                                                                                                 pattern))

    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


def extensions_for(formats: Iterable[str]) -> tuple[str, ...]:
    exts: list[str] = []
    for fmt in formats:
        if fmt not in FORMAT_EXTENSIONS:
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMAT_EXTENSIONS)}")
        exts.extend(FORMAT_EXTENSIONS[fmt])
    return tuple(exts)


def list_files(url: str, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
               formats: Iterable[str] | None = DEFAULT_FORMATS, include_hidden: bool = False,
               skip_under: Sequence[str] = ()) -> list[FileEntry]:
    """Files under a folder URL, sorted by relative path, filtered by patterns and formats (None: any file).

    Hidden files and folders (name starting with '.', e.g. macOS '._IMG.jpg' resource forks, our own '.dpe'
    bookkeeping and temp files) are left out unless include_hidden. skip_under: folder URLs to leave out
    (a destination inside the source). Raises FileNotFoundError when the folder does not exist.
    """
    fs, root = fs_root(url)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        raise FileNotFoundError(f"{url}: no such folder or bucket prefix")
    if fs.isfile(root):
        raise NotADirectoryError(f"{url} is a file; give the folder that holds the photos")
    exts = extensions_for(formats) if formats is not None else None
    skip = []
    for other in skip_under:
        ofs, opath = fs_root(other)
        if type(ofs) is type(fs) and (opath + "/").startswith(root + "/"):
            skip.append(opath[len(root):].strip("/") + "/")
    entries = []
    for path, info in fs.find(root, detail=True, withdirs=False).items():
        if info.get("type", "file") != "file":
            continue
        rel = path[len(root):].lstrip("/")
        if not rel or any(rel.startswith(s) for s in skip if s != "/"):
            continue
        if not include_hidden and _is_hidden(rel):
            continue
        if exts is not None and not rel.lower().endswith(exts):
            continue
        if not matches(rel, include, exclude):
            continue
        entries.append(FileEntry(rel, full_url(fs, path), int(info.get("size") or 0), _version(info)))
    return sorted(entries, key=lambda e: e.rel)


def list_sizes(url: str) -> dict[str, int]:
    """{relative path: size} of every file under a folder URL (hidden ones included); {} when it does not exist."""
    fs, root = fs_root(url)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return {}
    return {path[len(root):].lstrip("/"): int(info.get("size") or 0)
            for path, info in fs.find(root, detail=True, withdirs=False).items() if info.get("type", "file") == "file"}


def remove_stale_temp_files(url: str, older_than_s: float = 0.0) -> list[str]:
    """Delete leftover temp files of atomic local writes (a process killed between write and rename).

    Only files named with our temp prefix are touched; object stores never have them (one put per object).
    Returns the removed relative paths.
    """
    fs, root = fs_root(url)
    if not is_local(fs) or not os.path.isdir(root):
        return []
    removed = []
    cutoff = time.time() - older_than_s
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(TMP_PREFIX):
                path = os.path.join(folder, name)
                try:
                    if os.path.getmtime(path) <= cutoff:
                        os.unlink(path)
                        removed.append(os.path.relpath(path, root).replace(os.sep, "/"))
                except FileNotFoundError:
                    pass
    return removed


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records).encode()


def loads_jsonl(data: bytes, where: str = "") -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines blob; a torn last line (writer killed) is skipped, other bad lines raise."""
    lines = data.decode("utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                continue
            raise ValueError(f"{where}: line {number} is not JSON: {exc}") from exc


def read_jsonl(url: str) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; [] when it does not exist."""
    fs, path = url_to_fs(url)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return []
    return list(loads_jsonl(data, url))


def write_atomic(url: str, data: bytes) -> None:
    from dpe_core.io.storage import write_bytes_atomic

    write_bytes_atomic(url, data)


def write_json(url: str, value: Any) -> None:
    write_atomic(url, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(url: str) -> Any | None:
    fs, path = url_to_fs(url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def apply_storage_config(config: dict[str, dict[str, Any]] | None) -> None:
    """Merge per-protocol fsspec defaults ({"s3": {"endpoint_url": ..., "key": ...}}) into fsspec.config.conf.

    Used with a Prefect Secret block: the flow and every task load the block by name on their own process,
    so credentials never appear in parameters, task inputs or the Dask graph.
    """
    if not config:
        return
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise ValueError('storage config must be a JSON object of per-protocol options, e.g. {"s3": {"key": "..."}}')
    for protocol, options in config.items():
        fsspec.config.conf.setdefault(protocol, {}).update(options)
    fsspec.AbstractFileSystem.clear_instance_cache()


_BLOCKS_LOADED: set[str] = set()


def use_storage_block(name: str | None) -> None:
    """Load a Prefect Secret block holding per-protocol fsspec options (JSON) into this process, once.

    The block is read by name on each process that needs it (flow process, every Dask worker), so the
    credentials never travel in parameters or the task graph.
    """
    if not name or name in _BLOCKS_LOADED:
        return
    from prefect.blocks.system import Secret

    value = Secret.load(name).get()
    if isinstance(value, str | bytes):
        value = json.loads(value)
    apply_storage_config(value)
    _BLOCKS_LOADED.add(name)


def lpt_shards(items: Sequence[Any], n_shards: int, cost) -> list[list[Any]]:
    """Split items into n_shards lists of about equal total cost (longest-processing-time-first), each list
    kept in the items' order, the costliest shard first."""
    n_shards = max(1, min(n_shards, len(items)))
    loads = [0.0] * n_shards
    members: list[list[int]] = [[] for _ in range(n_shards)]
    for index in sorted(range(len(items)), key=lambda i: -cost(items[i])):
        target = min(range(n_shards), key=lambda s: (loads[s], len(members[s])))
        loads[target] += cost(items[index])
        members[target].append(index)
    order = sorted(range(n_shards), key=lambda s: -loads[s])
    return [[items[i] for i in sorted(members[s])] for s in order if members[s]]
