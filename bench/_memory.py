"""W3 memory: bytes per idle live agent (or plain trio task), in a fresh process.

Usage: ``python -m bench._memory {hybrid|hibernating|supervised|trio} N {tracemalloc|rss}``; prints
one JSON object. Run by `bench.workloads.memory_per_idle`, never imported by
the benchmark process itself (tracemalloc would slow every other workload).

The baseline is taken inside the nursery just before the agents are
started, and the measurement once all of them are parked (started, idle,
waiting for a message), after a full collection. What is counted is
everything one more live agent costs: its task, coroutine frames, runtime
record, mailbox, address, context and the agent object; for plain trio, the
task, its frames and the two ends of its memory channel. ``hibernating``:
the same agents with ``hibernate_after = 0``, idle without a task (what is
counted then is the agent, its runtime record, mailbox, address, context and
saved contextvars; their nursery's one keeper task is shared by all). They are
spawned in batches of 1,000, each batch idle before the next. ``supervised``:
hibernating children of one supervisor (started before the baseline), which
spawns them in batches of 1,000 on request; on top of a hibernating agent's
cost, each one's supervision record, runner and contained run.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import tracemalloc
from typing import Any

import trio
import trio.testing

import hybrid

from .workloads import Adopt, Idle, Keeper, SleepingIdle, Tick


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best portable number
        import resource  # noqa: PLC0415 - only where /proc is missing

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _idle_task(receiver: trio.MemoryReceiveChannel[Tick]) -> None:
    async for _message in receiver:
        pass


async def _measure(side: str, n: int, mode: str) -> dict[str, Any]:
    def now() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else _rss()

    async with trio.open_nursery() as nursery:
        keep: list[Any] = []
        keep.append(None)  # the list's own growth is part of the per-agent cost on both sides
        keep.clear()
        keeper = Keeper()
        supervisor = hybrid.spawn(nursery, keeper) if side == "supervised" else None
        if supervisor is not None:
            await supervisor.request(Adopt(0))
        await trio.testing.wait_all_tasks_blocked()
        before = now()
        if supervisor is not None:
            for start in range(0, n, 1000):
                await supervisor.request(Adopt(min(1000, n - start)))
                await trio.testing.wait_all_tasks_blocked()  # this batch hibernates before the next
        elif side != "trio":
            cls = Idle if side == "hybrid" else SleepingIdle
            for i in range(n):
                keep.append(hybrid.spawn(nursery, cls()))
                if side == "hibernating" and i % 1000 == 999:
                    # As a program makes agents over time: each batch hibernates before the next,
                    # so there is never a task per agent (spawning all at once briefly would).
                    await trio.testing.wait_all_tasks_blocked()
        else:
            for _ in range(n):
                sender, receiver = trio.open_memory_channel[Tick](math.inf)
                nursery.start_soon(_idle_task, receiver)
                keep.append(sender)
        await trio.testing.wait_all_tasks_blocked()
        after = now()
        live = len(nursery.child_tasks)
        if side == "supervised":  # its addresses are in the supervisor's list, not in `keep`
            live = sum(1 for a in keeper.kids if a.statistics().hibernating)
        elif side == "hibernating":
            live = sum(1 for a in keep if a.statistics().hibernating)
        elif side == "hybrid":
            live = min(live, sum(1 for a in keep if a.statistics().phase == "events"))
        if supervisor is not None:
            supervisor.interrupt()
        elif side != "trio":
            for address in keep:
                address.interrupt()
        else:
            for sender in keep:
                sender.close()
    return {"bytes_per_agent": (after - before) / n, "live": live, "mode": mode, "side": side}


def main(argv: list[str]) -> int:
    side, n, mode = argv[0], int(argv[1]), argv[2]
    if side not in ("hybrid", "hibernating", "supervised", "trio") or mode not in ("tracemalloc", "rss"):
        print(__doc__, file=sys.stderr)
        return 2
    if mode == "tracemalloc":
        tracemalloc.start()
    result = trio.run(_measure, side, n, mode)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
