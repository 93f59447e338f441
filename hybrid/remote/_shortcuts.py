"""The two places `NatsTransport` reaches past nats-py's public API, to skip asyncio wake-ups.

On a trio-asyncio loop each asyncio callback costs a trio scheduling round: the loop's
task takes one handle per round from a memory channel. nats-py's public paths make
several per message, one after the other:

- a publish appends to nats-py's buffer and wakes its *flusher* task, which writes
  (behind hybrid's own *pump*: two wake-ups before the bytes leave);
- a message received is put in its subscription's ``asyncio.Queue`` by the reader
  task, which wakes the subscription's own task, which calls the callback.

The shortcuts, each used only where it keeps nats-py's order and accounting:

- a `DirectWriter` writes a message without headers to the socket at once, from
  the caller's task, when nothing waits to be written before it (nats-py's buffer
  and the socket's are both empty); the messages that follow within the same
  scheduling round are written together a round later, by one trio task: the
  same bytes nats-py would send (``nats.protocol.command.pub_cmd``), the same
  counters. Otherwise a message takes the pump, in order after what waits.
- `hand_off` replaces a subscription's queue with a `_HandOff`, which calls a sync
  handler from the reader task as each message is parsed, in order: no task and
  no wake-up for the subscription.

`AVAILABLE` says whether the installed nats-py has the internals these rely on,
checked once at import; when it is False (a nats-py that changed them), the
transport uses the public API only: slower, the same behaviour.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Final, final

import nats.aio.client
import nats.aio.subscription
import nats.aio.transport
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol import command

__all__ = ["AVAILABLE", "DirectWriter", "hand_off"]


def _has_internals() -> bool:
    """Whether this nats-py keeps the attributes the shortcuts read and write, as 2.16 does."""
    try:
        client = inspect.getsource(nats.aio.client)
        subscription = inspect.getsource(nats.aio.subscription)
        transport = inspect.getsource(nats.aio.transport)
    except (OSError, TypeError):  # pragma: no cover - sources not shipped
        return False
    return (
        all(f"self.{name}" in client for name in ("_pending: ", "_pending_data_size", "_transport: ", "stats"))
        and "sub._pending_queue.put_nowait(msg)" in client
        and all(f"self.{name}" in subscription for name in ("_pending_queue", "_pending_size"))
        and "self._io_writer" in transport
    )


_pub_cmd: Callable[[str, str, bytes], bytes] = command.pub_cmd  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - untyped

AVAILABLE: Final = _has_internals()
"""Whether the installed nats-py has what the shortcuts rely on (checked at import)."""


def _stream(nc: Client) -> asyncio.StreamWriter | None:
    """`nc`'s stream writer while its connection is open by TCP (or TLS); else None."""
    writer: asyncio.StreamWriter | None = getattr(nc._transport, "_io_writer", None)  # noqa: SLF001
    if writer is None or writer.transport.is_closing():
        return None
    return writer


@final
class DirectWriter:
    """Writes messages without headers to `nc`'s socket from trio, ahead of nats-py's buffer.

    The first message of a burst is written at once, from the caller's task; the
    ones that follow before the next scheduling round are *buffered* and written
    together by `run` (a trio task): one system call for many, as nats-py's
    flusher does, with no asyncio wake-up.

    Invariant: the buffered messages come before everything in nats-py's buffer
    (``nc._pending``) and in the transport's outbox, since `offer` takes a
    message only while both are empty; so writing them out at any moment keeps
    the order of the publishes.
    """

    __slots__ = ("_buffered", "_lot", "_nc", "_wrote", "dropped")

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._buffered: list[bytes] = []
        """Messages (PUB commands) taken by `offer` and not yet written: written by `run`."""
        self._wrote = False
        """Whether a burst is under way: set by a direct write; cleared by `run` once a
        round passed with nothing buffered. While set, `run` is scheduled or about to be."""
        self._lot = trio.lowlevel.ParkingLot()
        """Where `run` waits for the next burst."""
        self.dropped = 0
        """Buffered messages dropped because the connection closed before `run` wrote them."""

    @property
    def buffered(self) -> int:
        """How many messages wait to be written."""
        return len(self._buffered)

    def offer(self, subject: str, reply: str, data: bytes) -> bool:
        """Take a message, writing it now or buffering it; False when it must wait behind others.

        False when nats-py's buffer holds something (a SUB not flushed yet) or the
        socket is backed up (then nats-py's flusher, which waits for the socket to
        drain, should take it): the caller queues it for nats-py, after
        `write_buffered`.
        """
        nc = self._nc
        if nc._pending:  # noqa: SLF001
            return False
        writer = _stream(nc)
        if writer is None or writer.transport.get_write_buffer_size():
            return False
        command = _pub_cmd(subject, reply, data)
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += len(data)
        if self._wrote:
            self._buffered.append(command)
        else:
            writer.write(command)
            self._wrote = True
            self._lot.unpark()
        return True

    def write_buffered(self) -> None:
        """Write what is buffered now (or drop it, if the connection is closed): before anything else goes out."""
        if not self._buffered:
            return
        buffered, self._buffered = self._buffered, []
        writer = _stream(self._nc)
        if writer is None:
            self.dropped += len(buffered)
        else:
            writer.write(b"".join(buffered))

    def closing(self) -> bool:
        """Whether the connection's socket is closing (dropped; nats-py may not know yet): a message now is lost."""
        writer: asyncio.StreamWriter | None = getattr(self._nc._transport, "_io_writer", None)  # noqa: SLF001
        return writer is not None and writer.transport.is_closing()

    def drop(self) -> None:
        """The connection dropped: drop what is buffered, here and in nats-py (nothing is sent after a reconnect).

        nats-py would write its buffer (messages its flusher could not write to a
        backed-up socket) to the next connection; nats-py sends the SUBs of the
        live subscriptions again itself once reconnected.
        """
        nc = self._nc
        pending = nc._pending  # noqa: SLF001
        nc._pending = []  # noqa: SLF001
        nc._pending_data_size = 0  # noqa: SLF001
        messages = sum(1 for command in pending if command.startswith((b"PUB ", b"HPUB ")))
        self.dropped += len(self._buffered) + messages
        self._buffered = []

    async def run(self) -> None:
        """Write each burst's buffered messages, a round after its first message; forever."""
        while True:
            await self._lot.park()
            while self._buffered:
                self.write_buffered()
                await trio.lowlevel.checkpoint()  # the round during which more may come
            self._wrote = False


@final
class _HandOff:
    """Stands in for a subscription's ``asyncio.Queue``: hands each message to a handler at once.

    The handler is called in nats-py's reader task, as the message is parsed; it
    must not block, and what it raises is the handler's wrapper's to catch (an
    exception here would reach nats-py's reader and drop the connection).

    ``put_nowait`` is all nats-py asks of the queue of a subscription made with no
    callback, unsubscribed with no limit and never drained, as the transport's are.
    """

    __slots__ = ("_handler", "_sub")

    def __init__(self, sub: Subscription, handler: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._handler = handler

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)  # noqa: SLF001 - added by nats-py just before
        self._handler(msg)


def hand_off(sub: Subscription, handler: Callable[[Msg], None]) -> None:
    """Deliver `sub`'s messages to `handler` from nats-py's reader task (see `_HandOff`).

    `sub` must have been made with no callback (no task reads its queue), and this
    called before the reader can see a message for it: in the asyncio task that
    subscribed, before it yields (nats-py's SUB is still in its buffer then).
    """
    sub._pending_queue = _HandOff(sub, handler)  # type: ignore[assignment]  # noqa: SLF001
