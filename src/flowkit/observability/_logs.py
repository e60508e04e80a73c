"""Logs a person can read, and logs a pipeline can parse.

:func:`setup_logging` sends every record to one stream, formatted by
:class:`TextLogFormatter` (a line per record: time, level, logger, message and
the ids flowkit attached, in colour on a terminal) or :class:`JsonLogFormatter`
(one JSON object per line). The ``flowkit`` command calls it for
``--log-level`` and ``--log-format``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, get_args

from .._log_fields import PREFIX
from .._redact import redact_url

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "JsonLogFormatter",
    "LogFormat",
    "TextLogFormatter",
    "logging_set_up",
    "parse_level",
    "setup_logging",
    "use_color",
]

#: The formats :func:`setup_logging` writes.
LogFormat = Literal["text", "json"]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The ids the text format shows after the message, in this order, without the prefix.
_SHOWN_IDS: Final = ("correlation_id", "workflow_id", "message_id", "dead_letter_id")

# What every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}

_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_CYAN: Final = "\x1b[36m"
_LEVEL_COLORS: Final = {
    logging.DEBUG: "\x1b[34m",  # blue
    logging.INFO: "\x1b[32m",  # green
    logging.WARNING: "\x1b[33m",  # yellow
    logging.ERROR: "\x1b[31m",  # red
    logging.CRITICAL: "\x1b[1;31m",  # bold red
}

# Marks the handler that setup_logging installed, so that calling it again replaces it.
_MARK: Final = "_flowkit_setup_logging"


def parse_level(level: int | str) -> int:
    """A logging level from its name (any case) or its number.

    Raises:
        ValueError: naming the level and the names accepted.
    """
    if isinstance(level, int) and not isinstance(level, bool):
        if level < 0:
            raise ValueError(f"a log level is a number >= 0, got {level}")
        return level
    if isinstance(level, str) and level.strip().lower() in _LEVELS:
        return _LEVELS[level.strip().lower()]
    raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")


def use_color(stream: TextIO) -> bool:
    """Whether to colour what is written to ``stream``: it is a terminal, the
    ``NO_COLOR`` environment variable is unset or empty, and ``TERM`` is not ``dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class TextLogFormatter(logging.Formatter):
    """One line per record for a person to read::

        2025-06-01 12:00:00.123 DEBUG    flowkit.bus  seller:confirm handled
            shop.order_placed 0190... in 1.2 ms (attempt 1)  correlation_id=o-2

    (on one line).
    The time (local), the level, the logger, the message, then the ids flowkit
    attached to the record (``correlation_id``, ``workflow_id``,
    ``message_id``, ``dead_letter_id``) that the message does not already
    show; a traceback follows on the next lines. URL passwords and secret
    query parameters in the message and the traceback are masked.

    Args:
        color: colour the level, the logger and the ids (ANSI escapes).
    """

    def __init__(self, *, color: bool = False) -> None:
        super().__init__()
        self.color = color

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's local time, to the millisecond: ``2025-06-01 12:00:00.123``."""
        when = datetime.fromtimestamp(record.created).astimezone()
        return when.strftime(datefmt) if datefmt else when.isoformat(" ", "milliseconds")[:23]

    def format(self, record: logging.LogRecord) -> str:
        """The record on one line, with its traceback (if any) after it."""
        message = redact_url(record.getMessage())
        ids = [
            f"{name}={value}"
            for name in _SHOWN_IDS
            if (value := record.__dict__.get(PREFIX + name)) is not None
            and str(value) not in message
        ]
        time = self.formatTime(record)
        level = f"{record.levelname:<8}"
        logger = record.name
        shown = "  ".join(ids)
        if self.color:
            color = _level_color(record.levelno)
            time = f"{_DIM}{time}{_RESET}"
            level = f"{color}{level}{_RESET}"
            logger = f"{_CYAN}{logger}{_RESET}"
            shown = f"{_DIM}{shown}{_RESET}" if shown else ""
        line = f"{time} {level} {logger}  {message}"
        if shown:
            line = f"{line}  {shown}"
        details = _details(self, record)
        if details:
            line = f"{line}\n{details}"
        return line


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record, on one line, for log pipelines::

        {"time": "2025-06-01T10:00:00.123+00:00", "level": "DEBUG",
         "logger": "flowkit.bus", "message": "...", "flowkit_action": "handled",
         "flowkit_correlation_id": "o-2", ...}

    ``time`` is UTC (ISO 8601, to the millisecond); then ``level``,
    ``logger``, ``message``, every attribute given with ``extra=`` (flowkit's
    ``flowkit_*`` fields and your own; a value JSON cannot hold is written as
    its ``str``), and, when the record has them, ``exception`` (the traceback
    as one string) and ``stack``. URL passwords and secret query parameters in
    the message and the traceback are masked.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_url(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_") and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = redact_url(self.formatException(record.exc_info))
        elif record.exc_text:
            data["exception"] = redact_url(record.exc_text)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(
    level: int | str = "INFO",
    format: LogFormat = "text",
    stream: TextIO | None = None,
    *,
    color: bool | None = None,
) -> logging.Handler:
    """Send log records to ``stream``, readable by a person or by a log pipeline.

    Installs one handler on the root logger (replacing the one an earlier
    call installed), so that flowkit's records and your own are written the
    same way. ``level`` is the level of the ``flowkit`` loggers; the root
    logger is set to it too, but no lower than INFO, so that other libraries'
    DEBUG lines stay off (set their loggers' levels to see them).

    Args:
        level: ``"DEBUG"``, ``"INFO"``, ``"WARNING"``, ``"ERROR"``,
            ``"CRITICAL"`` (any case) or a number. At DEBUG, flowkit logs each
            publish, each handling and each step of a workflow.
        format: ``"text"`` for people (:class:`TextLogFormatter`), ``"json"``
            for one JSON object per line (:class:`JsonLogFormatter`).
        stream: where to write (standard error by default).
        color: colour the text format; by default, when ``stream`` is a
            terminal and ``NO_COLOR`` is not set. Ignored for JSON.

    Returns:
        The handler installed (remove it from the root logger to undo).

    Raises:
        ValueError: if ``level`` or ``format`` is not one of those above.
    """
    number = parse_level(level)
    if format not in get_args(LogFormat):
        raise ValueError(f"unknown log format {format!r}; use 'text' or 'json'")
    target = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(target)
    if format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(TextLogFormatter(color=use_color(target) if color is None else color))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(number, logging.INFO))
    logging.getLogger("flowkit").setLevel(number)
    return handler


@contextmanager
def logging_set_up(
    level: int | str, format: LogFormat, stream: TextIO | None = None
) -> Iterator[None]:
    """:func:`setup_logging` for the duration of a block; the handlers and
    levels it changed are put back afterwards (the ``flowkit`` command does
    this, so that calling it in a process leaves that process's logging alone)."""
    root = logging.getLogger()
    flowkit = logging.getLogger("flowkit")
    saved = (list(root.handlers), root.level, flowkit.level)
    handler = setup_logging(level, format, stream)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        handlers, root_level, flowkit_level = saved
        for old in handlers:
            if old not in root.handlers:
                root.addHandler(old)
        root.setLevel(root_level)
        flowkit.setLevel(flowkit_level)


def _level_color(levelno: int) -> str:
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _LEVEL_COLORS[threshold]
    return _LEVEL_COLORS[logging.DEBUG]


def _details(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback and stack, masked, or an empty string."""
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return redact_url("\n".join(parts))
