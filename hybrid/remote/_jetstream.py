"""JetStream and its key-value store, driven from trio through the `Transport`.

JetStream's API is JSON over NATS request/reply (``$JS.API.*``), and its data paths are
plain messages: a publish that waits for the stream's acknowledgement is a request; an
ack, nak or progress heartbeat is a one-way publish to the message's reply subject; a
pull is a publish whose answers come to an inbox; a KV write is a publish to
``$KV.<bucket>.<key>`` with headers; a KV read is a "direct get" request. So this module
is written against the `Transport` interface only, not against nats-py's JetStream
objects:

- **no hop**: nats-py's JetStream calls would each cost an ``aio_as_trio`` hop (40-50 µs)
  and its pull subscription one per batch; here a publish, a pull, an ack and every
  message received take the transport's trio-native paths (`Transport.request`,
  `Transport.publish`, `Transport.subscribe_handler`), the same as core messages;
- **one set of errors**: the transport already maps a dropped link to `RemoteUnavailable`
  and honours trio's deadlines; nats-py's JetStream layer has its own (``TimeoutError``
  subclasses, ``OutboundBufferLimitError``, ``NoStreamResponseError``, ...);
- **replaceable**: a trio-native NATS client that implements `Transport` gets JetStream
  and KV with it, unchanged;
- **no private access** to `NatsTransport`.

The price is that the JSON of streams, consumers and KV buckets is written here (the
fields hybrid needs, not every option), and the KV watcher is an ordered push consumer of
our own (`KeyValue.watch`), which also fixes nats-py's blind watcher (below).

What is here:

- `JetStream` (made by `jetstream`): `JetStream.work_queue_stream` (create or bind a
  work-queue stream with a duplicate window), `JetStream.durable_consumer` (create or
  update a durable pull consumer: ack wait, max deliver, max ack pending, backoff),
  `JetStream.publish` (with ``Nats-Msg-Id``, awaiting the `PubAck`; its ``duplicate``
  flag), `JetStream.pull` (a trio-native pull consumer, `Puller`, that keeps pull
  requests outstanding for the credit its user grants) delivering `Delivery` objects
  (`Delivery.ack`, `Delivery.nak` with a delay, `Delivery.in_progress`, `Delivery.term`:
  sync, no hop), `JetStream.key_value` (open or create a bucket), the infos and deletes.
- `KeyValue`: `get` (None when absent, deleted or expired), `put`, `create` (only if
  absent: `KeyExists`), `update` (compare-and-set on the revision: `WrongRevision`),
  both with a per-key TTL, `delete` (optionally at a revision), `purge`, `keys`, `watch`.

Per-key TTLs (nats-server 2.11 or newer, streams with ``allow_msg_ttl``): the TTL is the
``Nats-TTL`` header, whole seconds only (nats-py truncates 0.5 to ``0``, which the server
refuses), so ``ttl`` is an int >= 1 here. nats-py's ``kv.update()`` cannot set one; here
`KeyValue.update` can (it is the same publish with a ``Nats-Expected-Last-Subject-Sequence``
header), which is what renewing a lease needs. When a key expires, the server writes an
expiry *marker* (``Nats-Marker-Reason: MaxAge``) that lives `marker_ttl` seconds: it is
what a watcher sees (as a `KvOperation.EXPIRE` entry); while it lives, a read of the key
finds the marker (`KeyValue.get` says None) and `KeyValue.create` must write over it
(it does: see its docstring). `JetStream.key_value` checks the server's API level and
refuses a server older than 2.11, which would silently ignore TTLs.

The watcher is blind after a server restart in nats-py (its ordered consumer lives in
the server's memory; nats-py notices after up to 20 s). `KeyValue.watch` instead
recreates its consumer once the transport has reconnected (it checks at least every
`heartbeat` seconds, 2 by default), whenever three heartbeats are missing, and on a gap
in the sequence; it replays the current value of every key, and then sends `KvCaughtUp`
with the set of keys that hold a value: a key its user knew that is not in that set was
deleted, or expired, while the watch could not see.

Errors (below `RemoteError`)::

    RemoteError
    ├── RemoteUnavailable      the link is down; also: JetStream did not answer (not enabled
    │                          with -js, not ready after a restart, or no stream stores the
    │                          subject published to), or not within the timeout
    └── JetStreamError         the server refused a JetStream request: code, err_code, description
        ├── WrongRevision      a compare-and-set failed: the key is at another revision
        │   └── KeyExists      create: the key holds a value
        └── StreamFull         the stream refused to store a message (a limit: messages, bytes)

A bad argument (a key, subject, name, TTL) is a ``ValueError`` or ``TypeError`` raised
before any I/O. A publish that failed with `RemoteUnavailable` after it was sent may have
been stored: publish again with the same ``msg_id`` (deduplicated within the window).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import math
import re
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, final

import attrs
import trio

from hybrid import AgentStopped, _validate

from ._errors import RemoteError, RemoteUnavailable
from ._names import check_subject
from ._transport import ConnectionState, Message, Transport

__all__ = [
    "ConsumerInfo",
    "Delivery",
    "JetStream",
    "JetStreamError",
    "KeyExists",
    "KeyValue",
    "KvCaughtUp",
    "KvEntry",
    "KvOperation",
    "PubAck",
    "Puller",
    "StreamFull",
    "StreamInfo",
    "WrongRevision",
    "jetstream",
]

logger = logging.getLogger("hybrid.remote")

_NS: Final = 1_000_000_000
"""Nanoseconds in a second: JetStream's durations are integers of nanoseconds."""

_KEY: Final = re.compile(r"[-/_=A-Za-z0-9]+(?:\.[-/_=A-Za-z0-9]+)*")
"""A KV key: dot-separated tokens of ``[-/_=A-Za-z0-9]`` (the KV rule; no wildcards)."""

_KEY_PATTERN: Final = re.compile(r"(?:[-/_=A-Za-z0-9]+|\*)(?:\.(?:[-/_=A-Za-z0-9]+|\*))*(?:\.>)?|>")
"""A KV key pattern for watches: a key whose tokens may be ``*``, and a last ``>``."""

_BUCKET: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A bucket name (the stream is ``KV_<bucket>``)."""

_WRONG_LAST_SEQUENCE: Final = (10071, 10164)
"""err_codes of a failed compare-and-set (wrong last sequence; and its constant form)."""

_STREAM_IN_USE: Final = 10058
"""err_code of a stream created again with a different configuration."""

_STORE_FAILED: Final = 10077
"""err_code of a message the stream refused to store (a limit: "maximum messages exceeded")."""

_MARKER_REASONS: Final = {"MaxAge": "EXPIRE", "Purge": "PURGE", "Remove": "DELETE"}
"""``Nats-Marker-Reason`` values of server-written markers, as `KvOperation` names."""


# ---------------------------------------------------------------------- errors


class JetStreamError(RemoteError):
    """The server refused a JetStream request.

    Attributes:
        code: the HTTP-like status (400 bad request, 404 not found, 503 unavailable, ...).
        err_code: JetStream's own error number (10058: a stream exists with another
            configuration, 10071: wrong last sequence, ...), 0 when none was given.
        description: the server's explanation.
    """

    def __init__(self, description: str, code: int = 0, err_code: int = 0) -> None:
        super().__init__(f"JetStream: {description} (code {code}, err_code {err_code})")
        self.description = description
        """The server's explanation."""
        self.code = code
        """The HTTP-like status."""
        self.err_code = err_code
        """JetStream's error number."""

    def __reduce__(self) -> tuple[type[JetStreamError], tuple[str, int, int]]:
        return type(self), (self.description, self.code, self.err_code)


