"""What periodic checkpoints cost a :class:`~genesys_mux.Multiplexer`, with each state store.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_checkpoint [--count N] [--repeat R] [--rate FPS] [--update]

A multiplexer given a state store (``Multiplexer(state=...)``) writes every
stream's checkpoint every ``checkpoint_interval_s`` (1 s by default): its
next sequence number, its watermark, and what changed in its
de-duplication memory since the last one (up to 50,000 remembered
conversations per stream, ``Stream``'s default bound; ``StreamConfig`` has
no setting for it). The checkpoint is built on the event loop, and with
Redis also encoded and sent from it (SQLite encodes and writes in a worker
thread), so its cost is paid by the process that receives the events, once
per interval. This benchmark measures that cost against the durable-state
target: under 1 µs per event amortised, and no effect on p99 latency at
10,000 events/s.

One run starts one emulator (bench_streams' snapshot blast: every frame a
real queue conversation snapshot, the largest of at most ``--max-body``
bytes, 2 KB by default) and one ``redis-server`` of its own (bench_sinks',
persistence off). Each measurement runs in a fresh process on a queue topic
of its own:

* ``raw socket + msgspec.json.decode``: bench_pool's naive client, **the
  baseline**, on the same frames in the same run.
* ``Multiplexer.stream()`` with no state store (``state=None``: no
  periodic checkpoints), with a SQLite store (a file in a temporary
  directory) and with a Redis store (the local redis-server). Before the
  measured blast, the stream's memory is filled with ``--remember``
  conversations (50,000: full) by an unpaced blast; the measured blast then
  brings ``--count`` events at ``--rate`` events/s (10,000 by default).
  By default every event is a further new conversation, so the memory
  stays full and forgets one for each (the worst case: each event changes
  two keys). With ``--update``, the fill is the measured conversations'
  first snapshots and every measured event is the next snapshot of one of
  them: each changes one key and nothing is forgotten.

Columns: client CPU µs/event is this process's user + system CPU
(``getrusage``, every thread: the SQLite store writes from a worker
thread) over the measured stretch, per event, so a checkpoint's building
and encoding count, and the redis-server's own CPU does not (it has a
column of its own, from ``/proc``). The checkpoint cost per event is the
difference to the run with no store. Send→consumer latency runs from the
emulator ledger's send time to the moment the consumer got the event.

Then, for each store, one process fills a stream's memory the same way
(periodic checkpoints off: the interval is an hour) and times ``await
mux.checkpoint()`` directly: the first (complete) one after the fill; then
``--checkpoints`` more, each after one interval's worth of new
conversations at ``--rate`` (10,000 at the defaults), as a periodic
checkpoint sees them in the runs above; one more of those under
:mod:`cProfile`, for the table of where the time goes; then
``--checkpoints`` after one interval's worth of updates to remembered
conversations each; ``--checkpoints`` after one interval's worth of
events in which each new conversation comes in every snapshot of its
life (the template conversation's 3: closer to real traffic, where a
conversation is seen several times an interval, than the worst case);
and one after as many new conversations as the fill, each in every
snapshot of the template's conversation (several state digests per
key). Each gets its wall time, this process's CPU (every
thread) and the event loop's thread's alone, the store's ``save`` (wall),
the garbage collector's time during it, the keys written and forgotten,
and the bytes written (the SQLite file's ``write()`` calls from
``/proc/self/io``; what redis-server received, from ``INFO``).

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import cProfile
import dataclasses
import functools
import gc
import inspect
import itertools
import os
import platform
import pstats
import resource
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import redis
import redis.asyncio as aioredis

from benchmarks.bench_pool import (
    CLIENT_ID,
    CLIENT_SECRET,
    GRACE_S,
    SETUP_TIMEOUT_S,
    BenchError,
    Job,
    Result,
    _blast,
    _Child,
    _child_setup,
    _median,
    _progress,
    _run_job,
    _start_emulator,
    _stop_blast,
    add_blast_arguments,
    run_benchmark,
)
from benchmarks.bench_sinks import _redis_server, _server_version
from benchmarks.bench_streams import (
    CONVERSATION_PREFIX,
    STREAM_ID,
    SnapshotBlastEmulator,
    Template,
    _emulator_process,
    _measure_mux,
    _queue_of,
    check_mux,
    snapshot_history,
)
from genesys_mux import Gap, Multiplexer, StreamEvent
from genesys_mux.core.streams import Stream
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue
from genesys_mux.state import StateStore, open_store

#: Scenario key -> label in the table, in the order they run and are shown.
SCENARIOS: dict[str, str] = {
    "raw-msgspec": "raw socket + `msgspec.json.decode` (baseline)",
    "none": "`Multiplexer.stream()`, no state store (`state=None`)",
    "sqlite": "`Multiplexer.stream()`, SQLite store (temporary file)",
    "redis": "`Multiplexer.stream()`, Redis store (local redis-server)",
}
BASELINE = "raw-msgspec"
#: The multiplexer run the stores are compared with.
NO_STORE = "none"
STORES = ("sqlite", "redis")
#: The Multiplexer's default buffer_threshold.
BUFFER = 500
#: When timing checkpoints directly, the periodic ones must not run meanwhile.
NO_PERIODIC_S = 3600.0
#: Events per second assumed between directly timed checkpoints when unpaced.
UNPACED_BETWEEN = 10_000

#: Blast ids by namespace: 0 is the measured blast's (bench_streams' prefix),
#: 1 the memory fill's, 2 and up one each for the new conversations before
#: each directly timed checkpoint. Each blast counts its ids from 0, so blasts
#: that must be distinct conversations need namespaces of their own.
MEASURED, FILL, FIRST_NUDGE = 0, 1, 2
#: The blast's ``size`` field carries the namespace and which snapshot of the
#: conversation's life to send: ``namespace + NAMESPACES * state``.
NAMESPACES = 256


def id_prefix(namespace: int) -> str:
    """The conversation id prefix (before a 12-digit counter) of a namespace."""
    prefix = f"c0ffee{namespace:02x}-0000-4000-8000-"
    assert len(prefix) == len(CONVERSATION_PREFIX)
    return prefix


def blast_size(namespace: int, state: int = 0) -> int:
    """The ``size`` a blast asks for to get ``namespace``'s ids in snapshot ``state``."""
    if not 0 <= namespace < NAMESPACES:
        raise BenchError(f"out of conversation id namespaces ({namespace})")
    return namespace + NAMESPACES * state


