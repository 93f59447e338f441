"""Sharded entities: keys placed on hosting nodes by rendezvous hashing, against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from typing_extensions import Self

import hybrid
from hybrid.remote import Entities, Node, NodeLost, connect
from tests.remote.agents import Add, Counter, Get, Wait
from tests.remote.nats import NatsServer
from tests.remote.processes import node_process

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 5.0, "close_timeout": 2.0, "lease": 1}


@attrs.frozen
class WhereAmI(hybrid.Request[str]):
    """Which node and key the entity is."""


@attrs.define(eq=False)
class Cart(hybrid.Agent[None]):
    """The entity of one key: counts what it is sent."""

    key: str
    total: int = 0

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.total += event.n

    @hybrid.on_request
    async def get(self, request: Get) -> int:
        return self.total

    @hybrid.on_request
    async def wait(self, request: Wait) -> str:
        await trio.sleep(request.seconds)
        return request.tag

    @hybrid.on_request
    async def where(self, request: WhereAmI) -> str:
        return HOSTS[id(self)] + "/" + self.key


HOSTS: dict[int, str] = {}
"""Which node made each Cart (by id): filled by the factories below."""


def factory_of(node: str) -> Any:
    def make(key: str) -> Cart:
        cart = Cart(key)
        HOSTS[id(cart)] = node
        return cart

    make.__annotations__ = {"key": str, "return": Cart}
    return make


async def settled(entities: Entities[Any], hosts: set[str]) -> None:
    """Wait until `entities` sees exactly `hosts` (the watch of the registry is asynchronous)."""
    await entities.wait_hosts(lambda seen: seen == frozenset(hosts))


@asynccontextmanager
async def cluster(server: NatsServer, names: list[str]) -> AsyncGenerator[tuple[list[Node], list[Entities[Cart]]]]:
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(connect(server.url, node=name, **FAST)) for name in names]
        carts = [await node.host_entities("cart", factory_of(node.name)) for node in nodes]
        with trio.fail_after(10):
            for entities in carts:
                await settled(entities, set(names))
        yield nodes, carts


async def test_each_key_lives_on_its_owner_and_keeps_its_state(nats_server: NatsServer) -> None:
    """Messages for a key reach one entity on the key's owner, from any node; keys spread over the hosts."""
    async with cluster(nats_server, ["a", "b", "c"]) as (_, carts):
        keys = [f"user-{n}" for n in range(30)]
        with trio.fail_after(20):
            for n, key in enumerate(keys):
                for entities in carts:
                    entities.ref(key).send(Add(n))
            owners: set[str] = set()
            for n, key in enumerate(keys):
                for entities in carts:
                    where = await entities.ref(key).request(WhereAmI())
                    assert where == f"{carts[0].owner(key)}/{key}"
                    assert await entities.ref(key).request(Get()) == 3 * n
                owners.add(carts[0].owner(key))
        assert owners == {"a", "b", "c"}
        assert sum(len(entities.local) for entities in carts) == len(keys)
        assert {key for entities in carts for key in entities.local} == set(keys)


