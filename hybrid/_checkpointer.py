"""`Checkpointer`: the seam that makes an agent durable, told of each transition before it is taken.

The core knows only this protocol; `hybrid.durable` implements it on a
database, and an application can implement it on its own store.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ._next import Next
from ._stop import StopReason


@runtime_checkable
class Checkpointer(Protocol):
    """What the run loop awaits so that an agent survives a crash of its process.

    Give one to `hybrid.AgentRunner`, `hybrid.spawn`, `hybrid.start` or a
    supervisor's ``spawn`` (``checkpointer=``); `hybrid.durable`'s store makes
    them (``store.checkpointer(key)``). Each method is awaited in the agent's
    own task, and the run goes on only once it returned: an exception it
    raises fails the agent (an agent never goes on as if its transition were
    saved). A supervisor reuses the same checkpointer for every run of a
    restarted child, so `start` is called once per run.

    While a checkpointer is set, inline request handlers are queued like the
    others (each handled message is reported to `handled`).

    Example:
        ```python
        class Printing:
            idempotency_key = "demo"

            async def start(self, agent):
                return None  # no checkpoint: begin() as usual

            async def transition(self, agent, nxt):
                print("entering", nxt.state_name)

            async def handled(self, agent):
                pass

            async def ended(self, agent, reason, output):
                print("ended:", reason)

        await hybrid.AgentRunner(MyAgent(), checkpointer=Printing()).run()
        ```
    """

    @property
    def idempotency_key(self) -> str:
        """The key of the state being run, stable across resumes (``ctx.idempotency_key``)."""
        ...

    async def start(self, agent: Any) -> Next[Any] | None:
        """Before ``begin()``: None to call it, or the transition to resume from instead.

        A returned transition is entered as any other: `transition` is called
        for it too (the checkpointer knows it saved it already).
        """
        ...

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        """Before the state `nxt` names starts (or actor mode, for ``Next.events()``): save it."""
        ...

    async def handled(self, agent: Any) -> None:
        """After each message the agent handled (its fields may have changed).

        In actor mode; and while the agent finishes (the messages still queued
        after ``Next.done`` or an interrupt) when the transition last given to
        `transition` has not run: actor mode, or the next transition of an
        interrupted state. A resumed run then has what those messages changed.
        Not after a state that ran (it chose the ending): saved under it, they
        would make that state run again on resume, under another idempotency
        key; the ending is what `ended` records then. A request's answer goes
        once this returns.
        """
        ...

    async def ended(self, agent: Any, reason: StopReason, output: Any) -> None:
        """After `on_stop`, before `join()` and `run()` return: the run's ending.

        Called for every ending, a cancelled run's included (then inside a
        shielded scope: return promptly). An exception raised here turns a
        finished run into a failed one.
        """
        ...
