"""The NATS transport (`hybrid.remote._nats`) and the name rules, against a real nats-server.

Each test has a server of its own (``nats_server``) and may stop, restart or pause it.
Time is real (the server and nats-py live outside trio's clock): waits are short and
bounded with ``trio.fail_after``, and timing is asserted only with wide margins.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import outcome
import pytest
import trio

import hybrid
from hybrid.remote import MessageTooLarge, NodeLost, RemoteError, RemoteFailure, RemoteUnavailable, _shortcuts
from hybrid.remote._names import (
    agent_subject,
    check_cluster,
    check_name,
    check_pattern,
    check_subject,
    ended_subject,
    jobs_stream,
    jobs_subject,
    name_key,
    names_bucket,
    node_control_subject,
    node_key,
    nodes_bucket,
    shard_subject,
)
from hybrid.remote._nats import NatsTransport, open_nats
from hybrid.remote._transport import ConnectionState, Message, Transport
from tests.ports import free_port
from tests.remote.nats import NatsServer, discard, new_server

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 2.0, "close_timeout": 2.0}
"""Options that keep the tests quick: reconnect attempts every 50 ms."""


def connect(server: NatsServer, **options: Any) -> AbstractAsyncContextManager[NatsTransport]:
    """`open_nats` to `server` with the `FAST` options (and `options` over them)."""
    return open_nats(server.url, **{**FAST, **options})


def tasks_living() -> int:
    """How many trio tasks are alive now."""
    return trio.lowlevel.current_statistics().tasks_living


async def echo(transport: Transport, subject: str, *, queue: str = "") -> None:
    """Answer every request on `subject` with ``b"echo:" + data`` and the request's headers, until cancelled."""
    subscription, messages = await transport.subscribe(subject, queue=queue)
    try:
        async for message in messages:
            transport.publish(message.reply, b"echo:" + message.data, message.headers)
    finally:
        with trio.CancelScope(shield=True):
            await subscription.aclose()


async def collect(messages: trio.MemoryReceiveChannel[Message], count: int) -> list[bytes]:
    """The payloads of the next `count` messages (within 5 s)."""
    with trio.fail_after(5):
        return [(await messages.receive()).data for _ in range(count)]


@pytest.fixture(params=["direct", "public"])
async def transport(
    nats_server: NatsServer, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncGenerator[NatsTransport]:
    """A transport connected to the test's server, closed after the test.

    Twice: with the shortcuts past nats-py's public API (direct writes and
    deliveries, as installed), and with nats-py's public API only (as with a
    nats-py whose internals changed): the behaviour must be the same.
    """
    monkeypatch.setattr(_shortcuts, "AVAILABLE", request.param == "direct")
    async with connect(nats_server) as transport:
        yield transport


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a.b", "'.' (a dot"),
        ("a*", "'*' (a subject wildcard)"),
        ("a>", "'>' (a subject wildcard)"),
        ("a b", "' ' (whitespace)"),
        ("tab\there", "'\\t' (whitespace)"),
        ("nul\x00", "'\\x00' (a control character)"),
        ("café", "'é' (not ASCII)"),
        ("$SYS", "'$'"),
        ("", "it is empty"),
        ("x" * 65, "65 characters long, more than 64"),
    ],
)
def test_a_bad_name_raises_a_value_error_naming_the_bad_character(name: str, shown: str) -> None:
    """A name with a dot, a wildcard, whitespace, another character, empty or too long: ValueError saying which."""
    with pytest.raises(ValueError, match="invalid agent name") as caught:
        check_name(name, "agent name")
    assert shown in str(caught.value)
    assert "use 1 to 64 ASCII letters, digits, '-' or '_'" in str(caught.value)


def test_good_names_pass_unchanged_and_a_non_string_is_a_type_error() -> None:
    """Letters, digits, '-' and '_' up to 64 characters are names; a non-str is a TypeError."""
    for name in ["a", "ledger-1", "Worker_07", "x" * 64, "-_-"]:
        assert check_name(name) == name
    with pytest.raises(TypeError, match="must be a str"):
        check_name(7)


def test_a_long_bad_name_is_shown_cut_short() -> None:
    """The error message shows at most 80 characters of a name."""
    with pytest.raises(ValueError, match=r"\.\.\. \(1000 characters\)"):
        check_name("." * 1000)


def test_cluster_names_also_refuse_underscores() -> None:
    """A cluster name is a name without '_' (it is joined with '_' in stream names)."""
    assert check_cluster("eu-west-1") == "eu-west-1"
    with pytest.raises(ValueError, match="invalid cluster name 'a_b': '_' at index 1"):
        check_cluster("a_b")


