"""The workloads W1-W7: each one the same work done by hybrid and by plain trio.

Every side is a function that runs one sample in a fresh ``trio.run`` and
returns its metrics (a `Sample`), after checking that the work was done. The
``run_wN`` functions alternate the two sides and summarise them as one entry
of the results file (see `bench.run`).

Sizes below are the full-size ones (``--size 1``); ``--size`` scales them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any, Self

import attrs
import trio
import trio.testing
from trio.lowlevel import checkpoint

import hybrid
from hybrid import Agent, Next

from ._harness import Sample, alternate, check, median, percentile, ratio, scaled, summary

REPO_ROOT = Path(__file__).resolve().parent.parent

W1_EVENTS = 200_000
W2_REQUESTS = 20_000
W3_AGENTS = 10_000
W4_AGENTS = 100
W4_EVENTS = 1_000
W5_STEPS = 1_000
W6_TRANSITIONS = 100_000
W7_RUNS = 10_000
W8_ITEMS = 20_000
W8_BUFFER = 16


# -- messages: the same objects go to both sides --------------------------------


@attrs.frozen
class Tick:
    """A small event."""

    seq: int


@attrs.frozen
class Ask(hybrid.Request[int]):
    """A small request; the answer is ``value + 1``."""

    value: int


@attrs.frozen
class GetCount(hybrid.Request[int]):
    """Ask a counter how many events it has handled."""


GET_COUNT = GetCount()


def make_ticks(n: int) -> list[Tick]:
    return [Tick(i) for i in range(n)]


def make_asks(n: int) -> list[Ask]:
    return [Ask(i) for i in range(n)]


# -- the hybrid agents ------------------------------------------------------------


class Counter(Agent):
    """Counts events; sets `done` when it has seen `target` of them; answers GetCount and Ask."""

    def __init__(self, target: int, done: trio.Event | None = None) -> None:
        self.count = 0
        self.target = target
        self.done = done

    @hybrid.on_event
    async def tick(self, event: Tick) -> None:
        self.count += 1
        if self.count == self.target and self.done is not None:
            self.done.set()

    @hybrid.on_request
    async def get_count(self, request: GetCount) -> int:
        return self.count

    @hybrid.on_request
    async def answer(self, request: Ask) -> int:
        return request.value + 1


class Tally:
    """The plain-trio counterpart of `Counter`'s state: the same fields, the same work."""

    __slots__ = ("count", "done", "target")

    def __init__(self, target: int, done: trio.Event | None = None) -> None:
        self.count = 0
        self.target = target
        self.done = done


class Idle(Agent):
    """An agent that waits for events it never gets (W3)."""

    @hybrid.on_event
    async def poke(self, event: Tick) -> None:
        pass


class SleepingIdle(Idle):
    """`Idle`, hibernating as soon as it is idle (no task while it waits)."""

    hibernate_after = 0


@attrs.frozen
class Adopt(hybrid.Request[int]):
    """Ask a `Keeper` to spawn `n` more `SleepingIdle` children; the answer is how many it has."""

    n: int


class Keeper(hybrid.Supervisor):
    """A supervisor that spawns hibernating idle children on request (the scaling sweep's supervised side)."""

    def __init__(self) -> None:
        self.kids: list[hybrid.Address[SleepingIdle]] = []

    def begin(self) -> Next[Self]:
        return Next.events()

    @hybrid.on_request
    async def adopt(self, request: Adopt) -> int:
        spawn = self.ctx.spawn
        self.kids.extend(spawn(SleepingIdle) for _ in range(request.n))
        return len(self.kids)


class SyncSteps(Agent[int]):
    """`n` do_sync steps in a row (W5)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def begin(self) -> Next[Self]:
        return Next.do_sync(self.step, 0)

    def step(self, i: int) -> Next[Self]:
        i += 1
        if i >= self.n:
            return Next.done(i)
        return Next.do_sync(self.step, i)


class SelfLoop(Agent[int]):
    """`n` do_async self-transitions (W6)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def begin(self) -> Next[Self]:
        return Next.do_async(self.tick, 0)

    async def tick(self, i: int) -> Next[Self]:
        i += 1
        if i >= self.n:
            return Next.done(i)
        return Next.do_async(self.tick, i)


