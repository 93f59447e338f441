"""Supervisors: ordered groups, restart strategies, restart intensity and backoff.

Built only on the public agent API (`AgentRunner`, `Context.start_soon`,
messages to itself), the way a third party could build its own.

How it works: each child runs in a helper task of the supervisor, through an
`AgentRunner`, so a child's failure comes back as a `StopReason` instead of an
exception. When a child ends, its helper sends the supervisor a private
message; the supervisor handles it in order with its other messages, calls
`on_child_ended`, and applies the child's restart policy and the supervisor's
strategy. Restarts reuse the child's address, so whoever holds it keeps using
it.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast, overload

import attrs
import trio
from typing_extensions import TypeVar

from ._address import Address
from ._agent import Agent, AgentRunner
from ._context import Context, _threadsafe
from ._exceptions import AgentStopped, HybridError
from ._handlers import on_event
from ._next import Next
from ._retry import Backoff
from ._stop import StopKind, StopReason

A = TypeVar("A", bound=Agent[Any])
T_co = TypeVar("T_co", covariant=True, default=None)


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
    The errors of the failed children in the window are attached as
    `errors`, and as an `ExceptionGroup` in ``__cause__`` so tracebacks show
    them all.

    Attributes:
        supervisor: the name of the supervisor class.
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


@attrs.define(eq=False)
class _Child:
    """A supervised child: its spec, and its current run."""

    factory: Callable[[], Agent[Any]] | None
    group: int
    restart: Restart
    shutdown_timeout: float | None
    order: int
    address: Address[Any]
    runner: AgentRunner[Any] | None = None
    scope: trio.CancelScope | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    running: bool = False
    interrupted: bool = False
    in_restart: bool = False
    prepared: bool = False
    restarts: deque[float] = attrs.field(factory=deque[float])


@attrs.frozen
class _ChildExited:
    child: _Child
    reason: StopReason


@attrs.frozen
class _AllStopped:
    pass


@attrs.frozen
class _StartFailed:
    error: Exception


class SupervisorContext(Context):
    """The context of a [`Supervisor`][hybrid.Supervisor]: a `Context` plus `spawn`."""

    __slots__ = ()

    @overload
    def spawn(
        self,
        agent: A,
        *,
        group: int = 0,
        restart: Restart | None = None,
        shutdown_timeout: float | type[Any] | None = ...,
        mailbox_capacity: int | type[Any] | None = ...,
    ) -> Address[A]: ...

    @overload
    def spawn(
        self,
        agent: Callable[[], A],
        *,
        group: int = 0,
        restart: Restart | None = None,
        shutdown_timeout: float | type[Any] | None = ...,
        mailbox_capacity: int | type[Any] | None = ...,
    ) -> Address[A]: ...

    @_threadsafe
    def spawn(
        self,
        agent: A | Callable[[], A],
        *,
        group: int = 0,
        restart: Restart | None = None,
        shutdown_timeout: float | type[Any] | None = Agent,
        mailbox_capacity: int | type[Any] | None = Agent,
    ) -> Address[A]:
        """Start a child in `group` and return its address at once.

        `agent` is an agent instance (started once: `Restart.TEMPORARY`, the
        default for an instance) or a factory that returns a fresh instance
        for each start (restartable; `Restart.PERMANENT` by default).

        A restarted child keeps its address: messages sent to it while it
        restarts queue for the new instance; messages queued in the instance
        that ended were handled, or dropped with their senders told, as that
        ending says (see `Next.stop`).

        Args:
            agent: an agent instance, or a factory of fresh instances.
            group: the child's shutdown group: on shutdown, greater groups
                stop first. Use an `enum.IntEnum` to name them.
            restart: when the child is restarted after it ends.
            shutdown_timeout: seconds a child may take to end once
                interrupted, after which it is cancelled; None waits forever.
                Default: the supervisor's `shutdown_timeout`.
            mailbox_capacity: bound the child's mailbox (default: its class's).

        Raises:
            TypeError: `agent` is neither an agent nor a callable.
            ValueError: a restart policy other than TEMPORARY for an instance.
            LifecycleError: the supervisor has ended.
        """
        supervisor = self._rt.agent
        assert isinstance(supervisor, Supervisor)
        address: Address[A] = supervisor._hybrid_spawn(agent, group, restart, shutdown_timeout, mailbox_capacity)
        return address

    def children(self) -> list[Address[Any]]:
        """The addresses of the children that are running now, in start order."""
        supervisor = self._rt.agent
        assert isinstance(supervisor, Supervisor)
        return [child.address for child in supervisor._hybrid_children if child.running]


class Supervisor(Agent[T_co]):
    """An agent that owns children in ordered groups and restarts them by policy.

    Spawn children with ``self.ctx.spawn(agent_or_factory, group=...)``, usually
    in `begin()`. The supervisor is an actor: it handles its own messages all
    along, including while it stops its children.

    Ordered shutdown: when the supervisor is interrupted, it interrupts its
    children one group at a time, greatest group first, and waits until every
    member of a group has ended before the next; a child that takes longer
    than its shutdown timeout is cancelled. Children spawned into a group that
    is already stopping are interrupted at once. The supervisor keeps handling
    messages meanwhile; its mailbox closes once the last child has ended. When
    it ends in another way (done, stop, failure), its children are stopped in
    the same order before `on_stop` returns. When it is cancelled from
    outside, its children are cancelled with it (structured concurrency).

    Restarts: a child ends; `on_child_ended` is called; then, unless the
    supervisor is stopping, the child's `Restart` policy decides whether it is
    restarted, the `strategy` decides which children restart with it, and
    `restart_backoff` how long to wait first. More than `max_restarts`
    restarts within `restart_period` seconds fail the supervisor with
    [`RestartIntensityExceeded`][hybrid.RestartIntensityExceeded], and its
    own parent decides.

    Attributes:
        strategy: `Strategy.ONE_FOR_ONE` (default), `ONE_FOR_ALL` or `REST_FOR_ONE`.
        max_restarts: restarts allowed within `restart_period` (default 3).
        restart_period: the intensity window in seconds (default 5).
        restart_backoff: the wait before a restart, by the number of restarts
            of that child in the window (default: none, restart at once).
        shutdown_timeout: default seconds a child may take to end once
            interrupted before it is cancelled (default 5; None: wait forever).

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
                for _ in range(4):
                    self.ctx.spawn(lambda: Worker(self.db), group=Group.WORKERS)
                self.ctx.spawn(Http, group=Group.HTTP)
                return Next.events()
        ```
    """

    context_class: ClassVar[type[Context]] = SupervisorContext
    strategy: ClassVar[Strategy] = Strategy.ONE_FOR_ONE
    max_restarts: ClassVar[int] = 3
    restart_period: ClassVar[float] = 5.0
    restart_backoff: ClassVar[Backoff | None] = None
    shutdown_timeout: ClassVar[float | None] = 5.0

    if TYPE_CHECKING:
        ctx: SupervisorContext  # pyright: ignore[reportIncompatibleVariableOverride]

    # The supervisor's own state is created lazily: subclasses define
    # __init__ freely, without calling super().__init__().
    _hybrid_state: _State

    @property
    def _hybrid_children(self) -> list[_Child]:
        return self._hybrid_sup().children

    def _hybrid_sup(self) -> _State:
        state = self.__dict__.get("_hybrid_state")
        if state is None:
            state = self.__dict__["_hybrid_state"] = _State()
        return state

    async def on_child_ended(self, address: Address[Any], reason: StopReason) -> None:
        """Called when a child ends, before any restart (crb's ``finished``).

        The default does nothing. It runs as a message handler: an exception
        goes to `on_error`.
        """

    async def on_interrupt(self) -> None:
        """Stop the children in group order, keep handling messages, then finish.

        A subclass that overrides this must call ``await super().on_interrupt()``.
        """
        state = self._hybrid_sup()
        state.stopping = True
        self.ctx.start_soon(self._hybrid_shutdown_then_finish)
        self.ctx.do_next(Next.events())

    async def on_stop(self, reason: StopReason) -> None:
        """Stop the children that still run, in group order (not when cancelled).

        A subclass that overrides this must call ``await super().on_stop(reason)``.
        """
        if reason.kind is not StopKind.CANCELLED:
            await self._hybrid_stop_children()

    # -- children ----------------------------------------------------------

    def _hybrid_spawn(
        self,
        agent: object,
        group: int,
        restart: Restart | None,
        shutdown_timeout: float | type[Any] | None,
        mailbox_capacity: int | type[Any] | None,
    ) -> Address[Any]:
        state = self._hybrid_sup()
        if isinstance(agent, Agent):
            instance: Agent[Any] = agent  # pyright: ignore[reportUnknownVariableType]
            if restart not in (None, Restart.TEMPORARY):
                raise ValueError(
                    f"{type(instance).__qualname__}: an agent instance runs once; "
                    f"pass a factory (e.g. the class, or a lambda) to restart it ({restart})"
                )
            factory = None
            first = instance
            restart = Restart.TEMPORARY
        elif callable(agent):
            factory = cast("Callable[[], Agent[Any]]", agent)
            first = _make(factory)
            restart = Restart.PERMANENT if restart is None else restart
        else:
            raise TypeError(f"spawn needs an agent instance or a factory of agents, got {agent!r}")
        if not isinstance(group, int):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"group must be an int (an IntEnum member, say), got {group!r}")
        timeout = self.shutdown_timeout if shutdown_timeout is Agent else shutdown_timeout
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"shutdown_timeout must be None or a number of seconds >= 0, got {timeout!r}")
        runner = AgentRunner(first, mailbox_capacity=mailbox_capacity)
        child = _Child(
            factory=factory,
            group=int(group),
            restart=restart,
            shutdown_timeout=timeout,
            order=state.next_order,
            address=runner.address,
        )
        state.next_order += 1
        state.children.append(child)
        self._hybrid_start(child, runner)
        return child.address

    def _hybrid_start(self, child: _Child, runner: AgentRunner[Any]) -> None:
        state = self._hybrid_sup()
        child.runner = runner
        child.prepared = False
        child.scope = trio.CancelScope()
        child.done = trio.Event()
        child.running = True
        child.interrupted = False
        self.ctx.start_soon(self._hybrid_run_child, child, runner, child.scope, name=f"child {runner.address!r}")
        if state.stopping and child.group >= state.stopping_group:
            self._hybrid_interrupt(child)

    async def _hybrid_run_child(self, child: _Child, runner: AgentRunner[Any], scope: trio.CancelScope) -> None:
        reason = None
        with scope:
            try:
                reason = await runner.run()
            except Exception as error:  # the child's helper tasks failed
                reason = StopReason(StopKind.FAILED, error)
        if reason is None:  # cancelled by its shutdown timeout
            reason = StopReason(StopKind.CANCELLED)
        child.running = False
        child.done.set()
        try:
            await self.ctx.address.send_wait(_ChildExited(child, reason))
        except AgentStopped:
            # The supervisor is finishing: no restarts any more; report directly.
            await self.on_child_ended(child.address, reason)

    def _hybrid_interrupt(self, child: _Child) -> None:
        if child.running and not child.interrupted:
            child.interrupted = True
            child.address.interrupt()

    async def _hybrid_await_end(self, child: _Child) -> None:
        timeout = child.shutdown_timeout
        if timeout is None:
            await child.done.wait()
            return
        with trio.move_on_after(timeout):
            await child.done.wait()
            return
        # Past the timeout: a second interrupt cancels its running step, and it
        # still ends as interrupted. A child that does not end even then (stuck
        # in a sync state, say) is cancelled outright after as long again.
        child.address.interrupt()
        with trio.move_on_after(timeout):
            await child.done.wait()
            return
        if child.scope is not None:
            child.scope.cancel()
        await child.done.wait()

    async def _hybrid_stop(self, children: list[_Child]) -> None:
        """Interrupt `children` latest-started first, each after the previous ended."""
        for child in sorted(children, key=lambda c: c.order, reverse=True):
            self._hybrid_interrupt(child)
            await self._hybrid_await_end(child)

    async def _hybrid_stop_groups(self) -> None:
        state = self._hybrid_sup()
        state.stopping = True
        if state.stopped is not None:  # another task is stopping them: wait for it
            await state.stopped.wait()
            return
        state.stopped = trio.Event()
        try:
            while True:
                running = [child for child in state.children if child.running]
                if not running:
                    break
                group = max(child.group for child in running)
                state.stopping_group = min(state.stopping_group, group)
                members = [child for child in running if child.group == group]
                for child in members:
                    self._hybrid_interrupt(child)
                async with trio.open_nursery() as nursery:
                    for child in members:
                        nursery.start_soon(self._hybrid_await_end, child)
        finally:
            state.stopped.set()

    async def _hybrid_shutdown_then_finish(self) -> None:
        await self._hybrid_stop_children()
        with contextlib.suppress(AgentStopped):  # it ended meanwhile (stop or failure)
            await self.ctx.address.send_wait(_AllStopped())

    @on_event
    async def _hybrid_all_stopped(self, event: _AllStopped) -> None:
        self.ctx.do_next(Next.interrupt())  # finishes as interrupted: on_interrupt already ran

    @on_event
    async def _hybrid_child_exited(self, event: _ChildExited) -> None:
        child = event.child
        state = self._hybrid_sup()
        try:
            await self.on_child_ended(child.address, event.reason)
        except Exception as error:  # the hook's failure must not cancel the child's restart
            await self.on_error(error)
        if state.stopping or child.in_restart:
            return
        if not _should_restart(child.restart, event.reason):
            state.children.remove(child)
            return
        now = trio.current_time()
        state.restarts.append(now)
        state.failures.append((now, event.reason.error))
        window_start = now - self.restart_period
        while state.restarts and state.restarts[0] < window_start:
            state.restarts.popleft()
        while state.failures and state.failures[0][0] < window_start:
            state.failures.popleft()
        if len(state.restarts) > self.max_restarts:
            errors = tuple(error for _, error in state.failures if error is not None)
            failure = RestartIntensityExceeded(type(self).__qualname__, self.max_restarts, self.restart_period, errors)
            exceptions = [error for error in errors if isinstance(error, Exception)]
            if exceptions:
                failure.__cause__ = ExceptionGroup("the child failures in the restart window", exceptions)
            self.ctx.do_next(Next.fail(failure))
            return
        child.restarts.append(now)
        while child.restarts and child.restarts[0] < window_start:
            child.restarts.popleft()
        delay = 0.0 if self.restart_backoff is None else self.restart_backoff.delay(len(child.restarts))
        if self.strategy is Strategy.ONE_FOR_ONE:
            affected = [child]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            affected = list(state.children)
        else:
            affected = [other for other in state.children if other.order >= child.order]
        for other in affected:
            other.in_restart = True
        # The address reaches the next instance at once: what is sent to it
        # while the child waits out its backoff is queued for that instance.
        try:
            self._hybrid_prepare(child)
        except Exception as error:  # the factory failed: the supervisor cannot do its job
            _discard_prepared(affected)
            self.ctx.do_next(Next.fail(error))
            return
        self.ctx.start_soon(self._hybrid_restart, affected, delay)

    def _hybrid_prepare(self, child: _Child) -> None:
        if child.factory is not None and child.restart is not Restart.TEMPORARY:
            child.runner = AgentRunner(_make(child.factory), address=child.address)
            child.prepared = True

    async def _hybrid_restart(self, children: list[_Child], delay: float) -> None:
        state = self._hybrid_sup()
        try:
            await self._hybrid_stop([child for child in children if child.running])
            try:
                for child in children:
                    if not child.prepared:
                        self._hybrid_prepare(child)
            except Exception as error:
                self.ctx.address.send(_StartFailed(error))
                return
            await trio.sleep(delay)
            for child in sorted(children, key=lambda c: c.order):
                child.in_restart = False
                if state.stopping:
                    return
                if not child.prepared:  # temporary: stopped with the others, not restarted
                    if child in state.children:
                        state.children.remove(child)
                    continue
                assert child.runner is not None
                self._hybrid_start(child, child.runner)
        finally:
            # Restarts that will not happen (the supervisor stops, fails, or
            # this task is cancelled): their addresses must say so.
            _discard_prepared(children)

    async def _hybrid_stop_children(self) -> None:
        try:
            await self._hybrid_stop_groups()
        finally:
            _discard_prepared(self._hybrid_sup().children)

    @on_event
    async def _hybrid_start_failed(self, event: _StartFailed) -> None:
        self.ctx.do_next(Next.fail(event.error))


@attrs.define
class _State:
    children: list[_Child] = attrs.field(factory=list[_Child])
    next_order: int = 0
    stopping: bool = False
    stopping_group: float = math.inf
    stopped: trio.Event | None = None
    restarts: deque[float] = attrs.field(factory=deque[float])
    failures: deque[tuple[float, BaseException | None]] = attrs.field(factory=deque[tuple[float, BaseException | None]])


def _discard_prepared(children: list[_Child]) -> None:
    for child in children:
        if child.prepared and child.runner is not None:
            child.prepared = False
            child.runner.discard()


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
