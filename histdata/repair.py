"""Gap repair: find holes in the recorded coverage and fill them from Kraken's REST API.

Repair is driven by coverage, not by "the last stored trade": after a WebSocket reconnect the
live feed stores new trades at once, so the last stored trade is already past the outage; the
hole is the part of the timeline no source observed. For one symbol over ``[start, end)``:

1. **Trades.** Every repairable hole in trades coverage is fetched from REST ``Trades``
   (:func:`~histdata.fetch.fetch_trades`): Kraken's trade history is complete back to each
   pair's listing, so every trade hole can be filled. The open end of the timeline is
   observed up to the moment of the last request (less a few seconds still being published).
   Then the trade ids are audited (:func:`~histdata.storage.continuity.audit_trade_ids`):
   every break in Kraken's id sequence is fetched again from REST by the times of the trades
   around it, whatever coverage says, and a break REST does not fill is marked unfillable.
   Every minute whose derived candle disagrees with Kraken's has its trades fetched again and
   is derived anew (:func:`~histdata.storage.candles.refetch_minutes`).
2. **Candles, recent.** REST ``OHLC`` serves only the 720 most recent 1-minute candles plus the
   live one. Final candles inside candle holes are stored (source REST) and their minutes
   recorded as covered; the live candle is never complete, never covered, never a resume
   point; it is upserted by the next run or the live feed.
3. **Candles, from trades.** For the rest of each hole, exact candles are derived from stored
   trades wherever trades coverage spans the whole minute
   (:func:`~histdata.storage.candles.derive_candles`); where Kraken's candles exist for the same
   minutes, the two are compared and mismatches returned.
4. **Unrecoverable.** A candle hole that is still open, lies entirely before the REST window and
   has no trades to derive from is marked in ``gap_marks``: it is reported as unrecoverable and
   not retried (a later backfill of its trades still lets step 3 fill it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from histdata.fetch import fetch_trades
from histdata.kraken.rest import KrakenRest
from histdata.model import CoverageSpan, datetime_to_ns, ns_to_datetime
from histdata.storage.candles import CandleMismatch, derive_candles, refetch_minutes, write_candles
from histdata.storage.continuity import audit_trade_ids, mark_unfillable
from histdata.storage.coverage import Range, coverage_report, intersect, mark_unrecoverable
from histdata.storage.database import Storage

__all__ = ["REST_OHLC_WINDOW", "RepairResult", "catch_up", "repair_symbol"]

# Kraken's OHLC endpoint returns at most the 720 most recent candles, whatever `since` says.
REST_OHLC_WINDOW = timedelta(minutes=720)
_MINUTE = timedelta(minutes=1)
# REST's trade times are printed floats: a refetch by time reaches this far past each side.
_REFETCH_MARGIN_NS = 1_000_000_000
_log = structlog.get_logger("histdata.repair")


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What one repair of one symbol did."""

    symbol: str
    start: datetime
    end: datetime
    trade_holes: int = 0
    trades_inserted: int = 0
    trades_present: int = 0
    id_holes: int = 0  # trade-id breaks fetched again from REST
    id_holes_left: int = 0  # of those, still missing ids (marked unfillable)
    mismatches_refetched: int = 0  # minutes whose candles disagreed, fetched again
    candle_holes: int = 0
    rest_candles: int = 0  # REST candles inserted or updated
    derived_candles: int = 0  # minutes derived from trades
    compared: int = 0
    mismatches: list[CandleMismatch] = field(default_factory=list)
    unrecoverable: list[Range] = field(default_factory=list)


async def repair_symbol(
    storage: Storage,
    rest: KrakenRest,
    symbol: str,
    start: datetime,
    end: datetime,
    *,
    settle_s: float = 5.0,
) -> RepairResult:
    """Repair trades and 1-minute candles of ``symbol`` in ``[start, end)`` (see module doc).

    Raises:
        UnknownSymbol, KrakenRequestError: the pair is not known or not served.
        KrakenError: REST kept failing; what was committed stays, the next run continues.
        DatabaseUnavailable: the database is down.
    """
    symbol = storage.registry.canonical(symbol)
    now = ns_to_datetime(time.time_ns())
    trade_holes = (await coverage_report(storage, symbol, "trades", start, end)).repairable
    inserted = present = 0
    for low, high in trade_holes:
        open_ended = high >= now - timedelta(seconds=settle_s)
        fetched = await fetch_trades(
            storage,
            rest,
            symbol,
            since_ns=datetime_to_ns(low),
            until_ns=None if open_ended else datetime_to_ns(high),
            settle_s=settle_s,
        )
        inserted += fetched.inserted
        present += fetched.present
    id_fetched, id_left, id_inserted = await _refill_id_holes(storage, rest, symbol, settle_s)
    inserted += id_inserted
    refetched, mismatch_inserted = await _refetch_mismatches(
        storage, rest, symbol, start, end, settle_s
    )
    inserted += mismatch_inserted
    candle_end = min(end, ns_to_datetime(time.time_ns()))
    candle_holes = (await coverage_report(storage, symbol, "candles", start, candle_end)).repairable
    rest_written = 0
    served_from = candle_end
    if candle_holes and candle_holes[-1][1] > candle_end - REST_OHLC_WINDOW - _MINUTE:
        rest_written, served_from = await _fill_from_ohlc(storage, rest, symbol, candle_holes)
    derived = compared = 0
    mismatches: list[CandleMismatch] = []
    for low, high in candle_holes:
        done = await derive_candles(storage, symbol, low, high)
        derived += done.derived
        compared += done.compared
        mismatches.extend(done.mismatches)
    unrecoverable: list[Range] = []
    for low, high in (
        await coverage_report(storage, symbol, "candles", start, candle_end)
    ).repairable:
        if high <= served_from:
            await mark_unrecoverable(
                storage,
                symbol,
                "candles",
                low,
                high,
                "older than Kraken's 720-minute OHLC window and no stored trades to derive"
                " from (backfill the trades, then repair again)",
            )
            unrecoverable.append((low, high))
    if mismatches:
        _log.warning(
            "candle_mismatches", symbol=symbol, count=len(mismatches), first=str(mismatches[0])
        )
    result = RepairResult(
        symbol,
        start,
        end,
        len(trade_holes),
        inserted,
        present,
        id_fetched,
        id_left,
        refetched,
        len(candle_holes),
        rest_written,
        derived,
        compared,
        mismatches,
        unrecoverable,
    )
    _log.info(
        "repaired",
        symbol=symbol,
        trade_holes=len(trade_holes),
        trades_inserted=inserted,
        id_holes=id_fetched,
        id_holes_left=id_left,
        candle_holes=len(candle_holes),
        rest_candles=rest_written,
        derived=derived,
        mismatches=len(mismatches),
        unrecoverable=len(unrecoverable),
    )
    return result