class WrongRevision(JetStreamError):
    """A compare-and-set failed: the key is not at the expected revision (someone else wrote it)."""


class KeyExists(WrongRevision):
    """`KeyValue.create` found the key holding a value."""


class StreamFull(JetStreamError):
    """The stream refused to store a message: one of its limits (messages, bytes) is reached."""


def _refusal(error: Mapping[str, Any], *, creating: bool = False) -> JetStreamError:
    """The `JetStreamError` (or subclass) of an ``{"error": {...}}`` answer."""
    description = str(error.get("description", "unknown error"))
    code = int(error.get("code", 0))
    err_code = int(error.get("err_code", 0))
    if err_code in _WRONG_LAST_SEQUENCE:
        return (KeyExists if creating else WrongRevision)(description, code, err_code)
    if err_code == _STORE_FAILED:
        return StreamFull(description, code, err_code)
    return JetStreamError(description, code, err_code)


# ---------------------------------------------------------------------- records


@attrs.frozen
class PubAck:
    """The stream's acknowledgement of a published message.

    Attributes:
        stream: the stream that stored it.
        sequence: its sequence number in the stream (for a duplicate, the original's).
        duplicate: True when a message with the same ``msg_id`` was stored within the
            stream's duplicate window: nothing new was stored.
    """

    stream: str
    sequence: int
    duplicate: bool


@attrs.frozen
class StreamInfo:
    """A snapshot of a stream (`JetStream.stream_info`).

    Attributes:
        name: the stream's name.
        subjects: the subjects it stores.
        messages: how many messages it holds now.
        first_sequence: the sequence of the oldest message it holds.
        last_sequence: the sequence of the newest message it stored.
        consumers: how many consumers it has.
        duplicate_window: seconds within which a repeated ``msg_id`` is a duplicate.
        max_messages: its limit of messages (-1: none).
    """

    name: str
    subjects: tuple[str, ...]
    messages: int
    first_sequence: int
    last_sequence: int
    consumers: int
    duplicate_window: float
    max_messages: int

    @classmethod
    def _from_json(cls, info: Mapping[str, Any]) -> StreamInfo:
        config, state = info["config"], info["state"]
        return cls(
            name=config["name"],
            subjects=tuple(config.get("subjects", ())),
            messages=state["messages"],
            first_sequence=state["first_seq"],
            last_sequence=state["last_seq"],
            consumers=state["consumer_count"],
            duplicate_window=config.get("duplicate_window", 0) / _NS,
            max_messages=config.get("max_msgs", -1),
        )


@attrs.frozen
class ConsumerInfo:
    """A snapshot of a consumer (`JetStream.consumer_info`).

    Attributes:
        stream: the stream it reads.
        name: its name.
        pending: messages in the stream not yet delivered to it.
        ack_pending: messages delivered and neither acked nor terminated yet.
        redelivered: messages delivered more than once (and not acked yet).
        waiting: pull requests waiting at the server.
        ack_wait: seconds a delivery may go unacknowledged before it is redelivered.
        max_deliver: deliveries of one message at most (-1: no limit).
        max_ack_pending: unacknowledged deliveries at most (-1: no limit).
        backoff: redelivery delays after an ack timeout, in seconds (empty: `ack_wait`).
    """

    stream: str
    name: str
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int
    ack_wait: float
    max_deliver: int
    max_ack_pending: int
    backoff: tuple[float, ...]

    @classmethod
    def _from_json(cls, info: Mapping[str, Any]) -> ConsumerInfo:
        config = info["config"]
        return cls(
            stream=info["stream_name"],
            name=info["name"],
            pending=info.get("num_pending", 0),
            ack_pending=info.get("num_ack_pending", 0),
            redelivered=info.get("num_redelivered", 0),
            waiting=info.get("num_waiting", 0),
            ack_wait=config.get("ack_wait", 0) / _NS,
            max_deliver=config.get("max_deliver", -1),
            max_ack_pending=config.get("max_ack_pending", -1),
            backoff=tuple(delay / _NS for delay in config.get("backoff", ())),
        )


class KvOperation(enum.Enum):
    """What a `KvEntry` records.

    - ``PUT``: the key holds `KvEntry.value`.
    - ``DELETE``: the key was deleted (`KeyValue.delete`).
    - ``PURGE``: the key was purged (`KeyValue.purge`).
    - ``EXPIRE``: its TTL (or the bucket's) ran out; the server wrote a marker.
    """

    PUT = "put"
    DELETE = "delete"
    PURGE = "purge"
    EXPIRE = "expire"


@attrs.frozen
class KvEntry:
    """One revision of a key.

    Attributes:
        key: the key.
        value: its value (``b""`` unless `operation` is PUT).
        revision: the revision: the sequence of this write in the bucket's stream.
        operation: what the write was.
    """

    key: str
    value: bytes
    revision: int
    operation: KvOperation = KvOperation.PUT


@attrs.frozen
class KvCaughtUp:
    """A watch has sent the current state of its keys; what follows is live.

    Sent once the watch started, and again each time it re-subscribed (after a
    reconnect, a missed heartbeat or a gap): after it, `keys` is the complete set
    of keys (matching the watch's pattern) that hold a value. A key known from
    before that is not in `keys` was deleted, or expired, while the watch was
    blind.

    Attributes:
        keys: the keys holding a value.
        restarts: 0 for the first, then how many times the watch re-subscribed.
    """

    keys: frozenset[str]
    restarts: int


# ---------------------------------------------------------------------- helpers


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


def _status(message: Message) -> str:
    """The status of a control message (``"408"``, ``"100"``...), or ``""`` for a message with a payload."""
    headers = message.headers
    if headers is None or message.data:
        return ""
    return headers.get("Status", "")


def _description(message: Message) -> str:
    headers = message.headers
    return "" if headers is None else str(headers.get("Description", ""))


def header_value(what: str, value: object, *, empty: bool = False) -> str:
    """A header value that arrives as it was sent (may be empty if `empty`), or ValueError naming `what`.

    nats-py strips a header value's ends and turns CR and LF into spaces: an id
    ``" a"`` would arrive as ``"a"`` (a duplicate of another job), a type name
    with a space at its end would name no class at all.
    """
    if not isinstance(value, str) or not (value or empty):
        raise ValueError(f"{what} must be a{'' if empty else ' non-empty'} str, got {value!r}")
    if value != value.strip() or "\r" in value or "\n" in value:
        raise ValueError(
            f"{what} must not start or end with whitespace nor hold a line break (a NATS header would change it),"
            f" got {value!r}"
        )
    return _validate.utf8(what, value)


_HEADER_NAME = re.compile(r"[!-9;-~]+")
"""A header name: printable ASCII without a space or a colon (what the NATS/HTTP header syntax allows)."""


def _header_name(name: object) -> str:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"a header name must be printable ASCII without a space or a colon, got {name!r}")
    return name


