"""State stores against a real SQLite file and a real redis-server, with real streams' state."""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import os
import random
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from unittest import mock

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genesys_mux.core.checkpoint import (
    DIGEST_SIZE,
    SCHEMA_VERSION,
    Remembered,
    StreamCheckpoint,
    apply_checkpoint,
    decode_checkpoint,
    decode_remembered,
    encode_checkpoint,
    encode_remembered,
    fingerprint,
)
from genesys_mux.core.memory import KeyMemory
from genesys_mux.core.snapshot import EventFacts, event_facts
from genesys_mux.core.streams import DeadLetter, Stream
from genesys_mux.errors import FencedStateError, StateError
from genesys_mux.state import (
    MemoryStateStore,
    RedisStateStore,
    SqliteStateStore,
    StateStore,
    open_store,
)
from genesys_mux.state import redis as redis_store
from genesys_mux.state import sqlite as sqlite_store
from genesys_mux.state.redis import KEYS_SCHEMA_VERSION
from genesys_mux.state.sqlite import FILE_SCHEMA_VERSION
from tests.sinks.conftest import RedisServer, real_bodies

STORES = ["memory", "sqlite", "redis"]
#: The stores that keep each stream's memory as a log of blocks, and their modules.
LOGS = {"sqlite": sqlite_store, "redis": redis_store}


def new_store(
    kind: str, tmp_path: Path, server: RedisServer | None, prefix: str = "test:"
) -> StateStore:
    if kind == "memory":
        return MemoryStateStore()
    if kind == "sqlite":
        return SqliteStateStore(tmp_path / "state.db")
    assert server is not None
    return RedisStateStore(server.url, prefix=prefix)


@asynccontextmanager
async def a_store(
    kind: str, tmp_path: Path, server: RedisServer | None
) -> AsyncIterator[StateStore]:
    store = new_store(kind, tmp_path, server)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def a_stream(stream_id: str = "calls") -> Stream:
    letters: list[DeadLetter] = []
    return Stream(stream_id, dead_letter=letters.append, epoch="run-1", buffer_size=1000)


def fed(stream: Stream, count: int) -> Stream:
    """``stream`` after ``count`` real snapshots were offered, delivered and settled."""
    for topic, body, _ in real_bodies(count):
        stream.offer(topic, body, None, 1.0, 1.0, event_facts(topic, body))
    settle_all(stream)
    return stream


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(kind: str, request: pytest.FixtureRequest) -> RedisServer | None:
    if kind != "redis":
        return None
    found: RedisServer = request.getfixturevalue("redis_server")
    return found


async def test_a_stream_continues_from_its_checkpoint(
    kind: str, server: RedisServer | None, tmp_path: Path
) -> None:
    before = fed(a_stream(), 40)
    assert before.next_sequence > 10
    checkpoint = before.checkpoint(fingerprint="f1", watermark=123.5, saved_at=200.0)
    async with a_store(kind, tmp_path, server) as store:
        await store.save([checkpoint])
    async with a_store(kind, tmp_path, server) as store:  # opened again, as after a restart
        loaded = await store.load()
    if kind == "memory":
        return  # nothing survives the process, by design
    assert loaded == {"calls": checkpoint}
    after = a_stream()
    after.restore(loaded["calls"])
    assert after.next_sequence == before.next_sequence
    # Every snapshot delivered before the restart is a duplicate after it.
    for topic, body, _ in real_bodies(40):
        assert after.offer(topic, body, None, 2.0, 2.0, event_facts(topic, body)) is None
    assert after.counters.duplicates + after.counters.stale > 0
    assert after.counters.dead_lettered == 0


def fenced(checkpoint: StreamCheckpoint, fence: int, **changes: object) -> StreamCheckpoint:
    return msgspec.structs.replace(checkpoint, fence=fence, **changes)


async def test_a_claimed_stream_refuses_an_older_owners_checkpoints(
    kind: str, server: RedisServer | None, tmp_path: Path
) -> None:
    """After ``claim(s, 2)``, nothing of a checkpoint with fence 1 lands, whole or incremental."""
    async with a_store(kind, tmp_path, server) as store:
        first = fenced(
            fed(a_stream("a"), 5).checkpoint(fingerprint="x", watermark=1.0, saved_at=1.0), 1
        )
        await store.save([first])
        await store.claim("a", 2)
        other = fed(a_stream("b"), 3).checkpoint(fingerprint="x", watermark=2.0, saved_at=2.0)
        later = fed(a_stream("a"), 9).checkpoint(fingerprint="x", watermark=3.0, saved_at=3.0)
        assert later.memory[-1] not in first.memory
        stale = [
            fenced(later, 1),
            fenced(later, 1, complete=False, forgotten=[first.memory[0].key]),
        ]
        for attempt in stale:
            with pytest.raises(FencedStateError) as caught:
                await store.save([other, attempt])
            assert caught.value.streams == {"a": 2}
            assert "a (fencing token 1, claimed by 2)" in str(caught.value)
            # All or none: neither the fenced stream nor the other was written.
            assert await store.load() == {"a": first}
        with pytest.raises(FencedStateError) as caught:
            await store.claim("a", 1)
        assert "a (fencing token 1, claimed by 2)" in str(caught.value)
        if server is not None:
            # A restarted (or flushed) server forgot the fencing script: taught again.
            redis.Redis.from_url(server.url).script_flush()
        # The owner that claimed it writes; so does one outside a cluster (fence 0).
        await store.save([fenced(later, 2), other])
        assert await store.load() == {"a": fenced(later, 2), "b": other}
        await store.save([fenced(first, 0)])
        assert await store.load(only=["a", "nobody"]) == {"a": fenced(first, 0)}
        assert await store.load(only=[]) == {}


