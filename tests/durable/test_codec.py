"""The checkpoint codec: fields and transitions to bytes and back, or a CheckpointError naming what."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import math
import socket
import threading
import types
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypedDict, TypeVar, cast

import attrs
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from typing_extensions import Self

from hybrid import Agent, Next, RetryPolicy
from hybrid.durable._codec import Codec, durable
from hybrid.durable._errors import CheckpointError
from hybrid.durable._records import Checkpoint, StepKind

T = TypeVar("T")

# -- value types --------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Box:
    label: str
    sizes: tuple[int, ...]


class Money(msgspec.Struct):
    cents: int
    currency: str


class Pair(NamedTuple):
    a: int
    b: str


class Options(TypedDict):
    depth: int
    name: str


@attrs.define
class Secretive:
    _hidden: int = 0


class Failure(Exception):
    pass


@dataclasses.dataclass
class Tree:
    value: Any
    kids: list[Tree] = dataclasses.field(default_factory=list["Tree"])


# -- agents ---------------------------------------------------------------------------------


@attrs.define
class Checkout(Agent[str]):
    order: str
    charged: int = 0
    notes: list[str] = attrs.field(factory=list[str])

    def begin(self) -> Next[Self]:
        return Next.do_async(self.charge, 1250)

    async def charge(self, cents: int) -> Next[Self]:
        self.charged = cents
        return Next.do_async(self.ship)

    async def ship(self) -> Next[Self]:
        return Next.done("shipped")

    def count(self, text: str, *rest: int) -> Next[Self]:
        return Next.done(text)

    async def maybe(self, first: int, second: str = "x") -> Next[Self]:
        return Next.done(second)

    def give_up(self, error: Exception) -> Next[Self]:
        return Next.done("gave up")

    @staticmethod
    async def helper() -> Next[Any]:
        return Next.done()

    @classmethod
    async def factory(cls) -> Next[Any]:
        return Next.done()


async def module_function() -> Next[Any]:
    return Next.done()


@attrs.define
class Rich(Agent[Point]):
    when: datetime.datetime
    day: datetime.date
    span: datetime.timedelta
    ident: uuid.UUID
    amount: decimal.Decimal
    color: Color
    point: Point
    box: Box
    money: Money
    pair: Pair
    options: Options
    tags: frozenset[str]
    seen: set[int]
    coords: tuple[int, str]
    mode: Literal["fast", "slow"]
    maybe: int | None
    raw: bytes

    async def step(self, point: Point, when: datetime.datetime, *colors: Color) -> Next[Self]:
        return Next.done(point)


POST_INITS: list[int] = []


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.define
class Counter(Agent[int]):
    start: int = attrs.field(validator=_non_negative)
    _seen: int = 0
    total: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        POST_INITS.append(self.start)

    async def tick(self, by: int) -> Next[Self]:
        return Next.done(self.total + by)


@attrs.frozen
class Frozen(Agent[None]):
    n: int
    later: int = attrs.field(init=False, default=0)

    async def step(self) -> Next[Self]:
        return Next.done()


@attrs.define(kw_only=True)
class Keywords(Agent[None]):
    a: int
    b: str = "x"


@attrs.define(init=False)
class OwnInit(Agent[None]):
    n: int

    def __init__(self, text: str) -> None:
        self.__attrs_init__(int(text))  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]


@attrs.define
class Loose(Agent[Any]):
    data: Any = None
    items: list[Any] = attrs.field(factory=list[Any])
    thing: object = None
    table: dict[str, tuple[int, Any]] = attrs.field(factory=dict[str, tuple[int, Any]])

    async def take(self, value: Any, extra: dict[str, Any] | None = None) -> Next[Self]:
        return Next.done(value)


# As if `value` were not annotated (type checkers want the annotation; the codec must not).
del Loose.take.__annotations__["value"]


class Unparametrized(Agent):  # output Any: no Agent[T]
    pass


@attrs.define
class Plain(Unparametrized):
    n: int = 0


@attrs.define
class GenericBase(Agent[list[T]], Generic[T]):
    pass


@attrs.define
class Concrete(GenericBase[int]):
    pass


Tuple2 = tuple[int, Any]


@attrs.define
class Shapes(Agent[None]):
    tree: Tree | None = None
    maybe: list[Any] | dict[str, Tuple2] | None = None
    bounded: Annotated[list[Any], msgspec.Meta(max_length=3)] = attrs.field(factory=list[Any])


@attrs.define
class TwoArrays(Agent[None]):
    either: list[int] | tuple[str, ...] = ()


class NotAttrs(Agent[None]):
    pass


@attrs.define
class HoldsSocket(Agent[None]):
    conn: socket.socket | None = None


@attrs.define
class HoldsCallable(Agent[None]):
    fn: Callable[[], None] | None = None


@attrs.define
class HoldsSecretive(Agent[None]):
    inner: Secretive = attrs.field(factory=Secretive)


@durable
@attrs.define
class Bare(Agent[None]):
    pass


@durable(name="shop.Named", version=3)
@attrs.define
class Named(Agent[None]):
    pass


@attrs.define
class NamedChild(Named):
    pass


@durable(name="taken")
@attrs.define
class TakenOne(Agent[None]):
    pass


@durable(name="taken")
@attrs.define
class TakenTwo(Agent[None]):
    pass


class SubPolicy(RetryPolicy):
    pass


# Versions of one class ("evolving"), as successive releases would have it.


@durable(name="evolving")
@attrs.define
class Evolving(Agent[None]):
    order: str
    count: int = 0

    async def work(self, n: int) -> Next[Self]:
        return Next.done()

    async def gone(self) -> Next[Self]:
        return Next.done()

    def sync_work(self) -> Next[Self]:
        return Next.done()


@durable(name="evolving")
@attrs.define
class EvolvingRetyped(Agent[None]):
    order: str
    count: str = ""

    async def work(self, n: int) -> Next[Self]:
        return Next.done()


@durable(name="evolving")
@attrs.define
class EvolvingMoreFields(Agent[None]):
    order: str
    count: int = 0
    added: int = 0


@durable(name="evolving")
@attrs.define
class EvolvingFewerFields(Agent[None]):
    order: str


@durable(name="evolving")
@attrs.define
class EvolvingNewSignature(Agent[None]):
    order: str
    count: int = 0

    async def work(self, n: int, m: int) -> Next[Self]:
        return Next.done()

    async def sync_work(self) -> Next[Self]:
        return Next.done()


def upgrade_evolving(old: int, fields: dict[str, Any]) -> dict[str, Any]:
    UPGRADES.append((old, dict(fields)))
    fields["total"] = fields.pop("count")
    return fields


UPGRADES: list[tuple[int, dict[str, Any]]] = []


@durable(name="evolving", version=2, upgrade=upgrade_evolving)
@attrs.define
class EvolvingV2(Agent[None]):
    order: str
    total: int = 0

    async def work(self, n: int) -> Next[Self]:
        return Next.done()


@durable(name="evolving", version=2)
@attrs.define
class EvolvingV2WithoutUpgrade(Agent[None]):
    order: str
    count: int = 0


def bad_upgrade(old: int, fields: dict[str, Any]) -> Any:
    return [fields]


@durable(name="evolving", version=2, upgrade=bad_upgrade)
@attrs.define
class EvolvingBadUpgrade(Agent[None]):
    order: str
    count: int = 0


# -- helpers --------------------------------------------------------------------------------


def step(fn: Callable[..., Any], *args: Any) -> Next[Any]:
    """Next.do_async unchecked: the codec must refuse what a type checker would."""
    return Next.do_async(fn, *args)


def save(codec: Codec, agent: Agent[Any], nxt: Next[Any] | None, key: str = "k") -> Checkpoint:
    """The checkpoint the store would write for `agent` taking `nxt`."""
    kind, state, payload = codec.encode_step(key, agent, nxt)
    cls = type(agent)
    return Checkpoint(key, 1, 1, codec.register(cls), codec.version(cls), kind, state, payload)


def roundtrip(agent: Agent[Any], nxt: Next[Any] | None) -> tuple[Agent[Any], Next[Any] | None]:
    """Encode with one codec and decode with a fresh one (as after a restart)."""
    saved = save(Codec(), agent, nxt)
    fresh = Codec()
    fresh.register(type(agent))
    return fresh.decode_step(saved)


def resumed_by(cls: type[Agent[Any]], saved: Checkpoint) -> tuple[Agent[Any], Next[Any] | None]:
    """Decode `saved` with a codec that knows `cls` (another version of the class)."""
    codec = Codec()
    codec.register(cls)
    return codec.decode_step(saved)


def refusal(fn: Callable[[], object]) -> CheckpointError:
    """The CheckpointError `fn` raises."""
    with pytest.raises(CheckpointError) as info:
        fn()
    return info.value


# -- durable() -------------------------------------------------------------------------------


def test_undecorated_classes_are_named_by_module_and_qualname_at_version_1() -> None:
    """An undecorated class: name module.qualname, version 1."""
    codec = Codec()
    assert codec.register(Checkout) == f"{__name__}.Checkout"
    assert codec.version(Checkout) == 1


def test_durable_bare_and_with_options_set_name_and_version() -> None:
    """@durable bare keeps the default name; @durable(name=, version=) sets both."""
    codec = Codec()
    assert codec.register(Bare) == f"{__name__}.Bare"
    assert codec.register(Named) == "shop.Named"
    assert codec.version(Named) == 3


def test_durable_settings_are_not_inherited_by_subclasses() -> None:
    """A subclass of a decorated class is another class: default name, version 1."""
    codec = Codec()
    codec.register(Named)
    assert codec.register(NamedChild) == f"{__name__}.NamedChild"
    assert codec.version(NamedChild) == 1


def test_durable_refuses_bad_options() -> None:
    """Empty name, version below 1 or not an int, a non-callable upgrade, a non-class target."""
    with pytest.raises(ValueError, match="empty"):
        durable(name="")
    with pytest.raises(ValueError, match=">= 1"):
        durable(version=0)
    with pytest.raises(TypeError, match="int"):
        durable(version=True)
    with pytest.raises(TypeError, match="upgrade"):
        durable(upgrade=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="class"):
        durable(name="x")(module_function)  # type: ignore[type-var]


def test_registries_are_per_codec_not_global() -> None:
    """Two codecs: one knows the class, the other does not."""
    first, second = Codec(), Codec()
    name = first.register(Checkout)
    assert first.resolve(name) is Checkout
    error = refusal(lambda: second.resolve(name))
    assert "unknown agent class" in str(error)
    assert "open_store(..., agents=[...]) or run/spawn it once" in str(error)


# -- register ---------------------------------------------------------------------------------


def test_register_is_idempotent() -> None:
    """Registering a class twice returns the same name."""
    codec = Codec()
    assert codec.register(Checkout) == codec.register(Checkout)


def test_register_refuses_a_second_class_under_a_taken_name_naming_both() -> None:
    """Two classes, one name: CheckpointError naming both classes."""
    codec = Codec()
    codec.register(TakenOne)
    message = str(refusal(lambda: codec.register(TakenTwo)))
    assert "'taken'" in message
    assert "TakenOne" in message
    assert "TakenTwo" in message


def test_register_refuses_a_class_that_is_not_attrs() -> None:
    """Only attrs classes are durable: the error says to decorate with @attrs.define."""
    message = str(refusal(lambda: Codec().register(NotAttrs)))
    assert "NotAttrs" in message
    assert "@attrs.define" in message


def test_register_refuses_what_is_not_an_agent_class() -> None:
    """A plain attrs class is not an agent."""
    assert "Agent subclass" in str(refusal(lambda: Codec().register(Point)))  # type: ignore[arg-type]


def test_register_refuses_an_annotation_msgspec_cannot_handle_naming_the_field() -> None:
    """A socket field, a callable field: refused at register, naming the field and the type."""
    message = str(refusal(lambda: Codec().register(HoldsSocket)))
    assert "HoldsSocket field 'conn'" in message
    assert "socket" in message
    message = str(refusal(lambda: Codec().register(HoldsCallable)))
    assert "HoldsCallable field 'fn'" in message


def test_register_refuses_attrs_value_types_with_private_fields() -> None:
    """msgspec drops an attrs class's private fields when it encodes one: refused, not lost."""
    message = str(refusal(lambda: Codec().register(HoldsSecretive)))
    assert "HoldsSecretive field 'inner'" in message
    assert "_hidden" in message


