"""The channel pool against the emulator: subscribe, receive, report."""

from __future__ import annotations

import contextlib
from typing import Any

from tests.waiting import eventually


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


async def test_the_inbound_queue_wakes_every_waiting_reader_and_forgets_a_cancelled_one() -> None:
    """The pool's own queue (cheaper than asyncio.Queue): readers wait, a put wakes them."""
    import asyncio

    from genesys_mux.net.connection import _Inbound, _Marker

    inbound = _Inbound()
    readers = [asyncio.create_task(inbound.wait()) for _ in range(2)]
    cancelled = asyncio.create_task(inbound.wait())
    await eventually(lambda: len(inbound._waiters) == 3)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    assert len(inbound._waiters) == 2  # the cancelled reader left nothing behind

    marker = _Marker(asyncio.Event())
    inbound.put_nowait(marker)
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    assert inbound._waiters == []
    assert inbound.qsize() == 1
    await asyncio.wait_for(inbound.wait(), 5)  # something is queued: no wait at all
    assert inbound.items.popleft() is marker
