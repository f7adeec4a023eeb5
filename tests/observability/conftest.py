"""Helpers for the observability tests: a multiplexer with metrics, audit log and admin server.

Everything runs over real sockets: the emulator, the multiplexer's channels
and the admin server's HTTP endpoints. ``client_harness`` registers an OAuth
client through the emulator's control surface first, for tests that need
their own credentials (limited permissions, a canary secret).
"""

from __future__ import annotations

import dataclasses
import io
import json
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from genesys_mux import Multiplexer
from genesys_mux.core.events import ControlEvent
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue
from tests.net.test_multiplexer import FAST_POOL, Harness, org_settings


@asynccontextmanager
async def client_harness(
    client_id: str,
    client_secret: str,
    *,
    permissions: list[str] | None = None,
    settings: EmulatorSettings | None = None,
    **kwargs: Any,
) -> AsyncIterator[Harness]:
    """An emulator, a client registered on it, and a Multiplexer using that client."""
    async with Emulator(settings or org_settings()) as emulator:
        async with aiohttp.ClientSession() as session:
            url = f"{emulator.base_url}/__emulator__/clients"
            body = {
                "client_id": client_id,
                "client_secret": client_secret,
                "permissions": permissions or ["*"],
            }
            async with session.post(url, json=body) as resp:
                assert resp.status == 201, await resp.text()
        dlq = kwargs.pop("dlq", None) or MemoryDeadLetterQueue()
        kwargs.setdefault("pool_settings", FAST_POOL)
        mux = Multiplexer(
            client_id=client_id,
            client_secret=client_secret,
            base_url=emulator.base_url,
            dlq=dlq,
            **kwargs,
        )
        async with mux:
            yield Harness(emulator, mux, dlq)


async def get(url: str) -> tuple[int, str]:
    """GET ``url``: status and body text."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def scrape(base_url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed by prometheus-client: sample name → labels → value."""
    status, text = await get(f"{base_url}/metrics")
    assert status == 200, text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def audit_lines(target: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, decoded (each must be one JSON object)."""
    return [json.loads(line) for line in target.getvalue().splitlines()]


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The lines whose ``event`` is ``name``."""
    return [line for line in lines if line["event"] == name]


def sample_events() -> list[ControlEvent]:
    """One instance of every type of the ControlEvent union, built from its fields."""
    samples: dict[type, object] = {
        int: 3,
        float: 12.5,
        str: "voice-main",
        tuple[str, ...]: ("voice-main",),
    }
    built: list[ControlEvent] = []
    for kind in typing.get_args(ControlEvent):
        hints = typing.get_type_hints(kind)
        values = {f.name: samples[hints[f.name]] for f in dataclasses.fields(kind)}
        built.append(kind(**values))
    return built
