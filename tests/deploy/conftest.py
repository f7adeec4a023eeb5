"""Helpers for the deployment tests: a real ``genesys-mux run`` to scrape, and promtool.

:func:`running_instance` starts the command line as a deployment runs it
(a cluster member on a real redis-server, against the emulator, with a Redis
sink, a webhook sink whose receiver answers 503 and a dead-letter file),
waits until every family the dashboard and the alert rules read has
labelled series, and yields the text of its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from genesys_mux.emulator import Emulator
from tests.cli.conftest import emulator, redis_server, start_cli
from tests.cli.test_run import DEMO_CREDENTIALS
from tests.sinks.conftest import RedisServer, free_port

__all__ = ["emulator", "redis_server"]  # fixtures, re-exported for this directory

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
#: The failing webhook's signing secret (Standard Webhooks form); must never reach /metrics.
HOOK_SECRET = "whsec_ZGVwbG95LXRlc3Qtc2lnbmluZy1rZXktMzItYnl0ZXM="
DEADLINE_S = 30.0


def promtool() -> str:
    """The promtool binary. Missing is a failure, not a skip: scripts/test installs it."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: the deployment tests run it on the alert rules and "
            "on a real scrape (apt-get install prometheus; scripts/test installs it)"
        )
    return found


async def run_tool(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """Run a tool to completion under a deadline: exit status and its output, merged."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(stdin), DEADLINE_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode()


def instance_config(redis_url: str, webhook_url: str) -> str:
    """Two streams of one cluster member: one to Redis, one to a failing webhook."""
    return f"""\
[settings]
dlq_path = "dlq.jsonl"

[cluster]
url = "{redis_url}"
name = "deploy"
lease_ttl_s = 2
heartbeat_s = 0.3

[[streams]]
id = "voice"
filter = {{ channelType = "voice" }}

  [[streams.sinks]]
  type = "redis"
  url = "{redis_url}"
  prefix = "out:"

[[streams]]
id = "chat"
filter = {{}}

  [[streams.sinks]]
  type = "webhook"
  url = "{webhook_url}"
  secret_env = "HOOK_SECRET"
  max_attempts = 2
  batch_size = 5
"""


@dataclass
class Scrape:
    """One ``/metrics`` answer: its text and its families by name."""

    text: str

    def samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Sample name → (labels, value) of every sample."""
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return found


async def _unavailable(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=503, text="down for the test")


def _ready(scrape: Scrape) -> bool:
    """Every family the deployment files read has the series the test needs."""
    samples = scrape.samples()

    def value(name: str, **labels: str) -> float:
        return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())

    checks: list[Callable[[], bool]] = [
        lambda: value("genesys_mux_cluster_leases_held") == 2,
        lambda: value("genesys_mux_stream_delivered_total", stream="voice") > 0,
        lambda: value("genesys_mux_sink_records_sent_total", stream="voice") > 0,
        lambda: value("genesys_mux_sink_dead_lettered_total", stream="chat") > 0,
        lambda: value("genesys_mux_dlq_bytes") > 0,
        lambda: value("genesys_mux_event_latency_seconds_count", stream="chat") > 0,
        lambda: value("genesys_mux_token_lifetime_seconds") > 0,
    ]
    return all(check() for check in checks)


@pytest.fixture
async def scrape(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Scrape]:
    """A ``/metrics`` scrape of a real ``genesys-mux run`` with traffic on every family."""
    app = web.Application()
    app.router.add_post("/hook", _unavailable)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    (tmp_path / "mux.toml").write_text(
        instance_config(redis_server.url, f"http://{host}:{port}/hook")
    )
    admin_port = free_port()
    process = await start_cli(
        "run",
        "-c",
        "mux.toml",
        "--base-url",
        emulator.base_url,
        "--admin-port",
        str(admin_port),
        env={**DEMO_CREDENTIALS, "HOOK_SECRET": HOOK_SECRET},
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{admin_port}/metrics"
        deadline = time.monotonic() + DEADLINE_S
        last = Scrape("")
        problem = None
        async with aiohttp.ClientSession() as session:
            while problem is None:
                if process.returncode is not None:
                    problem = "genesys-mux run ended early"
                    break
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            last = Scrape(await resp.text())
                except aiohttp.ClientConnectionError:
                    pass  # not listening yet
                if last.text and _ready(last):
                    break
                if time.monotonic() > deadline:
                    problem = f"no complete scrape within {DEADLINE_S} s:\n{last.text[-3000:]}"
                    break
                await asyncio.sleep(0.2)  # polling a separate process towards a deadline
        if problem is not None:
            if process.returncode is None:
                process.kill()
            _, err = await process.communicate()
            raise AssertionError(f"{problem}\n--- its stderr ---\n{err.decode()[-3000:]}")
        yield last
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.communicate(), DEADLINE_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        await runner.cleanup()
