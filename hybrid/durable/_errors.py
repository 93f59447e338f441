"""The errors of durable agents: one root under `hybrid.HybridError`.

```
HybridError
└── DurableError
    ├── CheckpointError (hybrid.codec.CodecError, a ValueError)
    │                                  a value cannot be saved, or a checkpoint cannot be read back
    ├── KeyInUse (RuntimeError)        a second live run of a key in this store
    ├── Fenced (RuntimeError)          a newer incarnation of the key took over: this one stops
    └── StoreError (OSError)           the database failed (full disk, locked, connection lost)
```
"""

from __future__ import annotations

from hybrid import HybridError
from hybrid.codec import CodecError


class DurableError(HybridError):
    """The root of the errors `hybrid.durable` raises."""


class CheckpointError(DurableError, CodecError):
    """A value cannot be checkpointed, or a checkpoint cannot be decoded.

    A `hybrid.codec.CodecError` (so a `ValueError`): checkpoints and messages
    share their codec's type rules, and ``except CodecError`` catches both.

    Raised at the transition that produced the value (naming the key, the class
    and the field or argument), or at resume (naming the key, the class and what
    no longer matches). Never a silent dict: a checkpoint is decoded into the
    annotated types or refused.
    """


class KeyInUse(DurableError, RuntimeError):
    """The key already has a live run in this store: one live run per key."""


class Fenced(DurableError, RuntimeError):
    """A newer incarnation of this key claimed it: this run's writes are refused.

    The stale run stops at its next transition instead of overwriting the newer
    one's checkpoint (epoch + sequence fencing, like Orleans' ETags).
    """


class StoreError(DurableError, OSError):
    """The database failed: a full disk, a locked file, a dropped connection.

    The agent whose checkpoint could not be committed fails with it; it never
    goes on as if its transition were saved.
    """
