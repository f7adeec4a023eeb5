"""Check a JSON value against the vendor's topic schemas, strictly.

The schemas (``genesys_mux/emulator/topic_schemas.json``) are generated from
the vendor SDK's models by ``scripts/refresh-topic-schemas``. A general JSON
Schema validator would accept fields a schema does not name; here every
field must be one the vendor's model has, because a field the platform never
sends is exactly what lets a client work against the emulator and fail on a
tenant. Also checked: each value's JSON type, enum values (exactly as the
model spells them), ISO-8601 datetimes, and no ``null`` (the platform leaves
absent fields out).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from genesys_mux.emulator.schemas import schema_document

# RFC 3339 / ISO-8601 with a zone, as the platform writes them.
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def document() -> dict[str, Any]:
    """The whole schema document: provenance, topics, rest, definitions."""
    return schema_document()


def topic_schema(template: str) -> dict[str, Any]:
    """The schema of a topic template such as ``v2.users.{id}.conversations.calls``."""
    schema: dict[str, Any] = document()["topics"][template]
    return schema


def rest_schema(name: str) -> dict[str, Any]:
    """The schema of a REST body: ``conversation``, ``conversationDetailsQueryResponse``..."""
    schema: dict[str, Any] = document()["rest"][name]
    return schema


def violations(
    value: Any, schema: dict[str, Any], definitions: dict[str, Any] | None = None
) -> list[str]:
    """Every way ``value`` departs from ``schema``, each with its JSON path.

    ``$ref`` names are looked up in ``definitions``: the schema's own when
    it has them, else the whole document's.
    """
    found: list[str] = []
    if definitions is None:
        definitions = schema.get("definitions") or document()["definitions"]
    _check(value, schema, "$", found, definitions)
    return found


def _check(
    value: Any, schema: dict[str, Any], path: str, found: list[str], defs: dict[str, Any]
) -> None:
    ref = schema.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        schema = defs[name]
    if value is None:
        found.append(f"{path}: null (the platform leaves absent fields out)")
        return
    kind = schema.get("type")
    if kind is None:
        return  # "object" in the SDK: anything goes
    if kind == "object":
        if not isinstance(value, dict):
            found.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        properties = schema.get("properties")
        if properties is None:
            extra = schema.get("additionalProperties", {})
            for key, item in value.items():
                _check(item, extra, f"{path}.{key}", found, defs)
            return
        for key, item in value.items():
            if key not in properties:
                found.append(f"{path}.{key}: not a field of the vendor's model")
            else:
                _check(item, properties[key], f"{path}.{key}", found, defs)
        return
    if kind == "array":
        if not isinstance(value, list):
            found.append(f"{path}: expected an array, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]", found, defs)
        return
    if not _is_type(value, kind):
        found.append(f"{path}: expected {kind}, got {type(value).__name__} {value!r:.60}")
        return
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        found.append(f"{path}: {value!r} is not one of {enum}")
    fmt = schema.get("format")
    if fmt == "date-time" and not _DATETIME.fullmatch(value):
        found.append(f"{path}: {value!r} is not an ISO-8601 datetime")
    elif fmt == "date" and not _DATE.fullmatch(value):
        found.append(f"{path}: {value!r} is not an ISO-8601 date")


@cache
def _types() -> dict[str, tuple[type, ...]]:
    return {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


def _is_type(value: Any, kind: str) -> bool:
    if kind != "boolean" and isinstance(value, bool):
        return False  # JSON true is not a number
    return isinstance(value, _types()[kind])
