"""Adversarial tests of contained runs (``ctx.start_agent``), their kill switch and hibernation.

They attack the races of `AgentRunner.cancel()` with waking and ending, the ending of
hibernating runs by a cancelled nursery (the `_Keeper`), failures of helper tasks at every
phase, BaseExceptions, supervisors built on contained runs (nested, restarted, cut short),
and what becomes of messages sent meanwhile.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopKind, StopReason
from tests.messages import Echo, Ping
from tests.sleeper import Parent, Sleeper, SlowCleanup

CANCELLED = StopReason(StopKind.CANCELLED)


class Stop(BaseException):
    """A BaseException that is not a cancellation (KeyboardInterrupt-like)."""


class StuckStart:
    """A checkpointer whose `start` never returns (a durable start that hangs); records the endings it is told."""

    idempotency_key = "stuck"

    def __init__(self) -> None:
        self.in_start = trio.Event()
        self.endings: list[StopReason] = []

    async def start(self, agent: Any) -> Next[Any] | None:
        self.in_start.set()
        await trio.sleep_forever()

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        pass

    async def handled(self, agent: Any) -> None:
        pass

    async def ended(self, agent: Any, reason: StopReason, output: Any) -> None:
        self.endings.append(reason)


def hibernating(address: hybrid.Address[Any]) -> bool:
    return address.statistics().hibernating


async def wait_hibernating(address: hybrid.Address[Any]) -> None:
    while not hibernating(address):  # noqa: ASYNC110 - hibernation sets no event to wait on
        await trio.sleep(0.01)


# -- the keeper: a cancelled nursery ends its sleepers ---------------------------------------


async def test_every_sleeper_ends_even_if_an_on_end_awaits_in_the_cancelled_nursery() -> None:
    """The keeper ends sleepers one by one and awaits each on_end in its cancelled task.

    An on_end that awaits anything (here one checkpoint) raises Cancelled there: the
    keeper must still end the other sleepers (their on_stop runs, their on_end is told).
    """
    children = [Sleeper() for _ in range(3)]
    runners = [hybrid.AgentRunner(child) for child in children]
    told: list[StopReason] = []

    class Awaits(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            told.append(reason)
            await trio.sleep(0)  # a schedule point: Cancelled in a cancelled nursery

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, Awaits(*runners))
            await trio.testing.wait_all_tasks_blocked()
            assert all(hibernating(runner.address) for runner in runners)
            nursery.cancel_scope.cancel()
    assert [child.stopped for child in children] == [[CANCELLED]] * 3
    assert told == [CANCELLED] * 3
    assert not any(runner.address.is_alive for runner in runners)


async def test_on_end_is_told_once_helpers_ended_also_for_a_sleeper_of_a_cancelled_nursery() -> None:
    """``on_end`` is called "after its helper tasks have ended"; the keeper's path too.

    The sleeper's helper needs a moment to clean up once cancelled: on_end must come after.
    """
    saw: list[bool] = []
    child = SlowCleanup()

    class Watch(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            saw.append(child.cleaned.is_set())

    runner = hybrid.AgentRunner(child)
    async with trio.open_nursery() as nursery:
        hybrid.spawn(nursery, Watch(runner))
        await wait_hibernating(runner.address)
        nursery.cancel_scope.cancel()
    assert saw == [True]


async def test_a_cancel_while_the_keeper_ends_a_sleeper_does_not_end_it_twice() -> None:
    """runner.cancel() while the keeper runs the sleeper's on_stop (its nursery was cancelled).

    The run is still marked hibernating then: cancel() must not wake it into a second
    task that ends it again (a second on_stop, a second discard of its mailbox).
    """
    in_stop = trio.Event()

    class SlowStop(Sleeper):
        async def on_stop(self, reason: StopReason) -> None:
            self.stopped.append(reason)
            in_stop.set()
            await trio.sleep(1)  # shielded: the nursery is cancelled

    child = SlowStop()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
            hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)

            async def cancel_in_on_stop() -> None:
                await in_stop.wait()
                runner.cancel()

            outer.start_soon(cancel_in_on_stop)
            nursery.cancel_scope.cancel()
    assert child.stopped == [CANCELLED]
    assert [reason for _, reason in parent.ends] == [CANCELLED]


async def test_a_supervisor_cancelled_with_a_sleeper_in_on_stop_ends_it_once() -> None:
    """The realistic form of the race above: the supervisor's own cancellation cancels its
    children (their hostings) while the keeper is ending one of them; whichever of the two
    trio runs first, every child's on_stop runs once."""

    class SlowStop(Sleeper):
        async def on_stop(self, reason: StopReason) -> None:
            self.stopped.append(reason)
            await trio.sleep(0.01)

    for _ in range(20):  # trio runs the keeper and the supervisor's task in either order
        made: list[SlowStop] = []

        def make(made: list[SlowStop] = made) -> SlowStop:
            made.append(SlowStop())
            return made[-1]

        class Awake(hybrid.Supervisor):
            hibernate_after = None

            def begin(self) -> Next[Self]:
                self.child = self.ctx.spawn(make, name="child")
                return Next.events()

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                app = Awake()
                hybrid.spawn(nursery, app)
                await wait_hibernating_soon(app)
                nursery.cancel_scope.cancel()
        assert [child.stopped for child in made] == [[CANCELLED]]


