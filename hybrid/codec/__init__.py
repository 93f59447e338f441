"""The codec of values that leave the process: msgspec's msgpack, typed, never pickle.

Shared by durable agents (`hybrid.durable`: checkpoints) and remote agents
(`hybrid.remote`: messages between nodes). Needs msgspec, which the ``durable``
and ``remote`` extras bring; ``import hybrid`` never imports it.

Package map (imports point up this list):

- ``_errors.py``: `CodecError`, the one error
- ``_types.py``: what an annotation lets the codec bring back (``Any`` slots take
  JSON-like builtins only), where in a value an encode or decode failed, the
  ``T`` of ``Agent[T]`` and the ``R`` of ``Request[R]``
"""

try:
    import msgspec as _msgspec
except ImportError as _error:  # pragma: no cover - tested in a subprocess (tests/codec/test_messages.py)
    raise ImportError(
        "hybrid.codec needs msgspec: pip install 'trio-hybrid[remote]' (or 'trio-hybrid[durable]')",
        name=_error.name,
    ) from _error

from ._errors import CodecError as CodecError

__all__ = ["CodecError"]

_name = ""
for _name in __all__:  # tracebacks and the docs say hybrid.codec.X, as trio's public names do
    globals()[_name].__module__ = __name__
del _name, _msgspec
