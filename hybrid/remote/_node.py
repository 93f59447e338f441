"""The node: this process's member of a cluster, serving local agents by name and reaching remote ones.

A node is one NATS connection (`open_nats`), one nursery, a lease in the cluster's
membership bucket (`Membership`) and its entries in the name registry (the KV bucket
``hybrid_<cluster>_names``: ``agent.<name>`` holds the name of the node serving it).

Serving: each published agent has the subject ``hybrid.<cluster>.agent.<name>``,
read by a sync handler on the trio thread (no task per message). An event is
decoded and sent to the local address; a request is decoded and handed to the local
agent with `hybrid._foreign.answer_into`, so its answer is published from the
answering agent's own task. When the agent is given up for good, its end is
announced on ``hybrid.<cluster>.ended.<name>`` and its name leaves the registry.

Reaching: a looked-up name is an ordinary `hybrid.Address` made by
`hybrid._foreign.foreign_address`, whose `_Link` encodes and publishes. Names are bound
lazily: the first request, `join()` or monitor reads the registry once to learn the
serving node, so that the node's loss (its lease expired) fails the requests waiting
there and ends the address (`NodeLost`).

Remote spawn: each node answers on ``hybrid.<cluster>.node.<node>.ctl``; a spawn
request names a registered factory and carries its arguments, encoded for the
factory's annotations.

Delivery is what core NATS gives: at most once, in order per (sending node, agent).
The node imports the core's seam `hybrid._foreign` (the one private module
`hybrid.remote` uses) and otherwise public names only.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import logging
import secrets
import typing
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar, cast, final

import attrs
import msgspec
import outcome
import trio

import hybrid
from hybrid import AgentStopped, HybridError, NameInUse, StopKind, StopReason
from hybrid import _foreign as foreign
from hybrid._foreign import RequestCall
from hybrid.codec import CodecError, MessageCodec

from . import _wire as wire
from ._entities import Entities, check_kind
from ._errors import MessageTooLarge, NodeLost, RemoteError, RemoteFailure, RemoteUnavailable
from ._jetstream import JetStream, KeyExists, KeyValue, WrongRevision, jetstream
from ._jobs import WorkQueue, open_work_queue
from ._membership import Membership, check_lease
from ._names import (
    agent_subject,
    check_cluster,
    check_name,
    ended_subject,
    name_key,
    names_bucket,
    node_control_subject,
)
from ._nats import open_nats
from ._served import Served
from ._transport import Message, Transport

__all__ = ["Node", "NodeStatistics", "connect"]

logger = logging.getLogger("hybrid.remote")

A = TypeVar("A", bound="hybrid.Agent[Any]")
J = TypeVar("J", bound="hybrid.Request[Any]")

_ENDED_PATTERN: Final = "hybrid.{cluster}.ended.*"

_REGISTER_TRIES: Final = 8
"""Reads of a name's registry entry before a publish gives up on a name that keeps changing."""

_UNREGISTER_FOR: Final = 30.0
"""Seconds a node watches for the registry entry of a publish that failed, to delete it."""


def _is_agent_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, hybrid.Agent)


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception in `group` that is not a cancellation (nested groups flattened), else a
    cancellation if that is all there is, else the group."""
    leaves: list[BaseException] = []
    cancels: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in cast("BaseExceptionGroup[BaseException]", error).exceptions:
                collect(inner)
        else:
            (cancels if isinstance(error, trio.Cancelled) else leaves).append(error)

    collect(group)
    if len(leaves) == 1:
        return leaves[0]
    return cancels[0] if not leaves and cancels else group


def _error_of(result: outcome.Outcome[Any]) -> BaseException:
    assert isinstance(result, outcome.Error)
    return result.error


@attrs.frozen
class NodeStatistics:
    """A snapshot of a node's counters.

    Attributes:
        nodes: the nodes of the cluster seen alive (this one included).
        published: names this node serves now.
        looked_up: remote addresses this node holds (one per name and class).
        requests_waiting: requests on this node's connection still waiting for their
            reply: the calls below, spawns, and the node's own registry and lease
            requests.
        calls_waiting: requests to remote agents (looked-up addresses, entity
            references) still waiting for their answer.
        received: messages taken from the wire for its published agents.
        dropped: messages received but not handled: they did not decode, named an
            unknown type, or their agent could not take them (full, ended).
        spawned: agents started here by `Node.spawn` calls of any node.
    """

    nodes: frozenset[str]
    published: int
    looked_up: int
    requests_waiting: int
    calls_waiting: int
    received: int
    dropped: int
    spawned: int


# -- serving ---------------------------------------------------------------------------


@final
class _ReplyTo:
    """Where a served request's answer goes: a `Gathering` of one call, called in the answering agent's task."""

    __slots__ = ("node", "reply", "served")

    def __init__(self, node: Node, served: Served, reply: str) -> None:
        self.node = node
        self.served = served
        self.reply = reply

    def answered(self, call: RequestCall[Any], result: outcome.Outcome[Any]) -> None:
        self.served.calls.pop(self.reply, None)
        self.node._answer(self.reply, foreign.request_of(call), result)  # noqa: SLF001 - the node's own helper


# -- reaching --------------------------------------------------------------------------


class _Binding(enum.Enum):
    UNKNOWN = "unknown"  # the serving node is not known: not asked yet, or the name was not published
    ASKING = "asking"  # a registry read is under way
    KNOWN = "known"  # `host` serves it (at `revision`)


@final
class _RemoteName:
    """What this node knows of one remote name: its addresses (one per class) and the node serving it."""

    __slots__ = ("binding", "host", "links", "name", "revision", "watched")

    def __init__(self, name: str) -> None:
        self.name = name
        self.links: dict[type, _Link] = {}
        self.binding = _Binding.UNKNOWN
        self.host = ""
        """The serving node, once known."""
        self.revision = 0
        """The registry revision it was published at, once known: an end announced
        for another revision is another incarnation's."""
        self.watched = False
        """Someone waits for its end: an unpublished name then ends the addresses."""


