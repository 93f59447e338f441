"""Agents and messages of the remote tests, importable by a test and by a node process alike."""

from __future__ import annotations

from typing import Any

import attrs
import trio
from typing_extensions import Self

import hybrid


@attrs.frozen
class Add:
    """An event: add `n` to the counter."""

    n: int


@attrs.frozen
class Note:
    """An event: remember `text`."""

    text: str


@attrs.frozen
class Get(hybrid.Request[int]):
    """A request: the counter's total."""


@attrs.frozen
class Fail(hybrid.Request[int]):
    """A request whose handler raises `kind(text)`: ``"key"`` (KeyError) or ``"own"`` (an unregistered type)."""

    kind: str
    text: str


@attrs.frozen
class Wait(hybrid.Request[str]):
    """A request answered after `seconds` (real time), with `tag`."""

    seconds: float
    tag: str


@attrs.frozen
class Stop(hybrid.Request[None]):
    """A request: end the counter with ``Next.done(total)`` after answering (or fail it with `fail`)."""

    fail: str = ""


@attrs.frozen
class WrongAnswer(hybrid.Request[int]):
    """A request whose handler returns a str: the answer does not fit ``Request[int]``."""


class OwnError(Exception):
    """An exception type no codec registers."""


@attrs.define(eq=False)
class Counter(hybrid.Agent[int]):
    """Counts `Add` events; its output is the total."""

    total: int = 0
    handled: list[str] = attrs.Factory(list[str])
    interrupted: bool = False

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.total += event.n

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        self.handled.append(event.text)

    @hybrid.on_request
    async def get(self, request: Get) -> int:
        return self.total

    @hybrid.on_request
    async def fail(self, request: Fail) -> int:
        if request.kind == "key":
            raise KeyError(request.text)
        raise OwnError(request.text)

    @hybrid.on_request
    async def wait(self, request: Wait) -> str:
        await trio.sleep(request.seconds)
        self.handled.append(request.tag)
        return request.tag

    @hybrid.on_request
    async def stop(self, request: Stop) -> None:
        if request.fail:
            self.ctx.do_next(hybrid.Next.fail(ValueError(request.fail)))
        else:
            self.ctx.do_next(hybrid.Next.done(self.total))

    @hybrid.on_request
    async def wrong(self, request: WrongAnswer) -> Any:
        return "not an int"

    async def on_interrupt(self) -> None:
        self.interrupted = True
        await super().on_interrupt()


@attrs.define(eq=False)
class Unrelated(hybrid.Agent[None]):
    """An agent class handling none of the counter's messages."""

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()


@attrs.define(eq=False)
class Watcher(hybrid.Agent[hybrid.StopReason]):
    """Monitors `target`; its output is the reason of the `Ended` it got."""

    target: hybrid.Address[Any]

    def begin(self) -> hybrid.Next[Self]:
        self.ctx.monitor(self.target)
        return hybrid.Next.events()

    @hybrid.on_event
    async def ended(self, event: hybrid.Ended) -> None:
        self.ctx.do_next(hybrid.Next.done(event.reason))
