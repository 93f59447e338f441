"""Quorum voting: ten nodes vote on proposals; a proposal passes with enough yes votes in time.

Each node is an agent that answers `Vote` requests after its own latency: most
vote yes, two cautious ones vote no to risky proposals, two are faulty (their
handler raises `NodeDown`) and two are slow (they would answer after a second,
far past the deadline). The coordinator, an agent with one state per proposal,
asks all ten at once with `hybrid.quorum`: it needs the first `need` yes votes
(a no vote counts as a failure, as a fault does), under `trio.move_on_after`.
The three proposals end the three ways a quorum can:

1. accepted: six yes votes arrive; the requests still out to the slow nodes are
   cancelled, not awaited (a node already handling one finishes it, and its
   answer is dropped; one still queued is never handled).
2. rejected: a supermajority (7 of 10) is out of reach once four nodes have
   failed, so `hybrid.quorum` raises `QuorumError` at once (its `errors` say
   who failed how), long before the slow nodes would have answered.
3. no quorum: a majority is still possible while the slow nodes think, so the
   deadline ends the vote.

It runs on trio's real clock, in about 0.3 s. Times are rounded down to 10 ms
(timers fire a little late, never early), so the output is the same from run to
run; only on a machine too busy to wake a timer within 10 ms does a time show
10 ms more. (The tests run it under trio's `MockClock`: there it is exact.)

    python examples/quorum_consensus.py
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next

DEADLINE = 0.150
"""How long the coordinator waits for a quorum, in seconds."""


@attrs.frozen
class Proposal:
    """Something to vote on; it passes with `need` yes votes."""

    title: str
    need: int
    rule: str
    """How `need` was chosen, for the log ("majority", ...)."""
    risky: bool = False
    """Cautious nodes vote no to risky proposals."""


@attrs.frozen
class Vote(hybrid.Request[bool]):
    """Ask a node for its vote: True for yes."""

    proposal: Proposal


class NodeDown(Exception):
    """A faulty node could not vote."""


class VotedNo(Exception):
    """A node voted no: a failure for the quorum of yes votes."""


class Node(Agent):
    """A voter: answers after `latency` seconds, by its temper."""

    def __init__(self, name: str, latency: float, *, cautious: bool = False, fault: str | None = None) -> None:
        self.name = name
        self.latency = latency
        self.cautious = cautious
        self.fault = fault

    @hybrid.on_request
    async def vote(self, request: Vote) -> bool:
        await trio.sleep(self.latency)  # thinking, or a slow network
        if self.fault is not None:
            raise NodeDown(f"{self.name}: {self.fault}")
        return not (self.cautious and request.proposal.risky)

    def describe(self) -> str:
        temper = " faulty" if self.fault else " cautious" if self.cautious else ""
        return f"{self.name} {round(self.latency * 1000)} ms{temper}"


def roster() -> list[Node]:
    """The ten nodes, fastest first."""
    return [
        Node("n1", 0.010),
        Node("n2", 0.020, cautious=True),
        Node("n3", 0.030, fault="disk full"),
        Node("n4", 0.040),
        Node("n5", 0.050),
        Node("n6", 0.060, fault="lost its network"),
        Node("n7", 0.070),
        Node("n8", 0.080, cautious=True),
        Node("n9", 1.0),  # slow: would answer long after any deadline
        Node("n10", 1.0),
    ]


PROPOSALS = [
    Proposal("raise the rate limit", need=6, rule="majority"),
    Proposal("drop the audit log", need=7, rule="supermajority, 2/3", risky=True),
    Proposal("switch the storage engine", need=6, rule="majority", risky=True),
]


@attrs.frozen
class Answer:
    """One node's answer, as it arrived."""

    node: str
    ms: int
    """When it arrived, in ms since the vote began (rounded down to 10 ms)."""
    verdict: str
    """"yes", "no" or the error it raised."""


@attrs.frozen
class Decision:
    """How the vote on one proposal ended."""

    proposal: Proposal
    outcome: str
    """"accepted"; "rejected" (out of reach, no votes among the failures); "no quorum" (out of reach by faults
    alone, or timed out)."""
    ms: int
    """How long the vote took, in ms (rounded down to 10 ms)."""
    answers: tuple[Answer, ...]
    """Every answer that arrived, in the order it arrived."""
    yes: tuple[str, ...]
    """The yes votes that counted (accepted), or that had arrived (otherwise)."""
    errors: tuple[str, ...]
    """`QuorumError.errors`, as "Type: message" (empty unless the quorum became impossible)."""
    cancelled: tuple[str, ...]
    """The nodes asked but never heard from: the vote ended without them."""
    timed_out: bool


