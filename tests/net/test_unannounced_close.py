"""A clean close with no warning: the platform's ``socket_closing`` is not guaranteed.

The reference says of the ``v2.system.socket_closing`` warning: "Not
guaranteed. A silent close must be handled the same way", and of close codes:
"Expect 1000, 1001 and 1006". The emulator's ``close_socket`` fault closes a
socket with 1000 or 1001 and no warning, the channel surviving.

A Multiplexer stream runs over the simulated org while the fault closes its
socket. Beside it a *witness* (its own OAuth client and channel on the same
topics, read with plain aiohttp through ``tests.emulator.genesys``, sharing
no code with the library, never faulted) shows what the platform meant for
the stream. Reconciled against the emulator's ledger, every notification
sent on the stream's topics, to the mux or to the witness, is:

* read by the mux: then the stream's counters account for it (delivered,
  duplicate, stale, filtered or dead-lettered), and they add up to what the
  ledger sent to the mux's channels, so none was read and dropped;
* or never sent to the mux (its socket was closed, no successor subscribed
  yet): then its send time lies inside a :class:`Gap` reported to the
  stream for its topic, within margins measured in the same run (see
  :func:`margins`).

And the window without a socket is reported as a gap in any case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from genesys_mux import Gap, StreamEvent
from genesys_mux.core.snapshot import event_facts
from genesys_mux.net.connection import ChannelPool, PoolSettings
from tests.net.test_chaos import Key, Witness
from tests.net.test_multiplexer import FAST_POOL, Collector, Harness, harness, org_settings
from tests.waiting import DEADLINE_S, eventually

#: Large enough that nothing overflows: every dead letter would need explaining.
BUFFER = 1_000_000
#: Notifications in the blast the socket closes in the middle of: fewer than
#: the pool's inbound limit, so that a slow reader cannot make it shed (a gap
#: of another kind).
BLAST = 6_000


async def mux_channels(h: Harness) -> set[str]:
    """Every channel the mux's client ever had (the mux may open new ones)."""
    return {c["id"] for c in await h.control("channels") if c["client_id"] == "demo-client"}


async def drain(
    h: Harness, witness: Witness, stream_id: str, topics: frozenset[str]
) -> list[dict[str, Any]]:
    """With the traffic frozen, wait until the mux and the witness read all the ledger sent.

    Returns the ledger entries on ``topics``. The mux has read everything
    once its stream has received as many notifications as the ledger sent
    to the mux's channels and holds none in its buffer.
    """
    await h.control("traffic", {"running": False})
    found: list[dict[str, Any]] = []

    async def settled() -> bool:
        entries = [e for e in (await h.control("ledger"))["entries"] if e["topic"] in topics]
        ours = await mux_channels(h)
        to_mux = sum(1 for e in entries if e["channel_id"] in ours)
        to_witness = {
            (e["topic"], e["correlation_id"])
            for e in entries
            if e["channel_id"] == witness.channel_id
        }
        stats = h.mux.stats()["streams"][stream_id]
        if stats.received != to_mux or stats.buffered or not to_witness <= witness.frames.keys():
            return False
        found[:] = entries
        return True

    await eventually(settled)
    return found


@dataclass(frozen=True)
class Margins:
    """How far outside a gap's bounds a lost notification's send time may lie.

    A gap starts at the last frame the mux *read* on the closed socket. A
    notification published after the close was queued went to the witness
    only; its witness send time may precede that read by the mux's read
    latency (the largest ledger-to-read delay measured) plus the largest
    lead of the witness's writer over the mux's (``late``). Past the gap's
    end by at most the witness's largest lag (``early``).
    """

    read_latency: float
    late: float
    early: float


def margins(entries: list[dict[str, Any]], events: list[StreamEvent], witness: str) -> Margins:
    mux_sent = {
        (e["topic"], e["correlation_id"]): e["time"]
        for e in entries
        if e["channel_id"] != witness and not e["duplicate"]
    }
    witness_sent = {
        (e["topic"], e["correlation_id"]): e["time"] for e in entries if e["channel_id"] == witness
    }
    read_latency = max(
        (
            e.received_at - mux_sent[(e.topic, e.correlation_id)]
            for e in events
            if e.correlation_id is not None and (e.topic, e.correlation_id) in mux_sent
        ),
        default=0.0,
    )
    late = early = 0.0
    for key, sent in mux_sent.items():
        w = witness_sent.get(key)
        if w is not None:
            late = max(late, sent - w)
            early = max(early, w - sent)
    # The ledger records a frame once it is handed to the transport: a read
    # may come a hair before that record.
    slack = 0.05
    return Margins(max(read_latency, 0.0) + slack, late + slack, early + slack)


