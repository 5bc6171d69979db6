"""Jittered exponential backoff for restarts and retries.

The delay grows ``initial_s · multiplier**n`` up to ``max_s`` and each value is spread by
±``jitter`` (a fraction): a delay of 4 s with ``jitter=0.2`` is uniform in [3.2 s, 4.8 s],
never above ``max_s``. This is *proportional* jitter, not AWS-style "full jitter" (uniform in
[0, delay]): a restart loop must keep a predictable minimum pause (full jitter can retry almost
at once, which is what hammers a recovering database), while the spread still keeps actors
that failed together from retrying in lockstep.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for successive attempts: ``next_delay()`` per failure, ``reset()`` on success.

    ``rng`` makes the jitter reproducible in tests; by default each Backoff has its own
    ``random.Random``. Raises ``ValueError`` if ``0 < initial_s ≤ max_s``,
    ``multiplier ≥ 1`` or ``0 ≤ jitter < 1`` does not hold.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        if multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {multiplier}")
        if not 0 <= jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {jitter}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0
        self._base = initial_s

    def __repr__(self) -> str:
        return (
            f"Backoff(initial_s={self.initial_s}, max_s={self.max_s}, "
            f"multiplier={self.multiplier}, jitter={self.jitter}, attempts={self._attempts})"
        )

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last :meth:`reset`."""
        return self._attempts

    def next_delay(self) -> float:
        """The delay in seconds before the next attempt; each call grows the base delay."""
        # Grown step by step and capped, so no power of the multiplier can overflow.
        base = self._base
        self._base = min(self.max_s, base * self.multiplier)
        self._attempts += 1
        spread = self._rng.uniform(-self.jitter, self.jitter)
        return min(self.max_s, base * (1 + spread))

    def reset(self) -> None:
        """Start over from ``initial_s`` (call after a success)."""
        self._attempts = 0
        self._base = self.initial_s

    def clone(self) -> Backoff:
        """A Backoff with the same parameters and random source, at attempt zero.

        The supervisor keeps one per child, so a crash-looping child does not lengthen the
        pause before a healthy sibling's first restart.
        """
        return Backoff(self.initial_s, self.max_s, self.multiplier, self.jitter, rng=self._rng)
