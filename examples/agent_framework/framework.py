"""The agent loop as hybrid states, and conversations as supervised actors.

Three layers, each a plain use of hybrid's public API:

- `Turn`, a state machine that answers one question:

      plan --> act --> observe --> plan --> ... --> respond --> done(TurnResult)
        |                                             ^
        +----- (an answer, or the budget is used up) -+

  ``plan`` asks the model for a decision; ``act`` calls the tool (an async
  state, or a sync state in a worker thread for a plain ``def`` tool) under
  the tool's timeout, retry policy and a fallback that turns the last error
  into an observation; ``observe`` adds what the tool said to the history;
  ``respond`` adds the answer and ends the turn. The loop's mutable state,
  `TurnState`, is an argument passed from state to state, so that every
  transition says which conversation and turn it belongs to (the `Tracer`
  reads it there).
- `Conversation`, an actor that keeps one session's history and answers
  `Ask` requests by running a `Turn` on it, one question at a time.
- `Assistant`, a supervisor that owns one `Conversation` per session id,
  starts it on first use, and restarts it when it crashes.
"""

from __future__ import annotations

import enum
import functools

import attrs
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next

from .model import FinalAnswer, Message, Model, ToolCall
from .tools import Tool, Tools


@attrs.define
class Budget:
    """The tool calls a conversation may make, and those it has made; shared by its turns.

    Every call counts, whatever its outcome (a call that failed or timed out
    cost as much as one that worked); retries of one call do not.
    """

    limit: int
    used: int = 0


@attrs.define(repr=False)
class TurnState:
    """The mutable state of one turn of the loop, passed from each state to the next as an argument.

    Attributes:
        conversation: the name of the conversation's agent (``"assistant/alice"``).
        number: which turn of the conversation this is (1 for the first question).
        question: the user's question.
        history: the conversation's history; the turn appends to it.
        budget: the conversation's tool-call budget.
        calls: tool calls made in this turn so far.
    """

    conversation: str
    number: int
    question: str
    history: list[Message]
    budget: Budget
    calls: int = 0

    def __repr__(self) -> str:
        # Short on purpose: hybrid shows a state's arguments in logs, statistics and snapshots.
        return f"<turn {self.number} of {self.conversation}>"


@attrs.frozen
class Observation:
    """What one tool call gave the model to read: the tool's result, or why there is none.

    Attributes:
        tool: the tool's name.
        text: what the model reads (``str(result)``, or ``"error: ..."``).
        ok: whether the tool returned a result.
        tries: how many times the tool was tried (0: there is no such tool).
        timeouts: how many of those tries were cut by the tool's timeout.
    """

    tool: str
    text: str
    ok: bool
    tries: int
    timeouts: int

    @property
    def retries(self) -> int:
        """Tries after the first."""
        return max(self.tries - 1, 0)


@attrs.define
class Tries:
    """What the tries of one tool call did, counted by the tries themselves.

    hybrid runs every try of a state with the same arguments, so this one
    record (an argument of ``act``) sees them all. A try that neither raised
    nor returned was cut by the timeout: that count is derived, not kept.
    """

    started: int = 0
    errors: int = 0  # tries whose tool raised

    def succeeded(self, tool: Tool, result: object) -> Observation:
        """The observation of a call whose last try returned `result`."""
        return Observation(tool.name, str(result), ok=True, tries=self.started, timeouts=self.started - self.errors - 1)

    def failed(self, tool: Tool, error: Exception) -> Observation:
        """The observation of a call whose last try failed with `error` (the fallback's argument)."""
        if isinstance(error, trio.TooSlowError):
            text = f"error: {tool.name} timed out after {tool.timeout:g}s"
        else:
            text = f"error: {type(error).__name__}: {error}"
        return Observation(tool.name, text, ok=False, tries=self.started, timeouts=self.started - self.errors)


class Outcome(enum.StrEnum):
    """How a turn ended."""

    ANSWERED = "answered"
    """The model answered."""
    OUT_OF_BUDGET = "out of budget"
    """The model asked for one tool call more than the conversation's budget allows."""


