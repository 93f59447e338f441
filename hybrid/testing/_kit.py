"""The testing kit's implementation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, final

import attrs
import trio
import trio.testing
from typing_extensions import TypeVarTuple

import hybrid
from hybrid import Address, Agent, Instrument, LifecycleError, Next, Request, StopReason

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

RecordKind = Literal["transition", "message", "request", "stopped"]


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
        agent: the agent's name (`Address.name`).
        kind: ``"transition"`` (detail: the `Next`), ``"message"`` (the
            event), ``"request"`` (the request, handled by an ``on_request``
            handler, or whose forwarded answer an ``on_response`` handler
            took) or ``"stopped"`` (the `StopReason`).
        detail: what the kind says.
    """

    time: float
    agent: str
    kind: RecordKind
    detail: object


@final
class Recorder(Instrument):
    """Records the transitions, messages and ending of the agents it watches.

    An [`Instrument`][hybrid.Instrument] that keeps only what concerns the
    agents it was asked to watch: it registers itself for the current trio run
    at the first `watch`. Watch an agent before it runs (or right after
    `hybrid.spawn`, before the current task yields), then assert on `records`
    or the helpers.

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
        self._watched: set[Address[Any]] = set()
        self._pending: list[Agent[Any]] = []  # not started yet: matched by their context at start
        self._run: trio.lowlevel.TrioToken | None = None  # the trio run it is registered in

    def watch(self, target: Agent[Any] | Address[Any]) -> None:
        """Record `target` from now on: an agent not yet started, or an address.

        Raises:
            LifecycleError: the agent has already ended.
            TypeError: `target` is neither an agent nor an address.
            RuntimeError: called outside a trio run.
        """
        if isinstance(target, Agent):
            try:
                address: Address[Any] = target.ctx.address
            except LifecycleError:  # not started yet
                self._register()
                self._pending.append(target)
                return
        elif isinstance(target, Address):  # pyright: ignore[reportUnnecessaryIsInstance]
            address = target
        else:
            raise TypeError(f"Recorder.watch needs an agent or an address, got {target!r}")
        if not address.is_alive:
            raise LifecycleError(f"{address!r} has ended; there is nothing left to record")
        self._register()
        self._watched.add(address)

    def _register(self) -> None:
        token = trio.lowlevel.current_trio_token()
        if self._run is not token:  # once per trio run
            hybrid.add_instrument(self)
            self._run = token

    def _record(self, address: Address[Any], kind: RecordKind, detail: object) -> None:
        if address in self._watched:
            self.records.append(Record(trio.current_time(), address.name, kind, detail))

    def agent_started(self, address: Address[Any]) -> None:
        for agent in self._pending:
            if agent.ctx.address is address:
                self._pending.remove(agent)
                self._watched.add(address)
                return

    def state_entered(self, address: Address[Any], next: Next[Any]) -> None:
        self._record(address, "transition", next)

    def message_handled(self, address: Address[Any], message: object, seconds: float) -> None:
        self._record(address, "request" if _is_request(message) else "message", message)

    def agent_stopped(self, address: Address[Any], reason: StopReason) -> None:
        self._record(address, "stopped", reason)

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
        """The events and requests handled, in order."""
        return [r.detail for r in self.records if r.kind in ("message", "request")]

    def of(self, kind: RecordKind) -> list[Record]:
        """The records of one kind, in order."""
        return [r for r in self.records if r.kind == kind]


def _is_request(message: object) -> bool:
    return isinstance(message, Request)


async def wait_idle(*addresses: Address[Any]) -> None:
    """Wait until every task is blocked and the given agents' mailboxes are empty.

    Built on `trio.testing.wait_all_tasks_blocked`: the tree has nothing left
    to do until something outside it (time, I/O, the test) moves.
    """
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if all(address.statistics().mailbox_depth == 0 for address in addresses):
            return
