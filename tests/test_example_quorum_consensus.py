"""examples/quorum_consensus.py: the demo's votes to the line, and how each vote ends."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import hybrid
from examples import quorum_consensus
from examples.quorum_consensus import Coordinator, Decision, Node, Proposal

ROOT = Path(__file__).parent.parent

DEMO = """\
nodes (answer time, temper):
  n1 10 ms, n2 20 ms cautious, n3 30 ms faulty, n4 40 ms, n5 50 ms
  n6 60 ms faulty, n7 70 ms, n8 80 ms cautious, n9 1000 ms, n10 1000 ms
proposal 1: "raise the rate limit" needs 6 of 10 yes votes (majority), deadline 150 ms
    10 ms  n1   yes
    20 ms  n2   yes
    30 ms  n3   NodeDown: n3: disk full
    40 ms  n4   yes
    50 ms  n5   yes
    60 ms  n6   NodeDown: n6: lost its network
    70 ms  n7   yes
    80 ms  n8   yes
  => accepted after 80 ms by n1, n2, n4, n5, n7, n8; cancelled: n9, n10
proposal 2: "drop the audit log" (risky) needs 7 of 10 yes votes (supermajority, 2/3), deadline 150 ms
    10 ms  n1   yes
    20 ms  n2   no
    30 ms  n3   NodeDown: n3: disk full
    40 ms  n4   yes
    50 ms  n5   yes
    60 ms  n6   NodeDown: n6: lost its network
    70 ms  n7   yes
    80 ms  n8   no
  => rejected after 80 ms: QuorumError, 4 failed:
       VotedNo: n2 voted no
       NodeDown: n3: disk full
       NodeDown: n6: lost its network
       VotedNo: n8 voted no
     yes votes so far: n1, n4, n5, n7; cancelled: n9, n10
proposal 3: "switch the storage engine" (risky) needs 6 of 10 yes votes (majority), deadline 150 ms
    10 ms  n1   yes
    20 ms  n2   no
    30 ms  n3   NodeDown: n3: disk full
    40 ms  n4   yes
    50 ms  n5   yes
    60 ms  n6   NodeDown: n6: lost its network
    70 ms  n7   yes
    80 ms  n8   no
  => no quorum: timed out after 150 ms with 4 of 6 yes votes; still waiting for n9, n10
""".splitlines()


async def test_the_demo_prints_the_documented_votes(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's output, line for line: what the docs show."""
    await quorum_consensus.main()
    assert capsys.readouterr().out.splitlines() == DEMO


async def test_the_three_proposals_end_accepted_rejected_early_and_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Accepted at the sixth yes; rejected at the fourth failure; out of time while the slow nodes think."""
    start = trio.current_time()
    accepted, rejected, timed_out = await quorum_consensus.main()

    assert (accepted.outcome, accepted.ms, accepted.timed_out) == ("accepted", 80, False)
    assert accepted.yes == ("n1", "n2", "n4", "n5", "n7", "n8")  # in the order they answered
    assert accepted.errors == ()  # quorum drops the errors of members it could do without...
    assert [a.verdict for a in accepted.answers if a.node in ("n3", "n6")] == [  # ...the answers keep them
        "NodeDown: n3: disk full",
        "NodeDown: n6: lost its network",
    ]
    assert accepted.cancelled == ("n9", "n10")

    assert (rejected.outcome, rejected.ms, rejected.timed_out) == ("rejected", 80, False)
    assert rejected.errors == (  # QuorumError.errors, in the order they failed
        "VotedNo: n2 voted no",
        "NodeDown: n3: disk full",
        "NodeDown: n6: lost its network",
        "VotedNo: n8 voted no",
    )
    assert rejected.yes == ("n1", "n4", "n5", "n7")  # QuorumError.results
    assert rejected.cancelled == ("n9", "n10")

    assert (timed_out.outcome, timed_out.ms, timed_out.timed_out) == ("no quorum", 150, True)
    assert timed_out.yes == ("n1", "n4", "n5", "n7")
    assert timed_out.cancelled == ("n9", "n10")

    # 80 + 80 + 150 ms: no vote waited for the slow nodes (1 s each).
    assert trio.current_time() - start == pytest.approx(0.310)


async def vote(nodes: list[Node], proposal: Proposal, deadline: float = 0.150) -> tuple[Decision, list[str]]:
    """Put one proposal to `nodes`; return the decision and what the coordinator printed."""
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        addresses = [(node.name, hybrid.spawn(nursery, node)) for node in nodes]
        [decision] = await Coordinator(addresses, [proposal], deadline=deadline, out=lines.append).run()
        nursery.cancel_scope.cancel()
    return decision, lines


async def test_a_quorum_out_of_reach_by_faults_alone_is_no_quorum_and_ends_at_the_deciding_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two of three nodes down, two yes votes needed: QuorumError at the second fault, without a no vote."""
    nodes = [Node("a", 0.010, fault="down"), Node("b", 0.020, fault="down"), Node("c", 0.500)]
    decision, lines = await vote(nodes, Proposal("anything", need=2, rule="two of three"))
    assert (decision.outcome, decision.ms, decision.timed_out) == ("no quorum", 20, False)
    assert decision.errors == ("NodeDown: a: down", "NodeDown: b: down")
    assert decision.cancelled == ("c",)
    assert lines[-4:] == [
        "  => no quorum after 20 ms: QuorumError, 2 failed:",
        "       NodeDown: a: down",
        "       NodeDown: b: down",
        "     yes votes so far: none; cancelled: c",
    ]


async def test_a_unanimous_vote_is_accepted_when_the_last_node_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = [Node("a", 0.030), Node("b", 0.010), Node("c", 0.020)]
    decision, _ = await vote(nodes, Proposal("anything", need=3, rule="unanimity", risky=True))
    assert (decision.outcome, decision.ms, decision.yes, decision.cancelled) == ("accepted", 30, ("b", "c", "a"), ())


def test_the_demo_runs_as_a_script_in_a_fresh_interpreter_on_the_real_clock() -> None:
    """``python examples/quorum_consensus.py``: the same votes on the real clock (times may run late under load)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quorum_consensus.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = done.stdout
    assert done.stderr == ""
    assert re.search(r"=> accepted after \d+ ms by n1, n2, n4, n5, n7, n8; cancelled: n9, n10", out)
    assert re.search(r"=> rejected after \d+ ms: QuorumError, 4 failed:", out)
    assert "     yes votes so far: n1, n4, n5, n7; cancelled: n9, n10" in out
    assert re.search(r"=> no quorum: timed out after 1\d0 ms with 4 of 6 yes votes; still waiting for n9, n10", out)
