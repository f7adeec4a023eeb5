"""End-to-end throughput of :class:`~genesys_mux.Multiplexer` against raw-socket baselines.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_streams [--count N] [--repeat R] [--rate FPS]

One run starts one emulator in a process of its own and, for each
measurement, has it blast ``N`` distinct conversation snapshots on a queue
conversation topic of its own (``v2.routing.queues.<fresh uuid>.conversations``).
The emulator's built-in blast body is a stub (one customer call and a long
padding string), which costs a parser next to nothing, so this benchmark's
emulator overrides the blast: every frame is a real conversation snapshot
from the emulator's simulated contact centre (:class:`ContactCentre`, the
largest queue snapshot of two simulated minutes that is at most
``--max-body`` bytes), with the queue id set to the measurement's queue and
the conversation id replaced by a distinct, fixed-width one per frame. The
frames are fanned out, queued and written exactly as the built-in blast
writes its own, so the ledger, pacing and back-pressure are the same.

Clients, each in a fresh process:

* ``raw socket, no decode``: aiohttp ``ws.receive()`` and a prefix check
  (bench_pool's client). Not usable; it isolates aiohttp's receive path.
* ``raw socket + msgspec.json.decode``: the naive client, decoding each
  whole frame into Python objects (bench_pool's client). **The baseline.**
* ``ChannelPool.frames()``: the connection layer under the multiplexer
  (bench_pool's client), to tell the pool's share from the streams' share.
* ``Multiplexer.stream()``: ``Multiplexer(base_url=...)``, one stream with
  ``filter={"queueId": <the queue>}`` and the multiplexer's default buffer
  (``--buffer``), consumed with ``async for item in mux.stream(id)``.
  Every item must be a ``StreamEvent``; the stream's counters must show no
  duplicate, stale, filtered, overflowed or dead-lettered event.

Every measurement checks that exactly ``N`` frames were sent and received,
in send order (bench_pool's ledger check). Columns are bench_pool's, plus
the multiplexer's own ``StreamEvent.latency_s`` (from the moment the pool
read the frame off the socket to the moment the stream handed it over).

After the socket runs, the stream pipeline is timed in-process, without a
socket, on the template snapshot: ``event_facts`` (what the dispatcher
computes once per notification), ``Stream.offer`` and ``Stream.take``,
against ``msgspec.json.decode`` of the same body, plus the memory a stream
keeps per remembered conversation.

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import functools
import gc
import os
import platform
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import msgspec

from benchmarks.bench_pool import (
    CLIENT_ID,
    CLIENT_SECRET,
    SAMPLE_MASK,
    SETUP_TIMEOUT_S,
    BenchError,
    Job,
    Result,
    _blast,
    _child_answer,
    _child_setup,
    _Consumed,
    _ledger_mark,
    _median,
    _percentile,
    _progress,
    _readable,
    _run_job,
    _start_emulator,
    _stop_blast,
    _Usage,
    _usage,
    add_blast_arguments,
    run_benchmark,
)
from genesys_mux import Gap, Multiplexer, StreamEvent
from genesys_mux.core.snapshot import _CONVERSATION_DECODER, EventFacts, event_facts
from genesys_mux.core.streams import DeadLetter, Stream
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.emulator.org import ContactCentre
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue

#: Scenario key -> label in the table, in the order they run and are shown.
SCENARIOS: dict[str, str] = {
    "raw-nodecode": "raw socket, no decode (reference)",
    "raw-msgspec": "raw socket + `msgspec.json.decode` (baseline)",
    "pool": "`ChannelPool.frames()` (the layer below)",
    "mux": "`Multiplexer.stream()`",
}
BASELINE = "raw-msgspec"
STREAM_ID = "bench"

#: Fixed, so that every run (and the emulator process) builds the same template.
TEMPLATE_SEED = 1
TEMPLATE_EPOCH = 1_700_000_000.0
TEMPLATE_SIM_S = 120.0
#: Blast frame ``i`` is about conversation ``CONVERSATION_PREFIX + "%012d" % i``,
#: as long as a real conversation id, so every frame has the same size.
CONVERSATION_PREFIX = "c0ffee00-0000-4000-8000-"


# --------------------------------------------------------------------------
# The template snapshot, and an emulator that blasts it
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A real conversation snapshot, and the ids in it that each frame replaces."""

    body: bytes
    conversation_id: str
    queue_id: str
    #: The same change as the platform's media topic carries it, and that media.
    media_body: bytes = b""
    media: str = ""

    def media_twin(self) -> Template:
        """The media-shaped body of the same change, as a template of its own."""
        return Template(self.media_body, self.conversation_id, self.queue_id)

    def parts(self, queue_id: str) -> tuple[bytes, bytes]:
        """The body before and after the conversation id, moved to ``queue_id``."""
        body = self.body.replace(self.queue_id.encode(), queue_id.encode())
        head, sep, tail = body.partition(self.conversation_id.encode())
        if not sep or self.conversation_id.encode() in tail:
            raise BenchError("the template must name its conversation exactly once")
        return head, tail

    def blast_parts(self, topic: str) -> tuple[bytes, bytes, str]:
        """What :meth:`Emulator.blast_body` returns for a blast of this snapshot on ``topic``."""
        head, tail = self.parts(_queue_of(topic) or self.queue_id)
        return head + CONVERSATION_PREFIX.encode(), tail, CONVERSATION_PREFIX

    def body_for(self, queue_id: str, index: int) -> bytes:
        """Frame ``index``'s body, as the blast sends it."""
        head, tail = self.parts(queue_id)
        return head + f"{CONVERSATION_PREFIX}{index:012d}".encode() + tail


