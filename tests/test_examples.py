"""Every example in examples/ runs end to end and produces what it promises."""

from __future__ import annotations

import importlib.util
import re
import runpy
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_covered_by_this_file() -> None:
    names = {path.stem for path in EXAMPLES.glob("*.py")}
    tested = {
        "fsm",
        "monitor",
        "server_client",
        "retry_download",
        "parallel_cpu",
        "service",
        "crawler",
        "durable_orders",
        "pyos",  # tests/test_example_pyos.py
        "quorum_consensus",  # tests/test_example_quorum_consensus.py
        "trading_swarm",  # tests/test_example_trading_swarm.py
        "job_runner",  # tests/test_example_job_runner.py
    }
    assert names == tested


async def test_fsm_counts_the_embedded_text_and_a_file(tmp_path: Path) -> None:
    fsm = load("fsm")
    top = await fsm.main()
    assert top[0][1] >= 2
    path = tmp_path / "words.txt"
    path.write_text("b a b c b a")
    assert await fsm.main(str(path)) == [("b", 3), ("a", 2), ("c", 1)]


async def test_fsm_prints_its_three_states_and_where_each_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The async state runs on the trio (main) thread, the sync state in a worker thread, then the output."""
    path = tmp_path / "words.txt"
    path.write_text("b a b c b a")
    await load("fsm").main(str(path))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1. read:  an async state, on the main thread (MainThread): 11 characters"
    assert lines[1].startswith("2. count: a sync state, in a worker thread (")
    assert lines[1].endswith("): 6 words")
    assert lines[2:] == ["3. done:  the output, 3 most common words:", "     3  b", "     2  a", "     1  c"]


async def test_monitor_polls_the_requested_number_of_times() -> None:
    report = await load("monitor").main(polls=30, interval=0)
    assert report.polls == 30
    assert report.healthy + report.degraded + report.down == 30


async def test_server_client_sums_answers_and_reports_the_missing_key() -> None:
    summary: dict[str, Any] = await load("server_client").main()
    assert summary == {"total": 321, "missing": ["zzz"]}


async def test_retry_download_recovers_then_falls_back() -> None:
    fresh, cached = await load("retry_download").main()
    assert "body" in fresh
    assert "(cached)" in cached


async def test_parallel_cpu_keeps_the_loop_free_during_the_sync_state() -> None:
    primes, ticks = await load("parallel_cpu").main(limit=20_000)
    assert primes == 2262
    assert ticks >= 0  # ticks depend on the machine's speed; the loop must not deadlock


def test_fsm_runs_as_a_script(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fsm.py"])
    runpy.run_path(str(EXAMPLES / "fsm.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "nursery" in out
    assert "2. count: a sync state, in a worker thread" in out


def test_an_example_runs_in_a_fresh_interpreter() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "server_client.py")], capture_output=True, text=True, timeout=60, check=True
    )
    assert "summer: {'total': 321, 'missing': ['zzz']}" in done.stdout


def test_service_shuts_down_in_group_order_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "service.py")], stderr=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line)
        if "service: ready" in line:
            break
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    lines += rest.splitlines()
    order = [line.split("ms ", 1)[1].split(":")[0] for line in lines if "stopped" in line]
    assert order[0] == "http"
    assert sorted(order[1:5]) == [f"worker-{i}" for i in range(4)]
    assert order[5:] == ["storage", "service"]
    assert any("SIGINT received: interrupting Service-1 (graceful shutdown" in line for line in lines)


def test_service_runs_under_hybrid_run_with_http_and_stops_in_group_order_on_sigterm() -> None:
    """`hybrid run examples.service:make_app --http ...`: probes and metrics answer; SIGTERM, then exit 0 in order."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hybrid", "run", "examples.service:make_app", "--http", "127.0.0.1:0"],
        cwd=EXAMPLES.parent,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert process.stderr is not None
    lines: list[str] = []
    port = None
    for line in process.stderr:
        lines.append(line)
        if found := re.search(r"hybrid\.service: serving http://127\.0\.0\.1:(\d+)", line):
            port = int(found.group(1))
        if "service: ready" in line:
            break
    assert port is not None, "".join(lines)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=30) as ready:
        assert ready.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as metrics:
        assert 'hybrid_agents{agent_type="Service",phase="events"} 1.0' in metrics.read().decode()
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    lines += rest.splitlines()
    order = [found.group(1) for line in lines if (found := re.search(r" service: ([\w-]+): stopped", line))]
    assert order[0] == "http"
    assert sorted(order[1:5]) == [f"worker-{i}" for i in range(4)]
    assert order[5:] == ["storage", "service"]


async def test_service_stops_by_itself_after_its_duration() -> None:
    assert await load("service").main(0.2) == 0


async def test_crawler_indexes_every_reachable_page_and_shows_progress(capsys: pytest.CaptureFixture[str]) -> None:
    crawler = load("crawler")
    postings = await crawler.main(pages=50, latency=0.001, progress=0.001)
    assert {url for urls in postings.values() for url in urls} == {f"/{n}" for n in range(50)}
    captured = capsys.readouterr()
    assert "indexed 50 pages" in captured.out
    # The last progress line (redrawn in place with \r) has the final counters: all through, nothing left.
    final = captured.err.rstrip("\n").rsplit("\r", 1)[-1]
    assert final == "  ".join(f"{stage}: 50/50 (in flight 0, queued 0)" for stage in ("Fetch", "parse", "store"))


async def test_crawler_without_progress_prints_no_progress_line(capsys: pytest.CaptureFixture[str]) -> None:
    await load("crawler").main(pages=10, latency=0, progress=0)
    captured = capsys.readouterr()
    assert "indexed 10 pages" in captured.out
    assert captured.err == ""


def test_trio_is_the_only_event_loop_used() -> None:
    assert "asyncio" not in "".join(path.read_text() for path in EXAMPLES.glob("*.py"))
    assert trio.__name__ == "trio"


def test_durable_orders_resumes_a_killed_batch_and_charges_each_order_once() -> None:
    """The first process dies by SIGKILL mid-way; the second resumes the rest; one charge per order."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "durable_orders.py")], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "first process: killed by signal 9"
    resumed = re.fullmatch(r"resumed (\d+) unfinished orders", lines[1])
    assert resumed is not None and 0 < int(resumed[1]) < 12  # some had finished before the crash, some not
    assert lines[2:14] == [f"  o-{i}: shipped, charged {(1000 + 125 * i) / 100:.2f}" for i in range(12)]
    assert lines[14] == "charges in the ledger: 12 for 12 orders"
    assert lines[15].startswith("what happened to o-")  # an order whose charge ran before and after the crash
    kinds = [line.split()[4:] for line in lines[16:]]  # after the time, "epoch", its number and "#seq"
    assert kinds[:3] == [["spawned"], ["async", "reserve"], ["sync", "charge"]]
    assert ["resumed"] in kinds and kinds[-1] == ["done"]
