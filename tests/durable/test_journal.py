"""The journal: claims, fenced checkpoints, endings, group commit, the event log, retention, failures.

Every test taking ``journal_url`` runs on SQLite and on a real Postgres server.
Run as a program (``python -m tests.durable.test_journal URL KEYS``), this
module is the child that the SIGKILL test kills while it writes.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hybrid.durable._errors import Fenced, StoreError
from hybrid.durable._journal import Journal, Pending, open_journal
from hybrid.durable._records import Checkpoint, Claim, Ending, Event, Status, StepKind
from hybrid.durable._sql import SCHEMA_VERSION, Cursor
from tests.durable.gates import WriterGate
from tests.durable.postgres import PostgresServer
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def checkpoint(key: str, seq: int, *, epoch: int = 1, state: str = "step") -> Checkpoint:
    """A checkpoint of `key` whose payload tells its seq."""
    return Checkpoint(key, epoch, seq, "Agent", 1, StepKind.ASYNC, state, payload_of(key, seq))


def payload_of(key: str, seq: int) -> bytes:
    """A payload that a torn or mixed-up write could not pass for (it carries its own hash)."""
    body = f"{key}:{seq}:".encode() * 40
    return body + hashlib.sha256(body).digest()


async def claim(journal: Journal, key: str) -> Claim:
    """Claim `key` with a BEGIN spawn record."""
    return await journal.claim(key, agent_class="Agent", version=1, kind=StepKind.BEGIN, state="", payload=b"spawn")


async def outcome_of(fn: Callable[..., Awaitable[object]], *args: Any) -> object:
    """What awaiting ``fn(*args)`` returned, or the exception it raised."""
    try:
        return await fn(*args)
    except Exception as error:
        return error


async def wait_queued(journal: Journal, count: int) -> None:
    """Wait until every task is parked, then check that `count` requests are queued for the next batch."""
    await trio.testing.wait_all_tasks_blocked()
    assert journal._statistics().queued == count


# -- claims ---------------------------------------------------------------------


async def test_claiming_a_new_key_writes_its_spawn_record_under_epoch_1(journal_url: str) -> None:
    """A first claim inserts the key running at epoch 1, seq 0, and logs "spawned"."""
    async with open_journal(journal_url) as journal:
        assert await claim(journal, "k") == Claim(epoch=1, checkpoint=None, ending=None)
        assert await journal.checkpoint("k") == Checkpoint("k", 1, 0, "Agent", 1, StepKind.BEGIN, "", b"spawn")
        [event] = await journal.events("k")
        assert (event.kind, event.epoch, event.seq, event.state, event.detail) == ("spawned", 1, 0, "", "")


async def test_claiming_an_unfinished_key_takes_the_next_epoch_and_returns_its_checkpoint(journal_url: str) -> None:
    """A second claim bumps the epoch, ignores the given record, returns the latest checkpoint, logs "resumed"."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        await journal.save(checkpoint("k", 1))
        again = await journal.claim("k", agent_class="Other", version=9, kind=StepKind.BEGIN, state="", payload=b"x")
        assert again == Claim(epoch=2, checkpoint=checkpoint("k", 1, epoch=2), ending=None)
        assert (await claim(journal, "k")).epoch == 3
        assert [(e.kind, e.epoch, e.seq) for e in await journal.events("k")] == [
            ("spawned", 1, 0),
            ("async", 1, 1),
            ("resumed", 2, 1),
            ("resumed", 3, 1),
        ]


async def test_claiming_a_finished_key_returns_its_ending_and_changes_nothing(journal_url: str) -> None:
    """A finished key is not claimed again: its last epoch and its ending come back."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        await journal.finish("k", 1, 1, Ending(Status.DONE, b"out", None))
        before = await journal.events("k")
        assert await claim(journal, "k") == Claim(epoch=1, checkpoint=None, ending=Ending(Status.DONE, b"out", None))
        assert await journal.events("k") == before
        assert await journal.checkpoint("k") is None


# -- checkpoints and fencing ---------------------------------------------------------


async def test_save_replaces_the_checkpoint_and_logs_the_transition(journal_url: str) -> None:
    """Each save replaces the row's checkpoint and appends an event of its kind and state."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        await journal.save(checkpoint("k", 1, state="charge"))
        await journal.save(checkpoint("k", 2, state="ship"))
        assert await journal.checkpoint("k") == checkpoint("k", 2, state="ship")
        events = await journal.events("k")
        assert [(e.kind, e.seq, e.state) for e in events[1:]] == [("async", 1, "charge"), ("async", 2, "ship")]
        assert events[0].time <= events[1].time <= events[2].time


