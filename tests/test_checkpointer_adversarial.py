"""`hybrid.Checkpointer` under attack: hostile, slow and failing implementations, and the exact calls the core makes.

The core must behave as `hybrid/_checkpointer.py` documents for any implementation:
`start` once per run, `transition` before each state (or actor mode), `handled` after
each message handled in actor mode (a request answered only once it returned),
`ended` once for every ending (shielded when cancelled), any exception failing the
agent, and never two calls at once for one agent. Three of these tests found a bug
each (an `ended` failure hiding the agent's own, `hybrid.start` of a run ended before
it started, a BaseException from a cancelled run's `ended` wrapped in a group), fixed
since; all are kept as regression tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopKind, StopReason


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Total(hybrid.Request[int]):
    pass


@attrs.frozen
class Finish(hybrid.Request[int]):
    """Answered, then the handler schedules a transition chosen by the agent."""


class Boom(BaseException):
    """A BaseException of the application's own (not an Exception, not a cancellation)."""


Behaviour = Callable[[Any], Awaitable[None]]


class Rec:
    """Records each call as a label; `behave[label]` runs inside the call (to raise, sleep, meddle).

    It also records any call that starts while another call of its is still running
    (`overlaps`): the core must never call one checkpointer concurrently for one agent.
    """

    idempotency_key = "adversarial"

    def __init__(self, *, first: object = None, behave: dict[str, Behaviour] | None = None) -> None:
        self.first = first
        self.behave = behave or {}
        self.calls: list[str] = []
        self.finished: list[str] = []
        self.inside: str | None = None
        self.overlaps: list[tuple[str, str]] = []
        self.endings: list[StopReason] = []

    async def _call(self, label: str, agent: Any) -> None:
        if self.inside is not None:
            self.overlaps.append((self.inside, label))
        self.inside = label
        self.calls.append(label)
        try:
            behaviour = self.behave.get(label)
            if behaviour is not None:
                await behaviour(agent)
            self.finished.append(label)
        finally:
            self.inside = None

    async def start(self, agent: Any) -> Next[Any] | None:
        await self._call("start", agent)
        first: Next[Any] | None = self.first  # type: ignore[assignment]
        return first

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        await self._call(f"transition {nxt.state_name or nxt.kind}", agent)

    async def handled(self, agent: Any) -> None:
        await self._call("handled", agent)

    async def ended(self, agent: Any, reason: StopReason, output: Any) -> None:
        self.endings.append(reason)
        await self._call(f"ended {reason.kind.value} {output!r}", agent)


def raising(error: BaseException) -> Behaviour:
    async def behaviour(agent: Any) -> None:
        raise error

    return behaviour


def sleeping(entered: trio.Event | None = None) -> Behaviour:
    async def behaviour(agent: Any) -> None:
        if entered is not None:
            entered.set()
        await trio.sleep_forever()

    return behaviour


def pausing(entered: trio.Event, release: trio.Event) -> Behaviour:
    async def behaviour(agent: Any) -> None:
        entered.set()
        await release.wait()

    return behaviour


class Machine(Agent[str]):
    """A state machine: one, then two (sync), then done("out"); records hooks."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def begin(self) -> Next[Self]:
        self.log.append("begin")
        return Next.do_async(self.one)

    async def one(self) -> Next[Self]:
        self.log.append("one")
        return Next.do_sync(self.two)

    def two(self) -> Next[Self]:
        self.log.append("two")
        return Next.done("out")

    async def on_interrupt(self) -> None:
        self.log.append("on_interrupt")

    async def on_stop(self, reason: StopReason) -> None:
        self.log.append(f"on_stop {reason.kind.value}")


class Actor(Agent[int]):
    """Actor mode: Add events, Total (queued) and Finish requests; records hooks."""

    def __init__(self, finish: Next[Any] | None = None) -> None:
        self.total = 0
        self.finish = finish
        self.log: list[str] = []

    def begin(self) -> Next[Self]:
        self.log.append("begin")
        return Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.total += event.n

    @hybrid.on_request(inline=True)
    async def get(self, request: Total) -> int:
        return self.total

    @hybrid.on_request
    async def end(self, request: Finish) -> int:
        assert self.finish is not None
        self.ctx.do_next(self.finish)
        return self.total

    async def after(self) -> Next[Self]:
        self.log.append("after")
        return Next.done(self.total)

    async def on_interrupt(self) -> None:
        self.log.append("on_interrupt")

    async def on_stop(self, reason: StopReason) -> None:
        self.log.append(f"on_stop {reason.kind.value}")


def clean(rec: Rec) -> Rec:
    """No overlapping calls, and exactly one ending told."""
    assert rec.overlaps == []
    assert len(rec.endings) == 1, rec.calls
    return rec


# -- order and counts ---------------------------------------------------------------


async def test_a_state_machine_is_told_start_each_state_then_the_ending_in_order() -> None:
    """start, transition one, transition two, ended done: nothing else, nothing twice, hooks in between."""
    rec = Rec()
    agent = Machine()
    reason = await hybrid.AgentRunner(agent, checkpointer=rec).run()
    assert reason == StopReason.DONE
    assert clean(rec).calls == ["start", "transition one", "transition two", "ended done 'out'"]
    assert agent.log == ["begin", "one", "two", "on_stop done"]


async def test_actor_mode_events_requests_and_responses_are_each_told_once() -> None:
    """An event, an inline request (queued), a forwarded request's response: one handled() each, in order."""
    rec = Rec()
    answers: list[int] = []

    class Asker(Agent[None]):
        def __init__(self, server: hybrid.Address[Actor]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            self.server.request(Total()).forward_to(self.ctx)
            return Next.events()

        @hybrid.on_response
        async def got(self, request: Total, response: Any) -> None:
            answers.append(response.unwrap())
            self.ctx.stop()

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Actor())
        server.send(Add(5))
        asker = hybrid.spawn(nursery, Asker(server), checkpointer=rec)
        await asker.join()
        server.interrupt()
    assert answers == [5]
    assert clean(rec).calls == ["start", "transition events", "handled", "ended stopped None"]


