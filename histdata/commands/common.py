"""What every sub-command shares: loading configuration, logging, and reaching the database."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager

import trio

from histdata.config import Config, load_config
from histdata.logs import configure_logging
from histdata.storage import Storage, build_conninfo, open_storage
from histdata.symbols import SymbolRegistry

__all__ = ["database_conninfo", "open_command_storage", "setup"]


def setup(args: argparse.Namespace) -> Config:
    """Load the configuration named by ``-c`` (or the defaults) and configure logging."""
    config = load_config(getattr(args, "config", None))
    configure_logging(config.service.log_level, config.service.log_format)
    return config


@contextmanager
def database_conninfo(config: Config) -> Iterator[str]:
    """Yield a conninfo for the configured database, starting the embedded one if needed.

    With ``[database] url`` empty, the private PostgreSQL in ``data_dir`` is started (or
    attached to, if another histdata process runs it) and stopped on exit when we started it.
    """
    if config.database.url:
        yield build_conninfo(config.database)
        return
    from histdata.storage.embedded import open_embedded

    with open_embedded(config.service.data_path) as server:
        yield server.dsn


@asynccontextmanager
async def open_command_storage(
    config: Config, registry: SymbolRegistry | None = None
) -> AsyncIterator[Storage]:
    """Open Storage on the configured database for a one-shot command.

    Starting the embedded server blocks for about a second, so it runs in a worker thread.
    """
    with ExitStack() as stack:
        conninfo = await trio.to_thread.run_sync(stack.enter_context, database_conninfo(config))
        try:
            async with open_storage(
                conninfo,
                registry=registry,
                pool_min=1,
                pool_max=config.database.pool_max,
                statement_timeout_s=config.database.statement_timeout_s,
                connect_timeout_s=config.database.connect_timeout_s,
            ) as storage:
                yield storage
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stack.close)