async def test_a_save_of_a_stale_epoch_is_fenced(journal_url: str) -> None:
    """Once a newer incarnation claimed the key, the older one's checkpoint is refused and changes nothing."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        await claim(journal, "k")
        with pytest.raises(Fenced, match="newer incarnation"):
            await journal.save(checkpoint("k", 5, epoch=1))
        with pytest.raises(Fenced, match="never claimed"):
            await journal.save(checkpoint("k", 5, epoch=3))
        assert (await journal.checkpoint("k") or checkpoint("?", 0)).seq == 0


async def test_a_save_whose_seq_is_not_above_the_row_is_fenced(journal_url: str) -> None:
    """A checkpoint at or below the row's seq is refused: an old write never overwrites a newer one."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        await journal.save(checkpoint("k", 3))
        for seq in (3, 2):
            with pytest.raises(Fenced, match="at seq 3"):
                await journal.save(checkpoint("k", seq))
        assert await journal.checkpoint("k") == checkpoint("k", 3)


async def test_writes_to_a_finished_or_unknown_key_are_fenced(journal_url: str) -> None:
    """A finished key takes no checkpoint and no second ending; an unknown key takes nothing."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        await journal.finish("k", 1, 1, Ending(Status.STOPPED, None, None))
        with pytest.raises(Fenced, match="already ended"):
            await journal.save(checkpoint("k", 2))
        with pytest.raises(Fenced, match="already ended"):
            await journal.finish("k", 1, 2, Ending(Status.DONE, b"", None))
        with pytest.raises(Fenced, match="no row"):
            await journal.save(checkpoint("nobody", 1))
        assert await journal.ending("k") == Ending(Status.STOPPED, None, None)


async def test_finish_records_the_output_or_the_failure_and_logs_it(journal_url: str) -> None:
    """The ending replaces the checkpoint; "done" and "failed" are logged, with the error text as detail."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "ok")
        await claim(journal, "bad")
        await journal.finish("ok", 1, 1, Ending(Status.DONE, b"shipped", None))
        await journal.finish("bad", 1, 1, Ending(Status.FAILED, None, "ValueError: no stock"))
        assert await journal.ending("ok") == Ending(Status.DONE, b"shipped", None)
        assert await journal.ending("bad") == Ending(Status.FAILED, None, "ValueError: no stock")
        assert await journal.checkpoint("ok") is None
        assert await journal.ending("nobody") is None
        [*_, failed] = await journal.events("bad")
        assert (failed.kind, failed.seq, failed.detail) == ("failed", 1, "ValueError: no stock")
        with pytest.raises(Fenced, match="already ended"):
            await journal.finish("ok", 1, 2, Ending(Status.DONE, b"", None))


async def test_a_fenced_save_does_not_fail_the_other_writes_of_its_batch(journal_url: str) -> None:
    """In one batch, the stale checkpoint raises Fenced at its own waiter while the others commit."""
    async with open_journal(journal_url) as journal:
        for key in ("a", "b", "c"):
            await claim(journal, key)
        await claim(journal, "b")  # b is now at epoch 2: epoch 1's writes are stale
        results: dict[str, object] = {}
        gate = WriterGate()

        async def save(key: str) -> None:
            results[key] = await outcome_of(journal.save, checkpoint(key, 1))

        async with trio.open_nursery() as nursery:
            await gate.close(journal, nursery)
            for key in ("a", "b", "c"):
                nursery.start_soon(save, key)
            await wait_queued(journal, 3)
            before = journal._statistics()
            gate.open()
        assert results["a"] is None
        assert results["c"] is None
        assert isinstance(results["b"], Fenced)
        after = journal._statistics()
        assert after.transactions == before.transactions + 2  # the gate's, then the three saves together
        assert after.redone_batches == before.redone_batches + 1  # grouped, refused, redone one by one
        assert [(await journal.checkpoint(key) or checkpoint("?", -1)).seq for key in "abc"] == [1, 0, 1]


# -- group commit ------------------------------------------------------------------


