"""OpenTelemetry tracing of a hybrid run: a span per handled message and per state (the ``otel`` extra).

Install with ``pip install 'trio-hybrid[otel]'``: it brings ``opentelemetry-api``
and nothing else. That is the OpenTelemetry rule for libraries: a library
depends on the API only, and the application chooses the SDK, the sampler,
the processors and the exporter (OTLP, Zipkin, the console...). Until the
application installs an SDK, the API is a no-op and `TracingInstrument` costs
its hooks and no more. The core never imports this module.

What is traced, by one `TracingInstrument` registered in a trio run:

- **A span per handled message**, named ``"{AgentClass} handle {MessageType}"``
  (``"... handle {RequestType} response"`` for a forwarded answer handled by
  ``on_response``), of kind ``CONSUMER`` for events and answers and ``SERVER``
  for requests (the caller waits for the answer, as an RPC client waits for
  its server). Its parent is the span that was current in the **sender**
  when the message was sent (its whole OpenTelemetry context travels, baggage
  included): a user action that crosses agents is one trace. The handler runs
  inside the span (it is the current span in the handler), so the messages it
  sends and the spans it starts are its children.
- **A span per state**, named ``"{AgentClass} state {function}"``, of kind
  ``INTERNAL``, from the moment the agent enters the state to its next
  transition (or its end). The state's code runs inside it, a ``do_sync``
  state too (`trio.to_thread.run_sync` runs the function in a copy of the
  agent's context). A state that a message handler scheduled (with
  ``self.ctx.do_next``) is a child of that handler's span, and so are the
  states that follow it; the other states are children of the span current
  where the agent was started (spawned, or run with ``await agent.run()``),
  if any.
- **No span for actor mode** (`Next.events()`, where an agent may wait for
  hours: its messages have their own spans), and **none for an agent's
  whole run** (a long-lived agent would make one endless span and bundle
  unrelated work into one trace).

Attributes: ``hybrid.agent.name``, ``hybrid.agent.type`` (the class's
qualified name), and ``hybrid.message.type``, ``hybrid.message.kind``
(``event``, ``request``, ``response``) and ``hybrid.mailbox.wait`` (seconds
the message waited in the mailbox) on message spans, ``hybrid.state`` and
``hybrid.state.kind`` (as [`Next.kind`][hybrid.Next.kind] names it) on state
spans.

Endings: a state that raises, or returns ``Next.fail(error)``, fails its agent;
the state's span records the exception and ends with status ERROR. A span
still open when its agent is cancelled (a handler or a state cut short) ends
with status ERROR, "cancelled". A handler that raises marks its span the
same way (the exception recorded, status ERROR); the agent goes on, as an
event handler's error goes to ``on_error`` (which runs inside the span) and
a request handler's error back to its caller.

Context propagation follows trio's: a task inherits the context of the task
that started it. So an agent spawned, or a timer started, inside a span
carries that span as the parent of its states or ticks.

Example:
    ```python
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

    async def main() -> None:
        hybrid.tracing.register(provider)
        await App().run()
    ```
"""

from __future__ import annotations

from contextvars import Context, Token
from typing import Any, Final, final

import trio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context as TraceContext
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

import hybrid

__all__ = ["SCOPE", "TracingInstrument", "register"]

SCOPE: Final = "hybrid"
"""The instrumentation scope of hybrid's spans (the name their tracer is made with).

Example:
    ```python
    ours = [span for span in exporter.get_finished_spans() if span.instrumentation_scope.name == hybrid.tracing.SCOPE]
    ```
"""


