"""Value classes that changed since their checkpoint, and fields maps that name a field twice.

msgspec decodes an attrs class or a dataclass leniently: a saved field the
class no longer has is dropped, and a field it gained takes its default. The
agent's own fields were always strict; these tests check that the classes
*inside* them (and inside state arguments and outputs) are too, wherever they
sit (lists, dicts, unions, tuples, named tuples, Structs, recursive classes),
that nothing that round-trips is refused, and that a fields map naming a field
twice (a damaged payload) is refused instead of keeping the last value.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Annotated, Any, Generic, NamedTuple, TypeVar, cast

import attrs
import msgspec
import pytest
import trio
import trio.testing
from typing_extensions import Self

from hybrid import Agent, Next
from hybrid.codec import MessageCodec
from hybrid.durable import CheckpointError, durable, open_store
from hybrid.durable._codec import Codec
from hybrid.durable._records import Checkpoint, StepKind

R = TypeVar("R")

# -- value classes, before and after a change ------------------------------------------------


@attrs.frozen
class Item:
    sku: str
    qty: int


@attrs.frozen
class ItemLost:  # Item without qty
    sku: str


@attrs.frozen
class ItemGained:  # Item with a price added, defaulted
    sku: str
    qty: int
    price: int = 0


@dataclasses.dataclass
class Note:
    text: str
    stamp: int = dataclasses.field(default=0, init=False)  # a class default: unset on an instance


@dataclasses.dataclass
class NoteGained:
    text: str
    lang: str = "en"
    stamp: int = dataclasses.field(default=0, init=False)


@attrs.define
class Tree:
    value: int
    kids: list[Tree] = attrs.field(factory=list["Tree"])


@attrs.define
class TreeGained:
    value: int
    kids: list[TreeGained] = attrs.field(factory=list["TreeGained"])
    label: str = ""


class Pair(NamedTuple):
    name: str
    item: Item


class PairGained(NamedTuple):
    name: str
    item: ItemGained


class Box(msgspec.Struct):
    item: Item
    extra: int = 0  # a Struct keeps msgspec's rules: a field it gained takes its default


class BoxGained(msgspec.Struct):
    item: ItemGained
    extra: int = 0


class Row(msgspec.Struct, array_like=True, tag=True):
    n: int
    item: Item


class RowGained(msgspec.Struct, array_like=True, tag="Row"):
    n: int
    item: ItemGained


class Crate(msgspec.Struct, tag=True):
    item: Item


class Sack(msgspec.Struct, tag=True):
    items: list[Item]


class CrateGained(msgspec.Struct, tag="Crate"):
    item: ItemGained


class SackGained(msgspec.Struct, tag="Sack"):
    items: list[ItemGained]


# -- agents holding them ------------------------------------------------------------------------


@durable(name="shapes.holder")
@attrs.define
class Holder(Agent[None]):
    items: dict[str, list[Item]] = attrs.field(factory=dict[str, list[Item]])
    maybe: Item | None = None
    either: Item | list[Item] = attrs.field(factory=list[Item])
    pair: tuple[int, Item] | None = None
    named: Pair | None = None
    box: Box | None = None
    row: Row | None = None
    note: Note | None = None
    tree: Tree | None = None
    load: Crate | Sack | None = None

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, list[Any]())

    async def work(self, batch: list[Item]) -> Next[Self]:
        return Next.done()


@durable(name="shapes.holder")
@attrs.define
class HolderGained(Agent[None]):
    items: dict[str, list[ItemGained]] = attrs.field(factory=dict[str, list[ItemGained]])
    maybe: ItemGained | None = None
    either: ItemGained | list[ItemGained] = attrs.field(factory=list[ItemGained])
    pair: tuple[int, ItemGained] | None = None
    named: PairGained | None = None
    box: BoxGained | None = None
    row: RowGained | None = None
    note: NoteGained | None = None
    tree: TreeGained | None = None
    load: CrateGained | SackGained | None = None

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, list[Any]())

    async def work(self, batch: list[ItemGained]) -> Next[Self]:
        return Next.done()


@durable(name="shapes.holder")
@attrs.define
class HolderLost(Agent[None]):
    items: dict[str, list[ItemLost]] = attrs.field(factory=dict[str, list[ItemLost]])
    maybe: ItemLost | None = None
    either: ItemLost | list[ItemLost] = attrs.field(factory=list[ItemLost])
    pair: tuple[int, ItemLost] | None = None
    named: Pair | None = None
    box: Box | None = None
    row: Row | None = None
    note: Note | None = None
    tree: Tree | None = None
    load: Crate | Sack | None = None

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work, list[Any]())

    async def work(self, batch: list[ItemLost]) -> Next[Self]:
        return Next.done()


def save(agent: Agent[Any], nxt: Next[Any] | None) -> Checkpoint:
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


ADVICE = "The class changed since the checkpoint was saved"

# (the field value that holds an Item somewhere, where the message names it)
PLACES: list[tuple[str, dict[str, Any], str]] = [
    ("dict of lists", {"items": {"a": [Item("x", 1), Item("y", 2)]}}, "field 'items'['a'][0]"),
    ("optional", {"maybe": Item("x", 1)}, "field 'maybe'"),
    ("union with a list", {"either": [Item("x", 1)]}, "field 'either'[0]"),
    ("union, the class itself", {"either": Item("x", 1)}, "field 'either'"),
    ("fixed tuple", {"pair": (7, Item("x", 1))}, "field 'pair'[1]"),
]


@pytest.mark.parametrize(("place", "fields", "named"), PLACES, ids=[p[0] for p in PLACES])
def test_a_nested_class_that_gained_a_field_is_refused_naming_where(
    place: str, fields: dict[str, Any], named: str
) -> None:
    saved = save(Holder(**fields), None)
    message = refusal(lambda: resume(HolderGained, saved))
    assert message.startswith(f"key 'k': HolderGained {named}: ItemGained has a field 'price' that the saved value")
    assert "it would take its default" in message
    assert ADVICE in message


@pytest.mark.parametrize(("place", "fields", "named"), PLACES, ids=[p[0] for p in PLACES])
def test_a_nested_class_that_lost_a_field_is_refused_naming_where(
    place: str, fields: dict[str, Any], named: str
) -> None:
    saved = save(Holder(**fields), None)
    message = refusal(lambda: resume(HolderLost, saved))
    assert message.startswith(f"key 'k': HolderLost {named}: the saved value has a field 'qty' that ItemLost")
    assert "it would be dropped" in message


def test_classes_inside_named_tuples_structs_and_array_like_structs_are_checked() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"named": Pair("p", Item("x", 1))}, "field 'named'[1]"),
        ({"box": Box(Item("x", 1))}, "field 'box'.item"),
        ({"row": Row(3, Item("x", 1))}, "field 'row'.item"),
    ]
    for fields, named in cases:
        saved = save(Holder(**fields), None)
        message = refusal(functools.partial(resume, HolderGained, saved))
        assert message.startswith(f"key 'k': HolderGained {named}: ItemGained has a field 'price'"), message


def test_tagged_structs_in_a_union_are_told_apart_by_their_tag() -> None:
    """Crate | Sack: a saved Sack's items are checked as a Sack's, not as a Crate's (the first branch)."""
    saved = save(Holder(load=Sack([Item("x", 1)])), None)
    message = refusal(lambda: resume(HolderGained, saved))
    assert message.startswith("key 'k': HolderGained field 'load'.items[0]: ItemGained has a field 'price'")
    saved = save(Holder(load=Crate(Item("x", 1))), None)
    message = refusal(lambda: resume(HolderGained, saved))
    assert message.startswith("key 'k': HolderGained field 'load'.item: ItemGained has a field 'price'")
    agent, _ = resume(Holder, saved)
    assert isinstance(agent, Holder)
    assert agent.load == Crate(Item("x", 1))


