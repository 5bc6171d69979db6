"""Tests for histdata.supervisor.channel: bounded channels whose every loss is counted."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

from histdata.supervisor.channel import Channel, ChannelStatistics, Overflow, channels


class ListSink:
    """A spill sink that keeps what it was given, in order."""

    def __init__(self) -> None:
        self.items: list[int] = []

    async def spill(self, item: int) -> bool:
        await trio.lowlevel.checkpoint()
        self.items.append(item)
        return True


def drain(channel: Channel[int]) -> list[int]:
    received = []
    while True:
        try:
            received.append(channel.receive_nowait())
        except trio.WouldBlock:
            return received


def balance(stats: ChannelStatistics, queued: int = 0) -> int:
    """sent - received - dropped - spilled - queued: zero when nothing went uncounted."""
    return stats.sent - stats.received - stats.dropped - stats.spilled - queued


class TestDropPolicies:
    async def test_drop_oldest_keeps_newest_and_counts_exactly_what_went_missing(self) -> None:
        """DROP_OLDEST keeps the last `capacity` items and `dropped` equals the items lost."""
        channel: Channel[int] = Channel("t", 10, Overflow.DROP_OLDEST)
        sent = list(range(1000))
        for item in sent:
            await channel.send(item)
        received = drain(channel)
        stats = channel.statistics()
        assert received == sent[-10:]
        assert stats.dropped == len(sent) - len(received) == 990
        assert (stats.sent, stats.received, stats.depth, stats.peak) == (1000, 10, 0, 10)
        assert balance(stats) == 0

    async def test_drop_newest_keeps_oldest_and_counts_exactly_what_went_missing(self) -> None:
        """DROP_NEWEST keeps the first `capacity` items and counts every discarded send."""
        channel: Channel[int] = Channel("t", 10, Overflow.DROP_NEWEST)
        sent = list(range(1000))
        for item in sent:
            channel.send_nowait(item)
        received = drain(channel)
        stats = channel.statistics()
        assert received == sent[:10]
        assert stats.dropped == len(sent) - len(received)
        assert balance(stats) == 0

    async def test_interleaved_traffic_never_loses_uncounted_items(self) -> None:
        """With a consumer keeping up part of the time, received + dropped is every item sent."""
        channel: Channel[int] = Channel("t", 4, Overflow.DROP_OLDEST)
        received: list[int] = []
        for item in range(500):
            await channel.send(item)
            if item % 3 == 0:
                received.append(await channel.receive())
        received += drain(channel)
        stats = channel.statistics()
        assert received == sorted(received)  # order is preserved among survivors
        assert stats.dropped == 500 - len(received)
        assert stats.received == len(received)

    async def test_weight_counts_items_inside_batches(self) -> None:
        """With weight=len a dropped batch of 500 counts 500 and depth still counts batches."""
        channel: Channel[list[int]] = Channel("batches", 2, Overflow.DROP_OLDEST, weight=len)
        for size in (500, 200, 300):
            await channel.send(list(range(size)))
        stats = channel.statistics()
        assert stats.dropped == 500
        assert stats.sent == 1000
        assert stats.depth == 2
        assert [len(channel.receive_nowait()) for _ in range(2)] == [200, 300]
        assert channel.statistics().received == 500


class TestBlock:
    async def test_full_channel_blocks_the_sender_until_room(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Under BLOCK a sender waits for the consumer; nothing is dropped."""
        channel: Channel[int] = Channel("t", 2, Overflow.BLOCK)
        sent_at: list[float] = []

        async def producer() -> None:
            for item in range(5):
                await channel.send(item)
                sent_at.append(trio.current_time())
            channel.close()

        received = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.sleep(10)
            assert channel.statistics().depth == 2  # the producer is stuck on the third item
            assert len(sent_at) == 2
            async for item in channel:
                received.append(item)
                await trio.sleep(1)
        assert received == [0, 1, 2, 3, 4]
        assert sent_at[2] >= 10  # waited for the consumer
        stats = channel.statistics()
        assert (stats.dropped, stats.peak, stats.sent, stats.received) == (0, 2, 5, 5)

    async def test_send_nowait_raises_wouldblock_when_full(self) -> None:
        """send_nowait on a full BLOCK channel raises WouldBlock and counts nothing."""
        channel: Channel[int] = Channel("t", 1, Overflow.BLOCK)
        channel.send_nowait(1)
        with pytest.raises(trio.WouldBlock):
            channel.send_nowait(2)
        assert channel.statistics().sent == 1

    async def test_cancelled_blocked_send_sends_nothing(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A blocked send that is cancelled leaves no trace in the queue or counters."""
        channel: Channel[int] = Channel("t", 1, Overflow.BLOCK)
        await channel.send(1)
        with trio.move_on_after(5):
            await channel.send(2)
        assert drain(channel) == [1]
        assert channel.statistics().sent == 1


class TestSpill:
    async def test_sink_receives_exactly_the_overflow(self) -> None:
        """Under SPILL the sink gets every item that did not fit, in order, counted as spilled."""
        sink = ListSink()
        channel: Channel[int] = Channel("t", 3, Overflow.SPILL, spill=sink)
        for item in range(10):
            await channel.send(item)
        stats = channel.statistics()
        assert drain(channel) == [0, 1, 2]
        assert sink.items == [3, 4, 5, 6, 7, 8, 9]
        assert (stats.spilled, stats.dropped, stats.sent) == (7, 0, 10)

    async def test_declining_sink_means_backpressure(self) -> None:
        """While the sink declines, a send into a full channel waits for room; nothing spills."""

        class DecliningSink:
            async def spill(self, item: int) -> bool:
                await trio.lowlevel.checkpoint()
                return False

        channel: Channel[int] = Channel("t", 1, Overflow.SPILL, spill=DecliningSink())
        await channel.send(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.send, 2)
            await trio.testing.wait_all_tasks_blocked()
            assert channel.statistics().sent == 1
            assert channel.receive_nowait() == 1
        assert channel.receive_nowait() == 2
        stats = channel.statistics()
        assert (stats.sent, stats.spilled, stats.dropped) == (2, 0, 0)

    async def test_failing_sink_is_not_counted(self) -> None:
        """When the sink raises, the send raises and the item counts as neither sent nor spilled."""

        class BrokenSink:
            async def spill(self, item: int) -> bool:
                raise OSError("disk full")

        channel: Channel[int] = Channel("t", 1, Overflow.SPILL, spill=BrokenSink())
        await channel.send(1)
        with pytest.raises(OSError, match="disk full"):
            await channel.send(2)
        stats = channel.statistics()
        assert (stats.sent, stats.spilled) == (1, 0)

    async def test_send_nowait_cannot_spill(self) -> None:
        """send_nowait on a full SPILL channel raises WouldBlock rather than skip the sink."""
        sink = ListSink()
        channel: Channel[int] = Channel("t", 1, Overflow.SPILL, spill=sink)
        channel.send_nowait(1)
        with pytest.raises(trio.WouldBlock):
            channel.send_nowait(2)
        assert sink.items == []

    def test_spill_requires_a_sink_and_only_spill_takes_one(self) -> None:
        """SPILL without a sink, or a sink with another policy, is a ValueError."""
        with pytest.raises(ValueError, match="spill sink"):
            Channel("t", 1, Overflow.SPILL)
        with pytest.raises(ValueError, match="spill sink"):
            Channel("t", 1, Overflow.BLOCK, spill=ListSink())


class TestClose:
    async def test_receivers_drain_then_see_end_of_channel(self) -> None:
        """After close() queued items are still delivered, then EndOfChannel."""
        channel: Channel[int] = Channel("t", 5, Overflow.BLOCK)
        for item in range(3):
            await channel.send(item)
        channel.close()
        assert [item async for item in channel] == [0, 1, 2]
        with pytest.raises(trio.EndOfChannel):
            await channel.receive()
        with pytest.raises(trio.EndOfChannel):
            channel.receive_nowait()
        assert channel.statistics().closed

    async def test_send_after_close_raises(self) -> None:
        """Sending on a closed channel raises ClosedResourceError, under every policy."""
        for policy in (Overflow.BLOCK, Overflow.DROP_OLDEST, Overflow.DROP_NEWEST):
            channel: Channel[int] = Channel("t", 5, policy)
            channel.close()
            with pytest.raises(trio.ClosedResourceError):
                await channel.send(1)
            with pytest.raises(trio.ClosedResourceError):
                channel.send_nowait(1)
            assert channel.statistics().sent == 0

    async def test_close_wakes_blocked_receivers_and_senders(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A waiting receiver gets EndOfChannel and a blocked sender ClosedResourceError."""
        empty: Channel[int] = Channel("empty", 1, Overflow.BLOCK)
        full: Channel[int] = Channel("full", 1, Overflow.BLOCK)
        full.send_nowait(0)
        outcomes: list[str] = []

        async def receiver() -> None:
            with pytest.raises(trio.EndOfChannel):
                await empty.receive()
            outcomes.append("receiver")

        async def sender() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await full.send(1)
            outcomes.append("sender")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(sender)
            await trio.sleep(1)
            empty.close()
            full.close()
        assert sorted(outcomes) == ["receiver", "sender"]
        assert full.receive_nowait() == 0

    async def test_receive_nowait_on_empty_open_channel_would_block(self) -> None:
        """receive_nowait on an empty open channel raises WouldBlock."""
        channel: Channel[int] = Channel("t", 1, Overflow.BLOCK)
        with pytest.raises(trio.WouldBlock):
            channel.receive_nowait()


class TestBatches:
    @pytest.mark.parametrize("overflow", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
    async def test_send_many_counts_as_sends_one_by_one(self, overflow: Overflow) -> None:
        """send_many keeps the same items and counts as the same sends one at a time."""
        one: Channel[int] = Channel("one", 7, overflow)
        many: Channel[int] = Channel("many", 7, overflow)
        for item in range(100):
            await one.send(item)
        await many.send_many(list(range(100)))
        assert drain(many) == drain(one)
        a, b = one.statistics(), many.statistics()
        assert (a.sent, a.received, a.dropped) == (b.sent, b.received, b.dropped)

    async def test_send_many_spills_the_overflow(self) -> None:
        """Under SPILL the items beyond capacity go to the sink, in order."""
        sink = ListSink()
        channel: Channel[int] = Channel("t", 3, Overflow.SPILL, spill=sink)
        await channel.send_many(list(range(10)))
        assert drain(channel) == [0, 1, 2]
        assert sink.items == list(range(3, 10))
        assert channel.statistics().spilled == 7

    async def test_receive_batch_takes_at_most_what_is_asked(self) -> None:
        """receive_batch returns what is queued up to its bound, oldest first, then ends."""
        channel: Channel[int] = Channel("t", 100, Overflow.BLOCK)
        await channel.send_many(list(range(5)))
        assert await channel.receive_batch(3) == [0, 1, 2]
        assert await channel.receive_batch(10) == [3, 4]
        channel.close()
        with pytest.raises(trio.EndOfChannel):
            await channel.receive_batch(10)


class TestStatisticsAndRegistry:
    async def test_peak_tracks_the_high_water_mark(self) -> None:
        """peak is the highest depth ever reached, depth the current one."""
        channel: Channel[int] = Channel("t", 10, Overflow.BLOCK)
        for item in range(7):
            channel.send_nowait(item)
        for _ in range(5):
            channel.receive_nowait()
        channel.send_nowait(99)
        stats = channel.statistics()
        assert (stats.depth, stats.peak) == (3, 7)
        assert stats == ChannelStatistics(
            name="t",
            capacity=10,
            policy=Overflow.BLOCK,
            depth=3,
            peak=7,
            sent=8,
            received=5,
            dropped=0,
            spilled=0,
            closed=False,
        )

    def test_registry_lists_live_channels_and_forgets_dead_ones(self) -> None:
        """channels() lists every live channel in creation order and drops collected ones."""
        first: Channel[int] = Channel("registry-first", 1, Overflow.BLOCK)
        second: Channel[int] = Channel("registry-second", 1, Overflow.BLOCK)
        names = [channel.name for channel in channels()]
        assert names.index("registry-first") < names.index("registry-second")
        del second
        gc.collect()
        names = [channel.name for channel in channels()]
        assert "registry-second" not in names
        assert first in channels()

    def test_capacity_must_be_positive(self) -> None:
        """A channel that can hold nothing is a ValueError, not a silent black hole."""
        with pytest.raises(ValueError, match="capacity"):
            Channel("t", 0, Overflow.DROP_NEWEST)