class ThreeStates(Agent[int]):
    """begin -> do_async(first) -> do_async(second) -> do_async(third) -> done (W7)."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.first, 0)

    async def first(self, x: int) -> Next[Self]:
        return Next.do_async(self.second, x + 1)

    async def second(self, x: int) -> Next[Self]:
        return Next.do_async(self.third, x + 2)

    async def third(self, x: int) -> Next[Self]:
        return Next.done(x + 3)


class LeanThreeStates(ThreeStates):
    """`ThreeStates` declaring that it starts no helper task: its run() opens no nursery (W7)."""

    helper_tasks = False


# -- W1 tell -----------------------------------------------------------------------


def hybrid_tell(messages: list[Tick], agent_type: type[Counter] = Counter, label: str = "W1 hybrid") -> Sample:
    """Send every message to one agent with `Address.send`; time until all are handled.

    `agent_type`: a `Counter` subclass (W11 measures one with a priority mailbox).
    """

    async def main() -> Sample:
        done = trio.Event()
        agent = agent_type(len(messages), done)
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
            await trio.testing.wait_all_tasks_blocked()  # the agent is parked on its mailbox
            send = address.send
            start = perf_counter()
            for message in messages:
                send(message)
            await done.wait()
            seconds = perf_counter() - start
            address.interrupt()
        return {"seconds": seconds, "handled": agent.count}

    sample = trio.run(main)
    check(f"{label} handled", sample["handled"], len(messages))
    return sample


def trio_tell(messages: list[Tick]) -> Sample:
    """Send every message on an unbounded memory channel to one ``async for`` task."""

    async def main() -> Sample:
        done = trio.Event()
        tally = Tally(len(messages), done)
        sender, receiver = trio.open_memory_channel[Tick](math.inf)

        async def consumer() -> None:
            async for _message in receiver:
                tally.count += 1
                if tally.count == tally.target and tally.done is not None:
                    tally.done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            send = sender.send_nowait
            start = perf_counter()
            for message in messages:
                send(message)
            await done.wait()
            seconds = perf_counter() - start
            sender.close()
        return {"seconds": seconds, "handled": tally.count}

    sample = trio.run(main)
    check("W1 trio handled", sample["handled"], len(messages))
    return sample


def run_w1(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(W1_EVENTS, size)
    messages = make_ticks(n)
    samples = alternate({"hybrid": lambda: hybrid_tell(messages), "trio": lambda: trio_tell(messages)}, rounds, warmup)
    for side in samples.values():
        for s in side:
            s["msgs_per_s"] = n / s["seconds"]
    h, t = summary(samples["hybrid"], ["msgs_per_s", "seconds"]), summary(samples["trio"], ["msgs_per_s", "seconds"])
    return {
        "title": "tell: events to one agent",
        "short": "tell",
        "params": {"events": n},
        "hybrid": h,
        "trio": t,
        "metrics": {
            "throughput": _metric(
                "msgs/s",
                h["msgs_per_s"],
                t["msgs_per_s"],
                "hybrid throughput / trio throughput",
                higher_is_better=True,
                target=(">=", 3.0, 6.0),
            ),
        },
    }


# -- W2 ask ------------------------------------------------------------------------


def _latency_sample(latencies_ns: list[int], total: int, expected: int, seconds: float) -> Sample:
    check("sum of answers", total, expected)
    return {
        "median_us": percentile([x / 1000 for x in latencies_ns], 0.5),
        "p99_us": percentile([x / 1000 for x in latencies_ns], 0.99),
        "seconds": seconds,
        "answered": len(latencies_ns),
    }


def hybrid_ask(requests: list[Ask]) -> Sample:
    """Sequential ``await address.request(req)`` to one agent; the latency of each."""
    expected = sum(r.value + 1 for r in requests)

    async def main() -> Sample:
        latencies: list[int] = []
        total = 0
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Counter(0))
            await trio.testing.wait_all_tasks_blocked()
            request = address.request
            start = perf_counter()
            for req in requests:
                t0 = perf_counter_ns()
                total += await request(req)
                latencies.append(perf_counter_ns() - t0)
            seconds = perf_counter() - start
            address.interrupt()
        return _latency_sample(latencies, total, expected, seconds)

    sample = trio.run(main)
    check("W2 hybrid answered", sample["answered"], len(requests))
    return sample


def trio_ask(requests: list[Ask]) -> Sample:
    """A request channel to one server task, and a one-slot reply channel per call."""
    expected = sum(r.value + 1 for r in requests)

    async def main() -> Sample:
        latencies: list[int] = []
        total = 0
        sender, receiver = trio.open_memory_channel[tuple[Ask, trio.MemorySendChannel[int]]](math.inf)

        async def server() -> None:
            async for req, reply in receiver:
                reply.send_nowait(req.value + 1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            await trio.testing.wait_all_tasks_blocked()
            send = sender.send_nowait
            start = perf_counter()
            for req in requests:
                t0 = perf_counter_ns()
                reply_send, reply_receive = trio.open_memory_channel[int](1)
                send((req, reply_send))
                total += await reply_receive.receive()
                latencies.append(perf_counter_ns() - t0)
            seconds = perf_counter() - start
            sender.close()
        return _latency_sample(latencies, total, expected, seconds)

    sample = trio.run(main)
    check("W2 trio answered", sample["answered"], len(requests))
    return sample


def run_w2(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(W2_REQUESTS, size)
    requests = make_asks(n)
    samples = alternate({"hybrid": lambda: hybrid_ask(requests), "trio": lambda: trio_ask(requests)}, rounds, warmup)
    keys = ["median_us", "p99_us", "seconds"]
    h, t = summary(samples["hybrid"], keys), summary(samples["trio"], keys)
    return {
        "title": "ask: sequential requests to one agent",
        "short": "ask",
        "params": {"requests": n},
        "hybrid": h,
        "trio": t,
        "metrics": {
            "latency_median": _metric(
                "us",
                h["median_us"],
                t["median_us"],
                "hybrid latency / trio latency",
                higher_is_better=False,
                target=("<=", 1.0, 0.5),
            ),
            "latency_p99": _metric(
                "us", h["p99_us"], t["p99_us"], "hybrid latency / trio latency", higher_is_better=False
            ),
        },
    }


# -- W3 spawn/stop and memory ---------------------------------------------------------


async def _idle_task(receiver: trio.MemoryReceiveChannel[Tick], ended: list[int]) -> None:
    async for _message in receiver:
        pass
    ended[0] += 1


def _interrupted(address: hybrid.Address[Any]) -> bool:
    reason = address.statistics().reason
    return reason is not None and reason.interrupted


def hybrid_spawn_stop(n: int) -> Sample:
    """Spawn `n` idle agents, wait until all are parked, interrupt them all, wait until all ended."""

    async def main() -> Sample:
        start = perf_counter()
        async with trio.open_nursery() as nursery:
            addresses = [hybrid.spawn(nursery, Idle()) for _ in range(n)]
            await trio.testing.wait_all_tasks_blocked()
            for address in addresses:
                address.interrupt()
        seconds = perf_counter() - start
        stopped = sum(1 for a in addresses if _interrupted(a))
        return {"seconds": seconds, "us_per_agent": seconds / n * 1e6, "stopped": stopped}

    sample = trio.run(main)
    check("W3 hybrid agents interrupted", sample["stopped"], n)
    return sample


def trio_spawn_stop(n: int) -> Sample:
    """Start `n` tasks each waiting on its own memory channel, then close every channel."""

    async def main() -> Sample:
        ended = [0]
        start = perf_counter()
        async with trio.open_nursery() as nursery:
            senders: list[trio.MemorySendChannel[Tick]] = []
            for _ in range(n):
                sender, receiver = trio.open_memory_channel[Tick](math.inf)
                nursery.start_soon(_idle_task, receiver, ended)
                senders.append(sender)
            await trio.testing.wait_all_tasks_blocked()
            for sender in senders:
                sender.close()
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_agent": seconds / n * 1e6, "stopped": ended[0]}

    sample = trio.run(main)
    check("W3 trio tasks ended", sample["stopped"], n)
    return sample


def memory_per_idle(side: str, n: int, mode: str) -> Sample:
    """Bytes per idle live agent (or task), measured in a fresh interpreter.

    `mode` is ``"tracemalloc"`` (Python allocations traced while the agents
    live) or ``"rss"`` (growth of the resident set). A fresh process each time:
    the allocator never gives memory back, so a second measurement in the same
    process would see the arenas of the first.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        [sys.executable, "-m", "bench._memory", side, str(n), mode],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    sample: Sample = json.loads(out.stdout)
    check(f"W3 {side} live during the {mode} measurement", sample["live"], n)
    return sample


