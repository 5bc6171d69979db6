"""The supervised service tree behind ``histdata run``.

::

    root (one_for_one)
     ├─ storage      the connection pool (migrations at start); closes last
     ├─ live (rest_for_one)
     │    flusher ◀── batches ── buffer ◀── live.trades / live.candles ── feed
     ├─ rollup, gapfiller, backfiller, maintenance   (later issues; see _plug_in)
     └─ query        the read API, /healthz and /metrics on the Unix socket

The live supervisor starts its children consumer first (flusher, buffer, feed), so that the
reverse-order shutdown stops the feed first, lets the buffer drain into the flusher, and the
flusher write (or journal) everything before storage closes. Under ``rest_for_one`` a crashed
flusher also restarts the buffer and the feed; the channels belong to the service, not the
actors, so nothing queued is lost by any restart.

systemd: ``READY=1`` once the tree is up, ``WATCHDOG=1`` only while :meth:`Service.healthy`
holds (the flusher is idle or making progress, and the database is reachable or the journal
is taking the batches), ``STOPPING=1`` when a graceful stop begins.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
import trio

from histdata.actors.backfiller import Backfiller
from histdata.actors.buffer import Batch, Buffer, LiveItem, live_weight
from histdata.actors.feed import CatchUpQueue, Feed
from histdata.actors.flusher import Flusher
from histdata.actors.gapfiller import GapFiller
from histdata.actors.hub import LiveHub
from histdata.actors.journal import Journal
from histdata.actors.maintenance import MaintenanceActor
from histdata.actors.query import QueryApp
from histdata.actors.rollup import RollupActor
from histdata.config import Config
from histdata.errors import DatabaseUnavailable
from histdata.kraken import KrakenRest, RateLimiter, open_kraken_rest
from histdata.model import Candle, datetime_to_ns
from histdata.storage import Storage, open_storage
from histdata.supervisor import (
    Channel,
    ChildSpec,
    Overflow,
    Restart,
    Strategy,
    Supervisor,
    current_child_stopping,
    systemd,
    watch_signals,
)
from histdata.symbols import SymbolRegistry
from histdata.telemetry import TelemetrySources, prometheus_text, status_snapshot
from histdata.timeutil import parse_time

__all__ = ["Service", "StorageActor"]

_log = structlog.get_logger("histdata.service", actor="service")
# Batches in flight between buffer and flusher: enough to keep the flusher busy, small enough
# that the buffer's input channel (with its overflow policy) is where a backlog builds up.
_BATCH_QUEUE = 4
# A flusher that has neither written nor journaled for this long with work queued is stuck.
_STALL_S = 60.0


class StorageActor:
    """Holds the open :class:`Storage` for the other actors while it runs.

    :meth:`get` raises :class:`DatabaseUnavailable` while storage is not open (starting,
    restarting after a crash, or closed at shutdown).
    """

    def __init__(self, conninfo: str, config: Config, registry: SymbolRegistry) -> None:
        self._conninfo = conninfo
        self._config = config
        self._registry = registry
        self.storage: Storage | None = None

    def get(self) -> Storage:
        """The open Storage; raises :class:`DatabaseUnavailable` if there is none."""
        if self.storage is None:
            raise DatabaseUnavailable("storage is not open")
        return self.storage

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the pool (migrating the schema), report started, close it when asked to stop."""
        stopping = current_child_stopping()
        db = self._config.database
        async with open_storage(
            self._conninfo,
            registry=self._registry,
            pool_min=db.pool_min,
            pool_max=db.pool_max,
            statement_timeout_s=db.statement_timeout_s,
            connect_timeout_s=db.connect_timeout_s,
        ) as storage:
            self.storage = storage
            task_status.started()
            try:
                await stopping.wait()
            finally:
                self.storage = None


