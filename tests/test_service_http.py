"""Service mode's HTTP endpoints, in process: what each serves, and the limits that protect the agents."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import struct
import sys
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import hybrid
import hybrid.diagrams
import hybrid.metrics
from hybrid.service import ExitStatus, HttpLimits, Serving, serve
from hybrid.service._http import HttpServer, Response
from hybrid.service._page import PAGE
from hybrid.service._serve import _Service, _Stage
from tests.service_apps import RELEASE, App, Done, SlowApp
from tests.service_process import RawClient, fetch, get, open_raw, parse_response


@attrs.define
class Running:
    """A service started in the test's trio run: where it listens, and its exit status once it has ended."""

    serving: Serving
    status: list[int]
    stopped: bool = False

    def stop(self) -> None:
        """Interrupt the root once (a second interrupt would cut its shutdown short)."""
        if not self.stopped:
            self.stopped = True
            self.serving.root.interrupt()

    @property
    def port(self) -> int:
        assert self.serving.http is not None
        return self.serving.http[1]


@asynccontextmanager
async def running(root: hybrid.Agent[Any], **options: Any) -> AsyncGenerator[Running]:
    """`serve` on a free loopback port, signals left alone; the root is interrupted at the end of the block."""
    options.setdefault("registry", CollectorRegistry())
    status: list[int] = []

    async def run(task_status: trio.TaskStatus[Serving]) -> None:
        status.append(
            await serve(root, http=("127.0.0.1", 0), handle_signals=False, task_status=task_status, **options)
        )

    async with trio.open_nursery() as nursery:
        service = Running(await nursery.start(run), status)
        await trio.testing.wait_all_tasks_blocked()  # the whole tree has started
        yield service
        service.stop()
    assert status, "serve() did not return"


def handled(name: str) -> int:
    """Messages handled so far by the live agent `name`."""
    return next(info.messages_handled for info in hybrid.snapshot().walk() if info.name == name)


REQUEST = b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n"


# -- the endpoints ---------------------------------------------------------------


