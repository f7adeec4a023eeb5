"""Throughput of :class:`~genesys_mux.net.connection.ChannelPool` against raw-socket baselines.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_pool [--count N] [--size BYTES] [--repeat R]

One run starts one emulator and measures how fast a client takes ``N``
notification frames with an ``eventBody`` of ``BYTES`` bytes off a
notification socket. Each measurement subscribes a topic of its own
(``v2.users.<uuid>.conversations``) and has the emulator blast the frames on
it as fast as the socket drains (``--rate`` paces it instead):

* ``raw socket, no decode``: aiohttp ``ws.receive()`` and a prefix check,
  nothing else. Not a usable client: it shows how much of the per-frame cost
  is aiohttp's receive path alone.
* ``raw socket + msgspec.json.decode``: what a naive client does, decoding
  every whole frame into Python objects. **This is the baseline.**
* ``raw socket + decode_frame``: the same socket, read with genesys-mux's
  sans-I/O decoder (envelope only, ``eventBody`` kept as raw bytes).
* ``ChannelPool.frames()``: the connection layer: ``set_topics``, then
  every notification consumed from ``pool.frames()``.

The emulator runs in a process of its own with its simulated contact centre
silenced, and every measurement runs in a fresh process, so that the two do
not share an interpreter and one measurement's peak RSS is not another's
high-water mark. ``--pin`` pins the emulator and the measurements to
different CPUs; it is off by default because on a two-core machine it made
the runs less repeatable, not more (see benchmarks/README.md).
Measurements are interleaved (each repetition runs every scenario once) and
the table shows the median of the repetitions.

Columns:

* frames/s from the first to the last frame received; MB/s (10^6 bytes) is
  frames/s times the frame's size on the wire;
* client CPU (user + system) per frame, and how busy the client and the
  emulator were (share of one core) over the same stretch: an emulator at
  ~100 % means the source, not the client, set the pace;
* peak RSS delta: growth of ``ru_maxrss`` while consuming;
* latency p50/p99: the emulator ledger's send time of each frame (taken when
  it is handed to the transport) to the moment the client's loop got it.

After the socket runs, the per-frame pieces are timed in-process, without
a socket, to show where the time goes: both decoders on the blast frame and
on a realistic conversation snapshot from the emulator's simulated contact
centre, building one ``InboundNotification`` (next to a frozen
``msgspec.Struct`` with the same fields), and a replica of the pool's queue
hand-off.

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import importlib
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import sys
import time
import timeit
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import msgspec

from genesys_mux.core.frames import Notification, decode_frame
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.emulator.org import ContactCentre
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.connection import ChannelPool, InboundNotification, PoolSettings
from genesys_mux.net.rest import RestClient
from genesys_mux.regions import Endpoints

# The emulator's built-in demo client; nothing secret.
CLIENT_ID = "demo-client"
CLIENT_SECRET = "demo-secret"  # noqa: S105

#: Scenario key -> label in the table, in the order they run and are shown.
SCENARIOS: dict[str, str] = {
    "raw-nodecode": "raw socket, no decode (reference)",
    "raw-msgspec": "raw socket + `msgspec.json.decode` (baseline)",
    "raw-decode-frame": "raw socket + `decode_frame`",
    "pool": "`ChannelPool.frames()`",
}
BASELINE = "raw-msgspec"

#: Deadline for each setup step (token, channel, subscribe, connect, first pong).
SETUP_TIMEOUT_S = 30.0
#: Time a measurement process gets beyond its deadlines before it is killed.
GRACE_S = 30.0
#: Every 64th frame's correlation id is kept, to check the frames against the ledger.
SAMPLE_MASK = 63


class BenchError(Exception):
    """A measurement could not be completed."""


@dataclass(frozen=True, slots=True)
class Job:
    """One measurement, as handed to its process."""

    scenario: str
    base_url: str
    topic: str
    count: int
    size: int
    rate: float
    timeout_s: float
    emulator_pid: int
    cpus: frozenset[int] | None
    #: The client's event loop: ``asyncio`` (the default loop) or ``uvloop``.
    loop: str = "asyncio"


@dataclass(slots=True)
class Result:
    """What one measurement reports back (sent as a dict between processes)."""

    scenario: str
    frames: int
    frame_bytes: int
    seconds: float
    wall_s: float
    cpu_s: float
    emulator_cpu_s: float | None
    rss_delta_kib: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    leftover_tasks: int
    #: The last frame as received, for the decode timings (raw scenarios only).
    sample_frame: str = ""
    latency_p999_ms: float | None = None
    #: CPU time of a server the client talks to (bench_checkpoint's redis-server), if any.
    server_cpu_s: float | None = None

    @property
    def fps(self) -> float:
        """Frames per second, first to last frame."""
        return (self.frames - 1) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_us(self) -> float:
        """Client CPU per frame, in microseconds."""
        return self.cpu_s / self.frames * 1e6

    @property
    def busy(self) -> float:
        """Share of one core the client used while consuming (1.0: saturated)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def emulator_busy(self) -> float | None:
        """Share of one core the emulator used meanwhile (1.0: the source set the pace)."""
        if self.emulator_cpu_s is None or self.wall_s <= 0:
            return None
        return self.emulator_cpu_s / self.wall_s


