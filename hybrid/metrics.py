"""Prometheus metrics of a hybrid run, read at scrape time (the ``metrics`` extra).

Install with ``pip install 'trio-hybrid[metrics]'`` (it brings
`prometheus-client`, the library every Prometheus user already has). The
core never imports this module.

`HybridCollector` is a custom collector: it keeps nothing itself and reads,
when Prometheus scrapes, the counters the runtime keeps anyway
([`hybrid.snapshot()`][hybrid.snapshot]), so the agents pay nothing per
message for it. Labels are agent classes and phases, never agent names, so
the number of series stays bounded however many agents come and go.

| family | type | labels |
|---|---|---|
| ``hybrid_agents`` | gauge | ``agent_type``, ``phase`` |
| ``hybrid_mailbox_depth`` | gauge | ``agent_type`` |
| ``hybrid_messages_handled_total`` | counter | ``agent_type`` |
| ``hybrid_messages_dropped_total`` | counter | ``agent_type`` |
| ``hybrid_transitions_total`` | counter | ``agent_type`` |
| ``hybrid_failures_total`` | counter | ``agent_type`` |
| ``hybrid_restarts_total`` | counter | ``agent_type`` |

Latency histograms are opt-in: `LatencyHistograms` is an instrument (it
costs a little per message and per transition, so it is not on by default)
that feeds three histograms, labelled by classes, message types and state
names, never by agent names:

| family | type | labels |
|---|---|---|
| ``hybrid_message_handling_seconds`` | histogram | ``agent_type``, ``message_type`` |
| ``hybrid_mailbox_wait_seconds`` | histogram | ``agent_type``, ``message_type`` |
| ``hybrid_state_seconds`` | histogram | ``agent_type``, ``state``, ``kind`` |

Example:
    ```python
    import prometheus_client
    import hybrid.metrics

    async def main() -> None:
        hybrid.metrics.register()          # in the trio run whose agents it reads
        prometheus_client.start_http_server(9100, addr="127.0.0.1")
        await App().run()
    ```
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextvars import Context
from threading import get_ident
from time import perf_counter
from typing import Any, Final

import trio
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

import hybrid
from hybrid import _validate

__all__ = ["LATENCY_BUCKETS", "HybridCollector", "LatencyHistograms", "register"]

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""The default bucket bounds of `LatencyHistograms`, in seconds: 100 µs to a minute.

prometheus-client's own default starts at 5 ms, too coarse for in-process
handlers that take microseconds; ``+Inf`` is added by prometheus-client.

Example:
    ```python
    # states that run for minutes: two more buckets at the top
    hybrid.metrics.LatencyHistograms(buckets=(*hybrid.metrics.LATENCY_BUCKETS, 300.0, 1800.0))
    ```
"""


