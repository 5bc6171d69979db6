"""What every sub-command shares: configuration, logging, argument types and the database."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from datetime import datetime

import psycopg
import psycopg.conninfo
import trio

from histdata.config import Config, load_config
from histdata.errors import ConfigError, DatabaseUnavailable
from histdata.logs import configure_logging
from histdata.storage import Storage, build_conninfo, open_storage
from histdata.symbols import SymbolRegistry
from histdata.timeutil import parse_interval, parse_time

__all__ = [
    "database_conninfo",
    "database_label",
    "interval_arg",
    "open_command_storage",
    "setup",
    "time_arg",
    "unreachable",
]


def setup(args: argparse.Namespace) -> Config:
    """Load the configuration named by ``-c`` (or the defaults) and configure logging."""
    config = load_config(getattr(args, "config", None))
    configure_logging(config.service.log_level, config.service.log_format)
    return config


def time_arg(text: str) -> datetime:
    """``type=`` for time options: argparse shows :func:`parse_time`'s own message."""
    try:
        return parse_time(text)
    except ValueError as exc:
        # argparse replaces a ValueError by "invalid time_arg value"; this type keeps the text.
        raise argparse.ArgumentTypeError(str(exc)) from exc


def interval_arg(text: str) -> int:
    """``type=`` for interval options (whole minutes), keeping :func:`parse_interval`'s message."""
    try:
        return parse_interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def database_label(conninfo: str) -> str:
    """Where ``conninfo`` points, short and without credentials: ``database db at host:port``."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    host = str(params.get("host") or "the local socket")
    where = host if host.startswith("/") or "port" not in params else f"{host}:{params['port']}"
    return f"database {params.get('dbname') or params.get('user') or '(default)'} at {where}"


def unreachable(conninfo: str, exc: BaseException) -> DatabaseUnavailable:
    """The one-line error for a database that refused us (libpq's hints folded into the line)."""
    cause = " ".join(str(exc).split())
    cause = cause.removeprefix("cannot migrate: ").removeprefix("connection failed: ")
    return DatabaseUnavailable(f"cannot use the {database_label(conninfo)}: {cause}")


@contextmanager
def database_conninfo(config: Config) -> Iterator[str]:
    """Yield a conninfo for the configured database, starting the embedded one if needed.

    With ``[database] url`` empty, the private PostgreSQL in ``data_dir`` is started (or
    attached to, if another histdata process runs it) and stopped on exit when we started it.

    Raises:
        ConfigError: ``[database] url`` is malformed (the message names the config's source).
    """
    if config.database.url:
        try:
            conninfo = build_conninfo(config.database)
        except ConfigError as exc:
            from_env = "HISTDATA_DATABASE_URL" in os.environ
            where = "$HISTDATA_DATABASE_URL" if from_env else config.source
            raise ConfigError(f"config {where}: {' '.join(str(exc).split())}") from exc
        yield conninfo
        return
    from histdata.storage.embedded import open_embedded

    with open_embedded(config.service.data_path) as server:
        yield server.dsn


@asynccontextmanager
async def open_command_storage(
    config: Config, registry: SymbolRegistry | None = None
) -> AsyncIterator[Storage]:
    """Open Storage on the configured database (schema migrated) for a one-shot command.

    Starting the embedded server blocks for about a second, so it runs in a worker thread.

    Raises:
        DatabaseUnavailable: the database refused the connection; one line naming it.
    """
    async with AsyncExitStack() as stack:
        sync_stack = ExitStack()

        async def stop_embedded() -> None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(sync_stack.close)

        stack.push_async_callback(stop_embedded)
        conninfo = await trio.to_thread.run_sync(
            sync_stack.enter_context, database_conninfo(config)
        )
        try:
            storage = await stack.enter_async_context(
                open_storage(
                    conninfo,
                    registry=registry,
                    pool_min=1,
                    pool_max=config.database.pool_max,
                    statement_timeout_s=config.database.statement_timeout_s,
                    connect_timeout_s=config.database.connect_timeout_s,
                )
            )
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            raise unreachable(conninfo, exc) from exc
        yield storage
