"""Edge cases of the failure paths: hooks that misbehave, answers nobody waits for."""

from __future__ import annotations

from collections.abc import AsyncIterator

import outcome
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopReason
from tests.messages import Echo, Ping


class Answers(Agent):
    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        await trio.sleep(1)
        return request.n


async def test_an_on_stop_error_during_cancellation_is_logged_and_cancellation_still_propagates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BadStop(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.wait)

        async def wait(self) -> Next[Self]:
            await trio.sleep_forever()

        async def on_stop(self, reason: StopReason) -> None:
            raise RuntimeError("cleanup")

    with trio.move_on_after(0.01) as scope:
        await BadStop().run()
    assert scope.cancelled_caught
    assert any("on_stop raised while the agent was being cancelled" in r.message for r in caplog.records)


async def test_cancellation_during_on_stop_propagates_and_marks_the_agent_cancelled() -> None:
    class SlowStop(Agent[int]):
        def begin(self) -> Next[Self]:
            return Next.done(1)

        async def on_stop(self, reason: StopReason) -> None:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, SlowStop())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    stats = address.statistics()
    assert stats.reason is not None and stats.reason.cancelled


async def test_an_on_response_handler_error_goes_to_on_error(autojump_clock: trio.testing.MockClock) -> None:
    errors: list[Exception] = []

    class Client(Agent[None]):
        def __init__(self, server: hybrid.Address[Answers]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            self.server.request(Echo(1)).forward_to(self.ctx)
            return Next.events()

        @hybrid.on_response
        async def got(self, request: Echo, response: outcome.Outcome[int]) -> None:
            raise ValueError("bad response handling")

        async def on_error(self, error: Exception) -> None:
            errors.append(error)
            self.ctx.shutdown()

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Answers())
        await Client(server).run()
        server.interrupt()
    assert [str(e) for e in errors] == ["bad response handling"]


async def test_an_answer_to_a_client_that_has_ended_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    class Leaves(Agent[None]):
        def __init__(self, server: hybrid.Address[Answers]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            call = self.server.request(Echo(1))
            call.forward_to(self.ctx)
            with pytest.raises(hybrid.LifecycleError, match="only once"):
                call.forward_to(self.ctx)
            return Next.done()  # ends before the answer comes

        @hybrid.on_response
        async def got(self, request: Echo, response: outcome.Outcome[int]) -> None: ...  # pragma: no cover

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Answers())
        await Leaves(server).run()
        assert await server.request(Echo(2)) == 2  # the server answered both; one answer was dropped
        server.interrupt()


async def test_forward_to_from_a_sync_state_is_carried_out_on_the_trio_thread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class ThreadClient(Agent[int]):
        def __init__(self, server: hybrid.Address[Answers]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            return Next.do_sync(self.ask)

        def ask(self) -> Next[Self]:
            self.server.request(Echo(5)).forward_to(self.ctx)
            return Next.events()

        @hybrid.on_response
        async def got(self, request: Echo, response: outcome.Outcome[int]) -> None:
            self.ctx.do_next(Next.done(response.unwrap()))

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Answers())
        assert await ThreadClient(server).run() == 5
        server.interrupt()


async def test_on_interrupt_transitions_are_ignored_after_a_forced_interrupt() -> None:
    log: list[str] = []

    class Forced(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.wait)

        async def wait(self) -> Next[Self]:
            await trio.sleep_forever()

        async def on_interrupt(self) -> None:
            log.append("on_interrupt")
            self.ctx.do_next(Next.do_async(self.never))

        async def never(self) -> Next[Self]:
            log.append("never")  # pragma: no cover
            return Next.done()  # pragma: no cover

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Forced())
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
        address.interrupt()
    assert log == ["on_interrupt"]
    assert address.statistics().reason == StopReason(hybrid.StopKind.INTERRUPTED)


async def test_stop_overrides_a_scheduled_shutdown_and_late_ending_requests_do_nothing() -> None:
    class Both(Agent[None]):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.stop()
            self.ctx.shutdown()  # stop is already scheduled: it wins

    async with trio.open_nursery() as nursery:
        agent = Both()
        address = hybrid.spawn(nursery, agent)
        address.send(Ping())
        address.send(Ping())
    stats = address.statistics()
    assert stats.reason is not None and stats.reason.stopped
    assert stats.messages_dropped == 1
    agent.ctx.stop()  # after the end: nothing happens
    agent.ctx.shutdown()


async def test_a_stream_stops_when_the_agent_finishes(autojump_clock: trio.testing.MockClock) -> None:
    produced: list[int] = []

    async def endless() -> AsyncIterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1
            await trio.sleep(1)

    class Takes(Agent[list[int]]):
        mailbox_capacity = 1

        def __init__(self) -> None:
            self.items: list[int] = []

        def begin(self) -> Next[Self]:
            self.ctx.consume(endless())
            return Next.events()

        @hybrid.on_event
        async def item(self, event: int) -> None:
            self.items.append(event)
            if event == 2:
                self.ctx.do_next(Next.done(self.items))

        @hybrid.on_event
        async def ended(self, event: hybrid.StreamEnded) -> None: ...  # pragma: no cover

    assert await Takes().run() == [0, 1, 2]
    assert len(produced) <= 4