def _chain(depth: int) -> Tree:
    tree = Tree(0)
    for level in range(depth):
        tree = Tree(level + 1, [tree])
    return tree


def _deepest_saved() -> int:
    """The deepest chain of Trees a checkpoint takes from here (the interpreter's limits decide)."""
    low, high = 1, 4000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            Codec().encode_step("k", Holder(tree=_chain(middle)), None)
        except CheckpointError:
            high = middle - 1
        else:
            low = middle
    return low


def _deeper(frames: int, fn: Callable[[], R]) -> R:
    """``fn()`` called `frames` frames deeper than here."""
    return fn() if frames == 0 else _deeper(frames - 1, fn)


def test_a_value_too_deep_for_the_check_still_resumes_and_its_changed_class_is_still_refused() -> None:
    """The walk goes level by level, never recursing: as deep as can be saved, from a deeper stack, it resumes."""
    depth = _deepest_saved()
    saved = save(Holder(tree=_chain(depth)), None)
    agent, _ = _deeper(50, functools.partial(resume, Holder, saved))  # resumed from a deeper stack than saved
    assert isinstance(agent, Holder)
    node, levels = agent.tree, 0
    while node is not None and node.kids:
        node, levels = node.kids[0], levels + 1
    assert levels == depth
    message = refusal(lambda: resume(HolderGained, saved))  # the root is checked before its depths
    assert message.startswith("key 'k': HolderGained field 'tree': TreeGained has a field 'label'")


