"""Durable work queues (`hybrid.remote._jobs`) against a real nats-server, with worker processes.

Each test has a server of its own (``nats_server``). Worker processes run
``tests/remote/jobs_worker.py``; each job a worker finishes is a line in a record
file, which is how a test checks that every job was done, and done once. Time is
real: waits are bounded with ``trio.fail_after``; no timing is asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import hybrid
import hybrid.codec
from hybrid.remote import MessageTooLarge, RemoteUnavailable
from hybrid.remote._jetstream import jetstream
from hybrid.remote._jobs import QueueFull, WorkQueue, WorkQueueStatistics, open_work_queue
from hybrid.remote._nats import NatsTransport, open_nats
from hybrid.remote._transport import Message
from tests.remote.jobs_worker import Other, Thumb, Thumbnailer, recorded
from tests.remote.nats import NatsServer

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 2.0, "close_timeout": 2.0}
"""Options that keep the tests quick: reconnect attempts every 50 ms."""

QUICK_RETRY = hybrid.Backoff(initial=0.05, factor=1.0, max_delay=0.05)
"""Retry failed jobs after 50 ms."""

ROOT = Path(__file__).resolve().parent.parent.parent


def connect(server: NatsServer, **options: Any) -> AbstractAsyncContextManager[NatsTransport]:
    """`open_nats` to `server` with the `FAST` options (and `options` over them)."""
    return open_nats(server.url, **{**FAST, **options})


@pytest.fixture
async def transport(nats_server: NatsServer) -> AsyncGenerator[NatsTransport]:
    """A transport connected to the test's server, closed after the test."""
    async with connect(nats_server) as transport:
        yield transport


@pytest.fixture
def record(tmp_path: Path) -> Path:
    """The record file of the test's workers."""
    return tmp_path / "record.txt"


async def thumbs(transport: NatsTransport, **options: Any) -> WorkQueue[Thumb]:
    """The work queue ``thumbs`` of `Thumb` jobs (quick retries), with `options`."""
    options.setdefault("retry", QUICK_RETRY)
    return await open_work_queue(transport, hybrid.codec.MessageCodec(), name="thumbs", job_type=Thumb, **options)


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once `condition()` holds (checked every 20 ms), or fail after `timeout` seconds."""
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - a poll of files and counters other processes and tasks write
            await trio.sleep(0.02)


async def put_all(queue: WorkQueue[Thumb], paths: list[str], **job: Any) -> None:
    """Put a `Thumb` job per path, with the path as its id."""
    for path in paths:
        await queue.put(Thumb(path, **job), id=path)


def counts(queue: WorkQueue[Any]) -> dict[str, int]:
    """The queue's statistics as a dict."""
    return attrs.asdict(queue.statistics())


def tasks_living() -> int:
    """How many trio tasks are alive now."""
    return trio.lowlevel.current_statistics().tasks_living


@attrs.frozen
class WorkerProcess:
    """A worker process (``tests/remote/jobs_worker.py``) and the lines it printed so far."""

    process: trio.Process
    lines: list[str]

    def started(self) -> list[str]:
        """The paths of the jobs it started."""
        return [line.split(" ", 1)[1] for line in self.lines if line.startswith("START ")]


async def read_lines(process: trio.Process, lines: list[str]) -> None:
    """Append each line `process` prints to `lines`, until it ends; then reap it."""
    assert process.stdout is not None
    buffer = b""
    try:
        async for chunk in process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.stdout.aclose()


async def start_worker(
    nursery: trio.Nursery, server: NatsServer, record: Path, label: str, *, concurrency: int = 1, ack_wait: float = 30.0
) -> WorkerProcess:
    """Start a worker process serving ``thumbs`` and wait until it says READY."""
    options = [str(concurrency), str(ack_wait)]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.remote.jobs_worker", server.url, "thumbs", str(record), label, *options],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    worker = WorkerProcess(process, [])
    nursery.start_soon(read_lines, process, worker.lines)
    await wait_for(lambda: "READY" in worker.lines, 30.0)
    return worker


StartWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def workers(nats_server: NatsServer, record: Path) -> AsyncGenerator[StartWorker]:
    """Start worker processes with ``await workers(label, concurrency=..., ack_wait=...)``; all killed at the end."""
    started: list[WorkerProcess] = []
    async with trio.open_nursery() as nursery:

        async def start(label: str, **options: Any) -> WorkerProcess:
            worker = await start_worker(nursery, nats_server, record, label, **options)
            started.append(worker)
            return worker

        try:
            yield start
        finally:
            for worker in started:
                stop(worker)


