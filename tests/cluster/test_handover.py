"""A stream moving between two Multiplexers on one shared Redis state: standby, handover, failover.

The next owner subscribes on standby while the current one still delivers;
the current one hands over (its checkpoint leaves out what is not
acknowledged); the next one activates from that checkpoint. Against the
emulator and a real redis-server.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from genesys_mux import Gap, Multiplexer, StreamEvent
from genesys_mux.core.events import ControlEvent, StreamActivated
from genesys_mux.emulator import Emulator
from genesys_mux.errors import FencedStateError, InvalidStateError
from genesys_mux.state import RedisStateStore
from tests.net.test_multiplexer import FAST_POOL, Collector, org_settings
from tests.sinks.conftest import RedisServer
from tests.state.test_restart import a_mux, post_fault
from tests.waiting import eventually

STREAM = {"id": "all", "filter": {}, "buffer_size": 5000}


@asynccontextmanager
async def member(
    emulator: Emulator, redis_server: RedisServer, **options: Any
) -> AsyncIterator[Multiplexer]:
    """A started Multiplexer keeping its state in the shared Redis."""
    mux = a_mux(emulator, RedisStateStore(redis_server.url, prefix="shared:"), **options)
    await mux.start()
    try:
        yield mux
    finally:
        await mux.stop(drain=False)


@asynccontextmanager
async def two_members(
    redis_server: RedisServer, rate: float = 30.0, **options: Any
) -> AsyncIterator[tuple[Multiplexer, Multiplexer]]:
    """The stream's owner now and its next one, on one emulator and one Redis."""
    async with (
        Emulator(org_settings(rate=rate)) as emulator,
        member(emulator, redis_server, **options) as old,
        member(emulator, redis_server, **options) as new,
    ):
        yield old, new


def keys(events: list[StreamEvent]) -> set[tuple[str | None, bytes]]:
    return {(e.content_key, e.digest) for e in events}


async def test_a_planned_handover_has_no_gap_and_no_repeat(redis_server: RedisServer) -> None:
    async with two_members(redis_server) as (old, new):
        await old.add_stream(STREAM)
        before = Collector(old.stream("all"))
        await eventually(lambda: len(before.events()) >= 10)
        facts: list[ControlEvent] = []
        new.on_control.append(facts.append)
        # Make before break: subscribed (it returns once it is), keeping, not delivering.
        await new.add_stream(STREAM, standby=True)
        after = Collector(new.stream("all"))
        seen_then = len(before.events())
        await eventually(lambda: len(before.events()) >= seen_then + 10)
        saved = await old.handover("all")
        assert saved is not None
        # Its own checkpoint is no fallback any more: the next owner's are the stream's.
        assert "all" not in old._written
        await new.activate("all", reason="handover")
        await eventually(lambda: len(after.events()) >= 10)
        await eventually(lambda: before._task.done())
    delivered_before, delivered_after = before.events(), after.events()
    # The old owner's readers stopped; what it delivered is what its checkpoint settled.
    assert saved.next_sequence == delivered_before[-1].sequence + 1
    assert [e.sequence for e in delivered_after[:3]] == [
        saved.next_sequence,
        saved.next_sequence + 1,
        saved.next_sequence + 2,
    ]
    # No window without an owner, and nothing delivered twice.
    assert after.gaps() == []
    assert not keys(delivered_before) & keys(delivered_after)
    (activated,) = [f for f in facts if isinstance(f, StreamActivated)]
    assert activated.reason == "handover"
    assert activated.kept > 0


async def test_a_failover_continues_from_the_last_checkpoint(redis_server: RedisServer) -> None:
    # Only the test's own checkpoints, so that the "dead" owner writes none after it.
    async with two_members(redis_server, checkpoint_interval_s=3600.0) as (old, new):
        await old.add_stream(STREAM)
        before = Collector(old.stream("all", settle=False))
        await eventually(lambda: len(before.events()) >= 10)
        # Acknowledged up to here, checkpointed, and then the owner "dies":
        # what it delivered later was never acknowledged.
        acknowledged = before.events()[:5]
        old.settle("all", acknowledged[-1].sequence)
        await old.checkpoint()
        old._checkpointing = False  # a dead process writes nothing more
        await new.add_stream(STREAM, standby=True)
        after = Collector(new.stream("all"))
        await new.activate("all")
        await eventually(lambda: len(after.events()) >= 10)
    # Numbering continues from the first event not acknowledged; those
    # delivered but not acknowledged may come again, with the same keys.
    assert after.events()[0].sequence == acknowledged[-1].sequence + 1
    assert not keys(acknowledged) & keys(after.events())
    assert all(g.reason == "failover" for g in after.gaps())


