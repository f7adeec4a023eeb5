"""A cluster of ``genesys-mux run`` processes: one owner per stream, failover, moves.

Nine streams share one configuration file, each of one queue's
conversations topic (the org has nine queues, so a topic belongs to one
stream and "one channel per topic" can be read off the platform), each
written to a Redis Streams sink; leases, state and sink live in one real
redis-server; ``lease_ttl_s = 2``, ``heartbeat_s = 0.3``, checkpoints
every 0.2 s, back-fill on. Beside the processes a witness
(:class:`tests.net.test_chaos.Witness`: its own OAuth client and channel,
no library code) is subscribed to the nine topics for the whole story, and
every notification the emulator's ledger says it sent the witness on a
stream's topic, from that stream's first subscription by any process to
the processes' final SIGTERM, is reconciled against the stream's Redis key
and the dead-letter queue by :func:`tests.cli.test_restarts.account_for_sends`:
delivered, dead-lettered, a duplicate or stale (a state as new delivered
before it was sent), or inside a reported gap of its topic and then
covered by back-fill or a later live event. Anything else is a silent loss.

What is proven:

1. Three processes, nine streams (both tests): once placed, each stream is
   carried by exactly one process: its lease in Redis, that process's
   ``/status``, and on the platform its topic is subscribed by exactly one
   connected channel of the mux's client, a channel of that process, whose
   topics are exactly those of the streams it holds. At the end no
   idempotency key is stored twice in any stream.
2. :func:`test_a_killed_instance_s_streams_fail_over_without_silent_loss`:
   one process is killed (SIGKILL) mid-traffic; each of its streams is
   leased again, subscribed again on the platform and written again (its
   ``failover`` gap record) within ``lease_ttl_s + 5 s`` of the kill,
   measured and printed; the survivors carry every stream once. Nothing is
   lost silently; each of the dead process's streams has exactly one
   ``failover`` gap, from the dead owner's last checkpoint (before the
   kill, and before anything it stored but did not checkpoint) to the new
   owner's subscription (after the kill, before its first live event), and
   back-fill covered it; no other stream has a gap; no key is stored
   twice; numbering continues from the last checkpoint (its only holes are
   states the sink had already stored, dropped as repeats).
3. :func:`test_a_join_and_a_sigterm_move_streams_make_before_break`: a
   fourth process joins and takes its share, then the busiest of the first
   three leaves with SIGTERM; every stream is carried once after each step,
   no stream's topic is ever without a connected channel on the platform
   (sampled every 20 ms), no gap record is written, numbering goes on
   ``1..n`` across the owners' epochs, no key twice, and nothing is lost.

In both, the processes' audit logs show each stream's lease taken free
(``LEASE_ACQUIRED`` ``acquired``) once, when it is first carried, plus once
per failover: every other move, including the hand-offs while the cluster
forms, is a handover to the member that stood by. (This found a defect,
fixed in :mod:`genesys_mux.cluster.member` and tested on its own by
``tests/cluster/test_member.py::test_a_stream_handed_over_goes_to_the_member_that_stood_by``:
between a holder's release and the take, the placement could give the
stream to a member that had not subscribed it, which took it with a
``failover`` gap.)

Every problem of a failing story is reported at once, with counts per
stream and the measured times.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis

from genesys_mux.core.streams import DeadLetter
from genesys_mux.emulator import ClientApp, Emulator
from genesys_mux.sinks.base import EventRecord, GapRecord, Record
from genesys_mux.sinks.dlq import read_dead_letters
from tests.cli.test_cluster import records, until, until_async
from tests.cli.test_restarts import (
    Books,
    Delivered,
    RunProcess,
    account_for_sends,
    check_versions,
    checked_record,
    measured_margin,
    split_ledger,
)
from tests.net.test_chaos import WITNESS_CLIENT, Outcome, Witness
from tests.net.test_multiplexer import org_settings
from tests.sinks.conftest import RedisServer

#: Nine queues, one stream each.
QUEUES = 9
#: New conversations per second: two to six notifications a second per queue,
#: so that each step of a story has its EACH events per stream within a second
#: or two (and a failover gap its traffic to reconcile).
RATE = 12.0
LEASE_TTL_S = 2.0
HEARTBEAT_S = 0.3
#: The promise: a dead owner's streams are carried again within this.
FAILOVER_WITHIN_S = LEASE_TTL_S + 5.0
#: Events each stream delivers between the steps of a story.
EACH = 4
CLUSTER = "failover"
#: The sink's key prefix, as :func:`tests.cli.test_cluster.records` reads it.
PREFIX = "out:"
DLQ = "dlq.jsonl"
MUX_CLIENT = "demo-client"


def config(redis_url: str, topics: dict[str, str]) -> str:
    streams = "".join(
        f"""
