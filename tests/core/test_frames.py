"""Tests for genesys_mux.core.frames: inbound decoding and outbound encoding."""

from __future__ import annotations

import contextlib
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.core.frames import (
    PING,
    ChannelFailure,
    Frame,
    Heartbeat,
    NoLongerSubscribed,
    Notification,
    Pong,
    SocketClosing,
    SubscriptionAck,
    SubscriptionUpdated,
    SystemFrame,
    SystemMessage,
    TokenRevoked,
    UnknownFrame,
    decode_frame,
    encode_ping,
    encode_subscribe,
    encode_unsubscribe,
    join_notification,
    split_notification,
)
from genesys_mux.errors import ConfigError, FrameError

FRAME_TYPES: tuple[type, ...] = typing.get_args(Frame)

QUEUE_ID = "4c2bb8ef-5f0a-4a8c-9b3e-0c1d2e3f4a5b"
CORRELATION = "9f1c3a52-8a0e-4b1f-9d0d-2f6b1c7e8a90"


# --------------------------------------------------------------------------
# Notifications
# --------------------------------------------------------------------------

NOTIFICATION = (
    b'{"topicName": "v2.routing.queues.' + QUEUE_ID.encode() + b'.conversations",'
    b' "version": "2",'
    b' "eventBody": {"id": "c-1", "participants": [{"purpose": "customer",'
    b' "calls": [{"state": "connected", "connectedTime": "2024-05-01T10:00:00.000Z"}]}],'
    b' "recordingState": "none"},'
    b' "metadata": {"CorrelationId": "' + CORRELATION.encode() + b'"}}'
)


def test_notification_fields() -> None:
    frame = decode_frame(NOTIFICATION)
    assert isinstance(frame, Notification)
    assert frame.topic == f"v2.routing.queues.{QUEUE_ID}.conversations"
    assert frame.version == "2"
    assert frame.correlation_id == CORRELATION
    assert msgspec.json.decode(frame.body) == {
        "id": "c-1",
        "participants": [
            {
                "purpose": "customer",
                "calls": [{"state": "connected", "connectedTime": "2024-05-01T10:00:00.000Z"}],
            }
        ],
        "recordingState": "none",
    }


def test_notification_body_is_the_exact_event_body_bytes() -> None:
    body = b'{ "b" : [1, 2 ,3],\n\t"a":"caf\xc3\xa9 \\u00e9",  "n": null }'
    data = b'{"topicName":"v2.users.U1.presence","version":"2","eventBody":' + body + b"}"
    frame = decode_frame(data)
    assert isinstance(frame, Notification)
    assert frame.body == body
    assert isinstance(frame.body, bytes)


def test_notification_from_str_input() -> None:
    frame = decode_frame(NOTIFICATION.decode())
    assert frame == decode_frame(NOTIFICATION)


def test_notification_from_bytearray_and_memoryview() -> None:
    assert decode_frame(bytearray(NOTIFICATION)) == decode_frame(NOTIFICATION)  # type: ignore[arg-type]
    assert decode_frame(memoryview(NOTIFICATION)) == decode_frame(NOTIFICATION)  # type: ignore[arg-type]


def test_notification_with_non_ascii_str_body() -> None:
    data = '{"topicName":"v2.users.U1.presence","eventBody":{"message":"Zurück 🙂"}}'
    frame = decode_frame(data)
    assert isinstance(frame, Notification)
    assert msgspec.json.decode(frame.body) == {"message": "Zurück 🙂"}
    assert frame.version is None
    assert frame.correlation_id is None


@pytest.mark.parametrize(
    "body",
    [b"null", b"[]", b"42", b'"text"', b"1e400", b"{}"],
)
def test_notification_body_of_any_json_type(body: bytes) -> None:
    frame = decode_frame(b'{"topicName":"v2.users.U.presence","eventBody":' + body + b"}")
    assert isinstance(frame, Notification)
    assert frame.body == body


