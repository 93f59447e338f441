"""Actor mode: handlers, dispatch, events, requests, responses, mailboxes."""

# Classes defined only to check that their definition raises:
# pyright: reportUnusedClass=false

from __future__ import annotations

import copy
from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next
from tests.fairness import gaps, sample_progress
from tests.messages import Boom, Echo, Ping


class Server(Agent):
    def __init__(self) -> None:
        self.pings: list[int] = []

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.pings.append(event.n)

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n

    @hybrid.on_request
    async def boom(self, request: Boom) -> int:
        raise LookupError("no such thing")


async def test_events_are_handled_in_the_order_they_were_sent() -> None:
    async with trio.open_nursery() as nursery:
        server = Server()
        address = hybrid.spawn(nursery, server)
        for n in range(500):
            address.send(Ping(n))
        assert await address.request(Echo(7)) == 7
        assert server.pings == list(range(500))
        address.interrupt()


async def test_a_request_handler_error_is_raised_in_the_caller_and_the_server_keeps_running() -> None:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Server())
        with pytest.raises(LookupError, match="no such thing"):
            await address.request(Boom())
        assert await address.request(Echo(1)) == 1
        assert address.is_alive
        address.interrupt()


async def test_sending_an_unhandled_type_raises_type_error_in_the_sender() -> None:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Server())
        with pytest.raises(TypeError, match="Server has no @hybrid.on_event handler for str"):
            address.send("hello")
        with pytest.raises(hybrid.UnhandledMessage, match="no @hybrid.on_request handler for Ping"):
            address.request(Ping())  # type: ignore[arg-type]
        address.interrupt()
    assert address.statistics().messages_handled == 1  # only the interrupt


async def test_sending_to_an_agent_that_has_ended_raises_agent_stopped() -> None:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Server())
        address.interrupt()
        await address.join()
    assert not address.is_alive
    with pytest.raises(hybrid.AgentStopped):
        address.send(Ping())
    with pytest.raises(hybrid.AgentStopped):
        await address.request(Echo())
    with pytest.raises(hybrid.AgentStopped):
        await address.send_wait(Ping())
    address.interrupt()  # interrupting an ended agent does nothing


async def test_a_request_whose_server_stops_before_answering_raises_agent_stopped() -> None:
    class Stops(Agent):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.stop()

        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            return request.n

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Stops())
        address.send(Ping())  # queued before the request: the agent stops first
        with pytest.raises(hybrid.AgentStopped, match="ended before answering"):
            await address.request(Echo(1))
    assert address.statistics().messages_dropped == 1


async def test_a_request_whose_server_fails_while_answering_raises_agent_stopped() -> None:
    class Dies(Agent):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            self.ctx.stop()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Dies())

        async def second_interrupt() -> None:
            await trio.sleep(0.01)
            address.interrupt()
            address.interrupt()

        nursery.start_soon(second_interrupt)
        with pytest.raises(hybrid.AgentStopped):
            await address.request(Echo())


async def test_a_timed_out_request_raises_too_slow_and_its_late_reply_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answered: list[int] = []

    class Slow(Agent):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            await trio.sleep(10)
            answered.append(request.n)
            return request.n

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Slow())
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(1):
                await address.request(Echo(1))
        # The late answer to request 1 must not be taken for the answer to 2.
        assert await address.request(Echo(2)) == 2
        assert answered == [1, 2]
        address.interrupt()


async def test_unions_in_annotations_register_one_handler_for_several_types() -> None:
    @attrs.frozen
    class A:
        pass

    @attrs.frozen
    class B:
        pass

    @attrs.frozen
    class Count(hybrid.Request[int]):
        pass

    class Both(Agent):
        def __init__(self) -> None:
            self.seen: list[str] = []

        @hybrid.on_event
        async def either(self, event: A | B) -> None:
            self.seen.append(type(event).__name__)

        @hybrid.on_request
        async def count(self, request: Count) -> int:
            return len(self.seen)

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Both())
        address.send(A())
        address.send(B())
        assert await address.request(Count()) == 2
        address.interrupt()


async def test_a_subclass_of_a_handled_type_is_dispatched_to_the_base_handler() -> None:
    class Base:
        pass

    class Derived(Base):
        pass

    class Special(Derived):
        pass

    class Handles(Agent):
        def __init__(self) -> None:
            self.seen: list[str] = []

        @hybrid.on_event
        async def base(self, event: Base) -> None:
            self.seen.append("base:" + type(event).__name__)

        @hybrid.on_event
        async def special(self, event: Special) -> None:
            self.seen.append("special")

        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            return 0

    async with trio.open_nursery() as nursery:
        agent = Handles()
        address = hybrid.spawn(nursery, agent)
        address.send(Derived())
        address.send(Special())
        address.send(Derived())
        await address.request(Echo())
        assert agent.seen == ["base:Derived", "special", "base:Derived"]
        address.interrupt()


