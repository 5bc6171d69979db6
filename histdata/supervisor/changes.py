"""A change notification for actor statistics: wait for a counter to move, do not poll it.

Actors keep their statistics as plain counters and call :meth:`Changes.notify` on
:data:`statistics_changed` where they move them (a batch written or journaled, a session
opened or closed, a frame's trades taken, a subscriber added, a repair done, an item through a
channel). Whoever waits for a condition over those statistics — the tests, a status watcher —
awaits :meth:`Changes.wait` and checks again (tests/waiting.py is that loop).

One notification serves the whole process: waiters check their own condition, and a process
runs a handful of actors, so waking every waiter on any change costs less than routing
changes to the waiters that care. ``notify`` does nothing but test an integer while nobody
waits, which is always, outside tests: it is safe on the live path.
"""

from __future__ import annotations

import trio

__all__ = ["Changes", "statistics_changed"]


class Changes:
    """Wakes every task waiting in :meth:`wait` when :meth:`notify` is called.

    Only for use from trio tasks of one thread (actors notify from their own tasks, never
    from a worker thread).
    """

    def __init__(self) -> None:
        self._event = trio.Event()
        self._waiters = 0

    def notify(self) -> None:
        """Wake the tasks waiting now; a task that starts waiting later waits for the next."""
        if self._waiters:
            event, self._event = self._event, trio.Event()
            event.set()

    async def wait(self) -> None:
        """Return at the next :meth:`notify`."""
        self._waiters += 1
        try:
            await self._event.wait()
        finally:
            self._waiters -= 1


statistics_changed = Changes()
"""The process's notification: actors call ``statistics_changed.notify()`` after a change."""
