"""Scaling: how the costs grow with the number of agents, of callers and of workers.

Three sweeps, each measured on hybrid and on the plain-trio code a trio user
would write instead, alternately within each round, each sample in a fresh
``trio.run`` after ``gc.collect()``:

- **agents** (1k, 10k, 100k idle agents): the cost of spawning and stopping
  one (µs per agent, as W3) and the memory one costs while idle (bytes per
  agent, as W3: in a fresh process, `bench._memory`), for a parked hybrid agent
  (it keeps its trio task), a hibernating one (``hibernate_after = 0``: idle
  without a task, see docs/guides/many-agents.md), a hibernating child of one
  supervisor (spawned by it, stopped by its ordered shutdown) and a plain trio
  task waiting on its own memory channel. tracemalloc is measured up to 10k agents (at 100k
  one process takes 20 to 45 s under tracemalloc), the growth of the resident
  set (RSS) from 10k (at 1k it is a few pages); none below 100 agents (a smoke
  run's).
- **callers** (1, 10, 100, 1000 tasks): the same total of requests, shared by
  that many tasks each making its requests one after the other, all to ONE
  agent; the cost per request (total time / requests, not the latency one
  caller sees). hybrid with a queued handler (``@hybrid.on_request``), hybrid
  with an inline one (``@hybrid.on_request(inline=True)``: answered in the
  caller's task while the agent is idle, queued otherwise), and trio: one
  server task reading a request channel, a one-slot reply channel per call.
- **pipeline** (1, 4, 16 workers per stage): items per second through three
  async stages (+1, *2, -1) that each ``await trio.sleep(0)`` (``trio.lowlevel.checkpoint()``, what
  ``trio.sleep(0)`` does: a stage that yields, as any stage doing I/O does), buffers of 16: hybrid's
  ``Pipeline(Stage(fn, concurrency=k), ...)`` unordered (``ordered=False``, as
  hand-written workers deliver), the same ordered (the default: outputs in
  input order), and hand-written trio: `k` worker tasks per stage sharing the
  stage's channels (clones).

Rounds: ``min(--repeat, 3)`` after ``min(--warmup, 1)`` warm-up; at the largest
count of agents a single round without warm-up (its samples last seconds, and
the smaller counts have warmed up the process). Memory: one fresh process per
side, count and mode (the allocator makes it near-deterministic).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any

import trio
import trio.testing

import hybrid
from hybrid import Agent

from . import workloads as w
from ._harness import Sample, alternate, check, median, ratio, scaled
from .workloads import W8_BUFFER, Ask, hybrid_pipeline, make_asks, trio_pipeline

AGENT_COUNTS = (1_000, 10_000, 100_000)
TRACEMALLOC_UP_TO = 10_000
"""tracemalloc is measured at the agent counts up to this one (scaled by --size with them)."""
RSS_FROM = 10_000
"""The resident set is measured at the agent counts from this one (at 1k it is a few pages)."""
MEMORY_FROM = 100
"""No memory measurement below this many agents, whatever the size (a smoke run's per-agent bytes are noise)."""
CALLERS = (1, 10, 100, 1_000)
CALLER_REQUESTS = 20_000
PIPELINE_WORKERS = (1, 4, 16)
PIPELINE_ITEMS = 5_000

AGENT_SIDES = ("hybrid", "hibernating", "supervised", "trio")
CALLER_SIDES = ("hybrid", "hybrid_inline", "trio")
PIPELINE_SIDES = ("hybrid", "hybrid_ordered", "trio")


# -- agents --------------------------------------------------------------------------------------


async def _spawn_spread(n: int, nursery: trio.Nursery) -> tuple[list[hybrid.Address[Any]], Callable[[], None]]:
    """`n` hibernating agents, each spawned into `nursery`; and how to stop them: an interrupt each."""
    addresses = [hybrid.spawn(nursery, w.SleepingIdle()) for _ in range(n)]

    def stop() -> None:
        for address in addresses:
            address.interrupt()

    return addresses, stop


async def _spawn_supervised(n: int, nursery: trio.Nursery) -> tuple[list[hybrid.Address[Any]], Callable[[], None]]:
    """`n` hibernating children of one supervisor; and how to stop them: its interrupt (its ordered shutdown)."""
    keeper = w.Keeper()
    supervisor = hybrid.spawn(nursery, keeper)
    await supervisor.request(w.Adopt(n))
    return list(keeper.kids), supervisor.interrupt


def _sleepers_spawn_stop(
    n: int,
    label: str,
    spawn: Callable[[int, trio.Nursery], Awaitable[tuple[list[hybrid.Address[Any]], Callable[[], None]]]],
) -> Sample:
    """Spawn `n` hibernating agents with `spawn`, wait until all sleep, stop them all (each wakes to end).

    The check that all of them hibernate is outside the timed span.
    """

    async def main() -> Sample:
        start = perf_counter()
        async with trio.open_nursery() as nursery:
            addresses, stop = await spawn(n, nursery)
            await trio.testing.wait_all_tasks_blocked()
            spawned = perf_counter()
            hibernating = sum(1 for a in addresses if a.statistics().hibernating)
            resumed = perf_counter()
            stop()
        seconds = perf_counter() - start - (resumed - spawned)
        stopped = sum(1 for a in addresses if w._interrupted(a))
        return {
            "seconds": seconds,
            "us_per_agent": seconds / n * 1e6,
            "stopped": stopped,
            "hibernating": hibernating,
        }

    sample = trio.run(main)
    check(f"{label} asleep", sample["hibernating"], n)
    check(f"{label} interrupted", sample["stopped"], n)
    return sample


def hibernating_spawn_stop(n: int) -> Sample:
    """`n` hibernating agents spawned one by one, interrupted one by one."""
    return _sleepers_spawn_stop(n, "hibernating agents", _spawn_spread)


def supervised_spawn_stop(n: int) -> Sample:
    """One supervisor spawns `n` hibernating children, then its interrupt stops them all.

    Its ordered shutdown wakes each child to end (they share one group, so
    they stop together).
    """
    return _sleepers_spawn_stop(n, "supervised children", _spawn_supervised)


SPAWN_STOP: dict[str, Callable[[int], Sample]] = {
    "hybrid": w.hybrid_spawn_stop,
    "hibernating": hibernating_spawn_stop,
    "supervised": supervised_spawn_stop,
    "trio": w.trio_spawn_stop,
}


def run_agents(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    counts = sorted({scaled(n, size, minimum=10) for n in AGENT_COUNTS})  # tiny sizes can make two equal
    tracemalloc_up_to = scaled(TRACEMALLOC_UP_TO, size, minimum=10)
    rss_from = scaled(RSS_FROM, size, minimum=10)
    rows: list[dict[str, Any]] = []
    for index, n in enumerate(counts):
        largest = index == len(counts) - 1 and len(counts) > 1
        samples = alternate(
            {side: functools.partial(SPAWN_STOP[side], n) for side in AGENT_SIDES},
            1 if largest else min(rounds, 3),
            0 if largest else min(warmup, 1),
        )
        wanted = {"tracemalloc": n <= tracemalloc_up_to, "rss": n >= rss_from}
        modes = [mode for mode, yes in wanted.items() if yes and n >= MEMORY_FROM]
        memory = alternate(
            {
                f"{side}_{mode}": functools.partial(w.memory_per_idle, side, n, mode)
                for mode in modes
                for side in AGENT_SIDES
            },
            rounds=1,
            warmup=0,
        )
        row: dict[str, Any] = {"agents": n}
        for side in AGENT_SIDES:
            row[side] = {
                "us_per_agent": median(samples[side], "us_per_agent"),
                "tracemalloc_bytes": median(memory[f"{side}_tracemalloc"], "bytes_per_agent")
                if "tracemalloc" in modes
                else None,
                "rss_bytes": median(memory[f"{side}_rss"], "bytes_per_agent") if "rss" in modes else None,
                "samples": [s["us_per_agent"] for s in samples[side]],
            }
        rows.append(row)
    return {
        "params": {"counts": counts, "tracemalloc_up_to": tracemalloc_up_to, "rss_from": rss_from},
        "sides": list(AGENT_SIDES),
        "rows": rows,
    }


# -- callers -------------------------------------------------------------------------------------


class Answerer(Agent):
    """Answers ``Ask(v)`` with ``v + 1`` (a queued handler: run by the agent's task)."""

    @hybrid.on_request
    async def answer(self, request: Ask) -> int:
        return request.value + 1


class InlineAnswerer(Agent):
    """The same answer from an inline handler (the caller's task runs it while the agent is idle)."""

    @hybrid.on_request(inline=True)
    async def answer(self, request: Ask) -> int:
        return request.value + 1


def _chunks(requests: list[Ask], callers: int) -> list[list[Ask]]:
    per = len(requests) // callers
    return [requests[i * per : (i + 1) * per] for i in range(callers)]


def hybrid_callers(agent: type[Agent], chunks: list[list[Ask]]) -> Sample:
    """Each chunk's requests made one after the other by its own task, all tasks at once, to one agent."""
    expected = sum(r.value + 1 for chunk in chunks for r in chunk)

    async def main() -> Sample:
        go = trio.Event()
        answers = [0]
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent())

            async def caller(chunk: list[Ask]) -> None:
                request = address.request
                total = 0
                await go.wait()
                for req in chunk:
                    total += await request(req)
                answers[0] += total

            async with trio.open_nursery() as callers:
                for chunk in chunks:
                    callers.start_soon(caller, chunk)
                await trio.testing.wait_all_tasks_blocked()  # every caller waits for the start
                start = perf_counter()
                go.set()
            seconds = perf_counter() - start
            address.interrupt()
        return {"seconds": seconds, "total": answers[0]}

    sample = trio.run(main)
    check(f"{agent.__name__} answers", sample["total"], expected)
    return sample


def trio_callers(chunks: list[list[Ask]]) -> Sample:
    """The same callers on a request channel to one server task, a one-slot reply channel per call."""
    expected = sum(r.value + 1 for chunk in chunks for r in chunk)

    async def main() -> Sample:
        go = trio.Event()
        answers = [0]
        sender, receiver = trio.open_memory_channel[tuple[Ask, trio.MemorySendChannel[int]]](math.inf)

        async def server() -> None:
            async for req, reply in receiver:
                reply.send_nowait(req.value + 1)

        async def caller(chunk: list[Ask]) -> None:
            send = sender.send_nowait
            total = 0
            await go.wait()
            for req in chunk:
                reply_send, reply_receive = trio.open_memory_channel[int](1)
                send((req, reply_send))
                total += await reply_receive.receive()
            answers[0] += total

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            async with trio.open_nursery() as callers:
                for chunk in chunks:
                    callers.start_soon(caller, chunk)
                await trio.testing.wait_all_tasks_blocked()
                start = perf_counter()
                go.set()
            seconds = perf_counter() - start
            sender.close()
        return {"seconds": seconds, "total": answers[0]}

    sample = trio.run(main)
    check("trio server answers", sample["total"], expected)
    return sample


def run_callers(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    total = scaled(CALLER_REQUESTS, size)
    rows: list[dict[str, Any]] = []
    for callers in CALLERS:
        per = max(1, total // callers)
        chunks = _chunks(make_asks(per * callers), callers)
        samples = alternate(
            {
                "hybrid": functools.partial(hybrid_callers, Answerer, chunks),
                "hybrid_inline": functools.partial(hybrid_callers, InlineAnswerer, chunks),
                "trio": functools.partial(trio_callers, chunks),
            },
            min(rounds, 3),
            min(warmup, 1),
        )
        requests = per * callers
        for kept in samples.values():
            for sample in kept:
                sample["us_per_request"] = sample["seconds"] / requests * 1e6
        row: dict[str, Any] = {"callers": callers, "requests": requests}
        for side in CALLER_SIDES:
            row[side] = median(samples[side], "us_per_request")
        row["hybrid_vs_trio"] = ratio(row["hybrid"], row["trio"])
        row["inline_vs_trio"] = ratio(row["hybrid_inline"], row["trio"])
        rows.append(row)
    return {"params": {"requests": total}, "sides": list(CALLER_SIDES), "rows": rows}


# -- pipeline ------------------------------------------------------------------------------------


# The W8 stages, each awaiting a schedule point, with `workers` tasks per stage on both
# sides (bench/workloads.py): hybrid's Pipeline against hand-written trio workers.


def run_pipeline(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(PIPELINE_ITEMS, size)
    rows: list[dict[str, Any]] = []
    for workers in PIPELINE_WORKERS:
        samples = alternate(
            {
                "hybrid": functools.partial(hybrid_pipeline, n, workers, yielding=True, ordered=False),
                "hybrid_ordered": functools.partial(hybrid_pipeline, n, workers, yielding=True, ordered=True),
                "trio": functools.partial(trio_pipeline, n, workers, yielding=True),
            },
            min(rounds, 3),
            min(warmup, 1),
        )
        row: dict[str, Any] = {"workers": workers}
        for side in PIPELINE_SIDES:
            row[side] = median(samples[side], "items_per_s")
        row["hybrid_vs_trio"] = ratio(row["hybrid"], row["trio"])
        row["ordered_vs_trio"] = ratio(row["hybrid_ordered"], row["trio"])
        rows.append(row)
    return {"params": {"items": n, "buffer": W8_BUFFER}, "sides": list(PIPELINE_SIDES), "rows": rows}


# -- all of it -----------------------------------------------------------------------------------

SWEEPS: dict[str, Callable[[float, int, int], dict[str, Any]]] = {
    "agents": run_agents,
    "callers": run_callers,
    "pipeline": run_pipeline,
}


def run_scaling(
    size: float, rounds: int, warmup: int, only: Sequence[str] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Every sweep (or those in `only`); the ``scaling`` entry of the results."""
    results: dict[str, Any] = {}
    for name, sweep in SWEEPS.items():
        if only is not None and name not in only:
            continue
        if progress:
            print(f" {name}", end="", flush=True, file=sys.stderr)
        results[name] = sweep(size, rounds, warmup)
    return results
