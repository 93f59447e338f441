"""`open_nats`: the `Transport` on nats-py, the official NATS client, driven from trio.

No trio-native NATS client exists, so nats-py (asyncio) runs on a trio-asyncio loop
inside the trio run. A hop between the two worlds (``aio_as_trio``) costs 40-50 µs, as
much as a loopback round trip to the server, so the hot paths make none:

- **publish** is sync: it checks the message and hands it on. A message without
  headers, with nothing waiting before it, goes to the *direct writer*
  (`_shortcuts.DirectWriter`): the first of a burst is written to the socket at
  once, the rest of the scheduling round's together a round later, by a trio task.
  Any other message goes to the *outbox*, an ``asyncio.Queue``, which one
  long-lived asyncio task, the *pump*, drains into ``nc.publish`` (many publishes,
  one wake-up of the pump); so does everything after it, until the outbox is empty.
- **request** is trio-native: one wildcard subscription on this connection's reply
  inbox (``_INBOX.<random>.*``) hands each reply to the trio waiter registered under
  its token, from nats-py's reader, which runs on the trio thread (``Event.set``).
  Deadlines and cancellation are trio's own: the waiter is dropped in ``finally``, and
  a late reply finds no waiter and is dropped. A request made in a cancelled scope is
  not sent; one cancelled later may have been sent (and run). No-responders arrives on
  the inbox as a ``Status: 503`` message.
- **inbound** messages reach a sync handler from nats-py's reader task as they are
  parsed (`_shortcuts.hand_off`: no task per subscription), or trio through
  ``send_nowait`` into a memory channel, from nats-py's callback.

Each asyncio callback costs a trio scheduling round here (see `_shortcuts`): the
shortcuts spare each side of a request the pump's, nats-py's flusher's and the
subscription task's wake-ups. With a nats-py whose
internals differ (`_shortcuts.AVAILABLE` is False), every message takes the pump
and nats-py's callbacks: the same behaviour, slower.

``aio_as_trio`` is kept for the control plane: connect, subscribe, flush, close.

Ownership and shutdown: `open_nats` runs two trio tasks in a nursery of its own, each
in a shielded cancel scope that only `open_nats` cancels: the owner of the asyncio
loop, and the pump with the direct writer. An outer cancellation therefore cannot
stop the loop (and with it nats-py's flush and close) halfway; on the way out the outbox is flushed (bounded by
`close_timeout`), the connection closed, then the pump stopped, and the loop last.

Connection options that differ from nats-py's defaults, and why:

- ``pending_size=0``: nothing is buffered while disconnected. nats-py would otherwise
  send what was published during a reconnect afterwards, including requests whose
  callers already gave up; here they fail at once with `RemoteUnavailable`.
- ``max_reconnect_attempts=-1`` (forever) unless bounded: ``0`` would also mean
  forever in nats-py. The first connect is bounded by `connect_timeout` (nats-py's
  defaults take about two minutes to give up).
- ``ping_interval=2``, ``max_outstanding_pings=2``: a server that hangs (SIGSTOP, a
  partition) is noticed after about three intervals, seconds instead of minutes.
- an ``error_cb`` that logs to ``hybrid.remote`` (nats-py's default prints a
  traceback for every failed connection attempt).

Logging (logger ``hybrid.remote``): WARNING when the connection drops and when a
subscription falls behind (nats-py drops its messages); INFO when it is back;
ERROR with the traceback when a subscription's handler raises; DEBUG for each failed
connection attempt and each dropped publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import re
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar, cast, final

import outcome
import trio
from typing_extensions import ParamSpec

try:
    import nats.errors
    import trio_asyncio  # pyright: ignore[reportMissingTypeStubs] - untyped; wrapped in _aio and _trio below
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription
except ImportError as _error:  # pragma: no cover - the remote extra is installed with the test extra
    raise ImportError(
        "hybrid.remote needs nats-py and trio-asyncio: pip install 'trio-hybrid[remote]'", name=_error.name
    ) from _error

from hybrid import AgentStopped, _validate

from . import _shortcuts
from ._errors import MessageTooLarge, RemoteUnavailable
from ._names import check_name, check_pattern, check_subject
from ._transport import ConnectionState, Headers, Message, ReplyCallback, TransportStatistics

__all__ = ["NatsTransport", "open_nats"]

logger = logging.getLogger("hybrid.remote")

T = TypeVar("T")
P = ParamSpec("P")

_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""The header names nats-py sends (RFC 7230 tokens); it refuses others, late, in the pump."""