# --------------------------------------------------------------------------
# The emulator: bench_streams' snapshot blast, with distinct ids per blast
# --------------------------------------------------------------------------


class CheckpointBlastEmulator(SnapshotBlastEmulator):
    """bench_streams' snapshot blast, where the blast's ``size`` picks ids and state.

    ``size`` is ``namespace + 256 * state``: the ids are
    :func:`id_prefix` of the namespace and a counter (namespace 0 is
    bench_streams' own), the body is snapshot ``state`` of ``history``
    (0: the template; then the conversation's later states).
    """

    def __init__(self, settings: EmulatorSettings, history: Sequence[Template]) -> None:
        super().__init__(settings, history[0])
        self.history = tuple(history)

    def blast_body(self, topic: str, size: int) -> tuple[bytes, bytes, str]:
        """Snapshot ``size // 256`` moved to the blasted queue, ids of namespace ``size % 256``."""
        namespace, state = size % NAMESPACES, size // NAMESPACES
        template = self.history[min(state, len(self.history) - 1)]
        head, tail = template.parts(_queue_of(topic) or template.queue_id)
        prefix = id_prefix(namespace)
        return head + prefix.encode(), tail, prefix


def checkpoint_emulator(max_bytes: int, settings: EmulatorSettings) -> Emulator:
    """A :class:`CheckpointBlastEmulator` on ``snapshot_history(max_bytes)``."""
    return CheckpointBlastEmulator(settings, snapshot_history(max_bytes))


# --------------------------------------------------------------------------
# The state stores
# --------------------------------------------------------------------------


class TimedStore:
    """A state store that passes everything to ``inner`` and times each ``save``.

    Handed to ``Multiplexer(state=...)`` like any store, so the benchmark
    sees when checkpoints are written and how long the store took, without
    reaching into the multiplexer.
    """

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.name = inner.name
        #: (perf_counter at the start, seconds) of every save.
        self.saves: list[tuple[float, float]] = []
        #: (remembered keys written, keys forgotten) by every save.
        self.sizes: list[tuple[int, int]] = []

    async def open(self) -> None:
        """Open the inner store."""
        await self.inner.open()

    async def load(self, only: Collection[str] | None = None) -> Mapping[str, Any]:
        """The inner store's checkpoints."""
        return await self.inner.load(only)

    async def claim(self, stream_id: str, fence: int) -> None:
        """Claim through the inner store."""
        await self.inner.claim(stream_id, fence)

    async def save(self, checkpoints: Sequence[Any]) -> None:
        """Save through the inner store (it encodes, then writes), timed."""
        started = time.perf_counter()
        await self.inner.save(checkpoints)
        self.saves.append((started, time.perf_counter() - started))
        self.sizes.append(
            (sum(len(c.memory) for c in checkpoints), sum(len(c.forgotten) for c in checkpoints))
        )

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Remove through the inner store."""
        await self.inner.remove(stream_ids)

    async def close(self) -> None:
        """Close the inner store."""
        await self.inner.close()

    async def move_aside(self) -> str:
        """Move the inner store's state aside."""
        return await self.inner.move_aside()

    def __getattr__(self, name: str) -> Any:
        # Anything a later StateStore grows goes to the inner store untimed.
        return getattr(self.inner, name)

    def saves_between(self, start: float, end: float) -> list[float]:
        """Seconds of each save that started in [start, end] (perf_counter)."""
        return [seconds for at, seconds in self.saves if start <= at <= end]