def stop(worker: WorkerProcess) -> None:
    """Kill a worker process (SIGKILL: it leaves nothing behind)."""
    if worker.process.returncode is None:
        worker.process.send_signal(signal.SIGKILL)


# ---------------------------------------------------------------------- opening and putting


async def test_jobs_put_are_done_once_each_and_then_leave_the_queue(transport: NatsTransport, record: Path) -> None:
    """Ten jobs through a serve block: each recorded once, acked, counted; nothing left at the server."""
    queue = await thumbs(transport)
    assert (queue.name, queue.subject, queue.job_type) == ("thumbs", "hybrid.default.jobs.thumbs", Thumb)
    assert queue.dead_letter_subject == "hybrid.default.jobs.thumbs.dead"
    assert repr(queue) == "<WorkQueue 'thumbs' of Thumb>"
    paths = [f"{i}.png" for i in range(10)]
    await put_all(queue, paths)
    assert (await queue.info()).pending == 10
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker, concurrency=3):
            await wait_for(lambda: len(recorded(record)) == 10)
            await wait_for(lambda: queue.statistics().done == 10)
        worker.interrupt()
    assert sorted(path for _, path in recorded(record)) == sorted(paths)
    assert queue.statistics() == WorkQueueStatistics(
        put=10, duplicates=0, done=10, failed=0, redelivered=0, terminated=0, undecodable=0, released=0, in_flight=0
    )
    await transport.flush()
    info = await queue.info()
    assert (info.pending, info.ack_pending) == (0, 0)


async def test_a_job_put_twice_with_one_id_is_stored_once(transport: NatsTransport, record: Path) -> None:
    """The second put of an id within the window is a duplicate: done once."""
    queue = await thumbs(transport)
    first = await queue.put(Thumb("a.png"), id="a.png")
    again = await queue.put(Thumb("a.png"), id="a.png")
    assert (first.duplicate, again.duplicate, again.sequence) == (False, True, first.sequence)
    await queue.put(Thumb("b.png"))  # no id: no deduplication
    await queue.put(Thumb("b.png"))
    assert (counts(queue)["put"], counts(queue)["duplicates"]) == (3, 1)
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().done == 3)
        worker.interrupt()
    assert sorted(path for _, path in recorded(record)) == ["a.png", "b.png", "b.png"]


async def test_bad_queue_options_and_job_types_are_refused(transport: NatsTransport) -> None:
    """Bad names, non-request job types, bad numbers and retry policies: refused before any I/O."""
    codec = hybrid.codec.MessageCodec()
    with pytest.raises(ValueError, match="invalid queue name"):
        await open_work_queue(transport, codec, name="a.b", job_type=Thumb)
    with pytest.raises(TypeError, match=r"hybrid\.Request subclass"):
        await open_work_queue(transport, codec, name="q", job_type=str)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="ack_wait"):
        await open_work_queue(transport, codec, name="q", job_type=Thumb, ack_wait=0)
    with pytest.raises(ValueError, match="max_deliver"):
        await open_work_queue(transport, codec, name="q", job_type=Thumb, max_deliver=0)
    with pytest.raises(TypeError, match="retry must be a hybrid.Backoff"):
        await open_work_queue(transport, codec, name="q", job_type=Thumb, retry=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid cluster name"):
        await open_work_queue(transport, codec, name="q", job_type=Thumb, cluster="a_b")


async def test_put_refuses_jobs_of_another_type_and_too_large_ones(transport: NatsTransport) -> None:
    """A job of another class: TypeError; a job over max_payload: MessageTooLarge; nothing stored."""
    queue = await thumbs(transport)
    with pytest.raises(TypeError, match="takes Thumb jobs"):
        await queue.put(Other("x"))  # type: ignore[arg-type]
    with pytest.raises(MessageTooLarge):
        await queue.put(Thumb("x" * (transport.max_payload + 1)))
    assert (await queue.info()).pending == 0


async def test_put_on_a_full_queue_raises_queue_full(transport: NatsTransport) -> None:
    """max_jobs stored: QueueFull (a StreamFull) at once."""
    queue = await thumbs(transport, max_jobs=2)
    await put_all(queue, ["a", "b"])
    with pytest.raises(QueueFull, match="the queue 'thumbs' is full"):
        await queue.put(Thumb("c"))


async def test_a_worker_without_a_handler_for_the_job_type_is_refused(transport: NatsTransport, record: Path) -> None:
    """serve with an agent that does not handle the job type: UnhandledMessage, nothing pulled."""

    class Idle(hybrid.Agent[None]):
        @hybrid.on_request
        async def other(self, request: Other) -> None:
            pass

    queue = await thumbs(transport)
    await queue.put(Thumb("a"))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Idle())
        with pytest.raises(hybrid.UnhandledMessage, match="no @hybrid.on_request handler for Thumb"):
            async with queue.serve(worker):
                pass  # pragma: no cover - never entered
        with pytest.raises(ValueError, match="concurrency"):
            async with queue.serve(worker, concurrency=0):
                pass  # pragma: no cover - never entered
        worker.interrupt()
    assert (await queue.info()).ack_pending == 0