async def test_checkpoints_queued_during_a_commit_go_in_one_transaction(journal_url: str) -> None:
    """Two hundred saves that pile up while the writer is busy commit together in the next transaction."""
    async with open_journal(journal_url) as journal:
        keys = [f"k{n:03}" for n in range(200)]
        for key in keys:
            await claim(journal, key)
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal, nursery)
            for key in keys:
                nursery.start_soon(journal.save, checkpoint(key, 1))
            await wait_queued(journal, len(keys))
            before = journal._statistics()
            gate.open()
        after = journal._statistics()
        assert after.transactions == before.transactions + 2
        assert after.largest_batch >= len(keys)
        assert [c.seq for c in await journal.unfinished()] == [1] * len(keys)
        assert len(await journal.events(since=0)) == 2 * len(keys)


async def test_two_hundred_concurrent_agents_share_transactions(journal_url: str) -> None:
    """200 tasks saving 5 checkpoints each need far fewer transactions than saves (statistics, not timing)."""
    async with open_journal(journal_url) as journal:
        keys = [f"k{n:03}" for n in range(200)]
        for key in keys:
            await claim(journal, key)
        before = journal._statistics()

        async def agent(key: str) -> None:
            for seq in range(1, 6):
                await journal.save(checkpoint(key, seq))

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(agent, key)
        after = journal._statistics()
        saves = 5 * len(keys)
        assert after.items - before.items == saves
        assert after.transactions - before.transactions <= saves // 4
        assert [c.seq for c in await journal.unfinished()] == [5] * len(keys)


async def test_a_cancelled_waiter_does_not_take_its_checkpoint_back(journal_url: str) -> None:
    """Cancelling save() stops the waiting only: the checkpoint commits with its batch."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal, nursery)
            with trio.CancelScope() as scope:
                scope.cancel()  # the save is queued, then its wait is cancelled at once
                await journal.save(checkpoint("k", 1))
            assert scope.cancelled_caught
            gate.open()
        assert await journal.checkpoint("k") == checkpoint("k", 1)


# -- write-behind ---------------------------------------------------------------------


async def test_save_behind_returns_at_once_and_commits_with_the_next_batch(journal_url: str) -> None:
    """save_behind queues without waiting; Pending.wait returns once committed."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal, nursery)
            pending = journal.save_behind(checkpoint("k", 1))
            states = [pending.done]
            gate.open()
            await pending.wait()
            states.append(pending.done)
        assert states == [False, True]
        await pending.wait()  # again: the same outcome
        assert await journal.checkpoint("k") == checkpoint("k", 1)


async def test_two_checkpoints_of_one_key_in_one_batch_apply_in_call_order(journal_url: str) -> None:
    """Checkpoints of one key queued into the same batch both commit, in the order of the calls."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal, nursery)
            first = journal.save_behind(checkpoint("k", 1))
            second = journal.save_behind(checkpoint("k", 2))
            gate.open()
            await first.wait()
            await second.wait()
        assert await journal.checkpoint("k") == checkpoint("k", 2)
        assert [e.seq for e in await journal.events("k")] == [0, 1, 2]


async def test_save_behind_reports_fencing_at_wait(journal_url: str) -> None:
    """A refused write-behind checkpoint raises Fenced from Pending.wait."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        await claim(journal, "k")
        pending = journal.save_behind(checkpoint("k", 1, epoch=1))
        with pytest.raises(Fenced):
            await pending.wait()


async def test_a_database_error_fails_every_request_of_its_batch(journal_url: str) -> None:
    """A failing statement rolls its batch back: each waiter, write-behind too, gets StoreError naming the database."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "a")
        await claim(journal, "b")
        results: dict[str, object] = {}
        gate = WriterGate()

        def fail(cursor: Cursor) -> None:
            cursor.execute("SELECT * FROM nowhere", ())

        async def broken() -> None:
            results["call"] = await outcome_of(journal._call, fail)

        async def save() -> None:
            results["save"] = await outcome_of(journal.save, checkpoint("b", 1))

        async with trio.open_nursery() as nursery:
            await gate.close(journal, nursery)
            pending = journal.save_behind(checkpoint("a", 1))
            nursery.start_soon(broken)
            await wait_queued(journal, 2)
            nursery.start_soon(save)
            await wait_queued(journal, 3)
            gate.open()
            with pytest.raises(StoreError) as caught:
                await pending.wait()
        message = str(caught.value)
        assert "checkpoint of key 'a'" in message
        assert "was not committed" in message
        assert ("SQLite database" in message) or ("Postgres database" in message)
        assert caught.value.__cause__ is not None
        assert isinstance(results["call"], StoreError)
        assert isinstance(results["save"], StoreError)
        assert "checkpoint of key 'b'" in str(results["save"])
        assert [(await journal.checkpoint(key) or checkpoint("?", -1)).seq for key in "ab"] == [0, 0]
        assert journal._statistics().failed_batches == 1
        await journal.save(checkpoint("a", 1))  # the next batch is fine


async def test_closing_the_journal_commits_what_is_queued(journal_url: str) -> None:
    """Leaving open_journal commits the write-behind checkpoints still queued; later calls raise ClosedResourceError."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        pending = journal.save_behind(checkpoint("k", 1))
    assert pending.done
    await pending.wait()
    with pytest.raises(trio.ClosedResourceError):
        await journal.checkpoint("k")
    async with open_journal(journal_url) as journal:
        assert await journal.checkpoint("k") == checkpoint("k", 1)


