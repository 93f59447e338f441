"""Edge cases of the core through the public API: reused and kept addresses, argument checks,
instruments, thread hops, mailbox sweeps, handles, and the corners of supervision."""

# pyright: reportUnusedClass=false
from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import threading
from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Restart, StopKind, StopReason, Strategy, Supervisor
from tests.messages import Echo, Ping

# -- messages and agents shared by the tests ----------------------------------------


@attrs.frozen
class Other:
    """An event only `Receptionist` handles (its successors do not)."""


@attrs.frozen
class Quit:
    pass


@attrs.frozen
class Crash:
    pass


class Quick(Agent[None]):
    """Finishes at once."""

    def begin(self) -> Next[Self]:
        return Next.done()


class Pings(Agent[None]):
    """An actor that records the pings it handles."""

    def __init__(self) -> None:
        self.pings: list[int] = []

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.pings.append(event.n)


class Receptionist(Pings):
    """Handles more than `Pings`: what it leaves queued, a `Pings` successor may refuse."""

    def begin(self) -> Next[Self]:
        return Next.done()

    @hybrid.on_event
    async def other(self, event: Other) -> None: ...  # pragma: no cover - never reached: it ends at once

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:  # pragma: no cover - never reached: it ends at once
        return request.n


class Answers(Agent[None]):
    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n


class Gated(Agent[None]):
    """Stays in a state (its mailbox unread) until `gate` is set, then answers requests."""

    mailbox_capacity = 64

    def __init__(self) -> None:
        self.gate = trio.Event()

    def begin(self) -> Next[Self]:
        return Next.do_async(self.wait_for_gate)

    async def wait_for_gate(self) -> Next[Self]:
        await self.gate.wait()
        return Next.events()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None: ...

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n


def alive(address: hybrid.Address[Any]) -> bool:
    """`address.is_alive`, read afresh (type checkers would narrow the property across calls)."""
    return address.is_alive


class Journal(hybrid.Instrument):
    """Records the messages reported to `message_handled`."""

    def __init__(self) -> None:
        self.handled: list[object] = []
        self.restarts: list[tuple[str, str]] = []

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        self.handled.append(message)

    def child_restarted(self, supervisor: hybrid.Address[Any], child: hybrid.Address[Any], reason: StopReason) -> None:
        self.restarts.append((supervisor.name, child.name))


# -- reused and kept addresses -------------------------------------------------------


async def test_reusing_an_ended_address_under_another_name_or_capacity_is_a_value_error() -> None:
    """A reused address keeps its name and mailbox capacity: asking for others is a ValueError."""
    runner = hybrid.AgentRunner(Quick(), keep_address=True, mailbox_capacity=4)
    await runner.run()
    address = runner.address
    with pytest.raises(ValueError, match="keeps its name"):
        hybrid.AgentRunner(Quick(), address=address, name="renamed")
    with pytest.raises(ValueError, match="capacity"):
        hybrid.AgentRunner(Quick(), address=address, mailbox_capacity=8)
    successor = hybrid.AgentRunner(Quick(), address=address, name=address.name, mailbox_capacity=4)
    assert successor.address is address
    assert (await successor.run()).done


async def test_reusing_the_address_of_a_running_agent_is_a_lifecycle_error() -> None:
    """An address can be handed to a successor only once the agent it reaches has ended."""
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Pings())
        with pytest.raises(hybrid.LifecycleError, match="still reaches a running agent"):
            hybrid.AgentRunner(Pings(), address=address)
        address.interrupt()


async def test_reusing_an_address_that_was_given_up_reclaims_its_name_and_reopens_its_mailbox() -> None:
    """An address given up at its agent's end comes back to life, name and all, when reused."""
    first = hybrid.AgentRunner(Quick(), name="phoenix")
    await first.run()
    address = first.address
    assert not alive(address)
    successor = Pings()
    second = hybrid.AgentRunner(successor, address=address)
    assert alive(address) and address.name == "phoenix"
    async with trio.open_nursery() as nursery:
        with pytest.raises(ValueError, match="in use"):
            hybrid.spawn(nursery, Pings(), name="phoenix")
    address.send(Ping(7))
    address.interrupt()
    assert (await second.run()).interrupted
    assert successor.pings == [7]
    assert not address.is_alive


async def test_a_kept_address_queues_messages_until_discard_fails_its_requests_and_drops_its_events() -> None:
    """After a kept run, the address waits for a successor; discard() gives it up and empties it."""
    runner = hybrid.AgentRunner(Receptionist(), keep_address=True)
    assert (await runner.run()).done
    address = runner.address
    assert alive(address)
    errors: list[BaseException] = []

    async def ask() -> None:
        try:
            await address.request(Echo(1))
        except hybrid.AgentStopped as error:
            errors.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        address.send(Ping(1))
        stats = address.statistics()
        assert (stats.phase, stats.mailbox_depth, stats.messages_dropped) == ("ended", 2, 0)
        assert stats.reason is not None and stats.reason.done
        runner.discard()
    assert len(errors) == 1
    assert not address.is_alive
    assert address.statistics().mailbox_depth == 0
    assert address.statistics().messages_dropped == 2
    runner.discard()  # giving it up again changes nothing
    with pytest.raises(hybrid.AgentStopped):
        address.send(Ping(2))


async def test_a_successor_refuses_queued_messages_its_class_does_not_handle_and_inherits_the_interrupt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Handing a kept address over: unhandled requests fail, unhandled events are logged, the interrupt carries over."""
    runner = hybrid.AgentRunner(Receptionist(), keep_address=True)
    await runner.run()
    address = runner.address
    refused: list[BaseException] = []

    async def ask() -> None:
        try:
            await address.request(Echo(1))
        except hybrid.UnhandledMessage as error:
            refused.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        address.send(Other())
        address.send(Ping(1))
        address.interrupt()  # the agent has ended: held for the successor
        successor = Pings()
        second = hybrid.AgentRunner(successor, address=address)
        reason = await second.run()
    assert reason.interrupted
    assert successor.pings == [1]
    assert len(refused) == 1
    assert any("does not handle" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert address.statistics().messages_dropped == 2


async def test_a_sender_waiting_at_a_kept_address_is_turned_away_when_the_successor_is_interrupted_at_its_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A successor interrupted before its first state handles what was kept, then refuses the waiting sender."""

    class Busy(Pings):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:  # pragma: no cover - interrupted before it starts
            return Next.done()

    runner = hybrid.AgentRunner(Receptionist(), keep_address=True, mailbox_capacity=2)
    await runner.run()
    address = runner.address
    outcomes: list[str] = []

    async def send_more() -> None:
        try:
            await address.send_wait(Ping(3))
            outcomes.append("sent")
        except hybrid.AgentStopped:
            outcomes.append("stopped")

    async with trio.open_nursery() as nursery:
        address.send(Other())
        address.send(Ping(2))
        with pytest.raises(hybrid.MailboxFull):
            address.send(Ping(9))
        nursery.start_soon(send_more)
        await trio.testing.wait_all_tasks_blocked()
        assert address.statistics().senders_waiting == 1
        address.interrupt()
        successor = Busy()
        reason = await hybrid.AgentRunner(successor, address=address).run()
    assert reason.interrupted
    assert successor.pings == [2]
    assert outcomes == ["stopped"]


