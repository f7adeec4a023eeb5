"""Cluster members on one Redis sharing streams: balance, join, crash, planned leave.

Each member is a real Multiplexer on the emulator with its own
:class:`ClusterMember` loop; leases, members and the shared state live in
a real redis-server. What each member carries is read from its status and
checked against the leases in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from genesys_mux import Multiplexer, StreamConfig
from genesys_mux.cluster import ClusterMember, Lease, LeaseTable
from genesys_mux.cluster.leases import MemberInfo
from genesys_mux.core.events import ControlEvent, LeaseLost, StreamActivated
from genesys_mux.emulator import Emulator
from genesys_mux.errors import ClusterPermissionError
from genesys_mux.observability.metrics import readiness
from genesys_mux.state import RedisStateStore
from tests.net.test_multiplexer import Collector, org_settings
from tests.sinks.conftest import RedisServer
from tests.state.test_redis_checks import a_user
from tests.state.test_restart import a_mux, post_fault
from tests.waiting import eventually

STREAMS = [StreamConfig(id=f"s{i}", filter={}, buffer_size=5000) for i in range(4)]


@dataclass
class Node:
    """A member of the cluster and its loop."""

    name: str
    member: ClusterMember
    task: asyncio.Task[None]

    @property
    def held(self) -> set[str]:
        return set(self.member.status.held)


#: (stream id, member, what it delivered while it carried the stream), in the order taken.
History = list[tuple[str, str, Collector]]


@asynccontextmanager
async def cluster(redis_server: RedisServer) -> AsyncIterator[tuple[Emulator, AsyncExitStack]]:
    async with Emulator(org_settings(rate=20.0)) as emulator, AsyncExitStack() as stack:
        yield emulator, stack


async def a_member(
    stack: AsyncExitStack,
    emulator: Emulator,
    redis_server: RedisServer,
    name: str,
    history: History,
    streams: list[StreamConfig] = STREAMS,
    lease_ttl_s: float = 1.0,
    *,
    settle: bool = True,
    handover_timeout_s: float = 5.0,
    socket_timeout_s: float = 1.0,
) -> ClusterMember:
    """A member on its own started Multiplexer; nothing runs its rounds yet.

    Without ``settle`` its readers leave what they read unsettled until the
    test settles it (:meth:`Multiplexer.settle`): a handover then waits.
    """
    mux: Multiplexer = a_mux(emulator, RedisStateStore(redis_server.url, prefix="shared:"))
    await mux.start()
    stack.push_async_callback(mux.stop, drain=False)
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=socket_timeout_s)
    stack.push_async_callback(client.aclose)
    table = LeaseTable(client, cluster="test", instance=name, lease_ttl_s=lease_ttl_s)

    async def ownership(stream_id: str, lease: Lease | None) -> None:
        # What a sink runner would do: read the stream while it is carried here.
        if lease is not None:
            history.append((stream_id, name, Collector(mux.stream(stream_id, settle=settle))))

    return ClusterMember(
        mux,
        table,
        streams,
        client="c1",
        heartbeat_s=0.2,
        on_ownership=ownership,
        handover_timeout_s=handover_timeout_s,
    )


async def join(
    stack: AsyncExitStack,
    emulator: Emulator,
    redis_server: RedisServer,
    name: str,
    history: History,
) -> Node:
    member = await a_member(stack, emulator, redis_server, name, history)
    node = Node(name, member, asyncio.create_task(member.run(), name=f"member-{name}"))

    async def stop() -> None:
        node.task.cancel()
        await asyncio.gather(node.task, return_exceptions=True)

    stack.push_async_callback(stop)
    return node


async def hand_run_members(
    stack: AsyncExitStack,
    emulator: Emulator,
    redis_server: RedisServer,
    history: History,
    streams: int,
) -> list[ClusterMember]:
    """Members ``h``, ``s``, ``i`` on streams x0.., leases outliving the test: rounds by hand."""
    configs = [StreamConfig(id=f"x{n}", filter={}, buffer_size=5000) for n in range(streams)]
    return [
        await a_member(stack, emulator, redis_server, name, history, configs, 30.0)
        for name in ("h", "s", "i")
    ]


def exactly_once(*nodes: Node) -> bool:
    """Every stream carried by exactly one of ``nodes``."""
    held = [s for n in nodes for s in n.held]
    return sorted(held) == sorted(s.id for s in STREAMS)


async def test_members_share_the_streams_and_move_them_without_loss(
    redis_server: RedisServer,
) -> None:
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        a = await join(stack, emulator, redis_server, "a", history)
        b = await join(stack, emulator, redis_server, "b", history)
        await eventually(lambda: exactly_once(a, b) and len(a.held) == len(b.held) == 2)

        # A third member joins: it takes its share, make-before-break.
        c = await join(stack, emulator, redis_server, "c", history)
        await eventually(lambda: exactly_once(a, b, c) and len(c.held) >= 1, within=20.0)
        assert c.member.status.changes.get("handover", 0) >= 1

        # b dies without a word: its leases expire and the others take its streams.
        orphans = b.held
        b.task.cancel()
        await asyncio.gather(b.task, return_exceptions=True)
        await eventually(lambda: exactly_once(a, c), within=20.0)
        assert orphans <= a.held | c.held

        # a leaves as planned: c takes everything, handed over.
        handed = c.member.status.changes.get("handover", 0)
        await a.member.leave(timeout_s=10.0)
        a.task.cancel()
        await eventually(lambda: exactly_once(c), within=20.0)
        assert c.member.status.changes["handover"] > handed

        # Every stream still delivers, on the one member left, and Redis agrees.
        for stream_id in (s.id for s in STREAMS):
            latest = [seen for sid, _, seen in history if sid == stream_id][-1]
            await eventually(lambda: len(latest.events()) >= 2)  # noqa: B023 - awaited here
        leases = await c.member.table.leases(s.id for s in STREAMS)
        assert {lease.holder for lease in leases.values()} == {"c"}

    for stream_id in (s.id for s in STREAMS):
        owners = [(name, seen) for sid, name, seen in history if sid == stream_id]
        for (before, earlier), (after, later) in itertools.pairwise(owners):
            if not earlier.events() or not later.events():
                continue
            last, first = earlier.events()[-1].sequence, later.events()[0].sequence
            if before == "b":
                # A crash: numbering resumes from the last checkpoint, never from 1.
                assert 1 < first <= last + 1, (stream_id, before, after, last, first)
            else:
                # Handed over: continuous, and no window without an owner.
                assert first == last + 1, (stream_id, before, after, last, first)
                assert later.gaps() == [], (stream_id, before, after, later.gaps())
        for name, seen in owners:
            assert all(g.reason == "failover" for g in seen.gaps()), (name, seen.gaps())


async def test_a_member_that_cannot_reach_redis_stops_after_one_lease_and_comes_back(
    redis_server: RedisServer,
) -> None:
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        a = await join(stack, emulator, redis_server, "a", history)
        await eventually(lambda: exactly_once(a))
        mux = a.member.mux
        assert readiness(mux, a.member).ready
        await redis_server.stop()
        # It carries on while its leases may hold, then stops: it cannot prove them.
        await eventually(lambda: not a.held and a.member.status.trouble is not None, within=10.0)
        assert mux.streams() == []
        state = readiness(mux, a.member)
        assert not state.ready
        assert state.reason is not None
        assert state.reason.startswith("cluster: ")
        assert a.member.status.changes["lost"] == len(STREAMS)
        await redis_server.start()
        await eventually(lambda: exactly_once(a), within=20.0)
        assert a.member.status.trouble is None
        # Ready again once the state store took a checkpoint too.
        await eventually(lambda: readiness(mux, a.member).ready)


async def patient_member(
    stack: AsyncExitStack,
    emulator: Emulator,
    redis_server: RedisServer,
    history: History,
    said: list[tuple[float, ControlEvent]],
) -> tuple[ClusterMember, asyncio.Task[None]]:
    """A member running its loop, holding every stream; its facts, timed, go to ``said``.

    Its Redis calls wait 5 s for an answer, longer than its leases of 2 s
    (whose last tenth is time enough to stop four streams on a busy machine).
    """
    member = await a_member(
        stack, emulator, redis_server, "a", history, lease_ttl_s=2.0, socket_timeout_s=5.0
    )
    member.on_control.append(lambda event: said.append((time.monotonic(), event)))
    task = asyncio.create_task(member.run())
    stack.push_async_callback(_cancelled, task)
    await eventually(lambda: len(member.status.held) == len(STREAMS))
    return member, task


async def frozen_until_stopped(
    redis_server: RedisServer, member: ClusterMember, within: float
) -> float | None:
    """Freeze Redis (SIGSTOP) until the member holds nothing; when it last asked to renew."""
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: not member.status.held, within=within)
        return member._renewed_at
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


async def test_a_member_whose_redis_stops_answering_stops_before_its_leases_expire(
    redis_server: RedisServer,
) -> None:
    """A frozen Redis (a partition looks the same): calls hang for the socket timeout.

    That is 5 s here, longer than a lease: waiting for it to fail, the member
    would deliver for seconds after another instance could have taken its
    streams. It must stop them before a lease can have expired in Redis.
    """
    history: History = []
    stopped: list[tuple[float, ControlEvent]] = []
    async with cluster(redis_server) as (emulator, stack):
        member, _ = await patient_member(stack, emulator, redis_server, history, stopped)
        renewed = await frozen_until_stopped(redis_server, member, within=10.0)
    assert renewed is not None
    lost = [at for at, event in stopped if isinstance(event, LeaseLost)]
    assert len(lost) == len(STREAMS)
    # Every stream stopped before its lease could expire.
    assert max(lost) < renewed + 2.0


async def test_a_stream_handed_over_goes_to_the_member_that_stood_by(
    redis_server: RedisServer,
) -> None:
    """Between the holder's release and the take, the stream stays placed where it was handed.

    ``h`` carries x0 and x1; ``s`` joins and stands by for x0; ``h`` hands x0
    over and releases its lease. Then ``i`` joins: placed afresh, x0 would go
    to it (as light as ``s``, and its id sorts first), which would subscribe
    it only then, after a window without an owner (a gap). The member that
    stood by takes it instead, with no gap. Rounds are run by hand, in this
    order, with leases that outlive the test.
    """
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        h, s, i = await hand_run_members(stack, emulator, redis_server, history, 2)
        await h.tick()
        assert set(h.status.held) == {"x0", "x1"}
        await s.tick()
        assert s.status.standby == {"x0"}
        await h.tick()
        assert set(h.status.held) == {"x1"}
        assert await h.table.ready_for(["x0"]) == {"x0": "s"}
        await i.tick()
        assert i.status.held == {}
        assert i.status.standby == set()
        assert i.status.placement.owners == {"x0": "s", "x1": "h"}
        facts: list[ControlEvent] = []
        s.mux.on_control.append(facts.append)
        await s.tick()
        assert set(s.status.held) == {"x0"}
        assert s.status.changes == {"handover": 1}
        assert [f.reason for f in facts if isinstance(f, StreamActivated)] == ["handover"]
        ((_, _, carried),) = [(sid, name, seen) for sid, name, seen in history if name == "s"]
        await eventually(lambda: len(carried.events()) >= 1)
        assert carried.gaps() == []


async def test_a_member_promised_a_stream_keeps_its_standby_and_takes_it(
    redis_server: RedisServer,
) -> None:
    """Placements computed while a handover is under way cannot take the stream elsewhere.

    ``h`` carries x0 and x1, ``s`` stands by for x0 and is ready, and ``h``
    starts handing x0 over (it waits for its reader, which the test holds
    back). Meanwhile ``i`` joins: with x0 still leased to ``h``, every
    placement now puts x0 on ``i``. ``i`` subscribes it on standby but
    cannot take ``s``'s place as the ready member, and ``s``, to which
    ``h`` promised x0, keeps its standby although no longer placed. Once
    ``h`` let go, ``s`` takes x0 from its standby, with no gap, and ``i``
    nothing.
    """
    streams = [StreamConfig(id=f"x{i}", filter={}, buffer_size=5000) for i in range(2)]
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        h = await a_member(stack, emulator, redis_server, "h", history, streams, 30.0, settle=False)
        s, i = [
            await a_member(stack, emulator, redis_server, name, history, streams, 30.0)
            for name in ("s", "i")
        ]
        await h.tick()
        assert set(h.status.held) == {"x0", "x1"}
        ((_, _, held_back),) = [seen for seen in history if seen[:2] == ("x0", "h")]
        await eventually(lambda: len(held_back.events()) >= 1)
        await s.tick()
        assert s.status.standby == {"x0"}
        handing = asyncio.create_task(h.tick())
        # Promised and handing over: waiting for its reader to settle.
        await eventually(lambda: "x0" not in h.status.held)
        assert not handing.done()
        assert await h.table.ready_for(["x0"]) == {"x0": "s"}
        await i.tick()
        assert i.status.placement.owners["x0"] == "i"
        assert i.status.standby == {"x0"}
        assert await h.table.ready_for(["x0"]) == {"x0": "s"}
        await s.tick()
        assert s.status.placement.owners["x0"] == "i"
        assert s.status.standby == {"x0"}
        h.mux.settle("x0", max(e.sequence for e in held_back.events()))
        await handing
        assert set(h.status.held) == {"x1"}
        await i.tick()
        await s.tick()
        await i.tick()
        assert set(s.status.held) == {"x0"}
        assert s.status.changes == {"handover": 1}
        assert i.status.held == {}
        assert i.status.standby == set()
        ((_, _, carried),) = [seen for seen in history if seen[:2] == ("x0", "s")]
        await eventually(lambda: len(carried.events()) >= 1)
        assert carried.gaps() == []
        assert carried.events()[0].sequence == held_back.events()[-1].sequence + 1


async def test_a_stream_let_go_to_a_member_is_taken_even_if_placed_elsewhere_since(
    redis_server: RedisServer,
) -> None:
    """A free lease with a member standing by is never left without an owner.

    ``h`` carries x0..x3; ``s`` stands by for x0 and x1, and ``h`` hands both
    over. Before ``s`` takes them, ``i`` joins: with ``s`` counted as the
    owner of both, evening out moves x0 on to ``i``, which subscribes it
    on standby but cannot take ``s``'s place as the ready member. ``s``
    takes x0 all the same (placed elsewhere or not, the lease is free and
    only it may take it), then hands it on to ``i`` like any other stream:
    no window without an owner, no gap. Rounds are run by hand.
    """
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        h, s, i = await hand_run_members(stack, emulator, redis_server, history, 4)
        await h.tick()
        assert set(h.status.held) == {"x0", "x1", "x2", "x3"}
        await s.tick()
        assert s.status.standby == {"x0", "x1"}
        await h.tick()
        assert set(h.status.held) == {"x2", "x3"}
        assert await h.table.ready_for(["x0", "x1"]) == {"x0": "s", "x1": "s"}
        await i.tick()
        assert i.status.placement.owners["x0"] == "i"
        assert i.status.standby == {"x0"}
        await s.tick()
        assert s.status.placement.owners["x0"] == "i"
        assert set(s.status.held) == {"x0", "x1"}
        assert await h.table.holders(["x0"]) == {"x0": "s"}
        # Now placed on ``i`` and held by ``s``: an ordinary planned move.
        await i.tick()
        assert await i.table.ready_for(["x0"]) == {"x0": "i"}
        await s.tick()
        assert set(s.status.held) == {"x1"}
        await i.tick()
        assert set(i.status.held) == {"x0"}
        assert s.status.changes == {"handover": 3}
        assert i.status.changes == {"handover": 1}
        carried = [seen for sid, _, seen in history if sid == "x0"]
        assert len(carried) == 3
        await eventually(lambda: len(carried[-1].events()) >= 1)
        assert all(seen.gaps() == [] for seen in carried)


async def test_a_slow_handover_does_not_let_the_member_s_other_leases_expire(
    redis_server: RedisServer,
) -> None:
    """``h`` hands x0 over while its reader holds events back: 2 s, with 0.6 s leases.

    The round waits for the reader that long; meanwhile ``h`` keeps renewing
    the lease of x1, which it keeps: the same lease, never lost.
    """
    streams = [StreamConfig(id=f"x{i}", filter={}, buffer_size=5000) for i in range(2)]
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        h = await a_member(
            stack, emulator, redis_server, "h", history, streams, 0.6,
            settle=False, handover_timeout_s=2.0,
        )  # fmt: skip
        s = await a_member(stack, emulator, redis_server, "s", history, streams, 30.0)
        await h.tick()
        assert set(h.status.held) == {"x0", "x1"}
        ((_, _, held_back),) = [seen for seen in history if seen[:2] == ("x0", "h")]
        await eventually(lambda: len(held_back.events()) >= 1)
        await s.tick()
        assert s.status.standby == {"x0"}
        kept = h.status.held["x1"]
        running = asyncio.create_task(h.run())
        stack.push_async_callback(lambda: asyncio.gather(running, return_exceptions=True))
        stack.callback(running.cancel)
        await eventually(lambda: "x0" not in h.status.held)
        handing_since = asyncio.get_running_loop().time()
        await eventually(lambda: h.status.changes.get("handover") == 1, within=10.0)
        assert asyncio.get_running_loop().time() - handing_since > 1.0  # it did wait
        await h.tick()  # a round after the slow one: it renews x1, or finds it lost
        assert "lost" not in h.status.changes
        assert h.status.held == {"x1": kept}
        assert await h.table.holders(["x1"]) == {"x1": "h"}
        assert (await h.table.leases(["x1"]))["x1"].token == kept.token


async def test_the_last_member_leaves_at_once_with_a_checkpoint(redis_server: RedisServer) -> None:
    """No member is left to stand by: leaving does not wait for one (a whole-cluster stop)."""
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        a = await a_member(stack, emulator, redis_server, "a", history)
        await a.tick()
        assert len(a.status.held) == len(STREAMS)
        seen = [collected for _, _, collected in history]
        await eventually(lambda: all(len(c.events()) >= 1 for c in seen))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await a.leave(timeout_s=30.0)
        assert loop.time() - started < 10.0, "waited for a successor that cannot come"
        assert a.status.held == {}
        assert a.status.changes == {"acquired": len(STREAMS), "released": len(STREAMS)}
        assert await a.table.holders(s.id for s in STREAMS) == {}
        # Each stream's final checkpoint follows what its reader was given.
        saved = await a.mux.state_store.load()
        for stream_id, _, collected in history:
            assert saved[stream_id].next_sequence > collected.events()[0].sequence


async def test_a_round_that_fails_on_a_defect_is_reported_and_the_loop_goes_on(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not Redis, a bug: it must neither end the member's loop nor pass unsaid.

    The defect is injected (no real one is known): listing the members
    raises, after the leases were renewed, in every round until it is
    taken away. The streams stay carried (their leases are renewed), the
    member is not ready and says why, the traceback is logged once, and
    the first round that runs to its end clears it.
    """
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        a = await join(stack, emulator, redis_server, "a", history)
        await eventually(lambda: exactly_once(a))
        mux, member = a.member.mux, a.member
        failed_rounds = 0

        async def defect() -> list[object]:
            nonlocal failed_rounds
            failed_rounds += 1
            raise RuntimeError("a defect")

        with caplog.at_level(logging.ERROR, logger="genesys_mux.cluster.member"):
            monkeypatch.setattr(member.table, "members", defect)
            await eventually(lambda: failed_rounds >= 3)
            assert not a.task.done()
            assert exactly_once(a)
            state = readiness(mux, member)
            assert not state.ready
            assert state.reason == "cluster: a round failed: RuntimeError: a defect"
            monkeypatch.undo()
            await eventually(lambda: member.status.trouble is None)
        assert readiness(mux, member).ready
        assert exactly_once(a)
        logged = [r for r in caplog.records if "a round failed" in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].exc_info is not None