def test_two_handlers_for_one_type_is_a_type_error_at_class_definition() -> None:
    with pytest.raises(TypeError, match="two @hybrid.on_event handlers for Ping: first and second"):

        class Twice(Agent):
            @hybrid.on_event
            async def first(self, event: Ping) -> None: ...

            @hybrid.on_event
            async def second(self, event: Ping | int) -> None: ...


def test_a_missing_annotation_is_a_type_error_at_class_definition() -> None:
    with pytest.raises(hybrid.HandlerDefinitionError, match="annotate parameter 'event'"):

        class Bare(Agent):
            @hybrid.on_event
            async def handle(self, event) -> None:  # type: ignore[no-untyped-def]
                ...


def test_an_unresolvable_annotation_is_a_type_error_at_class_definition() -> None:
    with pytest.raises(TypeError, match="cannot resolve the annotation 'Later'"):

        class Early(Agent):
            @hybrid.on_event
            async def handle(self, event: Later) -> None: ...  # type: ignore[name-defined]  # noqa: F821


def test_handler_declarations_are_checked_at_class_definition() -> None:
    with pytest.raises(hybrid.HandlerDefinitionError, match="needs an 'async def' method"):

        class NotAsync(Agent):
            @hybrid.on_event  # type: ignore[type-var]
            def handle(self, event: Ping) -> None: ...

    with pytest.raises(hybrid.HandlerDefinitionError, match=r"must take \(self, event\)"):

        class TooMany(Agent):
            @hybrid.on_event
            async def handle(self, event: Ping, extra: int) -> None: ...

    with pytest.raises(hybrid.HandlerDefinitionError, match=r"must take \(self, request, response\)"):

        class ResponseShape(Agent):
            @hybrid.on_response
            async def got(self, request: Echo) -> None: ...

    with pytest.raises(hybrid.HandlerDefinitionError, match="Ping is not a subclass of hybrid.Request"):

        class NotARequest(Agent):
            @hybrid.on_request
            async def handle(self, request: Ping) -> None: ...

    with pytest.raises(hybrid.HandlerDefinitionError, match="is not a class"):

        class Generic(Agent):
            @hybrid.on_event
            async def handle(self, event: list[int]) -> None: ...


async def test_a_subclass_inherits_handlers_and_can_override_them() -> None:
    class Child(Server):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            return request.n * 10

    async with trio.open_nursery() as nursery:
        child = Child()
        address = hybrid.spawn(nursery, child)
        address.send(Ping(3))
        assert await address.request(Echo(2)) == 20
        assert child.pings == [3]
        address.interrupt()


async def test_an_event_handler_error_goes_to_on_error_and_the_actor_keeps_running() -> None:
    errors: list[Exception] = []

    class Flaky(Server):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            if event.n == 1:
                raise RuntimeError("handler broke")
            self.pings.append(event.n)

        async def on_error(self, error: Exception) -> None:
            errors.append(error)

    async with trio.open_nursery() as nursery:
        agent = Flaky()
        address = hybrid.spawn(nursery, agent)
        for n in range(3):
            address.send(Ping(n))
        await address.request(Echo())
        assert agent.pings == [0, 2]
        assert [str(e) for e in errors] == ["handler broke"]
        address.interrupt()


async def test_the_default_on_error_logs_at_error_level(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(Server):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            raise RuntimeError("logged")

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Flaky())
        address.send(Ping())
        await address.request(Echo())
        address.interrupt()
    [record] = [r for r in caplog.records if r.name == "hybrid.agent"]
    assert record.levelname == "ERROR"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "logged"


async def test_on_error_that_raises_fails_the_agent() -> None:
    class Strict(Server):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            raise RuntimeError("handler")

        async def on_error(self, error: Exception) -> None:
            raise ValueError("escalated") from error

    class SendsToItself(Strict):
        def begin(self) -> Next[Self]:
            self.ctx.address.send(Ping())
            return Next.events()

    with pytest.raises(ValueError, match="escalated"):
        await SendsToItself().run()


class Asker(Agent[list[Any]]):
    def __init__(self, server: hybrid.Address[Server], requests: list[Echo | Boom]) -> None:
        self.server = server
        self.requests = requests
        self.answers: list[Any] = []

    def begin(self) -> Next[Self]:
        for request in self.requests:
            self.server.request(request).forward_to(self.ctx)
        return Next.events()

    @hybrid.on_response
    async def got(self, request: Echo | Boom, response: outcome.Outcome[int]) -> None:
        self.answers.append((request, response))
        if len(self.answers) == len(self.requests):
            self.ctx.do_next(Next.done(self.answers))


