"""Fixtures for the sink tests: real redis-server and nats-server, webhook receivers, events.

* ``redis_server`` starts ``redis-server`` on a free loopback port with no
  automatic persistence, waits (to a deadline) until it answers PING, and
  can be stopped and started again on the same port. A stop is a
  ``SHUTDOWN SAVE``: a maintenance restart that keeps the data, as a real
  deployment's Redis would, so "everything arrives" can be checked across
  it. The test is skipped, with the reason, when redis-server is missing
  (``scripts/test`` installs it).
* ``nats_server`` starts ``nats-server -js`` the same way, with a
  temporary store directory that survives a stop and start.
* :class:`Receiver` is an aiohttp.web server on 127.0.0.1:0 that checks the
  HMAC of every request independently of the sink's own code (Standard
  Webhooks with the ``standardwebhooks`` package, the genesys-mux scheme
  with the stdlib), and answers according to a script: fail N times, hang,
  or refuse.
* :func:`real_events` builds events from the emulator's simulated contact
  centre, so bodies are real Genesys snapshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import standardwebhooks
from aiohttp import web

from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import Gap, StreamEvent
from genesys_mux.emulator.org import ContactCentre
from genesys_mux.sinks.webhook import SigningScheme

EPOCH = 1_800_000_000.0
START_DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command over a fresh connection and return the raw reply."""
    payload = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w)}\r\n{w}\r\n".encode() for w in words
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        try:
            return sock.recv(1024)
        except ConnectionResetError:
            return b""


def wait_until_up(
    process: subprocess.Popen[bytes], probe: Callable[[], bool], log_path: Path, what: str
) -> None:
    """Poll ``probe`` until it is true; fail with the server's log if it exits or is too slow.

    ``probe`` may raise OSError while the server is not listening yet.
    """
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        if process.poll() is not None:
            log = log_path.read_text() if log_path.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log}")
        try:
            if probe():
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {START_DEADLINE_S} s")
        time.sleep(0.02)  # polling towards a deadline, not synchronisation


@dataclass
class RedisServer:
    """A redis-server child process on a fixed loopback port."""

    binary: str
    port: int
    directory: Path
    #: More command-line options (``--cluster-enabled yes``, say).
    options: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start_sync(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, binary found by shutil.which
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--dbfilename",
                "dump.rdb",
                "--logfile",
                str(self.log_path),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.starts += 1
        wait_until_up(
            self.process,
            lambda: _command(self.port, "PING").startswith(b"+PONG"),
            self.log_path,
            "redis-server",
        )

    def stop_sync(self, *, save: bool = True) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if save:
            # SHUTDOWN SAVE writes dump.rdb even with no save points, and the
            # next start loads it: a restart that keeps the data.
            try:
                _command(self.port, "SHUTDOWN", "SAVE", timeout=5.0)
            except OSError:
                process.terminate()
        else:
            process.kill()
        process.wait(timeout=START_DEADLINE_S)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self, *, save: bool = True) -> None:
        await asyncio.to_thread(lambda: self.stop_sync(save=save))

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server on a free port, stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed: the Redis sink tests need a real one "
            "(apt-get install redis-server; scripts/test installs it)"
        )
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, free_port(), directory)
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync(save=False)


def _nats_info(port: int) -> bytes:
    """The INFO line a NATS server greets a client with."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        return sock.recv(4096)


@dataclass
class NatsServer:
    """A ``nats-server -js`` child process on a fixed loopback port with its own store.

    ``user``/``password`` make it require them. A stop is a SIGTERM, after
    which the server has written its file store; the next start on the same
    directory finds every stream and message again.
    """

    binary: str
    port: int
    directory: Path
    user: str | None = None
    password: str | None = None
    #: More command-line options (TLS, say).
    options: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats.log"

    def start_sync(self) -> None:
        assert self.process is None, "already running"
        argv = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        argv += ["-sd", str(self.directory / "store"), "-l", str(self.log_path)]
        if self.user is not None and self.password is not None:
            argv += ["--user", self.user, "--pass", self.password]
        argv += self.options
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, binary found by shutil.which
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.starts += 1
        wait_until_up(
            self.process,
            lambda: b'"jetstream":true' in _nats_info(self.port),
            self.log_path,
            "nats-server",
        )

    def stop_sync(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        process.wait(timeout=START_DEADLINE_S)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)


def nats_binary() -> str:
    """The nats-server binary; skips the test (saying how to install it) when missing."""
    binary = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if binary is None:
        pytest.skip(
            "nats-server is not installed: the NATS sink tests need a real one "
            "(apt-get install nats-server; scripts/test installs it)"
        )
    return binary


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A running ``nats-server -js`` on a free port with a temporary store, stopped after."""
    directory = tmp_path / "nats"
    directory.mkdir()
    server = NatsServer(nats_binary(), free_port(), directory)
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


# -- events ------------------------------------------------------------------------


def real_bodies(count: int) -> list[tuple[str, bytes, str | None]]:
    """``count`` (topic, body, conversation id) from the simulated contact centre."""
    org = ContactCentre(seed=3, queues=2, agents=6, rate=4.0, epoch=EPOCH)
    found: list[tuple[str, bytes, str | None]] = []
    now = 0.0
    while len(found) < count:
        now += 5.0
        for pub in org.advance(now):
            # One shape (the general topic's): each body a distinct state.
            topic = pub.topics[0]
            if topic.startswith("v2.routing.queues.") and topic.endswith(".conversations"):
                found.append((topic, pub.body, pub.conversation_id))
    return found[:count]


