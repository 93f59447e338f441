"""Durable agents: each transition checkpointed, resumed after a crash of the process.

Install the extra: ``pip install 'trio-hybrid[durable]'`` (SQLite, embedded) or
``'trio-hybrid[durable-postgres]'`` (Postgres too). See the guide "Durable agents".

Package map (imports point up this list):

- ``_errors.py``: the error tree (`DurableError` and below)
- ``_records.py``: what the store keeps (`Checkpoint`, `Ending`, `Event`, `Status`,
  `StepKind`), shared by every module below
- ``_codec.py``: `Codec`, checkpoints to bytes and back with msgspec (never pickle), on
  the type rules of `hybrid.codec`;
  `durable`, the class decorator naming a class and its version
- ``_sql.py``, ``_sqlite.py``, ``_postgres.py``: the schema and the statements of the
  two databases; ``_journal.py``: `Journal`, the writer thread that group-commits
- ``_leases.py``: `DurableLeases`, leases with a TTL and a fencing token in the
  store's database (``store.leases()``), the interface of `hybrid.Leases`
- ``_store.py``: `open_store`, `Store` and `KeyCheckpointer`, the `hybrid.Checkpointer`
  of one key

Example:
    ```python
    async with hybrid.durable.open_store("orders.db") as store:
        print(await store.run(Checkout("o-17"), key="o-17"))
        async with store.leases().hold("nightly", "worker-3", ttl=30) as lease:
            await nightly(fencing_token=lease.token)
    ```
"""

from ._codec import durable as durable
from ._errors import CheckpointError as CheckpointError
from ._errors import DurableError as DurableError
from ._errors import Fenced as Fenced
from ._errors import KeyInUse as KeyInUse
from ._errors import StoreError as StoreError
from ._leases import DurableLeases as DurableLeases
from ._records import Ending as Ending
from ._records import Event as Event
from ._records import Status as Status
from ._store import Durability as Durability
from ._store import KeyCheckpointer as KeyCheckpointer
from ._store import RecordedFailure as RecordedFailure
from ._store import RestartFrom as RestartFrom
from ._store import Store as Store
from ._store import open_store as open_store

__all__ = [
    "CheckpointError",
    "Durability",
    "DurableError",
    "DurableLeases",
    "Ending",
    "Event",
    "Fenced",
    "KeyCheckpointer",
    "KeyInUse",
    "RecordedFailure",
    "RestartFrom",
    "Status",
    "Store",
    "StoreError",
    "durable",
    "open_store",
]

_name = ""
for _name in __all__:  # tracebacks and the docs say hybrid.durable.X, as trio's public names do
    globals()[_name].__module__ = __name__
del _name
