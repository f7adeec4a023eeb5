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

:class:`Emulator` keeps the lifecycle, the routing, the middleware (injected
HTTP faults, Genesys-shaped errors, the request log), OAuth, channels, the
REST endpoints and the socket handler, and owns the state the other modules
act on: the sockets (:attr:`Emulator.links`), the faults in force and the
ledger. The rest is split by what it is about:

* :mod:`genesys_mux.emulator.sockets`: one open socket
  (:class:`~genesys_mux.emulator.sockets.SocketLink`), the frames it sends
  and the ledger of what was sent. Every socket has one writer task fed by
  a queue, so heartbeats, pongs, notifications and the final
  ``{"result":"404"}`` go out in the order they were produced, and a slow
  client never stalls the traffic pump. A frame is written to the ledger
  only once it has been handed to the transport, so the ledger is the truth
  about what was *sent*.
* :mod:`genesys_mux.emulator.faults`: one function per fault, each
  registered under its name.
* :mod:`genesys_mux.emulator.control`: the ``/__emulator__/...`` handlers
  and the blast.
* :mod:`genesys_mux.emulator.responses`: the JSON response the API and the
  control surface share.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import dataclasses
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import msgspec
from aiohttp import WSMsgType, web

from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.timestamps import format_iso, parse_iso
from genesys_mux.core.topics import validate_id
from genesys_mux.emulator.control import ControlSurface
from genesys_mux.emulator.faults import HttpFault, SlowCall
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
from genesys_mux.emulator.responses import json_response
from genesys_mux.emulator.schemas import available_topics
from genesys_mux.emulator.sockets import (
    PONG,
    FrameFaults,
    Ledger,
    LedgerEntry,
    Pending,
    SocketLink,
    envelope,
    system_frame,
)
from genesys_mux.errors import ConfigError, InvalidIdError
from genesys_mux.regions import is_loopback_host

__all__ = ["Emulator", "EmulatorSettings", "LedgerEntry", "running_emulator"]

log = logging.getLogger("genesys_mux.emulator")