def test_register_refuses_an_annotation_that_cannot_be_resolved() -> None:
    """A type defined in a function cannot be found by name: refused, naming the field."""

    class LocalThing:
        pass

    @attrs.define
    class Local(Agent[None]):
        thing: LocalThing | None = None

    message = str(refusal(lambda: Codec().register(Local)))
    assert "field 'thing'" in message
    assert "LocalThing" in message
    assert LocalThing.__name__ == "LocalThing"


# -- steps: what comes back -------------------------------------------------------------------------


def test_begin_step_saves_fields_only_and_resumes_with_none() -> None:
    """nxt None: BEGIN, no state name; decode gives the agent and None (begin() runs again)."""
    codec = Codec()
    kind, state, _ = codec.encode_step("k", Checkout("o-17", notes=["gift"]), None)
    assert (kind, state) == (StepKind.BEGIN, "")
    agent, nxt = roundtrip(Checkout("o-17", notes=["gift"]), None)
    assert agent == Checkout("o-17", notes=["gift"])
    assert nxt is None


def test_events_step_resumes_in_actor_mode() -> None:
    """Next.events(): EVENTS, no state name; resumed as Next.events()."""
    kind, state, _ = Codec().encode_step("k", Checkout("o"), Next.events())
    assert (kind, state) == (StepKind.EVENTS, "")
    agent, nxt = roundtrip(Checkout("o", 5), Next.events())
    assert agent == Checkout("o", 5)
    assert nxt is not None
    assert nxt.kind == "events"


