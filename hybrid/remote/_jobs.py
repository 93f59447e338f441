"""Durable work queues on JetStream: typed jobs, at-least-once, pulled by idle workers.

```python
queue = await open_work_queue(transport, codec, name="thumbs", job_type=Thumb, ack_wait=30.0)
ack = await queue.put(Thumb("a.png"), id="a.png")      # stored (or ack.duplicate) once this returns
async with queue.serve(thumbnailer, concurrency=4):      # this process works on the queue meanwhile
    await trio.sleep_forever()
```

How it maps onto JetStream (`hybrid.remote._jetstream`):

- one **work-queue stream** per queue, ``HYBRID_<cluster>_Q_<name>``, storing the subject
  ``hybrid.<cluster>.jobs.<name>`` (file storage: jobs survive a server restart); a job
  is deleted once acked or terminated. `put` publishes with ``Nats-Msg-Id: <id>`` and
  waits for the stream's acknowledgement: a second `put` with the same id within
  `duplicate_window` seconds is not stored (`PubAck.duplicate`).
- one **durable pull consumer** (named after the queue) that every `serve`, in every
  process, pulls from: each job goes to one of them. Its ``max_ack_pending`` is
  `max_unacked`, the bound on jobs taken and not finished across all workers
  (backpressure: pulls wait at the server while it is reached).
- **idle workers pull** (work stealing with no coordinator): `serve` grants its
  `Puller` one credit per free slot (``concurrency`` minus jobs in hand) and one more
  each time a job finishes, so the server hands jobs only to workers with room, and a
  faster or idler process takes more.
- a job is **acked only after its handler returned** (``await worker.request(job)``;
  the answer is dropped). While it runs, `serve` sends a progress heartbeat
  (``+WPI``) every ``ack_wait / 3`` seconds, so the server redelivers a job after
  `ack_wait` only when its worker is dead (or hung, or cut off).
- a handler that **raised**: ``nak`` with the `retry` backoff's delay (the job comes
  back, to any worker); at its `max_deliver`-th delivery it is **terminated**, logged,
  counted, and its payload published to the **dead-letter subject**
  ``hybrid.<cluster>.jobs.<name>.dead`` (core NATS, at-most-once: subscribe to it, or
  give it a stream of its own, to keep dead jobs).
- `max_deliver` is enforced here, not by the server (whose consumer has no limit): a
  job delivered more than `max_deliver` times is terminated *without running it*.
  So a job whose worker dies every time (a poison job that crashes the process) is
  dead-lettered too, instead of staying in the stream forever, as a job over the
  server's limit would in a work queue.
- a job that **does not decode** (no ``Hybrid-Type`` header, an unknown type, bad
  bytes, or a type other than `job_type`): logged, terminated, dead-lettered,
  counted; the worker goes on.

Delivery guarantees: **at least once**. A job is done again when its ack is lost
(the link dropped between the handler's return and the ack: acks that could not be
sent are sent again after the reconnect, which saves most of those), when a handler
outlives `ack_wait` without its heartbeats reaching the server, or when a worker
dies after the handler's effect and before the ack. Make handlers idempotent (the
job's `id` is a natural key). Jobs are not ordered.

Leaving a `serve` block (or its cancellation) cancels the handlers running; their jobs,
and those received and not started, are **released** (``nak``: delivered again at once,
to any worker; sent after the block's subscription ended, so the server cannot hand them
straight back to it). A release that cannot be sent (the link is down), and a job the
server was sending just as the subscription ended, come back after `ack_wait`. A worker
process that dies releases nothing: its jobs come back after `ack_wait`.

While the server is down, `put` raises `RemoteUnavailable` (nothing stored, or, if it
dropped after sending, maybe stored: put again with the same id); `serve` keeps
going and pulls again once reconnected (jobs in hand go on; their acks wait for the
link). `put` on a full queue (`max_jobs` stored) raises `QueueFull` at once: the
caller decides whether to wait and try again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, final

import attrs
import trio
from typing_extensions import TypeVar

from hybrid import Address, Backoff, Request, UnhandledMessage, _validate
from hybrid.codec import CodecError, MessageCodec

from ._errors import MessageTooLarge, RemoteUnavailable
from ._jetstream import ConsumerInfo, Delivery, JetStream, PubAck, Puller, StreamFull, header_value, jetstream
from ._names import check_name, jobs_stream, jobs_subject
from ._transport import Transport

__all__ = ["QueueFull", "WorkQueue", "WorkQueueStatistics", "open_work_queue"]

logger = logging.getLogger("hybrid.remote.jobs")

J = TypeVar("J", bound=Request[Any])

TYPE_HEADER: Final = "Hybrid-Type"
"""The header naming a job's registered class (its codec name)."""

