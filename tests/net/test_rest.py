"""RestClient against the in-process emulator, over real sockets.

Retries are checked in the emulator's request log (``GET /__emulator__/requests``:
what reached the server, with wall-clock arrival times), never with fixed
sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
from typing import Any

import pytest

from genesys_mux.core.backoff import MAX_RETRY_AFTER_S, Backoff, parse_retry_after
from genesys_mux.emulator import PlatformLimits
from genesys_mux.errors import (
    ApiError,
    InvalidIdError,
    RateLimitedError,
    TransportError,
)
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.rest import Rejection, RestClient
from genesys_mux.regions import Endpoints
from tests.net.conftest import Stack, eventually, fast_settings

TOKEN_PATH = "/oauth/token"
CHANNELS = "/api/v2/notifications/channels"
QUEUES = "/api/v2/routing/queues"


# -- helpers ------------------------------------------------------------------


def rest_client(
    stack: Stack,
    tokens: TokenProvider | None = None,
    base_url: str | None = None,
    **kwargs: Any,
) -> RestClient:
    """A RestClient on the stack's session with fast backoff (and its tokens by default)."""
    kwargs.setdefault("backoff", Backoff(0.01, 0.05))
    endpoints = Endpoints.custom(base_url or stack.emulator.base_url)
    return RestClient(stack.session, endpoints, tokens or stack.tokens, **kwargs)


async def client_with(stack: Stack, client_id: str, permissions: list[str]) -> RestClient:
    """Register an OAuth client with the emulator and return a RestClient using it."""
    secret = f"{client_id}-secret"
    await stack.control(
        "clients",
        {"client_id": client_id, "client_secret": secret, "permissions": permissions},
    )
    endpoints = Endpoints.custom(stack.emulator.base_url)
    tokens = TokenProvider(stack.session, endpoints, client_id, secret)
    return rest_client(stack, tokens)


async def logged(stack: Stack, path: str | None = None) -> list[dict[str, Any]]:
    """API requests the emulator served, oldest first, optionally on one path."""
    data = await stack.control("requests")
    return [r for r in data["requests"] if path is None or r["path"] == path]


async def statuses(stack: Stack, path: str | None = None) -> list[int]:
    return [r["status"] for r in await logged(stack, path)]


async def org_user(stack: Stack) -> str:
    org = await stack.control("org")
    return str(org["users"][0]["id"])


class CeilingJitter(random.Random):
    """Full jitter pinned to its ceiling, so backoff delays are known lower bounds."""

    def uniform(self, a: float, b: float) -> float:
        return b


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- channels and subscriptions -------------------------------------------------------