def _ttl(ttl: object) -> int | None:
    """A per-key TTL: None, or whole seconds >= 1."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"ttl must be None or a whole number of seconds (an int >= 1), got {ttl!r}")
    if ttl < 1:
        raise ValueError(f"ttl must be None or a whole number of seconds (an int >= 1), got {ttl!r}")
    return ttl


def _check_key(key: object, *, pattern: bool = False) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a key must be a str, got {key!r}")
    if (_KEY_PATTERN if pattern else _KEY).fullmatch(key):
        return key
    what = "key pattern" if pattern else "key"
    raise ValueError(
        f"invalid {what} {key!r}: use dot-separated tokens of ASCII letters, digits and -/_="
        + (" ('*' a whole token, '>' the last)" if pattern else "")
    )


def _check_stream_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {name!r}")
    if not name or len(name) > 255 or re.search(r"[.*>\s/\\\x00-\x1f\x7f]", name):
        raise ValueError(f"invalid {what} {name!r}: no '.', '*', '>', whitespace, slashes; 1 to 255 characters")
    return name


@final
class _Metadata:
    """What a JetStream delivery's reply subject tells.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or with
    ``<domain>.<account hash>`` after ``ACK`` (and a random token at the end).
    """

    __slots__ = ("consumer_sequence", "deliveries", "pending", "stream_sequence")

    def __init__(self, reply: str) -> None:
        tokens = reply.split(".")
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
            first = 4
        elif len(tokens) >= 11:  # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>...
            first = 6
        else:
            raise ValueError(f"not a JetStream reply subject: {reply!r}")
        if tokens[0] != "$JS" or tokens[1] != "ACK":
            raise ValueError(f"not a JetStream reply subject: {reply!r}")
        self.deliveries = int(tokens[first])
        self.stream_sequence = int(tokens[first + 1])
        self.consumer_sequence = int(tokens[first + 2])
        self.pending = int(tokens[first + 4])


# ---------------------------------------------------------------------- deliveries


@final
class Delivery:
    """A message delivered by a pull consumer; answer it with exactly one of `ack`, `nak`, `term`.

    The answers are one-way publishes (sync, no wait): `ack` and `term` can be
    lost if the link drops at that moment, and the message is then redelivered
    after the ack wait (at-least-once). The first answer counts; later ones are
    ignored. An answer that raised `RemoteUnavailable` was not sent, and can be
    sent again once the link is back.

    Attributes:
        subject: the subject it was published to.
        data: the payload.
        headers: its headers (``{}`` when none).
        deliveries: how many times it was delivered, this one included (1 the first time).
        stream_sequence: its sequence in the stream.
        pending: messages left in the consumer after it, when it was sent.

    Example:
        ```python
        delivery = await puller.receive()
        try:
            handle(delivery.data)
        except Exception:
            delivery.nak(delay=5.0)
        else:
            delivery.ack()
        ```
    """

    __slots__ = (
        "_answered",
        "_transport",
        "data",
        "deliveries",
        "headers",
        "pending",
        "reply",
        "stream_sequence",
        "subject",
    )

    def __init__(self, transport: Transport, message: Message, metadata: _Metadata) -> None:
        self._transport = transport
        self._answered = False
        """Set by the first `ack`, `nak` or `term` that was sent."""
        self.subject = message.subject
        self.data = message.data
        self.headers: Mapping[str, str] = message.headers or {}
        self.reply = message.reply
        """Where the answers go (the ``$JS.ACK...`` subject)."""
        self.deliveries = metadata.deliveries
        self.stream_sequence = metadata.stream_sequence
        self.pending = metadata.pending

    @property
    def answered(self) -> bool:
        """Whether `ack`, `nak` or `term` was sent."""
        return self._answered

    def _answer(self, body: bytes, *, final_answer: bool = True) -> None:
        if self._answered:
            return
        self._transport.publish(self.reply, body)
        self._answered = final_answer

    def ack(self) -> None:
        """Done: the stream forgets the message (a work queue deletes it).

        Raises:
            RemoteUnavailable: the link is down; nothing was sent.
        """
        self._answer(b"+ACK")

    def nak(self, delay: float | None = None) -> None:
        """Not done: deliver it again, after `delay` seconds (None: at once).

        Raises:
            RemoteUnavailable: the link is down; nothing was sent.
        """
        if delay is None or delay <= 0:
            self._answer(b"-NAK")
        else:
            delay = _validate.seconds("delay", delay)
            self._answer(b"-NAK " + json.dumps({"delay": _ns(delay)}).encode())

    def in_progress(self) -> None:
        """Still working on it: restart the ack wait (a heartbeat; can be sent many times).

        Raises:
            RemoteUnavailable: the link is down; nothing was sent.
        """
        self._answer(b"+WPI", final_answer=False)

    def term(self, reason: str = "") -> None:
        """Never deliver it again (a work queue deletes it); `reason` shows in the server's advisory.

        Raises:
            RemoteUnavailable: the link is down; nothing was sent.
        """
        self._answer(b"+TERM" + (b" " + reason.encode() if reason else b""))

    def __repr__(self) -> str:
        return f"<Delivery {self.subject!r} #{self.stream_sequence} delivery {self.deliveries}>"


# ---------------------------------------------------------------------- pulls


@final
class _PullRequest:
    __slots__ = ("deadline", "remaining")

    def __init__(self, remaining: int, deadline: float) -> None:
        self.remaining = remaining
        """Messages this request may still bring."""
        self.deadline = deadline
        """When it is given up locally (its expiry plus a margin), in trio time."""


@final
class Puller:
    """A pull consumer read from trio: made by `JetStream.pull` only.

    Its user *grants* credit (`grant`): how many more messages it can take. The
    puller keeps pull requests outstanding at the server for that credit (up to
    `max_batch` messages each, expiring after `expires` seconds and then renewed;
    while requests are outstanding, new credit is asked for once it reaches half
    a batch), so the server delivers as soon as messages come, and never more
    than was granted: an idle worker grants more and pulls more
    (work stealing, with no coordinator). Messages arrive through one inbox
    subscription whose sync handler queues them, with no task switch per message.

    When the link drops, the outstanding requests are given up (the server forgets
    them, or answers them later: such a late message is delivered anyway) and their
    credit goes back to the pool; new requests are sent once the link is back.
    """

    def __init__(self, transport: Transport, stream: str, consumer: str, *, expires: float, max_batch: int) -> None:
        self._transport = transport
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._expires = expires
        self._max_batch = max_batch
        self._refill = max(1, max_batch // 2)
        """Credit that is asked for at once even while other requests are outstanding."""
        self._inbox = transport.new_inbox()
        """Pull requests are answered on ``<inbox>.<token>``."""
        self._tokens = 0
        self._pulls: dict[str, _PullRequest] = {}
        """Outstanding pull requests by token, oldest first: added by `_run`, removed when they end."""
        self._unrequested = 0
        """Credit granted and not yet asked for (in no outstanding request)."""
        self._ready: deque[Delivery] = deque()
        """Delivered messages not yet taken by `receive`."""
        self._released: list[Delivery] = []
        """Messages handed back by `release`: nak'd when the pull block ends."""
        self._arrived = trio.Event()
        """Set when `_ready` gets a message, or the puller ends; replaced by `receive`."""
        self._wake = trio.Event()
        """Set when `_run` has something to do (credit, an ended request); replaced by `_run`."""
        self._resume_at = -math.inf
        """No pull request before this trio time (a backoff after the server refused one)."""
        self._ended: str | None = None
        """Why `receive` raises `RemoteUnavailable`: the transport closed, or the puller's block ended."""
        self.requests_sent = 0
        """Pull requests sent so far."""
        self.delivered = 0
        """Messages received so far."""

    @property
    def outstanding(self) -> int:
        """Credit granted and not used yet: messages that may still arrive."""
        return self._unrequested + sum(pull.remaining for pull in self._pulls.values())

    def grant(self, count: int = 1) -> None:
        """Allow `count` more messages to be delivered (sync, never blocks)."""
        self._unrequested += _validate.count("count", count, minimum=1)
        self._wake.set()

    async def receive(self) -> Delivery:
        """The next delivered message, waiting for one.

        Raises:
            RemoteUnavailable: the transport closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._ready:
            if self._ended is not None:
                raise RemoteUnavailable(self._ended)
            await self._arrived.wait()
            self._arrived = trio.Event()
        return self._ready.popleft()

    def receive_nowait(self) -> Delivery:
        """The next delivered message, if one waits.

        Raises:
            trio.WouldBlock: none waits.
        """
        if not self._ready:
            raise trio.WouldBlock
        return self._ready.popleft()

    def release(self, delivery: Delivery) -> None:
        """Hand `delivery` back, unfinished: it is nak'd (delivered again at once) when the pull block ends.

        Not at once: a nak sent while this puller's pull requests wait at the
        server would be answered by delivering the message to them again, and,
        in the block's last moments, be lost with the subscription (then the
        message comes back only after the ack wait). Sent after the subscription
        ended, the nak makes it go to another puller.
        """
        self._released.append(delivery)

    def _end_pull(self, token: str) -> None:
        pull = self._pulls.pop(token, None)
        if pull is not None:
            self._unrequested += pull.remaining
            self._wake.set()

    def _on_message(self, message: Message) -> None:  # the inbox's sync handler, on the trio thread
        status = _status(message)
        if status:
            token = message.subject[len(self._inbox) + 1 :]  # a status comes to the request's own reply subject
            pull = self._pulls.get(token)
            left = (message.headers or {}).get("Nats-Pending-Messages")
            if pull is not None and left is not None and left.isdigit():
                pull.remaining = int(left)  # the server's count is the truth
            if status not in ("404", "408"):  # 409 (consumer deleted, max waiting...), 503 (no consumer)
                logger.warning(
                    "a pull from %r ended with %s %s: pulling again in 1 s",
                    self._subject,
                    status,
                    _description(message),
                )
                self._resume_at = trio.current_time() + 1.0
            self._end_pull(token)
            return
        try:
            metadata = _Metadata(message.reply)
        except ValueError:
            logger.warning("a pull from %r got a message that is not a JetStream delivery: dropped", self._subject)
            return
        # A delivery keeps its own subject (the inbox's token is lost): it is counted
        # against the oldest request, as the server serves waiting requests in order.
        # With none left, it answers a request given up (after a reconnect): delivered anyway.
        for token, pull in self._pulls.items():
            pull.remaining -= 1
            if pull.remaining <= 0:
                del self._pulls[token]
            break
        self.delivered += 1
        self._ready.append(Delivery(self._transport, message, metadata))
        self._arrived.set()

    async def _run(self) -> None:
        """Keep pull requests outstanding for the credit granted."""
        transport = self._transport
        margin = min(1.0, self._expires)
        while True:
            now = trio.current_time()
            for token in [token for token, pull in self._pulls.items() if pull.deadline <= now]:
                self._end_pull(token)
            # Small grants are gathered (up to half a batch) while requests are outstanding:
            # one pull request per finished job would cost the server more than the job.
            wanted = self._unrequested >= self._refill or (self._unrequested > 0 and not self._pulls)
            if wanted and now >= self._resume_at:
                batch = min(self._unrequested, self._max_batch)
                self._tokens += 1
                token = str(self._tokens)
                body = json.dumps({"batch": batch, "expires": _ns(self._expires)}).encode()
                try:
                    transport.publish(self._subject, body, reply=f"{self._inbox}.{token}")
                except RemoteUnavailable:
                    pass  # the link is down: _watch_link wakes us once it is back
                else:
                    self.requests_sent += 1
                    self._unrequested -= batch
                    self._pulls[token] = _PullRequest(batch, now + self._expires + margin)
                    continue
            deadlines = [pull.deadline for pull in self._pulls.values()]
            if self._unrequested > 0 and self._resume_at > now:
                deadlines.append(self._resume_at)
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _watch_link(self) -> None:
        """Give up the outstanding requests when the link drops; wake `_run` when it is back."""
        transport = self._transport
        try:
            while True:
                await transport.wait_disconnected()
                for token in list(self._pulls):
                    self._end_pull(token)
                await transport.wait_connected()
                self._wake.set()
        except RemoteUnavailable:  # closed for good
            self._ended = "the pull consumer ended: the connection to NATS is closed"
            self._arrived.set()

    def __repr__(self) -> str:
        return f"<Puller {self._subject!r} outstanding={self.outstanding} ready={len(self._ready)}>"


# ---------------------------------------------------------------------- JetStream


@final
class JetStream:
    """JetStream on one transport: streams, consumers, publishing, pulling, KV buckets.

    Made by `jetstream` (sync, no I/O). Every method is one request to the
    server (no hop between trio and asyncio).

    Errors of every async method: `RemoteUnavailable` when the link is down or
    JetStream does not answer within `timeout`; `JetStreamError` (or a subclass)
    when the server refuses the request.
    """

    def __init__(self, transport: Transport, timeout: float) -> None:
        self._transport = transport
        self._timeout = timeout
        """Seconds to wait for each API answer or PubAck."""

    @property
    def transport(self) -> Transport:
        """The transport it speaks through."""
        return self._transport

    async def _request(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> Message:
        try:
            return await self._transport.request(subject, body, headers, timeout=self._timeout)
        except AgentStopped:
            if subject.startswith("$JS.API."):
                raise RemoteUnavailable(
                    "JetStream does not answer: not enabled on the server (nats-server -js), or not ready yet"
                ) from None
            raise RemoteUnavailable(
                f"no stream stores messages published to {subject!r} (or JetStream is not ready yet)"
            ) from None
        except trio.TooSlowError:
            raise RemoteUnavailable(
                f"JetStream did not answer a request to {subject!r} within {self._timeout} s"
                " (a publish may have been stored: publish again with the same msg_id)"
            ) from None

    async def _api(self, operation: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One JetStream API call: ``$JS.API.<operation>`` with `body` as JSON; the answer's JSON."""
        message = await self._request(f"$JS.API.{operation}", b"" if body is None else json.dumps(body).encode())
        answer: dict[str, Any] = json.loads(message.data)
        if "error" in answer:
            raise _refusal(answer["error"])
        return answer

    async def api_level(self) -> int:
        """The server's JetStream API level: 0 before 2.11 (no per-key TTL), 1 for 2.11, and up."""
        api: dict[str, Any] = (await self._api("INFO")).get("api") or {}
        return int(api.get("level") or 0)

    # ------------------------------------------------------------------ streams

    async def _create_or_update_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        name = config["name"]
        try:
            return await self._api(f"STREAM.CREATE.{name}", config)
        except JetStreamError as error:
            if error.err_code != _STREAM_IN_USE:
                raise
        return await self._api(f"STREAM.UPDATE.{name}", config)

    async def work_queue_stream(
        self,
        name: str,
        subjects: Sequence[str],
        *,
        duplicate_window: float = 120.0,
        max_messages: int | None = None,
        max_bytes: int | None = None,
        memory: bool = False,
    ) -> StreamInfo:
        """Create a work-queue stream, or bind to it (updating its limits) if it exists.

        A work queue deletes each message once a consumer acked (or terminated)
        it, and lets one consumer only read a subject. When a stream of that name
        exists, its limits are updated to these (the last caller's win); a stream
        that cannot be changed into this one (another retention) is an error.

        Args:
            name: the stream's name (no dots, wildcards or whitespace).
            subjects: the subjects it stores.
            duplicate_window: seconds within which a repeated ``msg_id`` is dropped.
            max_messages: the most messages it holds (None: no limit); when full, a
                publish fails with `StreamFull`.
            max_bytes: the most bytes it holds (None: no limit); likewise.
            memory: keep it in memory instead of files (lost when the server stops).

        Example:
            ```python
            info = await js.work_queue_stream("JOBS", ["jobs.thumbs"], duplicate_window=60)
            ```
        """
        _check_stream_name(name, "stream name")
        subjects = [check_subject(subject) for subject in subjects]
        if not subjects:
            raise ValueError("a stream needs at least one subject")
        window = _validate.seconds("duplicate_window", duplicate_window)
        config = {
            "name": name,
            "subjects": subjects,
            "retention": "workqueue",
            "storage": "memory" if memory else "file",
            "discard": "new",
            "duplicate_window": _ns(window),
            "max_msgs": _validate.count("max_messages", max_messages, minimum=1, optional=True) or -1,
            "max_bytes": _validate.count("max_bytes", max_bytes, minimum=1, optional=True) or -1,
            "num_replicas": 1,
        }
        return StreamInfo._from_json(await self._create_or_update_stream(config))  # noqa: SLF001

    async def stream_info(self, name: str) -> StreamInfo:
        """A snapshot of the stream `name`.

        Raises:
            JetStreamError: no such stream (code 404).
        """
        _check_stream_name(name, "stream name")
        return StreamInfo._from_json(await self._api(f"STREAM.INFO.{name}"))  # noqa: SLF001

    async def delete_stream(self, name: str) -> None:
        """Delete the stream `name` and everything in it.

        Raises:
            JetStreamError: no such stream (code 404).
        """
        _check_stream_name(name, "stream name")
        await self._api(f"STREAM.DELETE.{name}")

    # ------------------------------------------------------------------ consumers

    async def durable_consumer(
        self,
        stream: str,
        name: str,
        *,
        ack_wait: float = 30.0,
        max_deliver: int | None = None,
        max_ack_pending: int | None = 1000,
        backoff: Sequence[float] = (),
        filter_subject: str | None = None,
    ) -> ConsumerInfo:
        """Create a durable pull consumer on `stream`, or update it to this configuration.

        Many processes may pull from one durable consumer: each message goes to one
        of them (on a work queue, the only way to share it).

        Args:
            stream: the stream it reads.
            name: its name.
            ack_wait: seconds a delivery may stay unanswered (no ack, nak, term or
                progress) before the server delivers it again.
            max_deliver: deliveries of one message at most (None: no limit). A
                message that reached it stays in the stream, undelivered.
            max_ack_pending: unanswered deliveries at most, over all pullers (None:
                no limit): pulls wait while it is reached (backpressure).
            backoff: the delays before the 1st, 2nd... redelivery after an ack
                timeout (the last repeats); it replaces `ack_wait` (the server makes
                ``ack_wait = backoff[0]``) and needs ``max_deliver > len(backoff)``.
            filter_subject: read only this subject of the stream (None: all).

        Example:
            ```python
            await js.durable_consumer("JOBS", "workers", ack_wait=30, max_ack_pending=100)
            ```
        """
        _check_stream_name(stream, "stream name")
        _check_stream_name(name, "consumer name")
        config: dict[str, Any] = {
            "durable_name": name,
            "name": name,
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "ack_wait": _ns(_validate.seconds("ack_wait", ack_wait, positive=True)),
            "max_deliver": _validate.count("max_deliver", max_deliver, minimum=1, optional=True) or -1,
            "max_ack_pending": _validate.count("max_ack_pending", max_ack_pending, minimum=1, optional=True) or -1,
        }
        if backoff:
            config["backoff"] = [_ns(_validate.seconds("backoff", delay, positive=True)) for delay in backoff]
        if filter_subject is not None:
            config["filter_subject"] = check_subject(filter_subject)
        answer = await self._api(
            f"CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": config, "action": ""}
        )
        return ConsumerInfo._from_json(answer)  # noqa: SLF001

    async def consumer_info(self, stream: str, name: str) -> ConsumerInfo:
        """A snapshot of the consumer `name` of `stream`.

        Raises:
            JetStreamError: no such stream or consumer (code 404).
        """
        _check_stream_name(stream, "stream name")
        _check_stream_name(name, "consumer name")
        return ConsumerInfo._from_json(await self._api(f"CONSUMER.INFO.{stream}.{name}"))  # noqa: SLF001

    async def delete_consumer(self, stream: str, name: str) -> None:
        """Delete the consumer `name` of `stream`.

        Raises:
            JetStreamError: no such stream or consumer (code 404).
        """
        _check_stream_name(stream, "stream name")
        _check_stream_name(name, "consumer name")
        await self._api(f"CONSUMER.DELETE.{stream}.{name}")

    # ------------------------------------------------------------------ publish and pull

    async def publish(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        msg_id: str | None = None,
        ttl: int | None = None,
        expected_last_subject_sequence: int | None = None,
    ) -> PubAck:
        """Publish to a stream and wait for its acknowledgement.

        Args:
            subject: a subject some stream stores.
            data: the payload.
            headers: more headers.
            msg_id: the message's id (``Nats-Msg-Id``): a second message with the
                same id within the stream's duplicate window is not stored
                (`PubAck.duplicate`).
            ttl: the message's time to live, whole seconds >= 1 (streams that allow it).
            expected_last_subject_sequence: store only if the last message on
                `subject` has this sequence (0: none); else `WrongRevision`.

        Raises:
            RemoteUnavailable: the link is down, no stream stores `subject`, or no
                acknowledgement came within the timeout (then it may have been
                stored: publish again with the same `msg_id`).
            StreamFull: a limit of the stream is reached.
            WrongRevision: `expected_last_subject_sequence` did not match.
            JetStreamError: another refusal.
            ValueError: `msg_id` or a header value would not arrive as it is
                (empty, whitespace at an end, a line break, a lone surrogate).

        Example:
            ```python
            ack = await js.publish("jobs.thumbs", b"a.png", msg_id="a.png")
            if ack.duplicate:
                ...  # published before, within the window
            ```
        """
        sent = {
            _header_name(name): header_value(f"header {name!r}", value, empty=True)
            for name, value in (headers or {}).items()
        }
        if msg_id is not None:
            sent["Nats-Msg-Id"] = header_value("msg_id", msg_id)
        seconds = _ttl(ttl)
        if seconds is not None:
            sent["Nats-TTL"] = str(seconds)
        if expected_last_subject_sequence is not None:
            last = _validate.count("expected_last_subject_sequence", expected_last_subject_sequence)
            sent["Nats-Expected-Last-Subject-Sequence"] = str(last)
        message = await self._request(subject, data, sent or None)
        answer = json.loads(message.data)
        if "error" in answer:
            raise _refusal(answer["error"], creating=expected_last_subject_sequence == 0)
        return PubAck(stream=answer["stream"], sequence=answer["seq"], duplicate=bool(answer.get("duplicate")))

    @asynccontextmanager
    async def pull(
        self, stream: str, consumer: str, *, expires: float = 5.0, max_batch: int = 256
    ) -> AsyncGenerator[Puller]:
        """Pull from the durable consumer `consumer` of `stream` for the duration of a block.

        Nothing is delivered until credit is granted (`Puller.grant`). Leaving the
        block unsubscribes (the server then drops this puller's waiting pull
        requests); then the messages handed back with `Puller.release`, and those
        delivered and not taken, are nak'd, so that the server delivers them again
        at once, to another puller. A message the server sent just before the
        subscription ended is lost with it, and comes back after the ack wait.

        Args:
            stream: the stream.
            consumer: a durable pull consumer of it (`durable_consumer`).
            expires: seconds each pull request waits at the server for messages
                (then it is renewed): also how long a request lost in a server
                restart is waited for at most.
            max_batch: the most messages one pull request asks for.

        Example:
            ```python
            async with js.pull("JOBS", "workers") as puller:
                puller.grant(4)
                while True:
                    delivery = await puller.receive()
                    ...
                    delivery.ack()
                    puller.grant(1)
            ```
        """
        _check_stream_name(stream, "stream name")
        _check_stream_name(consumer, "consumer name")
        seconds = _validate.seconds("expires", expires, positive=True)
        batch = _validate.count("max_batch", max_batch, minimum=1)
        puller = Puller(self._transport, stream, consumer, expires=seconds, max_batch=batch)
        subscription = await self._transport.subscribe_handler(f"{puller._inbox}.*", puller._on_message)  # noqa: SLF001
        escaped: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(puller._run)  # noqa: SLF001
                nursery.start_soon(puller._watch_link)  # noqa: SLF001
                try:
                    yield puller
                except BaseException as error:  # raised again below, bare (not in the nursery's group)
                    escaped = error
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await subscription.aclose()
            puller._ended = puller._ended or "the pull consumer's block ended"  # noqa: SLF001
            # After the subscription ended (so the server dropped this puller's requests):
            # the messages handed back, and those delivered and never taken.
            released = puller._released + list(puller._ready)  # noqa: SLF001
            puller._released.clear()  # noqa: SLF001
            puller._ready.clear()  # noqa: SLF001
            with contextlib.suppress(RemoteUnavailable):
                for delivery in released:
                    delivery.nak()
            if released:
                logger.debug("released %d messages of %r", len(released), puller._subject)  # noqa: SLF001
        if escaped is not None:
            raise escaped

    # ------------------------------------------------------------------ KV

    async def key_value(
        self,
        bucket: str,
        *,
        history: int = 1,
        ttl: float | None = None,
        marker_ttl: float | None = 1.0,
        memory: bool = False,
    ) -> KeyValue:
        """Open the KV bucket `bucket`, creating it if it does not exist.

        An existing bucket is used as it is (the settings here only apply to its
        creation), but per-key TTLs must be enabled in it: a bucket made by an older
        client without them is an error. The server must be 2.11 or newer.

        Args:
            bucket: its name (``[A-Za-z0-9_-]``, 1 to 64).
            history: revisions kept per key (1 to 64).
            ttl: seconds every key lives after its last write (None: forever); per-key
                TTLs (`KeyValue.create`, `KeyValue.update`) work either way.
            marker_ttl: seconds an expiry marker lives (None: no markers, and then a
                watcher does not see keys expire); whole seconds, >= 1.
            memory: keep it in memory instead of files.

        Raises:
            JetStreamError: the server is older than 2.11, or the bucket exists
                without per-key TTLs.

        Example:
            ```python
            nodes = await js.key_value("hybrid_c1_nodes")
            revision = await nodes.create("node.n1", b"alive", ttl=3)
            ```
        """
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"invalid bucket name {bucket!r}: use 1 to 64 ASCII letters, digits, '-' or '_'")
        history = _validate.count("history", history, minimum=1)
        if history > 64:
            raise ValueError(f"history must be an int from 1 to 64, got {history}")
        max_age = 0.0 if ttl is None else _validate.seconds("ttl", ttl, positive=True)
        markers = None if marker_ttl is None else _validate.seconds("marker_ttl", marker_ttl, positive=True)
        if markers is not None and markers < 1:
            raise ValueError(f"marker_ttl must be None or >= 1 second, got {marker_ttl!r}")
        if await self.api_level() < 1:
            raise JetStreamError("per-key TTLs need nats-server 2.11 or newer (API level >= 1)", 0, 0)
        stream = f"KV_{bucket}"
        config: dict[str, Any] = {
            "name": stream,
            "subjects": [f"$KV.{bucket}.>"],
            "retention": "limits",
            "storage": "memory" if memory else "file",
            "discard": "new",
            "max_msgs_per_subject": history,
            "max_age": _ns(max_age),
            "duplicate_window": _ns(min(120.0, max_age) if max_age else 120.0),
            "allow_direct": True,
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_msg_ttl": True,
            "num_replicas": 1,
        }
        if markers is not None:
            config["subject_delete_marker_ttl"] = _ns(markers)
        try:
            await self._api(f"STREAM.CREATE.{stream}", config)
        except JetStreamError as error:
            if error.err_code != _STREAM_IN_USE:
                raise
            existing = (await self._api(f"STREAM.INFO.{stream}"))["config"]
            if not existing.get("allow_msg_ttl") or not existing.get("allow_direct"):
                raise JetStreamError(
                    f"the bucket {bucket!r} exists without per-key TTLs or direct gets: "
                    "recreate it (or use another bucket)",
                    error.code,
                    error.err_code,
                ) from None
        return KeyValue(self, bucket)

    async def delete_key_value(self, bucket: str) -> None:
        """Delete the KV bucket `bucket` and every key in it.

        Raises:
            JetStreamError: no such bucket (code 404).
        """
        await self.delete_stream(f"KV_{bucket}")


