"""Logging for the command line: structlog in front, stdlib records routed through it.

The library logs with the standard :mod:`logging` module so that embedding
applications stay in control. The CLI renders those records and its own
structlog events the same way: JSON lines (for pipes and log shippers) or a
readable console format, with upper-case level names either way.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Send every log line, ours and the library's, to stderr through structlog."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _upper_level,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: far too chatty at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _upper_level(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    level = event.get("level")
    if isinstance(level, str):
        event["level"] = level.upper()
    return event
