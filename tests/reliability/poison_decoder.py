"""A misbehaving decoder for the reliability tests, plugged in through the documented ``DPE_DECODER`` extension
point (tasks/decoder_process.py). Real photos carry a marker after their end (decoders ignore trailing bytes);
the marker decides what goes wrong, for real, in the process that decodes:

* ``DPE-POISON:hang``  spins forever in a busy loop (a decoder stuck on a crafted file);
* ``DPE-POISON:segv``  reads address 0 through ctypes: a native crash (SIGSEGV);
* ``DPE-POISON:abort`` calls abort(): SIGABRT, as a failed assertion in a codec library does.

Every other file is decoded by dpe_core.io.decode_photo.
"""

from __future__ import annotations

import ctypes
import os

MARKER = b"DPE-POISON:"


def poison(data: bytes, kind: str) -> bytes:
    """The photo's bytes with a poison marker appended."""
    return data + MARKER + kind.encode()


def decode(data: bytes, name: str, **kwargs):
    tail = data[-32:]
    if MARKER + b"hang" in tail:
        while True:  # a real hang: the decoder never returns and never yields
            pass
    if MARKER + b"segv" in tail:
        ctypes.string_at(0)
    if MARKER + b"abort" in tail:
        os.abort()
    from dpe_core.io import decode_photo

    return decode_photo(data, name, **kwargs)
