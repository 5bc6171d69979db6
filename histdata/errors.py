"""The one error hierarchy of histdata.

Every error histdata raises on purpose derives from :class:`HistdataError`. It splits in two
branches that the supervisor's restart policy switches on:

- :class:`TransientError`: the world may heal (a database restart, a dropped socket, a rate
  limit); restarting or retrying after a backoff is the right answer.
- :class:`FatalError`: retrying cannot help (bad configuration, a schema from the future);
  the service stops with a clear message.

:class:`RejectedInput` is neither: it names one bad piece of input (a CSV row, a frame, a
query parameter) that is counted and skipped while the good input around it is kept.
"""

from __future__ import annotations

__all__ = [
    "BadParameter",
    "ConfigError",
    "DatabaseRefused",
    "DatabaseUnavailable",
    "FatalError",
    "HistdataError",
    "KrakenError",
    "RateLimited",
    "RejectedInput",
    "StorageNotOpen",
    "TransientError",
    "UnknownSymbol",
]


class HistdataError(Exception):
    """Root of every error histdata raises deliberately."""


class TransientError(HistdataError):
    """A failure that may pass: retry after a backoff, or let the supervisor restart."""


class FatalError(HistdataError):
    """A failure that retrying cannot fix; the service stops and says why."""


class ConfigError(FatalError):
    """The configuration is wrong: one line naming the key, the file and the allowed values."""


class DatabaseRefused(FatalError):
    """The database refused a statement: a privilege is missing or it is read-only (a hot
    standby). Unlike :class:`DatabaseUnavailable` the database is up; asking again as the
    same user, or on the same server, gets the same answer."""


class StorageNotOpen(FatalError):
    """Storage was used before ``open_storage`` opened it, or after it closed."""


class DatabaseUnavailable(TransientError):
    """The database could not be reached or dropped the connection; data is kept for a retry."""


class KrakenError(TransientError):
    """Kraken (or the simulator) answered with an error body or a transport failure."""


class RateLimited(KrakenError):
    """Kraken throttled us: ``EGeneral:Too many requests``, ``EAPI:Rate limit exceeded``, 429."""


class UnknownSymbol(HistdataError, LookupError):
    """No registered pair matches the given spelling (v2 name, v1 wsname, altname or REST key)."""


class RejectedInput(HistdataError, ValueError):
    """One piece of input was invalid: it is counted under ``reason`` and skipped.

    ``reason`` is a short stable label used as a metric key (``bad_price``, ``bad_time``…);
    ``where`` locates the input (``file.csv:17``, ``ws frame 301``, ``query parameter start``).
    """

    def __init__(self, reason: str, detail: str, *, where: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.where = where
        location = f"{where}: " if where else ""
        super().__init__(f"{location}{reason}: {detail}")


class BadParameter(ValueError):
    """A read's parameter (a socket query parameter, a command's option) is missing or
    malformed: the socket answers HTTP 400, a command exits 2. A ``ValueError``, not a
    :class:`HistdataError`: it is the caller's input, named by :attr:`parameter`."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"parameter {parameter!r}: {message}")
