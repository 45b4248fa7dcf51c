"""The one guarded writer: every byte the enhance and ingest pipelines write (outputs, training copies, shard
records, reports, manifests, summaries) goes through ``GuardedWriter.write``.

It refuses, with ``WriteRefused`` ("refusing to write X because ..."; a per-file error record in a shard, never a
retry), a target that

* is not a plain relative name under the destination ('..', '.', empty or absolute parts: places.rel_problem);
* lies in a source (the destination is a source, inside one, or contains one; a folder on the way is a source
  folder under another name, e.g. a bind mount);
* is reached through a symbolic link inside the destination (a pre-existing ``DST/2004 -> SRC/2004`` is never
  followed: local folders are opened one by one with O_NOFOLLOW);
* is the input itself (same real path, or the same file under another name).

Local writes stay atomic (temp file in the destination folder, fsync, rename); object stores get one put of the
finished bytes. Plain Python: the flow process and the workers import it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from dpe_core.io.places import Place, destination_problem, normalize_url, rel_problem

__all__ = ["GuardedWriter", "WriteRefused", "guarded_writer", "TMP_PREFIX"]

TMP_PREFIX = ".dpe-tmp-"  # temp files of atomic local writes (removed by listing.remove_stale_temp_files)


class WriteRefused(Exception):
    """A write the guard refused; the message says what and why. Not an OSError: storage retries never retry it."""


class GuardedWriter:
    """Writes files under one destination folder while the given source folders are read."""

    def __init__(self, dest_url: str, source_urls: Sequence[str] = (), owner: str = ""):
        """owner: the destination lock's owner id, carried in temp file names (tasks/lease.py)."""
        self.owner = owner
        self.dest = Place.parse(dest_url)
        self.sources = [Place.parse(url) for url in source_urls if url]
        # (device, inode) of the local source folders: a destination folder that is one of them (bind mount) is refused
        self._source_dirs = frozenset(i for i in (s.stat_id() for s in self.sources) if i)

    def __repr__(self) -> str:
        return f"GuardedWriter({self.dest.url!r}, sources={[s.url for s in self.sources]!r})"

    def location(self, rel: str) -> str:
        """Where rel lands (for messages and reports)."""
        return self.dest.display(rel)

    def _refuse(self, rel: str, why: str) -> WriteRefused:
        return WriteRefused(f"refusing to write {self.location(rel)} because {why}")

    def check(self, rel: str, input_rel: str | None = None, source: Place | None = None) -> None:
        """Raise WriteRefused when rel may not be written (see the module docstring); touches no file."""
        problem = rel_problem(rel)
        if problem:
            raise self._refuse(rel, problem)
        for src in self.sources:
            where = destination_problem(src, self.dest)
            if where:
                raise self._refuse(rel, where)
        if input_rel is not None and source is not None and source.family == self.dest.family:
            # dest.root is a real path and no link below it is ever followed: dest.root/rel is where bytes land
            target = self.dest.path(rel)
            original = source.path(input_rel)
            if self.dest.is_local:
                original = os.path.realpath(original)
            if target == original:
                raise self._refuse(rel, f"it is the input {source.display(input_rel)} itself")

    def write(self, rel: str, data: bytes, *, input_rel: str | None = None, source: Place | None = None) -> str:
        """Write data to dest/rel (atomic); input_rel/source: the input this output is made from, never replaced.
        Returns where it was written."""
        self.check(rel, input_rel, source)
        if self.dest.is_local:
            from dpe_core.io.storage import UnsafeTarget, write_bytes_under

            if os.path.realpath(self.dest.root) != self.dest.root:  # workers keep a writer across shards and runs
                raise self._refuse(rel, f"the destination {self.dest.root} has become a symbolic link since the "
                                        f"run started")
            forbidden_file = None
            if input_rel is not None and source is not None and source.is_local:
                try:
                    st = os.stat(source.path(input_rel))
                    forbidden_file = (st.st_dev, st.st_ino)
                except OSError:
                    pass
            try:
                write_bytes_under(self.dest.root, rel.split("/"), data, forbidden_dirs=self._source_dirs,
                                  forbidden_file=forbidden_file, temp_tag=self.owner)
            except UnsafeTarget as exc:
                raise self._refuse(rel, str(exc)) from None
            return self.location(rel)
        fs, path = self.dest.fs, self.dest.path(rel)
        parent = path.rsplit("/", 1)[0]
        if parent and not fs.exists(parent):
            try:
                fs.makedirs(parent, exist_ok=True)
            except (NotImplementedError, PermissionError):
                pass  # object stores have no real folders
        fs.pipe_file(path, data)  # one put of the finished bytes (s3fs uploads a failed streaming write)
        return self.location(rel)

    def write_url(self, url: str, data: bytes) -> str:
        """Write to a URL built with dpe_core.io.places.join from the destination URL (bookkeeping files)."""
        base = self.dest.url.rstrip("/") + "/"
        url = normalize_url(url)
        if not url.startswith(base):
            raise WriteRefused(f"refusing to write {url} because it is not under the destination {self.dest.url}")
        return self.write(url[len(base):], data)


@functools.lru_cache(maxsize=16)
def guarded_writer(dest_url: str, source_url: str | None = None, owner: str = "") -> GuardedWriter:
    """One writer per (destination, source, lock owner) and process (workers keep it across their shards)."""
    return GuardedWriter(dest_url, [source_url] if source_url else [], owner)