async def test_a_request_is_answered_only_after_handled_returned() -> None:
    """The caller of a request is still waiting while handled() runs; it gets the answer once it returned."""
    entered, release = trio.Event(), trio.Event()
    rec = Rec(behave={"handled": pausing(entered, release)})
    got: list[int] = []
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Actor(), checkpointer=rec)

        async def ask() -> None:
            got.append(await address.request(Total()))

        nursery.start_soon(ask)
        await entered.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        rec.behave.clear()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [0]
        address.interrupt()
    assert clean(rec).calls == ["start", "transition events", "handled", "handled", "ended interrupted None"]


@pytest.mark.parametrize(
    ("finish", "expected", "kind"),
    [
        (Next.done(7), ["handled", "handled"], StopKind.DONE),
        (Next.stop(), [], StopKind.STOPPED),
        (Next.fail(ValueError("from a handler")), [], StopKind.FAILED),
    ],
)
async def test_an_ending_scheduled_by_a_handler_is_told_with_the_messages_it_still_handles(
    finish: Next[Any], expected: list[str], kind: StopKind
) -> None:
    """Next.done/stop/fail from a handler: done handles (and saves) what is queued; stop and fail drop it."""
    rec = Rec()
    runner = hybrid.AgentRunner(Actor(finish), checkpointer=rec)
    runner.address.send(Add(7))
    results: dict[str, object] = {}

    async def ask() -> None:
        results["finish"] = await runner.address.request(Finish())

    async def ask_later() -> None:
        try:
            results["later"] = await runner.address.request(Total())
        except hybrid.AgentStopped:
            results["later"] = "stopped"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ask_later)
        await trio.testing.wait_all_tasks_blocked()
        reason = await runner.run()
    assert reason.kind is kind
    # The event, the Finish request, then what finishing handles.
    assert clean(rec).calls[:4] == ["start", "transition events", "handled", "handled"]
    assert rec.calls[4:-1] == expected[1:]
    assert rec.calls[-1].startswith(f"ended {kind.value}")
    assert results == {"finish": 7, "later": 7 if kind is StopKind.DONE else "stopped"}


