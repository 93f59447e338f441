"""Supervisors: ordered groups, restart strategies, restart intensity and backoff.

Built on public names only (`AgentRunner`, `Context`, messages to itself,
`hybrid.instruments()`), the way a third party could build its own; the
shared argument checks and backoff are the only private helpers it uses.

The machinery lives in a `_Tracker` owned by the `SupervisorContext`, beside
the user's subclass (crb's ``SupervisorSession { tracker }``), so a subclass
overrides `on_interrupt` and `on_stop` freely, without calling ``super()``.

How a child lives:

- ``ctx.spawn`` records a `_Child` (its spec, its address) and queues its
  first run. One starter task starts queued runs one at a time, in order,
  each after the previous one's `begin()` has run.
- Each run is an `AgentRunner` started by ``ctx.start_agent``: in the
  supervisor's nursery, contained (its failure comes back as a reason), and
  free to hibernate while idle. A restartable child's runner keeps its
  address open when it ends (``keep_address``), so messages sent from then
  on wait for the next instance.
- When a run ends, its `on_end` records a `_Exit` (child, incarnation, reason)
  at once, before it awaits anything, and tells the supervisor. The supervisor's own
  task processes exits one at a time, in order: `on_child_ended`, then the
  restart decision. An exit whose incarnation was already replaced is stale:
  it is reported, never restarted twice.
- A restart is a `_Plan` (the children the strategy names), carried out by
  one helper task: stop those still running, wait the backoff, start them
  again in start order. A later plan takes over children of an earlier one,
  so overlapping restarts never start a child twice.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast, overload

import attrs
import trio
from typing_extensions import Self, TypeVar

from . import _validate
from ._address import Address
from ._agent import Agent, AgentRunner
from ._checkpointer import Checkpointer
from ._context import Context
from ._exceptions import AgentStopped, HybridError, LifecycleError, MailboxFull, NameInUse
from ._handlers import on_event
from ._instrument import instruments
from ._next import Next
from ._retry import Backoff
from ._stop import StopKind, StopReason

A = TypeVar("A", bound=Agent[Any])
A_co = TypeVar("A_co", bound=Agent[Any], covariant=True, default=Agent[Any])
T_co = TypeVar("T_co", covariant=True, default=None)

logger = logging.getLogger("hybrid.supervisor")


class Restart(enum.Enum):
    """When a child that ended is started again (Erlang/OTP's restart types)."""

    PERMANENT = "permanent"
    """Always restarted, however it ended."""
    TRANSIENT = "transient"
    """Restarted only if it failed."""
    TEMPORARY = "temporary"
    """Never restarted."""


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them must be restarted."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that ended."""
    ONE_FOR_ALL = "one_for_all"
    """All children: the others are stopped (latest started first), then all start again in start order."""
    REST_FOR_ONE = "rest_for_one"
    """The child that ended and every child started after it."""


class RestartIntensityExceeded(HybridError):
    """A supervisor restarted its children more often than its intensity allows.

    The supervisor fails with this error, and its own parent decides what
    happens next (a parent supervisor applies its policy; a nursery raises it).
    The errors of the failed children (and failed restarts) in the window are
    attached as `errors`, and as an `ExceptionGroup` in ``__cause__`` so
    tracebacks show them all.

    Attributes:
        supervisor: the name of the supervisor.
        restarts: the number of restarts allowed.
        period: the window, in seconds.
        errors: the errors of the children that failed in the window.
    """

    def __init__(self, supervisor: str, restarts: int, period: float, errors: tuple[BaseException, ...]) -> None:
        super().__init__(
            f"{supervisor}: more than {restarts} restarts in {period:g}s; "
            f"giving up ({len(errors)} child failure(s) in the window)"
        )
        self.supervisor = supervisor
        self.restarts = restarts
        self.period = period
        self.errors = errors


class ChildState(enum.Enum):
    """Where a supervised child is; one field, never several flags (OTP's ``#child.pid``)."""

    WAITING = "waiting"
    """Spawned or prepared for a restart; waiting for the starter."""
    RUNNING = "running"
    """Its current run has started."""
    STOPPING = "stopping"
    """The supervisor interrupted its current run (shutdown, or the restart of another child)."""
    RESTARTING = "restarting"
    """Its run ended and a restart is coming: its address waits for the next instance."""
    GONE = "gone"
    """Ended for good; no longer tracked."""


@attrs.define(eq=False, slots=True)
class _Child:
    """One supervised child: its spec, and where its current run is.

    Written only on the trio thread, by the supervisor's task and its helper
    tasks; ``incarnation`` counts the runs started so far (1 for the first).
    It is the ``on_end`` of each of its runs (one run at a time: the next
    starts after this one ended, so ``incarnation`` is still the ending one's).
    """

    tracker: _Tracker
    factory: Callable[[], Agent[Any]] | None  # None: an instance, started once
    group: int
    restart: Restart
    shutdown_timeout: float | None
    order: int  # spawn order; restarts keep it
    address: Address[Any]
    runner: AgentRunner[Any]  # the current (or prepared) run
    state: ChildState = ChildState.WAITING
    incarnation: int = 0
    plan: _Plan | None = None  # the restart that owns it now
    done: trio.Event | None = None  # set when the current run ends (made by whoever waits)
    restarts: deque[float] | None = None  # its restart times in the window (for the backoff)
    last_reason: StopReason | None = None  # how its latest run ended
    checkpointer: Checkpointer | None = None  # given to every run: a durable child resumes from its checkpoint
    hibernate_after: float | None = None  # given to every run; None: its class's

    @property
    def restartable(self) -> bool:
        return _restartable(self.factory, self.restart)

    async def __call__(self, reason: StopReason) -> None:
        """Its current run ended (no partial per run: a hibernating child costs less)."""
        await self.tracker.run_ended(self, self.incarnation, reason)

    @property
    def running(self) -> bool:
        return self.state in (ChildState.WAITING, ChildState.RUNNING, ChildState.STOPPING)


@attrs.define(eq=False, slots=True)
class _Plan:
    """One restart: the children it stops and starts again (those whose ``plan`` is still this one)."""

    children: list[_Child]
    delay: float


@attrs.frozen
class _Exit:
    child: _Child
    incarnation: int
    reason: StopReason
    own: bool  # it ended by itself, not stopped by the supervisor


class _Countdown:
    """Set once each of `left` runs has ended: one waiter for a whole group, no task per child."""

    __slots__ = ("event", "left")

    def __init__(self, left: int) -> None:
        self.left = left
        self.event = trio.Event()

    def one_ended(self) -> None:
        self.left -= 1
        if not self.left:
            self.event.set()


@attrs.frozen
class _ExitsPending:
    pass


@attrs.frozen
class _AllStopped:
    pass


@attrs.frozen
class _GiveUp:
    error: Exception


class _Tracker:
    """The supervisor's machinery: its children, the starter, restarts, ordered shutdown.

    Owned by the `SupervisorContext`; every method runs on the trio thread,
    in the supervisor's task or its helper tasks.
    """

    def __init__(self, ctx: SupervisorContext[Any]) -> None:
        self.ctx = ctx
        self.supervisor: Supervisor[Any] = cast("Supervisor[Any]", ctx.agent)
        self.children: dict[int, _Child] = {}
        """The children not gone, by spawn order (insertion order is start order)."""
        self.next_order = 0
        self.names = 0
        """Default child names taken so far."""
        self.to_start: deque[_Child] = deque()
        """Runs waiting for the starter, in start order."""
        self.starting = False
        """The starter task runs."""
        self.exits: deque[_Exit] = deque()
        """Runs that ended, waiting to be reported and decided, in order."""
        self.exits_signalled = False
        """An `_ExitsPending` message is on its way to the supervisor."""
        self.restart_times: deque[float] = deque()
        self.failures: deque[tuple[float, BaseException]] = deque()
        self.stopping = False
        """The supervisor is stopping its children: no more restarts."""
        self.stopping_group: float = float("inf")
        """The group being stopped now (greater groups are done)."""
        self.waiting_groups: dict[int, list[_Child]] = {}
        self.group_heap: list[int] = []
        """During the shutdown: the groups still to stop (negated, for a max-heap)."""
        self.closed = False
        """The supervisor's own ending has begun (its on_stop): it starts no more children."""
        self.round_done: trio.Event | None = None
        """The shutdown round under way (one task stops, the others wait for it)."""
        self.countdowns: dict[_Child, _Countdown] = {}
        """The children a group's shutdown waits for (`await_group`), until each one's run ended."""

    # -- spawning and starting ---------------------------------------------------

    def spawn(
        self,
        agent: object,
        *,
        group: int,
        restart: Restart | None,
        shutdown_timeout: object,
        mailbox_capacity: Any,
        name: str | None,
        checkpointer: Checkpointer | None,
        hibernate_after: object,
    ) -> Address[Any]:
        if self.closed:
            raise LifecycleError(
                f"{self.ctx.address.name} is ending (its children have stopped); it starts no more children"
            )
        if isinstance(agent, Agent):
            instance: Agent[Any] = agent  # pyright: ignore[reportUnknownVariableType]
            if restart not in (None, Restart.TEMPORARY):
                raise ValueError(
                    f"{type(instance).__qualname__}: an agent instance runs once; pass a factory "
                    f"(the class, or functools.partial(Class, arg)) to restart it ({restart})"
                )
            factory = None
            restart = Restart.TEMPORARY
        elif callable(agent):
            factory = cast("Callable[[], Agent[Any]]", agent)
            instance = _make(factory)
            restart = Restart.PERMANENT if restart is None else restart
        else:
            raise TypeError(f"spawn needs an agent instance or a factory of agents, got {agent!r}")
        if not isinstance(restart, Restart):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"restart must be a hybrid.Restart, got {restart!r}")
        if isinstance(group, bool) or not isinstance(group, int):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"group must be an int (an IntEnum member, say), got {group!r}")
        if shutdown_timeout is None:
            timeout = _validate.timeout("shutdown_timeout", self.supervisor.shutdown_timeout)
        else:
            timeout = _validate.timeout("shutdown_timeout", shutdown_timeout)
        sleep_after = None if hibernate_after is None else _validate.seconds("hibernate_after", hibernate_after)
        restartable = _restartable(factory, restart)
        while True:
            try:
                runner = AgentRunner(
                    instance,
                    mailbox_capacity=mailbox_capacity,
                    name=self.child_name(instance, name),
                    keep_address=restartable,
                    checkpointer=checkpointer,
                )
                break
            except NameInUse:
                if name is not None:
                    raise
                # A default name a sibling took explicitly: take the next one.
        child = _Child(
            tracker=self,
            factory=factory,
            group=int(group),
            restart=restart,
            shutdown_timeout=timeout,
            order=self.next_order,
            address=runner.address,
            runner=runner,
            checkpointer=checkpointer,
            hibernate_after=sleep_after,
        )
        self.next_order += 1
        self.children[child.order] = child
        if self.stopping:
            self.wait_for_group(child)  # stopped in its group's turn, or at once if that has come
        self.queue_start(child)
        return child.address

    def child_name(self, instance: Agent[Any], name: str | None) -> str:
        prefix = self.ctx.address.name
        if name is not None:
            return f"{prefix}/{name}"
        self.names += 1
        return f"{prefix}/{type(instance).__name__}-{self.names}"

    def queue_start(self, child: _Child) -> None:
        child.state = ChildState.WAITING
        self.to_start.append(child)
        if not self.starting:
            self.starting = True
            self.ctx.start_soon(self.starter, name=f"starter of {self.ctx.address.name}")

    async def starter(self) -> None:
        """Start the queued runs one at a time, each once the previous one's begin() has run."""
        try:
            while self.to_start:
                child = self.to_start.popleft()
                if child.state is ChildState.WAITING:
                    child.state = ChildState.RUNNING
                elif child.state is not ChildState.STOPPING:  # stopped before it started: it ends after begin()
                    continue
                child.incarnation += 1
                if self.stopping and child.group >= self.stopping_group:
                    # Spawned into a group whose turn to stop has come: interrupted before
                    # its first state, and awaited next (its group went back on the heap).
                    self.interrupt(child)
                await self.ctx.start_agent(child.runner, on_end=child, hibernate_after=child.hibernate_after)
        finally:
            self.starting = False

    async def run_ended(self, child: _Child, incarnation: int, reason: StopReason) -> None:
        """A run of `child` ended (its `on_end`): record the exit at once, then tell the supervisor."""
        self.ended(child, incarnation, reason)
        await self.signal_exits()

    async def signal_exits(self) -> None:
        """Have the supervisor's task process the recorded exits (one event for several)."""
        if not self.exits_signalled:
            self.exits_signalled = True
            with contextlib.suppress(AgentStopped):  # finishing: its on_stop reports the exits
                try:
                    self.ctx.address.send(_ExitsPending())  # no schedule point when there is room
                except MailboxFull:
                    await self.ctx.address.send_wait(_ExitsPending())

    def ended(self, child: _Child, incarnation: int, reason: StopReason) -> None:
        """A run ended: decide at once, without awaiting, whether its address waits for a successor."""
        own = child.state is ChildState.RUNNING
        child.last_reason = reason
        if reason.failed:
            logger.error("%s failed: %r", child.address.name, reason.error, exc_info=reason.error)
        if not child.restartable or self.stopping:
            keep = False
        elif own:
            keep = _should_restart(child.restart, reason)
        else:
            keep = child.plan is not None  # stopped by a restart, which starts it again
        if keep:
            child.state = ChildState.RESTARTING
        else:
            self.give_up(child)
        self.exits.append(_Exit(child, incarnation, reason, own))
        done = child.done
        if done is not None:
            child.done = None
            done.set()
        if self.countdowns:
            countdown = self.countdowns.pop(child, None)
            if countdown is not None:
                countdown.one_ended()

    def give_up(self, child: _Child) -> None:
        """The child is not restarted: its address says it is gone."""
        child.state = ChildState.GONE
        child.plan = None
        child.runner.discard()
        self.children.pop(child.order, None)

    def give_up_all(self) -> None:
        """No child is restarted from now on: those waiting for a restart are gone, and those ending as they end."""
        self.stopping = True
        for child in list(self.children.values()):
            if child.state is ChildState.RESTARTING:
                self.give_up(child)

    # -- exits, in the supervisor's own task ---------------------------------------

    async def process_exits(self) -> None:
        """Report each exit (on_child_ended), then decide its restart; one at a time, in order."""
        self.exits_signalled = False
        while self.exits:
            exit_ = self.exits.popleft()
            child = exit_.child
            try:
                await self.supervisor.on_child_ended(child.address, exit_.reason)
            except Exception as error:  # the hook's failure must not cancel the restart
                await self.supervisor.on_error(error)
            # A stale exit (its run was already replaced), or a child that a
            # restart of another one stopped: reported, never restarted twice.
            if not exit_.own or self.stopping or child.incarnation != exit_.incarnation:
                continue
            if child.state is ChildState.RESTARTING and child.plan is None:
                failure = self.count_restart(exit_.reason.error)
                if failure is not None:
                    self.fail(failure)
                    return
                self.plan_restart(child)

    def fail(self, failure: RestartIntensityExceeded) -> None:
        self.give_up_all()  # no more restarts: the children stop with the supervisor
        try:
            self.ctx.do_next(Next.fail(failure))
        except LifecycleError:  # it is finishing already: the failure can only be logged
            logger.error("%s, while finishing", failure, exc_info=failure)

    def count_restart(self, error: BaseException | None) -> RestartIntensityExceeded | None:
        """Count one restart in the window; the failure to end with if there were too many."""
        now = trio.current_time()
        supervisor = self.supervisor
        window_start = now - supervisor.restart_period
        self.restart_times.append(now)
        if error is not None:
            self.failures.append((now, error))
        while self.restart_times and self.restart_times[0] < window_start:
            self.restart_times.popleft()
        while self.failures and self.failures[0][0] < window_start:
            self.failures.popleft()
        limit = supervisor.max_restarts
        if limit is None or len(self.restart_times) <= limit:
            return None
        errors = tuple(error for _, error in self.failures)
        failure = RestartIntensityExceeded(self.ctx.address.name, limit, supervisor.restart_period, errors)
        exceptions = [error for error in errors if isinstance(error, Exception)]
        if exceptions:
            failure.__cause__ = ExceptionGroup("the child failures in the restart window", exceptions)
        return failure

    def backoff(self, child: _Child) -> float:
        """The wait before restarting `child` now, by its restarts in the window."""
        now = trio.current_time()
        if child.restarts is None:
            child.restarts = deque()
        child.restarts.append(now)
        window_start = now - self.supervisor.restart_period
        while child.restarts and child.restarts[0] < window_start:
            child.restarts.popleft()
        backoff = self.supervisor.restart_backoff
        return 0.0 if backoff is None else backoff.delay(len(child.restarts))

    def plan_restart(self, child: _Child) -> None:
        strategy = self.supervisor.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            affected = [child]
        elif strategy is Strategy.ONE_FOR_ALL:
            affected = list(self.children.values())
        else:
            affected = [other for other in self.children.values() if other.order >= child.order]
        plan = _Plan(affected, self.backoff(child))
        for other in affected:
            other.plan = plan  # a later plan takes over the children of an earlier one
        self.ctx.start_soon(self.carry_out, plan, name=f"restart of {child.address.name}")

    async def carry_out(self, plan: _Plan) -> None:
        """Stop the plan's children still running (latest first), wait the backoff, start them in order."""
        try:
            for child in sorted(plan.children, key=lambda c: c.order, reverse=True):
                if child.plan is plan and child.running:
                    self.interrupt(child)
                    await self.await_end(child)
            await trio.sleep(plan.delay)
            for child in sorted(plan.children, key=lambda c: c.order):
                if child.plan is not plan or child.state is not ChildState.RESTARTING or self.stopping:
                    continue
                if not await self.prepare(child) or child.plan is not plan:
                    continue
                child.plan = None
                previous = child.last_reason
                assert previous is not None
                logger.info("restarting %s (its run ended %s)", child.address.name, previous)
                self.queue_start(child)
                instruments().child_restarted(self.ctx.address, child.address, previous)
        finally:
            # Restarts that will not happen (the supervisor stops, or this
            # task is cancelled): their addresses must say so.
            for child in plan.children:
                if child.plan is plan:
                    child.plan = None
                    if child.state is ChildState.RESTARTING:
                        self.give_up(child)

    async def prepare(self, child: _Child) -> bool:
        """Make the next instance; a factory that raises is a failed restart, tried again after a backoff."""
        assert child.factory is not None
        while not self.stopping:
            try:
                instance = _make(child.factory)
            except Exception as error:
                logger.error("restarting %s: its factory raised %r", child.address.name, error, exc_info=error)
                failure = self.count_restart(error)
                if failure is not None:
                    self.give_up(child)
                    try:
                        await self.ctx.address.send_wait(_GiveUp(failure))
                    except AgentStopped:  # finishing already (ctx.shutdown, say): it can only be logged
                        logger.error("%s, while finishing", failure, exc_info=failure)
                    return False
                await trio.sleep(self.backoff(child))
                continue
            child.runner = AgentRunner(
                instance, address=child.address, keep_address=True, checkpointer=child.checkpointer
            )
            return True
        return False

    # -- stopping ------------------------------------------------------------------

    def interrupt(self, child: _Child) -> None:
        """Interrupt the child's run (one that has not started yet ends right after its begin())."""
        if child.state in (ChildState.RUNNING, ChildState.WAITING):
            child.state = ChildState.STOPPING
            child.runner.interrupt()  # this run only: not its successor, if it has ended already

    async def await_end(self, child: _Child) -> None:
        """Wait until the child's current (or next queued) run ends, within its shutdown timeout."""
        if not child.running:
            return
        if child.done is None:
            child.done = trio.Event()
        done = child.done
        timeout = child.shutdown_timeout
        if timeout is not None:
            with trio.move_on_after(timeout):
                await done.wait()
                return
            # Past the timeout: a second interrupt cancels its running step, and
            # it still ends as interrupted. A child that does not end even then
            # (stuck in a sync state, say) is cancelled outright after as long again.
            child.runner.interrupt()
            with trio.move_on_after(timeout):
                await done.wait()
                return
            await self.kill(child)
        await done.wait()

    async def await_group(self, members: list[_Child]) -> None:
        """Wait until each member's run ended, as `await_end` does for one, in this task alone.

        Members that share one shutdown timeout (the common case) share its
        clock: past it, those still running get a second interrupt; past it
        again, they are killed. Otherwise each one is awaited in a task.
        """
        members = list(dict.fromkeys(members))  # listed twice if spawned meanwhile
        timeout = members[0].shutdown_timeout
        if any(child.shutdown_timeout != timeout for child in members):
            async with trio.open_nursery() as nursery:
                for child in members:
                    nursery.start_soon(self.await_end, child)
            return
        countdown = _Countdown(len(members))
        for child in members:
            self.countdowns[child] = countdown
        try:
            if timeout is not None:
                with trio.move_on_after(timeout):
                    await countdown.event.wait()
                    return
                for child in members:
                    if child.running:
                        child.runner.interrupt()
                with trio.move_on_after(timeout):
                    await countdown.event.wait()
                    return
                for child in members:
                    await self.kill(child)
            await countdown.event.wait()
        finally:
            for child in members:
                self.countdowns.pop(child, None)

    async def kill(self, child: _Child) -> None:
        """Cancel the child's run outright; one still queued (the starter is held up) never starts.

        The queued one ends as cancelled without running (its agent's `on_stop`
        is not called), and its exit is reported and decided as any other: if a
        restart takes it, its address stays open for the next instance;
        otherwise it is given up.
        """
        if not child.running:  # ended meanwhile (or killed already, by another waiter)
            return
        if child in self.to_start:
            self.to_start.remove(child)
            child.incarnation += 1
            self.ended(child, child.incarnation, StopReason(StopKind.CANCELLED))
            if child.state is ChildState.RESTARTING:  # (else given up by `ended`)
                child.runner.discard(keep_address=True)
            await self.signal_exits()
        else:
            child.runner.cancel()

    def drop_queued(self) -> None:
        """The supervisor is ending: the children its starter has not started never will; each is given up."""
        while self.to_start:
            child = self.to_start.popleft()
            if child.state in (ChildState.WAITING, ChildState.STOPPING):
                self.give_up(child)

    def wait_for_group(self, child: _Child) -> None:
        members = self.waiting_groups.get(child.group)
        if members is None:
            self.waiting_groups[child.group] = [child]
            heapq.heappush(self.group_heap, -child.group)
        else:
            members.append(child)

    async def stop_all(self) -> None:
        """Stop every child in group order, greatest group first; O(children log groups) overall.

        Children spawned meanwhile are stopped too: into a group whose turn
        has come, at once; into a lower group, in its turn; after the last
        round, by another round.
        """
        self.stopping = True
        while True:
            if self.round_done is not None:  # another task is stopping them: wait for it
                await self.round_done.wait()
                continue
            self.give_up_all()
            if not self.group_heap and not any(child.running for child in self.children.values()):
                return
            self.round_done = trio.Event()
            try:
                for child in self.children.values():
                    if child.running:  # listed twice if spawned meanwhile: interrupting again is a no-op
                        self.wait_for_group(child)
                while self.group_heap:
                    group = -heapq.heappop(self.group_heap)
                    self.stopping_group = min(self.stopping_group, group)
                    members = [child for child in self.waiting_groups.pop(group) if child.running]
                    for child in members:
                        self.interrupt(child)
                    if len(members) == 1:  # the common case of a group of one
                        await self.await_end(members[0])
                    elif members:
                        await self.await_group(members)
            finally:
                self.round_done.set()
                self.round_done = None

    async def shutdown_then_finish(self) -> None:
        await self.stop_all()
        with contextlib.suppress(AgentStopped):  # it ended meanwhile (stop or failure)
            await self.ctx.address.send_wait(_AllStopped())

    def running_children(self) -> list[Address[Any]]:
        return [child.address for child in self.children.values() if child.running]


