"""Adversarial tests of the saved-shape check of nested value classes (and of damaged fields maps).

Two promises are attacked here. A checkpoint saved and resumed with the same,
unchanged classes resumes, equal to what was saved, whatever shape holds the
classes (generics, constraints, unions, tagged Structs, TypedDicts, named tuples,
sets, keyed dicts, slotted or keyword-only dataclasses, attrs aliases and
converters, recursion, empty classes, large collections, ``*args``, outputs,
upgrades). A nested class that lost, gained or renamed a field, or a damaged
payload, is a `CheckpointError` naming the key and where: never another
exception, never a silent default or drop.

Every bug this pass found is fixed; each test that found one stays, as its
regression test.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import random
from collections.abc import Callable
from typing import Annotated, Any, Generic, NamedTuple, NewType, TypedDict, TypeVar

import attrs
import msgspec
import pytest
from typing_extensions import Self

from hybrid import Agent, Next
from hybrid.durable import CheckpointError, durable
from hybrid.durable._codec import Codec
from hybrid.durable._records import Checkpoint, StepKind

T = TypeVar("T")
R = TypeVar("R")

ADVICE = "The class changed since the checkpoint was saved"
ENC = msgspec.msgpack.encode


# -- value classes ----------------------------------------------------------------------------


@attrs.frozen
class Item:
    sku: str
    qty: int


@attrs.frozen
class ItemGained:
    sku: str
    qty: int
    price: int = 0


@attrs.frozen
class ItemLost:
    sku: str


@attrs.frozen
class ItemRenamed:  # qty renamed count
    sku: str
    count: int = 0


@attrs.define
class Box(Generic[T]):
    item: T
    note: str = ""


@attrs.define
class ItemBox(Box[Item]):
    """Generic through a subclass: ``item`` is an Item."""


@attrs.define
class ItemBoxGained(Box[ItemGained]):
    pass


@dataclasses.dataclass
class DBox(Generic[T]):
    item: T
    more: list[T] = dataclasses.field(default_factory=list["T"])


ItemId = NewType("ItemId", Item)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Bag(TypedDict, total=False):
    main: Item
    spare: list[Item]


class BagGained(TypedDict, total=False):
    main: ItemGained
    spare: list[ItemGained]


class Slot(NamedTuple):
    name: str
    item: Item = Item("d", 0)
    extra: tuple[Item, ...] = ()


class SlotGained(NamedTuple):
    name: str
    item: ItemGained = ItemGained("d", 0)
    extra: tuple[ItemGained, ...] = ()


class Wrap(msgspec.Struct, rename="camel"):
    main_item: Item
    other_items: list[Item] = msgspec.field(default_factory=list[Item])


class WrapGained(msgspec.Struct, rename="camel"):
    main_item: ItemGained
    other_items: list[ItemGained] = msgspec.field(default_factory=list[ItemGained])


class Cart(msgspec.Struct, tag_field="kind", tag="cart"):
    items: list[Item]


class Parcel(msgspec.Struct, tag_field="kind", tag="parcel", rename="camel"):
    main_item: Item
    weight: int = 0


class ParcelGained(msgspec.Struct, tag_field="kind", tag="parcel", rename="camel"):
    main_item: ItemGained
    weight: int = 0


class Line(msgspec.Struct, array_like=True, tag=3):
    n: int
    item: Item


class Lines(msgspec.Struct, array_like=True, tag=4):
    items: list[Item]


class LinesGained(msgspec.Struct, array_like=True, tag=4):
    items: list[ItemGained]


class Row(msgspec.Struct, array_like=True):
    """Untagged and array-like: in a union with a dataclass (one array-like, one map-like)."""

    n: int
    item: Item


@dataclasses.dataclass(slots=True, kw_only=True)
class Slotted:
    item: Item
    tags: list[str] = dataclasses.field(default_factory=list[str])
    flag: bool = dataclasses.field(default=False, init=False)
    cache: list[Item] = dataclasses.field(init=False, default_factory=list[Item])
    total: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.total = self.item.qty


def _strip(value: str) -> str:
    return value.strip()


@attrs.define
class Fancy:
    name: str = attrs.field(converter=_strip, default="")
    count: int = attrs.field(alias="n", default=0)
    extra: Item | None = attrs.field(kw_only=True, default=None)
    seen: list[Item] = attrs.field(init=False, factory=list[Item])
    length: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.length = len(self.name)


@attrs.define
class Folder:
    name: str
    files: list[File] = attrs.field(factory=list["File"])
    subs: list[Folder] = attrs.field(factory=list["Folder"])


@attrs.define
class File:
    name: str
    link: Folder | None = None


@attrs.define
class Marker:
    pass


@dataclasses.dataclass
class Nothing:
    pass


@attrs.define
class Loose:
    data: Any = None
    other: object = None


@attrs.define
class Node:
    """The kids come before the item: a walk that goes into them first reaches the item last."""

    kids: list[Node] = attrs.field(factory=list["Node"])
    item: Item | None = None


@attrs.define
class NodeGained:
    kids: list[NodeGained] = attrs.field(factory=list["NodeGained"])
    item: ItemGained | None = None


@dataclasses.dataclass
class Partial:
    """Optional fields as msgspec spells them: UNSET is left out when encoded."""

    sku: str
    note: str | msgspec.UnsetType = msgspec.UNSET


@dataclasses.dataclass(init=False)
class Custom:
    """Its own __init__ leaves ``unit`` at the class default (not in the instance's __dict__)."""

    qty: int
    unit: str = "piece"

    def __init__(self, qty: int) -> None:
        self.qty = qty


@attrs.define
class Late:
    name: str
    seen: list[str] = attrs.field(init=False, factory=list[str])  # attrs's __init__ always sets it


@attrs.define
class LateGained:  # Late with another init=False field, with a factory
    name: str
    seen: list[str] = attrs.field(init=False, factory=list[str])
    hits: list[str] = attrs.field(init=False, factory=list[str])


@attrs.define
class LateLost:  # Late without seen
    name: str


@attrs.define
class LateUnset:
    name: str
    cached: int = attrs.field(init=False)  # no default: unset until set


@durable(name="adv.unset")
@attrs.define
class Unsets(Agent[None]):
    late: LateUnset

    def begin(self) -> Next[Self]:
        return Next.done()


class Key(msgspec.Struct, frozen=True):
    a: int


# -- agents -------------------------------------------------------------------------------------


@durable(name="adv.shapes")
@attrs.define
class Shapes(Agent[None]):
    boxed: Box[Item] | None = None
    subboxed: ItemBox | None = None
    dboxed: DBox[Item] | None = None
    nested: Box[Box[Item]] | None = None
    boxed_optional: Box[Item | None] | None = None
    newtype: ItemId | None = None
    limited: Annotated[list[Item], msgspec.Meta(max_length=5)] = attrs.field(factory=list[Item])
    described: Annotated[Item, msgspec.Meta(description="an item")] | None = None
    either: Item | int | str | list[Item] | None = None
    bag: Bag | None = None
    slot: Slot | None = None
    sets: frozenset[Item] = frozenset[Item]()
    mutable_set: set[Item] = attrs.field(factory=set[Item])
    many: tuple[Item, ...] = ()
    by_int: dict[int, Item] = attrs.field(factory=dict[int, Item])
    by_color: dict[Color, list[Item]] = attrs.field(factory=dict[Color, list[Item]])
    by_level: dict[Level, Item] = attrs.field(factory=dict[Level, Item])
    by_pair: dict[tuple[int, str], Item] = attrs.field(factory=dict[tuple[int, str], Item])
    by_frozen: dict[frozenset[int], Item] = attrs.field(factory=dict[frozenset[int], Item])
    wrap: Wrap | None = None
    tagged: Cart | Parcel | None = None
    lines: Line | Lines | None = None
    row_or_item: Row | Item | None = None
    slotted: Slotted | None = None
    fancy: Fancy | None = None
    folder: Folder | None = None
    marks: list[Marker] = attrs.field(factory=list[Marker])
    nothing: Nothing | None = None
    loose: Loose | None = None

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.shapes", version=2, upgrade=lambda old, fields: fields)
@attrs.define
class ShapesV2(Shapes):
    """Shapes at version 2: its checkpoints go through the untyped decode and re-encode of an upgrade."""


def _full_shapes() -> Shapes:
    root = Folder("root")
    root.files.append(File("a.txt", Folder("linked", [File("b.txt")])))
    root.subs.append(Folder("sub", [File("c.txt", Folder("deep"))], [Folder("leaf")]))
    fancy = Fancy("  padded  ", n=4, extra=Item("e", 1))
    fancy.seen.append(Item("s", 2))
    slotted = Slotted(item=Item("q", 7), tags=["t"])
    slotted.flag = True
    slotted.cache.append(Item("c", 1))
    return Shapes(
        boxed=Box(Item("b", 1), "n"),
        subboxed=ItemBox(Item("sb", 2)),
        dboxed=DBox(Item("d", 3), [Item("d2", 4)]),
        nested=Box(Box(Item("nn", 5))),
        boxed_optional=Box(None, "empty"),
        newtype=ItemId(Item("id", 6)),
        limited=[Item("l", i) for i in range(5)],
        described=Item("desc", 7),
        either=[Item("e1", 8), Item("e2", 9)],
        bag={"main": Item("m", 1), "spare": [Item("s", 2)]},
        slot=Slot("s", Item("si", 3)),
        sets=frozenset({Item("f1", 1), Item("f2", 2)}),
        mutable_set={Item("ms", 1)},
        many=(Item("t1", 1), Item("t2", 2)),
        by_int={1: Item("i1", 1), -7: Item("i2", 2)},
        by_color={Color.RED: [Item("r", 1)], Color.BLUE: []},
        by_level={Level.HIGH: Item("h", 2)},
        by_pair={(1, "a"): Item("p", 1)},
        by_frozen={frozenset({1, 2}): Item("fz", 1)},
        wrap=Wrap(Item("w", 1), [Item("w2", 2)]),
        tagged=Parcel(Item("pc", 1), weight=3),
        lines=Lines([Item("ln", 1)]),
        row_or_item=Row(1, Item("row", 1)),
        slotted=slotted,
        fancy=fancy,
        folder=root,
        marks=[Marker(), Marker()],
        nothing=Nothing(),
        loose=Loose({"k": [1, "x", None]}, 2.5),
    )


@durable(name="adv.args")
@attrs.define
class Args(Agent[None]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, Item("a", 1))

    async def work(self, first: Item, *rest: Box[Item]) -> Next[Self]:
        return Next.done()

    def take(self, *items: Item) -> Next[Self]:
        return Next.done()


@durable(name="adv.args")
@attrs.define
class ArgsGained(Agent[None]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, ItemGained("a", 1))

    async def work(self, first: ItemGained, *rest: Box[ItemGained]) -> Next[Self]:
        return Next.done()

    def take(self, *items: ItemGained) -> Next[Self]:
        return Next.done()


@durable(name="adv.one")
@attrs.define
class One(Agent[None]):
    """One field of a parameter type: its ``Gained`` and ``Lost`` twins hold the changed classes."""

    box: Box[Item] | None = None
    bag: Bag | None = None
    slot: Slot | None = None
    sets: frozenset[Item] = frozenset[Item]()
    by_int: dict[int, Item] = attrs.field(factory=dict[int, Item])
    wrap: Wrap | None = None
    tagged: Cart | Parcel | None = None
    lines: Line | Lines | None = None
    subboxed: ItemBox | None = None
    slot_or_item: Slot | Item | None = None
    late: Late | None = None

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.one")
@attrs.define
class OneGained(Agent[None]):
    box: Box[ItemGained] | None = None
    bag: BagGained | None = None
    slot: SlotGained | None = None
    sets: frozenset[ItemGained] = frozenset[ItemGained]()
    by_int: dict[int, ItemGained] = attrs.field(factory=dict[int, ItemGained])
    wrap: WrapGained | None = None
    tagged: Cart | ParcelGained | None = None
    lines: Line | LinesGained | None = None
    subboxed: ItemBoxGained | None = None
    slot_or_item: SlotGained | ItemGained | None = None
    late: LateGained | None = None

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.one")
@attrs.define
class OneRenamed(Agent[None]):
    box: Box[ItemRenamed] | None = None
    bag: Bag | None = None
    slot: Slot | None = None
    sets: frozenset[Item] = frozenset[Item]()
    by_int: dict[int, ItemLost] = attrs.field(factory=dict[int, ItemLost])
    wrap: Wrap | None = None
    tagged: Cart | Parcel | None = None
    lines: Line | Lines | None = None
    subboxed: ItemBox | None = None
    slot_or_item: Slot | Item | None = None
    late: LateLost | None = None

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.folder")
@attrs.define
class Files(Agent[None]):
    folder: Folder

    def begin(self) -> Next[Self]:
        return Next.done()


@attrs.define
class FileGained:
    name: str
    link: FolderGained | None = None
    size: int = 0


@attrs.define
class FolderGained:
    name: str
    files: list[FileGained] = attrs.field(factory=list["FileGained"])
    subs: list[FolderGained] = attrs.field(factory=list["FolderGained"])


@durable(name="adv.folder")
@attrs.define
class FilesGained(Agent[None]):
    folder: FolderGained

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.manual")
@attrs.define(init=False)
class Manual(Agent[None]):
    """``@attrs.define(init=False)``: resumed through ``__attrs_init__``."""

    items: list[Item]
    first: Item | None = attrs.field(init=False, default=None)

    def __init__(self, *items: Item) -> None:
        self.__attrs_init__(list(items))  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
        self.first = items[0] if items else None

    def begin(self) -> Next[Self]:
        return Next.done()


@attrs.define
class Generic1(Agent[None], Generic[T]):
    held: T
    more: list[T] = attrs.field(factory=list["T"])


@durable(name="adv.generic")
@attrs.define
class ItemGeneric(Generic1[Item]):
    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.generic")
@attrs.define
class ItemGenericGained(Generic1[ItemGained]):
    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.big")
@attrs.define
class Big(Agent[None]):
    items: list[Item] = attrs.field(factory=list[Item])
    by_sku: dict[str, Box[Item]] = attrs.field(factory=dict[str, Box[Item]])

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.big")
@attrs.define
class BigGained(Agent[None]):
    items: list[Item] = attrs.field(factory=list[Item])
    by_sku: dict[str, Box[ItemGained]] = attrs.field(factory=dict[str, Box[ItemGained]])

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.out")
@attrs.define
class Out(Agent[dict[str, list[Box[Item]]]]):
    def begin(self) -> Next[Self]:
        return Next.done({})


@durable(name="adv.out")
@attrs.define
class OutGained(Agent[dict[str, list[Box[ItemGained]]]]):
    def begin(self) -> Next[Self]:
        return Next.done({})


@durable(name="adv.out2")
@attrs.define
class OutTagged(Agent[Cart | Parcel | None]):
    def begin(self) -> Next[Self]:
        return Next.done(None)


@durable(name="adv.item")
@attrs.define
class Single(Agent[Item]):
    item: Item
    items: list[Item] = attrs.field(factory=list[Item])

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, [Item("a", 1)])

    async def work(self, batch: list[Item]) -> Next[Self]:
        return Next.done(self.item)