def test_async_step_resumes_the_same_method_of_the_new_instance_with_its_arguments() -> None:
    """do_async(self.charge, 1250): ASYNC "charge"; resumed as do_async(new.charge, 1250)."""
    agent = Checkout("o-17")
    kind, state, _ = Codec().encode_step("o-17", agent, Next.do_async(agent.charge, 1250))
    assert (kind, state) == (StepKind.ASYNC, "charge")
    resumed, nxt = roundtrip(agent, Next.do_async(agent.charge, 1250))
    assert resumed == agent
    assert resumed is not agent
    assert nxt is not None
    assert nxt.kind == "do_async"
    assert nxt._fn == resumed.charge  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    assert nxt._fn.__self__ is resumed
    assert nxt._args == (1250,)


def test_sync_step_with_star_args_resumes_each_extra_argument_typed() -> None:
    """do_sync(self.count, "t", 1, 2, 3): SYNC "count"; *rest takes its element type."""
    agent = Checkout("o")
    resumed, nxt = roundtrip(agent, Next.do_sync(agent.count, "t", 1, 2, 3))
    assert nxt is not None
    assert nxt.kind == "do_sync"
    assert nxt.state_name == "count"
    assert nxt._args == ("t", 1, 2, 3)
    assert nxt._fn.__self__ is resumed


def test_a_parameter_default_may_be_left_out() -> None:
    """Fewer arguments than parameters, when the rest have defaults."""
    agent = Checkout("o")
    _, nxt = roundtrip(agent, Next.do_async(agent.maybe, 1))
    assert nxt is not None
    assert nxt._args == (1,)


def test_fields_and_arguments_come_back_as_their_annotated_types() -> None:
    """Dates, UUID, Decimal, enum, attrs, dataclass, Struct, NamedTuple, TypedDict, sets, tuples, Literal..."""
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    agent = Rich(
        when=when,
        day=datetime.date(2024, 5, 1),
        span=datetime.timedelta(seconds=90),
        ident=uuid.UUID(int=7),
        amount=decimal.Decimal("12.50"),
        color=Color.BLUE,
        point=Point(1, 2),
        box=Box("b", (1, 2)),
        money=Money(1250, "EUR"),
        pair=Pair(1, "a"),
        options={"depth": 2, "name": "n"},
        tags=frozenset({"a", "b"}),
        seen={1, 2},
        coords=(3, "c"),
        mode="slow",
        maybe=None,
        raw=b"\x00\x01",
    )
    resumed, nxt = roundtrip(agent, Next.do_async(agent.step, Point(3, 4), when, Color.RED, Color.BLUE))
    assert resumed == agent
    assert isinstance(resumed, Rich)
    assert type(resumed.pair) is Pair
    assert type(resumed.tags) is frozenset
    assert type(resumed.seen) is set
    assert type(resumed.box.sizes) is tuple
    assert nxt is not None
    assert nxt._args == (Point(3, 4), when, Color.RED, Color.BLUE)
    assert type(nxt._args[0]) is Point


def test_init_false_fields_private_fields_and_post_init_on_rebuild() -> None:
    """Rebuilt with cls(**init fields): __attrs_post_init__ runs once; init=False fields are set after."""
    agent = Counter(3, 4)
    agent.total = 10
    POST_INITS.clear()
    resumed, _ = roundtrip(agent, Next.do_async(agent.tick, 1))
    assert isinstance(resumed, Counter)
    assert (resumed.start, resumed._seen, resumed.total) == (3, 4, 10)
    assert POST_INITS == [3]


def test_validators_run_on_rebuild() -> None:
    """A field value refused by its validator (here, an upgraded one) fails the decode."""
    codec = Codec()
    saved = save(codec, Counter(3), None)
    tampered = attrs.evolve(saved, payload=saved.payload.replace(b"\xa5start\x03", b"\xa5start\xff"))
    error = refusal(lambda: resumed_by(Counter, tampered))
    assert "must be >= 0" in str(error)
    assert isinstance(error.__cause__, ValueError)


def test_frozen_keyword_only_and_attrs_init_classes_are_rebuilt() -> None:
    """@attrs.frozen (init=False field set after), kw_only fields, @attrs.define(init=False)."""
    frozen = Frozen(2)
    object.__setattr__(frozen, "later", 5)
    resumed, nxt = roundtrip(frozen, Next.do_async(frozen.step))
    assert isinstance(resumed, Frozen)
    assert (resumed.n, resumed.later) == (2, 5)
    assert nxt is not None
    assert nxt._fn.__self__ is resumed
    assert roundtrip(Keywords(a=1, b="y"), None)[0] == Keywords(a=1, b="y")
    own = roundtrip(OwnInit("7"), None)[0]
    assert isinstance(own, OwnInit)
    assert own.n == 7


def test_any_slots_take_json_like_builtins() -> None:
    """None, bool, int, float, str, bytes, lists and str-keyed dicts of them, in Any slots."""
    value: dict[str, Any] = {"a": [1, 2.5, "x", None, True, b"b", {"n": []}]}
    agent = Loose(data=value, items=[1, "x"], thing=[1], table={"k": (1, {"x": 1})})
    resumed, nxt = roundtrip(agent, Next.do_async(agent.take, [1, {"a": None}]))
    assert resumed == agent
    assert nxt is not None
    assert nxt._args == ([1, {"a": None}],)


# -- steps: what is refused -------------------------------------------------------------------------


def test_a_state_must_be_a_method_of_the_agent_itself() -> None:
    """Lambda, closure, partial, other object's method, static/class method, function: refused, named."""
    agent = Checkout("o")
    other = Checkout("p")

    async def closure() -> Next[Any]:
        return Next.done()

    states: list[tuple[Callable[..., Any], str]] = [
        (lambda: None, "<lambda>"),
        (closure, "closure"),
        (functools.partial(agent.charge, 1), "functools.partial"),
        (other.charge, "Checkout.charge (a method of a Checkout)"),
        (agent.helper, "Checkout.helper"),
        (agent.factory, "classmethod"),
        (module_function, "module_function"),
    ]
    for fn, named in states:
        message = str(refusal(functools.partial(Codec().encode_step, "o-17", agent, step(fn))))
        assert message.startswith("key 'o-17': Checkout state ")
        assert named in message
        assert "method of the agent" in message


def test_a_value_of_the_wrong_type_is_refused_at_the_transition() -> None:
    """A field annotated int holding a str, an argument of the wrong type: refused at encode."""
    agent = Checkout("o")
    agent.charged = "lots"  # type: ignore[assignment]
    message = str(refusal(lambda: Codec().encode_step("o-17", agent, None)))
    assert "key 'o-17': Checkout field 'charged'" in message
    assert "Expected `int`, got `str`" in message
    good = Checkout("o")
    message = str(refusal(lambda: Codec().encode_step("o-17", good, step(good.charge, "12"))))
    assert "key 'o-17': Checkout.charge argument 'cents' (position 0)" in message
    assert "Expected `int`, got `str`" in message


