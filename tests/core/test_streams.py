"""Tests for genesys_mux.core.streams: one stream's pipeline and the priority merge.

Hand-written snapshots pin down each step of the pipeline (match, duplicate,
stale, transition, sequence, buffer); the emulator's ``ContactCentre`` then
drives the same steps with realistic traffic, checked against an independent
reading of the JSON written here from DESIGN.md. A Hypothesis property checks
the overflow accounting of every policy against a model of the buffer.
"""

from __future__ import annotations

import gc
import json
import random
from collections import Counter, defaultdict, deque
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.core import streams
from genesys_mux.core.snapshot import EventFacts, event_facts
from genesys_mux.core.streams import (
    BACKLOG_FACTOR,
    DeadLetter,
    Gap,
    PriorityMerge,
    Stream,
    StreamEvent,
    StreamRules,
    Transition,
    weight,
)
from genesys_mux.core.timestamps import parse_iso
from genesys_mux.core.topics import Media, queue_conversations, user_conversations, user_presence
from genesys_mux.emulator.org import ContactCentre, Publication

EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z
T0 = "2027-01-15T08:00:00.000Z"
T1 = "2027-01-15T08:00:01.000Z"
T2 = "2027-01-15T08:00:02.000Z"
T3 = "2027-01-15T08:00:03.000Z"
T4 = "2027-01-15T08:00:04.000Z"
QUEUE = "4c2bb8ef-5f0a-4a8c-9b3e-0c1d2e3f4a5b"
OTHER_QUEUE = "0d6f2a3c-1b4e-4f5a-8c9d-7e6f5a4b3c2d"
USER = "9f1c3a52-8a0e-4b1f-9d0d-2f6b1c7e8a90"
CONV = "22c91b83-a417-40fe-84e4-a7fa9064dbd9"
OTHER_CONV = "6a1d0c7e-3b2f-4e8a-9c5d-1f0e2d3c4b5a"
QUEUE_TOPIC = queue_conversations(QUEUE)
USER_TOPIC = user_conversations(USER)

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
State = Literal["queued", "active", "monitoring"]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def make_stream(
    letters: list[DeadLetter] | None = None, stream_id: str = "s", **kwargs: Any
) -> Stream:
    sink: list[DeadLetter] = [] if letters is None else letters
    return Stream(stream_id, dead_letter=sink.append, **kwargs)


def offer(
    stream: Stream,
    body: bytes,
    topic: str = QUEUE_TOPIC,
    *,
    at: float = EPOCH + 10.0,
    mono: float = 100.0,
    correlation_id: str | None = "corr",
    filtered_topic: bool = True,
) -> StreamEvent | None:
    """Offer ``body`` on ``topic`` the way the multiplexer does: facts computed once."""
    facts = event_facts(topic, body)
    return stream.offer(topic, body, correlation_id, at, mono, facts, filtered_topic=filtered_topic)


def drain(stream: Stream, now: float = EPOCH + 20.0, now_mono: float = 200.0) -> list[Any]:
    items: list[Any] = []
    while (item := stream.take(now, now_mono)) is not None:
        items.append(item)
    return items