@durable(name="adv.item", version=2, upgrade=lambda old, fields: fields)
@attrs.define
class SingleV2(Agent[Item]):
    item: Item
    items: list[Item] = attrs.field(factory=list[Item])

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, [Item("a", 1)])

    async def work(self, batch: list[Item]) -> Next[Self]:
        return Next.done(self.item)


def _rename_qty(old: int, fields: dict[str, Any]) -> dict[str, Any]:
    for saved in [fields["item"], *fields["items"]]:
        saved["count"] = saved.pop("qty")
    return fields


@durable(name="adv.item", version=2, upgrade=_rename_qty)
@attrs.define
class SingleRenamed(Agent[ItemRenamed]):
    item: ItemRenamed
    items: list[ItemRenamed] = attrs.field(factory=list[ItemRenamed])

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, [Item("a", 1)])

    async def work(self, batch: list[Item]) -> Next[Self]:  # the argument keeps the old class
        return Next.done(self.item)


def _instance(old: int, fields: dict[str, Any]) -> dict[str, Any]:
    fields["item"] = ItemGained(fields["item"]["sku"], fields["item"]["qty"], 9)
    return fields


@durable(name="adv.item", version=2, upgrade=_instance)
@attrs.define
class SingleInstance(Agent[ItemGained]):
    item: ItemGained
    items: list[ItemGained] = attrs.field(factory=list[ItemGained])

    def begin(self) -> Next[Self]:
        return Next.done(self.item)


