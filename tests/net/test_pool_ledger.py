"""Zero-gap rotation, proven with the emulator's ledger of every frame it sent."""

from __future__ import annotations

import asyncio
from typing import Any

from genesys_mux.net.connection import ChannelPool
from tests.net.conftest import eventually, fast_pool_settings, fast_settings


async def collect(
    pool: ChannelPool, into: set[tuple[str, str | None, str]], times: list[float]
) -> None:
    async for note in pool.frames():
        into.add((note.channel_id, note.correlation_id, note.topic))
        times.append(note.received_at)


async def test_socket_closing_rotation_loses_nothing(make_stack: Any) -> None:
    async with make_stack(
        fast_settings(rate=20.0), fast_pool_settings(rotation_settle_s=0.5)
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
            # The new channel was delivering before the old one stopped: the
            # two windows overlap, so there is no hole between them.
            assert min(new_times) <= max(old_times)
            assert list(stack.pool.outages) == []
        finally:
            consumer.cancel()
