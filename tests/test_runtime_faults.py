"""The runtime under faults, in the manner of Akka's DeathWatchSpec and OTP's test suites.

Agents that die of BaseExceptions, hooks that raise while the agent is being
cancelled, awaits from another thread or trio run, cancellation at every await,
iterables that never yield, pipelines interrupted while fed, load (10,000
agents, 1,000,000 messages, 100,000 abandoned requests), names and
instruments. Deadlocks fail a ``trio.fail_after`` guard in simulated time
instead of hanging the test.
"""

from __future__ import annotations

import gc
import itertools
import logging
import re
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import attrs
import outcome
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopKind, StopReason
from tests.fairness import gaps, sample_progress
from tests.messages import Echo, Ping

GUARD = 36_000  # simulated seconds


class Fatal(BaseException):
    """A BaseException that is neither Cancelled nor KeyboardInterrupt."""


@attrs.frozen
class Slow:
    n: int


@attrs.frozen
class Finish:
    pass


@attrs.frozen
class Count(hybrid.Request[int]):
    pass


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", error)
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [error]


class Watcher(Agent):
    """Monitors `target` and records each `Ended` it receives."""

    def __init__(self, target: hybrid.Address[Any], ended: list[StopReason]) -> None:
        self.target = target
        self.ended = ended

    def begin(self) -> Next[Self]:
        self.ctx.monitor(self.target)
        return Next.events()

    @hybrid.on_event
    async def on_ended(self, event: hybrid.Ended) -> None:
        self.ended.append(event.reason)
        self.ctx.do_next(Next.done())


class Server(Agent):
    """Records the messages it handles."""

    def __init__(self) -> None:
        self.log: list[str] = []

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.log.append(f"ping {event.n}")

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        self.log.append(f"echo {request.n}")
        return request.n


# -- 1. BaseExceptions that are not Cancelled -----------------------------------------


class DiesOf(Agent[None]):
    """Raises `error` from a state once `gate` is set."""

    def __init__(self, error: BaseException, gate: trio.Event) -> None:
        self.error = error
        self.gate = gate
        self.stopped: list[StopReason] = []

    def begin(self) -> Next[Self]:
        return Next.do_async(self.die)

    async def die(self) -> Next[Self]:
        await self.gate.wait()
        raise self.error

    async def on_stop(self, reason: StopReason) -> None:
        self.stopped.append(reason)


@pytest.mark.parametrize("make_error", [lambda: Fatal("fatal"), lambda: KeyboardInterrupt("ki")], ids=["Fatal", "KI"])
async def test_an_agent_that_dies_of_a_base_exception_reports_it_from_join_and_its_stop_reason(
    autojump_clock: trio.testing.MockClock, make_error: Callable[[], BaseException]
) -> None:
    """The error leaves the nursery, join() re-raises it, and on_stop, monitors and statistics see it as failed."""
    error = make_error()
    gate = trio.Event()
    agent = DiesOf(error, gate)
    ended: list[StopReason] = []
    escaped: list[BaseException] = []
    address: hybrid.Address[DiesOf] | None = None
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as outer:
            try:
                async with trio.open_nursery() as inner:
                    address = hybrid.spawn(inner, agent)
                    hybrid.spawn(outer, Watcher(address, ended))
                    await trio.testing.wait_all_tasks_blocked()
                    gate.set()
            except BaseException as caught:  # the KeyboardInterrupt must not reach pytest
                escaped.append(caught)
    assert address is not None
    assert [leaf for caught in escaped for leaf in leaves(caught)] == [error]
    reason = address.statistics().reason
    assert reason is not None
    assert reason.failed
    assert reason.error is error
    assert [r.kind for r in agent.stopped] == [StopKind.FAILED]
    assert ended == [reason]
    joined = await outcome.acapture(address.join)  # catches KeyboardInterrupt too, so pytest survives
    assert isinstance(joined, outcome.Error), "join() returned instead of raising what the agent died of"
    assert joined.error is error


