"""TokenProvider against the in-process emulator, over real sockets.

Timing is read from the emulator's request log (``GET /__emulator__/requests``,
wall-clock arrival times), never from fixed sleeps: a test waits for a
condition with :func:`eventually`, or for a deadline the provider itself
computed (``refresh_due``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import socket
import time
import traceback
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from genesys_mux.core.backoff import Backoff
from genesys_mux.errors import AuthenticationError, TransportError
from genesys_mux.net.auth import AccessToken, TokenProvider
from genesys_mux.net.rest import RestClient
from genesys_mux.regions import Endpoints
from tests.net.conftest import Stack, eventually, fast_settings, stand_in
from tests.sinks.conftest import free_port

TOKEN_PATH = "/oauth/token"
ENV_VARS = (
    "GENESYSCLOUD_OAUTHCLIENT_ID",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET",
    "GENESYSCLOUD_REGION",
)


# -- helpers ------------------------------------------------------------------


def provider(
    stack: Stack,
    client_id: str = "demo-client",
    client_secret: str = "demo-secret",
    **kwargs: Any,
) -> TokenProvider:
    """A fresh TokenProvider against the stack's emulator (fast backoff by default)."""
    kwargs.setdefault("backoff", Backoff(0.01, 0.05))
    endpoints = Endpoints.custom(stack.emulator.base_url)
    return TokenProvider(stack.session, endpoints, client_id, client_secret, **kwargs)


async def register(
    stack: Stack,
    client_id: str,
    client_secret: str,
    *,
    token_lifetime_s: int = 86399,
    permissions: tuple[str, ...] = ("*",),
) -> None:
    await stack.control(
        "clients",
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "permissions": list(permissions),
            "token_lifetime_s": token_lifetime_s,
        },
    )


async def logged(stack: Stack, path: str | None = None) -> list[dict[str, Any]]:
    """API requests the emulator served, oldest first, optionally on one path."""
    data = await stack.control("requests")
    return [r for r in data["requests"] if path is None or r["path"] == path]


async def token_statuses(stack: Stack) -> list[int]:
    return [r["status"] for r in await logged(stack, TOKEN_PATH)]


def traceback_depth(exc: BaseException) -> int:
    depth, tb = 0, exc.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


# -- obtaining and caching ----------------------------------------------------------


async def test_token_is_obtained_once_and_cached(make_stack: Any) -> None:
    async with make_stack() as stack:
        tokens = provider(stack)
        assert tokens.current is None
        first = await tokens.token()
        assert first.value
        assert first.authorization == f"Bearer {first.value}"
        assert first.lifetime_s == pytest.approx(86399)
        assert first.expires_at > time.monotonic()
        second = await tokens.token()
        assert second is first
        assert tokens.current is first
        assert await token_statuses(stack) == [200]


# -- refresh ahead of expiry --------------------------------------------------------


async def test_the_lifetime_is_exactly_what_the_server_granted(make_stack: Any) -> None:
    """Not the difference of two clock readings, which float rounding can make 86399.00000000006.

    The lifetime is a metric (``genesys_mux_token_lifetime_seconds``), where
    a value the server never sent reads as a bug. The clock is pinned to a
    reading where ``(t + 86399) - t`` is not 86399.
    """
    clock_reading = 500_000.3
    assert (clock_reading + 86399) - clock_reading != 86399
    async with make_stack() as stack:
        tokens = provider(stack, clock=lambda: clock_reading)
        token = await tokens.token()
        assert token.lifetime_s == 86399
        assert token.expires_at == clock_reading + 86399


@pytest.mark.parametrize(
    ("lifetime_s", "override_s", "margin_s"),
    [
        (86399.0, None, 8639.9),  # 10 % beats 60 s
        (3600.0, None, 360.0),
        (300.0, None, 60.0),  # 60 s beats 10 %
        (120.0, None, 60.0),  # 60 s is exactly half
        (100.0, None, 50.0),  # capped at half the lifetime
        (4.0, None, 2.0),
        (86399.0, 5.0, 5.0),  # the override replaces the default
        (300.0, 120.0, 120.0),
        (4.0, 30.0, 2.0),  # an override is capped at half the lifetime too
    ],
)
async def test_refresh_margin(lifetime_s: float, override_s: float | None, margin_s: float) -> None:
    async with aiohttp.ClientSession() as session:
        tokens = TokenProvider(
            session,
            Endpoints.custom("http://127.0.0.1:9"),
            "id",
            "secret",
            refresh_margin_s=override_s,
        )
        token = AccessToken("opaque", 1000.0, lifetime_s)
        assert tokens.refresh_due(token) == pytest.approx(1000.0 + lifetime_s - margin_s)