def test_the_subjects_streams_and_buckets_of_a_cluster() -> None:
    """The layout of NOTES §9.2, every part checked."""
    assert agent_subject("c1", "ledger") == "hybrid.c1.agent.ledger"
    assert ended_subject("c1", "ledger") == "hybrid.c1.ended.ledger"
    assert node_control_subject("c1", "n-1") == "hybrid.c1.node.n-1.ctl"
    assert shard_subject("c1", "n-1", "cart") == "hybrid.c1.node.n-1.shard.cart"
    assert jobs_subject("c1", "resize") == "hybrid.c1.jobs.resize"
    assert jobs_stream("c1", "resize_2") == "HYBRID_c1_Q_resize_2"
    assert names_bucket("c1") == "hybrid_c1_names"
    assert nodes_bucket("c1") == "hybrid_c1_nodes"
    assert name_key("ledger") == "agent.ledger"
    assert node_key("n-1") == "node.n-1"
    with pytest.raises(ValueError, match="invalid agent name 'a.b'"):
        agent_subject("c1", "a.b")
    with pytest.raises(ValueError, match="invalid node name 'n 1'"):
        shard_subject("c1", "n 1", "cart")


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("", "it is empty"),
        ("a..b", "token 1 is empty"),
        (".a", "token 0 is empty"),
        ("a.", "token 1 is empty"),
        ("a.*", "'*' (a subject wildcard) in token 1 is not allowed"),
        ("a.>", "'>' (a subject wildcard) in token 1 is not allowed"),
        ("a.b c", "' ' (whitespace) in token 1"),
        ("a\r\nPUB x", "'\\r' (whitespace) in token 0"),
    ],
)
def test_a_subject_to_send_to_has_no_empty_token_wildcard_or_whitespace(subject: str, problem: str) -> None:
    """check_subject refuses what nats-py would let through on publish (and the server drop)."""
    with pytest.raises(ValueError, match="invalid subject") as caught:
        check_subject(subject)
    assert problem in str(caught.value)


def test_a_subscription_pattern_takes_whole_token_wildcards_only() -> None:
    """'*' as a whole token and '>' as the whole last token are patterns; anything else is refused."""
    for pattern in ["a.*.c", "a.>", ">", "*", "$JS.API.>", "_INBOX.x.*"]:
        assert check_pattern(pattern) == pattern
    for bad, problem in [
        ("a.>.b", "'>'"),
        ("a.b*", "'*'"),
        ("a..b", "token 1 is empty"),
        ("a b", "whitespace"),
        ("*.a b", "' ' (whitespace) in token 1"),
    ]:
        with pytest.raises(ValueError, match="invalid subject") as caught:
            check_pattern(bad)
        assert problem in str(caught.value)
    with pytest.raises(TypeError):
        check_pattern(b"a.b")
    with pytest.raises(TypeError):
        check_subject(None)


def test_the_errors_of_the_remote_package() -> None:
    """RemoteUnavailable is a ConnectionError (an OSError), MessageTooLarge a ValueError; both pickle."""
    assert issubclass(RemoteError, hybrid.HybridError)
    assert issubclass(RemoteUnavailable, RemoteError)
    assert issubclass(RemoteUnavailable, ConnectionError)
    assert issubclass(RemoteUnavailable, OSError)
    assert issubclass(MessageTooLarge, RemoteError)
    assert issubclass(MessageTooLarge, ValueError)
    assert RemoteUnavailable.__module__ == "hybrid.remote"
    error = pickle.loads(pickle.dumps(MessageTooLarge("a.b", 2000, 1000)))
    assert (error.subject, error.size, error.limit) == ("a.b", 2000, 1000)
    assert str(error) == "a message of 2000 bytes to 'a.b' exceeds the server's max_payload of 1000 bytes"
    failure = pickle.loads(pickle.dumps(RemoteFailure("app.Oops", "it broke")))
    assert (failure.type_name, failure.message, str(failure)) == ("app.Oops", "it broke", "app.Oops: it broke")
    assert str(RemoteFailure("app.Quiet", "")) == "app.Quiet"
    lost = pickle.loads(pickle.dumps(NodeLost("n1", "node 'n1' has left the cluster")))
    assert (lost.node, str(lost)) == ("n1", "node 'n1' has left the cluster")
    assert isinstance(lost, RemoteUnavailable)


# ---------------------------------------------------------------------- messaging