def lost(entries: list[dict[str, Any]], witness: str) -> list[dict[str, Any]]:
    """The ledger's entries sent to the witness and never to the mux."""
    read = {(e["topic"], e["correlation_id"]) for e in entries if e["channel_id"] != witness}
    return [
        e
        for e in entries
        if e["channel_id"] == witness and (e["topic"], e["correlation_id"]) not in read
    ]


def reconcile(
    entries: list[dict[str, Any]],
    events: list[StreamEvent],
    gaps: list[Gap],
    witness: str,
) -> list[str]:
    """What the ledger sent on the stream's topics that is neither read nor in a gap."""
    m = margins(entries, events, witness)
    problems = []
    for e in lost(entries, witness):
        key = (e["topic"], e["correlation_id"])
        sent = e["time"]
        if not any(
            e["topic"] in g.topics and g.start - m.read_latency - m.late <= sent <= g.end + m.early
            for g in gaps
        ):
            problems.append(f"{key} sent at {sent:.3f} to the witness only, in no gap ({m})")
    return problems


def undelivered_changes(
    entries: list[dict[str, Any]], events: list[StreamEvent], witness: Witness
) -> list[Key]:
    """Notifications the mux was sent whose state no delivered event carries.

    Judged by content, with the witness's copy of each body: a notification
    the stream counted as a duplicate carries a state delivered under
    another notification, which is what de-duplication is for.
    """
    delivered = {(e.content_key, e.digest) for e in events}
    missing = []
    for e in entries:
        key = (e["topic"], e["correlation_id"])
        if e["channel_id"] == witness.channel_id or e["duplicate"] or key not in witness.frames:
            continue
        body = json.dumps(json.loads(witness.frames[key])["eventBody"]).encode()
        facts = event_facts(e["topic"], body)
        if (facts.key, facts.hash) not in delivered:
            missing.append(key)
    return missing


#: A gap's bounds are monotonic readings turned into Unix time, an event's
#: receive time a Unix clock reading: the two may disagree by microseconds.
CLOCKS = 0.005


def last_read_before(events: list[StreamEvent], t: float) -> float:
    """When the last event read before ``t`` was read."""
    return max(e.received_at for e in events if e.received_at <= t)


def assert_stream_accounts(h: Harness, stream_id: str, events: list[StreamEvent]) -> None:
    """The stream's counters add up, sequences have no holes, nothing is delivered twice."""
    stats = h.mux.stats()["streams"][stream_id]
    assert stats.received == (stats.delivered + stats.filtered + stats.duplicates + stats.stale), (
        stats
    )
    assert stats.dead_lettered == 0, stats
    assert stats.delivered == len(events), (stats, len(events))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    twice = [k for k, n in Counter((e.topic, e.correlation_id) for e in events).items() if n > 1]
    assert not twice, f"delivered twice: {twice}"


@dataclass
class Watched:
    """A voice stream flowing, its reader, and a witness live on the same topics."""

    h: Harness
    seen: Collector
    witness: Witness
    topics: frozenset[str]
    pool: ChannelPool


@contextlib.asynccontextmanager
async def watched_calls(pool_settings: PoolSettings = FAST_POOL) -> AsyncIterator[Watched]:
    """The stream ``calls`` delivering, and the witness having read a few frames."""
    async with (
        harness(org_settings(rate=20.0), pool_settings=pool_settings) as h,
        aiohttp.ClientSession() as session,
    ):
        await h.mux.add_stream(
            {"id": "calls", "filter": {"channelType": "voice"}, "buffer_size": BUFFER}
        )
        seen = Collector(h.mux.stream("calls"))
        await eventually(lambda: len(seen.events()) >= 10)
        topics = h.mux._streams["calls"].topics
        witness = Witness(session, h.emulator.base_url)
        await witness.start(set(topics))
        try:
            assert h.mux.pool is not None
            # The witness is live before any fault: it has read notifications.
            await eventually(lambda: len(witness.frames) >= 3)
            yield Watched(h, seen, witness, topics, h.mux.pool)
        finally:
            await witness.stop()
        seen.stop()


