"""The platform's notification topic schemas, as the emulator serves them.

``topic_schemas.json`` beside this module holds JSON Schemas for every topic
the emulator publishes and for the REST bodies it serves. They are generated
from the vendor's Python SDK (``scripts/refresh-topic-schemas``; the SDK is
generated from the platform's own topic schemas), so they say what the
platform sends, not what the emulator happens to send. The conformance tests
hold the emulator's bodies to them, and ``GET
/api/v2/notifications/availabletopics`` serves them.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from functools import cache
from importlib import resources
from typing import Any

from genesys_mux.core.topics import TopicFamily, parse_topic
from genesys_mux.emulator.platform import TOPIC_PERMISSIONS

__all__ = ["available_topics", "schema_document", "topic_schema"]

_DESCRIPTIONS: dict[TopicFamily, str] = {
    TopicFamily.QUEUE_CONVERSATIONS: "Conversations routed through a queue",
    TopicFamily.USER_CONVERSATIONS: "Conversations a user takes part in",
    TopicFamily.USER_PRESENCE: "A user's presence",
    TopicFamily.USER_ROUTING_STATUS: "A user's routing status",
    TopicFamily.CONVERSATION_DETAIL_EVENTS: "Analytics detail events of a conversation",
    TopicFamily.QUEUE_OBSERVATIONS: "Queue observations",
}


@cache
def schema_document() -> dict[str, Any]:
    """The whole generated document: ``provenance``, ``topics``, ``rest``, ``definitions``."""
    text = resources.files(__package__).joinpath("topic_schemas.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def topic_schema(template: str) -> dict[str, Any]:
    """A self-contained JSON Schema for a topic template, e.g. ``v2.users.{id}.presence``.

    The root model is referenced from ``definitions``, which holds exactly
    the models reachable from it. Raises ``KeyError`` for a template the
    document does not have.
    """
    document = schema_document()
    root = document["topics"][template]
    definitions = document["definitions"]
    reachable: dict[str, Any] = {}
    pending = [root["$ref"]]
    while pending:
        name = pending.pop().rsplit("/", 1)[-1]
        if name in reachable:
            continue
        reachable[name] = definitions[name]
        pending.extend(_refs(definitions[name]))
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": root["title"],
        "$ref": root["$ref"],
        "definitions": dict(sorted(reachable.items())),
    }


def _refs(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["$ref"]] if "$ref" in schema else []
        for value in schema.values():
            found.extend(_refs(value))
        return found
    if isinstance(schema, list):
        return [ref for item in schema for ref in _refs(item)]
    return []


def available_topics(expand: Collection[str]) -> list[dict[str, Any]]:
    """The entities of ``GET /api/v2/notifications/availabletopics``.

    Each has its ``id`` (a template with ``{id}`` for the entity) and
    ``description``; ``expand`` adds ``requiresPermissions``, ``transports``
    and ``schema``, as the platform's ``expand`` parameter does.
    """
    entities = []
    for template in schema_document()["topics"]:
        family = parse_topic(template.replace("{id}", "x")).family
        entity: dict[str, Any] = {"id": template, "description": _DESCRIPTIONS[family]}
        if "requiresPermissions" in expand:
            entity["requiresPermissions"] = [TOPIC_PERMISSIONS[family]]
        if "transports" in expand:
            entity["transports"] = ["Websocket"]
        if "schema" in expand:
            entity["schema"] = topic_schema(template)
        entities.append(entity)
    return entities
