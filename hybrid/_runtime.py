"""The runtime of one agent: its mailbox, its run loop, its ending.

Hot paths (``Address.send``, the message loop, requests, transitions) avoid
per-message allocation beyond the message itself: the mailbox is a deque
parked on with `trio.lowlevel.wait_task_rescheduled`, the loop handles the
queued messages of a turn without a scheduler round trip each (yielding at
least every `FAIRNESS` messages or transitions), and dispatch is one dict
lookup by exact type.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from contextvars import ContextVar
from threading import get_ident
from typing import TYPE_CHECKING, Any, Final, cast, final

import outcome
import trio
from trio.lowlevel import (
    Abort,
    Task,
    checkpoint,
    current_task,
    current_trio_token,
    reschedule,
    wait_task_rescheduled,
)

from ._address import Address, AgentStatistics, RequestCall
from ._context import Ended, Monitor, Stream, StreamEnded, Timer
from ._exceptions import AgentStopped, InvalidTransition, LifecycleError, MailboxFull
from ._handlers import EVENT, lookup
from ._next import (
    _INTERRUPT,
    ASYNC,
    DONE,
    EVENTS,
    FAIL,
    INTERRUPT,
    PERFORM,
    STOP,
    SYNC,
    Next,
)
from ._stop import (
    CANCELLED_REASON,
    DONE_REASON,
    INTERRUPTED_REASON,
    STOPPED_REASON,
    StopKind,
    StopReason,
)

if TYPE_CHECKING:
    from ._agent import Agent

logger = logging.getLogger("hybrid.agent")

FAIRNESS: Final = 64
"""The loop yields to other tasks at least every this many messages or transitions."""

current_runtime: ContextVar[Runtime | None] = ContextVar("hybrid_current_agent", default=None)

STARTING, STATE, EVENTS_PHASE, HOOK, FINISHING, ENDED = range(6)
PHASE_NAMES: Final = ("starting", "state", "events", "hook", "finishing", "ended")
UNBOUNDED: Final = sys.maxsize
CLOSED: Final = -1


@final
class _InterruptMark:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<interrupt>"


INTERRUPT_MARK: Final = _InterruptMark()


@final
class Response:
    """An answer on its way to an ``on_response`` handler."""

    __slots__ = ("handler", "request", "result")

    def __init__(self, handler: Callable[..., Awaitable[Any]], request: object, result: outcome.Outcome[Any]) -> None:
        self.handler = handler
        self.request = request
        self.result = result


@final
class Runtime:
    """Everything the runtime keeps about one running agent."""

    __slots__ = (
        "address",
        "agent",
        "capacity",
        "ctx",
        "draining",
        "dropped",
        "ended",
        "error",
        "escaped",
        "events",
        "handled",
        "helpers",
        "host",
        "interrupt_event",
        "interrupt_handled",
        "interrupts",
        "limit",
        "monitors",
        "name",
        "next",
        "observers",
        "output",
        "parked",
        "phase",
        "queue",
        "reason",
        "requests",
        "responses",
        "room_waiters",
        "scope",
        "state",
        "steps",
        "task",
        "thread_id",
        "token",
        "transitions",
    )

    def __init__(
        self,
        agent: Agent[Any],
        capacity: int | None,
        host: trio.Nursery | None,
        address: Address[Any] | None = None,
    ) -> None:
        if "ctx" in agent.__dict__:
            raise LifecycleError(
                f"{type(agent).__qualname__} instance was already started; an agent runs once: create a new instance"
            )
        cls = type(agent)
        self.agent = agent
        self.name = cls.__qualname__
        self.events = cls._hybrid_events
        self.requests = cls._hybrid_requests
        self.responses = cls._hybrid_responses
        self.queue: deque[Any] = deque()
        self.capacity = capacity
        self.limit = UNBOUNDED if capacity is None else capacity
        self.parked: Task | None = None
        self.task: Task | None = None
        self.thread_id = get_ident()
        self.token = current_trio_token()
        self.next: Next[Any] | None = None
        self.phase = STARTING
        self.interrupts = 0
        self.interrupt_handled = False
        self.interrupt_event: trio.Event | None = None  # created by ctx.wait_interrupted()
        self.scope: trio.CancelScope | None = None
        self.host = host
        self.helpers: set[trio.CancelScope] | None = None
        self.room_waiters: deque[Task] | None = None  # created when a sender first waits
        self.handled = 0
        self.draining = False
        self.dropped = 0
        self.transitions = 0
        self.state: Next[Any] | None = None
        self.reason: StopReason | None = None
        self.output: Any = None
        self.error: BaseException | None = None
        self.escaped: BaseException | None = None
        self.ended: trio.Event | None = None
        self.monitors: list[Callable[[Runtime], None]] | None = None
        # Test and tracing hooks (hybrid.testing.Recorder): None costs one check
        # per transition and per message.
        self.observers: list[Callable[[str, object], None]] | None = agent.__dict__.pop("_hybrid_observers", None)
        # Messages and transitions since the last yield, across states and
        # actor mode: the loop yields at least every FAIRNESS of them.
        self.steps = 0
        if address is None:
            address = Address(self)
        else:
            old = address._rt
            if old.reason is None:
                raise LifecycleError(f"{address!r} still reaches a running agent; it can be reused once that ended")
            address._rt = self
        self.address = address
        self.ctx = cls.context_class(self)
        agent.ctx = self.ctx

    # -- the mailbox -------------------------------------------------------

    def deliver(self, message: object) -> None:
        """Queue a message on the trio thread, past any bound, and wake the loop."""
        self.queue.append(message)
        task = self.parked
        if task is not None:
            self.parked = None
            reschedule(task)

    def wake(self) -> None:
        task = self.parked
        if task is not None:
            self.parked = None
            reschedule(task)

    def event_handler(self, message_type: type) -> Callable[..., Awaitable[Any]]:
        handler = self.events.get(message_type)
        if handler is None:
            handler = lookup(self.events, message_type, EVENT, type(self.agent))
        return handler

    def check_room(self, message: object) -> None:
        limit = self.limit
        if len(self.queue) >= limit:
            if limit == CLOSED:
                raise AgentStopped(f"{self.name} has ended; {message!r} was not sent")
            raise MailboxFull(
                f"{self.name}'s mailbox is full ({self.capacity} messages); "
                f"{message!r} was not sent (await send_wait() to wait for room)"
            )

    def send_slow(self, event: object) -> None:
        """`Address.send` when the fast path does not apply: checks, other threads."""
        if get_ident() != self.thread_id:
            trio.from_thread.run_sync(self.send_slow, event, trio_token=self.token)
            return
        self.event_handler(type(event))
        self.check_room(event)
        self.deliver(event)

    async def put_wait(self) -> bool:
        """Wait until the mailbox has room; False if it is (or gets) closed."""
        while True:
            limit = self.limit
            if limit == CLOSED:
                return False
            if len(self.queue) < limit:
                return True
            await self._wait_for_room()

    async def _wait_for_room(self) -> None:
        task = current_task()
        waiters = self.room_waiters
        if waiters is None:
            waiters = self.room_waiters = deque()
        waiters.append(task)

        def abort(raise_cancel: Any) -> Abort:
            with contextlib.suppress(ValueError):  # already woken
                waiters.remove(task)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def deliver_response(self, handler: Any, request: object, result: outcome.Outcome[Any]) -> None:
        # Accepted while the agent drains its mailbox (it still handles what is queued).
        if self.limit == CLOSED and not self.draining:
            if isinstance(result, outcome.Error):
                logger.warning(
                    "%s has ended; the failed answer to %r was dropped", self.name, request, exc_info=result.error
                )
            else:
                logger.debug("%s has ended; dropped the answer to %r", self.name, request)
            return
        self.deliver(Response(handler, request, result))

    def _abort_park(self, raise_cancel: Any) -> Abort:
        self.parked = None
        return Abort.SUCCEEDED

    def close(self) -> None:
        """Close the mailbox: senders get `AgentStopped` from now on; waiters are woken."""
        self.limit = CLOSED
        waiters = self.room_waiters
        while waiters:
            reschedule(waiters.popleft())

    def unmark(self) -> None:
        """The interrupt marker left the mailbox: give its room back."""
        if self.capacity is not None and self.limit != CLOSED:
            self.limit -= 1
            waiters = self.room_waiters
            if waiters and len(self.queue) < self.limit:
                reschedule(waiters.popleft())

    def discard_queue(self) -> None:
        """Close and empty the mailbox; queued requests fail with `AgentStopped`."""
        self.close()
        queue = self.queue
        while queue:
            message = queue.popleft()
            if type(message) is RequestCall:
                message._fail_stopped()
                self.dropped += 1
            elif message is not INTERRUPT_MARK:
                self.dropped += 1

    # -- control from outside ----------------------------------------------

    def interrupt(self) -> None:
        if get_ident() != self.thread_id:
            trio.from_thread.run_sync(self.interrupt, trio_token=self.token)
            return
        if self.phase == ENDED:
            return
        self.interrupts += 1
        if self.interrupt_event is not None:
            self.interrupt_event.set()
        if self.interrupts == 1:
            if self.capacity is not None and self.limit != CLOSED:
                self.limit += 1  # the marker takes no room from senders
            self.deliver(INTERRUPT_MARK)
        elif self.scope is not None:
            self.scope.cancel()

    def schedule(self, nxt: Next[Any]) -> None:
        if type(nxt) is not Next:
            raise InvalidTransition(f"do_next needs a Next, got {nxt!r}")
        phase = self.phase
        if phase not in (EVENTS_PHASE, HOOK):
            if phase == STATE:
                raise LifecycleError(
                    "do_next is for message handlers and on_interrupt; a state returns its next transition"
                )
            if phase == STARTING:
                raise LifecycleError("do_next is for message handlers; begin() returns the first transition")
            raise LifecycleError(f"{self.name} is finishing; it takes no new transitions")
        if self.next is not None:
            raise LifecycleError(f"a transition is already scheduled: {self.next!r}")
        self.next = nxt
        self.wake()

    def request_end(self, nxt: Next[Any]) -> None:
        if self.phase == ENDED:
            return
        current = self.next
        # Ending requests override a scheduled transition; stop overrides
        # shutdown; nothing overrides a failure (it is never lost).
        if current is None or current._kind not in (STOP, FAIL):
            self.next = nxt
        self.wake()

    # -- helpers, timers, streams ------------------------------------------

    def start_helper(self, fn: Callable[[], Awaitable[object]], name: object) -> None:
        if self.phase == ENDED:
            raise LifecycleError(f"{self.name} has ended; it cannot start helper tasks")
        assert self.host is not None
        scope = trio.CancelScope()
        helpers = self.helpers
        if helpers is None:
            helpers = self.helpers = set()
        helpers.add(scope)

        async def helper() -> None:
            try:
                with scope:
                    await fn()
            finally:
                helpers.discard(scope)

        self.host.start_soon(helper, name=name)

    def start_timer(self, event: object, delay: float, period: float | None) -> Timer:
        self.event_handler(type(event))
        timer = Timer(self, event, delay, period)
        timer._start()
        return timer

    def start_stream(self, source: AsyncIterable[Any]) -> Stream:
        self.event_handler(StreamEnded)
        stream = Stream(self)
        self.start_helper(lambda: self._consume(source, stream), name=f"consume {source!r} for {self.name}")
        return stream

    async def _consume(self, source: AsyncIterable[Any], stream: Stream) -> None:
        error: Exception | None = None
        with stream._scope:
            try:
                async for item in source:
                    self.event_handler(type(cast("object", item)))
                    if not await self.put_wait():
                        return  # the agent is finishing
                    self.deliver(item)
                    stream._items += 1
            except Exception as exc:
                error = exc
            if await self.put_wait():
                self.deliver(StreamEnded(stream, error))
            elif error is not None:  # pragma: no cover - the agent ended meanwhile
                logger.error("%s ended; the error of a consumed stream was dropped", self.name, exc_info=error)

    def cancel_helpers(self) -> None:
        if self.helpers:
            for scope in self.helpers:
                scope.cancel()

    # -- the run loop --------------------------------------------------------

    async def main(self, spawned: bool = False) -> None:
        """Run the agent to its end, then `on_stop`.

        The agent's own failure is recorded (``self.error``), and raised only
        for a spawned agent (its task's error leaves the nursery, as a trio
        task's would); cancellation and other BaseExceptions propagate
        unchanged. One coroutine frame less per spawned agent than a wrapper.
        """
        self.task = current_task()
        token = current_runtime.set(self)
        agent = self.agent
        try:
            try:
                with trio.CancelScope() as scope:
                    self.scope = scope
                    if self.interrupts > 1:
                        scope.cancel()
                    await self._body()
                if scope.cancelled_caught:
                    await self._forced_interrupt()
            except Exception as error:
                self.discard_queue()
                self.error = error
                self.reason = StopReason(StopKind.FAILED, error)
                self.output = None
            except BaseException as exc:
                self.discard_queue()
                self.cancel_helpers()
                self.output = None
                cut_short = CANCELLED_REASON if isinstance(exc, trio.Cancelled) else StopReason(StopKind.FAILED, exc)
                self.escaped = exc
                try:
                    with trio.CancelScope(shield=True):
                        await agent.on_stop(cut_short)
                except Exception:
                    logger.exception("%s.on_stop raised while the agent was being cancelled", self.name)
                self._ended(cut_short)
                raise
            self.discard_queue()
            final = self.reason
            assert final is not None
            reason: StopReason = final
            # on_stop runs before helper tasks are cancelled, so that it can end
            # them (or a supervisor's children) gracefully; timers that fire
            # meanwhile find the mailbox closed and stop.
            try:
                await agent.on_stop(reason)
            except Exception as error:
                if self.error is not None and error.__context__ is None:
                    error.__context__ = self.error  # the failure it replaces stays visible
                self.error = error
                self.output = None
                reason = StopReason(StopKind.FAILED, error)
            except BaseException as exc:
                self.cancel_helpers()
                self.escaped = exc
                self._ended(CANCELLED_REASON if isinstance(exc, trio.Cancelled) else StopReason(StopKind.FAILED, exc))
                raise
            self.cancel_helpers()
            self._ended(reason)
        finally:
            current_runtime.reset(token)
        if spawned and self.error is not None:
            raise self.error

    def discard(self) -> None:
        """End an agent that never ran: its address then says it is gone."""
        if self.phase != STARTING or self.task is not None:
            raise LifecycleError(f"{self.name} has started; interrupt it instead")
        self.discard_queue()
        self._ended(STOPPED_REASON)

    def observe(self, kind: str, detail: object) -> None:
        assert self.observers is not None
        for observer in self.observers:
            observer(kind, detail)

    def _ended(self, reason: StopReason) -> None:
        self.reason = reason
        self.phase = ENDED
        if self.observers is not None:
            self.observe("stopped", reason)
        self.parked = None
        if self.ended is not None:
            self.ended.set()
        monitors = self.monitors
        if monitors:
            self.monitors = None
            for notify in monitors:
                notify(self)

    def add_monitor(self, notify: Callable[[Runtime], None]) -> None:
        """Call ``notify(self)`` when the agent ends (at once if it has ended)."""
        if self.reason is not None:
            notify(self)
            return
        if self.monitors is None:
            self.monitors = []
        self.monitors.append(notify)

    def watch(self, target: Runtime) -> Monitor:
        """Deliver `Ended` to this agent when `target` ends."""
        self.event_handler(Ended)
        address = target.address

        def notify(ended: Runtime) -> None:
            if self.limit != CLOSED and ended.reason is not None:
                self.deliver(Ended(address, ended.reason))

        target.add_monitor(notify)
        return Monitor(target, notify)

    def remove_monitor(self, notify: Callable[[Runtime], None]) -> None:
        if self.monitors is not None:
            with contextlib.suppress(ValueError):
                self.monitors.remove(notify)

    async def _forced_interrupt(self) -> None:
        """The scope was cancelled by a second interrupt: end as interrupted."""
        self.discard_queue()
        self.next = None
        if not self.interrupt_handled:
            self.interrupt_handled = True
            self.phase = HOOK
            await self.agent.on_interrupt()
            ignored = self.take_next()
            if ignored is not None:
                logger.debug("%s: %r from on_interrupt ignored after a forced interrupt", self.name, ignored)
        self.output = None
        self.reason = INTERRUPTED_REASON

    async def _body(self) -> None:
        agent = self.agent
        nxt: Next[Any] = agent.begin()
        if type(nxt) is not Next:
            raise InvalidTransition(f"{self.name}.begin() must return a Next, got {nxt!r}")
        if self.interrupts and nxt._kind <= PERFORM:
            nxt = _INTERRUPT  # interrupted before its first state: never enters it
        steps = self.steps
        while True:
            if self.observers is not None:
                self.observe("transition", nxt)
            kind = nxt._kind
            if kind <= PERFORM:
                self.transitions += 1
                steps += 1
                if steps >= FAIRNESS:
                    steps = 0
                    await checkpoint()
                self.phase = STATE
                self.state = nxt
                if nxt._mods is None:
                    if kind == ASYNC:
                        nxt = await nxt._fn(*nxt._args)
                    elif kind == SYNC:
                        nxt = await trio.to_thread.run_sync(nxt._fn, *nxt._args)
                    else:
                        nxt = await nxt._fn.perform(agent)
                else:
                    nxt = await self._perform_modified(nxt)
                if type(nxt) is not Next:
                    raise InvalidTransition(f"state {self.state!r} of {self.name} must return a Next, got {nxt!r}")
                if self.next is not None or (self.interrupts and not self.interrupt_handled):
                    nxt = self._after_step(nxt)
            elif kind == EVENTS:
                self.phase = EVENTS_PHASE
                self.steps = steps
                scheduled = await self._loop(False)
                assert scheduled is not None  # only a draining loop ends without a transition
                nxt = scheduled
                steps = self.steps
            elif kind == DONE:
                self.output = nxt._value
                self.reason = DONE_REASON
                self.steps = steps
                await self._drain()
                return
            elif kind == STOP:
                self.output = None
                self.reason = STOPPED_REASON
                return
            elif kind == FAIL:
                raise nxt._value
            else:  # INTERRUPT
                assert kind == INTERRUPT
                if INTERRUPT_MARK in self.queue:
                    self.queue.remove(INTERRUPT_MARK)
                    self.unmark()
                scheduled = None
                if not self.interrupt_handled:  # the hook runs once per agent
                    self.interrupt_handled = True
                    self.phase = HOOK
                    await agent.on_interrupt()
                    scheduled = self.take_next()
                if scheduled is None:
                    self.output = None
                    self.reason = INTERRUPTED_REASON
                    self.steps = steps
                    await self._drain()
                    return
                nxt = scheduled

    def take_next(self) -> Next[Any] | None:
        nxt = self.next
        self.next = None
        return nxt

    def _after_step(self, nxt: Next[Any]) -> Next[Any]:
        pending = self.next
        if pending is not None:  # ctx.shutdown() / ctx.stop() during the step
            self.next = None
            return nxt if nxt._kind == FAIL else pending
        # Interrupted during the step: end instead of taking the next transition
        # (on_interrupt runs), unless the step failed: a failure is never lost.
        return nxt if nxt._kind == FAIL else _INTERRUPT

    async def _drain(self) -> bool:
        """Finish: close the mailbox, handle what is queued. False if stopped meanwhile."""
        self.phase = FINISHING
        self.close()
        if self.queue:
            self.draining = True
            try:
                pending = await self._loop(True)
            finally:
                self.draining = False
            if pending is not None:  # ctx.stop() while draining
                self.output = None
                self.reason = STOPPED_REASON
                return False
        return True

    async def _loop(self, draining: bool) -> Next[Any] | None:
        """Handle mailbox messages until a transition is scheduled (or, draining, the queue is empty)."""
        queue = self.queue
        popleft = queue.popleft
        agent = self.agent
        table = self.events
        count = self.steps
        while True:
            nxt = self.next
            if nxt is not None:
                self.next = None
                if draining and nxt._kind != STOP:
                    continue  # ctx.shutdown() while finishing: it is finishing already
                self.steps = count
                return nxt
            if queue:
                message: object = popleft()
                waiters = self.room_waiters
                if waiters:
                    reschedule(waiters.popleft())
                self.handled += 1
                if self.observers is not None:
                    self.observe("message", message)
                message_type = type(message)
                handler = table.get(message_type)
                if handler is not None:
                    try:
                        await handler(agent, message)
                    except Exception as error:
                        await agent.on_error(error)
                elif message_type is RequestCall:
                    call = cast("RequestCall[Any]", message)
                    try:
                        value = await call._handler(agent, call._request)
                    except Exception as error:
                        call._complete(outcome.Error(error))
                    except BaseException:
                        call._fail_stopped()
                        raise
                    else:
                        call._complete(outcome.Value(value))
                elif message_type is Response:
                    response = cast("Response", message)
                    try:
                        await response.handler(agent, response.request, response.result)
                    except Exception as error:
                        await agent.on_error(error)
                else:  # INTERRUPT_MARK
                    self.unmark()
                    if not draining and not self.interrupt_handled:
                        self.next = _INTERRUPT
                count += 1
                if count >= FAIRNESS:
                    count = 0
                    await checkpoint()
            elif draining:
                self.steps = count
                return None
            else:
                count = 0
                self.parked = self.task
                await wait_task_rescheduled(self._abort_park)

    async def _perform_modified(self, nxt: Next[Any]) -> Next[Any]:
        mods = nxt._mods
        assert mods is not None
        policy = mods.retry
        tries = 0
        while True:
            tries += 1
            try:
                if mods.timeout is None:
                    return await self._perform_plain(nxt)
                with trio.fail_after(mods.timeout):
                    return await self._perform_plain(nxt)
            except Exception as error:
                if policy is not None and tries < policy.attempts and policy.retries(error) and not self.interrupts:
                    delay = policy.delay(tries)
                    logger.info("%s: state %r failed (%r); retry %d in %.3gs", self.name, nxt, error, tries, delay)
                    with trio.move_on_after(delay):
                        await self.wait_interrupted()
                    if not self.interrupts:
                        continue
                    # Interrupted while waiting: no more tries; the error goes on.
                if mods.fallback is None:
                    raise
                chosen: Next[Any] = mods.fallback(error)
                if type(chosen) is not Next:
                    raise InvalidTransition(f"the fallback of {nxt!r} must return a Next, got {chosen!r}") from error
                return chosen

    async def _perform_plain(self, nxt: Next[Any]) -> Next[Any]:
        kind = nxt._kind
        result: Next[Any]
        if kind == ASYNC:
            result = await nxt._fn(*nxt._args)
        elif kind == SYNC:
            result = await trio.to_thread.run_sync(nxt._fn, *nxt._args)
            # A thread cannot be cancelled: it returns normally after polling
            # hybrid.interrupted(); a deadline that passed meanwhile still counts.
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            result = await nxt._fn.perform(self.agent)
        return result

    # -- results -------------------------------------------------------------

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.output

    async def wait_interrupted(self) -> None:
        if self.interrupts or self.interrupt_handled:
            await checkpoint()
            return
        if self.interrupt_event is None:
            self.interrupt_event = trio.Event()
        await self.interrupt_event.wait()

    async def join(self) -> Any:
        if self.phase != ENDED:
            if self.ended is None:
                self.ended = trio.Event()
            await self.ended.wait()
        else:
            await checkpoint()
        return self.result()

    @property
    def phase_name(self) -> str:
        return PHASE_NAMES[self.phase]

    def statistics(self) -> AgentStatistics:
        return AgentStatistics(
            name=self.name,
            phase=self.phase_name,
            state=None if self.state is None else repr(self.state),
            mailbox_depth=sum(1 for m in self.queue if m is not INTERRUPT_MARK),
            mailbox_capacity=self.capacity,
            senders_waiting=len(self.room_waiters or ()),
            messages_handled=self.handled,
            messages_dropped=self.dropped,
            transitions=self.transitions,
            reason=self.reason,
        )
