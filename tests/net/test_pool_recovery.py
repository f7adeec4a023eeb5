"""Every rotation and recovery trigger, against the emulator over real sockets.

Each test ends the same way: every desired topic subscribed on a live
channel, checked from the emulator's side (``/__emulator__/channels``), and
notifications flowing again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from typing import Any, Literal, cast

import aiohttp
import pytest
from aiohttp import web

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.events import ChannelFailed, ChannelLost, ChannelRotated, ControlEvent
from genesys_mux.emulator import ClientApp, PlatformLimits
from genesys_mux.errors import AuthenticationError
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.connection import ChannelPool, InboundNotification
from genesys_mux.net.rest import RestClient
from genesys_mux.regions import Endpoints
from tests.emulator.genesys import basic_auth
from tests.net.conftest import Stack, eventually, fast_pool_settings, fast_settings, stand_in
from tests.sinks.conftest import free_port

CHANNELS_PATH = "/api/v2/notifications/channels"


async def assert_fully_served(stack: Stack, topics: list[str]) -> None:
    """Every topic on exactly one connected emulator channel, and traffic arriving."""

    async def served() -> bool:
        if not stack.pool.live:
            return False
        channels = {c["id"]: c for c in await stack.control("channels")}
        ours = [cid for cid in stack.pool.channel_ids().values() if cid is not None]
        if not ours or not all(cid in channels and channels[cid]["connected"] for cid in ours):
            return False
        return sum(cast(int, channels[cid]["topic_count"]) for cid in ours) == len(topics)

    await eventually(served)
    ours = set(stack.pool.channel_ids().values())
    note = await asyncio.wait_for(anext(aiter(stack.pool.frames())), 10)
    while note.channel_id not in ours:
        note = await asyncio.wait_for(anext(aiter(stack.pool.frames())), 10)
    assert note.topic in topics


async def start(stack: Stack) -> tuple[list[str], str]:
    topics = await stack.queue_topics()
    assert await stack.pool.set_topics(topics) == []
    (channel_id,) = stack.pool.channel_ids().values()
    assert channel_id is not None
    return topics, channel_id


async def test_socket_dropped_without_close_frame_reconnects_same_channel(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics, channel_id = await start(stack)
        await stack.fault("drop_socket", channel_id=channel_id)
        await eventually(lambda: len(stack.pool.outages) == 1)
        outage = stack.pool.outages[0]
        assert outage.channel_id == channel_id
        assert outage.topics == frozenset(topics)
        assert outage.start <= outage.end
        # HEAD said the channel still exists, so it was reused.
        assert stack.pool.channel_ids()[0] == channel_id
        assert stack.pool.stats()[0].reconnects == 1
        # The platform did not end the channel: not counted as gone.
        assert stack.pool.stats()[0].gone == 0
        await assert_fully_served(stack, topics)


async def test_a_slot_that_reconnects_and_rotates_for_long_keeps_no_old_sockets(
    make_stack: Any,
) -> None:
    """Weeks of daily rotations and dropped links: the slot remembers only what a report
    may still name (it used to keep every socket's channel it ever had)."""
    async with make_stack() as stack:
        topics, _ = await start(stack)

        def recovered(reconnects: int, rotations: int) -> bool:
            stats = stack.pool.stats()[0]
            done = (stats.reconnects, stats.rotations) == (reconnects, rotations)
            return done and stack.pool.live

        for n in range(1, 5):
            await stack.fault("drop_socket")
            await eventually(functools.partial(recovered, n, n - 1))
            await stack.fault("socket_closing", delay_s=10)
            await eventually(functools.partial(recovered, n, n))
        # Each loss was reported on the channel it happened on, all the same.
        assert len(stack.pool.outages) == 4
        assert all(o.channel_id.startswith("streaming-0-") for o in stack.pool.outages)
        # The serving socket's, and perhaps the last rotation's old one: not eight.
        slot = stack.pool._slots[0]
        assert len(slot.channels) <= 2, slot.channels
        assert slot.machine.named_sockets() <= set(slot.sockets)
        await assert_fully_served(stack, topics)


async def test_a_successor_lost_while_its_predecessor_drains_is_reconnected_at_once(
    make_stack: Any,
) -> None:
    """The old channel's unsubscribe answered 429 for long: the drain waits, the slot does not.

    The rotation drains the old socket before it returns (the spare channel
    it borrowed is given back then), and the drain waits up to
    ``pong_timeout_s`` for the DELETE and the pong. A successor dropped
    meanwhile was handled only after those waits: a 10 s outage of a
    slot whose reconnection takes milliseconds.
    """
    settings = fast_pool_settings(pong_timeout_s=5.0, rotation_overlap_s=0.2)
    async with make_stack(pool_settings=settings) as stack:
        await start(stack)
        rotated = asyncio.Event()

        def watch(event: ControlEvent) -> None:
            if isinstance(event, ChannelRotated):
                rotated.set()

        stack.pool.on_control.append(watch)
        # Each 429 also pauses the client's other calls for its Retry-After.
        await stack.fault(
            "http_429", method="DELETE", path="subscriptions", count=1000, retry_after_s=1
        )
        await stack.fault("socket_closing", delay_s=30)
        await asyncio.wait_for(rotated.wait(), 10)  # reported just before the old one drains
        successor = stack.pool.channel_ids()[0]
        await stack.fault("drop_socket", channel_id=successor)
        started = time.monotonic()
        await eventually(lambda: any(o.channel_id == successor for o in stack.pool.outages))
        await eventually(lambda: stack.pool.live)
        took = time.monotonic() - started
        (outage,) = [o for o in stack.pool.outages if o.channel_id == successor]
        assert outage.end - outage.start < 3.0, outage
        assert took < 3.0, took


async def test_a_stop_during_a_rotation_s_drain_closes_the_old_socket(make_stack: Any) -> None:
    """Taken out of the slot's sockets for its drain, it was closed by nobody and read on."""
    settings = fast_pool_settings(pong_timeout_s=5.0, rotation_overlap_s=0.2)
    async with make_stack(pool_settings=settings) as stack:
        await start(stack)
        old = stack.pool._slots[0].socket
        assert old is not None
        rotated = asyncio.Event()
        stack.pool.on_control.append(
            lambda event: rotated.set() if isinstance(event, ChannelRotated) else None
        )
        await stack.fault(
            "http_429", method="DELETE", path="subscriptions", count=1000, retry_after_s=1
        )
        await stack.fault("socket_closing", delay_s=30)
        await asyncio.wait_for(rotated.wait(), 10)  # the old socket's drain begins
        await stack.pool.drain(0.5)
        await stack.pool.close()
        assert old.ws.closed
        assert all(task.done() for task in old._tasks)


async def test_calls_the_platform_completed_but_whose_answer_was_lost_lose_nothing(
    make_stack: Any,
) -> None:
    """A gateway's 5xx after the platform acted: a channel made unheard of, a list replaced."""
    async with make_stack() as stack:
        await stack.fault("http_5xx", status=504, path=CHANNELS_PATH, method="POST", after=True)
        topics, channel_id = await start(stack)
        channels = {c["id"]: c for c in await stack.control("channels")}
        # The channel whose id never reached the pool stays unused (the
        # platform evicts such channels first), and costs nothing else.
        assert len(channels) == 2
        (orphan,) = set(channels) - {channel_id}
        assert not channels[orphan]["connected"]
        assert channels[orphan]["topic_count"] == 0
        assert stack.pool.stats()[0].reconnects == 0

        await stack.fault("http_5xx", status=503, path="/subscriptions", method="PUT", after=True)
        fewer = topics[:-1]
        assert await stack.pool.set_topics(fewer) == []
        await assert_fully_served(stack, fewer)
        assert stack.pool.channel_ids()[0] == channel_id
        # Nothing was ever unsubscribed that should not have been.
        assert not stack.pool.outages


async def test_half_open_socket_is_detected_by_the_watchdog(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics, channel_id = await start(stack)
        await stack.fault("pause_heartbeats", channel_id=channel_id)
        await eventually(lambda: len(stack.pool.outages) == 1)
        assert stack.pool.outages[0].reason == "reconnect"
        await assert_fully_served(stack, topics)


async def test_a_dead_socket_is_not_waited_for(make_stack: Any) -> None:
    """A half-open link answers no close frame: recovery must not wait for one.

    The outage runs from the last frame read to the successor's first, so it
    may take the watchdog's two timeouts and a reconnect, and no more (an
    unbounded close handshake added aiohttp's 10 s to it).
    """
    async with make_stack() as stack:
        topics, channel_id = await start(stack)
        await stack.fault("pause_heartbeats", channel_id=channel_id)
        await eventually(lambda: len(stack.pool.outages) == 1, within=30)
        outage = stack.pool.outages[0]
        settings = stack.pool.settings
        verdict = settings.heartbeat_timeout_s + settings.pong_timeout_s
        assert verdict <= outage.end - outage.start < verdict + 2.0
        await assert_fully_served(stack, topics)


@pytest.mark.parametrize("exclusive", [False, True], ids=["shared-topics", "exclusive-topics"])
async def test_socket_closing_rotates_make_before_break(make_stack: Any, exclusive: bool) -> None:
    """Whether the successor's subscription takes the topics from the old channel or not.

    The reference names ``another_channel_subscribed`` but not when it is
    sent [?]: if subscribing the successor displaces the old channel, that
    is the hand-over itself, not a loss, and not a reason to rotate again.
    """
    async with make_stack(fast_settings(exclusive_topics=exclusive)) as stack:
        topics, old = await start(stack)
        await stack.fault("socket_closing", channel_id=old, delay_s=30)
        await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old))
        assert stack.pool.stats()[0].rotations == 1
        assert list(stack.pool.outages) == []

        async def old_channel_closed() -> bool:
            channels = {c["id"]: c for c in await stack.control("channels")}
            return channels[old]["topic_count"] == 0 and not channels[old]["connected"]

        # The successor serves as soon as it is live; the old channel is then
        # emptied and its socket closed, well before the platform's 30 s deadline.
        await eventually(old_channel_closed, within=10.0)
        await assert_fully_served(stack, topics)