def test_unencodable_values_are_refused_naming_the_exact_argument_or_field() -> None:
    """Socket, lock, lambda, generator: CheckpointError naming key, class and field or argument."""
    agent = Checkout("o")
    with socket.socket() as sock:
        message = str(refusal(lambda: Codec().encode_step("o-17", agent, step(agent.charge, sock))))
    assert message.startswith("key 'o-17': Checkout.charge argument 'cents' (position 0): cannot encode socket")
    loose = Loose(data={"ok": [1, threading.Lock()]})
    message = str(refusal(lambda: Codec().encode_step("k", loose, None)))
    assert message.startswith("key 'k': Loose field 'data'['ok'][1]: cannot encode lock")
    gen = (i for i in range(3))
    loose = Loose()
    message = str(refusal(lambda: Codec().encode_step("k", loose, Next.do_async(loose.take, 1, {"g": gen}))))
    assert "Loose.take argument 'extra' (position 1)['g']: cannot encode generator" in message
    loose = Loose(items=[lambda: None])
    assert "Loose field 'items'[0]: cannot encode function" in str(
        refusal(lambda: Codec().encode_step("k", loose, None))
    )


def test_ints_beyond_64_bits_are_refused() -> None:
    """msgspec's 64-bit limit: a CheckpointError naming the field or argument."""
    agent = Checkout("o", charged=2**70)
    message = str(refusal(lambda: Codec().encode_step("k", agent, None)))
    assert "Checkout field 'charged': cannot encode int" in message
    good = Checkout("o")
    message = str(refusal(lambda: Codec().encode_step("k", good, Next.do_async(good.charge, -(2**64)))))
    assert "argument 'cents' (position 0): cannot encode int" in message


def test_values_that_would_change_type_in_any_slots_are_refused() -> None:
    """A tuple, set, attrs instance or dataclass in an Any slot would come back as another type."""
    cases: list[tuple[Loose, str]] = [
        (Loose(data=(1, 2)), "Loose field 'data': a tuple"),
        (Loose(thing={1}), "Loose field 'thing': a set"),
        (Loose(items=[1, Point(1, 2)]), "Loose field 'items'[1]: a Point"),
        (Loose(data={"a": Box("b", ())}), "Loose field 'data'['a']: a Box"),
        (Loose(data={1: "int key"}), "Loose field 'data'[1]: a dict key 1"),
        (Loose(table={"k": (1, (2,))}), "Loose field 'table'['k'][1]: a tuple"),
        (Loose(data=Color.RED), "Loose field 'data': a Color"),
    ]
    for agent, expected in cases:
        message = str(refusal(functools.partial(Codec().encode_step, "k", agent, None)))
        assert expected in message
        assert "annotate it" in message
    agent = Loose()
    message = str(refusal(lambda: Codec().encode_step("k", agent, Next.do_async(agent.take, (1, 2)))))
    assert "Loose.take argument 'value' (position 0): a tuple" in message


def test_perform_and_endings_are_not_steps() -> None:
    """Next.perform(...) and Next.done() are refused by encode_step."""

    class Performer:
        async def perform(self, agent: Any) -> Next[Any]:
            return Next.done()

    agent = Checkout("o")
    assert "Next.perform" in str(refusal(lambda: Codec().encode_step("k", agent, Next.perform(Performer()))))
    assert "not a step" in str(refusal(lambda: Codec().encode_step("k", agent, Next.done(1))))


def test_arguments_that_do_not_fit_the_signature_are_refused_at_encode() -> None:
    """Too many or too few arguments for the state's parameters."""
    agent = Checkout("o")
    assert "takes charge(cents)" in str(refusal(lambda: Codec().encode_step("k", agent, step(agent.charge))))
    message = str(refusal(lambda: Codec().encode_step("k", agent, step(agent.maybe, 1, "a", "b"))))
    assert "not 3 argument(s)" in message


# -- modifiers ------------------------------------------------------------------------------------


def test_modifiers_are_saved_and_resumed() -> None:
    """.retry(RetryPolicy), .timeout(s) and .fallback(self.method) come back on the resumed Next."""
    agent = Checkout("o")
    policy = RetryPolicy(attempts=4, initial=0.5, factor=3, max_delay=9, jitter=0.1, retry_on=(Failure, OSError))
    nxt = Next.do_async(agent.charge, 5).retry(policy).timeout(math.inf).fallback(agent.give_up)
    resumed, back = roundtrip(agent, nxt)
    assert back is not None
    mods = back._mods
    assert mods is not None
    assert mods.retry == policy
    assert mods.retry is not None
    assert mods.retry.retry_on == (Failure, OSError)
    assert mods.timeout == math.inf
    assert isinstance(mods.fallback, types.MethodType)
    assert mods.fallback.__func__ is Checkout.give_up
    assert mods.fallback.__self__ is resumed


def test_modifiers_that_cannot_be_saved_are_refused() -> None:
    """A lambda fallback, a RetryPolicy subclass, a retry_on type defined in a function."""

    class LocalError(Exception):
        pass

    agent = Checkout("o")
    step = Next.do_async(agent.charge, 5)
    message = str(refusal(lambda: Codec().encode_step("k", agent, step.fallback(lambda error: Next.done()))))
    assert "key 'k': Checkout fallback " in message
    assert "<lambda>" in message
    message = str(refusal(lambda: Codec().encode_step("k", agent, step.retry(SubPolicy()))))
    assert "SubPolicy" in message
    message = str(refusal(lambda: Codec().encode_step("k", agent, step.retry(RetryPolicy(retry_on=LocalError)))))
    assert "LocalError" in message


# -- decoding what no longer fits ---------------------------------------------------------------------


def test_decoding_an_unknown_class_is_refused() -> None:
    """A checkpoint naming a class this codec does not know."""
    saved = save(Codec(), Checkout("o"), None)
    message = str(refusal(lambda: Codec().decode_step(saved)))
    assert message.startswith("key 'k': unknown agent class")


def test_decoding_a_changed_field_type_is_refused_naming_the_field() -> None:
    """count was an int, now a str: refused with msgspec's message, the original chained."""
    saved = save(Codec(), Evolving("o", 3), None)
    error = refusal(lambda: resumed_by(EvolvingRetyped, saved))
    assert "key 'k': EvolvingRetyped field 'count': Expected `str`, got `int`" in str(error)
    assert isinstance(error.__cause__, msgspec.ValidationError)


def test_decoding_missing_or_extra_fields_is_refused() -> None:
    """A field the checkpoint lacks, or one the class no longer has: never a silent default or drop."""
    saved = save(Codec(), Evolving("o", 3), None)
    message = str(refusal(lambda: resumed_by(EvolvingMoreFields, saved)))
    assert "EvolvingMoreFields fields: Object missing required field `added`" in message
    message = str(refusal(lambda: resumed_by(EvolvingFewerFields, saved)))
    assert "EvolvingFewerFields fields: Object contains unknown field `count`" in message