VERSION_HEADER: Final = "Hybrid-Version"
"""The header giving the job class's version, when it is not 1."""

DEAD_REASON_HEADER: Final = "Hybrid-Dead-Reason"
"""The header of a dead letter that says why the job was given up."""

DELIVERIES_HEADER: Final = "Hybrid-Deliveries"
"""The header of a dead letter that says how many times the job was delivered."""

_DEFAULT_RETRY: Final = Backoff(initial=1.0, factor=2.0, max_delay=60.0, jitter=0.1)


class QueueFull(StreamFull):
    """`WorkQueue.put` found the queue holding its `max_jobs` already: nothing was stored."""


@attrs.frozen
class WorkQueueStatistics:
    """Counts of one `WorkQueue` object, in this process (`WorkQueue.statistics`).

    For the queue as the server sees it (jobs waiting, jobs taken by any worker),
    see `WorkQueue.info`.

    Attributes:
        put: jobs stored by `WorkQueue.put` (duplicates not counted).
        duplicates: puts the stream dropped as duplicates of an id within the window.
        done: jobs whose handler returned (acked).
        failed: handler runs that raised (each run counts; the job is retried or terminated).
        redelivered: deliveries that were not a job's first (after a failure, a
            release, a dead worker or a lost ack).
        terminated: jobs given up: failed `max_deliver` times, delivered more than
            that, or undecodable.
        undecodable: jobs that did not decode into the queue's job type (counted in
            `terminated` too).
        released: jobs handed back (nak) when a `serve` block ended.
        in_flight: jobs received by this process's `serve` blocks and not finished.
    """

    put: int
    duplicates: int
    done: int
    failed: int
    redelivered: int
    terminated: int
    undecodable: int
    released: int
    in_flight: int


@attrs.define(eq=False)
class _Serving:
    """The state of one `WorkQueue.serve` block, shared by its tasks (all on the trio thread)."""

    worker: Address[Any]
    """Where jobs go: ``await worker.request(job)``."""
    puller: Puller
    """Where jobs come from."""
    scope: trio.CancelScope
    """The cancel scope of the block's nursery: cancelled on a `failure`."""
    failure: BaseException | None = None
    """Why serving stopped on its own (the worker agent ended): raised out of the block."""
    running: set[Delivery] = attrs.field(factory=set[Delivery])
    """Jobs whose handler runs: written by `WorkQueue._run`, read by `WorkQueue._heartbeats`."""


