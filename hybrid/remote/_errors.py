"""The errors of remote agents: one root under `hybrid.HybridError`.

```
HybridError
├── AgentStopped                     (hybrid's own) no agent answers a request to that name:
│                                    NATS reported no responders for the subject
└── RemoteError
    ├── RemoteUnavailable (ConnectionError, an OSError)
    │                                the link to the NATS server is down: not connected yet,
    │                                reconnecting, or closed; also a request whose connection
    │                                dropped while it waited for its reply
    └── MessageTooLarge (ValueError) a message is bigger than the server accepts (max_payload),
                                     refused in the sender before anything is sent
```

A bad name or subject (a dot, a wildcard, whitespace, empty, too long) is a plain
``ValueError`` raised before any I/O, as for every other bad argument in hybrid.

`RemoteUnavailable` is a `ConnectionError` (so an `OSError`) on purpose: code that
already handles a dropped socket (``except OSError``) handles a dropped NATS link the
same way. `trio.Cancelled` and `trio.TooSlowError` (a caller's deadline) are never
wrapped: a request that timed out, or failed with `RemoteUnavailable` after it was
sent, may still have run on the other side.
"""

from __future__ import annotations

from hybrid import HybridError

__all__ = ["MessageTooLarge", "RemoteError", "RemoteUnavailable"]


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
