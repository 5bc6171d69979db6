"""``histdata status``: ask the running service how it is doing.

Reads ``GET /healthz`` over the Unix socket at ``[query] socket`` and prints why the service
is unhealthy (if it is), the actors and their restarts, channel statistics, a summary of the
symbols with the most lagging ones, the trades stored (new and already present), the
journal and every counted loss. ``--json`` prints the raw snapshot instead.

``--fleet`` asks the database instead of one service: every collector's heartbeat row (host,
pid, version, symbols, last write; stale when not refreshed for ``_STALE_S``) and the stored
symbols no live collector records. It only reads, so it works on a standby and as a
read-only user; it exits 3 when a stored symbol is recorded by nobody.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx
import trio

from histdata.client import socket_transport
from histdata.commands.common import open_command_storage, setup, socket_refused
from histdata.config import Config
from histdata.storage.symbol_table import stored_symbols

__all__ = ["configure", "main", "render", "render_fleet"]


# A collector whose heartbeat row is older than this is shown stale and records nothing.
_STALE_S = 30.0


def configure(parser: argparse.ArgumentParser) -> None:
    """``--json`` for the machine-readable snapshot; ``--fleet`` for every collector."""
    parser.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="every collector on the database, and the symbols nobody records",
    )


def main(args: argparse.Namespace) -> int:
    """Print the status; returns 0 when healthy, 3 when unhealthy, and 1 with a clear
    message when the service is not running."""
    config = setup(args)
    if args.fleet:
        return trio.run(_fleet, config, args.json)
    path = config.query.socket
    # Probe with a socket we close ourselves: httpx leaks the socket of a refused Unix connect.
    refused = socket_refused(path)
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


# Symbols listed one per line: the most lagging ones; the rest are summarised in counts.
_WORST = 5


def _symbols(feed: dict[str, Any], lines: list[str]) -> None:
    """A count of symbols by state, then the most lagging (never traded first)."""
    symbols: dict[str, dict[str, Any]] = feed["symbols"]
    failed = {s: i["subscription_error"] for s, i in symbols.items() if i.get("subscription_error")}
    never = [s for s, i in symbols.items() if i["last_trade_age_s"] is None and s not in failed]
    lines.append(
        f"  symbols: {len(symbols)} subscribed, {len(symbols) - len(never) - len(failed)} with"
        f" trades, {len(never)} without a trade yet, {len(failed)} subscription failures"
    )
    for symbol, error in sorted(failed.items())[:_WORST]:
        lines.append(f"  {symbol:<10} SUBSCRIPTION FAILED: {error}")
    if len(failed) > _WORST:
        lines.append(f"  … and {len(failed) - _WORST} more failed subscriptions (--json)")

    def lag(symbol: str) -> float:
        age = symbols[symbol]["last_trade_age_s"]
        return float("inf") if age is None else float(age)

    ranked = sorted((s for s in symbols if s not in failed), key=lambda s: (-lag(s), s))
    if ranked:
        lines.append("  most lagging:" if len(ranked) > _WORST else "  last trades:")
    for symbol in ranked[:_WORST]:
        info = symbols[symbol]
        count = f", {info['trades']} trades" if "trades" in info else ""
        lines.append(f"  {symbol:<10} last trade {_age(info['last_trade_age_s'])}{count}")


def _tree(stats: dict[str, Any], depth: int, lines: list[str]) -> None:
    for child in stats["children"]:
        error = f"  last error: {child['last_error']}" if child.get("last_error") else ""
        lines.append(
            f"{'  ' * depth}  {child['name']:<14} {child['state']:<10}"
            f" restarts {child['restarts']:<4} crashes {child['crashes']:<4}{error}"
        )
        if child.get("supervisor"):
            _tree(child["supervisor"], depth + 1, lines)


def _render_query_node(snapshot: dict[str, Any]) -> str:
    """A ``histdata serve`` node's snapshot: no feed, flusher or journal to show."""
    service, stream = snapshot["service"], snapshot["stream"]
    lines = [
        f"histdata {service['version']} query node pid {service['pid']} up"
        f" {service['uptime_s']:.0f} s — {'healthy' if service['healthy'] else 'UNHEALTHY'}",
    ]
    lines += [f"  unhealthy: {reason}" for reason in snapshot.get("unhealthy_reasons") or []]
    lines += ["", "actors:"]
    _tree(snapshot["supervisor"], 0, lines)
    role = snapshot.get("read_role") or "the login's own (READ ONLY transactions)"
    how = "LISTEN, primary" if stream["mode"] == "listen" else "polling"
    lines += [
        "",
        f"reads as: {role}",
        f"stream: {stream['mode']} ({how}),"
        f" {stream['hub']['subscribers']} clients, {stream['hub']['trades_published']} trades"
        f" relayed, {stream['errors']} read errors",
    ]
    return "\n".join(lines)


