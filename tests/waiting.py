"""Waiting in tests until a condition on actor statistics holds.

One helper for every test module. It awaits the actors' change notification
(:data:`histdata.supervisor.statistics_changed`) and checks the condition at each change,
so a test wakes when a counter moves rather than at a poll interval; a slow re-check covers
conditions over things no actor counts (a test's own list of received rows).
"""

from __future__ import annotations

from collections.abc import Callable

from histdata.supervisor import wait_until

__all__ = ["until"]


async def until(predicate: Callable[[], object], *, timeout_s: float = 30.0) -> None:
    """Return once ``predicate()`` is truthy; raise :class:`trio.TooSlowError` (failing the
    test) when it is not within ``timeout_s``."""
    await wait_until(predicate, timeout_s=timeout_s)