[[streams]]
id = "{stream_id}"
topics = ["{topic}"]

  [[streams.sinks]]
  type = "redis"
  url = "{redis_url}"
  prefix = "{PREFIX}"
"""
        for stream_id, topic in topics.items()
    )
    return f"""\
[settings]
dlq_path = "{DLQ}"
backfill = true
pong_timeout = 1
metric_interval_s = 3600

[state]
checkpoint_interval_s = 0.2

[cluster]
url = "{redis_url}"
name = "{CLUSTER}"
lease_ttl_s = {LEASE_TTL_S:g}
heartbeat_s = {HEARTBEAT_S:g}
{streams}"""


# -- the cluster ------------------------------------------------------------------------


@dataclass
class Cluster:
    """The emulator, the witness, Redis, and the processes started on them."""

    emulator: Emulator
    redis: redis.Redis
    directory: Path
    session: aiohttp.ClientSession
    witness: Witness
    #: Stream id -> its one topic.
    topics: dict[str, str]
    runs: list[RunProcess] = field(default_factory=list)
    #: (Unix time, what happened then), in order: for the messages.
    milestones: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, what: str) -> float:
        now = time.time()
        self.milestones.append((now, what))
        return now

    def phase(self, t: float) -> str:
        """The part of the story ``t`` (Unix time) falls in."""
        label = "before any process"
        for at, what in self.milestones:
            if at <= t:
                label = what
        return label

    async def start(self, name: str) -> RunProcess:
        run = await RunProcess.start(self.emulator, self.directory)
        self.runs.append(run)
        self.milestones.append((run.spawned_at, f"{name} (pid {run.process.pid}) started"))
        await run.ready(self.session)
        return run

    async def start_three(self) -> None:
        """Three processes at once, settled on three streams each, every stream delivering."""
        await asyncio.gather(*(self.start(f"process {n}") for n in (1, 2, 3)))
        await self.wait_settled("three processes carry three streams each")
        await self.assert_carried_once()
        await self.each_delivers(list(self.topics), "every stream delivers")

    def live(self) -> list[RunProcess]:
        return [r for r in self.runs if r.process.returncode is None]

    def holders(self) -> dict[str, int]:
        """Each stream's lease holder (its process id), as Redis has it."""
        found = {}
        for stream_id in self.topics:
            key = f"genesys-mux:cluster:{{{CLUSTER}}}:lease:{stream_id}"
            value = cast(bytes | None, self.redis.get(key))
            if value is not None:
                # "{host}-{pid}|{token}": the default instance id ends with the pid.
                found[stream_id] = int(value.decode().rpartition("|")[0].rpartition("-")[2])
        return found

    def held_by(self, run: RunProcess) -> set[str]:
        return {s for s, pid in self.holders().items() if pid == run.process.pid}

    def carriers(self) -> dict[str, set[str]]:
        """Each topic's connected channels of the mux's OAuth client, on the platform."""
        found: dict[str, set[str]] = defaultdict(set)
        for channel in self.emulator.platform.channels.values():
            if channel.client_id == MUX_CLIENT and channel.connected:
                for topic in channel.topics:
                    found[topic].add(channel.id)
        return found

    async def status(self, run: RunProcess) -> dict[str, Any]:
        async with self.session.get(f"{run.admin}/status") as resp:
            assert resp.status == 200, await resp.text()
            return cast(dict[str, Any], await resp.json())

    async def settled(self) -> bool:
        """Every stream held by a live process, evenly, each process's ``/status`` agreeing."""
        holders = self.holders()
        live = {r.process.pid: r for r in self.live()}
        if set(holders) != set(self.topics) or not set(holders.values()) <= set(live):
            return False
        load = Counter(holders.values())
        if len(load) != len(live) or max(load.values()) - min(load.values()) > 1:
            return False
        for pid, run in live.items():
            mine = {s for s, holder in holders.items() if holder == pid}
            shown = (await self.status(run))["cluster"]
            if set(shown["held"]) != mine or shown["standby"]:
                return False
        return True

    async def wait_settled(self, what: str) -> None:
        try:
            await until_async(self.settled, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {await self.describe()}") from None

    async def describe(self) -> str:
        """Who holds what (Redis) and what each live process says (``/status``)."""
        said = []
        for run in self.live():
            try:
                shown = (await self.status(run))["cluster"]
            except (aiohttp.ClientError, AssertionError) as exc:
                shown = repr(exc)
            said.append(f"pid {run.process.pid}: {shown}")
        return f"holders {self.holders()}; " + "; ".join(said)

    async def assert_carried_once(self) -> None:
        """Each stream by one process (Redis, ``/status``), on one connected channel of it."""
        holders = self.holders()
        assert sorted(holders) == sorted(self.topics), holders
        carriers = self.carriers()
        channels = self.emulator.platform.channels
        held: set[str] = set()
        for run in self.live():
            mine = {s for s, pid in holders.items() if pid == run.process.pid}
            status = await self.status(run)
            assert set(status["cluster"]["held"]) == mine, (run.process.pid, status["cluster"])
            assert status["cluster"]["standby"] == [], status["cluster"]
            assert not held & mine
            held |= mine
            own = {c["channel_id"] for c in status["channels"].values()} - {None}
            subscribed = {t for c in own if c in channels for t in channels[c].topics}
            assert subscribed == {self.topics[s] for s in mine}, (run.process.pid, subscribed)
            for stream_id in mine:
                assert carriers[self.topics[stream_id]] <= own, (stream_id, carriers)
        assert held == set(self.topics)
        for stream_id, topic in self.topics.items():
            assert len(carriers[topic]) == 1, (stream_id, topic, carriers[topic])

    def events(self, stream_id: str) -> list[EventRecord]:
        return [r for r in records(self.redis, stream_id) if isinstance(r, EventRecord)]

    async def each_delivers(self, streams: Sequence[str], what: str, count: int = EACH) -> None:
        """Wait until each of ``streams`` has ``count`` more events in its Redis key."""
        before = {s: len(self.events(s)) for s in streams}
        await until(lambda: all(len(self.events(s)) >= before[s] + count for s in streams), what)

    async def stop_all(self) -> float:
        """SIGTERM every live process at once; returns when the signals were sent."""
        live = self.live()
        stopped_at = self.mark("the final SIGTERM")
        codes = await asyncio.gather(*(r.finish(signal.SIGTERM) for r in live))
        for run, code in zip(live, codes, strict=True):
            assert code == 0, run.why()
        return stopped_at


@asynccontextmanager
async def cluster_story(redis_server: RedisServer, directory: Path) -> AsyncIterator[Cluster]:
    """An emulator of nine queues, a witness on their topics, the configuration file."""
    settings = org_settings(
        queues=QUEUES,
        agents=2 * QUEUES,
        rate=RATE,
        clients=[ClientApp(MUX_CLIENT, "demo-secret"), ClientApp(*WITNESS_CLIENT)],
    )
    client = redis.Redis.from_url(redis_server.url)
    async with Emulator(settings) as emulator, aiohttp.ClientSession() as session:
        queues = sorted(q.id for q in emulator.centre.queues)
        topics = {f"q{i}": f"v2.routing.queues.{q}.conversations" for i, q in enumerate(queues)}
        (directory / "mux.toml").write_text(config(redis_server.url, topics))
        witness = Witness(session, emulator.base_url)
        await witness.start(set(topics.values()))
        cluster = Cluster(emulator, client, directory, session, witness, topics)
        try:
            yield cluster
        finally:
            await witness.stop()
            for run in cluster.runs:
                await run.kill()
            client.close()


# -- the reconciliation -----------------------------------------------------------------


@dataclass
class StreamBooks:
    """One stream's Redis key read back, with the ledger's sends on its topic."""

    stream_id: str
    topic: str
    found: list[Record]
    books: Books

    @property
    def gaps(self) -> list[GapRecord]:
        return [g for _, g in self.books.gaps]


def read_stream(
    cluster: Cluster, stream_id: str, letters: list[DeadLetter], out: Outcome
) -> StreamBooks:
    topic = cluster.topics[stream_id]
    found = records(cluster.redis, stream_id)
    delivered: list[Delivered] = []
    gaps: list[tuple[int, GapRecord]] = []
    for line, record in enumerate(found, 1):
        if isinstance(record, GapRecord):
            gaps.append((line, record))
        else:
            delivered.append(checked_record(line, record, stream_id, {topic}, out))
    epochs = list(dict.fromkeys(d.epoch for d in delivered))
    # Dead letters carry no epoch; the checks below need none for them.
    delivered += [Delivered.of_letter(x, "") for x in letters if x.stream_id == stream_id]
    to_witness, to_mux = split_ledger(
        cluster.emulator.ledger.entries, cluster.witness.channel_id, {topic}
    )
    books = Books(epochs, delivered, gaps, to_witness, to_mux)
    books.margin = measured_margin(books)
    return StreamBooks(stream_id, topic, found, books)


def reconcile_stream(sb: StreamBooks, cluster: Cluster, stopped_at: float, out: Outcome) -> None:
    """No silent loss, no key twice, no conversation going back a version."""
    books, counts = sb.books, out.counts[sb.stream_id]
    if not books.to_mux:
        out.problem(f"{sb.stream_id}: the ledger has nothing sent to the mux on {sb.topic}")
        return
    # From the stream's first subscription, by whichever process, to the final SIGTERM.
    start = min(t for ts in books.to_mux.values() for t in ts) + books.margin
    account_for_sends(
        books,
        out,
        sb.stream_id,
        topics={sb.topic},
        frames=cluster.witness.frames,
        window=(start, stopped_at),
        phase=cluster.phase,
    )
    check_versions(books, out)
    events = [r for r in sb.found if isinstance(r, EventRecord)]
    twice = [k for k, n in Counter(e.idempotency_key for e in events).items() if n > 1]
    if twice:
        out.problem(f"{sb.stream_id}: idempotency keys stored more than once: {twice[:5]}")
    if not counts["delivered"]:
        out.problem(f"{sb.stream_id}: nothing in the reconciled window was delivered")
    counts["records"] = len(events)
    counts["owners"] = len(books.epochs)
    counts["backfilled"] = sum(1 for d in books.delivered if d.backfilled)
    counts["dead_letters"] = sum(1 for d in books.delivered if d.dead)
    counts["reconciled_s"] = round(stopped_at - start)
    counts["margin_ms"] = round(books.margin * 1000)


@dataclass
class Owner:
    """One owner's run of a stream in its Redis key: an epoch's events, in order."""

    epoch: str
    sequences: list[int] = field(default_factory=list)
    #: A failover gap came before it: it continues from the dead owner's last checkpoint.
    after_failover: bool = False


def owners_of(sb: StreamBooks) -> list[Owner]:
    """The stream's owners in the order they wrote (a process may own it again later).

    Two owners writing at once would show as blocks that number out of turn.
    """
    owners: list[Owner] = []
    failover = False
    for record in sb.found:
        if isinstance(record, GapRecord):
            failover = failover or record.reason == "failover"
            continue
        if not owners or owners[-1].epoch != record.epoch:
            owners.append(Owner(record.epoch, after_failover=failover))
            failover = False
        owners[-1].sequences.append(record.sequence)
    return owners


def check_numbering(sb: StreamBooks, out: Outcome) -> None:
    """Each owner numbers on from the one before.

    After a handover exactly from its last + 1 with no hole. After a
    failover from the dead owner's last checkpoint (above 1, at most its
    last + 1); the numbers it uses again may be states the dead owner had
    already stored, which the sink drops as repeats: holes, but never more
    than the dead owner's events numbered from there.
    """
    owners = owners_of(sb)
    letters = {d.sequence for d in sb.books.delivered if d.dead}
    if owners and owners[0].sequences[0] != 1:
        out.problem(f"{sb.stream_id}: the first owner starts at #{owners[0].sequences[0]}")
    for n, owner in enumerate(owners):
        seqs = owner.sequences
        if seqs != sorted(set(seqs)):
            out.problem(f"{sb.stream_id}: owner {n + 1} numbers out of order: {seqs[:20]}")
            continue
        holes = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs) - letters)
        if n == 0:
            if holes:
                out.problem(f"{sb.stream_id}: owner 1 leaves holes {holes[:10]}")
            continue
        before = [s for o in owners[:n] for s in o.sequences]
        last = max(before)
        if not owner.after_failover:
            if seqs[0] != last + 1 or holes:
                out.problem(
                    f"{sb.stream_id}: owner {n + 1} took over by a handover at #{seqs[0]} "
                    f"(holes {holes[:10]}), not at the last owner's #{last} + 1 without holes"
                )
            continue
        repeated = sum(1 for s in before if s >= seqs[0])
        out.counts[sb.stream_id]["renumbered_after_failover"] += repeated
        if not 1 < seqs[0] <= last + 1 or len(holes) > repeated:
            out.problem(
                f"{sb.stream_id}: owner {n + 1} fails over at #{seqs[0]} with holes "
                f"{holes[:10]}; the dead owner's last was #{last} and it numbered {repeated} "
                f"events from #{seqs[0]} on"
            )