async def test_a_request_gets_the_answer_of_a_subscriber_with_its_headers(transport: NatsTransport) -> None:
    """request() returns the reply; payload and headers travel both ways."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, transport, "svc.echo")
        await transport.flush()
        with trio.fail_after(5):
            answer = await transport.request("svc.echo", b"hi", {"Hybrid-Type": "Greeting"})
            plain = await transport.request("svc.echo", b"")
        assert answer.data == b"echo:hi"
        assert repr(transport).endswith(" connected>")
        assert answer.headers == {"Hybrid-Type": "Greeting"}
        assert answer.subject.startswith("_INBOX.")
        assert plain.data == b"echo:"
        assert plain.headers is None
        nursery.cancel_scope.cancel()
    assert transport.statistics().requests_waiting == 0


async def test_many_concurrent_requests_each_get_their_own_answer(transport: NatsTransport) -> None:
    """200 requests in flight at once are matched to their replies by token."""
    answers: dict[int, bytes] = {}

    async def ask(number: int) -> None:
        answers[number] = (await transport.request("svc.echo", str(number).encode())).data

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, transport, "svc.echo")
        await transport.flush()
        with trio.fail_after(10):
            async with trio.open_nursery() as askers:
                for number in range(200):
                    askers.start_soon(ask, number)
        nursery.cancel_scope.cancel()
    assert answers == {number: f"echo:{number}".encode() for number in range(200)}


async def test_send_request_hands_the_reply_or_its_absence_to_the_callback(transport: NatsTransport) -> None:
    """send_request() is sync: the callback gets the reply, or `AgentStopped` for no responders; forget() drops it."""
    results: list[outcome.Outcome[Message]] = []
    answered = trio.Event()

    def on_reply(result: outcome.Outcome[Message]) -> None:
        results.append(result)
        if len(results) == 2:
            answered.set()

    _, requests = await transport.subscribe("svc.held")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, transport, "svc.echo")
        await transport.flush()
        reply = transport.send_request("svc.echo", b"x", None, on_reply)
        assert reply.startswith("_INBOX.")
        transport.send_request("svc.nobody", b"y", None, on_reply)
        held = transport.send_request("svc.held", b"z", None, on_reply)
        with trio.fail_after(5):
            await answered.wait()
            transport.forget(held)
            transport.publish((await requests.receive()).reply, b"too late")
            await transport.flush()
        nursery.cancel_scope.cancel()
    values = [result for result in results if isinstance(result, outcome.Value)]
    errors = [result for result in results if isinstance(result, outcome.Error)]
    assert [value.unwrap().data for value in values] == [b"echo:x"]
    with pytest.raises(hybrid.AgentStopped, match="svc.nobody"):
        errors[0].unwrap()
    assert len(results) == 2  # the forgotten request's late reply was dropped
    assert transport.statistics().requests_waiting == 0


async def test_send_request_raises_in_the_sender_and_fails_waiters_on_a_drop(nats_server: NatsServer) -> None:
    """Bad input raises from send_request itself; a dropped connection fails the waiting callback."""
    results: list[outcome.Outcome[Message]] = []
    async with connect(nats_server) as transport:
        with pytest.raises(ValueError):
            transport.send_request("bad subject", b"", None, results.append)
        with pytest.raises(MessageTooLarge):
            transport.send_request("svc.x", bytes(transport.max_payload + 1), None, results.append)
        await transport.subscribe("svc.silent")
        await transport.flush()
        transport.send_request("svc.silent", b"", None, results.append)
        await transport.flush()
        nats_server.stop()
        with trio.fail_after(5):
            await transport.wait_disconnected()
        with pytest.raises(RemoteUnavailable):
            transport.send_request("svc.silent", b"", None, results.append)
    assert len(results) == 1
    with pytest.raises(RemoteUnavailable, match="may have run"):
        results[0].unwrap()


async def test_published_messages_arrive_in_order_on_the_channel(transport: NatsTransport) -> None:
    """publish() is sync; the subscriber's channel yields the messages in the order sent."""
    subscription, messages = await transport.subscribe("feed.>")
    await transport.flush()
    for number in range(500):
        transport.publish(f"feed.{number % 3}", str(number).encode())
    assert await collect(messages, 500) == [str(number).encode() for number in range(500)]
    assert subscription.subject == "feed.>"
    assert subscription.queue == ""


async def test_a_full_channel_holds_delivery_back_without_losing_messages(transport: NatsTransport) -> None:
    """With max_buffer=1 and a slow reader, every message still arrives, in order."""
    _, messages = await transport.subscribe("slow", max_buffer=1)
    await transport.flush()
    for number in range(50):
        transport.publish("slow", bytes([number]))
    await transport.flush()
    received: list[bytes] = []
    with trio.fail_after(5):
        async for message in messages:
            received.append(message.data)
            await trio.sleep(0.001)
            if len(received) == 50:
                break
    assert received == [bytes([number]) for number in range(50)]