def test_decoding_a_state_that_no_longer_exists_is_refused() -> None:
    """The checkpoint resumes a method the class no longer has (or a dunder)."""
    agent = Evolving("o")
    saved = save(Codec(), agent, Next.do_async(agent.gone))
    message = str(refusal(lambda: resumed_by(EvolvingRetyped, saved)))
    assert "key 'k': EvolvingRetyped.gone" in message
    assert "no longer a method" in message
    dunder = attrs.evolve(save(Codec(), agent, Next.do_async(agent.work, 1)), state="__init__")
    assert "no longer a method" in str(refusal(lambda: resumed_by(Evolving, dunder)))


def test_decoding_arguments_that_no_longer_fit_the_signature_is_refused() -> None:
    """work(n) became work(n, m): the saved single argument no longer fits."""
    agent = Evolving("o")
    saved = save(Codec(), agent, Next.do_async(agent.work, 1))
    message = str(refusal(lambda: resumed_by(EvolvingNewSignature, saved)))
    assert "EvolvingNewSignature.work: the checkpoint has 1 argument(s), which no longer fit work(n, m)" in message


def test_decoding_an_argument_of_a_changed_type_is_refused_naming_it() -> None:
    """The saved argument does not decode under the parameter's new annotation."""

    agent = Checkout("o")
    saved = save(Codec(), agent, Next.do_sync(agent.count, "text"))
    tampered = attrs.evolve(saved, state="charge")
    error = refusal(lambda: resumed_by(Checkout, tampered))
    assert "key 'k': Checkout.charge argument 'cents' (position 0): Expected `int`, got `str`" in str(error)
    assert isinstance(error.__cause__, msgspec.ValidationError)


def test_decoding_a_sync_state_that_became_async_is_refused() -> None:
    """A SYNC checkpoint of a method that is now async def."""
    agent = Evolving("o")
    saved = save(Codec(), agent, Next.do_sync(agent.sync_work))
    assert "now an async def" in str(refusal(lambda: resumed_by(EvolvingNewSignature, saved)))


def test_decoding_corrupted_bytes_is_refused() -> None:
    """Truncated, garbage, empty payloads; a kind without a state naming one."""
    agent = Checkout("o")
    saved = save(Codec(), agent, Next.do_async(agent.charge, 5))
    for payload in (saved.payload[:-3], b"\xc1\xc1\xc1", b"", b"\x92\x01\x80"):
        error = refusal(functools.partial(resumed_by, Checkout, attrs.evolve(saved, payload=payload)))
        assert str(error).startswith("key 'k': Checkout")
    message = str(refusal(lambda: resumed_by(Checkout, attrs.evolve(saved, payload=b"\x94\x02\x80\xc0\x05"))))
    assert "unknown checkpoint format" in message
    assert "names no state" in str(refusal(lambda: resumed_by(Checkout, attrs.evolve(saved, kind=StepKind.BEGIN))))


def test_decoding_a_checkpoint_of_a_newer_version_is_refused() -> None:
    """Written by version 2, read by version 1 of the class."""
    saved = save(Codec(), EvolvingV2("o", 3), None)
    message = str(refusal(lambda: resumed_by(Evolving, saved)))
    assert "written by version 2" in message
    assert "newer than this one (1)" in message


def test_upgrade_receives_builtins_of_an_older_version_and_returns_current_fields() -> None:
    """Version 1's count becomes version 2's total through the upgrade function."""
    agent = Evolving("o", 3)
    saved = save(Codec(), agent, Next.do_async(agent.work, 7))
    UPGRADES.clear()
    resumed, nxt = resumed_by(EvolvingV2, saved)
    assert UPGRADES == [(1, {"order": "o", "count": 3})]
    assert resumed == EvolvingV2("o", 3)
    assert nxt is not None
    assert nxt._args == (7,)


def test_older_version_without_upgrade_must_fit_as_it_is() -> None:
    """No upgrade function: the older checkpoint is decoded as it is, strictly."""
    saved = save(Codec(), Evolving("o", 3), None)
    assert resumed_by(EvolvingV2WithoutUpgrade, saved)[0] == EvolvingV2WithoutUpgrade("o", 3)


def test_an_upgrade_that_returns_no_dict_is_refused() -> None:
    """upgrade must return the fields as a dict."""
    saved = save(Codec(), Evolving("o", 3), None)
    assert "must return the fields as a dict" in str(refusal(lambda: resumed_by(EvolvingBadUpgrade, saved)))


# -- outputs ------------------------------------------------------------------------------------------


def test_outputs_come_back_as_the_agent_type_parameter() -> None:
    """Agent[Point]: a Point; Agent[str]: a str; generic bases are followed (list[int])."""
    codec = Codec()
    data = codec.encode_output("k", Rich, Point(1, 2))
    assert Codec().decode_output("k", Rich, data) == Point(1, 2)
    assert codec.decode_output("k", Checkout, codec.encode_output("k", Checkout, "shipped")) == "shipped"
    assert codec.decode_output("k", Concrete, codec.encode_output("k", Concrete, [1, 2])) == [1, 2]
    assert "Concrete output[0]: Expected `int`" in str(refusal(lambda: codec.encode_output("k", Concrete, ["x"])))


def test_an_output_of_the_wrong_type_is_refused() -> None:
    """Agent[str] finishing with an int; an unencodable output."""
    codec = Codec()
    message = str(refusal(lambda: codec.encode_output("k", Checkout, 3)))
    assert "key 'k': Checkout output: Expected `str`, got `int`" in message
    assert "cannot encode lock" in str(refusal(lambda: codec.encode_output("k", Rich, threading.Lock())))


def test_an_unparametrized_agent_output_takes_json_like_builtins_only() -> None:
    """No Agent[T]: Any, so a dict comes back, a tuple is refused."""
    codec = Codec()
    assert codec.decode_output("k", Plain, codec.encode_output("k", Plain, {"a": [1]})) == {"a": [1]}
    assert "output: a tuple" in str(refusal(lambda: codec.encode_output("k", Plain, (1, 2))))


def test_decoding_an_output_that_no_longer_fits_is_refused() -> None:
    """Saved as a str, read as a Point."""
    data = Codec().encode_output("k", Checkout, "shipped")
    error = refusal(lambda: Codec().decode_output("k", Rich, data))
    assert "key 'k': Rich output" in str(error)
    assert isinstance(error.__cause__, msgspec.ValidationError)


# -- handing a resumed run to another instance ----------------------------------------------------------