class HybridCollector(Collector):
    """A Prometheus collector of the agents of the trio run it was made in.

    Make it inside the run (it remembers the run); `collect` may then be
    called from the run's thread (an HTTP handler in trio) or from any other
    thread (prometheus-client's own HTTP server): it reads the counters on
    the trio thread either way. Once the run has ended, it reports nothing.

    Raises:
        RuntimeError: made outside a trio run.
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = get_ident()

    def _read(self) -> hybrid.Snapshot | None:
        if get_ident() == self._thread:
            try:
                if trio.lowlevel.current_trio_token() is self._token:
                    return hybrid.snapshot()
            except RuntimeError:  # this thread's trio run has ended
                return None
            return None
        try:
            return trio.from_thread.run_sync(hybrid.snapshot, trio_token=self._token)
        except trio.RunFinishedError:
            return None

    def collect(self) -> Iterator[Metric]:
        """The metric families, read now from the runtime's counters."""
        snapshot = self._read()
        labels = ["agent_type"]
        agents = GaugeMetricFamily("hybrid_agents", "Agents alive, by class and phase.", labels=["agent_type", "phase"])
        depth = GaugeMetricFamily("hybrid_mailbox_depth", "Messages queued now, by agent class.", labels=labels)
        handled = CounterMetricFamily("hybrid_messages_handled", "Messages handled, by agent class.", labels=labels)
        dropped = CounterMetricFamily(
            "hybrid_messages_dropped", "Messages dropped unhandled (their senders told), by agent class.", labels=labels
        )
        transitions = CounterMetricFamily("hybrid_transitions", "States entered, by agent class.", labels=labels)
        failures = CounterMetricFamily("hybrid_failures", "Runs that ended failed, by agent class.", labels=labels)
        restarts = CounterMetricFamily("hybrid_restarts", "Restarts by a supervisor, by agent class.", labels=labels)
        for counters in () if snapshot is None else snapshot.counters:
            kind = [_validate.escaped(counters.agent_class)]  # (escaped: a lone surrogate would fail the scrape)
            for phase, count in sorted(counters.phases.items()):
                agents.add_metric([*kind, phase], count)
            depth.add_metric(kind, counters.mailbox_depth)
            handled.add_metric(kind, counters.messages_handled)
            dropped.add_metric(kind, counters.messages_dropped)
            transitions.add_metric(kind, counters.transitions)
            failures.add_metric(kind, counters.failures)
            restarts.add_metric(kind, counters.restarts)
        yield from (agents, depth, handled, dropped, transitions, failures, restarts)


def register(registry: CollectorRegistry = REGISTRY) -> HybridCollector:
    """Make a `HybridCollector` for the current trio run and register it in `registry`.

    Raises:
        RuntimeError: called outside a trio run.
    """
    collector = HybridCollector()
    registry.register(collector)
    return collector


