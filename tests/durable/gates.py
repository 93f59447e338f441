"""A way to hold the durable journal's writer thread inside a batch, so that requests pile up behind it."""

from __future__ import annotations

import threading

import trio

from hybrid.durable._journal import Journal
from hybrid.durable._sql import Cursor


class WriterGate:
    """Holds the journal's writer thread inside a batch until opened, so requests pile up behind it."""

    def __init__(self) -> None:
        self._entered = threading.Event()
        self._release = threading.Event()

    def _hold(self, cursor: Cursor) -> None:
        self._entered.set()
        self._release.wait()

    async def close(self, journal: Journal, nursery: trio.Nursery) -> None:
        """Occupy the writer; return once it is inside the holding batch."""
        nursery.start_soon(self._occupy, journal)
        await trio.to_thread.run_sync(self._entered.wait)

    async def _occupy(self, journal: Journal) -> None:
        try:
            await journal._call(self._hold)
        finally:  # a failing test cancels this task: the writer must not stay held
            self._release.set()

    def open(self) -> None:
        """Let the writer go on."""
        self._release.set()
