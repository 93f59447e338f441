"""Streams: an async iterable consumed by an agent, each item an event (`Context.consume`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable
from typing import Any, cast, final

import attrs
import trio

from ._runtime import FAIRNESS, Runtime
from ._thread import Home, threadsafe

logger = logging.getLogger("hybrid.agent")


@final
class Stream:
    """A handle on an async iterable consumed by an agent (`Context.consume`)."""

    __slots__ = ("_home", "_items", "_scope")

    _home: Home
    _items: int
    _scope: trio.CancelScope

    def __init__(self) -> None:
        raise TypeError("Stream has no public constructor: use ctx.consume(source)")

    @property
    def items(self) -> int:
        """How many items were delivered so far."""
        return self._items

    @threadsafe(lambda stream: stream._home)  # noqa: SLF001 - its own field
    def cancel(self) -> None:
        """Stop consuming; no `StreamEnded` event follows a cancellation. Safe from a worker thread."""
        self._scope.cancel()


@attrs.frozen(eq=False)
class StreamEnded:
    """The event that ends a [`Context.consume`][hybrid.Context.consume] stream.

    Attributes:
        stream: the handle that `consume` returned.
        error: None when the iterable was exhausted; the exception if iterating
            it raised, or `UnhandledMessage` if it produced an item of a type
            the agent does not handle (the stream stops there).
    """

    stream: Stream
    error: Exception | None = None


def start_stream(rt: Runtime, source: AsyncIterable[Any]) -> Stream:
    """Consume `source` for the agent of `rt`, in a helper task."""
    mailbox = rt.mailbox
    mailbox.event_handler(StreamEnded)
    stream = object.__new__(Stream)
    stream._home = mailbox.home
    stream._items = 0
    stream._scope = trio.CancelScope()
    rt.start_helper(lambda: _consume(rt, source, stream), name=f"consume {source!r} for {rt.name}")
    return stream


async def _consume(rt: Runtime, source: AsyncIterable[Any], stream: Stream) -> None:
    mailbox = rt.mailbox
    error: Exception | None = None
    with stream._scope:  # noqa: SLF001
        try:
            since_yield = 0
            async for item in source:
                mailbox.event_handler(type(cast("object", item)))
                if not await mailbox.put_wait():
                    return  # the agent is finishing
                mailbox.put(item)
                stream._items += 1  # noqa: SLF001
                # A source that never awaits must not starve the run: the
                # same fairness rule as the message loop.
                since_yield += 1
                if since_yield >= FAIRNESS:
                    since_yield = 0
                    await trio.lowlevel.checkpoint()
        except Exception as exc:
            error = exc
        if await mailbox.put_wait():
            mailbox.put(StreamEnded(stream, error))
        elif error is not None:  # pragma: no cover - the agent ended meanwhile
            logger.error("%s ended; the error of a consumed stream was dropped", rt.name, exc_info=error)
