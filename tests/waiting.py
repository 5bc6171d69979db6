"""Waiting in tests until a condition on actor statistics holds.

One helper for every test module. It awaits the actors' change notification
(:data:`histdata.supervisor.statistics_changed`) and checks the condition at each change,
so a test wakes when a counter moves rather than at a poll interval; a slow re-check covers
conditions over things no actor counts (a test's own list of received rows).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from histdata.supervisor import statistics_changed

__all__ = ["until"]


async def until(
    predicate: Callable[[], object], *, timeout_s: float = 30.0, recheck_s: float = 0.25
) -> None:
    """Return once ``predicate()`` is truthy, checking it at every statistics change and at
    least every ``recheck_s``; raise :class:`trio.TooSlowError` (failing the test) when it
    does not hold within ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not predicate():
            with trio.move_on_after(recheck_s):
                await statistics_changed.wait()
