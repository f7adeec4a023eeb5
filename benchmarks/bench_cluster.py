"""A cluster's Redis traffic per instance, and how long a failover takes.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_cluster [--streams 9 90] [--instances N] [--kills K]

Instances of one configuration with a ``[cluster]`` section share its
streams through leases in Redis (:mod:`genesys_mux.cluster`). That costs
Redis traffic that a lone instance does not send: every ``heartbeat_s``
each instance renews its member key and its leases, lists the members and
reads every stream's lease to compute the placement. The streams' state
(checkpoints, every ``checkpoint_interval_s``) goes to the same Redis. And
a stream whose instance dies is carried on by another only once its lease
has expired, so a failover takes up to ``lease_ttl_s`` + ``heartbeat_s``.
This benchmark measures both, with real ``python -m genesys_mux run -c
FILE --base-url URL`` processes against one emulator (in a process of its
own, its simulated contact centre on at ``--rate`` conversations/s) and a
fresh ``redis-server`` per measurement (bench_sinks', persistence off).

**Commands per second.** For each count of ``--streams`` (9 and 90), every
stream ``filter = {}`` (every conversation of every queue) and no sinks, so
the only Redis traffic is the cluster's and the checkpoints'
(``checkpoint_interval_s = 1``):

* ``cluster``: ``--instances`` (3) processes with ``[cluster]`` at the
  defaults (``lease_ttl_s = 10``, ``heartbeat_s`` a third of it); the
  cluster's Redis keeps the state.
* ``single, Redis state``: one process, no ``[cluster]``, ``[state] url``
  on the Redis: the same checkpoints, no leases.
* ``single, SQLite state``: one process, no ``[cluster]``, the default
  store: it should send Redis nothing at all (checked once, at the
  largest stream count).

Once every stream is carried (by each instance its share, none on
standby), the benchmark records every command Redis executes for
``--window`` seconds with ``MONITOR``, which names the client connection
of each command and shows the commands a Lua script runs. Connections are
matched to instances through ``/proc`` (each instance's sockets and their
local ports). Commands are sorted by the keys they touch: lease and
membership (``...cluster:{name}:...``), checkpoint (``...state:...``, and
the store's ``MULTI``/``EXEC``) or other. The commands a script runs
inside an ``EVALSHA`` are counted apart: they are not round trips.
``INFO commandstats`` cannot make that split (it counts a script's inner
``SET`` like a client's, and the member heartbeat and the checkpoint
header are both ``SET``); its total over the window is shown as a check.
Each instance's lease traffic is counted between its first and last
heartbeat in the window, and its checkpoint traffic between its first and
last checkpoint transaction: whole rounds, so the rate does not depend on
how many rounds happen to fall into the window (``commandstats``, over the
plain window, does: four heartbeats of 3.3 s can fall into 12 s).

**Failover.** ``--instances`` processes with ``lease_ttl_s =
--failover-ttl`` (2 s) and ``heartbeat_s = --failover-heartbeat`` (0.3 s),
``--failover-streams`` (9) streams, each with a Redis stream sink so that
delivery can be seen. ``--kills`` (20) times: the holder of one stream (in
turn) is sent ``SIGKILL``; the benchmark polls the lease key every 10 ms
until another instance holds it, and the sink's key until the new owner's
first record lands. The time a survivor took the lease is exact to the
millisecond: the lease's ``PTTL`` when first seen says how long ago it was
set. The time of the record is its stream entry id (Redis's clock in ms).
After each kill a replacement process is started, and the next kill waits
until the cluster is balanced again.

The Markdown tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import redis
import redis.asyncio as aioredis

from benchmarks.bench_pool import (
    CLIENT_ID,
    CLIENT_SECRET,
    BenchError,
    _median,
    _percentile,
    _process_cpu_s,
    _progress,
    _start_emulator,
    run_benchmark,
)
from benchmarks.bench_sinks import _free_port, _redis_server, _server_version
from benchmarks.bench_streams import _emulator_process
from genesys_mux.cluster import leases
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.sinks.base import EventRecord, GapRecord, decode_record

#: Scenario key -> label in the tables, in the order they run and are shown.
SCENARIOS: dict[str, str] = {
    "cluster": "cluster",
    "redis": "single, Redis state",
    "sqlite": "single, SQLite state",
}
CLUSTER_NAME = "bench"
#: The configuration's default state prefix: cluster and state keys live under it.
PREFIX = "genesys-mux:"
SINK_PREFIX = "out:"
#: The simulated org: the emulator's defaults.
QUEUES, AGENTS = 10, 50
START_TIMEOUT_S = 60.0
FAILOVER_TIMEOUT_S = 30.0
POLL_S = 0.01
#: Traffic areas, in the order of the tables.
LEASE, CHECKPOINT, OTHER = "lease & membership", "checkpoint", "other"
#: sha1 of each LeaseTable script -> its name, to tell the EVALSHAs apart.
SCRIPTS = {
    hashlib.sha1(text.encode()).hexdigest(): name  # noqa: S324 - Redis names scripts by SHA-1
    for name, text in (
        ("acquire", leases._ACQUIRE),
        ("renew", leases._RENEW),
        ("release", leases._RELEASE),
        ("signal-ready", leases._SIGNAL_READY),
        ("promise", leases._PROMISE),
        ("withdraw-ready", leases._WITHDRAW_READY),
        ("clear-ready", leases._CLEAR_READY),
    )
}


# --------------------------------------------------------------------------
# The emulator and the instances
# --------------------------------------------------------------------------


def traffic_emulator(rate: float, settings: EmulatorSettings) -> Emulator:
    """bench_streams' silent emulator with its simulated contact centre on at ``rate``."""
    return Emulator(
        dataclasses.replace(settings, queues=QUEUES, agents=AGENTS, rate=rate, traffic=True)
    )


