"""State stores against a real SQLite file and a real redis-server, with real streams' state."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis

from genesys_mux.core.checkpoint import (
    SCHEMA_VERSION,
    StreamCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
    fingerprint,
)
from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import DeadLetter, Stream
from genesys_mux.errors import StateError
from genesys_mux.state import (
    MemoryStateStore,
    RedisStateStore,
    SqliteStateStore,
    StateStore,
    open_store,
)
from tests.sinks.conftest import RedisServer, real_bodies

STORES = ["memory", "sqlite", "redis"]


@asynccontextmanager
async def a_store(
    kind: str, tmp_path: Path, server: RedisServer | None
) -> AsyncIterator[StateStore]:
    store: StateStore
    if kind == "memory":
        store = MemoryStateStore()
    elif kind == "sqlite":
        store = SqliteStateStore(tmp_path / "state.db")
    else:
        assert server is not None
        store = RedisStateStore(server.url, prefix="test:")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def a_stream(stream_id: str = "calls") -> Stream:
    letters: list[DeadLetter] = []
    return Stream(stream_id, dead_letter=letters.append, epoch="run-1", buffer_size=1000)


def fed(stream: Stream, count: int) -> Stream:
    for topic, body, _ in real_bodies(count):
        stream.offer(topic, body, None, 1.0, 1.0, event_facts(topic, body))
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
    data = encode_checkpoint(checkpoint)
    assert data[0] == SCHEMA_VERSION
    assert decode_checkpoint(data, "here") == checkpoint
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
    assert checkpoint == StreamCheckpoint("calls", "f", 1, None, "run-1", 0.0, [])