def comm(
    state: str,
    connected: str | None = None,
    disconnected: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    c: dict[str, Any] = {"state": state, **extra}
    if connected is not None:
        c["connectedTime"] = connected
    if disconnected is not None:
        c["disconnectedTime"] = disconnected
    return c


def party(purpose: str, *communications: dict[str, Any], media: str = "calls", **extra: Any) -> Any:
    return {
        "id": f"{purpose}-participant",
        "purpose": purpose,
        media: list(communications),
        **extra,
    }


def snapshot(*participants: Any, conv: str = CONV, **extra: Any) -> bytes:
    return json.dumps({"id": conv, "participants": list(participants), **extra}).encode()


def customer(media: str = "calls", **extra: Any) -> Any:
    return party("customer", comm("connected", T0, **extra), media=media)


def acd(state: str = "connected", queue: str = QUEUE, media: str = "calls") -> Any:
    disconnected = T2 if state == "disconnected" else None
    return party("acd", comm(state, T1, disconnected), media=media, queueId=queue)


# -- an independent reading of a snapshot, from DESIGN.md ---------------------


def comms(participant: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(LISTS[name], c) for name in LISTS for c in participant.get(name) or []]


def connected(participant: dict[str, Any]) -> bool:
    return any(c.get("state") == "connected" for _, c in comms(participant))


def in_state(data: dict[str, Any], state: State) -> bool:
    parts = data.get("participants") or []
    if state == "queued":
        return any(p.get("purpose") == "acd" and connected(p) for p in parts) and not any(
            p.get("purpose") == "agent" and connected(p) for p in parts
        )
    if state == "active":
        return any(p.get("purpose") in ("agent", "user") and connected(p) for p in parts)
    return any(connected(p) and p.get("monitoredParticipantId") for p in parts)


def media_of(data: dict[str, Any]) -> set[str]:
    return {media for p in data.get("participants") or [] for media, _ in comms(p)}


def has_sms(data: dict[str, Any]) -> bool:
    """An sms message type: on a messages[] communication, or on a media participant."""
    return any(
        p.get("type") == "sms"
        if "state" in p
        else any(c.get("type") == "sms" for c in p.get("messages") or [])
        for p in data.get("participants") or []
    )


def routed_queues(data: dict[str, Any]) -> set[str]:
    return {
        p["queueId"]
        for p in data.get("participants") or []
        if p.get("purpose") in ("acd", "agent") and p.get("queueId")
    }


def is_snapshot(pub: Publication) -> bool:
    """A snapshot in the general shape (the media shape has tests of its own)."""
    return pub.topics[0].startswith("v2.routing.queues.") and pub.topics[0].endswith(
        ".conversations"
    )


# --------------------------------------------------------------------------
# Realistic traffic
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulation() -> tuple[ContactCentre, list[Publication]]:
    """Two simulated minutes of a small, busy org: every media, transfers, monitoring."""
    org = ContactCentre(seed=5, queues=3, agents=10, rate=4.0, epoch=EPOCH)
    return org, org.advance(120.0)


@pytest.fixture(scope="module")
def snapshot_pubs(simulation: tuple[ContactCentre, list[Publication]]) -> list[Publication]:
    return [pub for pub in simulation[1] if is_snapshot(pub)]


# --------------------------------------------------------------------------
# 1. Match: client-side rules
# --------------------------------------------------------------------------


def test_media_rule_filters_other_media_and_counts_them() -> None:
    stream = make_stream(rules=StreamRules(media="calls"))
    chat = snapshot(customer("chats"), acd(media="chats"), conv=OTHER_CONV)
    call = snapshot(customer(), acd())

    assert offer(stream, chat, USER_TOPIC) is None
    event = offer(stream, call, USER_TOPIC)

    assert event is not None
    assert event.conversation_id == CONV
    assert stream.counters.filtered == 1
    assert stream.counters.received == 2
    assert [item.raw for item in drain(stream)] == [call]


def test_sms_rule_keeps_only_sms_messages() -> None:
    stream = make_stream(rules=StreamRules(media="messages", sms=True))
    web = snapshot(customer("messages", type="webmessaging"), conv=OTHER_CONV)
    whatsapp = snapshot(customer("messages", type="whatsapp"), conv="c-whatsapp")
    sms = snapshot(customer("messages", type="sms"))
    topic = queue_conversations(QUEUE, Media.MESSAGES)

    assert offer(stream, web, topic) is None
    assert offer(stream, whatsapp, topic) is None
    assert offer(stream, sms, topic) is not None
    assert stream.counters.filtered == 2


def test_queue_rule_keeps_only_conversations_routed_through_the_queue() -> None:
    stream = make_stream(rules=StreamRules(queue_id=QUEUE))
    elsewhere = snapshot(customer(), acd(queue=OTHER_QUEUE), conv=OTHER_CONV)
    here = snapshot(customer(), acd(queue=QUEUE))

    assert offer(stream, elsewhere, USER_TOPIC) is None
    assert offer(stream, here, USER_TOPIC) is not None
    assert stream.counters.filtered == 1


def test_rules_filter_bodies_that_are_not_conversations() -> None:
    stream = make_stream(rules=StreamRules(media="calls"))
    presence = b'{"presenceDefinition": {"id": "x"}, "modifiedDate": "2027-01-15T08:00:00Z"}'

    assert offer(stream, presence, user_presence(USER)) is None
    assert offer(stream, b"not json at all", QUEUE_TOPIC) is None
    assert stream.counters.filtered == 2


@pytest.mark.parametrize(
    "rules",
    [
        StreamRules(media="calls"),
        StreamRules(media="messages", sms=True),
        StreamRules(queue_id=QUEUE),
        StreamRules(state="active"),
    ],
    ids=["media", "sms", "queue", "state"],
)
def test_raw_topics_bypass_the_rules(rules: StreamRules) -> None:
    """Events on a stream's raw topics are delivered whatever its filter says."""
    stream = make_stream(rules=rules)
    body = snapshot(customer("chats", type="webmessaging"), acd(queue=OTHER_QUEUE, media="chats"))
    presence = b'{"modifiedDate": "2027-01-15T08:00:00Z"}'

    event = offer(stream, body, USER_TOPIC, filtered_topic=False)
    other = offer(stream, presence, user_presence(USER), filtered_topic=False)

    assert event is not None
    assert event.transition is None
    assert other is not None
    assert other.conversation_id is None
    assert stream.counters.filtered == 0


def test_media_rule_on_real_user_topics(snapshot_pubs: list[Publication]) -> None:
    """A voice stream fed every snapshot (all media) keeps exactly the ones with calls."""
    stream = make_stream(rules=StreamRules(media="calls"), buffer_size=100_000)
    expected = []
    for pub in snapshot_pubs:
        if media_of(json.loads(pub.body)) & {"calls"}:
            expected.append(pub.body)
        offer(stream, pub.body, pub.topics[0])

    assert 0 < len(expected) < len(snapshot_pubs)
    assert [item.raw for item in drain(stream)] == expected
    assert stream.counters.filtered == len(snapshot_pubs) - len(expected)


def test_sms_rule_on_real_message_topics(
    simulation: tuple[ContactCentre, list[Publication]],
) -> None:
    """The messages media topics: media participants, each with its message type."""
    stream = make_stream(rules=StreamRules(media="messages", sms=True), buffer_size=100_000)
    messages = [pub for pub in simulation[1] if pub.topics[0].endswith(".messages")]
    expected = [pub.body for pub in messages if has_sms(json.loads(pub.body))]
    for pub in messages:
        offer(stream, pub.body, next(t for t in pub.topics if t.endswith(".messages")))

    assert 0 < len(expected) < len(messages), "the simulation should mix sms with other types"
    assert [item.raw for item in drain(stream)] == expected
    assert stream.counters.filtered == len(messages) - len(expected)


def test_queue_rule_on_real_user_topics(
    simulation: tuple[ContactCentre, list[Publication]], snapshot_pubs: list[Publication]
) -> None:
    queue = simulation[0].queues[0].id
    stream = make_stream(rules=StreamRules(queue_id=queue), buffer_size=100_000)
    on_user_topics = [
        (pub, topic)
        for pub in snapshot_pubs
        for topic in pub.topics
        if topic.startswith("v2.users.") and topic.endswith(".conversations")
    ]
    expected = []
    for pub, topic in on_user_topics:
        # Each body once: a second user topic carrying it is a duplicate.
        if queue in routed_queues(json.loads(pub.body)) and pub.body not in expected:
            expected.append(pub.body)
        offer(stream, pub.body, topic)

    assert expected
    assert [item.raw for item in drain(stream)] == expected


# --------------------------------------------------------------------------
# 2. Duplicates and 3. stale snapshots
# --------------------------------------------------------------------------


def test_the_same_body_twice_is_a_duplicate() -> None:
    stream = make_stream()
    body = snapshot(customer(), acd())

    assert offer(stream, body) is not None
    assert offer(stream, body) is None
    assert stream.counters.duplicates == 1
    assert [item.sequence for item in drain(stream)] == [1]


def test_fan_out_to_queue_and_user_topics_is_delivered_once() -> None:
    stream = make_stream()
    body = snapshot(customer(), acd(), party("agent", comm("connected", T2), userId=USER))

    first = offer(stream, body, queue_conversations(QUEUE, Media.CALLS))
    second = offer(stream, body, user_conversations(USER, Media.CALLS))

    assert first is not None
    assert second is None
    assert stream.counters.duplicates == 1
    assert len(drain(stream)) == 1


def test_a_body_resent_after_a_newer_one_is_a_duplicate() -> None:
    stream = make_stream()
    a = snapshot(customer(), acd())
    b = snapshot(customer(), acd(), party("agent", comm("connected", T2)))

    assert offer(stream, a) is not None
    assert offer(stream, b) is not None
    assert offer(stream, a) is None

    assert stream.counters.duplicates == 1
    assert stream.counters.stale == 0
    assert [item.raw for item in drain(stream)] == [a, b]


def test_a_body_resent_with_an_equal_version_is_still_a_duplicate() -> None:
    """A, B, A with A and B tied on version: only the hash can tell, and it does."""
    stream = make_stream()
    a = snapshot(customer(), acd())
    b = snapshot(customer(), acd(), party("agent", comm("alerting")))

    assert [offer(stream, x) is not None for x in (a, b, a)] == [True, True, False]
    assert stream.counters.duplicates == 1


def test_an_older_snapshot_after_a_newer_one_is_stale() -> None:
    stream = make_stream()
    older = snapshot(customer(), acd())  # newest timestamp T1
    newer = snapshot(customer(), acd("disconnected"), party("agent", comm("connected", T2)))

    assert offer(stream, newer) is not None
    assert offer(stream, older) is None

    assert stream.counters.stale == 1
    assert stream.counters.duplicates == 0
    assert [item.raw for item in drain(stream)] == [newer]


def test_an_equal_version_with_different_content_is_delivered() -> None:
    stream = make_stream()
    first = snapshot(customer(), acd())
    same_time = snapshot(customer(held=True), acd())
    assert event_facts(QUEUE_TOPIC, first).version == event_facts(QUEUE_TOPIC, same_time).version

    assert offer(stream, first) is not None
    assert offer(stream, same_time) is not None
    assert stream.counters.stale == 0


def test_staleness_is_per_conversation() -> None:
    stream = make_stream()
    newer = snapshot(customer(), acd("disconnected"), party("agent", comm("connected", T2)))
    older_elsewhere = snapshot(customer(), acd(), conv=OTHER_CONV)

    assert offer(stream, newer) is not None
    assert offer(stream, older_elsewhere) is not None


def test_an_older_presence_is_stale() -> None:
    stream = make_stream()
    topic = user_presence(USER)
    newer = {"presenceDefinition": {"systemPresence": "Busy"}, "modifiedDate": T2}
    older = {"presenceDefinition": {"systemPresence": "Idle"}, "modifiedDate": T1}

    assert offer(stream, json.dumps(newer).encode(), topic) is not None
    assert offer(stream, json.dumps(older).encode(), topic) is None
    assert stream.counters.stale == 1


def test_counters_add_up(snapshot_pubs: list[Publication]) -> None:
    """Over real fan-out, every notification is delivered, filtered, a duplicate or stale."""
    stream = make_stream(rules=StreamRules(media="chats"), buffer_size=100_000)
    for pub in snapshot_pubs:
        for topic in pub.topics:
            offer(stream, pub.body, topic)
    drain(stream)

    c = stream.counters
    assert c.received == sum(len(pub.topics) for pub in snapshot_pubs)
    assert c.received == c.delivered + c.filtered + c.duplicates + c.stale
    assert c.stale == 0  # the simulation publishes each conversation in order
    assert c.delivered == sum("chats" in media_of(json.loads(p.body)) for p in snapshot_pubs)


# --------------------------------------------------------------------------
# 4. Transitions
# --------------------------------------------------------------------------

# For each state: snapshots of one conversation in order, with the transition
# each should produce (None: filtered).
SCENARIOS: dict[State, list[tuple[bytes, Transition | None]]] = {
    "queued": [
        (snapshot(customer(), party("ivr", comm("connected", T0))), None),
        (snapshot(customer(), acd()), "enter"),
        # An agent alerting does not end the wait; same version, new content.
        (snapshot(customer(), acd(), party("agent", comm("alerting"))), "update"),
        (snapshot(customer(), acd("disconnected"), party("agent", comm("connected", T2))), "exit"),
        (
            snapshot(customer(), acd("disconnected"), party("agent", comm("disconnected", T2, T3))),
            None,
        ),
        # Transferred back to the queue: queued again.
        (
            snapshot(
                customer(),
                acd("disconnected"),
                party("agent", comm("disconnected", T2, T3)),
                party("acd", comm("connected", T4), queueId=QUEUE, id="acd-2"),
            ),
            "enter",
        ),
    ],
    "active": [
        (snapshot(customer(), acd()), None),
        (snapshot(customer(), acd("disconnected"), party("agent", comm("connected", T2))), "enter"),
        (
            snapshot(
                customer(), acd("disconnected"), party("agent", comm("connected", T2, held=True))
            ),
            "update",
        ),
        (
            snapshot(customer(), acd("disconnected"), party("agent", comm("disconnected", T2, T3))),
            "exit",
        ),
        (
            snapshot(
                party("customer", comm("disconnected", T0, T4)),
                acd("disconnected"),
                party("agent", comm("disconnected", T2, T3)),
            ),
            None,
        ),
    ],
    "monitoring": [
        (snapshot(customer(), party("agent", comm("connected", T1))), None),
        (
            snapshot(
                customer(),
                party("agent", comm("connected", T1)),
                party("user", comm("connected", T2), monitoredParticipantId="agent-participant"),
            ),
            "enter",
        ),
        (
            snapshot(
                # Recording starts: a change of a communication, still monitored.
                customer(recordingState="active"),
                party("agent", comm("connected", T1)),
                party("user", comm("connected", T2), monitoredParticipantId="agent-participant"),
            ),
            "update",
        ),
        (
            snapshot(
                customer(),
                party("agent", comm("connected", T1)),
                party(
                    "user",
                    comm("disconnected", T2, T3),
                    monitoredParticipantId="agent-participant",
                ),
            ),
            "exit",
        ),
        (
            snapshot(
                customer(),
                party("agent", comm("disconnected", T1, T4)),
                party(
                    "user",
                    comm("disconnected", T2, T3),
                    monitoredParticipantId="agent-participant",
                ),
            ),
            None,
        ),
    ],
}


@pytest.mark.parametrize("state", list(SCENARIOS))
def test_transitions(state: State) -> None:
    scenario = SCENARIOS[state]
    # The scenario itself agrees with DESIGN.md's definition of the state.
    for body, transition in scenario:
        assert in_state(json.loads(body), state) == (transition in ("enter", "update"))

    stream = make_stream(rules=StreamRules(state=state))
    results = [offer(stream, body) for body, _ in scenario]

    expected = [transition for _, transition in scenario]
    assert [None if r is None else r.transition for r in results] == expected
    delivered = drain(stream)
    assert [e.transition for e in delivered] == [t for t in expected if t is not None]
    assert [e.sequence for e in delivered] == list(range(1, len(delivered) + 1))
    assert stream.counters.filtered == expected.count(None)
    assert stream.counters.duplicates == stream.counters.stale == 0


@pytest.mark.parametrize("state", list(SCENARIOS))
def test_a_conversation_never_in_the_state_is_filtered(state: State) -> None:
    stream = make_stream(rules=StreamRules(state=state))
    never = [body for body, transition in SCENARIOS[state] if transition is None]
    for body in never:
        assert offer(stream, body) is None
        assert offer(stream, body, USER_TOPIC) is None  # the fan-out copy

    assert len(stream) == 0
    assert stream.counters.filtered == len(never)
    # The copies are not counted twice: they are duplicates of a filtered body.
    assert stream.counters.duplicates == len(never)


def test_each_conversation_has_its_own_state() -> None:
    stream = make_stream(rules=StreamRules(state="queued"))
    waiting = snapshot(customer(), acd())
    other_waiting = snapshot(customer(), acd(), conv=OTHER_CONV)
    answered = snapshot(customer(), acd("disconnected"), party("agent", comm("connected", T2)))

    for body in (waiting, other_waiting, answered):
        assert offer(stream, body) is not None
    assert [(e.conversation_id, e.transition) for e in drain(stream)] == [
        (CONV, "enter"),
        (OTHER_CONV, "enter"),
        (CONV, "exit"),
    ]


@pytest.mark.parametrize("state", ["queued", "active", "monitoring"])
def test_transitions_over_a_real_simulation(state: State, snapshot_pubs: list[Publication]) -> None:
    """Every snapshot fanned out to all its topics: per conversation, enter ... exit."""
    stream = make_stream(rules=StreamRules(state=state), buffer_size=100_000)
    expected: dict[str, list[Transition]] = defaultdict(list)
    was_in: dict[str, bool] = defaultdict(bool)
    last_in: dict[str, bool] = {}
    for pub in snapshot_pubs:
        assert pub.conversation_id is not None
        now_in = in_state(json.loads(pub.body), state)
        if now_in:
            expected[pub.conversation_id].append(
                "update" if was_in[pub.conversation_id] else "enter"
            )
        elif was_in[pub.conversation_id]:
            expected[pub.conversation_id].append("exit")
        was_in[pub.conversation_id] = last_in[pub.conversation_id] = now_in
        for topic in pub.topics:
            offer(stream, pub.body, topic)

    delivered = drain(stream)
    seen: dict[str, list[Transition]] = defaultdict(list)
    for event in delivered:
        assert event.conversation_id is not None
        assert event.transition is not None
        seen[event.conversation_id].append(event.transition)

    assert delivered, f"the simulation should have {state} conversations"
    assert seen == expected
    assert [e.sequence for e in delivered] == list(range(1, len(delivered) + 1))
    assert stream.counters.stale == 0
    for conversation_id, transitions in seen.items():
        assert transitions[0] == "enter"
        inside = False
        for transition in transitions:
            # Never two enters without an exit between, never an exit or update outside.
            assert (transition == "enter") != inside
            inside = transition != "exit"
        if not last_in[conversation_id]:
            assert transitions[-1] == "exit"
    assert any(t[-1] == "exit" for t in seen.values())
    if state != "monitoring":  # transfers bring some conversations back into the state
        assert any(t.count("enter") > 1 for t in seen.values())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_per_conversation_order_survives_reordering_and_duplicates(
    seed: int, snapshot_pubs: list[Publication]
) -> None:
    """Real fan-out, locally shuffled and partly repeated, as overlapping channels deliver it.

    Whatever arrives, a stream never delivers an older snapshot of a
    conversation after a newer one, nor the same body twice, and its
    transitions stay well formed.
    """
    rng = random.Random(seed)
    arrivals = [(pub, topic) for pub in snapshot_pubs for topic in pub.topics]
    arrivals += rng.sample(arrivals, len(arrivals) // 5)  # a second channel's copies
    arrivals.sort(key=lambda item: item[0].at + rng.uniform(0.0, 0.5))

    stream = make_stream(rules=StreamRules(state="queued"), buffer_size=100_000)
    for pub, topic in arrivals:
        offer(stream, pub.body, topic)
    delivered = drain(stream)

    versions: dict[str | None, float] = {}
    bodies: set[bytes] = set()
    inside: dict[str | None, bool] = defaultdict(bool)
    for event in delivered:
        assert event.version is not None
        assert event.version >= versions.get(event.conversation_id, 0.0)
        versions[event.conversation_id] = event.version
        assert event.raw not in bodies
        bodies.add(event.raw)
        assert (event.transition == "enter") != inside[event.conversation_id]
        inside[event.conversation_id] = event.transition != "exit"
    assert stream.counters.stale > 0, "the shuffle should have produced stale snapshots"
    assert stream.counters.duplicates >= len(arrivals) - len(snapshot_pubs) - stream.counters.stale


# --------------------------------------------------------------------------
# 5. Sequences, and the StreamEvent handed over
# --------------------------------------------------------------------------


def test_sequences_are_gap_free_from_one_across_drops() -> None:
    stream = make_stream()
    first = snapshot(customer(), acd(), conv="c-1")
    events = [
        offer(stream, first),
        offer(stream, first),  # duplicate: takes no number
        offer(stream, snapshot(customer(), acd(), conv="c-2")),
        offer(stream, snapshot(customer(), acd(), conv="c-3")),
    ]
    assert [e.sequence for e in events if e is not None] == [1, 2, 3]
    assert [e.sequence for e in drain(stream)] == [1, 2, 3]


def test_event_fields() -> None:
    stream = make_stream(stream_id="voice-main", priority=2)
    body = snapshot(customer(), acd())
    event = offer(stream, body, QUEUE_TOPIC, at=EPOCH + 5.0, mono=7.0, correlation_id="c-9")

    assert event is not None
    assert event.stream_id == "voice-main"
    assert event.priority == 2
    assert event.topic == QUEUE_TOPIC
    assert event.conversation_id == CONV
    assert event.correlation_id == "c-9"
    assert event.raw == body
    assert event.received_at == EPOCH + 5.0
    assert event.transition is None
    assert event.latency_s is None  # set by take()
    assert event.age_s is None
    facts = event_facts(QUEUE_TOPIC, event.raw)
    assert event.idempotency_key == f"voice-main:{facts.key}:{facts.hash.hex()}"


def test_take_stamps_latency_and_age() -> None:
    stream = make_stream()
    body = snapshot(customer(), acd())  # version: T1
    version = parse_iso(T1)
    offer(stream, body, at=version + 0.25, mono=1000.0)

    event = stream.take(version + 3.0, 1001.5)

    assert isinstance(event, StreamEvent)
    assert event.latency_s == pytest.approx(1.5)
    assert event.age_s == pytest.approx(3.0)
    assert stream.counters.delivered == 1


def test_take_leaves_age_unset_without_a_version() -> None:
    stream = make_stream()
    offer(stream, b'{"anything": 1}', "v2.system.something", mono=3.0)

    event = stream.take(EPOCH, 4.0)

    assert isinstance(event, StreamEvent)
    assert event.latency_s == pytest.approx(1.0)
    assert event.age_s is None


def test_take_on_an_empty_stream_is_none() -> None:
    assert make_stream().take(EPOCH, 0.0) is None


def test_body_is_parsed_lazily_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = make_stream()
    body = snapshot(customer(), acd())
    event = offer(stream, body)
    assert event is not None

    calls: list[bytes] = []
    decode = msgspec.json.decode

    def counting(raw: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(raw)
        return decode(raw, *args, **kwargs)

    monkeypatch.setattr(msgspec.json, "decode", counting)
    taken = stream.take(EPOCH, 0.0)
    assert taken is event
    assert calls == []  # not parsed by the pipeline nor by take()

    assert event.body["id"] == CONV
    assert event.body is event.body
    assert calls == [body]


def test_idempotency_keys_name_the_stream_and_the_state() -> None:
    a, b = make_stream(stream_id="a", epoch="run-1"), make_stream(stream_id="b", epoch="run-1")
    body = snapshot(customer(), acd())
    other = snapshot(customer(), acd(), conv=OTHER_CONV)
    offer(a, body)
    offer(a, other)
    offer(b, body)
    keys = [e.idempotency_key for s in (a, b) for e in drain(s)]
    digest = event_facts(QUEUE_TOPIC, body).hash.hex()
    assert keys[0] == f"a:{CONV}:{digest}"
    assert keys[2] == f"b:{CONV}:{digest}"
    assert keys[1].startswith(f"a:{OTHER_CONV}:")
    assert len(set(keys)) == 3


def test_the_same_state_gets_the_same_key_in_another_run() -> None:
    """A restart numbers events from 1 again; the key is what stays the same."""
    bodies = [
        snapshot(customer(), acd()),
        snapshot(customer(), acd("disconnected"), conv="c-2"),
        snapshot(customer(), acd(), conv=OTHER_CONV),
    ]
    runs = []
    for epoch, order in (("run-1", bodies), ("run-2", bodies[::-1])):
        stream = make_stream(stream_id="s", epoch=epoch)
        for body in order:
            offer(stream, body)
        runs.append({e.raw: e for e in drain(stream)})
    first, second = runs
    for raw, event in first.items():
        again = second[raw]
        assert again.idempotency_key == event.idempotency_key
        assert (event.epoch, again.epoch) == ("run-1", "run-2")
    # Different states never share a key, and sequences say nothing across runs.
    assert len({e.idempotency_key for e in first.values()}) == 3
    assert {e.sequence for e in first.values()} == {e.sequence for e in second.values()}


# --------------------------------------------------------------------------
# 6. Buffer, overflow and the dead-letter queue
# --------------------------------------------------------------------------

REASONS = {
    "drop_oldest": "overflow_drop_oldest",
    "drop_newest": "overflow_drop_newest",
    "backlog": "overflow_backlog_limit",
}
Overflow = Literal["drop_oldest", "drop_newest", "backlog"]

# Distinct bodies on a conversation topic, with their facts computed once:
# the property below offers thousands of them.
DISTINCT: list[tuple[bytes, EventFacts]] = [
    (body, event_facts(QUEUE_TOPIC, body))
    for body in (snapshot(conv=f"conv-{i}") for i in range(800))
]


def gap(n: int) -> Gap:
    return Gap("s", float(n), float(n) + 1.0, frozenset({QUEUE_TOPIC}), "ch-1", "dropped")


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(["drop_oldest", "drop_newest", "backlog"]),
    buffer_size=st.integers(min_value=1, max_value=4),
    runs=st.lists(
        st.tuples(st.sampled_from(["offer", "take", "gap"]), st.integers(1, 60)), max_size=12
    ),
)
def test_overflow_accounting(
    policy: Overflow, buffer_size: int, runs: list[tuple[str, int]]
) -> None:
    """Delivered plus dead-lettered sequences = 1..N exactly, under any offer/take pattern."""
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=buffer_size, overflow=policy)
    limit = buffer_size * (BACKLOG_FACTOR if policy == "backlog" else 1)
    model: deque[int | Gap] = deque()  # what the buffer should hold, in order
    expected_letters: list[int] = []
    taken: list[StreamEvent] = []
    gaps_added: list[Gap] = []
    gaps_taken: list[Gap] = []
    offered = 0

    def take() -> None:
        item = stream.take(EPOCH, 0.0)
        if not model:
            assert item is None
            return
        want = model.popleft()
        if isinstance(want, Gap):
            assert item == want
            gaps_taken.append(want)
        else:
            assert isinstance(item, StreamEvent)
            assert item.sequence == want
            taken.append(item)

    for kind, count in runs:
        for _ in range(count):
            if kind == "offer":
                body, facts = DISTINCT[offered]
                offered += 1
                result = stream.offer(QUEUE_TOPIC, body, None, EPOCH, 0.0, facts)
                events_held = sum(isinstance(x, int) for x in model)
                if events_held < limit:
                    model.append(offered)
                    assert result is not None
                    assert result.sequence == offered
                elif policy == "drop_oldest":
                    oldest = next(x for x in model if isinstance(x, int))
                    model.remove(oldest)
                    model.append(offered)
                    expected_letters.append(oldest)
                    assert result is not None
                    assert result.sequence == offered
                else:
                    expected_letters.append(offered)
                    assert result is None
            elif kind == "gap":
                g = gap(len(gaps_added))
                gaps_added.append(g)
                stream.add_gap(g)
                model.append(g)
                at = [i for i, x in enumerate(model) if isinstance(x, Gap)]
                if len(at) > streams.MAX_BUFFERED_GAPS:
                    older, newer = model[at[0]], model[at[1]]
                    assert isinstance(older, Gap)
                    assert isinstance(newer, Gap)
                    del model[at[1]]
                    model[at[0]] = streams.merged_gap(older, newer)
            else:
                take()
            assert stream.events_buffered <= limit
            assert stream.events_buffered == sum(isinstance(x, int) for x in model)
            assert len(stream) == len(model)
            assert stream.behind == (stream.events_buffered > buffer_size)

    while model:
        take()
    assert stream.take(EPOCH, 0.0) is None

    delivered = [e.sequence for e in taken]
    dead = [letter.sequence for letter in letters]
    assert dead == expected_letters
    assert delivered == sorted(delivered)
    assert len(set(delivered)) == len(delivered)
    assert len(set(dead)) == len(dead)
    assert not set(delivered) & set(dead)
    assert set(delivered) | set(dead) == set(range(1, offered + 1))
    assert all(letter.reason == REASONS[policy] for letter in letters)
    # Never dropped, in order; past the bound, merged into wider ones.
    if len(gaps_taken) == len(gaps_added):
        assert gaps_taken == gaps_added
    for added in gaps_added:
        assert any(g.start <= added.start and added.end <= g.end for g in gaps_taken)
    c = stream.counters
    assert c.overflowed == c.dead_lettered == len(letters)
    assert c.delivered == len(taken)
    assert c.gaps == len(gaps_added)


def test_drop_oldest_dead_letters_the_oldest() -> None:
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=2, overflow="drop_oldest")
    bodies = [snapshot(conv=f"c-{i}") for i in range(1, 6)]
    for body in bodies:
        assert offer(stream, body) is not None

    assert [(x.sequence, x.reason) for x in letters] == [
        (1, "overflow_drop_oldest"),
        (2, "overflow_drop_oldest"),
        (3, "overflow_drop_oldest"),
    ]
    facts = event_facts(QUEUE_TOPIC, bodies[0])
    assert letters[0] == DeadLetter(
        "s",
        1,
        "overflow_drop_oldest",
        QUEUE_TOPIC,
        "c-1",
        "corr",
        EPOCH + 10.0,
        bodies[0],
        f"s:c-1:{facts.hash.hex()}",
        well_formed=True,  # the facts read it as JSON
    )
    assert [e.sequence for e in drain(stream)] == [4, 5]


