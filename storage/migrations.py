"""Schema migrations: versioned SQL files applied once, in order, under an advisory lock.

Files live in the top-level ``sql/`` folder (shipped inside the package as ``histdata/sql``):
``NNNN_name.sql`` files are applied once each, in a transaction, and recorded with a checksum
in ``schema_migrations``; ``timescale.sql`` is re-applied (it is idempotent) on every run
when the TimescaleDB extension can be created, turning the time-series tables into
hypertables. Running ``migrate`` twice is a no-op; two processes migrating at once serialise
on the advisory lock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from histdata.errors import FatalError

__all__ = ["MigrationResult", "SchemaError", "migrate", "migration_files", "timescale_available"]

# An arbitrary constant shared by every histdata process: pg_advisory_lock(bigint).
_LOCK_KEY = 0x6869_7374_6461_7461  # "histdata"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaError(FatalError):
    """The database schema is from a newer histdata, or an applied migration file was edited."""


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What one ``migrate`` run did."""

    applied: tuple[str, ...]  # file names applied now, in order
    current: int  # highest version now in the database
    timescale: bool  # whether the hypertable step ran


def migration_files() -> list[tuple[int, str, str]]:
    """Return ``(version, file name, SQL text)`` for every numbered migration, in order."""
    folder = resources.files("histdata") / "sql"
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def timescale_available(conn: psycopg.Connection[Any]) -> bool:
    """True when ``CREATE EXTENSION timescaledb`` can succeed: installed and preloaded."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " current_setting('shared_preload_libraries') LIKE '%timescaledb%'"
    ).fetchone()
    return bool(row and row[0] and row[1])


def migrate(conninfo: str) -> MigrationResult:
    """Bring the schema at ``conninfo`` up to date.

    Raises:
        SchemaError: the database has a version this histdata does not know, or an applied
            file's checksum changed.
        psycopg.OperationalError: the database is unreachable.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            return _migrate_locked(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _migrate_locked(conn: psycopg.Connection[Any]) -> MigrationResult:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {
        int(version): (str(name), str(checksum))
        for version, name, checksum in conn.execute(
            "SELECT version, name, checksum FROM schema_migrations"
        ).fetchall()
    }
    files = migration_files()
    known = {version for version, _, _ in files}
    unknown = sorted(set(done) - known)
    if unknown:
        raise SchemaError(
            f"database schema has migration {unknown[-1]} ({done[unknown[-1]][0]}) that this "
            "histdata does not know; upgrade histdata"
        )
    applied: list[str] = []
    for version, name, sql in files:
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        if version in done:
            if done[version][1] != checksum:
                raise SchemaError(f"migration {name} was edited after it was applied; restore it")
            continue
        with conn.transaction():
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (version, name, checksum),
            )
        applied.append(name)
    timescale = timescale_available(conn)
    if timescale:
        script = (resources.files("histdata") / "sql" / "timescale.sql").read_text(encoding="utf-8")
        with conn.transaction():
            conn.execute(script.encode())
    current = max(known | set(done), default=0)
    return MigrationResult(applied=tuple(applied), current=current, timescale=timescale)
