"""Malformed input never crashes histdata and never takes good input down with it.

Property tests (hypothesis, derandomized) over every door bad input comes through: WebSocket
frames (``parse_ws_trades``, ``parse_ws_candles``, ``loads_exact``), REST bodies
(``check_envelope``, ``parse_rest_trades``, ``parse_rest_ohlc``), CSV rows (the row parsers
and a real ``import_paths`` into the database) and query-API requests (``QueryApp`` served on
a real Unix socket). Each asserts: nothing escapes but the documented rejection types, the
good rows beside bad ones are all kept, and every rejection names a reason and a location.

``HISTDATA_FUZZ_EXAMPLES`` sets the examples per property (default sized so the file runs in
well under 30 s); ``python -m bench.drills --only fuzz`` runs it at drill size (10,000+
malformed inputs) and reads the input counts this module writes to ``HISTDATA_FUZZ_COUNTS``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.errors import HistdataError, RejectedInput
from histdata.importer import ImportSummary, import_paths
from histdata.importer.rows import SeqCounter, parse_ohlcvt, parse_trade3, parse_trade7
from histdata.kraken.parse import (
    check_envelope,
    loads_exact,
    parse_rest_ohlc,
    parse_rest_trades,
    parse_ws_candles,
    parse_ws_trades,
)
from histdata.storage import open_storage
from histdata.symbols import SymbolRegistry

EXAMPLES = int(os.environ.get("HISTDATA_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    derandomize=True,
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # No shrinking: a failure is reported at once with the example that found it.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
# The database-backed properties cost a file import or an HTTP round trip per example.
FUZZ_IO = settings(FUZZ, max_examples=max(10, EXAMPLES // 4))
REGISTRY = SymbolRegistry.shipped()
NOW_NS = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp()) * 10**9
COUNTS: dict[str, Counter[str]] = {}
_FILES = itertools.count()  # each example imports into its own time range


def count(door: str, *, malformed: int, good: int = 0) -> None:
    """Tally inputs per door for the drill's report."""
    tally = COUNTS.setdefault(door, Counter())
    tally["malformed"] += malformed
    tally["good"] += good


@pytest.fixture(scope="module", autouse=True)
def _write_counts() -> Iterator[None]:
    yield
    target = os.environ.get("HISTDATA_FUZZ_COUNTS")
    if target:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in COUNTS.items()}))


def assert_rejection(rejection: RejectedInput, where: str) -> None:
    """A rejection names a reason (a short label), a detail and exactly this location."""
    assert isinstance(rejection, RejectedInput)
    assert re.fullmatch(r"[a-z_]+", rejection.reason), rejection.reason
    assert rejection.detail
    assert rejection.where == where, (rejection.where, where)


def outcome(call: Callable[[], Any], kind: type[Exception] = RejectedInput) -> tuple[Any, Any]:
    """``(result, None)`` or ``(None, error)`` when ``call`` raised ``kind``; others propagate."""
    try:
        return call(), None
    except kind as error:
        return None, error


# ----------------------------------------------------------------------------- values

JSON_JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
NOT_DECIMAL = (
    st.none()
    | st.booleans()
    | st.floats()
    | st.text(max_size=10).filter(lambda s: re.fullmatch(r"\d+(\.\d+)?", s) is None)
    | st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-1.5"), Decimal(0), -3, 0])
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
NOT_COUNT = (
    st.none()
    | st.booleans()
    | st.integers(max_value=-1)
    | st.text(max_size=8)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.lists(st.integers(), max_size=2)
)
BAD_TIMESTAMP = (
    st.none()
    | st.integers()
    | st.text(max_size=30).filter(lambda s: re.fullmatch(r"\d{4}-.*", s) is None)
    | st.sampled_from(
        [
            "2009-12-31T23:59:59Z",  # before 2010
            "2031-01-01T00:00:00Z",  # far in the future
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.1234567890Z",
            "2024-01-01T00:00:00",
        ]
    )
    | st.lists(st.text(max_size=3), max_size=2)
)


def not_in(*allowed: object) -> st.SearchStrategy[Any]:
    """Values of any JSON type that are none of ``allowed`` (unhashable ones included)."""
    return JSON_JUNK.filter(lambda v: not any(v == a and type(v) is type(a) for a in allowed))


prices = st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("1000000"), places=5)
times_ns = st.integers(
    int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()), int(datetime(2024, 5, 1).timestamp())
).map(lambda s: s * 10**9)


