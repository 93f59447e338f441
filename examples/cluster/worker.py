"""One worker node: ``python -m examples.cluster.worker URL NODE LEDGER``.

It joins the cluster, serves the queue "resize" with a pool of four resizers,
prints ``ready``, and works until it is killed or its stdin closes.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import trio

import hybrid
import hybrid.remote
from examples.cluster.jobs import Resize, Resizer, open_ledger

ACK_WAIT = 2.0
"""Seconds after which the job of a silent (dead) worker is handed to another."""


async def work(url: str, node: str, ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    async with hybrid.remote.connect(url, node=node, lease=1) as member, trio.open_nursery() as nursery:
        queue = await member.work_queue("resize", Resize, ack_wait=ACK_WAIT)
        pool = hybrid.spawn(nursery, hybrid.Pool(functools.partial(Resizer, node, ledger), size=4, agent_type=Resizer))
        async with queue.serve(pool, concurrency=4):
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(work, sys.argv[1], sys.argv[2], Path(sys.argv[3]))
