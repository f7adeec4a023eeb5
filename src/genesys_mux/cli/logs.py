"""Logging for the command line: one line schema for log lines and audit facts alike.

The library logs with the standard :mod:`logging` module so that embedding
applications stay in control. The CLI renders those records, its own
structlog events and (when the audit log goes to stderr) the audit facts
through one pipeline, so that every line on stderr has the same shape::

    {"ts": "2026-01-01T12:00:00.000Z", "level": "WARNING", "logger": "...", "event": "...", ...}

``ts`` is ISO-8601 UTC to the millisecond, ``level`` is upper case,
``logger`` names the source (``genesys_mux.audit`` for audit facts, whose
``event`` is their upper-case code; otherwise ``event`` is the message), and
a line about one stream carries its ``stream_id``. The audit log's own file
(``audit_path``) uses the same keys. JSON lines when asked (``--json``,
``--log-json``), a readable console format otherwise.

Lines are written to whatever ``sys.stderr`` is at the time: under the live
dashboard that is rich's proxy, which prints them above the display instead
of over it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

from genesys_mux.core.timestamps import format_iso
from genesys_mux.observability.audit import AUDIT_LOGGER

__all__ = ["configure_logging", "level_asked", "lines_are_json", "override_level"]

# Whether the last configure_logging asked for JSON lines (see lines_are_json).
_json_lines = False
# The level the user asked for (--log-level), over each command's own default.
_override: str | None = None


def override_level(level: str | None) -> None:
    """Use ``level`` for every command's log lines instead of the command's default."""
    global _override
    _override = None if level is None else level.upper()


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to the ``sys.stderr`` of the moment, not of its creation."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def level_asked() -> str | None:
    """The level ``--log-level`` asked for, if any (a command then sets no level of its own)."""
    return _override


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Send every log line, ours and the library's, to stderr through structlog.

    ``level`` is the command's default; ``--log-level`` (:func:`override_level`)
    wins over it. Audit facts are written at any level.
    """
    global _json_lines
    _json_lines = json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=["stream_id", "audit"]),
        _schema,
    ]
    # A logged exception is rendered as its plain traceback: the exception and
    # the frames, never the frames' local variables (a request's headers hold
    # the bearer token, a token request's the client secret). In JSON it is a
    # string field, ``exception``.
    rendering: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        else [
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(),
                timestamp_key="ts",
                exception_formatter=structlog.dev.plain_traceback,
            )
        ]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = _CurrentStderr()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_override or level.upper())
    # Audit facts are written whatever the level of the other lines: they
    # are the record of what happened, and are few.
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)
    # aiohttp's access log is one line per request: far too chatty at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def lines_are_json() -> bool:
    """True when stderr carries JSON lines: a command's own messages must be lines too."""
    return _json_lines


def _schema(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """``ts`` first, the level in upper case, and an audit fact's fields at the top level."""
    record = event.get("_record")
    level = event.pop("level", None)
    shaped: dict[str, Any] = {
        "ts": format_iso(record.created if isinstance(record, logging.LogRecord) else time.time()),
        "level": level.upper() if isinstance(level, str) else level,
    }
    for key in ("logger", "event"):
        if key in event:
            shaped[key] = event.pop(key)
    audit = event.pop("audit", None)
    shaped.update(event)
    if isinstance(audit, dict):
        for name, value in audit.items():
            shaped.setdefault(name, value)
    return shaped