@durable(name="adv.item", version=2, upgrade=lambda old, fields: fields)
@attrs.define
class SingleForgot(Agent[ItemRenamed]):
    item: ItemRenamed
    items: list[ItemRenamed] = attrs.field(factory=list[ItemRenamed])

    def begin(self) -> Next[Self]:
        return Next.done(self.item)


@durable(name="adv.e")
@attrs.define
class Accented(Agent[None]):
    éclair: Item  # noqa: PLC2401 - a field whose name starts with a non-ASCII letter (a valid identifier)

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.e")
@attrs.define
class AccentedGained(Agent[None]):
    éclair: ItemGained  # noqa: PLC2401 - as in Accented

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.deep")
@attrs.define
class Deep(Agent[None]):
    node: Node

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.deep")
@attrs.define
class DeepGained(Agent[None]):
    node: NodeGained

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.partial")
@attrs.define
class Partials(Agent[None]):
    part: Partial

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.custom")
@attrs.define
class Customs(Agent[None]):
    custom: Custom

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.raw")
@attrs.define
class Raws(Agent[None]):
    blob: msgspec.Raw
    item: Item

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.keyed")
@attrs.define
class Keyed(Agent[None]):
    counts: dict[Item, int] = attrs.field(factory=dict[Item, int])

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.keyarg")
@attrs.define
class KeyedArg(Agent[None]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.count, {Key(1): 1})

    async def count(self, counts: dict[Key, int], by_item: dict[Item, int] | None = None) -> Next[Self]:
        return Next.done()