def render(snapshot: dict[str, Any]) -> str:
    """The human-readable form of a ``/healthz`` snapshot (a collector's or a query node's)."""
    if snapshot.get("service", {}).get("role") == "query":
        return _render_query_node(snapshot)
    service = snapshot["service"]
    lines = [
        f"histdata {service['version']} pid {service['pid']} up {service['uptime_s']:.0f} s"
        f" — {'healthy' if service['healthy'] else 'UNHEALTHY'}",
    ]
    lines += [f"  unhealthy: {reason}" for reason in snapshot.get("unhealthy_reasons") or []]
    lines += ["", "actors:"]
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
    connections = feed.get("connections", 1)
    # One state for all connections: "connected" only while every one is.
    state = "connected" if feed["connected"] else "DISCONNECTED"
    over = f" ({connections} connections)" if connections != 1 else ""
    lines += [
        "",
        f"feed: {state}{over}, sessions {feed['sessions']}, closes: {closes}; last message"
        f" {_age(feed['last_message_age_s'])}",
    ]
    _symbols(feed, lines)
    if feed["rejections"]:
        lines.append(
            "  rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(feed["rejections"].items()))
        )
    flusher, journal = snapshot["flusher"], snapshot["journal"]
    present = flusher["trades_present"]
    damage = ""
    lost, unknown = journal.get("lost_records", 0), journal.get("lost_unknown_records", 0)
    if lost or unknown:
        damage = (
            f"; damaged records lost {lost} ({journal.get('lost_trades', 0)} trades)"
            f" + {unknown} of unknown size, segments kept in journal/damaged/"
        )
    lines += [
        "",
        f"flusher: database {'up' if flusher['database_up'] else 'DOWN'}; trades stored"
        f" {flusher['trades_inserted']} new, {present} already present (of"
        f" {flusher['trades_inserted'] + present} written, {flusher['trades_replayed']} of them"
        f" replayed from the journal); journaled {flusher['trades_journaled']}",
        f"journal: {_size(journal['bytes'])} of {_size(journal['max_bytes'])} in"
        f" {journal['segments']} segments; torn records {journal['torn_records']}{damage}",
    ]
    drops = {k: v for k, v in (snapshot.get("drops") or {}).items() if v}
    lines.append(
        "drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) if drops else "none")
    )
    return "\n".join(lines)


async def _fleet(config: Config, as_json: bool) -> int:
    from histdata.storage.fleet import collectors

    async with open_command_storage(config, create=False) as storage:
        rows = await collectors(storage)
        stored = [info.symbol for info in await stored_symbols(storage)]
    listed: list[dict[str, Any]] = [
        {
            "id": r.id,
            "host": r.host,
            "pid": r.pid,
            "version": r.version,
            "symbols": list(r.symbols),
            "seen_age_s": round(r.age_s, 1),
            "stale": r.age_s > _STALE_S,
            "last_write": r.last_write.isoformat() if r.last_write else None,
        }
        for r in rows
    ]
    recorded = {s for c in listed if not c["stale"] for s in c["symbols"]}
    fleet = {"collectors": listed, "unrecorded": sorted(set(stored) - recorded)}
    print(json.dumps(fleet, indent=2) if as_json else render_fleet(fleet))
    return 3 if fleet["unrecorded"] else 0


def render_fleet(fleet: dict[str, Any]) -> str:
    """The human-readable form of ``status --fleet``."""
    found = fleet["collectors"]
    lines = [f"collectors: {len(found)} ({sum(1 for c in found if c['stale'])} stale)"]
    for c in found:
        state = "STALE" if c["stale"] else "live"
        wrote = c["last_write"] or "never"
        symbols = ", ".join(c["symbols"][:_WORST])
        more = f" and {len(c['symbols']) - _WORST} more" if len(c["symbols"]) > _WORST else ""
        lines.append(
            f"  {c['host']} pid {c['pid']} histdata {c['version']} {state}, seen"
            f" {c['seen_age_s']:.0f} s ago, last write {wrote}; {len(c['symbols'])} symbols:"
            f" {symbols}{more}"
        )
    unrecorded = fleet["unrecorded"]
    lines.append(
        f"symbols nobody records: {len(unrecorded)}"
        + (": " + ", ".join(unrecorded) if unrecorded else "")
    )
    return "\n".join(lines)
