"""hybrid.diagrams.StateDiagrams: Mermaid state diagrams of what agents actually did."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
import hybrid.diagrams
from hybrid import Agent, Next
from tests.messages import Ping
from tests.test_examples import load

DOCS = Path(__file__).parent.parent / "docs"


class Machine(Agent[int]):
    """start -> (poll x3) -> wait in actor mode -> a handler moves on -> end."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.poll, 0)

    async def poll(self, n: int) -> Next[Self]:
        if n < 3:
            return Next.do_async(self.poll, n + 1)
        return Next.events()

    @hybrid.on_event
    async def go(self, event: Ping) -> None:
        self.ctx.do_next(Next.do_sync(self.end, event.n))

    def end(self, n: int) -> Next[Self]:  # a reserved word in Mermaid
        return Next.perform(Finish(n))


@attrs.frozen
class Finish:
    n: int

    async def perform(self, agent: Agent[Any]) -> Next[Any]:
        return Next.done(self.n)


async def test_a_run_draws_its_states_and_ending() -> None:
    diagrams = hybrid.diagrams.StateDiagrams()
    hybrid.add_instrument(diagrams)
    async with trio.open_nursery() as nursery:
        machine = hybrid.spawn(nursery, Machine())
        machine.send(Ping(7))
        assert await machine.join() == 7
    assert diagrams.classes() == ["Machine"]
    assert diagrams.mermaid(Machine) == (
        "stateDiagram-v2\n"
        "    [*] --> poll\n"
        "    poll --> poll\n"
        "    poll --> events\n"
        "    events --> end_\n"
        "    end_ --> Finish\n"
        "    Finish --> [*]: done"
    )
    assert diagrams.edges("Machine")[("poll", "poll", "")] == 3
    assert diagrams.as_dict() == {"Machine": diagrams.mermaid("Machine")}
    assert diagrams._last == {}  # nothing is kept of the agents that ended


async def test_endings_are_labelled_by_how_the_agent_ended(autojump_clock: trio.testing.MockClock) -> None:
    class Sleeper(Agent):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.nap)

        async def nap(self) -> Next[Self]:
            await trio.sleep(10)
            raise ValueError("woke up badly")

    diagrams = hybrid.diagrams.StateDiagrams()
    hybrid.add_instrument(diagrams)
    async with trio.open_nursery() as nursery:
        interrupted = hybrid.spawn(nursery, Sleeper())
        early = hybrid.spawn(nursery, Sleeper())
        early.interrupt()  # before its first state: it never enters one
        await trio.sleep(1)
        interrupted.interrupt()
        interrupted.interrupt()  # cut the nap short
        with pytest.raises(ValueError, match="woke up badly"):
            await Sleeper().run()
        cancelled = hybrid.spawn(nursery, Sleeper())
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert cancelled.statistics().reason == hybrid.StopReason(hybrid.StopKind.CANCELLED)
    assert set(diagrams.edges(Sleeper)) == {
        ("[*]", "[*]", "interrupted"),
        ("[*]", "nap", ""),
        ("nap", "[*]", "interrupted"),
        ("nap", "[*]", "failed"),
        ("nap", "[*]", "cancelled"),
    }


async def test_an_agent_started_before_registration_draws_from_its_next_transition() -> None:
    diagrams = hybrid.diagrams.StateDiagrams()
    async with trio.open_nursery() as nursery:
        machine = hybrid.spawn(nursery, Machine())
        await trio.testing.wait_all_tasks_blocked()  # in actor mode, unrecorded
        hybrid.add_instrument(diagrams)
        machine.send(Ping(1))
        await machine.join()
    assert list(diagrams.edges(Machine)) == [("end", "Finish", ""), ("Finish", "[*]", "done")]


def test_state_names_label_states_only() -> None:
    machine = Machine()
    assert Next.do_async(machine.poll, 1).state_name == "poll"
    assert Next.do_sync(machine.end, 1).state_name == "end"
    assert Next.perform(Finish(1)).state_name == "Finish"
    assert [n.state_name for n in (Next.events(), Next.done(), Next.stop(), Next.interrupt())] == [None] * 4
    assert Next.do_async(functools.partial(functools.partial(machine.poll), 1)).state_name == "poll"

    class Callable:
        async def __call__(self) -> Next[Any]:
            return Next.done()

    assert Next.do_async(Callable()).state_name == "Callable"


def test_unknown_classes_are_named_in_the_error() -> None:
    diagrams = hybrid.diagrams.StateDiagrams()
    with pytest.raises(KeyError, match=r"no transition of Machine was recorded \(known: none\)"):
        diagrams.mermaid(Machine)


def test_node_names_are_made_safe_for_mermaid() -> None:
    node = hybrid.diagrams._node
    assert [node(name) for name in ["poll", "state", "class", "9lives", "a-b", ""]] == [
        "poll",
        "state_",
        "class_",
        "9lives_",
        "a_b",
        "_",
    ]


def mermaid_blocks(page: Path) -> list[str]:
    return [block.strip() for block in re.findall(r"```mermaid\n(.*?)```", page.read_text(), re.DOTALL)]


async def test_the_docs_show_the_diagrams_the_examples_draw(autojump_clock: trio.testing.MockClock) -> None:
    """docs/guides/diagrams.md holds, verbatim, the diagram each example's agents draw when run."""
    diagrams = hybrid.diagrams.StateDiagrams()
    hybrid.add_instrument(diagrams)
    await load("fsm").main()
    await load("monitor").main(polls=5, interval=0)
    await load("retry_download").main()
    await load("server_client").main()
    drawn: dict[str, Any] = diagrams.as_dict()
    shown = mermaid_blocks(DOCS / "guides" / "diagrams.md")
    for name in ["WordCount", "Monitor", "Download", "Summer"]:
        assert drawn[name] in shown, f"docs/guides/diagrams.md lacks the diagram of {name}:\n{drawn[name]}"
