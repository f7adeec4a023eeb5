"""The compiled helpers against their specifications.

The snapshot walk against ``snapshot._walk``, its SHA-256 (with the CPU's
SHA instructions) against ``hashlib``'s, and the notification split against
``frames._split_in_python``.

The extension is optional; where it was not built these tests skip and say
so. Each comparison is strict: the same values of the same types, the same
dict order, and the same facts and state digest.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from genesys_mux.core import frames, snapshot
from genesys_mux.core.frames import Notification
from genesys_mux.core.snapshot import conversation_facts
from genesys_mux.emulator.org import ContactCentre
from genesys_mux.emulator.sockets import envelope, system_frame
from tests.core.test_frames import (
    _BODY_TEXT,
    _RAW_TEXT,
    BODY,
    CORRELATION,
    TOPIC,
    platform_frame,
)
from tests.core.test_snapshot import EPOCH, LISTS, T0, T1, T2, T3, topic_media

native = snapshot._native_walk
pytestmark = pytest.mark.skipif(
    native is None or frames._native_split is None,
    reason="the compiled helpers are not built (no C compiler at install?) "
    "or are turned off (GENESYS_MUX_NO_EXTENSIONS)",
)


def decoded(body: bytes) -> snapshot._Conversation:
    """The structs the facts are computed from, by whichever path reads ``body``."""
    try:
        return snapshot._CONVERSATION_DECODER.decode(body)
    except msgspec.ValidationError:
        tolerant = snapshot._tolerant_conversation(body)
        assert tolerant is not None
        return tolerant


def assert_same_walk(conversation: snapshot._Conversation, media: str | None) -> None:
    assert native is not None
    participants = conversation.participants or []
    compiled = native(conversation.id, participants, media)
    spec = snapshot._walk(conversation.id, participants, media)
    assert compiled is not None
    assert compiled == spec
    # Equal is not enough where order or type could differ unseen: the
    # states' media order, a list for a tuple, a set for a frozenset.
    assert list(compiled[1]) == list(spec[1])
    assert [type(v) for v in compiled] == [type(v) for v in spec]
    for found in compiled[1].values():
        assert type(found) is tuple


def memory_grown_by(run: Callable[[], None], times: int) -> int:
    """Bytes still allocated after ``run`` ran ``times`` more times (after a warm-up run)."""
    run()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(times):
            run()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def facts_in_python(
    monkeypatch: pytest.MonkeyPatch, body: bytes, media: str | None
) -> snapshot.ConversationFacts | None:
    with monkeypatch.context() as patch:
        patch.setattr(snapshot, "_native_read", None)
        patch.setattr(snapshot, "_native_walk", None)
        return conversation_facts(body, media)


def test_every_emulator_snapshot_walks_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    centre = ContactCentre(seed=11, queues=6, agents=30, rate=6.0, epoch=EPOCH)
    seen = 0
    for pub in centre.advance(60.0):
        if pub.conversation_id is None or ".conversations" not in pub.topics[0]:
            continue
        media = topic_media(pub)
        assert_same_walk(decoded(pub.body), media)
        assert conversation_facts(pub.body, media) == facts_in_python(monkeypatch, pub.body, media)
        seen += 1
    assert seen > 2000


# Snapshot-shaped bodies: the fields the walk reads, in every combination of
# present, null and (now and then) mistyped, so that both the typed decode
# and the tolerant path feed the walk.
MISTYPED = st.sampled_from([3, [], {}, True])
# Text the compiled walk writes into the digest itself (plain ASCII) and text
# it hands to the encoder (quotes, backslashes, control characters, DEL,
# beyond ASCII), so both make the same bytes. (A lone surrogate does not
# decode: such a body has no facts either way.)
ODD_TEXT = st.sampled_from(
    ['a"b', "a\\b", "tab\there", "\x00", "\x7f", "é", "\u2028", "😀", "/<>&'"]
) | st.text(st.characters(exclude_categories=["Cs"]), max_size=4)
TEXT = (
    st.none()
    | st.sampled_from(["connected", "disconnected", "alerting", "", "sms", "x"])
    | ODD_TEXT
)
PURPOSE = st.none() | st.sampled_from(["acd", "agent", "user", "customer", "ivr", ""])
ID = st.none() | st.sampled_from(["", "p1", "p2", "p3", "u1", "q1"]) | ODD_TEXT
STAMP = st.none() | st.sampled_from(
    [T0, T1, T2, T3, "2027-01-15T09:00:01.000+01:00", "2027-01-15T08:00:01Z", "garbage"]
)
FLAG = st.none() | st.booleans()


def maybe_mistyped(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return values | MISTYPED


def optional(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


REF = st.none() | optional({"id": ID})
WRAPUP = st.none() | optional({"code": TEXT, "endTime": STAMP})
DETAIL = optional({"messageId": ID, "message": REF, "messageStatus": TEXT})
STATE = {
    "state": TEXT,
    "held": FLAG,
    "startHoldTime": STAMP,
    "disconnectType": TEXT,
    "type": TEXT,
    "muted": FLAG,
    "recording": FLAG,
    "recordingState": TEXT,
}
COMMUNICATION = optional(
    {
        **STATE,
        "messages": st.none() | st.lists(st.none() | DETAIL, max_size=3),
        "messageId": ID,
        "message": REF,
        "messageStatus": TEXT,
        "connectedTime": maybe_mistyped(STAMP),
        "disconnectedTime": STAMP,
        "afterCallWork": st.none() | optional({"startTime": STAMP, "endTime": STAMP}),
        "wrapup": WRAPUP,
        "callbackScheduledTime": maybe_mistyped(STAMP),
    }
)
PARTICIPANT = optional(
    {
        "id": ID,
        "purpose": maybe_mistyped(PURPOSE),
        "userId": ID,
        "queueId": ID,
        "user": REF,
        "queue": REF,
        **STATE,
        "attributes": st.none()
        | st.dictionaries(
            st.sampled_from(["b", "a", "c"]) | ODD_TEXT, st.sampled_from(["1", "2"]) | ODD_TEXT
        ),
        "monitoredParticipantId": ID,
        "connectedTime": STAMP,
        "endTime": STAMP,
        "startAcwTime": STAMP,
        "endAcwTime": STAMP,
        "wrapup": WRAPUP,
        "callbackScheduledTime": STAMP,
        **{name: st.none() | st.lists(st.none() | COMMUNICATION, max_size=3) for name in LISTS},
    }
)
MEDIA = st.none() | st.sampled_from(["calls", "messages", "chats"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.none() | PARTICIPANT, max_size=5), MEDIA, st.sampled_from(["c1"]) | ODD_TEXT)
def test_snapshot_shaped_bodies_walk_the_same(
    participants: list[dict[str, Any] | None], media: str | None, conversation_id: str
) -> None:
    assume(conversation_id)
    body = json.dumps({"id": conversation_id, "participants": participants}).encode()
    assert_same_walk(decoded(body), media)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot, "_native_read", None)
        compiled = conversation_facts(body, media)
        patch.setattr(snapshot, "_native_walk", None)
        assert conversation_facts(body, media) == compiled


def test_an_unexpected_shape_is_left_to_the_python_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native is not None
    participant = snapshot._Participant(id="p1", purpose="agent", calls=[snapshot._Communication()])
    # Not the bound types, or a list that is not a list: None, never a guess.
    assert native("c1", [{"id": "p1"}], None) is None  # type: ignore[list-item]
    assert native("c1", (participant,), None) is None  # type: ignore[arg-type]
    odd = snapshot._Participant(id="p1", calls=(snapshot._Communication(state="connected"),))  # type: ignore[arg-type]
    assert native("c1", [odd], None) is None
    assert native("c1", [participant], 3) is None  # type: ignore[arg-type]
    # conversation_facts then walks in Python and says the same.
    conversation = snapshot._Conversation(id="c1", participants=[odd])
    facts = snapshot._facts(conversation, None)
    monkeypatch.setattr(snapshot, "_native_walk", None)
    assert snapshot._facts(conversation, None) == facts
    assert facts.states == {"calls": ("connected",)}


def test_a_value_the_encoder_refuses_fails_both_walks_alike() -> None:
    """Only a struct built by hand can hold one; the error is the encoder's, nothing leaks."""
    assert native is not None
    weird = snapshot._Participant(
        id="p1",
        calls=[snapshot._Communication(state="connected", held=object())],  # type: ignore[arg-type]
    )
    with pytest.raises(TypeError) as compiled:
        native("c1", [weird], None)
    with pytest.raises(TypeError) as spec:
        snapshot._walk("c1", [weird], None)
    assert str(compiled.value) == str(spec.value)

    def fail_many() -> None:
        for _ in range(200):
            with contextlib.suppress(TypeError):
                native("c1", [weird], None)

    assert memory_grown_by(fail_many, 20) < 20_000