async def test_a_runner_whose_agent_dies_of_a_base_exception_raises_it_and_join_reports_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AgentRunner.run() lets a non-Cancelled BaseException through; join() raises it too."""
    error = Fatal("fatal in runner")
    gate = trio.Event()
    gate.set()
    runner = hybrid.AgentRunner(DiesOf(error, gate))
    with pytest.raises(Fatal) as caught:
        await runner.run()
    assert caught.value is error
    with pytest.raises(Fatal) as joined:
        await runner.address.join()
    assert joined.value is error
    reason = runner.address.statistics().reason
    assert reason is not None and reason.failed and reason.error is error


# -- 2. on_stop raising while the agent is cancelled ------------------------------------


class Forever(Agent[None]):
    def __init__(self, on_stop_error: BaseException | None) -> None:
        self.on_stop_error = on_stop_error
        self.stopped: list[StopReason] = []

    def begin(self) -> Next[Self]:
        return Next.do_async(self.wait)

    async def wait(self) -> Next[Self]:
        await trio.sleep_forever()

    async def on_stop(self, reason: StopReason) -> None:
        self.stopped.append(reason)
        if self.on_stop_error is not None:
            raise self.on_stop_error


async def test_an_on_stop_raising_a_base_exception_during_cancellation_still_ends_the_agent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """join() waiters wake, monitors hear of the end and is_alive turns False, although on_stop raised Fatal."""
    agent = Forever(Fatal("on_stop broke"))
    ended: list[StopReason] = []
    joined: list[outcome.Outcome[Any]] = []
    escaped: list[BaseException] = []
    address: hybrid.Address[Forever] | None = None
    watcher: hybrid.Address[Watcher] | None = None
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as outer:
            try:
                async with trio.open_nursery() as inner:
                    address = hybrid.spawn(inner, agent)
                    watcher = hybrid.spawn(outer, Watcher(address, ended))

                    async def joiner() -> None:
                        joined.append(await outcome.acapture(address.join))

                    outer.start_soon(joiner)
                    outer.start_soon(joiner)
                    await trio.testing.wait_all_tasks_blocked()
                    inner.cancel_scope.cancel()
            except BaseException as caught:
                escaped.append(caught)
            assert watcher is not None
            await watcher.join()
    assert address is not None
    assert [r.kind for r in agent.stopped] == [StopKind.CANCELLED]
    assert len(joined) == 2
    assert not address.is_alive
    assert address.statistics().reason is not None
    assert len(ended) == 1
    assert all(isinstance(leaf, Fatal) for caught in escaped for leaf in leaves(caught))


async def test_a_cancelled_agent_join_returns_none_and_its_monitors_hear_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancellation from outside: join() returns None for every waiter; the monitor gets a cancelled reason."""
    agent = Forever(None)
    ended: list[StopReason] = []
    joined: list[object] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                address: hybrid.Address[Any] = hybrid.spawn(inner, agent)
                watcher = hybrid.spawn(outer, Watcher(address, ended))

                async def joiner() -> None:
                    joined.append(await address.join())

                outer.start_soon(joiner)
                await trio.testing.wait_all_tasks_blocked()
                inner.cancel_scope.cancel()
            await watcher.join()
    assert joined == [None]
    assert ended == [StopReason.CANCELLED]
    assert await address.join() is None


# -- 3. alive while draining ---------------------------------------------------------------


class Drainer(Agent[int | None]):
    """Finishes on `Finish` (done / shutdown) and handles slow messages queued behind it."""

    def __init__(self, ending: str, ended: list[StopReason]) -> None:
        self.ending = ending
        self.ended = ended
        self.seen: list[tuple[int, bool, int]] = []

    @hybrid.on_event
    async def finish(self, event: Finish) -> None:
        if self.ending == "done":
            self.ctx.do_next(Next.done(7))
        else:
            self.ctx.shutdown()

    @hybrid.on_event
    async def slow(self, event: Slow) -> None:
        await trio.sleep(1)
        self.seen.append((event.n, self.ctx.address.is_alive, len(self.ended)))


