"""``histdata migrate``: apply the schema to the configured database and say what was done."""

from __future__ import annotations

import argparse

from histdata.commands.common import database_conninfo, setup
from histdata.storage import describe, migrate

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """``histdata migrate`` takes no arguments beyond ``-c``."""


def main(args: argparse.Namespace) -> int:
    """Apply pending migrations; print one line per file applied and the resulting version."""
    config = setup(args)
    with database_conninfo(config) as conninfo:
        result = migrate(conninfo)
    for name in result.applied:
        print(f"applied {name}")
    flavour = "TimescaleDB hypertables" if result.timescale else "plain PostgreSQL tables"
    state = "up to date" if not result.applied else "migrated"
    print(f"schema {state} at version {result.current} ({flavour}) on {describe(conninfo)}")
    return 0
