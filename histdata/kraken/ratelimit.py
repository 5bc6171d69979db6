"""The one Kraken REST rate limiter: a fair token bucket with a penalty box.

Kraken limits public REST calls per IP (about 1 request/s sustained; bursts are throttled
around the 30th call) and answers excess with HTTP-200 ``EGeneral:Too many requests``; keeping
on after that extends the ban. So every REST caller in the process (backfiller, gap filler,
CLI) must draw from ONE :class:`RateLimiter`: the service creates it once and hands the same
instance to every :class:`~histdata.kraken.rest.KrakenRest`.

- Token bucket: ``rate_per_s`` sustained, ``burst`` requests at most in a row.
- Fair: waiters are served first come, first served (a :class:`trio.Lock` hands over in FIFO
  order), so one busy backfill cannot starve a gap repair.
- Penalty box: after a rate-limit error every caller waits a cool-down that doubles with each
  consecutive penalty (jittered, capped, at least Kraken's own retry hint) and resets after a
  success (delays from :class:`~histdata.supervisor.backoff.Backoff`). After the cool-down
  the bucket holds a single token, so traffic resumes with one probe instead of a burst.
- Shared: Kraken counts per IP, not per process. With ``shared`` (the service passes a
  reservation in the database's per-host bucket, :func:`~histdata.storage.fleet.reserve_rest_slot`)
  each permit also waits for its slot in the budget every process on the host draws from.
  While that budget cannot be reached (the database is away) only the local bucket applies.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from histdata.errors import RateLimited
from histdata.supervisor.backoff import Backoff

__all__ = ["LimiterStatistics", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of a :class:`RateLimiter`'s counters."""

    requests: int  # permits granted
    waits: int  # permits that had to wait for a token or a cool-down
    waited_s: float  # total time spent waiting, summed over callers
    waiting: int  # callers waiting right now
    penalties: int  # cool-downs started
    rate_limit_errors: int  # rate-limit errors reported (several may share one cool-down)
    penalty_streak: int  # consecutive cool-downs without a success in between
    cooldown_remaining_s: float  # time left in the current cool-down, 0 when none
    shared_waits: int = 0  # permits that waited for the host's shared budget
    shared_unavailable: int = 0  # permits given without the shared budget (it was away)


class RateLimiter:
    """A FIFO-fair token bucket shared by every Kraken REST request, with a penalty box.

    Time is trio's clock, so tests can drive it with :class:`trio.testing.MockClock`.

    Args:
        rate_per_s: sustained requests per second.
        burst: bucket size: requests allowed back to back after an idle period.
        penalty_base_s: first cool-down after a rate-limit error.
        penalty_max_s: cap on the doubling cool-down.
        jitter: cool-downs are spread by ±``jitter`` (a fraction, see
            :class:`~histdata.supervisor.backoff.Backoff`) so that several processes behind
            one IP do not retry in lockstep.
        seed: seeds the jitter, for reproducible tests.
        shared: reserves a slot in a budget shared with other processes and returns the
            seconds to wait for it; any exception it raises means "not reachable now".

    Raises:
        ValueError: a non-positive rate, a burst below 1, or bad penalty settings.
    """

    def __init__(
        self,
        *,
        rate_per_s: float = 1.0,
        burst: int = 5,
        penalty_base_s: float = 5.0,
        penalty_max_s: float = 300.0,
        jitter: float = 0.2,
        seed: int | None = None,
        shared: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(
                f"rate limiter needs rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}"
            )
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._penalty = Backoff(penalty_base_s, penalty_max_s, 2.0, jitter, rng=random.Random(seed))
        self._lock = trio.Lock()
        self._tokens = float(burst)
        self._updated: float | None = None  # trio time of the last refill; None before first use
        self._penalty_until = float("-inf")
        self._requests = 0
        self._waits = 0
        self._waited_s = 0.0
        self._waiting = 0
        self._penalties = 0
        self._rate_limit_errors = 0
        self._shared = shared
        self._shared_waits = 0
        self._shared_unavailable = 0

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._updated) * self.rate_per_s
            )
            self._updated = now

    async def wait(self) -> None:
        """Wait for a permit to send one request (a checkpoint even when none is needed).

        Callers are served in arrival order; a cool-down started while waiting is honoured.
        """
        start = trio.current_time()
        waited = False
        self._waiting += 1
        try:
            async with self._lock:
                while True:
                    now = trio.current_time()
                    self._refill(now)
                    if now < self._penalty_until:
                        wake = self._penalty_until
                    elif self._tokens >= 1.0:
                        self._tokens -= 1.0
                        break
                    else:
                        wake = now + (1.0 - self._tokens) / self.rate_per_s
                    waited = True
                    await trio.sleep_until(wake)
                if self._shared is not None:
                    waited = await self._wait_shared() or waited
        finally:
            self._waiting -= 1
        self._requests += 1
        if waited:
            self._waits += 1
            self._waited_s += trio.current_time() - start
        else:
            await trio.lowlevel.checkpoint()

    async def _wait_shared(self) -> bool:
        """Wait for this permit's slot in the shared budget; True if that took a wait."""
        assert self._shared is not None
        try:
            delay = await self._shared()
        except Exception:  # the budget is away: the local bucket alone paces this request
            self._shared_unavailable += 1
            return False
        if delay <= 0:
            return False
        self._shared_waits += 1
        await trio.sleep(delay)
        return True

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[None]:
        """Hold a permit for one request: ``async with limiter.acquire(): send()``.

        A clean exit counts as a success (the penalty streak resets); a :class:`RateLimited`
        raised from the block penalizes everyone (using its ``retry_after_s`` if it has one)
        and propagates.
        """
        await self.wait()
        try:
            yield
        except RateLimited as exc:
            self.penalize(getattr(exc, "retry_after_s", None))
            raise
        self.record_success()

    def record_success(self) -> None:
        """Note a request that was not rate-limited: the next penalty starts small again."""
        if trio.current_time() >= self._penalty_until:
            self._penalty.reset()

    def penalize(self, retry_after_s: float | None = None) -> None:
        """Report a rate-limit error: every caller waits out a cool-down before the next request.

        Errors reported while a cool-down is running (requests that were already in flight)
        only extend it to ``retry_after_s``; they do not double it again.
        """
        now = trio.current_time()
        self._rate_limit_errors += 1
        hint = max(0.0, retry_after_s) if retry_after_s is not None else 0.0
        if now < self._penalty_until:
            self._penalty_until = max(self._penalty_until, now + hint)
        else:
            self._penalties += 1
            self._penalty_until = now + max(self._penalty.next_delay(), hint)
        # Kraken's counter is full: resume with one probe after the cool-down, not a burst.
        self._tokens = 1.0
        self._updated = self._penalty_until

    def statistics(self) -> LimiterStatistics:
        """Return the current counters (see :class:`LimiterStatistics`)."""
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio: report without a clock
            now = self._penalty_until
        return LimiterStatistics(
            requests=self._requests,
            waits=self._waits,
            waited_s=self._waited_s,
            waiting=self._waiting,
            penalties=self._penalties,
            rate_limit_errors=self._rate_limit_errors,
            penalty_streak=self._penalty.attempts,
            cooldown_remaining_s=max(0.0, self._penalty_until - now),
            shared_waits=self._shared_waits,
            shared_unavailable=self._shared_unavailable,
        )
