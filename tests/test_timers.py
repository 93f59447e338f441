"""Timers (send_after, send_every, reset, cancel), consume and helper tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next


@attrs.frozen
class Tick:
    name: str = "tick"


class Clocked(Agent[list[tuple[float, str]]]):
    """Records (time since start, event name) for each Tick."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []
        self.start = 0.0

    def begin(self) -> Next[Self]:
        self.start = trio.current_time()
        return Next.events()

    @hybrid.on_event
    async def tick(self, event: Tick) -> None:
        self.seen.append((round(trio.current_time() - self.start, 6), event.name))


async def test_send_after_delivers_once_after_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    agent = Clocked()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(0)
        agent.ctx.send_after(2.5, Tick("a"))
        agent.ctx.send_after(1.0, Tick("b"))
        await trio.sleep(10)
        address.interrupt()
    assert agent.seen == [(1.0, "b"), (2.5, "a")]


async def test_send_every_ticks_at_a_fixed_rate_until_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    agent = Clocked()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(0)
        timer = agent.ctx.send_every(2, Tick())
        active = [timer.active]
        await trio.sleep(7)
        timer.cancel()
        timer.cancel()  # idempotent
        await trio.sleep(10)
        active.append(timer.active)
        assert active == [True, False]
        address.interrupt()
    assert [t for t, _ in agent.seen] == [2.0, 4.0, 6.0]


async def test_reset_debounces_a_timer_and_rearms_a_fired_one(autojump_clock: trio.testing.MockClock) -> None:
    agent = Clocked()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(0)
        timer = agent.ctx.send_after(1, Tick("flush"))
        for _ in range(5):
            await trio.sleep(0.5)
            timer.reset(1)  # every change pushes the flush back
        await trio.sleep(2)
        assert agent.seen == [(3.5, "flush")]
        assert not timer.active
        timer.reset(0.25)  # a fired timer can be re-armed
        await trio.sleep(1)
        timer.reset(0)
        await trio.sleep(0.1)
        assert timer.deadline == pytest.approx(trio.current_time() - 0.1)
        address.interrupt()
    assert agent.seen == [(3.5, "flush"), (4.75, "flush"), (5.5, "flush")]
    timer.cancel()
    with pytest.raises(hybrid.LifecycleError, match="was cancelled"):
        timer.reset(1)


async def test_reset_moves_the_next_tick_of_a_periodic_timer(autojump_clock: trio.testing.MockClock) -> None:
    agent = Clocked()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(0)
        timer = agent.ctx.send_every(2, Tick())
        await trio.sleep(3)
        timer.reset(5)  # next tick at 8, then every 2
        await trio.sleep(8.5)
        address.interrupt()
    assert [t for t, _ in agent.seen] == [2.0, 8.0, 10.0]


async def test_timers_are_cancelled_when_the_agent_ends(autojump_clock: trio.testing.MockClock) -> None:
    class Ends(Agent[int]):
        def __init__(self) -> None:
            self.ticks = 0

        def begin(self) -> Next[Self]:
            self.timer = self.ctx.send_every(1, Tick())
            self.ctx.send_after(3600, Tick())
            return Next.events()

        @hybrid.on_event
        async def tick(self, event: Tick) -> None:
            self.ticks += 1
            if self.ticks == 3:
                self.ctx.do_next(Next.done(self.ticks))

    start = trio.current_time()
    agent = Ends()
    assert await agent.run() == 3
    assert trio.current_time() - start == pytest.approx(3)  # the hour-long timer did not hold run()
    assert not agent.timer.active


async def test_timer_arguments_are_checked_at_call_time() -> None:
    class Idle(Agent[None]):
        def begin(self) -> Next[Self]:
            with pytest.raises(hybrid.UnhandledMessage, match="no @hybrid.on_event handler for Tick"):
                self.ctx.send_after(1, Tick())
            with pytest.raises(ValueError, match="finite number of seconds >= 0"):
                self.ctx.send_after(-1, Tick())
            with pytest.raises(ValueError, match="finite number of seconds > 0"):
                self.ctx.send_every(0, Tick())
            with pytest.raises(TypeError, match="must be a finite number of seconds"):
                self.ctx.send_every("1", Tick())  # type: ignore[arg-type]
            return Next.done()

    await Idle().run()


