"""Lifecycle: interrupt, stop, shutdown, on_stop, cancellation, failure propagation."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopKind, StopReason
from tests.messages import Echo, Ping


class Recorder(Agent[int | None]):
    """Records hooks and handled messages in `log`."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.reason: StopReason | None = None

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.log.append(f"ping {event.n}")

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        self.log.append(f"echo {request.n}")
        return request.n

    async def on_interrupt(self) -> None:
        self.log.append("on_interrupt")

    async def on_stop(self, reason: StopReason) -> None:
        self.log.append(f"on_stop {reason}")
        self.reason = reason


async def test_interrupt_in_actor_mode_is_handled_in_order_after_queued_messages() -> None:
    agent = Recorder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(1))
        address.interrupt()
        address.send(Ping(2))  # the mailbox is open until the interrupt is handled
    assert agent.log[:3] == ["ping 1", "on_interrupt", "ping 2"]


async def test_messages_queued_behind_an_interrupt_are_still_handled_before_the_end() -> None:
    agent = Recorder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(1))
        address.interrupt()
        address.send(Ping(2))
        assert await address.join() is None
    assert agent.log == ["ping 1", "on_interrupt", "ping 2", "on_stop interrupted"]
    assert agent.reason == StopReason(StopKind.INTERRUPTED)


async def test_on_interrupt_can_schedule_the_next_transition() -> None:
    class Graceful(Recorder):
        async def on_interrupt(self) -> None:
            self.log.append("on_interrupt")
            self.ctx.do_next(Next.do_async(self.cleanup))

        async def cleanup(self) -> Next[Self]:
            self.log.append("cleanup")
            return Next.done(99)

    agent = Graceful()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.interrupt()
        assert await address.join() == 99
    assert agent.log == ["on_interrupt", "cleanup", "on_stop done"]


class LongState(Recorder):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        self.log.append("work start")
        try:
            await trio.sleep(self.seconds)
        finally:
            self.log.append("work end")
        return Next.do_async(self.after)

    async def after(self) -> Next[Self]:
        self.log.append("after")  # pragma: no cover - must not be reached when interrupted
        return Next.done(1)  # pragma: no cover


async def test_interrupt_in_a_state_lets_the_step_finish_then_ends_instead_of_the_next_transition(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = LongState(10)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(1)
        address.interrupt()
        start = trio.current_time()
        assert await address.join() is None
        assert trio.current_time() - start == pytest.approx(9)  # the step ran to its end
    assert agent.log == ["work start", "work end", "on_interrupt", "on_stop interrupted"]


async def test_a_second_interrupt_cancels_the_running_step_and_the_agent_ends_interrupted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = LongState(3600)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        await trio.sleep(1)
        address.interrupt()
        await trio.sleep(1)
        address.interrupt()
        start = trio.current_time()
        assert await address.join() is None
        assert trio.current_time() - start < 1
    assert agent.log == ["work start", "work end", "on_interrupt", "on_stop interrupted"]
    assert agent.reason is not None and agent.reason.interrupted


async def test_a_second_interrupt_cuts_a_slow_handler_short() -> None:
    class SlowHandler(Recorder):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.log.append("slow start")
            await trio.sleep_forever()

    agent = SlowHandler()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping())
        address.send(Ping())
        call = address.request(Echo(1))

        async def ask() -> None:
            with pytest.raises(hybrid.AgentStopped):
                await call

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
        address.interrupt()
        assert await address.join() is None
    assert agent.log == ["slow start", "on_interrupt", "on_stop interrupted"]
    assert address.statistics().messages_dropped == 2


async def test_an_interrupt_before_the_first_transition_is_queued_when_begin_returns_events() -> None:
    agent = Recorder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(1))
        address.interrupt()
    assert agent.log == ["ping 1", "on_interrupt", "on_stop interrupted"]


async def test_an_interrupt_before_the_first_transition_ends_the_agent_right_after_begin() -> None:
    agent = LongState(5)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.interrupt()
    assert agent.log == ["on_interrupt", "on_stop interrupted"]
    assert address.statistics().transitions == 0


async def test_interrupting_twice_before_the_start_still_ends_as_interrupted() -> None:
    agent = LongState(5)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.interrupt()
        address.interrupt()
    assert agent.reason is not None and agent.reason.interrupted
    assert "work start" not in agent.log


