"""What every sub-command shares: configuration, logging, argument types and the database.

The database driver, trio and storage are imported by the functions that use them, not at
import time: a command that reads through the service's socket never loads them.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from histdata.config import Config, load_config
from histdata.errors import ConfigError, DatabaseRefused, DatabaseUnavailable
from histdata.symbols import SymbolRegistry
from histdata.timeutil import parse_interval, parse_time

if TYPE_CHECKING:
    from histdata.storage import Storage

__all__ = [
    "NoRecordedData",
    "database_conninfo",
    "database_label",
    "interval_arg",
    "open_command_storage",
    "refused",
    "setup",
    "setup_logging",
    "socket_refused",
    "symbol_argument",
    "time_arg",
    "unreachable",
    "without_pandas",
]


class NoRecordedData(ConfigError):
    """A read found no embedded database in ``data_dir``: nothing was ever recorded there.

    A configuration error (exit status 2) rather than an empty answer: the usual cause is a
    ``data_dir`` that points somewhere else than the service's (another working directory,
    another config file), and creating a fresh, empty database there would hide that.
    """


_LEVELS = ("warning", "info", "debug")


class _NoPandas:
    """A meta path finder that refuses ``pandas``: see :func:`without_pandas`."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is kept out of this process", name=name)


def without_pandas() -> None:
    """Make ``import pandas`` fail in this process from now on.

    pyarrow imports pandas, when it is installed, the first time it converts a Python value
    (it checks whether the value is a pandas object): 0.36 s on a quiet machine, a quarter of
    the import of a year of 1-minute candles, and ~50 MB. ``histdata import`` and
    ``histdata run`` never build a frame, so they refuse it; pyarrow then takes pandas as
    absent. The commands that build frames (the client's) never call this.
    """
    if "pandas" not in sys.modules and _NoPandas not in sys.meta_path:
        sys.meta_path.insert(0, _NoPandas)


def setup(args: argparse.Namespace, *, one_shot: bool = True, logs: bool = True) -> Config:
    """Load the configuration named by ``-c`` (or the defaults) and configure logging.

    One-shot commands (all but ``run``) log warnings and errors only, so their output is
    not wrapped in info lines; ``-v`` adds info and ``-vv`` debug. The service logs at
    ``[service] log_level``, which ``-v``/``-vv`` lower the same way. Warnings about
    ignored ``HISTDATA_*`` variables are printed to stderr, one line each. With ``logs``
    false logging is left for :func:`setup_logging` (structlog takes 0.1 s to import, more
    than a read through the socket, which logs nothing).

    Raises:
        ConfigError: the configuration is invalid (see :func:`~histdata.config.load_config`).
    """
    config = load_config(getattr(args, "config", None))
    for warning in config.warnings:
        print(f"histdata: warning: {warning}", file=sys.stderr)
    if logs:
        setup_logging(args, config, one_shot=one_shot)
    return config


def setup_logging(args: argparse.Namespace, config: Config, *, one_shot: bool = True) -> None:
    """Configure logging as :func:`setup` describes."""
    from histdata.logs import configure_logging

    verbose = min(getattr(args, "verbose", 0) or 0, len(_LEVELS) - 1)
    configured = config.service.log_level
    if verbose:
        level = _LEVELS[verbose]
    elif one_shot and configured in ("debug", "info"):
        level = "warning"
    else:
        level = configured
    configure_logging(level, config.service.log_format)


def _complete_symbol(prefix: str, **_: object) -> list[str]:
    """Shell completion of a symbol: the shipped pairs' v2 names, or altnames (``XBT…``)."""
    wanted = prefix.upper()
    names = [n for info in SymbolRegistry.shipped() for n in (info.symbol, info.altname)]
    return sorted({n for n in names if n.startswith(wanted)})


