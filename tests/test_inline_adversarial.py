"""Adversarial tests of ``@hybrid.on_request(inline=True)``: ordering, lifecycle, threads, instruments, fairness.

Ten of these tests found a bug each (contextvars, BaseException, a decorator that
awaits, fairness across threads, a cancelled hibernating agent, a restart into another
class), fixed since; all are kept as regression tests. Each agent class that must *not*
hibernate says so (``hibernate_after = None``), so that the file passes with
``--hibernate`` too.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import attrs
import outcome
import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typing_extensions import Self

import hybrid
import hybrid.testing
import hybrid.tracing
from hybrid import Agent, Next
from hybrid._handlers import awaits
from tests.fairness import Ticker

where: contextvars.ContextVar[str] = contextvars.ContextVar("inline_adversarial_where", default="unset")


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Nap:
    seconds: float


@attrs.frozen
class Warm:
    """An event whose handler schedules a state that sets the total to 100."""


@attrs.frozen
class Total(hybrid.Request[int]):
    pass


@attrs.frozen
class Who(hybrid.Request[trio.lowlevel.Task]):
    pass


@attrs.frozen
class SendSelf(hybrid.Request[int]):
    pass


@attrs.frozen
class StartState(hybrid.Request[None]):
    pass


@attrs.frozen
class StopNow(hybrid.Request[int]):
    pass


@attrs.frozen
class ScheduleTwice(hybrid.Request[None]):
    pass


@attrs.frozen
class Fail(hybrid.Request[int]):
    pass


@attrs.frozen
class Explode(hybrid.Request[int]):
    pass


@attrs.frozen
class ReadVar(hybrid.Request[str]):
    pass


@attrs.frozen
class WriteVar(hybrid.Request[None]):
    pass


@attrs.frozen
class QueuedReadVar(hybrid.Request[str]):
    pass


@attrs.frozen
class WasInterrupted(hybrid.Request[bool]):
    pass


class Boom(BaseException):
    """A KeyboardInterrupt-like BaseException."""


class Server(Agent):
    """Idle in actor mode; never hibernates unless a test asks (``spawn(..., hibernate_after=0)``)."""

    hibernate_after: ClassVar[float | None] = None

    def __init__(self) -> None:
        self.total = 0
        self.interrupted = False
        self.errors: list[Exception] = []

    def begin(self) -> Next[Self]:
        where.set("the agent's")
        return Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.total += event.n

    @hybrid.on_event
    async def nap(self, event: Nap) -> None:
        await trio.sleep(event.seconds)

    @hybrid.on_event
    async def warm(self, event: Warm) -> None:
        self.ctx.do_next(Next.do_async(self.warming, 100))

    async def warming(self, total: int) -> Next[Self]:
        await trio.sleep(0)
        self.total = total
        return Next.events()

    @hybrid.on_request(inline=True)
    async def get_total(self, request: Total) -> int:
        return self.total

    @hybrid.on_request(inline=True)
    async def who(self, request: Who) -> trio.lowlevel.Task:
        return trio.lowlevel.current_task()

    @hybrid.on_request(inline=True)
    async def send_self(self, request: SendSelf) -> int:
        self.ctx.address.send(Add(1))
        return self.total

    @hybrid.on_request(inline=True)
    async def start_state(self, request: StartState) -> None:
        self.ctx.do_next(Next.do_async(self.warming, 7))

    @hybrid.on_request(inline=True)
    async def stop_now(self, request: StopNow) -> int:
        self.ctx.stop()
        return self.total

    @hybrid.on_request(inline=True)
    async def schedule_twice(self, request: ScheduleTwice) -> None:
        self.ctx.do_next(Next.do_async(self.warming, 3))
        self.ctx.do_next(Next.done())

    @hybrid.on_request(inline=True)
    async def fail(self, request: Fail) -> int:
        raise ValueError(f"total is {self.total}")

    @hybrid.on_request(inline=True)
    async def explode(self, request: Explode) -> int:
        self.total = -1  # half-way through an update
        raise Boom

    @hybrid.on_request(inline=True)
    async def read_var(self, request: ReadVar) -> str:
        return where.get()

    @hybrid.on_request(inline=True)
    async def write_var(self, request: WriteVar) -> None:
        where.set("written by the handler")

    @hybrid.on_request
    async def queued_read_var(self, request: QueuedReadVar) -> str:
        return where.get()

    @hybrid.on_request(inline=True)
    async def was_interrupted(self, request: WasInterrupted) -> bool:
        return self.interrupted

    async def on_interrupt(self) -> None:
        self.interrupted = True

    async def on_error(self, error: Exception) -> None:
        self.errors.append(error)


SLEEPS = pytest.mark.parametrize("hibernate_after", [None, 0], ids=["parked", "hibernating"])
"""Run a test with an agent that parks when idle, and with one that hibernates at once."""


async def idle_server(nursery: trio.Nursery, hibernate_after: float | None) -> hybrid.Address[Server]:
    server = hybrid.spawn(nursery, Server(), hibernate_after=hibernate_after)
    await hybrid.testing.wait_idle(server)
    assert server.statistics().idle
    assert server.statistics().hibernating == (hibernate_after == 0)
    return server


def inline(task: trio.lowlevel.Task) -> bool:
    """Whether the answer was computed in the calling task (the inline path)."""
    return task is trio.lowlevel.current_task()


# -- ordering ------------------------------------------------------------------


@SLEEPS
async def test_an_inline_request_after_an_event_that_schedules_a_state_sees_the_state(
    hibernate_after: float | None,
) -> None:
    """The state a queued event schedules runs before the request is answered."""
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        server.send(Warm())
        assert not inline(await server.request(Who()))  # busy: queued behind the event and its state
        assert await server.request(Total()) == 100
        server.interrupt()


@SLEEPS
async def test_a_transition_scheduled_inline_runs_before_the_next_inline_request(
    hibernate_after: float | None,
) -> None:
    """Right after an inline handler's do_next, the agent is no longer idle: the next request waits for the state."""
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        await server.request(StartState())
        assert not server.statistics().idle
        assert await server.request(Total()) == 7
        await hybrid.testing.wait_idle(server)
        assert inline(await server.request(Who()))
        server.interrupt()


