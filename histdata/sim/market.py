"""The simulated market: a seeded, deterministic stream of trades and the candles they make.

One :class:`Market` holds every symbol's trades since the simulator started (history first,
then live trades as the clock advances) and the 1-minute candles accumulated from them. Both
the REST and the WebSocket views are cut from these same rows, so a client can be checked
against the ground truth: the same trade ids, prices and times everywhere, candles that are
exactly the aggregate of their trades.

Generation, and why it looks the way it does:

- Trade ids run 1, 2, 3… per symbol, as Kraken's per-pair sequence does.
- Times are whole microseconds by default. Kraken keeps nanoseconds, but WebSocket v2 prints
  µs and REST prints the binary double of the time in seconds (shortest form, 3 to 7
  decimals, about 0.24 µs apart today); at µs both views of a trade carry the same instant
  exactly. ``time_unit_ns=1`` makes times nanosecond-exact as Kraken's own, so the views
  differ as they do on Kraken and only ``last`` carries the exact time (docs/kraken.md).
  Inter-arrival times are exponential at the configured rate; with probability
  ``same_time_ratio`` a trade shares the previous trade's timestamp, as the fills of one
  taker order do on Kraken. Tools that key trades on time lose those; histdata must not.
- Prices walk in whole ticks of the pair's precision; volumes are log-normal in the pair's
  lot precision. Everything is :class:`~decimal.Decimal`.

The same seed gives the same sequence of ids, prices, volumes, sides and spacings; absolute
times follow the wall clock at which the simulator was opened.
"""

from __future__ import annotations

import bisect
import math
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from histdata.model import NS_PER_S, Candle, CandleSource, Side, Trade, ns_to_datetime
from histdata.sim.pairs import base_price
from histdata.symbols import SymbolInfo

__all__ = ["MINUTE_NS", "Market", "MinuteBar", "SymbolMarket"]

MINUTE_NS = 60 * NS_PER_S
_US = 1000
# A price walk's steps, in ticks of the pair's ``_step``.
_STEPS = (-2, -1, -1, 0, 1, 1, 2)
# Prices a SymbolMarket keeps made (a walk revisits the same few hundred).
_PRICE_CACHE = 4096


@dataclass(slots=True)
class MinuteBar:
    """The running aggregate of one minute's trades (a candle under construction)."""

    start_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    notional: Decimal  # sum of price × volume, exact
    trades: int

    @classmethod
    def first(cls, start_ns: int, trade: Trade) -> MinuteBar:
        """A bar opened by ``trade``."""
        price = trade.price
        return cls(start_ns, price, price, price, price, trade.volume, price * trade.volume, 1)

    def add(self, trade: Trade) -> None:
        """Fold one later trade of the same minute into the bar."""
        price, volume = trade.price, trade.volume
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.close = price
        self.volume += volume
        self.notional += price * volume
        self.trades += 1

    def merge(self, later: MinuteBar) -> None:
        """Fold the bar of a later minute into this one (for coarser intervals)."""
        self.high = max(self.high, later.high)
        self.low = min(self.low, later.low)
        self.close = later.close
        self.volume += later.volume
        self.notional += later.notional
        self.trades += later.trades

    def copy(self, start_ns: int | None = None) -> MinuteBar:
        """An independent copy, optionally re-based to a coarser bucket start."""
        return MinuteBar(
            self.start_ns if start_ns is None else start_ns,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.notional,
            self.trades,
        )

    def vwap(self, decimals: int) -> Decimal:
        """The volume-weighted average price rounded to ``decimals``, as Kraken publishes it."""
        with localcontext() as ctx:
            ctx.prec = 60
            exact = self.notional / self.volume
        return exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)