async def wait_hibernating_soon(app: Any) -> None:
    await trio.testing.wait_all_tasks_blocked()
    await wait_hibernating(app.child)


async def test_on_end_raising_in_the_keeper_still_ends_the_other_sleepers() -> None:
    """An on_end that raises leaves the nursery (documented); the other sleepers must still
    end as cancelled (on_stop, joiners), not stay hibernating in a nursery that is gone."""
    children = [Sleeper() for _ in range(3)]
    runners = [hybrid.AgentRunner(child) for child in children]

    class Raises(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            await super().on_end(name, reason)
            raise RuntimeError(f"on_end of {name}")

    expected = pytest.RaisesGroup(RuntimeError, RuntimeError, RuntimeError, flatten_subgroups=True)
    with trio.fail_after(5), expected:
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, Raises(*runners))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert [child.stopped for child in children] == [[CANCELLED]] * 3
    assert not any(hibernating(runner.address) for runner in runners)


async def test_on_end_raising_in_its_runs_task_leaves_the_nursery_and_siblings_end() -> None:
    """An on_end raising in the run's own task leaves the nursery; the parent and the
    sibling runs (awake or hibernating) are cancelled and end normally."""

    class Awake(Sleeper):
        hibernate_after = None

    failing, asleep, awake = Sleeper(), Sleeper(), Awake()
    runners = [hybrid.AgentRunner(child) for child in (failing, asleep, awake)]
    first = runners[0].address.name

    class Raises(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            await super().on_end(name, reason)
            if name == first:
                raise RuntimeError("on_end broke")

    parent = Raises(*runners)
    with trio.fail_after(5), pytest.RaisesGroup(RuntimeError, allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, parent)
            await trio.testing.wait_all_tasks_blocked()
            runners[0].cancel()
    assert failing.stopped == [CANCELLED]
    assert asleep.stopped == [CANCELLED]
    assert awake.stopped == [CANCELLED]
    assert sorted(name for name, _ in parent.ends) == sorted(runner.address.name for runner in runners)


# -- cancel() at every point ---------------------------------------------------------------------


@pytest.mark.parametrize("order", ["send_then_cancel", "cancel_then_send"])
async def test_a_message_and_a_cancel_racing_on_a_sleeper(order: str) -> None:
    """A request wakes a sleeper and cancel() kills it before its new task ran (or the other
    way round): nothing is handled, the caller learns (AgentStopped), on_end is told once."""
    child = Sleeper()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    outcome: list[object] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)

            async def ask() -> None:
                try:
                    outcome.append(await runner.address.request(Echo(1)))
                except hybrid.AgentStopped as error:
                    outcome.append(error)

            if order == "cancel_then_send":
                runner.cancel()
            nursery.start_soon(ask)
            await trio.lowlevel.checkpoint()  # ask() queued its request, no agent task ran
            if order == "send_then_cancel":
                runner.cancel()
            await parent.ended.wait()
            address.interrupt()
    assert child.pings == []
    assert len(outcome) == 1
    assert isinstance(outcome[0], hybrid.AgentStopped)
    assert child.stopped == [CANCELLED]
    assert [reason for _, reason in parent.ends] == [CANCELLED]


