"""A Multiplexer stopped and started again on one state store: numbering, memory, restart gap."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from genesys_mux import Gap, Multiplexer, StreamEvent
from genesys_mux.core.checkpoint import DIGEST_SIZE, Remembered, StreamCheckpoint
from genesys_mux.core.events import Backfilled, ControlEvent, StreamStateReset
from genesys_mux.core.snapshot import event_facts
from genesys_mux.emulator import Emulator
from genesys_mux.errors import StateError
from genesys_mux.observability.metrics import readiness
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue, read_dead_letters
from genesys_mux.state import MemoryStateStore, RedisStateStore, SqliteStateStore, StateStore
from tests.net.test_multiplexer import FAST_POOL, Collector, org_settings
from tests.sinks.conftest import RedisServer
from tests.waiting import eventually

STREAM = {"id": "all", "filter": {}}


def a_mux(emulator: Emulator, state: Any, **options: Any) -> Multiplexer:
    settings: dict[str, Any] = {
        "checkpoint_interval_s": 0.2,
        "dlq": MemoryDeadLetterQueue(),
        "pool_settings": FAST_POOL,
        **options,
    }
    return Multiplexer(
        client_id="demo-client",
        client_secret="demo-secret",
        base_url=emulator.base_url,
        state=state,
        **settings,
    )


async def post_fault(emulator: Emulator, fault: str, **data: Any) -> None:
    """Inject ``fault`` through the emulator's control surface, as an outside tool would."""
    url = f"{emulator.base_url}/__emulator__/faults"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"fault": fault, **data}) as resp,
    ):
        assert resp.status == 200, await resp.text()


#: When each run_once call's add_stream was called and when it returned.
ADDED: list[tuple[float, float]] = []


