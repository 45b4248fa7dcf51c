"""Linux inotify through ctypes, for tests that must act at an exact moment seen on the filesystem (e.g. SIGKILL a
process the instant it renames a file), without hooks in the code under test."""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_CLOSE_WRITE = 0x8
_EVENT = struct.Struct("iIII")


class Watch:
    """Watch folders for events; ``wait(predicate)`` returns the first (folder, name, mask) it accepts."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._folders: dict[int, str] = {}

    def add(self, folder: str, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        self._folders[wd] = folder

    def wait(self, predicate, timeout: float, alive=lambda: True) -> tuple[str, str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                if not alive():
                    raise AssertionError("the watched process ended before the awaited moment")
                continue
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
                offset += _EVENT.size + length
                event = (self._folders.get(wd, ""), name, mask)
                if predicate(*event):
                    return event
        raise AssertionError("timed out waiting for a filesystem event")

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