class LatencyHistograms(hybrid.Instrument, Collector):
    """Opt-in latency histograms: an instrument that feeds three Prometheus histograms.

    | family | observes | labels |
    |---|---|---|
    | ``hybrid_message_handling_seconds`` | each handler's run | ``agent_type``, ``message_type`` |
    | ``hybrid_mailbox_wait_seconds`` | each message's wait in the mailbox | ``agent_type``, ``message_type`` |
    | ``hybrid_state_seconds`` | each state, to the next transition or the end | ``agent_type``, ``state``, ``kind`` |

    Labels are qualified class names (``agent_type`` as in `HybridCollector`'s
    families; ``message_type`` is the class of the event or request, a
    forwarded answer counting as its request), the state's
    [`Next.state_name`][hybrid.Next.state_name] (the function's ``__name__``,
    a performer's class name) and the transition kind as [`Next.kind`][hybrid.Next.kind] names it
    (``do_async``, ``do_sync``, ``perform``): never an agent name, so the
    number of series stays bounded however many agents come and go. Times are
    wall-clock seconds (`time.perf_counter`), as `message_handled` reports
    them: a sync state's time in its worker thread counts, a paused
    simulated clock does not stop it.

    Making one registers its three families in `registry` (once per
    instance; pass ``registry=None`` to register it yourself). A registry
    takes one set of these families: a second `LatencyHistograms` on the same
    registry raises `ValueError` and leaves the registry as it was. Register
    the same instance in every trio run instead, with
    [`hybrid.add_instrument`][hybrid.add_instrument]; the histograms add up
    across runs.

    Costs, while it is registered: a few microseconds per message handled and
    per transition, and the message stamps the core makes for any instrument
    that overrides `message_received` (the time and sender's context of each
    queued message, which take the send fast path away). It keeps one entry
    per agent that is in a state now (its start time), dropped when the
    agent leaves the state or ends, and one labelled series per label
    combination seen.

    Args:
        registry: where to register the families; None: nowhere yet.
        buckets: the upper bounds of the buckets, in seconds, for all three
            families (default `LATENCY_BUCKETS`).

    Raises:
        ValueError: `registry` already has these families (another
            `LatencyHistograms`), or prometheus-client refuses `buckets`.

    Example:
        ```python
        histograms = hybrid.metrics.LatencyHistograms()   # into prometheus_client.REGISTRY

        async def main() -> None:
            hybrid.metrics.register()                     # the counters, read at scrape time
            hybrid.add_instrument(histograms)             # the histograms of this run
            prometheus_client.start_http_server(9100, addr="127.0.0.1")
            await App().run()
        ```
    """

    def __init__(
        self, registry: CollectorRegistry | None = REGISTRY, *, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        message_labels = ("agent_type", "message_type")
        self._handling = Histogram(
            "hybrid_message_handling_seconds",
            "Time message handlers took, by agent class and message type.",
            message_labels,
            registry=None,
            buckets=buckets,
        )
        self._waiting = Histogram(
            "hybrid_mailbox_wait_seconds",
            "Time messages waited in the mailbox before their handler started, by agent class and message type.",
            message_labels,
            registry=None,
            buckets=buckets,
        )
        self._states = Histogram(
            "hybrid_state_seconds",
            "Time spent in each state, by agent class, state and transition kind.",
            ("agent_type", "state", "kind"),
            registry=None,
            buckets=buckets,
        )
        # Labelled series, found by classes rather than built from strings on each message.
        self._handling_series: dict[tuple[type, type], Histogram] = {}
        self._waiting_series: dict[tuple[type, type], Histogram] = {}
        self._state_series: dict[tuple[type, str, str], Histogram] = {}
        # The agents in a state now: when they entered it, and its series. Written on the
        # trio thread only (hooks); an agent leaves it when it leaves the state or ends.
        self._in_state: dict[hybrid.Address[Any], tuple[float, Histogram]] = {}
        if registry is not None:
            try:
                registry.register(self)
            except ValueError as error:
                raise ValueError(
                    "this registry already has the hybrid latency histograms (one LatencyHistograms per "
                    "registry: add the same instance to each trio run with hybrid.add_instrument)"
                ) from error

    def describe(self) -> list[Metric]:
        """The three families, without samples (what a registry checks names with)."""
        return [*self._handling.describe(), *self._waiting.describe(), *self._states.describe()]

    def collect(self) -> Iterator[Metric]:
        """The three families with their samples; safe from any thread."""
        yield from self._handling.collect()
        yield from self._waiting.collect()
        yield from self._states.collect()

    def state_entered(self, address: hybrid.Address[Any], next: hybrid.Next[Any]) -> None:
        """Observe the state the agent leaves; start timing the one it enters."""
        now = perf_counter()
        left = self._in_state.pop(address, None)
        if left is not None:
            left[1].observe(now - left[0])
        if next.is_state:
            state = next.state_name
            assert state is not None  # a state has a name
            key = (address.agent_type, state, next.kind)
            series = self._state_series.get(key)
            if series is None:
                labels = (_validate.escaped(key[0].__qualname__), _validate.escaped(key[1]), key[2])
                series = self._state_series[key] = self._states.labels(*labels)
            self._in_state[address] = (now, series)

    def agent_stopped(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
        """Observe the state the agent was in when it ended, if any."""
        left = self._in_state.pop(address, None)
        if left is not None:
            left[1].observe(perf_counter() - left[0])

    def message_received(
        self,
        address: hybrid.Address[Any],
        message: object,
        kind: hybrid.MessageKind,
        waited: float | None,
        sender: Context | None,
    ) -> None:
        """Observe how long `message` waited (nothing for a message queued before registration)."""
        if waited is None:
            return
        key = (address.agent_type, type(message))
        series = self._waiting_series.get(key)
        if series is None:
            labels = (_validate.escaped(key[0].__qualname__), _validate.escaped(key[1].__qualname__))
            series = self._waiting_series[key] = self._waiting.labels(*labels)
        series.observe(waited)

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        """Observe how long the handler of `message` took."""
        key = (address.agent_type, type(message))
        series = self._handling_series.get(key)
        if series is None:
            labels = (_validate.escaped(key[0].__qualname__), _validate.escaped(key[1].__qualname__))
            series = self._handling_series[key] = self._handling.labels(*labels)
        series.observe(seconds)
