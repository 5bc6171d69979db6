"""Tests for histdata.supervisor.supervisor (OTP-style supervision) and .signals."""

from __future__ import annotations

import itertools
import math
import os
import signal
from collections.abc import Awaitable, Callable

import pytest
import structlog
import trio
import trio.testing

from histdata.errors import ConfigError, DatabaseUnavailable
from histdata.supervisor.backoff import Backoff
from histdata.supervisor.signals import watch_signals
from histdata.supervisor.supervisor import (
    ChildSpec,
    Restart,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    cancel_when,
    current_child_stopping,
    sleep_unless_stopping,
)

StartFn = Callable[..., Awaitable[None]]
NO_JITTER = Backoff(initial_s=1.0, max_s=8.0, jitter=0.0)


class Child:
    """A scripted child: each incarnation follows the next step of ``plan``.

    Steps: "run" (until asked to stop), "crash" (raise after ``life_s``), "return" (return
    after ``life_s``), "fail_start" (raise before reporting started), "stubborn" (ignore the
    stopping event). Past the end of the plan it runs. Everything it does lands in ``events``.
    """

    def __init__(
        self,
        events: list[str],
        name: str,
        plan: tuple[str, ...] = (),
        *,
        life_s: float = 1.0,
        start_s: float = 0.0,
        stop_s: float = 0.0,
        error: Exception | None = None,
    ) -> None:
        self.events = events
        self.name = name
        self.plan = list(plan)
        self.life_s = life_s
        self.start_s = start_s
        self.stop_s = stop_s
        self.error = error if error is not None else DatabaseUnavailable(f"{name} lost it")
        self.incarnations = 0

    def spec(
        self, restart: Restart = Restart.PERMANENT, shutdown_timeout_s: float = 5.0
    ) -> ChildSpec:
        return ChildSpec(self.name, self.start, restart, shutdown_timeout_s)

    async def start(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.incarnations += 1
        step = self.plan.pop(0) if self.plan else "run"
        self.events.append(f"start {self.name}")
        await trio.sleep(self.start_s)
        if step == "fail_start":
            self.events.append(f"fail_start {self.name}")
            raise self.error
        task_status.started()
        stopping = current_child_stopping()
        try:
            if step in ("crash", "return"):
                with trio.move_on_after(self.life_s):
                    await stopping.wait()
                if not stopping.is_set():
                    self.events.append(f"{step} {self.name}")
                    if step == "crash":
                        raise self.error
                    return
            elif step == "stubborn":
                await trio.sleep_forever()
            await stopping.wait()
            self.events.append(f"stopping {self.name}")
            await trio.sleep(self.stop_s)
            self.events.append(f"stopped {self.name}")
        except trio.Cancelled:
            self.events.append(f"cancelled {self.name}")
            raise


async def start_supervisor(nursery: trio.Nursery, supervisor: Supervisor) -> None:
    await nursery.start(supervisor.run)


class TestStart:
    async def test_children_start_in_order_each_after_the_previous_is_ready(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Child N+1 starts only after child N called task_status.started()."""
        events: list[str] = []
        a = Child(events, "a", start_s=3.0)
        b = Child(events, "b", start_s=2.0)
        c = Child(events, "c")
        supervisor = Supervisor("root", [a.spec(), b.spec(), c.spec()])
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(supervisor.run)
            assert trio.current_time() - t0 == pytest.approx(5.0)
            assert events == ["start a", "start b", "start c"]
            states = [child.state for child in supervisor.statistics().children]
            assert states == ["running", "running", "running"]
            supervisor.shutdown()

    async def test_run_returns_when_no_child_is_left(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A supervisor whose children all finished for good returns normally."""
        events: list[str] = []
        a = Child(events, "a", ("return",))
        b = Child(events, "b", ("crash",))
        supervisor = Supervisor("batch", [a.spec(Restart.TRANSIENT), b.spec(Restart.TEMPORARY)])
        await supervisor.run()
        stats = {child.name: child for child in supervisor.statistics().children}
        assert stats["a"].state == "stopped"
        assert stats["b"].state == "failed"
        assert stats["b"].last_error == "DatabaseUnavailable: b lost it"

    async def test_failed_start_is_retried_before_the_next_child_starts(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that fails to start is restarted after its backoff; later ones wait for it."""
        events: list[str] = []
        a = Child(events, "a", ("fail_start", "fail_start"))
        b = Child(events, "b")
        supervisor = Supervisor("root", [a.spec(), b.spec()], backoff=NO_JITTER)
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(supervisor.run)
            assert trio.current_time() - t0 == pytest.approx(1.0 + 2.0)  # two backoff delays
            assert events == [
                "start a",
                "fail_start a",
                "start a",
                "fail_start a",
                "start a",
                "start b",
            ]
            assert supervisor.statistics().children[0].crashes == 2
            supervisor.shutdown()

    async def test_child_returning_without_started_is_a_crash(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that returns before task_status.started() is counted as a crash."""
        calls = 0

        async def forgetful(*, task_status: trio.TaskStatus[None]) -> None:
            nonlocal calls
            calls += 1

        supervisor = Supervisor("root", [ChildSpec("forgetful", forgetful, Restart.TRANSIENT)])
        with trio.move_on_after(3.0):
            await supervisor.run()
        child = supervisor.statistics().children[0]
        assert calls >= 2
        assert child.crashes == calls
        assert child.last_error is not None
        assert "started" in child.last_error


class TestRestartTypes:
    async def test_permanent_child_is_restarted_after_return_and_after_crash(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """PERMANENT children come back whether they returned or raised."""
        events: list[str] = []
        a = Child(events, "a", ("return", "crash"))
        supervisor = Supervisor("root", [a.spec()], backoff=NO_JITTER)
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(10)
            assert a.incarnations == 3
            stats = supervisor.statistics().children[0]
            assert (stats.state, stats.restarts, stats.crashes) == ("running", 2, 1)
            supervisor.shutdown()

    async def test_transient_child_is_restarted_only_after_a_crash(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """TRANSIENT children come back after raising but not after returning."""
        events: list[str] = []
        a = Child(events, "a", ("crash", "return"))
        keep = Child(events, "keep")
        supervisor = Supervisor("root", [a.spec(Restart.TRANSIENT), keep.spec()])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(20)
            assert a.incarnations == 2
            assert supervisor.statistics().children[0].state == "stopped"
            supervisor.shutdown()

    async def test_temporary_child_is_never_restarted(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """TEMPORARY children stay down after a crash, marked failed."""
        events: list[str] = []
        a = Child(events, "a", ("crash",))
        keep = Child(events, "keep")
        supervisor = Supervisor("root", [a.spec(Restart.TEMPORARY), keep.spec()])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(20)
            assert a.incarnations == 1
            stats = supervisor.statistics().children[0]
            assert (stats.state, stats.restarts, stats.crashes) == ("failed", 0, 1)
            supervisor.shutdown()

    async def test_restart_waits_the_backoff_delay(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Successive restarts of a crash-looping child wait 1, 2, 4 s (no jitter)."""
        starts: list[float] = []

        async def looping(*, task_status: trio.TaskStatus[None]) -> None:
            starts.append(trio.current_time())
            task_status.started()
            raise DatabaseUnavailable("down")

        supervisor = Supervisor(
            "root", [ChildSpec("looping", looping)], intensity=10, backoff=NO_JITTER
        )
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(7.5)
            supervisor.shutdown()
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert gaps == pytest.approx([1.0, 2.0, 4.0])

    async def test_backoff_resets_after_a_healthy_period(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that ran a whole period before crashing restarts after the initial delay."""
        starts: list[float] = []
        plan = [0.0, 0.0, 100.0]  # lifetime of each incarnation before it crashes

        async def flaky(*, task_status: trio.TaskStatus[None]) -> None:
            starts.append(trio.current_time())
            task_status.started()
            await trio.sleep(plan.pop(0) if plan else math.inf)
            raise DatabaseUnavailable("down")

        supervisor = Supervisor(
            "root", [ChildSpec("flaky", flaky)], period_s=60.0, backoff=NO_JITTER
        )
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(200)
            supervisor.shutdown()
        assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [
            1.0,
            2.0,
            101.0,  # ran 100 s, then the delay started over at 1 s rather than 4 s
        ]


class TestStrategies:
    async def test_one_for_one_crash_does_not_disturb_siblings(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Under ONE_FOR_ONE only the crashed child restarts."""
        events: list[str] = []
        a, b, c = Child(events, "a"), Child(events, "b", ("crash",)), Child(events, "c")
        supervisor = Supervisor("root", [a.spec(), b.spec(), c.spec()])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(10)
            assert (a.incarnations, b.incarnations, c.incarnations) == (1, 2, 1)
            assert [s.restarts for s in supervisor.statistics().children] == [0, 1, 0]
            supervisor.shutdown()

    async def test_rest_for_one_restarts_the_crashed_child_and_those_after_it(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Under REST_FOR_ONE later children stop in reverse order, then all restart in order."""
        events: list[str] = []
        a, b = Child(events, "a"), Child(events, "b", ("crash",))
        c, d = Child(events, "c"), Child(events, "d")
        supervisor = Supervisor(
            "live", [s.spec() for s in (a, b, c, d)], strategy=Strategy.REST_FOR_ONE
        )
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            events.clear()
            await trio.sleep(10)
            assert events == [
                "crash b",
                "stopping d",
                "stopped d",
                "stopping c",
                "stopped c",
                "start b",
                "start c",
                "start d",
            ]
            assert (a.incarnations, b.incarnations, c.incarnations, d.incarnations) == (
                1,
                2,
                2,
                2,
            )
            assert [s.restarts for s in supervisor.statistics().children] == [0, 1, 1, 1]
            supervisor.shutdown()

    async def test_one_for_all_restarts_everyone(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Under ONE_FOR_ALL every child restarts when one crashes."""
        events: list[str] = []
        a, b, c = Child(events, "a"), Child(events, "b", ("crash",)), Child(events, "c")
        supervisor = Supervisor(
            "all", [a.spec(), b.spec(), c.spec()], strategy=Strategy.ONE_FOR_ALL
        )
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(10)
            assert (a.incarnations, b.incarnations, c.incarnations) == (2, 2, 2)
            supervisor.shutdown()


class TestEscalation:
    async def test_intensity_exceeded_escalates_with_the_cause(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """More than `intensity` restarts in `period_s` stops everyone and escalates."""
        events: list[str] = []
        bad = Child(events, "bad", ("crash",) * 10)
        sibling = Child(events, "sibling")
        supervisor = Supervisor(
            "root", [sibling.spec(), bad.spec()], intensity=3, period_s=60, backoff=NO_JITTER
        )
        with pytest.raises(SupervisorEscalation, match="more than 3 restarts") as caught:
            await supervisor.run()
        assert isinstance(caught.value.__cause__, DatabaseUnavailable)
        assert not caught.value.fatal
        assert bad.incarnations == 4
        assert events[-2:] == ["stopping sibling", "stopped sibling"]
        states = [child.state for child in supervisor.statistics().children]
        assert states == ["stopped", "failed"]

    async def test_restarts_spread_over_more_than_the_period_do_not_escalate(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The intensity counts restarts inside a sliding window of period_s only."""
        events: list[str] = []
        slow = Child(events, "slow", ("crash",) * 5, life_s=30.0)
        supervisor = Supervisor("root", [slow.spec()], intensity=1, period_s=20, backoff=NO_JITTER)
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(200)
            assert slow.incarnations == 6
            supervisor.shutdown()

    async def test_fatal_error_escalates_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A FatalError is never retried: the supervisor gives up on the first one."""
        events: list[str] = []
        bad = Child(events, "bad", ("crash",), error=ConfigError("bad key"))
        supervisor = Supervisor("root", [bad.spec()], intensity=100)
        with pytest.raises(SupervisorEscalation, match="fatal") as caught:
            await supervisor.run()
        assert caught.value.fatal
        assert isinstance(caught.value.__cause__, ConfigError)
        assert bad.incarnations == 1

    async def test_fatal_error_at_start_reaches_the_caller_of_start(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A FatalError while starting makes nursery.start(supervisor.run) raise."""
        events: list[str] = []
        bad = Child(events, "bad", ("fail_start",), error=ConfigError("no url"))
        supervisor = Supervisor("root", [bad.spec()])
        escalation = pytest.RaisesExc(
            SupervisorEscalation, check=lambda exc: isinstance(exc.__cause__, ConfigError)
        )
        with pytest.RaisesGroup(escalation):
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
        assert bad.incarnations == 1


class TestShutdown:
    async def test_shutdown_stops_children_in_reverse_order(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """shutdown() asks the last-started child first and waits for each in turn."""
        events: list[str] = []
        children = [Child(events, name, stop_s=1.0) for name in ("flusher", "buffer", "feed")]
        supervisor = Supervisor("live", [child.spec() for child in children])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            events.clear()
            t0 = trio.current_time()
            supervisor.shutdown()
        assert events == [
            "stopping feed",
            "stopped feed",
            "stopping buffer",
            "stopped buffer",
            "stopping flusher",
            "stopped flusher",
        ]
        assert trio.current_time() - t0 == pytest.approx(3.0)
        assert {child.state for child in supervisor.statistics().children} == {"stopped"}

    async def test_stubborn_child_is_cancelled_at_its_deadline(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that ignores its stopping event is hard-cancelled after shutdown_timeout_s."""
        events: list[str] = []
        polite = Child(events, "polite")
        stubborn = Child(events, "stubborn", ("stubborn",))
        supervisor = Supervisor("root", [polite.spec(), stubborn.spec(shutdown_timeout_s=2.5)])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            events.clear()
            t0 = trio.current_time()
            supervisor.shutdown()
        assert events == ["cancelled stubborn", "stopping polite", "stopped polite"]
        assert trio.current_time() - t0 == pytest.approx(2.5)

    async def test_periodic_child_stops_mid_sleep(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child sleeping with sleep_unless_stopping returns as soon as it is asked to stop."""
        rounds: list[float] = []

        async def periodic(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            while True:
                rounds.append(trio.current_time())
                if await sleep_unless_stopping(60.0):
                    return

        supervisor = Supervisor("root", [ChildSpec("periodic", periodic, Restart.PERMANENT, 30.0)])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(90.0)
            t0 = trio.current_time()
            supervisor.shutdown()
        assert len(rounds) == 2
        assert trio.current_time() - t0 < 1.0
        assert supervisor.statistics().children[0].restarts == 0

    async def test_sleep_unless_stopping_outside_a_supervisor(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Outside a supervised child it is a plain sleep that reports no stop."""
        t0 = trio.current_time()
        assert await sleep_unless_stopping(5.0) is False
        assert trio.current_time() - t0 == pytest.approx(5.0)

    async def test_a_blocking_wait_ends_when_the_child_is_asked_to_stop(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child blocked in a receive beside cancel_when stops at once when asked to."""
        stopped_at: list[float] = []

        async def receiver(*, task_status: trio.TaskStatus[None]) -> None:
            _, receive = trio.open_memory_channel[int](0)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when, current_child_stopping(), nursery.cancel_scope)
                await receive.receive()
            stopped_at.append(trio.current_time())

        supervisor = Supervisor("root", [ChildSpec("receiver", receiver, Restart.PERMANENT, 30.0)])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            await trio.sleep(10.0)
            t0 = trio.current_time()
            supervisor.shutdown()
        assert stopped_at == [t0]
        assert supervisor.statistics().children[0].state == "stopped"

    async def test_cancelling_run_stops_children_gracefully_and_propagates(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An outer cancel still stops children in reverse order, then Cancelled reaches it."""
        events: list[str] = []
        a, b = Child(events, "a", stop_s=1.0), Child(events, "b", stop_s=1.0)
        supervisor = Supervisor("root", [a.spec(), b.spec()])
        with trio.move_on_after(10) as scope:
            await supervisor.run()
        assert scope.cancelled_caught
        assert events[-4:] == ["stopping b", "stopped b", "stopping a", "stopped a"]

    async def test_shutdown_before_run_starts_nothing(self) -> None:
        """shutdown() before run() makes run return at once without starting a child."""
        events: list[str] = []
        supervisor = Supervisor("root", [Child(events, "a").spec()])
        supervisor.shutdown()
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
        assert events == []

    async def test_supervisor_can_run_again_after_shutdown(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After a shutdown the same supervisor can be run again (as a restarted child is)."""
        events: list[str] = []
        a = Child(events, "a")
        supervisor = Supervisor("root", [a.spec()])
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                await start_supervisor(nursery, supervisor)
                supervisor.shutdown()
        assert a.incarnations == 2

    async def test_running_twice_at_once_is_refused(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Calling run() on a supervisor that is already running raises RuntimeError."""
        supervisor = Supervisor("root", [Child([], "a").spec()])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, supervisor)
            with pytest.raises(RuntimeError, match="already running"):
                await supervisor.run()
            supervisor.shutdown()


class TestNesting:
    async def test_nested_supervisor_restarts_its_own_children(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A crash inside a nested supervisor is handled there; the outer tree is untouched."""
        events: list[str] = []
        storage = Child(events, "storage")
        feed = Child(events, "feed", ("crash",))
        live = Supervisor("live", [feed.spec()], strategy=Strategy.REST_FOR_ONE)
        root = Supervisor("root", [storage.spec(), live.child_spec()])
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, root)
            await trio.sleep(10)
            assert (storage.incarnations, feed.incarnations) == (1, 2)
            stats = root.statistics()
            nested = stats.children[1].supervisor
            assert nested is not None
            assert nested.children[0].restarts == 1
            assert stats.children[1].restarts == 0
            root.shutdown()

    async def test_escalation_of_a_nested_supervisor_restarts_it(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """When a nested supervisor gives up, its parent restarts it like any crashed child."""
        events: list[str] = []
        feed = Child(events, "feed", ("crash",) * 2)
        live = Supervisor("live", [feed.spec()], intensity=1, backoff=NO_JITTER)
        root = Supervisor("root", [live.child_spec()], backoff=NO_JITTER)
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, root)
            await trio.sleep(20)
            assert feed.incarnations == 3
            child = root.statistics().children[0]
            assert child.restarts == 1
            assert child.last_error is not None
            assert "gave up" in child.last_error
            root.shutdown()

    async def test_fatal_error_escalates_through_every_level(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A FatalError deep in the tree is not retried at any level."""
        events: list[str] = []
        bad = Child(events, "bad", ("crash",), error=ConfigError("bad"))
        live = Supervisor("live", [bad.spec()])
        root = Supervisor("root", [live.child_spec()], intensity=100)
        with pytest.raises(SupervisorEscalation) as caught:
            await root.run()
        assert caught.value.fatal
        assert bad.incarnations == 1
        assert isinstance(caught.value.__cause__, SupervisorEscalation)
        assert isinstance(caught.value.__cause__.__cause__, ConfigError)

    async def test_shutdown_reaches_nested_children_in_reverse_order(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Stopping the root stops the nested supervisor's children before earlier siblings."""
        events: list[str] = []
        storage = Child(events, "storage")
        flusher, feed = Child(events, "flusher"), Child(events, "feed")
        live = Supervisor("live", [flusher.spec(), feed.spec()])
        root = Supervisor("root", [storage.spec(), live.child_spec()])
        assert live.child_spec().shutdown_timeout_s == 10.0
        async with trio.open_nursery() as nursery:
            await start_supervisor(nursery, root)
            events.clear()
            root.shutdown()
        assert [e for e in events if e.startswith("stopping")] == [
            "stopping feed",
            "stopping flusher",
            "stopping storage",
        ]


class TestPropagation:
    async def test_keyboard_interrupt_from_a_child_is_not_swallowed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child's KeyboardInterrupt stops the siblings and reaches the caller bare."""
        events: list[str] = []
        sibling = Child(events, "sibling")

        async def interrupted(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            await trio.sleep(1)
            raise KeyboardInterrupt

        supervisor = Supervisor("root", [sibling.spec(), ChildSpec("ki", interrupted)])
        with pytest.raises(KeyboardInterrupt):
            await supervisor.run()
        assert events[-2:] == ["stopping sibling", "stopped sibling"]
        assert supervisor.statistics().children[1].restarts == 0

    async def test_crash_is_logged_with_the_actor_name(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Every crash is logged at error level with actor=child name and the exception."""
        events: list[str] = []
        feed = Child(events, "feed", ("crash",))
        supervisor = Supervisor("live", [feed.spec()])
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await start_supervisor(nursery, supervisor)
                await trio.sleep(5)
                supervisor.shutdown()
        crashes = [entry for entry in logs if entry["event"] == "child crashed"]
        assert len(crashes) == 1
        assert crashes[0]["actor"] == "feed"
        assert crashes[0]["log_level"] == "error"
        assert isinstance(crashes[0]["exc_info"], DatabaseUnavailable)

    def test_current_child_stopping_outside_a_child_raises(self) -> None:
        """current_child_stopping() outside a supervised child is a RuntimeError."""
        with pytest.raises(RuntimeError, match="outside a supervised child"):
            current_child_stopping()

    def test_invalid_configuration_is_refused(self) -> None:
        """Duplicate names, negative intensity and negative timeouts raise ValueError."""
        spec = Child([], "a").spec()
        with pytest.raises(ValueError, match="duplicate"):
            Supervisor("root", [spec, spec])
        with pytest.raises(ValueError, match="intensity"):
            Supervisor("root", [spec], intensity=-1)
        with pytest.raises(ValueError, match="shutdown_timeout_s"):
            ChildSpec("a", spec.start, shutdown_timeout_s=-1)


class TestWatchSignals:
    async def test_first_signal_shuts_down_gracefully(self) -> None:
        """The first SIGTERM calls on_first once and keeps watching."""
        first = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, first.set)
            os.kill(os.getpid(), signal.SIGTERM)
            with trio.fail_after(5):
                await first.wait()
            nursery.cancel_scope.cancel()

    async def test_second_signal_raises_keyboard_interrupt(self) -> None:
        """A second SIGTERM/SIGINT after the first raises KeyboardInterrupt from the watcher."""
        first = trio.Event()
        with pytest.RaisesGroup(KeyboardInterrupt), trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(watch_signals, first.set)
                os.kill(os.getpid(), signal.SIGTERM)
                await first.wait()
                os.kill(os.getpid(), signal.SIGINT)
                await trio.sleep_forever()

    async def test_signal_shuts_down_a_supervisor(self) -> None:
        """Wiring watch_signals to Supervisor.shutdown stops the tree on SIGTERM."""
        events: list[str] = []
        supervisor = Supervisor("root", [Child(events, "a").spec()])
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(watch_signals, supervisor.shutdown)
                async with trio.open_nursery() as tree:
                    await tree.start(supervisor.run)
                    os.kill(os.getpid(), signal.SIGTERM)
                nursery.cancel_scope.cancel()
        assert events == ["start a", "stopping a", "stopped a"]
