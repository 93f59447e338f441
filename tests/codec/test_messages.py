"""MessageCodec's messages: registered classes to (name, version, payload) and back, or a CodecError naming what."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import socket
import subprocess
import sys
import uuid
from typing import Any, Literal

import attrs
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given

import hybrid
import hybrid.codec
from hybrid.codec import CodecError, MessageCodec, message
from hybrid.durable import CheckpointError

# -- message classes ----------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Item:
    sku: str
    qty: int


@attrs.frozen
class Order:
    id: str
    items: list[Item]
    note: str | None = None


@attrs.frozen
class Everything:
    flag: bool
    count: int
    ratio: float
    blob: bytes
    color: Color
    when: datetime.datetime
    ident: uuid.UUID
    either: int | str
    maybe: Item | None
    pairs: dict[str, tuple[int, float]]
    kind: Literal["a", "b"]
    anything: Any


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Counted:
    name: str
    hits: int = dataclasses.field(init=False, default=0)


class Money(msgspec.Struct, frozen=True):
    cents: int
    currency: str
    extra: Any = None


class Packed(msgspec.Struct, array_like=True):
    a: int
    b: str


@attrs.frozen
class Guarded:
    amount: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.define
class Private:
    _secret: int
    shown: str
    stamp: int = attrs.field(init=False, default=0)
    renamed: int = attrs.field(default=0, alias="other")


@attrs.frozen
class Tree:
    label: str
    kids: list[Tree] = attrs.Factory(list["Tree"])


@message(name="tests.codec.Taken")
@attrs.frozen
class TakenOne:
    a: int


@message(name="tests.codec.Taken")
@attrs.frozen
class TakenTwo:
    b: int


@attrs.frozen
class HoldsSocket:
    conn: socket.socket


@attrs.frozen
class Secretive:
    _hidden: int


@attrs.frozen
class HoldsSecretive:
    inner: Secretive


class NotAMessage:
    pass


@attrs.frozen
class Ask(hybrid.Request[int]):
    question: str


def upgrade_credit(old: int, fields: dict[str, Any]) -> dict[str, Any]:
    if old == 1:
        fields["cents"] = fields.pop("amount") * 100
    return fields


@message(name="tests.codec.Credit")
@attrs.frozen
class CreditV1:
    account: str
    amount: int


@message(name="tests.codec.Credit", version=2, upgrade=upgrade_credit)
@attrs.frozen
class CreditV2:
    account: str
    cents: int


@message(name="tests.codec.Credit", version=2)
@attrs.frozen
class CreditV2NoUpgrade:
    account: str
    cents: int


def codec_of(*classes: type) -> MessageCodec:
    codec = MessageCodec()
    for cls in classes:
        codec.register(cls)
    return codec


def roundtrip(value: object) -> object:
    """Encode with one codec and decode with another that knows the same class."""
    name, version, payload = codec_of(type(value)).encode(value)
    return codec_of(type(value)).decode(name, version, payload)


def refusal(fn: Any) -> CodecError:
    with pytest.raises(CodecError) as info:
        fn()
    return info.value


# -- round trips --------------------------------------------------------------------------------


def test_an_attrs_message_round_trips_as_a_map_by_field_name() -> None:
    """An attrs message with nested attrs values comes back equal, its payload a map of its fields."""
    order = Order("o-1", [Item("a", 1), Item("b", 2)], note="fast")
    name, version, payload = codec_of(Order).encode(order)
    assert (name, version) == ("tests.codec.test_messages.Order", 1)
    assert msgspec.msgpack.decode(payload) == {
        "id": "o-1",
        "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
        "note": "fast",
    }
    assert roundtrip(order) == order


def test_many_field_types_round_trip() -> None:
    """Scalars, enums, datetimes, UUIDs, unions, Optional, dicts of tuples, Literal and plain Any values."""
    value = Everything(
        flag=True,
        count=-3,
        ratio=0.25,
        blob=b"\x00\xff",
        color=Color.BLUE,
        when=datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.UTC),
        ident=uuid.UUID(int=7),
        either="seven",
        maybe=None,
        pairs={"p": (1, 2.5)},
        kind="b",
        anything={"k": [1, "two", None, b"3", 4.5]},
    )
    assert roundtrip(value) == value
    other = attrs.evolve(value, either=7, maybe=Item("x", 1))
    assert roundtrip(other) == other


def test_dataclasses_and_structs_round_trip() -> None:
    """A dataclass (init=False field restored), a Struct and an array_like Struct come back equal."""
    assert roundtrip(Point(1, 2)) == Point(1, 2)
    counted = Counted("c")
    counted.hits = 4
    back = roundtrip(counted)
    assert isinstance(back, Counted)
    assert (back.name, back.hits) == ("c", 4)
    assert roundtrip(Money(100, "EUR", extra=[1])) == Money(100, "EUR", extra=[1])
    name, version, payload = codec_of(Packed).encode(Packed(1, "x"))
    assert msgspec.msgpack.decode(payload) == [1, "x"]
    assert codec_of(Packed).decode(name, version, payload) == Packed(1, "x")


def test_scalar_messages_round_trip_under_their_builtin_names() -> None:
    """str, int, float, bytes and bool are messages too, named builtins.X; bool and int stay apart."""
    codec = codec_of(str, int, float, bytes, bool)
    for value in ("hi", 3, 2.5, b"b", True):
        name, version, payload = codec.encode(value)
        assert name == f"builtins.{type(value).__name__}"
        back = codec.decode(name, version, payload)
        assert back == value
        assert type(back) is type(value)
    assert "bool" in str(refusal(lambda: codec.decode("builtins.int", 1, codec.encode(True)[2])))


def test_private_aliased_and_late_attrs_fields_round_trip() -> None:
    """A private field, an alias= and an init=False field: made with cls(**aliases), the late field set after."""
    private = Private(5, "s", other=9)
    private.stamp = 3
    name, version, payload = codec_of(Private).encode(private)
    assert set(msgspec.msgpack.decode(payload)) == {"_secret", "shown", "stamp", "renamed"}
    back = codec_of(Private).decode(name, version, payload)
    assert back == private
    assert isinstance(back, Private)
    assert back.stamp == 3


def test_a_recursive_class_round_trips() -> None:
    """A class that holds itself (list[Tree]) is supported."""
    tree = Tree("root", [Tree("a"), Tree("b", [Tree("c")])])
    assert roundtrip(tree) == tree


@given(
    st.builds(
        Order,
        id=st.text(),
        items=st.lists(st.builds(Item, sku=st.text(), qty=st.integers(-(2**63), 2**64 - 1))),
        note=st.none() | st.text(),
    )
)
def test_any_order_round_trips(order: Order) -> None:
    """Property: every Order with 64-bit quantities comes back equal."""
    assert roundtrip(order) == order


# -- registration -------------------------------------------------------------------------------


def test_register_is_idempotent_and_names_a_class_by_decorator_or_import_path() -> None:
    """register returns the wire name: @message(name=) or module.qualname; again, the same."""
    codec = MessageCodec()
    assert codec.register(TakenOne) == "tests.codec.Taken"
    assert codec.register(TakenOne) == "tests.codec.Taken"
    assert codec.register(Item) == "tests.codec.test_messages.Item"


def test_two_classes_under_one_name_are_refused_naming_both() -> None:
    """A second class under a taken name: CodecError naming both classes."""
    codec = codec_of(TakenOne)
    text = str(refusal(lambda: codec.register(TakenTwo)))
    assert "'tests.codec.Taken'" in text
    assert "TakenOne" in text
    assert "TakenTwo" in text


def test_unsupported_classes_are_refused_at_register() -> None:
    """A plain class, an enum, a non-class, a str subclass: CodecError naming it and the kinds allowed."""
    for cls in (NotAMessage, Color, list):
        text = str(refusal(lambda cls=cls: MessageCodec().register(cls)))
        assert cls.__qualname__ in text
        assert "attrs class, a dataclass, a msgspec.Struct" in text
    assert "must be a class" in str(refusal(lambda: MessageCodec().register(Item("a", 1))))  # type: ignore[arg-type]


def test_unsupported_annotations_are_refused_at_register() -> None:
    """A socket field, or a nested attrs class with private fields: CodecError naming Class.field."""
    text = str(refusal(lambda: MessageCodec().register(HoldsSocket)))
    assert "HoldsSocket.conn" in text
    assert "socket" in text
    text = str(refusal(lambda: MessageCodec().register(HoldsSecretive)))
    assert "HoldsSecretive.inner" in text
    assert "_hidden" in text


def test_an_upgrade_on_an_array_like_struct_is_refused() -> None:
    """An array_like Struct has no field names for an upgrade function: refused at register."""

    @message(version=2, upgrade=upgrade_credit)
    class Flat(msgspec.Struct, array_like=True):
        a: int

    assert "array_like" in str(refusal(lambda: MessageCodec().register(Flat)))


def test_the_decorator_checks_its_options_and_stays_on_its_class() -> None:
    """Bad options raise TypeError/ValueError; a subclass does not inherit the name."""
    with pytest.raises(TypeError, match="str"):
        message(name=3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="empty"):
        message(name="")
    with pytest.raises(TypeError, match="int"):
        message(version="2")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=">= 1"):
        message(version=0)
    with pytest.raises(TypeError, match="upgrade"):
        message(upgrade=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="class"):
        message(name="x")(len)  # type: ignore[type-var]

    @message
    @attrs.frozen
    class Bare:
        a: int

    @attrs.frozen
    class Child(TakenOne):
        pass

    codec = MessageCodec()
    assert codec.register(Bare).endswith("Bare")
    assert codec.register(Child) == f"{__name__}.{Child.__qualname__}"


def test_checkpoint_errors_are_codec_errors() -> None:
    """hybrid.durable.CheckpointError is a CodecError, so one except catches both."""
    assert issubclass(CheckpointError, CodecError)
    assert issubclass(CodecError, hybrid.HybridError)
    assert issubclass(CodecError, ValueError)
    assert CodecError.__module__ == "hybrid.codec"


# -- encoding refusals --------------------------------------------------------------------------


def test_an_unregistered_message_is_refused_in_the_sender() -> None:
    """encode of a class not registered: CodecError saying to register it."""
    text = str(refusal(lambda: MessageCodec().encode(Item("a", 1))))
    assert "Item is not a registered message class: register it" in text
    assert "not a registered" in str(refusal(lambda: codec_of(int).encode(True)))


def test_a_field_that_does_not_encode_is_named_by_its_path() -> None:
    """An int over 64 bits deep in a list: Order.items[2].qty; a lock in an Any slot of a Struct: Money.extra."""
    codec = codec_of(Order, Money, int)
    order = Order("o", [Item("a", 1), Item("b", 2), Item("c", 2**70)])
    assert "Order.items[2].qty: cannot encode int" in str(refusal(lambda: codec.encode(order)))
    assert "Money.extra['k']: cannot encode" in str(refusal(lambda: codec.encode(Money(1, "E", {"k": object()}))))
    assert "int: cannot encode int" in str(refusal(lambda: codec.encode(2**70)))


def test_a_mistyped_field_is_refused_in_the_sender() -> None:
    """A str where the annotation says int: refused at encode, naming the path, before the receiver sees it."""
    bad = Order("o", [Item("a", "one")])  # type: ignore[arg-type]
    text = str(refusal(lambda: codec_of(Order).encode(bad)))
    assert "Order.items[0].qty: Expected `int`, got `str`" in text
    assert "would not come back" in text


def test_any_slots_take_json_like_builtins_only() -> None:
    """A set, a tuple or a non-str dict key in an Any field would come back changed: refused, "annotate it"."""
    codec = codec_of(Everything, Money)
    base = roundtrip_value()
    for anything, where in (({1, 2}, "anything"), ((1, 2), "anything"), ({"a": {3: 1}}, "anything['a'][3]")):
        text = str(refusal(lambda anything=anything: codec.encode(attrs.evolve(base, anything=anything))))
        assert f"Everything.{where}" in text
        assert "annotate it" in text
    assert "Money.extra: a tuple" in str(refusal(lambda: codec.encode(Money(1, "E", (1,)))))


def roundtrip_value() -> Everything:
    return Everything(
        flag=False,
        count=0,
        ratio=0.0,
        blob=b"",
        color=Color.RED,
        when=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        ident=uuid.UUID(int=0),
        either=0,
        maybe=None,
        pairs={},
        kind="a",
        anything=None,
    )


# -- decoding refusals --------------------------------------------------------------------------


def test_an_unknown_name_is_refused() -> None:
    """decode of a name no class is registered under: CodecError naming it."""
    assert "unknown message class 'nowhere.X'" in str(refusal(lambda: MessageCodec().decode("nowhere.X", 1, b"\xc0")))


def test_malformed_missing_extra_and_mistyped_payloads_are_refused() -> None:
    """Garbage bytes, a missing field, an extra field, a wrong type: CodecError, nothing made."""
    codec = codec_of(Order)
    name = codec.register(Order)
    encode = msgspec.msgpack.encode
    assert "not a valid payload" in str(refusal(lambda: codec.decode(name, 1, b"\xc1")))
    assert "not a valid payload" in str(refusal(lambda: codec.decode(name, 1, b"")))
    missing = encode({"id": "o", "note": None})
    assert "Order: Object missing required field `items`" in str(refusal(lambda: codec.decode(name, 1, missing)))
    extra = encode({"id": "o", "items": [], "note": None, "rush": True})
    assert "Object contains unknown field `rush`" in str(refusal(lambda: codec.decode(name, 1, extra)))
    wrong = encode({"id": "o", "items": [{"sku": "a", "qty": "1"}], "note": None})
    assert "Order.items[0].qty: Expected `int`, got `str`" in str(refusal(lambda: codec.decode(name, 1, wrong)))
    array = encode(["o", [], None])
    assert "Order: Expected `object`, got `array`" in str(refusal(lambda: codec.decode(name, 1, array)))


def test_a_validator_that_refuses_the_fields_fails_the_decode() -> None:
    """The class is made with cls(**fields): its validator runs, and its error becomes a CodecError."""
    codec = codec_of(Guarded)
    name, version, _ = codec.encode(Guarded(1))
    error = refusal(lambda: codec.decode(name, version, msgspec.msgpack.encode({"amount": -1})))
    assert "Guarded: making it from the received fields raised" in str(error)
    assert isinstance(error.__cause__, ValueError)


def test_a_struct_post_init_error_fails_the_decode() -> None:
    """A Struct's __post_init__ refusing the values: CodecError."""

    class Positive(msgspec.Struct):
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    codec = codec_of(Positive)
    name = codec.register(Positive)
    assert "negative" in str(refusal(lambda: codec.decode(name, 1, msgspec.msgpack.encode({"n": -1}))))


