"""Durable orders: a batch of order agents, their process killed mid-way, resumed where each was.

Each order goes reserve -> charge -> ship. The charge is an external effect: it
goes to a payments ledger (a table of its own) under the state's idempotency
key, so a charge that runs again after the crash charges nothing twice.

    python examples/durable_orders.py

prints the orders' outputs after the resume, how many charges the ledger holds
(one per order, however many ran twice), and the event log of one order that
crossed the crash. Needs the durable extra: pip install 'trio-hybrid[durable]'.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import attrs
import trio
from typing_extensions import Self

import hybrid.durable
from hybrid import Agent, Next

ORDERS = 12
CRASH_AFTER = 5  # the first process is killed (SIGKILL) after this many charges


@attrs.define
class Order(Agent[str]):
    """One order; its attrs fields are what is checkpointed with each transition."""

    order: str
    ledger: str
    cents: int = 0
    reserved: bool = False

    def begin(self) -> Next[Self]:
        return Next.do_async(self.reserve, 1000 + 125 * int(self.order.removeprefix("o-")))

    async def reserve(self, cents: int) -> Next[Self]:
        await trio.sleep(0.02 * int(self.order.removeprefix("o-")))  # the warehouse answers, slower for each
        self.reserved = True
        return Next.do_sync(self.charge, cents)

    def charge(self, cents: int) -> Next[Self]:
        # A blocking call in a worker thread; at least once, so idempotent by its key.
        charge(self.ledger, self.ctx.idempotency_key, self.order, cents)
        self.cents = cents
        return Next.do_async(self.ship)

    async def ship(self) -> Next[Self]:
        await trio.sleep(0.01)
        return Next.done(f"{self.order}: shipped, charged {self.cents / 100:.2f}")


def charge(ledger: str, key: str, order: str, cents: int) -> None:
    """The payments service: a charge under a key it already has is not made again."""
    with sqlite3.connect(ledger) as db:
        db.execute("CREATE TABLE IF NOT EXISTS charges (key TEXT PRIMARY KEY, order_id TEXT, cents INTEGER)")
        made = db.execute("INSERT OR IGNORE INTO charges VALUES (?, ?, ?)", (key, order, cents)).rowcount
        total = db.execute("SELECT count(*) FROM charges").fetchone()[0]
    if made and os.environ.get("CRASH_AFTER") == str(total):
        os.kill(os.getpid(), signal.SIGKILL)  # the crash: no cleanup, no last write


async def first_process(store_path: str, ledger: str) -> None:
    """Start every order; this process dies mid-way."""
    async with hybrid.durable.open_store(store_path) as store, trio.open_nursery() as nursery:
        for i in range(ORDERS):
            await store.spawn(nursery, Order(f"o-{i}", ledger), key=f"o-{i}")


async def second_process(store_path: str, ledger: str) -> None:
    """Resume what the crash left unfinished, then report."""
    async with hybrid.durable.open_store(store_path, agents=[Order]) as store:
        async with trio.open_nursery() as nursery:
            resumed = await store.resume(nursery)
            print(f"resumed {len(resumed)} unfinished orders")
        for i in range(ORDERS):
            print(" ", await store.run(Order(f"o-{i}", ledger), key=f"o-{i}"))  # finished: the recorded output
        with sqlite3.connect(ledger) as db:
            charges = db.execute("SELECT count(*) FROM charges").fetchone()[0]
        print(f"charges in the ledger: {charges} for {ORDERS} orders")
        log = await store.events()
        # An order whose charge started before the crash, and so ran again after it.
        charging = {e.key for e in log if e.epoch == 1 and e.state == "charge"}
        charged_twice = [e.key for e in log if e.kind == "resumed" and e.key in charging]
        if charged_twice:
            key = charged_twice[0]
            print(f"what happened to {key}:")
            for event in await store.events(key):
                when = datetime.fromtimestamp(event.time, UTC).strftime("%H:%M:%S.%f")[:-3]
                print(f"  {when} epoch {event.epoch} #{event.seq} {event.kind} {event.state}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--first":
        trio.run(first_process, sys.argv[2], sys.argv[3])
        return
    with tempfile.TemporaryDirectory() as folder:
        store_path = str(Path(folder, "orders.db"))
        ledger = str(Path(folder, "ledger.db"))
        env = {**os.environ, "CRASH_AFTER": str(CRASH_AFTER)}
        first = subprocess.run([sys.executable, __file__, "--first", store_path, ledger], env=env, check=False)  # noqa: S603 - this script
        print(f"first process: killed by signal {-first.returncode}")
        trio.run(second_process, store_path, ledger)


if __name__ == "__main__":
    main()
