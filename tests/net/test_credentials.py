"""Refused credentials are fatal and loud: they reach whoever waits on the feed.

A wrong secret never heals by itself, so retrying it only feeds a lock-out;
going quiet would leave an operator staring at an empty feed. Whether the
platform refuses at start or later (a secret rotated under a running
process), :class:`AuthenticationError` reaches ``start()``, ``add_stream()``
and every iterator. A login host that merely cannot be reached is retried.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

import aiohttp
import pytest
from aiohttp import web

from genesys_mux import Multiplexer, StreamEvent
from genesys_mux.emulator import Emulator
from genesys_mux.errors import AuthenticationError
from tests.net.conftest import eventually, stand_in
from tests.net.test_multiplexer import FAST_POOL, Collector, harness, org_settings
from tests.sinks.conftest import free_port


@pytest.mark.parametrize("status", [400, 401])
async def test_a_wrong_secret_fails_start(status: int) -> None:
    async with Emulator(org_settings(invalid_client_status=status)) as emulator:
        mux = Multiplexer(
            client_id="demo-client",
            client_secret="not-the-secret",
            base_url=emulator.base_url,
            pool_settings=FAST_POOL,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AuthenticationError) as caught:
            await mux.start()
        assert loop.time() - started < 5.0
        message = str(caught.value)
        assert f"HTTP {status} invalid_client" in message
        # What to check: what was used (the arguments), not the variables.
        assert "check client_id and client_secret (a client-credentials" in message
        assert "GENESYSCLOUD_OAUTHCLIENT" not in message
        assert "not-the-secret" not in message
        # One token request: refused credentials are not retried.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{emulator.base_url}/__emulator__/requests") as resp,
        ):
            log = (await resp.json())["requests"]
        assert [r["status"] for r in log if r["path"] == "/oauth/token"] == [status]


async def test_a_refused_secret_from_the_environment_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "not-the-secret")
    async with Emulator(org_settings()) as emulator:
        mux = Multiplexer(
            client_id="demo-client", base_url=emulator.base_url, pool_settings=FAST_POOL
        )
        with pytest.raises(AuthenticationError) as caught:
            await mux.start()
    message = str(caught.value)
    assert "check client_id and GENESYSCLOUD_OAUTHCLIENT_SECRET (a client-credentials" in message
    assert "not-the-secret" not in message


async def test_credentials_refused_later_reach_every_reader_and_add_stream() -> None:
    """The secret is rotated under a running feed, then its token revoked."""
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        merged = Collector(h.mux.events())
        one = Collector(h.mux.stream("all"))
        await eventually(lambda: len(one.events()) >= 3)
        await h.control("clients", {"client_id": "demo-client", "client_secret": "rotated"})
        await h.control("faults", {"fault": "revoke_token", "client_id": "demo-client"})

        await eventually(lambda: merged._task.done() and one._task.done())
        for reader in (merged, one):
            with pytest.raises(AuthenticationError, match="refused the client credentials"):
                reader._task.result()
        with pytest.raises(AuthenticationError):
            await h.mux.add_stream({"id": "later", "filter": {}})
        # What was delivered before stays delivered.
        assert all(isinstance(e, StreamEvent) for e in one.events())
        # An application that keeps asking is told again and again with
        # the same exception, whose traceback must not grow each time (it
        # pinned every frame it passed through).
        depths = []
        for _ in range(50):
            with pytest.raises(AuthenticationError) as raised:
                async for _item in h.mux.stream("all"):
                    pass
            depths.append(len(traceback.extract_tb(raised.value.__traceback__)))
        assert max(depths) == min(depths) <= 3, depths


async def test_an_unreachable_login_host_is_retried_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    mux = Multiplexer(client_id="demo-client", client_secret="demo-secret", base_url=nobody)
    # The token provider's own retries are part of start(): cut them short.
    start = asyncio.create_task(mux.start())
    try:
        with caplog.at_level(logging.WARNING, logger="genesys_mux.auth"):
            await eventually(
                lambda: any("token request failed" in r.getMessage() for r in caplog.records)
            )
        assert not start.done(), "an unreachable host is retried, not fatal"
    finally:
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    # A start cancelled during those retries (a stop, a start-up deadline)
    # gets no __aexit__: it closed what it had opened itself.
    assert start.cancelled()
    assert mux._session is not None
    assert mux._session.closed, "the cancelled start left its HTTP session open"
    assert not mux._tasks, "the cancelled start left tasks running"
    await mux.stop(drain=False)  # and a stop after it is harmless


async def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY is honoured, as by every other HTTP tool on a corporate network."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.url}")
        body = {"error": "invalid_client", "error_description": "answered by the proxy"}
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    proxy_port, target_port = free_port(), free_port()
    async with stand_in(app, proxy_port):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        mux = Multiplexer(
            client_id="demo-client",
            client_secret="demo-secret",
            base_url=f"http://127.0.0.1:{target_port}",
        )
        with pytest.raises(AuthenticationError, match="answered by the proxy"):
            await mux.start()
    assert seen == [f"POST http://127.0.0.1:{target_port}/oauth/token"]
