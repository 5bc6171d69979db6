"""Telemetry: Prometheus text that promtool accepts, health reasons, drops and the TCP listener.

The live tests run the whole service on the simulator and a real database and scrape
``/metrics`` over TCP, as Prometheus would; ``promtool`` (Debian's ``prometheus`` package)
judges the result, so the test is skipped only where promtool is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from waiting import until  # type: ignore[import-not-found]

from histdata import metrics_listener
from histdata.actors.feed import Feed, FeedStatistics
from histdata.config import (
    Config,
    DatabaseConfig,
    GapfillConfig,
    KrakenConfig,
    LiveConfig,
    QueryConfig,
    ServiceConfig,
)
from histdata.httpserver import Request, Response
from histdata.service import Service
from histdata.sim import SimConfig, open_simulator
from histdata.supervisor import ChildSpec, Supervisor
from histdata.telemetry import Latencies, prometheus_text, status_snapshot, timed_reads

SYMBOL = "BTC/USD"
PROMTOOL = shutil.which("promtool")
DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"


def make_config(tmp_path: Path, sim: Any) -> Config:
    return Config(
        service=ServiceConfig(data_dir=str(tmp_path / "var"), shutdown_timeout_s=8.0),
        database=DatabaseConfig(pool_max=4, connect_timeout_s=1.0),
        kraken=KrakenConfig(rest_url=sim.rest_url, ws_url=sim.ws_url, symbols=(SYMBOL,)),
        live=LiveConfig(batch_size=100, batch_age_s=0.1),
        gapfill=GapfillConfig(enabled=True, interval_s=3600.0),
        query=QueryConfig(socket=str(tmp_path / "var" / "q.sock")),
    )


@asynccontextmanager
async def live_service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The service on the simulator, once it has written trades of SYMBOL."""
    sim_config = SimConfig(seed=8, symbols=(SYMBOL,), trade_rate_per_s=50.0, history_s=60.0)
    async with open_simulator(sim_config) as sim:
        service = Service(make_config(tmp_path, sim), database_url)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(service.run, handle_signals=False))
            await until(
                lambda: (
                    service.flusher.statistics().trades_inserted
                    and SYMBOL in service.feed.statistics().last_trade_at
                    and service.rollup is not None
                    and service.gapfiller is not None
                )
            )
            yield service
            service.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def metrics_child(service: Service) -> AsyncIterator[str]:
    """The metrics listener as a supervised child on a free port; yields its base URL."""
    port = free_port()
    spec = ChildSpec("metrics", partial(metrics_listener.run, f"127.0.0.1:{port}", service.metrics))
    supervisor = Supervisor("metrics", [spec])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield f"http://127.0.0.1:{port}"
        supervisor.shutdown()