async def test_a_reconnection_opens_the_socket_while_the_channel_is_checked(
    make_stack: Any,
) -> None:
    """The HEAD and the upgrade go out together: one round trip less without a socket.

    The HEAD is answered a second late (a distant platform); the socket of
    the channel it asks about opens before that answer, and is kept once
    the answer says the channel exists.
    """
    async with make_stack() as stack:
        topics, channel_id = await start(stack)
        await stack.fault("slow_api", method="HEAD", delay_s=1.0)
        heads_answered_at_open: list[bool] = []

        def opened(link: Any) -> None:
            answered = [r for r in stack.emulator.requests if r["method"] == "HEAD"]
            heads_answered_at_open.append(bool(answered))

        stack.emulator.socket_opened.append(opened)
        await stack.fault("drop_socket", channel_id=channel_id)
        await eventually(lambda: stack.pool.stats()[0].reconnects == 1 and stack.pool.live)
        assert heads_answered_at_open == [False]
        assert [r["status"] for r in stack.emulator.requests if r["method"] == "HEAD"] == [200]
        assert stack.pool.channel_ids()[0] == channel_id
        await assert_fully_served(stack, topics)


async def test_a_socket_opened_on_a_channel_the_check_finds_gone_is_closed(
    make_stack: Any,
) -> None:
    """The channel dies while its HEAD is on the way: the socket opened meanwhile is let go.

    A new channel is made at once (no back-off: the HEAD said why), and no
    socket is left open on the dead one.
    """
    async with make_stack() as stack:
        topics, old = await start(stack)
        await stack.fault("slow_api", method="HEAD", delay_s=1.0)
        await stack.fault("drop_socket", channel_id=old)
        await eventually(lambda: old in stack.emulator.links)  # reopened, HEAD unanswered
        await stack.fault("expire_channel", channel_id=old, announce=False)
        await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old))
        new = stack.pool.channel_ids()[0]
        assert [r["status"] for r in stack.emulator.requests if r["method"] == "HEAD"] == [404]
        created = [
            r
            for r in stack.emulator.requests
            if r["method"] == "POST" and r["path"] == CHANNELS_PATH
        ]
        assert len(created) == 2  # the first channel and its replacement, no more
        await assert_fully_served(stack, topics)
        (outage,) = stack.pool.outages
        assert outage.channel_id == old
        # Not held up by the dead socket's close handshake, which never ends
        # (the platform's end of it went silent): let go in the background,
        # and closed within its close timeout.
        assert outage.end - outage.start < 1.0 + stack.pool.settings.close_timeout_s
        await eventually(lambda: not stack.pool._retiring)
        assert new in stack.emulator.links


