"""``histdata migrate [--timescale]``: apply the schema to the configured database and say
what was done."""

from __future__ import annotations

import argparse

import psycopg
import psycopg.errors

from histdata.commands.common import (
    database_conninfo,
    database_label,
    refused,
    setup,
    unreachable,
)
from histdata.storage import migrate

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """``--timescale`` converts existing plain tables to hypertables."""
    parser.add_argument(
        "--timescale",
        action="store_true",
        help="convert existing plain tables to TimescaleDB hypertables (copies every row under"
        " a lock; a line per table)",
    )


def main(args: argparse.Namespace) -> int:
    """Apply pending migrations; print one line per file applied and the resulting version.

    Running it again is a no-op that says the schema is up to date. Creates ``[database]
    readonly_role`` where permitted. A database with TimescaleDB whose tables are still plain
    is told how to convert them; ``--timescale`` does it.

    Raises:
        DatabaseUnavailable: the database refused the connection (one line naming it).
        SchemaError: the database's schema is newer than this histdata, or was edited, or
            ``--timescale`` where TimescaleDB cannot be created.
        DatabaseRefused: the user may not create the schema, or the database is a standby.
    """
    config = setup(args)
    role = config.database.readonly_role
    with database_conninfo(config) as conninfo:
        try:
            result = migrate(
                conninfo,
                convert=args.timescale,
                reader_role=role,
                progress=lambda line: print(line, flush=True),
            )
        except psycopg.OperationalError as exc:
            raise unreachable(conninfo, exc) from exc
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
            raise refused(conninfo, exc) from exc
    for name in result.applied:
        print(f"applied {name}")
    flavour = "TimescaleDB hypertables" if result.timescale else "plain PostgreSQL tables"
    state = "up to date" if not result.applied else "migrated"
    print(f"schema {state} at version {result.current} ({flavour}) on {database_label(conninfo)}")
    if result.plain_tables:
        print(
            f"TimescaleDB is available but {', '.join(result.plain_tables)} are plain tables:"
            " `histdata migrate --timescale` converts them"
        )
    if role and not result.reader_role:
        print(
            f"read-only role {role} not created: this user may not create roles (reads run as"
            " their own user, in READ ONLY transactions)"
        )
    return 0