@pytest.mark.parametrize("ending", ["done", "shutdown", "interrupt"])
async def test_an_agent_handling_its_queued_messages_after_it_finished_is_still_alive_and_unreported(
    autojump_clock: trio.testing.MockClock, ending: str
) -> None:
    """While queued slow handlers run after done/shutdown/interrupt, is_alive stays True and no Ended arrives."""
    ended: list[StopReason] = []
    agent = Drainer(ending, ended)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
            hybrid.spawn(nursery, Watcher(address, ended))
            await trio.testing.wait_all_tasks_blocked()
            if ending == "interrupt":
                address.interrupt()
            else:
                address.send(Finish())
            for n in (1, 2, 3):
                address.send(Slow(n))
            for _ in range(3):
                await trio.sleep(0.9)
                assert address.is_alive
                assert ended == []
            output = await address.join()
    assert agent.seen == [(1, True, 0), (2, True, 0), (3, True, 0)]
    assert output == (7 if ending == "done" else None)
    assert not address.is_alive
    assert len(ended) == 1


# -- 4. awaiting from another thread or trio run ---------------------------------------------


def await_in_another_run(op: str, address: hybrid.Address[Any]) -> BaseException | None:
    """Run a new trio.run (in this thread) that awaits `op` on `address`; return what it raised."""

    async def attempt() -> BaseException | None:
        try:
            with trio.fail_after(60):  # simulated: a refusal never comes -> TooSlowError
                if op == "request":
                    await address.request(Echo(1))
                elif op == "send_wait":
                    await address.send_wait(Ping(1))
                else:
                    await address.join()
        except Exception as error:
            return error
        return None

    return trio.run(attempt, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("op", ["request", "send_wait", "join"])
@pytest.mark.parametrize("launcher", ["to_thread", "plain_thread"])
async def test_awaiting_an_address_from_another_trio_run_is_refused_clearly_and_corrupts_nothing(
    op: str, launcher: str
) -> None:
    """request/send_wait/join from a trio run in another thread raise a clear error; the agent is unharmed."""
    server = Server()
    results: list[BaseException | None] = []
    async with trio.open_nursery() as nursery:
        address: hybrid.Address[Any] = hybrid.spawn(nursery, server)
        await trio.testing.wait_all_tasks_blocked()
        if launcher == "to_thread":
            results.append(await trio.to_thread.run_sync(await_in_another_run, op, address))
        else:
            thread = threading.Thread(target=lambda: results.append(await_in_another_run(op, address)))
            thread.start()
            await trio.to_thread.run_sync(thread.join)
        [error] = results
        assert isinstance(error, RuntimeError), error
        assert re.search(r"thread|run", str(error), re.IGNORECASE)
        with trio.fail_after(5):
            assert await address.request(Echo(2)) == 2
        assert server.log == ["echo 2"]
        assert address.statistics().messages_handled == 1
        address.interrupt()
        with trio.fail_after(5):
            assert await address.join() is None


# -- 5. an async iterable that never awaits ----------------------------------------------------


class Sink(Agent[int]):
    def __init__(self, source: Callable[[], AsyncIterator[int]]) -> None:
        self.source = source
        self.count = 0

    def begin(self) -> Next[Self]:
        self.ctx.consume(self.source())
        return Next.events()

    @hybrid.on_event
    async def item(self, event: int) -> None:
        self.count += 1

    @hybrid.on_event
    async def end(self, event: hybrid.StreamEnded) -> None:
        self.ctx.do_next(Next.done(self.count))


async def test_consuming_an_async_iterable_that_never_awaits_cannot_starve_the_run() -> None:
    """A generator of 10**6 items without a checkpoint: another task still runs at least every few dozen items."""
    total = 10**6
    progress: list[int] = []

    async def never_awaits() -> AsyncIterator[int]:
        for n in range(total):
            progress.append(n)
            yield n

    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_progress, progress, total, seen)
        await trio.lowlevel.checkpoint()
        assert await Sink(never_awaits).run() == total
    assert len(seen) >= total // (4 * 64)
    assert max(gaps(seen)) <= 4 * 64