def jetstream(transport: Transport, *, timeout: float = 5.0) -> JetStream:
    """JetStream over `transport` (sync: no I/O until a method is called).

    Args:
        transport: a connected transport (`open_nats`).
        timeout: seconds to wait for each answer of the server (API calls and
            publish acknowledgements); past it, `RemoteUnavailable`.

    Example:
        ```python
        async with open_nats(url) as transport:
            js = jetstream(transport)
            await js.work_queue_stream("JOBS", ["jobs.thumbs"])
        ```
    """
    return JetStream(transport, _validate.seconds("timeout", timeout, positive=True))


# ---------------------------------------------------------------------- KV


def _kv_operation(headers: Mapping[str, str] | None) -> KvOperation:
    if not headers:
        return KvOperation.PUT
    operation = headers.get("KV-Operation")
    if operation == "DEL":
        return KvOperation.DELETE
    if operation == "PURGE":
        return KvOperation.PURGE
    reason = headers.get("Nats-Marker-Reason")
    if reason is not None:
        return KvOperation[_MARKER_REASONS.get(reason, "DELETE")]
    return KvOperation.PUT


@final
class KeyValue:
    """A JetStream KV bucket: made by `JetStream.key_value` only.

    Keys are dot-separated tokens of ASCII letters, digits and ``-/_=``; a bad
    key is a ``ValueError`` before any I/O. Every method is one request (or,
    for `create` over a deleted key, two), and raises `RemoteUnavailable` when
    the link is down or the server does not answer in time.
    """

    def __init__(self, js: JetStream, bucket: str) -> None:
        self._js = js
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return self._bucket

    async def _last(self, key: str) -> tuple[Message | None, int]:
        """The last message on `key` (None when none) and its revision (0 when none)."""
        message = await self._js._request(f"$JS.API.DIRECT.GET.{self._stream}.{self._prefix}{key}", b"")  # noqa: SLF001
        status = _status(message)
        if status == "404":
            return None, 0
        if status:  # pragma: no cover - a direct get by subject is answered with the message or 404
            raise JetStreamError(_description(message) or f"direct get failed with status {status}", int(status), 0)
        headers = message.headers or {}
        return message, int(headers.get("Nats-Sequence", "0"))

    async def get(self, key: str) -> KvEntry | None:
        """The current value of `key`, or None when it has none (never set, deleted, purged, expired).

        Example:
            ```python
            entry = await kv.get("agent.ledger")
            if entry is not None:
                node = entry.value.decode()
            ```
        """
        _check_key(key)
        message, revision = await self._last(key)
        if message is None or _kv_operation(message.headers) is not KvOperation.PUT:
            return None
        return KvEntry(key, message.data, revision)

    async def _write(
        self, key: str, value: bytes, headers: dict[str, str], *, ttl: int | None = None, last: int | None = None
    ) -> int:
        if ttl is not None:
            headers["Nats-TTL"] = str(ttl)
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        message = await self._js._request(f"{self._prefix}{key}", value, headers or None)  # noqa: SLF001
        answer = json.loads(message.data)
        if "error" in answer:
            raise _refusal(answer["error"], creating=last == 0)
        revision: int = answer["seq"]
        return revision

    async def put(self, key: str, value: bytes, *, ttl: int | None = None) -> int:
        """Set `key` to `value` whatever it holds; its new revision.

        Args:
            key: the key.
            value: the value.
            ttl: seconds the key lives (whole, >= 1; None: as the bucket says).
        """
        _check_key(key)
        return await self._write(key, value, {}, ttl=_ttl(ttl))

    async def create(self, key: str, value: bytes, *, ttl: int | None = None) -> int:
        """Set `key` to `value` only if it holds no value; its new revision.

        A key that was deleted, purged or expired (its marker still there) counts
        as absent: the write is made over the marker's revision, with a
        compare-and-set, so two creators racing still get one winner.

        Args:
            key: the key.
            value: the value.
            ttl: seconds the key lives (whole, >= 1; None: as the bucket says).

        Raises:
            KeyExists: the key holds a value.

        Example:
            ```python
            try:
                revision = await kv.create("agent.ledger", b"node-1")
            except KeyExists:
                ...  # someone holds the name
            ```
        """
        _check_key(key)
        seconds = _ttl(ttl)
        try:
            return await self._write(key, value, {}, ttl=seconds, last=0)
        except KeyExists as refused:
            message, revision = await self._last(key)
            if message is not None and _kv_operation(message.headers) is KvOperation.PUT:
                raise
            try:
                return await self._write(key, value, {}, ttl=seconds, last=revision)
            except WrongRevision as error:  # another creator won the race
                raise KeyExists(error.description, error.code, error.err_code) from refused

    async def update(self, key: str, value: bytes, *, revision: int, ttl: int | None = None) -> int:
        """Set `key` to `value` only if its last revision is `revision` (compare-and-set); its new revision.

        With `ttl`, the write also restarts the key's time to live: that renews a
        lease (nats-py's ``kv.update`` cannot).

        Raises:
            WrongRevision: the key is at another revision.

        Example:
            ```python
            revision = await kv.update("node.n1", b"alive", revision=revision, ttl=3)
            ```
        """
        _check_key(key)
        last = _validate.count("revision", revision, minimum=1)
        return await self._write(key, value, {}, ttl=_ttl(ttl), last=last)

    async def delete(self, key: str, *, revision: int | None = None) -> None:
        """Delete `key` (a delete marker; watchers see `KvOperation.DELETE`).

        Args:
            key: the key.
            revision: delete only if its last revision is this one (None: whatever it is).

        Raises:
            WrongRevision: `revision` was given and the key is at another one.
        """
        _check_key(key)
        last = None if revision is None else _validate.count("revision", revision, minimum=1)
        await self._write(key, b"", {"KV-Operation": "DEL"}, last=last)

    async def purge(self, key: str) -> None:
        """Remove `key` and all its revisions (a purge marker; watchers see `KvOperation.PURGE`)."""
        _check_key(key)
        await self._write(key, b"", {"KV-Operation": "PURGE", "Nats-Rollup": "sub"})

    async def keys(self, pattern: str = ">") -> list[str]:
        """The keys (matching `pattern`) that hold a value, sorted.

        Example:
            ```python
            nodes = await kv.keys("node.>")
            ```
        """
        async with self.watch(pattern, headers_only=True) as changes:
            async for change in changes:
                if isinstance(change, KvCaughtUp):
                    return sorted(change.keys)
        raise RemoteUnavailable(
            "the connection to NATS closed while listing keys"
        )  # pragma: no cover - closed mid-list

    @asynccontextmanager
    async def watch(
        self, pattern: str = ">", *, max_buffer: int = 1000, headers_only: bool = False, heartbeat: float = 2.0
    ) -> AsyncGenerator[trio.MemoryReceiveChannel[KvEntry | KvCaughtUp]]:
        """Watch the keys matching `pattern` for the duration of a block.

        The channel first gets the current entry of every matching key (values and
        the markers of deleted or expired ones), then a `KvCaughtUp`, then every
        change as it happens. After a reconnect, a missed heartbeat or a gap in
        the sequence, the watch re-subscribes and sends the current state and a
        `KvCaughtUp` again (so it is not blind after a server restart, as
        nats-py's watcher is for up to 20 s): entries may then repeat; compare
        revisions.

        When `max_buffer` changes wait unread, the server is asked to wait (flow
        control). The channel ends when the block ends or the transport closes.

        Args:
            pattern: a key, or a pattern (``*`` a token, ``>`` the rest).
            max_buffer: changes that may wait in the channel.
            headers_only: leave the values out (entries have ``b""``).
            heartbeat: seconds between the server's idle heartbeats; none for three
                of them means the watch is re-subscribed.

        Example:
            ```python
            async with nodes.watch("node.>") as changes:
                async for change in changes:
                    if isinstance(change, KvCaughtUp):
                        live &= change.keys
                    elif change.operation is KvOperation.PUT:
                        live.add(change.key)
                    else:
                        live.discard(change.key)
            ```
        """
        _check_key(pattern, pattern=True)
        buffer = _validate.count("max_buffer", max_buffer, minimum=1)
        beat = _validate.seconds("heartbeat", heartbeat, positive=True)
        send, receive = trio.open_memory_channel[KvEntry | KvCaughtUp](buffer)
        watch = _Watch(self, self._prefix + pattern, send, headers_only=headers_only, heartbeat=beat)
        escaped: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            try:
                with receive:
                    yield receive
            except BaseException as error:  # raised again below, bare (not in the nursery's group)
                escaped = error
            finally:
                nursery.cancel_scope.cancel()
        if escaped is not None:
            raise escaped

    def __repr__(self) -> str:
        return f"<KeyValue {self._bucket!r}>"


