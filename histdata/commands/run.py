"""``histdata run``: the service, in the foreground, until SIGTERM or SIGINT.

With ``[database] url`` empty the embedded PostgreSQL in ``data_dir`` is started first and
stopped after the service has drained. A second signal stops without waiting; the disk
journal keeps whatever was not committed and is replayed at the next start.
"""

from __future__ import annotations

import argparse

import trio

from histdata.commands.common import database_conninfo, setup
from histdata.config import Config
from histdata.service import Service

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """``histdata run`` takes no arguments beyond ``-c``; everything else is configuration."""


def main(args: argparse.Namespace) -> int:
    """Run the service; returns 0 after a graceful stop.

    Raises :class:`~histdata.supervisor.SupervisorEscalation` (exit status 1, so systemd's
    ``Restart=on-failure`` applies) when the supervision tree gives up.
    """
    config = setup(args)
    with database_conninfo(config) as conninfo:
        trio.run(_serve, config, conninfo)
    return 0


async def _serve(config: Config, conninfo: str) -> None:
    service = Service(config, conninfo)
    await service.run()
