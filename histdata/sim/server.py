"""The running simulator: REST and WebSocket listeners on loopback and the market clock.

``open_simulator(SimConfig(...))`` is what tests and ``histdata sim`` use::

    async with open_simulator(SimConfig(symbols=("BTC/USD",), trade_rate_per_s=200)) as sim:
        sim.rest_url      # http://127.0.0.1:PORT   (the REST client appends /0)
        sim.ws_url        # ws://127.0.0.1:PORT/v2
        sim.market.trades("BTC/USD")   # the ground truth so far
        sim.faults.close_ws(1006)      # misbehave on demand
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import trio

from histdata.httpserver import open_tcp_listener, serve_http
from histdata.sim.faults import Faults
from histdata.sim.market import Market
from histdata.sim.pairs import generate_pairs
from histdata.sim.rest import RestApi, RestStatistics
from histdata.sim.ws import WsHub, WsStatistics
from histdata.symbols import SymbolRegistry

__all__ = ["SimConfig", "SimStatistics", "Simulator", "open_simulator"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate and where.

    Attributes:
        seed: seeds the market and the probabilistic faults; same seed, same market.
        symbols: pairs in any Kraken spelling; resolved through ``registry``.
        pairs: how many generated pairs to simulate beside ``symbols`` (see
            :func:`histdata.sim.pairs.generate_pairs`); their names are in ``AssetPairs``.
            The k-th (from 0) trades at ``trade_rate_per_s / (k + 2)``: a few busy markets
            and a long, quiet tail, as across Kraken's listing.
        trade_rate_per_s: mean trades per second of each of ``symbols`` (thousands are fine).
        history_s: seconds of trades that exist before the simulator starts.
        host: the address to listen on (loopback: the simulator is not a public service).
        rest_port, ws_port: 0 picks free ports.
        tick_s: how often live trades are generated and sent (Kraken batches similarly).
        same_time_ratio: chance that a trade shares the previous trade's timestamp.
        nanosecond_times: trade times exact to the ns, as Kraken keeps them (WebSocket then
            prints them truncated to µs, REST as binary doubles); off, whole µs.
        rest_rate_per_s: enforce Kraken's public REST limit (about 1/s) with a token bucket
            of ``rest_burst``; None serves without limit.
        registry: where the pairs' names and precisions come from.
        own_process: the simulator has its process to itself (``histdata sim``, the
            benches): each second, everything allocated so far is moved out of the cycle
            collector's sight (``gc.freeze``). The trade history only grows, and full
            collections that scanned it paused the simulator for up to 0.3 s at 40,000
            trades/s: a stalling exchange, whose delay the benches then measured as the
            service's. Off in a shared process (tests), where it would keep cycles of the
            test's objects alive.
    """

    seed: int = 1
    symbols: tuple[str, ...] = ("BTC/USD", "ETH/USD")
    pairs: int = 0
    trade_rate_per_s: float = 5.0
    history_s: float = 3600.0
    host: str = "127.0.0.1"
    rest_port: int = 0
    ws_port: int = 0
    tick_s: float = 0.02
    same_time_ratio: float = 0.05
    nanosecond_times: bool = False
    rest_rate_per_s: float | None = None
    rest_burst: int = 20
    registry: SymbolRegistry = field(default_factory=SymbolRegistry.shipped)
    own_process: bool = False

    def __post_init__(self) -> None:
        if self.trade_rate_per_s <= 0 or self.history_s < 0 or self.tick_s <= 0:
            raise ValueError("trade_rate_per_s and tick_s must be > 0, history_s >= 0")
        if not self.symbols and self.pairs <= 0:
            raise ValueError("simulate at least one symbol")
        if self.pairs < 0:
            raise ValueError(f"pairs must be >= 0, got {self.pairs}")


@dataclass(frozen=True, slots=True)
class SimStatistics:
    """What the simulator has done: trades made, REST and WebSocket traffic."""

    trades: dict[str, int]
    paused: bool
    rest: RestStatistics
    ws: WsStatistics