@SLEEPS
async def test_an_event_an_inline_handler_sends_to_its_own_agent_is_handled_before_the_next_request(
    hibernate_after: float | None,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        assert await server.request(SendSelf()) == 0
        assert await server.request(Total()) == 1
        server.interrupt()


@SLEEPS
async def test_several_callers_in_one_batch_see_every_event_sent_before_them(hibernate_after: float | None) -> None:
    """Callers interleaved with senders: each answer counts exactly the events sent before its request."""
    seen: list[tuple[int, int]] = []
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        sent = 0

        async def caller(i: int) -> None:
            nonlocal sent
            for _ in range(20):
                if i % 2:
                    server.send(Add(1))
                    sent += 1
                before = sent
                seen.append((before, await server.request(Total())))
                await trio.sleep(0)

        async with trio.open_nursery() as callers:
            for i in range(4):
                callers.start_soon(caller, i)
        assert len(seen) == 80
        assert all(total >= before for before, total in seen)
        assert await server.request(Total()) == sent == 40
        server.interrupt()


# -- ctx methods from an inline handler --------------------------------------------


@SLEEPS
async def test_stop_from_an_inline_handler_answers_then_ends_and_later_requests_fail(
    hibernate_after: float | None,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        server.send(Add(5))
        await hybrid.testing.wait_idle(server)
        assert await server.request(StopNow()) == 5
        with pytest.raises(hybrid.AgentStopped):
            await server.request(Total())  # queued behind the stop: failed, never a hang
        with trio.fail_after(1):
            await server.join()  # an agent that ends by stop returns None
        assert server.statistics().reason == hybrid.StopReason(hybrid.StopKind.STOPPED)
        with pytest.raises(hybrid.AgentStopped):
            await server.request(Total())


@SLEEPS
async def test_a_second_do_next_in_an_inline_handler_is_raised_in_the_caller_and_the_first_is_taken(
    hibernate_after: float | None,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        with pytest.raises(hybrid.LifecycleError, match="already scheduled"):
            await server.request(ScheduleTwice())
        assert await server.request(Total()) == 3
        assert server.is_alive
        server.interrupt()


async def test_a_monitor_is_told_when_an_inline_handler_stops_its_agent() -> None:
    class Watcher(Agent):
        hibernate_after: ClassVar[float | None] = None

        def __init__(self, target: hybrid.Address[Any]) -> None:
            self.target = target
            self.ended: list[hybrid.Ended] = []

        def begin(self) -> Next[Self]:
            self.ctx.monitor(self.target)
            return Next.events()

        @hybrid.on_event
        async def on_ended(self, event: hybrid.Ended) -> None:
            self.ended.append(event)
            self.ctx.do_next(Next.done())

    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, None)
        watcher = Watcher(server)
        watching = hybrid.spawn(nursery, watcher)
        await hybrid.testing.wait_idle(watching)
        await server.request(StopNow())
        with trio.fail_after(1):
            await watching.join()
        assert len(watcher.ended) == 1


# -- errors --------------------------------------------------------------------


class OnlyFailures(hybrid.Instrument):
    def __init__(self) -> None:
        self.failed: list[tuple[object, Exception]] = []

    def message_failed(
        self, address: hybrid.Address[Any], message: object, kind: hybrid.MessageKind, error: Exception
    ) -> None:
        self.failed.append((message, error))


async def test_an_instrument_watching_only_failures_sees_a_failing_inline_request_once() -> None:
    failures = OnlyFailures()
    hybrid.add_instrument(failures)
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, None)
        with pytest.raises(ValueError, match="total is 0"):
            await server.request(Fail())
        assert [message for message, _ in failures.failed] == [Fail()]
        assert server.statistics().messages_handled == 1
        server.interrupt()


@SLEEPS
async def test_a_failing_inline_request_counts_once_and_is_not_given_to_on_error(hibernate_after: float | None) -> None:
    agent = Server()
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, agent, hibernate_after=hibernate_after)
        await hybrid.testing.wait_idle(server)
        with pytest.raises(ValueError, match="total is 0"):
            await server.request(Fail())
        assert server.statistics().messages_handled == 1
        assert agent.errors == []  # as for a queued request: the caller gets the error, on_error does not
        server.interrupt()