@attrs.frozen
class TurnResult:
    """The answer to one question.

    Attributes:
        answer: the model's answer, or a sentence saying why there is none.
        outcome: how the turn ended.
        tool_calls: the tool calls made during the turn.
    """

    answer: str
    outcome: Outcome
    tool_calls: int


class Turn(Agent[TurnResult]):
    """The agent loop for one question: plan, act, observe, until the model answers.

    Run it with ``await Turn(model, tools, state).run()``; its output is the
    `TurnResult`. Tool failures and timeouts become observations; an error of
    the model itself fails the turn (`run()` raises it).
    """

    helper_tasks = False  # no timers or helper tasks: run() needs no nursery of its own

    def __init__(self, model: Model, tools: Tools, state: TurnState) -> None:
        self.model = model
        self.tools = tools
        self.state = state

    def begin(self) -> Next[Self]:
        return Next.do_async(self.plan, self.state)

    async def plan(self, turn: TurnState) -> Next[Self]:
        """Ask the model what to do next: answer (then respond), or call a tool (then act)."""
        decision = await self.model.complete(tuple(turn.history))
        if isinstance(decision, FinalAnswer):
            return Next.do_async(self.respond, turn, decision.text, Outcome.ANSWERED)
        if turn.budget.used >= turn.budget.limit:
            text = (
                f"I stopped before finishing: this conversation has used its budget of {turn.budget.limit} "
                f"tool calls (the next one would have been {decision})."
            )
            return Next.do_async(self.respond, turn, text, Outcome.OUT_OF_BUDGET)
        turn.budget.used += 1
        turn.calls += 1
        turn.history.append(Message("assistant", f"calls {decision}"))
        return self.call_tool(turn, decision)

    def call_tool(self, turn: TurnState, call: ToolCall) -> Next[Self]:
        """The transition that calls a tool: where hybrid's modifiers do the work (not a state itself)."""
        tool = self.tools.get(call.tool)
        if tool is None:
            unknown = Observation(
                call.tool, f"error: there is no tool named {call.tool!r}", ok=False, tries=0, timeouts=0
            )
            return Next.do_async(self.observe, turn, unknown)
        tries = Tries()
        if tool.is_async:
            step = Next.do_async(self.act, turn, tool, call, tries)
        else:
            step = Next.do_sync(self.act_in_thread, turn, tool, call, tries)
        step = step.timeout(tool.timeout)
        if tool.retry is not None:
            step = step.retry(tool.retry)
        return step.fallback(functools.partial(self.tool_failed, turn, tool, tries))

    async def act(self, turn: TurnState, tool: Tool, call: ToolCall, tries: Tries) -> Next[Self]:
        """One try of an ``async def`` tool, on the trio loop."""
        tries.started += 1
        try:
            result = await tool.fn(*call.args)
        except Exception:
            tries.errors += 1
            raise  # to hybrid: retried by the tool's policy, then given to tool_failed
        return Next.do_async(self.observe, turn, tries.succeeded(tool, result))

    def act_in_thread(self, turn: TurnState, tool: Tool, call: ToolCall, tries: Tries) -> Next[Self]:
        """One try of a plain ``def`` tool, in a worker thread (a sync state): the loop stays free."""
        tries.started += 1
        try:
            result = tool.fn(*call.args)
        except Exception:
            tries.errors += 1
            raise
        return Next.do_async(self.observe, turn, tries.succeeded(tool, result))

    def tool_failed(self, turn: TurnState, tool: Tool, tries: Tries, error: Exception) -> Next[Self]:
        """The fallback of ``act``: the last try's error becomes what the model observes."""
        return Next.do_async(self.observe, turn, tries.failed(tool, error))

    async def observe(self, turn: TurnState, observation: Observation) -> Next[Self]:
        """Add the observation to the history, and let the model plan again."""
        turn.history.append(Message("tool", observation.text))
        return Next.do_async(self.plan, turn)

    async def respond(self, turn: TurnState, text: str, outcome: Outcome) -> Next[Self]:
        """Add the answer to the history and end the turn with it."""
        turn.history.append(Message("assistant", text))
        return Next.done(TurnResult(text, outcome, turn.calls))


