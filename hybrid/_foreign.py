"""The seam to agents of other processes: an `Address` whose messages go through a `Link`.

`hybrid.remote` builds remote addresses here, and only here: `foreign_address`
makes an ordinary `Address` from a `ForeignMailbox` (whose `put` hands messages
to the link) and a `ForeignRun` (which stands in for the `Runtime` the address
would reach). Everything that differs happens in their overrides, so a local
address runs exactly the code it ran before: no branch was added to `send`,
`put`, the run loop or a request's await.

The other functions here are the few things a link and a serving node need
from the core's request envelope and runs, named for what they do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast, final

import outcome
import trio
from trio.lowlevel import checkpoint

from ._address import Address
from ._handlers import Table
from ._mailbox import _NO_FAST_PATH, UNBOUNDED, Gathering, Mailbox, RequestCall
from ._runtime import ENDED, EVENTS_PHASE
from ._stop import StopReason

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = [
    "ForeignMailbox",
    "ForeignRun",
    "Link",
    "RequestCall",
    "answer_into",
    "complete",
    "fail_soon",
    "foreign_address",
    "handled_types",
    "is_foreign",
    "on_given_up",
    "request_of",
    "withdraw",
]


class Link(Protocol):
    """The way to an agent that lives elsewhere: what a `ForeignMailbox` hands messages to.

    Every method is called on the home trio thread of the address and must not block.
    """

    def deliver(self, event: object) -> None:
        """Send `event` at most once. If it raises, nothing was sent (the sender sees the error)."""

    def call(self, call: RequestCall[Any]) -> None:
        """Send the request of `call` and complete it later with `complete`.

        Never raises: a failure (link down, encoding) completes the call with
        `fail_soon`, once the current task yields (the caller may not be parked yet).
        """

    def withdraw(self, call: RequestCall[Any]) -> None:
        """Nobody waits for the answer of `call` any more: forget it (a late answer is dropped)."""

    def interrupt(self) -> None:
        """Ask the agent to end gracefully (sent in order after the events sent before)."""

    def watched(self) -> None:
        """Someone waits for the agent's end (`join`, a monitor): make sure it is learned (`ForeignRun.finish`)."""


@final
class ForeignMailbox(Mailbox):
    """The mailbox of an address whose agent lives elsewhere: `put` hands messages to its `Link`.

    It never has a queue (``queue`` stays None, ``fast`` is empty, nobody parks
    on it), so `Address.send`'s fast path, inline answers, hibernation and
    stamping never apply: every message comes through `put`, after the sender's
    type check against the handler tables of the class the caller named. Its
    bound is the other side's: ``limit`` is `UNBOUNDED` until the agent is
    known to have ended (`ForeignRun.finish` closes it).
    """

    __slots__ = ("link",)

    def __init__(self, name: str, agent_type: type, link: Link) -> None:
        kind: Any = agent_type  # an Agent subclass: its tables are set by Agent.__init_subclass__
        tables: tuple[Table, Table, Table] = (
            kind._hybrid_events,  # noqa: SLF001
            kind._hybrid_requests,  # noqa: SLF001
            kind._hybrid_responses,  # noqa: SLF001
        )
        super().__init__(name, agent_type, None, tables)
        self.link = link
        """Where messages go; fixed for the mailbox's life."""
        self.fast = _NO_FAST_PATH
        self.limit = UNBOUNDED

    def put(self, message: object) -> None:
        if type(message) is RequestCall:
            self.link.call(message)  # pyright: ignore[reportUnknownArgumentType] - RequestCall[Any]
        else:
            self.link.deliver(message)

    def abandon(self, call: RequestCall[Any]) -> None:
        self.link.withdraw(call)

    def set_stamping(self, on: bool) -> None:
        pass  # nothing is queued here: the serving side's instruments see the messages

    def _set_fast(self) -> None:
        pass  # never a fast path: every message goes through put


