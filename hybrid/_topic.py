"""Topics: publish one message to every subscriber, with a bounded policy for slow ones.

Built on public names only (`Address.send`, `Address.send_wait`,
`Address.handles`), the way a third party could build its own; the shared
argument checks are the only private helper it uses.

A [`Topic`][hybrid.Topic] carries messages of one type to two kinds of
subscribers::

    topic.publish(message) ──┬──> agent subscriber:  address.send(message)   (its mailbox is its buffer)
                             ├──> agent subscriber:  ...
                             └──> task subscriber:   its own buffer of `buffer` messages
                                                     ──> async for message in subscription

Delivery is in subscription order, within the call: `publish` hands the
message to every subscriber before it returns, never blocks and is not a
schedule point (like trio's ``send_nowait``). A subscriber with no room (a
full bounded mailbox, a full subscription buffer) gets the topic's
[`Overflow`][hybrid.Overflow] policy, or its own, given when it subscribed:

- ``DROP_NEWEST``: this message is not delivered to that subscriber;
- ``DROP_OLDEST`` (task subscriptions only): the oldest buffered message
  is discarded to make room for this one;
- ``DISCONNECT`` (the default): the subscriber is removed. A task
  subscription first yields what it had buffered, then raises
  [`SubscriberTooSlow`][hybrid.SubscriberTooSlow]; an agent is
  unsubscribed, with a WARNING in the log.

`publish_wait` never drops: it waits until every subscriber has room, which
is backpressure from the slowest subscriber to the publisher.

The machinery lives in private objects beside the public handles: a `_Hub`
(the subscriber list, the counters, the closing) behind each `Topic`, an
`_AgentSubscriber` per agent and a `_TaskSubscriber` (the buffer and the
parked tasks) behind each `Subscription`. All of them are used from the
topic's trio thread only, so no locks: each method runs to its end without
a schedule point unless it says it parks.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from types import TracebackType
from typing import Any, Final, Generic, final

import attrs
import outcome
import trio
from trio.lowlevel import (
    Abort,
    Task,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)
from typing_extensions import Self, TypeVar

from . import _validate
from ._address import Address
from ._exceptions import AgentStopped, HybridError, MailboxFull, UnhandledMessage
from ._request import Request

logger = logging.getLogger("hybrid.topic")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_WARN_EVERY: Final = 60.0
"""Seconds (on trio's clock) between two WARNINGs about one subscriber's drops; the
drops in between are logged at DEBUG (and all are counted)."""


class Overflow(enum.Enum):
    """What a topic does for a subscriber that has no room for a new message.

    A subscriber has no room when its buffer is full: a task subscription's
    buffer of ``buffer`` messages, or an agent's bounded mailbox (an agent
    with an unbounded mailbox always has room). Only
    [`Topic.publish`][hybrid.Topic.publish] applies the policy;
    [`Topic.publish_wait`][hybrid.Topic.publish_wait] waits for room instead.
    Every message a policy drops is counted, for the subscriber and the
    topic (`Topic.statistics()`), and logged.

    Attributes:
        DROP_OLDEST: the oldest buffered message is discarded to make room
            for the new one, so the subscriber sees the latest messages
            (for prices, positions, progress). Task subscriptions only: a
            message queued in an agent's mailbox is not taken back, so
            subscribing an agent with a bounded mailbox under this policy is
            a `ValueError` (give it ``overflow=Overflow.DROP_NEWEST`` or
            ``DISCONNECT`` instead).
        DROP_NEWEST: the new message is not delivered to that subscriber;
            it keeps what it had buffered.
        DISCONNECT: the subscriber is removed from the topic. A task
            subscription yields what it had buffered, then its iterator
            raises [`SubscriberTooSlow`][hybrid.SubscriberTooSlow]; an agent
            is unsubscribed, logged at WARNING. The default: a subscriber
            either sees every message, in order, or learns that it fell
            behind.

    Example:
        ```python
        prices = hybrid.Topic(Price, buffer=8, overflow=hybrid.Overflow.DROP_OLDEST)
        prices.subscribe(ledger, overflow=hybrid.Overflow.DISCONNECT)  # an agent: all or nothing
        ```
    """

    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"
    DISCONNECT = "disconnect"


class SubscriberTooSlow(HybridError, trio.BrokenResourceError):
    """A task subscription fell behind its topic and was disconnected.

    Raised by [`Subscription.receive`][hybrid.Subscription.receive] (and so by
    ``async for``) once the subscription has yielded the messages it had
    buffered when it was disconnected: the topic's policy was
    ``Overflow.DISCONNECT`` and a message found its buffer full. That
    message and every later one were not delivered to it. Also a
    `trio.BrokenResourceError`, as the subscription cannot be used again.

    Attributes:
        subscriber: the name of the subscription.
        buffer: the size of its buffer.

    Example:
        ```python
        async with topic.subscription(buffer=100) as updates:
            try:
                async for update in updates:
                    await apply(update)
            except hybrid.SubscriberTooSlow:
                await resync()  # start over from a snapshot
        ```
    """

    def __init__(self, message: str, *, subscriber: str, buffer: int) -> None:
        super().__init__(message)
        self.subscriber = subscriber
        self.buffer = buffer


@attrs.frozen
class SubscriberStatistics:
    """One subscriber of a topic, in [`TopicStatistics.subscribers`][hybrid.TopicStatistics].

    Also returned by [`Subscription.statistics()`][hybrid.Subscription.statistics].

    Attributes:
        name: the agent's name, or the subscription's name.
        address: the agent's address; None for a task subscription.
        overflow: the policy applied when it has no room.
        delivered: messages handed to it: put into its buffer or sent to
            its mailbox (under ``DROP_OLDEST``, a delivered message may be
            discarded later, and is then counted in `dropped` too).
        dropped: messages it did not get, or lost from its buffer, because
            it had no room (the message that disconnected it included).
        buffered: messages waiting in its buffer now; for an agent, every
            message in its mailbox, the topic's and others.
        capacity: the size of its buffer; for an agent, its mailbox
            capacity, or None if unbounded.
    """

    name: str
    address: Address[Any] | None
    overflow: Overflow
    delivered: int
    dropped: int
    buffered: int
    capacity: int | None


@attrs.frozen
class TopicStatistics:
    """A snapshot of a topic, from [`Topic.statistics()`][hybrid.Topic.statistics].

    The counters cover the topic's whole life, subscribers that left
    included. For each subscriber a message is published to, the message
    is delivered, or dropped (no room), or neither: an agent found ended
    (counted in `ended`), a subscriber that left while a `publish_wait`
    waited for it, or one a cancelled `publish_wait` had not reached yet
    (the publisher saw the cancellation). Under ``DROP_OLDEST`` the new
    message is delivered and an older one is dropped from the buffer.

    Attributes:
        name: the topic's name.
        published: messages accepted by `publish` and `publish_wait` (past
            the type check), with or without subscribers.
        delivered: deliveries: one per message handed to one subscriber.
        dropped: deliveries not made, or buffered messages discarded,
            because a subscriber had no room (``DROP_NEWEST``,
            ``DROP_OLDEST``, and the message that disconnected one).
        disconnected: subscribers removed by ``Overflow.DISCONNECT``.
        ended: agent subscribers removed because they had ended (noticed
            at a publish), or no longer handle the message type.
        publishers_waiting: `publish_wait` calls waiting for room now.
        closed: whether `Topic.close()` was called.
        subscribers: each current subscriber, in delivery order.
    """

    name: str
    published: int
    delivered: int
    dropped: int
    disconnected: int
    ended: int
    publishers_waiting: int
    closed: bool
    subscribers: tuple[SubscriberStatistics, ...]


class _State(enum.Enum):
    """Where a task subscription is in its life (one field, `_TaskSubscriber.state`)."""

    OPEN = "open"  # on the topic's list: messages arrive
    DISCONNECTED = "disconnected"  # removed for being too slow: drain, then SubscriberTooSlow
    ENDED = "ended"  # the topic was closed: drain, then trio.EndOfChannel
    CLOSED = "closed"  # its holder closed it: buffer emptied, trio.ClosedResourceError


@attrs.define
class _Counts:
    """One subscriber's counters and its drop-logging state (trio thread only)."""

    delivered: int = 0
    dropped: int = 0
    warned_at: float | None = None
    """When (trio's clock) its drops were last logged at WARNING; None before the first drop."""