def test_bind_refuses_types_it_cannot_read() -> None:
    from genesys_mux.core import _speedups

    class NotAStruct:
        id = None

    with pytest.raises(TypeError, match="not a slot"):
        _speedups.bind(
            NotAStruct,
            snapshot._Communication,
            snapshot._MessageDetail,
            snapshot._Ref,
            snapshot._Wrapup,
            snapshot._AfterCallWork,
            ("calls",) * 9,
        )
    # The failed bind left nothing half-bound: bind again as the module did.
    assert snapshot._load_native_walk() is native


# The state digest's SHA-256, computed with the CPU's SHA instructions where
# it has them: lengths on both sides of every boundary of the padding (a
# block is 64 bytes, and the length takes the last 8 of the last one).
SHA_LENGTHS = sorted(
    {n + d for n in (0, 55, 56, 64, 119, 120, 128, 1_000, 4_096) for d in (-1, 0, 1) if n + d >= 0}
)


def own_sha256() -> Callable[[bytes], bytes | None]:
    from genesys_mux.core import _speedups

    if _speedups.sha256(b"") is None:
        pytest.skip("this CPU has no SHA instructions: the walk hashes with hashlib")
    return _speedups.sha256


@pytest.mark.parametrize("size", SHA_LENGTHS)
def test_the_walk_s_sha256_is_hashlib_s_at_every_padding_boundary(size: int) -> None:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert own_sha256()(data) == hashlib.sha256(data).digest()