def test_a_recursive_class_that_gained_a_field_is_refused_at_its_first_node() -> None:
    saved = save(Holder(tree=Tree(1, [Tree(2, [Tree(3)])])), None)
    message = refusal(lambda: resume(HolderGained, saved))
    assert message.startswith("key 'k': HolderGained field 'tree': TreeGained has a field 'label'")


def test_a_dataclass_that_gained_a_field_is_refused_but_an_unset_init_false_field_is_not_missing() -> None:
    saved = save(Holder(note=Note("hi")), None)
    assert msgspec.msgpack.encode(Note("hi")) == msgspec.msgpack.encode({"text": "hi"})  # stamp left out
    message = refusal(lambda: resume(HolderGained, saved))
    assert message.startswith("key 'k': HolderGained field 'note': NoteGained has a field 'lang'")
    agent, _ = resume(Holder, saved)
    assert isinstance(agent, Holder)
    assert agent.note == Note("hi")


def test_a_state_argument_holding_a_changed_class_is_refused_naming_it() -> None:
    agent = Holder()
    saved = save(agent, Next.do_async(agent.work, [Item("x", 1), Item("y", 2)]))
    message = refusal(lambda: resume(HolderGained, saved))
    assert message.startswith("key 'k': HolderGained.work argument 'batch' (position 0)[0]: ItemGained has a field")
    message = refusal(lambda: resume(HolderLost, saved))
    assert message.startswith("key 'k': HolderLost.work argument 'batch' (position 0)[0]: the saved value has")


def test_what_did_not_change_round_trips_in_every_place() -> None:
    """No false refusal: every place filled at once, with empty and absent values too."""
    agent = Holder(
        items={"a": [Item("x", 1)], "b": []},
        maybe=Item("m", 2),
        either=Item("e", 3),
        pair=(1, Item("p", 4)),
        named=Pair("n", Item("q", 5)),
        box=Box(Item("b", 6), extra=2),
        row=Row(9, Item("r", 7)),
        note=Note("hi"),
        tree=Tree(1, [Tree(2), Tree(3, [Tree(4)])]),
    )
    agent.note.stamp = 5  # type: ignore[union-attr]  # set: saved, and restored
    saved = save(agent, Next.do_async(agent.work, [Item("z", 8)]))
    resumed, nxt = resume(Holder, saved)
    assert isinstance(resumed, Holder)
    assert attrs.asdict(resumed, recurse=False) == attrs.asdict(agent, recurse=False)
    assert nxt is not None
    empty, _ = resume(Holder, save(Holder(), None))
    assert empty == Holder()


@durable(name="shapes.made")
@attrs.define
class Made(Agent[Item]):
    n: int = 0

    def begin(self) -> Next[Self]:
        return Next.done(Item("x", self.n))


@durable(name="shapes.made")
@attrs.define
class MadeGained(Agent[ItemGained]):
    n: int = 0

    def begin(self) -> Next[Self]:
        return Next.done(ItemGained("x", self.n))