async def test_next_interrupt_runs_on_interrupt_then_finishes() -> None:
    class SelfInterrupt(Recorder):
        def begin(self) -> Next[Self]:
            return Next.interrupt()

    agent = SelfInterrupt()
    assert await agent.run() is None
    assert agent.log == ["on_interrupt", "on_stop interrupted"]


async def test_done_closes_the_mailbox_and_handles_messages_already_queued() -> None:
    class Finisher(Recorder):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.log.append(f"ping {event.n}")
            if event.n == 1:
                self.ctx.do_next(Next.done(7))
            elif event.n == 2:
                with pytest.raises(hybrid.AgentStopped):
                    self.ctx.address.send(Ping(9))
                with pytest.raises(hybrid.LifecycleError, match="finishing"):
                    self.ctx.do_next(Next.done(8))

    agent = Finisher()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(1))
        address.send(Ping(2))
        call = address.request(Echo(3))
        assert await call == 3  # queued before done: answered
        assert await address.join() == 7
    assert agent.log == ["ping 1", "ping 2", "echo 3", "on_stop done"]


async def test_stop_drops_queued_events_and_fails_queued_requests() -> None:
    gate = trio.Event()

    class Stopper(Recorder):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.wait_for_gate)  # the mailbox fills meanwhile

        async def wait_for_gate(self) -> Next[Self]:
            await gate.wait()
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.log.append(f"ping {event.n}")
            self.ctx.do_next(Next.stop())

    agent = Stopper()
    failures: list[str] = []
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(1))
        address.send(Ping(2))

        async def ask() -> None:
            try:
                await address.request(Echo(3))
            except hybrid.AgentStopped:
                failures.append("request told")

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert address.statistics().mailbox_depth == 3
        gate.set()
        assert await address.join() is None
    assert agent.log == ["ping 1", "on_stop stopped"]
    assert failures == ["request told"]
    assert address.statistics().messages_dropped == 2


async def test_ctx_shutdown_finishes_after_draining_and_ctx_stop_ends_at_once() -> None:
    class Shutdown(Recorder):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.log.append(f"ping {event.n}")
            if event.n == 1:
                self.ctx.shutdown()
            if event.n == 2:
                self.ctx.stop()

    agent = Shutdown()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        for n in (1, 2, 3):
            address.send(Ping(n))
    assert agent.log == ["ping 1", "ping 2", "on_stop stopped"]


async def test_ctx_stop_from_a_state_ends_the_agent_after_the_step() -> None:
    class StopsInState(Recorder):
        def begin(self) -> Next[Self]:
            return Next.do_sync(self.work)

        def work(self) -> Next[Self]:
            self.ctx.stop()  # from a worker thread
            self.log.append("work")
            return Next.done(1)

    agent = StopsInState()
    assert await agent.run() is None
    assert agent.log == ["work", "on_stop stopped"]


async def test_do_next_is_refused_where_a_transition_is_returned_instead() -> None:
    class Misuse(Agent[None]):
        def begin(self) -> Next[Self]:
            with pytest.raises(hybrid.LifecycleError, match="begin"):
                self.ctx.do_next(Next.done())
            return Next.do_async(self.state)

        async def state(self) -> Next[Self]:
            with pytest.raises(hybrid.LifecycleError, match="a state returns its next transition"):
                self.ctx.do_next(Next.done())
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            with pytest.raises(hybrid.InvalidTransition, match="do_next needs a Next"):
                self.ctx.do_next("done")  # type: ignore[arg-type]
            self.ctx.do_next(Next.done())
            with pytest.raises(hybrid.LifecycleError, match="already scheduled"):
                self.ctx.do_next(Next.stop())

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Misuse())
        address.send(Ping())
        await address.join()


async def test_on_stop_always_runs_last_with_the_reason() -> None:
    class Fails(Recorder):
        def begin(self) -> Next[Self]:
            return Next.fail(OSError("disk"))

    agent = Fails()
    with pytest.raises(OSError, match="disk"):
        await agent.run()
    assert agent.log == ["on_stop failed: OSError('disk')"]
    assert agent.reason is not None and agent.reason.failed
    assert isinstance(agent.reason.error, OSError)