async def test_a_sync_handler_runs_on_the_trio_thread_and_survives_its_own_errors(
    transport: NatsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """subscribe_handler calls a sync function inside trio; an exception is logged and delivery goes on."""
    send, receive = trio.open_memory_channel[bytes](10)

    def handler(message: Message) -> None:
        trio.lowlevel.current_task()  # raises outside trio
        if message.data == b"boom":
            raise RuntimeError("boom")
        send.send_nowait(message.data)

    await transport.subscribe_handler("events", handler)
    await transport.flush()
    for data in [b"one", b"boom", b"two"]:
        transport.publish("events", data)
    with trio.fail_after(5):
        assert [await receive.receive(), await receive.receive()] == [b"one", b"two"]
    [record] = [r for r in caplog.records if r.name == "hybrid.remote" and r.levelno == logging.ERROR]
    assert "the handler of a subscription to 'events' failed" in record.getMessage()
    assert record.exc_info is not None


async def test_a_queue_group_gives_each_message_to_one_member(transport: NatsTransport) -> None:
    """Two members of a queue group share the messages; a plain subscriber sees them all."""
    _, first = await transport.subscribe("jobs", queue="workers")
    second_subscription, second = await transport.subscribe("jobs", queue="workers")
    _, watcher = await transport.subscribe("jobs")
    assert second_subscription.queue == "workers"
    await transport.flush()
    for number in range(100):
        transport.publish("jobs", str(number).encode())
    assert sorted(await collect(watcher, 100)) == sorted(str(number).encode() for number in range(100))
    await transport.flush()
    await trio.sleep(0.05)
    shared = [message.data for channel in (first, second) for message in _drain(channel)]
    assert sorted(shared) == sorted(str(number).encode() for number in range(100))


def _drain(channel: trio.MemoryReceiveChannel[Message]) -> list[Message]:
    """The messages waiting in `channel` now."""
    waiting: list[Message] = []
    while True:
        try:
            waiting.append(channel.receive_nowait())
        except trio.WouldBlock:
            return waiting


async def test_a_request_nobody_subscribes_to_raises_agent_stopped_at_once(transport: NatsTransport) -> None:
    """NATS's no-responders answer becomes hybrid.AgentStopped, long before any timeout."""
    started = time.monotonic()
    with pytest.raises(hybrid.AgentStopped, match="nothing subscribes to 'hybrid.c1.agent.gone'"):
        await transport.request("hybrid.c1.agent.gone", b"", timeout=5)
    assert time.monotonic() - started < 2
    assert transport.statistics().requests_waiting == 0


async def test_a_timed_out_request_leaves_no_waiter_and_its_late_answer_is_dropped(transport: NatsTransport) -> None:
    """timeout= raises trio.TooSlowError; the answer that comes later is dropped; the transport goes on."""
    _, requests = await transport.subscribe("svc.slow")
    await transport.flush()
    with pytest.raises(trio.TooSlowError):
        await transport.request("svc.slow", b"first", timeout=0.1)
    assert transport.statistics().requests_waiting == 0
    late = await requests.receive()
    transport.publish(late.reply, b"too late")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, transport, "svc.echo")
        await transport.flush()
        assert (await transport.request("svc.echo", b"next", timeout=5)).data == b"echo:next"
        nursery.cancel_scope.cancel()


async def test_a_request_honours_the_callers_deadline_and_cancellation(transport: NatsTransport) -> None:
    """Without timeout=, the caller's cancel scopes rule; a cancelled request leaves no waiter."""
    await transport.subscribe("svc.silent")
    await transport.flush()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(0.1):
            await transport.request("svc.silent", b"")
    with trio.move_on_after(0.1) as scope:
        await transport.request("svc.silent", b"")
    assert scope.cancelled_caught
    assert transport.statistics().requests_waiting == 0


async def test_a_request_made_in_a_cancelled_scope_is_not_sent(transport: NatsTransport) -> None:
    """A request whose caller is cancelled already raises Cancelled before anything is queued."""
    _, received = await transport.subscribe("svc.count")
    await transport.flush()
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.request("svc.count", b"never")
    assert transport.statistics().publishes_queued == 0
    transport.publish("svc.count", b"after")
    assert await collect(received, 1) == [b"after"]


