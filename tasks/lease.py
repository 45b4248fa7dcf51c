"""The destination lock: one run at a time writes a destination, on local disks and object stores alike.

A lease object ``<dest>/.dpe/lock.json`` names its holder and when it expires::

    {"owner": "3f2a9c1e7b4d", "run": "20260102T101112Z-brave-fox", "host": "box-7", "pid": 4242,
     "pid_started": 1767348672.1, "pidns": 4026531836, "acquired": "2026-01-02T10:11:12+00:00",
     "expires": 1767348792.0, "ttl_s": 120}

It is created only if absent (local: ``O_CREAT | O_EXCL``; S3: a conditional put ``If-None-Match: *``; other
filesystems: write, then read back and check) and renewed by its holder every ttl/3 while the run lives (S3:
``If-Match`` the holder's last ETag). A second run finds it held and either waits (``wait_s``) or stops with
``DestinationLocked``, whose message names the holder. A lease is stale, and taken over, when it has expired,
or at once when its holder ran on this machine (same host name and PID namespace) and that process is gone.
Take-over is itself exclusive: local disks create a take-over marker named after the stale owner with O_EXCL;
S3 replaces the stale object with ``If-Match`` its ETag. The holder deletes the lease when the run ends.

Temp files of a run's atomic writes carry its owner id (``.dpe-tmp-<owner>-...``), so what a crashed run left
behind can be told from what a live one is writing. Plain Python (fsspec, psutil): no Prefect, no torch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

LOCK_NAME = "lock.json"
STATE_DIR = ".dpe"
DEFAULT_TTL_S = 120.0


class DestinationLocked(RuntimeError):
    """Another live run holds the destination's lease."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it could not renew it in time) or removed."""


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def describe(lease: dict[str, Any]) -> str:
    """'run R (host H, pid P), lease valid until T' for messages."""
    until = _iso(float(lease.get("expires", 0)))
    return (f"run {lease.get('run') or '?'} (owner {lease.get('owner')}, host {lease.get('host')}, pid "
            f"{lease.get('pid')}), lease valid until {until}")


