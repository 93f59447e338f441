"""The errors of remote agents: one root under `hybrid.HybridError`.

```
HybridError
├── AgentStopped                     (hybrid's own) no agent answers a request to that name:
│                                    NATS reported no responders for the subject
└── RemoteError
    ├── RemoteFailure                a remote handler raised an exception of a type not
    │                                registered with the codec: its type name and message
    ├── RemoteUnavailable (ConnectionError, an OSError)
    │   │                            the link to the NATS server is down: not connected yet,
    │   │                            reconnecting, or closed; also a request whose connection
    │   │                            dropped while it waited for its reply
    │   └── NodeLost                 the node serving an agent left the cluster (its lease
    │                                expired: it died, or was cut off), or no such node answers
    ├── MessageTooLarge (ValueError) a message is bigger than the server accepts (max_payload),
    │                                refused in the sender before anything is sent
    └── JetStreamError               JetStream refused a request (``_jetstream.py``): its codes
        ├── WrongRevision            a key-value compare-and-set found another revision
        │   └── KeyExists            a create found the key holding a value
        └── StreamFull               a stream refused to store a message (a limit)
            └── QueueFull            ``WorkQueue.put`` found the queue full (``_jobs.py``)
```

A bad name or subject (a dot, a wildcard, whitespace, empty, too long) is a plain
``ValueError`` raised before any I/O, as for every other bad argument in hybrid. A name
published already in the cluster (or a node name taken by a live node) is hybrid's own
`hybrid.NameInUse`, as for a taken agent name in one process.

`RemoteUnavailable` is a `ConnectionError` (so an `OSError`) on purpose: code that
already handles a dropped socket (``except OSError``) handles a dropped NATS link the
same way. `trio.Cancelled` and `trio.TooSlowError` (a caller's deadline) are never
wrapped: a request that timed out, or failed with `RemoteUnavailable` after it was
sent, may still have run on the other side.
"""

from __future__ import annotations

from hybrid import HybridError

__all__ = ["MessageTooLarge", "NodeLost", "RemoteError", "RemoteFailure", "RemoteUnavailable"]


class RemoteError(HybridError):
    """The root of the errors `hybrid.remote` raises."""


class RemoteUnavailable(RemoteError, ConnectionError):
    """The link to the NATS server is down: nothing was (or will be) delivered.

    Raised at once by a send or request made while the connection is
    reconnecting or closed (messages are never buffered through a reconnect,
    so they cannot arrive late), by a request whose connection dropped while
    it waited for its reply (it may still have run), and by a connect that
    found no server within its timeout.
    """


class MessageTooLarge(RemoteError, ValueError):
    """A message is larger than the server's ``max_payload``: refused in the sender.

    The size counts the payload and its headers, as the server does.

    Attributes:
        subject: the subject the message was for.
        size: the message's size in bytes (payload and headers).
        limit: the server's ``max_payload`` in bytes.
    """

    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__(f"a message of {size} bytes to {subject!r} exceeds the server's max_payload of {limit} bytes")
        self.subject = subject
        """The subject the message was for."""
        self.size = size
        """The message's size in bytes (payload and headers)."""
        self.limit = limit
        """The server's ``max_payload`` in bytes."""

    def __reduce__(self) -> tuple[type[MessageTooLarge], tuple[str, int, int]]:
        return type(self), (self.subject, self.size, self.limit)


class RemoteFailure(RemoteError):
    """A remote agent raised an exception whose type is not registered with the codec.

    Exceptions never cross the wire as objects (nothing received is unpickled):
    a registered type (`hybrid.codec.register_error`; hybrid's own errors and
    the common builtins are registered) is rebuilt as itself, any other arrives
    as this, with its type's name and its message.

    Attributes:
        type_name: the remote exception's ``module.qualname``.
        message: its ``str()``.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        """The remote exception's ``module.qualname``."""
        self.message = message
        """Its ``str()``."""

    def __reduce__(self) -> tuple[type[RemoteFailure], tuple[str, str]]:
        return type(self), (self.type_name, self.message)


class NodeLost(RemoteUnavailable):
    """The node serving an agent left the cluster, or no node of that name answers.

    A node is lost when its lease expires (it died, or was cut off from NATS for
    longer than its lease) or when it leaves cleanly. The requests waiting for one
    of its agents fail with this (they may have run); `join()` raises it and
    monitors see ``Ended`` with it as the reason's error.

    Attributes:
        node: the lost node's name.
    """

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        """The lost node's name."""

    def __reduce__(self) -> tuple[type[NodeLost], tuple[str, str]]:
        return type(self), (self.node, str(self))
