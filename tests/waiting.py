"""Waiting in tests until a condition on actor statistics holds.

One helper for every test module: the copies each had differed only in their poll interval
and default timeout. It polls, because the actors' statistics have no change notification.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["until"]

_POLL_S = 0.02


async def until(predicate: Callable[[], object], *, timeout_s: float = 30.0) -> None:
    """Return once ``predicate()`` is truthy; raise :class:`trio.TooSlowError` (failing the
    test) when it is not within ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while True:
            if predicate():
                return
            await trio.sleep(_POLL_S)
