"""Tests for histdata.sim: the market's ground truth and Kraken's wire shapes and quirks.

The clients' own tests (test_rest, test_ws, test_feed…) already run against the simulator;
these pin down what the simulator promises on the wire, with raw HTTP and WebSocket clients.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from histdata.model import NS_PER_S
from histdata.sim import SimConfig, Simulator, open_simulator
from histdata.sim.market import MINUTE_NS, Market
from histdata.sim.pairs import generate_pairs
from histdata.symbols import SymbolRegistry

REGISTRY = SymbolRegistry.shipped()
BTC = REGISTRY.resolve("BTC/USD")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimConfig(seed=2, symbols=("BTC/USD",), trade_rate_per_s=20.0, history_s=900.0)
    async with open_simulator(config) as simulator:
        simulator.pause_trading()
        yield simulator


async def get(sim: Simulator, endpoint: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{sim.rest_url}/0/public/{endpoint}", params=params)


async def rows(sim: Simulator, endpoint: str, key: str = "XXBTZUSD", **params: str) -> Any:
    body = (await get(sim, endpoint, **params)).json(parse_float=Decimal)
    assert body["error"] == []
    return body["result"][key], body["result"].get("last")


class TestMarket:
    def test_same_seed_same_market(self) -> None:
        """Two markets with one seed and start have identical trades."""
        a, b = (
            Market([BTC], seed=9, rate_per_s=20.0, start_ns=10**18, history_s=600.0)
            for _ in range(2)
        )
        assert a.trades("BTC/USD") == b.trades("BTC/USD")
        other = Market([BTC], seed=10, rate_per_s=20.0, start_ns=10**18, history_s=600.0)
        assert other.trades("BTC/USD") != a.trades("BTC/USD")

    def test_ids_times_and_same_time_fills(self) -> None:
        """Ids run 1, 2, 3…, times never go back, are whole µs, and some trades share one."""
        market = Market([BTC], seed=1, rate_per_s=50.0, start_ns=10**18, history_s=600.0)
        trades = market.trades("BTC/USD")
        assert [t.trade_id for t in trades] == list(range(1, len(trades) + 1))
        assert all(a.time_ns <= b.time_ns for a, b in itertools.pairwise(trades))
        assert all(t.time_ns % 1000 == 0 for t in trades)
        assert any(a.time_ns == b.time_ns for a, b in itertools.pairwise(trades))

    def test_candles_aggregate_their_trades(self) -> None:
        """Each candle is exactly first/max/min/last price, summed volume and count."""
        market = Market([BTC], seed=3, rate_per_s=10.0, start_ns=10**18, history_s=900.0)
        trades = market.trades("BTC/USD")
        for candle in market.candles("BTC/USD"):
            start = candle.time.timestamp() * NS_PER_S
            inside = [t for t in trades if start <= t.time_ns < start + MINUTE_NS]
            assert candle.open == inside[0].price
            assert candle.close == inside[-1].price
            assert candle.high == max(t.price for t in inside)
            assert candle.low == min(t.price for t in inside)
            assert candle.volume == sum(t.volume for t in inside)
            assert candle.trades == len(inside)
        assert market.candles("BTC/USD")[-1].final is False


class TestPairs:
    def test_generated_pairs_are_stable(self) -> None:
        """One seed gives the same pairs; asking for more only appends, never renames."""
        few, more = generate_pairs(5, seed=1), generate_pairs(8, seed=1)
        assert few == more[:5]
        assert len({info.symbol for info in more}) == 8
        assert not {info.symbol for info in more} & {info.symbol for info in REGISTRY}


class TestRestShapes:
    async def test_errors_are_http_200_without_result(self, sim: Simulator) -> None:
        """An unknown pair is HTTP 200 with only an error list."""
        response = await get(sim, "Trades", pair="SOLUSD")
        assert response.status_code == 200
        assert response.json() == {"error": ["EQuery:Unknown asset pair"]}

    @pytest.mark.parametrize(
        ("kind", "status", "text"),
        [
            ("body", 200, "EGeneral:Too many requests"),
            ("eapi", 200, "EAPI:Rate limit exceeded"),
            ("html429", 429, "<html>"),
        ],
    )
    async def test_injected_throttles(
        self, sim: Simulator, kind: str, status: int, text: str
    ) -> None:
        """Each throttle kind answers as Kraken or Cloudflare does, once per injection."""
        sim.faults.throttle_next(1, kind=kind)
        throttled = await get(sim, "Time")
        assert (throttled.status_code, text in throttled.text) == (status, True)
        assert (await get(sim, "Time")).json()["error"] == []

    async def test_missing_user_agent_is_refused(self, sim: Simulator) -> None:
        """A request without User-Agent gets Cloudflare's 403 page, as Kraken's edge does."""
        host, port = sim.rest_url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /0/public/Time HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 403")

    async def test_trades_rows_and_cursor(self, sim: Simulator) -> None:
        """Rows are Kraken's 7 fields, last the final trade's exact ns time as 19 digits."""
        page, last = await rows(sim, "Trades", pair="XBTUSD", since="0", count="5")
        assert len(page) == 5
        price, volume, _time, side, ord_type, misc, trade_id = page[0]
        assert isinstance(price, str)
        assert isinstance(volume, str)
        assert (side in "bs", ord_type in "ml", misc, trade_id) == (True, True, "", 1)
        assert len(last) == 19
        assert int(last) == sim.market.trades("BTC/USD")[4].time_ns

    async def test_trade_times_print_as_kraken_prints_them(self, sim: Simulator) -> None:
        """Times are the shortest text of their double, so the number of decimals varies."""
        response = await get(sim, "Trades", pair="XBTUSD", since="0", count="1000")
        texts = re.findall(r',(\d{10}(?:\.\d+)?),"[bs]"', response.text)
        assert len(texts) == 1000
        assert all(repr(float(text)) == text for text in texts)
        assert len({len(text.partition(".")[2]) for text in texts}) > 1

    async def test_slash_pair_is_echoed(self, sim: Simulator) -> None:
        """A slash spelling comes back as the result key, not the REST key (a Kraken quirk)."""
        page, _ = await rows(sim, "Trades", key="BTC/USD", pair="BTC/USD", since="0", count="1")
        assert len(page) == 1

    async def test_since_units_agree(self, sim: Simulator) -> None:
        """since in seconds, fractional seconds and nanoseconds select the same trades."""
        truth = sim.market.trades("BTC/USD")
        second = truth[len(truth) // 2].time_ns // NS_PER_S + 1
        pages = [
            (await rows(sim, "Trades", pair="XBTUSD", since=since, count="3"))[0]
            for since in (str(second), f"{second}.0", str(second * NS_PER_S))
        ]
        assert pages[0] == pages[1] == pages[2]
        assert Decimal(str(pages[0][0][2])) >= second

    async def test_count_is_capped_at_1000(self, sim: Simulator) -> None:
        """count above 1000 is silently capped."""
        page, _ = await rows(sim, "Trades", pair="XBTUSD", since="0", count="5000")
        assert len(page) <= 1000
        assert len(page) >= 999

    async def test_since_is_inclusive(self, sim: Simulator) -> None:
        """By default the next page repeats the previous page's last trade (since inclusive)."""
        first, last = await rows(sim, "Trades", pair="XBTUSD", since="0", count="10")
        second, _ = await rows(sim, "Trades", pair="XBTUSD", since=last, count="10")
        assert second[0][6] == first[-1][6]

    async def test_since_exclusive_switch(self, sim: Simulator) -> None:
        """With boundary_duplicates off, since is exclusive and pages do not overlap."""
        sim.faults.boundary_duplicates = False
        first, last = await rows(sim, "Trades", pair="XBTUSD", since="0", count="10")
        second, _ = await rows(sim, "Trades", pair="XBTUSD", since=last, count="10")
        assert second[0][6] > first[-1][6]

    async def test_pages_cut_inside_same_time_groups(self) -> None:
        """Pages end after count trades even mid-group; paging by last then misses nothing."""
        config = SimConfig(
            symbols=("BTC/USD",), trade_rate_per_s=20.0, history_s=600, same_time_ratio=0.3
        )
        ids: list[int] = []
        cut_in_group = False
        since = "0"
        async with open_simulator(config) as sim:
            sim.pause_trading()
            truth = sim.market.trades("BTC/USD")
            while True:
                page, last = await rows(sim, "Trades", pair="XBTUSD", since=since, count="700")
                if len(page) == 0 or (ids and page[-1][6] == ids[-1]):
                    break
                following = page[-1][6]  # index of the next trade in the ground truth
                if following < len(truth) and truth[following].time_ns == int(last):
                    cut_in_group = True
                ids.extend(row[6] for row in page)
                since = last
        assert len(page) <= 700
        assert cut_in_group
        assert sorted(set(ids)) == [t.trade_id for t in truth]

    async def test_missing_last(self, sim: Simulator) -> None:
        """drop_last_ratio 1 omits last from every Trades reply."""
        sim.faults.drop_last_ratio = 1.0
        _, last = await rows(sim, "Trades", pair="XBTUSD", since="0", count="5")
        assert last is None

    async def test_ohlc_window_and_live_row(self, sim: Simulator) -> None:
        """OHLC serves at most 721 rows, last is the last committed one, since trims the rest."""
        page, last = await rows(sim, "OHLC", pair="XBTUSD")
        assert 0 < len(page) <= 721
        assert last == page[-2][0] == page[-1][0] - 60
        assert all(row[0] % 60 == 0 and len(row) == 8 for row in page)
        trimmed, _ = await rows(sim, "OHLC", pair="XBTUSD", since=str(page[-1][0] + 1))
        assert trimmed == page[-1:]

    async def test_ohlc_bad_interval(self, sim: Simulator) -> None:
        """An interval Kraken does not serve is EGeneral:Invalid arguments."""
        body = (await get(sim, "OHLC", pair="XBTUSD", interval="360")).json()
        assert body == {"error": ["EGeneral:Invalid arguments"]}

    async def test_ohlc_placeholders(self) -> None:
        """By default empty minutes come as zero-volume rows at the previous close, as in 2025."""
        config = SimConfig(seed=4, symbols=("BTC/USD",), trade_rate_per_s=0.01, history_s=7200)
        async with open_simulator(config) as sim:
            page, _ = await rows(sim, "OHLC", pair="XBTUSD")
            sim.faults.ohlc_placeholders = False
            sparse, _ = await rows(sim, "OHLC", pair="XBTUSD")
        times = [row[0] for row in page]
        assert times == list(range(times[0], times[-1] + 60, 60))
        empty = [row for row in page if row[7] == 0]
        assert empty
        assert all(row[5] == "0.0" and row[6] == "0.00000000" for row in empty)
        assert all(row[1] == row[2] == row[3] == row[4] for row in empty)
        assert [row for row in sparse if row[7] > 0] == [row for row in page if row[7] > 0]
        assert all(row[7] > 0 for row in sparse)

    @pytest.mark.parametrize("interval", [1, 5, 15, 30, 60, 240, 1440, 10080, 21600])
    async def test_ohlc_intervals(self, sim: Simulator, interval: int) -> None:
        """Every Kraken interval is served, rows aligned to it, volumes summing the trades."""
        page, last = await rows(sim, "OHLC", pair="XBTUSD", interval=str(interval))
        width = interval * 60
        assert all(row[0] % width == 0 for row in page)
        assert last == page[-1][0] - width
        traded = sum((Decimal(row[6]) for row in page), Decimal(0))
        in_window = [t for t in sim.market.trades("BTC/USD") if t.time_ns >= page[0][0] * NS_PER_S]
        assert traded == sum((t.volume for t in in_window), Decimal(0))

    async def test_ohlc_since_switch(self, sim: Simulator) -> None:
        """since keeps the row opening at it by default and drops it when exclusive."""
        page, _ = await rows(sim, "OHLC", pair="XBTUSD")
        at = str(page[-3][0])
        inclusive, _ = await rows(sim, "OHLC", pair="XBTUSD", since=at)
        sim.faults.ohlc_since_exclusive = True
        exclusive, _ = await rows(sim, "OHLC", pair="XBTUSD", since=at)
        assert (inclusive, exclusive) == (page[-3:], page[-2:])

    async def test_assets_ticker_and_depth(self, sim: Simulator) -> None:
        """Assets, Ticker and Depth answer with Kraken's keys and value types."""
        assets = (await get(sim, "Assets")).json()["result"]
        assert assets["XXBT"]["altname"] == "XBT"
        assert (assets["ZUSD"]["decimals"], assets["XXBT"]["decimals"]) == (4, 10)
        ticker = (await get(sim, "Ticker", pair="XBTUSD")).json()["result"]["XXBTZUSD"]
        assert set(ticker) == set("abcvptlho")
        last = sim.market.trades("BTC/USD")[-1]
        assert Decimal(ticker["c"][0]) == last.price
        assert all(isinstance(n, int) for n in ticker["t"])
        book = (await get(sim, "Depth", pair="XBTUSD", count="3")).json()["result"]["XXBTZUSD"]
        assert [len(book["asks"]), len(book["bids"])] == [3, 3]
        assert Decimal(book["asks"][0][0]) > Decimal(book["bids"][0][0])
        assert all(isinstance(level[2], int) for level in book["asks"] + book["bids"])

    async def test_generated_pairs(self) -> None:
        """--pairs N adds N distinct pairs with full AssetPairs entries, each trading, the
        first generated ones busier than the last (a long tail of quiet markets)."""
        config = SimConfig(symbols=("BTC/USD",), pairs=40, history_s=60)
        async with open_simulator(config) as sim:
            entries = (await get(sim, "AssetPairs")).json()["result"]
            assets = (await get(sim, "Assets")).json()["result"]
            traded = [len(book.trades) for book in sim.market.symbols.values()]
        assert len(entries) == 41
        assert all(traded)
        assert sum(traded[1:6]) > 4 * sum(traded[-5:])
        for key, entry in entries.items():
            assert entry["altname"] in (key, "XBTUSD")
            assert {entry["base"], entry["quote"]} <= set(assets)
            assert Decimal(entry["tick_size"]) == Decimal(1).scaleb(-entry["pair_decimals"])
            assert Decimal(entry["ordermin"]) > 0

    async def test_asset_pairs(self, sim: Simulator) -> None:
        """AssetPairs lists the simulated pairs under their REST keys with v1 wsnames."""
        (await get(sim, "AssetPairs")).raise_for_status()
        body = (await get(sim, "AssetPairs")).json()
        assert body["result"]["XXBTZUSD"]["wsname"] == "XBT/USD"
        assert body["result"]["XXBTZUSD"]["pair_decimals"] == 1
        assert body["result"]["XXBTZUSD"]["fees"][0] == [0, 0.26]
        assert body["result"]["XXBTZUSD"]["ordermin"] == "0.00008"
        unknown = (await get(sim, "AssetPairs", pair="XBTUSD,NOPE")).json()
        assert unknown == {"error": ["EQuery:Unknown asset pair"]}