async def test_the_failover_gap_lasts_until_every_channel_of_the_standby_is_subscribed(
    redis_server: RedisServer,
) -> None:
    """Not until the first notification kept: it proves only its own channel's subscription.

    The stream takes two channels of two topics. The next owner's first
    socket upgrade is answered two seconds late, so one of its channels
    subscribes (once its socket is open) two seconds after the other, which
    meanwhile keeps what it receives.
    """
    options: dict[str, Any] = {
        "checkpoint_interval_s": 3600.0,
        "pool_settings": dataclasses.replace(FAST_POOL, topics_per_channel=2),
    }
    async with (
        Emulator(org_settings(rate=30.0)) as emulator,
        member(emulator, redis_server, **options) as old,
        member(emulator, redis_server, **options) as new,
    ):
        await old.add_stream(STREAM)
        before = Collector(old.stream("all"))
        await eventually(lambda: len(before.events()) >= 5)
        await old.checkpoint()
        old._checkpointing = False  # a dead process writes nothing more
        await post_fault(emulator, "slow_accept", delay_s=2.0)
        started = time.time()
        await new.add_stream(STREAM, standby=True)
        assert new.pool is not None
        assert len(new.pool.channel_ids()) == 2
        kept = list(new._streams["all"].standby or ())
        after = Collector(new.stream("all"))
        await new.activate("all")
        await eventually(lambda: bool(after.gaps()))
    (gap,) = after.gaps()
    assert gap.reason == "failover"
    # The early channel kept notifications inside the window...
    assert kept
    assert kept[0].received_at < gap.end
    # ...which lasts until the late one was subscribed, after its slow socket.
    assert gap.end >= started + 2.0


async def test_an_owner_that_lost_the_stream_cannot_write_its_state(
    redis_server: RedisServer,
) -> None:
    """Fencing of the shared state: the new owner's claim turns the old one's checkpoints away.

    The old owner (fencing token 1) is "frozen" past its lease: the new
    owner (token 2) activates, claiming the stream, and checkpoints. When
    the old one wakes up, its checkpoint is refused and the stream's
    checkpoints stop there; the state stays the new owner's. An owner with
    an older token cannot activate the stream any more either.
    """
    # Only the test's own checkpoints: a periodic one would meet the fence
    # first, and the call below would find the stream already fenced off.
    async with two_members(redis_server, checkpoint_interval_s=3600.0) as (old, new):
        await old.add_stream(STREAM, standby=True)
        await old.activate("all", fence=1)
        before = Collector(old.stream("all"))
        await eventually(lambda: len(before.events()) >= 5)
        assert await old.checkpoint() == 1
        await new.add_stream(STREAM, standby=True)
        after = Collector(new.stream("all"))
        await new.activate("all", fence=2)
        await eventually(lambda: len(after.events()) >= 5)
        assert await new.checkpoint() == 1
        ours = (await new.state_store.load())["all"]
        assert ours.fence == 2
        await eventually(lambda: len(before.events()) >= 10)  # the old one carries on, unaware
        with pytest.raises(FencedStateError) as caught:
            await old.checkpoint()
        assert caught.value.streams == {"all": 2}
        assert await old.checkpoint() == 0  # fenced off: no more attempts
        assert await old.handover("all") is None  # nor a final checkpoint
        assert (await new.state_store.load())["all"] == ours
        await old.add_stream(STREAM, standby=True)
        with pytest.raises(FencedStateError):
            await old.activate("all", fence=1)
        # Still on standby: with a newer token (a lease taken again), it activates.
        await old.activate("all", fence=3)
        assert await old.checkpoint() == 1
        assert (await old.state_store.load(only=["all"]))["all"].fence == 3


async def test_activating_a_stream_not_on_standby_is_refused(redis_server: RedisServer) -> None:
    async with Emulator(org_settings()) as emulator, member(emulator, redis_server) as mux:
        await mux.add_stream(STREAM)
        with pytest.raises(InvalidStateError, match="not on standby"):
            await mux.activate("all")


async def test_a_standby_that_overflowed_reports_the_window_it_lost(
    redis_server: RedisServer,
) -> None:
    small = {**STREAM, "buffer_size": 5}
    async with two_members(redis_server, rate=40.0) as (old, new):
        await old.add_stream(small)
        before = Collector(old.stream("all"))
        await eventually(lambda: len(before.events()) >= 5)
        saved = await old.handover("all")
        assert saved is not None
        await new.add_stream(small, standby=True)
        await eventually(lambda: new._streams["all"].standby_dropped > 0)
        after = Collector(new.stream("all"))
        await new.activate("all", reason="handover")
        await eventually(lambda: after.gaps() and after.events())
    (gap,) = after.gaps()
    assert isinstance(after.items[0], Gap)
    assert gap.reason == "handover"
    assert gap.start == saved.watermark
    assert after.events()[0].sequence == saved.next_sequence