async def test_an_exception_inside_on_stop_fails_the_agent() -> None:
    class BadStop(Agent[int]):
        def begin(self) -> Next[Self]:
            return Next.done(5)

        async def on_stop(self, reason: StopReason) -> None:
            raise RuntimeError("cleanup failed")

    with pytest.raises(RuntimeError, match="cleanup failed"):
        await BadStop().run()
    addresses: list[hybrid.Address[BadStop]] = []
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="cleanup failed")):
        async with trio.open_nursery() as nursery:
            addresses.append(hybrid.spawn(nursery, BadStop()))
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await addresses[0].join()
    reason = addresses[0].statistics().reason
    assert reason is not None and reason.failed


async def test_cancellation_from_outside_propagates_and_on_stop_runs_shielded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped: list[StopReason] = []

    class Forever(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.wait)

        async def wait(self) -> Next[Self]:
            await trio.sleep_forever()

        async def on_stop(self, reason: StopReason) -> None:
            await trio.sleep(1)  # shielded: completes despite the cancellation
            stopped.append(reason)

    with trio.move_on_after(5) as scope:
        await Forever().run()
    assert scope.cancelled_caught
    assert [r.kind for r in stopped] == [StopKind.CANCELLED]


async def test_cancelled_is_never_swallowed_or_wrapped_by_run() -> None:
    class Forever(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.wait)

        async def wait(self) -> Next[Self]:
            await trio.sleep_forever()

    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await Forever().run()
        except trio.Cancelled as cancelled:
            caught.append(cancelled)
            raise
    assert len(caught) == 1
    assert scope.cancelled_caught


async def test_a_cancelled_spawned_agent_fails_its_pending_requests_and_join_returns_none() -> None:
    agent = Recorder()
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as inner:
            address = hybrid.spawn(inner, agent)
            await address.request(Echo(1))
            inner.cancel_scope.cancel()
        assert await address.join() is None
    assert agent.reason is not None and agent.reason.cancelled
    outer.cancel_scope.cancel()


async def test_a_spawned_agent_that_fails_raises_out_of_its_nursery_and_from_join() -> None:
    class Crashes(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.crash)

        async def crash(self) -> Next[Self]:
            raise ValueError("crashed")

    sibling_cancelled: list[bool] = []

    async def sibling() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            sibling_cancelled.append(True)
            raise

    addresses: list[hybrid.Address[Crashes]] = []
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="crashed")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sibling)
            addresses.append(hybrid.spawn(nursery, Crashes()))
    assert sibling_cancelled == [True]
    with pytest.raises(ValueError, match="crashed"):
        await addresses[0].join()


async def test_an_agent_instance_runs_only_once() -> None:
    agent = Recorder()
    with pytest.raises(hybrid.LifecycleError, match="exists once the agent runs"):
        agent.ctx  # noqa: B018
    async with trio.open_nursery() as nursery:
        hybrid.spawn(nursery, agent).interrupt()
    with pytest.raises(hybrid.LifecycleError, match="already started"):
        await agent.run()
    with pytest.RaisesGroup(pytest.RaisesExc(TypeError, match="needs an Agent instance")):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, "agent")  # type: ignore[type-var]


async def test_join_waits_for_the_output_and_is_repeatable() -> None:
    class Slow(Agent[str]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            await trio.sleep(0.01)
            return Next.done("out")

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Slow())
        results: list[str] = []

        async def joiner() -> None:
            results.append(await address.join())

        nursery.start_soon(joiner)
        nursery.start_soon(joiner)
    assert results == ["out", "out"]
    assert await address.join() == "out"


async def test_interrupted_is_false_until_the_agent_is_interrupted_and_refused_outside_agents() -> None:
    seen: list[bool] = []

    class Polls(Agent[None]):
        def begin(self) -> Next[Self]:
            seen.append(hybrid.interrupted())
            return Next.do_sync(self.spin)

        def spin(self) -> Next[Self]:
            seen.append(hybrid.interrupted())
            trio.from_thread.run_sync(self.ctx.address.interrupt)
            seen.append(hybrid.interrupted())
            return Next.done()

    await Polls().run()
    assert seen == [False, False, True]


async def test_a_failure_returned_by_an_interrupted_step_is_not_lost() -> None:
    class FailsAfterInterrupt(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.step)

        async def step(self) -> Next[Self]:
            self.ctx.address.interrupt()
            return Next.fail(OSError("kept"))

    with pytest.raises(OSError, match="kept"):
        await FailsAfterInterrupt().run()
    with pytest.raises(hybrid.LifecycleError, match="inside an agent"):
        hybrid.interrupted()


