"""@hybrid.on_request(inline=True): answered in the caller's task when the agent is idle, queued otherwise."""

from __future__ import annotations

from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
import hybrid.testing
from hybrid import Agent, Next
from hybrid._handlers import awaits
from tests.fairness import Ticker
from tests.messages import Ping


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Total(hybrid.Request[int]):
    pass


@attrs.frozen
class Where(hybrid.Request[tuple[trio.lowlevel.Task, str]]):
    pass


@attrs.frozen
class Fail(hybrid.Request[int]):
    pass


@attrs.frozen
class Finish(hybrid.Request[None]):
    pass


class Counter(Agent):
    def __init__(self) -> None:
        self.total = 0

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.total += event.n

    @hybrid.on_event
    async def slow(self, event: Ping) -> None:
        await trio.sleep(event.n)

    @hybrid.on_request(inline=True)
    async def get_total(self, request: Total) -> int:
        return self.total

    @hybrid.on_request(inline=True)
    async def where(self, request: Where) -> tuple[trio.lowlevel.Task, str]:
        return trio.lowlevel.current_task(), self.ctx.address.name

    @hybrid.on_request(inline=True)
    async def fail(self, request: Fail) -> int:
        raise ValueError(f"total is {self.total}")

    @hybrid.on_request(inline=True)
    async def finish(self, request: Finish) -> None:
        self.ctx.do_next(Next.done())


async def test_an_idle_agent_is_answered_in_the_callers_task() -> None:
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter(), name="counter")
        await hybrid.testing.wait_idle(counter)
        task, name = await counter.request(Where())
        assert task is trio.lowlevel.current_task()  # no task switch: the caller ran the handler
        assert name == "counter"  # with the agent's context set
        assert counter.statistics().messages_handled == 1
        counter.interrupt()


async def test_queued_messages_are_handled_first_so_order_is_kept() -> None:
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        await hybrid.testing.wait_idle(counter)
        counter.send(Add(1))
        counter.send(Add(2))
        assert await counter.request(Total()) == 3  # queued behind the events, answered by the agent's task
        task, _ = await counter.request(Where())
        assert task is trio.lowlevel.current_task()  # idle again: inline
        counter.interrupt()


class SleepyCounter(Counter):
    hibernate_after = 0


async def test_an_agent_that_just_hibernated_again_answers_inline() -> None:
    """Woken by an event, back asleep before its nursery's keeper task ran again: still answered inline.

    (The keeper has no task for a moment then; only a cancelled keeper stops inline answers.)
    Repeated: which of the two runs first is trio's choice, each time.
    """
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, SleepyCounter())
        for n in range(200):
            await hybrid.testing.wait_idle(counter)
            counter.send(Add(1))
            assert await counter.request(Total()) == n + 1  # queued while it wakes: its own task answers
            task, _ = await counter.request(Where())
            assert task is trio.lowlevel.current_task(), f"round {n}: queued instead of answered inline"
        counter.interrupt()


async def test_a_busy_agent_answers_after_its_handler(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        counter.send(Ping(5))  # a handler that sleeps 5 s
        counter.send(Add(4))
        await trio.sleep(1)
        start = trio.current_time()
        assert await counter.request(Total()) == 4
        assert trio.current_time() - start == pytest.approx(4)
        counter.interrupt()


async def test_an_agent_in_a_state_answers_when_it_reaches_actor_mode(autojump_clock: trio.testing.MockClock) -> None:
    class Warming(Counter):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.warm)

        async def warm(self) -> Next[Self]:
            await trio.sleep(3)
            self.total = 10
            return Next.events()

    async with trio.open_nursery() as nursery:
        warming = hybrid.spawn(nursery, Warming())
        await trio.sleep(1)
        assert await warming.request(Total()) == 10
        warming.interrupt()


async def test_an_inline_error_is_raised_in_the_caller_and_the_agent_goes_on() -> None:
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        await hybrid.testing.wait_idle(counter)
        with pytest.raises(ValueError, match="total is 0"):
            await counter.request(Fail())
        counter.send(Add(1))
        assert await counter.request(Total()) == 1
        counter.interrupt()


