"""Tests for histdata.kraken.ratelimit: the shared, fair token bucket with a penalty box."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from histdata.errors import RateLimited
from histdata.kraken.parse import KrakenRateLimited
from histdata.kraken.ratelimit import RateLimiter


async def grant_times(limiter: RateLimiter, n: int) -> list[float]:
    start = trio.current_time()
    times = []
    for _ in range(n):
        await limiter.wait()
        times.append(trio.current_time() - start)
    return times


class TestBucket:
    async def test_burst_then_sustained_rate(self, autojump_clock: trio.testing.MockClock) -> None:
        """A fresh limiter grants `burst` permits at once, then one per 1/rate seconds."""
        limiter = RateLimiter(rate_per_s=2.0, burst=3)
        times = await grant_times(limiter, 6)
        assert times == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5])

    async def test_idle_refills_up_to_burst(self, autojump_clock: trio.testing.MockClock) -> None:
        """After an idle period the bucket holds at most `burst` tokens."""
        limiter = RateLimiter(rate_per_s=1.0, burst=2)
        await grant_times(limiter, 2)
        await trio.sleep(100)
        assert await grant_times(limiter, 3) == pytest.approx([0, 0, 1.0])

    async def test_fifo_across_callers(self, autojump_clock: trio.testing.MockClock) -> None:
        """Concurrent callers are served in arrival order, one per token."""
        limiter = RateLimiter(rate_per_s=1.0, burst=1)
        served: list[tuple[int, float]] = []

        async def caller(index: int) -> None:
            await trio.sleep(index * 0.01)  # arrive in index order
            await limiter.wait()
            served.append((index, trio.current_time()))

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for index in range(5):
                nursery.start_soon(caller, index)
        assert [index for index, _ in served] == [0, 1, 2, 3, 4]
        assert [at - start for _, at in served] == pytest.approx([0, 1, 2, 3, 4], abs=0.02)
        stats = limiter.statistics()
        assert stats.requests == 5
        assert stats.waits == 4
        assert stats.waiting == 0

    async def test_cancelled_waiter_leaves_no_trace(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A waiter cancelled in the queue does not consume a token or block the next one."""
        limiter = RateLimiter(rate_per_s=1.0, burst=1)
        await limiter.wait()
        with trio.move_on_after(0.5):
            await limiter.wait()
        start = trio.current_time()
        await limiter.wait()
        assert trio.current_time() - start == pytest.approx(0.5)
        assert limiter.statistics().requests == 2

    def test_bad_settings(self) -> None:
        """A non-positive rate or a burst below one is refused."""
        with pytest.raises(ValueError, match="rate_per_s"):
            RateLimiter(rate_per_s=0)
        with pytest.raises(ValueError, match="burst"):
            RateLimiter(burst=0)


class TestPenaltyBox:
    async def test_cooldown_blocks_everyone(self, autojump_clock: trio.testing.MockClock) -> None:
        """After a penalty nobody gets a permit before the cool-down, then one probe at a time."""
        limiter = RateLimiter(rate_per_s=1.0, burst=10, penalty_base_s=4.0, jitter=0.0)
        limiter.penalize()
        assert await grant_times(limiter, 3) == pytest.approx([4.0, 5.0, 6.0])
        stats = limiter.statistics()
        assert (stats.penalties, stats.rate_limit_errors, stats.penalty_streak) == (1, 1, 1)

    async def test_exponential_and_reset(self, autojump_clock: trio.testing.MockClock) -> None:
        """Consecutive penalties double the cool-down; a success resets it."""
        limiter = RateLimiter(penalty_base_s=2.0, penalty_max_s=100.0, jitter=0.0)
        cooldowns = []
        for _ in range(3):
            limiter.penalize()
            cooldowns.append(limiter.statistics().cooldown_remaining_s)
            await limiter.wait()
        assert cooldowns == pytest.approx([2.0, 4.0, 8.0])
        limiter.record_success()
        limiter.penalize()
        assert limiter.statistics().cooldown_remaining_s == pytest.approx(2.0)

    async def test_cap_and_jitter(self, autojump_clock: trio.testing.MockClock) -> None:
        """Cool-downs stay within the jitter spread, never exceed the cap, and vary."""
        limiter = RateLimiter(penalty_base_s=10.0, penalty_max_s=30.0, jitter=0.5, seed=7)
        seen = []
        for _ in range(8):
            limiter.penalize()
            seen.append(limiter.statistics().cooldown_remaining_s)
            await limiter.wait()
        assert 5.0 <= seen[0] <= 15.0
        assert all(15.0 <= value <= 30.0 for value in seen[2:])
        assert len(set(seen[2:])) > 1

    async def test_in_flight_errors_do_not_double(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Several errors reported during one cool-down count once toward the streak."""
        limiter = RateLimiter(penalty_base_s=2.0, jitter=0.0)
        for _ in range(3):
            limiter.penalize()
        stats = limiter.statistics()
        assert (stats.penalties, stats.rate_limit_errors, stats.penalty_streak) == (1, 3, 1)
        assert stats.cooldown_remaining_s == pytest.approx(2.0)

    async def test_retry_after_hint_is_honoured(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Kraken's retry-after wins when it is longer than our own cool-down."""
        limiter = RateLimiter(penalty_base_s=1.0, jitter=0.0)
        limiter.penalize(retry_after_s=30.0)
        assert (await grant_times(limiter, 1)) == pytest.approx([30.0])

    async def test_waiter_honours_penalty_set_while_waiting(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A caller already queued waits out a cool-down that starts while it waits."""
        limiter = RateLimiter(rate_per_s=1.0, burst=1, penalty_base_s=10.0, jitter=0.0)
        await limiter.wait()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(limiter.wait)
            await trio.sleep(0.5)
            limiter.penalize()
        assert trio.current_time() - start == pytest.approx(10.5)


class TestAcquire:
    async def test_rate_limited_block_penalizes(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """RateLimited raised inside acquire() starts a cool-down with its hint and propagates."""
        limiter = RateLimiter(penalty_base_s=1.0, jitter=0.0)
        with pytest.raises(RateLimited):
            async with limiter.acquire():
                raise KrakenRateLimited("throttled", retry_after_s=12.0)
        assert limiter.statistics().cooldown_remaining_s == pytest.approx(12.0)

    async def test_clean_exit_resets_streak(self, autojump_clock: trio.testing.MockClock) -> None:
        """A successful request after the cool-down resets the penalty streak."""
        limiter = RateLimiter(penalty_base_s=1.0, jitter=0.0)
        limiter.penalize()
        async with limiter.acquire():
            pass
        assert limiter.statistics().penalty_streak == 0

    async def test_other_errors_are_neutral(self, autojump_clock: trio.testing.MockClock) -> None:
        """A non-rate-limit failure neither penalizes nor resets the streak."""
        limiter = RateLimiter(penalty_base_s=1.0, jitter=0.0)
        limiter.penalize()
        with pytest.raises(OSError, match="boom"):
            async with limiter.acquire():
                raise OSError("boom")
        stats = limiter.statistics()
        assert (stats.penalties, stats.penalty_streak) == (1, 1)
