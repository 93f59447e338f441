"""hybrid.tracing: OpenTelemetry spans per handled message and per state, parented across agents.

Every test passes its own SDK provider, exporting to memory; none sets the
global provider.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from typing_extensions import Self

import hybrid
import hybrid.tracing
from hybrid import Agent, Next
from hybrid.tracing import TracingInstrument


@attrs.frozen
class Lookup(hybrid.Request[int]):
    key: int


@attrs.frozen
class Fetch(hybrid.Request[int]):
    key: int


@attrs.frozen
class Note:
    text: str


@attrs.frozen
class Start:
    pass


def traced() -> tuple[TracingInstrument, InMemorySpanExporter]:
    """An instrument with its own SDK provider (never the global one), and the spans it exports."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingInstrument(provider), exporter


def named(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


class Third(Agent):
    @hybrid.on_request
    async def fetch(self, request: Fetch) -> int:
        return request.key * 10


class Middle(Agent):
    def __init__(self, third: hybrid.Address[Third]) -> None:
        self.third = third

    @hybrid.on_request
    async def lookup(self, request: Lookup) -> int:
        return await self.third.request(Fetch(request.key)) + 1


class Client(Agent[int]):
    def __init__(self, middle: hybrid.Address[Middle]) -> None:
        self.middle = middle
        self.span_in_thread: int | None = None

    def begin(self) -> Next[Self]:
        return Next.do_async(self.ask)

    async def ask(self) -> Next[Self]:
        return Next.do_sync(self.double, await self.middle.request(Lookup(4)))

    def double(self, value: int) -> Next[Self]:
        self.span_in_thread = trace.get_current_span().get_span_context().span_id
        return Next.done(value * 2)


async def test_a_request_chain_across_three_agents_is_one_trace_of_nested_spans() -> None:
    """Client state -> Middle's request span -> Third's request span: one trace, each the parent of the next."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        third = hybrid.spawn(nursery, Third(), name="third")
        middle = hybrid.spawn(nursery, Middle(third), name="middle")
        client = Client(middle)
        assert await client.run() == 82
        # The client ran in this task: its state contexts were detached when it ended.
        assert trace.get_current_span() is trace.INVALID_SPAN
        middle.interrupt()
        third.interrupt()
    spans = exporter.get_finished_spans()
    ask = named(spans, "Client state ask")
    lookup = named(spans, "Middle handle Lookup")
    fetch = named(spans, "Third handle Fetch")
    double = named(spans, "Client state double")
    assert {trace_id(span) for span in (ask, lookup, fetch)} == {trace_id(ask)}
    assert parent_id(ask) is None
    assert parent_id(lookup) == span_id(ask)
    assert parent_id(fetch) == span_id(lookup)
    assert ask.kind is SpanKind.INTERNAL
    assert lookup.kind is fetch.kind is SpanKind.SERVER
    assert lookup.attributes is not None
    assert lookup.attributes["hybrid.agent.name"] == "middle"
    assert lookup.attributes["hybrid.agent.type"] == "Middle"
    assert lookup.attributes["hybrid.message.type"] == "Lookup"
    assert lookup.attributes["hybrid.message.kind"] == "request"
    wait = lookup.attributes["hybrid.mailbox.wait"]
    assert isinstance(wait, float)
    assert wait >= 0
    # The sync state ran in a worker thread, inside its own span.
    assert client.span_in_thread == span_id(double)
    assert double.attributes is not None
    assert double.attributes["hybrid.state"] == "double"
    assert double.attributes["hybrid.state.kind"] == "do_sync"
    assert parent_id(double) is None  # states follow each other as siblings, not nested
    assert double.status.status_code is StatusCode.UNSET
    assert not instrument._agents


class Listener(Agent):
    def __init__(self) -> None:
        self.notes: list[str] = []

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        self.notes.append(event.text)


class Announcer(Agent):
    """Sends a note from a state, and from a handler that then schedules two states."""

    def __init__(self, listener: hybrid.Address[Listener]) -> None:
        self.listener = listener

    def begin(self) -> Next[Self]:
        return Next.do_async(self.announce)

    async def announce(self) -> Next[Self]:
        self.listener.send(Note("from a state"))
        return Next.events()

    @hybrid.on_event
    async def start(self, event: Start) -> None:
        self.listener.send(Note("from a handler"))
        self.ctx.do_next(Next.do_async(self.first))

    async def first(self) -> Next[Self]:
        return Next.do_async(self.second)

    async def second(self) -> Next[Self]:
        return Next.events()


async def test_events_are_children_of_the_span_that_sent_them_and_handlers_parent_the_states_they_schedule() -> None:
    """An event's span (CONSUMER) has the sender's span as parent; a scheduled state descends from its handler."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        listener = hybrid.spawn(nursery, Listener())
        announcer = hybrid.spawn(nursery, Announcer(listener))
        await trio.testing.wait_all_tasks_blocked()
        with trace.get_tracer("test", tracer_provider=TracerProvider()).start_as_current_span("user action"):
            announcer.send(Start())
        await trio.testing.wait_all_tasks_blocked()
        announcer.interrupt()
        listener.interrupt()
    spans = exporter.get_finished_spans()
    announce = named(spans, "Announcer state announce")
    notes = [span for span in spans if span.name == "Listener handle Note"]
    start = named(spans, "Announcer handle Start")
    first = named(spans, "Announcer state first")
    second = named(spans, "Announcer state second")
    assert [span.kind for span in notes] == [SpanKind.CONSUMER, SpanKind.CONSUMER]
    assert start.kind is SpanKind.CONSUMER
    assert [parent_id(span) for span in notes] == [span_id(announce), span_id(start)]
    assert start.parent is not None  # the "user action" span of the sending task (another provider)
    assert trace_id(start) == start.parent.trace_id != trace_id(announce)
    assert parent_id(first) == parent_id(second) == span_id(start)
    assert trace_id(second) == trace_id(start)
    assert start.attributes is not None
    assert start.attributes["hybrid.message.kind"] == "event"


class Forwarder(Agent):
    """Asks without waiting; the answer arrives at its on_response handler."""

    def __init__(self, middle: hybrid.Address[Middle]) -> None:
        self.middle = middle
        self.answers: list[int] = []

    @hybrid.on_event
    async def start(self, event: Start) -> None:
        self.middle.request(Lookup(1)).forward_to(self.ctx)

    @hybrid.on_response
    async def got(self, request: Lookup, response: outcome.Outcome[int]) -> None:
        self.answers.append(response.unwrap())


async def test_a_forwarded_answer_is_a_consumer_span_child_of_the_server_span() -> None:
    """on_response: named after the request with 'response', kind CONSUMER, parent the span that answered."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        third = hybrid.spawn(nursery, Third())
        middle = hybrid.spawn(nursery, Middle(third))
        forwarder = Forwarder(middle)
        address = hybrid.spawn(nursery, forwarder)
        address.send(Start())
        await trio.testing.wait_all_tasks_blocked()
        assert forwarder.answers == [11]
        for each in (address, middle, third):
            each.interrupt()
    spans = exporter.get_finished_spans()
    start = named(spans, "Forwarder handle Start")
    lookup = named(spans, "Middle handle Lookup")
    answer = named(spans, "Forwarder handle Lookup response")
    assert answer.kind is SpanKind.CONSUMER
    assert answer.attributes is not None
    assert answer.attributes["hybrid.message.kind"] == "response"
    assert parent_id(lookup) == span_id(start)
    assert parent_id(answer) == span_id(lookup)


class Stuck(Agent):
    @hybrid.on_event
    async def note(self, event: Note) -> None:
        await trio.sleep_forever()


async def test_a_handler_cut_short_by_cancellation_ends_its_span_as_an_error() -> None:
    """Cancelled mid-handler (no message_handled): agent_stopped ends the span, status ERROR 'cancelled'."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Stuck())
        address.send(Note("hang"))
        await trio.testing.wait_all_tasks_blocked()
        assert exporter.get_finished_spans() == ()
        nursery.cancel_scope.cancel()
    span = named(exporter.get_finished_spans(), "Stuck handle Note")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "cancelled"
    assert not instrument._agents


class Sleeper(Agent):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.nap)

    async def nap(self) -> Next[Self]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_state_cut_short_by_a_second_interrupt_ends_its_span_without_error() -> None:
    """Interrupted is a normal ending: the state's span ends with its status unset."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Sleeper())
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
        address.interrupt()
    span = named(exporter.get_finished_spans(), "Sleeper state nap")
    assert span.status.status_code is StatusCode.UNSET
    assert not instrument._agents


class Failing(Agent):
    def __init__(self, how: str) -> None:
        self.how = how

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        if self.how == "raise":
            raise ValueError("broken")
        return Next.fail(KeyError("missing"))


@pytest.mark.parametrize(
    ("how", "error_type", "description"),
    [("raise", "ValueError", "ValueError: broken"), ("return", "KeyError", "KeyError: 'missing'")],
)
async def test_a_failing_state_records_the_exception_on_its_span(how: str, error_type: str, description: str) -> None:
    """A state that raises or returns Next.fail: its span records the exception, status ERROR."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    with pytest.raises((ValueError, KeyError)):
        await Failing(how).run()
    span = named(exporter.get_finished_spans(), "Failing state work")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == description
    assert [event.name for event in span.events] == ["exception"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.type"] == error_type
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert not instrument._agents


class Quitter(Agent):
    @hybrid.on_event
    async def note(self, event: Note) -> None:
        self.ctx.do_next(Next.fail(RuntimeError("quit")))


async def test_a_handler_that_fails_its_agent_leaves_nothing_open() -> None:
    """Next.fail scheduled by a handler: the handler's span ended normally; no state span to mark."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    runner = hybrid.AgentRunner(Quitter())
    runner.address.send(Note("bye"))
    await runner.run()
    span = named(exporter.get_finished_spans(), "Quitter handle Note")
    assert span.status.status_code is StatusCode.UNSET
    assert not instrument._agents


class Pause:
    """A performer: a custom state kind."""

    async def perform(self, agent: Any) -> Next[Any]:
        await trio.lowlevel.checkpoint()
        return Next.do_async(agent.last)


class Shapes(Agent[str]):
    def begin(self) -> Next[Self]:
        return Next.perform(Pause())

    async def last(self) -> Next[Self]:
        return Next.done("ok")


async def test_a_performer_state_is_named_after_its_class() -> None:
    """State names are Next.state_name: a function's __name__, a performer's class."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    assert await Shapes().run() == "ok"
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["Shapes state Pause", "Shapes state last"]


async def test_a_message_queued_before_registration_starts_a_new_trace_without_a_wait() -> None:
    """No stamp (queued before the instrument): the span has no parent and no mailbox.wait attribute."""
    instrument, exporter = traced()
    async with trio.open_nursery() as nursery:
        listener = hybrid.spawn(nursery, Listener())
        listener.send(Note("early"))
        hybrid.add_instrument(instrument)
        await trio.testing.wait_all_tasks_blocked()
        listener.interrupt()
    span = named(exporter.get_finished_spans(), "Listener handle Note")
    assert span.parent is None
    assert span.attributes is not None
    assert "hybrid.mailbox.wait" not in span.attributes


class Gate(Agent):
    def __init__(self) -> None:
        self.gate = trio.Event()

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        await self.gate.wait()


async def test_a_handler_already_running_at_registration_makes_no_span() -> None:
    """message_handled without message_received (registered mid-handler) is ignored."""
    instrument, exporter = traced()
    hybrid.add_instrument(hybrid.Instrument())  # another one watches: the core reports the handler's end
    async with trio.open_nursery() as nursery:
        gate = Gate()
        address = hybrid.spawn(nursery, gate)
        address.send(Note("in flight"))
        await trio.testing.wait_all_tasks_blocked()
        hybrid.add_instrument(instrument)
        gate.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert exporter.get_finished_spans() == ()
    assert not instrument._agents


class BrokenTracer(trace.NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        raise RuntimeError("the exporter is down")


class BrokenProvider(trace.NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return BrokenTracer()


async def test_an_instrument_that_raises_is_removed_and_the_agents_go_on(caplog: pytest.LogCaptureFixture) -> None:
    """A broken tracer makes the hook raise: the core logs it, removes the instrument, the agents carry on."""
    instrument = TracingInstrument(BrokenProvider())
    hybrid.add_instrument(instrument)
    with caplog.at_level(logging.ERROR, logger="hybrid.instrument"):
        assert await Shapes().run() == "ok"
    assert "is removed" in caplog.text
    with pytest.raises(ValueError, match="not registered"):
        hybrid.remove_instrument(instrument)
    assert await Shapes().run() == "ok"


async def test_agent_stopped_called_from_another_task_ends_the_spans_without_detaching(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A context attached in the agent's task is never detached from another task (OTel would log an error)."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Sleeper())
        await trio.testing.wait_all_tasks_blocked()
        with caplog.at_level(logging.ERROR):
            instrument.agent_stopped(address, hybrid.StopReason.CANCELLED)  # as third-party machinery might
        assert not instrument._agents
        address.interrupt()
        address.interrupt()
    assert "detach" not in caplog.text
    span = named(exporter.get_finished_spans(), "Sleeper state nap")
    assert span.status.description == "cancelled"


def test_hooks_called_outside_a_trio_run_attach_and_detach_in_the_thread_context() -> None:
    """Outside any trio task (machinery of a third party), the state context is attached and detached there."""

    async def make() -> hybrid.Address[Shapes]:
        async with trio.open_nursery() as nursery:
            return hybrid.spawn(nursery, Shapes())

    address = trio.run(make)
    instrument, exporter = traced()
    instrument.state_entered(address, Next.do_async(Shapes().last))
    assert trace.get_current_span().get_span_context().span_id != 0
    instrument.agent_stopped(address, hybrid.StopReason.DONE)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert [span.name for span in exporter.get_finished_spans()] == ["Shapes state last"]


class Worker(Agent[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def begin(self) -> Next[Self]:
        return Next.do_async(self.step, 0) if self.n % 3 else Next.events()

    async def step(self, i: int) -> Next[Self]:
        return Next.do_async(self.step, i + 1) if i < 2 else Next.done(i)

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        pass

    @hybrid.on_request
    async def lookup(self, request: Lookup) -> int:
        return request.key


async def test_the_instrument_holds_nothing_once_the_agents_have_ended() -> None:
    """No leak: many agents in states, handling events and requests, ending every way: nothing is kept."""
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        addresses = [hybrid.spawn(nursery, Worker(n)) for n in range(300)]
        await trio.testing.wait_all_tasks_blocked()
        actors = [address for n, address in enumerate(addresses) if n % 3 == 0]
        for address in actors:
            address.send(Note("hello"))
            assert await address.request(Lookup(2)) == 2
        assert instrument._agents  # idle actors remember the handler they last ran
        for n, address in enumerate(actors):
            if n % 2:
                address.interrupt()
        nursery.cancel_scope.cancel()
    assert not instrument._agents
    assert len(exporter.get_finished_spans()) == 200 * 3 + 100 * 2


async def test_register_makes_and_registers_an_instrument_for_the_current_run() -> None:
    """hybrid.tracing.register(provider): the instrument, already registered."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument = hybrid.tracing.register(provider)
    assert await Shapes().run() == "ok"
    assert len(exporter.get_finished_spans()) == 2
    hybrid.remove_instrument(instrument)


@attrs.frozen
class Bad(hybrid.Request[int]):
    pass


class Faulty(Agent):
    @hybrid.on_event
    async def note(self, event: Note) -> None:
        raise ValueError("bad note")

    @hybrid.on_request
    async def bad(self, request: Bad) -> int:
        raise KeyError("bad request")

    async def on_error(self, error: Exception) -> None:
        pass  # handled: the span still shows it


async def test_a_handler_that_raises_marks_its_span_and_the_agent_goes_on() -> None:
    instrument, exporter = traced()
    hybrid.add_instrument(instrument)
    async with trio.open_nursery() as nursery:
        faulty = hybrid.spawn(nursery, Faulty())
        faulty.send(Note("x"))
        with pytest.raises(KeyError, match="bad request"):
            await faulty.request(Bad())
        assert faulty.is_alive
        faulty.interrupt()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    for name, error in (
        ("Faulty handle Note", "ValueError: bad note"),
        ("Faulty handle Bad", "KeyError: 'bad request'"),
    ):
        span = spans[name]
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == error
        assert [event.name for event in span.events] == ["exception"]