def test_drop_newest_dead_letters_the_newcomer() -> None:
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=2, overflow="drop_newest")
    results = [offer(stream, snapshot(conv=f"c-{i}")) for i in range(1, 5)]

    assert [r is not None for r in results] == [True, True, False, False]
    assert [(x.sequence, x.reason) for x in letters] == [
        (3, "overflow_drop_newest"),
        (4, "overflow_drop_newest"),
    ]
    assert [e.sequence for e in drain(stream)] == [1, 2]


def test_block_holds_a_backlog_before_dead_lettering() -> None:
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=2, overflow="backlog")
    limit = 2 * BACKLOG_FACTOR
    for i in range(limit + 3):
        offer(stream, snapshot(conv=f"c-{i}"))
        assert stream.behind == (i + 1 > 2)

    assert stream.events_buffered == limit
    assert [(x.sequence, x.reason) for x in letters] == [
        (limit + 1, "overflow_backlog_limit"),
        (limit + 2, "overflow_backlog_limit"),
        (limit + 3, "overflow_backlog_limit"),
    ]
    assert [e.sequence for e in drain(stream)] == list(range(1, limit + 1))
    assert not stream.behind


@pytest.mark.parametrize("buffer_size", [0, -1])
def test_a_buffer_needs_room_for_one_event(buffer_size: int) -> None:
    with pytest.raises(ValueError, match="buffer_size must be at least 1"):
        make_stream(buffer_size=buffer_size)


