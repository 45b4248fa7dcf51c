"""Decode photos in a small child process with a time limit: a hostile file costs that photo only.

A decoder that hangs on a crafted file, or crashes natively (a segfault in a codec library, an abort), would
otherwise stall or kill the Dask worker and every photo of its shard. Here each worker process keeps a few
decoder processes (one per thread that decodes at the same time, started on first use and reused across
shards). A decode that exceeds its time limit gets its process killed (SIGKILL) and replaced; a process that
dies mid-decode is replaced too. Both become a per-file error of that photo::

    2011/x.jpg: decoder process failed: timed out after 30 s while decoding
    2011/y.jpg: decoder process failed: decoder process crashed (signal 11: SIGSEGV)

Transport (tasks/decoder_transport.py): the request is the file's bytes; the answer is the decoded ``Photo``
pickled with protocol 5, its pixel buffers out of band in shared memory (files of /dev/shm the parent maps and
unlinks) or, when small or where that is missing, through the pipe. The parent unpickles with an allow-list
(numpy arrays and the classes of ``dpe_core.io``): a child that parsed a hostile file is not trusted to run code
in the worker.

Extension point: ``DPE_DECODER=module:function`` (environment of the worker processes) names the function that
decodes instead of ``dpe_core.io.decode_photo`` (in the decoder process, or in the worker when the time limit is
off), with the same signature ``fn(data, name, **kwargs) -> Photo``: a decoder for other formats (a RAW
developer), or a misbehaving one in tests. Nothing else changes with it.

The child imports only ``dpe_core.io`` (no torch, no Prefect). It exits when the worker closes its pipe or
dies (parent-death signal on Linux), so no decoder outlives its worker.
"""

from __future__ import annotations

import atexit
import builtins
import importlib
import io
import itertools
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

from tasks.decoder_transport import (
    SHM_MIN_BYTES,
    SHM_PREFIX,
    grow_pipe,
    load_photo,
    map_shm,
    read_exact,
    recv_header,
    remove_shm,
    remove_stale_shm,
    send_frame,
    shm_usable,
    write_shm,
)

DEFAULT_DECODER = "dpe_core.io:decode_photo"
DECODER_ENV = "DPE_DECODER"


# ----------------------------------------------------------------------------------------------- errors


def _photo_error_class():
    from dpe_core.io.errors import PhotoError

    return PhotoError


_ERROR_CLASS: list[type] = []


def decoder_process_error(name: str, detail: str) -> Exception:
    """A PhotoError (so the report shows its text as the reason) for a decode the child did not finish:
    ``DecoderProcessError``, defined on first use so that importing this module does not import dpe_core."""
    if not _ERROR_CLASS:
        _ERROR_CLASS.append(type("DecoderProcessError", (_photo_error_class(),),
                                 {"reason": "decoder process failed", "__module__": __name__}))
    return _ERROR_CLASS[0](name, detail)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _rebuild_error(header: dict[str, Any], name: str) -> Exception:
    """The child's exception, as the same PhotoError subclass (its text is the report's reason)."""
    kind, message = header.get("type", "Exception"), header.get("message", "")
    module, _, cls_name = kind.rpartition(".")
    if module == "dpe_core.io" or module.startswith("dpe_core.io."):
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, _photo_error_class()):
            exc = cls.__new__(cls)
            Exception.__init__(exc, message)
            exc.name, exc.detail = header.get("name", name), header.get("detail", message)
            return exc
    builtin = getattr(builtins, cls_name, None) if module in ("", "builtins") else None
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        try:
            return builtin(message)
        except Exception:  # an exception type with another signature
            pass
    return RuntimeError(f"{cls_name}: {message}")


# ----------------------------------------------------------------------------------------------- the child


