"""What the observability instruments cost: ``python -m bench.instruments`` from the repo root.

Runs W1 (tell), W2 (ask) and W6 (transitions) of `bench.workloads` on hybrid's
side, once per configuration, the configurations alternating within each round
(one fresh ``trio.run`` per sample, ``gc.collect()`` before each, the first
rounds discarded, each round starting one configuration later: see `rotate`),
and reports the medians and their ratio to the run with no instrument:

- ``none``: no instrument registered;
- ``collector``: `hybrid.metrics.HybridCollector` registered (it reads the
  runtime's counters at scrape time only, so it should cost nothing here);
- ``empty-hooks``: an instrument whose hooks do nothing but that overrides
  ``message_received``: the core's side of any instrument (calling the
  hooks, stamping each queued message), the floor of the next three;
- ``histograms``: `hybrid.metrics.LatencyHistograms` added to the run;
- ``otel-noop``: `hybrid.tracing.TracingInstrument` with the OpenTelemetry API's
  no-op provider (no SDK): the hooks and the message stamps alone;
- ``otel-sdk``: `TracingInstrument` with an SDK ``TracerProvider`` and no span
  processor: every span is made and recorded, none exported (an exporter's
  cost belongs to the exporter, and a ``BatchSpanProcessor`` moves it off the
  trio thread).

Then it times a Prometheus scrape (``generate_latest``) of a run holding 10,000
idle agents, with the counters collector and the histograms registered: from
the trio thread, and from another thread (as prometheus-client's own HTTP
server scrapes, hopping to the trio thread for the snapshot).

Options:
    --size F           scale the workloads (default 0.25 of the full bench
                       sizes: 50,000 events, 5,000 requests, 25,000 transitions)
    --repeat N         measured rounds (default 6: each configuration starts one
                       round), after --warmup rounds (default 1)
    --scrape-agents N  idle agents in the scraped run (default 10,000)
    --output PATH      also write the results as JSON
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from contextvars import Context
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/instruments.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

import hybrid
import hybrid.metrics
import hybrid.tracing
from bench._harness import Sample, check, median, percentile, prepare, scaled
from bench.workloads import W1_EVENTS, W2_REQUESTS, W6_TRANSITIONS, Ask, Counter, Idle, SelfLoop, make_asks, make_ticks

Setup = Callable[[], None]
"""Called first thing inside each sample's trio run: registers the configuration's instruments."""


def _nothing() -> Setup:
    return lambda: None


def _collector() -> Setup:
    def setup() -> None:
        hybrid.metrics.register(CollectorRegistry())

    return setup


class EmptyHooks(hybrid.Instrument):
    """Overrides the per-message and per-transition hooks with nothing: what the core costs."""

    def state_entered(self, address: hybrid.Address[Any], next: hybrid.Next[Any]) -> None:
        pass

    def message_received(
        self,
        address: hybrid.Address[Any],
        message: object,
        kind: hybrid.MessageKind,
        waited: float | None,
        sender: Context | None,
    ) -> None:
        pass

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        pass


def _empty_hooks() -> Setup:
    instrument = EmptyHooks()
    return lambda: hybrid.add_instrument(instrument)


def _histograms() -> Setup:
    histograms = hybrid.metrics.LatencyHistograms(CollectorRegistry())
    return lambda: hybrid.add_instrument(histograms)


def _otel_noop() -> Setup:
    instrument = hybrid.tracing.TracingInstrument(trace.NoOpTracerProvider())
    return lambda: hybrid.add_instrument(instrument)


def _otel_sdk() -> Setup:
    instrument = hybrid.tracing.TracingInstrument(TracerProvider())
    return lambda: hybrid.add_instrument(instrument)


CONFIGURATIONS: dict[str, Callable[[], Setup]] = {
    "none": _nothing,
    "collector": _collector,
    "empty-hooks": _empty_hooks,
    "histograms": _histograms,
    "otel-noop": _otel_noop,
    "otel-sdk": _otel_sdk,
}
"""Configuration name -> a maker of its setup (a fresh instrument for each sample)."""


# -- the workloads, hybrid's side, with a setup ------------------------------------------------


def tell(messages: list[Any], setup: Setup) -> Sample:
    """W1: events sent with `Address.send` to one agent; the time until all are handled."""

    async def main() -> Sample:
        setup()
        done = trio.Event()
        agent = Counter(len(messages), done)
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
            await trio.testing.wait_all_tasks_blocked()
            send = address.send
            start = perf_counter()
            for message in messages:
                send(message)
            await done.wait()
            seconds = perf_counter() - start
            address.interrupt()
        return {"seconds": seconds, "handled": agent.count, "per_s": len(messages) / seconds}

    sample = trio.run(main)
    check("W1 handled", sample["handled"], len(messages))
    return sample


def ask(requests: list[Ask], setup: Setup) -> Sample:
    """W2: sequential requests to one agent; the median latency."""

    async def main() -> Sample:
        setup()
        latencies: list[float] = []
        total = 0
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Counter(0))
            await trio.testing.wait_all_tasks_blocked()
            request = address.request
            for req in requests:
                t0 = perf_counter_ns()
                total += await request(req)
                latencies.append((perf_counter_ns() - t0) / 1000)
            address.interrupt()
        return {"median_us": percentile(latencies, 0.5), "total": total}

    sample = trio.run(main)
    check("W2 sum of answers", sample["total"], sum(r.value + 1 for r in requests))
    return sample


def transitions(n: int, setup: Setup) -> Sample:
    """W6: one agent taking `n` do_async self-transitions."""

    async def main() -> Sample:
        setup()
        start = perf_counter()
        steps = await SelfLoop(n).run()
        seconds = perf_counter() - start
        return {"seconds": seconds, "steps": steps, "per_s": n / seconds}

    sample = trio.run(main)
    check("W6 transitions", sample["steps"], n)
    return sample


def rotate(sides: dict[str, Callable[[], Sample]], rounds: int, warmup: int) -> dict[str, list[Sample]]:
    """`bench._harness.alternate`, but each round starts one configuration later.

    A sample that follows a heavy one (the SDK's, which allocates a span per
    message) runs slower, whatever it is; with a fixed order, ``none`` would
    always pay for it. Rotating spreads that over every configuration (evenly
    when `rounds` is a multiple of their number).
    """
    names = list(sides)
    kept: dict[str, list[Sample]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            prepare()
            sample = sides[name]()
            if index >= warmup:
                kept[name].append(sample)
    return kept


def _sample(run: Callable[[Setup], Sample], make: Callable[[], Setup]) -> Sample:
    return run(make())  # a fresh instrument for every sample


def measure(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    """Medians per workload and configuration: msgs/s (W1), µs per request (W2), steps/s (W6)."""
    events = make_ticks(scaled(W1_EVENTS, size))
    requests = make_asks(scaled(W2_REQUESTS, size))
    steps = scaled(W6_TRANSITIONS, size)
    workloads: dict[str, tuple[Callable[[Setup], Sample], str]] = {
        "W1": (lambda setup: tell(events, setup), "per_s"),
        "W2": (lambda setup: ask(requests, setup), "median_us"),
        "W6": (lambda setup: transitions(steps, setup), "per_s"),
    }
    results: dict[str, Any] = {}
    for key, (run, metric) in workloads.items():
        print(f"  {key} ...", end="", flush=True, file=sys.stderr)
        t0 = perf_counter()
        sides: dict[str, Callable[[], Sample]] = {
            name: functools.partial(_sample, run, make) for name, make in CONFIGURATIONS.items()
        }
        samples = rotate(sides, rounds, warmup)
        results[key] = {name: median(kept, metric) for name, kept in samples.items()}
        print(f" {perf_counter() - t0:.1f}s", file=sys.stderr)
    results["params"] = {"events": len(events), "requests": len(requests), "transitions": steps}
    return results


# -- scraping many agents ------------------------------------------------------------------------


def scrape(agents: int, rounds: int) -> dict[str, float]:
    """Milliseconds per scrape of a run with `agents` idle agents (median of `rounds`)."""

    async def main() -> dict[str, float]:
        registry = CollectorRegistry()
        hybrid.metrics.register(registry)
        hybrid.add_instrument(hybrid.metrics.LatencyHistograms(registry))
        async with trio.open_nursery() as nursery:
            addresses = [hybrid.spawn(nursery, Idle()) for _ in range(agents)]
            await trio.testing.wait_all_tasks_blocked()
            here: list[float] = []
            there: list[float] = []
            snapshots: list[float] = []
            text = b""
            for _ in range(rounds):
                t0 = perf_counter()
                text = generate_latest(registry)
                here.append(perf_counter() - t0)
                t0 = perf_counter()
                await trio.to_thread.run_sync(generate_latest, registry)
                there.append(perf_counter() - t0)
                t0 = perf_counter()
                hybrid.snapshot()
                snapshots.append(perf_counter() - t0)
            line = f'hybrid_agents{{agent_type="Idle",phase="events"}} {agents}.0'
            check("the scrape counts every agent", line in text.decode(), True)
            for address in addresses:
                address.interrupt()
        return {
            "trio_thread_ms": statistics.median(here) * 1000,
            "other_thread_ms": statistics.median(there) * 1000,
            "snapshot_ms": statistics.median(snapshots) * 1000,
        }

    return trio.run(main)


# -- the report -------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    """Medians, ratio to ``none`` (the workload's own unit) and the cost added per message or step."""
    heads = {
        "W1": ("W1 tell", "msgs/s", True),
        "W2": ("W2 ask", "us/req", False),
        "W6": ("W6 transitions", "steps/s", True),
    }
    header = ("configuration", *(f"{title} ({unit})" for title, unit, _ in heads.values()))
    rows: list[tuple[str, ...]] = []
    for name in CONFIGURATIONS:
        cells = [name]
        for key, (_, _, throughput) in heads.items():
            base, value = results[key]["none"], results[key][name]
            added_us = (1 / value - 1 / base) * 1e6 if throughput else value - base
            cells.append(f"{_num(value)}  {value / base:.2f}x  {added_us:+.2f} us")
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    p = results["params"]
    lines.append("")
    lines.append(
        f"cells: median, ratio to 'none', microseconds added per message/request/transition "
        f"({p['events']} events, {p['requests']} requests, {p['transitions']} transitions)"
    )
    s = results["scrape"]
    lines.append("")
    lines.append(
        f"scrape of {s['agents']} idle agents (counters + histograms registered): "
        f"{s['trio_thread_ms']:.1f} ms from the trio thread, {s['other_thread_ms']:.1f} ms from another thread; "
        f"hybrid.snapshot() alone {s['snapshot_ms']:.1f} ms"
    )
    return "\n".join(lines)


def _num(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instruments", description="What the observability instruments cost"
    )
    parser.add_argument("--size", type=float, default=0.25, help="scale of W1/W2/W6 (default 0.25)")
    parser.add_argument("--repeat", type=int, default=len(CONFIGURATIONS), help="measured rounds (default 6)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds (default 1)")
    parser.add_argument("--scrape-agents", type=int, default=10_000, help="idle agents in the scraped run")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not args.size > 0 or args.repeat < 1 or args.warmup < 0 or args.scrape_agents < 1:
        parser.error("--size must be > 0, --repeat >= 1, --warmup >= 0, --scrape-agents >= 1")
    print(
        f"hybrid {hybrid.__version__} / trio {trio.__version__} / Python {sys.version.split()[0]}: "
        f"size {args.size}, {args.repeat} rounds after {args.warmup} warm-up",
        file=sys.stderr,
    )
    results: dict[str, Any] = measure(args.size, args.repeat, args.warmup)
    print("  scrape ...", end="", flush=True, file=sys.stderr)
    t0 = perf_counter()
    results["scrape"] = {"agents": args.scrape_agents, **scrape(args.scrape_agents, max(args.repeat, 5))}
    print(f" {perf_counter() - t0:.1f}s", file=sys.stderr)
    print(table(results))
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