async def test_a_new_socket_whose_first_pong_is_lost_is_pinged_again(make_stack: Any) -> None:
    """The reference: a pong may not come. One ping was all; then a heartbeat, or the timeout.

    With heartbeats a minute apart and the first pong lost, the socket sat
    unproven until its live timeout, then was given up and another opened.
    Now it is pinged again, and the first socket serves.
    """
    async with make_stack(
        fast_settings(heartbeat_interval_s=60.0),
        # The watchdog's own ping comes only after a silence this long.
        fast_pool_settings(live_timeout_s=20.0, pong_timeout_s=2.0, heartbeat_timeout_s=60.0),
    ) as stack:
        opened: list[str] = []
        stack.emulator.socket_opened.append(lambda link: opened.append(link.channel.id))
        await stack.fault("lose_pongs", count=1)
        topics, channel_id = await start(stack)
        assert stack.emulator.pongs_to_lose == 0  # the first ping was the one lost
        assert opened == [channel_id]  # one socket, kept
        assert stack.pool.stats()[0].reconnects == 0
        await assert_fully_served(stack, topics)


async def test_a_new_socket_that_never_answers_is_said_so(make_stack: Any) -> None:
    """Not "closed before its first frame": it never closed, it never answered."""
    failed: list[ControlEvent] = []
    async with make_stack(
        fast_settings(heartbeat_interval_s=60.0),
        fast_pool_settings(
            live_timeout_s=1.5,
            pong_timeout_s=0.5,
            heartbeat_timeout_s=60.0,
            max_reconnect_attempts=1,
        ),
    ) as stack:
        stack.pool.on_control.append(failed.append)
        await stack.fault("lose_pongs", count=1000)
        await asyncio.wait_for(stack.pool.set_topics(await stack.queue_topics()), 20)
        assert stack.pool.stats()[0].state == "failed"
    (failure,) = [e for e in failed if isinstance(e, ChannelFailed)]
    assert "did not answer within 1.5 s" in failure.error, failure


async def test_channels_answered_with_a_connect_uri_elsewhere_are_given_up_after_three(
    make_stack: Any,
) -> None:
    """Each attempt made a channel, for ever: other applications' idle channels were evicted.

    The platform (or a proxy rewriting its answers) names a streaming host
    that is not the region's. That will not change by retrying, and every
    retry costs a channel: after three the slot gives up, loudly, and the
    caller is not left waiting.
    """
    failed: list[ControlEvent] = []
    async with make_stack() as stack:
        stack.pool.on_control.append(failed.append)
        await stack.fault("foreign_connect_uri", count=100)
        await asyncio.wait_for(stack.pool.set_topics(await stack.queue_topics()), 20)
        assert stack.pool.stats()[0].state == "failed"
        made = [
            r
            for r in stack.emulator.requests
            if r["method"] == "POST" and r["path"] == CHANNELS_PATH
        ]
        assert len(made) == 3
    (failure,) = [e for e in failed if isinstance(e, ChannelFailed)]
    assert "refusing its connectUri 'wss://streaming.elsewhere.invalid/" in failure.error
    assert "gave up after 3 such channels in a row" in failure.error


async def test_topics_placed_on_a_slot_that_gave_up_make_it_try_again(make_stack: Any) -> None:
    """They waited on no socket, for ever, and nothing told the streams that wanted them."""
    async with make_stack() as stack:
        topics = await stack.queue_topics()
        await stack.fault("foreign_connect_uri", count=3)
        await asyncio.wait_for(stack.pool.set_topics(topics[:2]), 20)
        assert stack.pool.stats()[0].state == "failed"
        # The platform answers usable channels again; a stream adds topics.
        await asyncio.wait_for(stack.pool.set_topics(topics), 20)
        assert stack.pool.stats()[0].state == "live"
        await assert_fully_served(stack, topics)


