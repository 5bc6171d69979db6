"""Wire formats of the read API: candles and trades as JSON, CSV and Arrow IPC streams.

Fields, in contract order (README, "the socket API"): candles ``time, open, high, low, close,
volume, vwap, trades``; trades ``time, price, volume, side, trade_id``. Decimals are written as
their exact decimal text (JSON strings, CSV cells, Arrow ``string`` columns) — never floats. Times
are ISO 8601 UTC with ``Z`` in JSON and CSV (trades keep their sub-microsecond digits) and
``timestamp[us|ns, UTC]`` in Arrow. An absent value (a CSV-sourced candle's vwap, a trade's
unknown side or id) is JSON ``null``, an empty CSV cell and an Arrow null.

Encoders are incremental: ``begin()``, then ``rows(chunk)`` per chunk, then ``end()``, each
returning bytes to send, so a response of any size streams with flat memory. The live
stream's NDJSON events are built by :func:`trade_event` and :func:`candle_event`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

import orjson
import pyarrow as pa

from histdata.model import Candle, LiveTrade, Trade, datetime_to_ns
from histdata.storage.reads import CandleRow, TradeRow
from histdata.timeutil import format_interval, format_time

__all__ = [
    "CANDLE_FIELDS",
    "CONTENT_TYPES",
    "FORMATS",
    "TRADE_FIELDS",
    "Encoder",
    "Format",
    "TradeRow",
    "batch_rows",
    "candle_encoder",
    "candle_event",
    "candle_row",
    "candle_schema",
    "decimal_text",
    "format_time_ns",
    "record_batch",
    "trade_encoder",
    "trade_event",
    "trade_row",
    "trade_schema",
]

Format = Literal["json", "csv", "arrow"]
FORMATS: tuple[Format, ...] = ("json", "csv", "arrow")
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
}
CANDLE_FIELDS = ("time", "open", "high", "low", "close", "volume", "vwap", "trades")
TRADE_FIELDS = ("time", "price", "volume", "side", "trade_id")


_CANDLE_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        *((name, pa.string()) for name in CANDLE_FIELDS[1:6]),
        ("vwap", pa.string()),
        ("trades", pa.int64()),
    ]
)
_TRADE_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("ns", tz="UTC")),
        ("price", pa.string()),
        ("volume", pa.string()),
        ("side", pa.string()),
        ("trade_id", pa.int64()),
    ]
)


def candle_schema(symbol: str, interval_min: int) -> pa.Schema:
    """The Arrow schema of candles, with ``symbol`` and ``interval`` as metadata."""
    meta = {b"symbol": symbol.encode(), b"interval": format_interval(interval_min).encode()}
    return _CANDLE_SCHEMA.with_metadata(meta)


def trade_schema(symbol: str) -> pa.Schema:
    """The Arrow schema of trades, with ``symbol`` as metadata."""
    return _TRADE_SCHEMA.with_metadata({b"symbol": symbol.encode()})


def record_batch(schema: pa.Schema, rows: Sequence[Any]) -> pa.RecordBatch:
    """Text rows (:data:`CandleRow` or :data:`TradeRow`, as ``schema`` says) as one Arrow
    record batch of that schema."""
    columns = list(zip(*rows, strict=True)) or [()] * (len(schema) + 1)
    # Rows carry the time twice (integer, then ISO text); Arrow takes the integer.
    arrays = [pa.array(columns[0], pa.int64()).cast(schema.field("time").type)]
    for field, values in zip(list(schema)[1:], columns[2:], strict=True):
        arrays.append(pa.array(values, field.type))
    return pa.record_batch(arrays, schema=schema)


def batch_rows(batch: pa.RecordBatch) -> list[Any]:
    """An Arrow batch of :func:`record_batch`'s schema back as text rows, so the JSON and CSV
    encoders can write what arrived as Arrow."""
    time = batch.column(0)
    to_ns = {"us": 1_000, "ns": 1}[time.type.unit]
    raw = time.cast(pa.int64()).to_pylist()
    ns = [v * to_ns for v in raw]
    rest = [column.to_pylist() for column in batch.columns[1:]]
    return [(r, format_time_ns(n), *values) for r, n, *values in zip(raw, ns, *rest, strict=True)]


class Encoder(Protocol):
    """Incremental encoder of one response body."""

    content_type: str

    def begin(self) -> bytes: ...

    def rows(self, rows: Sequence[Any]) -> bytes: ...

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


def trade_row(trade: Trade | LiveTrade) -> TradeRow:
    """A trade as the text row the encoders write (a live trade's text is already plain)."""
    return (
        trade.time_ns,
        format_time_ns(trade.time_ns),
        trade.price if isinstance(trade.price, str) else decimal_text(trade.price),
        trade.volume if isinstance(trade.volume, str) else decimal_text(trade.volume),
        trade.side.value if trade.side is not None else None,
        trade.trade_id,
    )


def candle_row(candle: Candle) -> CandleRow:
    """A :class:`Candle` as the text row the encoders write."""
    return (
        datetime_to_ns(candle.time) // 1000,
        format_time(candle.time),
        decimal_text(candle.open),
        decimal_text(candle.high),
        decimal_text(candle.low),
        decimal_text(candle.close),
        decimal_text(candle.volume),
        None if candle.vwap is None else decimal_text(candle.vwap),
        candle.trades,
    )


def _json_str(value: str | None) -> str:
    return "null" if value is None else f'"{value}"'


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(value)


class _Json:
    content_type = CONTENT_TYPES["json"]

    def __init__(self, head: dict[str, str], key: str, kind: Literal["candle", "trade"]) -> None:
        # The head is encoded by orjson (symbol names are data); row values are digits,
        # ISO times and fixed words, which need no escaping.
        self._head = orjson.dumps(head)[:-1] + f',"{key}":['.encode()
        self._kind = kind
        self._first = True

    def begin(self) -> bytes:
        return self._head

    def rows(self, rows: Sequence[Any]) -> bytes:
        if not rows:
            return b""
        if self._kind == "candle":
            parts = [
                f'{{"time":"{r[1]}","open":"{r[2]}","high":"{r[3]}","low":"{r[4]}",'
                f'"close":"{r[5]}","volume":"{r[6]}","vwap":{_json_str(r[7])},"trades":{r[8]}}}'
                for r in rows
            ]
        else:
            parts = [
                f'{{"time":"{r[1]}","price":"{r[2]}","volume":"{r[3]}",'
                f'"side":{_json_str(r[4])},"trade_id":{_json_int(r[5])}}}'
                for r in rows
            ]
        text = ",".join(parts)
        if not self._first:
            text = "," + text
        self._first = False
        return text.encode()

    def end(self) -> bytes:
        return b"]}"


class _Csv:
    content_type = CONTENT_TYPES["csv"]

    def __init__(self, kind: Literal["candle", "trade"]) -> None:
        self._kind = kind

    def begin(self) -> bytes:
        fields = CANDLE_FIELDS if self._kind == "candle" else TRADE_FIELDS
        return (",".join(fields) + "\n").encode()

    def rows(self, rows: Sequence[Any]) -> bytes:
        if not rows:
            return b""
        if self._kind == "candle":
            lines = [
                f"{r[1]},{r[2]},{r[3]},{r[4]},{r[5]},{r[6]},{r[7] or ''},{r[8]}\n" for r in rows
            ]
        else:
            lines = [
                f"{r[1]},{r[2]},{r[3]},{r[4] or ''},{'' if r[5] is None else r[5]}\n" for r in rows
            ]
        return "".join(lines).encode()

    def end(self) -> bytes:
        return b""


class _Arrow:
    content_type = CONTENT_TYPES["arrow"]

    def __init__(self, schema: pa.Schema) -> None:
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

    def rows(self, rows: Sequence[Any]) -> bytes:
        if not rows:
            return b""
        self._writer.write_batch(record_batch(self._schema, rows))
        return self._take()

    def end(self) -> bytes:
        self._writer.close()
        return self._take()


def candle_encoder(fmt: Format, symbol: str, interval_min: int) -> Encoder:
    """An encoder of :data:`~histdata.storage.reads.CandleRow` chunks in ``fmt``.

    The Arrow schema carries ``symbol`` and ``interval`` as metadata.
    """
    if fmt == "json":
        return _Json(
            {"symbol": symbol, "interval": format_interval(interval_min)}, "candles", "candle"
        )
    if fmt == "csv":
        return _Csv("candle")
    return _Arrow(candle_schema(symbol, interval_min))


def trade_encoder(fmt: Format, symbol: str) -> Encoder:
    """An encoder of :data:`TradeRow` chunks in ``fmt`` (Arrow metadata: ``symbol``)."""
    if fmt == "json":
        return _Json({"symbol": symbol}, "trades", "trade")
    if fmt == "csv":
        return _Csv("trade")
    return _Arrow(trade_schema(symbol))


def trade_event(trade: Trade | LiveTrade) -> bytes:
    """One NDJSON line of the live stream for a trade."""
    r = trade_row(trade)
    return (
        orjson.dumps(
            {
                "type": "trade",
                "symbol": trade.symbol,
                "time": r[1],
                "price": r[2],
                "volume": r[3],
                "side": r[4],
                "trade_id": r[5],
            }
        )
        + b"\n"
    )


def candle_event(candle: Candle) -> bytes:
    """One NDJSON line of the live stream for a candle update (``final`` false while open)."""
    r = candle_row(candle)
    return (
        orjson.dumps(
            {
                "type": "candle",
                "symbol": candle.symbol,
                "interval": format_interval(candle.interval_min),
                "time": r[1],
                "open": r[2],
                "high": r[3],
                "low": r[4],
                "close": r[5],
                "volume": r[6],
                "vwap": r[7],
                "trades": r[8],
                "final": candle.final,
            }
        )
        + b"\n"
    )