class TestRestLimit:
    async def test_token_bucket_throttles_a_burst(self) -> None:
        """With Kraken's limit enforced, calls beyond the burst are throttled and counted."""
        config = SimConfig(symbols=("BTC/USD",), history_s=60, rest_rate_per_s=0.5, rest_burst=4)
        async with open_simulator(config) as sim:
            errors = [(await get(sim, "Time")).json()["error"] for _ in range(8)]
            stats = sim.statistics().rest
        assert errors[:4] == [[]] * 4
        assert errors[4:] == [["EGeneral:Too many requests"]] * 4
        assert stats.throttled == 4


@asynccontextmanager
async def raw_ws(url: str) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A plain WebSocket client that owns its TCP stream.

    trio_websocket's own open_websocket_url leaves the socket open when the server closes.
    """
    host, port = url.removeprefix("ws://").removesuffix("/v2").split(":")
    async with (
        await trio.open_tcp_stream(host, int(port)) as stream,
        trio.open_nursery() as nursery,
    ):
        ws = await trio_websocket.wrap_client_stream(nursery, stream, host, "/v2")
        yield ws
        await ws.aclose()


async def frames(ws: trio_websocket.WebSocketConnection, n: int) -> list[dict[str, Any]]:
    return [json.loads(await ws.get_message()) for _ in range(n)]


async def drain(ws: trio_websocket.WebSocketConnection) -> None:
    while True:
        await ws.get_message()


async def subscribe(ws: trio_websocket.WebSocketConnection, **params: Any) -> None:
    await ws.send_message(json.dumps({"method": "subscribe", "params": params, "req_id": 7}))


class TestWebSocket:
    async def test_status_then_one_ack_per_symbol(self) -> None:
        """Connect gives a status with a >2^63 id; each symbol is acked, v1 names refused."""
        config = SimConfig(symbols=("BTC/USD", "ETH/USD"), history_s=60)
        async with (
            open_simulator(config) as sim,
            raw_ws(sim.ws_url) as ws,
        ):
            (status,) = await frames(ws, 1)
            assert status["channel"] == "status"
            assert status["data"][0]["connection_id"] > 2**63
            await subscribe(ws, channel="trade", symbol=["BTC/USD", "XBT/USD", "eth/usd"])
            acks = await frames(ws, 3)
        assert [a["success"] for a in acks] == [True, False, False]
        assert acks[1]["error"] == "Currency pair not supported XBT/USD"
        assert all(a["req_id"] == 7 and a["method"] == "subscribe" for a in acks)

    async def test_ohlc_rows_carry_interval_begin_and_end_timestamp(self) -> None:
        """ohlc rows: interval_begin in ns, the deprecated timestamp at the interval end."""
        config = SimConfig(symbols=("BTC/USD",), trade_rate_per_s=50.0, history_s=120)
        async with (
            open_simulator(config) as sim,
            raw_ws(sim.ws_url) as ws,
        ):
            await frames(ws, 1)
            await subscribe(ws, channel="ohlc", symbol=["BTC/USD"], interval=1)
            ack, snapshot = await frames(ws, 2)
        assert ack["result"]["warnings"] == ["timestamp is deprecated, use interval_begin"]
        assert snapshot["type"] == "snapshot"
        row = snapshot["data"][-1]
        begin = row["interval_begin"]
        assert begin.endswith(":00.000000000Z")
        assert row["timestamp"][:16] > begin[:16]

    async def test_ohlc_at_other_intervals(self) -> None:
        """ohlc serves interval 5 aligned to 5 minutes, updates included; 7 is refused."""
        config = SimConfig(symbols=("BTC/USD",), trade_rate_per_s=50.0, history_s=900)
        async with (
            open_simulator(config) as sim,
            raw_ws(sim.ws_url) as ws,
        ):
            await frames(ws, 1)
            await subscribe(ws, channel="ohlc", symbol=["BTC/USD"], interval=7)
            (refused,) = await frames(ws, 1)
            await subscribe(ws, channel="ohlc", symbol=["BTC/USD"], interval=5)
            ack, snapshot = await frames(ws, 2)
            update = snapshot
            while update["type"] != "update" or update.get("channel") != "ohlc":
                (update,) = await frames(ws, 1)
        assert (refused["success"], ack["result"]["interval"]) == (False, 5)
        for row in snapshot["data"] + update["data"]:
            assert row["interval"] == 5
            assert int(row["interval_begin"][14:16]) % 5 == 0
        assert len(snapshot["data"]) >= 3

    async def test_ping_pong_and_unknown_unsubscribe(self, sim: Simulator) -> None:
        """A ping is answered with its req_id; unsubscribing nothing is an error ack."""
        async with raw_ws(sim.ws_url) as ws:
            await frames(ws, 1)
            await ws.send_message(json.dumps({"method": "ping", "req_id": 42}))
            (pong,) = await frames(ws, 1)
            assert (pong["method"], pong["req_id"]) == ("pong", 42)
            await ws.send_message(
                json.dumps(
                    {"method": "unsubscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}}
                )
            )
            (ack,) = await frames(ws, 1)
            await ws.send_message("not json")
            (error,) = await frames(ws, 1)
        assert (ack["success"], ack["error"]) == (False, "Subscription Not Found")
        assert error["error"] == "Malformed request"

    async def test_subscriptions_do_not_survive_a_reconnect(self) -> None:
        """After a close, a new connection gets no data until it subscribes again."""
        config = SimConfig(symbols=("BTC/USD",), trade_rate_per_s=200.0, history_s=10)
        async with open_simulator(config) as sim:
            async with raw_ws(sim.ws_url) as ws:
                await frames(ws, 1)
                await subscribe(ws, channel="trade", symbol=["BTC/USD"], snapshot=False)
                await frames(ws, 2)  # the ack and a first update
                sim.faults.close_ws(1001)
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await drain(ws)
                assert info.value.reason is not None
                assert info.value.reason.code == 1001
            async with raw_ws(sim.ws_url) as ws:
                await frames(ws, 1)
                with trio.move_on_after(0.5) as idle:
                    await ws.get_message()
                assert idle.cancelled_caught
            assert sim.statistics().ws.closes_injected == 1


class TestCommand:
    def test_histdata_sim_serves_until_stopped(self) -> None:
        """`histdata sim` on free ports prints its URLs and answers REST calls."""
        command = [sys.executable, "-m", "histdata.cli", "sim", "--rest-port", "0"]
        command += ["--ws-port", "0", "--history-s", "60", "--log-level", "warning"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
            try:
                assert process.stdout is not None
                line = process.stdout.readline()
                rest_url = line.split("REST ")[1].split()[0]
                reply = httpx.get(f"{rest_url}/0/public/Trades", params={"pair": "ETHUSD"}).json()
                assert reply["error"] == []
                assert reply["result"]["XETHZUSD"]
            finally:
                process.terminate()

    def test_flags_switch_to_the_other_readings(self) -> None:
        """--trades-since-exclusive and --no-ohlc-placeholders reach the running simulator."""
        command = [sys.executable, "-m", "histdata.cli", "sim", "--rest-port", "0"]
        command += ["--ws-port", "0", "--history-s", "7200", "--rate", "0.02"]
        command += ["--symbols", "BTC/USD", "--rest-limit", "0", "--log-level", "warning"]
        command += ["--trades-since-exclusive", "--no-ohlc-placeholders"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
            try:
                assert process.stdout is not None
                rest_url = process.stdout.readline().split("REST ")[1].split()[0]
                url = f"{rest_url}/0/public"
                params = {"pair": "XBTUSD", "since": "0", "count": "3"}
                first = httpx.get(f"{url}/Trades", params=params).json()["result"]
                params["since"] = first["last"]
                second = httpx.get(f"{url}/Trades", params=params).json()["result"]
                ohlc = httpx.get(f"{url}/OHLC", params={"pair": "XBTUSD"}).json()["result"]
            finally:
                process.terminate()
        assert second["XXBTZUSD"][0][6] == first["XXBTZUSD"][-1][6] + 1
        assert ohlc["XXBTZUSD"]
        assert all(row[7] > 0 for row in ohlc["XXBTZUSD"])
