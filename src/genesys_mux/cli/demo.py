"""``genesys-mux demo``: the whole product against the embedded emulator, live.

The demo starts an emulator in-process, runs the seed tutorial's example
streams plus a few more (SMS, calls waiting in any queue, a team's presence
through combined topics), and shows them on the dashboard or as JSON lines.
With ``--chaos`` a chaos monkey injects a fault every few seconds (maintenance
warnings, dropped and half-open sockets, expired channels, revoked tokens,
duplicates, reordering, throttling), so you can watch rotations,
reconnects and gaps being handled while the streams keep flowing.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from rich.console import Console

from genesys_mux.cli.runtime import Output, Runtime
from genesys_mux.configfile import ConfigFile, Credentials, parse_config
from genesys_mux.emulator import ClientApp, Emulator, EmulatorSettings
from genesys_mux.net.connection import PoolSettings

__all__ = ["CHAOS", "demo_config", "run_demo"]

#: The faults the chaos monkey cycles through, with their parameters.
CHAOS: tuple[dict[str, Any], ...] = (
    {"fault": "socket_closing", "delay_s": 3},
    {"fault": "drop_socket"},
    {"fault": "duplicate", "probability": 0.2},
    {"fault": "pause_heartbeats"},
    {"fault": "reorder", "probability": 0.3, "depth": 3},
    {"fault": "expire_channel"},
    {"fault": "duplicate", "probability": 0.0},
    {"fault": "revoke_token", "client_id": "demo-client"},
    {"fault": "reorder", "probability": 0.0},
    {"fault": "http_429", "path": "/subscriptions", "retry_after_s": 1, "count": 1},
    {"fault": "no_longer_subscribed"},
)

# Heartbeats every second, declared dead after 3 s of silence: the demo
# shows recovery within seconds instead of the production minute.
_DEMO_POOL = PoolSettings(
    heartbeat_timeout_s=3.0,
    pong_timeout_s=1.0,
    reconnect_base_s=0.2,
    reconnect_cap_s=2.0,
    rotation_overlap_s=1.0,
)


def demo_config(org: dict[str, Any], workdir: Path, admin_port: int | None = None) -> ConfigFile:
    """The demo's streams, built from the emulator's org."""
    queue = org["queues"][0]["id"]
    team = [u["id"] for u in org["users"][:8]]
    return parse_config(
        {
            "state": {"path": str(workdir / "state.db")},
            "settings": {
                "dlq_path": str(workdir / "dlq.jsonl"),
                "metric_interval_s": 10.0,
                "queue_refresh_s": 30.0,
                "admin_port": admin_port,
                "backfill": True,
            },
            "streams": [
                {
                    "id": "voice-main",
                    "filter": {"channelType": "voice", "state": "active"},
                    "priority": 1,
                },
                {
                    "id": "chat-support",
                    "filter": {"channelType": "chat", "queueId": queue},
                    "priority": 2,
                },
                {
                    "id": "waiting-calls",
                    "filter": {"channelType": "voice", "state": "queued"},
                    "priority": 2,
                },
                {"id": "sms-inbox", "filter": {"channelType": "sms"}, "priority": 3},
                {
                    "id": "team-presence",
                    "topics": [f"v2.users.{u}?presence&routingStatus" for u in team],
                    "priority": 4,
                },
            ],
        },
        source="the demo configuration",
    )


async def _control(session: aiohttp.ClientSession, base: str, path: str, body: Any = None) -> Any:
    method = "GET" if body is None else "POST"
    async with session.request(method, f"{base}/__emulator__/{path}", json=body) as resp:
        return await resp.json()


def _chaos_monkey(base_url: str, every_s: float) -> Any:
    async def monkey(runtime: Runtime) -> None:
        rng = random.Random(7)
        async with aiohttp.ClientSession() as session:
            for fault in itertools.cycle(CHAOS):
                await asyncio.sleep(every_s)
                body = dict(fault)
                pool = runtime.mux.pool if runtime.mux is not None else None
                channels = [c for c in (pool.channel_ids().values() if pool else ()) if c]
                if (
                    body["fault"]
                    in {
                        "socket_closing",
                        "drop_socket",
                        "pause_heartbeats",
                        "expire_channel",
                        "no_longer_subscribed",
                    }
                    and channels
                ):
                    body["channel_id"] = rng.choice(channels)
                await _control(session, base_url, "faults", body)

    return monkey


async def run_demo(
    stop: asyncio.Event,
    *,
    duration_s: float | None,
    chaos: bool,
    json_lines: bool,
    stdout: TextIO,
    console: Console,
    chaos_every_s: float = 4.0,
    audit: TextIO | None = None,
    admin_port: int | None = None,
    client_secret: str = "demo-secret",  # noqa: S107 - the emulator's published demo value
    on_runtime: Callable[[Runtime], None] | None = None,
) -> int:
    """Run the demo until ``stop`` or ``duration_s``; returns an exit code.

    ``client_secret`` is the emulator client's secret (tests use a canary);
    ``on_runtime`` sees the runtime before it starts (tests add side tasks).
    """
    settings = EmulatorSettings(
        seed=1,
        queues=6,
        agents=30,
        rate=4.0,
        heartbeat_interval_s=1.0,
        socket_closing_delay_s=3.0,
        clients=[ClientApp("demo-client", client_secret)],
    )
    with tempfile.TemporaryDirectory(prefix="genesys-mux-demo-") as tmp:
        workdir = Path(tmp)
        async with Emulator(settings) as emulator, aiohttp.ClientSession() as session:
            org = await _control(session, emulator.base_url, "org")
            config = demo_config(org, workdir, admin_port)
            output = Output(mode="json" if json_lines else "dashboard")
            audit_target: Any = audit
            if audit_target is None:
                # The dashboard owns the terminal; in JSON mode stderr carries the audit log.
                audit_target = "-" if json_lines else str(workdir / "audit.jsonl")
            runtime = Runtime(
                config,
                Credentials("demo-client", client_secret),
                base_url=emulator.base_url,
                output=output,
                pool_settings=_DEMO_POOL,
                audit_target=None if audit_target == "-" else audit_target,
                stdout=stdout,
                console=console,
            )
            if chaos:
                runtime.side_tasks.append(_chaos_monkey(emulator.base_url, chaos_every_s))
            if on_runtime is not None:
                on_runtime(runtime)
            if not json_lines:
                console.print(
                    f"emulator on {emulator.base_url}; {len(config.streams)} streams"
                    f"{'; chaos on' if chaos else ''}. Ctrl-C stops."
                )
            return await runtime.run(stop, duration_s)