@dataclass(slots=True)
class _Consumed:
    """What a consumer saw: a receive stamp per frame, and a sample of correlation ids.

    The stamps are preallocated so that recording them allocates nothing
    while memory is being measured.
    """

    stamps: array.array[float]
    samples: list[tuple[int, str]] = field(default_factory=list)
    received: int = 0
    last_frame: str = ""
    #: Set by a measurement that warms up on its topic before the measured
    #: blast: the ledger's next sequence number once the warm-up is over.
    ledger_mark: int | None = None

    @classmethod
    def for_count(cls, count: int) -> _Consumed:
        return cls(array.array("d", bytes(8 * count)))


@dataclass(slots=True)
class _Usage:
    """Resources spent over the consuming stretch of a measurement."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_delta_kib: int = 0
    emulator_cpu_s: float | None = None
    server_cpu_s: float | None = None


# --------------------------------------------------------------------------
# Measuring resources
# --------------------------------------------------------------------------


def _process_cpu_s(pid: int) -> float | None:
    """CPU time (user + system) of another process so far, where /proc tells it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # utime and stime, fields 14 and 15 of proc_pid_stat(5), counted after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _usage(emulator_pid: int, server_pid: int | None = None) -> Iterator[_Usage]:
    """Resources spent in the block: this process's, the emulator's and a server's (if given)."""
    usage = _Usage()
    server_before = None if server_pid is None else _process_cpu_s(server_pid)
    emulator_before = _process_cpu_s(emulator_pid)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        emulator_after = _process_cpu_s(emulator_pid)
        server_after = None if server_pid is None else _process_cpu_s(server_pid)
        usage.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        usage.rss_delta_kib = after.ru_maxrss - before.ru_maxrss  # KiB on Linux
        if emulator_before is not None and emulator_after is not None:
            usage.emulator_cpu_s = emulator_after - emulator_before
        if server_before is not None and server_after is not None:
            usage.server_cpu_s = server_after - server_before


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def _child_setup(cpus: frozenset[int] | None, loop: str = "asyncio") -> None:
    """Pin a child process, leave Ctrl-C to the parent (which stops the children), pick its loop.

    ``loop="uvloop"`` makes ``asyncio.run`` in this process run on uvloop
    (not a dependency: ``pip install uvloop`` to measure it).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if loop == "uvloop":
        # Imported by name: uvloop is not a dependency of the project.
        uvloop = importlib.import_module("uvloop")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


# --------------------------------------------------------------------------
# Talking to the emulator
# --------------------------------------------------------------------------


async def _control(
    session: aiohttp.ClientSession, base_url: str, path: str, body: Any = None
) -> Any:
    method = "GET" if body is None else "POST"
    async with (
        asyncio.timeout(SETUP_TIMEOUT_S),
        session.request(method, f"{base_url}/__emulator__/{path}", json=body) as resp,
    ):
        data = await resp.read()
        if resp.status not in (200, 201):
            raise BenchError(f"{method} /__emulator__/{path}: HTTP {resp.status} {data[:200]!r}")
        return msgspec.json.decode(data)


async def _ledger_mark(session: aiohttp.ClientSession, base_url: str) -> int:
    """The ledger's next sequence number: every frame sent from now on has at least this."""
    answer = await _control(session, base_url, f"ledger?since={2**62}")
    return int(answer["next_seq"])


