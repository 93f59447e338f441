"""CPU work in a sync state, beside async work that keeps running.

``Primes`` counts primes in a worker thread (``Next.do_sync``), polling
``hybrid.interrupted()`` so it can stop early. Meanwhile a ``Ticker`` agent
keeps handling timer events on the trio loop: the loop is never blocked.

    python examples/parallel_cpu.py
"""

from __future__ import annotations

import attrs
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next


class Primes(Agent[int | None]):
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def begin(self) -> Next[Self]:
        return Next.do_sync(self.count, self.limit)

    def count(self, limit: int) -> Next[Self]:
        found = 0
        for n in range(2, limit):
            if n % 1000 == 0 and hybrid.interrupted():
                return Next.stop()
            if all(n % d for d in range(2, int(n**0.5) + 1)):
                found += 1
        return Next.done(found)


@attrs.frozen
class Tick:
    pass


@attrs.frozen
class Ticks(hybrid.Request[int]):
    pass


class Ticker(Agent):
    def __init__(self) -> None:
        self.ticks = 0

    def begin(self) -> Next[Self]:
        self.ctx.send_every(0.005, Tick())
        return Next.events()

    @hybrid.on_event
    async def tick(self, event: Tick) -> None:
        self.ticks += 1

    @hybrid.on_request
    async def count(self, request: Ticks) -> int:
        return self.ticks


async def main(limit: int = 60_000) -> tuple[int | None, int]:
    async with trio.open_nursery() as nursery:
        ticker = hybrid.spawn(nursery, Ticker())
        primes = await Primes(limit).run()
        ticks = await ticker.request(Ticks())
        ticker.interrupt()
    print(f"{primes} primes below {limit}; the ticker ticked {ticks} times meanwhile")
    return primes, ticks


if __name__ == "__main__":
    trio.run(main)
