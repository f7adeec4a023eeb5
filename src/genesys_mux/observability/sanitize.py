"""Keeping secrets out of what operators read: the audit log and the status JSON.

Theory of operation
-------------------
The observability surfaces (audit log, ``/status``) are read by people and
shipped to log stores, so a credential that reaches them has leaked. Two
defences, in this order:

1. **Allow-lists.** Callers build records from fields they know, never from a
   whole exception, request or response. This module cannot enforce that; it
   is the rule the audit log follows.
2. **Redaction**, as the net under the allow-lists:

   * a field whose *name* mentions ``token``, ``secret``, ``password`` or
     ``authorization`` is written as ``"[REDACTED]"`` whatever its value;
   * a string *value* that looks like a credential is replaced too: a
     ``Bearer``/``Basic`` header value, a JWT, or a long run of base64 or
     URL-safe characters mixing upper case, lower case and digits (the shape
     of an opaque OAuth token). Genesys ids (UUIDs, ``streaming-0-…``
     channel ids) and topics are lower case or dotted and pass through, so
     the audit log stays useful.

The value check is a heuristic and errs on the side of redacting: a false
positive costs a log field, a false negative costs a credential.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from genesys_mux.core.redaction import REDACTED, looks_secret

__all__ = ["MAX_STRING", "REDACTED", "looks_secret", "redact", "sanitize_value", "secret_name"]


_SECRET_NAME = re.compile(r"token|secret|password|passwd|authorization|credential|api_?key", re.I)
#: Strings are cut to this length: a record field is a fact, not a payload.
MAX_STRING = 500
#: Nested containers deeper than this are cut off (nothing we write nests).
_MAX_DEPTH = 4
_MAX_ITEMS = 50


def secret_name(name: str) -> bool:
    """True when a field called ``name`` must never carry its value."""
    return _SECRET_NAME.search(name) is not None


def sanitize_value(value: Any, depth: int = 0) -> Any:
    """``value`` made safe and JSON-ready: secrets redacted, strings capped.

    Mappings are redacted by key as well; other objects become their type
    name rather than their ``str``, which could carry anything.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity; an unknown number is null.
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        if looks_secret(value):
            return REDACTED
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…"
    if depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return redact(value, depth + 1)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return [sanitize_value(v, depth + 1) for v in items[:_MAX_ITEMS]]
    return f"<{type(value).__name__}>"


def redact(fields: Mapping[Any, Any], depth: int = 0) -> dict[str, Any]:
    """A copy of ``fields`` with secret-named keys and secret-looking values redacted."""
    clean: dict[str, Any] = {}
    for key, value in list(fields.items())[:_MAX_ITEMS]:
        name = str(key)
        clean[name] = REDACTED if secret_name(name) else sanitize_value(value, depth)
    return clean
