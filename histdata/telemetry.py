"""Telemetry: the service's state as a JSON-able snapshot and as Prometheus text.

Everything is read from the ``statistics()`` of the objects that own the state (supervisors,
channels, feed, buffer, flusher, journal, storage), so ``/healthz``, ``/metrics`` and
``histdata status`` can never disagree with each other or with the actors.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from histdata import __version__
from histdata.actors.buffer import Buffer
from histdata.actors.feed import Feed
from histdata.actors.flusher import Flusher
from histdata.actors.journal import Journal
from histdata.storage import Storage
from histdata.supervisor import Supervisor, SupervisorStatistics, channels

__all__ = ["TelemetrySources", "prometheus_text", "status_snapshot"]


@dataclass(frozen=True, slots=True)
class TelemetrySources:
    """What the service exposes: the root supervisor and the live-path objects."""

    supervisor: Supervisor
    feed: Feed
    buffer: Buffer
    flusher: Flusher
    journal: Journal
    storage: Callable[[], Storage | None]
    healthy: Callable[[], bool]
    started_at: float
    extra: Callable[[], dict[str, Any]] = dict  # name → statistics of the other actors


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


def status_snapshot(sources: TelemetrySources) -> dict[str, Any]:
    """The service's state for ``/healthz`` and ``histdata status`` (JSON-able).

    Keys: ``healthy``, ``service``, ``supervisor`` (the tree with restarts and crashes),
    ``channels``, ``feed`` (with ``last_message_age_s`` and per-symbol ``last_trade_age_s``),
    ``buffer``, ``flusher``, ``journal``, ``storage`` (None while closed), ``drops`` (every
    counted loss, by where it happened) and ``actors`` (statistics of rollup, gap filler,
    backfiller, maintenance and the live hub).
    """
    now = time.time()
    feed = sources.feed.statistics()
    chans = [c.statistics() for c in channels()]
    journal = sources.journal.statistics()
    storage = sources.storage()
    feed_data = _plain(feed)
    feed_data["last_message_age_s"] = _age(feed.last_message_at, now)
    feed_data["symbols"] = {
        symbol: {
            "last_trade_age_s": _age(feed.last_trade_at.get(symbol), now),
            "subscription_error": feed.failed_subscriptions.get(symbol),
        }
        for symbol in sources.feed.symbols
    }
    drops = {f"channel {c.name}": c.dropped for c in chans if c.dropped}
    if journal.dropped_trades or journal.dropped_candles:
        drops["journal trades"] = journal.dropped_trades
        drops["journal candles"] = journal.dropped_candles
    rejected = sum(feed.rejections.values())
    if rejected:
        drops["rejected input"] = rejected
    healthy = sources.healthy()
    return {
        "healthy": healthy,
        "service": {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": sources.started_at,
            "uptime_s": round(now - sources.started_at, 3),
            "healthy": healthy,
        },
        "supervisor": _plain(sources.supervisor.statistics()),
        "channels": [_plain(c) for c in chans],
        "feed": feed_data,
        "buffer": _plain(sources.buffer.statistics()),
        "flusher": _plain(sources.flusher.statistics()),
        "journal": _plain(journal),
        "storage": _plain(storage.statistics()) if storage is not None else None,
        "drops": drops,
        "actors": {name: _plain(stats) for name, stats in sources.extra().items()},
    }


# -- Prometheus -----------------------------------------------------------------------------

# Statistics fields that only ever grow: exported as counters, the rest as gauges.
_COUNTERS = {
    "feed": {"sessions", "connect_attempts", "trades", "candle_updates", "snapshot_trades"},
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
        "trades_written",
        "trades_inserted",
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
}


def _numbers(section: str, stats: Any) -> Iterator[Metric]:
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if not isinstance(value, int | float) or value is None:
            continue
        name = f"histdata_{section}_{f.name}"
        doc = f"{section} {f.name.replace('_', ' ')}"
        if f.name in _COUNTERS.get(section, set()):
            yield CounterMetricFamily(name, doc, value=float(value))
        else:
            yield GaugeMetricFamily(name, doc, value=float(value))


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


class _Collector:
    def __init__(self, sources: TelemetrySources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self._sources
        now = time.time()
        yield GaugeMetricFamily(
            "histdata_healthy", "1 while the live path is healthy", value=float(src.healthy())
        )
        up = GaugeMetricFamily(
            "histdata_actor_up", "1 while running", labels=["supervisor", "actor"]
        )
        restarts = CounterMetricFamily(
            "histdata_actor_restarts", "restarts", labels=["supervisor", "actor"]
        )
        crashes = CounterMetricFamily(
            "histdata_actor_crashes", "crashes", labels=["supervisor", "actor"]
        )
        _actors(src.supervisor.statistics(), up, restarts, crashes)
        yield from (up, restarts, crashes)

        chan = {
            "depth": GaugeMetricFamily("histdata_channel_depth", "queued", labels=["channel"]),
            "peak": GaugeMetricFamily("histdata_channel_peak", "peak depth", labels=["channel"]),
            "capacity": GaugeMetricFamily("histdata_channel_capacity", "cap", labels=["channel"]),
        }
        chan_counters = {
            name: CounterMetricFamily(f"histdata_channel_{name}", name, labels=["channel"])
            for name in ("sent", "received", "dropped", "spilled")
        }
        for c in channels():
            stats = c.statistics()
            for key, family in chan.items():
                family.add_metric([stats.name], float(getattr(stats, key)))
            for key, counter in chan_counters.items():
                counter.add_metric([stats.name], float(getattr(stats, key)))
        yield from chan.values()
        yield from chan_counters.values()

        feed = src.feed.statistics()
        yield from _numbers("feed", feed)
        yield GaugeMetricFamily("histdata_feed_connected", "connected", value=float(feed.connected))
        closes = CounterMetricFamily("histdata_feed_closes", "sessions ended", labels=["kind"])
        for kind, n in sorted(feed.closes.items()):
            closes.add_metric([kind], float(n))
        yield closes
        rejections = CounterMetricFamily(
            "histdata_feed_rejections", "rejected input", labels=["reason"]
        )
        for reason, n in sorted(feed.rejections.items()):
            rejections.add_metric([reason], float(n))
        yield rejections
        age = GaugeMetricFamily(
            "histdata_feed_last_trade_age_seconds", "since the last trade", labels=["symbol"]
        )
        for symbol, at in sorted(feed.last_trade_at.items()):
            age.add_metric([symbol], max(0.0, now - at))
        yield age
        if feed.last_message_at is not None:
            yield GaugeMetricFamily(
                "histdata_feed_last_message_age_seconds",
                "since the last WebSocket message",
                value=max(0.0, now - feed.last_message_at),
            )
        yield from _numbers("buffer", src.buffer.statistics())
        yield from _numbers("flusher", src.flusher.statistics())
        yield from _numbers("journal", src.journal.statistics())
        storage = src.storage()
        if storage is not None:
            yield from _numbers("storage", storage.statistics())
        for name, stats in src.extra().items():
            yield from _numbers(name, stats)


def prometheus_text(sources: TelemetrySources) -> bytes:
    """The Prometheus text exposition of everything :func:`status_snapshot` shows."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(sources))
    return bytes(generate_latest(registry))
