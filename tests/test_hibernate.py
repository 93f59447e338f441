"""Hibernating agents: idle without a trio task, woken by the next message, and otherwise the same.

The whole semantics suite also runs with every agent hibernating (``pytest --hibernate``);
these tests check what is particular to hibernation.
"""

from __future__ import annotations

import contextvars
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next
from hybrid._runtime import _keepers
from tests.messages import Echo, Ping

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


@attrs.frozen
class Peek(hybrid.Request[int]):
    pass


@attrs.frozen
class Where(hybrid.Request[str]):
    pass


class Sleepy(Agent):
    hibernate_after: ClassVar[float | None] = 0

    def __init__(self) -> None:
        self.pings: list[int] = []
        self.stopped: list[hybrid.StopReason] = []
        self.interrupted = False

    def begin(self) -> Next[Self]:
        where.set("the agent's own")
        return Next.events()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.pings.append(event.n)
        if event.n < 0:
            raise_in_state = ValueError("negative ping")
            self.ctx.do_next(Next.fail(raise_in_state))

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        await trio.sleep(0)
        return request.n

    @hybrid.on_request(inline=True)
    async def peek(self, request: Peek) -> int:
        return len(self.pings)

    @hybrid.on_request
    async def where(self, request: Where) -> str:
        return where.get()

    async def on_interrupt(self) -> None:
        self.interrupted = True

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        self.stopped.append(reason)


def hibernating(address: hybrid.Address[Any]) -> bool:
    stats = address.statistics()
    assert stats.phase == "events" or not stats.hibernating
    return stats.hibernating and address._rt.task is None


async def test_an_idle_agent_gives_its_task_up_and_a_message_wakes_it() -> None:
    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, sleepy := Sleepy())
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(agent)
        agent.send(Ping(1))
        assert not hibernating(agent)  # woken at once: its new task is on its way
        assert await agent.request(Echo(5)) == 5
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(agent)
        assert sleepy.pings == [1]
        agent.interrupt()
    assert sleepy.interrupted
    assert sleepy.stopped == [hybrid.StopReason(hybrid.StopKind.INTERRUPTED)]


async def test_it_wakes_with_its_own_contextvars_not_the_senders() -> None:
    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, Sleepy())
        await trio.testing.wait_all_tasks_blocked()
        where.set("the sender's")
        assert await agent.request(Where()) == "the agent's own"
        agent.interrupt()


async def test_hibernate_after_counts_idle_time(autojump_clock: trio.testing.MockClock) -> None:
    class Drowsy(Sleepy):
        hibernate_after = 5

    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, Drowsy())
        await trio.sleep(4)
        assert not hibernating(agent)
        agent.send(Ping(1))  # busy again: the idle time starts over
        await trio.sleep(4)
        assert not hibernating(agent)
        await trio.sleep(2)
        assert hibernating(agent)
        agent.interrupt()


async def test_one_keeper_task_stands_for_all_the_sleepers_of_a_nursery() -> None:
    async with trio.open_nursery() as nursery:
        agents = [hybrid.spawn(nursery, Sleepy()) for _ in range(200)]
        await trio.testing.wait_all_tasks_blocked()
        assert all(hibernating(agent) for agent in agents)
        assert [task.name for task in nursery.child_tasks] == ["hybrid keeper of hibernating agents"]
        for agent in agents:
            agent.interrupt()
    # The keeper left once the last sleeper ended: the nursery could close.


async def test_cancelling_the_nursery_ends_sleepers_as_cancelled() -> None:
    sleepers = [Sleepy() for _ in range(3)]
    ended: list[hybrid.StopReason] = []
    agents: list[hybrid.Address[Sleepy]] = []
    with trio.move_on_after(5):  # a deadline only in case of a bug
        async with trio.open_nursery() as nursery:
            agents += [hybrid.spawn(nursery, sleeper) for sleeper in sleepers]
            await trio.testing.wait_all_tasks_blocked()
            assert all(hibernating(agent) for agent in agents)
            nursery.cancel_scope.cancel()
    for agent, sleeper in zip(agents, sleepers, strict=True):
        assert sleeper.stopped == [hybrid.StopReason(hybrid.StopKind.CANCELLED)]
        assert not agent.is_alive
        ended.append(agent.statistics().reason or hybrid.StopReason(hybrid.StopKind.DONE))
    assert ended == [hybrid.StopReason(hybrid.StopKind.CANCELLED)] * 3


async def test_a_failure_after_waking_leaves_the_nursery_as_a_task_error_would() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="negative ping")):
        async with trio.open_nursery() as nursery:
            agent = hybrid.spawn(nursery, Sleepy())
            await trio.testing.wait_all_tasks_blocked()
            agent.send(Ping(-1))


