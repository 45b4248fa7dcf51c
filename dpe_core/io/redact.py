"""Credentials out of messages: URL user:password, signed-URL query secrets, and known secret values.

Every error text that names a URL or quotes a library's message goes through ``redact`` before it can reach
a per-file record, a log line or a report. Known secret values are the values of secret-looking environment
variables (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ``*_PASSWORD`` ...), of secret-looking keys in fsspec's
process configuration (where a Prefect Secret block's storage options are loaded) and of storage options passed
to ``dpe_core.io.storage`` (registered with ``register_secrets``).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 8  # shorter values ("testing", "us-east-1") would mask ordinary words

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s\"'<>]*@")
_QUERY = re.compile(
    r"(?P<key>[?&;](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|AWSAccessKeyId|Signature|sig|"
    r"access_token|token|secret|password|passwd|apikey|api_key|sas|key)=)[^&\s\"'<>]+",
    re.IGNORECASE,
)
_SECRET_NAME = re.compile(
    r"(secret|token|passw|credential|private|api_?key|access_?key|account_?key|sas|signature|^key$|_key$|"
    r"^key_id$|authoriz)", re.IGNORECASE,
)
_registered: set[str] = set()
_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether a variable/option name looks like it holds a credential (key, secret, token, password ...)."""
    return bool(_SECRET_NAME.search(str(name)))


def _values(tree: Any, depth: int = 0) -> Iterable[str]:
    """Secret-looking values inside nested mappings (by key name)."""
    if depth > 6 or not isinstance(tree, Mapping):
        return
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _values(value, depth + 1)
        elif isinstance(value, str | bytes) and is_secret_name(str(key)):
            yield value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def register_secrets(options: Mapping[str, Any] | None) -> None:
    """Remember the secret-looking values of ``options`` (storage options, a credentials mapping) so that
    ``redact`` masks them wherever they show up later in this process."""
    found = {v for v in _values(options or {}) if len(v) >= MIN_SECRET_LENGTH}
    if found - _registered:
        with _lock:
            _registered.update(found)


def known_secrets() -> set[str]:
    """Every secret value redact masks right now (environment, fsspec config, registered)."""
    found = set(_registered)
    found.update(v for k, v in os.environ.items() if is_secret_name(k))
    fsspec = sys.modules.get("fsspec")  # never import fsspec just for this
    conf = getattr(getattr(fsspec, "config", None), "conf", None)
    if isinstance(conf, Mapping):
        found.update(_values(conf))
    return {v for v in found if len(v) >= MIN_SECRET_LENGTH}


def redact(text: str) -> str:
    """``text`` with URL credentials (``scheme://user:password@``), secret query parameters and known secret
    values replaced by ``***``."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", str(text))
    out = _QUERY.sub(lambda m: m.group("key") + MASK, out)
    for secret in sorted(known_secrets(), key=len, reverse=True):
        if secret in out:
            out = out.replace(secret, MASK)
    return out
