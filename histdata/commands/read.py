"""``histdata candles`` and ``histdata trades``: read stored data to stdout.

::

    histdata candles SYMBOL -i 1h --start T --end T [--format csv|json|arrow]
        [--decimals exact|float]
    histdata trades SYMBOL --start T --end T [--format csv|json|arrow] [--decimals …]

When the service is running (its ``[query] socket`` accepts a connection) the body is
streamed from the socket unchanged; otherwise the command opens the database itself and
encodes the same windows with the same encoders, so both paths print identical bytes. CSV is
the default; ``--end`` defaults to now; ``--decimals`` picks Arrow's decimal type. Errors
print one line and exit 1; bad input (a malformed time, interval or range, an unknown
symbol) exits 2 on both paths.

The socket path is what a backtest's shell loop runs many times, so it starts fast: it
speaks HTTP with the standard library and imports neither the database driver, trio nor
pyarrow (they load only for ``--direct`` or when no service runs).
"""

from __future__ import annotations

import argparse
import http.client
import socket as stdlib_socket
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import urlencode

import orjson

from histdata.commands.common import setup, setup_logging, socket_refused, symbol_argument
from histdata.formats import DECIMALS, FORMATS
from histdata.timeutil import check_range, format_time, parse_interval, parse_time, utc_now

if TYPE_CHECKING:
    from histdata.config import Config

__all__ = ["Output", "configure", "main", "request_params", "stream_from_socket"]

_READ_SIZE = 1 << 20


class Output(Protocol):
    """Where a body is written: a binary file, or anything with its ``write``."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``candles`` or ``trades`` (told apart by ``parser.prog``)."""
    is_candles = parser.prog.split()[-1] == "candles"
    symbol_argument(parser)
    if is_candles:
        parser.add_argument(
            "-i", "--interval", default="1m", help="1m 5m 15m 30m 1h 4h 12h 1d 1w or N minutes"
        )
    parser.add_argument("--start", required=True, help="ISO 8601 or Unix seconds (inclusive)")
    parser.add_argument("--end", help="ISO 8601 or Unix seconds (exclusive; default: now)")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="default: csv")
    parser.add_argument(
        "--decimals",
        choices=DECIMALS,
        default="exact",
        help="arrow: decimal128 (default) or float64 columns; csv and json are always exact",
    )
    parser.add_argument("--socket", help="query socket (default: [query] socket)")
    parser.add_argument(
        "--direct", action="store_true", help="read the database even if the service runs"
    )
    parser.set_defaults(_read_kind="candles" if is_candles else "trades")


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the Unix socket at ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__("histdata")
        self._path = path

    def connect(self) -> None:
        sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request_params(
    symbol: str,
    start: datetime,
    end: datetime,
    fmt: str,
    decimals: str,
    interval: str | None,
) -> dict[str, str]:
    """The query parameters of a candle read (``interval`` given) or a trade read."""
    params = {
        "symbol": symbol,
        "start": format_time(start),
        "end": format_time(end),
        "format": fmt,
        "decimals": decimals,
    }
    if interval is not None:
        params["interval"] = interval
    return params


def stream_from_socket(socket: str, path: str, params: dict[str, str], out: Output) -> int | None:
    """Stream the body of ``GET path`` to ``out`` and return the exit status (an error
    answer is printed as one line); None when no service listens on ``socket``."""
    if socket_refused(socket) is not None:
        return None
    connection = _UnixConnection(socket)
    try:
        try:
            connection.request("GET", f"{path}?{urlencode(params)}")
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        response = connection.getresponse()
        if response.status != 200:
            body = response.read()
            try:
                message = str(orjson.loads(body)["error"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = body.decode(errors="replace").strip()
            print(f"histdata: {message} (HTTP {response.status})", file=sys.stderr)
            return 2 if response.status in (400, 404) else 1
        while part := response.read1(_READ_SIZE):
            out.write(part)
        out.flush()
        return 0
    finally:
        connection.close()


async def _direct(args: argparse.Namespace, config: Config, out: BinaryIO) -> int:
    from histdata.commands.common import open_command_storage
    from histdata.errors import UnknownSymbol
    from histdata.formats import candle_encoder, trade_encoder
    from histdata.storage.reads import (
        ReadOptions,
        WindowedRead,
        read_windows,
        start_candle_read,
        start_trade_read,
    )
    from histdata.symbols import SymbolRegistry

    registry = SymbolRegistry.shipped()
    try:
        symbol = registry.canonical(args.symbol)
    except UnknownSymbol as exc:
        print(f"histdata: {exc}", file=sys.stderr)
        return 2
    start = parse_time(args.start)
    end = parse_time(args.end) if args.end else utc_now()
    async with open_command_storage(config, registry, create=False) as storage:
        options = ReadOptions(role=storage.read_role)
        if args._read_kind == "candles":
            interval = parse_interval(args.interval)
            encoder = candle_encoder(args.format, symbol, interval, args.decimals)
            read: WindowedRead[Any] = await start_candle_read(
                storage, symbol, interval, start, end, options=options
            )
        else:
            encoder = trade_encoder(args.format, symbol, args.decimals)
            read = await start_trade_read(storage, symbol, start, end, options=options)
        out.write(encoder.begin())
        async with read_windows(storage, read) as windows:
            async for window in windows:
                out.write(encoder.rows(window))
        out.write(encoder.end())
    out.flush()
    return 0


def main(args: argparse.Namespace) -> int:
    """Print the requested candles or trades; returns the exit status."""
    config = setup(args, logs=False)
    try:
        start = parse_time(args.start)
        end = parse_time(args.end) if args.end else utc_now()
        check_range(start, end)
        if args._read_kind == "candles":
            parse_interval(args.interval)
    except ValueError as exc:
        print(f"histdata: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    if not args.direct:
        interval = args.interval if args._read_kind == "candles" else None
        params = request_params(args.symbol, start, end, args.format, args.decimals, interval)
        status = stream_from_socket(
            args.socket or config.query.socket, f"/v1/{args._read_kind}", params, out
        )
        if status is not None:
            return status
    import trio

    setup_logging(args, config)
    return trio.run(_direct, args, config, out)
