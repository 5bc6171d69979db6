"""Bounded channels with an explicit overflow policy and counters for every item lost.

Every edge between two actors (feed → buffer → flusher, …) is one :class:`Channel`. Its
capacity bounds memory; its :class:`Overflow` policy says what happens when the consumer
falls behind, and :meth:`Channel.statistics` exports how often that happened. The invariant
the counters keep, in weight units, is::

    sent == received + dropped + spilled + (weight of what is still queued)

so a drop that is not counted cannot happen.

A channel outlives the actors on both of its ends: when the supervisor restarts a crashed
consumer, the new incarnation receives from the same channel and nothing queued is lost. That
is why there is a single object rather than trio's send/receive pair, and why only the sending
side closes it.
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

import trio

from histdata.supervisor.changes import statistics_changed

__all__ = ["Channel", "ChannelStatistics", "Overflow", "SpillSink", "channels"]

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Overflow(StrEnum):
    """What :meth:`Channel.send` does when the channel is full."""

    BLOCK = "block"
    """Wait for room: backpressure on the producer. Nothing is lost."""
    DROP_OLDEST = "drop_oldest"
    """Evict the oldest queued item to make room; counted in ``dropped``."""
    DROP_NEWEST = "drop_newest"
    """Discard the item being sent; counted in ``dropped``."""
    SPILL = "spill"
    """Hand the item being sent to the channel's :class:`SpillSink`; counted in ``spilled``.
    While the sink declines (returns False), wait for room as under BLOCK."""


class SpillSink(Protocol[T_contra]):
    """Where a SPILL channel puts what does not fit (the disk journal, replayed later)."""

    async def spill(self, item: T_contra) -> bool:
        """Persist ``item`` and return True; or return False to decline it for now, and the
        sender waits for room instead (backpressure). Raising means the item was not kept
        and the send fails."""


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of one channel.

    ``capacity``, ``depth`` and ``peak`` count queued messages; ``sent``, ``received``,
    ``dropped`` and ``spilled`` count items in the channel's weight unit (a batch of 500
    trades with ``weight=len`` counts 500).
    """

    name: str
    capacity: int
    policy: Overflow
    depth: int
    peak: int
    sent: int
    received: int
    dropped: int
    spilled: int
    closed: bool


def _unit_weight(_item: object) -> int:
    return 1


# Keyed by a creation serial so channels() lists in creation order; weak values so a channel
# (and every test's channels) disappears from the registry when nothing else holds it.
_registry: weakref.WeakValueDictionary[int, Channel[Any]] = weakref.WeakValueDictionary()
_serial = itertools.count()


def channels() -> list[Channel[Any]]:
    """Every live channel of the process, oldest first (for /metrics and ``histdata status``)."""
    return list(_registry.values())


