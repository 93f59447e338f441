"""The checkpoint codec: an agent's fields and its next transition, to bytes and back.

Built on msgspec's msgpack codec, never pickle: a value is decoded only into
the type its annotation names, so a checkpoint can never make an object of a
type chosen by the data.

A step payload is one msgpack array, codec format 1:

```
[1, {field name: value, ...}, modifiers or nil, argument 0, argument 1, ...]
```

The fields are a map (by attrs field name) so that an ``upgrade`` function gets
them by name, and so that a field missing or left over is an error, never a
silent default or drop. Arguments follow flat: their number is read from the
array header, which picks the typed decoder of the state for that many
arguments (cached per class, per state, per count). Outputs are the msgpack of
the value alone, decoded into the ``Agent[T]`` parameter.

Decisions (each one a rule a test checks):

- Durable state = the attrs fields (`attrs.fields`); only attrs classes are
  durable. A resumed agent is a *new instance* made as the class makes one:
  ``cls(**init fields)`` (or ``__attrs_init__`` for ``@attrs.define(init=False)``),
  so converters, validators and ``__attrs_post_init__`` run for it once, as for
  any instance (a validator thus also checks what an ``upgrade`` returned;
  converters must accept their own output, as ``int`` or ``frozenset`` do).
  Fields with ``init=False`` are then set to their saved values with
  ``object.__setattr__`` (a restore, not a change: no ``on_setattr`` hooks).
- Every transition is checked when it is saved, not when it is resumed: the
  payload is decoded again at once (a few µs), so a field annotated ``int``
  holding a str is refused at the transition that holds it.
- Where an annotation cannot bring a value back as itself (``Any``,
  ``object``, an unannotated parameter, also nested as in ``list[Any]``), only
  JSON-like builtins are allowed: None, bool, int, float, str, bytes, and
  lists and str-keyed dicts of them. Anything else (a tuple, a set, an attrs
  instance...) would come back as another type: refused, "annotate it".
- Modifiers are saved: ``.timeout(s)``; ``.retry(policy)`` for a plain
  `hybrid.RetryPolicy` (its numbers and its ``retry_on`` types by import
  name, looked up only among modules already imported; not its ``rng``, a
  resumed policy gets a fresh one); ``.fallback(fn)`` when `fn` is a method
  of the agent, like a state.
- A value class inside the fields or the arguments (an attrs class or dataclass) must
  have the fields it was saved with, as the agent must: msgspec would drop a field it
  lost and default one it gained, so resume checks each class's saved map in the same
  bytes, left undecoded but for the maps and arrays on the way, at the class's first
  instance (all are written alike: `inspect_shape`). A fields map naming a field twice
  is refused too (msgspec would keep the last value). A dict saved for such a class
  must have the class's keys. A finished key's recorded output is read as msgspec
  reads it (it has no upgrade).
- Values of concrete annotations come back as the annotation says: a tuple
  held by a ``list[int]`` field is resumed as a list, an int held by a
  ``float`` field as a float.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Final, Literal, TypeVar, final, overload

import attrs

try:
    import msgspec
except ImportError as _error:  # pragma: no cover - tested in a subprocess (tests/durable/test_store.py)
    # Say which extra brings msgspec (before hybrid.codec, which would name its own).
    raise ImportError(
        "hybrid.durable needs msgspec: pip install 'trio-hybrid[durable]' "
        "(or 'trio-hybrid[durable-postgres]' for Postgres too)",
        name=_error.name,
    ) from _error

from hybrid import Agent, InvalidTransition, Modifiers, Next, RetryPolicy
from hybrid.codec import CodecError
from hybrid.codec._naming import ClassMeta, class_meta, meta_of, record_meta
from hybrid.codec._records import tuple_getter
from hybrid.codec._types import (
    ENCODE_ERRORS,
    RAW_FIELDS,
    RAW_ITEMS,
    Check,
    Shape,
    array_length,
    as_array,
    culprit,
    field_type,
    find_exception,
    header_size,
    inspect_shape,
    inspect_type,
    map_length,
    output_type,
    resolve,
    run_check,
    run_shape,
    split_message,
    type_text,
)

from ._errors import CheckpointError
from ._records import Checkpoint, StepKind

__all__ = ["Codec", "durable"]

AgentClass = TypeVar("AgentClass", bound="type[Agent[Any]]")

_FORMAT: Final = 1  # the first item of a step payload
_HEAD: Final = 3  # format, fields, modifiers: the items before the arguments
_META: Final = "_hybrid_durable"  # the class attribute `durable` sets
# StepKind members as module constants: faster to reach on every transition.
_BEGIN: Final = StepKind.BEGIN
_ASYNC: Final = StepKind.ASYNC
_SYNC: Final = StepKind.SYNC
_EVENTS: Final = StepKind.EVENTS

# Where a step payload's mismatch is (msgspec's path): an item, then a field name.
_INDEX: Final = re.compile(r"^\[(?P<index>\d+)\](?P<rest>.*)$", re.DOTALL)
_NAME: Final = re.compile(r"^\.(?P<name>[^\W\d]\w*)(?P<rest>.*)$", re.DOTALL)  # a Python identifier
_SHAPE_ADVICE: Final = (
    "The class changed since the checkpoint was saved (or a dict with other keys was saved for it): keep its "
    "old fields until the checkpoint is resumed, or raise the agent's version with an upgrade of the saved "
    "fields (@durable(version=..., upgrade=...))"
)


# -- the decorator -------------------------------------------------------------------


@overload
def durable(cls: AgentClass, /) -> AgentClass: ...


@overload
def durable(
    cls: None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
    upgrade: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[AgentClass], AgentClass]: ...


def durable(
    cls: AgentClass | None = None,
    /,
    *,
    name: str | None = None,
    version: int = 1,
    upgrade: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> AgentClass | Callable[[AgentClass], AgentClass]:
    """Set an agent class's checkpoint name, version and upgrade function.

    Usable bare (``@durable``) or with options. The settings are stored on the
    class itself (an attribute of its own, not inherited by subclasses), never in
    a global registry. An undecorated class is named
    ``f"{cls.__module__}.{cls.__qualname__}"``, at version 1, without upgrade.

    Args:
        cls: the class, when used bare.
        name: the name checkpoints record for the class; give one to keep old
            checkpoints readable after moving or renaming the class.
        version: the version of the class's fields (an int >= 1); raise it when
            the fields change, with an `upgrade` function for older checkpoints.
        upgrade: ``upgrade(old_version, fields) -> fields``: receives the fields of
            a checkpoint written by an older version, decoded to builtins (dicts,
            lists, str, int, float, bytes, bool, None, datetime), and returns the
            fields of the current version (builtins too; they are then decoded into
            the annotated types). Without it, an older checkpoint is decoded as it is.

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

        @hybrid.durable.durable(name="shop.Checkout", version=2, upgrade=upgrade)
        @attrs.define
        class Checkout(Agent[str]):
            order: str
            cents: int = 0
        ```
    """
    meta = class_meta("durable", name, version, upgrade)

    def decorate(target: AgentClass) -> AgentClass:
        return record_meta(target, _META, meta, "@durable decorates an agent class")

    return decorate if cls is None else decorate(cls)


def _meta_of(cls: type) -> ClassMeta:
    return meta_of(cls, _META)


# -- modifiers on the wire ---------------------------------------------------------------


class _Retry(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A `RetryPolicy` as saved (its rng is not: jitter is random anyway)."""

    attempts: int
    initial: float
    factor: float
    max_delay: float
    jitter: float
    retry_on: tuple[str, ...]  # "module:qualname" of each type


class _Mods(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A state's `Modifiers` as saved."""

    fallback: str | None  # the name of the agent's method
    retry: _Retry | None
    timeout: float | None


# -- what is known of a class and of its states -------------------------------------------


class _StatePlan:
    """One state method of a class: its argument types, checks and decoders.

    Positional parameters (after ``self``) take arguments in order; a ``*args``
    parameter takes the rest, each of its element type. Made on first use of the
    state (at a transition or at a resume) and kept in its `_ClassPlan`.
    """

    __slots__ = (
        "checked",
        "decoders",
        "func",
        "maximum",
        "minimum",
        "name",
        "params",
        "plan",
        "pos_checks",
        "pos_shapes",
        "pos_types",
        "shaped",
        "var_check",
        "var_name",
        "var_shape",
        "var_type",
    )

    def __init__(self, plan: _ClassPlan, name: str, func: types.FunctionType) -> None:
        self.plan = plan
        self.name = name
        self.func = func  # what getattr(cls, name) is: a bound state's __func__ must be it
        self.decoders: dict[int, msgspec.msgpack.Decoder[Any]] = {}  # per number of arguments
        where = f"{plan.qualname}.{name}"
        params, var_name, minimum = _positional_parameters(func, where)
        hints = func.__annotations__
        module = sys.modules.get(func.__module__)
        globalns: dict[str, Any] = getattr(module, "__dict__", None) or func.__globals__
        self.params = params
        self.var_name = var_name
        self.minimum = minimum
        self.maximum: int | None = None if var_name is not None else len(params)
        self.pos_types: tuple[Any, ...] = tuple(
            resolve(hints.get(p, Any), globalns, None, f"{where} argument {p!r}") for p in params
        )
        self.var_type: Any = (
            Any if var_name is None else resolve(hints.get(var_name, Any), globalns, None, f"{where} *{var_name}")
        )
        self.pos_checks: tuple[Check | None, ...] = tuple(
            inspect_type(t, f"{where} argument {p!r}", exact_dicts=True)
            for p, t in zip(params, self.pos_types, strict=True)
        )
        self.var_check = (
            None if var_name is None else inspect_type(self.var_type, f"{where} *{var_name}", exact_dicts=True)
        )
        self.checked = self.var_check is not None or any(c is not None for c in self.pos_checks)  # Any slots
        self.pos_shapes: tuple[Shape | None, ...] = tuple(inspect_shape(t) for t in self.pos_types)
        self.var_shape = None if var_name is None else inspect_shape(self.var_type)
        self.shaped = self.var_shape is not None or any(c is not None for c in self.pos_shapes)
        """Some argument may hold an attrs class or dataclass: its saved fields are checked at resume."""

    def argument(self, position: int) -> str:
        """How messages name the argument at `position`."""
        if position < len(self.params):
            return f"argument {self.params[position]!r} (position {position})"
        return f"argument *{self.var_name} (position {position})"

    def check(self, position: int) -> Check | None:
        """The Any-slot check of the argument at `position`, if its annotation needs one."""
        return self.pos_checks[position] if position < len(self.params) else self.var_check

    def shape(self, position: int) -> Shape | None:
        """The saved-shape check of the argument at `position` (`inspect_shape`), if it needs one."""
        return self.pos_shapes[position] if position < len(self.params) else self.var_shape

    def fits(self, count: int) -> bool:
        """Whether `count` positional arguments fit the signature."""
        return self.minimum <= count and (self.maximum is None or count <= self.maximum)

    def signature(self) -> str:
        """The positional parameters, for messages."""
        names = list(self.params) + ([f"*{self.var_name}"] if self.var_name is not None else [])
        return f"{self.name}({', '.join(names)})"

    def decoder(self, count: int) -> msgspec.msgpack.Decoder[Any]:
        """The typed decoder of a payload with `count` arguments (cached)."""
        found = self.decoders.get(count)
        if found is None:
            types_ = [*self.pos_types[:count], *[self.var_type] * (count - len(self.pos_types))]
            found = _step_decoder(self.plan.fields_type, types_, modifiers=True)
            self.decoders[count] = found
        return found


def _positional_parameters(func: types.FunctionType, where: str) -> tuple[tuple[str, ...], str | None, int]:
    """(positional parameter names after self, *args name or None, how many are required)."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as err:  # pragma: no cover - a plain function always has one
        raise CheckpointError(f"{where}: cannot read its signature: {err}") from err
    if parameters and parameters[0].kind in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD):
        parameters = parameters[1:]  # self
    names: list[str] = []
    var_name: str | None = None
    minimum = 0
    for p in parameters:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
            if p.default is p.empty:
                minimum = len(names)
        elif p.kind == p.VAR_POSITIONAL:
            var_name = p.name
    return tuple(names), var_name, minimum


@final
class _ClassPlan:
    """What the codec knows of one registered agent class (made once, at `Codec.register`)."""

    __slots__ = (
        "begin_decoder",
        "cls",
        "field_checks",
        "field_shapes",
        "fields_type",
        "getter",
        "late_getter",
        "late_names",
        "make",
        "name",
        "names",
        "output_check",
        "output_decoder",
        "output_type",
        "qualname",
        "states",
        "upgrade",
        "version",
    )

    def __init__(self, cls: type[Agent[Any]], name: str, meta: ClassMeta) -> None:
        self.cls = cls
        self.name = name
        self.qualname = cls.__qualname__
        self.version = meta.version
        self.upgrade = meta.upgrade
        fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(typing.cast("Any", cls))
        self.names: tuple[str, ...] = tuple(f.name for f in fields)
        self.getter = tuple_getter(self.names)  # the agent's field values, in order
        self.make = _maker(cls, fields)  # a new instance from the decoded fields struct
        self.late_names: tuple[str, ...] = tuple(f.name for f in fields if not f.init)
        self.late_getter = tuple_getter(self.late_names)
        hints = [field_type(cls, f.name, f.type) for f in fields]
        checks: list[tuple[int, str, Check]] = []
        for index, (f, hint) in enumerate(zip(fields, hints, strict=True)):
            check = inspect_type(hint, f"{self.qualname} field {f.name!r}", exact_dicts=True)
            if check is not None:
                checks.append((index, f.name, check))
        self.field_checks = tuple(checks)
        shapes = ((f.name, inspect_shape(hint)) for f, hint in zip(fields, hints, strict=True))
        self.field_shapes = tuple((name, shape) for name, shape in shapes if shape is not None)
        """The fields holding attrs classes or dataclasses: their saved fields are checked at resume."""
        self.fields_type: type[msgspec.Struct] = msgspec.defstruct(
            f"{cls.__name__}Fields",
            [(f.name, hint) for f, hint in zip(fields, hints, strict=True)],
            forbid_unknown_fields=True,  # a field the class no longer has is an error, not a drop
        )
        self.begin_decoder = _step_decoder(self.fields_type, [], modifiers=False)
        self.states: dict[str, _StatePlan] = {}
        self.output_type = output_type(cls)
        self.output_check = inspect_type(self.output_type, f"{self.qualname} output")
        self.output_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(self.output_type)

    def method(self, name: str) -> types.FunctionType | None:
        """The plain function `name` of the class (never a dunder), else None."""
        if name.startswith("__") and name.endswith("__"):
            return None  # whatever a checkpoint says, never __init__ and the like
        try:
            static = inspect.getattr_static(self.cls, name)
        except AttributeError:
            return None
        # A staticmethod, classmethod or property is not a state of this agent.
        return static if isinstance(static, types.FunctionType) else None

    def state(self, name: str) -> _StatePlan | None:
        """The plan of state `name` if it is a method of the class, else None (made once)."""
        found = self.states.get(name)
        if found is None:
            func = self.method(name)
            if func is None:
                return None
            found = self.states[name] = _StatePlan(self, name, func)
        return found


def _maker(cls: type[Agent[Any]], fields: tuple[attrs.Attribute[Any], ...]) -> Callable[[Any], Agent[Any]]:
    """``struct -> cls(init fields)``: positional when it can be (the fastest call)."""
    positional = tuple_getter(tuple(f.name for f in fields if f.init and not f.kw_only))
    keywords = tuple((f.alias or f.name, f.name) for f in fields if f.init and f.kw_only)
    attrs_init = cls.__dict__.get("__attrs_init__")
    if attrs_init is not None:  # @attrs.define(init=False): __init__ is the user's own

        def make_attrs_init(struct: Any) -> Agent[Any]:
            agent = cls.__new__(cls)
            attrs_init(agent, *positional(struct), **{alias: getattr(struct, name) for alias, name in keywords})
            return agent

        return make_attrs_init
    if keywords:

        def make_with_keywords(struct: Any) -> Agent[Any]:
            return cls(*positional(struct), **{alias: getattr(struct, name) for alias, name in keywords})

        return make_with_keywords
    return lambda struct: cls(*positional(struct))


def _step_decoder(fields_type: type[msgspec.Struct], arguments: list[Any], *, modifiers: bool) -> Any:
    parts = (Literal[1], fields_type, (_Mods | None) if modifiers else None, *arguments)
    return msgspec.msgpack.Decoder(types.GenericAlias(tuple, parts))


# -- the codec -------------------------------------------------------------------------------


@final
class Codec:
    """The agent classes a store knows and the encoders of their checkpoints.

    Per store, not global: two stores may name classes differently. A class is
    registered by `register` (the store does it for the classes given to
    ``open_store(..., agents=[...])`` and for each agent it runs or spawns); a
    checkpoint names its class by the registry name, and `resolve` finds it.

    Methods raise `CheckpointError` (a ValueError) naming the key, the class and
    the field, argument or state concerned.
    """

    __slots__ = ("_by_name", "_by_type", "_encoder")

    def __init__(self) -> None:
        """Make an empty registry."""
        self._by_type: dict[type, _ClassPlan] = {}
        self._by_name: dict[str, _ClassPlan] = {}
        self._encoder = msgspec.msgpack.Encoder()

    # -- the registry --------------------------------------------------------------

    def register(self, cls: type[Agent[Any]]) -> str:
        """Check that `cls` can be checkpointed and register it; return its registry name.

        Idempotent. Every field's annotation (and the output type) is checked
        here, once; state methods are checked at their first transition.

        Raises:
            CheckpointError: `cls` is not an attrs agent class, an annotation is
                not supported, or another class is registered under the same name.
        """
        plan = self._by_type.get(cls)
        if plan is not None:
            return plan.name
        return self._register(cls).name

    def _register(self, cls: type[Agent[Any]]) -> _ClassPlan:
        if not (isinstance(cls, type) and issubclass(cls, Agent)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise CheckpointError(f"a durable agent must be an Agent subclass, got {cls!r}")
        if not attrs.has(cls):
            raise CheckpointError(
                f"{cls.__qualname__} is not an attrs class: decorate it with @attrs.define "
                "(its attrs fields are the durable state)"
            )
        meta = _meta_of(cls)
        name = meta.name or f"{cls.__module__}.{cls.__qualname__}"
        taken = self._by_name.get(name)
        if taken is not None:
            raise CheckpointError(
                f"two agent classes are registered under the name {name!r}: "
                f"{taken.cls.__module__}.{taken.qualname} and {cls.__module__}.{cls.__qualname__}; "
                "give one another name with @durable(name=...)"
            )
        try:
            plan = _ClassPlan(typing.cast("type[Agent[Any]]", cls), name, meta)
        except CodecError as err:  # the shared type checks' refusal (hybrid.codec), as a checkpoint's
            raise CheckpointError(str(err)) from err
        self._by_type[cls] = plan
        self._by_name[name] = plan
        return plan

    def _plan(self, cls: type[Agent[Any]]) -> _ClassPlan:
        plan = self._by_type.get(cls)
        return plan if plan is not None else self._register(cls)

    def resolve(self, name: str) -> type[Agent[Any]]:
        """The class registered under `name`.

        Raises:
            CheckpointError: no class is registered under `name`.
        """
        plan = self._by_name.get(name)
        if plan is None:
            raise CheckpointError(self._unknown(name))
        return plan.cls

    @staticmethod
    def _unknown(name: str) -> str:
        return (
            f"unknown agent class {name!r}: register it: open_store(..., agents=[...]) or run/spawn it once "
            "(or give the class that name with @durable(name=...))"
        )

    def version(self, cls: type[Agent[Any]]) -> int:
        """The checkpoint version of `cls` (1 unless set with `durable`); registers it."""
        return self._plan(cls).version

    # -- steps ---------------------------------------------------------------------

    def encode_step(self, key: str, agent: Agent[Any], nxt: Next[Any] | None) -> tuple[StepKind, str, bytes]:
        """Encode the agent's fields and its next transition, checking that they decode back.

        Args:
            key: the key the agent runs under (for messages).
            agent: the agent; its class is registered if it is not yet.
            nxt: the transition it takes: None for the spawn record (BEGIN, fields
                only), ``Next.events()`` (EVENTS), or a ``do_async``/``do_sync``
                of one of its own methods (ASYNC/SYNC, with the arguments).

        Returns:
            (kind, state name or "", payload).

        Raises:
            CheckpointError: the transition or a value cannot be checkpointed,
                naming the key, the class and the field or argument.
        """
        plan = self._plan(type(agent))
        state: _StatePlan | None = None
        args: tuple[Any, ...] = ()
        mods: _Mods | None = None
        if nxt is None:
            kind = _BEGIN
        else:
            code = nxt.kind
            if code in ("do_async", "do_sync"):
                kind = _ASYNC if code == "do_async" else _SYNC
                fn = nxt.function
                # The fast path (a state seen before) inlined: this runs at every transition.
                state = plan.states.get(fn.__name__) if type(fn) is types.MethodType else None
                if state is None or fn.__func__ is not state.func or fn.__self__ is not agent:
                    state = self._state_of(key, plan, agent, fn)
                args = nxt.args
                if not state.fits(len(args)):
                    raise CheckpointError(
                        f"key {key!r}: {plan.qualname}.{state.name} takes {state.signature()}, "
                        f"not {len(args)} argument(s)"
                    )
                modifiers = nxt.modifiers
                if modifiers is not None:
                    mods = self._encode_mods(key, plan, agent, state.name, modifiers)
            elif code == "events":
                kind = _EVENTS
            elif code == "perform":
                raise CheckpointError(
                    f"key {key!r}: {plan.qualname}: Next.perform(...) cannot be checkpointed "
                    "(a performer is an object, not a method of the agent): use Next.do_async(self.method, ...)"
                )
            else:
                raise CheckpointError(f"key {key!r}: {plan.qualname}: {nxt!r} is not a step to checkpoint")
        try:
            values = plan.getter(agent)
        except AttributeError:  # an init=False field without a default, never set
            unset = next(name for name in plan.names if not hasattr(agent, name))
            raise CheckpointError(
                f"key {key!r}: {plan.qualname} field {unset!r} has no value: set it (in __attrs_post_init__ or "
                "begin) before the first checkpoint, or give it a default"
            ) from None
        fields = plan.fields_type(*values)  # a struct: encodes as a map, faster to make than a dict
        try:
            payload = self._encoder.encode((_FORMAT, fields, mods, *args))
        except ENCODE_ERRORS as err:
            raise self._encode_failure(key, plan, state, values, args) from err
        decoder = plan.begin_decoder if state is None else (state.decoders.get(len(args)) or state.decoder(len(args)))
        try:
            decoder.decode(payload)
        except Exception as err:  # a value that does not decode under its annotation
            raise CheckpointError(self._step_mismatch(key, plan, state, err, saving=True)) from err
        for index, name, check in plan.field_checks:
            found = run_check(check, values[index])
            if found is not None:
                raise CheckpointError(f"key {key!r}: {plan.qualname} field {name!r}{found[0]}: {found[1]}")
        if state is not None and state.checked:
            for position, arg in enumerate(args):
                arg_check = state.check(position)
                if arg_check is not None and (found := run_check(arg_check, arg)) is not None:
                    raise CheckpointError(
                        f"key {key!r}: {plan.qualname}.{state.name} {state.argument(position)}{found[0]}: {found[1]}"
                    )
        return kind, "" if state is None else state.name, payload

    def _state_of(self, key: str, plan: _ClassPlan, agent: Agent[Any], fn: Any) -> _StatePlan:
        """The plan of the state `fn`, a method of this agent (checked by `_method_name`)."""
        state = _state_plan(key, plan, self._method_name(key, plan, agent, fn, "state"))
        assert state is not None
        return state

    def _method_name(self, key: str, plan: _ClassPlan, agent: Agent[Any], fn: Any, what: str) -> str:
        """The name of `fn` if it is a method of this agent, as its class names it."""
        if type(fn) is types.MethodType and fn.__self__ is agent:
            name = fn.__func__.__name__
            if plan.method(name) is fn.__func__:
                return name
        raise CheckpointError(
            f"key {key!r}: {plan.qualname} {what} {_describe(fn)}: a checkpointed {what} must be a method "
            f"of the agent itself, named on its class (Next.do_async(self.method, ...)); not a lambda, closure, "
            "functools.partial, staticmethod, classmethod, module function or another object's method"
        )

    def _encode_mods(self, key: str, plan: _ClassPlan, agent: Agent[Any], state: str, mods: Modifiers) -> _Mods:
        fallback = None if mods.fallback is None else self._method_name(key, plan, agent, mods.fallback, "fallback")
        policy = mods.retry
        retry = None
        if policy is not None:
            if type(policy) is not RetryPolicy:
                raise CheckpointError(
                    f"key {key!r}: {plan.qualname}.{state} .retry(): a {type(policy).__qualname__} cannot be "
                    "checkpointed (its behaviour is code): use a hybrid.RetryPolicy"
                )
            names = tuple(_exception_name(key, plan, state, t) for t in policy.retry_on)
            retry = _Retry(policy.attempts, policy.initial, policy.factor, policy.max_delay, policy.jitter, names)
        return _Mods(fallback, retry, mods.timeout)

    def _encode_failure(
        self,
        key: str,
        plan: _ClassPlan,
        state: _StatePlan | None,
        values: tuple[Any, ...],
        args: tuple[Any, ...],
    ) -> CheckpointError:
        """Name the value that did not encode (the slow path: each piece on its own)."""
        for name, value in zip(plan.names, values, strict=True):
            found = culprit(self._encoder, value)
            if found is not None:
                return CheckpointError(f"key {key!r}: {plan.qualname} field {name!r}{found[0]}: {found[1]}")
        if state is not None:
            for position, arg in enumerate(args):
                found = culprit(self._encoder, arg)
                if found is not None:
                    return CheckpointError(
                        f"key {key!r}: {plan.qualname}.{state.name} {state.argument(position)}{found[0]}: {found[1]}"
                    )
        return CheckpointError(f"key {key!r}: {plan.qualname}: the checkpoint cannot be encoded")  # pragma: no cover

    def _step_mismatch(
        self, key: str, plan: _ClassPlan, state: _StatePlan | None, err: Exception, *, saving: bool
    ) -> str:
        """A message naming where a step payload does not fit the class."""
        message, path = split_message(err)
        corrupted = isinstance(err, msgspec.DecodeError) and not isinstance(err, msgspec.ValidationError)
        return self._mismatch_at(key, plan, state, message, path, corrupted=corrupted, saving=saving)

    @staticmethod
    def _mismatch_at(
        key: str, plan: _ClassPlan, state: _StatePlan | None, message: str, path: str, *, corrupted: bool, saving: bool
    ) -> str:
        """A message naming the item at `path` of a step payload (``[1].name...``: a field, ``[3]``: an argument)."""
        where = f"{plan.qualname}" if state is None else f"{plan.qualname}.{state.name}"
        match = _INDEX.match(path)
        if corrupted or (match is None and not saving):
            text = f"key {key!r}: {where}: the checkpoint is not a valid payload ({message})"
        elif match is None:  # pragma: no cover - the payload was just encoded with the right shape
            text = f"key {key!r}: {where}: {message}"
        else:
            index, rest = int(match["index"]), match["rest"]
            if index == 0:
                text = f"key {key!r}: {where}: unknown checkpoint format ({message})"
            elif index == 1:
                named = _NAME.match(rest)
                if named is not None:
                    text = f"key {key!r}: {plan.qualname} field {named['name']!r}{named['rest']}: {message}"
                else:
                    text = f"key {key!r}: {plan.qualname} fields: {message}"
            elif index == 2:
                text = f"key {key!r}: {where} modifiers{rest}: {message}"
            else:
                assert state is not None
                text = f"key {key!r}: {where} {state.argument(index - _HEAD)}{rest}: {message}"
        if saving:
            return f"{text} (the value would not come back under its annotation)"
        return text

    def decode_step(self, checkpoint: Checkpoint) -> tuple[Agent[Any], Next[Any] | None]:
        """Rebuild a fresh agent from a checkpoint, and the transition it resumes with.

        The agent is made with ``cls(**init fields)`` (validators and
        ``__attrs_post_init__`` run), its ``init=False`` fields set after. The
        fields are first passed through the class's ``upgrade`` function if the
        checkpoint was written by an older version of the class.

        Returns:
            (agent, transition): None for BEGIN (call ``begin()`` again),
            ``Next.events()`` for EVENTS, ``Next.do_async(agent.state, *args)``
            (or ``do_sync``) with its modifiers for ASYNC/SYNC.

        Raises:
            CheckpointError: the checkpoint does not fit the registered class (an
                unknown class, a newer version, a missing or extra field, a type
                mismatch, a state that no longer exists, arguments that no longer
                fit, corrupted bytes), naming the key, the class and what differs.
        """
        key = checkpoint.key
        plan = self._by_name.get(checkpoint.agent_class)
        if plan is None:
            raise CheckpointError(f"key {key!r}: {self._unknown(checkpoint.agent_class)}")
        payload = checkpoint.payload
        if checkpoint.version != plan.version:
            payload = self._upgraded(checkpoint, plan)
        kind = checkpoint.kind
        if kind in (_BEGIN, _EVENTS):
            if checkpoint.state:
                raise CheckpointError(
                    f"key {key!r}: {plan.qualname}: a {kind} checkpoint names no state, got {checkpoint.state!r}"
                )
            decoded = self._decode(key, plan, None, plan.begin_decoder, payload)
            self._check_saved(checkpoint, plan, None, payload)
            agent = self._rebuild(key, plan, decoded[1])
            return agent, (None if kind == _BEGIN else Next.events())
        if kind not in (_ASYNC, _SYNC):
            raise CheckpointError(f"key {key!r}: {plan.qualname}: unknown checkpoint kind {kind!r}")
        state = _state_plan(key, plan, checkpoint.state)
        if state is None:
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}.{checkpoint.state}: the checkpoint resumes state "
                f"{checkpoint.state!r}, which is no longer a method of {plan.qualname}"
            )
        count = array_length(payload) - _HEAD
        # Each argument takes a byte at least: a larger count is a damaged header, which
        # must not make a decoder for billions of arguments.
        if count < 0 or count > len(payload):
            raise CheckpointError(f"key {key!r}: {plan.qualname}.{state.name}: the checkpoint is not a valid payload")
        if not state.fits(count):
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}.{state.name}: the checkpoint has {count} argument(s), "
                f"which no longer fit {state.signature()}"
            )
        decoded = self._decode(key, plan, state, state.decoder(count), payload)
        self._check_saved(checkpoint, plan, state, payload)
        agent = self._rebuild(key, plan, decoded[1])
        nxt = self._next(key, plan, state, agent, kind=kind, args=decoded[_HEAD:])
        mods: _Mods | None = decoded[2]
        return agent, (nxt if mods is None else self._apply_mods(key, plan, state.name, agent, nxt=nxt, mods=mods))

    def _decode(
        self,
        key: str,
        plan: _ClassPlan,
        state: _StatePlan | None,
        decoder: msgspec.msgpack.Decoder[Any],
        payload: bytes,
    ) -> tuple[Any, ...]:
        try:
            decoded: tuple[Any, ...] = decoder.decode(payload)
        except Exception as err:  # msgspec's errors, and whatever a value type's own validators raise
            raise CheckpointError(self._step_mismatch(key, plan, state, err, saving=False)) from err
        return decoded

    def _check_saved(self, checkpoint: Checkpoint, plan: _ClassPlan, state: _StatePlan | None, payload: bytes) -> None:
        """What the typed decode takes silently: a field named twice; a value class that changed its fields.

        `payload` (the checkpoint's, or its upgrade's) has just decoded under the
        class's types. msgspec keeps the last value of a key named twice, drops a
        saved field a value class no longer has and gives one it gained its
        default: each is refused here, naming it. The fields map is found at its
        place (after the array header and the format's one byte) unless the
        payload spells them otherwise.
        """
        key = checkpoint.key
        header = header_size(payload[0])
        at_fields = header + 1 if payload[header] == _FORMAT else -1
        if at_fields < 0 or map_length(payload, at_fields) != len(plan.names):
            # (A field named twice, or a format header spelled in more bytes: look at the map itself.)
            self._named_twice(key, plan, RAW_ITEMS.decode(payload)[1])
        shaped = state is not None and state.shaped
        if not (plan.field_shapes or shaped):
            return
        items = RAW_ITEMS.decode(payload)
        fields = RAW_FIELDS.decode(items[1])
        upgraded = None if checkpoint.version == plan.version else checkpoint.version
        for name, shape in plan.field_shapes:
            self._check_shape(key, plan, state, shape=shape, value=fields[name], path=f"[1].{name}", upgraded=upgraded)
        if state is not None and shaped:
            for position, value in enumerate(items[_HEAD:]):
                arg_shape = state.shape(position)
                if arg_shape is not None:
                    path = f"[{position + _HEAD}]"
                    self._check_shape(key, plan, state, shape=arg_shape, value=value, path=path, upgraded=None)

    def _check_shape(
        self,
        key: str,
        plan: _ClassPlan,
        state: _StatePlan | None,
        *,
        shape: Shape,
        value: msgspec.Raw,
        path: str,
        upgraded: int | None,
    ) -> None:
        """Run one saved-shape check on the undecoded item at `path` of the payload; raise what it finds.

        `upgraded`: the version an upgrade function brought the fields from, if one did.
        """
        try:
            found = run_shape(shape, value)
        except msgspec.MsgspecError as err:  # pragma: no cover - the typed decode read these parts already
            raise CheckpointError(self._step_mismatch(key, plan, state, err, saving=False)) from err
        if found is None:
            return
        text = self._mismatch_at(key, plan, state, found[1], path + found[0], corrupted=False, saving=False)
        if upgraded is not None:
            raise CheckpointError(
                f"{text}. The upgrade from version {upgraded} returned it in its old shape: convert it there"
            )
        raise CheckpointError(f"{text}. {_SHAPE_ADVICE}")

    @staticmethod
    def _named_twice(key: str, plan: _ClassPlan, fields_map: msgspec.Raw | bytes) -> None:
        """Raise if the msgpack map `fields_map` names a field twice (only a damaged payload does)."""
        names: list[Any] = []
        try:
            parts = RAW_ITEMS.decode(as_array(fields_map))
            for n in range(0, len(parts), 2):
                name = msgspec.msgpack.decode(parts[n])
                if name in names:
                    raise CheckpointError(
                        f"key {key!r}: {plan.qualname} field {name!r}: the checkpoint names it twice "
                        "(the payload is damaged: which value is meant is unknown)"
                    )
                names.append(name)
        except msgspec.MsgspecError as err:
            raise CheckpointError(f"key {key!r}: {plan.qualname}: the checkpoint is not a valid payload") from err

    def _rebuild(self, key: str, plan: _ClassPlan, fields: Any) -> Agent[Any]:
        try:
            agent = plan.make(fields)
        except Exception as err:  # a validator refused the saved (or upgraded) fields
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}: making the agent from its checkpointed fields raised {err!r}"
            ) from err
        if plan.late_names:
            for name, value in zip(plan.late_names, plan.late_getter(fields), strict=True):
                object.__setattr__(agent, name, value)
        return agent

    def _next(
        self, key: str, plan: _ClassPlan, state: _StatePlan, agent: Agent[Any], *, kind: StepKind, args: tuple[Any, ...]
    ) -> Next[Any]:
        fn = getattr(agent, state.name)
        if kind == _ASYNC:
            return Next.do_async(fn, *args)
        try:
            return Next.do_sync(fn, *args)
        except InvalidTransition as err:
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}.{state.name}: the checkpoint resumes it as a sync state, "
                f"and it is now an async def: {err}"
            ) from err

    def _apply_mods(
        self, key: str, plan: _ClassPlan, state: str, agent: Agent[Any], *, nxt: Next[Any], mods: _Mods
    ) -> Next[Any]:
        where = f"key {key!r}: {plan.qualname}.{state} modifiers"
        if mods.retry is not None:
            r = mods.retry
            retry_on = tuple(_exception_type(where, name) for name in r.retry_on)
            try:
                policy = RetryPolicy(
                    attempts=r.attempts,
                    initial=r.initial,
                    factor=r.factor,
                    max_delay=r.max_delay,
                    jitter=r.jitter,
                    retry_on=retry_on,
                )
            except (TypeError, ValueError) as err:
                raise CheckpointError(f"{where}: the retry policy is not valid: {err}") from err
            nxt = nxt.retry(policy)
        try:
            if mods.timeout is not None:
                nxt = nxt.timeout(mods.timeout)
        except InvalidTransition as err:
            raise CheckpointError(f"{where}: the timeout is not valid: {err}") from err
        if mods.fallback is not None:
            if plan.method(mods.fallback) is None:
                raise CheckpointError(
                    f"{where}: the fallback {mods.fallback!r} is no longer a method of {plan.qualname}"
                )
            nxt = nxt.fallback(getattr(agent, mods.fallback))
        return nxt

    def _upgraded(self, checkpoint: Checkpoint, plan: _ClassPlan) -> bytes:
        """The payload of an older version's checkpoint, its fields upgraded (re-encoded)."""
        key = checkpoint.key
        if checkpoint.version > plan.version:
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}: the checkpoint was written by version {checkpoint.version} "
                f"of the class, newer than this one ({plan.version}): resume it with the newer code"
            )
        if plan.upgrade is None:
            return checkpoint.payload  # decoded as it is: it must fit the current fields
        try:
            raw: Any = msgspec.msgpack.decode(checkpoint.payload)
        except msgspec.MsgspecError as err:
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}: the checkpoint is not a valid payload ({err})"
            ) from err
        if not (isinstance(raw, list) and len(raw) >= _HEAD and isinstance(raw[1], dict)):  # pyright: ignore[reportUnknownArgumentType]
            raise CheckpointError(f"key {key!r}: {plan.qualname}: the checkpoint is not a valid payload")
        items: list[Any] = raw  # pyright: ignore[reportUnknownVariableType]
        self._named_twice(key, plan, RAW_ITEMS.decode(checkpoint.payload)[1])  # as a dict, the last value would win
        try:
            fields = plan.upgrade(checkpoint.version, items[1])
        except Exception as err:
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}: upgrade from version {checkpoint.version} raised {err!r}"
            ) from err
        if not isinstance(fields, dict):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}: upgrade from version {checkpoint.version} must return "
                f"the fields as a dict, got {fields!r}"
            )
        items[1] = fields
        try:
            return self._encoder.encode(items)
        except ENCODE_ERRORS as err:
            raise CheckpointError(
                f"key {key!r}: {plan.qualname}: upgrade from version {checkpoint.version} returned "
                f"fields that cannot be encoded ({err})"
            ) from err

    # -- handing a resumed run to another instance ------------------------------------

    def copy_fields(self, source: Agent[Any], target: Agent[Any]) -> None:
        """Set every attrs field of `target` to the value it has in `source` (same class).

        For an instance made by a supervisor's factory, resumed from a checkpoint
        decoded into `source`. Set with ``object.__setattr__``: a restore, so no
        ``on_setattr`` hooks run (and frozen classes work).

        Raises:
            CheckpointError: the two agents are not of the same class.
        """
        if type(source) is not type(target):
            raise CheckpointError(
                f"cannot copy the fields of a {type(source).__qualname__} into a {type(target).__qualname__}"
            )
        plan = self._plan(type(source))
        for name, value in zip(plan.names, plan.getter(source), strict=True):
            object.__setattr__(target, name, value)

    def rebind(self, nxt: Next[Any], agent: Agent[Any]) -> Next[Any]:
        """The same transition as `nxt` (a decoded one), its state and fallback bound to `agent`.

        Raises:
            CheckpointError: `nxt` is not a transition `decode_step` returns.
        """
        code = nxt.kind
        if code == "events":
            return nxt
        plan = self._plan(type(agent))
        fn = nxt.function
        if code not in ("do_async", "do_sync") or type(fn) is not types.MethodType:
            raise CheckpointError(f"{plan.qualname}: cannot rebind {nxt!r}: not a decoded step")
        state = getattr(agent, fn.__func__.__name__)
        args = nxt.args
        rebound = Next.do_async(state, *args) if code == "do_async" else Next.do_sync(state, *args)
        mods = nxt.modifiers
        if mods is not None:
            if mods.retry is not None:
                rebound = rebound.retry(mods.retry)
            if mods.timeout is not None:
                rebound = rebound.timeout(mods.timeout)
            fallback = mods.fallback
            if fallback is not None:
                if not isinstance(fallback, types.MethodType):
                    raise CheckpointError(f"{plan.qualname}: cannot rebind the fallback of {nxt!r}")
                rebound = rebound.fallback(getattr(agent, fallback.__func__.__name__))
        return rebound

    # -- outputs ---------------------------------------------------------------------

    def encode_output(self, key: str, agent_cls: type[Agent[Any]], value: Any) -> bytes:
        """Encode the output of ``Next.done(value)``, checked against the class's ``Agent[T]``.

        Raises:
            CheckpointError: the value cannot be encoded or would not come back as itself.
        """
        plan = self._plan(agent_cls)
        try:
            data = self._encoder.encode(value)
        except ENCODE_ERRORS as err:
            found = culprit(self._encoder, value) or ("", str(err))
            raise CheckpointError(f"key {key!r}: {plan.qualname} output{found[0]}: {found[1]}") from err
        try:
            plan.output_decoder.decode(data)
        except Exception as err:
            message, path = split_message(err)
            raise CheckpointError(
                f"key {key!r}: {plan.qualname} output{path}: {message} "
                f"(the output must be a {type_text(plan.output_type)}, as in Agent[...])"
            ) from err
        if plan.output_check is not None:
            problem = plan.output_check(value)
            if problem is not None:
                raise CheckpointError(f"key {key!r}: {plan.qualname} output{problem[0]}: {problem[1]}")
        return data

    def decode_output(self, key: str, agent_cls: type[Agent[Any]], data: bytes) -> Any:
        """Decode an output saved by `encode_output` into the class's ``Agent[T]`` type.

        Raises:
            CheckpointError: the bytes do not decode into that type.
        """
        plan = self._plan(agent_cls)
        try:
            return plan.output_decoder.decode(data)
        except Exception as err:
            message, path = split_message(err)
            raise CheckpointError(
                f"key {key!r}: {plan.qualname} output{path}: the saved output does not decode into "
                f"{type_text(plan.output_type)}: {message}"
            ) from err


def _state_plan(key: str, plan: _ClassPlan, name: str) -> _StatePlan | None:
    """`plan.state(name)`, its refusal (an annotation it cannot take) naming the key."""
    try:
        return plan.state(name)
    except CodecError as err:  # CheckpointError too
        raise CheckpointError(f"key {key!r}: {err}") from err


def _describe(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"functools.partial({_describe(fn.func)}, ...)"
    if type(fn) is types.MethodType:
        owner = fn.__self__
        if isinstance(owner, type):
            return f"{fn.__qualname__} (a classmethod)"
        return f"{fn.__qualname__} (a method of a {type(owner).__qualname__})"
    name = getattr(fn, "__qualname__", None)
    return repr(fn) if name is None else name


def _exception_name(key: str, plan: _ClassPlan, state: str, kind: type[BaseException]) -> str:
    name = f"{kind.__module__}:{kind.__qualname__}"
    if find_exception(name) is not kind:
        raise CheckpointError(
            f"key {key!r}: {plan.qualname}.{state} .retry(): retry_on type {kind.__qualname__} cannot be "
            "checkpointed: it must be found by its module and name (define it at module level)"
        )
    return name


def _exception_type(where: str, name: str) -> type[BaseException]:
    found = find_exception(name)
    if found is None:
        raise CheckpointError(
            f"{where}: retry_on type {name!r} is not an exception type of an imported module "
            "(import its module before resuming)"
        )
    return found
