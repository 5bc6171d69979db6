"""Tests for histdata.kraken.parse: exact decoding, row validation, error envelopes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kraken_fixtures import (  # type: ignore[import-not-found]
    REGISTRY as FIXTURE_REGISTRY,
)
from kraken_fixtures import fixture_names, read_fixture

from histdata.errors import FatalError, KrakenError, RateLimited, RejectedInput, TransientError
from histdata.kraken.parse import (
    KrakenRateLimited,
    KrakenRequestError,
    check_envelope,
    loads_exact,
    parse_asset_pairs,
    parse_number_text,
    parse_rest_ohlc,
    parse_rest_trades,
    parse_rfc3339_ns,
    parse_unix_seconds_ns,
    parse_ws_candles,
    parse_ws_trades,
)
from histdata.model import CandleSource, Side
from histdata.symbols import SymbolRegistry

REGISTRY = SymbolRegistry.shipped()
NOW_NS = 1_790_000_000 * 10**9  # 2026-09-21: all fixtures below are in the past of this


def ws_trade(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "symbol": "BTC/USD",
        "side": "buy",
        "price": Decimal("30243.4"),
        "qty": Decimal("0.34507674"),
        "ord_type": "limit",
        "trade_id": 61044952,
        "timestamp": "2023-07-06T18:53:17.827736Z",
    }
    row.update(overrides)
    return row


def ws_candle(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "symbol": "BTC/USD",
        "open": Decimal("85754.8"),
        "high": Decimal("85754.8"),
        "low": Decimal("85754.7"),
        "close": Decimal("85754.7"),
        "trades": 12,
        "volume": Decimal("0.51707722"),
        "vwap": Decimal("85754.7"),
        "interval_begin": "2026-09-10T18:06:00.000000000Z",
        "interval": 1,
        "timestamp": "2026-09-10T18:07:00.000000Z",
    }
    row.update(overrides)
    return row


class TestLoadsExact:
    def test_numbers_keep_every_digit(self) -> None:
        """JSON numbers decode to Decimals equal to their text, beyond float precision."""
        data = loads_exact(b'{"p": 0.1, "t": 1688669597.8277369, "q": 1136.19677815}')
        assert data == {
            "p": Decimal("0.1"),
            "t": Decimal("1688669597.8277369"),
            "q": Decimal("1136.19677815"),
        }

    def test_big_integers_stay_exact(self) -> None:
        """A connection_id above 2^63 decodes to the exact int."""
        assert loads_exact('{"id": 16174536464690282295}') == {"id": 16174536464690282295}

    @pytest.mark.parametrize(
        "body", [b"<html>403 Forbidden</html>", b'{"a": NaN}', b"\xff\xfe", b""]
    )
    def test_not_json_is_rejected(self, body: bytes) -> None:
        """HTML, NaN, bad UTF-8 and empty bodies are a bad_json rejection, never another error."""
        with pytest.raises(RejectedInput) as info:
            loads_exact(body, where="frame 7")
        assert info.value.reason == "bad_json"
        assert info.value.where == "frame 7"


class TestTimes:
    def test_microsecond_rfc3339(self) -> None:
        """A µs RFC 3339 time converts to exact nanoseconds."""
        assert parse_rfc3339_ns("2021-05-11T19:47:09.896860Z") == 1620762429_896860000

    def test_nanosecond_rfc3339(self) -> None:
        """A ns RFC 3339 time keeps all nine fraction digits."""
        assert parse_rfc3339_ns("2026-10-06T18:06:02.264627814Z") == 1791309962_264627814

    @pytest.mark.parametrize(
        "bad",
        [
            "2021-05-11T19:47:09.Z",
            "2021-05-11T19:47:09.8968601234Z",
            "2021-05-11T19:47:09.89x860Z",
            "2021-05-11T19:47:09.\u0663\u0663Z",
            "2021-05-11T19:47:09.896860z9",
        ],
    )
    def test_second_already_seen_still_checks_the_rest(self, bad: str) -> None:
        """After a good stamp of the same second, a bad fraction is still rejected."""
        assert parse_rfc3339_ns("2021-05-11T19:47:09.1Z") == 1620762429_100000000
        with pytest.raises(RejectedInput) as info:
            parse_rfc3339_ns(bad)
        assert info.value.reason == "bad_time"
        assert parse_rfc3339_ns("2021-05-11T19:47:09.123456789Z") == 1620762429_123456789

    def test_offset_and_no_fraction(self) -> None:
        """A numeric offset is applied and a missing fraction means zero."""
        assert parse_rfc3339_ns("2021-05-11T21:47:09+02:00") == 1620762429_000000000

    @pytest.mark.parametrize(
        "text",
        [
            "2021-05-11 19:47:09",
            "2021-02-30T00:00:00Z",
            "2021-05-11T19:47:60Z",
            "2021-05-11T19:47:09.1234567890Z",
            1620762429,
        ],
    )
    def test_bad_rfc3339(self, text: object) -> None:
        """Zone-less, impossible, leap-second, sub-ns and non-string times are bad_time."""
        with pytest.raises(RejectedInput) as info:
            parse_rfc3339_ns(text)
        assert info.value.reason == "bad_time"

    def test_rest_seconds_from_text(self) -> None:
        """A REST time with 7 decimals converts to exact ns from its decimal text."""
        value = loads_exact("[1688669597.8277369]")[0]
        assert parse_unix_seconds_ns(value) == 1688669597_827736900

    def test_float_time_refused(self) -> None:
        """A binary float time is refused rather than silently rounded."""
        with pytest.raises(RejectedInput) as info:
            parse_unix_seconds_ns(1688669597.8277369)
        assert info.value.reason == "bad_time"


def _kraken_prints(text: str) -> bool:
    """The reference for :func:`parse_number_text`, written with Decimal: ``text`` is a
    positive number in plain notation, ASCII digits, no leading zero, at most 20 digits
    either side of the point."""
    mantissa, e, exponent = text.replace("E", "e").partition("e")
    if e:
        digits = mantissa.replace(".", "", 1)
        # One sign at most: lstrip("+-") took '1E--0' for an exponent, which Decimal refuses.
        magnitude = exponent[1:] if exponent.startswith(("+", "-")) else exponent
        if not (digits.isascii() and digits.isdigit() and magnitude.isdigit()):
            return False
        if not (exponent.isascii() and 1 <= len(magnitude) <= 2):
            return False
        if not _kraken_prints(mantissa):
            return False
        text = format(Decimal(text), "f")
    whole, point, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (point and not fraction):
        return False
    if fraction and not (fraction.isascii() and fraction.isdigit()):
        return False
    if (len(whole) > 1 and whole[0] == "0") or len(whole) > 20 or len(fraction) > 20:
        return False
    return Decimal(text) > 0


class TestNumberText:
    @pytest.mark.parametrize(
        "text", ["30243.4", "0.00012345", "40.00000001", "1", "0.5117", "100000.00000000", "7.0"]
    )
    def test_what_kraken_prints_is_kept_as_is(self, text: str) -> None:
        """A price as Kraken prints it comes back as the same text."""
        assert parse_number_text(text, "price", reason="bad_price") == text

    @pytest.mark.parametrize(
        "value",
        [
            "0",
            "0.000",
            "-1.5",
            "+1.5",
            "1e-5000",
            "-1e-05",
            "01.5",
            ".5",
            "5.",
            " 1.5",
            "1.5 ",
            "1_000",
            "\u0663.5",  # ARABIC-INDIC DIGIT THREE: Decimal reads it, PostgreSQL does not
            "NaN",
            "Infinity",
            "",
            "1" * 21,
            "1." + "1" * 21,
            1.5,
            True,
            None,
            0,
            -3,
            [1],
            Decimal("NaN"),
            Decimal("-2"),
            Decimal(0),
        ],
    )
    def test_anything_else_is_rejected_with_the_reason(self, value: object) -> None:
        """Signs, exponents, leading zeros, zero, floats, foreign digits are each a rejection."""
        with pytest.raises(RejectedInput) as info:
            parse_number_text(value, "qty", reason="bad_volume", where="f row 0")
        assert info.value.reason == "bad_volume"
        assert "qty" in str(info.value)

    def test_integers_and_decimals_become_plain_text(self) -> None:
        """A JSON integer or an exact Decimal (rows decoded without text) becomes plain text."""
        assert parse_number_text(50000, "price", reason="bad_price") == "50000"
        assert parse_number_text(Decimal("1E-8"), "price", reason="bad_price") == "0.00000001"
        assert parse_number_text(Decimal("2.50"), "price", reason="bad_price") == "2.50"

    @pytest.mark.parametrize(
        ("text", "plain"), [("1e-05", "0.00001"), ("7.0E-7", "0.00000070"), ("1E5", "100000")]
    )
    def test_exponent_notation_is_exact_and_becomes_plain(self, text: str, plain: str) -> None:
        """A JSON number in exponent notation is as exact as any: kept, in plain notation."""
        assert parse_number_text(text, "qty", reason="bad_volume") == plain

    def test_zero_is_allowed_where_asked(self) -> None:
        """With allow_zero a zero passes (and keeps its scale)."""
        assert parse_number_text("0.000", "vwap", reason="bad_price", allow_zero=True) == "0.000"

    @settings(max_examples=2000, deadline=None)
    @given(
        st.one_of(
            st.text(alphabet="0123456789.-+eE \u0663_", max_size=26),
            st.text(max_size=12),
            st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f")),
            st.from_regex(r"\A[0-9]{1,22}(\.[0-9]{1,22})?\Z"),
        )
    )
    @example("1E--0")  # two exponent signs: once crashed the reference instead of failing
    def test_agrees_with_decimal(self, text: str) -> None:
        """Accepted exactly when the Decimal reference accepts, and then with the same value."""
        try:
            got = parse_number_text(text, "price", reason="bad_price")
        except RejectedInput:
            assert not _kraken_prints(text)
            return
        assert _kraken_prints(text)
        assert Decimal(got) == Decimal(text)
        assert got == text or "e" in text.lower()


class TestWsTrades:
    def test_good_row(self) -> None:
        """A v2 trade row becomes a LiveTrade with exact price and volume text, side, id, time."""
        trades, rejections = parse_ws_trades([ws_trade()], REGISTRY, where="f1", now_ns=NOW_NS)
        assert rejections == []
        (trade,) = trades
        assert trade.symbol == "BTC/USD"
        assert trade.price == "30243.4"
        assert trade.volume == "0.34507674"
        assert trade.side is Side.BUY
        assert trade.ord_type == "limit"
        assert trade.trade_id == 61044952
        assert trade.time_ns == 1688669597_827736000

    def test_decoded_frame_is_exact(self) -> None:
        """Prices decoded from a real frame's JSON numbers keep their digits."""
        frame = loads_exact(
            '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"sell",'
            '"price":0.5117,"qty":40.00000001,"ord_type":"market","trade_id":4665906,'
            '"timestamp":"2023-09-25T07:49:37.708706Z"}]}',
            number_text=True,
        )
        trades, _ = parse_ws_trades(frame["data"], REGISTRY, where="f", now_ns=NOW_NS)
        assert trades[0].price == "0.5117"
        assert trades[0].volume == "40.00000001"
        assert trades[0].side is Side.SELL

    def test_good_rows_survive_bad_ones(self) -> None:
        """Three good rows of a frame survive two bad ones, which are reported with reasons."""
        rows = [
            ws_trade(trade_id=1),
            ws_trade(trade_id=2, price=Decimal("-1")),
            ws_trade(trade_id=3),
            ws_trade(trade_id=4, side="hold"),
            ws_trade(trade_id=5),
        ]
        trades, rejections = parse_ws_trades(rows, REGISTRY, where="ws frame 9", now_ns=NOW_NS)
        assert [t.trade_id for t in trades] == [1, 3, 5]
        assert [r.reason for r in rejections] == ["bad_price", "bad_side"]
        assert [r.where for r in rejections] == ["ws frame 9 row 1", "ws frame 9 row 3"]

    @pytest.mark.parametrize(
        ("override", "reason"),
        [
            ({"symbol": "XBT/USD"}, "bad_symbol"),
            ({"symbol": "NOPE/USD"}, "bad_symbol"),
            ({"price": Decimal(0)}, "bad_price"),
            ({"price": Decimal("Infinity")}, "bad_price"),
            ({"price": 30243.4}, "bad_price"),
            ({"price": True}, "bad_price"),
            ({"qty": Decimal(0)}, "bad_volume"),
            ({"ord_type": "stop"}, "bad_ord_type"),
            ({"trade_id": -1}, "bad_trade_id"),
            ({"trade_id": "7"}, "bad_trade_id"),
            ({"timestamp": "2009-12-31T23:59:59Z"}, "bad_time"),
            ({"timestamp": "2026-09-23T00:00:00Z"}, "bad_time"),
            ({"timestamp": "yesterday"}, "bad_time"),
        ],
    )
    def test_each_bad_field(self, override: dict[str, Any], reason: str) -> None:
        """Each invalid field is rejected under its own reason."""
        trades, rejections = parse_ws_trades(
            [ws_trade(**override)], REGISTRY, where="f", now_ns=NOW_NS
        )
        assert trades == []
        assert [r.reason for r in rejections] == [reason]

    def test_missing_field_and_non_object(self) -> None:
        """A row without a field or that is not an object is rejected, not raised."""
        row = ws_trade()
        del row["side"]
        _, rejections = parse_ws_trades([row, [1, 2]], REGISTRY, where="f", now_ns=NOW_NS)
        assert [r.reason for r in rejections] == ["missing_field", "bad_row"]

    def test_trade_id_is_optional(self) -> None:
        """A row without trade_id is accepted with trade_id None."""
        row = ws_trade()
        del row["trade_id"]
        trades, _ = parse_ws_trades([row], REGISTRY, where="f", now_ns=NOW_NS)
        assert trades[0].trade_id is None

    def test_data_not_a_list(self) -> None:
        """A frame whose data is not a list raises bad_frame."""
        with pytest.raises(RejectedInput) as info:
            parse_ws_trades({"x": 1}, REGISTRY, where="f")
        assert info.value.reason == "bad_frame"


