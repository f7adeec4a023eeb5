"""What comes back from the platform's address is not trusted with our credentials.

Stand-ins here are real HTTP servers (aiohttp, loopback). One answers every
request with an error whose body repeats the request's ``Authorization``
header, as a misconfigured proxy or a debug endpoint might: neither the
bearer token nor the Basic credentials may reach the exception text or the
log. Another hands out channels whose ``connectUri`` points elsewhere: the
socket is opened only on the streaming host of the configured region (TLS)
or base URL.
"""

from __future__ import annotations

import base64
import logging
from contextlib import AbstractAsyncContextManager

import aiohttp
import pytest
from aiohttp import web

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.redaction import REDACTED, looks_secret, scrub
from genesys_mux.errors import ApiError, AuthenticationError, TransportError, UnusableChannelError
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.rest import RestClient
from genesys_mux.regions import Endpoints, resolve_region
from tests.net.conftest import stand_in
from tests.sinks.conftest import free_port

TOKEN = "Zq8Lr2Tx9Vb4Nm6Kp1Ws7Yd3Hf5Jg0Ce"  # opaque, as Genesys tokens are
SECRET = "s3cr3t-Value-That-Must-Not-Leak"


async def _echo(request: web.Request, status: int) -> web.Response:
    header = request.headers.get("Authorization", "")
    body = {
        "message": f"Rejected request with Authorization: {header}",
        "code": "bad.request",
        "status": status,
        "headers": {"Authorization": header},
        "error": "invalid_client",
        "error_description": f"cannot accept {header}",
    }
    return web.json_response(body, status=status)


async def issue_token(request: web.Request) -> web.Response:
    """A stand-in's token endpoint: it accepts anyone."""
    return web.json_response({"access_token": TOKEN, "expires_in": 3600})


def echo_server(*, refuse_login: bool) -> AbstractAsyncContextManager[str]:
    """A loopback server that answers errors echoing ``Authorization``."""

    async def token(request: web.Request) -> web.Response:
        if refuse_login:
            return await _echo(request, 401)
        return await issue_token(request)

    async def anything(request: web.Request) -> web.Response:
        return await _echo(request, 400)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_route("*", "/api/{tail:.*}", anything)
    return stand_in(app, free_port())


async def test_an_echoed_bearer_token_stays_out_of_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with echo_server(refuse_login=False) as base, aiohttp.ClientSession() as session:
        endpoints = Endpoints.custom(base)
        tokens = TokenProvider(session, endpoints, "demo-client", SECRET)
        rest = RestClient(session, endpoints, tokens, backoff=Backoff(0.01, 0.05))
        with caplog.at_level(logging.DEBUG), pytest.raises(ApiError) as caught:
            await rest.list_queues()
    text = str(caught.value)
    assert "HTTP 400 bad.request" in text
    assert REDACTED in text
    assert TOKEN not in text
    assert TOKEN not in caplog.text


async def test_echoed_basic_credentials_stay_out_of_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    basic = base64.b64encode(f"demo-client:{SECRET}".encode()).decode()
    async with echo_server(refuse_login=True) as base, aiohttp.ClientSession() as session:
        tokens = TokenProvider(session, Endpoints.custom(base), "demo-client", SECRET)
        with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationError) as caught:
            await tokens.token()
    text = str(caught.value)
    assert "HTTP 401 invalid_client" in text
    assert REDACTED in text
    for leaked in (basic, SECRET):
        assert leaked not in text
        assert leaked not in caplog.text


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: "),
        ('{"Authorization": "Basic ZGVtbzpzZWNyZXQ="}', '{"Authorization": "'),
        ("access_token=Zq8Lr2Tx9Vb4Nm6Kp1Ws7Yd3H&x=1", "access_token="),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl here", "token "),
    ],
)
def test_scrub_removes_credentials(text: str, kept: str) -> None:
    clean = scrub(text)
    assert clean.startswith(kept)
    assert REDACTED in clean
    assert not looks_secret(clean.replace(REDACTED, ""))


@pytest.mark.parametrize(
    "text",
    [
        "GET /api/v2/notifications/channels/streaming-0-abcdefghijklmnopqrstuvwxyz failed",
        "conversation 22c91b83-a417-40fe-84e4-a7fa9064dbd9 not found",
        "topic v2.routing.queues.4c2bb8ef-5f0a-4a8c-9b3e-0c1d2e3f4a5b.conversations.calls",
        "HTTP 429 too.many.requests.retry.after Rate limit exceeded",
    ],
)
def test_scrub_keeps_ids_topics_and_codes(text: str) -> None:
    assert scrub(text) == text


# -- connectUri: only the streaming host of our region or base URL ------------------


