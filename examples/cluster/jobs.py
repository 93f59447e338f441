"""The job, the agent that does it, and the ledger of what was done."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import attrs
import trio
from typing_extensions import Self

import hybrid

SCHEMA = """
create table if not exists done (job text primary key, node text not null);
create table if not exists attempts (job text not null, node text not null);
"""


@attrs.frozen
class Resize(hybrid.Request[None]):
    """A job: resize one image (here: wait `seconds`, then record the effect)."""

    image: str
    width: int
    seconds: float = 0.2


@attrs.define(eq=False)
class Ledger:
    """The effects of the jobs, in a SQLite file every worker process writes.

    `record` is idempotent: the first record of a job wins, a second delivery of
    the same job (after its worker died) records an attempt and changes nothing.
    """

    path: Path
    connection: sqlite3.Connection
    lock: threading.Lock = attrs.Factory(threading.Lock)
    """One writer at a time on the connection (the workers of a process share it)."""

    def start(self, job: str, node: str) -> None:
        """Record that `node` starts `job` (every delivery counts: redeliveries show here)."""
        with self.lock, self.connection:
            self.connection.execute("insert into attempts values (?, ?)", (job, node))

    def record(self, job: str, node: str) -> bool:
        """Record that `node` did `job`; False if it was done already (a redelivery): nothing changes then."""
        with self.lock, self.connection:
            cursor = self.connection.execute("insert or ignore into done values (?, ?)", (job, node))
        return cursor.rowcount == 1

    def done(self) -> dict[str, str]:
        """Each job done, with the node that did it."""
        with self.lock:
            return dict(self.connection.execute("select job, node from done").fetchall())

    def attempts(self) -> list[tuple[str, str]]:
        """Every (job, node) start, redeliveries included."""
        with self.lock:
            return self.connection.execute("select job, node from attempts").fetchall()


def open_ledger(path: Path) -> Ledger:
    """Open (or create) the ledger at `path`."""
    connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
    connection.executescript(SCHEMA)
    return Ledger(path, connection)


@attrs.define(eq=False)
class Resizer(hybrid.Agent[None]):
    """Does `Resize` jobs on one node, recording each effect in the ledger."""

    node: str
    ledger: Ledger

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_request
    async def resize(self, job: Resize) -> None:
        await trio.to_thread.run_sync(self.ledger.start, job.image, self.node)
        await trio.sleep(job.seconds)  # the work
        await trio.to_thread.run_sync(self.ledger.record, job.image, self.node)