@pytest.mark.parametrize(
    ("ending", "label"),
    [
        (Next.done(3), "ended done 3"),
        (Next.stop(), "ended stopped None"),
        (Next.fail(ValueError("from a state")), "ended failed None"),
        (Next.interrupt(), "ended interrupted None"),
    ],
)
async def test_an_ending_returned_by_a_state_is_told_once_and_never_as_a_transition(
    ending: Next[Any], label: str
) -> None:
    """A state returning done/stop/fail/interrupt: no transition() for the ending, then ended once."""
    rec = Rec()

    class Ends(Agent[int]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            return ending

    await hybrid.AgentRunner(Ends(), checkpointer=rec).run()
    assert clean(rec).calls == ["start", "transition work", label]


async def test_a_transition_scheduled_by_on_interrupt_is_told_before_it_runs() -> None:
    """Interrupted in actor mode, on_interrupt schedules a state: transition() for it, then it runs."""
    rec = Rec()

    class Cleans(Actor):
        async def on_interrupt(self) -> None:
            self.ctx.do_next(Next.do_async(self.after))

    runner = hybrid.AgentRunner(Cleans(), checkpointer=rec)
    runner.address.interrupt()
    reason = await runner.run()
    assert reason == StopReason.DONE
    assert clean(rec).calls == ["start", "transition events", "handled", "transition after", "ended done 0"]


# -- start(): garbage and endings ---------------------------------------------------------


@pytest.mark.parametrize("garbage", [42, "one", Next, object(), [Next.done()]])
async def test_start_returning_garbage_fails_the_agent_before_begin_and_is_told(garbage: object) -> None:
    """Anything but a Next or None: InvalidTransition; begin() never runs; on_stop and ended(failed) still do."""
    rec = Rec(first=garbage)
    agent = Machine()
    reason = await hybrid.AgentRunner(agent, checkpointer=rec).run()
    assert isinstance(reason.error, hybrid.InvalidTransition)
    assert agent.log == ["on_stop failed"]
    assert clean(rec).calls == ["start", "ended failed None"]


@pytest.mark.parametrize(
    ("first", "calls", "kind"),
    [
        (Next.done(9), ["start", "ended done 9"], StopKind.DONE),
        (Next.stop(), ["start", "ended stopped None"], StopKind.STOPPED),
        (Next.fail(KeyError("saved failure")), ["start", "ended failed None"], StopKind.FAILED),
        (Next.events(), ["start", "transition events", "handled", "ended interrupted None"], StopKind.INTERRUPTED),
        (Next.interrupt(), ["start", "ended interrupted None"], StopKind.INTERRUPTED),
    ],
)
async def test_start_returning_an_ending_or_actor_mode_is_taken_as_begin_s_would_be(
    first: Next[Any], calls: list[str], kind: StopKind
) -> None:
    """start() returning done/stop/fail/events/interrupt: begin() never runs, the transition is taken as given."""
    rec = Rec(first=first)
    agent = Actor()
    runner = hybrid.AgentRunner(agent, checkpointer=rec)
    if first.kind == "events":
        runner.address.interrupt()
    reason = await runner.run()
    assert reason.kind is kind
    assert "begin" not in agent.log
    assert clean(rec).calls == calls
    if first.kind == "interrupt":
        assert agent.log == ["on_interrupt", "on_stop interrupted"]


async def test_start_resuming_a_state_of_another_agent_runs_it_there() -> None:
    """A Next bound to another instance's method: the core runs what it is given (the checkpointer's business).

    What it must not do is hang or skip the bookkeeping: the transition is told and
    the run ends as the foreign state says.
    """
    other = Machine()
    rec = Rec(first=Next.do_sync(other.two))
    agent = Machine()
    reason = await hybrid.AgentRunner(agent, checkpointer=rec).run()
    assert reason == StopReason.DONE
    assert other.log == ["two"]
    assert agent.log == ["on_stop done"]
    assert clean(rec).calls == ["start", "transition two", "ended done 'out'"]


# -- each method raising -----------------------------------------------------------------


@pytest.mark.parametrize("label", ["start", "transition one", "transition two"])
async def test_an_exception_from_start_or_transition_fails_the_agent_and_the_state_never_runs(label: str) -> None:
    """start/transition raising: the agent fails with that error, nothing after it runs, ended(failed) is told."""
    error = OSError(f"{label} failed")
    rec = Rec(behave={label: raising(error)})
    agent = Machine()
    runner = hybrid.AgentRunner(agent, checkpointer=rec)
    reason = await runner.run()
    assert reason.error is error
    assert clean(rec).calls[-1] == "ended failed None"
    assert rec.calls[-2] == label
    assert rec.endings == [StopReason(StopKind.FAILED, error)]
    ran = {"start": [], "transition one": ["begin"], "transition two": ["begin", "one"]}[label]
    assert agent.log == [*ran, "on_stop failed"]
    with pytest.raises(OSError, match="failed"):
        await runner.address.join()


@pytest.mark.parametrize("label", ["start", "transition one", "transition two", "handled"])
async def test_a_base_exception_from_a_checkpointer_method_leaves_run_and_the_agent_ends_told(label: str) -> None:
    """A BaseException of the application's: raised out of run(); on_stop ran; ended(failed, it) told once."""
    error = Boom(label)
    rec = Rec(behave={label: raising(error)})
    agent: Machine | Actor = Actor() if label == "handled" else Machine()
    runner = hybrid.AgentRunner(agent, checkpointer=rec)
    if label == "handled":
        runner.address.send(Add(1))
    with pytest.raises(Boom):
        await runner.run()
    assert not runner.address.is_alive
    assert rec.endings == [StopReason(StopKind.FAILED, error)]
    assert clean(rec).calls[-2:] == [label, "ended failed None"]
    assert agent.log[-1] == "on_stop failed"
    with pytest.raises(Boom):
        await runner.address.join()


async def test_a_keyboard_interrupt_from_transition_leaves_run_unchanged() -> None:
    """KeyboardInterrupt from transition(): the very exception leaves run(), the agent ended failed with it."""
    error = KeyboardInterrupt()
    rec = Rec(behave={"transition two": raising(error)})
    runner = hybrid.AgentRunner(Machine(), checkpointer=rec)
    with pytest.raises(KeyboardInterrupt) as caught:
        await runner.run()
    assert caught.value is error
    assert clean(rec).endings == [StopReason(StopKind.FAILED, error)]


async def test_handled_raising_while_a_request_waits_gives_the_caller_the_error() -> None:
    """handled() raising after a request: the caller gets that error (never hangs); the agent fails with it."""
    error = OSError("save failed")
    rec = Rec(behave={"handled": raising(error)})
    runner = hybrid.AgentRunner(Actor(), checkpointer=rec)
    caught: list[BaseException] = []

    async def ask() -> None:
        try:
            await runner.address.request(Total())
        except Exception as exc:
            caught.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        reason = await runner.run()
    assert caught == [error]
    assert reason.error is error
    assert clean(rec).calls == ["start", "transition events", "handled", "ended failed None"]


async def test_handled_raising_a_base_exception_while_a_request_waits_tells_the_caller_the_agent_stopped() -> None:
    """handled() raising a BaseException after a request: the caller gets AgentStopped, never hangs."""
    rec = Rec(behave={"handled": raising(Boom("save"))})
    runner = hybrid.AgentRunner(Actor(), checkpointer=rec)
    caught: list[BaseException] = []

    async def ask() -> None:
        try:
            await runner.address.request(Total())
        except hybrid.AgentStopped as exc:
            caught.append(exc)

    with pytest.RaisesGroup(Boom):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            await runner.run()
    assert len(caught) == 1
    assert clean(rec).calls[-1] == "ended failed None"


async def test_handled_raising_for_a_request_handled_while_finishing_gives_the_caller_the_error() -> None:
    """Interrupted in actor mode, a request queued behind the interrupt is handled while finishing and saved:
    handled() raising then reaches that caller too."""
    error = OSError("save failed while finishing")
    seen: list[str] = []

    async def fail_second(agent: Any) -> None:
        seen.append("handled")
        if len(seen) == 2:
            raise error

    rec = Rec(behave={"handled": fail_second})
    runner = hybrid.AgentRunner(Actor(), checkpointer=rec)
    runner.address.interrupt()
    caught: list[BaseException] = []

    async def ask() -> None:
        try:
            await runner.address.request(Total())
        except Exception as exc:
            caught.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        reason = await runner.run()
    assert caught == [error]
    assert reason.error is error
    assert clean(rec).calls == ["start", "transition events", "handled", "handled", "ended failed None"]


# -- ended() raising, each ending --------------------------------------------------------


class Ending(Agent[int]):
    """Ends as told: done, failed, interrupted (by its own address), stopped."""

    failure: ClassVar[Exception] = ValueError("the agent's own failure")

    def __init__(self, how: str) -> None:
        self.how = how

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        if self.how == "done":
            return Next.done(1)
        if self.how == "failed":
            raise self.failure
        if self.how == "interrupted":
            self.ctx.address.interrupt()
            return Next.events()
        return Next.stop()


@pytest.mark.parametrize("how", ["done", "interrupted", "stopped"])
async def test_ended_raising_turns_each_finished_ending_into_a_failure_that_join_and_run_report(how: str) -> None:
    """ended() raising after done, interrupted or stopped: run()'s reason, join() and Agent.run() report its error."""
    error = OSError("cannot record the ending")
    rec = Rec(behave={f"ended {how} {1 if how == 'done' else None}": raising(error)})
    runner = hybrid.AgentRunner(Ending(how), checkpointer=rec)
    reason = await runner.run()
    assert reason.kind is StopKind.FAILED
    assert reason.error is error
    with pytest.raises(OSError, match="cannot record"):
        await runner.address.join()
    assert clean(rec).endings[0].kind.value == how

    # Spawned: join() raises it, and so does the nursery (as a trio task's error would).
    again = OSError("cannot record the ending, spawned")
    rec2 = Rec(behave={f"ended {how} {1 if how == 'done' else None}": raising(again)})
    joined: list[BaseException] = []
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="spawned")):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Ending(how), checkpointer=rec2)
            try:
                await address.join()
            except OSError as exc:
                joined.append(exc)
    assert joined in ([again], [])  # the nursery may cancel the joiner first
    assert clean(rec2).endings[0].kind.value == how


