"""The agent's context: its handle on the runtime, as ``self.ctx``."""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterable, Awaitable, Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar, final

import attrs
import trio
from typing_extensions import ParamSpec, TypeVarTuple

from ._exceptions import LifecycleError
from ._next import Next

if TYPE_CHECKING:
    from ._address import Address
    from ._runtime import Runtime
    from ._stop import StopReason

P = ParamSpec("P")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def _threadsafe(method: Callable[P, T]) -> Callable[P, T]:
    """Run `method` on the agent's trio thread when called from a worker thread."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        owner: Any = args[0]
        rt: Runtime = owner._rt
        if get_ident() != rt.thread_id:
            call = functools.partial(method, *args, **kwargs)
            return trio.from_thread.run_sync(call, trio_token=rt.token)
        return method(*args, **kwargs)

    return wrapper


def _check_seconds(what: str, seconds: float, *, positive: bool) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{what} needs a number of seconds, got {seconds!r}")
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{what} needs a finite number of seconds {bound}, got {seconds!r}")
    return float(seconds)


@final
class Timer:
    """A handle on a timer from `send_after` or `send_every`.

    All timers of an agent are cancelled when the agent ends.

    Example:
        Debounce: flush one second after the last change.

        ```python
        @hybrid.on_event
        async def changed(self, event: Changed) -> None:
            if self.flush_timer is None:
                self.flush_timer = self.ctx.send_after(1.0, Flush())
            else:
                self.flush_timer.reset(1.0)
        ```
    """

    __slots__ = ("_cancelled", "_deadline", "_event", "_period", "_rt", "_running", "_scope", "_sleep")

    def __init__(self, rt: Runtime, event: object, delay: float, period: float | None) -> None:
        self._rt = rt
        self._event = event
        self._period = period
        self._deadline: float = trio.current_time() + delay
        self._scope = trio.CancelScope()
        self._sleep: trio.CancelScope | None = None
        self._running = False
        self._cancelled = False

    def _start(self) -> None:
        self._running = True
        self._scope = trio.CancelScope()  # a scope is entered once: one per run
        self._rt.start_helper(self._run, name=f"timer {self._event!r} for {self._rt.name}")

    async def _run(self) -> None:
        try:
            with self._scope:
                while True:
                    with trio.CancelScope(deadline=self._deadline) as self._sleep:
                        await trio.sleep_forever()
                    self._sleep = None
                    if not await self._rt.put_wait():
                        return  # the agent is finishing: its timers stop
                    if trio.current_time() < self._deadline:
                        continue  # reset() moved the deadline while this tick waited for room
                    self._rt.deliver(self._event)
                    if self._period is None:
                        return
                    # Fixed rate without drift; ticks missed while the mailbox
                    # was full are coalesced rather than fired in a burst.
                    now = trio.current_time()
                    self._deadline += self._period
                    if self._deadline < now:
                        self._deadline += self._period * math.ceil((now - self._deadline) / self._period)
        finally:
            self._running = False
            self._sleep = None

    @property
    def active(self) -> bool:
        """Whether the timer will still fire."""
        return self._running and not self._cancelled

    @property
    def deadline(self) -> float:
        """When the timer fires next, in `trio.current_time()` terms."""
        return self._deadline

    @_threadsafe
    def cancel(self) -> None:
        """Stop the timer; the event is not sent (again). Idempotent."""
        self._cancelled = True
        self._scope.cancel()

    @_threadsafe
    def reset(self, delay: float) -> None:
        """Fire `delay` seconds from now instead (debounce); re-arms a fired timer.

        For a periodic timer, the next tick is moved and the period continues
        from there.

        Raises:
            LifecycleError: the timer was cancelled or its agent has ended.
        """
        delay = _check_seconds("Timer.reset", delay, positive=False)
        if self._cancelled:
            raise LifecycleError("this timer was cancelled; start a new one")
        self._deadline = trio.current_time() + delay
        if self._sleep is not None:
            self._sleep.deadline = self._deadline
        elif not self._running:
            self._start()


@attrs.frozen(eq=False)
class StreamEnded:
    """The event that ends a [`Context.consume`][hybrid.Context.consume] stream.

    Attributes:
        stream: the handle that `consume` returned.
        error: None when the iterable was exhausted; the exception if iterating
            it raised, or `UnhandledMessage` if it produced an item of a type
            the agent does not handle (the stream stops there).
    """

    stream: Stream
    error: Exception | None = None


@attrs.frozen(eq=False)
class Ended:
    """The event a monitor delivers when the agent it watches has ended.

    Attributes:
        address: the address that was monitored.
        reason: how the agent ended.
    """

    address: Address[Any]
    reason: StopReason


@final
class Monitor:
    """A handle on a monitor from [`Context.monitor`][hybrid.Context.monitor]."""

    __slots__ = ("_notify", "_rt")

    def __init__(self, target: Runtime, notify: Callable[[Runtime], None]) -> None:
        self._rt = target  # the watched agent's runtime
        self._notify = notify

    @_threadsafe
    def cancel(self) -> None:
        """Stop watching: no `Ended` event follows. Idempotent."""
        self._rt.remove_monitor(self._notify)


@final
class Stream:
    """A handle on an async iterable consumed by an agent (`Context.consume`)."""

    __slots__ = ("_items", "_rt", "_scope")

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._scope = trio.CancelScope()
        self._items = 0

    @property
    def items(self) -> int:
        """How many items were delivered so far."""
        return self._items

    @_threadsafe
    def cancel(self) -> None:
        """Stop consuming; no `StreamEnded` event follows a cancellation. Safe from a worker thread."""
        self._scope.cancel()


class Context:
    """The agent's handle on its runtime: ``self.ctx`` in states and handlers.

    It exists from the moment the agent is started (`run()` or `hybrid.spawn`).
    Every method is safe to call from a sync state's worker thread: the call
    is carried out on the trio thread.

    An agent class can extend its context by setting `Agent.context_class`
    to a subclass (as `Supervisor` does with `SupervisorContext`).
    """

    __slots__ = ("_rt",)

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    @property
    def address(self) -> Address[Any]:
        """The agent's own address."""
        return self._rt.address

    @_threadsafe
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

    @_threadsafe
    def shutdown(self) -> None:
        """Finish after draining: like ``Next.done()`` (output None), when the current step ends."""
        self._rt.request_end(Next.done())

    @_threadsafe
    def stop(self) -> None:
        """End at once when the current handler or step returns, as ``Next.stop()`` does."""
        self._rt.request_end(Next.stop())

    @_threadsafe
    def send_after(self, delay: float, event: object) -> Timer:
        """Send `event` to this agent once, `delay` seconds from now.

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            ValueError: `delay` is negative, infinite or NaN.
        """
        delay = _check_seconds("send_after", delay, positive=False)
        return self._rt.start_timer(event, delay, None)

    @_threadsafe
    def send_every(self, period: float, event: object) -> Timer:
        """Send `event` to this agent every `period` seconds, first after one period.

        Ticks keep a fixed rate (no drift). A tick that finds a bounded mailbox
        full waits for room; ticks missed meanwhile are coalesced.

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            ValueError: `period` is not a finite number > 0.
        """
        period = _check_seconds("send_every", period, positive=True)
        return self._rt.start_timer(event, period, period)

    @_threadsafe
    def consume(self, source: AsyncIterable[Any]) -> Stream:
        """Deliver each item of `source` to this agent as an event.

        A helper task iterates `source` and sends each item (waiting for room
        in a bounded mailbox). When the iterable is exhausted or raises, a
        [`StreamEnded`][hybrid.StreamEnded] event follows, so the agent must
        handle `StreamEnded`.

        Raises:
            UnhandledMessage: the agent has no handler for `StreamEnded`.
            TypeError: `source` is not an async iterable.
        """
        if not hasattr(source, "__aiter__"):
            raise TypeError(f"consume needs an async iterable, got {source!r}")
        return self._rt.start_stream(source)

    @_threadsafe
    def monitor(self, address: Address[Any]) -> Monitor:
        """Be told, with an [`Ended`][hybrid.Ended] event, when the agent at `address` ends.

        The event arrives in this agent's mailbox (past any bound), once. If
        that agent has already ended, it arrives at once. The monitor watches
        the agent that `address` reaches now: if a supervisor later restarts
        it behind the same address, monitor again.

        Raises:
            UnhandledMessage: this agent has no handler for `Ended`.
        """
        return self._rt.watch(address._rt)

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

    @_threadsafe
    def start_soon(self, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts, name: str | None = None) -> None:
        """Run ``fn(*args)`` as a helper task beside the agent.

        The helper is cancelled when the agent ends. An exception it raises
        leaves the nursery the agent runs in, as a trio task's would (which
        cancels the agent).
        """
        self._rt.start_helper(functools.partial(fn, *args), name=name or fn)
