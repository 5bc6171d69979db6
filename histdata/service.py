"""The supervised service tree behind ``histdata run``.

::

    root (one_for_one)
     ├─ database (rest_for_one)
     │    ├─ storage      the connection pool (migrations at start); closes last
     │    └─ db-actors (one_for_one)
     │         rollup, gapfiller, backfiller, maintenance
     │         heartbeat  this collector's row in `collectors` (histdata status --fleet)
     │         query      the read API, /healthz and /metrics on the Unix socket
     │         ui         the coverage map (when [ui] listen is set)
     ├─ live (rest_for_one)
     │    flusher ◀── batches ── buffer ◀── live.trades / live.candles ── feed
     │                                              feeds (one_for_one): feed-0, feed-1 …
     ├─ pairs        AssetPairs into the symbols table, the feeds' subscriptions to match
     └─ metrics      the TCP /metrics listener (when [metrics] listen is set)

The live supervisor starts its children consumer first (flusher, buffer, feed), so that the
reverse-order shutdown stops the feed first, lets the buffer drain into the flusher, and the
flusher write (or journal) everything before storage closes. Under ``rest_for_one`` a crashed
flusher also restarts the buffer and the feed; the channels belong to the service, not the
actors, so nothing queued is lost by any restart.

**The database branch.** Everything that works only with the database hangs under one
supervisor with the storage actor first: a restarted storage actor (a new pool) restarts them
all, and each of them reaches the pool through the storage actor's getter rather than a
Storage it captured, so none holds a closed pool. Among themselves they restart one by one.
The live branch is not under it: the flusher takes the same getter and journals whatever
storage does, so an outage or a storage restart never stops recording.

**Symbols.** Before the tree starts, :class:`~histdata.actors.pairs.PairsRefresher` fetches
Kraken's AssetPairs (else loads the ``symbols`` table, else keeps the shipped pairs) and
expands ``[kraken] symbols`` (``"*"``, ``"*/USD"``…) into the feed group's subscriptions,
``[kraken] symbols_per_connection`` per WebSocket connection
(:class:`~histdata.actors.feeds.FeedGroup`); it stores the answer once storage opens and
refreshes every ``[kraken] asset_pairs_refresh_s``, reconnecting the feeds when the set of
pairs changed.

**Without a database.** The storage child reports started at once and opens the pool (and
migrates) in the background, retrying with backoff for as long as the database stays away:
the live path records into the disk journal meanwhile, the query socket answers ``/healthz``
and ``status``, and the actors that need the database wait for it. An unreachable database
never stops the service; a schema from a newer histdata does.

**Health and liveness are different things.** :meth:`Service.health_reasons` lists why the
service is not doing its job (the feed down longer than ``[kraken] feed_down_unhealthy_s``,
the database away, the journal dropping, a quarantined batch, a live actor not running):
``status`` exits 3 and ``/healthz`` answers 503 with them. The systemd watchdog is liveness:
``WATCHDOG=1`` keeps going while the process makes progress — journaling through an outage
counts — and stops only when the flusher is stuck with work queued, so systemd never kills a
service that is correctly riding out an outage. ``READY=1`` is sent once the tree is up,
``STOPPING=1`` when a graceful stop begins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from histdata import metrics_listener
from histdata.actors.backfiller import Backfiller
from histdata.actors.buffer import Batch, Buffer, LiveItem, live_weight
from histdata.actors.feed import CatchUpQueue, ConnectBudget, Feed
from histdata.actors.feeds import FeedGroup
from histdata.actors.flusher import Flusher
from histdata.actors.gapfiller import GapFiller
from histdata.actors.heartbeat import Heartbeat, collector_ident
from histdata.actors.hub import LiveHub
from histdata.actors.journal import Journal
from histdata.actors.maintenance import MaintenanceActor
from histdata.actors.pairs import PairsRefresher
from histdata.actors.query import QueryApp
from histdata.actors.rollup import RollupActor
from histdata.config import Config
from histdata.errors import DatabaseUnavailable
from histdata.kraken import KrakenRest, RateLimiter, open_kraken_rest
from histdata.model import Candle, datetime_to_ns
from histdata.storage import Storage, open_storage
from histdata.storage.fleet import host_budget
from histdata.storage.symbol_table import register_symbols
from histdata.supervisor import (
    Backoff,
    Channel,
    ChildSpec,
    Overflow,
    Restart,
    Strategy,
    Supervisor,
    cancel_when,
    current_child_stopping,
    systemd,
    watch_signals,
)
from histdata.symbols import SymbolRegistry
from histdata.telemetry import Latencies, TelemetrySources, prometheus_text, status_snapshot
from histdata.timeutil import parse_time
from histdata.ui import server as ui_server

__all__ = ["Service", "StorageActor"]

_log = structlog.get_logger("histdata.service", actor="service")
# Batches in flight between buffer and flusher: enough to keep the flusher busy, small enough
# that the buffer's input channel (with its overflow policy) is where a backlog builds up.
_BATCH_QUEUE = 4
# A flusher that has neither written nor journaled for this long with work queued is stuck.
_STALL_S = 60.0
# A drop on the live path keeps the service unhealthy for this long after it.
_RECENT_S = 60.0


class StorageActor:
    """Holds the open :class:`Storage` for the other actors while it runs.

    ``run`` reports started at once and opens the pool in the background, retrying with
    backoff while the database is unreachable (see the module docs). :meth:`get` raises
    :class:`DatabaseUnavailable` while storage is not open; :meth:`ready` waits for it.
    """

    def __init__(
        self,
        conninfo: str,
        config: Config,
        registry: SymbolRegistry,
        symbols: Callable[[], Sequence[str]],
    ) -> None:
        self._conninfo = conninfo
        self._config = config
        self._registry = registry
        self._symbols = symbols
        self.storage: Storage | None = None
        self._opened = trio.Event()
        self.attempts = 0
        self.last_error: str | None = None
        self.down_since: float | None = time.time()

    def get(self) -> Storage:
        """The open Storage; raises :class:`DatabaseUnavailable` if there is none."""
        if self.storage is None:
            raise DatabaseUnavailable(self.last_error or "storage is not open")
        return self.storage

    async def ready(self) -> Storage:
        """The open Storage, waiting until there is one."""
        while self.storage is None:
            await self._opened.wait()
        return self.storage

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the pool (migrating), retrying while the database is away; close it at stop.

        Reports started once the first attempt has opened storage, or has failed: with the
        database up the live path starts with storage ready (nothing is journaled for want
        of it), and with it down the service starts at once and records to the journal.

        Raises:
            SchemaError: the schema is from a newer histdata (retrying cannot help).
        """
        stopping = current_child_stopping()
        backoff = Backoff(0.5, 30.0)
        reported = False

        def report() -> None:
            nonlocal reported
            if not reported:
                reported = True
                task_status.started()

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when, stopping, scope)
                while True:
                    try:
                        await self._open_and_hold(stopping, report)
                        return
                    except DatabaseUnavailable as exc:
                        report()
                        self.attempts += 1
                        self.last_error = str(exc)
                        delay = backoff.next_delay()
                        log = _log.warning if self.attempts <= 3 else _log.debug
                        log(
                            "database unreachable; recording to the journal, retrying",
                            attempt=self.attempts,
                            retry_in_s=round(delay, 1),
                            error=str(exc),
                        )
                        await trio.sleep(delay)

    async def _open_and_hold(self, stopping: trio.Event, opened: Callable[[], None]) -> None:
        db = self._config.database
        async with open_storage(
            self._conninfo,
            registry=self._registry,
            pool_min=db.pool_min,
            pool_max=db.pool_max,
            statement_timeout_s=db.statement_timeout_s,
            connect_timeout_s=db.connect_timeout_s,
            reader_role=db.readonly_role,
        ) as storage:
            # Registered in their own committed transaction before any write uses them.
            await register_symbols(storage, self._symbols())
            self.storage = storage
            self.down_since = None
            self.last_error = None
            if self.attempts:
                _log.info("database reachable again; storage open", attempts=self.attempts)
            self._opened.set()
            opened()
            try:
                await stopping.wait()
            finally:
                self.storage = None
                self._opened = trio.Event()
                self.down_since = time.time()


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
        self._conninfo = conninfo
        live = config.live
        data_dir = config.service.data_path
        self.journal = Journal(data_dir / "journal", max_bytes=live.journal_max_mb * 1024 * 1024)
        policy = Overflow(live.overflow)
        self.trades: Channel[LiveItem] = Channel(
            "live.trades",
            live.buffer_capacity,
            policy,
            spill=self.journal.spill_sink(self.loss, database_up=lambda: self.flusher.database_up)
            if policy is Overflow.SPILL
            else None,
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
        self.heartbeat: Heartbeat | None = None
        # This collector's name in the fleet: its heartbeat row and the holder of its leases.
        self.ident = collector_ident()
        self.storage_actor = StorageActor(
            conninfo, config, self.registry, lambda: self.feed.symbols
        )
        timeout = config.service.shutdown_timeout_s
        self.latencies = Latencies()
        self.flusher = Flusher(
            self.batches,
            self.storage_actor.get,
            self.journal,
            retry_s=live.flush_retry_s,
            group_trades=max(live.batch_size, 5000),
            max_batch_trades=max(live.batch_size, live.max_batch_trades),
            writers=live.writers,
            stop_write_budget_s=0.3 * timeout,
            observe_write=self.latencies.write.observe,
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
        budget = ConnectBudget()  # Cloudflare's attempt limit is per IP: one for all feeds

        def make_feed() -> Feed:
            return Feed(
                kraken.ws_url,
                (),
                self.registry,
                self.trades,
                self.candles,
                catch_up=self.catch_up,
                loss=self.loss,
                publish=self.hub,
                stale_after_s=kraken.ws_stale_after_s,
                ping_interval_s=kraken.ws_ping_interval_s,
                connect_budget=budget,
            )

        self.feed = FeedGroup(
            make_feed,
            self.registry,
            per_connection=kraken.symbols_per_connection,
            shutdown_timeout_s=0.1 * timeout,
        )
        self.pairs = PairsRefresher(
            self._rest,
            lambda: self.storage_actor.storage,
            self.storage_actor.ready,
            self.registry,
            self.feed,
            kraken.symbols,
            interval_s=kraken.asset_pairs_refresh_s,
            # Start-up waits this long at most for AssetPairs before falling back to the
            # stored pairs: the live path must not be held up by a slow Kraken.
            fetch_timeout_s=min(kraken.request_timeout_s, 10.0),
        )
        self.database = Supervisor(
            "database",
            [
                ChildSpec("storage", self.storage_actor.run, shutdown_timeout_s=0.1 * timeout),
                Supervisor(
                    "db-actors", self._database_actors(timeout), strategy=Strategy.ONE_FOR_ONE
                ).child_spec(),
            ],
            strategy=Strategy.REST_FOR_ONE,
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
                self.database.child_spec(),
                self.live.child_spec(),
                ChildSpec("pairs", self.pairs.run, shutdown_timeout_s=0.05 * timeout),
                *self._metrics_listener(timeout),
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
            healthy=self.health_reasons,
            started_at=self.started_at,
            extra=self._extra_statistics,
            latencies=self.latencies,
        )
        self._stopping = False
        self._loss_seen = 0
        self._loss_changed_at: float | None = None

    # -- the actors beside the live path -------------------------------------------------------

    def _database_actors(self, timeout: float) -> list[ChildSpec]:
        """The actors that work only with the database, under the storage actor (see the
        module docs); each is built when it starts, once storage is open."""
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
            ChildSpec("heartbeat", self._run_heartbeat, shutdown_timeout_s=small),
            ChildSpec("query", self._run_query, shutdown_timeout_s=small),
        ]
        if self.config.ui.listen:
            specs.append(
                ChildSpec(
                    "ui",
                    partial(
                        ui_server.run, self.config.ui.listen, self.storage_actor.get, self.registry
                    ),
                    shutdown_timeout_s=small,
                )
            )
        return specs

    def _metrics_listener(self, timeout: float) -> list[ChildSpec]:
        if not self.config.metrics.listen:
            return []
        run = partial(metrics_listener.run, self.config.metrics.listen, self.metrics)
        return [ChildSpec("metrics", run, shutdown_timeout_s=0.05 * timeout)]

    def _rest(self) -> KrakenRest:
        if self.rest is None:
            raise RuntimeError("the Kraken REST client opens in Service.run")
        return self.rest

    async def _storage_when_open(self, task_status: trio.TaskStatus[None]) -> None:
        """Report started, then wait for storage: an actor that needs the database must not
        hold up the tree (or systemd's READY) while the database is away."""
        task_status.started()
        await self.storage_actor.ready()

    async def _run_rollup(self, *, task_status: trio.TaskStatus[None]) -> None:
        await self._storage_when_open(task_status)
        self.rollup = RollupActor(self.storage_actor.get, interval_s=self.config.rollup.interval_s)
        await self.rollup.run()

    async def _run_maintenance(self, *, task_status: trio.TaskStatus[None]) -> None:
        await self._storage_when_open(task_status)
        self.maintenance = MaintenanceActor(
            self.storage_actor.get, self.config.maintenance, holder=self.ident
        )
        await self.maintenance.run()

    async def _run_heartbeat(self, *, task_status: trio.TaskStatus[None]) -> None:
        await self._storage_when_open(task_status)
        self.heartbeat = Heartbeat(
            self.storage_actor.get,
            self.feed.symbols,
            lambda: self.flusher.statistics().last_progress_at,
            ident=self.ident,
        )
        await self.heartbeat.run()

    async def _run_gapfiller(self, *, task_status: trio.TaskStatus[None]) -> None:
        gapfill = self.config.gapfill
        if not gapfill.enabled:
            await self._log_catch_ups(task_status=task_status)
            return
        await self._storage_when_open(task_status)
        # A gap filler repairs a fixed list of symbols: when a refresh changes what the feeds
        # record, a new one takes over (repairs are idempotent; queued catch-ups stay queued).
        while True:
            symbols = self.feed.symbols
            self.gapfiller = GapFiller(
                self.storage_actor.get,
                self._rest(),
                symbols,
                interval_s=gapfill.interval_s,
                lookback=timedelta(days=gapfill.lookback_days),
                holder=self.ident,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_on_change, symbols, nursery.cancel_scope)
                await self.gapfiller.run(self.catch_up)
                nursery.cancel_scope.cancel()
            if self.feed.symbols == symbols:
                return  # it stopped because the service is stopping

    async def _cancel_on_change(self, symbols: tuple[str, ...], scope: trio.CancelScope) -> None:
        await self.feed.wait_changed(symbols)
        scope.cancel()

    async def _run_backfiller(self, *, task_status: trio.TaskStatus[None]) -> None:
        since = self.config.backfill.since
        await self._storage_when_open(task_status)
        self.backfiller = Backfiller(
            self.storage_actor.get,
            self._rest(),
            self.feed.symbols,
            since_ns=datetime_to_ns(parse_time(since)) if since else 0,
            holder=self.ident,
        )
        await self.backfiller.run()

    async def _log_catch_ups(self, *, task_status: trio.TaskStatus[None]) -> None:
        """With [gapfill] disabled, reconnect catch-ups are only logged (the hole stays)."""
        log = _log.bind(actor="gapfiller")
        stopping = current_child_stopping()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when, stopping, nursery.cancel_scope)
            while True:
                symbol = await self.catch_up.receive()
                log.warning("reconnect hole not repaired: [gapfill] is disabled", symbol=symbol)

    async def _run_query(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The read API (:class:`~histdata.actors.query.QueryApp`) on the Unix socket."""
        app = QueryApp(
            self.storage_actor.get,
            self.registry,
            hub=self.hub,
            status=self.status,
            metrics=self.metrics,
            stream_queue=self.config.query.stream_queue,
            max_connections=self.config.query.max_connections,
            header_timeout_s=self.config.query.header_timeout_s,
            latencies=self.latencies,
        )

        stopping = current_child_stopping()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when, stopping, nursery.cancel_scope)
            await nursery.start(app.serve, Path(self.config.query.socket))
            task_status.started()

    def _extra_statistics(self) -> dict[str, Any]:
        found: dict[str, Any] = {"hub": self.hub.statistics(), "pairs": self.pairs.statistics()}
        for name in ("rollup", "gapfiller", "backfiller", "maintenance", "heartbeat"):
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

    def health_reasons(self) -> list[str]:
        """Why the service is not doing its job right now; empty when healthy.

        Unhealthy: a live actor not running, the flusher stuck, the feed down for longer than
        ``[kraken] feed_down_unhealthy_s``, the database away (storage not open, or writes
        going to the journal), the journal dropping (until an append succeeds again), the
        live path dropping by its overflow policy (for a minute after the latest drop), any
        batch quarantined since the start (an operator must look at it).
        """
        now = time.time()
        reasons = [
            f"live actor {c.name} is {c.state}"
            for c in self.live.statistics().children
            if c.state != "running"
        ]
        if not self.alive():
            reasons.append(f"the flusher made no progress for {_STALL_S:.0f} s with work queued")
        feed = self.feed.statistics()
        down_for = now - feed.down_since if feed.down_since is not None else 0.0
        if down_for > self.config.kraken.feed_down_unhealthy_s:
            reasons.append(f"the live feed has been down for {down_for:.0f} s")
        storage = self.storage_actor
        if storage.storage is None:
            why = f": {storage.last_error}" if storage.last_error else ""
            reasons.append(f"the database is unreachable{why}")
        elif not self.flusher.statistics().database_up:
            reasons.append("the database is refusing writes; live data goes to the journal")
        journal = self.journal.statistics()
        if journal.failing:
            why = f": {journal.last_error}" if journal.last_error else ""
            reasons.append(
                f"the journal is dropping data ({self.journal.dropped} items lost so far){why}"
            )
        loss = self.loss()
        if loss != self._loss_seen:
            self._loss_seen, self._loss_changed_at = loss, now
        if self._loss_changed_at is not None and now - self._loss_changed_at < _RECENT_S:
            reasons.append(
                f"the live path is dropping data ({loss} items lost so far, the latest within"
                f" {_RECENT_S:.0f} s; [live] overflow = {self.config.live.overflow})"
            )
        quarantined = self.flusher.statistics().quarantined_batches
        if quarantined:
            reasons.append(
                f"{quarantined} batches were quarantined (journal/quarantine): see the log"
            )
        return reasons

    def healthy(self) -> bool:
        """True when :meth:`health_reasons` finds nothing wrong."""
        return not self.health_reasons()

    def alive(self) -> bool:
        """Liveness for the systemd watchdog: the flusher is idle or making progress.

        Journaling through a database outage is progress; a disconnected feed is not a
        reason to restart. Only a flusher stuck with work queued is.
        """
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
        # Kraken limits per IP: every histdata on this host draws from one budget.
        budget = host_budget(
            self.storage_actor.get, rate_per_s=kraken.rest_rate_per_s, burst=kraken.rest_burst
        )
        limiter = RateLimiter(
            rate_per_s=kraken.rest_rate_per_s, burst=kraken.rest_burst, shared=budget
        )
        async with (
            open_kraken_rest(
                kraken.rest_url, self.registry, limiter, timeout_s=kraken.request_timeout_s
            ) as rest,
            trio.open_nursery() as nursery,
        ):
            self.rest = rest
            await self.pairs.start(self._stored_registry)
            if handle_signals:
                await nursery.start(watch_signals, self.shutdown)
            await nursery.start(self._run_root, nursery.cancel_scope)
            systemd.ready()
            symbols, connections = self.feed.symbols, len(self.feed.feeds)
            systemd.status(f"recording {len(symbols)} pairs over {connections} connections")
            _log.info(
                "service started",
                symbols=len(symbols),
                connections=connections,
                first=symbols[:10],
            )
            nursery.start_soon(self._watchdog)
            task_status.started()
        await self.journal.aclose()
        _log.info("service stopped", journal_bytes=self.journal.bytes)

    async def _stored_registry(self) -> SymbolRegistry | None:
        """The registry in the ``symbols`` table, or None when the database is away (at
        start, while Kraken is unreachable; the storage child keeps retrying meanwhile)."""
        db = self.config.database
        try:
            async with open_storage(
                self._conninfo,
                pool_min=1,
                pool_max=1,
                statement_timeout_s=db.statement_timeout_s,
                connect_timeout_s=db.connect_timeout_s,
            ) as storage:
                return storage.registry
        except DatabaseUnavailable:
            return None

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
            if self.alive():
                systemd.watchdog()
            else:
                _log.warning("stuck: withholding the systemd watchdog ping")
            await trio.sleep(interval / 3)
