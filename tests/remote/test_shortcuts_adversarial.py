"""The transport's shortcuts (`hybrid.remote._shortcuts`) under attack, on a real server.

Races and failure paths around the direct writer (bursts, drops, restarts, closing,
max-payload messages, publishes from handlers and from asyncio tasks) and around the
hand-off of messages to sync handlers in nats-py's reader (raising callbacks,
unsubscribes while messages arrive, cancellation). Each test checks one of the
transport's claims: publishes reach the server in order; nothing published before a
drop is sent after the reconnect, and what is dropped is counted; ``flush`` and
closing deliver what was published; a handler's exception never drops the
connection; cancellation leaves nothing behind.

The first group are regression tests of the bugs found this way (a raising reply
callback ending nats-py's reader, messages left in nats-py's buffer sent after a
reconnect, uncounted drops on a dead socket, a given-up flush killing the loop, a
cancelled ``aclose`` leaving the subscription alive).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import outcome
import pytest
import trio

from hybrid.remote import MessageTooLarge, RemoteUnavailable, _shortcuts
from hybrid.remote._nats import NatsTransport, _aio, open_nats
from hybrid.remote._transport import ConnectionState, Message, Subscription
from tests.remote.nats import NatsServer

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 2.0, "close_timeout": 2.0}
"""Options that keep the tests quick: reconnect attempts every 50 ms."""

ROOT = Path(__file__).parents[2]
"""The repository: the working directory of the child process of the loop-crash test."""

FILLER = bytes(512 * 1024)
"""A large payload: 64 of them (32 MiB) back a socket up against a paused server."""


def connect(server: NatsServer, **options: Any) -> AbstractAsyncContextManager[NatsTransport]:
    """`open_nats` to `server` with the `FAST` options (and `options` over them)."""
    return open_nats(server.url, **{**FAST, **options})


def number(data: bytes) -> int:
    """The number a test message carries in its first 4 bytes."""
    return int.from_bytes(data[:4], "big")


def numbered(value: int, size: int = 4) -> bytes:
    """A payload of `size` bytes (at least 4) starting with `value`."""
    return value.to_bytes(4, "big") + bytes(size - 4)


def tasks_living() -> int:
    """How many trio tasks are alive now."""
    return trio.lowlevel.current_statistics().tasks_living


async def numbers(messages: trio.MemoryReceiveChannel[Message], count: int) -> list[int]:
    """The numbers of the next `count` messages, within 20 s."""
    with trio.fail_after(20):
        return [number((await messages.receive()).data) for _ in range(count)]


async def eventually(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Wait until `condition()` holds, checking every 10 ms, for up to `seconds`."""
    with trio.fail_after(seconds):
        while True:
            if condition():
                return
            await trio.sleep(0.01)


def recorder(into: list[int]) -> Callable[[Message], None]:
    """A sync handler appending the number of each message to `into`."""

    def record(message: Message) -> None:
        into.append(number(message.data))

    return record


def keeper(into: dict[int, outcome.Outcome[Message]], index: int) -> Callable[[outcome.Outcome[Message]], None]:
    """A reply callback storing the outcome of request `index` in `into`."""

    def keep(result: outcome.Outcome[Message]) -> None:
        into[index] = result

    return keep


async def reconnected_with_the_request_failed(sender: NatsTransport, replies: list[outcome.Outcome[Message]]) -> None:
    """Wait (20 s at most) until `sender` reconnected; the one request it had in flight failed, unavailable."""
    with trio.fail_after(20):
        while sender.statistics().reconnects < 1 or sender.state is not ConnectionState.CONNECTED:
            await sender.wait_connected()
            await trio.sleep(0.01)
    assert len(replies) == 1
    with pytest.raises(RemoteUnavailable):
        replies[0].unwrap()


def subscriptions_consistent(transport: NatsTransport) -> bool:
    """Whether nats-py's subscriptions are exactly the transport's and its reply inbox."""
    return len(transport._nc._subs) == 1 + transport.statistics().subscriptions


