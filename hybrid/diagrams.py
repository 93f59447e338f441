"""State diagrams drawn from what agents did: Mermaid ``stateDiagram-v2``, per agent class.

A `StateDiagrams` instrument records, for each agent class, the transitions
its agents actually took: from the start into the first state or actor mode,
from state to state, and into the end (labelled by how the agent ended). It
draws them as a Mermaid state diagram, so a user sees the machine their code
built, as it ran; GitHub, GitLab and MkDocs Material render Mermaid as it is.

Built on public names only (an instrument, as a third party would write it).
It keeps one set of edges per class, so its memory is bounded by the code
(classes and their states), not by how many agents ran; per agent it holds
only the last state of the agents alive.

Example:
    ```python
    diagrams = hybrid.diagrams.StateDiagrams()
    hybrid.add_instrument(diagrams)
    await Download("https://example.org").run()
    print(diagrams.mermaid(Download))
    ```

    prints

    ```text
    stateDiagram-v2
        [*] --> fetch
        fetch --> count
        count --> [*]: done
    ```
"""

from __future__ import annotations

import keyword
from typing import Any, Final, final

import hybrid

__all__ = ["StateDiagrams"]

START: Final = "[*]"
"""Mermaid's start and end pseudo-state."""
ACTOR_MODE: Final = "events"
"""The node of actor mode (`Next.events()`)."""

# Words Mermaid's state-diagram grammar reserves: a state of that name gets a suffix.
_RESERVED: Final = frozenset({"state", "note", "end", "direction", "class", "classDef", "click", "style", "as"})


def _node(name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "_"
    if safe[0].isdigit() or safe in _RESERVED or keyword.iskeyword(safe):
        safe += "_"
    return safe


@final
class StateDiagrams(hybrid.Instrument):
    """An instrument that records the transitions of every agent class and draws them.

    Register it with `hybrid.add_instrument`; read it at any time, from the
    trio thread (it is not locked for other threads).

    A node is a state, named by `Next.state_name` (the method's name), or
    ``events`` for actor mode; ``[*]`` is the start and the end. An edge is
    drawn once, however often it was taken; `edges` has the counts. The
    edge into the end is labelled with the `StopKind` of the ending.
    """

    def __init__(self) -> None:
        self._edges: dict[str, dict[tuple[str, str, str], int]] = {}
        self._classes: dict[str, type] = {}
        self._last: dict[hybrid.Address[Any], str] = {}

    # -- the hooks ------------------------------------------------------------

    def agent_started(self, address: hybrid.Address[Any]) -> None:
        self._last[address] = START

    def state_entered(self, address: hybrid.Address[Any], next: hybrid.Next[Any]) -> None:
        if next.is_state:
            node = next.state_name or "state"
        elif next.kind == "events":
            node = ACTOR_MODE
        else:
            return  # an ending: agent_stopped draws the edge, with how it ended
        self._edge(address, node, "")

    def agent_stopped(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
        self._edge(address, START, str(reason.kind))
        del self._last[address]

    def _edge(self, address: hybrid.Address[Any], node: str, label: str) -> None:
        last = self._last.get(address)
        if last is None:  # started before this instrument was registered: its first edge is unknown
            self._last[address] = node
            return
        cls = address.agent_type
        key = cls.__qualname__
        self._classes.setdefault(key, cls)
        edges = self._edges.setdefault(key, {})
        edge = (last, node, label)
        edges[edge] = edges.get(edge, 0) + 1
        self._last[address] = node

    # -- reading ----------------------------------------------------------------

    def classes(self) -> list[str]:
        """The qualified names of the agent classes seen so far, in the order first seen."""
        return list(self._edges)

    def edges(self, agent_type: type | str) -> dict[tuple[str, str, str], int]:
        """``(from, to, label) -> times taken`` for one class (a class or its qualified name).

        ``"[*]"`` is the start (as `from`) and the end (as `to`, labelled by
        the `StopKind`); other labels are empty.

        Raises:
            KeyError: no agent of this class took a transition while recorded.
        """
        key = agent_type if isinstance(agent_type, str) else agent_type.__qualname__
        if key not in self._edges:
            raise KeyError(f"no transition of {key} was recorded (known: {', '.join(self._edges) or 'none'})")
        return dict(self._edges[key])

    def mermaid(self, agent_type: type | str) -> str:
        """The Mermaid ``stateDiagram-v2`` of one class, edges in the order first taken.

        Raises:
            KeyError: no agent of this class took a transition while recorded.
        """
        lines = ["stateDiagram-v2"]
        for source, target, label in self.edges(agent_type):
            a = source if source == START else _node(source)
            b = target if target == START else _node(target)
            lines.append(f"    {a} --> {b}: {label}" if label else f"    {a} --> {b}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, str]:
        """Every class's diagram: ``{qualified class name: mermaid text}`` (JSON-ready)."""
        return {key: self.mermaid(key) for key in self._edges}
