"""The base class of request messages."""

from __future__ import annotations

from typing import Generic

from typing_extensions import TypeVar

R_co = TypeVar("R_co", covariant=True)


class Request(Generic[R_co]):
    """Base class of request messages; `R_co` is the type of the answer.

    Example:
        ```python
        @attrs.frozen
        class GetCount(hybrid.Request[int]):
            pass

        count: int = await address.request(GetCount())
        ```
    """

    __slots__ = ()