async def test_interrupted_turns_true_in_a_sync_state_when_the_agent_is_interrupted() -> None:
    started = threading.Event()
    saw: list[bool] = []

    class Crunch(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_sync(self.crunch)

        def crunch(self) -> Next[Self]:
            started.set()
            while not hybrid.interrupted():
                threading.Event().wait(0.001)
            saw.append(True)
            return Next.done()

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Crunch())
        await trio.to_thread.run_sync(started.wait)
        address.interrupt()
    assert saw == [True]
    assert address.statistics().reason == StopReason(StopKind.INTERRUPTED)


def test_stop_reasons_compare_with_their_constants_and_kinds_with_strings() -> None:
    assert StopReason(StopKind.DONE) == StopReason.DONE
    assert StopReason.INTERRUPTED.interrupted
    assert StopReason.STOPPED.kind == "stopped"
    assert StopReason.CANCELLED != StopReason.DONE
    assert StopReason(StopKind.FAILED, ValueError()).kind == "failed"


def test_stop_reason_properties_and_text() -> None:
    failed = StopReason(StopKind.FAILED, ValueError("x"))
    assert failed.failed and not failed.done
    assert str(failed) == "failed: ValueError('x')"
    assert StopReason(StopKind.DONE).done
    assert StopReason(StopKind.STOPPED).stopped
    assert StopReason(StopKind.CANCELLED).cancelled
    assert str(StopReason(StopKind.INTERRUPTED)) == "interrupted"


async def test_shutdown_while_finishing_keeps_the_output_and_the_queued_messages() -> None:
    class Finisher(Recorder):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.log.append(f"ping {event.n}")
            if event.n == 1:
                self.ctx.do_next(Next.done(5))
            else:
                self.ctx.shutdown()  # already finishing: nothing changes

    agent = Finisher()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        for n in (1, 2, 3):
            address.send(Ping(n))
        assert await address.join() == 5
    assert agent.log == ["ping 1", "ping 2", "ping 3", "on_stop done"]


async def test_an_agent_cancelled_while_finishing_has_no_output() -> None:
    class SlowDrain(Recorder):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            if event.n == 1:
                self.ctx.do_next(Next.done(5))
            else:
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as inner:
            address = hybrid.spawn(inner, SlowDrain())
            address.send(Ping(1))
            address.send(Ping(2))
            await trio.testing.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()
        assert await address.join() is None
        reason = address.statistics().reason
        assert reason is not None and reason.cancelled
        nursery.cancel_scope.cancel()


async def test_a_failure_is_never_replaced_by_a_pending_shutdown_or_stop() -> None:
    class FailsAfterShutdown(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.step)

        async def step(self) -> Next[Self]:
            self.ctx.shutdown()
            return Next.fail(ValueError("kept"))

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.do_next(Next.fail(KeyError("also kept")))
            self.ctx.stop()

    with pytest.raises(ValueError, match="kept"):
        await FailsAfterShutdown().run()

    class HandlerFails(FailsAfterShutdown):
        def begin(self) -> Next[Self]:
            self.ctx.address.send(Ping())
            return Next.events()

    with pytest.raises(KeyError, match="also kept"):
        await HandlerFails().run()


async def test_an_error_in_on_stop_keeps_the_failure_it_replaces_as_its_context() -> None:
    class Both(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.fail(ValueError("first"))

        async def on_stop(self, reason: StopReason) -> None:
            raise RuntimeError("second")

    with pytest.raises(RuntimeError, match="second") as caught:
        await Both().run()
    assert isinstance(caught.value.__context__, ValueError)


async def test_an_interrupt_cuts_a_retry_backoff_short_and_the_last_error_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries: list[float] = []

    class Retrying(Agent[str]):
        def begin(self) -> Next[Self]:
            policy = hybrid.RetryPolicy(attempts=5, initial=100)
            return Next.do_async(self.fetch).retry(policy).fallback(lambda error: Next.done(f"fallback: {error}"))

        async def fetch(self) -> Next[Self]:
            tries.append(trio.current_time())
            raise ConnectionError("down")

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Retrying())
        await trio.sleep(1)
        address.interrupt()
        start = trio.current_time()
        assert await address.join() is None  # interrupted: the fallback's done() is not taken
        assert trio.current_time() - start < 1
    assert len(tries) == 1
