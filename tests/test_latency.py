"""hybrid.metrics.LatencyHistograms: opt-in histograms of handler times, mailbox waits and states.

The hooks time with the wall clock (time.perf_counter), so these tests use
small real sleeps and assert lower bounds only.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next
from hybrid.metrics import LatencyHistograms

Labels = tuple[tuple[str, str], ...]

NAP = 0.02


@attrs.frozen
class Nap:
    seconds: float = 0.0


@attrs.frozen
class Total(hybrid.Request[int]):
    pass


def scrape(registry: CollectorRegistry) -> dict[tuple[str, Labels], float]:
    """The samples of a scrape, parsed back with prometheus-client's own parser."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def observed(samples: dict[tuple[str, Labels], float], family: str, suffix: str, **labels: str) -> float:
    return samples[(f"{family}_{suffix}", tuple(sorted(labels.items())))]


class Sleepy(Agent):
    def __init__(self) -> None:
        self.naps = 0

    @hybrid.on_event
    async def nap(self, event: Nap) -> None:
        self.naps += 1
        await trio.sleep(event.seconds)

    @hybrid.on_request
    async def total(self, request: Total) -> int:
        return self.naps


async def test_handlers_and_mailbox_waits_are_counted_by_agent_class_and_message_type() -> None:
    """One observation per handled message, labelled by class and message type, never by agent name."""
    registry = CollectorRegistry()
    histograms = LatencyHistograms(registry)
    hybrid.add_instrument(histograms)
    async with trio.open_nursery() as nursery:
        sleepies = [hybrid.spawn(nursery, Sleepy(), name=f"sleepy-{n}") for n in range(2)]
        for sleepy in sleepies:
            for _ in range(3):
                sleepy.send(Nap())
        for sleepy in sleepies:
            assert await sleepy.request(Total()) == 3
        samples = scrape(registry)
        for sleepy in sleepies:
            sleepy.interrupt()
    for family in ("hybrid_message_handling_seconds", "hybrid_mailbox_wait_seconds"):
        assert observed(samples, family, "count", agent_type="Sleepy", message_type="Nap") == 6
        assert observed(samples, family, "count", agent_type="Sleepy", message_type="Total") == 2
        assert observed(samples, family, "bucket", agent_type="Sleepy", message_type="Nap", le="+Inf") == 6
    assert not any("sleepy-" in value for _, labels in samples for _, value in labels)


async def test_a_message_queued_behind_a_slow_handler_waits_at_least_as_long_as_it() -> None:
    """The second message waits while the first handler sleeps: its wait is at least the sleep."""
    registry = CollectorRegistry()
    hybrid.add_instrument(LatencyHistograms(registry))
    async with trio.open_nursery() as nursery:
        sleepy = hybrid.spawn(nursery, Sleepy())
        sleepy.send(Nap(NAP))
        sleepy.send(Nap(0))
        assert await sleepy.request(Total()) == 2
        sleepy.interrupt()
    samples = scrape(registry)
    labels = {"agent_type": "Sleepy", "message_type": "Nap"}
    assert observed(samples, "hybrid_mailbox_wait_seconds", "sum", **labels) >= NAP
    assert observed(samples, "hybrid_mailbox_wait_seconds", "bucket", le="0.01", **labels) <= 1
    assert observed(samples, "hybrid_message_handling_seconds", "sum", **labels) >= NAP
    total = {"agent_type": "Sleepy", "message_type": "Total"}
    assert observed(samples, "hybrid_mailbox_wait_seconds", "sum", **total) >= NAP


class Pause:
    async def perform(self, agent: Any) -> Next[Any]:
        await trio.sleep(NAP)
        return Next.do_sync(agent.crunch)


class Steps(Agent[str]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.wait, 2)

    async def wait(self, times: int) -> Next[Self]:
        await trio.sleep(NAP)
        return Next.do_async(self.wait, times - 1) if times > 1 else Next.perform(Pause())

    def crunch(self) -> Next[Self]:
        time.sleep(NAP)  # a worker thread's time counts: the clock is the wall clock
        return Next.done("ok")


async def test_each_kind_of_state_is_timed_from_entering_it_to_the_next_transition() -> None:
    """do_async, perform and do_sync states: one observation each, at least as long as they slept."""
    registry = CollectorRegistry()
    histograms = LatencyHistograms(registry)
    hybrid.add_instrument(histograms)
    assert await Steps().run() == "ok"
    samples = scrape(registry)
    family = "hybrid_state_seconds"
    for state, kind, count in (("wait", "do_async", 2), ("Pause", "perform", 1), ("crunch", "do_sync", 1)):
        labels = {"agent_type": "Steps", "state": state, "kind": kind}
        assert observed(samples, family, "count", **labels) == count
        assert observed(samples, family, "sum", **labels) >= count * NAP
    assert not histograms._in_state


