"""The statistics change notification: a waiter wakes at a change, not at a poll interval."""

from __future__ import annotations

import pytest
import trio
from waiting import until  # type: ignore[import-not-found]

from histdata.supervisor import Changes, statistics_changed


async def test_notify_wakes_every_waiter_and_only_those_waiting() -> None:
    changes = Changes()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await changes.wait()
        woken.append(n)

    changes.notify()  # nobody waits: nothing to keep for later
    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(waiter, n)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        changes.notify()
    assert sorted(woken) == [0, 1, 2]


async def test_wait_until_returns_at_the_change_not_at_the_recheck() -> None:
    counter = {"n": 0}

    async def bump() -> None:
        await trio.sleep(0.05)
        counter["n"] = 1
        statistics_changed.notify()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bump)
        # A recheck of an hour: only the notification can end this wait within the second.
        with trio.fail_after(1):
            await until(lambda: counter["n"] == 1, timeout_s=5, recheck_s=3600)


async def test_wait_until_fails_when_the_condition_never_holds() -> None:
    with pytest.raises(trio.TooSlowError):
        await until(lambda: False, timeout_s=0.2, recheck_s=0.05)