def test_notification_metadata_extra_fields_ignored() -> None:
    data = (
        b'{"topicName":"v2.users.U.presence","eventBody":{},'
        b'"metadata":{"CorrelationId":"c","Other":[1]},"extra":{"x":1}}'
    )
    frame = decode_frame(data)
    assert frame == Notification("v2.users.U.presence", None, b"{}", "c")


def test_notification_without_event_body_is_unknown() -> None:
    data = b'{"topicName":"v2.users.U.presence","version":"2"}'
    assert decode_frame(data) == UnknownFrame(data)


def test_notification_frames_are_frozen() -> None:
    frame = decode_frame(NOTIFICATION)
    with pytest.raises(AttributeError):
        frame.topic = "x"  # type: ignore[misc,union-attr]


# --------------------------------------------------------------------------
# channel.metadata
# --------------------------------------------------------------------------


def test_heartbeat() -> None:
    data = b'{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}'
    assert decode_frame(data) == Heartbeat()


def test_pong() -> None:
    data = '{"topicName": "channel.metadata", "eventBody": {"message": "pong"}}'
    assert decode_frame(data) == Pong()


@pytest.mark.parametrize(
    "data",
    [
        b'{"topicName":"channel.metadata","eventBody":{"message":"something new"}}',
        b'{"topicName":"channel.metadata","eventBody":{"message":5}}',
        b'{"topicName":"channel.metadata","eventBody":"pong"}',
        b'{"topicName":"channel.metadata","eventBody":{}}',
        b'{"topicName":"channel.metadata"}',
    ],
)
def test_other_channel_metadata_is_unknown(data: bytes) -> None:
    assert decode_frame(data) == UnknownFrame(data)


# --------------------------------------------------------------------------
# System topics
# --------------------------------------------------------------------------


def _system(topic: str, body: dict[str, Any] | None = None) -> bytes:
    frame: dict[str, Any] = {"topicName": topic}
    if body is not None:
        frame["eventBody"] = body
    return msgspec.json.encode(frame)


def test_socket_closing() -> None:
    frame = decode_frame(_system("v2.system.socket_closing", {"message": "Socket closing soon"}))
    assert isinstance(frame, SocketClosing)
    assert frame.topic == "v2.system.socket_closing"
    assert frame.message == "Socket closing soon"
    assert frame.channel_id is None
    assert frame.reason is None


def test_socket_closing_without_body() -> None:
    frame = decode_frame(_system("v2.system.socket_closing"))
    assert frame == SocketClosing(topic="v2.system.socket_closing")
    assert isinstance(frame, SocketClosing)
    assert frame.body == b""


def test_no_longer_subscribed() -> None:
    body = {
        "channelId": "streaming-0-abcdefghijklmnopqrstuvwxyz",
        "systemTopicType": "no_longer_subscribed",
        "reason": "another_channel_subscribed",
        "message": "Subscriptions moved to another channel",
        "data": {"topics": ["v2.users.U.presence"]},
    }
    data = _system("v2.system.no_longer_subscribed.streaming-0-abcdefghijklmnopqrstuvwxyz", body)
    frame = decode_frame(data)
    assert isinstance(frame, NoLongerSubscribed)
    assert frame.channel_id == "streaming-0-abcdefghijklmnopqrstuvwxyz"
    assert frame.reason == "another_channel_subscribed"
    assert frame.message == "Subscriptions moved to another channel"
    assert msgspec.json.decode(frame.body) == body


def test_token_revoked() -> None:
    data = _system(
        "v2.system.token_revoked.streaming-0-x",
        {"channelId": "streaming-0-x", "reason": "user_tokens_revoked"},
    )
    frame = decode_frame(data)
    assert isinstance(frame, TokenRevoked)
    assert frame.reason == "user_tokens_revoked"
    assert frame.channel_id == "streaming-0-x"


