"""Contained runs (``ctx.start_agent``): an agent run beside its parent, which may hibernate.

Supervisors are built on it (their children hibernate when idle); these tests check the
building block itself: containment of failures, the end callback, the kill switch, the
tie to the parent, and every refusal.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopKind, StopReason
from tests.messages import Echo, Ping
from tests.sleeper import Parent, Sleeper, SlowCleanup


def hibernating(address: hybrid.Address[Any]) -> bool:
    return address.statistics().hibernating


async def test_a_contained_run_hibernates_and_a_message_wakes_it(autojump_clock: trio.testing.MockClock) -> None:
    child = Sleeper()
    runner = hybrid.AgentRunner(child)
    async with trio.open_nursery() as nursery:
        parent = hybrid.spawn(nursery, Parent(runner))
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(runner.address)
        assert await runner.address.request(Echo(7)) == 7
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(runner.address)
        parent.interrupt()
    assert [reason.kind for reason in child.stopped] == [StopKind.CANCELLED]  # ended with its parent


async def test_start_agent_returns_once_begin_has_run_and_hibernate_after_overrides_the_class(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Keeps(Sleeper):
        hibernate_after = None

        def begin(self) -> Next[Self]:
            self.ready = True
            return Next.events()

    child = Keeps()
    runner = hybrid.AgentRunner(child)
    seen: list[bool] = []

    class Checks(Parent):
        async def start_all(self) -> Next[Self]:
            nxt = await super().start_all()
            seen.append(child.ready)
            return nxt

    async with trio.open_nursery() as nursery:
        parent = hybrid.spawn(nursery, Checks(runner, hibernate_after=5))
        await trio.sleep(1)
        assert seen == [True]
        assert not hibernating(runner.address)
        await trio.sleep(5)
        assert hibernating(runner.address)
        parent.interrupt()


async def test_its_failure_goes_to_on_end_not_into_the_nursery() -> None:
    child = Sleeper()
    runner = hybrid.AgentRunner(child)
    async with trio.open_nursery() as nursery:
        parent = Parent(runner)
        address = hybrid.spawn(nursery, parent)
        await trio.testing.wait_all_tasks_blocked()
        runner.address.send(Ping(-1))  # wakes it; it fails
        await parent.ended.wait()
        [(name, reason)] = parent.ends
        assert name == runner.address.name
        assert reason.failed and str(reason.error) == "ping -1"
        with pytest.raises(ValueError, match="ping -1"):
            await runner.address.join()
        assert address.is_alive  # the parent goes on
        address.interrupt()


async def test_a_helper_failure_ends_the_run_with_that_error_also_while_it_hibernates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Fragile(Sleeper):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.explode_later)
            self.ctx.start_soon(trio.sleep_forever)  # cancelled when the run ends
            return Next.events()

        async def explode_later(self) -> None:
            await trio.sleep(10)
            raise KeyError("helper broke")

    child = Fragile()
    runner = hybrid.AgentRunner(child)
    async with trio.open_nursery() as nursery:
        parent = Parent(runner)
        hybrid.spawn(nursery, parent)
        await trio.sleep(5)
        assert hibernating(runner.address)
        await parent.ended.wait()
        [(_, reason)] = parent.ends
        assert isinstance(reason.error, KeyError)
        assert child.stopped == [reason]  # its on_stop saw the failure
        nursery.cancel_scope.cancel()


async def test_a_later_helper_failure_is_logged_the_first_one_decides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class TwoFailures(Sleeper):
        hibernate_after = None

        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.fail_now, "first")
            self.ctx.start_soon(self.fail_in_cleanup)
            return Next.events()

        async def fail_now(self, what: str) -> None:
            await trio.sleep(0)
            raise RuntimeError(what)

        async def fail_in_cleanup(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise RuntimeError("second")

    runner = hybrid.AgentRunner(TwoFailures())
    async with trio.open_nursery() as nursery:
        parent = Parent(runner)
        hybrid.spawn(nursery, parent)
        await parent.ended.wait()
        nursery.cancel_scope.cancel()
    [(_, reason)] = parent.ends
    assert str(reason.error) == "first"
    assert any("a helper task failed after" in record.message for record in caplog.records)


async def test_on_end_is_told_once_its_helper_tasks_have_ended() -> None:
    class Awake(SlowCleanup):
        hibernate_after = None

    child = Awake()
    runner = hybrid.AgentRunner(child)
    saw: list[bool] = []

    class Watch(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            saw.append(child.cleaned.is_set())
            await super().on_end(name, reason)

    async with trio.open_nursery() as nursery:
        parent = Watch(runner)
        address = hybrid.spawn(nursery, parent)
        await trio.testing.wait_all_tasks_blocked()
        runner.address.interrupt()
        await parent.ended.wait()
        address.interrupt()
    assert saw == [True]


@pytest.mark.parametrize("hibernate_after", [0, 3, None])
async def test_cancel_ends_the_run_as_cancelled_whether_it_hibernates_or_runs(
    autojump_clock: trio.testing.MockClock, hibernate_after: float | None
) -> None:
    class Maybe(Sleeper):
        pass

    Maybe.hibernate_after = hibernate_after
    child = Maybe()
    runner = hybrid.AgentRunner(child)
    async with trio.open_nursery() as nursery:
        parent = Parent(runner)
        address = hybrid.spawn(nursery, parent)
        await trio.sleep(5)
        assert hibernating(runner.address) is (hibernate_after is not None)
        runner.cancel()
        runner.cancel()  # idempotent
        await parent.ended.wait()
        assert [reason for _, reason in parent.ends] == [StopReason(StopKind.CANCELLED)]
        assert child.stopped == [StopReason(StopKind.CANCELLED)]
        runner.cancel()  # ended: nothing to do
        assert address.is_alive
        address.interrupt()


async def test_cancel_reaches_a_run_stuck_in_a_state() -> None:
    class Stuck(Agent):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.wait)

        async def wait(self) -> Next[Self]:
            await trio.sleep(math.inf)
            return Next.done()

    runner = hybrid.AgentRunner(Stuck())
    async with trio.open_nursery() as nursery:
        parent = Parent(runner)
        address = hybrid.spawn(nursery, parent)
        await trio.testing.wait_all_tasks_blocked()
        runner.cancel()
        await parent.ended.wait()
        assert parent.ends[0][1].kind is StopKind.CANCELLED
        address.interrupt()


async def test_a_cancelled_host_nursery_ends_a_hibernating_run_and_tells_on_end() -> None:
    child = Sleeper()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    async with trio.open_nursery() as nursery:
        hybrid.spawn(nursery, parent)
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(runner.address)
        nursery.cancel_scope.cancel()
    assert child.stopped == [StopReason(StopKind.CANCELLED)]
    assert [reason for _, reason in parent.ends] == [StopReason(StopKind.CANCELLED)]


async def test_a_message_to_a_hibernating_run_in_a_cancelled_nursery_is_not_handled() -> None:
    """Woken after its nursery was cancelled, it ends as cancelled before handling anything."""
    child = Sleeper()
    runner = hybrid.AgentRunner(child)
    async with trio.open_nursery() as nursery:
        hybrid.spawn(nursery, Parent(runner))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
        runner.address.send(Ping(1))  # before the keeper ran: it wakes the agent
    assert child.pings == []
    assert child.stopped == [StopReason(StopKind.CANCELLED)]


async def test_the_parents_end_cancels_its_runs_and_on_end_is_told() -> None:
    class Awake(Sleeper):
        hibernate_after = None

    children = [Sleeper(), Awake()]  # the second one keeps its task
    runners = [hybrid.AgentRunner(child) for child in children]
    async with trio.open_nursery() as nursery:
        parent = Parent(*runners)
        address = hybrid.spawn(nursery, parent)
        await trio.testing.wait_all_tasks_blocked()
        assert [hibernating(runner.address) for runner in runners] == [True, False]
        address.interrupt()
        await address.join()
    # The parent's end cancelled them (as it cancels its helper tasks); they ended after it.
    assert sorted(name for name, _ in parent.ends) == sorted(runner.address.name for runner in runners)
    assert all(child.stopped == [StopReason(StopKind.CANCELLED)] for child in children)


async def test_refusals() -> None:
    class NoHelpers(Parent):
        helper_tasks = False

    class Tries(Agent):
        def __init__(self) -> None:
            self.errors: list[Exception] = []

        def begin(self) -> Next[Self]:
            return Next.do_async(self.tries)

        async def tries(self) -> Next[Self]:
            used = hybrid.AgentRunner(Sleeper())
            await self.ctx.start_agent(used, on_end=self.ignore)
            for runner, hibernate_after in [(used, None), (hybrid.AgentRunner(Sleeper()), -1.0)]:
                try:
                    await self.ctx.start_agent(runner, on_end=self.ignore, hibernate_after=hibernate_after)
                except (hybrid.LifecycleError, ValueError) as error:
                    self.errors.append(error)
            with pytest.raises(hybrid.LifecycleError, match="runs once"):
                await used.run()
            return Next.events()

        async def ignore(self, reason: StopReason) -> None:
            pass

    async with trio.open_nursery() as nursery:
        agent = Tries()
        address = hybrid.spawn(nursery, agent)
        await trio.testing.wait_all_tasks_blocked()
        [again, bad] = agent.errors
        assert isinstance(again, hybrid.LifecycleError)
        assert "an AgentRunner runs once" in str(again)
        assert isinstance(bad, ValueError)
        assert "hibernate_after" in str(bad)
        address.interrupt()

    with pytest.raises(hybrid.LifecycleError, match="only a run started by ctx.start_agent"):
        hybrid.AgentRunner(Sleeper()).cancel()

    refused = NoHelpers(hybrid.AgentRunner(Sleeper()))
    with pytest.raises(hybrid.LifecycleError, match="declares helper_tasks = False"):
        await refused.run()

    ended = Parent()
    async with trio.open_nursery() as nursery:
        hybrid.spawn(nursery, ended).interrupt()
    with pytest.raises(hybrid.LifecycleError, match="has ended"):
        await ended.ctx.start_agent(hybrid.AgentRunner(Sleeper()), on_end=ended.ctx.agent.on_stop)


async def test_a_supervisors_children_hibernate_and_one_task_stands_for_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Many(hybrid.Supervisor):
        hibernate_after = None

        def begin(self) -> Next[Self]:
            self.members = [self.ctx.spawn(Sleeper, name=f"s{i}") for i in range(50)]
            return Next.events()

    async with trio.open_nursery() as nursery:
        supervisor = Many()
        app = hybrid.spawn(nursery, supervisor)
        await trio.sleep(1)
        assert all(hibernating(member) for member in supervisor.members)
        assert len(nursery.child_tasks) == 2  # the supervisor's task and the keeper
        assert await supervisor.members[7].request(Echo(3)) == 3
        app.interrupt()


async def test_a_hibernating_child_that_fails_is_restarted_behind_its_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Keeper(hybrid.Supervisor):
        def __init__(self) -> None:
            self.reasons: list[StopReason] = []

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Sleeper)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.reasons.append(reason)

    async with trio.open_nursery() as nursery:
        keeper = Keeper()
        app = hybrid.spawn(nursery, keeper)
        await trio.sleep(1)
        assert hibernating(keeper.child)
        keeper.child.send(Ping(-1))  # fails
        keeper.child.send(Ping(2))  # waits for the next instance
        await trio.sleep(1)
        assert [reason.kind for reason in keeper.reasons] == [StopKind.FAILED]
        assert hibernating(keeper.child)
        assert await keeper.child.request(Echo(5)) == 5
        app.interrupt()


async def test_spawn_hibernate_after_is_per_child_and_checked_where_given(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Awake(Sleeper):
        hibernate_after = None

    class App(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.lazy = self.ctx.spawn(Awake, hibernate_after=2)
            self.busy = self.ctx.spawn(Awake)
            with pytest.raises(ValueError, match="hibernate_after"):
                self.ctx.spawn(Awake, hibernate_after=math.nan)
            return Next.events()

    async with trio.open_nursery() as nursery:
        app = App()
        address = hybrid.spawn(nursery, app)
        await trio.sleep(1)
        assert not hibernating(app.lazy)
        await trio.sleep(2)
        assert hibernating(app.lazy)
        assert not hibernating(app.busy)
        address.interrupt()


async def test_a_hibernating_child_past_its_shutdown_timeout_is_cancelled(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Woken by the shutdown, it ignores both interrupts (its on_interrupt keeps it in actor mode)."""

    class Stubborn(Sleeper):
        async def on_interrupt(self) -> None:
            self.ctx.do_next(Next.events())

    class App(hybrid.Supervisor):
        shutdown_timeout = 1

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Stubborn)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.ended = reason

    caplog.set_level(logging.ERROR)
    async with trio.open_nursery() as nursery:
        app = App()
        address = hybrid.spawn(nursery, app)
        await trio.sleep(1)
        assert hibernating(app.child)
        start = trio.current_time()
        address.interrupt()
        await address.join()
        assert trio.current_time() - start == pytest.approx(2)
    assert app.ended.kind is StopKind.CANCELLED


async def test_a_run_cancelled_before_its_task_ran_ends_instead_of_hibernating() -> None:
    """Cancelled while start_agent waits for it: whichever task trio runs first, it ends cancelled."""
    for _ in range(20):  # trio runs the killer and the new run in either order: both orders, then
        child = Sleeper()
        runner = hybrid.AgentRunner(child)

        class Killer(Parent):
            async def start_all(self) -> Next[Self]:
                self.ctx.start_soon(self.kill)
                await self.ctx.start_agent(self.runners[0], on_end=functools.partial(self.on_end, "child"))
                return Next.events()

            async def kill(self) -> None:
                self.runners[0].cancel()

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                parent = Killer(runner)
                address = hybrid.spawn(nursery, parent)
                await parent.ended.wait()
                assert parent.ends == [("child", StopReason(StopKind.CANCELLED))]
                address.interrupt()