#: How long a socket the client closed may take to send what it still has.
_CLOSE_FLUSH_S = 65.0
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
    #: How a combined topic with a forbidden part is refused (under
    #: ``ignoreErrors``): ``whole``, the combined id rejected and its
    #: permitted parts with it, or ``parts``, each forbidden part rejected on
    #: its own and the rest subscribed. The reference leaves it open [?]: a
    #: client must cope with both.
    combined_refusal: Literal["whole", "parts"] = "whole"
    #: Which combined topics are taken: ``one_word`` suffixes only
    #: (``v2.users.U?presence&routingStatus``, the only shape the reference
    #: shows), ``any`` (``?conversations.calls&presence`` too), or ``none``.
    #: The rest get 400 ``notification.invalid.topic``.
    combined_topics: Literal["one_word", "any", "none"] = "one_word"
    #: One channel per topic per OAuth client: a channel subscribing a topic
    #: that another channel of its client holds takes it from that one,
    #: which is sent ``v2.system.no_longer_subscribed`` (reason
    #: ``another_channel_subscribed``). The reference names the reason but
    #: not when it is sent [?]: off by default (any number of a client's
    #: channels may hold a topic, each delivering it), and a client must
    #: cope with both.
    exclusive_topics: bool = False
    #: Each REST subscription change waits a random time up to this long
    #: before it is applied: "overlapping PUTs race each other" (reference
    #: section 4), so a client that does not serialise its changes to a
    #: channel sees an older list win. 0: applied in arrival order.
    subscription_apply_jitter_s: float = 0.0

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
        if self.combined_refusal not in ("whole", "parts"):
            problems.append("combined_refusal must be 'whole' or 'parts'")
        if self.combined_topics not in ("one_word", "any", "none"):
            problems.append("combined_topics must be 'one_word', 'any' or 'none'")
        if not 0.0 <= self.subscription_apply_jitter_s <= 10.0:
            problems.append("subscription_apply_jitter_s must be between 0 and 10")
        if problems:
            raise ConfigError("emulator settings: " + "; ".join(problems))


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
        self._control = ControlSurface(self)
        self._reset_state()

    def _reset_state(self) -> None:
        s = self.settings
        self.platform = Platform(s.limits)
        self.platform.combined_refusal = s.combined_refusal
        self.platform.combined_topics = s.combined_topics
        self.platform.exclusive_topics = s.exclusive_topics
        for client in s.clients:
            # A copy, every field of it: the control surface may replace a
            # client, and the settings must still rebuild the first ones.
            self.platform.register_client(dataclasses.replace(client))
        self.epoch = time.time()
        self._frozen_s = 0.0
        self._frozen_since: float | None = None if s.traffic else self.epoch
        self.centre = ContactCentre(
            seed=s.seed, queues=s.queues, agents=s.agents, rate=s.rate, epoch=self.epoch
        )
        #: Every notification frame sent, in send order.
        self.ledger = Ledger(s.ledger_size)
        #: The API requests served: time, method, path and status.
        self.requests: deque[dict[str, Any]] = deque(maxlen=s.request_log_size)
        #: The open socket of each connected channel, by channel id.
        self.links: dict[str, SocketLink] = {}
        #: Injected HTTP errors still waiting for their calls, oldest first.
        self.http_faults: list[HttpFault] = []
        #: Frame faults by channel id; under ``None``, those of every other channel.
        self.frame_faults: dict[str | None, FrameFaults] = {}
        #: How long each of the next socket upgrades waits before it is answered.
        self.slow_accepts: deque[float] = deque()
        #: Injected delays still waiting for their API calls, oldest first.
        self.slow_calls: list[SlowCall] = []
        #: Pings still to go unanswered, whatever their socket (lose_pongs).
        self.pongs_to_lose = 0
        #: Channels still to be answered with a connectUri on another host.
        self.foreign_connect_uris = 0
        #: Subscription calls under way per channel id, and the most ever at once.
        self.subscription_calls: dict[str, int] = {}
        self.most_subscription_calls: dict[str, int] = {}
        self._race_rng = random.Random(f"races:{s.seed}")
        #: Called with each socket as it opens, before it sends anything (faults that wait for one).
        self.socket_opened: list[Callable[[SocketLink], None]] = []
        # Its own sequence, not the org's: a re-serialised duplicate's new
        # CorrelationId must never be one the org gives a real notification.
        self._fault_rng = random.Random(f"faults:{s.seed}")

    def reset(self) -> None:
        """Start again from the settings, as ``POST /__emulator__/reset`` does.

        The blast stops, every socket is dropped, every channel, token, fault
        and ledger entry is forgotten, and the org is rebuilt from the seed.
        """
        self._control.stop_blast()
        self.socket_opened.clear()  # faults still waiting for a socket
        for link in list(self.links.values()):
            link.drop()
        self._reset_state()

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
        self._control.stop_blast()
        for link in list(self.links.values()):
            link.drop()
        self.links.clear()
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

    @property
    def running(self) -> bool:
        """Whether the simulation runs, that is, was not frozen by the control surface."""
        return self._frozen_since is None

    def set_running(self, running: bool, now: float | None = None) -> None:
        """Resume or freeze the simulation: its clock, and with it the org's traffic."""
        now = time.time() if now is None else now
        if running and self._frozen_since is not None:
            self._frozen_s += now - self._frozen_since
            self._frozen_since = None
        elif not running and self._frozen_since is None:
            self._frozen_since = now

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            now = time.time()
            for channel, reason in self.platform.reap(now):
                self.channel_died(channel, reason)
            if self._frozen_since is None:
                self.publish(self.centre.advance(self.sim_now(now)))

    def publish(self, publications: list[Publication]) -> None:
        """Fan publications out to every socket subscribed to their topics."""
        links = self.links
        for pub in publications:
            for topic in pub.topics:
                subscribers = self.platform.subscribers(topic)
                if not subscribers:
                    continue
                frame = envelope(topic, pub.body, pub.correlation_id)
                for channel_id in subscribers:
                    link = links.get(channel_id)
                    if link is not None:
                        faults = (
                            self.frame_faults.get(channel_id)
                            or self.frame_faults.get(None)
                            or _NO_FAULTS
                        )
                        link.notify(
                            Pending(frame, topic, pub.correlation_id, pub.conversation_id),
                            self._fault_rng,
                            faults,
                        )

    def channel_died(self, channel: Channel, reason: str) -> None:
        """Tell the socket of a channel that is gone, if it has one, and close it."""
        link = self.links.pop(channel.id, None)
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
        self._control.add_routes(r)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Injected HTTP faults, Genesys-shaped errors and the request log."""
        started = time.time()
        status = 500
        _RATELIMIT_HEADERS.set({})
        try:
            faulty = request.path.startswith(_API) or request.path == "/oauth/token"
            if faulty:
                await self._injected_delay(request)
                self._injected_fault(request, after=False)
            response = await handler(request)
            if faulty and response.status < 400:
                self._injected_fault(request, after=True)
            status = response.status
            return response
        except ApiProblem as problem:
            status = problem.status
            # Errors of an authenticated call carry its rate-limit headers too.
            headers = {**_RATELIMIT_HEADERS.get({}), **problem.headers}
            return json_response(problem.body(new_context_id()), problem.status, headers)
        except web.HTTPException as exc:
            status = exc.status
            if exc.status >= 400 and request.path.startswith(_API):
                # Unknown routes and methods get the Genesys error shape as well.
                shaped = ApiProblem(status, exc.reason.lower().replace(" ", "."), exc.reason)
                allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
                return json_response(shaped.body(new_context_id()), status, allow)
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

    async def _injected_delay(self, request: web.Request) -> None:
        """Wait out the first injected delay waiting for ``request`` (slow_api), if any."""
        for slow in self.slow_calls:
            if slow.remaining > 0 and slow.matches(request):
                slow.remaining -= 1
                await asyncio.sleep(slow.delay_s)
                return

    def _injected_fault(self, request: web.Request, *, after: bool) -> None:
        """Raise the first injected fault waiting for ``request`` (before or after it ran)."""
        for fault in self.http_faults:
            if fault.after is after and fault.remaining > 0 and fault.matches(request):
                fault.remaining -= 1
                raise fault.problem()

    def _authorized(
        self, request: web.Request, scope: str | None = None
    ) -> tuple[Token, dict[str, str]]:
        now = time.time()
        token = self.platform.authenticate(request.headers.get("Authorization"), now)
        headers = self.platform.charge(token, now)
        _RATELIMIT_HEADERS.set(headers)
        if scope is not None:
            self.platform.require_scope(token, scope)
        return token, headers

    # -- OAuth ------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return json_response(
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
            return json_response(
                {
                    "error": "invalid_client",
                    "description": "authentication failed",
                    "error_description": "authentication failed",
                },
                self.settings.invalid_client_status,
            )
        lifetime = max(0, round(token.expires_at - token.issued_at))
        return json_response(
            {"access_token": token.value, "token_type": "bearer", "expires_in": lifetime}
        )

    # -- channels ---------------------------------------------------------

    def _channel_json(self, channel: Channel, request: web.Request) -> dict[str, Any]:
        scheme = "wss" if request.secure else "ws"
        return {
            "connectUri": f"{scheme}://{request.host}/channels/{channel.id}",
            "id": channel.id,
            "expires": format_iso(channel.expires_at),
        }

    async def _create_channel(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request, "notifications")
        channel, evicted = self.platform.create_channel(token, time.time())
        for victim in evicted:
            self.channel_died(victim, "evicted: the client created more channels than allowed")
        answer = self._channel_json(channel, request)
        if self.foreign_connect_uris:
            # foreign_connect_uri: made, but its connectUri names another host.
            self.foreign_connect_uris -= 1
            answer["connectUri"] = f"wss://streaming.elsewhere.invalid/channels/{channel.id}"
        return json_response(answer, 200, headers)

    async def _list_channels(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request, "notifications")
        scope = request.query.get("includechannels", "token")
        if scope not in ("token", "oauthclient"):
            raise ApiProblem(400, "bad.request", "includechannels must be 'token' or 'oauthclient'")
        scope_value: Literal["token", "oauthclient"] = (
            "token" if scope == "token" else "oauthclient"
        )
        channels = self.platform.channels_of(token, scope_value)
        return json_response(
            {"entities": [self._channel_json(c, request) for c in channels]}, 200, headers
        )

    def _own_channel(self, request: web.Request, token: Token) -> Channel:
        channel_id = request.match_info["channel_id"]
        try:
            validate_id(channel_id, "channel id")
        except InvalidIdError as exc:
            raise ApiProblem(400, "bad.request", str(exc)) from None
        return self.platform.channel_for(token, channel_id)

    async def _head_channel(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request, "notifications")
        try:
            self._own_channel(request, token)
        except ApiProblem as problem:
            return web.Response(status=problem.status, headers=headers)
        return web.Response(status=200, headers=headers)

    async def _get_subscriptions(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request, "notifications")
        channel = self._own_channel(request, token)
        return json_response(
            {"entities": [{"id": t, "state": "Permitted"} for t in channel.topics]}, 200, headers
        )

    async def _post_subscriptions(self, request: web.Request) -> web.Response:
        return await self._change_subscriptions(request, replace=False)

    async def _put_subscriptions(self, request: web.Request) -> web.Response:
        return await self._change_subscriptions(request, replace=True)

    async def _change_subscriptions(self, request: web.Request, *, replace: bool) -> web.Response:
        token, headers = self._authorized(request, "notifications")
        channel = self._own_channel(request, token)
        ignore = request.query.get("ignoreErrors", "false").lower() == "true"
        topics = _topic_ids(await request.read())
        calls, most = self.subscription_calls, self.most_subscription_calls
        calls[channel.id] = under_way = calls.get(channel.id, 0) + 1
        most[channel.id] = max(most.get(channel.id, 0), under_way)
        try:
            if jitter := self.settings.subscription_apply_jitter_s:
                await asyncio.sleep(self._race_rng.uniform(0.0, jitter))
        finally:
            calls[channel.id] -= 1
        if channel.id not in self.platform.channels:
            raise ApiProblem(404, "not.found", "channel no longer exists")
        entities = self.platform.subscribe(
            channel, topics, replace=replace, ignore_errors=ignore, now=time.time()
        )
        self._subscriptions_changed(channel)
        self._tell_displaced()
        return json_response({"entities": entities}, 200, headers)

    def _tell_displaced(self) -> None:
        """Each channel that lost topics to another of its client hears it on its socket."""
        for other in self.platform.take_displaced():
            self.no_longer_subscribed(
                other, "Another channel of this client subscribed to some of this channel's topics"
            )
            self._subscriptions_changed(other)

    def no_longer_subscribed(self, channel: Channel, message: str) -> None:
        """Send ``v2.system.no_longer_subscribed`` on the channel's socket, if it has one."""
        link = self.links.get(channel.id)
        if link is not None:
            link.send(
                system_frame(
                    f"v2.system.no_longer_subscribed.{channel.id}",
                    channel.id,
                    "another_channel_subscribed",
                    message,
                )
            )

    def _subscriptions_changed(self, channel: Channel) -> None:
        link = self.links.get(channel.id)
        if link is not None and self.settings.subscription_updated_frames:
            link.send(
                system_frame(
                    "v2.subscription.updated",
                    channel.id,
                    "subscription_updated",
                    "The channel's subscriptions were changed",
                    kind="subscription_updated",
                )
            )

    async def _delete_subscriptions(self, request: web.Request) -> web.Response:
        token, headers = self._authorized(request, "notifications")
        channel = self._own_channel(request, token)
        self.platform.clear(channel, time.time())
        self._subscriptions_changed(channel)
        return web.Response(status=204, headers=headers)

    # -- the socket ---------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        # autoclose=False: a client's close frame is answered after the
        # frames already on their way (see below), not at once by aiohttp.
        ws = web.WebSocketResponse(autoping=True, autoclose=False, max_msg_size=1024 * 1024)
        if self.slow_accepts:
            # A platform under load: the upgrade is answered late (slow_accept).
            await asyncio.sleep(self.slow_accepts.popleft())
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
        previous = self.links.pop(channel.id, None)
        if previous is not None:
            # One socket per channel: the newcomer wins, the old one is closed.
            previous.close_after_flush(1000)
        link = SocketLink(
            channel,
            ws,
            request,
            ledger=self.ledger,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
        )
        self.links[channel.id] = link
        channel.connected = True
        channel.last_used = time.time()
        link.start()
        for opened in list(self.socket_opened):
            opened(link)
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
                    async with asyncio.timeout(_CLOSE_FLUSH_S):
                        await asyncio.shield(link.tasks[0])
        finally:
            link.stop_tasks()
            if self.links.get(channel.id) is link:
                del self.links[channel.id]
                channel.connected = False
                channel.last_used = time.time()
        return ws

    def _client_text(self, link: SocketLink, text: str) -> None:
        try:
            message = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return  # the real service tolerates unknown text
        if not isinstance(message, dict):
            return
        kind = message.get("message")
        if kind == "ping":
            if self.pongs_to_lose:
                self.pongs_to_lose -= 1  # lose_pongs: no answer at all
            elif not link.paused:
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
            # Subscription calls count against the REST rate limit, over the
            # socket too: charged to the token that made the channel. Over
            # budget the ack says 429 (how the platform words that ack is
            # not documented).
            token = self.platform.tokens.get(channel.token)
            if token is not None:
                self.platform.charge(token, time.time())
            if kind == "subscribe":
                self.platform.subscribe(
                    channel, topics, replace=False, ignore_errors=False, now=time.time()
                )
                self._tell_displaced()
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
        return json_response(body, 200, headers)

    async def _available_topics(self, request: web.Request) -> web.Response:
        _, headers = self._authorized(request, "notifications")
        expand = {
            part.strip()
            for value in request.query.getall("expand", [])
            for part in value.split(",")
        }
        return json_response({"entities": available_topics(expand)}, 200, headers)

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
        return json_response(body, 200, headers)

    def blast_body(self, topic: str, size: int) -> tuple[bytes, bytes, str]:
        """The blast's frame body as ``head + counter + tail``, and its conversation id prefix.

        The body's conversation id must be ``prefix`` followed by the 12-digit
        counter. A subclass may return a realistic snapshot instead (the
        stream benchmark does); the pacing and draining stay the control
        surface's (:mod:`genesys_mux.emulator.control`).
        """
        head = b'{"id":"blast-'
        tail = (
            b'","participants":[{"id":"p1","purpose":"customer","calls":[{"id":"c1","state":"connected"}]}],'
            b'"padding":"' + b"x" * max(0, size - 120) + b'"}'
        )
        return head, tail, "blast-"


_NO_FAULTS = FrameFaults()


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


@contextlib.asynccontextmanager
async def running_emulator(settings: EmulatorSettings | None = None) -> AsyncIterator[str]:
    """Run an emulator for the duration of the block and yield its base URL."""
    async with Emulator(settings) as emulator:
        yield emulator.base_url
