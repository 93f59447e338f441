"""Smoke test of W10, the remote-agents benchmark (bench/remote.py), at a tiny size.

As tests/test_bench_smoke.py: no timing is asserted; what is checked is that every
pair of clients and servers did its work (each sample checks its answers and
counts in its own process) and that the report and the JSON have every row. The
bench starts a nats-server: without one on this machine the tests skip, except in
CI (``CI`` set), where they fail, as the remote tests do (tests/remote/conftest.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # bench/ is a top-level package of the repo, not installed
    sys.path.insert(0, str(REPO_ROOT))

from bench import remote  # noqa: E402
from bench._harness import BenchError  # noqa: E402
from bench._remote_peer import (  # noqa: E402
    COUNT_NAME,
    ECHO,
    EVENT,
    NOTE_NAME,
    PING_NAME,
    REQUEST,
    Count,
    Note,
    Ping,
    answer_of,
    envelope,
    reply,
)
from tests.remote.nats import missing_reason  # noqa: E402


@pytest.fixture
def nats_available() -> None:
    """Skip without a nats-server 2.11+ here, unless in CI, which must run W10's test."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the W10 bench test: {reason}")
        pytest.skip(reason)


def test_the_hand_written_wire_format_is_what_a_hybrid_node_reads_and_writes() -> None:
    """The plain sides' envelopes decode as hybrid's, and hybrid's replies decode with `answer_of`."""
    from hybrid.codec import MessageCodec  # noqa: PLC0415 - the remote extra
    from hybrid.remote import _wire as wire  # noqa: PLC0415

    codec = MessageCodec()
    for cls in (Ping, Note, Count):
        codec.register(cls)
    for kind, name, fields, expected in (
        (REQUEST, PING_NAME, {"n": 7}, Ping(7)),
        (EVENT, NOTE_NAME, {"n": 3}, Note(3)),
        (REQUEST, COUNT_NAME, {}, Count()),
    ):
        decoded = wire.ENVELOPE.decode(envelope(kind, name, fields))
        assert decoded.kind == kind
        assert codec.decode(decoded.name, decoded.version, decoded.body) == expected
        assert codec.encode(expected) == (name, 1, decoded.body)
    answer = wire.ENCODER.encode(wire.Reply(False, codec.encode_value(int, 8)))
    assert answer_of(answer) == 8
    assert wire.REPLY.decode(reply(8)) == wire.Reply(False, codec.encode_value(int, 8))


@pytest.mark.usefixtures("nats_available")
def test_w10_runs_every_pair_of_every_part_and_reports_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """W10 at its smallest: each client sends to each server, in each part; the table and JSON have every row."""
    output = tmp_path / "w10.json"
    argv = ["--size", "0.01", "--repeat", "1", "--warmup", "0", "--output", str(output)]
    assert remote.main(argv) == 0
    printed = capsys.readouterr().out
    for heading in ("W10 sequential requests", "W10 pipelined requests", "W10 one-way events", "target: hybrid p50"):
        assert heading in printed
    for _, _, label in remote.PAIRS.values():
        assert printed.count(label) == 3  # one row in each part's table

    entry = json.loads(output.read_text())
    assert set(entry["spreads"]) == set(remote.FIGURES)
    for figure in entry["spreads"].values():
        assert set(figure) == set(remote.PAIRS)
        for spread in figure.values():
            assert len(spread["samples"]) == 1
            assert spread["median"] > 0
    assert entry["params"]["requests"] == 10
    assert entry["params"]["notes"] == 200
    assert set(entry["metrics"]) == {"latency_p50", "latency_p99", "pipelined", "one_way"}
    assert entry["metrics"]["latency_p50"]["target"]["bound"] == remote.TARGET_LATENCY


@pytest.mark.usefixtures("nats_available")
def test_a_sample_that_fails_in_a_client_process_fails_the_bench() -> None:
    """A request to a name nothing serves fails in either client, and the bench raises instead of waiting."""
    with remote.cluster() as clients:
        for client, error in (("plain", "NoRespondersError"), ("hybrid", "AgentStopped")):
            with pytest.raises(BenchError, match=f"latency to 'nobody': {error}"):
                clients[client].sample("latency", "nobody", 1)
        assert clients["plain"].sample("latency", ECHO, 2)["answered"] == 2  # the client goes on
