"""AI-agent state-machine peers: LangGraph, pydantic-graph and autogen-core against hybrid.

Three operations, each measured on hybrid and on every importable peer,
alternately in the same process (hybrid, langgraph, pydantic-graph,
autogen-core, hybrid, ...), each sample in a fresh event loop (``trio.run`` for
hybrid, ``asyncio.run`` for the peers: they run on asyncio, and are measured
as their users run them, with their defaults):

- **run**: a 3-step state machine run to its end, the input 0 and the output
  ``0 + 1 + 2 + 3 = 6`` (hybrid: W7, ``await ThreeStates().run()``);

  - LangGraph: a ``StateGraph`` of three async nodes, START -> first -> second
    -> third -> END, compiled once; a run is one ``await graph.ainvoke({"x": 0})``;
  - pydantic-graph: a ``GraphBuilder`` graph of three ``@g.step`` functions,
    start -> first -> second -> third -> end, built once; a run is one
    ``await graph.run(inputs=0)``;
  - autogen-core: three ``RoutedAgent`` types on a ``SingleThreadedAgentRuntime``
    wired as its "sequential workflow" (each subscribed to its own topic, each
    handler publishing the next step to the next agent's topic; the last one
    resolves the caller's future); a run is one ``publish_message`` to the first
    topic and the ``await`` of that future.

- **message**: one event to a stateful agent that counts it (hybrid: W1,
  ``address.send``, timed from the first send until the last is handled);

  - autogen-core: ``await runtime.publish_message(tick, topic)`` to a subscribed
    ``RoutedAgent`` whose handler counts (it returns once the message is queued;
    timed, as hybrid's, until the handler has seen the last one);
  - LangGraph and pydantic-graph have no fire-and-forget message: a graph is
    invoked and awaited. The closest equivalent of an event to an agent that
    keeps state is one awaited run of a 1-node graph that updates state kept
    across runs: for LangGraph, the way a chat agent keeps its conversation (a
    checkpointer, ``InMemorySaver``, and one ``thread_id``; the node returns
    ``{"count": 1}`` to an ``operator.add`` reducer); for pydantic-graph, a
    state object passed to every run (``graph.run(state=state, inputs=seq)``,
    the step does ``ctx.state.count += 1``). Each message is thus a full
    round trip: compare it with the *request* column too.

- **request**: a request answered with a value, ``value + 1``, awaited by the
  caller (hybrid: W2, ``await address.request(Ask(v))``);

  - autogen-core: ``await runtime.send_message(Ask(v), agent_id)`` to a
    ``RoutedAgent`` handler returning ``value + 1``;
  - LangGraph: ``await graph.ainvoke({"value": v})`` on a 1-node graph whose
    node returns ``{"answer": v + 1}`` (no checkpointer: a stateless call);
  - pydantic-graph: ``await graph.run(inputs=v)`` on a 1-step graph returning
    ``v + 1``.

The peers are from 10 to a few hundred times slower per operation than
hybrid, so they run fewer operations per sample (`PEER_OPS`) than hybrid
(`HYBRID_OPS`); the cost is reported per operation (µs), so the counts only
set how long a sample lasts. Set-up (building and compiling the graphs,
registering the agents, starting the runtime) is outside the timed span.

Reported: µs per operation for each library, and *peer cost / hybrid cost*
(above 1, hybrid is ahead by that factor). A peer that is not importable is
skipped with a note.
"""

# No `from __future__ import annotations` here: autogen-core and pydantic-graph read
# the annotations of handlers defined inside functions (the peers are imported lazily),
# which only works when the annotations are objects rather than strings.
#
# The peers are optional, and `mypy --strict` also runs where they are not installed (CI
# installs the `dev` extra only): each import of a peer, decorator from one and subclass of
# one of its classes carries a `type: ignore[<code>, unused-ignore]`, which silences what
# their absence makes mypy report, and is a no-op when they are there.

import asyncio
import importlib.metadata
import importlib.util
import operator
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Annotated, Any, NotRequired, Protocol, TypedDict

from . import peers as tell_ask
from . import workloads as w
from ._harness import Sample, alternate, check, median, ratio, scaled

