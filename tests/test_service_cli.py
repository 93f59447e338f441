"""Service mode's command line: ``hybrid run MODULE:FACTORY``, in process (for coverage) and as a real subprocess."""

from __future__ import annotations

import importlib
import json
import logging
import re
import runpy
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import hybrid
import hybrid.slowsteps
from hybrid.service import ExitStatus, JsonFormatter
from hybrid.service._cli import main, parse_http, parse_seconds
from hybrid.service._serve import StartupError, check
from tests.service_apps import RELEASE, NeverStarts
from tests.service_process import get, open_service, run_cli

# -- helpers --------------------------------------------------------------------------


async def tree_text(port: int) -> str:
    """The /tree JSON, as the text tree lines of its agents (name (class): phase state)."""
    lines: list[str] = []

    def add(agent: dict[str, Any]) -> None:
        lines.append(f"{agent['name']} ({agent['class']}): {agent['phase']}")
        for child in agent["children"]:
            add(child)

    for agent in json.loads((await get(port, "/tree")).body)["agents"]:
        add(agent)
    return "\n".join(lines)


def exit_status(*argv: str) -> int:
    """Run ``main(argv)`` in this process and return the status it exits with."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    code = exited.value.code
    assert isinstance(code, int)
    return code


def error_line(capsys: pytest.CaptureFixture[str], *, traceback: bool = False) -> str:
    """The one line a startup failure prints on stderr (with no traceback there, unless an agent's is logged)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hybrid: error: ")]
    assert len(lines) == 1, err
    assert ("Traceback" in err) == traceback, err
    return lines[0].removeprefix("hybrid: error: ")


def stopped_order(log: str) -> list[str]:
    """The agents' names in the order their `stopped NAME` lines appear."""
    return re.findall(r"stopped (\S+) \(", log)


@pytest.fixture(autouse=True)
def keep_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() puts --app-dir on sys.path, as the process it is meant to be may; a test must not leak it."""
    monkeypatch.setattr(sys, "path", list(sys.path))


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8000", ("127.0.0.1", 8000)),
        (":8000", ("127.0.0.1", 8000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_http_takes_host_and_port_with_the_host_defaulting_to_loopback(text: str, expected: tuple[str, int]) -> None:
    assert parse_http(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "http", ":99999", "::1:8000", "-1"])
def test_a_bad_http_address_is_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", "tests.service_apps:make_tree", "--http", text) == ExitStatus.USAGE
    assert "argument --http" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["run"],
        ["serve", "x:y"],
        ["run", "x:y", "--log-level", "LOUD"],
        ["run", "x:y", "--log-format", "xml"],
        ["run", "x:y", "--slow-step", "0"],
        ["run", "x:y", "--slow-step", "soon"],
    ],
)
def test_usage_errors_keep_argparse_status_2(argv: list[str]) -> None:
    assert exit_status(*argv) == 2


def test_slow_step_takes_a_positive_number_of_seconds() -> None:
    assert parse_seconds("0.25") == 0.25


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("--version") == 0
    assert capsys.readouterr().out.startswith(f"hybrid {hybrid.__version__} (trio-hybrid; Python ")
    assert exit_status("run", "--help") == 0
    out = capsys.readouterr().out
    for option in ("--http", "--log-level", "--log-format", "--check", "--slow-step", "--app-dir"):
        assert option in out
    assert "130  cut short by a second signal" in out


def test_python_dash_m_hybrid_is_the_same_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["hybrid", "--version"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("hybrid", run_name="__main__")
    assert exited.value.code == 0
    assert importlib.import_module("hybrid.__main__").main is main  # imported, it runs nothing


# -- startup failures: exit 3 with one line ----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.service_apps", "'tests.service_apps' is not MODULE:FACTORY (e.g. myapp.main:make_app)"),
        (":make_tree", "':make_tree' is not MODULE:FACTORY (e.g. myapp.main:make_app)"),
        ("tests.no_such_module:make", "cannot import 'tests.no_such_module': no module named 'tests.no_such_module'"),
        ("nosuchpackage.app:make", "cannot import 'nosuchpackage.app': no module named 'nosuchpackage'"),
        ("tests.service_apps:nope", "module 'tests.service_apps' has no attribute 'nope'"),
        ("tests.service_apps:App.nope", "module 'tests.service_apps' has no attribute 'App.nope'"),
        (
            "tests.service_apps:not_callable",
            "tests.service_apps:not_callable is 42 (an int), not a factory: "
            "give a function that returns an agent, or an Agent class",
        ),
        (
            "tests.service_apps:not_an_agent",
            "the factory tests.service_apps:not_an_agent returned 42 (an int), not a hybrid.Agent",
        ),
    ],
)
def test_a_bad_app_exits_3_with_one_clear_line(spec: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", spec) == ExitStatus.STARTUP_FAILED
    assert error_line(capsys) == message


def test_a_factory_that_raises_exits_3_naming_the_factory_and_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", "tests.service_apps:broken_factory") == ExitStatus.STARTUP_FAILED
    line = error_line(capsys)
    assert line.startswith("the factory tests.service_apps:broken_factory raised RuntimeError: no database (")
    assert "service_apps.py, line " in line


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('config missing')\n", "importing 'broken' raised RuntimeError: config missing ("),
        (
            "import nosuchdependency\n",
            "importing 'broken' raised ModuleNotFoundError: No module named 'nosuchdependency'",
        ),
        ("def make(:\n", "importing 'broken' raised SyntaxError: "),
    ],
)
def test_a_module_that_fails_to_import_exits_3_saying_where(
    source: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--app-dir puts the directory first on sys.path; an error inside the module is one line with its place."""
    (tmp_path / "broken.py").write_text(source)
    assert exit_status("run", "broken:make", "--app-dir", str(tmp_path)) == ExitStatus.STARTUP_FAILED
    line = error_line(capsys)
    assert line.startswith(message)
    assert "broken.py" in line


def test_app_dir_finds_a_module_outside_the_current_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "elsewhere.py").write_text("from tests.service_apps import Done as make\n")
    assert exit_status("run", "elsewhere:make", "--app-dir", str(tmp_path)) == ExitStatus.OK


