"""Tests for genesys_mux.core.snapshot: facts, version keys and hashes of notification bodies.

The emulator's snapshots, in both topic shapes, are checked against an
independent reading of the same JSON written here from DESIGN.md and the
reference, so a mistake in the module under test cannot agree with itself.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.core.snapshot import (
    ConversationFacts,
    EventFacts,
    canonical_hash,
    content_hash,
    conversation_facts,
    detail_event_version,
    event_facts,
    presence_version,
    routing_status_version,
)
from genesys_mux.core.timestamps import parse_iso
from genesys_mux.core.topics import TopicFamily, parse_topic
from genesys_mux.emulator.org import ContactCentre, Publication

EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z
T0 = "2027-01-15T08:00:00.000Z"
T1 = "2027-01-15T08:00:01.000Z"
T2 = "2027-01-15T08:00:02.000Z"
T3 = "2027-01-15T08:00:03.000Z"
QUEUE = "4c2bb8ef-5f0a-4a8c-9b3e-0c1d2e3f4a5b"
USER = "9f1c3a52-8a0e-4b1f-9d0d-2f6b1c7e8a90"
CONV = "22c91b83-a417-40fe-84e4-a7fa9064dbd9"

# Snapshot list name -> topic suffix, from the vendor schema and topics.Media.
LISTS = {
    "calls": "calls",
    "callbacks": "callbacks",
    "chats": "chats",
    "emails": "emails",
    "messages": "messages",
    "videos": "videos",
    "cobrowsesessions": "cobrowseSessions",
    "screenshares": "screenshares",
    "socialExpressions": "socialexpressions",
}
CONVERSATION_FAMILIES = {TopicFamily.QUEUE_CONVERSATIONS, TopicFamily.USER_CONVERSATIONS}


# --------------------------------------------------------------------------
# An independent reading of a snapshot
# --------------------------------------------------------------------------


def comms(
    participant: dict[str, Any], media: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """A participant's communications with their media.

    A media participant (one with a state of its own, from a topic of
    ``media``) is its own single communication.
    """
    if "state" in participant:
        return [(media or "", participant)]
    return [(LISTS[name], c) for name in LISTS for c in participant.get(name) or []]


def connected(participant: dict[str, Any]) -> bool:
    return any(c.get("state") == "connected" for _, c in comms(participant))


def stamps(data: dict[str, Any]) -> list[str]:
    """The version-key timestamps as listed in the module docstring."""
    found: list[str | None] = []  # absent times are None, dropped at the end
    for p in data.get("participants") or []:
        for key in ("connectedTime", "endTime", "startAcwTime", "endAcwTime"):
            found.append(p.get(key))
        found.append((p.get("wrapup") or {}).get("endTime"))
        if "state" in p:
            continue  # a media participant's times are the ones above
        for _, c in comms(p):
            found.append(c.get("connectedTime"))
            found.append(c.get("disconnectedTime"))
            acw = c.get("afterCallWork") or {}
            found += [acw.get("startTime"), acw.get("endTime")]
            found.append((c.get("wrapup") or {}).get("endTime"))
    return [s for s in found if s is not None]


def queue_id(p: dict[str, Any]) -> str | None:
    return p.get("queueId") or (p.get("queue") or {}).get("id")


def user_id(p: dict[str, Any]) -> str | None:
    return p.get("userId") or (p.get("user") or {}).get("id")


def message_types(data: dict[str, Any]) -> set[str]:
    """Message types: on messages[] communications, or on a media participant itself."""
    found = {p["type"] for p in data["participants"] if "state" in p and "type" in p}
    for p in data["participants"]:
        if "state" not in p:
            found.update(c["type"] for c in p.get("messages") or [] if "type" in c)
    return found


def expected(data: dict[str, Any], media: str | None = None) -> ConversationFacts:
    """The facts of a snapshot in either shape, except its state digest (``hash=b""``)."""
    parts = data["participants"]
    states: dict[str, list[str]] = defaultdict(list)
    for p in parts:
        for name, c in comms(p, media):
            states[name].append(c["state"])
    acd = any(p["purpose"] == "acd" and connected(p) for p in parts)
    agent = any(p["purpose"] == "agent" and connected(p) for p in parts)
    return ConversationFacts(
        conversation_id=data["id"],
        media=frozenset(states),
        states={m: tuple(s) for m, s in states.items()},
        message_types=frozenset(message_types(data)),
        queue_ids=frozenset(
            q for p in parts if p["purpose"] in ("acd", "agent") and (q := queue_id(p))
        ),
        user_ids=frozenset(u for p in parts if (u := user_id(p))),
        queued=acd and not agent,
        active=any(p["purpose"] in ("agent", "user") and connected(p) for p in parts),
        monitoring=any(connected(p) and p.get("monitoredParticipantId") for p in parts),
        version=max((parse_iso(s) for s in stamps(data)), default=0.0),
        hash=b"",
    )


def without_digest(facts: ConversationFacts) -> ConversationFacts:
    return msgspec.structs.replace(facts, hash=b"")


def topic_media(pub: Publication) -> str | None:
    media = parse_topic(pub.topics[0]).media
    return None if media is None else media.value


# --------------------------------------------------------------------------
# Fixtures: a minute of a simulated contact centre
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def publications() -> list[Publication]:
    org = ContactCentre(seed=5, queues=6, agents=30, rate=6.0, epoch=EPOCH)
    return org.advance(60.0)


def is_conversation(pub: Publication) -> bool:
    return parse_topic(pub.topics[0]).family in CONVERSATION_FAMILIES


@pytest.fixture(scope="module")
def snapshots(
    publications: list[Publication],
) -> list[tuple[Publication, dict[str, Any], ConversationFacts]]:
    """Every snapshot publication, general and media shape, with its body and facts."""
    out = []
    for pub in publications:
        if is_conversation(pub):
            facts = conversation_facts(pub.body, topic_media(pub))
            assert facts is not None
            out.append((pub, json.loads(pub.body), facts))
    assert len(out) > 2000
    return out


# --------------------------------------------------------------------------
# Emulator snapshots
# --------------------------------------------------------------------------


def test_every_snapshot_matches_an_independent_reading(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    media_shaped = 0
    for pub, data, facts in snapshots:
        assert without_digest(facts) == expected(data, topic_media(pub))
        assert facts.conversation_id == pub.conversation_id
        assert set(facts.states) == facts.media
        media_shaped += topic_media(pub) is not None
    assert media_shaped > 1000


def test_every_conversation_topic_keys_on_the_publications_conversation(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    with_media = 0
    for pub, _, facts in snapshots:
        for topic in pub.topics:
            ev = event_facts(topic, pub.body)
            assert ev.key == pub.conversation_id
            assert ev.conversation == facts
            assert ev.version == facts.version
            assert ev.hash == facts.hash
            media = parse_topic(topic).media
            if media is not None:
                assert facts.media == {media.value}
                with_media += 1
    assert with_media > 1000


def test_versions_never_go_back_within_a_conversation(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    by_conversation: dict[str, list[float]] = defaultdict(list)
    for pub, _, facts in snapshots:
        assert pub.conversation_id is not None
        by_conversation[pub.conversation_id].append(facts.version)
    rises = 0
    for versions in by_conversation.values():
        for older, newer in pairwise(versions):
            assert newer >= older
            rises += newer > older
        # Simulation time 0 is EPOCH and everything happens within the minute.
        assert all(v == 0.0 or EPOCH <= v <= EPOCH + 60 for v in versions)
    assert rises > 1000


def test_queued_snapshots_are_queued_and_not_active(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    queued = 0
    for _, data, facts in snapshots:
        parts = data["participants"]
        acd = any(p["purpose"] == "acd" and connected(p) for p in parts)
        agent = any(p["purpose"] == "agent" and connected(p) for p in parts)
        if acd and not agent:
            assert facts.queued
            assert not facts.active
            queued += 1
        else:
            assert not facts.queued
    assert queued > 300


def test_agent_connected_snapshots_are_active_and_not_queued(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    active = 0
    for _, data, facts in snapshots:
        if any(p["purpose"] == "agent" and connected(p) for p in data["participants"]):
            assert facts.active
            assert not facts.queued
            active += 1
    assert active > 300


def test_monitoring_is_flagged_only_while_the_monitor_is_connected(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    flagged = ended = 0
    for _, data, facts in snapshots:
        monitors = [p for p in data["participants"] if "monitoredParticipantId" in p]
        if any(connected(p) for p in monitors):
            assert facts.monitoring
            assert facts.active  # a supervisor is a "user" participant
            flagged += 1
        else:
            assert not facts.monitoring
            ended += bool(monitors)
    assert flagged >= 3
    assert ended >= 3


def test_sms_messages_carry_their_type(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    sms = other = 0
    for _, data, facts in snapshots:
        types = message_types(data)
        assert facts.message_types == types
        if "sms" in types:
            assert facts.message_types >= {"sms"}
            sms += 1
        elif types:
            other += 1
    assert sms > 20
    assert other > 5


def test_tolerant_path_gives_the_same_facts_as_the_fast_path(
    snapshots: list[tuple[Publication, dict[str, Any], ConversationFacts]],
) -> None:
    # A junk participant with wrongly typed fields fails the strict decode; the
    # tolerant path must then read the rest of the body exactly as before.
    junk: list[Any] = [
        5,
        None,
        {"purpose": 7, "calls": "x", "connectedTime": "not a time", "userId": None},
    ]
    for pub, data, facts in snapshots[::7]:
        data = dict(data, participants=data["participants"] + junk)
        body = json.dumps(data).encode()
        assert conversation_facts(body, topic_media(pub)) == facts


# --------------------------------------------------------------------------
# One state, three shapes: general topic, media topic, REST
# --------------------------------------------------------------------------

# Media whose media participants have no monitoredParticipantId (vendor
# models): a monitor shows in their general shape only.
NO_MONITOR_IN_MEDIA_SHAPE = {"chats", "emails", "callbacks"}


def same_state(general: ConversationFacts, other: ConversationFacts, media: str) -> None:
    if media in NO_MONITOR_IN_MEDIA_SHAPE:
        other = msgspec.structs.replace(other, monitoring=general.monitoring)
    assert other == general


def test_general_and_media_shapes_of_one_change_give_the_same_facts(
    publications: list[Publication],
) -> None:
    """Each change is published twice, once per shape; both read the same."""
    pairs = 0
    for general, media_pub in pairwise(publications):
        if not (
            is_conversation(general)
            and topic_media(general) is None
            and is_conversation(media_pub)
            and media_pub.conversation_id == general.conversation_id
            and media_pub.at == general.at
        ):
            continue
        media = topic_media(media_pub)
        assert media is not None
        from_general = conversation_facts(general.body)
        from_media = conversation_facts(media_pub.body, media)
        assert from_general is not None
        assert from_media is not None
        same_state(from_general, from_media, media)
        pairs += 1
    assert pairs > 1000


def test_rest_shape_gives_the_same_facts_as_the_last_notification() -> None:
    """Back-fill reads ``GET /api/v2/conversations/{id}``: the same state must read the same."""
    org = ContactCentre(seed=9, queues=4, agents=20, rate=6.0, epoch=EPOCH)
    last: dict[str, dict[str | None, Publication]] = defaultdict(dict)
    for pub in org.advance(60.0):
        if is_conversation(pub):
            assert pub.conversation_id is not None
            last[pub.conversation_id][topic_media(pub)] = pub
    checked = 0
    for conversation_id, by_shape in last.items():
        rest = org.conversation(conversation_id)
        assert rest is not None
        from_rest = conversation_facts(rest)
        general = conversation_facts(by_shape[None].body)
        ((media, media_pub),) = ((m, p) for m, p in by_shape.items() if m is not None)
        assert media is not None
        from_media = conversation_facts(media_pub.body, media)
        assert from_rest is not None
        assert general is not None
        assert from_media is not None
        assert from_rest == general
        same_state(general, from_media, media)
        checked += 1
    assert checked > 200


def test_a_media_body_without_its_topic_still_gives_ids_and_predicates(
    publications: list[Publication],
) -> None:
    """Without the topic the media is unknown; everything else is still read."""
    for pub in publications[:2000]:
        media = topic_media(pub) if is_conversation(pub) else None
        if media is None:
            continue
        with_topic = conversation_facts(pub.body, media)
        without = conversation_facts(pub.body)
        assert with_topic is not None
        assert without is not None
        assert without.media == frozenset()
        assert (without.queue_ids, without.user_ids) == (with_topic.queue_ids, with_topic.user_ids)
        assert (without.queued, without.active, without.version) == (
            with_topic.queued,
            with_topic.active,
            with_topic.version,
        )


# --------------------------------------------------------------------------
# The state digest
# --------------------------------------------------------------------------

MEDIA_BODY: dict[str, Any] = {
    "id": CONV,
    "participants": [
        {
            "id": "p-customer",
            "purpose": "customer",
            "state": "connected",
            "held": False,
            "connectedTime": T0,
            "attributes": {"account": "42"},
        },
        {
            "id": "p-agent",
            "purpose": "agent",
            "state": "connected",
            "held": False,
            "connectedTime": T1,
            "user": {"id": USER, "name": "Ava Adams"},
            "queue": {"id": QUEUE, "name": "Support"},
            "attributes": {},
        },
    ],
}


def digest(body: dict[str, Any], media: str | None = "calls") -> bytes:
    facts = conversation_facts(json.dumps(body).encode(), media)
    assert facts is not None
    return facts.hash


def test_digest_ignores_key_order_whitespace_and_participant_order() -> None:
    reference = digest(MEDIA_BODY)
    spelt_otherwise = json.dumps(MEDIA_BODY, sort_keys=True, indent=3).encode()
    facts = conversation_facts(spelt_otherwise, "calls")
    assert facts is not None
    assert facts.hash == reference
    swapped = dict(MEDIA_BODY, participants=MEDIA_BODY["participants"][::-1])
    assert digest(swapped) == reference


@pytest.mark.parametrize(
    ("index", "field", "value"),
    [
        (1, "state", "disconnected"),
        (1, "held", True),
        (1, "disconnectType", "client"),
        (1, "wrapup", {"code": "resolved"}),
        (1, "user", {"id": "someone-else"}),
        (1, "queue", {"id": "another-queue"}),
        (0, "attributes", {"account": "43"}),
        (0, "purpose", "external"),
        (0, "endTime", T3),
        (0, "id", "p-other"),
    ],
)
def test_digest_changes_with_every_covered_field(index: int, field: str, value: Any) -> None:
    changed = json.loads(json.dumps(MEDIA_BODY))
    changed["participants"][index][field] = value
    assert digest(changed) != digest(MEDIA_BODY)


def test_digest_bytes_do_not_change_between_versions() -> None:
    """Digests are persisted (checkpoints) and sent (idempotency keys): pinned.

    A new version that digested the same state otherwise would deliver every
    remembered conversation's state again after an upgrade, under new keys
    that sinks could not recognise. Changing these values must be a decision.
    """
    odd = dict(
        MEDIA_BODY,
        participants=[
            dict(p, attributes={"é": 'q"x', "a": "1"}) for p in MEDIA_BODY["participants"]
        ],
    )
    assert digest(MEDIA_BODY).hex() == "30b266e651bc30807e44156e35096da6"
    assert digest(MEDIA_BODY, None).hex() == "c61b6e098ecf4dbefec3017e712f0432"
    assert digest(odd).hex() == "0804d8d386e5e0432947378f3d6127eb"


def test_digest_changes_with_the_media_and_the_conversation() -> None:
    assert digest(MEDIA_BODY, "chats") != digest(MEDIA_BODY, "calls")
    assert digest(dict(MEDIA_BODY, id="another")) != digest(MEDIA_BODY)


def test_digest_covers_what_a_consumer_sees_change_on_a_communication() -> None:
    for field, value in [
        ("muted", True),
        ("recording", True),
        ("recordingState", "active"),
        ("startHoldTime", T2),
        ("messages", [{"message": {"id": "m1"}, "messageStatus": "read"}]),
    ]:
        changed = json.loads(json.dumps(MEDIA_BODY))
        changed["participants"][1][field] = value
        assert digest(changed) != digest(MEDIA_BODY), field


def test_a_rescheduled_callback_is_a_new_state_in_every_shape() -> None:
    """``callbackScheduledTime`` moves when a callback is rescheduled: a change, not a repeat.

    It was left out of the digest, so a reschedule counted as a duplicate
    and never reached a consumer. The three shapes carry it (on the media
    participant, or on its ``callbacks[]`` communication), each spelt
    alike once read as a datetime.
    """

    def bodies(scheduled: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        extra = {} if scheduled is None else {"callbackScheduledTime": scheduled}
        comm = {"state": "scheduled", "held": False} | extra
        general = {
            "id": CONV,
            "participants": [{"id": "p-agent", "purpose": "agent", "callbacks": [comm]}],
        }
        media = {"id": CONV, "participants": [{"id": "p-agent", "purpose": "agent"} | comm]}
        return general, media

    seen = set()
    for scheduled in (None, "2027-01-15T10:00:00.000Z", "2027-01-15T15:30:00.000Z"):
        general, media = bodies(scheduled)
        assert digest(general, None) == digest(media, "callbacks"), scheduled
        tolerant = json.loads(json.dumps(general))
        tolerant["participants"][0]["wrapupRequired"] = "not a bool, so the tolerant path"
        tolerant["participants"][0]["held"] = "neither"
        assert digest(tolerant, None) == digest(general, None), scheduled
        seen.add(digest(general, None))
    assert len(seen) == 3
    spelt_otherwise, _ = bodies("2027-01-15T10:00:00Z")
    assert digest(spelt_otherwise, None) == digest(bodies("2027-01-15T10:00:00.000Z")[0], None)


def test_digest_leaves_out_what_not_every_shape_carries() -> None:
    """A monitor id or a conversation-level field is not in every shape."""
    changed = json.loads(json.dumps(MEDIA_BODY))
    changed["participants"][1]["monitoredParticipantId"] = "p-customer"
    changed["participants"][1]["name"] = "Someone Else"
    changed["participants"][1]["conversationRoutingData"] = {"priority": 5}
    changed["recordingState"] = "active"
    changed["divisions"] = []
    assert digest(changed) == digest(MEDIA_BODY)


def test_message_details_read_the_same_in_both_spellings() -> None:
    """``messageId`` in the general and REST shapes, ``message.id`` in the media shape."""
    general = {
        "id": CONV,
        "participants": [
            {
                "id": "p-customer",
                "purpose": "customer",
                "messages": [
                    {
                        "state": "connected",
                        "type": "sms",
                        "messages": [{"messageId": "m1", "messageStatus": "received"}],
                    }
                ],
            }
        ],
    }
    media: dict[str, Any] = {
        "id": CONV,
        "participants": [
            {
                "id": "p-customer",
                "purpose": "customer",
                "state": "connected",
                "type": "sms",
                "messages": [{"message": {"id": "m1"}, "messageStatus": "received"}],
            }
        ],
    }
    assert digest(general, None) == digest(media, "messages")
    media["participants"][0]["messages"][0]["messageStatus"] = "read"
    assert digest(general, None) != digest(media, "messages")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6)))
def test_canonical_hash_ignores_key_order(value: dict[str, Any]) -> None:
    forwards = json.dumps(value).encode()
    backwards = json.dumps(dict(reversed(list(value.items()))), indent=1).encode()
    assert canonical_hash(forwards) == canonical_hash(backwards)
    assert canonical_hash(forwards) != canonical_hash(json.dumps([value]).encode())


# --------------------------------------------------------------------------
# Hand-written bodies: predicates
# --------------------------------------------------------------------------


def participant(
    purpose: str, state: str | None = "connected", media: str = "calls", **extra: Any
) -> dict[str, Any]:
    comm: dict[str, Any] = {"id": f"comm-{purpose}"}
    if state is not None:
        comm["state"] = state
    return {"id": f"p-{purpose}", "purpose": purpose, media: [comm], **extra}


def facts_of(*participants: Any, **extra: Any) -> ConversationFacts:
    body = json.dumps({"id": CONV, "participants": list(participants), **extra}).encode()
    facts = conversation_facts(body)
    assert facts is not None
    return facts


@pytest.mark.parametrize(
    ("participants", "queued", "active", "monitoring"),
    [
        pytest.param([], False, False, False, id="nobody"),
        pytest.param([participant("customer")], False, False, False, id="customer-only"),
        pytest.param([participant("acd")], True, False, False, id="acd-connected"),
        pytest.param(
            [participant("acd"), participant("agent", "disconnected")],
            True,
            False,
            False,
            id="disconnected-agent-and-connected-acd-is-queued",
        ),
        pytest.param(
            [participant("acd"), participant("agent", "alerting")],
            True,
            False,
            False,
            id="alerting-agent-and-connected-acd-is-queued",
        ),
        pytest.param(
            [participant("acd"), participant("agent")], False, True, False, id="acd-and-agent"
        ),
        pytest.param(
            [participant("acd", "disconnected"), participant("agent")],
            False,
            True,
            False,
            id="agent-connected",
        ),
        pytest.param([participant("user")], False, True, False, id="user-purpose-is-active"),
        pytest.param(
            [participant("acd"), participant("user")],
            True,
            True,
            False,
            id="a-connected-user-does-not-end-queued",
        ),
        pytest.param(
            [participant("acd", "disconnected"), participant("agent", "alerting")],
            False,
            False,
            False,
            id="alerting-is-not-connected",
        ),
        pytest.param(
            [participant("agent"), participant("user", monitoredParticipantId="p-agent")],
            False,
            True,
            True,
            id="connected-monitor",
        ),
        pytest.param(
            [
                participant("agent"),
                participant("user", "disconnected", monitoredParticipantId="p-agent"),
            ],
            False,
            True,
            False,
            id="monitoredParticipantId-on-a-disconnected-participant-is-not-monitoring",
        ),
        pytest.param(
            [participant("agent"), participant("user", monitoredParticipantId=None)],
            False,
            True,
            False,
            id="null-monitoredParticipantId",
        ),
        pytest.param(
            [participant("ivr", monitoredParticipantId="x")],
            False,
            False,
            True,
            id="any-connected-purpose-can-monitor",
        ),
        pytest.param([participant("Agent")], False, False, False, id="purpose-is-case-sensitive"),
        pytest.param(
            [participant("acd", media="emails"), participant("agent", media="chats")],
            False,
            True,
            False,
            id="any-media-counts",
        ),
    ],
)
def test_predicates(
    participants: list[dict[str, Any]], queued: bool, active: bool, monitoring: bool
) -> None:
    facts = facts_of(*participants)
    assert (facts.queued, facts.active, facts.monitoring) == (queued, active, monitoring)


def test_a_participant_is_connected_when_any_of_its_communications_is() -> None:
    agent = {
        "purpose": "agent",
        "calls": [{"state": "disconnected"}],
        "chats": [{"state": "connected"}],
    }
    assert facts_of(participant("acd"), agent).active
    assert not facts_of(participant("acd"), agent).queued


# --------------------------------------------------------------------------
# Hand-written bodies: lists, ids and media names
# --------------------------------------------------------------------------


def test_media_are_named_as_topic_suffixes_and_states_keep_their_order() -> None:
    facts = facts_of(
        {
            "purpose": "customer",
            "cobrowsesessions": [{"state": "connected"}],
            "socialExpressions": [{"state": "disconnected"}],
            "calls": [],
            "videos": None,
            "emails": [None],
        },
        {"purpose": "agent", "calls": [{"state": "alerting"}, {"state": "connected"}, {}]},
        {"purpose": "acd", "calls": [{"state": "disconnected"}], "screenshares": [{}]},
    )
    assert facts.media == {"cobrowseSessions", "socialexpressions", "calls", "screenshares"}
    assert facts.states == {
        "cobrowseSessions": ("connected",),
        "socialexpressions": ("disconnected",),
        "calls": ("alerting", "connected", "disconnected"),
        "screenshares": (),
    }


def test_message_types_queue_ids_and_user_ids() -> None:
    facts = facts_of(
        {"purpose": "customer", "messages": [{"state": "connected", "type": "sms"}]},
        {"purpose": "acd", "queueId": "q-acd", "messages": [{"type": "whatsapp"}]},
        {"purpose": "agent", "queueId": "q-agent", "userId": "u-agent", "messages": [{}]},
        {"purpose": "user", "queueId": "q-user", "userId": "u-user"},
        {"purpose": "customer", "queueId": "q-customer", "userId": ""},
        # A type outside messages[] is not a message type.
        {"purpose": "external", "calls": [{"type": "sms"}]},
    )
    assert facts.message_types == {"sms", "whatsapp"}
    assert facts.queue_ids == {"q-acd", "q-agent"}
    assert facts.user_ids == {"u-agent", "u-user"}


@pytest.mark.parametrize(
    "body",
    [
        {"id": CONV},
        {"id": CONV, "participants": None},
        {"id": CONV, "participants": []},
        {"id": CONV, "participants": [None]},
        {"id": CONV, "participants": [{}]},
        {"id": CONV, "participants": [{"purpose": None, "calls": None, "wrapup": None}]},
        {"id": CONV, "participants": [{"calls": [None, {"state": None}]}]},
        {"id": CONV, "participants": "everyone"},
        {"id": CONV, "participants": [{"calls": {"state": "connected"}}]},
        {"id": CONV, "participants": [{"purpose": 3, "userId": [], "queueId": {}}]},
    ],
)
def test_missing_null_or_mistyped_fields_count_as_absent(body: dict[str, Any]) -> None:
    facts = conversation_facts(json.dumps(body).encode())
    assert facts is not None
    assert facts.conversation_id == CONV
    assert (facts.queued, facts.active, facts.monitoring) == (False, False, False)
    assert facts.version == 0.0
    assert facts.message_types == facts.queue_ids == facts.user_ids == frozenset()
    assert all(states == () for states in facts.states.values())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"id"',
        b"{}",
        b'{"id": null}',
        b'{"id": 42}',
        b'{"id": ""}',
        b'{"id": ["c"]}',
        b'{"conversationId": "c"}',
        b'{"id": "c"',
        b'{"id": "c"} trailing',
        b"NaN",
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "c", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_bodies_without_a_conversation_id_have_no_facts(body: bytes) -> None:
    assert conversation_facts(body) is None


# --------------------------------------------------------------------------
# Hand-written bodies: the version key
# --------------------------------------------------------------------------

# (where the timestamp goes, whether it counts towards the version)
STAMP_PLACES = [
    pytest.param({"connectedTime": T3}, True, id="participant.connectedTime"),
    pytest.param({"endTime": T3}, True, id="participant.endTime"),
    pytest.param({"startAcwTime": T3}, True, id="participant.startAcwTime"),
    pytest.param({"endAcwTime": T3}, True, id="participant.endAcwTime"),
    pytest.param({"wrapup": {"endTime": T3}}, True, id="participant.wrapup.endTime"),
    pytest.param({"calls": [{"connectedTime": T3}]}, True, id="calls.connectedTime"),
    pytest.param({"chats": [{"disconnectedTime": T3}]}, True, id="chats.disconnectedTime"),
    pytest.param(
        {"emails": [{"afterCallWork": {"startTime": T3}}]}, True, id="afterCallWork.startTime"
    ),
    pytest.param(
        {"messages": [{"afterCallWork": {"state": "completed", "endTime": T3}}]},
        True,
        id="afterCallWork.endTime",
    ),
    pytest.param({"callbacks": [{"wrapup": {"endTime": T3}}]}, True, id="comm.wrapup.endTime"),
    pytest.param({"videos": [{"connectedTime": T3}]}, True, id="videos.connectedTime"),
    pytest.param(
        {"socialExpressions": [{"connectedTime": T3}]}, True, id="socialExpressions.connectedTime"
    ),
    # Left out on purpose: see the module docstring.
    pytest.param({"calls": [{"startHoldTime": T3}]}, False, id="startHoldTime"),
    pytest.param({"startHoldTime": T3}, False, id="participant.startHoldTime"),
    pytest.param({"callbacks": [{"scheduledTime": T3}]}, False, id="scheduledTime"),
    pytest.param({"callbacks": [{"callbackScheduledTime": T3}]}, False, id="callbackScheduledTime"),
    pytest.param(
        {"messages": [{"messages": [{"messageTime": T3}]}]}, False, id="messages.messageTime"
    ),
    pytest.param({"startAlertingTime": T3}, False, id="unknown-field"),
]


@pytest.mark.parametrize(("place", "counts"), STAMP_PLACES)
def test_version_key_fields(place: dict[str, Any], counts: bool) -> None:
    base = {"purpose": "customer", "connectedTime": T1}
    facts = facts_of(base, {"purpose": "agent", **place})
    assert facts.version == parse_iso(T3 if counts else T1)


def test_version_is_the_newest_timestamp_whatever_the_order_or_offset() -> None:
    facts = facts_of(
        {"connectedTime": T2, "endTime": T1},
        {"calls": [{"connectedTime": T0, "disconnectedTime": "2027-01-15T09:00:02.500+01:00"}]},
        {"startAcwTime": "2027-01-15T08:00:01Z"},
    )
    assert facts.version == EPOCH + 2.5


def test_version_is_zero_without_timestamps() -> None:
    assert facts_of(participant("acd")).version == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "yesterday",
        "2027-13-45T08:00:00.000Z",
        "2027-01-15T25:00:00.000Z",
        "2027-01-15",
        5,
        1_800_000_003_000,
        True,
        [T3],
        {"time": T3},
    ],
)
def test_bad_timestamps_are_ignored(bad: Any) -> None:
    facts = facts_of(
        {"purpose": "agent", "connectedTime": T1, "endTime": bad},
        {"purpose": "acd", "calls": [{"state": "connected", "disconnectedTime": bad}]},
        {"wrapup": {"endTime": bad}, "calls": [{"afterCallWork": {"startTime": bad}}]},
        {"purpose": "agent", "calls": [{"state": "disconnected", "connectedTime": T2}]},
    )
    assert facts.version == parse_iso(T2)
    assert facts.queued
    assert facts.queue_ids == frozenset()


def test_a_timestamp_without_a_zone_is_utc() -> None:
    assert facts_of({"connectedTime": "2027-01-15T08:00:03.250"}).version == EPOCH + 3.25


def test_extreme_but_valid_timestamps_do_not_raise() -> None:
    facts = facts_of(
        {"connectedTime": "0001-01-01T00:00:00+23:59", "endTime": "9999-12-31T23:59:59-23:59"}
    )
    assert facts.version == parse_iso("9999-12-31T23:59:59-23:59")


# --------------------------------------------------------------------------
# Other topics
# --------------------------------------------------------------------------


def other_bodies(publications: list[Publication], family: TopicFamily) -> list[Publication]:
    found = [p for p in publications if parse_topic(p.topics[0]).family is family]
    assert len(found) >= 5, family
    return found


def test_presence_version_and_key(publications: list[Publication]) -> None:
    for pub in other_bodies(publications, TopicFamily.USER_PRESENCE):
        (topic,) = pub.topics
        data = json.loads(pub.body)
        assert presence_version(pub.body) == parse_iso(data["modifiedDate"])
        assert event_facts(topic, pub.body) == EventFacts(
            key=f"presence:{parse_topic(topic).entity_id}",
            version=parse_iso(data["modifiedDate"]),
            hash=canonical_hash(pub.body),
        )


def test_routing_status_version_and_key(publications: list[Publication]) -> None:
    for pub in other_bodies(publications, TopicFamily.USER_ROUTING_STATUS):
        (topic,) = pub.topics
        data = json.loads(pub.body)
        version = parse_iso(data["routingStatus"]["startTime"])
        assert routing_status_version(pub.body) == version
        assert event_facts(topic, pub.body) == EventFacts(
            key=f"routing:{data['id']}", version=version, hash=canonical_hash(pub.body)
        )


def test_detail_event_version_and_key(publications: list[Publication]) -> None:
    for pub in other_bodies(publications, TopicFamily.CONVERSATION_DETAIL_EVENTS):
        (topic,) = pub.topics
        data = json.loads(pub.body)
        assert detail_event_version(pub.body) == data["eventTime"] / 1000
        assert EPOCH <= data["eventTime"] / 1000 <= EPOCH + 60
        # Detail events are separate happenings: keyed by their own topic,
        # never superseded, so no version to order on.
        assert event_facts(topic, pub.body) == EventFacts(
            key=f"detail:{topic}", version=None, hash=canonical_hash(pub.body)
        )


def test_detail_events_never_share_a_key_with_snapshots() -> None:
    topic = f"v2.detail.events.conversation.{CONV}.acd.start"
    facts = event_facts(topic, b'{"eventTime": 1800000001500}')
    assert facts == EventFacts(
        f"detail:{topic}", None, canonical_hash(b'{"eventTime": 1800000001500}')
    )
    assert event_facts(topic, b"not json").key == f"detail:{topic}"
    assert event_facts(topic, b'{"conversationId": "other"}').key == f"detail:{topic}"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b"{",
        b'{"eventTime": null}',
        b'{"eventTime": "1800000001500"}',
        b'{"eventTime": true}',
        b'{"eventTime": 1e400}',
        b'{"eventTime": ' + b"9" * 400 + b"}",
        b'{"eventTime": ' + b"9" * 5000 + b"}",
    ],
)
def test_detail_event_version_malformed(body: bytes) -> None:
    assert detail_event_version(body) is None


def test_detail_event_version_accepts_any_json_number() -> None:
    assert detail_event_version(b'{"eventTime": 1800000001500}') == EPOCH + 1.5
    assert detail_event_version(b'{"eventTime": 1.8000000015e12}') == EPOCH + 1.5
    assert detail_event_version(b'{"eventTime": 0}') == 0.0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{}",
        b'{"modifiedDate": null}',
        b'{"modifiedDate": "soon"}',
        b'{"modifiedDate": 1800000000}',
        b'{"routingStatus": null}',
        b'{"routingStatus": {"status": "IDLE"}}',
        b'{"routingStatus": {"startTime": "soon"}}',
        b'{"routingStatus": "IDLE"}',
        b'{"routingStatus": {"startTime": 5}}',
    ],
)
def test_user_versions_malformed(body: bytes) -> None:
    assert presence_version(body) is None
    assert routing_status_version(body) is None


def test_user_versions_of_reference_shaped_bodies() -> None:
    presence = (
        b'{"source": "PURECLOUD", "presenceDefinition": {"id": "x", "systemPresence": "Break"},'
        b' "primary": true, "message": "", "modifiedDate": "2027-01-15T08:00:02.000Z"}'
    )
    routing = (
        b'{"id": "u", "routingStatus": {"status": "IDLE", "startTime": "' + T1.encode() + b'"}}'
    )
    assert presence_version(presence) == EPOCH + 2
    assert routing_status_version(routing) == EPOCH + 1


@pytest.mark.parametrize(
    "topic",
    [
        f"v2.analytics.queues.{QUEUE}.observations",
        "v2.system.socket_closing",
        "channel.metadata",
        "v2.users.U1?presence&routingStatus",
        "",
        "v2.users..presence",
        "v2.users.U1.presence.extra",
        "not a topic at all \udcff",
    ],
)
def test_other_topics_key_on_themselves_without_version(topic: str) -> None:
    body = b'{"id": "c", "modifiedDate": "' + T1.encode() + b'"}'
    assert event_facts(topic, body) == EventFacts(topic, None, canonical_hash(body))


def test_conversation_topic_with_malformed_body_keys_on_the_topic() -> None:
    topic = f"v2.routing.queues.{QUEUE}.conversations.calls"
    for body in (b"{}", b'{"id": 5}', b"[]"):
        assert event_facts(topic, body) == EventFacts(topic, None, canonical_hash(body))
    # Not JSON at all: so marked, for a consumer that has not checked it yet.
    for body in (b"", b"garbage", b'{"id": "c"', b'{"id": "c"} {}', b"[" * 5000):
        assert event_facts(topic, body) == EventFacts(
            topic, None, content_hash(body), malformed=True
        )


@pytest.mark.parametrize(
    "topic",
    [
        f"v2.users.{USER}.presence",
        f"v2.users.{USER}.routingStatus",
        f"v2.detail.events.conversation.{CONV}.acd.start",
        "v2.analytics.anything",
        "not a topic at all",
    ],
)
def test_a_body_that_is_not_json_is_marked_malformed_on_every_topic(topic: str) -> None:
    good, bad = b'{"modifiedDate": "2026-01-01T00:00:00Z"}', b'{"modifiedDate": '
    assert not event_facts(topic, good).malformed
    facts = event_facts(topic, bad)
    assert facts.malformed
    assert facts.version is None
    assert facts.hash == content_hash(bad)
    # Its key is the one a good body on the topic would have.
    assert facts.key == event_facts(topic, good).key


def test_user_and_presence_keys_do_not_collide() -> None:
    body = b'{"id": "' + USER.encode() + b'", "modifiedDate": "' + T1.encode() + b'"}'
    keys = {
        event_facts(f"v2.users.{USER}.presence", body).key,
        event_facts(f"v2.users.{USER}.routingStatus", body).key,
        event_facts(f"v2.users.{USER}.conversations", body).key,
    }
    assert keys == {f"presence:{USER}", f"routing:{USER}", USER}


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
# Values drawn mostly from the fields the module reads, so that hypothesis
# explores wrong types and odd values exactly where the decoder looks.
KEYS = st.sampled_from(
    [
        "id", "participants", "purpose", "userId", "queueId", "monitoredParticipantId",
        "connectedTime", "endTime", "startAcwTime", "endAcwTime", "wrapup", "state", "type",
        "disconnectedTime", "afterCallWork", "startTime", *LISTS,
    ]
)  # fmt: skip
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["connected", "acd", "agent", "user", "sms", T1, T2, "2027-99-99T"])
    | st.text(max_size=30)
)
SNAPSHOTISH = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=40,
)
TOPICS = st.sampled_from(
    [
        f"v2.routing.queues.{QUEUE}.conversations",
        f"v2.users.{USER}.conversations.messages",
        f"v2.users.{USER}.presence",
        f"v2.users.{USER}.routingStatus",
        f"v2.detail.events.conversation.{CONV}.acw",
        f"v2.analytics.queues.{QUEUE}.observations",
        "v2.unknown",
    ]
) | st.text(max_size=40)


def check_event_facts(topic: str, body: bytes) -> None:
    facts = event_facts(topic, body)
    assert isinstance(facts, EventFacts)
    if facts.conversation is None:
        assert facts.hash == canonical_hash(body)
    else:
        assert facts.hash == facts.conversation.hash
    assert isinstance(facts.key, str)
    assert facts.version is None or isinstance(facts.version, float)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), TOPICS)
def test_arbitrary_bytes_never_raise(body: bytes, topic: str) -> None:
    facts = conversation_facts(body)
    assert facts is None or isinstance(facts, ConversationFacts)
    check_event_facts(topic, body)


@settings(max_examples=300, deadline=None)
@given(JSON, TOPICS)
def test_arbitrary_json_never_raises(value: Any, topic: str) -> None:
    body = json.dumps(value).encode()
    facts = conversation_facts(body)
    has_id = isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"] != ""
    assert (facts is not None) == has_id
    check_event_facts(topic, body)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(KEYS, SNAPSHOTISH, max_size=6), st.text(min_size=1, max_size=10), TOPICS)
def test_snapshot_shaped_json_never_raises(value: dict[str, Any], cid: str, topic: str) -> None:
    value["id"] = cid
    body = json.dumps(value).encode()
    facts = conversation_facts(body)
    assert facts is not None
    assert facts.conversation_id == cid
    assert set(facts.states) == facts.media
    assert not math.isnan(facts.version)
    check_event_facts(topic, body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_content_hash_is_equal_exactly_for_equal_bytes(a: bytes, b: bytes) -> None:
    assert len(content_hash(a)) == 16
    assert content_hash(a) == content_hash(bytes(a))
    assert (content_hash(a) == content_hash(b)) == (a == b)