async def test_saves_replace_and_removes_forget(
    kind: str, server: RedisServer | None, tmp_path: Path
) -> None:
    async with a_store(kind, tmp_path, server) as store:
        one = fed(a_stream("a"), 5).checkpoint(fingerprint="x", watermark=None, saved_at=1.0)
        two = fed(a_stream("b"), 7).checkpoint(fingerprint="x", watermark=2.0, saved_at=2.0)
        await store.save([one, two])
        newer = fed(a_stream("a"), 9).checkpoint(fingerprint="y", watermark=3.0, saved_at=3.0)
        await store.save([newer])
        assert await store.load() == {"a": newer, "b": two}
        await store.remove(["a", "nobody"])
        assert set(await store.load()) == {"b"}


def test_checkpoints_carry_their_schema_version() -> None:
    checkpoint = fed(a_stream(), 3).checkpoint(fingerprint="f", watermark=None, saved_at=1.0)
    keys = {event_facts(topic, body).key for topic, body, _ in real_bodies(3)}
    assert len(keys) > 1
    assert {remembered.key for remembered in checkpoint.memory} == keys
    data = encode_checkpoint(checkpoint)
    assert data[0] == SCHEMA_VERSION
    # The header only: stores keep the memory key by key.
    assert decode_checkpoint(data, "here") == msgspec.structs.replace(checkpoint, memory=[])
    for remembered in checkpoint.memory:
        assert decode_remembered(encode_remembered(remembered), "here") == remembered
    with pytest.raises(StateError, match="here: not a remembered key"):
        decode_remembered(b"\xc1", "here")
    with pytest.raises(StateError, match="newer release"):
        decode_checkpoint(bytes((SCHEMA_VERSION + 1,)) + data[1:], "here")
    with pytest.raises(StateError, match="here: not a genesys-mux checkpoint"):
        decode_checkpoint(bytes((SCHEMA_VERSION,)) + b"\xc1garbage", "here")
    assert fingerprint("a", "b") == fingerprint("a", "b") != fingerprint("ab")


async def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    store = SqliteStateStore(path)
    with pytest.raises(StateError, match=r"is not a SQLite database.*--reset-state"):
        await store.open()
    await store.close()
    assert path.read_bytes() == b"this is not sqlite" * 100


async def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match=r"database of something else.*invoices"):
        await SqliteStateStore(path).open()
    assert path.read_bytes() == before


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE genesys_mux_meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StateError, match=r"schema 99.*newer release"):
        await SqliteStateStore(path).open()


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        await SqliteStateStore(tmp_path / "nowhere" / "state.db").open()


