"""Names and text that cross a process edge, under attack, against a real nats-server.

A user-chosen string (an agent, node, queue or entity-kind name, an entity key, a job
id, a message class's wire name, an agent's name or class in the service's endpoints)
ends up in a NATS subject, a KV key, a JetStream stream or consumer name, a header, a
JSON document or a Prometheus label. Each test checks one of two outcomes: the string
works exactly (it round-trips and reaches only its own agent), or it is refused at the
call with an error naming the argument; never a silent misroute, a hang, or a failure
in a background task that costs other agents their messages.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import msgspec
import outcome
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typing_extensions import Self

import hybrid
import hybrid.codec
import hybrid.metrics
from hybrid.remote import Node, RemoteFailure, connect
from hybrid.remote import _wire as wire
from hybrid.remote._names import check_name
from hybrid.service._endpoints import Endpoints
from tests.remote.agents import Add, Counter, Get
from tests.remote.nats import NatsServer

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 2.0, "close_timeout": 2.0}
"""Options that keep the tests quick."""

BAD_NAMES: tuple[str, ...] = (
    "",
    "a.b",
    ".a",
    "a.",
    "*",
    ">",
    "a*",
    "a>",
    "a b",
    " ",
    "\t",
    "a\nb",
    "a\r\nPUB x 1",
    "a\x00b",
    "\x7f",
    "\ud800",
    "é",
    "\uff41",  # a fullwidth 'a'
    "a/b",
    "$a",
    "x" * 65,
)
"""Names no subject, KV key or stream name may hold: separators, wildcards, whitespace,
control characters, a NUL, a lone surrogate, non-ASCII, slashes, too long, empty."""

QUICK_RETRY = hybrid.Backoff(initial=0.05, factor=1.0, max_delay=0.05)


# -- agents and messages ---------------------------------------------------------------


@attrs.frozen
class KeyOf(hybrid.Request[str]):
    """A request: the entity's key, as it was given to its factory."""


@attrs.define(eq=False)
class Keyed(hybrid.Agent[None]):
    """An entity that answers with its own key."""

    key: str

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_request
    async def key_of(self, request: KeyOf) -> str:
        return self.key

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        pass


def keyed(key: str) -> Keyed:
    """The factory of `Keyed` entities; refuses the key ``"boom"`` (a factory that raises)."""
    if key == "boom":
        raise ValueError("no entity for 'boom'")
    return Keyed(key)


@attrs.frozen
class Job(hybrid.Request[str]):
    """A work-queue job."""

    text: str


@hybrid.codec.message(name=" spaced.Job ")
@attrs.frozen
class SpacedJob(hybrid.Request[str]):
    """A job class whose wire name has leading and trailing spaces."""

    text: str


@attrs.define(eq=False)
class Worker(hybrid.Agent[None]):
    """Does jobs: records the text of each."""

    done: list[str] = attrs.Factory(list[str])

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_request
    async def job(self, request: Job) -> str:
        self.done.append(request.text)
        return request.text

    @hybrid.on_request
    async def spaced(self, request: SpacedJob) -> str:
        self.done.append(request.text)
        return request.text


class Names(str, enum.Enum):  # noqa: UP042 - the mixin form is the point: it formats as "Names.LEDGER"
    """Agent names as an application may keep them: a str enum (the mixin form)."""

    LEDGER = "ledger"


class StrNames(enum.StrEnum):
    """Agent names as a `StrEnum`, which formats as its value."""

    LEDGER = "ledger"


class Plain(hybrid.Agent[None]):
    """An agent doing nothing, under whatever name or class name a test gives it."""

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()


# -- helpers -------------------------------------------------------------------------------


async def run(nursery: trio.Nursery, agent: hybrid.Agent[Any]) -> hybrid.Address[Any]:
    """Start `agent` in `nursery`."""
    address: hybrid.Address[Any] = await nursery.start(hybrid.AgentRunner(agent).run)
    return address


@asynccontextmanager
async def two_nodes(server: NatsServer, first: str = "a", second: str = "b") -> AsyncGenerator[tuple[Node, Node]]:
    """Two nodes of the default cluster on `server`."""
    async with (
        connect(server.url, node=first, **FAST) as a,
        connect(server.url, node=second, **FAST) as b,
    ):
        yield a, b


