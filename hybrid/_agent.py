"""Agents: the class applications subclass, and how agents are started."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from threading import get_ident
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, cast, final

import trio
from typing_extensions import Self, TypeVar

from . import _validate
from ._address import Address
from ._checkpointer import Checkpointer
from ._context import Context
from ._exceptions import LifecycleError
from ._handlers import Table, build_tables, defining_namespace
from ._mailbox import Mailbox
from ._next import Next
from ._registry import current_names
from ._runtime import ENDED, STARTING, Runtime, current_runtime
from ._stop import StopReason

T_co = TypeVar("T_co", covariant=True, default=None)
A = TypeVar("A", bound="Agent[Any]")

logger = logging.getLogger("hybrid.agent")


class _NotStarted:
    """``Agent.ctx`` before the agent runs: a clear error instead of AttributeError."""

    def __get__(self, instance: object, owner: type | None = None) -> NoReturn:
        if instance is None:
            raise AttributeError("ctx")
        raise LifecycleError(
            f"{type(instance).__qualname__}.ctx exists once the agent runs "
            "(agent.run() or hybrid.spawn()); it is not available in __init__"
        )


def _has_run(agent: Agent[Any]) -> bool:
    """Whether `agent` ran: its ``ctx`` is set on the instance when it starts.

    Read as an attribute, not looked up in ``agent.__dict__``: that would make
    the instance's dict (64 bytes per agent, for its whole life).
    """
    try:
        agent.ctx  # noqa: B018 - `_NotStarted` raises until the agent runs
    except LifecycleError:
        return False
    return True


class Agent(Generic[T_co]):
    """The base class of agents; `T_co` is the type of its output (default None).

    An agent is a state machine: `begin()` returns the first transition
    ([`Next`][hybrid.Next]), each state returns the following one, until the
    agent finishes. In actor mode (``Next.events()``) it handles typed
    messages with methods decorated by `@hybrid.on_event`,
    `@hybrid.on_request` and `@hybrid.on_response`.

    Subclasses define ``__init__`` freely (no ``super().__init__()`` needed).
    An instance runs once, with `await agent.run()` or
    `hybrid.spawn(nursery, agent)`; from then on ``self.ctx`` is its
    [`Context`][hybrid.Context].

    Attributes:
        mailbox_capacity: the bound of the agent's mailbox: an int >= 1, or
            None (the default) or ``math.inf`` for unbounded.
            A class attribute; `hybrid.spawn(..., mailbox_capacity=n)`
            overrides it for one agent.
        context_class: the class of ``self.ctx``: `Context`, or a subclass
            that adds operations (`Supervisor` uses `SupervisorContext`).
        helper_tasks: whether the agent starts helper tasks (timers,
            `ctx.consume`, `ctx.start_soon`). Declare False for an agent that
            starts none: `run()` then opens no nursery of its own, which
            makes a short run cheaper, and starting one raises
            `LifecycleError`. (A spawned agent's helpers run in the spawner's
            nursery: there it changes nothing but the check.)
        hibernate_after: seconds idle in actor mode after which a spawned
            agent hibernates: it gives its trio task up, keeping its mailbox
            and its fields, and the next message (or interrupt) resumes it in
            a new task. None (the default): never. 0: as soon as it is idle.
            A hibernating agent costs about a fifth of a parked one; see
            the guide "Many agents".

    Example:
        ```python
        class Download(Agent[int]):
            def __init__(self, url: str) -> None:
                self.url = url

            def begin(self) -> Next[Self]:
                return Next.do_async(self.fetch, self.url)

            async def fetch(self, url: str) -> Next[Self]:
                text = await get(url)
                return Next.do_sync(self.count, text)

            def count(self, text: str) -> Next[Self]:
                return Next.done(len(text))

        size = await Download("https://example.org").run()
        ```
    """

    mailbox_capacity: ClassVar[int | float | None] = None
    context_class: ClassVar[type[Context[Any]]] = Context
    helper_tasks: ClassVar[bool] = True
    hibernate_after: ClassVar[float | None] = None

    if TYPE_CHECKING:
        ctx: Context[Self]
        """The agent's `Context` (a `SupervisorContext` for a supervisor): set when the agent starts."""
    else:
        ctx = _NotStarted()

    _hybrid_events: ClassVar[Table]
    _hybrid_requests: ClassVar[Table]
    _hybrid_responses: ClassVar[Table]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _validate.capacity(f"{cls.__qualname__}.mailbox_capacity", cls.__dict__.get("mailbox_capacity"))
        if cls.__dict__.get("hibernate_after") is not None:
            _validate.seconds(f"{cls.__qualname__}.hibernate_after", cls.__dict__["hibernate_after"])
        priority = cls.__dict__.get("message_priority")
        if priority is not None and not isinstance(priority, staticmethod):
            raise TypeError(
                f"{cls.__qualname__}.message_priority must be a @staticmethod taking the message "
                f"and returning an int, got {priority!r}"
            )
        helper_tasks = cls.__dict__.get("helper_tasks", True)
        if type(helper_tasks) is not bool:
            raise TypeError(f"{cls.__qualname__}.helper_tasks must be True or False, got {helper_tasks!r}")
        cls._hybrid_events, cls._hybrid_requests, cls._hybrid_responses = build_tables(cls, defining_namespace())

    @staticmethod
    def message_priority(message: Any) -> int:
        """Override (as a ``@staticmethod``) to give the agent a priority mailbox.

        Return the priority of an event or request, an int: the mailbox then
        hands higher priorities to the handlers first, in arrival order within
        a priority. Agents that do not override it have a plain FIFO mailbox
        (this default is never called). It runs in the sender, so a function
        that raises (or returns something else than an int) fails that `send`
        or `request`, where the mistake is. The bound counts every message,
        whatever its priority. The interrupt mark has priority 0: messages of
        a higher priority overtake a queued `interrupt()`. The mailbox keeps
        the function of the first agent that read it (a restarted child's
        address keeps it).

        Example:
            ```python
            class Dispatcher(Agent):
                @staticmethod
                def message_priority(message: object) -> int:
                    return 10 if isinstance(message, Cancel) else 0
            ```
        """
        return 0

    def begin(self) -> Next[Self]:
        """The first transition; the default is ``Next.events()`` (actor mode)."""
        return Next.events()

    async def on_interrupt(self) -> None:
        """Called when the agent is interrupted (always, and once).

        Afterwards the agent takes the transition this hook scheduled with
        ``self.ctx.do_next(...)``, or finishes as ``Next.done()`` does (handling
        the messages already queued) if it scheduled none. The default does
        nothing.
        """

    async def on_error(self, error: Exception) -> None:
        """Called when an event or response handler raised; the agent keeps running.

        The default logs the error at ERROR level on the ``hybrid.agent``
        logger. Raise from here to fail the agent instead. (An `on_request`
        handler's error goes to the caller, not here.)
        """
        logger.error("%s: a message handler raised", type(self).__qualname__, exc_info=error)

    async def on_stop(self, reason: StopReason) -> None:
        """Called last, whatever the ending (done, interrupted, stopped, failed, cancelled).

        When the agent is cancelled, it runs shielded from that cancellation:
        keep it short. An exception raised here fails the agent.
        """

    async def run(self) -> T_co:
        """Run the agent in the current task until it ends; return its output.

        Returns the value given to ``Next.done`` (None if the agent ended by
        interrupt or stop); raises the error of a failed agent. Helper tasks
        (timers, `consume`, `ctx.start_soon`) run in a nursery that this call
        opens, and an error of theirs leaves it as an `ExceptionGroup`.
        """
        rt = start_runtime(self, caller="Agent.run", host=None)
        if type(self).helper_tasks:
            await run_hosted(rt, None)
        else:
            await rt.main()
        result: T_co = rt.result()
        return result


