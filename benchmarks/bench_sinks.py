"""Throughput of the Redis Streams sink, through its runner, against raw redis-py.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_sinks [--count N] [--batch 1 10 100] [--repeat R]

One run starts its own ``redis-server`` (from ``PATH``) on a free loopback
port, with persistence off and a throw-away directory, and stops it at the
end. Every measurement writes the same ``N`` records, one per
``StreamEvent``, to a Redis stream key of its own, in batches of ``B``:

* ``redis-py, records encoded beforehand`` (**the baseline**): a
  ``redis.asyncio`` client with the sink's own settings; per batch one
  ``pipeline(transaction=False)`` of ``XADD key MAXLEN ~ 100000 * record
  <json> idempotency_key <key>``, with the records encoded by
  ``encode_record`` before the clock starts. It is what the sink writes,
  minus everything the sink does besides redis-py.
* ``RedisStreamsSink.send(batch)``: the sink called directly in a loop, so
  it encodes each record (``encode_record``) as it goes.
* ``SinkRunner`` + ``RedisStreamsSink``: the runner reads the events from
  an async generator (a source that is always ready, so every batch is
  full and ``linger_s`` never waits), batches them and hands each batch to
  the sink, as ``genesys-mux run`` does for a stream.

The events are distinct conversation snapshots: bench_streams' template
(a real ``ContactCentre`` snapshot of 7,089 B) with a distinct conversation
id each. The keys stay below ``MAXLEN`` (100,000, the sink's default), so
Redis never trims. Before the clock starts every client has connected
(the raw client with a ``PING``, the sink by sending one record to another
key). Afterwards each key is checked (``XLEN`` is ``N``; the first entry's
``record`` and ``idempotency_key`` are the expected bytes) and deleted.

Columns: records/s from the first command to the last answer; client CPU
(user + system of this process) per record; the share of one core this
process used; redis-server's CPU per record (from ``/proc``). Measurements
are interleaved (each repetition runs every batch size and scenario once)
and the table shows the median of the repetitions.

A second table times, without Redis, what the sink and the runner add per
record: ``encode_record`` of one event, and the runner with a sink that
does nothing.

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import msgspec
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from benchmarks.bench_pool import BenchError, _median, _process_cpu_s, _progress, run_benchmark
from benchmarks.bench_streams import Template, snapshot_template
from genesys_mux.core.streams import DeadLetter, StreamEvent
from genesys_mux.sinks.base import Item, encode_record, idempotency_key
from genesys_mux.sinks.redis_streams import RedisStreamsSink
from genesys_mux.sinks.runner import SinkRunner

#: Scenario key -> label in the table, in the order they run and are shown.
SCENARIOS: dict[str, str] = {
    "raw": "redis-py pipelined `XADD`, records encoded beforehand (baseline)",
    "sink": "`RedisStreamsSink.send(batch)`, called directly",
    "runner": "`SinkRunner` + `RedisStreamsSink`",
}
BASELINE = "raw"
STREAM_ID = "bench"
#: The sink's default ``maxlen``; every key stays below it.
MAXLEN = 100_000
#: The sink's default timeouts, used for the raw client too.
TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 10.0


@dataclass(slots=True)
class Measurement:
    """One scenario at one batch size."""

    scenario: str
    batch: int
    records: int
    wall_s: float
    cpu_s: float
    redis_cpu_s: float | None

    @property
    def rps(self) -> float:
        """Records per second."""
        return self.records / self.wall_s

    @property
    def cpu_us(self) -> float:
        """Client CPU per record, in microseconds."""
        return self.cpu_s / self.records * 1e6

    @property
    def busy(self) -> float:
        """Share of one core this process used."""
        return self.cpu_s / self.wall_s

    @property
    def redis_us(self) -> float | None:
        """redis-server CPU per record, in microseconds."""
        return None if self.redis_cpu_s is None else self.redis_cpu_s / self.records * 1e6


# --------------------------------------------------------------------------
# redis-server
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _redis_server(prefix: str = "bench-redis-") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of our own on a free loopback port: its URL and its process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (scripts/test installs it)")
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        port = _free_port()
        process = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            _wait_ready(url, process)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        while True:
            if process.poll() is not None:
                raise BenchError(f"redis-server exited at start-up with {process.returncode}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server did not answer within {STARTUP_TIMEOUT_S:g} s")
            time.sleep(0.05)
    finally:
        client.close()


# --------------------------------------------------------------------------
# The records
# --------------------------------------------------------------------------


def _events(template: Template, count: int) -> list[StreamEvent]:
    """``count`` delivered events, each a distinct conversation's snapshot."""
    queue_id = template.queue_id
    topic = f"v2.routing.queues.{queue_id}.conversations"
    now = time.time()
    return [
        StreamEvent(
            stream_id=STREAM_ID,
            sequence=i + 1,
            priority=3,
            topic=topic,
            transition=None,
            conversation_id=f"c0ffee00-0000-4000-8000-{i:012d}",
            correlation_id=f"00000000-0000-4000-8000-{i:012d}",
            raw=template.body_for(queue_id, i),
            received_at=now,
        )
        for i in range(count)
    ]


