"""Structured logging: one idempotent ``configure_logging``, resettable for tests.

Log lines are JSON when stderr is not a terminal (systemd's journal, files) and a readable
console format otherwise. Every line an actor writes carries its ``actor`` name: actors take
their logger from ``structlog.get_logger(actor=...)`` or bind it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging", "reset_logging"]

_configured = False


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] | str = "auto"
) -> None:
    """Configure structlog (and stdlib logging) once; later calls replace the settings."""
    global _configured
    numeric = logging.getLevelNamesMapping()[level.upper()]
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
    _configured = True


def reset_logging() -> None:
    """Return structlog to its defaults (for tests)."""
    global _configured
    structlog.reset_defaults()
    _configured = False