def test_a_dead_lettered_body_is_still_remembered() -> None:
    """An event dropped for overflow is accounted for: a resend is a duplicate, not a copy."""
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=1, overflow="drop_newest")
    offer(stream, snapshot(conv="c-1"))
    dropped = snapshot(conv="c-2")
    assert offer(stream, dropped) is None
    drain(stream)

    assert offer(stream, dropped) is None
    assert stream.counters.duplicates == 1
    assert [x.sequence for x in letters] == [2]


# --------------------------------------------------------------------------
# Gaps
# --------------------------------------------------------------------------


def test_gaps_come_out_in_order_among_events() -> None:
    stream = make_stream()
    offer(stream, snapshot(conv="c-1"))
    stream.add_gap(gap(1))
    offer(stream, snapshot(conv="c-2"))
    stream.add_gap(gap(2))

    items = drain(stream)

    assert [i.sequence if isinstance(i, StreamEvent) else i for i in items] == [
        1,
        gap(1),
        2,
        gap(2),
    ]
    assert stream.counters.gaps == 2
    assert stream.counters.delivered == 2


def test_gaps_do_not_count_against_the_buffer() -> None:
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=2, overflow="drop_newest")
    for i in range(10):
        stream.add_gap(gap(i))
    offer(stream, snapshot(conv="c-1"))
    offer(stream, snapshot(conv="c-2"))

    assert letters == []
    assert stream.events_buffered == 2
    assert len(stream) == 12