# ---------------------------------------------------------------------- failures


async def test_a_failing_job_is_retried_then_done(transport: NatsTransport, record: Path) -> None:
    """A handler that raises twice: nak'd twice, done at the third delivery."""
    queue = await thumbs(transport)
    await queue.put(Thumb("a", fail=2))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().done == 1)
        worker.interrupt()
    assert {key: counts(queue)[key] for key in ("failed", "redelivered", "terminated")} == {
        "failed": 2,
        "redelivered": 2,
        "terminated": 0,
    }


async def test_a_job_failing_max_deliver_times_is_terminated_and_dead_lettered(
    transport: NatsTransport, record: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """max_deliver=3, a job that always fails: three runs, then terminated, logged and published as a dead letter."""
    queue = await thumbs(transport, max_deliver=3)
    subscription, dead = await transport.subscribe(queue.dead_letter_subject)
    await queue.put(Thumb("poison", fail=99), id="poison")
    await queue.put(Thumb("fine"))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            with trio.fail_after(10):
                letter = await dead.receive()
            await wait_for(lambda: queue.statistics().done == 1)
        worker.interrupt()
    await subscription.aclose()
    assert letter.headers is not None
    assert letter.headers["Hybrid-Type"] == "tests.remote.Thumb"
    assert letter.headers["Nats-Msg-Id"] == "poison"
    assert letter.headers["Hybrid-Deliveries"] == "3"
    assert "failed 3 times" in letter.headers["Hybrid-Dead-Reason"]
    assert {key: counts(queue)[key] for key in ("failed", "terminated", "done")} == {
        "failed": 3,
        "terminated": 1,
        "done": 1,
    }
    assert "failed for the last time (delivery 3 of 3): terminated" in caplog.text
    assert (await queue.info()).pending == 0  # terminated jobs leave the work queue


async def test_undecodable_jobs_are_terminated_and_the_worker_goes_on(
    transport: NatsTransport, record: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Raw bytes, an unknown type, a bad version, another registered type: each terminated and counted."""
    codec = hybrid.codec.MessageCodec()
    codec.register(Other)
    queue = await open_work_queue(transport, codec, name="thumbs", job_type=Thumb)
    js = jetstream(transport)
    name, _, payload = codec.encode(Other("x"))
    await js.publish(queue.subject, b"raw bytes")
    await js.publish(queue.subject, b"\x81", {"Hybrid-Type": "nobody.Knows"})
    await js.publish(queue.subject, b"\x81", {"Hybrid-Type": "tests.remote.Thumb", "Hybrid-Version": "x"})
    await js.publish(queue.subject, b"\xc1", {"Hybrid-Type": "tests.remote.Thumb"})
    await js.publish(queue.subject, payload, {"Hybrid-Type": name})
    await queue.put(Thumb("good"))
    subscription, dead = await transport.subscribe(queue.dead_letter_subject)
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().done == 1 and queue.statistics().terminated == 5)
            reasons: list[str] = []
            with trio.fail_after(5):
                for _ in range(5):
                    letter: Message = await dead.receive()
                    assert letter.headers is not None
                    reasons.append(letter.headers["Hybrid-Dead-Reason"])
        worker.interrupt()
    await subscription.aclose()
    assert counts(queue)["undecodable"] == 5
    assert all(reason.startswith("does not decode") for reason in reasons)
    assert "no Hybrid-Type header" in caplog.text
    assert "unknown message class 'nobody.Knows'" in caplog.text
    assert "bad Hybrid-Version header 'x'" in caplog.text
    assert "a Other, not a Thumb" in caplog.text
    assert recorded(record) == [("w", "good")]


async def test_a_job_delivered_more_than_max_deliver_times_is_terminated_without_running(
    transport: NatsTransport, record: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose earlier deliveries never finished (dead workers, here nak'd by hand): not run again."""
    queue = await thumbs(transport, max_deliver=2)
    await queue.put(Thumb("crashes-workers"))
    js = jetstream(transport)
    async with js.pull("HYBRID_default_Q_thumbs", "thumbs") as puller:
        puller.grant(2)
        for _ in range(2):
            with trio.fail_after(5):
                (await puller.receive()).nak()
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().terminated == 1)
        worker.interrupt()
    assert recorded(record) == []
    assert "delivered 3 times, more than max_deliver 2" in caplog.text


async def test_a_worker_agent_that_ends_stops_serving_with_its_error_and_releases_the_job(
    transport: NatsTransport, record: Path
) -> None:
    """The worker agent ended: serve raises AgentStopped out of the block; its job goes back at once."""
    queue = await thumbs(transport)
    await queue.put(Thumb("a"))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        worker.interrupt()
        await worker.join()
        with pytest.raises(hybrid.AgentStopped):
            async with queue.serve(worker):
                await trio.sleep_forever()
    assert counts(queue)["released"] == 1
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w2"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().done == 1, 5.0)  # not after ack_wait (30 s)
        worker.interrupt()


async def test_leaving_serve_releases_the_jobs_in_hand_to_another_worker_at_once(
    transport: NatsTransport, record: Path
) -> None:
    """A slow job running when the block is left: cancelled, released (nak), done by the next serve at once."""
    queue = await thumbs(transport, ack_wait=30.0)
    await queue.put(Thumb("slow", seconds=60))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().in_flight == 1)
        # The handler still sleeps (leaving serve withdrew the request, the agent
        # finishes what it handles): an interrupt would wait for it.
        nursery.cancel_scope.cancel()
    assert recorded(record) == []
    assert counts(queue)["released"] == 1
    assert counts(queue)["in_flight"] == 0
    js = jetstream(transport)
    async with js.pull("HYBRID_default_Q_thumbs", "thumbs") as puller:
        puller.grant()
        with trio.fail_after(5):
            again = await puller.receive()
        assert again.deliveries == 2
        again.ack()


