"""Remote agents on NATS: the same `Address` across processes and machines.

Install the extra: ``pip install 'trio-hybrid[remote]'`` (nats-py and trio-asyncio);
run a ``nats-server`` (2.11 or newer, with ``-js`` for work queues).

This is its first stage, the transport; nodes, remote addresses, membership, spawn,
work queues and sharded entities come on top of it.

Package map (imports point up this list):

- ``_errors.py``: the error tree (`RemoteError` and below)
- ``_names.py``: the name rule (``[A-Za-z0-9_-]{1,64}``) and the subjects, streams and
  buckets of a cluster built from names
- ``_transport.py``: `Transport`, the small interface everything above is written
  against, with `Message`, `Subscription`, `ConnectionState`, `TransportStatistics`
- ``_nats.py``: `open_nats`, the transport on nats-py driven from trio through
  trio-asyncio (imports the extra's libraries)

`hybrid.remote` uses hybrid's public names only, and hybrid's core never imports it.
"""

from ._errors import MessageTooLarge as MessageTooLarge
from ._errors import RemoteError as RemoteError
from ._errors import RemoteUnavailable as RemoteUnavailable

__all__ = [
    "MessageTooLarge",
    "RemoteError",
    "RemoteUnavailable",
]

_name = ""
for _name in __all__:  # tracebacks and the docs say hybrid.remote.X, as trio's public names do
    globals()[_name].__module__ = __name__
del _name
