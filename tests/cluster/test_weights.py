"""Streams weigh what they subscribe, so a cluster never opens more channels than its client has.

The placement keeps each OAuth client's channels within its budget by
counting the topics of the streams it places. An all-queues stream (a
filter naming neither a queue nor a user) subscribes one topic per queue of
the org, which its configuration cannot say: counted as one topic, two such
streams on two members opened more channels than the client may hold, and
the platform evicted the least recently used of them, another member's
live channel (reference §3).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from genesys_mux import StreamConfig
from genesys_mux.cluster import ClusterMember, LeaseTable
from genesys_mux.cluster.leases import MemberInfo
from genesys_mux.cluster.member import cluster_members, configured_weights, stream_weights
from genesys_mux.core.events import ControlEvent, StreamUnplaced
from genesys_mux.emulator import Emulator
from genesys_mux.emulator.platform import Channel, ClientApp, PlatformLimits, Token
from genesys_mux.observability.metrics import MuxMetrics
from tests.net.test_multiplexer import demo_mux, org_settings
from tests.sinks.conftest import RedisServer
from tests.waiting import eventually

QUEUE = "8f0b7b8e-1c1a-4c2e-9a53-1d1f2a3b4c5d"
USER = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"


def member(
    stream_id: str,
    *,
    topics: int | None = None,
    queues: int | None = None,
    queues_at: float = 0.0,
) -> MemberInfo:
    """A member record as another instance publishes it."""
    return MemberInfo(
        f"m-{stream_id}-{topics}-{queues}",
        "c1",
        0.0,
        topics={} if topics is None else {stream_id: topics},
        queues=queues,
        queues_at=queues_at,
    )


def test_members_whose_configurations_differ_weigh_a_stream_alike() -> None:
    """One has a stream of 50 topics that the other lacks: both weigh it 50, not 1.

    Weighed 1 where it is lacking, the placement would differ from member to
    member: one stands by for a stream its holder, by its own placement,
    never hands over.
    """
    big = StreamConfig(
        id="big", topics=[f"v2.users.{USER[:-2]}{n:02d}.presence" for n in range(50)]
    )
    having = MemberInfo("m-having", "c1", 0.0, streams=configured_weights([big]))
    lacking = MemberInfo("m-lacking", "c1", 0.0, streams={})
    published = [having, lacking]
    assert stream_weights([big], published) == {"big": 50}
    assert stream_weights([], published, others=["big"]) == {"big": 50}


def test_a_member_of_an_older_release_has_only_what_it_carries() -> None:
    """It says nothing of its configuration: no stream it may lack is placed on it."""
    older = MemberInfo("m-older", "c1", 0.0, topics={"held": 3})
    newer = MemberInfo("m-newer", "c1", 0.0, streams={"held": 3, "added": 1})
    old, new = cluster_members([older, newer])
    assert (old.knows("held"), old.knows("added")) == (True, False)
    assert (new.knows("held"), new.knows("added")) == (True, True)


def test_a_stream_weighs_the_plain_topics_its_configuration_names() -> None:
    streams = [
        # A queue's topic, and a combined user topic: three plain topics.
        StreamConfig(
            id="a",
            filter={"queueId": QUEUE},
            topics=[f"v2.users.{USER}?presence&routingStatus"],
        ),
        # A raw topic that is the filter's own counts once.
        StreamConfig(
            id="b",
            filter={"queueId": QUEUE},
            topics=[f"v2.routing.queues.{QUEUE}.conversations"],
        ),
        StreamConfig(id="c", filter={"userId": USER}),
    ]
    assert stream_weights(streams) == {"a": 3, "b": 1, "c": 1}


def test_an_all_queues_stream_weighs_the_org_s_queues_as_the_members_counted_them() -> None:
    streams = [
        StreamConfig(id="all", filter={}),
        StreamConfig(
            id="all-plus", filter={"channelType": "voice"}, topics=[f"v2.users.{USER}.presence"]
        ),
    ]
    # Nobody has counted the queues yet: they count as one.
    assert stream_weights(streams) == {"all": 1, "all-plus": 2}
    # The latest count published wins, larger or not: queues come and go.
    published = [
        member("x", queues=40, queues_at=300.0),
        member("y", queues=42, queues_at=200.0),
        member("z"),
    ]
    assert stream_weights(streams, published) == {"all": 40, "all-plus": 41}


def test_what_a_carrier_publishes_is_the_weight() -> None:
    streams = [StreamConfig(id="all", filter={}), StreamConfig(id="q", filter={"queueId": QUEUE})]
    # The carrier listed more queues than the others had counted...
    assert stream_weights(
        streams, [member("all", topics=57), member("other", queues=50, queues_at=9.0)]
    ) == {"all": 57, "q": 1}
    # ... or fewer: what it subscribes is what it takes; two carriers (a
    # holder and the member standing by) count as the larger.
    assert stream_weights(
        streams,
        [member("all", topics=7), member("all", topics=8), member("x", queues=50, queues_at=9.0)],
    ) == {"all": 8, "q": 1}
    # A stream weighs one topic at least.
    assert stream_weights(streams, [member("q", topics=0)]) == {"all": 1, "q": 1}


def test_a_member_record_of_an_older_release_still_reads() -> None:
    import msgspec

    old = msgspec.json.encode({"id": "a", "client": "c1", "since": 1.0, "host": "h"})
    info = msgspec.json.decode(old, type=MemberInfo)
    assert (info.topics, info.queues, info.queues_at, info.channels) == ({}, None, 0.0, 0)


# -- on the emulator ------------------------------------------------------------


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


#: Four topics a channel and five channels for the client: an all-queues
#: stream over the org's ten queues takes three channels, and a member
#: keeps one more spare for its rotations.
TOPICS_PER_CHANNEL = 4
BUDGET = 5
QUEUES = 10


def budgeted_org(queues: int) -> Any:
    """An org of ``queues`` queues whose client has the budget, at four topics a channel."""
    return org_settings(
        queues=queues,
        rate=20.0,
        clients=[ClientApp("demo-client", "demo-secret", channels=BUDGET)],
        limits=PlatformLimits(topics_per_channel=TOPICS_PER_CHANNEL),
    )


#: Two streams over every queue: distinct topics (the calls and the chats of each queue).
ALL_QUEUES = [
    StreamConfig(id="voice", filter={"channelType": "voice"}),
    StreamConfig(id="chat", filter={"channelType": "chat"}),
]


async def two_members(
    stack: AsyncExitStack,
    emulator: Emulator,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    told: list[ControlEvent],
) -> tuple[list[ClusterMember], list[str]]:
    """Members ``a`` and ``b`` running on ALL_QUEUES; the live channels the platform evicts.

    Channels left without a socket (by a reconnect, a rotation) are evicted
    first and harmlessly: only the eviction of one with a socket loses
    events, so only those are listed.
    """
    evicted: list[str] = []
    create = emulator.platform.create_channel

    def creating(token: Token, now: float) -> tuple[Channel, list[Channel]]:
        channel, victims = create(token, now)
        evicted.extend(v.id for v in victims if v.connected)
        return channel, victims

    monkeypatch.setattr(emulator.platform, "create_channel", creating)
    members = []
    for name in ("a", "b"):
        mux = demo_mux(
            emulator,
            topics_per_channel=TOPICS_PER_CHANNEL,
            max_channels=BUDGET,
            parallel_rotations=False,
        )
        await mux.start()
        stack.push_async_callback(mux.stop, drain=False)
        client = aioredis.Redis.from_url(redis_server.url, socket_timeout=1.0)
        stack.push_async_callback(client.aclose)
        options: dict[str, Any] = {"budgets": {"c1": BUDGET}, "heartbeat_s": 0.2}
        node = ClusterMember(
            mux,
            LeaseTable(client, cluster="weights", instance=name, lease_ttl_s=1.0),
            ALL_QUEUES,
            client="c1",
            topics_per_channel=TOPICS_PER_CHANNEL,
            **options,
        )
        node.on_control.append(told.append)
        task = asyncio.create_task(node.run(), name=f"member-{name}")
        stack.push_async_callback(stopped, task)
        members.append(node)
    return members, evicted


def one_carried(members: list[ClusterMember]) -> bool:
    """One stream carried, the other reported as fitting nowhere by every member."""
    held = [s for m in members for s in m.status.held]
    unplaced = [set(m.status.placement.unplaced) for m in members]
    return len(held) == 1 and all(len(u) == 1 and not u & set(held) for u in unplaced)


async def test_two_all_queues_streams_never_open_more_channels_than_the_client_has(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Emulator(budgeted_org(QUEUES)) as emulator, AsyncExitStack() as stack:
        told: list[ControlEvent] = []
        members, evicted = await two_members(stack, emulator, redis_server, monkeypatch, told)

        def settled() -> bool:
            assert evicted == [], f"the platform evicted {len(evicted)} channels"
            return one_carried(members)

        # One stream fits the client's five channels (three and a spare); the
        # other is reported, on every member, rather than carried beyond them.
        await eventually(settled, within=20.0)
        (carrier,) = [m for m in members if m.status.held]
        (carried,) = carrier.status.held
        await eventually(lambda: carrier.mux.live)
        for m in members:
            assert m.weights == {"voice": QUEUES, "chat": QUEUES}
            assert m.info.queues == QUEUES
        # What it carries, it publishes from its next round on.
        await eventually(lambda: carrier.info.topics == {carried: QUEUES})
        assert any(isinstance(e, StreamUnplaced) for e in told)
        # The platform never had to evict a channel, and the client holds no more than it may.
        assert evicted == []
        own = [c for c in emulator.platform.channels.values() if c.client_id == "demo-client"]
        assert len(own) <= BUDGET


async def test_a_stream_that_outgrows_the_client_s_channels_is_let_go_not_carried_on(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two queues: both streams fit (one channel each, and a spare each); then the org grows."""
    async with Emulator(budgeted_org(2)) as emulator, AsyncExitStack() as stack:
        told: list[ControlEvent] = []
        members, evicted = await two_members(stack, emulator, redis_server, monkeypatch, told)
        await eventually(lambda: all(len(m.status.held) == 1 for m in members), within=20.0)
        assert evicted == []
        # Ten queues: each stream needs three channels and a spare, and only
        # one fits the five. The carriers' queue refresh finds them.
        for _ in range(QUEUES - 2):
            emulator.centre.add_queue(None, 0.0)
        for m in members:
            await m.mux.refresh_queues()

        # Its holder lets the second go (checkpointed: released, not lost),
        # and nobody takes it.
        def let_go_everywhere() -> bool:
            running = {s.id for m in members for s in m.mux.streams()}
            released = sum(m.status.changes.get("released", 0) for m in members)
            held = {s for m in members for s in m.status.held}
            return one_carried(members) and running == held and released >= 1

        await eventually(let_go_everywhere, within=20.0)
        (holder,) = [m for m in members if m.status.held]
        (let_go,) = members[0].status.placement.unplaced
        assert sum(m.status.changes.get("released", 0) for m in members) == 1
        assert any(isinstance(e, StreamUnplaced) and e.stream_id == let_go for e in told)
        # The storm, if the growth caused one, ends once the sockets left are
        # the holder's own (the other member's retired ones closed, each
        # slot's reconnect done): a channel made while another member's
        # socket was still open could evict it. From then on the platform
        # evicts nothing more while the carried stream keeps delivering.
        assert holder.mux.pool is not None
        pool = holder.mux.pool

        def only_the_holder_s_sockets() -> bool:
            connected = {
                c.id
                for c in emulator.platform.channels.values()
                if c.client_id == "demo-client" and c.connected
            }
            return connected <= set(pool.channel_ids().values())

        await eventually(only_the_holder_s_sockets, within=20.0)
        before = len(evicted)
        delivered = holder.mux.stats()["streams"][next(iter(holder.status.held))].received
        await eventually(
            lambda: (
                holder.mux.stats()["streams"][next(iter(holder.status.held))].received
                >= delivered + 20
            )
        )
        assert len(evicted) == before
        assert holder.status.client_channels <= BUDGET