def test_an_output_whose_class_gained_a_field_is_read_as_msgspec_reads_it() -> None:
    """A finished key's output has no upgrade: refusing it would make it unreadable for good."""
    data = Codec().encode_output("k", Made, Item("x", 1))
    codec = Codec()
    codec.register(MadeGained)
    assert codec.decode_output("k", MadeGained, data) == ItemGained("x", 1, 0)


@durable(name="shapes.old", version=1)
@attrs.define
class Old(Agent[None]):
    item: Item

    def begin(self) -> Next[Self]:
        return Next.done()


def _add_price(old: int, fields: dict[str, Any]) -> dict[str, Any]:
    fields["item"]["price"] = 100
    return fields


@durable(name="shapes.old", version=2, upgrade=_add_price)
@attrs.define
class Upgraded(Agent[None]):
    item: ItemGained

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="shapes.old", version=2, upgrade=lambda old, fields: fields)
@attrs.define
class UpgradedForgetting(Agent[None]):
    item: ItemGained

    def begin(self) -> Next[Self]:
        return Next.done()


def test_an_upgrade_that_adds_the_gained_field_resumes_and_one_that_forgets_it_is_refused() -> None:
    saved = save(Old(Item("x", 1)), None)
    agent, _ = resume(Upgraded, saved)
    assert isinstance(agent, Upgraded)
    assert agent.item == ItemGained("x", 1, 100)
    message = refusal(lambda: resume(UpgradedForgetting, saved))
    assert message.startswith("key 'k': UpgradedForgetting field 'item': ItemGained has a field 'price'")


# -- a fields map that names a field twice ------------------------------------------------------


@durable(name="shapes.wide")
@attrs.define
class Wide(Agent[None]):
    """Seventeen fields: its fields map has a map16 header, not a fixmap."""

    f00: int = 0
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
        return Next.do_async(self.work, 1)

    async def work(self, n: int) -> Next[Self]:
        return Next.done()


def _named_twice(payload: bytes, name: str, value: int) -> bytes:
    """`payload` with `name` added to its fields map again (a damaged payload)."""
    items: list[Any] = msgspec.msgpack.decode(payload)
    fields: dict[str, Any] = items[1]
    entries = b"".join(msgspec.msgpack.encode(k) + msgspec.msgpack.encode(v) for k, v in fields.items())
    entries += msgspec.msgpack.encode(name) + msgspec.msgpack.encode(value)
    count = len(fields) + 1
    header = bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")
    rest = b"".join(msgspec.msgpack.encode(item) for item in items[2:])
    return bytes([0x90 | len(items)]) + msgspec.msgpack.encode(items[0]) + header + entries + rest


@pytest.mark.parametrize("kind", [StepKind.BEGIN, StepKind.ASYNC])
def test_a_fields_map_naming_a_field_twice_is_refused_naming_it(kind: StepKind) -> None:
    agent = Wide()
    saved = save(agent, None if kind is StepKind.BEGIN else Next.do_async(agent.work, 5))
    assert saved.kind is kind
    damaged = attrs.evolve(saved, payload=_named_twice(saved.payload, "f07", 9))
    assert damaged.payload[2] == 0xDE  # a map16 header
    message = refusal(lambda: resume(Wide, damaged))
    assert message == (
        "key 'k': Wide field 'f07': the checkpoint names it twice "
        "(the payload is damaged: which value is meant is unknown)"
    )
    undamaged, _ = resume(Wide, saved)
    assert undamaged == Wide()


# -- through a real store -------------------------------------------------------------------------


@durable(name="shapes.parked")
@attrs.define
class Parked(Agent[None]):
    item: Item

    def begin(self) -> Next[Self]:
        return Next.do_async(self.park)

    async def park(self) -> Next[Self]:
        await trio.Event().wait()  # until the run is cancelled
        return Next.done()  # pragma: no cover - cancelled while parked


@durable(name="shapes.parked")
@attrs.define
class ParkedGained(Agent[None]):
    item: ItemGained

    def begin(self) -> Next[Self]:
        return Next.do_async(self.park)

    async def park(self) -> Next[Self]:
        return Next.done()