_CHECKPOINTER_TYPES: set[type] = set()
"""Classes found to implement `Checkpointer`: a protocol isinstance costs ~14 µs, a set lookup nothing."""


def _is_checkpointer(candidate: object) -> bool:
    cls = type(candidate)
    if cls in _CHECKPOINTER_TYPES:
        return True
    if isinstance(candidate, Checkpointer):
        _CHECKPOINTER_TYPES.add(cls)
        return True
    return False


def start_runtime(
    agent: Agent[Any],
    *,
    caller: str,
    host: trio.Nursery | None,
    mailbox_capacity: object = None,
    address: Address[Any] | None = None,
    name: str | None = None,
    hibernate_after: object = None,
    checkpointer: object = None,
) -> Runtime:
    """Make the runtime of `agent`: its mailbox (or the one of `address`), address and context.

    Every argument is checked before anything is made (no name is claimed for a refused call).
    """
    if not isinstance(agent, Agent):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{caller} needs an Agent instance, got {agent!r}")
    sleep_after = None if hibernate_after is None else _validate.seconds("hibernate_after", hibernate_after)
    if checkpointer is not None and not _is_checkpointer(checkpointer):
        raise TypeError(
            f"{caller}: checkpointer must implement hybrid.Checkpointer "
            f"(start, transition, handled, ended, idempotency_key), got {checkpointer!r}"
        )
    if _has_run(agent):
        raise LifecycleError(
            f"{type(agent).__qualname__} instance was already started; an agent runs once: create a new instance"
        )
    cls = type(agent)
    tables = (cls._hybrid_events, cls._hybrid_requests, cls._hybrid_responses)
    if address is None:
        if mailbox_capacity is None:
            capacity = _validate.capacity("mailbox_capacity", cls.mailbox_capacity)
        else:
            capacity = _validate.capacity("mailbox_capacity", mailbox_capacity)
        names = current_names()
        priority = None if cls.message_priority is Agent.message_priority else cls.message_priority
        mailbox = Mailbox(names.claim(name, cls.__name__), cls, capacity, tables, priority)
        maker = current_runtime.get()
        mailbox.parent = None if maker is None else maker.mailbox.name
        rt = Runtime(agent, mailbox, host)
        if rt.probe.stamps:
            mailbox.set_stamping(True)
        if sleep_after is not None:
            rt.hibernate_after = sleep_after
        address = Address._make(mailbox, rt)
        names.used[mailbox.name] = address
        interrupts = 0
    else:
        if name is not None and name != address.name:
            raise ValueError(f"{address!r} keeps its name {address.name!r}; it cannot be renamed {name!r}")
        if type(address._mailbox) is not Mailbox:  # noqa: SLF001 - a ForeignMailbox (hybrid._foreign)
            raise ValueError(f"{address!r} reaches an agent of another process: only a local address can be reused")
        old: Runtime = address._rt  # noqa: SLF001 - the run the address reached until now
        if old.phase != ENDED:
            raise LifecycleError(f"{address!r} still reaches a running agent; it can be reused once that ended")
        mailbox = address._mailbox  # noqa: SLF001
        reused = _validate.capacity("mailbox_capacity", mailbox_capacity)
        if mailbox_capacity is not None and reused != mailbox.capacity:
            raise ValueError("a reused address keeps its mailbox and its capacity")
        if old.keep_address:
            old.keep_address = False
        else:  # given up: take the name and the mailbox back
            current_names().claim(mailbox.name, cls.__name__)
            current_names().used[mailbox.name] = address
            mailbox.reopen()
        interrupts = mailbox.hand_over(cls, tables)
        rt = Runtime(agent, mailbox, host)
        address._rt = rt  # noqa: SLF001 - from now on the address reaches this run
    rt.address = address
    rt.checkpointer = cast("Checkpointer | None", checkpointer)  # checked above
    mailbox.runs += 1
    if mailbox.runs > 1:
        current_names().of(cls.__qualname__).restarts += 1
    if interrupts:
        rt.interrupts = 1
        mailbox.put_interrupt_mark()
    ctx = cls.context_class._make(rt)
    rt.ctx = ctx
    agent.ctx = ctx
    return rt


