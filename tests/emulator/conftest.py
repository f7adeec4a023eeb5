"""Fixtures for the emulator tests: a running emulator and a plain aiohttp client.

Nothing here uses genesys_mux's own client code: these tests talk to the
emulator the way any third-party program talks to Genesys Cloud, so they
check the emulator against the reference, not against our client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from genesys_mux.emulator import Emulator, EmulatorSettings
from tests.emulator.genesys import GenesysClient


def small_settings(**overrides: object) -> EmulatorSettings:
    """A small, fast org: heartbeats every 0.2 s and lots of traffic."""
    values: dict[str, object] = {
        "seed": 7,
        "queues": 3,
        "agents": 8,
        "rate": 10.0,
        "heartbeat_interval_s": 0.2,
        "tick_s": 0.02,
    }
    values.update(overrides)
    return EmulatorSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(small_settings()) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def client(emulator: Emulator, session: aiohttp.ClientSession) -> GenesysClient:
    api = GenesysClient(session, emulator.base_url)
    await api.login("demo-client", "demo-secret")
    return api
