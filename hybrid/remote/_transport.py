"""The transport: the small interface hybrid.remote needs from a NATS client.

Everything above it (nodes, remote addresses, membership, queues) is written against
`Transport`, so that the first implementation, nats-py driven through trio-asyncio
(`hybrid.remote._nats`), can be replaced by a trio-native client without touching them.

The semantics every implementation keeps:

- **One connection** per transport, opened by an ``open_*`` async context manager that
  closes it when its block ends (queued messages flushed first, within a bound).
- **Never buffered through a reconnect.** While the connection is down, `publish` and
  `request` raise `RemoteUnavailable` at once; a request waiting for its reply when the
  connection drops fails with it too. A message is never sent late, after its caller
  gave up.
- **Hot paths never hop.** `publish` is sync and never blocks; inbound messages reach
  trio through a memory channel (`subscribe`) or a sync handler (`subscribe_handler`)
  without a task switch per message where the implementation can avoid one.
- **trio's deadlines rule.** `request` honours the caller's cancel scopes; a cancelled
  or timed-out request leaves nothing behind, and a late reply is dropped.
  `trio.Cancelled` is never caught or wrapped.
- **Checked in the sender.** Subjects (`hybrid.remote._names`) and the message size
  (`max_payload`, `MessageTooLarge`) are checked before anything is queued.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs
import outcome
import trio

__all__ = ["ConnectionState", "Headers", "Message", "ReplyCallback", "Subscription", "Transport", "TransportStatistics"]

Headers = Mapping[str, str]
"""Message headers: names (HTTP token characters) to values."""


class ConnectionState(enum.Enum):
    """Where a transport's connection is.

    - ``CONNECTED``: messages flow.
    - ``RECONNECTING``: the link dropped (or the server stopped answering pings);
      the transport is trying again. Sends and requests raise `RemoteUnavailable`;
      subscriptions are restored when the link is back.
    - ``CLOSED``: for good (the transport's block ended, or it gave up
      reconnecting). Everything raises `RemoteUnavailable`.
    """

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Message(Protocol):
    """A message received from NATS (read-only)."""

    @property
    def subject(self) -> str:
        """The subject it was published to."""
        ...

    @property
    def reply(self) -> str:
        """Where an answer goes (``""`` when none is expected)."""
        ...

    @property
    def data(self) -> bytes:
        """The payload."""
        ...

    @property
    def headers(self) -> Headers | None:
        """The headers, or None when the message has none."""
        ...


ReplyCallback = Callable[["outcome.Outcome[Message]"], None]
"""Where `Transport.send_request` hands a request's reply, or why there is none."""


class Subscription(Protocol):
    """Interest in a subject; `aclose` ends it."""

    @property
    def subject(self) -> str:
        """The subject (or pattern) subscribed to."""
        ...

    @property
    def queue(self) -> str:
        """The queue group (``""`` when none): one member of a group gets each message."""
        ...

    async def aclose(self) -> None:
        """Unsubscribe; a channel's receiving side then ends. Idempotent, and a no-op once closed."""
        ...


@attrs.frozen
class TransportStatistics:
    """A snapshot of a transport, from `Transport.statistics`.

    Attributes:
        state: where the connection is.
        requests_waiting: requests sent (or queued) and not yet answered.
        publishes_queued: messages handed to `publish` (or `request`) and not yet
            given to the connection.
        publishes_dropped: messages `publish` accepted that could not be sent
            afterwards (the link dropped before they went out: at-most-once).
        subscriptions: live subscriptions (the transport's own reply inbox excluded).
        reconnects: how many times the connection was re-established.
    """

    state: ConnectionState
    requests_waiting: int
    publishes_queued: int
    publishes_dropped: int
    subscriptions: int
    reconnects: int


