"""A deliberately plain Genesys Cloud client for the emulator tests.

It uses aiohttp directly, with the real URLs and message shapes from the
notifications reference, and none of genesys_mux's client code.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import aiohttp

DEADLINE_S = 10.0


def basic_auth(client_id: str, secret: str) -> str:
    """The ``Authorization`` header value of HTTP Basic auth."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


class GenesysClient:
    """Raw REST and socket calls against one base URL."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = base_url
        self.token: str | None = None

    async def login(self, client_id: str, secret: str) -> dict[str, Any]:
        async with self.session.post(
            f"{self.base}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_auth(client_id, secret)},
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            self.token = body["access_token"]
            return body  # type: ignore[no-any-return]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(
        self, method: str, path: str, body: Any = None, **params: str
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(
            method,
            f"{self.base}{path}",
            json=body,
            params=params or None,
            headers=self.auth,
        ) as resp:
            text = await resp.text()
            data = json.loads(text) if text else None
            return resp.status, data, dict(resp.headers)

    async def create_channel(self) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/api/v2/notifications/channels")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def subscribe(
        self,
        channel_id: str,
        topics: list[str],
        *,
        method: str = "PUT",
        ignore_errors: bool = False,
    ) -> tuple[int, Any, dict[str, str]]:
        return await self.call(
            method,
            f"/api/v2/notifications/channels/{channel_id}/subscriptions",
            [{"id": t} for t in topics],
            ignoreErrors="true" if ignore_errors else "false",
        )

    async def control(self, path: str, body: Any = None) -> Any:
        method = "GET" if body is None else "POST"
        async with self.session.request(
            method, f"{self.base}/__emulator__/{path}", json=body
        ) as resp:
            data = await resp.json()
            assert resp.status in (200, 201), data
            return data

    async def connect(self, connect_uri: str) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(connect_uri, autoping=True)


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = DEADLINE_S) -> Any:
    """The next text frame, decoded; fails the test on a close or a deadline."""
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
    return json.loads(msg.data)


async def frame_where(
    ws: aiohttp.ClientWebSocketResponse,
    predicate: Callable[[Any], bool],
    timeout: float = DEADLINE_S,
) -> Any:
    """Read frames until one satisfies ``predicate``, within one overall deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await next_frame(ws, max(0.01, deadline - loop.time()))
        if predicate(frame):
            return frame


def is_heartbeat(frame: Any) -> bool:
    return (
        isinstance(frame, dict)
        and frame.get("topicName") == "channel.metadata"
        and frame["eventBody"].get("message") == "WebSocket Heartbeat"
    )


def is_notification(frame: Any) -> bool:
    return (
        isinstance(frame, dict)
        and "topicName" in frame
        and frame["topicName"] != "channel.metadata"
        and not frame["topicName"].startswith("v2.system.")
    )