async def test_a_slot_that_gives_up_reports_its_window_at_once(make_stack: Any) -> None:
    """The window since its socket was lost stayed open until a socket served again, or a stop.

    Either may be hours away: meanwhile the streams whose topics it carried
    heard of nothing. Giving up reports the window at once; the time after
    it is reported when the slot serves again (here: new topics make it try).
    """
    failed: list[ControlEvent] = []
    async with make_stack() as stack:
        stack.pool.on_control.append(failed.append)
        topics, old = await start(stack)
        await stack.fault("foreign_connect_uri", count=3)
        died_at = time.time()
        await stack.fault("expire_channel", channel_id=old)
        await eventually(lambda: stack.pool.stats()[0].state == "failed", within=20)
        (given_up,) = stack.pool.outages
        assert (given_up.reason, given_up.channel_id) == ("channel_failed", old)
        assert given_up.start <= died_at < given_up.end <= time.time()
        assert set(given_up.topics) == set(stack.pool._slots[0].desired_set)
        wanted = [*topics, f"v2.users.{uuid.UUID(int=9)}.presence"]
        await asyncio.wait_for(stack.pool.set_topics(wanted), 20)
        assert stack.pool.stats()[0].state == "live"
        first, second = stack.pool.outages
        assert first is given_up
        assert second.reason == "reconnect"
        assert second.start == given_up.end, "adjacent: nothing reported twice, nothing missed"
        await assert_fully_served(stack, wanted)
    assert [e for e in failed if isinstance(e, ChannelFailed)]


async def test_channel_expiry_creates_a_new_channel(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics, old = await start(stack)
        await stack.fault("expire_channel", channel_id=old)
        await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old))
        assert len(stack.pool.outages) == 1
        assert stack.pool.outages[0].channel_id == old
        assert stack.pool.stats()[0].gone == 1
        await assert_fully_served(stack, topics)


async def test_a_put_that_finds_the_channel_gone_replaces_it_once(make_stack: Any) -> None:
    """The 404 frame is optional [O]: a PUT's 404 may be the first sign that a channel died.

    The watchdog is made slow, so only the PUT can tell. The slot must act on
    that 404 (a new channel, the window reported from the last frame read),
    not PUT the dead channel again and again on the shared request budget.
    """
    pool_settings = fast_pool_settings(heartbeat_timeout_s=60.0)
    async with make_stack(fast_settings(), pool_settings) as stack:
        topics, old = await start(stack)
        died_at = time.time()
        await stack.fault("expire_channel", channel_id=old, announce=False)
        wanted = [*topics, f"v2.users.{uuid.UUID(int=7)}.presence"]
        await asyncio.wait_for(stack.pool.set_topics(wanted), 15)
        assert stack.pool.channel_ids()[0] not in (None, old)
        (outage,) = stack.pool.outages
        assert outage.channel_id == old
        assert outage.start <= died_at, "the window starts at the last frame read, not later"
        assert outage.end >= outage.start
        gone = [
            r
            for r in (await stack.control("requests"))["requests"]
            if r["method"] == "PUT" and old in r["path"]
        ]
        assert [r["status"] for r in gone].count(404) == 1, gone
        assert stack.pool.stats()[0].gone == 1
        await assert_fully_served(stack, wanted)


async def test_channel_expiring_soon_is_rotated_without_outage(make_stack: Any) -> None:
    settings = fast_settings(limits=PlatformLimits(channel_lifetime_s=3.0))
    async with make_stack(settings, fast_pool_settings(rotation_lead_s=1.0)) as stack:
        topics, old = await start(stack)
        await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old), within=10)
        assert stack.pool.stats()[0].rotations >= 1
        assert list(stack.pool.outages) == []
        await assert_fully_served(stack, topics)


async def test_eviction_by_a_channel_created_out_of_band(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics, ours = await start(stack)
        base = stack.emulator.base_url
        async with stack.session.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_auth("demo-client", "demo-secret")},
        ) as resp:
            token = (await resp.json())["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        try:
            # 19 more channels, each with a socket, so every channel has one
            # and ours is the least recently used: the 21st evicts it.
            for _ in range(20):
                async with stack.session.post(
                    f"{base}/api/v2/notifications/channels", headers=auth
                ) as resp:
                    channel = await resp.json()
                if len(sockets) < 19:
                    sockets.append(await stack.session.ws_connect(channel["connectUri"]))
            await eventually(lambda: stack.pool.channel_ids()[0] not in (None, ours))
            assert stack.pool.outages[0].channel_id == ours
            # Counted, as the sign of an eviction (or expiry) it is.
            assert stack.pool.stats()[0].gone == 1
            await assert_fully_served(stack, topics)
        finally:
            for ws in sockets:
                await ws.close()


@pytest.mark.parametrize("warn", [True, False], ids=["warned", "silent"])
async def test_token_revoked_reauthenticates_and_rotates(make_stack: Any, warn: bool) -> None:
    """Told (``token_revoked``) or not: the platform need not warn, and then a 401 says it."""
    async with make_stack() as stack:
        topics, old = await start(stack)
        first_token = stack.tokens.current
        await stack.fault("revoke_token", channel_id=old, warn=warn)
        revoked = time.time()
        await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old))
        assert stack.tokens.current is not first_token
        # The channel's subscriptions went with its token: a gap from before the news.
        await eventually(lambda: len(stack.pool.outages) == 1)
        (outage,) = stack.pool.outages
        assert outage.channel_id == old
        assert outage.start <= revoked < outage.end
        await assert_fully_served(stack, topics)


