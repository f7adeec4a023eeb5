"""One record per key shared by streams: what each stream sees, what is kept, what is forgotten."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.core.checkpoint import DIGEST_SIZE, Remembered, StreamCheckpoint
from genesys_mux.core.memory import FORGOTTEN, LOG_LIMIT, KeyMemory
from genesys_mux.core.snapshot import EventFacts
from genesys_mux.core.streams import Stream, StreamEvent
from genesys_mux.errors import InvalidStateError


def digest(n: int) -> bytes:
    return n.to_bytes(DIGEST_SIZE, "big")


def facts(key: str, version: float | None, n: int) -> EventFacts:
    return EventFacts(key, version, digest(n))


def sharing(count: int, *, memory: int = 50_000, hashes_per_key: int = 8) -> list[Stream]:
    shared = KeyMemory(hashes_per_key=hashes_per_key)
    return [
        Stream(
            f"s{i}",
            dead_letter=lambda _: None,
            buffer_size=100_000,
            memory=memory,
            key_memory=shared,
        )
        for i in range(count)
    ]


def offer(stream: Stream, fact: EventFacts) -> StreamEvent | None:
    return stream.offer("t", b"{}", None, 1.0, 1.0, fact)


# --------------------------------------------------------------------------
# What each stream sees: the documented rules, as a plain model
# --------------------------------------------------------------------------


@dataclass
class _ModelKey:
    version: float | None = None
    #: [digest, streams that took it in], oldest first.
    ring: list[tuple[bytes, set[int]]] = field(default_factory=list)
    members: set[int] = field(default_factory=set)


def _model_offer(model: dict[str, _ModelKey], stream: int, fact: EventFacts, ring_size: int) -> str:
    record = model.setdefault(fact.key, _ModelKey())
    record.members.add(stream)
    if any(d == fact.hash and stream in holders for d, holders in record.ring):
        return "duplicate"
    if fact.version is not None and record.version is not None and fact.version < record.version:
        return "stale"
    for d, holders in record.ring:
        if d == fact.hash:
            holders.add(stream)
            break
    else:
        record.ring.append((fact.hash, {stream}))
        del record.ring[:-ring_size]
    if fact.version is not None:
        record.version = fact.version
    return "delivered"


def _model_leave(model: dict[str, _ModelKey], stream: int) -> None:
    for key, record in list(model.items()):
        record.members.discard(stream)
        if not record.members:
            del model[key]
            continue
        for _, holders in record.ring:
            holders.discard(stream)
        record.ring = [(d, holders) for d, holders in record.ring if holders]


_OFFER = st.tuples(
    st.integers(0, 3),  # key
    st.integers(0, 5),  # version (None for 0)
    st.integers(0, 6),  # digest
    st.sets(st.integers(0, 2), min_size=1),  # the streams it is routed to
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.one_of(_OFFER, st.integers(0, 2)), max_size=40),
    ring=st.sampled_from([1, 2, 8]),
)
def test_shared_records_decide_as_the_rules_say(
    events: list[tuple[int, int, int, set[int]] | int], ring: int
) -> None:
    """Duplicates per stream, staleness per key, the newest ``ring`` digests per key.

    An integer among the events replaces that stream with a new one (it
    leaves, the memory is swept, a new stream joins in its place).
    """
    streams = sharing(3, hashes_per_key=ring)
    memory = streams[0].key_memory
    model: dict[str, _ModelKey] = {}
    for event in events:
        if isinstance(event, int):
            streams[event].close()
            assert memory.sweep(1_000)
            _model_leave(model, event)
            streams[event] = Stream(f"n{event}", dead_letter=lambda _: None, key_memory=memory)
            continue
        key, version, n, targets = event
        fact = facts(f"k{key}", float(version) if version else None, n)
        for target in sorted(targets):
            stream = streams[target]
            before = (stream.counters.duplicates, stream.counters.stale)
            delivered = offer(stream, fact) is not None
            after = (stream.counters.duplicates, stream.counters.stale)
            outcome = (
                "delivered"
                if delivered
                else "duplicate"
                if after[0] > before[0]
                else "stale"
                if after[1] > before[1]
                else "?"
            )
            assert outcome == _model_offer(model, target, fact, ring)
    assert len(memory) == len(model)
    for record in memory.records():
        wanted = model[record.key]
        assert record.version == wanted.version
        for index, stream in enumerate(streams):
            held = [d for d, holders in wanted.ring if index in holders]
            assert record.digests_of(stream._bit) == held
            assert bool(record.streams & stream._bit) == (index in wanted.members)


def test_one_record_per_key_and_nothing_per_stream_for_streams_over_the_same_traffic() -> None:
    streams = sharing(10)
    for n in range(200):
        fact = facts(f"conv-{n % 50}", float(n), n)
        for stream in streams:
            assert offer(stream, fact) is not None
        for stream in streams:  # the same notification again, on another channel
            assert offer(stream, fact) is None
    memory = streams[0].key_memory
    assert len(memory) == 50
    records = list(memory.records())
    assert all(r.holders is None for r in records)  # every member holds every digest
    assert all(r.streams == (1 << 10) - 1 for r in records)
    # Ten streams' masks are one int object, not one per record.
    assert len({id(r.streams) for r in records}) == 1
    assert all(s.counters.delivered == 0 and s.counters.duplicates == 200 for s in streams)


def _remembering(streams: int, keys: int) -> int:
    """Bytes allocated for ``streams`` streams over the same ``keys`` conversations."""
    gc.collect()
    tracemalloc.start()
    try:
        group = sharing(streams, memory=keys)
        before = tracemalloc.get_traced_memory()[0]
        for n in range(keys):
            fact = facts(f"{n:08d}-0000-4000-8000-000000000000", 1000.0 + n, n)
            for stream in group:
                offer(stream, fact)
                stream.take(2.0, 2.0)
            for stream in group:
                stream.settle(stream.next_sequence - 1)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_ten_streams_over_the_same_traffic_remember_in_at_most_1_2_times_one_streams_memory() -> (
    None
):
    # Issue 13's target: one de-dup and ordering record per conversation,
    # shared by every stream that carries it.
    one, ten = _remembering(1, 5_000), _remembering(10, 5_000)
    assert ten <= 1.2 * one, (one, ten)


def test_the_records_are_out_of_the_garbage_collectors_sight() -> None:
    streams = sharing(3, hashes_per_key=2)
    for n in range(100):
        offer(streams[n % 3], facts(f"k{n % 20}", float(n), n))
        offer(streams[(n + 1) % 3], facts(f"k{n % 20}", float(n), n))
    gc.collect()
    records = list(streams[0].key_memory.records())
    assert records
    assert any(r.holders is not None for r in records)  # per-stream digests too
    assert not any(gc.is_tracked(r) for r in records)
    assert not any(gc.is_tracked(r.hashes) or gc.is_tracked(r.holders) for r in records)


# --------------------------------------------------------------------------
# Bounds, leaving, restoring
# --------------------------------------------------------------------------


def test_streams_over_the_same_traffic_each_keep_their_bound() -> None:
    streams = sharing(3, memory=10)
    for n in range(100):
        for stream in streams:
            offer(stream, facts(f"k{n}", 1.0, n))
    memory = streams[0].key_memory
    assert [r.key for r in memory.records()] == [f"k{n}" for n in range(90, 100)]
    # The ten newest are duplicates for each stream; the one before is forgotten.
    for stream in streams:
        assert offer(stream, facts("k90", 1.0, 90)) is None
        assert offer(stream, facts("k89", 1.0, 89)) is not None


def test_streams_over_different_traffic_share_their_bounds_total() -> None:
    busy, quiet = sharing(2, memory=10)
    for n in range(5):
        offer(quiet, facts(f"quiet-{n}", 1.0, n))
    for n in range(15):
        offer(busy, facts(f"busy-{n}", 1.0, n))
    memory = busy.key_memory
    # 20 keys fit the two bounds: the busy stream keeps 15 while the quiet one has 5.
    assert len(memory) == 20
    for n in range(5, 10):
        offer(busy, facts(f"busy-{n + 10}", 1.0, n))
    # Past the total, the least recently seen go first: the quiet stream's.
    assert len(memory) == 20
    assert not any(r.key.startswith("quiet") for r in memory.records())
    checkpoint = quiet.checkpoint(fingerprint="f", watermark=None, saved_at=0.0)
    assert checkpoint.memory == []


def _take_new_keys(stream: Stream, first: int, count: int) -> int:
    """``stream`` takes ``count`` new keys from ``first`` on, settled; bytes traced after."""
    for n in range(first, first + count):
        offer(stream, facts(f"{n:08d}-0000-4000-8000-000000000000", 1.0, n))
        stream.take(2.0, 2.0)
        stream.settle(stream.next_sequence - 1)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_a_stream_that_never_checkpoints_stays_flat_however_many_keys_it_forgets() -> None:
    # Without a state store nothing takes a checkpoint, and the keys a
    # stream forgot (listed for its next one) used to pile up: 20,000
    # conversation ids here, about 2 MB, for a stream remembering 100.
    gc.collect()
    tracemalloc.start()
    try:
        stream = sharing(1, memory=100)[0]
        # The memory full, and the log of sightings too (it is bounded).
        full = _take_new_keys(stream, 0, LOG_LIMIT)
        grown = _take_new_keys(stream, LOG_LIMIT, 20_000) - full
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown
    assert len(stream.key_memory) == 100


def test_a_memory_without_a_log_keeps_only_its_bound_and_still_checkpoints() -> None:
    """No state store, no log: the records of the last sightings are not kept alive."""

    def held(log_limit: int) -> tuple[int, Stream]:
        gc.collect()
        tracemalloc.start()
        try:
            memory = KeyMemory(log_limit=log_limit)
            stream = Stream("s", dead_letter=lambda _: None, memory=100, key_memory=memory)
            grown = _take_new_keys(stream, 0, LOG_LIMIT + 1_000)
        finally:
            tracemalloc.stop()
        return grown, stream

    logged, _ = held(LOG_LIMIT)
    unlogged, stream = held(0)
    assert logged > 2 * 1024 * 1024  # 16,384 records kept alive by the log
    assert unlogged < 256 * 1024, unlogged
    # A checkpoint by hand still carries what changed (from the records' stamps).
    first = stream.checkpoint(fingerprint="f", watermark=None, saved_at=0.0)
    assert len(first.memory) == 100
    offer(stream, facts("new", 1.0, 10**6))
    stream.take(2.0, 2.0)
    stream.settle(stream.next_sequence - 1)
    later = stream.checkpoint(fingerprint="f", watermark=None, saved_at=1.0)
    assert not later.complete
    assert [r.key for r in later.memory] == ["new"]
    assert len(later.forgotten) == 1


def test_more_keys_forgotten_than_the_bound_make_the_next_checkpoint_complete() -> None:
    stream = sharing(1, memory=10)[0]
    memory, bit = stream.key_memory, stream._bit
    for n in range(15):
        offer(stream, facts(f"k{n}", 1.0, n))
    settle = stream.next_sequence - 1
    while stream.take(2.0, 2.0) is not None:
        pass
    stream.settle(settle)
    first = stream.checkpoint(fingerprint="f", watermark=None, saved_at=0.0)
    assert first.complete  # a run's first
    # Five forgotten since: listed.
    for n in range(15, 20):
        offer(stream, facts(f"k{n}", 1.0, n))
    assert memory.has_forgotten(bit)
    listed = stream.checkpoint(fingerprint="f", watermark=None, saved_at=1.0)
    assert not listed.complete
    assert sorted(listed.forgotten) == [f"k{n}" for n in range(5, 10)]
    # Eleven forgotten since, one more than the bound: too many to list,
    # so the whole memory instead, which replaces what the store has.
    for n in range(20, 31):
        offer(stream, facts(f"k{n}", 1.0, n))
    assert memory.has_forgotten(bit)
    whole = stream.checkpoint(fingerprint="f", watermark=None, saved_at=2.0)
    assert whole.complete
    assert whole.forgotten == []
    assert [r.key for r in whole.memory] == [f"k{n}" for n in range(21, 31)]
    # And then it lists again.
    offer(stream, facts("k31", 1.0, 31))
    after = stream.checkpoint(fingerprint="f", watermark=None, saved_at=3.0)
    assert not after.complete
    assert after.forgotten == ["k21"]


def test_a_stream_that_leaves_takes_what_only_it_remembered() -> None:
    first, second = sharing(2)
    offer(first, facts("both", 1.0, 1))
    offer(second, facts("both", 1.0, 1))
    offer(first, facts("first-only", 1.0, 2))
    offer(second, facts("both", 2.0, 3))  # a digest only the second holds
    offer(second, facts("second-only", 1.0, 4))
    memory = first.key_memory

    second.close()
    second.close()  # idempotent: it does not free a bit someone else now has
    assert memory.limit == 50_000
    # Not swept yet: the bit is not given away.
    early = Stream("early", dead_letter=lambda _: None, key_memory=memory)
    assert early._bit == 4
    early.close()
    assert memory.sweeping
    assert memory.sweep(1_000)
    assert not memory.sweeping
    assert [r.key for r in memory.records()] == ["first-only", "both"]
    both = memory.get("both")
    assert both is not None
    assert both.hashes == (digest(1),)
    assert both.holders is None
    assert both.streams == 1
    # A stream joining later gets the freed bit and remembers nothing.
    third = Stream("s2", dead_letter=lambda _: None, key_memory=memory)
    assert third._bit == 2
    assert third.checkpoint(fingerprint="f", watermark=None, saved_at=0.0).memory == []
    assert offer(third, facts("both", 2.0, 1)) is not None

    first.close()
    third.close()
    assert memory.sweep(1_000)
    assert len(memory) == 0
    with pytest.raises(InvalidStateError, match="stream 's0' is closed"):
        offer(first, facts("both", 3.0, 5))


def _accounted(memory: KeyMemory, streams: list[Stream]) -> None:
    """Each stream's count of keys is what the records say, and the total is their sum."""
    live = {s._bit for s in streams if not s._closed}
    for bit in live:
        assert memory._counts[bit] == sum(1 for r in memory.records() if r.streams & bit)
    assert memory._memberships == sum(memory._counts.values())
    assert memory._memberships <= memory.limit


