"""The emulated platform's bookkeeping: clients, tokens, channels, subscriptions.

Theory of operation
-------------------
This module is the emulator's model of Genesys Cloud's notification service,
kept free of aiohttp so the rules read in one place. Time is passed in as
epoch seconds; nothing here reads a clock or touches a socket. The HTTP and
WebSocket layer (:mod:`genesys_mux.emulator.app`) calls in, and turns the
:class:`ApiProblem` exceptions raised here into Genesys-shaped error bodies.

The rules, each from the notifications reference:

* OAuth clients have an id, a secret, granted permissions and a token
  lifetime. Tokens are opaque bearer strings with no refresh token.
* Each client may hold ``channels_per_client`` channels (20). Creating one
  more silently evicts the least recently used, preferring channels with no
  open socket.
* A channel lives ``channel_lifetime_s`` (24 h) and, when
  ``channels_die_with_token`` is set, dies with the token that created it.
* A channel holds at most ``topics_per_channel`` topics (1000); combined
  topics count as their parts.
* An invalid topic fails the whole request with 400; a topic the client may
  not read fails it with 403, unless ``ignoreErrors=true``, in which case it
  is reported ``Rejected`` with its ``missingPermissions``.
* Every token has a request budget per minute; past it, 429 with
  ``Retry-After`` and the ``inin-ratelimit-*`` headers.
"""

from __future__ import annotations

import math
import secrets
import string
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from genesys_mux.core.limits import PlatformLimits as CoreLimits
from genesys_mux.core.topics import TopicFamily, expand_topic, parse_topic
from genesys_mux.emulator.schemas import is_platform_topic
from genesys_mux.errors import InvalidTopicError

__all__ = [
    "TOPIC_PERMISSIONS",
    "ApiProblem",
    "Channel",
    "ClientApp",
    "Platform",
    "PlatformLimits",
    "Token",
]

#: The permission each topic family needs in the emulator. The real platform
#: checks role permissions per topic; these names follow its naming style.
TOPIC_PERMISSIONS: dict[TopicFamily, str] = {
    TopicFamily.QUEUE_CONVERSATIONS: "routing:queue:view",
    TopicFamily.USER_CONVERSATIONS: "conversation:communication:view",
    TopicFamily.USER_PRESENCE: "presence:userPresence:view",
    TopicFamily.USER_ROUTING_STATUS: "routing:agentStatus:view",
    TopicFamily.CONVERSATION_DETAIL_EVENTS: "analytics:conversationDetail:view",
    TopicFamily.QUEUE_OBSERVATIONS: "analytics:queueObservation:view",
}

_CHANNEL_ALPHABET = string.ascii_lowercase + string.digits
#: How long an expired token is remembered, so that it is answered
#: ``credentials.expired`` (not ``bad.credentials``) as the platform does.
_EXPIRED_TOKEN_MEMORY_S = 3600.0


class ApiProblem(Exception):
    """A Genesys-shaped API error the emulator answers with.

    It never escapes the emulator: the HTTP layer renders it as the standard
    error body ``{message, code, status, contextId, ...}``. It is not a
    :class:`~genesys_mux.errors.GenesysMuxError`: it is the platform's
    answer, not a failure of the library, and a client catching the
    library's errors must never catch it.
    """

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self, context_id: str) -> dict[str, Any]:
        """The JSON error body Genesys Cloud uses for every REST failure."""
        return {
            "message": self.message,
            "code": self.code,
            "status": self.status,
            "messageWithParams": self.message,
            "messageParams": {},
            "contextId": context_id,
            "details": [],
            "errors": [],
        }


@dataclass(frozen=True, slots=True)
class PlatformLimits(CoreLimits):
    """The platform's limits (settable, so tests reach them quickly) and the
    behaviour the reference leaves open, as settings."""

    channels_die_with_token: bool = True
    #: Whether a subscription change pushes ``expires`` forward (unknown on
    #: the real platform, so it is a setting; off by default).
    subscribe_extends_channel: bool = False


@dataclass(slots=True)
class ClientApp:
    """An OAuth client-credentials client registered with the emulator."""

    client_id: str
    client_secret: str
    permissions: frozenset[str] = frozenset({"*"})
    token_lifetime_s: int = 86399
    #: This client's channel budget; None: the platform's ``channels_per_client``.
    #: (Budgets are per client on the platform; a smaller one lets tests run
    #: against a client that cannot have 20.)
    channels: int | None = None
    #: The OAuth scopes its tokens carry; None: every scope. The notifications
    #: endpoints need ``notifications``.
    scopes: frozenset[str] | None = None

    def missing_permissions(self, family: TopicFamily) -> list[str]:
        """Permissions this client lacks to subscribe to a topic of ``family``."""
        if "*" in self.permissions:
            return []
        needed = TOPIC_PERMISSIONS[family]
        return [] if needed in self.permissions else [needed]