SQLITE_FILE = "state.sqlite3"


@dataclass(frozen=True, slots=True)
class Setup:
    """What a measurement process needs besides its :class:`Job`."""

    redis_url: str
    redis_pid: int
    remember: int
    interval_s: float
    #: The measured events update the conversations the fill remembered
    #: (the fill is the measured blast's ids, one snapshot earlier).
    update: bool = False
    #: Snapshots of the conversation's life (the direct timing's last row: every one).
    states: int = 1
    checkpoints: int = 5
    #: New conversations between two directly timed checkpoints.
    between: int = 1


def _open_timed_store(store: str, setup: Setup, directory: Path) -> TimedStore:
    setting = setup.redis_url if store == "redis" else str(directory / SQLITE_FILE)
    return TimedStore(open_store(setting))


def _wchar() -> int:
    """Bytes this process has handed to ``write()`` so far (a read of /proc: no waiting)."""
    with open("/proc/self/io", encoding="ascii") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return int(fields["wchar"])


class WrittenBytes:
    """Bytes a store has written so far, counted without knowing its layout.

    SQLite: what this process has handed to ``write()`` (``wchar`` in
    ``/proc/self/io``; the WAL's pages, every thread). Redis: what this
    benchmark's own redis-server has read from its clients
    (``total_net_input_bytes``; the commands, keys and values).
    """

    def __init__(self, store: str, setup: Setup) -> None:
        self.store = store
        self._client = aioredis.Redis.from_url(setup.redis_url) if store == "redis" else None

    async def now(self) -> int:
        """The counter's current value."""
        if self._client is not None:
            info = await self._client.info("stats")
            return int(info["total_net_input_bytes"])
        return _wchar()

    async def close(self) -> None:
        """Close the Redis connection, if any."""
        if self._client is not None:
            await self._client.aclose()


# --------------------------------------------------------------------------
# Filling the memory, and measuring the multiplexer
# --------------------------------------------------------------------------


async def _consume(items: AsyncIterator[StreamEvent | Gap], count: int, timeout_s: float) -> int:
    n = 0
    async with asyncio.timeout(timeout_s):
        async for item in items:
            if not isinstance(item, StreamEvent):
                raise BenchError(f"the stream reported a gap: {item}")
            n += 1
            if n >= count:
                break
    return n


async def _fill(
    session: aiohttp.ClientSession,
    job: Job,
    items: AsyncIterator[StreamEvent | Gap],
    count: int,
    *,
    namespace: int = FILL,
    state: int = 0,
) -> int:
    """Blast ``count`` conversations of ``namespace`` in snapshot ``state``, unpaced; take them."""
    blast = dataclasses.replace(job, count=count, rate=0.0, size=blast_size(namespace, state))
    await _blast(session, blast)
    try:
        return await _consume(items, count, job.timeout_s)
    except TimeoutError:
        raise BenchError(f"the memory fill did not arrive within {job.timeout_s:g} s") from None


async def _measure_store(job: Job, setup: Setup, directory: Path) -> dict[str, Any]:
    """One multiplexer measurement: fill the memory, then the measured blast."""
    store = None if job.scenario == NO_STORE else _open_timed_store(job.scenario, setup, directory)
    options: dict[str, Any] = {}
    if store is not None:
        options = {"state": store, "checkpoint_interval_s": setup.interval_s}
    filled_at = 0.0

    async def warm_up(
        session: aiohttp.ClientSession, mux: Multiplexer, items: AsyncIterator[StreamEvent | Gap]
    ) -> int:
        nonlocal filled_at
        namespace = MEASURED if setup.update else FILL
        n = await _fill(session, job, items, setup.remember, namespace=namespace)
        filled_at = time.perf_counter()
        return n

    measure = functools.partial(
        _measure_mux,
        buffer=BUFFER,
        latencies=array.array("d", bytes(8 * job.count)),
        options=options,
        warm_up=warm_up,
        server_pid=setup.redis_pid if job.scenario == "redis" else None,
    )
    result = await _run_job(job, measure)
    payload = dataclasses.asdict(result) | {"sample_frame": ""}
    if store is not None:
        # The stretch starts a ledger request after the fill.
        saves = store.saves_between(filled_at, filled_at + result.wall_s + 0.05)
        payload["checkpoints"] = len(saves)
        payload["save_ms"] = [s * 1000 for s in saves]
    return payload


