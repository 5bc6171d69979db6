"""Configuration: one TOML file, overridable key by key from the environment, validated once.

``load_config`` reads the file (``-c``, else ``$HISTDATA_CONFIG``, else ``./config.toml``;
a missing default file means all defaults), applies ``HISTDATA_<SECTION>_<KEY>`` variables on
top, and returns frozen typed objects. Any unknown section or key, wrong type or out-of-range
value raises :class:`~histdata.errors.ConfigError` whose message is one line naming the key,
where it came from, and what is allowed.

There is deliberately no password key and no default credential anywhere: a database URL
without a password lets libpq find it (``PGPASSWORD``, ``~/.pgpass``/``PGPASSFILE``, or a
systemd credential exported as a passfile).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histdata.errors import ConfigError

__all__ = [
    "BackfillConfig",
    "Config",
    "DatabaseConfig",
    "GapfillConfig",
    "KrakenConfig",
    "LiveConfig",
    "MaintenanceConfig",
    "QueryConfig",
    "RollupConfig",
    "ServiceConfig",
    "load_config",
]

ENV_PREFIX = "HISTDATA_"


def _choice(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _positive() -> dict[str, Any]:
    return {"min": 0, "exclusive": True}


def _non_negative() -> dict[str, Any]:
    return {"min": 0, "exclusive": False}


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """``[service]``: where the service keeps its state and how it logs and stops."""

    data_dir: str = "./var"
    log_level: str = field(default="info", metadata=_choice("debug", "info", "warning", "error"))
    log_format: str = field(default="auto", metadata=_choice("auto", "json", "console"))
    shutdown_timeout_s: float = field(default=15.0, metadata=_positive())

    @property
    def data_path(self) -> Path:
        """``data_dir`` as a path (relative paths are relative to the working directory)."""
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
    symbols: tuple[str, ...] = ("BTC/USD", "ETH/USD")
    rest_rate_per_s: float = field(default=1.0, metadata=_positive())
    rest_burst: int = field(default=5, metadata=_positive())
    request_timeout_s: float = field(default=30.0, metadata=_positive())
    ws_stale_after_s: float = field(default=10.0, metadata=_positive())
    ws_ping_interval_s: float = field(default=15.0, metadata=_positive())


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

    socket: str = "./var/histdata.sock"
    stream_queue: int = field(default=10_000, metadata=_positive())


@dataclass(frozen=True, slots=True)
class ImportConfig:
    """``[import]``: bounds of ``histdata import`` against hostile files."""

    max_line_bytes: int = field(default=1 << 20, metadata=_positive())  # longer: rejected


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
    import_: ImportConfig = ImportConfig()  # [import]; the name is a Python keyword
    source: str = "defaults"


_SECTIONS: dict[str, type[Any]] = {
    f.name.rstrip("_"): typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name != "source"
}


def load_config(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Load, override and validate the configuration.

    ``path`` wins over ``$HISTDATA_CONFIG``, which wins over ``./config.toml``. An explicit
    path that does not exist is an error; a missing default file means built-in defaults.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key, wrong type or value.
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

    sections: dict[str, Any] = {}
    for section_name, section_value in raw.items():
        if section_name not in _SECTIONS:
            raise ConfigError(
                f"config {source}: unknown section [{section_name}];"
                f" allowed: {', '.join(_SECTIONS)}"
            )
        if not isinstance(section_value, dict):
            raise ConfigError(f"config {source}: [{section_name}] must be a table")
    for section_name, cls in _SECTIONS.items():
        sections[section_name] = _build_section(
            section_name, cls, raw.get(section_name, {}), env, source
        )
    fields = {f.name.rstrip("_"): f.name for f in dataclasses.fields(Config)}
    return Config(**{fields[name]: value for name, value in sections.items()}, source=source)


def _build_section(
    name: str, cls: type[Any], values: dict[str, Any], env: Mapping[str, str], source: str
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"config {source}: unknown key [{name}] {key}; allowed: {', '.join(fields)}"
            )
    kwargs: dict[str, Any] = {}
    for key, spec in fields.items():
        env_name = f"{ENV_PREFIX}{name.upper()}_{key.upper()}"
        where = f"[{name}] {key} in {source}"
        if env_name in env:
            where = f"[{name}] {key} from ${env_name}"
            value = _from_env(env[env_name], hints[key], where)
        elif key in values:
            value = values[key]
        else:
            continue
        kwargs[key] = _check(value, hints[key], spec.metadata, where)
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
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {where}: expected an integer, got {value!r}")
    elif not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"config {where}: expected {_type_name(tp)}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"config {where}: {value!r} is not allowed; use one of {allowed}")
    if "min" in meta:
        low = meta["min"]
        if value < low or (meta["exclusive"] and value == low):
            bound = f"> {low}" if meta["exclusive"] else f">= {low}"
            raise ConfigError(f"config {where}: {value!r} is out of range; must be {bound}")
    return value