class Transport(Protocol):
    """One connection to NATS: core publish/subscribe and request/reply, from trio.

    Errors of every method: `RemoteUnavailable` when the connection is not
    up; ``ValueError`` for a bad subject, queue group or header name;
    `MessageTooLarge` for a message over `max_payload`.
    """

    @property
    def state(self) -> ConnectionState:
        """Where the connection is now."""
        ...

    @property
    def max_payload(self) -> int:
        """The largest message (payload and headers) the server accepts, in bytes."""
        ...

    def statistics(self) -> TransportStatistics:
        """A snapshot of the transport's state and counters."""
        ...

    async def wait_connected(self) -> None:
        """Return once the connection is up (at once if it is).

        Raises:
            RemoteUnavailable: the transport is closed (or closes meanwhile).
        """
        ...

    async def wait_disconnected(self) -> None:
        """Return once the connection is down, reconnecting or closed (at once if it is)."""
        ...

    def publish(self, subject: str, data: bytes, headers: Headers | None = None, *, reply: str = "") -> None:
        """Send a message; sync, never blocks, at-most-once.

        The message is queued for the connection; if the link drops before it
        goes out, it is dropped (and counted in `TransportStatistics.publishes_dropped`).

        Args:
            subject: where to send it (no wildcards).
            data: the payload.
            headers: optional headers.
            reply: where the receiver should answer (``""``: nowhere).

        Raises:
            RemoteUnavailable: the connection is down; nothing is sent, ever.
            MessageTooLarge: the message exceeds `max_payload`.
            ValueError: a bad subject, reply subject or header name.
        """
        ...

    def send_request(self, subject: str, data: bytes, headers: Headers | None, on_reply: ReplyCallback) -> str:
        """Send a request without waiting: its reply goes to `on_reply`; sync, never blocks.

        `on_reply` is called once, on the trio thread, with ``outcome.Value(reply)``
        or ``outcome.Error(e)``: `hybrid.AgentStopped` (no responders) or
        `RemoteUnavailable` (the link dropped: the request may have run). It is
        not called once the request is given up with `forget`.

        Returns:
            The subject the reply comes to: unique to the request, it names it for `forget`.

        Raises:
            RemoteUnavailable: the connection is down; nothing is sent, ever.
            MessageTooLarge: the message exceeds `max_payload`.
            ValueError: a bad subject or header name.
        """
        ...

    def forget(self, reply: str) -> None:
        """Give up the request answered on `reply` (from `send_request`): its reply, if one comes, is dropped."""
        ...

    async def request(
        self, subject: str, data: bytes, headers: Headers | None = None, *, timeout: float | None = None
    ) -> Message:
        """Send a message and wait for the first answer.

        Args:
            subject: where to send it (no wildcards).
            data: the payload.
            headers: optional headers.
            timeout: seconds to wait for the answer (None: the caller's
                deadline only).

        Returns:
            The answer.

        Raises:
            hybrid.AgentStopped: nobody subscribes to `subject` (NATS answered
                "no responders").
            trio.TooSlowError: `timeout` passed; the request may still have run.
            RemoteUnavailable: the connection is down (nothing sent), or dropped
                while waiting (the request may have run).
            MessageTooLarge: the message exceeds `max_payload`.
            ValueError: a bad subject or header name.
        """
        ...

    async def subscribe(
        self, subject: str, *, queue: str = "", max_buffer: int = 1000
    ) -> tuple[Subscription, trio.MemoryReceiveChannel[Message]]:
        """Subscribe, receiving the messages from a trio memory channel.

        When `max_buffer` messages wait unread, delivery on this subscription
        waits (the client then buffers, up to its own limits). The channel ends
        when the subscription or the transport closes; closing the receiving
        side drops the messages that arrive afterwards.

        Args:
            subject: a subject or pattern (``*`` a whole token, ``>`` the last).
            queue: a queue group name: each message goes to one member.
            max_buffer: how many messages may wait in the channel.
        """
        ...

    async def subscribe_handler(
        self, subject: str, handler: Callable[[Message], None], *, queue: str = ""
    ) -> Subscription:
        """Subscribe, calling the sync `handler` with each message, on the trio thread.

        The handler runs inside trio (trio's sync APIs work: ``send_nowait``,
        ``Event.set``) and must not block. An exception it raises is logged and
        the subscription goes on.
        """
        ...

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every message published so far has reached the server.

        Raises:
            RemoteUnavailable: the connection is down, or the server did not
                confirm within `timeout` seconds.
        """
        ...

    def new_inbox(self) -> str:
        """A fresh subject, unique to this connection, to subscribe to for answers."""
        ...