async def test_redis_keys_of_someone_else_are_refused(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.hset("theirs:state:meta", mapping={"application": "other", "schema_version": "1"})
    client.close()
    with pytest.raises(StateError, match="not genesys-mux's"):
        await RedisStateStore(redis_server.url, prefix="theirs:").open()


async def test_a_clusters_redis_state_is_refused_to_another_cluster(
    redis_server: RedisServer,
) -> None:
    """Two deployments on one Redis and one prefix would write each other's streams.

    Each cluster's fencing tokens come from its own counters: the claims of
    one cannot order the other's, and both were accepted in turn.
    """
    alpha = RedisStateStore(redis_server.url, prefix="shared:", cluster="alpha")
    await alpha.open()
    await alpha.close()
    beta = RedisStateStore(redis_server.url, prefix="shared:", cluster="beta")
    with pytest.raises(StateError, match="cluster 'alpha'") as caught:
        await beta.open()
    assert "this instance is in cluster 'beta'" in str(caught.value)
    assert "[state] prefix of its own" in str(caught.value)
    # The same cluster again, and a prefix of its own for the other, open.
    for store in (
        RedisStateStore(redis_server.url, prefix="shared:", cluster="alpha"),
        RedisStateStore(redis_server.url, prefix="beta:", cluster="beta"),
        RedisStateStore(redis_server.url, prefix="shared:"),  # a reader: state show
    ):
        await store.open()
        await store.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
async def test_a_redis_that_may_evict_any_key_is_refused(
    redis_server: RedisServer, policy: str
) -> None:
    """Evicted state restarts a stream at 1 with no gap; an evicted fence reissues tokens."""
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory-policy", policy)
    client.close()
    store = RedisStateStore(redis_server.url, prefix="evicting:")
    with pytest.raises(StateError, match=f"maxmemory-policy {policy}") as caught:
        await store.open()
    assert "noeviction" in str(caught.value)
    client = redis.Redis.from_url(redis_server.url)
    assert client.keys("evicting:*") == [], "nothing was written"
    client.config_set("maxmemory-policy", "volatile-lru")
    client.close()
    await store.open()  # keys with no TTL are never evicted under volatile-*
    await store.close()


async def test_an_unreachable_redis_is_a_clear_error_without_the_password(
    redis_server: RedisServer,
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
    await redis_server.stop(save=False)
    store = RedisStateStore(url, timeout_s=1.0)
    with pytest.raises(StateError, match="cannot reach the state store") as caught:
        await store.open()
    await store.close()
    assert "hunter2" not in str(caught.value)
    assert store.name == f"redis:127.0.0.1:{redis_server.port}/0"


def test_settings_become_stores(tmp_path: Path) -> None:
    assert isinstance(open_store(None), MemoryStateStore)
    assert isinstance(open_store(str(tmp_path / "s.db")), SqliteStateStore)
    assert isinstance(open_store(tmp_path / "s.db"), SqliteStateStore)
    assert isinstance(open_store("redis://127.0.0.1:6379/0"), RedisStateStore)
    mine = MemoryStateStore()
    assert open_store(mine) is mine


def test_checkpoint_of_a_fresh_stream() -> None:
    checkpoint = a_stream().checkpoint(fingerprint="f", watermark=None, saved_at=0.0)
    assert checkpoint == StreamCheckpoint("calls", "f", 1, None, "run-1", 0.0, [], floor=1)


def memory_of(stream: Stream) -> list[tuple[str, float | None, bytes, bool]]:
    """What a stream remembers, least recently seen first (ranks aside)."""
    look = copy.deepcopy(stream)  # a checkpoint changes what the next one carries
    look.checkpoint_failed()
    whole = look.checkpoint(fingerprint="f", watermark=None, saved_at=0.0)
    return [(r.key, r.version, r.hashes, r.in_state) for r in whole.memory]


def as_stored(checkpoint: StreamCheckpoint) -> list[tuple[str, float | None, bytes, bool]]:
    return [(r.key, r.version, r.hashes, r.in_state) for r in checkpoint.memory]


async def test_incremental_checkpoints_write_only_what_changed_and_load_whole(
    kind: str, server: RedisServer | None, tmp_path: Path
) -> None:
    """Keys seen, re-seen and forgotten between checkpoints; the store always loads the stream."""
    bodies = real_bodies(400)
    rng = random.Random(11)
    letters: list[DeadLetter] = []
    stream = Stream("calls", dead_letter=letters.append, buffer_size=10_000, memory=25)
    async with a_store(kind, tmp_path, server) as store:
        model: StreamCheckpoint | None = None
        position = 0
        before: set[str] = set()
        for round_ in range(12):
            # Fresh snapshots, plus some already seen (they move up the memory).
            offered = [bodies[(position + i) % len(bodies)] for i in range(rng.randrange(1, 40))]
            position += len(offered)
            offered += rng.sample(bodies[:position], min(position, 5))
            touched = set()
            for topic, body, _ in offered:
                facts = event_facts(topic, body)
                touched.add(facts.key)
                stream.offer(topic, body, None, 1.0, 1.0, facts)
            # Delivered and acknowledged: a checkpoint describes settled events.
            settle_all(stream)
            expected = memory_of(stream)
            now = {key for key, *_ in expected}
            checkpoint = stream.checkpoint(fingerprint="f", watermark=float(round_), saved_at=1.0)
            if round_ in (0, 7):
                assert checkpoint.complete  # the first, and the one after a failed write
                assert len(checkpoint.memory) == len(expected)
            else:
                # Only the keys seen since the last checkpoint, and those forgotten.
                assert not checkpoint.complete
                assert {r.key for r in checkpoint.memory} == touched & now
                assert before - now <= set(checkpoint.forgotten)
                assert not set(checkpoint.forgotten) & now
            before = now
            if round_ == 6:
                # A write that failed: the next checkpoint is whole again.
                stream.checkpoint_failed()
                continue
            await store.save([checkpoint])
            model = apply_checkpoint(model, checkpoint)
            loaded = (await store.load())["calls"]
            assert as_stored(loaded) == expected == as_stored(model)
            assert loaded.next_sequence == stream.next_sequence
        assert letters == []
    # Restored from the store, the stream remembers exactly what it did.
    async with a_store(kind, tmp_path, server) as store:
        if kind != "memory":
            again = Stream("calls", dead_letter=letters.append, memory=25)
            again.restore((await store.load())["calls"])
            assert memory_of(again) == memory_of(stream)


def a_remembered(key: str, rank: int) -> Remembered:
    digests = bytes([rank % 256]) * DIGEST_SIZE * (1 + rank % 3)
    return Remembered(key, 1000.0 + rank, digests, rank % 2 == 0, rank)


def after_migration(keys: list[str]) -> StreamCheckpoint:
    """An incremental checkpoint of stream "big" over its migrated memory."""
    return StreamCheckpoint(
        "big",
        "f",
        11,
        2.0,
        "run-1",
        2.0,
        [a_remembered("new", 9_999)],
        complete=False,
        forgotten=keys[-100:],
    )


async def test_large_checkpoints_are_written_and_forgotten_in_slices(
    kind: str, server: RedisServer | None, tmp_path: Path
) -> None:
    """More keys than a slice, keys that are not ASCII and one longer than most: all come back."""
    keys = [f"conversation-{i:05d}" for i in range(4_500)] + ["é-ünï-☎", "x" * 5_000]
    complete = StreamCheckpoint(
        "big", "f", 10, 1.0, "run-1", 1.0, [a_remembered(k, r) for r, k in enumerate(keys, 1)]
    )
    # Later: 2,101 keys forgotten (the non-ASCII one among them), 2,500 new
    # ones, and the long key and a few others seen again.
    seen_again = ["x" * 5_000, *keys[3_000:3_010]]
    fresh = [f"later-{i:05d}-ß" for i in range(2_500)]
    changed = [a_remembered(k, r) for r, k in enumerate([*seen_again, *fresh], 10_000)]
    later = StreamCheckpoint(
        "big",
        "f",
        20,
        2.0,
        "run-1",
        2.0,
        changed,
        complete=False,
        forgotten=[*keys[:2_100], "é-ünï-☎"],
    )
    async with a_store(kind, tmp_path, server) as store:
        await store.save([complete])
        assert (await store.load())["big"] == complete
        await store.save([later])
        loaded = (await store.load())["big"]
    expected = apply_checkpoint(complete, later)
    assert len(expected.memory) == 4_502 - 2_101 + 2_500
    assert loaded == expected


async def test_a_redis_store_writes_again_after_the_server_restarted(
    redis_server: RedisServer,
) -> None:
    """Both its connections (the pool's, and the one that writes keys) come back."""
    first = StreamCheckpoint(
        "s", "f", 10, 1.0, "run-1", 1.0, [a_remembered(f"k{i}", i) for i in range(1, 3_001)]
    )
    later = StreamCheckpoint(
        "s",
        "f",
        20,
        2.0,
        "run-1",
        2.0,
        [a_remembered(f"n{i}", 5_000 + i) for i in range(2_500)],
        complete=False,
        forgotten=[f"k{i}" for i in range(1, 2_101)],
    )
    store = RedisStateStore(redis_server.url, prefix="test:")
    await store.open()
    try:
        await store.save([first])
        await redis_server.restart()  # keeps the data; the connections are closed
        failed = 0
        while True:
            try:
                await store.save([later])
                break
            except StateError:
                failed += 1  # what reaches the store is unknown; the same again is fine
                assert failed == 1, "a restart costs one checkpoint at most"
        assert (await store.load())["s"] == apply_checkpoint(first, later)
    finally:
        await store.close()


def test_keys_with_unsettled_changes_are_written_again_once_settled() -> None:
    """A checkpoint leaves unsettled changes out; the next one writes those keys as they are."""
    bodies = real_bodies(80)
    stream = a_stream()
    for topic, body, _ in bodies[:40]:
        stream.offer(topic, body, None, 1.0, 1.0, event_facts(topic, body))
    settle_all(stream)
    first = stream.checkpoint(fingerprint="f", watermark=1.0, saved_at=1.0)
    events = []
    for topic, body, _ in bodies[40:]:
        event = stream.offer(topic, body, None, 2.0, 2.0, event_facts(topic, body))
        if event is not None:
            events.append(event)
    while stream.take(3.0, 3.0) is not None:
        pass
    stream.settle(events[9].sequence)  # the first ten acknowledged, the rest not yet
    unsettled = events[10:]
    second = stream.checkpoint(fingerprint="f", watermark=2.0, saved_at=2.0)
    assert not second.complete
    assert second.next_sequence == unsettled[0].sequence
    # One of those keys is seen again before the next checkpoint (a
    # duplicate of its unsettled state): it is written once.
    again = unsettled[-1]
    facts = event_facts(again.topic, again.raw)
    assert stream.offer(again.topic, again.raw, None, 4.0, 4.0, facts) is None
    settle_all(stream)
    third = stream.checkpoint(fingerprint="f", watermark=4.0, saved_at=4.0)
    written = [r.key for r in third.memory]
    assert sorted(written) == sorted({e.content_key for e in unsettled})
    assert [r.rank for r in third.memory] == sorted(r.rank for r in third.memory)
    whole = apply_checkpoint(apply_checkpoint(first, second), third)
    assert whole.memory == memory_records(stream)


def v1_blob(checkpoint: StreamCheckpoint) -> bytes:
    """A checkpoint as schema 1 wrote it: one blob, memory inside, no ranks."""
    whole = msgspec.to_builtins(checkpoint)
    whole.pop("complete")
    whole.pop("forgotten")
    whole["memory"] = [[r.key, r.version, r.digests(), r.in_state] for r in checkpoint.memory]
    return bytes((1,)) + msgspec.msgpack.encode(whole)


async def assert_migrated(store: StateStore, checkpoint: StreamCheckpoint) -> None:
    """Opened, the store migrates and then loads what schema 1 held."""
    await store.open()
    try:
        loaded = (await store.load())["calls"]
    finally:
        await store.close()
    assert as_stored(loaded) == as_stored(checkpoint)
    assert (loaded.next_sequence, loaded.watermark) == (checkpoint.next_sequence, 5.0)


async def test_a_schema_1_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    checkpoint = fed(a_stream(), 30).checkpoint(fingerprint="f", watermark=5.0, saved_at=6.0)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE genesys_mux_meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute(
            "CREATE TABLE genesys_mux_streams (stream_id TEXT PRIMARY KEY, "
            "checkpoint BLOB NOT NULL, saved_at REAL NOT NULL)"
        )
        db.executemany(
            "INSERT INTO genesys_mux_meta VALUES (?, ?)",
            [("application", "genesys-mux"), ("schema_version", "1")],
        )
        db.execute(
            "INSERT INTO genesys_mux_streams VALUES (?, ?, ?)",
            ("calls", v1_blob(checkpoint), 6.0),
        )
        db.execute("INSERT INTO genesys_mux_streams VALUES (?, ?, ?)", ("broken", b"\x01\xc1", 6.0))
    db.close()
    before = path.read_bytes()
    # One unreadable row: the migration is refused, and leaves the file as it was.
    with pytest.raises(StateError, match=r"cannot migrate it from schema 1.*--reset-state"):
        await SqliteStateStore(path).open()
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM genesys_mux_streams WHERE stream_id = 'broken'")
    db.close()
    await assert_migrated(SqliteStateStore(path), checkpoint)
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT value FROM genesys_mux_meta WHERE key = 'schema_version'"
        ).fetchone() == (str(FILE_SCHEMA_VERSION),)
    db.close()


def a_schema_2_file(path: Path, checkpoints: list[StreamCheckpoint]) -> None:
    """A state file as schema 2 wrote it: a row per stream, a row per remembered key."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE genesys_mux_meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute(
            "CREATE TABLE genesys_mux_streams (stream_id TEXT PRIMARY KEY, "
            "checkpoint BLOB NOT NULL, saved_at REAL NOT NULL)"
        )
        db.execute(
            "CREATE TABLE genesys_mux_memory (stream_id TEXT NOT NULL, key TEXT NOT NULL, "
            "entry BLOB NOT NULL, PRIMARY KEY (stream_id, key)) WITHOUT ROWID"
        )
        db.executemany(
            "INSERT INTO genesys_mux_meta VALUES (?, ?)",
            [("application", "genesys-mux"), ("schema_version", "2")],
        )
        for checkpoint in checkpoints:
            db.execute(
                "INSERT INTO genesys_mux_streams VALUES (?, ?, ?)",
                (checkpoint.stream_id, encode_checkpoint(checkpoint), checkpoint.saved_at),
            )
            # In an order of their own (by key), as schema 2's table kept them.
            db.executemany(
                "INSERT INTO genesys_mux_memory VALUES (?, ?, ?)",
                [(checkpoint.stream_id, r.key, encode_remembered(r)) for r in checkpoint.memory],
            )
    db.close()


async def test_a_schema_2_file_is_migrated_on_open(tmp_path: Path) -> None:
    """Its rows of keys become blocks; the streams load as before, and carry on from there."""
    path = tmp_path / "state.db"
    keys = [f"conversation-{i:05d}" for i in range(4_500)]
    big = StreamCheckpoint(
        "big", "f", 10, 1.0, "run-1", 1.0, [a_remembered(k, r) for r, k in enumerate(keys[::-1])]
    )
    small = fed(a_stream(), 30).checkpoint(fingerprint="f", watermark=5.0, saved_at=6.0)
    a_schema_2_file(path, [big, small])
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO genesys_mux_memory VALUES ('big', 'broken', x'c1')")
    db.close()
    before = path.read_bytes()
    # One unreadable entry: the migration is refused, and leaves the file as it was.
    with pytest.raises(StateError, match=r"cannot migrate it from schema 2.*--reset-state"):
        await SqliteStateStore(path).open()
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM genesys_mux_memory WHERE key = 'broken'")
    db.close()
    store = SqliteStateStore(path)
    await store.open()
    try:
        assert await store.load() == {"big": big, "calls": small}
        # An incremental checkpoint over the migrated blocks.
        later = after_migration(keys)
        await store.save([later])
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT value FROM genesys_mux_meta WHERE key = 'schema_version'"
        ).fetchone() == (str(FILE_SCHEMA_VERSION),)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "genesys_mux_memory_2" not in tables
    db.close()
    async with a_store("sqlite", tmp_path, None) as reopened:
        assert (await reopened.load())["big"] == apply_checkpoint(big, later)


async def test_schema_1_redis_keys_are_migrated_on_open(redis_server: RedisServer) -> None:
    checkpoint = fed(a_stream(), 30).checkpoint(fingerprint="f", watermark=5.0, saved_at=6.0)
    client = redis.Redis.from_url(redis_server.url)
    client.hset("old:state:meta", mapping={"application": "genesys-mux", "schema_version": "1"})
    client.set("old:state:stream:calls", v1_blob(checkpoint))
    client.set("old:state:stream:broken", b"\x01\xc1")
    with pytest.raises(StateError, match=r"cannot migrate it from schema 1.*--reset-state"):
        await RedisStateStore(redis_server.url, prefix="old:").open()
    assert client.hget("old:state:meta", "schema_version") == b"1"
    assert client.get("old:state:stream:calls") == v1_blob(checkpoint)
    client.delete("old:state:stream:broken")
    await assert_migrated(RedisStateStore(redis_server.url, prefix="old:"), checkpoint)
    assert client.hget("old:state:meta", "schema_version") == str(KEYS_SCHEMA_VERSION).encode()
    client.close()


async def test_schema_2_redis_keys_are_migrated_on_open(redis_server: RedisServer) -> None:
    """Its hashes of keys become blocks; the streams load as before, and carry on from there."""
    keys = [f"conversation-{i:05d}" for i in range(4_500)]
    big = StreamCheckpoint(
        "big", "f", 10, 1.0, "run-1", 1.0, [a_remembered(k, r) for r, k in enumerate(keys[::-1])]
    )
    small = fed(a_stream(), 30).checkpoint(fingerprint="f", watermark=5.0, saved_at=6.0)
    client = redis.Redis.from_url(redis_server.url)
    client.hset("old:state:meta", mapping={"application": "genesys-mux", "schema_version": "2"})
    for checkpoint in (big, small):
        client.set(f"old:state:stream:{checkpoint.stream_id}", encode_checkpoint(checkpoint))
        client.hset(
            f"old:state:memory:{checkpoint.stream_id}",
            mapping={r.key: encode_remembered(r) for r in checkpoint.memory},
        )
    client.hset("old:state:memory:big", "broken", b"\xc1")
    before = client.hgetall("old:state:memory:big")
    # One unreadable entry: the migration is refused, and leaves the keys as they were.
    with pytest.raises(StateError, match=r"cannot migrate it from schema 2.*--reset-state"):
        await RedisStateStore(redis_server.url, prefix="old:").open()
    assert client.hget("old:state:meta", "schema_version") == b"2"
    assert client.hgetall("old:state:memory:big") == before
    client.hdel("old:state:memory:big", "broken")
    store = RedisStateStore(redis_server.url, prefix="old:")
    await store.open()
    try:
        assert client.hget("old:state:meta", "schema_version") == str(KEYS_SCHEMA_VERSION).encode()
        # Blocks of up to 2,000 keys, by number.
        assert sorted(client.hkeys("old:state:memory:big")) == [b"1", b"2", b"3"]
        assert client.hkeys("old:state:memory:calls") == [b"1"]
        assert await store.load() == {"big": big, "calls": small}
        # An incremental checkpoint over the migrated blocks.
        later = after_migration(keys)
        await store.save([later])
    finally:
        await store.close()
    reopened = RedisStateStore(redis_server.url, prefix="old:")
    await reopened.open()
    try:
        assert (await reopened.load())["big"] == apply_checkpoint(big, later)
    finally:
        await reopened.close()
    client.close()


async def test_a_fenced_checkpoint_deletes_no_blocks(
    kind: str, server: RedisServer | None, tmp_path: Path
) -> None:
    """A stale owner's checkpoint that would only prune old blocks leaves them all."""
    first = StreamCheckpoint(
        "s", "f", 1, None, "run-1", 1.0, [a_remembered(f"k{i}", i) for i in range(1, 5)], fence=1
    )
    # Everything first wrote is forgotten: its block could go.
    stale = StreamCheckpoint(
        "s", "f", 2, None, "run-1", 2.0, [], False, [r.key for r in first.memory], 1, floor=100
    )
    async with a_store(kind, tmp_path, server) as store:
        await store.save([first])
        await store.claim("s", 2)
        with pytest.raises(FencedStateError):
            await store.save([stale])
        assert await store.load() == {"s": first}


async def test_one_process_at_a_time_writes_a_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteStateStore(path)
    await first.open()
    try:
        second = SqliteStateStore(path)
        with pytest.raises(
            StateError, match=rf"in use by another genesys-mux process \(pid {os.getpid()}\)"
        ):
            await second.open()
        with pytest.raises(StateError, match="in use by another"):
            await second.move_aside()
        assert path.exists()
        # A reader (state show) may look while the writer runs.
        reader = SqliteStateStore(path, exclusive=False)
        await reader.open()
        assert await reader.load() == {}
        await reader.close()
    finally:
        await first.close()
    # Released with the store (or the process): the next one takes it.
    await second.open()
    await second.close()


def test_a_checkpoint_built_in_slices_leaves_keys_seen_meanwhile_to_the_next() -> None:
    bodies = real_bodies(40)
    stream = a_stream()
    for topic, body, _ in bodies[:20]:
        stream.offer(topic, body, None, 1.0, 1.0, event_facts(topic, body))
    settle_all(stream)
    before = {r.key: r for r in memory_records(stream)}
    build = stream.begin_checkpoint(fingerprint="f", watermark=1.0, saved_at=1.0)
    assert not build.step(5)
    # Events arrive between two slices, about keys built already and not yet.
    meanwhile = set()
    for topic, body, _ in bodies[20:]:
        facts = event_facts(topic, body)
        meanwhile.add(facts.key)
        stream.offer(topic, body, None, 3.0, 3.0, facts)
    assert meanwhile & set(before), "the fixture should update some conversations"
    while not build.step(5):
        pass
    first = build.result()
    # Each entry is its key as of the checkpoint's start.
    assert first.memory
    assert all(before[r.key] == r for r in first.memory)
    # The next checkpoint writes what changed meanwhile (once it is settled).
    settle_all(stream)
    second = stream.checkpoint(fingerprint="f", watermark=4.0, saved_at=4.0)
    assert not second.complete
    assert {r.key for r in second.memory} == meanwhile
    assert apply_checkpoint(first, second).memory == memory_records(stream)


def settle_all(stream: Stream) -> None:
    while stream.take(2.0, 2.0) is not None:
        pass
    stream.settle(stream.next_sequence - 1)


def memory_records(stream: Stream) -> list[Remembered]:
    look = copy.deepcopy(stream)
    look.checkpoint_failed()
    return look.checkpoint(fingerprint="f", watermark=None, saved_at=0.0).memory


def checkpoint_in_slices(
    stream: Stream,
    model: StreamCheckpoint | None,
    *,
    limit: int,
    refresh: int,
    meanwhile: Callable[[], object],
) -> StreamCheckpoint:
    """Checkpoint ``stream`` ``limit`` keys a slice, ``meanwhile`` after the first; the model after.

    Checks what any checkpoint must be: each key once, as it was when the
    checkpoint started, least recently seen first, none both written and
    forgotten; and a floor a store may drop below without losing a key
    remembered or keeping one forgotten.
    """
    at_start = {r.key: r for r in memory_records(stream)}
    build = stream.begin_checkpoint(fingerprint="f", watermark=None, saved_at=1.0, refresh=refresh)
    done = build.step(limit)
    meanwhile()
    while not done:
        done = build.step(limit)
    checkpoint = build.result()
    assert [at_start[r.key] for r in checkpoint.memory] == checkpoint.memory
    ranks = [r.rank for r in checkpoint.memory]
    assert ranks == sorted(ranks)
    assert not {r.key for r in checkpoint.memory} & set(checkpoint.forgotten)
    gone = [] if model is None else [r for r in model.memory if r.key in checkpoint.forgotten]
    model = apply_checkpoint(model, checkpoint)
    # What a store may drop below the floor is only what it no longer needs.
    written = {r.key for r in checkpoint.memory}
    assert all(r.rank >= checkpoint.floor or r.key in written for r in model.memory)
    assert all(r.rank < checkpoint.floor for r in gone)
    assert {r.key for r in model.memory} <= set(at_start)
    return model


@settings(max_examples=200, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.lists(st.integers(0, 11), max_size=8),
            st.integers(1, 4),
            st.lists(st.integers(0, 11), max_size=4),
        ),
        min_size=1,
        max_size=6,
    ),
    refresh=st.sampled_from([0, 1, 2]),
)
def test_checkpoints_built_while_keys_are_forgotten_and_seen_again_add_up(
    rounds: list[tuple[list[int], int, list[int]]], refresh: int
) -> None:
    """Whatever is seen, forgotten and seen again between and during slices, nothing is lost.

    A memory of 6 among 12 keys forgets often; keys arrive before a
    checkpoint starts and between its slices, mostly fewer than the log of
    keys seen holds (6), sometimes more. Applied one over the other, the
    checkpoints end as the stream's memory; each says a floor that every
    key remembered reaches and every key forgotten does not, refreshed or
    not.
    """
    stream = Stream("s", dead_letter=lambda _: None, buffer_size=1000, memory=6)
    version = itertools.count(1)

    def offer(keys: list[int]) -> None:
        for key in keys:
            n = next(version)
            facts = EventFacts(f"k{key}", float(n), n.to_bytes(DIGEST_SIZE, "big"))
            stream.offer("t", b"{}", None, 1.0, 1.0, facts)
        settle_all(stream)

    model: StreamCheckpoint | None = None
    for before, limit, meanwhile in rounds:
        offer(before)
        later = functools.partial(offer, meanwhile)
        model = checkpoint_in_slices(stream, model, limit=limit, refresh=refresh, meanwhile=later)
    # One more with nothing arriving meanwhile: the model catches up.
    last = stream.checkpoint(fingerprint="f", watermark=None, saved_at=2.0)
    model = apply_checkpoint(model, last)
    assert model.memory == memory_records(stream)


