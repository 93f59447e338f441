"""Opening a SQLite store while another process opens it: a lock SQLite does not wait for is waited for here."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hybrid.durable import StoreError
from hybrid.durable._sqlite import SqliteBackend


def locked_then_open(
    monkeypatch: pytest.MonkeyPatch, backend: SqliteBackend, refusals: int, error: str = "database is locked"
) -> list[int]:
    """Make the backend's first `refusals` attempts fail as a concurrent opener's lock makes them fail."""
    attempts: list[int] = []
    real = backend._open_once

    def attempt() -> None:
        attempts.append(len(attempts))
        if len(attempts) <= refusals:
            raise StoreError(f"cannot open: {error}") from sqlite3.OperationalError(error)
        real()

    monkeypatch.setattr(backend, "_open_once", attempt)
    return attempts


def test_a_store_opened_while_another_process_holds_the_lock_tries_again_until_it_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SqliteBackend(str(tmp_path / "x.db"), busy_timeout_ms=5000)
    attempts = locked_then_open(monkeypatch, backend, refusals=3)
    backend.open()
    assert len(attempts) == 4
    backend.close()


def test_a_lock_held_past_the_busy_timeout_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SqliteBackend(str(tmp_path / "x.db"), busy_timeout_ms=50)
    attempts = locked_then_open(monkeypatch, backend, refusals=10_000)
    with pytest.raises(StoreError, match="database is locked"):
        backend.open()
    assert 2 <= len(attempts) < 100


def test_other_errors_are_not_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SqliteBackend(str(tmp_path / "x.db"), busy_timeout_ms=5000)
    attempts = locked_then_open(monkeypatch, backend, refusals=10_000, error="disk I/O error")
    with pytest.raises(StoreError, match="disk I/O error"):
        backend.open()
    assert len(attempts) == 1