def load_decoder():
    """The decode function: ``DPE_DECODER`` (module:function) or dpe_core.io.decode_photo."""
    target = os.environ.get(DECODER_ENV) or DEFAULT_DECODER
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr or "decode_photo")


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends (Linux); exit at once if it already has."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def child_main() -> None:
    """Serve decode requests on stdin/stdout until stdin closes."""
    parent = int(os.environ.get("DPE_DECODER_PARENT", "0"))
    if parent:
        _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole group: the worker decides
    requests, answers = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # stray prints of libraries go to stderr, never into the protocol
    decode = load_decoder()
    while True:
        try:
            header = recv_header(requests, None)
        except EOFError:
            return
        data = bytes(read_exact(requests, header["size"], None))
        name = header.get("name", "")
        try:
            photo = decode(data, name, **header.get("kwargs", {}))
            del data
            buffers: list[pickle.PickleBuffer] = []
            state = pickle.dumps(photo, protocol=5, buffer_callback=buffers.append)
            raws = [b.raw() for b in buffers]
            shm_names = _to_shared_memory(raws, header.get("shm_prefix"))
            send_frame(answers, {"ok": True, "pickle": len(state), "buffers": [r.nbytes for r in raws],
                                 "shm": shm_names},
                       [state, *(r for r, shm in zip(raws, shm_names, strict=True) if shm is None)])
            del photo, buffers, raws, state
        except Exception as exc:
            error = {"ok": False, "type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)}
            for field in ("name", "detail"):
                if isinstance(getattr(exc, field, None), str):
                    error[field] = getattr(exc, field)
            send_frame(answers, error, [])


def _to_shared_memory(raws: list, prefix: str | None) -> list[str | None]:
    """Per buffer: the /dev/shm file it was written to (under the parent's prefix), or None: through the pipe."""
    names: list[str | None] = []
    for index, raw in enumerate(raws):
        name = f"{prefix}{index}" if prefix and raw.nbytes >= SHM_MIN_BYTES else None
        names.append(name if name and write_shm(name, raw) else None)
    return names


# ----------------------------------------------------------------------------------------------- the parent

_SPAWN_REQUESTS: queue.Queue = queue.Queue()
_KEEPER: threading.Thread | None = None
_KEEPER_GUARD = threading.Lock()


def _keeper_loop() -> None:
    while True:
        future, argv, env = _SPAWN_REQUESTS.get()
        try:
            future.set_result(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                               close_fds=True))
        except BaseException as exc:
            future.set_exception(exc)


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start the child from one long-lived thread: the parent-death signal fires when the *thread* that
    started a process ends, and shard I/O threads come and go."""
    global _KEEPER
    with _KEEPER_GUARD:
        if _KEEPER is None or not _KEEPER.is_alive():
            _KEEPER = threading.Thread(target=_keeper_loop, name="dpe-decoder-spawner", daemon=True)
            _KEEPER.start()
    future: Future = Future()
    _SPAWN_REQUESTS.put((future, argv, env))
    return future.result(timeout=60)


class DecoderProcess:
    """One child decoder process and its pipes; not thread-safe (the pool hands it to one thread at a time)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["DPE_DECODER_PARENT"] = str(os.getpid())
        paths = [p for p in sys.path if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        t0 = time.perf_counter()
        self.process = _spawn([sys.executable, "-c", "from tasks.decoder_process import child_main; child_main()"],
                              env)
        self.start_s = time.perf_counter() - t0
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        grow_pipe(self._in)
        grow_pipe(self._out)
        self.decodes = 0
        self._requests = itertools.count()
        self._shm = shm_usable()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def decode(self, data: bytes, name: str, timeout_s: float | None, **kwargs):
        """The decoded Photo; raises the decoder's own PhotoError, or a decoder-process error after which this
        object is dead (the caller drops it)."""
        deadline = time.monotonic() + timeout_s if timeout_s else None
        # Files this request's pixels may come back in: this worker, this child, this request.
        prefix = f"{SHM_PREFIX}{os.getpid()}-{self.pid}-{next(self._requests)}-" if self._shm else None
        answered = False
        try:
            send_frame(self._in, {"size": len(data), "name": name, "kwargs": kwargs, "shm_prefix": prefix}, [data])
            header = recv_header(self._out, deadline)
            if header.get("ok"):
                state = bytes(read_exact(self._out, header["pickle"], deadline))
                shm_names = header.get("shm") or [None] * len(header["buffers"])
                buffers = [read_exact(self._out, n, deadline) if shm is None else map_shm(shm, prefix, n)
                           for n, shm in zip(header["buffers"], shm_names, strict=True)]
            answered = True
        except TimeoutError:
            self.kill()
            raise decoder_process_error(name, f"timed out after {timeout_s:g} s while decoding") from None
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise decoder_process_error(name, self._death()) from None
        except (ValueError, OSError) as exc:  # a garbled header, or a buffer not provided as announced
            self.kill()  # the pipe's framing is lost too: this child cannot serve another request
            raise decoder_process_error(name, f"decoder process sent a bad answer: {exc}") from None
        finally:
            if prefix and not answered:
                remove_shm(prefix)  # what the child wrote for a request that failed
        self.decodes += 1
        if not header.get("ok"):  # the decoder's own error (corrupt, truncated, too many pixels ...)
            raise _rebuild_error(header, name)
        return load_photo(state, buffers)

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            return "decoder process stopped answering"
        if code < 0:
            return f"decoder process crashed (signal {-code}: {_signal_name(-code)})"
        return f"decoder process exited with code {code}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait for anything
            pass
        self.close()

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class DecoderPool:
    """Idle decoder processes of this worker process, checked out one per decoding thread."""

    def __init__(self, max_idle: int = 4) -> None:
        remove_stale_shm()  # pixels a killed worker's decoders left in /dev/shm
        self._idle: list[DecoderProcess] = []
        self._lock = threading.Lock()
        self.max_idle = max_idle
        self.started = 0
        self.replaced = 0
        self.start_s = 0.0

    def decode(self, data: bytes, name: str, timeout_s: float | None, **kwargs):
        with self._lock:
            child = self._idle.pop() if self._idle else None
        if child is None or not child.alive():
            if child is not None:
                child.close()
            child = self._start()
        try:
            photo = child.decode(data, name, timeout_s, **kwargs)
        except BaseException:
            if child.alive():
                self._put_back(child)
            else:
                self.replaced += 1
                child.close()
            raise
        self._put_back(child)
        return photo

    def prestart(self, count: int = 1) -> int:
        """Start decoder processes until ``count`` are idle, each warmed by decoding a tiny JPEG (the codec
        imports): a worker pays their start (~0.5 s each) while it warms up, not on its first photo.
        Returns how many were started."""
        started = 0
        while len(self.pids()) < count:
            child = self._start()
            child.decode(_tiny_jpeg(), "warm-up.jpg", 60.0)
            self._put_back(child)
            started += 1
        return started

    def _start(self) -> DecoderProcess:
        child = DecoderProcess()
        self.started += 1
        self.start_s += child.start_s
        return child

    def _put_back(self, child: DecoderProcess) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(child)
                return
        child.close()

    def pids(self) -> list[int]:
        with self._lock:
            return [c.pid for c in self._idle]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 96, 64)).save(buffer, "JPEG")
    return buffer.getvalue()


_POOL: DecoderPool | None = None
_POOL_GUARD = threading.Lock()


def pool() -> DecoderPool:
    """This process's decoder pool (closed at exit)."""
    global _POOL
    with _POOL_GUARD:
        if _POOL is None:
            _POOL = DecoderPool()
            atexit.register(_POOL.close)
        return _POOL


def decode_isolated(data: bytes, name: str, timeout_s: float | None, **kwargs):
    """decode_photo(data, name, **kwargs) in a decoder process of this worker, within timeout_s seconds."""
    return pool().decode(data, name, timeout_s, **kwargs)


if __name__ == "__main__":  # pragma: no cover - started through child_main()
    child_main()