async def _ledger_entries(
    session: aiohttp.ClientSession, base_url: str, since: int, topic: str
) -> list[dict[str, Any]]:
    """The frames sent on ``topic`` since the mark, in send order."""
    answer = await _control(session, base_url, f"ledger?since={since - 1}")
    return [e for e in answer["entries"] if e["topic"] == topic]


async def _blast(session: aiohttp.ClientSession, job: Job) -> None:
    spec = {"topic": job.topic, "rate": job.rate, "count": job.count, "size": job.size}
    state = await _control(session, job.base_url, "traffic", {"blast": spec})
    if not state.get("blasting"):
        raise BenchError(f"the emulator did not start the blast: {state}")


async def _stop_blast(session: aiohttp.ClientSession, base_url: str) -> None:
    with contextlib.suppress(BenchError, aiohttp.ClientError, TimeoutError):
        await _control(session, base_url, "traffic", {"blast": {"stop": True}})


# --------------------------------------------------------------------------
# The raw-socket clients
# --------------------------------------------------------------------------


async def _open_channel(session: aiohttp.ClientSession, base_url: str, topic: str) -> str:
    """Token, channel and one topic, as a naive client sets up; returns the ``connectUri``."""
    async with asyncio.timeout(SETUP_TIMEOUT_S):
        async with session.post(
            f"{base_url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=aiohttp.BasicAuth(CLIENT_ID, CLIENT_SECRET),
        ) as resp:
            resp.raise_for_status()
            token = msgspec.json.decode(await resp.read())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        channels = f"{base_url}/api/v2/notifications/channels"
        async with session.post(channels, headers=headers) as resp:
            resp.raise_for_status()
            channel = msgspec.json.decode(await resp.read())
        async with session.put(
            f"{channels}/{channel['id']}/subscriptions",
            params={"ignoreErrors": "true"},
            json=[{"id": topic}],
            headers=headers,
        ) as resp:
            resp.raise_for_status()
            answer = msgspec.json.decode(await resp.read())
        rejected = [e for e in answer.get("entities", []) if e.get("state") == "Rejected"]
        if rejected:
            raise BenchError(f"topic rejected: {rejected}")
        return str(channel["connectUri"])


async def _raw_connect(
    session: aiohttp.ClientSession, base_url: str, topic: str
) -> aiohttp.ClientWebSocketResponse:
    """Token, channel, one topic, socket, and a pong to prove the socket is registered."""
    connect_uri = await _open_channel(session, base_url, topic)
    async with asyncio.timeout(SETUP_TIMEOUT_S):
        ws = await session.ws_connect(connect_uri)
        try:
            # The server writes in order: once our pong is back, the socket is
            # registered and gets every frame the blast publishes.
            await ws.send_str('{"message":"ping"}')
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise BenchError(f"socket ended before the pong: {msg.type.name}")
                if '"pong"' in msg.data:
                    return ws
        except BaseException:
            await ws.close()
            raise


def _unexpected(msg: aiohttp.WSMessage) -> BenchError:
    return BenchError(f"socket ended mid-blast: {msg.type.name} {msg.data!r} {msg.extra!r}")


# The three raw loops differ only in how a frame is read; they are spelled out
# rather than parameterised so that none pays for another's branches.