async def test_token_is_refreshed_ahead_of_expiry(make_stack: Any) -> None:
    async with make_stack() as stack:
        await register(stack, "short-lived", "short-secret", token_lifetime_s=4)
        default = provider(stack, "short-lived", "short-secret")
        overridden = provider(stack, "short-lived", "short-secret", refresh_margin_s=1.0)
        d1 = await default.token()
        o1 = await overridden.token()
        assert d1.lifetime_s == pytest.approx(4)
        # max(60 s, 10 %) = 60 s, capped at half the 4 s lifetime.
        assert default.refresh_due(d1) == pytest.approx(d1.expires_at - 2.0)
        assert overridden.refresh_due(o1) == pytest.approx(o1.expires_at - 1.0)
        assert await default.token() is d1
        assert await token_statuses(stack) == [200, 200]

        await eventually(lambda: time.monotonic() >= default.refresh_due(d1), within=5)
        d2 = await default.token()
        assert d2 is not d1
        assert d2.value != d1.value
        assert time.monotonic() < d1.expires_at, "the refresh came after the old token died"
        # The overridden provider's margin is 1 s: its token is not due yet.
        assert time.monotonic() < overridden.refresh_due(o1)
        assert await overridden.token() is o1
        assert await token_statuses(stack) == [200, 200, 200]

        await eventually(lambda: time.monotonic() >= overridden.refresh_due(o1), within=5)
        o2 = await overridden.token()
        assert o2 is not o1
        assert await default.token() is d2
        assert await token_statuses(stack) == [200, 200, 200, 200]


# -- single flight ------------------------------------------------------------------


async def test_concurrent_callers_share_one_token_request(make_stack: Any) -> None:
    async with make_stack() as stack:
        tokens = provider(stack)
        first = await asyncio.gather(*(tokens.token() for _ in range(50)))
        assert all(t is first[0] for t in first)
        assert await token_statuses(stack) == [200]

        stale = first[0]
        refreshed = await asyncio.gather(*(tokens.refresh(stale) for _ in range(50)))
        assert refreshed[0] is not stale
        assert all(t is refreshed[0] for t in refreshed)
        assert await token_statuses(stack) == [200, 200]

        # Mixed: token() and refresh(stale) interleaved still cost one request.
        stale = refreshed[0]
        calls = [tokens.refresh(stale) if i % 2 else tokens.token() for i in range(50)]
        mixed = await asyncio.gather(*calls)
        newest = tokens.current
        assert newest is not None
        assert newest is not stale
        assert all(t is newest or t is stale for t in mixed)
        assert sum(t is newest for t in mixed) >= 25
        assert await token_statuses(stack) == [200, 200, 200]

        # Asking again to replace a token that was already replaced is free.
        assert await tokens.refresh(stale) is newest
        assert await token_statuses(stack) == [200, 200, 200]


async def test_cancelling_one_waiter_does_not_cancel_the_shared_refresh(make_stack: Any) -> None:
    async with make_stack() as stack:
        # A 429 keeps the refresh in flight for the 1 s Retry-After.
        await stack.fault("http_429", retry_after_s=1, count=1, path=TOKEN_PATH)
        tokens = provider(stack)
        impatient = asyncio.create_task(tokens.token())
        patient = [asyncio.create_task(tokens.token()) for _ in range(10)]

        async def throttled() -> bool:
            return await token_statuses(stack) == [429]

        await eventually(throttled)
        assert not impatient.done()
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        results = await asyncio.gather(*patient)
        assert all(t is results[0] for t in results)
        assert tokens.current is results[0]
        assert await token_statuses(stack) == [429, 200]


async def test_refresh_completes_when_every_waiter_is_cancelled(make_stack: Any) -> None:
    async with make_stack() as stack:
        await stack.fault("http_429", retry_after_s=1, count=1, path=TOKEN_PATH)
        tokens = provider(stack)
        waiters = [asyncio.create_task(tokens.token()) for _ in range(3)]

        async def throttled() -> bool:
            return await token_statuses(stack) == [429]

        await eventually(throttled)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert all(w.cancelled() for w in waiters)
        # The shared refresh carries on and caches its token...
        await eventually(lambda: tokens.current is not None)
        token = tokens.current
        # ...which the next caller gets without another request.
        assert await tokens.token() is token
        assert await token_statuses(stack) == [429, 200]


# -- throttling and server errors -------------------------------------------------