def test_copy_fields_and_rebind_move_a_resumed_step_to_another_instance() -> None:
    """copy_fields sets every field (init=False too); rebind binds the state and fallback to the target."""
    codec = Codec()
    agent = Counter(3, 4)
    agent.total = 9
    nxt = Next.do_async(agent.tick, 2).timeout(5)
    decoded, back = codec.decode_step(save(codec, agent, nxt))
    target = Counter(0)
    codec.copy_fields(decoded, target)
    assert (target.start, target._seen, target.total) == (3, 4, 9)
    assert back is not None
    rebound = codec.rebind(back, target)
    assert rebound._fn.__self__ is target
    assert rebound._args == (2,)
    assert rebound._mods is not None
    assert rebound._mods.timeout == 5
    checkout = Checkout("o")
    step = Next.do_async(checkout.charge, 1).fallback(checkout.give_up).retry(RetryPolicy())
    other = Checkout("p")
    moved = codec.rebind(step, other)
    assert moved._mods is not None
    assert moved._mods.fallback == other.give_up
    assert codec.rebind(Next.events(), other).kind == "events"
    assert "cannot copy" in str(refusal(lambda: codec.copy_fields(agent, checkout)))


# -- a property over generated values -----------------------------------------------------------------


@attrs.define
class Sample(Agent[None]):
    number: int
    ratio: float
    text: str
    blob: bytes
    items: list[int]
    pair: tuple[int, str]
    table: dict[str, float]
    tags: frozenset[str]
    when: datetime.datetime | None
    color: Color
    point: Point
    anything: Any

    async def step(self, numbers: tuple[int, ...], nested: dict[str, list[str]], *rest: Point) -> Next[Self]:
        return Next.done()


texts = st.text(st.characters(codec="utf-8"), max_size=20)  # no lone surrogates: not UTF-8
ints = st.integers(-(2**63), 2**64 - 1)
floats = st.floats(allow_nan=False)
json_like = st.recursive(
    st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)
points = st.builds(Point, ints, ints)
samples = st.builds(
    Sample,
    number=ints,
    ratio=floats,
    text=texts,
    blob=st.binary(max_size=16),
    items=st.lists(ints, max_size=5),
    pair=st.tuples(ints, texts),
    table=st.dictionaries(texts, floats, max_size=4),
    tags=st.frozensets(texts, max_size=4),
    when=st.none() | st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    color=st.sampled_from(Color),
    point=points,
    anything=json_like,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    agent=samples,
    numbers=st.lists(ints, max_size=4).map(tuple),
    nested=st.dictionaries(texts, st.lists(texts, max_size=3), max_size=3),
    rest=st.lists(points, max_size=3),
)
def test_generated_fields_and_arguments_round_trip_as_themselves(
    agent: Sample, numbers: tuple[int, ...], nested: dict[str, list[str]], rest: list[Point]
) -> None:
    """Any generated values of the annotated types decode back equal, of the same types."""
    nxt = Next.do_async(agent.step, numbers, nested, *rest)
    resumed, back = roundtrip(agent, nxt)
    assert isinstance(resumed, Sample)
    assert resumed == agent
    assert type(resumed.pair) is tuple
    assert type(resumed.tags) is frozenset
    assert back is not None
    assert back._args == (numbers, nested, *rest)
    assert type(back._args[0]) is tuple


def test_any_slots_inside_recursive_union_and_annotated_types_are_checked() -> None:
    """A recursive dataclass, a union of containers, an Annotated list: their Any slots are walked."""
    good = Shapes(
        tree=Tree(1, [Tree("x", [Tree(None)])]),
        maybe={"k": (1, [2])},
        bounded=[{"a": 1}],
    )
    assert roundtrip(good, None)[0] == good
    assert roundtrip(Shapes(maybe=[1, "x"]), None)[0] == Shapes(maybe=[1, "x"])
    cases: list[tuple[Shapes, str]] = [
        (Shapes(tree=Tree(1, [Tree(2, [Tree((3,))])])), "Shapes field 'tree'.kids[0].kids[0].value: a tuple"),
        (Shapes(maybe=[1, {2}]), "Shapes field 'maybe'[1]: a set"),
        (Shapes(maybe={"k": (1, (2,))}), "Shapes field 'maybe'['k'][1]: a tuple"),
        (Shapes(bounded=[(1,)]), "Shapes field 'bounded'[0]: a tuple"),
    ]
    for agent, expected in cases:
        assert expected in str(refusal(functools.partial(Codec().encode_step, "k", agent, None)))


def test_register_refuses_a_union_msgspec_cannot_decode() -> None:
    """Two array-like types in one union: refused at register with msgspec's reason."""
    message = str(refusal(lambda: Codec().register(TwoArrays)))
    assert "TwoArrays field 'either'" in message
    assert "more than one array-like" in message


def test_unencodable_values_inside_attrs_dataclass_and_struct_values_are_named_by_path() -> None:
    """The culprit is found inside a value's own fields."""
    lock = threading.Lock()
    agent = Rich(
        when=datetime.datetime(2024, 1, 1),
        day=datetime.date(2024, 1, 1),
        span=datetime.timedelta(),
        ident=uuid.UUID(int=1),
        amount=decimal.Decimal(1),
        color=Color.RED,
        point=Point(1, lock),  # type: ignore[arg-type]
        box=Box("b", ()),
        money=Money(1, "EUR"),
        pair=Pair(1, "a"),
        options={"depth": 1, "name": "n"},
        tags=frozenset(),
        seen=set(),
        coords=(1, "c"),
        mode="fast",
        maybe=None,
        raw=b"",
    )
    assert "Rich field 'point'.y: cannot encode lock" in str(refusal(lambda: Codec().encode_step("k", agent, None)))
    agent.point = Point(1, 2)
    agent.box = Box(lock, ())  # type: ignore[arg-type]
    assert "Rich field 'box'.label: cannot encode lock" in str(refusal(lambda: Codec().encode_step("k", agent, None)))
    agent.box = Box("b", ())
    agent.money = Money(1, lock)  # type: ignore[arg-type]
    message = str(refusal(lambda: Codec().encode_step("k", agent, None)))
    assert "Rich field 'money'.currency: cannot encode lock" in message


def test_many_star_arguments_round_trip_and_a_wrong_one_is_named() -> None:
    """Twenty *rest arguments (a longer array header); a str among them is named by position."""
    codec = Codec()
    agent = Checkout("o")
    many = tuple(range(20))
    decoded, nxt = codec.decode_step(save(codec, agent, Next.do_sync(agent.count, "t", *many)))
    assert nxt is not None
    assert nxt._args == ("t", *many)
    assert nxt._fn.__self__ is decoded
    message = str(refusal(lambda: codec.encode_step("k", agent, step(agent.count, "t", 1, "x"))))
    assert "Checkout.count argument *rest (position 2): Expected `int`, got `str`" in message


def test_the_same_codec_encodes_a_state_again_from_its_cache() -> None:
    """The second transition to a state reuses its plan: same bytes, same checks."""
    codec = Codec()
    agent = Checkout("o")
    first = codec.encode_step("k", agent, Next.do_async(agent.charge, 1))
    assert codec.encode_step("k", agent, Next.do_async(agent.charge, 1)) == first
    other = Checkout("p")
    message = str(refusal(lambda: codec.encode_step("k", agent, Next.do_async(other.charge, 1))))
    assert "a method of a Checkout" in message