# -- reads, the event log, retention ---------------------------------------------------------------


async def test_unfinished_lists_the_running_keys_in_key_order(journal_url: str) -> None:
    """unfinished() returns each running key's latest checkpoint, sorted by key, finished keys left out."""
    async with open_journal(journal_url) as journal:
        for key in ("b", "é", "a", "B", "c"):
            await claim(journal, key)
        await journal.save(checkpoint("b", 4))
        await journal.finish("c", 1, 1, Ending(Status.DONE, None, None))
        unfinished = await journal.unfinished()
        assert [c.key for c in unfinished] == ["B", "a", "b", "é"]  # code point order on both databases
        assert unfinished[2] == checkpoint("b", 4)


async def test_events_filter_by_key_by_time_and_by_count_oldest_first(journal_url: str) -> None:
    """events() returns the log oldest first, for one key or all, from a time on, at most a number."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "a")
        await claim(journal, "b")
        for seq in (1, 2, 3):
            await journal.save(checkpoint("a", seq))
        await journal.finish("b", 1, 1, Ending(Status.FAILED, None, "KeyError: 'x'"))
        every = await journal.events()
        assert [(e.key, e.kind) for e in every] == [
            ("a", "spawned"),
            ("b", "spawned"),
            ("a", "async"),
            ("a", "async"),
            ("a", "async"),
            ("b", "failed"),
        ]
        assert [e.seq for e in await journal.events("a")] == [0, 1, 2, 3]
        assert await journal.events("a", limit=2) == every[0:1] + every[2:3]
        assert await journal.events(since=every[3].time) == [e for e in every if e.time >= every[3].time]
        assert await journal.events("nobody") == []
        assert await journal.events(limit=0) == []
        with pytest.raises(ValueError, match="limit"):
            await journal.events(limit=-1)
        assert all(isinstance(e, Event) and e.time > 0 for e in every)


async def test_prune_keeps_the_newest_events_of_each_key(journal_url: str) -> None:
    """prune(keep_events=n) drops each key's log beyond its newest n entries; checkpoints stay."""
    async with open_journal(journal_url) as journal:
        for key in ("a", "b"):
            await claim(journal, key)
            for seq in (1, 2, 3):
                await journal.save(checkpoint(key, seq))
        assert await journal.prune(keep_events=2) == 4
        assert [(e.key, e.seq) for e in await journal.events()] == [("a", 2), ("a", 3), ("b", 2), ("b", 3)]
        assert await journal.prune(keep_events=2) == 0
        assert await journal.checkpoint("a") == checkpoint("a", 3)
        with pytest.raises(ValueError, match="keep_events"):
            await journal.prune(keep_events=-1)


async def test_prune_drops_events_older_than_a_time(journal_url: str) -> None:
    """prune(older_than=t) drops the log entries committed before t, and only those."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
        for seq in (1, 2, 3):
            await journal.save(checkpoint("k", seq))
        events = await journal.events()
        cutoff = events[2].time
        older = [e for e in events if e.time < cutoff]
        assert await journal.prune(older_than=cutoff) == len(older)
        assert await journal.events() == [e for e in events if e.time >= cutoff]
        assert await journal.checkpoint("k") == checkpoint("k", 3)


async def test_prune_drops_finished_keys_but_never_a_running_checkpoint(journal_url: str) -> None:
    """prune(finished_before=t) deletes keys that ended before t, row and log; running keys keep everything."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "done")
        await claim(journal, "running")
        await journal.finish("done", 1, 1, Ending(Status.DONE, b"x", None))
        assert await journal.prune(finished_before=time.time() - 3600) == 0
        assert await journal.prune(finished_before=time.time() + 3600) == 3  # its row and two events
        assert await journal.ending("done") is None
        assert await journal.events("done") == []
        assert await journal.checkpoint("running") is not None
        assert len(await journal.events("running")) == 1
        assert await claim(journal, "done") == Claim(epoch=1, checkpoint=None, ending=None)  # a new start