def test_subscription_updated() -> None:
    frame = decode_frame(_system("v2.subscription.updated", {"channelId": "c"}))
    assert isinstance(frame, SubscriptionUpdated)
    assert frame.channel_id == "c"


@pytest.mark.parametrize(
    "topic",
    [
        "v2.system.maintenance",
        "v2.system.token_revoked_v2",  # not the token_revoked family: no separating dot
        "v2.system.no_longer_subscribedx",
    ],
)
def test_other_system_topics(topic: str) -> None:
    frame = decode_frame(_system(topic, {"message": "m"}))
    assert type(frame) is SystemMessage
    assert frame.topic == topic
    assert frame.message == "m"


def test_system_frames_share_a_base() -> None:
    for cls in (
        SocketClosing,
        NoLongerSubscribed,
        TokenRevoked,
        SubscriptionUpdated,
        SystemMessage,
    ):
        assert issubclass(cls, SystemFrame)
    closing: object = SocketClosing(topic="t")
    assert closing != SystemMessage(topic="t")


@pytest.mark.parametrize(
    "body",
    [
        {"channelId": 5, "reason": ["x"], "message": {"a": 1}},
        {"channelId": None, "reason": None},
    ],
)
def test_system_fields_of_wrong_type_read_as_none(body: dict[str, Any]) -> None:
    frame = decode_frame(_system("v2.system.socket_closing", body))
    assert isinstance(frame, SocketClosing)
    assert (frame.channel_id, frame.reason, frame.message) == (None, None, None)


def test_system_mixed_good_and_bad_fields() -> None:
    frame = decode_frame(
        _system("v2.system.token_revoked.c", {"channelId": "c", "reason": 7, "message": "m"})
    )
    assert isinstance(frame, TokenRevoked)
    assert (frame.channel_id, frame.reason, frame.message) == ("c", None, "m")


@pytest.mark.parametrize("body", [b'"closing"', b"[1,2]", b"null", b"3"])
def test_system_body_not_an_object_keeps_the_type(body: bytes) -> None:
    frame = decode_frame(b'{"topicName":"v2.system.socket_closing","eventBody":' + body + b"}")
    assert isinstance(frame, SocketClosing)
    assert frame.body == body
    assert frame.message is None


# --------------------------------------------------------------------------
# Subscription acks and channel failures
# --------------------------------------------------------------------------


def test_subscribe_ack_success() -> None:
    frame = decode_frame(b'{"correlationId":"abc","result":"200","status":"subscribed"}')
    assert frame == SubscriptionAck(correlation_id="abc", result="200", status="subscribed")
    assert isinstance(frame, SubscriptionAck)
    assert frame.ok
    assert frame.topics == ()
    assert frame.message is None


def test_unsubscribe_ack_success() -> None:
    frame = decode_frame('{"correlationId":"abc","result":"200","status":"unsubscribed"}')
    assert isinstance(frame, SubscriptionAck)
    assert frame.ok
    assert frame.status == "unsubscribed"


def test_subscribe_ack_failure() -> None:
    data = (
        b'{"correlationId":"abc","topics":["v2.users.U.presence"],"result":"400",'
        b'"status":"error","message":"Invalid topic"}'
    )
    frame = decode_frame(data)
    assert isinstance(frame, SubscriptionAck)
    assert not frame.ok
    assert frame.result == "400"
    assert frame.status == "error"
    assert frame.message == "Invalid topic"
    assert frame.topics == ("v2.users.U.presence",)


def test_subscribe_ack_failure_empty_topics() -> None:
    data = b'{"correlationId":"abc","topics":[],"result":"400","status":"error","message":"no"}'
    frame = decode_frame(data)
    assert isinstance(frame, SubscriptionAck)
    assert frame.topics == ()
    assert not frame.ok