# --------------------------------------------------------------------------
# Timing checkpoints directly
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Collections:
    """Garbage collections seen in a block: seconds spent, and how many were full ones."""

    seconds: float = 0.0
    full: int = 0
    started: float = 0.0


@contextlib.contextmanager
def _collections() -> Iterator[_Collections]:
    """The garbage collector's runs in the block (any thread)."""
    seen = _Collections()

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.started = time.perf_counter()
            return
        seen.seconds += time.perf_counter() - seen.started
        seen.full += info["generation"] == 2

    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class Timed:
    """One directly timed checkpoint."""

    wall_ms: float
    #: This process's CPU, every thread (SQLite writes from a worker thread).
    cpu_ms: float
    #: The event loop's thread alone: what the events wait behind.
    loop_ms: float
    save_ms: float
    gc_ms: float
    #: Full (generation 2) collections among them.
    gc_full: int
    written: int
    #: Remembered keys the checkpoint wrote, and keys it had the store forget.
    keys: int
    forgotten: int


@dataclass(slots=True)
class _Timing:
    """The state of one timing process: the multiplexer, its stream and store."""

    session: aiohttp.ClientSession
    job: Job
    mux: Multiplexer
    items: AsyncIterator[StreamEvent | Gap]
    store: TimedStore
    written: WrittenBytes
    nudges: Iterator[int] = field(default_factory=lambda: itertools.count(FIRST_NUDGE))
    #: Namespaces nudged so far, oldest first.
    nudged: list[int] = field(default_factory=list)
    consumed: int = 0
    between: int = 1

    async def fill(self, count: int, state: int = 0, namespace: int = FILL) -> None:
        """Blast ``count`` conversations of ``namespace`` in snapshot ``state``; take them."""
        self.consumed += await _fill(
            self.session, self.job, self.items, count, namespace=namespace, state=state
        )

    async def nudge(self, count: int) -> None:
        """``count`` new conversations through the stream (one interval's worth)."""
        namespace = next(self.nudges)
        self.nudged.append(namespace)
        await self.fill(count, namespace=namespace)

    async def checkpoint(self, profiler: cProfile.Profile | None = None) -> dict[str, Any]:
        """``await mux.checkpoint()``, timed (a :class:`Timed`); it must write the one stream."""
        saves = len(self.store.saves)
        written = await self.written.now()
        with _collections() as collected:
            cpu, loop, started = _cpu_s(), time.thread_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            try:
                count = await self.mux.checkpoint()
            finally:
                if profiler is not None:
                    profiler.disable()
            wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
            loop = time.thread_time() - loop
        written = await self.written.now() - written
        if count != 1 or len(self.store.saves) != saves + 1:
            raise BenchError(f"the checkpoint wrote {count} streams, not the one")
        save_ms = self.store.saves[-1][1] * 1000
        keys, forgotten = self.store.sizes[-1]
        timed = Timed(
            wall * 1000,
            cpu * 1000,
            loop * 1000,
            save_ms,
            collected.seconds * 1000,
            collected.full,
            written,
            keys,
            forgotten,
        )
        return dataclasses.asdict(timed)


def _top_functions(profiler: cProfile.Profile, top: int = 8) -> list[tuple[str, int, float, float]]:
    """(function, calls, own ms, cumulative ms) with the most own time, this module's left out."""
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    ours = {__file__, getattr(sys.modules.get("__main__"), "__file__", None)}
    rows = sorted(
        ((k, v) for k, v in entries.items() if k[0] not in ours),
        key=lambda kv: kv[1][2],
        reverse=True,
    )[:top]
    return [
        (_function_name(where), calls, own * 1000, cumulative * 1000)
        for where, (_, calls, own, cumulative, _) in rows
    ]


def _function_name(where: tuple[str, int, str]) -> str:
    filename, line, name = where
    if filename == "~":
        return f"`{name}`"  # a built-in
    path = Path(filename)
    return f"{path.parent.name}/{path.name}:{line} `{name}`"


#: Conversations a stream remembers (``Stream``'s default; StreamConfig has no setting).
MEMORY: int = inspect.signature(Stream).parameters["memory"].default