async def test_cancel_then_many_messages_while_woken_none_is_handled_none_hangs() -> None:
    """Between cancel() and the end of the woken run, more messages arrive: none is handled,
    every request fails, events are dropped; the address says it has ended."""
    child = Sleeper()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    failed = 0
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)
            runner.cancel()
            for n in range(5):
                runner.address.send(Ping(n))

            async def ask(n: int) -> None:
                nonlocal failed
                with pytest.raises(hybrid.AgentStopped):
                    await runner.address.request(Echo(n))
                failed += 1

            for n in range(5):
                nursery.start_soon(ask, n)
            await parent.ended.wait()
            address.interrupt()
    assert failed == 5
    assert child.pings == []
    assert not runner.address.is_alive
    with pytest.raises(hybrid.AgentStopped):
        runner.address.send(Ping(9))


async def test_cancel_during_on_stop_ends_it_as_cancelled_once() -> None:
    """cancel() while the run's on_stop awaits (it finishes as done): on_stop is cut short,
    not run again; on_end is told once, as cancelled."""
    in_stop = trio.Event()

    class Finishes(Sleeper):
        hibernate_after = None

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.do_next(Next.done())

        async def on_stop(self, reason: StopReason) -> None:
            self.stopped.append(reason)
            in_stop.set()
            await trio.sleep_forever()

    child = Finishes()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await trio.testing.wait_all_tasks_blocked()
            runner.address.send(Ping(1))
            await in_stop.wait()
            runner.cancel()
            await parent.ended.wait()
            address.interrupt()
    assert child.stopped == [StopReason(StopKind.DONE)]
    assert [reason for _, reason in parent.ends] == [CANCELLED]


