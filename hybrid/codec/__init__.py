"""The codec of values that leave the process: msgspec's msgpack, typed, never pickle.

Shared by remote agents (`hybrid.remote`: messages, answers and exceptions
between nodes) and durable agents (`hybrid.durable`: checkpoints). A payload is
decoded only into the type its annotation names, so received bytes can never
make an object of a type they choose. Needs msgspec, which the ``remote`` and
``durable`` extras bring; ``import hybrid`` never imports it.

Package map (imports point up this list):

- ``_errors.py``: `CodecError`, the one error
- ``_naming.py``: a class's wire or checkpoint name, version and upgrade (`message`
  and ``hybrid.durable.durable`` record them the same way)
- ``_types.py``: what an annotation lets the codec bring back (``Any`` slots take
  JSON-like builtins only), where in a value an encode or decode failed, the
  ``T`` of ``Agent[T]`` and the ``R`` of ``Request[R]``
- ``_records.py``: attrs classes and dataclasses as maps of their fields, made
  again with ``cls(**fields)``
- ``_failures.py``: exceptions on the wire, `register_error` and the
  process-wide registry of the types rebuilt as themselves
- ``_messages.py``: `MessageCodec` (messages, values, exceptions) and
  `message`, the class decorator setting a wire name and version

Example:
    ```python
    @hybrid.codec.message(name="bank.Credit")
    @attrs.frozen
    class Credit:
        account: str
        cents: int

    codec = hybrid.codec.MessageCodec()
    codec.register(Credit)
    name, version, payload = codec.encode(Credit("acct-9", 100))
    assert codec.decode(name, version, payload) == Credit("acct-9", 100)
    ```
"""

try:
    import msgspec as _msgspec
except ImportError as _error:  # pragma: no cover - tested in a subprocess (tests/codec/test_messages.py)
    raise ImportError(
        "hybrid.codec needs msgspec: pip install 'trio-hybrid[remote]' (or 'trio-hybrid[durable]')",
        name=_error.name,
    ) from _error

from ._errors import CodecError as CodecError
from ._failures import register_error as register_error
from ._messages import MessageCodec as MessageCodec
from ._messages import message as message

__all__ = ["CodecError", "MessageCodec", "message", "register_error"]

_name = ""
for _name in __all__:  # tracebacks and the docs say hybrid.codec.X, as trio's public names do
    globals()[_name].__module__ = __name__
del _name, _msgspec