@pytest.mark.parametrize("code", [1000, 1001])
async def test_a_close_without_warning_is_followed_by_a_reconnect_and_a_gap(code: int) -> None:
    async with watched_calls() as w:
        h, seen, witness, topics, pool = w.h, w.seen, w.witness, w.topics, w.pool
        reconnects = sum(s.reconnects for s in pool.stats().values())
        serving = {c for c in pool.channel_ids().values() if c is not None}
        assert serving
        # A blast on one of the stream's topics, as fast as the sockets
        # drain, so that the platform is certainly sending when the socket
        # closes: whatever it sends before the successor is subscribed
        # reaches the witness alone, and must be in a gap.
        received = h.mux.stats()["streams"]["calls"].received
        blast = {"topic": min(topics), "rate": 0, "count": BLAST}
        await h.control("traffic", {"blast": blast})
        await eventually(
            lambda: h.mux.stats()["streams"]["calls"].received >= received + BLAST // 10
        )
        faulted_at = time.time()
        for channel_id in serving:
            answer = await h.control(
                "faults", {"fault": "close_socket", "channel_id": channel_id, "code": code}
            )
            assert answer["applied"] == [channel_id]

        # The client reconnects, and events keep flowing on the successor.
        await eventually(lambda: sum(s.reconnects for s in pool.stats().values()) > reconnects)
        reconnected = time.time()
        await eventually(lambda: sum(e.received_at > reconnected for e in seen.events()) >= 10)
        await eventually(lambda: h.mux.live)

        async def blasted() -> bool:
            return not (await h.control("traffic", {}))["blasting"]

        await eventually(blasted, within=60)
        entries = await drain(h, witness, "calls", topics)

    assert not witness.trouble, witness.trouble
    events, gaps = seen.events(), seen.gaps()
    assert_stream_accounts(h, "calls", events)
    # The window with no subscribed socket is a gap, however it came about:
    # one, from the last frame read on the closed socket (no earlier than
    # the last event read before the fault) to the successor's first frame.
    (gap,) = gaps
    assert gap.reason == "reconnect", gap
    assert gap.topics == topics, gap
    assert gap.start >= last_read_before(events, faulted_at) - CLOCKS, gap
    assert gap.end >= gap.start, gap
    assert any(e.received_at >= gap.end for e in events), "nothing was read after the gap"
    # Every notification the platform sent on the stream's topics was read
    # by the mux (and accounted for above), or is inside the reported gap;
    # and some were sent to the witness alone while no socket was subscribed.
    assert reconcile(entries, events, gaps, witness.channel_id) == []
    assert lost(entries, witness.channel_id), "the platform sent nothing during the window"
    # And what the mux was sent, it delivered (its state, if not itself).
    assert undelivered_changes(entries, events, witness) == []


#: How long the pool waits for a new socket's first frame in the test below:
#: short, so that the test is quick, yet far longer than a reconnect takes.
LIVE_TIMEOUT_S = 3.0


async def test_a_socket_closed_before_its_first_frame_is_replaced_at_once() -> None:
    """The platform may close the socket a client comes straight back with, too.

    ``close_socket`` with ``next: 1`` closes the stream's socket and then the
    first socket that reopens its channel, before that one sends anything
    (not even the pong the client waits for). The client must try again at
    once, as it did after the first close, not sit out its live timeout.
    Every notification is still read or inside the gap.
    """
    pool_settings = dataclasses.replace(FAST_POOL, live_timeout_s=LIVE_TIMEOUT_S)
    async with watched_calls(pool_settings) as w:
        h, seen, witness, topics, pool = w.h, w.seen, w.witness, w.topics, w.pool
        serving = {c for c in pool.channel_ids().values() if c is not None}
        faulted_at = time.time()
        for channel_id in serving:
            answer = await h.control(
                "faults",
                {"fault": "close_socket", "channel_id": channel_id, "code": 1000, "next": 1},
            )
            assert answer["applied"] == [channel_id]
        # Back, whether at once or after the live timeout: the verdict is the gap's.
        await eventually(lambda: bool(seen.gaps()), within=LIVE_TIMEOUT_S + DEADLINE_S)
        await eventually(lambda: h.mux.live)
        reconnected = time.time()
        await eventually(lambda: sum(e.received_at > reconnected for e in seen.events()) >= 3)
        entries = await drain(h, witness, "calls", topics)

    assert not witness.trouble, witness.trouble
    events, gaps = seen.events(), seen.gaps()
    assert_stream_accounts(h, "calls", events)
    assert reconcile(entries, events, gaps, witness.channel_id) == []
    assert undelivered_changes(entries, events, witness) == []
    # One window, reported as one gap or as one per socket.
    assert gaps, "no gap"
    assert all(g.reason == "reconnect" for g in gaps), gaps
    start, end = min(g.start for g in gaps), max(g.end for g in gaps)
    assert start >= last_read_before(events, faulted_at) - CLOCKS, gaps
    # Two reconnects in a row take a fraction of a second (FAST_POOL's
    # backoff is capped at 0.5 s), not the live timeout.
    assert end - start < LIVE_TIMEOUT_S / 2, gaps
