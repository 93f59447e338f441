"""Agent trees for the service-mode tests, run in process and as ``python -m hybrid run tests.service_apps:NAME``.

Every agent logs ``stopped NAME (REASON)`` on the ``tests.service_apps`` logger
when it ends, so that a test can read the shutdown order from the log.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import signal
import time
from typing import Self

import attrs
import trio

import hybrid
from hybrid import Agent, Next, StopReason, Supervisor

log = logging.getLogger("tests.service_apps")

RELEASE = "HYBRID_TEST_RELEASE"
"""Environment variable: a file whose creation lets the slow agent finish its shutdown."""


class Group(enum.IntEnum):
    STORE = 1
    WORKERS = 2
    FRONT = 3


@attrs.frozen
class Tick:
    pass


class Logged(Agent):
    """Logs its end: the tests read the shutdown order from these lines."""

    async def on_stop(self, reason: StopReason) -> None:
        log.info("stopped %s (%s)", self.ctx.address.name, reason)


class Store(Logged):
    pass


class Worker(Logged):
    """Waits in a state until interrupted: the live page shows the state."""

    mailbox_capacity = 8

    def begin(self) -> Next[Self]:
        return Next.do_async(self.serve_jobs)

    async def serve_jobs(self) -> Next[Self]:
        await self.ctx.wait_interrupted()
        return Next.done()


class Workers(Supervisor):
    def begin(self) -> Next[Self]:
        for _ in range(3):
            self.ctx.spawn(Worker)
        return Next.events()

    async def on_stop(self, reason: StopReason) -> None:
        log.info("stopped %s (%s)", self.ctx.address.name, reason)


class Front(Logged):
    """Ticks: a periodic timer keeps it busy."""

    def __init__(self) -> None:
        self.ticks = 0

    def begin(self) -> Next[Self]:
        self.ctx.send_every(0.05, Tick())
        return Next.events()

    @hybrid.on_event
    async def tick(self, event: Tick) -> None:
        self.ticks += 1


class SlowToStop(Logged):
    """Its shutdown waits until the file named by $HYBRID_TEST_RELEASE exists (forever without it)."""

    async def on_interrupt(self) -> None:
        log.info("slow: shutting down")
        release = os.environ.get(RELEASE)
        while release is None or not await trio.Path(release).exists():  # noqa: ASYNC110 - set by another process
            await trio.sleep(0.05)


class App(Supervisor):
    """Three levels: App -> store, workers (a supervisor of three workers), front."""

    def begin(self) -> Next[Self]:
        self.ctx.spawn(Store(), group=Group.STORE, name="store")
        self.ctx.spawn(Workers, group=Group.WORKERS, name="workers")
        self.ctx.spawn(Front(), group=Group.FRONT, name="front")
        return Next.events()

    async def on_stop(self, reason: StopReason) -> None:
        log.info("stopped %s (%s)", self.ctx.address.name, reason)


class SlowApp(App):
    """App, with an agent in the front group whose shutdown takes until it is released."""

    def begin(self) -> Next[Self]:
        transition = super().begin()
        self.ctx.spawn(SlowToStop(), group=Group.FRONT, name="slow", shutdown_timeout=math.inf)
        return transition


def make_tree() -> App:
    return App()


def make_slow() -> SlowApp:
    return SlowApp()


async def make_async() -> App:
    await trio.sleep(0)
    return App()


class Failing(Agent):
    """Fails once it has started: the service exits with status 1."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.crash)

    async def crash(self) -> Next[Self]:
        await trio.sleep(0)
        raise RuntimeError("the root failed on purpose")


class FailsToBegin(Agent):
    def begin(self) -> Next[Self]:
        raise RuntimeError("begin failed on purpose")


class FailingChild(Supervisor):
    """A child that fails at once and is not restarted: the tree does not build."""

    def begin(self) -> Next[Self]:
        self.ctx.spawn(Failing(), name="failing")
        return Next.events()


class Blocking(Agent):
    """Blocks the trio thread for a moment in its one state (what --slow-step is for)."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.block)

    async def block(self) -> Next[Self]:
        time.sleep(0.1)  # noqa: ASYNC251 - the blocking call a slow-step watch reports
        return Next.do_async(self.finish)

    async def finish(self) -> Next[Self]:
        await trio.sleep(0)  # the blocking step ends here, while the agent is alive
        return Next.done()


class HelperFails(Agent):
    """A helper task of the root fails: the root's run fails with it."""

    def begin(self) -> Next[Self]:
        self.ctx.start_soon(self.helper)
        return Next.events()

    async def helper(self) -> None:
        raise RuntimeError("the helper failed on purpose")  # at its first step: it always gets that far


class Done(Agent):
    """Ends by itself at once, done."""

    def begin(self) -> Next[Self]:
        return Next.done()


class NeverStarts(Agent):
    """Makes an agent that it never runs: the tree never finishes starting (--check gives up)."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.stay)

    async def stay(self) -> Next[Self]:
        runner = hybrid.AgentRunner(Store(), name="never-run")
        await self.ctx.wait_interrupted()
        runner.discard()
        return Next.done()


class Signaller(Logged):
    """Sends signals to its own process once started (the in-process tests of signal handling)."""

    def __init__(self, *signals: signal.Signals) -> None:
        self.signals = signals

    def begin(self) -> Next[Self]:
        return Next.do_async(self.send_signals)

    async def send_signals(self) -> Next[Self]:
        for signum in self.signals:
            await trio.sleep(0.01)
            os.kill(os.getpid(), signum)
        return Next.events()


class SelfStopping(App):
    """App, logging its tree (SIGUSR1) then stopping itself gracefully (SIGTERM)."""

    def begin(self) -> Next[Self]:
        transition = super().begin()
        self.ctx.spawn(Signaller(signal.SIGUSR1, signal.SIGTERM), group=Group.FRONT, name="signaller")
        return transition


class CutShort(SlowApp):
    """SlowApp, sending itself SIGTERM, then SIGINT while its slow agent is shutting down."""

    def begin(self) -> Next[Self]:
        transition = super().begin()
        self.ctx.spawn(Signaller(signal.SIGTERM, signal.SIGINT), group=Group.FRONT, name="signaller")
        return transition


def broken_factory() -> Agent:
    raise RuntimeError("no database")


def not_an_agent() -> int:
    return 42


not_callable = 42