@final
class _Watch:
    """The ordered push consumer behind `KeyValue.watch`, re-subscribed when it cannot be trusted.

    One *incarnation* = one ephemeral consumer delivering to a fresh inbox.
    Messages reach `_on_message` (sync, on the trio thread); entries go to
    `_queue`, which `run` moves into the user's channel, answering the server's
    flow-control requests only once that queue is drained (backpressure).
    """

    def __init__(
        self,
        kv: KeyValue,
        subject: str,
        send: trio.MemorySendChannel[KvEntry | KvCaughtUp],
        *,
        headers_only: bool,
        heartbeat: float,
    ) -> None:
        self._kv = kv
        self._transport = kv._js._transport  # noqa: SLF001
        self._subject = subject
        self._send = send
        self._headers_only = headers_only
        self._heartbeat = heartbeat
        self._queue: deque[KvEntry | KvCaughtUp] = deque()
        """Changes not yet sent to the user's channel: written by `_on_message`, read by `run`."""
        self._flow: list[str] = []
        """Flow-control requests to answer once `_queue` is drained."""
        self._changed = trio.Event()
        """Set when `_queue` gets something or the incarnation must be replaced."""
        self._inbox = ""
        """The current incarnation's delivery subject."""
        self._sequence = 0
        """The consumer sequence of the last message of this incarnation (gap detection)."""
        self._snapshot: set[str] | None = set()
        """Keys holding a value while replaying the current state; None once caught up."""
        self._stale = False
        """Set when the incarnation cannot be trusted (a gap, a heartbeat's mismatch)."""
        self._last_seen = 0.0
        """trio time of the last message or heartbeat of this incarnation."""
        self._restarts = -1

    def _on_message(self, incarnation: int, message: Message) -> None:  # sync handler, on the trio thread
        if incarnation != self._restarts:
            return  # an old incarnation's, still queued when it was unsubscribed
        self._last_seen = trio.current_time()
        headers = message.headers or {}
        if _status(message) == "100" or (not message.data and "Status" in headers):
            if message.reply:  # a flow-control request
                self._flow.append(message.reply)
            stalled = headers.get("Nats-Consumer-Stalled")
            if stalled:
                self._flow.append(stalled)
            last = headers.get("Nats-Last-Consumer")
            if last is not None and int(last) != self._sequence:
                self._stale = True
            self._changed.set()
            return
        try:
            metadata = _Metadata(message.reply)
        except ValueError:
            return
        if metadata.consumer_sequence != self._sequence + 1:
            self._stale = True
            self._changed.set()
            return
        self._sequence = metadata.consumer_sequence
        key = message.subject[len(self._kv._prefix) :]  # noqa: SLF001
        operation = _kv_operation(headers)
        self._queue.append(
            KvEntry(key, b"" if self._headers_only else message.data, metadata.stream_sequence, operation)
        )
        if self._snapshot is not None:
            if operation is KvOperation.PUT:
                self._snapshot.add(key)
            else:
                self._snapshot.discard(key)
            if metadata.pending == 0:
                self._caught_up()
        self._changed.set()

    def _replaying(self) -> bool:
        """Whether the current state is still being replayed (`_on_message` may end it at any time)."""
        return self._snapshot is not None

    def _caught_up(self) -> None:
        assert self._snapshot is not None
        self._queue.append(KvCaughtUp(frozenset(self._snapshot), self._restarts))
        self._snapshot = None

    async def _subscribe(self) -> tuple[Any, str]:
        """Start a new incarnation: a fresh inbox, subscribed, and a consumer delivering to it."""
        self._restarts += 1
        self._inbox = self._transport.new_inbox()
        self._sequence = 0
        self._snapshot = set()
        self._stale = False
        self._flow.clear()
        self._last_seen = trio.current_time()
        subscription = await self._transport.subscribe_handler(
            self._inbox, functools.partial(self._on_message, self._restarts)
        )
        name = f"hybrid_watch_{secrets.token_hex(8)}"
        config = {
            "name": name,
            "deliver_subject": self._inbox,
            "deliver_policy": "last_per_subject",
            "filter_subject": self._subject,
            "ack_policy": "none",
            "max_deliver": 1,
            "flow_control": True,
            "idle_heartbeat": _ns(self._heartbeat),
            "headers_only": self._headers_only,
            "mem_storage": True,
            "num_replicas": 1,
            "inactive_threshold": _ns(max(60.0, 10 * self._heartbeat)),
        }
        stream = self._kv._stream  # noqa: SLF001
        try:
            info = await self._kv._js._api(  # noqa: SLF001
                f"CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": config, "action": "create"}
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await subscription.aclose()
            raise
        if info.get("num_pending", 0) == 0 and self._sequence == 0 and self._replaying():
            self._caught_up()  # nothing to replay (else the last replayed message says so)
            self._changed.set()
        return subscription, name

    async def _unsubscribe(self, subscription: Any, name: str) -> None:
        self._inbox = ""
        with trio.CancelScope(shield=True):
            await subscription.aclose()
            if self._transport.state is ConnectionState.CONNECTED:
                with contextlib.suppress(RemoteError), trio.move_on_after(1.0):
                    await self._kv._js._api(f"CONSUMER.DELETE.{self._kv._stream}.{name}")  # noqa: SLF001

    async def run(self) -> None:
        """Keep an incarnation subscribed and forward its changes, until cancelled or closed."""
        transport = self._transport
        async with self._send:
            retry = 0.1
            while True:
                try:
                    await transport.wait_connected()
                except RemoteUnavailable:
                    return  # closed for good: the channel ends
                try:
                    subscription, name = await self._subscribe()
                except RemoteError as error:
                    logger.debug(
                        "a KV watch of %r could not subscribe (%r): again in %.1f s", self._subject, error, retry
                    )
                    await trio.sleep(retry)
                    retry = min(retry * 2, 2.0)
                    continue
                retry = 0.1
                try:
                    await self._forward()
                finally:
                    await self._unsubscribe(subscription, name)

    async def _forward(self) -> None:
        """Forward changes until the incarnation must be replaced (a reconnect, a gap, silence)."""
        transport = self._transport
        reconnects = transport.statistics().reconnects
        while True:
            while self._queue:
                await self._send.send(self._queue.popleft())
            if self._flow:
                flow, self._flow = self._flow, []
                with contextlib.suppress(RemoteUnavailable):
                    for reply in flow:
                        transport.publish(reply, b"")
            if self._stale:
                logger.debug("a KV watch of %r saw a gap: re-subscribing", self._subject)
                return
            if transport.state is not ConnectionState.CONNECTED or transport.statistics().reconnects != reconnects:
                return
            silent_until = self._last_seen + 3 * self._heartbeat
            if trio.current_time() >= silent_until:
                logger.debug("a KV watch of %r missed its heartbeats: re-subscribing", self._subject)
                return
            self._changed = trio.Event()
            with trio.move_on_at(min(silent_until, trio.current_time() + self._heartbeat)):
                await self._changed.wait()