async def within(seconds: float, awaitable: Awaitable[Any]) -> outcome.Outcome[Any] | None:
    """The outcome of `awaitable`, or None if it took more than `seconds` (a hang)."""

    result: outcome.Outcome[Any] | None = None
    with trio.move_on_after(seconds):
        try:
            result = outcome.Value(await awaitable)
        except Exception as error:  # not the move_on's Cancelled: that one means a hang
            result = outcome.Error(error)
    return result


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until `condition()` holds, checking every 10 ms."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - a poll of counters other tasks write
            await trio.sleep(0.01)


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a scrape, parsed back with prometheus-client's own parser."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# -- names refused at the call ---------------------------------------------------------------


async def test_bad_names_are_refused_at_every_entry_point_naming_the_argument(nats_server: NatsServer) -> None:
    """Publish, lookup, spawn (node and agent), work queue, entity kinds: a ValueError naming what, before I/O."""
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        a.register_factory(Counter)
        local = await run(nursery, Counter())
        for bad in BAD_NAMES:
            calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("agent name", functools.partial(a.publish, bad, local)),
                ("node name", functools.partial(b.spawn, bad, Counter)),
                ("agent name", functools.partial(b.spawn, "a", Counter, name=bad)),
                ("queue name", functools.partial(a.work_queue, bad, Job)),
                ("entity kind", functools.partial(a.entities, bad, Keyed)),
                ("entity kind", functools.partial(a.host_entities, bad, keyed)),
            ]
            for what, call in calls:
                with pytest.raises(ValueError, match=f"^invalid {what} "):
                    await call()
            with pytest.raises(ValueError, match="^invalid agent name "):
                b.lookup(bad, Counter)
            with pytest.raises(ValueError, match="^invalid node name "):
                async with connect(nats_server.url, node=bad, **FAST):
                    pass  # pragma: no cover - refused
            with pytest.raises(ValueError, match="^invalid cluster name "):
                async with connect(nats_server.url, node="c", cluster=bad, **FAST):
                    pass  # pragma: no cover - refused
        for not_text in (5, b"ledger", None):
            with pytest.raises(TypeError, match="agent name must be a str"):
                b.lookup(not_text, Counter)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="agent name must be a str"):
                await a.publish(not_text, local)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="^invalid cluster name 'c_1'"):  # '_' would make stream names ambiguous
            async with connect(nats_server.url, node="c", cluster="c_1", **FAST):
                pass  # pragma: no cover - refused
        # Nothing was published, spawned or made; the nodes work as before.
        assert a.statistics().published == 0
        assert a.statistics().spawned == 0
        await a.publish("ok", local)
        with trio.fail_after(5):
            b.lookup("ok", Counter).send(Add(3))
            assert await b.lookup("ok", Counter).request(Get()) == 3
        local.interrupt()