class Simulator:
    """A running simulator; see :func:`open_simulator`. Attributes are read-only by intent.

    Attributes:
        config: what was asked for.
        market: the ground truth (``market.trades(symbol)``, ``market.candles(symbol)``;
            ``market.symbols`` lists every simulated pair, generated ones included).
        faults: switches for misbehaviour, effective immediately.
        rest_url: base URL of the REST API (``http://host:port``).
        ws_url: URL of the WebSocket v2 API (``ws://host:port/v2``).
    """

    def __init__(
        self, config: SimConfig, market: Market, faults: Faults, rest: RestApi, ws: WsHub
    ) -> None:
        self.config = config
        self.market = market
        self.faults = faults
        self.rest_url = ""
        self.ws_url = ""
        self._rest = rest
        self._ws = ws
        self._paused = False

    def pause_trading(self) -> None:
        """Stop making trades: the ground truth stays fixed (connections stay open)."""
        self._paused = True

    def resume_trading(self) -> None:
        """Make trades again from now on, without a burst for the paused time."""
        if self._paused:
            self.market.restart_at(time.time_ns())
            self._paused = False

    def statistics(self) -> SimStatistics:
        """Trades per symbol so far, pause state, REST and WebSocket counters."""
        trades = {symbol: len(book.trades) for symbol, book in self.market.symbols.items()}
        return SimStatistics(trades, self._paused, self._rest.statistics(), self._ws.statistics())

    async def _tick(self) -> None:
        """Advance the market with the wall clock and publish what happened."""
        frozen_at = time.monotonic()
        while True:
            await trio.sleep(self.config.tick_s)
            if not self._paused:
                self._ws.publish(self.market.advance(time.time_ns()))
            if self.config.own_process and time.monotonic() - frozen_at >= 1.0:
                # The collection sees only the last second's objects (the rest is frozen):
                # their cyclic garbage (a closed connection's) is freed before the freeze.
                gc.collect()
                gc.freeze()
                frozen_at = time.monotonic()


@asynccontextmanager
async def open_simulator(config: SimConfig) -> AsyncIterator[Simulator]:
    """Start the simulator on ``config.host``; stop it when the block exits.

    Raises:
        UnknownSymbol: a configured symbol is not in ``config.registry``.
        OSError: a fixed port is taken.
    """
    infos = [config.registry.resolve(symbol) for symbol in config.symbols]
    rates = {info.symbol: config.trade_rate_per_s for info in infos}
    generated = generate_pairs(config.pairs, seed=config.seed, taken=[*config.registry, *infos])
    for rank, info in enumerate(generated):
        rates[info.symbol] = config.trade_rate_per_s / (rank + 2)
    market = Market(
        [*infos, *generated],
        seed=config.seed,
        rate_per_s=rates,
        start_ns=time.time_ns(),
        history_s=config.history_s,
        same_time_ratio=config.same_time_ratio,
        time_unit_ns=1 if config.nanosecond_times else 1000,
    )
    faults = Faults()
    rng = random.Random(config.seed)
    rest = RestApi(market, faults, rng, rate_per_s=config.rest_rate_per_s, burst=config.rest_burst)
    hub = WsHub(market, faults, rng)
    simulator = Simulator(config, market, faults, rest, hub)
    rest_listener = await open_tcp_listener(config.host, config.rest_port)
    ws_listener = await open_tcp_listener(config.host, config.ws_port)
    async with trio.open_nursery() as nursery:
        faults.attach(close=partial(hub.close_all, nursery=nursery), silence=hub.silence_all)
        await nursery.start(serve_http, rest.handle, [rest_listener])
        nursery.start_soon(trio.serve_listeners, hub.serve, [ws_listener])
        nursery.start_soon(simulator._tick)
        simulator.rest_url = f"http://{_address(rest_listener)}"
        simulator.ws_url = f"ws://{_address(ws_listener)}/v2"
        try:
            yield simulator
        finally:
            faults.attach(close=None, silence=None)
            nursery.cancel_scope.cancel()


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"{host}:{port}"