async def test_a_message_over_max_payload_is_refused_in_the_sender(transport: NatsTransport) -> None:
    """MessageTooLarge before anything is sent, for publish and request; headers count."""
    limit = transport.max_payload
    assert limit == 1024 * 1024
    _, received = await transport.subscribe("big")
    await transport.flush()
    with pytest.raises(MessageTooLarge) as caught:
        transport.publish("big", bytes(limit + 1))
    assert (caught.value.size, caught.value.limit) == (limit + 1, limit)
    with pytest.raises(MessageTooLarge):
        transport.publish("big", bytes(limit - 10), {"Hybrid-Type": "Blob"})
    with pytest.raises(MessageTooLarge):
        await transport.request("big", bytes(limit + 1))
    transport.publish("big", bytes(limit))  # exactly the limit goes
    transport.publish("big", b"small")
    assert [len(data) for data in await collect(received, 2)] == [limit, 5]
    assert transport.statistics().publishes_dropped == 0


async def test_bad_subjects_queue_groups_and_headers_are_refused_before_sending(transport: NatsTransport) -> None:
    """ValueError (TypeError for a non-str header value) in the caller; nothing is queued."""
    for subject in ["a.*", "a.>", "a..b", "a b", ""]:
        with pytest.raises(ValueError, match="invalid subject"):
            transport.publish(subject, b"")
        with pytest.raises(ValueError, match="invalid subject"):
            await transport.request(subject, b"")
    with pytest.raises(ValueError, match="invalid subject"):
        transport.publish("a", b"", reply="b.*")
    with pytest.raises(ValueError, match="invalid subject"):
        await transport.subscribe("a.>.b")
    with pytest.raises(ValueError, match="invalid queue group 'a.b'"):
        await transport.subscribe("a", queue="a.b")
    with pytest.raises(ValueError, match="invalid header name 'a b'"):
        transport.publish("a", b"", {"a b": "c"})
    with pytest.raises(TypeError, match="the value of the header 'A' must be a str"):
        transport.publish("a", b"", {"A": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="bytes-like"):
        transport.publish("a", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_buffer must be an int >= 0"):
        await transport.subscribe("a", max_buffer=-1)
    with pytest.raises(ValueError, match="timeout must be"):
        await transport.request("a", b"", timeout=-1)
    assert transport.statistics().publishes_queued == 0
    assert transport.statistics().subscriptions == 0


async def test_a_new_inbox_receives_answers_outside_the_request_inbox(transport: NatsTransport) -> None:
    """new_inbox() is unique; a reply published to it reaches its subscriber, not a request waiter."""
    first, second = transport.new_inbox(), transport.new_inbox()
    assert first != second
    _, answers = await transport.subscribe(first)
    _, requests = await transport.subscribe("svc.ask")
    await transport.flush()
    transport.publish("svc.ask", b"question", reply=first)
    question = await requests.receive()
    assert question.reply == first
    transport.publish(question.reply, b"answer")
    assert await collect(answers, 1) == [b"answer"]


async def test_closing_a_subscription_ends_its_channel_and_is_idempotent(transport: NatsTransport) -> None:
    """aclose() unsubscribes and ends the channel; a second aclose() does nothing."""
    subscription, messages = await transport.subscribe("news")
    await transport.flush()
    transport.publish("news", b"one")
    assert await collect(messages, 1) == [b"one"]
    await subscription.aclose()
    await subscription.aclose()
    assert "closed" in repr(subscription)
    transport.publish("news", b"two")
    await transport.flush()
    with trio.fail_after(5):
        assert [message.data async for message in messages] == []
    assert transport.statistics().subscriptions == 0
    with pytest.raises(hybrid.AgentStopped):  # unsubscribed at the server too
        await transport.request("news", b"")


async def test_a_closed_receiving_side_drops_later_messages(transport: NatsTransport) -> None:
    """Closing the channel's receiving side drops what arrives afterwards; the transport goes on."""
    _, messages = await transport.subscribe("dropped")
    messages.close()
    _, others = await transport.subscribe("kept")
    await transport.flush()
    transport.publish("dropped", b"lost")
    transport.publish("kept", b"kept")
    assert await collect(others, 1) == [b"kept"]


@pytest.mark.parametrize("headers", [None, {"Kind": "number"}], ids=["written-at-once", "pumped"])
async def test_flush_waits_until_the_server_has_every_message(
    nats_server: NatsServer, headers: dict[str, str] | None
) -> None:
    """After flush(), a second connection receives all that the first one published.

    Messages with headers always go through the pump; without, they are written
    directly (the first at once, the rest together a round later).
    """
    async with connect(nats_server) as receiver, connect(nats_server) as sender:
        _, messages = await receiver.subscribe("firehose")
        await receiver.flush()
        for number in range(2000):
            sender.publish("firehose", number.to_bytes(2, "big"), headers)
        if headers is not None:
            assert sender.statistics().publishes_queued > 0
        await sender.flush()
        assert sender.statistics().publishes_queued == 0
        assert len(await collect(messages, 2000)) == 2000


# ---------------------------------------------------------------------- lifecycle


async def test_leaving_the_block_flushes_closes_and_leaks_no_task(nats_server: NatsServer) -> None:
    """What was published is delivered; then the state is CLOSED, channels end, no task is left."""
    async with connect(nats_server) as receiver:
        _, messages = await receiver.subscribe("last.words")
        await receiver.flush()
        before = tasks_living()
        async with connect(nats_server) as sender:
            assert sender.state is ConnectionState.CONNECTED
            _, own = await sender.subscribe("own")
            for number in range(100):
                sender.publish("last.words", bytes([number]))
        assert tasks_living() == before
        assert len(await collect(messages, 100)) == 100
    assert sender.statistics().state is ConnectionState.CLOSED  # (.state: mypy keeps the narrowing above)
    assert sender.statistics().subscriptions == 0
    with trio.fail_after(1):
        assert [message async for message in own] == []
    with pytest.raises(RemoteUnavailable, match="closed"):
        sender.publish("last.words", b"")
    with pytest.raises(RemoteUnavailable, match="closed"):
        await sender.request("last.words", b"")
    with pytest.raises(RemoteUnavailable, match="closed"):
        await sender.subscribe("x")
    with pytest.raises(RemoteUnavailable, match="closed"):
        await sender.flush()
    with pytest.raises(RemoteUnavailable, match="closed"):
        await sender.wait_connected()
    await sender.wait_disconnected()


async def test_an_exception_leaving_the_block_comes_out_unwrapped(nats_server: NatsServer) -> None:
    """A ValueError raised in the block is the ValueError seen outside, not an ExceptionGroup."""
    before = tasks_living()
    with pytest.raises(ValueError, match="mine"):
        async with connect(nats_server):
            raise ValueError("mine")
    assert tasks_living() == before


async def test_an_outer_cancellation_unwinds_everything(nats_server: NatsServer) -> None:
    """A deadline around the block cancels a waiting request and a blocked reader, and closes the connection."""
    before = tasks_living()
    holder: list[NatsTransport] = []
    with trio.move_on_after(0.3) as scope:
        async with connect(nats_server) as transport:
            holder.append(transport)
            await transport.subscribe("silent")
            _, messages = await transport.subscribe("busy", max_buffer=1)
            for _ in range(5):
                transport.publish("busy", b"x")
            async with trio.open_nursery() as nursery:

                async def read_slowly() -> None:
                    async for _ in messages:
                        await trio.sleep(10)

                nursery.start_soon(read_slowly)
                await transport.request("silent", b"")
    assert scope.cancelled_caught
    assert holder[0].state is ConnectionState.CLOSED
    assert tasks_living() == before


async def test_connecting_to_no_server_fails_within_the_connect_timeout(nats_binary: Path) -> None:
    """RemoteUnavailable after connect_timeout, not nats-py's two minutes; no task is left."""
    before = tasks_living()
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable, match=r"could not connect to NATS at nats://127\.0\.0\.1:\d+ within 0\.3 s"):
        async with open_nats(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.3, reconnect_wait=0.05):
            pytest.fail("connected to nothing")
    assert time.monotonic() - started < 3
    assert tasks_living() == before


async def test_connecting_with_bounded_attempts_gives_up_after_them(nats_binary: Path) -> None:
    """With max_reconnect_attempts, a connect to nothing fails after those attempts, before connect_timeout."""
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="could not connect to NATS at .*NoServersError"):
        async with open_nats(f"nats://127.0.0.1:{free_port()}", max_reconnect_attempts=1, reconnect_wait=0.05):
            pytest.fail("connected to nothing")
    assert time.monotonic() - started < 3


