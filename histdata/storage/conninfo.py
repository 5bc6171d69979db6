"""Turning ``[database]`` configuration into a libpq connection string.

No credential has a default. A URL without a password leaves libpq to find one in its usual
places: ``PGPASSWORD``, the passfile (``PGPASSFILE`` or ``~/.pgpass``), or — under systemd —
a credential named ``pgpassword`` (``LoadCredential=pgpassword:/etc/histdata/pgpassword``),
which is read from ``$CREDENTIALS_DIRECTORY``. ``sslmode`` and ``sslrootcert`` pass through.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import psycopg.conninfo

from histdata.config import DatabaseConfig
from histdata.errors import ConfigError

__all__ = ["build_conninfo", "describe"]

_CREDENTIAL = "pgpassword"


def build_conninfo(config: DatabaseConfig, *, environ: Mapping[str, str] | None = None) -> str:
    """Build the conninfo for ``config.url`` with TLS options, timeout and application name.

    Raises:
        ConfigError: ``url`` is empty (the embedded server supplies its own) or malformed.
    """
    env = os.environ if environ is None else environ
    if not config.url:
        raise ConfigError("[database] url is empty: the embedded server provides the connection")
    extra: dict[str, str] = {
        "application_name": "histdata",
        "connect_timeout": str(max(1, int(config.connect_timeout_s))),
    }
    if config.sslmode:
        extra["sslmode"] = config.sslmode
    if config.sslrootcert:
        extra["sslrootcert"] = config.sslrootcert
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(config.url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"[database] url is not a valid PostgreSQL URL or conninfo: {exc}"
        ) from exc
    if "password" not in parsed and "PGPASSWORD" not in env:
        credentials = env.get("CREDENTIALS_DIRECTORY")
        secret = Path(credentials, _CREDENTIAL) if credentials else None
        if secret is not None and secret.is_file():
            extra["password"] = secret.read_text(encoding="utf-8").strip()
    return psycopg.conninfo.make_conninfo(config.url, **extra)


def describe(conninfo: str) -> str:
    """The conninfo with any password masked, for logs and error messages."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    if "password" in params:
        params["password"] = "***"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