@final
class AgentRunner(Generic[A]):
    """Run an agent in the current task and get how it ended as a value.

    The building block of supervisors (and of your own): the address exists
    as soon as the runner is made, before the agent runs, and `run()` returns
    the agent's [`StopReason`][hybrid.StopReason] instead of raising its
    failure. `Agent.run()` is built on it.

    Args:
        agent: a new agent instance.
        mailbox_capacity: bound the mailbox (an int >= 1), or ``math.inf``
            for unbounded; None (the default) takes the class's
            `mailbox_capacity`.
        address: reuse the address of an agent that has ended: from now on
            it reaches this agent, with the same name and mailbox (how a
            supervisor restarts a child without changing its address).
        name: the agent's name (see `Address.name`); by default
            ``"{ClassName}-{n}"``.
        keep_address: when this run ends, keep the address open for a
            successor instead of closing it: messages sent meanwhile wait in
            its mailbox for the next ``AgentRunner(next_agent, address=...)``,
            until `discard()` gives the address up.
        checkpointer: makes the agent durable: told of each transition
            before it is taken (see `hybrid.Checkpointer`).

    Raises:
        LifecycleError: the agent was already started, or `address` still
            reaches a running agent.
        NameInUse: the name is taken by a live agent (a `ValueError`).
        ValueError: `mailbox_capacity`
            is invalid.

    Example:
        ```python
        runner = hybrid.AgentRunner(Worker())
        runner.address.send(Job(1))          # queued until the agent runs
        reason = await runner.run()          # never raises the agent's failure
        if reason.failed:
            log.warning("worker failed: %r", reason.error)
        ```
    """

    __slots__ = ("_rt",)

    def __init__(
        self,
        agent: A,
        *,
        mailbox_capacity: int | float | None = None,
        address: Address[A] | None = None,
        name: str | None = None,
        keep_address: bool = False,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._rt = start_runtime(
            agent,
            caller="AgentRunner",
            host=None,
            mailbox_capacity=mailbox_capacity,
            address=address,
            name=name,
            checkpointer=checkpointer,
        )
        self._rt.keep_address = keep_address

    @property
    def address(self) -> Address[A]:
        """The agent's address, usable before `run()`."""
        address: Address[A] = self._rt.address
        return address

    @property
    def output(self) -> Any:
        """The value the agent gave to ``Next.done`` (None until then, or if it did not finish so)."""
        return self._rt.output

    def discard(self, *, keep_address: bool = False) -> None:
        """Give the address up without running the agent (or after it, if kept for a successor).

        Before `run()`: the agent ends without running (`on_stop` is not
        called). After a run with ``keep_address=True``: the address stops
        waiting for a successor. Either way its mailbox closes: queued
        requests fail with `AgentStopped`, queued events are dropped, and the
        address says the agent is gone. A supervisor discards the runner of a
        restart that will not happen.

        With ``keep_address=True``, before `run()`: the agent ends without
        running but its address stays open for a successor
        (``AgentRunner(next_agent, address=runner.address)``): queued messages
        wait for it, and an interrupt sent to this run is dropped. A supervisor
        does this with a child stopped before it started, then restarted.
        After the run it does nothing.

        Raises:
            LifecycleError: the agent is running.
        """
        self._rt.discard(keep_address)

    def interrupt(self) -> None:
        """Interrupt this run, as ``address.interrupt()`` does while the run is alive.

        Unlike the address's, it never reaches a later run at the same address
        (``keep_address=True``): once this run has ended, it does nothing. A
        supervisor stops its children this way, so that an interrupt meant for a
        run that is ending is not handed to its restarted successor. Call it from
        the trio thread (an address's `interrupt` also works from worker threads).
        """
        rt = self._rt
        if rt.phase != ENDED:
            rt.interrupt()

    def cancel(self) -> None:
        """Cancel a run started by `Context.start_agent`, as cancelling its task would.

        The agent ends as cancelled (its `on_stop` runs, shielded), also if it
        hibernates; its `on_end` is told. No effect once it has ended. (Cancel
        the scope around `run()` to cancel a run awaited there.)

        Raises:
            LifecycleError: the runner was not started by `Context.start_agent`.
        """
        hosting = self._rt.hosting
        if hosting is None:
            raise LifecycleError(
                f"{self._rt.name}: only a run started by ctx.start_agent is cancelled by its runner; "
                "cancel the scope around run() instead"
            )
        hosting.cancel()

    async def run(self, *, task_status: trio.TaskStatus[Address[A]] = trio.TASK_STATUS_IGNORED) -> StopReason:
        """Run the agent in the current task until it ends; return how it ended.

        The agent's failure is returned in the reason (``reason.error``), not
        raised. Cancellation from outside propagates unchanged. The agent's
        helper tasks (timers, `consume`, `ctx.start_soon`) run in a nursery
        this call opens; an error of theirs leaves it as an `ExceptionGroup`.

        Works with ``await nursery.start(runner.run)``, which returns the
        address once the agent's `begin()` has run (or once the agent ended,
        if `begin()` raised).

        Raises:
            LifecycleError: the runner was already run, or discarded.
        """
        rt = self._rt
        if rt.phase != STARTING or rt.task is not None or rt.hosting is not None:
            raise LifecycleError("an AgentRunner runs once")
        status = None if task_status is trio.TASK_STATUS_IGNORED else task_status
        if type(rt.agent).helper_tasks:
            await run_hosted(rt, status)
        else:
            await rt.main(False, status)
        reason = rt.reason
        assert reason is not None
        return reason


async def run_hosted(rt: Runtime, status: trio.TaskStatus[Any] | None) -> None:
    """Run the agent of `rt` in the current task, its helper tasks in a nursery of its own."""
    escaped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            rt.host = nursery
            try:
                await rt.main(False, status)
            finally:
                if rt.helpers is not None:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Only the agent's own task raised (cancellation from outside, or
        # KeyboardInterrupt): give trio back the exception it raised, as an
        # await without a nursery would.
        if rt.escaped is None:
            raise
        rest = group.split(lambda exc: exc is rt.escaped or isinstance(exc, trio.Cancelled))[1]
        if rest is not None:
            raise
        escaped = rt.escaped
    if escaped is not None:
        raise escaped


def spawn(
    nursery: trio.Nursery,
    agent: A,
    *,
    mailbox_capacity: int | float | None = None,
    name: str | None = None,
    hibernate_after: float | None = None,
    checkpointer: Checkpointer | None = None,
) -> Address[A]:
    """Start `agent` as a task in `nursery` and return its address at once.

    Messages can be sent right away; they are queued until the agent reaches
    actor mode. An agent that fails raises its error out of `nursery`, as a
    trio task would (cancelling its siblings), and from `Address.join()`.

    Args:
        nursery: where the agent's task (and its helper tasks) run.
        agent: a new agent instance (an instance runs once).
        mailbox_capacity: bound the agent's mailbox (an int >= 1), or
            ``math.inf`` for unbounded (as `trio.open_memory_channel` says it);
            None (the default) takes the class's `mailbox_capacity`.
        name: the agent's name, unique among the live agents of the run;
            by default ``"{ClassName}-{n}"``.
        hibernate_after: idle seconds in actor mode after which the agent
            gives its task up until its next message (see
            `Agent.hibernate_after`); None (the default) takes the class's.
        checkpointer: makes the agent durable: told of each transition
            before it is taken (see `hybrid.Checkpointer`;
            `hybrid.durable` makes them).

    Raises:
        LifecycleError: the agent was already started.
        ValueError: `mailbox_capacity` or `hibernate_after` is invalid.
        NameInUse: `name` is taken by a live agent of the run (a `ValueError`).

    Example:
        ```python
        async with trio.open_nursery() as nursery:
            server = hybrid.spawn(nursery, Server(), mailbox_capacity=100, name="server")
        ```
    """
    if not isinstance(nursery, trio.Nursery):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"hybrid.spawn needs a trio nursery to run the agent in, got {nursery!r}")
    rt = start_runtime(
        agent,
        caller="hybrid.spawn",
        host=nursery,
        mailbox_capacity=mailbox_capacity,
        name=name,
        hibernate_after=hibernate_after,
        checkpointer=checkpointer,
    )
    nursery.start_soon(rt.main, True, name=f"hybrid agent {rt.name}")
    address: Address[A] = rt.address
    return address


