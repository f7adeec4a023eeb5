"""Members and stream leases against a real redis-server: tokens, expiry, fencing, failures."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from genesys_mux.cluster import LeaseTable, MemberInfo
from genesys_mux.errors import ClusterError, ConfigError
from tests.sinks.conftest import RedisServer
from tests.waiting import eventually


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    found = aioredis.Redis.from_url(redis_server.url, socket_timeout=1.0)
    try:
        yield found
    finally:
        await found.aclose()


async def server_ms(client: aioredis.Redis) -> int:
    """Redis's clock in milliseconds, as the acquisition script reads it."""
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def table(client: aioredis.Redis, instance: str, ttl_s: float = 10.0) -> LeaseTable:
    return LeaseTable(client, cluster="prod", instance=instance, lease_ttl_s=ttl_s)


async def test_a_free_lease_is_taken_with_a_token_and_refused_to_others(
    client: aioredis.Redis,
) -> None:
    a, b = table(client, "a"), table(client, "b")
    before = await server_ms(client)
    lease = await a.acquire("calls")
    assert lease is not None
    assert lease.holder == "a"
    # Never below the server's clock (see the next test but one), and exact.
    assert before <= lease.token <= await server_ms(client)
    assert await client.get("genesys-mux:cluster:{prod}:fence:calls") == b"%d" % lease.token
    assert await b.acquire("calls") is None
    # Acquiring again is a renewal: the same token.
    again = await a.acquire("calls")
    assert again is not None
    assert again.token == lease.token
    held = await b.leases(["calls", "chats"])
    assert set(held) == {"calls"}
    assert (held["calls"].holder, held["calls"].token) == ("a", lease.token)
    assert 0 < held["calls"].ttl_ms <= 10_000
    # Every key of the cluster shares one hash tag (one slot on a Redis Cluster).
    keys = [k.decode() async for k in client.scan_iter(match="*")]
    assert keys
    assert all(k.startswith("genesys-mux:cluster:{prod}:") for k in keys)


async def test_every_acquisition_gets_a_larger_token(client: aioredis.Redis) -> None:
    a, b = table(client, "a"), table(client, "b")
    first = await a.acquire("calls")
    assert first is not None
    assert await a.release(first)
    second = await b.acquire("calls")
    assert second is not None
    assert second.token > first.token
    assert await b.fence("calls") == second.token
    # The old holder learns it lost the stream, and cannot take it back.
    assert await a.renew([first]) == [first]
    assert not await a.release(first)
    assert await a.acquire("calls") is None


async def test_tokens_stay_larger_when_redis_loses_the_counter(client: aioredis.Redis) -> None:
    """A Redis restarted without persistence (or flushed) forgets the fencing counters.

    The sinks and the state store remember the last token they saw, and
    refuse smaller ones: tokens starting again at 1 would be refused for
    ever, with nobody newer to deliver the stream.
    """
    a, b = table(client, "a"), table(client, "b")
    first = await a.acquire("calls")
    assert first is not None
    # Many acquisitions within one millisecond still get a token each.
    assert await a.release(first)
    burst = []
    for _ in range(50):
        lease = await b.acquire("calls")
        assert lease is not None
        burst.append(lease.token)
        assert await b.release(lease)
    assert burst == sorted(set(burst))
    assert burst[0] > first.token
    await client.flushall()

    # The tokens given out are at most the clock of their time plus the
    # burst; once the clock passed the last, a lost counter cannot matter.
    async def clock_passed() -> bool:
        return await server_ms(client) > burst[-1]

    await eventually(clock_passed)
    after = await a.acquire("calls")
    assert after is not None
    assert after.token > burst[-1]


async def test_an_expired_lease_goes_to_the_next_and_the_old_holder_cannot_renew_it(
    client: aioredis.Redis,
) -> None:
    a, b = table(client, "a", ttl_s=0.3), table(client, "b", ttl_s=0.3)
    first = await a.acquire("calls")
    assert first is not None
    assert await a.renew([first]) == []  # still ours
    # Not renewed: once it expires, the next one takes it.
    taken = await eventually(lambda: b.acquire("calls"), within=5.0)
    assert taken is not None
    assert taken.token > first.token
    assert await a.renew([first]) == [first]
    assert await b.renew([taken]) == []


