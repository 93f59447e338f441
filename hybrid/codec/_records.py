"""Records: an attrs class or dataclass taken apart into its fields, and made again from them.

On the wire a record is a msgpack map by field name (so an ``upgrade`` function
gets the fields by name, and a missing or extra field is an error, never a
silent default or drop). It is decoded into a msgspec struct made for the class
(every field required, no unknown field allowed), then the instance is made as
the class makes one: ``cls(**init fields)`` (by each field's alias), so
converters, validators and ``__attrs_post_init__`` / ``__post_init__`` run;
fields with ``init=False`` are then set with ``object.__setattr__`` (a
restore: no ``on_setattr`` hook runs, and frozen classes work).
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Callable
from typing import Any, final

import attrs
import msgspec

from ._types import Check, field_type, inspect_type

__all__ = ["Record", "is_record", "tuple_getter"]


def is_record(cls: type) -> bool:
    """Whether `cls` is an attrs class or a dataclass."""
    return attrs.has(cls) or dataclasses.is_dataclass(cls)


def tuple_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """An attrgetter that always returns a tuple (attrgetter of one name does not)."""
    if not names:
        return lambda _obj: ()
    if len(names) == 1:
        only = operator.attrgetter(names[0])
        return lambda obj: (only(obj),)
    return operator.attrgetter(*names)


@final
class Record:
    """What the codec knows of one record class (made once per class, then kept).

    Attributes:
        cls: the class.
        names: its fields' names, in order (the keys of its wire map).
        checks: (field name, check) of each field whose annotation has Any
            slots (the value must be a JSON-like builtin there).
        struct: the msgspec struct of its fields: encodes as the wire map,
            decodes it strictly.
        decoder: the msgpack decoder of `struct`.
    """

    __slots__ = ("checks", "cls", "decoder", "getter", "init", "late", "late_getter", "names", "struct")

    def __init__(self, cls: type) -> None:
        """Read the fields of `cls` and check their annotations.

        Raises:
            CodecError: an annotation cannot be resolved or brought back, naming
                ``Class.field``.
        """
        self.cls = cls
        qualname = cls.__qualname__
        # (name, keyword of __init__ or None when init=False, declared type)
        fields: list[tuple[str, str | None, Any]]
        if attrs.has(cls):
            fields = [
                (f.name, (f.alias or f.name) if f.init else None, f.type) for f in attrs.fields(typing.cast("Any", cls))
            ]
        else:
            fields = [(f.name, f.name if f.init else None, f.type) for f in dataclasses.fields(cls)]
        self.names: tuple[str, ...] = tuple(name for name, _, _ in fields)
        hints = [field_type(cls, name, declared) for name, _, declared in fields]
        checks: list[tuple[str, Check]] = []
        for (name, _, _), hint in zip(fields, hints, strict=True):
            check = inspect_type(hint, f"{qualname}.{name}")
            if check is not None:
                checks.append((name, check))
        self.checks = tuple(checks)
        self.struct: type[msgspec.Struct] = msgspec.defstruct(
            f"{cls.__name__}Fields",
            [(name, hint) for name, hint in zip(self.names, hints, strict=True)],
            forbid_unknown_fields=True,  # a field the class does not have is an error, not a drop
        )
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(self.struct)
        self.getter = tuple_getter(self.names)
        self.init: tuple[tuple[str, str], ...] = tuple((kw, name) for name, kw, _ in fields if kw is not None)
        self.late: tuple[str, ...] = tuple(name for name, kw, _ in fields if kw is None)
        self.late_getter = tuple_getter(self.late)

    def fields(self, obj: Any) -> msgspec.Struct:
        """The fields of `obj` as the struct that encodes them."""
        return self.struct(*self.getter(obj))

    def make(self, fields: Any) -> Any:
        """A new instance from a decoded struct of fields (the class's own errors propagate)."""
        obj = self.cls(**{kw: getattr(fields, name) for kw, name in self.init})
        if self.late:
            for name, value in zip(self.late, self.late_getter(fields), strict=True):
                object.__setattr__(obj, name, value)
        return obj
