"""What one live session may claim as observed: the coverage rule of the live feed.

Coverage is a promise that every trade Kraken emitted in a range is stored (or journaled). The
feed's coverage marks travel through the same channel as the trades, behind them, and are
written in the same transaction as (or after) the trades before them, so a mark may claim only
time whose trades were *received before the mark was sent*. The receive clock cannot say that:
while the feed lags (a backlog in the socket, a stalled database, a slow consumer), trades whose
exchange time lies before "now" are still in flight, and a kill, a close or a slow-consumer
drop loses them. So :class:`Claims` decides, per symbol and stream:

- **Up to the newest received item, exclusive.** A trades stream is claimed up to the exchange
  time of the newest trade received for that symbol, and not including it (more trades with the
  same microsecond may still be in the next frame). A candles stream is claimed up to the start
  of the newest candle received: every earlier minute's last version has arrived.
- **Quiet time only while provably current.** Beyond its newest item, a stream is claimed up to
  ``now - lag - quiet_margin_s`` only while the session is current: a message (a heartbeat
  counts) arrived within ``current_within_s``; the newest trade frame, if one arrived within
  that time, lagged its exchange time by less than ``max_lag_s``; and the channel behind the
  feed is not backed up. Kraken sends heartbeats only when it has nothing else to send, and
  every frame in order, so a current session has delivered everything older than the newest
  frame's exchange time less a margin for publication skew between pairs.
- **Never backwards, never across sessions.** Claims start at the moment the session's
  subscriptions were acknowledged and only grow; the time between two sessions is never
  claimed, so ``gaps`` shows it until a repair fills it.

What is dropped on the live path (a ``drop_oldest`` overflow, a journal that cannot write) is
handled downstream: the buffer withholds every mark that follows a loss (see
:mod:`histdata.actors.buffer`), so a dropped trade's time is a hole, never covered.

docs/reliability.md states the same rule for operators and users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from histdata.model import (
    Candle,
    CoverageSpan,
    LiveTrade,
    Stream,
    Trade,
    datetime_to_ns,
    ns_to_datetime,
)

__all__ = ["ClaimRule", "Claims"]

_NS = 1_000_000_000
_US = 1000


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """The bounds of "provably current" (seconds)."""

    max_lag_s: float = 2.0
    quiet_margin_s: float = 1.0
    current_within_s: float = 3.0


class Claims:
    """The coverage one live session may claim, per ``(symbol, stream)`` (see module docs).

    Times are Unix nanoseconds. ``started_ns`` is when the subscriptions were acknowledged.
    """

    def __init__(
        self, streams: Sequence[tuple[str, Stream]], started_ns: int, rule: ClaimRule
    ) -> None:
        self._rule = rule
        self._claimed: dict[tuple[str, Stream], int] = dict.fromkeys(streams, started_ns)
        self._newest: dict[tuple[str, Stream], int] = {}
        self._last_message_ns = started_ns
        self._last_frame_ns: int | None = None  # when the newest trade frame arrived
        self._last_frame_lag_ns = 0

    @property
    def lag_s(self) -> float:
        """How far the newest trade frame lagged its exchange time when it arrived."""
        return self._last_frame_lag_ns / _NS

    def on_message(self, received_ns: int) -> None:
        """Any frame arrived (heartbeats included)."""
        self._last_message_ns = max(self._last_message_ns, received_ns)

    def on_trades(
        self, trades: Iterable[Trade | LiveTrade], received_ns: int, *, snapshot: bool
    ) -> None:
        """Trades were received (and are queued ahead of any later mark)."""
        newest_in_frame: int | None = None
        for trade in trades:
            key: tuple[str, Stream] = (trade.symbol, "trades")
            if trade.time_ns > self._newest.get(key, 0):
                self._newest[key] = trade.time_ns
            if newest_in_frame is None or trade.time_ns > newest_in_frame:
                newest_in_frame = trade.time_ns
        self.on_message(received_ns)
        if newest_in_frame is not None and not snapshot:
            # A snapshot replays old trades on purpose: its age says nothing about lag.
            self._last_frame_ns = received_ns
            self._last_frame_lag_ns = max(0, received_ns - newest_in_frame)

    def on_candles(self, candles: Iterable[Candle], received_ns: int) -> None:
        """Candle updates were received."""
        for candle in candles:
            key: tuple[str, Stream] = (candle.symbol, "candles")
            start_ns = datetime_to_ns(candle.time)
            if start_ns > self._newest.get(key, 0):
                self._newest[key] = start_ns
        self.on_message(received_ns)

    def current(self, now_ns: int, *, backlog: bool) -> bool:
        """Whether the session is provably current at ``now_ns`` (see module docs)."""
        rule = self._rule
        within = int(rule.current_within_s * _NS)
        if backlog or now_ns - self._last_message_ns > within:
            return False
        recent_frame = self._last_frame_ns is not None and now_ns - self._last_frame_ns <= within
        return not recent_frame or self._last_frame_lag_ns < rule.max_lag_s * _NS

    def advance(self, now_ns: int, *, backlog: bool) -> tuple[tuple[str, CoverageSpan], ...]:
        """The new claims since the previous call, as coverage spans (empty ones left out)."""
        quiet_end: int | None = None
        if self.current(now_ns, backlog=backlog):
            quiet_end = now_ns - self._last_frame_lag_ns - int(self._rule.quiet_margin_s * _NS)
        spans: list[tuple[str, CoverageSpan]] = []
        for key, claimed in self._claimed.items():
            end = self._newest.get(key, 0)
            if quiet_end is not None:
                end = max(end, quiet_end)
            end -= end % _US  # coverage is stored in microseconds: never round a claim up
            if end <= claimed:
                continue
            self._claimed[key] = end
            symbol, stream = key
            spans.append(
                (symbol, CoverageSpan(stream, "live", ns_to_datetime(claimed), ns_to_datetime(end)))
            )
        return tuple(spans)