async def test_members_come_with_their_heartbeat_and_go_without_it(
    client: aioredis.Redis,
) -> None:
    a, b = table(client, "a", ttl_s=0.3), table(client, "b", ttl_s=0.3)
    now = time.time()
    await a.heartbeat(MemberInfo("a", "client-1", now, "host-a:1"))
    await b.heartbeat(MemberInfo("b", "client-2", now))
    assert [(m.id, m.client) for m in await a.members()] == [
        ("a", "client-1"),
        ("b", "client-2"),
    ]
    await b.leave()
    assert [m.id for m in await a.members()] == ["a"]

    async def gone() -> bool:
        return await b.members() == []

    await eventually(gone, within=5.0)
    with pytest.raises(ConfigError, match="given to instance"):
        await a.heartbeat(MemberInfo("b", "client-1", now))


@pytest.mark.parametrize("bad", ["a|b", "{x}", "", "-a", "a b"])
def test_ids_that_could_break_a_key_are_refused(client: aioredis.Redis, bad: str) -> None:
    with pytest.raises(ConfigError, match="instance id"):
        table(client, bad)
    with pytest.raises(ConfigError, match="cluster name"):
        LeaseTable(client, cluster=bad, instance="a")


async def test_a_redis_that_went_away_is_a_cluster_error(
    client: aioredis.Redis, redis_server: RedisServer
) -> None:
    a = table(client, "a")
    await redis_server.stop(save=False)
    with pytest.raises(ClusterError, match=r"cannot acquire the lease of calls.*stops forwarding"):
        await a.acquire("calls")


async def test_holders_are_read_in_one_round_trip(client: aioredis.Redis) -> None:
    a, b = table(client, "a"), table(client, "b")
    assert await a.acquire("calls") is not None
    assert await b.acquire("chats") is not None
    assert await a.holders(["calls", "chats", "none"]) == {"calls": "a", "chats": "b"}
    assert await a.holders([]) == {}


async def test_one_member_at_a_time_stands_by_and_a_promise_keeps_it(
    client: aioredis.Redis,
) -> None:
    holder, s, i = table(client, "h"), table(client, "s"), table(client, "i")
    lease = await holder.acquire("calls")
    assert lease is not None
    assert await s.signal_ready("calls")
    # Another member cannot take its place as the one ready.
    assert not await i.signal_ready("calls")
    assert await holder.ready_for(["calls"]) == {"calls": "s"}
    # A promise only to the member ready, and only by the lease's holder.
    assert not await holder.promise(lease, "i")
    assert not await i.promise(lease, "s")
    assert await holder.promise(lease, "s")
    assert await holder.ready_for(["calls"]) == {"calls": "s"}
    # Promised, it cannot withdraw (its standby must stay); its signal renews it.
    assert not await s.withdraw_ready("calls")
    assert await s.signal_ready("calls")
    assert not await i.signal_ready("calls")
    assert await holder.release(lease)
    assert await holder.ready_for(["calls"]) == {"calls": "s"}
    # Taken: the promise is spent; then anyone may stand by for the next move.
    await s.clear_ready("calls")
    assert await holder.ready_for(["calls"]) == {}
    assert await i.signal_ready("calls")
    assert await i.withdraw_ready("calls")
    assert await s.withdraw_ready("calls")  # not ready: nothing to withdraw
    assert await holder.ready_for(["calls"]) == {}


async def test_a_promise_needs_the_lease_still_held(client: aioredis.Redis) -> None:
    holder, s = table(client, "h", ttl_s=0.2), table(client, "s")
    lease = await holder.acquire("calls")
    assert lease is not None
    assert await s.signal_ready("calls")

    async def expired() -> bool:
        return await holder.leases(["calls"]) == {}

    await eventually(expired)
    assert not await holder.promise(lease, "s")


async def test_the_clock_offset_is_measured_against_redis_s_clock(client: aioredis.Redis) -> None:
    """Redis runs on this host: the two clocks agree, to well within the warning's second."""
    offset = await table(client, "a").clock_offset()
    assert offset is not None
    assert abs(offset) < 0.25
    # A reading slower than allowed is none: half its round trip could be error.
    assert await table(client, "a").clock_offset(max_round_trip_s=0.0) is None
