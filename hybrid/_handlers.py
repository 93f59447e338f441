"""Message handlers: the decorators and the per-class dispatch tables.

Each agent class gets three dicts, built once when the class is defined:
message type -> handler function, for events, requests and responses. A
message of a subclass of a handled type is looked up along its MRO the first
time it is sent and the result is cached in the class's dict, so dispatch is
one dict lookup by exact type.
"""

from __future__ import annotations

import dis
import inspect
import sys
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, overload

from ._exceptions import HandlerDefinitionError, UnhandledMessage
from ._request import Request

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_MARK: Final = "__hybrid_handler__"
INLINE: Final = "__hybrid_inline__"
"""Set (True) on a request handler declared ``inline=True``."""
ROUTE: Final = "__hybrid_route__"
"""Set (True) on a request handler declared ``route=True``: it returns the address that answers."""
# What an `async def` compiles an await, an `async for` or an `async with` to.
_SUSPENDING_OPS: Final = frozenset({"GET_AWAITABLE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH", "END_ASYNC_FOR"})
EVENT: Final = "event"
REQUEST: Final = "request"
RESPONSE: Final = "response"
_KINDS = (EVENT, REQUEST, RESPONSE)

Table = dict[type, Callable[..., Awaitable[Any]]]


def _mark(kind: str, fn: F) -> F:
    target: object = fn
    if isinstance(target, (staticmethod, classmethod)) or not inspect.iscoroutinefunction(target):
        name = str(getattr(fn, "__qualname__", fn))
        raise HandlerDefinitionError(f"@hybrid.on_{kind} needs an 'async def' method, got {name!r}")
    setattr(fn, _MARK, kind)
    return fn


def on_event(fn: F) -> F:
    """Mark an ``async def`` method as the handler of one or more event types.

    The event type is the annotation of the first parameter after ``self``; a
    union (``A | B``) handles several types. Events are sent with
    `Address.send` (tell: never blocks, no answer).

    Example:
        ```python
        class Crawler(Agent):
            @hybrid.on_event
            async def add(self, event: AddUrl) -> None:
                self.urls.append(event.url)
        ```
    """
    return _mark(EVENT, fn)


@overload
def on_request(fn: F, /) -> F: ...
@overload
def on_request(*, inline: bool = False, route: bool = False) -> Callable[[F], F]: ...
def on_request(fn: F | None = None, /, *, inline: bool = False, route: bool = False) -> F | Callable[[F], F]:
    """Mark an ``async def`` method as the handler of one or more request types.

    The request type (a subclass of [`hybrid.Request`][hybrid.Request]) is the
    annotation of the first parameter after ``self``. The value the handler
    returns is the answer; an exception it raises is re-raised in the caller,
    and the agent keeps running.

    ``@hybrid.on_request(inline=True)`` declares a handler that never awaits
    (it reads or updates the agent's fields and returns). When the agent is
    idle (waiting for messages in actor mode, nothing queued), the caller's
    task then runs it directly, with the agent's context set, instead of
    queueing the request and waiting for the agent's task: the answer comes
    without a task switch. Otherwise (the agent is busy, in a state, or an
    instrument watches messages) the request is queued as any other, so the
    order of messages is kept either way. A caller still yields to other
    tasks at least every 64 inline answers (the fairness rule).

    ``@hybrid.on_request(route=True)`` declares a router (Akka's ``forward``,
    Erlang's passing of ``From``): the handler returns the
    [`Address`][hybrid.Address] of the agent that answers instead, and the
    request moves, with its caller, to that agent's mailbox (waiting for room
    in a full bounded one: backpressure reaches the router). That agent's
    answer, or error, goes straight to the caller; the router is free for its
    next message at once. A request that the chosen agent does not handle, or
    that reaches it after it ended, fails in the caller (`UnhandledMessage`,
    `AgentStopped`), as if sent there directly. `hybrid.Pool` is built on it.

    Example:
        ```python
        @hybrid.on_request
        async def count(self, request: GetCount) -> int:
            return len(self.urls)

        @hybrid.on_request(inline=True)   # no await inside: answered in the caller's task
        async def peek(self, request: Peek) -> int:
            return len(self.urls)

        @hybrid.on_request(route=True)    # the shard that owns the key answers
        async def route(self, request: GetBalance) -> hybrid.Address[Any]:
            return self.shards[hybrid.rendezvous(request.account, self.names)]
        ```

    Raises:
        HandlerDefinitionError: an inline handler awaits (``await``,
            ``async for`` or ``async with`` in its body), or a handler is
            declared both inline and route.
    """
    if type(inline) is not bool:
        raise TypeError(f"on_request(inline=...) must be True or False, got {inline!r}")
    if type(route) is not bool:
        raise TypeError(f"on_request(route=...) must be True or False, got {route!r}")

    def mark(fn: F) -> F:
        marked = _mark(REQUEST, fn)
        if inline:
            _refuse_awaiting(fn)
            setattr(marked, INLINE, True)
        if route:
            if inline:
                name = str(getattr(fn, "__qualname__", fn))
                raise HandlerDefinitionError(
                    f"@hybrid.on_request handler {name} cannot be both inline and route: a router's "
                    "request is answered by another agent, never in its caller's task"
                )
            setattr(marked, ROUTE, True)
        return marked

    return mark if fn is None else mark(fn)


