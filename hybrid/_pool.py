"""Worker pools: supervised copies of one agent behind one address.

A `Pool` is a supervisor whose children are `size` agents made by one factory,
and whose own mailbox takes the messages those agents handle: each event is
passed on to one member (or every member, for `Routing.BROADCAST`), each
request is moved to one member with ``@on_request(route=True)``, so the member
answers the caller directly and the pool is free for its next message at once.

Its class is made per worker type (``Pool[Worker]``, cached): the handler
tables of the pool list the worker's message types, so a message that the
workers would not handle is refused in the sender, as for any agent.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import random
from collections.abc import Callable
from typing import Any, ClassVar, Final, Generic, cast

from typing_extensions import Self, TypeVar

from ._address import Address
from ._agent import Agent
from ._exceptions import AgentStopped, LifecycleError
from ._handlers import on_request
from ._next import Next
from ._rendezvous import rendezvous
from ._request import Request
from ._stop import StopKind, StopReason
from ._supervisor import Restart, Supervisor
from ._validate import count

logger = logging.getLogger("hybrid.pool")

A = TypeVar("A", bound=Agent[Any], default=Agent[Any])


class Routing(enum.Enum):
    """How a [`Pool`][hybrid.Pool] picks the member that gets a message.

    Attributes:
        ROUND_ROBIN: each member in turn.
        RANDOM: a member at random.
        SMALLEST_MAILBOX: the member with the fewest messages queued, an idle
            one first (ties: in turn), so a slow member gets less work. It
            reads every member's statistics per message: for pools of tens.
        CONSISTENT_HASH: the member that owns ``key(message)`` by rendezvous
            hashing ([`hybrid.rendezvous`][hybrid.rendezvous]): every message
            with one key reaches one member, in order (per-key state, sharding).
        BROADCAST: every member gets each event; requests are refused (ask
            each member with [`hybrid.quorum`][hybrid.quorum] over
            `PoolMembers` instead).
    """

    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    SMALLEST_MAILBOX = "smallest-mailbox"
    CONSISTENT_HASH = "consistent-hash"
    BROADCAST = "broadcast"


class PoolMembers(Request[tuple[Address[Any], ...]]):
    """Ask a [`Pool`][hybrid.Pool] for its members' addresses, in start order.

    Each address stays valid across the member's restarts.

    Example:
        ```python
        members = await pool.request(hybrid.PoolMembers())
        votes = await hybrid.quorum(2, [member.request(Vote()) for member in members])
        ```
    """


_OWNERS_KEPT: Final = 4096
"""Keys whose owner a consistent-hash pool remembers (a hash per member per key otherwise)."""

_classes: dict[tuple[type[Pool[Any]], type[Agent[Any]], bool], type[Pool[Any]]] = {}
"""``Pool[Worker]`` classes made so far, by (pool class, worker type, broadcast)."""


class Pool(Supervisor[None], Generic[A]):
    """`size` supervised copies of one agent behind one address.

    Send the pool what its workers handle: each event goes to one member (all
    of them with `Routing.BROADCAST`); each request is answered by one member,
    straight to its caller. Members are the pool's children: one that fails is
    restarted (by `restart` policy) and keeps its address, so a message routed
    to it meanwhile waits for the new instance; past the restart intensity
    (class attributes, as for any `Supervisor`) the pool fails. A member with a
    bounded mailbox that is full holds the pool up until it has room
    (backpressure reaches the senders through the pool's own mailbox).
    Interrupting the pool stops its members first. A member that ends for
    good (`Restart.TRANSIENT` or `TEMPORARY`) leaves the rotation (its keys,
    for consistent hashing, move to the others); when none is left, the pool
    finishes. (A subclass that overrides `on_child_ended` calls
    ``await super().on_child_ended(address, reason)``.)

    Args:
        factory: makes a fresh worker for each start: the worker class, or
            ``functools.partial(Worker, arg)`` with `agent_type`.
        size: the number of members (an int >= 1).
        routing: how a member is picked (`Routing`).
        key: for `Routing.CONSISTENT_HASH` (and only then): the key of a
            message, a str, bytes or int; messages of one key reach one member.
        restart: the members' restart policy (default `Restart.PERMANENT`).
        agent_type: the workers' class, when `factory` is not the class itself.

    Raises:
        TypeError: `factory` is not an agent class and no `agent_type` is
            given, or `routing` is not a `Routing`.
        ValueError: `size` < 1, or `key` missing for consistent hashing (or
            given for another routing).

    Example:
        ```python
        async with trio.open_nursery() as nursery:
            pool = hybrid.spawn(nursery, hybrid.Pool(Fetcher, size=8))
            pages = await pool.request(Fetch(url))          # one of the 8 answers
            by_user = hybrid.Pool(
                Session, size=4, routing=hybrid.Routing.CONSISTENT_HASH, key=lambda m: m.user
            )
        ```
    """

    _worker_type: ClassVar[type[Agent[Any]]]
    _turn: itertools.count[int]

    def __new__(
        cls,
        factory: Callable[[], A],
        *,
        size: int,
        routing: Routing = Routing.ROUND_ROBIN,
        key: Callable[[Any], str | bytes | int] | None = None,
        restart: Restart = Restart.PERMANENT,
        agent_type: type[A] | None = None,
    ) -> Self:
        kind = _worker_type(factory, agent_type)
        if not isinstance(routing, Routing):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"Pool routing must be a hybrid.Routing, got {routing!r}")
        sub = _pool_class(cls, kind, broadcast=routing is Routing.BROADCAST)
        return cast("Self", object.__new__(sub))

    def __init__(
        self,
        factory: Callable[[], A],
        *,
        size: int,
        routing: Routing = Routing.ROUND_ROBIN,
        key: Callable[[Any], str | bytes | int] | None = None,
        restart: Restart = Restart.PERMANENT,
        agent_type: type[A] | None = None,
    ) -> None:
        self.size = count("Pool size", size, minimum=1)
        if (routing is Routing.CONSISTENT_HASH) != (key is not None):
            raise ValueError(
                "Pool key= is required by Routing.CONSISTENT_HASH and used by no other routing "
                f"(routing={routing}, key={key!r})"
            )
        if not isinstance(restart, Restart):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"Pool restart must be a hybrid.Restart, got {restart!r}")
        self.factory = factory
        self.routing = routing
        self.key = key
        self.restart = restart
        self.members: list[Address[A]] = []
        """The members in start order; each address stays valid across restarts."""
        self._names: dict[str, Address[A]] = {}
        self._owners: dict[str | bytes, str] = {}
        """Consistent hashing: the member name owning each key seen lately (at most `_OWNERS_KEPT`);
        emptied when a member leaves the rotation."""
        self._turn = itertools.count()
        self._random = random.Random()  # noqa: S311 - spreading load, not secrets

    def begin(self) -> Next[Self]:
        """Start the members, in order, and handle messages."""
        for _ in range(self.size):
            member = self.ctx.spawn(self._make, restart=self.restart)
            self.members.append(member)
            self._names[member.name] = member
        return Next.events()

    def _make(self) -> A:
        agent = self.factory()
        if not isinstance(agent, self._worker_type):
            raise TypeError(
                f"{self.ctx.address.name}: the factory {self.factory!r} returned {agent!r}, "
                f"not a {self._worker_type.__qualname__}"
            )
        return agent

    def pick(self, message: object) -> Address[A]:
        """The member that gets `message` (for every routing but broadcast)."""
        members = self.members
        routing = self.routing
        if routing is Routing.ROUND_ROBIN:
            return members[next(self._turn) % len(members)]
        if routing is Routing.RANDOM:
            return self._random.choice(members)
        if routing is Routing.SMALLEST_MAILBOX:
            start = next(self._turn) % len(members)
            turn = members[start:] + members[:start]
            return min(turn, key=_load)
        assert self.key is not None  # CONSISTENT_HASH: checked in __init__
        key = self.key(message)
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, (str, bytes)):
            raise TypeError(f"the Pool key function must return a str, bytes or int, got {key!r} for {message!r}")
        owners = self._owners
        owner = owners.get(key)
        if owner is None:
            if len(owners) >= _OWNERS_KEPT:
                del owners[next(iter(owners))]  # the oldest: the cache stays bounded
            owner = owners[key] = rendezvous(key, self._names)
        return self._names[owner]

    async def _route_event(self, event: object) -> None:
        if self.routing is Routing.BROADCAST:
            for member in list(self.members):
                try:
                    await _deliver(member, event)
                except AgentStopped:  # ended for good meanwhile: the others still get it
                    logger.warning("%s: %s has ended; it missed %r", self.ctx.address.name, member.name, event)
        else:
            await _deliver(self.pick(event), event)

    async def on_child_ended(self, address: Address[Any], reason: StopReason) -> None:
        """Take a member that will not be restarted out of the rotation; with none left, the pool finishes."""
        restarted = self.restart is Restart.PERMANENT or (
            self.restart is Restart.TRANSIENT and reason.kind is StopKind.FAILED
        )
        if restarted or address not in self.members:
            return
        self.members.remove(address)
        del self._names[address.name]
        self._owners.clear()
        if not self.members:
            logger.info("%s: its last member has ended; the pool finishes", self.ctx.address.name)
            with contextlib.suppress(LifecycleError):  # finishing already
                self.ctx.shutdown()

    async def _route_request(self, request: Request[Any]) -> Address[A]:
        return self.pick(request)

    @on_request
    async def _members(self, request: PoolMembers) -> tuple[Address[Any], ...]:
        return tuple(self.members)


# A router for any request type: marked here, registered per worker type below.
_route_request = on_request(route=True)(Pool._route_request)  # noqa: SLF001


async def _deliver(member: Address[Any], event: object) -> None:
    """Send `event` to `member`, waiting for room, and through a restart.

    A member that is ending refuses messages until its supervisor (the pool)
    has restarted it; then its address takes them again. So when a member
    that is still alive refuses, wait until its run has ended and send again.
    """
    while True:
        try:
            await member.send_wait(event)
        except AgentStopped:
            if not member.is_alive:
                raise
            with contextlib.suppress(Exception):  # its failure is its supervisor's business
                await member.join()
        else:
            return


def _load(member: Address[Any]) -> int:
    """What `Routing.SMALLEST_MAILBOX` compares: queued messages, and one more while busy."""
    statistics = member.statistics()
    return 2 * statistics.mailbox_depth + (not statistics.idle)


def _worker_type(factory: object, agent_type: type[Agent[Any]] | None) -> type[Agent[Any]]:
    if agent_type is not None:
        if not (isinstance(agent_type, type) and issubclass(agent_type, Agent)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"Pool agent_type must be an Agent subclass, got {agent_type!r}")
        if not callable(factory):
            raise TypeError(f"Pool factory must be callable, got {factory!r}")
        return agent_type
    candidate = factory
    if isinstance(candidate, type) and issubclass(candidate, Agent):
        return cast("type[Agent[Any]]", factory)
    raise TypeError(
        f"Pool needs the workers' class: pass the class as the factory, or agent_type= with {factory!r} "
        "(a pool's address takes the messages its workers handle, so it must know their class)"
    )


def _pool_class(base: type[Pool[Any]], kind: type[Agent[Any]], *, broadcast: bool) -> type[Pool[Any]]:
    """``Pool[kind]``: `base` with the worker's event (and, unless broadcast, request) types routed."""
    made = _classes.get((base, kind, broadcast))
    if made is not None:
        return made
    name = f"{base.__name__}[{kind.__qualname__}]"
    made = cast("type[Pool[Any]]", type(name, (base,), {"__module__": base.__module__, "_worker_type": kind}))
    # The pool's own handlers (a supervisor's machinery, PoolMembers) come first.
    events = made._hybrid_events  # noqa: SLF001 - the tables of a class made here
    for message_type in kind._hybrid_events:  # noqa: SLF001 - the worker's handled types
        events.setdefault(message_type, Pool._route_event)  # noqa: SLF001
    if not broadcast:
        requests = made._hybrid_requests  # noqa: SLF001
        for message_type in kind._hybrid_requests:  # noqa: SLF001
            requests.setdefault(message_type, _route_request)
    _classes[(base, kind, broadcast)] = made
    return made