PEER_OPS = 500
"""Operations per sample of a peer, at ``--size 1`` (each sample lasts about half a second)."""

HYBRID_OPS = 5_000
"""Operations per sample of hybrid, at ``--size 1``."""

PEERS = ("langgraph", "pydantic-graph", "autogen-core")
"""Peer name (its distribution on PyPI) -> the module imported to use it, below."""

MODULES = {"langgraph": "langgraph.graph", "pydantic-graph": "pydantic_graph", "autogen-core": "autogen_core"}

KINDS = ("run", "message", "request")

DESIGN: dict[str, dict[str, str]] = {
    "run": {
        "hybrid": "await ThreeStates().run() (W7)",
        "langgraph": "await graph.ainvoke({'x': 0}): StateGraph START->first->second->third->END",
        "pydantic-graph": "await graph.run(inputs=0): GraphBuilder steps start->first->second->third->end",
        "autogen-core": "publish_message to 'first'; three RoutedAgents chained by topics; await the last one's future",
    },
    "message": {
        "hybrid": "address.send(tick), timed until the last is handled (W1)",
        "langgraph": "await graph.ainvoke({'seq': i}, thread config): 1 node, InMemorySaver, count reducer (awaited)",
        "pydantic-graph": "await graph.run(state=state, inputs=i): 1 step, ctx.state.count += 1 (awaited)",
        "autogen-core": "await runtime.publish_message(tick, topic), timed until the last is handled",
    },
    "request": {
        "hybrid": "await address.request(Ask(v)) (W2)",
        "langgraph": "await graph.ainvoke({'value': v}): 1 node returning {'answer': v + 1}",
        "pydantic-graph": "await graph.run(inputs=v): 1 step returning v + 1",
        "autogen-core": "await runtime.send_message(Ask(v), agent_id): RoutedAgent handler returning v + 1",
    },
}
"""What one operation is, for each library (also in the JSON results)."""


# -- hybrid ---------------------------------------------------------------------------------------


def hybrid_run(n: int) -> Sample:
    return w.hybrid_machine(n)


def hybrid_message(n: int) -> Sample:
    sample = tell_ask.hybrid_tell(w.make_ticks(n))
    check("hybrid messages handled", sample["handled"], n)
    return sample


def hybrid_request(n: int) -> Sample:
    sample = tell_ask.hybrid_ask(w.make_asks(n))
    check("hybrid answers", sample["total"], _expected_answers(n))
    return sample


def _expected_answers(n: int) -> int:
    return sum(v + 1 for v in range(n))


# -- LangGraph ------------------------------------------------------------------------------------


class ThreeState(TypedDict):
    x: int


class CountState(TypedDict, total=False):
    seq: int
    count: Annotated[int, operator.add]


class AnswerState(TypedDict):
    value: int
    answer: NotRequired[int]


async def _lg_first(state: ThreeState) -> dict[str, int]:
    return {"x": state["x"] + 1}


async def _lg_second(state: ThreeState) -> dict[str, int]:
    return {"x": state["x"] + 2}


async def _lg_third(state: ThreeState) -> dict[str, int]:
    return {"x": state["x"] + 3}


async def _lg_count(state: CountState) -> dict[str, int]:
    return {"count": 1}


async def _lg_answer(state: AnswerState) -> dict[str, int]:
    return {"answer": state["value"] + 1}


def langgraph_run(n: int) -> Sample:
    from langgraph.graph import END, START, StateGraph  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer

    builder = StateGraph(ThreeState)
    builder.add_node("first", _lg_first)
    builder.add_node("second", _lg_second)
    builder.add_node("third", _lg_third)
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", "third")
    builder.add_edge("third", END)
    graph = builder.compile()

    async def main() -> Sample:
        total = 0
        start = perf_counter()
        for _ in range(n):
            total += (await graph.ainvoke({"x": 0}))["x"]
        return {"seconds": perf_counter() - start, "total": total}

    return asyncio.run(main())