def test_channel_failure() -> None:
    frame = decode_frame(b'{"result":"404","message":"Channel not found"}')
    assert frame == ChannelFailure(result="404", message="Channel not found")


def test_channel_failure_without_message() -> None:
    assert decode_frame(b'{"result":"404"}') == ChannelFailure(result="404")


# --------------------------------------------------------------------------
# Unknown frames
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b"[1,2,3]",
        b"42",
        b"-1.5e3",
        b"1e400",
        b"123456789012345678901234567890",
        b'"a string"',
        b"null",
        b"true",
        b"{}",
        b'{"hello":"world"}',
        b'{"correlationId":"abc"}',  # an ack needs a result
        b'{"topicName":"","eventBody":{}}',
        b'{"topicName":"","result":"404"}',
        # a known field whose type leaves nothing to go on
        b'{"result":1e400}',
        b'{"topicName":5,"eventBody":{}}',
        # a result without a correlation id is no ack, and only "404" says a channel is gone
        b'{"result":"200","status":"subscribed"}',
        b'{"result":"400"}',
        b'{"result":"429","message":"slow down"}',
    ],
)
def test_unknown_frames(data: bytes) -> None:
    assert decode_frame(data) == UnknownFrame(data)


@pytest.mark.parametrize(
    ("data", "frame"),
    [
        (
            b'{"topicName":"v2.users.U.presence","version":2,"eventBody":{}}',
            Notification(topic="v2.users.U.presence", version="2", body=b"{}"),
        ),
        (
            b'{"topicName":"v2.users.U.presence","eventBody":{},"metadata":"m"}',
            Notification(topic="v2.users.U.presence", version=None, body=b"{}"),
        ),
        (
            b'{"topicName":"v2.users.U.presence","eventBody":{},"metadata":[]}',
            Notification(topic="v2.users.U.presence", version=None, body=b"{}"),
        ),
        (
            b'{"topicName":"v2.users.U.presence","eventBody":{},"metadata":{"CorrelationId":1}}',
            Notification(topic="v2.users.U.presence", version=None, body=b"{}", correlation_id="1"),
        ),
        (
            b'{"topicName":"v2.users.U.presence","version":"2","eventBody":{"a":1},'
            b'"metadata":{"CorrelationId":"c"},"message":{"x":1},"status":7}',
            Notification(
                topic="v2.users.U.presence", version="2", body=b'{"a":1}', correlation_id="c"
            ),
        ),
        (
            b'{"result":200,"correlationId":"abc"}',
            SubscriptionAck(correlation_id="abc", result="200"),
        ),
        (
            b'{"correlationId":"a","result":"400","topics":"v2.users.U.presence"}',
            SubscriptionAck(correlation_id="a", result="400"),
        ),
        (
            b'{"correlationId":"a","result":"400","topics":[1,"v2.users.U.presence"]}',
            SubscriptionAck(correlation_id="a", result="400", topics=("v2.users.U.presence",)),
        ),
        (b'{"result":"404","message":["x"]}', ChannelFailure(result="404")),
        (b'{"result":404}', ChannelFailure(result="404")),
    ],
)
def test_a_member_of_an_unexpected_type_costs_only_itself(data: bytes, frame: Frame) -> None:
    """A notification whose ``version`` or ``metadata`` is oddly typed is still delivered.

    It used to be an unknown frame: neither delivered nor counted, the one
    way a notification could vanish without a trace.
    """
    assert decode_frame(data) == frame


def test_unknown_frame_from_str_carries_utf8_bytes() -> None:
    assert decode_frame('["é"]') == UnknownFrame('["é"]'.encode())