class Channel(Generic[T]):
    """A bounded FIFO between actors with an explicit overflow policy.

    ``Channel(name, capacity, overflow, *, spill=None, weight=None)``: ``capacity`` (≥ 1) is
    the number of messages held; ``spill`` is required for :attr:`Overflow.SPILL` and refused
    otherwise; ``weight(item)`` gives how many items one message counts for (default 1).
    Raises ``ValueError`` on an invalid combination.

    Any number of tasks may send and receive. :meth:`close` is the sending side's "no more":
    receivers drain what is queued and then get ``trio.EndOfChannel``.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        overflow: Overflow,
        *,
        spill: SpillSink[T] | None = None,
        weight: Callable[[T], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"channel {name!r}: capacity must be at least 1, got {capacity}")
        overflow = Overflow(overflow)
        if overflow is Overflow.SPILL and spill is None:
            raise ValueError(f"channel {name!r}: overflow=spill needs a spill sink")
        if overflow is not Overflow.SPILL and spill is not None:
            raise ValueError(f"channel {name!r}: a spill sink is only used with overflow=spill")
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self._sink = spill
        self._weight: Callable[[T], int] = weight if weight is not None else _unit_weight
        # Each entry keeps its weight so a drop or receive counts exactly what was sent.
        self._queue: deque[tuple[T, int]] = deque()
        self._closed = False
        self._not_empty = trio.lowlevel.ParkingLot()
        self._not_full = trio.lowlevel.ParkingLot()
        self._peak = 0
        self._sent = 0
        self._received = 0
        self._dropped = 0
        self._spilled = 0
        _registry[next(_serial)] = self

    def __repr__(self) -> str:
        return (
            f"<Channel {self.name!r} {len(self._queue)}/{self.capacity} {self.overflow.value}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- sending -----------------------------------------------------------------------------

    async def send(self, item: T) -> None:
        """Queue ``item``, applying the overflow policy when full.

        BLOCK waits for room; DROP_OLDEST and DROP_NEWEST never wait; SPILL awaits the sink.
        Raises ``trio.ClosedResourceError`` if the channel is (or, while blocked, becomes)
        closed, and whatever the spill sink raises (the item then counts as not sent).
        """
        await self.send_many((item,))

    async def send_many(self, items: Sequence[T]) -> None:
        """Queue ``items`` in order, as :meth:`send` would one by one, with one checkpoint.

        A frame of hundreds of trades then costs one pass of the scheduler instead of one per
        trade, which profiling showed to be most of the live path's CPU. Policies and counts
        are exactly those of :meth:`send`; an item that must wait (BLOCK) or spill waits or
        spills on its turn. Raises as :meth:`send`; items before the failing one are queued.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        for item in items:
            weight = self._weight(item)
            while True:
                if self._closed:
                    raise trio.ClosedResourceError(f"channel {self.name!r} is closed")
                if not self._is_full():
                    self._put(item, weight)
                    break
                if self.overflow is Overflow.BLOCK:
                    await self._not_full.park()
                elif self.overflow is Overflow.SPILL:
                    assert self._sink is not None
                    if not await self._sink.spill(item):
                        await self._not_full.park()
                        continue
                    self._sent += weight
                    self._spilled += weight
                    break
                else:
                    self._overflow_nowait(item, weight)
                    break
        statistics_changed.notify()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, item: T) -> None:
        """Queue ``item`` without waiting, applying a drop policy when full.

        Raises ``trio.WouldBlock`` when full under BLOCK, and under SPILL too: the sink is
        async I/O, which a non-blocking call cannot do (use :meth:`send`). Raises
        ``trio.ClosedResourceError`` when closed.
        """
        weight = self._weight(item)
        if self._closed:
            raise trio.ClosedResourceError(f"channel {self.name!r} is closed")
        if not self._is_full():
            self._put(item, weight)
        elif self.overflow in (Overflow.BLOCK, Overflow.SPILL):
            raise trio.WouldBlock
        else:
            self._overflow_nowait(item, weight)
        statistics_changed.notify()

    def close(self) -> None:
        """Stop accepting items; receivers drain the queue, then get ``trio.EndOfChannel``.

        Blocked senders raise ``trio.ClosedResourceError``. Closing twice is a no-op.
        """
        self._closed = True
        self._not_empty.unpark_all()
        self._not_full.unpark_all()

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self) -> T:
        """The oldest queued item, waiting for one if empty.

        Raises ``trio.EndOfChannel`` once the channel is closed and drained.
        """
        (item,) = await self.receive_batch(1)
        return item

    async def receive_batch(self, max_items: int) -> list[T]:
        """Between 1 and ``max_items`` of the oldest items, waiting only while empty.

        One checkpoint however many items are taken (see :meth:`send_many`). Raises
        ``trio.EndOfChannel`` once the channel is closed and drained.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._queue:
            if self._closed:
                raise trio.EndOfChannel
            await self._not_empty.park()
        items = [self._take() for _ in range(min(max_items, len(self._queue)))]
        statistics_changed.notify()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return items

    def receive_nowait(self) -> T:
        """The oldest queued item; raises ``trio.WouldBlock`` if empty and open,
        ``trio.EndOfChannel`` if empty and closed."""
        if self._queue:
            item = self._take()
            statistics_changed.notify()
            return item
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    # -- introspection -----------------------------------------------------------------------

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of depth, peak and the sent/received/dropped/spilled counters."""
        return ChannelStatistics(
            name=self.name,
            capacity=self.capacity,
            policy=self.overflow,
            depth=len(self._queue),
            peak=self._peak,
            sent=self._sent,
            received=self._received,
            dropped=self._dropped,
            spilled=self._spilled,
            closed=self._closed,
        )

    # -- internals ---------------------------------------------------------------------------

    def _is_full(self) -> bool:
        return len(self._queue) >= self.capacity

    def _put(self, item: T, weight: int) -> None:
        self._queue.append((item, weight))
        self._sent += weight
        self._peak = max(self._peak, len(self._queue))
        # Checked first: this runs per trade, and unparking nobody showed in profiles.
        if self._not_empty:
            self._not_empty.unpark()

    def _take(self) -> T:
        item, weight = self._queue.popleft()
        self._received += weight
        if self._not_full:
            self._not_full.unpark()
        return item

    def _overflow_nowait(self, item: T, weight: int) -> None:
        """Apply DROP_OLDEST or DROP_NEWEST to a full channel."""
        if self.overflow is Overflow.DROP_OLDEST:
            _, evicted = self._queue.popleft()
            self._dropped += evicted
            self._put(item, weight)
        else:
            self._sent += weight
            self._dropped += weight