@durable(name="adv.dict-held")
@attrs.define
class DictHeld(Agent[None]):
    """Fields annotated with classes; the tests put dicts in them (msgspec takes a mapping for a class)."""

    item: Item | None = None
    gained: ItemGained | None = None

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.wide")
@attrs.define
class Wide(Agent[None]):
    """Seventeen fields (a map16 fields map), one holding an Item."""

    item: Item = Item("w", 1)
    f01: int = 0
    f02: int = 0
    f03: int = 0
    f04: int = 0
    f05: int = 0
    f06: int = 0
    f07: int = 0
    f08: int = 0
    f09: int = 0
    f10: int = 0
    f11: int = 0
    f12: int = 0
    f13: int = 0
    f14: int = 0
    f15: int = 0
    f16: int = 0

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="adv.pair")
@attrs.define
class Pair2(Agent[None]):
    a: int = 0
    item: Item = Item("p", 1)

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, [Item("x", 1)], Box(Item("y", 2)))

    async def work(self, batch: list[Item], box: Box[Item]) -> Next[Self]:
        return Next.done()


@durable(name="adv.pair", version=2, upgrade=lambda old, fields: fields)
@attrs.define
class Pair2V2(Agent[None]):
    a: int = 0
    item: Item = Item("p", 1)

    def begin(self) -> Next[Self]:
        return Next.done()


# -- helpers -------------------------------------------------------------------------------------


def save(agent: Agent[Any], nxt: Next[Any] | None = None) -> Checkpoint:
    codec = Codec()
    kind, state, payload = codec.encode_step("k", agent, nxt)
    cls = type(agent)
    return Checkpoint("k", 1, 1, codec.register(cls), codec.version(cls), kind, state, payload)


def resume(cls: type[Agent[Any]], saved: Checkpoint) -> tuple[Agent[Any], Next[Any] | None]:
    codec = Codec()
    codec.register(cls)
    return codec.decode_step(saved)


def refusal(fn: Callable[[], object]) -> str:
    with pytest.raises(CheckpointError) as info:
        fn()
    return str(info.value)


def damaged(saved: Checkpoint, payload: bytes) -> Checkpoint:
    return attrs.evolve(saved, payload=payload)


def fixmap(entries: list[tuple[Any, bytes]]) -> bytes:
    """A fixmap of the entries, each value already encoded (keys encoded here)."""
    return bytes([0x80 | len(entries)]) + b"".join(ENC(k) + v for k, v in entries)


def map16(entries: list[tuple[Any, bytes]]) -> bytes:
    return b"\xde" + len(entries).to_bytes(2, "big") + b"".join(ENC(k) + v for k, v in entries)


def map32(entries: list[tuple[Any, bytes]]) -> bytes:
    return b"\xdf" + len(entries).to_bytes(4, "big") + b"".join(ENC(k) + v for k, v in entries)


def step(fields: bytes, *rest: bytes, header: str = "fix") -> bytes:
    """A step payload ``[1, fields, *rest]`` (`rest` already encoded: modifiers, then arguments)."""
    count = 2 + len(rest)
    head = {
        "fix": bytes([0x90 | count]),
        "16": b"\xdc" + count.to_bytes(2, "big"),
        "32": b"\xdd" + count.to_bytes(4, "big"),
    }[header]
    return head + ENC(1) + fields + b"".join(rest)


def _deeper(frames: int, fn: Callable[[], R]) -> R:
    """``fn()`` called `frames` frames deeper than here."""
    return fn() if frames == 0 else _deeper(frames - 1, fn)


# == 1. no false refusal: unchanged classes resume as saved ======================================


def test_every_shape_holding_unchanged_classes_resumes_equal() -> None:
    agent = _full_shapes()
    resumed, nxt = resume(Shapes, save(agent))
    assert nxt is None
    assert resumed == agent


def test_every_shape_holding_unchanged_classes_resumes_equal_through_an_identity_upgrade() -> None:
    agent = _full_shapes()
    resumed, _ = resume(ShapesV2, save(agent))
    assert isinstance(resumed, ShapesV2)
    assert attrs.asdict(resumed, recurse=False) == attrs.asdict(agent, recurse=False)


def test_every_shape_left_empty_or_none_resumes_equal() -> None:
    agent = Shapes()
    resumed, _ = resume(Shapes, save(agent))
    assert resumed == agent


@pytest.mark.parametrize(
    "either",
    [None, 7, "text", Item("i", 1), [], [Item("a", 1), Item("b", 2)]],
    ids=["none", "int", "str", "class", "empty-list", "list"],
)
def test_each_branch_of_a_union_with_none_int_str_and_list_resumes(either: Any) -> None:
    agent = Shapes(either=either)
    resumed, _ = resume(Shapes, save(agent))
    assert isinstance(resumed, Shapes)
    assert resumed.either == either


@pytest.mark.parametrize(
    "value",
    [Cart([Item("c", 1)]), Parcel(Item("p", 2), weight=1), Line(1, Item("l", 1)), Lines([Item("x", 1)])],
    ids=["map-custom-tag-field", "map-camel", "array-int-tag", "array-int-tag-list"],
)
def test_each_tagged_struct_of_a_union_resumes(value: Any) -> None:
    agent = Shapes(tagged=value) if isinstance(value, Cart | Parcel) else Shapes(lines=value)
    resumed, _ = resume(Shapes, save(agent))
    assert resumed == agent


def test_an_untagged_array_like_struct_in_a_union_with_a_class_resumes_either_way() -> None:
    for value in (Row(1, Item("r", 1)), Item("i", 2)):
        agent = Shapes(row_or_item=value)
        resumed, _ = resume(Shapes, save(agent))
        assert resumed == agent