async def test_resume_refuses_a_key_whose_nested_class_changed_and_keeps_it(journal_url: str) -> None:
    async with open_store(journal_url, agents=[Parked]) as store, trio.open_nursery() as nursery:
        await store.spawn(nursery, Parked(Item("x", 1)), key="p")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # the crash: the key stays unfinished, in park
    async with open_store(journal_url, agents=[ParkedGained]) as store, trio.open_nursery() as nursery:
        with pytest.raises(CheckpointError, match=r"key 'p': ParkedGained field 'item': ItemGained has a field"):
            await store.resume(nursery)
        assert store.live_keys() == []
    async with open_store(journal_url, agents=[Parked]) as store, trio.open_nursery() as nursery:
        [address] = await store.resume(nursery)  # the old code still resumes it
        await trio.testing.wait_all_tasks_blocked()
        assert address.statistics().state == "Next.do_async(Parked.park)"
        nursery.cancel_scope.cancel()


# -- from a review: what msgspec leaves out, and what an upgrade or a message does ----------------


@dataclasses.dataclass
class Money:
    """A dataclass with an __init__ of its own: `currency` stays the class default, never set."""

    amount: int
    currency: str = "EUR"

    def __init__(self, amount: int) -> None:
        self.amount = amount


@dataclasses.dataclass
class Weight:
    grams: int
    unit: str = "g"


class Parcel(Weight):
    """A dataclass's subclass, not decorated, with an __init__ of its own: `unit` is never set."""

    def __init__(self, grams: int) -> None:
        self.grams = grams


T = TypeVar("T")


@dataclasses.dataclass
class Maybe(Generic[T]):
    value: T = msgspec.UNSET  # type: ignore[assignment]  # UNSET: left out while the field holds it


@dataclasses.dataclass(slots=True)
class Tally:
    n: int


@dataclasses.dataclass(slots=True)
class TallyGained:
    n: int
    hits: int = dataclasses.field(default=0, init=False)  # slotted: set by __init__, so always saved


@durable(name="shapes.review")
@attrs.define
class Reviewed(Agent[None]):
    money: Money | None = None
    parcel: Parcel | None = None
    maybe: Maybe[int | msgspec.UnsetType] | None = None
    tally: Tally | None = None
    stock: dict[str, Item] = attrs.field(factory=dict[str, Item])

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="shapes.review")
@attrs.define
class ReviewedGained(Agent[None]):
    money: Money | None = None
    parcel: Parcel | None = None
    maybe: Maybe[int | msgspec.UnsetType] | None = None
    tally: TallyGained | None = None
    stock: dict[str, ItemGained] = attrs.field(factory=dict[str, ItemGained])

    def begin(self) -> Next[Self]:
        return Next.done()


def test_fields_msgspec_leaves_out_resume_unchanged() -> None:
    """Defaults a class's own __init__ never sets (in its body, or a subclass's); UNSET through a type variable."""
    parcel = Parcel(500)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(parcel)) == {"grams": 500}  # unit left out
    agent = Reviewed(money=Money(3), parcel=parcel, maybe=Maybe(), tally=Tally(1))
    resumed, _ = resume(Reviewed, save(agent, None))
    assert isinstance(resumed, Reviewed)
    assert resumed.money is not None and resumed.money.amount == 3 and resumed.money.currency == "EUR"
    assert resumed.parcel is not None and resumed.parcel.grams == 500
    assert resumed.maybe == Maybe()
    assert resumed.tally == Tally(1)


def test_a_slotted_dataclass_that_gained_an_init_false_field_is_refused() -> None:
    saved = save(Reviewed(tally=Tally(1)), None)
    message = refusal(lambda: resume(ReviewedGained, saved))
    assert message.startswith("key 'k': ReviewedGained field 'tally': TallyGained has a field 'hits'")


def test_a_dict_of_classes_that_changed_names_the_entry() -> None:
    saved = save(Reviewed(stock={"a": Item("x", 1), "b": Item("y", 2)}), None)
    message = refusal(lambda: resume(ReviewedGained, saved))
    assert message.startswith("key 'k': ReviewedGained field 'stock'['a']: ItemGained has a field 'price'")


def test_a_class_an_upgrade_left_in_its_old_shape_is_named_with_the_upgrade() -> None:
    saved = save(Old(Item("x", 1)), None)
    message = refusal(lambda: resume(UpgradedForgetting, saved))
    assert message == (
        "key 'k': UpgradedForgetting field 'item': ItemGained has a field 'price' that the saved value lacks "
        "(it would take its default). The upgrade from version 1 returned it in its old shape: convert it there"
    )


