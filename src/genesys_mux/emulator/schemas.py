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
import re
from collections.abc import Collection
from functools import cache
from importlib import resources
from typing import Any

from genesys_mux.core.topics import TopicFamily, parse_topic

__all__ = ["available_topics", "is_platform_topic", "schema_document", "topic_schema"]

#: Topics the reference names that the vendor's SDK has no model for (the
#: emulator publishes nothing on them, but a subscription is accepted).
_UNMODELLED_TEMPLATES = ("v2.analytics.queues.{id}.observations",)

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


@cache
def _platform_topic_pattern() -> re.Pattern[str]:
    # Written from the vendor's templates, not from genesys_mux.core.topics:
    # the platform, not the client's own grammar, decides what is a topic.
    templates = [*schema_document()["topics"], *_UNMODELLED_TEMPLATES]
    entity_id = "[A-Za-z0-9][A-Za-z0-9_-]*"
    return re.compile(
        "|".join(re.escape(t).replace(re.escape("{id}"), entity_id) for t in templates)
    )


def is_platform_topic(topic: str) -> bool:
    """Whether ``topic`` (one expanded topic) is one the platform has.

    Detail events, for one, are only the events the vendor lists
    (``acd.start``, ``user.end``, ``wrapup``...): any other name gets 400
    ``notification.invalid.topic``, as the platform answers.
    """
    return _platform_topic_pattern().fullmatch(topic) is not None


def available_topics(expand: Collection[str]) -> list[dict[str, Any]]:
    """The entities of ``GET /api/v2/notifications/availabletopics``.

    Each has its ``id`` (a template with ``{id}`` for the entity) and
    ``description``; ``expand`` adds ``requiresPermissions``, ``transports``
    and ``schema``, as the platform's ``expand`` parameter does.
    """
    # Here, not at the top: the platform model checks topics with this module.
    from genesys_mux.emulator.platform import TOPIC_PERMISSIONS

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