@final
class ForeignRun:
    """What an `Address` reads of a run, for an agent that lives elsewhere, as far as this process knows.

    The agent counts as running (phase "remote") until its link reports its end
    with `finish` (an "ended" message, or its node's death). Written on the
    home trio thread only.
    """

    __slots__ = ("ended", "error", "mailbox", "monitors", "output", "phase", "reason")

    handled = 0  # counted on the serving side; statistics() reads 0 here
    transitions = 0
    state = None

    def __init__(self, mailbox: ForeignMailbox) -> None:
        self.mailbox = mailbox
        """The address's mailbox: its link sends; it closes at the end."""
        self.phase = EVENTS_PHASE
        """EVENTS_PHASE until the end is known, then ENDED (never anything else)."""
        self.reason: StopReason | None = None
        """How the agent ended, once known."""
        self.output: Any = None
        """Its output, once ended (decoded by the link into the class's ``Agent[T]``)."""
        self.error: BaseException | None = None
        """The failure `join()` raises (rebuilt by the link), once ended."""
        self.ended: trio.Event | None = None
        """Set at the end; made by the first `join()` or `wait_ended()` that waits."""
        self.monitors: list[Callable[[Any], None]] | None = None
        """Called once at the end (made by the first monitor)."""
        mailbox.run = self

    @property
    def name(self) -> str:
        return self.mailbox.name

    @property
    def phase_name(self) -> str:
        return "ended" if self.phase == ENDED else "remote"

    def interrupt(self) -> None:
        if self.phase != ENDED:
            self.mailbox.link.interrupt()

    def has_ended(self) -> bool:
        return self.phase == ENDED

    async def wait_ended(self) -> None:
        if self.phase != ENDED:
            if self.ended is None:
                self.ended = trio.Event()
                self.mailbox.link.watched()
            await self.ended.wait()
        else:
            await checkpoint()

    async def join(self) -> Any:
        await self.wait_ended()
        if self.error is not None:
            raise self.error
        return self.output

    def add_monitor(self, notify: Callable[[Any], None]) -> None:
        if self.phase == ENDED:
            notify(self)
            return
        if self.monitors is None:
            self.monitors = []
            self.mailbox.link.watched()
        self.monitors.append(notify)

    def remove_monitor(self, notify: Callable[[Any], None]) -> None:
        monitors = self.monitors
        if monitors is not None and notify in monitors:
            monitors.remove(notify)

    def finish(self, reason: StopReason, output: Any = None, error: BaseException | None = None) -> None:
        """The agent ended (learned by the link): close the address, tell joiners and monitors, once.

        The calls still waiting on the link are the link's to complete (their
        answers may still come: a served agent answers what it had queued).
        """
        if self.phase == ENDED:
            return
        self.phase = ENDED
        self.reason = reason
        self.output = output
        self.error = error
        self.mailbox.close()
        if self.ended is not None:
            self.ended.set()
        monitors = self.monitors
        if monitors:
            self.monitors = None
            for notify in monitors:
                notify(self)


def foreign_address(name: str, agent_type: type, link: Link) -> tuple[Address[Any], ForeignRun]:
    """A new `Address` of the agent `name` of class `agent_type` that lives elsewhere, reached through `link`.

    Messages are type-checked in the sender against `agent_type`'s handlers.
    Returns the address and its run stand-in, which the link ends with
    `ForeignRun.finish`. Call it on the trio thread that will be the address's home.
    """
    run = ForeignRun(ForeignMailbox(name, agent_type, link))
    address = Address._make(run.mailbox, cast("Runtime", run))  # a stand-in with the fields Address reads
    return address, run


def is_foreign(address: Address[Any]) -> bool:
    """Whether `address` reaches an agent of another process."""
    return type(address._mailbox) is ForeignMailbox  # noqa: SLF001


# -- request envelopes, as a link and a serving node see them ---------------------------


def request_of(call: RequestCall[Any]) -> object:
    """The request `call` carries."""
    return call._request  # noqa: SLF001


def complete(call: RequestCall[Any], result: outcome.Outcome[Any]) -> None:
    """Complete `call` with `result` for its caller, forwarder or quorum (dropped if nobody waits any more)."""
    call._complete(result)  # noqa: SLF001


def fail_soon(call: RequestCall[Any], error: BaseException) -> None:
    """Complete `call` with `error` once the current task yields (from `Link.call`, whose caller is not parked yet)."""
    trio.lowlevel.current_trio_token().run_sync_soon(call._complete, outcome.Error(error))  # noqa: SLF001


def answer_into(call: RequestCall[Any], gathering: Gathering) -> bool:
    """Send `call` (made by ``address.request``, not awaited) and have its answer given to ``gathering.answered``.

    No task waits: the answer is handed over in the answering agent's task.
    False if it cannot be sent that way (a full bounded mailbox, another
    thread): then await the call instead.
    """
    return call._gather_into(gathering)  # noqa: SLF001


# -- local runs, as a serving node sees them ------------------------------------------


Farewell = Callable[[StopReason, Any, BaseException | None], None]
"""Told how a served agent ended: ``farewell(reason, output, error)``."""


def on_given_up(address: Address[Any], farewell: Farewell) -> Callable[[], None]:
    """Call ``farewell(reason, output, error)`` once, when the local `address` is given up for good.

    Not at the end of a run whose address is kept for a successor (a
    supervisor's restart): only when no run will reach it again. Returns a
    function that cancels it. Raises `ValueError` for a foreign address, and
    calls `farewell` at once if it was given up already.
    """
    mailbox = address._mailbox  # noqa: SLF001
    if type(mailbox) is not Mailbox:
        raise ValueError(f"{address!r} reaches an agent of another process")

    def given_up() -> None:
        rt = address._rt  # noqa: SLF001 - the last run
        farewell(cast("StopReason", rt.reason), rt.output, rt.error)

    if not address.is_alive:
        given_up()
        return lambda: None
    if mailbox.farewells is None:
        mailbox.farewells = []
    mailbox.farewells.append(given_up)

    def cancel() -> None:
        farewells = mailbox.farewells
        if farewells is not None and given_up in farewells:
            farewells.remove(given_up)

    return cancel


def withdraw(call: RequestCall[Any]) -> None:
    """Give up `call` (sent with `answer_into`): if still queued it is skipped, and its answer is not handed over."""
    call._withdraw()  # noqa: SLF001


def handled_types(agent_type: type) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """The event types and the request types the handlers of `agent_type` (an Agent subclass) take."""
    kind: Any = agent_type  # its tables are set by Agent.__init_subclass__
    events: Table = kind._hybrid_events  # noqa: SLF001
    requests: Table = kind._hybrid_requests  # noqa: SLF001
    return tuple(events), tuple(requests)