async def _consume_nodecode(
    ws: aiohttp.ClientWebSocketResponse, topic: str, out: _Consumed
) -> None:
    stamps, samples, count = out.stamps, out.samples, len(out.stamps)
    receive, now, text = ws.receive, time.time, aiohttp.WSMsgType.TEXT
    prefix = '{"topicName":"' + topic + '"'
    n = 0
    data = ""
    while n < count:
        msg = await receive()
        if msg.type is not text:
            raise _unexpected(msg)
        data = msg.data
        if not data.startswith(prefix):
            continue  # a heartbeat
        stamps[n] = now()
        if not n & SAMPLE_MASK:
            # The frame ends with "CorrelationId":"<36 characters>"}}
            samples.append((n, data[-39:-3]))
        n += 1
    out.received, out.last_frame = n, data


async def _consume_msgspec(ws: aiohttp.ClientWebSocketResponse, topic: str, out: _Consumed) -> None:
    stamps, samples, count = out.stamps, out.samples, len(out.stamps)
    receive, now, text = ws.receive, time.time, aiohttp.WSMsgType.TEXT
    decode = msgspec.json.decode
    n = 0
    data = ""
    while n < count:
        msg = await receive()
        if msg.type is not text:
            raise _unexpected(msg)
        data = msg.data
        doc = decode(data)
        if doc.get("topicName") != topic:
            continue  # a heartbeat
        stamps[n] = now()
        if not n & SAMPLE_MASK:
            samples.append((n, doc["metadata"]["CorrelationId"]))
        n += 1
    out.received, out.last_frame = n, data


async def _consume_decode_frame(
    ws: aiohttp.ClientWebSocketResponse, topic: str, out: _Consumed
) -> None:
    stamps, samples, count = out.stamps, out.samples, len(out.stamps)
    receive, now, text = ws.receive, time.time, aiohttp.WSMsgType.TEXT
    n = 0
    data = ""
    while n < count:
        msg = await receive()
        if msg.type is not text:
            raise _unexpected(msg)
        data = msg.data
        frame = decode_frame(data)
        if not isinstance(frame, Notification) or frame.topic != topic:
            continue  # a heartbeat
        stamps[n] = now()
        if not n & SAMPLE_MASK:
            samples.append((n, frame.correlation_id or ""))
        n += 1
    out.received, out.last_frame = n, data


_RAW_CONSUMERS: dict[
    str, Callable[[aiohttp.ClientWebSocketResponse, str, _Consumed], Awaitable[None]]
] = {
    "raw-nodecode": _consume_nodecode,
    "raw-msgspec": _consume_msgspec,
    "raw-decode-frame": _consume_decode_frame,
}


async def _measure_raw(session: aiohttp.ClientSession, job: Job) -> tuple[_Consumed, _Usage]:
    consume = _RAW_CONSUMERS[job.scenario]
    out = _Consumed.for_count(job.count)
    ws = await _raw_connect(session, job.base_url, job.topic)
    try:
        with _usage(job.emulator_pid) as usage:
            await _blast(session, job)
            async with asyncio.timeout(job.timeout_s):
                await consume(ws, job.topic, out)
    finally:
        await _stop_blast(session, job.base_url)
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                await ws.close()
    return out, usage


# --------------------------------------------------------------------------
# The ChannelPool client
# --------------------------------------------------------------------------


async def _measure_pool(session: aiohttp.ClientSession, job: Job) -> tuple[_Consumed, _Usage]:
    endpoints = Endpoints.custom(job.base_url)
    tokens = TokenProvider(session, endpoints, CLIENT_ID, CLIENT_SECRET)
    rest = RestClient(session, endpoints, tokens)
    out = _Consumed.for_count(job.count)
    stamps, samples, count = out.stamps, out.samples, job.count
    now, topic = time.time, job.topic
    async with ChannelPool(session, rest, tokens, PoolSettings()) as pool:
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            rejected = await pool.set_topics([topic])
        if rejected or not pool.live:
            raise BenchError(f"the pool is not live on the topic: rejected={rejected}")
        frames = pool.frames()
        n = 0
        try:
            with _usage(job.emulator_pid) as usage:
                await _blast(session, job)
                async with asyncio.timeout(job.timeout_s):
                    async for note in frames:
                        if note.topic != topic:
                            continue
                        stamps[n] = now()
                        if not n & SAMPLE_MASK:
                            samples.append((n, note.correlation_id or ""))
                        n += 1
                        if n >= count:
                            break
        finally:
            out.received = n
            with contextlib.suppress(Exception):
                await frames.aclose()  # type: ignore[attr-defined]
            await _stop_blast(session, job.base_url)
        stats = pool.stats().values()
        bad = sum(s.bad_frames for s in stats)
        changes = sum(s.reconnects + s.rotations for s in stats)
        if bad or changes:
            raise BenchError(f"the pool saw {bad} bad frames and {changes} reconnects/rotations")
    return out, usage


