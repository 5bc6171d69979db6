"""The vocabulary every layer of histdata shares: trades, candles, where they came from,
the streams and coverage spans they are recorded in, and what a write stored.

Storage imports these types, never the reverse, so the feed, the buffer, backfill and the
importer speak of a :class:`CoverageSpan` or a :class:`WriteResult` without importing the
database layer. They live here beside :class:`Trade` and :class:`Candle` rather than in a
module of their own because each is a few lines and they are one vocabulary:
:data:`TradeSource` is the twin of :class:`CandleSource`, a span covers a :data:`Stream` of
trades or candles.

Prices and volumes are :class:`decimal.Decimal`, never floats: they are parsed from the text
Kraken sent and stored as PostgreSQL ``numeric``, so what goes in comes out digit for digit.
:class:`LiveTrade` is the WebSocket's trade on its way to storage: its price and volume are
the validated number text, which the database converts, because building two Decimals per
trade was a quarter of the live path's CPU.
Trade times are integer nanoseconds since the Unix epoch, which holds every source's full
precision (REST: a printed binary double, within 0.24 µs; WebSocket v2: µs or ns; CSV:
seconds; see docs/kraken.md). Candle times are bucket
starts in UTC, and a candle covers ``[time, time + interval)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal, NamedTuple

__all__ = [
    "NS_PER_S",
    "Candle",
    "CandleSource",
    "CandleWriteResult",
    "CoverageSource",
    "CoverageSpan",
    "LiveTrade",
    "Side",
    "Stream",
    "Trade",
    "TradeSource",
    "WriteResult",
    "datetime_to_ns",
    "ns_to_datetime",
]

NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Side(enum.StrEnum):
    """The taker's side of a trade."""

    BUY = "buy"
    SELL = "sell"


class CandleSource(enum.StrEnum):
    """Where a 1-minute candle came from; stored with the candle."""

    LIVE = "live"  # WebSocket v2 ohlc channel
    REST = "rest"  # REST OHLC endpoint
    CSV = "csv"  # Kraken's downloadable OHLCVT files
    TRADES = "trades"  # derived by histdata from stored trades


# What coverage is recorded for: the trades stream or the 1-minute candles stream.
Stream = Literal["trades", "candles"]
# Where a trade came from; stored with the trade (REST backfill, the live feed, a CSV file).
TradeSource = Literal["live", "rest", "csv"]
# Where an observed span came from: a trade source, or ``derived`` for candles we computed.
CoverageSource = Literal["live", "rest", "csv", "derived"]


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade.

    ``trade_id`` is Kraken's per-pair sequence number when the source carries it (REST,
    WebSocket v2, quarterly CSV) and ``None`` for the 3-column CSV files. ``seq`` orders
    id-less trades that share a timestamp: it is the trade's position among the trades with
    the same time in its source file, so a re-import produces the same key and adds nothing.
    """

    symbol: str
    time_ns: int
    price: Decimal
    volume: Decimal
    side: Side | None = None
    ord_type: str | None = None  # "market" | "limit" when known
    trade_id: int | None = None
    seq: int = 0

    @property
    def time(self) -> datetime:
        """The trade time as an aware UTC datetime (truncated to microseconds)."""
        return ns_to_datetime(self.time_ns)


class LiveTrade(NamedTuple):
    """One trade from the WebSocket, with ``price`` and ``volume`` as plain decimal text.

    The text is what :func:`histdata.kraken.parse.parse_number_text` accepted: ASCII digits
    with an optional fraction, no sign, exponent or leading zero, and not zero; so it is
    exact, and PostgreSQL's ``numeric`` input reads it digit for digit. Only the live path
    makes these; everything read back (the journal, the database) is a :class:`Trade`.
    A named tuple rather than a frozen dataclass: it is made once per trade, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost several times more.
    """

    symbol: str
    time_ns: int
    price: str
    volume: str
    side: Side
    ord_type: str
    trade_id: int | None = None
    seq: int = 0

    @property
    def time(self) -> datetime:
        """The trade time as an aware UTC datetime (truncated to microseconds)."""
        return ns_to_datetime(self.time_ns)

    def to_trade(self) -> Trade:
        """The same trade with exact :class:`Decimal` price and volume (off the hot path)."""
        return Trade(
            symbol=self.symbol,
            time_ns=self.time_ns,
            price=Decimal(self.price),
            volume=Decimal(self.volume),
            side=self.side,
            ord_type=self.ord_type,
            trade_id=self.trade_id,
            seq=self.seq,
        )


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV candle of ``interval_min`` minutes starting at ``time``.

    ``vwap`` is ``None`` where the source has none (Kraken's OHLCVT CSVs). ``final`` is False
    while the interval is still in progress; such a candle is upserted, never trusted as
    complete, and never the point a repair resumes from.
    """

    symbol: str
    time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal | None
    trades: int
    interval_min: int = 1
    source: CandleSource = CandleSource.LIVE
    final: bool = True

    @property
    def end(self) -> datetime:
        """The exclusive end of the candle's interval."""
        return self.time + timedelta(minutes=self.interval_min)


@dataclass(frozen=True, slots=True)
class CoverageSpan:
    """A half-open time range ``[start, end)`` of one stream observed from one source."""

    stream: Stream
    source: CoverageSource
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Rows of a trade batch that were new (``inserted``) or already stored (``present``)."""

    inserted: int
    present: int


@dataclass(frozen=True, slots=True)
class CandleWriteResult:
    """Candles that were new, changed an existing row, or matched what was stored."""

    inserted: int
    updated: int
    unchanged: int


def ns_to_datetime(time_ns: int) -> datetime:
    """Convert Unix nanoseconds to an aware UTC datetime, truncating below a microsecond."""
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def datetime_to_ns(value: datetime) -> int:
    """Convert an aware datetime to Unix nanoseconds exactly.

    Raises:
        ValueError: ``value`` is naive (a naive time is ambiguous; histdata is UTC throughout).
    """
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()} has no time zone; use UTC")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000
