"""Configuration: one TOML file, overridable key by key from the environment, validated once.

``load_config`` reads the file (``-c``, else ``$HISTDATA_CONFIG``, else ``./config.toml``;
a missing default file means all defaults), applies ``HISTDATA_<SECTION>_<KEY>`` variables on
top, and returns frozen typed objects. Any unknown section or key (in the file, or as a
``HISTDATA_<SECTION>_<KEY>`` variable of a known section), wrong type, non-finite number,
out-of-range value or inconsistent pair (``pool_min`` above ``pool_max``) raises
:class:`~histdata.errors.ConfigError` whose message is one line naming the key, where it came
from, and what is allowed (with the nearest valid name for a misspelt key). Any other
``HISTDATA_*`` variable that is not one of :data:`NON_CONFIG_VARIABLES` is not an error but a
warning in :attr:`Config.warnings`, for the command line to print.

Relative paths (``[service] data_dir``, ``[query] socket``) in a file, or defaulted while a
file is used, are relative to the file's folder, so a service started from another directory
finds the same data; from the environment, or with no file, to the working directory.

There is deliberately no password key and no default credential anywhere: a database URL
without a password lets libpq find it (``PGPASSWORD``, ``~/.pgpass``/``PGPASSFILE``, or a
systemd credential exported as a passfile).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histdata.errors import ConfigError

__all__ = [
    "NON_CONFIG_VARIABLES",
    "BackfillConfig",
    "Config",
    "DatabaseConfig",
    "GapfillConfig",
    "KrakenConfig",
    "LiveConfig",
    "MaintenanceConfig",
    "MetricsConfig",
    "QueryConfig",
    "RollupConfig",
    "ServiceConfig",
    "UIConfig",
    "load_config",
    "parse_listen",
    "parse_loopback_listen",
]

ENV_PREFIX = "HISTDATA_"

# HISTDATA_* variables that are not configuration keys: the config file's name, and the
# databases and sizes the test-suite, benchmarks and drills use.
NON_CONFIG_VARIABLES = frozenset(
    {
        "HISTDATA_CONFIG",
        "HISTDATA_TEST_DSN",
        "HISTDATA_TIMESCALE_DSN",
        "HISTDATA_DRILL_DSN",
        "HISTDATA_FUZZ_EXAMPLES",
        "HISTDATA_FUZZ_COUNTS",
    }
)


def _choice(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _positive() -> dict[str, Any]:
    return {"min": 0, "exclusive": True}


def _non_negative() -> dict[str, Any]:
    return {"min": 0, "exclusive": False}


def _path() -> dict[str, Any]:
    return {"path": True}


def _listen(*, loopback: bool = False) -> dict[str, Any]:
    return {"listen": True, "loopback": loopback}


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9108`` for IPv6) as ``(host, port)``; port 0 picks a free one.

    Raises:
        ValueError: no port, a port that is not a number in 0..65535, or no host.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9108)")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port {port!r} is not a number from 0 to 65535")
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_loopback_listen(text: str) -> tuple[str, int]:
    """:func:`parse_listen` for a listener that must stay on this machine: the host is a
    loopback address (``127.0.0.0/8``, ``::1``). A name such as ``localhost`` is refused, as
    what it resolves to is up to ``/etc/hosts``.

    Raises:
        ValueError: not ``host:port``, or the host is not loopback (``0.0.0.0`` included).
    """
    host, port = parse_listen(text)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{text!r}: {host!r} is not a loopback address; use 127.0.0.1 or [::1]"
            " (the API it serves has no authentication; reach it from elsewhere through"
            " an SSH tunnel)"
        )
    return host, port


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """``[service]``: where the service keeps its state and how it logs and stops."""

    data_dir: str = field(default="./var", metadata=_path())
    log_level: str = field(default="info", metadata=_choice("debug", "info", "warning", "error"))
    log_format: str = field(default="auto", metadata=_choice("auto", "json", "console"))
    shutdown_timeout_s: float = field(default=15.0, metadata=_positive())

    @property
    def data_path(self) -> Path:
        """``data_dir`` as a path (already resolved against the config file's folder)."""
        return Path(self.data_dir)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """``[database]``: empty ``url`` starts the embedded PostgreSQL in ``data_dir``."""

    url: str = ""
    pool_min: int = field(default=1, metadata=_non_negative())
    pool_max: int = field(default=8, metadata=_positive())
    statement_timeout_s: float = field(default=60.0, metadata=_positive())
    connect_timeout_s: float = field(default=10.0, metadata=_positive())
    sslmode: str = field(
        default="",
        metadata=_choice("", "disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    )
    sslrootcert: str = ""
    readonly_role: str = "histdata_reader"  # created for the query path where permitted


@dataclass(frozen=True, slots=True)
class KrakenConfig:
    """``[kraken]``: endpoints, the symbols to record, and the REST rate allowance."""

    rest_url: str = "https://api.kraken.com"
    ws_url: str = "wss://ws.kraken.com/v2"
    # Any spelling of a pair, or an fnmatch pattern on v2 names: "*" every online pair.
    symbols: tuple[str, ...] = ("BTC/USD", "ETH/USD")
    # Kraken documents no cap for public channels; 200 is its documented level3 cap (see
    # docs/kraken-limits.md). One connection per this many symbols.
    symbols_per_connection: int = field(default=200, metadata=_positive())
    asset_pairs_refresh_s: float = field(default=3600.0, metadata=_positive())
    rest_rate_per_s: float = field(default=1.0, metadata=_positive())
    rest_burst: int = field(default=5, metadata=_positive())
    request_timeout_s: float = field(default=30.0, metadata=_positive())
    ws_stale_after_s: float = field(default=10.0, metadata=_positive())
    ws_ping_interval_s: float = field(default=15.0, metadata=_positive())
    # The feed down this long makes the service unhealthy (never a watchdog kill).
    feed_down_unhealthy_s: float = field(default=60.0, metadata=_positive())


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """``[live]``: batching, the buffer's overflow policy and the disk journal."""

    batch_size: int = field(default=2000, metadata=_positive())
    batch_age_s: float = field(default=0.25, metadata=_positive())
    buffer_capacity: int = field(default=200_000, metadata=_positive())
    overflow: str = field(
        default="spill", metadata=_choice("block", "drop_oldest", "drop_newest", "spill")
    )
    journal_max_mb: int = field(default=1024, metadata=_positive())
    flush_retry_s: float = field(default=1.0, metadata=_positive())
    # A flusher behind the feed merges queued batches into writes of up to this many trades.
    max_batch_trades: int = field(default=20_000, metadata=_positive())
    # Database connections the flusher writes over at once, each for its own symbols.
    writers: int = field(default=2, metadata=_positive())


@dataclass(frozen=True, slots=True)
class GapfillConfig:
    """``[gapfill]``: automatic hole repair at start, after reconnects and on a timer."""

    enabled: bool = True
    interval_s: float = field(default=300.0, metadata=_positive())
    lookback_days: float = field(default=1.0, metadata=_positive())


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    """``[backfill]``: background trade-history backfill for the configured symbols."""

    enabled: bool = False
    since: str = ""  # ISO 8601 or Unix seconds; empty: each symbol's first trade


@dataclass(frozen=True, slots=True)
class RollupConfig:
    """``[rollup]``: how often the rollup actor folds the dirty-range log."""

    interval_s: float = field(default=2.0, metadata=_positive())


@dataclass(frozen=True, slots=True)
class MaintenanceConfig:
    """``[maintenance]``: retention (0 = keep forever) and TimescaleDB compression."""

    interval_s: float = field(default=3600.0, metadata=_positive())
    trades_retention_days: int = field(default=0, metadata=_non_negative())
    candles_retention_days: int = field(default=0, metadata=_non_negative())
    compress_after_days: int = field(default=7, metadata=_non_negative())


@dataclass(frozen=True, slots=True)
class QueryConfig:
    """``[query]``: the Unix socket the read API listens on."""

    socket: str = field(default="./var/histdata.sock", metadata=_path())
    stream_queue: int = field(default=10_000, metadata=_positive())
    # Beyond max_connections the oldest idle connection is evicted; a connection without a
    # complete request after header_timeout_s is closed (see histdata.httpserver).
    max_connections: int = field(default=512, metadata=_positive())
    header_timeout_s: float = field(default=5.0, metadata=_positive())


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: ``listen = "host:port"`` serves ``/metrics`` over TCP (empty: off)."""

    listen: str = field(default="", metadata=_listen())


@dataclass(frozen=True, slots=True)
class ImportConfig:
    """``[import]``: bounds of ``histdata import`` against hostile files."""

    max_line_bytes: int = field(default=1 << 20, metadata=_positive())  # longer: rejected


@dataclass(frozen=True, slots=True)
class UIConfig:
    """``[ui]``: ``listen = "127.0.0.1:8780"`` serves the coverage map and the read-only API
    its page needs over TCP (empty: off). Loopback addresses only: that API has no
    authentication, so whoever reaches the port reads the data."""

    listen: str = field(default="", metadata=_listen(loopback=True))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``source`` says which file it came from."""

    service: ServiceConfig = ServiceConfig()
    database: DatabaseConfig = DatabaseConfig()
    kraken: KrakenConfig = KrakenConfig()
    live: LiveConfig = LiveConfig()
    gapfill: GapfillConfig = GapfillConfig()
    backfill: BackfillConfig = BackfillConfig()
    rollup: RollupConfig = RollupConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    query: QueryConfig = QueryConfig()
    metrics: MetricsConfig = MetricsConfig()
    import_: ImportConfig = ImportConfig()  # [import]; the name is a Python keyword
    ui: UIConfig = UIConfig()
    source: str = "defaults"
    warnings: tuple[str, ...] = ()  # one line each: HISTDATA_* variables that were ignored


_SECTIONS: dict[str, type[Any]] = {
    f.name.rstrip("_"): typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name not in ("source", "warnings")
}


def load_config(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Load, override and validate the configuration.

    ``path`` wins over ``$HISTDATA_CONFIG``, which wins over ``./config.toml``. An explicit
    path that does not exist is an error; a missing default file means built-in defaults.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key (in the file or as a variable of
            a known section), wrong type or value, ``pool_min`` above ``pool_max``.
    """
    env = os.environ if environ is None else environ
    explicit = path if path is not None else env.get("HISTDATA_CONFIG") or None
    file = Path(explicit) if explicit is not None else Path("config.toml")
    raw: dict[str, Any] = {}
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: not valid TOML: {exc}") from exc
        source = str(file)
    elif explicit is not None:
        raise ConfigError(f"config file {file} does not exist")
    else:
        source = "defaults"

    for section_name, section_value in raw.items():
        if section_name not in _SECTIONS:
            raise ConfigError(
                f"config {source}: unknown section [{section_name}];"
                f" allowed: {', '.join(_SECTIONS)}"
            )
        if not isinstance(section_value, dict):
            raise ConfigError(f"config {source}: [{section_name}] must be a table")
    warnings = _check_environment(env)
    base = file.parent if source != "defaults" else None
    sections: dict[str, Any] = {}
    wheres: dict[tuple[str, str], str] = {}
    for section_name, cls in _SECTIONS.items():
        sections[section_name] = _build_section(
            section_name, cls, raw.get(section_name, {}), env, source, base, wheres
        )
    database = sections["database"]
    if database.pool_min > database.pool_max:
        raise ConfigError(
            f"config [database] pool_min {database.pool_min}"
            f" ({wheres.get(('database', 'pool_min'), 'default')}) is above pool_max"
            f" {database.pool_max} ({wheres.get(('database', 'pool_max'), 'default')});"
            " pool_min must be <= pool_max"
        )
    fields = {f.name.rstrip("_"): f.name for f in dataclasses.fields(Config)}
    return Config(
        **{fields[name]: value for name, value in sections.items()},
        source=source,
        warnings=tuple(warnings),
    )


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def _check_environment(env: Mapping[str, str]) -> list[str]:
    """Refuse ``HISTDATA_<SECTION>_<KEY>`` with a known section and an unknown key; return a
    warning for every other ``HISTDATA_*`` variable that histdata does not read.

    Raises:
        ConfigError: naming the variable and the nearest valid key of its section.
    """
    known = {
        _env_name(section, f.name)
        for section, cls in _SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    warnings: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name in NON_CONFIG_VARIABLES:
            continue
        rest = name.removeprefix(ENV_PREFIX).lower()
        section = next((s for s in _SECTIONS if rest.startswith(f"{s}_")), None)
        if section is None:
            warnings.append(
                f"${name} is neither a config key (HISTDATA_<SECTION>_<KEY>, sections:"
                f" {', '.join(_SECTIONS)}) nor a variable histdata reads; ignored"
            )
            continue
        key = rest.removeprefix(f"{section}_")
        fields = [f.name for f in dataclasses.fields(_SECTIONS[section])]
        raise ConfigError(
            f"config ${name}: unknown key [{section}] {key}{_nearest(key, fields, section)};"
            f" allowed: {', '.join(fields)}"
        )
    return warnings


def _nearest(key: str, allowed: list[str], env_section: str | None = None) -> str:
    """`` (did you mean …?)`` for the closest allowed key (as a variable of ``env_section``
    when given), or nothing when none is close."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if not close:
        return ""
    name = close[0] if env_section is None else f"${_env_name(env_section, close[0])}"
    return f" (did you mean {name}?)"


def _build_section(
    name: str,
    cls: type[Any],
    values: dict[str, Any],
    env: Mapping[str, str],
    source: str,
    base: Path | None,
    wheres: dict[tuple[str, str], str],
) -> Any:
    """One section from its file table and the environment; ``base`` is the file's folder
    (None without a file); ``wheres`` records where each key set came from."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"config {source}: unknown key [{name}] {key}{_nearest(key, list(fields))};"
                f" allowed: {', '.join(fields)}"
            )
    kwargs: dict[str, Any] = {}
    for key, spec in fields.items():
        env_name = _env_name(name, key)
        where = f"[{name}] {key} in {source}"
        relative_to = base
        if env_name in env:
            where = f"[{name}] {key} from ${env_name}"
            value = _from_env(env[env_name], hints[key], where)
            relative_to = None  # typed in a shell: relative to where it was typed
        elif key in values:
            value = values[key]
        elif spec.metadata.get("path") and base is not None:
            value = spec.default
        else:
            continue
        value = _check(value, hints[key], spec.metadata, where)
        if spec.metadata.get("path") and relative_to is not None and value:
            value = os.path.normpath(os.path.join(relative_to, value))
        kwargs[key] = value
        wheres[(name, key)] = where.removeprefix(f"[{name}] {key} ")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "a list of strings"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[tp]


def _from_env(text: str, tp: Any, where: str) -> Any:
    """Turn an environment variable's text into the key's type (lists: TOML array or commas)."""
    if tp is str:
        return text
    if typing.get_origin(tp) is tuple:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                return tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config {where}: not a TOML array: {exc}") from exc
        return [part.strip() for part in stripped.split(",") if part.strip()]
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config {where}: {text!r} is not true or false")
    try:
        return tp(text.strip())
    except ValueError as exc:
        raise ConfigError(f"config {where}: {text!r} is not {_type_name(tp)}") from exc


def _check(value: Any, tp: Any, meta: Mapping[str, Any], where: str) -> Any:
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {where}: expected a list of strings, got {value!r}")
        value = tuple(value)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config {where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config {where}: {value!r} is not allowed; use a finite number")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {where}: expected an integer, got {value!r}")
    elif not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"config {where}: expected {_type_name(tp)}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"config {where}: {value!r} is not allowed; use one of {allowed}")
    if meta.get("listen") and value:
        try:
            (parse_loopback_listen if meta.get("loopback") else parse_listen)(value)
        except ValueError as exc:
            raise ConfigError(f"config {where}: {exc}") from exc
    if "min" in meta:
        low = meta["min"]
        if value < low or (meta["exclusive"] and value == low):
            bound = f"> {low}" if meta["exclusive"] else f">= {low}"
            raise ConfigError(f"config {where}: {value!r} is out of range; must be {bound}")
    return value