def channel_server(connect_uri: str) -> AbstractAsyncContextManager[str]:
    """A stand-in platform whose new channels carry ``connect_uri`` (``{port}`` filled in)."""
    port = free_port()

    async def channel(request: web.Request) -> web.Response:
        uri = connect_uri.format(port=port)
        return web.json_response({"id": "streaming-0-abc", "connectUri": uri, "expires": None})

    app = web.Application()
    app.router.add_post("/oauth/token", issue_token)
    app.router.add_post("/api/v2/notifications/channels", channel)
    return stand_in(app, port)


@pytest.mark.parametrize(
    ("connect_uri", "accepted"),
    [
        ("ws://127.0.0.1:{port}/channels/streaming-0-abc", True),
        ("wss://127.0.0.1:{port}/channels/streaming-0-abc", True),
        ("ws://evil.example.com:{port}/channels/streaming-0-abc", False),
        ("ws://127.0.0.1:1/channels/streaming-0-abc", False),
        ("ws://127.0.0.2:{port}/channels/streaming-0-abc", False),  # no domain to be under
        ("ws://user:pw@127.0.0.1:{port}/channels/streaming-0-abc", False),
        ("http://127.0.0.1:{port}/channels/streaming-0-abc", False),
        ("not a url", False),
    ],
)
async def test_a_connect_uri_off_our_streaming_host_is_refused(
    connect_uri: str, accepted: bool
) -> None:
    async with channel_server(connect_uri) as base, aiohttp.ClientSession() as session:
        endpoints = Endpoints.custom(base)
        tokens = TokenProvider(session, endpoints, "demo-client", SECRET)
        rest = RestClient(session, endpoints, tokens, backoff=Backoff(0.01, 0.05))
        if accepted:
            info = await rest.create_channel()
            assert info.connect_uri.endswith("/channels/streaming-0-abc")
        else:
            # Made all the same on the platform: not a transport failure to retry at will.
            with pytest.raises(UnusableChannelError, match="refusing its connectUri"):
                await rest.create_channel()


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("wss://streaming.mypurecloud.ie/channels/streaming-0-abc", True),
        # "Always use connectUri as returned": an explicit default port, a
        # host under the deployment's domain other than streaming.D.
        ("wss://streaming.mypurecloud.ie:443/channels/streaming-0-abc", True),
        ("wss://STREAMING.mypurecloud.ie/channels/streaming-0-abc", True),
        ("wss://streaming-2.eu.mypurecloud.ie/channels/streaming-0-abc", True),
        ("ws://streaming.mypurecloud.ie/channels/streaming-0-abc", False),  # no TLS
        ("wss://streaming.mypurecloud.ie:8443/channels/streaming-0-abc", False),
        ("wss://streaming.mypurecloud.com/channels/streaming-0-abc", False),  # another region
        ("wss://streaming.mypurecloud.ie.evil.example/channels/x", False),
        ("wss://evilmypurecloud.ie/channels/x", False),
        ("wss://mypurecloud.ie.evil.example/channels/x", False),
    ],
)
async def test_a_region_accepts_only_wss_on_its_own_streaming_host(
    uri: str, accepted: bool
) -> None:
    endpoints = Endpoints.for_region(resolve_region("eu_west_1"))
    async with aiohttp.ClientSession() as session:
        tokens = TokenProvider(session, endpoints, "demo-client", SECRET)
        rest = RestClient(session, endpoints, tokens)
        if accepted:
            assert rest._checked_connect_uri("streaming-0-abc", uri) == uri
        else:
            with pytest.raises(TransportError):
                rest._checked_connect_uri("streaming-0-abc", uri)


async def test_a_queue_listing_that_never_ends_is_cut_off() -> None:
    """A page count that grows with every page would be followed forever."""
    pages: list[int] = []

    async def queues(request: web.Request) -> web.Response:
        number = int(request.query["pageNumber"])
        pages.append(number)
        entity = {"id": f"queue-{number}", "name": f"Queue {number}"}
        return web.json_response(
            {"entities": [entity], "pageNumber": number, "pageSize": 1, "pageCount": number + 1}
        )

    app = web.Application()
    app.router.add_post("/oauth/token", issue_token)
    app.router.add_get("/api/v2/routing/queues", queues)
    async with stand_in(app, free_port()) as base, aiohttp.ClientSession() as session:
        endpoints = Endpoints.custom(base)
        tokens = TokenProvider(session, endpoints, "demo-client", SECRET)
        rest = RestClient(session, endpoints, tokens)
        with pytest.raises(TransportError, match="did not end after 5 pages"):
            await rest.list_queues(page_size=1, max_pages=5)
    assert pages == [1, 2, 3, 4, 5]
