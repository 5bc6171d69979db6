"""Schema migrations: versioned SQL files applied once, in order, under an advisory lock.

Files live in the top-level ``sql/`` folder (shipped inside the package as ``histdata/sql``):
``NNNN_name.sql`` files are applied once each, in a transaction, and recorded with a checksum
in ``schema_migrations``. Running ``migrate`` twice is a no-op; two processes migrating at once
serialise on the advisory lock.

**TimescaleDB** is detected apart from migrating: :func:`timescale_available` reads only the
catalogs any user may read (``pg_extension``, ``pg_available_extensions``), and reads
``shared_preload_libraries`` only where the user is allowed to (it is a superuser-only
setting; see :func:`_preloaded`). A *fresh* database (no migration applied yet) with the
extension available gets hypertables in the same run, while its tables are empty. Existing
plain tables are converted only when asked (``migrate(..., convert=True)``, ``histdata
migrate --timescale``), one table per transaction with a progress line each: converting
copies every row under an exclusive lock, which must never be the side effect of a service
start or a read.

**The read-only role** (``[database] readonly_role``) is created here where the user may
create roles: ``USAGE`` on the schema, ``SELECT`` on every table, default privileges for
tables created later, and membership for the migrating user so its query path can
``SET LOCAL ROLE`` to it. Where that is not permitted the run says so and goes on.

:func:`check_schema` is the read-only twin of :func:`migrate` for query nodes and read
commands: one ``SELECT`` on ``schema_migrations``, refusing a schema older or newer than the
code.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from histdata.errors import FatalError

__all__ = [
    "HYPERTABLES",
    "MigrationResult",
    "SchemaError",
    "check_schema",
    "ensure_reader_role",
    "hypertables",
    "migrate",
    "migration_files",
    "timescale_available",
]

Connection = psycopg.Connection[Any]
# The time-series tables and their chunk intervals: trades 1 day, candles 7 days.
HYPERTABLES: dict[str, str] = {
    "trades": "1 day",
    "candles_1m": "7 days",
    "candles_rollup": "7 days",
    # Kraken's candles for the minutes we serve from our own trades: one per live minute.
    "candles_kraken": "7 days",
}

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
    timescale: bool  # whether every time-series table is a hypertable now
    plain_tables: tuple[str, ...] = ()  # TimescaleDB is available but these are plain tables
    reader_role: bool = False  # whether the read-only role exists with its grants


def migration_files() -> list[tuple[int, str, str]]:
    """Return ``(version, file name, SQL text)`` for every numbered migration, in order."""
    folder = resources.files("histdata") / "sql"
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _code_versions() -> dict[int, tuple[str, str]]:
    return {
        version: (name, hashlib.sha256(text.encode()).hexdigest())
        for version, name, text in migration_files()
    }


def check_schema(conn: Connection) -> int:
    """Return the schema version at ``conn`` after checking it is this histdata's, by SELECT only.

    Works on a hot standby and for a user with only ``USAGE`` and ``SELECT``.

    Raises:
        SchemaError: no histdata schema, a schema older than the code (run ``histdata
            migrate`` on the primary) or newer (upgrade histdata), or an edited migration.
        psycopg.errors.InsufficientPrivilege: the user may not read ``schema_migrations``.
    """
    code = _code_versions()
    try:
        with conn.transaction():
            rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError(
            "no histdata schema in this database: run `histdata migrate` on the primary"
        ) from exc
    done = {int(version): str(checksum) for version, checksum in rows}
    newest = max(code, default=0)
    current = max(done, default=0)
    unknown = sorted(set(done) - set(code))
    if unknown:
        raise SchemaError(
            f"database schema is at version {current}, newer than this histdata ({newest}):"
            " upgrade histdata"
        )
    missing = sorted(set(code) - set(done))
    if missing:
        raise SchemaError(
            f"database schema is at version {current}, older than this histdata ({newest}):"
            " run `histdata migrate` on the primary"
        )
    for version, checksum in done.items():
        if code[version][1] != checksum:
            raise SchemaError(
                f"migration {code[version][0]} was edited after it was applied; restore it"
            )
    return current


def _installed(conn: Connection) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')")
    found = row.fetchone()
    return bool(found and found[0])


def _preloaded(conn: Connection) -> bool:
    """Whether TimescaleDB is in ``shared_preload_libraries``, without needing to read it.

    That setting is readable by superusers and ``pg_read_all_settings`` only. A preloaded
    TimescaleDB defines its loader's settings in every session, so where the list may not be
    read, ``timescaledb.disable_load`` existing says the same. (Guessing instead and trying
    ``CREATE EXTENSION`` is no option: without the preload it ends the session, FATAL.)
    """
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
        return bool(row and "timescaledb" in str(row[0]))
    except psycopg.errors.InsufficientPrivilege:
        row = conn.execute(
            "SELECT current_setting('timescaledb.disable_load', true) IS NOT NULL"
        ).fetchone()
        return bool(row and row[0])


def timescale_available(conn: Connection) -> bool:
    """True when TimescaleDB is installed in the database, or is installable and preloaded.

    Needs no privilege beyond connecting (see :func:`_preloaded`).
    """
    if _installed(conn):
        return True
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb')"
    ).fetchone()
    if not (row and row[0]):
        return False
    return _preloaded(conn)


def hypertables(conn: Connection) -> frozenset[str]:
    """The time-series tables that are TimescaleDB hypertables (none without the extension)."""
    if not _installed(conn):
        return frozenset()
    rows = conn.execute(
        "SELECT hypertable_name::text FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = current_schema()"
    ).fetchall()
    return frozenset(str(r[0]) for r in rows) & frozenset(HYPERTABLES)


def ensure_reader_role(conn: Connection, role: str) -> bool:
    """Create the read-only ``role`` if needed, grant it what a reader needs, and let the
    current user ``SET ROLE`` to it. False when the database does not permit it.

    A reader needs ``USAGE`` on the schema and ``SELECT`` on every table; default privileges
    give it ``SELECT`` on tables the current user creates later. ``conn`` is in autocommit
    mode; the grants commit together or not at all.
    """
    if not role:
        return False
    ident = sql.Identifier(role)
    try:
        with conn.transaction():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(ident))
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}"
                ).format(ident)
            )
            member = conn.execute(
                "SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)
            ).fetchone()
            if not (member and member[0]):
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidGrantOperation):
        return False
    return True


Progress = Callable[[str], None]


def migrate(
    conninfo: str,
    *,
    convert: bool = False,
    reader_role: str = "",
    progress: Progress | None = None,
) -> MigrationResult:
    """Bring the schema at ``conninfo`` up to date (see the module docs for TimescaleDB).

    ``convert`` turns existing plain time-series tables into hypertables, telling
    ``progress`` about each table before and after. ``reader_role`` is the read-only role to
    create where permitted (empty: none).

    Raises:
        SchemaError: the database has a version this histdata does not know, an applied
            file's checksum changed, or ``convert`` was asked where TimescaleDB cannot be
            created.
        psycopg.OperationalError: the database is unreachable.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            result = _migrate_locked(conn, convert, progress or (lambda _: None))
            reader = ensure_reader_role(conn, reader_role)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return MigrationResult(
        applied=result.applied,
        current=result.current,
        timescale=result.timescale,
        plain_tables=result.plain_tables,
        reader_role=reader,
    )


