"""Agent.helper_tasks = False: a run without a nursery of its own, and helpers refused clearly."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next


@attrs.frozen
class Wake:
    pass


class Lean(Agent[int]):
    """Three states, no helper task: what `run()` makes cheaper."""

    helper_tasks = False

    def begin(self) -> Next[Self]:
        return Next.do_async(self.one, 1)

    async def one(self, n: int) -> Next[Self]:
        return Next.do_async(self.two, n + 1)

    async def two(self, n: int) -> Next[Self]:
        await trio.sleep(0)
        return Next.do_sync(self.three, n + 1)

    def three(self, n: int) -> Next[Self]:
        return Next.done(n)


class LeanWithTimer(Agent):
    helper_tasks = False

    @hybrid.on_event
    async def wake(self, event: Wake) -> None:
        pass

    def begin(self) -> Next[Self]:
        return Next.do_async(self.arm)

    async def arm(self) -> Next[Self]:
        self.ctx.send_after(1, Wake())
        return Next.done()


class Sleeper(Agent):
    helper_tasks = False

    def __init__(self) -> None:
        self.stopped: list[hybrid.StopReason] = []

    def begin(self) -> Next[Self]:
        return Next.do_async(self.nap)

    async def nap(self) -> Next[Self]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        self.stopped.append(reason)


async def test_a_lean_agent_runs_its_states_without_a_nursery() -> None:
    assert await Lean().run() == 3
    runner = hybrid.AgentRunner(Lean())
    reason = await runner.run()
    assert reason.done and runner.output == 3
    with pytest.raises(hybrid.LifecycleError, match="runs once"):
        await runner.run()


async def test_starting_a_helper_task_is_refused_naming_the_declaration() -> None:
    with pytest.raises(hybrid.LifecycleError, match=r"declares helper_tasks = False"):
        await LeanWithTimer().run()
    caught: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:  # spawned: the same check, and its error leaves the nursery
            hybrid.spawn(nursery, LeanWithTimer())
    except* hybrid.LifecycleError as group:
        caught += group.exceptions
    assert len(caught) == 1
    assert "cannot start helper tasks (timers, consume, start_soon)" in str(caught[0])


async def test_cancellation_from_outside_propagates_as_it_is(autojump_clock: trio.testing.MockClock) -> None:
    sleeper = Sleeper()
    with trio.move_on_after(1) as scope:
        await sleeper.run()
    assert scope.cancelled_caught
    assert sleeper.stopped == [hybrid.StopReason(hybrid.StopKind.CANCELLED)]


async def test_a_keyboard_interrupt_from_a_state_leaves_run_unwrapped() -> None:
    class Ctrl(Agent):
        helper_tasks = False

        def begin(self) -> Next[Self]:
            return Next.do_async(self.press)

        async def press(self) -> Next[Self]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await Ctrl().run()


async def test_start_in_a_nursery_reports_the_address_after_begin() -> None:
    async with trio.open_nursery() as nursery:
        runner = hybrid.AgentRunner(Lean())
        address = await nursery.start(runner.run)
        assert await address.join() == 3


def test_the_declaration_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"Bad.helper_tasks must be True or False, got 0"):

        class Bad(Agent):  # pyright: ignore[reportUnusedClass]
            helper_tasks = 0  # type: ignore[assignment]
