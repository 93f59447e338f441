"""Addresses: how other code reaches an agent."""

from __future__ import annotations

from collections.abc import Callable, Generator
from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, final

import attrs
import outcome
import trio
from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled
from typing_extensions import TypeVar

from ._exceptions import AgentStopped, LifecycleError
from ._handlers import REQUEST, RESPONSE, lookup
from ._request import Request
from ._stop import StopReason

if TYPE_CHECKING:
    from ._agent import Agent
    from ._context import Context
    from ._runtime import Runtime

R = TypeVar("R")
T = TypeVar("T")
A_co = TypeVar("A_co", bound="Agent[Any]", covariant=True)


@attrs.frozen
class AgentStatistics:
    """A snapshot of one agent, from [`Address.statistics()`][hybrid.Address.statistics].

    Attributes:
        name: the agent's class name.
        phase: ``"starting"``, ``"state"``, ``"events"``, ``"hook"``,
            ``"finishing"`` or ``"ended"``.
        state: the current (or last) state transition, as text, or None.
        mailbox_depth: messages queued now.
        mailbox_capacity: the bound of the mailbox, or None if unbounded.
        senders_waiting: tasks waiting for room in a full bounded mailbox.
        messages_handled: messages taken from the mailbox so far.
        messages_dropped: messages discarded because the agent stopped or failed
            (their senders were told: requests failed with `AgentStopped`).
        transitions: states entered so far.
        reason: how the agent ended, or None while it runs.
    """

    name: str
    phase: str
    state: str | None
    mailbox_depth: int
    mailbox_capacity: int | None
    senders_waiting: int
    messages_handled: int
    messages_dropped: int
    transitions: int
    reason: StopReason | None


_NEW, _QUEUED, _USED = 0, 1, 2


@final
class RequestCall(Generic[R]):
    """A request on its way: await it for the answer, or forward the answer.

    Returned by [`Address.request`][hybrid.Address.request]; use it exactly once:

    - ``await call`` sends the request and waits for the answer; the handler's
      exception is re-raised here, and `AgentStopped` is raised if the agent
      ends before answering. Cancel the wait with trio:
      ``with trio.fail_after(1): await call``. An answer that arrives after the
      caller gave up is dropped.
    - ``call.forward_to(self.ctx)`` sends it now; the answer arrives later at
      the caller's `@hybrid.on_response` handler for this request type.
    """

    __slots__ = ("_handler", "_reply_to", "_request", "_response_handler", "_rt", "_state", "_task")

    def __init__(self, rt: Runtime, request: Request[R], handler: Callable[..., Any]) -> None:
        self._rt = rt
        self._request = request
        self._handler = handler
        self._state = _NEW
        self._task: trio.lowlevel.Task | None = None
        self._reply_to: Runtime | None = None
        self._response_handler: Callable[..., Any] | None = None

    def __await__(self) -> Generator[Any, Any, R]:
        if self._state != _NEW:
            raise LifecycleError("a request can be awaited or forwarded only once")
        self._state = _QUEUED
        rt = self._rt
        # A caller that is already cancelled sends nothing.
        yield from trio.lowlevel.checkpoint_if_cancelled().__await__()  # noqa: ASYNC105
        # A closed or full bounded mailbox: wait for room (or learn it is closed).
        if len(rt.queue) >= rt.limit and not (yield from rt.put_wait().__await__()):
            raise AgentStopped(f"{rt.name} has ended; request {self._request!r} was not sent")
        self._task = current_task()
        rt.deliver(self)
        result: R = yield from wait_task_rescheduled(self._abandon).__await__()  # noqa: ASYNC105
        return result

    def _abandon(self, raise_cancel: Any) -> Abort:
        # The caller gave up (timeout, cancellation): the answer will be dropped.
        self._task = None
        return Abort.SUCCEEDED

    def forward_to(self, ctx: Context) -> None:
        """Send the request now; deliver the answer to `ctx`'s agent later.

        The answer arrives as a message, in order with the others, at the
        ``@hybrid.on_response`` handler of `ctx`'s agent for this request type,
        as an `outcome.Outcome`: `outcome.Error` if the server raised or ended
        before answering.

        Raises:
            UnhandledMessage: `ctx`'s agent has no `on_response` handler for
                this request type.
            AgentStopped: the server has ended.
            MailboxFull: the server's bounded mailbox is full.
            LifecycleError: the request was already awaited or forwarded.
        """
        client = ctx._rt
        if get_ident() != client.thread_id:
            trio.from_thread.run_sync(self.forward_to, ctx, trio_token=client.token)
            return
        if self._state != _NEW:
            raise LifecycleError("a request can be awaited or forwarded only once")
        self._response_handler = lookup(client.responses, type(self._request), RESPONSE, type(client.agent))
        self._rt.check_room(self._request)
        self._state = _QUEUED
        self._reply_to = client
        self._rt.deliver(self)

    def _complete(self, result: outcome.Outcome[Any]) -> None:
        self._state = _USED
        task = self._task
        if task is not None:
            self._task = None
            reschedule(task, result)
        elif self._reply_to is not None:
            self._reply_to.deliver_response(self._response_handler, self._request, result)

    def _fail_stopped(self) -> None:
        self._complete(outcome.Error(AgentStopped(f"{self._rt.name} ended before answering {self._request!r}")))


