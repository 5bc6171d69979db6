"""``histdata migrate``: apply the schema to the configured database and say what was done."""

from __future__ import annotations

import argparse

import psycopg

from histdata.commands.common import database_conninfo, database_label, setup, unreachable
from histdata.storage import migrate

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """``histdata migrate`` takes no arguments beyond ``-c``."""


def main(args: argparse.Namespace) -> int:
    """Apply pending migrations; print one line per file applied and the resulting version.

    Running it again is a no-op that says the schema is up to date.

    Raises:
        DatabaseUnavailable: the database refused the connection (one line naming it).
        SchemaError: the database's schema is newer than this histdata, or was edited.
    """
    config = setup(args)
    with database_conninfo(config) as conninfo:
        try:
            result = migrate(conninfo)
        except psycopg.OperationalError as exc:
            raise unreachable(conninfo, exc) from exc
    for name in result.applied:
        print(f"applied {name}")
    flavour = "TimescaleDB hypertables" if result.timescale else "plain PostgreSQL tables"
    state = "up to date" if not result.applied else "migrated"
    print(f"schema {state} at version {result.current} ({flavour}) on {database_label(conninfo)}")
    return 0
