"""``histdata candles`` and ``histdata trades``: read stored data to stdout.

::

    histdata candles SYMBOL -i 1h --start T --end T [--format csv|json|arrow]
    histdata trades SYMBOL --start T --end T [--format csv|json|arrow]

When the service is running (its ``[query] socket`` accepts a connection) the body is
streamed from the socket unchanged; otherwise the command opens the database itself and
encodes the same rows with the same encoders, so both paths print identical bytes. CSV is the
default; ``--end`` defaults to now. Errors print one line and exit 1; bad input (a malformed
time, interval or range, an unknown symbol) exits 2 on both paths.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO

import httpx
import orjson
import trio

from histdata.actors.query import check_range
from histdata.client import socket_transport
from histdata.commands.common import (
    open_command_storage,
    setup,
    socket_refused,
    symbol_argument,
)
from histdata.config import Config
from histdata.errors import UnknownSymbol
from histdata.formats import FORMATS, candle_encoder, trade_encoder
from histdata.storage.reads import ReadOptions, iter_candle_rows, iter_trade_rows
from histdata.symbols import SymbolRegistry
from histdata.timeutil import format_time, parse_interval, parse_time, utc_now

__all__ = ["configure", "main"]


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
    parser.add_argument("--socket", help="query socket (default: [query] socket)")
    parser.add_argument(
        "--direct", action="store_true", help="read the database even if the service runs"
    )
    parser.set_defaults(_read_kind="candles" if is_candles else "trades")


def _via_socket(socket: str, path: str, params: dict[str, str], out: BinaryIO) -> int | None:
    """Stream the answer to ``out``; None when no service listens on ``socket``."""
    if socket_refused(socket) is not None:
        return None
    try:
        with (
            httpx.Client(transport=socket_transport(socket), timeout=None) as http,
            http.stream("GET", f"http://histdata{path}", params=params) as response,
        ):
            if response.status_code != 200:
                body = response.read()
                try:
                    message = str(orjson.loads(body)["error"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    message = body.decode(errors="replace").strip()
                print(f"histdata: {message} (HTTP {response.status_code})", file=sys.stderr)
                return 2 if response.status_code in (400, 404) else 1
            for part in response.iter_bytes():
                out.write(part)
            out.flush()
            return 0
    except httpx.ConnectError:
        return None


async def _direct(args: argparse.Namespace, config: Config, out: BinaryIO) -> int:
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
            encoder = candle_encoder(args.format, symbol, interval)
            out.write(encoder.begin())
            async for rows in iter_candle_rows(
                storage, symbol, interval, start, end, options=options
            ):
                out.write(encoder.rows(rows))
        else:
            encoder = trade_encoder(args.format, symbol)
            out.write(encoder.begin())
            async for trade_rows in iter_trade_rows(storage, symbol, start, end, options=options):
                out.write(encoder.rows(trade_rows))
        out.write(encoder.end())
    out.flush()
    return 0


def main(args: argparse.Namespace) -> int:
    """Print the requested candles or trades; returns the exit status."""
    config = setup(args)
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
        params = {
            "symbol": args.symbol,
            "start": format_time(start),
            "end": format_time(end),
            "format": args.format,
        }
        if args._read_kind == "candles":
            params["interval"] = args.interval
        status = _via_socket(
            args.socket or config.query.socket, f"/v1/{args._read_kind}", params, out
        )
        if status is not None:
            return status
    return trio.run(_direct, args, config, out)
