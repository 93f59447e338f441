"""Node membership: each node's lease in NATS KV, and the set of live nodes every node watches.

A node joins by creating the key ``node.<name>`` in the cluster's bucket
``hybrid_<cluster>_nodes`` with a per-key TTL (`lease` seconds), and renews it every
``lease / 3`` seconds with a compare-and-set on its revision. A node that dies
(SIGKILL, a lost machine) stops renewing: the server expires the key and writes an
expiry marker, which every node's watch sees as the node's loss, about `lease` seconds
(plus up to a second of the server's marker scan) after the last renewal.

Every node watches ``node.>``: `Membership.live` is the set it sees, and the
`on_lost` callback runs (on the trio thread) for each node that leaves it, whether
its key was deleted (a node that left cleanly), expired, or vanished while the watch
was blind (it catches up after a reconnect: see `KeyValue.watch`).

A node whose own lease ran out (the server unreachable for longer than `lease`, or
the process stopped) finds its revision gone at the next renewal: it joins again
(`on_rejoined`: other nodes have declared it lost meanwhile, so what it published must
be registered again). If another process holds its name by then, it cannot: the
membership ends with `NameInUse`, which ends the node: two processes must never act
as one node.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable
from typing import Final, final

import trio

from hybrid import NameInUse

from ._errors import RemoteError
from ._jetstream import JetStream, KeyExists, KeyValue, KvCaughtUp, KvOperation, WrongRevision
from ._names import node_key, nodes_bucket

__all__ = ["Membership"]

logger = logging.getLogger("hybrid.remote")

_PREFIX: Final = "node."


def check_lease(lease: object) -> int:
    """`lease` as whole seconds (KV TTLs are whole seconds), at least 1."""
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not math.isfinite(lease) or lease < 1:
        raise ValueError(f"lease must be a number of seconds >= 1, got {lease!r}")
    return math.ceil(lease)


@final
class Membership:
    """One node's lease and its view of the cluster's live nodes; run by the node."""

    def __init__(
        self,
        js: JetStream,
        cluster: str,
        node: str,
        lease: int,
        *,
        on_lost: Callable[[str], None],
        on_rejoined: Callable[[], None],
        on_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._js = js
        self.cluster: Final = cluster
        self.node: Final = node
        self.lease: Final = lease
        """Seconds without renewal after which a node counts as lost."""
        self._key = node_key(node)
        self._value = f"{socket.gethostname()} pid {os.getpid()}".encode()
        self._on_lost = on_lost
        self._on_rejoined = on_rejoined
        self._on_changed = on_changed
        self._kv: KeyValue | None = None
        self._revision = 0
        """The revision of this node's key after its last write (0: not joined)."""
        self.live: set[str] = set()
        """The nodes seen alive (this one included once joined): written by the watch."""
        self._caught_up = trio.Event()
        self.changed = trio.Event()
        """Set, and replaced by a fresh one, each time `live` changes."""

    async def join(self) -> None:
        """Create this node's key and open the watch of the others'.

        Raises:
            NameInUse: a live node has this name.
            RemoteUnavailable: no JetStream (start nats-server with ``-js``), or the link is down.
        """
        self._kv = await self._js.key_value(nodes_bucket(self.cluster), marker_ttl=1.0)
        try:
            self._revision = await self._kv.create(self._key, self._value, ttl=self.lease)
        except KeyExists:
            entry = await self._kv.get(self._key)
            holder = entry.value.decode(errors="replace") if entry is not None else "?"
            raise NameInUse(
                f"node {self.node!r} is alive in cluster {self.cluster!r} ({holder}): node names are unique; "
                f"a node that died frees its name within {self.lease} s"
            ) from None
        self.live.add(self.node)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the lease and watch the others until cancelled; started once the watch has caught up."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            await self._caught_up.wait()
            task_status.started()
            await self._renew()

    async def leave(self) -> None:
        """Delete this node's key (others see it leave at once); best effort."""
        if self._kv is not None and self._revision:
            revision, self._revision = self._revision, 0
            try:
                with trio.move_on_after(2):
                    await self._kv.delete(self._key, revision=revision)
            except RemoteError as error:
                logger.debug("%s: could not delete its lease (%r): it expires in %s s", self.node, error, self.lease)

    async def _renew(self) -> None:
        assert self._kv is not None
        period = self.lease / 3
        while True:
            await trio.sleep(period)
            if not self._revision:
                return  # left the cluster (`leave`) while this slept
            try:
                self._revision = await self._kv.update(self._key, self._value, revision=self._revision, ttl=self.lease)
            except WrongRevision:
                await self._rejoin()
            except RemoteError as error:  # the link is down: try again at the next period
                logger.debug("%s: could not renew its lease: %r", self.node, error)

    async def _rejoin(self) -> None:
        assert self._kv is not None
        try:
            self._revision = await self._kv.create(self._key, self._value, ttl=self.lease)
        except KeyExists:
            raise NameInUse(
                f"node {self.node!r} lost its lease in cluster {self.cluster!r} and another process took the name"
            ) from None
        logger.warning("%s: its lease had run out (other nodes saw it lost); joined again", self.node)
        if self.node not in self.live:
            self.live.add(self.node)
            self._changed()
        self._on_rejoined()

    async def _watch(self) -> None:
        assert self._kv is not None
        async with self._kv.watch(_PREFIX + ">", headers_only=True) as changes:
            async for change in changes:
                if isinstance(change, KvCaughtUp):
                    present = {key[len(_PREFIX) :] for key in change.keys}
                    for node in self.live - present - {self.node}:
                        self._lost(node)
                    if not present <= self.live:
                        self.live |= present
                        self._changed()
                    self._caught_up.set()
                    continue
                node = change.key[len(_PREFIX) :]
                if change.operation is KvOperation.PUT:
                    if node not in self.live:
                        self.live.add(node)
                        self._changed()
                elif node != self.node:
                    self._lost(node)

    def _lost(self, node: str) -> None:
        if node in self.live:
            self.live.discard(node)
            logger.info("%s: node %r left the cluster %r", self.node, node, self.cluster)
            self._changed()
            self._on_lost(node)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
        self._on_changed()