@final
class _Link:
    """The link of one looked-up address: encodes and publishes on the agent's subject."""

    __slots__ = ("address", "agent_type", "node", "pending", "remote", "run", "subject")

    def __init__(self, node: Node, remote: _RemoteName, agent_type: type) -> None:
        self.node = node
        self.remote = remote
        self.agent_type = agent_type
        self.subject = agent_subject(node.cluster, remote.name)
        self.pending: dict[RequestCall[Any], str] = {}
        """The calls waiting for their reply, with their reply subject."""
        self.address, self.run = foreign.foreign_address(remote.name, agent_type, self)

    def deliver(self, event: object) -> None:
        name, version, body = self.node._encode(event)  # noqa: SLF001
        self.node.transport.publish(self.subject, wire.ENCODER.encode(wire.Envelope(wire.EVENT, name, version, body)))

    def call(self, call: RequestCall[Any]) -> None:
        node = self.node
        request = foreign.request_of(call)
        pending = self.pending
        name = self.remote.name

        def on_reply(result: outcome.Outcome[Message]) -> None:
            if pending.pop(call, None) is not None:
                foreign.complete(call, node._reply_outcome(name, request, result))  # noqa: SLF001

        try:
            kind, version, body = node._encode(request)  # noqa: SLF001
            payload = wire.ENCODER.encode(wire.Envelope(wire.Kind.REQUEST, kind, version, body))
            pending[call] = node.transport.send_request(self.subject, payload, None, on_reply)
        except Exception as error:  # every failure goes to the caller, once it waits
            foreign.fail_soon(call, error)
            return
        if self.remote.binding is _Binding.UNKNOWN:
            node._bind(self.remote)  # noqa: SLF001 - so that the serving node's loss fails this call

    def withdraw(self, call: RequestCall[Any]) -> None:
        reply = self.pending.pop(call, None)
        if reply is not None:
            transport = self.node.transport
            transport.forget(reply)
            with contextlib.suppress(RemoteUnavailable):  # the link is down: no cancel, the request may run
                transport.publish(self.subject, wire.cancel_payload(reply))

    def interrupt(self) -> None:
        self.node.transport.publish(self.subject, wire.INTERRUPT_PAYLOAD)

    def watched(self) -> None:
        remote = self.remote
        remote.watched = True
        if remote.binding is _Binding.UNKNOWN:
            self.node._bind(remote)  # noqa: SLF001

    def fail_pending(self, error: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for call, reply in pending.items():
            self.node.transport.forget(reply)
            foreign.complete(call, outcome.Error(error))


# -- spawning --------------------------------------------------------------------------


class _Spawn(msgspec.Struct, array_like=True, frozen=True):
    """A spawn request on a node's control subject: the factory's name, the agent's name, the arguments."""

    factory: str
    name: str
    arguments: bytes


_SPAWN: Final = msgspec.msgpack.Decoder(_Spawn)


@final
class _Factory:
    """A registered factory: what it makes, and the type its positional arguments are encoded for."""

    __slots__ = ("agent_type", "function", "name", "parameters")

    def __init__(self, function: Callable[..., hybrid.Agent[Any]], name: str) -> None:
        self.function = function
        self.name = name
        self.agent_type, self.parameters = _factory_types(function)

    def arguments_type(self, count: int) -> Any:
        if count > len(self.parameters):
            raise TypeError(f"factory {self.name!r} takes at most {len(self.parameters)} arguments, got {count}")
        return tuple.__class_getitem__(tuple(self.parameters[:count])) if count else tuple[()]


def _factory_types(function: Callable[..., Any]) -> tuple[type, list[Any]]:
    """The agent class `function` makes and its positional parameters' annotations (Any where none)."""
    if _is_agent_class(function):
        agent_type = cast("type", function)
        target: Callable[..., Any] = vars(agent_type).get("__init__", function)
    else:
        target = function
        made = typing.get_type_hints(function).get("return")
        if not _is_agent_class(made):
            raise ValueError(
                f"factory {function!r} must be an Agent subclass, or a function annotated to return one "
                f"(-> MyAgent), got return annotation {made!r}"
            )
        agent_type = cast("type", made)
    hints = typing.get_type_hints(target)
    parameters: list[Any] = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            parameters.append(hints.get(parameter.name, Any))
    return agent_type, parameters


def _factory_name(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


# -- the node ----------------------------------------------------------------------------


@final
class Node:
    """This process's member of a cluster: made by `connect`, valid inside its block.

    Every method is called from the trio thread that entered `connect`.
    """

    def __init__(self, transport: Transport, nursery: trio.Nursery, cluster: str, name: str, lease: int) -> None:
        self.transport: Final = transport
        """The connection to NATS."""
        self.cluster: Final = cluster
        """The cluster's name: the first token of every subject the node uses."""
        self.name: Final = name
        """The node's name, unique among the live nodes of the cluster."""
        self.codec: Final = MessageCodec()
        """The message classes this node encodes and decodes."""
        for error in (CodecError, RemoteError, RemoteUnavailable):
            self.codec.register_error(error)
        self._js: Final[JetStream] = jetstream(transport)
        self._membership: Final = Membership(
            self._js,
            cluster,
            name,
            lease,
            on_lost=self._node_lost,
            on_rejoined=self._rejoined,
            on_changed=self._rebalance,
        )
        self._kinds: dict[str, Entities[Any]] = {}
        """The entity kinds this node reaches (and perhaps hosts), by name."""
        self._names: KeyValue | None = None
        """The name registry, once opened."""
        self._nursery = nursery
        self._served: dict[str, Served] = {}
        """Published names, until they end or are unpublished."""
        self._remote: dict[str, _RemoteName] = {}
        """Looked-up names, until their agent is known to have ended."""
        self._hosted: dict[str, set[str]] = {}
        """The looked-up names whose serving node is known, by node: its loss ends them."""
        self._known: set[type] = set()
        """Message classes registered in `codec` by this node (a fast check before encoding)."""
        self._factories: dict[str, _Factory] = {}
        self._received = 0
        self._dropped = 0
        self._spawned = 0
        self._closed = False

    # -- reaching remote agents -----------------------------------------------------------

    def lookup(self, name: str, agent_type: type[A]) -> hybrid.Address[A]:
        """The address of the agent published as `name` on some node of the cluster.

        No I/O: the name is bound when a message goes out. `agent_type` is the
        agent's class (importable on both sides): messages are checked against
        its handlers here, in the sender, and its ``Agent[T]`` types `join()`.
        A name that nothing serves fails requests with `hybrid.AgentStopped`.
        The same name and class give the same address, until its agent ends.

        Raises:
            ValueError: a bad name (see the name rule), or `agent_type` is not an Agent subclass.
            RemoteUnavailable: the node has closed.
        """
        check_name(name, "agent name")
        if not _is_agent_class(agent_type):
            raise ValueError(f"lookup({name!r}, ...) needs the agent's class (an Agent subclass), got {agent_type!r}")
        self._check_open()
        remote = self._remote.get(name)
        if remote is None:
            remote = self._remote[name] = _RemoteName(name)
        link = remote.links.get(agent_type)
        if link is None:
            link = remote.links[agent_type] = _Link(self, remote, agent_type)
        return link.address

    def _learn(self, agent_type: type) -> None:
        """Register the message classes `agent_type` handles: what this node may receive for it."""
        events, requests = foreign.handled_types(agent_type)
        for kind in (*events, *requests):
            if kind not in self._known:
                self.codec.register(kind)
                self._known.add(kind)

    def _encode(self, message: object) -> tuple[str, int, bytes]:
        kind = type(message)
        if kind not in self._known:
            self.codec.register(kind)
            self._known.add(kind)
        return self.codec.encode(message)

    def _reply_outcome(self, name: str, request: object, result: outcome.Outcome[Message]) -> outcome.Outcome[Any]:
        """What the caller of `request` gets from the transport's `result`."""
        if isinstance(result, outcome.Error):
            if isinstance(result.error, AgentStopped):
                return outcome.Error(AgentStopped(f"no agent answers to {name!r} in cluster {self.cluster!r}"))
            return result
        message: Message = result.unwrap()
        try:
            reply = wire.REPLY.decode(message.data)
            if reply.failed:
                return outcome.Error(self.codec.decode_error(reply.body, RemoteFailure))
            return outcome.Value(self.codec.decode_value(self.codec.answer_type(type(request)), reply.body))
        except (msgspec.MsgspecError, CodecError) as error:
            return outcome.Error(CodecError(f"the answer of {name!r} to {request!r} does not decode: {error}"))

    def _bind(self, remote: _RemoteName) -> None:
        """Learn which node serves `remote` (a registry read, in a task)."""
        if remote.binding is _Binding.UNKNOWN and not self._closed:
            remote.binding = _Binding.ASKING
            self._nursery.start_soon(self._read_binding, remote, name=f"hybrid.remote binding of {remote.name}")

    async def _read_binding(self, remote: _RemoteName) -> None:
        try:
            entry = await self._registry().get(name_key(remote.name))
        except RemoteError as error:
            logger.debug("%s: could not read the registry entry of %r: %r", self.name, remote.name, error)
            remote.binding = _Binding.UNKNOWN  # asked again at the next request, monitor or reconnect
            return
        if self._remote.get(remote.name) is not remote:
            return  # ended meanwhile
        if entry is None:
            remote.binding = _Binding.UNKNOWN
            if remote.watched:
                self._end_remote(remote, AgentStopped(f"no agent is published as {remote.name!r}"))
            return
        host = entry.value.decode()
        remote.binding = _Binding.KNOWN
        remote.host = host
        remote.revision = entry.revision
        if host in self._membership.live:
            self._hosted.setdefault(host, set()).add(remote.name)
        else:
            self._end_remote(remote, NodeLost(host, f"node {host!r}, serving {remote.name!r}, has left the cluster"))

    async def _check_bindings(self) -> None:
        """After a reconnect: ends announced meanwhile were missed; the registry tells which names ended."""
        for remote in list(self._remote.values()):
            if remote.binding is _Binding.UNKNOWN and remote.watched:
                self._bind(remote)  # a read that failed while the link was down: try again
            elif remote.binding is _Binding.KNOWN and remote.watched:
                try:
                    entry = await self._registry().get(name_key(remote.name))
                except RemoteError:
                    return  # disconnected again: checked after the next reconnect
                if self._remote.get(remote.name) is remote and (entry is None or entry.revision != remote.revision):
                    self._end_remote(remote, AgentStopped(f"{remote.name!r} ended while this node was disconnected"))

    def _on_ended(self, msg: Message) -> None:
        name = msg.subject.rpartition(".")[2]
        remote = self._remote.get(name)
        if remote is None:
            return
        try:
            ended = wire.ENDED.decode(msg.data)
            kind = StopKind(ended.kind)
        except (msgspec.MsgspecError, ValueError):
            logger.warning("%s: dropped an undecodable end of %r", self.name, name)
            return
        if remote.revision and ended.revision and remote.revision != ended.revision:
            return  # the end of another incarnation of the name
        self._forget(remote)
        for agent_type, link in remote.links.items():
            error: BaseException | None = None
            output: Any = None
            try:
                if ended.error is not None:
                    error = self.codec.decode_error(ended.error, RemoteFailure)
                elif ended.output is not None:
                    output = self.codec.decode_value(self.codec.output_type(agent_type), ended.output)
            except (msgspec.MsgspecError, CodecError) as problem:
                error = CodecError(f"the end of {name!r} does not decode: {problem}")
            if kind is StopKind.FAILED and error is None:
                error = RemoteFailure("unknown", "the remote agent failed")
            link.run.finish(StopReason(kind, error if kind is StopKind.FAILED else None), output, error)

    def _end_remote(self, remote: _RemoteName, error: BaseException) -> None:
        """`remote` ended in a way no announcement told (its node was lost, it was never published)."""
        self._forget(remote)
        for link in remote.links.values():
            if isinstance(error, NodeLost):
                link.fail_pending(error)
            link.run.finish(StopReason(StopKind.FAILED, error), None, error)

    def _forget(self, remote: _RemoteName) -> None:
        if self._remote.get(remote.name) is remote:
            del self._remote[remote.name]
        hosted = self._hosted.get(remote.host)
        if hosted is not None:
            hosted.discard(remote.name)

    def _rebalance(self) -> None:
        for entities in self._kinds.values():
            entities._rebalance()  # noqa: SLF001

    def _node_lost(self, node: str) -> None:
        """`node` left the cluster (its lease expired, or it left cleanly): what it served has ended."""
        for entities in self._kinds.values():
            entities._node_lost(node)  # noqa: SLF001
        for name in self._hosted.pop(node, set()):
            remote = self._remote.get(name)
            if remote is not None and remote.host == node:
                self._end_remote(remote, NodeLost(node, f"node {node!r}, serving {name!r}, has left the cluster"))

    # -- serving local agents -----------------------------------------------------------

    async def publish(self, name: str, address: hybrid.Address[Any]) -> None:
        """Serve the local agent at `address` as `name`, cluster-wide, until it ends or is unpublished.

        Returns once the name is registered and reachable from every node. When
        the agent ends for good (not at a supervisor's restart), its end is
        announced (remote `join()` and monitors see it) and the name is free again.

        Raises:
            ValueError: a bad name, or `address` is not a local address.
            NameInUse: `name` is published already, by this node or a live one.
            hybrid.AgentStopped: the agent has ended.
            RemoteUnavailable: the connection to NATS is down.
        """
        check_name(name, "agent name")
        self._check_open()
        if foreign.is_foreign(address):
            raise ValueError(f"publish({name!r}, {address!r}): only a local agent can be published")
        if name in self._served:
            raise NameInUse(f"{name!r} is published already by this node ({self._served[name].address!r})")
        if not address.is_alive:
            raise AgentStopped(f"publish({name!r}, {address!r}): the agent has ended")
        self._learn(address.agent_type)
        served = self._served[name] = Served(name, address)
        try:
            try:
                served.revision = await self._register(name)
            except BaseException:
                # The create may be stored (or still on the wire): clear it, in the background.
                self._nursery.start_soon(self._unregister, name, name=f"hybrid.remote unregister {name}")
                raise
            served.subscription = await self.transport.subscribe_handler(
                agent_subject(self.cluster, name), functools.partial(self._serve, served)
            )
            await self.transport.flush()
        except BaseException:
            await self._unpublish(served)
            raise
        served.cancel_farewell = foreign.on_given_up(address, functools.partial(self._ended, served))

    async def _register(self, name: str) -> int:
        """Enter `name` in the registry as served here; its revision."""
        registry = self._registry()
        key = name_key(name)
        value = self.name.encode()
        for _ in range(_REGISTER_TRIES):  # the entry may change between two reads: look again
            try:
                return await registry.create(key, value)
            except KeyExists:
                entry = await registry.get(key)
            if entry is None:
                continue  # deleted meanwhile (its agent ended): create again
            host = entry.value.decode()
            if host != self.name and host in self._membership.live:
                raise NameInUse(f"{name!r} is published by node {host!r} in cluster {self.cluster!r}")
            try:  # the entry of a lost node, or of this node's previous life: take it over
                return await registry.update(key, value, revision=entry.revision)
            except WrongRevision:
                continue
        raise NameInUse(f"{name!r} changed hands {_REGISTER_TRIES} times while this node tried to publish it")

    async def _unregister(self, name: str) -> None:
        """Delete the registry entry of a publish that failed, once it shows (it may still be on the wire).

        Gives up when this node publishes `name` again, when another node's entry
        shows, or after `_UNREGISTER_FOR` seconds without an entry.
        """
        registry = self._registry()
        with trio.move_on_after(_UNREGISTER_FOR):
            while name not in self._served:
                with contextlib.suppress(RemoteError):
                    entry = await registry.get(name_key(name))
                    if entry is not None:
                        if entry.value.decode() == self.name and name not in self._served:
                            await registry.delete(name_key(name), revision=entry.revision)
                        return
                await trio.sleep(0.2)

    async def unpublish(self, name: str) -> None:
        """Stop serving `name` (the agent keeps running; requests to the name then fail with `AgentStopped`).

        Raises:
            KeyError: this node does not publish `name`.
        """
        served = self._served.get(name)
        if served is None:
            raise KeyError(f"this node does not publish {name!r}")
        await self._unpublish(served)

    async def _unpublish(self, served: Served) -> None:
        if self._served.get(served.name) is served:
            del self._served[served.name]
        served.cancel_farewell()
        calls, served.calls = served.calls, {}
        for reply, call in calls.items():  # their callers must not wait for answers that cannot come
            foreign.withdraw(call)
            stopped = AgentStopped(f"{served.name!r} was unpublished before it answered (the request may have run)")
            self._answer(reply, None, outcome.Error(stopped))
        with trio.CancelScope(shield=True):
            if served.subscription is not None:
                subscription, served.subscription = served.subscription, None
                await subscription.aclose()
            if served.revision:
                revision, served.revision = served.revision, 0
                with trio.move_on_after(2), contextlib.suppress(RemoteError):
                    await self._registry().delete(name_key(served.name), revision=revision)

    def _serve(self, served: Served, msg: Message) -> None:
        """A message on the subject of a published agent (sync, on the trio thread)."""
        self._received += 1
        try:
            envelope = wire.ENVELOPE.decode(msg.data)
        except msgspec.MsgspecError as error:
            self._drop(served, msg, CodecError(f"a message to {served.name!r} is not a hybrid envelope: {error}"))
            return
        self._deliver(served, msg, envelope)

    def _deliver(self, served: Served, msg: Message, envelope: wire.Envelope) -> None:
        """Hand a decoded envelope to the served agent: the message, an interrupt, a caller's give-up."""
        kind = envelope.kind
        if kind is wire.Kind.CANCEL:
            given_up = served.calls.pop(envelope.name, None)
            if given_up is not None:
                foreign.withdraw(given_up)
            return
        if kind is wire.Kind.INTERRUPT:
            served.address.interrupt()
            return
        try:
            message = self.codec.decode(envelope.name, envelope.version, envelope.body)
        except CodecError as error:
            self._drop(served, msg, error)
            return
        address = served.address
        if kind is wire.EVENT:
            try:
                address.send(message)
            except HybridError as error:
                self._drop(served, msg, error)
            return
        reply = msg.reply
        if not reply:
            self._drop(served, msg, CodecError(f"a request to {served.name!r} came without a reply subject"))
            return
        try:
            call: RequestCall[Any] = address.request(cast("hybrid.Request[Any]", message))  # checked by its handlers
        except HybridError as error:
            self._drop(served, msg, error)
            return
        served.calls[reply] = call
        if not foreign.answer_into(call, _ReplyTo(self, served, reply)):
            self._nursery.start_soon(self._answer_in_task, served, call, reply, name=f"hybrid.remote answer to {reply}")

    def _drop_raw(self, where: str, msg: Message, error: BaseException, *, answer: BaseException | None = None) -> None:
        """Drop a message no agent took; a request is answered with `answer` (default: not an envelope)."""
        self._dropped += 1
        logger.warning("%s: dropped a message to %r: %s", self.name, where, error)
        if msg.reply:
            failure = CodecError(f"not a hybrid envelope: {error}") if answer is None else answer
            self._answer(msg.reply, None, outcome.Error(failure))

    def _drop(self, served: Served, msg: Message, error: BaseException) -> None:
        self._dropped += 1
        logger.warning("%s: dropped a message to %r: %s", self.name, served.name, error)
        if msg.reply:
            self._answer(msg.reply, None, outcome.Error(error))

    async def _answer_in_task(self, served: Served, call: RequestCall[Any], reply: str) -> None:
        """The answer of a request that could not be handed over without a task (a full bounded mailbox)."""

        async def wait() -> Any:
            return await call

        result = await outcome.acapture(wait)
        if served.calls.pop(reply, None) is call:
            self._answer(reply, foreign.request_of(call), result)

    def _answer(self, reply: str, request: object, result: outcome.Outcome[Any]) -> None:
        try:
            if isinstance(result, outcome.Value):
                try:
                    body = self.codec.encode_value(self.codec.answer_type(type(request)), result.value)
                    payload = wire.ENCODER.encode(wire.Reply(False, body))
                except CodecError as error:
                    payload = wire.ENCODER.encode(wire.Reply(True, self.codec.encode_error(error)))
            else:
                payload = wire.ENCODER.encode(wire.Reply(True, self.codec.encode_error(_error_of(result))))
            try:
                self.transport.publish(reply, payload)
            except MessageTooLarge as error:  # the caller learns that its answer could not come
                too_large = RemoteError(f"the answer could not be sent: {error}")
                self.transport.publish(reply, wire.ENCODER.encode(wire.Reply(True, self.codec.encode_error(too_large))))
        except HybridError as error:  # the link is down: the caller learns it from its own link
            logger.warning("%s: could not answer on %r: %s", self.name, reply, error)

    def _ended(self, served: Served, reason: StopReason, output: Any, error: BaseException | None) -> None:
        """A published agent was given up: announce its end and free its name."""
        if self._served.get(served.name) is not served:
            return
        revision = served.revision
        self._nursery.start_soon(self._unpublish, served)
        kind = reason.kind.value
        ended = wire.Ended(kind, revision=revision)
        try:
            if error is not None:
                ended = wire.Ended(kind, error=self.codec.encode_error(error), revision=revision)
            elif output is not None:
                body = self.codec.encode_value(self.codec.output_type(served.address.agent_type), output)
                ended = wire.Ended(kind, output=body, revision=revision)
        except CodecError as problem:
            ended = wire.Ended(kind, error=self.codec.encode_error(problem), revision=revision)
        subject = ended_subject(self.cluster, served.name)
        try:
            try:
                self.transport.publish(subject, wire.ENCODER.encode(ended))
            except MessageTooLarge as problem:  # announced without the output: joiners get the error
                too_large = RemoteError(f"the end could not be announced: {problem}")
                reduced = wire.Ended(kind, error=self.codec.encode_error(too_large), revision=revision)
                self.transport.publish(subject, wire.ENCODER.encode(reduced))
        except HybridError as problem:
            logger.warning("%s: could not announce the end of %r: %s", self.name, served.name, problem)

    def _rejoined(self) -> None:
        """This node's lease had run out: the others saw it lost, so its names must be registered again."""
        for served in list(self._served.values()):
            self._nursery.start_soon(self._register_again, served)

    async def _register_again(self, served: Served) -> None:
        try:
            served.revision = await self._register(served.name)
        except NameInUse as error:
            logger.error("%s: %s: no longer served here", self.name, error)
            served.revision = 0
            await self._unpublish(served)
        except RemoteError as error:  # pragma: no cover - the link dropped again: the next rejoin retries
            logger.warning("%s: could not register %r again: %r", self.name, served.name, error)

    # -- sharded entities ------------------------------------------------------------------

    async def entities(self, kind: str, agent_type: type[A]) -> Entities[A]:
        """The entities of `kind` (agents of class `agent_type`), to reach by key from this node.

        Returns once this node knows which nodes host the kind. The same kind
        gives the same object.

        Raises:
            ValueError: a bad kind name, or `kind` is known here with another class.
        """
        check_kind(kind)
        self._check_open()
        entities = self._kinds.get(kind)
        if entities is None:
            entities = self._kinds[kind] = Entities(self, kind, agent_type)
            await self._nursery.start(entities._watch)  # noqa: SLF001
        elif entities.agent_type is not agent_type:
            raise ValueError(f"entities of kind {kind!r} are {entities.agent_type.__qualname__}, not {agent_type!r}")
        return entities

    async def host_entities(self, kind: str, factory: Callable[[str], A]) -> Entities[A]:
        """Host entities of `kind` on this node: `factory(key)` makes the entity of a key it owns.

        `factory` is the agent class (called with the key) or a function of the
        key annotated to return one. Keys are spread over the hosting nodes by
        rendezvous hashing; an entity is made on its owner's first message for it.

        Raises:
            ValueError: a bad kind name, or this node hosts `kind` already.

        Example:
            ```python
            carts = await node.host_entities("cart", Cart)
            await carts.ref("user-17").request(Total())
            ```
        """
        agent_type, _ = _factory_types(factory)
        entities = await self.entities(kind, cast("type[A]", agent_type))
        if entities._factory is not None:  # noqa: SLF001
            raise ValueError(f"this node hosts entities of kind {kind!r} already")
        await entities._host(factory)  # noqa: SLF001
        return entities

    # -- work queues ---------------------------------------------------------------------

    async def work_queue(
        self,
        name: str,
        job_type: type[J],
        *,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        max_unacked: int = 1000,
        duplicate_window: float = 120.0,
        max_jobs: int | None = None,
        retry: hybrid.Backoff | None = None,
    ) -> WorkQueue[J]:
        """Open the cluster's durable work queue `name` (JetStream), creating it if needed.

        Every node opening the same name shares the queue: `WorkQueue.put` stores
        a job, `WorkQueue.serve` works on jobs with a local agent. See
        `WorkQueue` for the guarantees (at least once, redelivery after
        `ack_wait` when a worker dies, deduplication by id).

        Args:
            name: the queue's name (the name rule applies).
            job_type: the jobs' class, a `hybrid.Request` subclass.
            ack_wait: seconds after which a job whose worker went silent is handed out again.
            max_deliver: deliveries of a job before it is dead-lettered.
            max_unacked: jobs taken and not finished, across all workers, at most.
            duplicate_window: seconds during which a job id is remembered.
            max_jobs: jobs stored at most (None: no bound); `put` then raises `QueueFull`.
            retry: the delays between a failed job's tries (default: 1 s doubling to 60 s).

        Example:
            ```python
            queue = await node.work_queue("thumbs", Thumbnail, ack_wait=30)
            await queue.put(Thumbnail("a.png"), id="a.png")
            ```
        """
        self._check_open()
        options: dict[str, Any] = {} if retry is None else {"retry": retry}
        return await open_work_queue(
            self.transport,
            self.codec,
            name=name,
            job_type=job_type,
            cluster=self.cluster,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_unacked=max_unacked,
            duplicate_window=duplicate_window,
            max_jobs=max_jobs,
            **options,
        )

    # -- remote spawn --------------------------------------------------------------------

    def register_factory(self, factory: Callable[..., hybrid.Agent[Any]], *, name: str | None = None) -> str:
        """Let other nodes start agents here with `factory` (an Agent subclass or a function returning one).

        Its positional parameters' annotations type the arguments on the wire;
        only its name travels (no code is shipped): the caller of `spawn` names
        the same callable, importable on both sides. Returns the name.

        Raises:
            ValueError: `factory` makes no Agent, or the name is registered already.
        """
        factory_name = _factory_name(factory) if name is None else name
        if factory_name in self._factories and self._factories[factory_name].function is not factory:
            raise ValueError(f"a factory is registered already as {factory_name!r}")
        self._factories[factory_name] = _Factory(factory, factory_name)
        return factory_name

    async def spawn(
        self, on: str, factory: Callable[..., A], *args: Any, name: str | None = None, factory_name: str | None = None
    ) -> hybrid.Address[A]:
        """Start an agent on node `on` with its registered `factory` and `args`; its (remote) address.

        The arguments are encoded for the factory's parameter annotations (no
        pickle); the agent is published on `on` as `name` (default: a fresh
        unique name) and runs until it ends or that node closes.

        Raises:
            NodeLost: no node `on` answers.
            NameInUse: `name` is published already.
            LookupError: node `on` has no factory of that name.
            CodecError: an argument does not encode for its annotation.
        """
        check_name(on, "node name")
        if name is not None:
            check_name(name, "agent name")
        self._check_open()
        spec = _Factory(factory, _factory_name(factory) if factory_name is None else factory_name)
        arguments = self.codec.encode_value(spec.arguments_type(len(args)), args)
        payload = wire.ENCODER.encode(_Spawn(spec.name, name or "", arguments))
        try:
            answer = await self.transport.request(node_control_subject(self.cluster, on), payload)
        except AgentStopped:
            raise NodeLost(on, f"no node {on!r} answers in cluster {self.cluster!r}") from None
        reply = wire.REPLY.decode(answer.data)
        if reply.failed:
            raise self.codec.decode_error(reply.body, RemoteFailure)
        published = msgspec.msgpack.decode(reply.body, type=str)
        return self.lookup(published, cast("type[A]", spec.agent_type))

    def _on_control(self, msg: Message) -> None:
        try:
            spawn = _SPAWN.decode(msg.data)
        except msgspec.MsgspecError as error:
            self._dropped += 1
            logger.warning("%s: dropped an undecodable control message: %s", self.name, error)
            if msg.reply:
                self._answer(msg.reply, None, outcome.Error(CodecError(f"not a control message: {error}")))
            return
        if msg.reply:
            self._nursery.start_soon(self._spawn_here, spawn, msg.reply, name=f"hybrid.remote spawn {spawn.factory}")

    async def _spawn_here(self, spawn: _Spawn, reply: str) -> None:
        async def start() -> str:
            factory = self._factories.get(spawn.factory)
            if factory is None:
                raise LookupError(f"node {self.name!r} has no factory {spawn.factory!r}")
            count = len(msgspec.msgpack.decode(spawn.arguments, type=list[msgspec.Raw]))
            arguments = self.codec.decode_value(factory.arguments_type(count), spawn.arguments)
            agent = factory.function(*cast("tuple[Any, ...]", arguments))
            # The default: the node's name (cut to leave room) and a random suffix, within 64 characters.
            name = spawn.name or f"{self.name[:53]}-{secrets.token_hex(5)}"
            check_name(name, "agent name")
            address: hybrid.Address[Any] = await self._nursery.start(hybrid.AgentRunner(agent).run)
            try:
                await self.publish(name, address)
            except BaseException:
                address.interrupt()
                raise
            self._spawned += 1
            return name

        result = await outcome.acapture(start)
        if isinstance(result, outcome.Value):
            with contextlib.suppress(HybridError):  # the caller sees its request fail (RemoteUnavailable)
                self.transport.publish(reply, wire.ENCODER.encode(wire.Reply(False, wire.ENCODER.encode(result.value))))
        else:
            self._answer(reply, None, result)

    # -- the node -------------------------------------------------------------------

    def statistics(self) -> NodeStatistics:
        """A snapshot of the node's counters."""
        return NodeStatistics(
            nodes=frozenset(self._membership.live),
            published=len(self._served),
            looked_up=sum(len(remote.links) for remote in self._remote.values()),
            requests_waiting=self.transport.statistics().requests_waiting,
            calls_waiting=sum(len(link.pending) for remote in self._remote.values() for link in remote.links.values())
            + sum(entities._calls_waiting() for entities in self._kinds.values()),  # noqa: SLF001
            received=self._received,
            dropped=self._dropped,
            spawned=self._spawned,
        )

    @property
    def nodes(self) -> frozenset[str]:
        """The nodes of the cluster seen alive now (this one included)."""
        return frozenset(self._membership.live)

    async def wait_nodes(self, predicate: Callable[[frozenset[str]], bool]) -> frozenset[str]:
        """Wait until the live nodes satisfy `predicate` (checked now, then at each change); return them.

        A node joins when it connects, and is lost when it leaves or its lease
        expires. Bound the wait with a trio deadline.

        Example:
            ```python
            with trio.fail_after(30):
                await node.wait_nodes(lambda nodes: {"a", "b", "c"} <= nodes)
            ```
        """
        while True:
            nodes = self.nodes
            if predicate(nodes):
                await trio.lowlevel.checkpoint()
                return nodes
            await self._membership.changed.wait()

    def _registry(self) -> KeyValue:
        assert self._names is not None
        return self._names

    def _check_open(self) -> None:
        if self._closed:
            raise RemoteUnavailable(f"node {self.name!r} has closed")

    async def _start(self) -> None:
        await self._membership.join()
        self._names = await self._js.key_value(names_bucket(self.cluster))
        await self._nursery.start(self._membership.run)
        await self.transport.subscribe_handler(_ENDED_PATTERN.format(cluster=self.cluster), self._on_ended)
        await self.transport.subscribe_handler(node_control_subject(self.cluster, self.name), self._on_control)
        await self.transport.flush()
        self._nursery.start_soon(self._watch_link)

    async def _watch_link(self) -> None:
        while True:
            await self.transport.wait_disconnected()
            try:
                await self.transport.wait_connected()
            except RemoteUnavailable:
                return  # closed for good (it gave up reconnecting): every send raises from now on
            await self._check_bindings()

    async def _close(self) -> None:
        self._closed = True
        for served in list(self._served.values()):
            await self._unpublish(served)
        with trio.CancelScope(shield=True):
            for entities in self._kinds.values():
                await entities._leave()  # noqa: SLF001
        with trio.CancelScope(shield=True):
            await self._membership.leave()

    def __repr__(self) -> str:
        return f"<Node {self.name!r} of cluster {self.cluster!r}>"


@asynccontextmanager
async def connect(
    servers: str | Sequence[str],
    *,
    node: str,
    cluster: str = "default",
    lease: float = 5,
    **options: Any,
) -> AsyncGenerator[Node]:
    """Join the cluster as `node` for the duration of an ``async with`` block.

    The server must run JetStream (``nats-server -js``, 2.11 or newer): the
    node's lease and the name registry live in its KV store. Leaving the block
    unpublishes this node's agents (their remote addresses then fail with
    `hybrid.AgentStopped`), fails the requests it still waits for with
    `RemoteUnavailable`, leaves the cluster and closes the connection.

    Args:
        servers: a ``nats://host:port`` URL, or several.
        node: this node's name, unique among the live nodes (``[A-Za-z0-9_-]{1,64}``).
        cluster: the cluster's name: nodes of different clusters never meet.
        lease: seconds (whole, >= 1) without renewal after which a node that died
            counts as lost: its agents' monitors fire, its requests fail.
        options: connection options of `open_nats` (timeouts, reconnection, pings).

    Raises:
        RemoteUnavailable: no server could be reached, or it has no JetStream.
        NameInUse: a live node has this name.
        ValueError: a bad name or option.

    Example:
        ```python
        async with hybrid.remote.connect("nats://127.0.0.1:4222", node="billing-1") as node:
            await node.publish("ledger", ledger_address)
            ledger = node.lookup("ledger", Ledger)
            ledger.send(Credit("acct-9", 100))
            balance = await ledger.request(GetBalance("acct-9"))
        ```
    """
    check_name(node, "node name")
    check_cluster(cluster)
    seconds = check_lease(lease)
    escaped: BaseException | None = None
    async with open_nats(servers, name=node, **options) as transport:
        try:
            async with trio.open_nursery() as nursery:
                the_node = Node(transport, nursery, cluster, node, seconds)
                try:
                    await the_node._start()  # noqa: SLF001
                    yield the_node
                except BaseException as error:  # raised again below, out of the nursery: bare, not in a group
                    escaped = error
                finally:
                    with trio.CancelScope(shield=True):
                        await the_node._close()  # noqa: SLF001
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the node's own task failed (its lease was taken): bare too
            raise _sole(group) from None
        if escaped is not None:
            raise escaped
