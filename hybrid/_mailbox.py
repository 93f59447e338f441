"""The mailbox of one address: its queue, bound, closing, parked reader and waiting senders.

Every kind of message a mailbox carries is here too (kameo's ``mailbox.rs``):

- an event: any object, queued as it is;
- a `RequestCall`: a request with the way back to its caller;
- a `Response`: the answer to a forwarded request, on its way to an
  ``on_response`` handler;
- a `Tick`: a timer's event; a periodic timer queues no other tick while one
  waits, so ticks never pile up behind a slow handler;
- `INTERRUPT_MARK`: the first `interrupt()`, in order with the others. It
  takes no room from senders: the bound is raised by one while it is queued;
- a `Stamped` event: an event queued while an instrument watches messages
  received (see "Stamps" below).

The mailbox belongs to the address, not to one run of the agent: a supervisor
restarting a child hands the same mailbox to the next instance, so messages
sent between two runs wait for the next one instead of being refused.

Protocol with the reader (the run loop, `_runtime.py`): the reader pops from
`queue`; when it is empty, it stores its task in `parked` and parks with
`trio.lowlevel.wait_task_rescheduled`; `put` reschedules a parked reader.
Senders waiting for room park in `room_waiters`; the reader wakes one per
message it takes, `close` wakes them all.

Stamps: while an instrument of the run overrides ``message_received``, every
message queued is stamped with the time it was queued and a copy of its
sender's `contextvars` (the caller's trace context travels this way): the
envelopes carry the stamp in their ``stamp`` slot, an event is wrapped in a
`Stamped` envelope. `Address.send`'s fast path checks the message type
against `Mailbox.fast`, which is empty while stamping: so stamping costs the
unwatched hot path nothing, and every stamped message goes through `put`.

Priorities: the mailbox of an agent class with a ``message_priority`` function
queues in a `PriorityQueue` instead of a deque: the same operations (the
reader and `Address.send`'s fast path do not know the difference), taking the
highest priority first and in order within a priority. The interrupt mark
has priority 0.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from threading import get_ident
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, cast, final

import outcome
import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled
from typing_extensions import Self, TypeVar

from ._exceptions import AgentStopped, LifecycleError, MailboxFull, UnhandledMessage
from ._handlers import EVENT, INLINE, REQUEST, RESPONSE, Table, lookup
from ._instrument import MessageKind
from ._thread import at_home, check_awaited_at_home, current_home

if TYPE_CHECKING:
    from ._request import Request

logger = logging.getLogger("hybrid.agent")

R = TypeVar("R")

UNBOUNDED: Final = sys.maxsize
"""`Mailbox.limit` of an unbounded mailbox."""
CLOSED: Final = -1
"""`Mailbox.limit` of a closed mailbox: no queue length is below it."""


class Gathering(Protocol):
    """Whoever collects the answers of requests sent with `RequestCall._gather_into` (a quorum)."""

    def answered(self, call: RequestCall[Any], result: outcome.Outcome[Any]) -> None:
        """`call` was answered (in the answering agent's task): record it, wake the collector if decided."""


Stamp = tuple[float, contextvars.Context]
"""When a message was queued (`time.perf_counter`) and a copy of its sender's context."""

_NO_FAST_PATH: Final[Mapping[type, Any]] = MappingProxyType({})
"""`Mailbox.fast` while stamping: no event type takes `Address.send`'s fast path."""


@final
class _InterruptMark:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<interrupt>"


INTERRUPT_MARK: Final = _InterruptMark()
"""The first `interrupt()` of an agent, queued in order with its messages."""


@final
class Response:
    """The answer to a forwarded request, on its way to an ``on_response`` handler."""

    __slots__ = ("handler", "request", "result", "stamp")

    def __init__(self, handler: Callable[..., Awaitable[Any]], request: object, result: outcome.Outcome[Any]) -> None:
        self.handler = handler
        self.request = request
        self.result = result
        self.stamp: Stamp | None = None


@final
class Tick:
    """A timer's event on its way: the timer does not queue another while this one waits.

    `source` is the timer (any object with a writable ``queued`` flag): the
    reader clears the flag when it takes the tick, so a periodic timer never
    has more than one tick in the mailbox, bounded or not.
    """

    __slots__ = ("event", "source", "stamp")

    def __init__(self, event: object, source: Any) -> None:
        self.event = event
        self.source = source
        self.stamp: Stamp | None = None


@final
class Stamped:
    """An event queued while stamping, with its stamp (see the module docstring)."""

    __slots__ = ("event", "stamp")

    def __init__(self, event: object, stamp: Stamp) -> None:
        self.event = event
        self.stamp = stamp


Priority = Callable[[Any], int]
"""An agent's ``message_priority``: the priority of an event or request (higher first)."""


# deque's own methods, called past PriorityQueue's overrides (bound once: no attribute lookup per message).
_deque_append = deque[Any].append
_deque_pop = deque[Any].pop
_deque_remove = deque[Any].remove
_deque_contains = deque[Any].__contains__


class PriorityQueue(deque[Any]):
    """A mailbox queue taking the highest priority first, in order within a priority.

    It is a deque, so that ``len`` and truth (what `Address.send`'s fast path
    and the reader test per message) stay deque's own C operations, and it
    has the other deque operations the mailbox uses (`append`, `popleft`,
    iteration, ``in``, `remove`). It has two modes, switched by assigning
    ``__class__`` (the two classes share one layout):

    - `PriorityQueue`, while the messages queued all have one priority
      (`current`; the common case): the deque holds them, and `popleft`,
      iteration and ``in`` are deque's own; only `append` is Python;
    - `_ManyLevels`, while several priorities are queued: `buckets` holds the
      messages of each priority (oldest first), `levels` those priorities
      highest first, `top` the bucket of the highest; the deque holds one
      placeholder per message, so that ``len`` and truth stay in C. Back to
      the first mode when one priority is left.

    `append` asks `priority` for the message's priority: in the sender's task
    for events and requests, so a priority function that raises or returns
    something else than an int fails the send, where the mistake shows.
    """

    __slots__ = ("buckets", "current", "levels", "priority", "top")

    def __init__(self, priority: Priority) -> None:
        super().__init__()
        self.priority = priority
        self.current = 0
        self.buckets: dict[int, deque[Any]] = {}
        self.levels: list[int] = []
        self.top: deque[Any] | None = None

    def level(self, message: object) -> int:
        """The priority of a queued message (its event or request; the interrupt mark's is 0)."""
        kind = type(message)
        if message is INTERRUPT_MARK:
            return 0
        internal = kind is Tick or kind is Response
        if kind is RequestCall:
            message = cast("RequestCall[Any]", message)._request  # noqa: SLF001 - an envelope kind of this module
        elif kind is Tick or kind is Stamped:
            message = cast("Tick | Stamped", message).event
        elif kind is Response:
            message = cast("Response", message).request
        try:
            level = cast("object", self.priority(message))  # checked: the function is the user's
            if isinstance(level, bool) or not isinstance(level, int):
                raise TypeError(f"message_priority must return an int, got {level!r} for {message!r}")
        except Exception:
            if not internal:
                raise
            # A timer's tick or an answer is queued by the runtime, not by a sender
            # that could be told: it takes the default priority instead.
            logger.exception("message_priority failed for %r; queued with priority 0", message)
            return 0
        return level

    def append(self, message: object) -> None:
        if type(message) in _ENVELOPE_KINDS:  # an envelope, or the interrupt mark
            level = self.level(message)
        else:  # a plain event: inlined in both modes' append (a call per message is what this saves)
            level = self.priority(message)
            if type(level) is not int:
                level = self.level(message)  # an int subclass, or the error
        if level == self.current or not len(self):
            self.current = level
            _deque_append(self, message)
            return
        # A second priority: the messages move to buckets, the deque keeps a placeholder each.
        first = deque(self)
        self.clear()
        self.extend([None] * len(first))
        self.buckets = {self.current: first}
        self.levels = [self.current]
        self.top = first
        object.__setattr__(self, "__class__", _ManyLevels)  # the second mode
        self.append(message)

    def remove(self, message: object) -> None:
        _deque_remove(self, message)

    def retain(self, keep: Callable[[Any], bool]) -> None:
        """Drop the messages for which `keep` is false, in place (the reader holds this object)."""
        for _ in range(len(self)):
            message = self.popleft()
            if keep(message):
                _deque_append(self, message)  # back in the same order, with the same priority


@final
class _ManyLevels(PriorityQueue):
    """`PriorityQueue` while several priorities are queued (see there)."""

    __slots__ = ()

    def append(self, message: object) -> None:
        if type(message) in _ENVELOPE_KINDS:  # an envelope, or the interrupt mark
            level = self.level(message)
        else:  # a plain event: inlined in both modes' append (a call per message is what this saves)
            level = self.priority(message)
            if type(level) is not int:
                level = self.level(message)  # an int subclass, or the error
        bucket = self.buckets.get(level)
        if bucket is None:
            bucket = self.buckets[level] = deque()
            levels = self.levels
            at = 0
            while at < len(levels) and levels[at] > level:
                at += 1
            levels.insert(at, level)
            if at == 0:
                self.top = bucket
        bucket.append(message)
        _deque_append(self, None)

    def popleft(self) -> Any:
        top = self.top
        assert top is not None  # several levels: never empty
        message = top.popleft()
        _deque_pop(self)
        if not top:
            self._emptied(self.levels[0])
        return message

    def _emptied(self, level: int) -> None:
        """The bucket of `level` is empty: drop it; with one priority left, back to the deque of its messages."""
        del self.buckets[level]
        levels = self.levels
        levels.remove(level)
        if len(levels) == 1:
            self.current = levels.pop()
            rest = self.buckets.pop(self.current)
            self.top = None
            self.clear()
            self.extend(rest)
            object.__setattr__(self, "__class__", PriorityQueue)  # back to the first mode
        else:
            self.top = self.buckets[levels[0]]

    def remove(self, message: object) -> None:
        for level in self.levels:
            bucket = self.buckets[level]
            if message in bucket:
                bucket.remove(message)
                _deque_pop(self)
                if not bucket:
                    self._emptied(level)
                return
        raise ValueError(f"{message!r} is not queued")

    def retain(self, keep: Callable[[Any], bool]) -> None:
        for bucket in self.buckets.values():
            kept = [message for message in bucket if keep(message)]
            for _ in range(len(bucket) - len(kept)):
                _deque_pop(self)
            bucket.clear()
            bucket.extend(kept)  # in place: `top` may be this bucket
        while type(self) is _ManyLevels:
            empty = [level for level in self.levels if not self.buckets[level]]
            if not empty:
                return
            self._emptied(empty[0])

    def __iter__(self) -> Iterator[Any]:
        for level in self.levels:
            yield from self.buckets[level]

    def __contains__(self, message: object) -> bool:
        return any(message in bucket for bucket in self.buckets.values())


class Mailbox:
    """The queue of one address; see the module docstring for the protocol.

    Subclassed only by `hybrid._foreign.ForeignMailbox` (an address whose agent
    lives in another process): its overrides are the whole seam, so local paths
    run the code they ran before.

    Every field is read and written on the home trio thread only (the thread
    hop in `_thread.py` brings other threads' calls there).
    """

    __slots__ = (
        "abandoned",
        "agent_type",
        "asleep",
        "capacity",
        "draining",
        "dropped",
        "events",
        "farewells",
        "fast",
        "home",
        "limit",
        "name",
        "parent",
        "parked",
        "priority",
        "queue",
        "reader",
        "requests",
        "responses",
        "room_waiters",
        "run",
        "runs",
        "stamping",
        "thread_id",
    )

    def __init__(
        self,
        name: str,
        agent_type: type,
        capacity: int | None,
        tables: tuple[Table, Table, Table],
        priority: Priority | None = None,
    ) -> None:
        self.name = name
        """The address's name: unique among the live agents of the run, kept across restarts."""
        self.agent_type = agent_type
        """The class of the agent that reads this mailbox now (for error messages)."""
        self.events, self.requests, self.responses = tables
        """The reader's handler tables (class-wide dicts): senders check message types against them."""
        self.fast: Mapping[type, Any] = self.events
        """The event types `Address.send` may queue without `put`: `events`, or none while
        stamping or asleep (then every message goes through `put`)."""
        self.stamping = False
        """Whether `put` stamps what it queues (an instrument watches messages received)."""
        self.capacity = capacity
        """The bound given by the user (None: unbounded)."""
        self.limit: int = UNBOUNDED if capacity is None else capacity
        """A message fits while ``len(queue) < limit``: the capacity (+1 while the
        interrupt mark is queued), `UNBOUNDED`, or `CLOSED` once closed."""
        self.priority = priority
        """The first reader's ``message_priority``: None for a FIFO mailbox (a deque),
        else the queue is a `PriorityQueue` taking it. Kept across restarts."""
        self.queue: deque[Any] | PriorityQueue | None = None
        """The messages in taking order; None until the first one (an idle agent
        costs no deque)."""
        self.parked: Task | None = None
        """The reader's task while it waits for a message, else None."""
        self.reader: Task | None = None
        """The task of the run that reads this mailbox, while it runs (set by the run loop)."""
        self.room_waiters: deque[Task] | None = None
        """Senders waiting for room in a full bounded mailbox (made when one first waits)."""
        self.draining = False
        """Closed to senders, but answers to forwarded requests are still taken:
        the agent is handling what it had queued before it ends."""
        self.dropped = 0
        """Messages discarded unhandled (their senders were told, or the ending said so)."""
        self.abandoned = 0
        """Requests still queued whose callers gave up: skipped by the reader, and
        swept out once they are half the queue, so memory stays bounded."""
        self.parent: str | None = None
        """The name of the agent whose code made this address (a supervisor, for its
        children), or None for an agent started from plain trio code."""
        self.runs = 0
        """Runs started with this address: 1 + the restarts of a supervised child."""
        self.run: Any = None
        """The run that reads this mailbox (a `Runtime`, opaque here; set by it): it answers
        inline requests in their callers' tasks, and wakes up from hibernation."""
        self.asleep = False
        """The reader hibernates (no task): `put` and `wake` wake it up through `run`."""
        self.farewells: list[Callable[[], None]] | None = None
        """Called once when the address is given up for good (`given_up`): not at the end
        of a run whose address is kept for a successor (made by the first one)."""
        self.home = current_home()
        self.thread_id = self.home.thread_id
        """The home thread's ident, copied here for `Address.send`'s fast path."""

    # -- putting ----------------------------------------------------------

    def put(self, message: object) -> None:
        """Queue `message` past any bound and wake the reader (trio thread only)."""
        if self.stamping and message is not INTERRUPT_MARK:
            message = _stamped(message)
        queue = self.queue
        if queue is None:
            queue = self.queue = self.new_queue()
        queue.append(message)
        task = self.parked
        if task is not None:
            self.parked = None
            reschedule(task)
        elif self.asleep:
            self.run.wake_up()

    def new_queue(self) -> deque[Any] | PriorityQueue:
        return deque() if self.priority is None else PriorityQueue(self.priority)

    def set_stamping(self, on: bool) -> None:
        """Stamp what is queued from now on, or stop (messages stamped already stay so)."""
        self.stamping = on
        self._set_fast()

    def set_asleep(self, on: bool) -> None:
        self.asleep = on
        self._set_fast()

    def _set_fast(self) -> None:
        self.fast = _NO_FAST_PATH if self.stamping or self.asleep else self.events

    def wake(self) -> None:
        """Wake the reader without a message (a transition was scheduled)."""
        task = self.parked
        if task is not None:
            self.parked = None
            reschedule(task)
        elif self.asleep:
            self.run.wake_up()

    def event_handler(self, message_type: type) -> Callable[..., Awaitable[Any]]:
        """The reader's event handler for `message_type`.

        Raises:
            UnhandledMessage: it has none.
        """
        handler = self.events.get(message_type)
        if handler is None:
            handler = lookup(self.events, message_type, EVENT, self.agent_type)
        return handler

    def has_room(self) -> bool:
        queue = self.queue
        return (0 if queue is None else len(queue)) < self.limit

    def check_room(self, message: object) -> None:
        """Raise unless one more message fits.

        Raises:
            AgentStopped: the mailbox is closed.
            MailboxFull: the bounded mailbox is full.
        """
        if not self.has_room():
            if self.limit == CLOSED:
                raise AgentStopped(f"{self.name} has ended; {message!r} was not sent")
            raise MailboxFull(
                f"{self.name}'s mailbox is full ({self.capacity} messages); "
                f"{message!r} was not sent (await send_wait() to wait for room)"
            )

    def send(self, event: object) -> None:
        """`Address.send` when its fast path does not apply: checks, first message, other threads."""
        if get_ident() != self.home.thread_id:
            at_home(self.home, self.send, event)
            return
        self.event_handler(type(event))
        self.check_room(event)
        self.put(event)

    async def put_wait(self) -> bool:
        """Wait until one more message fits; False if the mailbox is (or gets) closed."""
        while True:
            limit = self.limit
            if limit == CLOSED:
                return False
            queue = self.queue
            if queue is None or len(queue) < limit:
                return True
            task = current_task()
            waiters = self.room_waiters
            if waiters is None:
                waiters = self.room_waiters = deque()
            waiters.append(task)

            def abort(raise_cancel: Any, task: Task = task, waiters: deque[Task] = waiters) -> Abort:
                with contextlib.suppress(ValueError):  # already woken
                    waiters.remove(task)
                return Abort.SUCCEEDED

            await wait_task_rescheduled(abort)
            try:
                # Woken for room, but cancelled before it ran: it sends
                # nothing, and the room goes to the next sender waiting.
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                self.wake_room_waiters()
                raise

    def wake_room_waiters(self) -> None:
        """Wake as many waiting senders as there is room for (each checks again when it runs)."""
        waiters = self.room_waiters
        if not waiters:
            return
        queue = self.queue
        room = self.limit - (0 if queue is None else len(queue))
        while waiters and room > 0:
            reschedule(waiters.popleft())
            room -= 1

    def put_response(
        self, handler: Callable[..., Awaitable[Any]], request: object, result: outcome.Outcome[Any]
    ) -> None:
        """Queue the answer to a forwarded request; dropped (and logged) if the mailbox closed for good."""
        if self.limit == CLOSED and not self.draining:
            if isinstance(result, outcome.Error):
                logger.warning(
                    "%s has ended; the failed answer to %r was dropped", self.name, request, exc_info=result.error
                )
            else:
                logger.debug("%s has ended; dropped the answer to %r", self.name, request)
            return
        self.put(Response(handler, request, result))

    # -- the interrupt mark -------------------------------------------------

    def put_interrupt_mark(self) -> None:
        if self.capacity is not None and self.limit != CLOSED:
            self.limit += 1  # the mark takes no room from senders
        self.put(INTERRUPT_MARK)

    def unmark(self) -> None:
        """The interrupt mark left the queue: give its room back."""
        if self.capacity is not None and self.limit != CLOSED:
            self.limit -= 1
            waiters = self.room_waiters
            if waiters and self.has_room():
                reschedule(waiters.popleft())

    def remove_interrupt_mark(self) -> None:
        queue = self.queue
        if queue and INTERRUPT_MARK in queue:
            queue.remove(INTERRUPT_MARK)
            self.unmark()

    # -- closing and reuse ----------------------------------------------------

    def close(self) -> None:
        """Refuse new messages from now on; wake the senders waiting for room."""
        self.limit = CLOSED
        waiters = self.room_waiters
        while waiters:
            reschedule(waiters.popleft())

    def given_up(self) -> None:
        """The address is given up for good (its last run ended, no successor comes): call the farewells."""
        farewells = self.farewells
        if farewells:
            self.farewells = None
            for farewell in farewells:
                farewell()

    def discard(self) -> None:
        """Close and empty the mailbox: queued requests fail with `AgentStopped`."""
        self.close()
        queue = self.queue
        while queue:
            message = queue.popleft()
            if type(message) is RequestCall:
                message._fail_stopped()  # noqa: SLF001 - the envelope kinds live in this module
                self.dropped += 1
            elif message is not INTERRUPT_MARK:
                self.dropped += 1
        self.abandoned = 0

    def reopen(self) -> None:
        """Take messages again (a successor will read them): the address stays reachable."""
        self.draining = False
        self.limit = UNBOUNDED if self.capacity is None else self.capacity

    def hand_over(self, agent_type: type, tables: tuple[Table, Table, Table]) -> int:
        """A new agent reads this mailbox from now on; return the interrupts queued for it.

        Queued messages that the new agent's class does not handle are refused
        now, their senders told where they can be (requests fail).
        """
        self.agent_type = agent_type
        self.events, self.requests, self.responses = tables
        self._set_fast()
        queue = self.queue
        marks = 0
        if queue:
            kept = self.new_queue()
            for message in queue:
                if message is INTERRUPT_MARK:
                    marks += 1
                    self.unmark()
                    continue
                kind: type[object] = type(cast("object", message))
                try:
                    if kind is RequestCall:
                        call = cast("RequestCall[Any]", message)
                        call._handler = lookup(self.requests, type(call._request), REQUEST, agent_type)  # noqa: SLF001
                    elif kind is Response:  # answered to the old class: the new one's handler takes it
                        response = cast("Response", message)
                        response.handler = lookup(self.responses, type(response.request), RESPONSE, agent_type)
                    elif kind is Tick or kind is Stamped:
                        self.event_handler(type(cast("Tick | Stamped", message).event))
                    else:
                        self.event_handler(kind)
                except UnhandledMessage as error:
                    self.dropped += 1
                    if kind is RequestCall:
                        message._complete(outcome.Error(error))  # noqa: SLF001
                    else:
                        what = f"the answer to {message.request!r}" if kind is Response else repr(message)
                        logger.warning("%s: the next agent does not handle %s; dropped", self.name, what)
                    continue
                try:
                    kept.append(message)
                except Exception as error:  # the new agent's message_priority refused it
                    self.dropped += 1
                    if kind is RequestCall:
                        message._complete(outcome.Error(error))  # noqa: SLF001
                    else:
                        logger.exception(
                            "%s: the next agent's message_priority refused %r; dropped", self.name, message
                        )
            self.queue = kept
        return marks

    def depth(self) -> int:
        """Messages queued now (the interrupt mark and abandoned requests are not)."""
        queue = self.queue
        if not queue:
            return 0
        return len(queue) - (INTERRUPT_MARK in queue) - self.abandoned

    def abandon(self, call: RequestCall[Any]) -> None:
        """A queued request's caller gave up; sweep such requests out once they are half the queue."""
        self.abandoned += 1
        queue = self.queue
        assert queue is not None
        if self.abandoned * 2 > len(queue) >= 64:
            if isinstance(queue, PriorityQueue):
                queue.retain(lambda message: not is_abandoned(message))
            else:
                for _ in range(len(queue)):  # in place: the reader holds this deque
                    message = queue.popleft()
                    if not is_abandoned(message):
                        queue.append(message)
            self.dropped += self.abandoned
            self.abandoned = 0
            self.wake_room_waiters()


# A RequestCall's life: made, queued (awaited or forwarded), taken by the
# reader, answered; or abandoned by its caller while still queued.
_NEW, _QUEUED, _TAKEN, _USED, _ABANDONED = range(5)

_INLINE_FAIRNESS: Final = 64
"""A caller yields to other tasks at least every this many inline answers (the loop's rule)."""


class _InlineAnswers(threading.local):
    """The inline answers given in this thread since the last yield they forced (each trio run is one thread's).

    Only that forced yield resets it, not the caller's other checkpoints: a caller may
    yield a little more often than every `_INLINE_FAIRNESS` answers, never less.
    """

    count = 0


_inline_answers = _InlineAnswers()


@final
class RequestCall(Generic[R]):
    """A request on its way: await it for the answer, or forward the answer.

    Returned by [`Address.request`][hybrid.Address.request]; use it exactly once:

    - ``await call`` sends the request and waits for the answer; the handler's
      exception is re-raised here, and `AgentStopped` is raised if the agent
      ends before answering. Cancel the wait with trio:
      ``with trio.fail_after(1): await call``. An answer that arrives after the
      caller gave up is dropped. A caller already cancelled sends nothing.
    - ``call.forward_to(self.ctx)`` sends it now; the answer arrives later at
      the caller's `@hybrid.on_response` handler for this request type.
    """

    __slots__ = (
        "_gather",
        "_handler",
        "_mailbox",
        "_reply_to",
        "_request",
        "_response_handler",
        "_state",
        "_task",
        "stamp",
    )

    _mailbox: Mailbox
    _request: Request[R]
    _handler: Callable[..., Awaitable[Any]]
    _state: int
    _task: Task | None
    _reply_to: Mailbox | None
    _response_handler: Callable[..., Awaitable[Any]] | None
    _gather: Gathering | None  # the quorum waiting for this answer, if one sent it
    stamp: Stamp | None

    def __new__(cls, *args: object, **kwargs: object) -> Self:
        # In __new__, not __init__: no half-made call is left for __del__ to see.
        raise TypeError("RequestCall has no public constructor: use Address.request(...)")

    def __await__(self) -> Generator[Any, Any, R]:
        mailbox = self._mailbox
        if self._state != _NEW:
            raise LifecycleError("a request can be awaited or forwarded only once")
        self._state = _USED  # refused below unless it is queued
        if mailbox.parked is None or get_ident() != mailbox.thread_id:  # else at home: its reader is parked here
            check_awaited_at_home(mailbox.home, "a request", run_is_live=mailbox.parked is not None)
        task = current_task()
        if task is mailbox.reader:
            raise LifecycleError(
                f"{mailbox.name} awaited a request to itself: it would wait forever (its handler runs only "
                f"after this one returns); call the method directly, or forward_to(self.ctx) for the answer later"
            )
        if mailbox.requests.get(type(self._request)) is not self._handler:  # changed hands since it was made
            self._look_up_handler(mailbox)
        self._state = _QUEUED
        # A caller that is already cancelled sends nothing.
        yield from trio.lowlevel.checkpoint_if_cancelled().__await__()  # noqa: ASYNC105
        # An idle reader (parked or asleep: nothing queued, no transition pending)
        # answers an inline handler in this task: no message overtakes another.
        if (mailbox.parked is not None or mailbox.asleep) and getattr(self._handler, INLINE, False):
            answer = mailbox.run.answer_inline(self._handler, self._request)
            if answer is not None:
                self._state = _USED
                answers = _inline_answers
                answers.count += 1
                if answers.count >= _INLINE_FAIRNESS:
                    answers.count = 0
                    yield from trio.lowlevel.cancel_shielded_checkpoint().__await__()  # noqa: ASYNC105
                answered: R = answer.unwrap()
                return answered
        # A closed or full bounded mailbox: wait for room (or learn it is closed).
        if not mailbox.has_room() and not (yield from mailbox.put_wait().__await__()):
            raise AgentStopped(f"{mailbox.name} has ended; request {self._request!r} was not sent")
        self._task = task
        mailbox.put(self)
        result: R = yield from wait_task_rescheduled(self._abandon).__await__()  # noqa: ASYNC105
        return result

    def _look_up_handler(self, mailbox: Mailbox) -> None:
        """The handler of `mailbox`'s reader now: the call may have been made before it changed hands.

        (A supervised child restarted into another class since: the new class answers.)

        Raises:
            UnhandledMessage: the reader's class has no handler for the request.
        """
        handler = mailbox.requests.get(type(self._request))  # a base's handler is cached there by lookup
        if handler is not self._handler:
            self._handler = handler or lookup(mailbox.requests, type(self._request), REQUEST, mailbox.agent_type)

    def __del__(self) -> None:
        if self._state == _NEW:
            # As Python warns of a coroutine never awaited: this request was never sent.
            warnings.warn(
                f"request {self._request!r} to {self._mailbox.name} was never awaited nor forwarded, "
                "so it was never sent (write `await address.request(...)`)",
                RuntimeWarning,
                stacklevel=1,
            )

    def _abandon(self, raise_cancel: Any) -> Abort:
        # The caller gave up (timeout, cancellation): a request still queued is
        # never handled; the answer of one being handled is dropped.
        self._task = None
        if self._state == _QUEUED:
            self._state = _ABANDONED
            self._mailbox.abandon(self)
        return Abort.SUCCEEDED

    def _take(self) -> bool:
        """The reader took the call from the queue: whether to handle it (its caller may have left)."""
        if self._state == _ABANDONED:
            mailbox = self._mailbox
            mailbox.abandoned -= 1
            mailbox.dropped += 1
            return False
        self._state = _TAKEN
        return True

    def forward_to(self, ctx: Any) -> None:
        """Send the request now; deliver the answer to `ctx`'s agent later.

        The answer arrives as a message, in order with the others, at the
        ``@hybrid.on_response`` handler of `ctx`'s agent for this request type,
        as an `outcome.Outcome`: `outcome.Error` if the server raised or ended
        before answering.

        Args:
            ctx: the forwarding agent's `hybrid.Context` (``self.ctx``).

        Raises:
            UnhandledMessage: `ctx`'s agent has no `on_response` handler for
                this request type.
            AgentStopped: the server has ended.
            MailboxFull: the server's bounded mailbox is full.
            LifecycleError: the request was already awaited or forwarded.
        """
        client: Mailbox = ctx.address._mailbox  # noqa: SLF001 - the client's mailbox takes the answer
        at_home(client.home, self._forward, client)

    def _forward(self, client: Mailbox) -> None:
        if self._state != _NEW:
            raise LifecycleError("a request can be awaited or forwarded only once")
        self._state = _USED  # refused below unless it is queued
        self._response_handler = lookup(client.responses, type(self._request), RESPONSE, client.agent_type)
        self._look_up_handler(self._mailbox)
        self._mailbox.check_room(self._request)
        self._state = _QUEUED
        self._reply_to = client
        self._mailbox.put(self)

    def _complete(self, result: outcome.Outcome[Any]) -> None:
        self._state = _USED
        task = self._task
        if task is not None:
            self._task = None
            reschedule(task, result)
        elif self._reply_to is not None:
            assert self._response_handler is not None
            self._reply_to.put_response(self._response_handler, self._request, result)
        elif self._gather is not None:
            gather = self._gather
            self._gather = None
            gather.answered(self, result)

    def _waited_for(self) -> bool:
        """Whether someone still waits for the answer (a task, a forwarding agent, a quorum)."""
        return self._task is not None or self._reply_to is not None or self._gather is not None

    def _gather_into(self, gather: Gathering) -> bool:
        """Send the request now, its answer going to `gather`; False (nothing sent) unless it fits at once.

        Only a request never sent, to a mailbox of this thread with room: the
        quorum that calls this falls back to a task per request otherwise.
        """
        mailbox = self._mailbox
        if self._state != _NEW or get_ident() != mailbox.thread_id or not mailbox.has_room():
            return False
        try:
            self._look_up_handler(mailbox)
        except UnhandledMessage:  # pragma: no cover - a quorum's can_gather refuses such a call first
            return False  # awaited instead, it raises there, where its caller learns
        self._state = _QUEUED
        self._gather = gather
        mailbox.put(self)
        return True

    def _withdraw(self) -> None:
        """The quorum that sent it no longer wants the answer: never handled if still queued, else dropped."""
        self._gather = None
        if self._state == _QUEUED:
            self._state = _ABANDONED
            self._mailbox.abandon(self)

    async def _route(self, router: Mailbox, target: object) -> None:
        """A ``route=True`` handler of `router`'s reader chose `target` (an Address): queue the call there.

        The caller keeps waiting on this envelope (or its answer goes where it was
        forwarded); `target`'s reader answers it. Waits for room in a full bounded
        mailbox. Every refusal completes the call with the error, so the caller learns.
        """
        mailbox = getattr(target, "_mailbox", None)
        if not isinstance(mailbox, Mailbox):
            self._complete(
                outcome.Error(
                    TypeError(
                        f"{router.name}'s route=True handler must return the hybrid.Address that answers "
                        f"{self._request!r}, got {target!r}"
                    )
                )
            )
            return
        if mailbox is router:
            self._complete(
                outcome.Error(LifecycleError(f"{router.name} routed {self._request!r} to itself: it would never leave"))
            )
            return
        if self._task is not None and self._task is mailbox.reader:
            self._complete(
                outcome.Error(
                    LifecycleError(
                        f"{router.name} routed {self._request!r} back to {mailbox.name}, which awaits it: "
                        "it would wait forever (its handler runs only after this request returns)"
                    )
                )
            )
            return
        try:
            lookup(mailbox.requests, type(self._request), REQUEST, mailbox.agent_type)
        except UnhandledMessage as error:
            self._complete(outcome.Error(error))
            return
        while not mailbox.has_room():
            if not self._waited_for():
                return  # its caller gave up: nobody waits for the answer
            run = mailbox.run
            if mailbox.limit == CLOSED and run is not None and not run.has_ended():
                # Ending: a supervisor that restarts it reopens the address as the run
                # ends, and then the request waits there for the next instance.
                await run.wait_ended()
                if mailbox.limit == CLOSED:
                    break
            elif not await mailbox.put_wait():
                break
        if mailbox.limit == CLOSED:
            self._fail_stopped_at(mailbox)
            return
        if not self._waited_for():
            return  # its caller gave up meanwhile: nobody waits for the answer
        previous = (self._mailbox, self._handler)
        try:  # looked up now: the target may have been restarted into another class while this waited
            self._look_up_handler(mailbox)
        except UnhandledMessage as error:  # pragma: no cover - a route to a child restarting into such a class
            self._complete(outcome.Error(error))
            return
        self._mailbox = mailbox
        self._state = _QUEUED
        try:
            mailbox.put(self)
        except Exception as error:  # the target's message_priority refused it: the caller learns why
            self._mailbox, self._handler = previous
            self._complete(outcome.Error(error))

    def _fail_stopped_at(self, mailbox: Mailbox) -> None:
        self._complete(outcome.Error(AgentStopped(f"{mailbox.name} has ended; request {self._request!r} was not sent")))

    def _fail_stopped(self) -> None:
        self._complete(outcome.Error(AgentStopped(f"{self._mailbox.name} ended before answering {self._request!r}")))


def can_gather(members: list[Any]) -> bool:
    """Whether every member is a request never sent, to a mailbox of this thread with room for all of them."""
    wanted: dict[Mailbox, int] = {}
    for member in members:
        if type(member) is not RequestCall or member._state != _NEW:  # noqa: SLF001
            return False
        mailbox: Mailbox = member._mailbox  # noqa: SLF001
        wanted[mailbox] = wanted.get(mailbox, 0) + 1
    ident = get_ident()
    for mailbox, count in wanted.items():
        queue = mailbox.queue
        if mailbox.thread_id != ident or (0 if queue is None else len(queue)) + count > mailbox.limit:
            return False
    for member in members:  # a reader that no longer handles it (restarted into another class): awaited instead
        call: RequestCall[Any] = member
        try:
            lookup(call._mailbox.requests, type(call._request), REQUEST, call._mailbox.agent_type)  # noqa: SLF001
        except UnhandledMessage:
            return False
    return True


def make_call(mailbox: Mailbox, request: Request[R], handler: Callable[..., Awaitable[Any]]) -> RequestCall[R]:
    """A new `RequestCall` of `request` to the reader of `mailbox` (its public constructor is closed)."""
    call: RequestCall[R] = object.__new__(RequestCall)  # pyright: ignore[reportUnknownVariableType]
    call._mailbox = mailbox  # noqa: SLF001 - made here, as a constructor would
    call._request = request  # noqa: SLF001
    call._handler = handler  # noqa: SLF001
    call._state = _NEW  # noqa: SLF001
    call._task = None  # noqa: SLF001
    call._reply_to = None  # noqa: SLF001
    call._response_handler = None  # noqa: SLF001
    call._gather = None  # noqa: SLF001
    call.stamp = None
    return call


def _stamped(message: object) -> object:
    """`message` with its stamp: an envelope records it, an event is wrapped in `Stamped`."""
    stamp = (time.perf_counter(), contextvars.copy_context())
    kind = type(message)
    if kind is RequestCall or kind is Tick or kind is Response:
        cast("RequestCall[Any] | Tick | Response", message).stamp = stamp
        return message
    return Stamped(message, stamp)


def received(message: object) -> tuple[object, MessageKind, Stamp | None]:
    """What a queued message carries for instruments: the event or request, its handler's kind, its stamp.

    A forwarded answer reports its request; a tick, its event.
    """
    kind = type(message)
    if kind is Stamped or kind is Tick:
        envelope = cast("Stamped | Tick", message)
        return envelope.event, MessageKind.EVENT, envelope.stamp
    if kind is RequestCall:
        call = cast("RequestCall[Any]", message)
        return call._request, MessageKind.REQUEST, call.stamp  # noqa: SLF001
    if kind is Response:
        response = cast("Response", message)
        return response.request, MessageKind.RESPONSE, response.stamp
    return message, MessageKind.EVENT, None


def is_abandoned(message: object) -> bool:
    """Whether `message` is a request whose caller gave up (the reader skips it)."""
    return isinstance(message, RequestCall) and message._state == _ABANDONED  # noqa: SLF001


_ENVELOPE_KINDS: Final = frozenset({RequestCall, Tick, Response, Stamped, _InterruptMark})
"""What `PriorityQueue.append` unwraps before asking the agent's priority function."""