_HEADER_FRAME: Final = len(b"NATS/1.0\r\n") + len(b"\r\n")
"""The bytes of a header block besides its lines; each line adds ``name: value\\r\\n``."""

_NO_TIMEOUT: Final = 7 * 24 * 3600
"""The timeout given to nats-py's flush: never reached (see `NatsTransport._flush`)."""

_CLOSE_LIMIT: Final = 5.0
"""Seconds a failed connect waits for nats-py to close what it had opened."""

_CONNECTION_ERRORS: Final = (
    OSError,
    asyncio.TimeoutError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
)
"""What nats-py reports to ``error_cb`` for each failed (re)connection attempt: logged at DEBUG."""


def _aio(loop: asyncio.AbstractEventLoop, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`fn`, an asyncio coroutine function, made awaitable from trio: runs as a task of `loop`."""
    wrapped: Callable[P, Awaitable[T]] = trio_asyncio.aio_as_trio(fn, loop=loop)  # pyright: ignore[reportUnknownMemberType]
    return wrapped


def _trio(loop: asyncio.AbstractEventLoop, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`fn`, a trio async function, made awaitable from asyncio: runs as a trio task of `loop`."""
    wrapped: Callable[P, Awaitable[T]] = trio_asyncio.trio_as_aio(fn, loop=loop)  # pyright: ignore[reportUnknownMemberType]
    return wrapped


def _header_size(name: object, value: object) -> int:
    """The bytes of the header line ``name: value\\r\\n``; an error for what nats-py would refuse late, in the pump."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}: use ASCII letters, digits and !#$%&'*+-.^_`|~")
    if not isinstance(value, str):
        raise TypeError(f"the value of the header {name!r} must be a str, got {value!r}")
    return len(name) + len(value.encode()) + 4


@final
class _Waiter:
    """One request waiting for its reply: registered under its token until answered or given up."""

    __slots__ = ("on_reply", "subject", "token")

    def __init__(self, subject: str, token: str, on_reply: ReplyCallback) -> None:
        self.subject = subject
        """Where the request went (for error messages)."""
        self.token = token
        """Its key in `NatsTransport._waiters`, and the last token of its reply subject."""
        self.on_reply = on_reply
        """Called once with the reply, or with why there is none (`AgentStopped`: no
        responders; `RemoteUnavailable`), unless the request is given up first."""


_Outgoing = tuple[str, str, bytes, dict[str, str] | None, _Waiter | None]
"""What the outbox holds: subject, reply subject, payload, headers, and the request's waiter (or None)."""


@final
class _NatsSubscription:
    """A `Subscription`: its nats-py subscription and, for the channel form, the sending side."""

    __slots__ = ("_closed", "_send", "_sub", "_transport")

    def __init__(self, transport: NatsTransport, sub: NatsSubscription, send: trio.MemorySendChannel[Message] | None):
        self._transport = transport
        self._sub = sub
        self._send = send
        """Where the channel form's callback puts messages; closed when the subscription ends."""
        self._closed = False
        """Set by `aclose`, or by the transport when it closes (then there is nothing to unsubscribe)."""

    @property
    def subject(self) -> str:
        """The subject (or pattern) subscribed to."""
        return self._sub.subject

    @property
    def queue(self) -> str:
        """The queue group (``""`` when none)."""
        return self._sub.queue

    def _end(self) -> None:
        """Forget the subscription here and end its channel; nats-py's side is the caller's."""
        self._closed = True
        self._transport._subscriptions.discard(self)  # noqa: SLF001 - the transport's own record
        if self._send is not None:
            self._send.close()

    async def aclose(self) -> None:
        """Unsubscribe, and end the channel (if any). Idempotent; a no-op once the transport closed."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._end()
        # While reconnecting, nats-py forgets the subscription without sending UNSUB (the
        # server forgot it with the old connection) and does not restore it.
        # Shielded (it only queues an UNSUB): cancelled halfway, the subscription would
        # go on receiving with nothing to say it ended.
        with trio.CancelScope(shield=True), contextlib.suppress(nats.errors.ConnectionClosedError):
            await _aio(self._transport._loop, self._unsubscribe)()  # noqa: SLF001

    async def _unsubscribe(self) -> None:  # asyncio side
        writer = self._transport._writer  # noqa: SLF001
        if writer is not None:
            writer.write_buffered()  # what was published before goes before the UNSUB
        await self._sub.unsubscribe()

    def __repr__(self) -> str:
        queue = f" queue={self.queue!r}" if self.queue else ""
        return f"<subscription {self.subject!r}{queue}{' closed' if self._closed else ''}>"


@final
class NatsTransport:
    """The `Transport` on one nats-py connection; made by `open_nats` only.

    Every method is called from the trio thread. The callbacks of nats-py
    (``_on_*``) run on it too, as tasks of the trio-asyncio loop: they use
    trio's sync APIs only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, nc: Client) -> None:
        self._loop = loop
        """The trio-asyncio loop nats-py runs on (owned by `open_nats`)."""
        self._nc = nc
        """The nats-py client: connected by `open_nats` before any method is called."""
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        """Messages for the pump: put by `publish`/`request` (trio side), taken by `_pump` (asyncio side)."""
        self._waiters: dict[str, _Waiter] = {}
        """Requests waiting for a reply, by token: added by `request`; removed by `request`
        (given up), `_on_reply` (answered), `_publish_failed` or `_fail_waiters`."""
        self._inbox = f"_INBOX.{secrets.token_hex(11)}"
        """This connection's inbox prefix: requests are answered on ``<inbox>.<token>``."""
        self._tokens = itertools.count(1)
        """Request tokens (and `new_inbox` numbers): unique for the connection's life."""
        self._subscriptions: set[_NatsSubscription] = set()
        """The live subscriptions (not the reply inbox): ended when the transport closes."""
        self._closing = False
        """Set when `open_nats` starts closing: from then on the state is CLOSED."""
        self._changed = trio.Event()
        """Set (and replaced) at each change of the connection's state; `wait_*` wait on it."""
        self._dropped = 0
        """Publishes the pump could not send (`TransportStatistics.publishes_dropped`)."""
        self._flushes: set[trio.CancelScope] = set()
        """The scopes of the flushes under way: a disconnect cancels them."""
        self._flush_tasks: dict[asyncio.Future[None], int] = {}
        """nats-py's flushes under way (asyncio tasks), with the connection (count of reconnects) each began on."""
        self._direct = _shortcuts.AVAILABLE
        """Whether to use `_shortcuts`: direct writes and direct delivery to sync handlers."""
        self._writer = _shortcuts.DirectWriter(nc) if self._direct else None
        """Writes messages without headers from trio (run by `open_nats`), or None when not `_direct`."""

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ConnectionState:
        """Where the connection is now."""
        if self._closing or self._nc.is_closed:
            return ConnectionState.CLOSED
        if self._nc.is_connected:
            return ConnectionState.CONNECTED
        return ConnectionState.RECONNECTING

    @property
    def max_payload(self) -> int:
        """The largest message (payload and headers) the server accepts, in bytes (from its INFO)."""
        return self._nc.max_payload

    def statistics(self) -> TransportStatistics:
        """A snapshot of the transport's state and counters."""
        writer = self._writer
        return TransportStatistics(
            state=self.state,
            requests_waiting=len(self._waiters),
            publishes_queued=self._outbox.qsize() + (0 if writer is None else writer.buffered),
            publishes_dropped=self._dropped + (0 if writer is None else writer.dropped),
            subscriptions=len(self._subscriptions),
            reconnects=self._nc.stats["reconnects"],
        )

    async def wait_connected(self) -> None:
        """Return once the connection is up (at once if it is).

        Raises:
            RemoteUnavailable: the transport is closed, or closes meanwhile.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while (state := self.state) is not ConnectionState.CONNECTED:
            if state is ConnectionState.CLOSED:
                raise RemoteUnavailable("the connection to NATS is closed")
            await self._changed.wait()

    async def wait_disconnected(self) -> None:
        """Return once the connection is down: reconnecting or closed (at once if it is)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self.state is ConnectionState.CONNECTED:
            await self._changed.wait()

    def _state_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _unavailable(self) -> RemoteUnavailable:
        if self.state is ConnectionState.CLOSED:
            return RemoteUnavailable("the connection to NATS is closed")
        return RemoteUnavailable("not connected to NATS (reconnecting)")

    # ------------------------------------------------------------------ sending

    def _outgoing(self, subject: str, data: bytes, headers: Headers | None) -> dict[str, str] | None:
        """Check a message before it is queued; its headers as nats-py takes them."""
        check_subject(subject)
        size = memoryview(data).nbytes  # a TypeError here, not in the pump, for what is not bytes-like
        copied: dict[str, str] | None = None
        if headers is not None:
            copied = {}
            size += _HEADER_FRAME
            for name, value in headers.items():
                size += _header_size(name, value)
                copied[name] = value
        if self._closing or not self._nc.is_connected:
            raise self._unavailable()
        if size > self._nc.max_payload:
            raise MessageTooLarge(subject, size, self._nc.max_payload)
        return copied

    def publish(self, subject: str, data: bytes, headers: Headers | None = None, *, reply: str = "") -> None:
        """Send a message; sync, never blocks, at-most-once: see `Transport.publish`."""
        copied = self._outgoing(subject, data, headers)
        if reply:
            check_subject(reply)
        self._send((subject, reply, data, copied, None))

    def _send(self, item: _Outgoing) -> None:
        """Hand a checked message to the direct writer when nothing waits before it (`_shortcuts`), else to the pump."""
        subject, reply, data, headers, _ = item
        writer = self._writer
        if writer is not None:
            if headers is None and not self._outbox.qsize() and writer.offer(subject, reply, bytes(data)):
                return
            writer.write_buffered()  # they come before this message
            if writer.closing():  # the socket died; nats-py has not noticed yet
                writer.dropped += 1  # a request's waiter fails with the disconnect
                return
        self._outbox.put_nowait(item)

    def send_request(self, subject: str, data: bytes, headers: Headers | None, on_reply: ReplyCallback) -> str:
        """Send a request; its reply goes to `on_reply`: see `Transport.send_request`."""
        copied = self._outgoing(subject, data, headers)
        token = str(next(self._tokens))
        self._waiters[token] = waiter = _Waiter(subject, token, on_reply)
        reply = f"{self._inbox}.{token}"
        self._send((subject, reply, data, copied, waiter))
        return reply

    def forget(self, reply: str) -> None:
        """Give up the request answered on `reply`: its reply, if one comes, is dropped."""
        self._waiters.pop(reply[len(self._inbox) + 1 :], None)

    async def request(
        self, subject: str, data: bytes, headers: Headers | None = None, *, timeout: float | None = None
    ) -> Message:
        """Send a message and wait for the first answer: see `Transport.request`."""
        seconds = None if timeout is None else _validate.seconds("timeout", timeout, infinite=True)
        self._outgoing(subject, data, headers)  # raised before the checkpoint, as send_request would
        await trio.lowlevel.checkpoint_if_cancelled()  # a request made in a cancelled scope is never sent
        answered = trio.Event()
        results: list[outcome.Outcome[Message]] = []

        def on_reply(result: outcome.Outcome[Message]) -> None:
            results.append(result)
            answered.set()

        reply = self.send_request(subject, data, headers, on_reply)
        try:
            if seconds is None:
                await answered.wait()
            else:
                with trio.fail_after(seconds):
                    await answered.wait()
        finally:
            self.forget(reply)  # still there if given up (cancelled, timed out): a late reply is dropped
        return results[0].unwrap()

    def new_inbox(self) -> str:
        """A fresh subject, unique to this connection, to subscribe to for answers."""
        return f"{self._inbox}.i.{next(self._tokens)}"  # four tokens: never matched by the reply inbox

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every message published so far has reached the server: see `Transport.flush`."""
        seconds = _validate.seconds("timeout", timeout, positive=True)
        if self._closing or not self._nc.is_connected:
            raise self._unavailable()
        if self._writer is not None:
            self._writer.write_buffered()
        done = False
        # A disconnect cancels the scope (nats-py would wait for the lost PONG until the
        # timeout); trio's timeout is the only one (see `_flush`).
        with trio.move_on_after(seconds) as scope, contextlib.suppress(nats.errors.ConnectionClosedError):
            self._flushes.add(scope)
            try:
                await _aio(self._loop, self._flush)()
                done = True
            finally:
                self._flushes.discard(scope)
        if not done:
            if self.state is not ConnectionState.CONNECTED:
                raise self._unavailable()
            raise RemoteUnavailable(f"the server did not confirm a flush within {seconds} s")

    async def _flush(self) -> None:  # asyncio side
        await self._outbox.join()
        # nats-py's flush must never cancel its PONG future while the connection lives:
        # a PONG coming for a cancelled future ends nats-py's read loop (InvalidStateError).
        # So it gets no timeout of its own (trio's decides), and runs shielded (a flush
        # given up goes on waiting) until its PONG comes or the connection is replaced
        # or closed (`_drop_flushes`), when its future is no longer nats-py's.
        task = asyncio.ensure_future(self._nc.flush(_NO_TIMEOUT))
        self._flush_tasks[task] = self._nc.stats["reconnects"]
        task.add_done_callback(self._flush_done)
        await asyncio.shield(task)

    def _flush_done(self, task: asyncio.Future[None]) -> None:
        self._flush_tasks.pop(task, None)
        if not task.cancelled():
            task.exception()  # read: one never read would be raised in the loop

    def _drop_flushes(self, *, closed: bool) -> None:
        """End the flushes of a connection that was replaced (or of every one, once closed): no PONG will come."""
        current = self._nc.stats["reconnects"]
        for task, connection in list(self._flush_tasks.items()):
            if closed or connection < current:
                task.cancel()

    async def _pump(self) -> None:  # asyncio side: the one task that publishes
        outbox = self._outbox
        publish = self._nc.publish
        while True:
            item = await outbox.get()
            while True:  # then everything queued meanwhile, without waiting again
                subject, reply, data, headers, _ = item
                try:
                    await publish(subject, data, reply=reply, headers=headers)
                except nats.errors.Error as error:
                    self._publish_failed(item, error)
                outbox.task_done()
                try:
                    item = outbox.get_nowait()
                except asyncio.QueueEmpty:
                    break

    def _publish_failed(self, item: _Outgoing, error: nats.errors.Error) -> None:
        """The link dropped (or, rarely, the limits changed) between `publish`'s checks and the pump."""
        subject, _, _, _, waiter = item
        if waiter is None:
            self._dropped += 1
            logger.debug("a message to %r was dropped: %r", subject, error)
        elif self._waiters.pop(waiter.token, None) is not None:  # not given up meanwhile
            waiter.on_reply(outcome.Error(RemoteUnavailable(f"could not send the request to {subject!r}: {error}")))

    # ------------------------------------------------------------------ receiving

    def _on_reply(self, msg: Msg) -> None:  # the reply inbox's handler, called in nats-py's reader
        waiter = self._waiters.pop(msg.subject[len(self._inbox) + 1 :], None)
        if waiter is None:
            return  # a late reply: its request was given up
        headers = msg.headers
        if not msg.data and headers is not None and headers.get("Status") == "503":
            answer: outcome.Outcome[Message] = outcome.Error(
                AgentStopped(f"no responders: nothing subscribes to {waiter.subject!r}")
            )
        else:
            answer = outcome.Value(msg)
        try:
            waiter.on_reply(answer)
        except Exception:  # raised in nats-py's reader, it would end the connection's reading
            logger.exception("the reply callback of a request to %r failed", waiter.subject)

    async def subscribe(
        self, subject: str, *, queue: str = "", max_buffer: int = 1000
    ) -> tuple[_NatsSubscription, trio.MemoryReceiveChannel[Message]]:
        """Subscribe, receiving the messages from a trio memory channel.

        When `max_buffer` messages wait unread, delivery on this subscription
        waits (nats-py then buffers, up to its per-subscription limits of
        512k messages or 128 MB, past which it drops and logs). The channel ends
        when the subscription or the transport closes; closing the receiving
        side drops the messages that arrive afterwards.

        Args:
            subject: a subject or pattern (``*`` a whole token, ``>`` the last).
            queue: a queue group name: each message goes to one member.
            max_buffer: how many messages may wait in the channel.

        Raises:
            RemoteUnavailable: the transport is closed.
            ValueError: a bad subject or queue group name.
        """
        _validate.count("max_buffer", max_buffer)
        send, receive = trio.open_memory_channel[Message](max_buffer)
        wait_for_room = _trio(self._loop, send.send)

        async def deliver(msg: Msg) -> None:  # nats-py callback
            try:
                send.send_nowait(msg)
            except trio.WouldBlock:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await wait_for_room(msg)  # parks this subscription's delivery: backpressure
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the receiver is gone, or the subscription closed: dropped

        try:
            subscription = await self._subscribe(subject, queue, deliver, send)
        except BaseException:
            send.close()
            receive.close()
            raise
        return subscription, receive

    async def subscribe_handler(
        self, subject: str, handler: Callable[[Message], None], *, queue: str = ""
    ) -> _NatsSubscription:
        """Subscribe, calling the sync `handler` with each message, on the trio thread.

        The handler runs inside trio (trio's sync APIs work: ``send_nowait``,
        ``Event.set``) and must not block. An exception it raises is logged
        (logger ``hybrid.remote``, ERROR) and the subscription goes on.

        Raises:
            RemoteUnavailable: the transport is closed.
            ValueError: a bad subject or queue group name.
        """

        def deliver(msg: Msg) -> None:
            try:
                handler(msg)
            except Exception:
                logger.exception("the handler of a subscription to %r failed on a message to %r", subject, msg.subject)

        return await self._subscribe(subject, queue, deliver, None)

    async def _subscribe(
        self,
        subject: str,
        queue: str,
        deliver: Callable[[Msg], Awaitable[None]] | Callable[[Msg], None],
        send: trio.MemorySendChannel[Message] | None,
    ) -> _NatsSubscription:
        """Subscribe with `deliver`: an async callback (the channel form, `send` its channel) or a sync one."""
        check_pattern(subject)
        if queue:
            check_name(queue, "queue group")
        if self.state is ConnectionState.CLOSED:
            raise self._unavailable()
        # While reconnecting, nats-py keeps the subscription and sends it once connected.
        sub = await _aio(self._loop, self._nats_subscribe)(subject, queue, deliver)
        subscription = _NatsSubscription(self, sub, send)
        self._subscriptions.add(subscription)
        return subscription

    # ------------------------------------------------------------------ connection

    async def _connect(self, servers: list[str], timeout: float, options: dict[str, Any]) -> None:
        """Connect, or raise `RemoteUnavailable` after `timeout` seconds of failed attempts."""
        nc = self._nc
        try:
            with trio.fail_after(timeout):
                await _aio(self._loop, nc.connect)(
                    servers,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    **options,
                )
        except BaseException as error:
            self._closing = True
            # A half-open socket, a reconnection task: closed, within a bound (cancelled in
            # the middle of its connect, nats-py's close can wait forever); the loop ends next.
            # (A client cancelled before it connected asserts in its close: nothing to close.)
            with trio.move_on_after(_CLOSE_LIMIT, shield=True), contextlib.suppress(Exception):
                await _aio(self._loop, nc.close)()
            where = ", ".join(servers)
            if isinstance(error, trio.TooSlowError):
                last = f": {nc.last_error!r}" if nc.last_error is not None else ""
                raise RemoteUnavailable(f"could not connect to NATS at {where} within {timeout} s{last}") from None
            if isinstance(error, (nats.errors.Error, OSError)):
                raise RemoteUnavailable(f"could not connect to NATS at {where}: {error!r}") from error
            raise

    async def _nats_subscribe(
        self, subject: str, queue: str, deliver: Callable[[Msg], Awaitable[None]] | Callable[[Msg], None]
    ) -> NatsSubscription:
        """Subscribe (asyncio side); a sync `deliver` is handed each message by nats-py's reader (`_shortcuts`)."""
        # nats-py leaves the type of an argument we do not use (future=) unknown
        subscribe = self._nc.subscribe  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if self._writer is not None:
            self._writer.write_buffered()  # what was published before goes before the SUB
        if inspect.iscoroutinefunction(deliver):
            return await subscribe(subject, queue=queue, cb=deliver)
        handler = cast("Callable[[Msg], None]", deliver)
        if self._direct:
            sub: NatsSubscription = await subscribe(subject, queue=queue)
            _shortcuts.hand_off(sub, handler)  # before this task yields: no message can have come yet
            return sub

        async def cb(msg: Msg) -> None:
            handler(msg)

        return await subscribe(subject, queue=queue, cb=cb)

    async def _start(self) -> None:
        """Subscribe to the reply inbox (once connected)."""
        await _aio(self._loop, self._nats_subscribe)(f"{self._inbox}.*", "", self._on_reply)

    async def _close(self, timeout: float) -> None:
        """Flush (within `timeout` seconds), then close the connection; wake everything still waiting."""
        if self.state is ConnectionState.CONNECTED:
            with trio.move_on_after(timeout), contextlib.suppress(RemoteUnavailable):
                await self.flush(max(timeout, 0.001))
        self._closing = True
        self._state_changed()
        await _aio(self._loop, self._nc.close)()  # calls _on_closed, unless nats-py had closed already
        await self._on_closed()

    # ------------------------------------------------------------------ nats-py's callbacks

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, _CONNECTION_ERRORS):
            logger.debug("NATS connection error: %r", error)
        else:
            logger.warning("NATS: %r", error)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            logger.warning("lost the connection to NATS: reconnecting")
        if self._writer is not None:
            self._writer.drop()  # nothing is sent after a reconnect (pending_size=0)
        self._fail_waiters("the connection to NATS dropped while waiting for the reply (the request may have run)")
        self._state_changed()

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url
        logger.info("reconnected to NATS at %s", url.netloc if url is not None else "?")
        self._drop_flushes(closed=False)
        self._state_changed()

    async def _on_closed(self) -> None:
        self._drop_flushes(closed=True)
        self._fail_waiters("the connection to NATS closed while waiting for the reply")
        for subscription in list(self._subscriptions):
            subscription._end()  # noqa: SLF001 - this module's own class
        self._state_changed()

    def _fail_waiters(self, reason: str) -> None:
        """Fail every request waiting for a reply, and every flush under way."""
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.on_reply(outcome.Error(RemoteUnavailable(reason)))
        for scope in self._flushes:
            scope.cancel()

    def __repr__(self) -> str:
        return f"<NatsTransport {self._inbox} {self.state.value}>"