async def queued_explosion() -> tuple[hybrid.StopReason | None, list[BaseException]]:
    """What a BaseException raised by a queued (non-inline) request handler does: the reference."""

    class Queued(Server):
        @hybrid.on_request
        async def explode(self, request: Explode) -> int:
            raise Boom

    raised: list[BaseException] = []
    server: hybrid.Address[Queued] | None = None
    try:
        async with trio.open_nursery() as nursery:
            server = hybrid.spawn(nursery, Queued())
            await hybrid.testing.wait_idle(server)
            try:
                await server.request(Explode())
            except BaseException as error:
                raised.append(error)
                raise
    except BaseException as error:  # the agent's failure leaves its nursery
        raised.append(error)
    assert server is not None
    return server.statistics().reason, raised


async def test_reference_a_base_exception_in_a_queued_handler_fails_the_agent() -> None:
    reason, raised = await queued_explosion()
    assert reason is not None and reason.kind is hybrid.StopKind.FAILED
    assert isinstance(reason.error, Boom)
    assert isinstance(raised[0], hybrid.AgentStopped)  # the caller is told the agent ended


async def test_a_base_exception_in_an_inline_handler_fails_the_agent_as_a_queued_one_does() -> None:
    server: hybrid.Address[Server] | None = None
    caught: list[BaseException] = []
    with contextlib.suppress(BaseException):  # the agent's failure (Boom) leaves the nursery, as a queued one's does
        async with trio.open_nursery() as nursery:
            server = await idle_server(nursery, None)
            try:
                await server.request(Explode())
            except BaseException as error:
                caught.append(error)
            await trio.testing.wait_all_tasks_blocked()
            if server.is_alive:
                server.interrupt()
    assert len(caught) == 1  # the caller learnt something (Boom, or AgentStopped as for a queued handler)
    assert server is not None
    reason = server.statistics().reason
    assert reason is not None and reason.kind is hybrid.StopKind.FAILED, reason
    assert isinstance(reason.error, Boom)


# -- contextvars -----------------------------------------------------------------


