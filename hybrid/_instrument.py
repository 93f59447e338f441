"""Instruments: hooks that watch every agent of a trio run (metrics, tracing, tests).

The registry is per trio run (a `trio.lowlevel.RunVar`). The runtime reads it
through one `Instruments` object per run, fetched once per agent, and pays one
``None`` check per message and per transition while no instrument is
registered.

While some instrument overrides `Instrument.message_received`, the mailboxes
of the run stamp what they queue (`_mailbox.py`, "Stamps"): registering or
removing such an instrument switches every live mailbox, and a new mailbox
starts stamping when it is made.
"""

from __future__ import annotations

import enum
import logging
from contextvars import Context
from typing import TYPE_CHECKING, Any, cast, final

from trio.lowlevel import RunVar

from ._registry import current_names, per_run

if TYPE_CHECKING:
    from ._address import Address
    from ._next import Next
    from ._stop import StopReason

logger = logging.getLogger("hybrid.instrument")


class MessageKind(enum.StrEnum):
    """Which kind of handler takes a message, as `Instrument.message_received` tells it.

    A string enum, as `StopKind` is: ``MessageKind.REQUEST == "request"``.
    """

    EVENT = "event"
    """An ``on_event`` handler: an event, a timer's tick, a stream item, a monitor's `Ended`."""
    REQUEST = "request"
    """An ``on_request`` handler: its caller waits for the answer."""
    RESPONSE = "response"
    """An ``on_response`` handler: the answer to a request this agent forwarded."""


class Instrument:
    """Base class of instruments: every hook does nothing; override what you need.

    Register one with [`hybrid.add_instrument`][hybrid.add_instrument] for the
    current trio run. Hooks are called on the trio thread, synchronously, in
    the agent's own task: keep them short and never block. An instrument whose
    hook raises is removed and the error logged at ERROR on
    ``hybrid.instrument``; the agents go on.

    Example:
        ```python
        class CountMessages(hybrid.Instrument):
            def __init__(self) -> None:
                self.by_type: collections.Counter[str] = collections.Counter()

            def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
                self.by_type[type(message).__name__] += 1

        counter = CountMessages()
        hybrid.add_instrument(counter)
        ```
    """

    def agent_started(self, address: Address[Any]) -> None:
        """An agent is about to run its `begin()`."""

    def agent_stopped(self, address: Address[Any], reason: StopReason) -> None:
        """An agent has ended (after its `on_stop`), with its final reason."""

    def state_entered(self, address: Address[Any], next: Next[Any]) -> None:
        """An agent takes a transition: a state, actor mode, or the transition that ends it.

        ``next.is_state`` tells states apart; ``next.kind`` names the transition.
        """

    def message_received(
        self, address: Address[Any], message: object, kind: MessageKind, waited: float | None, sender: Context | None
    ) -> None:
        """An agent is about to handle `message`, in its own task (`message_handled` follows).

        `kind` says which handler takes it: ``"event"`` (an `on_event`
        handler: an event, a timer's tick, a stream item), ``"request"`` (an
        `on_request` handler) or ``"response"`` (an `on_response` handler:
        `message` is then the request whose forwarded answer arrived).

        `waited` is how long the message waited in the mailbox, in seconds;
        `sender` is a copy of the sender's `contextvars` as they were when it
        was sent (read a trace context from it with ``sender.run(...)`` or
        ``sender.get(var)``). Both are None for a message queued before an
        instrument overriding this hook was registered.

        Overriding this hook has a cost the others do not: every message
        queued in the run is then stamped (the time, and a copy of the
        sender's context, which is cheap: contexts are immutable maps).
        """

    def message_failed(self, address: Address[Any], message: object, kind: MessageKind, error: Exception) -> None:
        """The handler of `message` raised `error` (`message_handled` follows).

        For an event or a forwarded answer, the agent's `on_error` gets the
        error next; for a request, its caller does. The agent goes on.
        """

    def message_handled(self, address: Address[Any], message: object, seconds: float) -> None:
        """An agent's event, request or response handler returned (or raised).

        `message` is the event, the request (``on_request``), or the request
        whose forwarded answer was handled (``on_response``). `seconds` is the
        wall-clock time the handler took.
        """

    def child_restarted(self, supervisor: Address[Any], child: Address[Any], reason: StopReason) -> None:
        """A supervisor restarts a child; `reason` is how the run that ended ended."""