# --------------------------------------------------------------------------
# One measurement, in a process of its own
# --------------------------------------------------------------------------


Measure = Callable[[aiohttp.ClientSession, Job], Awaitable[tuple[_Consumed, _Usage]]]


async def _run_job(job: Job, measure: Measure | None = None) -> Result:
    """Run one measurement and check it against the ledger.

    ``measure`` defaults to this module's client for ``job.scenario``; other
    benchmarks pass their own (see bench_streams.py).
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SETUP_TIMEOUT_S)) as s:
        mark = await _ledger_mark(s, job.base_url)
        if measure is None:
            measure = _measure_pool if job.scenario == "pool" else _measure_raw
        try:
            consumed, usage = await measure(s, job)
        except TimeoutError:
            raise BenchError(
                f"a deadline passed ({job.timeout_s:g} s to consume {job.count:,} frames, "
                f"{SETUP_TIMEOUT_S:g} s for each setup step)"
            ) from None
        if consumed.ledger_mark is not None:
            mark = consumed.ledger_mark  # what the warm-up sent is not measured
        sent = await _ledger_entries(s, job.base_url, mark, job.topic)
    if consumed.received != job.count or len(sent) != job.count:
        raise BenchError(f"sent {len(sent)} and received {consumed.received} of {job.count}")
    # One socket and no faults: frame i received is frame i sent. Check the sample.
    for index, correlation_id in consumed.samples:
        if sent[index]["correlation_id"] != correlation_id:
            raise BenchError(f"frame {index} is not the one sent {index}th: out of order")
    stamps = consumed.stamps
    latencies = sorted(stamps[i] - sent[i]["time"] for i in range(job.count))
    # Let closing connections finish, then count what is left over.
    await asyncio.sleep(0.05)
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return Result(
        scenario=job.scenario,
        frames=consumed.received,
        frame_bytes=len(consumed.last_frame.encode()),
        seconds=stamps[-1] - stamps[0],
        wall_s=usage.wall_s,
        cpu_s=usage.cpu_s,
        emulator_cpu_s=usage.emulator_cpu_s,
        rss_delta_kib=usage.rss_delta_kib,
        latency_p50_ms=_percentile(latencies, 0.50) * 1000,
        latency_p99_ms=_percentile(latencies, 0.99) * 1000,
        leftover_tasks=len(leftover),
        sample_frame=consumed.last_frame,
        latency_p999_ms=_percentile(latencies, 0.999) * 1000,
        server_cpu_s=usage.server_cpu_s,
    )


def _job_process(job: Job, conn: Connection) -> None:
    _child_setup(job.cpus, job.loop)
    try:
        # A dict: classes of a spawned __main__ module do not unpickle in the parent.
        answer: tuple[str, Any] = ("ok", dataclasses.asdict(asyncio.run(_run_job(job))))
    except Exception as exc:
        answer = ("error", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()


# --------------------------------------------------------------------------
# The emulator, in a process of its own
# --------------------------------------------------------------------------


def _emulator_process(cpus: frozenset[int] | None, stop: Connection, conn: Connection) -> None:
    _child_setup(cpus)
    asyncio.run(_serve_emulator(stop, conn))


async def _serve_emulator(stop: Connection, conn: Connection) -> None:
    # No simulated contact centre: only blast frames are sent.
    settings = EmulatorSettings(seed=1, queues=1, agents=0, rate=0.0, traffic=False)
    async with Emulator(settings) as emulator:
        conn.send(emulator.base_url)
        conn.close()
        # A message, or the parent's end of the pipe closing, stops us.
        await _readable(stop, None)


async def _readable(conn: Connection, timeout_s: float | None) -> bool:
    """Wait until ``conn`` has something to read (a message or end of file)."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(conn.fileno(), ready.set)
    try:
        async with asyncio.timeout(timeout_s):
            await ready.wait()
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(conn.fileno())
    return True


