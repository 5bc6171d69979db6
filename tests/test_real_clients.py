"""Kraken clients nobody here wrote, unmodified, against `histdata sim`.

A simulator written from the same reading of Kraken's docs as our client would encode a
misreading on both sides; ccxt and python-kraken-sdk were written (and are used daily)
against the real Kraken, so whatever they reject is a simulator bug. Both run with their
default options; the only change is the base URL. The simulator runs as the `histdata sim`
command, and a guard refuses every connection that is not to loopback, so these tests pass
offline and prove that neither client calls out.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import ccxt  # type: ignore[import-untyped]  # ccxt ships no type information
import pytest
from kraken.spot import SpotWSClient

_RATE = 5.0  # trades/s per pair: 600 s of history is three pages of 1000
_HISTORY_S = 600


class _Urls:
    def __init__(self, rest: str, ws: str) -> None:
        self.rest = rest
        self.ws = ws


@pytest.fixture(scope="module")
def sim() -> Iterator[_Urls]:
    command = [sys.executable, "-m", "histdata.cli", "sim", "--rest-port", "0", "--ws-port", "0"]
    command += ["--symbols", "BTC/USD,ETH/USD", "--pairs", "20", "--rate", str(_RATE)]
    command += ["--history-s", str(_HISTORY_S), "--rest-limit", "0", "--log-level", "warning"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            rest = line.split("REST ")[1].split()[0]
            ws = line.split("WebSocket ")[1].split()[0]
            yield _Urls(rest, ws)
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuse (and record) every connection to anything but loopback."""
    refused: list[object] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            refused.append(address)
            raise OSError(f"test guard: no network, refused {address!r}")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield refused
    assert refused == []


@pytest.fixture(scope="module")
def exchange(sim: _Urls) -> Any:
    # One instance for the module: ccxt spaces its calls by its default 1 s rate limit, and
    # loading the markets once keeps the module to a few dozen seconds.
    kraken = ccxt.kraken()
    kraken.urls["api"]["public"] = sim.rest
    return kraken


class TestCcxt:
    def test_load_markets(self, exchange: Any) -> None:
        """ccxt loads every simulated pair from Assets and AssetPairs under its own names."""
        markets = exchange.load_markets()
        assert len(markets) == 22
        btc = markets["BTC/USD"]
        assert (btc["id"], btc["altname"], btc["wsId"]) == ("XXBTZUSD", "XBTUSD", "XBT/USD")
        assert btc["active"] is True
        assert btc["precision"]["price"] == 0.1
        assert btc["taker"] == 0.0026
        assert btc["limits"]["amount"]["min"] > 0

    def test_fetch_trades_pages_by_since(self, exchange: Any) -> None:
        """Paging by since (ms) reaches every trade, ids 1, 2, 3… without a hole."""
        started_ms = exchange.milliseconds()
        first = exchange.fetch_trades("BTC/USD", since=0, limit=1000)
        assert first[0]["id"] == "1"
        seen = {trade["id"]: trade for trade in first}
        page, pages = first, 1
        # The market keeps trading: page until the trades of the test's start are reached.
        while page[-1]["timestamp"] < started_ms and pages < 20:
            page = exchange.fetch_trades("BTC/USD", since=page[-1]["timestamp"], limit=1000)
            seen.update((trade["id"], trade) for trade in page)
            pages += 1
        ids = sorted(int(key) for key in seen)
        assert pages >= 3
        assert ids == list(range(1, ids[-1] + 1))
        assert all(t["side"] in ("buy", "sell") and t["price"] > 0 for t in seen.values())

    @pytest.mark.parametrize("timeframe", ["1m", "5m", "1h"])
    def test_fetch_ohlcv(self, exchange: Any, timeframe: str) -> None:
        """Candles come back in time order, aligned to the timeframe, with a volume."""
        width_ms = exchange.parse_timeframe(timeframe) * 1000
        candles = exchange.fetch_ohlcv("ETH/USD", timeframe)
        assert candles
        assert all(row[0] % width_ms == 0 for row in candles)
        assert [row[0] for row in candles] == sorted({row[0] for row in candles})
        assert all(row[3] <= row[1] <= row[2] and row[5] >= 0 for row in candles)

    def test_fetch_ohlcv_since(self, exchange: Any) -> None:
        """since (ms) trims the candles to those from it on."""
        candles = exchange.fetch_ohlcv("BTC/USD", "1m")
        since = candles[-5][0]
        later = exchange.fetch_ohlcv("BTC/USD", "1m", since=since)
        assert later[0][0] == since

    def test_fetch_ticker(self, exchange: Any) -> None:
        """The ticker has a last price between its bid and ask, and 24-hour figures."""
        ticker = exchange.fetch_ticker("BTC/USD")
        assert ticker["bid"] <= ticker["last"] <= ticker["ask"]
        assert ticker["baseVolume"] > 0
        assert ticker["low"] <= ticker["high"]

    def test_fetch_order_book(self, exchange: Any) -> None:
        """The book has sorted bids below sorted asks, as many as asked for."""
        book = exchange.fetch_order_book("BTC/USD", limit=10)
        bids, asks = book["bids"], book["asks"]
        assert (len(bids), len(asks)) == (10, 10)
        assert bids[0][0] < asks[0][0]
        assert [p for p, *_ in bids] == sorted((p for p, *_ in bids), reverse=True)
        assert [p for p, *_ in asks] == sorted(p for p, *_ in asks)

    def test_generated_pair_trades(self, exchange: Any) -> None:
        """A generated pair is a market like any other for ccxt."""
        markets = exchange.load_markets()
        name = next(symbol for symbol in markets if not symbol.startswith(("BTC/", "ETH/")))
        assert exchange.fetch_trades(name, limit=5)


class TestPythonKrakenSdk:
    def test_subscribe_trade_and_ohlc(self, sim: _Urls) -> None:
        """The SDK's v2 client subscribes to trade and ohlc and receives both."""
        messages: list[dict[str, Any]] = []

        async def run() -> None:
            async def on_message(message: dict[str, Any]) -> None:
                messages.append(message)

            # The SDK appends Kraken's "/v2" path to the URL it is given.
            base = sim.ws.removesuffix("/v2")
            client = SpotWSClient(callback=on_message, ws_url=base, rest_url=sim.rest)
            await client.start()
            try:
                await client.subscribe(params={"channel": "trade", "symbol": ["BTC/USD"]})
                await client.subscribe(
                    params={"channel": "ohlc", "symbol": ["ETH/USD"], "interval": 5}
                )
                for _ in range(200):
                    channels = {m.get("channel") for m in messages}
                    if {"trade", "ohlc"} <= channels:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await client.close()

        asyncio.run(run())
        acks = [m for m in messages if m.get("method") == "subscribe"]
        assert [a["success"] for a in acks] == [True, True]
        trades = [row for m in messages if m.get("channel") == "trade" for row in m["data"]]
        candles = [row for m in messages if m.get("channel") == "ohlc" for row in m["data"]]
        assert trades
        assert all(row["symbol"] == "BTC/USD" for row in trades)
        assert candles
        assert all(row["interval"] == 5 for row in candles)
