"""The transport's shortcuts past nats-py's public API (`hybrid.remote._shortcuts`), on a real server.

Written directly, a message must keep its place among those that take nats-py's
own path (with headers, behind a SUB not yet flushed, behind a backed-up socket),
and must never be sent after the connection it was meant for dropped. Every other
behaviour of the transport is tested both with and without the shortcuts
(``test_transport.py``'s ``transport`` fixture).
"""

from __future__ import annotations

import random
from contextlib import AbstractAsyncContextManager
from typing import Any

import outcome
import pytest
import trio

from hybrid.remote import RemoteUnavailable, _shortcuts
from hybrid.remote._nats import NatsTransport, _aio, open_nats
from hybrid.remote._transport import Message
from tests.remote.nats import NatsServer

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 2.0, "close_timeout": 2.0}


def connect(server: NatsServer) -> AbstractAsyncContextManager[NatsTransport]:
    return open_nats(server.url, **FAST)


async def numbers(messages: trio.MemoryReceiveChannel[Message], count: int) -> list[int]:
    """The numbers (first 4 bytes) of the next `count` messages, within 10 s."""
    with trio.fail_after(10):
        return [int.from_bytes((await messages.receive()).data[:4], "big") for _ in range(count)]


def test_the_installed_nats_py_has_what_the_shortcuts_rely_on() -> None:
    """If this fails, nats-py changed its internals: the transport still works, slower (update `_shortcuts`)."""
    assert _shortcuts.AVAILABLE


async def test_a_transport_uses_the_shortcuts(nats_server: NatsServer) -> None:
    """A message without headers is written at once: nothing waits in the outbox for the pump."""
    async with connect(nats_server) as transport:
        assert transport._writer is not None
        transport.publish("anywhere", b"x")
        assert transport._outbox.qsize() == 0
        assert transport._nc.stats["out_msgs"] == 1


@pytest.mark.parametrize("seed", range(4))
async def test_messages_keep_their_order_across_the_direct_writer_and_the_pump(
    nats_server: NatsServer, seed: int
) -> None:
    """Publishes with and without headers, in bursts of any length, arrive in the order they were made."""
    chance = random.Random(seed)
    count = 600
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("ordered", max_buffer=count)
        await receiver.flush()
        writer = sender._writer
        assert writer is not None
        for number in range(count):
            headers = {"Via": "pump"} if chance.random() < 0.3 else None
            sender.publish("ordered", number.to_bytes(4, "big"), headers)
            if headers is not None:
                assert not writer.buffered  # written out before the pump could overtake them
            if chance.random() < 0.1:
                await trio.lowlevel.checkpoint()  # a burst ends
        assert await numbers(messages, count) == list(range(count))


async def test_a_message_published_while_a_subscribe_waits_in_nats_py_goes_after_it(nats_server: NatsServer) -> None:
    """Published in the same asyncio step as a subscribe (its SUB still in nats-py's buffer): received.

    Written ahead of the SUB, the server would see no subscriber and drop it.
    """
    async with connect(nats_server) as transport:
        received = trio.Event()
        payloads: list[bytes] = []

        async def on_message(msg: Any) -> None:
            payloads.append(msg.data)
            received.set()

        async def subscribe_then_publish() -> None:  # asyncio side, no yield between the two
            await transport._nc.subscribe("fresh", cb=on_message)  # pyright: ignore[reportUnknownMemberType]
            assert transport._nc._pending  # the SUB has not been written yet
            transport.publish("fresh", b"after the SUB")

        await _aio(transport._loop, subscribe_then_publish)()
        with trio.fail_after(5):
            await received.wait()
        assert payloads == [b"after the SUB"]


async def test_a_backed_up_socket_sends_through_nats_py_in_order(nats_server: NatsServer) -> None:
    """While the socket's buffer holds data, messages take nats-py's flusher (which waits for it to drain), in order."""
    size = 512 * 1024
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("bulk", max_buffer=200)
        await receiver.flush()
        writer = sender._writer
        assert writer is not None
        for number in range(64):  # 32 MiB in one burst: more than a socket takes at once
            sender.publish("bulk", number.to_bytes(4, "big") + bytes(size))
        writer.write_buffered()  # as its task would in the next round
        for number in range(64, 128):
            sender.publish("bulk", number.to_bytes(4, "big") + bytes(size))
        assert sender._outbox.qsize() > 0  # the socket was backed up: these took the pump
        assert await numbers(messages, 128) == list(range(128))
        await sender.flush()
        assert sender.statistics().publishes_queued == 0


async def test_buffered_messages_are_dropped_with_their_connection_never_sent_after_a_reconnect(
    nats_server: NatsServer,
) -> None:
    """A burst caught by a dead socket: the buffered publishes are counted dropped, the request fails."""
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("doomed")
        await receiver.flush()
        replies: list[outcome.Outcome[Message]] = []
        sender.publish("doomed", (0).to_bytes(4, "big"))  # written at once
        sender.publish("doomed", (1).to_bytes(4, "big"))  # buffered until the next round
        sender.send_request("doomed", (2).to_bytes(4, "big"), None, replies.append)  # buffered
        stream = _shortcuts._stream(sender._nc)
        assert stream is not None
        stream.transport.abort()  # the socket dies before the round ends
        with trio.fail_after(10):
            await sender.wait_disconnected()
            await sender.wait_connected()
        assert sender.statistics().publishes_dropped == 2
        assert len(replies) == 1
        with pytest.raises(RemoteUnavailable):
            replies[0].unwrap()
        sender.publish("doomed", (3).to_bytes(4, "big"))
        assert await numbers(messages, 2) == [0, 3]  # 1 and 2 were never sent, not even late


async def test_a_handler_delivered_directly_that_raises_leaves_the_connection_up(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler runs inside nats-py's reader: its exception is logged there and reading goes on."""
    async with connect(nats_server) as transport:
        seen: list[bytes] = []
        both = trio.Event()

        def handler(message: Message) -> None:
            seen.append(message.data)
            if len(seen) == 2:
                both.set()
            if message.data == b"bad":
                raise ValueError("bad message")

        await transport.subscribe_handler("direct", handler)
        await transport.flush()
        for data in (b"bad", b"good"):
            transport.publish("direct", data)
        await transport.flush()
        with trio.fail_after(5):
            await both.wait()
        assert seen == [b"bad", b"good"]
        assert transport.statistics().reconnects == 0
        assert "failed on a message to 'direct'" in caplog.text