@attrs.define(eq=False)
class _Publisher:
    """A `publish_wait` parked for room in one full task subscription.

    It is in that subscription's `publishers` until it is rescheduled: with
    True once `message` is in the buffer, with False if the subscription
    left the topic first. A cancelled one removes itself and delivers nothing.
    """

    task: Task
    message: Any


def _require_trio(what: str) -> None:
    if not trio.lowlevel.in_trio_task():
        raise RuntimeError(
            f"{what} must be called from a trio task, on the topic's trio thread; "
            "from a worker thread, use trio.from_thread.run_sync"
        )


@final
class _AgentSubscriber:
    """One agent on a topic's list.

    Fields (trio thread only):
        hub: the topic it is on.
        key: its address (the key of `hub.members`).
        overflow: the policy when its mailbox is full (never ``DROP_OLDEST``
            for a bounded mailbox: `Topic.subscribe` refuses it).
        counts: its counters.
        waits: the cancel scopes of the `publish_wait` calls waiting for room
            in its mailbox; cancelled when it leaves the topic, so nothing
            published arrives after it left.
    """

    __slots__ = ("counts", "hub", "key", "overflow", "waits")

    def __init__(self, hub: _Hub, address: Address[Any], overflow: Overflow) -> None:
        self.hub = hub
        self.key = address
        self.overflow = overflow
        self.counts = _Counts()
        self.waits: set[trio.CancelScope] = set()

    @property
    def name(self) -> str:
        return self.key.name

    def try_put(self, message: object) -> bool | None:
        """Send `message` if the mailbox has room: True; False if full; None if the agent left the topic."""
        try:
            self.key.send(message)
        except MailboxFull:
            return False
        except AgentStopped as error:
            if self.key.is_alive:  # a supervised child between two runs: still subscribed
                self.hub.missed(self, message)
            else:
                self.hub.lost(self, error)
            return None
        except UnhandledMessage as error:
            self.hub.lost(self, error)
            return None
        self.hub.delivered(self.counts)
        return True

    def overflowed(self, message: object) -> bool:
        """Apply the policy to `message`, which found the mailbox full; True if it was delivered."""
        if self.overflow is Overflow.DISCONNECT:
            self.hub.disconnect(self)
        else:  # DROP_NEWEST (DROP_OLDEST only reaches unbounded mailboxes, which are never full)
            self.hub.drop(self, self.overflow)
        return False

    async def put_wait(self, message: object) -> bool:
        """Wait for room and send `message`; False if the agent left the topic meanwhile."""
        if not self.hub.has(self):
            return False
        with trio.CancelScope() as scope:
            self.waits.add(scope)
            try:
                await self.key.send_wait(message)
            except AgentStopped as error:
                if self.key.is_alive:  # a supervised child between two runs: still subscribed
                    self.hub.missed(self, message)
                else:
                    self.hub.lost(self, error)
                return False
            except UnhandledMessage as error:
                self.hub.lost(self, error)
                return False
            finally:
                self.waits.discard(scope)
        if scope.cancelled_caught:  # it left the topic (our scope), not the caller's cancellation
            return False
        self.hub.delivered(self.counts)
        return True

    def detach(self, state: _State) -> None:
        """It left the topic: the `publish_wait` calls waiting for its mailbox skip it."""
        for scope in self.waits:
            scope.cancel()

    def statistics(self) -> SubscriberStatistics:
        agent = self.key.statistics()
        return SubscriberStatistics(
            name=agent.name,
            address=self.key,
            overflow=self.overflow,
            delivered=self.counts.delivered,
            dropped=self.counts.dropped,
            buffered=agent.mailbox_depth,
            capacity=agent.mailbox_capacity,
        )