def check_processes(cluster: Cluster, out: Outcome) -> None:
    for run in cluster.runs:
        if any(b"Traceback" in line for line in run.stderr):
            out.problem(f"process {run.process.pid} logged a traceback: {run.why()}")
    if cluster.witness.trouble:
        out.problem(f"the witness saw trouble: {cluster.witness.trouble[:5]}")


def check_acquisitions(
    cluster: Cluster, until: float, expected: dict[str, int], out: Outcome
) -> None:
    """How often each stream's lease was taken free (not handed over), before ``until``.

    Once when it is first carried, and once per failover: any other move
    is a handover to a member that stood by (make-before-break).
    """
    free: Counter[str] = Counter()
    for run in cluster.runs:
        for line in run.audit("LEASE_ACQUIRED"):
            at = datetime.fromisoformat(line["ts"]).timestamp()
            if at < until and line["reason"] == "acquired":
                free[line["stream_id"]] += 1
    for stream_id in cluster.topics:
        out.counts[stream_id]["taken_free"] = free[stream_id]
        if free[stream_id] != expected.get(stream_id, 1):
            out.problem(
                f"{stream_id}: its lease was taken free {free[stream_id]} times, not "
                f"{expected.get(stream_id, 1)}: a move that was not a handover"
            )


def dead_letters(cluster: Cluster) -> list[DeadLetter]:
    path = cluster.directory / DLQ
    return list(read_dead_letters(path)) if path.exists() else []