def _no_dead_letters(letter: DeadLetter) -> None:
    raise BenchError(f"the runner dead-lettered sequence {letter.sequence}: {letter.reason}")


async def _source(events: Sequence[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


# --------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------


def _raw_client(url: str) -> aioredis.Redis:
    # The settings RedisStreamsSink.start() gives its own client.
    return aioredis.Redis.from_url(
        url,
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


async def _run_raw(
    url: str, key: str, events: Sequence[StreamEvent], batch: int, redis_pid: int
) -> Timed:
    records = [(encode_record(e), idempotency_key(e)) for e in events]
    client = _raw_client(url)
    try:
        await client.ping()

        async def write() -> None:
            for start in range(0, len(records), batch):
                async with client.pipeline(transaction=False) as pipe:
                    for record, item_key in records[start : start + batch]:
                        pipe.xadd(
                            key,
                            {"record": record, "idempotency_key": item_key},
                            maxlen=MAXLEN,
                            approximate=True,
                        )
                    await pipe.execute()

        return await _timed(write, redis_pid)
    finally:
        await client.aclose()


async def _warm_sink(url: str, prefix: str) -> RedisStreamsSink:
    """A started sink whose connection is open (one record sent to another key)."""
    sink = RedisStreamsSink(url, prefix=prefix, maxlen=MAXLEN)
    await sink.start()
    warm = StreamEvent("warm-up", 1, 3, "warm-up", None, None, None, b"{}", 0.0)
    await sink.send([warm])
    return sink


async def _run_sink(
    url: str, prefix: str, events: Sequence[StreamEvent], batch: int, redis_pid: int
) -> Timed:
    sink = await _warm_sink(url, prefix)
    try:

        async def write() -> None:
            for start in range(0, len(events), batch):
                await sink.send(events[start : start + batch])

        return await _timed(write, redis_pid)
    finally:
        await sink.close()


async def _run_runner(
    url: str, prefix: str, events: Sequence[StreamEvent], batch: int, redis_pid: int
) -> Timed:
    sink = await _warm_sink(url, prefix)
    try:
        runner = SinkRunner(
            _source(events),
            [sink],
            _no_dead_letters,
            batch_size=batch,
            own_sinks=False,
            name=STREAM_ID,
        )
        timed = await _timed(runner.run, redis_pid)
        expected_batches = -(-len(events) // batch)
        if runner.sent != len(events) or runner.batches != expected_batches:
            raise BenchError(
                f"the runner sent {runner.sent} records in {runner.batches} batches, "
                f"expected {len(events)} in {expected_batches}"
            )
        return timed
    finally:
        await sink.close()


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Timed:
    """Wall and CPU time of one write, and redis-server's CPU meanwhile."""

    wall_s: float
    cpu_s: float
    redis_cpu_s: float | None = None


async def _timed(write: Callable[[], Awaitable[None]], redis_pid: int) -> Timed:
    gc.collect()
    redis_before = _process_cpu_s(redis_pid)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await write()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    redis_after = _process_cpu_s(redis_pid)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    redis_cpu = (
        redis_after - redis_before if redis_before is not None and redis_after is not None else None
    )
    return Timed(wall, cpu, redis_cpu)


async def _check_key(url: str, key: str, events: Sequence[StreamEvent]) -> None:
    """Every record landed, and the first is byte for byte what was meant; then drop the key."""
    client = aioredis.Redis.from_url(url)
    try:
        length = await client.xlen(key)
        first = await client.xrange(key, count=1)
        if length != len(events) or not first:
            raise BenchError(f"{key} holds {length} entries, expected {len(events)}")
        fields = first[0][1] or {}
        expected = {
            b"record": encode_record(events[0]),
            b"idempotency_key": idempotency_key(events[0]).encode("ascii"),
        }
        if fields != expected:
            raise BenchError(f"the first entry of {key} is not the first record")
        await client.delete(key, f"{key.removesuffix(STREAM_ID)}warm-up")
    finally:
        await client.aclose()


async def _measure(
    url: str, redis_pid: int, scenario: str, events: Sequence[StreamEvent], batch: int, serial: int
) -> Measurement:
    prefix = f"bench-sinks-{serial}:"
    key = f"{prefix}{STREAM_ID}"
    if scenario == "raw":
        timed = await _run_raw(url, key, events, batch, redis_pid)
    elif scenario == "sink":
        timed = await _run_sink(url, prefix, events, batch, redis_pid)
    else:
        timed = await _run_runner(url, prefix, events, batch, redis_pid)
    await _check_key(url, key, events)
    return Measurement(scenario, batch, len(events), timed.wall_s, timed.cpu_s, timed.redis_cpu_s)


# --------------------------------------------------------------------------
# Without Redis
# --------------------------------------------------------------------------


class _NullSink:
    """A sink that takes every batch and does nothing with it."""

    name = "null"

    async def start(self) -> None:
        return None

    async def send(self, batch: Sequence[Item]) -> None:
        return None

    async def close(self) -> None:
        return None


async def _plain_batches(items: AsyncIterator[StreamEvent], sink: _NullSink, size: int) -> int:
    """Batches of ``size`` as they come, without a linger timer: what the runner replaces."""
    sent = 0
    batch: list[Item] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            await sink.send(batch)
            sent += len(batch)
            batch = []
    if batch:
        await sink.send(batch)
        sent += len(batch)
    return sent


async def _inprocess_table(events: Sequence[StreamEvent], batches: Sequence[int]) -> list[str]:
    sample = events[0]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for event in events[:2000]:
            encode_record(event)
        best = min(best, (time.perf_counter() - started) / 2000)
    rows = [(f"`encode_record(event)`, {len(sample.raw):,} B body", best * 1e6)]
    for batch in batches:
        best = float("inf")
        for _ in range(5):
            runner = SinkRunner(_source(events), [_NullSink()], _no_dead_letters, batch_size=batch)
            started = time.perf_counter()
            await runner.run()
            best = min(best, (time.perf_counter() - started) / len(events))
            if runner.sent != len(events):
                raise BenchError(f"the runner sent {runner.sent} of {len(events)}")
        rows.append((f"`SinkRunner` → a sink that does nothing, batch size {batch}", best * 1e6))
    for batch in batches:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            sent = await _plain_batches(_source(events), _NullSink(), batch)
            best = min(best, (time.perf_counter() - started) / len(events))
            if sent != len(events):
                raise BenchError(f"the plain loop sent {sent} of {len(events)}")
        rows.append(
            (
                f"for comparison: a plain `async for` batching loop → the same sink, "
                f"batch size {batch}",
                best * 1e6,
            )
        )
    return [
        f"Without Redis (µs per record, best of 5, {len(events):,} records per run):",
        "",
        "| operation | µs per record |",
        "|---|--:|",
        *(f"| {label} | {us:.2f} |" for label, us in rows),
    ]


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _table(
    args: argparse.Namespace,
    template: Template,
    results: dict[tuple[int, str], list[Measurement]],
    inprocess: list[str],
) -> str:
    lines = [
        f"{args.count:,} records per measurement, each a distinct conversation snapshot "
        f"(`eventBody` {len(template.body):,} B, record "
        f"{len(encode_record(_events(template, 1)[0])):,} B), "
        f"`XADD ... MAXLEN ~ {MAXLEN:,}`, median of {args.repeat} interleaved repetitions.",
        "",
        "| scenario | batch | records/s | vs baseline | client CPU µs/record | client busy "
        "| redis-server CPU µs/record |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for batch in args.batch:
        base = _median([m.rps for m in results[(batch, BASELINE)]])
        for key, label in SCENARIOS.items():
            runs = results[(batch, key)]
            rps = _median([m.rps for m in runs])
            redis_us = [u for m in runs if (u := m.redis_us) is not None]
            cells = [
                label,
                f"{batch}",
                f"{rps:,.0f}",
                f"{rps / base * 100:.0f} %",
                f"{_median([m.cpu_us for m in runs]):.1f}",
                f"{_median([m.busy for m in runs]) * 100:.0f} %",
                f"{_median(redis_us):.1f}" if redis_us else "n/a",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *inprocess]
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    template = snapshot_template(8000)
    events = _events(template, args.count)
    with _redis_server() as (url, process):
        info = await _server_version(url)
        _progress(
            f"python {platform.python_version()}, redis-py {redis.__version__}, "
            f"msgspec {msgspec.__version__}, redis-server {info}, {os.cpu_count()} CPUs"
        )
        results: dict[tuple[int, str], list[Measurement]] = {
            (b, s): [] for b in args.batch for s in SCENARIOS
        }
        serial = 0
        for repetition in range(1, args.repeat + 1):
            for batch in args.batch:
                for scenario in SCENARIOS:
                    serial += 1
                    m = await _measure(url, process.pid, scenario, events, batch, serial)
                    results[(batch, scenario)].append(m)
                    _progress(
                        f"[{repetition}/{args.repeat}] batch {batch:>3} {scenario:<7}"
                        f" {m.rps:>9,.0f} records/s  client {m.cpu_us:6.1f} µs/record,"
                        f" busy {m.busy:4.0%}  redis {m.redis_us or 0:5.1f} µs/record"
                    )
    inprocess = await _inprocess_table(events, args.batch)
    print(_table(args, template, results, inprocess))
    return 0


async def _server_version(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return str(info.get("redis_version", "?"))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_sinks",
        description="RedisStreamsSink through SinkRunner against raw redis-py pipelined XADD.",
    )
    parser.add_argument("--count", type=int, default=20_000, help="records per measurement")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 10, 100], help="batch sizes (default 1 10 100)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.count >= MAXLEN or args.repeat < 1 or min(args.batch) < 1:
        parser.error(f"need 1 <= --count < {MAXLEN}, --repeat >= 1, --batch sizes >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    return run_benchmark(_main, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