async def test_a_full_bounded_mailbox_delays_timer_events_without_losing_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Bounded(Clocked):
        mailbox_capacity = 1

        def begin(self) -> Next[Self]:
            self.start = trio.current_time()
            return Next.do_async(self.busy)

        async def busy(self) -> Next[Self]:
            self.ctx.address.send(Tick("queued"))  # fills the mailbox
            self.ctx.send_after(1, Tick("timer"))
            await trio.sleep(5)
            return Next.events()

    agent = Bounded()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(10)
        address.interrupt()
    assert agent.seen == [(5.0, "queued"), (5.0, "timer")]


async def numbers(count: int, fail: bool = False) -> AsyncIterator[int]:
    for n in range(count):
        await trio.sleep(1)
        yield n
    if fail:
        raise OSError("stream broke")


class Consumer(Agent[tuple[list[int], Exception | None]]):
    def __init__(self, count: int, fail: bool = False) -> None:
        self.count = count
        self.fail = fail
        self.items: list[int] = []

    def begin(self) -> Next[Self]:
        self.stream = self.ctx.consume(numbers(self.count, self.fail))
        return Next.events()

    @hybrid.on_event
    async def item(self, event: int) -> None:
        self.items.append(event)

    @hybrid.on_event
    async def ended(self, event: hybrid.StreamEnded) -> None:
        assert event.stream is self.stream
        self.ctx.do_next(Next.done((self.items, event.error)))


async def test_consume_delivers_each_item_then_stream_ended(autojump_clock: trio.testing.MockClock) -> None:
    agent = Consumer(5)
    assert await agent.run() == ([0, 1, 2, 3, 4], None)
    assert agent.stream.items == 5


async def test_an_error_while_consuming_arrives_in_stream_ended(autojump_clock: trio.testing.MockClock) -> None:
    items, error = await Consumer(2, fail=True).run()
    assert items == [0, 1]
    assert isinstance(error, OSError)


async def test_an_unhandled_item_type_stops_the_stream_and_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def mixed() -> AsyncIterator[object]:
        yield 1
        yield "text"
        yield 2  # pragma: no cover - never reached

    class Mixed(Consumer):
        def begin(self) -> Next[Self]:
            self.stream = self.ctx.consume(mixed())
            return Next.events()

    items, error = await Mixed(0).run()
    assert items == [1]
    assert isinstance(error, hybrid.UnhandledMessage)


async def test_consume_requires_a_stream_ended_handler_and_an_async_iterable() -> None:
    class NoEnd(Agent[None]):
        def begin(self) -> Next[Self]:
            with pytest.raises(hybrid.UnhandledMessage, match="StreamEnded"):
                self.ctx.consume(numbers(1))
            with pytest.raises(TypeError, match="needs an async iterable"):
                self.ctx.consume([1, 2])  # type: ignore[arg-type]
            return Next.done()

        @hybrid.on_event
        async def item(self, event: int) -> None: ...

    await NoEnd().run()


async def test_a_cancelled_stream_sends_nothing_more(autojump_clock: trio.testing.MockClock) -> None:
    class Cancels(Consumer):
        @hybrid.on_event
        async def item(self, event: int) -> None:
            self.items.append(event)
            if event == 1:
                self.stream.cancel()
                self.ctx.send_after(10, Tick())

        @hybrid.on_event
        async def tick(self, event: Tick) -> None:
            self.ctx.do_next(Next.done((self.items, None)))

    assert await Cancels(100).run() == ([0, 1], None)


async def test_start_soon_runs_a_helper_that_is_cancelled_when_the_agent_ends() -> None:
    events: list[str] = []

    async def helper(label: str, address: hybrid.Address[Clocked]) -> None:
        address.send(Tick(label))
        try:
            await trio.sleep_forever()
        finally:
            events.append("helper cancelled")

    agent = Clocked()

    class Starts(Clocked):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(helper, "from helper", self.ctx.address)
            return Next.events()

        @hybrid.on_event
        async def tick(self, event: Tick) -> None:
            events.append(event.name)
            self.ctx.do_next(Next.done([]))

    assert await Starts().run() == []
    assert events == ["from helper", "helper cancelled"]
    del agent


