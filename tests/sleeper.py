"""The agents of the tests of contained runs (``ctx.start_agent``): `Sleeper`, `SlowCleanup`, `Parent`."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopReason
from tests.messages import Echo, Ping


class Sleeper(Agent):
    """Idle in actor mode; hibernates at once. Records what it handled and how it stopped.

    ``Ping(n)`` with a negative `n` makes it fail; ``Echo(n)`` is answered `n`
    after a schedule point.
    """

    hibernate_after: ClassVar[float | None] = 0

    def __init__(self) -> None:
        self.pings: list[int] = []
        self.stopped: list[StopReason] = []

    def begin(self) -> Next[Self]:
        return Next.events()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.pings.append(event.n)
        if event.n < 0:
            self.ctx.do_next(Next.fail(ValueError(f"ping {event.n}")))

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        await trio.sleep(0)
        self.pings.append(request.n)
        return request.n

    async def on_stop(self, reason: StopReason) -> None:
        self.stopped.append(reason)


class SlowCleanup(Sleeper):
    """A `Sleeper` whose helper task (started by `begin`) takes `cleanup` seconds to end once cancelled.

    `draining` is set when that cleanup starts, `cleaned` when it is over.
    """

    def __init__(self, cleanup: float = 0.01) -> None:
        super().__init__()
        self.cleanup = cleanup
        self.draining = trio.Event()
        self.cleaned = trio.Event()

    def begin(self) -> Next[Self]:
        self.ctx.start_soon(self.helper)
        return Next.events()

    async def helper(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.draining.set()
            with trio.CancelScope(shield=True):
                await trio.sleep(self.cleanup)
            self.cleaned.set()


class Parent(Agent):
    """Starts the runners it is given from a state (`hibernate_after` for each); records how each ended.

    `ends` holds (address name, reason) in the order the runs ended; `ended`
    is set at the first. Override `on_end` to watch them (and call it).
    """

    def __init__(self, *runners: hybrid.AgentRunner[Any], hibernate_after: float | None = None) -> None:
        self.runners = runners
        self.hibernate = hibernate_after
        self.ends: list[tuple[str, StopReason]] = []
        self.ended = trio.Event()

    def begin(self) -> Next[Self]:
        return Next.do_async(self.start_all)

    async def start_all(self) -> Next[Self]:
        for runner in self.runners:
            on_end = functools.partial(self.on_end, runner.address.name)
            await self.ctx.start_agent(runner, on_end=on_end, hibernate_after=self.hibernate)
        return Next.events()

    async def on_end(self, name: str, reason: StopReason) -> None:
        self.ends.append((name, reason))
        self.ended.set()