@final
class _TaskSubscriber:
    """The buffer and the parked tasks behind one `Subscription`.

    Invariants: receivers park only while `items` is empty, publishers only
    while it is full; a receiver that takes an item while publishers wait
    moves the first one's message in at once (`admit`), so the buffer stays
    full while any wait, and they get in, in the order they came. Every
    message is in `items` or held by exactly one parked publisher.

    Fields (trio thread only):
        hub: the topic it is on (or was).
        key: its public handle (the key of `hub.members`), set once made.
        name: its name, for statistics, logs and errors.
        capacity: the size of its buffer (>= 1).
        overflow: the policy when the buffer is full.
        items: the buffered messages, oldest first, at most `capacity`.
        state: where it is in its life; `items` is empty once CLOSED.
        receivers: tasks parked in `receive`, waiting for a message.
        publishers: `publish_wait` calls parked for room, in arrival order.
        counts: its counters.
    """

    __slots__ = ("capacity", "counts", "hub", "items", "key", "name", "overflow", "publishers", "receivers", "state")

    def __init__(self, hub: _Hub, name: str, capacity: int, overflow: Overflow) -> None:
        self.hub = hub
        self.key: Subscription[Any] | None = None
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self.items: deque[Any] = deque()
        self.state = _State.OPEN
        self.receivers: deque[Task] = deque()
        self.publishers: deque[_Publisher] = deque()
        self.counts = _Counts()

    # -- the publishing side ---------------------------------------------------

    def put(self, message: object) -> None:
        """Buffer `message` (there is room) and wake a parked receiver."""
        self.items.append(message)
        self.hub.delivered(self.counts)
        if self.receivers:
            reschedule(self.receivers.popleft())

    def try_put(self, message: object) -> bool | None:
        """Buffer `message` if there is room: True; False if the buffer is full."""
        if len(self.items) < self.capacity:
            self.put(message)
            return True
        return False

    def overflowed(self, message: object) -> bool:
        """Apply the policy to `message`, which found the buffer full; True if it was delivered."""
        overflow = self.overflow
        if overflow is Overflow.DROP_OLDEST:
            self.items.popleft()
            self.hub.drop(self, overflow)
            self.put(message)
            return True
        if overflow is Overflow.DROP_NEWEST:
            self.hub.drop(self, overflow)
        else:
            self.hub.disconnect(self)
        return False

    async def put_wait(self, message: object) -> bool:
        """Wait for room and buffer `message`; False if the subscription left the topic first."""
        if self.state is not _State.OPEN:
            return False
        if len(self.items) < self.capacity:
            self.put(message)
            return True
        publisher = _Publisher(current_task(), message)
        self.publishers.append(publisher)

        def abort(_: object) -> Abort:
            self.publishers.remove(publisher)
            return Abort.SUCCEEDED

        admitted: bool = await wait_task_rescheduled(abort)
        return admitted

    def detach(self, state: _State) -> None:
        """It left the topic: wake everyone parked on it (receivers re-check, publishers skip it)."""
        self.state = state
        if state is _State.CLOSED:
            self.items.clear()
        while self.receivers:
            reschedule(self.receivers.popleft())
        while self.publishers:
            reschedule(self.publishers.popleft().task, outcome.Value(False))

    # -- the receiving side ------------------------------------------------------

    def receive_nowait(self) -> Any:
        state = self.state
        if state is _State.CLOSED:
            raise trio.ClosedResourceError(f"{self.name} was closed")
        items = self.items
        if items:
            message = items.popleft()
            if self.publishers:
                self.admit()
            return message
        if state is _State.OPEN:
            raise trio.WouldBlock
        if state is _State.DISCONNECTED:
            raise SubscriberTooSlow(
                f"{self.name} fell behind {self.hub.name} and was disconnected: a message found its buffer "
                f"of {self.capacity} full (Overflow.DISCONNECT); read faster, give it a larger buffer, "
                "or choose another overflow policy",
                subscriber=self.name,
                buffer=self.capacity,
            )
        raise trio.EndOfChannel

    def admit(self) -> None:
        """A receiver made room: the first parked publisher's message goes in, and it goes on."""
        publisher = self.publishers.popleft()
        self.put(publisher.message)
        reschedule(publisher.task, outcome.Value(True))

    async def receive(self) -> Any:
        await checkpoint_if_cancelled()
        while True:
            try:
                message = self.receive_nowait()
            except trio.WouldBlock:
                task = current_task()
                self.receivers.append(task)

                def abort(_: object, task: Task = task) -> Abort:
                    self.receivers.remove(task)
                    return Abort.SUCCEEDED

                # Woken by a message (or a state change); the message stays
                # buffered until this task takes it, so a cancellation that
                # arrives meanwhile loses nothing.
                await wait_task_rescheduled(abort)
            else:
                await cancel_shielded_checkpoint()
                return message

    def statistics(self) -> SubscriberStatistics:
        return SubscriberStatistics(
            name=self.name,
            address=None,
            overflow=self.overflow,
            delivered=self.counts.delivered,
            dropped=self.counts.dropped,
            buffered=len(self.items),
            capacity=self.capacity,
        )