def rfc3339(time_ns: int, micros: int) -> str:
    stamp = datetime.fromtimestamp(time_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{micros:06d}Z"


@st.composite
def ws_trade_rows(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "symbol": draw(st.sampled_from(["BTC/USD", "ETH/USD"])),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "price": draw(prices),
        "qty": draw(prices),
        "ord_type": draw(st.sampled_from(["market", "limit"])),
        "trade_id": draw(st.integers(0, 2**40)),
        "timestamp": rfc3339(draw(times_ns), draw(st.integers(0, 999_999))),
    }


WS_TRADE_CORRUPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "symbol": not_in("BTC/USD", "ETH/USD") | st.just("XBT/USD"),
    "side": not_in("buy", "sell"),
    "price": NOT_DECIMAL,
    "qty": NOT_DECIMAL,
    "ord_type": not_in("market", "limit"),
    "trade_id": NOT_COUNT.filter(lambda v: v is not None),  # an absent id is valid
    "timestamp": BAD_TIMESTAMP,
}


@st.composite
def corrupted(
    draw: st.DrawFn,
    good: st.SearchStrategy[dict[str, Any]],
    corruptions: dict[str, st.SearchStrategy[Any]],
    required: tuple[str, ...],
) -> Any:
    """A good row with one field made bad, a required field removed, or not an object."""
    row = dict(draw(good))
    how = draw(st.sampled_from(["value", "value", "value", "missing", "not_object"]))
    if how == "not_object":
        return draw(
            st.none() | st.integers() | st.text(max_size=8) | st.lists(JSON_JUNK, max_size=3)
        )
    if how == "missing":
        del row[draw(st.sampled_from(required))]
        return row
    name = draw(st.sampled_from(sorted(corruptions)))
    row[name] = draw(corruptions[name])
    return row


