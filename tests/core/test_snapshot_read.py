"""The compiled read of a snapshot's bytes (``_speedups.read``) against the decode and the walk.

``read`` answers a body only where it is sure to give what the typed decode
and :func:`genesys_mux.core.snapshot._walk` give, and returns None for the
rest, which the caller then decodes. So every test here holds one thing:
wherever it answers, its facts are the pure-Python path's, value for value
and type for type. Others check that it does answer the bodies a platform
sends (the emulator's, re-serialised in any layout), so the speed is real,
and that it holds no memory afterwards.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from genesys_mux.core import snapshot
from genesys_mux.core.snapshot import ConversationFacts, conversation_facts
from genesys_mux.emulator.org import ContactCentre
from tests.core.test_snapshot import EPOCH, T1, topic_media
from tests.core.test_speedups import (
    _EDITS,
    ODD_TEXT,
    PARTICIPANT,
    _edited,
    memory_grown_by,
)

read = snapshot._native_read
pytestmark = pytest.mark.skipif(
    read is None,
    reason="the compiled helpers are not built (no C compiler at install?) "
    "or are turned off (GENESYS_MUX_NO_EXTENSIONS)",
)


def in_python(body: bytes, media: str | None) -> ConversationFacts | None:
    """The specification: the typed decode (or the tolerant one) and the Python walk."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot, "_native_read", None)
        patch.setattr(snapshot, "_native_walk", None)
        return conversation_facts(body, media)


def assert_read_as_specified(body: bytes, media: str | None = None) -> ConversationFacts | None:
    """What ``read`` says of ``body``: None, or exactly the specification's facts."""
    assert read is not None
    spec = in_python(body, media)
    facts = read(body, media)
    if facts is not None:
        assert facts == spec
        assert spec is not None
        # Equal is not enough where order or type could differ unseen.
        assert list(facts.states) == list(spec.states)
        for name, found in facts.states.items():
            assert type(found) is tuple, name
        for value, expected in zip(
            msgspec.structs.astuple(facts), msgspec.structs.astuple(spec), strict=True
        ):
            assert type(value) is type(expected)
    # Whichever path answered, the facts the pipeline gets are the same.
    assert conversation_facts(body, media) == spec
    return facts


def emulator_snapshots(seed: int, seconds: float) -> list[tuple[bytes, str | None]]:
    centre = ContactCentre(seed=seed, queues=4, agents=16, rate=5.0, epoch=EPOCH)
    return [
        (pub.body, topic_media(pub))
        for pub in centre.advance(seconds)
        if pub.conversation_id is not None and ".conversations" in pub.topics[0]
    ]


_BODIES = emulator_snapshots(seed=7, seconds=20.0)

# The layouts another serialiser could give the same snapshot.
LAYOUTS: dict[str, Callable[[object], str]] = {
    "compact": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    "spaced, escaped beyond ASCII": lambda v: json.dumps(v),
    "indented": lambda v: json.dumps(v, indent=2, ensure_ascii=False),
    "sorted keys, tabs": lambda v: json.dumps(v, indent="\t", sort_keys=True),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_emulator_snapshot_is_read_in_any_layout(layout: str) -> None:
    """The platform's bodies, as sent or re-serialised, never need the slow path."""
    bodies = emulator_snapshots(seed=11, seconds=40.0)
    assert len(bodies) > 1000
    dump = LAYOUTS[layout]
    beyond_ascii = 0
    for body, media in bodies:
        text = dump(json.loads(body)).encode()
        beyond_ascii += any(b >= 0x80 for b in text) or b"\\u" in text
        assert assert_read_as_specified(text, media) is not None
    # The names (beyond ASCII in the emulator's world) were skipped, not refused.
    assert beyond_ascii > 100


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.none() | PARTICIPANT, max_size=5),
    st.none() | st.sampled_from(["calls", "messages", "chats"]),
    st.sampled_from(["c1", "22c91b83-a417-40fe-84e4-a7fa9064dbd9"]) | ODD_TEXT,
    st.sampled_from(list(LAYOUTS)),
)
def test_snapshot_shaped_bodies_are_read_as_specified(
    participants: list[dict[str, Any] | None], media: str | None, conversation_id: str, layout: str
) -> None:
    """Every field present, null, mistyped or odd, in every layout."""
    assume(conversation_id)
    body = LAYOUTS[layout]({"id": conversation_id, "participants": participants}).encode()
    assert_read_as_specified(body, media)