# -- 6. a fed pipeline interrupted ----------------------------------------------------------------


async def slow_stage(n: int) -> int:
    await trio.sleep(1)
    return n


async def fast_stage(n: int) -> int:
    await trio.lowlevel.checkpoint()
    return n


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("ordered", [True, False])
async def test_an_interrupted_pipeline_never_loses_an_item_whose_feed_returned(
    autojump_clock: trio.testing.MockClock, concurrency: int, ordered: bool
) -> None:
    """Items fed into full buffers, then an interrupt: each fed item is in the results or reported; later feeds fail."""
    fed: list[int] = []
    results: list[int] = []
    refused: list[int] = []
    with trio.fail_after(GUARD):
        async with hybrid.open_pipeline(
            hybrid.Stage(slow_stage, concurrency=concurrency), buffer=1, ordered=ordered
        ) as run:
            async with trio.open_nursery() as nursery:

                async def feeder() -> None:
                    for n in itertools.count():
                        try:
                            await run.feed(n)
                        except hybrid.AgentStopped:
                            refused.append(n)
                            return
                        fed.append(n)

                async def consumer() -> None:
                    async for result in run:
                        results.append(result)

                nursery.start_soon(feeder)
                nursery.start_soon(consumer)
                await trio.sleep(2.5)
                run.address.interrupt()
                with pytest.raises(hybrid.AgentStopped):
                    await run.feed(-1)
            statistics = run.statistics()
            skipped = [record.item for record in run.skipped]
    assert len(refused) == 1
    assert len(fed) >= 3
    missing = [n for n in fed if n not in results and n not in skipped]
    assert len(missing) <= sum(stage.in_flight for stage in statistics), (missing, statistics)
    assert -1 not in results