@final
class WorkQueue(Generic[J]):
    """A durable work queue of jobs of type `J`: made by `open_work_queue` only.

    Put jobs with `put` from any process; work on them with `serve` in as many
    processes as you like. See the module's documentation for the guarantees.
    """

    def __init__(
        self,
        js: JetStream,
        codec: MessageCodec,
        job_type: type[J],
        *,
        cluster: str,
        name: str,
        ack_wait: float,
        max_deliver: int,
        retry: Backoff,
    ) -> None:
        self._js = js
        self._codec = codec
        self._job_type = job_type
        self._name = name
        self._subject = jobs_subject(cluster, name)
        self._stream = jobs_stream(cluster, name)
        self._consumer = name
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._retry = retry
        self._dead_letters = f"{self._subject}.dead"
        self._unsent: list[tuple[Delivery, bytes]] = []
        """Answers (ack, term) that could not be sent while the link was down: sent again by `_resend`."""
        self._resend_wanted = trio.Event()
        """Set when `_unsent` gets an answer."""
        # statistics: written by put and the serve tasks (all on the trio thread)
        self._put = 0
        self._duplicates = 0
        self._done = 0
        self._failed_runs = 0
        self._redelivered = 0
        self._terminated = 0
        self._undecodable = 0
        self._released = 0
        self._in_flight = 0

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._name

    @property
    def subject(self) -> str:
        """The subject its jobs are published to: ``hybrid.<cluster>.jobs.<name>``."""
        return self._subject

    @property
    def dead_letter_subject(self) -> str:
        """Where given-up jobs are published (core NATS): ``hybrid.<cluster>.jobs.<name>.dead``.

        A dead letter has the job's payload and headers, plus ``Hybrid-Dead-Reason``
        (why) and ``Hybrid-Deliveries`` (how many deliveries it had).
        """
        return self._dead_letters

    @property
    def stream(self) -> str:
        """Its JetStream stream: ``HYBRID_<cluster>_Q_<name>`` (its durable consumer is named `name`)."""
        return self._stream

    @property
    def job_type(self) -> type[J]:
        """The class of its jobs."""
        return self._job_type

    def statistics(self) -> WorkQueueStatistics:
        """This process's counts for the queue (see `WorkQueueStatistics`)."""
        return WorkQueueStatistics(
            put=self._put,
            duplicates=self._duplicates,
            done=self._done,
            failed=self._failed_runs,
            redelivered=self._redelivered,
            terminated=self._terminated,
            undecodable=self._undecodable,
            released=self._released,
            in_flight=self._in_flight,
        )

    async def info(self) -> ConsumerInfo:
        """The queue as the server sees it: ``pending`` jobs waiting, ``ack_pending`` taken by workers.

        Raises:
            RemoteUnavailable: the link is down.
        """
        return await self._js.consumer_info(self._stream, self._consumer)

    # ------------------------------------------------------------------ producing

    async def put(self, job: J, *, id: str | None = None) -> PubAck:
        """Store a job; return once the server stored it (or found it a duplicate).

        Args:
            job: the job, an instance of the queue's job type.
            id: the job's id (``Nats-Msg-Id``): a second put with the same id within
                the queue's duplicate window is dropped (``ack.duplicate`` is True).
                None: no deduplication.

        Raises:
            TypeError: `job` is not of the queue's job type.
            ValueError: `id` (or the job class's wire name) would not arrive as
                it is in a NATS header: empty, whitespace at an end, a line
                break, a lone surrogate.
            hybrid.codec.CodecError: `job` does not encode.
            MessageTooLarge: the encoded job is larger than the server accepts.
            QueueFull: the queue holds `max_jobs` jobs already.
            RemoteUnavailable: the link is down or the server did not answer in
                time (the job may have been stored then: put it again with the
                same id).

        Example:
            ```python
            ack = await queue.put(Thumb("a.png"), id="a.png")
            if ack.duplicate:
                print("already queued")
            ```
        """
        if not isinstance(job, self._job_type):
            raise TypeError(f"queue {self._name!r} takes {self._job_type.__qualname__} jobs, got {job!r}")
        if id is not None:
            header_value("id", id)
        name, version, payload = self._codec.encode(job)
        headers = {TYPE_HEADER: header_value(f"the wire name of {type(job).__qualname__}", name)}
        if version != 1:
            headers[VERSION_HEADER] = str(version)
        try:
            ack = await self._js.publish(self._subject, payload, headers, msg_id=id)
        except StreamFull as error:
            raise QueueFull(
                f"the queue {self._name!r} is full: {error.description}", error.code, error.err_code
            ) from None
        if ack.duplicate:
            self._duplicates += 1
        else:
            self._put += 1
        return ack

    # ------------------------------------------------------------------ consuming

    @asynccontextmanager
    async def serve(self, worker: Address[Any], *, concurrency: int = 1) -> AsyncGenerator[None]:
        """Work on the queue's jobs with `worker` for the duration of a block.

        Each job is ``await worker.request(job)``; up to `concurrency` jobs are in
        hand at once (a single agent handles its requests one at a time: give a
        `hybrid.Pool` address to run them in parallel). The block's body runs
        meanwhile (``await trio.sleep_forever()`` to serve until cancelled).

        Leaving the block cancels the handlers running and releases their jobs
        (and those received and not started) to other workers.

        Args:
            worker: the address of an agent (or pool) with an ``on_request`` handler
                for the job type.
            concurrency: the most jobs in hand at once (received and not finished).

        Raises:
            hybrid.UnhandledMessage: `worker` has no handler for the job type
                (raised before anything is pulled).
            hybrid.AgentStopped: the worker agent ended while serving (the job it
                was given is released); raised out of the block.

        Example:
            ```python
            async with trio.open_nursery() as nursery:
                thumbnailer = hybrid.spawn(nursery, hybrid.Pool(Thumbnailer, size=4))
                async with queue.serve(thumbnailer, concurrency=4):
                    await trio.sleep_forever()
            ```
        """
        slots = _validate.count("concurrency", concurrency, minimum=1)
        if not worker.handles(self._job_type):
            raise UnhandledMessage(
                f"the worker {worker!r} has no @hybrid.on_request handler for {self._job_type.__qualname__}"
            )
        escaped: BaseException | None = None
        async with (
            self._js.pull(self._stream, self._consumer, max_batch=slots) as puller,
            trio.open_nursery() as nursery,
        ):
            serving = _Serving(worker, puller, nursery.cancel_scope)
            for _ in range(slots):
                nursery.start_soon(self._work, serving, puller)
            nursery.start_soon(self._heartbeats, serving)
            nursery.start_soon(self._resend)
            puller.grant(slots)
            try:
                yield
            except BaseException as error:  # raised again below, bare (not in the nursery's group)
                escaped = error
            finally:
                nursery.cancel_scope.cancel()
        if serving.failure is not None:
            raise serving.failure
        if escaped is not None:
            raise escaped

    async def _heartbeats(self, serving: _Serving) -> None:
        """Every ``ack_wait / 3``: a progress heartbeat for each job running (a young one may get it early)."""
        period = self._ack_wait / 3
        while True:
            await trio.sleep(period)
            for delivery in list(serving.running):
                with contextlib.suppress(RemoteUnavailable):
                    delivery.in_progress()

    async def _work(self, serving: _Serving, puller: Puller) -> None:
        """One slot of a serve block: take a job, run it, answer it, grant one more; until cancelled."""
        while True:
            delivery = await puller.receive()
            self._in_flight += 1
            try:
                await self._run(serving, delivery)
            finally:
                self._in_flight -= 1
            if serving.failure is not None:
                return
            puller.grant()

    async def _run(self, serving: _Serving, delivery: Delivery) -> None:
        if delivery.deliveries > 1:
            self._redelivered += 1
        if delivery.deliveries > self._max_deliver:
            logger.error(
                "a job of %r (stream sequence %d) was delivered %d times, more than max_deliver %d, "
                "without finishing (its workers died?): terminated without running it",
                self._name,
                delivery.stream_sequence,
                delivery.deliveries,
                self._max_deliver,
            )
            self._give_up(delivery, f"delivered {delivery.deliveries} times without finishing")
            return
        try:
            job = self._decode(delivery)
        except CodecError as error:
            self._undecodable += 1
            logger.error(
                "a job of %r (stream sequence %d) does not decode: terminated: %s",
                self._name,
                delivery.stream_sequence,
                error,
            )
            self._give_up(delivery, f"does not decode: {error}")
            return
        serving.running.add(delivery)
        finished = False
        try:
            await serving.worker.request(job)
            finished = True
        except Exception as error:
            finished = True
            self._failed(serving, delivery, job, error)
        else:
            self._done += 1
            self._answer(delivery, b"+ACK")
        finally:
            serving.running.remove(delivery)
            if not finished:  # cancelled: the serve block ends
                self._release(serving, delivery)

    def _failed(self, serving: _Serving, delivery: Delivery, job: J, error: Exception) -> None:
        if not serving.worker.is_alive:  # not the job's fault: serving ends
            self._release(serving, delivery)
            serving.failure = serving.failure or error  # the first one is raised
            serving.scope.cancel()
            return
        self._failed_runs += 1
        attempt = delivery.deliveries
        if attempt >= self._max_deliver:
            logger.error(
                "a job of %r failed for the last time (delivery %d of %d): terminated: %r",
                self._name,
                attempt,
                self._max_deliver,
                job,
                exc_info=error,
            )
            self._give_up(delivery, f"failed {attempt} times; last: {error!r}")
            return
        delay = self._retry.delay(attempt)
        logger.warning(
            "a job of %r failed (delivery %d of %d): retried in %.2f s: %r",
            self._name,
            attempt,
            self._max_deliver,
            delay,
            error,
        )
        with contextlib.suppress(RemoteUnavailable):  # else it comes back after ack_wait
            delivery.nak(delay)

    # ------------------------------------------------------------------ answers

    def _answer(self, delivery: Delivery, body: bytes) -> None:
        """Send an ack or term; keep it for `_resend` if the link is down."""
        try:
            if body == b"+ACK":
                delivery.ack()
            else:
                delivery.term(body.decode())
        except RemoteUnavailable:
            self._unsent.append((delivery, body))
            self._resend_wanted.set()

    async def _resend(self) -> None:
        """Send the answers kept while the link was down, once it is back (a task of each `serve`)."""
        transport = self._js.transport
        while True:
            await self._resend_wanted.wait()
            await transport.wait_connected()
            unsent, self._unsent = self._unsent, []
            self._resend_wanted = trio.Event()
            for delivery, body in unsent:
                self._answer(delivery, body)

    def _release(self, serving: _Serving, delivery: Delivery) -> None:
        """Hand a job back unfinished: nak'd when the serve block ends (see `Puller.release`)."""
        serving.puller.release(delivery)
        self._released += 1

    def _give_up(self, delivery: Delivery, reason: str) -> None:
        """Terminate a job and publish it to the dead-letter subject."""
        self._terminated += 1
        self._answer(delivery, b"+TERM " + reason.encode())
        headers = dict(delivery.headers)
        headers[DEAD_REASON_HEADER] = reason.replace("\r", " ").replace("\n", " ")
        headers[DELIVERIES_HEADER] = str(delivery.deliveries)
        try:
            self._js.transport.publish(self._dead_letters, delivery.data, headers)
        except (RemoteUnavailable, MessageTooLarge) as error:
            logger.warning("the dead letter of a job of %r was not published: %s", self._name, error)

    def _decode(self, delivery: Delivery) -> J:
        """The job a delivery carries.

        Raises:
            CodecError: no type header, a bad version, an unknown type, bad bytes,
                or a type other than the queue's.
        """
        name = delivery.headers.get(TYPE_HEADER)
        if name is None:
            raise CodecError(f"no {TYPE_HEADER} header (published by something other than WorkQueue.put?)")
        version_text = delivery.headers.get(VERSION_HEADER, "1")
        if not version_text.isdigit():
            raise CodecError(f"bad {VERSION_HEADER} header {version_text!r}")
        job = self._codec.decode(name, int(version_text), delivery.data)
        if not isinstance(job, self._job_type):
            raise CodecError(f"a {type(job).__qualname__}, not a {self._job_type.__qualname__}")
        return job

    def __repr__(self) -> str:
        return f"<WorkQueue {self._name!r} of {self._job_type.__qualname__}>"


