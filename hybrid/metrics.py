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

from collections.abc import Iterator
from threading import get_ident

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

import hybrid

__all__ = ["HybridCollector", "register"]


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
            kind = [counters.agent_class]
            for phase, count in sorted(counters.phases.items()):
                agents.add_metric([counters.agent_class, phase], count)
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