def config_text(
    scenario: str,
    streams: int,
    redis_url: str,
    *,
    lease_ttl_s: float | None = None,
    heartbeat_s: float | None = None,
    sinks: bool = False,
) -> str:
    """The configuration file every instance of a measurement runs."""
    lines = [
        "[settings]",
        f"max_streams = {streams}",
        'dlq_path = "dlq.jsonl"',
        "",
        "[state]",
        "checkpoint_interval_s = 1",
    ]
    if scenario == "redis":
        lines.append(f'url = "{redis_url}"')
    elif scenario == "sqlite":
        lines.append('path = "state.db"')
    else:
        lines += ["", "[cluster]", f'url = "{redis_url}"', f'name = "{CLUSTER_NAME}"']
        if lease_ttl_s is not None:
            lines.append(f"lease_ttl_s = {lease_ttl_s:g}")
        if heartbeat_s is not None:
            lines.append(f"heartbeat_s = {heartbeat_s:g}")
    for stream_id in stream_ids(streams):
        lines += ["", "[[streams]]", f'id = "{stream_id}"', "filter = {}"]
        if sinks:
            lines += [
                "",
                "  [[streams.sinks]]",
                '  type = "redis"',
                f'  url = "{redis_url}"',
                f'  prefix = "{SINK_PREFIX}"',
            ]
    return "\n".join(lines) + "\n"


def stream_ids(count: int) -> list[str]:
    """The streams' ids: s00, s01, ..."""
    width = len(str(count - 1))
    return [f"s{i:0{width}d}" for i in range(count)]


def _instance_env() -> dict[str, str]:
    """This environment without Genesys credentials or a client choice, plus the demo client."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GENESYSCLOUD_") and key != "GENESYS_MUX_CLIENT"
    }
    env["GENESYSCLOUD_OAUTHCLIENT_ID"] = CLIENT_ID
    env["GENESYSCLOUD_OAUTHCLIENT_SECRET"] = CLIENT_SECRET
    return env


@dataclass(slots=True)
class Instance:
    """One ``genesys-mux run`` process and its admin server."""

    process: asyncio.subprocess.Process
    admin_port: int
    log: Path

    @property
    def pid(self) -> int:
        """Its process id (the end of its default cluster instance id)."""
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        """The end of its standard error, for a failure message."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def start_instance(workdir: Path, base_url: str, serial: int) -> Instance:
    """Start ``python -m genesys_mux run -c mux.toml`` in ``workdir`` against the emulator."""
    port = _free_port()
    log = workdir / f"instance-{serial}.log"
    with log.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "genesys_mux",
            "run",
            "-c",
            "mux.toml",
            "--base-url",
            base_url,
            "--admin-port",
            str(port),
            stdin=asyncio.subprocess.DEVNULL,
            # Streams without sinks print their events: nobody reads them.
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            cwd=workdir,
            env=_instance_env(),
        )
    return Instance(process, port, log)