@SLEEPS
async def test_reference_a_queued_handler_sees_the_agents_contextvars(hibernate_after: float | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        where.set("the caller's")
        assert await server.request(QueuedReadVar()) == "the agent's"
        server.interrupt()


@SLEEPS
async def test_an_inline_handler_sees_the_agents_contextvars(hibernate_after: float | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        where.set("the caller's")
        answer = await server.request(ReadVar())
        server.interrupt()
    assert answer == "the agent's"


@SLEEPS
async def test_a_contextvar_an_inline_handler_sets_stays_with_the_agent(hibernate_after: float | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        where.set("the caller's")
        await server.request(WriteVar())
        in_caller = where.get()
        in_agent = await server.request(QueuedReadVar())
        server.interrupt()
    assert (in_caller, in_agent) == ("the caller's", "written by the handler")


# -- cancellation, interrupts, endings ---------------------------------------------


@SLEEPS
async def test_a_cancelled_caller_neither_runs_the_handler_nor_wakes_the_agent(hibernate_after: float | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.request(StopNow())
        assert scope.cancelled_caught
        stats = server.statistics()
        assert (stats.messages_handled, stats.idle, stats.hibernating) == (0, True, hibernate_after == 0)
        server.interrupt()


@SLEEPS
async def test_an_inline_request_right_after_interrupt_is_answered_after_on_interrupt(
    hibernate_after: float | None,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        server.interrupt()
        assert await server.request(WasInterrupted()) is True  # queued behind the interrupt, answered as it finishes
        with trio.fail_after(1):
            await server.join()
        with pytest.raises(hybrid.AgentStopped):
            await server.request(WasInterrupted())


async def test_an_inline_request_during_a_slow_on_interrupt_is_answered_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class SlowHook(Server):
        async def on_interrupt(self) -> None:
            await trio.sleep(5)
            self.interrupted = True

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, SlowHook())
        await hybrid.testing.wait_idle(server)
        server.interrupt()
        await trio.sleep(1)
        assert server.statistics().phase == "hook"
        assert await server.request(WasInterrupted()) is True
        assert trio.current_time() == pytest.approx(5)


@pytest.mark.parametrize(
    ("hibernate_after", "declared"),
    [
        pytest.param(None, "inline", id="parked-inline"),
        pytest.param(None, "queued", id="parked-queued"),
        pytest.param(0, "queued", id="hibernating-queued"),
        pytest.param(0, "inline", id="hibernating-inline"),
    ],
)
async def test_a_request_to_an_agent_whose_nursery_was_just_cancelled_is_refused(
    hibernate_after: float | None, declared: str
) -> None:
    """The agent is being cancelled: it answers nothing more, whether it hibernates or not."""
    request: hybrid.Request[Any] = ReadVar() if declared == "inline" else QueuedReadVar()
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as inner:
            server = await idle_server(inner, hibernate_after)
            inner.cancel_scope.cancel()
            with trio.CancelScope(shield=True), pytest.raises(hybrid.AgentStopped):
                await server.request(request)
        assert server.statistics().reason == hybrid.StopReason(hybrid.StopKind.CANCELLED)
        outer.cancel_scope.cancel()


# -- threads and other runs ----------------------------------------------------------


@SLEEPS
async def test_a_caller_in_a_worker_thread_is_answered_through_from_thread(hibernate_after: float | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        server.send(Add(2))
        await hybrid.testing.wait_idle(server)

        def in_thread() -> int:
            async def ask() -> int:
                return await server.request(Total())

            return trio.from_thread.run(ask)

        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(in_thread) == 2
        assert server.statistics().messages_handled == 2
        server.interrupt()


@SLEEPS
async def test_a_caller_in_another_trio_run_is_refused_and_nothing_runs(hibernate_after: float | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)

        def other_run() -> BaseException | None:
            async def ask() -> None:
                await server.request(StopNow())

            try:
                trio.run(ask)
            except BaseException as error:
                return error
            return None

        with trio.fail_after(5):
            error = await trio.to_thread.run_sync(other_run)
        assert isinstance(error, hybrid.LifecycleError), error
        assert server.statistics().messages_handled == 0
        assert server.is_alive
        server.interrupt()


# -- re-entrancy --------------------------------------------------------------------


@attrs.frozen
class Relay(hybrid.Request[tuple[bool, int]]):
    pass


@attrs.frozen
class Poke(hybrid.Request[int]):
    pass


@attrs.frozen
class Noted:
    n: int


class Front(Agent):
    hibernate_after: ClassVar[float | None] = None

    def __init__(self, back: hybrid.Address[Back]) -> None:
        self.back = back
        self.noted: list[int] = []

    @hybrid.on_request
    async def relay(self, request: Relay) -> tuple[bool, int]:
        me = trio.lowlevel.current_task()
        answer = await self.back.request(Poke())
        return (trio.lowlevel.current_task() is me, answer)

    @hybrid.on_event
    async def note(self, event: Noted) -> None:
        self.noted.append(event.n)


class Back(Agent):
    hibernate_after: ClassVar[float | None] = None

    def __init__(self) -> None:
        self.front: hybrid.Address[Front] | None = None
        self.pokes = 0
        self.tasks: list[trio.lowlevel.Task] = []

    @hybrid.on_request(inline=True)
    async def poke(self, request: Poke) -> int:
        self.pokes += 1
        self.tasks.append(trio.lowlevel.current_task())
        assert self.front is not None
        self.front.send(Noted(self.pokes))  # to the agent whose handler is calling: it is busy, so queued
        return self.pokes


async def test_an_inline_handler_called_from_another_agents_handler_runs_in_that_agents_task() -> None:
    back_agent = Back()
    async with trio.open_nursery() as nursery:
        back = hybrid.spawn(nursery, back_agent)
        front_agent = Front(back)
        front = hybrid.spawn(nursery, front_agent)
        back_agent.front = front
        await hybrid.testing.wait_idle(back, front)
        assert await front.request(Relay()) == (True, 1)
        assert await front.request(Relay()) == (True, 2)
        await hybrid.testing.wait_idle(back, front)
        assert front_agent.noted == [1, 2]
        assert len(back_agent.tasks) == 2
        assert all(task is not trio.lowlevel.current_task() for task in back_agent.tasks)
        assert back.statistics().messages_handled == 2
        front.interrupt()
        back.interrupt()


async def test_an_agents_helper_task_asking_its_own_idle_agent_is_answered_inline() -> None:
    answers: list[tuple[bool, int]] = []
    answered = trio.Event()

    class AsksItself(Server):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.ask_myself)
            return Next.events()

        async def ask_myself(self) -> None:
            await hybrid.testing.wait_idle(self.ctx.address)
            task = await self.ctx.address.request(Who())
            answers.append((inline(task), await self.ctx.address.request(Total())))
            answered.set()

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, AsksItself())
        with trio.fail_after(1):
            await answered.wait()
        assert answers == [(True, 0)]
        server.interrupt()


# -- instruments and counters ----------------------------------------------------------


class Handled(hybrid.Instrument):
    def __init__(self) -> None:
        self.handled: list[object] = []

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        self.handled.append(message)


@SLEEPS
async def test_an_instrument_added_while_the_agent_is_idle_sees_the_next_inline_request_once(
    hibernate_after: float | None,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        assert inline(await server.request(Who()))
        handled = Handled()
        hybrid.add_instrument(handled)
        assert not inline(await server.request(Who()))
        assert handled.handled == [Who()]
        hybrid.remove_instrument(handled)
        await hybrid.testing.wait_idle(server)
        assert inline(await server.request(Who()))
        assert handled.handled == [Who()]
        assert server.statistics().messages_handled == 3
        server.interrupt()


async def test_tracing_makes_exactly_one_span_for_an_inline_declared_request() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hybrid.add_instrument(hybrid.tracing.TracingInstrument(provider))
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, None)
        assert await server.request(Total()) == 0
        server.interrupt()
    assert [span.name for span in exporter.get_finished_spans()].count("Server handle Total") == 1


@SLEEPS
async def test_inline_answers_count_once_in_statistics_snapshot_and_class_totals(hibernate_after: float | None) -> None:
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, hibernate_after)
        for _ in range(3):
            assert inline(await server.request(Who()))
        with pytest.raises(ValueError, match="total"):
            await server.request(Fail())
        assert server.statistics().messages_handled == 4
        (info,) = [agent for agent in hybrid.snapshot().walk() if agent.name == server.name]
        assert info.messages_handled == 4
        assert await server.request(StopNow()) == 0
        await server.join()
    (totals,) = [row for row in hybrid.snapshot().counters if row.agent_class == "Server"]
    assert totals.messages_handled == server.statistics().messages_handled == 5


# -- fairness ------------------------------------------------------------------------


async def test_a_caller_looping_on_failing_inline_requests_still_lets_others_run() -> None:
    ticker = Ticker()

    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, None)
        nursery.start_soon(ticker.run)
        await trio.sleep(0)
        before = ticker.ticks
        for _ in range(640):
            with pytest.raises(ValueError, match="total"):
                await server.request(Fail())
        assert ticker.ticks - before >= 640 // 64 - 1
        nursery.cancel_scope.cancel()


async def test_a_caller_looping_over_many_idle_agents_still_lets_others_run() -> None:
    ticker = Ticker()

    async with trio.open_nursery() as nursery:
        servers = [hybrid.spawn(nursery, Server()) for _ in range(10)]
        await hybrid.testing.wait_idle(*servers)
        nursery.start_soon(ticker.run)
        await trio.sleep(0)
        before = ticker.ticks
        for _ in range(64):
            for server in servers:
                await server.request(Total())
        assert ticker.ticks - before >= 640 // 64 - 1
        nursery.cancel_scope.cancel()


async def test_a_cancellation_from_another_task_reaches_a_caller_looping_on_inline_requests() -> None:
    """The fairness checkpoints let another task run, and its cancellation is seen at the next request."""
    async with trio.open_nursery() as nursery:
        server = await idle_server(nursery, None)
        done = 0
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_soon, scope)
            for _ in range(10_000):
                await server.request(Total())
                done += 1
        assert scope.cancelled_caught
        assert done <= 2 * 64
        server.interrupt()


