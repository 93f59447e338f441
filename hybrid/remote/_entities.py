"""Sharded entities: one agent per key, on the node that owns the key by rendezvous hashing.

The nodes that host a kind (`Node.host_entities`) each enter ``shard.<kind>.<node>`` in
the name registry; every node that reaches the kind (`Node.entities`) watches those
entries. A key's owner is `hybrid.rendezvous` of the key over the hosts that are alive
(in the membership): every node computes the same owner from the same view, and when a
host leaves only its keys move (each to its next-best host); when one joins, only the
keys it now wins move to it.

An entity reference (`Entities.ref`) is an `Address` whose link picks the owner at each
send, and publishes on the owner's shard subject with the key in the envelope. The owner
makes the entity with the kind's factory on its first message and keeps it until it
ends. When a node's view changes, it interrupts the entities whose keys it no longer
owns (their state goes with them, unless they are durable agents).

While views differ (a node joined or left, and the news has not reached every node:
milliseconds on one server), two nodes may briefly hold an entity of one key; a key's
messages from one sender still reach one instance at a time, in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import outcome
import trio

import hybrid
from hybrid import AgentStopped, _validate
from hybrid import _foreign as foreign
from hybrid._foreign import RequestCall

from . import _wire as wire
from ._errors import NodeLost, RemoteError, RemoteUnavailable
from ._jetstream import KvCaughtUp, KvOperation
from ._names import check_name, shard_key, shard_subject
from ._served import Served
from ._transport import Message

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["Entities"]

A = TypeVar("A", bound="hybrid.Agent[Any]")


@final
class Entities(Generic[A]):
    """The entities of one kind across the cluster: made by `Node.entities` or `Node.host_entities`.

    Example:
        ```python
        carts = await node.host_entities("cart", Cart)      # Cart(key) makes the entity of a key
        cart = carts.ref("user-17")                         # an Address[Cart], wherever it lives
        cart.send(AddItem("book"))
        total = await cart.request(Total())
        ```
    """

    def __init__(self, node: Node, kind: str, agent_type: type[A]) -> None:
        self._node = node
        self.kind = kind
        """The kind's name (the name rule applies)."""
        self.agent_type = agent_type
        """The entities' class: messages to a reference are checked against its handlers."""
        self._registered: set[str] = set()
        """The nodes whose registry entry says they host the kind (some may be lost)."""
        self._caught_up = trio.Event()
        self._factory: Callable[[str], A] | None = None
        """Makes the entity of a key, on a hosting node."""
        self._local: dict[str, Served] = {}
        """The entities living here, by key."""
        self._calling: set[_EntityLink] = set()
        """The references with requests waiting for an answer (failed if their owner is lost)."""
        self._changed = trio.Event()
        """Set, and replaced, at each change of the view (`hosts` may have changed)."""

    @property
    def hosts(self) -> frozenset[str]:
        """The live nodes hosting this kind now."""
        return frozenset(self._registered & self._node._membership.live)  # noqa: SLF001

    @property
    def local(self) -> Mapping[str, hybrid.Address[A]]:
        """The entities living on this node, by key (a read-only snapshot)."""
        return MappingProxyType({key: served.address for key, served in self._local.items()})

    async def wait_hosts(self, predicate: Callable[[frozenset[str]], bool]) -> frozenset[str]:
        """Wait until the live hosts of this kind satisfy `predicate` (checked now, then at each change).

        Example:
            ```python
            with trio.fail_after(30):
                await carts.wait_hosts(lambda hosts: len(hosts) >= 2)
            ```
        """
        while True:
            hosts = self.hosts
            if predicate(hosts):
                await trio.lowlevel.checkpoint()
                return hosts
            await self._changed.wait()

    def owner(self, key: str) -> str:
        """The node that owns `key` now.

        Raises:
            AgentStopped: no live node hosts this kind.
        """
        hosts = self.hosts
        if not hosts:
            raise AgentStopped(f"no live node hosts entities of kind {self.kind!r}")
        return hybrid.rendezvous(key, hosts)

    def ref(self, key: str) -> hybrid.Address[A]:
        """The address of the entity of `key`, routed to its owner at each send (no I/O).

        `join()` and monitors do not apply to a reference (its entity may move):
        they raise `TypeError`.
        """
        return _EntityLink(self, _check_key(key)).address

    # -- hosting --------------------------------------------------------------------

    def _serve(self, msg: Message) -> None:
        """A message on this node's shard subject of the kind (sync, on the trio thread)."""
        node = self._node
        try:
            envelope = wire.ENVELOPE.decode(msg.data)
        except Exception as error:
            node._drop_raw(self.kind, msg, error)  # noqa: SLF001
            return
        key = envelope.key
        served = self._local.get(key)
        if served is None:
            if envelope.kind in (wire.Kind.CANCEL, wire.Kind.INTERRUPT) or not key:
                return  # nothing lives here to interrupt or withdraw from
            assert self._factory is not None
            try:
                agent = self._factory(key)
            except Exception as error:  # a request learns it now, not at its deadline
                node._drop_raw(f"{self.kind}/{key}", msg, error, answer=error)  # noqa: SLF001
                return
            served = self._start(key, agent)
        node._received += 1  # noqa: SLF001
        node._deliver(served, msg, envelope)  # noqa: SLF001

    def _start(self, key: str, agent: hybrid.Agent[Any]) -> Served:
        runner = hybrid.AgentRunner(agent)
        served = self._local[key] = Served(f"{self.kind}/{key}", runner.address)

        def ended(reason: hybrid.StopReason, output: object, error: BaseException | None) -> None:
            if self._local.get(key) is served:
                del self._local[key]

        served.cancel_farewell = foreign.on_given_up(runner.address, ended)
        self._node._nursery.start_soon(runner.run, name=f"hybrid entity {self.kind}/{key}")  # noqa: SLF001
        return served

    def _rebalance(self) -> None:
        """The view changed: interrupt the entities whose keys this node no longer owns."""
        self._changed.set()
        self._changed = trio.Event()
        if not self._local:
            return
        hosts = self.hosts
        me = self._node.name
        for key, served in list(self._local.items()):
            if not hosts or hybrid.rendezvous(key, hosts) != me:
                served.address.interrupt()

    def _calls_waiting(self) -> int:
        return sum(len(link.pending) for link in self._calling)

    def _node_lost(self, node: str) -> None:
        for link in list(self._calling):
            link.fail_owner(node)

    async def _watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the registry entries of the kind's hosts; started once caught up."""
        prefix = f"shard.{self.kind}."
        registry = self._node._registry()  # noqa: SLF001
        async with registry.watch(prefix + ">", headers_only=True) as changes:
            async for change in changes:
                if isinstance(change, KvCaughtUp):
                    self._registered = {key[len(prefix) :] for key in change.keys}
                    if not self._caught_up.is_set():
                        self._caught_up.set()
                        task_status.started()
                elif change.operation is KvOperation.PUT:
                    self._registered.add(change.key[len(prefix) :])
                else:
                    self._registered.discard(change.key[len(prefix) :])
                self._rebalance()

    async def _host(self, factory: Callable[[str], A]) -> None:
        node = self._node
        self._factory = factory
        node._learn(self.agent_type)  # noqa: SLF001
        subscription = None
        try:  # reachable first, then announced: other nodes route here once they see the entry
            subject = shard_subject(node.cluster, node.name, self.kind)
            subscription = await node.transport.subscribe_handler(subject, self._serve)
            await node.transport.flush()
            await node._registry().put(shard_key(self.kind, node.name), b"")  # noqa: SLF001
        except BaseException:  # not hosted after all: hosting may be tried again
            self._factory = None
            with trio.CancelScope(shield=True):
                if subscription is not None:
                    await subscription.aclose()
                await self._leave_registry()
            raise
        self._registered.add(node.name)
        self._rebalance()

    async def _leave(self) -> None:
        if self._factory is not None:
            await self._leave_registry()

    async def _leave_registry(self) -> None:
        with trio.move_on_after(2), contextlib.suppress(RemoteError):
            await self._node._registry().delete(shard_key(self.kind, self._node.name))  # noqa: SLF001

    def __repr__(self) -> str:
        return f"<Entities {self.kind!r} of {self.agent_type.__qualname__} on {sorted(self.hosts)}>"


