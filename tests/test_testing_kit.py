"""hybrid.testing: simulated runs, recordings, waiting for idleness."""

from __future__ import annotations

import pytest
import trio
from typing_extensions import Self

import hybrid
import hybrid.testing
from hybrid import Agent, Next, StopReason
from tests.messages import Echo, Ping


class Machine(Agent[int]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.wait)

    async def wait(self) -> Next[Self]:
        await trio.sleep(3600)  # an hour of simulated time
        return Next.do_sync(self.count)

    def count(self) -> Next[Self]:
        return Next.events()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        if event.n == 2:
            self.ctx.do_next(Next.done(event.n))

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n


def test_run_uses_simulated_time_so_an_hour_passes_at_once() -> None:
    async def whole() -> tuple[int | None, float]:
        start = trio.current_time()
        agent = Machine()
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
            await trio.sleep(3601)
            address.send(Ping(2))
        return await address.join(), trio.current_time() - start

    result, elapsed = hybrid.testing.run(whole)
    assert result == 2
    assert elapsed == pytest.approx(3601)


async def test_a_recorder_sees_transitions_messages_and_the_ending() -> None:
    recorder = hybrid.testing.Recorder()
    agent = Machine()
    recorder.watch(agent)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(1))
        await hybrid.testing.wait_idle()
        nursery.cancel_scope.cancel()
    assert recorder.transitions() == ["do_async"]
    assert recorder.of("stopped")[0].detail == StopReason.CANCELLED
    assert recorder.messages() == []  # the mailbox is not read in a state


async def test_recording_an_address_after_spawn_and_its_requests_and_interrupt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = hybrid.testing.Recorder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Machine())
        recorder.watch(address)
        await trio.sleep(3601)
        address.send(Ping(1))
        assert await address.request(Echo(5)) == 5
        address.interrupt()
    assert recorder.transitions() == ["do_async", "do_sync", "events", "interrupt"]
    assert recorder.messages() == [Ping(1), Echo(5)]
    assert [r.kind for r in recorder.records][-3:] == ["request", "transition", "stopped"]
    assert recorder.records[0].agent == "Machine-1"
    with pytest.raises(hybrid.LifecycleError, match="nothing left to record"):
        recorder.watch(address)
    with pytest.raises(TypeError, match="needs an agent or an address"):
        recorder.watch("agent")  # type: ignore[arg-type]


async def test_wait_idle_returns_once_the_mailboxes_are_empty() -> None:
    class Slow(Agent):
        def __init__(self) -> None:
            self.seen = 0

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            await trio.sleep(0)
            self.seen += 1

    agent = Slow()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        for n in range(100):
            address.send(Ping(n))
        await hybrid.testing.wait_idle(address)
        assert agent.seen == 100
        address.interrupt()


async def test_recording_a_started_agent_watches_its_address() -> None:
    recorder = hybrid.testing.Recorder()
    async with trio.open_nursery() as nursery:
        agent = Machine()
        hybrid.spawn(nursery, agent)
        recorder.watch(agent)
        nursery.cancel_scope.cancel()
    assert recorder.of("stopped")
