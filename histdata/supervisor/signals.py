"""SIGTERM/SIGINT handling for the service: the first signal stops gracefully, the second
gives up waiting.

The first signal calls ``on_first`` (typically the root supervisor's ``shutdown``): the feed
stops, buffers drain, the pool closes. The second raises ``KeyboardInterrupt`` from the
watcher, which cancels the rest of the program. Supervisors still stop their children in
order, but within the deadlines fixed at the first request, so it cannot take longer than
that. Once the watcher has raised, the default handlers are back: a third SIGTERM ends the
process at once (the disk journal covers what was not committed).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import structlog
import trio

__all__ = ["watch_signals"]

log = structlog.get_logger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def watch_signals(
    on_first: Callable[[], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Watch SIGTERM and SIGINT until the second one; report started once they are caught.

    Calls ``on_first()`` on the first signal; raises ``KeyboardInterrupt`` on the second.
    Never returns otherwise: cancel it to stop watching. Must run in the main thread
    (``trio.open_signal_receiver`` raises ``RuntimeError`` elsewhere).
    """
    with trio.open_signal_receiver(*_SIGNALS) as received:
        task_status.started()
        first = True
        async for signum in received:
            name = signal.Signals(signum).name
            if first:
                first = False
                log.warning("signal received: shutting down gracefully", signal=name)
                on_first()
            else:
                log.error("second signal received: stopping now", signal=name)
                raise KeyboardInterrupt(name)