def test_gaps_survive_overflow() -> None:
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=1, overflow="drop_oldest")
    stream.add_gap(gap(0))
    for i in range(1, 4):
        offer(stream, snapshot(conv=f"c-{i}"))
        stream.add_gap(gap(i))

    items = drain(stream)

    assert [x.sequence for x in letters] == [1, 2]
    assert [i.sequence if isinstance(i, StreamEvent) else i for i in items] == [
        gap(0),
        gap(1),
        gap(2),
        3,
        gap(3),
    ]


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "backlog"])
def test_gaps_a_stalled_consumer_leaves_unread_are_merged_past_a_bound_never_lost(
    overflow: Literal["drop_oldest", "drop_newest", "backlog"],
) -> None:
    """A flapping link under a consumer that does not read: fewer, wider gaps, none lost.

    They used to pile up without bound (each holding its topics), and each
    event offered to a full buffer scanned past every one of them.
    """
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=20, overflow=overflow)
    channels = ["ch-1", "ch-2"]
    added = []
    for n in range(1_000):
        offer(stream, snapshot(conv=f"c-{n}"))
        topic = QUEUE_TOPIC if n % 3 else f"v2.users.{n}.conversations"
        window = Gap("s", float(n), n + 0.5, frozenset({topic}), channels[n % 2], "reconnect")
        stream.add_gap(window)
        added.append(window)
        assert len([i for i in stream.items if isinstance(i, Gap)]) <= streams.MAX_BUFFERED_GAPS
    items = drain(stream)
    taken = [i for i in items if isinstance(i, Gap)]
    assert len(taken) <= streams.MAX_BUFFERED_GAPS
    # Every window reported is inside a gap the consumer gets, with its topics.
    for window in added:
        assert any(
            g.start <= window.start and window.end <= g.end and window.topics <= g.topics
            for g in taken
        ), window
    assert stream.counters.gaps == 1_000
    # The events are accounted for as before: delivered or dead-lettered.
    delivered = [i.sequence for i in items if isinstance(i, StreamEvent)]
    assert sorted(delivered + [x.sequence for x in letters]) == list(range(1, 1_001))
    # A merged gap names a channel and a reason only when both windows did.
    assert {g.channel_id for g in taken} <= {"", "ch-1", "ch-2"}
    assert {g.reason for g in taken} <= {"reconnect"}