def _queue_of(topic: str) -> str | None:
    parts = topic.split(".")
    if len(parts) >= 5 and parts[:3] == ["v2", "routing", "queues"]:
        return parts[3]
    return None


def add_body_sizes_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-body``, for a benchmark run at several body sizes (see :func:`snapshot_template`)."""
    parser.add_argument(
        "--max-body",
        type=int,
        nargs="+",
        default=[2300, 8000],
        help="body sizes: each the largest queue snapshot of at most this many bytes",
    )


def add_names_argument(parser: argparse.ArgumentParser) -> None:
    """``--names``: the templates' names as the emulator draws them, or folded into ASCII."""
    parser.add_argument(
        "--names",
        choices=NAMES,
        default="world",
        help="world: the snapshots' names as the emulator draws them (some beyond ASCII); "
        "ascii: every byte beyond ASCII replaced by an 'x' (the same sizes and layout)",
    )


#: ``--names``' choices.
NAMES = ("world", "ascii")


def _in_ascii(body: bytes) -> bytes:
    """``body`` with every byte beyond ASCII an ``x``: such bytes are only ever inside strings."""
    return body.translate(_FOLD)


_FOLD = bytes(b if b < 0x80 else ord("x") for b in range(256))


@functools.cache
def snapshot_template(max_bytes: int, names: str = "world") -> Template:
    """The largest general-topic queue snapshot of two simulated minutes within ``max_bytes``.

    The emulator publishes each change twice, in the general shape and in the
    media shape; the template is the general one (the socket runs subscribe a
    general queue topic) and carries its media-shaped twin for the in-process
    table.
    """
    return snapshot_history(max_bytes, names)[0]