# -- schema, URLs ---------------------------------------------------------------------------------------


async def test_the_schema_is_created_once_and_found_again_on_reopen(journal_url: str) -> None:
    """The first open creates the tables and the version row; a second open keeps them and the data."""
    async with open_journal(journal_url) as journal:
        await claim(journal, "k")
    async with open_journal(journal_url) as journal:
        assert await journal.checkpoint("k") is not None

        def meta(cursor: Cursor) -> list[tuple[str, str]]:
            cursor.execute("SELECT name, value FROM hybrid_meta", ())
            rows: list[tuple[str, str]] = cursor.fetchall()
            return rows

        assert await journal._call(meta, writes=False) == [("schema_version", str(SCHEMA_VERSION))]


async def test_a_database_with_a_newer_schema_version_is_refused(journal_url: str) -> None:
    """Opening a journal whose schema version is newer than the code's raises StoreError naming both."""
    async with open_journal(journal_url) as journal:
        await journal._call(
            lambda c: c.execute("UPDATE hybrid_meta SET value = '99' WHERE name = 'schema_version'", ())
        )
    with pytest.raises(StoreError, match=f"version 99, newer than version {SCHEMA_VERSION}"):
        async with open_journal(journal_url):
            pass  # pragma: no cover - not reached


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://localhost/db", "unknown journal URL scheme 'mysql'"),
        ("sqlite:///x.db?fsync=no", "unknown SQLite URL option"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout must be a number"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout must be >= 0"),
        ("sqlite:///x.db?synchronous=off", "synchronous must be full or normal"),
        ("postgresql://[broken", "invalid Postgres URL"),
    ],
)
async def test_an_unknown_url_scheme_or_a_bad_option_is_refused(url: str, match: str) -> None:
    """A URL of an unknown scheme, or with options the backend does not know, raises ValueError naming them."""
    if url.startswith("postgresql"):
        pytest.importorskip("psycopg")
    with pytest.raises(ValueError, match=match):
        async with open_journal(url):
            pass  # pragma: no cover - not reached


async def test_sqlite_urls_follow_sqlalchemy_and_memory_needs_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain path, sqlite:///relative, sqlite:////absolute are files; sqlite:///:memory: and sqlite:// are not."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    urls = {
        "plain.db": tmp_path / "plain.db",
        "sqlite:///sub/relative.db": tmp_path / "sub" / "relative.db",
        f"sqlite:///{tmp_path / 'absolute.db'}": tmp_path / "absolute.db",
        "sqlite:///:memory:": None,
        "sqlite://": None,
    }
    for url, path in urls.items():
        async with open_journal(url) as journal:
            await claim(journal, "k")
            assert (await journal.checkpoint("k")) is not None
        if path is not None:
            assert path.exists()
    assert not (tmp_path / ":memory:").exists()


@pytest.mark.parametrize(("option", "expected"), [("", 2), ("?synchronous=full", 2), ("?synchronous=NORMAL", 1)])
async def test_sqlite_fsyncs_every_commit_unless_the_url_asks_for_synchronous_normal(
    tmp_path: Path, option: str, expected: int
) -> None:
    """SQLite runs with synchronous=FULL (2) by default and NORMAL (1) with ?synchronous=normal; both in WAL mode."""
    async with open_journal(f"sqlite:///{tmp_path / 'j.db'}{option}") as journal:
        await claim(journal, "k")

        def read(cursor: Any) -> tuple[object, object]:  # the writer's own sqlite3 cursor
            return cursor.execute("PRAGMA synchronous").fetchone(), cursor.execute("PRAGMA journal_mode").fetchone()

        pragmas = await journal._call(read, writes=False)
    assert pragmas == ((expected,), ("wal",))