async def test_an_answer_forwarded_before_a_kept_run_ended_is_handled_by_its_successor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The answer to a request forwarded by an ended run waits at its kept address for the next instance."""

    class Slow(Agent[None]):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            await trio.sleep(1)
            return request.n

    class Client(Agent[None]):
        def __init__(self, server: hybrid.Address[Slow], ask: bool) -> None:
            self.server = server
            self.ask = ask
            self.answers: list[int] = []

        def begin(self) -> Next[Self]:
            if self.ask:
                self.server.request(Echo(5)).forward_to(self.ctx)
                return Next.done()
            return Next.events()

        @hybrid.on_response
        async def got(self, request: Echo, response: outcome.Outcome[int]) -> None:
            self.answers.append(response.unwrap())
            self.ctx.shutdown()

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Slow())
        runner = hybrid.AgentRunner(Client(server, ask=True), keep_address=True)
        assert (await runner.run()).done
        await trio.sleep(2)
        assert runner.address.statistics().mailbox_depth == 1  # the answer, kept
        successor = Client(server, ask=False)
        assert (await hybrid.AgentRunner(successor, address=runner.address).run()).done
        server.interrupt()
    assert successor.answers == [5]


async def test_a_runner_discarded_keeping_its_address_hands_its_queue_but_not_its_interrupt_over() -> None:
    """discard(keep_address=True) before the run: queued messages wait for the successor;
    the interrupt sent to the run that never ran is dropped with it."""
    runner = hybrid.AgentRunner(Pings())
    address = runner.address
    address.send(Ping(1))
    runner.interrupt()
    runner.discard(keep_address=True)
    assert alive(address)
    address.send(Ping(2))
    successor = Pings()
    async with trio.open_nursery() as nursery:
        second = hybrid.AgentRunner(successor, address=address)
        await nursery.start(second.run)
        await trio.testing.wait_all_tasks_blocked()
        assert successor.pings == [1, 2]
        assert address.statistics().phase == "events"  # not interrupted by the dropped interrupt
        address.interrupt()
    assert not alive(address)
    runner.discard(keep_address=True)  # after its end: nothing happens
    second.discard(keep_address=True)
    assert not alive(address)


async def test_a_runner_interrupt_ends_its_own_run_and_never_reaches_the_next_one() -> None:
    """runner.interrupt() interrupts its run; once that ended (address kept), it does nothing,
    where address.interrupt() would interrupt the successor at its start."""
    runner = hybrid.AgentRunner(Pings(), keep_address=True)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(runner.run)
        runner.interrupt()
    assert address.statistics().phase == "ended"
    runner.interrupt()  # ended: nothing for the successor
    successor = Pings()
    second = hybrid.AgentRunner(successor, address=address)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await trio.testing.wait_all_tasks_blocked()
        assert address.statistics().phase == "events"
        second.interrupt()
    assert (await address.join()) is None
    assert not alive(address)


async def test_an_interrupt_while_a_kept_run_is_ending_is_not_handed_to_its_successor() -> None:
    """address.interrupt() while the run is in on_stop (its ending chosen) is for that run:
    the successor at the kept address starts uninterrupted."""
    in_stop = trio.Event()
    go_on = trio.Event()

    class SlowStop(Pings):
        def begin(self) -> Next[Self]:
            return Next.done()

        async def on_stop(self, reason: StopReason) -> None:
            in_stop.set()
            await go_on.wait()

    runner = hybrid.AgentRunner(SlowStop(), keep_address=True)
    address = runner.address
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await in_stop.wait()
        address.interrupt()  # its first, while it ends: dropped, not queued for a successor
        go_on.set()
    successor = Pings()
    second = hybrid.AgentRunner(successor, address=address)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await trio.testing.wait_all_tasks_blocked()
        assert address.statistics().phase == "events"
        second.interrupt()


async def test_an_agent_runner_runs_once_and_not_after_discard() -> None:
    """run() a second time, or after discard(), is a LifecycleError; discard() of a running agent too."""
    runner = hybrid.AgentRunner(Quick())
    await runner.run()
    with pytest.raises(hybrid.LifecycleError, match="runs once"):
        await runner.run()
    discarded = hybrid.AgentRunner(Quick())
    discarded.discard()
    assert not discarded.address.is_alive
    with pytest.raises(hybrid.LifecycleError, match="runs once"):
        await discarded.run()


async def test_spawn_needs_a_trio_nursery() -> None:
    """hybrid.spawn with something other than a nursery is a TypeError naming what it got."""
    with pytest.raises(TypeError, match="needs a trio nursery"):
        hybrid.spawn(object(), Quick())  # type: ignore[arg-type]


def test_the_ctx_attribute_is_absent_from_the_agent_class() -> None:
    """Agent.ctx on the class is an AttributeError, as for any missing attribute (hasattr is False)."""
    assert not hasattr(Agent, "ctx")
    with pytest.raises(AttributeError, match="ctx"):
        getattr(Pings, "ctx")  # noqa: B009 - on the class, where type checkers would refuse it


async def test_an_error_a_helper_raises_while_cancelled_at_the_end_leaves_run_as_an_exception_group() -> None:
    """A helper task that fails as the agent's end cancels it makes run() raise an ExceptionGroup."""

    class Helped(Agent[int]):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.helper)
            return Next.done(1)

        async def helper(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise RuntimeError("cleanup failed")

    with pytest.raises(ExceptionGroup) as caught:
        await Helped().run()
    [error] = caught.value.exceptions
    assert isinstance(error, RuntimeError) and str(error) == "cleanup failed"


async def test_interrupted_in_a_thread_started_by_a_sync_state_with_a_copied_context_is_false() -> None:
    """hybrid.interrupted() in a thread trio did not start (the context copied in) answers False, not an error."""

    class Spreads(Agent[bool]):
        def begin(self) -> Next[Self]:
            return Next.do_sync(self.work)

        def work(self) -> Next[Self]:
            context = contextvars.copy_context()
            answers: list[bool] = []
            thread = threading.Thread(target=lambda: answers.append(context.run(hybrid.interrupted)))
            thread.start()
            thread.join()
            return Next.done(answers[0])

    assert await Spreads().run() is False


# -- instruments ---------------------------------------------------------------------


async def test_add_instrument_refuses_a_non_instrument_and_a_second_registration_and_remove_an_unknown_one() -> None:
    """add_instrument: TypeError for a non-Instrument, ValueError twice; remove_instrument: ValueError if unknown."""
    journal = Journal()
    with pytest.raises(TypeError, match=r"needs a hybrid\.Instrument"):
        hybrid.add_instrument(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not registered"):
        hybrid.remove_instrument(journal)
    hybrid.add_instrument(journal)
    with pytest.raises(ValueError, match="already registered"):
        hybrid.add_instrument(journal)
    hybrid.remove_instrument(journal)
    with pytest.raises(ValueError, match="is not registered"):
        hybrid.remove_instrument(journal)


async def test_instruments_returns_one_instrument_that_calls_every_registered_one() -> None:
    """hybrid.instruments() reports through all registered instruments at once (for home-made machinery)."""
    one, two = Journal(), Journal()
    hybrid.add_instrument(one)
    hybrid.add_instrument(two)
    try:
        address = hybrid.AgentRunner(Quick(), name="parent").address
        child = hybrid.AgentRunner(Quick(), name="child").address
        probe = hybrid.instruments()
        assert isinstance(probe, hybrid.Instrument)
        probe.child_restarted(address, child, StopReason(StopKind.DONE))
    finally:
        hybrid.remove_instrument(one)
        hybrid.remove_instrument(two)
    assert one.restarts == two.restarts == [("parent", "child")]


async def test_an_instrument_that_removes_itself_then_raises_is_logged_and_not_removed_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that unregisters its instrument and then raises is logged; the agents go on."""

    class Leaving(hybrid.Instrument):
        def __init__(self) -> None:
            self.calls = 0

        def agent_started(self, address: hybrid.Address[Any]) -> None:
            self.calls += 1
            hybrid.remove_instrument(self)
            raise RuntimeError("leaving")

    leaving = Leaving()
    hybrid.add_instrument(leaving)
    await Quick().run()
    await Quick().run()
    assert leaving.calls == 1
    assert sum("raised in agent_started" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="is not registered"):
        hybrid.remove_instrument(leaving)


async def test_an_instrument_removed_while_a_handler_runs_is_not_told_about_that_message() -> None:
    """message_handled is not called for a message whose handler unregistered the last instrument."""
    journal = Journal()

    class Unplugs(Agent[None]):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            if event.n == 2:
                hybrid.remove_instrument(journal)

    hybrid.add_instrument(journal)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Unplugs())
        for n in (1, 2, 3):
            address.send(Ping(n))
        address.interrupt()
    assert journal.handled == [Ping(1)]


async def test_instruments_see_the_request_when_a_forwarded_answer_is_handled() -> None:
    """For an on_response handler, message_handled reports the request whose answer came back."""
    journal = Journal()

    class Client(Agent[int]):
        def __init__(self, server: hybrid.Address[Answers]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            self.server.request(Echo(4)).forward_to(self.ctx)
            return Next.events()

        @hybrid.on_response
        async def got(self, request: Echo, response: outcome.Outcome[int]) -> None:
            self.ctx.do_next(Next.done(response.unwrap()))

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Answers())
        hybrid.add_instrument(journal)
        try:
            assert await Client(server).run() == 4
        finally:
            hybrid.remove_instrument(journal)
        server.interrupt()
    assert journal.handled == [Echo(4), Echo(4)]  # asked at the server, answered at the client


# -- argument checks -----------------------------------------------------------------


async def test_mailbox_capacity_refuses_bools_floats_and_values_below_one() -> None:
    """mailbox_capacity is None or an int >= 1: bools and floats are TypeErrors, 0 a ValueError."""
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="mailbox_capacity must be an int >= 1, or math.inf for no bound, got True"):
            hybrid.spawn(nursery, Pings(), mailbox_capacity=True)
        with pytest.raises(TypeError, match="got 1.5"):
            hybrid.spawn(nursery, Pings(), mailbox_capacity=1.5)
        with pytest.raises(ValueError, match="got 0"):
            hybrid.spawn(nursery, Pings(), mailbox_capacity=0)
    with pytest.raises(ValueError, match="got -1"):
        hybrid.AgentRunner(Pings(), mailbox_capacity=-1)
    with pytest.raises(TypeError, match=r"Bounded\.mailbox_capacity"):

        class Bounded(Agent[None]):
            mailbox_capacity = False


async def test_timer_delays_refuse_bools_nan_infinity_and_negatives(autojump_clock: trio.testing.MockClock) -> None:
    """send_after, send_every and Timer.reset check their seconds the same way."""
    checked: list[str] = []

    class Timed(Pings):
        def begin(self) -> Next[Self]:
            ctx = self.ctx
            for bad, error in ((True, TypeError), ("1", TypeError), (math.nan, ValueError), (-1, ValueError)):
                with pytest.raises(error, match="send_after must be a finite number of seconds >= 0"):
                    ctx.send_after(bad, Ping())  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="send_after"):
                ctx.send_after(math.inf, Ping())
            for period in (0, -1.0, math.inf, math.nan):
                with pytest.raises(ValueError, match="send_every must be a finite number of seconds > 0"):
                    ctx.send_every(period, Ping())
            timer = ctx.send_after(1, Ping(1))
            for bad in (-0.5, math.nan, math.inf):
                with pytest.raises(ValueError, match=r"Timer\.reset"):
                    timer.reset(bad)
            with pytest.raises(TypeError, match=r"Timer\.reset"):
                timer.reset(False)
            checked.append("all")
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.pings.append(event.n)
            self.ctx.shutdown()

    agent = Timed()
    await agent.run()
    assert checked == ["all"]
    assert agent.pings == [1]  # the refused resets left the timer as it was


def test_backoff_and_retry_policy_refuse_bools_nan_infinity_and_out_of_range_values() -> None:
    """Backoff and RetryPolicy fields: bools and strings are TypeErrors, out-of-range numbers ValueErrors."""
    type_errors: list[dict[str, Any]] = [
        {"initial": True},
        {"max_delay": "1"},
        {"factor": True},
        {"factor": "2"},
        {"jitter": True},
        {"jitter": None},
    ]
    for fields in type_errors:
        with pytest.raises(TypeError):
            hybrid.Backoff(**fields)
    value_errors: list[dict[str, Any]] = [
        {"initial": -1},
        {"initial": math.nan},
        {"max_delay": math.inf},
        {"factor": 0.5},
        {"factor": math.inf},
        {"factor": math.nan},
        {"jitter": 1.5},
        {"jitter": math.nan},
    ]
    for fields in value_errors:
        with pytest.raises(ValueError):
            hybrid.Backoff(**fields)
    with pytest.raises(TypeError, match="attempts"):
        hybrid.RetryPolicy(attempts=True)
    with pytest.raises(TypeError, match="attempts"):
        hybrid.RetryPolicy(attempts=2.0)
    with pytest.raises(ValueError, match="attempts"):
        hybrid.RetryPolicy(attempts=0)
    with pytest.raises(TypeError, match="retry_on"):
        hybrid.RetryPolicy(retry_on=KeyboardInterrupt)
    with pytest.raises(ValueError, match="the retry number"):
        hybrid.Backoff().delay(0)


def test_supervisor_class_attributes_are_checked_when_the_class_is_defined() -> None:
    """Bad Supervisor class attributes fail the class statement itself (TypeError or ValueError)."""
    with pytest.raises(TypeError, match=r"Strategic\.strategy must be a hybrid\.Strategy"):

        class Strategic(Supervisor):
            strategy = "one_for_all"  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"Backed\.restart_backoff must be a hybrid\.Backoff or None"):

        class Backed(Supervisor):
            restart_backoff = 1.0  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"max_restarts must be None or an int >= 0, got True"):

        class Counted(Supervisor):
            max_restarts = True

    with pytest.raises(ValueError, match=r"max_restarts must be None or an int >= 0, got -1"):

        class Negative(Supervisor):
            max_restarts = -1

    for period in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"restart_period must be a finite number of seconds > 0"):
            type("Windowed", (Supervisor,), {"restart_period": period})
    with pytest.raises(TypeError, match=r"restart_period"):
        type("Windowed", (Supervisor,), {"restart_period": False})
    for timeout in (-1, math.nan):
        with pytest.raises(ValueError, match=r"shutdown_timeout must be a number of seconds >= 0, or math.inf"):
            type("Patient", (Supervisor,), {"shutdown_timeout": timeout})
    type("Forever", (Supervisor,), {"shutdown_timeout": math.inf})  # waits forever, as None does

    class Fine(Supervisor):
        strategy = Strategy.REST_FOR_ONE
        max_restarts = None
        restart_period = 1
        shutdown_timeout = None
        restart_backoff = hybrid.Backoff(initial=1)

    assert Fine.max_restarts is None


def test_no_sentinel_default_appears_in_a_signature() -> None:
    """Optional arguments default to None (the class's or supervisor's value); math.inf says unbounded."""
    for fn in (hybrid.spawn, hybrid.AgentRunner, hybrid.SupervisorContext.spawn):
        for parameter in inspect.signature(fn).parameters.values():
            default = parameter.default
            assert default is inspect.Parameter.empty or default is None or isinstance(default, (bool, int, str))


async def test_math_inf_is_an_unbounded_mailbox_and_none_takes_the_class_bound() -> None:
    """As trio's channels: math.inf is no bound; None keeps the class's bound."""

    class Bounded(Agent):
        mailbox_capacity = 2

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            pass

    async with trio.open_nursery() as nursery:
        assert hybrid.spawn(nursery, Bounded()).statistics().mailbox_capacity == 2
        assert hybrid.spawn(nursery, Bounded(), mailbox_capacity=None).statistics().mailbox_capacity == 2
        unbounded = hybrid.spawn(nursery, Bounded(), mailbox_capacity=math.inf)
        assert unbounded.statistics().mailbox_capacity is None
        for n in range(10):
            unbounded.send(Ping(n))
        nursery.cancel_scope.cancel()


async def test_agent_names_must_be_non_empty_strings() -> None:
    """A name that is empty or not a str is a TypeError, whichever way the agent starts."""
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="non-empty str"):
            hybrid.spawn(nursery, Pings(), name="")
        with pytest.raises(TypeError, match="non-empty str"):
            hybrid.AgentRunner(Pings(), name=7)  # type: ignore[arg-type]


# -- thread hops ---------------------------------------------------------------------


async def test_context_methods_and_timer_handles_work_from_a_sync_state_worker_thread(
    mock_clock: trio.testing.MockClock,
) -> None:
    """In a sync state, ctx.send_after/send_every, Timer.reset/cancel and ctx.stop hop to the trio thread."""

    class Threaded(Answers):
        def __init__(self) -> None:
            self.pings: list[int] = []

        def begin(self) -> Next[Self]:
            return Next.do_sync(self.plan)

        def plan(self) -> Next[Self]:
            assert threading.current_thread() is not threading.main_thread()
            kept = self.ctx.send_after(1, Ping(1))
            kept.reset(2)
            dropped = self.ctx.send_after(1, Ping(2))
            dropped.cancel()
            dropped.cancel()  # idempotent
            ticking = self.ctx.send_every(1, Ping(3))
            ticking.cancel()
            assert kept.active and not (dropped.active or ticking.active)
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.pings.append(event.n)
            await trio.to_thread.run_sync(self.ctx.stop)

    agent = Threaded()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        assert await address.request(Echo(0)) == 0  # answered once the sync state is over
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        assert agent.pings == []
        mock_clock.jump(1)
        await address.join()
    assert agent.pings == [1]
    assert address.statistics().reason == StopReason.STOPPED


async def test_awaiting_join_or_a_request_under_asyncio_in_another_thread_is_a_lifecycle_error() -> None:
    """An address awaited from a plain thread (here under asyncio) is refused before it touches anything."""
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Answers())

        async def join() -> None:
            await address.join()

        async def ask() -> int:
            return await address.request(Echo(1))

        messages: list[str] = []

        def under_asyncio() -> None:
            for work in (join, ask):
                try:
                    asyncio.run(work())
                except hybrid.LifecycleError as error:
                    messages.append(str(error))

        def in_a_plain_thread() -> None:
            thread = threading.Thread(target=under_asyncio)
            thread.start()
            thread.join()

        await trio.to_thread.run_sync(in_a_plain_thread)  # the trio loop stays free meanwhile
        assert len(messages) == 2 and all("this is another thread" in m for m in messages)
        assert await address.request(Echo(2)) == 2  # nothing was queued by the refused calls
        address.interrupt()


def test_an_address_awaited_after_its_trio_run_or_in_a_later_run_is_a_lifecycle_error() -> None:
    """join() and requests belong to the agent's trio run: later runs, or no run, in the same thread are refused."""

    async def make() -> hybrid.Address[Answers]:
        runner = hybrid.AgentRunner(Answers())
        runner.address.interrupt()
        await runner.run()
        return runner.address

    address = trio.run(make)

    async def join() -> None:
        await address.join()

    async def ask() -> int:
        return await address.request(Echo(1))

    for work in (join, ask):
        with pytest.raises(hybrid.LifecycleError, match="another trio run"):
            trio.run(work)
        with pytest.raises(hybrid.LifecycleError, match="another trio run"):
            asyncio.run(work())


# -- mailboxes -----------------------------------------------------------------------


async def test_sweeping_abandoned_requests_makes_room_for_senders_waiting_on_a_bounded_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once abandoned requests are half a full queue, they are swept out and waiting senders get their room."""
    agent = Gated()
    answers: dict[int, int] = {}
    sent: list[float] = []

    async def ask(n: int, timeout: float) -> None:
        with trio.move_on_after(timeout):
            answers[n] = await address.request(Echo(n))

    async def send_later() -> None:
        await address.send_wait(Ping(99))
        sent.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        start = trio.current_time()
        for n in range(64):
            nursery.start_soon(ask, n, 1 if n % 3 else math.inf)  # 42 give up after a second, 22 wait
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send_later)
        await trio.testing.wait_all_tasks_blocked()
        stats = address.statistics()
        assert (stats.mailbox_depth, stats.senders_waiting) == (64, 1)
        await trio.sleep(2)
        assert sent == [start + 1]  # the sweep made room while the agent still did not read
        stats = address.statistics()
        assert (stats.messages_dropped, stats.mailbox_depth) == (33, 23)  # 9 abandoned after the sweep still queued
        agent.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert answers == {n: n for n in range(0, 64, 3)}
    stats = address.statistics()
    # Taken from the mailbox: 22 answered, the ping, the interrupt and the 9 skipped abandoned requests.
    assert (stats.messages_dropped, stats.messages_handled) == (42, 22 + 1 + 1 + 9)


async def test_shutdown_from_a_helper_task_wakes_an_idle_agent(autojump_clock: trio.testing.MockClock) -> None:
    """ctx.shutdown() called by a helper while the agent waits for messages ends it without a message."""

    class Sleeper(Agent[None]):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.later)
            return Next.events()

        async def later(self) -> None:
            await trio.sleep(1)
            self.ctx.shutdown()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None: ...  # pragma: no cover - no message comes

    start = trio.current_time()
    runner = hybrid.AgentRunner(Sleeper())
    assert (await runner.run()).done
    assert trio.current_time() == start + 1
    assert runner.address.statistics().messages_handled == 0


# -- handles -------------------------------------------------------------------------


def test_handles_have_no_public_constructor() -> None:
    """Address, Context, Timer, Stream, Monitor and RequestCall are made by the runtime only."""
    handles: list[type[Any]] = [
        hybrid.Address,
        hybrid.Context,
        hybrid.Timer,
        hybrid.Stream,
        hybrid.Monitor,
        hybrid.RequestCall,
    ]
    for handle in handles:
        with pytest.raises(TypeError, match="has no public constructor"):
            handle()


async def test_a_timer_due_while_its_agent_runs_on_stop_does_not_fire_and_becomes_inactive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A timer that comes due once the mailbox has closed stops without sending."""

    class Lingers(Pings):
        def begin(self) -> Next[Self]:
            self.timer = self.ctx.send_after(1, Ping(1))
            return Next.done()

        async def on_stop(self, reason: StopReason) -> None:
            assert self.timer.active
            await trio.sleep(2)
            self.still_active = self.timer.active

    agent = Lingers()
    await agent.run()
    assert agent.pings == []
    assert agent.still_active is False


async def test_a_stream_item_arriving_while_its_agent_finishes_is_not_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An item consumed once the agent is finishing is not delivered, and no StreamEnded follows."""
    send_channel, receive_channel = trio.open_memory_channel[Ping](1)
    stopping = trio.Event()

    class Reader(Pings):
        def begin(self) -> Next[Self]:
            self.stream = self.ctx.consume(receive_channel)
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.pings.append(event.n)
            self.ctx.shutdown()

        @hybrid.on_event
        async def ended(self, event: hybrid.StreamEnded) -> None:  # pragma: no cover - must not come
            self.pings.append(-1)

        async def on_stop(self, reason: StopReason) -> None:
            stopping.set()
            await trio.sleep(1)

    agent = Reader()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        await send_channel.send(Ping(1))
        await stopping.wait()
        await send_channel.send(Ping(2))
    assert agent.pings == [1]
    assert agent.stream.items == 1
    with pytest.raises(trio.WouldBlock):
        receive_channel.receive_nowait()  # the second item was taken, not delivered


async def test_two_watchers_are_told_and_cancelling_a_monitor_twice_is_harmless() -> None:
    """Several monitors of one agent each get Ended; cancel() is idempotent, also after the end."""
    ended: list[tuple[str, str]] = []

    class Watcher(Agent[None]):
        def __init__(self, target: hybrid.Address[Pings], cancel: bool) -> None:
            self.target = target
            self.cancel = cancel

        def begin(self) -> Next[Self]:
            monitor = self.ctx.monitor(self.target)
            if self.cancel:
                monitor.cancel()
                monitor.cancel()
            self.monitor = monitor
            return Next.events()

        @hybrid.on_event
        async def target_ended(self, event: hybrid.Ended) -> None:
            ended.append((self.ctx.address.name, str(event.reason)))
            self.monitor.cancel()  # after the end: nothing to do
            self.ctx.shutdown()

    async with trio.open_nursery() as nursery:
        target = hybrid.spawn(nursery, Pings())
        first = hybrid.spawn(nursery, Watcher(target, cancel=False), name="first")
        second = hybrid.spawn(nursery, Watcher(target, cancel=False), name="second")
        third = hybrid.spawn(nursery, Watcher(target, cancel=True), name="third")
        await trio.testing.wait_all_tasks_blocked()
        target.interrupt()
        await first.join()
        await second.join()
        third.interrupt()
    assert sorted(ended) == [("first", "interrupted"), ("second", "interrupted")]


async def test_a_monitor_whose_watcher_has_ended_delivers_nothing() -> None:
    """When the watched agent ends after its watcher, the Ended event is simply not sent."""

    class Watcher(Agent[None]):
        def __init__(self, target: hybrid.Address[Pings]) -> None:
            self.target = target

        def begin(self) -> Next[Self]:
            self.ctx.monitor(self.target)
            return Next.done()

        @hybrid.on_event
        async def target_ended(self, event: hybrid.Ended) -> None: ...  # pragma: no cover - it has ended

    async with trio.open_nursery() as nursery:
        target = hybrid.spawn(nursery, Pings())
        watcher = hybrid.AgentRunner(Watcher(target))
        assert (await watcher.run()).done
        target.interrupt()
        await target.join()
    assert watcher.address.statistics().messages_dropped == 0
    assert watcher.address.statistics().messages_handled == 0


async def test_helper_tasks_and_timers_cannot_start_before_the_runner_runs() -> None:
    """ctx.start_soon and timers of an agent whose runner has not run yet are a LifecycleError."""
    agent = Pings()
    runner = hybrid.AgentRunner(agent)
    with pytest.raises(hybrid.LifecycleError, match="has not started yet"):
        agent.ctx.start_soon(trio.sleep, 1)
    with pytest.raises(hybrid.LifecycleError, match="has not started yet"):
        agent.ctx.send_after(1, Ping())
    runner.discard()
    with pytest.raises(hybrid.LifecycleError, match="has ended"):
        agent.ctx.start_soon(trio.sleep, 1)


async def test_context_interrupted_scheduled_and_agent_reflect_the_run() -> None:
    """ctx.agent is the agent, ctx.scheduled the pending transition, ctx.interrupted the interrupt."""
    seen: list[object] = []

    class Observed(Agent[None]):
        def begin(self) -> Next[Self]:
            seen.append(self.ctx.agent is self)
            seen.append(self.ctx.interrupted)
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            seen.append(self.ctx.scheduled)
            self.ctx.shutdown()
            scheduled = self.ctx.scheduled
            seen.append(scheduled is not None and "done" in repr(scheduled))

        async def on_interrupt(self) -> None:  # pragma: no cover - it shuts down first
            seen.append("interrupted")

        async def on_stop(self, reason: StopReason) -> None:
            seen.append(self.ctx.interrupted)

    runner = hybrid.AgentRunner(Observed())
    runner.address.send(Ping())
    runner.address.interrupt()
    await runner.run()
    assert seen == [True, True, None, True, True]


async def test_wait_interrupted_returns_at_once_once_interrupted(autojump_clock: trio.testing.MockClock) -> None:
    """ctx.wait_interrupted() after the interrupt (in on_interrupt, say) returns without waiting."""

    class Waits(Agent[None]):
        async def on_interrupt(self) -> None:
            start = trio.current_time()
            await self.ctx.wait_interrupted()
            self.waited = trio.current_time() - start

    agent = Waits()
    runner = hybrid.AgentRunner(agent)
    runner.address.interrupt()
    assert (await runner.run()).interrupted
    assert agent.waited == 0


async def test_a_state_interrupted_during_its_attempt_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    """An attempt that fails after the agent was interrupted goes straight to the fallback, without a retry."""

    class Retries(Agent[str]):
        def __init__(self) -> None:
            self.attempts = 0
            self.fallbacks: list[str] = []

        def begin(self) -> Next[Self]:
            policy = hybrid.RetryPolicy(attempts=5, initial=1)
            return Next.do_async(self.attempt).retry(policy).fallback(self.give_up)

        async def attempt(self) -> Next[Self]:
            self.attempts += 1
            await trio.sleep(1)
            raise RuntimeError("flaky")

        def give_up(self, error: Exception) -> Next[Self]:
            self.fallbacks.append(str(error))
            return Next.done("gave up")

    agent = Retries()
    runner = hybrid.AgentRunner(agent)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await trio.sleep(0.5)
        runner.address.interrupt()
    assert agent.attempts == 1
    assert agent.fallbacks == ["flaky"]
    assert runner.address.statistics().reason == StopReason(StopKind.INTERRUPTED)


# -- supervisors ---------------------------------------------------------------------


class Crashes(Agent[None]):
    """Fails when told to; counts its instances in `started`."""

    started: list[int] = []

    def begin(self) -> Next[Self]:
        self.started.append(len(self.started) + 1)
        return Next.events()

    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.ctx.do_next(Next.fail(RuntimeError("crashed")))

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n


class SlowToStop(Pings):
    """Takes a second to stop once interrupted."""

    async def on_interrupt(self) -> None:
        await trio.sleep(1)


async def test_supervisor_spawn_refuses_a_bad_restart_or_group_type() -> None:
    """ctx.spawn checks its arguments: restart must be a Restart, group an int (not a bool)."""

    class Checks(Supervisor[int]):
        def begin(self) -> Next[Self]:
            with pytest.raises(TypeError, match=r"restart must be a hybrid\.Restart, got 'permanent'"):
                self.ctx.spawn(Pings, restart="permanent")  # type: ignore[call-overload]
            with pytest.raises(TypeError, match="group must be an int"):
                self.ctx.spawn(Pings, group=True)
            with pytest.raises(TypeError, match="group must be an int"):
                self.ctx.spawn(Pings, group="workers")  # type: ignore[call-overload]
            with pytest.raises(TypeError, match="an agent instance or a factory"):
                self.ctx.spawn(42)  # type: ignore[call-overload]
            with pytest.raises(ValueError, match="an agent instance runs once"):
                self.ctx.spawn(Pings(), restart=Restart.PERMANENT)
            return Next.done(len(self.ctx.children()))

    assert await Checks().run() == 0


async def test_a_child_spawned_with_a_name_is_named_under_its_supervisor() -> None:
    """ctx.spawn(..., name="db") names the child "{supervisor}/db"; the name must be free."""

    class Named(Supervisor[None]):
        def begin(self) -> Next[Self]:
            self.db = self.ctx.spawn(Pings, name="db")
            self.anonymous = self.ctx.spawn(Pings())
            with pytest.raises(ValueError, match="in use"):
                self.ctx.spawn(Pings, name="db")
            return Next.events()

    agent = Named()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent, name="app")
        await trio.testing.wait_all_tasks_blocked()
        assert (agent.db.name, agent.anonymous.name) == ("app/db", "app/Pings-1")
        address.interrupt()


async def test_spawning_from_the_context_of_a_supervisor_that_has_ended_is_a_lifecycle_error() -> None:
    """A supervisor's ctx.spawn after its end is refused with LifecycleError."""

    class Brief(Supervisor[None]):
        def begin(self) -> Next[Self]:
            return Next.done()

    agent = Brief()
    await agent.run()
    with pytest.raises(hybrid.LifecycleError, match="cannot spawn children"):
        agent.ctx.spawn(Pings)


async def test_a_child_whose_helper_task_fails_is_reported_failed_and_restarted() -> None:
    """A child's failing helper task fails that run (with the helper's error); the supervisor restarts it."""
    started: list[int] = []

    class Fragile(Answers):
        def begin(self) -> Next[Self]:
            started.append(len(started) + 1)
            if len(started) == 1:
                self.ctx.start_soon(self.explode)
            return Next.events()

        async def explode(self) -> None:
            raise ValueError("helper broke")

    class Keeper(Supervisor[None]):
        def __init__(self) -> None:
            self.reasons: list[StopReason] = []

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Fragile)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.reasons.append(reason)

    agent = Keeper()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(hybrid.AgentRunner(agent).run)
        await trio.testing.wait_all_tasks_blocked()
        assert started == [1, 2]
        assert await agent.child.request(Echo(3)) == 3
        address.interrupt()
    [failed, last] = agent.reasons
    assert failed.failed and isinstance(failed.error, ValueError)
    assert str(failed.error) == "helper broke"
    assert last.interrupted


async def test_restart_intensity_exceeded_while_the_supervisor_finishes_is_only_logged(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A child failure handled while the supervisor drains cannot fail it any more: it is logged at ERROR."""

    class Strict(Supervisor[str]):
        max_restarts = 0

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Crashes)
            return Next.events()

        @hybrid.on_event
        async def quit(self, event: Quit) -> None:
            self.child.send(Crash())
            await trio.sleep(1)  # the child fails meanwhile
            self.ctx.shutdown()

    agent = Strict()
    runner = hybrid.AgentRunner(agent)
    runner.address.send(Quit())
    reason = await runner.run()
    assert reason.done
    assert not agent.child.is_alive
    [record] = [r for r in caplog.records if "while finishing" in r.getMessage()]
    assert record.levelno == logging.ERROR and "more than 0 restarts" in record.getMessage()


async def test_a_permanent_child_that_keeps_finishing_exceeds_the_intensity_with_no_child_errors() -> None:
    """Finishing is not failing, but a permanent child is restarted anyway; the intensity bounds it."""
    journal = Journal()

    class Restless(Supervisor[None]):
        max_restarts = 2

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Quick, name="quick")
            return Next.events()

    hybrid.add_instrument(journal)
    try:
        reason = await hybrid.AgentRunner(Restless(), name="restless").run()
    finally:
        hybrid.remove_instrument(journal)
    assert isinstance(reason.error, hybrid.RestartIntensityExceeded)
    assert reason.error.errors == ()
    assert reason.error.__cause__ is None
    assert journal.restarts == [("restless", "restless/quick")] * 2


async def test_one_for_all_stops_a_temporary_sibling_and_does_not_restart_it() -> None:
    """Under ONE_FOR_ALL, a temporary sibling is stopped with the others but never started again."""
    Crashes.started = []

    class Family(Supervisor[None]):
        strategy = Strategy.ONE_FOR_ALL

        def begin(self) -> Next[Self]:
            self.temporary = self.ctx.spawn(Pings())
            self.permanent = self.ctx.spawn(Crashes)
            return Next.events()

    agent = Family()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(hybrid.AgentRunner(agent).run)
        await trio.testing.wait_all_tasks_blocked()
        agent.permanent.send(Crash())
        await trio.testing.wait_all_tasks_blocked()
        assert not agent.temporary.is_alive
        assert Crashes.started == [1, 2]
        assert await agent.permanent.request(Echo(5)) == 5
        assert agent.ctx.children() == [agent.permanent]
        address.interrupt()


async def test_a_supervisor_cancelled_during_a_restart_backoff_gives_the_child_address_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restart that will not happen (its supervisor was cancelled in the backoff) leaves the address closed."""
    Crashes.started = []

    class Slow(Supervisor[None]):
        restart_backoff = hybrid.Backoff(initial=10)

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(Crashes)
            return Next.events()

    agent = Slow()
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hybrid.AgentRunner(agent).run)
            agent.child.send(Crash())
            await trio.sleep(1)
            assert agent.child.is_alive  # waiting for its restart
    assert Crashes.started == [1]
    assert not agent.child.is_alive
    with pytest.raises(hybrid.AgentStopped):
        agent.child.send(Crash())


async def test_a_supervisor_whose_on_interrupt_schedules_done_stops_its_children_then_ends_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """on_interrupt may choose the supervisor's next transition; its children still stop before its on_stop."""

    class Hasty(Supervisor[str]):
        shutdown_timeout = None

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(SlowToStop(), group=1)
            return Next.events()

        async def on_interrupt(self) -> None:
            self.ctx.do_next(Next.done("hasty"))

        async def on_stop(self, reason: StopReason) -> None:
            self.child_alive_at_stop = self.child.is_alive
            self.stopped_at = trio.current_time()

    agent = Hasty()
    runner = hybrid.AgentRunner(agent)
    start = trio.current_time()
    runner.address.interrupt()
    assert (await runner.run()).done
    assert runner.output == "hasty"
    assert agent.child_alive_at_stop is False
    assert agent.stopped_at == start + 1


async def test_a_supervisor_shutting_down_abandons_a_restart_whose_factory_failed_and_waits_its_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restart waiting out its backoff after a factory failure makes no new instance once the supervisor stops."""
    made: list[float] = []

    def fragile() -> Crashes:
        made.append(trio.current_time())
        if len(made) > 1:
            raise RuntimeError("no more")
        return Crashes()

    class SlowerToStop(Pings):
        async def on_interrupt(self) -> None:
            await trio.sleep(60)

    class Stubborn(Supervisor[None]):
        restart_backoff = hybrid.Backoff(initial=10)
        shutdown_timeout = None

        def begin(self) -> Next[Self]:
            self.ctx.spawn(SlowerToStop(), group=1)
            self.child = self.ctx.spawn(fragile, group=0)
            return Next.events()

    agent = Stubborn()
    runner = hybrid.AgentRunner(agent)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        address = await nursery.start(runner.run)
        agent.child.send(Crash())
        await trio.sleep(11)  # the child failed, then its factory at the restart; next try in 20s
        assert made == [start, start + 10]
        address.interrupt()  # its slower child takes a minute to stop: past the next try
    assert made == [start, start + 10]
    assert not agent.child.is_alive
    assert trio.current_time() == start + 71
    assert runner.address.statistics().reason == StopReason.INTERRUPTED


async def test_a_supervisor_cancelled_while_a_one_for_all_restart_stops_the_siblings_closes_every_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled in the middle of a restart, a supervisor leaves no child address waiting for a successor."""
    Crashes.started = []

    class Family(Supervisor[None]):
        strategy = Strategy.ONE_FOR_ALL

        def begin(self) -> Next[Self]:
            self.sibling = self.ctx.spawn(SlowToStop)
            self.child = self.ctx.spawn(Crashes)
            return Next.events()

    agent = Family()
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hybrid.AgentRunner(agent).run)
            agent.child.send(Crash())
            await trio.sleep(0.5)  # the sibling takes a second to stop for the restart
            assert agent.sibling.is_alive and agent.child.is_alive
            nursery.cancel_scope.cancel()
    assert Crashes.started == [1]
    assert not agent.sibling.is_alive
    assert not agent.child.is_alive


