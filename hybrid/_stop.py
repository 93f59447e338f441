"""How an agent ended."""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs


class StopKind(enum.StrEnum):
    """The ways an agent can end; see [`StopReason`][hybrid.StopReason].

    A string enum: ``StopKind.DONE == "done"``, handy in logs and JSON.
    """

    DONE = "done"
    """It finished with `Next.done(value)` (or `ctx.shutdown()`)."""
    INTERRUPTED = "interrupted"
    """It was interrupted (`Address.interrupt()` or `Next.interrupt()`)."""
    STOPPED = "stopped"
    """It ended at once with `Next.stop()` or `ctx.stop()`."""
    FAILED = "failed"
    """A state, a hook or `Next.fail(error)` failed it; `error` says why."""
    CANCELLED = "cancelled"
    """It was cancelled from outside (its nursery or an enclosing cancel scope)."""


@attrs.frozen
class StopReason:
    """How an agent ended; given to `on_stop` and shown by `statistics()`.

    Attributes:
        kind: the way it ended.
        error: the error of a failed agent, else None.

    The reasons without an error are also class constants, for comparisons:
    ``reason == StopReason.DONE``.

    Example:
        ```python
        async def on_stop(self, reason: hybrid.StopReason) -> None:
            if reason.failed:
                log.warning("gave up: %r", reason.error)
        ```
    """

    kind: StopKind
    error: BaseException | None = None

    DONE: ClassVar[StopReason]
    """Finished with ``Next.done``."""
    INTERRUPTED: ClassVar[StopReason]
    """Interrupted."""
    STOPPED: ClassVar[StopReason]
    """Ended with ``Next.stop()``."""
    CANCELLED: ClassVar[StopReason]
    """Cancelled from outside."""

    @property
    def done(self) -> bool:
        """It finished with `Next.done` or `ctx.shutdown()`."""
        return self.kind is StopKind.DONE

    @property
    def interrupted(self) -> bool:
        """It was interrupted."""
        return self.kind is StopKind.INTERRUPTED

    @property
    def stopped(self) -> bool:
        """It ended with `Next.stop()` or `ctx.stop()`."""
        return self.kind is StopKind.STOPPED

    @property
    def failed(self) -> bool:
        """It failed; `error` holds the exception."""
        return self.kind is StopKind.FAILED

    @property
    def cancelled(self) -> bool:
        """It was cancelled from outside."""
        return self.kind is StopKind.CANCELLED

    def __str__(self) -> str:
        if self.error is not None:
            return f"{self.kind.value}: {self.error!r}"
        return self.kind.value


DONE_REASON = StopReason.DONE = StopReason(StopKind.DONE)
INTERRUPTED_REASON = StopReason.INTERRUPTED = StopReason(StopKind.INTERRUPTED)
STOPPED_REASON = StopReason.STOPPED = StopReason(StopKind.STOPPED)
CANCELLED_REASON = StopReason.CANCELLED = StopReason(StopKind.CANCELLED)