# --------------------------------------------------------------------------
# Not JSON
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        "",
        b"   ",
        b"{",
        b'{"topicName":"v2.users.U.presence","eventBody":{"a":1}',
        b"[1,2",
        b'[1, {"a": tru',  # a ValidationError comes before the syntax error
        b'"unterminated',
        b"{}x",
        b'{"a":1} {"b":2}',
        b"{'a': 1}",
        b"NaN",
        b"{1:2}",
        b"\xff\xfe",
        b'{"topicName":"\xff"}',
        # invalid UTF-8 hidden where msgspec only skips: the body, an unknown field
        b'{"topicName":"v2.users.U.presence","eventBody":{"a":"\xc3("}}',
        b'{"other":"\xed\xa0\x80"}',
        b"\x00",
        b"[" * 100_000,
        b'{"eventBody":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "[\ud800]",
        '{"topicName": "\udcff"}',
        "plain text",
    ],
)
def test_not_json_raises_frame_error(data: bytes | str) -> None:
    with pytest.raises(FrameError, match=r"not .*(JSON|UTF-8)") as info:
        decode_frame(data)
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    assert info.value.data == raw[:200]


def test_frame_error_data_is_truncated() -> None:
    data = b"{" + b'"x":' * 1000
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    assert info.value.data == data[:200]


def test_wrong_input_type_raises_frame_error() -> None:
    with pytest.raises(FrameError, match="str or bytes"):
        decode_frame(None)  # type: ignore[arg-type]
    with pytest.raises(FrameError, match="str or bytes"):
        decode_frame(5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


def _decode_or_frame_error(data: bytes | str) -> Frame | None:
    try:
        frame = decode_frame(data)
    except FrameError:
        return None
    assert isinstance(frame, FRAME_TYPES)
    return frame


@given(st.binary(max_size=300))
def test_any_bytes_give_a_frame_or_frame_error(data: bytes) -> None:
    _decode_or_frame_error(data)


@given(st.text(max_size=300))
def test_any_text_gives_a_frame_or_frame_error(data: str) -> None:
    _decode_or_frame_error(data)


@given(
    st.text(
        alphabet=st.characters(categories=["Cs"]) | st.sampled_from('{}[]":, 1an"'),
        max_size=50,
    )
)
def test_any_text_with_surrogates_gives_a_frame_or_frame_error(data: str) -> None:
    # Lone surrogates are legal in a Python str but not encodable as UTF-8;
    # st.text() leaves them out by default.
    _decode_or_frame_error(data)


_JSON_FRAGMENTS = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b'"topicName"',
        b'"eventBody"',
        b'"channel.metadata"',
        b'"v2.system.socket_closing"',
        b'"result"',
        b'"correlationId"',
        b'"200"',
        b"null",
        b"1e400",
        b" ",
        b'"\xff"',
    ]
)


@given(st.lists(_JSON_FRAGMENTS, max_size=30).map(b"".join))
def test_json_like_bytes_give_a_frame_or_frame_error(data: bytes) -> None:
    # Random binary rarely gets past the first byte; near-JSON reaches the
    # classification code and its error paths.
    _decode_or_frame_error(data)


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
_KNOWN_KEYS = st.sampled_from(
    [
        "topicName",
        "version",
        "eventBody",
        "metadata",
        "correlationId",
        "result",
        "status",
        "message",
        "topics",
    ]
)
JSON_OBJECTS_WITH_KNOWN_KEYS = st.dictionaries(_KNOWN_KEYS | st.text(), JSON_VALUES, max_size=6)


@given(JSON_VALUES | JSON_OBJECTS_WITH_KNOWN_KEYS)
def test_any_json_value_decodes_without_frame_error(value: Any) -> None:
    encoded = msgspec.json.encode(value)
    frame = decode_frame(encoded)
    assert isinstance(frame, FRAME_TYPES)
    assert decode_frame(encoded.decode()) == frame


@given(
    topic=st.text(min_size=1).filter(lambda t: t != "channel.metadata" and not t.startswith("v2.")),
    body=JSON_VALUES,
)
def test_any_notification_body_round_trips(topic: str, body: Any) -> None:
    encoded_body = msgspec.json.encode(body)
    data = b'{"topicName":' + msgspec.json.encode(topic) + b',"eventBody":' + encoded_body + b"}"
    frame = decode_frame(data)
    assert isinstance(frame, Notification)
    assert frame.body == encoded_body
    assert msgspec.json.decode(frame.body) == body