class TestWsCandles:
    def test_interval_begin_is_the_time(self) -> None:
        """The candle time is interval_begin, not the deprecated end-of-interval timestamp."""
        candles, rejections = parse_ws_candles([ws_candle()], REGISTRY, where="f", now_ns=NOW_NS)
        assert rejections == []
        (candle,) = candles
        assert candle.time == datetime(2026, 9, 10, 18, 6, tzinfo=UTC)
        assert candle.close == Decimal("85754.7")
        assert candle.vwap == Decimal("85754.7")
        assert candle.trades == 12
        assert candle.source is CandleSource.LIVE
        assert candle.final is False

    @pytest.mark.parametrize(
        ("override", "reason"),
        [
            ({"high": Decimal("85000")}, "bad_candle"),
            ({"low": Decimal("85755")}, "bad_candle"),
            ({"volume": Decimal("-1")}, "bad_volume"),
            ({"trades": -1}, "bad_count"),
            ({"interval": 7}, "bad_interval"),
            ({"interval_begin": "2026-09-10T18:06:30Z"}, "bad_time"),
            ({"symbol": "XBT/USD"}, "bad_symbol"),
        ],
    )
    def test_bad_candles(self, override: dict[str, Any], reason: str) -> None:
        """Inconsistent OHLC, negative volume or count, odd intervals and times are rejected."""
        candles, rejections = parse_ws_candles(
            [ws_candle(**override)], REGISTRY, where="f", now_ns=NOW_NS
        )
        assert candles == []
        assert [r.reason for r in rejections] == [reason]

    def test_missing_interval_begin(self) -> None:
        """A row with only the deprecated timestamp is rejected rather than shifted."""
        row = ws_candle()
        del row["interval_begin"]
        _, rejections = parse_ws_candles([row], REGISTRY, where="f", now_ns=NOW_NS)
        assert [r.reason for r in rejections] == ["missing_field"]