async def test_cancel_during_on_end_does_not_cut_it_short() -> None:
    """Once the run has ended, cancel() does nothing: its on_end, awaiting, goes on."""
    in_end = trio.Event()
    finished: list[bool] = []
    child = Sleeper()
    runner = hybrid.AgentRunner(child)

    class SlowEnd(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            in_end.set()
            await trio.sleep(0.01)
            finished.append(True)
            await super().on_end(name, reason)

    parent = SlowEnd(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)
            runner.address.send(Ping(-1))  # wakes it; it fails
            await in_end.wait()
            runner.cancel()
            await parent.ended.wait()
            address.interrupt()
    assert finished == [True]
    [(_, reason)] = parent.ends
    assert reason.failed and str(reason.error) == "ping -1"


async def test_cancel_while_its_helpers_drain_waits_for_them_and_keeps_the_reason() -> None:
    """The run has ended (failed); its helper still cleans up; cancel() meanwhile changes
    nothing: on_end is told after the helper ended, with the failure."""
    saw: list[bool] = []
    child = SlowCleanup(0.05)
    runner = hybrid.AgentRunner(child)

    class Watch(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            saw.append(child.cleaned.is_set())
            await super().on_end(name, reason)

    parent = Watch(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)
            runner.address.send(Ping(-1))
            await child.draining.wait()
            runner.cancel()
            await parent.ended.wait()
            address.interrupt()
    assert saw == [True]
    [(_, reason)] = parent.ends
    assert reason.failed and str(reason.error) == "ping -1"


async def test_cancel_before_begin_of_a_durable_run_whose_checkpointer_start_awaits() -> None:
    """cancel() while the run awaits its checkpointer's start (before begin): it ends as
    cancelled, start_agent returns, on_end is told, the checkpointer's `ended` is told."""
    stuck = StuckStart()
    child = Sleeper()
    runner = hybrid.AgentRunner(child, checkpointer=stuck)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await stuck.in_start.wait()
            runner.cancel()
            await parent.ended.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert address.statistics().phase != "state"  # start_all returned
            address.interrupt()
    assert stuck.endings == [CANCELLED]
    assert child.stopped == [CANCELLED]
    assert [reason for _, reason in parent.ends] == [CANCELLED]


async def test_the_parent_forced_out_while_start_agent_awaits_begin() -> None:
    """The parent is interrupted twice (its state cancelled) while start_agent awaits the
    child's begin (its checkpointer's start awaits): the child ends as cancelled, on_end is
    told, the parent ends, nothing hangs."""
    stuck = StuckStart()
    child = Sleeper()
    runner = hybrid.AgentRunner(child, checkpointer=stuck)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await stuck.in_start.wait()
            address.interrupt()
            address.interrupt()
            await address.join()
    assert address.statistics().phase == "ended"
    assert child.stopped == [CANCELLED]
    assert [reason for _, reason in parent.ends] == [CANCELLED]
    assert not runner.address.is_alive


# -- helper failures -----------------------------------------------------------------------------


async def test_a_helper_failing_while_the_run_finishes_ends_it_with_that_failure() -> None:
    """A helper raises while the run's on_stop awaits (it finishes as done): the run ends
    failed with the helper's error, on_stop is not run twice, on_end is told once."""
    in_stop = trio.Event()

    class Finishing(Sleeper):
        hibernate_after = None

        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.helper)
            return Next.events()

        async def helper(self) -> None:
            await in_stop.wait()
            raise KeyError("helper broke while finishing")

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.do_next(Next.done())

        async def on_stop(self, reason: StopReason) -> None:
            self.stopped.append(reason)
            in_stop.set()
            await trio.sleep(1)

    child = Finishing()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await trio.testing.wait_all_tasks_blocked()
            runner.address.send(Ping(1))
            await parent.ended.wait()
            address.interrupt()
    assert child.stopped == [StopReason(StopKind.DONE)]
    [(_, reason)] = parent.ends
    assert isinstance(reason.error, KeyError)


async def test_a_helper_failing_after_the_run_ended_is_logged_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A helper raises in its cleanup, after the run ended (while the run waits for it):
    logged; on_end is told the run's own ending, once, after the helper ended."""

    class Cleanup(Sleeper):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.helper)
            return Next.events()

        async def helper(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.01)
                raise KeyError("late")

    child = Cleanup()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)
            runner.address.interrupt()
            await parent.ended.wait()
            address.interrupt()
    assert [reason for _, reason in parent.ends] == [StopReason(StopKind.INTERRUPTED)]
    assert any("a helper task failed after" in record.message for record in caplog.records)


async def test_two_helpers_failing_while_the_run_hibernates_the_first_decides() -> None:
    """Two helpers fail at the same moment while the run hibernates: the run is woken once,
    ends failed with the first error, on_end told once, on_stop once."""

    class Two(Sleeper):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.fail, "first")
            self.ctx.start_soon(self.fail, "second")
            return Next.events()

        async def fail(self, what: str) -> None:
            await trio.sleep(1)
            raise RuntimeError(what)

    child = Two()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)
            await parent.ended.wait()
            await trio.testing.wait_all_tasks_blocked()
            address.interrupt()
    [(_, reason)] = parent.ends
    assert isinstance(reason.error, RuntimeError)
    assert child.stopped == [reason]


# -- BaseExceptions ---------------------------------------------------------------------------------


async def test_a_base_exception_from_a_woken_child_is_reported_and_leaves_the_nursery() -> None:
    """A BaseException (not a cancellation) from the child's handler is not contained: on_end
    is told (failed, with it), and it leaves the nursery as a task's would."""

    class Stops(Sleeper):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            raise Stop("stop")

    child = Stops()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    with trio.fail_after(5), pytest.RaisesGroup(Stop, allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)
            runner.address.send(Ping(1))
    [(_, reason)] = parent.ends
    assert reason.failed and isinstance(reason.error, Stop)
    assert child.stopped == [reason]


