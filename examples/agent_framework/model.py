"""What the loop asks a model, what the model answers, and a scripted model that stands in for an LLM.

The framework never calls an LLM itself: it calls an object with
``async def complete(history) -> Decision`` (the `Model` protocol) that the
user passes in. A real application wraps its LLM client in one; the demo and
the tests pass a `ScriptedModel`, so every run takes the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

import attrs
import trio

Role = Literal["user", "assistant", "tool"]
"""Who wrote a history entry: the user's question, the model's words, a tool's observation."""


@attrs.frozen
class Message:
    """One entry of a conversation's history, as the model reads it.

    Attributes:
        role: ``"user"`` (a question), ``"assistant"`` (a tool call or an answer)
            or ``"tool"`` (what a tool call returned, or why it failed).
        text: what was said.
    """

    role: Role
    text: str


@attrs.frozen
class ToolCall:
    """The model's decision to call a tool: its registered name and positional arguments.

    Tools are schema-free: the arguments are passed as they are, in order
    (``ToolCall("search", ("trio nurseries",))`` calls ``search("trio nurseries")``).
    """

    tool: str
    args: tuple[object, ...] = ()

    def __str__(self) -> str:
        return f"{self.tool}({', '.join(map(repr, self.args))})"


@attrs.frozen
class FinalAnswer:
    """The model's decision to answer the question: this ends the turn."""

    text: str


Decision = ToolCall | FinalAnswer
"""What a model decides at each step of a turn: call a tool, or answer."""


class Model(Protocol):
    """What the agent loop needs from a model: the next decision, given the history so far.

    `complete` may take its time (it is awaited in an async state, on the
    trio loop: use an async client, never a blocking one). An exception
    raised here is not an observation: the conversation crashes, and its
    supervisor restarts it (see `Conversation`).
    """

    async def complete(self, history: Sequence[Message], /) -> Decision:
        """The next decision, given the conversation so far (its last user message is the question)."""
        ...


class ModelError(Exception):
    """The model could not decide (its server went away, it answered garbage).

    Raised by a `Model`; it crashes the conversation, as any error of the
    model does, rather than being shown to the model as an observation.
    """


Step = ToolCall | FinalAnswer | Exception | Callable[[Sequence[Message]], Decision]
"""One scripted decision of a `ScriptedModel`.

- a `ToolCall`, taken as it is;
- a `FinalAnswer`, whose text is formatted with the observations of the turn
  so far (``"{0}"`` is the first tool's result or error);
- an exception, raised (a model that fails);
- a function of the history, returning the decision (an answer that depends
  on earlier turns).
"""


class ScriptedModel:
    """A deterministic stand-in for an LLM: for each question, the decisions it takes, in order.

    The step it takes is found from the history alone: the last user message
    names the script, and the number of tool observations since then is the
    index of the step. So one instance serves any number of conversations at
    once, as a client of a real model would.

    Example:
        ```python
        model = ScriptedModel(
            {"What is 6 * 7?": [ToolCall("calculator", ("6 * 7",)), FinalAnswer("6 * 7 = {0}")]},
            latency=0.01,
        )
        ```

    Args:
        script: question -> its steps (see `Step`).
        latency: seconds each decision takes (``trio.sleep``: simulated time in tests).
    """

    def __init__(self, script: Mapping[str, Sequence[Step]], *, latency: float = 0.0) -> None:
        self.script = script
        self.latency = latency

    async def complete(self, history: Sequence[Message], /) -> Decision:
        """Take the scripted step for where the current turn is.

        Raises:
            LookupError: the question has no script, or its script has no step this far.
        """
        await trio.sleep(self.latency)
        asked = max(i for i, message in enumerate(history) if message.role == "user")
        question = history[asked].text
        observations = [message.text for message in history[asked + 1 :] if message.role == "tool"]
        steps = self.script.get(question, ())
        if len(observations) >= len(steps):
            raise LookupError(f"no step {len(observations) + 1} scripted for {question!r}")
        step = steps[len(observations)]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, FinalAnswer):
            return FinalAnswer(step.text.format(*observations))
        if isinstance(step, ToolCall):
            return step
        return step(history)