class Service:
    """The whole ``histdata run`` process minus the command line (see the module docs).

    ``conninfo`` is a libpq connection string (the embedded server's, or the configured
    URL's). Construct it inside a trio run (channels need trio); call :meth:`run`.
    """

    def __init__(
        self, config: Config, conninfo: str, *, registry: SymbolRegistry | None = None
    ) -> None:
        self.config = config
        self.registry = registry or SymbolRegistry.shipped()
        self.started_at = time.time()
        live = config.live
        data_dir = config.service.data_path
        self.journal = Journal(data_dir / "journal", max_bytes=live.journal_max_mb * 1024 * 1024)
        policy = Overflow(live.overflow)
        self.trades: Channel[LiveItem] = Channel(
            "live.trades",
            live.buffer_capacity,
            policy,
            spill=self.journal.spill_sink(self.loss) if policy is Overflow.SPILL else None,
            weight=live_weight,
        )
        # Candle updates supersede each other; under a drop or spill policy the oldest update
        # is the one to lose (it is what a later update of the same minute replaces).
        self.candles: Channel[Candle] = Channel(
            "live.candles",
            max(1000, live.buffer_capacity // 10),
            Overflow.BLOCK if policy is Overflow.BLOCK else Overflow.DROP_OLDEST,
        )
        self.batches: Channel[Batch] = Channel(
            "live.batches", _BATCH_QUEUE, Overflow.BLOCK, weight=len
        )
        self.catch_up = CatchUpQueue()
        self.hub = LiveHub(queue=config.query.stream_queue)
        self.rest: KrakenRest | None = None
        self.rollup: RollupActor | None = None
        self.gapfiller: GapFiller | None = None
        self.backfiller: Backfiller | None = None
        self.maintenance: MaintenanceActor | None = None
        self.storage_actor = StorageActor(conninfo, config, self.registry)
        timeout = config.service.shutdown_timeout_s
        self.flusher = Flusher(
            self.batches,
            self.storage_actor.get,
            self.journal,
            retry_s=live.flush_retry_s,
            group_trades=max(live.batch_size, 5000),
            stop_write_budget_s=0.3 * timeout,
        )
        self.buffer = Buffer(
            self.trades,
            self.candles,
            self.batches,
            batch_size=live.batch_size,
            batch_age_s=live.batch_age_s,
            loss=self.loss,
            fallback=self.journal.append_nowait,
            stop_send_budget_s=0.1 * timeout,
        )
        kraken = config.kraken
        self.feed = Feed(
            kraken.ws_url,
            kraken.symbols,
            self.registry,
            self.trades,
            self.candles,
            catch_up=self.catch_up,
            loss=self.loss,
            publish=self.hub,
            stale_after_s=kraken.ws_stale_after_s,
            ping_interval_s=kraken.ws_ping_interval_s,
        )
        self.live = Supervisor(
            "live",
            [
                ChildSpec("flusher", self.flusher.run, shutdown_timeout_s=0.45 * timeout),
                ChildSpec("buffer", self.buffer.run, shutdown_timeout_s=0.15 * timeout),
                ChildSpec("feed", self.feed.run, shutdown_timeout_s=0.1 * timeout),
            ],
            strategy=Strategy.REST_FOR_ONE,
        )
        self.root = Supervisor(
            "root",
            [
                ChildSpec("storage", self.storage_actor.run, shutdown_timeout_s=0.1 * timeout),
                self.live.child_spec(),
                *self._plug_in(timeout),
            ],
            strategy=Strategy.ONE_FOR_ONE,
        )
        self.telemetry = TelemetrySources(
            supervisor=self.root,
            feed=self.feed,
            buffer=self.buffer,
            flusher=self.flusher,
            journal=self.journal,
            storage=lambda: self.storage_actor.storage,
            # Adapter until healthy() itself returns its reasons (the lead's change).
            healthy=lambda: [] if self.healthy() else ["live path unhealthy"],
            started_at=self.started_at,
            extra=self._extra_statistics,
        )
        self._stopping = False

    # -- the actors beside the live path -------------------------------------------------------

    def _plug_in(self, timeout: float) -> list[ChildSpec]:
        """The actors beside the live path, built when they start (they need the open
        Storage, which the storage child opens first)."""
        small = 0.05 * timeout
        specs = [
            ChildSpec("rollup", self._run_rollup, shutdown_timeout_s=small),
            ChildSpec("gapfiller", self._run_gapfiller, shutdown_timeout_s=small),
        ]
        if self.config.backfill.enabled:
            # Transient: a backfill that finished is done, not restarted.
            specs.append(
                ChildSpec(
                    "backfiller",
                    self._run_backfiller,
                    restart=Restart.TRANSIENT,
                    shutdown_timeout_s=small,
                )
            )
        specs += [
            ChildSpec("maintenance", self._run_maintenance, shutdown_timeout_s=small),
            ChildSpec("query", self._run_query, shutdown_timeout_s=small),
        ]
        return specs

    def _rest(self) -> KrakenRest:
        if self.rest is None:
            raise RuntimeError("the Kraken REST client opens in Service.run")
        return self.rest

    async def _run_rollup(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.rollup = RollupActor(
            self.storage_actor.get(), interval_s=self.config.rollup.interval_s
        )
        await self.rollup.run(task_status=task_status)

    async def _run_maintenance(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.maintenance = MaintenanceActor(self.storage_actor.get(), self.config.maintenance)
        await self.maintenance.run(task_status=task_status)

    async def _run_gapfiller(self, *, task_status: trio.TaskStatus[None]) -> None:
        gapfill = self.config.gapfill
        if not gapfill.enabled:
            await self._log_catch_ups(task_status=task_status)
            return
        self.gapfiller = GapFiller(
            self.storage_actor.get(),
            self._rest(),
            self.feed.symbols,
            interval_s=gapfill.interval_s,
            lookback=timedelta(days=gapfill.lookback_days),
        )
        await self.gapfiller.run(self.catch_up, task_status=task_status)

    async def _run_backfiller(self, *, task_status: trio.TaskStatus[None]) -> None:
        since = self.config.backfill.since
        self.backfiller = Backfiller(
            self.storage_actor.get(),
            self._rest(),
            self.feed.symbols,
            since_ns=datetime_to_ns(parse_time(since)) if since else 0,
        )
        await self.backfiller.run(task_status=task_status)

    async def _log_catch_ups(self, *, task_status: trio.TaskStatus[None]) -> None:
        """With [gapfill] disabled, reconnect catch-ups are only logged (the hole stays)."""
        log = _log.bind(actor="gapfiller")
        stopping = current_child_stopping()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when, stopping, nursery.cancel_scope)
            while True:
                symbol = await self.catch_up.receive()
                log.warning("reconnect hole not repaired: [gapfill] is disabled", symbol=symbol)

    async def _run_query(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The read API (:class:`~histdata.actors.query.QueryApp`) on the Unix socket."""
        app = QueryApp(
            self.storage_actor.get(),
            self.registry,
            hub=self.hub,
            status=self.status,
            metrics=self.metrics,
            stream_queue=self.config.query.stream_queue,
        )

        stopping = current_child_stopping()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when, stopping, nursery.cancel_scope)
            await nursery.start(app.serve, Path(self.config.query.socket))
            task_status.started()

    def _extra_statistics(self) -> dict[str, Any]:
        found: dict[str, Any] = {"hub": self.hub.statistics()}
        for name in ("rollup", "gapfiller", "backfiller", "maintenance"):
            actor = getattr(self, name)
            if actor is not None:
                found[name] = actor.statistics()
        return found

    # -- state --------------------------------------------------------------------------------

    def loss(self) -> int:
        """Every item lost on the live path so far (channel drops and journal drops)."""
        return (
            self.trades.statistics().dropped
            + self.candles.statistics().dropped
            + self.journal.dropped
        )

    def healthy(self) -> bool:
        """True while the live path is up and the flusher is idle or making progress."""
        children = {c.name: c.state for c in self.live.statistics().children}
        if any(state != "running" for state in children.values()):
            return False
        return self.flusher.healthy(stall_s=_STALL_S)

    def status(self) -> dict[str, Any]:
        """The snapshot served at ``/healthz`` (see :func:`histdata.telemetry.status_snapshot`)."""
        return status_snapshot(self.telemetry)

    def metrics(self) -> bytes:
        """Prometheus text for ``/metrics``."""
        return prometheus_text(self.telemetry)

    def shutdown(self) -> None:
        """Begin a graceful stop (idempotent): tell systemd, stop the tree in reverse order."""
        if not self._stopping:
            self._stopping = True
            systemd.stopping()
            _log.info("graceful shutdown", deadline_s=self.config.service.shutdown_timeout_s)
        self.root.shutdown()

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the tree until :meth:`shutdown` (or SIGTERM/SIGINT when ``handle_signals``).

        Raises :class:`~histdata.supervisor.SupervisorEscalation` when the root gives up.
        """
        kraken = self.config.kraken
        limiter = RateLimiter(rate_per_s=kraken.rest_rate_per_s, burst=kraken.rest_burst)
        async with (
            open_kraken_rest(
                kraken.rest_url, self.registry, limiter, timeout_s=kraken.request_timeout_s
            ) as rest,
            trio.open_nursery() as nursery,
        ):
            self.rest = rest
            if handle_signals:
                await nursery.start(watch_signals, self.shutdown)
            await nursery.start(self._run_root, nursery.cancel_scope)
            systemd.ready()
            systemd.status(f"recording {', '.join(self.feed.symbols)}")
            _log.info("service started", symbols=self.feed.symbols)
            nursery.start_soon(self._watchdog)
            task_status.started()
        await self.journal.aclose()
        _log.info("service stopped", journal_bytes=self.journal.bytes)

    async def _run_root(
        self, helpers: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run the root supervisor; when it returns, stop the signal watcher and watchdog."""
        try:
            await self.root.run(task_status=task_status)
        finally:
            helpers.cancel()

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval_s()
        if interval is None:
            return
        while True:
            if self.healthy():
                systemd.watchdog()
            else:
                _log.warning("unhealthy: withholding the systemd watchdog ping")
            await trio.sleep(interval / 3)


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