async def test_a_base_exception_from_a_helper_of_a_sleeper_leaves_the_nursery_and_it_ends() -> None:
    """A helper of a hibernating run raises a BaseException: not contained (it leaves the
    nursery); the run still ends (on_stop, on_end told), nothing hangs."""

    class Helper(Sleeper):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.helper)
            return Next.events()

        async def helper(self) -> None:
            await trio.sleep(0.05)
            raise Stop("helper stop")

    child = Helper()
    runner = hybrid.AgentRunner(child)
    parent = Parent(runner)
    with trio.fail_after(5), pytest.RaisesGroup(Stop, allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, parent)
            await wait_hibernating(runner.address)
            await trio.sleep_forever()
    assert len(child.stopped) == 1
    assert [name for name, _ in parent.ends] == [runner.address.name]


# -- supervisors -------------------------------------------------------------------------------------


class Recorder(hybrid.Supervisor):
    """A supervisor of explicitly named Sleeper children; records on_child_ended."""

    hibernate_after: ClassVar[float | None] = None
    names: ClassVar[tuple[str, ...]] = ("a", "b")

    def __init__(self) -> None:
        self.reported: list[tuple[str, StopReason]] = []
        self.kids: list[hybrid.Address[Any]] = []
        self.made: list[Sleeper] = []

    def make(self) -> Sleeper:
        self.made.append(Sleeper())
        return self.made[-1]

    def begin(self) -> Next[Self]:
        self.kids = [self.ctx.spawn(self.make, name=name) for name in self.names]
        return Next.events()

    async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
        self.reported.append((address.name, reason))


@pytest.mark.parametrize("asleep", [False, True])
async def test_a_supervisor_killed_while_children_hibernate_reports_nothing(asleep: bool) -> None:
    """runner.cancel() of a contained supervisor while its children hibernate: they are
    cancelled with it, on_child_ended is not called, and nothing is restarted."""

    class Sup(Recorder):
        pass

    Sup.hibernate_after = 0 if asleep else None
    sup = Sup()
    runner = hybrid.AgentRunner(sup)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await trio.testing.wait_all_tasks_blocked()
            assert all(hibernating(kid) for kid in sup.kids)
            runner.cancel()
            await parent.ended.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert sup.reported == []
            assert [child.stopped for child in sup.made] == [[CANCELLED], [CANCELLED]]
            address.interrupt()
    assert [reason for _, reason in parent.ends] == [CANCELLED]


async def test_the_children_of_a_killed_supervisor_give_their_addresses_up() -> None:
    """After its supervisor was cancelled, a restartable child is never restarted: its
    address must say it is gone (sends refused), not wait forever for a successor."""
    sup = Recorder()
    runner = hybrid.AgentRunner(sup)
    parent = Parent(runner)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await trio.testing.wait_all_tasks_blocked()
            runner.cancel()
            await parent.ended.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert [kid.is_alive for kid in sup.kids] == [False, False]
            with pytest.raises(hybrid.AgentStopped):
                sup.kids[0].send(Ping(1))
            address.interrupt()


async def test_a_killed_supervisor_started_again_reuses_its_childrens_names() -> None:
    """A parent starts a supervisor, kills it, starts a new one of the same name: the new one
    spawns its children with the same explicit names (the old ones are gone)."""
    first = hybrid.AgentRunner(Recorder(), name="sup")
    errors: list[BaseException] = []

    class Again(Parent):
        async def on_end(self, name: str, reason: StopReason) -> None:
            await super().on_end(name, reason)
            second = Recorder()
            try:
                await self.ctx.start_agent(hybrid.AgentRunner(second, name="sup"), on_end=self.ignore)
            except Exception as error:  # pragma: no cover - the bug
                errors.append(error)
            self.second = second

        async def ignore(self, reason: StopReason) -> None:
            pass

    parent = Again(first)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, parent)
            await trio.testing.wait_all_tasks_blocked()
            first.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert errors == []
            assert [kid.name for kid in parent.second.kids] == ["sup/a", "sup/b"]
            assert await parent.second.kids[0].request(Echo(4)) == 4
            address.interrupt()


