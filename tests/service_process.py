"""Helpers of the service-mode tests: the CLI as a subprocess, and real HTTP clients.

`Service` runs ``python -m hybrid run ...`` from the repository root and
reads its log as it comes; `get` is the standard library's ``http.client``
run in a worker thread; `RawClient` is a bare trio socket for the requests a
well-behaved client would never send.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

ROOT = Path(__file__).parent.parent
PATIENCE = 30.0
"""Upper bound, in seconds, on anything a test waits for (a slow, noisy machine)."""
SERVING = re.compile(r"hybrid\.service: serving http://([\d.]+):(\d+)")


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def _get(port: int, path: str, method: str, host: str) -> Reply:
    connection = http.client.HTTPConnection(host, port, timeout=PATIENCE)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


async def get(port: int, path: str, method: str = "GET", host: str = "127.0.0.1") -> Reply:
    """One request with http.client, in a worker thread (so the trio loop, maybe the server's, stays free)."""
    return await trio.to_thread.run_sync(_get, port, path, method, host)


class Service:
    """``python -m hybrid run SPEC ARGS...`` as a subprocess, its stderr read line by line as it comes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.changed = trio.Event()
        self.stdout = b""

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        async for chunk in self.process.stderr:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines += [line.decode(errors="replace") for line in complete]
            self.changed.set()
            self.changed = trio.Event()
        if pending:
            self.lines.append(pending.decode(errors="replace"))
        self.changed.set()

    async def read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self.stdout += chunk

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """The first log line matching `pattern`, waiting for it (at most PATIENCE seconds)."""
        with trio.fail_after(PATIENCE):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    found = re.search(pattern, line)
                    if found is not None:
                        return found
                seen = len(self.lines)
                if self.process.returncode is not None:
                    raise AssertionError(f"the service exited ({self.process.returncode}) first:\n{self.log}")
                await self.changed.wait()

    async def port(self) -> int:
        return int((await self.wait_for(SERVING)).group(2))

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def exit_status(self) -> int:
        with trio.fail_after(PATIENCE):
            return await self.process.wait()


@asynccontextmanager
async def open_service(spec: str, *args: str, env: dict[str, str] | None = None) -> AsyncGenerator[Service]:
    """Run the CLI on `spec` for the duration of the block (killed if still running at its end)."""
    command = [sys.executable, "-m", "hybrid", "run", spec, *args]
    environment = {**os.environ, **(env or {})}
    process = await trio.lowlevel.open_process(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    service = Service(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.read_stderr)
            nursery.start_soon(service.read_stdout)
            try:
                yield service
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(PATIENCE):
                    await process.wait()
    finally:
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


async def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    """``python -m hybrid ARGS...`` to its end, with its output captured."""
    with trio.fail_after(PATIENCE * 2):
        return await trio.run_process(
            [sys.executable, "-m", "hybrid", *args], cwd=cwd, capture_stdout=True, capture_stderr=True, check=False
        )


class RawClient:
    """A bare TCP connection: for partial, oversized, pipelined or trickled requests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.received = b""

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection (a reset counts as a close)."""
        try:
            while chunk := await self.stream.receive_some(65536):
                self.received += chunk
        except trio.BrokenResourceError:
            pass
        return self.received

    async def read_response(self, *, head: bool = False) -> bytes:
        """One complete response off the connection: its head, and its Content-Length body unless `head`."""
        while b"\r\n\r\n" not in self.received:
            chunk = await self.stream.receive_some(65536)
            assert chunk, f"closed before a response: {self.received!r}"
            self.received += chunk
        top, _, rest = self.received.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)content-length: (\d+)", top)
        assert found is not None, top
        length = 0 if head else int(found.group(1))
        while len(rest) < length:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "closed in the middle of a body"
            rest += chunk
        response, self.received = top + b"\r\n\r\n" + rest[:length], rest[length:]
        return response

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def open_raw(port: int) -> AsyncGenerator[RawClient]:
    """A `RawClient` connected to 127.0.0.1:`port` for the duration of the block."""
    client = await RawClient.connect(port)
    try:
        yield client
    finally:
        await client.aclose()


def parse_response(data: bytes) -> Reply:
    """A raw HTTP/1.1 response -> Reply (the body as sent; for a HEAD, empty)."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return Reply(int(status_line.split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body)


async def fetch(port: int, path: str, method: str = "GET", headers: str = "") -> Reply:
    """One request on a fresh trio connection (for simulated time, where a thread would let the clock jump)."""
    async with open_raw(port) as client:
        await client.send(f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
        return parse_response(await client.read_response(head=method == "HEAD"))