# -- versions -----------------------------------------------------------------------------------


def test_an_older_version_is_upgraded_by_the_class_function() -> None:
    """A version-1 payload is passed through upgrade(1, fields) before it is decoded into version 2."""
    name, version, payload = codec_of(CreditV1).encode(CreditV1("acct", 3))
    assert (name, version) == ("tests.codec.Credit", 1)
    assert codec_of(CreditV2).decode(name, version, payload) == CreditV2("acct", 300)


def test_an_older_version_without_upgrade_is_decoded_as_it_is() -> None:
    """Without an upgrade function, an older payload must fit the current fields."""
    name, version, payload = codec_of(CreditV1).encode(CreditV1("acct", 3))
    text = str(refusal(lambda: codec_of(CreditV2NoUpgrade).decode(name, version, payload)))
    assert "Object contains unknown field `amount`" in text
    same = msgspec.msgpack.encode({"account": "a", "cents": 5})
    assert codec_of(CreditV2NoUpgrade).decode(name, 1, same) == CreditV2NoUpgrade("a", 5)


def test_a_newer_or_invalid_version_is_refused() -> None:
    """A payload from a newer version of the class, or a version that is not an int >= 1: CodecError."""
    name, _, payload = codec_of(CreditV2).encode(CreditV2("acct", 300))
    codec = codec_of(CreditV1)
    text = str(refusal(lambda: codec.decode(name, 2, payload)))
    assert "sent by version 2 of the class, newer than this one (1)" in text
    bad: Any
    for bad in (0, -1, True, "1"):
        assert "is not a version" in str(refusal(lambda bad=bad: codec.decode(name, bad, payload)))