@settings(max_examples=1_500, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), _EDITS)
def test_mangled_snapshots_are_read_as_specified(
    index: int, edits: list[tuple[int, str, bytes]]
) -> None:
    """A few bytes inserted, deleted or replaced anywhere: the same facts, or the same None."""
    bodies = _BODIES
    body, media = bodies[index % len(bodies)]
    assert_read_as_specified(_edited(body, edits), media)


def general(participant: dict[str, Any] | str, conversation_id: str = "c1") -> bytes:
    """A general-topic snapshot of one participant, with the participant's JSON spliced in."""
    text = participant if isinstance(participant, str) else json.dumps(participant)
    return ('{"id":"' + conversation_id + '","participants":[' + text + "]}").encode()


AGENT: dict[str, Any] = {
    "id": "p1",
    "purpose": "agent",
    "userId": "u1",
    "queueId": "q1",
    "connectedTime": T1,
    "attributes": {"b": "2", "a": "1"},
    "calls": [{"state": "connected", "held": False, "connectedTime": T1}],
}


def agent_with(**fields: Any) -> dict[str, Any]:
    return {**AGENT, **fields}


def call_with(**fields: Any) -> dict[str, Any]:
    return agent_with(calls=[{**AGENT["calls"][0], **fields}])


# Bodies the read answers, however unusual: each is the specification's.
ANSWERED = {
    "plain": general(AGENT),
    "whitespace everywhere": general(json.dumps(AGENT, indent=3)).replace(b",", b" ,\r\n\t"),
    "a timestamp without a fraction": general(call_with(connectedTime="2027-01-15T08:00:09Z")),
    "a fraction of one digit": general(call_with(connectedTime="2027-01-15T08:00:09.5Z")),
    "a fraction of six digits": general(call_with(connectedTime="2027-01-15T08:00:09.123456Z")),
    "before 1970": general(call_with(connectedTime="1969-12-31T23:59:59.5Z")),
    "the first instant": general(call_with(connectedTime="0001-01-01T00:00:00Z")),
    "the last instant": general(call_with(connectedTime="9999-12-31T23:59:59.999999Z")),
    "a leap day": general(call_with(connectedTime="2024-02-29T12:00:00Z")),
    # Past 2**53 microseconds from 1970 a double holds them only rounded.
    "after 2255, where the microseconds are no double": general(
        call_with(connectedTime="2300-01-01T00:00:00.000001Z")
    ),
    "the first instant past 2**53 microseconds": general(
        call_with(connectedTime="2255-06-05T23:47:34.740993Z")
    ),
    "before 1685": general(call_with(connectedTime="1600-06-05T23:47:34.740993Z")),
    "a hold time, in the digest as a datetime": general(
        call_with(held=True, startHoldTime="2027-01-15T08:00:02.25Z")
    ),
    "a callback's appointment": general(
        agent_with(
            calls=None,
            callbacks=[{"state": "scheduled", "callbackScheduledTime": "2027-01-16T09:30:00Z"}],
        )
    ),
    "a media participant": b'{"id":"c1","participants":[{"id":"p1","purpose":"customer",'
    b'"state":"connected","type":"sms","user":{"id":"u1"},"queue":{"id":"q1"},'
    b'"messages":[null,{"message":{"id":"m1"},"messageStatus":"read"}]}]}',
    "names beyond ASCII, and escaped": general(
        '{"name":"Jos\\u00e9 日本\\n\\"\\/\\\\ \\ud83d\\ude00 😀","id":"p1",'
        '"calls":[{"state":"alerting"}]}'
    ),
    "bytes that are not UTF-8 where nothing reads them": (
        b'{"id":"c1","participants":[{"name":"\xff\xfe","id":"p1","calls":[{"state":"alerting"}]}]}'
    ),
    "numbers of every form where nothing reads them": general(
        '{"n":[0,-0,1e400,-1.5E-7,12345678901234567890,0.0e+0],"id":"p1",'
        '"calls":[{"state":"alerting"}]}'
    ),
    "attributes beyond ASCII": general(
        json.dumps(agent_with(attributes={"lang": "français", "ü": "1"}), ensure_ascii=False)
    ),
    "attributes escaped": general(
        agent_with(attributes={"lang": "français", "quote": 'say "hi"\n', "😀": "\\"})
    ),
    "an attribute twice": general(json.dumps(AGENT).replace('"a": "1"', '"a": "1", "a": "3"')),
    "an attribute twice, escaped": general(
        json.dumps(AGENT).replace('"a": "1"', '"a": "1", "\\u0061": "\\u00e9"')
    ),
    "nulls and empties": general(
        agent_with(wrapup=None, attributes={}, user=None, calls=[None, {}], chats=[])
    ),
    "null participants": b'{"id":"c1","participants":[null,null]}',
    "no participants": b'{"id":"c1"}',
    "a deep value nothing reads": general(
        '{"x":' + "[" * 60 + "]" * 60 + ',"id":"p1","calls":[{"state":"alerting"}]}'
    ),
    "many participants": (
        '{"id":"c1","participants":['
        + ",".join(
            json.dumps(agent_with(id=f"p{i:04d}", userId=f"u{i}")) for i in range(400, 0, -1)
        )
        + "]}"
    ).encode(),
}


