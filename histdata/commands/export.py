"""``histdata export``: candles or trades into the files backtesters load.

::

    histdata export SYMBOL -i 1m --start T [--end T] --format parquet|feather|csv --output PATH
    histdata export SYMBOL --trades --start T [--end T] ... --output PATH
    histdata export SYMBOL -i 5m --start T --layout freqtrade --output user_data/data/kraken

Rows are read as ``histdata candles`` reads them: from the service's socket when it runs,
else (or with ``--direct``) from the database. Either way they arrive as Arrow record batches
of at most one server chunk, and each is written as it arrives (a Parquet row group, a
Feather record batch, CSV lines), so memory stays flat for any range. The file is written
beside ``PATH`` and renamed into place when complete: an export that fails or is interrupted
leaves no truncated file that looks whole.

The plain layout keeps the contract's columns. CSV is byte for byte what ``histdata
candles``/``trades`` print (the same CSV body, from the socket or the database). In Parquet
and Feather, decimals are the wire's: ``decimal128`` by default (``--decimals exact``; the
fixed scales of :data:`histdata.formats.CANDLES` and ``TRADES``, so one type holds every
batch) or ``float64`` (``--decimals float``); times are ``timestamp[us|ns, UTC]``.

``--layout freqtrade`` makes ``--output`` a freqtrade data directory and writes the file
freqtrade's data handlers look for, in its columns and types (read from freqtrade's
source: ``freqtrade/data/history/datahandlers``, ``freqtrade/constants.py``):

- candles ``<PAIR>-<timeframe>.feather`` (``BTC_USD-5m.feather``): ``date``
  (``timestamp[ms, UTC]``), ``open high low close volume`` (``float64``);
- trades ``<PAIR>-trades.feather``: ``timestamp`` (int64 ms), ``id``, ``type``, ``side``
  (strings), ``price``, ``amount``, ``cost`` (``float64``). ``type`` (market/limit) is not
  in histdata's read contract and is null. freqtrade drops trades with equal
  ``(timestamp, id)``, so a trade without a Kraken id gets ``<unix ns>-<n>``, ``n``
  counting the id-less trades of that nanosecond: none is lost.

``<PAIR>`` is the symbol's v2 name (which is ccxt's for Kraken) with ``/`` and the other
characters freqtrade replaces turned into ``_``. The format is ``feather`` (freqtrade's
default) or ``parquet``.

Exit status: 0 written; 1 failure (the database or service failed, a value does not fit
the exact scale, the file cannot be written); 2 usage or configuration, an unknown symbol
included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import trio

from histdata.client import BadRequest, Client, ClientError, NotFound, ServiceNotRunning
from histdata.commands.common import open_command_storage, setup, socket_refused, symbol_argument
from histdata.config import Config
from histdata.formats import (
    CANDLES,
    TRADES,
    Decimals,
    arrow_batches,
    candle_metadata,
    trade_metadata,
)
from histdata.storage.reads import read_windows, start_candle_read, start_trade_read
from histdata.symbols import SymbolRegistry
from histdata.timeutil import (
    check_range,
    format_interval,
    format_time,
    parse_interval,
    parse_time,
    utc_now,
)

__all__ = ["configure", "freqtrade_name", "main"]

EXPORT_FORMATS = ("parquet", "feather", "csv")
LAYOUTS = ("plain", "freqtrade")
# What freqtrade.misc.pair_to_filename replaces by "_".
_FREQTRADE_UNSAFE = "/ .@$+:"
_FREQTRADE_CANDLES = pa.schema(
    [("date", pa.timestamp("ms", tz="UTC"))]
    + [(name, pa.float64()) for name in ("open", "high", "low", "close", "volume")]
)
_FREQTRADE_TRADES = pa.schema(
    [
        ("timestamp", pa.int64()),
        ("id", pa.string()),
        ("type", pa.string()),
        ("side", pa.string()),
        ("price", pa.float64()),
        ("amount", pa.float64()),
        ("cost", pa.float64()),
    ]
)


class ExportUsageError(ValueError):
    """Options that do not go together (exit status 2, like argparse's own errors)."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``export``."""
    symbol_argument(parser)
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "-i", "--interval", help="candles: 1m 5m 15m 30m 1h 4h 12h 1d 1w or N minutes (default 1m)"
    )
    what.add_argument("--trades", action="store_true", help="export trades instead of candles")
    parser.add_argument("--start", required=True, help="ISO 8601 or Unix seconds (inclusive)")
    parser.add_argument("--end", help="ISO 8601 or Unix seconds (exclusive; default: now)")
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="default: parquet (--layout freqtrade: feather)",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        type=Path,
        help="file to write (--layout freqtrade: the data directory, e.g. user_data/data/kraken)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="plain",
        help="plain: the contract's columns; freqtrade: its file names, columns and dtypes",
    )
    parser.add_argument(
        "--decimals",
        choices=("exact", "float"),
        help="parquet/feather: decimal128 (default) or float64 columns (freqtrade: float64)",
    )
    parser.add_argument("--socket", help="query socket (default: [query] socket)")
    parser.add_argument(
        "--direct", action="store_true", help="read the database even if the service runs"
    )


