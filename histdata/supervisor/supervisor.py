"""OTP-style supervision on trio: restart types, strategies, intensity, ordered start and
reverse-order graceful shutdown.

A :class:`Supervisor` runs an ordered list of children (:class:`ChildSpec`). Each child is an
async function called as ``await start(task_status=...)`` that calls
``task_status.started()`` once it is ready; the next child starts only after that (ordered
start, through ``nursery.start``). A Supervisor is itself such a function
(:meth:`Supervisor.run`), so supervisors nest: :meth:`Supervisor.child_spec`.

Restarts (Erlang/OTP semantics):

- :class:`Restart`: PERMANENT children are always restarted, TRANSIENT ones only when they
  raised, TEMPORARY ones never.
- :class:`Strategy`: ONE_FOR_ONE restarts the crashed child alone; REST_FOR_ONE also stops the
  children started after it (in reverse order) and restarts them all in start order;
  ONE_FOR_ALL does that for every child.
- Each restart waits the child's jittered :class:`~histdata.supervisor.backoff.Backoff` delay
  (reset once an incarnation has run for a whole ``period_s``).
- More than ``intensity`` restarts within ``period_s`` seconds: the supervisor stops every
  child and raises :class:`SupervisorEscalation` (cause chained) to its parent, which treats
  it as that child's crash.
- A :class:`~histdata.errors.FatalError` (or an escalation caused by one) is never retried: it
  escalates at once, through every level, up to whoever runs the root.
- Unlike OTP, a child that fails *to start* is treated like any crash (restarted after its
  backoff, counted against the intensity), so a database that is still booting does not take
  the whole service down; the supervisor reports started once every child has.

Shutdown: :meth:`Supervisor.shutdown` (from anywhere, e.g. a signal handler), the parent's
stop request, or cancelling ``run`` all stop the children in reverse start order, one at a
time. A child is first asked to finish by setting its *stopping* event
(:func:`current_child_stopping`); if it has not returned by its ``shutdown_timeout_s`` it is
hard-cancelled. Children run in a shielded cancel scope once started, so an outer
cancellation cannot skip this order: the feed stops before the buffer, which drains before the
flusher, which writes before the pool closes. The flip side: stopping a supervisor takes as
long as its children's deadlines allow, and cannot be cut shorter from outside.

Every crash is logged (structlog, ``actor`` = child name, with the exception) and counted in
:meth:`Supervisor.statistics`. ``trio.Cancelled``, ``KeyboardInterrupt`` and other
``BaseException``\\s are never restarted: they stop the supervisor (gracefully) and propagate.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import structlog
import trio

from histdata.errors import FatalError, HistdataError
from histdata.supervisor.backoff import Backoff

__all__ = [
    "ChildSpec",
    "ChildState",
    "ChildStatistics",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorStatistics",
    "cancel_when",
    "current_child_stopping",
    "sleep_unless_stopping",
]

log = structlog.get_logger(__name__)

ChildState = Literal["starting", "running", "restarting", "stopped", "failed"]


class Restart(StrEnum):
    """When a child that exited is started again."""

    PERMANENT = "permanent"
    """Always, whether it returned or raised."""
    TRANSIENT = "transient"
    """Only if it raised; returning means its work is done."""
    TEMPORARY = "temporary"
    """Never."""


class Strategy(StrEnum):
    """Which children restart together when one of them does."""

    ONE_FOR_ONE = "one_for_one"
    """The crashed child alone; its siblings are not disturbed."""
    REST_FOR_ONE = "rest_for_one"
    """The crashed child and every child started after it (they depend on it)."""
    ONE_FOR_ALL = "one_for_all"
    """Every child."""


class SupervisorEscalation(HistdataError):
    """A supervisor gave up: a child restarted too often, or raised a FatalError.

    The supervisor has stopped all its children before raising this; ``__cause__`` is the
    child's last error (None if a PERMANENT child kept returning). ``fatal`` is True when the
    root cause is a :class:`~histdata.errors.FatalError`: a parent supervisor then escalates at
    once instead of restarting.
    """

    def __init__(self, supervisor: str, child: str, reason: str, *, fatal: bool) -> None:
        self.supervisor = supervisor
        self.child = child
        self.reason = reason
        self.fatal = fatal
        super().__init__(f"supervisor {supervisor!r} gave up on child {child!r}: {reason}")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child.

    ``start`` is called as ``await start(task_status=...)`` and must call
    ``task_status.started()`` once ready. ``shutdown_timeout_s`` is how long it may take to
    finish after its stopping event is set before it is hard-cancelled (0: at once;
    ``math.inf``: wait for it). Raises ``ValueError`` on a negative timeout.
    """

    name: str
    start: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.shutdown_timeout_s >= 0:
            raise ValueError(f"child {self.name!r}: shutdown_timeout_s must be >= 0")