async def test_the_error_for_a_long_or_binary_name_is_short_and_readable(nats_server: NatsServer) -> None:
    """A megabyte name, a name of control characters: the error shows a cut, escaped repr and says why."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        with pytest.raises(ValueError) as raised:
            a.lookup("x" * 1_000_000, Counter)
        text = str(raised.value)
        assert len(text) < 400
        assert "1000000 characters" in text
        assert "more than 64" in text
        with pytest.raises(ValueError) as raised:
            a.lookup("ok\x00\r\n", Counter)
        text = str(raised.value)
        assert "\x00" not in text
        assert "\r" not in text
        assert "'\\x00' (a control character) at index 2" in text


# -- names that work exactly -------------------------------------------------------------------


async def test_names_at_the_limit_and_differing_only_by_case_each_reach_their_own_agent(
    nats_server: NatsServer,
) -> None:
    """64 characters, case variants, '-' and '_': each name is its own subject and registry key."""
    names = ["x" * 64, "ledger", "Ledger", "LEDGER", "a-_b", "a_-b", "0", "-", "_"]
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        locals_ = [await run(nursery, Counter()) for _ in names]
        for name, local in zip(names, locals_, strict=True):
            await a.publish(name, local)
        with trio.fail_after(10):
            for n, name in enumerate(names, start=1):
                b.lookup(name, Counter).send(Add(n))
            totals = [await b.lookup(name, Counter).request(Get()) for name in names]
        assert totals == list(range(1, len(names) + 1))
        for local in locals_:
            local.interrupt()


async def test_a_strenum_name_is_published_under_its_value(nats_server: NatsServer) -> None:
    """publish(StrNames.LEDGER) is reachable as "ledger" from another node (a StrEnum formats as its value)."""
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        local = await run(nursery, Counter())
        await a.publish(StrNames.LEDGER, local)
        with trio.fail_after(5):
            b.lookup("ledger", Counter).send(Add(4))
            assert await b.lookup("ledger", Counter).request(Get()) == 4
        local.interrupt()


async def test_node_names_differing_only_by_case_are_two_nodes(nats_server: NatsServer) -> None:
    """Nodes "n" and "N" are both live, and a spawn on "N" lands on "N" only."""
    async with two_nodes(nats_server, "n", "N") as (lower, upper):
        with trio.fail_after(5):
            await lower.wait_nodes(lambda nodes: {"n", "N"} <= nodes)
        upper.register_factory(Counter)
        lower.register_factory(Counter)
        with trio.fail_after(5):
            remote = await lower.spawn("N", Counter, name="on-upper")
            remote.send(Add(2))
            assert await remote.request(Get()) == 2
        assert (upper.statistics().spawned, lower.statistics().spawned) == (1, 0)
        remote.interrupt()


async def test_work_queue_names_differing_only_by_case_are_two_queues(nats_server: NatsServer) -> None:
    """Queues "jobs" and "JOBS": two streams, two consumers; a job put in one is not in the other."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        lower = await a.work_queue("jobs", Job)
        upper = await a.work_queue("JOBS", Job)
        assert lower.stream != upper.stream
        assert lower.subject != upper.subject
        await lower.put(Job("one"), id="same-id")
        ack = await upper.put(Job("two"), id="same-id")  # another stream: not a duplicate
        assert not ack.duplicate
        await lower.put(Job("three"))
        assert ((await lower.info()).pending, (await upper.info()).pending) == (2, 1)


async def test_job_ids_round_trip_exactly_unicode_and_nul_included(nats_server: NatsServer) -> None:
    """Ids that differ in one non-ASCII or NUL character are different; the same id is a duplicate."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        queue = await a.work_queue("ids", Job)
        for job_id in ("e", "é", "a\x00b", "a\x00c", "\U0001f600", "a:b", "x" * 200):
            assert not (await queue.put(Job(job_id), id=job_id)).duplicate, job_id
        assert (await queue.put(Job("again"), id="a\x00b")).duplicate
        assert (await queue.put(Job("again"), id="é")).duplicate


async def test_a_job_id_that_cannot_be_encoded_is_refused_at_the_call(nats_server: NatsServer) -> None:
    """A lone surrogate in an id, or an empty id: a ValueError naming it from put, nothing stored, the queue goes on."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        queue = await a.work_queue("ids", Job)
        with pytest.raises(ValueError, match="^id must be text UTF-8 can encode"):
            await queue.put(Job("x"), id="\ud800")
        with pytest.raises(ValueError, match="^id must be a non-empty str"):
            await queue.put(Job("x"), id="")
        await queue.put(Job("y"), id="y")
        assert (await queue.info()).pending == 1


async def test_entity_keys_with_subject_syntax_and_unicode_each_reach_their_own_entity(
    nats_server: NatsServer,
) -> None:
    """A key travels in the payload: dots, wildcards, whitespace, a NUL, case, unicode, 10 000 characters."""
    keys = ["k", "K", "a.b", "*", ">", "a.>", " ", "\n", "\r\n", "a\x00b", "é", "\U0001f600", "x" * 10_000]
    async with two_nodes(nats_server) as (a, b):
        hosted = await a.host_entities("kind", keyed)
        reached = await b.entities("kind", Keyed)
        with trio.fail_after(5):
            await reached.wait_hosts(lambda hosts: hosts == frozenset({"a"}))
        with trio.fail_after(10):
            answers = [await reached.ref(key).request(KeyOf()) for key in keys]
        assert answers == keys
        assert sorted(hosted.local) == sorted(keys)
        for key in ("", None, 5):
            with pytest.raises(ValueError, match="entity key"):
                reached.ref(key)  # type: ignore[arg-type]


# -- a bad message cannot take the reader down ----------------------------------------------------


