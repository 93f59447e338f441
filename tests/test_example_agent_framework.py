"""examples/agent_framework: the demo end to end, and each behaviour of the framework under simulated time."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

import hybrid
from examples.agent_framework import (
    Ask,
    Assistant,
    Budget,
    FinalAnswer,
    History,
    Message,
    ModelError,
    Observation,
    OpenSession,
    Outcome,
    ScriptedModel,
    Step,
    Summary,
    ToolCall,
    Tools,
    Tracer,
    Turn,
    TurnResult,
    TurnState,
    ask,
    demo,
)

ROOT = Path(__file__).parent.parent

DEMO_OUTPUT = [
    "answers",
    "  alice",
    "    Q: What is 17 * 23?",
    "    A: 17 * 23 = 391.",
    "    Q: What is a nursery?",
    "    A: From the docs: a nursery is where trio tasks live; when its block ends, its tasks have ended.",
    "    Q: What have I asked so far?",
    "    A: In this conversation you have asked 3 questions: "
    "What is 17 * 23? / What is a nursery? / What have I asked so far?",
    "  bob",
    "    Q: Do I need an umbrella in Paris?",
    "    A: I could not check (error: ConnectionError: the weather service for Paris is unavailable); "
    "take an umbrella to be safe.",
    "    Q: What do 12, 30, 7 and 15 add up to?",
    "    A: I stopped before finishing: this conversation has used its budget of 3 tool calls "
    "(the next one would have been calculator('49 + 15')).",
    "  carol",
    "    Q: Tell me a joke.",
    "    A: (no answer: the model failed with ModelError('the model server went away'); "
    "the conversation was restarted)",
    "    Q: What have I asked so far?",
    "    A: In this conversation you have asked 1 question: What have I asked so far?",
    "trace",
    "  assistant/alice",
    "    started",
    "    turn 1  plan -> act calculator('17 * 23') in a thread -> observe -> plan -> respond",
    "    turn 2  plan -> act search('nursery') -> observe (2 tries, 1 timed out) -> plan -> respond",
    "    turn 3  plan -> respond",
    "    ended: interrupted",
    "  assistant/bob",
    "    started",
    "    turn 1  plan -> act weather('Paris') -> observe (failed, 2 tries) -> plan -> respond",
    "    turn 2  plan -> act calculator('12 + 30') in a thread -> observe -> plan -> "
    "act calculator('42 + 7') in a thread -> observe -> plan -> respond (out of budget)",
    "    ended: interrupted",
    "  assistant/carol",
    "    started",
    "    turn 1  plan -> failed: ModelError('the model server went away')",
    "    ended: failed: ModelError('the model server went away')",
    "    restarted by assistant",
    "    started",
    "    turn 1  plan -> respond",
    "    ended: interrupted",
    "summary: 7 turns, 5 tool calls, 2 retries, 1 timeout, 1 failed call, 1 turn out of budget, 1 crash, 1 restart",
]


def first_turn(question: str, *, budget: int = 10) -> TurnState:
    """The state of a conversation's first turn, for running a `Turn` alone."""
    return TurnState("tests/session", 1, question, [Message("user", question)], Budget(budget))


def scripted(question: str, *steps: Step) -> ScriptedModel:
    return ScriptedModel({question: steps}, latency=1)


def traced() -> Tracer:
    tracer = Tracer()
    hybrid.add_instrument(tracer)
    return tracer


# -- the demo --------------------------------------------------------------------


async def test_the_demo_prints_the_answers_the_trace_and_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    ran = await demo.main()
    assert capsys.readouterr().out.splitlines() == DEMO_OUTPUT
    assert ran.answers["alice"][0] == ("What is 17 * 23?", "17 * 23 = 391.")
    assert ran.tracer.summary() == Summary(
        turns=7, tool_calls=5, retries=2, timeouts=1, failed_calls=1, out_of_budget=1, crashes=1, restarts=1
    )


@pytest.mark.parametrize(
    "command", [["-m", "examples.agent_framework"], ["examples/agent_framework"]], ids=["-m", "folder"]
)
def test_the_demo_runs_in_a_fresh_interpreter_as_a_module_and_as_a_folder(command: list[str]) -> None:
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == DEMO_OUTPUT
    assert done.stderr == ""  # the supervisor's crash report is silenced: the trace shows the crash


# -- tools: timeout, retry, fallback ---------------------------------------------