@dataclass(frozen=True, slots=True)
class ChildStatistics:
    """One child as its supervisor sees it.

    ``state``: "starting" (first start under way or waiting for its turn), "running" (reported
    started), "restarting" (crashed or stopped for a sibling's restart, waiting its backoff or
    starting again), "stopped" (returned or shut down, not to be restarted), "failed" (raised
    and not to be restarted). ``crashes`` counts exceptions raised, ``restarts`` the times it
    was started again. ``started_at`` is the Unix time the running incarnation reported
    started. ``supervisor`` is the nested supervisor's own statistics when the child is one.
    """

    name: str
    state: ChildState
    restarts: int
    crashes: int
    last_error: str | None
    started_at: float | None
    supervisor: SupervisorStatistics | None = None


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of a supervisor and its children, in start order."""

    name: str
    strategy: Strategy
    children: tuple[ChildStatistics, ...]


_stopping: contextvars.ContextVar[trio.Event] = contextvars.ContextVar("histdata_child_stopping")


def current_child_stopping() -> trio.Event:
    """The event set when the supervisor asks the calling child to finish.

    A child watches it to stop gracefully: a feed stops reading and closes its output channel,
    a flusher writes what it holds. It is per incarnation (a restarted child gets a fresh one)
    and is inherited by tasks the child spawns. Not setting it does not stop anything by
    itself: the child is hard-cancelled only when its ``shutdown_timeout_s`` runs out.
    Raises ``RuntimeError`` when called outside a child started by a Supervisor.
    """
    try:
        return _stopping.get()
    except LookupError:
        raise RuntimeError("current_child_stopping() called outside a supervised child") from None


async def cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once ``event`` is set; run it beside the work a stop must end.

    How a child turns :func:`current_child_stopping` into the end of a blocking wait (a
    receive, a serve loop, a session): ``nursery.start_soon(cancel_when, stopping,
    nursery.cancel_scope)``.
    """
    await event.wait()
    scope.cancel()


async def sleep_unless_stopping(seconds: float) -> bool:
    """Sleep ``seconds``, or less if the supervisor asks the calling child to stop meanwhile.

    Returns True when asked to stop, so a periodic actor's loop can return at once instead of
    waiting out its interval and being hard-cancelled. Outside a supervised child it just
    sleeps and returns False.
    """
    try:
        stopping = current_child_stopping()
    except RuntimeError:
        await trio.sleep(seconds)
        return False
    with trio.move_on_after(seconds):
        await stopping.wait()
    return stopping.is_set()


@dataclass(eq=False)
class _Incarnation:
    """One run of a child's ``start`` function."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopping: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    started: bool = False
    began_at: float = 0.0  # trio clock, when it reported started
    # True once start() returned or raised an Exception (not a BaseException such as
    # KeyboardInterrupt, which tears the whole tree down instead of being supervised).
    ended: bool = False
    error: Exception | None = None
    # Trio clock; set by the first stop request, so a repeated request (a shutdown arriving
    # during a rest_for_one restart, a second signal) never extends the child's deadline.
    stop_deadline: float | None = None


class _Child:
    """A child's spec and everything its supervisor tracks about it across incarnations."""

    def __init__(self, spec: ChildSpec, backoff: Backoff) -> None:
        self.spec = spec
        self.backoff = backoff
        self.state: ChildState = "stopped"
        self.restarts = 0
        self.crashes = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.current: _Incarnation | None = None
        self.came_up = False  # reported started at least once in the current run
        # Set while the child waits to be started: the trio time it may start at.
        self.not_before: float | None = None

    @property
    def exited_unhandled(self) -> bool:
        """Its incarnation ended on its own and the supervisor has not yet reacted."""
        inc = self.current
        return inc is not None and inc.ended and inc.stop_deadline is None