class _Child:
    """A spawned process that answers on a pipe."""

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.reader, writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=target, args=(*args, writer), name=name, daemon=True)
        self.process.start()
        writer.close()  # so that the child's end reads as end of file here

    async def answer(self, timeout_s: float) -> Any:
        if not await _readable(self.reader, timeout_s):
            raise BenchError(f"{self.process.name} did not answer within {timeout_s:g} s")
        try:
            return self.reader.recv()
        except EOFError:
            raise BenchError(
                f"{self.process.name} ended without an answer (exit code {self.process.exitcode})"
            ) from None

    async def stop(self, timeout_s: float = 10.0, *, terminate: bool = False) -> None:
        """Wait for the process to end (after SIGTERM if ``terminate``), killing it if need be."""
        if terminate and self.process.is_alive():
            self.process.terminate()
        await asyncio.to_thread(self.process.join, timeout_s)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, timeout_s)
        self.reader.close()


async def _start_emulator(
    cpus: frozenset[int] | None,
    target: Callable[[frozenset[int] | None, Connection, Connection], None] = _emulator_process,
) -> tuple[_Child, Connection, str]:
    """The emulator process, the pipe end that stops it when closed, and its base URL.

    ``target`` runs in the process; other benchmarks pass their own emulator
    (see bench_streams.py).
    """
    stop_reader, stop_writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    child = _Child(target, cpus, stop_reader, name="emulator")
    stop_reader.close()
    try:
        base_url = await child.answer(SETUP_TIMEOUT_S)
    except BaseException:
        stop_writer.close()
        await child.stop()
        raise
    return child, stop_writer, str(base_url)


async def _silence(base_url: str) -> None:
    """Belt and braces: the simulated traffic is off from the start; keep it so."""
    async with aiohttp.ClientSession() as session:
        state = await _control(session, base_url, "traffic", {"rate": 0, "running": False})
    if state.get("running") or state.get("blasting"):
        raise BenchError(f"the emulator would not fall silent: {state}")


async def _child_answer(job: Job, target: Callable[..., None], *args: Any) -> Any:
    """Run ``target(job, *args, conn)`` in a fresh process; the payload of its ``"ok"`` answer.

    The process gets the job's deadline plus the setup steps' and a grace
    period; an ``("error", message)`` answer becomes a :class:`BenchError`.
    """
    child = _Child(target, job, *args, name=f"measure-{job.scenario}")
    answered = False
    try:
        status, payload = await child.answer(job.timeout_s + 4 * SETUP_TIMEOUT_S + GRACE_S)
        answered = True
    finally:
        await child.stop(terminate=not answered)
    if status != "ok":
        raise BenchError(f"{job.scenario}: {payload}")
    return payload


async def _measure(job: Job) -> Result:
    return Result(**await _child_answer(job, _job_process))


# --------------------------------------------------------------------------
# Decode costs, without a socket
# --------------------------------------------------------------------------


def _snapshot_frame() -> str:
    """A frame around the largest conversation snapshot of two simulated minutes.

    The blast's body is mostly one long padding string, which flatters a
    whole-frame decode; a real snapshot is many small objects and strings.
    """
    centre = ContactCentre(seed=1, epoch=0.0)
    pub = max(
        (p for p in centre.advance(120.0) if p.conversation_id is not None),
        key=lambda p: len(p.body),
    )
    # The envelope as the platform (and the emulator) writes it.
    return (
        f'{{"topicName":"{pub.topics[0]}","version":"2","eventBody":{pub.body.decode()},'
        f'"metadata":{{"CorrelationId":"{pub.correlation_id}"}}}}'
    )


class _NotificationStruct(msgspec.Struct, frozen=True, gc=False):
    """``InboundNotification``'s fields as a frozen msgspec Struct, for comparison only."""

    topic: str
    body: bytes
    correlation_id: str | None
    channel_id: str
    slot: int
    received_at: float
    received_mono: float


