"""TLS for Dask clusters that use it (``tls://`` scheduler addresses): the ``distributed.Security`` a flow's
clients connect with, read from a file named by ``dask_security`` (CLI ``--dask-security``).

Two file shapes (YAML or JSON; relative paths are taken from the file's folder):

* Security's own keywords: ``{tls_ca_file: ca.pem, tls_client_cert: client.pem, tls_client_key: client-key.pem,
  require_encryption: true}``;
* a Dask configuration file: ``{distributed: {comm: {require-encryption: true, tls: {ca-file: ..., client:
  {cert: ..., key: ...}}}}}`` (what ``DASK_CONFIG`` files hold).

Without the parameter, dask's own configuration decides (``DASK_CONFIG``, ``distributed.comm.tls.*``), as for any
Dask client. Only the flow process reads the files; workers have their own (``dask worker --tls-*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SECURITY_KEYS = {"tls_ca_file", "tls_client_cert", "tls_client_key", "tls_ciphers", "tls_min_version",
                 "tls_max_version", "require_encryption", "tls_scheduler_cert", "tls_scheduler_key",
                 "tls_worker_cert", "tls_worker_key"}
PATH_KEYS = {"tls_ca_file", "tls_client_cert", "tls_client_key", "tls_scheduler_cert", "tls_scheduler_key",
             "tls_worker_cert", "tls_worker_key", "ca-file", "cert", "key"}


class SecurityFileError(ValueError):
    """The dask_security file is missing, unreadable, or names certificate files that do not exist."""


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat |= _flatten(value, dotted)
        else:
            flat[dotted] = value
    return flat


def _absolute(value: Any, base: Path, key: str, source: Path) -> Any:
    if not isinstance(value, str) or not value or "-----BEGIN" in value:  # inline PEM text is taken as is
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise SecurityFileError(f"{source}: {key} names {path}, which does not exist")
    return str(path)


def load_security(spec: str | None):
    """A distributed.Security from the file ``spec`` (shapes in the module docstring); None when spec is empty
    (the client then uses dask's configuration). Raises SecurityFileError with the file and key at fault."""
    if not spec:
        return None
    import yaml
    from distributed.security import Security

    source = Path(spec).expanduser().resolve()
    try:
        data = yaml.safe_load(source.read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as exc:
        raise SecurityFileError(f"cannot read the Dask security file {source}: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise SecurityFileError(f"{source}: expected a mapping of Security keywords or a Dask config")
    base = source.parent
    if "distributed" in data:
        import dask

        flat = {k: _absolute(v, base, k.rsplit(".", 1)[-1], source) if k.rsplit(".", 1)[-1] in PATH_KEYS else v
                for k, v in _flatten({"distributed": data["distributed"]}).items()}
        with dask.config.set(flat):
            return Security()
    unknown = set(data) - SECURITY_KEYS
    if unknown:
        raise SecurityFileError(f"{source}: unknown keys {sorted(unknown)} (expected {sorted(SECURITY_KEYS)} or a "
                                "Dask config with a top-level 'distributed')")
    return Security(**{k: _absolute(v, base, k, source) if k in PATH_KEYS else v for k, v in data.items()})
