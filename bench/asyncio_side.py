"""Hand-written asyncio on every workload: the code an asyncio user would write instead.

Each function here does the same work as the hybrid and plain-trio sides of one
workload of `bench.workloads` (the same message objects, the same handler
work, the same result checks), the idiomatic asyncio way (Python 3.11: no
``Queue.shutdown``, so a queue is "closed" with a sentinel or by cancelling its
reader, outside the timed span):

- W1 tell: ``put_nowait`` on an unbounded ``asyncio.Queue``, one task reading it;
- W2 ask: a request queue to one server task and a future per request;
- W3 spawn/stop: ``n`` tasks in an ``asyncio.TaskGroup``, each waiting on its own
  queue, then a sentinel in every queue; memory per idle task in a fresh process
  (``python -m bench.asyncio_side memory N {tracemalloc|rss}``);
- W4 fan-out/fan-in: a task and a queue per counter, the counts gathered with a
  future each;
- W5 sync steps: ``await asyncio.to_thread(step, i)`` in a row;
- W6 transitions: a loop awaiting the same coroutine, ``await asyncio.sleep(0)``
  after each (the asyncio checkpoint, as the trio side calls
  ``trio.lowlevel.checkpoint()``);
- W7 3-state run: a plain async function awaiting the three coroutines, a
  ``sleep(0)`` after each;
- W8 3-stage pipeline: three tasks (or `workers` tasks per stage) linked by
  ``asyncio.Queue(maxsize=16)``; the end of the stream is a sentinel per worker.

Every sample runs in a fresh ``asyncio.run`` (the default event loop, as an
asyncio user has it without uvloop), after ``gc.collect()``; `run_asyncio`
measures hybrid, plain trio and asyncio alternately, in that order, in every
round, and reports the medians with hybrid / asyncio and trio / asyncio ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter, perf_counter_ns
from typing import Any

from . import workloads as w
from ._harness import Sample, alternate, check, median, percentile, ratio, scaled, summary
from .workloads import GET_COUNT, Ask, Tick, make_asks, make_ticks

SIDES = ("hybrid", "trio", "asyncio")


# -- W1 tell ---------------------------------------------------------------------------------


def asyncio_tell(messages: list[Tick]) -> Sample:
    """Every message ``put_nowait`` on an unbounded queue read by one task; timed until all are handled."""

    async def main() -> Sample:
        done = asyncio.Event()
        queue: asyncio.Queue[Tick] = asyncio.Queue()
        target = len(messages)
        count = 0

        async def consumer() -> None:
            nonlocal count
            while True:
                await queue.get()
                count += 1
                if count == target:
                    done.set()

        task = asyncio.create_task(consumer())
        await asyncio.sleep(0)  # the consumer is waiting on the empty queue
        put = queue.put_nowait
        start = perf_counter()
        for message in messages:
            put(message)
        await done.wait()
        seconds = perf_counter() - start
        await _cancel(task)
        return {"seconds": seconds, "handled": count}

    sample = asyncio.run(main())
    check("W1 asyncio handled", sample["handled"], len(messages))
    return sample


async def _cancel(task: asyncio.Task[Any]) -> None:
    """End a reader that waits forever (3.11's queues cannot be closed)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- W2 ask ----------------------------------------------------------------------------------


def asyncio_ask(requests: list[Ask]) -> Sample:
    """Sequential requests to one server task: a request queue and a future per call."""
    expected = sum(r.value + 1 for r in requests)

    async def main() -> Sample:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Ask, asyncio.Future[int]]] = asyncio.Queue()

        async def server() -> None:
            while True:
                req, future = await queue.get()
                future.set_result(req.value + 1)

        task = asyncio.create_task(server())
        await asyncio.sleep(0)
        latencies: list[int] = []
        total = 0
        put = queue.put_nowait
        start = perf_counter()
        for req in requests:
            t0 = perf_counter_ns()
            future = loop.create_future()
            put((req, future))
            total += await future
            latencies.append(perf_counter_ns() - t0)
        seconds = perf_counter() - start
        await _cancel(task)
        check("sum of answers", total, expected)
        return {
            "median_us": percentile([x / 1000 for x in latencies], 0.5),
            "p99_us": percentile([x / 1000 for x in latencies], 0.99),
            "seconds": seconds,
            "answered": len(latencies),
        }

    sample = asyncio.run(main())
    check("W2 asyncio answered", sample["answered"], len(requests))
    return sample