@functools.cache
def snapshot_history(max_bytes: int, names: str = "world") -> tuple[Template, ...]:
    """:func:`snapshot_template`, then the later snapshots of its conversation, in order.

    The later ones are the same conversation's next general-topic queue
    snapshots of the same two simulated minutes, whatever their size: the
    states it goes through after the template's (bench_checkpoint blasts
    them to remember several state digests per conversation).
    """
    centre = ContactCentre(seed=TEMPLATE_SEED, epoch=TEMPLATE_EPOCH)
    pubs = centre.advance(TEMPLATE_SIM_S)
    candidates = [
        i
        for i, p in enumerate(pubs[:-1])
        if p.conversation_id is not None
        and len(p.body) <= max_bytes
        and p.topics[0].endswith(".conversations")
        and _queue_of(p.topics[0])
    ]
    if not candidates:
        raise BenchError(f"no queue conversation snapshot of at most {max_bytes} B")
    index = max(candidates, key=lambda i: len(pubs[i].body))
    pub, twin = pubs[index], pubs[index + 1]
    queue_id = _queue_of(pub.topics[0])
    assert pub.conversation_id is not None
    assert queue_id is not None
    if twin.conversation_id != pub.conversation_id or twin.at != pub.at:
        raise BenchError("the emulator no longer publishes a media twin after each snapshot")
    media = twin.topics[0].rsplit(".", 1)[1]
    later = [
        Template(p.body, pub.conversation_id, later_queue)
        for p in pubs[index + 1 :]
        if p.conversation_id == pub.conversation_id
        and p.topics[0].endswith(".conversations")
        and (later_queue := _queue_of(p.topics[0])) is not None
        and p.body.count(pub.conversation_id.encode()) == 1
    ]
    history = (Template(pub.body, pub.conversation_id, queue_id, twin.body, media), *later)
    if names == "ascii":
        # The same sizes and layout, so that the two runs differ only in
        # the text: a decoder may take another path for text beyond ASCII
        # (V8 parses a frame with one character past Latin-1 as two-byte
        # text; CPython's str of it takes two or four bytes a character).
        history = tuple(
            Template(
                _in_ascii(t.body), t.conversation_id, t.queue_id, _in_ascii(t.media_body), t.media
            )
            for t in history
        )
    elif names != "world":
        raise BenchError(f"names must be one of {NAMES}, not {names!r}")
    return history


class SnapshotBlastEmulator(Emulator):
    """The emulator, with a blast whose frames are real conversation snapshots.

    It overrides only :meth:`Emulator.blast_body`: pacing, draining and
    ``publish`` (envelopes, per-socket queues, the ledger) are the built-in
    blast's; ``size`` is ignored.
    """

    def __init__(self, settings: EmulatorSettings, template: Template) -> None:
        super().__init__(settings)
        self.template = template

    def blast_body(self, topic: str, size: int) -> tuple[bytes, bytes, str]:
        """The real snapshot, moved to the blasted queue, with a counter for its id."""
        return self.template.blast_parts(topic)


def snapshot_emulator(max_bytes: int, settings: EmulatorSettings) -> Emulator:
    """A :class:`SnapshotBlastEmulator` blasting ``snapshot_template(max_bytes)``."""
    return SnapshotBlastEmulator(settings, snapshot_template(max_bytes))


def _emulator_process(
    make: Callable[[EmulatorSettings], Emulator],
    cpus: frozenset[int] | None,
    stop: Connection,
    conn: Connection,
) -> None:
    """The emulator process; ``make`` (picklable: a module-level function or partial) builds it."""
    _child_setup(cpus)
    asyncio.run(_serve_emulator(make, stop, conn))


async def _serve_emulator(
    make: Callable[[EmulatorSettings], Emulator], stop: Connection, conn: Connection
) -> None:
    # No simulated contact centre: only blast frames are sent.
    settings = EmulatorSettings(seed=1, queues=1, agents=0, rate=0.0, traffic=False)
    async with make(settings) as emulator:
        conn.send(emulator.base_url)
        conn.close()
        await _readable(stop, None)


# --------------------------------------------------------------------------
# The Multiplexer client
# --------------------------------------------------------------------------


@dataclass(slots=True)
class StreamResult(Result):
    """bench_pool's result, plus the multiplexer's own latency."""

    #: ``StreamEvent.latency_s`` percentiles (mux only).
    event_latency_p50_ms: float | None = None
    event_latency_p99_ms: float | None = None


