"""Slow-step warnings: find the call that blocks the trio thread.

Everything in a trio run shares one thread: a handler or an async state that
calls something blocking (``time.sleep``, a synchronous HTTP client, a long
computation) stalls every agent until it returns. `watch` times each step of
each trio task (the code between two checkpoints, with trio's own
`trio.abc.Instrument` hooks) and logs a WARNING on ``hybrid.slowsteps`` when
one step held the thread longer than a threshold: which agent, what it was
doing (its state, or the message it was handling) and for how long. asyncio's
debug mode does the same for slow callbacks (``slow_callback_duration``,
0.1 s by default, the default here too).

It is a debugging aid with a cost (two clock reads per task step, and every
message is stamped while it watches): turn it on to find a blocking call,
or in service mode with ``--slow-step SECONDS``.

Example:
    ```python
    import hybrid.slowsteps

    async def main() -> None:
        watcher = hybrid.slowsteps.watch(0.05)
        try:
            await App().run()
        finally:
            watcher.close()
    ```

    logs, when a handler of ``App-1/db`` blocks:

    ```text
    WARNING hybrid.slowsteps: App-1/db (Storage) held the trio thread for 0.212 s handling Save(key='a', value=1)
    ```
"""

from __future__ import annotations

import logging
import reprlib
import time
from contextvars import Context
from typing import Any, final

import trio

import hybrid
from hybrid import _validate

__all__ = ["SlowSteps", "watch"]

logger: logging.Logger = logging.getLogger("hybrid.slowsteps")

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 120


@final
class _StepTimer(trio.abc.Instrument):
    """The trio side: times every task step, reports those over the threshold.

    `marks` are the times within the current step at which the stepping
    agent began something (the first: what it was doing when the step
    started): the longest stretch between them names the culprit, since one
    step may take several transitions or handle many messages.
    """

    def __init__(self, owner: SlowSteps) -> None:
        self.owner = owner
        self.started: float | None = None  # None: added in the middle of a step
        self.marks: list[tuple[float, str]] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.marks.clear()
        self.started = started = time.perf_counter()
        self.marks.append((started, self.owner.doing(task)))

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        started = self.started
        if started is None:
            return
        self.started = None
        ended = time.perf_counter()
        owner = self.owner
        if ended - started >= owner.threshold:
            owner.report(task, started, ended, self.marks)
        if owner.ended:  # forgotten after the step, which may still be reported with them
            owner.forget_ended()


@final
class SlowSteps(hybrid.Instrument):
    """Watches the trio run for task steps longer than `threshold`; made by `watch`.

    Attributes:
        threshold: seconds a step may hold the trio thread before it is logged.
        reported: how many slow steps were logged so far.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold: float = _validate.seconds("threshold", threshold, positive=True)
        self.reported: int = 0
        self._timer = _StepTimer(self)
        self._agents: dict[trio.lowlevel.Task, hybrid.Address[Any]] = {}
        self._tasks: dict[hybrid.Address[Any], trio.lowlevel.Task] = {}
        self._doing: dict[hybrid.Address[Any], str] = {}
        self.ended: list[hybrid.Address[Any]] = []
        """Agents that ended during the current step: forgotten once it is over."""
        self._closed = False

    # -- what each agent is doing (hybrid's hooks, in the agent's own task) ----

    def _begin(self, address: hybrid.Address[Any], doing: str) -> None:
        # Hooks run in the agent's task; a hibernating agent wakes up in a new one.
        task = trio.lowlevel.current_task()
        old = self._tasks.get(address)
        if old is not task:
            if old is not None:
                del self._agents[old]
            self._agents[task] = address
            self._tasks[address] = task
        self._doing[address] = doing
        self._timer.marks.append((time.perf_counter(), doing))

    def agent_started(self, address: hybrid.Address[Any]) -> None:
        self._begin(address, "starting")

    def state_entered(self, address: hybrid.Address[Any], next: hybrid.Next[Any]) -> None:
        if next.is_state:
            self._begin(address, f"in state {next.state_name}")
        elif next.kind == "events":
            self._begin(address, "in actor mode")
        else:
            self._begin(address, f"ending ({next.kind})")

    def message_received(
        self,
        address: hybrid.Address[Any],
        message: object,
        kind: hybrid.MessageKind,
        waited: float | None,
        sender: Context | None,
    ) -> None:
        self._begin(address, f"handling {_repr.repr(message)}")

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        self._begin(address, "in actor mode")

    def agent_stopped(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
        self.ended.append(address)

    def forget_ended(self) -> None:
        """Drop what is kept of the agents that ended (after the step they ended in)."""
        for address in self.ended:
            task = self._tasks.pop(address, None)
            if task is not None:
                del self._agents[task]
            self._doing.pop(address, None)
        self.ended.clear()

    # -- reporting -------------------------------------------------------------

    def doing(self, task: trio.lowlevel.Task) -> str:
        """What the agent run by `task` is doing ("" for a task that is not an agent's)."""
        address = self._agents.get(task)
        return "" if address is None else self._doing[address]

    def report(self, task: trio.lowlevel.Task, started: float, ended: float, marks: list[tuple[float, str]]) -> None:
        """Log one slow step of `task`, naming the longest thing its agent did in it."""
        self.reported += 1
        seconds = ended - started
        address = self._agents.get(task)
        if address is None:
            logger.warning(
                "task %s held the trio thread for %.3f s",
                task.name,
                seconds,
                extra={"task": task.name, "seconds": seconds},
            )
            return
        doing, longest = "", -1.0
        ends = [*(at for at, _ in marks[1:]), ended]
        for (at, what), until in zip(marks, ends, strict=True):
            if until - at > longest:
                doing, longest = what, until - at
        logger.warning(
            "%s (%s) held the trio thread for %.3f s %s",
            address.name,
            address.agent_type.__qualname__,
            seconds,
            doing,
            extra={"agent": address.name, "agent_type": address.agent_type.__qualname__, "seconds": seconds},
        )

    def close(self) -> None:
        """Stop watching (idempotent); call it in the trio run that `watch` was called in."""
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.remove_instrument(self._timer)
        hybrid.remove_instrument(self)
        self._agents.clear()
        self._tasks.clear()
        self._doing.clear()
        self.ended.clear()


def watch(threshold: float = 0.1) -> SlowSteps:
    """Log every task step of the current trio run that holds the thread `threshold` seconds or more.

    Agents started after this call are named in the log with what they were
    doing; other tasks by their trio task name. Stop with ``close()``.

    Raises:
        ValueError: `threshold` is not a positive number of seconds.
        RuntimeError: called outside a trio run.
    """
    watcher = SlowSteps(threshold)
    hybrid.add_instrument(watcher)
    trio.lowlevel.add_instrument(watcher._timer)  # noqa: SLF001 - the watcher's own part
    return watcher
