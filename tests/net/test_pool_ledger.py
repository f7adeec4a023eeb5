"""Zero-gap rotation, proven with the emulator's ledger of every frame it sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genesys_mux.core.channel import Outage
from genesys_mux.net.connection import ChannelPool, InboundNotification
from tests.net.conftest import eventually, fast_pool_settings, fast_settings


async def collect(
    pool: ChannelPool, into: set[tuple[str, str | None, str]], times: list[float]
) -> None:
    async for note in pool.frames():
        into.add((note.channel_id, note.correlation_id, note.topic))
        times.append(note.received_at)


@pytest.mark.parametrize("exclusive", [False, True], ids=["shared-topics", "exclusive-topics"])
async def test_socket_closing_rotation_loses_nothing(make_stack: Any, exclusive: bool) -> None:
    """Whether or not the successor's subscription takes the topics from the old channel.

    With ``exclusive_topics`` the two never both deliver: no overlap, and
    (tests/net/test_exclusive_topics.py, against a witness) no hole.
    """
    async with make_stack(
        fast_settings(rate=20.0, exclusive_topics=exclusive),
        fast_pool_settings(rotation_settle_s=0.5),
    ) as stack:
        topics = await stack.queue_topics()
        await stack.pool.set_topics(topics)
        (old,) = stack.pool.channel_ids().values()
        received: set[tuple[str, str | None, str]] = set()
        times: list[float] = []
        consumer = asyncio.create_task(collect(stack.pool, received, times))
        try:
            await eventually(lambda: sum(1 for r in received if r[0] == old) >= 20)
            await stack.fault("socket_closing", channel_id=old, delay_s=5)
            await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old))
            new = stack.pool.channel_ids()[0]
            await eventually(lambda: sum(1 for r in received if r[0] == new) >= 20)
            await stack.control("traffic", {"running": False})

            ledger = (await stack.control("ledger"))["entries"]
            sent_old = {
                (e["channel_id"], e["correlation_id"], e["topic"])
                for e in ledger
                if e["channel_id"] == old
            }
            sent_new = {
                (e["channel_id"], e["correlation_id"], e["topic"])
                for e in ledger
                if e["channel_id"] == new
            }
            # Everything the platform sent on either channel arrives.
            await eventually(lambda: sent_old <= received and sent_new <= received)

            old_times = [e["time"] for e in ledger if e["channel_id"] == old]
            new_times = [e["time"] for e in ledger if e["channel_id"] == new]
            if not exclusive:
                # The new channel was delivering before the old one stopped:
                # the two windows overlap, so there is no hole between them.
                assert min(new_times) <= max(old_times)
            assert list(stack.pool.outages) == []
        finally:
            consumer.cancel()


async def test_a_reader_that_falls_behind_sheds_and_reports_every_shed_notification(
    make_stack: Any,
) -> None:
    """``inbound_limit`` bounds what waits for the reader; what is shed is inside a gap.

    Nobody reads the pool while the platform sends: the queue stops at the
    limit and the socket sheds (counted). Then the traffic stops and the
    reader catches up: the shed window is reported (reason ``overload``)
    after the notifications read before it, and every notification the
    ledger has on the channel was either read or sent inside that window
    (the window's ends are receive times: the margin is the largest delay
    between a send and its receipt measured in this run).
    """
    async with make_stack(fast_settings(rate=40.0), fast_pool_settings(inbound_limit=10)) as stack:
        topics = await stack.queue_topics()
        seen: list[InboundNotification | Outage] = []
        stack.pool.on_outage.append(seen.append)
        await stack.pool.set_topics(topics)
        await eventually(lambda: sum(s.shed for s in stack.pool.stats().values()) >= 30)
        assert stack.pool._inbound.qsize() <= 10
        # Not reported yet, so a watermark must stay before it (a crash now
        # would otherwise lose the window: see test_unreported_windows).
        shedding_since = stack.pool.unreported_since(frozenset(topics))
        await stack.control("traffic", {"running": False})

        async def read() -> None:
            async for note in stack.pool.frames():
                seen.append(note)

        reader = asyncio.create_task(read())
        try:
            await eventually(lambda: any(isinstance(x, Outage) for x in seen))
            ledger = (await stack.control("ledger"))["entries"]
            counted = sum(s.shed for s in stack.pool.stats().values())
        finally:
            reader.cancel()
    (channel,) = {e["channel_id"] for e in ledger if e["topic"] in topics}
    notes = [x for x in seen if isinstance(x, InboundNotification)]
    (outage,) = [x for x in seen if isinstance(x, Outage)]
    assert outage.reason == "overload"
    assert outage.channel_id == channel
    assert shedding_since is not None
    assert shedding_since <= outage.start
    assert set(topics) <= outage.topics
    # Reported behind the notifications read before the shedding began.
    assert seen.index(outage) == len(notes) > 0
    assert all(n.received_at <= outage.start for n in notes)
    sent = {(e["topic"], e["correlation_id"]): e["time"] for e in ledger if e["topic"] in topics}
    read_at = {(n.topic, n.correlation_id): n.received_at for n in notes}
    margin = max(read_at[key] - sent[key] for key in read_at) + 0.001
    shed = {key: at for key, at in sent.items() if key not in read_at}
    assert len(shed) == counted
    outside = {k: at for k, at in shed.items() if not outage.start - margin <= at <= outage.end}
    assert not outside, (outage, margin, outside)


async def test_a_shed_window_queued_behind_the_reader_holds_unreported_since(
    make_stack: Any,
) -> None:
    """A shed window waits in the queue, unreported, behind what was read before it.

    The reader takes a few notifications, so the queue falls below half the
    limit: the socket stops shedding at its next frame and queues its window.
    Until the reader reaches it, notifications queued ahead of it (another
    socket's, in general) must not let a watermark pass it.
    """
    async with make_stack(fast_settings(rate=40.0), fast_pool_settings(inbound_limit=10)) as stack:
        topics = await stack.queue_topics()
        await stack.pool.set_topics(topics)
        await eventually(lambda: sum(s.shed for s in stack.pool.stats().values()) >= 5)
        for _ in range(7):
            assert stack.pool.next_frame_nowait() is not None
        await eventually(lambda: bool(stack.pool._sheds_queued))
        (shed,) = stack.pool._sheds_queued
        since = stack.pool.unreported_since(frozenset(topics))
        assert since is not None
        assert since <= shed.outage.start
        # Reached and reported: it no longer holds anything back.
        seen: list[Outage] = []
        stack.pool.on_outage.append(seen.append)
        while not seen:
            stack.pool.next_frame_nowait()
        assert seen == [shed.outage]
        assert not stack.pool._sheds_queued
        after = stack.pool.unreported_since(frozenset(topics))
        assert after is not None
        assert after > shed.outage.end