@final
class _EntityLink:
    """The link of one entity reference: each message goes to the key's owner now."""

    __slots__ = ("address", "entities", "key", "pending", "run")

    def __init__(self, entities: Entities[Any], key: str) -> None:
        self.entities = entities
        self.key = key
        self.pending: dict[RequestCall[Any], tuple[str, str]] = {}
        """The calls waiting for their answer: reply subject, owner."""
        self.address, self.run = foreign.foreign_address(f"{entities.kind}/{key}", entities.agent_type, self)

    def _subject(self) -> tuple[str, str]:
        entities = self.entities
        owner = entities.owner(self.key)
        return owner, shard_subject(entities._node.cluster, owner, entities.kind)  # noqa: SLF001

    def deliver(self, event: object) -> None:
        node = self.entities._node  # noqa: SLF001
        _, subject = self._subject()
        name, version, body = node._encode(event)  # noqa: SLF001
        node.transport.publish(subject, wire.ENCODER.encode(wire.Envelope(wire.EVENT, name, version, body, self.key)))

    def call(self, call: RequestCall[Any]) -> None:
        entities = self.entities
        node = entities._node  # noqa: SLF001
        request = foreign.request_of(call)
        pending = self.pending

        def on_reply(result: outcome.Outcome[Message]) -> None:
            if pending.pop(call, None) is not None:
                if not pending:
                    entities._calling.discard(self)  # noqa: SLF001
                foreign.complete(call, node._reply_outcome(self.run.name, request, result))  # noqa: SLF001

        try:
            owner, subject = self._subject()
            kind, version, body = node._encode(request)  # noqa: SLF001
            payload = wire.ENCODER.encode(wire.Envelope(wire.Kind.REQUEST, kind, version, body, self.key))
            pending[call] = (node.transport.send_request(subject, payload, None, on_reply), owner)
        except Exception as error:  # every failure goes to the caller, once it waits
            foreign.fail_soon(call, error)
            return
        entities._calling.add(self)  # noqa: SLF001

    def withdraw(self, call: RequestCall[Any]) -> None:
        sent = self.pending.pop(call, None)
        if sent is not None:
            reply, owner = sent
            entities = self.entities
            node = entities._node  # noqa: SLF001
            node.transport.forget(reply)
            if not self.pending:
                entities._calling.discard(self)  # noqa: SLF001
            with contextlib.suppress(RemoteUnavailable):
                subject = shard_subject(node.cluster, owner, entities.kind)
                node.transport.publish(subject, wire.cancel_payload(reply, self.key))

    def interrupt(self) -> None:
        node = self.entities._node  # noqa: SLF001
        _, subject = self._subject()
        node.transport.publish(subject, wire.interrupt_payload(self.key))

    def watched(self) -> None:
        raise TypeError(
            f"{self.address!r} is an entity reference: its entity may move between nodes, so it cannot be "
            "joined or monitored (have the entity report its end with a message instead)"
        )

    def fail_owner(self, node: str) -> None:
        """`node` was lost: fail the calls waiting for its answer (they may have run)."""
        transport = self.entities._node.transport  # noqa: SLF001
        for call, (reply, owner) in list(self.pending.items()):
            if owner == node:
                del self.pending[call]
                transport.forget(reply)
                foreign.complete(
                    call, outcome.Error(NodeLost(node, f"node {node!r}, owner of {self.run.name!r}, was lost"))
                )
        if not self.pending:
            self.entities._calling.discard(self)  # noqa: SLF001


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"an entity key is a non-empty str, got {key!r}")
    return _validate.utf8("an entity key", str.__str__(key))  # it is hashed and sent as UTF-8


def check_kind(kind: str) -> str:
    """`kind` if it follows the name rule."""
    return check_name(kind, "entity kind")