@settings(max_examples=200, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 11), st.sets(st.integers(0, 2), min_size=1))),
            st.integers(0, 2),
            st.integers(1, 4),
            st.lists(st.tuples(st.integers(0, 11), st.sets(st.integers(0, 2), min_size=1))),
        ),
        min_size=1,
        max_size=8,
    ),
    refresh=st.sampled_from([0, 2]),
)
def test_checkpoints_of_streams_sharing_one_memory_each_add_up_to_the_streams_own(
    rounds: list[tuple[list[tuple[int, set[int]]], int, int, list[tuple[int, set[int]]]]],
    refresh: int,
) -> None:
    """Three streams share records; each one's checkpoints end as that stream's memory.

    Keys reach some of the streams, so records are shared by some, one or
    all; a bound of 4 each over 12 keys forgets often. Each checkpoint
    holds only its stream's keys, as they were at its start, with a floor
    that holds for that stream's store.
    """
    shared = KeyMemory()
    streams = [
        Stream(f"s{i}", dead_letter=lambda _: None, buffer_size=1000, memory=4, key_memory=shared)
        for i in range(3)
    ]
    version = itertools.count(1)

    def offer(events: list[tuple[int, set[int]]]) -> None:
        for key, targets in events:
            n = next(version)
            facts = EventFacts(f"k{key}", float(n), n.to_bytes(DIGEST_SIZE, "big"))
            for target in sorted(targets):
                streams[target].offer("t", b"{}", None, 1.0, 1.0, facts)
        for stream in streams:
            settle_all(stream)

    models: list[StreamCheckpoint | None] = [None, None, None]
    for before, which, limit, meanwhile in rounds:
        offer(before)
        models[which] = checkpoint_in_slices(
            streams[which],
            models[which],
            limit=limit,
            refresh=refresh,
            meanwhile=functools.partial(offer, meanwhile),
        )
    for which, stream in enumerate(streams):
        last = stream.checkpoint(fingerprint="f", watermark=None, saved_at=2.0)
        assert apply_checkpoint(models[which], last).memory == memory_records(stream)