# -- W3 spawn/stop and memory ------------------------------------------------------------------


async def _idle(queue: asyncio.Queue[Tick | None], ended: list[int]) -> None:
    while await queue.get() is not None:
        pass
    ended[0] += 1


def asyncio_spawn_stop(n: int) -> Sample:
    """Start `n` tasks each waiting on its own queue, then put the end sentinel in every queue."""

    async def main() -> Sample:
        ended = [0]
        start = perf_counter()
        async with asyncio.TaskGroup() as group:
            queues: list[asyncio.Queue[Tick | None]] = []
            for _ in range(n):
                queue: asyncio.Queue[Tick | None] = asyncio.Queue()
                group.create_task(_idle(queue, ended))
                queues.append(queue)
            await asyncio.sleep(0)  # every task runs up to its first get() before this one resumes
            for queue in queues:
                queue.put_nowait(None)
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_agent": seconds / n * 1e6, "stopped": ended[0]}

    sample = asyncio.run(main())
    check("W3 asyncio tasks ended", sample["stopped"], n)
    return sample


def asyncio_memory_per_idle(n: int, mode: str) -> Sample:
    """Bytes per idle asyncio task with its queue, measured in a fresh interpreter (as W3 does)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(w.REPO_ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        [sys.executable, "-m", "bench.asyncio_side", "memory", str(n), mode],
        cwd=w.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    sample: Sample = json.loads(out.stdout)
    check(f"W3 asyncio live during the {mode} measurement", sample["live"], n)
    return sample


async def _measure_memory(n: int, mode: str) -> Sample:
    """The asyncio counterpart of `bench._memory`: the same baseline, the same moment of measurement.

    What is kept is a queue per task (the handle a sender needs), as the trio side
    keeps a send channel and hybrid an address; the task group holds the tasks.
    """

    from ._memory import _rss  # noqa: PLC0415 - the measuring process only, as bench._memory asks

    def now() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else _rss()

    started, ended = [0], [0]

    async def idle(queue: asyncio.Queue[Tick | None]) -> None:
        started[0] += 1
        while await queue.get() is not None:
            pass
        ended[0] += 1

    async with asyncio.TaskGroup() as group:
        keep: list[asyncio.Queue[Tick | None]] = []
        keep.append(asyncio.Queue())  # the list's own growth is part of the per-task cost on every side
        keep.clear()
        await asyncio.sleep(0)
        before = now()
        for _ in range(n):
            queue: asyncio.Queue[Tick | None] = asyncio.Queue()
            group.create_task(idle(queue))
            keep.append(queue)
        await asyncio.sleep(0)  # every task is waiting on its queue
        after = now()
        live = started[0] - ended[0]
        for queue in keep:
            queue.put_nowait(None)
    check("asyncio memory: tasks ended", ended[0], n)
    return {"bytes_per_agent": (after - before) / n, "live": live, "mode": mode, "side": "asyncio"}


# -- W4 fan-out / fan-in ---------------------------------------------------------------------


def asyncio_fan(agents: int, messages: list[Tick]) -> Sample:
    """A task and a queue per counter; every message to each, then each count asked with a future."""

    async def counter(queue: asyncio.Queue[Any]) -> None:
        count = 0
        while True:
            message = await queue.get()
            if type(message) is Tick:
                count += 1
            else:
                _request, reply = message
                reply.set_result(count)

    async def main() -> Sample:
        loop = asyncio.get_running_loop()
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(agents)]
        tasks = [asyncio.create_task(counter(queue)) for queue in queues]
        await asyncio.sleep(0)
        puts = [q.put_nowait for q in queues]
        start = perf_counter()
        for message in messages:
            for put in puts:
                put(message)
        total = 0
        for put in puts:
            reply: asyncio.Future[int] = loop.create_future()
            put((GET_COUNT, reply))
            total += await reply
        seconds = perf_counter() - start
        for task in tasks:
            await _cancel(task)
        return {"seconds": seconds, "handled": total}

    sample = asyncio.run(main())
    check("W4 asyncio events counted", sample["handled"], agents * len(messages))
    return sample


# -- W5, W6, W7: steps, transitions, a short machine -------------------------------------------


def asyncio_sync_steps(n: int) -> Sample:
    """`n` calls of ``asyncio.to_thread`` in a row (the default executor of a fresh loop)."""

    async def main() -> Sample:
        start = perf_counter()
        i = 0
        for _ in range(n):
            i = await asyncio.to_thread(w._plain_step, i)
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_step": seconds / n * 1e6, "steps": i}

    sample = asyncio.run(main())
    check("W5 asyncio steps", sample["steps"], n)
    return sample


def asyncio_transitions(n: int) -> Sample:
    """A loop awaiting the same coroutine `n` times, ``await asyncio.sleep(0)`` after each."""

    async def main() -> Sample:
        start = perf_counter()
        i = 0
        for _ in range(n):
            i = await w._plain_tick(i)
            await asyncio.sleep(0)
        seconds = perf_counter() - start
        return {"seconds": seconds, "steps": i}

    sample = asyncio.run(main())
    check("W6 asyncio steps", sample["steps"], n)
    return sample


async def _asyncio_machine() -> int:
    x = await w._plain_first(0)
    await asyncio.sleep(0)
    x = await w._plain_second(x)
    await asyncio.sleep(0)
    x = await w._plain_third(x)
    await asyncio.sleep(0)
    return x


def asyncio_machine(n: int) -> Sample:
    """`n` calls of a plain async function awaiting the three coroutines, a ``sleep(0)`` after each."""

    async def main() -> Sample:
        total = 0
        start = perf_counter()
        for _ in range(n):
            total += await _asyncio_machine()
        seconds = perf_counter() - start
        return {"seconds": seconds, "us_per_run": seconds / n * 1e6, "total": total}

    sample = asyncio.run(main())
    check("W7 asyncio outputs", sample["total"], 6 * n)
    return sample


# -- W8 a 3-stage pipeline ----------------------------------------------------------------------


STAGES: tuple[Callable[[int], Awaitable[int]], ...] = (w._increment, w._double, w._decrement)


def asyncio_pipeline(n: int, workers: int = 1, buffer: int = w.W8_BUFFER) -> Sample:
    """`n` items through the three stages: `workers` tasks per stage, ``asyncio.Queue(maxsize=buffer)`` between.

    The source puts one sentinel per worker of the first stage; the last worker
    of a stage to see its sentinel puts one per worker of the next (a stage's
    queue ends once all its workers are done).
    """

    async def main() -> Sample:
        results: list[int] = []
        queues: list[asyncio.Queue[int | None]] = [asyncio.Queue(maxsize=buffer) for _ in range(len(STAGES) + 1)]

        async def worker(
            fn: Callable[[int], Awaitable[int]],
            inbox: asyncio.Queue[int | None],
            outbox: asyncio.Queue[int | None],
            running: list[int],
        ) -> None:
            while (item := await inbox.get()) is not None:
                await outbox.put(await fn(item))
            running[0] -= 1
            if running[0] == 0:  # the last worker of this stage ends the next one
                for _ in range(workers):
                    await outbox.put(None)

        async def feed() -> None:
            for item in range(n):
                await queues[0].put(item)
            for _ in range(workers):
                await queues[0].put(None)

        start = perf_counter()
        async with asyncio.TaskGroup() as group:
            for index, fn in enumerate(STAGES):
                running = [workers]
                for _ in range(workers):
                    group.create_task(worker(fn, queues[index], queues[index + 1], running))
            group.create_task(feed())
            sink = queues[-1]
            ends = 0
            while ends < workers:
                item = await sink.get()
                if item is None:
                    ends += 1
                else:
                    results.append(item)
        seconds = perf_counter() - start
        return {"seconds": seconds, "items_per_s": n / seconds, "total": sum(results), "count": len(results)}

    sample = asyncio.run(main())
    check("W8 asyncio items", sample["count"], n)
    check("W8 asyncio total", sample["total"], n * n)
    return sample


# -- hybrid, trio and asyncio, alternately ------------------------------------------------------


def _metric(unit: str, values: dict[str, float], *, higher_is_better: bool) -> dict[str, Any]:
    """One reported number on the three sides and the ratios to asyncio."""
    return {
        "unit": unit,
        **values,
        "higher_is_better": higher_is_better,
        "hybrid_vs_asyncio": ratio(values["hybrid"], values["asyncio"]),
        "trio_vs_asyncio": ratio(values["trio"], values["asyncio"]),
    }


def _entry(
    title: str,
    short: str,
    params: dict[str, Any],
    samples: dict[str, list[Sample]],
    metrics: Sequence[tuple[str, str, str, bool]],
) -> dict[str, Any]:
    """A workload's entry: each side's summary and its metrics (name, sample key, unit, higher is better)."""
    keys = [key for _, key, _, _ in metrics]
    sides = {side: summary(samples[side], [*keys, "seconds"]) for side in SIDES}
    return {
        "title": title,
        "short": short,
        "params": params,
        **sides,
        "metrics": {
            name: _metric(unit, {side: sides[side][key] for side in SIDES}, higher_is_better=higher)
            for name, key, unit, higher in metrics
        },
    }


def _per_second(samples: dict[str, list[Sample]], count: int, key: str) -> None:
    for side in samples.values():
        for s in side:
            s[key] = count / s["seconds"]


def _three_sides(
    rounds: int, warmup: int, functions: tuple[Callable[..., Sample], ...], *args: object
) -> dict[str, list[Sample]]:
    """The workload's hybrid, trio and asyncio functions (in `SIDES` order) on the same arguments, alternately."""
    sides: dict[str, Callable[[], Sample]] = {
        side: functools.partial(function, *args) for side, function in zip(SIDES, functions, strict=True)
    }
    return alternate(sides, rounds, warmup)


