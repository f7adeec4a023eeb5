"""The simulated contact centre: determinism, realism of snapshots, fan-out, queries.

The expected shapes and state sets are written out here from the
notifications reference rather than imported from the module under test, so
a wrong table in the simulation fails a test instead of agreeing with itself.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import pytest

from genesys_mux.core.topics import Media, TopicFamily, expand_topic, parse_topic
from genesys_mux.emulator.org import ContactCentre, Publication

EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LISTS = ("calls", "callbacks", "chats", "emails", "messages")

# Per the reference, §7 "States by media".
ALLOWED_STATES = {
    "calls": {
        "alerting", "dialing", "contacting", "offering", "connected", "disconnected", "terminated",
        "none", "uploading", "converting", "transmitting",
    },
    "chats": {
        "alerting", "dialing", "contacting", "offering", "connected", "disconnected", "terminated",
    },
    "emails": {"alerting", "connected", "disconnected", "transmitting", "parked"},
    "messages": {"alerting", "connected", "disconnected", "parked"},
    "callbacks": {
        "scheduled", "alerting", "dialing", "contacting", "offering", "connected",
        "disconnected", "terminated",
    },
}  # fmt: skip
DISCONNECT_TYPES = {
    "endpoint", "client", "system", "timeout", "transfer", "transfer.conference",
    "transfer.consult", "transfer.forward", "transfer.noanswer", "transfer.notavailable",
    "transport.failure", "error", "peer", "other", "spam", "uncallable",
}  # fmt: skip
# Detail events spell disconnect types as analytics does (vendor models).
DETAIL_DISCONNECT_TYPES = {"ENDPOINT", "CLIENT", "SYSTEM", "TIMEOUT", "TRANSFER", "PEER", "ERROR",
                           "OTHER", "SPAM", "UNCALLABLE"}  # fmt: skip
DETAIL_EVENTS = {"acd.start", "acd.end", "user.start", "user.end", "acw", "customer.start",
                 "customer.end"}  # fmt: skip
ROUTING_STATUSES = {"OFF_QUEUE", "IDLE", "INTERACTING", "NOT_RESPONDING", "COMMUNICATING"}


def centre(**overrides: Any) -> ContactCentre:
    """A mid-sized org, loaded enough that some customers wait and some abandon."""
    values: dict[str, Any] = {"seed": 11, "queues": 6, "agents": 30, "rate": 6.0, "epoch": EPOCH}
    values.update(overrides)
    return ContactCentre(**values)


def body(pub: Publication) -> Any:
    return json.loads(pub.body)


def is_snapshot(pub: Publication) -> bool:
    """A general-shape snapshot (``….conversations`` topics)."""
    first = parse_topic(pub.topics[0])
    return first.family is TopicFamily.QUEUE_CONVERSATIONS and first.media is None


def is_media_snapshot(pub: Publication) -> bool:
    """A media-shape snapshot (``….conversations.{media}`` topics)."""
    first = parse_topic(pub.topics[0])
    return first.family is TopicFamily.QUEUE_CONVERSATIONS and first.media is not None


def media_of(data: dict[str, Any]) -> str:
    """The media of a general-shape snapshot: the list its participants fill."""
    return next(name for p in data["participants"] for name in LISTS if p[name])


def comms(participant: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for name in LISTS for c in participant[name]]


def done(participant: dict[str, Any]) -> bool:
    return all(
        c["state"] in ("disconnected", "terminated")
        and c.get("afterCallWork", {}).get("state") != "pending"
        for c in comms(participant)
    )


def timestamps(value: Any) -> list[str]:
    """Every value of a key ending in Time or Date, at any depth."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and (key.endswith("Time") or key.endswith("Date")):
                found.append(item)
            else:
                found.extend(timestamps(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(timestamps(item))
    return found


def version(snapshot: dict[str, Any]) -> str:
    """The newest participant or communication timestamp; ISO strings sort by time."""
    return max(timestamps(snapshot["participants"]), default="")


@pytest.fixture(scope="module")
def sample() -> tuple[ContactCentre, list[Publication]]:
    org = centre()
    return org, org.advance(60.0)


@pytest.fixture(scope="module")
def snapshots(
    sample: tuple[ContactCentre, list[Publication]],
) -> dict[str, list[tuple[Publication, dict[str, Any]]]]:
    """Each conversation's snapshot publications, in order, with decoded bodies."""
    by_conv: dict[str, list[tuple[Publication, dict[str, Any]]]] = defaultdict(list)
    for pub in sample[1]:
        if is_snapshot(pub):
            assert pub.conversation_id is not None
            by_conv[pub.conversation_id].append((pub, body(pub)))
    return by_conv


# -- determinism -----------------------------------------------------------


def test_same_seed_gives_identical_stream() -> None:
    first, second = centre().advance(30.0), centre().advance(30.0)
    assert len(first) > 500
    assert first == second


def test_chunking_advance_does_not_change_the_stream() -> None:
    def run(step: float | None) -> list[Publication]:
        org = centre()
        out: list[Publication] = []

        def until(end: float) -> None:
            if step is None:
                out.extend(org.advance(end))
                return
            t = org.now
            while t < end:
                t = min(end, t + step)
                out.extend(org.advance(t))

        until(10.0)
        org.add_queue("Late Queue", 10.0)
        org.set_rate(9.0, 12.0)
        until(25.0)
        org.set_rate(0.0, 25.0)
        until(40.0)
        return out

    whole = run(None)
    assert len(whole) > 500
    assert run(0.013) == whole
    assert run(0.77) == whole


def test_different_seed_gives_different_stream() -> None:
    a, b = centre(seed=1).advance(10.0), centre(seed=2).advance(10.0)
    assert [p.body for p in a] != [p.body for p in b]
    assert {q.id for q in centre(seed=1).queues}.isdisjoint(q.id for q in centre(seed=2).queues)


# -- topics and shapes --------------------------------------------------------


def test_every_media_appears(sample: tuple[ContactCentre, list[Publication]]) -> None:
    media = {parse_topic(p.topics[0]).media for p in sample[1] if is_media_snapshot(p)}
    assert media == {Media.CALLS, Media.CHATS, Media.EMAILS, Media.MESSAGES, Media.CALLBACKS}


def test_topics_are_valid_and_match_the_body(
    sample: tuple[ContactCentre, list[Publication]],
) -> None:
    families: Counter[TopicFamily] = Counter()
    for pub in sample[1]:
        assert pub.topics, pub
        assert len(set(pub.topics)) == len(pub.topics)
        for topic in pub.topics:
            assert expand_topic(topic) == (topic,)
            families[parse_topic(topic).family] += 1
        first = parse_topic(pub.topics[0])
        data = body(pub)
        if first.family is TopicFamily.QUEUE_CONVERSATIONS:
            assert data["id"] == pub.conversation_id
            parsed = [parse_topic(t) for t in pub.topics]
            # The queue's topic, then each user's, all general or all of one media.
            assert all(t.media is first.media for t in parsed)
            assert all(t.family is TopicFamily.USER_CONVERSATIONS for t in parsed[1:])
            queue_ids = {
                p.get("queueId") or p.get("queue", {}).get("id") for p in data["participants"]
            } - {None}
            assert first.entity_id in queue_ids or len(data["participants"]) <= 2
        elif first.family is TopicFamily.CONVERSATION_DETAIL_EVENTS:
            assert len(pub.topics) == 1
            assert first.entity_id == pub.conversation_id == data["conversationId"]
            assert first.event in DETAIL_EVENTS
        else:
            assert first.family in (TopicFamily.USER_PRESENCE, TopicFamily.USER_ROUTING_STATUS)
            assert pub.conversation_id is None
    assert families[TopicFamily.USER_CONVERSATIONS] > 0
    assert families[TopicFamily.USER_PRESENCE] > 0
    assert families[TopicFamily.USER_ROUTING_STATUS] > 0


def test_snapshots_have_the_reference_shape(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    purposes: Counter[str] = Counter()
    for pubs in snapshots.values():
        for _pub, data in pubs:
            assert set(data) >= {
                "id", "participants", "recordingState", "maxParticipants", "recentTransfers",
                "divisions",
            }  # fmt: skip
            assert data["divisions"][0]["division"]["id"]
            media = media_of(data)
            for p in data["participants"]:
                purposes[p["purpose"]] += 1
                assert {"id", "purpose", "name", "attributes", *LISTS} <= set(p)
                assert None not in p.values(), p  # absent fields are omitted, not null
                assert [len(p[name]) for name in LISTS] == [
                    1 if name == media else 0 for name in LISTS
                ]
                (c,) = p[media]
                assert {"id", "state", "initialState", "held"} <= set(c)
                # The vendor's general chat model has no direction.
                assert ("direction" in c) == (media != "chats")
                assert None not in c.values(), c
                if "disconnectType" in c:
                    assert c["disconnectType"] in DISCONNECT_TYPES
                    assert "disconnectedTime" in c
                if p["purpose"] in ("agent", "acd"):
                    assert p["queueId"]
                    assert p["conversationRoutingData"]["queue"]["id"] == p["queueId"]
                if p["purpose"] in ("agent", "user"):
                    assert p["userId"]
                if p["purpose"] == "agent":
                    assert c["afterCallWorkRequired"] is True
                    assert p["wrapupRequired"] is True
                if media == "callbacks":
                    assert c["callbackNumbers"]
                    assert ISO.fullmatch(c["callbackScheduledTime"])
    assert set(purposes) == {"customer", "ivr", "acd", "agent", "user"}


def test_states_are_the_reference_states_for_each_media(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    for pubs in snapshots.values():
        for _, data in pubs:
            media = media_of(data)
            for p in data["participants"]:
                for c in p[media]:
                    assert c["state"] in ALLOWED_STATES[media], (media, c["state"])
                    seen[media].add(c["state"])
    assert "scheduled" in seen["callbacks"]
    assert "transmitting" in seen["emails"]
    assert {"alerting", "connected", "disconnected", "terminated"} <= seen["calls"]


def test_timestamps_are_iso_and_versions_never_go_back(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    rises = 0
    for pubs in snapshots.values():
        previous = ""
        last_at = -1.0
        for pub, data in pubs:
            for stamp in timestamps(data):
                assert ISO.fullmatch(stamp), stamp
            current = version(data)
            assert current >= previous, (data["id"], previous, current)
            rises += current > previous
            assert pub.at >= last_at
            previous, last_at = current, pub.at
    assert rises > 1000


def test_conversations_run_to_the_end(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    early = [pubs for pubs in snapshots.values() if pubs[0][0].at < 15.0]
    ended = 0
    for pubs in early:
        _, final = pubs[-1]
        media = media_of(final)
        if not all(done(p) for p in final["participants"]):
            continue
        ended += 1
        end_state = "disconnected" if media in ("emails", "messages") else "terminated"
        for p in final["participants"]:
            assert all(c["state"] == end_state for c in comms(p)), final
            if p["purpose"] == "agent" and "connectedTime" in p:
                assert p["wrapup"]["code"]
                assert p["endAcwTime"] >= p["startAcwTime"]
                assert comms(p)[0]["afterCallWork"]["state"] == "complete"
    # Emails and callbacks may wait a minute; nearly everything else is over.
    assert ended >= 0.9 * len(early) > 50


def test_queued_snapshots_are_followed_by_an_answer_or_an_abandon(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    def queued(data: dict[str, Any]) -> bool:
        parts = data["participants"]
        acd = any(p["purpose"] == "acd" and comms(p)[0]["state"] == "connected" for p in parts)
        agent = any(p["purpose"] == "agent" and comms(p)[0]["state"] == "connected" for p in parts)
        return acd and not agent

    answered = abandoned = 0
    for pubs in snapshots.values():
        states = [queued(data) for _, data in pubs]
        if not any(states):
            continue
        after = [data for (_, data), q in zip(pubs, states, strict=True) if not q][-1:]
        for data in [d for (_, d), q in zip(pubs, states, strict=True) if not q]:
            agents = [p for p in data["participants"] if p["purpose"] == "agent"]
            if any(comms(p)[0]["state"] == "connected" for p in agents):
                acds = [p for p in data["participants"] if p["purpose"] == "acd"]
                assert comms(acds[-1])[0]["disconnectType"] == "transfer"
                answered += 1
                break
        else:
            if after and all(done(p) for p in after[0]["participants"]):
                customer = after[0]["participants"][0]
                assert comms(customer)[0]["disconnectType"] in ("endpoint", "client")
                abandoned += 1
    assert answered > 100
    assert abandoned > 5


def test_transfers_and_monitoring_happen(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    transfers = monitored = 0
    for pubs in snapshots.values():
        pub, final = pubs[-1]
        agents = [p for p in final["participants"] if p["purpose"] == "agent"]
        first_leg = [p for p in agents if comms(p)[0].get("disconnectType") == "transfer"]
        if first_leg and final["recentTransfers"]:
            entry = final["recentTransfers"][0]
            assert entry["initiator"]["userId"] == first_leg[0]["userId"]
            later = agents[agents.index(first_leg[0]) + 1 :]
            if any("connectedTime" in p for p in later):
                transfers += 1
        for pub, data in pubs:
            ids = {p["id"]: p for p in data["participants"]}
            for p in data["participants"]:
                if p["purpose"] == "user":
                    assert ids[p["monitoredParticipantId"]]["purpose"] == "agent"
                    if comms(p)[0]["state"] == "connected":
                        assert f"v2.users.{p['userId']}.conversations" in pub.topics
                        monitored += 1
    assert transfers >= 3
    assert monitored >= 3


def test_messages_carry_their_type(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    kinds: Counter[str] = Counter()
    for pubs in snapshots.values():
        _, data = pubs[0]
        if media_of(data) == "messages":
            (c,) = data["participants"][0]["messages"]
            kinds[c["type"]] += 1
            if c["type"] == "sms":
                assert data["participants"][0]["address"].startswith("+")
    assert set(kinds) == {"sms", "webmessaging", "whatsapp"}
    assert kinds.most_common(1)[0][0] == "sms"


def test_user_topics_go_to_the_users_in_the_conversation(
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    finals = 0
    for pubs in snapshots.values():
        previous: dict[str, dict[str, Any]] = {}
        for pub, data in pubs:
            users = {
                parse_topic(t).entity_id
                for t in pub.topics
                if parse_topic(t).family is TopicFamily.USER_CONVERSATIONS
            }
            people = [p for p in data["participants"] if p["purpose"] in ("agent", "user")]
            for p in people:
                if not done(p):
                    assert p["userId"] in users, "a user still in it must hear about it"
            for user in users:
                theirs = [p for p in people if p["userId"] == user]
                assert theirs, "a user topic must go to a user in the conversation"
                # Either still in it, or this is the snapshot where they left.
                assert any(
                    not done(p) or p["id"] not in previous or not done(previous[p["id"]])
                    for p in theirs
                )
                finals += all(done(p) for p in theirs)
            previous = {p["id"]: p for p in data["participants"]}
    assert finals > 100


def test_detail_events(sample: tuple[ContactCentre, list[Publication]]) -> None:
    events: Counter[str] = Counter()
    for pub in sample[1]:
        topic = parse_topic(pub.topics[0])
        if topic.family is not TopicFamily.CONVERSATION_DETAIL_EVENTS:
            continue
        assert topic.event is not None
        events[topic.event] += 1
        data = body(pub)
        assert isinstance(data["eventTime"], int)
        assert data["eventTime"] == round((EPOCH + pub.at) * 1000)
        assert data["mediaType"] in {"VOICE", "CHAT", "EMAIL", "MESSAGE", "CALLBACK"}
        assert {"conversationId", "participantId", "sessionId", "direction"} <= set(data)
        assert data["direction"] in ("INBOUND", "OUTBOUND")
        # The customer's events have no queue in the vendor's models.
        assert ("queueId" in data) == (not topic.event.startswith("customer."))
        if topic.event.endswith(".end"):
            assert data["disconnectType"] in DETAIL_DISCONNECT_TYPES
        if topic.event.startswith("user.") or topic.event == "acw":
            assert data["userId"]
    assert set(events) == DETAIL_EVENTS


def test_presence_and_routing_status(sample: tuple[ContactCentre, list[Publication]]) -> None:
    org, pubs = sample
    statuses: dict[str, list[str]] = defaultdict(list)
    presences: dict[str, list[str]] = defaultdict(list)
    for pub in pubs:
        topic = parse_topic(pub.topics[0])
        data = body(pub)
        if topic.family is TopicFamily.USER_ROUTING_STATUS:
            assert data["id"] == topic.entity_id
            assert data["routingStatus"]["status"] in ROUTING_STATUSES
            assert ISO.fullmatch(data["routingStatus"]["startTime"])
            statuses[topic.entity_id].append(data["routingStatus"]["status"])
        elif topic.family is TopicFamily.USER_PRESENCE:
            assert data["source"] == "PURECLOUD"
            assert data["primary"] is True
            assert data["message"] == ""
            assert ISO.fullmatch(data["modifiedDate"])
            presences[topic.entity_id].append(data["presenceDefinition"]["systemPresence"])
    every = [s for seq in statuses.values() for s in seq]
    assert {"IDLE", "INTERACTING", "NOT_RESPONDING", "OFF_QUEUE"} <= set(every)
    for seq in statuses.values():
        assert all(a != b for a, b in pairwise(seq)), "only changes publish"
    breaks = [p for seq in presences.values() for p in seq]
    assert {"Break", "On Queue"} <= set(breaks)
    for user, seq in presences.items():
        assert seq[0] in ("Break", "Meal")  # everyone starts On Queue
        assert org.presence(user) is not None
        assert org.presence(user)["presenceDefinition"]["systemPresence"] == seq[-1]  # type: ignore[index]
    # An agent on a break is off queue; back on queue they are idle again.
    user = next(iter(presences))
    assert "OFF_QUEUE" in statuses[user]


def test_agents_take_one_conversation_at_a_time(
    sample: tuple[ContactCentre, list[Publication]],
) -> None:
    busy: dict[str, tuple[str, float]] = {}
    for pub in sample[1]:
        if not is_snapshot(pub):
            continue
        for p in body(pub)["participants"]:
            if p["purpose"] != "agent":
                continue
            if done(p):
                if busy.get(p["userId"], ("", 0.0))[0] == p["id"]:
                    del busy[p["userId"]]
            else:
                holder = busy.setdefault(p["userId"], (p["id"], pub.at))
                assert holder[0] == p["id"], f"agent {p['userId']} in two conversations"


# -- lookups and queries -------------------------------------------------------


def test_conversation_returns_the_latest_state_in_the_rest_shape(
    sample: tuple[ContactCentre, list[Publication]],
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    org = sample[0]
    for cid, pubs in snapshots.items():
        rest = org.conversation(cid)
        assert rest is not None
        data, last = json.loads(rest), pubs[-1][1]
        assert data["id"] == cid
        assert data["recordingState"] == last["recordingState"].upper()
        assert data["startTime"] <= min(p["startTime"] for p in data["participants"])
        assert ("endTime" in data) == all(done(p) for p in last["participants"])
        # Participant for participant, the state of the last notification;
        # REST chats add the direction the general shape's chats lack.
        assert [p["id"] for p in data["participants"]] == [p["id"] for p in last["participants"]]
        for rest_p, last_p in zip(data["participants"], last["participants"], strict=True):
            assert rest_p["purpose"] == last_p["purpose"]
            for rest_c, last_c in zip(comms(rest_p), comms(last_p), strict=True):
                if "direction" not in last_c:
                    del rest_c["direction"]
                assert rest_c == last_c
    assert org.conversation("00000000-0000-4000-8000-000000000000") is None


def test_analytics_query_filters_by_interval_and_queue(
    sample: tuple[ContactCentre, list[Publication]],
    snapshots: dict[str, list[tuple[Publication, dict[str, Any]]]],
) -> None:
    org = sample[0]
    spans = {}
    for cid, pubs in snapshots.items():
        final = pubs[-1][1]
        over = all(done(p) for p in final["participants"])
        spans[cid] = (pubs[0][0].at, pubs[-1][0].at if over else None)
    start, end = EPOCH + 20.0, EPOCH + 25.0
    expected = {
        cid
        for cid, (s, e) in spans.items()
        if EPOCH + s < end and (e is None or EPOCH + e >= start)
    }
    found = org.analytics_query(start, end, None)
    assert {c["conversationId"] for c in found} == expected
    assert len(expected) > 20
    starts = [c["conversationStart"] for c in found]
    assert starts == sorted(starts)
    for record in found:
        assert record["originatingDirection"] == "inbound"
        assert ISO.fullmatch(record["conversationStart"])
        for p in record["participants"]:
            assert p["purpose"] in ("customer", "ivr", "acd", "agent", "user")
            for session in p["sessions"]:
                assert session["mediaType"] in ("voice", "chat", "email", "message", "callback")
                for seg in session["segments"]:
                    assert seg["segmentType"] in ("ivr", "interact", "alert", "hold", "wrapup")
                    assert seg.get("segmentEnd", "~") >= seg["segmentStart"]
        ended = spans[record["conversationId"]][1]
        if ended is not None:
            assert "conversationEnd" in record

    queue = org.queues[0].id
    some = org.analytics_query(start, end, [queue])
    assert 0 < len(some) < len(found)
    for record in some:
        queues = {
            seg.get("queueId")
            for p in record["participants"]
            for s in p["sessions"]
            for seg in s["segments"]
        }
        assert queue in queues
    assert org.analytics_query(start, end, []) == []
    assert org.analytics_query(EPOCH - 100, EPOCH - 50, None) == []
    # Conversations still under way overlap any later interval.
    later = org.analytics_query(EPOCH + 500, EPOCH + 600, None)
    assert later
    assert all("conversationEnd" not in c for c in later)


def test_ended_conversations_are_forgotten_beyond_the_limit() -> None:
    org = centre(retain_ended=25)
    pubs = org.advance(40.0)
    ids = {p.conversation_id for p in pubs if p.conversation_id is not None}
    active = set(org.active_conversation_ids())
    remembered = {cid for cid in ids - active if org.conversation(cid) is not None}
    assert len(remembered) == 25
    assert all(org.conversation(cid) is not None for cid in active)
    assert len(org.analytics_query(EPOCH, EPOCH + 40.0, None)) == 25 + len(active)


# -- changing the org -----------------------------------------------------------


def test_org_shape() -> None:
    org = centre(queues=15, agents=20)
    names = [q.name for q in org.queues]
    assert len(set(names)) == 15
    assert "Support" in names
    assert "Support 2" in names
    assert all(q.member_ids for q in org.queues)
    for agent in org.agents:
        assert agent.queue_ids
        assert agent.email.endswith("@example.com")
        for qid in agent.queue_ids:
            assert agent.id in org.queue(qid).member_ids  # type: ignore[union-attr]
    summary = org.org()
    assert [q["id"] for q in summary["queues"]] == [q.id for q in org.queues]
    assert {u["id"] for u in summary["users"]} == {a.id for a in org.agents}
    assert max(len(a.queue_ids) for a in org.agents) <= 3
    few = centre(queues=12, agents=2)
    assert all(q.member_ids for q in few.queues)  # more than 3 each when they must

    api = org.queues[0].to_api(EPOCH)
    assert api["selfUri"] == f"/api/v2/routing/queues/{api['id']}"
    assert api["memberCount"] == len(org.queues[0].member_ids)
    assert ISO.fullmatch(api["dateCreated"])
    assert api["dateCreated"] < "2027-01-15"
    for media in ("call", "callback", "chat", "email", "message"):
        settings = api["mediaSettings"][media]
        assert settings["alertingTimeoutSeconds"] > 0
        assert set(settings["serviceLevel"]) == {"percentage", "durationMs"}
    assert set(api["acwSettings"]) == {"wrapupPrompt", "timeoutMs"}
    user = org.agents[0].to_api()
    assert user["state"] == "active"
    assert user["selfUri"] == f"/api/v2/users/{user['id']}"


def test_added_queue_receives_later_conversations() -> None:
    org = centre(queues=2, rate=10.0)
    org.advance(10.0)
    queue = org.add_queue(None, 10.0)
    assert queue in org.queues
    assert queue.member_ids
    assert queue.name not in {q.name for q in org.queues[:-1]}
    named = org.add_queue("Retention", 10.0)  # the next automatic name
    assert named.name == "Retention"
    assert org.add_queue(None, 10.0).name == "Technical Support"
    assert any(q["id"] == queue.id for q in org.org()["queues"])
    pubs = org.advance(40.0)
    mine = [p for p in pubs if p.topics[0] == f"v2.routing.queues.{queue.id}.conversations"]
    assert len(mine) > 20
    assert min(p.at for p in mine) >= 10.0
    members = set(queue.member_ids)
    agents = {
        p["userId"] for pub in mine for p in body(pub)["participants"] if p["purpose"] == "agent"
    }
    assert agents
    assert agents <= members


def test_added_queue_is_not_visible_before_its_time() -> None:
    # Queued to exist from t=20 while the simulation has only reached t=5:
    # nothing between 5 and 20 may be routed to it.
    org = centre(rate=10.0)
    org.advance(5.0)
    queue = org.add_queue("Future", 20.0)
    pubs = org.advance(40.0)
    mine = [p.at for p in pubs if p.topics[0] == f"v2.routing.queues.{queue.id}.conversations"]
    assert mine
    assert min(mine) >= 20.0


def test_set_rate_zero_stops_new_conversations() -> None:
    org = centre(rate=10.0)
    before = {p.conversation_id for p in org.advance(20.0)} - {None}
    org.set_rate(0.0, 20.0)
    assert org.active_conversation_ids()
    after = org.advance(300.0)
    assert {p.conversation_id for p in after} - {None} <= before
    assert any(is_snapshot(p) for p in after), "conversations under way still finish"
    assert org.active_conversation_ids() == []
    org.set_rate(5.0, 300.0)
    assert any(is_snapshot(p) for p in org.advance(310.0))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="rate"):
        centre(rate=-1.0)
    with pytest.raises(ValueError, match="rate"):
        centre().set_rate(float("nan"), 0.0)
