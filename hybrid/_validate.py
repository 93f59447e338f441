"""Argument checks shared by every public entry point, so that edge cases agree.

One rule for numbers everywhere: a bool is not a number (``TypeError``); NaN is
never accepted; infinity only where the caller says it means "no limit"; a
value out of range is a ``ValueError`` that names the argument and the bound.
"""

from __future__ import annotations

import math
from typing import Final, Literal, overload


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    """`value` as a float; an int too large for one is infinite (as it is for any bound)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


SQL_INT_MAX: Final = 2**63 - 1
"""The largest int a database binds (a signed 64-bit BIGINT)."""

INDEXED_MAX_BYTES: Final = 1024
"""The longest text (UTF-8 bytes) a database keys on: Postgres' btree entries are bounded (about 2.7 kB)."""


@overload
def count(
    what: str, value: object, *, minimum: int = ..., maximum: int | None = ..., optional: Literal[False] = ...
) -> int: ...
@overload
def count(
    what: str, value: object, *, minimum: int = ..., maximum: int | None = ..., optional: Literal[True]
) -> int | None: ...
def count(
    what: str, value: object, *, minimum: int = 0, maximum: int | None = None, optional: bool = False
) -> int | None:
    """An int >= `minimum` and <= `maximum` if given (None too, when `optional`: "no limit").

    Raises:
        TypeError: `value` is not an int (bools are not counts).
        ValueError: `value` is out of range.
    """
    if value is None and optional:
        return None
    none = "None or " if optional else ""
    bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be {none}an int {bound}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{what} must be {none}an int {bound}, got {value!r}")
    return value


def moment(what: str, value: object) -> float | None:
    """A time in seconds since the Unix epoch (None too: "none given"); ``inf`` and ``-inf`` allowed, never NaN.

    Raises:
        TypeError: `value` is not an int or a float.
        ValueError: NaN.
    """
    if value is None:
        return None
    if not _is_number(value):
        raise TypeError(f"{what} must be None or a time in seconds since the epoch, got {value!r}")
    number = _float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        raise ValueError(f"{what} must be a time in seconds since the epoch, not NaN")
    return number


def seconds(what: str, value: object, *, positive: bool = False, infinite: bool = False) -> float:
    """A number of seconds: finite (or ``inf`` when `infinite`), >= 0 (> 0 when `positive`).

    Raises:
        TypeError: `value` is not an int or a float.
        ValueError: NaN, negative, zero when `positive`, or infinite when not allowed.
    """
    bound = "> 0" if positive else ">= 0"
    kind = "a number of seconds" if infinite else "a finite number of seconds"
    if not _is_number(value):
        raise TypeError(f"{what} must be {kind} {bound}, got {value!r}")
    number = _float(value)  # type: ignore[arg-type]
    if math.isnan(number) or number < 0 or (positive and number == 0) or (math.isinf(number) and not infinite):
        raise ValueError(f"{what} must be {kind} {bound}, got {value!r}")
    return number


def utf8(what: str, value: str) -> str:
    """A str UTF-8 can encode (no lone surrogate): what goes on a wire or into a database as text.

    Raises:
        ValueError: `value` holds a lone surrogate.
    """
    try:
        value.encode()
    except UnicodeEncodeError as error:
        raise ValueError(f"{what} must be text UTF-8 can encode (no lone surrogate), got {value!r}") from error
    return value


def storable(what: str, value: str) -> str:
    """A str every database stores as it is: no NUL (Postgres text holds none), no lone surrogate (not UTF-8).

    Checked where it is given: refused by a database's driver instead, it would
    fail the whole batch it was written in.

    Raises:
        ValueError: `value` holds a NUL or a lone surrogate.
    """
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL character (Postgres text holds none), got {value!r}")
    return utf8(what, value)


def indexable(what: str, value: str) -> str:
    """A `storable` str short enough for a database to key on (at most `INDEXED_MAX_BYTES` of UTF-8).

    Raises:
        ValueError: `value` holds a NUL or a lone surrogate, or is too long.
    """
    storable(what, value)
    size = len(value.encode())
    if size > INDEXED_MAX_BYTES:
        raise ValueError(f"{what} must be at most {INDEXED_MAX_BYTES} bytes of UTF-8, got {size}: {value[:40]!r}...")
    return value


def escaped(text: str) -> str:
    """`text` with what UTF-8 cannot encode (a lone surrogate) escaped, for text that is reported, not checked.

    An error's message or a class's name is shown as it is, unless it would make its
    whole report (an event log entry, a metrics scrape) fail to encode.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def fraction(what: str, value: object) -> float:
    """A number between 0 and 1 inclusive.

    Raises:
        TypeError: `value` is not an int or a float.
        ValueError: outside [0, 1] (or NaN).
    """
    if not _is_number(value):
        raise TypeError(f"{what} must be a number between 0 and 1, got {value!r}")
    number = _float(value)  # type: ignore[arg-type]
    if not 0 <= number <= 1:
        raise ValueError(f"{what} must be a number between 0 and 1, got {value!r}")
    return number


def factor(what: str, value: object) -> float:
    """A finite number >= 1 (a growth factor).

    Raises:
        TypeError: `value` is not an int or a float.
        ValueError: smaller than 1, infinite or NaN.
    """
    if not _is_number(value):
        raise TypeError(f"{what} must be a finite number >= 1, got {value!r}")
    number = _float(value)  # type: ignore[arg-type]
    if not (number >= 1 and math.isfinite(number)):
        raise ValueError(f"{what} must be a finite number >= 1, got {value!r}")
    return number


def capacity(what: str, value: object) -> int | None:
    """A mailbox bound: an int >= 1, or ``math.inf`` (or None) for unbounded, as trio's channels say it.

    Returns the bound, or None for unbounded.

    Raises:
        TypeError: not an int (bools are not counts), nor ``math.inf``.
        ValueError: smaller than 1.
    """
    if value is None or (isinstance(value, float) and value == math.inf):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int >= 1, or math.inf for no bound, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be an int >= 1, or math.inf for no bound, got {value!r}")
    return value


def timeout(what: str, value: object) -> float | None:
    """A timeout in seconds (>= 0): ``math.inf`` (or None) waits forever, returned as None."""
    if value is None or (isinstance(value, float) and value == math.inf):
        return None
    number = _float(value) if _is_number(value) else math.nan  # type: ignore[arg-type]
    if math.isnan(number) or number < 0:
        error = ValueError if _is_number(value) else TypeError
        raise error(f"{what} must be a number of seconds >= 0, or math.inf to wait forever, got {value!r}")
    return None if number == math.inf else number
