"""The codec's one error, under `hybrid.HybridError`.

```
HybridError
└── CodecError (ValueError)                 a value cannot be encoded, or bytes cannot be decoded
    └── hybrid.durable.CheckpointError      (durable's own) the same, for a checkpoint
```
"""

from __future__ import annotations

from hybrid import HybridError

__all__ = ["CodecError"]


class CodecError(HybridError, ValueError):
    """A value cannot be encoded, or bytes cannot be decoded into the type they should be.

    Raised in the sender for a message, value or field that would not come back
    as itself (naming the class and the field path, as in
    ``Order.items[2].qty: ...``), and in the receiver for bytes that do not fit
    the registered class (an unknown name, a newer version, a missing, extra or
    mistyped field, corrupted bytes). Also raised by a registration the codec
    refuses (an unsupported annotation, two classes under one name). Never a
    silent dict: a payload is decoded into the annotated types or refused.

    A `ValueError`, as a bad value is. `hybrid.durable.CheckpointError` is one.
    """