def test_an_upgrade_that_raises_is_refused_with_its_error_chained() -> None:
    """The upgrade function's error becomes a CheckpointError naming the version."""
    saved = save(Codec(), EvolvingFewerFields("o"), None)
    error = refusal(lambda: resumed_by(EvolvingV2, saved))
    assert "upgrade from version 1 raised KeyError('count')" in str(error)
    assert isinstance(error.__cause__, KeyError)


def test_durable_refuses_a_name_that_is_not_a_str() -> None:
    """durable(name=3): TypeError."""
    with pytest.raises(TypeError, match="str"):
        durable(name=3)  # type: ignore[call-overload]


def test_rebind_refuses_what_is_not_a_step() -> None:
    """rebind takes the transitions decode_step returns."""
    codec = Codec()
    assert "cannot rebind" in str(refusal(lambda: codec.rebind(Next.done(1), Checkout("o"))))


@attrs.define
class BadState(Agent[None]):
    async def listen(self, conn: socket.socket) -> Next[Self]:
        return Next.done()


def test_a_state_parameter_msgspec_cannot_handle_is_refused_at_its_first_transition() -> None:
    """The state's annotations are checked when it is first used, naming key, class, state and parameter."""
    agent = BadState()
    with socket.socket() as sock:
        message = str(refusal(lambda: Codec().encode_step("k", agent, Next.do_async(agent.listen, sock))))
    assert message.startswith("key 'k': BadState.listen argument 'conn': type socket")


# -- the remaining corners: signatures, annotations, tampered checkpoints ---------------------------


def tampered(saved: Checkpoint, index: int, value: Any) -> Checkpoint:
    """`saved` with item `index` of its payload array replaced, as a damaged or hostile store would."""
    items: list[Any] = msgspec.msgpack.decode(saved.payload)
    items[index] = value
    return attrs.evolve(saved, payload=msgspec.msgpack.encode(items))


@attrs.define
class Signatures(Agent[None]):
    async def spread(*numbers: Any) -> Next[Any]:  # no self: the bound agent is numbers[0]
        return Next.done()

    async def flagged(self, n: int, *, loud: bool = False, **extra: Any) -> Next[Self]:
        return Next.done()


def test_a_state_with_only_star_args_takes_every_argument_as_its_element_type() -> None:
    """``def spread(*numbers: Any)``: no self to skip; each saved argument is checked as an Any slot."""
    agent = Signatures()
    resumed, back = roundtrip(agent, Next.do_async(agent.spread, 1, ["x"]))
    assert back is not None
    assert back._args == (1, ["x"])
    assert back._fn.__self__ is resumed
    message = str(refusal(lambda: Codec().encode_step("k", agent, step(agent.spread, 1, (2,)))))
    assert "Signatures.spread argument *numbers (position 1): a tuple" in message


def test_keyword_only_and_star_star_parameters_take_no_positional_argument() -> None:
    """``flagged(self, n, *, loud, **extra)`` takes exactly one positional argument."""
    agent = Signatures()
    assert roundtrip(agent, Next.do_async(agent.flagged, 1))[1] is not None
    message = str(refusal(lambda: Codec().encode_step("k", agent, step(agent.flagged, 1, True))))
    assert "Signatures.flagged takes flagged(n), not 2 argument(s)" in message


# Fields given by `these`, as attrs allows: the class body annotates neither of them.
@attrs.define(these={"loose": attrs.field(default=None), "typed": attrs.field(type=int, default=0)})
class Unannotated(Agent[None]):
    pass


def test_fields_without_annotations_are_any_or_their_attrs_type() -> None:
    """``attrs.field()``: an Any slot; ``attrs.field(type=int)``: an int, though not annotated."""
    make = cast("Callable[..., Unannotated]", Unannotated)  # type checkers see no fields: `these` is runtime only
    agent = make(loose=[1, {"a": None}], typed=3)
    assert roundtrip(agent, None)[0] == agent
    loose = make(loose=(1,))
    assert "Unannotated field 'loose': a tuple" in str(refusal(lambda: Codec().encode_step("k", loose, None)))
    typed = make(typed="3")
    message = str(refusal(lambda: Codec().encode_step("k", typed, None)))
    assert "Unannotated field 'typed': Expected `int`, got `str`" in message


class Mixin:
    pass


@attrs.define
class Mixed(Mixin, Agent[int]):
    pass


@attrs.define
class Wrapper(Agent[T], Generic[T]):
    pass


@attrs.define
class IntWrapper(Wrapper[int]):
    pass


def test_the_output_type_is_found_past_a_mixin_and_through_a_type_variable() -> None:
    """``Mixed(Mixin, Agent[int])`` and ``IntWrapper(Wrapper[int])`` with ``Wrapper(Agent[T])``: int."""
    codec = Codec()
    for cls in (Mixed, IntWrapper):
        assert codec.decode_output("k", cls, codec.encode_output("k", cls, 7)) == 7
        message = str(refusal(functools.partial(codec.encode_output, "k", cls, "x")))
        assert f"{cls.__qualname__} output: Expected `int`, got `str`" in message
    assert "Wrapper output: a tuple" in str(refusal(lambda: codec.encode_output("k", Wrapper, (1,))))


class Extras(TypedDict, total=False):
    note: Any
    count: int


@attrs.define
class Corners(Agent[None]):
    noted: Annotated[list[Any], msgspec.Meta(description="notes")] | None = None
    either: int | Any = 0
    counts: dict[Any, int] = attrs.field(factory=dict[Any, int])
    extras: Extras = attrs.field(factory=Extras)


def test_any_slots_under_metadata_unions_with_any_any_keys_and_partial_typed_dicts_are_checked() -> None:
    """Annotated with Meta, ``int | Any``, ``dict[Any, int]``, a total=False TypedDict: walked, named."""
    good = Corners(noted=[{"a": [1]}], either=[1], counts={"a": 1}, extras={"note": [2], "count": 1})
    assert roundtrip(good, None)[0] == good
    assert roundtrip(Corners(extras={"count": 1}), None)[0] == Corners(extras={"count": 1})
    cases: list[tuple[Corners, str]] = [
        (Corners(noted=[(1,)]), "Corners field 'noted'[0]: a tuple"),
        (Corners(either=(1,)), "Corners field 'either': a tuple"),
        (Corners(counts={1: 2}), "Corners field 'counts'[1]: a dict key 1 that is not a str"),
        (Corners(extras={"note": {3}}), "Corners field 'extras'['note']: a set"),
    ]
    for agent, expected in cases:
        assert expected in str(refusal(functools.partial(Codec().encode_step, "k", agent, None)))


def test_a_value_that_would_change_type_deep_in_an_any_list_is_named_by_its_path() -> None:
    """A tuple inside a list inside a field annotated Any."""
    message = str(refusal(lambda: Codec().encode_step("k", Loose(data=[1, [2, (3,)]]), None)))
    assert "Loose field 'data'[1][1]: a tuple" in message