async def test_feeding_an_idle_pipeline_right_after_its_interrupt_raises_agent_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The interrupt shuts the input at once: a feed() right after it is refused, not accepted and lost (or run)."""
    results: list[int] = []
    with trio.fail_after(GUARD):
        async with hybrid.open_pipeline(hybrid.Stage(fast_stage), buffer=4) as run, trio.open_nursery() as nursery:

            async def consumer() -> None:
                async for result in run:
                    results.append(result)

            nursery.start_soon(consumer)
            for n in range(5):
                await run.feed(n)
            await trio.sleep(1)  # idle: every buffer empty, the pipeline waits for input
            run.address.interrupt()
            with pytest.raises(hybrid.AgentStopped):
                await run.feed(99)
    assert results == [0, 1, 2, 3, 4]


# -- 7. load -------------------------------------------------------------------------------------


async def test_ten_thousand_agents_spawned_and_interrupted_all_end_interrupted_and_leave_no_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """10,000 actors: each ends interrupted, join() returns None for each, and no task is left over."""
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            addresses: list[hybrid.Address[Any]] = [hybrid.spawn(nursery, Server()) for _ in range(10_000)]
            await trio.sleep(1)
            assert all(address.is_alive for address in addresses)
            for address in addresses:
                address.interrupt()
            for address in addresses:
                assert await address.join() is None
    assert {address.statistics().reason for address in addresses} == {StopReason.INTERRUPTED}
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before


class InOrder(Agent):
    def __init__(self) -> None:
        self.expected = 0
        self.out_of_order = 0

    @hybrid.on_event
    async def got(self, event: int) -> None:
        if event != self.expected:
            self.out_of_order += 1
        self.expected = event + 1

    @hybrid.on_request
    async def count(self, request: Count) -> int:
        return self.expected


async def test_a_million_messages_to_one_agent_are_all_handled_in_order() -> None:
    """1,000,000 events sent in bursts: every one handled, in the order sent."""
    agent = InOrder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        for n in range(1_000_000):
            address.send(n)
            if n % 10_000 == 9_999:
                await trio.lowlevel.checkpoint()
        assert await address.request(Count()) == 1_000_000
        address.interrupt()
    assert agent.out_of_order == 0
    assert address.statistics().messages_handled >= 1_000_001


class Busy(Agent):
    """In a state until `gate` is set, then an actor that answers Echo."""

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate
        self.answered: list[int] = []

    def begin(self) -> Next[Self]:
        return Next.do_async(self.wait)

    async def wait(self) -> Next[Self]:
        await self.gate.wait()
        return Next.events()

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        self.answered.append(request.n)
        return request.n


async def test_a_hundred_thousand_requests_that_time_out_leave_no_trace_and_no_late_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests abandoned by their callers are dropped: empty mailbox, bounded memory, no late answer."""
    gate = trio.Event()
    agent = Busy(gate)
    timed_out = 0

    async def ask(n: int) -> int:
        with trio.move_on_after(0.001):
            await address.request(Echo(n))
            return 0
        return 1

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(1)
        for n in range(90_000):
            timed_out += await ask(n)
        # Memory is traced over the last 10,000 only (tracing makes each request several times slower).
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(90_000, 100_000):
                timed_out += await ask(n)
            growth = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert timed_out == 100_000
        assert address.statistics().mailbox_depth == 0
        gc.collect()
        # Abandoned requests are swept out once they are half the queue (and at least 64).
        assert sum(1 for obj in gc.get_objects() if type(obj) is hybrid.RequestCall) <= 64
        assert growth < 512 * 2**10, f"{growth} bytes kept for 10,000 abandoned requests"
        gate.set()
        with trio.fail_after(GUARD):
            assert await address.request(Echo(-1)) == -1
        assert agent.answered == [-1]
        address.interrupt()


# -- 8. cancellation at every await ---------------------------------------------------------------


class Gated(Agent):
    """A one-message mailbox; stays in a state until `gate` is set; each Ping calls `on_ping`."""

    mailbox_capacity = 1

    def __init__(self, gate: trio.Event, on_ping: Callable[[], None] = lambda: None) -> None:
        self.gate = gate
        self.on_ping = on_ping
        self.log: list[str] = []

    def begin(self) -> Next[Self]:
        return Next.do_async(self.wait)

    async def wait(self) -> Next[Self]:
        await self.gate.wait()
        return Next.events()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.log.append(f"ping {event.n}")
        self.on_ping()

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        self.log.append(f"echo {request.n}")
        return request.n


@pytest.mark.parametrize("op", ["request", "send_wait"])
@pytest.mark.parametrize("when", ["while-waiting-for-room", "as-room-appears"])
async def test_a_caller_cancelled_before_its_message_was_queued_sends_nothing(
    autojump_clock: trio.testing.MockClock, op: str, when: str
) -> None:
    """Cancelled while waiting for room in a full mailbox (or as room appears): Cancelled means nothing was sent."""
    scope = trio.CancelScope()
    gate = trio.Event()
    agent = Gated(gate, on_ping=scope.cancel if when == "as-room-appears" else lambda: None)
    returned: list[bool] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
            address.send(Ping(0))  # the mailbox is full

            async def caller() -> None:
                with scope:
                    if op == "request":
                        await address.request(Echo(5))
                    else:
                        await address.send_wait(Ping(5))
                    returned.append(True)

            nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            assert address.statistics().senders_waiting == 1
            if when == "while-waiting-for-room":
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert address.statistics().senders_waiting == 0
            gate.set()  # the agent takes Ping(0): room appears (and, as-room-appears, the caller is cancelled)
            await trio.sleep(1)
            assert await address.request(Echo(6)) == 6
            address.interrupt()
    sent = "echo 5" in agent.log or "ping 5" in agent.log
    if returned:  # the operation completed before the cancellation: it was sent
        assert op == "send_wait" and sent
    else:
        assert scope.cancelled_caught
        assert not sent, agent.log
    assert agent.log[0] == "ping 0" and agent.log[-1] == "echo 6"