@attrs.frozen
class Ask(hybrid.Request[TurnResult]):
    """Ask a conversation a question; the answer is the turn's `TurnResult`."""

    text: str


@attrs.frozen
class History(hybrid.Request[tuple[Message, ...]]):
    """Ask a conversation for its history so far."""


class Conversation(Agent):
    """One session: an actor that keeps the history and runs a `Turn` for each question.

    Questions are answered one at a time, in the order they arrive: while a
    turn runs, the conversation's mailbox waits (hybrid reads no message while
    a handler runs), so two questions of one session never interleave, while
    other sessions, other actors, go on.

    The loop runs as a separate agent, awaited inside the handler, rather
    than as states of the conversation itself: a request handler answers by
    returning, so whatever computes the answer must finish before it returns.
    A nested ``await Turn(...).run()`` does, and its states still get hybrid's
    timeouts, retries and fallbacks, and are seen by instruments.

    When the model fails, the conversation crashes on purpose ("let it
    crash"): its history now ends with a question it could not answer, so it
    fails, and its supervisor starts a fresh conversation behind the same
    address. The caller of that `Ask` gets the model's error. What the
    conversation held (history, budget) is lost in the restart: keep what
    must survive elsewhere.
    """

    def __init__(self, model: Model, tools: Tools, *, budget: int) -> None:
        self.model = model
        self.tools = tools
        self.history: list[Message] = []
        self.budget = Budget(budget)
        self.turns = 0

    @hybrid.on_request
    async def ask(self, request: Ask) -> TurnResult:
        self.turns += 1
        self.history.append(Message("user", request.text))
        state = TurnState(self.ctx.address.name, self.turns, request.text, self.history, self.budget)
        try:
            return await Turn(self.model, self.tools, state).run()
        except Exception as error:
            # A request handler's error goes to its caller and the actor goes on;
            # to be restarted instead, schedule the failure, then raise to the caller.
            self.ctx.do_next(Next.fail(error))
            raise

    @hybrid.on_request
    async def get_history(self, request: History) -> tuple[Message, ...]:
        return tuple(self.history)


@attrs.frozen
class OpenSession(hybrid.Request[hybrid.Address[Conversation]]):
    """Ask an `Assistant` for the conversation of `session`, started on first use."""

    session: str


class Assistant(hybrid.Supervisor):
    """Owns one `Conversation` per session id, and restarts one that crashes.

    It routes by handing out addresses: `OpenSession` answers with the
    session's conversation (started on first use, named
    ``"{assistant}/{session}"``), and the caller asks it directly. An address
    survives restarts, so a caller may keep it. (Relaying each `Ask` through
    the supervisor instead would make every session wait for the others: a
    request handler answers by returning, so it would have to await each
    turn while its mailbox waits.)

    Conversations are `Restart.TRANSIENT` children: restarted when they fail,
    not when they end normally. More than `max_restarts` crashes within
    `restart_period` seconds fail the assistant itself
    (`hybrid.RestartIntensityExceeded`).
    """

    max_restarts = 3
    restart_period = 60.0

    def __init__(self, model: Model, tools: Tools, *, budget: int = 8) -> None:
        self.model = model
        self.tools = tools
        self.budget = budget
        self.sessions: dict[str, hybrid.Address[Conversation]] = {}

    @hybrid.on_request
    async def open_session(self, request: OpenSession) -> hybrid.Address[Conversation]:
        conversation = self.sessions.get(request.session)
        if conversation is None or not conversation.is_alive:
            factory = functools.partial(Conversation, self.model, self.tools, budget=self.budget)
            conversation = self.ctx.spawn(factory, name=request.session, restart=hybrid.Restart.TRANSIENT)
            self.sessions[request.session] = conversation
        return conversation


async def ask(assistant: hybrid.Address[Assistant], session: str, text: str) -> TurnResult:
    """Ask `text` in `session`: find the session's conversation, then ask it.

    Raises:
        Exception: whatever the model raised, when it crashed the conversation
            (the next question goes to the restarted one).
    """
    conversation = await assistant.request(OpenSession(session))
    return await conversation.request(Ask(text))