def offer_keys(stream: Stream, keys: Iterable[int], version: Iterator[int]) -> None:
    """Offer a snapshot of each key (each one new), then deliver and settle them."""
    for key in keys:
        n = next(version)
        facts = EventFacts(f"k{key}", float(n), n.to_bytes(DIGEST_SIZE, "big"))
        stream.offer("t", b"{}", None, 1.0, 1.0, facts)
    settle_all(stream)


@pytest.fixture(params=list(LOGS))
def log_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def log_server(log_kind: str, request: pytest.FixtureRequest) -> RedisServer | None:
    if log_kind != "redis":
        return None
    found: RedisServer = request.getfixturevalue("redis_server")
    return found


def stored_entries(
    kind: str, tmp_path: Path, server: RedisServer | None, prefix: str = "test:"
) -> tuple[int, int]:
    """(entries, blocks) in a store's logs of blocks."""
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "state.db") as db:
            entries, blocks = db.execute(
                "SELECT sum(size), count(*) FROM genesys_mux_memory"
            ).fetchone()
        db.close()
        return entries or 0, blocks
    assert server is not None
    client = redis.Redis.from_url(server.url)
    values: list[bytes] = [
        value
        for key in client.scan_iter(match=f"{prefix}state:memory:*")
        for value in client.hvals(key)
        if isinstance(value, bytes)
    ]
    client.close()
    # A block's value: lowest and highest rank, size, forgotten keys, entries.
    return sum(msgspec.msgpack.decode(value)[2] for value in values), len(values)


