"""The wire record every sink writes: fields, idempotency keys, and bodies kept byte for byte."""

from __future__ import annotations

import base64
import json

import pytest

from genesys_mux.core.streams import StreamEvent
from genesys_mux.sinks.base import (
    EventRecord,
    GapRecord,
    Sink,
    batch_idempotency_key,
    decode_record,
    encode_record,
    idempotency_key,
)
from genesys_mux.sinks.jsonl import JsonlSink
from genesys_mux.sinks.redis_streams import RedisStreamsSink
from genesys_mux.sinks.stdout import StdoutSink
from genesys_mux.sinks.webhook import WebhookSink
from tests.sinks.conftest import EPOCH, a_gap, real_events


def event_with(raw: bytes, sequence: int = 7, *, well_formed: bool = False) -> StreamEvent:
    return StreamEvent(
        stream_id="chat-support",
        sequence=sequence,
        priority=1,
        topic="v2.users.u1.conversations.chats",
        transition="enter",
        conversation_id="c-1",
        correlation_id="corr-1",
        raw=raw,
        received_at=EPOCH + 0.5,
        well_formed=well_formed,
    )


def test_event_record_carries_every_field() -> None:
    event = event_with(b'{"id":"c-1"}')
    record = json.loads(encode_record(event))
    assert record == {
        "kind": "event",
        "idempotency_key": "chat-support:7",
        "stream_id": "chat-support",
        "sequence": 7,
        "priority": 1,
        "topic": "v2.users.u1.conversations.chats",
        "transition": "enter",
        "conversation_id": "c-1",
        "correlation_id": "corr-1",
        "received_at": EPOCH + 0.5,
        "event_body": {"id": "c-1"},
    }


def test_real_bodies_are_embedded_byte_for_byte() -> None:
    for event in real_events(20):
        encoded = encode_record(event)
        assert b'"event_body":' + event.raw + b"}" in encoded
        decoded = decode_record(encoded)
        assert isinstance(decoded, EventRecord)
        assert bytes(decoded.event_body) == event.raw
        assert decoded.raw == event.raw


@pytest.mark.parametrize(
    "raw",
    [
        # Re-encoding would normalise each of these; embedding must not.
        b'{"n":1.50,"big":123456789012345678901234567890,"e":1E+2}',
        b'{"s":"caf\\u00e9 \\ud83d\\ude00","slash":"a\\/b"}',
        b'{ "spaced" : [ 1 , 2 ] }',
        '{"utf8":"café ☎"}'.encode(),
        b"[]",
        b'"just a string"',
    ],
)
def test_unusual_json_is_not_normalised(raw: bytes) -> None:
    decoded = decode_record(encode_record(event_with(raw)))
    assert isinstance(decoded, EventRecord)
    assert bytes(decoded.event_body) == raw
    assert decoded.event_body_b64 is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":\n1}',  # valid JSON over two lines would break a JSON-lines file
        b"not json",
        b'{"truncated":',
        b"\xff\xfe",
        # JSON, but not UTF-8 text (a replayed letter's): the record would not be either
        b'{"name":"\xff\xfe"}',
        b"",
        b" {} ",
    ],
)
def test_bodies_that_cannot_be_embedded_travel_as_base64(raw: bytes) -> None:
    """Read as JSON by the facts or not (which spares only the syntax walk), each is checked."""
    # The facts read as JSON those that are JSON (the others never are).
    json_or_not = (
        (False, True) if raw in (b'{"a":\n1}', b'{"name":"\xff\xfe"}', b" {} ") else (False,)
    )
    for well_formed in json_or_not:
        encoded = encode_record(event_with(raw, well_formed=well_formed))
        assert b"\n" not in encoded
        record = json.loads(encoded)
        assert "event_body" not in record
        assert base64.b64decode(record["event_body_b64"]) == raw
        decoded = decode_record(encoded)
        assert isinstance(decoded, EventRecord)
        assert decoded.raw == raw


def test_gap_record() -> None:
    gap = a_gap()
    record = json.loads(encode_record(gap))
    assert record == {
        "kind": "gap",
        "idempotency_key": f"voice-main:gap:streaming-0-abc:{gap.start!r}",
        "stream_id": "voice-main",
        "start": gap.start,
        "end": gap.end,
        "topics": sorted(gap.topics),
        "channel_id": "streaming-0-abc",
        "reason": "socket_dropped",
    }
    assert isinstance(decode_record(encode_record(gap)), GapRecord)


def test_idempotency_keys() -> None:
    events = real_events(3, stream_id="s1", start=41)
    keys = [idempotency_key(e) for e in events]
    # The stream, what the event is about, and its state digest.
    for event, key in zip(events, keys, strict=True):
        assert key == f"s1:{event.conversation_id}:{event.digest.hex()}"
    assert len(set(keys)) == 3
    assert batch_idempotency_key(events) == f"{keys[0]}..{keys[2]}"
    gap = a_gap("s1")
    assert batch_idempotency_key([*events, gap]) == f"{keys[0]}..{idempotency_key(gap)}"
    assert batch_idempotency_key([]) == ""


def test_every_sink_satisfies_the_protocol(tmp_path: object) -> None:
    sinks = [
        StdoutSink(),
        JsonlSink(f"{tmp_path}/out.jsonl"),
        RedisStreamsSink("redis://127.0.0.1:1/0"),
        WebhookSink("http://127.0.0.1:1/hook", "s3cret", signing="genesys-mux"),
    ]
    for sink in sinks:
        assert isinstance(sink, Sink)
        assert sink.name
