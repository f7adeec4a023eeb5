"""A checkpoint's watermark never passes a window that is not reported yet.

An outage is reported once it is over: when a successor socket delivers, or
when the reader reaches a shed window. Until then only the pool knows (or,
for a socket that died silently, nobody does yet). Meanwhile a stream's
other channels keep delivering, and a watermark that followed them would
let a crash lose the window: the next run's restart gap starts at the
checkpoint's watermark. These tests make a stream span two channels, take
one away in each way the reference allows, let the other deliver past the
loss, and read the watermark a checkpoint would save.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import pytest

from genesys_mux.net.connection import ChannelPool
from tests.net.conftest import eventually
from tests.net.test_multiplexer import FAST_POOL, Collector, harness, org_settings

pytestmark = pytest.mark.timeout(60)

# Three queues on channels of two topics: the all-queues stream spans two
# slots. The watchdog is slow, so a silent socket stays unnoticed throughout.
_TWO_SLOTS = dataclasses.replace(FAST_POOL, topics_per_channel=2, heartbeat_timeout_s=30.0)


class _Spanning:
    """The all-queues stream across two slots, each seen delivering its events."""

    def __init__(self, h: Any, reader: Collector, lost: int, other: int) -> None:
        self.h = h
        self.reader = reader
        self.lost = lost
        self.other = other
        assert h.mux.pool is not None
        self.pool: ChannelPool = h.mux.pool
        self.channel = self.pool.channel_ids()[lost]

    def delivered_after(self, slot: int, after: float) -> bool:
        topics = self.pool._planner.slots[slot]
        return any(e.topic in topics and e.received_at > after for e in self.reader.events("all"))


async def _spanning_stream(h: Any) -> _Spanning:
    await h.mux.add_stream({"id": "all", "filter": {}})
    reader = Collector(h.mux.stream("all"))
    slots = sorted(h.mux.pool.channel_ids())
    assert len(slots) == 2, slots
    lost, other = slots
    spanning = _Spanning(h, reader, lost, other)
    await eventually(
        lambda: spanning.delivered_after(lost, 0.0) and spanning.delivered_after(other, 0.0),
        within=20,
    )
    return spanning


async def test_a_socket_gone_silent_holds_the_watermark_at_its_last_frame() -> None:
    """A half-open socket answers nothing: until its watchdog fires, the window is unknown."""
    async with harness(org_settings(rate=30.0), pool_settings=_TWO_SLOTS) as h:
        s = await _spanning_stream(h)
        await h.control("faults", {"fault": "pause_heartbeats", "channel_id": s.channel})
        silent_from = time.time()
        # The other channel delivers the stream's events well after the loss.
        await eventually(lambda: s.delivered_after(s.other, silent_from + 0.5), within=20)
        s.reader.stop()
        watermark = h.mux.watermark("all")
        socket = s.pool._slots[s.lost].socket
        assert socket is not None
        assert socket.last_frame_wall <= silent_from
        # (A monotonic reading converted to Unix time again: a few µs either way.)
        assert watermark <= socket.last_frame_wall + 0.001, (watermark, socket.last_frame_wall)
        # Nothing of the lost slot is reported yet: the watermark alone covers it.
        assert not [o for o in s.pool.outages if o.slot == s.lost]


async def test_an_open_outage_holds_the_watermark_at_its_start() -> None:
    """Subscriptions gone and no successor yet: the slot's window stays open, unreported."""
    async with harness(org_settings(rate=30.0), pool_settings=_TWO_SLOTS) as h:
        s = await _spanning_stream(h)
        # No channel can be made for a successor, so the window stays open.
        await h.control(
            "faults",
            {"fault": "http_5xx", "count": 1000, "path": "/api/v2/notifications/channels"},
        )
        await h.control("faults", {"fault": "no_longer_subscribed", "channel_id": s.channel})
        told_at = time.time()
        slot = s.pool._slots[s.lost]
        await eventually(lambda: slot.machine.window is not None, within=10)
        window = slot.machine.window
        assert window is not None
        await eventually(lambda: s.delivered_after(s.other, told_at + 0.5), within=20)
        s.reader.stop()
        assert h.mux.watermark("all") <= window.since <= told_at
        assert not [o for o in s.pool.outages if o.slot == s.lost]


async def test_a_loss_read_while_the_slot_is_busy_holds_the_watermark_at_its_start() -> None:
    """A 404 read while the slot's supervisor waits on a PUT: no window is open yet.

    The loss starts at the frame before the 404 (the socket's ``lost_at``),
    not at the 404 itself, the socket's last frame. Heartbeats come every
    5 s and nothing else, so the two are far apart.
    """
    settings = org_settings(rate=0.0, heartbeat_interval_s=5.0)
    async with harness(settings, pool_settings=_TWO_SLOTS) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        pool = h.mux.pool
        assert pool is not None
        assert len(pool.channel_ids()) == 2
        put = pool._rest.put_subscriptions
        release = asyncio.Event()

        async def held(*args: Any, **kwargs: Any) -> Any:
            await release.wait()
            return await put(*args, **kwargs)

        pool._rest.put_subscriptions = held  # type: ignore[method-assign]
        # One more topic: the slot with room PUTs it, and waits there.
        presence = f"v2.users.{uuid.UUID(int=1)}.presence"
        adding = asyncio.create_task(h.mux.add_stream({"id": "one", "topics": [presence]}))
        try:
            await eventually(lambda: any(not s.machine.in_sync for s in pool._slots.values()))
            (busy,) = [s for s in pool._slots.values() if not s.machine.in_sync]
            socket = busy.socket
            assert socket is not None
            await h.control("faults", {"fault": "expire_channel", "channel_id": socket.info.id})
            await eventually(lambda: socket.lost_at is not None)
            assert socket.lost_at is not None
            assert busy.machine.window is None  # its supervisor has not heard yet
            assert socket.last_frame_wall > socket.lost_at + 0.001  # the 404, read later
            since = pool.unreported_since(frozenset(pool._planner.slots[busy.index]))
            assert since is not None
            assert since <= socket.lost_at + 0.0001
        finally:
            release.set()
            adding.cancel()
            await asyncio.gather(adding, return_exceptions=True)
