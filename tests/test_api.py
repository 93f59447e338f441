"""The public namespace: complete, sorted, documented, with hybrid.* names."""

from __future__ import annotations

import inspect

import hybrid


def test_all_is_sorted_and_lists_every_public_name() -> None:
    assert hybrid.__all__ == sorted(hybrid.__all__)
    public = {name for name in dir(hybrid) if not name.startswith("_") and not inspect.ismodule(getattr(hybrid, name))}
    assert public == set(hybrid.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in hybrid.__all__:
        obj = getattr(hybrid, name)
        assert inspect.getdoc(obj), f"hybrid.{name} has no docstring"


def test_public_methods_and_properties_have_docstrings() -> None:
    missing: list[str] = []
    for name in hybrid.__all__:
        obj = getattr(hybrid, name)
        if not inspect.isclass(obj):
            continue
        members: dict[str, object] = dict(vars(obj))
        for attr, value in members.items():
            documented = inspect.isfunction(value) or isinstance(value, (property, staticmethod))
            if attr.startswith("_") or not documented:
                continue
            if not inspect.getdoc(value):  # pyright: ignore[reportUnknownArgumentType]
                missing.append(f"{name}.{attr}")
    assert missing == []


def test_public_objects_say_they_live_in_hybrid() -> None:
    for name in hybrid.__all__:
        assert getattr(hybrid, name).__module__ == "hybrid", name


def test_the_exception_tree_has_one_root_and_builtin_bases_where_they_fit() -> None:
    suffixes = ("Error", "Stopped", "Full", "Message")
    errors = [getattr(hybrid, name) for name in hybrid.__all__ if name.endswith(suffixes)]
    errors += [hybrid.InvalidTransition]
    for error in errors:
        assert issubclass(error, hybrid.HybridError), error
    assert issubclass(hybrid.UnhandledMessage, TypeError)
    assert issubclass(hybrid.HandlerDefinitionError, TypeError)
    assert issubclass(hybrid.InvalidTransition, TypeError)
    assert issubclass(hybrid.LifecycleError, RuntimeError)
    assert not issubclass(hybrid.HybridError, BaseExceptionGroup)
    assert hybrid.HybridError.__bases__ == (Exception,)