async def test_ended_raising_after_a_failure_keeps_the_agent_s_own_error_visible() -> None:
    """A failed run whose ending cannot be recorded: the new error, with the agent's own as its context.

    (on_stop raising after a failure does chain it: `Runtime._end` sets ``__context__``.)
    """
    error = OSError("cannot record the failure")
    rec = Rec(behave={"ended failed None": raising(error)})
    reason = await hybrid.AgentRunner(Ending("failed"), checkpointer=rec).run()
    assert reason.error is error
    assert clean(rec).endings == [StopReason(StopKind.FAILED, Ending.failure)]
    assert error.__context__ is Ending.failure


async def test_on_stop_raising_after_a_failure_chains_the_agent_s_own_error() -> None:
    """The reference behaviour the test above compares with (no checkpointer needed)."""

    class Stopping(Ending):
        async def on_stop(self, reason: StopReason) -> None:
            raise OSError("on_stop")

    reason = await hybrid.AgentRunner(Stopping("failed"), checkpointer=Rec()).run()
    assert isinstance(reason.error, OSError)
    assert reason.error.__context__ is Ending.failure


async def test_ended_raising_while_cancelled_does_not_swallow_the_cancellation() -> None:
    """Cancelled: ended() is shielded (it may await), and its error does not stop the cancellation."""
    awaited: list[str] = []

    async def slow_then_fail(agent: Any) -> None:
        await trio.sleep(0)  # would raise Cancelled if not shielded
        awaited.append("slept")
        raise OSError("after the cancellation")

    rec = Rec(behave={"ended cancelled None": slow_then_fail})
    runner = hybrid.AgentRunner(Actor(), checkpointer=rec)
    with trio.CancelScope() as scope:
        scope.cancel()
        await runner.run()
    assert scope.cancelled_caught
    assert awaited == ["slept"]
    assert clean(rec).calls == ["start", "transition events", "ended cancelled None"]
    assert runner.address.is_alive is False


async def test_ended_raising_a_base_exception_while_cancelled_ends_the_agent_once() -> None:
    """Cancelled, and ended() raises a BaseException: the agent has still ended, told once, no hang."""
    rec = Rec(behave={"ended cancelled None": raising(Boom("ended"))})
    runner = hybrid.AgentRunner(Actor(), checkpointer=rec)
    with pytest.raises((Boom, BaseExceptionGroup)), trio.CancelScope() as scope:  # noqa: PT012
        scope.cancel()
        await runner.run()
    assert not runner.address.is_alive
    assert clean(rec).calls == ["start", "transition events", "ended cancelled None"]


# -- cancellation and interrupts while a method awaits -----------------------------------------


@pytest.mark.parametrize("label", ["start", "transition one", "handled", "transition events"])
async def test_cancelled_from_outside_while_a_method_awaits_the_agent_ends_cancelled_told_shielded(
    label: str,
) -> None:
    """The caller's scope cancelled while start/transition/handled sleeps: ended(cancelled), once, shielded."""
    entered = trio.Event()
    shielded: list[bool] = []

    async def check_shield(agent: Any) -> None:
        await trio.sleep(0)  # raises Cancelled unless shielded
        shielded.append(True)

    rec = Rec(behave={label: sleeping(entered), "ended cancelled None": check_shield})
    agent: Machine | Actor = Actor() if label in ("handled", "transition events") else Machine()
    runner = hybrid.AgentRunner(agent, checkpointer=rec)
    if label == "handled":
        runner.address.send(Add(1))
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await runner.run()

        nursery.start_soon(run)
        await entered.wait()
        scope.cancel()
    assert scope.cancelled_caught
    assert shielded == [True]
    assert clean(rec).calls[-2:] == [label, "ended cancelled None"]
    assert label not in rec.finished
    assert agent.log[-1] == "on_stop cancelled"
    assert runner.address.is_alive is False
    assert await runner.address.join() is None


async def test_one_interrupt_while_start_awaits_ends_the_agent_after_begin_without_a_state() -> None:
    """Interrupted while start() sleeps: begin() runs, its state is never entered nor saved; ended(interrupted)."""
    entered, release = trio.Event(), trio.Event()
    rec = Rec(behave={"start": pausing(entered, release)})
    agent = Machine()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent, checkpointer=rec)
        await entered.wait()
        address.interrupt()
        release.set()
    assert clean(rec).calls == ["start", "ended interrupted None"]
    assert agent.log == ["begin", "on_interrupt", "on_stop interrupted"]


async def test_two_interrupts_while_start_awaits_cut_it_short_and_the_agent_ends_interrupted() -> None:
    """A second interrupt cancels start(): the run ends interrupted (not cancelled), ended told once."""
    entered = trio.Event()
    rec = Rec(behave={"start": sleeping(entered)})
    agent = Machine()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent, checkpointer=rec)
        await entered.wait()
        address.interrupt()
        address.interrupt()
    assert clean(rec).calls == ["start", "ended interrupted None"]
    assert "start" not in rec.finished
    assert "begin" not in agent.log