# -- failover and moves ---------------------------------------------------------------


@dataclass
class Failover:
    """When a killed process's stream was taken, subscribed and written again (s after the kill)."""

    leased: float | None = None
    subscribed: float | None = None
    written: float | None = None

    def done(self) -> bool:
        return None not in (self.leased, self.subscribed, self.written)

    def __str__(self) -> str:
        def show(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f} s"

        return (
            f"leased {show(self.leased)}, subscribed {show(self.subscribed)}, "
            f"written {show(self.written)}"
        )


async def measure_failover(
    cluster: Cluster, dead: RunProcess, dead_channels: set[str], streams: set[str], killed_at: float
) -> dict[str, Failover]:
    """Poll (every 20 ms) until each stream is leased, subscribed and written by a survivor."""
    found = {s: Failover() for s in streams}
    deadline = time.monotonic() + 3 * FAILOVER_WITHIN_S
    while not all(f.done() for f in found.values()) and time.monotonic() < deadline:
        now = time.time() - killed_at
        holders, carriers = cluster.holders(), cluster.carriers()
        for stream_id, f in found.items():
            holder = holders.get(stream_id)
            if f.leased is None and holder is not None and holder != dead.process.pid:
                f.leased = now
            if f.subscribed is None and carriers[cluster.topics[stream_id]] - dead_channels:
                f.subscribed = now
            if f.written is None and any(
                isinstance(r, GapRecord) and r.reason == "failover"
                for r in records(cluster.redis, stream_id)
            ):
                f.written = now
        await asyncio.sleep(0.02)  # polling towards a deadline, not synchronisation
    return found