def test_merged_gaps_cover_both_and_keep_what_they_share() -> None:
    a = Gap("s", 10.0, 12.0, frozenset({"t1"}), "ch-1", "reconnect")
    b = Gap("s", 11.0, 15.0, frozenset({"t1", "t2"}), "ch-1", "token_revoked")
    merged = streams.merged_gap(a, b)
    assert merged == Gap("s", 10.0, 15.0, frozenset({"t1", "t2"}), "ch-1", "merged")
    assert merged.topics is b.topics  # no new set when one holds the other
    other = streams.merged_gap(a, Gap("s", 20.0, 21.0, frozenset({"t3"}), "ch-2", "reconnect"))
    assert other == Gap("s", 10.0, 21.0, frozenset({"t1", "t3"}), "", "reconnect")


def test_gap_duration() -> None:
    assert Gap("s", 10.0, 12.5, frozenset(), "ch", "dropped").duration_s == 2.5


def test_flush_to_dead_letters() -> None:
    letters: list[DeadLetter] = []
    stream = make_stream(letters, buffer_size=10)
    offer(stream, snapshot(conv="c-1"))
    stream.add_gap(gap(1))
    offer(stream, snapshot(conv="c-2"))
    offer(stream, snapshot(conv="c-3"))
    assert stream.take(EPOCH, 0.0) is not None  # c-1 delivered

    assert stream.flush_to_dead_letters("stopped") == 2

    assert [(x.sequence, x.reason) for x in letters] == [(2, "stopped"), (3, "stopped")]
    assert len(stream) == 0
    assert stream.events_buffered == 0
    assert stream.take(EPOCH, 0.0) is None
    assert stream.counters.dead_lettered == 2
    assert stream.counters.overflowed == 0
    # The stream goes on numbering after a flush.
    event = offer(stream, snapshot(conv="c-4"))
    assert event is not None
    assert event.sequence == 4


