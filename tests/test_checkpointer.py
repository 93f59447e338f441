"""`hybrid.Checkpointer`: what the run loop awaits for a durable agent, and when (no database here)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopKind, StopReason


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Total(hybrid.Request[int]):
    pass


class Log:
    """A checkpointer that records what it is told, and can be told to fail at a call."""

    idempotency_key = "log-key"

    def __init__(self, *, first: Any = None, fail_at: str | None = None, error: BaseException | None = None) -> None:
        self.first = first
        self.fail_at = fail_at
        self.error = error or OSError("disk full")
        self.calls: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        if self.fail_at == what:
            raise self.error

    async def start(self, agent: Any) -> Next[Any] | None:
        self.calls.append("start")
        self._maybe_fail("start")
        first: Next[Any] | None = self.first
        return first

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        self.calls.append(f"transition {nxt.state_name or nxt.kind}")
        self._maybe_fail(f"transition {nxt.state_name or nxt.kind}")

    async def handled(self, agent: Any) -> None:
        self.calls.append("handled")
        self._maybe_fail("handled")

    async def ended(self, agent: Any, reason: StopReason, output: Any) -> None:
        self.calls.append(f"ended {reason.kind.value} {output!r}")
        self._maybe_fail("ended")


class Steps(Agent[str]):
    def __init__(self) -> None:
        self.entered: list[str] = []
        self.keys: list[str] = []

    def begin(self) -> Next[Self]:
        return Next.do_async(self.first)

    async def first(self) -> Next[Self]:
        self.entered.append("first")
        self.keys.append(self.ctx.idempotency_key)
        return Next.do_sync(self.second)

    def second(self) -> Next[Self]:
        self.entered.append("second")
        return Next.done("out")


class Counter(Agent[None]):
    def __init__(self) -> None:
        self.total = 0

    def begin(self) -> Next[Self]:
        return Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.total += event.n

    @hybrid.on_request(inline=True)
    async def get(self, request: Total) -> int:
        return self.total


async def test_each_state_is_announced_before_it_runs_and_the_ending_after_on_stop() -> None:
    """start, then transition before each state (the agent's own order), then ended with the output."""
    log = Log()
    agent = Steps()
    reason = await hybrid.AgentRunner(agent, checkpointer=log).run()
    assert reason.kind is StopKind.DONE
    assert log.calls == ["start", "transition first", "transition second", "ended done 'out'"]
    assert agent.keys == ["log-key"]


async def test_a_transition_returned_by_start_replaces_begin() -> None:
    """start() returning a Next resumes from it: begin() is not called, the state is still announced."""
    agent = Steps()
    log = Log(first=Next.do_sync(agent.second))
    reason = await hybrid.AgentRunner(agent, checkpointer=log).run()
    assert reason.kind is StopKind.DONE
    assert agent.entered == ["second"]
    assert log.calls == ["start", "transition second", "ended done 'out'"]


async def test_start_returning_something_else_fails_the_agent_clearly() -> None:
    """A checkpointer whose start() returns neither None nor a Next: InvalidTransition naming it."""
    reason = await hybrid.AgentRunner(Steps(), checkpointer=Log(first="first")).run()
    assert isinstance(reason.error, hybrid.InvalidTransition)
    assert "start() must return a Next or None, got 'first'" in str(reason.error)


async def test_a_failed_save_fails_the_agent_before_the_state_runs() -> None:
    """transition() raising: the state never runs; the agent fails with that error."""
    agent = Steps()
    log = Log(fail_at="transition second")
    reason = await hybrid.AgentRunner(agent, checkpointer=log).run()
    assert isinstance(reason.error, OSError)
    assert agent.entered == ["first"]
    assert log.calls[-1] == "ended failed None"


async def test_an_ending_that_cannot_be_recorded_fails_the_run() -> None:
    """ended() raising turns a finished run into a failed one."""
    reason = await hybrid.AgentRunner(Steps(), checkpointer=Log(fail_at="ended")).run()
    assert reason.kind is StopKind.FAILED
    assert isinstance(reason.error, OSError)


async def test_a_base_exception_from_ended_is_raised_and_the_agent_still_ends() -> None:
    """ended() raising KeyboardInterrupt: it leaves run(); the agent has ended, told once."""
    log = Log(fail_at="ended", error=KeyboardInterrupt())
    runner = hybrid.AgentRunner(Steps(), checkpointer=log)
    with pytest.raises(KeyboardInterrupt):
        await runner.run()
    assert not runner.address.is_alive
    assert log.calls.count("ended done 'out'") == 1


async def test_a_cancelled_run_is_told_its_ending_shielded() -> None:
    """Cancelled from outside: ended() still runs (shielded), with the CANCELLED reason."""
    log = Log()
    with trio.move_on_after(0.01):

        class Slow(Agent[None]):
            def begin(self) -> Next[Self]:
                return Next.do_async(self.wait)

            async def wait(self) -> Next[Self]:
                await trio.sleep_forever()
                raise AssertionError("not reached")  # pragma: no cover

        await hybrid.AgentRunner(Slow(), checkpointer=log).run()
    assert log.calls == ["start", "transition wait", "ended cancelled None"]


async def test_a_checkpointer_failing_while_a_run_is_cancelled_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """ended() raising during a cancellation: logged, and the cancellation goes on."""
    log = Log(fail_at="ended")
    with trio.move_on_after(0.01) as scope:
        await hybrid.AgentRunner(Counter(), checkpointer=log).run()
    assert scope.cancelled_caught
    assert "its checkpointer raised as the agent was cancelled" in caplog.text


async def test_actor_mode_reports_each_handled_message_and_answers_requests_after_it() -> None:
    """Each message is followed by handled(); an inline request is queued, and answered after its save."""
    log = Log()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Counter(), checkpointer=log)
        address.send(Add(2))
        assert await address.request(Total()) == 2
        assert log.calls == ["start", "transition events", "handled", "handled"]
        address.interrupt()
    assert log.calls[-1] == "ended interrupted None"