async def test_a_connect_cancelled_from_outside_leaves_nothing_behind(nats_binary: Path) -> None:
    """An outer deadline during the first connect cancels it; no task is left."""
    before = tasks_living()
    with trio.move_on_after(0.2) as scope:
        async with open_nats(f"nats://127.0.0.1:{free_port()}", connect_timeout=10, reconnect_wait=0.05):
            pytest.fail("connected to nothing")
    assert scope.cancelled_caught
    assert tasks_living() == before


async def test_bad_options_are_refused_before_connecting() -> None:
    """A bad URL list or option value is a ValueError (or TypeError) at once."""
    for servers in ["", [], ["nats://127.0.0.1:4222", 7], None]:
        with pytest.raises(ValueError, match="servers must be"):
            async with open_nats(servers):  # type: ignore[arg-type]
                pass
    with pytest.raises(ValueError, match="connect_timeout"):
        async with open_nats("nats://127.0.0.1:1", connect_timeout=0):
            pass
    with pytest.raises(ValueError, match="max_reconnect_attempts"):
        async with open_nats("nats://127.0.0.1:1", max_reconnect_attempts=0):
            pass
    with pytest.raises(TypeError, match="ping_interval"):
        async with open_nats("nats://127.0.0.1:1", ping_interval="2"):  # type: ignore[arg-type]
            pass


