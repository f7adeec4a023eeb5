"""Subscriptions that change under a working socket: another holder of the channel PUTs a list.

The socket keeps working and no system topic says anything (the emulator
sends ``v2.subscription.updated`` only when told to: the reference does not
say when the platform sends it). The multiplexer must notice (a periodic
read-back, or at once on the frame), put its topics back, and report the
window as a gap.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import aiohttp

from genesys_mux.net.connection import PoolSettings
from tests.emulator.genesys import GenesysClient
from tests.net.conftest import eventually
from tests.net.test_multiplexer import FAST_POOL, Collector, harness, org_settings


async def _replace_with_nothing(base_url: str, channel_id: str) -> float:
    """Another process of the same OAuth client empties our channel's list; returns when."""
    async with aiohttp.ClientSession() as session:
        other = GenesysClient(session, base_url)
        await other.login("demo-client", "demo-secret")
        replaced_at = time.time()
        status, body, _ = await other.subscribe(channel_id, [])
        assert status == 200, body
        return replaced_at


async def _topic_count(h: Any, channel_id: str) -> int:
    channels = {c["id"]: c for c in await h.control("channels")}
    count: int = channels[channel_id]["topic_count"]
    return count


async def test_a_periodic_check_restores_replaced_subscriptions_and_reports_the_gap() -> None:
    pool = dataclasses.replace(FAST_POOL, subscription_check_s=0.5)
    async with harness(org_settings(rate=20.0), pool_settings=pool) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 3)
        assert h.mux.pool is not None
        (channel_id,) = h.mux.pool.channel_ids().values()
        assert channel_id is not None
        topics = await _topic_count(h, channel_id)
        assert topics > 0

        replaced_at = await _replace_with_nothing(h.emulator.base_url, channel_id)
        await eventually(lambda: len(seen.gaps()) == 1, within=5.0)
        (gap,) = seen.gaps()
        assert gap.reason == "subscriptions_replaced"
        assert gap.channel_id == channel_id  # the same socket: nothing was reconnected
        assert gap.start <= replaced_at <= gap.end
        # Restored: the channel has its topics again, and events flow on it.
        assert await _topic_count(h, channel_id) == topics
        count = len(seen.events())
        await eventually(lambda: len(seen.events()) > count + 3)
        assert h.mux.pool.channel_ids() == {0: channel_id}
        assert h.mux.pool.stats()[0].reconnects == 0


async def test_the_platform_saying_so_is_acted_on_at_once() -> None:
    """With ``v2.subscription.updated`` sent, no periodic check is needed."""
    pool = dataclasses.replace(FAST_POOL, subscription_check_s=None)
    settings = org_settings(rate=20.0, subscription_updated_frames=True)
    async with harness(settings, pool_settings=pool) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 3)
        assert h.mux.pool is not None
        (channel_id,) = h.mux.pool.channel_ids().values()
        assert channel_id is not None
        replaced_at = await _replace_with_nothing(h.emulator.base_url, channel_id)
        await eventually(lambda: len(seen.gaps()) == 1, within=5.0)
        (gap,) = seen.gaps()
        assert gap.reason == "subscriptions_replaced"
        # The window starts at the last frame before the news, not at a
        # check minutes earlier, and ends once the topics are back.
        assert replaced_at - 1.0 <= gap.start <= replaced_at <= gap.end
        assert gap.duration_s < 2.0
        assert await _topic_count(h, channel_id) > 0


async def test_our_own_changes_are_no_gap() -> None:
    """The frame also follows our own PUTs: a check then finds the list as put."""
    pool = dataclasses.replace(FAST_POOL, subscription_check_s=0.3)
    settings = org_settings(rate=20.0, subscription_updated_frames=True)
    async with harness(settings, pool_settings=pool) as h:
        await h.mux.add_stream({"id": "calls", "filter": {"channelType": "voice"}})
        seen = Collector(h.mux.stream("calls"))
        await h.mux.add_stream({"id": "chats", "filter": {"channelType": "chat"}})
        await h.mux.remove_stream("chats")
        assert h.mux.pool is not None
        slot = h.mux.pool.stats()[0]

        async def checked(times: int) -> bool:
            requests = (await h.control("requests"))["requests"]
            reads = [
                r for r in requests if r["method"] == "GET" and r["path"].endswith("/subscriptions")
            ]
            return len(reads) >= times

        # Two changes (two frames) and the periodic checks: several read-backs.
        await eventually(lambda: checked(4))
        await eventually(lambda: len(seen.events()) >= 10)
        assert slot.reconnects == 0
        assert seen.gaps() == []


def test_pool_settings_carry_the_check_interval_to_each_link() -> None:
    assert PoolSettings().watchdog().subscription_check_s == 300.0
    assert PoolSettings(subscription_check_s=None).watchdog().subscription_check_s is None