@settings(max_examples=300)
@given(st.binary(max_size=3_000))
def test_the_walk_s_sha256_is_hashlib_s_on_any_bytes(data: bytes) -> None:
    assert own_sha256()(data) == hashlib.sha256(data).digest()


@pytest.mark.parametrize("instructions", [True, False], ids=["sha-instructions", "bound-hash"])
def test_both_hashes_give_the_python_walk_s_digests(
    monkeypatch: pytest.MonkeyPatch, instructions: bool
) -> None:
    """Where the CPU has no SHA instructions the walk calls the bound hash: the same digests."""
    from genesys_mux.core import _speedups

    if instructions:
        own_sha256()
    centre = ContactCentre(seed=5, queues=2, agents=8, rate=4.0, epoch=EPOCH)
    bodies = [
        (pub.body, topic_media(pub))
        for pub in centre.advance(30.0)
        if pub.conversation_id is not None and ".conversations" in pub.topics[0]
    ]
    assert len(bodies) > 100
    previous = _speedups.use_sha_instructions(instructions)
    try:
        for body, media in bodies:
            assert conversation_facts(body, media) == facts_in_python(monkeypatch, body, media)
    finally:
        _speedups.use_sha_instructions(previous)


@pytest.mark.parametrize(("value", "disabled"), [("1", True), ("0", False), ("", False)])
def test_the_environment_can_turn_the_compiled_walk_off(
    monkeypatch: pytest.MonkeyPatch, value: str, disabled: bool
) -> None:
    monkeypatch.setenv("GENESYS_MUX_NO_EXTENSIONS", value)
    assert (snapshot._load_native_walk() is None) == disabled
    assert (frames._load_native_split() is None) == disabled


def test_walking_holds_no_memory_afterwards() -> None:
    """A reference leaked per walk (a tuple, a list) would show as growth here."""
    assert native is not None
    centre = ContactCentre(seed=3, queues=2, agents=8, rate=4.0, epoch=EPOCH)
    bodies = [
        (decoded(p.body), topic_media(p))
        for p in centre.advance(30.0)
        if p.conversation_id is not None and ".conversations" in p.topics[0]
    ][:200]
    assert bodies

    def walk_all() -> None:
        for conversation, media in bodies:
            native(conversation.id, conversation.participants or [], media)

    # 10,000 walks: one leaked object each would be several hundred KB.
    assert memory_grown_by(walk_all, 50) < 20_000


# --------------------------------------------------------------------------
# The notification split
# --------------------------------------------------------------------------

native_split = frames._native_split


