"""The agent's context: its handle on the runtime, as ``self.ctx``."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, cast

from typing_extensions import TypeVar, TypeVarTuple

from . import _validate
from ._exceptions import LifecycleError
from ._monitors import Monitor, watch
from ._next import Next
from ._runtime import Runtime
from ._stop import StopReason
from ._streams import Stream, start_stream
from ._thread import threadsafe
from ._timers import Timer

if TYPE_CHECKING:
    from ._address import Address
    from ._agent import Agent, AgentRunner

Ts = TypeVarTuple("Ts")
A_co = TypeVar("A_co", bound="Agent[Any]", covariant=True, default="Agent[Any]")

_at_home = threadsafe(lambda ctx: ctx._rt.mailbox.home)  # noqa: SLF001 - the context's own field


class Context(Generic[A_co]):
    """The agent's handle on its runtime: ``self.ctx`` in states and handlers.

    It exists from the moment the agent is started (`run()` or `hybrid.spawn`).
    Every method is safe to call from a sync state's worker thread: the call
    is carried out on the trio thread.

    An agent class can extend its context by setting `Agent.context_class`
    to a subclass (as `Supervisor` does with `SupervisorContext`). Contexts
    are made by the runtime only; a subclass adds methods and may override
    `call_on_interrupt` and `call_on_stop` to run its own machinery around
    the agent's hooks.
    """

    __slots__ = ("_rt",)

    _rt: Runtime

    def __init__(self) -> None:
        raise TypeError("Context has no public constructor: the runtime makes it, as self.ctx")

    @classmethod
    def _make(cls, rt: Runtime) -> Context[Any]:
        ctx = object.__new__(cls)
        ctx._rt = rt
        return ctx

    if not TYPE_CHECKING:  # type checkers keep flagging unknown attributes (ctx.spawn of a plain agent)

        def __getattr__(self, name: str) -> Any:
            if name == "spawn":
                raise AttributeError(
                    f"{type(self._rt.agent).__qualname__}.ctx has no spawn(): only a supervisor starts children; "
                    "subclass hybrid.Supervisor (its ctx is a hybrid.SupervisorContext), or use "
                    "hybrid.spawn(nursery, agent) in a nursery of your own",
                    name=name,
                    obj=self,
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)

    @property
    def address(self) -> Address[A_co]:
        """The agent's own address (typed as the agent's: ``self.ctx.address`` is an ``Address[Self]``)."""
        address: Address[A_co] = self._rt.address
        return address

    @property
    def agent(self) -> A_co:
        """The agent this context belongs to (for context subclasses and instruments)."""
        agent: Any = self._rt.agent
        return cast("A_co", agent)

    @property
    def interrupted(self) -> bool:
        """Whether the agent has been interrupted (`hybrid.interrupted()`, for any code that holds the context)."""
        rt = self._rt
        return bool(rt.interrupts or rt.interrupt_handled)

    @property
    def scheduled(self) -> Next[Any] | None:
        """The transition scheduled with `do_next` (or `shutdown`/`stop`) and not yet taken."""
        return self._rt.next

    @property
    def idempotency_key(self) -> str:
        """A key for the state being run, the same each time it runs again after a crash.

        A durable agent's state runs at least once (its checkpoint commits
        before it starts, and a crash before the next one runs it again): pass
        this key to the external effects it makes (a payment, an email) so
        that they happen once. Stable for one state of one durable key across
        resumes; it differs between states and between keys.

        Raises:
            LifecycleError: the agent is not durable (it runs without a
                `hybrid.Checkpointer`, such as `hybrid.durable`'s store gives).

        Example:
            ```python
            async def charge(self, cents: int) -> Next[Self]:
                await payments.charge(self.order, cents, key=self.ctx.idempotency_key)
                return Next.do_async(self.ship)
            ```
        """
        checkpointer = self._rt.checkpointer
        if checkpointer is None:
            raise LifecycleError(
                f"{self._rt.name} is not durable, so it has no idempotency_key: run it with a checkpointer "
                "(hybrid.durable's store.run / store.spawn)"
            )
        return checkpointer.idempotency_key

    @_at_home
    def do_next(self, next: Next[Any]) -> None:
        """Schedule a transition from a message handler or `on_interrupt`.

        It runs before the next queued message is handled. A state returns
        its next transition instead of calling this.

        Raises:
            InvalidTransition: `next` is not a `Next`.
            LifecycleError: a transition is already scheduled, the agent is in
                a state (return the transition instead), or it is finishing.
        """
        self._rt.schedule(next)

    @_at_home
    def shutdown(self) -> None:
        """Finish after draining: like ``Next.done()`` (output None), when the current step ends."""
        self._rt.request_end(Next.done())

    @_at_home
    def stop(self) -> None:
        """End at once when the current handler or step returns, as ``Next.stop()`` does."""
        self._rt.request_end(Next.stop())

    @_at_home
    def send_after(self, delay: float, event: object) -> Timer:
        """Send `event` to this agent once, `delay` seconds from now.

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            ValueError: `delay` is negative, infinite or NaN.
        """
        delay = _validate.seconds("send_after", delay)
        return Timer._start_new(self._rt, event, delay, None)  # noqa: SLF001 - the context makes timers

    @_at_home
    def send_every(self, period: float, event: object) -> Timer:
        """Send `event` to this agent every `period` seconds, first after one period.

        Ticks keep a fixed rate (no drift). A tick that finds a bounded mailbox
        full waits for room; ticks missed meanwhile are coalesced.

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            ValueError: `period` is not a finite number > 0.
        """
        period = _validate.seconds("send_every", period, positive=True)
        return Timer._start_new(self._rt, event, period, period)  # noqa: SLF001

    @_at_home
    def consume(self, source: AsyncIterable[Any]) -> Stream:
        """Deliver each item of `source` to this agent as an event.

        A helper task iterates `source` and sends each item (waiting for room
        in a bounded mailbox). When the iterable is exhausted or raises, a
        [`StreamEnded`][hybrid.StreamEnded] event follows, so the agent must
        handle `StreamEnded`. A source that never awaits still lets the other
        tasks run (it yields at least every 64 items).

        Raises:
            UnhandledMessage: the agent has no handler for `StreamEnded`.
            TypeError: `source` is not an async iterable.
        """
        if not hasattr(source, "__aiter__"):
            raise TypeError(f"consume needs an async iterable, got {source!r}")
        return start_stream(self._rt, source)

    @_at_home
    def monitor(self, address: Address[Any]) -> Monitor:
        """Be told, with an [`Ended`][hybrid.Ended] event, when the agent at `address` ends.

        The event arrives in this agent's mailbox (past any bound), once,
        after that agent has ended (not while it still handles its queued
        messages). If it has already ended, the event arrives at once. The
        monitor watches the agent that `address` reaches now: if a supervisor
        later restarts it behind the same address, monitor again.

        Raises:
            UnhandledMessage: this agent has no handler for `Ended`.
        """
        return watch(self._rt, address._rt, address)  # noqa: SLF001 - the run the address reaches

    async def wait_interrupted(self) -> None:
        """Wait until the agent is interrupted (returns at once if it already was).

        For long async states that should stop early: race the work against
        this in a nursery. (A sync state polls
        [`hybrid.interrupted()`][hybrid.interrupted] instead.)

        Example:
            ```python
            async def crawl(self, urls: list[str]) -> Next[Self]:
                async with trio.open_nursery() as nursery:

                    async def stop_early() -> None:
                        await self.ctx.wait_interrupted()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(stop_early)
                    await self.fetch_all(urls)
                    nursery.cancel_scope.cancel()
                return Next.done()
            ```
        """
        await self._rt.wait_interrupted()

    @_at_home
    def start_soon(self, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts, name: str | None = None) -> None:
        """Run ``fn(*args)`` as a helper task beside the agent.

        The helper is cancelled when the agent ends. An exception it raises
        leaves the nursery the agent runs in, as a trio task's would (which
        cancels the agent).
        """
        self._rt.start_helper(functools.partial(fn, *args), name=name or fn)

    async def start_agent(
        self,
        runner: AgentRunner[Any],
        *,
        on_end: Callable[[StopReason], Awaitable[object]],
        hibernate_after: float | None = None,
    ) -> None:
        """Run `runner`'s agent beside this one, contained; return once its `begin()` has run.

        The building block of supervisors that let their children hibernate
        (`Supervisor` uses it): the agent runs in this agent's nursery, as a
        spawned agent would, and may give its task up while idle
        (`hibernate_after`), but its failure does not leave the nursery. The
        run ends, and ``await on_end(reason)`` is called once it has ended and
        its helper tasks have too. A failure of one of its helper tasks ends it
        the same way (``reason.error`` is that failure), where a spawned agent's
        would cancel the nursery. It is cancelled if still running when this
        agent ends; `AgentRunner.cancel` cancels it before.

        Args:
            runner: a runner that has not run (it may reuse an address:
                ``AgentRunner(agent, address=..., keep_address=True)``).
            on_end: told how the run ended, once, from a task of the nursery
                (cancelled if the nursery is); it should not raise: its
                error would leave the nursery.
            hibernate_after: idle seconds in actor mode after which the agent
                hibernates; None (the default) takes its class's
                `Agent.hibernate_after`.

        Raises:
            LifecycleError: the runner already ran, or this agent has ended
                or declares ``helper_tasks = False``.
            ValueError: `hibernate_after` is invalid.

        Example:
            ```python
            class Keeper(hybrid.Agent):
                def begin(self) -> Next[Self]:
                    return Next.do_async(self.start_worker)

                async def start_worker(self) -> Next[Self]:
                    runner = hybrid.AgentRunner(Worker())
                    await self.ctx.start_agent(runner, on_end=self.worker_ended, hibernate_after=1.0)
                    return Next.events()

                async def worker_ended(self, reason: hybrid.StopReason) -> None:
                    if reason.failed:
                        log.warning("worker failed: %r", reason.error)
            ```
        """
        sleep_after = None if hibernate_after is None else _validate.seconds("hibernate_after", hibernate_after)
        await self._rt.start_contained(runner._rt, on_end, sleep_after)  # noqa: SLF001 - the run the runner holds

    # -- lifecycle hooks, for Context subclasses ------------------------------

    async def call_on_interrupt(self) -> None:
        """Run the agent's `on_interrupt` hook; the runtime calls the hook through this.

        A Context subclass overrides it to run its own machinery around the
        agent's hook (`SupervisorContext` starts the ordered shutdown of the
        children), so that agent subclasses need not call ``super()``.
        """
        await self._rt.agent.on_interrupt()

    async def call_on_stop(self, reason: StopReason) -> None:
        """Run the agent's `on_stop` hook; the runtime calls the hook through this.

        A Context subclass overrides it to run its own machinery around the
        agent's hook (`SupervisorContext` stops the children that still run).
        """
        await self._rt.agent.on_stop(reason)