def test_a_dict_held_for_a_class_must_have_its_keys_in_a_checkpoint_but_not_in_a_message() -> None:
    """A checkpoint's dict must come back as saved (resume checks it); a message's is taken as msgspec takes it."""
    short = {"sku": "x", "qty": 1}  # no price: it would come back with its default
    message = refusal(lambda: save(ReviewedGained(stock=cast("dict[str, ItemGained]", {"a": short})), None))
    assert message.startswith("key 'k': ReviewedGained field 'stock'['a']: a dict given for a ItemGained lacks")
    codec = MessageCodec()
    assert codec.decode_value(ItemGained, codec.encode_value(ItemGained, short)) == ItemGained("x", 1, 0)


# -- each class at its first instance ---------------------------------------------------------------


@durable(name="shapes.sparse")
@attrs.define
class Sparse(Agent[None]):
    slots: list[Item | None] = attrs.field(factory=list[Item | None])
    forest: list[Tree] = attrs.field(factory=list[Tree])

    def begin(self) -> Next[Self]:
        return Next.done()


@durable(name="shapes.sparse")
@attrs.define
class SparseGained(Agent[None]):
    slots: list[ItemGained | None] = attrs.field(factory=list[ItemGained | None])
    forest: list[TreeGained] = attrs.field(factory=list[TreeGained])

    def begin(self) -> Next[Self]:
        return Next.done()


def test_a_class_first_found_late_in_a_collection_is_still_checked() -> None:
    """The walk goes on past parts without the class: its first instance may be the last part."""
    saved = save(Sparse(slots=[None] * 1000 + [Item("x", 1)]), None)
    message = refusal(lambda: resume(SparseGained, saved))
    assert message.startswith("key 'k': SparseGained field 'slots'[1000]: ItemGained has a field 'price'")
    resumed, _ = resume(Sparse, saved)
    assert isinstance(resumed, Sparse)
    assert resumed.slots[-1] == Item("x", 1)


def test_a_large_collection_is_checked_at_its_first_instance_and_resumes_whole() -> None:
    items: list[Item | None] = [Item(str(n), n) for n in range(100_000)]
    saved = save(Sparse(slots=items, forest=[Tree(1, [Tree(2)]), Tree(3)]), None)
    message = refusal(lambda: resume(SparseGained, saved))
    assert message.startswith("key 'k': SparseGained field 'slots'[0]: ItemGained has a field 'price'")
    resumed, _ = resume(Sparse, saved)
    assert isinstance(resumed, Sparse)
    assert resumed.slots == items
    assert resumed.forest == [Tree(1, [Tree(2)]), Tree(3)]


@attrs.define(init=False)
class Gauge:
    """attrs with init=False and an __init__ of its own: `scale` stays unset, msgspec leaves it out."""

    reading: int
    scale: int = 1

    def __init__(self, reading: int) -> None:
        self.reading = reading


@dataclasses.dataclass
class Reading:
    value: int
    note: Annotated[str | msgspec.UnsetType, "a free text"] = msgspec.UNSET


class Celsius(Reading):
    """A dataclass's plain subclass, not decorated: its __init__ is its base's, generated."""


@durable(name="shapes.gauges")
@attrs.define
class Gauges(Agent[None]):
    gauge: Gauge | None = None
    reading: Reading | None = None
    celsius: list[Celsius] = attrs.field(factory=list[Celsius])

    def begin(self) -> Next[Self]:
        return Next.done()


def test_own_inits_annotated_unset_fields_and_inherited_inits_resume_unchanged() -> None:
    agent = Gauges(gauge=Gauge(7), reading=Reading(1), celsius=[Celsius(2), Celsius(3, "warm")])
    resumed, _ = resume(Gauges, save(agent, None))
    assert isinstance(resumed, Gauges)
    assert resumed.gauge is not None and resumed.gauge.reading == 7
    assert resumed.reading == Reading(1)
    assert resumed.celsius == [Celsius(2), Celsius(3, "warm")]