def test_init_false_fields_set_after_init_resume_with_their_values() -> None:
    """Slotted dataclass and attrs class: init=False fields with defaults, factories or set in post-init."""
    agent = _full_shapes()
    resumed, _ = resume(Shapes, save(agent))
    assert isinstance(resumed, Shapes)
    assert resumed.slotted is not None and resumed.fancy is not None
    assert (resumed.slotted.flag, resumed.slotted.cache, resumed.slotted.total) == (True, [Item("c", 1)], 7)
    assert (resumed.fancy.name, resumed.fancy.count, resumed.fancy.seen, resumed.fancy.length) == (
        "padded",
        4,
        [Item("s", 2)],
        6,
    )


def test_a_named_tuple_left_at_its_defaults_resumes() -> None:
    agent = Shapes(slot=Slot("only-name"))
    resumed, _ = resume(Shapes, save(agent))
    assert isinstance(resumed, Shapes)
    assert resumed.slot == Slot("only-name", Item("d", 0), ())


def test_ten_thousand_nested_classes_resume() -> None:
    agent = Big(
        items=[Item(f"s{i}", i) for i in range(10_000)],
        by_sku={f"k{i}": Box(Item(f"b{i}", i)) for i in range(10_000)},
    )
    resumed, _ = resume(Big, save(agent))
    assert resumed == agent


def test_state_arguments_through_star_args_resume() -> None:
    agent = Args()
    saved = save(agent, Next.do_async(agent.work, Item("f", 1), Box(Item("r1", 2)), Box(Item("r2", 3), "n")))
    _, nxt = resume(Args, saved)
    assert nxt is not None
    assert nxt.args == (Item("f", 1), Box(Item("r1", 2)), Box(Item("r2", 3), "n"))


def test_a_sync_state_taking_only_star_args_resumes_with_none_and_with_many() -> None:
    agent = Args()
    for items in ((), tuple(Item(f"i{n}", n) for n in range(20))):
        saved = save(agent, Next.do_sync(agent.take, *items))
        assert saved.kind is StepKind.SYNC
        _, nxt = resume(Args, saved)
        assert nxt is not None
        assert nxt.args == items


def test_an_attrs_init_false_agent_holding_classes_resumes() -> None:
    agent = Manual(Item("a", 1), Item("b", 2))
    resumed, _ = resume(Manual, save(agent))
    assert isinstance(resumed, Manual)
    assert resumed.items == [Item("a", 1), Item("b", 2)]
    assert resumed.first == Item("a", 1)


def test_a_generic_agent_base_whose_fields_are_a_class_resumes() -> None:
    agent = ItemGeneric(Item("h", 1), [Item("m", 2)])
    resumed, _ = resume(ItemGeneric, save(agent))
    assert resumed == agent


def test_mutually_recursive_classes_resume() -> None:
    agent = Files(_full_shapes().folder or Folder("none"))
    resumed, _ = resume(Files, save(agent))
    assert resumed == agent


def test_outputs_of_nested_generic_classes_round_trip() -> None:
    value = {"a": [Box(Item("x", 1)), Box(Item("y", 2), "n")], "b": []}
    codec = Codec()
    data = codec.encode_output("k", Out, value)
    assert codec.decode_output("k", Out, data) == value


@pytest.mark.parametrize("value", [None, Cart([Item("c", 1)]), Parcel(Item("p", 1))], ids=["none", "cart", "parcel"])
def test_outputs_of_tagged_structs_round_trip(value: Cart | Parcel | None) -> None:
    codec = Codec()
    assert codec.decode_output("k", OutTagged, codec.encode_output("k", OutTagged, value)) == value


def test_an_identity_upgrade_resumes_nested_classes_and_arguments() -> None:
    agent = Single(Item("x", 1), [Item("y", 2)])
    saved = save(agent, Next.do_async(agent.work, [Item("z", 3)]))
    resumed, nxt = resume(SingleV2, saved)
    assert isinstance(resumed, SingleV2)
    assert (resumed.item, resumed.items) == (Item("x", 1), [Item("y", 2)])
    assert nxt is not None
    assert nxt.args == ([Item("z", 3)],)


def test_an_upgrade_that_renames_a_nested_field_resumes() -> None:
    saved = save(Single(Item("x", 1), [Item("y", 2)]))
    resumed, _ = resume(SingleRenamed, saved)
    assert isinstance(resumed, SingleRenamed)
    assert (resumed.item, resumed.items) == (ItemRenamed("x", 1), [ItemRenamed("y", 2)])


def test_a_payload_with_non_minimal_msgpack_headers_resumes() -> None:
    """Another msgpack writer may use array16/map32 headers and str8 keys for short items."""
    agent = Pair2(3, Item("p", 2))
    saved = save(agent, Next.do_async(agent.work, [Item("x", 1)], Box(Item("y", 2))))
    item = map32([("sku", b"\xd9\x01p"), ("qty", ENC(2))])
    fields = map16([("a", ENC(3)), ("item", item)])
    payload = step(fields, ENC(None), ENC([Item("x", 1)]), ENC(Box(Item("y", 2))), header="16")
    resumed, nxt = resume(Pair2, damaged(saved, payload))
    assert resumed == agent
    assert nxt is not None
    assert nxt.args == ([Item("x", 1)], Box(Item("y", 2)))


# == 2. a changed nested class is a CheckpointError naming the key and where =====================