async def test_forward_to_delivers_answers_in_order_to_on_response() -> None:
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Server())
        answers = await Asker(server, [Echo(1), Boom(), Echo(3)]).run()
        server.interrupt()
    assert [a[0] for a in answers] == [Echo(1), Boom(), Echo(3)]
    assert answers[0][1] == outcome.Value(1)
    assert isinstance(answers[1][1], outcome.Error)
    assert isinstance(answers[1][1].error, LookupError)
    assert answers[2][1] == outcome.Value(3)


async def test_a_forwarded_request_whose_server_ends_arrives_as_an_agent_stopped_error() -> None:
    class Quits(Agent):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.stop()

        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            return request.n

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Quits())
        server.send(Ping())
        answers = await Asker(server, [Echo(1)]).run()  # type: ignore[arg-type]
    [(_, result)] = answers
    assert isinstance(result, outcome.Error)
    assert isinstance(result.error, hybrid.AgentStopped)


async def test_forward_to_checks_the_response_handler_and_the_server_at_call_time() -> None:
    class NoResponses(Agent[None]):
        def __init__(self, server: hybrid.Address[Server]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            self.server.request(Echo()).forward_to(self.ctx)
            return Next.done()

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Server())
        with pytest.raises(hybrid.UnhandledMessage, match="no @hybrid.on_response handler for Echo"):
            await NoResponses(server).run()
        server.interrupt()
        await server.join()
        with pytest.raises(hybrid.AgentStopped):
            await Asker(server, [Echo(1)]).run()


async def test_a_request_call_is_used_once() -> None:
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Server())
        call = server.request(Echo(5))
        assert await call == 5
        with pytest.raises(hybrid.LifecycleError, match="only once"):
            await call
        server.interrupt()


async def test_a_bounded_mailbox_raises_mailbox_full_on_send_and_send_wait_waits_for_room() -> None:
    class Slow(Server):
        mailbox_capacity = 2

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            await trio.sleep(0.001)
            self.pings.append(event.n)

    async with trio.open_nursery() as nursery:
        agent = Slow()
        address = hybrid.spawn(nursery, agent)
        address.send(Ping(0))
        address.send(Ping(1))
        with pytest.raises(hybrid.MailboxFull, match="mailbox is full"):
            address.send(Ping(2))
        with pytest.raises(trio.WouldBlock):
            address.send(Ping(2))
        for n in range(2, 20):
            await address.send_wait(Ping(n))
            assert address.statistics().mailbox_depth <= 2
        assert await address.request(Echo(0)) == 0  # requests wait for room too
        assert agent.pings == list(range(20))
        stats = address.statistics()
        assert stats.mailbox_capacity == 2
        address.interrupt()


async def test_spawn_mailbox_capacity_overrides_the_class_attribute() -> None:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Server(), mailbox_capacity=1)
        address.send(Ping())
        with pytest.raises(hybrid.MailboxFull):
            address.send(Ping())
        address.interrupt()
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="mailbox_capacity must be an int >= 1, or math.inf")):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, Server(), mailbox_capacity=0)
    with pytest.raises(ValueError, match="mailbox_capacity must be an int >= 1, or math.inf"):

        class Bad(Agent):
            mailbox_capacity = -3


async def test_senders_waiting_for_room_learn_when_the_agent_ends() -> None:
    class Busy(Server):
        mailbox_capacity = 1

        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)  # the mailbox is not read in a state

        async def work(self) -> Next[Self]:
            await trio.sleep_forever()

    outcomes: list[str] = []
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Busy())
        address.send(Ping(1))

        async def waiter() -> None:
            with pytest.raises(hybrid.AgentStopped):
                await address.send_wait(Ping(2))
            outcomes.append("told")

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert address.statistics().senders_waiting == 1
        address.interrupt()
        address.interrupt()  # the second interrupt cancels the state
    assert outcomes == ["told"]
    assert address.statistics().messages_dropped == 1


async def test_statistics_report_phase_counters_and_reason() -> None:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Server())
        first = address.statistics()
        assert first.phase == "starting"
        assert first.name == "Server-1"
        address.send(Ping())
        await address.request(Echo())
        stats = address.statistics()
        assert stats.phase == "events"
        assert stats.messages_handled == 2
        assert stats.reason is None
        address.interrupt()
        await address.join()
    final = address.statistics()
    assert final.phase == "ended"
    assert final.reason is not None and final.reason.interrupted


async def test_addresses_are_hashable_and_copies_are_equal() -> None:
    async with trio.open_nursery() as nursery:
        one = hybrid.spawn(nursery, Server())
        two = hybrid.spawn(nursery, Server())
        assert copy.copy(one) == one
        assert copy.deepcopy(one) is one
        assert one != two
        assert len({one, two, copy.copy(one)}) == 2
        assert "Server" in repr(one)
        one.interrupt()
        two.interrupt()


