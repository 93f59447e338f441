"""Exceptions on the wire: registered types rebuilt as themselves, any other made by the caller's `unknown`."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import attrs
import msgspec
import pytest

import hybrid
from hybrid.codec import CodecError, MessageCodec, register_error


@attrs.frozen
class RemoteFailure(Exception):
    """What the tests' `unknown` factory makes: the remote type's name and message."""

    type_name: str
    message: str


def unknown(type_name: str, message: str) -> BaseException:
    return RemoteFailure(type_name, message)


@attrs.define
class InsufficientFunds(Exception):
    account: str
    missing: int
    history: list[int] = attrs.Factory(list[int])


@attrs.define
class Negative(Exception):
    amount: int = attrs.field(validator=attrs.validators.ge(0))


class Wrapped(Exception):
    """Args that are not plain (an exception inside): sent as the message only."""


class Picky(Exception):
    """A constructor that takes two args: from the message alone it cannot be made."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a, b)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


class Unregistered(Exception):
    pass


register_error(InsufficientFunds, "tests.InsufficientFunds")
register_error(Negative)
register_error(Wrapped)
register_error(Picky)


def failure(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of the stand-in `unknown` made (attrs exceptions compare by identity)."""
    assert isinstance(exc, RemoteFailure), exc
    return (exc.type_name, exc.message)


def roundtrip(exc: BaseException, codec: MessageCodec | None = None) -> BaseException:
    codec = codec or MessageCodec()
    return codec.decode_error(codec.encode_error(exc), unknown)


def test_builtin_exceptions_are_rebuilt_with_their_args() -> None:
    """KeyError, ValueError, OSError subclasses...: the same type, the same args."""
    for exc in (
        KeyError("k"),
        ValueError("bad", 3),
        ZeroDivisionError("division by zero"),
        FileNotFoundError(2, "No such file"),
        TimeoutError(),
        Exception("plain"),
    ):
        back = roundtrip(exc)
        assert type(back) is type(exc)
        assert back.args == exc.args
    back = roundtrip(FileNotFoundError(2, "No such file", "/x"))  # a filename is not in args: it stays behind
    assert isinstance(back, FileNotFoundError)
    assert (back.errno, back.strerror, back.filename) == (2, "No such file", None)


def test_the_payload_is_name_message_and_args() -> None:
    """[type name, message, args]: builtins under builtins.X, hybrid's under hybrid.X."""
    codec = MessageCodec()
    assert msgspec.msgpack.decode(codec.encode_error(KeyError("k"))) == ["builtins.KeyError", "'k'", ["k"]]
    stopped = msgspec.msgpack.decode(codec.encode_error(hybrid.AgentStopped("gone")))
    assert stopped == ["hybrid.AgentStopped", "gone", ["gone"]]


def test_hybrid_exceptions_are_rebuilt() -> None:
    """AgentStopped, UnhandledMessage, MailboxFull...: the same hybrid type, so `except` clauses still work."""
    for cls in (
        hybrid.AgentStopped,
        hybrid.MailboxFull,
        hybrid.UnhandledMessage,
        hybrid.InvalidTransition,
        hybrid.LifecycleError,
        hybrid.NameInUse,
        hybrid.LeaseLost,
        hybrid.HybridError,
    ):
        back = roundtrip(cls("why"))
        assert type(back) is cls
        assert str(back) == "why"


def test_an_attrs_exception_is_rebuilt_from_its_fields() -> None:
    """A registered attrs exception class travels as its fields and is made with cls(**fields)."""
    exc = InsufficientFunds("acct-9", 100, [1, 2])
    data = MessageCodec().encode_error(exc)
    name, _, fields = msgspec.msgpack.decode(data)
    assert name == "tests.InsufficientFunds"
    assert fields == {"account": "acct-9", "missing": 100, "history": [1, 2]}
    back = roundtrip(exc)
    assert isinstance(back, InsufficientFunds)
    assert (back.account, back.missing, back.history) == ("acct-9", 100, [1, 2])


def test_an_unregistered_type_becomes_what_unknown_makes() -> None:
    """An unregistered type travels by module.qualname and message; the receiver's unknown() makes the stand-in."""
    back = roundtrip(Unregistered("nope"))
    assert failure(back) == ("tests.codec.test_exceptions.Unregistered", "nope")
    assert failure(roundtrip(hybrid.CircuitOpen("open", retry_after=1.0))) == ("hybrid.CircuitOpen", "open")


def test_what_a_registered_type_refuses_becomes_unknown() -> None:
    """Mistyped attrs fields, a validator refusing them, a constructor refusing the message: unknown()."""
    codec = MessageCodec()
    mistyped = msgspec.msgpack.encode(["tests.InsufficientFunds", "m", {"account": 1, "missing": 1, "history": []}])
    assert failure(codec.decode_error(mistyped, unknown)) == ("tests.InsufficientFunds", "m")
    name = "tests.codec.test_exceptions.Negative"
    refused = msgspec.msgpack.encode([name, "m", {"amount": -1}])
    assert failure(codec.decode_error(refused, unknown)) == (name, "m")
    no_fields = msgspec.msgpack.encode(["tests.InsufficientFunds", "m", None])
    assert failure(codec.decode_error(no_fields, unknown)) == ("tests.InsufficientFunds", "m")
    picky = "tests.codec.test_exceptions.Picky"
    assert failure(codec.decode_error(msgspec.msgpack.encode([picky, "m", None]), unknown)) == (picky, "m")
    back = roundtrip(Picky(1, 2))
    assert isinstance(back, Picky)
    assert back.args == (1, 2)


def test_args_that_are_not_plain_values_travel_as_the_message() -> None:
    """An exception whose args hold an object is sent without args and made from its message."""
    codec = MessageCodec()
    data = codec.encode_error(Wrapped(ValueError("inner"), 3))
    assert msgspec.msgpack.decode(data)[2] is None
    back = codec.decode_error(data, unknown)
    assert type(back) is Wrapped
    assert back.args == ("(ValueError('inner'), 3)",)
    sneaky = msgspec.msgpack.encode(["builtins.ValueError", "m", [msgspec.msgpack.Ext(1, b"x")]])
    back = codec.decode_error(sneaky, unknown)
    assert type(back) is ValueError
    assert back.args == ("m",)


def test_fields_that_do_not_encode_are_left_out() -> None:
    """An attrs exception holding an unencodable field travels as name and message; it arrives as unknown."""
    exc = InsufficientFunds("acct", 1, [object()])  # type: ignore[list-item]
    data = MessageCodec().encode_error(exc)
    assert msgspec.msgpack.decode(data)[2] is None
    assert failure(roundtrip(exc)) == ("tests.InsufficientFunds", str(exc))


def test_an_exception_whose_str_fails_still_encodes() -> None:
    """A __str__ that raises: the message says so, the encode does not fail."""
    data = MessageCodec().encode_error(Unprintable())
    assert msgspec.msgpack.decode(data)[1] == "<Unprintable: str() failed>"


def test_a_payload_naming_os_system_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names from the data are only looked up in the registry: os.system, eval, subprocess are never called."""
    calls: list[Any] = []

    def record(*args: object, **kwargs: object) -> None:
        calls.append(args)

    monkeypatch.setattr(os, "system", record)
    monkeypatch.setattr(subprocess, "Popen", record)
    codec = MessageCodec()
    for name in ("os.system", "os:system", "posix.system", "builtins.eval", "subprocess.Popen", "builtins.exec"):
        for extra in (["echo pwned"], {"cmd": "echo pwned"}, None):
            data = msgspec.msgpack.encode([name, "echo pwned", extra])
            assert failure(codec.decode_error(data, unknown)) == (name, "echo pwned")
    assert calls == []


def test_a_malformed_error_payload_is_a_codec_error() -> None:
    """Bytes that are not [str, str, anything]: CodecError."""
    codec = MessageCodec()
    for data in (b"\xc1", msgspec.msgpack.encode(["only-a-name"]), msgspec.msgpack.encode([1, "m", None])):
        with pytest.raises(CodecError, match="not an error payload"):
            codec.decode_error(data, unknown)


# -- registries -----------------------------------------------------------------------------------


def test_register_error_is_idempotent_and_refuses_two_names_or_two_classes() -> None:
    """The same class again: its name; under another name, or another class under its name: CodecError."""
    assert register_error(InsufficientFunds) == "tests.InsufficientFunds"
    assert register_error(InsufficientFunds, "tests.InsufficientFunds") == "tests.InsufficientFunds"
    with pytest.raises(CodecError, match="already registered as 'tests.InsufficientFunds'"):
        register_error(InsufficientFunds, "elsewhere")

    class Impostor(Exception):
        pass

    with pytest.raises(CodecError, match="two exception classes .* 'builtins.KeyError'"):
        register_error(Impostor, "builtins.KeyError")


def test_register_error_checks_its_arguments() -> None:
    """Not an Exception subclass (trio.Cancelled, KeyboardInterrupt, an int): TypeError; a bad name too."""
    with pytest.raises(TypeError, match="Exception subclass"):
        register_error(KeyboardInterrupt)
    with pytest.raises(TypeError, match="Exception subclass"):
        register_error(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        register_error(Unregistered, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        register_error(Unregistered, "")


def test_register_error_checks_attrs_fields() -> None:
    """An attrs exception whose field annotation the codec cannot bring back: CodecError naming the field."""

    @attrs.define
    class HoldsLock(Exception):
        lock: Unregistered

    with pytest.raises(CodecError, match="HoldsLock.lock"):
        MessageCodec().register_error(HoldsLock)


def test_a_codecs_own_registrations_are_its_own_and_read_first() -> None:
    """codec.register_error: rebuilt by that codec only; a default's name or class is kept as it is there."""

    class Local(Exception):
        pass

    codec = MessageCodec()
    assert codec.register_error(Local, "tests.Local") == "tests.Local"
    assert codec.register_error(Local) == "tests.Local"
    assert type(roundtrip(Local("x"), codec)) is Local
    other = MessageCodec()
    assert failure(other.decode_error(codec.encode_error(Local("x")), unknown)) == ("tests.Local", "x")
    assert codec.register_error(KeyError) == "builtins.KeyError"
    assert codec.register_error(KeyError, "builtins.KeyError") == "builtins.KeyError"
    with pytest.raises(CodecError, match="already registered"):
        codec.register_error(KeyError, "mine.KeyError")
    with pytest.raises(CodecError, match="two exception classes"):
        codec.register_error(Unregistered, "builtins.ValueError")