async def test_when_a_host_leaves_only_its_keys_move(nats_server: NatsServer) -> None:
    """A host that leaves: its keys move to the others (fresh entities); every other key stays where it was."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(connect(nats_server.url, node="a", **FAST))
        b = await stack.enter_async_context(connect(nats_server.url, node="b", **FAST))
        carts_a = await a.host_entities("cart", factory_of("a"))
        carts_b = await b.host_entities("cart", factory_of("b"))
        keys = [f"k{n}" for n in range(40)]
        async with connect(nats_server.url, node="c", **FAST) as c:
            carts_c = await c.host_entities("cart", factory_of("c"))
            with trio.fail_after(10):
                await settled(carts_a, {"a", "b", "c"})
                for key in keys:
                    await carts_a.ref(key).request(Get())
            before = {key: carts_a.owner(key) for key in keys}
            assert set(carts_c.local) == {key for key, owner in before.items() if owner == "c"}
        with trio.fail_after(10):
            await settled(carts_a, {"a", "b"})
            for key in keys:
                await carts_a.ref(key).request(Get())
        after = {key: carts_a.owner(key) for key in keys}
        moved = {key for key in keys if before[key] != after[key]}
        assert moved == {key for key in keys if before[key] == "c"}
        assert set(carts_a.local) | set(carts_b.local) == set(keys)


async def test_a_joining_host_takes_its_keys_and_the_old_owner_lets_them_go(nats_server: NatsServer) -> None:
    """A new host: the keys it now owns move to it; the old owner interrupts its entities of those keys."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        carts_a = await a.host_entities("cart", factory_of("a"))
        keys = [f"k{n}" for n in range(30)]
        with trio.fail_after(10):
            for key in keys:
                await carts_a.ref(key).request(Get())
        assert set(carts_a.local) == set(keys)
        living = dict(carts_a.local)
        async with connect(nats_server.url, node="b", **FAST) as b:
            carts_b = await b.host_entities("cart", factory_of("b"))
            with trio.fail_after(10):
                await settled(carts_a, {"a", "b"})
                theirs = {key for key in keys if carts_a.owner(key) == "b"}
                assert theirs
                for key in theirs:
                    await living[key].join()  # interrupted by its old owner
                for key in theirs:
                    assert await carts_a.ref(key).request(WhereAmI()) == f"b/{key}"
            assert set(carts_b.local) == theirs


async def test_a_host_that_leaves_fails_what_its_entities_had_queued(nats_server: NatsServer) -> None:
    """A host leaving cleanly ends its entities: requests they had queued fail with `AgentStopped`."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        carts_a = await a.entities("cart", Cart)
        assert carts_a.hosts == set()
        with pytest.raises(hybrid.AgentStopped, match="no live node hosts"):
            carts_a.ref("x").send(Add(1))
        async with trio.open_nursery() as nursery:
            b_scope = trio.CancelScope()

            async def run_b() -> None:
                with b_scope:
                    async with connect(nats_server.url, node="b", **FAST) as b:
                        await b.host_entities("cart", factory_of("b"))
                        await trio.sleep_forever()

            nursery.start_soon(run_b)
            with trio.fail_after(10):
                await settled(carts_a, {"b"})
                await carts_a.ref("x").request(Get())  # the entity lives on b
                b_scope.cancel()
                with pytest.raises(hybrid.AgentStopped):
                    await carts_a.ref("x").request(Wait(60, "never"))
                await settled(carts_a, set())
        with pytest.raises(TypeError, match="entity reference"):
            await carts_a.ref("x").join()


async def test_a_killed_owner_fails_the_requests_waiting_for_it(nats_server: NatsServer) -> None:
    """SIGKILL the owner: requests waiting on it fail with `NodeLost`; the key then lives on a live host."""
    async with (
        connect(nats_server.url, node="a", **FAST) as a,
        node_process(nats_server, "b", "entities:cart") as process,
        trio.open_nursery() as nursery,
    ):
        carts = await a.entities("cart", Counter)
        with trio.fail_after(10):
            await settled(carts, {"b"})
            carts.ref("x").send(Add(2))
            assert await carts.ref("x").request(Get()) == 2
        failed = trio.Event()

        async def waiting() -> None:
            with pytest.raises(NodeLost, match="'b'"):
                await carts.ref("x").request(Wait(60, "never"))
            failed.set()

        nursery.start_soon(waiting)
        await trio.sleep(0.2)
        process.kill()
        with trio.fail_after(10):
            await failed.wait()
        assert carts.hosts == set()


async def test_bad_kinds_and_keys(nats_server: NatsServer) -> None:
    """Kind names follow the name rule; keys are non-empty strings; a kind is one class and hosted once."""
    async with connect(nats_server.url, node="a", **FAST) as a:
        with pytest.raises(ValueError):
            await a.entities("bad.kind", Cart)
        carts = await a.host_entities("cart", factory_of("a"))
        with pytest.raises(ValueError, match="key"):
            carts.ref("")
        with pytest.raises(ValueError, match="already"):
            await a.host_entities("cart", factory_of("a"))
        with pytest.raises(ValueError, match="Cart"):
            await a.entities("cart", hybrid.Agent)
        assert "cart" in repr(carts)
