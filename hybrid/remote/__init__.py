"""Remote agents on NATS: the same `Address` across processes and machines.

Install the extra: ``pip install 'trio-hybrid[remote]'`` (nats-py and trio-asyncio);
run a ``nats-server`` (2.11 or newer, with ``-js`` for work queues).

A node (`connect`) publishes local agents by name and looks up remote ones: a remote
address is an ordinary `hybrid.Address`.

Package map (imports point up this list):

- ``_errors.py``: the error tree (`RemoteError` and below)
- ``_names.py``: the name rule (``[A-Za-z0-9_-]{1,64}``) and the subjects, streams and
  buckets of a cluster built from names
- ``_transport.py``: `Transport`, the small interface everything above is written
  against, with `Message`, `Subscription`, `ConnectionState`, `TransportStatistics`
- ``_shortcuts.py``: the two places the transport reaches past nats-py's public API
  (direct writes, direct delivery), checked against the installed nats-py
- ``_nats.py``: `open_nats`, the transport on nats-py driven from trio through
  trio-asyncio (imports the extra's libraries)
- ``_jetstream.py``: JetStream and its KV store over the `Transport` (streams,
  consumers, pulls, keys with TTLs, watches)
- ``_wire.py``: the envelopes in a message's payload (msgpack, never pickle)
- ``_membership.py``: node leases in KV, the live nodes every node watches
- ``_served.py``: what a node keeps of each local agent it serves
- ``_entities.py``: `Entities`, sharded entities placed by rendezvous hashing
- ``_jobs.py``: `WorkQueue`, durable work queues on JetStream
- ``_node.py``: `connect`, `Node`: publishing, lookups, serving, remote spawn

`hybrid.remote` uses hybrid's public names, `hybrid.codec`, and one private module of
the core, ``hybrid._foreign``: the seam that makes an `Address` whose agent lives in
another process. hybrid's core never imports `hybrid.remote`.
"""

from ._entities import Entities as Entities
from ._errors import MessageTooLarge as MessageTooLarge
from ._errors import NodeLost as NodeLost
from ._errors import RemoteError as RemoteError
from ._errors import RemoteFailure as RemoteFailure
from ._errors import RemoteUnavailable as RemoteUnavailable
from ._jetstream import JetStreamError as JetStreamError
from ._jetstream import StreamFull as StreamFull
from ._jobs import QueueFull as QueueFull
from ._jobs import WorkQueue as WorkQueue
from ._jobs import WorkQueueStatistics as WorkQueueStatistics
from ._node import Node as Node
from ._node import NodeStatistics as NodeStatistics
from ._node import connect as connect

__all__ = [
    "Entities",
    "JetStreamError",
    "MessageTooLarge",
    "Node",
    "NodeLost",
    "NodeStatistics",
    "QueueFull",
    "RemoteError",
    "RemoteFailure",
    "RemoteUnavailable",
    "StreamFull",
    "WorkQueue",
    "WorkQueueStatistics",
    "connect",
]

_name = ""
for _name in __all__:  # tracebacks and the docs say hybrid.remote.X, as trio's public names do
    globals()[_name].__module__ = __name__
del _name