async def test_no_longer_subscribed_is_a_gap_until_the_successor_delivers(
    make_stack: Any,
) -> None:
    """The socket still works, but its subscriptions are gone: nothing comes on it."""
    async with make_stack() as stack:
        topics, old = await start(stack)
        await stack.fault("no_longer_subscribed", channel_id=old)
        told = time.time()
        await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old))
        await eventually(lambda: len(stack.pool.outages) == 1)
        (outage,) = stack.pool.outages
        assert outage.reason == "no_longer_subscribed"
        assert outage.channel_id == old
        assert outage.topics == frozenset(topics)
        # From the last frame read before the news, to the successor's first notification.
        assert outage.start <= told < outage.end
        new = stack.pool.channel_ids()[0]
        entries = (await stack.control("ledger"))["entries"]
        assert not [e for e in entries if e["channel_id"] == old and e["time"] > told]
        first_on_new = min(e["time"] for e in entries if e["channel_id"] == new)
        assert first_on_new <= outage.end + 0.5
        await assert_fully_served(stack, topics)


async def test_a_silence_before_a_reset_is_inside_the_gap(make_stack: Any) -> None:
    """A socket silent for a while, then reset before the watchdog fires: the gap starts
    at the last frame read, not at the reset."""
    async with make_stack(pool_settings=fast_pool_settings(heartbeat_timeout_s=30.0)) as stack:
        topics, channel_id = await start(stack)
        await stack.fault("pause_heartbeats", channel_id=channel_id)
        silenced = time.time()
        # The silence itself is the scenario: far shorter than the watchdog's 30 s.
        await asyncio.sleep(1.0)
        await stack.fault("drop_socket", channel_id=channel_id)
        await eventually(lambda: len(stack.pool.outages) == 1)
        (outage,) = stack.pool.outages
        assert outage.start <= silenced
        assert outage.end - outage.start >= 1.0
        await assert_fully_served(stack, topics)


async def test_token_expiry_rotates_before_the_channel_dies(make_stack: Any) -> None:
    settings = fast_settings(clients=[ClientApp("short", "short-secret", token_lifetime_s=3)])
    async with make_stack(settings, client_id="short", client_secret="short-secret") as stack:
        topics, _ = await start(stack)
        # Over three token lifetimes the channel is replaced ahead of each
        # expiry, and never lost.
        await eventually(lambda: stack.pool.stats()[0].rotations >= 2, within=12)
        assert list(stack.pool.outages) == []
        await assert_fully_served(stack, topics)


async def test_a_rotation_ahead_of_the_token_s_own_renewal_renews_it(make_stack: Any) -> None:
    """The rotation's lead (up to 300 s) comes before the token's renewal margin.

    By default it does for every lifetime under fifty minutes (the margin
    is a tenth of it, at least 60 s): a 30-minute token is renewed 180 s
    before its end, the channel it made rotated 300 s before. The rotation
    found no newer token, was skipped, and the channel died with its token:
    an outage at every expiry. Scaled down: a 4 s token renewed 0.3 s
    before its end, its channel rotated 1.5 s before.
    """
    client = ClientApp("short", "short-secret", token_lifetime_s=4)
    async with make_stack(
        fast_settings(clients=[client]),
        fast_pool_settings(rotation_lead_s=1.5),
        client_id="short",
        client_secret="short-secret",
        refresh_margin_s=0.3,
    ) as stack:
        topics, channel_id = await start(stack)
        creator = await stack.tokens.token()
        await eventually(lambda: stack.pool.channel_ids()[0] != channel_id, within=10)
        assert time.monotonic() < stack.tokens.refresh_due(creator), "renewed for the rotation"
        assert stack.pool.stats()[0].rotations == 1
        await eventually(lambda: time.monotonic() >= creator.expires_at + 0.5, within=10)
        assert list(stack.pool.outages) == []
        await assert_fully_served(stack, topics)


async def test_a_reused_channel_is_rotated_before_the_token_that_created_it_dies(
    make_stack: Any,
) -> None:
    """A channel dies with the token that created it [O], not with today's token.

    The token is refreshed, then the socket drops: the reconnect reuses the
    channel, made with the old token. It must be rotated ahead of that
    token's expiry, or it dies then with a second outage.
    """
    # Refreshed half-way (2.5 s in); the reused channel must be rotated a
    # second before the creator's end (4 s), and is looked at a second after.
    settings = fast_settings(clients=[ClientApp("short", "short-secret", token_lifetime_s=5)])
    pool_settings = fast_pool_settings(rotation_lead_s=1.0)
    async with make_stack(
        settings, pool_settings, client_id="short", client_secret="short-secret"
    ) as stack:
        creator = await stack.tokens.token()
        topics, channel_id = await start(stack)
        await eventually(lambda: time.monotonic() >= stack.tokens.refresh_due(creator), within=10)
        assert (await stack.tokens.token()) is not creator
        await stack.fault("drop_socket", channel_id=channel_id)
        await eventually(lambda: len(stack.pool.outages) == 1)
        assert stack.pool.channel_ids()[0] == channel_id, "the channel was reused"
        await eventually(lambda: time.monotonic() >= creator.expires_at + 1.0, within=10)
        assert stack.pool.stats()[0].rotations >= 1
        assert stack.pool.channel_ids()[0] != channel_id
        assert len(stack.pool.outages) == 1, list(stack.pool.outages)
        await assert_fully_served(stack, topics)