@final
class _Spans:
    """What the instrument holds for one agent while it runs.

    Written by the hooks, on the trio thread. The contexts were attached in
    the agent's task, whose contextvars are `task_context`: only a hook
    called there may detach them (contextvars refuse a token made in another
    context). The core calls every hook but `agent_stopped` in the agent's
    task; `agent_stopped` checks.
    """

    __slots__ = ("message", "origin", "scheduler", "state", "task_context")

    def __init__(self, task_context: Context | None) -> None:
        self.state: tuple[Span, Token[TraceContext]] | None = None
        """The span of the state the agent is in, and the token of its attached context."""
        self.message: tuple[Span, Token[TraceContext], TraceContext] | None = None
        """The span of the message being handled, the token of its attached context, and that
        context (the sender's, with the span as the current one)."""
        self.scheduler: TraceContext | None = None
        """The context of the message just handled, until the next hook: a state entered now was
        scheduled by its handler."""
        self.origin: TraceContext | None = None
        """The parent of the states a handler scheduled (and of those that follow), until the agent
        takes a transition that is not a state; None: the agent task's own context."""
        self.task_context = task_context
        """The contextvars of the agent's task (None outside a trio task)."""


class TracingInstrument(hybrid.Instrument):
    """An instrument that traces a run with OpenTelemetry: a span per handled message and per state.

    Register it in the trio run to trace with
    [`hybrid.add_instrument`][hybrid.add_instrument] (or use `register`);
    keep it registered until the run's agents have ended: removed earlier, it
    leaves the spans open at that moment unended (and attached in their
    agents' tasks). See the module documentation for the spans, their
    parents, kinds and attributes.

    It holds one small record per agent that is in a state, handling a
    message, or has just handled one (the context a following state would
    start in), and drops it when the agent ends. Registering it switches on
    the core's message stamps (each queued message carries its time and a
    copy of its sender's contextvars), which is how a span finds its parent
    in another agent.

    Args:
        tracer_provider: where spans go; None: the global provider
            (``opentelemetry.trace.get_tracer_provider()``; if none is set
            yet, the one the application sets later).

    Example:
        ```python
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))

        async def main() -> None:
            hybrid.add_instrument(hybrid.tracing.TracingInstrument(provider))
            await Download("https://example.org").run()
            print([span.name for span in exporter.get_finished_spans()])
            # ['Download state fetch', 'Download state count']
        ```
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(SCOPE, hybrid.__version__, tracer_provider)
        self._agents: dict[hybrid.Address[Any], _Spans] = {}
        # Names by class, made once (bounded by the classes and message types of the run).
        self._state_names: dict[tuple[type, str], tuple[str, str]] = {}
        self._message_names: dict[tuple[type, type, hybrid.MessageKind], _MessageNames] = {}

    def state_entered(self, address: hybrid.Address[Any], next: hybrid.Next[Any]) -> None:
        """End the span of the state the agent leaves; start (and enter) the span of the state it enters."""
        spans = self._agents.get(address)
        if spans is None:
            if not next.is_state:
                return
            spans = self._agents[address] = _Spans(_task_context())
        else:
            left = spans.state
            if left is not None:
                if next.kind == "fail":
                    return  # the span stays open: agent_stopped records the failure on it
                spans.state = None
                otel_context.detach(left[1])
                left[0].end()
            scheduler = spans.scheduler
            spans.scheduler = None
            if not next.is_state:
                # Actor mode or an ending: nothing is open (a transition never happens
                # inside a handler) and no later state descends from this one.
                del self._agents[address]
                return
            if scheduler is not None:
                spans.origin = scheduler
        parent = otel_context.get_current() if spans.origin is None else spans.origin
        state = next.state_name
        assert state is not None  # a state has a name
        key = (address.agent_type, state)
        names = self._state_names.get(key)
        if names is None:
            agent_type = key[0].__qualname__
            names = self._state_names[key] = (f"{agent_type} state {state}", agent_type)
        span = self._tracer.start_span(
            names[0],
            parent,
            attributes={
                "hybrid.agent.name": address.name,
                "hybrid.agent.type": names[1],
                "hybrid.state": state,
                "hybrid.state.kind": next.kind,
            },
        )
        spans.state = (span, otel_context.attach(trace.set_span_in_context(span, parent)))

    def message_received(
        self,
        address: hybrid.Address[Any],
        message: object,
        kind: hybrid.MessageKind,
        waited: float | None,
        sender: Context | None,
    ) -> None:
        """Start (and enter) the span of the handler about to run, as a child of the sender's span.

        A message queued before the instrument was registered has no sender
        context: its span starts a new trace.
        """
        spans = self._agents.get(address)
        if spans is None:
            spans = self._agents[address] = _Spans(_task_context())
        else:
            spans.scheduler = None
        key = (address.agent_type, type(message), kind)
        names = self._message_names.get(key)
        if names is None:
            names = self._message_names[key] = _MessageNames(*key)
        parent = TraceContext() if sender is None else sender.run(otel_context.get_current)
        attributes: dict[str, str | float] = {
            "hybrid.agent.name": address.name,
            "hybrid.agent.type": names.agent_type,
            "hybrid.message.type": names.message_type,
            "hybrid.message.kind": names.what,
        }
        if waited is not None:
            attributes["hybrid.mailbox.wait"] = waited
        span = self._tracer.start_span(names.span, parent, kind=names.kind, attributes=attributes)
        context = trace.set_span_in_context(span, parent)
        spans.message = (span, otel_context.attach(context), context)

    def message_failed(
        self, address: hybrid.Address[Any], message: object, kind: hybrid.MessageKind, error: Exception
    ) -> None:
        """Mark the handler's span as failed, with the exception (its caller or `on_error` gets it next)."""
        spans = self._agents.get(address)
        if spans is None or spans.message is None:
            return
        span = spans.message[0]
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        """Leave and end the handler's span (nothing if it started before the instrument was registered)."""
        spans = self._agents.get(address)
        if spans is None or spans.message is None:
            return
        span, token, spans.scheduler = spans.message
        spans.message = None
        otel_context.detach(token)
        span.end()

    def agent_stopped(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
        """End the agent's open spans (a failure or cancellation marks them) and forget the agent.

        Called in another task than the agent's (an agent discarded before
        it ran, say), it ends the spans without detaching their contexts.
        """
        spans = self._agents.pop(address, None)
        if spans is None:
            return
        here = spans.task_context is _task_context()
        if spans.message is not None:
            _end_cut_short(spans.message[0], spans.message[1], reason, detach=here)
        if spans.state is not None:
            _end_cut_short(spans.state[0], spans.state[1], reason, detach=here)


def register(tracer_provider: TracerProvider | None = None) -> TracingInstrument:
    """Make a `TracingInstrument` and register it for the current trio run.

    Args:
        tracer_provider: where spans go; None: the global provider.

    Raises:
        RuntimeError: called outside a trio run.

    Example:
        ```python
        async def main() -> None:
            hybrid.tracing.register()   # the provider the application set globally
            await App().run()
        ```
    """
    instrument = TracingInstrument(tracer_provider)
    hybrid.add_instrument(instrument)
    return instrument


def _task_context() -> Context | None:
    """The contextvars of the current trio task (None outside one)."""
    try:
        return trio.lowlevel.current_task().context
    except RuntimeError:
        return None


def _end_cut_short(span: Span, token: Token[TraceContext], reason: hybrid.StopReason, *, detach: bool) -> None:
    """End a span that its agent's end cut short: a failure recorded, a cancellation an error."""
    error = reason.error
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    elif reason.cancelled:
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
    if detach:
        otel_context.detach(token)
    span.end()


@final
class _MessageNames:
    """What the spans of one message type handled by one agent class are called, made once."""

    __slots__ = ("agent_type", "kind", "message_type", "span", "what")

    def __init__(self, agent_type: type, message_type: type, kind: hybrid.MessageKind) -> None:
        self.agent_type = agent_type.__qualname__
        self.message_type = message_type.__qualname__
        # A request is a call its sender waits on (SERVER); an event or a forwarded answer is not.
        self.kind = SpanKind.SERVER if kind == "request" else SpanKind.CONSUMER
        self.what = str(kind)
        suffix = " response" if kind == "response" else ""
        self.span = f"{self.agent_type} handle {self.message_type}{suffix}"
