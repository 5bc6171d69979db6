"""Unit tests of the live coverage rule (:mod:`histdata.actors.claims`): pure logic, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from histdata.actors.claims import ClaimRule, Claims
from histdata.model import Candle, CandleSource, Trade, datetime_to_ns

S = 1_000_000_000
T0 = datetime_to_ns(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
RULE = ClaimRule(max_lag_s=2.0, quiet_margin_s=1.0, current_within_s=3.0)


def trade(symbol: str, at_ns: int, trade_id: int = 1) -> Trade:
    return Trade(symbol, at_ns, Decimal("100"), Decimal("1"), trade_id=trade_id)


def candle(symbol: str, minute: datetime) -> Candle:
    one = Decimal(1)
    return Candle(symbol, minute, one, one, one, one, one, one, 1, source=CandleSource.LIVE)


def ends(claims: Claims, now_ns: int, *, backlog: bool = False) -> dict[tuple[str, str], int]:
    return {
        (symbol, span.stream): datetime_to_ns(span.end)
        for symbol, span in claims.advance(now_ns, backlog=backlog)
    }


def two_symbols() -> Claims:
    return Claims([("BTC/USD", "trades"), ("ETH/USD", "trades")], T0, RULE)


class TestTradeClaims:
    def test_claim_ends_at_the_newest_trade_exclusive(self) -> None:
        """A lagging session claims each symbol only up to its newest received trade."""
        claims = two_symbols()
        # Received 5 s after the trade: lagging, so no quiet time is claimed.
        claims.on_trades([trade("BTC/USD", T0 + 2 * S + 1500)], T0 + 7 * S, snapshot=False)
        got = ends(claims, T0 + 7 * S)
        assert got == {("BTC/USD", "trades"): T0 + 2 * S + 1000}
        assert claims.lag_s > 4.9

    def test_quiet_time_is_claimed_while_current(self) -> None:
        """A current session claims quiet symbols up to now less the margin and the lag."""
        claims = two_symbols()
        claims.on_trades([trade("BTC/USD", T0 + 4 * S)], T0 + 4 * S + S // 10, snapshot=False)
        got = ends(claims, T0 + 5 * S)
        quiet = T0 + 5 * S - S // 10 - S
        assert got == {("BTC/USD", "trades"): T0 + 4 * S, ("ETH/USD", "trades"): quiet}

    def test_backlog_stops_quiet_claims(self) -> None:
        """With the channel behind the feed backed up, only received trades are claimed."""
        claims = two_symbols()
        claims.on_trades([trade("BTC/USD", T0 + 4 * S)], T0 + 4 * S, snapshot=False)
        assert ends(claims, T0 + 5 * S, backlog=True) == {("BTC/USD", "trades"): T0 + 4 * S}

    def test_silence_stops_quiet_claims(self) -> None:
        """No message for longer than current_within_s: nothing more is claimed."""
        claims = two_symbols()
        claims.on_message(T0 + S)
        assert ends(claims, T0 + 10 * S) == {}

    def test_heartbeats_alone_keep_a_quiet_session_current(self) -> None:
        """Heartbeats with no trades at all claim quiet time."""
        claims = two_symbols()
        claims.on_message(T0 + 9 * S)
        assert set(ends(claims, T0 + 10 * S).values()) == {T0 + 9 * S}

    def test_claims_never_go_backwards(self) -> None:
        """A later, lagging state claims nothing before what was already claimed."""
        claims = two_symbols()
        claims.on_message(T0 + 9 * S)
        ends(claims, T0 + 10 * S)
        claims.on_trades([trade("BTC/USD", T0 + 2 * S)], T0 + 11 * S, snapshot=False)
        assert ends(claims, T0 + 11 * S) == {}

    def test_snapshot_age_is_not_lag(self) -> None:
        """The subscription snapshot's old trades neither lag the session nor extend claims."""
        claims = two_symbols()
        claims.on_trades([trade("BTC/USD", T0 - 60 * S)], T0 + S, snapshot=True)
        assert claims.lag_s == 0
        assert set(ends(claims, T0 + 2 * S).values()) == {T0 + S}

    def test_nothing_before_the_session_started(self) -> None:
        """Trades older than the subscription claim nothing (claims start at the ack)."""
        claims = two_symbols()
        claims.on_trades([trade("BTC/USD", T0 - S)], T0 + 10 * S, snapshot=False)
        assert ends(claims, T0 + 10 * S) == {}


class TestCandleClaims:
    def test_candles_are_claimed_up_to_the_forming_minute(self) -> None:
        """Minutes before the newest candle update are claimed; the forming minute is not."""
        claims = Claims([("BTC/USD", "candles")], T0, RULE)
        minute = datetime(2026, 1, 1, 12, 3, tzinfo=UTC)
        claims.on_candles([candle("BTC/USD", minute)], T0 + 600 * S)  # far behind: not current
        claims.on_trades([trade("BTC/USD", T0 + 190 * S)], T0 + 600 * S, snapshot=False)
        assert ends(claims, T0 + 600 * S) == {("BTC/USD", "candles"): datetime_to_ns(minute)}
