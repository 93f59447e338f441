"""A service under a supervisor: storage, workers and an HTTP-like front group.

The front accepts "requests" from a built-in load generator and hands them to
workers, which store results. On Ctrl-C (or SIGTERM) the supervisor stops its
groups in order, greatest first: the front stops taking requests, the workers
finish, then storage flushes. A second Ctrl-C cancels at once.

    python examples/service.py              # runs until Ctrl-C
    python examples/service.py --seconds 2  # or stops by itself after 2 seconds

The log shows the shutdown order.
"""

from __future__ import annotations

import argparse
import enum
import itertools
import logging
import signal
from typing import Any

import attrs
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopReason, Supervisor

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


class Storage(Agent):
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
    mailbox_capacity = 16

    def __init__(self, name: str, storage: hybrid.Address[Storage]) -> None:
        self.name = name
        self.storage = storage
        self.done = 0

    @hybrid.on_event
    async def job(self, event: Job) -> None:
        await trio.sleep(0.01)  # the work
        self.storage.send(Save(f"job-{event.n}", event.n * event.n))
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
        self.ctx.send_every(0.002, Tick())
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
    def begin(self) -> Next[Self]:
        self.storage = self.ctx.spawn(Storage(), group=Group.STORAGE)
        workers = [self.ctx.spawn(Worker(f"worker-{i}", self.storage), group=Group.WORKERS) for i in range(4)]
        self.ctx.spawn(Http(workers), group=Group.HTTP)
        log.info("service: ready")
        return Next.events()

    async def on_interrupt(self) -> None:
        log.info("service: shutting down in group order")

    async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
        log.debug("service: child %r ended (%s)", address, reason)

    async def on_stop(self, reason: StopReason) -> None:
        log.info("service: stopped (%s)", reason)


async def main(seconds: float | None = None) -> int:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Service())
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def on_signals() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    if count == 1:
                        log.info("service: %s received: graceful shutdown", signal.Signals(signum).name)
                        address.interrupt()
                    else:
                        log.info("service: second signal: cancelling")
                        nursery.cancel_scope.cancel()

            nursery.start_soon(on_signals)
            if seconds is not None:
                await trio.sleep(seconds)
                address.interrupt()
            await address.join()
            nursery.cancel_scope.cancel()  # stop listening for signals
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="stop by itself after this long")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7.0fms %(message)s")
    raise SystemExit(trio.run(main, arguments.seconds))