async def stop_instances(instances: Iterable[Instance], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever has not ended after ``timeout_s``."""
    running = [i for i in instances if i.process.returncode is None]
    for instance in running:
        with contextlib.suppress(ProcessLookupError):
            instance.process.send_signal(signal.SIGTERM)
    waits = [asyncio.create_task(i.process.wait()) for i in running]
    if waits:
        await asyncio.wait(waits, timeout=timeout_s)
        for instance in running:
            if instance.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    instance.process.kill()
        await asyncio.gather(*waits)


def _check_alive(instances: Iterable[Instance]) -> None:
    for instance in instances:
        if instance.process.returncode is not None:
            raise BenchError(
                f"instance {instance.pid} exited with {instance.process.returncode}:\n"
                + instance.log_tail()
            )


async def status(session: aiohttp.ClientSession, instance: Instance) -> dict[str, Any] | None:
    """The instance's ``/status``, or None while it does not answer."""
    try:
        async with (
            asyncio.timeout(2.0),
            session.get(f"http://127.0.0.1:{instance.admin_port}/status") as resp,
        ):
            if resp.status != 200:
                return None
            answer: dict[str, Any] = await resp.json()
            return answer
    except (aiohttp.ClientError, TimeoutError):
        return None


async def settled(
    session: aiohttp.ClientSession, instances: Sequence[Instance], streams: Sequence[str]
) -> list[dict[str, Any]] | None:
    """Every instance's ``/status`` if the streams are all carried and balanced, else None.

    Balanced: each stream held by exactly one instance, each instance
    holding its share (within one), none on standby. A single instance
    (no cluster) is settled once it is ready and has every stream.
    """
    answers = [await status(session, i) for i in instances]
    if any(a is None or not a.get("ready") for a in answers):
        return None
    found = [a for a in answers if a is not None]
    if all("cluster" not in a for a in found):
        return found if all(set(a["streams"]) == set(streams) for a in found) else None
    held = [set(a["cluster"]["held"]) for a in found]
    counts = [len(h) for h in held]
    if any(a["cluster"]["standby"] for a in found) or sum(counts) != len(streams):
        return None
    if set().union(*held) != set(streams) or max(counts) - min(counts) > 1:
        return None
    return found


async def wait_settled(
    session: aiohttp.ClientSession,
    instances: Sequence[Instance],
    streams: Sequence[str],
    timeout_s: float = START_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Poll (towards a deadline) until :func:`settled` twice in a row, 0.25 s apart."""
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while True:
        _check_alive(instances)
        answer = await settled(session, instances, streams)
        in_a_row = in_a_row + 1 if answer is not None else 0
        if answer is not None and in_a_row >= 2:
            return answer
        if time.monotonic() > deadline:
            raise BenchError(
                f"the streams were not carried and balanced within {timeout_s:g} s:\n"
                + "\n".join(i.log_tail(5) for i in instances)
            )
        await asyncio.sleep(0.25)  # polling processes towards a deadline


# --------------------------------------------------------------------------
# What Redis executes: MONITOR, and whose connection sent it
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One command Redis executed, as MONITOR showed it."""

    time: float
    #: The client's local port; None for a command run inside a Lua script.
    port: int | None
    #: The command's name and first few arguments.
    words: tuple[str, ...]


class Monitor:
    """Everything Redis executes while it runs (``MONITOR`` on a connection of its own)."""

    def __init__(self, url: str) -> None:
        self.commands: list[Command] = []
        # No read timeout: a store that sends nothing is a valid answer.
        self._client = aioredis.Redis.from_url(url, socket_timeout=None)
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        self._task = asyncio.create_task(self._read(), name="bench-monitor")
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._task.done():
            self._task.result()
            raise BenchError("MONITOR ended at once")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _read(self) -> None:
        async with self._client.monitor() as monitor:
            self._started.set()
            async for entry in monitor.listen():
                port = entry.get("client_port")
                self.commands.append(
                    Command(
                        float(entry["time"]),
                        int(port) if entry.get("client_type") != "lua" and port else None,
                        tuple(str(entry["command"]).split(" ", 6)[:6]),
                    )
                )


def redis_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the process's TCP connections to ``server_port`` (from ``/proc``)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rpartition(":")[2], 16) == server_port:
                    ports.add(int(local.rpartition(":")[2], 16))
    return ports


def _area_and_kind(key: str) -> tuple[str, str]:
    """Which traffic a key belongs to, and what kind of key it is (``lease``, ``member``...)."""
    cluster = f"{PREFIX}cluster:{{{CLUSTER_NAME}}}:"
    state = f"{PREFIX}state:"
    if key.startswith(cluster):
        return LEASE, key[len(cluster) :].split(":", 1)[0]
    if key.startswith(state):
        kind = key[len(state) :].split(":", 1)[0]
        kind = {"stream": "header", "memory": "remembered"}.get(kind, kind)
        return CHECKPOINT, kind + (" (new)" if key.endswith(":new") else "")
    if key.startswith(SINK_PREFIX):
        return OTHER, "sink"
    return OTHER, key[:20]


def classify(words: Sequence[str]) -> tuple[str, str]:
    """A command's area (lease & membership, checkpoint, other) and its label in the table."""
    name = words[0].upper()
    if name in ("MULTI", "EXEC"):
        return CHECKPOINT, f"`{name}`"  # only the state store uses transactions here
    if name == "EVALSHA":
        script = SCRIPTS.get(words[1], "script") if len(words) > 1 else "script"
        area, _ = _area_and_kind(words[3] if len(words) > 3 else "")
        return area, f"`EVALSHA` {script}"
    if name == "SCAN":
        key = words[3] if len(words) > 3 and words[2].upper() == "MATCH" else ""
    else:
        key = words[1] if len(words) > 1 else ""
    area, kind = _area_and_kind(key)
    if area == OTHER and kind != "sink":
        return OTHER, f"`{' '.join(words[:2]) if name in ('CLIENT', 'SCRIPT') else name}`"
    return area, f"`{name}` {kind}"


#: Each periodic area's round, by the command that opens it: the member
#: heartbeat (every ``heartbeat_s``) and the checkpoint's transaction (every
#: ``checkpoint_interval_s``).
MARKERS: dict[str, tuple[str, str]] = {
    LEASE: (LEASE, "`SET` member"),
    CHECKPOINT: (CHECKPOINT, "`MULTI`"),
}


@dataclass(slots=True)
class InstanceTraffic:
    """One instance's commands, each area over its own window of whole rounds."""

    held: int
    #: Area -> seconds from its first round to its last (the capture, for an
    #: area without rounds).
    window_s: dict[str, float] = field(default_factory=dict)
    #: Area -> whole rounds counted.
    rounds: dict[str, int] = field(default_factory=dict)
    #: (area, label) -> commands the instance sent.
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Area -> commands its scripts ran inside an ``EVALSHA`` (not round trips).
    in_scripts: Counter[str] = field(default_factory=Counter)

    def rate(self, area: str | None = None) -> float:
        """Commands per second it sent (of one area, or all)."""
        if area is None:
            return sum(self.rate(a) for a in self.window_s)
        return sum(n for (a, _), n in self.sent.items() if a == area) / self.window_s[area]

    def label_rate(self, label: tuple[str, str]) -> float:
        """Commands per second it sent of one kind."""
        return self.sent[label] / self.window_s[label[0]]

    def script_rate(self) -> float:
        """Commands per second run inside its scripts."""
        return sum(n / self.window_s[a] for a, n in self.in_scripts.items())


def attribute(
    commands: Sequence[Command],
    ports: Mapping[int, int],
    held: Mapping[int, int],
    capture: tuple[float, float],
) -> dict[int, InstanceTraffic]:
    """Each instance's traffic, each area between its first and last round.

    ``ports`` maps a client port to an instance (its pid); a command run
    inside a script belongs to the ``EVALSHA`` just before it. An area
    with fewer than two rounds in the capture is counted over all of it.
    """
    owned: list[tuple[float, int, bool, tuple[str, str]]] = []
    last: int | None = None
    for command in commands:
        if command.port is not None:
            last = ports.get(command.port)
            if last is not None:
                owned.append((command.time, last, False, classify(command.words)))
        elif last is not None:
            owned.append((command.time, last, True, classify(command.words)))
    found: dict[int, InstanceTraffic] = {}
    for pid, count in held.items():
        mine = [(t, inner, label) for t, p, inner, label in owned if p == pid]
        traffic = InstanceTraffic(count)
        for area in (LEASE, CHECKPOINT, OTHER):
            marker = MARKERS.get(area)
            marks = [t for t, inner, label in mine if not inner and label == marker]
            start, end = (marks[0], marks[-1]) if len(marks) >= 2 else capture
            traffic.window_s[area] = end - start
            traffic.rounds[area] = max(0, len(marks) - 1)
            for t, inner, label in mine:
                if label[0] == area and start <= t < end:
                    if inner:
                        traffic.in_scripts[area] += 1
                    else:
                        traffic.sent[label] += 1
        found[pid] = traffic
    return found


# --------------------------------------------------------------------------
# Commands per second
# --------------------------------------------------------------------------


@dataclass(slots=True)
class RateResult:
    """One scenario at one stream count."""

    scenario: str
    streams: int
    instances: dict[int, InstanceTraffic]
    #: INFO commandstats: calls of every command over the whole window, per second.
    commandstats_rate: float
    #: Commands MONITOR saw from connections of no instance (the benchmark's own).
    unattributed: int
    redis_busy: float | None
    events_per_stream_s: float
    window_s: float


def _held(answers: Sequence[Mapping[str, Any]]) -> list[set[str]]:
    """The streams each instance carries, from their ``/status``."""
    return [set(a["cluster"]["held"] if "cluster" in a else a["streams"]) for a in answers]


async def _commandstats(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


async def measure_rates(
    args: argparse.Namespace, base_url: str, scenario: str, streams: int
) -> RateResult:
    """Start the scenario's instances on a fresh Redis, wait until settled, record a window."""
    ids = stream_ids(streams)
    count = args.instances if scenario == "cluster" else 1
    with (
        _redis_server("bench-cluster-redis-") as (url, server),
        tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
    ):
        workdir = Path(tmp)
        (workdir / "mux.toml").write_text(config_text(scenario, streams, url))
        server_port = int(url.rsplit(":", 1)[1].split("/")[0])
        instances = [await start_instance(workdir, base_url, n) for n in range(count)]
        client = aioredis.Redis.from_url(url)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_settled(session, instances, ids)
                # The first checkpoint of a stream taken is a complete one; then incremental.
                await asyncio.sleep(1.5)
                async with Monitor(url) as monitor:
                    before = await settled(session, instances, ids)
                    stats_before = await _commandstats(client)
                    cpu_before = _process_cpu_s(server.pid)
                    # Wall clock: MONITOR stamps commands with Unix time.
                    captured_from = time.time()
                    await asyncio.sleep(args.window)
                    capture = (captured_from, time.time())
                    window = capture[1] - capture[0]
                    cpu_after = _process_cpu_s(server.pid)
                    stats_after = await _commandstats(client)
                    after = await settled(session, instances, ids)
                if before is None or after is None or _held(before) != _held(after):
                    raise BenchError("streams moved between instances during the window")
                ports = {p: i.pid for i in instances for p in redis_ports(i.pid, server_port)}
                if scenario != "sqlite" and set(ports.values()) != {i.pid for i in instances}:
                    raise BenchError("cannot find the instances' connections to Redis in /proc")
        finally:
            await client.aclose()
            await stop_instances(instances)
    delivered = [
        s["delivered"] - b["streams"][sid]["delivered"]
        for a, b in zip(after, before, strict=True)
        for sid, s in a["streams"].items()
        if sid in b["streams"]
    ]
    held = {
        i.pid: len(a["cluster"]["held"]) if "cluster" in a else len(a["streams"])
        for i, a in zip(instances, after, strict=True)
    }
    skip = {"cmdstat_info", "cmdstat_monitor"}
    calls = sum(v - stats_before.get(k, 0) for k, v in stats_after.items() if k not in skip)
    unattributed = sum(1 for c in monitor.commands if c.port is not None and c.port not in ports)
    traffic = attribute(monitor.commands, ports, held, capture)
    return RateResult(
        scenario=scenario,
        streams=streams,
        instances=traffic,
        commandstats_rate=calls / window,
        unattributed=unattributed,
        redis_busy=None
        if cpu_before is None or cpu_after is None
        else (cpu_after - cpu_before) / window,
        events_per_stream_s=sum(delivered) / max(1, len(delivered)) / window,
        window_s=window,
    )


# --------------------------------------------------------------------------
# Failover
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Failover:
    """One kill, and what followed (times in seconds after the kill)."""

    stream_id: str
    victim: int
    successor: int
    #: When the victim's lease expired (the TTL it had left).
    expired_s: float
    #: When a survivor held the lease.
    taken_s: float
    #: When the new owner's first record landed in the sink.
    delivered_s: float
    first_record: str


def _holder_pid(value: bytes | None) -> int | None:
    """The pid in a lease value ``<host>-<pid>|<token>`` (None for no lease)."""
    if value is None:
        return None
    holder = value.decode().rpartition("|")[0]
    return int(holder.rpartition("-")[2])


async def _lease(client: aioredis.Redis, stream_id: str) -> tuple[bytes | None, int]:
    key = f"{PREFIX}cluster:{{{CLUSTER_NAME}}}:lease:{stream_id}"
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        value, ttl = await pipe.execute()
    return value, int(ttl)


#: XRANGE's answer: (entry id, fields) pairs.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


async def _last_entry(client: aioredis.Redis, key: str) -> tuple[bytes, str | None]:
    """The sink key's last entry id, and the run (epoch) that wrote its last event."""
    last = cast(_Entries, await client.xrevrange(key, count=50))
    if not last:
        raise BenchError(f"nothing was delivered to {key} before the kill")
    epoch = None
    for _, fields in last:
        record = decode_record(fields[b"record"])
        if isinstance(record, EventRecord):
            epoch = record.epoch
            break
    return last[0][0], epoch


async def _first_new_record(
    client: aioredis.Redis, key: str, after: bytes, old_epoch: str | None, killed_at: float
) -> tuple[float, str]:
    """Poll until a record of the new owner lands after ``after``: its time and kind."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    cursor = after
    while time.monotonic() < deadline:
        found = cast(_Entries, await client.xrange(key, min=b"(" + cursor, count=100))
        for entry_id, fields in found:
            cursor = entry_id
            record = decode_record(fields[b"record"])
            landed = int(entry_id.split(b"-")[0]) / 1000
            if isinstance(record, EventRecord) and record.epoch == old_epoch:
                continue  # the victim's, sent before it died
            if landed + 0.001 < killed_at:
                continue
            kind = f"gap ({record.reason})" if isinstance(record, GapRecord) else "event"
            return landed, kind
        await asyncio.sleep(POLL_S)  # polling another process's writes
    raise BenchError(f"no new record in {key} within {FAILOVER_TIMEOUT_S:g} s of the kill")


async def _one_failover(
    client: aioredis.Redis,
    by_pid: Mapping[int, Instance],
    stream_id: str,
    ttl_ms: int,
) -> Failover:
    value, _ = await _lease(client, stream_id)
    victim = _holder_pid(value)
    if victim is None or victim not in by_pid:
        raise BenchError(f"stream {stream_id} is held by {value!r}, not by a live instance")
    sink_key = f"{SINK_PREFIX}{stream_id}"
    last_id, old_epoch = await _last_entry(client, sink_key)
    killed_at = time.time()
    by_pid[victim].process.kill()
    _, ttl_left = await _lease(client, stream_id)
    expired_at = killed_at + max(0, ttl_left) / 1000
    polled_at = time.time()
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while True:
        before_poll = time.time()
        value, ttl = await _lease(client, stream_id)
        successor = _holder_pid(value)
        if successor is not None and successor != victim:
            seen_at = time.time()
            # Set with PX ttl_ms: the TTL it has left says when, to the ms.
            taken_at = min(seen_at, max(polled_at, seen_at - (ttl_ms - ttl) / 1000))
            break
        polled_at = before_poll
        if time.monotonic() > deadline:
            raise BenchError(f"no survivor took {stream_id} within {FAILOVER_TIMEOUT_S:g} s")
        await asyncio.sleep(POLL_S)  # polling Redis for another process's lease
    landed, kind = await _first_new_record(client, sink_key, last_id, old_epoch, killed_at)
    return Failover(
        stream_id=stream_id,
        victim=victim,
        successor=successor,
        expired_s=expired_at - killed_at,
        taken_s=taken_at - killed_at,
        delivered_s=landed - killed_at,
        first_record=kind,
    )


async def measure_failovers(args: argparse.Namespace, base_url: str) -> list[Failover]:
    """``--kills`` failovers, a replacement started after each."""
    ids = stream_ids(args.failover_streams)
    ttl_ms = round(args.failover_ttl * 1000)
    results: list[Failover] = []
    with (
        _redis_server("bench-cluster-redis-") as (url, _),
        tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
    ):
        workdir = Path(tmp)
        text = config_text(
            "cluster",
            len(ids),
            url,
            lease_ttl_s=args.failover_ttl,
            heartbeat_s=args.failover_heartbeat,
            sinks=True,
        )
        (workdir / "mux.toml").write_text(text)
        serial = 0
        live: list[Instance] = []
        everyone: list[Instance] = []
        client = aioredis.Redis.from_url(url)
        try:
            for _ in range(args.instances):
                live.append(await start_instance(workdir, base_url, serial))
                serial += 1
            everyone += live
            async with aiohttp.ClientSession() as session:
                for kill in range(args.kills):
                    await wait_settled(session, live, ids)
                    # Every stream has delivered something, so the new owner's first record shows.
                    keys = [f"{SINK_PREFIX}{stream_id}" for stream_id in ids]
                    deadline = time.monotonic() + START_TIMEOUT_S
                    while await client.exists(*keys) < len(keys):
                        if time.monotonic() > deadline:
                            raise BenchError("some streams delivered nothing to their sink")
                        await asyncio.sleep(0.1)  # polling for the first delivery
                    by_pid = {i.pid: i for i in live}
                    result = await _one_failover(client, by_pid, ids[kill % len(ids)], ttl_ms)
                    results.append(result)
                    _progress(
                        f"[kill {kill + 1}/{args.kills}] {result.stream_id}: {result.victim}"
                        f" → {result.successor}  lease expired +{result.expired_s:.3f} s"
                        f"  taken +{result.taken_s:.3f} s"
                        f"  delivered +{result.delivered_s:.3f} s ({result.first_record})"
                    )
                    victim = by_pid[result.victim]
                    await victim.process.wait()
                    live.remove(victim)
                    replacement = await start_instance(workdir, base_url, serial)
                    serial += 1
                    live.append(replacement)
                    everyone.append(replacement)
        finally:
            await client.aclose()
            await stop_instances(everyone)
    return results


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found) if found else 0.0


def _rates_table(args: argparse.Namespace, results: Sequence[RateResult]) -> str:
    lines = [
        f"Commands Redis executed per second, per instance (mean over the instances; "
        f"each over its own window of whole rounds within {args.window:g} s), "
        f"emulator at {args.rate:g} new conversations/s, every stream `filter = {{}}` "
        "and no sinks, `checkpoint_interval_s = 1`; cluster: "
        f"{args.instances} instances, `lease_ttl_s = 10`, `heartbeat_s` 3.33 (the defaults).",
        "",
        "| configuration | streams | streams per instance | events/s per stream "
        "| lease & membership | checkpoint | other | **total per instance** "
        "| all instances | run inside scripts, per instance | `INFO commandstats`, all calls "
        "| redis-server CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        traffic = list(r.instances.values())
        per = [t.rate() for t in traffic]
        cells = [
            f"{SCENARIOS[r.scenario]}"
            + (f" ({len(traffic)} instances)" if r.scenario == "cluster" else ""),
            f"{r.streams}",
            " to ".join(sorted({str(t.held) for t in traffic}, key=int)),
            f"{r.events_per_stream_s:.1f}",
            f"{_mean(t.rate(LEASE) for t in traffic):.1f}",
            f"{_mean(t.rate(CHECKPOINT) for t in traffic):.1f}",
            f"{_mean(t.rate(OTHER) for t in traffic):.1f}",
            f"**{_mean(per):.1f}**",
            f"{sum(per):.1f}",
            f"{_mean(t.script_rate() for t in traffic):.1f}",
            f"{r.commandstats_rate:.1f}",
            f"{r.redis_busy * 100:.1f} %" if r.redis_busy is not None else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    measured = [r for r in results if r.scenario != "sqlite"]
    labels = sorted(
        {label for r in measured for t in r.instances.values() for label in t.sent},
        key=lambda label: ([LEASE, CHECKPOINT, OTHER].index(label[0]), label[1]),
    )
    lines += [
        "",
        "By command and key, per instance per second (mean over the instances):",
        "",
        "| configuration | streams |" + "".join(f" {label} |" for _, label in labels),
        "|---|--:|" + "--:|" * len(labels),
    ]
    for r in measured:
        cells = [SCENARIOS[r.scenario], f"{r.streams}"]
        for label in labels:
            rate = _mean(t.label_rate(label) for t in r.instances.values())
            cells.append(f"{rate:.2f}" if rate else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _failover_table(args: argparse.Namespace, failovers: Sequence[Failover]) -> str:
    bound = args.failover_ttl + args.failover_heartbeat
    phases = [
        (
            "kill → the victim's lease expires (the TTL it had left)",
            [f.expired_s for f in failovers],
        ),
        (
            "lease expired → a survivor holds it",
            [f.taken_s - f.expired_s for f in failovers],
        ),
        ("**kill → a survivor holds the lease**", [f.taken_s for f in failovers]),
        (
            "lease taken → its first record in the sink",
            [f.delivered_s - f.taken_s for f in failovers],
        ),
        ("**kill → the new owner's first record in the sink**", [f.delivered_s for f in failovers]),
    ]
    kinds = Counter(f.first_record for f in failovers)
    over = sum(1 for f in failovers if f.taken_s > bound)
    lines = [
        f"{len(failovers)} kills (`SIGKILL`) of the holder of one of {args.failover_streams} "
        f"streams, {args.instances} instances, `lease_ttl_s = {args.failover_ttl:g}`, "
        f"`heartbeat_s = {args.failover_heartbeat:g}`: bound lease_ttl_s + heartbeat_s = "
        f"{bound:g} s. Seconds after the kill:",
        "",
        "| phase | min | median | p90 | max |",
        "|---|--:|--:|--:|--:|",
    ]
    for label, values in phases:
        ordered = sorted(values)
        cells = [
            f"{ordered[0]:.3f}",
            f"{_median(ordered):.3f}",
            f"{_percentile(ordered, 0.9):.3f}",
            f"{ordered[-1]:.3f}",
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Failovers over the bound: {over} of {len(failovers)}. First record of the new owner: "
        + ", ".join(f"{kind} {n} times" for kind, n in kinds.most_common())
        + ".",
    ]
    return "\n".join(lines)


def _rate_line(r: RateResult) -> str:
    parts = [
        f"{pid}: {t.held} streams, {t.rate(LEASE):.1f} lease + {t.rate(CHECKPOINT):.1f} "
        f"checkpoint + {t.rate(OTHER):.1f} other /s ({t.rounds[LEASE]} heartbeat rounds, "
        f"{t.rounds[CHECKPOINT]} checkpoints)"
        for pid, t in r.instances.items()
    ]
    return (
        f"{SCENARIOS[r.scenario]:<20} {r.streams:>3} streams  "
        + "; ".join(parts)
        + f"  commandstats {r.commandstats_rate:.1f}/s, {r.unattributed} commands of no instance"
    )


async def _main(args: argparse.Namespace) -> int:
    with _redis_server("bench-cluster-redis-") as (url, _):
        version = await _server_version(url)
    _progress(
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"redis-py {redis.__version__}, redis-server {version}, {os.cpu_count()} CPUs"
    )
    started = time.monotonic()
    make = functools.partial(traffic_emulator, args.rate)
    emulator, stopper, base_url = await _start_emulator(
        None, functools.partial(_emulator_process, make)
    )
    rates: list[RateResult] = []
    failovers: list[Failover] = []
    try:
        for streams in args.streams:
            for scenario in SCENARIOS:
                if scenario == "sqlite" and streams != max(args.streams):
                    continue  # it sends Redis nothing: checked once, at the most streams
                result = await measure_rates(args, base_url, scenario, streams)
                rates.append(result)
                _progress(_rate_line(result))
        if args.kills:
            failovers = await measure_failovers(args, base_url)
    finally:
        stopper.close()
        await emulator.stop()
    if rates:
        print(_rates_table(args, rates))
    if failovers:
        print("\n" + _failover_table(args, failovers))
    _progress(f"the run took {time.monotonic() - started:.0f} s")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_cluster",
        description="A cluster's Redis commands/s per instance, and failover times.",
    )
    parser.add_argument(
        "--streams",
        type=int,
        nargs="*",
        default=[9, 90],
        help="stream counts to measure commands/s at (default 9 90; none: skip)",
    )
    parser.add_argument("--instances", type=int, default=3, help="cluster instances (default 3)")
    parser.add_argument(
        "--window", type=float, default=12.0, help="seconds of traffic recorded (default 12)"
    )
    parser.add_argument(
        "--rate", type=float, default=2.0, help="emulator's new conversations/s (default 2)"
    )
    parser.add_argument("--kills", type=int, default=20, help="failovers (default 20; 0: skip)")
    parser.add_argument(
        "--failover-streams", type=int, default=9, help="streams for the failovers (default 9)"
    )
    parser.add_argument(
        "--failover-ttl", type=float, default=2.0, help="lease_ttl_s for the failovers (default 2)"
    )
    parser.add_argument(
        "--failover-heartbeat",
        type=float,
        default=0.3,
        help="heartbeat_s for the failovers (default 0.3)",
    )
    args = parser.parse_args(argv)
    if (
        args.instances < 2
        or any(s < 1 or s > 1000 for s in args.streams)
        or args.window < 5
        or args.rate < 0
        or args.kills < 0
        or args.failover_streams < args.instances
        or not 0 < args.failover_heartbeat < args.failover_ttl
        or args.failover_ttl < 1
    ):
        parser.error(
            "need --instances >= 2, 1 <= --streams <= 1000, --window >= 5, --rate >= 0, "
            "--kills >= 0, --failover-streams >= --instances, "
            "0 < --failover-heartbeat < --failover-ttl, --failover-ttl >= 1"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    return run_benchmark(_main, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
