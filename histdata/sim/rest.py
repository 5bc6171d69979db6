"""The simulator's REST API: ``/0/public/{Time,SystemStatus,AssetPairs,OHLC,Trades}``.

Answers as Kraken does (kraken.md §1): every API error is HTTP 200 with an ``error`` list and
often no ``result``; rows are Kraken's positional arrays with prices as strings and trade
times as float seconds with 7 decimals; the ``Trades`` cursor ``last`` is a 19-digit
nanosecond string; ``OHLC`` serves only the 720 most recent intervals plus the live one; a
request without a ``User-Agent`` meets Cloudflare's 403 page. An optional token bucket per
client (and per pair for ``Trades``/``OHLC``) enforces Kraken's public limit of about one
call a second with a burst.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import orjson
import trio

from histdata.httpserver import Request, Response
from histdata.model import NS_PER_S, Trade
from histdata.sim.faults import Faults
from histdata.sim.market import MINUTE_NS, Market, MinuteBar, SymbolMarket
from histdata.symbols import SymbolInfo

__all__ = ["OHLC_INTERVALS", "RestApi", "RestStatistics", "TokenBucket"]

OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
_MAX_COUNT = 1000  # Kraken silently caps ``count`` at 1000
_OHLC_ROWS = 720
_TOO_MANY = b'{"error":["EGeneral:Too many requests"]}'
_EAPI_LIMIT = b'{"error":["EAPI:Rate limit exceeded"]}'
_CLOUDFLARE_429 = (
    b"<html><head><title>429 Too Many Requests</title></head><body>cloudflare</body></html>"
)
_CLOUDFLARE_403 = b"<html><head><title>Attention Required! | Cloudflare</title></head></html>"
# Legacy asset ids of AssetPairs' base/quote fields (kraken.md §4); newer assets are unprefixed.
_ASSET_IDS = {
    "XBT": "XXBT",
    "ETH": "XETH",
    "XDG": "XXDG",
    "XRP": "XXRP",
    "LTC": "XLTC",
    "USD": "ZUSD",
    "EUR": "ZEUR",
}


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; a refused call still costs a token.

    Charging refused calls (down to ``-burst``) is how Kraken's limit behaves: a client
    that keeps calling while throttled stays throttled for longer.
    """

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        """Spend one token; False when none was left (the call is throttled)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        self._tokens = max(-self.burst, self._tokens - 1)
        return self._tokens >= 0


@dataclass(frozen=True, slots=True)
class RestStatistics:
    """Requests answered per endpoint, and how many were throttled."""

    requests: dict[str, int]
    throttled: int
    injected_throttles: int


@dataclass
class _Counters:
    requests: dict[str, int] = field(default_factory=dict)
    throttled: int = 0
    injected: int = 0


class RestApi:
    """The HTTP handler of the simulated REST API (``await api.handle(request)``).

    Args:
        market: the ground truth to serve.
        faults: injected misbehaviour, read on every request.
        rng: the random source for probabilistic faults (seeded by the simulator).
        rate_per_s: Kraken's public limit to enforce, or None to serve without limit.
        burst: the bucket size when ``rate_per_s`` is set.
    """

    def __init__(
        self,
        market: Market,
        faults: Faults,
        rng: random.Random,
        *,
        rate_per_s: float | None = None,
        burst: int = 20,
    ) -> None:
        self._market = market
        self._faults = faults
        self._rng = rng
        self._rate = rate_per_s
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._counters = _Counters()
        self._by_spelling: dict[str, SymbolMarket] = {}
        for book in market.symbols.values():
            info = book.info
            for spelling in (info.symbol, info.altname, info.rest_key, info.wsname):
                self._by_spelling[_squash(spelling)] = book

    def statistics(self) -> RestStatistics:
        """Requests per endpoint and throttle counts since start."""
        c = self._counters
        return RestStatistics(dict(c.requests), c.throttled, c.injected)

    async def handle(self, request: Request) -> Response:
        """Answer one request; see the module docstring for the behaviour."""
        name = request.path.removeprefix("/0/public/")
        if name == request.path or request.method not in ("GET", "POST"):
            return Response(404, (("content-type", "text/plain"),), b"not found\n")
        self._counters.requests[name] = self._counters.requests.get(name, 0) + 1
        if "user-agent" not in request.headers:
            return Response(403, (("content-type", "text/html"),), _CLOUDFLARE_403)
        if self._faults.slow_s > 0:
            await trio.sleep(self._faults.slow_s)
        throttled = self._throttle(name, request)
        if throttled is not None:
            return throttled
        query = {key: values[-1] for key, values in request.query.items()}
        try:
            body = self._dispatch(name, query)
        except _ApiError as error:
            body = orjson.dumps({"error": [error.text]})
        return Response(200, (("content-type", "application/json; charset=utf-8"),), body)

    def _throttle(self, name: str, request: Request) -> Response | None:
        kind = self._faults.take_throttle()
        if kind is not None:
            self._counters.injected += 1
        elif self._rate is not None:
            limited = not self._bucket("ip").take()
            pair = request.query.get("pair", [""])[-1]
            if name in ("Trades", "OHLC") and not self._bucket(f"{name}:{_squash(pair)}").take():
                limited = True
            if not limited:
                return None
            self._counters.throttled += 1
            kind = "body"
        else:
            return None
        if kind == "html429":
            return Response(429, (("content-type", "text/html"),), _CLOUDFLARE_429)
        return Response(200, (("content-type", "application/json"),), _body_of(kind))

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            assert self._rate is not None
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
        return bucket

    def _dispatch(self, name: str, query: dict[str, str]) -> bytes:
        if name == "Time":
            return _time_body()
        if name == "SystemStatus":
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return orjson.dumps({"error": [], "result": {"status": "online", "timestamp": stamp}})
        if name == "AssetPairs":
            return self._asset_pairs(query)
        if name == "Trades":
            return self._trades(query)
        if name == "OHLC":
            return self._ohlc(query)
        raise _ApiError("EGeneral:Unknown method")

    def _book(self, query: dict[str, str]) -> tuple[SymbolMarket, str]:
        """The pair asked for, and the key the reply uses (Kraken's quirk: slash in, slash out)."""
        pair = query.get("pair", "")
        if not pair:
            raise _ApiError("EGeneral:Invalid arguments")
        book = self._by_spelling.get(_squash(pair))
        if book is None:
            raise _ApiError("EQuery:Unknown asset pair")
        return book, pair if "/" in pair else book.info.rest_key

    def _asset_pairs(self, query: dict[str, str]) -> bytes:
        wanted = [p for p in query.get("pair", "").split(",") if p]
        books = list(self._market.symbols.values())
        if wanted:
            books = []
            for pair in wanted:
                book = self._by_spelling.get(_squash(pair))
                if book is None:  # one unknown pair fails the whole call
                    raise _ApiError("EQuery:Unknown asset pair")
                books.append(book)
        result = {book.info.rest_key: _asset_pair(book.info) for book in books}
        return orjson.dumps({"error": [], "result": result})

    def _trades(self, query: dict[str, str]) -> bytes:
        book, key = self._book(query)
        count = _int_arg(query.get("count", str(_MAX_COUNT)), low=1)
        count = min(count, _MAX_COUNT)
        since = query.get("since")
        if since is None:
            start = max(0, len(book.trades) - count)
        else:
            start = book.first_at_or_after(_since_ns(since))
        page = book.trades[start : start + count]
        boundary = self._faults.boundary_duplicates
        following = start + len(page)
        if not boundary and page and following < len(book.trades):
            # Never cut a group of same-time trades: the cursor is a time, and the rest of
            # the group would be skipped by a cursor past it.
            cut_time = book.times[following]
            trimmed = len(page)
            while trimmed and page[trimmed - 1].time_ns == cut_time:
                trimmed -= 1
            page = page[:trimmed] or page
        if page:
            last = page[-1].time_ns + (0 if boundary else 1)
        else:
            last = _since_ns(since) if since is not None else self._market.clock_ns
        rows = ",".join(_trade_row(trade, book.info) for trade in page)
        last_part = "" if self._rng.random() < self._faults.drop_last_ratio else f',"last":"{last}"'
        return f'{{"error":[],"result":{{"{key}":[{rows}]{last_part}}}}}'.encode()

    def _ohlc(self, query: dict[str, str]) -> bytes:
        book, key = self._book(query)
        interval = _int_arg(query.get("interval", "1"), low=1)
        if interval not in OHLC_INTERVALS:
            raise _ApiError("EGeneral:Invalid arguments")
        width = interval * MINUTE_NS
        clock = self._market.clock_ns
        current = clock - clock % width
        bars = book.bars_between(current - _OHLC_ROWS * width, current + width, interval)
        if self._faults.ohlc_placeholders:
            bars = _with_placeholders(bars, width)
        since = query.get("since")
        if since is not None and bars:
            # The 2026 behaviour: ``since`` (seconds) is inclusive and only trims the window;
            # the live row is always there.
            since_ns = _int_arg(since, low=0) * NS_PER_S
            bars = [bar for bar in bars[:-1] if bar.start_ns >= since_ns] + bars[-1:]
        decimals = book.info.price_decimals
        rows = ",".join(_ohlc_row(bar, decimals) for bar in bars)
        last = bars[-1].start_ns // NS_PER_S if bars else current // NS_PER_S
        return f'{{"error":[],"result":{{"{key}":[{rows}],"last":{last}}}}}'.encode()


class _ApiError(Exception):
    """A Kraken API error; answered as HTTP 200 ``{"error": [text]}`` without a result."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _body_of(kind: str) -> bytes:
    return _EAPI_LIMIT if kind == "eapi" else _TOO_MANY


def _squash(spelling: str) -> str:
    return "".join(ch for ch in spelling.strip().upper() if ch not in "/-_ ")


def _int_arg(text: str, *, low: int) -> int:
    if not text.isdigit() or int(text) < low:
        raise _ApiError("EGeneral:Invalid arguments")
    return int(text)


def _since_ns(text: str) -> int:
    """Kraken's ``since`` for Trades: whole seconds, fractional seconds or nanoseconds."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _ApiError("EGeneral:Invalid arguments") from None
    if not value.is_finite() or value < 0:
        raise _ApiError("EGeneral:Invalid arguments")
    if value == value.to_integral_value() and value >= 10**11:
        return int(value)  # already nanoseconds (19 digits in practice)
    return int(value * NS_PER_S)


def _time_body() -> bytes:
    now = datetime.now(UTC)
    rfc1123 = now.strftime("%a, %d %b %y %H:%M:%S +0000")
    return orjson.dumps(
        {"error": [], "result": {"unixtime": int(now.timestamp()), "rfc1123": rfc1123}}
    )


def _asset_pair(info: SymbolInfo) -> dict[str, object]:
    base, quote = info.wsname.split("/")
    tick = Decimal(1).scaleb(-info.price_decimals)
    return {
        "altname": info.altname,
        "wsname": info.wsname,
        "aclass_base": "currency",
        "base": _ASSET_IDS.get(base, base),
        "aclass_quote": "currency",
        "quote": _ASSET_IDS.get(quote, quote),
        "lot": "unit",
        "cost_decimals": info.price_decimals + 4,
        "pair_decimals": info.price_decimals,
        "lot_decimals": info.volume_decimals,
        "lot_multiplier": 1,
        "ordermin": "0.0001",
        "costmin": "0.5",
        "tick_size": f"{tick:f}",
        "status": "online",
    }


def _trade_row(trade: Trade, info: SymbolInfo) -> str:
    ns = trade.time_ns
    seconds = f"{ns // NS_PER_S}.{ns % NS_PER_S // 100:07d}"
    side = "b" if trade.side == "buy" else "s"
    ord_type = "m" if trade.ord_type == "market" else "l"
    price = f"{trade.price:.{max(info.price_decimals, 5)}f}"
    volume = f"{trade.volume:.{info.volume_decimals}f}"
    return f'["{price}","{volume}",{seconds},"{side}","{ord_type}","",{trade.trade_id}]'


def _ohlc_row(bar: MinuteBar, decimals: int) -> str:
    vwap = bar.vwap(decimals) if bar.trades else Decimal(0)  # placeholders carry vwap 0
    prices = ",".join(
        f'"{value:.{decimals}f}"' for value in (bar.open, bar.high, bar.low, bar.close, vwap)
    )
    return f'[{bar.start_ns // NS_PER_S},{prices},"{bar.volume:.8f}",{bar.trades}]'


def _with_placeholders(bars: list[MinuteBar], width: int) -> list[MinuteBar]:
    """Fill empty intervals with zero-volume rows at the previous close (one Kraken habit)."""
    out: list[MinuteBar] = []
    for bar in bars:
        while out and out[-1].start_ns + width < bar.start_ns:
            close = out[-1].close
            start = out[-1].start_ns + width
            out.append(MinuteBar(start, close, close, close, close, Decimal(0), Decimal(0), 0))
        out.append(bar)
    return out
