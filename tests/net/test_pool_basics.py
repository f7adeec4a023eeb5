"""The channel pool against the emulator: subscribe, receive, report."""

from __future__ import annotations

from typing import Any


async def test_topics_are_subscribed_and_notifications_flow(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics = await stack.queue_topics()
        rejected = await stack.pool.set_topics(topics)
        assert rejected == []
        assert stack.pool.live
        channels = await stack.control("channels")
        assert len(channels) == 1
        assert channels[0]["topic_count"] == len(topics)
        assert channels[0]["connected"]
        seen = set()
        async for note in stack.pool.frames():
            assert note.topic in topics
            assert note.channel_id == channels[0]["id"]
            assert note.body.startswith(b"{")
            seen.add(note.topic)
            if len(seen) >= 2:
                break