CHANGED: list[tuple[str, dict[str, Any], str, str]] = [
    ("generic", {"box": Box(Item("x", 1))}, "field 'box'.item", "price"),
    ("generic-subclass", {"subboxed": ItemBox(Item("x", 1))}, "field 'subboxed'.item", "price"),
    ("typeddict", {"bag": {"spare": [Item("x", 1)]}}, "field 'bag'.spare[0]", "price"),
    ("namedtuple-default", {"slot": Slot("n")}, "field 'slot'[1]", "price"),
    ("frozenset", {"sets": frozenset({Item("x", 1)})}, "field 'sets'[0]", "price"),
    ("int-keys", {"by_int": {5: Item("x", 1)}}, "field 'by_int'[5]", "price"),
    ("camel-struct", {"wrap": Wrap(Item("x", 1))}, "field 'wrap'.main_item", "price"),
    ("tagged-map", {"tagged": Parcel(Item("x", 1))}, "field 'tagged'.main_item", "price"),
    ("tagged-array", {"lines": Lines([Item("x", 1)])}, "field 'lines'.items[0]", "price"),
    ("namedtuple-in-union", {"slot_or_item": Slot("n", Item("x", 1))}, "field 'slot_or_item'[1]", "price"),
    ("class-in-union-with-namedtuple", {"slot_or_item": Item("x", 1)}, "field 'slot_or_item'", "price"),
]


@pytest.mark.parametrize(("place", "fields", "named", "field"), CHANGED, ids=[c[0] for c in CHANGED])
def test_a_nested_class_that_gained_a_field_is_refused_wherever_it_sits(
    place: str, fields: dict[str, Any], named: str, field: str
) -> None:
    saved = save(One(**fields))
    message = refusal(lambda: resume(OneGained, saved))
    assert message.startswith(f"key 'k': OneGained {named}: "), message
    assert f"has a field {field!r} that the saved value lacks" in message
    assert ADVICE in message


def test_a_tagged_struct_of_another_tag_is_not_checked_as_the_changed_one() -> None:
    """Cart | ParcelGained: a saved Cart (unchanged) resumes; only a saved Parcel is refused."""
    saved = save(One(tagged=Cart([Item("c", 1)])))
    resumed, _ = resume(OneGained, saved)
    assert isinstance(resumed, OneGained)
    assert resumed.tagged == Cart([Item("c", 1)])
    saved = save(One(lines=Line(1, Item("l", 1))))
    resumed, _ = resume(OneGained, saved)
    assert isinstance(resumed, OneGained)
    assert resumed.lines == Line(1, Item("l", 1))


def test_a_nested_class_that_renamed_a_field_is_refused_naming_the_old_name() -> None:
    saved = save(One(box=Box(Item("x", 1))))
    message = refusal(lambda: resume(OneRenamed, saved))
    assert message.startswith("key 'k': OneRenamed field 'box'.item: the saved value has a field 'qty'"), message
    assert "that ItemRenamed does not have (it would be dropped)" in message


def test_a_nested_attrs_init_false_field_never_set_is_refused_when_saved() -> None:
    """msgspec leaves the unset field out, and requires it when decoding: refused at once, not at resume."""
    message = refusal(lambda: save(Unsets(LateUnset("n"))))
    assert message.startswith("key 'k': Unsets field 'late': Object missing required field `cached`"), message


def test_nested_attrs_init_false_fields_resume_with_their_values() -> None:
    late = Late("n")
    late.seen.append("s")
    unset = LateUnset("u")
    unset.cached = 4
    resumed, _ = resume(One, save(One(late=late)))
    assert isinstance(resumed, One)
    assert resumed.late == late
    again, _ = resume(Unsets, save(Unsets(unset)))
    assert again == Unsets(unset)


def test_a_nested_class_that_lost_an_init_false_field_it_saved_is_refused() -> None:
    saved = save(One(late=Late("n")))
    message = refusal(lambda: resume(OneRenamed, saved))
    assert message.startswith("key 'k': OneRenamed field 'late': the saved value has a field 'seen'"), message


def test_a_nested_class_that_lost_a_field_is_refused_under_an_int_key() -> None:
    saved = save(One(by_int={-3: Item("x", 1)}))
    message = refusal(lambda: resume(OneRenamed, saved))
    assert message.startswith("key 'k': OneRenamed field 'by_int'[-3]: the saved value has a field 'qty'"), message


def test_an_events_checkpoint_whose_nested_class_changed_is_refused() -> None:
    saved = save(One(box=Box(Item("x", 1))), Next.events())
    assert saved.kind is StepKind.EVENTS
    message = refusal(lambda: resume(OneGained, saved))
    assert message.startswith("key 'k': OneGained field 'box'.item: ItemGained has a field 'price'"), message


def test_an_upgrade_returning_an_instance_of_the_nested_class_resumes() -> None:
    """An upgrade may put an instance in the fields it returns: it is encoded like the rest."""
    saved = save(Single(Item("x", 1)))
    resumed, _ = resume(SingleInstance, saved)
    assert isinstance(resumed, SingleInstance)
    assert resumed.item == ItemGained("x", 1, 9)


def test_a_star_args_argument_holding_a_changed_class_is_refused_naming_its_position() -> None:
    agent = Args()
    saved = save(agent, Next.do_async(agent.work, Item("f", 1), Box(Item("r1", 2)), Box(Item("r2", 3))))
    message = refusal(lambda: resume(ArgsGained, saved))
    assert message.startswith("key 'k': ArgsGained.work argument 'first' (position 0): ItemGained has a field")
    saved = save(agent, Next.do_sync(agent.take, Item("a", 1), Item("b", 2)))
    message = refusal(lambda: resume(ArgsGained, saved))
    assert message.startswith("key 'k': ArgsGained.take argument *items (position 0): ItemGained has a field")


def test_a_changed_class_inside_a_mutually_recursive_class_is_refused_at_depth() -> None:
    saved = save(Files(Folder("r", subs=[Folder("s", files=[File("f")])])))
    message = refusal(lambda: resume(FilesGained, saved))
    assert message.startswith("key 'k': FilesGained field 'folder'.subs[0].files[0]: FileGained has a field 'size'")


def test_a_generic_agent_base_whose_class_changed_is_refused() -> None:
    saved = save(ItemGeneric(Item("h", 1)))
    message = refusal(lambda: resume(ItemGenericGained, saved))
    assert message.startswith("key 'k': ItemGenericGained field 'held': ItemGained has a field 'price'")