async def test_a_job_running_longer_than_ack_wait_is_kept_by_heartbeats(transport: NatsTransport, record: Path) -> None:
    """ack_wait 0.6 s, a job of 2 s: heartbeats every 0.2 s keep it; done once, never redelivered."""
    queue = await thumbs(transport, ack_wait=0.6)
    await queue.put(Thumb("long", seconds=2.0))
    await queue.put(Thumb("short"))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, hybrid.Pool(partial(Thumbnailer, record, "w"), size=2, agent_type=Thumbnailer))
        async with queue.serve(worker, concurrency=2):
            await wait_for(lambda: queue.statistics().done == 2)
            await trio.sleep(0.7)  # any redelivery would come now
        worker.interrupt()
    assert counts(queue)["redelivered"] == 0
    assert sorted(path for _, path in recorded(record)) == ["long", "short"]


async def test_serve_keeps_going_across_a_server_restart_and_put_fails_meanwhile(
    nats_server: NatsServer, transport: NatsTransport, record: Path
) -> None:
    """Server stopped mid-run: put raises RemoteUnavailable; after the restart, jobs flow again; no task left over."""
    queue = await thumbs(transport)
    before = tasks_living()
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker, concurrency=2):
            await put_all(queue, ["a", "b"])
            await wait_for(lambda: queue.statistics().done == 2)
            nats_server.stop()
            with trio.fail_after(10):
                await transport.wait_disconnected()
            with pytest.raises(RemoteUnavailable):
                await queue.put(Thumb("lost"))
            nats_server.start()
            with trio.fail_after(10):
                await transport.wait_connected()
            with trio.fail_after(10):
                while True:
                    try:
                        await put_all(queue, ["c", "d"])
                        break
                    except RemoteUnavailable:  # JetStream not ready yet after the restart
                        await trio.sleep(0.1)
            await wait_for(lambda: queue.statistics().done == 4)
        worker.interrupt()
    assert sorted(path for _, path in recorded(record)) == ["a", "b", "c", "d"]
    assert tasks_living() == before


async def test_an_ack_that_could_not_be_sent_is_sent_after_the_reconnect(
    nats_server: NatsServer, transport: NatsTransport, record: Path
) -> None:
    """A job finishing while the server is down: its ack waits for the link, and the job is not redelivered."""
    queue = await thumbs(transport, ack_wait=30.0)
    await queue.put(Thumb("a", seconds=1.0))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().in_flight == 1)
            nats_server.stop()
            await wait_for(lambda: queue.statistics().done == 1)
            nats_server.start()
            with trio.fail_after(10):
                await transport.wait_connected()
            await wait_for(lambda: not queue._unsent)
            await transport.flush()
            with trio.fail_after(10):
                while (await queue.info()).ack_pending:  # noqa: ASYNC110 - polling the server
                    await trio.sleep(0.05)
        worker.interrupt()
    assert counts(queue)["redelivered"] == 0