@final
class Instruments(Instrument):
    """The instruments of one trio run, called as one: what the runtime holds.

    `active` is None while none is registered (the hot paths test only that);
    otherwise a tuple, replaced (never mutated) when the set changes, so that
    a hook that removes instruments cannot disturb the loop calling them.
    `stamps` is whether one of them overrides `message_received` (then the
    live mailboxes stamp what they queue); `messages`, whether one overrides
    `message_received`, `message_failed` or `message_handled` (then no request
    is answered inline: instruments that watch messages see every one).
    """

    __slots__ = ("active", "messages", "stamps")

    def __init__(self) -> None:
        self.active: tuple[Instrument, ...] | None = None
        self.stamps = False
        self.messages = False

    def add(self, instrument: Instrument) -> None:
        if not isinstance(instrument, Instrument):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"add_instrument needs a hybrid.Instrument, got {instrument!r}")
        current = self.active or ()
        if instrument in current:
            raise ValueError(f"{instrument!r} is already registered")
        self._set((*current, instrument))

    def remove(self, instrument: Instrument) -> None:
        current = self.active or ()
        if instrument not in current:
            raise ValueError(f"{instrument!r} is not registered")
        self._set(tuple(each for each in current if each is not instrument))

    def _set(self, active: tuple[Instrument, ...]) -> None:
        self.active = active or None
        stamps = any(type(each).message_received is not Instrument.message_received for each in active)
        self.messages = stamps or any(
            type(each).message_handled is not Instrument.message_handled
            or type(each).message_failed is not Instrument.message_failed
            for each in active
        )
        if stamps != self.stamps:
            self.stamps = stamps
            for address in filter(None, current_names().used.values()):  # None: a name claimed this instant
                cast("Address[Any]", address)._mailbox.set_stamping(stamps)  # noqa: SLF001

    def _call(self, hook: str, *args: Any) -> None:
        for instrument in self.active or ():
            try:
                getattr(instrument, hook)(*args)
            except Exception:
                logger.exception("instrument %r raised in %s; it is removed", instrument, hook)
                if self.active is not None and instrument in self.active:
                    self.remove(instrument)

    def agent_started(self, address: Address[Any]) -> None:
        self._call("agent_started", address)

    def agent_stopped(self, address: Address[Any], reason: StopReason) -> None:
        self._call("agent_stopped", address, reason)

    def state_entered(self, address: Address[Any], next: Next[Any]) -> None:
        self._call("state_entered", address, next)

    def message_received(
        self, address: Address[Any], message: object, kind: MessageKind, waited: float | None, sender: Context | None
    ) -> None:
        self._call("message_received", address, message, kind, waited, sender)

    def message_failed(self, address: Address[Any], message: object, kind: MessageKind, error: Exception) -> None:
        self._call("message_failed", address, message, kind, error)

    def message_handled(self, address: Address[Any], message: object, seconds: float) -> None:
        self._call("message_handled", address, message, seconds)

    def child_restarted(self, supervisor: Address[Any], child: Address[Any], reason: StopReason) -> None:
        self._call("child_restarted", supervisor, child, reason)


_INSTRUMENTS: RunVar[Instruments] = RunVar("hybrid_instruments")


def instruments() -> Instrument:
    """The instruments of the current trio run, as one `Instrument` that calls them all.

    For code that builds its own agent machinery (a supervisor of its own,
    say) and reports through the same hooks, isolated as the runtime does:
    an instrument that raises is removed and logged.

    Raises:
        RuntimeError: called outside a trio run.
    """
    return current_instruments()


def current_instruments() -> Instruments:
    return per_run(_INSTRUMENTS, Instruments)


def add_instrument(instrument: Instrument) -> None:
    """Register `instrument` for the current trio run; every agent of the run reports to it.

    Raises:
        TypeError: `instrument` is not a `hybrid.Instrument`.
        ValueError: it is already registered.
        RuntimeError: called outside a trio run.
    """
    current_instruments().add(instrument)


def remove_instrument(instrument: Instrument) -> None:
    """Unregister `instrument` from the current trio run.

    Raises:
        ValueError: it is not registered.
        RuntimeError: called outside a trio run.
    """
    current_instruments().remove(instrument)