async def test_garbage_on_every_subject_of_a_node_is_dropped_and_the_node_goes_on(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk on agent, control, ended and shard subjects, and a raising entity factory: every other message arrives."""
    caplog.set_level(logging.WARNING, logger="hybrid.remote")
    junk = [
        b"",
        b"\x00",
        b"\xc1",
        b"\xff" * 100,
        msgspec.msgpack.encode([99]),
        msgspec.msgpack.encode(["x" * 1000]),
        msgspec.msgpack.encode([0, "\x00", 1, b""]),
        msgspec.msgpack.encode([0, "no.such.Type\n", 1, b"\x80"]),
        msgspec.msgpack.encode([3, "_INBOX.*.>"]),  # a CANCEL of a "reply subject" that is a pattern
        msgspec.msgpack.encode([0, "x", 1, b"", "boom"]),  # an event for a key whose factory raises
    ]
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        local = await run(nursery, Counter())
        await a.publish("counter", local)
        a.register_factory(Counter)
        await a.host_entities("kind", keyed)
        reached = await b.entities("kind", Keyed)
        with trio.fail_after(5):
            await reached.wait_hosts(lambda hosts: hosts == frozenset({"a"}))
        remote = b.lookup("counter", Counter)
        subjects = [
            "hybrid.default.agent.counter",
            "hybrid.default.node.a.ctl",
            "hybrid.default.ended.counter",
            "hybrid.default.node.a.shard.kind",
        ]
        with trio.fail_after(10):
            for subject in subjects:
                for payload in junk:
                    b.transport.publish(subject, payload)
            reached.ref("boom").send(Add(1))
            # A raw spawn asking for a name with a wildcard: refused by the node, nothing published.
            spawn = msgspec.msgpack.encode(["tests.remote.agents.Counter", "a.>", msgspec.msgpack.encode([])])
            answer = wire.REPLY.decode((await b.transport.request("hybrid.default.node.a.ctl", spawn)).data)
            assert answer.failed
            assert "invalid agent name 'a.>'" in a.codec.decode_error(answer.body, RemoteFailure).args[0]
            await b.transport.flush()
            remote.send(Add(7))
            assert await remote.request(Get()) == 7
            assert await reached.ref("ok").request(KeyOf()) == "ok"
        assert a.statistics().published == 1
        assert a.statistics().spawned == 0
        assert a.statistics().dropped >= 9  # the agent subject's junk, all but the CANCEL
        assert "dropped a message" in caplog.text
        assert remote.is_alive  # junk on its ended subject did not end it
        assert a.transport.statistics().state.value == "connected"
        assert b.transport.statistics().state.value == "connected"
        local.interrupt()


# -- the service's JSON and the metrics' labels ------------------------------------------------------


async def test_the_tree_is_valid_json_whatever_the_agents_are_named() -> None:
    """Agent names with a NUL, quotes, newlines, markup, unicode, a lone surrogate: /tree parses back exactly."""
    names = ["a\x00b", 'q"\n\\', "</script><b>", "é\U0001f600", "\ud800", " ", "x" * 10_000]
    endpoints = Endpoints(lambda: "ready", CollectorRegistry())
    async with trio.open_nursery() as nursery:
        for name in names:
            hybrid.spawn(nursery, Plain(), name=name)
        await trio.testing.wait_all_tasks_blocked()
        response = endpoints("/tree")
        assert response.status == 200
        assert response.content_type == "application/json"
        tree = json.loads(response.body)
        assert sorted(agent["name"] for agent in tree["agents"]) == sorted(names)
        nursery.cancel_scope.cancel()


async def scrape_beside(qualname: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape /metrics while an agent of a class named `qualname` and a `Plain` one are alive."""
    odd = type("Odd", (Plain,), {})
    odd.__qualname__ = qualname
    registry = CollectorRegistry()
    hybrid.metrics.register(registry)
    async with trio.open_nursery() as nursery:
        hybrid.spawn(nursery, odd())
        hybrid.spawn(nursery, Plain())
        await trio.testing.wait_all_tasks_blocked()
        try:
            return scrape(registry)
        finally:
            nursery.cancel_scope.cancel()


async def test_metric_labels_escape_quotes_newlines_and_backslashes_of_class_names() -> None:
    """A class named with a quote, a newline, a backslash and unicode: its label parses back exactly."""
    samples = await scrape_beside('w"e\nird\\é')
    assert samples[("hybrid_agents", (("agent_type", 'w"e\nird\\é'), ("phase", "events")))] == 1
    assert samples[("hybrid_agents", (("agent_type", "Plain"), ("phase", "events")))] == 1


# -- bugs ------------------------------------------------------------------------------------------


async def test_a_str_enum_name_is_published_under_its_value_or_refused(nats_server: NatsServer) -> None:
    """publish(Names.LEDGER) passes the name check as "ledger": it must then be reachable as "ledger"."""
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        local = await run(nursery, Counter())
        try:
            await a.publish(Names.LEDGER, local)
        except (TypeError, ValueError):  # pragma: no cover - refused at the call: fine too
            local.interrupt()
            return
        result = await within(3, b.lookup("ledger", Counter).request(Get()))
        local.interrupt()
        assert result is not None
        assert result.unwrap() == 0


async def test_spawn_without_a_name_works_on_a_node_with_a_long_name(nats_server: NatsServer) -> None:
    """A node name of 64 characters is valid: spawning there with the default agent name must work."""
    long = "n" * 64
    async with two_nodes(nats_server, long, "b") as (a, b):
        a.register_factory(Counter)
        with trio.fail_after(5):
            remote = await b.spawn(long, Counter)
            assert await remote.request(Get()) == 0
        remote.interrupt()


async def test_job_ids_differing_only_by_surrounding_whitespace_are_distinct_or_refused(
    nats_server: NatsServer,
) -> None:
    """put(id="a") then put(id=" a"): two jobs stored, or the second id refused at the call."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        queue = await a.work_queue("ids", Job)
        await queue.put(Job("first"), id="a")
        try:
            ack = await queue.put(Job("second"), id=" a")
        except ValueError:  # pragma: no cover - refused at the call: fine too
            return
        assert not ack.duplicate
        assert (await queue.info()).pending == 2


async def test_a_job_class_whose_wire_name_cannot_travel_in_a_header_is_refused_or_done(
    nats_server: NatsServer,
) -> None:
    """@message(name=" spaced.Job "): put refuses it, or a worker does the job; never a silent dead letter."""
    async with connect(nats_server.url, node="a", **FAST) as a, trio.open_nursery() as nursery:
        worker = Worker()
        address = await run(nursery, worker)
        try:
            queue = await a.work_queue("spaced", SpacedJob, retry=QUICK_RETRY, max_deliver=1)
            await queue.put(SpacedJob("x"))
        except (ValueError, hybrid.codec.CodecError):  # pragma: no cover - refused at the call: fine too
            address.interrupt()
            return
        async with queue.serve(address):
            await eventually(lambda: bool(worker.done) or queue.statistics().terminated > 0)
        address.interrupt()
        assert worker.done == ["x"]


async def test_an_entity_key_that_cannot_travel_is_refused_by_ref(nats_server: NatsServer) -> None:
    """ref("\\ud800"): a ValueError naming the entity key, at the call."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        carts = await a.host_entities("kind", keyed)
        with pytest.raises(ValueError, match="entity key"):
            carts.ref("\ud800")


async def test_a_request_to_a_key_whose_factory_raises_gets_an_error_not_a_hang(nats_server: NatsServer) -> None:
    """The factory refuses the key "boom": the request fails (in seconds), it does not wait forever."""
    async with two_nodes(nats_server) as (a, b):
        await a.host_entities("kind", keyed)
        reached = await b.entities("kind", Keyed)
        with trio.fail_after(5):
            await reached.wait_hosts(lambda hosts: hosts == frozenset({"a"}))
        result = await within(2, reached.ref("boom").request(KeyOf()))
        assert result is not None, "the request hung"
        assert isinstance(result, outcome.Error)


async def test_one_unencodable_class_name_does_not_break_the_scrape_for_everyone() -> None:
    """A class named with a lone surrogate: the scrape still works, and reports the other classes."""
    samples = await scrape_beside("odd\ud800")
    assert samples[("hybrid_agents", (("agent_type", "Plain"), ("phase", "events")))] == 1


def test_the_name_rule_is_anchored_at_both_ends() -> None:
    """A trailing newline does not slip through a ``$`` (the rule uses fullmatch)."""
    for bad in ("ok\n", "\nok", "ok\x00"):
        with pytest.raises(ValueError, match=re.escape("invalid name")):
            check_name(bad)
