"""The emulator's faults, one function each, injected by ``POST /__emulator__/faults``.

Theory of operation
-------------------
A fault is a function registered under its name with :func:`fault`. It
takes the emulator and the request's JSON parameters, does its damage at
once, and returns what it applied to (channel ids, client ids, or a short
description), which the control surface answers with. Bad parameters raise
:class:`ValueError` or :class:`TypeError`, answered 400. Without a
``channel_id``, a fault hits every channel, and a socket fault every
connected one (see :func:`_targets`).

Most faults act on the spot through the emulator's sockets
(:attr:`Emulator.links <genesys_mux.emulator.app.Emulator.links>`) and its
platform. Three kinds are left in force instead and act later: the HTTP
faults are :class:`HttpFault` entries in ``Emulator.http_faults``, consumed
by the middleware of :mod:`genesys_mux.emulator.app`; ``reserialise``,
``duplicate``, ``reorder`` and ``delay`` set a channel's (or every channel's)
:class:`~genesys_mux.emulator.sockets.FrameFaults`, which
:meth:`SocketLink.notify <genesys_mux.emulator.sockets.SocketLink.notify>`
applies to each notification. ``close_socket`` with ``next`` also waits:
it registers a callback in ``Emulator.socket_opened``, which the socket
handler calls with each new socket before that sends anything.

The emulator page of the docs (docs/emulator.md) documents every name and parameter.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from aiohttp import web

from genesys_mux.emulator.platform import ApiProblem, Channel
from genesys_mux.emulator.sockets import FrameFaults, SocketLink, system_frame

if TYPE_CHECKING:
    from genesys_mux.emulator.app import Emulator

__all__ = ["FAULTS", "Fault", "HttpFault", "SlowCall", "fault"]

#: A fault: it takes the emulator and the request's parameters, and returns
#: what it applied to.
Fault: TypeAlias = Callable[["Emulator", dict[str, Any]], list[str]]

#: Every fault, by the name ``POST /__emulator__/faults`` knows it by.
FAULTS: dict[str, Fault] = {}


def fault(name: str) -> Callable[[Fault], Fault]:
    """Register the decorated function as the fault ``name``."""

    def register(handler: Fault) -> Fault:
        FAULTS[name] = handler
        return handler

    return register


@dataclass(slots=True)
class _CallFault:
    """A fault waiting for the next ``remaining`` API calls of a path and method (any if None)."""

    remaining: int
    path: str | None
    method: str | None

    def matches(self, request: web.Request) -> bool:
        """Whether ``request`` is one this fault is waiting for."""
        return (self.path is None or self.path in request.path) and (
            self.method is None or self.method == request.method
        )


@dataclass(slots=True)
class SlowCall(_CallFault):
    """An injected delay: the next ``remaining`` matching API calls answered ``delay_s`` late."""

    delay_s: float = 1.0


@dataclass(slots=True)
class HttpFault(_CallFault):
    """An injected HTTP error, waiting for the next ``remaining`` matching API calls."""

    status: int = 503
    retry_after_s: float | None = None
    #: The call takes effect first, and only its answer is the error: a
    #: gateway that timed out while the platform went on (a channel made, a
    #: list replaced) answers the client 5xx all the same.
    after: bool = False

    def problem(self) -> ApiProblem:
        """The error a matching call is answered with."""
        if self.status == 429:
            retry = self.retry_after_s if self.retry_after_s is not None else 1.0
            return ApiProblem(
                429,
                "too.many.requests.retry.after",
                "Rate limit exceeded the maximum. "
                f"Retry the request in [{math.ceil(retry)}] seconds",
                {"Retry-After": str(math.ceil(retry))},
            )
        return ApiProblem(
            self.status, "service.unavailable", "The service is currently unavailable."
        )


def _targets(emulator: Emulator, data: dict[str, Any], *, connected: bool) -> list[Channel]:
    """The channels a fault applies to: the named one, or all (connected) ones."""
    channel_id = data.get("channel_id")
    if channel_id is not None:
        channel = emulator.platform.channels.get(str(channel_id))
        if channel is None:
            raise ValueError(f"no channel {str(channel_id)[:64]!r}")
        return [channel]
    return [
        c for c in emulator.platform.channels.values() if not connected or c.id in emulator.links
    ]


# -- sockets ------------------------------------------------------------------


@fault("drop_socket")
def drop_socket(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """The TCP connection is aborted with no close frame; the channel survives."""
    applied = []
    for channel in _targets(emulator, data, connected=True):
        link = emulator.links.pop(channel.id, None)
        if link is not None:
            link.drop()
            channel.connected = False
            applied.append(channel.id)
    return applied


@fault("socket_closing")
def socket_closing(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """``v2.system.socket_closing``, then a 1001 close after ``delay_s``."""
    delay_s = float(data.get("delay_s", emulator.settings.socket_closing_delay_s))
    applied = []
    for channel in _targets(emulator, data, connected=True):
        link = emulator.links.get(channel.id)
        if link is None:
            continue
        link.send(
            system_frame(
                "v2.system.socket_closing",
                channel.id,
                "maintenance",
                "The WebSocket will close soon for maintenance",
            )
        )
        asyncio.get_running_loop().call_later(delay_s, link.close_after_flush, 1001)
        applied.append(channel.id)
    return applied


@fault("close_socket")
def close_socket(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """A clean close with ``code`` (1000 or 1001) and no warning; the channel survives.

    With ``next``: the channel's next ``next`` sockets are closed the same
    way as soon as they open, before they send anything (not even the pong
    a client waits for), as a platform closing for maintenance may do to a
    client that comes straight back.
    """
    # The reference: socket_closing is "not guaranteed", and the close codes
    # to expect are 1000, 1001 and 1006. 1006 is drop_socket's (no close
    # frame at all); a close frame carries one of the other two.
    code = data.get("code", 1000)
    if isinstance(code, bool) or code not in _CLEAN_CLOSE_CODES:
        raise ValueError("code must be 1000 or 1001")
    again = data.get("next", 0)
    if isinstance(again, bool) or not isinstance(again, int) or not 0 <= again <= 100:
        raise ValueError("next must be a whole number of sockets from 0 to 100")
    applied = []
    for channel in _targets(emulator, data, connected=True):
        link = emulator.links.get(channel.id)
        if link is None or link.paused:
            continue  # a half-open socket (pause_heartbeats) carries no close frame
        # What was already sent its way goes out first, as on a real
        # connection; what comes after the close is never sent (nor entered
        # in the ledger). The socket handler forgets the link once it ends.
        link.close_after_flush(int(code))
        applied.append(channel.id)
    if again and applied:
        _close_on_open(emulator, dict.fromkeys(applied, again), int(code))
    return applied


def _close_on_open(emulator: Emulator, armed: dict[str, int], code: int) -> None:
    """Close the next sockets of the ``armed`` channels (id -> how many) as they open."""

    def opened(link: SocketLink) -> None:
        left = armed.get(link.channel.id, 0)
        if left <= 0:
            return
        armed[link.channel.id] = left - 1
        # The link's queue is empty: the close frame is the first frame.
        link.close_after_flush(code)
        if not any(armed.values()):
            emulator.socket_opened.remove(opened)

    emulator.socket_opened.append(opened)


_CLEAN_CLOSE_CODES = (1000, 1001)


# -- channels and tokens ------------------------------------------------------


def _kill(emulator: Emulator, data: dict[str, Any], reason: str) -> list[str]:
    # ``announce: false``: the {"result":"404"} frame is optional on the
    # platform [O], so the channel may die without a word. Its socket then
    # goes silent (no heartbeats, no events, no close), and the first the
    # client can learn of it is a 404 from the REST API, or its watchdog.
    announce = data.get("announce", True)
    if not isinstance(announce, bool):
        raise ValueError("announce must be true or false")
    applied = []
    for channel in _targets(emulator, data, connected=False):
        emulator.platform.remove_channel(channel.id)
        if announce:
            emulator.channel_died(channel, reason)
        else:
            # Left among the links, so that a stop or a reset still drops it.
            link = emulator.links.get(channel.id)
            if link is not None:
                link.go_silent()
        applied.append(channel.id)
    return applied


@fault("expire_channel")
def expire_channel(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """``{"result":"404"}`` and a close; the channel is gone (HEAD answers 404)."""
    return _kill(emulator, data, "channel expired")


@fault("evict_channel")
def evict_channel(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """``{"result":"404"}`` and a close, as for a channel evicted by a newer one."""
    return _kill(emulator, data, "evicted: the client created more channels than allowed")


@fault("revoke_token")
def revoke_token(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """``v2.system.token_revoked.{channel}``; the token gets 401, its channels die.

    They die at once, or ``channels_die_after_s`` later: when the platform
    sends the warning is not documented [?], and a client that rotates on
    it needs the time to. Nor is whether it always does: with ``warn``
    false there is no warning at all, only the 401s and the deaths.
    """
    after_s = float(data.get("channels_die_after_s", 0.0))
    if not 0.0 <= after_s <= 600.0:
        raise ValueError("channels_die_after_s must be between 0 and 600")
    warn = data.get("warn", True)
    if not isinstance(warn, bool):
        raise TypeError("warn must be true or false")
    # The token behind a channel, or every token of a client, or all.
    if data.get("channel_id") is not None:
        tokens = {_targets(emulator, data, connected=False)[0].token}
    else:
        client_id = data.get("client_id")
        tokens = {
            v
            for v, t in emulator.platform.tokens.items()
            if client_id is None or t.client_id == client_id
        }
    revoked = []
    for value in tokens:
        token = emulator.platform.tokens.get(value)
        if token is None:
            continue
        emulator.platform.revoke(token, time.time() + after_s if after_s else 0.0)
        revoked.append(token.client_id)
        for channel in emulator.platform.channels.values():
            link = emulator.links.get(channel.id)
            if warn and channel.token == value and link is not None:
                link.send(
                    system_frame(
                        f"v2.system.token_revoked.{channel.id}",
                        channel.id,
                        "user_tokens_revoked",
                        "The token that created this channel was revoked",
                    )
                )
    # The channels themselves die on a later reap, after the warning.
    return sorted(set(revoked))


@fault("no_longer_subscribed")
def no_longer_subscribed(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """``v2.system.no_longer_subscribed.{channel}``; the subscriptions are cleared."""
    applied = []
    for channel in _targets(emulator, data, connected=False):
        emulator.platform.clear(channel, time.time())
        emulator.no_longer_subscribed(channel, "This channel is no longer subscribed to its topics")
        applied.append(channel.id)
    return applied


# -- what a socket sends ------------------------------------------------------


@fault("pause_heartbeats")
def pause_heartbeats(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """A half-open socket: nothing more is sent and nothing read, not even a close."""
    applied = []
    for channel in _targets(emulator, data, connected=True):
        link = emulator.links.get(channel.id)
        if link is not None:
            link.go_silent()
            applied.append(channel.id)
    return applied


@fault("foreign_connect_uri")
def foreign_connect_uri(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """The next ``count`` channels are made, but answered with a connectUri on another host."""
    count = _count(data)
    emulator.foreign_connect_uris += count
    return [f"{count} channel(s)"]


@fault("lose_pongs")
def lose_pongs(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """The next ``count`` pings, on any socket, get no pong (the reference: one may not come)."""
    count = _count(data)
    emulator.pongs_to_lose += count
    return [f"{count} pong(s)"]


@fault("garbage_frame")
def garbage_frame(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """A text frame that is not JSON (``data``, or a default)."""
    garbage = str(data.get("data", "\u0000this is not json {")).encode()
    applied = []
    for channel in _targets(emulator, data, connected=True):
        link = emulator.links.get(channel.id)
        if link is not None:
            link.send(garbage)
            applied.append(channel.id)
    return applied


# -- HTTP ---------------------------------------------------------------------


def _http(
    emulator: Emulator, data: dict[str, Any], status: int, *, after: bool = False
) -> list[str]:
    count = int(data.get("count", 1))
    retry_after = data.get("retry_after_s")
    if count < 1 or not 400 <= status <= 599:
        raise ValueError("count must be >= 1 and status an HTTP error status")
    if not isinstance(after, bool):
        raise TypeError("after must be true or false")
    emulator.http_faults = [f for f in emulator.http_faults if f.remaining > 0]
    path, method = _call_of(data)
    emulator.http_faults.append(
        HttpFault(
            remaining=count,
            path=path,
            method=method,
            status=status,
            retry_after_s=float(retry_after) if retry_after is not None else None,
            after=after,
        )
    )
    return [f"{count} x HTTP {status}" + (" after the call took effect" if after else "")]


def _call_of(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """The ``path`` (a part of it) and ``method`` a call fault waits for; None: any."""
    path = str(data["path"]) if data.get("path") is not None else None
    method = str(data["method"]).upper() if data.get("method") is not None else None
    return path, method


@fault("http_429")
def http_429(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """The next ``count`` matching API calls get 429 with ``Retry-After``."""
    return _http(emulator, data, 429)


@fault("http_5xx")
def http_5xx(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """The next ``count`` matching API calls fail with ``status`` (503).

    With ``after``, each call takes effect first and only its answer is
    lost (the next ``count`` calls that succeed), as when a gateway gives up
    on a call the platform goes on to complete.
    """
    return _http(emulator, data, int(data.get("status", 503)), after=data.get("after", False))


def _lateness(data: dict[str, Any]) -> tuple[float, int]:
    """A slow fault's ``delay_s`` (1) and ``count`` (1), checked."""
    delay_s = float(data.get("delay_s", 1.0))
    if not 0.0 <= delay_s <= 60.0:
        raise ValueError("delay_s must be between 0 and 60")
    return delay_s, _count(data)


