"""W11 coordination: ``python -m bench.coordination`` from the repo root (also ``python -m bench --only W11``).

What the coordination primitives cost, each against the thing it replaces,
measured in one run with the sides alternating within each round (a fresh
``trio.run`` per sample, ``gc.collect()`` before each, the first round
discarded; medians, and the range over the rounds):

- **Pool on async work**: `CALLERS` caller tasks share the requests, each
  making its share one after the other; the handler awaits
  ``trio.sleep(SLEEP)`` (simulated I/O). Requests per second through one
  agent and through ``hybrid.Pool(Worker, size=n)`` for n in `POOL_SIZES`
  (round robin); each side gets ``ASYNC_REQUESTS_PER_MEMBER * n`` requests
  (the agent alone counts as one member) so that every sample lasts about as
  long. Reported: the pool's throughput over the single agent's (the
  scaling; ideal = n until the callers or the CPU are the limit). Beside
  it, the hand-written trio pool of n workers (`trio_workers`: one request
  channel, a reply channel per call), which also reports how long its
  sleeps really took (trio's timers are late by up to the poll's 1 ms
  resolution, the more so the more sleepers).
- **Pool routing on zero-work requests** (the handler returns at once):
  one caller making `ZERO_REQUESTS` requests in a row to a pool of one
  member against the same to the agent itself (what the pool's hop costs a
  caller); the same with `CALLERS` callers; and a pool of `ROUTING_POOL`
  members with `CALLERS` callers by ROUND_ROBIN, SMALLEST_MAILBOX and
  CONSISTENT_HASH (`HASH_KEYS` keys, one per caller), against the agent alone.
- **Priority mailbox on W1**: W1's workload (`bench.workloads`: its `Tick`
  events, its `Counter` agent, the events all sent before the agent runs)
  with `Counter` subclasses differing only by a ``message_priority``
  override: `PRIORITY_LEVELS` levels (``seq % PRIORITY_LEVELS``, so the
  levels interleave), and a constant 0; against the plain FIFO mailbox.
  Reported in ns per event; target: <= `TARGET_PRIORITY` x the plain one.
- **Quorum**: `QUORUM_CALLS` calls in a row of
  ``await hybrid.quorum(need, [a.request(Zero(i)) for a in five])`` with need
  3 and 5, against one ``await agent.request(Zero(i))`` per call; target:
  <= `TARGET_QUORUM` x one request. Shown beside: five requests awaited one
  after the other, a hand-written nursery of five request tasks (the task
  per member `quorum` keeps for awaitables other than hybrid requests), no
  hybrid at all, a nursery of five tasks each awaiting a trivial coroutine
  (what the nursery costs), and a proxy of a quorum without a task per
  member (`_taskless_5`: five events and one park of the caller; not an API),
  the floor of `quorum`'s own taskless path for hybrid requests.

Options:
    --size F       scale the request, event and call counts (default 1.0)
    --repeat N     measured rounds (default 5), after --warmup rounds (default 1)
    --output PATH  also write the results as JSON
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/coordination.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import attrs
import trio
import trio.testing

import hybrid
from bench._harness import Sample, alternate, check, grid, number, parse_rounds, rounds_parser, scaled
from bench.workloads import W1_EVENTS, Counter, Tick, _metric, _target, hybrid_tell, make_ticks
from hybrid import Agent, Pool, Routing

CALLERS = 64
"""Concurrent caller tasks of the pool sides (fixed, not scaled by --size)."""

SLEEP = 0.001
"""Seconds each async request's handler sleeps (simulated I/O)."""

POOL_SIZES = (1, 2, 4, 8, 16)

ASYNC_REQUESTS_PER_MEMBER = 150
"""Async requests per member (the agent alone: one member), at --size 1."""

ZERO_REQUESTS = 10_000
"""Zero-work requests per routing side, at --size 1."""

ROUTING_POOL = 4
"""Members of the pool that compares the routings."""

