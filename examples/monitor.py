"""A monitor that polls a resource and counts what it sees, with mutable state.

The state is an argument (``Counters``) that the polling state passes to itself
on every re-entry; the agent ends after a fixed number of polls with a report.

    python examples/monitor.py
"""

from __future__ import annotations

import random

import attrs
import trio
from typing_extensions import Self

from hybrid import Agent, Next


@attrs.define
class Counters:
    polls: int = 0
    healthy: int = 0
    degraded: int = 0
    down: int = 0
    longest_outage: int = 0
    outage: int = 0


class FakeService:
    """Stands in for a remote health endpoint (seeded, so runs are repeatable)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    async def health(self) -> str:
        await trio.sleep(0.001)  # a network round trip
        return self.rng.choices(["ok", "slow", "down"], weights=[8, 2, 1])[0]


class Monitor(Agent[Counters]):
    def __init__(self, service: FakeService, polls: int, interval: float) -> None:
        self.service = service
        self.polls = polls
        self.interval = interval

    def begin(self) -> Next[Self]:
        return Next.do_async(self.poll, Counters())

    async def poll(self, counters: Counters) -> Next[Self]:
        status = await self.service.health()
        counters.polls += 1
        if status == "ok":
            counters.healthy += 1
        elif status == "slow":
            counters.degraded += 1
        else:
            counters.down += 1
        counters.outage = counters.outage + 1 if status == "down" else 0
        counters.longest_outage = max(counters.longest_outage, counters.outage)
        if counters.polls >= self.polls:
            return Next.done(counters)
        await trio.sleep(self.interval)
        return Next.do_async(self.poll, counters)  # re-enter the same state


async def main(polls: int = 50, interval: float = 0.001) -> Counters:
    report = await Monitor(FakeService(seed=7), polls, interval).run()
    print(
        f"{report.polls} polls: {report.healthy} ok, {report.degraded} slow, "
        f"{report.down} down (longest outage: {report.longest_outage} polls)"
    )
    return report


if __name__ == "__main__":
    trio.run(main)
