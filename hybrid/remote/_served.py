"""What a node keeps of each local agent it serves: a published one, or a sharded entity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import hybrid
from hybrid._foreign import RequestCall

from ._transport import Subscription

__all__ = ["Served"]


@final
class Served:
    """One published name: its local address and what to undo when it ends or is unpublished."""

    __slots__ = ("address", "calls", "cancel_farewell", "name", "revision", "subscription")

    def __init__(self, name: str, address: hybrid.Address[Any]) -> None:
        self.name = name
        self.address = address
        self.revision = 0
        """Its registry entry's revision (0: not registered); announced with its end."""
        self.subscription: Subscription | None = None
        """Its subject's subscription, once made."""
        self.cancel_farewell: Callable[[], None] = lambda: None
        self.calls: dict[str, RequestCall[Any]] = {}
        """The requests it serves now, by reply subject (a cancel names one)."""
