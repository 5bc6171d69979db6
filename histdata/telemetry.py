"""Telemetry: the service's state as a JSON-able snapshot and as Prometheus text.

Everything is read from the ``statistics()`` of the objects that own the state (supervisors,
channels, feed, buffer, flusher, journal, storage, the other actors), so ``/healthz``,
``/metrics`` and ``histdata status`` can never disagree with each other or with the actors.
The only state kept here is :class:`Latencies`, the histograms the write and read paths
observe, since a latency distribution is not something a ``statistics()`` value can carry.

Metric names follow Prometheus's conventions, so ``promtool check metrics`` accepts the
exposition: counters end in ``_total``, durations in ``_seconds``, Unix times in
``_timestamp_seconds``, sizes in ``_bytes``; each family appears once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from histdata import __version__
from histdata.actors.buffer import Buffer
from histdata.actors.feed import Feed, FeedStatistics
from histdata.actors.feeds import FeedGroup
from histdata.actors.flusher import Flusher, FlusherStatistics
from histdata.actors.hub import HubStatistics
from histdata.actors.journal import Journal, JournalStatistics
from histdata.httpserver import Handler, Request, Response
from histdata.storage import Storage
from histdata.supervisor import ChannelStatistics, Supervisor, SupervisorStatistics, channels

__all__ = [
    "CONTENT_TYPE",
    "READ_ENDPOINTS",
    "Latencies",
    "TelemetrySources",
    "prometheus_text",
    "status_snapshot",
    "timed_reads",
]

# The text format generate_latest writes. prometheus_client's CONTENT_TYPE_LATEST says 1.0.0
# (UTF-8 names) in recent releases, which Prometheus servers before 3.0 do not negotiate.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets in seconds: a batch write or a read of a few rows takes milliseconds, a
# year of 1-minute candles or a write stalled behind a lock takes seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The read endpoints timed by name; any other path is counted as "other", so a client
# requesting made-up paths cannot grow the number of series without bound.
READ_ENDPOINTS = ("/v1/candles", "/v1/trades", "/v1/symbols", "/v1/coverage", "/v1/stream")


class Latencies:
    """The latency histograms of one service: observed by the write and read paths.

    ``write`` is observed once per batch the flusher writes to the database (trades,
    candles and their coverage in one go), in seconds: ``latencies.write.observe(s)`` or
    ``with latencies.write.time(): ...``. ``read`` is labelled by ``endpoint`` (one of
    :data:`READ_ENDPOINTS` or ``other``) and measures the time until a response starts
    (a streamed body's first chunk is read before the status line is sent). The histograms
    belong to no global registry, so several services in one process (tests) do not clash.
    """

    def __init__(self) -> None:
        self.write = Histogram(
            "histdata_write_seconds",
            "Seconds to write one batch of the live path to the database",
            buckets=_BUCKETS,
            registry=None,
        )
        self.read = Histogram(
            "histdata_read_seconds",
            "Seconds until a read of the query API starts its response",
            labelnames=["endpoint"],
            buckets=_BUCKETS,
            registry=None,
        )

    def collect(self) -> Iterator[Metric]:
        """The histograms' current samples."""
        yield from self.write.collect()
        yield from self.read.collect()


def timed_reads(
    handler: Handler, latencies: Latencies, endpoints: Collection[str] = READ_ENDPOINTS
) -> Handler:
    """``handler`` (an :mod:`histdata.httpserver` handler) observing ``latencies.read``.

    Only requests for ``endpoints`` are observed under their path; other paths under
    ``/v1/`` are observed as ``other``, and the rest (``/healthz``, ``/metrics``) not at all,
    since they are no reads of stored data. A handler that raises is observed too.
    """

    async def timed(request: Request) -> Response:
        if request.path in endpoints:
            endpoint = request.path
        elif request.path.startswith("/v1/"):
            endpoint = "other"
        else:
            return await handler(request)
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            latencies.read.labels(endpoint=endpoint).observe(time.perf_counter() - started)

    return timed


@dataclass(frozen=True, slots=True)
class TelemetrySources:
    """What the service exposes: the root supervisor and the live-path objects.

    ``healthy`` returns the reasons the service is unhealthy (an empty list: healthy).
    ``extra`` returns the statistics of the other actors by name (``hub``, ``rollup``, …).
    """

    supervisor: Supervisor
    feed: Feed | FeedGroup  # several connections are a FeedGroup
    buffer: Buffer
    flusher: Flusher
    journal: Journal
    storage: Callable[[], Storage | None]
    healthy: Callable[[], list[str]]
    started_at: float
    extra: Callable[[], dict[str, Any]] = dict
    latencies: Latencies = field(default_factory=Latencies)


def _plain(value: Any) -> Any:
    """A statistics value as JSON-able data (dataclasses → dicts, enums → their value)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else round(max(0.0, now - at), 3)


def _symbol_trades(feed: FeedStatistics) -> dict[str, int]:
    """Trades received per symbol, where the feed counts them (``trades_by_symbol``).

    Read defensively: a feed without the field yields no per-symbol counts rather than an
    error, so telemetry does not depend on the order in which the two land.
    """
    counts = getattr(feed, "trades_by_symbol", None)
    return dict(counts) if isinstance(counts, dict) else {}


def _drops(
    chans: list[ChannelStatistics],
    journal: JournalStatistics,
    flusher: FlusherStatistics,
    extras: dict[str, Any],
) -> dict[str, int]:
    """Every counted loss by where it happened, zero counts included (see status_snapshot)."""
    drops = {f"channel {c.name}": c.dropped for c in chans}
    drops["journal trades"] = journal.dropped_trades
    drops["journal candles"] = journal.dropped_candles
    drops["journal torn records"] = journal.torn_records
    drops["journal corrupt segments"] = journal.corrupt_segments
    # Damage found at replay: records lost with their trades (counted exactly from the next
    # intact record's running totals), or of unknown size where the damage ran to the end.
    drops["journal damaged records"] = journal.lost_records
    drops["journal damaged-record trades"] = journal.lost_trades
    drops["journal damaged-record candles"] = journal.lost_candles
    drops["journal damaged records of unknown size"] = journal.lost_unknown_records
    drops["quarantined batches"] = flusher.quarantined_batches
    hub = extras.get("hub")
    if isinstance(hub, HubStatistics):
        drops["stream clients dropped"] = sum(hub.dropped.values())
        for reason, n in sorted(hub.dropped.items()):
            drops[f"stream clients dropped ({reason})"] = n
    return drops


def status_snapshot(sources: TelemetrySources) -> dict[str, Any]:
    """The service's state for ``/healthz`` and ``histdata status`` (JSON-able).

    Keys: ``healthy`` (no reasons to be unhealthy), ``unhealthy_reasons``, ``service``,
    ``supervisor`` (the tree with restarts and crashes), ``channels``, ``feed`` (with
    ``last_message_age_s`` and per symbol ``last_trade_age_s``, ``trades`` when the feed
    counts them, and ``subscription_error``), ``buffer``, ``flusher``, ``journal``,
    ``storage`` (None while closed), ``drops`` (every kind of counted loss by where it
    happens — channel drops, journal losses, quarantined batches, dropped stream clients —
    zero counts included) and ``actors`` (rollup, gap filler, backfiller, maintenance, hub).
    """
    now = time.time()
    feed = sources.feed.statistics()
    chans = [c.statistics() for c in channels()]
    journal = sources.journal.statistics()
    flusher = sources.flusher.statistics()
    storage = sources.storage()
    extras = sources.extra()
    feed_data = _plain(feed)
    feed_data["last_message_age_s"] = _age(feed.last_message_at, now)
    per_symbol = _symbol_trades(feed)
    feed_data["symbols"] = {
        symbol: {
            "last_trade_age_s": _age(feed.last_trade_at.get(symbol), now),
            "subscription_error": feed.failed_subscriptions.get(symbol),
        }
        | ({"trades": per_symbol.get(symbol, 0)} if per_symbol else {})
        for symbol in sources.feed.symbols
    }
    drops = _drops(chans, journal, flusher, extras)
    drops["rejected input"] = sum(feed.rejections.values())
    reasons = list(sources.healthy())
    return {
        "healthy": not reasons,
        "unhealthy_reasons": reasons,
        "service": {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": sources.started_at,
            "uptime_s": round(now - sources.started_at, 3),
            "healthy": not reasons,
        },
        "supervisor": _plain(sources.supervisor.statistics()),
        "channels": [_plain(c) for c in chans],
        "feed": feed_data,
        "buffer": _plain(sources.buffer.statistics()),
        "flusher": _plain(flusher),
        "journal": _plain(journal),
        "storage": _plain(storage.statistics()) if storage is not None else None,
        "drops": drops,
        "actors": {name: _plain(stats) for name, stats in extras.items()},
    }


# -- Prometheus -----------------------------------------------------------------------------

# Statistics fields that only ever grow: exported as counters (``_total``), the rest as gauges.
_COUNTERS = {
    "feed": {
        "sessions",
        "connect_attempts",
        "trades",
        "candle_updates",
        "snapshot_trades",
        "catch_ups_requested",
        "closes",
        "rejections",
    },
    "buffer": {
        "batches",
        "trades",
        "candle_updates",
        "candles_finalized",
        "marks_recorded",
        "marks_discarded",
    },
    "flusher": {
        "batches_written",
        "trades_inserted",
        "trades_present",
        "candles_written",
        "batches_journaled",
        "trades_journaled",
        "replays",
        "trades_replayed",
        "quarantined_batches",
        "write_failures",
    },
    "journal": {
        "appended_records",
        "appended_trades",
        "replayed_records",
        "replayed_trades",
        "dropped_records",
        "dropped_trades",
        "dropped_candles",
        "torn_records",
        "corrupt_segments",
    },
    "storage": {"queries", "failures"},
    "hub": {
        "subscribed_total",
        "trades_published",
        "candles_published",
        "events_delivered",
        "dropped",
    },
    "rollup": {
        "passes",
        "ranges_claimed",
        "rows_written",
        "failures",
        "candles_derived",
        "candle_mismatches",
        "symbols_skipped",
    },
    "gapfiller": {
        "repairs",
        "failures",
        "requests",
        "trades_inserted",
        "candles_written",
        "mismatches",
        "unrecoverable",
        "failures_by_symbol",
    },
    "maintenance": {"rounds", "rows_deleted", "chunks_dropped", "chunks_compressed", "failures"},
    "backfiller": {"retries", "inserted"},
}

# The label of a statistics field that is a dict of numbers (default: ``symbol``).
_DICT_LABELS = {"closes": "kind", "rejections": "reason", "dropped": "reason"}

# Feed fields exported by hand in _feed (labelled by symbol, or duplicated by a gauge).
_FEED_BY_HAND = {"connected", "last_trade_at", "failed_subscriptions", "trades_by_symbol"}


def _metric_name(section: str, name: str) -> tuple[str, bool]:
    """The Prometheus name of statistics field ``name`` of ``section``, and if it counts.

    ``*_at`` and ``*_since`` (Unix seconds) become ``*_timestamp_seconds`` (``subscribed``
    for ``subscribed_since``), ``*_s`` becomes ``*_seconds``, and a counter gets its
    ``_total`` (the exposition adds it; it is not doubled).
    """
    counter = name in _COUNTERS.get(section, set())
    if name.endswith(("_at", "_since")):
        name = name.removesuffix("_at").removesuffix("_since") + "_timestamp_seconds"
    elif name.endswith("_s"):
        name = name.removesuffix("_s") + "_seconds"
    return f"histdata_{section}_{name}", counter


def _family(name: str, doc: str, counter: bool, labels: list[str] | None = None) -> Any:
    if counter:
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def _numbers(section: str, stats: Any, skip: Collection[str] = ()) -> Iterator[Metric]:
    """The numeric, boolean and dict-of-numbers fields of a statistics dataclass."""
    for f in dataclasses.fields(stats):
        if f.name in skip:
            continue
        value = getattr(stats, f.name)
        name, counter = _metric_name(section, f.name)
        doc = f"{section} {f.name.replace('_', ' ')}"
        if isinstance(value, bool | int | float):
            family = _family(name, doc, counter)
            family.add_metric([], float(value))
            yield family
        elif isinstance(value, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        ):
            family = _family(name, doc, counter, [_DICT_LABELS.get(f.name, "symbol")])
            for key, number in sorted(value.items()):
                family.add_metric([str(key)], float(number))
            yield family


def _actors(
    stats: SupervisorStatistics, up: GaugeMetricFamily, restarts: Any, crashes: Any
) -> None:
    for child in stats.children:
        labels = [stats.name, child.name]
        up.add_metric(labels, 1.0 if child.state == "running" else 0.0)
        restarts.add_metric(labels, float(child.restarts))
        crashes.add_metric(labels, float(child.crashes))
        if child.supervisor is not None:
            _actors(child.supervisor, up, restarts, crashes)


def _service(src: TelemetrySources) -> Iterator[Metric]:
    reasons = src.healthy()
    yield GaugeMetricFamily(
        "histdata_healthy", "1 while the service is healthy, else 0", value=float(not reasons)
    )
    why = GaugeMetricFamily(
        "histdata_unhealthy_reason", "1 for each reason the service is unhealthy", labels=["reason"]
    )
    for reason in sorted(set(reasons)):
        why.add_metric([reason], 1.0)
    yield why
    yield InfoMetricFamily("histdata_build", "the histdata version", value={"version": __version__})
    yield GaugeMetricFamily(
        "histdata_start_time_seconds", "Unix time the service started", value=src.started_at
    )


def _supervision(src: TelemetrySources) -> Iterator[Metric]:
    labels = ["supervisor", "actor"]
    up = GaugeMetricFamily("histdata_actor_up", "1 while the actor runs", labels=labels)
    restarts = CounterMetricFamily("histdata_actor_restarts", "actor restarts", labels=labels)
    crashes = CounterMetricFamily("histdata_actor_crashes", "actor crashes", labels=labels)
    _actors(src.supervisor.statistics(), up, restarts, crashes)
    yield from (up, restarts, crashes)


def _channels() -> Iterator[Metric]:
    gauges = {
        key: GaugeMetricFamily(f"histdata_channel_{key}", doc, labels=["channel"])
        for key, doc in (
            ("depth", "items queued in the channel"),
            ("peak", "highest depth reached"),
            ("capacity", "depth at which the overflow policy applies"),
        )
    }
    counters = {
        key: CounterMetricFamily(f"histdata_channel_{key}", f"items {key}", labels=["channel"])
        for key in ("sent", "received", "dropped", "spilled")
    }
    for c in channels():
        stats = c.statistics()
        for key, family in (gauges | counters).items():
            family.add_metric([stats.name], float(getattr(stats, key)))
    yield from gauges.values()
    yield from counters.values()


def _feed(feed: FeedStatistics, subscribed: tuple[str, ...], now: float) -> Iterator[Metric]:
    yield from _numbers("feed", feed, skip=_FEED_BY_HAND)
    yield GaugeMetricFamily(
        "histdata_feed_connected", "1 while the WebSocket is connected", value=float(feed.connected)
    )
    yield GaugeMetricFamily(
        "histdata_feed_symbols", "symbols the feed subscribes to", value=float(len(subscribed))
    )
    failed = GaugeMetricFamily(
        "histdata_feed_subscription_failed", "1 for a refused subscription", labels=["symbol"]
    )
    for symbol in sorted(feed.failed_subscriptions):
        failed.add_metric([symbol], 1.0)
    yield failed
    per_symbol = _symbol_trades(feed)
    if per_symbol:
        trades = CounterMetricFamily(
            "histdata_feed_symbol_trades", "trades received per symbol", labels=["symbol"]
        )
        for symbol, n in sorted(per_symbol.items()):
            trades.add_metric([symbol], float(n))
        yield trades
    last = GaugeMetricFamily(
        "histdata_feed_last_trade_timestamp_seconds",
        "Unix time the last trade of the symbol was received",
        labels=["symbol"],
    )
    lag = GaugeMetricFamily(
        "histdata_feed_trade_lag_seconds",
        "seconds since the symbol's last trade",
        labels=["symbol"],
    )
    for symbol, at in sorted(feed.last_trade_at.items()):
        last.add_metric([symbol], at)
        lag.add_metric([symbol], max(0.0, now - at))
    yield from (last, lag)


class _Collector:
    def __init__(self, sources: TelemetrySources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self._sources
        yield from _service(src)
        yield from _supervision(src)
        yield from _channels()
        yield from _feed(src.feed.statistics(), src.feed.symbols, time.time())
        yield from _numbers("buffer", src.buffer.statistics())
        yield from _numbers("flusher", src.flusher.statistics())
        yield from _numbers("journal", src.journal.statistics())
        storage = src.storage()
        if storage is not None:
            yield from _numbers("storage", storage.statistics())
        for name, stats in sorted(src.extra().items()):
            yield from _numbers(name, stats)
        yield from src.latencies.collect()


def prometheus_text(sources: TelemetrySources) -> bytes:
    """The Prometheus text exposition of everything :func:`status_snapshot` shows."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(sources))
    return bytes(generate_latest(registry))
