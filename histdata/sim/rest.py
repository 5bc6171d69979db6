"""The simulator's REST API: ``/0/public/{Time,SystemStatus,Assets,AssetPairs,Ticker,Depth,
OHLC,Trades}``.

Answers as Kraken does, checked against the real bodies in ``tests/fixtures/kraken/`` (see
docs/kraken.md): every API error is HTTP 200 with an ``error`` list and often no ``result``;
rows are Kraken's positional arrays with prices as strings; trade times are JSON numbers
printed as the shortest decimal of their binary double (3 to 7 decimals); OHLC times are
integers. A request without a ``User-Agent`` meets Cloudflare's 403 page. An optional token
bucket per client (and per pair for ``Trades``/``OHLC``) enforces Kraken's public limit of
about one call a second with a burst.

``Trades``: at most ``count`` (≤ 1000) trades from ``since``, which is inclusive (a trade at
exactly ``since`` is returned; ``faults.boundary_duplicates`` off makes it exclusive);
``last`` is the exact nanosecond time of the page's final trade as a 19-digit string. Pages
are cut after ``count`` trades even inside a group of trades sharing one timestamp, so with
the inclusive default the next page repeats the boundary trades. ``OHLC``: the 720 most
recent intervals plus the forming one, empty intervals as zero-volume placeholder rows
(``faults.ohlc_placeholders``); ``last`` is the open time of the last committed interval;
``since`` trims the window, inclusive unless ``faults.ohlc_since_exclusive``.

Pair spellings: the REST key (``XXBTZUSD``), the altname (``XBTUSD``), the v2 name
(``BTC/USD``, or squashed ``BTCUSD``) and the v1 wsname (``XBT/USD``), case-insensitive,
are all accepted; the reply is keyed by the REST key, except that a slash spelling is echoed
back as the key.
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
from histdata.sim.pairs import asset_pair_entry, assets_of
from histdata.symbols import SymbolInfo

__all__ = ["OHLC_INTERVALS", "RestApi", "RestStatistics", "TokenBucket"]

OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
_MAX_COUNT = 1000  # Kraken silently caps ``count`` at 1000
_OHLC_ROWS = 720
_DEPTH_DEFAULT, _DEPTH_MAX = 100, 500
_TOO_MANY = b'{"error":["EGeneral:Too many requests"]}'
_EAPI_LIMIT = b'{"error":["EAPI:Rate limit exceeded"]}'
_CLOUDFLARE_429 = (
    b"<html><head><title>429 Too Many Requests</title></head><body>cloudflare</body></html>"
)
_CLOUDFLARE_403 = b"<html><head><title>Attention Required! | Cloudflare</title></head></html>"


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
        if name == "Assets":
            infos = [book.info for book in self._market.symbols.values()]
            return orjson.dumps({"error": [], "result": assets_of(infos)})
        if name == "AssetPairs":
            books = self._books(query)
            result = {book.info.rest_key: asset_pair_entry(book.info) for book in books}
            return orjson.dumps({"error": [], "result": result})
        if name == "Ticker":
            now = self._market.clock_ns
            rows = ",".join(f'"{key}":{_ticker(book, now)}' for book, key in self._keyed(query))
            return f'{{"error":[],"result":{{{rows}}}}}'.encode()
        if name == "Depth":
            book, key = self._book(query)
            count = min(_int_arg(query.get("count", str(_DEPTH_DEFAULT)), low=1), _DEPTH_MAX)
            return f'{{"error":[],"result":{{"{key}":{_depth(book, count)}}}}}'.encode()
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
        return self._lookup(pair)

    def _lookup(self, pair: str) -> tuple[SymbolMarket, str]:
        book = self._by_spelling.get(_squash(pair))
        if book is None:
            raise _ApiError("EQuery:Unknown asset pair")
        return book, pair if "/" in pair else book.info.rest_key

    def _keyed(self, query: dict[str, str]) -> list[tuple[SymbolMarket, str]]:
        """The pairs of a comma list (every pair when absent); one unknown fails the call."""
        wanted = [p for p in query.get("pair", "").split(",") if p]
        if not wanted:
            return [(book, book.info.rest_key) for book in self._market.symbols.values()]
        return [self._lookup(pair) for pair in wanted]

    def _books(self, query: dict[str, str]) -> list[SymbolMarket]:
        return [book for book, _ in self._keyed(query)]

    def _trades(self, query: dict[str, str]) -> bytes:
        book, key = self._book(query)
        count = _int_arg(query.get("count", str(_MAX_COUNT)), low=1)
        count = min(count, _MAX_COUNT)
        since = query.get("since")
        if since is None:
            start = max(0, len(book.trades) - count)
        elif self._faults.boundary_duplicates:
            start = book.first_at_or_after(_since_ns(since))
        else:
            start = book.first_at_or_after(_since_ns(since) + 1)
        page = book.trades[start : start + count]
        if page:
            last = page[-1].time_ns
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
            bars = _with_placeholders(bars, width, current)
        since = query.get("since")
        if since is not None and bars:
            # ``since`` (seconds) only trims the window; the forming row is always there.
            since_ns = _int_arg(since, low=0) * NS_PER_S
            if self._faults.ohlc_since_exclusive:
                since_ns += 1
            bars = [bar for bar in bars[:-1] if bar.start_ns >= since_ns] + bars[-1:]
        decimals = book.info.price_decimals
        rows = ",".join(_ohlc_row(bar, decimals) for bar in bars)
        # "ID to be used as since when polling for new, committed OHLC data": the open time
        # of the interval before the forming one (the nautilus_trader capture).
        last = (current - width) // NS_PER_S
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


def _trade_row(trade: Trade, info: SymbolInfo) -> str:
    # Kraken prints the time as its binary double in shortest form (1762795616.311265,
    # 1762795433.9717445): repr of the correctly rounded int/int quotient is exactly that.
    seconds = repr(trade.time_ns / NS_PER_S)
    side = "b" if trade.side == "buy" else "s"
    ord_type = "m" if trade.ord_type == "market" else "l"
    price = _price_text(trade.price, info)
    volume = f"{trade.volume:.{info.volume_decimals}f}"
    return f'["{price}","{volume}",{seconds},"{side}","{ord_type}","",{trade.trade_id}]'


def _price_text(price: Decimal, info: SymbolInfo) -> str:
    """A price as Trades, Ticker and Depth print it: at least 5 decimals ("105433.60000")."""
    return f"{price:.{max(info.price_decimals, 5)}f}"


def _ohlc_row(bar: MinuteBar, decimals: int) -> str:
    vwap = bar.vwap(decimals) if bar.trades else Decimal(0)  # placeholders carry vwap 0
    prices = ",".join(
        f'"{value:.{decimals}f}"' for value in (bar.open, bar.high, bar.low, bar.close, vwap)
    )
    return f'[{bar.start_ns // NS_PER_S},{prices},"{bar.volume:.8f}",{bar.trades}]'


def _with_placeholders(bars: list[MinuteBar], width: int, current: int) -> list[MinuteBar]:
    """Fill empty intervals up to the forming one (``current``) with zero-volume rows at the
    previous close, as Kraken does (216 of the 721 rows of the nautilus_trader capture)."""
    out: list[MinuteBar] = []
    for bar in bars:
        _fill(out, bar.start_ns, width)
        out.append(bar)
    _fill(out, current + width, width)
    return out


def _fill(out: list[MinuteBar], end_ns: int, width: int) -> None:
    """Append a placeholder for every empty interval after ``out[-1]`` that opens before
    ``end_ns``."""
    while out and out[-1].start_ns + width < end_ns:
        close = out[-1].close
        start = out[-1].start_ns + width
        out.append(MinuteBar(start, close, close, close, close, Decimal(0), Decimal(0), 0))


def _ticker(book: SymbolMarket, now_ns: int) -> str:
    """``book``'s Ticker entry: ask, bid, last trade, and today / 24-hour aggregates.

    Kraken's fields are ``a``/``b`` ``[price, whole lot volume, lot volume]``, ``c``
    ``[price, volume]``, and ``[today, last 24 hours]`` pairs of volume ``v``, VWAP ``p``,
    trade count ``t`` (integers), low ``l`` and high ``h``, with ``o`` today's opening price.
    """
    info = book.info
    trades = book.trades
    if not trades:
        raise _ApiError("EService:Unavailable")  # a market with no trade has no ticker yet
    last = trades[-1]
    tick = Decimal(1).scaleb(-info.price_decimals)
    today = book.first_at_or_after(now_ns - now_ns % (86_400 * NS_PER_S))
    day = book.first_at_or_after(now_ns - 86_400 * NS_PER_S)
    windows = [trades[today:] or trades[-1:], trades[day:] or trades[-1:]]

    def both(values: list[str]) -> str:
        return f'["{values[0]}","{values[1]}"]'

    volumes = [sum((t.volume for t in w), Decimal(0)) for w in windows]
    vwaps = [
        (sum((t.price * t.volume for t in w), Decimal(0)) / v).quantize(Decimal("0.00001"))
        for w, v in zip(windows, volumes, strict=True)
    ]
    return (
        f'{{"a":["{_price_text(last.price + tick, info)}","1","1.000"],'
        f'"b":["{_price_text(last.price, info)}","1","1.000"],'
        f'"c":["{_price_text(last.price, info)}","{last.volume:.8f}"],'
        f'"v":{both([f"{v:.8f}" for v in volumes])},'
        f'"p":{both([f"{p:f}" for p in vwaps])},'
        f'"t":[{len(windows[0])},{len(windows[1])}],'
        f'"l":{both([_price_text(min(t.price for t in w), info) for w in windows])},'
        f'"h":{both([_price_text(max(t.price for t in w), info) for w in windows])},'
        f'"o":"{_price_text(windows[0][0].price, info)}"}}'
    )


def _depth(book: SymbolMarket, count: int) -> str:
    """``count`` ask and bid levels around the last price, one tick apart.

    Levels are ``[price, volume, unix seconds of the level's last change]``; volumes have
    three decimals, as in Kraken's answers ("0.801", "1.000").
    """
    info = book.info
    tick = Decimal(1).scaleb(-info.price_decimals)
    mid = book.trades[-1].price if book.trades else tick * 1000
    stamp = (book.trades[-1].time_ns if book.trades else 0) // NS_PER_S
    levels: dict[str, list[str]] = {}
    for side, sign in (("asks", 1), ("bids", -1)):
        rows = []
        for level in range(count):
            price = mid + sign * tick * (level + (1 if sign > 0 else 0))
            if price <= 0:
                break
            volume = Decimal(((level * 7919 + len(info.symbol)) % 997) + 1).scaleb(-3)
            rows.append(f'["{_price_text(price, info)}","{volume:.3f}",{stamp - level % 60}]')
        levels[side] = rows
    return f'{{"asks":[{",".join(levels["asks"])}],"bids":[{",".join(levels["bids"])}]}}'
