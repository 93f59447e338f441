"""Timers: events an agent sends itself later (`send_after`) or periodically (`send_every`)."""

from __future__ import annotations

import math
from typing import final

import trio

from . import _validate
from ._exceptions import LifecycleError
from ._mailbox import Tick
from ._runtime import Runtime
from ._thread import threadsafe


@final
class Timer:
    """A handle on a timer from `send_after` or `send_every`.

    All timers of an agent are cancelled when the agent ends. A periodic
    timer never piles up ticks, in a bounded mailbox or not: while one of its
    ticks waits in the mailbox (behind a slow handler, say), the next ones are
    coalesced into it; a tick also waits for room in a full bounded mailbox.

    Example:
        Debounce: flush one second after the last change.

        ```python
        @hybrid.on_event
        async def changed(self, event: Changed) -> None:
            if self.flush_timer is None:
                self.flush_timer = self.ctx.send_after(1.0, Flush())
            else:
                self.flush_timer.reset(1.0)
        ```
    """

    __slots__ = ("_cancelled", "_deadline", "_event", "_period", "_rt", "_running", "_scope", "_sleep", "queued")

    _rt: Runtime
    _event: object
    _period: float | None
    _deadline: float
    _scope: trio.CancelScope
    _sleep: trio.CancelScope | None
    _running: bool
    _cancelled: bool
    queued: bool  # a tick of this timer waits in the mailbox (cleared by the reader)

    def __init__(self) -> None:
        raise TypeError("Timer has no public constructor: use ctx.send_after or ctx.send_every")

    @classmethod
    def _start_new(cls, rt: Runtime, event: object, delay: float, period: float | None) -> Timer:
        rt.mailbox.event_handler(type(event))
        timer = object.__new__(cls)
        timer._rt = rt
        timer._event = event
        timer._period = period
        timer._deadline = trio.current_time() + delay
        timer._sleep = None
        timer._running = False
        timer._cancelled = False
        timer.queued = False
        timer._start()
        return timer

    def _start(self) -> None:
        self._running = True
        self._scope = trio.CancelScope()  # a scope is entered once: one per run
        self._rt.start_helper(self._run, name=f"timer {self._event!r} for {self._rt.name}")

    async def _run(self) -> None:
        mailbox = self._rt.mailbox
        try:
            with self._scope:
                while True:
                    with trio.CancelScope(deadline=self._deadline) as self._sleep:
                        await trio.sleep_forever()
                    self._sleep = None
                    if not await mailbox.put_wait():
                        return  # the agent is finishing: its timers stop
                    if trio.current_time() < self._deadline:
                        continue  # reset() moved the deadline while this tick waited for room
                    if not self.queued:  # else the tick waiting in the mailbox stands for this one
                        self.queued = True
                        mailbox.put(Tick(self._event, self))
                    if self._period is None:
                        return
                    # Fixed rate without drift; ticks missed while the mailbox
                    # was full are coalesced rather than fired in a burst.
                    now = trio.current_time()
                    self._deadline += self._period
                    if self._deadline < now:
                        self._deadline += self._period * math.ceil((now - self._deadline) / self._period)
        finally:
            self._running = False
            self._sleep = None

    @property
    def active(self) -> bool:
        """Whether the timer will still fire."""
        return self._running and not self._cancelled

    @property
    def deadline(self) -> float:
        """When the timer fires next, in `trio.current_time()` terms."""
        return self._deadline

    @threadsafe(lambda timer: timer._rt.mailbox.home)  # noqa: SLF001 - its own field
    def cancel(self) -> None:
        """Stop the timer; the event is not sent (again). Idempotent."""
        self._cancelled = True
        self._scope.cancel()

    @threadsafe(lambda timer: timer._rt.mailbox.home)  # noqa: SLF001 - its own field
    def reset(self, delay: float) -> None:
        """Fire `delay` seconds from now instead (debounce); re-arms a fired timer.

        For a periodic timer, the next tick is moved and the period continues
        from there.

        Raises:
            ValueError: `delay` is negative, infinite or NaN.
            LifecycleError: the timer was cancelled or its agent has ended.
        """
        delay = _validate.seconds("Timer.reset", delay)
        if self._cancelled:
            raise LifecycleError("this timer was cancelled; start a new one")
        self._deadline = trio.current_time() + delay
        if self._sleep is not None:
            self._sleep.deadline = self._deadline
        elif not self._running:
            self._start()