@final
class Address(Generic[A_co]):
    """How to reach an agent: send events, make requests, interrupt, join.

    Returned by [`hybrid.spawn`][hybrid.spawn] and available as
    ``self.ctx.address`` inside the agent. Hashable, comparable and cheap to
    copy: copies are the same address. An address reused for a fresh agent
    ([`AgentRunner(agent, address=...)`][hybrid.AgentRunner], as supervisors
    do when they restart a child) reaches the new agent from then on.

    Every method that queues a message checks its type at once, in the
    sender: a message the agent has no handler for raises `UnhandledMessage`
    (a `TypeError`); a message to an agent that has ended raises
    `AgentStopped`. Nothing is dropped silently.

    Example:
        ```python
        async with trio.open_nursery() as nursery:
            crawler = hybrid.spawn(nursery, Crawler())
            crawler.send(AddUrl("a"))
            assert await crawler.request(GetCount()) == 1
            crawler.interrupt()
            await crawler.join()
        ```
    """

    __slots__ = ("_rt",)

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def send(self, event: object) -> None:
        """Queue `event` for the agent's `@hybrid.on_event` handler (tell). Never blocks.

        Safe to call from a worker thread (a sync state): the event is queued
        on the trio thread, and errors are raised in the calling thread.

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            AgentStopped: the agent has ended or is finishing.
            MailboxFull: the agent's bounded mailbox is full; see `send_wait`.
        """
        rt = self._rt
        q = rt.queue
        if type(event) in rt.events and len(q) < rt.limit and get_ident() == rt.thread_id:
            q.append(event)
            task = rt.parked
            if task is not None:
                rt.parked = None
                reschedule(task)
        else:
            rt.send_slow(event)

    async def send_wait(self, event: object) -> None:
        """Queue `event`, waiting for room if the agent's bounded mailbox is full.

        This is backpressure: a producer that outruns a bounded agent waits
        here. With an unbounded mailbox it never waits (but still checkpoints).

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            AgentStopped: the agent has ended or is finishing (also when it
                ends while this call waits).
        """
        rt = self._rt
        rt.event_handler(type(event))
        await trio.lowlevel.checkpoint_if_cancelled()
        if not await rt.put_wait():
            raise AgentStopped(f"{rt.name} has ended; {event!r} was not sent")
        rt.deliver(event)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def request(self, request: Request[R]) -> RequestCall[R]:
        """Ask: ``await address.request(req)`` returns the answer (of type `R`).

        The type check happens here, at call time; the request is queued when
        the call is awaited (waiting for room in a full bounded mailbox) or
        forwarded with ``.forward_to(self.ctx)``.

        Raises:
            UnhandledMessage: the agent has no `@hybrid.on_request` handler for
                ``type(request)``.
        """
        rt = self._rt
        handler = rt.requests.get(type(request))
        if handler is None:
            handler = lookup(rt.requests, type(request), REQUEST, type(rt.agent))
        return RequestCall(rt, request, handler)

    def interrupt(self) -> None:
        """Ask the agent to end gracefully.

        In actor mode this is a message, handled in order after those already
        queued: it calls `on_interrupt()`, then the agent finishes. In a state,
        the running step finishes and the agent ends instead of taking its
        next transition. A second `interrupt()` cancels the running step (or
        handler) at its next checkpoint; the agent still ends as interrupted.
        Interrupting an agent that has ended does nothing. Never blocks; safe
        from a worker thread.
        """
        self._rt.interrupt()

    async def join(self: Address[Agent[T]]) -> T:
        """Wait until the agent ends and return its output.

        Returns None for an agent that ended by interrupt, stop or
        cancellation. Re-raises the error of an agent that failed.
        """
        result: T = await self._rt.join()
        return result

    @property
    def is_alive(self) -> bool:
        """Whether the agent has not ended yet (it may be finishing)."""
        return self._rt.reason is None

    def statistics(self) -> AgentStatistics:
        """A snapshot of the agent: phase, mailbox depth, counters."""
        return self._rt.statistics()

    # Equality and hashing are by identity: one Address object per agent (and
    # per restartable child, across its restarts); copies return the same object.

    def __copy__(self) -> Address[A_co]:
        return self

    def __deepcopy__(self, memo: object) -> Address[A_co]:
        return self

    def __repr__(self) -> str:
        return f"<Address of {self._rt.name} ({self._rt.phase_name})>"