async def start(
    nursery: trio.Nursery,
    agent: A,
    *,
    mailbox_capacity: int | float | None = None,
    name: str | None = None,
    hibernate_after: float | None = None,
    checkpointer: Checkpointer | None = None,
) -> Address[A]:
    """Start `agent` in `nursery` and return its address once its `begin()` has run.

    The `nursery.start` of agents: where `hybrid.spawn` returns at once,
    this waits until the agent is set up (its `begin()` has returned its
    first transition), so what `begin()` prepares is there when this returns.
    If `begin()` raises, the error is raised here, as `nursery.start` does for
    a task that fails before it has started.

    Args:
        nursery: where the agent's task (and its helper tasks) run.
        agent: a new agent instance (an instance runs once).
        mailbox_capacity: as for `hybrid.spawn`.
        name: as for `hybrid.spawn`.
        hibernate_after: as for `hybrid.spawn`.
        checkpointer: as for `hybrid.spawn`.

    Example:
        ```python
        async with trio.open_nursery() as nursery:
            db = await hybrid.start(nursery, Database("app.db"))   # connected in begin()
            web = hybrid.spawn(nursery, Web(db))
        ```
    """
    if not isinstance(nursery, trio.Nursery):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"hybrid.start needs a trio nursery to run the agent in, got {nursery!r}")
    rt = start_runtime(
        agent,
        caller="hybrid.start",
        host=nursery,
        mailbox_capacity=mailbox_capacity,
        name=name,
        hibernate_after=hibernate_after,
        checkpointer=checkpointer,
    )
    address: Address[A] = await nursery.start(rt.main, True, name=f"hybrid agent {rt.name}")
    return address


