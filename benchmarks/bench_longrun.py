"""Memory over a long run: RSS stays flat while conversations, faults and reconnects pile up.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_longrun [--conversations N] [--memory M] [--faults-every S]
    .venv/bin/python -m benchmarks.bench_longrun --quick

Why
---
A production multiplexer runs for weeks: millions of conversations pass
through a stream that remembers a bounded number of them, and sockets are
dropped, rotated and reconnected thousands of times. Issue 13's target 4
asks that its memory stay flat through all of that, and that nothing be
lost silently. Every unbounded list found so far grew with one of those
counts (a key forgotten, a socket replaced, a gap left unread, a stream's
saved state), never with the rate, so a run that pushes many times more
conversations than the memory holds, through many reconnects and
rotations, shows any such growth as a slope after the warm-up.

How
---
One emulator runs in a process of its own (bench_streams' snapshot blast:
every frame a real queue conversation snapshot of at most ``--max-body``
bytes, each a distinct conversation). Each client runs in a fresh
process, one after the other, on a queue topic of its own, and the
emulator blasts ``--conversations`` frames at it at ``--rate`` frames/s.
Every ``--faults-every`` seconds, until 90 % of the frames are sent, the
client's process injects a fault through the emulator's control surface,
in turn a dropped socket (``drop_socket``: no close frame, the channel
survives) and a maintenance warning (``socket_closing``, the close
``--closing-delay`` seconds later), so that the multiplexer reconnects and
rotates its channel many times.

* ``raw``: a bare aiohttp WebSocket reader that decodes each frame with
  ``msgspec.json.decode`` and reconnects to its channel when the socket
  ends. **The baseline**: what the interpreter, aiohttp and the same
  traffic and faults do to a process's memory with nothing remembered.
* ``mux``: ``Multiplexer.stream()``, one stream on the queue, no state
  store (the library's default), dead letters to the default in-memory
  queue. The stream remembers ``--memory`` conversations (``StreamConfig``
  has no setting for it: the benchmark's process builds the multiplexer's
  streams with that bound), so the run pushes ``N / M`` times as many
  conversations through it as it holds.
* ``mux-sqlite``: the same, with a SQLite state store in a temporary
  directory (a checkpoint every second).

Each client samples its own RSS (``VmRSS``, after a full garbage
collection) and the number of objects the garbage collector tracks: before
the blast, when the first conversation of each mark (10 %, 25 %, 50 % and
75 % of the frames sent) is delivered, and at the end, once the blast is
over and the stream has been quiet for half a second (then the
multiplexer is stopped, draining, while the consumer reads on: what the
stop drains, and the gap of an outage still open, reach it too). The
warm-up is over at 25 %: by then the memory is full (with the defaults:
its bound, and the last ``LOG_LIMIT`` sightings its log holds for
incremental checkpoints, whose records stay alive with it; the tables say
when a run's warm-up is shorter than that) and the multiplexer has
reconnected and rotated. **Flat** means the growth from the 25 % mark to
the end is within 5 MiB or 5 % of the RSS at 25 %; more is **GROWS**.
``--trace`` runs the multiplexer's clients under ``tracemalloc`` and adds
its traced size and the allocation sites that grew most after the warm-up
(its own tables inflate RSS, so the verdict is then the traced size's; the
client runs about three times slower, so lower ``--rate``: a client that
falls behind changes when the faults land).

Every frame is accounted for: the multiplexer's stream received exactly
what it delivered, counted as a duplicate (the same frame on the old and
the new channel of a rotation), stale, filtered or dead-lettered; every
conversation sent was delivered or lost, never delivered twice; and no
loss is silent: every run of lost conversations (frames a dropped socket
never read, or sent while no socket was connected) must overlap a gap the
consumer was given, between the arrivals of the conversations delivered
just before and just after it. The emulator's ledger gives the frames
written to sockets. The exit status is 1 when anything does not add up.

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import functools
import gc
import itertools
import math
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

import genesys_mux.net.multiplexer as multiplexer_module
from benchmarks.bench_pool import (
    CLIENT_ID,
    CLIENT_SECRET,
    SETUP_TIMEOUT_S,
    BenchError,
    Job,
    _blast,
    _child_answer,
    _child_setup,
    _control,
    _ledger_entries,
    _ledger_mark,
    _open_channel,
    _progress,
    _start_emulator,
    _stop_blast,
    run_benchmark,
)
from benchmarks.bench_streams import (
    CONVERSATION_PREFIX,
    STREAM_ID,
    _emulator_process,
    _queue_of,
    snapshot_emulator,
)
from genesys_mux import Multiplexer, StreamEvent
from genesys_mux.core.memory import LOG_LIMIT
from genesys_mux.core.streams import Stream
from genesys_mux.emulator import EmulatorSettings

#: Client key -> label in the tables, in the order they run and are shown.
CLIENTS: dict[str, str] = {
    "raw": "aiohttp `ws.receive()` + `msgspec.json.decode`, reconnecting (**baseline**)",
    "mux": "`Multiplexer.stream()`, no state store",
    "mux-sqlite": "`Multiplexer.stream()`, SQLite state store",
}
#: The marks, as shares of the frames sent, at which each client samples its memory.
MARKS = (0.10, 0.25, 0.50, 0.75)
#: The warm-up ends at this mark: growth is measured from it to the end.
WARM_MARK = 0.25
#: Growth after the warm-up still called flat: this many MiB, or this share of the RSS.
FLAT_MIB = 5.0
FLAT_SHARE = 0.05
#: Faults stop once this share of the frames is sent, so that the run ends clean.
FAULTS_UNTIL = 0.90
#: After the blast ends, the client is done once it took nothing for this long.
QUIET_S = 0.5
#: How often the client asks the emulator whether the blast is still on.
POLL_S = 0.2
#: The allocation sites ``--trace`` shows, most grown first.
TRACE_TOP = 10
TRACE_FRAMES = 10
#: The emulator keeps this many ledger entries (its default).
LEDGER_SIZE = EmulatorSettings().ledger_size


@dataclass(frozen=True, slots=True)
class Setup:
    """What every client process of the run is told besides its :class:`Job`."""

    memory: int
    faults_every_s: float
    closing_delay_s: float
    trace: bool


# --------------------------------------------------------------------------
# Sampling memory in the client's process
# --------------------------------------------------------------------------


def _rss_kib() -> int:
    """This process's resident set size in KiB (``VmRSS``; the peak where /proc is missing)."""
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


