"""A service under a supervisor, run in service mode: storage, workers and a front group.

The front takes a "request" every two milliseconds from a periodic timer and
hands it to a worker; the workers store their results. The agents that take
load have bounded mailboxes and are sent to with ``send_wait``, so a busy
worker slows the front down instead of piling work up (backpressure); the
timer's ticks never pile up either (one waits at most). On Ctrl-C (or SIGTERM)
the supervisor stops its groups in order, greatest first: the front stops
taking requests, the workers finish, then storage flushes. A second Ctrl-C
cancels at once.

From the repository root, in service mode (``hybrid run``, see the guide
"Running in production"), with the live page at http://127.0.0.1:8000/:

    hybrid run examples.service:make_app --http :8000

or as a script, through `hybrid.service.serve`:

    python examples/service.py              # runs until Ctrl-C
    python examples/service.py --seconds 2  # or stops by itself after 2 seconds

The log shows the shutdown order.
"""

from __future__ import annotations

import argparse
import enum
import itertools
import logging
from typing import Any

import attrs
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopReason, Supervisor
from hybrid.service import serve

log = logging.getLogger("service")


class Group(enum.IntEnum):
    STORAGE = 1
    WORKERS = 2
    HTTP = 3


@attrs.frozen
class Save:
    key: str
    value: int


@attrs.frozen
class Count(hybrid.Request[int]):
    pass


@attrs.frozen
class Job:
    n: int


@attrs.frozen
class Tick:
    pass


@attrs.frozen
class TimeUp:
    pass


class Storage(Agent):
    mailbox_capacity = 64  # four workers write here: a full mailbox makes them wait

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    @hybrid.on_event
    async def save(self, event: Save) -> None:
        self.rows[event.key] = event.value

    @hybrid.on_request
    async def count(self, request: Count) -> int:
        return len(self.rows)

    async def on_interrupt(self) -> None:
        log.info("storage: flushing %d rows", len(self.rows))
        await trio.sleep(0.05)  # the final write

    async def on_stop(self, reason: StopReason) -> None:
        log.info("storage: stopped (%s)", reason)


class Worker(Agent):
    mailbox_capacity = 16  # the front waits when a worker is this far behind

    def __init__(self, name: str, storage: hybrid.Address[Storage]) -> None:
        self.name = name
        self.storage = storage
        self.done = 0

    @hybrid.on_event
    async def job(self, event: Job) -> None:
        await trio.sleep(0.01)  # the work
        await self.storage.send_wait(Save(f"job-{event.n}", event.n * event.n))  # backpressure
        self.done += 1

    async def on_stop(self, reason: StopReason) -> None:
        log.info("%s: stopped after %d jobs (%s)", self.name, self.done, reason)


class Http(Agent):
    """Takes a request every few milliseconds and hands it to a worker."""

    def __init__(self, workers: list[hybrid.Address[Worker]]) -> None:
        self.workers = itertools.cycle(workers)
        self.numbers = itertools.count()
        self.accepted = 0

    def begin(self) -> Next[Self]:
        self.ctx.send_every(0.002, Tick())  # at most one tick waits while a worker is busy
        return Next.events()

    @hybrid.on_event
    async def tick(self, event: Tick) -> None:
        await next(self.workers).send_wait(Job(next(self.numbers)))  # backpressure
        self.accepted += 1

    async def on_interrupt(self) -> None:
        log.info("http: no longer accepting requests")

    async def on_stop(self, reason: StopReason) -> None:
        log.info("http: stopped after %d requests (%s)", self.accepted, reason)


class Service(Supervisor):
    """Storage, four workers and the front, in three groups; stops by itself after `seconds` if given."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds

    def begin(self) -> Next[Self]:
        self.storage = self.ctx.spawn(Storage(), group=Group.STORAGE, name="storage")
        workers = [
            self.ctx.spawn(Worker(f"worker-{i}", self.storage), group=Group.WORKERS, name=f"worker-{i}")
            for i in range(4)
        ]
        self.ctx.spawn(Http(workers), group=Group.HTTP, name="http")
        if self.seconds is not None:
            self.ctx.send_after(self.seconds, TimeUp())
        log.info("service: ready")
        return Next.events()

    @hybrid.on_event
    async def time_up(self, event: TimeUp) -> None:
        log.info("service: %gs are up", self.seconds)
        self.ctx.do_next(Next.interrupt())  # the same ordered shutdown as Ctrl-C

    async def on_interrupt(self) -> None:
        log.info("service: shutting down in group order")

    async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
        log.debug("service: child %r ended (%s)", address, reason)

    async def on_stop(self, reason: StopReason) -> None:
        log.info("service: stopped (%s)", reason)


def make_app(seconds: float | None = None) -> Service:
    """The factory ``hybrid run examples.service:make_app`` calls."""
    return Service(seconds)


async def main(seconds: float | None = None, port: int | None = None) -> int:
    """Run the service as ``hybrid run`` would; return its exit status."""
    return await serve(make_app(seconds), http=None if port is None else ("127.0.0.1", port))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="stop by itself after this long")
    parser.add_argument("--http", type=int, default=None, metavar="PORT", help="serve HTTP on 127.0.0.1:PORT")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7.0fms %(message)s")
    raise SystemExit(trio.run(main, arguments.seconds, arguments.http))