def test_a_memory_is_swept_a_slice_at_a_time_while_the_others_go_on() -> None:
    streams = sharing(3, memory=40)
    memory = streams[0].key_memory
    n = 0
    for n in range(60):
        for stream in streams[: 1 + n % 3]:
            offer(stream, facts(f"k{n}", float(n), n))
    streams[1].close()
    assert memory.limit == 80  # its share went at once
    _accounted(memory, streams)
    slices = 0
    while not memory.sweep(7):
        slices += 1
        # Events go on between slices, evicting as the bounds say.
        n += 1
        offer(streams[0], facts(f"k{n}", float(n), n))
        offer(streams[2], facts(f"k{n % 50}", float(n), n))
        _accounted(memory, streams)
    assert slices >= 3
    assert not any(r.streams & 2 or r.in_state & 2 for r in memory.records())
    assert all(r.streams for r in memory.records())
    _accounted(memory, streams)


def test_a_stream_restored_beside_a_live_one_keeps_the_memory_in_stamp_order() -> None:
    live, restored = sharing(2)
    for n in range(5):
        offer(live, facts(f"k{n}", float(n), n))
    old = [
        Remembered("k1", 0.5, digest(100), False, 3),
        Remembered("old", 9.0, digest(101), True, 4),
    ]
    restored.restore(a_checkpoint(old))
    memory = live.key_memory
    stamps = [r.stamp for r in memory.records()]
    assert stamps == sorted(stamps)
    assert FORGOTTEN not in stamps
    assert [r.key for r in memory.records()][-2:] == ["k1", "old"]
    k1 = memory.get("k1")
    assert k1 is not None
    # The key's version is the newest of the two; each stream keeps its own digests.
    assert k1.version == 1.0
    assert k1.digests_of(1) == [digest(1)]
    assert k1.digests_of(2) == [digest(100)]
    old_record = memory.get("old")
    assert old_record is not None
    assert old_record.in_state == 2
    assert old_record.streams == 2
    assert offer(restored, facts("old", 9.0, 101)) is None  # remembered across the restart
    assert offer(live, facts("old", 9.0, 101)) is not None  # not the live stream's


def a_checkpoint(memory: list[Remembered]) -> StreamCheckpoint:
    return StreamCheckpoint("s1", "f", 7, None, "run-0", 0.0, memory)
