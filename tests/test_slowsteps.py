"""hybrid.slowsteps: a step that holds the trio thread too long is logged with its agent and what it did."""

from __future__ import annotations

import logging
import time

import pytest
import trio
from typing_extensions import Self

import hybrid
import hybrid.slowsteps
import hybrid.testing
from hybrid import Agent, Next
from tests.messages import Ping

BLOCK = 0.05  # a blocking call: time.sleep in async code
THRESHOLD = 0.02


class Blocking(Agent):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.load)

    async def load(self) -> Next[Self]:
        time.sleep(BLOCK)  # noqa: ASYNC251 - the mistake the watcher finds
        return Next.events()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        if event.n:
            time.sleep(BLOCK)  # noqa: ASYNC251


def slow_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "hybrid.slowsteps"]


async def test_a_blocking_state_and_handler_are_logged_with_the_agent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    watcher = hybrid.slowsteps.watch(THRESHOLD)
    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, Blocking(), name="blocker")
        await hybrid.testing.wait_idle(agent)
        agent.send(Ping(0))  # quick: not logged
        agent.send(Ping(1))
        await hybrid.testing.wait_idle(agent)
        agent.interrupt()
    watcher.close()
    lines = slow_lines(caplog)
    assert any(
        line.startswith("blocker (Blocking) held the trio thread for ") and line.endswith(" s in state load")
        for line in lines
    ), lines
    assert any(line.endswith(" s handling Ping(n=1)") and line.startswith("blocker (Blocking)") for line in lines)
    assert not any("Ping(n=0)" in line for line in lines)
    assert watcher.reported == len(lines)
    record = next(r for r in caplog.records if r.name == "hybrid.slowsteps")
    assert record.agent == "blocker" and record.seconds >= BLOCK  # type: ignore[attr-defined]
    assert not watcher._agents and not watcher._tasks and not watcher._doing  # nothing kept of ended agents


async def test_other_tasks_are_named_by_their_trio_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    watcher = hybrid.slowsteps.watch(THRESHOLD)

    async def plain() -> None:
        time.sleep(BLOCK)  # noqa: ASYNC251

    async with trio.open_nursery() as nursery:
        nursery.start_soon(plain, name="plain-task")
    watcher.close()
    watcher.close()  # idempotent
    assert any(line.startswith("task plain-task held the trio thread for ") for line in slow_lines(caplog))


async def test_after_close_nothing_is_watched(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    hybrid.slowsteps.watch(THRESHOLD).close()
    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, Blocking())
        await hybrid.testing.wait_idle(agent)
        agent.interrupt()
    assert slow_lines(caplog) == []


@pytest.mark.parametrize("threshold", [0, -1.0, float("nan"), float("inf")])
async def test_the_threshold_is_checked(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold must be a finite number of seconds > 0"):
        hybrid.slowsteps.watch(threshold)


def test_watching_needs_a_trio_run() -> None:
    with pytest.raises(RuntimeError):
        hybrid.slowsteps.watch()


async def test_a_slow_step_in_which_the_agent_ends_still_names_it(caplog: pytest.LogCaptureFixture) -> None:
    class Last(Agent):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.finish)

        async def finish(self) -> Next[Self]:
            time.sleep(BLOCK)  # noqa: ASYNC251
            return Next.done()

    caplog.set_level(logging.WARNING)
    watcher = hybrid.slowsteps.watch(THRESHOLD)
    async with trio.open_nursery() as nursery:
        hybrid.spawn(nursery, Last(), name="last")
    watcher.close()
    assert any(line.startswith("last (") and line.endswith(" s in state finish") for line in slow_lines(caplog))
    assert not watcher._agents and not watcher.ended