def mixed(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Rows in random order, each tagged True (good) or False (malformed)."""
    return st.lists(st.tuples(st.just(True), good) | st.tuples(st.just(False), bad), max_size=12)


# ----------------------------------------------------------------------------- WebSocket


class TestWebSocketFrames:
    @pytest.mark.parametrize(
        ("field", "value"), [("side", []), ("ord_type", {}), ("side", {"a": 1})]
    )
    def test_unhashable_trade_field_is_a_rejection(self, field: str, value: Any) -> None:
        """A trade row whose side or ord_type is a list or object is one bad_* rejection."""
        row = {
            "symbol": "BTC/USD",
            "side": "buy",
            "price": Decimal("1.5"),
            "qty": Decimal("2"),
            "ord_type": "limit",
            "trade_id": 1,
            "timestamp": "2024-05-01T00:00:00.000001Z",
            field: value,
        }
        trades, (rejection,) = parse_ws_trades([row], REGISTRY, where="ws frame 1", now_ns=NOW_NS)
        assert trades == []
        assert_rejection(rejection, "ws frame 1 row 0")

    def test_unhashable_candle_interval_is_a_rejection(self) -> None:
        """An ohlc row whose interval is a list is one bad_interval rejection."""
        row = {
            "symbol": "BTC/USD",
            "open": Decimal(1),
            "high": Decimal(1),
            "low": Decimal(1),
            "close": Decimal(1),
            "vwap": Decimal(1),
            "volume": Decimal(1),
            "trades": 1,
            "interval_begin": "2024-05-01T00:00:00Z",
            "interval": [1],
        }
        _, (rejection,) = parse_ws_candles([row], REGISTRY, where="ws frame 1", now_ns=NOW_NS)
        assert rejection.reason == "bad_interval"

    @FUZZ
    @given(
        mixed(
            ws_trade_rows(),
            corrupted(
                ws_trade_rows(),
                WS_TRADE_CORRUPTIONS,
                ("symbol", "side", "price", "qty", "ord_type", "timestamp"),
            ),
        )
    )
    def test_trade_rows(self, rows: list[tuple[bool, Any]]) -> None:
        """Bad trade rows are rejected one by one with a reason and their row; good ones kept."""
        trades, rejections = parse_ws_trades(
            [row for _, row in rows], REGISTRY, where="ws frame 7", now_ns=NOW_NS
        )
        good = [row for ok, row in rows if ok]
        bad_at = [i for i, (ok, _) in enumerate(rows) if not ok]
        assert [t.trade_id for t in trades] == [row["trade_id"] for row in good]
        assert [Decimal(t.price) for t in trades] == [row["price"] for row in good]
        assert len(rejections) == len(bad_at)
        for rejection, index in zip(rejections, bad_at, strict=True):
            assert_rejection(rejection, f"ws frame 7 row {index}")
        count("ws trade rows", malformed=len(bad_at), good=len(good))

    @FUZZ
    @given(
        st.binary(max_size=200)
        | st.text(max_size=200)
        | JSON_JUNK.map(partial(json.dumps, default=str))
    )
    def test_whole_frames(self, raw: bytes | str) -> None:
        """Any frame text decodes or is rejected as bad_json; its data never crashes a parser."""
        frame, bad_json = outcome(lambda: loads_exact(raw, where="ws frame 1"))
        if bad_json is not None:
            assert_rejection(bad_json, "ws frame 1")
            assert bad_json.reason == "bad_json"
            count("ws frames", malformed=1)
            return
        data = frame.get("data") if isinstance(frame, dict) else frame
        for parse in (parse_ws_trades, parse_ws_candles):
            call: Callable[[], Any] = partial(
                parse, data, REGISTRY, where="ws frame 1", now_ns=NOW_NS
            )
            parsed, bad_frame = outcome(call)
            if bad_frame is not None:
                assert_rejection(bad_frame, "ws frame 1")
                assert bad_frame.reason == "bad_frame"
            else:
                for rejection in parsed[1]:
                    assert rejection.where.startswith("ws frame 1 row ")
        count("ws frames", malformed=1)

    @FUZZ
    @given(st.data())
    def test_candle_rows(self, data: st.DataObject) -> None:
        """Bad candle rows are rejected with a reason and their row; good candles kept."""

        @st.composite
        def good_candles(draw: st.DrawFn) -> dict[str, Any]:
            low, a, b, high = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
            begin = draw(times_ns) // (60 * 10**9) * 60 * 10**9
            return {
                "symbol": draw(st.sampled_from(["BTC/USD", "ETH/USD"])),
                "open": a,
                "high": high,
                "low": low,
                "close": b,
                "vwap": a,
                "volume": draw(prices),
                "trades": draw(st.integers(0, 10**6)),
                "interval_begin": rfc3339(begin, 0),
                "interval": draw(st.sampled_from([1, 5, 15, 60, 1440])),
                "timestamp": "ignored",
            }

        corruptions = {
            "symbol": not_in("BTC/USD", "ETH/USD"),
            "open": NOT_DECIMAL,
            "high": NOT_DECIMAL | st.just(Decimal("0.000001")),  # below low
            "low": NOT_DECIMAL,
            "close": NOT_DECIMAL,
            "trades": NOT_COUNT,
            "interval": not_in(1, 5, 15, 30, 60, 240, 1440, 10080, 21600),
            "interval_begin": BAD_TIMESTAMP | st.just("2024-01-01T00:00:30.000000Z"),
        }
        required = ("symbol", "open", "high", "low", "close", "vwap", "volume", "trades")
        rows = data.draw(mixed(good_candles(), corrupted(good_candles(), corruptions, required)))
        candles, rejections = parse_ws_candles(
            [row for _, row in rows], REGISTRY, where="ws frame 9", now_ns=NOW_NS
        )
        good = [row for ok, row in rows if ok]
        bad_at = [i for i, (ok, _) in enumerate(rows) if not ok]
        assert [(c.open, c.trades) for c in candles] == [(r["open"], r["trades"]) for r in good]
        assert len(rejections) == len(bad_at)
        for rejection, index in zip(rejections, bad_at, strict=True):
            assert_rejection(rejection, f"ws frame 9 row {index}")
        count("ws candle rows", malformed=len(bad_at), good=len(good))


# ----------------------------------------------------------------------------- REST


@st.composite
def rest_trade_rows(draw: st.DrawFn) -> list[Any]:
    time_ns = draw(times_ns) + draw(st.integers(0, 10**7 - 1)) * 100
    return [
        str(draw(prices)),
        str(draw(prices)),
        Decimal(time_ns) / 10**9,
        draw(st.sampled_from(["b", "s"])),
        draw(st.sampled_from(["m", "l"])),
        "",
        draw(st.integers(1, 2**40)),
    ]


def plausible_unix_seconds(value: object) -> bool:
    """Whether ``value`` could be a valid REST trade time (2010 to a day from now)."""
    text = str(value)
    if isinstance(value, bool) or not re.fullmatch(r"\d+(\.\d+)?", text):
        return False
    return 1_262_304_000 <= Decimal(text) <= NOW_NS // 10**9 + 86_400


@st.composite
def bad_rest_trade_rows(draw: st.DrawFn) -> Any:
    row = draw(rest_trade_rows())
    how = draw(st.sampled_from(["field", "field", "field", "length", "not_list"]))
    if how == "not_list":
        return draw(
            st.none() | st.text(max_size=5) | st.dictionaries(st.text(max_size=3), JSON_JUNK)
        )
    if how == "length":
        # 6 or 7 fields is the valid shape: cut to 0-5 fields or pad to 9
        return [*row, 1, 2] if draw(st.booleans()) else row[: draw(st.integers(0, 5))]
    index = draw(st.sampled_from([0, 1, 2, 3, 4, 6]))
    row[index] = draw(
        {
            0: NOT_DECIMAL,
            1: NOT_DECIMAL,
            2: BAD_TIMESTAMP.filter(lambda v: not plausible_unix_seconds(v))
            | st.sampled_from([Decimal("1.0E+30"), Decimal("1e-12")]),
            3: not_in("b", "s"),
            4: not_in("m", "l"),
            6: NOT_COUNT,
        }[index]
    )
    return row


class TestRestBodies:
    @FUZZ
    @given(
        JSON_JUNK | st.fixed_dictionaries({"error": JSON_JUNK}) | st.builds(dict, result=JSON_JUNK)
    )
    def test_envelopes(self, body: Any) -> None:
        """Any decoded body gives a result or one of histdata's errors, never anything else."""
        result, error = outcome(lambda: check_envelope(body, now_s=NOW_NS / 10**9), HistdataError)
        if error is not None:
            assert str(error)
            count("rest envelopes", malformed=1)
            return
        for parse in (parse_rest_trades, parse_rest_ohlc):
            call: Callable[[], Any] = partial(parse, result, REGISTRY, "BTC/USD", now_ns=NOW_NS)
            _, rejection = outcome(call)
            if rejection is not None:
                assert rejection.reason in ("bad_body", "wrong_pair")
                assert rejection.where.endswith("BTC/USD")
        count("rest envelopes", malformed=1)

    @FUZZ
    @given(
        mixed(rest_trade_rows(), bad_rest_trade_rows()),
        not_in(None) | st.just("1717200000000000000"),
    )
    def test_trade_pages(self, rows: list[tuple[bool, Any]], last: Any) -> None:
        """A Trades page keeps every good row; each bad row and a bad cursor is one rejection."""
        trades, cursor, rejections = parse_rest_trades(
            {"XXBTZUSD": [row for _, row in rows], "last": last},
            REGISTRY,
            "XBTUSD",
            now_ns=NOW_NS,
        )
        good = [row for ok, row in rows if ok]
        bad_at = [i for i, (ok, _) in enumerate(rows) if not ok]
        assert [t.trade_id for t in trades] == [row[6] for row in good]
        row_rejections = [r for r in rejections if r.reason != "bad_cursor"]
        assert len(row_rejections) == len(bad_at)
        for rejection, index in zip(row_rejections, bad_at, strict=True):
            assert_rejection(rejection, f"Trades XBTUSD row {index}")
        if cursor is None and last is not None:
            (bad_cursor,) = [r for r in rejections if r.reason == "bad_cursor"]
            assert_rejection(bad_cursor, "Trades XBTUSD")
        count("rest trade rows", malformed=len(bad_at) + (cursor is None), good=len(good))

    @FUZZ
    @given(st.data())
    def test_ohlc_pages(self, data: st.DataObject) -> None:
        """An OHLC page keeps every good candle; each bad row is one located rejection."""

        @st.composite
        def good(draw: st.DrawFn) -> list[Any]:
            low, a, b, high = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
            minute = draw(times_ns) // (60 * 10**9) * 60
            return [
                minute,
                str(a),
                str(high),
                str(low),
                str(b),
                str(a),
                "1.5",
                draw(st.integers(0, 99)),
            ]

        @st.composite
        def bad(draw: st.DrawFn) -> Any:
            row = draw(good())
            index = draw(st.integers(0, 8))
            if index == 8:
                return row[: draw(st.integers(0, 7))]
            row[index] = draw(
                (st.just(row[0] + 30) | NOT_COUNT.filter(lambda v: not isinstance(v, int) or v < 0))
                if index == 0
                else NOT_COUNT
                if index == 7
                else NOT_DECIMAL.filter(lambda v: v != Decimal(0))
                if index in (5, 6)
                else NOT_DECIMAL
            )
            return row

        rows = data.draw(mixed(good(), bad()))
        candles, _, rejections = parse_rest_ohlc(
            {"XXBTZUSD": [row for _, row in rows], "last": 1}, REGISTRY, "BTC/USD", now_ns=NOW_NS
        )
        good_rows = [row for ok, row in rows if ok]
        bad_at = [i for i, (ok, _) in enumerate(rows) if not ok]
        assert [c.trades for c in candles] == [row[7] for row in good_rows]
        assert len(rejections) == len(bad_at)
        for rejection, index in zip(rejections, bad_at, strict=True):
            assert_rejection(rejection, f"OHLC BTC/USD row {index}")
        count("rest ohlc rows", malformed=len(bad_at), good=len(good_rows))


# ----------------------------------------------------------------------------- CSV

CSV_TEXT = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=40)


