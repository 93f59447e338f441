"""Types and values: what an annotation lets the codec bring back, and why a value does not fit.

Shared by the message codec (`hybrid.codec`) and the checkpoint codec
(`hybrid.durable`): both decode a value only into the type its annotation
names, with msgspec, never into a type the data chooses. Each raises its own
error from these refusals (`CodecError` here; durable turns them into a
`CheckpointError` with the same text).

What is here:

- `inspect_type`: refuse an annotation msgspec cannot bring back as itself, and
  compile the check of its ``Any`` slots (``Any``, ``object``, an unannotated
  slot, also nested as in ``list[Any]``): only JSON-like builtins come back as
  themselves from those (None, bool, int, float, str, bytes, and lists and
  str-keyed dicts of them), so anything else is refused at encode time, "annotate it".
- `inspect_shape`: the check, when a checkpoint is read, that the attrs classes
  and dataclasses inside an annotation still have the fields they were saved
  with (msgspec would drop a field they lost and default one they gained).
- `run_check`: a compiled check run on a value, its recursion bounded
  (`run_shape` for a shape check).
- `culprit` and `split_message`: where in a value (``.items[2].qty``) an encode
  or a decode failed, for messages that name the field path.
- `resolve`, `field_type`: annotations evaluated where they were written
  (strings under ``from __future__ import annotations``).
- `type_argument` (`output_type`, `answer_type`): the ``T`` of ``Agent[T]`` and
  the ``R`` of ``Request[R]``, through generic subclasses.
- `find_exception`: an exception type by ``module:qualname`` among the modules
  already imported (it never imports one).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import re
import sys
import types
import typing
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final, NamedTuple, TypeVar, cast, final

import attrs
import msgspec
import msgspec.inspect as mi

from hybrid import Agent, Request

from ._errors import CodecError

__all__ = [
    "ENCODE_ERRORS",
    "RAW_FIELDS",
    "RAW_ITEMS",
    "Check",
    "Problem",
    "Shape",
    "Visit",
    "answer_type",
    "array_length",
    "as_array",
    "culprit",
    "field_type",
    "find_exception",
    "header_size",
    "inspect_shape",
    "inspect_type",
    "map_length",
    "output_type",
    "plain",
    "resolve",
    "run_check",
    "run_shape",
    "split_message",
    "type_argument",
    "type_text",
]

# msgspec raises these when a value cannot be encoded (an unsupported type, an
# int beyond 64 bits, a cycle): each codec turns them into its own error.
ENCODE_ERRORS: Final = (msgspec.MsgspecError, TypeError, ValueError, OverflowError, RecursionError)

# What comes back as itself from a slot annotated Any: exact types, so that a
# subclass (an IntEnum, a str subclass) is refused rather than silently changed.
_PLAIN_SCALARS: Final[frozenset[type]] = frozenset({type(None), bool, int, float, str, bytes})
_PLAIN_TEXT: Final = (
    "only None, bool, int, float, str, bytes, and lists and str-keyed dicts of them come back "
    "as themselves from a slot annotated Any or object or not annotated"
)

# "<message> - at `$<path>`" (or "- at `key` in `$<path>`", a dict key): where msgspec found a mismatch.
_AT: Final = re.compile(r"^(?P<message>.*) - at (?P<key>`key` in )?`\$(?P<path>.*)`$", re.DOTALL)

_ZERO: Final = datetime.timedelta(0)

# A problem a check found: (where inside the value, what is wrong).
Problem = tuple[str, str]
Check = Callable[[Any], Problem | None]


# -- annotations, evaluated where they were written ------------------------------------------


def field_type(cls: type, name: str, declared: Any) -> Any:
    """The resolved annotation of field `name` of an attrs class or dataclass.

    Evaluated where the field was declared (the class in the MRO that annotates
    it, in its own module), so a subclass in another module resolves its
    parent's fields as the parent wrote them; a type variable of a generic
    parent is what `cls` makes of it (``item: T`` of ``Holder[T]`` is a
    ``Point`` in ``class PointHolder(Holder[Point])``). `declared` (the field's ``type``)
    serves when no class annotates it: None is ``attrs.field()`` without an
    annotation, which is Any.
    """
    where = f"{cls.__qualname__} field {name!r}"
    for klass in cls.__mro__:
        annotations = inspect.get_annotations(klass)  # its own, unevaluated
        if name in annotations:
            module = sys.modules.get(klass.__module__)
            found = resolve(annotations[name], getattr(module, "__dict__", {}), dict(vars(klass)), where)
            # A type variable, or an alias using one (``T | None``, ``list[T]``); never a bare
            # generic class (``Box``), whose own parameters are not the field's.
            generic = typing.get_origin(found) is not None and bool(getattr(found, "__parameters__", ()))
            if klass is not cls and (isinstance(found, TypeVar) or generic):
                # A generic base's type variable, as `cls` parameterizes it (``Holder[Point]``).
                found = _substitute(found, _bindings(cls, klass))
            return found
    if declared is None:
        return Any
    module = sys.modules.get(cls.__module__)
    return resolve(declared, getattr(module, "__dict__", {}), dict(vars(cls)), where)


def resolve(annotation: Any, globalns: dict[str, Any], localns: dict[str, Any] | None, where: str) -> Any:
    """Evaluate one annotation (a string under ``from __future__ import annotations``).

    Raises:
        CodecError: naming `where`: a name the annotation uses is not found.
    """
    holder = types.SimpleNamespace(__annotations__={"value": annotation})
    try:
        return typing.get_type_hints(holder, globalns, localns, include_extras=True)["value"]
    except Exception as err:
        raise CodecError(
            f"{where}: cannot resolve its annotation {annotation!r}: {err} "
            "(the types a codec decodes must be importable: define them at module level)"
        ) from err


# -- the parameter of a generic base: Agent[T], Request[R] -----------------------------------


def output_type(cls: type) -> Any:
    """The ``T`` of ``Agent[T]`` for the agent class `cls`; Any when not given."""
    return type_argument(cls, Agent, f"{cls.__qualname__} output (Agent[...])")


def answer_type(cls: type) -> Any:
    """The ``R`` of ``Request[R]`` for the request class `cls`; Any when not given."""
    return type_argument(cls, Request, f"{cls.__qualname__} answer (Request[...])")


def type_argument(cls: type, root: type, where: str) -> Any:
    """The argument `cls` gives the one type parameter of the generic class `root`.

    Found through generic subclasses: with ``class Keyed(Request[dict[str, V]])``
    and ``class Lookup(Keyed[int])``, the answer of ``Lookup`` is
    ``dict[str, int]``. Any when `cls` never parameterizes `root` (or leaves a
    type variable in its place). The argument is resolved in the module of
    `cls` when it is a string (a forward reference).

    Raises:
        CodecError: naming `where`: the argument names a type that is not found.
    """
    found = _search(cls, root, {})
    if found is _MISSING or isinstance(found, TypeVar):
        return Any
    module = sys.modules.get(cls.__module__)
    return resolve(found, getattr(module, "__dict__", {}), None, where)


_MISSING: Final = object()


def _search(klass: type, root: type, subst: dict[Any, Any]) -> Any:
    """The argument of `root` among the bases of `klass`, type variables substituted by `subst`."""
    bases: tuple[Any, ...] = klass.__dict__.get("__orig_bases__", klass.__bases__)
    for base in bases:
        origin = typing.get_origin(base) or base
        args = tuple(_substitute(arg, subst) for arg in typing.get_args(base))
        if origin is root:
            return args[0] if args else _MISSING
        if isinstance(origin, type) and issubclass(origin, root):
            generic: type = origin
            params: tuple[Any, ...] = getattr(generic, "__parameters__", ())
            found = _search(generic, root, dict(zip(params, args, strict=False)))
            if found is not _MISSING:
                return found
    return _MISSING


def _bindings(klass: type, target: type) -> dict[Any, Any]:
    """The type arguments `klass` gives the type parameters of its generic base `target` (by type variable)."""
    bases: tuple[Any, ...] = klass.__dict__.get("__orig_bases__", klass.__bases__)
    for base in bases:
        origin = typing.get_origin(base) or base
        if not (isinstance(origin, type) and issubclass(origin, target)):
            continue
        params: tuple[Any, ...] = getattr(origin, "__parameters__", ())
        given = dict(zip(params, typing.get_args(base), strict=False))
        if origin is target:
            return given
        inner = _bindings(origin, target)  # in terms of `origin`'s own parameters
        return {param: _substitute(arg, given) for param, arg in inner.items()}
    return {}  # pragma: no cover - `target` is a base of `klass`: some base leads to it


def _substitute(arg: Any, subst: dict[Any, Any]) -> Any:
    if isinstance(arg, TypeVar):
        return subst.get(arg, arg)
    params: tuple[Any, ...] = getattr(arg, "__parameters__", ())
    if params:
        try:
            return arg[tuple(subst.get(p, p) for p in params)]
        except TypeError:  # pragma: no cover - a generic alias that refuses substitution
            return arg
    return arg


# -- what a type allows: checked once, its Any slots checked at each encode -----------------


def inspect_type(annotation: Any, where: str, *, exact_dicts: bool = False) -> Check | None:
    """Refuse an annotation msgspec cannot bring back; return the check of what it would not bring back as given.

    The check is None for most types; else it takes a value that decodes under
    `annotation` and returns the first (path, problem) of a part that would come
    back as something else, or None: a value in an Any slot that is not a
    JSON-like builtin, an instance of another class where a class is annotated,
    an aware datetime outside UTC. A dict is taken for an attrs class or
    dataclass (msgspec takes one); with `exact_dicts` (checkpoints, whose resume
    checks the saved fields, `inspect_shape`) only with the keys the class's
    own map would have (`_FieldKeys`).

    Raises:
        CodecError: naming `where` and the type.
    """
    try:
        msgspec.msgpack.Decoder(annotation)
        info = mi.type_info(annotation)
    except Exception as err:
        raise CodecError(f"{where}: type {type_text(annotation)} is not supported by the codec: {err}") from err
    nodes = _nodes(info)
    for node in nodes.values():
        problem = _unsupported(node)
        if problem is not None:
            raise CodecError(f"{where}: type {type_text(annotation)}: {problem}")
    return _compile(info, _reaching(nodes, _changes), {}, functools.partial(_build, exact_dicts=exact_dicts))


def type_text(annotation: Any) -> str:
    """How messages name a type: a class by its qualname, anything else by its repr."""
    return annotation.__qualname__ if isinstance(annotation, type) else repr(annotation)


def run_check(check: Check, value: Any) -> Problem | None:
    """``check(value)``: a value nested too deeply for the check's recursion is a problem, never a RecursionError."""
    try:
        return check(value)
    except RecursionError:
        return ("", "it is nested too deeply to check (Python's recursion limit): flatten it")


def _children(node: mi.Type) -> list[mi.Type]:
    if isinstance(node, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return [node.item_type]
    if isinstance(node, mi.TupleType):
        return list(node.item_types)
    if isinstance(node, mi.DictType):
        return [node.key_type, node.value_type]
    if isinstance(node, mi.UnionType):
        return list(node.types)
    if isinstance(node, mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType):
        return [f.type for f in node.fields]
    if isinstance(node, mi.Metadata):
        return [node.type]
    return []


def _nodes(root: mi.Type) -> dict[int, mi.Type]:
    """Every node of a type tree by id (recursive types make it a graph: each node once)."""
    seen: dict[int, mi.Type] = {}
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            todo.extend(_children(node))
    return seen


def _is_any(node: mi.Type) -> bool:
    return isinstance(node, mi.AnyType) or (isinstance(node, mi.CustomType) and node.cls is object)


def _unsupported(node: mi.Type) -> str | None:
    if isinstance(node, mi.CustomType) and node.cls is not object:
        return f"msgspec cannot encode and decode {node.cls.__qualname__}: use a type it supports"
    if isinstance(node, mi.DataclassType) and attrs.has(node.cls):
        private = [f.name for f in node.fields if f.name.startswith("_")]
        if private:
            # msgspec leaves out an attrs class's private fields when it encodes one.
            return (
                f"the attrs class {node.cls.__qualname__} has private fields ({', '.join(private)}), "
                "which msgspec does not encode: make them public, or use a dataclass or msgspec.Struct"
            )
    return None


def _changes(node: mi.Type) -> bool:
    """Whether some values that decode under `node` come back as something else (checked at encode).

    An Any slot; an attrs class, dataclass or Struct (a subclass instance, or a
    dict, comes back as the class itself, its own fields dropped); a datetime
    (an aware one comes back in UTC, its zone lost).
    """
    return _is_any(node) or isinstance(node, mi.StructType | mi.DataclassType | mi.DateTimeType)


def _reaching(nodes: dict[int, mi.Type], wanted: Callable[[mi.Type], bool]) -> set[int]:
    """The ids of the nodes from which a `wanted` node is reachable (a fixed point: cycles are fine)."""
    reach = {key for key, node in nodes.items() if wanted(node)}
    changed = True
    while changed:
        changed = False
        for key, node in nodes.items():
            if key not in reach and any(id(child) in reach for child in _children(node)):
                reach.add(key)
                changed = True
    return reach


_F = TypeVar("_F", bound=Callable[..., Any])  # a check (`Check`) or a step of a shape walk (`Visit`)


def _compile(
    node: mi.Type, reach: set[int], memo: dict[int, _F], build: Callable[[mi.Type, set[int], dict[int, _F]], _F]
) -> _F | None:
    """What `build` makes of `node`, or None if nothing it checks is under `node` (most types)."""
    if id(node) not in reach:
        return None
    known = memo.get(id(node))
    if known is not None:
        return known
    cell: list[_F] = []

    def forward(*args: Any) -> Any:  # a recursive type reaches itself through this
        return cell[0](*args)

    memo[id(node)] = cast("_F", forward)
    built = build(node, reach, memo)
    cell.append(built)
    memo[id(node)] = built
    return built


def _build(node: mi.Type, reach: set[int], memo: dict[int, Check], *, exact_dicts: bool) -> Check:
    again = functools.partial(_build, exact_dicts=exact_dicts)
    if _is_any(node):
        return plain
    if isinstance(node, mi.Metadata):
        inner = _compile(node.type, reach, memo, again)
        assert inner is not None
        return inner
    if isinstance(node, mi.UnionType):
        if any(_is_any(t) for t in node.types):
            return plain
        branches = [(_accepts(t), c) for t in node.types if (c := _compile(t, reach, memo, again)) is not None]

        def union(value: Any) -> Problem | None:
            for accepts, check in branches:
                if accepts(value):
                    return check(value)
            return None  # a branch without Any slots: the decode check covers it

        return union
    if isinstance(node, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        item = _compile(node.item_type, reach, memo, again)
        assert item is not None
        if isinstance(item, _Exact):
            return item.of_items

        def items(value: Any) -> Problem | None:
            for index, element in enumerate(value):
                found = item(element)
                if found is not None:
                    return (f"[{index}]{found[0]}", found[1])
            return None

        return items
    if isinstance(node, mi.TupleType):
        checks = [(i, c) for i, t in enumerate(node.item_types) if (c := _compile(t, reach, memo, again)) is not None]

        def fixed(value: Any) -> Problem | None:
            for index, check in checks:
                found = check(value[index])
                if found is not None:
                    return (f"[{index}]{found[0]}", found[1])
            return None

        return fixed
    if isinstance(node, mi.DictType):
        key_check = _compile(node.key_type, reach, memo, again)
        value_check = _compile(node.value_type, reach, memo, again)

        def mapping(value: Any) -> Problem | None:
            for k, v in value.items():
                found = None if key_check is None else _plain_key(k)
                if found is None and value_check is not None:
                    found = value_check(v)
                if found is not None:
                    return (f"[{k!r}]{found[0]}", found[1])
            return None

        return mapping
    if isinstance(node, mi.DateTimeType):
        return _utc
    assert isinstance(node, mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType)
    named = [(f.name, c) for f in node.fields if (c := _compile(f.type, reach, memo, again)) is not None]

    def by_key(value: Any) -> Problem | None:
        for name, check in named:
            if name in value:
                found = check(value[name])
                if found is not None:
                    return (f"[{name!r}]{found[0]}", found[1])
        return None

    if isinstance(node, mi.TypedDictType):
        return by_key

    def attributes(value: Any) -> Problem | None:
        for name, check in named:
            found = check(getattr(value, name))
            if found is not None:
                return (f".{name}{found[0]}", found[1])
        return None

    if isinstance(node, mi.NamedTupleType):
        return attributes
    exact = _class_of(node.cls)
    keys = _FieldKeys(node) if exact_dicts and isinstance(node, mi.DataclassType) else None
    if not named:
        return _Exact(exact, keys)

    def instance(value: Any) -> Problem | None:
        if type(value) is exact:
            return attributes(value)
        if isinstance(value, dict):  # msgspec takes a mapping for the class: check its items by name
            mapping: dict[Any, Any] = value  # pyright: ignore[reportUnknownVariableType]
            return _dict_for(keys, mapping) or by_key(mapping)
        return _other_class(value, exact)

    return instance


def _class_of(cls: Any) -> type:
    """The class itself of a node's class, which may be a parameterized generic (``Box[Point]``)."""
    origin: type = typing.get_origin(cls) or cls
    return origin


def _accepts(node: mi.Type) -> Callable[[Any], bool]:
    """Which values a union branch with a check takes (msgspec allows one of each kind)."""
    if isinstance(node, mi.Metadata):
        return _accepts(node.type)
    if isinstance(node, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType | mi.TupleType):
        return lambda value: isinstance(value, list | tuple | set | frozenset)
    if isinstance(node, mi.DictType | mi.TypedDictType):
        return lambda value: isinstance(value, dict)
    if isinstance(node, mi.StructType | mi.DataclassType):
        cls = _class_of(node.cls)
        # A union has one mapping-like branch at most (msgspec's rule): a dict goes to this one.
        return lambda value: isinstance(value, cls | dict)
    if isinstance(node, mi.NamedTupleType):
        cls = _class_of(node.cls)
        return lambda value: isinstance(value, cls)
    if isinstance(node, mi.DateTimeType):
        return lambda value: isinstance(value, datetime.datetime)
    return lambda _value: False  # pragma: no cover - other nodes have nothing to check


def plain(value: Any) -> Problem | None:
    """Refuse what a slot annotated Any would not bring back as itself."""
    kind: type = type(value)  # pyright: ignore[reportUnknownVariableType]
    if kind in _PLAIN_SCALARS:
        return None
    if kind is list:
        for index, element in enumerate(value):
            found = plain(element)
            if found is not None:
                return (f"[{index}]{found[0]}", found[1])
        return None
    if kind is dict:
        for k, v in value.items():
            found = _plain_key(k) or plain(v)
            if found is not None:
                return (f"[{k!r}]{found[0]}", found[1])
        return None
    return ("", f"a {kind.__qualname__} would come back as another type: {_PLAIN_TEXT}; annotate it with its type")


def _other_class(value: Any, cls: type) -> Problem:
    """An instance of another class (a subclass, or one with the same fields) where `cls` is annotated."""
    adds = ", without what it adds" if isinstance(value, cls) else ""
    return (
        "",
        f"a {type(value).__qualname__} would come back as a {cls.__qualname__}{adds}: "
        "annotate it with its own class (or a union of the classes it may be)",
    )


@final
class _Exact:
    """The check of a value class with nothing else to check inside: refuse an instance of another class.

    It would come back as the class itself (msgspec decodes the annotation's
    class): a subclass's instance without what the subclass adds, or an instance
    of a class with the same fields. A mapping is taken (msgspec takes it for the
    class) if it has the keys the class's own map would (`keys`: an attrs class
    or dataclass). `of_items` checks a collection at C speed (the set of its
    items' types) when they are all of the class.
    """

    __slots__ = ("cls", "keys", "taken")

    def __init__(self, cls: type, keys: _FieldKeys | None) -> None:
        self.cls = cls
        self.keys = keys
        self.taken: frozenset[type] = frozenset({cls} if keys is not None else {cls, dict})
        """The item types `of_items` takes at once (a dict too, where any dict is taken)."""

    def __call__(self, value: Any) -> Problem | None:
        kind: type = type(value)  # pyright: ignore[reportUnknownVariableType]
        if kind is self.cls:
            return None
        if kind is dict:  # a mapping: msgspec takes it for the class
            return _dict_for(self.keys, value)
        return _other_class(value, self.cls)

    def of_items(self, value: Any) -> Problem | None:
        if set(map(type, value)) <= self.taken:
            return None
        for index, element in enumerate(value):
            found = self(element)
            if found is not None:
                return (f"[{index}]{found[0]}", found[1])
        return None  # dicts, each with the class's keys


def _dict_for(keys: _FieldKeys | None, value: dict[Any, Any]) -> Problem | None:
    """Refuse a dict given for a class that would not come back as given: a key dropped, a default added.

    Only where `keys` are given (checkpoints: resumed, such a dict would look like
    a class that changed since it was saved).
    """
    if keys is None or value.keys() == keys.known:
        return None
    problem = keys.problem(value, given=True)
    return None if problem is None else ("", problem)


def _utc(value: Any) -> Problem | None:
    """Refuse an aware datetime in another zone than UTC: msgpack keeps the instant, in UTC."""
    zone = getattr(value, "tzinfo", None)
    if zone is None or zone is datetime.UTC or zone.utcoffset(None) == _ZERO:  # UTC under any name
        return None
    return (
        "",
        f"an aware datetime comes back in UTC, its zone ({zone}) lost: convert it with "
        ".astimezone(datetime.UTC) first, or keep the zone in a field of its own",
    )


def _plain_key(key: Any) -> Problem | None:
    if type(key) is str:
        return None
    return ("", f"a dict key {key!r} that is not a str would come back changed: {_PLAIN_TEXT}; annotate it")


# -- the saved shape of value classes: checked when a checkpoint is read ---------------------


class _FieldKeys:
    """The keys msgspec writes for an attrs class or dataclass: each must be known, some are always there.

    Every field is known. One may be missing only where msgspec leaves it out
    (`_optional_fields`): a field holding `msgspec.UNSET`; an unslotted
    dataclass's ``init=False`` field with a plain default (the instance may not
    have set it); any defaulted field of a class whose ``__init__`` is its own,
    not the generated one. Both checks share these rules: a checkpoint's saved
    map (`inspect_shape`) and a dict given where the class is annotated
    (`inspect_type` with ``exact_dicts``).
    """

    __slots__ = ("cls", "known", "required")

    def __init__(self, node: mi.DataclassType) -> None:
        self.cls = _class_of(node.cls)
        self.known = frozenset(f.encode_name for f in node.fields)
        optional = _optional_fields(self.cls, node)
        self.required = tuple(f.encode_name for f in node.fields if f.name not in optional)

    def problem(self, keys: Collection[Any], *, given: bool) -> str | None:
        """What is wrong with a map of `keys` for the class (a key that is no field, a field it lacks), or None.

        `given`: the map is a dict given for the class, being saved; else a saved map, being resumed.
        """
        cls = self.cls.__qualname__
        for key in keys:
            if key not in self.known:
                if given:
                    return f"a dict given for a {cls} has a key {key!r} that is none of its fields: it would be dropped"
                return f"the saved value has a field {key!r} that {cls} does not have (it would be dropped)"
        for key in self.required:
            if key not in keys:
                if given:
                    return f"a dict given for a {cls} lacks its field {key!r}: it would come back with a default"
                return f"{cls} has a field {key!r} that the saved value lacks (it would take its default)"
        return None


def _optional_fields(cls: type, node: mi.DataclassType) -> frozenset[str]:
    """The fields of `cls` msgspec may leave out when it writes one (`_FieldKeys`)."""
    defaulted: list[str]
    if not _generated_init(cls):  # the user's own __init__ may leave a defaulted field unset
        if attrs.has(cls):
            defaulted = [f.name for f in attrs.fields(cls) if f.default is not attrs.NOTHING]
        else:
            missing = dataclasses.MISSING
            fields = dataclasses.fields(cls)
            defaulted = [f.name for f in fields if f.default is not missing or f.default_factory is not missing]
    elif attrs.has(cls) or "__slots__" in cls.__dict__:  # attrs' __init__, a slotted dataclass's: all set
        defaulted = []
    else:  # a dataclass's plain default of an init=False field stays on the class until the instance sets it
        defaulted = [f.name for f in dataclasses.fields(cls) if not f.init and f.default is not dataclasses.MISSING]
    return frozenset(defaulted) | _unset_fields(cls, node)


def _generated_init(cls: type) -> bool:
    """Whether the ``__init__`` of `cls` is the one ``@dataclass`` or attrs wrote (not the user's, not object's)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        code = getattr(init, "__code__", None)
        where = "" if code is None else code.co_filename
        if "__dataclass_fields__" in klass.__dict__ and where == "<string>":
            return True
        return "__attrs_attrs__" in klass.__dict__ and where.startswith("<attrs generated")
    return False  # pragma: no cover - object defines __init__


def _unset_fields(cls: type, node: mi.DataclassType) -> frozenset[str]:
    """The fields annotated to take `msgspec.UNSET` (as `node.cls` parameterizes `cls`): msgspec leaves those out."""
    bindings = dict(zip(getattr(cls, "__parameters__", ()), typing.get_args(node.cls), strict=False))
    found: list[str] = []
    for f in node.fields:
        hint = _substitute(field_type(cls, f.name, None), bindings)
        if f.default is msgspec.UNSET or _takes_unset(hint):
            found.append(f.name)
    return frozenset(found)


def _takes_unset(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        return _takes_unset(typing.get_args(hint)[0])
    if hint is msgspec.UnsetType:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and msgspec.UnsetType in typing.get_args(hint)


# Where the walk is: None at the root, else (the parent's place, a segment): ".name", an
# array index, or (raw key, entry number) for a dict's value. Made per part, rendered
# (`_render`) only for a problem.
_Place = tuple[Any, Any] | None
Visit = Callable[[Any, _Place, "_Walk"], "tuple[_Place, str] | None"]
"""One node of a shape check: checks one undecoded value, queues its parts (``visit(raw, place, walk)``)."""

RAW_ITEMS: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])
"""An array's items, each left undecoded."""
RAW_FIELDS: Final = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
"""A map with str keys, its values left undecoded."""


@final
class Shape(NamedTuple):
    """A compiled shape check (`inspect_shape`): run it with `run_shape`."""

    visit: Visit
    classes: frozenset[int]
    """The value classes it checks (their type nodes' ids)."""


@final
class _Walk:
    """One run of a shape check: the parts still to visit, and the classes checked already.

    Each class is checked at its first, outermost instance: every instance of a
    class is written alike, so one that lost or gained a field shows at the
    first. A part is visited only if an unchecked class may be inside.
    """

    __slots__ = ("checked", "todo")

    def __init__(self) -> None:
        self.todo: deque[tuple[_Place, Visit, Any, frozenset[int]]] = deque()
        self.checked: set[int] = set()

    def add(self, place: _Place, visit: Visit, raw: Any, classes: frozenset[int]) -> None:
        if not classes <= self.checked:
            self.todo.append((place, visit, raw, classes))


def inspect_shape(annotation: Any) -> Shape | None:
    """The check that the attrs classes and dataclasses under `annotation` still have their saved fields.

    msgspec decodes such a class leniently: a saved field the class no longer
    has is dropped, and a field it gained since takes its default. Where a value
    must come back as it was saved (a checkpoint), both are refused. Run the
    check with `run_shape` on the saved bytes; it returns the (path, problem) of
    a class's map whose keys are not the class's fields (`_FieldKeys`), or None.
    A msgspec Struct keeps msgspec's own rules (its ``forbid_unknown_fields`` and
    defaults are its schema evolution), but the classes inside it are checked.
    None when no attrs class or dataclass is inside (most annotations).

    `annotation` must have passed `inspect_type`.
    """
    info = mi.type_info(annotation)
    nodes = _nodes(info)
    below = _classes_below(nodes)
    visit = _compile(info, _reaching(nodes, _is_value_class), {}, functools.partial(_build_shape, below=below))
    return None if visit is None else Shape(visit, below[id(info)])


def run_shape(shape: Shape, raw: bytes | msgspec.Raw) -> Problem | None:
    """The problem `shape` (made by `inspect_shape`) finds in the undecoded value `raw`, or None.

    The walk goes level by level, never recursing (a value as deep as can be
    saved is checked, its outer levels first), checks each class at its first
    instance (`_Walk`), and decodes only the maps and arrays on the way to a
    class not checked yet: any other part stays undecoded, whatever it holds.

    Raises:
        msgspec.DecodeError: `raw` is damaged (it did not decode under its types).
    """
    walk = _Walk()
    walk.add(None, shape.visit, raw, shape.classes)
    todo, checked = walk.todo, walk.checked
    while todo:
        place, step, value, classes = todo.popleft()
        if classes <= checked:  # found meanwhile, elsewhere
            continue
        problem = step(value, place, walk)
        if problem is not None:
            return (_render(problem[0]), problem[1])
    return None


def _classes_below(nodes: dict[int, mi.Type]) -> dict[int, frozenset[int]]:
    """For each node (by id), the value classes it holds, itself included (a fixed point: cycles are fine)."""
    below = {key: {key} if _is_value_class(node) else set[int]() for key, node in nodes.items()}
    changed = True
    while changed:
        changed = False
        for key, node in nodes.items():
            for child in _children(node):
                if not below[id(child)] <= below[key]:
                    below[key] |= below[id(child)]
                    changed = True
    return {key: frozenset(found) for key, found in below.items()}


def _render(place: _Place) -> str:
    """A place of the walk as a path: ``.items['a'][0]``."""
    segments: list[str] = []
    while place is not None:
        place, segment = place
        if type(segment) is str:
            segments.append(segment)
        elif type(segment) is int:
            segments.append(f"[{segment}]")
        else:
            raw_key, entry = segment
            segments.append(f"[{_key_label(raw_key, entry)}]")
    return "".join(reversed(segments))


def map_length(data: bytes | msgspec.Raw, offset: int = 0) -> int:
    """The number of entries of the msgpack map at `offset` of `data`, from its header; -1 if there is none."""
    return _length(data, offset, 0x80, 0xDE)


def array_length(data: bytes | msgspec.Raw, offset: int = 0) -> int:
    """The number of items of the msgpack array at `offset` of `data`, from its header; -1 if there is none."""
    return _length(data, offset, 0x90, 0xDC)


def _length(data: bytes | msgspec.Raw, offset: int, fixed: int, sized: int) -> int:
    view = memoryview(data)[offset:]
    first = view[0] if len(view) > 0 else -1
    if fixed <= first <= fixed + 0x0F:
        return first & 0x0F
    if first == sized and len(view) >= 3:  # 16 bits
        return int.from_bytes(view[1:3], "big")
    if first == sized + 1 and len(view) >= 5:  # 32 bits
        return int.from_bytes(view[1:5], "big")
    return -1


def header_size(first: int) -> int:
    """The bytes of a msgpack array or map header that starts with byte `first` (1, 3 or 5)."""
    if first in (0xDC, 0xDE):  # 16-bit length
        return 3
    if first in (0xDD, 0xDF):  # 32-bit length
        return 5
    return 1


def as_array(map_data: bytes | msgspec.Raw) -> bytes:
    """The msgpack map `map_data` as an array of its keys and values in turn (a key named twice stays twice)."""
    view = memoryview(map_data)
    header = header_size(view[0])
    items = 2 * map_length(map_data)
    if items < 16:
        head = bytes([0x90 | items])
    elif items < 0x10000:
        head = b"\xdc" + items.to_bytes(2, "big")
    else:
        head = b"\xdd" + items.to_bytes(4, "big")
    return head + bytes(view[header:])


def _is_value_class(node: mi.Type) -> bool:
    return isinstance(node, mi.DataclassType)


def _build_shape(node: mi.Type, reach: set[int], memo: dict[int, Visit], *, below: dict[int, frozenset[int]]) -> Visit:
    again = functools.partial(_build_shape, below=below)
    if isinstance(node, mi.Metadata):
        inner = _compile(node.type, reach, memo, again)
        assert inner is not None
        return inner
    if isinstance(node, mi.UnionType):
        branches = [(_saved_as(t), c) for t in node.types if (c := _compile(t, reach, memo, again)) is not None]

        def union(raw: Any, place: _Place, walk: _Walk) -> tuple[_Place, str] | None:
            for saved_as, visit in branches:
                if saved_as(raw):
                    return visit(raw, place, walk)
            return None

        return union
    if isinstance(node, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        item = _compile(node.item_type, reach, memo, again)
        assert item is not None
        item_classes = below[id(node.item_type)]

        def items(raw: Any, place: _Place, walk: _Walk) -> tuple[_Place, str] | None:
            parts = RAW_ITEMS.decode(raw)
            return _next_part((parts, 0, item, item_classes, False), place, walk) if parts else None

        return items
    if isinstance(node, mi.TupleType | mi.NamedTupleType):
        kinds = node.item_types if isinstance(node, mi.TupleType) else [f.type for f in node.fields]
        checked = [
            (i, i, c, below[id(t)]) for i, t in enumerate(kinds) if (c := _compile(t, reach, memo, again)) is not None
        ]
        return _positions(checked)
    if isinstance(node, mi.DictType):
        # Only the values: a key holding a class is refused when saved (`inspect_type`: not a str).
        value_visit = _compile(node.value_type, reach, memo, again)
        if value_visit is None:  # pragma: no cover - see above: only a key holds a class
            return _no_visit
        value_classes = below[id(node.value_type)]

        def mapping(raw: Any, place: _Place, walk: _Walk) -> tuple[_Place, str] | None:
            parts = RAW_ITEMS.decode(as_array(raw))  # keys and values in turn
            return _next_part((parts, 0, value_visit, value_classes, True), place, walk) if parts else None

        return mapping
    assert isinstance(node, mi.StructType | mi.DataclassType | mi.TypedDictType)
    named = [(f, c, below[id(f.type)]) for f in node.fields if (c := _compile(f.type, reach, memo, again)) is not None]
    if isinstance(node, mi.StructType) and node.array_like:
        skip = 0 if node.tag_field is None else 1  # a tagged array-like Struct's tag comes first
        where = {f.name: i for i, f in enumerate(node.fields)}
        return _positions([(where[f.name] + skip, f".{f.name}", c, classes) for f, c, classes in named])
    children = [(f.encode_name, f".{f.name}", c, classes) for f, c, classes in named]
    keys = _FieldKeys(node) if isinstance(node, mi.DataclassType) else None
    me = id(node)

    def by_key(raw: Any, place: _Place, walk: _Walk) -> tuple[_Place, str] | None:
        fields = RAW_FIELDS.decode(raw)
        if keys is not None:
            if fields.keys() != keys.known and (problem := keys.problem(fields, given=False)) is not None:
                return (place, problem)
            walk.checked.add(me)
        for key, name, visit, classes in children:
            if key in fields:
                walk.add((place, name), visit, fields[key], classes)
        return None

    return by_key


def _next_part(state: Any, place: _Place, walk: _Walk) -> tuple[_Place, str] | None:
    """Visit one part of an array (or one value of a map), and queue the next while a class is unchecked.

    `state`: (parts, index, visit, classes, keyed): a map's parts are its keys
    and values in turn. One part at a time: a collection of 100,000 instances of
    a class is checked at its first.
    """
    parts: list[msgspec.Raw]
    index: int
    visit: Visit
    classes: frozenset[int]
    keyed: bool
    parts, index, visit, classes, keyed = state
    segment: int | tuple[msgspec.Raw, int]
    if keyed:
        part, segment, more = parts[2 * index + 1], (parts[2 * index], index), 2 * index + 3 < len(parts)
    else:
        part, segment, more = parts[index], index, index + 1 < len(parts)
    if more:
        walk.add(place, _next_part, (parts, index + 1, visit, classes, keyed), classes)
    if classes <= walk.checked:
        return None
    return visit(part, (place, segment), walk)


def _no_visit(raw: Any, place: _Place, walk: _Walk) -> tuple[_Place, str] | None:  # pragma: no cover
    return None


def _positions(checked: Sequence[tuple[int, int | str, Visit, frozenset[int]]]) -> Visit:
    """The visit of an array's items at `checked` positions, each named by its segment (an index, a ".name")."""

    def fixed(raw: Any, place: _Place, walk: _Walk) -> tuple[_Place, str] | None:
        parts = RAW_ITEMS.decode(raw)
        for i, segment, visit, classes in checked:
            if i < len(parts):
                walk.add((place, segment), visit, parts[i], classes)
        return None

    return fixed


def _key_label(raw: msgspec.Raw, index: int) -> str:
    """How a path names a dict entry: its key, if a str or an int, else its place (``#2``)."""
    try:
        key = msgspec.msgpack.decode(raw)
    except msgspec.MsgspecError:  # pragma: no cover - it decoded under its type already
        key = None
    return repr(key) if type(key) in (str, int) else f"#{index}"


def _saved_as(node: mi.Type) -> Callable[[Any], bool]:
    """Whether the undecoded value was saved under `node` (a union branch with a shape check).

    msgspec allows one map-like and one array-like branch in a union, except
    tagged Structs, which are told apart by their tag (the first item of an
    array-like one).
    """
    if isinstance(node, mi.Metadata):
        return _saved_as(node.type)
    if isinstance(node, mi.StructType) and node.tag_field is not None:
        field, tag = node.tag_field, node.tag

        def tagged(raw: Any) -> bool:
            try:
                if node.array_like:
                    parts = RAW_ITEMS.decode(raw)
                    return len(parts) > 0 and bool(msgspec.msgpack.decode(parts[0]) == tag)
                fields = RAW_FIELDS.decode(raw)
                return field in fields and bool(msgspec.msgpack.decode(fields[field]) == tag)
            except msgspec.MsgspecError:  # another branch's value (or damaged: the decode said so)
                return False

        return tagged
    if isinstance(node, mi.DictType | mi.TypedDictType | mi.DataclassType) or (
        isinstance(node, mi.StructType) and not node.array_like
    ):
        return lambda raw: map_length(raw) >= 0
    return lambda raw: array_length(raw) >= 0  # the other nodes `_build_shape` checks are arrays


# -- finding the culprit (the slow path of a failed encode) --------------------------------


def culprit(encoder: msgspec.msgpack.Encoder, value: Any, depth: int = 0) -> tuple[str, str] | None:
    """(path, message) of the innermost part of `value` that does not encode, or None."""
    try:
        encoder.encode(value)
    except ENCODE_ERRORS as err:
        if depth < 32:  # deeper: a cycle, or deep enough to be named from here
            for path, part in _parts(value):
                found = culprit(encoder, part, depth + 1)
                if found is not None:
                    return (path + found[0], found[1])
        return ("", f"cannot encode {type(value).__qualname__} ({err})")
    return None


def _parts(value: object) -> list[tuple[str, Any]]:
    if isinstance(value, list | tuple | set | frozenset):
        return [(f"[{i}]", v) for i, v in enumerate(typing.cast("list[Any]", value))]
    if isinstance(value, dict):
        mapping: dict[Any, Any] = value  # pyright: ignore[reportUnknownVariableType]
        items = mapping.items()
        return [(f" key {k!r}", k) for k, _ in items] + [(f"[{k!r}]", v) for k, v in items]
    if attrs.has(type(value)):
        return [(f".{f.name}", getattr(value, f.name)) for f in attrs.fields(typing.cast("Any", type(value)))]
    if isinstance(value, msgspec.Struct):
        return [(f".{name}", getattr(value, name)) for name in value.__struct_fields__]
    fields: dict[str, Any] | None = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return [(f".{name}", getattr(value, name)) for name in fields]
    return []


def split_message(err: Exception) -> tuple[str, str]:
    """(msgspec's message, the path after ``$``) of a validation error; a dict key's says so."""
    text = str(err)
    match = _AT.match(text)
    if match is None:
        return text, ""
    if match["key"]:
        return f"{match['message']} (a dict key)", match["path"]
    return match["message"], match["path"]


# -- exception types by name -----------------------------------------------------------------


def find_exception(name: str) -> type[BaseException] | None:
    """The exception type ``module:qualname`` among modules already imported, else None.

    Never imports a module: a name from stored or received data can only pick
    a type the process has already loaded, and only an exception type.
    """
    module_name, _, qualname = name.partition(":")
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        if found is None or not part:
            return None
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None