def test_the_one_changed_class_among_ten_thousand_is_refused_naming_its_key() -> None:
    saved = save(Big(by_sku={f"k{i}": Box(Item(f"b{i}", i)) for i in range(10_000)}))
    message = refusal(lambda: resume(BigGained, saved))
    assert message.startswith("key 'k': BigGained field 'by_sku'['k0'].item: ItemGained has a field 'price'")


def test_an_output_whose_nested_generic_class_changed_is_read_as_msgspec_reads_it() -> None:
    """Outputs have no upgrade: a finished key's output stays readable, the gained field defaulted."""
    data = Codec().encode_output("k", Out, {"a": [Box(Item("x", 1))]})
    codec = Codec()
    codec.register(OutGained)
    assert codec.decode_output("k", OutGained, data) == {"a": [Box(ItemGained("x", 1, 0))]}


def test_an_upgrade_that_forgets_a_nested_rename_is_refused() -> None:
    saved = save(Single(Item("x", 1)))
    message = refusal(lambda: resume(SingleForgot, saved))
    assert message.startswith("key 'k': SingleForgot field 'item': the saved value has a field 'qty'")


# == 3. damaged payloads: a CheckpointError, never a crash =======================================


@pytest.mark.parametrize("header", [fixmap, map16, map32], ids=["fixmap", "map16", "map32"])
def test_a_fields_map_naming_a_field_twice_is_refused_whatever_its_header(
    header: Callable[[list[tuple[Any, bytes]]], bytes],
) -> None:
    saved = save(Pair2())
    fields = header([("a", ENC(1)), ("item", ENC(Item("p", 1))), ("a", ENC(2))])
    message = refusal(lambda: resume(Pair2, damaged(saved, step(fields, ENC(None)))))
    assert message.startswith("key 'k': Pair2 field 'a': the checkpoint names it twice"), message


def test_a_nested_class_field_named_twice_in_a_map16_fields_map_is_refused() -> None:
    agent = Wide()
    saved = save(agent)
    entries = [(name, ENC(value)) for name, value in attrs.asdict(agent, recurse=False).items()]
    entries.append(("item", ENC(Item("again", 2))))
    message = refusal(lambda: resume(Wide, damaged(saved, step(map16(entries), ENC(None)))))
    assert message.startswith("key 'k': Wide field 'item': the checkpoint names it twice"), message


@pytest.mark.parametrize(
    "fields",
    [ENC([1, Item("p", 1)]), ENC(None), ENC("fields"), ENC(7), b"\xc4\x00"],
    ids=["array", "nil", "str", "int", "bin"],
)
def test_a_fields_item_that_is_not_a_map_is_refused(fields: bytes) -> None:
    saved = save(Pair2())
    message = refusal(lambda: resume(Pair2, damaged(saved, step(fields, ENC(None)))))
    assert message.startswith("key 'k': Pair2"), message


@pytest.mark.parametrize(
    "key", [1, b"a", None, True, 1.5, (1, 2)], ids=["int", "bytes", "nil", "bool", "float", "array"]
)
def test_a_fields_map_with_a_key_that_is_not_a_str_is_refused(key: Any) -> None:
    saved = save(Pair2())
    fields = fixmap([("a", ENC(1)), ("item", ENC(Item("p", 1))), (key, ENC(2))])
    message = refusal(lambda: resume(Pair2, damaged(saved, step(fields, ENC(None)))))
    assert message.startswith("key 'k': Pair2"), message


def test_a_nested_class_map_with_a_key_that_is_not_a_str_is_refused() -> None:
    saved = save(Pair2())
    item = fixmap([("sku", ENC("p")), ("qty", ENC(1)), (9, ENC(0))])
    fields = fixmap([("a", ENC(1)), ("item", item)])
    message = refusal(lambda: resume(Pair2, damaged(saved, step(fields, ENC(None)))))
    assert message.startswith("key 'k': Pair2 field 'item'"), message


def test_every_truncation_of_a_payload_is_refused() -> None:
    agent = Pair2(3, Item("p", 2))
    saved = save(agent, Next.do_async(agent.work, [Item("x", 1)], Box(Item("y", 2))))
    for end in range(len(saved.payload)):
        with pytest.raises(CheckpointError):
            resume(Pair2, damaged(saved, saved.payload[:end]))


def test_every_truncation_of_an_output_is_refused() -> None:
    codec = Codec()
    data = codec.encode_output("k", Out, {"a": [Box(Item("x", 1))]})
    for end in range(len(data)):
        with pytest.raises(CheckpointError):
            codec.decode_output("k", Out, data[:end])


def test_an_array_header_claiming_too_many_arguments_is_refused() -> None:
    agent = Pair2()
    saved = save(agent, Next.do_async(agent.work, [Item("x", 1)], Box(Item("y", 2))))
    for header in (b"\xdd\xff\xff\xff\xff", b"\xdc\xff\xff", b"\x9f"):
        payload = header + saved.payload[1:]
        with pytest.raises(CheckpointError):
            resume(Pair2, damaged(saved, payload))


def test_every_single_byte_change_of_a_payload_is_a_checkpoint_error_or_a_resume() -> None:
    agent = Pair2(3, Item("p", 2))
    saved = save(agent, Next.do_async(agent.work, [Item("x", 1), Item("z", 5)], Box(Item("y", 2))))
    rng = random.Random(7)
    crashes: list[str] = []
    for index in range(len(saved.payload)):
        for value in {0x00, 0x80, 0x81, 0x90, 0xC0, 0xC1, 0xD4, 0xDE, 0xDF, 0xFF, rng.randrange(256)}:
            payload = bytearray(saved.payload)
            payload[index] = value
            try:
                resume(Pair2, damaged(saved, bytes(payload)))
            except CheckpointError:
                pass
            except Exception as err:  # any other exception is what this test looks for
                crashes.append(f"byte {index} = {value:#x}: {err!r}")
    assert crashes == []