async def test_an_inline_request_is_answered_without_waking() -> None:
    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, Sleepy())
        await trio.testing.wait_all_tasks_blocked()
        assert await agent.request(Peek()) == 0
        assert hibernating(agent)
        agent.interrupt()


async def test_timers_and_other_threads_wake_it(autojump_clock: trio.testing.MockClock) -> None:
    class Alarm(Sleepy):
        def begin(self) -> Next[Self]:
            self.ctx.send_after(10, Ping(10))
            return Next.events()

    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, alarm := Alarm())
        await trio.sleep(1)
        assert hibernating(agent)
        await trio.sleep(10)
        assert alarm.pings == [10]
        await trio.to_thread.run_sync(agent.send, Ping(11))
        await trio.sleep(1)
        assert alarm.pings == [10, 11]
        assert hibernating(agent)
        agent.interrupt()


async def test_monitors_and_join_see_the_end_of_a_sleeper() -> None:
    class Watcher(Agent):
        def __init__(self, target: hybrid.Address[Any]) -> None:
            self.target = target
            self.seen: list[hybrid.Ended] = []

        def begin(self) -> Next[Self]:
            self.ctx.monitor(self.target)
            return Next.events()

        @hybrid.on_event
        async def ended(self, event: hybrid.Ended) -> None:
            self.seen.append(event)
            self.ctx.shutdown()

    async with trio.open_nursery() as nursery:
        target = hybrid.spawn(nursery, Sleepy())
        watcher = hybrid.spawn(nursery, watcher_agent := Watcher(target))
        await trio.testing.wait_all_tasks_blocked()
        target.interrupt()
        await target.join()
        await watcher.join()
    assert [event.reason for event in watcher_agent.seen] == [hybrid.StopReason(hybrid.StopKind.INTERRUPTED)]


async def test_a_hibernating_supervisor_stops_its_children_in_group_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The supervisor and its children sleep between their events; the shutdown wakes each in its group's turn."""
    order: list[str] = []

    class Member(Sleepy):
        def __init__(self, label: str) -> None:
            super().__init__()
            self.label = label

        async def on_stop(self, reason: hybrid.StopReason) -> None:
            order.append(self.label)

    class App(hybrid.Supervisor):
        hibernate_after = 0

        def begin(self) -> Next[Self]:
            self.members = [
                self.ctx.spawn(Member("store"), group=1),
                self.ctx.spawn(Member("worker"), group=2),
                self.ctx.spawn(Member("front"), group=3),
            ]
            return Next.events()

    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, supervisor := App())
        await trio.sleep(1)
        assert hibernating(app)
        assert all(hibernating(member) for member in supervisor.members)
        app.interrupt()
    assert order == ["front", "worker", "store"]


async def test_run_holds_its_callers_task_so_it_never_hibernates(autojump_clock: trio.testing.MockClock) -> None:
    class Once(Sleepy):
        def begin(self) -> Next[Self]:
            self.ctx.send_after(1, Ping(0))
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            assert not self.ctx.address.statistics().hibernating
            self.ctx.shutdown()

    await Once().run()


def test_hibernate_after_is_checked_where_it_is_declared() -> None:
    with pytest.raises(ValueError, match=r"Bad.hibernate_after must be a finite number of seconds >= 0, got -1"):

        class Bad(Agent):  # pyright: ignore[reportUnusedClass]
            hibernate_after = -1


async def test_the_keepers_list_stays_bounded_as_agents_wake_and_sleep_again() -> None:
    async with trio.open_nursery() as nursery:
        agents = [hybrid.spawn(nursery, Sleepy()) for _ in range(11)]
        await trio.testing.wait_all_tasks_blocked()
        (keeper,) = _keepers().values()
        for round_ in range(50):
            for agent in agents[1:]:  # the first one sleeps throughout: the keeper stays
                agent.send(Ping(round_))
            await trio.testing.wait_all_tasks_blocked()
        assert _keepers()[nursery] is keeper
        assert keeper.count == 11
        assert len(keeper.sleepers) <= 2 * 11 + 64 + 1
        agents[1].send(Ping(0))  # awake (its new task not started yet) when the nursery is cancelled
        nursery.cancel_scope.cancel()
    assert not any(agent.is_alive for agent in agents)


@attrs.frozen
class Finish(hybrid.Request[None]):
    pass


class Plain(Agent):
    """Sets no contextvar: it resumes with the context it was spawned with."""

    hibernate_after = 0

    @hybrid.on_request(inline=True)
    async def finish(self, request: Finish) -> None:
        self.ctx.do_next(Next.done())

    @hybrid.on_request
    async def where(self, request: Where) -> str:
        return where.get()