async def test_a_slow_tool_is_cut_by_its_timeout_then_answers_on_the_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    delays = [10.0, 1.0]  # the first try outlasts the 5 s timeout; the second does not

    async def lookup(key: str) -> str:
        await trio.sleep(delays.pop(0))
        return key.upper()

    tools = Tools()
    tools.add(lookup, timeout=5, retry=hybrid.RetryPolicy(attempts=3, initial=2))
    model = scripted("q", ToolCall("lookup", ("abc",)), FinalAnswer("got {0}"))
    tracer = traced()
    state = first_turn("q")
    start = trio.current_time()
    result = await Turn(model, tools, state).run()
    # model 1 s, try cut at 5 s, backoff 2 s, second try 1 s, model 1 s
    assert trio.current_time() - start == pytest.approx(1 + 5 + 2 + 1 + 1)
    assert result == TurnResult("got ABC", Outcome.ANSWERED, tool_calls=1)
    assert state.history == [
        Message("user", "q"),
        Message("assistant", "calls lookup('abc')"),
        Message("tool", "ABC"),
        Message("assistant", "got ABC"),
    ]
    assert tracer.turns("tests/session")[0].observations == [Observation("lookup", "ABC", True, tries=2, timeouts=1)]


async def test_a_tool_that_keeps_failing_becomes_an_error_the_model_reads_and_answers_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries = 0

    async def weather(city: str) -> str:
        nonlocal tries
        tries += 1
        raise ConnectionError(f"no weather for {city}")

    tools = Tools()
    tools.add(weather, retry=hybrid.RetryPolicy(attempts=3, initial=1))
    model = scripted("rain?", ToolCall("weather", ("Oslo",)), FinalAnswer("Could not check: {0}"))
    tracer = traced()
    result = await Turn(model, tools, first_turn("rain?")).run()
    assert tries == 3
    assert result.answer == "Could not check: error: ConnectionError: no weather for Oslo"
    assert result.outcome is Outcome.ANSWERED
    [observation] = tracer.turns()[0].observations
    assert (observation.ok, observation.tries, observation.retries, observation.timeouts) == (False, 3, 2, 0)