async def test_a_helper_error_leaves_the_nursery_and_cancels_the_agent() -> None:
    async def broken() -> None:
        raise KeyError("helper")

    class Spawns(Agent[None]):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(broken)
            return Next.events()

    with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="helper")):
        await Spawns().run()
    agent = Spawns()
    address: hybrid.Address[Spawns] | None = None
    with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="helper")):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
    assert address is not None
    reason = address.statistics().reason
    assert reason is not None and reason.cancelled
    with pytest.raises(hybrid.LifecycleError, match="has ended"):
        agent.ctx.start_soon(broken)


async def test_timers_work_from_a_sync_state(autojump_clock: trio.testing.MockClock) -> None:
    class FromThread(Clocked):
        def begin(self) -> Next[Self]:
            self.start = trio.current_time()
            return Next.do_sync(self.arm)

        def arm(self) -> Next[Self]:
            self.ctx.send_after(2, Tick("from thread"))
            return Next.events()

        @hybrid.on_event
        async def tick(self, event: Tick) -> None:
            await super().tick(event)
            self.ctx.shutdown()

    agent = FromThread()
    await agent.run()
    assert agent.seen == [(2.0, "from thread")]


async def test_reset_is_honoured_while_a_tick_waits_for_room(autojump_clock: trio.testing.MockClock) -> None:
    class Full(Clocked):
        mailbox_capacity = 1

        def begin(self) -> Next[Self]:
            self.start = trio.current_time()
            self.timer = self.ctx.send_after(0.1, Tick("flush"))
            self.ctx.address.send(Tick("filler"))  # the timer's tick will wait for room
            return Next.do_async(self.busy)

        async def busy(self) -> Next[Self]:
            await trio.sleep(0.2)
            return Next.events()

    agent = Full()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(0.15)  # the tick fired at 0.1 and waits for room
        agent.timer.reset(0.5)  # flush at 0.65 instead
        await trio.sleep(2)
        address.interrupt()
    assert agent.seen == [(0.2, "filler"), (0.65, "flush")]


async def test_a_stream_can_be_cancelled_from_a_worker_thread() -> None:
    closed = trio.Event()

    async def two_then_nothing() -> AsyncIterator[int]:
        try:
            yield 0
            yield 1
            await trio.Event().wait()  # never set: only a cancellation ends this
        finally:
            closed.set()

    class FromThread(Consumer):
        def begin(self) -> Next[Self]:
            self.stream = self.ctx.consume(two_then_nothing())
            return Next.events()

        @hybrid.on_event
        async def item(self, event: int) -> None:
            self.items.append(event)
            if event == 1:
                self.ctx.do_next(Next.do_sync(self.cancel_it))

        def cancel_it(self) -> Next[Self]:
            self.stream.cancel()
            return Next.events()

    agent = FromThread(0)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        with trio.fail_after(5):
            await closed.wait()
        address.interrupt()
    assert agent.items == [0, 1]
    assert agent.stream.items == 2
    assert address.statistics().reason == hybrid.StopReason.INTERRUPTED  # no StreamEnded came


async def test_a_periodic_timer_never_piles_up_ticks_in_an_unbounded_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Behind a handler slower than the period, ticks coalesce: one waits at most, and an interrupt is prompt."""

    class Slow(Agent):
        def __init__(self) -> None:
            self.ticks = 0

        def begin(self) -> Next[Self]:
            self.ctx.send_every(0.002, Tick("t"))
            return Next.events()

        @hybrid.on_event
        async def tick(self, event: Tick) -> None:
            self.ticks += 1
            await trio.sleep(0.01)

    agent = Slow()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        depths: list[int] = []
        for _ in range(50):
            await trio.sleep(0.1)
            depths.append(address.statistics().mailbox_depth)
        assert max(depths) <= 1
        assert 490 <= agent.ticks <= 510  # one tick per handler run: the handler is the pace
        start = trio.current_time()
        address.interrupt()
        await address.join()
        assert trio.current_time() - start <= 0.03  # the running handler and one queued tick, at most