# ---------------------------------------------------------------------- failures of the server


async def wait_for_state(transport: Transport, condition: Callable[[], Any]) -> None:
    """Wait (up to 10 s) until `condition()` holds, re-checking at each state change."""
    with trio.fail_after(10):
        while not condition():
            if transport.state is ConnectionState.CONNECTED:
                await transport.wait_disconnected()
            else:
                await transport.wait_connected()


async def test_a_restarted_server_fails_requests_meanwhile_then_service_resumes(nats_server: NatsServer) -> None:
    """Server down: RemoteUnavailable at once, nothing sent late; back up: subscriptions restored, no task leaked."""
    async with connect(nats_server) as observer, connect(nats_server) as transport:
        _, seen = await observer.subscribe("svc.>")
        await observer.flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, transport, "svc.echo")
            await transport.flush()
            assert (await transport.request("svc.echo", b"before", timeout=5)).data == b"echo:before"
            assert await collect(seen, 1) == [b"before"]
            before = tasks_living()

            nats_server.stop()
            with trio.fail_after(5):
                await transport.wait_disconnected()
            assert transport.state is ConnectionState.RECONNECTING
            started = time.monotonic()
            with pytest.raises(RemoteUnavailable, match="reconnecting"):
                await transport.request("svc.echo", b"meanwhile", timeout=5)
            with pytest.raises(RemoteUnavailable, match="reconnecting"):
                transport.publish("svc.echo", b"meanwhile")
            with pytest.raises(RemoteUnavailable, match="reconnecting"):
                await transport.flush()
            assert time.monotonic() - started < 1

            nats_server.start()
            with trio.fail_after(10):
                await transport.wait_connected()
                await observer.wait_connected()
            assert transport.statistics().reconnects == 1
            await observer.flush()
            with trio.fail_after(5):
                assert (await transport.request("svc.echo", b"after")).data == b"echo:after"
            assert await collect(seen, 1) == [b"after"]  # "meanwhile" was not sent late
            assert tasks_living() == before
            nursery.cancel_scope.cancel()


async def test_a_request_waiting_when_the_connection_drops_fails_at_once(nats_server: NatsServer) -> None:
    """An in-flight request fails with RemoteUnavailable when the server goes, not at its timeout."""
    async with connect(nats_server) as transport:
        await transport.subscribe("svc.silent")
        await transport.flush()
        started = time.monotonic()
        async with trio.open_nursery() as nursery:

            async def stop_soon() -> None:
                await trio.sleep(0.1)
                nats_server.kill()

            nursery.start_soon(stop_soon)
            with pytest.raises(RemoteUnavailable, match="dropped while waiting for the reply"):
                await transport.request("svc.silent", b"", timeout=30)
        assert time.monotonic() - started < 5
        assert transport.statistics().requests_waiting == 0


