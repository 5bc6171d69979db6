"""``histdata serve``: the query server alone, for hot standbys and read-only users.

The socket API, ``/healthz`` and ``/metrics`` (and ``[metrics] listen``) of ``histdata run``
without migrations, writes or Kraken (see :mod:`histdata.querynode`). It needs ``[database]
url``: a query node reads a database that collectors write, never the embedded one. A schema
older or newer than this histdata's, or a user that may not read it, stops it at start with
one line.
"""

from __future__ import annotations

import argparse

import trio

from histdata.commands.common import open_command_storage, setup
from histdata.config import Config
from histdata.errors import ConfigError
from histdata.querynode import QueryNode
from histdata.storage import build_conninfo
from histdata.supervisor import watch_signals

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """``histdata serve`` takes no arguments beyond ``-c``; everything else is configuration."""


def main(args: argparse.Namespace) -> int:
    """Serve reads until SIGTERM or SIGINT; returns 0 after a graceful stop.

    Raises:
        ConfigError: ``[database] url`` is empty (exit status 2).
        DatabaseUnavailable, DatabaseRefused, SchemaError: at start, one line (status 1).
    """
    config = setup(args, one_shot=False)
    if not config.database.url:
        raise ConfigError(
            f"config {config.source}: histdata serve needs [database] url (a query node reads"
            " the collectors' database, or a replica of it)"
        )
    trio.run(_serve, config)
    return 0


async def _serve(config: Config) -> None:
    conninfo = build_conninfo(config.database)
    async with open_command_storage(config, create=False) as storage, trio.open_nursery() as n:
        node = QueryNode(config, storage, conninfo)
        await n.start(watch_signals, node.shutdown)
        await node.run()
        n.cancel_scope.cancel()