def symbol_argument(parser: argparse.ArgumentParser) -> None:
    """Add the ``SYMBOL`` positional, completed from the shipped pairs in a shell."""
    action = parser.add_argument(
        "symbol", metavar="SYMBOL", help="pair in any spelling (BTC/USD, XBTUSD, XXBTZUSD)"
    )
    # argcomplete reads the completer from the action (its documented way to attach one).
    action.completer = _complete_symbol  # type: ignore[attr-defined]


def socket_refused(path: str) -> str | None:
    """Why nothing accepts a connection on the Unix socket ``path`` (None: something does).

    Commands probe with a socket they close themselves before using httpx, which leaks the
    socket of a refused Unix connect.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


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
    import psycopg.conninfo

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
def database_conninfo(config: Config, *, create: bool = True) -> Iterator[str]:
    """Yield a conninfo for the configured database, starting the embedded one if needed.

    With ``[database] url`` empty, the private PostgreSQL in ``data_dir/pg`` is started (or
    attached to, if another histdata process runs it) and stopped on exit when we started it.
    With ``create=False`` (reads) a ``data_dir`` without one is an error instead of a fresh,
    empty database.

    Raises:
        ConfigError: ``[database] url`` is malformed (the message names the config's source).
        NoRecordedData: ``create`` is false and ``data_dir`` holds no embedded database.
    """
    if config.database.url:
        from histdata.storage import build_conninfo

        try:
            conninfo = build_conninfo(config.database)
        except ConfigError as exc:
            from_env = "HISTDATA_DATABASE_URL" in os.environ
            where = "$HISTDATA_DATABASE_URL" if from_env else config.source
            raise ConfigError(f"config {where}: {' '.join(str(exc).split())}") from exc
        yield conninfo
        return
    from histdata.storage.embedded import open_embedded

    if not create and not (config.service.data_path / "pg").is_dir():
        raise NoRecordedData(
            f"no database in {config.service.data_path} ([service] data_dir, {config.source}):"
            " nothing has been recorded there; point data_dir (or -c) at the service's, or"
            " set [database] url"
        )
    with open_embedded(config.service.data_path) as server:
        yield server.dsn


@asynccontextmanager
async def open_command_storage(
    config: Config, registry: SymbolRegistry | None = None, *, create: bool = True
) -> AsyncIterator[Storage]:
    """Open Storage on the configured database for a one-shot command.

    Starting the embedded server blocks for about a second, so it runs in a worker thread.
    Commands that only read pass ``create=False``: no embedded database is created (see
    :func:`database_conninfo`), the schema is checked rather than migrated and every
    transaction is READ ONLY, so they work on a hot standby and as a user with USAGE and
    SELECT only. Others migrate the schema first.

    Raises:
        DatabaseUnavailable: the database refused the connection; one line naming it.
        DatabaseRefused: a privilege is missing or the database is read-only (raised from
            the command's own statements too); one line naming the database.
        SchemaError: the schema is not this histdata's (for a read: older or newer).
        NoRecordedData: ``create`` is false and there is no embedded database yet.
    """
    import psycopg
    import psycopg.errors
    import trio

    from histdata.storage import open_storage

    async with AsyncExitStack() as stack:
        sync_stack = ExitStack()

        async def stop_embedded() -> None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(sync_stack.close)

        stack.push_async_callback(stop_embedded)
        conninfo = await trio.to_thread.run_sync(
            sync_stack.enter_context, database_conninfo(config, create=create)
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
                    read_only=not create,
                    reader_role=config.database.readonly_role,
                )
            )
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            raise unreachable(conninfo, exc) from exc
        except DatabaseRefused as exc:
            raise refused(conninfo, exc) from exc
        try:
            yield storage
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
            raise refused(conninfo, exc) from exc


def refused(conninfo: str, exc: BaseException) -> DatabaseRefused:
    """The one-line error for a statement the database refused (a privilege, a standby)."""
    import psycopg.errors

    cause = " ".join(str(exc).split())
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        cause += " (a hot standby or a read-only user: run this on the primary)"
    return DatabaseRefused(f"the {database_label(conninfo)} refused: {cause}")