async def test_a_transition_scheduled_inline_wakes_the_agent() -> None:
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        await hybrid.testing.wait_idle(counter)
        await counter.request(Finish())
        with trio.fail_after(5):
            await counter.join()
        assert counter.statistics().reason == hybrid.StopReason(hybrid.StopKind.DONE)
        with pytest.raises(hybrid.AgentStopped):
            await counter.request(Total())


async def test_a_cancelled_caller_runs_nothing() -> None:
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        await hybrid.testing.wait_idle(counter)
        with trio.CancelScope() as scope:
            scope.cancel()
            await counter.request(Finish())
        assert counter.is_alive and counter.statistics().messages_handled == 0
        counter.interrupt()


async def test_while_an_instrument_watches_inline_requests_are_queued() -> None:
    recorder = hybrid.testing.Recorder()
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        recorder.watch(counter)
        await hybrid.testing.wait_idle(counter)
        task, _ = await counter.request(Where())
        assert task is not trio.lowlevel.current_task()
        assert recorder.messages() == [Where()]
        counter.interrupt()


async def test_a_caller_looping_on_inline_requests_still_lets_others_run() -> None:
    ticker = Ticker()

    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        await hybrid.testing.wait_idle(counter)
        nursery.start_soon(ticker.run)
        await trio.sleep(0)
        before = ticker.ticks
        for _ in range(1000):
            await counter.request(Total())
        assert ticker.ticks - before >= 1000 // 64 - 1
        nursery.cancel_scope.cancel()


async def test_a_restarted_child_answers_inline_again(autojump_clock: trio.testing.MockClock) -> None:
    class Crashy(Counter):
        @hybrid.on_event
        async def crash(self, event: Crash) -> None:
            raise_now = ValueError("crash")
            self.ctx.do_next(Next.fail(raise_now))

    class App(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Crashy, name="child")
            return Next.events()

    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App())
        await trio.sleep(1)
        child = cast("hybrid.Address[Counter]", app._rt.agent.child)  # type: ignore[attr-defined]
        child.send(Add(5))
        child.send(Crash())
        await trio.sleep(10)
        child.send(Add(2))
        await trio.sleep(1)
        task, _ = await child.request(Where())
        assert task is trio.lowlevel.current_task()
        assert await child.request(Total()) == 2  # the new instance's state
        app.interrupt()


@attrs.frozen
class Crash:
    pass


def test_an_inline_handler_that_awaits_is_refused_where_it_is_defined() -> None:
    with pytest.raises(hybrid.HandlerDefinitionError, match=r"Counter2.total awaits: an inline handler runs in"):

        class Counter2(Agent):  # pyright: ignore[reportUnusedClass]
            @hybrid.on_request(inline=True)
            async def total(self, request: Total) -> int:
                await trio.sleep(0)
                return 0

    with pytest.raises(TypeError, match=r"inline=\.\.\.\) must be True or False, got 1"):
        hybrid.on_request(inline=1)  # type: ignore[call-overload]


def test_what_counts_as_awaiting() -> None:
    async def plain() -> int:
        return 1

    async def awaiting() -> None:
        await trio.sleep(0)

    async def iterating(source: Any) -> None:
        async for _ in source:
            pass

    async def entering(lock: trio.Lock) -> None:
        async with lock:
            pass

    async def nested() -> int:
        async def inner() -> None:
            await trio.sleep(0)

        del inner
        return 1

    async def comprehension(source: Any) -> list[int]:
        return [await x for x in source]

    assert [awaits(fn) for fn in (plain, awaiting, iterating, entering, nested, comprehension)] == [
        False,
        True,
        True,
        True,
        False,
        True,
    ]
    assert awaits(len)  # not a plain function: assumed to await


async def test_an_instrument_that_does_not_watch_messages_keeps_inline_answers() -> None:
    class Transitions(hybrid.Instrument):
        def state_entered(self, address: hybrid.Address[Any], next: Next[Any]) -> None:
            pass

    hybrid.add_instrument(Transitions())
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        await hybrid.testing.wait_idle(counter)
        task, _ = await counter.request(Where())
        assert task is trio.lowlevel.current_task()
        counter.interrupt()
