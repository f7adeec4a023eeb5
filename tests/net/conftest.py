"""Fixtures for the connection tests: an emulator and our own client stack against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from genesys_mux.core.backoff import Backoff
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.connection import ChannelPool, PoolSettings
from genesys_mux.net.rest import RestClient
from genesys_mux.regions import Endpoints
from tests.waiting import DEADLINE_S, eventually

__all__ = ["DEADLINE_S", "eventually"]


@asynccontextmanager
async def stand_in(app: web.Application, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on loopback ``port`` (a stand-in platform or proxy); yields its URL."""
    # A stand-in may hold requests unanswered on purpose: its stop cancels
    # them after a second instead of aiohttp's minute.
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def fast_settings(**overrides: Any) -> EmulatorSettings:
    values: dict[str, Any] = {
        "seed": 3,
        "queues": 4,
        "agents": 10,
        "rate": 8.0,
        "heartbeat_interval_s": 0.25,
        "tick_s": 0.02,
    }
    values.update(overrides)
    return EmulatorSettings(**values)


def fast_pool_settings(**overrides: Any) -> PoolSettings:
    values: dict[str, Any] = {
        "heartbeat_timeout_s": 1.0,
        "pong_timeout_s": 0.5,
        "live_timeout_s": 5.0,
        "reconnect_base_s": 0.05,
        "reconnect_cap_s": 0.5,
    }
    values.update(overrides)
    return PoolSettings(**values)


@dataclass
class Stack:
    """Our client stack wired to one emulator."""

    emulator: Emulator
    session: aiohttp.ClientSession
    tokens: TokenProvider
    rest: RestClient
    pool: ChannelPool

    async def control(self, path: str, body: Any = None) -> Any:
        method = "GET" if body is None else "POST"
        url = f"{self.emulator.base_url}/__emulator__/{path}"
        async with self.session.request(method, url, json=body) as resp:
            data = await resp.json()
            assert resp.status in (200, 201), data
            return data

    async def fault(self, fault: str, **params: Any) -> Any:
        return await self.control("faults", {"fault": fault, **params})

    async def queue_topics(self) -> list[str]:
        org = await self.control("org")
        return [f"v2.routing.queues.{q['id']}.conversations" for q in org["queues"]]


@pytest.fixture
def make_stack() -> Callable[..., Any]:
    """Build a stack for given emulator and pool settings (an async context manager)."""

    @asynccontextmanager
    async def build(
        emulator_settings: EmulatorSettings | None = None,
        pool_settings: PoolSettings | None = None,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",
        requests_per_minute: int = 300,
        token_attempts: int | None = None,
        refresh_margin_s: float | None = None,
        last_resort_s: float = 5.0,
    ) -> AsyncIterator[Stack]:
        async with (
            Emulator(emulator_settings or fast_settings()) as emulator,
            aiohttp.ClientSession() as session,
        ):
            endpoints = Endpoints.custom(emulator.base_url)
            backoff = Backoff(0.05, 0.5)
            tokens = TokenProvider(
                session,
                endpoints,
                client_id,
                client_secret,
                backoff=backoff,
                max_attempts=6 if token_attempts is None else token_attempts,
                refresh_margin_s=refresh_margin_s,
                last_resort_s=last_resort_s,
            )
            rest = RestClient(
                session, endpoints, tokens, requests_per_minute=requests_per_minute, backoff=backoff
            )
            async with ChannelPool(
                session, rest, tokens, pool_settings or fast_pool_settings()
            ) as pool:
                yield Stack(emulator, session, tokens, rest, pool)

    return build