def test_a_log_of_blocks_loads_what_the_checkpoints_add_up_to(
    log_kind: str, log_server: RedisServer | None
) -> None:
    """Blocks pruned by floor, forgotten keys left out or not, the store opened again: exact.

    Blocks as small as one key, so that a checkpoint spans several.
    """
    prefixes = itertools.count()

    async def run(
        directory: Path, rounds: list[tuple[list[int], int, list[int], bool]], refresh: int
    ) -> None:
        stream = Stream("s", dead_letter=lambda _: None, buffer_size=1000, memory=6)
        version = itertools.count(1)
        model: StreamCheckpoint | None = None
        store = new_store(log_kind, directory, log_server, f"test-{next(prefixes)}:")
        await store.open()
        try:
            for before, limit, meanwhile, reopen in rounds:
                offer_keys(stream, before, version)
                build = stream.begin_checkpoint(
                    fingerprint="f", watermark=None, saved_at=1.0, refresh=refresh
                )
                done = build.step(limit)
                offer_keys(stream, meanwhile, version)
                while not done:
                    done = build.step(limit)
                checkpoint = build.result()
                await store.save([checkpoint])
                model = apply_checkpoint(model, checkpoint)
                if reopen:  # what it knows of the blocks is read from the store again
                    await store.close()
                    await store.open()
                assert await store.load() == {"s": model}
        finally:
            await store.close()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        rounds=st.lists(
            st.tuples(
                st.lists(st.integers(0, 11), max_size=8),
                st.integers(1, 4),
                st.lists(st.integers(0, 11), max_size=4),
                st.booleans(),
            ),
            min_size=1,
            max_size=8,
        ),
        refresh=st.sampled_from([0, 1, 2]),
        block=st.sampled_from([1, 3, 2000]),
    )
    def check(
        rounds: list[tuple[list[int], int, list[int], bool]], refresh: int, block: int
    ) -> None:
        with (
            tempfile.TemporaryDirectory() as directory,
            mock.patch.object(LOGS[log_kind], "_SLICE", block),
        ):
            asyncio.run(run(Path(directory), rounds, refresh))

    check()