def _refuse_awaiting(fn: Callable[..., Any]) -> None:
    """Refuse an inline handler that may suspend (checked where it is marked, and as its class finds it)."""
    if awaits(fn):
        name = str(getattr(fn, "__qualname__", fn))
        raise HandlerDefinitionError(
            f"@hybrid.on_request(inline=True) handler {name} awaits: an inline handler runs in its "
            "caller's task and must not (drop inline=True, or move the await into a state)"
        )


def awaits(fn: Callable[..., Any]) -> bool:
    """Whether the body of ``async def`` `fn` may suspend: an await, ``async for`` or ``async with``.

    A decorated function is read layer by layer (``__wrapped__``): its wrappers run too.

    Only what is written in the body can suspend a coroutine, and it is compiled
    to one of a few opcodes, so this reading of the bytecode is exact (nested
    functions have their own code; an async comprehension is awaited here).
    """
    layer: Any = fn
    seen: set[int] = set()
    while id(layer) not in seen:  # each layer of a decorated function runs: any of them may await
        seen.add(id(layer))
        code = getattr(layer, "__code__", None)
        if code is None:
            return True  # not a plain function (a callable object): assume it may
        if any(i.opname in _SUSPENDING_OPS for i in dis.get_instructions(code)):
            return True
        layer = getattr(layer, "__wrapped__", None)
        if layer is None:
            return False
    return False  # pragma: no cover - a __wrapped__ chain that loops back on itself


def on_response(fn: F) -> F:
    """Mark an ``async def`` method as the receiver of forwarded answers.

    ``address.request(req).forward_to(self.ctx)`` sends the request at once;
    the answer arrives later, in order with other messages, at the
    ``on_response`` handler whose first parameter is annotated with the
    request type. The second parameter receives an `outcome.Outcome`: a
    failure (the server raised, or ended before answering) arrives as
    `outcome.Error`, never lost.

    Example:
        ```python
        @hybrid.on_response
        async def got(self, request: GetCount, response: outcome.Outcome[int]) -> None:
            self.total += response.unwrap()
        ```
    """
    return _mark(RESPONSE, fn)


def _resolve(fn: Callable[..., Any], annotation: object, localns: dict[str, Any]) -> object:
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    globalns = dict(getattr(module, "__dict__", {}))
    globalns.update(getattr(fn, "__globals__", {}))
    return eval(annotation, globalns, localns)  # noqa: S307 - evaluating an annotation


def _flatten(annotation: object) -> list[object]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _flatten(arg)]
    return [annotation]