async def test_hybrid_start_returns_or_raises_clearly_when_interrupted_twice_while_start_awaits() -> None:
    """hybrid.start() of an agent interrupted twice while its checkpointer's start() awaits: no trio internals leak.

    The checkpointer (which is given the agent) interrupts it: the agent ends
    interrupted without running begin(). hybrid.start must then return the address
    (of an agent that has ended), as it does for an agent that ended right after
    begin(), never fail with trio's "child exited without calling task_status.started()".
    """

    async def interrupt_twice(agent: Any) -> None:
        agent.ctx.address.interrupt()
        agent.ctx.address.interrupt()
        await trio.sleep(0)

    rec = Rec(behave={"start": interrupt_twice})
    async with trio.open_nursery() as nursery:
        address = await hybrid.start(nursery, Machine(), checkpointer=rec)
        assert await address.join() is None
    assert clean(rec).calls[-1] == "ended interrupted None"


async def test_one_interrupt_while_a_state_s_transition_awaits_lets_that_state_finish_and_saves_where_to_go_on() -> (
    None
):
    """Interrupted while transition(two) is saved: two runs (its transition was taken), the agent ends interrupted.

    Whichever way the core goes, the checkpoint must name a step that has not run.
    """
    entered, release = trio.Event(), trio.Event()

    class Three(Machine):
        def two(self) -> Next[Self]:
            self.log.append("two")
            return Next.do_async(self.three)

        async def three(self) -> Next[Self]:
            self.log.append("three")
            return Next.done("out")

    rec = Rec(behave={"transition two": pausing(entered, release)})
    agent = Three()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent, checkpointer=rec)
        await entered.wait()
        address.interrupt()
        release.set()
    assert clean(rec).calls == [
        "start",
        "transition one",
        "transition two",
        "transition three",
        "ended interrupted None",
    ]
    assert agent.log == ["begin", "one", "two", "on_interrupt", "on_stop interrupted"]


async def test_two_interrupts_while_transition_awaits_cut_the_save_short_and_the_state_never_runs() -> None:
    """A second interrupt cancels transition(): the state it was saving never runs; ended(interrupted) once."""
    entered = trio.Event()
    rec = Rec(behave={"transition two": sleeping(entered)})
    agent = Machine()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent, checkpointer=rec)
        await entered.wait()
        address.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert clean(rec).calls == ["start", "transition one", "transition two", "ended interrupted None"]
    assert "transition two" not in rec.finished
    assert agent.log == ["begin", "one", "on_interrupt", "on_stop interrupted"]
    assert await address.join() is None


async def test_two_interrupts_while_handled_awaits_a_request_s_save_tell_its_caller_the_agent_stopped() -> None:
    """Second interrupt while handled() saves a request: the caller gets AgentStopped, ended(interrupted)."""
    entered = trio.Event()
    rec = Rec(behave={"handled": sleeping(entered)})
    caught: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Actor(), checkpointer=rec)

        async def ask() -> None:
            try:
                await address.request(Total())
            except hybrid.AgentStopped as exc:
                caught.append(exc)

        nursery.start_soon(ask)
        await entered.wait()
        address.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        assert caught == []
        address.interrupt()
    assert len(caught) == 1
    assert clean(rec).calls == ["start", "transition events", "handled", "ended interrupted None"]


async def test_interrupts_while_ended_awaits_change_nothing() -> None:
    """Interrupts arriving while ended() is saved: it is not cut short, the ending stays as told."""
    entered, release = trio.Event(), trio.Event()
    rec = Rec(behave={"ended done 'out'": pausing(entered, release)})
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Machine(), checkpointer=rec)
        await entered.wait()
        address.interrupt()
        address.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        assert await address.join() == "out"
    assert clean(rec).finished[-1] == "ended done 'out'"


# -- a hostile transition() meddling with its own agent ----------------------------------------


async def test_transition_calling_do_next_in_a_state_fails_the_agent() -> None:
    """transition() of a state calling ctx.do_next: LifecycleError fails the agent; the state never runs."""

    async def meddle(agent: Any) -> None:
        agent.ctx.do_next(Next.done())

    rec = Rec(behave={"transition one": meddle})
    agent = Machine()
    reason = await hybrid.AgentRunner(agent, checkpointer=rec).run()
    assert isinstance(reason.error, hybrid.LifecycleError)
    assert "one" not in agent.log
    assert clean(rec).calls == ["start", "transition one", "ended failed None"]


async def test_transition_calling_do_next_in_actor_mode_takes_that_transition() -> None:
    """transition(events) calling ctx.do_next(state): taken before any message, and told as a transition."""

    async def meddle(agent: Any) -> None:
        agent.ctx.do_next(Next.do_async(agent.after))

    rec = Rec(behave={"transition events": meddle})
    runner = hybrid.AgentRunner(Actor(), checkpointer=rec)
    runner.address.send(Add(2))
    reason = await runner.run()
    assert reason == StopReason.DONE
    assert runner.output == 0  # the transition went first; the event was handled while finishing, not saved
    assert runner.address.is_alive is False
    assert clean(rec).calls == ["start", "transition events", "transition after", "ended done 0"]


@pytest.mark.parametrize("label", ["transition one", "transition events"])
async def test_transition_calling_ctx_stop_ends_the_agent_stopped(label: str) -> None:
    """ctx.stop() from inside transition(): the agent ends stopped, told once (a state may still finish first)."""

    async def meddle(agent: Any) -> None:
        agent.ctx.stop()

    rec = Rec(behave={label: meddle})
    agent: Agent[Any] = Machine() if label == "transition one" else Actor()
    reason = await hybrid.AgentRunner(agent, checkpointer=rec).run()
    assert reason == StopReason.STOPPED
    assert clean(rec).calls[-1] == "ended stopped None"
    assert "transition two" not in rec.calls


@pytest.mark.parametrize("times", [1, 2])
async def test_transition_interrupting_its_own_agent_ends_it_interrupted(times: int) -> None:
    """address.interrupt() (once, twice) from inside transition(one): the agent ends interrupted, told once."""

    async def meddle(agent: Any) -> None:
        for _ in range(times):
            agent.ctx.address.interrupt()

    rec = Rec(behave={"transition one": meddle})
    agent = Machine()
    reason = await hybrid.AgentRunner(agent, checkpointer=rec).run()
    assert reason == StopReason.INTERRUPTED
    assert clean(rec).calls[-1] == "ended interrupted None"
    assert "two" not in agent.log
    assert agent.log.count("on_interrupt") == 1