def test_upgrade_failures_are_codec_errors() -> None:
    """An upgrade that raises, returns no dict or unencodable fields, or gets no map: CodecError naming the version."""

    def raising(old: int, fields: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("amount")

    def not_a_dict(old: int, fields: dict[str, Any]) -> dict[str, Any]:
        return [1]  # type: ignore[return-value]

    def unencodable(old: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {"account": object(), "cents": 1}

    name, version, payload = codec_of(CreditV1).encode(CreditV1("acct", 3))
    for upgrade, expected in (
        (raising, "upgrade from version 1 raised KeyError('amount')"),
        (not_a_dict, "must return the fields as a dict"),
        (unencodable, "returned fields that cannot be encoded"),
    ):

        @message(name="tests.codec.Credit", version=2, upgrade=upgrade)
        @attrs.frozen
        class Credit:
            account: str
            cents: int

        assert expected in str(refusal(lambda cls=Credit: codec_of(cls).decode(name, version, payload)))
    codec = codec_of(CreditV2)
    assert "not a valid payload" in str(refusal(lambda: codec.decode(name, 1, b"\xc1")))
    assert "not a map of fields" in str(refusal(lambda: codec.decode(name, 1, msgspec.msgpack.encode([1]))))


# -- the extra ----------------------------------------------------------------------------------


def test_without_msgspec_the_import_says_which_extra_to_install() -> None:
    """import hybrid.codec with msgspec missing: an ImportError naming the remote extra."""
    code = (
        "import sys; sys.modules['msgspec'] = None\n"
        "try:\n    import hybrid.codec\n"
        "except ImportError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "hybrid.codec needs msgspec: pip install 'trio-hybrid[remote]'" in done.stdout


def test_the_public_names_are_documented_and_say_hybrid_codec() -> None:
    """Every name of hybrid.codec.__all__ is documented and says hybrid.codec in tracebacks and docs."""
    assert hybrid.codec.__all__ == sorted(hybrid.codec.__all__)
    for name in hybrid.codec.__all__:
        obj = getattr(hybrid.codec, name)
        assert obj.__module__ == "hybrid.codec"
        assert obj.__doc__


def test_a_request_message_is_a_record_like_any_other() -> None:
    """A hybrid.Request subclass travels as its fields."""
    assert roundtrip(Ask("why")) == Ask("why")