def message_types(cls: type, name: str, fn: Callable[..., Any], kind: str, localns: dict[str, Any]) -> list[type]:
    """The message types that handler `fn` (attribute `name` of `cls`) declares."""
    where = f"{cls.__qualname__}.{name}"
    params = list(inspect.signature(fn).parameters.values())
    needed = 3 if kind == RESPONSE else 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != needed or len(params) != needed:
        shape = "(self, request, response)" if kind == RESPONSE else f"(self, {kind})"
        raise HandlerDefinitionError(f"@hybrid.on_{kind} handler {where} must take {shape}")
    param = positional[1]
    if param.annotation is inspect.Parameter.empty:
        raise HandlerDefinitionError(
            f"@hybrid.on_{kind} handler {where}: annotate parameter {param.name!r} with the message type it handles"
        )
    try:
        annotation = _resolve(fn, param.annotation, localns)
    except Exception as error:
        raise HandlerDefinitionError(
            f"@hybrid.on_{kind} handler {where}: cannot resolve the annotation "
            f"{param.annotation!r} of {param.name!r} ({error}); message classes must be "
            "defined before the agent class that handles them"
        ) from error
    result: list[type] = []
    for member in _flatten(annotation):
        if not isinstance(member, type):
            raise HandlerDefinitionError(
                f"@hybrid.on_{kind} handler {where}: {member!r} is not a class; "
                "annotate with message classes (or a union of them)"
            )
        message_type: type = member
        if kind != EVENT and not issubclass(member, Request):
            raise HandlerDefinitionError(
                f"@hybrid.on_{kind} handler {where}: {member.__qualname__} is not a subclass of hybrid.Request"
            )
        result.append(message_type)
    return result


def defining_namespace() -> dict[str, Any]:
    """The local names where the class being defined is written (best effort).

    With ``from __future__ import annotations``, annotations are strings; a
    message class defined in a function body is only visible in that
    function's locals, so they are searched too.
    """
    frame: types.FrameType | None = sys._getframe(1)  # noqa: SLF001 - CPython's documented frame access
    while frame is not None and frame.f_code.co_name in ("__init_subclass__", "defining_namespace"):
        frame = frame.f_back
    return dict(frame.f_locals) if frame is not None else {}


def build_tables(cls: type, localns: dict[str, Any]) -> tuple[Table, Table, Table]:
    """Collect the handlers of `cls` and its bases into three dispatch tables."""
    names: dict[str, dict[type, str]] = {kind: {} for kind in _KINDS}
    for base in reversed(cls.__mro__[1:]):
        inherited = base.__dict__.get("_hybrid_handler_names")
        if inherited:
            for each in _KINDS:
                names[each].update(inherited[each])
    own: dict[str, dict[type, str]] = {kind: {} for kind in _KINDS}
    for attr, value in cls.__dict__.items():
        kind: str | None = getattr(value, _MARK, None)
        if kind is None:
            continue
        # A decorated redefinition replaces whatever the inherited name handled.
        for table in names.values():
            for message_type in [t for t, n in table.items() if n == attr]:
                del table[message_type]
        for message_type in message_types(cls, attr, value, kind, localns):
            other = own[kind].get(message_type)
            if other is not None:
                raise HandlerDefinitionError(
                    f"{cls.__qualname__} has two @hybrid.on_{kind} handlers for "
                    f"{message_type.__qualname__}: {other} and {attr}"
                )
            own[kind][message_type] = attr
    for kind in _KINDS:
        names[kind].update(own[kind])
    type.__setattr__(cls, "_hybrid_handler_names", names)
    tables = tuple({t: getattr(cls, n) for t, n in names[kind].items()} for kind in _KINDS)
    for handler in tables[1].values():
        if getattr(handler, INLINE, False):  # as found: a decorator above the mark copies the flag
            _refuse_awaiting(handler)
    return tables[0], tables[1], tables[2]


def lookup(table: Table, message_type: type, kind: str, agent_type: type) -> Callable[..., Awaitable[Any]]:
    """The handler for `message_type`, searching its bases; cached in `table`.

    Raises:
        UnhandledMessage: no handler for this type or any of its bases.
    """
    for base in message_type.__mro__:
        fn = table.get(base)
        if fn is not None:
            table[message_type] = fn
            return fn
    # Private message types (a supervisor's own) are machinery, not the agent's API.
    handled = ", ".join(sorted(t.__qualname__ for t in table if not t.__qualname__.startswith("_"))) or "none"
    raise UnhandledMessage(
        f"{agent_type.__qualname__} has no @hybrid.on_{kind} handler for "
        f"{message_type.__qualname__} (it handles: {handled})"
    )
