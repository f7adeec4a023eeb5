"""The emulator's HTTP and WebSocket face: Genesys Cloud on one base URL.

Theory of operation
-------------------
One aiohttp application stands in for ``login.D``, ``api.D`` and
``streaming.D``. The rules of the platform live in
:mod:`genesys_mux.emulator.platform`, the contact centre that generates
traffic in :mod:`genesys_mux.emulator.org`; this module wires them to the
network:

* ``POST /oauth/token``: client credentials with HTTP Basic auth.
* ``/api/v2/notifications/channels[...]``: channels and subscriptions.
* ``GET /channels/{id}``: the notification socket, the channel's
  ``connectUri``. It carries heartbeats, pongs, notifications and system
  topics, and accepts ``ping``, ``subscribe`` and ``unsubscribe``.
* ``GET /api/v2/routing/queues``, ``GET /api/v2/conversations/{id}`` and
  ``POST /api/v2/analytics/conversations/details/query``.
* ``/__emulator__/...``: the control surface (clients, org, traffic,
  faults, ledger, reset). It is never part of the Genesys API.

Every socket has one writer task fed by a queue, so heartbeats, pongs,
notifications and the final ``{"result":"404"}`` go out in the order they
were produced, and a slow client never stalls the traffic pump. A frame is
written to the ledger only once it has been handed to the transport, so the
ledger is the truth about what was *sent*.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import json
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import msgspec
from aiohttp import WSMsgType, web

from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.timestamps import format_iso, parse_iso
from genesys_mux.core.topics import validate_id
from genesys_mux.emulator.org import ContactCentre, Publication
from genesys_mux.emulator.platform import (
    ApiProblem,
    Channel,
    ClientApp,
    Platform,
    PlatformLimits,
    Token,
    new_context_id,
)
from genesys_mux.emulator.schemas import available_topics
from genesys_mux.errors import ConfigError, InvalidIdError
from genesys_mux.regions import is_loopback_host

__all__ = ["Emulator", "EmulatorSettings", "LedgerEntry", "running_emulator"]

log = logging.getLogger("genesys_mux.emulator")

HEARTBEAT = b'{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}'
PONG = b'{"topicName":"channel.metadata","eventBody":{"message":"pong"}}'
# Writer-queue sentinel: close the socket once everything before it is sent.
_CLOSE = object()
#: How long a socket the client closed may take to send what it still has.
_CLOSE_FLUSH_S = 65.0
# A socket whose writer falls this far behind is dropped, as a real server
# would shed a consumer that cannot keep up, instead of buffering forever.
_MAX_PENDING_FRAMES = 100_000
_API = "/api/v2"
# The inin-ratelimit-* headers of the request being served, so that its error
# answer carries them too (the middleware awaits the handler in one context).
_RATELIMIT_HEADERS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "genesys_mux_emulator_ratelimit_headers"
)


@dataclass(slots=True)
class EmulatorSettings:
    """Everything the emulator can be told at start-up.

    The defaults are the real platform's numbers; tests shrink them to reach
    the limits quickly.
    """

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    queues: int = 10
    agents: int = 50
    #: New conversations per second across the simulated org.
    rate: float = 20.0
    heartbeat_interval_s: float = PLATFORM.heartbeat_interval_s
    #: Seconds between ``v2.system.socket_closing`` and the close, unless a
    #: fault says otherwise.
    socket_closing_delay_s: float = 60.0
    limits: PlatformLimits = field(default_factory=PlatformLimits)
    clients: list[ClientApp] = field(
        default_factory=lambda: [ClientApp("demo-client", "demo-secret")]
    )
    #: HTTP status for bad client credentials; the real one is 400 or 401.
    invalid_client_status: int = 401
    ledger_size: int = 500_000
    request_log_size: int = 10_000
    #: How often the contact centre and the reaper run.
    tick_s: float = 0.05
    #: Start generating traffic at once (else wait for POST /__emulator__/traffic).
    traffic: bool = True
    #: Send ``v2.subscription.updated`` on a channel's socket whenever its
    #: subscription list changes. Off by default: the reference does not say
    #: when (or whether) the platform sends it, so a client must not need it.
    subscription_updated_frames: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not between 0 and 65535")
        if self.queues < 1 or self.agents < 0:
            problems.append("the org needs at least one queue and zero or more agents")
        if self.rate < 0:
            problems.append(f"rate {self.rate} must be >= 0 conversations per second")
        if self.heartbeat_interval_s <= 0 or self.tick_s <= 0 or self.socket_closing_delay_s < 0:
            problems.append("heartbeat interval and tick must be positive, the closing delay >= 0")
        if self.invalid_client_status not in (400, 401):
            problems.append("invalid_client_status must be 400 or 401")
        if problems:
            raise ConfigError("emulator settings: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One notification frame handed to a socket."""

    seq: int
    time: float
    channel_id: str
    topic: str
    correlation_id: str
    conversation_id: str | None
    duplicate: bool

    def to_json(self) -> dict[str, Any]:
        """The entry as ``GET /__emulator__/ledger`` renders it."""
        return {
            "seq": self.seq,
            "time": self.time,
            "channel_id": self.channel_id,
            "topic": self.topic,
            "correlation_id": self.correlation_id,
            "conversation_id": self.conversation_id,
            "duplicate": self.duplicate,
        }


@dataclass(slots=True)
class _Pending:
    frame: bytes
    topic: str
    correlation_id: str
    conversation_id: str | None
    duplicate: bool = False


@dataclass(slots=True)
class _HttpFault:
    status: int
    remaining: int
    retry_after_s: float | None
    path: str | None
    method: str | None

    def matches(self, request: web.Request) -> bool:
        return (self.path is None or self.path in request.path) and (
            self.method is None or self.method == request.method
        )


