"""Tests for histdata.supervisor.backoff: jittered exponential delays."""

from __future__ import annotations

import random
from typing import Any

import pytest

from histdata.supervisor.backoff import Backoff


class TestGrowth:
    def test_without_jitter_doubles_up_to_the_cap(self) -> None:
        """With jitter 0 the delays are initial·multiplier^n, capped at max_s."""
        backoff = Backoff(initial_s=0.5, max_s=5.0, multiplier=2.0, jitter=0.0)
        assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
        assert backoff.attempts == 6

    def test_reset_starts_over(self) -> None:
        """After reset() the next delay is initial_s again."""
        backoff = Backoff(initial_s=1.0, max_s=60.0, jitter=0.0)
        for _ in range(4):
            backoff.next_delay()
        backoff.reset()
        assert backoff.attempts == 0
        assert backoff.next_delay() == 1.0

    def test_many_attempts_never_overflow(self) -> None:
        """Thousands of failures keep returning max_s instead of overflowing the float."""
        backoff = Backoff(initial_s=0.5, max_s=30.0, jitter=0.0)
        for _ in range(5000):
            delay = backoff.next_delay()
        assert delay == 30.0


class TestJitter:
    def test_delays_stay_within_the_proportional_band(self) -> None:
        """Each delay lies in base·[1-jitter, 1+jitter] and never above max_s."""
        backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0.25, rng=random.Random(7))
        bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        for base in bases:
            delay = backoff.next_delay()
            assert base * 0.75 <= delay <= min(8.0, base * 1.25)

    def test_jitter_spreads_delays(self) -> None:
        """Two backoffs with different random streams do not retry in lockstep."""
        first = Backoff(rng=random.Random(1))
        second = Backoff(rng=random.Random(2))
        assert [first.next_delay() for _ in range(5)] != [second.next_delay() for _ in range(5)]

    def test_seeded_rng_is_reproducible(self) -> None:
        """The same seed gives the same delays."""

        def delays() -> list[float]:
            backoff = Backoff(rng=random.Random(42))
            return [backoff.next_delay() for _ in range(5)]

        assert delays() == delays()


class TestClone:
    def test_clone_has_same_parameters_and_fresh_attempts(self) -> None:
        """clone() copies the parameters and starts at attempt zero."""
        backoff = Backoff(initial_s=2.0, max_s=10.0, multiplier=3.0, jitter=0.0)
        backoff.next_delay()
        backoff.next_delay()
        copy = backoff.clone()
        assert copy.attempts == 0
        assert [copy.next_delay() for _ in range(3)] == [2.0, 6.0, 10.0]
        assert backoff.next_delay() == 10.0  # the original kept its own progress


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"initial_s": 0.0}, "initial_s"),
            ({"initial_s": 10.0, "max_s": 1.0}, "initial_s"),
            ({"multiplier": 0.5}, "multiplier"),
            ({"jitter": 1.0}, "jitter"),
            ({"jitter": -0.1}, "jitter"),
        ],
    )
    def test_rejects_nonsense(self, kwargs: dict[str, Any], message: str) -> None:
        """Parameters that make no sense raise ValueError naming the parameter."""
        with pytest.raises(ValueError, match=message):
            Backoff(**kwargs)