async def test_a_hung_server_is_noticed_by_pings_and_service_resumes_when_it_wakes(nats_server: NatsServer) -> None:
    """SIGSTOP: unanswered pings drop the link within seconds and fail the waiting request; SIGCONT: back."""
    async with (
        connect(nats_server, ping_interval=0.2, connect_timeout=0.5) as transport,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(echo, transport, "svc.echo")
        await transport.flush()
        nats_server.pause()
        with pytest.raises(RemoteUnavailable, match="did not confirm a flush within 0.1 s"):
            await transport.flush(timeout=0.1)
        started = time.monotonic()
        async with trio.open_nursery() as flushing:

            async def flush_until_dropped() -> None:
                with pytest.raises(RemoteUnavailable, match="reconnecting"):
                    await transport.flush(timeout=30)

            flushing.start_soon(flush_until_dropped)
            with pytest.raises(RemoteUnavailable, match="dropped while waiting for the reply"):
                await transport.request("svc.echo", b"frozen", timeout=30)
        assert time.monotonic() - started < 5
        assert transport.state is ConnectionState.RECONNECTING
        nats_server.resume()
        with trio.fail_after(10):
            await transport.wait_connected()
            assert (await transport.request("svc.echo", b"awake")).data == b"echo:awake"
        nursery.cancel_scope.cancel()


async def test_messages_caught_by_a_dropping_link_are_dropped_and_counted_not_sent_late(
    transport: NatsTransport,
) -> None:
    """A publish accepted just before the link drops is dropped (and counted); such a request fails at once.

    (With headers: those always take the pump, which is where a message can be caught.)
    """
    _, seen = await transport.subscribe("lost")
    await transport.flush()
    # nats-py's own force_reconnect, scheduled on its loop before the pump's next turn:
    # the link is down when the pump hands the messages below to nats-py.
    transport._loop.create_task(transport._nc.force_reconnect())
    transport.publish("lost", b"dropped", {"Pumped": "yes"})
    with pytest.raises(RemoteUnavailable, match="could not send the request to 'lost'"):
        await transport.request("lost", b"failed", {"Pumped": "yes"}, timeout=5)
    assert transport.statistics().publishes_dropped == 1
    with trio.fail_after(10):
        await transport.wait_connected()
    await transport.flush()
    transport.publish("lost", b"after")
    assert await collect(seen, 1) == [b"after"]


async def test_a_request_written_at_once_just_before_the_link_drops_fails_when_it_drops(
    nats_server: NatsServer,
) -> None:
    """Written to the socket before the drop, the request may have run: its caller learns the link dropped."""
    async with connect(nats_server) as transport:  # with the shortcuts: written at once
        _, silent = await transport.subscribe("silent")  # receives, never answers
        await transport.flush()
        transport._loop.create_task(transport._nc.force_reconnect())
        with pytest.raises(RemoteUnavailable, match="dropped while waiting for the reply"):
            await transport.request("silent", b"maybe", timeout=5)
        silent.close()
        assert transport.statistics().publishes_dropped == 0
        with trio.fail_after(10):
            await transport.wait_connected()


async def test_a_server_error_is_logged_as_a_warning_and_the_connection_goes_on(
    nats_binary: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A permissions violation reported by the server is a WARNING on hybrid.remote; other subjects still work."""
    config = """
    authorization {
      users = [{user: limited, password: secret, permissions: {publish: ["allowed.>"], subscribe: [">"]}}]
    }
    """
    server = new_server(nats_binary, config)
    try:
        async with open_nats(f"nats://limited:secret@127.0.0.1:{server.port}", **FAST) as transport:
            _, messages = await transport.subscribe("allowed.>")
            await transport.flush()
            transport.publish("denied", b"no")
            transport.publish("allowed.x", b"yes")
            assert await collect(messages, 1) == [b"yes"]
            await transport.flush()
            assert transport.state is ConnectionState.CONNECTED
    finally:
        discard(server)
    warnings = [r.getMessage() for r in caplog.records if r.name == "hybrid.remote" and r.levelno == logging.WARNING]
    assert any('permissions violation for publish to "denied"' in message for message in warnings), warnings


async def test_a_subscription_made_while_reconnecting_works_once_connected(nats_server: NatsServer) -> None:
    """subscribe() while the server is down takes effect when the connection is back."""
    async with connect(nats_server) as transport:
        nats_server.stop()
        await wait_for_state(transport, lambda: transport.state is ConnectionState.RECONNECTING)
        _, messages = await transport.subscribe("later")
        nats_server.start()
        await wait_for_state(transport, lambda: transport.state is ConnectionState.CONNECTED)
        await transport.flush()
        transport.publish("later", b"hello")
        assert await collect(messages, 1) == [b"hello"]


async def test_bounded_reconnect_attempts_give_up_and_close(nats_server: NatsServer) -> None:
    """With max_reconnect_attempts, a server that stays down closes the transport; waiters are told."""
    async with connect(nats_server, max_reconnect_attempts=2) as transport:
        _, messages = await transport.subscribe("anything")
        nats_server.stop()
        with trio.fail_after(10):
            await transport.wait_disconnected()
            with pytest.raises(RemoteUnavailable, match="closed"):
                await transport.wait_connected()
        assert transport.state is ConnectionState.CLOSED
        with trio.fail_after(1):
            assert [message async for message in messages] == []
        with pytest.raises(RemoteUnavailable, match="closed"):
            transport.publish("anything", b"")


async def test_open_nats_cancelled_at_any_point_of_its_start_returns(nats_server: NatsServer) -> None:
    """A deadline that expires while `open_nats` starts (its loop, its connect) ends it: it never hangs."""
    for step in range(12):
        with trio.fail_after(30), trio.move_on_after(step * 0.002):
            async with open_nats(nats_server.url, **FAST):
                await trio.sleep_forever()