@pytest.mark.parametrize("name", list(ANSWERED))
def test_unusual_bodies_it_answers_are_read_as_specified(name: str) -> None:
    assert assert_read_as_specified(ANSWERED[name], "messages") is not None
    assert assert_read_as_specified(ANSWERED[name]) is not None


# Bodies it leaves to the decoder: what they get is the decoder's, and the
# read says None rather than guess.
LEFT = {
    "a timestamp with seven digits (the decoder rounds)": general(
        call_with(connectedTime="2027-01-15T08:00:09.1234565Z")
    ),
    "an offset of zero": general(call_with(connectedTime="2027-01-15T08:00:09+00:00")),
    "another offset": general(call_with(connectedTime="2027-01-15T09:00:09+01:00")),
    "lower case": general(call_with(connectedTime="2027-01-15t08:00:09z")),
    "a space for the T": general(call_with(connectedTime="2027-01-15 08:00:09Z")),
    "no zone": general(call_with(connectedTime="2027-01-15T08:00:09")),
    "no such day": general(call_with(connectedTime="2023-02-29T08:00:09Z")),
    "a leap second": general(call_with(connectedTime="2016-12-31T23:59:60Z")),
    "hour 24": general(call_with(connectedTime="2027-01-15T24:00:00Z")),
    "year 0": general(call_with(connectedTime="0000-01-01T00:00:00Z")),
    "an escaped id": general(json.dumps(AGENT).replace('"id": "p1"', '"id": "p\\u0031"')),
    "an escaped key": general(json.dumps(AGENT).replace('"userId"', '"user\\u0049d"')),
    "an id beyond ASCII": general(json.dumps(agent_with(userId="ü"), ensure_ascii=False)),
    "a field twice": general(
        json.dumps(AGENT).replace('"userId": "u1"', '"userId": "u1", "userId": "u2"')
    ),
    "a low surrogate first": general(
        '{"name":"\\ude00\\ud83d","id":"p1","calls":[{"state":"alerting"}]}'
    ),
    "a high surrogate alone": general(
        '{"name":"\\ud83d\\u0041","id":"p1","calls":[{"state":"alerting"}]}'
    ),
    "a lone surrogate in a name": general(
        '{"name":"\\ud800","id":"p1","calls":[{"state":"alerting"}]}'
    ),
    "a bad escape": general('{"name":"\\x","id":"p1"}'),
    "a control character": general('{"name":"a\x01b","id":"p1"}'),
    "a leading zero": general('{"n":01,"id":"p1"}'),
    "a bare point": general('{"n":1.,"id":"p1"}'),
    "too deep": general('{"x":' + "[" * 70 + "]" * 70 + ',"id":"p1"}'),
    "far too deep": general('{"x":' + "[" * 3000 + "]" * 3000 + ',"id":"p1"}'),
    "an attribute with a lone surrogate": general(agent_with(attributes={"a": "\ud800"})),
    "an attribute that is not UTF-8": (
        b'{"id":"c1","participants":[{"id":"p1","attributes":{"a":"\\u00e9\xff"},'
        b'"calls":[{"state":"alerting"}]}]}'
    ),
    "a mistyped flag": general(call_with(held="yes")),
    "a mistyped attribute": general(agent_with(attributes={"a": 1})),
    "attributes as a list": general(agent_with(attributes=[])),
    "a participant that is text": general('"p1"'),
    "participants as an object": b'{"id":"c1","participants":{}}',
    "an empty id": b'{"id":"","participants":[]}',
    "no id": b'{"participants":[]}',
    "a numeric id": b'{"id":3}',
    "trailing bytes": general(AGENT) + b"x",
    "cut short": general(AGENT)[:-1],
    "a byte-order mark": b"\xef\xbb\xbf" + general(AGENT),
    "a list": b"[]",
    "text": b'"c1"',
    "nothing": b"",
}