async def test_channel_lifecycle(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = stack.rest
        channel = await rest.create_channel()
        assert channel.id.startswith("streaming-0-")
        assert channel.connect_uri.endswith(f"/channels/{channel.id}")
        assert channel.connect_uri.startswith("ws://")
        assert channel.expires_at is not None
        assert channel.expires_at == pytest.approx(time.time() + 86400, abs=60)
        assert await rest.channel_exists(channel.id)

        other = await rest.create_channel()
        listed = {c.id: c for c in await rest.list_channels()}
        assert set(listed) == {channel.id, other.id}
        assert listed[channel.id].connect_uri == channel.connect_uri
        assert {c.id for c in await rest.list_channels("token")} == {channel.id, other.id}
        with pytest.raises(ValueError, match="scope"):
            await rest.list_channels("everything")

        await stack.fault("expire_channel", channel_id=other.id)
        assert not await rest.channel_exists(other.id)
        assert await rest.channel_exists(channel.id)
        assert [c.id for c in await rest.list_channels()] == [channel.id]
        # HEAD 404 is an answer, not a failure: asked once, not retried.
        heads = [r for r in await logged(stack, f"{CHANNELS}/{other.id}") if r["method"] == "HEAD"]
        assert [r["status"] for r in heads] == [404]


async def test_subscriptions(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = stack.rest
        topics = await stack.queue_topics()
        assert len(topics) >= 4
        channel = await rest.create_channel()
        assert await rest.get_subscriptions(channel.id) == []

        result = await rest.put_subscriptions(channel.id, topics[:2])
        assert result.permitted == tuple(topics[:2])
        assert result.rejected == ()
        assert await rest.get_subscriptions(channel.id) == topics[:2]

        result = await rest.post_subscriptions(channel.id, topics[2:3])
        assert result.permitted == tuple(topics[:3])
        assert await rest.get_subscriptions(channel.id) == topics[:3]

        result = await rest.put_subscriptions(channel.id, topics[3:])
        assert result.permitted == tuple(topics[3:])
        assert await rest.get_subscriptions(channel.id) == topics[3:]

        await rest.delete_subscriptions(channel.id)
        assert await rest.get_subscriptions(channel.id) == []
        log = await logged(stack, f"{CHANNELS}/{channel.id}/subscriptions")
        assert [(r["method"], r["status"]) for r in log] == [
            ("GET", 200),
            ("PUT", 200),
            ("GET", 200),
            ("POST", 200),
            ("GET", 200),
            ("PUT", 200),
            ("GET", 200),
            ("DELETE", 204),
            ("GET", 200),
        ]


async def test_forbidden_topics_come_back_as_rejections(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = await client_with(stack, "queues-only", ["routing:queue:view"])
        queue_topic = (await stack.queue_topics())[0]
        user = await org_user(stack)
        presence = f"v2.users.{user}.presence"
        combined = f"v2.users.{user}?presence&routingStatus"
        channel = await rest.create_channel()

        result = await rest.put_subscriptions(channel.id, [queue_topic, presence, combined])
        assert result.permitted == (queue_topic,)
        assert result.rejected == (
            Rejection(presence, "Missing permissions", ("presence:userPresence:view",)),
            Rejection(
                combined,
                "Missing permissions",
                ("presence:userPresence:view", "routing:agentStatus:view"),
            ),
        )
        assert await rest.get_subscriptions(channel.id) == [queue_topic]

        # Without ignoreErrors the whole request fails with 403, and is not retried.
        path = f"{CHANNELS}/{channel.id}/subscriptions"
        before = len(await logged(stack, path))
        with pytest.raises(ApiError) as caught:
            await rest.post_subscriptions(channel.id, [presence], ignore_errors=False)
        error = caught.value
        assert error.status == 403
        assert error.code == "notification.unauthorized.topic"
        assert error.context_id
        assert (await statuses(stack, path))[before:] == [403]
        assert await rest.get_subscriptions(channel.id) == [queue_topic]


# -- 401: one refresh, one retry ------------------------------------------------------


async def test_revoked_token_is_refreshed_once_and_the_call_retried(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = stack.rest
        await rest.create_channel()
        stale = stack.tokens.current
        assert stale is not None
        mark = len(await logged(stack))
        await stack.fault("revoke_token", client_id="demo-client")

        channel = await rest.create_channel()
        assert channel.id.startswith("streaming-0-")
        fresh = stack.tokens.current
        assert fresh is not None
        assert fresh is not stale
        after = [(r["method"], r["path"], r["status"]) for r in (await logged(stack))[mark:]]
        assert after == [
            ("POST", CHANNELS, 401),
            ("POST", TOKEN_PATH, 200),
            ("POST", CHANNELS, 200),
        ]


async def test_concurrent_401s_share_one_refresh(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = stack.rest
        await rest.list_channels()
        mark = len(await logged(stack))
        await stack.fault("revoke_token", client_id="demo-client")
        await asyncio.gather(*(rest.list_channels() for _ in range(10)))
        after = [(r["path"], r["status"]) for r in (await logged(stack))[mark:]]
        assert after.count((TOKEN_PATH, 200)) == 1
        assert after.count((CHANNELS, 401)) == 10
        assert after.count((CHANNELS, 200)) == 10


async def test_a_second_401_is_not_retried_again(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = stack.rest
        await rest.list_channels()
        mark = len(await logged(stack))
        await stack.fault("http_5xx", status=401, count=3, path=CHANNELS, method="GET")
        with pytest.raises(ApiError) as caught:
            await rest.list_channels()
        assert caught.value.status == 401
        after = [(r["path"], r["status"]) for r in (await logged(stack))[mark:]]
        assert after == [(CHANNELS, 401), (TOKEN_PATH, 200), (CHANNELS, 401)]


# -- 429 and Retry-After ----------------------------------------------------------


async def test_429_waits_for_retry_after_then_succeeds(make_stack: Any) -> None:
    async with make_stack(fast_settings(queues=3)) as stack:
        rest = stack.rest
        await stack.fault("http_429", retry_after_s=1, count=1, path=QUEUES)
        queues = await rest.list_queues()
        assert len(queues) == 3
        log = await logged(stack, QUEUES)
        assert [r["status"] for r in log] == [429, 200]
        throttled_at = log[0]["time"]
        assert log[1]["time"] - throttled_at >= 1.0
        assert not [r for r in log if throttled_at < r["time"] < throttled_at + 1.0]
        assert rest.throttled == 1
        assert rest.retries == 1


async def test_retry_after_is_capped(make_stack: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="genesys_mux.rest")
    assert MAX_RETRY_AFTER_S == 180.0
    assert parse_retry_after("86400") == MAX_RETRY_AFTER_S
    async with make_stack() as stack:
        await stack.fault("http_429", retry_after_s=86400, count=1, path=QUEUES)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stack.rest.list_queues(), 0.5)
        assert await statuses(stack, QUEUES) == [429]
        waits = [r.getMessage() for r in caplog.records if r.name == "genesys_mux.rest"]
        assert len(waits) == 1
        assert waits[0].endswith(f"retry 1 in {MAX_RETRY_AFTER_S:.1f} s")


async def test_429_after_every_attempt_raises_rate_limited(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = rest_client(stack, max_attempts=3)
        await stack.fault("http_429", retry_after_s=0, count=3, path=QUEUES)
        with pytest.raises(RateLimitedError) as caught:
            await rest.list_queues()
        assert caught.value.status == 429
        assert caught.value.code == "too.many.requests.retry.after"
        assert caught.value.context_id
        assert await statuses(stack, QUEUES) == [429, 429, 429]


# -- 5xx, failures that are not retried ----------------------------------------------


async def test_5xx_is_retried_with_backoff_then_succeeds(make_stack: Any) -> None:
    async with make_stack() as stack:
        # Ceilings: retry 1 waits min(0.4, 0.1 * 1) = 0.1 s, retry 2 min(0.4, 0.1 * 2) = 0.2 s.
        rest = rest_client(stack, backoff=Backoff(0.1, 0.4, rng=CeilingJitter()))
        await stack.fault("http_5xx", status=503, count=1, path=CHANNELS, method="POST")
        await stack.fault("http_5xx", status=500, count=1, path=CHANNELS, method="POST")
        channel = await rest.create_channel()
        assert await rest.channel_exists(channel.id)
        posts = [r for r in await logged(stack, CHANNELS) if r["method"] == "POST"]
        assert [r["status"] for r in posts] == [503, 500, 200]
        assert posts[1]["time"] - posts[0]["time"] >= 0.1
        assert posts[2]["time"] - posts[1]["time"] >= 0.2
        assert rest.retries == 2
        assert rest.throttled == 0


async def test_5xx_after_max_attempts_raises_api_error(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = rest_client(stack, max_attempts=3)
        await stack.fault("http_5xx", status=502, count=3, path=CHANNELS, method="POST")
        with pytest.raises(ApiError) as caught:
            await rest.create_channel()
        error = caught.value
        assert type(error) is ApiError
        assert error.status == 502
        assert error.code == "service.unavailable"
        assert error.context_id
        assert "502" in str(error)
        assert await statuses(stack, CHANNELS) == [502, 502, 502]


async def test_no_answer_becomes_transport_error(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = rest_client(stack, base_url=f"http://127.0.0.1:{closed_port()}", max_attempts=3)
        with pytest.raises(TransportError, match="no answer"):
            await rest.list_channels()
        assert rest.requests_sent == 3


async def test_client_errors_are_not_retried(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = stack.rest
        channel = await rest.create_channel()
        path = f"{CHANNELS}/{channel.id}/subscriptions"

        with pytest.raises(ApiError) as invalid:
            await rest.put_subscriptions(channel.id, ["v2.no.such.topic"])
        assert invalid.value.status == 400
        assert invalid.value.code == "notification.invalid.topic"
        assert invalid.value.context_id
        assert await statuses(stack, path) == [400]

        await stack.fault("http_5xx", status=403, count=1, path=path)
        with pytest.raises(ApiError) as forbidden:
            await rest.get_subscriptions(channel.id)
        assert forbidden.value.status == 403
        assert await statuses(stack, path) == [400, 403]

        await stack.fault("expire_channel", channel_id=channel.id)
        with pytest.raises(ApiError) as missing:
            await rest.get_subscriptions(channel.id)
        assert missing.value.status == 404
        assert missing.value.code == "not.found"
        assert missing.value.context_id
        assert await statuses(stack, path) == [400, 403, 404]
        assert rest.retries == 0


# -- the request budget -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "budget"),
    [(5, 5), (None, 5), (3, 3)],
    ids=["configured", "learned-from-the-platform", "configured-lower"],
)
async def test_budget_waits_instead_of_bouncing_off_the_rate_limit(
    make_stack: Any, configured: int | None, budget: int
) -> None:
    """An org allowed 5 requests a minute.

    Configured for the default 300, the client learns the 5 from the first
    answer's ``inin-ratelimit-allowed`` and holds the sixth back instead of
    drawing a 429 (whose Retry-After every waiting request then obeyed at
    once, to be refused again together: a storm at each start of
    business). A budget configured lower is kept: it may leave room for
    others.
    """
    limits = PlatformLimits(requests_per_minute=5)
    kwargs = {} if configured is None else {"requests_per_minute": configured}
    async with make_stack(fast_settings(limits=limits), **kwargs) as stack:
        rest = stack.rest
        for _ in range(budget):
            await rest.list_channels()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rest.list_channels(), 0.5)
        api = [r for r in await logged(stack) if r["path"] != TOKEN_PATH]
        assert [r["status"] for r in api] == [200] * budget
        assert rest.requests_sent == budget
        assert rest.throttled == 0

        # A new token has a budget of its own, here and on the platform.
        await stack.tokens.refresh()
        await asyncio.wait_for(rest.list_channels(), 5)
        api = [r for r in await logged(stack) if r["path"] != TOKEN_PATH]
        assert [r["status"] for r in api] == [200] * (budget + 1)


async def test_a_429_holds_back_every_request_of_the_token(make_stack: Any) -> None:
    async with make_stack() as stack:
        rest = rest_client(stack)
        channel = await rest.create_channel()
        await stack.fault("http_429", path="/subscriptions", retry_after_s=1, count=1)
        told = asyncio.create_task(rest.put_subscriptions(channel.id, []))

        async def refused() -> bool:
            return 429 in [r["status"] for r in await logged(stack)]

        await eventually(refused)
        await rest.channel_exists(channel.id)  # not the request told to wait
        await told
        api = [r for r in await logged(stack) if r["path"] != TOKEN_PATH]
        (refusal,) = [r for r in api if r["status"] == 429]
        after = [r for r in api if r["time"] > refusal["time"]]
        assert sorted(r["method"] for r in after) == ["HEAD", "PUT"]
        assert all(r["time"] >= refusal["time"] + 0.95 for r in after), after


# -- pagination --------------------------------------------------------------------------


@pytest.mark.parametrize("queue_count", [5, 4])
async def test_list_queues_follows_every_page(make_stack: Any, queue_count: int) -> None:
    async with make_stack(fast_settings(queues=queue_count)) as stack:
        org = await stack.control("org")
        expected = [(q["id"], q["name"]) for q in org["queues"]]
        assert len(expected) == queue_count
        queues = await stack.rest.list_queues(page_size=2)
        assert [(q.id, q.name) for q in queues] == expected
        assert len(await logged(stack, QUEUES)) == math.ceil(queue_count / 2)

        # A queue added later is listed too.
        added = await stack.control("queues", {"name": "Late Queue"})
        queues = await stack.rest.list_queues(page_size=2)
        assert [q.id for q in queues] == [q for q, _ in expected] + [added["id"]]


# -- ids are validated before anything is sent -----------------------------------------


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "x?y=1", "", "id with space", "é"])
async def test_ids_are_validated_before_any_request(make_stack: Any, bad_id: str) -> None:
    async with make_stack() as stack:
        rest = stack.rest
        with pytest.raises(InvalidIdError):
            await rest.channel_exists(bad_id)
        with pytest.raises(InvalidIdError):
            await rest.get_subscriptions(bad_id)
        with pytest.raises(InvalidIdError):
            await rest.put_subscriptions(bad_id, ["v2.users.u1.presence"])
        with pytest.raises(InvalidIdError):
            await rest.post_subscriptions(bad_id, [])
        with pytest.raises(InvalidIdError):
            await rest.delete_subscriptions(bad_id)
        assert await logged(stack) == []
        assert rest.requests_sent == 0
