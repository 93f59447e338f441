"""Tracing through a hybrid instrument: each conversation's life, each turn's states and tool calls.

`Tracer` is a `hybrid.Instrument`: registered with `hybrid.add_instrument`,
it is told of every agent of the trio run as it starts, changes state, ends
and is restarted, and picks out what belongs to the framework. It needs no
help from the framework's code: a `Turn`'s states carry their `TurnState`
(conversation, turn number, question) as first argument, and the
observations as arguments of ``observe``, and an instrument sees each
transition with its arguments (`Next.args`).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

import hybrid
from hybrid import Next

from .framework import Conversation, Observation, Outcome, TurnState


@attrs.frozen
class Lifecycle:
    """A conversation started, ended, or was restarted by its supervisor.

    Attributes:
        what: which of the three.
        reason: how the run ended (``"ended"``), or how the run that was replaced ended (``"restarted"``).
        by: the supervisor that restarted it.
    """

    what: Literal["started", "ended", "restarted"]
    reason: hybrid.StopReason | None = None
    by: str | None = None

    def __str__(self) -> str:
        if self.what == "ended":
            return f"ended: {self.reason}"
        if self.what == "restarted":
            return f"restarted by {self.by}"
        return self.what


@attrs.define
class TurnTrace:
    """What one turn did, in order.

    Attributes:
        number: the turn's number in its conversation.
        question: the question it answered.
        steps: one entry per state entered (``"plan"``, ``"act search('trio')"``, ...),
            then how the turn ended if it did not finish (``"failed: ..."``).
        observations: the tool calls' observations, in order.
        outcome: how it ended (None if it failed).
    """

    number: int
    question: str
    steps: list[str] = attrs.Factory(list[str])
    observations: list[Observation] = attrs.Factory(list[Observation])
    outcome: Outcome | None = None

    def __str__(self) -> str:
        return f"turn {self.number}  " + " -> ".join(self.steps)


@attrs.frozen
class Summary:
    """Counts over everything a `Tracer` saw."""

    turns: int
    tool_calls: int
    retries: int
    timeouts: int
    failed_calls: int
    out_of_budget: int
    crashes: int
    restarts: int

    def __str__(self) -> str:
        return ", ".join(
            [
                _count(self.turns, "turn"),
                _count(self.tool_calls, "tool call"),
                _count(self.retries, "retry", "retries"),
                _count(self.timeouts, "timeout"),
                _count(self.failed_calls, "failed call"),
                _count(self.out_of_budget, "turn out of budget", "turns out of budget"),
                _count(self.crashes, "crash", "crashes"),
                _count(self.restarts, "restart"),
            ]
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


class Tracer(hybrid.Instrument):
    """Records, per conversation, when it started, ended and was restarted, and the states of each turn.

    Example:
        ```python
        tracer = Tracer()
        hybrid.add_instrument(tracer)
        ...  # run an Assistant
        print(tracer.format())
        print(tracer.summary())
        ```
    """

    def __init__(self) -> None:
        self._log: dict[str, list[Lifecycle | TurnTrace]] = {}  # conversation name -> what it did, in order
        self._running: dict[str, TurnTrace] = {}  # Turn agent name -> its trace, while it runs

    # -- hooks (called by hybrid, on the trio thread, in the agent's own task) --

    def agent_started(self, address: hybrid.Address[Any]) -> None:
        if issubclass(address.agent_type, Conversation):
            self._entries(address.name).append(Lifecycle("started"))

    def state_entered(self, address: hybrid.Address[Any], next: Next[Any]) -> None:
        turn = next.args[0] if next.args else None
        if not isinstance(turn, TurnState):
            return  # not a state of the agent loop
        trace = self._running.get(address.name)
        if trace is None:  # the turn's first state
            trace = self._running[address.name] = TurnTrace(turn.number, turn.question)
            self._entries(turn.conversation).append(trace)
        step = next.state_name or next.kind
        match next.state_name, next.args[1:]:
            case "act" | "act_in_thread", (_, call, _):
                step = f"act {call}" + (" in a thread" if next.kind == "do_sync" else "")
            case "observe", (Observation() as observation,):
                trace.observations.append(observation)
                step += _describe(observation)
            case "respond", (_, Outcome() as outcome):
                trace.outcome = outcome
                step += "" if outcome is Outcome.ANSWERED else f" ({outcome})"
            case _:
                pass
        trace.steps.append(step)

    def agent_stopped(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
        trace = self._running.pop(address.name, None)
        if trace is not None:
            if not reason.done:  # failed (the model raised), interrupted or cancelled
                trace.steps.append(str(reason))
        elif issubclass(address.agent_type, Conversation):
            self._entries(address.name).append(Lifecycle("ended", reason))

    def child_restarted(
        self, supervisor: hybrid.Address[Any], child: hybrid.Address[Any], reason: hybrid.StopReason
    ) -> None:
        if issubclass(child.agent_type, Conversation):
            self._entries(child.name).append(Lifecycle("restarted", reason, supervisor.name))

    # -- reading the trace ------------------------------------------------------

    def conversations(self) -> list[str]:
        """The names of the conversations seen, sorted (their start order depends on the scheduler)."""
        return sorted(self._log)

    def lines(self, conversation: str) -> list[str]:
        """The trace of one conversation, one line per event or turn."""
        return [str(entry) for entry in self._log.get(conversation, [])]

    def turns(self, conversation: str | None = None) -> list[TurnTrace]:
        """The turns of one conversation, or of all of them."""
        names = self.conversations() if conversation is None else [conversation]
        return [entry for name in names for entry in self._log.get(name, []) if isinstance(entry, TurnTrace)]

    def format(self) -> str:
        """Every conversation's trace, as indented text."""
        return "\n".join(
            line for name in self.conversations() for line in [name, *(f"  {entry}" for entry in self.lines(name))]
        )

    def summary(self) -> Summary:
        """The counts of turns, tool calls, retries, timeouts, failures, crashes and restarts."""
        turns = self.turns()
        lifecycle = [entry for entries in self._log.values() for entry in entries if isinstance(entry, Lifecycle)]
        observations = [observation for turn in turns for observation in turn.observations]
        return Summary(
            turns=len(turns),
            tool_calls=len(observations),
            retries=sum(observation.retries for observation in observations),
            timeouts=sum(observation.timeouts for observation in observations),
            failed_calls=sum(not observation.ok for observation in observations),
            out_of_budget=sum(turn.outcome is Outcome.OUT_OF_BUDGET for turn in turns),
            crashes=sum(
                entry.what == "ended" and entry.reason is not None and entry.reason.failed for entry in lifecycle
            ),
            restarts=sum(entry.what == "restarted" for entry in lifecycle),
        )

    def _entries(self, conversation: str) -> list[Lifecycle | TurnTrace]:
        return self._log.setdefault(conversation, [])


def _describe(observation: Observation) -> str:
    notes: list[str] = []
    if not observation.ok:
        notes.append("failed")
    if observation.tries > 1:
        notes.append(f"{observation.tries} tries")
    if observation.timeouts:
        notes.append(_count(observation.timeouts, "timed out", "timed out"))
    return f" ({', '.join(notes)})" if notes else ""
