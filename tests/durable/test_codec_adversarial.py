"""Adversarial tests of the checkpoint codec: edge values, changed classes, damaged checkpoints.

Each test states one behaviour the codec promises: a value that cannot be saved
raises `CheckpointError` at its transition naming the field or argument; a
checkpoint that cannot be read back raises `CheckpointError` at resume naming
the key, the class and what differs (never another exception type, never a
silent change); what is decoded comes back as its declared type. Tests marked
``xfail(strict=True, reason="BUG: ...")`` show a broken promise: they fail
until it is fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import functools
import math
import random
import sqlite3
import subprocess
import sys
import textwrap
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Literal, NamedTuple, NewType, TypeVar, cast

import attrs
import msgspec
import pytest
import trio
from typing_extensions import Self

from hybrid import Agent, Next
from hybrid.durable import CheckpointError, durable, open_store
from hybrid.durable._codec import Codec
from hybrid.durable._records import Checkpoint, StepKind

T = TypeVar("T")
R = TypeVar("R")

# -- helpers ------------------------------------------------------------------------------------


def save(codec: Codec, agent: Agent[Any], nxt: Next[Any] | None, key: str = "k") -> Checkpoint:
    """The checkpoint the store would write for `agent` taking `nxt`."""
    kind, state, payload = codec.encode_step(key, agent, nxt)
    cls = type(agent)
    return Checkpoint(key, 1, 1, codec.register(cls), codec.version(cls), kind, state, payload)


def resumed_by(cls: type[Agent[Any]], saved: Checkpoint) -> tuple[Agent[Any], Next[Any] | None]:
    """Decode `saved` with a fresh codec that knows `cls` (as after a restart)."""
    codec = Codec()
    codec.register(cls)
    return codec.decode_step(saved)


def roundtrip(agent: Agent[Any], nxt: Next[Any] | None = None) -> tuple[Agent[Any], Next[Any] | None]:
    """Encode with one codec and decode with a fresh one."""
    return resumed_by(type(agent), save(Codec(), agent, nxt))


def refusal(fn: Callable[[], object]) -> CheckpointError:
    """The CheckpointError `fn` raises (any other exception fails the test)."""
    with pytest.raises(CheckpointError) as info:
        fn()
    return info.value


def attempt(fn: Callable[[], R]) -> R | CheckpointError:
    """What `fn` returns, or the CheckpointError it raises (any other exception fails the test)."""
    try:
        return fn()
    except CheckpointError as error:
        return error


def step(fn: Callable[..., Any], *args: Any) -> Next[Any]:
    """Next.do_async unchecked: the codec must refuse what a type checker would."""
    return Next.do_async(fn, *args)


# -- value types ----------------------------------------------------------------------------------


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Tone(enum.StrEnum):
    SOFT = "soft"
    LOUD = "loud"


class Shade(enum.Enum):
    DARK = "dark"
    LIGHT = "light"


class ShadeV2(enum.Enum):  # a later release dropped LIGHT
    DARK = "dark"


UserId = NewType("UserId", int)


@attrs.frozen
class Point:
    x: int
    y: int


@attrs.frozen
class Point3(Point):
    z: int = 0


@attrs.define
class Box(Generic[T]):
    item: T


@dataclasses.dataclass
class Tree:
    value: Any
    kids: list[Tree] = dataclasses.field(default_factory=list["Tree"])


# -- agents ---------------------------------------------------------------------------------------


@attrs.define
class Scalars(Agent[None]):
    f: float = 0.0
    i: int = 0
    s: str = ""
    b: bytes = b""
    buf: bytearray = attrs.field(factory=bytearray)
    d: decimal.Decimal = decimal.Decimal(0)
    anything: Any = None

    async def take(self, f: float, s: str, b: bytes) -> Next[Self]:
        return Next.done()


@attrs.define
class Typed(Agent[None]):
    level: Level = Level.LOW
    tone: Tone = Tone.SOFT
    shade: Shade = Shade.DARK
    mode: Literal["fast", "slow"] = "fast"
    user: UserId = UserId(0)
    by_int: dict[int, str] = attrs.field(factory=dict[int, str])
    by_day: dict[datetime.date, int] = attrs.field(factory=dict[datetime.date, int])
    by_level: dict[Level, str] = attrs.field(factory=dict[Level, str])
    by_pair: dict[tuple[int, int], str] = attrs.field(factory=dict[tuple[int, int], str])
    either: float | int = 0
    maybe: Point | None = None
    pair: tuple[int, str] = (0, "")
    many: tuple[int, ...] = ()
    points: frozenset[Point] = frozenset()
    seen: set[str] = attrs.field(factory=set[str])
    boxed: Box[Point] | None = None
    when: datetime.datetime | None = None

    async def go(self, flag: bool, count: int, level: Level) -> Next[Self]:
        return Next.done()


@durable(name="adversarial.shaded")
@attrs.define
class Shaded(Agent[None]):
    shade: Shade = Shade.DARK


@durable(name="adversarial.shaded")
@attrs.define
class ShadedV2(Agent[None]):
    shade: ShadeV2 = ShadeV2.DARK


def _tags(value: str | list[str]) -> list[str]:
    return value.split(",") if isinstance(value, str) else value


def _split_only(value: str) -> list[str]:
    return value.split(",")


@attrs.define
class Fields(Agent[None]):
    tags: list[str] = attrs.field(converter=_tags, factory=list[str])
    renamed: int = attrs.field(default=0, alias="why")
    _secret: int = attrs.field(default=0, kw_only=True)
    keyed: int = attrs.field(default=0, kw_only=True, alias="kk")
    derived: int = attrs.field(init=False, default=-1)
    made: list[int] = attrs.field(factory=lambda: [1, 2])

    def __attrs_post_init__(self) -> None:
        self.derived = len(self.tags)


@attrs.define
class StrictConverter(Agent[None]):
    tags: list[str] = attrs.field(converter=_split_only, default="")  # pyright: ignore[reportAssignmentType]


@attrs.define
class Unset(Agent[None]):
    n: int = 0
    later: int = attrs.field(init=False)


@attrs.define
class Parent(Agent[str]):
    n: int = 0

    async def work(self, by: int) -> Next[Self]:
        return Next.done("parent")


@attrs.define
class Child(Parent):
    extra: str = ""


@attrs.define
class Holder(Agent[None], Generic[T]):
    item: T | None = None


@attrs.define
class PointHolder(Holder[Point]):
    pass


@attrs.define
class DeeperPointHolder(PointHolder):
    pass


@attrs.define
class BoxHolder(Agent[None], Generic[T]):
    # A bare generic class (Box[Any]): what the test is about.
    box: Box = attrs.field(factory=lambda: Box(None))  # type: ignore[type-arg]
    item: T | None = None


@attrs.define
class IntBoxHolder(BoxHolder[int]):
    pass


@attrs.define
class PlainHolder(Agent[None]):
    point: Point = attrs.field(factory=lambda: Point(0, 0))
    maybe: Point | None = None
    many: list[Point] = attrs.Factory(list[Point])


@attrs.frozen
class LookAlike:
    """Not a Point, with a Point's fields: it would come back as a Point."""

    x: int
    y: int