_Member = _AgentSubscriber | _TaskSubscriber


@final
class _Hub:
    """A topic's subscriber list and counters, shared with its subscribers (trio thread only).

    Fields:
        name: the topic's name.
        members: the subscribers, keyed by address or subscription handle, in
            subscription (and so delivery) order.
        snapshot: ``tuple(members.values())``, made on the first publish after
            a change; None when stale. A publish walks it, so subscribers that
            leave during the walk do not disturb it.
        published, delivered_count, dropped, disconnected, ended: the
            counters of `TopicStatistics` (`delivered_count` is its
            `delivered`), each written where its event happens.
        publishers_waiting: `publish_wait` calls in their waiting pass.
        closed: `Topic.close()` was called; `members` is empty from then on.
        made: task subscriptions made so far (numbers their default names).
    """

    __slots__ = (
        "closed",
        "delivered_count",
        "disconnected",
        "dropped",
        "ended",
        "made",
        "members",
        "name",
        "published",
        "publishers_waiting",
        "snapshot",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[Address[Any] | Subscription[Any], _Member] = {}
        self.snapshot: tuple[_Member, ...] | None = None
        self.published = 0
        self.delivered_count = 0
        self.dropped = 0
        self.disconnected = 0
        self.ended = 0
        self.publishers_waiting = 0
        self.closed = False
        self.made = 0

    def now(self) -> tuple[_Member, ...]:
        snapshot = self.snapshot
        if snapshot is None:
            snapshot = self.snapshot = tuple(self.members.values())
        return snapshot

    def add(self, member: _Member) -> None:
        assert member.key is not None
        self.members[member.key] = member
        self.snapshot = None

    def has(self, member: _Member) -> bool:
        return member.key is not None and self.members.get(member.key) is member

    def remove(self, member: _Member, state: _State) -> bool:
        """Take `member` off the list, if it is on it, and detach it; whether it was."""
        if not self.has(member):
            return False
        assert member.key is not None
        del self.members[member.key]
        self.snapshot = None
        member.detach(state)
        return True

    # -- what happens to a delivery: each counted where it happens ---------------

    def delivered(self, counts: _Counts) -> None:
        counts.delivered += 1
        self.delivered_count += 1

    def missed(self, member: _Member, message: object) -> None:
        """`member` is an agent being restarted (its address refuses while its old run ends): a drop."""
        member.counts.dropped += 1
        self.dropped += 1
        logger.warning("%s: %s is being restarted and missed %r", self.name, member.name, message)

    def drop(self, member: _Member, overflow: Overflow) -> None:
        """`member` had no room: count the drop, and log it (WARNING at most every `_WARN_EVERY` s)."""
        counts = member.counts
        counts.dropped += 1
        self.dropped += 1
        now = trio.current_time()
        if counts.warned_at is None or now - counts.warned_at >= _WARN_EVERY:
            counts.warned_at = now
            logger.warning(
                "%s: %s has no room and drops messages (Overflow.%s): %d dropped so far "
                "(the next drops are logged at DEBUG for %.0f s; Topic.statistics() counts them all)",
                self.name,
                member.name,
                overflow.name,
                counts.dropped,
                _WARN_EVERY,
            )
        else:
            logger.debug(
                "%s: dropped a message for %s (Overflow.%s): %d dropped so far",
                self.name,
                member.name,
                overflow.name,
                counts.dropped,
            )

    def disconnect(self, member: _Member) -> None:
        """`member` had no room under ``DISCONNECT``: the message is dropped and it leaves the topic."""
        member.counts.dropped += 1
        self.dropped += 1
        self.disconnected += 1
        self.remove(member, _State.DISCONNECTED)
        logger.warning(
            "%s: %s had no room and was disconnected (Overflow.DISCONNECT) after %d messages",
            self.name,
            member.name,
            member.counts.delivered,
        )

    def lost(self, member: _AgentSubscriber, error: Exception) -> None:
        """An agent subscriber has ended, or no longer handles the type: it leaves the topic."""
        if not self.remove(member, _State.ENDED):  # pragma: no cover - defensive
            # Not seen: a publish_wait whose agent left the list meanwhile
            # gets its cancel scope's cancellation, not AgentStopped.
            return
        self.ended += 1
        if isinstance(error, UnhandledMessage):
            logger.error(
                "%s: %s no longer handles its messages and was unsubscribed: %s", self.name, member.name, error
            )
        else:
            logger.debug("%s: %s has ended and was unsubscribed", self.name, member.name)

    # -- publishing ----------------------------------------------------------------

    def publish(self, message: object) -> int:
        self.published += 1
        received = 0
        for member in self.now():
            put = member.try_put(message)
            if put or (put is False and member.overflowed(message)):
                received += 1
        return received

    async def publish_wait(self, message: object) -> int:
        await checkpoint_if_cancelled()
        self.published += 1
        received = 0
        waiting: list[_Member] = []
        for member in self.now():
            put = member.try_put(message)
            if put:
                received += 1
            elif put is False:
                waiting.append(member)
        if waiting:
            self.publishers_waiting += 1
            try:
                for member in waiting:
                    if await member.put_wait(message):
                        received += 1
            finally:
                self.publishers_waiting -= 1
        await cancel_shielded_checkpoint()
        return received

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        members = self.now()
        self.members.clear()
        self.snapshot = None
        for member in members:
            member.detach(_State.ENDED)


@final
class Topic(Generic[T]):
    """Broadcast: each message published goes to every subscriber, agents and tasks.

    A topic carries messages of one type, checked when they are published.
    Agents subscribe with [`subscribe`][hybrid.Topic.subscribe] and receive
    each message as an event, at their ``@hybrid.on_event`` handler; tasks
    open a [`subscription`][hybrid.Topic.subscription] and iterate it. A
    subscriber receives the messages published while it is subscribed,
    nothing from before.

    **Slow subscribers.** Each subscriber has a bounded buffer: an agent's
    mailbox (bounded only if the agent was spawned with
    ``mailbox_capacity``; an unbounded one never overflows), or a task
    subscription's ``buffer`` messages. [`publish`][hybrid.Topic.publish]
    never waits: a subscriber with no room gets the
    [`Overflow`][hybrid.Overflow] policy (the topic's ``overflow``, or its
    own): ``DROP_NEWEST``, ``DROP_OLDEST`` (task subscriptions only) or
    ``DISCONNECT`` (the default). [`publish_wait`][hybrid.Topic.publish_wait]
    waits for room instead: backpressure from the slowest subscriber. A
    dropped message is never silent: it is counted (per subscriber and in
    [`statistics()`][hybrid.Topic.statistics]) and logged on the
    ``hybrid.topic`` logger: a WARNING at a subscriber's first drop, then
    at most one WARNING a minute (trio's clock) per subscriber with the
    running count, and every other drop at DEBUG. A disconnection is a
    WARNING.

    **Failure.** An agent subscriber that has ended (or is finishing) is
    removed at the first publish that finds it so (DEBUG in the log;
    counted in ``ended``); until then it is still listed. A subscriber that
    ended or fell behind never makes a publish raise: the publisher learns
    of it from the return value (how many received the message) and
    `statistics()`.

    **Ordering.** Each subscriber gets messages in the order they were
    published: `publish` hands a message to every subscriber before it
    returns, so all subscribers see the messages of `publish` in the same
    order, and the messages of any one task in the order it published them.
    A `publish_wait` waiting for a slow subscriber may be overtaken there by
    messages that other tasks publish meanwhile. An agent's mailbox
    interleaves the topic's messages with its other messages.

    **Threads.** A topic belongs to one trio run and is used from its trio
    thread only: publishing from a worker thread (a sync state) raises
    `RuntimeError`; hop with ``trio.from_thread.run_sync(topic.publish,
    message)``.

    Args:
        message_type: the class of the messages (instances of subclasses
            are accepted too). An event class: a
            [`hybrid.Request`][hybrid.Request] subclass is refused.
        buffer: the default buffer size of task subscriptions (an int >= 1).
        overflow: the default policy for subscribers with no room.
        name: for logs, statistics and errors; default
            ``"Topic[MessageType]"``.

    Raises:
        TypeError: `message_type` is not a class, or is a `Request`; `buffer`
            is not an int; `overflow` is not an `Overflow`.
        ValueError: `buffer` is smaller than 1.

    Example:
        ```python
        prices = hybrid.Topic(Price, buffer=32, overflow=hybrid.Overflow.DROP_OLDEST)
        async def chart(updates: hybrid.Subscription[Price]) -> None:
            async with updates:
                async for price in updates:
                    draw(price)

        async with trio.open_nursery() as nursery:
            prices.subscribe(hybrid.spawn(nursery, Ledger()), overflow=hybrid.Overflow.DISCONNECT)
            # Subscribe here, not in the task: nothing published from now on is missed.
            nursery.start_soon(chart, prices.subscription())
            prices.publish(Price("ACME", 12.5))  # -> 2: both have the price
            await prices.publish_wait(Price("ACME", 12.6))  # waits while one has no room
            prices.close()  # the chart's loop ends; the ledger is unsubscribed
        ```
    """

    __slots__ = ("_buffer", "_hub", "_message_type", "_overflow")

    def __init__(
        self,
        message_type: type[T],
        *,
        buffer: int = 16,
        overflow: Overflow = Overflow.DISCONNECT,
        name: str | None = None,
    ) -> None:
        if not isinstance(message_type, type):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"message_type must be a class, got {message_type!r}")
        if issubclass(message_type, Request):
            raise TypeError(
                f"a topic carries events, and {message_type.__qualname__} is a hybrid.Request "
                "(asked of one agent, answered once): publish an event class instead"
            )
        self._message_type = message_type
        self._buffer = _validate.count("buffer", buffer, minimum=1)
        self._overflow = _check_overflow(overflow)
        name = _check_name(name)
        self._hub = _Hub(f"Topic[{message_type.__qualname__}]" if name is None else name)

    @property
    def name(self) -> str:
        """The topic's name, as logs, statistics and errors say it.

        Example:
            ```python
            assert hybrid.Topic(Price).name == "Topic[Price]"
            ```
        """
        return self._hub.name

    @property
    def message_type(self) -> type[T]:
        """The class of the messages the topic carries.

        Example:
            ```python
            assert hybrid.Topic(Price).message_type is Price
            ```
        """
        return self._message_type

    @property
    def subscribers(self) -> tuple[Address[Any] | Subscription[T], ...]:
        """The current subscribers, in delivery order: agents' addresses and task subscriptions.

        An agent that has ended is listed until a publish finds it so.

        Example:
            ```python
            topic.subscribe(ledger)
            assert topic.subscribers == (ledger,)
            ```
        """
        members: tuple[Address[Any] | Subscription[T], ...] = tuple(self._hub.members)
        return members

    def subscribe(self, address: Address[Any], *, overflow: Overflow | None = None) -> None:
        """Add an agent: from now on, each message published is sent to it as an event.

        Its mailbox is its buffer: if the agent was spawned with a
        ``mailbox_capacity``, a full mailbox gets the `overflow` policy when
        a message is published (`publish_wait` waits for room instead).

        Args:
            address: the agent; it must have an ``@hybrid.on_event`` handler
                for the topic's message type.
            overflow: its policy when its mailbox is full; default: the
                topic's. ``Overflow.DROP_OLDEST`` is refused for a bounded
                mailbox (queued messages are not taken back).

        Raises:
            TypeError: `address` is not a `hybrid.Address`, or `overflow`
                not an `Overflow`.
            UnhandledMessage: the agent has no handler for the message type.
            AgentStopped: the agent has ended.
            ValueError: the agent is already subscribed, or `DROP_OLDEST`
                was asked (or is the topic's policy) for a bounded mailbox.
            trio.ClosedResourceError: the topic was closed.
            RuntimeError: called outside the topic's trio thread.

        Example:
            ```python
            ledger = hybrid.spawn(nursery, Ledger(), mailbox_capacity=100)
            prices.subscribe(ledger, overflow=hybrid.Overflow.DROP_NEWEST)
            ```
        """
        _require_trio("Topic.subscribe")
        hub = self._hub
        if not isinstance(address, Address):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"{hub.name}.subscribe takes an agent's hybrid.Address, got {address!r}; "
                "a task subscribes with `async with topic.subscription() as messages:`"
            )
        policy = self._overflow if overflow is None else _check_overflow(overflow)
        if hub.closed:
            raise trio.ClosedResourceError(f"{hub.name} was closed; {address.name} was not subscribed")
        if address in hub.members:
            raise ValueError(f"{address.name} is already subscribed to {hub.name}")
        if not address.handles(self._message_type):
            raise UnhandledMessage(
                f"{address.name} ({address.agent_type.__qualname__}) has no @hybrid.on_event handler for "
                f"{self._message_type.__qualname__}, so it cannot subscribe to {hub.name}"
            )
        if not address.is_alive:
            raise AgentStopped(f"{address.name} has ended; it was not subscribed to {hub.name}")
        if policy is Overflow.DROP_OLDEST and address.statistics().mailbox_capacity is not None:
            raise ValueError(
                f"Overflow.DROP_OLDEST applies to task subscriptions only: {address.name}'s bounded mailbox is "
                "its buffer, and a message queued there is not taken back; subscribe it with "
                "overflow=Overflow.DROP_NEWEST or Overflow.DISCONNECT"
            )
        hub.add(_AgentSubscriber(hub, address, policy))

    def unsubscribe(self, address: Address[Any]) -> bool:
        """Remove an agent; whether it was subscribed.

        Never raises for an agent that is not (or no longer) subscribed: the
        topic removes agents itself (ended, or disconnected for being too
        slow), so cleanup code need not know whether it did. A
        `publish_wait` waiting for room in the agent's mailbox skips it, so
        nothing more is queued for the agent once this returns (what is in
        its mailbox already stays there).

        Raises:
            TypeError: `address` is not a `hybrid.Address`.
            RuntimeError: called outside the topic's trio thread.

        Example:
            ```python
            if not prices.unsubscribe(ledger):
                log.info("the ledger had left already")
            ```
        """
        _require_trio("Topic.unsubscribe")
        if not isinstance(address, Address):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"{self._hub.name}.unsubscribe takes an agent's hybrid.Address, got {address!r}")
        member = self._hub.members.get(address)
        return member is not None and self._hub.remove(member, _State.CLOSED)

    def subscription(
        self, *, buffer: int | None = None, overflow: Overflow | None = None, name: str | None = None
    ) -> Subscription[T]:
        """Subscribe a task: the messages published from now on are buffered for it to iterate.

        The subscription starts at once (the messages published before the
        ``async with`` is entered are kept); leaving the ``async with`` (or
        `Subscription.close()`) unsubscribes and discards what is still
        buffered. An iteration ends when the topic is closed, after the
        buffered messages; it raises `SubscriberTooSlow` if the subscription
        was disconnected, also after the buffered messages. A subscription
        never closed costs at most its buffer, and under ``DISCONNECT`` is
        removed at its first overflow.

        Do not `publish_wait` from a task to a subscription that only it
        reads: with a full buffer, it would wait for itself.

        Args:
            buffer: the size of its buffer (an int >= 1); default: the topic's.
            overflow: its policy when the buffer is full; default: the topic's.
            name: for statistics, logs and errors; default
                ``"Topic[MessageType]#n"``.

        Raises:
            TypeError: `buffer` is not an int, `overflow` not an `Overflow`,
                `name` not a str.
            ValueError: `buffer` is smaller than 1.
            trio.ClosedResourceError: the topic was closed.
            RuntimeError: called outside the topic's trio thread.

        Example:
            ```python
            async with prices.subscription(buffer=8, overflow=hybrid.Overflow.DROP_OLDEST) as updates:
                async for price in updates:
                    draw(price)
            ```
        """
        _require_trio("Topic.subscription")
        hub = self._hub
        capacity = self._buffer if buffer is None else _validate.count("buffer", buffer, minimum=1)
        policy = self._overflow if overflow is None else _check_overflow(overflow)
        name = _check_name(name)
        if hub.closed:
            raise trio.ClosedResourceError(f"{hub.name} was closed; no subscription was made")
        hub.made += 1
        core = _TaskSubscriber(hub, f"{hub.name}#{hub.made}" if name is None else name, capacity, policy)
        handle: Subscription[T] = Subscription._make(core)
        core.key = handle
        hub.add(core)
        return handle

    def publish(self, message: T) -> int:
        """Hand `message` to every subscriber now; how many received it.

        Never blocks, and is not a schedule point. A subscriber with no room
        gets its overflow policy: under ``DROP_NEWEST`` or ``DISCONNECT`` it
        does not receive the message; under ``DROP_OLDEST`` it does (its
        oldest buffered message is discarded). Agents found ended are
        removed and not counted. With no subscribers, the message goes
        nowhere and 0 is returned.

        Raises:
            TypeError: `message` is not an instance of the topic's
                message type (the error names both).
            trio.ClosedResourceError: the topic was closed.
            RuntimeError: called outside the topic's trio thread (from a
                worker thread, use ``trio.from_thread.run_sync``).

        Example:
            ```python
            if prices.publish(Price("ACME", 12.5)) == 0:
                log.debug("nobody listens to prices")
            ```
        """
        self._check_message(message, "publish")
        return self._hub.publish(message)

    async def publish_wait(self, message: T) -> int:
        """Hand `message` to every subscriber, waiting for room where there is none; how many received it.

        Backpressure instead of dropping: the subscribers with room get the
        message at once, then this waits for each of the others in turn
        (agents through `Address.send_wait`). Subscribers that leave
        meanwhile (unsubscribed, ended, disconnected by a `publish`, or the
        topic closed) are skipped and not counted. Overflow policies do
        not apply.

        Cancellation: a cancelled `publish_wait` may have delivered the
        message to some subscribers only: those that had room, and those it
        had waited for before it was cancelled; it is counted as published,
        and the subscribers it did not reach are not counted as drops (the
        caller saw the cancellation). It is a checkpoint either way.

        Raises:
            TypeError: `message` is not an instance of the topic's
                message type (the error names both).
            trio.ClosedResourceError: the topic was closed (before the call;
                a close while it waits ends the wait).
            RuntimeError: called outside the topic's trio thread.
            LifecycleError: the calling agent is a subscriber and its own
                bounded mailbox is full (it would wait for itself); the
                message has reached the subscribers before it in order.

        Example:
            ```python
            async for price in feed:  # the feed slows down to the slowest subscriber
                await prices.publish_wait(price)
            ```
        """
        self._check_message(message, "publish_wait")
        return await self._hub.publish_wait(message)

    def close(self) -> None:
        """Close the topic: subscribers are removed, and publishing from now on raises.

        Task subscriptions yield what they had buffered, then their
        iteration ends (`receive` raises `trio.EndOfChannel`). Agents are
        unsubscribed (they are not told). `publish_wait` calls waiting for
        room stop waiting. Closing twice does nothing.

        Raises:
            RuntimeError: called outside the topic's trio thread.

        Example:
            ```python
            prices.close()  # the charts' `async for` loops end
            ```
        """
        _require_trio("Topic.close")
        self._hub.close()

    def statistics(self) -> TopicStatistics:
        """A snapshot: what was published, delivered, dropped; each subscriber's figures.

        Example:
            ```python
            stats = prices.statistics()
            if stats.dropped:
                slow = [s.name for s in stats.subscribers if s.dropped]
            ```
        """
        hub = self._hub
        return TopicStatistics(
            name=hub.name,
            published=hub.published,
            delivered=hub.delivered_count,
            dropped=hub.dropped,
            disconnected=hub.disconnected,
            ended=hub.ended,
            publishers_waiting=hub.publishers_waiting,
            closed=hub.closed,
            subscribers=tuple(member.statistics() for member in hub.members.values()),
        )

    def _check_message(self, message: object, what: str) -> None:
        _require_trio(f"Topic.{what}")
        hub = self._hub
        if hub.closed:
            raise trio.ClosedResourceError(f"{hub.name} was closed; {message!r} was not published")
        if not isinstance(message, self._message_type):
            raise TypeError(
                f"{hub.name} carries {self._message_type.__qualname__} messages, not "
                f"{type(message).__qualname__}: {message!r} was not published"
            )

    def __repr__(self) -> str:
        hub = self._hub
        closed = ", closed" if hub.closed else ""
        return f"<Topic {hub.name}: {len(hub.members)} subscribers{closed}>"


