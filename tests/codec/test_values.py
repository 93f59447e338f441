"""MessageCodec's values and types: answers and outputs alone, checked against an annotation; R and T found."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import attrs
import msgspec
import pytest
from typing_extensions import Self

import hybrid
from hybrid.codec import CodecError, MessageCodec

V = TypeVar("V")


@attrs.frozen
class Item:
    sku: str
    qty: int


class Plain(hybrid.Request):  # type: ignore[type-arg]
    pass


class Count(hybrid.Request[int]):
    pass


class Keyed(hybrid.Request[dict[str, V]], Generic[V]):
    pass


class Lookup(Keyed[int]):
    pass


class Unsaid(Plain):
    pass


class Both(Unsaid, Count):
    pass


class Mixin:
    pass


class Mixed(Mixin, Count):
    pass


class Forward(hybrid.Request["Item"]):
    pass


class Open(Keyed[V]):
    pass


class Missing(hybrid.Request["Nowhere"]):  # type: ignore[name-defined]
    pass


class Summer(hybrid.Agent[list[int]]):
    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.done([1])


class Base(hybrid.Agent[V], Generic[V]):
    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.done(None)


class Concrete(Base[tuple[str, int]]):
    pass


class Untyped(hybrid.Agent):
    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.done(None)


class Opaque:
    pass


def refusal(fn: Any) -> CodecError:
    with pytest.raises(CodecError) as info:
        fn()
    return info.value


# -- answer and output types --------------------------------------------------------------------


def test_answer_type_is_the_r_of_request_through_generic_subclasses() -> None:
    """Request[int] -> int; Keyed[int] over Request[dict[str, V]] -> dict[str, int]; a string is resolved."""
    codec = MessageCodec()
    assert codec.answer_type(Count) is int
    assert codec.answer_type(Lookup) == dict[str, int]
    assert codec.answer_type(Forward) is Item
    assert codec.answer_type(Count) is int  # cached


def test_answer_type_is_any_when_not_given() -> None:
    """An unparameterized Request: Any; a type variable left inside stays (msgspec reads it as Any)."""
    codec = MessageCodec()
    assert codec.answer_type(Plain) is Any
    assert codec.answer_type(Unsaid) is Any
    assert codec.answer_type(Both) is int  # the first base says nothing: the next one is searched
    assert codec.answer_type(Mixed) is int
    assert codec.answer_type(Open) == dict[str, V]  # type: ignore[valid-type]
    assert codec.decode_value(dict[str, V], codec.encode_value(dict[str, V], {"a": [1]})) == {"a": [1]}  # type: ignore[valid-type]


def test_answer_type_refuses_what_is_not_a_request() -> None:
    """A class that is no Request, or an answer type that does not resolve: CodecError."""
    assert "not a hybrid.Request subclass" in str(refusal(lambda: MessageCodec().answer_type(Item)))
    assert "Nowhere" in str(refusal(lambda: MessageCodec().answer_type(Missing)))


def test_output_type_is_the_t_of_agent_through_generic_subclasses() -> None:
    """Agent[list[int]] -> list[int]; Base[tuple[str, int]] over Agent[V] -> tuple[str, int]; none -> Any."""
    codec = MessageCodec()
    assert codec.output_type(Summer) == list[int]
    assert codec.output_type(Concrete) == tuple[str, int]
    assert codec.output_type(Untyped) is Any
    assert codec.output_type(Base) is Any
    assert codec.output_type(Summer) == list[int]  # cached
    assert "not a hybrid.Agent subclass" in str(refusal(lambda: codec.output_type(Count)))


# -- values -------------------------------------------------------------------------------------


def test_values_round_trip_under_their_annotation() -> None:
    """An int, a list of attrs items, a tuple, an Optional and a plain Any value come back as the annotation says."""
    codec = MessageCodec()
    cases: list[tuple[Any, Any]] = [
        (int, 3),
        (list[Item], [Item("a", 1)]),
        (tuple[str, int], ("x", 1)),
        (Item | None, None),
        (Any, {"k": [1, 2.5, None]}),
    ]
    for annotation, value in cases:
        assert codec.decode_value(annotation, codec.encode_value(annotation, value)) == value


def test_a_value_that_does_not_fit_its_annotation_is_refused_naming_the_path() -> None:
    """A str where int is expected, an int over 64 bits, a set in an Any slot: CodecError with the path."""
    codec = MessageCodec()
    text = str(refusal(lambda: codec.encode_value(list[Item], [Item("a", 1), Item("b", "x")])))  # type: ignore[arg-type]
    assert "value[1].qty: Expected `int`, got `str` (the value must be a list" in text
    assert "value[0]: cannot encode int" in str(refusal(lambda: codec.encode_value(list[int], [2**70])))
    assert "value['k']: a set" in str(refusal(lambda: codec.encode_value(dict[str, Any], {"k": {1}})))
    text = str(refusal(lambda: codec.encode_value(list[Opaque], [])))
    assert "value: type list[tests.codec.test_values.Opaque]: msgspec cannot encode and decode Opaque" in text


def test_bytes_that_do_not_decode_into_the_annotation_are_refused() -> None:
    """decode_value of a str payload as int, or of garbage: CodecError."""
    codec = MessageCodec()
    data = codec.encode_value(str, "x")
    assert "value: the bytes do not decode into int: Expected `int`, got `str`" in str(
        refusal(lambda: codec.decode_value(int, data))
    )
    assert "do not decode" in str(refusal(lambda: codec.decode_value(int, b"\xc1")))


def test_decoders_are_cached_per_annotation_and_never_mixed_up() -> None:
    """One decoder per annotation, made once; list[int] and list[str], Literal[1] and Literal[True] stay apart."""
    codec = MessageCodec()
    ints = codec.encode_value(list[int], [1, 2])
    assert codec.decode_value(list[int], ints) == [1, 2]
    assert "Expected `str`" in str(refusal(lambda: codec.decode_value(list[str], ints)))
    plan = codec._values[list[int]]
    codec.encode_value(list[int], [3])
    assert codec._values[list[int]] is plan
    one = codec.encode_value(Literal[1], 1)
    assert codec.decode_value(Literal[1], one) == 1
    refusal(lambda: codec.decode_value(Literal[True], one))
    refusal(lambda: codec.encode_value(Literal[True], 1))
    assert codec.decode_value(Annotated[int, msgspec.Meta(ge=0)], one) == 1
    refusal(lambda: codec.decode_value(Annotated[int, msgspec.Meta(ge=5)], one))


def test_an_unhashable_annotation_works_uncached() -> None:
    """An annotation that cannot be a dict key (Annotated with a list in it) still encodes and decodes."""
    codec = MessageCodec()
    annotation = Annotated[int, ["not", "hashable"]]
    assert codec.decode_value(annotation, codec.encode_value(annotation, 4)) == 4
    assert codec._values == {}