def promtool(text: bytes) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text.decode(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


class TestLiveScrape:
    @pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) absent")
    async def test_promtool_accepts_a_scrape_over_tcp(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """`promtool check metrics` finds no error and no lint problem in a live scrape."""
        async with (
            live_service(tmp_path, database_url) as service,
            metrics_child(service) as url,
            httpx.AsyncClient() as client,
        ):
            service.telemetry.latencies.write.observe(0.01)
            response = await client.get(f"{url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        checked = promtool(response.content)
        assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    async def test_conventional_names_and_per_symbol_series(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """Counters end in _total, times in _timestamp_seconds, and lag is per symbol."""
        async with (
            live_service(tmp_path, database_url) as service,
            metrics_child(service) as url,
            httpx.AsyncClient() as client,
        ):
            text = (await client.get(f"{url}/metrics")).content
        found = samples(text)
        names = {name for name, _ in found}
        assert ("histdata_feed_trade_lag_seconds", (("symbol", SYMBOL),)) in found
        assert ("histdata_feed_last_trade_timestamp_seconds", (("symbol", SYMBOL),)) in found
        assert found[("histdata_healthy", ())] == 1.0
        assert found[("histdata_feed_connected", ())] == 1.0
        assert found[("histdata_flusher_trades_inserted_total", ())] > 0
        assert ("histdata_flusher_trades_present_total", ()) in found
        assert "histdata_rollup_passes_total" in names
        assert "histdata_gapfiller_failures_total" in names
        assert "histdata_actor_restarts_total" in names
        assert "histdata_flusher_last_progress_timestamp_seconds" in names
        assert "histdata_write_seconds_bucket" in names
        assert not [n for n in names if n.endswith(("_at", "_s", "_since"))]

    async def test_only_metrics_is_served(self, tmp_path: Path, database_url: str) -> None:
        """The TCP listener answers /metrics and nothing else (no data, no health)."""
        async with (
            live_service(tmp_path, database_url) as service,
            metrics_child(service) as url,
            httpx.AsyncClient() as client,
        ):
            candles = await client.get(f"{url}/v1/candles?symbol=BTC/USD")
            health = await client.get(f"{url}/healthz")
            post = await client.post(f"{url}/metrics")
        assert candles.status_code == 404
        assert health.status_code == 404
        assert post.status_code == 405

    async def test_dashboard_queries_only_exported_series(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """Every series the Grafana dashboard queries is in a live scrape."""
        async with (
            live_service(tmp_path, database_url) as service,
            metrics_child(service) as url,
            httpx.AsyncClient() as client,
        ):
            ok = Response(200, (), b"")
            await timed_reads(partial(_answer, ok), service.telemetry.latencies)(
                Request("GET", "/v1/candles", {}, {})
            )
            text = (await client.get(f"{url}/metrics")).content
        # Sample names, and family names for families that have no sample now (no reason
        # to be unhealthy: histdata_unhealthy_reason is declared but empty).
        families = list(text_string_to_metric_families(text.decode()))
        exported = {s.name for f in families for s in f.samples} | {f.name for f in families}
        exported |= {f"{f.name}_total" for f in families if f.type == "counter"}
        dashboard = json.loads(DASHBOARD.read_text())
        queried = {
            name
            for panel in dashboard["panels"]
            for target in panel["targets"]
            for name in re.findall(r"\bhistdata_[a-z_]+", target["expr"])
        }
        feed_fields = {f.name for f in dataclasses.fields(FeedStatistics)}
        # Per-symbol counts appear once the feed carries them (see telemetry._symbol_trades).
        pending = (
            set() if "trades_by_symbol" in feed_fields else {"histdata_feed_symbol_trades_total"}
        )
        assert len(queried) > 20
        assert queried - exported == pending


async def _answer(response: Response, request: Request) -> Response:
    return response


class CountingFeed(Feed):
    """A real Feed that has counted seven trades of SYMBOL (no connection needed)."""

    def statistics(self) -> FeedStatistics:
        return replace(super().statistics(), trades_by_symbol={SYMBOL: 7})


def idle_service(tmp_path: Path) -> Service:
    """A service built but not run: its statistics are real, all counters at zero."""
    config = Config(
        service=ServiceConfig(data_dir=str(tmp_path / "var")),
        kraken=KrakenConfig(symbols=(SYMBOL, "ETH/USD")),
    )
    return Service(config, "host=/nonexistent")


class TestExposition:
    async def test_per_symbol_trade_counter_when_the_feed_counts(self, tmp_path: Path) -> None:
        """The feed's per-symbol trade counts are exported as a per-symbol _total counter."""
        service = idle_service(tmp_path)
        feed = CountingFeed(
            "ws://unused",
            (SYMBOL,),
            service.registry,
            service.trades,
            service.candles,
            catch_up=service.catch_up,
            loss=service.loss,
        )
        sources = replace(service.telemetry, feed=feed)
        found = samples(prometheus_text(sources))
        assert found[("histdata_feed_symbol_trades_total", (("symbol", SYMBOL),))] == 7.0
        assert status_snapshot(sources)["feed"]["symbols"][SYMBOL]["trades"] == 7

    async def test_unhealthy_reasons_in_snapshot_and_metrics(self, tmp_path: Path) -> None:
        """Reasons make the snapshot unhealthy, list them, and set histdata_healthy to 0."""
        service = idle_service(tmp_path)
        sources = replace(service.telemetry, healthy=lambda: ["database down", "feed down"])
        snapshot = status_snapshot(sources)
        assert snapshot["healthy"] is False
        assert snapshot["unhealthy_reasons"] == ["database down", "feed down"]
        found = samples(prometheus_text(sources))
        assert found[("histdata_healthy", ())] == 0.0
        assert found[("histdata_unhealthy_reason", (("reason", "feed down"),))] == 1.0
        healthy = replace(service.telemetry, healthy=list)
        assert status_snapshot(healthy)["healthy"] is True

    async def test_drops_list_every_kind_of_loss(self, tmp_path: Path) -> None:
        """Drops name channels, journal losses, quarantined batches and stream clients."""
        service = idle_service(tmp_path)
        drops = status_snapshot(service.telemetry)["drops"]
        for key in (
            "channel live.trades",
            "journal trades",
            "journal candles",
            "quarantined batches",
            "stream clients dropped",
            "rejected input",
        ):
            assert drops[key] == 0, key

    @pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) absent")
    async def test_observed_read_latency_passes_promtool(self, tmp_path: Path) -> None:
        """Reads timed through timed_reads appear per endpoint and promtool accepts them."""
        service = idle_service(tmp_path)

        async def handler(request: Request) -> Response:
            await trio.sleep(0.01)
            return Response(200, (), b"")

        timed = timed_reads(handler, service.telemetry.latencies)
        for path in ("/v1/candles", "/v1/candles", "/v1/made-up", "/healthz"):
            await timed(Request("GET", path, {}, {}))
        text = prometheus_text(service.telemetry)
        found = samples(text)
        assert found[("histdata_read_seconds_count", (("endpoint", "/v1/candles"),))] == 2.0
        assert found[("histdata_read_seconds_count", (("endpoint", "other"),))] == 1.0
        assert not [k for k in found if ("endpoint", "/healthz") in k[1]]
        checked = promtool(text)
        assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


class TestLatencies:
    def test_services_do_not_share_histograms(self) -> None:
        """Each Latencies has its own histograms, so two services count separately."""
        first, second = Latencies(), Latencies()
        first.write.observe(0.5)
        assert samples(_text(first))[("histdata_write_seconds_count", ())] == 1.0
        assert samples(_text(second))[("histdata_write_seconds_count", ())] == 0.0


def _text(latencies: Latencies) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(latencies)
    return bytes(generate_latest(registry))
