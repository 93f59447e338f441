"""`hybrid.snapshot()`: the tree of the agents alive in the current trio run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._address import Address
from ._mailbox import CLOSED
from ._registry import current_names
from ._runtime import ENDED


@attrs.frozen
class AgentInfo:
    """One agent in a [`Snapshot`][hybrid.Snapshot].

    Attributes:
        name: its name (`Address.name`).
        agent_class: the qualified name of its class.
        phase: ``"starting"``, ``"state"``, ``"events"``, ``"hook"``,
            ``"finishing"``, or ``"restarting"`` while a supervisor restarts it.
        state: its current (or last) state, as text, or None.
        mailbox_depth: messages queued now.
        mailbox_capacity: the bound of its mailbox, or None if unbounded.
        messages_handled: messages taken from the mailbox by its current run.
        messages_dropped: messages its address dropped unhandled (all its runs).
        transitions: states its current run entered.
        restarts: how many times a supervisor restarted it (0 for the first run).
        children: the agents it started (a supervisor's children), in start order.
    """

    name: str
    agent_class: str
    phase: str
    state: str | None
    mailbox_depth: int
    mailbox_capacity: int | None
    messages_handled: int
    messages_dropped: int
    transitions: int
    restarts: int
    children: tuple[AgentInfo, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The agent and its children as plain dicts, lists and scalars (JSON-ready)."""
        return {
            "name": self.name,
            "class": self.agent_class,
            "phase": self.phase,
            "state": self.state,
            "mailbox_depth": self.mailbox_depth,
            "mailbox_capacity": self.mailbox_capacity,
            "messages_handled": self.messages_handled,
            "messages_dropped": self.messages_dropped,
            "transitions": self.transitions,
            "restarts": self.restarts,
            "children": [child.as_dict() for child in self.children],
        }


@attrs.frozen
class ClassCounters:
    """The totals of one agent class in a run, for metrics: they never go down.

    Attributes:
        agent_class: the qualified name of the class.
        phases: how many of its agents are alive now, by phase.
        mailbox_depth: messages queued now, summed over its live agents.
        messages_handled: messages handled since the run began, by every run of
            the class, live or ended.
        messages_dropped: messages dropped unhandled, likewise.
        transitions: states entered, likewise.
        failures: runs that ended failed.
        restarts: runs a supervisor started again behind the same address.
    """

    agent_class: str
    phases: Mapping[str, int] = attrs.field(hash=False)
    mailbox_depth: int
    messages_handled: int
    messages_dropped: int
    transitions: int
    failures: int
    restarts: int


@attrs.frozen
class Snapshot:
    """The agents alive in one trio run, as a tree: from [`hybrid.snapshot()`][hybrid.snapshot].

    `agents` holds the roots (agents started from plain trio code) in the
    order they were made; each one's `children` are the agents started by its
    code (a supervisor's children, in start order). ``str(snapshot)`` is an
    indented text tree, one line per agent; `as_dict()` is JSON-ready.

    Attributes:
        agents: the roots of the tree.
        counters: by agent class, the totals since the run began (ended
            agents included): what `hybrid.metrics` exports.
    """

    agents: tuple[AgentInfo, ...]
    counters: tuple[ClassCounters, ...] = ()

    def walk(self) -> list[AgentInfo]:
        """Every agent of the tree, each before its children."""
        found: list[AgentInfo] = []
        stack = list(reversed(self.agents))
        while stack:
            info = stack.pop()
            found.append(info)
            stack.extend(reversed(info.children))
        return found

    def as_dict(self) -> dict[str, Any]:
        """The tree as plain dicts, lists and scalars (JSON-ready)."""
        return {
            "agents": [info.as_dict() for info in self.agents],
            "counters": [attrs.asdict(counters) for counters in self.counters],
        }

    def __str__(self) -> str:
        lines: list[str] = []

        def add(info: AgentInfo, depth: int) -> None:
            bound = "" if info.mailbox_capacity is None else f"/{info.mailbox_capacity}"
            restarts = f", {info.restarts} restarts" if info.restarts else ""
            where = info.phase if info.state is None or info.phase != "state" else f"state {info.state}"
            lines.append(
                f"{'  ' * depth}{info.name} ({info.agent_class}): {where}, "
                f"mailbox {info.mailbox_depth}{bound}, {info.messages_handled} handled, "
                f"{info.transitions} transitions{restarts}"
            )
            for child in info.children:
                add(child, depth + 1)

        for info in self.agents:
            add(info, 0)
        return "\n".join(lines)


def snapshot() -> Snapshot:
    """The tree of the agents alive in the current trio run, with their counters.

    Cheap enough to call on every metrics scrape: one pass over the live
    agents, reading counters the runtime keeps anyway.

    Raises:
        RuntimeError: called outside a trio run.

    Example:
        ```python
        print(hybrid.snapshot())
        # App-1 (App): events, mailbox 0, 3 handled, 0 transitions
        #   App-1/Store-1 (Store): events, mailbox 0, 12 handled, 0 transitions
        ```
    """
    names = current_names()
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    addresses: dict[str, Address[Any]] = {}
    for name, address in names.used.items():
        if not isinstance(address, Address):  # being made
            continue
        addresses[name] = address
        parent = address._mailbox.parent  # noqa: SLF001 - the snapshot reads the runtime's records
        if parent is None:
            roots.append(name)
        else:
            children.setdefault(parent, []).append(name)
    # A child whose maker has ended is shown as a root.
    roots.extend(name for parent, names in children.items() if parent not in addresses for name in names)

    def info(name: str) -> AgentInfo:
        address = addresses[name]
        rt = address._rt  # noqa: SLF001
        mailbox = address._mailbox  # noqa: SLF001
        held = rt.phase == ENDED and mailbox.limit != CLOSED
        return AgentInfo(
            name=name,
            agent_class=mailbox.agent_type.__qualname__,
            phase="restarting" if held else rt.phase_name,
            state=None if rt.state is None else repr(rt.state),
            mailbox_depth=mailbox.depth(),
            mailbox_capacity=mailbox.capacity,
            messages_handled=rt.handled,
            messages_dropped=mailbox.dropped,
            transitions=rt.transitions,
            restarts=max(mailbox.runs - 1, 0),
            children=tuple(info(child) for child in children.get(name, ())),
        )

    tree = tuple(info(name) for name in roots)
    totals: dict[str, list[int]] = {}  # handled, dropped, transitions, failures, restarts, depth
    phases: dict[str, dict[str, int]] = {}
    for class_name, ended in names.ended.items():
        totals[class_name] = [ended.handled, ended.dropped, ended.transitions, ended.failures, ended.restarts, 0]
    for agent in Snapshot(tree).walk():
        row = totals.setdefault(agent.agent_class, [0, 0, 0, 0, 0, 0])
        row[0] += agent.messages_handled
        row[1] += agent.messages_dropped
        row[2] += agent.transitions
        row[5] += agent.mailbox_depth
        by_phase = phases.setdefault(agent.agent_class, {})
        by_phase[agent.phase] = by_phase.get(agent.phase, 0) + 1
    counters = tuple(
        ClassCounters(
            agent_class=class_name,
            phases=phases.get(class_name, {}),
            mailbox_depth=row[5],
            messages_handled=row[0],
            messages_dropped=row[1],
            transitions=row[2],
            failures=row[3],
            restarts=row[4],
        )
        for class_name, row in sorted(totals.items())
    )
    return Snapshot(tree, counters)