async def test_429_on_token_is_retried_after_retry_after(
    make_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="genesys_mux.auth")
    async with make_stack() as stack:
        await stack.fault("http_429", retry_after_s=1, count=1, path=TOKEN_PATH)
        tokens = provider(stack)
        token = await tokens.token()
        assert token.value
        log = await logged(stack, TOKEN_PATH)
        assert [r["status"] for r in log] == [429, 200]
        assert log[1]["time"] - log[0]["time"] >= 1.0, "retried inside the Retry-After window"
        assert any("retry 1 in 1.0 s" in r.getMessage() for r in caplog.records)


class CeilingJitter(random.Random):
    """Full jitter pinned to its ceiling, so backoff delays are known lower bounds."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_5xx_on_token_is_retried_with_backoff(make_stack: Any) -> None:
    async with make_stack() as stack:
        await stack.fault("http_5xx", status=503, count=1, path=TOKEN_PATH)
        await stack.fault("http_5xx", status=502, count=1, path=TOKEN_PATH)
        # Ceilings: retry 1 waits min(0.4, 0.1 * 1) = 0.1 s, retry 2 min(0.4, 0.1 * 2) = 0.2 s.
        tokens = provider(stack, backoff=Backoff(0.1, 0.4, rng=CeilingJitter()))
        assert (await tokens.token()).value
        log = await logged(stack, TOKEN_PATH)
        assert [r["status"] for r in log] == [503, 502, 200]
        assert log[1]["time"] - log[0]["time"] >= 0.1
        assert log[2]["time"] - log[1]["time"] >= 0.2


async def test_persistent_5xx_is_a_transient_transport_error(make_stack: Any) -> None:
    async with make_stack() as stack:
        await stack.fault("http_5xx", status=503, count=3, path=TOKEN_PATH)
        tokens = provider(stack, max_attempts=3)
        with pytest.raises(TransportError, match="after 3 attempts") as caught:
            await tokens.token()
        assert not isinstance(caught.value, AuthenticationError)
        assert await token_statuses(stack) == [503, 503, 503]
        # Not latched like a refusal: once the server recovers, it works.
        assert (await tokens.token()).value
        assert await token_statuses(stack) == [503, 503, 503, 200]


async def test_failed_token_requests_are_counted_by_reason(make_stack: Any) -> None:
    async with make_stack() as stack:
        tokens = provider(stack, max_attempts=2)
        assert tokens.failures == {"refused": 0, "unavailable": 0, "invalid_answer": 0}
        # Throttled, then a server error: each failed request counts, retries included.
        await stack.fault("http_429", retry_after_s=0, count=1, path=TOKEN_PATH)
        await stack.fault("http_5xx", status=503, count=2, path=TOKEN_PATH)
        with pytest.raises(TransportError):
            await tokens.token()
        assert tokens.failures == {"refused": 0, "unavailable": 2, "invalid_answer": 0}
        first = await tokens.token()  # one more 503, then a token
        assert tokens.failures["unavailable"] == 3
        assert await token_statuses(stack) == [429, 503, 503, 200]

        # The client's secret is rotated on the platform: the refresh is refused,
        # once; the latched refusal raised again costs no request and no count.
        await register(stack, "demo-client", "rotated-secret")
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                await tokens.refresh(first)
        assert tokens.failures == {"refused": 1, "unavailable": 3, "invalid_answer": 0}
        assert await token_statuses(stack) == [429, 503, 503, 200, 401]


async def test_a_token_answer_without_a_token_is_counted_as_invalid() -> None:
    async def garbage(_request: web.Request) -> web.Response:
        return web.Response(text="<html>a captive portal</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post(TOKEN_PATH, garbage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            tokens = TokenProvider(
                session, Endpoints.custom(f"http://{host}:{port}"), "id", "secret-x"
            )
            with pytest.raises(TransportError, match="without a usable token body"):
                await tokens.token()
            assert tokens.failures == {"refused": 0, "unavailable": 0, "invalid_answer": 1}
    finally:
        await runner.cleanup()


async def test_unreachable_login_host_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        tokens = TokenProvider(
            session,
            Endpoints.custom(f"http://127.0.0.1:{port}"),
            "id",
            "secret-never-sent",
            backoff=Backoff(0.01, 0.02),
            max_attempts=2,
        )
        with pytest.raises(TransportError, match="could not reach") as caught:
            await tokens.token()
        assert "secret-never-sent" not in str(caught.value)


def hanging_login(answered: int) -> tuple[web.Application, list[float]]:
    """A login host that issues ``answered`` tokens, then takes requests and never answers."""
    calls: list[float] = []
    never = asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) > answered:
            await never.wait()
        return web.json_response({"access_token": f"token-{len(calls)}", "expires_in": 1000})

    app = web.Application()
    app.router.add_post(TOKEN_PATH, token)
    return app, calls


def impatient_provider(session: aiohttp.ClientSession, base: str, **kwargs: Any) -> TokenProvider:
    """A provider that tries twice, 0.3 s each, against the stand-in at ``base``."""
    return TokenProvider(
        session,
        Endpoints.custom(base),
        "id",
        "secret",
        backoff=Backoff(0.01, 0.02),
        max_attempts=2,
        timeout_s=0.3,
        **kwargs,
    )


async def test_a_login_host_that_never_answers_times_out_and_is_retried() -> None:
    app, calls = hanging_login(answered=0)
    async with stand_in(app, free_port()) as base, aiohttp.ClientSession() as session:
        tokens = impatient_provider(session, base)
        with pytest.raises(TransportError, match="could not reach") as caught:
            await asyncio.wait_for(tokens.token(), 10)
        assert "TimeoutError" in str(caught.value)
        assert len(calls) == 2


async def test_a_hanging_early_refresh_holds_nobody_while_the_token_has_life(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Until the last few seconds of the cached token: then there is nothing else to use."""
    app, calls = hanging_login(answered=1)
    now = [0.0]
    async with stand_in(app, free_port()) as base, aiohttp.ClientSession() as session:
        tokens = impatient_provider(session, base, early_wait_s=0.2, clock=lambda: now[0])
        first = await tokens.token()
        now[0] = tokens.refresh_due(first)
        with caplog.at_level(logging.WARNING, logger="genesys_mux.auth"):
            callers = [tokens.token() for _ in range(3)]
            answers = await asyncio.wait_for(asyncio.gather(*callers), 5)
        assert all(answer is first for answer in answers)
        # One refresh for the three (its second attempt may have begun).
        assert 2 <= len(calls) <= 3, calls
        slow = [r for r in caplog.records if "taking more than" in r.getMessage()]
        assert len(slow) == 1, "said once per refresh, not once per caller"
        # Past the last resort, callers wait for a new token, and get the failure.
        now[0] = first.expires_at - 1.0
        with pytest.raises(TransportError):
            await asyncio.wait_for(tokens.token(), 10)