class TestRestTrades:
    BODY = (
        '{"error":[],"result":{"XXBTZUSD":['
        '["30243.40000","0.34507674",1688669597.8277369,"b","m","",61044952],'
        '["30243.30000","0.00376960",1688669598.2804112,"s","l","",61044953]],'
        '"last":"1688671969993150842"}}'
    )

    def test_page(self) -> None:
        """A documented page parses to exact trades and keeps the 19-digit cursor as text."""
        result = check_envelope(loads_exact(self.BODY))
        trades, last, rejections = parse_rest_trades(result, REGISTRY, "XBTUSD", now_ns=NOW_NS)
        assert rejections == []
        assert last == "1688671969993150842"
        assert [t.time_ns for t in trades] == [1688669597_827736900, 1688669598_280411200]
        assert trades[0].price == Decimal("30243.40000")
        assert trades[0].side is Side.BUY
        assert trades[0].ord_type == "market"
        assert trades[1].side is Side.SELL
        assert trades[1].ord_type == "limit"
        assert [t.trade_id for t in trades] == [61044952, 61044953]
        assert {t.symbol for t in trades} == {"BTC/USD"}

    def test_old_six_field_rows(self) -> None:
        """Rows without trade_id are accepted; id-less rows sharing a time get seq 0, 1."""
        result = loads_exact(
            '{"XXBTZUSD":[["5541.2","0.1",1546300800.1234,"b","l",""],'
            '["5541.3","0.2",1546300800.1234,"s","m",""]],"last":"1546300800123400000"}'
        )
        trades, _, rejections = parse_rest_trades(result, REGISTRY, "BTC/USD", now_ns=NOW_NS)
        assert rejections == []
        assert [(t.trade_id, t.seq) for t in trades] == [(None, 0), (None, 1)]

    @pytest.mark.parametrize("key", ["XXBTZUSD", "XBTUSD", "BTC/USD", "SOMETHINGNEW"])
    def test_any_key_spelling(self, key: str) -> None:
        """The single non-`last` key is taken however it is spelled."""
        result = {key: [], "last": "1"}
        trades, last, _ = parse_rest_trades(result, REGISTRY, "BTC/USD", now_ns=NOW_NS)
        assert (trades, last) == ([], "1")

    def test_key_for_another_pair(self) -> None:
        """An answer keyed by a different known pair is refused."""
        with pytest.raises(RejectedInput) as info:
            parse_rest_trades({"XETHZUSD": []}, REGISTRY, "BTC/USD")
        assert info.value.reason == "wrong_pair"

    def test_missing_last(self) -> None:
        """A page without `last` parses with last None and no rejection."""
        _, last, rejections = parse_rest_trades({"XXBTZUSD": []}, REGISTRY, "BTC/USD")
        assert (last, rejections) == (None, [])

    def test_integer_last_is_exact(self) -> None:
        """A `last` sent as a JSON integer becomes the exact digit string."""
        result = loads_exact('{"XXBTZUSD": [], "last": 1688671969993150842}')
        assert parse_rest_trades(result, REGISTRY, "BTC/USD")[1] == "1688671969993150842"

    def test_float_last_is_rejected(self) -> None:
        """A fractional `last` is reported and dropped rather than used as a lossy cursor."""
        result = loads_exact('{"XXBTZUSD": [], "last": 1688671969.99}')
        _, last, rejections = parse_rest_trades(result, REGISTRY, "BTC/USD")
        assert last is None
        assert [r.reason for r in rejections] == ["bad_cursor"]

    def test_bad_rows(self) -> None:
        """Bad rows are rejected with reasons while the good row survives."""
        result = loads_exact(
            '{"XXBTZUSD":['
            '["30243.4","0.1",1688669597.8277369,"b","m","",1],'
            '["abc","0.1",1688669597.8277369,"b","m","",2],'
            '["30243.4","0.1",1688669597.8277369,"x","m","",3],'
            '["30243.4","0.1",1688669597.8277369,"b","q","",4],'
            '["30243.4","0.1",1688669597.8277369,"b","m","",-5],'
            '["30243.4","0.1","soon","b","m","",6],'
            '["30243.4","0.1"]]}'
        )
        trades, _, rejections = parse_rest_trades(result, REGISTRY, "BTC/USD", now_ns=NOW_NS)
        assert [t.trade_id for t in trades] == [1]
        assert [r.reason for r in rejections] == [
            "bad_price",
            "bad_side",
            "bad_ord_type",
            "bad_trade_id",
            "bad_time",
            "bad_row",
        ]

    def test_not_an_object(self) -> None:
        """A result that is not an object raises bad_body."""
        with pytest.raises(RejectedInput) as info:
            parse_rest_trades([], REGISTRY, "BTC/USD")
        assert info.value.reason == "bad_body"