@dataclass(slots=True)
class _Run:
    """What one client saw: a count per conversation, when each came, gaps, memory samples.

    The per-conversation arrays are allocated before the first sample, so
    that they are not counted as growth.
    """

    count: int
    #: How often each conversation was delivered (at most 255).
    delivered: bytearray = field(init=False)
    #: When each conversation was received (the first time), Unix seconds.
    received_at: array.array[float] = field(init=False)
    #: The gaps the consumer was given: (start, end, reason).
    gaps: list[tuple[float, float, str]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: Items (events and gaps) the consumer took, for the end of the run.
    taken: int = 0
    #: The highest conversation index delivered so far.
    highest: int = -1
    #: The index whose delivery takes the next sample.
    threshold: int = 0
    #: The samples still to take: (index, label), the next last.
    marks: list[tuple[int, str]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    #: The multiplexer's remembered keys, when it has a memory.
    keys: Callable[[], int] | None = None
    warm_snapshot: tracemalloc.Snapshot | None = None
    grown: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.delivered = bytearray(self.count)
        self.received_at = array.array("d", bytes(8 * self.count))
        self.marks = sorted(((int(m * self.count), _label(m)) for m in MARKS), reverse=True)
        self.threshold = self.marks[-1][0]

    def deliver(self, index: int, at: float) -> None:
        """Conversation ``index`` was handed to the consumer at ``at``."""
        delivered = self.delivered
        seen = delivered[index]
        if not seen:
            self.received_at[index] = at
        if seen < 255:
            delivered[index] = seen + 1
        if index > self.highest:
            self.highest = index
        while index >= self.threshold:
            self.sample(self.marks.pop()[1])
            self.threshold = self.marks[-1][0] if self.marks else self.count

    def sample(self, label: str) -> None:
        """Record this process's memory now, after a full collection."""
        gc.collect()
        tracing = tracemalloc.is_tracing()
        self.samples.append(
            {
                "label": label,
                "rss_kib": _rss_kib(),
                "objects": len(gc.get_objects()),
                "traced": tracemalloc.get_traced_memory()[0] if tracing else None,
                "keys": self.keys() if self.keys is not None else None,
            }
        )
        if tracing and label == _label(WARM_MARK):
            self.warm_snapshot = tracemalloc.take_snapshot()

    def compare_to_warm(self) -> None:
        """The allocation sites that grew most since the warm-up (``--trace``)."""
        if self.warm_snapshot is None or not tracemalloc.is_tracing():
            return
        end = tracemalloc.take_snapshot()
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        diffs = end.filter_traces(filters).compare_to(
            self.warm_snapshot.filter_traces(filters), "traceback"
        )
        for diff in [d for d in diffs if d.size_diff > 0][:TRACE_TOP]:
            frames = list(diff.traceback)  # oldest first
            ours = [f for f in frames if "genesys_mux" in f.filename]
            self.grown.append(
                {
                    "site": _where(frames[-1]),
                    "via": _where(ours[-1]) if ours and ours[-1] is not frames[-1] else "",
                    "size_diff": diff.size_diff,
                    "count_diff": diff.count_diff,
                }
            )

    def answer(self, mark: int, stats: dict[str, Any]) -> dict[str, Any]:
        """The payload sent back to the parent (plain values: see bench_pool's ``_job_process``)."""
        return {
            "mark": mark,
            "delivered": bytes(self.delivered),
            "received_at": self.received_at.tobytes(),
            "gaps": self.gaps,
            "samples": self.samples,
            "faults": self.faults,
            "grown": self.grown,
            "stats": stats,
        }


def _label(mark: float) -> str:
    """A mark's label in the samples and the tables: ``25 %``."""
    return f"{mark * 100:g} %"


def _where(frame: tracemalloc.Frame) -> str:
    parts = Path(frame.filename).parts
    for anchor in ("genesys_mux", "benchmarks", "site-packages", "asyncio"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + (anchor == "site-packages") :]
            break
    else:
        parts = parts[-2:]
    return f"{'/'.join(parts)}:{frame.lineno}"


def _index(conversation_id: str | None) -> int:
    """The blast counter in a conversation id (``CONVERSATION_PREFIX`` + 12 digits)."""
    if conversation_id is None or not conversation_id.startswith(CONVERSATION_PREFIX):
        raise BenchError(f"not a blast conversation: {conversation_id!r}")
    return int(conversation_id[-12:])


# --------------------------------------------------------------------------
# Faults, and the end of the run
# --------------------------------------------------------------------------


async def _inject_faults(session: aiohttp.ClientSession, job: Job, setup: Setup, run: _Run) -> None:
    """Every ``faults_every_s``, a dropped socket or a maintenance warning, in turn."""
    kinds: itertools.cycle[dict[str, Any]] = itertools.cycle(
        (
            {"fault": "drop_socket"},
            {"fault": "socket_closing", "delay_s": setup.closing_delay_s},
        )
    )
    until = FAULTS_UNTIL * job.count
    while True:
        await asyncio.sleep(setup.faults_every_s)
        if run.highest >= until:
            return
        spec = next(kinds)
        answer = await _control(session, job.base_url, "faults", spec)
        if answer.get("applied"):
            run.faults[spec["fault"]] = run.faults.get(spec["fault"], 0) + 1


async def _until_done(session: aiohttp.ClientSession, job: Job, run: _Run) -> None:
    """Until the emulator's blast is over and the consumer then took nothing for ``QUIET_S``."""
    # Polling: the emulator has no way to say that the blast ended.
    while (await _control(session, job.base_url, "traffic", {})).get("blasting"):  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
    taken = -1
    while run.taken != taken:
        taken = run.taken
        await asyncio.sleep(QUIET_S)


async def _drive(
    session: aiohttp.ClientSession,
    job: Job,
    setup: Setup,
    run: _Run,
    consume: Callable[[], Coroutine[Any, Any, None]],
    finish: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Blast, inject faults and consume until done; then the final sample, and ``finish``.

    ``finish`` (the multiplexer's draining stop) runs while the consumer
    still reads, which ends by itself then: what the stop drains, and the
    gap of an outage still open, reach it. Without one, the consumer is
    cancelled.
    """
    consumer = asyncio.create_task(consume(), name="bench-consumer")
    faults: asyncio.Task[None] | None = None
    try:
        await _blast(session, job)
        faults = asyncio.create_task(_inject_faults(session, job, setup, run), name="bench-faults")
        done = asyncio.create_task(_until_done(session, job, run), name="bench-done")
        try:
            async with asyncio.timeout(job.timeout_s):
                await asyncio.wait((consumer, done), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise BenchError(
                f"not done within {job.timeout_s:g} s: {run.highest + 1:,} of {job.count:,} "
                f"conversations seen"
            ) from None
        finally:
            done.cancel()
        for task in (consumer, faults, done):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise BenchError(f"{task.get_name()} failed: {task.exception()!r}")
        if consumer.done():
            raise BenchError("the consumer ended before the run did")
        run.sample("end")
        run.compare_to_warm()
        faults.cancel()
        if finish is not None:
            async with asyncio.timeout(job.timeout_s):
                await finish()
                await consumer
    finally:
        for task in [t for t in (consumer, faults) if t is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await _stop_blast(session, job.base_url)


# --------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------


async def _raw_socket(
    session: aiohttp.ClientSession, connect_uri: str
) -> aiohttp.ClientWebSocketResponse:
    """A socket to the channel, retried while the emulator is not taking it yet."""
    for attempt in range(50):
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                return await session.ws_connect(connect_uri)
        except aiohttp.ClientError:
            await asyncio.sleep(min(1.0, 0.02 * 2**attempt))
    raise BenchError("the raw client could not reconnect to its channel")


async def _raw_client(
    session: aiohttp.ClientSession, job: Job, setup: Setup, run: _Run
) -> dict[str, Any]:
    connect_uri = await _open_channel(session, job.base_url, job.topic)
    ws = await _raw_socket(session, connect_uri)
    # The server writes in order: once our pong is back, the socket gets every frame.
    await ws.send_str('{"message":"ping"}')
    async with asyncio.timeout(SETUP_TIMEOUT_S):
        while '"pong"' not in (await ws.receive_str()):
            pass
    counts = {"received": 0}
    run.sample("before")

    async def consume() -> None:
        nonlocal ws
        decode, text, now, topic = msgspec.json.decode, aiohttp.WSMsgType.TEXT, time.time, job.topic
        deliver = run.deliver
        while True:
            while True:
                msg = await ws.receive()
                if msg.type is not text:
                    break  # closed, dropped or failed: reconnect
                doc = decode(msg.data)
                if doc.get("topicName") != topic:
                    continue  # heartbeats, pongs, the maintenance warning
                counts["received"] += 1
                run.taken += 1
                deliver(_index(doc["eventBody"]["id"]), now())
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await ws.close()
            ws = await _raw_socket(session, connect_uri)
            run.reconnects += 1

    try:
        await _drive(session, job, setup, run, consume)
    finally:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                await ws.close()
    received = counts["received"]
    return {"received": received, "delivered": received, "reconnects": run.reconnects}


class _BoundedStream(Stream):
    """A :class:`Stream` whose memory bound defaults to :attr:`bound` (``--memory``)."""

    bound = 50_000

    def __init__(self, stream_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("memory", self.bound)
        super().__init__(stream_id, **kwargs)


async def _mux_client(
    session: aiohttp.ClientSession, job: Job, setup: Setup, run: _Run
) -> dict[str, Any]:
    queue_id = _queue_of(job.topic)
    # The multiplexer builds every stream with the default bound; this
    # process's streams get ``--memory`` instead.
    _BoundedStream.bound = setup.memory
    multiplexer_module.Stream = _BoundedStream  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="bench-longrun-") as directory:
        state = Path(directory) / "state.sqlite3" if job.scenario == "mux-sqlite" else None
        async with Multiplexer(
            base_url=job.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, state=state
        ) as mux:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                rejected = await mux.add_stream({"id": STREAM_ID, "filter": {"queueId": queue_id}})
            if rejected or not mux.live:
                raise BenchError(f"the multiplexer is not live on the topic: rejected={rejected}")
            limit = mux.stats()["memory"]["limit"]
            if limit != setup.memory:
                raise BenchError(f"the stream remembers {limit:,} keys, not {setup.memory:,}")
            run.keys = lambda: int(mux.stats()["memory"]["keys"])
            items = mux.stream(STREAM_ID)
            run.sample("before")

            async def consume() -> None:
                deliver = run.deliver
                async for item in items:
                    run.taken += 1
                    if isinstance(item, StreamEvent):
                        deliver(_index(item.conversation_id), item.received_at)
                    else:
                        run.gaps.append((item.start, item.end, item.reason))

            pool: dict[str, int] = {}

            async def finish() -> None:
                # The pool's counters, before its stop lets go of its slots.
                slots = mux.stats()["channels"].values()
                for name in ("reconnects", "rotations", "gone", "shed", "bad_frames"):
                    pool[name] = sum(getattr(slot, name) for slot in slots)
                await mux.stop()

            await _drive(session, job, setup, run, consume, finish)
            stats = mux.stats()
            stream = stats["streams"][STREAM_ID]
            return pool | {
                "received": stream.received,
                "delivered": stream.delivered,
                "duplicates": stream.duplicates,
                "stale": stream.stale,
                "filtered": stream.filtered,
                "overflowed": stream.overflowed,
                "dead_lettered": stream.dead_lettered,
                "buffered": stream.buffered,
                "gaps": stream.gaps,
                "dlq": stats.get("dlq", {}),
                "limit": limit,
            }


async def _run_client(job: Job, setup: Setup) -> dict[str, Any]:
    run = _Run(job.count)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SETUP_TIMEOUT_S)) as s:
        mark = await _ledger_mark(s, job.base_url)
        client = _raw_client if job.scenario == "raw" else _mux_client
        stats = await client(s, job, setup, run)
    return run.answer(mark, stats)


def _client_process(job: Job, setup: Setup, conn: Connection) -> None:
    _child_setup(job.cpus, job.loop)
    try:
        if setup.trace and job.scenario != "raw":
            tracemalloc.start(TRACE_FRAMES)
        answer: tuple[str, Any] = ("ok", asyncio.run(_run_client(job, setup)))
    except Exception as exc:
        answer = ("error", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()


# --------------------------------------------------------------------------
# Accounting, in the parent
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One client's run, reconciled against what the emulator sent."""

    client: str
    payload: dict[str, Any]
    #: Frames written to a socket (the ledger's entries; None if it overflowed).
    written: int | None
    #: Conversations written to no socket at all (sent while none was connected).
    never_written: int | None
    delivered_once: int
    delivered_twice: int
    lost: int
    #: Lost conversations outside every gap the stream reported (raw: no gaps, None).
    silent: int | None

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.payload["stats"])

    @property
    def samples(self) -> list[dict[str, Any]]:
        return list(self.payload["samples"])


def _lost_runs(delivered: bytes) -> list[tuple[int, int]]:
    """Runs of consecutive conversations never delivered, as (first, last)."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, n in enumerate(delivered):
        if n == 0 and start is None:
            start = i
        elif n and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(delivered) - 1))
    return runs


def _silent(
    delivered: bytes, received_at: array.array[float], gaps: list[tuple[float, float, str]]
) -> int:
    """Lost conversations no reported gap covers.

    A run of lost conversations lies between the last one delivered before
    it and the first one delivered after it; some gap must overlap the
    time between their arrivals.
    """
    silent = 0
    for first, last in _lost_runs(delivered):
        before = first - 1
        after = last + 1
        start = received_at[before] if before >= 0 else -math.inf
        end = received_at[after] if after < len(delivered) else math.inf
        if not any(g_start <= end and g_end >= start for g_start, g_end, _ in gaps):
            silent += last - first + 1
    return silent


def _reconcile(
    client: str, payload: dict[str, Any], entries: list[dict[str, Any]] | None
) -> Outcome:
    delivered: bytes = payload["delivered"]
    received_at = array.array("d")
    received_at.frombytes(payload["received_at"])
    lost = delivered.count(0)
    written = never_written = None
    if entries is not None:
        written = len(entries)
        reached = {_index(e["conversation_id"]) for e in entries}
        never_written = len(delivered) - len(reached)
    return Outcome(
        client=client,
        payload=payload,
        written=written,
        never_written=never_written,
        delivered_once=len(delivered) - lost,
        delivered_twice=sum(1 for n in delivered if n > 1),
        lost=lost,
        silent=None if client == "raw" else _silent(delivered, received_at, payload["gaps"]),
    )


def _checks(outcome: Outcome) -> list[str]:
    """What does not add up in one client's run (empty: everything is accounted for)."""
    s, problems = outcome.stats, []
    if outcome.delivered_twice:
        problems.append(f"{outcome.delivered_twice:,} conversations delivered more than once")
    if outcome.silent:
        problems.append(f"{outcome.silent:,} conversations lost outside every reported gap")
    if outcome.client != "raw":
        accounted = (
            s["delivered"] + s["duplicates"] + s["stale"] + s["filtered"] + s["dead_lettered"]
        )
        if s["received"] != accounted + s["buffered"]:
            problems.append(
                f"received {s['received']:,} but delivered + duplicates + stale + filtered "
                f"+ dead-lettered + buffered is {accounted + s['buffered']:,}"
            )
        if s["delivered"] != outcome.delivered_once + outcome.delivered_twice:
            problems.append(
                f"the stream counted {s['delivered']:,} delivered, the consumer "
                f"{outcome.delivered_once:,} conversations"
            )
    if outcome.written is not None and outcome.written < s["received"]:
        problems.append(f"received {s['received']:,} frames, {outcome.written:,} were written")
    return problems


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _gaps(count: int, gaps: list[tuple[float, float, str]]) -> str:
    lengths = [end - start for start, end, _ in gaps]
    return f"{count:,} ({sum(lengths):.2f} s, {max(lengths, default=0.0):.2f} s)"


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def _growth(outcome: Outcome) -> tuple[int, int, bool]:
    """RSS growth (KiB) and tracked-object growth from the warm-up mark to the end; flat?

    Under ``--trace`` the verdict is the traced size's: tracemalloc's own
    tables, in the RSS, grow with the blocks it ever traced.
    """
    by_label = {s["label"]: s for s in outcome.samples}
    warm, end = by_label[_label(WARM_MARK)], by_label["end"]
    growth = end["rss_kib"] - warm["rss_kib"]
    judged, base = growth, warm["rss_kib"]
    if end["traced"] is not None:
        judged, base = (end["traced"] - warm["traced"]) // 1024, warm["traced"] // 1024
    flat = judged <= max(FLAT_MIB * 1024, FLAT_SHARE * base)
    return growth, end["objects"] - warm["objects"], flat


def _memory_table(args: argparse.Namespace, outcomes: list[Outcome]) -> list[str]:
    labels = ["before", *(_label(m) for m in MARKS), "end"]
    warm_count = args.conversations - int(WARM_MARK * args.conversations)
    lines = [
        f"{args.conversations:,} distinct conversations (`eventBody` up to {args.max_body:,} B) "
        f"at {args.rate:,.0f} frames/s, a stream remembering {args.memory:,} "
        f"({args.conversations / args.memory:.0f}x its bound), a fault every "
        f"{args.faults_every:g} s until {_label(FAULTS_UNTIL)} of the frames were sent "
        f"(`drop_socket` and `socket_closing` with a {args.closing_delay:g} s delay, in turn). "
        f"RSS in MiB after a full collection, at each share of the frames sent; growth from "
        f"the {_label(WARM_MARK)} mark (the warm-up over) to the end, also per conversation sent "
        f"after it ({warm_count:,}); flat: within {FLAT_MIB:g} MiB or {_label(FLAT_SHARE)}.",
        "",
        "| client | "
        + " | ".join(labels)
        + f" | growth {_label(WARM_MARK)} → end | per conversation "
        "| tracked objects, growth | remembered keys at the end | verdict |",
        "|---|" + "--:|" * len(labels) + "--:|--:|--:|--:|---|",
    ]
    for outcome in outcomes:
        by_label = {s["label"]: s for s in outcome.samples}
        growth, objects, flat = _growth(outcome)
        end = by_label["end"]
        keys = "n/a" if end["keys"] is None else f"{end['keys']:,} of {outcome.stats['limit']:,}"
        cells = [
            CLIENTS[outcome.client],
            *(_mib(by_label[label]["rss_kib"]) if label in by_label else "n/a" for label in labels),
            f"{growth / 1024:+.1f} MiB",
            f"{growth * 1024 / warm_count:+.1f} B",
            f"{end['objects']:,} ({objects:+,})",
            keys,
            "**flat**" if flat else "**GROWS**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    traced = [o for o in outcomes if o.samples[-1]["traced"] is not None]
    if traced:
        lines += [
            "",
            "Under `tracemalloc` (`--trace`; its own bookkeeping is in the RSS above), the "
            "traced size in MiB:",
            "",
            "| client | " + " | ".join(labels) + f" | growth {_label(WARM_MARK)} → end |",
            "|---|" + "--:|" * (len(labels) + 1),
        ]
        for outcome in traced:
            by_label = {s["label"]: s for s in outcome.samples}
            warm, end = by_label[_label(WARM_MARK)]["traced"], by_label["end"]["traced"]
            cells = [
                CLIENTS[outcome.client],
                *(
                    f"{by_label[label]['traced'] / 2**20:.2f}" if label in by_label else "n/a"
                    for label in labels
                ),
                f"{(end - warm) / 2**20:+.2f} MiB",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for outcome in traced:
            lines += [
                "",
                f"Allocation sites of {CLIENTS[outcome.client]} that grew most from the "
                f"{_label(WARM_MARK)} mark to the end (by traceback; the site, and the innermost "
                "frame of the library above it):",
                "",
                "| site | via | size Δ | blocks Δ |",
                "|---|---|--:|--:|",
                *(
                    f"| `{g['site']}` | {_code(g['via'])} "
                    f"| {g['size_diff'] / 1024:+,.1f} KiB | {g['count_diff']:+,} |"
                    for g in outcome.payload["grown"]
                ),
            ]
    lines.append("")
    warm_at = int(WARM_MARK * args.conversations)
    if warm_at < max(args.memory, LOG_LIMIT) and any(o.client != "raw" for o in outcomes):
        lines += [
            f"Note: the warm-up ({warm_at:,} conversations) is shorter than the multiplexer "
            f"needs to fill its memory: it holds the records of its last {args.memory:,} keys "
            f"and of its last {LOG_LIMIT:,} sightings (the log incremental checkpoints read), "
            "so growth after the mark includes that filling.",
            "",
        ]
    for outcome in outcomes:
        growth, objects, flat = _growth(outcome)
        by_traced = outcome.samples[-1]["traced"] is not None
        lines.append(
            f"- {CLIENTS[outcome.client]}: **{'flat' if flat else 'GROWS'}** "
            f"({growth / 1024:+.1f} MiB and {objects:+,} tracked objects from the "
            f"{_label(WARM_MARK)} mark to the end"
            + ("; the verdict is the traced size's" if by_traced else "")
            + ")."
        )
    return [*lines, ""]


def _faults_table(args: argparse.Namespace, outcomes: list[Outcome]) -> list[str]:
    lines = [
        "Faults injected (those that found a connected socket), what the client did about "
        "them, and every frame accounted for. *Sent*: distinct conversations blasted; "
        "*written*: frames the emulator wrote to a socket (a rotation's overlap writes some "
        "twice); *lost*: conversations never delivered, written to a socket that was dropped "
        "before they were read or sent while no socket was connected (in brackets: those "
        "written to no socket at all); *silent*: lost outside every gap the stream reported.",
        "",
        "| client | drops / closings | reconnects | rotations | gaps (time in them, longest) "
        "| sent "
        "| written | received | delivered | duplicates | stale | dead-lettered | lost | silent "
        "| delivered twice |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for o in outcomes:
        s, faults = o.stats, o.payload["faults"]
        mux = o.client != "raw"

        def cell(key: str, s: dict[str, Any] = s, mux: bool = mux) -> str:
            return f"{s[key]:,}" if mux else "n/a"

        cells = [
            CLIENTS[o.client],
            f"{faults.get('drop_socket', 0)} / {faults.get('socket_closing', 0)}",
            f"{s['reconnects']:,}",
            cell("rotations"),
            _gaps(s["gaps"], o.payload["gaps"]) if mux else "n/a",
            f"{args.conversations:,}",
            "n/a" if o.written is None else f"{o.written:,}",
            f"{s['received']:,}",
            f"{s['delivered']:,}",
            cell("duplicates"),
            cell("stale"),
            cell("dead_lettered"),
            f"{o.lost:,}" + ("" if o.never_written is None else f" ({o.never_written:,})"),
            "n/a" if o.silent is None else f"{o.silent:,}",
            f"{o.delivered_twice:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for o in outcomes:
        s = o.stats
        problems = _checks(o)
        if o.client == "raw":
            sums = f"sent {args.conversations:,} = delivered {o.delivered_once:,} + lost {o.lost:,}"
        else:
            sums = (
                f"received {s['received']:,} = delivered {s['delivered']:,} + duplicates "
                f"{s['duplicates']:,} + stale {s['stale']:,} + filtered {s['filtered']:,} "
                f"+ dead-lettered {s['dead_lettered']:,}"
                + (f" + buffered {s['buffered']:,}" if s["buffered"] else "")
                + f"; sent {args.conversations:,} = delivered {o.delivered_once:,} + lost "
                f"{o.lost:,}, every loss inside a reported gap"
            )
        verdict = "**holds**" if not problems else "**does not hold**: " + "; ".join(problems)
        lines.append(f"- {CLIENTS[o.client]}: {sums}: {verdict}.")
    return [*lines, ""]


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> int:
    _progress(
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"msgspec {msgspec.__version__}, {os.cpu_count()} CPUs"
    )
    make = functools.partial(snapshot_emulator, args.max_body)
    emulator, stopper, base_url = await _start_emulator(
        None, functools.partial(_emulator_process, make)
    )
    setup = Setup(args.memory, args.faults_every, args.closing_delay, args.trace)
    outcomes: list[Outcome] = []
    failed: list[str] = []
    try:
        for client in args.clients:
            job = Job(
                scenario=client,
                base_url=base_url,
                topic=f"v2.routing.queues.{uuid.uuid4()}.conversations",
                count=args.conversations,
                size=0,  # the snapshot blast ignores it
                rate=args.rate,
                timeout_s=args.timeout,
                emulator_pid=emulator.process.pid or 0,
                cpus=None,
            )
            started = time.monotonic()
            payload = await _child_answer(job, _client_process, setup)
            async with aiohttp.ClientSession() as session:
                next_seq = await _ledger_mark(session, base_url)
                entries = None
                if next_seq - payload["mark"] <= LEDGER_SIZE:
                    entries = await _ledger_entries(session, base_url, payload["mark"], job.topic)
            outcome = _reconcile(client, payload, entries)
            outcomes.append(outcome)
            growth, objects, flat = _growth(outcome)
            problems = _checks(outcome)
            failed += [f"{client}: {p}" for p in problems]
            _progress(
                f"{client:<10} {time.monotonic() - started:5.1f} s  RSS "
                + " ".join(f"{s['label']} {_mib(s['rss_kib'])}" for s in outcome.samples)
                + f" MiB  growth {growth / 1024:+.1f} MiB {objects:+,} objects"
                f"  {'flat' if flat else 'GROWS'}  faults {outcome.payload['faults']}"
                f"  {outcome.stats}" + (f"  PROBLEMS: {problems}" if problems else "")
            )
    finally:
        stopper.close()
        await emulator.stop()
    out = [
        "#### Memory over the run",
        "",
        *_memory_table(args, outcomes),
        "#### Faults and accounting",
        "",
        *_faults_table(args, outcomes),
    ]
    print("\n".join(out).rstrip())
    if failed:
        _progress("not every frame is accounted for: " + "; ".join(failed))
        return 1
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_longrun",
        description="Memory over a long run with faults (issue 13, target 4), "
        "against a raw-socket baseline.",
    )
    parser.add_argument(
        "--conversations",
        type=int,
        default=None,
        help="distinct conversations blasted at each client (default: 20 times --memory)",
    )
    parser.add_argument(
        "--memory", type=int, default=5_000, help="conversations the stream remembers"
    )
    parser.add_argument("--rate", type=float, default=2_000.0, help="blast rate, frames/s")
    parser.add_argument(
        "--faults-every", type=float, default=0.5, help="seconds between two injected faults"
    )
    parser.add_argument(
        "--closing-delay",
        type=float,
        default=5.0,
        help="seconds from socket_closing's warning to the close",
    )
    parser.add_argument(
        "--max-body",
        type=int,
        default=2300,
        help="the template is the largest queue snapshot of at most this many bytes",
    )
    parser.add_argument(
        "--clients",
        nargs="+",
        choices=list(CLIENTS),
        default=list(CLIENTS),
        help="the clients to run (default: all)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the multiplexer's clients under tracemalloc and show what grew after warm-up",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="deadline in s for one client's run (default: twice the blast's time, plus 60)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds a client: 4,000 conversations, a memory of 200",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.memory, args.conversations, args.rate = 200, 4_000, 2_000.0
        args.faults_every, args.closing_delay = 0.25, 0.5
    if args.conversations is None:
        args.conversations = 20 * args.memory
    if args.timeout is None:
        args.timeout = 2 * args.conversations / args.rate + 60
    if (
        args.memory < 1
        or args.conversations < 100
        or args.rate <= 0
        or args.faults_every <= 0
        or args.closing_delay < 0
        or args.timeout <= 0
        or args.max_body < 512
    ):
        parser.error(
            "need --memory >= 1, --conversations >= 100, --rate, --faults-every and --timeout "
            "> 0, --closing-delay >= 0, --max-body >= 512"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    return run_benchmark(_main, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