@pytest.mark.parametrize("name", list(LEFT))
def test_bodies_it_is_not_sure_of_are_left_to_the_decoder(name: str) -> None:
    assert read is not None
    assert read(LEFT[name], None) is None
    assert_read_as_specified(LEFT[name])


@settings(max_examples=2_000, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(min_value=0, max_value=6),
)
def test_every_instant_gives_the_specification_s_version(instant: datetime, digits: int) -> None:
    """The version is the microseconds divided once, as ``datetime.timestamp()`` rounds it."""
    # (strftime writes the years before 1000 with fewer than four digits.)
    text = f"{instant.year:04d}" + instant.strftime("-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{instant.microsecond:06d}"[:digits]
    facts = assert_read_as_specified(general(call_with(connectedTime=text + "Z")))
    assert facts is not None


# Bodies as deep as the read goes (MAX_DEPTH 64), the depth in different places.
DEEP = [
    general('{"id":"p","x":' + "[" * 60 + "]" * 60 + ',"calls":[{"state":"connected"}]}'),
    general('{"id":"p","calls":[{"state":"connected","x":' + "{}" * 1 + "}]}"),
    general('{"id":"p","calls":[{"state":"connected","x":' + '{"a":' * 58 + "1" + "}" * 58 + "}]}"),
]


@pytest.mark.parametrize("body", DEEP, ids=["in-a-participant", "shallow", "in-a-communication"])
def test_near_the_recursion_limit_the_read_says_what_the_decoder_says(body: bytes) -> None:
    """The decoder fails on a body deeper than the interpreter has room left for: no facts.

    The read counts its levels against the same limit, so it gives up no
    later than the decoder fails, at every depth the caller may stand at
    (both are reached from the same frame, as in the pipeline).
    """
    assert read is not None
    answers = set()

    def facts(with_read: bool) -> ConversationFacts | None:
        snapshot._native_read = read if with_read else None  # type: ignore[misc]
        try:
            return conversation_facts(body, None)
        finally:
            snapshot._native_read = read  # type: ignore[misc]

    def at(depth: int) -> tuple[ConversationFacts | None, ConversationFacts | None]:
        if depth > 0:
            return at(depth - 1)
        return facts(True), facts(False)

    here = len(inspect.stack(0))
    for room in range(0, 100):
        try:
            compiled, spec = at(sys.getrecursionlimit() - here - room)
        except RecursionError:
            continue
        assert compiled == spec, room
        answers.add(spec is None)
    assert answers == {True, False} or body == DEEP[1], answers


def test_only_exact_bytes_and_media_names_are_read() -> None:
    assert read is not None
    body = ANSWERED["plain"]

    class Body(bytes):
        pass

    for odd, media in (
        (bytearray(body), None),
        (memoryview(body), None),
        (Body(body), None),
        (body, 3),
    ):
        assert read(odd, media) is None  # type: ignore[arg-type]
    assert read(body, None) == in_python(body, None)


def test_bind_reader_refuses_structs_it_cannot_read() -> None:
    from genesys_mux.core import _speedups

    class Conversation(msgspec.Struct):
        id: str
        participants: list[snapshot._Participant | None] | None = None
        extra: str | None = None

    with pytest.raises(TypeError, match="has not the 2 fields"):
        _speedups.bind_reader(Conversation, ConversationFacts, snapshot._decode_text)

    class Renamed(msgspec.Struct):
        ident: str
        participants: list[snapshot._Participant | None] | None = None

    with pytest.raises(TypeError, match="not a field the reader can read"):
        _speedups.bind_reader(Renamed, ConversationFacts, snapshot._decode_text)
    # The module's binding still holds.
    assert assert_read_as_specified(ANSWERED["plain"]) is not None


def test_without_the_compiled_walk_there_is_no_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "_native_walk", None)
    assert snapshot._load_native_read() is None


def test_reading_holds_no_memory_afterwards() -> None:
    """A reference or a block leaked per read (answered, refused or failed) shows here."""
    assert read is not None
    bodies = [(body, media) for body, media in _BODIES[:150]]
    bodies += [(body[: len(body) // 2], media) for body, media in _BODIES[:30]]
    bodies += [(ANSWERED["many participants"], None), (LEFT["too deep"], None)]

    def read_all() -> None:
        for body, media in bodies:
            read(body, media)

    # About 9,000 reads: one leaked object each would be several hundred KB.
    assert memory_grown_by(read_all, 50) < 20_000
