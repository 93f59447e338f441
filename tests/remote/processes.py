"""Node processes for the remote tests: a real process to kill, stop or race."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tests.remote.nats import NatsServer

ROOT = Path(__file__).parents[2]


@asynccontextmanager
async def node_process(server: NatsServer, node: str, *names: str) -> AsyncGenerator[trio.Process]:
    """A node process serving a `Counter` under each of `names`; ready when yielded, ended after."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.remote.node_process", server.url, node, *names],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            seen = b""
            while b"ready" not in seen:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the node process ended before it was ready (code {process.poll()})"
                seen += chunk
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            await process.wait()