def assert_same_split(data: object) -> Notification | None:
    """The compiled split of ``data`` (and of its text) is the specification's."""
    assert native_split is not None
    spec = frames._split_in_python(data)  # type: ignore[arg-type]
    compiled = native_split(data)  # type: ignore[arg-type]
    assert compiled == spec
    assert type(compiled) is type(spec)
    if isinstance(data, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            text = data.decode()
            assert native_split(text) == frames._split_in_python(text) == compiled
    return compiled


def test_every_emulator_frame_splits_the_same() -> None:
    centre = ContactCentre(seed=5, queues=3, agents=10, rate=4.0, epoch=EPOCH)
    published = centre.advance(60.0)
    assert len(published) > 100
    for index, pub in enumerate(published):
        data = envelope(pub.topics[0], pub.body, f"corr-{index}")
        frame = assert_same_split(data)
        assert frame == Notification(pub.topics[0], "2", pub.body, f"corr-{index}")
    assert (
        assert_same_split(system_frame("v2.system.socket_closing", "ch-1", "closing", "going away"))
        is None
    )


@pytest.mark.parametrize(
    "data",
    [
        platform_frame(),
        platform_frame(body='{"name":"José 日本"}'.encode()),
        platform_frame(version=""),
        platform_frame(correlation_id=""),
        platform_frame().replace(b'"eventBody":', b'"eventBody": '),
        platform_frame().replace(b'"eventBody":', b'"eventBody":\t'),
        platform_frame().replace(b',"metadata"', b'\n,"metadata"'),
        platform_frame().replace(b',"metadata"', b'\x00,"metadata"'),
        platform_frame().replace(b'"eventBody":', b'"eventBody":\x00'),
        platform_frame(body=b""),
        platform_frame(body=b'{"id":"\xff"}'),
        platform_frame(body=b'{"id":"\xed\xa0\x80"}'),  # a surrogate's UTF-8
        platform_frame(topic="channel.metadata"),
        platform_frame(topic="channel.metadatas"),
        platform_frame(topic="v2.system."),
        platform_frame(topic="v2.system"),
        platform_frame(topic="v2.subscription.updated.x"),
        platform_frame(topic="~"),
        platform_frame(correlation_id="a\x7fb"),
        # A tail that ends inside the end, and tails in the body.
        b'{"topicName":"t","version":"2","eventBody":1,"metadata":{"CorrelationId":"}}',
        b'{"topicName":"t","version":"2","eventBody":,"metadata":{"CorrelationId":"x"}}',
        platform_frame(body=b'{"a":",\\"metadata\\":{\\"CorrelationId\\":\\""}'),
        platform_frame(body=b',"metadata":{"CorrelationId":"x"}}'),
        b'{"topicName":"t","version":"2","eventBody":',
        b'{"topicName":"t","version":"2"',
        b'{"topicName":"',
        b'"}}',
        b"",
    ],
)
def test_edge_frames_split_the_same(data: bytes) -> None:
    assert_same_split(data)


def test_other_types_split_the_same() -> None:
    assert native_split is not None
    data = platform_frame()
    for other in (bytearray(data), memoryview(data), None, 3, [data]):
        assert native_split(other) is frames._split_in_python(other) is None  # type: ignore[arg-type]

    class Frame(bytes):
        pass

    class Text(str):
        pass

    assert assert_same_split(Frame(data)) == Notification(TOPIC, "2", BODY, CORRELATION)
    assert assert_same_split(Text(data.decode())) is not None
    # A str that has no UTF-8 (a lone surrogate) is not split.
    assert native_split(data.decode().replace("c-1", "\ud800")) is None


_EDITS = st.lists(
    st.tuples(
        st.integers(min_value=0),
        st.sampled_from(["insert", "delete", "replace"]),
        st.binary(min_size=1, max_size=3),
    ),
    max_size=3,
)


def _edited(data: bytes, edits: list[tuple[int, str, bytes]]) -> bytes:
    for at, kind, chunk in edits:
        at %= len(data) + 1
        if kind == "insert":
            data = data[:at] + chunk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(chunk) :]
        else:
            data = data[:at] + chunk + data[at + len(chunk) :]
    return data