def _best_us(stmt: str, names: dict[str, Any]) -> float:
    """Best-of-5 microseconds per execution of ``stmt``."""
    timer = timeit.Timer(stmt, globals=names)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


async def _handoff_us(burst: int = 256, bursts: int = 400) -> float:
    """Best-of-5 microseconds per item through a queue and an async generator.

    A replica of the pool's hand-off: its reader task puts every frame
    already on the socket into an ``asyncio.Queue``, then ``frames()``, an
    async generator, takes them out one ``await queue.get()`` at a time.
    """
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def frames() -> AsyncIterator[int]:
        while (item := await queue.get()) is not None:
            yield item

    consumer = frames()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(bursts):
            for i in range(burst):
                queue.put_nowait(i)
            for _ in range(burst):
                await anext(consumer)
        best = min(best, (time.perf_counter() - started) / (burst * bursts))
    await consumer.aclose()  # type: ignore[attr-defined]
    return best * 1e6


async def _inprocess_table(blast_frame: str) -> list[str]:
    """Per-frame pieces timed without a socket, as Markdown lines."""
    snapshot = _snapshot_frame()
    blast_size, snapshot_size = len(blast_frame.encode()), len(snapshot.encode())
    fields = "('t', b'x', 'c', 'ch', 0, 1.0, 2.0)"
    rows = [
        (
            f"`msgspec.json.decode`, blast frame ({blast_size:,} B, the one measured above)",
            _best_us("decode(frame)", {"decode": msgspec.json.decode, "frame": blast_frame}),
        ),
        (
            "`decode_frame`, the same blast frame",
            _best_us("decode(frame)", {"decode": decode_frame, "frame": blast_frame}),
        ),
        (
            f"`msgspec.json.decode`, largest emulator conversation snapshot ({snapshot_size:,} B)",
            _best_us("decode(frame)", {"decode": msgspec.json.decode, "frame": snapshot}),
        ),
        (
            "`decode_frame`, the same snapshot",
            _best_us("decode(frame)", {"decode": decode_frame, "frame": snapshot}),
        ),
        (
            "`InboundNotification(...)`, built by the pool per notification (frozen dataclass)",
            _best_us("cls" + fields, {"cls": InboundNotification}),
        ),
        (
            "the same seven fields as a frozen `msgspec.Struct`, for comparison",
            _best_us("cls" + fields, {"cls": _NotificationStruct}),
        ),
        (
            "`asyncio.Queue` put + `get` through an async generator, in bursts of 256 "
            "(the pool's hand-off, replicated)",
            await _handoff_us(),
        ),
    ]
    return [
        "In-process, no socket (µs per call, best of 5):",
        "",
        "| operation | µs |",
        "|---|--:|",
        *(f"| {label} | {us:.2f} |" for label, us in rows),
    ]


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _table(args: argparse.Namespace, results: dict[str, list[Result]], inprocess: list[str]) -> str:
    frame_bytes = max(r.frame_bytes for rs in results.values() for r in rs)
    base_fps = _median([r.fps for r in results[BASELINE]])
    lines = [
        f"{args.count:,} frames per measurement, `eventBody` {args.size:,} B "
        f"({frame_bytes:,} B per frame on the wire), "
        f"blast {'unpaced' if args.rate <= 0 else f'at {args.rate:g} frames/s'}, "
        f"median of {args.repeat} interleaved repetitions"
        f"{', emulator and client pinned to separate cores' if args.pin else ''}.",
        "",
        "| scenario | frames | frame size | frames/s | MB/s | vs baseline "
        "| client CPU µs/frame | client busy | emulator busy | peak RSS Δ "
        "| latency p50 | latency p99 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, label in SCENARIOS.items():
        runs = results[key]
        fps = _median([r.fps for r in runs])
        emulator = [b for r in runs if (b := r.emulator_busy) is not None]
        cells = [
            label,
            f"{runs[0].frames:,}",
            f"{frame_bytes:,} B",
            f"{fps:,.0f}",
            f"{fps * frame_bytes / 1e6:,.1f}",
            f"{fps / base_fps * 100:.0f} %",
            f"{_median([r.cpu_us for r in runs]):.2f}",
            f"{_median([r.busy for r in runs]) * 100:.0f} %",
            f"{_median(emulator) * 100:.0f} %" if emulator else "n/a",
            f"{_median([r.rss_delta_kib / 1024 for r in runs]):.1f} MiB",
            f"{_median([r.latency_p50_ms or 0.0 for r in runs]):.2f} ms",
            f"{_median([r.latency_p99_ms or 0.0 for r in runs]):.2f} ms",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    leftover = sum(r.leftover_tasks for rs in results.values() for r in rs)
    if leftover:
        lines += ["", f"Warning: {leftover} asyncio tasks were left over after measurements."]
    lines += ["", *inprocess]
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _main(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    args.pin = args.pin and len(cpus) >= 2
    emulator_cpus = frozenset(cpus[-1:]) if args.pin else None
    client_cpus = frozenset(cpus[:1]) if args.pin else None
    _progress(
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"msgspec {msgspec.__version__}, {os.cpu_count()} CPUs"
        + (f", emulator on CPU {cpus[-1]}, clients on CPU {cpus[0]}" if args.pin else "")
    )
    emulator, stopper, base_url = await _start_emulator(emulator_cpus)
    results: dict[str, list[Result]] = {key: [] for key in SCENARIOS}
    try:
        await _silence(base_url)
        for repetition in range(1, args.repeat + 1):
            for scenario in SCENARIOS:
                job = Job(
                    scenario=scenario,
                    base_url=base_url,
                    topic=f"v2.users.{uuid.uuid4()}.conversations",
                    count=args.count,
                    size=args.size,
                    rate=args.rate,
                    timeout_s=args.timeout,
                    emulator_pid=emulator.process.pid or 0,
                    cpus=client_cpus,
                )
                r = await _measure(job)
                results[scenario].append(r)
                _progress(
                    f"[{repetition}/{args.repeat}] {scenario:<17} {r.fps:>9,.0f} frames/s"
                    f"  client {r.cpu_us:5.2f} µs/frame, busy {r.busy:4.0%}"
                    f"  emulator busy {r.emulator_busy or 0:4.0%}"
                    f"  RSS +{r.rss_delta_kib / 1024:.1f} MiB"
                    f"  p50 {r.latency_p50_ms or 0:.2f} ms  p99 {r.latency_p99_ms or 0:.2f} ms"
                    + (f"  {r.leftover_tasks} TASKS LEFT OVER" if r.leftover_tasks else "")
                )
    finally:
        stopper.close()
        await emulator.stop()
    inprocess = await _inprocess_table(results[BASELINE][0].sample_frame)
    print(_table(args, results, inprocess))
    return 0


def add_blast_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every blast benchmark shares: --repeat, --rate, --timeout, --pin."""
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="blast rate in frames/s (0: as fast as possible)"
    )
    parser.add_argument(
        "--timeout", type=float, default=90.0, help="deadline in s for consuming one blast"
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pin the emulator and the clients to different CPUs (default: off)",
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pool",
        description="ChannelPool throughput against raw-socket baselines, on one emulator.",
    )
    parser.add_argument("--count", type=int, default=100_000, help="frames per measurement")
    parser.add_argument("--size", type=int, default=2048, help="eventBody size in bytes")
    add_blast_arguments(parser)
    args = parser.parse_args(argv)
    if args.count < 2 or args.size < 128 or args.repeat < 1 or args.rate < 0 or args.timeout <= 0:
        parser.error("need --count >= 2, --size >= 128, --repeat >= 1, --rate >= 0, --timeout > 0")
    return args


def run_benchmark(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    """Run a benchmark's async main; a failure or Ctrl-C becomes an exit status."""
    try:
        return asyncio.run(main(args))
    except BenchError as exc:
        _progress(f"benchmark failed: {exc}")
        return 1
    except KeyboardInterrupt:
        _progress("interrupted")
        return 130


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    return run_benchmark(_main, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
