"""The read API's wire schema, and its encoders: JSON, CSV and Arrow IPC streams.

The schema is defined here once (:data:`CANDLES`, :data:`TRADES`): the column names in
contract order (README, "the socket API"), each column's kind, the Arrow types of both decimal
choices and the CSV header. Storage builds the statement that feeds a read from it
(:mod:`histdata.storage.reads`), so what a SELECT happens to return never defines the wire.

Storage hands the encoders *windows*: CSV text as PostgreSQL's ``COPY … TO STDOUT (FORMAT
csv)`` prints it (built by PostgreSQL itself), one line per row, columns in schema order, no
header, times ISO 8601
UTC with ``Z`` (trades keep their sub-microsecond digits), decimals as their exact stored
text and an absent value (a CSV-sourced candle's vwap, a trade's unknown side or id) as an
empty field. CSV responses are those bytes behind the header; JSON rewrites them line by
line; Arrow parses them in C++ (:func:`arrow_batches`), never through Python objects.

In Arrow, times are ``timestamp[us|ns, UTC]`` and decimals ``decimal128(38, scale)`` with the
column's fixed :attr:`Column.scale` (``decimals="exact"``, the default) or ``float64``
(``decimals="float"``). A stored value finer than its column's scale is an error
(``pyarrow.ArrowInvalid``), never rounded. pyarrow is imported only when an Arrow schema or
batch is first asked for, so importing this module stays cheap.

Encoders are incremental: ``begin()``, then ``rows(window)`` per window, then ``end()``, each
returning bytes to send, so a response of any size streams with flat memory. The live
stream's NDJSON events are built by :func:`trade_event` and :func:`candle_event`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol

import orjson

from histdata.model import Candle, LiveTrade, Trade
from histdata.timeutil import format_interval, format_time

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "CANDLES",
    "CANDLE_FIELDS",
    "CONTENT_TYPES",
    "DECIMALS",
    "DECIMAL_PRECISION",
    "FORMATS",
    "TRADES",
    "TRADE_FIELDS",
    "Column",
    "Decimals",
    "Encoder",
    "Format",
    "WireSchema",
    "arrow_batches",
    "candle_encoder",
    "candle_event",
    "candle_metadata",
    "candle_row",
    "csv_line",
    "decimal_text",
    "format_time_ns",
    "trade_encoder",
    "trade_event",
    "trade_metadata",
    "trade_row",
]

Format = Literal["json", "csv", "arrow"]
FORMATS: tuple[Format, ...] = ("json", "csv", "arrow")
Decimals = Literal["exact", "float"]
DECIMALS: tuple[Decimals, ...] = ("exact", "float")
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
}
# decimal128's maximum; polars' Decimal has the same limit.
DECIMAL_PRECISION = 38
# Text values of one row in schema order (None: absent), as the CSV window carries them.
TextRow = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class Column:
    """One wire column: ``kind`` is ``time`` (Arrow unit ``unit``), ``decimal`` (exact Arrow
    type ``decimal128(38, scale)``), ``int`` (int64) or ``text`` (string)."""

    name: str
    kind: Literal["time", "decimal", "int", "text"]
    unit: Literal["us", "ns"] = "us"
    scale: int = 0

    def arrow_type(self, decimals: Decimals) -> pa.DataType:
        """This column's Arrow type under ``decimals``."""
        import pyarrow as pa

        if self.kind == "time":
            return pa.timestamp(self.unit, tz="UTC")
        if self.kind == "decimal":
            return (
                pa.float64()
                if decimals == "float"
                else pa.decimal128(DECIMAL_PRECISION, self.scale)
            )
        return pa.int64() if self.kind == "int" else pa.string()