async def test_journal_and_pending_have_no_public_constructor() -> None:
    """Journal comes from open_journal and Pending from save_behind only."""
    with pytest.raises(TypeError, match="open_journal"):
        Journal()
    with pytest.raises(TypeError, match="save_behind"):
        Pending()


async def test_sqlite_runs_in_wal_mode_with_full_fsync(tmp_path: Path) -> None:
    """The file is in WAL mode (persistent, seen from another connection) and the journal's connection fsyncs fully."""
    path = tmp_path / "j.db"
    async with open_journal(f"sqlite:///{path}") as journal:
        assert await journal._call(lambda c: c.execute("PRAGMA synchronous", ()) and c.fetchone()) == (2,)
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()


async def test_a_sqlite_file_that_cannot_be_opened_raises_store_error(tmp_path: Path) -> None:
    """A path in a missing directory fails the open with StoreError naming the file."""
    with pytest.raises(StoreError, match="cannot open"):
        async with open_journal(str(tmp_path / "missing" / "j.db")):
            pass  # pragma: no cover - not reached


# -- failures --------------------------------------------------------------------------------


async def test_a_locked_sqlite_database_fails_with_store_error_not_a_hang(tmp_path: Path) -> None:
    """While another connection holds the write lock past busy_timeout, a save fails with StoreError; then it works."""
    path = tmp_path / "j.db"
    async with open_journal(f"sqlite:///{path}?busy_timeout=50") as journal:
        await claim(journal, "k")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreError, match="database is locked") as caught:
                await journal.save(checkpoint("k", 1))
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            other.execute("ROLLBACK")
        finally:
            other.close()
        await journal.save(checkpoint("k", 1))
        assert await journal.checkpoint("k") == checkpoint("k", 1)


async def test_a_sqlite_database_locked_at_open_fails_the_open_with_store_error(tmp_path: Path) -> None:
    """Opening a file another connection holds the write lock of fails after busy_timeout with StoreError."""
    path = tmp_path / "j.db"
    async with open_journal(f"sqlite:///{path}"):
        pass
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="cannot open: database is locked"):
            async with open_journal(f"sqlite:///{path}?busy_timeout=20"):
                pass  # pragma: no cover - not reached
    finally:
        other.close()