def test_flush_of_an_empty_stream() -> None:
    letters: list[DeadLetter] = []
    assert make_stream(letters).flush_to_dead_letters("stopped") == 0
    assert letters == []


# --------------------------------------------------------------------------
# Bounded memory
# --------------------------------------------------------------------------


def test_memory_is_bounded() -> None:
    stream = make_stream(memory=100, buffer_size=1, overflow="drop_oldest")
    bodies = [snapshot(conv=f"conv-{i}") for i in range(10_000)]
    for body in bodies:
        assert offer(stream, body) is not None
        assert len(stream.key_memory) <= 100

    assert len(stream.key_memory) == 100
    # The newest keys are remembered; the oldest were forgotten.
    assert offer(stream, bodies[-1]) is None
    assert offer(stream, bodies[-100]) is None
    assert stream.counters.duplicates == 2
    assert offer(stream, bodies[0]) is not None
    assert len(stream.key_memory) == 100


def test_the_memory_is_out_of_the_garbage_collectors_sight() -> None:
    # A stream remembers up to 50,000 conversations; were each record
    # tracked, every full collection would walk them all and stall the feed.
    stream = make_stream(memory=1000, buffer_size=1, hashes_per_key=2)
    for i in range(200):
        offer(stream, snapshot(conv=f"conv-{i}"))
        offer(stream, snapshot(customer(), conv=f"conv-{i}"))
        offer(stream, snapshot(customer(), customer(), conv=f"conv-{i}"))
    gc.collect()  # tuples holding only bytes are untracked by a collection
    records = list(stream.key_memory.records())
    assert len(records) == 200
    assert all(len(seen.hashes) == 2 for seen in records)  # the newest two kept
    assert not any(gc.is_tracked(seen) for seen in records)
    assert not any(gc.is_tracked(seen.hashes) for seen in records)


def test_a_stream_keeps_at_least_one_hash_per_key() -> None:
    with pytest.raises(ValueError, match="hashes_per_key"):
        make_stream(hashes_per_key=0)


def test_the_least_recently_seen_key_is_forgotten_first() -> None:
    stream = make_stream(memory=3)
    a, b, c, d = (snapshot(conv=name) for name in "abcd")
    a2 = snapshot(customer(), conv="a")
    for body in (a, b, c):
        offer(stream, body)
    offer(stream, a2)  # touches a: now b is the least recently seen
    offer(stream, d)  # evicts b, not a

    assert offer(stream, a) is None  # a is still remembered: a duplicate
    assert offer(stream, b) is not None  # b was forgotten, so delivered again
    assert stream.counters.duplicates == 1


# --------------------------------------------------------------------------
# PriorityMerge
# --------------------------------------------------------------------------


def five_streams() -> list[Stream]:
    return [make_stream(stream_id=f"p{p}", priority=p) for p in range(1, 6)]


def test_weights() -> None:
    assert [weight(p) for p in range(1, 6)] == [16, 8, 4, 2, 1]


@pytest.mark.parametrize("rounds", [1, 3, 10])
def test_picks_are_proportional_to_weight(rounds: int) -> None:
    merge = PriorityMerge()
    ready = five_streams()
    picks: Counter[int] = Counter()
    for _ in range(31 * rounds):
        chosen = merge.pick(ready)
        assert chosen is not None
        picks[chosen.priority] += 1
    assert [picks[p] for p in range(1, 6)] == [
        16 * rounds,
        8 * rounds,
        4 * rounds,
        2 * rounds,
        rounds,
    ]


def test_no_stream_starves() -> None:
    merge = PriorityMerge()
    ready = five_streams()
    picks = [merge.pick(ready) for _ in range(31 * 20)]
    lowest = [chosen is not None and chosen.priority == 5 for chosen in picks]
    for start in range(len(picks) - 31 + 1):
        assert any(lowest[start : start + 31]), f"priority 5 starved from pick {start}"


def test_order_of_the_ready_streams_does_not_matter() -> None:
    forward, backward = PriorityMerge(), PriorityMerge()
    ready = five_streams()
    a = [forward.pick(ready) for _ in range(62)]
    b = [backward.pick(list(reversed(ready))) for _ in range(62)]
    assert a == b


def test_the_highest_priority_goes_first() -> None:
    merge = PriorityMerge()
    ready = five_streams()
    chosen = merge.pick(list(reversed(ready)))
    assert chosen is not None
    assert chosen.priority == 1


@pytest.mark.parametrize("reverse", [False, True])
def test_ties_go_to_the_higher_priority(reverse: bool) -> None:
    merge = PriorityMerge()
    high = make_stream(stream_id="high", priority=1)  # weight 16
    low = make_stream(stream_id="low", priority=2)  # weight 8
    # Credits that leave the two level on the next pick: 0 + 16 == 8 + 8.
    merge._current.update({"high": 0, "low": 8})
    ready = [low, high] if reverse else [high, low]
    assert merge.pick(ready) is high


def test_equal_priorities_take_turns() -> None:
    merge = PriorityMerge()
    a, b = make_stream(stream_id="a", priority=3), make_stream(stream_id="b", priority=3)
    picks = [merge.pick([a, b]) for _ in range(6)]
    assert picks == [a, b, a, b, a, b]


def test_only_ready_streams_are_picked() -> None:
    merge = PriorityMerge()
    streams_ = five_streams()
    only = [streams_[4]]
    assert all(merge.pick(only) is streams_[4] for _ in range(10))
    assert merge.pick([]) is None


def test_forget() -> None:
    merge = PriorityMerge()
    ready = five_streams()
    for _ in range(7):
        merge.pick(ready)
    assert any(merge._current.values())

    for stream in ready:
        merge.forget(stream.id)
    merge.forget("never-seen")  # harmless

    assert merge._current == {}
    fresh = PriorityMerge()
    assert [merge.pick(ready) for _ in range(31)] == [fresh.pick(ready) for _ in range(31)]