def elapsed_ms(start: float) -> int:
    """Milliseconds since `start` on trio's clock, rounded down to 10 ms."""
    return int((trio.current_time() - start) * 100 + 1e-6) * 10


class Coordinator(Agent[list[Decision]]):
    """Puts each proposal to the vote, one after the other (one state per proposal)."""

    def __init__(
        self,
        nodes: Sequence[tuple[str, hybrid.Address[Node]]],
        proposals: Sequence[Proposal],
        *,
        deadline: float = DEADLINE,
        out: Callable[[str], None] = print,
    ) -> None:
        self.nodes = list(nodes)
        self.proposals = list(proposals)
        self.deadline = deadline
        self.out = out
        self.decisions: list[Decision] = []

    def begin(self) -> Next[Self]:
        return Next.do_async(self.propose, 0)

    async def propose(self, index: int) -> Next[Self]:
        proposal = self.proposals[index]
        self.out(
            f'proposal {index + 1}: "{proposal.title}"{" (risky)" if proposal.risky else ""} needs {proposal.need} '
            f"of {len(self.nodes)} yes votes ({proposal.rule}), deadline {round(self.deadline * 1000)} ms"
        )
        start = trio.current_time()
        answers: list[Answer] = []
        outcome = "no quorum"
        yes: list[str] = []
        errors: list[Exception] = []
        with trio.move_on_after(self.deadline) as deadline:
            try:
                yes = await hybrid.quorum(
                    proposal.need, [self.ask(name, node, proposal, start, answers) for name, node in self.nodes]
                )
                outcome = "accepted"
            except hybrid.QuorumError as error:
                # Raised as soon as too many failed: the members still running were cancelled.
                outcome = "rejected" if any(isinstance(e, VotedNo) for e in error.errors) else "no quorum"
                yes, errors = [str(name) for name in error.results], error.errors
        if deadline.cancelled_caught:
            yes = [answer.node for answer in answers if answer.verdict == "yes"]
        heard = {answer.node for answer in answers}
        decision = Decision(
            proposal,
            outcome,
            elapsed_ms(start),
            tuple(answers),
            tuple(yes),
            tuple(f"{type(error).__name__}: {error}" for error in errors),
            tuple(name for name, _ in self.nodes if name not in heard),
            deadline.cancelled_caught,
        )
        self.report(decision)
        self.decisions.append(decision)
        if index + 1 < len(self.proposals):
            return Next.do_async(self.propose, index + 1)
        return Next.done(self.decisions)

    async def ask(
        self, name: str, node: hybrid.Address[Node], proposal: Proposal, start: float, answers: list[Answer]
    ) -> str:
        """One member of the quorum: a yes vote returns the node's name; a no vote or a fault raises."""
        try:
            yes = await node.request(Vote(proposal))
        except Exception as error:
            answers.append(Answer(name, elapsed_ms(start), f"{type(error).__name__}: {error}"))
            raise
        answers.append(Answer(name, elapsed_ms(start), "yes" if yes else "no"))
        if not yes:
            raise VotedNo(f"{name} voted no")
        return name

    def report(self, decision: Decision) -> None:
        for answer in decision.answers:
            self.out(f"  {answer.ms:4} ms  {answer.node:<4} {answer.verdict}")
        waiting = ", ".join(decision.cancelled) or "none"
        if decision.outcome == "accepted":
            self.out(f"  => accepted after {decision.ms} ms by {', '.join(decision.yes)}; cancelled: {waiting}")
        elif decision.timed_out:
            self.out(
                f"  => no quorum: timed out after {decision.ms} ms with {len(decision.yes)} of "
                f"{decision.proposal.need} yes votes; still waiting for {waiting}"
            )
        else:
            self.out(f"  => {decision.outcome} after {decision.ms} ms: QuorumError, {len(decision.errors)} failed:")
            for error in decision.errors:
                self.out(f"       {error}")
            self.out(f"     yes votes so far: {', '.join(decision.yes) or 'none'}; cancelled: {waiting}")


async def main() -> list[Decision]:
    """Start the ten nodes, vote on the three proposals, stop the nodes."""
    voters = roster()
    print("nodes (answer time, temper):")
    for row in (voters[:5], voters[5:]):
        print(f"  {', '.join(node.describe() for node in row)}")
    async with trio.open_nursery() as nursery:
        nodes = [(node.name, hybrid.spawn(nursery, node, name=node.name)) for node in voters]
        decisions = await Coordinator(nodes, PROPOSALS).run()
        nursery.cancel_scope.cancel()  # the slow nodes are still thinking: stop them all
    return decisions


if __name__ == "__main__":
    trio.run(main)
