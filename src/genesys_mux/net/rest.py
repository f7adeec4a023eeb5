"""The Genesys Cloud REST calls genesys-mux needs, with retries and a request budget.

Every call goes through :meth:`RestClient.request`, which

* waits for the per-token :class:`~genesys_mux.core.budget.RequestBudget`
  (300 per minute by default) so we stay under the platform's limit;
* on 401 refreshes the token once and retries;
* on 429 waits ``Retry-After`` (capped at 180 s) and retries;
* on 5xx and network failures backs off with full jitter and retries;
* turns any other failure into an :class:`ApiError` carrying the Genesys
  ``code``, ``status`` and ``contextId``.

aiohttp exceptions never escape: they become :class:`TransportError`.
Ids are validated before they are put into a URL path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec

from genesys_mux.core.backoff import Backoff, Retries, Verdict, classify_status, parse_retry_after
from genesys_mux.core.budget import RequestBudget
from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.timestamps import format_iso, parse_iso
from genesys_mux.core.topics import validate_id
from genesys_mux.errors import (
    ApiError,
    InvalidIdError,
    RateLimitedError,
    TransportError,
    UnusableChannelError,
)
from genesys_mux.net.auth import AccessToken, TokenProvider
from genesys_mux.regions import Endpoints, is_loopback_host

__all__ = ["ChannelInfo", "QueueInfo", "Rejection", "RestClient", "SubscriptionResult"]

log = logging.getLogger("genesys_mux.rest")

_CHANNELS = "/api/v2/notifications/channels"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A created notification channel."""

    id: str
    connect_uri: str
    #: Unix time the channel expires, from the ``expires`` field.
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A topic the platform refused to subscribe, and why."""

    topic: str
    reason: str
    missing_permissions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    """The answer to a subscription change: what is on the channel, what was refused."""

    permitted: tuple[str, ...]
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A routing queue, as listed by ``GET /api/v2/routing/queues``."""

    id: str
    name: str


class _ErrorBody(msgspec.Struct, rename="camel"):
    message: str = ""
    code: str = ""
    status: int = 0
    context_id: str = ""


class _ChannelBody(msgspec.Struct, rename="camel"):
    id: str
    connect_uri: str
    # Only informative (the reference says it may not move): any type is
    # taken, and only a timestamp is read.
    expires: object = None


class _Entity(msgspec.Struct, rename="camel"):
    id: str
    state: str = "Permitted"
    rejection_reason: str | None = None
    missing_permissions: list[str] = msgspec.field(default_factory=list)


class _Entities(msgspec.Struct, rename="camel"):
    entities: list[_Entity] = msgspec.field(default_factory=list)


class _ChannelList(msgspec.Struct, rename="camel"):
    entities: list[_ChannelBody] = msgspec.field(default_factory=list)


class _QueueEntity(msgspec.Struct, rename="camel"):
    id: str
    name: str = ""


class _QueuePage(msgspec.Struct, rename="camel"):
    entities: list[_QueueEntity] = msgspec.field(default_factory=list)
    page_number: int = 1
    page_count: int = 1


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]
    #: Why there was no answer (status 0), kept as the cause of the error.
    cause: BaseException | None = None


def _effective_port(scheme: str, port: int | None) -> int | None:
    """``port``, or the scheme's default where none is given (``wss://h:443`` is ``wss://h``)."""
    if port is not None:
        return port
    return {"wss": 443, "https": 443, "ws": 80, "http": 80}.get(scheme)