class Pair(NamedTuple):
    label: str
    extra: Any


@attrs.define
class PairHolder(Agent[None]):
    pair: Pair | None = None


@attrs.define
class Trees(Agent[None]):
    tree: Tree | None = None


class Outsider:
    async def go(self) -> Next[Any]:
        return Next.done()


def _quick(self: Any) -> Next[Any]:
    return Next.done()


@attrs.define
class Shapes(Agent[None]):
    n: int = 0
    quick = _quick  # a method of the class whose function is named otherwise

    def helper(self) -> int:
        return 1

    @staticmethod
    def static() -> Next[Any]:
        return Next.done()

    @property
    def prop(self) -> int:
        return 1

    async def work(self, n: int) -> Next[Self]:
        return Next.done()


# Versions of one agent whose field holds a value class that changes between releases.


@attrs.frozen
class ItemV1:
    sku: str
    qty: int


@attrs.frozen
class ItemFewer:
    sku: str


@attrs.frozen
class ItemMore:
    sku: str
    qty: int
    price: int = 0


@durable(name="adversarial.cart")
@attrs.define
class Cart(Agent[None]):
    item: ItemV1


@durable(name="adversarial.cart")
@attrs.define
class CartFewer(Agent[None]):
    item: ItemFewer


@durable(name="adversarial.cart")
@attrs.define
class CartMore(Agent[None]):
    item: ItemMore


# -- floats, ints, strings, bytes -------------------------------------------------------------------


def test_nan_infinities_and_negative_zero_come_back_bit_for_bit() -> None:
    """NaN, +inf, -inf and -0.0 in a float field and a float argument round-trip exactly."""
    for value in (math.nan, math.inf, -math.inf, -0.0):
        agent = Scalars(f=value)
        resumed, nxt = roundtrip(agent, Next.do_async(agent.take, value, "", b""))
        assert isinstance(resumed, Scalars)
        assert nxt is not None
        for back in (resumed.f, nxt.args[0]):
            assert type(back) is float
            if math.isnan(value):
                assert math.isnan(back)
            else:
                assert back == value
                assert math.copysign(1.0, back) == math.copysign(1.0, value)


def test_the_64_bit_integer_edges_round_trip_and_one_past_them_is_refused_naming_the_field() -> None:
    """-(2**63) and 2**64-1 fit msgpack; -(2**63)-1 and 2**64 raise CheckpointError, not OverflowError."""
    for value in (-(2**63), 2**64 - 1, 0):
        resumed, _ = roundtrip(Scalars(i=value))
        assert isinstance(resumed, Scalars)
        assert resumed.i == value
    for value in (-(2**63) - 1, 2**64, 10**40):
        message = str(refusal(functools.partial(Codec().encode_step, "k", Scalars(i=value), None)))
        assert message.startswith("key 'k': Scalars field 'i': cannot encode int")
    message = str(refusal(lambda: Codec().encode_step("k", Scalars(anything={"n": [2**64]}), None)))
    assert message.startswith("key 'k': Scalars field 'anything'['n'][0]: cannot encode int")


def test_an_int_in_a_float_field_comes_back_a_float_and_a_bool_is_refused() -> None:
    """Documented coercion int -> float (also for 2**64-1); a bool is not a float, refused at save."""
    resumed, _ = roundtrip(Scalars(f=2**64 - 1))
    assert isinstance(resumed, Scalars)
    assert type(resumed.f) is float
    message = str(refusal(lambda: Codec().encode_step("k", Scalars(f=True), None)))
    assert "key 'k': Scalars field 'f': Expected `float`, got `bool`" in message


def test_lone_surrogates_are_refused_at_the_transition_naming_field_argument_or_dict_key() -> None:
    """A str that is not valid UTF-8: CheckpointError naming where it is, never UnicodeEncodeError."""
    message = str(refusal(lambda: Codec().encode_step("k", Scalars(s="a\ud800"), None)))
    assert message.startswith("key 'k': Scalars field 's': cannot encode str")
    agent = Scalars()
    message = str(refusal(lambda: Codec().encode_step("k", agent, Next.do_async(agent.take, 1.0, "\udc80", b""))))
    assert message.startswith("key 'k': Scalars.take argument 's' (position 1): cannot encode str")
    message = str(refusal(lambda: Codec().encode_step("k", Scalars(anything={"\ud800": 1}), None)))
    assert message.startswith("key 'k': Scalars field 'anything' key '\\ud800': cannot encode str")


