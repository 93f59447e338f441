"""The type rules the codecs share: Any slots take JSON-like builtins only, wherever they are nested."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, NamedTuple, NotRequired, TypedDict

import attrs
import msgspec
import pytest

from hybrid.codec import CodecError, MessageCodec
from hybrid.codec._types import find_exception


class Options(TypedDict):
    depth: int
    extra: NotRequired[Any]


class Pair(NamedTuple):
    a: int
    b: Any


@dataclasses.dataclass
class Node:
    value: Any
    kids: list[Node] = dataclasses.field(default_factory=list["Node"])


@attrs.frozen
class Holder:
    inner: Any


class Local:
    pass


def refused(annotation: Any, value: Any) -> str:
    with pytest.raises(CodecError) as info:
        MessageCodec().encode_value(annotation, value)
    return str(info.value)


def accepted(annotation: Any, value: Any) -> Any:
    codec = MessageCodec()
    return codec.decode_value(annotation, codec.encode_value(annotation, value))


def test_any_slots_are_checked_inside_every_container() -> None:
    """Lists, sets, tuples, dict keys and values, TypedDict, NamedTuple, dataclass: the path is named."""
    assert "value[1]: a tuple" in refused(list[Any], [1, (2,)])
    assert "value[0]: a frozenset" in refused(frozenset[Any], frozenset({frozenset({1})}))
    assert "value[1]: a set" in refused(tuple[int, Any], (1, {2}))
    assert "value[0]: a tuple" in refused(tuple[Any, ...], ((1,),))
    assert "value['k']: a set" in refused(dict[str, Any], {"k": {1}})
    assert "value[1]: a dict key 1" in refused(dict[Any, int], {1: 1})
    assert "value['extra']: a tuple" in refused(Options, {"depth": 1, "extra": (1,)})
    assert "value.b: a tuple" in refused(Pair, Pair(1, (2,)))
    assert "value.kids[0].value: a set" in refused(Node, Node(1, [Node({2})]))
    assert "value.inner[0]: a tuple" in refused(Holder, Holder([(1,)]))
    assert "value: a tuple" in refused(Annotated[Any, msgspec.Meta(title="t")], (1,))
    assert accepted(dict[str, Any], {"k": [1, {"x": None}]}) == {"k": [1, {"x": None}]}
    assert accepted(tuple[int, Any], (1, [2])) == (1, [2])
    assert accepted(list[Any], [1, "x"]) == [1, "x"]
    assert accepted(Node, Node(1, [Node(2)])) == Node(1, [Node(2)])
    titled = Annotated[list[Any], msgspec.Meta(title="t")]
    assert "value[0]: a tuple" in refused(titled, [(1,)])
    assert "value[0]: a tuple" in refused(titled | None, [(1,)])  # pyright: ignore[reportOperatorIssue]
    assert accepted(Options, {"depth": 1, "extra": [1]}) == {"depth": 1, "extra": [1]}
    assert accepted(Options, {"depth": 1}) == {"depth": 1}


def test_union_branches_with_any_slots_are_checked_by_kind() -> None:
    """int | Any is Any; list[Any] | Holder | None: each value checked by the branch that takes it."""
    assert "value: a tuple" in refused(int | Any, (1,))
    annotation = list[Any] | Holder | None
    assert "value[0]: a tuple" in refused(annotation, [(1,)])
    assert "value.inner: a tuple" in refused(annotation, Holder((1,)))
    assert accepted(annotation, None) is None
    assert accepted(annotation, Holder([1])) == Holder([1])
    assert "value['k']: a tuple" in refused(dict[str, Any] | int, {"k": (1,)})
    assert accepted(dict[str, Any] | int, 3) == 3


def test_values_that_do_not_encode_are_found_inside_containers() -> None:
    """The culprit is named inside dict keys, dataclasses and structs, and a cycle is reported, not followed forever."""
    assert "value key (1, object" not in refused(dict[str, int], {"k": object()})
    assert "value['k']: cannot encode object" in refused(dict[str, int], {"k": object()})
    assert "value.value: cannot encode object" in refused(Node, Node(object()))
    cycle: list[Any] = []
    cycle.append(cycle)
    assert "cannot encode list" in refused(list[Any], cycle)


def test_unsupported_annotations_are_refused() -> None:
    """Two array-like union branches, or a class msgspec cannot encode: CodecError naming the type."""
    assert "is not supported by the codec" in refused(list[int] | tuple[int, ...], [1])
    assert "msgspec cannot encode and decode Local" in refused(dict[str, Local], {})


def test_fields_without_annotations_are_resolved_from_their_declared_type() -> None:
    """An attrs class made by make_class: its field types come from attrs; an untyped field is Any."""
    Made = attrs.make_class("Made", {"n": attrs.field(type=int), "loose": attrs.field()})
    Made.__module__ = __name__
    codec = MessageCodec()
    codec.register(Made)
    name, version, payload = codec.encode(Made(1, [2]))
    back = codec.decode(name, version, payload)
    assert (back.n, back.loose) == (1, [2])  # type: ignore[attr-defined]
    with pytest.raises(CodecError, match=r"Made.loose: a tuple"):
        codec.encode(Made(1, (2,)))


@attrs.define
class Unannotated:
    n = attrs.field(type=int)  # pyright: ignore[reportGeneralTypeIssues]


def test_a_field_declared_without_an_annotation_uses_its_declared_type() -> None:
    """attrs.field(type=int) without an annotation: the type attrs records is the field's type."""
    codec = MessageCodec()
    codec.register(Unannotated)
    with pytest.raises(CodecError, match="Unannotated.n: Expected `int`, got `str`"):
        codec.encode(Unannotated("x"))  # type: ignore[arg-type]


def test_an_annotation_that_does_not_resolve_is_refused() -> None:
    """A field annotated with a name that is not importable: CodecError saying so."""

    @attrs.frozen
    class Lost:
        where: Nowhere  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(CodecError, match="Lost field 'where': cannot resolve its annotation 'Nowhere'"):
        MessageCodec().register(Lost)


def test_find_exception_finds_only_exception_types_of_imported_modules() -> None:
    """module:qualname of an exception class among sys.modules; anything else is None; nothing is imported."""
    assert find_exception("builtins:KeyError") is KeyError
    assert find_exception("msgspec:ValidationError") is msgspec.ValidationError
    assert find_exception("os:system") is None
    assert find_exception("builtins:int") is None
    assert find_exception("never_imported_module_xyz:Error") is None
    assert find_exception("builtins:") is None
    assert find_exception("builtins:KeyError.nothing") is None