class _SocketLink:
    """One open notification socket and the task that writes to it."""

    def __init__(
        self, emulator: Emulator, channel: Channel, ws: web.WebSocketResponse, request: web.Request
    ) -> None:
        self.emulator = emulator
        self.channel = channel
        self.ws = ws
        self.transport = request.transport
        self.queue: asyncio.Queue[_Pending | bytes | object] = asyncio.Queue()
        self.paused = False
        self.held: _Pending | None = None
        self.held_for = 0
        #: Notifications on their way under the ``delay`` fault.
        self.delayed = 0
        self.close_code: int | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._writer(), name=f"emulator-writer-{self.channel.id}"),
            asyncio.create_task(self._heartbeats(), name=f"emulator-heartbeat-{self.channel.id}"),
        ]

    def send(self, frame: bytes) -> None:
        """Queue a non-notification frame (heartbeat, pong, system topic)."""
        self.queue.put_nowait(frame)

    def notify(self, pending: _Pending, rng: random.Random, faults: _FrameFaults) -> None:
        """Queue a notification, applying the duplicate and reorder faults."""
        if self.queue.qsize() > _MAX_PENDING_FRAMES:
            log.warning(
                "dropping socket of %s: %d frames behind", self.channel.id, self.queue.qsize()
            )
            self.drop()
            return
        delay = faults.delay_s
        if faults.reorder and self.held is None and rng.random() < faults.reorder:
            # Hold this frame back; it goes out after the next `depth` frames.
            self.held = pending
            self.held_for = faults.reorder_depth
            return
        self._enqueue(pending, delay)
        if faults.duplicate and rng.random() < faults.duplicate:
            if faults.reserialise:
                correlation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                frame = _reserialised(pending.frame, correlation_id)
            else:
                correlation_id, frame = pending.correlation_id, pending.frame
            self._enqueue(
                _Pending(frame, pending.topic, correlation_id, pending.conversation_id, True), delay
            )
        if self.held is not None:
            self.held_for -= 1
            if self.held_for <= 0:
                self._enqueue(self.held, delay)
                self.held = None

    def _enqueue(self, pending: _Pending, delay_s: float) -> None:
        if delay_s <= 0.0:
            self.queue.put_nowait(pending)
            return
        # Late, but only notifications: pongs and heartbeats overtake them.
        self.delayed += 1
        asyncio.get_running_loop().call_later(delay_s, self._release, pending)

    def _release(self, pending: _Pending) -> None:
        self.delayed -= 1
        self.queue.put_nowait(pending)
        if self.delayed == 0 and self.close_code is not None:
            self.queue.put_nowait((_CLOSE, self.close_code))

    def close_after_flush(self, code: int = 1000) -> None:
        """Close the socket once every notification already sent its way is out."""
        if self.delayed:
            self.close_code = code  # closed by _release, after the last one
        else:
            self.queue.put_nowait((_CLOSE, code))

    def go_silent(self) -> None:
        """Become a half-open link: nothing is sent and nothing is read any more.

        A dead link answers nothing: no heartbeat, no pong, and no reply to
        a close frame, so a client that waits for the close handshake waits
        in vain. Reading stops at the transport, so not even aiohttp's
        automatic replies go out; the kernel still accepts the client's bytes.
        """
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def drop(self) -> None:
        """Lose the TCP connection with no close frame, like a network cut."""
        if self.transport is not None:
            self.transport.abort()
        self.stop_tasks()

    def stop_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def _heartbeats(self) -> None:
        interval = self.emulator.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            self.send(HEARTBEAT)

    async def _writer(self) -> None:
        ledger = self.emulator.ledger
        while True:
            item = await self.queue.get()
            if isinstance(item, tuple):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.close(code=item[1])
                return
            if self.paused:
                continue  # half-open: nothing more leaves this socket
            frame = item.frame if isinstance(item, _Pending) else item
            assert isinstance(frame, bytes)
            try:
                await self.ws.send_frame(frame, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return
            if isinstance(item, _Pending):
                ledger.record(self.channel.id, item)


@dataclass(slots=True)
class _FrameFaults:
    duplicate: float = 0.0
    #: Send duplicates re-serialised (other key order, whitespace, a new
    #: CorrelationId), as the reference allows, instead of byte for byte.
    reserialise: bool = False
    reorder: float = 0.0
    #: How many later frames overtake a held one.
    reorder_depth: int = 1
    #: Notifications reach the socket this late; pongs and heartbeats do not
    #: wait, so a pong may overtake notifications sent before it.
    delay_s: float = 0.0


class _Ledger:
    """A bounded record of every notification frame sent, in send order."""

    def __init__(self, size: int) -> None:
        self.entries: deque[LedgerEntry] = deque(maxlen=size)
        self.next_seq = 1

    def record(self, channel_id: str, item: _Pending) -> None:
        self.entries.append(
            LedgerEntry(
                self.next_seq,
                time.time(),
                channel_id,
                item.topic,
                item.correlation_id,
                item.conversation_id,
                item.duplicate,
            )
        )
        self.next_seq += 1


def _envelope(topic: str, body: bytes, correlation_id: str) -> bytes:
    # Built by concatenation: the body is already JSON, and the topic and
    # correlation id contain no characters that need escaping (validated).
    return b"".join(
        (
            b'{"topicName":"',
            topic.encode(),
            b'","version":"2","eventBody":',
            body,
            b',"metadata":{"CorrelationId":"',
            correlation_id.encode(),
            b'"}}',
        )
    )


def _reserialised(frame: bytes, correlation_id: str) -> bytes:
    """The same notification written anew: keys reversed, spaced out, a new CorrelationId."""
    envelope = json.loads(frame)
    envelope["metadata"] = {"CorrelationId": correlation_id}
    return json.dumps(_reversed_keys(envelope), indent=1).encode()


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [_reversed_keys(item) for item in value]
    return value


def _system_frame(
    topic: str, channel_id: str, reason: str, message: str, kind: str | None = None
) -> bytes:
    body = msgspec.json.encode(
        {
            "channelId": channel_id,
            "systemTopicType": kind or topic.split(".")[2],
            "reason": reason,
            "message": message,
            "data": {},
        }
    )
    return _envelope(topic, body, str(uuid.uuid4()))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        headers=headers,
        content_type="application/json",
    )


