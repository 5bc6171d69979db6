"""``histdata status``: ask the running service how it is doing.

Reads ``GET /healthz`` over the Unix socket at ``[query] socket`` and prints the actors and
their restarts, channel statistics, the age of the last message per symbol, the journal and
every counted loss. ``--json`` prints the raw snapshot instead.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

import httpx

from histdata.client import socket_transport
from histdata.commands.common import setup

__all__ = ["configure", "main", "render"]


def configure(parser: argparse.ArgumentParser) -> None:
    """``--json`` for the machine-readable snapshot."""
    parser.add_argument("--json", action="store_true", help="print the raw JSON snapshot")


def main(args: argparse.Namespace) -> int:
    """Print the status; returns 0 when healthy, 3 when unhealthy, and 1 with a clear
    message when the service is not running."""
    config = setup(args)
    path = config.query.socket
    # Probe with a socket we close ourselves: httpx leaks the socket of a refused Unix connect.
    refused = _refused(path)
    if refused is None:
        try:
            with httpx.Client(
                transport=socket_transport(path), base_url="http://histdata", timeout=10.0
            ) as client:
                response = client.get("/healthz")
        except httpx.TransportError as exc:
            refused = str(exc)
    if refused is not None:
        print(
            f"histdata is not running (nothing answers on {path}: {refused});"
            " start it with `histdata run`",
            file=sys.stderr,
        )
        return 1
    # 503 is the service saying it is unhealthy: the body is still the full snapshot.
    if response.status_code not in (200, 503):
        print(f"histdata status: the service answered HTTP {response.status_code}", file=sys.stderr)
        return 1
    snapshot: dict[str, Any] = response.json()
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        print(render(snapshot))
    return 0 if snapshot.get("healthy") else 3


def _refused(path: str) -> str | None:
    """Why nothing accepts a connection on the Unix socket ``path`` (None: something does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _age(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s ago"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _tree(stats: dict[str, Any], depth: int, lines: list[str]) -> None:
    for child in stats["children"]:
        error = f"  last error: {child['last_error']}" if child.get("last_error") else ""
        lines.append(
            f"{'  ' * depth}  {child['name']:<14} {child['state']:<10}"
            f" restarts {child['restarts']:<4} crashes {child['crashes']:<4}{error}"
        )
        if child.get("supervisor"):
            _tree(child["supervisor"], depth + 1, lines)


def render(snapshot: dict[str, Any]) -> str:
    """The human-readable form of a ``/healthz`` snapshot."""
    service = snapshot["service"]
    lines = [
        f"histdata {service['version']} pid {service['pid']} up {service['uptime_s']:.0f} s"
        f" — {'healthy' if service['healthy'] else 'UNHEALTHY'}",
        "",
        "actors:",
    ]
    _tree(snapshot["supervisor"], 0, lines)
    lines += ["", "channels:"]
    for c in snapshot["channels"]:
        lines.append(
            f"  {c['name']:<14} {c['policy']:<11} depth {c['depth']}/{c['capacity']} peak"
            f" {c['peak']}  sent {c['sent']} received {c['received']} dropped {c['dropped']}"
            f" spilled {c['spilled']}"
        )
    feed = snapshot["feed"]
    closes = ", ".join(f"{k} {v}" for k, v in sorted(feed["closes"].items())) or "none"
    lines += [
        "",
        f"feed: {'connected' if feed['connected'] else 'DISCONNECTED'}, sessions"
        f" {feed['sessions']}, closes: {closes}; last message {_age(feed['last_message_age_s'])}",
    ]
    for symbol, info in feed["symbols"].items():
        failed = f"  SUBSCRIPTION FAILED: {info['subscription_error']}"
        lines.append(
            f"  {symbol:<10} last trade {_age(info['last_trade_age_s'])}"
            + (failed if info.get("subscription_error") else "")
        )
    if feed["rejections"]:
        lines.append(
            "  rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(feed["rejections"].items()))
        )
    flusher, journal = snapshot["flusher"], snapshot["journal"]
    lines += [
        "",
        f"flusher: database {'up' if flusher['database_up'] else 'DOWN'}, trades written"
        f" {flusher['trades_written']} (new {flusher['trades_inserted']}), journaled"
        f" {flusher['trades_journaled']}, replayed {flusher['trades_replayed']}",
        f"journal: {_size(journal['bytes'])} of {_size(journal['max_bytes'])} in"
        f" {journal['segments']} segments; torn records {journal['torn_records']}",
    ]
    drops = snapshot.get("drops") or {}
    lines.append(
        "drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) if drops else "none")
    )
    return "\n".join(lines)
