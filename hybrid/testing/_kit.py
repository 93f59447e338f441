"""The testing kit's implementation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, final

import attrs
import trio
import trio.testing
from typing_extensions import TypeVarTuple

from .._address import Address, RequestCall
from .._agent import Agent
from .._exceptions import LifecycleError
from .._next import Next
from .._runtime import INTERRUPT_MARK, Response

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

RecordKind = Literal["transition", "message", "request", "response", "interrupt", "stopped"]


def run(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts, autojump: float = 0.0) -> T:
    """``trio.run(fn, *args)`` under a `trio.testing.MockClock` that jumps ahead when idle.

    Simulated time passes only while every task is blocked, so timers,
    backoffs and timeouts take no real time, and runs are repeatable.

    Example:
        ```python
        def test_backoff() -> None:
            assert hybrid.testing.run(Patient().run) == "gave up after 1 hour"
        ```
    """
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=autojump))


@attrs.frozen
class Record:
    """One thing that happened to a recorded agent.

    Attributes:
        time: `trio.current_time()` when it happened.
        agent: the agent's class name.
        kind: ``"transition"`` (detail: the `Next`), ``"message"`` (the event),
            ``"request"`` (the request), ``"response"`` (the request answered
            by a forwarded answer), ``"interrupt"`` (None) or ``"stopped"``
            (the `StopReason`).
        detail: what the kind says.
    """

    time: float
    agent: str
    kind: RecordKind
    detail: object


@final
class Recorder:
    """Records the transitions, messages and ending of the agents it watches.

    Watch an agent before it runs (or right after `hybrid.spawn`, before the
    current task yields), then assert on `records` or the helpers.

    Example:
        ```python
        recorder = hybrid.testing.Recorder()
        agent = Download("https://example.org")
        recorder.watch(agent)
        await agent.run()
        assert recorder.transitions() == ["do_async", "do_sync", "done"]
        ```
    """

    def __init__(self) -> None:
        self.records: list[Record] = []

    def watch(self, target: Agent[Any] | Address[Any]) -> None:
        """Record `target` from now on: an agent not yet started, or an address.

        Raises:
            LifecycleError: the agent has already ended.
            TypeError: `target` is neither an agent nor an address.
        """
        if isinstance(target, Address):
            rt = target._rt
            if rt.reason is not None:
                raise LifecycleError(f"{target!r} has ended; there is nothing left to record")
            if rt.observers is None:
                rt.observers = []
            rt.observers.append(self._observer(rt.name))
        elif isinstance(target, Agent):  # pyright: ignore[reportUnnecessaryIsInstance]
            if "ctx" in target.__dict__:
                self.watch(target.ctx.address)
                return
            observers = target.__dict__.setdefault("_hybrid_observers", [])
            observers.append(self._observer(type(target).__qualname__))
        else:
            raise TypeError(f"Recorder.watch needs an agent or an address, got {target!r}")

    def _observer(self, name: str) -> Callable[[str, object], None]:
        def observe(kind: str, detail: object) -> None:
            record_kind: RecordKind
            if kind == "message":
                if isinstance(detail, RequestCall):
                    call: RequestCall[Any] = detail  # pyright: ignore[reportUnknownVariableType]
                    record_kind, detail = "request", call._request
                elif isinstance(detail, Response):
                    record_kind, detail = "response", detail.request
                elif detail is INTERRUPT_MARK:
                    record_kind, detail = "interrupt", None
                else:
                    record_kind = "message"
            elif kind == "transition":
                record_kind = "transition"
            else:
                record_kind = "stopped"
            self.records.append(Record(trio.current_time(), name, record_kind, detail))

        return observe

    def transitions(self) -> list[str]:
        """The kinds of the transitions taken (``"do_async"``, ``"events"``, ``"done"``...), in order."""
        kinds: list[str] = []
        for record in self.records:
            detail = record.detail
            if record.kind == "transition" and isinstance(detail, Next):
                transition: Next[Any] = detail  # pyright: ignore[reportUnknownVariableType]
                kinds.append(transition.kind)
        return kinds

    def messages(self) -> list[object]:
        """The events, requests and answered requests handled, in order."""
        return [r.detail for r in self.records if r.kind in ("message", "request", "response")]

    def of(self, kind: RecordKind) -> list[Record]:
        """The records of one kind, in order."""
        return [r for r in self.records if r.kind == kind]


async def wait_idle(*addresses: Address[Any]) -> None:
    """Wait until every task is blocked and the given agents' mailboxes are empty.

    Built on `trio.testing.wait_all_tasks_blocked`: the tree has nothing left
    to do until something outside it (time, I/O, the test) moves.
    """
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if all(not address._rt.queue for address in addresses):
            return