async def test_a_stream_taken_again_after_redis_lost_its_data_continues_and_says_so(
    redis_server: RedisServer,
) -> None:
    """A Redis that restarts empty: the lease and the checkpoint are gone.

    The member stops the stream (its lease is lost) and takes it again: from
    1, it would repeat the (epoch, sequence) pairs of this run, and nothing
    would cover the window since its last checkpoint.
    """
    async with (
        Emulator(org_settings(rate=30.0)) as emulator,
        member(emulator, redis_server, checkpoint_interval_s=3600.0) as mux,
    ):
        await mux.add_stream(STREAM, standby=True)
        before = Collector(mux.stream("all"))
        await mux.activate("all", fence=1)
        await eventually(lambda: len(before.events()) >= 5)
        await mux.checkpoint()
        written = mux._written["all"]
        await mux.handover("all", checkpoint=False)  # the lease is gone
        # Events numbered after the checkpoint were delivered all the same:
        # the stream numbers on from the last one, not from the checkpoint.
        numbered = mux._numbered["all"]
        assert numbered >= written.next_sequence
        flushed = redis.Redis.from_url(redis_server.url)
        try:
            flushed.flushdb()
        finally:
            flushed.close()
        await mux.add_stream(STREAM, standby=True)
        after = Collector(mux.stream("all"))
        await mux.activate("all", fence=2)
        await eventually(lambda: len(after.events()) >= 1)
    assert after.events()[0].sequence == numbered
    assert all(event.sequence < numbered for event in before.events())
    (gap,) = after.gaps()
    assert gap.reason == "failover"
    assert gap.start == written.watermark


async def test_a_failover_gap_is_reckoned_on_the_next_owner_s_clock(
    redis_server: RedisServer,
) -> None:
    """The dead owner's host kept time 30 s ahead of Redis's: its watermark is that much later.

    Taken as it is, a watermark from a clock ahead ends the gap before it
    starts (no gap at all, beyond the skew); converted, it starts where it
    did on the next owner's clock.
    """
    async with two_members(redis_server, checkpoint_interval_s=3600.0) as (old, new):
        await old.add_stream(STREAM)
        before = Collector(old.stream("all"))
        await eventually(lambda: len(before.events()) >= 5)
        old.clock_offset = 30.0  # as its cluster member measured it
        await old.checkpoint()
        written = old._written["all"]
        old._checkpointing = False  # a dead process writes nothing more
        await new.add_stream(STREAM, standby=True)
        after = Collector(new.stream("all"))
        await new.activate("all")
        await eventually(lambda: bool(after.gaps()))
    assert written.clock_offset == 30.0
    assert written.watermark is not None
    (gap,) = after.gaps()
    assert gap.reason == "failover"
    assert gap.start == written.watermark - 30.0


async def test_clocks_stepped_since_they_were_measured_do_not_shorten_the_gap(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The dead owner's clock was stepped 30 s ahead, the next owner's 10 s back.

    Each after its offset was measured. The watermark is a time on the
    stepped clock, 30 s later than the offset measured before the step
    says, and the next owner's clock now reads 10 s less than its measured
    offset says: converted with the offsets alone, the gap would start 40 s
    late, and the events of those 40 s would be lost unreported. A step
    shows as a change of wall minus monotonic time.
    """
    async with two_members(redis_server, checkpoint_interval_s=3600.0) as (old, new):
        await old.add_stream(STREAM)
        before = Collector(old.stream("all"))
        await eventually(lambda: len(before.events()) >= 5)
        old.clock_offset = 0.0  # measured, then the clock was stepped:
        assert old._clock_anchor is not None
        old._clock_anchor -= 30.0  # as a step of +30 s since would show
        with caplog.at_level(logging.WARNING, logger="genesys_mux.multiplexer"):
            await old.checkpoint()
        written = old._written["all"]
        old._checkpointing = False  # a dead process writes nothing more
        new.clock_offset = 0.0
        assert new._clock_anchor is not None
        new._clock_anchor += 10.0  # a step of -10 s since
        await new.add_stream(STREAM, standby=True)
        after = Collector(new.stream("all"))
        await new.activate("all")
        await eventually(lambda: bool(after.gaps()))
    assert written.clock_offset == pytest.approx(30.0, abs=0.01)
    assert written.watermark is not None
    (gap,) = after.gaps()
    assert gap.reason == "failover"
    assert gap.start == pytest.approx(written.watermark - 40.0, abs=0.01)
    assert "clock was stepped by +30.0 s" in caplog.text