def _migrate_locked(conn: Connection, convert: bool, progress: Progress) -> MigrationResult:
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
    fresh = not done
    files = migration_files()
    known = {version for version, _, _ in files}
    unknown = sorted(set(done) - known)
    if unknown:
        raise SchemaError(
            f"database schema has migration {unknown[-1]} ({done[unknown[-1]][0]}) that this "
            "histdata does not know; upgrade histdata"
        )
    applied: list[str] = []
    for version, name, text in files:
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if version in done:
            if done[version][1] != checksum:
                raise SchemaError(f"migration {name} was edited after it was applied; restore it")
            continue
        with conn.transaction():
            conn.execute(text.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (version, name, checksum),
            )
        applied.append(name)
    current = max(known | set(done), default=0)
    plain = _timescale_step(conn, fresh=fresh, convert=convert, progress=progress)
    return MigrationResult(
        applied=tuple(applied),
        current=current,
        timescale=_installed(conn) and not plain,
        plain_tables=plain if plain and timescale_available(conn) else (),
    )


def _create_extension(conn: Connection) -> str | None:
    """Create TimescaleDB in its own transaction; the reason it could not be, or None."""
    if not _preloaded(conn):
        return "timescaledb is not in shared_preload_libraries"
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        return " ".join(str(exc).split())
    return None


def _timescale_step(
    conn: Connection, *, fresh: bool, convert: bool, progress: Progress
) -> tuple[str, ...]:
    """Make hypertables where wanted; return the time-series tables still plain."""
    if not _installed(conn):
        if not (fresh or convert) or not timescale_available(conn):
            if convert:
                raise SchemaError("cannot convert to hypertables: TimescaleDB is not available")
            return tuple(HYPERTABLES)
        why = _create_extension(conn)
        if why is not None:
            if convert:
                raise SchemaError(f"cannot convert to hypertables: {why}")
            return tuple(HYPERTABLES)
    already = hypertables(conn)
    plain = [table for table in HYPERTABLES if table not in already]
    if plain and (fresh or convert):
        for table in plain:
            _convert(conn, table, progress)
        plain = []
    # Databases made hypertables before the default (time DESC) index was left out keep it
    # until it is dropped here (see sql/timescale.sql).
    script = (resources.files("histdata") / "sql" / "timescale.sql").read_text(encoding="utf-8")
    if not plain:
        with conn.transaction():
            conn.execute(script.encode())
    return tuple(plain)


def _convert(conn: Connection, table: str, progress: Progress) -> None:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    rows = int(row[0]) if row else 0
    progress(f"converting {table} to a hypertable ({rows} rows)")
    began = time.monotonic()
    with conn.transaction():
        conn.execute(
            "SELECT create_hypertable(%s::regclass, 'time',"
            " chunk_time_interval => %s::interval, create_default_indexes => false,"
            " if_not_exists => true, migrate_data => true)",
            (table, HYPERTABLES[table]),
        )
    progress(f"converted {table} ({rows} rows) in {time.monotonic() - began:.1f} s")