def test_a_cyclic_value_is_refused_naming_a_path_into_the_cycle() -> None:
    """A list holding itself: a CheckpointError (the search stops at depth 32), never a crash."""
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    message = str(refusal(lambda: Codec().encode_step("k", Loose(data=cyclic), None)))
    assert f"Loose field 'data'{'[0]' * 32}: cannot encode list" in message


@attrs.define
class LoudCheckout(Checkout):
    async def charge(self, cents: int) -> Next[Self]:
        return await super().charge(cents + 1)


def test_a_parent_method_a_subclass_overrides_is_refused_as_a_state() -> None:
    """``super().charge``: resuming it by name would run the override instead."""
    agent = LoudCheckout("o")
    parent = super(LoudCheckout, agent).charge
    message = str(refusal(lambda: Codec().encode_step("k", agent, Next.do_async(parent, 1))))
    assert "key 'k': LoudCheckout state Checkout.charge (a method of a LoudCheckout)" in message
    assert "must be a method of the agent itself" in message


def test_a_checkpoint_of_an_unknown_kind_is_refused() -> None:
    """A kind this codec does not know (a newer release's, or a damaged row)."""
    agent = Checkout("o")
    saved = attrs.evolve(save(Codec(), agent, Next.do_async(agent.charge, 5)), kind=cast(StepKind, "later"))
    assert "key 'k': Checkout: unknown checkpoint kind 'later'" in str(refusal(lambda: resumed_by(Checkout, saved)))


def test_a_non_minimal_array32_header_is_read() -> None:
    """msgpack allows array 32 for four items: the arguments are counted from it all the same."""
    agent = Checkout("o", 3)
    saved = save(Codec(), agent, Next.do_async(agent.charge, 5))
    assert saved.payload[0] == 0x94
    widened = attrs.evolve(saved, payload=b"\xdd\x00\x00\x00\x04" + saved.payload[1:])
    resumed, back = resumed_by(Checkout, widened)
    assert resumed == agent
    assert back is not None
    assert back._args == (5,)


def test_modifiers_set_alone_come_back_alone() -> None:
    """A retry without timeout, a fallback without retry: nothing else appears on the resumed Next."""
    agent = Checkout("o")
    _, back = roundtrip(agent, Next.do_async(agent.charge, 5).retry(RetryPolicy(attempts=2)))
    assert back is not None
    assert back._mods is not None
    assert back._mods.retry == RetryPolicy(attempts=2)
    assert (back._mods.timeout, back._mods.fallback) == (None, None)
    resumed, back = roundtrip(agent, Next.do_async(agent.charge, 5).fallback(agent.give_up))
    assert isinstance(resumed, Checkout)
    assert back is not None
    assert back._mods is not None
    assert back._mods.fallback == resumed.give_up
    assert (back._mods.timeout, back._mods.retry) == (None, None)


def test_damaged_modifiers_are_refused_naming_what_is_wrong() -> None:
    """Not an array, an invalid policy or timeout, a fallback or retry_on type that no longer exists."""
    agent = Checkout("o")
    saved = save(Codec(), agent, Next.do_async(agent.charge, 5).retry(RetryPolicy()).timeout(3))
    fine: list[Any] = msgspec.msgpack.decode(saved.payload)[2]
    retry: list[Any] = fine[1]
    assert resumed_by(Checkout, tampered(saved, 2, fine))[1] is not None
    where = "key 'k': Checkout.charge modifiers"
    cases: list[tuple[Any, str]] = [
        ("bad", f"{where}: Expected `array | null`, got `str`"),
        ([None, [0, *retry[1:]], None], f"{where}: the retry policy is not valid: attempts"),
        ([None, None, -1.0], f"{where}: the timeout is not valid: timeout must be a number of seconds > 0"),
        (["nope", None, None], f"{where}: the fallback 'nope' is no longer a method of Checkout"),
        ([None, [*retry[:5], ["builtins:len"]], None], f"{where}: retry_on type 'builtins:len' is not an exception"),
        ([None, [*retry[:5], ["no_such_module:Error"]], None], "retry_on type 'no_such_module:Error' is not"),
        ([None, [*retry[:5], ["builtins:"]], None], "retry_on type 'builtins:' is not"),
    ]
    for mods, expected in cases:
        assert expected in str(refusal(functools.partial(resumed_by, Checkout, tampered(saved, 2, mods))))


def test_an_older_checkpoint_that_is_not_a_payload_is_refused_before_its_upgrade() -> None:
    """Bytes that are not msgpack, or msgpack that is not a step array with a fields map."""
    saved = save(Codec(), Evolving("o", 3), None)
    UPGRADES.clear()
    message = str(refusal(lambda: resumed_by(EvolvingV2, attrs.evolve(saved, payload=b"\xc1"))))
    assert message.startswith("key 'k': EvolvingV2: the checkpoint is not a valid payload (")
    for data in ({"order": "o"}, [1, ["o", 3], None], [1]):
        damaged = attrs.evolve(saved, payload=msgspec.msgpack.encode(data))
        message = str(refusal(functools.partial(resumed_by, EvolvingV2, damaged)))
        assert message == "key 'k': EvolvingV2: the checkpoint is not a valid payload"
    assert UPGRADES == []


def huge_upgrade(old: int, fields: dict[str, Any]) -> dict[str, Any]:
    return {"order": fields["order"], "total": 2**64}


@durable(name="evolving", version=2, upgrade=huge_upgrade)
@attrs.define
class EvolvingHugeUpgrade(Agent[None]):
    order: str
    total: int = 0


def test_an_upgrade_that_returns_unencodable_fields_is_refused() -> None:
    """An int beyond 64 bits from the upgrade function: named as its fault."""
    saved = save(Codec(), Evolving("o", 3), None)
    error = refusal(lambda: resumed_by(EvolvingHugeUpgrade, saved))
    assert "EvolvingHugeUpgrade: upgrade from version 1 returned fields that cannot be encoded" in str(error)
    assert error.__cause__ is not None


def test_rebind_refuses_a_fallback_that_is_not_a_method() -> None:
    """A decoded step's fallback is always a method; a lambda one is not a decoded step."""
    agent = Checkout("o")
    nxt = Next.do_async(agent.charge, 1).fallback(lambda error: Next.done("x"))
    assert "Checkout: cannot rebind the fallback" in str(refusal(lambda: Codec().rebind(nxt, Checkout("p"))))


def test_rebind_keeps_a_sync_step_without_modifiers_as_it_is() -> None:
    """A decoded do_sync step with no modifiers: the same kind and arguments, bound to the target, no modifiers."""
    codec = Codec()
    agent = Checkout("o")
    _, back = codec.decode_step(save(codec, agent, Next.do_sync(agent.count, "t", 1)))
    assert back is not None
    target = Checkout("p")
    rebound = codec.rebind(back, target)
    assert rebound.kind == "do_sync"
    assert rebound._fn.__self__ is target
    assert rebound._args == ("t", 1)
    assert rebound._mods is None
