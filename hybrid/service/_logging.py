"""Log formats of service mode: the plain text line and `JsonFormatter`."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The ``--log-format text`` line: time, level, logger, message."""

# The attributes every LogRecord has (3.12 adds taskName): anything else came in `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))) | {"message", "asctime"}
_FIELDS = ("time", "level", "logger", "message", "exc_info", "stack_info")


class JsonFormatter(logging.Formatter):
    """A `logging.Formatter` that writes each record as one JSON object on one line.

    The fields, in this order: ``time`` (ISO 8601 in UTC, milliseconds, with a
    ``Z``), ``level``, ``logger``, ``message`` (the formatted message), then
    ``exc_info`` and ``stack_info`` as text when the record has them, then
    every field given in ``extra=``. An extra field whose name is one of
    those six is written as ``"extra.NAME"`` instead of replacing it; a value
    JSON cannot hold is written as its `str()`. Newlines inside a message or a
    traceback are escaped, so a log collector sees one record per line.

    This is what ``hybrid run --log-format json`` installs; use it in your own
    logging set-up the same way.

    Example:
        ```python
        import logging, sys
        from hybrid.service import JsonFormatter

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        logging.getLogger("shop").info("paid", extra={"order": "o-17", "cents": 1250})
        # {"time": "2025-01-31T09:15:02.118Z", "level": "INFO", "logger": "shop",
        #  "message": "paid", "order": "o-17", "cents": 1250}     (on one line)
        ```
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        data: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD:
                data[f"extra.{key}" if key in _FIELDS else key] = value
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_logging(level: str, form: Literal["text", "json"]) -> Callable[[], None]:
    """Send the root logger's records at `level` and above to stderr in `form`; return how to undo it.

    Service mode is the application, so it configures logging (the library
    never does). It adds one handler to the root logger and sets its level;
    the returned function removes the handler and restores the level (so
    that in-process tests leave logging as they found it).
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()

    return undo