def run_w3(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(W3_AGENTS, size)
    samples = alternate({"hybrid": lambda: hybrid_spawn_stop(n), "trio": lambda: trio_spawn_stop(n)}, rounds, warmup)
    # Memory is deterministic up to the allocator: fewer rounds, fresh processes, no warm-up needed.
    mem_rounds = min(rounds, 3)
    memory = alternate(
        {
            "hybrid_tracemalloc": lambda: memory_per_idle("hybrid", n, "tracemalloc"),
            "trio_tracemalloc": lambda: memory_per_idle("trio", n, "tracemalloc"),
            "hybrid_rss": lambda: memory_per_idle("hybrid", n, "rss"),
            "trio_rss": lambda: memory_per_idle("trio", n, "rss"),
        },
        mem_rounds,
        warmup=0,
    )
    h = summary(samples["hybrid"], ["us_per_agent", "seconds"])
    t = summary(samples["trio"], ["us_per_agent", "seconds"])
    h["tracemalloc_bytes"] = median(memory["hybrid_tracemalloc"], "bytes_per_agent")
    t["tracemalloc_bytes"] = median(memory["trio_tracemalloc"], "bytes_per_agent")
    h["rss_bytes"] = median(memory["hybrid_rss"], "bytes_per_agent")
    t["rss_bytes"] = median(memory["trio_rss"], "bytes_per_agent")
    return {
        "title": "spawn/stop: agents started and stopped; memory per idle agent",
        "short": "spawn/stop",
        "params": {"agents": n},
        "hybrid": h,
        "trio": t,
        "metrics": {
            "spawn_stop": _metric(
                "us/agent", h["us_per_agent"], t["us_per_agent"], "hybrid cost / trio cost", higher_is_better=False
            ),
            "memory_tracemalloc": _metric(
                "B/agent",
                h["tracemalloc_bytes"],
                t["tracemalloc_bytes"],
                "hybrid bytes / trio bytes",
                higher_is_better=False,
                absolute=("<=", 2048.0, None, "B"),
            ),
            "memory_rss": _metric(
                "B/agent", h["rss_bytes"], t["rss_bytes"], "hybrid bytes / trio bytes", higher_is_better=False
            ),
        },
    }


# -- W4 fan-out / fan-in ---------------------------------------------------------------


def hybrid_fan(agents: int, messages: list[Tick]) -> Sample:
    """Send every message to each of `agents` counters, then ask each one for its count."""

    async def main() -> Sample:
        async with trio.open_nursery() as nursery:
            addresses = [hybrid.spawn(nursery, Counter(len(messages))) for _ in range(agents)]
            await trio.testing.wait_all_tasks_blocked()
            sends = [a.send for a in addresses]
            start = perf_counter()
            for message in messages:
                for send in sends:
                    send(message)
            total = 0
            for address in addresses:
                total += await address.request(GET_COUNT)
            seconds = perf_counter() - start
            for address in addresses:
                address.interrupt()
        return {"seconds": seconds, "handled": total}

    sample = trio.run(main)
    check("W4 hybrid events counted", sample["handled"], agents * len(messages))
    return sample


def trio_fan(agents: int, messages: list[Tick]) -> Sample:
    """The same with one task and one channel per counter; the count comes back on a reply channel."""

    async def counter(receiver: trio.MemoryReceiveChannel[Any]) -> None:
        tally = Tally(len(messages))
        async for message in receiver:
            if type(message) is Tick:
                tally.count += 1
            else:
                _request, reply = message
                reply.send_nowait(tally.count)

    async def main() -> Sample:
        async with trio.open_nursery() as nursery:
            senders: list[trio.MemorySendChannel[Any]] = []
            for _ in range(agents):
                sender, receiver = trio.open_memory_channel[Any](math.inf)
                nursery.start_soon(counter, receiver)
                senders.append(sender)
            await trio.testing.wait_all_tasks_blocked()
            sends = [s.send_nowait for s in senders]
            start = perf_counter()
            for message in messages:
                for send in sends:
                    send(message)
            total = 0
            for send in sends:
                reply_send, reply_receive = trio.open_memory_channel[int](1)
                send((GET_COUNT, reply_send))
                total += await reply_receive.receive()
            seconds = perf_counter() - start
            for sender in senders:
                sender.close()
        return {"seconds": seconds, "handled": total}

    sample = trio.run(main)
    check("W4 trio events counted", sample["handled"], agents * len(messages))
    return sample


def run_w4(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    agents = scaled(W4_AGENTS, size)
    events = scaled(W4_EVENTS, size)
    messages = make_ticks(events)
    samples = alternate(
        {"hybrid": lambda: hybrid_fan(agents, messages), "trio": lambda: trio_fan(agents, messages)}, rounds, warmup
    )
    for side in samples.values():
        for s in side:
            s["msgs_per_s"] = agents * events / s["seconds"]
    h, t = summary(samples["hybrid"], ["msgs_per_s", "seconds"]), summary(samples["trio"], ["msgs_per_s", "seconds"])
    return {
        "title": "fan-out/fan-in: events to many agents, counts gathered",
        "short": "fan-out/in",
        "params": {"agents": agents, "events_per_agent": events},
        "hybrid": h,
        "trio": t,
        "metrics": {
            "throughput": _metric(
                "msgs/s", h["msgs_per_s"], t["msgs_per_s"], "hybrid throughput / trio throughput", higher_is_better=True
            ),
        },
    }


# -- W5 sync states ----------------------------------------------------------------------


def _plain_step(i: int) -> int:
    return i + 1


def hybrid_sync_steps(n: int) -> Sample:
    """One agent taking `n` do_sync steps (each a worker-thread hop)."""

    async def main() -> Sample:
        start = perf_counter()
        result = await SyncSteps(n).run()
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_step": seconds / n * 1e6, "steps": result}

    sample = trio.run(main)
    check("W5 hybrid steps", sample["steps"], n)
    return sample


def trio_sync_steps(n: int) -> Sample:
    """`n` calls of ``trio.to_thread.run_sync`` in a row."""

    async def main() -> Sample:
        start = perf_counter()
        i = 0
        for _ in range(n):
            i = await trio.to_thread.run_sync(_plain_step, i)
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_step": seconds / n * 1e6, "steps": i}

    sample = trio.run(main)
    check("W5 trio steps", sample["steps"], n)
    return sample


def run_w5(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(W5_STEPS, size)
    samples = alternate({"hybrid": lambda: hybrid_sync_steps(n), "trio": lambda: trio_sync_steps(n)}, rounds, warmup)
    h, t = summary(samples["hybrid"], ["us_per_step", "seconds"]), summary(samples["trio"], ["us_per_step", "seconds"])
    return {
        "title": "sync states: do_sync steps vs trio.to_thread.run_sync",
        "short": "sync states",
        "params": {"steps": n},
        "hybrid": h,
        "trio": t,
        "metrics": {
            "step_cost": _metric(
                "us/step",
                h["us_per_step"],
                t["us_per_step"],
                "hybrid cost / trio cost",
                higher_is_better=False,
                target=("<=", 1.2, None),
            ),
        },
    }


# -- W6 transitions -------------------------------------------------------------------------


async def _plain_tick(i: int) -> int:
    return i + 1


def hybrid_transitions(n: int) -> Sample:
    """One agent taking `n` do_async self-transitions."""

    async def main() -> Sample:
        start = perf_counter()
        result = await SelfLoop(n).run()
        seconds = perf_counter() - start
        return {"seconds": seconds, "steps": result}

    sample = trio.run(main)
    check("W6 hybrid transitions", sample["steps"], n)
    return sample


def trio_transitions(n: int) -> Sample:
    """A loop awaiting the same coroutine `n` times, with a trio checkpoint per step."""

    async def main() -> Sample:
        start = perf_counter()
        i = 0
        for _ in range(n):
            i = await _plain_tick(i)
            await checkpoint()
        seconds = perf_counter() - start
        return {"seconds": seconds, "steps": i}

    sample = trio.run(main)
    check("W6 trio steps", sample["steps"], n)
    return sample


def run_w6(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(W6_TRANSITIONS, size)
    samples = alternate({"hybrid": lambda: hybrid_transitions(n), "trio": lambda: trio_transitions(n)}, rounds, warmup)
    for side in samples.values():
        for s in side:
            s["steps_per_s"] = n / s["seconds"]
    h = summary(samples["hybrid"], ["steps_per_s", "seconds"])
    t = summary(samples["trio"], ["steps_per_s", "seconds"])
    return {
        "title": "transitions: do_async self-transitions vs await + checkpoint",
        "short": "transitions",
        "params": {"transitions": n},
        "hybrid": h,
        "trio": t,
        "metrics": {
            "throughput": _metric(
                "steps/s",
                h["steps_per_s"],
                t["steps_per_s"],
                "hybrid throughput / trio throughput",
                higher_is_better=True,
                target=(">=", 3.0, 8.0),
            ),
        },
    }


# -- W7 a short state machine, many times ------------------------------------------------------


async def _plain_first(x: int) -> int:
    return x + 1


async def _plain_second(x: int) -> int:
    return x + 2


async def _plain_third(x: int) -> int:
    return x + 3


async def _plain_machine() -> int:
    x = await _plain_first(0)
    await checkpoint()
    x = await _plain_second(x)
    await checkpoint()
    x = await _plain_third(x)
    await checkpoint()
    return x


def hybrid_machine(n: int, machine: type[ThreeStates] = ThreeStates) -> Sample:
    """`n` runs of a new `ThreeStates` (or `LeanThreeStates`) agent with ``await agent.run()``."""

    async def main() -> Sample:
        total = 0
        start = perf_counter()
        for _ in range(n):
            total += await machine().run()
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_run": seconds / n * 1e6, "total": total}

    sample = trio.run(main)
    check("W7 hybrid outputs", sample["total"], 6 * n)
    return sample


def trio_machine(n: int) -> Sample:
    """`n` calls of a plain function awaiting the three coroutines, a checkpoint after each."""

    async def main() -> Sample:
        total = 0
        start = perf_counter()
        for _ in range(n):
            total += await _plain_machine()
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_run": seconds / n * 1e6, "total": total}

    sample = trio.run(main)
    check("W7 trio outputs", sample["total"], 6 * n)
    return sample


def run_w7(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(W7_RUNS, size)
    samples = alternate(
        {
            "hybrid": lambda: hybrid_machine(n),
            "lean": lambda: hybrid_machine(n, LeanThreeStates),
            "trio": lambda: trio_machine(n),
        },
        rounds,
        warmup,
    )
    h, t = summary(samples["hybrid"], ["us_per_run", "seconds"]), summary(samples["trio"], ["us_per_run", "seconds"])
    lean = summary(samples["lean"], ["us_per_run", "seconds"])
    return {
        "title": "3-state machine: a new agent.run() per run",
        "short": "3-state run",
        "params": {"runs": n},
        "hybrid": h,
        "trio": t,
        "metrics": {
            "run_cost": _metric(
                "us/run", h["us_per_run"], t["us_per_run"], "hybrid cost / trio cost", higher_is_better=False
            ),
            # The same machine declaring helper_tasks = False: run() opens no nursery.
            "run_cost_no_helpers": _metric(
                "us/run", lean["us_per_run"], t["us_per_run"], "hybrid cost / trio cost", higher_is_better=False
            ),
        },
    }


# -- W8 a 3-stage pipeline ------------------------------------------------------------------
#
# Two shapes of the same three stages (+1, *2, -1):
# - plain ``async def`` functions that never yield, one worker per stage (the
#   `throughput` metric; an asyncio version of the hand-written side is
#   measured too, reported in the results file as ``W8.asyncio``);
# - functions that await a schedule point (``trio.sleep(0)``, as any I/O
#   would) with 1, 4 and 16 workers per stage, to show how throughput goes
#   with the number of workers. The hand-written trio side runs that many
#   tasks per stage on shared channels, which gives outputs in no particular
#   order: the hybrid side is measured ordered (the default, which does more)
#   and, for 16 workers, unordered as well.

W8_WORKER_ITEMS = 5_000
W8_WORKERS = (1, 4, 16)


async def _increment(x: int) -> int:
    return x + 1


async def _double(x: int) -> int:
    return x * 2


async def _decrement(x: int) -> int:
    return x - 1


async def _increment_yielding(x: int) -> int:
    await checkpoint()  # what trio.sleep(0) does: a schedule point
    return x + 1


async def _double_yielding(x: int) -> int:
    await checkpoint()
    return x * 2


async def _decrement_yielding(x: int) -> int:
    await checkpoint()
    return x - 1


_PLAIN = (_increment, _double, _decrement)
_YIELDING = (_increment_yielding, _double_yielding, _decrement_yielding)


def _pipeline_sample(side: str, n: int, seconds: float, results: list[int], ordered: bool) -> Sample:
    check(f"W8 {side} items", len(results), n)
    check(f"W8 {side} total", sum(results), n * n)
    if ordered:
        check(f"W8 {side} order", results, [2 * x + 1 for x in range(n)])
    return {"seconds": seconds, "items_per_s": n / seconds, "total": sum(results), "count": len(results)}


def hybrid_pipeline(n: int, workers: int = 1, *, yielding: bool = False, ordered: bool = True) -> Sample:
    """`n` items through ``Pipeline(Stage(+1), Stage(*2), Stage(-1))`` with buffers of W8_BUFFER.

    `workers` is each stage's concurrency; `yielding` stages await ``trio.sleep(0)``.
    """

    async def main() -> tuple[float, list[int]]:
        pipeline = hybrid.Pipeline(
            *(hybrid.Stage(fn, concurrency=workers) for fn in (_YIELDING if yielding else _PLAIN)),
            source=range(n),
            buffer=W8_BUFFER,
            ordered=ordered,
        )
        start = perf_counter()
        results = await pipeline.run()
        seconds = perf_counter() - start
        assert results is not None
        return seconds, results

    seconds, results = trio.run(main)
    return _pipeline_sample("hybrid", n, seconds, results, ordered)


def trio_pipeline(n: int, workers: int = 1, *, yielding: bool = False) -> Sample:
    """The same three stages hand-written: `workers` tasks each, linked by memory channels of W8_BUFFER."""

    async def stage(
        fn: Callable[[int], Any], receive: trio.MemoryReceiveChannel[int], send: trio.MemorySendChannel[int]
    ) -> None:
        async with receive, send:
            async for item in receive:
                await send.send(await fn(item))

    async def main() -> tuple[float, list[int]]:
        results: list[int] = []
        start = perf_counter()
        async with trio.open_nursery() as nursery:
            source_send, receive = trio.open_memory_channel[int](W8_BUFFER)
            for fn in _YIELDING if yielding else _PLAIN:
                send, next_receive = trio.open_memory_channel[int](W8_BUFFER)
                if workers == 1:
                    nursery.start_soon(stage, fn, receive, send)
                else:
                    async with receive, send:  # each task has its own clones; these close here
                        for _ in range(workers):
                            nursery.start_soon(stage, fn, receive.clone(), send.clone())
                receive = next_receive

            async def feed() -> None:
                async with source_send:
                    for item in range(n):
                        await source_send.send(item)

            nursery.start_soon(feed)
            async with receive:
                async for item in receive:
                    results.append(item)
        return perf_counter() - start, results

    seconds, results = trio.run(main)
    return _pipeline_sample("trio", n, seconds, results, ordered=workers == 1)


def asyncio_pipeline(n: int) -> Sample:
    """The plain stages hand-written for asyncio: a task each, linked by ``asyncio.Queue(W8_BUFFER)``."""
    import asyncio  # noqa: PLC0415 - only this side needs it

    end = object()

    async def stage(fn: Callable[[int], Any], receive: asyncio.Queue[Any], send: asyncio.Queue[Any]) -> None:
        while (item := await receive.get()) is not end:
            await send.put(await fn(item))
        await send.put(end)

    async def main() -> tuple[float, list[int]]:
        results: list[int] = []
        start = perf_counter()
        first: asyncio.Queue[Any] = asyncio.Queue(W8_BUFFER)
        receive = first
        tasks = []
        for fn in _PLAIN:
            send: asyncio.Queue[Any] = asyncio.Queue(W8_BUFFER)
            tasks.append(asyncio.create_task(stage(fn, receive, send)))
            receive = send

        async def feed() -> None:
            for item in range(n):
                await first.put(item)
            await first.put(end)

        tasks.append(asyncio.create_task(feed()))
        while (item := await receive.get()) is not end:
            results.append(item)
        await asyncio.gather(*tasks)
        return perf_counter() - start, results

    seconds, results = asyncio.run(main())
    return _pipeline_sample("asyncio", n, seconds, results, ordered=True)


def _bind(side: Callable[..., Sample], *args: Any, **kwargs: Any) -> Callable[[], Sample]:
    return lambda: side(*args, **kwargs)


def run_w8(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(W8_ITEMS, size)
    m = scaled(W8_WORKER_ITEMS, size)
    sides: dict[str, Callable[[], Sample]] = {
        "hybrid": lambda: hybrid_pipeline(n),
        "trio": lambda: trio_pipeline(n),
        "asyncio": lambda: asyncio_pipeline(n),
    }
    for w in W8_WORKERS:
        sides[f"hybrid_async_{w}"] = _bind(hybrid_pipeline, m, w, yielding=True)
        sides[f"trio_async_{w}"] = _bind(trio_pipeline, m, w, yielding=True)
    top = W8_WORKERS[-1]
    sides[f"hybrid_async_{top}_unordered"] = _bind(hybrid_pipeline, m, top, yielding=True, ordered=False)
    samples = alternate(sides, rounds, warmup)
    s = {name: summary(side_samples, ["items_per_s", "seconds"]) for name, side_samples in samples.items()}
    metrics = {
        "throughput": _metric(
            "items/s",
            s["hybrid"]["items_per_s"],
            s["trio"]["items_per_s"],
            "hybrid throughput / trio throughput",
            higher_is_better=True,
        ),
    }
    for w in W8_WORKERS:
        metrics[f"async_{w}_workers"] = _metric(
            "items/s",
            s[f"hybrid_async_{w}"]["items_per_s"],
            s[f"trio_async_{w}"]["items_per_s"],
            f"hybrid throughput / trio throughput, {w} workers per stage awaiting a schedule point",
            higher_is_better=True,
        )
    metrics[f"async_{top}_workers_unordered"] = _metric(
        "items/s",
        s[f"hybrid_async_{top}_unordered"]["items_per_s"],
        s[f"trio_async_{top}"]["items_per_s"],
        f"hybrid throughput / trio throughput, {top} workers per stage, ordered=False",
        higher_is_better=True,
    )
    return {
        "title": "pipeline: 3 stages (+1, *2, -1) vs the same stages as trio tasks and channels",
        "short": "3-stage pipeline",
        "params": {"items": n, "buffer": W8_BUFFER, "worker_items": m, "workers": list(W8_WORKERS)},
        "hybrid": s.pop("hybrid"),
        "trio": s.pop("trio"),
        # asyncio.Queue stages, as the trio side: JSON only (the table compares with trio).
        "asyncio": s.pop("asyncio"),
        "hybrid_vs_asyncio": ratio(metrics["throughput"]["hybrid"], median(samples["asyncio"], "items_per_s")),
        "variants": s,
        "metrics": metrics,
    }


# -- registry -------------------------------------------------------------------------------


def _metric(
    unit: str,
    hybrid_value: float,
    trio_value: float,
    ratio_def: str,
    *,
    higher_is_better: bool,
    target: tuple[str, float, float | None] | None = None,
    absolute: tuple[str, float, float | None, str] | None = None,
) -> dict[str, Any]:
    """One reported number: both sides, their ratio, and the target it is held to.

    `target` applies to the ratio; `absolute` (op, bound, goal, unit) to the
    hybrid value itself (the memory budget).
    """
    value = ratio(hybrid_value, trio_value)
    entry: dict[str, Any] = {
        "unit": unit,
        "hybrid": hybrid_value,
        "trio": trio_value,
        "ratio": value,
        "ratio_def": ratio_def,
        "higher_is_better": higher_is_better,
        "target": None,
    }
    if target is not None:
        op, bound, goal = target
        entry["target"] = _target("ratio", value, op=op, bound=bound, goal=goal, unit="x")
    elif absolute is not None:
        op, bound, goal, target_unit = absolute
        entry["target"] = _target("hybrid", hybrid_value, op=op, bound=bound, goal=goal, unit=target_unit)
    return entry


def _target(on: str, value: float, *, op: str, bound: float, goal: float | None, unit: str) -> dict[str, Any]:
    def holds(limit: float) -> bool:
        return value >= limit if op == ">=" else value <= limit

    return {
        "on": on,
        "op": op,
        "bound": bound,
        "goal": goal,
        "unit": unit,
        "value": value,
        "met": holds(bound),
        "goal_met": None if goal is None else holds(goal),
    }


WORKLOADS: dict[str, Callable[[float, int, int], dict[str, Any]]] = {
    "W1": run_w1,
    "W2": run_w2,
    "W3": run_w3,
    "W4": run_w4,
    "W5": run_w5,
    "W6": run_w6,
    "W7": run_w7,
    "W8": run_w8,
}
"""Workload key -> ``run(size, rounds, warmup)`` returning its results entry."""
