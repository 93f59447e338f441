"""JetStream and KV from trio (`hybrid.remote._jetstream`), against a real nats-server.

Each test has a server of its own (``nats_server``) and may stop, restart or pause it.
Time is real (the server keeps its own clock): waits are bounded with
``trio.fail_after`` and timing is asserted only with wide margins, if at all.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hybrid.remote import RemoteError, RemoteUnavailable
from hybrid.remote._jetstream import (
    Delivery,
    JetStream,
    JetStreamError,
    KeyExists,
    KeyValue,
    KvCaughtUp,
    KvEntry,
    KvOperation,
    Puller,
    StreamFull,
    WrongRevision,
    _Metadata,
    _Watch,
    jetstream,
)
from hybrid.remote._nats import NatsTransport, open_nats
from tests.ports import free_port
from tests.remote.nats import NatsServer

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 2.0, "close_timeout": 2.0}
"""Options that keep the tests quick: reconnect attempts every 50 ms."""


def connect(server: NatsServer, **options: Any) -> AbstractAsyncContextManager[NatsTransport]:
    """`open_nats` to `server` with the `FAST` options (and `options` over them)."""
    return open_nats(server.url, **{**FAST, **options})


@pytest.fixture
async def transport(nats_server: NatsServer) -> AsyncGenerator[NatsTransport]:
    """A transport connected to the test's server, closed after the test."""
    async with connect(nats_server) as transport:
        yield transport


@pytest.fixture
def js(transport: NatsTransport) -> JetStream:
    """JetStream on the test's transport, with a 2 s timeout."""
    return jetstream(transport, timeout=2.0)


@pytest.fixture
async def kv(js: JetStream) -> KeyValue:
    """A fresh bucket ``b`` with expiry markers of 1 s."""
    return await js.key_value("b")


async def queue_with_consumer(js: JetStream, **consumer: Any) -> None:
    """Stream ``Q`` (subject ``q.jobs``) and its durable consumer ``w``."""
    await js.work_queue_stream("Q", ["q.jobs"], duplicate_window=5.0)
    consumer.setdefault("ack_wait", 2.0)
    await js.durable_consumer("Q", "w", **consumer)


async def receive(puller: Puller, timeout: float = 5.0) -> Delivery:
    """The next delivery, within `timeout` seconds."""
    with trio.fail_after(timeout):
        return await puller.receive()


async def nothing_within(puller: Puller, seconds: float) -> None:
    """Check that no delivery comes within `seconds`."""
    with trio.move_on_after(seconds):
        delivery = await puller.receive()
        raise AssertionError(f"unexpected delivery {delivery!r}")


async def next_change(changes: AsyncIterator[KvEntry | KvCaughtUp], timeout: float = 5.0) -> KvEntry | KvCaughtUp:
    """The next change of a watch, within `timeout` seconds."""
    with trio.fail_after(timeout):
        return await anext(changes)


async def changes_until_caught_up(changes: AsyncIterator[KvEntry | KvCaughtUp]) -> tuple[list[KvEntry], KvCaughtUp]:
    """The entries before the next `KvCaughtUp`, and it."""
    entries: list[KvEntry] = []
    while True:
        change = await next_change(changes, 10.0)
        if isinstance(change, KvCaughtUp):
            return entries, change
        entries.append(change)