def check_failover_gap(sb: StreamBooks, killed_at: float, took: Failover, out: Outcome) -> None:
    """One failover gap, from the dead owner's last checkpoint to the survivor's subscription."""
    gaps = sb.gaps
    if [g.reason for g in gaps] != ["failover"]:
        out.problem(f"{sb.stream_id}: expected one failover gap, got {gaps}")
        return
    (gap,) = gaps
    out.counts[sb.stream_id]["failover_gap_ms"] = round((gap.end - gap.start) * 1000)
    if gap.topics != [sb.topic]:
        out.problem(f"{sb.stream_id}: the failover gap names {gap.topics}, not {sb.topic}")
    if gap.start > killed_at:
        out.problem(f"{sb.stream_id}: the failover gap starts at {gap.start:.3f}, after the kill")
    at = sb.found.index(gap)
    before = [r for r in sb.found[:at] if isinstance(r, EventRecord)]
    after = [r for r in sb.found[at:] if isinstance(r, EventRecord)]
    if not before or not after:
        out.problem(f"{sb.stream_id}: the failover gap is not between two owners' events")
        return
    first_new = after[0].sequence
    unsaved = [r.received_at for r in before if r.sequence >= first_new]
    if unsaved and gap.start > min(unsaved):
        out.problem(
            f"{sb.stream_id}: the failover gap starts at {gap.start:.3f}, after the dead owner's "
            f"first event not in its last checkpoint (#{first_new}, {min(unsaved):.3f})"
        )
    if gap.end < killed_at:
        out.problem(f"{sb.stream_id}: the failover gap ends at {gap.end:.3f}, before the kill")
    live = [r.received_at for r in after if r.correlation_id is not None]
    if live and gap.end > min(live):
        out.problem(
            f"{sb.stream_id}: the failover gap ends at {gap.end:.3f}, after the new owner's "
            f"first live event ({min(live):.3f})"
        )
    if took.written is not None and gap.end > killed_at + took.written:
        out.problem(f"{sb.stream_id}: the failover gap ends after it was written")