async def test_a_transition_scheduled_on_a_sleeper_wakes_it_to_take_it() -> None:
    where.set("the spawner's")
    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, Plain())
        await trio.testing.wait_all_tasks_blocked()
        spawned_with = agent._rt.context
        assert await agent.request(Where()) == "the spawner's"
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(agent)
        assert agent._rt.context is spawned_with  # it set no variable: no context of its own is kept
        await agent.request(Finish())  # inline, while it sleeps: the transition wakes it
        with trio.fail_after(5):
            await agent.join()
    assert agent.statistics().reason == hybrid.StopReason(hybrid.StopKind.DONE)


async def test_sleepers_with_equal_contextvars_keep_one_context_and_each_wakes_with_its_own_values() -> None:
    where.set("the spawner's")
    async with trio.open_nursery() as nursery:
        plain = [hybrid.spawn(nursery, Plain()) for _ in range(3)]
        own = [hybrid.spawn(nursery, Sleepy()) for _ in range(2)]  # each sets "the agent's own"
        await trio.testing.wait_all_tasks_blocked()
        assert all(hibernating(agent) for agent in [*plain, *own])
        kept = {id(agent._rt.context) for agent in plain}
        assert len(kept) == 1  # one object for the three: 64 bytes, not 192
        assert own[0]._rt.context is own[1]._rt.context
        assert own[0]._rt.context is not plain[0]._rt.context
        where.set("the sender's")
        assert [await agent.request(Where()) for agent in plain] == ["the spawner's"] * 3
        assert [await agent.request(Where()) for agent in own] == ["the agent's own"] * 2
        for agent in [*plain, *own]:
            agent.interrupt()


class Ambiguous:
    """A value whose ``==`` raises, as a numpy array's does."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value of this comparison is ambiguous")

    __hash__ = object.__hash__


payload: contextvars.ContextVar[Ambiguous | None] = contextvars.ContextVar("payload", default=None)


async def test_sleepers_whose_contextvars_cannot_be_compared_keep_their_own_and_wake_with_them() -> None:
    async with trio.open_nursery() as nursery:
        first, second = Ambiguous(), Ambiguous()
        payload.set(first)
        one = hybrid.spawn(nursery, Plain())
        payload.set(second)
        two = hybrid.spawn(nursery, Plain())
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(one)
        assert hibernating(two)
        assert one._rt.context is not two._rt.context
        assert one._rt.context is not None
        assert one._rt.context[payload] is first
        assert two._rt.context is not None
        assert two._rt.context[payload] is second
        assert await one.request(Where()) == "unset"  # woken, and asleep again
        one.interrupt()
        two.interrupt()


cache: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("cache", default=None)


class Caching(Agent):
    """Sets a contextvar to a dict of its own; answers with that dict's identity after a wake-up."""

    hibernate_after = 0

    def begin(self) -> Next[Self]:
        cache.set({})
        return Next.events()

    @hybrid.on_request
    async def peek(self, request: Peek) -> int:
        mine = cache.get()
        assert mine is not None
        mine["n"] = mine.get("n", 0) + 1
        return id(mine)


async def test_sleepers_with_equal_but_distinct_contextvar_values_keep_their_own_objects() -> None:
    """Two agents each set a var to its own {}: equal values, never shared (each wakes with its own dict)."""
    async with trio.open_nursery() as nursery:
        one = hybrid.spawn(nursery, Caching())
        two = hybrid.spawn(nursery, Caching())
        await trio.testing.wait_all_tasks_blocked()
        assert hibernating(one)
        assert hibernating(two)
        assert one._rt.context is not two._rt.context
        first, second = await one.request(Peek()), await two.request(Peek())
        assert first != second
        assert await one.request(Peek()) == first  # the same dict across its own wake-ups
        one.interrupt()
        two.interrupt()


async def test_hibernation_can_be_chosen_per_spawn(autojump_clock: trio.testing.MockClock) -> None:
    class Awake(Sleepy):
        hibernate_after = None

    async with trio.open_nursery() as nursery:
        default = hybrid.spawn(nursery, Awake())
        chosen = hybrid.spawn(nursery, Awake(), hibernate_after=2)
        started = await hybrid.start(nursery, Awake(), hibernate_after=0)
        await trio.sleep(3)
        assert [hibernating(agent) for agent in (default, chosen, started)] == [False, True, True]
        with pytest.raises(ValueError, match="hibernate_after must be a finite number of seconds >= 0"):
            hybrid.spawn(nursery, Awake(), hibernate_after=-1, name="refused")
        assert "refused" not in [info.name for info in hybrid.snapshot().walk()]
        for agent in (default, chosen, started):
            agent.interrupt()
