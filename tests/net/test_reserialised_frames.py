"""Every frame re-serialised: the platform's compact layout is not a given.

The reference allows frames to be re-serialised (other key order,
whitespace, escapes). The client's fast frame split
(:func:`genesys_mux.core.frames.split_notification`) only takes frames in
the platform's own compact layout and leaves every other one to the full
decode. The emulator's ``reserialise`` fault at probability 1 writes *every*
notification anew, so a stream runs on that fallback path alone, here
together with the ``duplicate`` fault (byte-for-byte copies of the rewritten
frames, or copies written anew again with a new CorrelationId).

A witness (its own client and channel on the same topics, plain aiohttp,
see :mod:`tests.net.test_unannounced_close`) holds each notification's body,
so that the check is about content: every conversation change the ledger
sent to the mux is delivered once, none is lost, none is delivered twice,
and each delivered body is the same JSON value the platform sent.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import aiohttp
import pytest

from genesys_mux.core.frames import split_notification
from genesys_mux.core.snapshot import event_facts
from tests.net.test_chaos import Witness
from tests.net.test_multiplexer import Collector, harness, org_settings
from tests.net.test_unannounced_close import (
    BUFFER,
    assert_stream_accounts,
    drain,
    mux_channels,
)
from tests.waiting import eventually


@pytest.mark.parametrize(
    "copies",
    [{"probability": 0.3}, {"probability": 0.3, "reserialise": True}],
    ids=["byte-copies", "rewritten-copies"],
)
async def test_a_stream_of_reserialised_frames_delivers_every_change_once(
    copies: dict[str, Any],
) -> None:
    async with (
        harness(org_settings(rate=20.0)) as h,
        aiohttp.ClientSession() as session,
    ):
        await h.control("faults", {"fault": "reserialise", "probability": 1.0})
        await h.control("faults", {"fault": "duplicate", **copies})
        org = await h.control("org")
        topics = frozenset(
            f"v2.routing.queues.{q['id']}.conversations.calls" for q in org["queues"]
        )
        # The witness first: every notification sent to the mux has its body.
        witness = Witness(session, h.emulator.base_url)
        await witness.start(set(topics))
        try:
            await h.mux.add_stream(
                {"id": "calls", "filter": {"channelType": "voice"}, "buffer_size": BUFFER}
            )
            assert h.mux._streams["calls"].topics == topics
            seen = Collector(h.mux.stream("calls"))

            async def copied() -> bool:
                entries = (await h.control("ledger"))["entries"]
                ours = await mux_channels(h)
                return (
                    sum(e["duplicate"] and e["channel_id"] in ours for e in entries) >= 10
                    and len(seen.events()) >= 30
                )

            await eventually(copied, within=30)
            entries = await drain(h, witness, "calls", topics)
            ours = await mux_channels(h)
            channel_stats = h.mux.stats()["channels"]
        finally:
            await witness.stop()
        seen.stop()

    assert not witness.trouble, witness.trouble
    # What the platform sent was never in its compact layout: the fast split
    # took none of it, and every frame went through the full decode.
    assert witness.frames
    assert all(split_notification(frame) is None for frame in witness.frames.values())

    # None lost: every frame sent to the mux was read as a notification
    # (drain() waited for the stream to have received them all), and none
    # was taken for a bad frame.
    assert sum(c.bad_frames for c in channel_stats.values()) == 0
    to_mux = [e for e in entries if e["channel_id"] in ours]
    events = seen.events()
    assert_stream_accounts(h, "calls", events)
    stats = h.mux.stats()["streams"]["calls"]
    copies_sent = sum(e["duplicate"] for e in to_mux)
    assert copies_sent >= 10
    # Duplicates still removed: every copy was recognised as one.
    assert stats.duplicates >= copies_sent
    assert stats.stale == 0, stats

    bodies = {key: json.loads(frame)["eventBody"] for key, frame in witness.frames.items()}
    # Names as a real directory has them, beyond ASCII, which the rewrites
    # sent as \u escapes or as UTF-8: the digest reads the text, not its
    # spelling.
    names = {p.get("name") for body in bodies.values() for p in body.get("participants", [])}
    assert any(isinstance(name, str) and not name.isascii() for name in names), names
    assert any(not frame.isascii() for frame in witness.frames.values())

    # Every conversation change sent to the mux is delivered, once, with
    # the body the platform sent (the same JSON value, whatever its bytes).
    changes = set()
    for e in to_mux:
        if e["duplicate"]:
            continue
        body = bodies[(e["topic"], e["correlation_id"])]
        facts = event_facts(e["topic"], json.dumps(body).encode())
        changes.add((facts.key, facts.hash))
    delivered = Counter((e.content_key, e.digest) for e in events)
    assert changes == set(delivered), (len(changes), len(delivered))
    assert all(n == 1 for n in delivered.values()), "a state was delivered twice"
    originals = {(e["topic"], e["correlation_id"]) for e in to_mux if not e["duplicate"]}
    for event in events:
        assert event.correlation_id is not None
        key = (event.topic, event.correlation_id)
        assert key in originals, key
        assert event.body == bodies[key]