def test_empty_strings_and_nul_characters_round_trip() -> None:
    """'' and strings and bytes holding NUL come back as they were."""
    for text in ("", "\x00", "a\x00b", "\U0010ffff", "é" * 1000):
        agent = Scalars(s=text, b=text.encode(), anything=[text])
        resumed, nxt = roundtrip(agent, Next.do_async(agent.take, 0.0, text, text.encode()))
        assert resumed == agent
        assert nxt is not None
        assert nxt.args == (0.0, text, text.encode())


def test_bytearray_and_memoryview_come_back_as_the_declared_bytes_type_and_are_refused_in_any_slots() -> None:
    """bytes field <- bytearray/memoryview: bytes; bytearray field <- bytes: bytearray; Any <- bytearray: refused."""
    resumed, _ = roundtrip(Scalars(b=bytearray(b"\x00\xff"), buf=bytearray(b"x")))  # type: ignore[arg-type]
    assert isinstance(resumed, Scalars)
    assert (type(resumed.b), resumed.b) == (bytes, b"\x00\xff")
    assert (type(resumed.buf), resumed.buf) == (bytearray, bytearray(b"x"))
    resumed, _ = roundtrip(Scalars(b=memoryview(b"mv"), buf=b"y"))  # type: ignore[arg-type]
    assert isinstance(resumed, Scalars)
    assert (type(resumed.b), resumed.b) == (bytes, b"mv")
    assert type(resumed.buf) is bytearray
    for value, name in ((bytearray(b"x"), "bytearray"), (memoryview(b"x"), "memoryview")):
        message = str(refusal(functools.partial(Codec().encode_step, "k", Scalars(anything=[value]), None)))
        assert f"key 'k': Scalars field 'anything'[0]: a {name} would come back as another type" in message


def test_special_decimals_round_trip_as_decimals() -> None:
    """NaN, sNaN, -0, Infinity, huge exponents and long mantissas: the same Decimal (compared by str)."""
    for text in ("NaN", "sNaN", "-0", "-Infinity", "1E-1000000", "1." + "0" * 200, "123456789" * 10):
        resumed, _ = roundtrip(Scalars(d=decimal.Decimal(text)))
        assert isinstance(resumed, Scalars)
        assert type(resumed.d) is decimal.Decimal
        assert str(resumed.d) == str(decimal.Decimal(text))


# -- enums, literals, new types, keys, unions, tuples, sets, generics ---------------------------------


def test_enum_subclasses_in_plain_fields_come_back_plain_and_raw_values_in_enum_fields_come_back_members() -> None:
    """IntEnum in int, StrEnum in str: back as int, str; 2, "loud", "light" in enum fields: back as members."""
    resumed, _ = roundtrip(Scalars(i=Level.HIGH, s=Tone.LOUD))
    assert isinstance(resumed, Scalars)
    assert (type(resumed.i), resumed.i) == (int, 2)
    assert (type(resumed.s), resumed.s) == (str, "loud")
    back, _ = roundtrip(Typed(level=2, tone="loud", shade="light"))  # type: ignore[arg-type]
    assert isinstance(back, Typed)
    assert (back.level, back.tone, back.shade) == (Level.HIGH, Tone.LOUD, Shade.LIGHT)
    assert type(back.level) is Level


def test_a_state_argument_whose_value_does_not_match_its_annotation_is_refused_naming_it() -> None:
    """bool for int, int for bool, 3 for an IntEnum without member 3: each named by its parameter."""
    agent = Typed()
    cases: list[tuple[tuple[Any, ...], str]] = [
        ((True, True, Level.LOW), "argument 'count' (position 1): Expected `int`, got `bool`"),
        ((1, 1, Level.LOW), "argument 'flag' (position 0): Expected `bool`, got `int`"),
        ((True, 1, 3), "argument 'level' (position 2): Invalid enum value 3"),
    ]
    for args, expected in cases:
        message = str(refusal(functools.partial(Codec().encode_step, "k", agent, step(agent.go, *args))))
        assert message.startswith("key 'k': Typed.go ")
        assert expected in message


def test_an_enum_member_removed_between_save_and_resume_is_refused_naming_the_field() -> None:
    """Saved Shade.LIGHT; the next release's enum has no "light": CheckpointError naming key, class, field."""
    saved = save(Codec(), Shaded(Shade.LIGHT), None)
    error = refusal(lambda: resumed_by(ShadedV2, saved))
    assert "key 'k': ShadedV2 field 'shade': Invalid enum value 'light'" in str(error)


def test_literal_new_type_non_str_keys_unions_tuples_sets_and_generics_round_trip() -> None:
    """Every supported shape comes back equal and of its declared type."""
    agent = Typed(
        level=Level.HIGH,
        tone=Tone.LOUD,
        shade=Shade.LIGHT,
        mode="slow",
        user=UserId(42),
        by_int={-(2**63): "min", 0: "zero", 2**64 - 1: "max"},
        by_day={datetime.date(2024, 2, 29): 1},
        by_level={Level.LOW: "l"},
        by_pair={(1, 2): "a", (-1, 0): "b"},
        either=1,
        maybe=Point(1, 2),
        pair=(7, "seven"),
        many=(1, 2, 3),
        points=frozenset({Point(1, 1), Point(2, 2)}),
        seen={"a", "b", ""},
        boxed=Box(Point(3, 4)),
        when=datetime.datetime(2024, 1, 1, 12, 0, 0, 123456),
    )
    resumed, nxt = roundtrip(agent, Next.do_async(agent.go, False, 3, Level.LOW))
    assert resumed == agent
    assert isinstance(resumed, Typed)
    assert type(resumed.either) is int
    assert type(resumed.points) is frozenset
    assert type(resumed.seen) is set
    assert type(resumed.many) is tuple
    assert next(iter(resumed.by_pair)) in {(1, 2), (-1, 0)}
    assert all(type(k) is tuple for k in resumed.by_pair)
    assert resumed.boxed is not None
    assert type(resumed.boxed.item) is Point
    assert nxt is not None
    assert nxt.args == (False, 3, Level.LOW)
    assert type(nxt.args[2]) is Level
    resumed, _ = roundtrip(Typed(either=1.0, many=[1, 2], pair=[1, "a"]))  # type: ignore[arg-type]
    assert isinstance(resumed, Typed)
    assert type(resumed.either) is float
    assert (resumed.many, resumed.pair) == ((1, 2), (1, "a"))


