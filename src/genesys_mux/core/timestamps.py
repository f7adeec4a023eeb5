"""Genesys timestamps: ISO-8601 in UTC with millisecond precision and a ``Z``.

Genesys Cloud writes every time as ``2026-11-28T14:11:17.123Z``. One module
formats and parses them, so the emulator, the REST client and the snapshot
facts agree on the details (rounding, the ``Z``, missing fractions).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["format_iso", "parse_iso"]


def format_iso(unix_seconds: float) -> str:
    """``2026-11-28T14:11:17.123Z`` for a Unix time, rounded to the millisecond."""
    whole, ms = divmod(round(unix_seconds * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def parse_iso(value: str) -> float:
    """Unix seconds from an ISO-8601 timestamp; a time without a zone is UTC.

    Raises :class:`ValueError` for anything that is not a timestamp.
    """
    parsed = datetime.fromisoformat(value)  # accepts a trailing Z since 3.11
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