@pytest.mark.parametrize("refresh", [0, 2])
async def test_a_log_stays_bounded_when_some_keys_are_never_seen_again(
    log_kind: str,
    log_server: RedisServer | None,
    tmp_path: Path,
    refresh: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quiet keys hold the floor back: refreshed, or the log written whole, it stays small."""
    monkeypatch.setattr(LOGS[log_kind], "_SLICE", 10)
    rng = random.Random(5)
    stream = Stream("s", dead_letter=lambda _: None, buffer_size=10_000, memory=200)
    version = itertools.count(1)
    offer_keys(stream, range(200), version)  # keys 0 to 49 are never seen again
    model: StreamCheckpoint | None = None
    most = 0
    async with a_store(log_kind, tmp_path, log_server) as store:
        assert getattr(store, "refresh", 0) == 2  # what the stores ask of streams
        for _ in range(150):
            offer_keys(stream, rng.sample(range(50, 200), 30), version)
            checkpoint = stream.checkpoint(
                fingerprint="f", watermark=None, saved_at=1.0, refresh=refresh
            )
            await store.save([checkpoint])
            model = apply_checkpoint(model, checkpoint)
            most = max(most, stored_entries(log_kind, tmp_path, log_server)[0])
        assert await store.load() == {"s": model}
    assert model is not None
    assert len(model.memory) == 200
    # 150 checkpoints wrote 4,700 entries: without pruning, all would be kept.
    bound = 3 * 200 + 30 + 10 if refresh else 4 * 200 + 4 * 10
    assert most <= bound, most


async def test_keys_forgotten_stay_forgotten_while_an_older_block_holds_them(
    log_kind: str, log_server: RedisServer | None, tmp_path: Path
) -> None:
    """A block of forgotten keys outlives its own entries while an older block holds theirs."""

    def later(memory: list[Remembered], floor: int, forgotten: list[str]) -> StreamCheckpoint:
        return StreamCheckpoint(
            "s", "f", 1, None, "run-1", 1.0, memory, False, forgotten, floor=floor
        )

    first = StreamCheckpoint(
        "s", "f", 1, None, "run-1", 1.0, [a_remembered("k", 1), a_remembered("l", 10)], floor=1
    )
    # "k" forgotten; "m" written at a low rank (as a refreshed key is).
    second = later([a_remembered("m", 3)], 5, ["k"])
    # "m" seen again: the second block holds nothing current, but "k"'s
    # entry is still in the first, which "l" keeps.
    third = later([a_remembered("m", 11)], 10, [])
    model: StreamCheckpoint | None = None
    async with a_store(log_kind, tmp_path, log_server) as store:
        for checkpoint in (first, second, third):
            await store.save([checkpoint])
            model = apply_checkpoint(model, checkpoint)
            assert await store.load() == {"s": model}
    assert model is not None
    assert [r.key for r in model.memory] == ["l", "m"]


async def test_a_new_state_file_has_large_pages_in_wal_mode(tmp_path: Path) -> None:
    async with a_store("sqlite", tmp_path, None):
        pass
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("PRAGMA page_size").fetchone() == (sqlite_store._PAGE_BYTES,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