async def test_a_full_sqlite_database_fails_with_store_error(tmp_path: Path) -> None:
    """When the database cannot grow (a full disk), the save fails with StoreError and nothing is half-written."""
    async with open_journal(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        await claim(journal, "k")

        def cap(cursor: Cursor) -> None:
            cursor.execute("PRAGMA max_page_count = 1", ())  # SQLite keeps it at the current size: no room to grow

        await journal._call(cap)
        big = Checkpoint("k", 1, 1, "Agent", 1, StepKind.ASYNC, "s", b"x" * 200_000)
        with pytest.raises(StoreError, match="full"):
            await journal.save(big)
        assert (await journal.checkpoint("k") or big).seq == 0


async def test_a_dropped_postgres_connection_is_replaced_before_the_next_batch(postgres_server: PostgresServer) -> None:
    """A connection the server closed while idle is replaced, and the batch that found it dead runs once more."""
    import psycopg  # noqa: PLC0415 - an extra

    url = postgres_server.new_schema_url()
    async with open_journal(url) as journal:
        await claim(journal, "k")
        pid = await journal._call(lambda c: c.execute("SELECT pg_backend_pid()", ()) and c.fetchone()[0])
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits until it is gone
        await journal.save(checkpoint("k", 1))
        assert journal._statistics().reconnects == 1
        assert await journal.checkpoint("k") == checkpoint("k", 1)


async def test_a_stopped_postgres_server_fails_the_batch_then_the_journal_recovers(
    postgres_server: PostgresServer,
) -> None:
    """With the server down a save raises StoreError; once it is back, the next save reconnects and commits."""
    async with open_journal(postgres_server.new_schema_url()) as journal:
        await claim(journal, "k")
        await trio.to_thread.run_sync(postgres_server.stop)
        try:
            with pytest.raises(StoreError, match="Postgres database 'hybrid'") as caught:
                await journal.save(checkpoint("k", 1))
            assert caught.value.__cause__ is not None
            with pytest.raises(StoreError):
                await journal.checkpoint("k")  # still down: the reconnect fails too
        finally:
            await trio.to_thread.run_sync(postgres_server.start)
        await journal.save(checkpoint("k", 1))
        assert await journal.checkpoint("k") == checkpoint("k", 1)


async def test_an_unexpected_error_in_an_operation_fails_its_batch_and_the_writer_goes_on(journal_url: str) -> None:
    """A bug (not a database error) in an operation fails its batch with StoreError; the next batch works."""

    def bug(cursor: Cursor) -> None:
        raise ZeroDivisionError("bug")

    async with open_journal(journal_url) as journal:
        with pytest.raises(StoreError, match="ZeroDivisionError: bug") as caught:
            await journal._call(bug)
        assert isinstance(caught.value.__cause__, ZeroDivisionError)
        await claim(journal, "k")
        assert await journal.checkpoint("k") is not None


async def test_a_connection_lost_during_commit_is_reported_as_an_unknown_outcome(
    postgres_server: PostgresServer,
) -> None:
    """When the Postgres connection drops in COMMIT, the error says the outcome is unknown and nothing is retried."""
    async with open_journal(postgres_server.new_schema_url()) as journal:
        await claim(journal, "k")

        def kill_at_commit(cursor: Cursor) -> None:
            # A deferred constraint trigger runs at COMMIT: it ends its own backend there.
            cursor.execute(
                "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
                (),
            )
            cursor.execute(
                "CREATE CONSTRAINT TRIGGER die AFTER UPDATE ON hybrid_keys DEFERRABLE INITIALLY DEFERRED"
                " FOR EACH ROW EXECUTE FUNCTION die()",
                (),
            )

        await journal._call(kill_at_commit)
        with pytest.raises(StoreError, match="may or may not have been committed") as caught:
            await journal.save(checkpoint("k", 1))
        assert "COMMIT failed" in str(caught.value)
        assert journal._statistics().reconnects == 0
        await journal._call(lambda c: c.execute("DROP TRIGGER die ON hybrid_keys", ()))
        assert (await journal.checkpoint("k") or checkpoint("?", -1)).seq == 0  # here it was not, in fact


async def test_a_postgres_server_that_cannot_be_reached_fails_the_open(postgres_server: PostgresServer) -> None:
    """Opening a journal on a port where no server listens raises StoreError naming the database."""
    port = free_port()
    with pytest.raises(StoreError, match=f"Postgres database 'nowhere' at 127.0.0.1:{port}: cannot open"):
        async with open_journal(f"postgresql://postgres@127.0.0.1:{port}/nowhere?connect_timeout=5"):
            pass  # pragma: no cover - not reached


async def test_a_sigkilled_writer_leaves_every_committed_checkpoint_intact(journal_url: str) -> None:
    """SIGKILLing a process that saves checkpoints (twice, at random points) loses and tears no committed one."""
    keys = 8
    committed: dict[str, int] = {}
    rng = random.Random()
    for _ in range(2):
        kill_after = rng.randrange(40, 400)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.durable.test_journal", journal_url, str(keys)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stdout is not None
        buffer = b""
        lines = 0
        while lines < kill_after:
            chunk = await process.stdout.receive_some()
            assert chunk, "the writer ended on its own"
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for line in done:
                key, number = line.decode().split()
                committed[key] = max(committed.get(key, 0), int(number))
                lines += 1
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await process.stdout.aclose()
        assert process.returncode == -signal.SIGKILL

    async with open_journal(journal_url) as journal:
        for key, seq in committed.items():
            found = await journal.checkpoint(key)
            assert found is not None
            assert found.seq >= seq
            assert found.payload == payload_of(key, found.seq)
        if journal_url.startswith("sqlite"):
            assert await journal._call(lambda c: c.execute("PRAGMA integrity_check", ()) and c.fetchone()) == ("ok",)


async def _write_until_killed(url: str, keys: int) -> None:
    """The SIGKILL test's child: save checkpoints of `keys` keys forever, printing each committed one."""
    async with open_journal(url) as journal:

        async def agent(key: str) -> None:
            claimed = await claim(journal, key)
            seq = claimed.checkpoint.seq if claimed.checkpoint is not None else 0
            while True:
                seq += 1
                await journal.save(checkpoint(key, seq, epoch=claimed.epoch))
                print(key, seq, flush=True)

        async with trio.open_nursery() as nursery:
            for n in range(keys):
                nursery.start_soon(agent, f"k{n}")


if __name__ == "__main__":
    trio.run(_write_until_killed, sys.argv[1], int(sys.argv[2]))
