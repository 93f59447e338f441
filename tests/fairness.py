"""Watching whether a busy agent lets other tasks run."""

from __future__ import annotations

import itertools

import trio


async def sample_progress(progress: list[int], total: int, seen: list[int]) -> None:
    """Append ``len(progress)`` to `seen` at each scheduling turn of this task, until it reaches `total`."""
    while len(progress) < total:
        seen.append(len(progress))
        await trio.lowlevel.checkpoint()


def gaps(seen: list[int]) -> list[int]:
    """How far `progress` moved between two turns of the sampling task."""
    return [b - a for a, b in itertools.pairwise(seen)]


class Ticker:
    """A task that counts its own scheduling turns (`ticks`): whether a busy caller lets others run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await trio.sleep(0)
