"""Monitors: an agent told, by an `Ended` event, when another agent ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

import attrs

from ._mailbox import CLOSED
from ._runtime import Runtime
from ._stop import StopReason
from ._thread import threadsafe

if TYPE_CHECKING:
    from ._address import Address


@attrs.frozen(eq=False)
class Ended:
    """The event a monitor delivers when the agent it watches has ended.

    Attributes:
        address: the address that was monitored.
        reason: how the agent ended.
    """

    address: Address[Any]
    reason: StopReason


@final
class Monitor:
    """A handle on a monitor from [`Context.monitor`][hybrid.Context.monitor]."""

    __slots__ = ("_notify", "_target")

    _target: Runtime  # the watched run
    _notify: Callable[[Runtime], None]

    def __init__(self) -> None:
        raise TypeError("Monitor has no public constructor: use ctx.monitor(address)")

    @threadsafe(lambda monitor: monitor._target.mailbox.home)  # noqa: SLF001 - its own field
    def cancel(self) -> None:
        """Stop watching: no `Ended` event follows. Idempotent."""
        self._target.remove_monitor(self._notify)


def watch(watcher: Runtime, target: Runtime, address: Address[Any]) -> Monitor:
    """Deliver ``Ended(address, reason)`` to `watcher` when `target` has ended."""
    mailbox = watcher.mailbox
    mailbox.event_handler(Ended)

    def notify(ended: Runtime) -> None:
        if mailbox.limit != CLOSED and ended.reason is not None:
            mailbox.put(Ended(address, ended.reason))

    target.add_monitor(notify)
    monitor = object.__new__(Monitor)
    monitor._target = target
    monitor._notify = notify
    return monitor