class SupervisorContext(Context[A_co]):
    """The context of a [`Supervisor`][hybrid.Supervisor]: a `Context` plus `spawn` and `children`."""

    __slots__ = ("_tracker",)

    _tracker: _Tracker  # made at first use: the runtime makes contexts without __init__

    @property
    def _machinery(self) -> _Tracker:
        try:
            return self._tracker
        except AttributeError:
            self._tracker = _Tracker(self)
            return self._tracker

    @overload
    def spawn(
        self,
        agent: A,
        *,
        group: int = 0,
        restart: Restart | None = None,
        shutdown_timeout: float | None = None,
        mailbox_capacity: int | float | None = None,
        name: str | None = None,
        checkpointer: Checkpointer | None = None,
        hibernate_after: float | None = None,
    ) -> Address[A]: ...

    @overload
    def spawn(
        self,
        agent: Callable[[], A],
        *,
        group: int = 0,
        restart: Restart | None = None,
        shutdown_timeout: float | None = None,
        mailbox_capacity: int | float | None = None,
        name: str | None = None,
        checkpointer: Checkpointer | None = None,
        hibernate_after: float | None = None,
    ) -> Address[A]: ...

    def spawn(
        self,
        agent: A | Callable[[], A],
        *,
        group: int = 0,
        restart: Restart | None = None,
        shutdown_timeout: float | None = None,
        mailbox_capacity: int | float | None = None,
        name: str | None = None,
        checkpointer: Checkpointer | None = None,
        hibernate_after: float | None = None,
    ) -> Address[A]:
        """Start a child in `group` and return its address at once.

        `agent` is an agent instance (started once: `Restart.TEMPORARY`, the
        default for an instance) or a factory that returns a fresh instance
        for each start (restartable; `Restart.PERMANENT` by default). Use the
        class itself, or ``functools.partial(Worker, i)`` to pass arguments
        (a ``lambda: Worker(i)`` in a loop captures ``i`` late: every restart
        would build the last one).

        Children start in the order they are spawned, each one's `begin()`
        having run before the next starts. A restarted child keeps its address
        and its name: from the moment its run ended, messages sent to it wait
        for the next instance (or fail with `AgentStopped` if the supervisor
        gives the child up).

        Args:
            agent: an agent instance, or a factory of fresh instances.
            group: the child's shutdown group: on shutdown, greater groups
                stop first. Use an `enum.IntEnum` to name them.
            restart: when the child is restarted after it ends.
            shutdown_timeout: seconds a child may take to end once
                interrupted, after which it is interrupted again, then
                cancelled; ``math.inf`` waits forever. None (the default)
                takes the supervisor's `shutdown_timeout`.
            mailbox_capacity: bound the child's mailbox (an int >= 1, or
                ``math.inf``); None (the default) takes its class's.
            name: the child's name; its address's name is
                ``"{supervisor name}/{name}"`` (default name: ``"{ClassName}-{n}"``).
            checkpointer: makes the child durable (`hybrid.Checkpointer`);
                each run of it gets the same one, so a restart goes on from
                the child's last checkpoint (``store.checkpointer(key)`` of
                `hybrid.durable`).
            hibernate_after: idle seconds in actor mode after which each run
                of the child gives its task up until its next message (see
                `Agent.hibernate_after`); None (the default) takes its class's.

        Raises:
            TypeError: `agent` is neither an agent nor a callable, or the
                factory returned something that is not an agent.
            ValueError: a restart policy other than TEMPORARY for an instance,
                a bad `shutdown_timeout` or `hibernate_after`, or a name in use.
            LifecycleError: the supervisor has ended.
        """
        if not self.address.is_alive:
            raise LifecycleError(f"{self.address.name} has ended; it cannot spawn children")
        address: Address[A] = self._machinery.spawn(
            agent,
            group=group,
            restart=restart,
            shutdown_timeout=shutdown_timeout,
            mailbox_capacity=mailbox_capacity,
            name=name,
            checkpointer=checkpointer,
            hibernate_after=hibernate_after,
        )
        return address

    def children(self) -> list[Address[Any]]:
        """The addresses of the children that are running now, in start order."""
        return self._machinery.running_children()

    async def call_on_interrupt(self) -> None:
        """The agent's `on_interrupt`, then the ordered shutdown of the children.

        The supervisor stays in actor mode (handling its messages) until the
        last child has ended, then finishes as interrupted, unless its
        `on_interrupt` scheduled another transition.
        """
        await super().call_on_interrupt()
        tracker = self._machinery
        if not tracker.stopping:
            tracker.stopping = True
            self.start_soon(tracker.shutdown_then_finish, name=f"shutdown of {self.address.name}")
        if self.scheduled is None:
            self.do_next(Next.events())

    async def call_on_stop(self, reason: StopReason) -> None:
        """Stop the children that still run, in group order, report their exits, then the agent's `on_stop`.

        When the supervisor is cancelled, its children are cancelled with it
        (structured concurrency): only the agent's `on_stop` runs.
        """
        tracker = self._machinery
        tracker.closed = True
        try:
            if reason.kind is not StopKind.CANCELLED:
                await tracker.stop_all()
                await tracker.process_exits()
        finally:
            # Cancelled, or this cut short: none is restarted, none starts any more;
            # each address says so (after a whole shutdown, nothing is left to do).
            tracker.give_up_all()
            tracker.drop_queued()
        await super().call_on_stop(reason)