async def open_work_queue(
    transport: Transport,
    codec: MessageCodec,
    *,
    name: str,
    job_type: type[J],
    cluster: str = "default",
    ack_wait: float = 30.0,
    max_deliver: int = 5,
    max_unacked: int = 1000,
    duplicate_window: float = 120.0,
    max_jobs: int | None = None,
    retry: Backoff = _DEFAULT_RETRY,
    timeout: float = 5.0,
) -> WorkQueue[J]:
    """Open the durable work queue `name` of `cluster`, creating its stream and consumer if needed.

    Every process that puts or serves opens the queue the same way; the last one
    to open it sets its server-side settings (`ack_wait`, `max_unacked`,
    `duplicate_window`, `max_jobs`).

    Args:
        transport: the connection (`open_nats`).
        codec: the codec the jobs travel with; `job_type` is registered in it.
        name: the queue's name (``[A-Za-z0-9_-]``, 1 to 64).
        job_type: the class of its jobs: a `hybrid.Request` subclass the workers'
            agents handle (with ``@hybrid.on_request``), and the codec can encode.
        cluster: the cluster's name (its jobs' subject and stream carry it).
        ack_wait: seconds after which a job whose worker stopped answering (dead,
            hung, cut off) is delivered again; running jobs send heartbeats every
            ``ack_wait / 3``.
        max_deliver: deliveries of a job at most: a handler that raised at the last
            one, or a job delivered more times, is terminated and dead-lettered.
        max_unacked: jobs in hand (taken, not finished) at most, over every worker:
            the bound that holds workers back when it is reached.
        duplicate_window: seconds within which a second `WorkQueue.put` of an id is dropped.
        max_jobs: jobs the queue holds at most (None: no limit); past it,
            `WorkQueue.put` raises `QueueFull`.
        retry: the delays before a failed job is delivered again (``retry.delay(n)``
            after the n-th failure).
        timeout: seconds to wait for each answer of the server.

    Raises:
        RemoteUnavailable: the link is down, or JetStream does not answer.
        hybrid.codec.CodecError: `job_type` cannot be a message class.
        TypeError: `job_type` is not a `hybrid.Request` subclass.
        ValueError: a bad name or option.

    Example:
        ```python
        codec = hybrid.codec.MessageCodec()
        async with open_nats(url) as transport:
            queue = await open_work_queue(transport, codec, name="thumbs", job_type=Thumb)
            await queue.put(Thumb("a.png"), id="a.png")
        ```
    """
    check_name(name, "queue name")
    if not (isinstance(job_type, type) and issubclass(job_type, Request)):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"job_type must be a hybrid.Request subclass, got {job_type!r}")
    codec.register(job_type)
    wait = _validate.seconds("ack_wait", ack_wait, positive=True)
    deliveries = _validate.count("max_deliver", max_deliver, minimum=1)
    unacked = _validate.count("max_unacked", max_unacked, minimum=1)
    if not isinstance(retry, Backoff):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"retry must be a hybrid.Backoff, got {retry!r}")
    js = jetstream(transport, timeout=timeout)
    queue = WorkQueue(
        js, codec, job_type, cluster=cluster, name=name, ack_wait=wait, max_deliver=deliveries, retry=retry
    )
    await js.work_queue_stream(queue.stream, [queue.subject], duplicate_window=duplicate_window, max_messages=max_jobs)
    # No max_deliver at the server: a job over it would stay in the work queue for good;
    # serve terminates it instead (see the module's docstring).
    await js.durable_consumer(queue.stream, name, ack_wait=wait, max_ack_pending=unacked)
    return queue