class SymbolMarket:
    """One symbol's trades and minute bars, and the generator that extends them."""

    def __init__(
        self,
        info: SymbolInfo,
        *,
        seed: int,
        rate_per_s: float,
        same_time_ratio: float,
        time_unit_ns: int = _US,
    ) -> None:
        self.info = info
        self.trades: list[Trade] = []
        self.times: list[int] = []  # trade times, parallel to ``trades``, for bisecting
        self.bars: dict[int, MinuteBar] = {}  # minute start ns → bar, in time order
        self._bar_starts: list[int] = []  # the keys of ``bars``, for bisecting without a copy
        # crc32 rather than hash(): str hashes are salted per process, seeds must not be.
        self._rng = random.Random(seed * 1_000_003 + zlib.crc32(info.symbol.encode()))
        self._rate = rate_per_s
        self._same_time_ratio = same_time_ratio
        self._unit = time_unit_ns
        self._tick = Decimal(1).scaleb(-info.price_decimals)
        self._lot = Decimal(1).scaleb(-info.volume_decimals)
        self._ticks = max(1, int(base_price(info) * 10**info.price_decimals))
        # 1 tick = 0.01% of the price or more: steps of a realistic size at any precision.
        self._step = max(1, self._ticks // 10_000)
        self._median_units = max(1, int(Decimal("0.01") / self._lot))
        self._next_ns: int | None = None
        self._prices: dict[int, Decimal] = {}  # tick count → price

    def start_at(self, time_ns: int) -> None:
        """Let the next trade happen shortly after ``time_ns`` (at start, and after a pause)."""
        self._next_ns = time_ns - time_ns % self._unit + self._gap_ns()

    def advance(self, now_ns: int) -> list[Trade]:
        """Generate and record every trade with a time up to ``now_ns``; return them."""
        if self._next_ns is None:
            self.start_at(now_ns)
        assert self._next_ns is not None
        new: list[Trade] = []
        # Locals and a price per tick count made once: at 40,000 trades/s this loop is
        # most of the simulator's core, which it shares with the service it measures.
        rng = self._rng
        trades, prices, symbol = self.trades, self._prices, self.info.symbol
        ticks, step, next_ns = self._ticks, self._step, self._next_ns
        while next_ns <= now_ns:
            previous = trades[-1] if trades else None
            same_taker = (
                previous is not None
                and previous.time_ns == next_ns
                and rng.random() < 0.9  # a sweep of one taker order: same side and type
            )
            # random() and gauss() rather than choice() and lognormvariate(): the same
            # distributions at a third of the cost (gauss makes its normals in pairs).
            ticks = max(1, ticks + _STEPS[int(rng.random() * len(_STEPS))] * step)
            units = max(1, int(self._median_units * math.exp(rng.gauss(0.0, 1.5))))
            if same_taker:
                assert previous is not None
                side, ord_type = previous.side, previous.ord_type
            else:
                side = Side.BUY if rng.random() < 0.5 else Side.SELL
                ord_type = "market" if rng.random() < 0.7 else "limit"
            price = prices.get(ticks)
            if price is None:
                if len(prices) >= _PRICE_CACHE:
                    prices.clear()
                price = prices[ticks] = self._tick * ticks
            volume = self._lot * units
            trade = Trade(symbol, next_ns, price, volume, side, ord_type, len(trades) + 1)
            self._record(trade)
            new.append(trade)
            if rng.random() < self._same_time_ratio:
                continue  # the next fill shares this timestamp
            next_ns += self._gap_ns()
        self._ticks, self._next_ns = ticks, next_ns
        return new

    def _gap_ns(self) -> int:
        gap = int(self._rng.expovariate(self._rate) * NS_PER_S)
        return max(self._unit, gap - gap % self._unit)

    def _record(self, trade: Trade) -> None:
        self.trades.append(trade)
        self.times.append(trade.time_ns)
        start = trade.time_ns - trade.time_ns % MINUTE_NS
        bar = self.bars.get(start)
        if bar is None:
            self.bars[start] = MinuteBar.first(start, trade)
            self._bar_starts.append(start)
        else:
            bar.add(trade)

    def first_at_or_after(self, time_ns: int) -> int:
        """The index of the first trade with a time at or after ``time_ns``."""
        return bisect.bisect_left(self.times, time_ns)

    def bars_between(self, start_ns: int, end_ns: int, interval_min: int = 1) -> list[MinuteBar]:
        """Bars of ``interval_min`` minutes (epoch-aligned) with trades in ``[start, end)``."""
        width = interval_min * MINUTE_NS
        out: list[MinuteBar] = []
        for minute_start, bar in self._bars_from(start_ns):
            if minute_start >= end_ns:
                break
            bucket = minute_start - minute_start % width
            if out and out[-1].start_ns == bucket:
                out[-1].merge(bar)
            else:
                out.append(bar.copy(bucket))
        return out

    def _bars_from(self, start_ns: int) -> Iterable[tuple[int, MinuteBar]]:
        # Called for every published ohlc update: bisect the kept key list, copy nothing.
        starts = self._bar_starts
        index = bisect.bisect_left(starts, start_ns)
        return ((starts[i], self.bars[starts[i]]) for i in range(index, len(starts)))

    def candle(self, bar: MinuteBar, *, interval_min: int, final: bool) -> Candle:
        """``bar`` as a :class:`Candle` with Kraken's rounded VWAP."""
        return Candle(
            symbol=self.info.symbol,
            time=ns_to_datetime(bar.start_ns),
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
            vwap=bar.vwap(self.info.price_decimals),
            trades=bar.trades,
            interval_min=interval_min,
            source=CandleSource.REST,
            final=final,
        )


class Market:
    """Every simulated symbol, advanced together by one clock.

    Args:
        infos: the markets to simulate.
        seed: the seed of every symbol's generator.
        rate_per_s: mean trades per second per symbol, or a map from symbol to its rate.
        start_ns: the wall-clock time the simulator starts at (Unix ns).
        history_s: seconds of trades generated before ``start_ns``, so REST has a past.
        same_time_ratio: the chance that a trade shares the previous trade's timestamp.
        time_unit_ns: the granularity of trade times: 1000 (µs, the default) or 1.
    """

    def __init__(
        self,
        infos: Sequence[SymbolInfo],
        *,
        seed: int,
        rate_per_s: float | Mapping[str, float],
        start_ns: int,
        history_s: float,
        same_time_ratio: float = 0.05,
        time_unit_ns: int = _US,
    ) -> None:
        self.symbols: dict[str, SymbolMarket] = {
            info.symbol: SymbolMarket(
                info,
                seed=seed,
                rate_per_s=(
                    rate_per_s[info.symbol] if isinstance(rate_per_s, Mapping) else rate_per_s
                ),
                same_time_ratio=same_time_ratio,
                time_unit_ns=time_unit_ns,
            )
            for info in infos
        }
        self.clock_ns = start_ns
        first = start_ns - int(history_s * NS_PER_S)
        for book in self.symbols.values():
            book.start_at(first)
            book.advance(start_ns)

    def advance(self, now_ns: int) -> dict[str, list[Trade]]:
        """Move the clock to ``now_ns``; return each symbol's new trades (maybe empty)."""
        self.clock_ns = max(self.clock_ns, now_ns)
        return {symbol: book.advance(self.clock_ns) for symbol, book in self.symbols.items()}

    def restart_at(self, now_ns: int) -> None:
        """Resume generation after a pause: no burst of trades for the paused time."""
        self.clock_ns = max(self.clock_ns, now_ns)
        for book in self.symbols.values():
            book.start_at(self.clock_ns)

    def trades(self, symbol: str) -> list[Trade]:
        """Every trade of ``symbol`` so far, oldest first (a copy; the ground truth).

        Raises:
            KeyError: ``symbol`` (a v2 name such as ``BTC/USD``) is not simulated.
        """
        return list(self.symbols[symbol].trades)

    def candles(self, symbol: str) -> list[Candle]:
        """The 1-minute candles of ``symbol`` so far, oldest first; only minutes with trades.

        A minute whose end is still ahead of the market clock is returned with
        ``final=False``. VWAP is rounded to the pair's price decimals, as Kraken sends it.

        Raises:
            KeyError: ``symbol`` is not simulated.
        """
        book = self.symbols[symbol]
        return [
            book.candle(bar, interval_min=1, final=start + MINUTE_NS <= self.clock_ns)
            for start, bar in book.bars.items()
        ]