# ---------------------------------------------------------------------- worker processes


async def test_worker_processes_share_the_queue_and_do_each_job_once(
    transport: NatsTransport, record: Path, workers: StartWorker
) -> None:
    """Three worker processes on one queue: thirty jobs, each done once, by more than one process."""
    queue = await thumbs(transport)
    paths = [f"{i}.png" for i in range(30)]
    for i in range(3):
        await workers(f"w{i}")
    await put_all(queue, paths, seconds=0.05)
    await wait_for(lambda: len(recorded(record)) == 30, 30.0)
    await trio.sleep(0.3)  # a second run of any job would be recorded now
    lines = recorded(record)
    assert sorted(path for _, path in lines) == sorted(paths)
    assert len({label for label, _ in lines}) >= 2


async def test_a_killed_workers_job_is_redelivered_after_ack_wait_and_done_once(
    transport: NatsTransport, record: Path, workers: StartWorker
) -> None:
    """SIGKILL a worker process mid-job: after ack_wait its job is done by the survivor; every job done once."""
    queue = await thumbs(transport, ack_wait=1.5)
    doomed = await workers("doomed", ack_wait=1.5)
    await queue.put(Thumb("stuck", seconds=2.0), id="stuck")
    await wait_for(lambda: "stuck" in doomed.started())
    await workers("survivor", ack_wait=1.5)
    await put_all(queue, [f"{i}.png" for i in range(5)])
    stop(doomed)
    await queue.put(Thumb("stuck", seconds=2.0), id="stuck")  # a duplicate: dropped
    await wait_for(lambda: len(recorded(record)) == 6, 30.0)
    await trio.sleep(2.0)  # a second run of "stuck" would be recorded now
    assert sorted(recorded(record)) == sorted([("survivor", "stuck")] + [("survivor", f"{i}.png") for i in range(5)])
    assert counts(queue)["duplicates"] == 1


# ---------------------------------------------------------------------- edges


@hybrid.codec.message(name="tests.remote.Thumb2", version=2, upgrade=lambda version, fields: fields)
@attrs.frozen
class ThumbV2(hybrid.Request[None]):
    """A job class at version 2."""

    path: str


class V2Worker(hybrid.Agent[None]):
    """Records `ThumbV2` jobs in `done`."""

    def __init__(self) -> None:
        self.done: list[str] = []

    @hybrid.on_request
    async def thumb(self, job: ThumbV2) -> None:
        self.done.append(job.path)


async def test_a_job_class_of_a_later_version_travels_with_its_version(transport: NatsTransport) -> None:
    """A version-2 job: put with a Hybrid-Version header, decoded as version 2 by the worker."""
    queue = await open_work_queue(transport, hybrid.codec.MessageCodec(), name="v2", job_type=ThumbV2)
    await queue.put(ThumbV2("a"))
    agent = V2Worker()
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, agent)
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().done == 1)
        worker.interrupt()
    assert agent.done == ["a"]


async def test_an_exception_leaving_a_serve_block_comes_out_bare(transport: NatsTransport, record: Path) -> None:
    """The body's own exception is raised as it is, not in an ExceptionGroup."""
    queue = await thumbs(transport)
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        with pytest.raises(KeyError, match="mine"):
            async with queue.serve(worker):
                raise KeyError("mine")
        worker.interrupt()


async def test_every_job_in_hand_is_released_when_the_worker_agent_ends(transport: NatsTransport, record: Path) -> None:
    """Two slots, the worker gone: both jobs fail to reach it and are released; AgentStopped comes out once."""
    queue = await thumbs(transport)
    await put_all(queue, ["a", "b"])
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        worker.interrupt()
        await worker.join()
        with pytest.raises(hybrid.AgentStopped):
            async with queue.serve(worker, concurrency=2):
                await trio.sleep_forever()
    assert counts(queue)["released"] == 2


async def test_a_dead_letter_too_large_to_publish_is_logged(
    transport: NatsTransport, caplog: pytest.LogCaptureFixture, record: Path
) -> None:
    """A raw job just under max_payload: terminated; its dead letter (with headers added) is too large: a warning."""
    queue = await thumbs(transport)
    await jetstream(transport).publish(queue.subject, b"x" * (transport.max_payload - 20))
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Thumbnailer(record, "w"))
        async with queue.serve(worker):
            await wait_for(lambda: queue.statistics().terminated == 1)
        worker.interrupt()
    assert "the dead letter of a job of 'thumbs' was not published" in caplog.text