class TestCsvRows:
    @FUZZ
    @given(st.lists(CSV_TEXT, max_size=9), st.integers(1, 1440))
    def test_row_parsers(self, fields: list[str], interval: int) -> None:
        """The three row parsers return a row or raise RejectedInput, whatever the fields."""
        max_ns = NOW_NS + 86_400 * 10**9
        calls: list[Callable[[], object]] = [
            partial(parse_trade3, fields, "BTC/USD", SeqCounter(), max_ns),
            partial(parse_trade7, fields, "BTC/USD", SeqCounter(), max_ns),
            partial(parse_ohlcvt, fields, "BTC/USD", interval, max_ns),
        ]
        for call in calls:
            _, rejection = outcome(call)
            if rejection is not None:
                assert re.fullmatch(r"[a-z_]+", rejection.reason)
                assert rejection.detail
        count("csv fields", malformed=3)

    @FUZZ_IO
    @given(
        st.lists(
            st.tuples(st.just(True), st.tuples(st.integers(1, 5), prices, prices))
            | st.tuples(
                st.just(False),
                st.one_of(
                    CSV_TEXT.filter(lambda s: s.count(",") != 2),
                    st.builds(
                        "1600000000,{},1".format,
                        CSV_TEXT.filter(lambda s: "," not in s).map(lambda s: s + "x"),
                    ),
                    st.sampled_from(["1600000000,1.5,0", "100,1.5,1", "1600000000,-1,1", ""]),
                ),
            ),
            min_size=1,
            max_size=30,
        )
    )
    def test_import_keeps_good_rows(
        self, database_url: str, tmp_path_factory: pytest.TempPathFactory, rows: list[Any]
    ) -> None:
        """A file mixing good and bad lines stores every good row; rejections name their line."""
        t = 1_600_000_000 + next(_FILES) * 100_000
        lines = [f"{t + i},100.5,1" for i in range(3)]
        t += 2
        bad_lines: set[int] = set()
        for ok, row in rows:
            if ok:
                t += row[0]
                lines.append(f"{t},{row[1]},{row[2]}")
            else:
                lines.append(row)
                bad_lines.add(len(lines))
        good = len(lines) - len(bad_lines)
        path = tmp_path_factory.mktemp("csv") / "XBTUSD.csv"
        path.write_text("\n".join(lines) + "\n")

        async def run() -> ImportSummary:
            async with open_storage(database_url, pool_max=2) as storage:
                return await import_paths(storage, [path])

        (summary,) = trio.run(run).files
        assert summary.inserted == good
        assert summary.rejected_total == len(bad_lines)
        for examples in summary.examples.values():
            for example in examples:
                found = re.match(r"line (\d+): .", example)
                assert found is not None, example
                assert int(found[1]) in bad_lines
        count("csv import lines", malformed=len(bad_lines), good=good)