async def _refill_id_holes(
    storage: Storage, rest: KrakenRest, symbol: str, settle_s: float
) -> tuple[int, int, int]:
    """Fetch every open trade-id hole of ``symbol`` again from REST by the times around it.

    REST's times are printed floats, so the window reaches a second past each side; the
    copies already stored are recognised by id. Returns (holes fetched, holes still missing
    ids and now marked unfillable, trades inserted).
    """
    holes = (await audit_trade_ids(storage, symbol)).open
    inserted = 0
    for hole in holes:
        inserted += await _refetch(storage, rest, symbol, hole.after, hole.before, settle_s)
    if not holes:
        return 0, 0, 0
    left = (await audit_trade_ids(storage, symbol)).open
    fetched_ids = {(h.first_id, h.last_id) for h in holes}
    # Only a hole inside a completed fetch is Kraken's to blame; a new one (found by this
    # second audit) waits for the next round.
    unfillable = [
        hole
        for hole in left
        if any(a <= hole.first_id and hole.last_id <= b for a, b in fetched_ids)
    ]
    for hole in unfillable:
        await mark_unfillable(
            storage, symbol, hole, "Kraken's REST Trades served no trade with these ids"
        )
    return len(holes), len(unfillable), inserted


async def _refetch(
    storage: Storage,
    rest: KrakenRest,
    symbol: str,
    low: datetime,
    high: datetime,
    settle_s: float,
) -> int:
    """Fetch the trades of ``[low, high]`` again (widened by the REST margin); the inserted."""
    fetched = await fetch_trades(
        storage,
        rest,
        symbol,
        since_ns=datetime_to_ns(low) - _REFETCH_MARGIN_NS,
        until_ns=datetime_to_ns(high) + _REFETCH_MARGIN_NS,
        settle_s=settle_s,
    )
    return fetched.inserted


async def _refetch_mismatches(
    storage: Storage,
    rest: KrakenRest,
    symbol: str,
    start: datetime,
    end: datetime,
    settle_s: float,
) -> tuple[int, int]:
    """Fetch again the trades of every minute whose candle disagrees with Kraken's, then
    derive those minutes anew: a trade we lacked makes both agree and clears the mismatch;
    one that stays is a real difference and stays reported. Returns (minutes, inserted)."""
    minutes = inserted = 0
    for low, high in await refetch_minutes(storage, symbol, start, end):
        inserted += await _refetch(storage, rest, symbol, low, high, settle_s)
        minutes += int((high - low) / _MINUTE)
        await derive_candles(storage, symbol, low, high)
    return minutes, inserted


async def _fill_from_ohlc(
    storage: Storage, rest: KrakenRest, symbol: str, holes: list[Range]
) -> tuple[int, datetime]:
    """Store REST's final 1-minute candles inside ``holes``; return (written, served-from).

    The served range is ``[first row, live candle)``; its part inside the holes is recorded as
    REST candle coverage (minutes Kraken left out had no trades).
    """
    page = await rest.ohlc(symbol, interval=1)
    final = [c for c in page.candles if c.final]
    live = [c for c in page.candles if not c.final]
    if not final:
        return 0, live[0].time if live else holes[-1][1]
    open_time = live[0].time if live else final[-1].end
    served = (max(final[0].time, open_time - REST_OHLC_WINDOW), open_time)
    inside = intersect(holes, [served])
    wanted = [
        c
        for c in final
        if c.trades > 0 and any(low <= c.time and c.end <= high for low, high in inside)
    ]
    written = await write_candles(
        storage,
        wanted,
        coverage=[(symbol, CoverageSpan("candles", "rest", low, high)) for low, high in inside],
    )
    return written.inserted + written.updated, served[0]


async def catch_up(
    storage: Storage,
    rest: KrakenRest,
    symbol: str,
    *,
    lookback: timedelta = timedelta(days=1),
    settle_s: float = 5.0,
) -> RepairResult:
    """Repair the last ``lookback`` of ``symbol`` up to now: what the live path calls after
    every WebSocket reconnect (through the gap filler), and what the gap filler's timer runs.

    Raises:
        As :func:`repair_symbol`.
    """
    now = ns_to_datetime(time.time_ns())
    return await repair_symbol(storage, rest, symbol, now - lookback, now, settle_s=settle_s)