async def test_credentials_refused_at_an_early_refresh_leave_the_token_in_hand(
    make_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret revoked mid-run: the token in hand still works until it expires.

    Every event it carries until then is one not lost; the refusal is said
    once, at ERROR, and raised at the last resort (the feed stops then).
    """
    now = [0.0]
    async with make_stack(fast_settings()) as stack:
        tokens = provider(stack, clock=lambda: now[0])
        first = await tokens.token()
        await stack.fault("http_5xx", path=TOKEN_PATH, status=401, count=100)
        now[0] = tokens.refresh_due(first)
        with caplog.at_level(logging.WARNING, logger="genesys_mux.auth"):
            answers = [await tokens.token() for _ in range(3)]
        assert all(answer is first for answer in answers)
        assert await token_statuses(stack) == [200, 401], "refused once: never asked again"
        said = [r for r in caplog.records if "refused the client credentials" in r.getMessage()]
        assert len(said) == 1
        assert said[0].levelno == logging.ERROR
        assert "using the current token until it expires" in said[0].getMessage()
        # Against a base URL there is no region to check: the URL is what to check.
        assert "GENESYSCLOUD_REGION" not in said[0].getMessage()
        assert f"the base URL ({stack.emulator.base_url}) serves the org" in said[0].getMessage()
        now[0] = first.expires_at - 1.0
        with pytest.raises(AuthenticationError):
            await tokens.token()


async def test_close_stops_a_token_request_that_nobody_waits_for_any_more() -> None:
    """A start cancelled during its first login: the shielded request must not live on."""
    app, calls = hanging_login(answered=0)
    async with stand_in(app, free_port()) as base, aiohttp.ClientSession() as session:
        tokens = impatient_provider(session, base)
        caller = asyncio.create_task(tokens.token())
        await eventually(lambda: len(calls) == 1)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        running = [t for t in asyncio.all_tasks() if t.get_name() == "genesys-mux-token-refresh"]
        assert running, "shielded from its caller: still running"
        await tokens.close()
        assert all(t.done() for t in running)


# -- bad credentials ---------------------------------------------------------------


@pytest.mark.parametrize("refusal_status", [401, 400])
async def test_bad_secret_is_fatal_and_never_retried(make_stack: Any, refusal_status: int) -> None:
    wrong = "not-the-secret-4711"
    async with make_stack(fast_settings(invalid_client_status=refusal_status)) as stack:
        tokens = provider(stack, "demo-client", wrong)
        results = await asyncio.gather(*(tokens.token() for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, AuthenticationError) for r in results)
        assert await token_statuses(stack) == [refusal_status]
        error = results[0]
        assert isinstance(error, AuthenticationError)
        message = str(error)
        for name in ENV_VARS[:2]:
            assert name in message
        # A base URL, not a region: the URL is what to check.
        assert f"the base URL ({stack.emulator.base_url}) serves the org" in message
        assert "demo-client" in message
        assert f"HTTP {refusal_status}" in message
        assert "invalid_client" in message
        assert wrong not in message

        # Later calls fail again at once, without a new request (no retry storm),
        # and re-raising does not pile up traceback frames on the shared error.
        depths = []
        for call in (tokens.token, tokens.refresh, tokens.token, tokens.refresh, tokens.token):
            with pytest.raises(AuthenticationError) as again:
                await call()
            assert wrong not in str(again.value)
            depths.append(traceback_depth(again.value))
        assert await token_statuses(stack) == [refusal_status]
        assert depths[-1] == depths[-3], f"traceback grows with every call: {depths}"


async def test_unknown_client_is_refused(make_stack: Any) -> None:
    async with make_stack() as stack:
        tokens = provider(stack, "no-such-client", "whatever-secret")
        with pytest.raises(AuthenticationError, match="'no-such-client'"):
            await tokens.token()
        assert await token_statuses(stack) == [401]


@pytest.mark.parametrize(("client_id", "secret"), [("", "s3cret-x"), ("some-client", "")])
async def test_missing_credentials_are_refused_before_any_request(
    client_id: str, secret: str
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AuthenticationError) as caught:
            TokenProvider(session, Endpoints.custom("http://127.0.0.1:9"), client_id, secret)
    assert "GENESYSCLOUD_OAUTHCLIENT_ID" in str(caught.value)
    assert "GENESYSCLOUD_OAUTHCLIENT_SECRET" in str(caught.value)
    if secret:
        assert secret not in str(caught.value)


# -- secrets never leak --------------------------------------------------------------


async def test_secret_and_tokens_never_leak(
    make_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "canary-secret-7c1e9d"
    wrong = "canary-wrong-secret-2b8f"
    async with make_stack() as stack:
        await register(stack, "leak-check", secret)
        tokens = provider(stack, "leak-check", secret)
        rest = RestClient(
            stack.session,
            Endpoints.custom(stack.emulator.base_url),
            tokens,
            backoff=Backoff(0.01, 0.05),
        )
        # A retried token request, a token, a forced refresh...
        await stack.fault("http_5xx", status=503, count=1, path=TOKEN_PATH)
        t1 = await tokens.token()
        t2 = await tokens.refresh(t1)
        # ...REST calls with a retry, then a revoked token and the re-auth...
        await stack.fault("http_5xx", status=503, count=1, path="/api/v2/notifications/channels")
        await rest.create_channel()
        await stack.fault("revoke_token", client_id="leak-check")
        await rest.list_channels()
        t3 = tokens.current
        assert t3 is not None
        assert t3 is not t2
        # ...and a refusal.
        refused = provider(stack, "leak-check", wrong)
        with pytest.raises(AuthenticationError) as caught:
            await refused.token()
        with pytest.raises(AuthenticationError):
            await refused.refresh()

    assert captured_provider_logs(caplog)
    forbidden = {
        secret,
        wrong,
        t1.value,
        t2.value,
        t3.value,
        base64.b64encode(f"leak-check:{secret}".encode()).decode(),
        base64.b64encode(f"leak-check:{wrong}".encode()).decode(),
    }
    exc = caught.value
    texts = [
        repr(tokens),
        repr(refused),
        repr(t1),
        str(t2),
        repr(t3),
        str(exc),
        repr(exc),
        "".join(traceback.format_exception(exc)),
        caplog.text,
    ]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
    for text in texts:
        for value in forbidden:
            assert value not in text


def captured_provider_logs(caplog: pytest.LogCaptureFixture) -> bool:
    """The capture saw the provider's own log lines (else the leak check proves nothing)."""
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("genesys_mux")]
    return any("OAuth token obtained" in m for m in messages) and any(
        "; retry " in m for m in messages
    )


async def test_refused_credentials_in_a_region_say_to_check_the_region() -> None:
    from genesys_mux.regions import resolve_region

    async with aiohttp.ClientSession() as session:
        region = Endpoints.for_region(resolve_region("eu_west_1"))
        tokens = TokenProvider(session, region, "my-client", "my-secret")
        message = str(tokens._refused(401, b'{"error":"invalid_client"}'))
    assert "GENESYSCLOUD_REGION names the region the client was created in" in message
    assert "base URL" not in message
