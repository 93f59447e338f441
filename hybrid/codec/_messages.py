"""`MessageCodec`: messages, values and exceptions to bytes and back; `message`, a class's wire name.

A message travels as ``(name, version, payload)``: the name and version of its
class (set with `message`, or its import path at version 1), and the msgpack
payload:

- an attrs class or a dataclass: a map by field name (see ``_records.py``);
- a `msgspec.Struct`: as the struct's own options say (``array_like``, ``rename``...);
- a str, int, float, bytes or bool message: the value alone.

Every payload is decoded into the class's annotated types, never into a type
the data names. The sender checks what it encodes (the payload is decoded again
at once, a few µs), so a field annotated ``int`` holding a str is refused where
it was made, naming the field path, not by the receiver.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Final, TypeVar, final, overload

import msgspec

from hybrid import Agent, Request

from ._errors import CodecError
from ._failures import DEFAULT_ERRORS, ErrorTable, decode_error, encode_error
from ._naming import ClassMeta, class_meta, meta_of, record_meta
from ._records import Record, is_record
from ._types import (
    ENCODE_ERRORS,
    Check,
    answer_type,
    culprit,
    inspect_type,
    output_type,
    run_check,
    split_message,
    type_text,
)

__all__ = ["MessageCodec", "message"]

MessageClass = TypeVar("MessageClass", bound=type)

_META: Final = "_hybrid_message"  # the class attribute `message` sets
_SCALARS: Final[frozenset[type]] = frozenset({str, int, float, bytes, bool})
_KINDS: Final = "an attrs class, a dataclass, a msgspec.Struct, or str, int, float, bytes or bool"


# -- the decorator -------------------------------------------------------------------------------


@overload
def message(cls: MessageClass, /) -> MessageClass: ...


@overload
def message(
    cls: None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
    upgrade: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[MessageClass], MessageClass]: ...


def message(
    cls: MessageClass | None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
    upgrade: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> MessageClass | Callable[[MessageClass], MessageClass]:
    """Set a message class's wire name, version and upgrade function.

    Usable bare (``@message``) or with options, as `hybrid.durable.durable` is
    for agents. The settings are stored on the class itself (an attribute of its
    own, not inherited by subclasses), never in a global registry; a codec reads
    them when the class is registered (`MessageCodec.register`). An undecorated
    class is named ``f"{cls.__module__}.{cls.__qualname__}"``, at version 1,
    without upgrade.

    Args:
        cls: the class, when used bare.
        name: the name the class travels under; both sides must agree on it.
            Give one to keep the name when the class moves or is renamed.
        version: the version of the class's fields (an int >= 1); raise it when
            the fields change, with an `upgrade` function for the older ones.
        upgrade: ``upgrade(old_version, fields) -> fields``: receives the fields
            of a message sent by an older version, decoded to builtins (dicts,
            lists, str, int, float, bytes, bool, None), and returns the fields
            of the current version (builtins too; they are then decoded into the
            annotated types and the class is made from them). Without it, an
            older message is decoded as it is. A newer message than the class's
            version is refused: upgrade the receiver first.

    Returns:
        The class (bare use), or the decorator.

    Raises:
        TypeError: an option of the wrong type, or a decorated object that is not a class.
        ValueError: an empty name, or a version below 1.

    Example:
        ```python
        def upgrade(old: int, fields: dict[str, Any]) -> dict[str, Any]:
            fields["cents"] = fields.pop("amount")  # version 1 called it amount
            return fields

        @hybrid.codec.message(name="bank.Credit", version=2, upgrade=upgrade)
        @attrs.frozen
        class Credit:
            account: str
            cents: int
        ```
    """
    meta = class_meta("message", name, version, upgrade)

    def decorate(target: MessageClass) -> MessageClass:
        return record_meta(target, _META, meta, "@message decorates a message class")

    return decorate if cls is None else decorate(cls)


def _subclass(cls: object, base: type) -> bool:
    """Whether `cls` is a subclass of `base` (a plain bool: it narrows nothing)."""
    return isinstance(cls, type) and issubclass(cls, base)


def _type_argument(cache: dict[type, Any], cls: type, base: type, find: Callable[[type], Any], what: str) -> Any:
    """`find(cls)` (the type argument `cls` gives `base`), cached in `cache`; `cls` must subclass `base`."""
    found = cache.get(cls, _NOT_CACHED)
    if found is _NOT_CACHED:
        if not _subclass(cls, base):
            raise CodecError(f"{cls!r} is not a hybrid.{base.__name__} subclass: it has no {what} type")
        found = cache[cls] = find(cls)
    return found


def _meta_of(cls: type) -> ClassMeta:
    return meta_of(cls, _META)


# -- what a codec knows of a class ---------------------------------------------------------------


@final
class _Plan:
    """One registered message class: how it is encoded, checked, decoded and made.

    `record` is set for attrs classes and dataclasses (encoded through their
    fields struct, made with ``cls(**fields)``); for a Struct or a scalar the
    decoder makes the value itself. `checks` are the Any-slot checks, each with
    the path prefix of what it checks (``.field`` for a record, "" otherwise).
    """

    __slots__ = ("checks", "cls", "decoder", "name", "qualname", "record", "upgrade", "verify", "version")

    def __init__(self, cls: type, name: str, meta: ClassMeta) -> None:
        self.cls = cls
        self.name = name
        self.qualname = cls.__qualname__
        self.version = meta.version
        self.upgrade = meta.upgrade
        self.record: Record | None = None
        self.checks: tuple[tuple[str, Check], ...] = ()
        self.verify = True  # decode what was encoded, to check it against the annotations
        if cls in _SCALARS:
            self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(cls)
            self.verify = False  # the exact type: it always comes back as itself
        elif _subclass(cls, msgspec.Struct):
            check = inspect_type(cls, self.qualname)
            self.checks = () if check is None else (("", check),)
            self.decoder = msgspec.msgpack.Decoder(cls)
            if self.upgrade is not None and typing.cast("type[msgspec.Struct]", cls).__struct_config__.array_like:
                raise CodecError(
                    f"{self.qualname}: an array_like msgspec.Struct has no field names on the wire, "
                    "which an upgrade function needs: drop array_like or the upgrade"
                )
        else:
            self.record = Record(cls)
            self.checks = tuple((f".{field}", check) for field, check in self.record.checks)
            self.decoder = self.record.decoder

    def checked(self, message: Any) -> tuple[str, str] | None:
        """The first (path, problem) of a value in an Any slot that would come back changed."""
        record = self.record
        for prefix, check in self.checks:
            found = run_check(check, message if record is None else getattr(message, prefix[1:]))
            if found is not None:
                return (prefix + found[0], found[1])
        return None


@final
class _ValuePlan:
    """The decoder and Any-slot check of one annotation (`encode_value`, `decode_value`)."""

    __slots__ = ("check", "decoder", "text")

    def __init__(self, annotation: Any) -> None:
        self.text = type_text(annotation)
        self.check = inspect_type(annotation, "value")
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(annotation)


# -- the codec ---------------------------------------------------------------------------------


@final
class MessageCodec:
    """The wire codec of messages, values and exceptions: msgspec's msgpack, never pickle.

    One per endpoint (a remote node has one): it holds the message classes
    registered with it (`register`), by class and by wire name, their encoders
    and decoders, made once and cached, and its own exception registrations
    (`register_error`, read before the process-wide ones of
    `hybrid.codec.register_error`). Both sides of a link must register the same
    classes under the same names.

    Everything is synchronous and never blocks. Errors are `CodecError`, naming
    the class and the field path (``Order.items[2].qty: ...``); a payload that
    does not fit is refused, never decoded into a dict or a default.

    Supported message classes: attrs classes (the norm; ``@attrs.frozen``),
    dataclasses, `msgspec.Struct` classes, and str, int, float, bytes and bool
    (bool and int are two classes: a True is not an int message). An attrs
    class or dataclass is strict: every field must be present, none may be
    extra. A Struct is decoded by its own options (``forbid_unknown_fields``,
    defaults, ``rename``, ``array_like``), as its author chose them.
    Field annotations may be anything msgspec decodes (builtins, containers,
    unions, ``Optional``, ``Literal``, enums, datetimes, UUIDs, nested attrs
    classes, dataclasses and structs...). Where an annotation cannot bring a
    value back as itself (``Any``, ``object``, also nested as in ``list[Any]``),
    only JSON-like builtins are accepted: None, bool, int, float, str, bytes,
    and lists and str-keyed dicts of them; anything else is refused when it is
    encoded ("annotate it").

    Example:
        ```python
        @attrs.frozen
        class Credit:
            account: str
            cents: int

        codec = hybrid.codec.MessageCodec()
        codec.register(Credit)
        name, version, payload = codec.encode(Credit("acct-9", 100))
        assert codec.decode(name, version, payload) == Credit("acct-9", 100)
        ```
    """

    __slots__ = ("_answers", "_by_name", "_by_type", "_encoder", "_errors", "_outputs", "_values")

    def __init__(self) -> None:
        """Make a codec that knows no message class yet (and the default exception types)."""
        self._by_type: dict[type, _Plan] = {}
        self._by_name: dict[str, _Plan] = {}
        self._values: dict[Any, _ValuePlan] = {}  # per annotation
        self._answers: dict[type, Any] = {}  # request class -> R
        self._outputs: dict[type, Any] = {}  # agent class -> T
        self._errors = ErrorTable()
        self._encoder = msgspec.msgpack.Encoder()

    # -- message classes -------------------------------------------------------------------

    def register(self, cls: type) -> str:
        """Register a message class; return its wire name.

        The name is the one set with `message` (``@message(name=...)``), else
        ``f"{cls.__module__}.{cls.__qualname__}"`` (``builtins.str`` for str).
        Every field's annotation is checked here, once. Idempotent for the same
        class. A subclass is another class, registered on its own.

        Raises:
            CodecError: `cls` is not a supported kind of class (naming it and
                why), an annotation is not supported (naming ``Class.field``),
                or another class is registered under the same name (naming both).
        """
        plan = self._by_type.get(cls)
        if plan is not None:
            return plan.name
        return self._register(cls).name

    def _register(self, cls: type) -> _Plan:
        if not isinstance(cls, type):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise CodecError(f"a message class must be a class, got {cls!r}")
        if not (cls in _SCALARS or _subclass(cls, msgspec.Struct) or is_record(cls)):
            raise CodecError(f"{cls.__module__}.{cls.__qualname__} cannot be a message class: it must be {_KINDS}")
        meta = _meta_of(cls)
        name = meta.name or f"{cls.__module__}.{cls.__qualname__}"
        taken = self._by_name.get(name)
        if taken is not None:
            raise CodecError(
                f"two message classes are registered under the name {name!r}: "
                f"{taken.cls.__module__}.{taken.qualname} and {cls.__module__}.{cls.__qualname__}; "
                "give one another name with @hybrid.codec.message(name=...)"
            )
        plan = _Plan(cls, name, meta)
        self._by_type[cls] = plan
        self._by_name[name] = plan
        return plan

    def encode(self, message: object) -> tuple[str, int, bytes]:
        """Encode a message of a registered class.

        Returns:
            (wire name, version, payload): what `decode` takes on the other side.

        Raises:
            CodecError: the message's class is not registered (the receiving
                side would not know it either), or a field does not encode or
                would not come back as itself, naming the field path, as in
                ``Order.items[2].qty: cannot encode int (Integer value out of
                range)``.
        """
        plan = self._by_type.get(type(message))
        if plan is None:
            kind = type(message)
            raise CodecError(
                f"{kind.__module__}.{kind.__qualname__} is not a registered message class: register it "
                "(MessageCodec.register) on both sides; a class the receiver does not know is never sent"
            )
        record = plan.record
        wire = message if record is None else record.fields(message)
        try:
            payload = self._encoder.encode(wire)
        except ENCODE_ERRORS as err:
            found = culprit(self._encoder, wire) or ("", str(err))  # the fields struct: paths are .field...
            raise CodecError(f"{plan.qualname}{found[0]}: {found[1]}") from err
        if plan.verify:
            try:
                plan.decoder.decode(payload)
            except Exception as err:  # a value that does not decode under its annotation
                text, path = split_message(err)
                raise CodecError(
                    f"{plan.qualname}{path}: {text} (the value would not come back under its annotation)"
                ) from err
            if plan.checks:
                problem = plan.checked(message)
                if problem is not None:
                    raise CodecError(f"{plan.qualname}{problem[0]}: {problem[1]}")
        return plan.name, plan.version, payload

    def decode(self, name: str, version: int, data: bytes) -> object:
        """Make a message from what `encode` returned on the other side.

        The payload is decoded into the registered class's annotated types
        (upgraded first by the class's ``upgrade`` function when it comes from
        an older version), then the message is made as the class makes one:
        ``cls(**fields)`` for attrs classes and dataclasses, so converters,
        validators and post-init hooks run.

        Raises:
            CodecError: an unknown name, a version newer than the class's (or
                below 1), bytes that are not a payload, a missing, extra or
                mistyped field (naming its path), or a class that refused the
                fields (its validator's error as the cause). Nothing is made
                then.
        """
        plan = self._by_name.get(name)
        if plan is None:
            raise CodecError(
                f"unknown message class {name!r}: register it (MessageCodec.register) "
                "or give the class that name with @hybrid.codec.message(name=...)"
            )
        if type(version) is not int or version < 1:
            raise CodecError(f"{plan.qualname}: version {version!r} is not a version (an int >= 1)")
        if version != plan.version:
            data = self._upgraded(plan, version, data)
        try:
            decoded = plan.decoder.decode(data)
        except Exception as err:  # msgspec's errors, and whatever a value type's own validators raise
            text, path = split_message(err)
            if isinstance(err, msgspec.DecodeError) and not isinstance(err, msgspec.ValidationError):
                raise CodecError(f"{plan.qualname}: the bytes are not a valid payload ({text})") from err
            raise CodecError(f"{plan.qualname}{path}: {text}") from err
        record = plan.record
        if record is None:
            return decoded
        try:
            return record.make(decoded)
        except Exception as err:  # a validator refused the received (or upgraded) fields
            raise CodecError(f"{plan.qualname}: making it from the received fields raised {err!r}") from err

    def _upgraded(self, plan: _Plan, version: int, data: bytes) -> bytes:
        """The payload of an older version, its fields upgraded (re-encoded)."""
        if version > plan.version:
            raise CodecError(
                f"{plan.qualname}: the message was sent by version {version} of the class, "
                f"newer than this one ({plan.version}): upgrade the receiver's code"
            )
        if plan.upgrade is None:
            return data  # decoded as it is: it must fit the current fields
        try:
            raw: Any = msgspec.msgpack.decode(data)
        except msgspec.MsgspecError as err:
            raise CodecError(f"{plan.qualname}: the bytes are not a valid payload ({err})") from err
        if not isinstance(raw, dict):
            raise CodecError(f"{plan.qualname}: the payload of version {version} is not a map of fields")
        try:
            fields = plan.upgrade(version, raw)  # pyright: ignore[reportUnknownArgumentType]
        except Exception as err:
            raise CodecError(f"{plan.qualname}: upgrade from version {version} raised {err!r}") from err
        if not isinstance(fields, dict):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise CodecError(
                f"{plan.qualname}: upgrade from version {version} must return the fields as a dict, got {fields!r}"
            )
        try:
            return self._encoder.encode(fields)
        except ENCODE_ERRORS as err:
            raise CodecError(
                f"{plan.qualname}: upgrade from version {version} returned fields that cannot be encoded ({err})"
            ) from err

    # -- answers and outputs ---------------------------------------------------------------

    def answer_type(self, request_cls: type) -> Any:
        """The ``R`` of ``hybrid.Request[R]`` for a request class (cached).

        Found through generic subclasses (``class Lookup(Keyed[int])`` with
        ``class Keyed(Request[dict[str, V]])`` answers ``dict[str, int]``). Any
        when the class does not parameterize `Request`.

        Raises:
            CodecError: `request_cls` is not a `hybrid.Request` subclass, or its
                ``R`` names a type that cannot be resolved.
        """
        return _type_argument(self._answers, request_cls, Request, answer_type, "answer")

    def output_type(self, agent_cls: type) -> Any:
        """The ``T`` of ``hybrid.Agent[T]`` for an agent class (cached); Any when not given.

        Raises:
            CodecError: `agent_cls` is not a `hybrid.Agent` subclass, or its
                ``T`` names a type that cannot be resolved.
        """
        return _type_argument(self._outputs, agent_cls, Agent, output_type, "output")

    # -- values ----------------------------------------------------------------------------

    def _value_plan(self, annotation: Any) -> _ValuePlan:
        try:
            plan = self._values.get(annotation)
        except TypeError:  # an unhashable annotation (Annotated with a list in it): not cached
            return _ValuePlan(annotation)
        if plan is None:
            plan = self._values[annotation] = _ValuePlan(annotation)
        return plan

    def encode_value(self, annotation: Any, value: object) -> bytes:
        """Encode a value alone (an answer, an output), checked against its annotation.

        The decoder of each annotation is made once and cached.

        Raises:
            CodecError: the annotation is not supported, or the value does not
                encode or would not come back as itself under it, naming the
                path inside the value (``value[2].qty: ...``).
        """
        plan = self._value_plan(annotation)
        try:
            data = self._encoder.encode(value)
        except ENCODE_ERRORS as err:
            found = culprit(self._encoder, value) or ("", str(err))
            raise CodecError(f"value{found[0]}: {found[1]}") from err
        try:
            plan.decoder.decode(data)
        except Exception as err:
            text, path = split_message(err)
            raise CodecError(f"value{path}: {text} (the value must be a {plan.text})") from err
        if plan.check is not None:
            problem = run_check(plan.check, value)
            if problem is not None:
                raise CodecError(f"value{problem[0]}: {problem[1]}")
        return data

    def decode_value(self, annotation: Any, data: bytes) -> object:
        """Decode a value made by `encode_value` into the type `annotation` names.

        Raises:
            CodecError: the annotation is not supported, or the bytes do not
                decode into that type.
        """
        plan = self._value_plan(annotation)
        try:
            return plan.decoder.decode(data)
        except Exception as err:
            text, path = split_message(err)
            raise CodecError(f"value{path}: the bytes do not decode into {plan.text}: {text}") from err

    # -- exceptions ------------------------------------------------------------------------

    def register_error(self, cls: type[BaseException], name: str | None = None) -> str:
        """Let exceptions of type `cls` travel as themselves, through this codec only.

        As `hybrid.codec.register_error` (which registers for every codec of
        the process), read before it. A class or name already in the
        process-wide registry keeps its registration there (registering it
        again under the same name returns it; under another, refused).

        Returns:
            The wire name.

        Raises:
            CodecError: the name is taken by another class, or the class has another.
            TypeError: `cls` is not an Exception subclass.
        """
        return self._errors.add(cls, name, below=DEFAULT_ERRORS)

    def encode_error(self, exc: BaseException) -> bytes:
        """Encode an exception as ``[type name, message, fields or args or nil]``.

        Never fails: an unregistered type travels by its ``module.qualname`` and
        its message (the receiver makes its stand-in from those), and fields or
        args that do not encode are left out.
        """
        return encode_error(self._encoder, exc, self._errors, DEFAULT_ERRORS)

    def decode_error(self, data: bytes, unknown: Callable[[str, str], BaseException]) -> BaseException:
        """Rebuild an exception from `encode_error`'s bytes, or make a stand-in.

        A type registered under the name (in this codec, then process-wide) is
        rebuilt: an attrs exception class from its fields, another from its
        args or its message. Otherwise, or when the registered type refuses what
        was sent, the result is ``unknown(type_name, message)``. The data never
        chooses what is imported or called: only registered types are made.

        Args:
            data: the bytes.
            unknown: makes the exception that stands for a type this side does
                not know (for remote agents, a failure naming the remote type).

        Raises:
            CodecError: `data` is not an error payload.
        """
        return decode_error(data, unknown, self._errors, DEFAULT_ERRORS)


_NOT_CACHED: Final[Any] = object()