async def test_a_timer_handler_that_raises_goes_to_on_error_and_instruments_see_the_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A tick is an event like any other: its handler's error goes to on_error, instruments see the event."""
    errors: list[Exception] = []
    seen: list[object] = []

    class Watch(hybrid.Instrument):
        def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
            seen.append(message)

    class Ticking(Agent):
        def begin(self) -> Next[Self]:
            self.ctx.send_after(1, Ping(7))
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            raise ValueError(f"tick {event.n}")

        async def on_error(self, error: Exception) -> None:
            errors.append(error)

    hybrid.add_instrument(Watch())
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Ticking())
        await trio.sleep(2)
        address.interrupt()
    assert [str(error) for error in errors] == ["tick 7"]
    assert seen == [Ping(7)]


async def test_a_type_error_raised_inside_a_plain_async_state_is_not_mistaken_for_a_sync_function() -> None:
    """Without modifiers too, the state's own TypeError reaches the caller unchanged."""

    class Buggy(Agent[int]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            raise TypeError("a bug of its own")

    with pytest.raises(TypeError, match="a bug of its own"):
        await Buggy().run()


async def test_spawning_from_on_child_ended_once_the_supervisor_is_ending_is_refused() -> None:
    """After its own ending began, a supervisor starts no more children: spawn raises LifecycleError."""
    refused: list[Exception] = []

    class Worker(Agent):
        pass

    class Replacing(Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Worker())
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.shutdown()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.ctx.spawn(Worker())

        async def on_error(self, error: Exception) -> None:
            refused.append(error)

    async with trio.open_nursery() as nursery:
        address = await hybrid.start(nursery, Replacing())
        address.send(Ping())
    assert [type(error) for error in refused] == [hybrid.LifecycleError]
    assert "starts no more children" in str(refused[0])


async def test_a_fed_item_still_held_when_the_pipeline_is_cancelled_is_reported_as_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The item feed() handed over but the pipeline never took in is reported, never lost silently."""

    async def stuck(item: int) -> int:
        await trio.sleep(3600)
        return item  # pragma: no cover

    async with hybrid.open_pipeline(hybrid.Stage(stuck), buffer=1) as run:
        for n in range(3):  # 0: in the stage; 1: in its buffer; 2: held by the feeder
            await run.feed(n)
        await trio.sleep(1)
        run.address.interrupt()
        run.address.interrupt()  # the second interrupt cancels what is in the pipeline
        await run.address.join()
    assert [(skipped.stage, skipped.item) for skipped in run.skipped] == [("<input>", 2)]


async def test_a_child_exit_waits_for_room_in_a_full_bounded_supervisor_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the supervisor's bounded mailbox full, the exit notice waits for room; the exit is still reported."""
    ended: list[str] = []
    gate = trio.Event()

    class Brief(Agent):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            await trio.sleep(1)
            return Next.done()

    class Busy(Supervisor):
        mailbox_capacity = 1

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Brief(), name="brief")
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            await gate.wait()  # busy until the test opens the gate

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            ended.append(f"{address.name} {reason}")

    async with trio.open_nursery() as nursery:
        sup = await hybrid.start(nursery, Busy(), name="busy")
        sup.send(Ping(1))  # taken: the handler waits on the gate
        await trio.testing.wait_all_tasks_blocked()
        sup.send(Ping(2))  # queued: the mailbox is full
        await trio.sleep(2)  # the child ended at 1; its exit notice waits for room
        assert ended == []
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ended == ["busy/brief done"]
        sup.interrupt()