# -- hibernation ----------------------------------------------------------------------------


class Sleepy(Actor):
    hibernate_after: ClassVar[float | None] = 0


async def test_a_hibernating_agent_is_told_the_same_calls_as_an_awake_one() -> None:
    """Hibernating between messages: no second start() nor transition(events) on wake-up; handled per message."""
    rec = Rec()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Sleepy(), checkpointer=rec)
        for n in range(3):
            await trio.testing.wait_all_tasks_blocked()
            address.send(Add(n))
        await trio.testing.wait_all_tasks_blocked()
        assert await address.request(Total()) == 3
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert clean(rec).calls == [
        "start",
        "transition events",
        *["handled"] * 5,  # three events, the request, the interrupt
        "ended interrupted None",
    ]


async def test_a_hibernating_agent_cancelled_with_its_nursery_is_told_once_shielded() -> None:
    """Cancelled while asleep: ended(cancelled) once, from the keeper, and it may await."""
    slept: list[bool] = []

    async def check_shield(agent: Any) -> None:
        await trio.sleep(0)
        slept.append(True)

    rec = Rec(behave={"ended cancelled None": check_shield})
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Sleepy(), checkpointer=rec)
        address.send(Add(1))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert slept == [True]
    assert clean(rec).calls == ["start", "transition events", "handled", "ended cancelled None"]


async def test_a_hibernating_agent_whose_handled_fails_on_wake_up_fails_and_its_caller_gets_the_error() -> None:
    """Woken by a request whose save fails: the caller gets the error, the agent fails with it, told once."""
    error = OSError("save on wake-up")
    rec = Rec()
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="save on wake-up")):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Sleepy(), checkpointer=rec)
            await trio.testing.wait_all_tasks_blocked()
            rec.behave["handled"] = raising(error)
            with pytest.raises(OSError, match="save on wake-up"):
                await address.request(Total())
    assert clean(rec).calls == ["start", "transition events", "handled", "ended failed None"]


# -- helper tasks -------------------------------------------------------------------------------


class Helping(Actor):
    async def fail_soon(self) -> None:
        await trio.sleep(0)
        raise ValueError("helper failed")

    def begin(self) -> Next[Self]:
        self.ctx.start_soon(self.fail_soon)
        return Next.events()


async def test_a_failing_helper_task_of_a_spawned_agent_ends_it_told_once() -> None:
    """A helper task raising: the spawned agent is cancelled with its nursery; ended(cancelled) once."""
    rec = Rec()
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="helper failed")):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, Helping(), checkpointer=rec)
    assert clean(rec).calls == ["start", "transition events", "ended cancelled None"]


async def test_a_failing_helper_task_of_a_supervised_child_is_told_as_its_failure() -> None:
    """Under a supervisor (a contained run): the helper's error is the run's failure, told to ended()."""
    rec = Rec()

    class Boss(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Helping(), checkpointer=rec)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.ctx.address.interrupt()

    await Boss().run()
    assert clean(rec).calls == ["start", "transition events", "ended failed None"]
    error = rec.endings[0].error
    assert isinstance(error, ValueError)
    assert str(error) == "helper failed"


# -- supervisors ----------------------------------------------------------------------------------


class Flaky(Agent[None]):
    """Fails its first `fails` runs (counted in a shared list), then finishes."""

    runs: ClassVar[list[int]] = []
    fails: ClassVar[int] = 3

    def begin(self) -> Next[Self]:
        self.runs.append(len(self.runs))
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        if len(self.runs) <= self.fails:
            raise ValueError(f"run {len(self.runs)}")
        return Next.done()


async def test_a_child_restarted_n_times_is_told_start_and_ended_for_each_run_never_overlapping() -> None:
    """N failures then done: start N+1 times, ended N+1 times (failed x N, done), in per-run order."""

    class Many(Flaky):
        runs: ClassVar[list[int]] = []

    rec = Rec()

    class Boss(hybrid.Supervisor):
        max_restarts = 10

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Many, restart=hybrid.Restart.TRANSIENT, checkpointer=rec)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            if not reason.failed:
                self.ctx.address.interrupt()

    await Boss().run()
    assert Many.runs == [0, 1, 2, 3]
    assert rec.overlaps == []
    assert rec.calls == ["start", "transition work", "ended failed None"] * 3 + [
        "start",
        "transition work",
        "ended done None",
    ]


