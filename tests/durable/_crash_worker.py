"""The program that `test_crash.py` runs, kills with SIGKILL and runs again: durable agents on a store.

    python -m tests.durable._crash_worker URL SIDE_FILE KEYS [--die-after N] [--scenario drain]

starts (or resumes) `KEYS` keys of `Crasher` on the store at `URL` and runs
them to the end, then prints ``{key: output}`` as one JSON line. Every state,
and every actor-mode message that counts, appends ``key instance pid`` to
`SIDE_FILE` (one ``os.write`` of an ``O_APPEND`` file, then ``fsync``) before
it returns: that file, which outlives the process, counts what ran, across
processes. With ``--die-after N`` the process SIGKILLs itself right after its
N-th line is on disk: inside a state that ran, before the checkpoint of the
transition it returns (the window where a state runs a second time).

`Crasher` goes through every kind of step a durable agent takes:

```
begin -> step(0) -> step(1) -> step(2)     do_async, one argument each
      -> tally()                           do_sync (a worker thread)
      -> arm()                             do_async: sends itself Bump, enters actor mode
      -> Bump, Bump, Bump                  each handled Bump counts one and sends the next
      -> finish()                          do_async (ctx.do_next from the last Bump) -> done
```

Actor mode is resumed with its fields but not its mailbox, so this program
sends every agent it starts or resumes one `Poke`, which sets the chain of
Bumps going again from the saved count (a Bump past the count does nothing).
Everything the agent computes depends only on its key and its fields, so its
output is the same however often the process died.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Final

import attrs
import trio
from typing_extensions import Self

import hybrid
import hybrid.durable
from hybrid import Address, Agent, Next

STEPS: Final = 3
"""The do_async steps before the sync state."""

BUMPS: Final = 3
"""The Bump events each agent handles in actor mode."""


def instances() -> list[str]:
    """Every state instance one key runs, in order: what a run that never crashed writes, once each."""
    return [*(f"step{i}" for i in range(STEPS)), "tally", "arm", *(f"bump{n}" for n in range(1, BUMPS + 1)), "finish"]


def key_names(keys: int) -> list[str]:
    """The keys of a run of `keys` agents."""
    return [f"k{n}" for n in range(keys)]


@attrs.define
class _Recorder:
    """Appends the lines of the side file; SIGKILLs the process after its `die_after`-th line."""

    path: str
    die_after: int | None
    written: int = 0

    def record(self, key: str, instance: str) -> None:
        line = f"{key} {instance} {os.getpid()}\n".encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of an O_APPEND file: a line is whole or absent
            os.fsync(fd)
        finally:
            os.close(fd)
        self.written += 1
        if self.written == self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)


_recorder: _Recorder | None = None
"""Set by `main` (this program only): where the agents' states record that they ran."""


def record(key: str, instance: str) -> None:
    """Record that `instance` of `key` ran (before the state returns its Next)."""
    assert _recorder is not None, "the side file is set by main()"
    _recorder.record(key, instance)


@attrs.frozen
class Bump:
    """Count one more (actor mode)."""


@attrs.frozen
class Poke:
    """Sent by this program to every agent it starts or resumes: go on counting Bumps."""


@hybrid.durable.durable(name="crash-test.Crasher")  # the same name when run as __main__
@attrs.define
class Crasher(Agent[str]):
    """A deterministic agent whose fields are its whole progress (see the module docstring)."""

    key: str
    total: int = 0
    bumps: int = 0

    def begin(self) -> Next[Self]:
        return Next.do_async(self.step, 0)

    async def step(self, i: int) -> Next[Self]:
        await trio.sleep(0)
        self.total = (self.total * 31 + sum(map(ord, self.key)) + i) % 1_000_003
        record(self.key, f"step{i}")
        if i + 1 < STEPS:
            return Next.do_async(self.step, i + 1)
        return Next.do_sync(self.tally)

    def tally(self) -> Next[Self]:
        self.total = (self.total * 3 + 1) % 1_000_003
        record(self.key, "tally")
        return Next.do_async(self.arm)

    async def arm(self) -> Next[Self]:
        record(self.key, "arm")
        self.ctx.address.send(Bump())
        return Next.events()

    @hybrid.on_event
    async def bump(self, event: Bump) -> None:
        if self.bumps < BUMPS:  # else the surplus of two chains (a Poke's and arm's): nothing to do
            self.bumps += 1
            self.total += 7 * self.bumps
            record(self.key, f"bump{self.bumps}")
            self._go_on()

    @hybrid.on_event
    async def poke(self, event: Poke) -> None:
        self._go_on()

    def _go_on(self) -> None:
        if self.ctx.address.statistics().phase == "finishing":
            return  # a Poke or a Bump still queued when finish() returned done: handled while it drains
        if self.bumps < BUMPS:
            self.ctx.address.send(Bump())
        elif self.ctx.scheduled is None:
            self.ctx.do_next(Next.do_async(self.finish))

    async def finish(self) -> Next[Self]:
        record(self.key, "finish")
        return Next.done(f"{self.key}:{self.total}:{self.bumps}")


@attrs.frozen
class Note:
    """A message `Drainer` sends itself twice from its last state."""


@hybrid.durable.durable(name="crash-test.Drainer")
@attrs.define
class Drainer(Agent[str]):
    """Its last state queues two Notes and returns done; handling them after done writes its fields.

    Run by ``--scenario drain``: the process SIGKILLs itself in the second
    Note's handler, after the first one's fields were saved (``handled``) and
    before the ending is recorded.
    """

    notes: int = 0
    worked: bool = False

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        self.ctx.address.send(Note())
        self.ctx.address.send(Note())
        self.worked = True
        return Next.done("worked")

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        self.notes += 1
        if self.notes == 2 and _recorder is not None:  # in this program only, not in the test's process
            os.kill(os.getpid(), signal.SIGKILL)


async def run_keys(url: str, keys: list[str]) -> dict[str, str]:
    """Resume the unfinished keys, start the new ones, run all to the end; return every key's output."""
    async with hybrid.durable.open_store(url, agents=[Crasher]) as store:
        async with trio.open_nursery() as nursery:
            addresses: list[Address[Crasher]] = await store.resume(nursery)
            for address in addresses:  # none has run yet: each is alive
                address.send(Poke())
            for key in keys:
                if key in store.live_keys() or await store.outcome(key) is not None:
                    continue
                address = await store.spawn(nursery, Crasher(key), key=key)
                address.send(Poke())
        return {key: await store.run(Crasher(key), key=key) for key in keys}


async def run_drainer(url: str) -> str:
    """Run `Drainer` under the key "d" (the process dies while it drains)."""
    async with hybrid.durable.open_store(url) as store:
        output: str = await store.run(Drainer(), key="d")
        return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.durable._crash_worker")
    parser.add_argument("url")
    parser.add_argument("side_file")
    parser.add_argument("keys", type=int)
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--scenario", choices=["keys", "drain"], default="keys")
    args = parser.parse_args(argv)
    global _recorder  # noqa: PLW0603 - this program's one setting, made once before the run
    _recorder = _Recorder(args.side_file, args.die_after)
    if args.scenario == "drain":
        outputs = {"d": trio.run(run_drainer, args.url)}
    else:
        outputs = trio.run(run_keys, args.url, key_names(args.keys))
    print(json.dumps(outputs), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