def test_http_without_the_service_extra_exits_3_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "h11", None)
    assert exit_status("run", "tests.service_apps:make_tree", "--http", "0") == ExitStatus.STARTUP_FAILED
    assert error_line(capsys).endswith("pip install 'trio-hybrid[service]'")


def test_a_port_in_use_exits_3_naming_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert exit_status("run", "tests.service_apps:make_tree", "--http", f"127.0.0.1:{port}") == 3
    assert error_line(capsys) == f"cannot listen on 127.0.0.1:{port}: Address already in use"


def test_slow_step_watches_the_run_with_the_threshold_and_closes_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam: hybrid.slowsteps.watch(threshold) inside the run, before the root starts; close() at the end."""
    calls: list[object] = []

    class Watch:
        def close(self) -> None:
            calls.append("closed")

    def watch(threshold: float) -> Watch:
        calls.append((threshold, hybrid.snapshot().agents))  # before the root exists
        return Watch()

    monkeypatch.setattr(hybrid.slowsteps, "watch", watch)
    assert exit_status("run", "tests.service_apps:Done", "--slow-step", "0.5") == ExitStatus.OK
    assert calls == [(0.5, ()), "closed"]


def test_slow_step_logs_a_step_that_blocks_the_trio_thread(caplog: pytest.LogCaptureFixture) -> None:
    assert exit_status("run", "tests.service_apps:Blocking", "--slow-step", "0.05") == ExitStatus.OK
    [warning] = [r for r in caplog.records if r.name == "hybrid.slowsteps"]
    assert "Blocking-1" in warning.getMessage()


# -- running in process ---------------------------------------------------------------------


def test_sigusr1_logs_the_tree_and_sigterm_shuts_down_in_group_order(caplog: pytest.LogCaptureFixture) -> None:
    """In process: the first signal interrupts the root; the supervisor stops its groups greatest first; exit 0."""
    assert exit_status("run", "tests.service_apps:SelfStopping") == ExitStatus.OK
    log = caplog.text
    assert "SIGUSR1: the agents now:\nSelfStopping-1 (SelfStopping): events" in log
    assert "SIGTERM received: interrupting SelfStopping-1 (graceful shutdown" in log
    order = stopped_order(log)
    assert set(order[:2]) == {"SelfStopping-1/front", "SelfStopping-1/signaller"}
    assert set(order[2:5]) == {f"SelfStopping-1/workers/Worker-{n}" for n in (1, 2, 3)}
    assert order[5:] == ["SelfStopping-1/workers", "SelfStopping-1/store", "SelfStopping-1"]
    assert "SelfStopping-1 ended: interrupted" in log


def test_a_second_signal_cancels_everything_and_exits_130(caplog: pytest.LogCaptureFixture) -> None:
    """The class itself as the factory; SIGTERM starts a shutdown that would never end; SIGINT cuts it short."""
    assert exit_status("run", "tests.service_apps:CutShort") == ExitStatus.CUT_SHORT
    assert "SIGINT received again: cancelling everything" in caplog.text
    assert "CutShort-1 cut short: cancelled by a second signal" in caplog.text
    assert "stopped CutShort-1 (cancelled)" in caplog.text


def test_a_failing_root_exits_1_with_its_traceback_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    assert exit_status("run", "tests.service_apps:Failing") == ExitStatus.FAILED
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "Failing-1 failed: RuntimeError('the root failed on purpose')"
    assert record.exc_info is not None


def test_a_root_whose_helper_task_fails_exits_1(caplog: pytest.LogCaptureFixture) -> None:
    assert exit_status("run", "tests.service_apps:HelperFails") == ExitStatus.FAILED
    assert "HelperFails-1 failed: ExceptionGroup(" in caplog.text


def test_check_of_a_root_whose_helper_task_fails_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", "tests.service_apps:HelperFails", "--check") == ExitStatus.STARTUP_FAILED
    assert error_line(capsys, traceback=True).startswith("HelperFails-1 failed while ")


def test_a_root_that_ends_by_itself_exits_0() -> None:
    assert exit_status("run", "tests.service_apps:Done", "--log-level", "debug") == ExitStatus.OK


def test_json_logs_are_one_object_per_line_with_time_level_logger_and_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert exit_status("run", "tests.service_apps:Done", "--log-format", "json") == ExitStatus.OK
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("INFO", "hybrid.service", "running Done-1 (Done)"),
        ("INFO", "hybrid.service", "Done-1 ended: done"),
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", records[0]["time"])


def test_logging_is_left_as_it_was_found() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    exit_status("run", "tests.service_apps:Done", "--log-level", "ERROR")
    assert (root.handlers, root.level) == (handlers, level)


# -- --check -----------------------------------------------------------------------------------


def test_check_prints_the_built_tree_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", "tests.service_apps:make_tree", "--check") == ExitStatus.OK
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "App-1 (App): events, mailbox 0, 0 handled, 0 transitions",
        "  App-1/store (Store): events, mailbox 0, 0 handled, 0 transitions",
        "  App-1/workers (Workers): events, mailbox 0, 0 handled, 0 transitions",
        *[
            f"    App-1/workers/Worker-{n} (Worker): state Next.do_async(Worker.serve_jobs), "
            "mailbox 0/8, 0 handled, 1 transitions"
            for n in (1, 2, 3)
        ],
        "  App-1/front (Front): events, mailbox 0, 0 handled, 0 transitions",
    ]


def test_check_awaits_an_async_factory(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", "tests.service_apps:make_async", "--check") == ExitStatus.OK
    assert "App-1/workers/Worker-3" in capsys.readouterr().out


def test_check_of_a_root_whose_begin_fails_exits_3_after_logging_the_traceback(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert exit_status("run", "tests.service_apps:FailsToBegin", "--check") == ExitStatus.STARTUP_FAILED
    line = error_line(capsys, traceback=True)
    assert line == "FailsToBegin-1 failed while starting: RuntimeError('begin failed on purpose')"
    assert "begin failed on purpose" in caplog.text


def test_check_of_a_tree_where_a_child_fails_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", "tests.service_apps:FailingChild", "--check") == ExitStatus.STARTUP_FAILED
    assert error_line(capsys, traceback=True) == "1 agent(s) failed while the tree was built (see the log above)"


def test_check_of_a_root_that_ends_at_once_prints_an_empty_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status("run", "tests.service_apps:Done", "--check") == ExitStatus.OK
    assert capsys.readouterr().out == "\n"


async def test_check_gives_up_on_a_tree_still_starting_after_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(StartupError, match=r"still starting after 5s: never-run"):
        await check(NeverStarts(), timeout=5)


def test_json_formatter_writes_exceptions_stacks_and_extras_without_clobbering_its_fields() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x",
            logging.ERROR,
            "f.py",
            1,
            "failed %s",
            ("here",),
            sys.exc_info(),
            extra={"level": 7, "path": Path("/a")},
        )
    record.stack_info = "Stack (most recent call last):\n  here"
    data = json.loads(formatter.format(record))
    assert data["message"] == "failed here"
    assert data["level"] == "ERROR"
    assert data["extra.level"] == 7
    assert data["path"] == "/a"
    assert data["exc_info"].startswith("Traceback (most recent call last):")
    assert data["exc_info"].endswith("ValueError: boom")
    assert "here" in data["stack_info"]
    again = logging.LogRecord("x", logging.ERROR, "f.py", 1, "cached", (), None)
    again.exc_text = "Traceback: cached"
    assert json.loads(formatter.format(again))["exc_info"] == "Traceback: cached"


# -- the real thing: subprocesses -------------------------------------------------------------------


async def test_a_service_scraped_probed_then_stopped_by_sigterm_exits_0_after_its_ordered_shutdown(
    tmp_path: Path,
) -> None:
    """python -m hybrid run: /metrics parses, /health/ready turns 503 during the slow shutdown, exit 0."""
    release = tmp_path / "release"
    async with open_service(
        "tests.service_apps:make_slow", "--http", "127.0.0.1:0", env={RELEASE: str(release)}
    ) as svc:
        port = await svc.port()
        with trio.fail_after(30):
            while (await get(port, "/health/ready")).status != 200:  # noqa: ASYNC110 - probing, as Kubernetes does
                await trio.sleep(0.05)
        await svc.wait_for("running SlowApp-1")
        with trio.fail_after(30):
            while "App-1/workers/Worker-3 (Worker): state" not in await tree_text(port):  # noqa: ASYNC110
                await trio.sleep(0.05)
        metrics = await get(port, "/metrics")
        families = {family.name: family for family in text_string_to_metric_families(metrics.text)}
        agents = {(s.labels["agent_type"], s.labels["phase"]): s.value for s in families["hybrid_agents"].samples}
        assert agents[("Worker", "state")] == 3
        assert agents[("SlowApp", "events")] == 1
        svc.signal(signal.SIGTERM)
        await svc.wait_for("slow: shutting down")
        ready = await get(port, "/health/ready")
        assert (ready.status, ready.text) == (503, "stopping\n")
        assert (await get(port, "/health/live")).status == 200
        release.touch()
        assert await svc.exit_status() == 0
    log = svc.log
    assert "SIGTERM received: interrupting SlowApp-1 (graceful shutdown" in log
    order = stopped_order(log)
    assert set(order[:2]) == {"SlowApp-1/front", "SlowApp-1/slow"}
    assert set(order[2:5]) == {f"SlowApp-1/workers/Worker-{n}" for n in (1, 2, 3)}
    assert order[5:] == ["SlowApp-1/workers", "SlowApp-1/store", "SlowApp-1"]


async def test_a_second_signal_during_a_slow_shutdown_exits_130() -> None:
    async with open_service("tests.service_apps:make_slow") as svc:
        await svc.wait_for("running SlowApp-1")
        svc.signal(signal.SIGTERM)
        await svc.wait_for("slow: shutting down")
        svc.signal(signal.SIGINT)
        assert await svc.exit_status() == 130
    assert "SIGINT received again: cancelling everything" in svc.log


async def test_sigusr1_logs_the_text_tree_of_a_running_service() -> None:
    async with open_service("tests.service_apps:make_tree", "--log-format", "json") as svc:
        await svc.wait_for("running App-1")
        with trio.fail_after(30):
            while True:  # until the tree has started: one SIGUSR1, one tree logged, each time
                seen = len([line for line in svc.lines if "SIGUSR1" in line])
                svc.signal(signal.SIGUSR1)
                while len(trees := [line for line in svc.lines if "SIGUSR1" in line]) == seen:
                    await svc.changed.wait()
                record = json.loads(trees[-1])
                if "\n    App-1/workers/Worker-3 (Worker): state" in record["message"]:
                    break
        svc.signal(signal.SIGINT)
        assert await svc.exit_status() == 0
    assert record["logger"] == "hybrid.service"
    assert record["message"].startswith("SIGUSR1: the agents now:\nApp-1 (App): events")


async def test_a_failing_root_exits_1_and_its_traceback_appears_once() -> None:
    done = await run_cli("run", "tests.service_apps:Failing")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.count("Traceback (most recent call last)") == 1
    assert "RuntimeError: the root failed on purpose" in err


async def test_an_unknown_module_exits_3_with_one_line_on_stderr() -> None:
    done = await run_cli("run", "nosuchmodule:make")
    assert done.returncode == 3
    assert done.stderr.decode() == "hybrid: error: cannot import 'nosuchmodule': no module named 'nosuchmodule'\n"


async def test_check_in_a_subprocess_prints_the_tree_on_stdout() -> None:
    done = await run_cli("run", "tests.service_apps:make_tree", "--check")
    assert done.returncode == 0
    assert done.stdout.decode().startswith("App-1 (App): events")


async def test_tree_carries_the_state_diagrams_of_what_ran_unless_turned_off() -> None:
    async with open_service("tests.service_apps:make_tree", "--http", "127.0.0.1:0") as svc:
        port = await svc.port()
        await svc.wait_for("running App-1")
        with trio.fail_after(30):
            while "Worker" not in (diagrams := json.loads((await get(port, "/tree")).body)["diagrams"]):  # noqa: ASYNC110 - polling another process over HTTP
                await trio.sleep(0.05)
        svc.signal(signal.SIGINT)
        assert await svc.exit_status() == 0
    assert diagrams["Worker"].startswith("stateDiagram-v2\n    [*] --> ")
    async with open_service("tests.service_apps:make_tree", "--http", "127.0.0.1:0", "--no-diagrams") as svc:
        port = await svc.port()
        await svc.wait_for("running App-1")
        assert json.loads((await get(port, "/tree")).body)["diagrams"] == {}
        svc.signal(signal.SIGINT)
        assert await svc.exit_status() == 0