async def test_an_error_the_retry_policy_does_not_name_goes_straight_to_the_model(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries = 0

    async def parse(text: str) -> int:
        nonlocal tries
        tries += 1
        return int(text)

    tools = Tools()
    tools.add(parse, retry=hybrid.RetryPolicy(attempts=5, initial=1, retry_on=ConnectionError))
    model = scripted("n?", ToolCall("parse", ("x",)), FinalAnswer("{0}"))
    result = await Turn(model, tools, first_turn("n?")).run()
    assert tries == 1
    assert result.answer == "error: ValueError: invalid literal for int() with base 10: 'x'"


async def test_a_tool_that_times_out_on_every_try_is_observed_as_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hang() -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    tools = Tools()
    tools.add(hang, timeout=3, retry=hybrid.RetryPolicy(attempts=2, initial=1))
    tracer = traced()
    result = await Turn(scripted("q", ToolCall("hang"), FinalAnswer("{0}")), tools, first_turn("q")).run()
    assert result.answer == "error: hang timed out after 3s"
    assert tracer.turns()[0].observations == [Observation("hang", result.answer, False, tries=2, timeouts=2)]


async def test_a_tool_the_registry_does_not_know_is_an_observation_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    model = scripted("q", ToolCall("teleport", ("Mars",)), FinalAnswer("{0}"))
    result = await Turn(model, Tools(), first_turn("q")).run()
    assert result == TurnResult("error: there is no tool named 'teleport'", Outcome.ANSWERED, tool_calls=1)


async def test_a_plain_def_tool_runs_in_a_worker_thread() -> None:
    threads: list[threading.Thread] = []

    def where() -> str:
        threads.append(threading.current_thread())
        return "a worker thread"

    tools = Tools()
    tools.add(where)
    tracer = traced()
    result = await Turn(ScriptedModel({"q": [ToolCall("where"), FinalAnswer("{0}")]}), tools, first_turn("q")).run()
    assert result.answer == "a worker thread"
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert tracer.lines("tests/session") == ["turn 1  plan -> act where() in a thread -> observe -> plan -> respond"]


def test_the_registry_refuses_a_second_tool_of_the_same_name_and_a_bad_timeout() -> None:
    tools = Tools()

    @tools.tool(name="add", timeout=2)
    def plus(a: int, b: int) -> int:
        return a + b

    assert plus(1, 2) == 3  # the decorator returns the function unchanged
    tool = tools.get("add")
    assert tool is not None and (tool.name, tool.timeout, tool.retry, tool.is_async) == ("add", 2, None, False)
    with pytest.raises(ValueError, match="a tool named 'add' is registered already"):
        tools.add(plus, name="add")
    with pytest.raises(ValueError, match="positive number of seconds"):
        tools.add(plus, timeout=0)
    assert [each.name for each in tools] == ["add"]


# -- the budget ------------------------------------------------------------------


async def test_a_turn_that_wants_more_tool_calls_than_the_budget_ends_with_a_clear_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counted: list[int] = []

    async def count(n: int) -> int:
        counted.append(n)
        return n

    tools = Tools()
    tools.add(count)
    model = scripted("q", *(ToolCall("count", (n,)) for n in range(5)), FinalAnswer("done"))
    state = first_turn("q", budget=2)
    result = await Turn(model, tools, state).run()
    assert counted == [0, 1]
    assert result == TurnResult(
        "I stopped before finishing: this conversation has used its budget of 2 tool calls "
        "(the next one would have been count(2)).",
        Outcome.OUT_OF_BUDGET,
        tool_calls=2,
    )
    assert state.budget == Budget(limit=2, used=2)
    assert state.history[-1] == Message("assistant", result.answer)


async def test_the_budget_belongs_to_the_conversation_not_to_one_turn(autojump_clock: trio.testing.MockClock) -> None:
    async def echo(text: str) -> str:
        return text

    tools = Tools()
    tools.add(echo)
    model = ScriptedModel(
        {
            "one": [ToolCall("echo", ("1",)), FinalAnswer("{0}")],
            "two": [ToolCall("echo", ("2",)), FinalAnswer("{0}")],
            "hi": [FinalAnswer("hello")],
        }
    )
    async with trio.open_nursery() as nursery:
        assistant = hybrid.spawn(nursery, Assistant(model, tools, budget=1), name="assistant")
        assert await ask(assistant, "alice", "one") == TurnResult("1", Outcome.ANSWERED, 1)
        assert (await ask(assistant, "alice", "two")).outcome is Outcome.OUT_OF_BUDGET
        assert (await ask(assistant, "alice", "hi")).answer == "hello"  # no tool needed: still answered
        assert (await ask(assistant, "bob", "two")).answer == "2"  # another session, its own budget
        assistant.interrupt()


# -- conversations under a supervisor ---------------------------------------------


async def test_a_conversation_whose_model_fails_restarts_empty_while_another_keeps_its_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    model = ScriptedModel({"hello": [FinalAnswer("hi")], "joke?": [ModelError("the model went away")]})
    tracer = traced()
    async with trio.open_nursery() as nursery:
        assistant = hybrid.spawn(nursery, Assistant(model, Tools()), name="assistant")
        alice = await assistant.request(OpenSession("alice"))
        carol = await assistant.request(OpenSession("carol"))
        assert (await alice.request(Ask("hello"))).answer == "hi"
        assert (await carol.request(Ask("hello"))).answer == "hi"
        with pytest.raises(ModelError, match="the model went away"):
            await carol.request(Ask("joke?"))
        assert await carol.request(History()) == ()  # a fresh conversation, behind the same address
        assert await assistant.request(OpenSession("carol")) == carol
        assert await alice.request(History()) == (Message("user", "hello"), Message("assistant", "hi"))
        assert (await carol.request(Ask("hello"))).answer == "hi"
        assistant.interrupt()
    assert tracer.lines("assistant/carol") == [
        "started",
        "turn 1  plan -> respond",
        "turn 2  plan -> failed: ModelError('the model went away')",
        "ended: failed: ModelError('the model went away')",
        "restarted by assistant",
        "started",
        "turn 1  plan -> respond",
        "ended: interrupted",
    ]
    assert tracer.lines("assistant/alice") == ["started", "turn 1  plan -> respond", "ended: interrupted"]
    assert (tracer.summary().crashes, tracer.summary().restarts) == (1, 1)


async def test_sessions_are_answered_concurrently_and_one_session_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def work(seconds: int) -> int:
        await trio.sleep(seconds)
        return seconds

    tools = Tools()
    tools.add(work, timeout=100)
    model = ScriptedModel({f"{n}s": [ToolCall("work", (n,)), FinalAnswer("{0}")] for n in (10, 20)})
    finished: list[tuple[str, str, float]] = []

    async def user(assistant: hybrid.Address[Assistant], session: str, questions: Sequence[str]) -> None:
        for question in questions:
            answer = (await ask(assistant, session, question)).answer
            finished.append((session, answer, trio.current_time() - start))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        assistant = hybrid.spawn(nursery, Assistant(model, tools), name="assistant")
        async with trio.open_nursery() as users:
            users.start_soon(user, assistant, "alice", ["20s", "10s"])
            users.start_soon(user, assistant, "bob", ["10s"])
        assistant.interrupt()
    assert finished == [("bob", "10", 10), ("alice", "20", 20), ("alice", "10", 30)]


# -- the model stand-in ---------------------------------------------------------


async def test_the_scripted_model_picks_its_step_from_the_history_and_refuses_to_improvise() -> None:
    model = ScriptedModel({"q": [ToolCall("a"), FinalAnswer("{0} and then?")]})
    asked = [Message("user", "q")]
    assert await model.complete(asked) == ToolCall("a")
    observed = [*asked, Message("assistant", "calls a()"), Message("tool", "A")]
    assert await model.complete(observed) == FinalAnswer("A and then?")
    with pytest.raises(LookupError, match="no step 1 scripted for 'other'"):
        await model.complete([Message("user", "other")])