async def run_once(emulator: Emulator, state: Any, at_least: int) -> list[StreamEvent | Gap]:
    mux = a_mux(emulator, state)
    await mux.start()
    try:
        called = time.time()
        await mux.add_stream(STREAM)
        ADDED.append((called, time.time()))
        seen = Collector(mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= at_least)
    finally:
        await mux.stop(drain=True, timeout_s=5.0)
    await eventually(lambda: seen._task.done())
    return seen.items


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_restart_continues_numbering_remembers_and_reports_its_gap(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store: StateStore
    if kind == "sqlite":
        store = SqliteStateStore(tmp_path / "state.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisStateStore(server.url, prefix="restart-test:")
    async with Emulator(org_settings(rate=20.0)) as emulator:
        first = await run_once(emulator, store, at_least=15)
        second = await run_once(emulator, store, at_least=15)
    before = [i for i in first if isinstance(i, StreamEvent)]
    after = [i for i in second if isinstance(i, StreamEvent)]
    # Numbering continues where the first run stopped, without a hole.
    assert [e.sequence for e in after] == list(
        range(before[-1].sequence + 1, before[-1].sequence + 1 + len(after))
    )
    assert before[0].epoch != after[0].epoch
    # No state delivered before the restart is delivered again as new.
    delivered = {(e.content_key, e.digest) for e in before}
    assert not [e for e in after if (e.content_key, e.digest) in delivered]
    # The downtime is a gap: from the first run's last settled event to the
    # moment the second run had its topics subscribed, ahead of every event.
    restart = [i for i in second if isinstance(i, Gap) and i.reason == "restart"]
    assert len(restart) == 1
    assert second[0] is restart[0]
    (gap,) = restart
    last_settled = max(e.received_at for e in before)
    assert gap.start <= last_settled + 0.5
    called, added = ADDED[-1]
    assert called <= gap.end <= added
    assert gap.end > gap.start


async def test_the_restart_gap_lasts_until_every_channel_of_the_stream_is_subscribed(
    tmp_path: Path,
) -> None:
    """Not until the first event: that proves only its own channel's subscription.

    The stream's three queue topics take two channels of two topics. The
    platform answers the next run's first socket upgrade two seconds late,
    so that channel subscribes (once its socket is open) two seconds after
    the other, which meanwhile delivers. The window in between is missing
    on the late channel's topics.
    """
    path = tmp_path / "state.db"
    two_slots = dataclasses.replace(FAST_POOL, topics_per_channel=2)
    async with Emulator(org_settings(rate=20.0)) as emulator:
        await run_once(emulator, path, at_least=5)
        mux = a_mux(emulator, path, pool_settings=two_slots)
        await mux.start()
        try:
            await post_fault(emulator, "slow_accept", delay_s=2.0)
            started = time.time()
            await mux.add_stream(STREAM)
            assert mux.pool is not None
            assert len(mux.pool.channel_ids()) == 2
            seen = Collector(mux.stream("all"))
            await eventually(lambda: len(seen.events()) >= 1)
        finally:
            await mux.stop(drain=False)
    (gap,) = seen.gaps()
    assert gap.reason == "restart"
    # The early channel delivered inside the window...
    assert min(e.received_at for e in seen.events()) < gap.end
    # ...which lasts until the late one was subscribed, after its slow socket.
    assert gap.end >= started + 2.0


async def test_a_changed_filter_starts_afresh_and_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    async with Emulator(org_settings(rate=20.0)) as emulator:
        await run_once(emulator, state, at_least=5)
        mux = a_mux(emulator, state)
        facts: list[ControlEvent] = []
        mux.on_control.append(facts.append)
        await mux.start()
        try:
            await mux.add_stream({"id": "all", "filter": {"channelType": "voice"}})
            seen = Collector(mux.stream("all"))
            await eventually(lambda: len(seen.events()) >= 1)
        finally:
            await mux.stop(drain=False)
    assert seen.events()[0].sequence == 1
    assert not [g for g in seen.gaps() if g.reason == "restart"]
    assert [f for f in facts if isinstance(f, StreamStateReset)] == [
        StreamStateReset("all", "its filter or topics changed; starting afresh")
    ]


async def test_an_unreadable_state_file_stops_the_start_and_is_left_alone(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(b"\x00not a database" * 64)
    async with Emulator(org_settings(rate=0.0)) as emulator:
        mux = a_mux(emulator, state)
        with pytest.raises(StateError, match="not a SQLite database"):
            await mux.start()
        await mux.stop(drain=False)
    assert state.read_bytes() == b"\x00not a database" * 64


async def test_the_saved_state_of_streams_never_added_is_not_held(tmp_path: Path) -> None:
    """A cluster member adds a few of the store's streams, on standby: it held every one's memory.

    Three streams of 20,000 remembered conversations each, saved; a
    multiplexer that adds another stream, one of them on standby, and the
    third as its own: only that one's memory is read and kept.
    """
    store = SqliteStateStore(tmp_path / "state.db")
    await store.open()
    for stream_id in ("north", "south", "standby"):
        keys = [f"{stream_id}-{n:08d}-0000-4000-8000-000000000000" for n in range(20_000)]
        memory = [Remembered(k, 1.0, bytes(DIGEST_SIZE), False, r) for r, k in enumerate(keys, 1)]
        await store.save([StreamCheckpoint(stream_id, "f", 9, 1.0, "run-0", 1.0, memory)])
    await store.close()
    async with Emulator(org_settings(rate=0.0)) as emulator:
        gc.collect()
        tracemalloc.start()
        try:
            mux = a_mux(emulator, tmp_path / "state.db")
            await mux.start()
            try:
                await mux.add_stream(STREAM)
                await mux.add_stream({"id": "standby", "filter": {}}, standby=True)
                gc.collect()
                held = tracemalloc.get_traced_memory()[0]
            finally:
                await mux.stop(drain=False)
        finally:
            tracemalloc.stop()
    # 60,000 remembered keys would be well over 10 MB.
    assert held < 8 * 1024 * 1024, held


async def test_unsettled_events_hold_the_watermark_back(tmp_path: Path) -> None:
    async with Emulator(org_settings(rate=20.0)) as emulator:
        mux = a_mux(emulator, tmp_path / "state.db")
        await mux.start()
        try:
            await mux.add_stream(STREAM)
            items = mux.stream("all", settle=False)
            first = await anext(items)
            assert isinstance(first, StreamEvent)
            await anext(items)
            await anext(items)
            # Handed out but never settled: a restart must treat it as lost.
            assert mux.watermark("all") == first.received_at
            mux.settle("all", first.sequence)
            assert mux.watermark("all") > first.received_at
        finally:
            await mux.stop(drain=False)


async def test_the_final_checkpoint_waits_for_what_a_runner_took(tmp_path: Path) -> None:
    """A reader that settles itself (a sink runner) acknowledges its last batch after the stop."""
    path = tmp_path / "state.db"
    async with Emulator(org_settings(rate=50.0)) as emulator:
        mux = a_mux(emulator, path)
        await mux.start()
        taken: list[StreamEvent] = []
        enough = asyncio.Event()

        async def runner() -> None:
            async for item in mux.stream("all", settle=False):
                if isinstance(item, StreamEvent):
                    taken.append(item)
                    if len(taken) >= 5:
                        enough.set()
            # The stream ended: the last batch goes out, slowly, then is settled.
            await asyncio.sleep(0.3)  # a sink taking its time, not synchronisation
            mux.settle("all", taken[-1].sequence)

        try:
            await mux.add_stream(STREAM)
            task = asyncio.create_task(runner())
            await asyncio.wait_for(enough.wait(), 20.0)
        finally:
            await mux.stop(drain=True, timeout_s=5.0)
        await task
    store = SqliteStateStore(path)
    await store.open()
    try:
        saved = (await store.load())["all"]
    finally:
        await store.close()
    assert saved.next_sequence == taken[-1].sequence + 1
    assert saved.watermark is not None
    # Everything the runner took was acknowledged before the final checkpoint.
    assert saved.watermark >= taken[-1].received_at


async def test_a_state_store_that_goes_away_is_reported_and_never_stops_the_feed(
    redis_server: RedisServer,
) -> None:
    store = RedisStateStore(redis_server.url, prefix="away:", timeout_s=0.5)
    async with Emulator(org_settings(rate=20.0)) as emulator:
        mux = a_mux(emulator, store)
        await mux.start()
        try:
            await mux.add_stream(STREAM)
            seen = Collector(mux.stream("all"))
            await eventually(lambda: len(seen.events()) >= 3)
            await redis_server.stop(save=False)
            await eventually(lambda: mux.state_failure is not None)
            assert "cannot write the state" in (readiness(mux).reason or "")
            count = len(seen.events())
            await eventually(lambda: len(seen.events()) > count + 5)  # the feed goes on
            await redis_server.start()
            await eventually(lambda: mux.state_failure is None, within=30.0)
            assert readiness(mux).ready
        finally:
            await mux.stop(drain=False)


async def test_a_checkpoint_leaves_out_what_was_not_settled(tmp_path: Path) -> None:
    """A crash loses what a sink had not acknowledged: the next run numbers and back-fills it.

    The checkpoint is taken while a reader that settles explicitly (a sink
    runner) has acknowledged only the first five events it took; the
    process then dies (the checkpoint is all the next run gets). The next
    run must continue from the first unacknowledged sequence, and its
    memory must not hold the unacknowledged states: with the traffic
    frozen, the restart gap's back-fill delivers the current state of every
    conversation they were about, instead of dropping it as delivered.
    """
    async with Emulator(org_settings(rate=20.0)) as emulator:
        mux = a_mux(emulator, tmp_path / "state.db", checkpoint_interval_s=3600.0)
        await mux.start()
        try:
            await mux.add_stream(STREAM)
            items = mux.stream("all", settle=False)
            taken: list[StreamEvent] = []
            while len(taken) < 10:
                item = await anext(items)
                if isinstance(item, StreamEvent):
                    taken.append(item)
            mux.settle("all", taken[4].sequence)
            emulator.set_running(False)  # no conversation changes from here on
            await mux.checkpoint()
            (saved,) = (await mux.state_store.load()).values()
        finally:
            await mux.stop(drain=False)
        unsettled = taken[5:]
        assert saved.next_sequence == unsettled[0].sequence
        assert saved.watermark == unsettled[0].received_at
        remembered = {(r.key, h) for r in saved.memory for h in r.digests()}
        assert not [e for e in unsettled if (e.content_key, e.digest) in remembered]
        assert all((e.content_key, e.digest) in remembered for e in taken[:5])

        crashed = MemoryStateStore()
        await crashed.save([saved])
        again = a_mux(emulator, crashed, backfill=True)
        facts: list[ControlEvent] = []
        again.on_control.append(facts.append)
        await again.start()
        try:
            await again.add_stream(STREAM)
            seen = Collector(again.stream("all"))
            await eventually(lambda: any(isinstance(f, Backfilled) for f in facts))
        finally:
            await again.stop(drain=True, timeout_s=5.0)
        await eventually(lambda: seen._task.done())
    after = seen.events()
    assert after[0].sequence == unsettled[0].sequence
    (gap,) = seen.gaps()
    assert gap.reason == "restart"
    assert gap.start == unsettled[0].received_at
    # What was acknowledged is not delivered again.
    acknowledged = {(e.content_key, e.digest) for e in taken[:5]}
    assert not [e for e in after if (e.content_key, e.digest) in acknowledged]
    # Every conversation an unacknowledged event was about is delivered again,
    # at least as new (the same state: the same idempotency key). Back-fill
    # finds a conversation by its queue, so a call still in the IVR (already
    # on its queue's topic, not yet in the queue) waits for its next change.
    queued = [e for e in unsettled if queue_ids(e)]
    assert queued
    for event in queued:
        newer = [
            e
            for e in after
            if e.content_key == event.content_key and (e.version or 0.0) >= (event.version or 0.0)
        ]
        assert newer, f"#{event.sequence} of {event.content_key} was never delivered again"


def queue_ids(event: StreamEvent) -> frozenset[str]:
    conversation = event_facts(event.topic, event.raw).conversation
    return conversation.queue_ids if conversation is not None else frozenset()


class DeadLettersAtSave(MemoryStateStore):
    """Counts, at every save, the dead letters already on file."""

    def __init__(self, dlq: Path) -> None:
        super().__init__()
        self.dlq = dlq
        self.on_file: list[int] = []

    async def save(self, checkpoints: Any) -> None:
        self.on_file.append(len(list(read_dead_letters(self.dlq))) if self.dlq.exists() else 0)
        await super().save(checkpoints)


async def test_dead_letters_are_on_file_before_a_checkpoint_counts_them_settled(
    tmp_path: Path,
) -> None:
    """The file queue batches its writes; a checkpoint flushes it before it saves."""
    path = tmp_path / "dlq.jsonl"
    store = DeadLettersAtSave(path)
    async with Emulator(org_settings(rate=30.0)) as emulator:
        mux = a_mux(emulator, store, dlq=path, checkpoint_interval_s=3600)
        await mux.start()
        await mux.add_stream(STREAM)  # nobody reads it: its events stay buffered
        await eventually(lambda: mux.stats()["streams"]["all"].buffered >= 5)
        # Buffered events become dead letters ("stopped"), then the final checkpoint.
        await mux.stop(drain=False)
    letters = list(read_dead_letters(path))
    assert letters
    assert {x.reason for x in letters} == {"stopped"}
    assert store.on_file[-1] == len(letters)
    assert (await store.load())["all"].next_sequence == letters[-1].sequence + 1


async def saved_watermark(path: Path) -> float | None:
    """The watermark of stream ``all`` in the state file, read with a store of its own."""
    store = SqliteStateStore(path)
    await store.open()
    try:
        return (await store.load())["all"].watermark
    finally:
        await store.close()


async def test_a_gap_not_done_with_holds_the_watermark_at_its_start(tmp_path: Path) -> None:
    """A restart must not report a window later than a gap nobody has had yet.

    The second run's restart gap waits in the buffer, unread, while events
    arrive and checkpoints are written: the watermark stays at its start, so
    that a crash now would report its window again. Once a reader has gone
    past it, the watermark moves on. A gap still unread at a stop cannot be
    dead-lettered: the final checkpoint keeps the watermark at its start.
    """
    path = tmp_path / "state.db"
    async with Emulator(org_settings(rate=20.0)) as emulator:
        await run_once(emulator, path, at_least=5)

        mux = a_mux(emulator, path)
        await mux.start()
        try:
            await mux.add_stream(STREAM)
            buffered = mux._streams["all"].stream.items
            gap = buffered[0]
            assert isinstance(gap, Gap)
            assert gap.reason == "restart"
            await eventually(lambda: mux.stats()["streams"]["all"].received >= 5)
            assert mux.watermark("all") <= gap.start
            await mux.checkpoint()
            saved = (await mux.state_store.load())["all"].watermark
            assert saved is not None
            assert saved <= gap.start

            # Read past it: the gap, then an event, then ask for more.
            items = mux.stream("all")
            assert await anext(items) is gap
            assert isinstance(await anext(items), StreamEvent)
            assert isinstance(await anext(items), StreamEvent)
            assert mux.watermark("all") > gap.start
        finally:
            await mux.stop(drain=False)

        mux = a_mux(emulator, path)
        await mux.start()
        try:
            await mux.add_stream(STREAM)
            (gap,) = [i for i in mux._streams["all"].stream.items if isinstance(i, Gap)]
            await eventually(lambda: mux.stats()["streams"]["all"].received >= 5)
        finally:
            await mux.stop(drain=True, timeout_s=0.2)
    saved = await saved_watermark(path)
    assert saved is not None
    assert saved <= gap.start, "the stop dropped an unread gap and moved the watermark past it"