# --------------------------------------------------------------------------
# The fast split of a notification in the platform's layout
# --------------------------------------------------------------------------

TOPIC = f"v2.routing.queues.{QUEUE_ID}.conversations"
BODY = b'{"id":"c-1","participants":[{"purpose":"customer","calls":[{"state":"connected"}]}]}'


def platform_frame(
    topic: str = TOPIC, body: bytes = BODY, version: str = "2", correlation_id: str = CORRELATION
) -> bytes:
    """A notification as the platform writes it: compact, its members in its order."""
    return (
        b'{"topicName":"'
        + topic.encode()
        + b'","version":"'
        + version.encode()
        + b'","eventBody":'
        + body
        + b',"metadata":{"CorrelationId":"'
        + correlation_id.encode()
        + b'"}}'
    )


@pytest.mark.parametrize("as_text", [False, True])
def test_a_platform_frame_splits_to_what_decode_frame_gives(as_text: bool) -> None:
    data = platform_frame()
    frame = split_notification(data.decode() if as_text else data)
    assert frame == Notification(TOPIC, "2", BODY, CORRELATION)
    assert frame == decode_frame(data)


def test_a_non_ascii_body_splits_to_its_utf8_bytes() -> None:
    body = '{"id":"c-1","name":"José Ñúñez 日本"}'.encode()
    data = platform_frame(body=body)
    assert split_notification(data) == split_notification(data.decode()) == decode_frame(data)


@pytest.mark.parametrize(
    "data",
    [
        # The reference's own example is spaced out: decode_frame reads it.
        NOTIFICATION,
        platform_frame().replace(b'"eventBody":', b'"eventBody": '),
        platform_frame().replace(b',"metadata"', b' ,"metadata"'),
        platform_frame() + b" ",
        # Another member order, or a member missing.
        b'{"version":"2","topicName":"' + TOPIC.encode() + b'","eventBody":{}}',
        platform_frame().replace(b',"metadata":{"CorrelationId":"' + CORRELATION.encode(), b""),
        # Escapes or control characters where the split would take text as is.
        platform_frame(topic="v2.routing.queues.a\\u0062.conversations"),
        platform_frame(correlation_id='a\\"b'),
        platform_frame(correlation_id='a"b'),
        platform_frame(version="2\u0001"),
        platform_frame(topic=""),
        # Frames that are not notifications.
        platform_frame(topic="channel.metadata", body=b'{"message":"WebSocket Heartbeat"}'),
        platform_frame(topic="v2.system.socket_closing"),
        platform_frame(topic="v2.subscription.updated"),
        # Not UTF-8.
        platform_frame(body=b'{"id":"\xff"}'),
        b"",
        b"{}",
    ],
)
def test_other_layouts_are_left_to_decode_frame(data: bytes) -> None:
    assert split_notification(data) is None
    with contextlib.suppress(UnicodeDecodeError):
        assert split_notification(data.decode()) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"c-1"',  # truncated
        b'{"id":"c-1",}',  # not JSON
        b'{"id":"c-1"},"extra":1',  # JSON, with a member the platform does not send
        b'{"id":"c-1"},"eventBody":{"id":"c-2"}',  # a repeated member
        b'{"id":"c-1"},"topicName":"v2.system.socket_closing"',  # a system frame after all
    ],
)
def test_a_body_that_is_not_one_json_value_is_split_unchecked(body: bytes) -> None:
    """The split does not read the body: the consumer's decode finds it broken, and rechecks."""
    frame = split_notification(platform_frame(body=body))
    assert frame is not None
    assert frame.body == body
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(frame.body)