def _count(data: dict[str, Any]) -> int:
    """How many times a fault is to strike (``count``, 1 by default), checked."""
    count = int(data.get("count", 1))
    if not 1 <= count <= 1000:
        raise ValueError("count must be between 1 and 1000")
    return count


@fault("slow_api")
def slow_api(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """The next ``count`` matching API calls are answered ``delay_s`` late (a distant platform)."""
    delay_s, count = _lateness(data)
    path, method = _call_of(data)
    emulator.slow_calls = [c for c in emulator.slow_calls if c.remaining > 0]
    emulator.slow_calls.append(SlowCall(remaining=count, path=path, method=method, delay_s=delay_s))
    return [f"{count} x {delay_s:g} s late"]


@fault("slow_accept")
def slow_accept(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """The next ``count`` socket upgrades are answered ``delay_s`` late."""
    delay_s, count = _lateness(data)
    emulator.slow_accepts.extend([delay_s] * count)
    return ["*"]


# -- notifications ------------------------------------------------------------


def _probability(data: dict[str, Any]) -> float:
    probability = float(data.get("probability", 0.1))
    if not 0.0 <= probability <= 1.0:
        raise ValueError("probability must be between 0 and 1")
    return probability


def _frame_faults(emulator: Emulator, data: dict[str, Any]) -> tuple[str | None, FrameFaults]:
    """The named channel's frame faults, or every channel's (``None``), made if missing."""
    key = str(data["channel_id"]) if data.get("channel_id") is not None else None
    return key, emulator.frame_faults.setdefault(key, FrameFaults())


@fault("reserialise")
def reserialise(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """Notifications written anew before they are sent: the same JSON value in other bytes."""
    probability = _probability(data)
    key, faults = _frame_faults(emulator, data)
    faults.rewrite = probability
    return [key or "*"]


@fault("duplicate")
def duplicate(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """Notifications sent twice; with ``reserialise``, the copy is written anew."""
    probability = _probability(data)
    key, faults = _frame_faults(emulator, data)
    faults.duplicate = probability
    faults.reserialise = bool(data.get("reserialise", False))
    return [key or "*"]


@fault("reorder")
def reorder(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """A notification held back until ``depth`` later ones have overtaken it."""
    probability = _probability(data)
    key, faults = _frame_faults(emulator, data)
    faults.reorder = probability
    depth = int(data.get("depth", 1))
    if depth < 1:
        raise ValueError("depth must be at least 1")
    faults.reorder_depth = depth
    return [key or "*"]


@fault("delay")
def delay(emulator: Emulator, data: dict[str, Any]) -> list[str]:
    """Notifications arrive ``delay_s`` late; pongs and heartbeats do not wait."""
    delay_s = float(data.get("delay_s", 0.5))
    if not 0.0 <= delay_s <= 60.0:
        raise ValueError("delay_s must be between 0 and 60")
    key, faults = _frame_faults(emulator, data)
    faults.delay_s = delay_s
    return [key or "*"]
