"""Fixtures of the durable tests: a journal URL per backend, and a real Postgres server.

``journal_url`` is parametrized with ids ``sqlite`` (a file in ``tmp_path``) and
``postgres`` (a fresh schema on the session's server), so that every test
taking it runs against both databases.

The Postgres server is started once per session (see ``tests/durable/postgres.py``).
Without one on this machine, the ``postgres`` tests skip, with the reason, when
run locally, and fail in CI (the environment variable ``CI`` is set): CI must
test both backends.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.durable.postgres import PostgresServer, find_bindir, missing_reason, running_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Generator[PostgresServer]:
    """A Postgres server for the session: started on first use, stopped at the end."""
    reason = missing_reason()
    bindir = find_bindir()
    if reason is not None or bindir is None:
        message = reason or "no Postgres server found"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Postgres tests: {message}")
        pytest.skip(message)
    with running_postgres(bindir) as server:
        yield server


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite store URL, for the tests that do not depend on the database."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty journal: a SQLite file, or a fresh schema on the Postgres server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'journal.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_schema_url()