async def test_a_supervisor_cancelled_from_outside_while_children_hibernate_reports_nothing() -> None:
    """The supervisor's nursery is cancelled while it and its children hibernate: children
    end as cancelled, on_child_ended is never called."""

    class Sup(Recorder):
        hibernate_after = 0

    sup = Sup()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, sup)
            await trio.testing.wait_all_tasks_blocked()
            assert all(hibernating(kid) for kid in sup.kids)
            nursery.cancel_scope.cancel()
    assert sup.reported == []
    assert [child.stopped for child in sup.made] == [[CANCELLED], [CANCELLED]]


@pytest.mark.parametrize("strategy", [hybrid.Strategy.ONE_FOR_ALL, hybrid.Strategy.REST_FOR_ONE])
async def test_nested_supervisors_with_sleeping_children_restart_and_stay_reachable(
    autojump_clock: trio.testing.MockClock, strategy: hybrid.Strategy
) -> None:
    """Top (one_for_all / rest_for_one) supervises a first child that fails and a middle
    supervisor whose named children hibernate. The failure restarts the middle one: its
    children are stopped and started again under the same names, and reachable after."""
    mids: list[Recorder] = []
    firsts: list[Sleeper] = []

    class Sleepy(Recorder):
        hibernate_after = 0

    def make_mid() -> Recorder:
        mids.append(Sleepy())
        return mids[-1]

    def make_first() -> Sleeper:
        firsts.append(Sleeper())
        return firsts[-1]

    class Top(hybrid.Supervisor):
        hibernate_after = 0
        shutdown_timeout = 1

        def begin(self) -> Next[Self]:
            self.first = self.ctx.spawn(make_first, name="first")
            self.mid = self.ctx.spawn(make_mid, name="mid")
            return Next.events()

    Top.strategy = strategy
    top = Top()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, top)
            await trio.sleep(1)
            assert all(hibernating(kid) for kid in mids[0].kids)
            top.first.send(Ping(-1))
            await trio.sleep(1)
            assert len(mids) == 2
            assert [child.stopped for child in mids[0].made] == [
                [StopReason(StopKind.INTERRUPTED)],
                [StopReason(StopKind.INTERRUPTED)],
            ]
            assert [kid.name for kid in mids[1].kids] == [f"{address.name}/mid/a", f"{address.name}/mid/b"]
            assert [await kid.request(Echo(i)) for i, kid in enumerate(mids[1].kids)] == [0, 1]
            assert await top.first.request(Echo(7)) == 7
            address.interrupt()
            await address.join()
    assert all(not kid.is_alive for kid in mids[1].kids)


async def test_nested_shutdown_with_a_stubborn_sleeping_grandchild_and_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Top's shutdown timeout is shorter than what its middle supervisor needs to stop a
    grandchild that ignores interrupts: top cancels the middle one, which cancels the
    grandchild; everything ends, nothing hangs, every run is told."""

    class Stubborn(Sleeper):
        async def on_interrupt(self) -> None:
            self.ctx.do_next(Next.events())

    stubborn = Stubborn()

    class Mid(hybrid.Supervisor):
        hibernate_after = 0
        shutdown_timeout = 10

        def begin(self) -> Next[Self]:
            self.kid = self.ctx.spawn(stubborn, name="stubborn")
            return Next.events()

    mid = Mid()

    class Top(hybrid.Supervisor):
        hibernate_after = 0
        shutdown_timeout = 1

        def __init__(self) -> None:
            self.reported: list[StopReason] = []

        def begin(self) -> Next[Self]:
            self.mid = self.ctx.spawn(mid, name="mid")
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.reported.append(reason)

    top = Top()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, top)
            await trio.sleep(1)
            assert hibernating(mid.kid)
            start = trio.current_time()
            address.interrupt()
            await address.join()
            assert trio.current_time() - start == pytest.approx(2)
    assert [reason.kind for reason in top.reported] == [StopKind.CANCELLED]
    assert [reason.kind for reason in stubborn.stopped] == [StopKind.CANCELLED]
    assert not mid.kid.is_alive


async def test_messages_to_a_restarting_sleeping_child_are_handled_or_refused_never_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests sent to a hibernating child around its failure and during its restart
    backoff: each is answered by some instance or fails with AgentStopped; none hangs, and
    those sent after the failure reach the next instance."""

    class Backs(hybrid.Supervisor):
        hibernate_after = 0
        restart_backoff = hybrid.Backoff(initial=2, max_delay=2)

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Sleeper, name="child")
            return Next.events()

    sup = Backs()
    answers: dict[int, object] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            assert hibernating(sup.child)

            async def ask(n: int) -> None:
                try:
                    answers[n] = await sup.child.request(Echo(n))
                except hybrid.AgentStopped as error:
                    answers[n] = error

            async with trio.open_nursery() as askers:
                askers.start_soon(ask, 0)
                await trio.sleep(0)
                sup.child.send(Ping(-1))  # fails after the request 0 (or before: refused)
                askers.start_soon(ask, 1)
                await trio.sleep(1)  # in the backoff
                askers.start_soon(ask, 2)
                sup.child.send(Ping(3))
            address.interrupt()
    assert set(answers) == {0, 1, 2}
    assert answers[2] == 2
    assert all(answer == n or isinstance(answer, hybrid.AgentStopped) for n, answer in answers.items())