async def test_a_child_whose_ending_cannot_be_recorded_is_restarted_as_a_failed_one() -> None:
    """ended() raising after a done run: the run failed, so a TRANSIENT child is restarted (start again)."""
    failures: list[str] = []

    async def fail_once(agent: Any) -> None:
        if not failures:
            failures.append("ended")
            raise OSError("cannot record")

    rec = Rec(behave={"ended done None": fail_once})
    reasons: list[StopReason] = []

    class Done(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            return Next.done()

    class Boss(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Done, restart=hybrid.Restart.TRANSIENT, checkpointer=rec)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            reasons.append(reason)
            if not reason.failed:
                self.ctx.address.interrupt()

    await Boss().run()
    assert [reason.kind for reason in reasons] == [StopKind.FAILED, StopKind.DONE]
    assert isinstance(reasons[0].error, OSError)
    assert rec.calls.count("start") == 2
    assert rec.overlaps == []


async def test_a_child_whose_ended_always_raises_exhausts_the_restart_intensity() -> None:
    """A PERMANENT child whose ending can never be recorded: restarted max_restarts times, then the supervisor fails."""
    rec = Rec(behave={"ended done None": raising(OSError("store gone"))})

    class Done(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.done()

    class Boss(hybrid.Supervisor):
        max_restarts = 2

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Done, checkpointer=rec)
            return Next.events()

    reason = await hybrid.AgentRunner(Boss()).run()
    assert isinstance(reason.error, hybrid.RestartIntensityExceeded)
    assert rec.calls.count("start") == 3
    assert rec.calls.count("ended done None") == 3
    assert rec.overlaps == []


async def test_a_supervisor_s_shutdown_timeout_cancels_a_slow_save_and_the_child_is_told_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child stuck in transition() at shutdown: interrupted, interrupted again past the timeout; ended once."""
    rec = Rec(behave={"transition events": sleeping()})

    class Boss(hybrid.Supervisor):
        shutdown_timeout = 1.0

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Actor, checkpointer=rec)
            return Next.events()

    async with trio.open_nursery() as nursery:
        boss = hybrid.spawn(nursery, Boss())
        await trio.sleep(5)
        boss.interrupt()
        await boss.join()
    assert clean(rec).calls == ["start", "transition events", "ended interrupted None"]


async def test_a_supervisor_kill_during_a_slow_ended_ends_the_child_without_a_second_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child whose ended() hangs: killed past two timeouts, the cancellation cuts ended short; never told twice."""
    rec = Rec(behave={"ended interrupted None": sleeping()})

    class Boss(hybrid.Supervisor):
        shutdown_timeout = 1.0

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Actor, checkpointer=rec)
            return Next.events()

    async with trio.open_nursery() as nursery:
        boss = hybrid.spawn(nursery, Boss())
        await trio.sleep(5)
        boss.interrupt()
        await boss.join()
    assert rec.overlaps == []
    assert rec.calls == ["start", "transition events", "handled", "ended interrupted None"]


async def test_a_supervised_child_whose_start_hangs_is_interrupted_twice_at_shutdown_and_told_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child stuck in start(): the shutdown cuts it short; it ends interrupted, begin() never ran."""
    rec = Rec(behave={"start": sleeping()})
    agents: list[Actor] = []

    def make() -> Actor:
        agents.append(Actor())
        return agents[-1]

    class Boss(hybrid.Supervisor):
        shutdown_timeout = 1.0

        def begin(self) -> Next[Self]:
            self.ctx.spawn(make, checkpointer=rec)
            return Next.events()

    async with trio.open_nursery() as nursery:
        boss = hybrid.spawn(nursery, Boss())
        await trio.sleep(5)
        boss.interrupt()
        await boss.join()
    assert clean(rec).calls == ["start", "ended interrupted None"]
    assert "begin" not in agents[0].log


async def test_a_supervised_child_whose_start_always_raises_exhausts_the_restart_intensity() -> None:
    """start() raising on every run: each run fails before begin(), told ended; then the supervisor fails."""
    rec = Rec(behave={"start": raising(OSError("store down"))})

    class Boss(hybrid.Supervisor):
        max_restarts = 2

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Actor, checkpointer=rec)
            return Next.events()

    reason = await hybrid.AgentRunner(Boss()).run()
    assert isinstance(reason.error, hybrid.RestartIntensityExceeded)
    assert rec.calls == ["start", "ended failed None"] * 3
    assert rec.overlaps == []


async def test_a_supervisor_hears_of_a_child_s_end_only_after_ended_returned() -> None:
    """on_child_ended (and so any restart) comes after the run's ended() has returned."""
    rec = Rec()
    seen: list[list[str]] = []

    class Boss(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Machine, restart=hybrid.Restart.TRANSIENT, checkpointer=rec)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            seen.append(list(rec.finished))
            self.ctx.address.interrupt()

    await Boss().run()
    assert seen == [["start", "transition one", "transition two", "ended done 'out'"]]


async def test_a_base_exception_from_a_supervised_child_s_transition_is_told_once_and_leaves_the_supervisor() -> None:
    """transition() raising a BaseException in a contained run: told ended(failed, it) once; it is not swallowed."""
    rec = Rec(behave={"transition events": raising(Boom("contained"))})

    class Boss(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Actor, checkpointer=rec)
            return Next.events()

    with pytest.RaisesGroup(Boom, flatten_subgroups=True):
        await hybrid.AgentRunner(Boss()).run()
    assert clean(rec).endings[0].kind is StopKind.FAILED
    assert isinstance(rec.endings[0].error, Boom)


async def test_join_waits_until_ended_returned() -> None:
    """A joiner is not woken while ended() still saves the ending."""
    entered, release = trio.Event(), trio.Event()
    rec = Rec(behave={"ended done 'out'": pausing(entered, release)})
    joined: list[object] = []
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Machine(), checkpointer=rec)

        async def join() -> None:
            joined.append(await address.join())

        nursery.start_soon(join)
        await entered.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert joined == []
        assert address.is_alive
        release.set()
    assert joined == ["out"]


async def test_cancelled_while_ended_awaits_the_run_ends_cancelled_and_is_not_told_twice() -> None:
    """The caller's scope cancelled while ended(done) saves: that call is cut short, not repeated; join() says None."""
    entered = trio.Event()
    rec = Rec(behave={"ended done 'out'": sleeping(entered)})
    runner = hybrid.AgentRunner(Machine(), checkpointer=rec)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await runner.run()

        nursery.start_soon(run)
        await entered.wait()
        scope.cancel()
    assert clean(rec).calls == ["start", "transition one", "transition two", "ended done 'out'"]
    assert rec.finished[-1] == "transition two"
    assert await runner.address.join() is None
    assert runner.output is None


async def test_a_base_exception_from_ended_while_cancelled_leaves_run_unwrapped() -> None:
    """As from ended() after a done run (and from any agent code), the BaseException itself leaves run()."""
    rec = Rec(behave={"ended cancelled None": raising(Boom("ended"))})
    runner = hybrid.AgentRunner(Actor(), checkpointer=rec)
    with pytest.raises(Boom), trio.CancelScope() as scope:  # noqa: PT012
        scope.cancel()
        await runner.run()


