"""The Kraken REST client: public market data with retries, the shared limiter, exact paging.

Every request waits on the process-wide :class:`~histdata.kraken.ratelimit.RateLimiter`.
Failures are sorted as Kraken's quirks demand:

- Kraken reports its own errors in HTTP 200 bodies (:func:`~histdata.kraken.parse.check_envelope`):
  rate limits penalize the shared limiter and are retried after its cool-down; transient
  service errors are retried with a jittered exponential backoff; refused requests
  (``EQuery:Unknown asset pair``…) raise :class:`KrakenRequestError` at once.
- An edge proxy (Cloudflare) answers with HTML and 403/429/5xx: a transport failure, retried
  with backoff (429 also penalizes the limiter). Connection errors and timeouts likewise.
- After ``max_attempts`` the last failure is raised as a :class:`KrakenError` (transient).

:meth:`KrakenRest.iter_trades` pages trade history by Kraken's nanosecond ``last`` cursor,
kept as an exact string, and drops the duplicates Kraken repeats at page boundaries.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import structlog
import trio

from histdata import __version__
from histdata.errors import KrakenError, RateLimited, RejectedInput
from histdata.kraken.parse import (
    OHLC_INTERVALS,
    KrakenRateLimited,
    KrakenRequestError,
    check_envelope,
    loads_exact,
    parse_asset_pairs,
    parse_rest_ohlc,
    parse_rest_trades,
)
from histdata.kraken.ratelimit import RateLimiter
from histdata.model import Candle, Side, Trade
from histdata.supervisor.backoff import Backoff
from histdata.symbols import SymbolRegistry

__all__ = [
    "USER_AGENT",
    "KrakenRest",
    "OhlcPage",
    "RestStatistics",
    "TradesPage",
    "open_kraken_rest",
]

# Kraken requires a User-Agent; Cloudflare's browser check may 403 a missing or odd one.
USER_AGENT = f"histdata/{__version__} (Kraken market data archiver; python-httpx)"
_MAX_TRADES_COUNT = 1000
# A REST trade time is printed as the binary double nearest Kraken's ns time, in its shortest
# decimal form: doubles are 238 ns apart at today's epoch, and both the rounding to a double
# and the shortening can move the time by half of that, so the printed time can be up to
# 238 ns late. Resuming 1 µs before it (with ``since`` inclusive) re-fetches a few trades,
# dropped by id, instead of skipping the rest of a same-time group that the page end cut.
_PRINTED_TIME_SLACK_NS = 1_000
_log = structlog.get_logger("histdata.kraken.rest")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TradesPage:
    """One page of ``/public/Trades``: good trades, the exact ``last`` cursor, rejections."""

    trades: list[Trade]
    last: str | None
    rejections: list[RejectedInput]


@dataclass(frozen=True, slots=True)
class OhlcPage:
    """One answer of ``/public/OHLC``: candles (the final one not final), ``last``, rejections."""

    candles: list[Candle]
    last: int | None
    rejections: list[RejectedInput]


@dataclass(frozen=True, slots=True)
class RestStatistics:
    """A snapshot of a :class:`KrakenRest`'s counters."""

    requests: int  # HTTP requests sent, retries included
    retries: int
    rate_limited: int  # rate-limit answers (body errors and HTTP 429)
    transport_errors: int  # connection errors, timeouts, non-200 statuses, non-JSON bodies
    service_errors: int  # transient Kraken errors in the body (EService:…)
    request_errors: int  # requests Kraken refused (EQuery:…, EGeneral:Invalid arguments)
    duplicates_dropped: int  # boundary duplicates dropped by iter_trades
    rejected: dict[str, int] = field(default_factory=dict)  # rejected rows by reason