async def cancel_soon(scope: trio.CancelScope) -> None:
    scope.cancel()


async def test_inline_answers_in_another_thread_do_not_reset_this_callers_fairness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs: queue.Queue[int | None] = queue.Queue()
    done: queue.Queue[None] = queue.Queue()

    async def other_run() -> None:
        async with trio.open_nursery() as nursery:
            other = hybrid.spawn(nursery, Server(), name="other-run")
            await hybrid.testing.wait_idle(other)
            while True:
                count = await trio.to_thread.run_sync(jobs.get)
                if count is None:
                    break
                for _ in range(count):
                    await other.request(Total())
                done.put(None)
            other.interrupt()

    class Chatty(Server):
        @hybrid.on_request(inline=True)
        async def get_total(self, request: Total) -> int:
            # While this thread's caller is mid-answer, the other thread answers 63 inline requests.
            jobs.put(63)
            done.get(timeout=5)
            return self.total

    thread = threading.Thread(target=trio.run, args=(other_run,))
    thread.start()
    ticker = Ticker()

    try:
        async with trio.open_nursery() as nursery:
            server = hybrid.spawn(nursery, Chatty())
            await hybrid.testing.wait_idle(server)
            nursery.start_soon(ticker.run)
            await trio.sleep(0)
            monkeypatch.setattr(hybrid._mailbox._inline_answers, "count", 0)  # this thread's count
            await server.request(Who())  # this thread's first answer since the reset: the count is 1
            before = ticker.ticks
            for _ in range(3 * 64):
                await server.request(Total())
            yielded = ticker.ticks - before
            nursery.cancel_scope.cancel()
    finally:
        jobs.put(None)
        await trio.to_thread.run_sync(thread.join)
    assert yielded >= 2  # 3 * 64 answers in this thread: at least 2 yields