async def test_a_request_whose_save_fails_gets_the_error_not_the_answer() -> None:
    """handled() raising after a request: the caller gets that error; the agent fails with it."""
    log = Log(fail_at="handled")
    with pytest.RaisesGroup(OSError):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Counter(), checkpointer=log)
            with pytest.raises(OSError, match="disk full"):
                await address.request(Total())


async def test_a_request_cancelled_while_it_is_saved_tells_its_caller() -> None:
    """handled() cancelled after a request: the caller learns the agent stopped before answering."""

    class Hanging(Log):
        async def handled(self, agent: Any) -> None:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Counter(), checkpointer=Hanging())

        async def ask() -> None:
            with pytest.raises(hybrid.AgentStopped):
                await address.request(Total())

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def test_an_interrupted_state_s_next_transition_is_saved_before_the_agent_ends() -> None:
    """Interrupted during a state: the transition it returned is announced (where a resume goes on), not entered."""
    log = Log()
    entered = trio.Event()
    release = trio.Event()

    class TwoSteps(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.one)

        async def one(self) -> Next[Self]:
            entered.set()
            await release.wait()
            return Next.do_async(self.two)

        async def two(self) -> Next[Self]:
            raise AssertionError("not entered")  # pragma: no cover

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, TwoSteps(), checkpointer=log)
        await entered.wait()
        address.interrupt()
        release.set()
    assert log.calls == ["start", "transition one", "transition two", "ended interrupted None"]


async def test_messages_handled_while_finishing_after_a_state_that_ran_are_not_reported() -> None:
    """After Next.done from a state, queued messages are handled but not saved: the ending is what is recorded.

    (Saved under the state that chose the ending, they would make it run again on
    resume under another idempotency key.)
    """
    log = Log()

    class Quick(Agent[int]):
        def __init__(self) -> None:
            self.seen = 0

        def begin(self) -> Next[Self]:
            return Next.do_async(self.finish)

        async def finish(self) -> Next[Self]:
            self.ctx.address.send(Add(1))
            return Next.done(1)

        @hybrid.on_event
        async def add(self, event: Add) -> None:
            self.seen += 1

    agent = Quick()
    await hybrid.AgentRunner(agent, checkpointer=log).run()
    assert agent.seen == 1
    assert log.calls == ["start", "transition finish", "ended done 1"]


async def test_messages_handled_while_an_interrupted_agent_finishes_are_reported_where_nothing_ran() -> None:
    """Interrupted in actor mode, or in a state whose next transition was saved: what it handles then is reported.

    The key stays unfinished: a resumed run goes on from a step that has not run, with
    what those messages changed.
    """

    class Counting(Agent[None]):
        def __init__(self, state: bool) -> None:
            self.state = state
            self.seen = 0

        def begin(self) -> Next[Self]:
            return Next.do_async(self.work) if self.state else Next.events()

        async def work(self) -> Next[Self]:
            self.ctx.address.interrupt()  # the state completes, the agent then ends instead of going on
            self.ctx.address.send(Add(1))
            return Next.do_async(self.after)

        async def after(self) -> Next[Self]:  # never entered in this run
            return Next.done()

        @hybrid.on_event
        async def add(self, event: Add) -> None:
            self.seen += 1

    # (In actor mode the interrupt is itself a message handled, and told as one.)
    for state, first in ((True, ["transition work", "transition after"]), (False, ["transition events", "handled"])):
        log = Log()
        agent = Counting(state)
        runner = hybrid.AgentRunner(agent, checkpointer=log)
        if not state:
            runner.address.interrupt()  # queued first: it ends interrupted, the Add still handled
            runner.address.send(Add(1))
        await runner.run()
        assert agent.seen == 1
        assert log.calls == ["start", *first, "handled", "ended interrupted None"]


async def test_idempotency_key_needs_a_checkpointer_and_a_checkpointer_must_be_one() -> None:
    """ctx.idempotency_key of a plain agent: LifecycleError; checkpointer=object(): TypeError naming it."""
    keys: list[str] = []

    class Plain(Agent[None]):
        def begin(self) -> Next[Self]:
            with pytest.raises(hybrid.LifecycleError, match="is not durable"):
                keys.append(self.ctx.idempotency_key)
            return Next.done()

    await Plain().run()
    assert keys == []
    with pytest.raises(TypeError, match=r"checkpointer must implement hybrid\.Checkpointer"):
        hybrid.AgentRunner(Plain(), checkpointer=object())  # type: ignore[arg-type]


def test_the_log_checkpointer_is_a_checkpointer() -> None:
    """The protocol is checked by its methods at run time, as start_runtime does."""
    assert isinstance(Log(), hybrid.Checkpointer)
    assert not isinstance(object(), hybrid.Checkpointer)


async def test_a_supervised_child_gets_its_checkpointer_on_every_run() -> None:
    """A supervisor gives the same checkpointer to each run of a restarted child: start() once per run."""
    log = Log()
    runs: list[int] = []

    class Flaky(Agent[None]):
        def begin(self) -> Next[Self]:
            runs.append(len(runs))
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            if len(runs) < 2:
                raise ValueError("once")
            return Next.done()

    class Boss(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Flaky, restart=hybrid.Restart.TRANSIENT, checkpointer=log)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            if not reason.failed:
                self.ctx.address.interrupt()

    await Boss().run()
    assert runs == [0, 1]
    assert log.calls.count("start") == 2
    assert log.calls[-1] == "ended done None"