class Sleeper(Agent):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.nap)

    async def nap(self) -> Next[Self]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_an_agent_ending_in_a_state_has_that_state_observed_and_forgotten() -> None:
    """A state cut short by the agent's end counts up to the end; the agent leaves nothing behind."""
    registry = CollectorRegistry()
    histograms = LatencyHistograms(registry)
    hybrid.add_instrument(histograms)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Sleeper())
        await trio.sleep(NAP)
        assert list(histograms._in_state) == [address]
        nursery.cancel_scope.cancel()
    labels = {"agent_type": "Sleeper", "state": "nap", "kind": "do_async"}
    samples = scrape(registry)
    assert observed(samples, "hybrid_state_seconds", "count", **labels) == 1
    assert observed(samples, "hybrid_state_seconds", "sum", **labels) >= NAP
    assert not histograms._in_state


class Worker(Agent[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def begin(self) -> Next[Self]:
        return Next.do_async(self.step, 0) if self.n % 2 else Next.events()

    async def step(self, i: int) -> Next[Self]:
        await trio.lowlevel.checkpoint()
        return Next.do_async(self.step, i + 1) if i < 2 else Next.events()

    @hybrid.on_event
    async def nap(self, event: Nap) -> None:
        self.ctx.do_next(Next.do_async(self.step, 1))


async def test_the_instrument_keeps_only_agents_in_a_state_and_nothing_once_they_end() -> None:
    """Bounded memory: an entry per agent in a state now; actors and ended agents have none."""
    registry = CollectorRegistry()
    histograms = LatencyHistograms(registry)
    hybrid.add_instrument(histograms)
    async with trio.open_nursery() as nursery:
        addresses = [hybrid.spawn(nursery, Worker(n)) for n in range(400)]
        await trio.testing.wait_all_tasks_blocked()
        assert not histograms._in_state  # every one in actor mode now
        for address in addresses:
            address.send(Nap())
        await trio.testing.wait_all_tasks_blocked()
        assert not histograms._in_state
        for address in addresses:
            address.interrupt()
    assert not histograms._in_state
    samples = scrape(registry)
    labels = {"agent_type": "Worker", "state": "step", "kind": "do_async"}
    assert observed(samples, "hybrid_state_seconds", "count", **labels) == 200 * 3 + 400 * 2


def test_a_second_instance_on_one_registry_is_a_clear_error_and_changes_nothing() -> None:
    """One set of families per registry: the second LatencyHistograms raises ValueError."""
    registry = CollectorRegistry()
    first = LatencyHistograms(registry)
    with pytest.raises(ValueError, match="already has the hybrid latency histograms"):
        LatencyHistograms(registry)
    assert registry.get_sample_value("hybrid_state_seconds_count", {"agent_type": "X"}) is None
    names = {family.name for family in registry.collect()}
    assert names == {"hybrid_message_handling_seconds", "hybrid_mailbox_wait_seconds", "hybrid_state_seconds"}
    registry.unregister(first)
    LatencyHistograms(registry)  # the names are free again


def test_registry_none_registers_nowhere_and_buckets_are_configurable() -> None:
    """registry=None: the caller registers it; buckets apply to all three families."""
    histograms = LatencyHistograms(None, buckets=(0.5, 1.0))
    assert [family.name for family in histograms.describe()] == [
        "hybrid_message_handling_seconds",
        "hybrid_mailbox_wait_seconds",
        "hybrid_state_seconds",
    ]
    registry = CollectorRegistry()
    registry.register(histograms)

    async def main() -> None:
        hybrid.add_instrument(histograms)
        async with trio.open_nursery() as nursery:
            sleepy = hybrid.spawn(nursery, Sleepy())
            sleepy.send(Nap())
            await trio.testing.wait_all_tasks_blocked()
            sleepy.interrupt()

    trio.run(main)
    text = generate_latest(registry).decode()
    assert 'hybrid_message_handling_seconds_bucket{agent_type="Sleepy",le="0.5",message_type="Nap"} 1.0' in text
    assert 'le="0.0001"' not in text


async def test_a_message_queued_before_registration_is_timed_but_has_no_wait() -> None:
    """No stamp, no wait: the handler is still timed."""
    registry = CollectorRegistry()
    async with trio.open_nursery() as nursery:
        sleepy = hybrid.spawn(nursery, Sleepy())
        sleepy.send(Nap())
        hybrid.add_instrument(LatencyHistograms(registry))
        await trio.testing.wait_all_tasks_blocked()
        sleepy.interrupt()
    samples = scrape(registry)
    labels = {"agent_type": "Sleepy", "message_type": "Nap"}
    assert observed(samples, "hybrid_message_handling_seconds", "count", **labels) == 1
    assert ("hybrid_mailbox_wait_seconds_count", tuple(sorted(labels.items()))) not in samples


async def test_a_scrape_from_another_thread_reads_the_histograms() -> None:
    """prometheus-client's own HTTP server scrapes from its thread."""
    registry = CollectorRegistry()
    hybrid.add_instrument(LatencyHistograms(registry))
    assert await Steps().run() == "ok"
    text = (await trio.to_thread.run_sync(generate_latest, registry)).decode()
    assert 'hybrid_state_seconds_count{agent_type="Steps",kind="do_sync",state="crunch"} 1.0' in text
