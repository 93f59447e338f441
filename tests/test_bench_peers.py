"""Smoke test of the benchmark's asyncio, AI-agent peer and scaling sections, at a tiny size.

As tests/test_bench_smoke.py: what is checked is that every side did its work
(counts, sums, agents alive while measured), never a timing. hand-written asyncio
always runs; LangGraph, pydantic-graph and autogen-core are optional peers, and
a test of one that is not importable is skipped.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # bench/ is a top-level package of the repo, not installed
    sys.path.insert(0, str(REPO_ROOT))

from bench import agent_peers, asyncio_side, run, scaling, workloads  # noqa: E402
from bench._harness import BenchError  # noqa: E402

NOTES = agent_peers.available()


# -- asyncio ---------------------------------------------------------------------------------------


def test_asyncio_tell_ask_and_fan_out_handle_every_message() -> None:
    assert asyncio_side.asyncio_tell(workloads.make_ticks(300))["handled"] == 300
    ask = asyncio_side.asyncio_ask(workloads.make_asks(100))
    assert ask["answered"] == 100
    assert 0 < ask["median_us"] <= ask["p99_us"]
    assert asyncio_side.asyncio_fan(5, workloads.make_ticks(40))["handled"] == 200


def test_asyncio_spawn_stop_ends_every_task_and_memory_is_measured_with_all_alive() -> None:
    assert asyncio_side.asyncio_spawn_stop(50)["stopped"] == 50
    sample = asyncio_side.asyncio_memory_per_idle(30, "tracemalloc")
    assert sample["live"] == 30
    assert sample["bytes_per_agent"] > 0


def test_asyncio_steps_transitions_and_machine_runs_take_every_step() -> None:
    assert asyncio_side.asyncio_sync_steps(10)["steps"] == 10
    assert asyncio_side.asyncio_transitions(500)["steps"] == 500
    assert asyncio_side.asyncio_machine(20)["total"] == 120


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_asyncio_pipeline_delivers_every_item_with_one_or_many_workers_per_stage(workers: int) -> None:
    sample = asyncio_side.asyncio_pipeline(50, workers=workers)
    assert sample["count"] == 50
    assert sample["total"] == 50 * 50


def test_asyncio_section_alternates_three_sides_with_ratios_to_asyncio() -> None:
    section = asyncio_side.run_asyncio(0.001, 1, 0, only=["W1", "W7"])
    assert list(section["workloads"]) == ["W1", "W7"]
    for entry in section["workloads"].values():
        for side in ("hybrid", "trio", "asyncio"):
            assert len(entry[side]["samples"]) == 1
        for metric in entry["metrics"].values():
            for side in ("hybrid", "trio", "asyncio"):
                assert math.isfinite(metric[side]) and metric[side] > 0
            assert metric["hybrid_vs_asyncio"] == metric["hybrid"] / metric["asyncio"]


# -- AI-agent peers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", agent_peers.KINDS)
@pytest.mark.parametrize("peer", agent_peers.PEERS)
def test_an_installed_agent_framework_does_each_operation(peer: str, kind: str) -> None:
    note = NOTES[peer]
    if note is not None:
        pytest.skip(note)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a peer's own warnings are not the benchmark's
        sample = agent_peers.SIDES[peer][kind](7)
    expected = {"run": ("total", 42), "message": ("handled", 7), "request": ("total", 28)}[kind]
    assert sample[expected[0]] == expected[1]
    assert sample["seconds"] > 0


def test_agents_section_measures_hybrid_and_the_installed_frameworks_and_notes_the_others() -> None:
    section = agent_peers.run_agent_peers(0.001, rounds=1, warmup=0)
    assert section["params"] == {"peer_ops": 1, "hybrid_ops": 5}
    assert set(section["hybrid"]) == {"run_us", "message_us", "request_us"}
    for peer in agent_peers.PEERS:
        entry = section[peer]
        if NOTES[peer] is None:
            assert entry["measured"] is True
            assert entry["version"]
            for kind in agent_peers.KINDS:
                assert entry[f"{kind}_us"] > 0
                assert entry[f"{kind}_ahead"] == entry[f"{kind}_us"] / section["hybrid"][f"{kind}_us"]
        else:
            assert entry["measured"] is False
            assert entry["note"] == NOTES[peer]


def test_a_framework_that_does_not_do_the_work_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(agent_peers.SIDES["hybrid"], "run", lambda n: {"seconds": 1.0, "total": 6 * n - 1})
    with pytest.raises(BenchError, match="hybrid run outputs"):
        agent_peers.run_agent_peers(0.001, rounds=1, warmup=0, only=[])


# -- scaling ---------------------------------------------------------------------------------------


def test_hibernating_agents_all_sleep_then_all_end_interrupted() -> None:
    sample = scaling.hibernating_spawn_stop(40)
    assert sample["hibernating"] == 40
    assert sample["stopped"] == 40


def test_hibernating_memory_is_measured_with_every_agent_asleep() -> None:
    sample = workloads.memory_per_idle("hibernating", 30, "tracemalloc")
    assert sample["live"] == 30
    assert sample["bytes_per_agent"] > 0


@pytest.mark.parametrize("callers", [1, 7, 50])
def test_concurrent_callers_get_every_answer_on_each_side(callers: int) -> None:
    chunks = scaling._chunks(workloads.make_asks(callers * 3), callers)
    expected = sum(r.value + 1 for chunk in chunks for r in chunk)
    assert scaling.hybrid_callers(scaling.Answerer, chunks)["total"] == expected
    assert scaling.hybrid_callers(scaling.InlineAnswerer, chunks)["total"] == expected
    assert scaling.trio_callers(chunks)["total"] == expected


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_pipelines_with_workers_per_stage_deliver_every_item_on_each_side(workers: int) -> None:
    for sample in (
        workloads.hybrid_pipeline(60, workers, yielding=True, ordered=False),
        workloads.hybrid_pipeline(60, workers, yielding=True, ordered=True),
        workloads.trio_pipeline(60, workers, yielding=True),
    ):
        assert sample["count"] == 60
        assert sample["total"] == 60 * 60


def test_agents_sweep_measures_time_and_memory_for_each_kind_of_idle_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaling, "AGENT_COUNTS", (1_000,))
    monkeypatch.setattr(scaling, "TRACEMALLOC_UP_TO", 1_000)
    monkeypatch.setattr(scaling, "RSS_FROM", 1_000)
    sweep = scaling.run_agents(0.1, rounds=1, warmup=0)
    [row] = sweep["rows"]
    assert row["agents"] == 100
    for side in scaling.AGENT_SIDES:
        assert row[side]["us_per_agent"] > 0
        assert row[side]["tracemalloc_bytes"] > 0
        assert row[side]["rss_bytes"] is not None


# -- the command line ------------------------------------------------------------------------------


def test_command_line_runs_the_new_sections_and_writes_them_to_the_json_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agents sweep starts fresh processes: it has its own test above.
    monkeypatch.setattr(scaling, "SWEEPS", {k: v for k, v in scaling.SWEEPS.items() if k != "agents"})
    output = tmp_path / "sections.json"
    argv = ["--size", "0.001", "--repeat", "1", "--warmup", "0", "--output", str(output)]
    assert run.main([*argv, "--only", "W6,asyncio,agents,scaling"]) == 0
    printed = capsys.readouterr().out
    assert "asyncio: the same work" in printed
    assert "AI-agent frameworks" in printed
    assert "scaling: concurrent callers" in printed
    assert "scaling: pipeline workers" in printed

    results = json.loads(output.read_text())
    assert list(results["workloads"]) == ["W6"]
    assert list(results["asyncio"]["workloads"]) == ["W6"]  # asyncio follows the selected workloads
    assert set(results["agents"]) >= {"params", "design", "hybrid", *agent_peers.PEERS}
    assert list(results["scaling"]) == ["callers", "pipeline", "wall_seconds"]
    assert [row["callers"] for row in results["scaling"]["callers"]["rows"]] == list(scaling.CALLERS)
    assert [row["workers"] for row in results["scaling"]["pipeline"]["rows"]] == list(scaling.PIPELINE_WORKERS)


def test_no_peers_skips_the_agent_frameworks_but_not_asyncio() -> None:
    args = run.parse_args(["--only", "W1,Asyncio,agents,peers", "--no-peers"])
    assert args.selected == ["W1", "asyncio"]
    assert run.parse_args([]).selected == [*workloads.WORKLOADS, "W9", "W11", "peers", "asyncio", "agents", "scaling"]