#: Runs on the stream before the measured blast (bench_checkpoint fills the
#: stream's memory); returns how many events it consumed from the stream.
WarmUp = Callable[
    [aiohttp.ClientSession, Multiplexer, AsyncIterator[StreamEvent | Gap]], Awaitable[int]
]


async def _measure_mux(
    session: aiohttp.ClientSession,
    job: Job,
    *,
    buffer: int,
    latencies: array.array[float],
    options: Mapping[str, Any] | None = None,
    warm_up: WarmUp | None = None,
    server_pid: int | None = None,
) -> tuple[_Consumed, _Usage]:
    """Consume ``job``'s blast from ``mux.stream()``, checking that every frame came out once.

    ``options`` are further ``Multiplexer`` arguments; ``warm_up`` runs on
    the stream before the measured blast, which is then checked against the
    ledger from where the warm-up ended; ``server_pid`` is a process whose
    CPU is measured over the same stretch (bench_checkpoint's redis-server).
    """
    queue_id = _queue_of(job.topic)
    assert queue_id is not None
    out = _Consumed.for_count(job.count)
    stamps, samples, count = out.stamps, out.samples, job.count
    now = time.time
    dlq = MemoryDeadLetterQueue()
    async with Multiplexer(
        base_url=job.base_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        buffer_threshold=buffer,
        dlq=dlq,
        **(options or {}),
    ) as mux:
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            rejected = await mux.add_stream({"id": STREAM_ID, "filter": {"queueId": queue_id}})
        if rejected or not mux.live:
            raise BenchError(f"the multiplexer is not live on the topic: rejected={rejected}")
        items = mux.stream(STREAM_ID)
        warmed = n = 0
        try:
            if warm_up is not None:
                warmed = await warm_up(session, mux, items)
                out.ledger_mark = await _ledger_mark(session, job.base_url)
            with _usage(job.emulator_pid, server_pid) as usage:
                await _blast(session, job)
                async with asyncio.timeout(job.timeout_s):
                    async for item in items:
                        if not isinstance(item, StreamEvent):
                            raise BenchError(f"the stream reported a gap: {item}")
                        stamps[n] = now()
                        latencies[n] = item.latency_s or 0.0
                        if not n & SAMPLE_MASK:
                            samples.append((n, item.correlation_id or ""))
                        n += 1
                        if n >= count:
                            break
        except TimeoutError:
            stats = mux.stats()["streams"][STREAM_ID]
            raise BenchError(f"received {n} of {count} in time; stream counters: {stats}") from None
        finally:
            out.received = n
            with contextlib.suppress(Exception):
                await items.aclose()  # type: ignore[attr-defined]
            await _stop_blast(session, job.base_url)
        check_mux(mux, dlq, warmed + count)
    return out, usage


def check_mux(
    mux: Multiplexer,
    dlq: MemoryDeadLetterQueue,
    count: int,
    stream_ids: tuple[str, ...] = (STREAM_ID,),
) -> None:
    """Each stream received and delivered ``count`` events, all of them, and the pool was calm."""
    stats = mux.stats()
    for stream_id in stream_ids:
        stream = stats["streams"][stream_id]
        lost = (
            stream.duplicates + stream.stale + stream.filtered + stream.overflowed,
            stream.dead_lettered + len(dlq.letters),
        )
        if any(lost) or stream.received != count or stream.delivered != count:
            raise BenchError(f"stream {stream_id} did not deliver every frame once: {stream}")
    channels = stats["channels"].values()
    bad = sum(c.bad_frames for c in channels)
    changes = sum(c.reconnects + c.rotations for c in channels)
    if bad or changes:
        raise BenchError(f"the pool saw {bad} bad frames and {changes} reconnects/rotations")


# --------------------------------------------------------------------------
# One measurement, in a process of its own
# --------------------------------------------------------------------------