class TestRestOhlc:
    def test_page(self) -> None:
        """OHLC rows parse exactly; only the final (live) row is not final."""
        result = loads_exact(
            '{"XXBTZUSD":['
            '[1688671200,"30306.1","30306.2","30305.7","30305.7","30306.1","3.39243896",23],'
            '[1688671260,"30304.5","30304.5","30300.0","30300.0","30300.0","4.42996871",18]],'
            '"last":1688672160}'
        )
        candles, last, rejections = parse_rest_ohlc(result, REGISTRY, "XBTUSD", now_ns=NOW_NS)
        assert rejections == []
        assert last == 1688672160
        assert [c.time for c in candles] == [
            datetime(2023, 7, 6, 19, 20, tzinfo=UTC),
            datetime(2023, 7, 6, 19, 21, tzinfo=UTC),
        ]
        assert [c.final for c in candles] == [True, False]
        assert {c.source for c in candles} == {CandleSource.REST}
        assert candles[0].volume == Decimal("3.39243896")
        assert candles[0].trades == 23

    def test_empty_interval_placeholder(self) -> None:
        """A zero-volume placeholder row is kept with no vwap instead of a vwap of zero."""
        result = {
            "XXBTZUSD": [[1688671200, "1.0", "1.0", "1.0", "1.0", "0.000000", "0.00000000", 0]]
        }
        candles, _, _ = parse_rest_ohlc(result, REGISTRY, "BTC/USD", now_ns=NOW_NS)
        assert candles[0].vwap is None
        assert candles[0].volume == 0

    def test_bad_rows(self) -> None:
        """Rows of the wrong size, time type or price order are rejected individually."""
        result = loads_exact(
            '{"XXBTZUSD":['
            '[1688671200,"2","1","1","1","1","1",1],'
            '[1688671200.5,"1","1","1","1","1","1",1],'
            '[1688671200,"1","1"],'
            '[1688671260,"1","1","1","1","1","1",1]]}'
        )
        candles, last, rejections = parse_rest_ohlc(result, REGISTRY, "BTC/USD", now_ns=NOW_NS)
        assert len(candles) == 1
        assert last is None
        assert [r.reason for r in rejections] == ["bad_candle", "bad_time", "bad_row"]


