"""The query node behind ``histdata serve``: the read API alone.

::

    node (one_for_one)
     ├─ query     the read API, /healthz and /metrics on the Unix socket
     ├─ stream    /v1/stream's source: trades any collector commits (see below)
     └─ metrics   [metrics] listen, when set

No migrations, no writes, no Kraken: storage opens ``read_only`` (every transaction READ ONLY,
the schema version checked with one SELECT and refused when it is older or newer than the
code), reads run under ``[database] readonly_role`` when the user may ``SET ROLE`` to it, so
a node runs on a hot standby and as a user with only USAGE and SELECT.

**The live stream.** Collectors send ``NOTIFY histdata_trades`` with the symbol ids of every
committed trade batch (:data:`~histdata.storage.fleet.TRADES_CHANNEL`); on the primary the
node ``LISTEN``\\s and reads each notified symbol's new rows by key (everything after the last
trade it published), so ``/v1/stream`` carries the trades of every collector within a fraction
of a second of their commit. A hot standby cannot ``LISTEN``; there the node polls the same
read every ``poll_s`` instead, and the stream trails the primary by that plus the replication
lag. Only trades are streamed (candle updates come from a collector's own feed).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import structlog
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from histdata import __version__, metrics_listener
from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.config import Config
from histdata.errors import DatabaseUnavailable
from histdata.model import Trade
from histdata.storage import Storage
from histdata.storage.fleet import TRADES_CHANNEL, TradeKey, symbol_ids, trades_after
from histdata.storage.symbol_table import stored_symbols
from histdata.storage.trades import last_trade
from histdata.supervisor import ChildSpec, Strategy, Supervisor, cancel_when, current_child_stopping
from histdata.symbols import SymbolRegistry
from histdata.telemetry import Latencies

__all__ = ["QueryNode"]

_log = structlog.get_logger("histdata.querynode", actor="query")
# Rows read per symbol per notification (a burst beyond it is read on the next round).
_PAGE = 10_000


class QueryNode:
    """``histdata serve`` minus the command line: run :meth:`run` with an open read-only
    :class:`Storage` (see the module docs)."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        conninfo: str,
        *,
        registry: SymbolRegistry | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.config = config
        self.storage = storage
        self.registry = registry or storage.registry
        self.started_at = time.time()
        self.hub = LiveHub(queue=config.query.stream_queue)
        self.latencies = Latencies()
        self.stream_mode = "starting"  # "listen" (primary), "poll" (standby)
        self.stream_ready = trio.Event()  # set once the relay has chosen its mode
        self.stream_rounds = 0
        self.stream_errors = 0
        self._conninfo = conninfo
        self._poll_s = poll_s
        self._last: dict[str, TradeKey | None] = {}
        self.app = QueryApp(
            storage,
            self.registry,
            hub=self.hub,
            status=self.status,
            metrics=self.metrics,
            stream_queue=config.query.stream_queue,
            max_connections=config.query.max_connections,
            header_timeout_s=config.query.header_timeout_s,
            latencies=self.latencies,
        )
        small = 0.05 * config.service.shutdown_timeout_s
        specs = [
            ChildSpec("query", self._run_query, shutdown_timeout_s=small),
            ChildSpec("stream", self._run_stream, shutdown_timeout_s=small),
        ]
        if config.metrics.listen:
            specs.append(
                ChildSpec(
                    "metrics",
                    partial(metrics_listener.run, config.metrics.listen, self.metrics),
                    shutdown_timeout_s=small,
                )
            )
        self.root = Supervisor("node", specs, strategy=Strategy.ONE_FOR_ONE)

    # -- state --------------------------------------------------------------------------------

    def health_reasons(self) -> list[str]:
        """Why the node is not serving; empty when healthy."""
        reasons = [
            f"actor {c.name} is {c.state}"
            for c in self.root.statistics().children
            if c.state != "running"
        ]
        if self.storage.statistics().pool_size == 0:
            reasons.append("the database is unreachable")
        return reasons

    def status(self) -> dict[str, Any]:
        """The snapshot served at ``/healthz``: ``"role": "query"`` tells it from a collector's."""
        reasons = self.health_reasons()
        storage = self.storage.statistics()
        return {
            "healthy": not reasons,
            "unhealthy_reasons": reasons,
            "service": {
                "role": "query",
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 3),
                "healthy": not reasons,
            },
            "supervisor": _plain(self.root.statistics()),
            "storage": _plain(storage),
            "read_role": self.storage.read_role,
            "query": _plain(self.app.statistics()),
            "stream": {
                "mode": self.stream_mode,
                "rounds": self.stream_rounds,
                "errors": self.stream_errors,
                "hub": _plain(self.hub.statistics()),
            },
        }

    def metrics(self) -> bytes:
        """Prometheus text for ``/metrics``."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_NodeCollector(self))
        return bytes(generate_latest(registry))

    def shutdown(self) -> None:
        """Begin a graceful stop (idempotent)."""
        self.root.shutdown()

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until :meth:`shutdown`; reports started once the socket listens."""
        await self.root.run(task_status=task_status)

    async def _run_query(self, *, task_status: trio.TaskStatus[None]) -> None:
        stopping = current_child_stopping()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when, stopping, nursery.cancel_scope)
            await nursery.start(self.app.serve, Path(self.config.query.socket))
            task_status.started()

    async def _run_stream(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Relay committed trades to the hub: LISTEN on a primary, poll on a standby."""
        stopping = current_child_stopping()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when, stopping, nursery.cancel_scope)
            await self._start_positions()
            try:
                conn = await trio.to_thread.run_sync(
                    partial(psycopg.connect, self._conninfo, autocommit=True)
                )
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(f"stream listener: {exc}".strip()) from exc
            try:
                try:
                    await trio.to_thread.run_sync(conn.execute, f"LISTEN {TRADES_CHANNEL}")
                    self.stream_mode = "listen"
                except psycopg.errors.ReadOnlySqlTransaction:  # "cannot execute LISTEN during
                    # recovery": a hot standby
                    self.stream_mode = "poll"
                self.stream_ready.set()
                _log.info("live stream relay started", mode=self.stream_mode)
                while True:
                    if self.stream_mode == "listen":
                        ids = await trio.to_thread.run_sync(_notified, conn, 0.2)
                        symbols = await self._symbols_of(ids) if ids else []
                    else:
                        await trio.sleep(self._poll_s)
                        symbols = list(self._last)
                    for symbol in symbols:
                        await self._relay(symbol)
                    self.stream_rounds += 1
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(conn.close)

    async def _start_positions(self) -> None:
        """Stream from now on: every stored symbol's newest trade is where its stream starts."""
        for info in await stored_symbols(self.storage):
            last = await last_trade(self.storage, info.symbol)
            self._last[info.symbol] = _key(last) if last is not None else None

    async def _symbols_of(self, ids: set[int]) -> list[str]:
        names = await symbol_ids(self.storage)
        found = [names[sid] for sid in sorted(ids) if sid in names]
        for symbol in found:
            self._last.setdefault(symbol, None)
        return found

    async def _relay(self, symbol: str) -> None:
        while True:
            try:
                trades = await trades_after(self.storage, symbol, self._last.get(symbol), _PAGE)
            except DatabaseUnavailable as exc:
                self.stream_errors += 1
                _log.warning("live stream read failed", symbol=symbol, error=str(exc))
                return
            if not trades:
                return
            self._last[symbol] = _key(trades[-1])
            self.hub.publish_trades(trades)
            if len(trades) < _PAGE:
                return


def _key(trade: Trade) -> TradeKey:
    return (trade.time, trade.trade_id, trade.seq)


def _notified(conn: psycopg.Connection[Any], wait_s: float) -> set[int]:
    """Symbol ids named by the first notification within ``wait_s`` (none: empty), and by
    any others already received with it."""
    ids: set[int] = set()
    for note in conn.notifies(timeout=wait_s, stop_after=1):
        for part in note.payload.split(","):
            with suppress(ValueError):
                ids.add(int(part))
    return ids


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


class _NodeCollector(Collector):
    def __init__(self, node: QueryNode) -> None:
        self._node = node

    def collect(self) -> Iterator[Any]:
        node = self._node
        reasons = node.health_reasons()
        yield GaugeMetricFamily(
            "histdata_healthy", "1 while the node is healthy, else 0", value=float(not reasons)
        )
        yield InfoMetricFamily(
            "histdata_build",
            "the histdata version",
            value={"version": __version__, "role": "query"},
        )
        yield GaugeMetricFamily(
            "histdata_start_time_seconds", "Unix time the node started", value=node.started_at
        )
        app = node.app
        yield CounterMetricFamily(
            "histdata_query_requests", "requests answered", value=app.requests
        )
        yield CounterMetricFamily(
            "histdata_query_rejected", "requests rejected (400/404)", value=app.rejected
        )
        yield CounterMetricFamily(
            "histdata_query_failures", "reads failed (database unavailable)", value=app.failures
        )
        hub = node.hub.statistics()
        yield GaugeMetricFamily(
            "histdata_stream_subscribers", "live stream clients", value=hub.subscribers
        )
        yield CounterMetricFamily(
            "histdata_stream_trades_published", "trades relayed", value=hub.trades_published
        )
        storage = node.storage.statistics()
        yield GaugeMetricFamily("histdata_storage_pool_size", "pool size", value=storage.pool_size)
        yield CounterMetricFamily("histdata_storage_queries", "queries", value=storage.queries)
        yield CounterMetricFamily(
            "histdata_storage_failures", "queries failed", value=storage.failures
        )
        yield from node.latencies.collect()
