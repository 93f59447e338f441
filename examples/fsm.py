"""A three-state machine: read (async) -> count (sync, in a worker thread) -> done.

Each state says where it runs: the async state on the trio thread (the main
thread here), the sync state in a worker thread, so the trio loop stays free
while it counts. Run it with a file to count, or with no argument to count an
embedded text:

    python examples/fsm.py [PATH]
"""

from __future__ import annotations

import sys
import threading
from collections import Counter

import trio
from typing_extensions import Self

from hybrid import Agent, Next

EMBEDDED = """\
Structured concurrency means that every task has a parent that waits for it.
A nursery is where tasks live; when the nursery block ends, its tasks have ended.
Errors are never lost: they travel up to the parent, which decides what to do.
"""


def where() -> str:
    """The thread that runs the caller: the trio loop's (the main thread) or another."""
    thread = threading.current_thread()
    if thread is threading.main_thread():
        return f"on the main thread ({thread.name})"
    return f"in a worker thread ({thread.name})"


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
        print(f"1. read:  an async state, {where()}: {len(text)} characters")
        return Next.do_sync(self.count, text)

    def count(self, text: str) -> Next[Self]:
        # State 2 (sync): CPU work runs in a worker thread; the loop stays free.
        words = Counter(word.strip(".,:;!?").lower() for word in text.split())
        words.pop("", None)
        print(f"2. count: a sync state, {where()}: {words.total()} words")
        return Next.done(words.most_common(self.top))


async def main(path: str | None = None) -> list[tuple[str, int]]:
    top = await WordCount(path).run()
    print(f"3. done:  the output, {len(top)} most common words:")
    for word, count in top:
        print(f"{count:6}  {word}")
    return top


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
