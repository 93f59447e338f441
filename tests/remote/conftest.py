"""Fixtures of the remote tests: a real NATS server per test.

``nats_server`` is a fresh ``nats-server -js`` on a free loopback port (see
``tests/remote/nats.py``), stopped and deleted after the test; a test may stop,
restart, kill or pause it. Without a server binary on this machine (or with one
older than 2.11), the tests skip, with the reason, when run locally, and fail in
CI (the environment variable ``CI`` is set): CI must run them.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.remote.nats import NatsServer, discard, find_binary, missing_reason, new_server


@pytest.fixture(scope="session")
def nats_binary() -> Path:
    """The ``nats-server`` program, checked once per session."""
    reason = missing_reason()
    binary = find_binary()
    if reason is not None or binary is None:
        message = reason or "no nats-server found"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the remote tests: {message}")
        pytest.skip(message)
    return binary


@pytest.fixture
def nats_server(nats_binary: Path) -> Generator[NatsServer]:
    """A NATS server of the test's own, with JetStream: started now, stopped and deleted at the end."""
    server = new_server(nats_binary)
    try:
        yield server
    finally:
        discard(server)
