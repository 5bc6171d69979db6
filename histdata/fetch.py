"""REST trade history into storage: the resumable backfill, and the fetch loop repairs share.

:func:`fetch_trades` pages ``/public/Trades`` through :meth:`KrakenRest.iter_trades` (exact
19-digit cursor strings, boundary duplicates dropped by trade id) and commits each page with
its trades coverage, and, when given a cursor name, with the cursor, in ONE transaction. A kill
at any point therefore resumes from the last committed page: the trades of that page are
stored and the next request starts at its ``last``. Trades Kraken repeats on resume are
absorbed by the idempotent write.

Coverage is exact: a page observed every trade in ``[cursor, next cursor)`` (Kraken returns
trades at or after ``since``); the final page of a catch-up observed up to the moment of the
request, less ``settle_s`` for trades still being published.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
import trio

from histdata.kraken.rest import KrakenRest
from histdata.model import NS_PER_S, CoverageSpan, ns_to_datetime
from histdata.storage.candles import DeriveResult, derive_candles
from histdata.storage.cursors import delete_cursor, get_cursor
from histdata.storage.database import Storage
from histdata.storage.trades import drop_cross_source_duplicates, trade_span, write_trades

__all__ = [
    "FetchProgress",
    "FetchResult",
    "backfill_cursor_name",
    "backfill_trades",
    "derive_backfilled",
    "fetch_trades",
]

_log = structlog.get_logger("histdata.fetch")


@dataclass(frozen=True, slots=True)
class FetchProgress:
    """Where a fetch stands after a committed page; ``eta_s`` is None until it can be told."""

    symbol: str
    position_ns: int  # everything before this is stored
    start_ns: int
    target_ns: int  # until, or "now" when the fetch started
    pages: int
    inserted: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        """Share of ``[start, target)`` done, 0..1."""
        span = self.target_ns - self.start_ns
        return 1.0 if span <= 0 else min(1.0, max(0.0, (self.position_ns - self.start_ns) / span))

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the average pace so far."""
        done = self.fraction
        if done <= 0.0 or self.elapsed_s <= 0.0:
            return None
        return self.elapsed_s * (1.0 - done) / done


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What a fetch stored; ``resumed_from`` is set when a persisted cursor was used."""

    symbol: str
    pages: int
    inserted: int
    present: int
    cross_source: int
    start_ns: int
    end_ns: int  # trades coverage now reaches here
    resumed_from: str | None


def backfill_cursor_name(symbol: str, since_ns: int, until_ns: int | None) -> str:
    """The cursor a backfill of ``symbol`` over ``[since, until)`` resumes from."""
    return f"backfill:{symbol}:{since_ns}:{until_ns if until_ns is not None else 'open'}"


async def fetch_trades(
    storage: Storage,
    rest: KrakenRest,
    symbol: str,
    *,
    since_ns: int,
    until_ns: int | None = None,
    cursor_name: str | None = None,
    settle_s: float = 5.0,
    on_page: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    """Fetch and store every trade of ``symbol`` in ``[since, until)`` (``until`` None: to now).

    "Now" is the moment the fetch starts: on an active market every page brings trades made
    since the previous request, so following the tail would never end. Trades after that
    moment are the live feed's (or the next repair's) to record.

    With ``cursor_name`` the position is persisted with every page and a stored cursor is
    resumed from; the cursor is deleted when the range is complete.

    Raises:
        UnknownSymbol, KrakenRequestError: the pair is not tradable on Kraken.
        KrakenError: REST kept failing (the committed pages and cursor remain).
        DatabaseUnavailable: the database is down (likewise).
    """
    symbol = storage.registry.canonical(symbol)
    resumed = await get_cursor(storage, cursor_name) if cursor_name else None
    cursor = resumed if resumed is not None else str(since_ns)
    start_ns = position = int(cursor)
    target_ns = until_ns if until_ns is not None else time.time_ns()
    started = trio.current_time()
    started_ns = time.time_ns()
    pages = inserted = present = cross = 0
    iterator = rest.iter_trades(symbol, since=cursor, until_ns=until_ns)
    try:
        while True:
            asked_ns = time.time_ns()
            try:
                trades, next_cursor = await iterator.__anext__()
            except StopAsyncIteration:
                break
            advanced = int(next_cursor) > position
            if advanced:
                end = int(next_cursor)
            else:
                # Kraken has nothing newer: the range up to the request is observed.
                end = max(position, asked_ns - int(settle_s * NS_PER_S))
                if until_ns is not None:
                    end = min(end, until_ns)
            kept, dropped = await drop_cross_source_duplicates(storage, trades)
            coverage = []
            if end > position:
                coverage.append(
                    (
                        symbol,
                        CoverageSpan(
                            "trades", "rest", ns_to_datetime(position), ns_to_datetime(end)
                        ),
                    )
                )
            result = await write_trades(
                storage,
                kept,
                source="rest",
                coverage=coverage,
                cursor=(cursor_name, str(max(int(next_cursor), position))) if cursor_name else None,
            )
            pages += 1
            inserted += result.inserted
            present += result.present + dropped
            cross += dropped
            position = max(position, end)
            if on_page is not None:
                on_page(
                    FetchProgress(
                        symbol,
                        position,
                        since_ns,
                        target_ns,
                        pages,
                        inserted,
                        trio.current_time() - started,
                    )
                )
            if until_ns is None and position >= started_ns:
                break
    finally:
        await iterator.aclose()  # type: ignore[attr-defined]
    if cursor_name:
        await delete_cursor(storage, cursor_name)
    _log.info(
        "trades_fetched",
        symbol=symbol,
        pages=pages,
        inserted=inserted,
        present=present,
        resumed_from=resumed,
    )
    return FetchResult(symbol, pages, inserted, present, cross, start_ns, position, resumed)


async def backfill_trades(
    storage: Storage,
    rest: KrakenRest,
    symbol: str,
    *,
    since_ns: int,
    until_ns: int | None = None,
    on_page: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    """The resumable backfill of ``histdata backfill``: :func:`fetch_trades` under the cursor
    :func:`backfill_cursor_name` names, so re-running the same command after a kill resumes.

    Raises:
        As :func:`fetch_trades`.
    """
    symbol = storage.registry.canonical(symbol)
    result = await fetch_trades(
        storage,
        rest,
        symbol,
        since_ns=since_ns,
        until_ns=until_ns,
        cursor_name=backfill_cursor_name(symbol, since_ns, until_ns),
        on_page=on_page,
    )
    await derive_backfilled(storage, symbol, since_ns, until_ns)
    return result


async def derive_backfilled(
    storage: Storage, symbol: str, since_ns: int, until_ns: int | None
) -> DeriveResult:
    """Derive the 1-minute candles (and so every rollup) of a backfilled range from its
    trades, wherever they now cover whole minutes: history older than Kraken's 720-minute
    OHLC window is backtestable as soon as its trades are stored.

    Raises:
        DatabaseUnavailable: the database is down (the trades stay; a repair derives later).
    """
    end = ns_to_datetime(until_ns if until_ns is not None else time.time_ns())
    span = await trade_span(storage, symbol, ns_to_datetime(since_ns), end)
    if span is None:
        return DeriveResult(0, 0, 0, 0, [], [])
    # Whole minutes around the trades: derivation itself keeps to what coverage covers whole.
    low = span[0].replace(second=0, microsecond=0)
    high = span[1].replace(second=0, microsecond=0) + timedelta(minutes=1)
    return await derive_candles(storage, symbol, max(low, ns_to_datetime(since_ns)), min(high, end))