class TestAssetPairs:
    def test_registry(self) -> None:
        """AssetPairs builds a registry resolving new pairs and skipping dark pools."""
        result = loads_exact(
            '{"XDGUSD":{"altname":"XDGUSD","wsname":"XDG/USD","base":"XXDG","quote":"ZUSD",'
            '"pair_decimals":7,"lot_decimals":8},'
            '"DOTUSD":{"altname":"DOTUSD","wsname":"DOT/USD","pair_decimals":4,"lot_decimals":8},'
            '"XXBTZGBP.d":{"altname":"XBTGBP.d","pair_decimals":1,"lot_decimals":8}}'
        )
        registry = parse_asset_pairs(result)
        assert registry.canonical("XDGUSD") == "DOGE/USD"
        assert registry.resolve("DOTUSD").symbol == "DOT/USD"
        assert "XBTGBP.d" not in registry

    def test_not_an_object(self) -> None:
        """A non-object AssetPairs result raises bad_body."""
        with pytest.raises(RejectedInput):
            parse_asset_pairs(["XBTUSD"])


class TestEnvelope:
    def test_success(self) -> None:
        """An empty error list returns the result, ignoring warnings."""
        assert check_envelope({"error": ["WGeneral:Heads up"], "result": {"unixtime": 1}}) == {
            "unixtime": 1
        }

    @pytest.mark.parametrize("error", ["EGeneral:Too many requests", "EAPI:Rate limit exceeded"])
    def test_rate_limits(self, error: str) -> None:
        """Both rate-limit strings raise a transient RateLimited, with or without a result key."""
        for body in ({"error": [error]}, {"error": [error], "result": {}}):
            with pytest.raises(KrakenRateLimited) as info:
                check_envelope(body)
            assert isinstance(info.value, RateLimited)
            assert isinstance(info.value, TransientError)
            assert info.value.retry_after_s is None

    def test_throttled_carries_retry_after(self) -> None:
        """EService:Throttled:<t> raises RateLimited with the seconds until t."""
        with pytest.raises(KrakenRateLimited) as info:
            check_envelope({"error": ["EService:Throttled:1700000030"]}, now_s=1700000000.0)
        assert info.value.retry_after_s == pytest.approx(30.0)

    @pytest.mark.parametrize(
        "error",
        [
            "EService:Unavailable",
            "EService:Busy",
            "EService:Internal error",
            "EService:Deadline elapsed",
            "EGeneral:Internal error",
            "EBrandNew:Something odd",
        ],
    )
    def test_transient(self, error: str) -> None:
        """Service trouble and unknown errors are transient KrakenErrors, not rate limits."""
        with pytest.raises(KrakenError) as info:
            check_envelope({"error": [error]})
        assert not isinstance(info.value, RateLimited)

    @pytest.mark.parametrize(
        "error",
        [
            "EQuery:Unknown asset pair",
            "EGeneral:Invalid arguments",
            "EGeneral:Invalid arguments:interval",
            "EAPI:Invalid key",
        ],
    )
    def test_request_errors(self, error: str) -> None:
        """A refused request is neither transient nor fatal, so it can be handled per symbol."""
        with pytest.raises(KrakenRequestError) as info:
            check_envelope({"error": [error]})
        assert not isinstance(info.value, TransientError | FatalError)
        assert info.value.errors == (error,)

    @pytest.mark.parametrize("body", [[], {"error": "EGeneral:x"}, {"error": []}, None])
    def test_malformed(self, body: object) -> None:
        """A non-envelope body, or a success without result, is a transient KrakenError."""
        with pytest.raises(KrakenError):
            check_envelope(body)