async def sample_coverage(cluster: Cluster, uncovered: list[tuple[float, str]]) -> None:
    """Every 20 ms: each stream's topic has a connected channel of the mux on the platform."""
    while True:
        carriers = cluster.carriers()
        uncovered += [(time.time(), t) for t in cluster.topics.values() if not carriers[t]]
        await asyncio.sleep(0.02)  # sampling until cancelled


# -- the tests --------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_killed_instance_s_streams_fail_over_without_silent_loss(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with cluster_story(redis_server, tmp_path) as cluster:
        await cluster.start_three()

        # SIGKILL mid-traffic: no handover, no last checkpoint.
        dead = cluster.runs[1]
        orphans = cluster.held_by(dead)
        status = await cluster.status(dead)
        dead_channels = {c["channel_id"] for c in status["channels"].values()} - {None}
        killed_at = cluster.mark(f"process 2 (pid {dead.process.pid}) killed")
        assert await dead.finish(signal.SIGKILL) == -signal.SIGKILL
        took = await measure_failover(cluster, dead, dead_channels, orphans, killed_at)
        report = "; ".join(f"{s}: {f}" for s, f in sorted(took.items()))
        print(f"failover after SIGKILL (lease_ttl_s {LEASE_TTL_S:g}): {report}")
        cluster.mark("the survivors fail over")
        slow = {
            s: f
            for s, f in took.items()
            if not f.done()
            or max(f.leased or 0, f.subscribed or 0, f.written or 0) > FAILOVER_WITHIN_S
        }
        assert not slow, f"not carried again within {FAILOVER_WITHIN_S:g} s: {report}"

        await cluster.wait_settled("the two survivors carry every stream")
        await cluster.assert_carried_once()
        # More live traffic on the orphans, and the failover gaps back-filled.
        await cluster.each_delivers(sorted(orphans), "the orphaned streams deliver again")
        survivors = cluster.live()

        def backfilled() -> set[str]:
            return {s for r in survivors for line in r.audit("BACKFILL") for s in line["streams"]}

        await until(lambda: orphans <= backfilled(), "the failover gaps back-filled")
        stopped_at = await cluster.stop_all()

    out = Outcome()
    out.notes.append(f"failover after SIGKILL: {report}")
    check_processes(cluster, out)
    check_acquisitions(cluster, stopped_at, dict.fromkeys(orphans, 2), out)
    letters = dead_letters(cluster)
    for stream_id in cluster.topics:
        sb = read_stream(cluster, stream_id, letters, out)
        reconcile_stream(sb, cluster, stopped_at, out)
        check_numbering(sb, out)
        if stream_id in orphans:
            check_failover_gap(sb, killed_at, took[stream_id], out)
        elif sb.gaps:
            out.problem(f"{stream_id} was not the dead process's, yet has gaps: {sb.gaps}")
    # The story proved something: traffic lost to the kill was back-filled.
    totals: Counter[str] = Counter()
    for stream_id in orphans:
        totals.update(out.counts[stream_id])
    if not totals["in_failover_gap"]:
        out.problem("no notification was sent inside a failover gap: the kill proved nothing")
    if not totals["backfilled"]:
        out.problem("the survivors back-filled nothing")
    print(out.summary())
    assert not out.problems, out.summary()