@settings(max_examples=1_000)
@given(
    topic=_RAW_TEXT | st.just(TOPIC) | st.sampled_from(frames._NOT_NOTIFICATIONS),
    version=_RAW_TEXT | st.just("2"),
    body=_BODY_TEXT,
    correlation_id=_RAW_TEXT | st.just(CORRELATION),
    edits=_EDITS,
)
def test_frames_near_the_platform_layout_split_the_same(
    topic: str, version: str, body: bytes, correlation_id: str, edits: list[tuple[int, str, bytes]]
) -> None:
    """Any parts, then a few bytes inserted, deleted or replaced anywhere."""
    assert_same_split(_edited(platform_frame(topic, body, version, correlation_id), edits))


def assert_same_utf8(data: bytes) -> None:
    """The compiled UTF-8 check of ``data`` is the specification's."""
    assert frames._native_utf8 is not None
    assert frames._native_utf8(data) is frames._is_utf8_in_python(data)


def test_the_utf8_check_takes_bytes_only() -> None:
    assert frames._native_utf8 is not None
    assert frames._native_utf8(b"") is True
    for other in ("text", bytearray(b"x"), memoryview(b"x"), None):
        with pytest.raises(TypeError, match="expects bytes"):
            frames._native_utf8(other)  # type: ignore[arg-type]


# Each byte sequence Python's strict UTF-8 decoder refuses, and the
# well-formed ones at the edges of its ranges (Unicode's table of
# well-formed byte sequences), inside a body's string.
_UTF8_EDGES = [
    b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
    b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf3\xbf\xbf\xbf",
    b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xc2\x7f", b"\xc2\xc0",
    b"\xe0\x9f\xbf", b"\xe0\xa0", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xe1\x80\x7f",
    b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf0\x90\x80",
    b"\xf1\x80\x80\xc0", b"\xfe", b"\xff",
]  # fmt: skip


@pytest.mark.parametrize("sequence", _UTF8_EDGES, ids=lambda b: b.hex())
@pytest.mark.parametrize("at", [0, 1, 7, 8, 31, 32, 33, 60, 64])
def test_utf8_at_its_edges_is_checked_as_python_checks_it(sequence: bytes, at: int) -> None:
    """Valid or not, before, inside and after the validator's 8- and 32-byte blocks."""
    for tail in (b"", b"x", b"x" * 40):
        body = b'{"name":"' + b"a" * at + sequence + tail + b'"}'
        assert_same_utf8(body)
        frame = assert_same_split(platform_frame(body=body))
        valid = True
        try:
            sequence.decode("utf-8")
        except UnicodeDecodeError:
            valid = False
        assert (frame is not None) is valid, (sequence, at, tail)
    # At the very end of the frame, where a sequence may be cut short.
    assert_same_split(platform_frame() + sequence)


@settings(max_examples=2_000)
@given(
    st.lists(
        st.text(st.characters(codec="utf-8"), max_size=20).map(str.encode)
        | st.binary(max_size=4)
        | st.sampled_from(_UTF8_EDGES),
        max_size=12,
    )
)
def test_bodies_of_any_bytes_are_checked_as_python_checks_them(parts: list[bytes]) -> None:
    """Text in any script, with stray bytes between: taken exactly when it is UTF-8."""
    body = b'{"name":"' + b"".join(parts) + b'"}'
    assert_same_utf8(body)
    assert_same_utf8(b"".join(parts))
    frame = assert_same_split(platform_frame(body=body))
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        assert frame is None
    else:
        if b'"' not in b"".join(parts) and b"," not in b"".join(parts):
            assert frame is not None


def test_bind_split_refuses_what_it_cannot_use() -> None:
    from genesys_mux.core import _speedups

    for excluded in (["v2.system."], ("v2.system.", 3), ("v2.systém.",)):
        with pytest.raises(TypeError, match="tuple of ASCII str"):
            _speedups.bind_split(Notification, excluded)  # type: ignore[arg-type]
    # The module's binding still holds.
    assert assert_same_split(platform_frame(topic="v2.system.x")) is None
    assert assert_same_split(platform_frame()) is not None


def test_splitting_holds_no_memory_afterwards() -> None:
    assert native_split is not None
    frames_ = [platform_frame(correlation_id=f"c-{i}") for i in range(200)]
    texts = [data.decode() for data in frames_]

    def split_all() -> None:
        for data, text in zip(frames_, texts, strict=True):
            native_split(data)
            native_split(text)
            native_split(data[:-1])

    # 15,000 splits: one leaked object each would be several hundred KB.
    assert memory_grown_by(split_all, 25) < 20_000