# ---------------------------------------------------------------------- regressions


@pytest.mark.parametrize(
    "direct",
    [
        pytest.param(True, id="direct"),
        pytest.param(False, id="public"),
    ],
)
async def test_a_reply_callback_that_raises_leaves_the_connection_reading(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """A send_request callback raising on its reply: later requests still get their replies.

    With nats-py's public API the callback's exception is caught by nats-py (and
    logged); delivered directly from the reader, it must be caught as well.
    """
    monkeypatch.setattr(_shortcuts, "AVAILABLE", direct)
    async with connect(nats_server, ping_interval=60) as transport:

        def echo(message: Message) -> None:
            transport.publish(message.reply, b"echo:" + message.data)

        await transport.subscribe_handler("svc.echo", echo)
        await transport.flush()
        raised = trio.Event()

        def faulty(result: outcome.Outcome[Message]) -> None:
            raised.set()
            raise ValueError("a faulty reply callback")

        transport.send_request("svc.echo", b"first", None, faulty)
        with trio.fail_after(10):
            await raised.wait()
        with trio.fail_after(10):
            answer = await transport.request("svc.echo", b"second")
        assert answer.data == b"echo:second"
        assert transport.statistics().reconnects == 0


async def test_messages_left_in_nats_py_by_a_drop_are_not_sent_after_the_reconnect(nats_server: NatsServer) -> None:
    """Publishes and a request accepted before a drop, waiting behind a backed-up socket: never sent later.

    The server hangs (the socket backs up, nats-py's flusher waits for it to drain and
    the pump keeps handing messages to nats-py), then dies and comes back.
    """
    async with connect(nats_server, ping_interval=60) as sender:
        seen: list[bytes] = []
        await sender.subscribe_handler("late", lambda message: seen.append(message.data))
        await sender.flush()
        replies: list[outcome.Outcome[Message]] = []
        nats_server.pause()
        try:
            for _ in range(64):
                sender.publish("filler", FILLER)
            await trio.sleep(0.05)  # the direct writer's task writes the burst: the socket backs up
            stream = _shortcuts._stream(sender._nc)
            assert stream is not None
            assert stream.transport.get_write_buffer_size() > 0
            sender.publish("late", b"stuck")  # through the pump; nats-py's flusher then waits for the socket
            await eventually(lambda: not sender._outbox.qsize() and not sender._nc._pending)
            for index in range(10):
                sender.publish("late", b"late-%d" % index)
            sender.send_request("late", b"request", None, replies.append)
            await eventually(lambda: not sender._outbox.qsize() and len(sender._nc._pending) == 11)
            nats_server.kill()  # the server dies while hung: its sockets are reset
        finally:
            nats_server.resume()
        nats_server.start()
        await reconnected_with_the_request_failed(sender, replies)
        await sender.flush()
        sender.publish("late", b"after")
        await eventually(lambda: b"after" in seen)
        assert seen == [b"after"]  # nothing of before the drop, not even late
        assert sender.statistics().publishes_dropped >= 10


async def test_every_publish_accepted_on_a_dead_socket_is_counted_dropped(nats_server: NatsServer) -> None:
    """Publishes accepted after the socket died, before nats-py noticed: never sent, each counted."""
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("doomed")
        await receiver.flush()
        sender.publish("doomed", numbered(0))  # written at once
        sender.publish("doomed", numbered(1))  # buffered for the next round
        stream = _shortcuts._stream(sender._nc)
        assert stream is not None
        stream.transport.abort()  # the socket dies; nats-py learns it a few rounds later
        sender.publish("doomed", numbered(2))  # accepted: nats-py still says connected
        sender.publish("doomed", numbered(3), {"Via": "pump"})
        with trio.fail_after(20):
            await sender.wait_disconnected()
            await sender.wait_connected()
        await sender.flush()
        sender.publish("doomed", numbered(4))
        assert await numbers(messages, 2) == [0, 4]
        assert sender.statistics().publishes_dropped == 3


def _wait_stopped(pid: int) -> None:
    """Wait until the process `pid` is stopped (SIGSTOP is delivered asynchronously)."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rpartition(")")[2].split()[0] not in ("T", "t"):
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not stop")
        time.sleep(0.001)


async def abandoned_flush_child(url: str, pid: int) -> None:
    """The child process of the loop-crash test: a flush given up while the server hangs, then service.

    Prints ``ok`` once the transport worked again and closed; exits with 3 if that
    takes more than 25 s (the transport hangs, and cannot be cancelled).
    """
    watchdog = threading.Timer(25, os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()
    async with open_nats(url, **FAST) as transport:
        os.kill(pid, signal.SIGSTOP)
        try:
            _wait_stopped(pid)
            with pytest.raises(RemoteUnavailable, match="did not confirm a flush"):
                await transport.flush(timeout=0.2)
            await trio.sleep(3)  # nats-py's own flush (timeout ceil(0.2) + 1 = 2 s) gives up meanwhile
        finally:
            os.kill(pid, signal.SIGCONT)
        await transport.flush(timeout=10)
        print("flushed", flush=True)
    print("ok", flush=True)


async def test_a_flush_given_up_while_the_server_hangs_leaves_the_transport_working(nats_server: NatsServer) -> None:
    """After flush(timeout) fails against a hung server, the server wakes: the transport works and closes.

    Run in a child process: the failure is a hang that nothing can cancel.
    """
    process = nats_server._process
    assert process is not None
    code = (
        "import sys, trio\n"
        "from tests.remote.test_shortcuts_adversarial import abandoned_flush_child\n"
        "trio.run(abandoned_flush_child, sys.argv[1], int(sys.argv[2]))\n"
    )
    try:
        with trio.fail_after(90):
            result = await trio.run_process(
                [sys.executable, "-c", code, nats_server.url, str(process.pid)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
            )
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert b"ok" in result.stdout, result.stderr.decode(errors="replace")[-3000:]
    assert result.returncode == 0


async def test_a_cancelled_aclose_still_ends_the_subscription(nats_server: NatsServer) -> None:
    """aclose() in a cancelled scope closes anyway (trio's rule for aclose): the handler is not called again."""
    async with connect(nats_server) as transport:
        closed: list[bytes] = []
        subscription = await transport.subscribe_handler("topic", lambda message: closed.append(message.data))
        witnessed = trio.Event()
        await transport.subscribe_handler("topic", lambda message: witnessed.set())
        await transport.flush()
        with trio.CancelScope() as scope:
            scope.cancel()
            await subscription.aclose()
        transport.publish("topic", b"after the close")
        with trio.fail_after(10):
            await witnessed.wait()  # delivered in the same read, after any to the closed one
        assert closed == []
        assert subscriptions_consistent(transport)


# ---------------------------------------------------------------------- order


@pytest.mark.parametrize("seed", range(3))
async def test_order_holds_across_bursts_and_subscribes_or_unsubscribes_in_between(
    nats_server: NatsServer, seed: int
) -> None:
    """Bursts mixing headers, cut by subscribes and unsubscribes on the same connection: order kept.

    A subscribe made right after a burst must not overtake it either: the sender's
    own new subscription must not see the messages published before it.
    """
    chance = random.Random(seed)
    count = 400
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("ordered", max_buffer=count)
        await receiver.flush()
        watched: list[tuple[int, list[int]]] = []  # (last number published before it, numbers it saw)
        subscriptions: list[Subscription] = []
        for index in range(count):
            headers = {"Via": "pump"} if chance.random() < 0.2 else None
            sender.publish("ordered", numbered(index), headers)
            roll = chance.random()
            if roll < 0.05:
                seen: list[int] = []
                watched.append((index, seen))
                subscriptions.append(await sender.subscribe_handler("ordered", recorder(seen)))
            elif roll < 0.08 and subscriptions:
                await subscriptions.pop(chance.randrange(len(subscriptions))).aclose()
            elif roll < 0.15:
                await trio.lowlevel.checkpoint()
        assert await numbers(messages, count) == list(range(count))
        await sender.flush()
        assert watched
        for boundary, seen in watched:
            assert seen == sorted(seen)
            assert all(value > boundary for value in seen), (boundary, seen)
        assert subscriptions_consistent(sender)


async def test_a_subscribe_right_after_a_burst_does_not_see_the_burst(nats_server: NatsServer) -> None:
    """Publish a burst to a subject, then subscribe to it on the same connection: only later messages arrive.

    The burst's tail waits in the direct writer while nats-py queues the SUB: written
    after the SUB, the burst would come back to the new subscription.
    """
    async with connect(nats_server) as transport:
        for trial in range(10):
            subject = f"own.{trial}"
            seen: list[int] = []
            for index in range(5):
                transport.publish(subject, numbered(index))
            await transport.subscribe_handler(subject, recorder(seen))
            for index in range(5, 10):
                transport.publish(subject, numbered(index))
            await transport.flush()
            await eventually(lambda: len(seen) >= 5)  # noqa: B023 - awaited in this iteration
            assert seen == list(range(5, 10))


async def test_a_burst_from_an_asyncio_task_stays_before_its_subscribe(nats_server: NatsServer) -> None:
    """From inside an asyncio task: a burst, then the transport's subscribe (no callback, hand-off), same step.

    The burst's first message is written at once, the rest buffered for the direct
    writer's task; the SUB waits in nats-py's buffer for its flusher. The server must
    see the whole burst before the SUB: the new subscription gets only what follows.
    (A publish in the same step after the SUB would save the burst: it writes it first.)
    """
    async with connect(nats_server) as transport:
        seen: list[bytes] = []
        for trial in range(25):
            subject = f"aio.{trial}"

            async def burst_then_subscribe(subject: str = subject) -> None:  # asyncio side, no yield
                for index in range(4):
                    transport.publish(subject, numbered(index))
                await transport._nats_subscribe(subject, "", lambda message: seen.append(message.data))

            await _aio(transport._loop, burst_then_subscribe)()
            transport.publish(subject, b"after")
            await transport.flush()
        await eventually(lambda: seen.count(b"after") == 25)
        await transport.flush()
        assert seen == [b"after"] * 25


async def test_a_sync_handler_relaying_in_bursts_keeps_the_order(nats_server: NatsServer) -> None:
    """A handler (run in nats-py's reader) relays each message with or without headers: the relay keeps the order."""
    count = 500
    async with (
        connect(nats_server) as source,
        connect(nats_server) as relay,
        connect(nats_server) as sink,
    ):
        _, messages = await sink.subscribe("relayed", max_buffer=count)
        await sink.flush()

        def forward(message: Message) -> None:
            value = number(message.data)
            relay.publish("relayed", message.data, {"Via": "pump"} if value % 3 == 0 else None)

        await relay.subscribe_handler("source", forward)
        await relay.flush()
        for index in range(count):
            source.publish("source", numbered(index))
            if index % 50 == 49:
                await trio.lowlevel.checkpoint()
        assert await numbers(messages, count) == list(range(count))
        await relay.flush()
        assert relay.statistics().publishes_queued == 0
        assert relay.statistics().reconnects == 0


async def test_a_very_large_burst_arrives_whole_and_in_order(nats_server: NatsServer) -> None:
    """20 000 publishes in one scheduling round (one direct write, the rest buffered): all arrive, in order."""
    count = 20_000
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("huge", max_buffer=count)
        await receiver.flush()
        for index in range(count):
            sender.publish("huge", numbered(index))
        assert sender.statistics().publishes_queued > count // 2  # all but the first wait for the next round
        await sender.flush()
        assert sender.statistics().publishes_queued == 0
        assert await numbers(messages, count) == list(range(count))
        assert sender.statistics().publishes_dropped == 0


async def test_max_payload_messages_in_a_burst_are_accepted_and_one_byte_more_is_refused(
    nats_server: NatsServer,
) -> None:
    """Messages of exactly max_payload (payload, or payload and headers), in one burst: delivered, link kept."""
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("big", max_buffer=100)
        await receiver.flush()
        limit = sender.max_payload
        headers = {"Via": "pump"}
        header_bytes = len(b"NATS/1.0\r\n") + len(b"Via: pump\r\n") + len(b"\r\n")
        for index in range(12):
            if index % 3 == 2:
                sender.publish("big", numbered(index, limit - header_bytes), headers)
            else:
                sender.publish("big", numbered(index, limit))
        with pytest.raises(MessageTooLarge):
            sender.publish("big", bytes(limit + 1))
        with pytest.raises(MessageTooLarge):
            sender.publish("big", bytes(limit - header_bytes + 1), headers)
        with trio.fail_after(30):
            received = [await messages.receive() for _ in range(12)]
        assert [number(message.data) for message in received] == list(range(12))
        assert all(len(message.data) in (limit, limit - header_bytes) for message in received)
        await sender.flush()
        assert sender.statistics().reconnects == 0
        assert sender.state is ConnectionState.CONNECTED


# ---------------------------------------------------------------------- requests


async def test_requests_answered_within_the_same_burst_each_get_their_reply(nats_server: NatsServer) -> None:
    """300 requests sent in one round, answered by a handler on the same and on another connection."""
    count = 300
    async with connect(nats_server) as server, connect(nats_server) as client:

        def echo_on(transport: NatsTransport) -> Callable[[Message], None]:
            def echo(message: Message) -> None:
                transport.publish(message.reply, b"echo:" + message.data)

            return echo

        await server.subscribe_handler("svc.remote", echo_on(server))
        await client.subscribe_handler("svc.local", echo_on(client))
        await server.flush()
        await client.flush()
        replies: dict[int, outcome.Outcome[Message]] = {}
        for index in range(count):
            subject = "svc.local" if index % 2 else "svc.remote"
            client.send_request(subject, numbered(index), None, keeper(replies, index))
        await eventually(lambda: len(replies) == count)
        assert all(replies[index].unwrap().data == b"echo:" + numbered(index) for index in range(count))
        assert client.statistics().requests_waiting == 0


# ---------------------------------------------------------------------- drops and restarts


async def test_a_burst_cut_by_a_server_restart_sends_nothing_after_the_reconnect(nats_server: NatsServer) -> None:
    """The server stops in the middle of a burst (mixed headers) and a request, and restarts: nothing comes late.

    The sender watches its own subject with a sync handler: a message it receives
    on the new connection must have been published after the reconnect.
    """
    marker = 10_000
    async with connect(nats_server) as sender:
        seen: list[tuple[int, int]] = []  # (number, reconnects when received)
        await sender.subscribe_handler(
            "cut", lambda message: seen.append((number(message.data), sender.statistics().reconnects))
        )
        await sender.flush()
        replies: list[outcome.Outcome[Message]] = []
        for index in range(200):
            sender.publish("cut", numbered(index), {"Via": "pump"} if index % 7 == 0 else None)
        sender.send_request("cut", numbered(200), None, replies.append)
        nats_server.stop()  # blocks this round: the burst is in the direct writer, the outbox, the socket
        for index in range(201, 400):  # nats-py has not noticed: accepted
            sender.publish("cut", numbered(index), {"Via": "pump"} if index % 7 == 0 else None)
        nats_server.start()
        await reconnected_with_the_request_failed(sender, replies)
        await sender.flush()
        sender.publish("cut", numbered(marker))
        await eventually(lambda: any(value == marker for value, _ in seen))
        late = [value for value, reconnects in seen if reconnects >= 1 and value != marker]
        assert late == []
        assert sender.statistics().publishes_queued == 0


async def test_a_drop_in_the_middle_of_a_burst_fails_its_requests_and_later_ones_work(nats_server: NatsServer) -> None:
    """Requests buffered in a burst when the socket dies all fail with RemoteUnavailable; new ones are answered."""
    async with connect(nats_server) as server, connect(nats_server) as client:
        await server.subscribe_handler("svc", lambda message: server.publish(message.reply, message.data))
        await server.flush()
        replies: list[outcome.Outcome[Message]] = []
        for index in range(50):
            client.send_request("svc", numbered(index), None, replies.append)
        stream = _shortcuts._stream(client._nc)
        assert stream is not None
        stream.transport.abort()
        with trio.fail_after(20):
            await client.wait_disconnected()
            await client.wait_connected()
        assert len(replies) == 50
        assert all(isinstance(reply, outcome.Error) for reply in replies)
        assert client.statistics().requests_waiting == 0
        assert client.statistics().publishes_dropped == 49  # the first was written before the drop
        with trio.fail_after(10):
            assert (await client.request("svc", b"again")).data == b"again"


# ---------------------------------------------------------------------- closing


async def test_leaving_the_block_right_after_a_burst_delivers_it_and_leaks_nothing(nats_server: NatsServer) -> None:
    """An exception leaves the block in the round of a mixed burst: every message arrives; counters end at zero."""
    count = 300
    async with connect(nats_server) as receiver:
        _, messages = await receiver.subscribe("last", max_buffer=count)
        await receiver.flush()
        before = tasks_living()
        holder: list[NatsTransport] = []

        async def burst_then_raise() -> None:
            async with connect(nats_server) as sender:
                holder.append(sender)
                for index in range(count):
                    sender.publish("last", numbered(index), {"Via": "pump"} if index % 10 == 5 else None)
                assert sender.statistics().publishes_queued > 0
                raise KeyError("leaving")

        with pytest.raises(KeyError):
            await burst_then_raise()
        assert tasks_living() == before
        statistics = holder[0].statistics()
        assert statistics.state is ConnectionState.CLOSED
        assert statistics.publishes_queued == 0
        assert statistics.publishes_dropped == 0
        assert await numbers(messages, count) == list(range(count))


async def test_leaving_the_block_with_a_burst_on_a_dead_socket_drops_it_counted_and_returns(
    nats_server: NatsServer,
) -> None:
    """The socket dies while the direct writer holds a burst, the block ends: it returns, the burst counted dropped."""
    before = tasks_living()
    holder: list[NatsTransport] = []
    with trio.fail_after(30):
        async with connect(nats_server) as sender:
            holder.append(sender)
            for index in range(20):
                sender.publish("gone", numbered(index))
            stream = _shortcuts._stream(sender._nc)
            assert stream is not None
            stream.transport.abort()
    assert tasks_living() == before
    statistics = holder[0].statistics()
    assert statistics.state is ConnectionState.CLOSED
    assert statistics.publishes_queued == 0
    assert statistics.publishes_dropped == 19


async def test_a_handler_publishing_while_the_transport_closes_leaves_no_message_queued(
    nats_server: NatsServer,
) -> None:
    """A handler answering a flood in bursts while the block ends: the close returns, nothing stays queued."""
    async with connect(nats_server) as flooder:
        holder: list[NatsTransport] = []
        before = tasks_living()
        async with connect(nats_server) as transport, trio.open_nursery() as nursery:
            holder.append(transport)

            def fan_out(message: Message) -> None:
                for _ in range(3):
                    transport.publish("fanned", message.data)

            await transport.subscribe_handler("flood", fan_out)
            await transport.flush()

            async def flood() -> None:
                index = 0
                while True:
                    flooder.publish("flood", numbered(index))
                    index += 1
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(flood)
            await eventually(lambda: transport._nc.stats["in_msgs"] > 200)
            nursery.cancel_scope.cancel()
        assert tasks_living() == before
        assert holder[0].statistics().publishes_queued == 0
        assert holder[0].state is ConnectionState.CLOSED


# ---------------------------------------------------------------------- subscriptions and cancellation


async def test_unsubscribing_while_messages_arrive_stops_the_handler_at_once(nats_server: NatsServer) -> None:
    """A handler's subscription closed in the middle of a flood: once aclose returns, it is never called again."""
    async with connect(nats_server) as flooder, connect(nats_server) as transport:
        calls: list[int] = []
        subscription = await transport.subscribe_handler("stream", lambda message: calls.append(number(message.data)))
        witness, witnessed = await transport.subscribe("stream", max_buffer=10_000)
        await transport.flush()
        for index in range(300):
            flooder.publish("stream", numbered(index))
            if index == 150:
                await flooder.flush()
        await eventually(lambda: len(calls) > 0)
        await subscription.aclose()
        after_close = len(calls)
        for index in range(300, 400):
            flooder.publish("stream", numbered(index))
        await flooder.flush()
        with trio.fail_after(20):
            while number((await witnessed.receive()).data) != 399:
                pass
        assert len(calls) == after_close
        assert calls == sorted(calls)
        assert subscriptions_consistent(transport)
        await witness.aclose()


async def test_cancellation_at_any_point_of_subscribe_flush_and_request_leaves_nothing_behind(
    nats_server: NatsServer,
) -> None:
    """Cancelled after 0..11 scheduling rounds: no stray subscription or waiter, and the order still holds."""
    async with connect(nats_server) as receiver, connect(nats_server) as transport:
        _, messages = await receiver.subscribe("after", max_buffer=1000)
        await receiver.flush()
        await transport.subscribe_handler("svc", lambda message: None)  # never answers
        await transport.flush()
        sent = 0
        for rounds in range(12):
            for operation in ("subscribe", "flush", "request"):
                with trio.CancelScope() as scope:

                    async def cancel_later(scope: trio.CancelScope = scope, rounds: int = rounds) -> None:
                        for _ in range(rounds):
                            await trio.lowlevel.checkpoint()
                        scope.cancel()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(cancel_later)
                        transport.publish("after", numbered(sent))
                        sent += 1
                        if operation == "subscribe":
                            await transport.subscribe_handler(f"cancelled.{rounds}", lambda message: None)
                        elif operation == "flush":
                            await transport.flush()
                        else:
                            await transport.request("svc", b"")
                        await trio.sleep_forever()
                assert subscriptions_consistent(transport)
                assert transport.statistics().requests_waiting == 0
        await transport.flush()
        assert await numbers(messages, sent) == list(range(sent))
        assert transport.statistics().publishes_queued == 0


async def test_handlers_raising_on_every_message_of_a_burst_never_drop_the_connection(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler raising (its own error, or the transport's MessageTooLarge) on each of 200 messages: no drop."""
    async with connect(nats_server) as transport:
        seen: list[int] = []

        def faulty(message: Message) -> None:
            seen.append(number(message.data))
            if number(message.data) % 2:
                transport.publish("anywhere", bytes(transport.max_payload + 1))
            raise LookupError("always")

        await transport.subscribe_handler("faulty", faulty)
        await transport.flush()
        for index in range(200):
            transport.publish("faulty", numbered(index))
        await eventually(lambda: len(seen) == 200)
        assert seen == list(range(200))
        await transport.flush()
        assert transport.statistics().reconnects == 0
        assert transport.state is ConnectionState.CONNECTED
        assert caplog.text.count("failed on a message to 'faulty'") == 200


async def test_an_asyncio_task_publishing_with_yields_and_headers_keeps_its_order(nats_server: NatsServer) -> None:
    """An asyncio task publishes 500 messages (some with headers), yielding to asyncio now and then: order kept."""
    count = 500
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("aio.ordered", max_buffer=count)
        await receiver.flush()
        chance = random.Random(7)

        async def publish_all() -> None:  # asyncio side
            for index in range(count):
                sender.publish("aio.ordered", numbered(index), {"Via": "pump"} if chance.random() < 0.25 else None)
                if chance.random() < 0.1:
                    await asyncio.sleep(0)

        await _aio(sender._loop, publish_all)()
        await sender.flush()
        assert await numbers(messages, count) == list(range(count))
        assert sender.statistics().publishes_queued == 0