def _check_name(name: object) -> str | None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {name!r}")
    return name


def _check_overflow(overflow: object) -> Overflow:
    if not isinstance(overflow, Overflow):
        raise TypeError(f"overflow must be a hybrid.Overflow, got {overflow!r}")
    return overflow


@final
class Subscription(Generic[T_co]):
    """A task's subscription to a [`Topic`][hybrid.Topic]: an async iterator of its messages.

    Made by [`Topic.subscription()`][hybrid.Topic.subscription], subscribed
    from then on; ``async with`` closes it at the end. It buffers up to
    ``buffer`` messages; when the buffer is full, the topic's overflow
    policy (or the one given to ``subscription()``) decides, or a
    `publish_wait` waits for the reader.

    Like a trio receive channel: ``async for`` ends when the topic is
    closed (`receive` raises `trio.EndOfChannel`); using it after
    `close()` raises `trio.ClosedResourceError`. If it was disconnected for
    being too slow, it first yields what it had buffered, then raises
    [`SubscriberTooSlow`][hybrid.SubscriberTooSlow]. Several tasks may
    receive from one subscription: each message goes to one of them.

    Example:
        ```python
        async with prices.subscription(buffer=8) as updates:
            async for price in updates:
                draw(price)
        ```
    """

    __slots__ = ("_core",)

    _core: _TaskSubscriber

    def __init__(self) -> None:
        raise TypeError("Subscription has no public constructor: use Topic.subscription()")

    @classmethod
    def _make(cls, core: _TaskSubscriber) -> Subscription[Any]:
        subscription: Subscription[Any] = object.__new__(cls)
        subscription._core = core
        return subscription

    @property
    def name(self) -> str:
        """The subscription's name, as statistics, logs and errors say it.

        Example:
            ```python
            async with prices.subscription(name="chart") as updates:
                assert updates.name == "chart"
            ```
        """
        return self._core.name

    async def receive(self) -> T_co:
        """The next message, waiting for one if none is buffered.

        Always a checkpoint. A cancelled `receive` takes no message: what
        was buffered stays for the next call.

        Raises:
            SubscriberTooSlow: it was disconnected for being too slow, and
                has yielded everything it had buffered.
            trio.EndOfChannel: the topic was closed, and everything
                buffered was received.
            trio.ClosedResourceError: the subscription was closed.

        Example:
            ```python
            first = await updates.receive()
            ```
        """
        message: T_co = await self._core.receive()
        return message

    def receive_nowait(self) -> T_co:
        """The next buffered message, without waiting.

        Raises:
            trio.WouldBlock: no message is buffered now.
            SubscriberTooSlow: as for `receive`.
            trio.EndOfChannel: as for `receive`.
            trio.ClosedResourceError: the subscription was closed.

        Example:
            ```python
            try:
                latest = updates.receive_nowait()
            except trio.WouldBlock:
                latest = None
            ```
        """
        message: T_co = self._core.receive_nowait()
        return message

    def close(self) -> None:
        """Unsubscribe: no more messages arrive, and those still buffered are discarded.

        Tasks waiting in `receive` raise `trio.ClosedResourceError`;
        `publish_wait` calls waiting for room here skip it. The discarded
        messages are not counted as drops (they were delivered; the reader
        left). Closing twice does nothing; leaving ``async with`` closes.

        Raises:
            RuntimeError: called outside the topic's trio thread.

        Example:
            ```python
            updates = prices.subscription()
            try:
                first = await updates.receive()
            finally:
                updates.close()
            ```
        """
        _require_trio("Subscription.close")
        core = self._core
        if not core.hub.remove(core, _State.CLOSED) and core.state is not _State.CLOSED:
            core.detach(_State.CLOSED)  # it had left the topic already (disconnected, or the topic closed)

    def statistics(self) -> SubscriberStatistics:
        """Its figures: delivered, dropped, buffered now, buffer size, policy.

        Example:
            ```python
            if updates.statistics().dropped:
                log.info("the chart skipped some prices")
            ```
        """
        return self._core.statistics()

    def __aiter__(self) -> Self:
        """Iterate the messages; the iteration ends when the topic is closed.

        Example:
            ```python
            async for price in updates:
                draw(price)
            ```
        """
        return self

    async def __anext__(self) -> T_co:
        try:
            message: T_co = await self._core.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        return message

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        core = self._core
        return f"<Subscription {core.name} ({core.state.value}, {len(core.items)}/{core.capacity} buffered)>"