async def test_metrics_are_prometheus_text_of_the_pinned_families_labelled_by_class() -> None:
    """GET /metrics: the latest exposition format, parsed back by prometheus-client's own parser."""
    registry = CollectorRegistry()
    async with running(App(), registry=registry) as service:
        reply = await get(service.port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    families = {family.name: family for family in text_string_to_metric_families(reply.text)}
    agents = {
        (sample.labels["agent_type"], sample.labels["phase"]): sample.value
        for sample in families["hybrid_agents"].samples
    }
    assert agents[("Worker", "state")] == 3
    assert agents[("App", "events")] == 1
    for name in ("hybrid_messages_handled", "hybrid_transitions", "hybrid_failures", "hybrid_restarts"):
        assert families[name].type == "counter"
        assert {sample.labels["agent_type"] for sample in families[name].samples} >= {"App", "Worker", "Front"}
    assert "App-1" not in reply.text  # labels are classes, never agent names
    assert list(registry.collect()) == []  # its collector was unregistered when serve() ended


async def test_by_default_metrics_come_from_the_global_registry_with_the_process_families() -> None:
    """Without a registry, /metrics is prometheus-client's REGISTRY, hybrid's collector in it only while serving."""
    async with running(App(), registry=None) as service:
        text = (await get(service.port, "/metrics")).text
    assert "hybrid_agents{" in text
    assert "python_info{" in text
    assert "hybrid_agents" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()


async def test_a_registry_holding_hybrid_families_already_is_a_startup_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """serve() registers the collector itself: a registry that has one is refused on one line, status 3."""
    registry = CollectorRegistry()
    hybrid.metrics.register(registry)
    status = await serve(App(), http=("127.0.0.1", 0), registry=registry, handle_signals=False)
    assert status == ExitStatus.STARTUP_FAILED
    assert "metric families are registered already" in caplog.text
    assert "Traceback" not in caplog.text


async def test_live_answers_while_the_loop_runs_and_ready_turns_503_during_a_graceful_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/health/ready: 200 while the root runs, 503 once it is stopping (live stays 200), and serve() returns 0."""
    release = tmp_path / "release"
    monkeypatch.setenv(RELEASE, str(release))
    async with running(SlowApp()) as service:
        assert (await get(service.port, "/health/live")).text == "live\n"
        ready = await get(service.port, "/health/ready")
        assert (ready.status, ready.text) == (200, "ready\n")
        service.stop()
        with trio.fail_after(30):
            while (ready := await get(service.port, "/health/ready")).status == 200:  # noqa: ASYNC110 - polling is the point
                await trio.sleep(0.01)
        assert (ready.status, ready.text) == (503, "stopping\n")
        assert json.loads((await get(service.port, "/tree")).body)["status"] == "stopping"
        assert (await get(service.port, "/health/live")).status == 200
        release.touch()
    assert service.status == [ExitStatus.OK]


async def test_the_tree_is_the_snapshot_as_json_with_the_status_and_no_diagrams_by_default() -> None:
    """GET /tree: {"status", "agents", "counters", "diagrams"}; the agents nest as the snapshot does."""
    async with running(App()) as service:
        reply = await get(service.port, "/tree")
    assert reply.headers["content-type"] == "application/json"
    tree = json.loads(reply.body)
    assert list(tree) == ["status", "agents", "counters", "diagrams"]
    assert tree["status"] == "ready"
    assert tree["diagrams"] == {}
    [root] = tree["agents"]
    assert root["name"] == "App-1"
    assert [child["name"] for child in root["children"]] == ["App-1/store", "App-1/workers", "App-1/front"]
    workers = root["children"][1]["children"]
    assert [(w["class"], w["phase"], w["state"], w["mailbox_capacity"]) for w in workers] == [
        ("Worker", "state", "Next.do_async(Worker.serve_jobs)", 8)
    ] * 3


async def test_the_tree_carries_the_diagrams_a_diagram_source_gives_for_the_snapshot() -> None:
    """The seam for state diagrams: a callable asked at each /tree, its mapping served under "diagrams"."""
    recorder = hybrid.diagrams.StateDiagrams()
    hybrid.add_instrument(recorder)
    async with running(App(), diagrams=recorder.as_dict) as service:
        tree = json.loads((await get(service.port, "/tree")).body)
    hybrid.remove_instrument(recorder)
    assert tree["diagrams"]["Worker"] == "stateDiagram-v2\n    [*] --> serve_jobs"
    assert tree["diagrams"]["Front"] == "stateDiagram-v2\n    [*] --> events"


async def test_a_failing_diagram_source_costs_the_diagrams_only_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tree is still served, without diagrams; the failure is logged once, not at every refresh."""

    def diagrams() -> Mapping[str, str]:
        raise RuntimeError("no diagrams today")

    async with running(App(), diagrams=diagrams) as service:
        for _ in range(3):
            reply = await get(service.port, "/tree")
            assert reply.status == 200
            assert json.loads(reply.body)["diagrams"] == {}
    assert caplog.text.count("/tree is served without diagrams") == 1


async def test_the_page_is_served_as_html_under_a_strict_content_security_policy() -> None:
    """GET /: the live page; its CSP allows its own inline code and requests to its own origin only."""
    async with running(App()) as service:
        reply = await get(service.port, "/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers["content-security-policy"].startswith("default-src 'none'; script-src 'unsafe-inline'")
    assert reply.text == PAGE


async def test_head_gives_the_headers_of_get_without_the_body() -> None:
    """HEAD /metrics: same status and Content-Length as GET, no body; the connection stays usable."""
    async with running(App()) as service, open_raw(service.port) as client:
        await client.send(b"HEAD /health/live HTTP/1.1\r\nHost: test\r\n\r\n" + REQUEST)
        head = parse_response(await client.read_response(head=True))
        after = parse_response(await client.read_response())
    assert (head.status, head.headers["content-length"], head.body) == (200, "5", b"")
    assert (after.status, after.body) == (200, b"live\n")


async def test_other_methods_get_405_with_allow_unknown_paths_404_and_queries_are_ignored() -> None:
    """POST without a body: 405 (and the connection lives on); /nope: 404; /health/live?x=1 is /health/live."""
    async with running(App()) as service:
        assert (await get(service.port, "/nope")).status == 404
        assert (await get(service.port, "/health/live?verbose=1")).status == 200
        async with open_raw(service.port) as client:
            await client.send(b"DELETE /tree HTTP/1.1\r\nHost: test\r\n\r\n" + REQUEST)
            refused = parse_response(await client.read_response())
            after = parse_response(await client.read_response())
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD")
    assert after.status == 200


async def test_a_request_with_a_body_is_refused_with_413_and_the_connection_closed() -> None:
    """GET only: a body is never read; the server says so and closes (its unread body would desync the stream)."""
    async with running(App()) as service, open_raw(service.port) as client:
        await client.send(b"POST /tree HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        reply = parse_response(await client.read_until_closed())
    assert reply.status == 405
    assert reply.headers["connection"] == "close"
    chunked = b"GET /tree HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    async with running(App()) as service, open_raw(service.port) as client:
        await client.send(chunked)
        reply = parse_response(await client.read_until_closed())
    assert (reply.status, reply.headers["connection"]) == (413, "close")


async def test_keep_alive_serves_several_requests_on_one_connection_until_connection_close() -> None:
    """Pipelined requests are answered in order; `Connection: close` is honoured after its response."""
    async with running(App()) as service, open_raw(service.port) as client:
        await client.send(REQUEST * 3 + b"GET /health/ready HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        data = await client.read_until_closed()
    assert data.count(b"HTTP/1.1 200 OK") == 4
    assert data.endswith(b"ready\n")


async def test_an_http_1_0_request_is_answered_then_closed() -> None:
    async with running(App()) as service, open_raw(service.port) as client:
        await client.send(b"GET /health/live HTTP/1.0\r\n\r\n")
        reply = parse_response(await client.read_until_closed())
    assert (reply.status, reply.body) == (200, b"live\n")


async def test_a_malformed_request_gets_400_and_a_close() -> None:
    async with running(App()) as service, open_raw(service.port) as client:
        await client.send(b"GET /health/live HTTP/1.1\r\nHost: test\r\nbad header line\r\n\r\n")
        reply = parse_response(await client.read_until_closed())
    assert (reply.status, reply.headers["connection"]) == (400, "close")


async def test_a_huge_header_gets_431_and_a_close_after_at_most_the_bound_is_buffered() -> None:
    """max_header_bytes bounds the head h11 buffers: a megabyte of header is refused, not stored."""
    async with running(App(), limits=HttpLimits(max_header_bytes=4096)) as service, open_raw(service.port) as client:

        async def flood() -> None:
            try:
                await client.send(b"GET /tree HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 1_000_000)
                await client.stream.send_eof()
            except trio.BrokenResourceError:
                pass  # the server closed on us: fine

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            reply = parse_response(await client.read_until_closed())
    assert reply.status == 431
    assert reply.headers["connection"] == "close"


async def test_a_client_resetting_mid_request_costs_nothing_but_its_connection() -> None:
    """A reset (RST) in the middle of a request head: the server drops the connection and serves the next client."""
    async with running(App()) as service:
        client = await RawClient.connect(service.port)
        await client.send(b"GET /health/live HTTP/1.1\r\nHo")
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()  # SO_LINGER 0: the close is a reset
        assert (await get(service.port, "/health/live")).status == 200


# -- the limits, on simulated time ---------------------------------------------------


async def test_a_silent_connection_is_closed_after_the_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with running(App(), limits=HttpLimits(idle_timeout=7)) as service, open_raw(service.port) as client:
        opened = trio.current_time()
        assert await client.read_until_closed() == b""
        assert trio.current_time() - opened >= 7  # simulated time: the close came at the timeout, not before


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout_once_its_response_was_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(App(), limits=HttpLimits(idle_timeout=7)) as service, open_raw(service.port) as client:
        await client.send(REQUEST)
        assert parse_response(await client.read_response()).status == 200
        assert await client.read_until_closed() == b""


async def test_a_client_trickling_a_request_gets_408_at_the_request_timeout_while_the_agents_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Slowloris: one byte a second never completes a request within request_timeout; the ticker never waits."""
    limits = HttpLimits(idle_timeout=5, request_timeout=20)
    async with running(App(), limits=limits) as service:
        ticks = handled("App-1/front")
        received: list[bytes] = []
        async with open_raw(service.port) as client:

            async def read() -> None:
                received.append(await client.read_until_closed())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for byte in b"GET /health/live HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                    if received:
                        break
                    with contextlib.suppress(trio.BrokenResourceError):
                        await client.send(bytes([byte]))
                    await trio.sleep(1)
        assert handled("App-1/front") > ticks + 100  # 20 ticks a second: they went on meanwhile
    reply = parse_response(received[0])
    assert (reply.status, reply.headers["connection"]) == (408, "close")


async def test_a_slow_client_and_a_thousand_idle_connections_never_stall_the_agents_or_other_clients(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1000 idle connections and a client sending a byte a second: the agents tick, other clients are answered."""
    limits = HttpLimits(max_connections=1100, idle_timeout=3600, request_timeout=600)
    async with running(App(), limits=limits) as service:
        idle = [await RawClient.connect(service.port) for _ in range(1000)]
        slow = await RawClient.connect(service.port)
        for byte in REQUEST[:-1]:
            ticks = handled("App-1/front")
            await slow.send(bytes([byte]))
            await trio.sleep(1)
            assert handled("App-1/front") > ticks  # the ticker made progress during that second
            assert (await fetch(service.port, "/health/live")).status == 200  # and another client was served
        await slow.send(REQUEST[-1:])
        assert parse_response(await slow.read_response()).status == 200
        await idle[0].send(REQUEST)  # the idle ones are still open and usable
        assert parse_response(await idle[0].read_response()).status == 200
        for client in [*idle, slow]:
            await client.aclose()


async def test_beyond_the_connection_limit_new_connections_are_closed_at_once_until_one_ends(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit policy: refuse (close) rather than queue; one WARNING per time the limit is reached."""
    async with running(App(), limits=HttpLimits(max_connections=3, idle_timeout=3600)) as service:
        held = [await RawClient.connect(service.port) for _ in range(3)]
        for client in held:  # each is being served (a round trip proves the server counted it)
            await client.send(REQUEST)
            await client.read_response()
        for _ in range(2):
            extra = await RawClient.connect(service.port)
            assert await extra.read_until_closed() == b""
            await extra.aclose()
        await held.pop().aclose()
        with trio.fail_after(10):
            while (reply := await fetch_or_none(service.port)) is None:  # noqa: ASYNC110 - until the server counted the close
                await trio.sleep(0.1)
        assert reply.status == 200
        for client in held:
            await client.aclose()
    assert caplog.text.count("the limit: closing new connections") == 1


async def fetch_or_none(port: int) -> Any:
    try:
        return await fetch(port, "/health/live")
    except (AssertionError, trio.BrokenResourceError):
        return None


async def test_a_client_that_never_reads_its_responses_is_dropped_after_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pipelined requests whose responses pile up unread: sending times out and the connection is closed."""
    limits = HttpLimits(request_timeout=30, idle_timeout=3600)
    async with running(App(), limits=limits) as service, open_raw(service.port) as client:
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with trio.move_on_after(60):
            try:
                while True:  # until the server stops reading: its sends are stuck
                    await client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n" * 100)
            except trio.BrokenResourceError:
                pass
        assert (await fetch(service.port, "/health/live")).status == 200
        with trio.fail_after(120):
            await client.read_until_closed()  # the server gave up on it


# -- the server's own failures --------------------------------------------------------


async def serve_app(app: Callable[[str], Response], task_status: trio.TaskStatus[int]) -> None:
    server = await HttpServer.open("127.0.0.1", 0, app, HttpLimits())
    task_status.started(server.port)
    try:
        await server.serve()
    finally:
        await server.aclose()


async def test_a_route_that_raises_is_answered_500_and_logged_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def app(path: str) -> Response:
        if path == "/bad":
            raise ValueError("a bug")
        return Response(200, b"fine\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_app, app)
        assert (await get(port, "/bad")).status == 500
        assert (await get(port, "/good")).text == "fine\n"
        nursery.cancel_scope.cancel()
    assert "GET /bad failed" in caplog.text
    assert "ValueError: a bug" in caplog.text


async def test_a_failure_outside_any_route_costs_one_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    """An impossible response (status 99) fails its connection; the server is still there for the next."""

    def app(path: str) -> Response:
        return Response(99 if path == "/bad" else 200, b"")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_app, app)
        async with open_raw(port) as client:
            await client.send(b"GET /bad HTTP/1.1\r\nHost: test\r\n\r\n")
            assert await client.read_until_closed() == b""
            assert (await get(port, "/good")).status == 200
            nursery.cancel_scope.cancel()
    assert "an HTTP connection failed" in caplog.text


async def test_if_the_http_server_itself_fails_the_agents_go_on_without_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: HttpServer) -> None:
        raise OSError("the listener broke")

    monkeypatch.setattr(HttpServer, "serve", broken)
    async with running(App()) as service:
        await trio.testing.wait_all_tasks_blocked()
        assert service.serving.root.is_alive
    assert service.status == [ExitStatus.OK]
    assert "the HTTP server failed; the agents go on without it" in caplog.text


# -- starting -----------------------------------------------------------------------


async def test_a_port_in_use_is_a_startup_failure_naming_the_address(caplog: pytest.LogCaptureFixture) -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        root = App()
        status = await serve(root, http=("127.0.0.1", port), registry=CollectorRegistry(), handle_signals=False)
    assert status == ExitStatus.STARTUP_FAILED
    [record] = [r for r in caplog.records if r.name == "hybrid.service"]
    assert record.getMessage() == f"cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert record.exc_info is None
    assert hybrid.snapshot().agents == ()  # the root never ran, and its name is free again


async def test_without_the_service_extra_http_is_a_startup_failure_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "hybrid.service._http", None)
    status = await serve(App(), http=("127.0.0.1", 0), handle_signals=False)
    assert status == ExitStatus.STARTUP_FAILED
    assert "pip install 'trio-hybrid[service]'" in caplog.text


async def test_the_endpoints_listen_on_every_interface_for_an_empty_host(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hybrid.service")
    async with trio.open_nursery() as nursery:
        serving = await nursery.start(
            functools.partial(serve, App(), http=("", 0), registry=CollectorRegistry(), handle_signals=False)
        )
        assert serving.http is not None
        host, port = serving.http
        assert (await get(port, "/health/live", host="::1" if ":" in host else "127.0.0.1")).status == 200
        serving.root.interrupt()
    assert "serving http://0.0.0.0:" in caplog.text


async def test_serve_refuses_what_is_not_an_agent_and_a_bad_slow_step() -> None:
    with pytest.raises(TypeError, match="serve\\(\\) runs a hybrid.Agent"):
        await serve(42, handle_signals=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slow_step"):
        await serve(App(), slow_step=0, handle_signals=False)


async def test_an_agent_that_already_ran_cannot_be_served(caplog: pytest.LogCaptureFixture) -> None:
    done = Done()
    await done.run()
    assert await serve(done, handle_signals=False) == ExitStatus.STARTUP_FAILED
    assert "cannot start: cannot run Done: " in caplog.text


async def test_ready_says_starting_before_the_root_has_begun_and_ended_once_it_has_ended() -> None:
    """The readiness status through the service's life (what /health/ready and /tree report)."""
    root = Done()
    runner = hybrid.AgentRunner(root)
    service = _Service(root, runner.address)
    assert service.status() == "starting"
    service.stage = _Stage.RUNNING
    await runner.run()
    assert service.status() == "ended"


def test_http_limits_refuse_bounds_that_are_not_positive() -> None:
    bounds: list[dict[str, Any]] = [{"max_connections": 0}, {"idle_timeout": 0.0}, {"request_timeout": float("inf")}]
    for bad in bounds:
        with pytest.raises(ValueError, match="HttpLimits"):
            HttpLimits(**bad)
    with pytest.raises(ValueError, match="max_header_bytes"):
        HttpLimits(max_header_bytes=True)
