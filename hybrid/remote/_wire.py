"""The wire format of remote agents: what a node puts in a NATS message's payload.

Every payload is one msgpack array (msgspec, never pickle), with no NATS headers:
a message's body is encoded by `hybrid.codec.MessageCodec`, and the envelope says
what it is. Decoding an envelope makes only these structs, ints, strings and bytes.

| payload on                        | array                                             |
| --------------------------------- | ------------------------------------------------- |
| an agent's subject: event         | ``[0, type name, version, body]``                 |
| an agent's subject: request       | ``[1, type name, version, body]`` (NATS reply set) |
| an agent's subject: interrupt     | ``[2]``                                           |
| an agent's subject: cancel        | ``[3, reply subject of the given-up request]``    |
| a node's shard subject            | the same, with the entity's key as a fifth item    |
| a reply                           | ``[0, answer]`` or ``[1, error]``                 |
| an agent's end (``ended.<name>``) | ``[stop kind, output or nil, error or nil, rev]`` |

An answer and an output are the value alone, encoded for the ``R`` of
``Request[R]`` and the ``T`` of ``Agent[T]``; an error is `MessageCodec.encode_error`'s
``[type name, message, arguments]``.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

__all__ = ["EVENT", "INTERRUPT_PAYLOAD", "Ended", "Envelope", "Kind", "Reply", "cancel_payload"]


class Kind(enum.IntEnum):
    """What an envelope on an agent's subject carries."""

    EVENT = 0
    REQUEST = 1
    INTERRUPT = 2
    CANCEL = 3


EVENT: Final = Kind.EVENT


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    """A message on an agent's subject: see the module's table."""

    kind: Kind
    name: str = ""
    """The message's registered type name; for CANCEL, the reply subject of the request given up."""
    version: int = 1
    body: bytes = b""
    key: str = ""
    """For a sharded entity (on a node's shard subject): the entity's key."""


class Reply(msgspec.Struct, array_like=True, frozen=True):
    """The answer to a request: ``failed`` False with the encoded answer, True with the encoded error."""

    failed: bool
    body: bytes


class Ended(msgspec.Struct, array_like=True, frozen=True):
    """A published agent's end: its `hybrid.StopKind` value, its encoded output or error, its registry revision."""

    kind: str
    output: bytes | None = None
    error: bytes | None = None
    revision: int = 0
    """The revision of the name's registry entry it was published at: an end is ignored by
    addresses bound to another revision (another incarnation of the name)."""


ENCODER: Final = msgspec.msgpack.Encoder()
ENVELOPE: Final = msgspec.msgpack.Decoder(Envelope)
REPLY: Final = msgspec.msgpack.Decoder(Reply)
ENDED: Final = msgspec.msgpack.Decoder(Ended)
INTERRUPT_PAYLOAD: Final = ENCODER.encode(Envelope(Kind.INTERRUPT))


def cancel_payload(reply: str, key: str = "") -> bytes:
    """The envelope that withdraws the request answered on `reply`, if still queued."""
    return ENCODER.encode(Envelope(Kind.CANCEL, reply, key=key))


def interrupt_payload(key: str) -> bytes:
    """The envelope that interrupts the entity of `key`."""
    return ENCODER.encode(Envelope(Kind.INTERRUPT, key=key))