HASH_KEYS = CALLERS
"""Distinct keys of the CONSISTENT_HASH side (a user per caller)."""

PRIORITY_EVENTS = W1_EVENTS
"""Events of the priority-mailbox sides: W1's count, at --size 1."""

PRIORITY_LEVELS = 4

QUORUM_AGENTS = 5
QUORUM_CALLS = 5_000
"""Calls in a row of each quorum side, at --size 1."""

TARGET_PRIORITY = 1.3
"""A priority mailbox costs at most this many times the plain one per event (W1)."""

TARGET_QUORUM = 5.0
"""A quorum of 5 costs at most this many times one request."""


# -- messages and agents -------------------------------------------------------------------------


@attrs.frozen
class Sleep(hybrid.Request[int]):
    """An async request: the handler sleeps `seconds`, then answers ``value + 1``."""

    value: int
    seconds: float


@attrs.frozen
class Zero(hybrid.Request[int]):
    """A zero-work request: the answer is ``value + 1``, at once."""

    value: int


class Countdown:
    """What a quorum without a task per member would keep: answers still needed, and the caller parked."""

    __slots__ = ("remaining", "task")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.task = trio.lowlevel.current_task()

    def answered(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            trio.lowlevel.reschedule(self.task)


@attrs.frozen
class Ping:
    """An event standing for one member's answer in the taskless proxy."""

    countdown: Countdown


class Worker(Agent):
    """Answers `Sleep` after its sleep and `Zero` at once."""

    @hybrid.on_request
    async def sleep(self, request: Sleep) -> int:
        await trio.sleep(request.seconds)
        return request.value + 1

    @hybrid.on_request
    async def zero(self, request: Zero) -> int:
        return request.value + 1

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        event.countdown.answered()


class LevelsCounter(Counter):
    """W1's `Counter` with a priority mailbox: `PRIORITY_LEVELS` levels, interleaved."""

    @staticmethod
    def message_priority(message: Tick) -> int:
        return message.seq % PRIORITY_LEVELS


class ConstantCounter(Counter):
    """W1's `Counter` with a priority mailbox whose every message has priority 0."""

    @staticmethod
    def message_priority(message: Tick) -> int:
        return 0


def _user_key(message: Zero | Sleep) -> int:
    """CONSISTENT_HASH's key: one of `HASH_KEYS` users (caller ``i`` always asks for user ``i``)."""
    return message.value % HASH_KEYS


# -- the pool sides -------------------------------------------------------------------------------


Target = tuple[int, Routing] | None
"""What the callers ask: None for one `Worker`, else a `Pool` of (size, routing)."""


def _spawn(nursery: trio.Nursery, target: Target) -> hybrid.Address[Any]:
    if target is None:
        return hybrid.spawn(nursery, Worker())
    size, routing = target
    key = _user_key if routing is Routing.CONSISTENT_HASH else None
    return hybrid.spawn(nursery, Pool(Worker, size=size, routing=routing, key=key))


async def _ask_all(
    ask: Callable[[Any], Awaitable[int]], requests: Sequence[Zero | Sleep], callers: int
) -> tuple[float, int]:
    """`callers` tasks share `requests`, each making its share in a row with `ask`; (seconds, sum of the answers).

    The tasks are started and parked before the clock starts.
    """
    go = trio.Event()
    total = [0]

    async def caller(share: Sequence[Zero | Sleep]) -> None:
        await go.wait()
        subtotal = 0
        for req in share:
            subtotal += await ask(req)
        total[0] += subtotal

    async with trio.open_nursery() as nursery:
        for i in range(callers):
            nursery.start_soon(caller, requests[i::callers])
        await trio.testing.wait_all_tasks_blocked()
        start = perf_counter()
        go.set()
    return perf_counter() - start, total[0]


def _request_sample(side: str, requests: Sequence[Zero | Sleep], seconds: float, total: int) -> Sample:
    check(f"W11 {side} sum of answers", total, sum(r.value + 1 for r in requests))
    n = len(requests)
    return {"seconds": seconds, "us_per_request": seconds / n * 1e6, "per_s": n / seconds, "answered": n}


def served(target: Target, requests: Sequence[Zero | Sleep], callers: int) -> Sample:
    """`requests` from `callers` tasks to one agent or a pool; the time per request and the throughput."""

    async def main() -> tuple[float, int]:
        async with trio.open_nursery() as nursery:
            address = _spawn(nursery, target)
            await trio.testing.wait_all_tasks_blocked()  # the agent (and the members) parked
            result = await _ask_all(address.request, requests, callers)
            address.interrupt()
        return result

    return _request_sample(f"{target}", requests, *trio.run(main))


def trio_workers(workers: int, requests: Sequence[Sleep], callers: int) -> Sample:
    """The hand-written trio pool: `workers` tasks sharing one request channel, a one-slot reply channel per call.

    Each worker takes the next request when it is free (the best spread there
    is), sleeps as the agent's handler does, and answers on the reply channel.
    The sample also has ``sleep_ms``: how long each sleep really took, on
    average (trio's timers wake up late by up to the poll's 1 ms resolution,
    more so with more sleepers).
    """

    async def main() -> tuple[tuple[float, int], float]:
        send, receive = trio.open_memory_channel[tuple[Sleep, trio.MemorySendChannel[int]]](math.inf)

        slept = [0.0]

        async def worker() -> None:
            async for req, reply in receive:
                t0 = perf_counter()
                await trio.sleep(req.seconds)
                slept[0] += perf_counter() - t0
                reply.send_nowait(req.value + 1)

        async def ask(req: Sleep) -> int:
            reply_send, reply_receive = trio.open_memory_channel[int](1)
            send.send_nowait((req, reply_send))
            return await reply_receive.receive()

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
            await trio.testing.wait_all_tasks_blocked()
            result = await _ask_all(ask, requests, callers)
            send.close()
        return result, slept[0]

    (seconds, total), slept = trio.run(main)
    sample = _request_sample(f"trio {workers} workers", requests, seconds, total)
    sample["sleep_ms"] = slept / len(requests) * 1e3  # how long trio.sleep(SLEEP) really took, on average
    return sample


# -- the priority mailbox sides ---------------------------------------------------------------------


def tell(agent_type: type[Counter], messages: list[Tick]) -> Sample:
    """W1's hybrid side (`bench.workloads.hybrid_tell`) with the agent class as a parameter."""
    sample = hybrid_tell(messages, agent_type, label=f"W11 {agent_type.__name__}")
    sample["ns_per_event"] = sample["seconds"] / len(messages) * 1e9
    sample["per_s"] = len(messages) / sample["seconds"]
    return sample


# -- the quorum sides ---------------------------------------------------------------------------------


async def _one(agents: Sequence[hybrid.Address[Worker]], req: Zero) -> int:
    return await agents[0].request(req)


async def _quorum_3(agents: Sequence[hybrid.Address[Worker]], req: Zero) -> int:
    return sum(await hybrid.quorum(3, [a.request(req) for a in agents]))


async def _quorum_5(agents: Sequence[hybrid.Address[Worker]], req: Zero) -> int:
    return sum(await hybrid.quorum(5, [a.request(req) for a in agents]))


async def _sequential_5(agents: Sequence[hybrid.Address[Worker]], req: Zero) -> int:
    total = 0
    for a in agents:
        total += await a.request(req)
    return total


async def _nursery_5(agents: Sequence[hybrid.Address[Worker]], req: Zero) -> int:
    results: list[int] = []

    async def ask(address: hybrid.Address[Worker]) -> None:
        results.append(await address.request(req))

    async with trio.open_nursery() as nursery:
        for a in agents:
            nursery.start_soon(ask, a)
    return sum(results)


async def _trivial(value: int) -> int:
    return value + 1


async def _trio_nursery_5(agents: Sequence[hybrid.Address[Worker]], req: Zero) -> int:
    results: list[int] = []

    async def run() -> None:
        results.append(await _trivial(req.value))

    async with trio.open_nursery() as nursery:
        for _ in agents:
            nursery.start_soon(run)
    return sum(results)


async def _taskless_5(agents: Sequence[hybrid.Address[Worker]], req: Zero) -> int:
    countdown = Countdown(len(agents))
    ping = Ping(countdown)
    for a in agents:
        a.send(ping)
    await trio.lowlevel.wait_task_rescheduled(_abort)
    return len(agents) * (req.value + 1)


def _abort(raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


QUORUM_MODES: dict[str, tuple[int, Callable[[Sequence[hybrid.Address[Worker]], Zero], Any], str]] = {
    "one": (1, _one, "one await agent.request(Zero(i))"),
    "quorum_3": (3, _quorum_3, "await hybrid.quorum(3, [a.request(Zero(i)) for a in five])"),
    "quorum_5": (5, _quorum_5, "await hybrid.quorum(5, [a.request(Zero(i)) for a in five])"),
    "sequential_5": (5, _sequential_5, "five await a.request(Zero(i)), one after the other"),
    "nursery_5": (5, _nursery_5, "by hand: a nursery of five tasks, each await a.request(Zero(i))"),
    "trio_nursery_5": (5, _trio_nursery_5, "plain trio: a nursery of five tasks, each awaiting a trivial coroutine"),
    "taskless_5": (5, _taskless_5, "proxy of a taskless quorum(5): five events sent, one park until all handled"),
}
"""How each quorum side asks: (answers counted per call, the call, its description)."""


def quorum_calls(mode: str, requests: Sequence[Zero]) -> Sample:
    """`requests` in a row, each asked the way `QUORUM_MODES[mode]` says, to `QUORUM_AGENTS` agents."""
    answers, call, _ = QUORUM_MODES[mode]
    expected = answers * sum(r.value + 1 for r in requests)

    async def main() -> tuple[float, int]:
        total = 0
        async with trio.open_nursery() as nursery:
            agents = [hybrid.spawn(nursery, Worker()) for _ in range(QUORUM_AGENTS)]
            await trio.testing.wait_all_tasks_blocked()
            start = perf_counter()
            for req in requests:
                total += await call(agents, req)
            seconds = perf_counter() - start
            for a in agents:
                a.interrupt()
        return seconds, total

    seconds, total = trio.run(main)
    check(f"W11 {mode} sum of answers", total, expected)
    return {"seconds": seconds, "us_per_call": seconds / len(requests) * 1e6, "calls": len(requests)}


# -- the workload ------------------------------------------------------------------------------------


ROUTINGS = (Routing.ROUND_ROBIN, Routing.SMALLEST_MAILBOX, Routing.CONSISTENT_HASH)

PRIORITY_SIDES: dict[str, tuple[type[Counter], str]] = {
    "plain": (Counter, "plain FIFO mailbox (W1's Counter)"),
    "levels": (LevelsCounter, f"message_priority: seq % {PRIORITY_LEVELS}"),
    "constant": (ConstantCounter, "message_priority: 0"),
}
"""Each priority side: (agent class, description)."""


def _bind(fn: Callable[..., Sample], *args: Any, **kwargs: Any) -> Callable[[], Sample]:
    return lambda: fn(*args, **kwargs)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": list(values)}


def measure(size: float, rounds: int, warmup: int, *, progress: bool = False) -> dict[str, Any]:
    """Run every side of W11 alternately, part by part; return its entry of the results (see `bench.run`)."""
    per_member = scaled(ASYNC_REQUESTS_PER_MEMBER, size)
    zero = [Zero(i) for i in range(scaled(ZERO_REQUESTS, size))]
    ticks = make_ticks(scaled(PRIORITY_EVENTS, size))
    calls = [Zero(i) for i in range(scaled(QUORUM_CALLS, size))]

    def sleeps(members: int) -> list[Sleep]:
        return [Sleep(i, SLEEP) for i in range(per_member * members)]

    parts: dict[str, dict[str, Callable[[], Sample]]] = {
        "async": {
            "agent": _bind(served, None, sleeps(1), CALLERS),
            **{f"pool_{n}": _bind(served, (n, Routing.ROUND_ROBIN), sleeps(n), CALLERS) for n in POOL_SIZES},
            **{f"trio_{n}": _bind(trio_workers, n, sleeps(n), CALLERS) for n in POOL_SIZES},
        },
        "zero": {
            "agent_1": _bind(served, None, zero, 1),
            "pool_1_1": _bind(served, (1, Routing.ROUND_ROBIN), zero, 1),
            "agent_many": _bind(served, None, zero, CALLERS),
            "pool_1_many": _bind(served, (1, Routing.ROUND_ROBIN), zero, CALLERS),
            **{r.name.lower(): _bind(served, (ROUTING_POOL, r), zero, CALLERS) for r in ROUTINGS},
        },
        "priority": {name: _bind(tell, agent_type, ticks) for name, (agent_type, _) in PRIORITY_SIDES.items()},
        "quorum": {mode: _bind(quorum_calls, mode, calls) for mode in QUORUM_MODES},
    }
    samples: dict[str, dict[str, list[Sample]]] = {}
    for part, sides in parts.items():
        if progress:
            print(f" {part}", end="", flush=True, file=sys.stderr)
        samples[part] = alternate(sides, rounds, warmup)
    params = {
        "callers": CALLERS,
        "sleep_s": SLEEP,
        "pool_sizes": list(POOL_SIZES),
        "async_requests_per_member": per_member,
        "zero_requests": len(zero),
        "routing_pool": ROUTING_POOL,
        "hash_keys": HASH_KEYS,
        "priority_events": len(ticks),
        "priority_levels": PRIORITY_LEVELS,
        "quorum_agents": QUORUM_AGENTS,
        "quorum_calls": len(calls),
        "size": size,
    }
    return _entry(samples, params)


UNITS = {"async": "per_s", "zero": "us_per_request", "priority": "ns_per_event", "quorum": "us_per_call"}
"""The figure each part reports, a key of its samples."""


def _entry(samples: dict[str, dict[str, list[Sample]]], params: dict[str, Any]) -> dict[str, Any]:
    spreads = {
        part: {name: _spread([s[UNITS[part]] for s in side]) for name, side in sides.items()}
        for part, sides in samples.items()
    }
    spreads["sleep_ms"] = {
        name: _spread([s["sleep_ms"] for s in side]) for name, side in samples["async"].items() if name[:5] == "trio_"
    }

    def med(part: str, name: str) -> float:
        return float(spreads[part][name]["median"])

    metrics: dict[str, Any] = {}
    for n in POOL_SIZES:
        metrics[f"pool_{n}_async"] = _metric(
            "req/s",
            med("async", f"pool_{n}"),
            med("async", "agent"),
            f"pool throughput / single agent throughput, {CALLERS} callers, handlers sleeping {SLEEP * 1e3:g} ms",
            higher_is_better=True,
        )
    for name, callers, label in (("pool_hop", "1", "one caller"), (f"pool_hop_{CALLERS}_callers", "many", "")):
        metrics[name] = _metric(
            "us/req",
            med("zero", f"pool_1_{callers}"),
            med("zero", f"agent_{callers}"),
            f"pool-of-1 cost / agent cost per zero-work request, {label or f'{CALLERS} callers'}",
            higher_is_better=False,
        )
    for routing in ROUTINGS:
        metrics[f"routing_{routing.name.lower()}"] = _metric(
            "us/req",
            med("zero", routing.name.lower()),
            med("zero", "agent_many"),
            f"pool cost / agent cost per zero-work request, {ROUTING_POOL} members by {routing.name}, "
            f"{CALLERS} callers",
            higher_is_better=False,
        )
    for name in ("levels", "constant"):
        metric = _metric(
            "ns/event",
            med("priority", name),
            med("priority", "plain"),
            f"priority mailbox cost / plain mailbox cost per event (W1), {PRIORITY_SIDES[name][1]}",
            higher_is_better=False,
        )
        metric["target"] = _target("ratio", metric["ratio"], op="<=", bound=TARGET_PRIORITY, goal=None, unit="x")
        metrics[f"priority_{name}"] = metric
    for need in (3, QUORUM_AGENTS):
        metric = _metric(
            "us/call",
            med("quorum", f"quorum_{need}"),
            med("quorum", "one"),
            f"quorum({need} of {QUORUM_AGENTS}) cost / one request cost, zero-work handlers",
            higher_is_better=False,
        )
        metric["target"] = _target("ratio", metric["ratio"], op="<=", bound=TARGET_QUORUM, goal=None, unit="x")
        metrics[f"quorum_{need}_of_{QUORUM_AGENTS}"] = metric
    metrics["quorum_vs_trio_nursery"] = _metric(
        "us/call",
        med("quorum", f"quorum_{QUORUM_AGENTS}"),
        med("quorum", "trio_nursery_5"),
        f"quorum({QUORUM_AGENTS} of {QUORUM_AGENTS}) cost / plain-trio nursery of {QUORUM_AGENTS} trivial tasks",
        higher_is_better=False,
    )
    top = POOL_SIZES[-1]
    return {
        "title": "coordination: Pool, priority mailbox, quorum",
        "short": "coordination",
        "params": params,
        # The main table's columns: "hybrid" is the primitive, "trio" what it is compared with.
        "hybrid": {f"pool_{top}_per_s": med("async", f"pool_{top}"), "quorum_3_us": med("quorum", "quorum_3")},
        "trio": {"agent_per_s": med("async", "agent"), "one_request_us": med("quorum", "one")},
        "spreads": spreads,
        "metrics": metrics,
    }


def run_w11(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    """W11 for ``python -m bench``."""
    return measure(size, rounds, warmup)


# -- the report ---------------------------------------------------------------------------------------


def _range(spread: dict[str, Any]) -> str:
    return f"{number(spread['median'])} [{number(spread['min'])}-{number(spread['max'])}]"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _target_cells(target: dict[str, Any] | None) -> tuple[str, str]:
    if target is None:
        return "-", "-"
    return f"{target['op']} {number(target['bound'])}x", "yes" if target["met"] else "NO"


def table_lines(entry: dict[str, Any]) -> list[str]:
    """The W11 report: pool scaling, routing, priority mailbox, quorum; medians [min-max] over the rounds."""
    p = entry["params"]
    s = entry["spreads"]
    m = entry["metrics"]
    callers = p["callers"]
    lines: list[str] = []

    agent = s["async"]["agent"]["median"]
    rows = [("single agent", f"{p['async_requests_per_member']:,}", _range(s["async"]["agent"]), "1.00x", "1.00",
             "-", "-", "-")]  # fmt: skip
    for n in p["pool_sizes"]:
        spread = s["async"][f"pool_{n}"]
        scaling = spread["median"] / agent
        workers = s["async"][f"trio_{n}"]
        rows.append((f"Pool({n})", f"{p['async_requests_per_member'] * n:,}", _range(spread), _x(scaling),
                     f"{scaling / n:.2f}", _range(workers), _x(spread["median"] / workers["median"]),
                     f"{s['sleep_ms'][f'trio_{n}']['median']:.2f}"))  # fmt: skip
    lines += [
        f"W11 Pool on async work: {callers} callers, each request's handler awaits trio.sleep({p['sleep_s']:g}); "
        "requests/s, median [min-max]; scaling = / single agent; efficiency = scaling / members; trio workers: "
        "as many tasks on one request channel, a reply channel per call; sleep ms: how long their sleeps really took",
        *grid(
            ("side", "requests", "req/s", "scaling", "efficiency", "trio workers req/s", "pool/trio", "sleep ms"), rows
        ),
    ]

    zero = s["zero"]
    routed = {r.name.lower() for r in ROUTINGS}
    zrows: list[tuple[str, ...]] = []
    for label, name, base, metric in (
        ("agent, 1 caller", "agent_1", None, None),
        ("Pool(1), 1 caller", "pool_1_1", "agent_1", "pool_hop"),
        (f"agent, {callers} callers", "agent_many", None, None),
        (f"Pool(1), {callers} callers", "pool_1_many", "agent_many", f"pool_hop_{callers}_callers"),
        *((f"Pool({p['routing_pool']}) {r.name}, {callers} callers", r.name.lower(), "agent_many",
           f"routing_{r.name.lower()}") for r in ROUTINGS),
    ):  # fmt: skip
        spread = zero[name]
        if base is None or metric is None:
            zrows.append((label, _range(spread), "-", "-", "-"))
            continue
        added = spread["median"] - zero[base]["median"]
        vs_rr = spread["median"] / zero["round_robin"]["median"] if name in routed else math.nan
        zrows.append((label, _range(spread), _x(m[metric]["ratio"]), f"{added:+.2f}", _x(vs_rr)))
    lines += [
        "",
        f"W11 Pool routing, zero-work requests ({p['zero_requests']:,} per side; CONSISTENT_HASH: {p['hash_keys']} "
        "keys, one per caller): us per request (total time / requests), median [min-max]; vs agent = / the agent "
        "with as many callers; added = us more than it",
        *grid(("side", "us/req", "vs agent", "added us", "vs round robin"), zrows),
    ]

    prio = s["priority"]
    plain = prio["plain"]["median"]
    prows: list[tuple[str, ...]] = []
    for name, (_, label) in PRIORITY_SIDES.items():
        spread = prio[name]
        metric = m.get(f"priority_{name}")
        bound, met = _target_cells(None if metric is None else metric["target"])
        prows.append((label, _range(spread), number(1e9 / spread["median"]), f"{spread['median'] - plain:+.0f}",
                      _x(spread["median"] / plain), bound, met))  # fmt: skip
    lines += [
        "",
        f"W11 priority mailbox on W1: {p['priority_events']:,} events sent to one parked agent, then handled; "
        "ns per event, median [min-max]",
        *grid(("mailbox", "ns/event", "events/s", "added ns", "vs plain", "target", "met"), prows),
    ]

    q = s["quorum"]
    one = q["one"]["median"]
    qrows: list[tuple[str, ...]] = []
    for mode, (_, _, label) in QUORUM_MODES.items():
        spread = q[mode]
        metric = m.get(f"{mode}_of_{p['quorum_agents']}")
        bound, met = _target_cells(None if metric is None else metric["target"])
        qrows.append((label, _range(spread), _x(spread["median"] / one), bound, met))
    lines += [
        "",
        f"W11 quorum: {p['quorum_calls']:,} calls in a row to {p['quorum_agents']} zero-work agents; us per call, "
        "median [min-max]; vs one = / one request",
        *grid(("call", "us/call", "vs one", "target", "met"), qrows),
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = rounds_parser(
        "python -m bench.coordination", "W11: coordination primitives", "scale the request, event and call counts"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    args = parse_rounds(parser, argv)
    t0 = perf_counter()
    print("  W11 ...", end="", flush=True, file=sys.stderr)
    entry = measure(args.size, args.repeat, args.warmup, progress=True)
    entry["wall_seconds"] = perf_counter() - t0
    print(f" {entry['wall_seconds']:.1f}s", file=sys.stderr)
    print("\n".join(table_lines(entry)))
    if args.output is not None:
        args.output.write_text(json.dumps(entry, indent=2, allow_nan=True) + "\n")
        print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