async def test_messages_sent_before_the_agent_starts_are_queued_in_order() -> None:
    async with trio.open_nursery() as nursery:
        server = Server()
        address = hybrid.spawn(nursery, server)
        address.send(Ping(1))
        address.send(Ping(2))
        assert address.statistics().mailbox_depth == 2
        assert await address.request(Echo()) == 0
        assert server.pings == [1, 2]
        address.interrupt()


async def test_the_message_loop_yields_at_least_every_64_messages() -> None:
    progress: list[int] = []

    class Counter(Agent):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:  # never awaits anything
            progress.append(event.n)

    seen: list[int] = []

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Counter())
        for n in range(1000):
            address.send(Ping(n))
        nursery.start_soon(sample_progress, progress, 1000, seen)
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert len(seen) >= 1000 // 128
    assert max(gaps(seen)) <= 2 * 64  # see the note in test_transitions about batch order


async def test_send_and_interrupt_are_safe_from_a_worker_thread() -> None:
    async with trio.open_nursery() as nursery:
        server = Server()
        address = hybrid.spawn(nursery, server)

        def from_thread() -> None:
            address.send(Ping(1))
            address.send(Ping(2))
            with pytest.raises(hybrid.UnhandledMessage):
                address.send(3.5)

        await trio.to_thread.run_sync(from_thread)
        await address.request(Echo())
        assert server.pings == [1, 2]
        await trio.to_thread.run_sync(address.interrupt)
        await address.join()


async def test_fairness_counts_messages_and_transitions_together_across_modes() -> None:
    progress: list[int] = []

    class Bouncer(Agent):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            progress.append(event.n)
            self.ctx.do_next(Next.do_async(self.back))  # a state that returns at once

        async def back(self) -> Next[Self]:
            return Next.events()

    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Bouncer())
        for n in range(1000):
            address.send(Ping(n))
        nursery.start_soon(sample_progress, progress, 1000, seen)
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert len(seen) >= 1000 // 64
    assert max(gaps(seen)) <= 64  # two steps per message; at most two turns of 64 steps in a row


async def test_a_caller_cancelled_before_its_request_is_queued_sends_nothing() -> None:
    agent = Server()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        with trio.CancelScope() as scope:
            scope.cancel()
            await address.request(Echo(1))
        assert await address.request(Echo(2)) == 2
        assert address.statistics().messages_handled == 1
        address.interrupt()


async def test_an_interrupt_takes_no_room_in_a_bounded_mailbox() -> None:
    class Bounded(Server):
        mailbox_capacity = 1

        def begin(self) -> Next[Self]:
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            await trio.sleep(0.01)
            return Next.events()

        async def on_interrupt(self) -> None:
            self.ctx.do_next(Next.events())  # keeps running, as a supervisor does

    async with trio.open_nursery() as nursery:
        agent = Bounded()
        address = hybrid.spawn(nursery, agent)
        address.interrupt()  # queued as the marker while in the state
        address.send(Ping(1))  # the one slot is still free
        with trio.fail_after(5):
            await address.send_wait(Ping(2))
            assert await address.request(Echo(3)) == 3
        assert agent.pings == [1, 2]
        nursery.cancel_scope.cancel()


async def test_an_answer_forwarded_to_a_client_that_is_finishing_is_still_handled() -> None:
    class Slow(Agent):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            await trio.sleep(0.01)
            return request.n

    got: list[int] = []

    class Client(Agent[None]):
        def __init__(self, server: hybrid.Address[Slow]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            self.server.request(Echo(7)).forward_to(self.ctx)
            self.ctx.address.send(Ping())
            return Next.events()

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            self.ctx.shutdown()
            await trio.sleep(0.05)  # still draining when the answer comes

        @hybrid.on_response
        async def answered(self, request: Echo, response: outcome.Outcome[int]) -> None:
            got.append(response.unwrap())

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Slow())
        client = Client(server)
        client_address = hybrid.spawn(nursery, client)
        client_address.send(Ping())  # keeps the client draining
        await client_address.join()
        server.interrupt()
    assert got == [7]


async def test_a_failed_answer_to_a_client_that_has_ended_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Fails(Agent):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            await trio.sleep(0.01)
            raise LookupError("late failure")

    class Leaves(Agent[None]):
        def __init__(self, server: hybrid.Address[Fails]) -> None:
            self.server = server

        def begin(self) -> Next[Self]:
            self.server.request(Echo()).forward_to(self.ctx)
            return Next.done()

        @hybrid.on_response
        async def answered(self, request: Echo, response: outcome.Outcome[int]) -> None: ...  # pragma: no cover

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Fails())
        await Leaves(server).run()
        await trio.sleep(0.05)
        server.interrupt()
    assert any("the failed answer" in r.message and r.levelname == "WARNING" for r in caplog.records)