async def test_a_request_abandoned_before_the_server_took_it_is_never_handled_and_the_next_gets_its_own_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queued request whose caller gave up is skipped (as a deadline-aware server would); later ones are answered."""
    gate = trio.Event()
    agent = Gated(gate)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
            with trio.move_on_after(1) as scope:
                await address.request(Echo(1))
            assert scope.cancelled_caught
            gate.set()
            assert await address.request(Echo(2)) == 2
            assert await address.request(Echo(3)) == 3
            address.interrupt()
    assert agent.log == ["echo 2", "echo 3"]
    assert address.statistics().messages_dropped == 1


async def test_a_cancelled_join_leaves_the_agent_and_later_joins_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """join() cancelled by a deadline changes nothing: the agent keeps running and a later join gets the output."""

    class Slowly(Agent[str]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            await trio.sleep(10)
            return Next.done("out")

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Slowly())
            for _ in range(3):
                with trio.move_on_after(1):
                    await address.join()
            assert address.is_alive
            assert await address.join() == "out"
    assert address.statistics().reason == StopReason.DONE


# -- 9. names -----------------------------------------------------------------------------------


class Named(Agent):
    pass


async def test_default_names_are_class_name_dash_number_and_unique_among_live_agents() -> None:
    """Spawned, runner-made and run agents all get distinct '{ClassName}-{n}' names."""
    names: list[str] = []

    class Reports(Agent[str]):
        def begin(self) -> Next[Self]:
            return Next.done(self.ctx.address.name)

    async with trio.open_nursery() as nursery:
        addresses = [hybrid.spawn(nursery, Named()) for _ in range(5)]
        servers = [hybrid.spawn(nursery, Server()) for _ in range(3)]
        runner = hybrid.AgentRunner(Named())
        names = [address.name for address in [*addresses, *servers, runner.address]]
        names.append(await Reports().run())
        for address in [*addresses, *servers]:
            address.interrupt()
        runner.discard()
    assert len(set(names)) == len(names)
    for name in names[:5] + names[8:9]:
        assert re.fullmatch(r"Named-\d+", name), name
    for name in names[5:8]:
        assert re.fullmatch(r"Server-\d+", name), name
    assert re.fullmatch(r"Reports-\d+", names[9])


async def test_a_default_name_never_collides_with_an_explicit_name_of_the_same_form() -> None:
    """Names Named-1 .. Named-20 taken explicitly: a default-named Named still gets a free, different name."""
    async with trio.open_nursery() as nursery:
        explicit = [hybrid.spawn(nursery, Named(), name=f"Named-{n}") for n in range(1, 21)]
        default = hybrid.spawn(nursery, Named())
        assert default.name not in {address.name for address in explicit}
        assert re.fullmatch(r"Named-\d+", default.name)
        for address in [*explicit, default]:
            address.interrupt()


async def test_spawning_with_the_name_of_a_live_agent_raises_value_error_and_the_name_is_freed_at_its_end() -> None:
    """A duplicate name is refused (spawn and AgentRunner); once the holder has ended the name can be used again."""
    async with trio.open_nursery() as nursery:
        first = hybrid.spawn(nursery, Named(), name="unique")
        assert first.name == "unique"
        with pytest.raises(ValueError, match="unique"):
            hybrid.spawn(nursery, Named(), name="unique")
        with pytest.raises(ValueError, match="unique"):
            await hybrid.AgentRunner(Named(), name="unique").run()
        assert first.is_alive
        first.interrupt()
        await first.join()
        second = hybrid.spawn(nursery, Named(), name="unique")
        assert second.name == "unique"
        assert second is not first
        second.interrupt()


# -- nursery.start ------------------------------------------------------------------------------


async def test_nursery_start_of_a_runner_returns_its_address_once_begin_has_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """await nursery.start(runner.run) gives the address after begin() ran, before the first state finished."""
    log: list[str] = []

    class Starts(Agent[None]):
        def begin(self) -> Next[Self]:
            log.append("begin")
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            await trio.sleep(10)
            log.append("work done")
            return Next.done()

    runner = hybrid.AgentRunner(Starts())
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(runner.run)
            assert address is runner.address
            assert log == ["begin"]
    assert log == ["begin", "work done"]


# -- 10. instruments ----------------------------------------------------------------------------


Entry = tuple[str, Any, Any]


def journal(entries: list[Entry], raise_in: str | None = None) -> Any:
    """An instrument (built here: the API may be missing) that appends (hook, address, detail) to `entries`."""

    class Journal(hybrid.Instrument):
        def _record(self, hook: str, address: Any, detail: Any) -> None:
            entries.append((hook, address, detail))
            if hook == raise_in:
                raise RuntimeError(f"instrument broke in {hook}")

        def agent_started(self, address: hybrid.Address[Any]) -> None:
            self._record("agent_started", address, None)

        def agent_stopped(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self._record("agent_stopped", address, reason)

        def state_entered(self, address: hybrid.Address[Any], next: Next[Any]) -> None:
            self._record("state_entered", address, next.kind)

        def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
            value = cast(object, seconds)  # checked at run time, whatever the annotation says
            if not (isinstance(value, (int, float)) and value >= 0):
                entries.append(("bad seconds", address, seconds))
            self._record("message_handled", address, message)

        def child_restarted(
            self, supervisor: hybrid.Address[Any], child: hybrid.Address[Any], reason: StopReason
        ) -> None:
            self._record("child_restarted", child, reason)

    return Journal()


class ThreeStates(Agent[str]):
    def __init__(self, log: list[Entry]) -> None:
        self.log = log

    def begin(self) -> Next[Self]:
        self.log.append(("agent", None, "begin"))
        return Next.do_async(self.one)

    async def one(self) -> Next[Self]:
        self.log.append(("agent", None, "one"))
        return Next.do_async(self.two)

    async def two(self) -> Next[Self]:
        self.log.append(("agent", None, "two"))
        return Next.do_sync(self.three)

    def three(self) -> Next[Self]:
        self.log.append(("agent", None, "three"))
        return Next.done("finished")

    async def on_stop(self, reason: StopReason) -> None:
        self.log.append(("agent", None, "on_stop"))


async def test_instrument_hooks_follow_a_three_state_agent_in_order() -> None:
    """agent_started before begin, state_entered before each state, agent_stopped after on_stop, with the reason."""
    entries: list[Entry] = []
    hybrid.add_instrument(journal(entries))
    agent = ThreeStates(entries)
    assert await agent.run() == "finished"
    address = agent.ctx.address
    assert all(who is None or who is address for _, who, _ in entries)
    states = {"do_async", "do_sync", "perform", "events"}
    trace = [
        detail if hook == "agent" else f"{hook} {detail}" if hook == "state_entered" else hook
        for hook, _, detail in entries
        if hook != "state_entered" or detail in states
    ]
    assert trace == [
        "agent_started",
        "begin",
        "state_entered do_async",
        "one",
        "state_entered do_async",
        "two",
        "state_entered do_sync",
        "three",
        "on_stop",
        "agent_stopped",
    ]
    assert entries[-1][2] == StopReason.DONE


class ThreeMessages(Agent[int]):
    def __init__(self, log: list[Entry]) -> None:
        self.log = log

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.log.append(("agent", None, f"ping {event.n}"))
        if event.n == 3:
            self.ctx.do_next(Next.done(3))

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        self.log.append(("agent", None, f"echo {request.n}"))
        return request.n


async def test_instrument_hooks_follow_an_actor_handling_three_messages_in_order() -> None:
    """Each event or request handler is followed by message_handled with that message; then agent_stopped."""
    entries: list[Entry] = []
    hybrid.add_instrument(journal(entries))
    agent = ThreeMessages(entries)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(1))
        assert await address.request(Echo(2)) == 2
        address.send(Ping(3))
        assert await address.join() == 3
    assert all(who is address for hook, who, _ in entries if hook != "agent")
    trace = [
        detail if hook == "agent" else f"message_handled {detail!r}" if hook == "message_handled" else hook
        for hook, _, detail in entries
        if hook != "state_entered"
    ]
    assert trace == [
        "agent_started",
        "ping 1",
        "message_handled Ping(n=1)",
        "echo 2",
        "message_handled Echo(n=2)",
        "ping 3",
        "message_handled Ping(n=3)",
        "agent_stopped",
    ]
    assert [detail for hook, _, detail in entries if hook == "state_entered"][:1] == ["events"]


@pytest.mark.parametrize("raise_in", ["agent_started", "state_entered", "message_handled", "agent_stopped"])
async def test_an_instrument_that_raises_is_removed_and_logged_while_the_agent_and_other_instruments_go_on(
    caplog: pytest.LogCaptureFixture, raise_in: str
) -> None:
    """The broken instrument hears nothing after it raised, the error is logged at ERROR, the rest goes on."""
    broken: list[Entry] = []
    healthy: list[Entry] = []
    hybrid.add_instrument(journal(broken, raise_in=raise_in))
    hybrid.add_instrument(journal(healthy))
    agent = ThreeMessages([])
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        for n in (1, 2, 3):
            address.send(Ping(n))
        assert await address.join() == 3
    assert sum(1 for hook, _, _ in broken if hook == raise_in) == 1
    assert broken[-1][0] == raise_in  # nothing after the raise
    hooks = [hook for hook, _, _ in healthy]
    assert hooks[0] == "agent_started" and hooks[-1] == "agent_stopped"
    assert hooks.count("message_handled") == 3
    records = [r for r in caplog.records if r.name.startswith("hybrid") and r.levelno == logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert str(records[0].exc_info[1]) == f"instrument broke in {raise_in}"


async def test_remove_instrument_stops_the_calls_and_two_instruments_both_see_everything() -> None:
    """Two instruments record identical traces; once one is removed only the other hears of the next agent."""
    first: list[Entry] = []
    second: list[Entry] = []
    one = journal(first)
    two = journal(second)
    hybrid.add_instrument(one)
    hybrid.add_instrument(two)
    assert await ThreeStates([]).run() == "finished"
    assert first == second
    assert [hook for hook, _, _ in first].count("agent_started") == 1
    hybrid.remove_instrument(one)
    calls = len(first)
    assert await ThreeStates([]).run() == "finished"
    assert len(first) == calls
    assert [hook for hook, _, _ in second].count("agent_started") == 2
    hybrid.remove_instrument(two)
    assert await ThreeStates([]).run() == "finished"
    assert [hook for hook, _, _ in second].count("agent_started") == 2


async def test_an_instrument_belongs_to_the_trio_run_it_was_added_in() -> None:
    """An instrument added in another trio run (another thread) hears nothing of this run's agents."""
    elsewhere: list[Entry] = []

    def other_run() -> None:
        async def register_and_run() -> None:
            hybrid.add_instrument(journal(elsewhere))
            await ThreeStates([]).run()

        trio.run(register_and_run)

    await trio.to_thread.run_sync(other_run)
    assert [hook for hook, _, _ in elsewhere].count("agent_started") == 1
    here: list[Entry] = []
    hybrid.add_instrument(journal(here))
    await ThreeStates([]).run()
    assert [hook for hook, _, _ in elsewhere].count("agent_started") == 1
    assert [hook for hook, _, _ in here].count("agent_started") == 1
