"""Desired-topic changes: incremental, serialised, latest wins; slots open and close."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from genesys_mux.emulator import PlatformLimits
from genesys_mux.net.connection import PoolSettings
from tests.net.conftest import eventually, fast_pool_settings, fast_settings


def presence(n: int, offset: int = 0) -> list[str]:
    return [f"v2.users.{uuid.UUID(int=i + 1 + offset)}.presence" for i in range(n)]


async def emulator_topics(stack: Any, channel_id: str) -> set[str]:
    async with stack.session.get(
        f"{stack.emulator.base_url}/api/v2/notifications/channels/{channel_id}/subscriptions",
        headers={"Authorization": (await stack.tokens.token()).authorization},
    ) as resp:
        return {e["id"] for e in (await resp.json())["entities"]}


async def test_latest_desired_state_wins_over_concurrent_changes(make_stack: Any) -> None:
    """On a platform where overlapping PUTs race (section 4), only serialised changes are safe."""
    settings = fast_settings(rate=0.0, subscription_apply_jitter_s=0.1)
    async with make_stack(settings) as stack:
        await stack.pool.set_topics(presence(3))
        (channel_id,) = stack.pool.channel_ids().values()
        # Fire many changes without waiting; only the last one may stick.
        sets = [presence(3 + i) for i in range(8)]
        for topics in sets:
            await stack.pool.set_topics(topics, wait=False)
        await eventually(lambda: stack.pool.live)
        assert await emulator_topics(stack, channel_id) == set(sets[-1])
        (listed,) = [c for c in await stack.control("channels") if c["id"] == channel_id]
        assert listed["most_subscription_calls"] == 1, "never two changes to a channel at once"
        # One channel throughout: changes never move topics elsewhere.
        assert list(stack.pool.channel_ids().values()) == [channel_id]


async def test_a_slot_with_no_topics_left_is_emptied_and_closed(make_stack: Any) -> None:
    pool_settings = fast_pool_settings(topics_per_channel=2, max_channels=5)
    async with make_stack(fast_settings(rate=0.0), pool_settings) as stack:
        topics = presence(4)
        await stack.pool.set_topics(topics)
        ids = stack.pool.channel_ids()
        assert len(ids) == 2
        # Removing the second slot's topics closes that slot only.
        await stack.pool.set_topics(topics[:2])
        assert list(stack.pool.channel_ids()) == [0]

        async def retired() -> bool:
            channels = {c["id"]: c for c in await stack.control("channels")}
            closed = channels[ids[1]]
            return closed["topic_count"] == 0 and not closed["connected"]

        await eventually(retired)


async def test_every_slot_rotates_after_a_mass_maintenance_warning(make_stack: Any) -> None:
    # A platform that allows only 5 channels: 4 slots in use, 1 spare. Every
    # rotation borrows the spare, so rotations must take turns, and retired
    # channels (with no socket) are what the platform evicts.
    emulator_settings = fast_settings(rate=0.0, limits=PlatformLimits(channels_per_client=5))
    pool_settings = fast_pool_settings(topics_per_channel=2, max_channels=5, rotation_overlap_s=0.2)
    async with make_stack(emulator_settings, pool_settings) as stack:
        topics = presence(8)
        await stack.pool.set_topics(topics)
        before = dict(stack.pool.channel_ids())
        assert len(before) == 4
        await stack.fault("socket_closing", delay_s=10)
        await eventually(
            lambda: all(stack.pool.channel_ids()[i] not in (None, before[i]) for i in before),
            within=20,
        )
        assert list(stack.pool.outages) == []
        assert all(s.rotations == 1 for s in stack.pool.stats().values())
        for slot, channel_id in stack.pool.channel_ids().items():
            assert channel_id is not None
            assert await emulator_topics(stack, channel_id) == set(stack.pool._planner.slots[slot])


async def test_frames_iteration_ends_when_the_pool_closes(make_stack: Any) -> None:
    async with make_stack(fast_settings(rate=0.0)) as stack:
        await stack.pool.set_topics(presence(1))

        async def drain() -> int:
            return sum([1 async for _ in stack.pool.frames()])

        reader = asyncio.create_task(drain())
        await stack.pool.close()
        assert await asyncio.wait_for(reader, 5) == 0


async def test_a_failing_subscription_change_keeps_the_socket_and_retries(make_stack: Any) -> None:
    async with make_stack(fast_settings(rate=0.0)) as stack:
        await stack.pool.set_topics(presence(2))
        (channel_id,) = stack.pool.channel_ids().values()
        # More failures in a row than one REST call retries: the change fails
        # once, is retried later on the same live socket, and then sticks.
        await stack.fault("http_5xx", path="/subscriptions", method="PUT", status=503, count=10)
        wanted = presence(5)
        await asyncio.wait_for(stack.pool.set_topics(wanted), 30)
        assert await emulator_topics(stack, channel_id) == set(wanted)
        assert stack.pool.channel_ids()[0] == channel_id
        assert stack.pool.stats()[0].reconnects == 0
        assert list(stack.pool.outages) == []
        statuses = [
            r["status"]
            for r in (await stack.control("requests"))["requests"]
            if r["method"] == "PUT"
        ]
        assert statuses.count(503) == 10
        assert statuses[-1] == 200


def taking_turns() -> PoolSettings:
    """Slots of two topics on a 5-channel budget, rotating one at a time."""
    return fast_pool_settings(
        topics_per_channel=2, max_channels=5, rotation_overlap_s=0.2, parallel_rotations=False
    )


async def every_slot_replaced(stack: Any, before: dict[int, str | None]) -> None:
    """Until every slot of ``before`` serves on another channel."""
    await eventually(
        lambda: all(stack.pool.channel_ids()[i] not in (None, before[i]) for i in before),
        within=15,
    )


async def test_a_socket_closed_while_its_rotation_waits_for_a_turn_is_replaced_at_once(
    make_stack: Any,
) -> None:
    """A warning to every socket, rotations taking turns, the platform slow to answer.

    The second slot's socket closes while its rotation waits for the one
    spare channel. It no longer needs one: it is re-established at once, as
    any lost socket is, instead of waiting out the first rotation (a 3 s
    socket upgrade here) with its window open.
    """
    async with make_stack(fast_settings(rate=0.0), taking_turns()) as stack:
        await stack.pool.set_topics(presence(4))
        before = dict(stack.pool.channel_ids())
        assert len(before) == 2
        await stack.fault("slow_accept", delay_s=3.0)
        await stack.fault("socket_closing", delay_s=0.3)
        await every_slot_replaced(stack, before)
        await eventually(lambda: len(stack.pool.outages) == 2, within=5)
        durations = sorted(o.end - o.start for o in stack.pool.outages)
        assert durations[0] < 1.5, durations
        assert stack.pool.live


async def test_a_revocation_gets_one_new_token_not_one_per_slot(make_stack: Any) -> None:
    """``token_revoked`` on every channel: each rotation re-authenticates first.

    The platform lets the channels live on a while after the warning, so
    they are rotated. Rotations taking turns, each asked for a new token
    after the one before had replaced the revoked token: a token request
    per slot.
    """
    async with make_stack(fast_settings(rate=0.0), taking_turns()) as stack:
        await stack.pool.set_topics(presence(6))
        before = dict(stack.pool.channel_ids())
        assert len(before) == 3
        mark = len((await stack.control("requests"))["requests"])
        await stack.fault("revoke_token", client_id="demo-client", channels_die_after_s=20)
        await every_slot_replaced(stack, before)
        assert sum(s.rotations for s in stack.pool.stats().values()) == 3
        log = (await stack.control("requests"))["requests"][mark:]
        tokens = [r for r in log if r["path"] == "/oauth/token" and r["status"] == 200]
        assert len(tokens) == 1, [r["time"] for r in tokens]


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "taking-turns"])
async def test_rotations_borrow_every_free_channel_unless_told_to_take_turns(
    make_stack: Any, parallel: bool
) -> None:
    """3 slots of a 10-channel budget: 7 free, so the 3 rotations may run at once.

    The channels are quiet, so each rotation waits its whole overlap for the
    successor's first notification: taking turns, the last one would start
    two overlaps late. A cluster member takes turns (its share of the
    client's channels is counted with one spare). Never more sockets than
    the budget, either way.
    """
    emulator_settings = fast_settings(rate=0.0, limits=PlatformLimits(channels_per_client=10))
    pool_settings = fast_pool_settings(
        topics_per_channel=2, max_channels=10, rotation_overlap_s=1.0, parallel_rotations=parallel
    )
    async with make_stack(emulator_settings, pool_settings) as stack:
        await stack.pool.set_topics(presence(6))
        before = dict(stack.pool.channel_ids())
        assert len(before) == 3
        peak = 0

        async def rotated() -> bool:
            nonlocal peak
            connected = [c for c in await stack.control("channels") if c["connected"]]
            peak = max(peak, len(connected))
            return all(stack.pool.channel_ids()[i] not in (None, before[i]) for i in before)

        await stack.fault("socket_closing", delay_s=30)
        await eventually(rotated, within=20, interval=0.05)
        assert list(stack.pool.outages) == []
        assert peak <= 10
        if parallel:
            assert peak > 3 + 1, f"at most {peak} sockets at once: the rotations took turns"
        else:
            assert peak <= 3 + 1, f"{peak} sockets at once: more than one spare borrowed"