def test_every_single_byte_change_of_an_upgraded_payload_is_a_checkpoint_error_or_a_resume() -> None:
    agent = Pair2(3, Item("p", 2))
    saved = save(agent)
    crashes: list[str] = []
    for index in range(len(saved.payload)):
        for value in (0x00, 0x80, 0x90, 0xC0, 0xC1, 0xDE, 0xFF):
            payload = bytearray(saved.payload)
            payload[index] = value
            try:
                resume(Pair2V2, damaged(saved, bytes(payload)))
            except CheckpointError:
                pass
            except Exception as err:  # any other exception is what this test looks for
                crashes.append(f"byte {index} = {value:#x}: {err!r}")
    assert crashes == []


# == 4. bugs found ================================================================================


@pytest.mark.parametrize(
    "junk",
    [b"\x81\x80\x01", b"\xc7\x03\xff\x00\x00\x00"],
    ids=["map-keyed-by-a-map", "bad-timestamp-ext"],
)
def test_an_unknown_key_with_undecodable_junk_in_a_nested_class_is_a_checkpoint_error(junk: bytes) -> None:
    """msgspec's typed decode skips an unknown key's value unread; the untyped decode of the shape check does not."""
    saved = save(Pair2())
    item = fixmap([("sku", ENC("p")), ("qty", ENC(1)), ("zz", junk)])
    payload = step(fixmap([("a", ENC(0)), ("item", item)]), ENC(None))
    message = refusal(lambda: resume(Pair2, damaged(saved, payload)))
    assert message.startswith("key 'k': Pair2"), message


def test_an_output_with_undecodable_junk_under_an_unknown_key_is_read_without_it() -> None:
    """Outputs are read as msgspec reads them: a key the class does not have is skipped, whatever it holds."""
    codec = Codec()
    data = fixmap([("sku", ENC("p")), ("qty", ENC(1)), ("zz", b"\xc7\x03\xff\x00\x00\x00")])
    assert codec.decode_output("k", Single, data) == Item("p", 1)


def test_an_unchanged_agent_with_a_raw_field_and_a_class_field_resumes() -> None:
    agent = Raws(msgspec.Raw(b"\x81\x80\x01"), Item("x", 1))  # {{}: 1}: valid msgpack, a map keyed by a map
    resumed, _ = resume(Raws, save(agent))
    assert isinstance(resumed, Raws)
    assert bytes(resumed.blob) == bytes(agent.blob)
    assert resumed.item == agent.item


def test_an_agent_with_a_dict_keyed_by_a_value_class_resumes_or_is_refused_with_a_checkpoint_error() -> None:
    agent = Keyed({Item("x", 1): 2})
    try:
        resumed, _ = resume(Keyed, save(agent))
    except CheckpointError:
        return  # refusing such a key when saving is fine; an AssertionError is not
    assert resumed == agent


def test_a_state_argument_keyed_by_a_value_class_resumes_or_is_refused_with_a_checkpoint_error() -> None:
    agent = KeyedArg()
    try:
        _, nxt = resume(KeyedArg, save(agent, Next.do_async(agent.count, {Key(1): 1}, {Item("x", 1): 2})))
    except CheckpointError:
        return  # refusing such a key when saving is fine; an AssertionError is not
    assert nxt is not None
    assert nxt.args == ({Key(1): 1}, {Item("x", 1): 2})


def test_an_older_version_fields_map_naming_a_field_twice_is_refused() -> None:
    saved = save(Pair2())
    fields = fixmap([("a", ENC(1)), ("item", ENC(Item("p", 1))), ("a", ENC(2))])
    message = refusal(lambda: resume(Pair2V2, damaged(saved, step(fields, ENC(None)))))
    assert "field 'a': the checkpoint names it twice" in message, message


def test_a_nested_class_that_gained_an_init_false_field_with_a_factory_is_refused() -> None:
    saved = save(One(late=Late("n")))
    message = refusal(lambda: resume(OneGained, saved))
    assert message.startswith("key 'k': OneGained field 'late': LateGained has a field 'hits'"), message


@pytest.mark.parametrize(
    "fields",
    [{"item": {"sku": "x", "qty": 1, "extra": 2}}, {"gained": {"sku": "x", "qty": 1}}],
    ids=["extra-key", "defaulted-key-left-out"],
)
def test_a_dict_held_for_a_class_that_would_not_resume_is_refused_when_saved(fields: dict[str, Any]) -> None:
    """Saved checks promise the refusal at the transition, not at resume: the class did not change."""
    agent = DictHeld(**fields)
    try:
        saved = save(agent)
    except CheckpointError:
        return
    resume(DictHeld, saved)  # raises "The class changed since the checkpoint was saved": it did not


def _chain(depth: int) -> Node:
    node = Node()
    for _ in range(depth):
        node = Node([node])
    node.item = Item("root", 1)  # the changed class sits at the root, beside the deep kids
    return node


def _deepest_saved() -> int:
    low, high = 1, 4000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            Codec().encode_step("k", Deep(_chain(middle)), None)
        except CheckpointError:
            high = middle - 1
        else:
            low = middle
    return low


def test_a_changed_class_at_the_root_beside_deep_kids_is_refused_from_a_deeper_stack() -> None:
    """`run_shape` returns None at RecursionError: the root's item, checked after its kids, is never checked."""
    saved = save(Deep(_chain(_deepest_saved())))
    message = refusal(lambda: _deeper(100, functools.partial(resume, DeepGained, saved)))
    assert message.startswith("key 'k': DeepGained field 'node'.item: ItemGained has a field 'price'"), message


def test_a_nested_dataclass_with_an_unset_field_resumes() -> None:
    agent = Partials(Partial("x"))
    resumed, _ = resume(Partials, save(agent))
    assert resumed == agent


def test_a_nested_dataclass_with_its_own_init_resumes() -> None:
    agent = Customs(Custom(3))
    resumed, _ = resume(Customs, save(agent))
    assert resumed == agent


def test_a_changed_class_in_a_field_named_with_a_non_ascii_letter_is_named() -> None:
    saved = save(Accented(Item("x", 1)))
    message = refusal(lambda: resume(AccentedGained, saved))
    assert message.startswith("key 'k': AccentedGained field 'éclair': ItemGained has a field 'price'"), message