@pytest.mark.timeout(120)
async def test_a_join_and_a_sigterm_move_streams_make_before_break(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with cluster_story(redis_server, tmp_path) as cluster:
        await cluster.start_three()
        uncovered: list[tuple[float, str]] = []
        sampler = asyncio.create_task(sample_coverage(cluster, uncovered))
        try:
            # A fourth joins: it takes its share from the others, make-before-break.
            fourth = await cluster.start("process 4")
            await cluster.wait_settled("four processes share the streams")
            await cluster.assert_carried_once()
            joined = cluster.held_by(fourth)
            await cluster.each_delivers(sorted(joined), "the fourth process delivers")
            # One of the first three leaves with SIGTERM: its streams go to the others.
            leaver = max(cluster.runs[:3], key=lambda r: len(cluster.held_by(r)))
            left = cluster.held_by(leaver)
            cluster.mark(f"process {cluster.runs.index(leaver) + 1} sent SIGTERM")
            assert await leaver.finish(signal.SIGTERM) == 0, leaver.why()
            released = {line["stream_id"] for line in leaver.audit("LEASE_RELEASED")}
            assert left <= released, (left, released)
            await cluster.wait_settled("three processes carry the streams again")
            await cluster.assert_carried_once()
            await cluster.each_delivers(sorted(left), "the streams it left deliver")
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        stopped_at = await cluster.stop_all()

    out = Outcome()
    check_processes(cluster, out)
    if uncovered:
        out.problem(
            f"a stream's topic had no connected channel {len(uncovered)} times: {uncovered[:5]}"
        )
    check_acquisitions(cluster, stopped_at, {}, out)
    letters = dead_letters(cluster)
    for stream_id in cluster.topics:
        sb = read_stream(cluster, stream_id, letters, out)
        reconcile_stream(sb, cluster, stopped_at, out)
        check_numbering(sb, out)
        if sb.gaps:
            out.problem(f"{stream_id}: gap records after planned moves: {sb.gaps}")
        if stream_id in joined | left and len(sb.books.epochs) < 2:
            out.problem(f"{stream_id} was moved, yet one owner wrote all its events")
    print(out.summary())
    assert not out.problems, out.summary()