# -- mailboxes: priority, bounded ------------------------------------------------------


@attrs.frozen
class Urgent(hybrid.Request[int]):
    priority: int = 10


@attrs.frozen
class Job:
    priority: int = 0


def by_priority(message: object) -> int:
    priority = getattr(message, "priority", 0)
    assert isinstance(priority, int)
    return priority


class Prioritised(Agent):
    hibernate_after: ClassVar[float | None] = None

    @staticmethod
    def message_priority(message: object) -> int:
        return by_priority(message)

    def __init__(self) -> None:
        self.jobs = 0

    @hybrid.on_event
    async def job(self, event: Job) -> None:
        await trio.sleep(1)
        self.jobs += 1

    @hybrid.on_request(inline=True)
    async def urgent(self, request: Urgent) -> int:
        return self.jobs


async def test_a_priority_mailbox_answers_inline_when_idle_and_by_priority_when_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        agent = hybrid.spawn(nursery, Prioritised())
        await hybrid.testing.wait_idle(agent)
        assert await agent.request(Urgent()) == 0  # idle: inline, no time passes
        assert trio.current_time() == 0
        for _ in range(3):
            agent.send(Job())
        await trio.sleep(0.5)  # the first job runs; two are queued
        assert await agent.request(Urgent()) == 1  # ahead of the two queued jobs, after the running one
        assert trio.current_time() == pytest.approx(1)
        agent.interrupt()


async def test_a_full_bounded_mailbox_makes_an_inline_request_wait_for_room_and_its_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Server(), mailbox_capacity=1)
        await hybrid.testing.wait_idle(server)
        server.send(Nap(5))
        await trio.testing.wait_all_tasks_blocked()  # the nap is being handled: the mailbox is empty
        server.send(Add(3))  # full now
        with pytest.raises(hybrid.MailboxFull):
            server.send(Add(100))
        assert await server.request(Total()) == 3  # waited for room, then for the Add
        assert trio.current_time() == pytest.approx(5)
        server.interrupt()


# -- supervision -------------------------------------------------------------------------


@attrs.frozen
class Crash:
    pass


class Crashy(Server):
    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.ctx.do_next(Next.fail(ValueError("crash")))


async def test_an_inline_request_while_a_child_waits_to_restart_is_answered_by_the_new_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    made: list[Crashy] = []

    def factory() -> Crashy:
        made.append(Crashy())
        return made[-1]

    class App(hybrid.Supervisor):
        restart_backoff = hybrid.Backoff(initial=10)
        hibernate_after: ClassVar[float | None] = None

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(factory, name="child")
            return Next.events()

    async with trio.open_nursery() as nursery:
        app_agent = App()
        app = hybrid.spawn(nursery, app_agent)
        await trio.sleep(1)
        child = app_agent.child
        child.send(Add(5))
        child.send(Crash())
        await trio.sleep(1)  # ended; the restart waits for its backoff
        assert len(made) == 1
        assert await child.request(Total()) == 0  # waited: answered by the new instance
        assert len(made) == 2
        assert trio.current_time() >= 10
        app.interrupt()


async def test_an_inline_request_to_a_child_its_supervisor_gave_up_fails() -> None:
    class App(hybrid.Supervisor):
        hibernate_after: ClassVar[float | None] = None

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Crashy, name="child", restart=hybrid.Restart.TEMPORARY)
            return Next.events()

    app_agent = App()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, app_agent)
        await trio.testing.wait_all_tasks_blocked()
        child = app_agent.child
        assert inline(await child.request(Who()))
        child.send(Crash())
        await trio.testing.wait_all_tasks_blocked()
        assert not child.is_alive
        with trio.fail_after(1), pytest.raises(hybrid.AgentStopped):
            await child.request(Total())
        app.interrupt()