class Emulator:
    """A running emulated Genesys Cloud.

    Use it as an async context manager::

        async with Emulator(EmulatorSettings(rate=5)) as emulator:
            base_url = emulator.base_url

    or :func:`running_emulator`, which yields the base URL alone.
    """

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._port = self.settings.port
        self._reset_state()

    def _reset_state(self) -> None:
        s = self.settings
        self.platform = Platform(s.limits)
        for client in s.clients:
            self.platform.register_client(
                ClientApp(
                    client.client_id,
                    client.client_secret,
                    client.permissions,
                    client.token_lifetime_s,
                )
            )
        self.epoch = time.time()
        self._frozen_s = 0.0
        self._frozen_since: float | None = None if s.traffic else self.epoch
        self.centre = ContactCentre(
            seed=s.seed, queues=s.queues, agents=s.agents, rate=s.rate, epoch=self.epoch
        )
        self.ledger = _Ledger(s.ledger_size)
        self.requests: deque[dict[str, Any]] = deque(maxlen=s.request_log_size)
        self._links: dict[str, _SocketLink] = {}
        self._http_faults: list[_HttpFault] = []
        self._frame_faults: dict[str | None, _FrameFaults] = {}
        self._fault_rng = random.Random(s.seed)
        self._blast: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running emulator."""
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Bind the socket and start the traffic pump."""
        if not is_loopback_host(self.settings.host):
            log.warning(
                "emulator listening on %s, beyond loopback: "
                "anyone who can reach it can read its traffic",
                self.settings.host,
            )
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server  # the only way to learn an ephemeral port
        assert server is not None
        sockets = getattr(server, "sockets", None)
        if sockets:
            self._port = sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self._pump(), name="emulator-pump"))

    async def stop(self) -> None:
        """Close every socket and the server."""
        for task in self._tasks:
            task.cancel()
        if self._blast is not None:
            self._blast.cancel()
        for link in list(self._links.values()):
            link.drop()
        self._links.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the clock and the traffic pump -------------------------------

    def sim_now(self, now: float | None = None) -> float:
        """Simulation seconds since start, not counting time frozen by the control surface."""
        now = time.time() if now is None else now
        frozen = self._frozen_s + (
            now - self._frozen_since if self._frozen_since is not None else 0.0
        )
        return now - self.epoch - frozen

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            now = time.time()
            for channel, reason in self.platform.reap(now):
                self._channel_died(channel, reason)
            if self._frozen_since is None:
                self.publish(self.centre.advance(self.sim_now(now)))

    def publish(self, publications: list[Publication]) -> None:
        """Fan publications out to every socket subscribed to their topics."""
        links = self._links
        for pub in publications:
            for topic in pub.topics:
                subscribers = self.platform.subscribers(topic)
                if not subscribers:
                    continue
                frame = _envelope(topic, pub.body, pub.correlation_id)
                for channel_id in subscribers:
                    link = links.get(channel_id)
                    if link is not None:
                        faults = (
                            self._frame_faults.get(channel_id)
                            or self._frame_faults.get(None)
                            or _NO_FAULTS
                        )
                        link.notify(
                            _Pending(frame, topic, pub.correlation_id, pub.conversation_id),
                            self._fault_rng,
                            faults,
                        )

    def _channel_died(self, channel: Channel, reason: str) -> None:
        link = self._links.pop(channel.id, None)
        if link is not None:
            msg = f"Channel {channel.id} is no longer valid: {reason}"
            link.send(msgspec.json.encode({"result": "404", "message": msg}))
            link.close_after_flush(1000)

    # -- routing --------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/oauth/token", self._token)
        r.add_post(f"{_API}/notifications/channels", self._create_channel)
        r.add_get(f"{_API}/notifications/channels", self._list_channels)
        r.add_route("HEAD", f"{_API}/notifications/channels/{{channel_id}}", self._head_channel)
        subs = f"{_API}/notifications/channels/{{channel_id}}/subscriptions"
        r.add_get(subs, self._get_subscriptions)
        r.add_post(subs, self._post_subscriptions)
        r.add_put(subs, self._put_subscriptions)
        r.add_delete(subs, self._delete_subscriptions)
        r.add_get("/channels/{channel_id}", self._socket)
        r.add_get(f"{_API}/notifications/availabletopics", self._available_topics)
        r.add_get(f"{_API}/routing/queues", self._routing_queues)
        r.add_get(f"{_API}/conversations/{{conversation_id}}", self._conversation)
        r.add_post(f"{_API}/analytics/conversations/details/query", self._analytics_query)
        c = "/__emulator__"
        r.add_post(f"{c}/clients", self._ctl_clients)
        r.add_get(f"{c}/org", self._ctl_org)
        r.add_post(f"{c}/queues", self._ctl_queues)
        r.add_delete(f"{c}/queues/{{queue_id}}", self._ctl_delete_queue)
        r.add_get(f"{c}/channels", self._ctl_channels)
        r.add_post(f"{c}/traffic", self._ctl_traffic)
        r.add_post(f"{c}/faults", self._ctl_faults)
        r.add_get(f"{c}/ledger", self._ctl_ledger)
        r.add_get(f"{c}/requests", self._ctl_requests)
        r.add_post(f"{c}/reset", self._ctl_reset)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Injected HTTP faults, Genesys-shaped errors and the request log."""
        started = time.time()
        status = 500
        _RATELIMIT_HEADERS.set({})
        try:
            if request.path.startswith(_API) or request.path == "/oauth/token":
                self._injected_fault(request)
            response = await handler(request)
            status = response.status
            return response
        except ApiProblem as problem:
            status = problem.status
            # Errors of an authenticated call carry its rate-limit headers too.
            headers = {**_RATELIMIT_HEADERS.get({}), **problem.headers}
            return _json(problem.body(new_context_id()), problem.status, headers)
        except web.HTTPException as exc:
            status = exc.status
            if exc.status >= 400 and request.path.startswith(_API):
                # Unknown routes and methods get the Genesys error shape as well.
                shaped = ApiProblem(status, exc.reason.lower().replace(" ", "."), exc.reason)
                allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
                return _json(shaped.body(new_context_id()), status, allow)
            raise
        finally:
            if not request.path.startswith("/__emulator__"):
                self.requests.append(
                    {
                        "time": started,
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                    }
                )

    def _injected_fault(self, request: web.Request) -> None:
        for fault in self._http_faults:
            if fault.remaining > 0 and fault.matches(request):
                fault.remaining -= 1
                headers: dict[str, str] = {}
                if fault.status == 429:
                    retry = fault.retry_after_s if fault.retry_after_s is not None else 1.0
                    headers["Retry-After"] = str(math.ceil(retry))
                    raise ApiProblem(
                        429,
                        "too.many.requests.retry.after",
                        "Rate limit exceeded the maximum. "
                        f"Retry the request in [{math.ceil(retry)}] seconds",
                        headers,
                    )
                raise ApiProblem(
                    fault.status, "service.unavailable", "The service is currently unavailable."
                )

    def _authorized(self, request: web.Request) -> tuple[Token, dict[str, str]]:
        now = time.time()
        token = self.platform.authenticate(request.headers.get("Authorization"), now)
        headers = self.platform.charge(token, now)
        _RATELIMIT_HEADERS.set(headers)
        return token, headers

    # -- OAuth ------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _json(
                {
                    "error": "unsupported_grant_type",
                    "description": "grant type not supported",
                    "error_description": "grant type not supported",
                },
                400,
            )
        credentials = _basic_credentials(request.headers.get("Authorization"))
        token = self.platform.issue_token(*credentials, time.time()) if credentials else None
        if token is None:
            return _json(
                {
                    "error": "invalid_client",
                    "description": "authentication failed",
                    "error_description": "authentication failed",
                },
                self.settings.invalid_client_status,
            )
        lifetime = max(0, round(token.expires_at - token.issued_at))
        return _json({"access_token": token.value, "token_type": "bearer", "expires_in": lifetime})

    # -- channels ---------------------------------------------------------

    def _channel_json(self, channel: Channel, request: web.Request) -> dict[str, Any]:
        scheme = "wss" if request.secure else "ws"
        return {
            "connectUri": f"{scheme}://{request.host}/channels/{channel.id}",
            "id": channel.id,
            "expires": format_iso(channel.expires_at),
        }

    async def _create_channel(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request)
        channel, evicted = self.platform.create_channel(token, time.time())
        for victim in evicted:
            self._channel_died(victim, "evicted: the client created more channels than allowed")
        return _json(self._channel_json(channel, request), 200, headers)

    async def _list_channels(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request)
        scope = request.query.get("includechannels", "token")
        if scope not in ("token", "oauthclient"):
            raise ApiProblem(400, "bad.request", "includechannels must be 'token' or 'oauthclient'")
        scope_value: Literal["token", "oauthclient"] = (
            "token" if scope == "token" else "oauthclient"
        )
        channels = self.platform.channels_of(token, scope_value)
        return _json({"entities": [self._channel_json(c, request) for c in channels]}, 200, headers)

    def _own_channel(self, request: web.Request, token: Token) -> Channel:
        channel_id = request.match_info["channel_id"]
        try:
            validate_id(channel_id, "channel id")
        except InvalidIdError as exc:
            raise ApiProblem(400, "bad.request", str(exc)) from None
        return self.platform.channel_for(token, channel_id)

    async def _head_channel(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request)
        try:
            self._own_channel(request, token)
        except ApiProblem as problem:
            return web.Response(status=problem.status, headers=headers)
        return web.Response(status=200, headers=headers)

    async def _get_subscriptions(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request)
        channel = self._own_channel(request, token)
        return _json(
            {"entities": [{"id": t, "state": "Permitted"} for t in channel.topics]}, 200, headers
        )

    async def _post_subscriptions(self, request: web.Request) -> web.Response:
        return await self._change_subscriptions(request, replace=False)

    async def _put_subscriptions(self, request: web.Request) -> web.Response:
        return await self._change_subscriptions(request, replace=True)

    async def _change_subscriptions(self, request: web.Request, *, replace: bool) -> web.Response:
        token, headers = self._authorized(request)
        channel = self._own_channel(request, token)
        ignore = request.query.get("ignoreErrors", "false").lower() == "true"
        topics = _topic_ids(await request.read())
        entities = self.platform.subscribe(
            channel, topics, replace=replace, ignore_errors=ignore, now=time.time()
        )
        self._subscriptions_changed(channel)
        return _json({"entities": entities}, 200, headers)

    def _subscriptions_changed(self, channel: Channel) -> None:
        link = self._links.get(channel.id)
        if link is not None and self.settings.subscription_updated_frames:
            link.send(
                _system_frame(
                    "v2.subscription.updated",
                    channel.id,
                    "subscription_updated",
                    "The channel's subscriptions were changed",
                    kind="subscription_updated",
                )
            )

    async def _delete_subscriptions(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request)
        channel = self._own_channel(request, token)
        self.platform.clear(channel, time.time())
        self._subscriptions_changed(channel)
        return web.Response(status=204, headers=headers)

    # -- the socket ---------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        # autoclose=False: a client's close frame is answered after the
        # frames already on their way (see below), not at once by aiohttp.
        ws = web.WebSocketResponse(autoping=True, autoclose=False, max_msg_size=1024 * 1024)
        await ws.prepare(request)
        channel_id = request.match_info["channel_id"]
        channel = self.platform.channels.get(channel_id)
        if channel is None:
            await ws.send_str(
                msgspec.json.encode(
                    {
                        "result": "404",
                        "message": f"Channel {channel_id[:64]} does not exist or has expired",
                    }
                ).decode()
            )
            await ws.close()
            return ws
        previous = self._links.pop(channel.id, None)
        if previous is not None:
            # One socket per channel: the newcomer wins, the old one is closed.
            previous.close_after_flush(1000)
        link = _SocketLink(self, channel, ws, request)
        self._links[channel.id] = link
        channel.connected = True
        channel.last_used = time.time()
        link.start()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._client_text(link, message.data)
            if not ws.closed and not link.paused:
                # The client closed first. What was already sent its way is
                # in flight: it goes out before our close frame, as bytes
                # written before a close do on a real connection.
                link.close_after_flush(1000)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(link.tasks[0]), _CLOSE_FLUSH_S)
        finally:
            link.stop_tasks()
            if self._links.get(channel.id) is link:
                del self._links[channel.id]
                channel.connected = False
                channel.last_used = time.time()
        return ws

    def _client_text(self, link: _SocketLink, text: str) -> None:
        try:
            message = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return  # the real service tolerates unknown text
        if not isinstance(message, dict):
            return
        kind = message.get("message")
        if kind == "ping":
            if not link.paused:
                link.send(PONG)
        elif kind in ("subscribe", "unsubscribe"):
            link.send(self._socket_subscription(link.channel, kind, message))

    def _socket_subscription(self, channel: Channel, kind: str, message: dict[str, Any]) -> bytes:
        correlation_id = message.get("correlationId")
        topics = message.get("topics")
        try:
            if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
                raise ApiProblem(400, "bad.request", "topics must be a list of topic strings")
            if channel.id not in self.platform.channels:
                raise ApiProblem(404, "not.found", "channel no longer exists")
            if kind == "subscribe":
                self.platform.subscribe(
                    channel, topics, replace=False, ignore_errors=False, now=time.time()
                )
            else:
                self.platform.unsubscribe(channel, topics, time.time())
        except ApiProblem as problem:
            return msgspec.json.encode(
                {
                    "correlationId": correlation_id,
                    "topics": [],
                    "result": str(problem.status),
                    "status": "error",
                    "message": problem.message,
                }
            )
        status = "subscribed" if kind == "subscribe" else "unsubscribed"
        return msgspec.json.encode(
            {"correlationId": correlation_id, "result": "200", "status": status}
        )

    # -- org data -------------------------------------------------------

    async def _routing_queues(self, request: web.Request) -> web.Response:
        _, headers = self._authorized(request)
        page_size = _int_param(request, "pageSize", 25, 1, 500)
        page_number = _int_param(request, "pageNumber", 1, 1, 1_000_000)
        name = request.query.get("name")
        queues = [
            q
            for q in self.centre.queues
            if name is None or q.name.lower().startswith(name.lower().rstrip("*"))
        ]
        total = len(queues)
        page_count = max(1, math.ceil(total / page_size))
        start = (page_number - 1) * page_size
        page = queues[start : start + page_size]

        def uri(n: int) -> str:
            return f"{_API}/routing/queues?pageSize={page_size}&pageNumber={n}"

        body: dict[str, Any] = {
            "entities": [q.to_api(self.epoch) for q in page],
            "pageSize": page_size,
            "pageNumber": page_number,
            "total": total,
            "pageCount": page_count,
            "firstUri": uri(1),
            "selfUri": uri(page_number),
            "lastUri": uri(page_count),
        }
        if page_number < page_count:
            body["nextUri"] = uri(page_number + 1)
        if page_number > 1:
            body["previousUri"] = uri(page_number - 1)
        return _json(body, 200, headers)

    async def _available_topics(self, request: web.Request) -> web.Response:
        _, headers = self._authorized(request)
        expand = {
            part.strip()
            for value in request.query.getall("expand", [])
            for part in value.split(",")
        }
        return _json({"entities": available_topics(expand)}, 200, headers)

    async def _conversation(self, request: web.Request) -> web.Response:
        _, headers = self._authorized(request)
        conversation_id = request.match_info["conversation_id"]
        try:
            validate_id(conversation_id, "conversationId")
        except InvalidIdError as exc:
            raise ApiProblem(400, "bad.request", str(exc)) from None
        snapshot = self.centre.conversation(conversation_id)
        if snapshot is None:
            raise ApiProblem(
                404,
                "not.found",
                f"The requested conversation {conversation_id} could not be found.",
            )
        return web.Response(body=snapshot, headers=headers, content_type="application/json")

    async def _analytics_query(self, request: web.Request) -> web.Response:
        _, headers = self._authorized(request)
        try:
            query = msgspec.json.decode(await request.read())
            start_s, _, end_s = query["interval"].partition("/")
            start, end = parse_iso(start_s), parse_iso(end_s)
        except (msgspec.DecodeError, KeyError, TypeError, AttributeError, ValueError):
            raise ApiProblem(
                400,
                "bad.request",
                "Body must be a JSON object with an ISO-8601 'interval' like "
                "'2026-01-01T00:00:00.000Z/2026-01-01T01:00:00.000Z'",
            ) from None
        if end <= start:
            raise ApiProblem(400, "bad.request", "The interval must end after it starts")
        try:
            queue_ids = _dimension_filter(query, "queueId")
            user_ids = _dimension_filter(query, "userId")
        except (AttributeError, TypeError):
            raise ApiProblem(
                400, "bad.request", "segmentFilters/conversationFilters must be lists of filters"
            ) from None
        paging = query.get("paging") or {}
        try:
            page_size = int(paging.get("pageSize", 25))
            page_number = int(paging.get("pageNumber", 1))
        except (AttributeError, TypeError, ValueError):
            page_size = page_number = 0  # refused just below, as a 400
        if not 1 <= page_size <= 100 or page_number < 1:
            raise ApiProblem(
                400, "bad.request", "paging.pageSize must be 1-100 and paging.pageNumber >= 1"
            )
        found = self.centre.analytics_query(start, end, queue_ids if user_ids is None else None)
        if queue_ids is not None or user_ids is not None:
            # Predicates are or-ed. A queueId predicate matches segments: a
            # call still in its IVR has not reached its queue, so it is not
            # found; a userId predicate matches a participant.
            found = [
                c
                for c in found
                if (queue_ids is not None and _touches_queue(c, queue_ids))
                or (user_ids is not None and _has_user(c, user_ids))
            ]
        if query.get("order") == "desc":
            found.reverse()
        page = found[(page_number - 1) * page_size : page_number * page_size]
        body: dict[str, Any] = {"totalHits": len(found)}
        if page:
            body["conversations"] = page
        return _json(body, 200, headers)

    # -- control surface ----------------------------------------------

    async def _ctl_clients(self, request: web.Request) -> web.Response:
        data = await _control_body(request)
        try:
            client = ClientApp(
                client_id=validate_id(str(data["client_id"]), "client_id"),
                client_secret=str(data["client_secret"]),
                permissions=frozenset(str(p) for p in data.get("permissions", ["*"])),
                token_lifetime_s=int(data.get("token_lifetime_s", 86399)),
            )
        except (KeyError, TypeError, ValueError, InvalidIdError) as exc:
            raise web.HTTPBadRequest(
                text=f"register a client with client_id, client_secret, optional permissions "
                f"(list) and token_lifetime_s (int): {exc}"
            ) from None
        self.platform.register_client(client)
        return _json(
            {"client_id": client.client_id, "permissions": sorted(client.permissions)}, 201
        )

    async def _ctl_org(self, request: web.Request) -> web.Response:
        return _json(self.centre.org())

    async def _ctl_queues(self, request: web.Request) -> web.Response:
        data = await _control_body(request)
        name = data.get("name")
        queue = self.centre.add_queue(str(name) if name is not None else None, self.sim_now())
        return _json(queue.to_api(self.epoch), 201)

    async def _ctl_delete_queue(self, request: web.Request) -> web.Response:
        queue_id = request.match_info["queue_id"]
        if not self.centre.remove_queue(queue_id):
            raise web.HTTPNotFound(text=f"no queue {queue_id[:64]!r}")
        return _json({"deleted": queue_id})

    async def _ctl_channels(self, request: web.Request) -> web.Response:
        return _json(
            [
                {
                    "id": c.id,
                    "client_id": c.client_id,
                    "topic_count": len(c.topics),
                    "connected": c.id in self._links,
                    "expires": format_iso(c.expires_at),
                    "created": format_iso(c.created_at),
                }
                for c in self.platform.channels.values()
            ]
        )

    async def _ctl_traffic(self, request: web.Request) -> web.Response:
        data = await _control_body(request)
        now = time.time()
        if "rate" in data:
            rate = float(data["rate"])
            if rate < 0:
                raise web.HTTPBadRequest(text="rate must be >= 0 conversations per second")
            self.centre.set_rate(rate, self.sim_now(now))
        if "running" in data:
            if data["running"] and self._frozen_since is not None:
                self._frozen_s += now - self._frozen_since
                self._frozen_since = None
            elif not data["running"] and self._frozen_since is None:
                self._frozen_since = now
        if "blast" in data:
            self._start_blast(data["blast"])
        return _json(
            {
                "running": self._frozen_since is None,
                "blasting": self._blast is not None and not self._blast.done(),
            }
        )

    async def _ctl_faults(self, request: web.Request) -> web.Response:
        data = await _control_body(request)
        fault = data.get("fault")
        handler = self._FAULTS.get(str(fault))
        if handler is None:
            raise web.HTTPBadRequest(
                text=f"unknown fault {fault!r}; known: {', '.join(sorted(self._FAULTS))}"
            )
        try:
            applied = handler(self, data)
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"bad parameters for fault {fault}: {exc}") from None
        return _json({"fault": fault, "applied": applied})

    async def _ctl_ledger(self, request: web.Request) -> web.Response:
        channel_id = request.query.get("channel_id")
        since = int(request.query.get("since", "0"))
        entries = [
            e.to_json()
            for e in self.ledger.entries
            if e.seq > since and (channel_id is None or e.channel_id == channel_id)
        ]
        return _json({"entries": entries, "next_seq": self.ledger.next_seq})

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        return _json({"requests": list(self.requests)})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        if self._blast is not None:
            self._blast.cancel()
        for link in list(self._links.values()):
            link.drop()
        self._reset_state()
        return _json({"reset": True})

    # -- faults -----------------------------------------------------------

    def _targets(self, data: dict[str, Any], *, connected: bool) -> list[Channel]:
        """The channels a fault applies to: the named one, or all (connected) ones."""
        channel_id = data.get("channel_id")
        if channel_id is not None:
            channel = self.platform.channels.get(str(channel_id))
            if channel is None:
                raise ValueError(f"no channel {str(channel_id)[:64]!r}")
            return [channel]
        return [c for c in self.platform.channels.values() if not connected or c.id in self._links]

    def _fault_drop_socket(self, data: dict[str, Any]) -> list[str]:
        applied = []
        for channel in self._targets(data, connected=True):
            link = self._links.pop(channel.id, None)
            if link is not None:
                link.drop()
                channel.connected = False
                applied.append(channel.id)
        return applied

    def _fault_socket_closing(self, data: dict[str, Any]) -> list[str]:
        delay = float(data.get("delay_s", self.settings.socket_closing_delay_s))
        applied = []
        for channel in self._targets(data, connected=True):
            link = self._links.get(channel.id)
            if link is None:
                continue
            link.send(
                _system_frame(
                    "v2.system.socket_closing",
                    channel.id,
                    "maintenance",
                    "The WebSocket will close soon for maintenance",
                )
            )
            asyncio.get_running_loop().call_later(delay, link.close_after_flush, 1001)
            applied.append(channel.id)
        return applied

    def _fault_kill(self, data: dict[str, Any], reason: str) -> list[str]:
        applied = []
        for channel in self._targets(data, connected=False):
            self.platform.remove_channel(channel.id)
            self._channel_died(channel, reason)
            applied.append(channel.id)
        return applied

    def _fault_expire(self, data: dict[str, Any]) -> list[str]:
        return self._fault_kill(data, "channel expired")

    def _fault_evict(self, data: dict[str, Any]) -> list[str]:
        return self._fault_kill(data, "evicted: the client created more channels than allowed")

    def _fault_revoke_token(self, data: dict[str, Any]) -> list[str]:
        """Revoke the token behind a channel (or every token of a client, or all)."""
        if data.get("channel_id") is not None:
            tokens = {self._targets(data, connected=False)[0].token}
        else:
            client_id = data.get("client_id")
            tokens = {
                v
                for v, t in self.platform.tokens.items()
                if client_id is None or t.client_id == client_id
            }
        revoked = []
        for value in tokens:
            token = self.platform.tokens.get(value)
            if token is None:
                continue
            self.platform.revoke(token)
            revoked.append(token.client_id)
            for channel in self.platform.channels.values():
                link = self._links.get(channel.id)
                if channel.token == value and link is not None:
                    link.send(
                        _system_frame(
                            f"v2.system.token_revoked.{channel.id}",
                            channel.id,
                            "user_tokens_revoked",
                            "The token that created this channel was revoked",
                        )
                    )
        # The channels themselves die on the next reap, after the warning.
        return sorted(set(revoked))

    def _fault_no_longer_subscribed(self, data: dict[str, Any]) -> list[str]:
        applied = []
        for channel in self._targets(data, connected=False):
            self.platform.clear(channel, time.time())
            link = self._links.get(channel.id)
            if link is not None:
                link.send(
                    _system_frame(
                        f"v2.system.no_longer_subscribed.{channel.id}",
                        channel.id,
                        "another_channel_subscribed",
                        "This channel is no longer subscribed to its topics",
                    )
                )
            applied.append(channel.id)
        return applied

    def _fault_pause_heartbeats(self, data: dict[str, Any]) -> list[str]:
        applied = []
        for channel in self._targets(data, connected=True):
            link = self._links.get(channel.id)
            if link is not None:
                link.go_silent()
                applied.append(channel.id)
        return applied

    def _fault_garbage_frame(self, data: dict[str, Any]) -> list[str]:
        garbage = str(data.get("data", "\u0000this is not json {")).encode()
        applied = []
        for channel in self._targets(data, connected=True):
            link = self._links.get(channel.id)
            if link is not None:
                link.send(garbage)
                applied.append(channel.id)
        return applied

    def _fault_http(self, data: dict[str, Any], status: int) -> list[str]:
        count = int(data.get("count", 1))
        retry_after = data.get("retry_after_s")
        if count < 1 or not 400 <= status <= 599:
            raise ValueError("count must be >= 1 and status an HTTP error status")
        self._http_faults = [f for f in self._http_faults if f.remaining > 0]
        self._http_faults.append(
            _HttpFault(
                status=status,
                remaining=count,
                retry_after_s=float(retry_after) if retry_after is not None else None,
                path=str(data["path"]) if data.get("path") is not None else None,
                method=str(data["method"]).upper() if data.get("method") is not None else None,
            )
        )
        return [f"{count} x HTTP {status}"]

    def _fault_http_429(self, data: dict[str, Any]) -> list[str]:
        return self._fault_http(data, 429)

    def _fault_http_5xx(self, data: dict[str, Any]) -> list[str]:
        return self._fault_http(data, int(data.get("status", 503)))

    def _fault_frames(
        self, data: dict[str, Any], kind: Literal["duplicate", "reorder"]
    ) -> list[str]:
        probability = float(data.get("probability", 0.1))
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        key = str(data["channel_id"]) if data.get("channel_id") is not None else None
        faults = self._frame_faults.setdefault(key, _FrameFaults())
        setattr(faults, kind, probability)
        if kind == "duplicate":
            faults.reserialise = bool(data.get("reserialise", False))
        if kind == "reorder":
            depth = int(data.get("depth", 1))
            if depth < 1:
                raise ValueError("depth must be at least 1")
            faults.reorder_depth = depth
        return [key or "*"]

    def _fault_delay(self, data: dict[str, Any]) -> list[str]:
        delay = float(data.get("delay_s", 0.5))
        if not 0.0 <= delay <= 60.0:
            raise ValueError("delay_s must be between 0 and 60")
        key = str(data["channel_id"]) if data.get("channel_id") is not None else None
        self._frame_faults.setdefault(key, _FrameFaults()).delay_s = delay
        return [key or "*"]

    def _fault_duplicate(self, data: dict[str, Any]) -> list[str]:
        return self._fault_frames(data, "duplicate")

    def _fault_reorder(self, data: dict[str, Any]) -> list[str]:
        return self._fault_frames(data, "reorder")

    _FAULTS: ClassVar[dict[str, Callable[[Emulator, dict[str, Any]], list[str]]]] = {
        "drop_socket": _fault_drop_socket,
        "socket_closing": _fault_socket_closing,
        "expire_channel": _fault_expire,
        "evict_channel": _fault_evict,
        "revoke_token": _fault_revoke_token,
        "no_longer_subscribed": _fault_no_longer_subscribed,
        "pause_heartbeats": _fault_pause_heartbeats,
        "garbage_frame": _fault_garbage_frame,
        "http_429": _fault_http_429,
        "http_5xx": _fault_http_5xx,
        "duplicate": _fault_duplicate,
        "reorder": _fault_reorder,
        "delay": _fault_delay,
    }

    # -- blast ----------------------------------------------------------

    def _start_blast(self, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise web.HTTPBadRequest(
                text="blast must be an object: {topic, rate, count, size} or {stop: true}"
            )
        if self._blast is not None:
            self._blast.cancel()
            self._blast = None
        if spec.get("stop"):
            return
        try:
            topic = str(spec["topic"])
            rate = float(spec.get("rate", 0))
            count = int(spec["count"]) if spec.get("count") is not None else None
            size = int(spec.get("size", 2048))
        except (KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(
                text=f"blast needs a topic, and numeric rate/count/size: {exc}"
            ) from None
        self._blast = asyncio.create_task(
            self._run_blast(topic, rate, count, size), name="emulator-blast"
        )

    def blast_body(self, topic: str, size: int) -> tuple[bytes, bytes, str]:
        """The blast's frame body as ``head + counter + tail``, and its conversation id prefix.

        The body's conversation id must be ``prefix`` followed by the 12-digit
        counter. A subclass may return a realistic snapshot instead (the
        stream benchmark does); the pacing and draining stay here.
        """
        head = b'{"id":"blast-'
        tail = (
            b'","participants":[{"id":"p1","purpose":"customer","calls":[{"id":"c1","state":"connected"}]}],'
            b'"padding":"' + b"x" * max(0, size - 120) + b'"}'
        )
        return head, tail, "blast-"

    async def _run_blast(self, topic: str, rate: float, count: int | None, size: int) -> None:
        """Send pre-encoded, distinct conversation frames on ``topic``.

        ``rate`` is frames per second; 0 means as fast as the sockets drain.
        Each frame differs only in a fixed-width counter, so building one is
        a byte concatenation and a benchmark measures the client, not us.
        """
        head, tail, prefix = self.blast_body(topic, size)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        # At a fixed rate, a batch covers at most ~10 ms of frames, so the
        # rate holds at any scale instead of arriving in 256-frame bursts.
        batch = 256 if rate <= 0 else max(1, min(256, int(rate / 100)))
        while count is None or sent < count:
            n = batch if count is None else min(batch, count - sent)
            pubs = []
            for i in range(sent, sent + n):
                counter = b"%012d" % i
                pubs.append(
                    Publication(
                        (topic,),
                        head + counter + tail,
                        prefix + counter.decode(),
                        f"00000000-0000-4000-8000-{i % 10**12:012d}",
                        0.0,
                    )
                )
            self.publish(pubs)
            sent += n
            if rate > 0:
                await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
            else:
                # Let the writers drain before producing more, so memory stays flat.
                # Polling, not an event: a link may die while we wait, and
                # a missed wake-up here would stall a benchmark forever.
                while any(link.queue.qsize() > 4 * batch for link in self._links.values()):  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0)


_NO_FAULTS = _FrameFaults()


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _topic_ids(body: bytes) -> list[str]:
    try:
        items = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise ApiProblem(
            400, "bad.request", 'Body must be a JSON list like [{"id": "v2.users.ID.presence"}]'
        ) from None
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("id"), str) for i in items
    ):
        raise ApiProblem(
            400, "bad.request", 'Body must be a JSON list like [{"id": "v2.users.ID.presence"}]'
        )
    return [i["id"] for i in items]


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiProblem(400, "bad.request", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiProblem(400, "bad.request", f"{name} must be between {low} and {high}")
    return value


def _dimension_filter(query: dict[str, Any], dimension: str) -> set[str] | None:
    """Values of the ``dimension`` predicates of the segment/conversation filters."""
    found: set[str] = set()
    seen_filter = False
    for key in ("segmentFilters", "conversationFilters"):
        for flt in query.get(key) or []:
            for predicate in flt.get("predicates") or []:
                if predicate.get("dimension") == dimension:
                    seen_filter = True
                    found.add(str(predicate.get("value")))
    return found if seen_filter else None


def _has_user(record: dict[str, Any], user_ids: set[str]) -> bool:
    """Whether an analytics conversation record has a participant who is one of ``user_ids``."""
    return any(p.get("userId") in user_ids for p in record.get("participants", []))


def _touches_queue(record: dict[str, Any], queue_ids: set[str]) -> bool:
    """Whether an analytics conversation record has a segment in one of ``queue_ids``."""
    return any(
        segment.get("queueId") in queue_ids
        for participant in record.get("participants", [])
        for session in participant.get("sessions", [])
        for segment in session.get("segments", [])
    )


async def _control_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise web.HTTPBadRequest(text="control requests take a JSON object body") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="control requests take a JSON object body")
    return data


@contextlib.asynccontextmanager
async def running_emulator(settings: EmulatorSettings | None = None) -> AsyncIterator[str]:
    """Run an emulator for the duration of the block and yield its base URL."""
    async with Emulator(settings) as emulator:
        yield emulator.base_url