_RAW_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from('"\\{}[],: \x00'), max_size=12)
_BODY_TEXT = (
    JSON_VALUES.map(msgspec.json.encode)
    | st.lists(_JSON_FRAGMENTS | JSON_VALUES.map(msgspec.json.encode), max_size=6).map(b"".join)
    | st.binary(max_size=20)
)


@settings(max_examples=500)
@given(
    topic=_RAW_TEXT | st.just(TOPIC),
    version=_RAW_TEXT | st.just("2"),
    body=_BODY_TEXT,
    correlation_id=_RAW_TEXT | st.just(CORRELATION),
    as_text=st.booleans(),
)
def test_a_split_frame_whose_body_decodes_is_what_decode_frame_gives(
    topic: str, version: str, body: bytes, correlation_id: str, as_text: bool
) -> None:
    """Whatever the parts, even quotes and escapes, a split is either refused or exact.

    Exact: when its body is one JSON value, the full decoder gives the same
    notification; when it is not, the consumer falls back to the full
    decoder, which then decides.
    """
    data = platform_frame(topic, body, version, correlation_id)
    if as_text:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return
        frame = split_notification(text)
    else:
        frame = split_notification(data)
    if frame is None:
        return
    # The parts give the frame back, so it can be rechecked without keeping it.
    assert (
        join_notification(frame.topic, frame.version or "", frame.body, frame.correlation_id or "")
        == data
    )
    try:
        msgspec.json.decode(frame.body)
    except msgspec.DecodeError:
        return  # the consumer rechecks the whole frame
    assert decode_frame(data) == frame


@settings(max_examples=200)
@given(
    body=JSON_VALUES,
    topic=st.text(st.characters(codec="ascii")) | st.text(st.characters(codec="utf-8")),
)
def test_every_platform_frame_with_a_json_body_takes_the_fast_path(body: Any, topic: str) -> None:
    """Unless its topic is empty, not plain ASCII, or names no notification."""
    encoded = msgspec.json.encode(body)
    data = platform_frame(topic=topic.replace('"', "").replace("\\", ""), body=encoded)
    frame = split_notification(data)
    topic = topic.replace('"', "").replace("\\", "")
    plain = topic and all(" " <= c <= "~" for c in topic)
    if not plain or topic.startswith(("channel.metadata", "v2.system.", "v2.subscription.updated")):
        assert frame is None
        return
    assert frame == decode_frame(data) == Notification(topic, "2", encoded, CORRELATION)


# --------------------------------------------------------------------------
# Outbound
# --------------------------------------------------------------------------


def test_ping() -> None:
    assert PING == b'{"message":"ping"}'
    assert encode_ping() == PING
    assert msgspec.json.decode(PING) == {"message": "ping"}


def test_encode_subscribe_exact_bytes() -> None:
    assert encode_subscribe(["v2.users.U.presence"], "c-1") == (
        b'{"message":"subscribe","topics":["v2.users.U.presence"],"correlationId":"c-1"}'
    )


@pytest.mark.parametrize(
    ("encode", "message"),
    [(encode_subscribe, "subscribe"), (encode_unsubscribe, "unsubscribe")],
)
@settings(max_examples=50)
@given(topics=st.lists(st.text()), correlation_id=st.text())
def test_encode_round_trip(
    encode: Any, message: str, topics: list[str], correlation_id: str
) -> None:
    decoded = msgspec.json.decode(encode(tuple(topics), correlation_id))
    assert decoded == {"message": message, "topics": topics, "correlationId": correlation_id}
    assert list(decoded) == ["message", "topics", "correlationId"]


def test_encode_rejects_a_bare_string() -> None:
    with pytest.raises(ConfigError, match="wrap it in a list"):
        encode_subscribe("v2.users.U.presence", "c")
    with pytest.raises(ConfigError, match="wrap it in a list"):
        encode_unsubscribe("v2.users.U.presence", "c")