def test_a_forgotten_stream_comes_back_without_old_credit() -> None:
    high, low = make_stream(stream_id="high", priority=1), make_stream(stream_id="low", priority=5)
    kept, forgetting = PriorityMerge(), PriorityMerge()
    for merge in (kept, forgetting):
        # Eight turns for high (weight 16) while low (weight 1) builds up credit;
        # smooth round-robin gives low its one turn in 17 half-way through.
        assert [merge.pick([high, low]) for _ in range(8)] == [high] * 8
    forgetting.forget("low")

    assert kept.pick([high, low]) is low  # low's turn has come
    assert forgetting.pick([high, low]) is high  # its credit is gone: it starts over


# Keep the module's private sentinel honest: an event not yet read has no body.
def test_unparsed_sentinel() -> None:
    stream = make_stream()
    event = offer(stream, snapshot())
    assert event is not None
    assert event._body is streams._UNPARSED


# --------------------------------------------------------------------------
# The same traffic in both body shapes
# --------------------------------------------------------------------------


def shaped(
    pubs: list[Publication], topic_of: Any
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(topic, body) of the general and the media publications ``topic_of`` picks a topic of."""
    general: list[tuple[str, bytes]] = []
    media: list[tuple[str, bytes]] = []
    for pub in pubs:
        topic = topic_of(pub)
        if topic is None:
            continue
        (media if not topic.endswith(".conversations") else general).append((topic, pub.body))
    return general, media


def feed(rules: StreamRules, notes: list[tuple[str, bytes]]) -> list[tuple[str | None, Any]]:
    stream = make_stream(rules=rules, buffer_size=100_000)
    for topic, body in notes:
        offer(stream, body, topic)
    return [(item.conversation_id, item.transition) for item in drain(stream)]


@pytest.mark.parametrize(
    ("media", "rules"),
    [
        pytest.param(Media.CALLS, StreamRules(media="calls", state="active"), id="voice-active"),
        pytest.param(Media.CALLS, StreamRules(media="calls", state="queued"), id="voice-queued"),
        pytest.param(Media.CHATS, StreamRules(media="chats"), id="chat"),
        pytest.param(Media.CHATS, StreamRules(media="chats", state="active"), id="chat-active"),
        pytest.param(Media.MESSAGES, StreamRules(media="messages", sms=True), id="sms"),
        pytest.param(Media.EMAILS, StreamRules(media="emails", state="queued"), id="email-queued"),
        pytest.param(
            Media.CALLBACKS, StreamRules(media="callbacks", state="active"), id="callback-active"
        ),
        pytest.param(
            Media.CALLS, StreamRules(media="calls", state="monitoring"), id="voice-monitoring"
        ),
    ],
)
def test_queue_streams_deliver_the_same_in_both_shapes(
    simulation: tuple[ContactCentre, list[Publication]], media: Media, rules: StreamRules
) -> None:
    """A queue's general topic and its media topic give the same deliveries and transitions."""
    queue = simulation[0].queues[0].id
    wanted = {queue_conversations(queue), queue_conversations(queue, media)}

    def topic_of(pub: Publication) -> str | None:
        return next((t for t in pub.topics if t in wanted), None)

    general, by_media = shaped(simulation[1], topic_of)
    from_media = feed(rules, by_media)
    assert feed(rules, general) == from_media
    assert len({cid for cid, _ in from_media}) >= (1 if rules.state == "monitoring" else 5)
    if rules.state is not None:
        assert {"enter", "exit"} <= {transition for _, transition in from_media}


def test_user_streams_deliver_the_same_in_both_shapes(
    simulation: tuple[ContactCentre, list[Publication]],
) -> None:
    org, pubs = simulation
    checked = 0
    for agent in org.agents:
        wanted = {user_conversations(agent.id), user_conversations(agent.id, Media.CALLS)}

        def topic_of(pub: Publication, wanted: set[str] = wanted) -> str | None:
            return next((t for t in pub.topics if t in wanted), None)

        general, by_media = shaped(pubs, topic_of)
        rules = StreamRules(media="calls", state="active", queue_id=org.queues[0].id)
        from_media = feed(rules, by_media)
        assert feed(rules, general) == from_media
        checked += bool(from_media)
    assert checked >= 3


# --------------------------------------------------------------------------
# Gaps and the watermark
# --------------------------------------------------------------------------


def a_gap(start: float, end: float) -> Gap:
    return Gap("s", start, end, frozenset({QUEUE_TOPIC}), "", "reconnect")


def test_a_gap_holds_the_watermark_until_the_event_after_it_is_settled() -> None:
    stream = make_stream()
    first = offer(stream, snapshot(customer(), conv=CONV), at=EPOCH + 10.0)
    # A window reported after the event, that began before it.
    stream.add_gap(a_gap(EPOCH + 5.0, EPOCH + 9.0))
    second = offer(stream, snapshot(customer(), conv=OTHER_CONV), at=EPOCH + 12.0)
    assert first is not None
    assert second is not None
    assert stream.unsettled_since() == EPOCH + 5.0  # buffered
    assert stream.take(EPOCH + 20.0, 200.0) is first
    stream.settle(first.sequence)
    assert isinstance(stream.take(EPOCH + 20.0, 200.0), Gap)
    assert stream.unsettled_since() == EPOCH + 5.0  # handed out, not done with
    # A reader that settles as it goes settles it with the event after it.
    stream.settle(first.sequence)
    assert stream.unsettled_since() == EPOCH + 5.0
    assert stream.take(EPOCH + 20.0, 200.0) is second
    stream.settle(second.sequence)
    assert stream.unsettled_since() is None


def test_settle_gaps_is_for_a_reader_that_is_done_with_what_it_took() -> None:
    stream = make_stream()
    stream.add_gap(a_gap(EPOCH + 5.0, EPOCH + 9.0))
    assert isinstance(stream.take(EPOCH + 20.0, 200.0), Gap)
    assert stream.unsettled_since() == EPOCH + 5.0
    stream.settle_gaps()
    assert stream.unsettled_since() is None


@pytest.mark.parametrize("drop", ["flush", "hand_over"])
def test_a_gap_dropped_unread_holds_the_watermark_for_good(drop: str) -> None:
    letters: list[DeadLetter] = []
    stream = make_stream(letters)
    stream.add_gap(a_gap(EPOCH + 5.0, EPOCH + 9.0))
    assert offer(stream, snapshot(customer()), at=EPOCH + 10.0) is not None
    if drop == "flush":
        assert stream.flush_to_dead_letters("stopped") == 1
        assert [letter.reason for letter in letters] == ["stopped"]
    else:
        assert stream.hand_over() == 1
    assert len(stream) == 0
    assert stream.unsettled_since() == EPOCH + 5.0