def freqtrade_name(symbol: str, interval_min: int | None, fmt: str) -> str:
    """The file freqtrade's data handler opens for ``symbol``'s candles (or trades, with
    ``interval_min`` None) in ``fmt``: ``BTC_USD-5m.feather``, ``BTC_USD-trades.feather``."""
    pair = symbol.translate({ord(c): "_" for c in _FREQTRADE_UNSAFE})
    what = "trades" if interval_min is None else format_interval(interval_min)
    return f"{pair}-{what}.{fmt}"


class _Shape(Protocol):
    schema: pa.Schema

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch: ...


class _Plain:
    """Plain layout: the wire's columns and types as they are (one type for the whole file)."""

    def __init__(self, wire: pa.Schema) -> None:
        self.schema = wire

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch


class _FreqtradeCandles:
    schema = _FREQTRADE_CANDLES

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        date = pc.cast(batch.column("time"), pa.timestamp("ms", tz="UTC"))
        prices = [pc.cast(batch.column(name), pa.float64()) for name in self.schema.names[1:]]
        return pa.record_batch([date, *prices], schema=self.schema)


class _FreqtradeTrades:
    """freqtrade's trade columns; ids for id-less trades counted across batches."""

    schema = _FREQTRADE_TRADES

    def __init__(self) -> None:
        self._last_ns = -1  # the nanosecond of the previous id-less trade, and its count
        self._seen = 0

    def _ids(self, ns: list[int], ids: list[int | None]) -> list[str]:
        out = []
        for time_ns, trade_id in zip(ns, ids, strict=True):
            if trade_id is not None:
                out.append(str(trade_id))
                continue
            self._seen = self._seen + 1 if time_ns == self._last_ns else 0
            self._last_ns = time_ns
            out.append(f"{time_ns}-{self._seen}")
        return out

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        ns = pc.cast(batch.column("time"), pa.int64())
        price = pc.cast(batch.column("price"), pa.float64())
        amount = pc.cast(batch.column("volume"), pa.float64())
        arrays = [
            pc.divide(ns, 1_000_000),  # integer division: Unix ns to ms (times are positive)
            pa.array(self._ids(ns.to_pylist(), batch.column("trade_id").to_pylist()), pa.string()),
            pa.nulls(batch.num_rows, pa.string()),
            batch.column("side"),
            price,
            amount,
            pc.multiply(price, amount),
        ]
        return pa.record_batch(arrays, schema=self.schema)


class _ArrowSink:
    """Parquet (one row group per batch) or Feather v2 (an Arrow IPC file)."""

    def __init__(self, path: Path, fmt: str, shape: _Shape) -> None:
        self._shape = shape
        self._writer: Any
        if fmt == "parquet":
            self._writer = pq.ParquetWriter(path, shape.schema, compression="zstd")
        else:
            # lz4 is what freqtrade and pyarrow.feather write by default.
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self._writer = pa.ipc.new_file(str(path), shape.schema, options=options)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._writer.write_batch(self._shape(batch))

    def close(self) -> None:
        self._writer.close()