async def _own_loop(scope: trio.CancelScope, *, task_status: trio.TaskStatus[asyncio.AbstractEventLoop]) -> None:
    """Run the trio-asyncio loop until `open_nats` cancels `scope` (a shielded scope it made, and owns)."""
    with scope:
        async with trio_asyncio.open_loop() as loop:  # pyright: ignore[reportUnknownMemberType]
            task_status.started(loop)
            await trio.sleep_forever()


async def _start_loop(nursery: trio.Nursery, scope: trio.CancelScope) -> asyncio.AbstractEventLoop:
    """Start `_own_loop` in `nursery`, shielded (see `open_nats`); cancellation comes at the next checkpoint."""
    started: list[asyncio.AbstractEventLoop] = []
    with trio.CancelScope(shield=True):
        started.append(await nursery.start(_own_loop, scope))
    await trio.lowlevel.checkpoint_if_cancelled()
    return started[0]


async def _run_pump(transport: NatsTransport, scope: trio.CancelScope) -> None:
    """Run the pump and the direct writer until `open_nats` cancels `scope` (a shielded scope it made, and owns)."""
    with scope:
        async with trio.open_nursery() as nursery:
            if transport._writer is not None:  # noqa: SLF001
                nursery.start_soon(transport._writer.run)  # noqa: SLF001
            await _aio(transport._loop, transport._pump)()  # noqa: SLF001