def _w1(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(w.W1_EVENTS, size)
    messages = make_ticks(n)
    samples = _three_sides(rounds, warmup, (w.hybrid_tell, w.trio_tell, asyncio_tell), messages)
    _per_second(samples, n, "msgs_per_s")
    return _entry(
        "tell: events to one receiver", "tell", {"events": n}, samples, [("throughput", "msgs_per_s", "msgs/s", True)]
    )


def _w2(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(w.W2_REQUESTS, size)
    requests = make_asks(n)
    samples = _three_sides(rounds, warmup, (w.hybrid_ask, w.trio_ask, asyncio_ask), requests)
    return _entry(
        "ask: sequential requests to one receiver",
        "ask",
        {"requests": n},
        samples,
        [("latency_median", "median_us", "us", False), ("latency_p99", "p99_us", "us", False)],
    )


def _w3(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(w.W3_AGENTS, size)
    samples = _three_sides(rounds, warmup, (w.hybrid_spawn_stop, w.trio_spawn_stop, asyncio_spawn_stop), n)
    memory: dict[str, Callable[[], Sample]] = {}
    for mode in ("tracemalloc", "rss"):
        memory[f"hybrid_{mode}"] = functools.partial(w.memory_per_idle, "hybrid", n, mode)
        memory[f"trio_{mode}"] = functools.partial(w.memory_per_idle, "trio", n, mode)
        memory[f"asyncio_{mode}"] = functools.partial(asyncio_memory_per_idle, n, mode)
    measured = alternate(memory, min(rounds, 3), warmup=0)  # near-deterministic: fewer rounds, fresh processes
    entry = _entry(
        "spawn/stop: idle receivers started and stopped; memory per idle one",
        "spawn/stop",
        {"agents": n},
        samples,
        [("spawn_stop", "us_per_agent", "us/agent", False)],
    )
    for mode in ("tracemalloc", "rss"):
        values = {side: median(measured[f"{side}_{mode}"], "bytes_per_agent") for side in SIDES}
        for side in SIDES:
            entry[side][f"{mode}_bytes"] = values[side]
            entry[side][f"{mode}_samples"] = [s["bytes_per_agent"] for s in measured[f"{side}_{mode}"]]
        entry["metrics"][f"memory_{mode}"] = _metric("B/agent", values, higher_is_better=False)
    return entry


def _w4(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    agents = scaled(w.W4_AGENTS, size)
    events = scaled(w.W4_EVENTS, size)
    messages = make_ticks(events)
    samples = _three_sides(rounds, warmup, (w.hybrid_fan, w.trio_fan, asyncio_fan), agents, messages)
    _per_second(samples, agents * events, "msgs_per_s")
    return _entry(
        "fan-out/fan-in: events to many receivers, counts gathered",
        "fan-out/in",
        {"agents": agents, "events_per_agent": events},
        samples,
        [("throughput", "msgs_per_s", "msgs/s", True)],
    )


def _w5(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(w.W5_STEPS, size)
    samples = _three_sides(rounds, warmup, (w.hybrid_sync_steps, w.trio_sync_steps, asyncio_sync_steps), n)
    return _entry(
        "sync states: do_sync vs trio.to_thread.run_sync vs asyncio.to_thread",
        "sync states",
        {"steps": n},
        samples,
        [("step_cost", "us_per_step", "us/step", False)],
    )


def _w6(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(w.W6_TRANSITIONS, size)
    samples = _three_sides(rounds, warmup, (w.hybrid_transitions, w.trio_transitions, asyncio_transitions), n)
    _per_second(samples, n, "steps_per_s")
    return _entry(
        "transitions: do_async self-transitions vs await + checkpoint / sleep(0)",
        "transitions",
        {"transitions": n},
        samples,
        [("throughput", "steps_per_s", "steps/s", True)],
    )


def _w7(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(w.W7_RUNS, size)
    samples = _three_sides(rounds, warmup, (w.hybrid_machine, w.trio_machine, asyncio_machine), n)
    return _entry(
        "3-state machine: a new agent.run() per run vs a plain async function",
        "3-state run",
        {"runs": n},
        samples,
        [("run_cost", "us_per_run", "us/run", False)],
    )


def _w8(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    n = scaled(w.W8_ITEMS, size)
    samples = _three_sides(rounds, warmup, (w.hybrid_pipeline, w.trio_pipeline, asyncio_pipeline), n)
    return _entry(
        "pipeline: 3 stages (+1, *2, -1), one worker each, buffers of 16",
        "3-stage pipeline",
        {"items": n, "buffer": w.W8_BUFFER, "workers": 1},
        samples,
        [("throughput", "items_per_s", "items/s", True)],
    )


WORKLOADS: dict[str, Callable[[float, int, int], dict[str, Any]]] = {
    "W1": _w1,
    "W2": _w2,
    "W3": _w3,
    "W4": _w4,
    "W5": _w5,
    "W6": _w6,
    "W7": _w7,
    "W8": _w8,
}
"""Workload key -> ``run(size, rounds, warmup)``: hybrid, trio and asyncio measured alternately."""


def run_asyncio(
    size: float, rounds: int, warmup: int, only: Sequence[str] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Every workload (or those in `only`) on the three sides; the ``asyncio`` entry of the results."""
    entries: dict[str, Any] = {}
    for key, run in WORKLOADS.items():
        if only is not None and key not in only:
            continue
        if progress:
            print(f" {key}", end="", flush=True, file=sys.stderr)
        entries[key] = run(size, rounds, warmup)
    return {
        "sides": list(SIDES),
        "order": "hybrid, trio, asyncio alternately in every round; each sample in a fresh trio.run / asyncio.run",
        "ratio_def": "side / asyncio of the medians: for a throughput above 1 is faster than asyncio, "
        "for a latency, a cost or bytes below 1 is faster or smaller",
        "python": sys.version.split()[0],
        "event_loop": _loop_name(),
        "workloads": entries,
    }


def _loop_name() -> str:
    loop = asyncio.new_event_loop()
    try:
        return type(loop).__name__
    finally:
        loop.close()


# -- the memory subprocess ----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``python -m bench.asyncio_side memory N {tracemalloc|rss}``: print one JSON object."""
    if len(argv) != 3 or argv[0] != "memory" or argv[2] not in ("tracemalloc", "rss"):
        print(main.__doc__, file=sys.stderr)
        return 2
    n, mode = int(argv[1]), argv[2]
    if mode == "tracemalloc":
        tracemalloc.start()
    print(json.dumps(asyncio.run(_measure_memory(n, mode))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
