"""hybrid.metrics: Prometheus families read from the runtime's counters at scrape time."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typing_extensions import Self

import hybrid
import hybrid.metrics
from hybrid import Agent, Next
from tests.messages import Ping


class Counter(Agent):
    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        if event.n < 0:
            self.ctx.do_next(Next.fail(ValueError("negative")))


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a scrape, parsed back with prometheus-client's own parser."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_pinned_families_report_agents_by_class_and_phase_never_by_name() -> None:
    """Gauges by class and phase, counters by class; no agent name in any label."""
    registry = CollectorRegistry()
    hybrid.metrics.register(registry)
    async with trio.open_nursery() as nursery:
        runners = [hybrid.AgentRunner(Counter(), name=f"counter-{n}") for n in range(3)]
        for runner in runners:  # runners: the failure below is returned, not raised into the nursery
            nursery.start_soon(runner.run)
        counters = [runner.address for runner in runners]
        for counter in counters:
            counter.send(Ping(1))
        await trio.testing.wait_all_tasks_blocked()
        samples = scrape(registry)
        kind = (("agent_type", "Counter"),)
        assert samples[("hybrid_agents", (("agent_type", "Counter"), ("phase", "events")))] == 3
        assert samples[("hybrid_messages_handled_total", kind)] == 3
        assert samples[("hybrid_mailbox_depth", kind)] == 0
        assert samples[("hybrid_failures_total", kind)] == 0
        for name in ("hybrid_messages_dropped_total", "hybrid_transitions_total", "hybrid_restarts_total"):
            assert (name, kind) in samples
        assert not any("counter-" in value for _, labels in samples for _, value in labels)
        counters[0].send(Ping(-1))  # fails it
        for counter in counters[1:]:
            counter.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        samples = scrape(registry)
        assert samples[("hybrid_failures_total", kind)] == 1
        assert samples[("hybrid_messages_handled_total", kind)] == 6  # never goes down as agents end
        assert not any(name == "hybrid_agents" for name, _ in samples)
        nursery.cancel_scope.cancel()


async def test_a_scrape_from_another_thread_reads_the_counters_on_the_trio_thread() -> None:
    """prometheus-client's own HTTP server scrapes from its thread: the collector hops to the run."""
    registry = CollectorRegistry()
    hybrid.metrics.register(registry)
    async with trio.open_nursery() as nursery:
        counter = hybrid.spawn(nursery, Counter())
        counter.send(Ping(1))
        await trio.testing.wait_all_tasks_blocked()
        text = (await trio.to_thread.run_sync(generate_latest, registry)).decode()
        assert 'hybrid_messages_handled_total{agent_type="Counter"} 1.0' in text
        counter.interrupt()


def test_after_the_run_the_collector_reports_no_series() -> None:
    """A collector whose run has ended reports the families without samples."""
    registry = CollectorRegistry()

    async def main() -> None:
        hybrid.metrics.register(registry)
        async with hybrid.open_agent(Counter()) as counter:
            counter.send(Ping(1))

    trio.run(main)
    samples = scrape(registry)
    assert not any(name.startswith("hybrid_") for name, _ in samples)


class Flaky(Agent):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.crash)

    async def crash(self) -> Next[Self]:
        await trio.sleep(1)
        return Next.fail(ValueError("flaky"))


class Sup(hybrid.Supervisor):
    max_restarts = None

    def begin(self) -> Next[Self]:
        self.ctx.spawn(Flaky)
        return Next.events()


async def test_a_restarted_child_counts_as_a_restart_of_its_class(autojump_clock: trio.testing.MockClock) -> None:
    """hybrid_restarts_total counts the runs a supervisor started again."""
    registry = CollectorRegistry()
    hybrid.metrics.register(registry)
    async with trio.open_nursery() as nursery:
        sup = hybrid.spawn(nursery, Sup())
        await trio.sleep(3.5)
        samples = scrape(registry)
        assert samples[("hybrid_restarts_total", (("agent_type", "Flaky"),))] == 3
        assert samples[("hybrid_failures_total", (("agent_type", "Flaky"),))] == 3
        sup.interrupt()