@dataclass(frozen=True, slots=True)
class WireSchema:
    """The columns of one kind of read, in contract order."""

    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(column.name for column in self.columns)

    @property
    def csv_header(self) -> bytes:
        """The header line of a CSV body."""
        return (",".join(self.names) + "\n").encode()

    def arrow(self, decimals: Decimals, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
        """The Arrow schema under ``decimals``, with ``metadata``.

        Raises:
            ValueError: ``decimals`` is neither ``"exact"`` nor ``"float"``.
        """
        import pyarrow as pa

        if decimals not in DECIMALS:
            raise ValueError(f"decimals must be 'exact' or 'float', not {decimals!r}")
        fields = [(column.name, column.arrow_type(decimals)) for column in self.columns]
        return pa.schema(fields, metadata=metadata)


# Scales of the exact decimals. Kraken quotes prices and volumes with at most 10 fractional
# digits; VWAPs are rounded to 12 (histdata.storage.rollups.VWAP_DECIMALS), Kraken's own are
# printed at the pair's price digits; 24 leaves room for a finer one. With precision 38 that
# leaves 26 integer digits for prices and volumes and 14 for a VWAP.
_PRICE_SCALE = 12
_VWAP_SCALE = 24
CANDLES = WireSchema(
    (
        Column("time", "time", unit="us"),
        Column("open", "decimal", scale=_PRICE_SCALE),
        Column("high", "decimal", scale=_PRICE_SCALE),
        Column("low", "decimal", scale=_PRICE_SCALE),
        Column("close", "decimal", scale=_PRICE_SCALE),
        Column("volume", "decimal", scale=_PRICE_SCALE),
        Column("vwap", "decimal", scale=_VWAP_SCALE),
        Column("trades", "int"),
    )
)
TRADES = WireSchema(
    (
        Column("time", "time", unit="ns"),
        Column("price", "decimal", scale=_PRICE_SCALE),
        Column("volume", "decimal", scale=_PRICE_SCALE),
        Column("side", "text"),
        Column("trade_id", "int"),
    )
)
CANDLE_FIELDS = CANDLES.names
TRADE_FIELDS = TRADES.names


def candle_metadata(symbol: str, interval_min: int) -> dict[bytes, bytes]:
    """The Arrow schema metadata of candles: ``symbol`` and ``interval``."""
    return {b"symbol": symbol.encode(), b"interval": format_interval(interval_min).encode()}


def trade_metadata(symbol: str) -> dict[bytes, bytes]:
    """The Arrow schema metadata of trades: ``symbol``."""
    return {b"symbol": symbol.encode()}


def arrow_batches(schema: pa.Schema, window: bytes) -> list[pa.RecordBatch]:
    """A CSV window (see the module docs) as record batches of ``schema`` (one of
    :meth:`WireSchema.arrow`), parsed in C++ with the schema's types.

    Raises:
        pyarrow.ArrowInvalid: a value does not fit its column's type (a decimal finer than
            the column's scale).
    """
    import pyarrow as pa
    import pyarrow.csv as csv

    if not window:
        return []
    table = csv.read_csv(
        io.BytesIO(window),
        # One block per window, parsed on this thread: the caller overlaps windows already,
        # and on a small machine pyarrow's own threads only contend with PostgreSQL's.
        read_options=csv.ReadOptions(
            column_names=schema.names, use_threads=False, block_size=len(window) + 1
        ),
        convert_options=csv.ConvertOptions(
            column_types=dict(zip(schema.names, schema.types, strict=True)),
            strings_can_be_null=True,
        ),
    )
    return [pa.record_batch(batch.columns, schema=schema) for batch in table.to_batches() if batch]


class Encoder(Protocol):
    """Incremental encoder of one response body from CSV windows."""

    content_type: str

    def begin(self) -> bytes: ...

    def rows(self, window: bytes) -> bytes: ...

    def end(self) -> bytes: ...


def decimal_text(value: Decimal) -> str:
    """Exact plain decimal text (never exponent notation: ``1E-8`` is ``0.00000001``)."""
    return format(value, "f")


def format_time_ns(time_ns: int) -> str:
    """ISO 8601 UTC with ``Z``, with 9 fractional digits when the time has nanoseconds,
    6 when it has microseconds, none otherwise."""
    seconds, ns = divmod(time_ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if ns == 0:
        return base + "Z"
    if ns % 1000 == 0:
        return f"{base}.{ns // 1000:06d}Z"
    return f"{base}.{ns:09d}Z"


def trade_row(trade: Trade | LiveTrade) -> TextRow:
    """A trade's wire values as text, in :data:`TRADES` order (None: absent); a live trade's
    price and volume are already plain text."""
    return (
        format_time_ns(trade.time_ns),
        trade.price if isinstance(trade.price, str) else decimal_text(trade.price),
        trade.volume if isinstance(trade.volume, str) else decimal_text(trade.volume),
        trade.side.value if trade.side is not None else None,
        None if trade.trade_id is None else str(trade.trade_id),
    )


def candle_row(candle: Candle) -> TextRow:
    """A :class:`Candle`'s wire values as text, in :data:`CANDLES` order (None: absent)."""
    return (
        format_time(candle.time),
        decimal_text(candle.open),
        decimal_text(candle.high),
        decimal_text(candle.low),
        decimal_text(candle.close),
        decimal_text(candle.volume),
        None if candle.vwap is None else decimal_text(candle.vwap),
        str(candle.trades),
    )


def csv_line(row: Sequence[str | None]) -> bytes:
    """One CSV window line of text values (as ``COPY … (FORMAT csv)`` prints them)."""
    return (",".join("" if value is None else value for value in row) + "\n").encode()


class _Json:
    content_type = CONTENT_TYPES["json"]

    def __init__(self, head: dict[str, str], key: str, schema: WireSchema) -> None:
        # The head is encoded by orjson (symbol names are data); row values are digits,
        # ISO times and fixed words, which need no escaping.
        self._head = orjson.dumps(head)[:-1] + f',"{key}":['.encode()
        # One %-template per row: text columns quoted, ints bare; absent values are null.
        self._quoted = [column.kind != "int" for column in schema.columns]
        self._keys = [f'"{name}":' for name in schema.names]
        self._first = True

    def begin(self) -> bytes:
        return self._head

    def _object(self, fields: list[str]) -> str:
        parts = [
            key + ("null" if not value else f'"{value}"' if quoted else value)
            for key, quoted, value in zip(self._keys, self._quoted, fields, strict=True)
        ]
        return "{" + ",".join(parts) + "}"

    def rows(self, window: bytes) -> bytes:
        if not window:
            return b""
        text = ",".join(self._object(line.split(",")) for line in window.decode().splitlines())
        if not self._first:
            text = "," + text
        self._first = False
        return text.encode()

    def end(self) -> bytes:
        return b"]}"


class _Csv:
    content_type = CONTENT_TYPES["csv"]

    def __init__(self, schema: WireSchema) -> None:
        self._header = schema.csv_header

    def begin(self) -> bytes:
        return self._header

    def rows(self, window: bytes) -> bytes:
        return window

    def end(self) -> bytes:
        return b""


class _Arrow:
    content_type = CONTENT_TYPES["arrow"]

    def __init__(self, schema: pa.Schema) -> None:
        import pyarrow as pa

        self._schema = schema
        self._sink = io.BytesIO()
        self._writer = pa.ipc.new_stream(self._sink, schema)

    def _take(self) -> bytes:
        data = self._sink.getvalue()
        self._sink.seek(0)
        self._sink.truncate()
        return data

    def begin(self) -> bytes:
        return self._take()

    def rows(self, window: bytes) -> bytes:
        for batch in arrow_batches(self._schema, window):
            self._writer.write_batch(batch)
        return self._take()

    def end(self) -> bytes:
        self._writer.close()
        return self._take()


def candle_encoder(
    fmt: Format, symbol: str, interval_min: int, decimals: Decimals = "exact"
) -> Encoder:
    """An encoder of candle windows in ``fmt``; ``decimals`` chooses Arrow's decimal type.

    The Arrow schema carries ``symbol`` and ``interval`` as metadata.
    """
    if fmt == "json":
        head = {"symbol": symbol, "interval": format_interval(interval_min)}
        return _Json(head, "candles", CANDLES)
    if fmt == "csv":
        return _Csv(CANDLES)
    return _Arrow(CANDLES.arrow(decimals, candle_metadata(symbol, interval_min)))


def trade_encoder(fmt: Format, symbol: str, decimals: Decimals = "exact") -> Encoder:
    """An encoder of trade windows in ``fmt`` (Arrow metadata: ``symbol``)."""
    if fmt == "json":
        return _Json({"symbol": symbol}, "trades", TRADES)
    if fmt == "csv":
        return _Csv(TRADES)
    return _Arrow(TRADES.arrow(decimals, trade_metadata(symbol)))


def trade_event(trade: Trade | LiveTrade) -> bytes:
    """One NDJSON line of the live stream for a trade."""
    time, price, volume, side, _ = trade_row(trade)
    event = {
        "type": "trade",
        "symbol": trade.symbol,
        "time": time,
        "price": price,
        "volume": volume,
        "side": side,
        "trade_id": trade.trade_id,
    }
    return orjson.dumps(event) + b"\n"


def candle_event(candle: Candle) -> bytes:
    """One NDJSON line of the live stream for a candle update (``final`` false while open)."""
    time, o, h, lo, c, v, vwap, _ = candle_row(candle)
    event = {
        "type": "candle",
        "symbol": candle.symbol,
        "interval": format_interval(candle.interval_min),
        "time": time,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
        "vwap": vwap,
        "trades": candle.trades,
        "final": candle.final,
    }
    return orjson.dumps(event) + b"\n"