class TestRealPayloads:
    """Every real Kraken body in tests/fixtures/kraken/ goes through the parsers cleanly."""

    @pytest.mark.parametrize("name", fixture_names("rest_"))
    def test_envelope(self, name: str) -> None:
        """Each real REST body is an envelope with no error and a result."""
        result = check_envelope(loads_exact(read_fixture(name)))
        assert result

    @pytest.mark.parametrize("name", fixture_names("rest_trades_"))
    def test_rest_trades(self, name: str) -> None:
        """Real Trades pages parse without a rejection, times exactly as printed, last verbatim."""
        body = loads_exact(read_fixture(name))
        result = body["result"]
        (key,) = (k for k in result if k != "last")
        trades, last, rejections = parse_rest_trades(result, FIXTURE_REGISTRY, key)
        assert rejections == []
        assert len(trades) == len(result[key])
        assert last == result["last"]
        printed = [row[2] for row in result[key]]
        assert [t.time_ns for t in trades] == [int(p * 10**9) for p in printed]
        ids = [t.trade_id for t in trades]
        if ids[0] is not None:
            assert ids == list(range(ids[0], ids[0] + len(ids)))

    @pytest.mark.parametrize(
        "name",
        [
            "rest_trades_nautilus_2025.json",
            "rest_trades_since_nanos_2021.json",
            "rest_trades_since_seconds_2021.json",
        ],
    )
    def test_last_is_the_final_trade_exactly(self, name: str) -> None:
        """In these pages last is the final trade's time, of which the row prints a double."""
        result = loads_exact(read_fixture(name))["result"]
        (key,) = (k for k in result if k != "last")
        trades, last, _ = parse_rest_trades(result, FIXTURE_REGISTRY, key)
        assert last is not None
        assert float(int(last) / 10**9) == float(result[key][-1][2])
        assert abs(trades[-1].time_ns - int(last)) < 240

    @pytest.mark.parametrize("name", fixture_names("rest_ohlc_"))
    def test_rest_ohlc(self, name: str) -> None:
        """Real OHLC answers parse fully; only the final row is not final; last is read."""
        result = loads_exact(read_fixture(name))["result"]
        (key,) = (k for k in result if k != "last")
        interval = 60 if "ccxt" in name else 1
        candles, last, rejections = parse_rest_ohlc(
            result, FIXTURE_REGISTRY, key, interval=interval
        )
        assert rejections == []
        assert len(candles) == len(result[key])
        assert [c.final for c in candles] == [True] * (len(candles) - 1) + [False]
        assert last == int(result["last"])
        for candle, row in zip(candles, result[key], strict=True):
            assert candle.vwap is None if row[7] == 0 else candle.vwap == Decimal(row[5])

    def test_rest_ohlc_last_is_the_last_committed_row(self) -> None:
        """In the 2025 capture last is the open of the row before the forming one."""
        result = loads_exact(read_fixture("rest_ohlc_nautilus_2025.json"))["result"]
        rows = result["XBTUSDT"]
        assert (len(rows), result["last"]) == (721, rows[-2][0])
        assert sum(1 for row in rows if row[7] == 0) == 216

    @pytest.mark.parametrize("name", fixture_names("rest_assetpairs_"))
    def test_asset_pairs(self, name: str) -> None:
        """Real AssetPairs entries build a registry that resolves every key and altname."""
        result = check_envelope(loads_exact(read_fixture(name)))
        registry = parse_asset_pairs(result)
        for key, entry in result.items():
            info = registry.resolve(key)
            assert (info.altname, info.wsname) == (entry["altname"], entry["wsname"])
            assert info.price_decimals == entry["pair_decimals"]

    @pytest.mark.parametrize("name", fixture_names("ws_trade_"))
    def test_ws_trades(self, name: str) -> None:
        """Real trade frames parse without a rejection, µs times and ids kept."""
        frame = loads_exact(read_fixture(name))
        trades, rejections = parse_ws_trades(frame["data"], FIXTURE_REGISTRY, where=name)
        assert rejections == []
        assert [t.trade_id for t in trades] == [row["trade_id"] for row in frame["data"]]
        assert [t.time_ns for t in trades] == [
            parse_rfc3339_ns(row["timestamp"]) for row in frame["data"]
        ]

    @pytest.mark.parametrize("name", fixture_names("ws_ohlc_"))
    def test_ws_candles(self, name: str) -> None:
        """Real ohlc frames parse without a rejection at their own interval."""
        frame = loads_exact(read_fixture(name))
        candles, rejections = parse_ws_candles(frame["data"], FIXTURE_REGISTRY, where=name)
        assert rejections == []
        assert [c.interval_min for c in candles] == [row["interval"] for row in frame["data"]]