@asynccontextmanager
async def open_agent(
    agent: A,
    *,
    mailbox_capacity: int | float | None = None,
    name: str | None = None,
) -> AsyncGenerator[Address[A]]:
    """Run `agent` for the duration of an ``async with`` block; interrupt it and wait for it on exit.

    A forgotten ``interrupt()`` cannot hang the program: leaving the block
    interrupts the agent (it handles what is queued, runs `on_interrupt` and
    `on_stop`) and waits until it has ended. An exception leaving the block
    cancels the agent instead, as a nursery cancels its tasks. The agent
    starts as with `hybrid.start`: its `begin()` has run when the block
    begins. If the agent fails, its error leaves the block in an
    `ExceptionGroup`, as a trio task's would.

    Example:
        ```python
        async with hybrid.open_agent(Crawler()) as crawler:
            crawler.send(AddUrl("https://example.org"))
            print(await crawler.request(GetCount()))
        # here the crawler has ended
        ```
    """
    async with trio.open_nursery() as nursery:
        address = await start(nursery, agent, mailbox_capacity=mailbox_capacity, name=name)
        yield address  # an exception from the block cancels the agent with the nursery
        address.interrupt()


def interrupted() -> bool:
    """Whether the current agent has been asked to stop; poll it in long states.

    True once the agent was interrupted, or when its running step was
    cancelled (a state timeout, a second interrupt, cancellation from
    outside). A sync state cannot be cancelled: polling this is how it stops
    early. Works in sync states (worker threads), async states and handlers.

    Raises:
        LifecycleError: called outside an agent.

    Example:
        ```python
        def crunch(self, items: list[int]) -> Next[Self]:
            total = 0
            for item in items:
                if hybrid.interrupted():
                    return Next.stop()
                total += item * item
            return Next.done(total)
        ```
    """
    rt = current_runtime.get()
    if rt is None:
        raise LifecycleError("hybrid.interrupted() is for code running inside an agent")
    if rt.interrupts or rt.interrupt_handled:
        return True
    if get_ident() == rt.mailbox.home.thread_id:
        return rt.scope is not None and rt.scope.cancel_called
    # A worker thread (sync state): CancelScope is not thread-safe; ask trio
    # whether the to_thread call running this thread has been cancelled.
    try:
        trio.from_thread.check_cancelled()
    except trio.Cancelled:
        # A probe, not a cancellation of ours: trio raises Cancelled in the
        # waiting task itself once this thread returns.
        return True
    except RuntimeError:  # a thread that trio did not start
        return False
    return False


Agent._hybrid_events, Agent._hybrid_requests, Agent._hybrid_responses = {}, {}, {}  # noqa: SLF001 - the base's own tables
Agent._hybrid_handler_names = {"event": {}, "request": {}, "response": {}}  # type: ignore[attr-defined]  # noqa: SLF001