class KrakenRest:
    """Client for Kraken's public REST endpoints; use through :func:`open_kraken_rest`.

    Args:
        base_url: ``https://api.kraken.com`` (``/0`` is appended unless already there) or the
            simulator's ``rest_url``.
        registry: resolves any spelling of a symbol; requests use the altname.
        limiter: the process-wide limiter every REST caller shares.
        timeout_s: per-request transport timeout (connect, read, write, pool).
        max_attempts: attempts per call before the last failure is raised.
        backoff: the delays between attempts after transient failures (each call starts
            from a fresh clone); rate limits wait on the limiter's cool-down instead.
    """

    def __init__(
        self,
        base_url: str,
        registry: SymbolRegistry,
        limiter: RateLimiter,
        *,
        timeout_s: float = 30.0,
        max_attempts: int = 6,
        backoff: Backoff | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/0") else f"{base}/0"
        self.registry = registry
        self.limiter = limiter
        self.max_attempts = max_attempts
        self.backoff = backoff if backoff is not None else Backoff(0.5, 30.0)
        self._client = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
        )
        self._requests = 0
        self._retries = 0
        self._rate_limited = 0
        self._transport_errors = 0
        self._service_errors = 0
        self._request_errors = 0
        self._duplicates = 0
        self._rejected: Counter[str] = Counter()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    def statistics(self) -> RestStatistics:
        """Return the current counters (see :class:`RestStatistics`)."""
        return RestStatistics(
            requests=self._requests,
            retries=self._retries,
            rate_limited=self._rate_limited,
            transport_errors=self._transport_errors,
            service_errors=self._service_errors,
            request_errors=self._request_errors,
            duplicates_dropped=self._duplicates,
            rejected=dict(self._rejected),
        )

    # ----------------------------------------------------------------------- transport

    async def _call(self, name: str, params: dict[str, str], parse: Callable[[Any], _T]) -> _T:
        """GET ``/public/<name>``, check the envelope, parse ``result``; retry transient failures.

        Raises:
            KrakenRequestError: Kraken refused the request; not retried.
            KrakenError: every attempt failed transiently (RateLimited if the last was a limit).
        """
        url = f"{self.base_url}/public/{name}"
        backoff = self.backoff.clone()
        last_error: KrakenError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self._retries += 1
            try:
                return parse(await self._get(url, params))
            except KrakenRequestError:
                self._request_errors += 1
                raise
            except RateLimited as exc:
                # The limiter already started a cool-down; waiting on it is the backoff.
                self._rate_limited += 1
                last_error = exc
            except KrakenError as exc:
                last_error = exc
            except RejectedInput as exc:
                # The body as a whole made no sense (an edge proxy's page, a truncated reply).
                self._transport_errors += 1
                last_error = KrakenError(f"GET {name}: unusable body: {exc}")
            _log.warning("kraken_rest_retry", endpoint=name, attempt=attempt, error=str(last_error))
            if attempt < self.max_attempts and not isinstance(last_error, RateLimited):
                # After a rate limit the limiter's cool-down already spaces out the retry.
                await trio.sleep(backoff.next_delay())
        assert last_error is not None  # the loop ran at least once
        raise last_error

    async def _get(self, url: str, params: dict[str, str]) -> Any:
        """One limited GET returning the envelope's ``result`` (Kraken errors raised)."""
        async with self.limiter.acquire():
            self._requests += 1
            try:
                response = await self._client.get(url, params=params)
            except httpx.HTTPError as exc:  # connect/read errors and timeouts
                self._transport_errors += 1
                raise KrakenError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 429:
                raise KrakenRateLimited(
                    f"GET {url}: HTTP 429", retry_after_s=_retry_after(response)
                )
            if response.status_code != 200:
                self._transport_errors += 1
                raise KrakenError(
                    f"GET {url}: HTTP {response.status_code}: {response.text[:120]!r}"
                )
            body = loads_exact(response.content, where=f"GET {url}")
            try:
                return check_envelope(body)
            except RateLimited:
                raise
            except KrakenError:
                if not isinstance(body, dict) or not body.get("error"):
                    self._transport_errors += 1
                else:
                    self._service_errors += 1
                raise

    def _count_rejections(self, rejections: list[RejectedInput]) -> None:
        for rejection in rejections:
            self._rejected[rejection.reason] += 1
        if rejections:
            _log.warning(
                "kraken_rest_rows_rejected",
                count=len(rejections),
                first=str(rejections[0]),
            )

    # ------------------------------------------------------------------------- endpoints

    async def server_time(self) -> int:
        """Kraken's clock, in Unix seconds (``/public/Time``).

        Raises:
            KrakenError: after retries, including when ``unixtime`` is missing.
        """

        def parse(result: Any) -> int:
            value = result.get("unixtime") if isinstance(result, dict) else None
            if isinstance(value, bool) or not isinstance(value, int):
                raise RejectedInput("bad_body", f"Time result without integer unixtime: {result!r}")
            return value

        return await self._call("Time", {}, parse)

    async def asset_pairs(self) -> SymbolRegistry:
        """A registry of exactly the pairs ``/public/AssetPairs`` lists, with their status.

        Raises:
            KrakenError: after retries.
        """
        return await self._call("AssetPairs", {}, parse_asset_pairs)

    async def ohlc(self, symbol: str, *, interval: int = 1, since: int | None = None) -> OhlcPage:
        """Candles from ``/public/OHLC`` (at most Kraken's 720 most recent plus the live one).

        ``since`` is Unix seconds; whether Kraken treats it as inclusive or exclusive has
        varied, so callers upsert. The final candle is returned with ``final=False``.

        Raises:
            UnknownSymbol: ``symbol`` is not in the registry.
            KrakenRequestError: ``interval`` is not one of Kraken's, or Kraken refused the pair.
            KrakenError: after retries.
        """
        info = self.registry.resolve(symbol)
        if interval not in OHLC_INTERVALS:
            raise KrakenRequestError(
                f"interval {interval} is not one of Kraken's {sorted(OHLC_INTERVALS)}"
            )
        params = {"pair": info.altname, "interval": str(interval)}
        if since is not None:
            params["since"] = str(int(since))

        def parse(result: Any) -> OhlcPage:
            candles, last, rejections = parse_rest_ohlc(
                result, self.registry, info.symbol, interval=interval
            )
            self._count_rejections(rejections)
            return OhlcPage(candles, last, rejections)

        return await self._call("OHLC", params, parse)

    async def trades(
        self, symbol: str, *, since: str | None = None, count: int = _MAX_TRADES_COUNT
    ) -> TradesPage:
        """One page of ``/public/Trades``, oldest first.

        ``since`` is sent verbatim: a digit string, normally the previous page's ``last``
        (19 digits of nanoseconds). Without it Kraken returns the most recent trades.

        Raises:
            ValueError: ``since`` is not a digit string, or ``count`` is outside 1..1000.
            UnknownSymbol: ``symbol`` is not in the registry.
            KrakenRequestError: Kraken refused the request.
            KrakenError: after retries.
        """
        info = self.registry.resolve(symbol)
        if since is not None and not (since.isascii() and since.isdigit()):
            raise ValueError(f"since must be a digit string (ns), got {since!r}")
        if not 1 <= count <= _MAX_TRADES_COUNT:
            raise ValueError(f"count must be between 1 and {_MAX_TRADES_COUNT}, got {count}")
        params = {"pair": info.altname, "count": str(count)}
        if since is not None:
            params["since"] = since

        def parse(result: Any) -> TradesPage:
            trades, last, rejections = parse_rest_trades(result, self.registry, info.symbol)
            self._count_rejections(rejections)
            return TradesPage(trades, last, rejections)

        return await self._call("Trades", params, parse)

    async def iter_trades(
        self, symbol: str, *, since: str, until_ns: int | None = None
    ) -> AsyncIterator[tuple[list[Trade], str]]:
        """Yield the trade history from ``since`` as ``(new trades, cursor to resume from)``.

        Pages follow Kraken's ``last`` as an exact digit string; a page without ``last``
        continues from just before its final trade's printed time, which is only the binary
        double nearest the real one (docs/kraken.md, "Times"). Trades Kraken repeats at a page
        boundary are dropped: by ``trade_id`` against the previous page's ids, and for
        id-less trades by identical rows counted against the previous page. Id-less trades
        sharing a time get ``seq`` numbers continuous across pages. With ``until_ns`` only
        trades before it are yielded and the final cursor is ``until_ns``.

        Stops after a page with no rows, when the cursor stops advancing (Kraken has
        nothing newer; if ``until_ns`` has passed by then, the final cursor is ``until_ns``,
        since no trade before it can still appear), or once a trade reaches ``until_ns``.
        The cursor yielded with each page is safe to persist: resuming from it repeats at
        most boundary duplicates.

        Raises:
            ValueError: ``since`` is not a digit string.
            UnknownSymbol, KrakenRequestError, KrakenError: as :meth:`trades`.
        """
        cursor = since
        previous_ids: set[int] = set()
        previous_rows: Counter[tuple[int, Decimal, Decimal, Side | None, str | None]] = Counter()
        tail_time, tail_count = -1, 0  # id-less trades yielded at the latest time
        while True:
            page = await self.trades(symbol, since=cursor)
            if not page.trades and not page.rejections:
                return
            fresh: list[Trade] = []
            page_ids: set[int] = set()
            page_rows: Counter[tuple[int, Decimal, Decimal, Side | None, str | None]] = Counter()
            repeats = previous_rows.copy()
            reached_end = False
            for trade in page.trades:
                if until_ns is not None and trade.time_ns >= until_ns:
                    reached_end = True
                    break
                # trade_id 0 appears in runs in old history: it identifies nothing
                if trade.trade_id:
                    duplicate = trade.trade_id in previous_ids or trade.trade_id in page_ids
                    page_ids.add(trade.trade_id)
                    if duplicate:
                        self._duplicates += 1
                        continue
                else:
                    row = (trade.time_ns, trade.price, trade.volume, trade.side, trade.ord_type)
                    page_rows[row] += 1
                    if repeats[row] > 0:
                        repeats[row] -= 1
                        self._duplicates += 1
                        continue
                    if trade.time_ns == tail_time:
                        trade = replace(trade, seq=tail_count)
                        tail_count += 1
                    else:
                        trade = replace(trade, seq=0)
                        tail_time, tail_count = trade.time_ns, 1
                fresh.append(trade)
            if reached_end:
                assert until_ns is not None
                yield fresh, str(max(until_ns, int(cursor)))
                return
            if page.last is not None:
                next_cursor = page.last
            elif page.trades:
                next_cursor = str(page.trades[-1].time_ns - _PRINTED_TIME_SLACK_NS)
            else:
                next_cursor = cursor
            advanced = int(next_cursor) > int(cursor)
            resume = next_cursor if advanced else cursor
            if not advanced and until_ns is not None and until_ns <= time.time_ns():
                resume = str(max(until_ns, int(cursor)))
            yield fresh, resume
            if not advanced:
                if len(page.trades) + len(page.rejections) >= _MAX_TRADES_COUNT:
                    # A full page that cannot move the cursor: more trades share one
                    # timestamp than a page holds. Nothing can fetch the rest; say so.
                    _log.warning("kraken_trades_cursor_stalled", symbol=symbol, cursor=cursor)
                return
            cursor = next_cursor
            previous_ids, previous_rows = page_ids, page_rows


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None otherwise."""
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the limiter's own cool-down applies


@asynccontextmanager
async def open_kraken_rest(
    base_url: str,
    registry: SymbolRegistry,
    limiter: RateLimiter,
    *,
    timeout_s: float = 30.0,
    max_attempts: int = 6,
    backoff: Backoff | None = None,
) -> AsyncIterator[KrakenRest]:
    """Open a :class:`KrakenRest` (arguments as its constructor) and close it on exit."""
    rest = KrakenRest(
        base_url,
        registry,
        limiter,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        backoff=backoff,
    )
    try:
        yield rest
    finally:
        await rest.aclose()