class _ChildTaskStatus:
    """The ``task_status`` a child gets: marks it running and shields it once started."""

    def __init__(self, outer: trio.TaskStatus[None], child: _Child, inc: _Incarnation) -> None:
        self._outer = outer
        self._child = child
        self._inc = inc

    def started(self, value: object = None) -> None:
        self._outer.started()
        # From here on only its supervisor stops this child, in reverse start order.
        self._inc.scope.shield = True
        self._inc.started = True
        self._inc.began_at = trio.current_time()
        self._child.came_up = True
        self._child.state = "running"
        self._child.started_at = time.time()


def _is_fatal(error: Exception) -> bool:
    return isinstance(error, FatalError) or (
        isinstance(error, SupervisorEscalation) and error.fatal
    )


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one non-Cancelled exception in ``group``, if there is exactly one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


class Supervisor:
    """Runs ``children`` in order and restarts them by ``strategy`` (see the module docs).

    ``intensity`` restarts are allowed within any ``period_s`` window; one more escalates.
    ``backoff`` is the template for each child's restart delay (default ``Backoff()``).
    Raises ``ValueError`` for duplicate child names, ``intensity < 0`` or ``period_s <= 0``.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 5,
        period_s: float = 60.0,
        backoff: Backoff | None = None,
    ) -> None:
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name!r}: duplicate child names in {names}")
        if intensity < 0:
            raise ValueError(f"supervisor {name!r}: intensity must be >= 0")
        if not period_s > 0:
            raise ValueError(f"supervisor {name!r}: period_s must be > 0")
        template = backoff if backoff is not None else Backoff()
        self.name = name
        self.strategy = Strategy(strategy)
        self.intensity = intensity
        self.period_s = period_s
        self._children = [_Child(spec, template.clone()) for spec in children]
        self._changed = trio.lowlevel.ParkingLot()
        self._restart_times: deque[float] = deque()
        self._main_scope: trio.CancelScope | None = None
        self._running = False
        self._reported = False
        self._shutdown_requested = False

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy.value} children={len(self._children)}>"

    def child_spec(
        self, *, restart: Restart = Restart.PERMANENT, shutdown_timeout_s: float | None = None
    ) -> ChildSpec:
        """This supervisor as a child of another.

        The default ``shutdown_timeout_s`` is the sum of the children's (they stop one after
        the other), like OTP's ``infinity`` for supervisors but bounded.
        """
        if shutdown_timeout_s is None:
            shutdown_timeout_s = sum(child.spec.shutdown_timeout_s for child in self._children)
        return ChildSpec(self.name, self.run, restart, shutdown_timeout_s)

    def shutdown(self) -> None:
        """Stop every child in reverse start order; ``run`` then returns normally.

        Safe to call from any task or a signal watcher, and more than once. Called while the
        supervisor is not running, it makes the next ``run`` return at once.
        """
        if not self._shutdown_requested:
            log.info("supervisor shutting down", supervisor=self.name)
        self._shutdown_requested = True
        if self._main_scope is not None:
            self._main_scope.cancel()

    def statistics(self) -> SupervisorStatistics:
        """A frozen snapshot of every child's state, restarts, crashes and last error."""
        return SupervisorStatistics(
            name=self.name,
            strategy=self.strategy,
            children=tuple(self._child_statistics(child) for child in self._children),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, report started, then supervise them.

        Returns once :meth:`shutdown` (or the parent's stop request) has stopped them all, or
        when no child is left to run (every one returned or failed without restart). Raises
        :class:`SupervisorEscalation` after stopping the children when it gives up; lets
        cancellation and ``KeyboardInterrupt`` propagate after a graceful stop. Raises
        ``RuntimeError`` if this supervisor is already running.
        """
        if self._running:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._running = True
        self._reported = False
        self._restart_times.clear()
        self._main_scope = trio.CancelScope()
        if self._shutdown_requested:
            self._main_scope.cancel()
        escalation: SupervisorEscalation | None = None
        sole: BaseException | None = None
        parent_stopping = _stopping.get(None)
        try:
            async with trio.open_nursery() as nursery:
                if parent_stopping is not None:
                    nursery.start_soon(self._follow_parent, parent_stopping)
                try:
                    with self._main_scope:
                        escalation = await self._supervise(nursery, task_status)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery is an implementation detail: a child's KeyboardInterrupt should
            # reach the caller as itself, not wrapped in a group.
            sole = _sole_exception(group)
            if sole is None:
                raise
        finally:
            self._running = False
            self._main_scope = None
            self._shutdown_requested = False
        if sole is not None:
            raise sole
        if escalation is not None:
            raise escalation
        if not self._reported:
            # Shut down before every child had started: still "started", then done, so a
            # caller's nursery.start() does not fail.
            task_status.started()

    # -- the supervision loop ----------------------------------------------------------------

    async def _supervise(
        self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]
    ) -> SupervisorEscalation | None:
        # Raises Cancelled at once if shutdown() came before run(): start nothing.
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        for child in self._children:
            child.state = "starting"
            child.not_before = now
            child.came_up = False
        while True:
            if not self._reported and all(
                c.came_up or (c.current is None and c.not_before is None) for c in self._children
            ):
                # Every child has been up once (or is down for good): the supervisor is up,
                # even if one of them has crashed again since.
                self._reported = True
                task_status.started()
            exited = next((c for c in self._children if c.exited_unhandled), None)
            if exited is not None:
                escalation = await self._handle_exit(exited)
                if escalation is not None:
                    return escalation
                continue
            waiting = self._next_to_start()
            if waiting is None:
                if all(c.current is None for c in self._children):
                    log.info("supervisor has no child left to run", supervisor=self.name)
                    return None
                await self._changed.park()
            elif waiting.not_before is not None and trio.current_time() < waiting.not_before:
                # Wait out its backoff, but react at once if another child exits meanwhile.
                with trio.move_on_at(waiting.not_before):
                    await self._changed.park()
            else:
                await self._start(nursery, waiting)

    def _next_to_start(self) -> _Child | None:
        """The child to start next, if any is waiting.

        Start order is kept whenever children depend on each other: during the first start,
        and always under REST_FOR_ONE and ONE_FOR_ALL. Once up, ONE_FOR_ONE children restart
        independently: the first whose backoff ends goes first.
        """
        waiting = [child for child in self._children if child.not_before is not None]
        if not waiting:
            return None
        if self.strategy is Strategy.ONE_FOR_ONE and self._reported:
            return min(waiting, key=lambda child: child.not_before or 0.0)
        return waiting[0]

    async def _start(self, nursery: trio.Nursery, child: _Child) -> None:
        """Start one incarnation and wait until it reports started or fails to start."""
        inc = _Incarnation()
        child.current = inc
        child.not_before = None
        try:
            await nursery.start(self._run_child, child, inc)
        except Exception as exc:
            if inc.error is None:
                # The child returned without calling task_status.started(): a bug in it.
                inc.ended = True
                inc.error = exc
                self._record_crash(child, exc)

    async def _run_child(
        self, child: _Child, inc: _Incarnation, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The task around one incarnation: records how it ended and wakes the supervisor."""
        _stopping.set(inc.stopping)
        try:
            with inc.scope:
                await child.spec.start(task_status=_ChildTaskStatus(task_status, child, inc))
            inc.ended = True
        except Exception as exc:
            inc.ended = True
            inc.error = exc
            self._record_crash(child, exc)
            if not inc.started:
                raise  # to the supervisor's nursery.start(): a failed start
        finally:
            inc.done.set()
            self._changed.unpark_all()

    def _record_crash(self, child: _Child, error: Exception) -> None:
        child.crashes += 1
        child.last_error = f"{type(error).__name__}: {error}"
        log.error(
            "child crashed",
            supervisor=self.name,
            actor=child.spec.name,
            crashes=child.crashes,
            exc_info=error,
        )

    async def _handle_exit(self, child: _Child) -> SupervisorEscalation | None:
        """React to a child that ended on its own: restart (with its group), or not, or give up."""
        inc = child.current
        assert inc is not None
        child.current = None
        child.started_at = None
        error = inc.error
        if error is not None and _is_fatal(error):
            child.state = "failed"
            return self._escalate(child, "fatal error", error, fatal=True)
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and error is None):
            child.state = "failed" if error is not None else "stopped"
            log.info("child exited", supervisor=self.name, actor=child.spec.name, restart=restart)
            return None

        now = trio.current_time()
        self._restart_times.append(now)
        while self._restart_times[0] <= now - self.period_s:
            self._restart_times.popleft()
        if len(self._restart_times) > self.intensity:
            child.state = "failed"
            reason = f"more than {self.intensity} restarts in {self.period_s:g} s"
            return self._escalate(child, reason, error, fatal=False)

        if inc.started and now - inc.began_at >= self.period_s:
            child.backoff.reset()  # it was healthy for a whole period: not a crash loop
        delay = child.backoff.next_delay()
        group = self._restart_group(child)
        log.warning(
            "restarting child",
            supervisor=self.name,
            actor=child.spec.name,
            delay_s=round(delay, 3),
            group=[member.spec.name for member in group],
        )
        for member in reversed(group):
            member.state = "restarting"
            await self._stop_child(member)
        not_before = trio.current_time() + delay
        for member in group:
            member.restarts += 1
            member.not_before = max(not_before, member.not_before or not_before)
        return None

    def _restart_group(self, child: _Child) -> list[_Child]:
        """The children restarted with ``child``, in start order (those still alive or waiting)."""
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        if self.strategy is Strategy.REST_FOR_ONE:
            candidates = self._children[self._children.index(child) :]
        else:
            candidates = self._children
        return [
            c for c in candidates if c is child or c.current is not None or c.not_before is not None
        ]

    def _escalate(
        self, child: _Child, reason: str, error: Exception | None, *, fatal: bool
    ) -> SupervisorEscalation:
        escalation = SupervisorEscalation(self.name, child.spec.name, reason, fatal=fatal)
        escalation.__cause__ = error
        log.error(
            "supervisor escalating", supervisor=self.name, actor=child.spec.name, reason=reason
        )
        return escalation

    # -- stopping ----------------------------------------------------------------------------

    async def _stop_child(self, child: _Child) -> None:
        """Ask the running incarnation to finish, hard-cancel it at its deadline, wait for it."""
        inc = child.current
        if inc is None:
            return
        if not inc.done.is_set():
            if inc.stop_deadline is None:
                inc.stop_deadline = trio.current_time() + child.spec.shutdown_timeout_s
                inc.stopping.set()
            with trio.move_on_at(inc.stop_deadline):
                await inc.done.wait()
            if not inc.done.is_set():
                log.warning(
                    "child did not stop in time; cancelling",
                    supervisor=self.name,
                    actor=child.spec.name,
                    shutdown_timeout_s=child.spec.shutdown_timeout_s,
                )
                inc.scope.cancel()
                await inc.done.wait()
        child.current = None
        child.started_at = None

    async def _stop_all(self) -> None:
        """Stop every child in reverse start order (runs shielded, on every exit path)."""
        for child in reversed(self._children):
            await self._stop_child(child)
            child.not_before = None
            if child.state != "failed":
                child.state = "stopped"

    async def _follow_parent(self, parent_stopping: trio.Event) -> None:
        await parent_stopping.wait()
        self.shutdown()

    def _child_statistics(self, child: _Child) -> ChildStatistics:
        # A child whose start function is a Supervisor's bound run() is that supervisor.
        owner = getattr(child.spec.start, "__self__", None)
        return ChildStatistics(
            name=child.spec.name,
            state=child.state,
            restarts=child.restarts,
            crashes=child.crashes,
            last_error=child.last_error,
            started_at=child.started_at,
            supervisor=owner.statistics() if isinstance(owner, Supervisor) else None,
        )