@dataclass(slots=True)
class Token:
    """A bearer token and the rate-limit window it is counted in."""

    value: str
    client_id: str
    issued_at: float
    expires_at: float
    revoked: bool = False
    #: When the channels it made die once it is revoked (0: at the next reap).
    channels_die_at: float = 0.0
    window_start: float = 0.0
    window_count: int = 0

    def alive(self, now: float) -> bool:
        """True while the token is neither expired nor revoked."""
        return not self.revoked and now < self.expires_at


@dataclass(slots=True)
class Channel:
    """A notification channel: its subscriptions, lifetime and usage."""

    id: str
    client_id: str
    token: str
    created_at: float
    expires_at: float
    last_used: float
    #: Subscribed plain topics in subscription order (a dict as ordered set).
    topics: dict[str, None] = field(default_factory=dict)
    connected: bool = False


class Platform:
    """Clients, tokens and channels, and the rules that govern them."""

    def __init__(self, limits: PlatformLimits | None = None) -> None:
        self.limits = limits or PlatformLimits()
        #: ``whole`` or ``parts``: see ``EmulatorSettings.combined_refusal``.
        self.combined_refusal = "whole"
        #: ``one_word``, ``any`` or ``none``: see ``EmulatorSettings.combined_topics``.
        self.combined_topics = "one_word"
        #: See ``EmulatorSettings.exclusive_topics``.
        self.exclusive_topics = False
        # Channels that lost topics to another channel of their client since
        # the last take_displaced(), for the server to tell them.
        self._displaced: dict[str, Channel] = {}
        self.clients: dict[str, ClientApp] = {}
        self.tokens: dict[str, Token] = {}
        self.channels: dict[str, Channel] = {}
        # topic -> ids of channels subscribed to it; the delivery index.
        self._subscribers: dict[str, set[str]] = {}

    # -- OAuth -----------------------------------------------------------

    def register_client(self, client: ClientApp) -> None:
        """Add or replace an OAuth client."""
        self.clients[client.client_id] = client

    def issue_token(self, client_id: str, client_secret: str, now: float) -> Token | None:
        """A new token for valid credentials, or None for bad ones."""
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.client_secret, client_secret):
            return None
        token = Token(
            value=secrets.token_urlsafe(36),
            client_id=client_id,
            issued_at=now,
            expires_at=now + client.token_lifetime_s,
        )
        self.tokens[token.value] = token
        return token

    def authenticate(self, authorization: str | None, now: float) -> Token:
        """The live token named by an ``Authorization: Bearer`` header, or 401."""
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiProblem(
                401,
                "authentication.required",
                "No authentication bearer token specified in authorization header.",
            )
        token = self.tokens.get(authorization[len("Bearer ") :].strip())
        if token is None or token.revoked:
            raise ApiProblem(401, "bad.credentials", "Invalid login credentials.")
        if not token.alive(now):
            raise ApiProblem(
                401,
                "credentials.expired",
                "The supplied credentials are expired and cannot be used.",
            )
        return token

    def charge(self, token: Token, now: float) -> dict[str, str]:
        """Count one request against the token's budget; 429 past it.

        A fixed one-minute window per token, started by its first request.
        Returns the ``inin-ratelimit-*`` headers for the response.
        """
        if now - token.window_start >= 60.0:
            token.window_start, token.window_count = now, 0
        token.window_count += 1
        reset = max(0, math.ceil(token.window_start + 60.0 - now))
        headers = {
            "inin-ratelimit-allowed": str(self.limits.requests_per_minute),
            "inin-ratelimit-count": str(token.window_count),
            "inin-ratelimit-reset": str(reset),
        }
        if token.window_count > self.limits.requests_per_minute:
            raise ApiProblem(
                429,
                "too.many.requests.retry.after",
                f"Rate limit exceeded the maximum. Retry the request in [{reset}] seconds",
                {**headers, "Retry-After": str(max(1, reset))},
            )
        return headers

    def revoke(self, token: Token, channels_die_at: float = 0.0) -> None:
        """Mark a token revoked; its channels die at a reap from ``channels_die_at`` on."""
        token.revoked = True
        token.channels_die_at = channels_die_at

    # -- channels --------------------------------------------------------

    def require_scope(self, token: Token, scope: str) -> None:
        """403 unless the token's client was granted ``scope``.

        The reference says which scope the notifications endpoints need, not
        how the platform words the refusal: the code here is the emulator's.
        """
        client = self.clients.get(token.client_id)
        if client is not None and client.scopes is not None and scope not in client.scopes:
            raise ApiProblem(
                403,
                "missing.scope",
                f"This request requires the OAuth scope {scope!r}, which the client "
                f"{token.client_id!r} was not granted",
            )

    def create_channel(self, token: Token, now: float) -> tuple[Channel, list[Channel]]:
        """Create a channel for the token's client; returns it and any evicted ones."""
        evicted: list[Channel] = []
        own = [c for c in self.channels.values() if c.client_id == token.client_id]
        client = self.clients.get(token.client_id)
        budget = self.limits.channels_per_client
        if client is not None and client.channels is not None:
            budget = client.channels
        while len(own) >= budget:
            # Least recently used goes first, and a channel nobody listens to
            # goes before any channel with a socket.
            victim = min(own, key=lambda c: (c.connected, c.last_used))
            own.remove(victim)
            self.remove_channel(victim.id)
            evicted.append(victim)
        channel_id = "streaming-0-" + "".join(secrets.choice(_CHANNEL_ALPHABET) for _ in range(26))
        channel = Channel(
            id=channel_id,
            client_id=token.client_id,
            token=token.value,
            created_at=now,
            expires_at=now + self.limits.channel_lifetime_s,
            last_used=now,
        )
        self.channels[channel_id] = channel
        return channel, evicted

    def channel_for(self, token: Token, channel_id: str) -> Channel:
        """The caller's channel, or 404 (another client's channel is not found either)."""
        channel = self.channels.get(channel_id)
        if channel is None or channel.client_id != token.client_id:
            raise ApiProblem(
                404, "not.found", f"The requested channel {channel_id} could not be found."
            )
        return channel

    def channels_of(self, token: Token, scope: Literal["token", "oauthclient"]) -> list[Channel]:
        """Channels created by this token, or by any token of its client."""
        if scope == "token":
            return [c for c in self.channels.values() if c.token == token.value]
        return [c for c in self.channels.values() if c.client_id == token.client_id]

    def remove_channel(self, channel_id: str) -> Channel | None:
        """Forget a channel and its subscriptions."""
        channel = self.channels.pop(channel_id, None)
        if channel is not None:
            self._set_topics(channel, [])
        return channel

    def reap(self, now: float) -> list[tuple[Channel, str]]:
        """Remove channels that expired or lost their token; returns them with a reason."""
        dead: list[tuple[Channel, str]] = []
        for channel in list(self.channels.values()):
            token = self.tokens.get(channel.token)
            if now >= channel.expires_at:
                reason = "channel expired"
            elif self.limits.channels_die_with_token and (
                token is None or (not token.alive(now) and now >= token.channels_die_at)
            ):
                reason = "token revoked" if token is not None and token.revoked else "token expired"
            else:
                continue
            self.remove_channel(channel.id)
            dead.append((channel, reason))
        referenced = {c.token for c in self.channels.values()}
        for value, token in list(self.tokens.items()):
            if value not in referenced and (
                token.revoked or now >= token.expires_at + _EXPIRED_TOKEN_MEMORY_S
            ):
                del self.tokens[value]
        return dead

    # -- subscriptions ---------------------------------------------------

    def subscribe(
        self,
        channel: Channel,
        topic_ids: Iterable[str],
        *,
        replace: bool,
        ignore_errors: bool,
        now: float,
    ) -> list[dict[str, Any]]:
        """Add (or, with ``replace``, set) a channel's topics.

        Returns the entity list Genesys answers with: every topic now on the
        channel as ``Permitted``, then each refused topic as ``Rejected``.
        Raises 400 for an invalid topic or too many topics, 403 for a
        forbidden topic unless ``ignore_errors``; the channel is unchanged
        whenever an error is raised.
        """
        client = self.clients[channel.client_id]
        permitted: list[str] = []
        rejected: list[dict[str, Any]] = []
        ids: list[str] = []
        for topic_id in topic_ids:
            parts = self._expand(topic_id)
            if len(parts) > 1 and self.combined_refusal == "parts":
                ids.extend(parts)  # each part answers for itself
            else:
                ids.append(topic_id)
        for topic_id in ids:
            parts = self._expand(topic_id)
            missing = sorted(
                {p for part in parts for p in client.missing_permissions(parse_topic(part).family)}
            )
            if missing and not ignore_errors:
                raise ApiProblem(
                    403,
                    "notification.unauthorized.topic",
                    f"Not authorized to subscribe to {topic_id}; missing permissions {missing}",
                )
            if missing:
                rejected.append(
                    {
                        "id": topic_id,
                        "state": "Rejected",
                        "rejectionReason": "Missing permissions",
                        "missingPermissions": missing,
                    }
                )
            else:
                permitted.extend(parts)
        wanted = (
            dict.fromkeys(permitted) if replace else {**channel.topics, **dict.fromkeys(permitted)}
        )
        if len(wanted) > self.limits.topics_per_channel:
            raise ApiProblem(
                400,
                "notification.subscription.too.many.subscriptions",
                f"Channel would have {len(wanted)} subscriptions; the limit is "
                f"{self.limits.topics_per_channel} per channel",
            )
        before = channel.topics
        self._set_topics(channel, list(wanted))
        self._touch(channel, now)
        if self.exclusive_topics:
            self._take_from_others(channel, [t for t in channel.topics if t not in before])
        return [{"id": t, "state": "Permitted"} for t in channel.topics] + rejected

    def _take_from_others(self, channel: Channel, topics: list[str]) -> None:
        """One channel per topic per client: the others of ``channel``'s client lose ``topics``."""
        losing: dict[str, set[str]] = {}
        for topic in topics:
            for other_id in self._subscribers.get(topic, ()):
                other = self.channels.get(other_id)
                if other_id != channel.id and other and other.client_id == channel.client_id:
                    losing.setdefault(other_id, set()).add(topic)
        for other_id, lost in losing.items():
            other = self.channels[other_id]
            self._set_topics(other, [t for t in other.topics if t not in lost])
            self._displaced[other_id] = other

    def take_displaced(self) -> list[Channel]:
        """The channels that lost topics to another of their client since the last call."""
        displaced, self._displaced = list(self._displaced.values()), {}
        return displaced

    def _expand(self, topic_id: str) -> tuple[str, ...]:
        """The topics a (possibly combined) topic id subscribes; 400 if it is not one taken."""
        parts = _expand(topic_id)
        if len(parts) > 1 or "?" in topic_id:
            suffixes = topic_id.partition("?")[2].split("&")
            if self.combined_topics == "none" or (
                self.combined_topics == "one_word" and any("." in s for s in suffixes)
            ):
                raise ApiProblem(
                    400,
                    "notification.invalid.topic",
                    f"Invalid topic {topic_id!r}: not a combination this platform takes",
                )
        return parts

    def unsubscribe(self, channel: Channel, topic_ids: Iterable[str], now: float) -> None:
        """Remove topics from a channel (invalid topics raise 400)."""
        gone: set[str] = set()
        for topic_id in topic_ids:
            gone.update(self._expand(topic_id))
        self._set_topics(channel, [t for t in channel.topics if t not in gone])
        self._touch(channel, now)

    def clear(self, channel: Channel, now: float) -> None:
        """Remove every subscription of a channel."""
        self._set_topics(channel, [])
        self._touch(channel, now)

    def subscribers(self, topic: str) -> set[str] | None:
        """Ids of channels subscribed to ``topic`` (None when there are none)."""
        return self._subscribers.get(topic)

    def _touch(self, channel: Channel, now: float) -> None:
        channel.last_used = now
        if self.limits.subscribe_extends_channel:
            channel.expires_at = now + self.limits.channel_lifetime_s

    def _set_topics(self, channel: Channel, topics: list[str]) -> None:
        for topic in channel.topics:
            ids = self._subscribers.get(topic)
            if ids is not None:
                ids.discard(channel.id)
                if not ids:
                    del self._subscribers[topic]
        channel.topics = dict.fromkeys(topics)
        for topic in channel.topics:
            self._subscribers.setdefault(topic, set()).add(channel.id)


def new_context_id() -> str:
    """A fresh ``contextId`` for an error body, as Genesys includes in every one."""
    return str(uuid.uuid4())


def _expand(topic_id: str) -> tuple[str, ...]:
    """The topics a (possibly combined) topic id subscribes; 400 if any is not the platform's."""
    try:
        parts = expand_topic(topic_id)
    except InvalidTopicError as exc:
        raise ApiProblem(
            400, "notification.invalid.topic", f"Invalid topic {topic_id!r}: {exc}"
        ) from None
    unknown = [part for part in parts if not is_platform_topic(part)]
    if unknown:
        raise ApiProblem(
            400,
            "notification.invalid.topic",
            f"Invalid topic {topic_id!r}: {unknown[0]!r} is not an available topic",
        )
    return parts