def _job_process(job: Job, buffer: int, conn: Connection) -> None:
    _child_setup(job.cpus, job.loop)
    try:
        extra: dict[str, Any] = {}
        if job.scenario == "mux":
            latencies = array.array("d", bytes(8 * job.count))
            measure = functools.partial(_measure_mux, buffer=buffer, latencies=latencies)
            result = asyncio.run(_run_job(job, measure))
            ordered = sorted(latencies)
            extra = {
                "event_latency_p50_ms": _percentile(ordered, 0.50) * 1000,
                "event_latency_p99_ms": _percentile(ordered, 0.99) * 1000,
            }
        else:
            result = asyncio.run(_run_job(job))
        payload = dataclasses.asdict(result) | extra
        payload["sample_frame"] = ""  # not needed here; keep the pipe light
        answer: tuple[str, Any] = ("ok", payload)
    except Exception as exc:
        answer = ("error", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()


async def _measure(job: Job, buffer: int) -> StreamResult:
    return StreamResult(**await _child_answer(job, _job_process, buffer))


# --------------------------------------------------------------------------
# The stream pipeline, without a socket
# --------------------------------------------------------------------------


def _per_call_us(run: Callable[[], int], repeat: int = 5) -> float:
    """Best-of-``repeat`` microseconds per call; ``run`` makes the calls and returns how many."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        calls = run()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def _ignore(letter: DeadLetter) -> None:
    raise BenchError(f"unexpected dead letter: {letter.reason}")


def _fresh_stream(buffer: int) -> Stream:
    # What Multiplexer.add_stream builds for {"queueId": ...}: no client-side rules.
    return Stream(STREAM_ID, buffer_size=buffer, dead_letter=_ignore)


def _inprocess_table(template: Template, distinct: int = 4096) -> list[str]:
    """The per-event pieces of the stream pipeline, timed without a socket, as Markdown."""
    queue_id = str(uuid.UUID(int=1))
    topic = f"v2.routing.queues.{queue_id}.conversations"
    bodies = [template.body_for(queue_id, i) for i in range(distinct)]
    body = bodies[0]
    facts = [event_facts(topic, b) for b in bodies]
    if facts[0].conversation is None or len({f.key for f in facts}) != distinct:
        raise BenchError("the template's facts are not those of distinct conversations")
    decode = msgspec.json.decode

    def run_decode() -> int:
        for _ in range(1000):
            decode(body)
        return 1000

    def run_facts() -> int:
        for b in bodies[:1000]:
            event_facts(topic, b)
        return 1000

    def run_offer() -> int:
        # A fresh stream each time, so every offer is a new conversation, accepted.
        stream = _fresh_stream(distinct)
        offer = stream.offer
        started = time.perf_counter()
        for f, b in zip(facts, bodies, strict=True):
            offer(topic, b, None, 0.0, 0.0, f)
        elapsed = time.perf_counter() - started
        timings.append(elapsed / distinct)
        return distinct

    def run_take() -> int:
        stream = _fresh_stream(distinct)
        for f, b in zip(facts, bodies, strict=True):
            stream.offer(topic, b, None, 0.0, 0.0, f)
        take = stream.take
        started = time.perf_counter()
        for _ in range(distinct):
            take(1.0, 1.0)
        timings.append((time.perf_counter() - started) / distinct)
        return distinct

    def run_pipeline() -> int:
        stream = _fresh_stream(distinct)
        offer, take = stream.offer, stream.take
        for b in bodies:
            offer(topic, b, None, 0.0, 0.0, event_facts(topic, b))
            take(1.0, 1.0)
        return distinct

    timings: list[float] = []

    def best_of(run: Callable[[], int]) -> float:
        # For the loops that set up a stream first: time only the calls themselves.
        timings.clear()
        for _ in range(5):
            run()
        return min(timings) * 1e6

    media_topic = f"{topic}.{template.media}"
    twin = template.media_twin()
    media_bodies = [twin.body_for(queue_id, i) for i in range(1000)]
    media_facts = event_facts(media_topic, media_bodies[0]).conversation
    if media_facts is None or media_facts.media != {template.media}:
        raise BenchError("the media twin does not read as its media")

    def run_media_facts() -> int:
        for b in media_bodies:
            event_facts(media_topic, b)
        return 1000

    def run_typed() -> int:
        for _ in range(1000):
            typed(body)
        return 1000

    typed = _CONVERSATION_DECODER.decode
    rows: list[tuple[str, float]] = [
        (
            f"`msgspec.json.decode` of the body ({len(body):,} B) (baseline)",
            _per_call_us(run_decode),
        ),
        ("`event_facts(topic, body)`: typed decode, facts, state digest", _per_call_us(run_facts)),
        ("… of which the typed decode (`snapshot._CONVERSATION_DECODER`)", _per_call_us(run_typed)),
        (
            f"`event_facts` of the same change's media-shaped body "
            f"({len(template.media_body):,} B, `.{template.media}` topic)",
            _per_call_us(run_media_facts),
        ),
        ("`Stream.offer(...)`, facts given, a new conversation (accepted)", best_of(run_offer)),
        ("`Stream.take(...)`", best_of(run_take)),
        ("`event_facts` + `Stream.offer` + `Stream.take`, per event", _per_call_us(run_pipeline)),
    ]
    per_key = _seen_bytes_per_conversation(topic, facts, bodies)
    return [
        f"In-process, no socket: the template snapshot ({len(body):,} B, "
        f"{distinct:,} distinct conversation ids; µs per call, best of 5, garbage collector on):",
        "",
        "| operation | µs |",
        "|---|--:|",
        *(f"| {label} | {us:.2f} |" for label, us in rows),
        "",
        f"Memory a stream keeps per remembered conversation (its de-duplication and "
        f"ordering state, measured with `tracemalloc` over {len(facts):,} conversations "
        f"offered and taken): {per_key:,.0f} B. A stream remembers up to 50,000 "
        f"conversations (`Stream(memory=...)`), so up to "
        f"{per_key * 50_000 / 2**20:,.1f} MiB per stream.",
    ]


def _seen_bytes_per_conversation(topic: str, facts: list[EventFacts], bodies: list[bytes]) -> float:
    stream = _fresh_stream(len(facts))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for f, b in zip(facts, bodies, strict=True):
            stream.offer(topic, b, None, 0.0, 0.0, f)
            stream.take(1.0, 1.0)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / len(facts)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _table(
    args: argparse.Namespace,
    template: Template,
    results: dict[str, list[StreamResult]],
    inprocess: list[str],
) -> str:
    frame_bytes = max(r.frame_bytes for rs in results.values() for r in rs)
    base_fps = _median([r.fps for r in results[BASELINE]])
    lines = [
        f"{args.count:,} frames per measurement, each a distinct conversation snapshot "
        f"(`eventBody` {len(template.body):,} B, {frame_bytes:,} B per frame on the wire) "
        f"on one queue conversation topic, "
        f"blast {'unpaced' if args.rate <= 0 else f'at {args.rate:g} frames/s'}, "
        f"stream buffer {args.buffer:,}, median of {args.repeat} interleaved repetitions"
        f"{', emulator and client pinned to separate cores' if args.pin else ''}.",
        "",
        "| scenario | frames | frames/s | vs baseline | client CPU µs/event | client busy "
        "| emulator busy | peak RSS Δ | send→consumer p50 | send→consumer p99 "
        "| `latency_s` p50 | `latency_s` p99 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, label in SCENARIOS.items():
        runs = results[key]
        fps = _median([r.fps for r in runs])
        emulator = [b for r in runs if (b := r.emulator_busy) is not None]
        inner50 = [v for r in runs if (v := r.event_latency_p50_ms) is not None]
        inner99 = [v for r in runs if (v := r.event_latency_p99_ms) is not None]
        cells = [
            label,
            f"{runs[0].frames:,}",
            f"{fps:,.0f}",
            f"{fps / base_fps * 100:.0f} %",
            f"{_median([r.cpu_us for r in runs]):.2f}",
            f"{_median([r.busy for r in runs]) * 100:.0f} %",
            f"{_median(emulator) * 100:.0f} %" if emulator else "n/a",
            f"{_median([r.rss_delta_kib / 1024 for r in runs]):.1f} MiB",
            _ms(_median([r.latency_p50_ms or 0.0 for r in runs])),
            _ms(_median([r.latency_p99_ms or 0.0 for r in runs])),
            _ms(_median(inner50) if inner50 else None),
            _ms(_median(inner99) if inner99 else None),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    leftover = sum(r.leftover_tasks for rs in results.values() for r in rs)
    if leftover:
        lines += ["", f"Warning: {leftover} asyncio tasks were left over after measurements."]
    lines += ["", *inprocess]
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    args.pin = args.pin and len(cpus) >= 2
    emulator_cpus = frozenset(cpus[-1:]) if args.pin else None
    client_cpus = frozenset(cpus[:1]) if args.pin else None
    # The template is built here only after the socket runs: simulating the
    # contact centre takes this process to ~100 MB, and a spawned measurement
    # process starts with its parent's peak RSS as its own ru_maxrss, which
    # would hide any growth below that.
    _progress(
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"msgspec {msgspec.__version__}, {os.cpu_count()} CPUs"
        + (f", emulator on CPU {cpus[-1]}, clients on CPU {cpus[0]}" if args.pin else "")
    )
    make = functools.partial(snapshot_emulator, args.max_body)
    emulator, stopper, base_url = await _start_emulator(
        emulator_cpus, functools.partial(_emulator_process, make)
    )
    results: dict[str, list[StreamResult]] = {key: [] for key in SCENARIOS}
    try:
        for repetition in range(1, args.repeat + 1):
            for scenario in SCENARIOS:
                job = Job(
                    scenario=scenario,
                    base_url=base_url,
                    topic=f"v2.routing.queues.{uuid.uuid4()}.conversations",
                    count=args.count,
                    size=0,  # the snapshot blast ignores it
                    rate=args.rate,
                    timeout_s=args.timeout,
                    emulator_pid=emulator.process.pid or 0,
                    cpus=client_cpus,
                )
                r = await _measure(job, args.buffer)
                results[scenario].append(r)
                inner = (
                    f"  latency_s p50 {r.event_latency_p50_ms:.2f} ms"
                    f" p99 {r.event_latency_p99_ms or 0:.2f} ms"
                    if r.event_latency_p50_ms is not None
                    else ""
                )
                _progress(
                    f"[{repetition}/{args.repeat}] {scenario:<13} {r.fps:>9,.0f} frames/s"
                    f"  client {r.cpu_us:5.2f} µs/event, busy {r.busy:4.0%}"
                    f"  emulator busy {r.emulator_busy or 0:4.0%}"
                    f"  RSS +{r.rss_delta_kib / 1024:.1f} MiB"
                    f"  p50 {r.latency_p50_ms or 0:.2f} ms  p99 {r.latency_p99_ms or 0:.2f} ms"
                    + inner
                    + (f"  {r.leftover_tasks} TASKS LEFT OVER" if r.leftover_tasks else "")
                )
    finally:
        stopper.close()
        await emulator.stop()
    template = snapshot_template(args.max_body)
    print(_table(args, template, results, _inprocess_table(template)))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_streams",
        description="Multiplexer.stream() throughput against raw-socket baselines.",
    )
    parser.add_argument("--count", type=int, default=50_000, help="frames per measurement")
    parser.add_argument(
        "--buffer",
        type=int,
        default=500,
        help="the stream's buffer (default: the Multiplexer's buffer_threshold, 500)",
    )
    parser.add_argument(
        "--max-body",
        type=int,
        default=8000,
        help="the template is the largest queue snapshot of at most this many bytes",
    )
    add_blast_arguments(parser)
    args = parser.parse_args(argv)
    if args.count < 2 or args.repeat < 1 or args.rate < 0 or args.timeout <= 0 or args.buffer < 1:
        parser.error("need --count >= 2, --repeat >= 1, --rate >= 0, --timeout > 0, --buffer >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    return run_benchmark(_main, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
