"""The Redis Streams sink against a real redis-server, including a restart mid-run."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.errors import ConfigError, SinkError, SinkStartError
from genesys_mux.sinks.base import EventRecord, decode_record
from genesys_mux.sinks.redis_streams import RedisStreamsSink
from genesys_mux.sinks.runner import SinkRunner
from tests.net.conftest import eventually
from tests.net.test_multiplexer import harness, org_settings
from tests.sinks.conftest import RedisServer, a_gap, real_events, source


async def entries(
    server: RedisServer, key: str
) -> list[tuple[str, EventRecord | None, dict[bytes, bytes]]]:
    """Every entry of ``key``: (idempotency key, event record or None for a gap, raw fields)."""
    client = aioredis.Redis.from_url(server.url)
    try:
        found = []
        stored = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(key))
        for _entry_id, fields in stored:
            record = decode_record(fields[b"record"])
            key_field = fields[b"idempotency_key"].decode()
            assert record.idempotency_key == key_field
            found.append((key_field, record if isinstance(record, EventRecord) else None, fields))
        return found
    finally:
        await client.aclose()


async def xlen(server: RedisServer, key: str) -> int:
    client = aioredis.Redis.from_url(server.url)
    try:
        return int(await client.xlen(key))
    finally:
        await client.aclose()


async def test_items_land_in_one_key_per_stream_byte_for_byte(redis_server: RedisServer) -> None:
    sink = RedisStreamsSink(redis_server.url)
    voice = real_events(5, stream_id="voice")
    chat = real_events(3, stream_id="chat")
    await sink.start()
    await sink.send([*voice[:2], a_gap("voice"), *voice[2:], *chat])
    await sink.close()

    got = await entries(redis_server, "genesys-mux:voice")
    assert [k for k, _r, _f in got] == [
        voice[0].idempotency_key,
        voice[1].idempotency_key,
        got[2][0],
        *(e.idempotency_key for e in voice[2:]),
    ]
    assert got[2][0].startswith("voice:gap:")
    assert got[2][1] is None
    events = [r for _k, r, _f in got if r is not None]
    assert [r.raw for r in events] == [e.raw for e in voice]
    assert [k for k, _r, _f in await entries(redis_server, "genesys-mux:chat")] == [
        e.idempotency_key for e in chat
    ]


async def test_maxlen_exact_keeps_the_newest(redis_server: RedisServer) -> None:
    sink = RedisStreamsSink(redis_server.url, prefix="t:", maxlen=10, approximate=False)
    events = real_events(50, stream_id="s")
    for at in range(0, 50, 7):
        await sink.send(events[at : at + 7])
    await sink.close()
    assert [k for k, _r, _f in await entries(redis_server, "t:s")] == [
        e.idempotency_key for e in events[40:]
    ]


async def test_maxlen_approximate_trims_in_whole_nodes(redis_server: RedisServer) -> None:
    sink = RedisStreamsSink(redis_server.url, prefix="t:", maxlen=10)
    events = real_events(50, stream_id="s")
    # The same events over and over: the content does not matter here.
    for round_ in range(20):
        renumbered = [
            StreamEvent(
                e.stream_id,
                round_ * 50 + e.sequence,
                e.priority,
                e.topic,
                e.transition,
                e.conversation_id,
                e.correlation_id,
                e.raw,
                e.received_at,
            )
            for e in events
        ]
        await sink.send(renumbered)
    await sink.close()
    length = await xlen(redis_server, "t:s")
    # "~" trims only whole radix-tree nodes (100 entries by default): at least
    # maxlen are kept, and far fewer than the 1000 sent.
    assert 10 <= length <= 10 + 100
    newest = await entries(redis_server, "t:s")
    assert newest[-1][0] == "s:1000"


async def test_a_redis_that_is_down_is_a_retryable_failure(redis_server: RedisServer) -> None:
    sink = RedisStreamsSink(redis_server.url, socket_timeout_s=1.0, connect_timeout_s=1.0)
    first = real_events(1)
    await sink.send(first)
    await redis_server.stop()
    with pytest.raises(SinkError) as caught:
        await sink.send(real_events(1, start=2))
    assert caught.value.retryable
    await redis_server.start()
    third = real_events(1, start=3)
    await sink.send(third)  # reconnects by itself
    await sink.close()
    got = await entries(redis_server, "genesys-mux:voice-main")
    assert [r.sequence for _k, r, _f in got if r is not None] == [1, 3]
    assert [k for k, _r, _f in got] == [first[0].idempotency_key, third[0].idempotency_key]


async def test_start_tells_a_redis_that_is_down_from_a_refused_password(
    redis_server: RedisServer,
) -> None:
    # Down: worth starting again later.
    await redis_server.stop()
    sink = RedisStreamsSink(redis_server.url, socket_timeout_s=1.0, connect_timeout_s=1.0)
    with pytest.raises(SinkError) as down:
        await sink.start()
    assert down.value.retryable
    await sink.close()
    await redis_server.start()
    await sink.start()
    await sink.close()

    # A password Redis refuses: no wait fixes that, so the runner stops on it.
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await admin.config_set("requirepass", "the-right-one")
    finally:
        await admin.aclose()
    wrong = "redis://:hunter2-canary@" + redis_server.url.removeprefix("redis://")
    letters: list[DeadLetter] = []
    runner = SinkRunner(
        source(real_events(2)),
        [RedisStreamsSink(wrong, name="cache")],
        letters.append,
        name="calls",
    )
    with pytest.raises(SinkStartError) as refused:
        await asyncio.wait_for(runner.run(), 10)
    assert not refused.value.retryable
    assert str(refused.value).startswith("stream calls: sink cache cannot start: Redis Authentic")
    assert "hunter2-canary" not in str(refused.value)
    # Which server, and what to fix.
    host = redis_server.url.removeprefix("redis://").split("/")[0]
    assert f"(at redis:{host}" in str(refused.value), str(refused.value)
    assert "check the user name and password in the sink's URL" in str(refused.value)
    # Nothing was read from the stream, so nothing was dead-lettered here.
    assert letters == []


async def test_a_wrong_key_type_is_a_permanent_failure(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.set("genesys-mux:voice-main", "not a stream")
    await client.aclose()
    sink = RedisStreamsSink(redis_server.url, name="cache")
    with pytest.raises(SinkError) as caught:
        await sink.send(real_events(1))
    await sink.close()
    assert not caught.value.retryable
    assert "WRONGTYPE" in str(caught.value)


def test_the_password_is_never_shown() -> None:
    sink = RedisStreamsSink("redis://app:hunter2-canary@127.0.0.1:6379/0")
    assert "hunter2-canary" not in repr(sink)
    assert "hunter2-canary" not in sink.display_url
    assert "hunter2-canary" not in str(vars(sink))
    with pytest.raises(ConfigError) as caught:
        RedisStreamsSink("http://app:hunter2-canary@127.0.0.1/")
    assert "hunter2-canary" not in str(caught.value)


@pytest.mark.parametrize(
    "password",
    ["Xk9#pQ2/zz", "Xk9/pQ2zz", "Xk9?pQ2zz", "Xk9pQ2:zz/w1x"],
    ids=["#/", "/", "?", ":/"],
)
def test_a_password_not_percent_encoded_is_refused_without_echoing_it(password: str) -> None:
    url = f"redis://app:{password}@127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="percent-encode") as caught:
        RedisStreamsSink(url, name="cache")
    assert "Redis sink cache" in str(caught.value)
    assert "%2F" in str(caught.value)
    pieces = {p for p in password.replace("#", "/").replace("?", "/").split("/") if p}
    for piece in {password, *pieces}:
        assert piece not in str(caught.value)
    encoded = quote(password, safe="")
    sink = RedisStreamsSink(f"redis://app:{encoded}@127.0.0.1:6379/0")
    for text in (repr(sink), str(vars(sink)), sink.display_url):
        for piece in {encoded, *pieces}:
            assert piece not in text


async def test_everything_delivered_during_a_redis_restart_arrives(
    redis_server: RedisServer,
) -> None:
    async with harness(org_settings(rate=20.0), buffer_threshold=20_000) as h:
        await h.mux.add_stream({"id": "calls", "filter": {"channelType": "voice"}})
        letters: list[DeadLetter] = []
        runner = SinkRunner(
            h.mux.stream("calls"),
            [RedisStreamsSink(redis_server.url, socket_timeout_s=1.0, connect_timeout_s=1.0)],
            letters.append,
            batch_size=20,
            linger_s=0.02,
            max_attempts=None,
            backoff=Backoff(0.05, 0.3),
            name="calls",
        )
        failures: list[tuple[str, str]] = []
        runner.on_failure.append(lambda sink, text: failures.append((sink, text)))
        task = asyncio.create_task(runner.run())
        key = "genesys-mux:calls"

        await eventually(lambda: runner.sent >= 20, within=30)
        # Down while events keep coming: sends fail and are retried...
        await redis_server.stop()
        await eventually(lambda: runner.retries >= 2)
        in_flight = runner.sent
        # ...and after the restart (data kept, as in a maintenance restart)
        # everything held back goes through.
        await redis_server.start()
        await eventually(lambda: runner.sent >= in_flight + 40, within=30)

        await h.control("traffic", {"running": False})
        await h.mux.stop(drain=True, timeout_s=20)  # the stream ends once its buffer is empty
        await asyncio.wait_for(task, 20)

        delivered = h.mux.stats()["streams"]["calls"].delivered
        got = await entries(redis_server, key)
        keys = Counter(k for k, _r, _f in got)
        sequences = {r.sequence for _k, r, _f in got if r is not None}
        assert sequences == set(range(1, delivered + 1)), "a delivered event is missing"
        # Each entry is keyed by its record's own key: the stream, the
        # conversation and the state digest, the same in every run.
        assert all(
            k == r.idempotency_key and k.startswith(f"calls:{r.conversation_id}:")
            for k, r, _f in got
            if r is not None
        )
        # Re-sent batches may repeat entries; each repeat is identical.
        for k, n in keys.items():
            if n > 1:
                copies = {f[b"record"] for kk, _r, f in got if kk == k}
                assert len(copies) == 1
        assert letters == []
        assert h.dlq.letters == []
        assert runner.dead_lettered == 0
        assert runner.failed_batches == 0
        assert failures
        assert all(sink == "redis" for sink, _t in failures)
        assert redis_server.starts == 2


async def test_a_state_already_stored_is_stored_once(redis_server: RedisServer) -> None:
    events = real_events(6, stream_id="calls")
    first = RedisStreamsSink(redis_server.url, dedupe_ttl_s=60)
    again = RedisStreamsSink(redis_server.url, dedupe_ttl_s=60)
    await first.send(events[:4])
    # Another instance (a handover's overlap) sends some of the same states.
    await again.send(events[2:])
    await first.close()
    await again.close()
    got = await entries(redis_server, "genesys-mux:calls")
    assert [k for k, _r, _f in got] == [e.idempotency_key for e in events]
    assert (first.deduplicated, again.deduplicated) == (0, 2)


async def test_a_batch_that_failed_is_stored_in_full_when_sent_again(
    redis_server: RedisServer,
) -> None:
    """A record is marked seen only once stored: a failed XADD must not hide it from a replay."""
    events = real_events(5, stream_id="calls")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set("genesys-mux:calls", "not a stream")
        sink = RedisStreamsSink(redis_server.url, dedupe_ttl_s=3600, name="cache")
        with pytest.raises(SinkError, match="WRONGTYPE") as caught:
            await sink.send(events)
        assert not caught.value.retryable
        await client.delete("genesys-mux:calls")  # the operator fixes the key, then replays
        await sink.send(events)
        await sink.close()
        assert await client.xlen("genesys-mux:calls") == len(events)
        assert sink.deduplicated == 0
        assert await client.zcard("genesys-mux:calls:seen") == len(events)
    finally:
        await client.aclose()
    got = await entries(redis_server, "genesys-mux:calls")
    assert [k for k, _r, _f in got] == [e.idempotency_key for e in events]


async def test_a_fenced_ex_owner_cannot_write_and_nothing_is_dead_lettered(
    redis_server: RedisServer,
) -> None:
    events = real_events(8, stream_id="calls")
    old = RedisStreamsSink(redis_server.url, fence=1, dedupe_ttl_s=60, name="old")
    new = RedisStreamsSink(redis_server.url, fence=2, dedupe_ttl_s=60, name="new")
    await old.send(events[:2])
    await new.send(events[2:4])
    # The old owner wakes up (a frozen process) and tries to write.
    with pytest.raises(SinkError, match="has a newer owner than fencing token 1"):
        await old.send(events[4:6])
    assert old.fenced == 2

    async def source() -> AsyncIterator[StreamEvent | Gap]:
        for event in events[6:]:
            yield event

    letters: list[DeadLetter] = []
    settled: list[int] = []
    runner = SinkRunner(source(), [old], letters.append, batch_size=10, name="calls")
    runner.on_settled.append(settled.append)
    await runner.run()
    await new.close()
    # Refused, counted, neither retried nor dead-lettered nor settled: the
    # new owner delivers these.
    assert letters == []
    assert settled == []
    assert runner.per_sink["old"].fenced == 2
    assert runner.per_sink["old"].retries == 0
    got = await entries(redis_server, "genesys-mux:calls")
    assert [k for k, _r, _f in got] == [e.idempotency_key for e in events[:4]]


async def fill_up(client: aioredis.Redis) -> None:
    """Give Redis a 4 MB limit under noeviction, and fill it until it refuses a SET."""
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "4mb")
    for filled in range(10_000):
        try:
            await client.set(f"filler:{filled}", b"x" * 10_000)
        except OutOfMemoryError:
            return
    raise AssertionError("Redis took 100 MB past its 4 MB maxmemory")


async def test_a_full_redis_refuses_a_guarded_batch_retryably_and_stores_none_of_it(
    redis_server: RedisServer,
) -> None:
    """Redis checks maxmemory at a script's first write only: that must be one it refuses.

    The fence is already the sink's (no SET), so the script's first write
    is its own: pruning the :seen set first (not a command Redis refuses
    when full) let every XADD of the batch through a full Redis.
    """
    events = real_events(41, stream_id="calls")
    sink = RedisStreamsSink(redis_server.url, fence=3, dedupe_ttl_s=3600, name="cache")
    plain = RedisStreamsSink(redis_server.url, name="plain")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await sink.send(events[:1])
        await fill_up(client)
        for batch in (events[1:21], events[21:]):
            with pytest.raises(SinkError, match="OutOfMemoryError") as caught:
                await sink.send(batch)
            assert caught.value.retryable
        with pytest.raises(SinkError, match="OutOfMemoryError") as caught:
            await plain.send(events[1:3])
        assert caught.value.retryable
        assert await client.xlen("genesys-mux:calls") == 1
        assert await client.zcard("genesys-mux:calls:seen") == 1
        # Room again: the batches sent again are stored, each record once.
        await client.config_set("maxmemory", "0")
        await sink.send(events[1:21])
        await sink.send(events[21:])
    finally:
        await sink.close()
        await plain.close()
        await client.aclose()
    got = await entries(redis_server, "genesys-mux:calls")
    assert [k for k, _r, _f in got] == [e.idempotency_key for e in events]
    assert sink.deduplicated == 0


async def test_a_key_seen_longer_ago_than_the_ttl_is_stored_again_and_pruned(
    redis_server: RedisServer,
) -> None:
    events = real_events(3, stream_id="calls")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        # Seen 1 ms after the epoch: long past any TTL, and not yet pruned.
        old = {events[0].idempotency_key: 1, "seen-long-ago": 1}
        await client.zadd("genesys-mux:calls:seen", old)
        sink = RedisStreamsSink(redis_server.url, dedupe_ttl_s=60)
        await sink.send(events)
        await sink.close()
        assert sink.deduplicated == 0
        assert await client.xlen("genesys-mux:calls") == 3
        seen = cast(
            list[tuple[bytes, float]],
            await client.zrange("genesys-mux:calls:seen", 0, -1, withscores=True),
        )
    finally:
        await client.aclose()
    assert sorted(k.decode() for k, _ in seen) == sorted(e.idempotency_key for e in events)
    assert all(score > 1 for _, score in seen), "each marked seen now"