def real_events(count: int, stream_id: str = "voice-main", start: int = 1) -> list[StreamEvent]:
    """Events with sequences ``start..start+count-1`` carrying real snapshot bodies.

    Each carries its facts' key and state digest, as a stream's events do.
    """
    events = []
    for i, (topic, body, conversation_id) in enumerate(real_bodies(count)):
        facts = event_facts(topic, body)
        events.append(
            StreamEvent(
                stream_id=stream_id,
                sequence=start + i,
                priority=2,
                topic=topic,
                transition=None,
                conversation_id=conversation_id,
                correlation_id=str(uuid.uuid4()),
                raw=body,
                received_at=EPOCH + i * 0.125,
                content_key=facts.key,
                digest=facts.hash,
            )
        )
    return events


def a_gap(stream_id: str = "voice-main") -> Gap:
    return Gap(
        stream_id,
        EPOCH + 1.5,
        EPOCH + 4.25,
        frozenset({"v2.routing.queues.q1.conversations", "v2.routing.queues.q2.conversations"}),
        "streaming-0-abc",
        "socket_dropped",
    )


async def source(items: Iterable[StreamEvent | Gap]) -> AsyncIterator[StreamEvent | Gap]:
    """A finite stream of ``items``."""
    for item in items:
        yield item


# -- webhook receivers ---------------------------------------------------------------

#: A Standard Webhooks secret (``whsec_`` and base64); the genesys-mux scheme
#: takes it too, as text. Its key is ``SECRET_KEY``: neither may leak.
SECRET = "whsec_Y2FuYXJ5LXdlYmhvb2stc2VjcmV0LTVmMWUyZC1rZXkx"
SECRET_KEY = b"canary-webhook-secret-5f1e2d-key1"


@dataclass
class Request:
    """One request a receiver got, after its signature was checked."""

    items: list[dict[str, Any]]
    body: bytes
    idempotency_key: str
    at: float
    #: Every header as sent (names in lower case).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1:0 with a scripted behaviour.

    ``fail_first``: answer that many requests with ``fail_status``;
    ``hang``: never answer (until teardown); ``status``: the answer after
    that (200 accepts). Every request's signature is verified
    independently of the sink, before anything else: ``signing`` says
    which scheme is expected.
    """

    secret: str = SECRET
    signing: SigningScheme = "standard"
    fail_first: int = 0
    fail_status: int = 500
    fail_headers: dict[str, str] = field(default_factory=dict)
    #: Failures give the path and query asked for as their reason phrase, as
    #: some servers and proxies do.
    fail_echoing: bool = False
    hang: bool = False
    status: int = 200
    #: Keep the largest X-Genesys-Mux-Fence per stream; answer 409 to a smaller one.
    fencing: bool = False
    fences: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    accepted: list[Request] = field(default_factory=list)
    bad_signatures: int = 0
    got_request: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    url: str = ""

    def _signature_ok(self, request: web.Request, body: bytes) -> bool:
        if self.signing == "standard":
            try:
                # The standard's reference library (it checks the 5-minute tolerance too).
                standardwebhooks.Webhook(self.secret).verify(
                    body, dict(request.headers), json_parse=False
                )
            except standardwebhooks.WebhookVerificationError:
                return False
            return True
        timestamp = request.headers.get("X-Genesys-Mux-Timestamp", "")
        signature = request.headers.get("X-Genesys-Mux-Signature", "")
        expected = hmac.new(
            self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        return fresh and hmac.compare_digest(signature, f"sha256={expected}")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._signature_ok(request, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        items = msgspec.json.decode(body)["items"]
        got = Request(
            items,
            body,
            request.headers.get("Idempotency-Key", ""),
            time.monotonic(),
            {name.lower(): value for name, value in request.headers.items()},
        )
        self.requests.append(got)
        self.got_request.set()
        if self.hang:
            await self._release.wait()
            return web.Response(status=200)
        if len(self.requests) <= self.fail_first:
            reason = request.path_qs if self.fail_echoing else None
            return web.Response(status=self.fail_status, headers=self.fail_headers, reason=reason)
        if self.fencing and "X-Genesys-Mux-Fence" in request.headers:
            # What the README asks of a receiver that shuts out ex-owners.
            fence = int(request.headers["X-Genesys-Mux-Fence"])
            for stream_id in {i["stream_id"] for i in items}:
                if fence < self.fences.get(stream_id, 0):
                    return web.Response(status=409)
            for stream_id in {i["stream_id"] for i in items}:
                self.fences[stream_id] = fence
        if self.status == 200:
            self.accepted.append(got)
        return web.Response(status=self.status)

    def accepted_keys(self) -> list[str]:
        return [i["idempotency_key"] for r in self.accepted for i in r.items]

    def accepted_sequences(self, stream_id: str | None = None) -> list[int]:
        return [
            i["sequence"]
            for r in self.accepted
            for i in r.items
            if i["kind"] == "event" and stream_id in (None, i["stream_id"])
        ]

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        # A capability URL's place for its token.
        app.router.add_post("/hook/{token}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        assert self._runner is not None
        await self._runner.cleanup()