def _urls(servers: object) -> list[str]:
    if isinstance(servers, str):
        servers = [servers]
    if isinstance(servers, Sequence):
        given = cast("Sequence[object]", servers)
        urls = [url for url in given if isinstance(url, str) and url]
        if urls and len(urls) == len(given):
            return urls
    raise ValueError(f"servers must be a URL or a non-empty sequence of URLs, got {servers!r}")


@asynccontextmanager
async def open_nats(
    servers: str | Sequence[str],
    *,
    name: str | None = None,
    connect_timeout: float = 5.0,
    reconnect_wait: float = 0.25,
    max_reconnect_attempts: int | None = None,
    ping_interval: float = 2.0,
    max_outstanding_pings: int = 2,
    close_timeout: float = 5.0,
) -> AsyncGenerator[NatsTransport]:
    """Connect to NATS for the duration of an ``async with`` block.

    Leaving the block flushes what was published (for up to `close_timeout`
    seconds), closes the connection and stops the tasks it ran, even when the
    block is left by cancellation. An exception leaving the block comes out
    unchanged (not in an ``ExceptionGroup``).

    Args:
        servers: a ``nats://host:port`` URL, or several (a cluster's seeds).
        name: the connection's name, shown by the server's monitoring.
        connect_timeout: seconds the first connect may take, all attempts
            included; also the limit of each reconnection attempt.
        reconnect_wait: seconds between two reconnection attempts to one server.
        max_reconnect_attempts: attempts per server before giving up (then the
            state is CLOSED for good); None: never give up.
        ping_interval: seconds between two pings to the server; after
            `max_outstanding_pings` unanswered ones the connection is
            considered dropped, so a hung server is noticed after about
            ``ping_interval * (max_outstanding_pings + 1)`` seconds.
        max_outstanding_pings: see `ping_interval`.
        close_timeout: seconds leaving the block may spend flushing.

    Raises:
        RemoteUnavailable: no server could be reached within `connect_timeout`.
        ValueError: a bad option value.

    Example:
        ```python
        async with open_nats("nats://127.0.0.1:4222", name="billing-1") as nats:
            subscription, messages = await nats.subscribe("hybrid.c1.agent.echo")
            ...
            answer = await nats.request("hybrid.c1.agent.echo", b"hi")
        ```
    """
    urls = _urls(servers)
    connect_timeout = _validate.seconds("connect_timeout", connect_timeout, positive=True)
    close_timeout = _validate.seconds("close_timeout", close_timeout)
    attempts = _validate.count("max_reconnect_attempts", max_reconnect_attempts, minimum=1, optional=True)
    # nats-py annotates its seconds as int but uses them as floats (asyncio.sleep, wait_for).
    options: dict[str, Any] = {
        "name": name,
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": _validate.seconds("reconnect_wait", reconnect_wait),
        "max_reconnect_attempts": -1 if attempts is None else attempts,
        "ping_interval": _validate.seconds("ping_interval", ping_interval, positive=True),
        "max_outstanding_pings": _validate.count("max_outstanding_pings", max_outstanding_pings, minimum=1),
        "pending_size": 0,
        "allow_reconnect": True,
    }
    escaped: BaseException | None = None
    # The loop's and the pump's scopes are made here and cancelled at the end, whatever
    # happened. Starting the loop is shielded (it does no I/O): a start cancelled from
    # outside would leave the loop's task, shielded from then on, in trio's temporary
    # nursery of the start, which would wait for it for ever.
    loop_scope = trio.CancelScope(shield=True)
    pump_scope = trio.CancelScope(shield=True)
    async with trio.open_nursery() as nursery:
        # Whatever leaves the block (the caller's exception, a cancellation, a failed
        # connect) is raised again after the nursery, so that it comes out bare, not in
        # the ExceptionGroup a nursery makes.
        try:
            loop = await _start_loop(nursery, loop_scope)
            transport = NatsTransport(loop, Client())
            nursery.start_soon(_run_pump, transport, pump_scope)
            await transport._connect(urls, connect_timeout, options)  # noqa: SLF001
            try:
                await transport._start()  # noqa: SLF001
                yield transport
            finally:
                with trio.CancelScope(shield=True):
                    await transport._close(close_timeout)  # noqa: SLF001
        except BaseException as error:  # raised again below, out of the nursery
            escaped = error
        finally:
            pump_scope.cancel()  # the loop goes last: the pump is one of its tasks
            loop_scope.cancel()
    if escaped is not None:
        raise escaped