async def _time_checkpoints(job: Job, setup: Setup, directory: Path) -> dict[str, Any]:
    """Fill a stream's memory, then time ``mux.checkpoint()`` after each kind of interval.

    The rows, in order: the first (complete) checkpoint after the fill;
    ``checkpoints`` after one interval of new conversations each (the worst
    case); ``checkpoints`` after one interval of updates to remembered
    conversations each (no key forgotten); ``checkpoints`` after one
    interval of new conversations in all their ``states`` snapshots each
    (realistic traffic); one after as many new conversations as the fill,
    each in ``states`` snapshots. One more after new conversations runs
    under :mod:`cProfile`, for the profile alone.
    """
    store_name = job.scenario.removeprefix("timing-")
    store = _open_timed_store(store_name, setup, directory)
    written = WrittenBytes(store_name, setup)
    dlq = MemoryDeadLetterQueue()
    rows: dict[str, list[dict[str, Any]]] = {}
    profile: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=SETUP_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        Multiplexer(
            base_url=job.base_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            dlq=dlq,
            state=store,
            checkpoint_interval_s=NO_PERIODIC_S,
        ) as mux,
    ):
        queue_id = _queue_of(job.topic)
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            rejected = await mux.add_stream({"id": STREAM_ID, "filter": {"queueId": queue_id}})
        if rejected or not mux.live:
            raise BenchError(f"the multiplexer is not live on the topic: rejected={rejected}")
        items = mux.stream(STREAM_ID)
        timing = _Timing(session, job, mux, items, store, written, between=setup.between)
        try:
            await timing.fill(setup.remember)
            rows["first"] = [await timing.checkpoint()]
            rows["new"] = []
            for _ in range(setup.checkpoints):
                await timing.nudge(setup.between)
                rows["new"].append(await timing.checkpoint())
            await timing.nudge(setup.between)
            profiler = cProfile.Profile()
            profile = await timing.checkpoint(profiler)
            profile["functions"] = _top_functions(profiler)
            # The nudges' conversations still remembered, most recent first.
            remembered = timing.nudged[::-1][: MEMORY // setup.between]
            rows["updates"] = []
            for namespace in remembered[: setup.checkpoints]:
                await timing.fill(setup.between, state=1, namespace=namespace)
                rows["updates"].append(await timing.checkpoint())
            # Closer to real traffic: a conversation is seen several times an
            # interval. Each new conversation in every snapshot of its life,
            # as many events as one interval's.
            rows["snapshots"] = []
            per = max(1, setup.between // setup.states)
            for _ in range(setup.checkpoints):
                namespace = next(timing.nudges)
                for state in range(setup.states):
                    await timing.fill(per, state, namespace)
                rows["snapshots"].append(await timing.checkpoint())
            if setup.states > 1:
                # As many new conversations as the fill, each in every state.
                namespace = next(timing.nudges)
                for state in range(setup.states):
                    await timing.fill(setup.remember, state, namespace)
                rows["states"] = [await timing.checkpoint()]
        finally:
            with contextlib.suppress(Exception):
                await timing.items.aclose()  # type: ignore[attr-defined]
            await _stop_blast(session, job.base_url)
            await written.close()
        check_mux(mux, dlq, timing.consumed)
    return {"rows": rows, "profile": profile}


# --------------------------------------------------------------------------
# One measurement, in a process of its own
# --------------------------------------------------------------------------


async def _run(job: Job, setup: Setup, directory: Path) -> dict[str, Any]:
    if job.scenario == BASELINE:
        return dataclasses.asdict(await _run_job(job)) | {"sample_frame": ""}
    if job.scenario.startswith("timing-"):
        return await _time_checkpoints(job, setup, directory)
    return await _measure_store(job, setup, directory)


def _job_process(job: Job, setup: Setup, conn: Connection) -> None:
    _child_setup(job.cpus)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as directory:
            answer: tuple[str, Any] = ("ok", asyncio.run(_run(job, setup, Path(directory))))
    except Exception as exc:
        answer = ("error", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()


async def _measure(job: Job, setup: Setup) -> dict[str, Any]:
    child = _Child(_job_process, job, setup, name=f"measure-{job.scenario}")
    # Every blast (fills included) has its own deadline of job.timeout_s.
    blasts = 2 + (2 + setup.states) * setup.checkpoints + setup.states
    deadline = job.timeout_s * blasts + 4 * SETUP_TIMEOUT_S + GRACE_S
    answered = False
    try:
        status, payload = await child.answer(deadline)
        answered = True
    finally:
        await child.stop(terminate=not answered)
    if status != "ok":
        raise BenchError(f"{job.scenario}: {payload}")
    return dict(payload)


def _flush_redis(url: str) -> None:
    """Start every Redis measurement from an empty server (the benchmark's own)."""
    client = redis.Redis.from_url(url, socket_timeout=SETUP_TIMEOUT_S)
    try:
        client.flushall()
    finally:
        client.close()


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One scenario's result in one repetition."""

    result: Result
    checkpoints: int | None = None
    save_ms: list[float] = field(default_factory=list)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _throughput_table(
    args: argparse.Namespace, template: Template, results: dict[str, list[Run]]
) -> list[str]:
    frame_bytes = max(r.result.frame_bytes for rs in results.values() for r in rs)
    reference = _median([r.result.cpu_us for r in results[NO_STORE]])
    if args.update:
        events = "each a remembered conversation's next snapshot"
        fill = f"the first snapshots of {args.remember:,} conversations, those updated included"
    else:
        events = "each a new conversation's snapshot"
        fill = f"{args.remember:,} other conversations"
    lines = [
        f"{args.count:,} events per measurement, {events} "
        f"(`eventBody` {len(template.body):,} B, {frame_bytes:,} B per frame on the wire) "
        f"on one queue conversation topic, blast "
        f"{'unpaced' if args.rate <= 0 else f'at {args.rate:,.0f} events/s'}. Before each "
        f"multiplexer measurement the stream's memory was filled with {fill} "
        f"(unpaced, not measured); `checkpoint_interval_s` {args.interval:g}; "
        f"median of {args.repeat} interleaved repetitions"
        f"{', emulator and client pinned to separate cores' if args.pin else ''}.",
        "",
        "| scenario | events | events/s | client CPU µs/event | checkpoint cost µs/event "
        "(Δ to no store) | client busy | emulator busy | redis-server CPU µs/event "
        "| checkpoints in the stretch | peak RSS Δ | send→consumer p50 | p99 | p99.9 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, label in SCENARIOS.items():
        runs = results[key]
        rs = [r.result for r in runs]
        cpu = _median([r.cpu_us for r in rs])
        emulator = [b for r in rs if (b := r.emulator_busy) is not None]
        server = [r.server_cpu_s / r.frames * 1e6 for r in rs if r.server_cpu_s is not None]
        checkpoints = [r.checkpoints for r in runs if r.checkpoints is not None]
        cells = [
            label,
            f"{rs[0].frames:,}",
            f"{_median([r.fps for r in rs]):,.0f}",
            f"{cpu:.2f}",
            f"{cpu - reference:+.2f}" if key in STORES else "n/a",
            f"{_median([r.busy for r in rs]) * 100:.0f} %",
            f"{_median(emulator) * 100:.0f} %" if emulator else "n/a",
            f"{_median(server):.2f}" if server else "n/a",
            " to ".join(sorted({str(c) for c in checkpoints})) if checkpoints else "n/a",
            f"{_median([r.rss_delta_kib / 1024 for r in rs]):.1f} MiB",
            _ms(_median([r.latency_p50_ms or 0.0 for r in rs])),
            _ms(_median([r.latency_p99_ms or 0.0 for r in rs])),
            _ms(_median([r.latency_p999_ms or 0.0 for r in rs])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    leftover = sum(r.result.leftover_tasks for rs in results.values() for r in rs)
    if leftover:
        lines += ["", f"Warning: {leftover} asyncio tasks were left over after measurements."]
    return lines


def _timing_table(
    args: argparse.Namespace,
    results: dict[str, list[Run]],
    timings: dict[str, dict[str, Any]],
    states: int,
) -> list[str]:
    rate = args.rate if args.rate > 0 else _median([r.result.fps for r in results[NO_STORE]])
    between = _between(args)
    per = max(1, between // states)
    labels = {
        "first": "the first after the fill (complete)",
        "new": f"after {between:,} new conversations (median of {{n}})",
        "updates": f"after {between:,} updates of remembered conversations (median of {{n}})",
        "snapshots": f"**realistic traffic**: after {between:,} events, {per:,} new conversations "
        f"each in its {states} snapshots (median of {{n}})",
        "states": f"after {args.remember:,} new conversations, each in every snapshot",
    }
    lines = [
        f"`await mux.checkpoint()` timed directly in a process of its own per store: one "
        f"stream, its memory filled with {args.remember:,} conversations, periodic checkpoints "
        f"off, after each kind of interval in turn. *Keys*: remembered keys written / "
        f"forgotten. *CPU*: the process, every thread; *loop*: the event loop's thread alone. "
        f"*Written*: bytes the SQLite store handed to `write()` (its WAL pages), or that "
        f"redis-server received. *Amortised*: CPU (process / loop) at one checkpoint every "
        f"{args.interval:g} s, spread over {rate:,.0f} events/s.",
        "",
        "| store | checkpoint | keys | written | wall (slowest) | CPU | loop "
        "| `save()` wall | GC (full) | amortised µs/event |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for store in STORES:
        for kind, timed in timings[store]["rows"].items():
            if not timed:
                continue
            label = labels[kind].format(n=len(timed))
            amortised = kind in ("new", "updates", "snapshots")
            events = args.interval * rate if kind != "snapshots" else per * states
            lines.append(_timing_row(store, label, timed, events, amortised))
    for store in STORES:
        profile = timings[store]["profile"]
        lines += [
            "",
            f"{store}: one more checkpoint after {between:,} new conversations under "
            f"`cProfile` ({profile['keys']:,} keys written, {profile['forgotten']:,} "
            f"forgotten): {profile['wall_ms']:.1f} ms wall, {profile['cpu_ms']:.1f} ms CPU, "
            f"{profile['loop_ms']:.1f} ms in the loop's thread. The functions with the most "
            "own time in the loop's thread (a worker thread's time shows as the loop's wait "
            "in `epoll`):",
            "",
            "| function | calls | own time | cumulative |",
            "|---|--:|--:|--:|",
            *(
                f"| {name} | {calls:,} | {own:.2f} ms | {cumulative:.2f} ms |"
                for name, calls, own, cumulative in profile["functions"]
            ),
        ]
    return lines


def _between(args: argparse.Namespace) -> int:
    """New conversations between directly timed checkpoints: one interval at ``--rate``."""
    rate = float(args.rate) or UNPACED_BETWEEN
    return max(1, round(rate * float(args.interval)))


def _timing_row(
    store: str, label: str, timed: list[dict[str, Any]], events: float, amortised: bool
) -> str:
    def median(key: str) -> float:
        return _median([t[key] for t in timed])

    full = sum(t["gc_full"] for t in timed)
    slowest = f" ({max(t['wall_ms'] for t in timed):.1f})" if len(timed) > 1 else ""
    per_event = "n/a"
    if amortised:
        cpu, loop = (median(key) * 1000 / events for key in ("cpu_ms", "loop_ms"))
        per_event = f"{cpu:.2f} / {loop:.2f}"
    cells = [
        store,
        label,
        f"{median('keys'):,.0f} / {median('forgotten'):,.0f}",
        f"{median('written'):,.0f} B",
        f"{median('wall_ms'):.1f} ms{slowest}",
        _ms(median("cpu_ms")),
        _ms(median("loop_ms")),
        _ms(median("save_ms")),
        f"{median('gc_ms'):.1f} ms ({full})",
        per_event,
    ]
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    args.pin = args.pin and len(cpus) >= 2
    emulator_cpus = frozenset(cpus[-1:]) if args.pin else None
    client_cpus = frozenset(cpus[:1]) if args.pin else None
    with _redis_server() as (url, redis_process):
        version = await _server_version(url)
        _progress(
            f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
            f"msgspec {msgspec.__version__}, redis-py {redis.__version__}, "
            f"redis-server {version}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
            + (f", emulator on CPU {cpus[-1]}, clients on CPU {cpus[0]}" if args.pin else "")
        )
        make = functools.partial(checkpoint_emulator, args.max_body)
        emulator, stopper, base_url = await _start_emulator(
            emulator_cpus, functools.partial(_emulator_process, make)
        )
        setup = Setup(url, redis_process.pid, args.remember, args.interval, update=args.update)

        def job(scenario: str, rate: float) -> Job:
            return Job(
                scenario=scenario,
                base_url=base_url,
                topic=f"v2.routing.queues.{uuid.uuid4()}.conversations",
                count=args.count,
                # --update: the fill sends these conversations' first snapshot.
                size=blast_size(MEASURED, 1 if args.update else 0),
                rate=rate,
                timeout_s=args.timeout,
                emulator_pid=emulator.process.pid or 0,
                cpus=client_cpus,
            )

        results: dict[str, list[Run]] = {key: [] for key in SCENARIOS}
        timings: dict[str, dict[str, Any]] = {}
        try:
            for repetition in range(1, args.repeat + 1):
                for scenario in SCENARIOS:
                    if scenario == "redis":
                        _flush_redis(url)
                    payload = await _measure(job(scenario, args.rate), setup)
                    run = Run(
                        checkpoints=payload.pop("checkpoints", None),
                        save_ms=payload.pop("save_ms", []),
                        result=Result(**payload),
                    )
                    results[scenario].append(run)
                    _progress(_run_line(repetition, args.repeat, scenario, run))
            # Only now: simulating the contact centre takes this process to
            # ~100 MB, and a spawned measurement starts with its parent's peak
            # RSS as its own ru_maxrss (see bench_streams).
            history = snapshot_history(args.max_body)
            timing_setup = dataclasses.replace(
                setup, states=len(history), checkpoints=args.checkpoints, between=_between(args)
            )
            for store in STORES:
                if store == "redis":
                    _flush_redis(url)
                timings[store] = await _measure(job(f"timing-{store}", 0.0), timing_setup)
                for kind, timed in timings[store]["rows"].items():
                    _progress(
                        f"checkpoint {store:<6} {kind:<7} keys "
                        + " ".join(f"{t['keys']:,}/{t['forgotten']:,}" for t in timed)
                        + ": wall "
                        + " ".join(f"{t['wall_ms']:.1f}" for t in timed)
                        + " ms, CPU "
                        + " ".join(f"{t['cpu_ms']:.1f}" for t in timed)
                        + " ms, loop "
                        + " ".join(f"{t['loop_ms']:.1f}" for t in timed)
                        + " ms, GC "
                        + " ".join(f"{t['gc_ms']:.1f}" for t in timed)
                        + " ms, written "
                        + " ".join(f"{t['written']:,}" for t in timed)
                        + " B"
                    )
        finally:
            stopper.close()
            await emulator.stop()
    lines = [
        *_throughput_table(args, history[1 if args.update else 0], results),
        "",
        *_timing_table(args, results, timings, len(history)),
        "",
        f"Every snapshot: the {len(history)} states the template's conversation goes through "
        f"in the simulation ({', '.join(f'{len(t.body):,} B' for t in history)}); updates "
        f"send a remembered conversation's second.",
    ]
    print("\n".join(lines))
    return 0


def _run_line(repetition: int, repeat: int, scenario: str, run: Run) -> str:
    r = run.result
    line = (
        f"[{repetition}/{repeat}] {scenario:<12} {r.fps:>8,.0f} events/s"
        f"  client {r.cpu_us:6.2f} µs/event, busy {r.busy:4.0%}"
        f"  emulator busy {r.emulator_busy or 0:4.0%}"
        f"  RSS +{r.rss_delta_kib / 1024:.1f} MiB"
        f"  p50 {r.latency_p50_ms or 0:.2f} ms  p99 {r.latency_p99_ms or 0:.2f} ms"
        f"  p99.9 {r.latency_p999_ms or 0:.2f} ms"
    )
    if r.server_cpu_s is not None:
        line += f"  redis {r.server_cpu_s / r.frames * 1e6:.2f} µs/event"
    if run.checkpoints is not None:
        line += (
            f"  {run.checkpoints} checkpoints (save() wall "
            + ", ".join(f"{ms:.1f}" for ms in run.save_ms)
            + " ms)"
        )
    if r.leftover_tasks:
        line += f"  {r.leftover_tasks} TASKS LEFT OVER"
    return line


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_checkpoint",
        description="The cost of periodic checkpoints per event, with each state store.",
    )
    parser.add_argument("--count", type=int, default=20_000, help="events per measurement")
    parser.add_argument(
        "--remember",
        type=int,
        default=50_000,
        help="conversations blasted before measuring, to fill the memory (it keeps 50,000)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="checkpoint_interval_s (default 1.0)"
    )
    parser.add_argument(
        "--checkpoints",
        type=int,
        default=5,
        help="checkpoints timed directly per store, each after one interval of new events",
    )
    parser.add_argument(
        "--max-body",
        type=int,
        default=2048,
        help="the template is the largest queue snapshot of at most this many bytes",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="the measured events update conversations the fill remembered, instead of being "
        "new ones (needs --count <= --remember)",
    )
    add_blast_arguments(parser)
    parser.set_defaults(rate=10_000.0)
    args = parser.parse_args(argv)
    if args.update and not args.count <= args.remember <= MEMORY:
        parser.error(f"--update needs --count <= --remember <= {MEMORY:,}")
    if (
        args.count < 2
        or args.remember < 1
        or args.repeat < 1
        or args.rate < 0
        or args.timeout <= 0
        or args.interval <= 0
        or args.checkpoints < 1
    ):
        parser.error(
            "need --count >= 2, --remember >= 1, --repeat >= 1, --rate >= 0, --timeout > 0, "
            "--interval > 0, --checkpoints >= 1"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    return run_benchmark(_main, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
