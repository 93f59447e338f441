"""A small AI-agent framework built on hybrid's public API, and a demo of it.

No LLM inside: the model is any object with ``async def complete(history) ->
Decision`` (`Model`); `ScriptedModel` stands in for one, so runs are
deterministic. The pieces, each a plain use of hybrid:

- ``model.py``: `Message`, the decisions (`ToolCall`, `FinalAnswer`), the
  `Model` protocol, `ModelError` and `ScriptedModel`;
- ``tools.py``: `Tools`, the registry of plain functions (``async def`` or
  ``def``), each with its timeout and retry policy (`Tool`);
- ``framework.py``: the loop, `Turn` (states plan -> act -> observe -> ... →
  respond), a `Conversation` actor per session, and `Assistant`, the
  supervisor that owns and restarts them; `ask` puts a question to a session;
- ``trace.py``: `Tracer`, a `hybrid.Instrument` that records each
  conversation's life and each turn's states and tool calls;
- ``demo.py`` and ``__main__.py``: three sessions at once
  (``python -m examples.agent_framework``).

Example:
    ```python
    tools = Tools()
    tools.add(calculator)
    model = ScriptedModel({"What is 6 * 7?": [ToolCall("calculator", ("6 * 7",)), FinalAnswer("{0}")]})
    async with trio.open_nursery() as nursery:
        assistant = hybrid.spawn(nursery, Assistant(model, tools), name="assistant")
        print((await ask(assistant, "alice", "What is 6 * 7?")).answer)  # 42
        assistant.interrupt()
    ```
"""

from .framework import Ask as Ask
from .framework import Assistant as Assistant
from .framework import Budget as Budget
from .framework import Conversation as Conversation
from .framework import History as History
from .framework import Observation as Observation
from .framework import OpenSession as OpenSession
from .framework import Outcome as Outcome
from .framework import Turn as Turn
from .framework import TurnResult as TurnResult
from .framework import TurnState as TurnState
from .framework import ask as ask
from .model import Decision as Decision
from .model import FinalAnswer as FinalAnswer
from .model import Message as Message
from .model import Model as Model
from .model import ModelError as ModelError
from .model import Role as Role
from .model import ScriptedModel as ScriptedModel
from .model import Step as Step
from .model import ToolCall as ToolCall
from .tools import Tool as Tool
from .tools import Tools as Tools
from .trace import Lifecycle as Lifecycle
from .trace import Summary as Summary
from .trace import Tracer as Tracer
from .trace import TurnTrace as TurnTrace

__all__ = [
    "Ask",
    "Assistant",
    "Budget",
    "Conversation",
    "Decision",
    "FinalAnswer",
    "History",
    "Lifecycle",
    "Message",
    "Model",
    "ModelError",
    "Observation",
    "OpenSession",
    "Outcome",
    "Role",
    "ScriptedModel",
    "Step",
    "Summary",
    "Tool",
    "ToolCall",
    "Tools",
    "Tracer",
    "Turn",
    "TurnResult",
    "TurnState",
    "ask",
]