class Supervisor(Agent[T_co]):
    """An agent that owns children in ordered groups and restarts them by policy.

    Spawn children with ``self.ctx.spawn(agent_or_factory, group=...)``, usually
    in `begin()`. The supervisor is an actor: it handles its own messages all
    along, including while it stops its children.

    Ordered shutdown: when the supervisor is interrupted, it interrupts its
    children one group at a time, greatest group first, and waits until every
    member of a group has ended before the next; a child that takes longer
    than its shutdown timeout is interrupted again, then cancelled. Children
    spawned while it stops are interrupted in their group's turn (at once if
    that turn has come). The supervisor keeps handling messages meanwhile; its
    mailbox closes once the last child has ended. When it ends in another way
    (done, stop, failure), its children are stopped in the same order before
    its `on_stop` runs. When it is cancelled from outside, its children are
    cancelled with it (structured concurrency). Subclasses override
    `on_interrupt` and `on_stop` freely: no ``super()`` call is needed.

    Restarts: a child ends; `on_child_ended` is called; then, unless the
    supervisor is stopping, the child's `Restart` policy decides whether it is
    restarted, the `strategy` decides which children restart with it, and
    `restart_backoff` how long to wait first. A factory that raises during a
    restart is a failed restart: counted, logged, and tried again after the
    backoff. More than `max_restarts` restarts within `restart_period`
    seconds fail the supervisor with
    [`RestartIntensityExceeded`][hybrid.RestartIntensityExceeded], and its
    own parent decides. A failed child is logged at ERROR with its traceback
    and each restart at INFO, on the ``hybrid.supervisor`` logger.

    Attributes:
        strategy: `Strategy.ONE_FOR_ONE` (default), `ONE_FOR_ALL` or `REST_FOR_ONE`.
        max_restarts: restarts allowed within `restart_period` (default 3);
            None for no limit.
        restart_period: the intensity window in seconds (default 5).
        restart_backoff: the wait before a restart, by the number of restarts
            of that child in the window (default: none, restart at once).
        shutdown_timeout: default seconds a child may take to end once
            interrupted before it is interrupted again, then cancelled
            (default 5; None or ``math.inf``: wait forever).

    Example:
        ```python
        class Group(enum.IntEnum):
            STORAGE = 1
            WORKERS = 2
            HTTP = 3

        class App(hybrid.Supervisor):
            max_restarts = 5

            def begin(self) -> Next[Self]:
                self.db = self.ctx.spawn(Storage(), group=Group.STORAGE)
                for i in range(4):
                    self.ctx.spawn(functools.partial(Worker, self.db, i), group=Group.WORKERS)
                self.ctx.spawn(Http, group=Group.HTTP)
                return Next.events()
        ```
    """

    context_class: ClassVar[type[Context[Any]]] = SupervisorContext
    strategy: ClassVar[Strategy] = Strategy.ONE_FOR_ONE
    max_restarts: ClassVar[int | None] = 3
    restart_period: ClassVar[float] = 5.0
    restart_backoff: ClassVar[Backoff | None] = None
    shutdown_timeout: ClassVar[float | None] = 5.0

    if TYPE_CHECKING:
        ctx: SupervisorContext[Self]  # pyright: ignore[reportIncompatibleVariableOverride]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        where = cls.__qualname__
        if not isinstance(cls.strategy, Strategy):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"{where}.strategy must be a hybrid.Strategy, got {cls.strategy!r}")
        _validate.count(f"{where}.max_restarts", cls.max_restarts, optional=True)
        _validate.seconds(f"{where}.restart_period", cls.restart_period, positive=True)
        _validate.timeout(f"{where}.shutdown_timeout", cls.shutdown_timeout)
        if cls.restart_backoff is not None and not isinstance(cls.restart_backoff, Backoff):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"{where}.restart_backoff must be a hybrid.Backoff or None, got {cls.restart_backoff!r}")

    async def on_child_ended(self, address: Address[Any], reason: StopReason) -> None:
        """Called when a child ends, before any restart (crb's ``finished``).

        The default does nothing. Calls never overlap each other or the
        supervisor's message handlers, also while it finishes; an exception
        goes to `on_error`.
        """

    @on_event
    async def _hybrid_exits(self, event: _ExitsPending) -> None:
        await self.ctx._machinery.process_exits()  # noqa: SLF001 - the context owns the tracker

    @on_event
    async def _hybrid_all_stopped(self, event: _AllStopped) -> None:
        if self.ctx.scheduled is None:
            # Finish as interrupted (on_interrupt already ran); refused only when the
            # supervisor is finishing already (ctx.shutdown() meanwhile): nothing to do.
            with contextlib.suppress(LifecycleError):
                self.ctx.do_next(Next.interrupt())

    @on_event
    async def _hybrid_give_up(self, event: _GiveUp) -> None:
        self.ctx.do_next(Next.fail(event.error))


def _restartable(factory: Callable[[], Agent[Any]] | None, policy: Restart) -> bool:
    """Whether a child of this spec is ever started again (its address then waits between runs)."""
    return factory is not None and policy is not Restart.TEMPORARY


def _should_restart(policy: Restart, reason: StopReason) -> bool:
    if policy is Restart.PERMANENT:
        return True
    if policy is Restart.TRANSIENT:
        return reason.kind is StopKind.FAILED
    return False


def _make(factory: Callable[[], Agent[Any]]) -> Agent[Any]:
    agent = factory()
    if not isinstance(agent, Agent):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"the child factory {factory!r} returned {agent!r}, not an agent")
    return agent
