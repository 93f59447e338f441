"""A three-state machine: read (async) -> count (sync, in a worker thread) -> done.

Run it with a file to count, or with no argument to count an embedded text:

    python examples/fsm.py [PATH]
"""

from __future__ import annotations

import sys
from collections import Counter

import trio
from typing_extensions import Self

from hybrid import Agent, Next

EMBEDDED = """\
Structured concurrency means that every task has a parent that waits for it.
A nursery is where tasks live; when the nursery block ends, its tasks have ended.
Errors are never lost: they travel up to the parent, which decides what to do.
"""


class WordCount(Agent[list[tuple[str, int]]]):
    """Reads a text, counts its words in a worker thread, outputs the top words."""

    def __init__(self, path: str | None, top: int = 5) -> None:
        self.path = path
        self.top = top

    def begin(self) -> Next[Self]:
        return Next.do_async(self.read, self.path)

    async def read(self, path: str | None) -> Next[Self]:
        # State 1 (async): I/O stays on the trio loop.
        text = EMBEDDED if path is None else await trio.Path(path).read_text()
        return Next.do_sync(self.count, text)

    def count(self, text: str) -> Next[Self]:
        # State 2 (sync): CPU work runs in a worker thread; the loop stays free.
        words = Counter(word.strip(".,:;!?").lower() for word in text.split())
        words.pop("", None)
        return Next.done(words.most_common(self.top))


async def main(path: str | None = None) -> list[tuple[str, int]]:
    top = await WordCount(path).run()
    for word, count in top:
        print(f"{count:4}  {word}")
    return top


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