# ----------------------------------------------------------------------------- query socket


def against_query_socket(
    database_url: str, directory: Path, client: Callable[[Path], Awaitable[None]]
) -> None:
    """Serve QueryApp on a real Unix socket in ``directory`` and run ``client`` against it."""

    async def run() -> None:
        async with open_storage(database_url, pool_max=2) as storage:
            app = QueryApp(
                storage,
                SymbolRegistry.shipped(),
                hub=LiveHub(),
                status=lambda: {"healthy": True},
                metrics=lambda: b"",
            )
            path = directory / "q.sock"
            async with trio.open_nursery() as nursery:
                await nursery.start(app.serve, path)
                await client(path)
                nursery.cancel_scope.cancel()

    trio.run(run)


def http(path: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://q")


PARAMETER_NAMES = st.sampled_from(
    ["symbol", "interval", "start", "end", "format", "stream", "symbols", "limit"]
) | st.text(min_size=1, max_size=6)
PARAMETER_VALUES = st.text(max_size=20) | st.sampled_from(
    [
        "BTC/USD",
        "XBTUSD",
        "1h",
        "7m",
        "0",
        "2024-01-01",
        "1e400",
        "-1",
        "99999999999999",
        "arrow",
        "' OR 1=1 --",
        "2262-04-12",
        "nan",
        "1w",
        "2024-01-01T00:00:00+25:00",
    ]
)


class TestQueryRequests:
    @FUZZ_IO
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["/v1/candles", "/v1/trades", "/v1/coverage", "/v1/symbols", "/healthz"]
                ),
                st.lists(st.tuples(PARAMETER_NAMES, PARAMETER_VALUES), max_size=6),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def test_parameters(
        self,
        database_url: str,
        tmp_path_factory: pytest.TempPathFactory,
        requests: list[tuple[str, list[tuple[str, str]]]],
    ) -> None:
        """Any query string gets 200, 404 for an unknown symbol, or 400 naming the parameter."""

        async def client(socket: Path) -> None:
            async with http(socket) as session:
                for path, params in requests:
                    reply = await session.get(path, params=tuple(params))
                    assert reply.status_code in (200, 400, 404), (path, params, reply.text)
                    if reply.status_code != 200:
                        error = reply.json()["error"]
                        if reply.status_code == 400:
                            assert re.match(r"parameter '.*': .", error), error

        against_query_socket(database_url, tmp_path_factory.mktemp("q"), client)
        count("query requests", malformed=len(requests))

    @FUZZ_IO
    @given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
    def test_raw_requests(
        self, database_url: str, tmp_path_factory: pytest.TempPathFactory, raws: list[bytes]
    ) -> None:
        """Garbage bytes on the socket get an error reply or a close; the server keeps serving."""

        async def client(socket: Path) -> None:
            for raw in raws:
                stream = await trio.open_unix_socket(str(socket))
                async with stream:
                    await stream.send_all(raw + b"\r\n\r\n")
                    with trio.move_on_after(5):
                        answer = await stream.receive_some(4096)
                        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer
            async with http(socket) as session:
                assert (await session.get("/v1/symbols")).status_code == 200

        against_query_socket(database_url, tmp_path_factory.mktemp("q"), client)
        count("socket requests", malformed=len(raws))
