"""The demo: three sessions ask an `Assistant` questions at once; then the answers, the trace and a summary.

Everything is scripted, so every run prints the same thing:

- alice's calculator runs in a worker thread; her search is slow the first
  time (a cold cache), hits its 0.25 s timeout, and succeeds on the retry;
  her last question shows that her history was kept;
- bob's weather tool always fails: after its retry, the model reads the
  error and answers anyway; his second question needs more tool calls than
  his conversation's budget of 3 allows;
- carol's model crashes on her first question: the supervisor restarts her
  conversation (with an empty history), and her next question is answered.

    python -m examples.agent_framework
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence

import attrs
import trio

import hybrid

from .framework import Assistant, ask
from .model import Decision, FinalAnswer, Message, ModelError, ScriptedModel, Step, ToolCall
from .tools import Tools
from .trace import Tracer

DOCS = {"nursery": "a nursery is where trio tasks live; when its block ends, its tasks have ended."}

OPERATORS: Mapping[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def calculator(expression: str) -> str:
    """``"17 * 23"`` -> ``"391"``: a plain ``def`` tool, so it runs in a worker thread."""
    left, symbol, right = expression.split()
    return str(OPERATORS[symbol](int(left), int(right)))


class SearchIndex:
    """A search backend with a cold cache: a query's first lookup is slow, later ones are fast.

    The first lookup takes `cold` seconds (longer than the tool's timeout: the
    try is cut); it warms the cache, so the retry answers in `warm` seconds.
    """

    def __init__(self, *, cold: float = 5.0, warm: float = 0.01) -> None:
        self.cold = cold
        self.warm = warm
        self.cached: set[str] = set()

    async def search(self, query: str) -> str:
        if query in self.cached:
            await trio.sleep(self.warm)
        else:
            self.cached.add(query)
            await trio.sleep(self.cold)
        return DOCS.get(query, "no results")


async def weather(city: str) -> str:
    """A tool whose service is always down."""
    await trio.sleep(0.01)
    raise ConnectionError(f"the weather service for {city} is unavailable")


def make_tools(index: SearchIndex) -> Tools:
    """The demo's tools, each with its timeout and retry policy."""
    tools = Tools()
    tools.add(calculator, timeout=1.0)  # a bad expression will not get better: no retry
    tools.add(
        index.search,
        timeout=0.25,
        retry=hybrid.RetryPolicy(attempts=3, initial=0.05, retry_on=(trio.TooSlowError, ConnectionError)),
    )
    tools.add(weather, timeout=1.0, retry=hybrid.RetryPolicy(attempts=2, initial=0.02, retry_on=ConnectionError))
    return tools


def recall(history: Sequence[Message]) -> Decision:
    """A scripted answer that reads the history: the questions asked so far."""
    asked = [message.text for message in history if message.role == "user"]
    questions = "1 question" if len(asked) == 1 else f"{len(asked)} questions"
    return FinalAnswer(f"In this conversation you have asked {questions}: " + " / ".join(asked))


SCRIPT: Mapping[str, Sequence[Step]] = {
    "What is 17 * 23?": [ToolCall("calculator", ("17 * 23",)), FinalAnswer("17 * 23 = {0}.")],
    "What is a nursery?": [ToolCall("search", ("nursery",)), FinalAnswer("From the docs: {0}")],
    "What have I asked so far?": [recall],
    "Do I need an umbrella in Paris?": [
        ToolCall("weather", ("Paris",)),
        FinalAnswer("I could not check ({0}); take an umbrella to be safe."),
    ],
    "What do 12, 30, 7 and 15 add up to?": [
        ToolCall("calculator", ("12 + 30",)),
        ToolCall("calculator", ("42 + 7",)),
        ToolCall("calculator", ("49 + 15",)),
        FinalAnswer("They add up to {2}."),
    ],
    "Tell me a joke.": [ModelError("the model server went away")],
}
"""What the scripted model decides, question by question."""

SESSIONS: Mapping[str, Sequence[str]] = {
    "alice": ["What is 17 * 23?", "What is a nursery?", "What have I asked so far?"],
    "bob": ["Do I need an umbrella in Paris?", "What do 12, 30, 7 and 15 add up to?"],
    "carol": ["Tell me a joke.", "What have I asked so far?"],
}
"""Who asks what, in order; the sessions ask at the same time."""


@attrs.frozen
class Demo:
    """What the demo produced: each session's questions and answers, and the trace."""

    answers: dict[str, list[tuple[str, str]]]
    tracer: Tracer


async def chat(
    assistant: hybrid.Address[Assistant], session: str, questions: Sequence[str], answers: list[tuple[str, str]]
) -> None:
    """One user: asks the questions in order, each after the previous answer."""
    for question in questions:
        try:
            result = await ask(assistant, session, question)
        except ModelError as error:
            answers.append((question, f"(no answer: the model failed with {error!r}; the conversation was restarted)"))
        else:
            answers.append((question, result.answer))


async def main(*, latency: float = 0.01) -> Demo:
    """Run the sessions against one assistant, then print the answers, the trace and the summary.

    Args:
        latency: seconds each decision of the scripted model takes.
    """
    tracer = Tracer()
    hybrid.add_instrument(tracer)
    answers: dict[str, list[tuple[str, str]]] = {session: [] for session in SESSIONS}
    try:
        async with trio.open_nursery() as nursery:
            model = ScriptedModel(SCRIPT, latency=latency)
            assistant = hybrid.spawn(nursery, Assistant(model, make_tools(SearchIndex()), budget=3), name="assistant")
            async with trio.open_nursery() as users:
                for session, questions in SESSIONS.items():
                    users.start_soon(chat, assistant, session, questions, answers[session])
            assistant.interrupt()  # stops the conversations, then itself
    finally:
        hybrid.remove_instrument(tracer)
    print("answers")
    for session, exchanges in answers.items():
        print(f"  {session}")
        for question, answer in exchanges:
            print(f"    Q: {question}")
            print(f"    A: {answer}")
    print("trace")
    for line in tracer.format().splitlines():
        print(f"  {line}")
    print(f"summary: {tracer.summary()}")
    return Demo(answers, tracer)