class RestClient:
    """REST calls against one Genesys Cloud org (or the emulator)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoints: Endpoints,
        tokens: TokenProvider,
        *,
        requests_per_minute: int = PLATFORM.requests_per_minute,
        backoff: Backoff | None = None,
        max_attempts: int = 8,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._api = endpoints.api
        self._streaming = urlsplit(endpoints.streaming)
        self._tokens = tokens
        self._budget = RequestBudget(requests_per_minute)
        self._budget_lock = asyncio.Lock()
        self._backoff = backoff or Backoff()
        self._max_attempts = max_attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        # A new token has a budget of its own on the platform.
        tokens.on_refresh.append(lambda _token: self._budget.reset())
        #: Counters for stats and metrics: requests sent, 429s seen, retries made.
        self.requests_sent = 0
        self.throttled = 0
        self.retries = 0
        #: Answers by HTTP status (0: no answer), for metrics.
        self.answers: dict[int, int] = {}
        #: Seconds spent waiting before retries (Retry-After or backoff).
        self.retry_wait_s = 0.0

    # -- the one door to the network ------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> _Answer:
        """Send one API call with budget, re-auth and retries; raise on failure.

        Returns the answer for any 2xx status, and for 404 on HEAD (which the
        caller asks about on purpose).
        """
        body = None if json is None else msgspec.json.encode(json)
        reauthed = False
        retries = Retries(
            f"{method} {path}", self._backoff, max_attempts=self._max_attempts, logger=log
        )
        while True:
            token = await self._tokens.token()
            await self._wait_for_budget()
            answer = await self._send(method, path, body, params, token)
            self.answers[answer.status] = self.answers.get(answer.status, 0) + 1
            self._learn_allowance(answer.headers.get("inin-ratelimit-allowed"))
            # Status 0 is "no answer" (see _send): retried like a 5xx, never OK.
            verdict = Verdict.RETRY if answer.status == 0 else classify_status(answer.status)
            if verdict is Verdict.OK or (method == "HEAD" and answer.status == 404):
                return answer
            if verdict is Verdict.REAUTH and not reauthed:
                reauthed = True
                await self._tokens.refresh(stale=token)
                continue
            if answer.status == 429:
                self.throttled += 1
            # Honour Retry-After wherever it appears: 503s from a gateway carry
            # it as often as 429s do.
            wait = retries.failed(
                f"answered {answer.status or 'nothing'}",
                retry_after_s=parse_retry_after(answer.headers.get("Retry-After")),
                retryable=verdict is Verdict.RETRY,
            )
            if wait is None:
                raise self._error(method, path, answer) from answer.cause
            if answer.status == 429:
                # The limit is the token's: every request waits, not this one
                # alone (each retrying on its own told time was a storm).
                self._budget.pause_until(self._clock() + wait)
            self.retries += 1
            self.retry_wait_s += wait
            await asyncio.sleep(wait)

    def _learn_allowance(self, allowed: str | None) -> None:
        """Budget for the limit the platform says it applies (``inin-ratelimit-allowed``)."""
        if allowed is None or not allowed.isdigit() or len(allowed) > 6:
            return
        if self._budget.allow(int(allowed)):
            log.info(
                "the platform allows %s requests a minute; budgeting for %d",
                allowed,
                self._budget.limit,
            )

    async def _wait_for_budget(self) -> None:
        # The lock keeps callers in order, so a burst of subscribes drains
        # the budget fairly instead of racing for the last slot.
        async with self._budget_lock:
            while (delay := self._budget.delay(self._clock())) > 0:
                log.info("request budget spent; waiting %.1f s", delay)
                await asyncio.sleep(delay)
            self._budget.spend(self._clock())

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        params: Mapping[str, str] | None,
        token: AccessToken,
    ) -> _Answer:
        headers = {"Authorization": token.authorization, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.requests_sent += 1
        try:
            async with self._session.request(
                method,
                self._api + path,
                data=body,
                params=params,
                headers=headers,
                timeout=self._timeout,
            ) as resp:
                return _Answer(resp.status, await resp.read(), resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Status 0 means "no answer": retried like a 5xx.
            log.warning("%s %s failed: %s", method, path, type(exc).__name__)
            return _Answer(0, b"", {}, exc)

    def _error(self, method: str, path: str, answer: _Answer) -> ApiError | TransportError:
        if answer.status == 0:
            return TransportError(
                f"{method} {path}: no answer from {self._api} after {self._max_attempts} attempts"
            )
        cut = 0
        try:
            err = msgspec.json.decode(answer.body, type=_ErrorBody)
        except msgspec.DecodeError:
            # Cut after the redaction, not before: a cut through a token would
            # leave its first characters, which no longer match it.
            err = _ErrorBody(message=answer.body[:4096].decode(errors="replace"))
            cut = 200
        cls = RateLimitedError if answer.status == 429 else ApiError
        # The server's words go into an exception, and from there into logs:
        # our own secrets (the tokens), whatever their shape, and anything
        # shaped like a credential (an echoed header) go first.
        detail = self._tokens.redact(f"{err.code or ''} {err.message}")
        if cut:
            detail = detail[:cut]
        return cls(
            f"{method} {path} failed: HTTP {answer.status} {detail}".rstrip(),
            status=answer.status,
            code=err.code or None,
            context_id=err.context_id or None,
        )

    # -- notifications --------------------------------------------------

    async def create_channel(self) -> ChannelInfo:
        """``POST /api/v2/notifications/channels``.

        An answer that cannot be used (no id, an unsafe one, a connectUri
        elsewhere) raises :class:`~genesys_mux.errors.UnusableChannelError`:
        the platform made the channel all the same.
        """
        answer = await self.request("POST", _CHANNELS)
        try:
            body = _decode(answer.body, _ChannelBody, "channel")
            channel_id = validate_id(body.id, "channel id")
            connect_uri = self._checked_connect_uri(channel_id, body.connect_uri)
        except (ApiError, InvalidIdError, TransportError) as exc:
            raise UnusableChannelError(
                f"a channel was made but its answer cannot be used: {exc}", status=answer.status
            ) from exc
        return ChannelInfo(channel_id, connect_uri, _parse_time(body.expires))

    def _checked_connect_uri(self, channel_id: str, uri: str) -> str:
        """``uri`` if it points at our deployment's streaming host; else a :class:`TransportError`.

        The socket is opened with no credentials, but it carries our
        subscriptions' events: a ``connectUri`` elsewhere (a tampered
        answer, a misconfigured proxy) must not be followed. The platform
        *normally* answers ``wss://streaming.D/...`` and says to use the
        URI as returned, so any host under the deployment's domain D is
        taken, and an explicit default port equals none. Plain ``ws`` is
        only accepted when the base URL itself is ``ws`` on loopback (the
        emulator), and there only on its own host and port.
        """
        expected = self._streaming
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError:
            parts, port = None, None
        host = (expected.hostname or "").lower()
        plain_ok = expected.scheme == "ws" and is_loopback_host(host)
        # streaming.D: a host under D is the deployment's (not so for a
        # custom base URL, an emulator or a proxy, whose host is its own).
        domain = host.removeprefix("streaming.") if host.startswith("streaming.") else None
        given = (parts.hostname or "").lower() if parts is not None else ""
        if (
            parts is None
            or parts.scheme not in (("wss", "ws") if plain_ok else ("wss",))
            or not (given == host or (domain is not None and given.endswith(f".{domain}")))
            or _effective_port(parts.scheme, port)
            != _effective_port(expected.scheme, expected.port)
            or parts.username is not None
            or parts.password is not None
        ):
            where = f"{host}{f':{expected.port}' if expected.port else ''}"
            if domain is not None:
                where += f" or another host under {domain}"
            raise TransportError(
                f"channel {channel_id}: refusing its connectUri {uri[:200]!r}; it must be "
                f"{'ws or wss' if plain_ok else 'wss'} on {where}, the streaming host of "
                "the configured region or base URL"
            )
        return uri

    async def channel_exists(self, channel_id: str) -> bool:
        """``HEAD /api/v2/notifications/channels/{id}``: does the channel still exist?"""
        answer = await self.request("HEAD", f"{_CHANNELS}/{validate_id(channel_id, 'channel id')}")
        return answer.status != 404

    async def list_channels(self, scope: str = "oauthclient") -> list[ChannelInfo]:
        """Channels of this token (``token``) or of the whole OAuth client (``oauthclient``)."""
        if scope not in ("token", "oauthclient"):
            raise ValueError("scope must be 'token' or 'oauthclient'")
        answer = await self.request("GET", _CHANNELS, params={"includechannels": scope})
        listing = _decode(answer.body, _ChannelList, "channel list")
        return [
            ChannelInfo(
                c.id, self._checked_connect_uri(c.id, c.connect_uri), _parse_time(c.expires)
            )
            for c in listing.entities
        ]

    async def get_subscriptions(self, channel_id: str) -> list[str]:
        """The topics a channel is subscribed to."""
        answer = await self.request("GET", _subscriptions(channel_id))
        return [e.id for e in _decode(answer.body, _Entities, "subscription list").entities]

    async def put_subscriptions(
        self, channel_id: str, topics: Iterable[str], *, ignore_errors: bool = True
    ) -> SubscriptionResult:
        """Replace a channel's topics; forbidden topics come back as rejections."""
        return await self._subscription_change("PUT", channel_id, topics, ignore_errors)

    async def post_subscriptions(
        self, channel_id: str, topics: Iterable[str], *, ignore_errors: bool = True
    ) -> SubscriptionResult:
        """Add topics to a channel; forbidden topics come back as rejections."""
        return await self._subscription_change("POST", channel_id, topics, ignore_errors)

    async def delete_subscriptions(self, channel_id: str) -> None:
        """Remove every topic from a channel."""
        await self.request("DELETE", _subscriptions(channel_id))

    async def _subscription_change(
        self, method: str, channel_id: str, topics: Iterable[str], ignore_errors: bool
    ) -> SubscriptionResult:
        answer = await self.request(
            method,
            _subscriptions(channel_id),
            json=[{"id": t} for t in topics],
            params={"ignoreErrors": "true" if ignore_errors else "false"},
        )
        entities = _decode(answer.body, _Entities, "subscription list").entities
        return SubscriptionResult(
            permitted=tuple(e.id for e in entities if e.state != "Rejected"),
            rejected=tuple(
                Rejection(e.id, e.rejection_reason or "Rejected", tuple(e.missing_permissions))
                for e in entities
                if e.state == "Rejected"
            ),
        )

    # -- conversations (back-fill) -----------------------------------------

    async def get_conversation(self, conversation_id: str) -> bytes | None:
        """``GET /api/v2/conversations/{id}``: the current snapshot, or None if unknown."""
        path = f"/api/v2/conversations/{validate_id(conversation_id, 'conversationId')}"
        try:
            answer = await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return answer.body

    async def conversations_between(
        self,
        start: float,
        end: float,
        queue_ids: Iterable[str] = (),
        user_ids: Iterable[str] = (),
        *,
        limit: int = 1000,
    ) -> list[str]:
        """Ids of the conversations of some queues or users overlapping ``[start, end]``.

        Times are Unix seconds. Uses
        ``POST /api/v2/analytics/conversations/details/query`` with or-ed
        ``queueId`` and ``userId`` segment predicates, paging until ``limit``
        ids are found.
        """
        predicates = [
            {"dimension": "queueId", "value": validate_id(q, "queueId")} for q in queue_ids
        ] + [{"dimension": "userId", "value": validate_id(u, "userId")} for u in user_ids]
        if not predicates:
            return []
        interval = f"{format_iso(start)}/{format_iso(max(end, start + 0.001))}"
        found: list[str] = []
        page_number = 1
        while len(found) < limit:
            answer = await self.request(
                "POST",
                "/api/v2/analytics/conversations/details/query",
                json={
                    "interval": interval,
                    "order": "asc",
                    "segmentFilters": [{"type": "or", "predicates": predicates}],
                    "paging": {"pageSize": 100, "pageNumber": page_number},
                },
            )
            page = _decode(answer.body, _DetailPage, "conversation details")
            found.extend(r.conversation_id for r in page.conversations)
            if not page.conversations or page_number * 100 >= page.total_hits:
                break
            page_number += 1
        return found[:limit]

    # -- routing ----------------------------------------------------------

    async def list_queues(self, page_size: int = 100, *, max_pages: int = 1000) -> list[QueueInfo]:
        """Every routing queue of the org, following the pagination to the end.

        At most ``max_pages`` pages (100,000 queues at the default size, far
        beyond any org): a listing whose page count keeps growing is a
        broken answer, and following it would never end. Raises
        :class:`TransportError` then.
        """
        queues: list[QueueInfo] = []
        page_number = 1
        while True:
            if page_number > max_pages:
                raise TransportError(
                    f"GET /api/v2/routing/queues did not end after {max_pages} pages of "
                    f"{page_size} ({len(queues)} queues so far, and its page count keeps "
                    "growing); refusing to follow it further"
                )
            answer = await self.request(
                "GET",
                "/api/v2/routing/queues",
                params={"pageSize": str(page_size), "pageNumber": str(page_number)},
            )
            page = _decode(answer.body, _QueuePage, "queue page")
            queues.extend(QueueInfo(validate_id(q.id, "queueId"), q.name) for q in page.entities)
            if page_number >= page.page_count or not page.entities:
                return queues
            page_number += 1


class _DetailRecord(msgspec.Struct, rename="camel"):
    conversation_id: str


class _DetailPage(msgspec.Struct, rename="camel"):
    conversations: list[_DetailRecord] = msgspec.field(default_factory=list)
    total_hits: int = 0


def _subscriptions(channel_id: str) -> str:
    return f"{_CHANNELS}/{validate_id(channel_id, 'channel id')}/subscriptions"


def _decode(body: bytes, kind: type[_T], what: str) -> _T:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:
        raise ApiError(f"unexpected {what} body from Genesys Cloud: {exc}", status=200) from exc


def _parse_time(value: object) -> float | None:
    """A channel's ``expires`` as Unix seconds; None when it is absent or not a timestamp."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None
