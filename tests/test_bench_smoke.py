"""Smoke test of the benchmark suite (bench/): every workload at a tiny size.

No timing is asserted (timings depend on the machine); what is checked is that
each side of each workload did its work (counts, answers) and that the command
line writes the results file with the expected keys. The full benchmark runs
with ``python -m bench`` (see bench/README.md).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # bench/ is a top-level package of the repo, not installed
    sys.path.insert(0, str(REPO_ROOT))

from bench import coordination, peers, run, workloads  # noqa: E402
from bench import durable as durable_bench  # noqa: E402
from bench._harness import BenchError, alternate, check, percentile, scaled  # noqa: E402

WORKLOAD_KEYS = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8"]


def test_w1_tell_handles_every_event_on_both_sides() -> None:
    messages = workloads.make_ticks(300)
    assert workloads.hybrid_tell(messages)["handled"] == 300
    assert workloads.trio_tell(messages)["handled"] == 300


def test_w2_ask_answers_every_request_on_both_sides() -> None:
    requests = workloads.make_asks(100)
    for sample in (workloads.hybrid_ask(requests), workloads.trio_ask(requests)):
        assert sample["answered"] == 100
        assert 0 < sample["median_us"] <= sample["p99_us"]


def test_w3_spawn_stop_stops_every_agent_on_both_sides() -> None:
    assert workloads.hybrid_spawn_stop(50)["stopped"] == 50
    assert workloads.trio_spawn_stop(50)["stopped"] == 50


def test_w3_memory_is_measured_with_every_agent_alive() -> None:
    for side in ("hybrid", "trio"):
        sample = workloads.memory_per_idle(side, 30, "tracemalloc")
        assert sample["live"] == 30
        assert sample["bytes_per_agent"] > 0


def test_w4_fan_out_counts_every_event_of_every_agent_on_both_sides() -> None:
    messages = workloads.make_ticks(40)
    assert workloads.hybrid_fan(5, messages)["handled"] == 200
    assert workloads.trio_fan(5, messages)["handled"] == 200


def test_w5_sync_steps_take_every_step_on_both_sides() -> None:
    assert workloads.hybrid_sync_steps(10)["steps"] == 10
    assert workloads.trio_sync_steps(10)["steps"] == 10


def test_w6_transitions_take_every_step_on_both_sides() -> None:
    assert workloads.hybrid_transitions(500)["steps"] == 500
    assert workloads.trio_transitions(500)["steps"] == 500


def test_w7_machine_runs_produce_every_output_on_both_sides() -> None:
    assert workloads.hybrid_machine(20)["total"] == 120
    assert workloads.trio_machine(20)["total"] == 120


def test_w8_pipelines_deliver_every_item_on_both_sides() -> None:
    assert workloads.hybrid_pipeline(50)["total"] == 50 * 50
    assert workloads.trio_pipeline(50)["total"] == 50 * 50


def test_w9_durable_transitions_run_every_case_on_sqlite(tmp_path: Path) -> None:
    """W9 at a tiny size, without Postgres: every case runs (its own checks count each transition)."""
    entry = durable_bench.measure(0.01, 1, 0, directory=tmp_path, use_postgres=False)
    assert entry["metrics"]
    floors = entry["environment"]
    assert floors["sqlite_bare_commit_us"] > 0
    assert floors["thread_round_trip_us"] > 0
    assert "round trip through a thread here" in durable_bench.table_lines(entry)[0]


def test_w11_coordination_runs_every_side_and_reports_every_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """W11 at a tiny size, as `python -m bench --only W11` runs it: each side checks its own answers and counts."""
    output = tmp_path / "w11.json"
    argv = ["--size", "0.002", "--repeat", "1", "--warmup", "0", "--only", "W11", "--output", str(output)]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "W11 coordination" in printed
    assert "W11 quorum" in printed
    entry = json.loads(output.read_text())["workloads"]["W11"]
    assert set(entry["spreads"]["async"]) == {
        "agent",
        *(f"{side}_{n}" for side in ("pool", "trio") for n in coordination.POOL_SIZES),
    }
    assert set(entry["spreads"]["priority"]) == set(coordination.PRIORITY_SIDES) == {"plain", "levels", "constant"}
    assert set(entry["spreads"]["quorum"]) == set(coordination.QUORUM_MODES)
    targets = {name for name, metric in entry["metrics"].items() if metric["target"] is not None}
    assert targets == {"priority_levels", "priority_constant", "quorum_3_of_5", "quorum_5_of_5"}


def test_peers_that_are_installed_tell_and_ask_and_the_others_are_skipped_with_a_note() -> None:
    result = peers.run_peers(0.001, rounds=1, warmup=0)
    assert result["params"] == {"tell_messages": 20, "ask_requests": 5}
    notes = peers.available()
    for peer in peers.PEERS:
        entry = result[peer]
        if notes[peer] is None:
            assert entry["measured"] is True
            assert entry["tell_us"] > 0
            assert entry["ask_us"] > 0
        else:
            assert entry == {"measured": False, "note": notes[peer]}


def test_a_workload_that_did_not_do_its_work_is_an_error() -> None:
    with pytest.raises(BenchError, match="handled"):
        check("handled", 9, 10)


def test_alternate_runs_sides_in_turn_and_discards_the_warmup() -> None:
    order: list[str] = []

    def side(name: str) -> Callable[[], dict[str, Any]]:
        def run_side() -> dict[str, Any]:
            order.append(name)
            return {"seconds": 1.0}

        return run_side

    samples = alternate({"hybrid": side("hybrid"), "trio": side("trio")}, rounds=2, warmup=1)
    assert order == ["hybrid", "trio"] * 3
    assert [len(s) for s in samples.values()] == [2, 2]


def test_sizes_and_percentiles() -> None:
    assert scaled(200_000, 0.01) == 2000
    assert scaled(100, 0.001) == 1
    assert percentile([float(x) for x in range(1, 101)], 0.99) == 99.0
    assert percentile([5.0], 0.5) == 5.0


def test_command_line_writes_the_json_results_with_the_expected_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "results.json"
    # The asyncio, agents and scaling sections have their own tests (tests/test_bench_peers.py).
    only = "W1,W2,W3,W4,W5,W6,W7,W8,peers"
    assert run.main(["--size", "0.001", "--repeat", "1", "--warmup", "0", "--only", only, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "W1 tell" in printed
    assert "targets met" in printed

    results = json.loads(output.read_text())
    assert set(results) == {"meta", "workloads", "peers", "targets", "asyncio", "agents", "scaling"}
    assert results["meta"]["size"] == 0.001
    assert results["meta"]["repeat"] == 1
    assert list(results["workloads"]) == WORKLOAD_KEYS
    for entry in results["workloads"].values():
        assert {"title", "short", "params", "hybrid", "trio", "metrics", "wall_seconds"} <= set(entry)
        for metric in entry["metrics"].values():
            assert {"unit", "hybrid", "trio", "ratio", "ratio_def", "higher_is_better", "target"} <= set(metric)
            # Tiny sizes can measure zero bytes or seconds; values must still be real numbers.
            assert math.isfinite(metric["hybrid"]) and metric["hybrid"] >= 0
            assert math.isfinite(metric["trio"]) and metric["trio"] >= 0
    assert len(results["workloads"]["W1"]["trio"]["samples"]) == 1
    assert {(t["workload"], t["metric"]) for t in results["targets"]} == {
        ("W1", "throughput"),
        ("W2", "latency_median"),
        ("W3", "memory_tracemalloc"),
        ("W5", "step_cost"),
        ("W6", "throughput"),
    }
    for target in results["targets"]:
        assert isinstance(target["met"], bool)
    assert set(results["peers"]) >= {"params", "hybrid", *peers.PEERS}


def test_command_line_runs_a_subset_without_peers(tmp_path: Path) -> None:
    output = tmp_path / "subset.json"
    assert run.main(["--size", "0.001", "--repeat", "1", "--only", "W6,W7", "--no-peers", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert list(results["workloads"]) == ["W6", "W7"]
    assert results["peers"] is None


def test_the_instruments_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import instruments  # noqa: PLC0415 - it imports the optional metrics and tracing libraries

    assert instruments.main(["--size", "0.002", "--repeat", "1", "--warmup", "0", "--scrape-agents", "10"]) == 0
    assert "W1" in capsys.readouterr().out