async def test_429_on_subscribe_waits_for_retry_after(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics = await stack.queue_topics()
        await stack.fault("http_429", path="/subscriptions", retry_after_s=1, count=1)
        assert await stack.pool.set_topics(topics) == []
        log = (await stack.control("requests"))["requests"]
        subs = [r for r in log if r["path"].endswith("/subscriptions")]
        assert [r["status"] for r in subs[:2]] == [429, 200]
        assert subs[1]["time"] - subs[0]["time"] >= 1.0
        await assert_fully_served(stack, topics)


async def test_5xx_when_creating_channels_is_retried(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics = await stack.queue_topics()
        await stack.fault(
            "http_5xx", path="/notifications/channels", method="POST", status=503, count=2
        )
        assert await stack.pool.set_topics(topics) == []
        statuses = [
            r["status"]
            for r in (await stack.control("requests"))["requests"]
            if r["method"] == "POST" and r["path"] == "/api/v2/notifications/channels"
        ]
        assert statuses == [503, 503, 200]
        await assert_fully_served(stack, topics)


async def test_a_subscription_put_failing_while_establishing_reuses_the_new_channel(
    make_stack: Any,
) -> None:
    """Each retry of the slot's set-up must not create another channel.

    Channels cannot be deleted, and a client has 20: one made per failed
    attempt would soon make the platform evict the live ones.
    """
    async with make_stack() as stack:
        topics = await stack.queue_topics()
        # More failures in a row than one REST call retries: the set-up
        # fails a few times over.
        await stack.fault("http_5xx", path="/subscriptions", method="PUT", status=503, count=12)
        assert await asyncio.wait_for(stack.pool.set_topics(topics), 30) == []
        log = (await stack.control("requests"))["requests"]
        created = [
            r["status"]
            for r in log
            if r["method"] == "POST" and r["path"] == "/api/v2/notifications/channels"
        ]
        assert created == [200], f"one channel, reused by every retry; got {created}"
        puts = [r["status"] for r in log if r["method"] == "PUT"]
        assert puts.count(503) == 12
        assert puts[-1] == 200
        await assert_fully_served(stack, topics)


async def test_one_forbidden_topic_among_many(make_stack: Any) -> None:
    client = ClientApp("limited", "limited-secret", permissions=frozenset({"routing:queue:view"}))
    async with make_stack(
        fast_settings(clients=[client]), client_id="limited", client_secret="limited-secret"
    ) as stack:
        queue_topics = await stack.queue_topics()
        org = await stack.control("org")
        forbidden = f"v2.users.{org['users'][0]['id']}.presence"
        rejected = await stack.pool.set_topics([*queue_topics, forbidden])
        assert [(r.topic, r.missing_permissions) for r in rejected] == [
            (forbidden, ("presence:userPresence:view",))
        ]
        assert rejected[0].reason
        (channel_id,) = stack.pool.channel_ids().values()
        channels = {c["id"]: c for c in await stack.control("channels")}
        assert channels[channel_id]["topic_count"] == len(queue_topics)
        note: InboundNotification = await asyncio.wait_for(anext(aiter(stack.pool.frames())), 10)
        assert note.topic in queue_topics


@pytest.mark.parametrize("refusal", ["whole", "parts"])
async def test_a_forbidden_part_of_a_combined_topic_takes_nothing_else_with_it(
    make_stack: Any, refusal: Literal["whole", "parts"]
) -> None:
    """A user's permitted presence is combined with their forbidden calls topic.

    The platform may refuse the combined topic whole (the reference leaves it
    open): the parts are then sent apart, so the presence topic is
    subscribed and the refusal names the calls topic, as a platform
    answering part by part would.
    """
    client = ClientApp(
        "limited", "limited-secret", permissions=frozenset({"presence:userPresence:view"})
    )
    settings = dataclasses.replace(fast_settings(clients=[client]), combined_refusal=refusal)
    async with make_stack(settings, client_id="limited", client_secret="limited-secret") as stack:
        user = (await stack.control("org"))["users"][0]["id"]
        presence, calls = f"v2.users.{user}.presence", f"v2.users.{user}.conversations.calls"
        rejected = await stack.pool.set_topics([presence, calls])
        assert [(r.topic, r.missing_permissions) for r in rejected] == [
            (calls, ("conversation:communication:view",))
        ]
        (channel_id,) = stack.pool.channel_ids().values()
        assert stack.emulator.platform.channels[channel_id].topics.keys() == {presence}
        # Sent apart from then on: a change does not refuse the presence topic again.
        more = f"v2.users.{user}.routingStatus"
        await stack.pool.set_topics([presence, calls, more])
        assert set(stack.emulator.platform.channels[channel_id].topics) == {presence}


async def test_a_platform_that_takes_no_combined_topic_gets_them_apart(make_stack: Any) -> None:
    """Each topic alone is taken, their combination is not (400): sent plain, none rejected.

    The reference shows one shape of combined topic and no promise beyond
    it. Without this the slot would find no single topic to blame and retry
    the same refused list for ever.
    """
    settings = dataclasses.replace(fast_settings(), combined_topics="none")
    async with make_stack(settings) as stack:
        user = (await stack.control("org"))["users"][0]["id"]
        topics = [f"v2.users.{user}.presence", f"v2.users.{user}.routingStatus"]
        # One at first: the refused combination is then of a topic the
        # channel carries already and a new one.
        await asyncio.wait_for(stack.pool.set_topics(topics[:1]), 20)
        rejected = await asyncio.wait_for(stack.pool.set_topics(topics), 20)
        assert rejected == []
        (channel_id,) = stack.pool.channel_ids().values()
        assert list(stack.emulator.platform.channels[channel_id].topics) == topics
        # And they stay apart: a change is one PUT that is taken at once.
        more = [*topics, f"v2.users.{user}.conversations"]
        before = len((await stack.control("requests"))["requests"])
        await asyncio.wait_for(stack.pool.set_topics(more), 20)
        changes = (await stack.control("requests"))["requests"][before:]
        assert [(r["method"], r["status"]) for r in changes if "subscriptions" in r["path"]] == [
            ("PUT", 200)
        ]


def _unlisted(n: int) -> str:
    """A detail-event topic in the grammar that the platform does not have."""
    return f"v2.detail.events.conversation.{uuid.UUID(int=100 + n)}.agent.start"


async def test_a_topic_the_platform_does_not_have_is_rejected_and_the_rest_flow(
    make_stack: Any,
) -> None:
    """One such topic fails the whole PUT (400): it is found and left out, not retried forever."""
    async with make_stack() as stack:
        queue_topics = await stack.queue_topics()
        invalid = _unlisted(1)
        rejected = await asyncio.wait_for(stack.pool.set_topics([*queue_topics, invalid]), 20)
        assert [r.topic for r in rejected] == [invalid]
        assert "not a topic the platform has" in rejected[0].reason
        log = (await stack.control("requests"))["requests"]
        created = [r for r in log if r["method"] == "POST" and r["path"].endswith("/channels")]
        assert len(created) == 1
        # The failed PUT, the search (about two calls per halving), the PUT that sticks.
        changes = [r for r in log if r["path"].endswith("/subscriptions")]
        assert len(changes) <= 4 + 2 * len(queue_topics).bit_length(), changes
        await assert_fully_served(stack, queue_topics)
        assert stack.pool.stats()[0].reconnects == 0


async def test_invalid_topics_added_to_a_live_channel_take_nothing_away(make_stack: Any) -> None:
    async with make_stack() as stack:
        topics, channel_id = await start(stack)
        invalid = [_unlisted(1), _unlisted(2)]
        valid = f"v2.users.{uuid.UUID(int=7)}.presence"
        rejected = await asyncio.wait_for(
            stack.pool.set_topics([*topics, invalid[0], valid, invalid[1]]), 20
        )
        assert sorted(r.topic for r in rejected) == sorted(invalid)
        assert stack.pool.channel_ids()[0] == channel_id
        assert list(stack.pool.outages) == []
        assert stack.pool.stats()[0].reconnects == 0
        await assert_fully_served(stack, [*topics, valid])
        # Later changes leave the invalid ones out without another search.
        before = len((await stack.control("requests"))["requests"])
        more = f"v2.users.{uuid.UUID(int=8)}.presence"
        rejected = await stack.pool.set_topics([*topics, *invalid, valid, more])
        assert sorted(r.topic for r in rejected) == sorted(invalid)
        after = (await stack.control("requests"))["requests"][before:]
        assert [r["method"] for r in after if r["path"].endswith("/subscriptions")] == ["PUT"]
        await assert_fully_served(stack, [*topics, valid, more])


async def test_a_socket_upgrade_that_is_never_answered_is_given_up_in_time() -> None:
    """A dead link answers nothing, not even the WebSocket handshake.

    A stand-in platform hands out channels whose socket address takes the
    connection and never answers: each attempt ends after ``live_timeout_s``
    (not aiohttp's five minutes), and the slot moves on to the next.
    """
    upgrades: list[float] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "opaque-token", "expires_in": 3600})

    async def create_channel(request: web.Request) -> web.Response:
        port = request.url.port
        return web.json_response(
            {"id": "c1", "connectUri": f"ws://127.0.0.1:{port}/channels/c1", "expires": None}
        )

    async def subscriptions(request: web.Request) -> web.Response:
        topics = [{"id": t["id"], "state": "Permitted"} for t in await request.json()]
        return web.json_response({"entities": topics})

    async def channel_exists(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def upgrade(request: web.Request) -> web.Response:
        upgrades.append(time.monotonic())
        await asyncio.Event().wait()  # cancelled when the stand-in stops
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/api/v2/notifications/channels", create_channel)
    app.router.add_route("HEAD", "/api/v2/notifications/channels/c1", channel_exists)
    app.router.add_put("/api/v2/notifications/channels/c1/subscriptions", subscriptions)
    app.router.add_get("/channels/c1", upgrade)
    settings = fast_pool_settings(live_timeout_s=0.5, max_reconnect_attempts=2)
    async with stand_in(app, free_port()) as base, aiohttp.ClientSession() as session:
        endpoints = Endpoints.custom(base)
        backoff = Backoff(0.01, 0.02)
        tokens = TokenProvider(session, endpoints, "id", "secret", backoff=backoff)
        rest = RestClient(session, endpoints, tokens, backoff=backoff)
        async with ChannelPool(session, rest, tokens, settings) as pool:
            started = time.monotonic()
            await asyncio.wait_for(pool.set_topics([f"v2.users.{uuid.UUID(int=1)}.presence"]), 10)
            assert pool.stats()[0].state == "failed"
    assert len(upgrades) == 2
    assert upgrades[1] - started < 0.5 + 1.0


async def test_a_client_without_the_notifications_scope_fails_loudly_at_once(
    make_stack: Any,
) -> None:
    """Its credentials work, but no channel can be had: a refusal that does not heal."""
    client = ClientApp("no-scope", "no-scope-secret", scopes=frozenset({"routing"}))
    async with make_stack(
        fast_settings(clients=[client]), client_id="no-scope", client_secret="no-scope-secret"
    ) as stack:
        with pytest.raises(AuthenticationError, match="needs the 'notifications' scope") as caught:
            await asyncio.wait_for(
                stack.pool.set_topics([f"v2.users.{uuid.UUID(int=1)}.presence"]), 10
            )
        assert "HTTP 403" in str(caught.value)
        assert stack.pool.failure is caught.value
        log = (await stack.control("requests"))["requests"]
        created = [r["status"] for r in log if r["path"] == "/api/v2/notifications/channels"]
        assert created == [403], "refused for good: not retried"


async def test_a_channel_refused_to_a_fresh_token_fails_loudly_at_once(make_stack: Any) -> None:
    """401 to create a channel, and 401 again with a token just issued: not retried for ever."""
    async with make_stack() as stack:
        await stack.fault("http_5xx", status=401, count=2, path=CHANNELS_PATH, method="POST")
        with pytest.raises(AuthenticationError, match="refused a token it had just issued"):
            await asyncio.wait_for(
                stack.pool.set_topics([f"v2.users.{uuid.UUID(int=1)}.presence"]), 10
            )
        log = (await stack.control("requests"))["requests"]
        created = [r["status"] for r in log if r["path"] == CHANNELS_PATH]
        assert created == [401, 401], "refused twice (the second with a new token): no more"


@pytest.mark.parametrize("status", [503, 401])
async def test_without_a_newer_token_the_channel_ends_with_its_own(
    make_stack: Any, status: int
) -> None:
    """A rotation ahead of the token's expiry needs a newer token to rotate onto.

    With the login down (503) or refusing the credentials (401), the early
    refresh fails and the current token is used until it expires. A
    successor made with that same token would die at the same moment: each
    one was rotated again at half the time left, creating channels ever
    faster (every one an eviction risk) until the end. Now the channel
    serves on and ends with its token; a refusal stops the pool then, not
    at the first failed refresh. The declined rotation does not spend the
    socket's: a warning from the platform meanwhile is still acted on.
    """
    # Refreshed early and rotated half-way through (3 s in); the last resort
    # comes a second before the end, so the refresh fails (once: no
    # retries) with two seconds of the token's life left to use.
    client = ClientApp("short", "short-secret", token_lifetime_s=6)
    async with make_stack(
        fast_settings(clients=[client]),
        client_id="short",
        client_secret="short-secret",
        token_attempts=1,
        last_resort_s=1.0,
    ) as stack:
        _, channel_id = await start(stack)
        creator = await stack.tokens.token()
        await stack.fault("http_5xx", path="/oauth/token", status=status, count=100_000)
        # Past the rotation, and past where a successor made with the same
        # token would have been made (at once, the refresh failing at once).
        half_way = creator.expires_at - creator.lifetime_s / 2
        await eventually(lambda: time.monotonic() >= half_way + 0.5, within=15)
        assert stack.pool.failure is None
        assert stack.pool.channel_ids()[0] == channel_id
        assert list(stack.pool.outages) == []
        log = (await stack.control("requests"))["requests"]
        created = [r for r in log if r["path"] == "/api/v2/notifications/channels"]
        assert len(created) == 1, [r["time"] for r in created]
        if status == 503:
            await stack.fault("no_longer_subscribed", channel_id=channel_id)
            await eventually(lambda: stack.pool.channel_ids()[0] != channel_id, within=5)
            assert stack.pool.stats()[0].rotations == 1
        if status == 401:
            await eventually(lambda: stack.pool.failure is not None, within=10)
            assert isinstance(stack.pool.failure, AuthenticationError)
            assert time.monotonic() >= creator.expires_at - 1.0, "not before the last resort"


async def test_a_socket_lost_while_its_successor_cannot_be_made_is_lost_at_once(
    make_stack: Any,
) -> None:
    """A maintenance close during a rotation whose new channel the platform refuses (5xx).

    The old socket closing is a loss like any other: the slot is not live
    and the channel is reported lost at once, not once a successor exists
    (the platform may refuse for minutes, with /readyz saying ready).
    """
    async with make_stack() as stack:
        topics, old = await start(stack)
        facts: list[ControlEvent] = []
        stack.pool.on_control.append(facts.append)
        await stack.fault(
            "http_5xx", path="/api/v2/notifications/channels", method="POST", status=503, count=15
        )
        await stack.fault("socket_closing", channel_id=old, delay_s=0.5)
        await eventually(lambda: any(isinstance(f, ChannelLost) for f in facts), within=5.0)
        lost = next(f for f in facts if isinstance(f, ChannelLost))
        assert lost.channel_id == old
        assert not stack.pool.live
        assert stack.pool.stats()[0].live is False
        log = (await stack.control("requests"))["requests"]
        created = [r["status"] for r in log if r["path"] == "/api/v2/notifications/channels"]
        # The first channel, then the successor attempted, and not made yet.
        assert created[0] == 200
        assert created[1:]
        assert set(created[1:]) == {503}
        # Once the platform gives channels again, the successor closes the window.
        await eventually(lambda: stack.pool.live, within=30.0)
        (outage,) = stack.pool.outages
        assert outage.channel_id == old
        await assert_fully_served(stack, topics)