async def test_a_failing_ownership_callback_does_not_stop_the_round(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The leases are taken whatever the callback does; its failure is logged with the stream."""
    async with cluster(redis_server) as (emulator, stack):
        mux: Multiplexer = a_mux(emulator, RedisStateStore(redis_server.url, prefix="shared:"))
        await mux.start()
        stack.push_async_callback(mux.stop, drain=False)
        client = aioredis.Redis.from_url(redis_server.url, socket_timeout=1.0)
        stack.push_async_callback(client.aclose)
        told: list[str] = []

        async def ownership(stream_id: str, lease: Lease | None) -> None:
            told.append(stream_id)
            if stream_id == "s1":
                raise RuntimeError("cannot start its sinks")

        member = ClusterMember(
            mux,
            LeaseTable(client, cluster="test", instance="a", lease_ttl_s=30.0),
            STREAMS,
            client="c1",
            on_ownership=ownership,
        )
        with caplog.at_level(logging.ERROR, logger="genesys_mux.cluster.member"):
            assert await member.tick() is False
        assert sorted(member.status.held) == sorted(s.id for s in STREAMS)
        assert sorted(told) == sorted(s.id for s in STREAMS)
        assert member.status.trouble is None
        (failure,) = [r for r in caplog.records if "on_ownership" in r.getMessage()]
        assert "stream s1" in failure.getMessage()
        assert failure.exc_info is not None


async def test_a_lease_is_counted_from_when_its_renewal_was_asked_for(
    redis_server: RedisServer,
) -> None:
    """Redis renews a lease when it gets the request: a slow answer must not stretch it here.

    Counted from the answer, a member would go on carrying its streams for
    as long as the answer took after Redis had last renewed them, while
    another member may take them once they expire there.
    """
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        member = await a_member(stack, emulator, redis_server, "slow", history, lease_ttl_s=30.0)
        await member.tick()
        assert member.status.held
        renew = member.table.renew
        asked: list[float] = []

        async def answered_late(leases: Sequence[Lease]) -> list[Lease]:
            asked.append(time.monotonic())
            lost = await renew(leases)
            await asyncio.sleep(0.3)  # the answer's way back: latency, not synchronisation
            return lost

        member.table.renew = answered_late  # type: ignore[method-assign]
        await member.tick()
        assert asked
        assert member._renewed_at is not None
        assert member._renewed_at <= asked[-1]


async def test_a_member_cancelled_as_it_is_woken_stops(redis_server: RedisServer) -> None:
    """A cancellation that lands as the member's wait between rounds ends must not be lost.

    Python 3.11's ``asyncio.wait_for`` returns the inner result, swallowing
    the cancellation, when both happen in one turn of the loop: the member
    went on with its rounds (renewing its leases for ever), and whoever
    awaited its task after cancelling it hung. Seen in CI, under load.
    """
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        member = await a_member(stack, emulator, redis_server, "a", history)
        task = asyncio.create_task(member.run())
        await eventually(lambda: len(member.status.held) == len(STREAMS))
        # In its wait between rounds now: woken and cancelled in the same turn.
        await eventually(lambda: not member._round.locked())
        member._wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if not done:
            task.cancel()  # let the test end; the member ignored the first one
            await asyncio.wait({task}, timeout=5.0)
        assert done, "the member carried on after its task was cancelled"
        assert task.cancelled()


async def test_a_member_refused_a_command_stops_its_streams_and_says_why(
    redis_server: RedisServer,
) -> None:
    """An ACL changed under a running cluster: no retry can fix it, so none is made.

    Taken for an outage, it was reported as Redis being unreachable for
    ever while the instance carried nothing. Now the member stops what it
    carries and ends with a ClusterPermissionError naming what to grant.
    """
    url = a_user(redis_server, "mux", "~*", "+@all")
    async with cluster(redis_server) as (emulator, stack):
        mux: Multiplexer = a_mux(emulator, RedisStateStore(redis_server.url, prefix="shared:"))
        await mux.start()
        stack.push_async_callback(mux.stop, drain=False)
        client = aioredis.Redis.from_url(url, socket_timeout=1.0)
        stack.push_async_callback(client.aclose)
        table = LeaseTable(client, cluster="test", instance="a", lease_ttl_s=1.0)
        member = ClusterMember(mux, table, STREAMS, client="c1", heartbeat_s=0.2)
        task = asyncio.create_task(member.run())
        stack.push_async_callback(asyncio.wait, {task}, timeout=5.0)
        await eventually(lambda: len(member.status.held) == len(STREAMS))
        a_user(redis_server, "mux", "~*", "+@all", "-@scripting")
        done, _ = await asyncio.wait({task}, timeout=10.0)
        assert done, "the member kept retrying a refused command"
        with pytest.raises(ClusterPermissionError, match=r"NOPERM|permission") as caught:
            task.result()
        assert "EVALSHA" in str(caught.value)
        assert "allow it what a cluster runs" in str(caught.value)
        assert member.status.held == {}
        assert member.status.standby == set()
        assert mux.streams() == []


async def test_a_stream_only_some_members_have_goes_to_one_of_them(
    redis_server: RedisServer,
) -> None:
    """A rolling deploy that adds streams: the old member must not be placed what it lacks.

    Placed there, it would never take it (its configuration does not have
    it) and the new member would leave it to it: carried by nobody, and
    said by nobody.
    """
    history: History = []
    old_streams, new_streams = STREAMS[:1], STREAMS[:3]
    async with cluster(redis_server) as (emulator, stack):
        nodes = []
        for name, streams in (("a", old_streams), ("b", new_streams)):
            member = await a_member(stack, emulator, redis_server, name, history, streams)
            task = asyncio.create_task(member.run())
            stack.push_async_callback(_cancelled, task)
            nodes.append(Node(name, member, task))
        a, b = nodes
        await eventually(lambda: a.held | b.held == {s.id for s in new_streams}, within=20.0)
        assert a.held <= {s.id for s in old_streams}
        assert not b.member.status.placement.unplaced


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_heartbeat_close_to_the_lease_does_not_stop_a_healthy_member(
    redis_server: RedisServer,
) -> None:
    """``heartbeat_s`` may be anything below ``lease_ttl_s``; renewals still come twice a lease.

    Renewed only every heartbeat_s (0.95 of the lease here), the expiry
    watchdog (at nine tenths) would stop the streams of a member whose
    Redis answers.
    """
    history: History = []
    lost: list[ControlEvent] = []
    renewals = 0
    async with cluster(redis_server) as (emulator, stack):
        base = await a_member(
            stack, emulator, redis_server, "a", history, STREAMS[:1], lease_ttl_s=2.0
        )
        member = ClusterMember(base.mux, base.table, STREAMS[:1], client="c1", heartbeat_s=1.9)
        member.on_control.append(lambda e: lost.append(e) if isinstance(e, LeaseLost) else None)
        renew = member.table.renew

        async def counted(leases: Sequence[Lease]) -> list[Lease]:
            nonlocal renewals
            renewals += 1
            return await renew(leases)

        member.table.renew = counted  # type: ignore[method-assign]
        task = asyncio.create_task(member.run())
        stack.push_async_callback(_cancelled, task)
        await eventually(lambda: renewals >= 6, within=15.0)
        assert set(member.status.held) == {STREAMS[0].id}
    assert lost == []
    assert member.status.changes.get("acquired") == 1


async def test_a_stream_the_watchdog_stopped_during_a_round_is_left_alone_by_it(
    redis_server: RedisServer,
) -> None:
    """Redis answers a promise, or a renewal, only after the watchdog stopped the stream.

    The round must not hand it over again (it is not held: a KeyError), nor
    stop it a second time (a second ownership call, a second LeaseLost).
    """
    streams = [StreamConfig(id=f"x{i}", filter={}, buffer_size=5000) for i in range(2)]
    history: History = []
    said: list[ControlEvent] = []
    async with cluster(redis_server) as (emulator, stack):
        h = await a_member(stack, emulator, redis_server, "h", history, streams, 1.0)
        s = await a_member(stack, emulator, redis_server, "s", history, streams, 30.0)
        stopped = {x.id: asyncio.Event() for x in streams}

        def told(event: ControlEvent) -> None:
            said.append(event)
            if isinstance(event, LeaseLost):
                stopped[event.stream_id].set()

        h.on_control.append(told)
        await h.tick()
        await s.tick()
        assert s.status.standby == {"x0"}
        promise, renew = h.table.promise, h.table.renew

        async def promised_late(lease: Lease, successor: str) -> bool:
            await stopped[lease.stream_id].wait()  # the fault: Redis answers only then
            return await promise(lease, successor)

        h.table.promise = promised_late  # type: ignore[method-assign]
        watch = asyncio.create_task(h._stop_before_expiry())
        stack.push_async_callback(_cancelled, watch)
        await h.tick()
        assert h.status.trouble is None
        assert "x0" not in h.status.held
        h.table.promise = promise  # type: ignore[method-assign]

        async def renewed_late(leases: Sequence[Lease]) -> list[Lease]:
            for lease in leases:
                await stopped[lease.stream_id].wait()  # the fault: answered once stopped
            return await renew(leases)

        h.table.renew = renewed_late  # type: ignore[method-assign]
        await h.tick()
        assert h.status.trouble is None
    stops = [e.stream_id for e in said if isinstance(e, LeaseLost)]
    assert sorted(stops) == ["x0", "x1"]  # each once


async def test_a_member_leaving_while_redis_freezes_stops_its_streams_in_time(
    redis_server: RedisServer,
) -> None:
    """The loop (and its expiry watchdog) has ended; the leave waits for the next owners.

    A Redis that stops answering then must not keep the streams running
    past their leases (nor a failed checkpoint leave the others running).
    """
    history: History = []
    said: list[tuple[float, ControlEvent]] = []
    async with cluster(redis_server) as (emulator, stack):
        # A live member that has none of the streams: the leave waits for it.
        other = aioredis.Redis.from_url(redis_server.url)
        stack.push_async_callback(other.aclose)
        waiting = LeaseTable(other, cluster="test", instance="z", lease_ttl_s=60.0)
        await waiting.heartbeat(MemberInfo("z", "c1", time.time(), streams={}))
        member, task = await patient_member(stack, emulator, redis_server, history, said)
        leaving = asyncio.create_task(member.leave(timeout_s=3.0))
        await eventually(task.done, within=5.0)
        renewed = await frozen_until_stopped(redis_server, member, within=5.0)
        await asyncio.wait_for(leaving, 20.0)  # and it ends, without an error
    assert renewed is not None
    lost = [at for at, event in said if isinstance(event, LeaseLost)]
    assert lost
    assert max(lost) < renewed + 2.0  # before the lease could expire


async def test_a_member_weighs_its_stream_with_the_queue_count_read_in_its_first_round(
    redis_server: RedisServer,
) -> None:
    """Its own count of the org's queues fails; another member's record says 50.

    Published before any record was read, the all-queues stream's weight
    would be 1 for a round: placed as one topic, on a client without the
    channels for 50.
    """
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        # Refused (a 403 is not retried): its count never comes.
        await post_fault(
            emulator, "http_5xx", status=403, count=1000, path="/api/v2/routing/queues"
        )
        counted = MemberInfo("b", "c2", time.time(), queues=50, queues_at=time.time())
        await (await a_member(stack, emulator, redis_server, "b", history, [])).table.heartbeat(
            counted
        )
        member = await a_member(stack, emulator, redis_server, "a", history, STREAMS[:1])
        await member.tick()
        if member._counting is not None:  # its refused count, done with
            await asyncio.gather(member._counting, return_exceptions=True)
        assert member.weights[STREAMS[0].id] == 50
        assert member.info.streams == {STREAMS[0].id: 50}


async def test_a_slow_clock_reading_is_used_until_a_quicker_one_comes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis far away answers every TIME slowly: an approximate offset, said, beats none."""
    history: History = []
    async with cluster(redis_server) as (emulator, stack):
        member = await a_member(stack, emulator, redis_server, "a", history, STREAMS[:1])
        assert redis_server.process is not None
        process = redis_server.process
        process.send_signal(signal.SIGSTOP)
        asyncio.get_running_loop().call_later(0.2, process.send_signal, signal.SIGCONT)
        await member._measure_clock()
        slow = member._clock_round_trip
        assert slow > 0.1  # beyond what is taken as exact
        assert "Redis answers slowly" in caplog.text
        await member._measure_clock()  # answered at once: it replaces the slow one
        assert member._clock_round_trip < slow
        assert abs(member.mux.clock_offset) < 0.1
