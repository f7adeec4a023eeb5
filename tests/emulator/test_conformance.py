"""The emulator's bodies against the vendor's own models: no field the platform lacks.

Every body the simulated org publishes, and every REST body the emulator
serves, is validated against the schema of the vendor SDK model for its
topic or endpoint (see ``tests/emulator/schemas.py``). A body that passes
here has only fields the platform's schema has, each of the right JSON type,
enums as the model spells them, and ISO-8601 datetimes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from genesys_mux.core.topics import Media, TopicFamily, parse_topic
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.emulator.org import ContactCentre, Publication
from tests.emulator.genesys import GenesysClient
from tests.emulator.schemas import document, rest_schema, topic_schema, violations

EPOCH = 1_800_000_000.0
#: Bodies validated per topic template: "a few hundred" where the org makes them.
PER_TEMPLATE = 300
SIMULATED_MEDIA = (Media.CALLS, Media.CALLBACKS, Media.CHATS, Media.EMAILS, Media.MESSAGES)
DETAIL_EVENTS = ("acd.start", "acd.end", "acw", "customer.start", "customer.end", "user.start",
                 "user.end")  # fmt: skip


def template(topic: str) -> str:
    """The schema key of a concrete topic: its ids replaced by ``{id}``."""
    parsed = parse_topic(topic)
    suffix = parsed.suffix
    match parsed.family:
        case TopicFamily.QUEUE_CONVERSATIONS:
            return "v2.routing.queues.{id}." + suffix
        case TopicFamily.USER_CONVERSATIONS | TopicFamily.USER_PRESENCE:
            return "v2.users.{id}." + suffix
        case TopicFamily.USER_ROUTING_STATUS:
            return "v2.users.{id}." + suffix
        case TopicFamily.CONVERSATION_DETAIL_EVENTS:
            return "v2.detail.events.conversation.{id}." + suffix
    raise AssertionError(f"the org published an unexpected topic {topic}")


def expected_templates() -> set[str]:
    """Every topic template the simulated org must publish."""
    names = set()
    for prefix in ("v2.routing.queues.{id}", "v2.users.{id}"):
        names.add(f"{prefix}.conversations")
        names.update(f"{prefix}.conversations.{m}" for m in SIMULATED_MEDIA)
    names.update({"v2.users.{id}.presence", "v2.users.{id}.routingStatus"})
    names.update(f"v2.detail.events.conversation.{{id}}.{e}" for e in DETAIL_EVENTS)
    return names


@pytest.fixture(scope="module")
def published() -> dict[str, list[bytes]]:
    """Up to PER_TEMPLATE bodies per topic template, from a busy org."""
    org = ContactCentre(seed=5, queues=6, agents=30, rate=8.0, epoch=EPOCH)
    found: dict[str, list[bytes]] = defaultdict(list)
    pubs: list[Publication] = org.advance(400.0)
    for pub in pubs:
        templates = {template(topic) for topic in pub.topics}
        for name in templates:
            if len(found[name]) < PER_TEMPLATE:
                found[name].append(pub.body)
    return found


def test_provenance_names_the_vendor_sdk() -> None:
    provenance = document()["provenance"]
    assert "PureCloudPlatformClientV2" in provenance["source"]
    assert provenance["generator"] == "scripts/refresh-topic-schemas"


def test_the_org_publishes_every_family(published: dict[str, list[bytes]]) -> None:
    assert set(published) == expected_templates()
    thin = {name: len(bodies) for name, bodies in published.items() if len(bodies) < 50}
    assert not thin, f"too few bodies to say much: {thin}"


@pytest.mark.parametrize("name", sorted(expected_templates()))
def test_topic_bodies_match_the_vendor_model(name: str, published: dict[str, list[bytes]]) -> None:
    schema = topic_schema(name)
    problems: dict[str, int] = defaultdict(int)
    for raw in published[name]:
        for problem in violations(json.loads(raw), schema):
            # Paths without list indexes, so one defect is reported once.
            problems[_generic(problem)] += 1
    assert not problems, f"{name} ({schema['title']}):\n" + "\n".join(
        f"  {count:4d}x {problem}" for problem, count in sorted(problems.items())
    )


def test_media_bodies_are_media_participants(published: dict[str, list[bytes]]) -> None:
    """The distinctive part of the media shape, beyond "no extra fields"."""
    for media in SIMULATED_MEDIA:
        for raw in published[f"v2.routing.queues.{{id}}.conversations.{media}"]:
            for p in json.loads(raw)["participants"]:
                assert "state" in p
                assert "userId" not in p
                assert "queueId" not in p
                assert not any(isinstance(p.get(name), list) for name in ("calls", "chats"))
                if p["purpose"] in ("agent", "user"):
                    assert set(p["user"]) == {"id", "name"}
                if p["purpose"] in ("agent", "acd"):
                    assert set(p["queue"]) == {"id", "name"}


def test_the_validator_catches_what_it_must() -> None:
    """A validator that passes everything would make every test above pass."""
    schema = topic_schema("v2.routing.queues.{id}.conversations.calls")
    good = {"id": "c", "participants": [{"id": "p", "state": "connected", "held": False}]}
    assert violations(good, schema) == []
    bad = {
        "id": "c",
        "participants": [
            {
                "id": "p",
                "state": "chatting",
                "held": "no",
                "userId": "u",
                "connectedTime": "yesterday",
                "calls": [],
                "name": None,
            }
        ],
    }
    problems = violations(bad, schema)
    assert len(problems) == 6, problems
    for fragment in ("chatting", "expected boolean", "userId", "ISO-8601", "calls", "null"):
        assert any(fragment in p for p in problems), (fragment, problems)


def _generic(problem: str) -> str:
    path, _, rest = problem.partition(": ")
    while "[" in path:
        head, _, tail = path.partition("[")
        path = head + "[]" + tail.partition("]")[2]
    return f"{path}: {rest}"


# -- REST bodies, over HTTP -------------------------------------------------------------------


async def test_rest_bodies_match_the_vendor_models(
    emulator: Emulator, client: GenesysClient
) -> None:
    org: dict[str, Any] = await client.control("org")
    # Run the org a minute ahead so some conversations have ended: those
    # are served from the archive, the others rendered live.
    emulator.centre.advance(emulator.sim_now() + 60.0)
    status, listing, _ = await client.call("GET", "/api/v2/routing/queues", pageSize="100")
    assert status == 200
    assert violations(listing, rest_schema("queueEntityListing")) == []
    assert len(listing["entities"]) == len(org["queues"])

    status, found, _ = await client.call(
        "POST",
        "/api/v2/analytics/conversations/details/query",
        {
            "interval": "2000-01-01T00:00:00.000Z/2100-01-01T00:00:00.000Z",
            "paging": {"pageSize": 100, "pageNumber": 1},
            "order": "desc",
        },
    )
    assert status == 200
    assert violations(found, rest_schema("conversationDetailsQueryResponse")) == []
    conversations = found["conversations"]
    assert len(conversations) >= 20
    ended = [c for c in conversations if "conversationEnd" in c]
    assert ended, "want ended conversations (served from the archive)"
    assert len(ended) < len(conversations), "and live ones (rendered now)"

    problems: dict[str, int] = defaultdict(int)
    for record in conversations:
        status, body, _ = await client.call(
            "GET", f"/api/v2/conversations/{record['conversationId']}"
        )
        assert status == 200, body
        assert body["id"] == record["conversationId"]
        for problem in violations(body, rest_schema("conversation")):
            problems[_generic(problem)] += 1
    assert not problems, "\n".join(f"{n:4d}x {p}" for p, n in sorted(problems.items()))


async def test_available_topics_serve_the_same_schemas(
    client: GenesysClient, published: dict[str, list[bytes]]
) -> None:
    status, plain, _ = await client.call("GET", "/api/v2/notifications/availabletopics")
    assert status == 200
    ids = {entity["id"] for entity in plain["entities"]}
    assert ids >= expected_templates()
    assert all("schema" not in entity for entity in plain["entities"])

    status, expanded, _ = await client.call(
        "GET",
        "/api/v2/notifications/availabletopics",
        expand="schema,requiresPermissions",
    )
    assert status == 200
    served = {entity["id"]: entity for entity in expanded["entities"]}
    for name in expected_templates():
        entity = served[name]
        assert entity["requiresPermissions"]
        schema = entity["schema"]
        assert schema["title"] == topic_schema(name)["title"]
        # Self-contained: every model it refers to is in its own definitions.
        for raw in published[name][:20]:
            assert violations(json.loads(raw), schema, schema["definitions"]) == []
        # And as strict as the document: a stray field is still caught.
        assert violations({"noSuchField": 1}, schema, schema["definitions"])

    # Like every notifications endpoint, it needs a token.
    async with client.session.get(f"{client.base}/api/v2/notifications/availabletopics") as resp:
        assert resp.status == 401


@pytest.fixture
async def emulator() -> Any:
    # A busier org than the package default, so one query finds plenty.
    settings = EmulatorSettings(seed=3, queues=4, agents=12, rate=6.0, tick_s=0.02)
    async with Emulator(settings) as running:
        yield running