async def test_a_base_exception_from_ended_after_done_leaves_run_unwrapped() -> None:
    """The reference the test above compares with: after a done run, Boom from ended() leaves run() as is."""
    rec = Rec(behave={"ended done 'out'": raising(Boom("ended"))})
    runner = hybrid.AgentRunner(Machine(), checkpointer=rec)
    with pytest.raises(Boom):
        await runner.run()
    with pytest.raises(Boom):
        await runner.address.join()


async def test_one_interrupt_while_actor_mode_is_saved_is_handled_as_the_first_message() -> None:
    """Interrupted while transition(events) saves: the interrupt is then handled (and told) as a message."""
    entered, release = trio.Event(), trio.Event()
    rec = Rec(behave={"transition events": pausing(entered, release)})
    agent = Actor()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent, checkpointer=rec)
        await entered.wait()
        address.interrupt()
        release.set()
    assert clean(rec).calls == ["start", "transition events", "handled", "ended interrupted None"]
    assert agent.log == ["begin", "on_interrupt", "on_stop interrupted"]


async def test_a_request_abandoned_by_its_caller_is_not_told_as_handled(autojump_clock: trio.testing.MockClock) -> None:
    """A queued request whose caller gave up is skipped: no handled() for it (only the event and the interrupt)."""
    rec = Rec()

    class Slow(Actor):
        @hybrid.on_event
        async def add(self, event: Add) -> None:
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Slow(), checkpointer=rec)
        address.send(Add(1))
        with trio.move_on_after(0.5):
            await address.request(Total())
        await trio.sleep(1)
        address.interrupt()
    assert clean(rec).calls == ["start", "transition events", "handled", "handled", "ended interrupted None"]


async def test_a_forwarded_request_whose_save_fails_reaches_the_forwarder_as_an_error() -> None:
    """handled() raising after a forwarded request: the forwarder's on_response gets outcome.Error, never lost."""
    error = OSError("save failed")
    rec = Rec(behave={"handled": raising(error)})
    got: list[Any] = []

    class Forwarder(Agent[None]):
        def __init__(self, server: hybrid.Address[Actor]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            self.server.request(Total()).forward_to(self.ctx)
            return Next.events()

        @hybrid.on_response
        async def answered(self, request: Total, response: Any) -> None:
            got.append(response)
            self.ctx.stop()

    forwarders: list[hybrid.Address[Forwarder]] = []
    async with trio.open_nursery() as outer:  # the forwarder outlives the server's nursery
        with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="save failed")):
            async with trio.open_nursery() as nursery:
                server = hybrid.spawn(nursery, Actor(), checkpointer=rec)
                forwarders.append(hybrid.spawn(outer, Forwarder(server)))
        await forwarders[0].join()
    assert len(got) == 1
    with pytest.raises(OSError, match="save failed"):
        got[0].unwrap()


async def test_hybrid_start_raises_the_error_of_a_failing_start() -> None:
    """hybrid.start() of an agent whose checkpointer's start() raises: that error, from hybrid.start itself."""
    rec = Rec(behave={"start": raising(OSError("cannot load"))})
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="cannot load"), allow_unwrapped=True):
        async with trio.open_nursery() as nursery:
            await hybrid.start(nursery, Machine(), checkpointer=rec)
    assert clean(rec).calls == ["start", "ended failed None"]


async def test_a_hibernating_supervised_child_restarted_after_failures_is_told_each_run() -> None:
    """A hibernating child failed twice from a handler: each run is start, transition events, handled..., ended."""
    rec = Rec()

    class Fragile(Sleepy):
        @hybrid.on_event
        async def add(self, event: Add) -> None:
            if event.n < 0:
                self.ctx.do_next(Next.fail(ValueError("negative")))

    class Boss(hybrid.Supervisor):
        max_restarts = 5

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Fragile, checkpointer=rec)
            return Next.events()

    boss = Boss()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, boss)
        await trio.testing.wait_all_tasks_blocked()
        for n in (1, -1, 2, -2, 3):
            boss.child.send(Add(n))
            await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert rec.overlaps == []
    run = ["start", "transition events"]
    assert rec.calls == [
        *run,
        "handled",
        "handled",
        "ended failed None",
        *run,
        "handled",
        "handled",
        "ended failed None",
        *run,
        "handled",
        "handled",  # the supervisor's interrupt, a message
        "ended interrupted None",
    ]


async def test_a_retried_state_is_saved_once_and_a_fallback_s_state_is_saved_before_it_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """.retry re-runs the saved state (no new transition()); the state a .fallback chooses is told before it runs."""
    rec = Rec()
    tries: list[str] = []

    class Retrying(Agent[str]):
        def begin(self) -> Next[Self]:
            policy = hybrid.RetryPolicy(initial=1.0, attempts=3)
            return Next.do_async(self.flaky).retry(policy).fallback(lambda error: Next.do_async(self.rescue))

        async def flaky(self) -> Next[Self]:
            tries.append(rec.finished[-1])
            raise OSError("always")

        async def rescue(self) -> Next[Self]:
            tries.append(rec.finished[-1])
            return Next.done("rescued")

    assert await hybrid.AgentRunner(Retrying(), checkpointer=rec).run() == StopReason.DONE
    assert tries == ["transition flaky"] * 3 + ["transition rescue"]
    assert clean(rec).calls == ["start", "transition flaky", "transition rescue", "ended done 'rescued'"]


async def test_a_state_re_entering_itself_past_the_fairness_bound_is_saved_every_time() -> None:
    """200 re-entries of one state (past the yield every 64 steps): 200 transition() calls, in order, no overlap."""
    rec = Rec()

    class Loop(Agent[int]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.step, 0)

        async def step(self, n: int) -> Next[Self]:
            return Next.do_async(self.step, n + 1) if n < 199 else Next.done(n)

    reason = await hybrid.AgentRunner(Loop(), checkpointer=rec).run()
    assert reason == StopReason.DONE
    assert clean(rec).calls == ["start", *["transition step"] * 200, "ended done 199"]