@pytest.fixture
def server_without_jetstream(nats_binary: Path, tmp_path: Path) -> Generator[str]:
    """The URL of a nats-server started without ``-js`` (core NATS only)."""
    port = free_port()
    process = subprocess.Popen(
        [str(nats_binary), "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        server = NatsServer(nats_binary, tmp_path)
        server.port = port
        for _ in range(2000):
            if server._greets():
                break
            time.sleep(0.005)
        yield server.url
    finally:
        process.terminate()
        process.wait(10)


# ---------------------------------------------------------------------- setup and errors


async def test_jetstream_refuses_a_bad_timeout(transport: NatsTransport) -> None:
    """A timeout that is not a positive number of seconds is refused before any I/O."""
    with pytest.raises(ValueError, match="timeout"):
        jetstream(transport, timeout=0)
    assert jetstream(transport).transport is transport


async def test_a_work_queue_stream_is_created_then_bound_and_its_limits_updated(js: JetStream) -> None:
    """Creating the stream twice binds to it; new limits update it; stream_info reports them."""
    first = await js.work_queue_stream("Q", ["q.jobs"], duplicate_window=5.0)
    assert (first.name, first.subjects, first.messages, first.duplicate_window) == ("Q", ("q.jobs",), 0, 5.0)
    again = await js.work_queue_stream("Q", ["q.jobs"], duplicate_window=5.0)
    assert again == first
    updated = await js.work_queue_stream("Q", ["q.jobs"], duplicate_window=9.0, max_messages=10, max_bytes=10_000)
    assert (updated.duplicate_window, updated.max_messages) == (9.0, 10)
    assert await js.stream_info("Q") == updated
    memory = await js.work_queue_stream("M", ["m.jobs"], memory=True)
    assert memory.max_messages == -1


async def test_a_stream_that_cannot_become_a_work_queue_is_a_jetstream_error(js: JetStream) -> None:
    """A stream of that name with another retention cannot be updated: JetStreamError with the server's reason."""
    await js.key_value("q")  # stream KV_q, limits retention
    with pytest.raises(JetStreamError) as caught:
        await js.work_queue_stream("KV_q", ["q.jobs"])
    assert caught.value.code == 500 or caught.value.code >= 400
    assert isinstance(caught.value, RemoteError)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (type(copy), copy.err_code, copy.description) == (
        JetStreamError,
        caught.value.err_code,
        caught.value.description,
    )


async def test_bad_stream_arguments_are_refused_before_any_io(js: JetStream) -> None:
    """Names with dots, no subjects, bad subjects, bad numbers: ValueError or TypeError."""
    with pytest.raises(ValueError, match="invalid stream name"):
        await js.work_queue_stream("a.b", ["q.jobs"])
    with pytest.raises(TypeError, match="stream name must be a str"):
        await js.stream_info(7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one subject"):
        await js.work_queue_stream("Q", [])
    with pytest.raises(ValueError, match="invalid subject"):
        await js.work_queue_stream("Q", ["q.*"])
    with pytest.raises(ValueError, match="max_messages"):
        await js.work_queue_stream("Q", ["q.jobs"], max_messages=0)
    with pytest.raises(ValueError, match="invalid consumer name"):
        await js.durable_consumer("Q", "w w")
    with pytest.raises(ValueError, match="ack_wait"):
        await js.durable_consumer("Q", "w", ack_wait=0)


async def test_missing_streams_and_consumers_are_jetstream_errors_with_code_404(js: JetStream) -> None:
    """Info and delete of what does not exist: JetStreamError 404."""
    for call in (
        js.stream_info("nope"),
        js.delete_stream("nope"),
        js.consumer_info("nope", "w"),
        js.delete_consumer("nope", "w"),
        js.delete_key_value("nope"),
    ):
        with pytest.raises(JetStreamError) as caught:
            await call
        assert caught.value.code == 404


async def test_streams_and_consumers_can_be_deleted(js: JetStream) -> None:
    """delete_consumer and delete_stream remove them."""
    await queue_with_consumer(js)
    await js.delete_consumer("Q", "w")
    with pytest.raises(JetStreamError):
        await js.consumer_info("Q", "w")
    await js.delete_stream("Q")
    with pytest.raises(JetStreamError):
        await js.stream_info("Q")


async def test_a_durable_consumer_is_created_then_updated(js: JetStream) -> None:
    """durable_consumer twice with other settings updates it; consumer_info reports them (backoff too)."""
    await js.work_queue_stream("Q", ["q.jobs"])
    first = await js.durable_consumer("Q", "w", ack_wait=3.0, max_deliver=5, max_ack_pending=7)
    assert (first.stream, first.name, first.ack_wait, first.max_deliver, first.max_ack_pending) == ("Q", "w", 3.0, 5, 7)
    assert first.backoff == ()
    second = await js.durable_consumer(
        "Q", "w", ack_wait=1.0, max_deliver=4, max_ack_pending=None, backoff=(1.0, 2.0), filter_subject="q.jobs"
    )
    assert (second.max_deliver, second.max_ack_pending, second.backoff) == (4, -1, (1.0, 2.0))
    info = await js.consumer_info("Q", "w")
    assert (info.pending, info.ack_pending, info.redelivered, info.waiting) == (0, 0, 0, 0)


async def test_every_call_while_the_server_is_down_raises_remote_unavailable(
    nats_server: NatsServer, transport: NatsTransport, js: JetStream
) -> None:
    """Server stopped: API calls and publishes fail at once with RemoteUnavailable."""
    await js.work_queue_stream("Q", ["q.jobs"])
    kv = await js.key_value("b")
    nats_server.stop()
    with trio.fail_after(5):
        await transport.wait_disconnected()
    for call in (js.stream_info("Q"), js.publish("q.jobs", b"x"), kv.get("k"), kv.put("k", b"v")):
        with pytest.raises(RemoteUnavailable):
            await call


async def test_an_api_call_to_a_hung_server_times_out_as_remote_unavailable(
    nats_server: NatsServer, transport: NatsTransport
) -> None:
    """A server that does not answer (SIGSTOP) within the timeout: RemoteUnavailable naming it."""
    js = jetstream(transport, timeout=0.3)
    nats_server.pause()
    try:
        with pytest.raises(RemoteUnavailable, match=r"did not answer .* within 0.3 s"):
            await js.stream_info("Q")
    finally:
        nats_server.resume()


async def test_a_server_without_jetstream_is_reported_as_remote_unavailable(server_without_jetstream: str) -> None:
    """No JetStream (no -js): API calls raise RemoteUnavailable saying so."""
    async with open_nats(server_without_jetstream, **FAST) as transport:
        with pytest.raises(RemoteUnavailable, match="JetStream does not answer"):
            await jetstream(transport).api_level()


async def test_the_api_level_of_a_recent_server_allows_per_key_ttls(js: JetStream) -> None:
    """nats-server 2.11+ reports API level >= 1."""
    assert await js.api_level() >= 1


# ---------------------------------------------------------------------- publish


async def test_publish_waits_for_the_pub_ack_and_flags_duplicates_by_msg_id(js: JetStream) -> None:
    """A repeated msg_id within the window is acknowledged as a duplicate, with the original's sequence."""
    await js.work_queue_stream("Q", ["q.jobs"])
    first = await js.publish("q.jobs", b"a", msg_id="a")
    assert (first.stream, first.sequence, first.duplicate) == ("Q", 1, False)
    again = await js.publish("q.jobs", b"a again", {"X-Other": "1"}, msg_id="a")
    assert (again.sequence, again.duplicate) == (1, True)
    other = await js.publish("q.jobs", b"b")
    assert (other.sequence, other.duplicate) == (2, False)
    assert (await js.stream_info("Q")).messages == 2


async def test_publish_to_a_subject_no_stream_stores_raises_remote_unavailable(js: JetStream) -> None:
    """No stream captures the subject: RemoteUnavailable saying so (nothing stored)."""
    with pytest.raises(RemoteUnavailable, match="no stream stores"):
        await js.publish("nowhere", b"x")


async def test_publish_to_a_full_stream_raises_stream_full(js: JetStream) -> None:
    """max_messages reached (discard new): StreamFull."""
    await js.work_queue_stream("Q", ["q.jobs"], max_messages=2)
    await js.publish("q.jobs", b"1")
    await js.publish("q.jobs", b"2")
    with pytest.raises(StreamFull, match="maximum messages"):
        await js.publish("q.jobs", b"3")


async def test_publish_with_an_expected_sequence_is_a_compare_and_set(js: JetStream) -> None:
    """expected_last_subject_sequence: stored when it matches, WrongRevision (KeyExists for 0) when not."""
    await js.work_queue_stream("Q", ["q.jobs"])
    ack = await js.publish("q.jobs", b"1", expected_last_subject_sequence=0)
    with pytest.raises(KeyExists):
        await js.publish("q.jobs", b"2", expected_last_subject_sequence=0)
    with pytest.raises(WrongRevision) as caught:
        await js.publish("q.jobs", b"2", expected_last_subject_sequence=ack.sequence + 5)
    assert type(caught.value) is WrongRevision
    assert (await js.publish("q.jobs", b"2", expected_last_subject_sequence=ack.sequence)).sequence == 2


async def test_a_ttl_on_a_stream_without_per_message_ttls_is_a_jetstream_error(js: JetStream) -> None:
    """A work-queue stream does not allow per-message TTLs: the server's refusal, as JetStreamError."""
    await js.work_queue_stream("Q", ["q.jobs"])
    with pytest.raises(JetStreamError, match="TTL"):
        await js.publish("q.jobs", b"x", ttl=5)


async def test_bad_publish_arguments_are_refused_before_any_io(js: JetStream) -> None:
    """An empty msg_id, a fractional or zero TTL, a negative sequence: refused before sending."""
    with pytest.raises(ValueError, match="msg_id"):
        await js.publish("q.jobs", b"x", msg_id="")
    with pytest.raises(TypeError, match="whole number of seconds"):
        await js.publish("q.jobs", b"x", ttl=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whole number of seconds"):
        await js.publish("q.jobs", b"x", ttl=0)
    with pytest.raises(ValueError, match="expected_last_subject_sequence"):
        await js.publish("q.jobs", b"x", expected_last_subject_sequence=-1)
    for name in ("Bad Name", "Colon:Name", "", "Naïve", "Line\nBreak"):
        with pytest.raises(ValueError, match="a header name must be printable ASCII"):
            await js.publish("q.jobs", b"x", {name: "1"})
    for value in (" padded", "line\nbreak", "\ud800"):
        with pytest.raises(ValueError, match="header 'X-Value'"):
            await js.publish("q.jobs", b"x", {"X-Value": value})


async def test_an_empty_header_value_is_sent_as_it_is(js: JetStream) -> None:
    """NATS headers may carry an empty value: it is published (no refusal), and the message stored."""
    await js.work_queue_stream("Q", ["q.jobs"])
    ack = await js.publish("q.jobs", b"x", {"X-Flag": ""})
    assert ack.sequence == 1


# ---------------------------------------------------------------------- pull


async def test_a_puller_delivers_only_what_was_granted(js: JetStream) -> None:
    """Five jobs, two granted: two delivered (with their metadata); two more after granting again."""
    await queue_with_consumer(js)
    for i in range(5):
        await js.publish("q.jobs", f"job-{i}".encode(), msg_id=f"job-{i}")
    async with js.pull("Q", "w") as puller:
        await nothing_within(puller, 0.2)
        puller.grant(2)
        first, second = await receive(puller), await receive(puller)
        assert [first.data, second.data] == [b"job-0", b"job-1"]
        assert (first.subject, first.deliveries, first.stream_sequence, first.headers["Nats-Msg-Id"]) == (
            "q.jobs",
            1,
            1,
            "job-0",
        )
        assert first.pending == 4
        assert puller.outstanding == 0
        await nothing_within(puller, 0.3)
        first.ack()
        second.ack()
        puller.grant(2)
        assert (await receive(puller)).data == b"job-2"
        assert "outstanding=" in repr(puller)
        assert puller.requests_sent >= 2
        assert puller.delivered in (3, 4)  # the grant of two may bring job-3 already
    with pytest.raises(ValueError, match="count"):
        puller.grant(0)


async def test_acked_jobs_leave_the_work_queue(js: JetStream) -> None:
    """An acked job is deleted from a work-queue stream; the consumer has nothing pending."""
    await queue_with_consumer(js)
    await js.publish("q.jobs", b"x")
    async with js.pull("Q", "w") as puller:
        puller.grant()
        delivery = await receive(puller)
        answered = [delivery.answered]
        delivery.ack()
        answered.append(delivery.answered)
        assert answered == [False, True]
        delivery.nak()  # ignored: the first answer counts
        await transport_flush(js)
    assert (await js.stream_info("Q")).messages == 0
    assert (await js.consumer_info("Q", "w")).ack_pending == 0


async def transport_flush(js: JetStream) -> None:
    """Wait until what was published reached the server."""
    await js.transport.flush()


async def test_a_nak_with_a_delay_redelivers_after_it(js: JetStream) -> None:
    """nak(delay=0.5): the job comes back, delivery 2, not before the delay; nak() at once."""
    await queue_with_consumer(js)
    await js.publish("q.jobs", b"x")
    async with js.pull("Q", "w") as puller:
        puller.grant(3)
        delivery = await receive(puller)
        delivery.nak(delay=0.5)
        start = trio.current_time()
        again = await receive(puller)
        assert again.deliveries == 2
        assert trio.current_time() - start >= 0.4
        again.nak()
        third = await receive(puller)
        assert third.deliveries == 3
        third.ack()


async def test_term_stops_redelivery_and_removes_the_job(js: JetStream) -> None:
    """term(reason): never delivered again; the work queue drops it."""
    await queue_with_consumer(js, ack_wait=0.5)
    await js.publish("q.jobs", b"x")
    async with js.pull("Q", "w") as puller:
        puller.grant(2)
        (await receive(puller)).term("bad input")
        await nothing_within(puller, 1.0)
    assert (await js.stream_info("Q")).messages == 0


async def test_an_unanswered_job_is_redelivered_after_the_ack_wait_unless_in_progress_is_sent(js: JetStream) -> None:
    """in_progress every 0.3 s holds a job past its 1 s ack wait; silence lets it come back."""
    await queue_with_consumer(js, ack_wait=1.0)
    await js.publish("q.jobs", b"x")
    async with js.pull("Q", "w") as puller:
        puller.grant(2)
        delivery = await receive(puller)
        for _ in range(6):
            await trio.sleep(0.3)
            delivery.in_progress()
        assert not delivery.answered
        assert puller.outstanding == 1
        again = await receive(puller, 3.0)
        assert again.deliveries == 2
        again.ack()


async def test_leaving_the_pull_block_releases_undelivered_messages(js: JetStream) -> None:
    """Deliveries not taken when the block ends are nak'd: another puller gets them at once."""
    await queue_with_consumer(js, ack_wait=30.0)
    for i in range(3):
        await js.publish("q.jobs", f"{i}".encode())
    async with js.pull("Q", "w") as puller:
        puller.grant(3)
        with trio.fail_after(5):
            while puller.delivered < 3:  # noqa: ASYNC110 - polling a counter the inbox's handler bumps
                await trio.sleep(0.01)
        (await receive(puller)).ack()
    with pytest.raises(RemoteUnavailable, match="block ended"):
        await puller.receive()
    with pytest.raises(trio.WouldBlock):
        puller.receive_nowait()
    async with js.pull("Q", "w") as other:
        other.grant(2)
        taken = sorted([(await receive(other, 2.0)).data for _ in range(2)])
        assert taken == [b"1", b"2"]


async def test_a_pull_from_a_missing_consumer_logs_and_backs_off(
    js: JetStream, caplog: pytest.LogCaptureFixture
) -> None:
    """The server refuses the pull (no such consumer): a warning, another try a second later."""
    await js.work_queue_stream("Q", ["q.jobs"])
    with caplog.at_level(logging.WARNING, "hybrid.remote"):
        async with js.pull("Q", "nobody", expires=0.5) as puller:
            puller.grant()
            await trio.sleep(1.5)
            assert 1 <= puller.requests_sent <= 3
    assert "a pull from '$JS.API.CONSUMER.MSG.NEXT.Q.nobody' ended with" in caplog.text


async def test_pulls_expire_and_are_renewed(js: JetStream) -> None:
    """With expires=0.2, an idle puller renews its request; a job published later still arrives."""
    await queue_with_consumer(js)
    async with js.pull("Q", "w", expires=0.2, max_batch=1) as puller:
        puller.grant(2)
        await trio.sleep(0.7)
        assert puller.requests_sent >= 3
        await js.publish("q.jobs", b"late")
        (await receive(puller)).ack()


async def test_a_puller_survives_a_server_restart(nats_server: NatsServer, js: JetStream) -> None:
    """Server restarted (file store kept): the puller pulls again after the reconnect and gets new jobs."""
    await queue_with_consumer(js)
    await js.publish("q.jobs", b"before")
    async with js.pull("Q", "w", expires=30.0) as puller:
        puller.grant(10)
        (await receive(puller)).ack()
        await transport_flush(js)
        nats_server.restart()
        with trio.fail_after(10):
            while True:
                try:
                    await js.publish("q.jobs", b"after")
                    break
                except RemoteUnavailable:
                    await trio.sleep(0.1)
        assert (await receive(puller, 10.0)).data == b"after"


async def test_a_puller_ends_when_the_transport_closes(nats_server: NatsServer) -> None:
    """Transport closed while waiting: receive raises RemoteUnavailable."""
    async with connect(nats_server, max_reconnect_attempts=1) as transport:
        js = jetstream(transport)
        await queue_with_consumer(js)
        async with js.pull("Q", "w") as puller:
            puller.grant()
            nats_server.kill()
            with trio.fail_after(10), pytest.raises(RemoteUnavailable, match="connection to NATS is closed"):
                await puller.receive()


async def test_a_delivery_answered_while_the_link_is_down_can_be_answered_again_after(
    nats_server: NatsServer, transport: NatsTransport, js: JetStream
) -> None:
    """ack() raising RemoteUnavailable leaves the delivery unanswered; acking after the reconnect works."""
    await queue_with_consumer(js, ack_wait=30.0)
    await js.publish("q.jobs", b"x")
    async with js.pull("Q", "w") as puller:
        puller.grant()
        delivery = await receive(puller)
        nats_server.stop()
        with trio.fail_after(10):
            await transport.wait_disconnected()
        with pytest.raises(RemoteUnavailable):
            delivery.ack()
        assert not delivery.answered
        nats_server.start()
        with trio.fail_after(10):
            await transport.wait_connected()
        delivery.ack()
        await transport.flush()
    with trio.fail_after(10):
        while (await js.consumer_info("Q", "w")).ack_pending:  # noqa: ASYNC110 - polling the server
            await trio.sleep(0.05)


def test_reply_subjects_are_parsed_in_both_forms() -> None:
    """The metadata of ``$JS.ACK`` subjects, without and with a domain; anything else is a ValueError."""
    short = _Metadata("$JS.ACK.Q.w.2.10.7.1796229470632930026.3")
    assert (short.deliveries, short.stream_sequence, short.consumer_sequence, short.pending) == (2, 10, 7, 3)
    long = _Metadata("$JS.ACK.dom.acc.Q.w.1.5.4.1796229470632930026.0.tok")
    assert (long.deliveries, long.stream_sequence, long.consumer_sequence, long.pending) == (1, 5, 4, 0)
    for bad in ("", "a.b.c", "$JS.NAK.Q.w.2.10.7.1796229470632930026.3"):
        with pytest.raises(ValueError, match="not a JetStream reply subject"):
            _Metadata(bad)


# ---------------------------------------------------------------------- KV


async def test_a_bucket_is_created_then_opened(js: JetStream) -> None:
    """key_value twice: the same bucket; values written through one are read through the other."""
    first = await js.key_value("b", history=3, ttl=60.0, marker_ttl=None, memory=True)
    await first.put("k", b"v")
    second = await js.key_value("b")
    assert second.bucket == "b"
    assert repr(second) == "<KeyValue 'b'>"
    entry = await second.get("k")
    assert entry is not None
    assert entry.value == b"v"
    await js.delete_key_value("b")
    with pytest.raises(JetStreamError):
        await js.stream_info("KV_b")


async def test_bad_bucket_options_are_refused_before_any_io(js: JetStream) -> None:
    """Bad names, history out of 1..64, marker_ttl under a second: ValueError."""
    with pytest.raises(ValueError, match="invalid bucket name"):
        await js.key_value("a.b")
    with pytest.raises(ValueError, match="history"):
        await js.key_value("b", history=65)
    with pytest.raises(ValueError, match="marker_ttl"):
        await js.key_value("b", marker_ttl=0.5)


async def test_a_bucket_without_per_key_ttls_is_refused(js: JetStream) -> None:
    """A stream KV_x made without allow_msg_ttl (an older client's bucket): JetStreamError."""
    await js.work_queue_stream("KV_old", ["old.x"])
    with pytest.raises(JetStreamError, match="exists without per-key TTLs"):
        await js.key_value("old")


async def test_get_put_create_update_delete_purge(kv: KeyValue) -> None:
    """The basic operations and their revisions; absent, deleted and purged keys read as None."""
    assert await kv.get("a.k") is None
    revision = await kv.create("a.k", b"1")
    assert await kv.get("a.k") == KvEntry("a.k", b"1", revision)
    with pytest.raises(KeyExists):
        await kv.create("a.k", b"2")
    newer = await kv.update("a.k", b"2", revision=revision)
    with pytest.raises(WrongRevision) as caught:
        await kv.update("a.k", b"3", revision=revision)
    assert type(caught.value) is WrongRevision
    with pytest.raises(WrongRevision):
        await kv.delete("a.k", revision=revision)
    await kv.delete("a.k", revision=newer)
    assert await kv.get("a.k") is None
    again = await kv.create("a.k", b"4")  # over the delete marker
    assert again > newer
    await kv.put("b.k", b"x")
    await kv.purge("b.k")
    assert await kv.get("b.k") is None
    await kv.delete("c.k")
    assert await kv.get("c.k") is None


async def test_keys_lists_the_keys_holding_a_value(kv: KeyValue) -> None:
    """Deleted and purged keys are left out; a pattern filters."""
    assert await kv.keys() == []
    for key in ("node.a", "node.b", "agent.x", "node.c"):
        await kv.put(key, b"v")
    await kv.delete("node.b")
    await kv.purge("node.c")
    assert await kv.keys() == ["agent.x", "node.a"]
    assert await kv.keys("node.>") == ["node.a"]


async def test_a_key_with_a_ttl_expires_and_can_be_created_again_while_its_marker_lives(kv: KeyValue) -> None:
    """A 1 s key reads None after it expired; create works over the expiry marker."""
    await kv.create("lease", b"n1", ttl=1)
    await trio.sleep(1.6)
    assert await kv.get("lease") is None
    revision = await kv.create("lease", b"n2", ttl=1)
    entry = await kv.get("lease")
    assert entry is not None
    assert (entry.value, entry.revision) == (b"n2", revision)


async def test_update_with_a_ttl_renews_a_lease(kv: KeyValue) -> None:
    """Renewing a 1 s lease every 0.4 s by compare-and-set keeps it past its TTL."""
    revision = await kv.create("lease", b"n1", ttl=1)
    for _ in range(5):
        await trio.sleep(0.4)
        revision = await kv.update("lease", b"n1", revision=revision, ttl=1)
    entry = await kv.get("lease")
    assert entry is not None
    assert entry.revision == revision
    await kv.put("plain", b"x", ttl=1)


async def test_a_lost_race_to_create_over_a_marker_is_key_exists(kv: KeyValue) -> None:
    """Two creators over a deleted key: one wins, the other gets KeyExists."""
    await kv.put("k", b"old")
    await kv.delete("k")
    results: list[int | KeyExists] = []

    async def create(value: bytes) -> None:
        try:
            results.append(await kv.create("k", value))
        except KeyExists as error:
            results.append(error)

    async with trio.open_nursery() as nursery:
        for value in (b"x", b"y", b"z"):
            nursery.start_soon(create, value)
    assert sum(isinstance(result, int) for result in results) == 1
    assert sum(isinstance(result, KeyExists) for result in results) == 2


async def test_bad_keys_and_ttls_are_refused_before_any_io(kv: KeyValue) -> None:
    """Wildcards, spaces, empty tokens, non-str keys; fractional TTLs; bad revisions."""
    for bad in ("a b", "a.*", "a.>", ".a", "a..b", "a.", "ä", ""):
        with pytest.raises(ValueError, match="invalid key"):
            await kv.get(bad)
    with pytest.raises(TypeError, match="a key must be a str"):
        await kv.put(1, b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttl"):
        await kv.create("k", b"", ttl=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="revision"):
        await kv.update("k", b"", revision=0)
    with pytest.raises(ValueError, match="invalid key pattern"):
        async with kv.watch("a.>.b"):
            pass


async def test_a_watch_sends_the_current_state_then_caught_up_then_live_changes(kv: KeyValue) -> None:
    """Current values (and markers), KvCaughtUp with the live keys, then put, delete, purge, expiry."""
    await kv.put("node.a", b"1")
    await kv.put("node.b", b"2")
    await kv.delete("node.b")
    await kv.put("other", b"x")
    async with kv.watch("node.>") as changes:
        entries, caught_up = await changes_until_caught_up(changes)
        assert [(e.key, e.operation) for e in entries] == [
            ("node.a", KvOperation.PUT),
            ("node.b", KvOperation.DELETE),
        ]
        assert caught_up == KvCaughtUp(frozenset({"node.a"}), 0)
        await kv.put("node.c", b"3")
        change = await next_change(changes)
        assert isinstance(change, KvEntry)
        assert (change.key, change.value, change.operation) == ("node.c", b"3", KvOperation.PUT)
        await kv.purge("node.a")
        change = await next_change(changes)
        assert isinstance(change, KvEntry)
        assert (change.key, change.operation) == ("node.a", KvOperation.PURGE)
        await kv.create("node.d", b"4", ttl=1)
        change = await next_change(changes)
        assert isinstance(change, KvEntry)
        assert change.key == "node.d"
        change = await next_change(changes, 5.0)  # the expiry marker
        assert isinstance(change, KvEntry)
        assert (change.key, change.operation) == ("node.d", KvOperation.EXPIRE)


async def test_a_watch_of_an_empty_bucket_is_caught_up_at_once(kv: KeyValue) -> None:
    """Nothing stored: KvCaughtUp with no keys first."""
    async with kv.watch(headers_only=True) as changes:
        assert await next_change(changes) == KvCaughtUp(frozenset(), 0)
        await kv.put("k", b"value")
        change = await next_change(changes)
        assert isinstance(change, KvEntry)
        assert (change.key, change.value) == ("k", b"")  # headers only


async def test_a_slow_watch_reader_gets_every_change_in_order(kv: KeyValue) -> None:
    """max_buffer=1 and 300 changes written meanwhile: all arrive, in order (flow control holds the server)."""
    async with kv.watch(max_buffer=1) as changes:
        assert isinstance(await next_change(changes), KvCaughtUp)
        for i in range(300):
            await kv.put(f"k{i % 7}", str(i).encode())
        seen: list[int] = []
        for _ in range(300):
            change = await next_change(changes)
            assert isinstance(change, KvEntry)
            seen.append(int(change.value))
            await trio.sleep(0)
        assert seen == list(range(300))


async def test_a_watch_is_not_blind_after_a_server_restart(nats_server: NatsServer, kv: KeyValue) -> None:
    """After a restart the watch re-subscribes: KvCaughtUp(restarts=1) without the keys deleted meanwhile; then live."""
    await kv.put("node.a", b"1")
    await kv.put("node.b", b"2")
    async with kv.watch("node.>", heartbeat=0.5) as changes:
        _, caught_up = await changes_until_caught_up(changes)
        assert caught_up.keys == {"node.a", "node.b"}
        nats_server.restart()
        with trio.fail_after(10):
            while True:
                try:
                    await kv.delete("node.b")
                    break
                except RemoteUnavailable:
                    await trio.sleep(0.1)
        with trio.fail_after(10):
            while True:
                change = await next_change(changes, 10.0)
                if isinstance(change, KvCaughtUp) and change.restarts >= 1:
                    assert change.keys == {"node.a"}
                    break
        await kv.put("node.c", b"3")
        while True:
            change = await next_change(changes, 3.0)
            if isinstance(change, KvEntry) and change.key == "node.c":
                break


async def test_a_watch_resubscribes_after_missing_heartbeats(nats_server: NatsServer, kv: KeyValue) -> None:
    """A hung server (SIGSTOP) for longer than three heartbeats: the watch re-subscribes once it answers."""
    async with kv.watch(heartbeat=0.2) as changes:
        assert isinstance(await next_change(changes), KvCaughtUp)
        nats_server.pause()
        await trio.sleep(0.8)
        nats_server.resume()
        change = await next_change(changes, 10.0)
        assert change == KvCaughtUp(frozenset(), change.restarts) and change.restarts >= 1  # type: ignore[union-attr]


async def test_a_watch_ends_when_the_transport_closes(nats_server: NatsServer) -> None:
    """The link is gone for good: the watch's channel ends."""
    async with connect(nats_server, max_reconnect_attempts=1) as transport:
        kv = await jetstream(transport).key_value("b")
        async with kv.watch() as changes:
            assert isinstance(await next_change(changes), KvCaughtUp)
            nats_server.kill()
            with trio.fail_after(10):
                async for change in changes:
                    raise AssertionError(f"unexpected {change!r}")
        with pytest.raises(RemoteUnavailable):
            await kv.keys()


# ---------------------------------------------------------------------- edges and odd messages


@attrs.frozen
class FakeMessage:
    """A `Message` made in the test, for feeding a handler directly."""

    subject: str
    data: bytes = b""
    headers: dict[str, str] | None = None
    reply: str = ""


async def test_an_exception_leaving_a_pull_or_watch_block_comes_out_bare(js: JetStream, kv: KeyValue) -> None:
    """Not wrapped in the ExceptionGroup of the blocks' nurseries."""
    await queue_with_consumer(js)
    with pytest.raises(KeyError, match="mine"):
        async with js.pull("Q", "w"):
            raise KeyError("mine")
    with pytest.raises(KeyError, match="mine"):
        async with kv.watch():
            raise KeyError("mine")


async def test_a_stream_whose_subjects_overlap_another_is_refused(js: JetStream) -> None:
    """Subjects another stream stores: the server's refusal, for work queues and buckets alike."""
    await js.work_queue_stream("A", ["q.jobs", "$KV.ov.x"])
    with pytest.raises(JetStreamError, match="overlap"):
        await js.work_queue_stream("B", ["q.jobs"])
    with pytest.raises(JetStreamError, match="overlap"):
        await js.key_value("ov")


async def test_odd_messages_on_a_pull_inbox_are_handled(
    js: JetStream, transport: NatsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """A message that is no delivery is dropped with a warning; a delivery beyond every request is delivered anyway."""
    await queue_with_consumer(js)
    async with js.pull("Q", "w") as puller:
        with caplog.at_level(logging.WARNING, "hybrid.remote"):
            transport.publish(f"{puller._inbox}.7", b"junk")
            await transport.flush()
            await trio.sleep(0.1)
        assert "got a message that is not a JetStream delivery: dropped" in caplog.text
        # (the server refuses a client's message with a $JS.ACK reply: this one is handed to the handler)
        puller._on_message(FakeMessage("q.jobs", b"late", None, "$JS.ACK.Q.w.1.9.9.1796229470632930026.0"))
        straggler = await receive(puller)
        assert (straggler.data, straggler.stream_sequence) == (b"late", 9)
        await js.publish("q.jobs", b"x")
        puller.grant()
        with trio.fail_after(5):
            while True:
                try:
                    delivery = puller.receive_nowait()
                    break
                except trio.WouldBlock:
                    await trio.sleep(0.01)
        assert repr(delivery) == "<Delivery 'q.jobs' #1 delivery 1>"
        delivery.ack()


async def test_a_pull_request_the_server_does_not_answer_in_time_is_given_up(
    nats_server: NatsServer, js: JetStream
) -> None:
    """A hung server (SIGSTOP) lets a pull request's deadline pass: its credit is asked for again afterwards."""
    await queue_with_consumer(js)
    async with js.pull("Q", "w", expires=0.1) as puller:
        puller.grant()
        await trio.sleep(0.05)
        sent = puller.requests_sent
        nats_server.pause()
        await trio.sleep(0.6)
        nats_server.resume()
        await js.publish("q.jobs", b"x")
        (await receive(puller)).ack()
        assert puller.requests_sent > sent


async def test_odd_messages_on_a_watch_inbox_are_handled(js: JetStream, transport: NatsTransport, kv: KeyValue) -> None:
    """Flow-control requests and stall notices are answered, junk ignored; a heartbeat telling of a gap: resubscribe."""
    answers, answered = await transport.subscribe("test.answers.>")
    async with kv.watch() as changes:
        assert await next_change(changes) == KvCaughtUp(frozenset(), 0)
        listed = await js._api("CONSUMER.LIST.KV_b")
        (inbox,) = [consumer["config"]["deliver_subject"] for consumer in listed["consumers"]]
        flow = {"Status": "100", "Description": "FlowControl Request"}
        transport.publish(inbox, b"", flow, reply="test.answers.flow")
        stall = {"Status": "100", "Description": "Idle Heartbeat", "Nats-Consumer-Stalled": "test.answers.stall"}
        transport.publish(inbox, b"", {**stall, "Nats-Last-Consumer": "0"})
        transport.publish(inbox, b"junk")  # no reply subject: not a delivery
        with trio.fail_after(5):
            assert sorted([(await answered.receive()).subject for _ in range(2)]) == [
                "test.answers.flow",
                "test.answers.stall",
            ]
        transport.publish(inbox, b"", {"Status": "100", "Description": "Idle Heartbeat", "Nats-Last-Consumer": "5"})
        assert await next_change(changes) == KvCaughtUp(frozenset(), 1)  # the heartbeat says 5 were sent: a gap
    await answers.aclose()


async def test_a_watch_drops_messages_of_an_earlier_subscription_and_notices_gaps(kv: KeyValue) -> None:
    """Handed to the handler directly: a replaced incarnation's message is dropped; a skipped sequence marks a gap."""
    send, receive_ = trio.open_memory_channel[KvEntry | KvCaughtUp](10)
    watch = _Watch(kv, "$KV.b.>", send, headers_only=False, heartbeat=1.0)
    watch._restarts = 3
    watch._on_message(2, FakeMessage("$KV.b.k", b"v", None, "$JS.ACK.KV_b.x.1.1.1.1796229470632930026.0"))
    assert not watch._queue
    watch._on_message(3, FakeMessage("$KV.b.k", b"v", None, "$JS.ACK.KV_b.x.1.1.1.1796229470632930026.0"))
    assert list(watch._queue) == [KvEntry("k", b"v", 1), KvCaughtUp(frozenset({"k"}), 3)]
    stale = [watch._stale]
    watch._on_message(3, FakeMessage("$KV.b.k", b"w", None, "$JS.ACK.KV_b.x.1.5.5.1796229470632930026.0"))
    stale.append(watch._stale)
    assert stale == [False, True]
    receive_.close()
    send.close()


async def test_a_watch_of_a_missing_bucket_waits_for_it(
    js: JetStream, kv: KeyValue, caplog: pytest.LogCaptureFixture
) -> None:
    """The bucket is deleted: the watch cannot subscribe, tries again, and catches up once the bucket is back."""
    await js.delete_key_value("b")
    with caplog.at_level(logging.DEBUG, "hybrid.remote"):
        async with kv.watch() as changes:
            await trio.sleep(0.3)
            await js.key_value("b")
            await kv.put("k", b"v")
            _, caught_up = await changes_until_caught_up(changes)
            if not caught_up.keys:  # subscribed between the bucket's return and the put: k comes next
                change = await next_change(changes, 10.0)
                assert isinstance(change, KvEntry)
                assert change.key == "k"
            else:
                assert caught_up.keys == {"k"}
    assert "could not subscribe" in caplog.text


@pytest.mark.skipif(not os.environ.get("HYBRID_OLD_NATS_SERVER"), reason="set HYBRID_OLD_NATS_SERVER to a 2.9 server")
async def test_a_server_older_than_2_11_is_refused_for_buckets(tmp_path: Path) -> None:
    """nats-server 2.9 (API level 0) would ignore per-key TTLs: key_value refuses it."""
    server = NatsServer(Path(os.environ["HYBRID_OLD_NATS_SERVER"]), tmp_path)
    server.start()
    try:
        async with open_nats(server.url, **FAST) as transport:
            js = jetstream(transport)
            assert await js.api_level() == 0
            with pytest.raises(JetStreamError, match="need nats-server 2.11 or newer"):
                await js.key_value("b")
    finally:
        server.stop()
