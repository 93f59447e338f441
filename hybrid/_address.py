"""Addresses: how other code reaches an agent."""

from __future__ import annotations

from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, cast, final

import attrs
import trio
from trio.lowlevel import reschedule
from typing_extensions import TypeVar

from ._exceptions import AgentStopped, LifecycleError, UnhandledMessage
from ._handlers import EVENT, REQUEST, lookup
from ._mailbox import CLOSED, Mailbox, RequestCall, make_call
from ._request import Request
from ._runtime import ENDED, HIBERNATING, Runtime
from ._stop import StopReason
from ._thread import at_home, check_awaited_at_home

if TYPE_CHECKING:
    from ._agent import Agent

R = TypeVar("R")
T = TypeVar("T")
A_co = TypeVar("A_co", bound="Agent[Any]", covariant=True)


@attrs.frozen
class AgentStatistics:
    """A snapshot of one agent, from [`Address.statistics()`][hybrid.Address.statistics].

    Attributes:
        name: the agent's name (`Address.name`).
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
        hibernating: idle in actor mode without a trio task (see
            `Agent.hibernate_after`); its phase is ``"events"``.
        idle: waiting for a message in actor mode (parked or hibernating):
            the next message is handled at once. False while it handles a
            message, runs a state or has ended.
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
    hibernating: bool = False
    idle: bool = False


@final
class Address(Generic[A_co]):
    """How to reach an agent: send events, make requests, interrupt, join.

    Returned by [`hybrid.spawn`][hybrid.spawn] and available as
    ``self.ctx.address`` inside the agent. Hashable, comparable and cheap to
    copy: copies are the same address. An address reused for a fresh agent
    ([`AgentRunner(agent, address=...)`][hybrid.AgentRunner], as supervisors
    do when they restart a child) reaches the new agent from then on, with
    the same name and the same mailbox.

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

    __slots__ = ("_mailbox", "_rt")

    _mailbox: Mailbox  # the queue: the same object across restarts (a ForeignMailbox for a remote agent)
    # The run the address reaches now; replaced when a successor takes over. For a remote
    # agent, a hybrid._foreign.ForeignRun: it has every field and method read here, by
    # monitors and by routers, and is never replaced.
    _rt: Runtime

    def __init__(self) -> None:
        raise TypeError("Address has no public constructor: hybrid.spawn and AgentRunner make addresses")

    @classmethod
    def _make(cls, mailbox: Mailbox, rt: Runtime) -> Address[Any]:
        address: Address[Any] = object.__new__(cls)
        address._mailbox = mailbox
        address._rt = rt
        return address

    @property
    def name(self) -> str:
        """The agent's name: unique among the agents alive in its trio run.

        ``"{ClassName}-{n}"`` unless given to `spawn`; a supervisor's child is
        ``"{supervisor name}/{child name}"`` and keeps its name across restarts.
        """
        return self._mailbox.name

    @property
    def agent_type(self) -> type[Agent[Any]]:
        """The class of the agent behind this address (for a restarted child: of its current run).

        What instruments label their figures with: a class, never a name,
        keeps the number of series bounded.
        """
        return cast("type[Agent[Any]]", self._mailbox.agent_type)

    def send(self, event: object) -> None:
        """Queue `event` for the agent's `@hybrid.on_event` handler (tell). Never blocks.

        Safe to call from a worker thread (a sync state): the event is queued
        on the trio thread, and errors are raised in the calling thread.

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            AgentStopped: the agent has ended or is finishing.
            MailboxFull: the agent's bounded mailbox is full; see `send_wait`.
        """
        mailbox = self._mailbox
        queue = mailbox.queue
        if (
            queue is not None
            and type(event) in mailbox.fast
            and len(queue) < mailbox.limit
            and get_ident() == mailbox.thread_id
        ):
            queue.append(event)
            task = mailbox.parked
            if task is not None:
                mailbox.parked = None
                reschedule(task)
        else:
            mailbox.send(event)

    async def send_wait(self, event: object) -> None:
        """Queue `event`, waiting for room if the agent's bounded mailbox is full.

        This is backpressure: a producer that outruns a bounded agent waits
        here. With an unbounded mailbox it never waits (but still checkpoints).

        Raises:
            UnhandledMessage: the agent has no handler for ``type(event)``.
            AgentStopped: the agent has ended or is finishing (also when it
                ends while this call waits).
            LifecycleError: awaited outside the agent's trio run.
        """
        mailbox = self._mailbox
        check_awaited_at_home(mailbox.home, "send_wait")
        mailbox.event_handler(type(event))
        if not mailbox.has_room() and trio.lowlevel.current_task() is mailbox.reader:
            raise LifecycleError(
                f"{mailbox.name} awaited send_wait to its own full mailbox: it would wait forever "
                "(only its own loop makes room); use send(), or raise the bound"
            )
        await trio.lowlevel.checkpoint_if_cancelled()
        if not await mailbox.put_wait():
            raise AgentStopped(f"{mailbox.name} has ended; {event!r} was not sent")
        try:
            mailbox.put(event)
        except BaseException:  # refused by the agent's message_priority: the room goes to the next sender
            mailbox.wake_room_waiters()
            raise
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
        mailbox = self._mailbox
        handler = mailbox.requests.get(type(request))
        if handler is None:
            handler = lookup(mailbox.requests, type(request), REQUEST, mailbox.agent_type)
        return make_call(mailbox, request, handler)

    def handles(self, message_type: type) -> bool:
        """Whether the agent has a handler for messages of `message_type`.

        A subclass of [`hybrid.Request`][hybrid.Request] is checked against the
        ``on_request`` handlers, any other type against the ``on_event`` ones
        (a handler for a base class counts). What a router or a topic checks
        when it is given an address, so that a mistake is reported where it
        was made rather than at the first message.

        Example:
            ```python
            assert crawler.handles(AddUrl)
            assert not crawler.handles(str)
            ```
        """
        mailbox = self._mailbox
        kind: type[object] = message_type
        is_request = issubclass(kind, Request)
        table = mailbox.requests if is_request else mailbox.events
        try:
            lookup(table, kind, REQUEST if is_request else EVENT, mailbox.agent_type)
        except UnhandledMessage:
            return False
        return True

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
        at_home(self._mailbox.home, self._interrupt)

    def _interrupt(self) -> None:
        self._rt.interrupt()

    async def join(self: Address[Agent[T]]) -> T:
        """Wait until the agent ends and return its output.

        Returns None for an agent that ended by interrupt, stop or
        cancellation. Re-raises the error of an agent that failed (also a
        BaseException such as KeyboardInterrupt that ended it). For a
        supervised child, this is the run the address reaches now.

        Raises:
            LifecycleError: awaited outside the agent's trio run, or by the
                agent itself (it would wait forever).
        """
        check_awaited_at_home(self._mailbox.home, "join")
        if trio.lowlevel.current_task() is self._mailbox.reader:
            raise LifecycleError(
                f"{self.name} awaited its own join(): it would wait forever (it ends only after this returns); "
                "end with a transition (Next.done, ctx.shutdown) instead"
            )
        result: T = await self._rt.join()
        return result

    @property
    def is_alive(self) -> bool:
        """Whether the agent has not ended yet (it may be finishing its queued messages).

        Also true while a supervisor restarts the child behind this address:
        messages sent meanwhile wait for the next instance.
        """
        return self._rt.phase != ENDED or self._mailbox.limit != CLOSED

    def statistics(self) -> AgentStatistics:
        """A snapshot of the agent: phase, mailbox depth, counters."""
        rt = self._rt
        mailbox = self._mailbox
        return AgentStatistics(
            name=mailbox.name,
            phase=rt.phase_name,
            state=None if rt.state is None else repr(rt.state),
            mailbox_depth=mailbox.depth(),
            mailbox_capacity=mailbox.capacity,
            senders_waiting=len(mailbox.room_waiters or ()),
            messages_handled=rt.handled,
            messages_dropped=mailbox.dropped,
            transitions=rt.transitions,
            reason=rt.reason,
            hibernating=rt.phase == HIBERNATING,
            idle=mailbox.parked is not None or rt.phase == HIBERNATING,
        )

    # Equality and hashing are by identity: one Address object per agent (and
    # per restartable child, across its restarts); copies return the same object.

    def __copy__(self) -> Address[A_co]:
        return self

    def __deepcopy__(self, memo: object) -> Address[A_co]:
        return self

    def __repr__(self) -> str:
        return f"<Address of {self._mailbox.name} ({self._rt.phase_name})>"