def test_shapes_that_do_not_fit_their_annotation_are_refused_at_save_naming_the_field() -> None:
    """A Literal outside its values, a short fixed tuple, a Box of the wrong item, a Point for Point | None."""
    cases: list[tuple[Typed, str]] = [
        (Typed(mode="medium"), "Typed field 'mode': Invalid enum value 'medium'"),  # type: ignore[arg-type]
        (Typed(pair=(1,)), "Typed field 'pair': Expected `array` of length 2, got 1"),  # type: ignore[arg-type]
        (Typed(boxed=Box(1)), "Typed field 'boxed'.item: Expected `object`, got `int`"),  # type: ignore[arg-type]
        (Typed(seen={1}), "Typed field 'seen'[0]: Expected `str`, got `int`"),  # type: ignore[arg-type]
    ]
    for agent, expected in cases:
        message = str(refusal(functools.partial(Codec().encode_step, "k", agent, None)))
        assert message.startswith("key 'k': ")
        assert expected in message


def test_a_dict_key_of_the_wrong_type_is_named_by_its_field_at_save_and_at_resume() -> None:
    """dict[int, str] holding a str key: the message names field 'by_int', at save and at resume."""
    message = str(refusal(lambda: Codec().encode_step("k", Typed(by_int={"1": "a"}), None)))  # type: ignore[dict-item]
    assert "key 'k': Typed field 'by_int'" in message
    saved = save(Codec(), Typed(), None)
    items: list[Any] = msgspec.msgpack.decode(saved.payload)
    items[1]["by_int"] = {"1": "a"}
    damaged = attrs.evolve(saved, payload=msgspec.msgpack.encode(items))
    message = str(refusal(lambda: resumed_by(Typed, damaged)))
    assert "key 'k': Typed field 'by_int'" in message
    assert "not a valid payload" not in message