def holder_is_gone(lease: dict[str, Any]) -> bool:
    """True when the lease's process ran in this machine's PID namespace and no longer exists (or the PID now
    belongs to a process started later)."""
    if lease.get("host") != socket.gethostname() or lease.get("pidns") != _pidns():
        return False
    try:
        pid = int(lease.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    started = _process_started(pid)
    if started is None:
        return True
    recorded = lease.get("pid_started")
    return recorded is not None and abs(float(recorded) - started) > 1.0


def is_stale(lease: dict[str, Any], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    try:
        expired = float(lease.get("expires", 0)) < now
    except (TypeError, ValueError):
        expired = True
    return expired or holder_is_gone(lease)


class _Store:
    """Exclusive create / read / compare-and-replace / delete of one small object on some filesystem."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = url_to_fs(url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple | list) else (self.fs.protocol,)
        self.kind = "local" if isinstance(self.fs, LocalFileSystem) else ("s3" if {"s3", "s3a"} & set(protocols)
                                                                           else "other")

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(lease, version) or (None, None) when absent; version: S3 ETag / local (inode, mtime)."""
        if self.kind == "local":
            try:
                with open(self.path, "rb") as handle:
                    st = os.fstat(handle.fileno())
                    data = handle.read()
            except FileNotFoundError:
                return None, None
            return _parse(data), f"{st.st_ino}:{st.st_mtime_ns}"
        for _ in range(5):
            try:
                self.fs.invalidate_cache(self.path)
                before = self.fs.info(self.path).get("ETag")
                data = self.fs.cat_file(self.path)
                self.fs.invalidate_cache(self.path)
                after = self.fs.info(self.path).get("ETag")
            except FileNotFoundError:
                return None, None
            if before == after:
                return _parse(data), after
        return _parse(data), None

    def create(self, data: bytes) -> bool:
        """Create the object only if absent; False when it exists."""
        if self.kind == "local":  # complete content first, then an exclusive link: never a half-written lease
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self._write_temp(data)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: exclusive create
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            finally:
                os.unlink(tmp)
            return True
        if self.kind == "s3":
            return self._s3_conditional_put(data, (FileExistsError,), mode="create")
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, data)
        return True

    def replace(self, data: bytes, version: str | None) -> bool:
        """Replace the object if it is still at `version` (S3: If-Match); False when it changed."""
        if self.kind == "local":
            tmp = self._write_temp(data)
            _, now_version = self.read()
            if now_version != version:
                os.unlink(tmp)
                return False
            os.replace(tmp, self.path)
            return True
        if self.kind == "s3" and version:
            return self._s3_conditional_put(data, (FileNotFoundError, FileExistsError), IfMatch=version)
        _, now_version = self.read()
        if now_version != version:
            return False
        self.fs.pipe_file(self.path, data)
        return True

    def _s3_conditional_put(self, data: bytes, lost_race: tuple[type[OSError], ...], **condition) -> bool:
        """Put with an S3 condition (If-None-Match / If-Match); False when it did not hold: another run wrote
        first, shown as one of `lost_race` or as a failed precondition."""
        try:
            self.fs.pipe_file(self.path, data, **condition)
        except lost_race:
            return False
        except OSError as exc:
            if not _precondition_failed(exc):
                raise
            return False
        return True

    def _write_temp(self, data: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.new"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def delete(self) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass


def _parse(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {"owner": None, "expires": 0, "damaged": True}  # a torn write: stale by definition
    return value if isinstance(value, dict) else {"owner": None, "expires": 0, "damaged": True}


class DestinationLock:
    """Hold ``<dest>/.dpe/lock.json`` for the life of a run (a context manager).

    ttl_s: how long a lease stays valid without renewal (renewed every ttl/3); wait_s: how long a second run
    waits for the holder to finish before giving up with DestinationLocked (0: give up at once).
    """

    def __init__(self, dest_url: str, run: str = "", ttl_s: float = DEFAULT_TTL_S, wait_s: float = 0.0,
                 poll_s: float = 2.0, settle_s: float = 0.2, on_wait: Callable[[str], None] | None = None):
        self.url = f"{dest_url.rstrip('/')}/{STATE_DIR}/{LOCK_NAME}"
        self.store = _Store(self.url)
        self.owner = uuid.uuid4().hex[:12]
        self.run = run
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.on_wait = on_wait
        self.version: str | None = None
        self.lost: str | None = None
        self.took_over: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ lease content

    def _lease(self) -> bytes:
        now = time.time()
        return json.dumps({
            "owner": self.owner, "run": self.run, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": _process_started(os.getpid()), "pidns": _pidns(), "acquired": _iso(now),
            "expires": round(now + self.ttl_s, 3), "ttl_s": self.ttl_s}, sort_keys=True).encode()

    def _mine(self) -> bool:
        lease, version = self.store.read()
        if lease is None or lease.get("owner") != self.owner:
            return False
        self.version = version
        return True

    # ------------------------------------------------------------------ acquire / renew / release

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lease if free or stale; returns None when held now, else the live holder's lease."""
        if self.store.create(self._lease()):
            return None if self._verify() else self._holder()
        lease, version = self.store.read()
        if lease is None:  # released between our create and read: try again next round
            return {"owner": None, "expires": time.time()}
        if not is_stale(lease):
            return lease
        if self._take_over(lease, version):
            self.took_over = lease
            log.warning("took over the stale lease of %s", describe(lease))
            return None
        return self._holder() or {"owner": None, "expires": time.time()}

    def _holder(self) -> dict[str, Any] | None:
        lease, _ = self.store.read()
        return lease

    def _verify(self) -> bool:
        """Read the lease back (filesystems without an exclusive create may have let another writer win)."""
        if self.store.kind == "other":
            time.sleep(self.settle_s)
        return self._mine()

    def _take_over(self, stale: dict[str, Any], version: str | None) -> bool:
        if self.store.kind == "local":
            marker = f"{self.store.path}.takeover-{stale.get('owner')}"
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:  # a contender that died mid take-over leaves its marker: ignore it after a while
                    if time.time() - os.path.getmtime(marker) > max(10.0, self.ttl_s / 4):
                        os.unlink(marker)
                except FileNotFoundError:
                    pass
                return False
            os.close(fd)
            try:
                lease, now_version = self.store.read()
                if lease is None or lease.get("owner") != stale.get("owner") or not is_stale(lease):
                    return False
                return self.store.replace(self._lease(), now_version) and self._verify()
            finally:
                os.unlink(marker)
        return self.store.replace(self._lease(), version) and self._verify()

    def _remove_torn_temps(self) -> None:
        """Local: lease temp files of a process killed while writing one (older than a minute)."""
        if self.store.kind != "local":
            return
        folder, name = os.path.split(self.store.path)
        try:
            leftovers = [n for n in os.listdir(folder) if n.startswith(name + ".") and n.endswith(".new")]
        except FileNotFoundError:
            return
        for leftover in leftovers:
            path = os.path.join(folder, leftover)
            try:
                if time.time() - os.path.getmtime(path) > 60:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def acquire(self) -> DestinationLock:
        deadline = time.monotonic() + self.wait_s
        self._remove_torn_temps()
        told = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                self._start_renewing()
                return self
            if time.monotonic() >= deadline:
                raise DestinationLocked(
                    f"destination {self.url.rsplit('/' + STATE_DIR, 1)[0]} is in use by another dpe run: "
                    f"{describe(holder)}. Wait for it to finish, or let this run wait with --lock-wait SECONDS; "
                    f"a lease whose run died is taken over when it expires (or at once on the same machine).")
            if not told and self.on_wait is not None:
                self.on_wait(f"waiting up to {self.wait_s:.0f} s for {describe(holder)}")
                told = True
            time.sleep(min(self.poll_s, max(0.05, deadline - time.monotonic())))

    def renew(self) -> None:
        """Extend the lease; marks it lost when someone else holds it now."""
        with self._guard:
            if self.lost:
                return
            lease, version = self.store.read()
            if lease is not None and lease.get("owner") == self.owner:
                if self.store.replace(self._lease(), version):
                    return
                # Removed or taken between our read and our write: say which, as it is now.
                lease, _ = self.store.read()
            if lease is None:
                self.lost = f"the lease on {self.url} was removed"
            elif lease.get("owner") != self.owner:
                self.lost = f"the lease on {self.url} was taken over by {describe(lease)}"
            else:
                self.lost = f"the lease on {self.url} changed while being renewed"
            log.error("%s", self.lost)

    def _start_renewing(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Exception as exc:  # storage hiccup: try again next period, before the lease expires
                    log.warning("renewing the lease on %s failed: %s", self.url, exc)
                if self.lost:
                    return

        self._thread = threading.Thread(target=loop, name="dpe-lease-renewal", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLost when this run no longer holds the lease."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._guard:
            try:
                if not self.lost and self._mine():
                    self.store.delete()
            except Exception as exc:  # the lease expires by itself
                log.warning("could not remove the lease %s: %s", self.url, exc)

    def __enter__(self) -> DestinationLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _precondition_failed(exc: OSError) -> bool:
    """Whether an S3 conditional put failed because its condition did not hold (someone else wrote first)."""
    return "pre-condition" in str(exc) or "Precondition" in str(exc)
