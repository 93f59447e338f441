"""The jobs and worker agent of the work-queue tests, and a worker process serving a queue.

As a process: ``python -m tests.remote.jobs_worker URL QUEUE RECORD LABEL [CONCURRENCY] [ACK_WAIT]``
opens the work queue QUEUE of `Thumb` jobs on the NATS server at URL and serves it with
a `Thumbnailer` (a pool of CONCURRENCY of them), which appends ``LABEL PATH`` to the
file RECORD for each job it finished. It prints ``READY`` once serving, ``START PATH``
when a job starts and ``DONE PATH`` when it finished, and serves until killed.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import attrs
import trio

import hybrid
import hybrid.codec
from hybrid.remote._jobs import open_work_queue
from hybrid.remote._nats import open_nats


@hybrid.codec.message(name="tests.remote.Thumb")
@attrs.frozen
class Thumb(hybrid.Request[str]):
    """A job: make the thumbnail of `path`, working `seconds`; `fail` the first `fail` deliveries."""

    path: str
    seconds: float = 0.0
    fail: int = 0


@hybrid.codec.message(name="tests.remote.Other")
@attrs.frozen
class Other(hybrid.Request[None]):
    """A request of another type (not the queue's job type)."""

    text: str


def record_line(record: Path, line: str) -> None:
    """Append `line` to `record` in one write (atomic for short lines, across processes)."""
    descriptor = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{line}\n".encode())
    finally:
        os.close(descriptor)


def recorded(record: Path) -> list[tuple[str, str]]:
    """The (label, path) lines of `record` (none when it does not exist)."""
    if not record.exists():
        return []
    return [(label, path) for label, _, path in (line.partition(" ") for line in record.read_text().splitlines())]


class Thumbnailer(hybrid.Agent[None]):
    """Does `Thumb` jobs: records each one done in `record`, as `label`; counts the attempts of each path."""

    def __init__(self, record: Path, label: str, *, verbose: bool = False) -> None:
        self.record = record
        self.label = label
        self.verbose = verbose
        self.attempts: dict[str, int] = {}

    def say(self, text: str) -> None:
        """Print `text` for the test that runs this process."""
        if self.verbose:
            print(text, flush=True)

    @hybrid.on_request
    async def thumb(self, job: Thumb) -> str:
        """Work `job.seconds`, fail if asked to, then record the job."""
        attempt = self.attempts[job.path] = self.attempts.get(job.path, 0) + 1
        self.say(f"START {job.path}")
        await trio.sleep(job.seconds)
        if attempt <= job.fail:
            raise ValueError(f"{job.path}: attempt {attempt} fails")
        record_line(self.record, f"{self.label} {job.path}")
        self.say(f"DONE {job.path}")
        return f"thumb of {job.path}"


async def serve(url: str, queue_name: str, record: Path, label: str, concurrency: int, ack_wait: float) -> None:
    """Serve the queue until killed."""
    async with open_nats(url, reconnect_wait=0.05) as transport:
        codec = hybrid.codec.MessageCodec()
        queue = await open_work_queue(transport, codec, name=queue_name, job_type=Thumb, ack_wait=ack_wait)
        async with trio.open_nursery() as nursery:
            worker = hybrid.spawn(
                nursery,
                hybrid.Pool(
                    partial(Thumbnailer, record, label, verbose=True), size=concurrency, agent_type=Thumbnailer
                ),
            )
            async with queue.serve(worker, concurrency=concurrency):
                print("READY", flush=True)
                await trio.sleep_forever()


if __name__ == "__main__":
    url, queue_name, record, label = sys.argv[1:5]
    concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    ack_wait = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
    trio.run(serve, url, queue_name, Path(record), label, concurrency, ack_wait)