def test_an_aware_datetime_outside_utc_is_refused_at_save_naming_the_field() -> None:
    """msgpack keeps an instant in UTC: 00:30 at +02:00 would come back as 22:30 the day before, so it is refused."""
    when = datetime.datetime(2024, 7, 1, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    message = str(refusal(lambda: roundtrip(Typed(when=when))))
    assert "Typed field 'when'" in message
    assert "an aware datetime comes back in UTC" in message
    for kept in (when.astimezone(datetime.UTC), when.replace(tzinfo=None)):
        resumed, _ = roundtrip(Typed(when=kept))
        assert isinstance(resumed, Typed)
        assert resumed.when == kept
        assert resumed.when is not None
        assert resumed.when.tzinfo is kept.tzinfo
        assert (resumed.when.date(), resumed.when.hour) == (kept.date(), kept.hour)
    for utc in (zoneinfo.ZoneInfo("UTC"), datetime.timezone(datetime.timedelta(0), "UTC")):  # UTC by other names
        resumed, _ = roundtrip(Typed(when=when.astimezone(utc)))
        assert isinstance(resumed, Typed)
        assert resumed.when == when


def test_a_subclass_value_in_a_field_typed_with_its_base_is_refused_at_save() -> None:
    """Point3(1, 2, z=9) in a Point | None field would come back as Point(1, 2): refused, naming the field."""
    message = str(refusal(lambda: roundtrip(Typed(maybe=Point3(1, 2, 9)))))
    assert "Typed field 'maybe'" in message
    assert "a Point3 would come back as a Point" in message
    resumed, _ = roundtrip(Typed(maybe=Point(1, 2)))
    assert isinstance(resumed, Typed)
    assert resumed.maybe == Point(1, 2)


def test_a_field_typed_by_a_type_variable_takes_the_subclass_parameter() -> None:
    """Holder[T].item: T | None in PointHolder(Holder[Point]) is a Point | None, as the output type would be."""
    resumed, _ = roundtrip(PointHolder(Point(1, 2)))
    assert isinstance(resumed, PointHolder)
    assert resumed.item == Point(1, 2)
    deeper, _ = roundtrip(DeeperPointHolder(Point(3, 4)))  # through a subclass that is not generic itself
    assert isinstance(deeper, DeeperPointHolder)
    assert deeper.item == Point(3, 4)


def test_a_bare_generic_class_field_keeps_its_own_parameters_in_a_parameterized_subclass() -> None:
    """BoxHolder[T].box: Box (bare) stays Box[Any] in IntBoxHolder(BoxHolder[int]); only T becomes int."""
    resumed, _ = roundtrip(IntBoxHolder(box=Box("text"), item=3))
    assert isinstance(resumed, IntBoxHolder)
    assert (resumed.box, resumed.item) == (Box("text"), 3)  # pyright: ignore[reportUnknownMemberType]


def test_a_mapping_for_a_class_typed_field_is_taken_as_msgspec_takes_it() -> None:
    """Only a subclass instance is refused; a dict with the class's fields comes back as the class, in a union too."""
    resumed, _ = roundtrip(PlainHolder(point={"x": 1, "y": 2}, maybe={"x": 3, "y": 4}))  # type: ignore[arg-type]
    assert isinstance(resumed, PlainHolder)
    assert (resumed.point, resumed.maybe) == (Point(1, 2), Point(3, 4))


# -- attrs field features --------------------------------------------------------------------------


def test_aliases_private_kw_only_converters_init_false_and_factories_round_trip() -> None:
    """Fields set by alias, private kw_only, a converter accepting its output, an init=False field set after."""
    make = cast("Callable[..., Fields]", Fields)  # by alias and private names: not in its typed signature
    agent = make("a,b", why=3, secret=4, kk=5)
    agent.derived = 99  # not what __attrs_post_init__ would compute: the saved value wins
    agent.made.append(3)
    resumed, _ = roundtrip(agent)
    assert isinstance(resumed, Fields)
    assert (resumed.tags, resumed.renamed, resumed._secret, resumed.keyed) == (["a", "b"], 3, 4, 5)
    assert (resumed.derived, resumed.made) == (99, [1, 2, 3])


def test_a_converter_that_refuses_its_own_output_fails_at_resume_with_a_checkpoint_error() -> None:
    """Documented: converters must accept their own output; if not, CheckpointError naming key and class."""
    saved = save(Codec(), StrictConverter("a,b"), None)
    error = refusal(lambda: resumed_by(StrictConverter, saved))
    assert str(error).startswith("key 'k': StrictConverter: making the agent from its checkpointed fields raised")
    assert isinstance(error.__cause__, AttributeError)


def test_an_init_false_field_not_yet_set_is_a_checkpoint_error_naming_the_field() -> None:
    """attrs allows an init=False field without a default; saving before it is set names it."""
    message = str(refusal(lambda: Codec().encode_step("k", Unset(), None)))
    assert "key 'k': Unset field 'later'" in message


# -- classes: subclasses, names ---------------------------------------------------------------------


def test_a_subclass_is_its_own_class_and_an_inherited_state_resumes_on_it() -> None:
    """Child(Parent) registers under its own name; Parent's state works on a Child; a Parent-only codec refuses it."""
    codec = Codec()
    assert codec.register(Parent) != codec.register(Child)
    agent = Child(1, "x")
    saved = save(codec, agent, Next.do_async(agent.work, 2))
    resumed, nxt = resumed_by(Child, saved)
    assert type(resumed) is Child
    assert resumed == agent
    assert nxt is not None
    assert nxt.args == (2,)
    assert "unknown agent class" in str(refusal(lambda: resumed_by(Parent, saved)))


def test_two_codec_registrations_of_one_name_and_a_checkpoint_under_the_wrong_class_are_refused() -> None:
    """Shaded and ShadedV2 share a name: one codec refuses the second; each decodes only its own shape."""
    codec = Codec()
    codec.register(Shaded)
    message = str(refusal(lambda: codec.register(ShadedV2)))
    assert "'adversarial.shaded'" in message
    assert "ShadedV2" in message
    assert resumed_by(ShadedV2, save(Codec(), Shaded(Shade.DARK), None))[0] == ShadedV2(ShadeV2.DARK)


# -- states: what may be resumed -------------------------------------------------------------------


def test_a_checkpoint_naming_a_field_helper_static_method_or_property_is_refused() -> None:
    """Tampered state names: a field, a staticmethod, a property, a missing name, a non-identifier."""
    agent = Shapes()
    saved = save(Codec(), agent, Next.do_async(agent.work, 1))
    for name in ("n", "static", "prop", "nope", "work ", "__class__", "__attrs_init__"):
        message = str(refusal(functools.partial(resumed_by, Shapes, attrs.evolve(saved, state=name))))
        assert message.startswith(f"key 'k': Shapes.{name}")
        assert "no longer a method of Shapes" in message


def test_a_plain_method_that_is_not_a_state_resumes_only_if_its_arguments_fit() -> None:
    """helper(self) takes no argument: the saved 1 does not fit it; refused, not called with a surprise."""
    agent = Shapes()
    saved = attrs.evolve(save(Codec(), agent, Next.do_async(agent.work, 1)), state="helper", kind=StepKind.SYNC)
    message = str(refusal(lambda: resumed_by(Shapes, saved)))
    assert "key 'k': Shapes.helper: the checkpoint has 1 argument(s), which no longer fit helper()" in message


def test_bound_methods_of_other_objects_and_functions_stored_under_another_name_are_refused_as_states() -> None:
    """Another instance's state, a non-agent's method, a function assigned on the class under another name."""
    agent = Shapes()
    cases: list[tuple[Callable[..., Any], str]] = [
        (Shapes().work, "Shapes.work (a method of a Shapes)"),
        (Outsider().go, "Outsider.go (a method of a Outsider)"),
        (agent.quick, "_quick (a method of a Shapes)"),
    ]
    for fn, named in cases:
        message = str(refusal(functools.partial(Codec().encode_step, "k", agent, step(fn))))
        assert message.startswith(f"key 'k': Shapes state {named}: a checkpointed state must be a method")


# -- damaged payloads (in memory) ------------------------------------------------------------------


def test_random_and_truncated_payloads_raise_only_checkpoint_errors_naming_the_key_and_class() -> None:
    """A seeded fuzz of garbage, truncations and bit flips: CheckpointError or a correct decode, nothing else.

    Payloads starting with an array-16/32 header are left out here (see the header test below).
    """
    agent = Typed(by_int={1: "a"}, points=frozenset({Point(1, 2)}))
    codec = Codec()
    saved = save(codec, agent, Next.do_async(agent.go, True, 1, Level.LOW))
    rng = random.Random(20240229)
    refused = 0
    for _ in range(400):
        choice = rng.randrange(3)
        if choice == 0:
            payload = rng.randbytes(rng.randrange(40))
        elif choice == 1:
            payload = saved.payload[: rng.randrange(len(saved.payload))]
        else:
            data = bytearray(saved.payload)
            data[rng.randrange(1, len(data))] ^= 1 << rng.randrange(8)
            payload = bytes(data)
        if payload[:1] in (b"\xdc", b"\xdd"):
            continue
        result = attempt(functools.partial(codec.decode_step, attrs.evolve(saved, payload=payload)))
        if isinstance(result, CheckpointError):
            refused += 1
            assert str(result).startswith("key 'k': Typed")
        else:
            assert isinstance(result[0], Typed)
    assert refused > 300


def test_an_array_header_claiming_billions_of_arguments_is_a_checkpoint_error() -> None:
    """A *args state and a header of 0xFFFFFFFF items in an 8-byte payload: CheckpointError, not MemoryError.

    Run in a child process whose address space is capped at 1 GiB (without the cap the
    codec would try to allocate tens of GiB).
    """
    script = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
        import attrs
        from hybrid import Agent, Next
        from hybrid.durable import CheckpointError
        from hybrid.durable._codec import Codec
        from hybrid.durable._records import Checkpoint, StepKind

        @attrs.define
        class Spread(Agent[None]):
            def many(self, *xs: int) -> Next[None]:
                return Next.done()

        codec = Codec()
        name = codec.register(Spread)
        payload = b"\\xdd\\xff\\xff\\xff\\xff" + b"\\x01\\x80\\xc0\\x01"
        try:
            codec.decode_step(Checkpoint("k", 1, 1, name, 1, StepKind.SYNC, "many", payload))
        except CheckpointError as error:
            print("CheckpointError", error)
        except BaseException as error:
            print("LEAK", type(error).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.startswith("CheckpointError key 'k': Spread.many"), done.stdout + done.stderr


def test_a_fields_map_with_a_duplicated_key_is_refused() -> None:
    """{"n": 1, "n": 2} is damaged: which value is meant is unknown."""
    agent = Shapes(0)
    saved = save(Codec(), agent, Next.do_async(agent.work, 5))
    assert saved.payload == b"\x94\x01\x81\xa1n\x00\xc0\x05"
    damaged = attrs.evolve(saved, payload=b"\x94\x01\x82\xa1n\x01\xa1n\x02\xc0\x05")
    assert "field 'n'" in str(refusal(lambda: resumed_by(Shapes, damaged)))


def test_a_str_or_wrong_array_length_payload_for_a_begin_checkpoint_is_refused() -> None:
    """A BEGIN checkpoint with arguments, a payload of the wrong top-level type, trailing bytes."""
    agent = Shapes(0)
    saved = save(Codec(), agent, Next.do_async(agent.work, 5))
    begin = attrs.evolve(saved, kind=StepKind.BEGIN, state="")
    assert "not a valid payload" in str(refusal(lambda: resumed_by(Shapes, begin)))
    for payload in (msgspec.msgpack.encode({"n": 1}), msgspec.msgpack.encode(5), saved.payload + b"\x00", b"\x90"):
        message = str(refusal(functools.partial(resumed_by, Shapes, attrs.evolve(saved, payload=payload))))
        assert message.startswith("key 'k': Shapes.work: ")


# -- deep and recursive values ----------------------------------------------------------------------


def _chain(depth: int) -> Tree:
    tree = Tree(0)
    for _ in range(depth):
        tree = Tree(0, [tree])
    return tree


def _encodable_depth() -> int:
    """The deepest chain msgspec itself encodes from here (the interpreter's recursion limit decides)."""
    low, high = 1, 4000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            msgspec.msgpack.encode(_chain(middle))
        except RecursionError:
            high = middle - 1
        else:
            low = middle
    return low


def test_a_cyclic_attrs_value_is_a_checkpoint_error() -> None:
    """A Tree whose kids hold itself (a cycle through a typed recursive value): refused, named."""
    tree = Tree(0)
    tree.kids.append(tree)
    message = str(refusal(lambda: Codec().encode_step("k", Trees(tree), None)))
    assert message.startswith("key 'k': Trees field 'tree'.kids[0]")


def test_a_value_nested_too_deep_for_msgspec_is_a_checkpoint_error() -> None:
    """Deeper than the recursion limit: CheckpointError naming the field, never RecursionError."""
    message = str(refusal(lambda: Codec().encode_step("k", Trees(_chain(5000)), None)))
    assert message.startswith("key 'k': Trees field 'tree'.kids[0]")
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    message = str(refusal(lambda: Codec().encode_step("k", Scalars(anything=nested), None)))
    # msgspec's own depth limit, or (first, on some Pythons) the recursion limit of the Any-slot check.
    assert message.startswith(
        ("key 'k': Scalars field 'anything'[0]", "key 'k': Scalars field 'anything': it is nested")
    )


def test_a_value_msgspec_can_encode_is_never_refused_by_a_recursion_error() -> None:
    """A Tree (Any slots inside) a little shallower than msgspec's limit: saved, or a CheckpointError."""
    depth = _encodable_depth() - 10
    assert depth > 100
    agent = Trees(_chain(depth))
    result = attempt(lambda: roundtrip(agent))
    if isinstance(result, CheckpointError):
        assert str(result).startswith("key 'k': Trees field 'tree'")
    else:
        resumed = result[0]
        assert isinstance(resumed, Trees)
        node, levels = resumed.tree, 0
        while node is not None and node.kids:
            node, levels = node.kids[0], levels + 1
        assert levels == depth


# -- a value class that changed between save and resume ----------------------------------------------


def test_a_field_removed_from_a_nested_value_class_is_refused_at_resume() -> None:
    """ItemV1(sku, qty) saved, ItemFewer(sku) now: qty would be lost: CheckpointError naming the field."""
    saved = save(Codec(), Cart(ItemV1("s", 3)), None)
    message = str(refusal(lambda: resumed_by(CartFewer, saved)))
    assert "key 'k': CartFewer field 'item'" in message


def test_a_field_added_to_a_nested_value_class_is_refused_at_resume() -> None:
    """ItemV1(sku, qty) saved, ItemMore(sku, qty, price=0) now: as for the agent's own fields, refused."""
    saved = save(Codec(), Cart(ItemV1("s", 3)), None)
    message = str(refusal(lambda: resumed_by(CartMore, saved)))
    assert "key 'k': CartMore field 'item'" in message


def test_a_retyped_nested_field_is_refused_at_resume_naming_its_path() -> None:
    """qty was an int, the new class wants a str: named as field 'item'.qty."""

    saved = save(Codec(), Cart(ItemV1("s", 3)), None)
    items: list[Any] = msgspec.msgpack.decode(saved.payload)
    items[1]["item"]["qty"] = "three"
    damaged = attrs.evolve(saved, payload=msgspec.msgpack.encode(items))
    message = str(refusal(lambda: resumed_by(Cart, damaged)))
    assert "key 'k': Cart field 'item'.qty: Expected `int`, got `str`" in message


# -- the store: damaged rows in the SQLite file --------------------------------------------------------

PARKED: list[str] = []


@attrs.define
class Parked(Agent[str]):
    """begin -> park(7), which waits until the run is cancelled: the key stays unfinished at "park"."""

    order: str
    count: int = 0

    def begin(self) -> Next[Self]:
        return Next.do_async(self.park, 7)

    async def park(self, n: int) -> Next[Self]:
        PARKED.append(self.order)
        await trio.sleep_forever()


@attrs.define
class Refusing(Agent[str]):
    """begin -> first(), whose next transition carries an argument that cannot be saved."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.first)

    async def first(self) -> Next[Self]:
        return step(self.second, "\ud800")

    async def second(self, text: str) -> Next[Self]:
        return Next.done(text)  # pragma: no cover


async def _park(path: Path) -> None:
    """Leave key "k" unfinished in the SQLite file at `path`, its checkpoint naming park(7)."""
    PARKED.clear()
    async with open_store(path) as store, trio.open_nursery() as nursery:
        await store.spawn(nursery, Parked("o", 3), key="k")
        with trio.fail_after(10):
            while not PARKED:  # noqa: ASYNC110 - the agent's task fills it
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    PARKED.clear()


def _row(path: Path) -> tuple[Any, ...]:
    with contextlib.closing(sqlite3.connect(path)) as db:  # a connection's own `with` does not close it
        row: tuple[Any, ...] = db.execute(
            "SELECT epoch, seq, status, agent_class, version, kind, state, payload FROM hybrid_keys WHERE key = 'k'"
        ).fetchone()
    return row


def _tamper(path: Path, sql: str, *params: object) -> tuple[Any, ...]:
    db = sqlite3.connect(path)
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()
    return _row(path)


def _step_payload(fields: dict[str, Any], *args: Any) -> bytes:
    return msgspec.msgpack.encode([1, fields, None, *args])


DAMAGED: list[tuple[str, bytes, str]] = [
    ("random", random.Random(5).randbytes(32), "key 'k': Parked.park: the checkpoint is not a valid payload"),
    ("truncated", _step_payload({"order": "o", "count": 3}, 7)[:-4], "the checkpoint is not a valid payload"),
    ("a map", msgspec.msgpack.encode({"order": "o"}), "key 'k': Parked.park: the checkpoint is not a valid payload"),
    ("an extra field", _step_payload({"order": "o", "count": 3, "x": 1}, 7), "Object contains unknown field `x`"),
    ("a missing field", _step_payload({"order": "o"}, 7), "Object missing required field `count`"),
    ("a wrong field type", _step_payload({"order": "o", "count": "3"}, 7), "field 'count': Expected `int`"),
    ("a wrong argument type", _step_payload({"order": "o", "count": 3}, "7"), "argument 'n' (position 0)"),
    ("too many arguments", _step_payload({"order": "o", "count": 3}, 7, 8), "no longer fit park(n)"),
    ("format 2", msgspec.msgpack.encode([2, {"order": "o", "count": 3}, None, 7]), "unknown checkpoint format"),
    ("an integer column", b"", "its payload column holds a value of type int, not bytes"),
]


@pytest.mark.parametrize(("label", "payload", "expected"), DAMAGED, ids=[d[0] for d in DAMAGED])
async def test_a_damaged_payload_in_the_sqlite_file_fails_resume_and_run_with_checkpoint_error_leaving_the_row(
    tmp_path: Path, label: str, payload: bytes, expected: str
) -> None:
    """resume() and run() raise CheckpointError naming key and class; nothing runs; the row stays as it was."""
    path = tmp_path / "store.db"
    await _park(path)
    assert _row(path)[5:7] == ("async", "park")
    if label == "an integer column":
        before = _tamper(path, "UPDATE hybrid_keys SET payload = 5 WHERE key = 'k'")
    else:
        before = _tamper(path, "UPDATE hybrid_keys SET payload = ? WHERE key = 'k'", payload)
    async with open_store(path, agents=[Parked]) as store:
        async with trio.open_nursery() as nursery:
            with pytest.raises(CheckpointError) as info:
                await store.resume(nursery)
        message = str(info.value)
        assert message.startswith("key 'k': ")
        assert "Parked" in message
        assert expected in message
        assert _row(path) == before  # resume decodes before it claims: nothing written
        with pytest.raises(CheckpointError) as again:
            await store.run(Parked("other"), key="k")
        assert str(again.value) == message
        assert store.live_keys() == []
    assert PARKED == []
    assert _row(path)[1:] == before[1:]  # run claimed the key (a new epoch), its checkpoint is intact


async def test_tampered_class_version_and_state_columns_fail_resume_with_checkpoint_error(tmp_path: Path) -> None:
    """An unknown class, a newer version, a state that is a field: CheckpointError naming the key."""
    cases: list[tuple[str, str]] = [
        ("UPDATE hybrid_keys SET agent_class = 'gone.Class'", "key 'k': unknown agent class 'gone.Class'"),
        ("UPDATE hybrid_keys SET version = 9", "key 'k': Parked: the checkpoint was written by version 9"),
        ("UPDATE hybrid_keys SET state = 'count'", "key 'k': Parked.count: the checkpoint resumes state 'count'"),
        ("UPDATE hybrid_keys SET state = 'begin', kind = 'sync'", "no longer fit begin()"),
        ("UPDATE hybrid_keys SET state = 'park', kind = 'sync'", "now an async def"),
        ("UPDATE hybrid_keys SET state = 'park', kind = 'begin'", "a begin checkpoint names no state"),
    ]
    for index, (sql, expected) in enumerate(cases):
        path = tmp_path / f"store-{index}.db"
        await _park(path)
        before = _tamper(path, sql)
        async with open_store(path, agents=[Parked]) as store, trio.open_nursery() as nursery:
            with pytest.raises(CheckpointError) as info:
                await store.resume(nursery)
            assert str(info.value).startswith("key 'k': ")
            assert expected in str(info.value)
        assert _row(path) == before


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE hybrid_keys SET payload = 'not bytes' WHERE key = 'k'",
        "UPDATE hybrid_keys SET kind = 'later' WHERE key = 'k'",
    ],
    ids=["text-payload", "unknown-kind"],
)
async def test_a_row_of_the_wrong_column_type_fails_resume_with_checkpoint_error_naming_the_key(
    tmp_path: Path, sql: str
) -> None:
    """A damaged row is a checkpoint that cannot be decoded, not a failed database."""
    path = tmp_path / "store.db"
    await _park(path)
    _tamper(path, sql)
    async with open_store(path, agents=[Parked]) as store, trio.open_nursery() as nursery:
        with pytest.raises(CheckpointError) as info:
            await store.resume(nursery)
        assert str(info.value).startswith("key 'k': ")


async def test_a_transition_that_cannot_be_saved_fails_the_run_naming_the_argument_and_writes_no_checkpoint(
    tmp_path: Path,
) -> None:
    """first() returns second("\\ud800"): CheckpointError at that transition; no checkpoint of "second" is written."""
    async with open_store(tmp_path / "store.db") as store:
        with pytest.raises(CheckpointError) as info:
            await store.run(Refusing(), key="k")
        assert str(info.value).startswith("key 'k': Refusing.second argument 'text' (position 0): cannot encode str")
        states = [(event.kind, event.state) for event in await store.events("k")]
    assert ("async", "first") in states
    assert not [s for s in states if s[1] == "second"]


async def test_store_run_of_an_agent_with_an_unset_init_false_field_raises_checkpoint_error(tmp_path: Path) -> None:
    """The spawn record cannot be made: CheckpointError naming the field, and no key is written."""
    async with open_store(tmp_path / "store.db") as store:
        with pytest.raises(CheckpointError) as info:
            await store.run(Unset(), key="k")
        assert "field 'later'" in str(info.value)


class Labelled:
    """A plain mixin before the generic base: not a base that parameterizes it."""


@attrs.define
class MixedPointHolder(Labelled, Holder[Point]):
    pass


def test_a_type_variable_is_found_past_bases_that_do_not_parameterize_it() -> None:
    resumed, _ = roundtrip(MixedPointHolder(Point(5, 6)))
    assert isinstance(resumed, MixedPointHolder)
    assert resumed.item == Point(5, 6)


def test_a_collection_of_class_values_names_the_subclass_instance_among_them() -> None:
    """Checked as a whole while all are the class itself; a subclass instance among them named by its index."""
    message = str(refusal(lambda: roundtrip(Typed(points=frozenset({Point3(3, 4, 5)})))))
    assert "Typed field 'points'[0]: a Point3 would come back as a Point" in message
    resumed, _ = roundtrip(Typed(points=frozenset({Point(1, 2), Point(3, 4)})))
    assert isinstance(resumed, Typed)
    assert resumed.points == frozenset({Point(1, 2), Point(3, 4)})


@attrs.define
class WideBox(Box[Point]):
    label: str = ""


def test_a_class_with_checked_fields_refuses_a_subclass_and_checks_a_mapping_by_key() -> None:
    """Box[Point] (its item is checked): a WideBox is refused; a mapping's items are checked by name."""
    message = str(refusal(lambda: roundtrip(Typed(boxed=WideBox(Point(1, 2), "x")))))
    assert "Typed field 'boxed': a WideBox would come back as a Box" in message
    message = str(refusal(lambda: roundtrip(Typed(boxed={"item": Point3(1, 2, 3)}))))  # type: ignore[arg-type]
    assert "Typed field 'boxed'['item']: a Point3 would come back as a Point" in message
    resumed, _ = roundtrip(Typed(boxed={"item": Point(1, 2)}))  # type: ignore[arg-type]
    assert isinstance(resumed, Typed)
    assert resumed.boxed == Box(Point(1, 2))


def test_an_instance_of_another_class_with_the_same_fields_is_refused_a_mapping_is_taken() -> None:
    message = str(refusal(lambda: roundtrip(PlainHolder(point=LookAlike(1, 2)))))  # type: ignore[arg-type]
    assert "PlainHolder field 'point': a LookAlike would come back as a Point: annotate it" in message
    mixed: list[Any] = [Point(1, 2), {"x": 3, "y": 4}]
    resumed, _ = roundtrip(PlainHolder(many=mixed))
    assert isinstance(resumed, PlainHolder)
    assert resumed.many == [Point(1, 2), Point(3, 4)]


def test_a_named_tuple_in_a_union_has_its_any_slots_checked() -> None:
    message = str(refusal(lambda: roundtrip(PairHolder(pair=Pair("a", (1, 2))))))
    assert "PairHolder field 'pair'.extra: a tuple would come back as another type" in message
    resumed, _ = roundtrip(PairHolder(pair=Pair("a", [1, 2])))
    assert isinstance(resumed, PairHolder)
    assert resumed.pair == Pair("a", [1, 2])
