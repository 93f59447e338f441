"""How a class is named on the wire or in a checkpoint: its name, version and upgrade function.

`hybrid.codec.message` and `hybrid.durable.durable` both record a `ClassMeta` on
the class itself (an attribute of its own, not inherited by subclasses), never
in a global registry; each under its own attribute, so one class can be both a
message and a durable agent with different names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

__all__ = ["ClassMeta", "Upgrade", "class_meta", "meta_of", "record_meta"]

Upgrade = Callable[[int, dict[str, Any]], dict[str, Any]]
"""``upgrade(old_version, fields) -> fields``: the fields of an older version, brought up to date."""

C = TypeVar("C", bound=type)


@attrs.frozen
class ClassMeta:
    """What a naming decorator records: the name (None: ``module.qualname``), the version, the upgrade."""

    name: str | None = None
    version: int = 1
    upgrade: Upgrade | None = None


def class_meta(decorator: str, name: object, version: object, upgrade: object) -> ClassMeta:
    """The checked options of the decorator `decorator` (its name, for the error messages).

    Raises:
        TypeError: an option of the wrong type.
        ValueError: an empty name, or a version below 1.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{decorator}(name=...) takes a str, got {name!r}")
    if name == "":
        raise ValueError(f"{decorator}(name=...) cannot be empty")
    if type(version) is not int:
        raise TypeError(f"{decorator}(version=...) takes an int, got {version!r}")
    if version < 1:
        raise ValueError(f"{decorator}(version=...) must be >= 1, got {version}")
    if upgrade is not None and not callable(upgrade):
        raise TypeError(f"{decorator}(upgrade=...) takes a function upgrade(old_version, fields), got {upgrade!r}")
    return ClassMeta(name, version, upgrade)  # pyright: ignore[reportArgumentType] - checked above


def record_meta(target: C, attribute: str, meta: ClassMeta, refusal: str) -> C:
    """Record `meta` on the class `target` under `attribute`; `refusal` is the TypeError's text for a non-class."""
    if not isinstance(target, type):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{refusal}, got {target!r}")
    setattr(target, attribute, meta)
    return target


def meta_of(cls: type, attribute: str) -> ClassMeta:
    """What was recorded on `cls` itself under `attribute` (a subclass is another class, with its own name)."""
    meta = cls.__dict__.get(attribute)
    return meta if isinstance(meta, ClassMeta) else ClassMeta()