def langgraph_message(n: int) -> Sample:
    from langgraph.checkpoint.memory import InMemorySaver  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer
    from langgraph.graph import END, START, StateGraph  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    builder = StateGraph(CountState)
    builder.add_node("count", _lg_count)
    builder.add_edge(START, "count")
    builder.add_edge("count", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "counter"}}

    async def main() -> Sample:
        state: dict[str, Any] = {}
        start = perf_counter()
        for seq in range(n):
            state = await graph.ainvoke({"seq": seq}, config)
        return {"seconds": perf_counter() - start, "handled": state.get("count", 0)}

    return asyncio.run(main())


def langgraph_request(n: int) -> Sample:
    from langgraph.graph import END, START, StateGraph  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer

    builder = StateGraph(AnswerState)
    builder.add_node("answer", _lg_answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    graph = builder.compile()

    async def main() -> Sample:
        total = 0
        start = perf_counter()
        for value in range(n):
            total += (await graph.ainvoke({"value": value}))["answer"]
        return {"seconds": perf_counter() - start, "total": total}

    return asyncio.run(main())


# -- pydantic-graph -------------------------------------------------------------------------------


class Context(Protocol):
    """What the steps read of their context.

    pydantic-graph's own examples annotate it ``StepContext[State, Deps, Input]``; mypy
    cannot subscript that class (its type variables use ``infer_variance``).
    """

    @property
    def inputs(self) -> int: ...

    @property
    def state(self) -> Any: ...


@dataclass
class Tally:
    """The state a pydantic-graph run updates (passed to every run)."""

    count: int = 0


def pydantic_graph_run(n: int) -> Sample:
    from pydantic_graph import GraphBuilder  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer

    g = GraphBuilder(name="three_steps", input_type=int, output_type=int)

    @g.step  # type: ignore[untyped-decorator, unused-ignore]
    async def first(ctx: Context) -> int:
        return ctx.inputs + 1

    @g.step  # type: ignore[untyped-decorator, unused-ignore]
    async def second(ctx: Context) -> int:
        return ctx.inputs + 2

    @g.step  # type: ignore[untyped-decorator, unused-ignore]
    async def third(ctx: Context) -> int:
        return ctx.inputs + 3

    g.add(
        g.edge_from(g.start_node).to(first),
        g.edge_from(first).to(second),
        g.edge_from(second).to(third),
        g.edge_from(third).to(g.end_node),
    )
    graph = g.build()

    async def main() -> Sample:
        total = 0
        start = perf_counter()
        for _ in range(n):
            total += await graph.run(inputs=0)
        return {"seconds": perf_counter() - start, "total": total}

    return asyncio.run(main())


def pydantic_graph_message(n: int) -> Sample:
    from pydantic_graph import GraphBuilder  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer

    g = GraphBuilder(name="counter", state_type=Tally, input_type=int, output_type=int)

    @g.step  # type: ignore[untyped-decorator, unused-ignore]
    async def count(ctx: Context) -> int:
        state: Tally = ctx.state
        state.count += 1
        return state.count

    g.add(g.edge_from(g.start_node).to(count), g.edge_from(count).to(g.end_node))
    graph = g.build()
    tally = Tally()

    async def main() -> Sample:
        start = perf_counter()
        for seq in range(n):
            await graph.run(state=tally, inputs=seq)
        return {"seconds": perf_counter() - start, "handled": tally.count}

    return asyncio.run(main())


def pydantic_graph_request(n: int) -> Sample:
    from pydantic_graph import GraphBuilder  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer

    g = GraphBuilder(name="answer", input_type=int, output_type=int)

    @g.step  # type: ignore[untyped-decorator, unused-ignore]
    async def answer(ctx: Context) -> int:
        return ctx.inputs + 1

    g.add(g.edge_from(g.start_node).to(answer), g.edge_from(answer).to(g.end_node))
    graph = g.build()

    async def main() -> Sample:
        total = 0
        start = perf_counter()
        for value in range(n):
            total += await graph.run(inputs=value)
        return {"seconds": perf_counter() - start, "total": total}

    return asyncio.run(main())


# -- autogen-core ---------------------------------------------------------------------------------


@dataclass
class AgTick:
    """An event (autogen-core's messages are dataclasses, serializable by its runtime)."""

    seq: int


@dataclass
class AgAsk:
    """A request; the answer is ``value + 1``."""

    value: int


@dataclass
class AgStep:
    """One step of the 3-step workflow."""

    x: int


def _autogen_agents() -> tuple[type[Any], type[Any]]:
    """The two agent classes, built once autogen-core is imported."""
    from autogen_core import MessageContext, RoutedAgent, TopicId, message_handler  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - optional

    class Counter(RoutedAgent):  # type: ignore[misc, unused-ignore]
        """Counts AgTick events, sets `done` at `target`; answers AgAsk."""

        def __init__(self, target: int, done: asyncio.Event) -> None:
            super().__init__("counter")
            self.count = 0
            self.target = target
            self.done = done

        @message_handler  # type: ignore[untyped-decorator, unused-ignore]
        async def on_tick(self, message: AgTick, ctx: MessageContext) -> None:
            self.count += 1
            if self.count == self.target:
                self.done.set()

        @message_handler  # type: ignore[untyped-decorator, unused-ignore]
        async def on_ask(self, message: AgAsk, ctx: MessageContext) -> int:
            return message.value + 1

    class Step(RoutedAgent):  # type: ignore[misc, unused-ignore]
        """Adds `add`, publishes the result to `next_topic`, or hands it to `finish` at the end."""

        def __init__(self, add: int, next_topic: str | None, finish: Callable[[int], None]) -> None:
            super().__init__("step")
            self.add = add
            self.next_topic = next_topic
            self.finish = finish

        @message_handler  # type: ignore[untyped-decorator, unused-ignore]
        async def on_step(self, message: AgStep, ctx: MessageContext) -> None:
            x = message.x + self.add
            if self.next_topic is None:
                self.finish(x)
            else:
                await self.publish_message(AgStep(x), TopicId(self.next_topic, self.id.key))

    return Counter, Step


def autogen_run(n: int) -> Sample:
    from autogen_core import SingleThreadedAgentRuntime, TopicId, TypeSubscription  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - optional

    _, step = _autogen_agents()

    async def main() -> Sample:
        runtime = SingleThreadedAgentRuntime()
        waiting: list[asyncio.Future[int]] = []

        def finish(x: int) -> None:
            waiting.pop().set_result(x)

        chain = (("first", 1, "second"), ("second", 2, "third"), ("third", 3, None))
        for name, add, next_topic in chain:
            await step.register(runtime, name, lambda add=add, next_topic=next_topic: step(add, next_topic, finish))
            await runtime.add_subscription(TypeSubscription(topic_type=name, agent_type=name))
        runtime.start()
        loop = asyncio.get_running_loop()
        topic = TopicId("first", "default")
        total = 0
        start = perf_counter()
        for _ in range(n):
            future: asyncio.Future[int] = loop.create_future()
            waiting.append(future)
            await runtime.publish_message(AgStep(0), topic)
            total += await future
        seconds = perf_counter() - start
        await runtime.stop_when_idle()
        return {"seconds": seconds, "total": total}

    return asyncio.run(main())


def autogen_message(n: int) -> Sample:
    from autogen_core import SingleThreadedAgentRuntime, TopicId, TypeSubscription  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - optional

    counter, _ = _autogen_agents()

    async def main() -> Sample:
        runtime = SingleThreadedAgentRuntime()
        done = asyncio.Event()
        agents: list[Any] = []

        def make() -> Any:
            agents.append(counter(n, done))
            return agents[-1]

        await counter.register(runtime, "counter", make)
        await runtime.add_subscription(TypeSubscription(topic_type="ticks", agent_type="counter"))
        runtime.start()
        ticks = [AgTick(i) for i in range(n)]
        topic = TopicId("ticks", "default")
        publish = runtime.publish_message
        start = perf_counter()
        for tick in ticks:
            await publish(tick, topic)
        await done.wait()
        seconds = perf_counter() - start
        await runtime.stop_when_idle()
        return {"seconds": seconds, "handled": agents[0].count if agents else 0}

    return asyncio.run(main())


def autogen_request(n: int) -> Sample:
    from autogen_core import AgentId, SingleThreadedAgentRuntime  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - optional

    counter, _ = _autogen_agents()

    async def main() -> Sample:
        runtime = SingleThreadedAgentRuntime()
        await counter.register(runtime, "counter", lambda: counter(0, asyncio.Event()))
        runtime.start()
        agent = AgentId("counter", "default")
        send = runtime.send_message
        asks = [AgAsk(v) for v in range(n)]
        await send(AgAsk(0), agent)  # the agent is made on its first message: not part of the work
        total = 0
        start = perf_counter()
        for ask in asks:
            total += await send(ask, agent)
        seconds = perf_counter() - start
        await runtime.stop_when_idle()
        return {"seconds": seconds, "total": total}

    return asyncio.run(main())


# -- running them ---------------------------------------------------------------------------------

SIDES: dict[str, dict[str, Callable[[int], Sample]]] = {
    "hybrid": {"run": hybrid_run, "message": hybrid_message, "request": hybrid_request},
    "langgraph": {"run": langgraph_run, "message": langgraph_message, "request": langgraph_request},
    "pydantic-graph": {"run": pydantic_graph_run, "message": pydantic_graph_message, "request": pydantic_graph_request},
    "autogen-core": {"run": autogen_run, "message": autogen_message, "request": autogen_request},
}
"""Library -> operation kind -> ``sample(n)`` (each in its own event loop)."""


def available() -> dict[str, str | None]:
    """Peer name -> None if importable, else why it is skipped."""
    notes: dict[str, str | None] = {}
    for peer in PEERS:
        module = MODULES[peer]
        try:
            found = importlib.util.find_spec(module.split(".")[0]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            notes[peer] = (
                f"{peer} is not installed (pip install -e '.[bench]' from the repository, or pip install {peer})"
            )
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a peer's own warnings are not ours
                __import__(module)
        except Exception as error:
            notes[peer] = f"{peer} is installed but does not import: {error!r}"
        else:
            notes[peer] = None
    return notes


def version(peer: str) -> str | None:
    try:
        return importlib.metadata.version(peer)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_agent_peers(
    size: float, rounds: int, warmup: int, only: list[str] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Measure hybrid and every importable peer on each kind; the ``agents`` entry of the results."""
    peer_n = scaled(PEER_OPS, size)
    hybrid_n = scaled(HYBRID_OPS, size)
    notes = available()
    running = ["hybrid"] + [p for p in PEERS if notes[p] is None and (only is None or p in only)]

    def side(name: str, kind: str) -> Callable[[], Sample]:
        n = hybrid_n if name == "hybrid" else peer_n

        def run() -> Sample:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a peer's own warnings are not ours
                sample = SIDES[name][kind](n)
            if kind == "run":
                check(f"{name} run outputs", sample["total"], 6 * n)
            elif kind == "message":
                check(f"{name} messages handled", sample["handled"], n)
            else:
                check(f"{name} answers", sample["total"], _expected_answers(n))
            sample["us_per_op"] = sample["seconds"] / n * 1e6
            return sample

        return run

    medians: dict[str, dict[str, float]] = {name: {} for name in running}
    for kind in KINDS:
        if progress:
            print(f" {kind}", end="", flush=True, file=sys.stderr)
        samples = alternate({name: side(name, kind) for name in running}, rounds, warmup)
        for name in running:
            medians[name][kind] = median(samples[name], "us_per_op")
    results: dict[str, Any] = {
        "params": {"peer_ops": peer_n, "hybrid_ops": hybrid_n},
        "design": DESIGN,
        "ratio_def": "peer cost per operation / hybrid cost per operation (above 1: hybrid is ahead)",
        "hybrid": {f"{kind}_us": medians["hybrid"][kind] for kind in KINDS},
    }
    for peer in PEERS:
        if peer in running:
            entry: dict[str, Any] = {"measured": True, "version": version(peer)}
            for kind in KINDS:
                entry[f"{kind}_us"] = medians[peer][kind]
                entry[f"{kind}_ahead"] = ratio(medians[peer][kind], medians["hybrid"][kind])
            results[peer] = entry
        else:
            results[peer] = {"measured": False, "version": version(peer), "note": notes[peer] or "not selected"}
    return results