# -- decoration ---------------------------------------------------------------------------


def logged(fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    """A decorator written the usual way (functools.wraps) whose wrapper awaits before calling."""

    @functools.wraps(fn)
    async def wrapper(self: Any, message: Any) -> Any:
        await trio.sleep(0)
        return await fn(self, message)

    return wrapper


def test_an_inline_handler_whose_decorator_awaits_is_refused_where_it_is_defined() -> None:
    with pytest.raises(hybrid.HandlerDefinitionError, match="awaits"):

        class Wrapped(Agent):  # pyright: ignore[reportUnusedClass]
            @hybrid.on_request(inline=True)
            @logged
            async def total(self, request: Total) -> int:
                return 0


# -- a restart into another class ----------------------------------------------------------


@attrs.frozen
class Version(hybrid.Request[str]):
    pass


class First(Agent):
    hibernate_after: ClassVar[float | None] = None

    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.ctx.do_next(Next.fail(ValueError("crash")))

    @hybrid.on_event
    async def nap(self, event: Nap) -> None:
        await trio.sleep(event.seconds)

    @hybrid.on_request(inline=True)
    async def version(self, request: Version) -> str:
        return "first"


class Second(First):
    @hybrid.on_request(inline=True)
    async def version(self, request: Version) -> str:
        return "second"


def first_then_second() -> Callable[[], First]:
    made: list[First] = []

    def factory() -> First:
        made.append(First() if not made else Second())
        return made[-1]

    return factory


class Versions(hybrid.Supervisor):
    hibernate_after: ClassVar[float | None] = None

    def begin(self) -> Next[Self]:
        self.child = self.ctx.spawn(first_then_second(), name="child")
        return Next.events()


async def test_reference_a_request_made_after_a_restart_into_a_subclass_reaches_its_handler() -> None:
    versions = Versions()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, versions)
        await trio.testing.wait_all_tasks_blocked()
        child = versions.child
        assert await child.request(Version()) == "first"
        child.send(Crash())
        await trio.testing.wait_all_tasks_blocked()
        assert await child.request(Version()) == "second"
        app.interrupt()


async def test_a_request_made_before_a_restart_and_awaited_after_is_answered_by_the_new_class() -> None:
    versions = Versions()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, versions)
        await trio.testing.wait_all_tasks_blocked()
        child = versions.child
        call = child.request(Version())  # made now, sent when awaited
        child.send(Crash())
        await trio.testing.wait_all_tasks_blocked()
        answer = await call
        app.interrupt()
    assert answer == "second"


class SlowVersions(Versions):
    restart_backoff = hybrid.Backoff(initial=10)


async def test_a_request_queued_while_a_child_waits_to_restart_is_answered_by_the_new_class(
    autojump_clock: trio.testing.MockClock,
) -> None:
    versions = SlowVersions()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, versions)
        await trio.sleep(1)
        child = versions.child
        child.send(Crash())
        await trio.sleep(1)  # ended; the restart waits for its backoff
        assert not child.statistics().idle
        answer = await child.request(Version())  # waits for the next instance, a Second
        assert trio.current_time() >= 10
        app.interrupt()
    assert answer == "second"


@attrs.frozen
class Wake:
    pass


@attrs.define
class Forwarder(Agent):
    """Forwards a request call made elsewhere when told, and keeps the answers it gets."""

    hibernate_after: ClassVar[float | None] = None
    call: hybrid.RequestCall[str] | None = None
    answers: list[str] = attrs.Factory(list[str])

    @hybrid.on_event
    async def forward(self, event: Wake) -> None:
        assert self.call is not None
        self.call.forward_to(self.ctx)

    @hybrid.on_response
    async def answered(self, request: Version, response: outcome.Outcome[str]) -> None:
        self.answers.append(response.unwrap())


async def test_a_request_made_before_a_restart_and_forwarded_after_is_answered_by_the_new_class() -> None:
    """forward_to sends it now: the handler is the one of the class that reads the mailbox now."""
    versions = Versions()
    forwarder = Forwarder()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, versions)
        client = hybrid.spawn(nursery, forwarder)
        await trio.testing.wait_all_tasks_blocked()
        forwarder.call = versions.child.request(Version())
        versions.child.send(Crash())
        await trio.testing.wait_all_tasks_blocked()
        client.send(Wake())
        await trio.testing.wait_all_tasks_blocked()
        app.interrupt()
        client.interrupt()
    assert forwarder.answers == ["second"]


# -- found by a review of the fixes ------------------------------------------------------------------


@attrs.frozen
class Flush(hybrid.Request[str]):
    pass