async def test_a_client_s_members_add_up_their_channels_and_say_when_over_its_budget(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every member publishes the channels it needs; each adds up its client's and warns once."""
    async with Emulator(org_settings(queues=3, rate=5.0)) as emulator, AsyncExitStack() as stack:
        mux = demo_mux(emulator, topics_per_channel=2)
        await mux.start()
        stack.push_async_callback(mux.stop, drain=False)
        # Three topics on two topics a channel: two sockets.
        await mux.add_stream(StreamConfig(id="here", filter={}))
        await eventually(lambda: mux.live)
        assert mux.channels_in_use == 2

        async def table(instance: str) -> LeaseTable:
            client = aioredis.Redis.from_url(redis_server.url, socket_timeout=1.0)
            stack.push_async_callback(client.aclose)
            return LeaseTable(client, cluster="sum", instance=instance, lease_ttl_s=30.0)

        # Others on the same client and on another one, as their member keys say.
        for name, client, channels in (("o1", "c1", 3), ("o2", "c1", 1), ("o3", "c2", 9)):
            await (await table(name)).heartbeat(MemberInfo(name, client, 0.0, channels=channels))
        member = ClusterMember(
            mux, await table("me"), [], client="c1", budgets={"c1": 6}, heartbeat_s=0.2
        )
        metrics = MuxMetrics(mux)
        metrics.watch_cluster(member)

        def exported() -> dict[str, float]:
            return {
                s.name: s.value
                for family in metrics.registry.collect()
                if family.name.startswith("genesys_mux_cluster_client_channel")
                for s in family.samples
                if s.labels == {"mux_cluster": "sum", "client": "c1"}
            }

        with caplog.at_level(logging.WARNING, logger="genesys_mux.cluster"):
            await member.tick()
            # 2 here, 3 and 1 on the others of c1: the other client's do not count.
            assert member.info.channels == 2
            assert (member.status.client_channels, member.status.channel_budget) == (6, 6)
            assert exported() == {
                "genesys_mux_cluster_client_channels": 6,
                "genesys_mux_cluster_client_channel_budget": 6,
            }
            assert not [r for r in caplog.records if "more than its" in r.message]
            # One more channel elsewhere: over the budget, said once however long it lasts.
            await (await table("o2")).heartbeat(MemberInfo("o2", "c1", 0.0, channels=2))
            await member.tick()
            await member.tick()
        assert member.status.client_channels == 7
        assert exported()["genesys_mux_cluster_client_channels"] == 7
        warned = [r.getMessage() for r in caplog.records if "more than its" in r.message]
        assert warned == [
            "cluster: the members of OAuth client c1 need 7 channels, more than its 6: the "
            "platform evicts the least recently used of them (see cluster status)"
        ]


async def test_counting_the_queues_leaves_a_stream_to_a_fresh_listing() -> None:
    """A count at start is no list to subscribe from hours later: queues come and go."""
    async with Emulator(org_settings(queues=3, rate=0.0)) as emulator:
        mux = demo_mux(emulator)
        await mux.start()
        try:
            assert mux.queue_count is None
            assert await mux.count_queues() == 3
            assert mux.queue_count == 3
            assert mux.queues_listed_at is not None
            emulator.centre.add_queue(None, 0.0)  # a queue created later
            # A member that takes an all-queues stream (a failover, a handover).
            await mux.add_stream(StreamConfig(id="all", filter={}), standby=True)
            assert mux.topic_counts() == {"all": 4}
            assert mux.queue_count == 4
        finally:
            await mux.stop(drain=False)


async def test_a_refused_queue_count_is_retried_after_a_back_off_and_said_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every member lists against the client's shared request budget: no retry every round."""
    async with Emulator(org_settings(queues=3, rate=0.0)) as emulator, AsyncExitStack() as stack:
        mux = demo_mux(emulator)
        await mux.start()
        stack.push_async_callback(mux.stop, drain=False)
        # A role that may not list queues: the platform answers 403, every time.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{emulator.base_url}/__emulator__/faults",
                json={
                    "fault": "http_5xx",
                    "status": 403,
                    "count": 1000,
                    "path": "/api/v2/routing/queues",
                },
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        (refusal,) = emulator.http_faults
        client = aioredis.Redis.from_url(redis_server.url, socket_timeout=1.0)
        stack.push_async_callback(client.aclose)
        # Another member carries the all-queues stream: this one only weighs it.
        other = LeaseTable(client, cluster="count", instance="other", lease_ttl_s=60.0)
        await other.heartbeat(MemberInfo("other", "c1", 0.0, topics={"all": 7}))
        assert await other.acquire("all") is not None
        member = ClusterMember(
            mux,
            LeaseTable(client, cluster="count", instance="me", lease_ttl_s=60.0),
            [StreamConfig(id="all", filter={})],
            client="c1",
            heartbeat_s=5.0,
        )
        with caplog.at_level(logging.WARNING, logger="genesys_mux.cluster"):
            for _ in range(8):
                await member.tick()
        # One listing in eight rounds (the next is a heartbeat away, then two...).
        assert 1000 - refusal.remaining == 1
        assert member.info.queues is None
        assert member.weights == {"all": 7}  # what its carrier says
        warned = [r.getMessage() for r in caplog.records if "count the org's queues" in r.message]
        assert len(warned) == 1
        assert "403" in warned[0]
        assert "retrying with a back-off" in warned[0]
