"""Exceptions on the wire: a registry of the types that may be rebuilt, and their payload.

An exception travels as one msgpack array::

    [type name, message, fields or args or nil]

- *type name*: the name its type is registered under (``builtins.KeyError``,
  ``hybrid.AgentStopped``), else ``f"{module}.{qualname}"`` of its type;
- *message*: ``str(exc)``;
- the third item: for a registered attrs exception class, its fields (a map by
  field name, as a message's); for another registered type, its ``args`` when
  all of them are JSON-like builtins; else nil.

The receiver rebuilds only a type registered under that name: an attrs class
from its fields (``cls(**fields)``, validators run), another from its args
(``cls(*args)``) or, without args, from the message (``cls(message)``). A name
that is not registered, or a payload that does not rebuild, becomes whatever the
caller's ``unknown(type_name, message)`` returns. Nothing is ever unpickled,
imported or looked up by a name taken from the data: only the registry is read.

Two registries: the process-wide default one (the builtins and hybrid's
exceptions below, and what `register_error` adds), and each `MessageCodec`'s own
(its ``register_error`` method), read first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

import attrs
import msgspec

import hybrid

from ._errors import CodecError
from ._records import Record
from ._types import ENCODE_ERRORS, plain

__all__ = ["DEFAULT_ERRORS", "ErrorKind", "ErrorTable", "decode_error", "encode_error", "register_error"]


@final
class ErrorKind:
    """A registered exception type: its wire name, and its fields if it is an attrs class."""

    __slots__ = ("cls", "name", "record")

    def __init__(self, cls: type[BaseException], name: str) -> None:
        self.cls = cls
        self.name = name
        self.record = Record(cls) if attrs.has(cls) else None


@final
class ErrorTable:
    """Exception types by class and by wire name; one name, one class."""

    __slots__ = ("by_name", "by_type")

    def __init__(self) -> None:
        self.by_type: dict[type, ErrorKind] = {}
        self.by_name: dict[str, ErrorKind] = {}

    def add(self, cls: type[BaseException], name: str | None, *, below: ErrorTable | None = None) -> str:
        """Register `cls` under `name` (default ``module.qualname``); return the name.

        Idempotent for the same class and name (`name` None: the name it has).
        `below` is a table read after this one: a class or name it already
        holds is taken as it is there.

        Raises:
            TypeError: `cls` is not an Exception subclass, or `name` not a str.
            ValueError: `name` is empty.
            CodecError: another class has the name, or `cls` has another one,
                or an attrs exception's field annotation is not supported.
        """
        if not (isinstance(cls, type) and issubclass(cls, Exception)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"register_error takes an Exception subclass, got {cls!r} "
                "(a BaseException that is no Exception, as trio.Cancelled, never travels as itself)"
            )
        if name is not None and not isinstance(name, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"register_error(name=...) takes a str, got {name!r}")
        if name == "":
            raise ValueError("register_error(name=...) cannot be empty")
        for table in (self, below):
            known = None if table is None else table.by_type.get(cls)
            if known is not None:
                if name is None or name == known.name:
                    return known.name
                raise CodecError(
                    f"{_dotted(cls)} is already registered as {known.name!r}, not {name!r}: one name per class"
                )
        wire = name or _dotted(cls)
        for table in (self, below):
            taken = None if table is None else table.by_name.get(wire)
            if taken is not None:
                raise CodecError(
                    f"two exception classes are registered under the name {wire!r}: "
                    f"{_dotted(taken.cls)} and {_dotted(cls)}; register one under another name"
                )
        kind = ErrorKind(cls, wire)
        self.by_type[cls] = kind
        self.by_name[wire] = kind
        return wire


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


DEFAULT_ERRORS: Final = ErrorTable()
"""The process-wide registry: builtins, hybrid's exceptions, and `register_error`'s."""

for _cls in (
    # builtins whose args are their message (or plain values, as OSError's errno)
    Exception,
    ArithmeticError,
    AssertionError,
    AttributeError,
    ConnectionError,
    FileNotFoundError,
    IndexError,
    KeyError,
    LookupError,
    NotImplementedError,
    OSError,
    OverflowError,
    PermissionError,
    RuntimeError,
    TimeoutError,
    TypeError,
    ValueError,
    ZeroDivisionError,
    # hybrid's, made from a message (those with keyword-only attributes, as
    # CircuitOpen or QuorumError, are not: they arrive as `unknown` ones)
    hybrid.HybridError,
    hybrid.AgentStopped,
    hybrid.HandlerDefinitionError,
    hybrid.InvalidTransition,
    hybrid.LeaseLost,
    hybrid.LifecycleError,
    hybrid.MailboxFull,
    hybrid.NameInUse,
    hybrid.UnhandledMessage,
):
    DEFAULT_ERRORS.add(_cls, None)
del _cls


def register_error(cls: type[BaseException], name: str | None = None) -> str:
    """Let exceptions of type `cls` travel as themselves, in every codec of this process.

    The receiving process must register the type under the same name; a type
    it does not know arrives as its codec user's stand-in (for remote agents, a
    `hybrid.remote` failure naming the type and the message). Only the exact
    type is registered: a subclass travels under its own name, or as unknown.

    Already registered here: ``builtins.`` `Exception`, `ArithmeticError`,
    `AssertionError`, `AttributeError`, `ConnectionError`, `FileNotFoundError`,
    `IndexError`, `KeyError`, `LookupError`, `NotImplementedError`, `OSError`,
    `OverflowError`, `PermissionError`, `RuntimeError`, `TimeoutError`,
    `TypeError`, `ValueError`, `ZeroDivisionError`; and ``hybrid.``
    `HybridError`, `AgentStopped`, `HandlerDefinitionError`,
    `InvalidTransition`, `LeaseLost`, `LifecycleError`, `MailboxFull`,
    `NameInUse`, `UnhandledMessage`.

    How one is rebuilt: an attrs exception class (``@attrs.define`` on an
    Exception subclass) from its fields, which travel as a message's do (their
    annotations are checked here); any other from its ``args`` when they are all
    JSON-like builtins (None, bool, int, float, str, bytes, lists and str-keyed
    dicts of them), else from its message alone (``cls(str(exc))``). A type
    whose constructor refuses that arrives as unknown. Tracebacks, causes and
    notes do not travel.

    The registry is process-wide, like `copyreg`'s: register at import time,
    next to the class. A registration cannot be undone; a codec's own
    registrations (`MessageCodec.register_error`) are read before it.

    Args:
        cls: an Exception subclass.
        name: its wire name; default ``f"{cls.__module__}.{cls.__qualname__}"``.
            Give one to keep a name stable when the class moves.

    Returns:
        The wire name. Idempotent: registering a class again under its name (or
        with no name) returns it.

    Raises:
        CodecError: another class has that name, the class has another name,
            or a field of an attrs exception class has an unsupported annotation.
        TypeError: `cls` is not an Exception subclass (a `trio.Cancelled` or a
            `KeyboardInterrupt` never travels as itself).

    Example:
        ```python
        @attrs.define
        class InsufficientFunds(Exception):
            account: str
            missing: int

        hybrid.codec.register_error(InsufficientFunds, "bank.InsufficientFunds")
        ```
    """
    return DEFAULT_ERRORS.add(cls, name)


# -- the payload -------------------------------------------------------------------------------

_HEAD: Final = msgspec.msgpack.Decoder(tuple[str, str, msgspec.Raw])
_ARGS: Final = msgspec.msgpack.Decoder(list[Any] | None)


def _message_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a __str__ that fails: the type's name says enough
        return f"<{type(exc).__qualname__}: str() failed>"


def encode_error(encoder: msgspec.msgpack.Encoder, exc: BaseException, own: ErrorTable, below: ErrorTable) -> bytes:
    """``[type name, message, fields or args or nil]`` of `exc` (never fails for a type of its own)."""
    cls = type(exc)
    kind = own.by_type.get(cls) or below.by_type.get(cls)
    message = _message_of(exc)
    if kind is None:
        return encoder.encode((_dotted(cls), message, None))
    extra: Any = None
    if kind.record is not None:
        extra = kind.record.fields(exc)
    else:
        args = list(exc.args)
        if plain(args) is None:
            extra = args
    try:
        return encoder.encode((kind.name, message, extra))
    except ENCODE_ERRORS:  # fields that do not encode: the receiver gets the name and message
        return encoder.encode((kind.name, message, None))


def decode_error(
    data: bytes, unknown: Callable[[str, str], BaseException], own: ErrorTable, below: ErrorTable
) -> BaseException:
    """The exception `data` (made by `encode_error`) describes; see the module docstring.

    Raises:
        CodecError: `data` is not an error payload.
    """
    try:
        name, message, raw = _HEAD.decode(data)
    except msgspec.MsgspecError as err:
        raise CodecError(f"not an error payload ([type name, message, fields or args]): {err}") from err
    kind = own.by_name.get(name) or below.by_name.get(name)
    if kind is None:
        return unknown(name, message)
    try:
        if kind.record is not None:
            rebuilt: BaseException = kind.record.make(kind.record.decoder.decode(raw))
            return rebuilt
        args = _ARGS.decode(raw)
        if args is None or plain(args) is not None:
            return kind.cls(message)
        return kind.cls(*args)
    except Exception:  # mistyped fields, or a constructor that refuses them: not rebuildable
        return unknown(name, message)