class _CountingFile:
    """A file that counts the CSV lines written to it (the header included)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self.lines = 0

    def write(self, data: bytes) -> int:
        self.lines += data.count(b"\n")
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _Export:
    """One export: what to read, where to write it, and the count of rows written."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.interval: int | None = None if args.trades else parse_interval(args.interval or "1m")
        self.start: datetime = parse_time(args.start)
        self.end: datetime = parse_time(args.end) if args.end else utc_now()
        check_range(self.start, self.end)
        self.layout: str = args.layout
        self.format: str = args.format or ("feather" if self.layout == "freqtrade" else "parquet")
        if self.layout == "freqtrade":
            if self.format == "csv":
                raise ExportUsageError("--layout freqtrade writes feather or parquet, not csv")
            if args.decimals == "exact":
                raise ExportUsageError("--layout freqtrade writes float64 (freqtrade's dtypes)")
        self.decimals: Decimals = args.decimals or "exact"
        self.output: Path = args.output
        self.rows = 0
        self.path: Path | None = None

    def _target(self, wire: pa.Schema) -> Path:
        if self.layout == "plain":
            return self.output
        symbol = wire.metadata[b"symbol"].decode()
        return self.output / freqtrade_name(symbol, self.interval, self.format)

    def _shape(self, wire: pa.Schema) -> _Shape:
        if self.layout == "plain":
            return _Plain(wire)
        return _FreqtradeCandles() if self.interval is not None else _FreqtradeTrades()

    @property
    def wire_decimals(self) -> Decimals:
        """The decimals to ask the wire for (freqtrade's columns are float64)."""
        return "float" if self.layout == "freqtrade" else self.decimals

    def wire_schema(self, symbol: str) -> pa.Schema:
        """The Arrow schema the socket sends for this export of ``symbol``."""
        if self.interval is None:
            return TRADES.arrow(self.wire_decimals, trade_metadata(symbol))
        return CANDLES.arrow(self.wire_decimals, candle_metadata(symbol, self.interval))

    @contextlib.contextmanager
    def _partial(self, target: Path, close: Callable[[], None]) -> Iterator[Path]:
        """Write to a partial file beside ``target``, renamed into place on a clean exit
        (after ``close``) and removed on any error."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            yield partial
            close()
            os.replace(partial, target)
        except BaseException:  # Ctrl-C included: the partial file goes, the error stays
            with contextlib.suppress(Exception):
                close()
            partial.unlink(missing_ok=True)
            raise
        self.path = target

    @contextlib.contextmanager
    def open_sink(self, wire: pa.Schema) -> Iterator[_ArrowSink]:
        """A Parquet or Feather sink for batches of ``wire`` (see :meth:`_partial`)."""
        sinks: list[_ArrowSink] = []
        with self._partial(self._target(wire), lambda: sinks[0].close()) as partial:
            sinks.append(_ArrowSink(partial, self.format, self._shape(wire)))
            yield sinks[0]

    @contextlib.contextmanager
    def open_csv(self) -> Iterator[_CountingFile]:
        """The CSV file (plain layout only), its header still to be written."""
        files: list[_CountingFile] = []
        with self._partial(self.output, lambda: files[0].close()) as partial:
            files.append(_CountingFile(partial))
            yield files[0]
        self.rows = max(0, files[0].lines - 1)

    def write_all(self, wire: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
        with self.open_sink(wire) as sink:
            for batch in batches:
                sink.write(batch)
                self.rows += batch.num_rows


def _via_socket(export: _Export, socket: str, symbol: str) -> int | None:
    """Export through the service: the exit status, or None when no service answers on
    ``socket`` (CSV: the service's CSV body as it is, as ``histdata candles`` prints it).

    Raises:
        ClientError: the service refused the request or failed.
    """
    if socket_refused(socket) is not None:
        return None
    if export.format == "csv":
        from histdata.commands.read import request_params, stream_from_socket

        kind = "trades" if export.interval is None else "candles"
        interval = None if export.interval is None else format_interval(export.interval)
        params = request_params(symbol, export.start, export.end, "csv", "exact", interval)
        with export.open_csv() as out:
            status = stream_from_socket(socket, f"/v1/{kind}", params, out)
            if status:
                raise _Failed(status)
        return status
    with Client(socket, timeout_s=None) as client:
        decimals = export.wire_decimals
        stream = (
            client.open_trade_stream(symbol, export.start, export.end, decimals=decimals)
            if export.interval is None
            else client.open_candle_stream(
                symbol, export.interval, export.start, export.end, decimals=decimals
            )
        )
        try:
            with stream as reader:
                export.write_all(reader.schema, reader)
        except ServiceNotRunning:
            return None
    return 0


class _Failed(Exception):
    """The service answered an error (already printed); ``status`` is the exit status."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(status)


async def _direct(export: _Export, config: Config, symbol: str) -> None:
    registry = SymbolRegistry.shipped()
    canonical = registry.canonical(symbol)  # UnknownSymbol: exit 2, before any database
    async with open_command_storage(config, registry, create=False) as storage:
        if export.interval is None:
            read: Any = await start_trade_read(storage, canonical, export.start, export.end)
        else:
            read = await start_candle_read(
                storage, canonical, export.interval, export.start, export.end
            )
        async with read_windows(storage, read) as windows:
            if export.format == "csv":
                schema = TRADES if export.interval is None else CANDLES
                with export.open_csv() as out:
                    out.write(schema.csv_header)
                    async for window in windows:
                        out.write(window)
                return
            wire = export.wire_schema(canonical)
            with export.open_sink(wire) as sink:
                async for window in windows:
                    for batch in arrow_batches(wire, window):
                        sink.write(batch)
                        export.rows += batch.num_rows


def main(args: argparse.Namespace) -> int:
    """Write the export; returns the exit status."""
    config = setup(args)
    try:
        export = _Export(args)
    except ValueError as exc:  # a malformed time, interval or range, or clashing options
        print(f"histdata: {exc}", file=sys.stderr)
        return 2
    try:
        status = (
            None
            if args.direct
            else _via_socket(export, args.socket or config.query.socket, args.symbol)
        )
    except _Failed as exc:
        return exc.status
    except (BadRequest, NotFound) as exc:
        print(f"histdata: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"histdata export: {exc}", file=sys.stderr)
        return 1
    except pa.ArrowInvalid as exc:  # a value finer than its column's exact scale
        print(f"histdata export: {exc} (try --decimals float)", file=sys.stderr)
        return 1
    if status is None:
        try:
            trio.run(_direct, export, config, args.symbol)
        except pa.ArrowInvalid as exc:
            print(f"histdata export: {exc} (try --decimals float)", file=sys.stderr)
            return 1
    what = "trades" if export.interval is None else f"{format_interval(export.interval)} candles"
    print(
        f"histdata: wrote {export.rows} {what} of {format_time(export.start)} to"
        f" {format_time(export.end)} to {export.path}",
        file=sys.stderr,
    )
    return 0