async def test_stopping_a_supervisor_whose_next_child_has_not_started_yet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The starter is held by a child whose (durable) start awaits; a child queued behind
    it has a runner that start_agent has not taken yet. Stopping the supervisor past the
    shutdown timeouts "cancels" that one: the supervisor must still stop cleanly."""

    class Sup(hybrid.Supervisor):
        shutdown_timeout = 1

        def begin(self) -> Next[Self]:
            self.slow = self.ctx.spawn(Sleeper, group=0, checkpointer=StuckStart(), name="slow")
            self.later = self.ctx.spawn(Sleeper, group=1, name="later")
            return Next.events()

    sup = Sup()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            address.interrupt()
            await address.join()
    assert not sup.later.is_alive
    assert not sup.slow.is_alive


# -- durable children -------------------------------------------------------------------------------


class Memory:
    """An in-memory checkpointer: the last transition entered and how many runs started."""

    idempotency_key = "memory"

    def __init__(self) -> None:
        self.starts = 0
        self.endings: list[StopReason] = []

    async def start(self, agent: Any) -> Next[Any] | None:
        self.starts += 1
        await trio.sleep(0)
        return None

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        await trio.sleep(0)

    async def handled(self, agent: Any) -> None:
        await trio.sleep(0)

    async def ended(self, agent: Any, reason: StopReason, output: Any) -> None:
        self.endings.append(reason)


async def test_a_durable_sleeping_child_restarts_and_its_checkpointer_sees_each_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A supervised durable child hibernates, fails when woken, restarts (its checkpointer
    told of each run's ending once), hibernates again and answers; at the supervisor's
    cancellation it ends as cancelled, told once more."""
    memory = Memory()

    class Sup(hybrid.Supervisor):
        hibernate_after = 0

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Sleeper, checkpointer=memory, name="durable")
            return Next.events()

    sup = Sup()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            assert hibernating(sup.child)
            sup.child.send(Ping(-1))
            await trio.sleep(1)
            assert memory.starts == 2
            assert [reason.kind for reason in memory.endings] == [StopKind.FAILED]
            assert hibernating(sup.child)
            assert await sup.child.request(Echo(3)) == 3
            await trio.sleep(1)
            assert hibernating(sup.child)
            nursery.cancel_scope.cancel()
    assert [reason.kind for reason in memory.endings] == [StopKind.FAILED, StopKind.CANCELLED]


async def test_a_log_line_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    """Sanity: a contained run that simply finishes is told DONE, with no error logged."""

    class Done(Agent):
        def begin(self) -> Next[Self]:
            return Next.done()

    caplog.set_level(logging.ERROR)
    runner = hybrid.AgentRunner(Done())
    parent = Parent(runner)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, parent)
        await parent.ended.wait()
        address.interrupt()
    assert [reason for _, reason in parent.ends] == [StopReason(StopKind.DONE)]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert math.isfinite(0.0)