class FlushedOnStop(Agent):
    hibernate_after: ClassVar[float | None] = 0

    @hybrid.on_request(inline=True)
    async def flush(self, request: Flush) -> str:
        return "flushed"


@attrs.define
class AsksOnStop(Agent):
    """Its on_stop asks another hibernating agent for something, as the nursery they share is cancelled."""

    hibernate_after: ClassVar[float | None] = 0
    other: hybrid.Address[Any] | None = None
    got: list[str] = attrs.Factory(list[str])

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        assert self.other is not None
        try:
            self.got.append(await self.other.request(Flush()))
        except hybrid.AgentStopped:
            self.got.append("AgentStopped")


async def test_a_sleeper_ending_in_a_cancelled_nursery_can_still_ask_another_sleeper_without_hanging() -> None:
    """The other one is woken to end (AgentStopped), never left unwoken with the request queued."""
    asker = AsksOnStop()
    with trio.move_on_after(5) as guard:  # a hang would end here (the test then fails)
        async with trio.open_nursery() as nursery:
            other = hybrid.spawn(nursery, FlushedOnStop())
            asker.other = other
            hybrid.spawn(nursery, asker)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert not guard.cancelled_caught
    assert asker.got in (["AgentStopped"], ["flushed"])


@attrs.frozen
class SetAndPoke(hybrid.Request[None]):
    pass


class SetsThenWakesItself(Agent):
    hibernate_after: ClassVar[float | None] = 0

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hybrid.on_request(inline=True)
    async def set_and_poke(self, request: SetAndPoke) -> None:
        where.set("set-and-poke")
        self.ctx.address.send(Wake())  # wakes this hibernating agent

    @hybrid.on_event
    async def poke(self, event: Wake) -> None:
        self.seen.append(where.get())


async def test_what_an_inline_handler_sets_reaches_the_task_it_wakes_its_hibernating_agent_into() -> None:
    agent = SetsThenWakesItself()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.testing.wait_all_tasks_blocked()
        await address.request(SetAndPoke())
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert agent.seen == ["set-and-poke"]


def awaits_first(fn: Callable[..., Awaitable[int]]) -> Callable[..., Awaitable[int]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any) -> int:
        await trio.sleep(0)
        return await fn(*args)

    return wrapper


def test_a_decorator_that_awaits_above_the_inline_mark_is_refused_where_the_class_is_defined() -> None:
    with pytest.raises(hybrid.HandlerDefinitionError, match="awaits"):

        class Above(Agent):  # pyright: ignore[reportUnusedClass]
            @awaits_first
            @hybrid.on_request(inline=True)
            async def total(self, request: Total) -> int:
                return 0


class AwaitingWrapper:
    """A wrapper object (not a function) around a handler: what its __call__ does cannot be read."""

    def __init__(self, fn: Callable[..., Awaitable[int]]) -> None:
        self.__wrapped__ = fn

    async def __call__(self, *args: Any) -> int:
        await trio.sleep(0)
        return await self.__wrapped__(*args)


def test_a_layer_that_is_not_a_function_is_assumed_to_await() -> None:
    """What an object's __call__ does is not read: a wrapped chain through one may suspend."""

    async def plain(self: object, request: Total) -> int:
        return 0

    assert not awaits(plain)
    assert awaits(AwaitingWrapper(plain))


def test_a_chain_of_wrappers_none_of_which_awaits_is_read_to_its_end() -> None:
    async def inner(self: object, request: Total) -> int:
        return 0

    @functools.wraps(inner)
    async def passing(self: object, request: Total) -> int:
        return 1

    assert not awaits(passing)  # both layers read, neither awaits


class Unversioned(Agent):
    """A class a child may be restarted into that no longer answers `Version`."""

    hibernate_after: ClassVar[float | None] = None

    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.ctx.do_next(Next.fail(ValueError("crash")))


class LosesVersions(hybrid.Supervisor):
    hibernate_after: ClassVar[float | None] = None

    def begin(self) -> Next[Self]:
        made: list[Agent] = []

        def factory() -> Agent:
            made.append(First() if not made else Unversioned())
            return made[-1]

        self.child = self.ctx.spawn(factory, name="child")
        return Next.events()


async def test_a_call_gathered_after_a_restart_into_a_class_without_its_handler_fails_as_unhandled() -> None:
    """The quorum's member fails with UnhandledMessage (the old class's handler never runs on the new instance)."""
    versions = LosesVersions()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, versions)
        await trio.testing.wait_all_tasks_blocked()
        call = versions.child.request(Version())
        versions.child.send(Crash())
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(hybrid.QuorumError) as failed:
            await hybrid.quorum(1, [call])
        (error,) = failed.value.errors
        assert isinstance(error, hybrid.UnhandledMessage)
        assert "Version" in str(error)
        app.interrupt()
