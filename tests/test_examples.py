"""The examples in the repository run as documented."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import tomllib
from pathlib import Path

import aiohttp
import pytest

from genesys_mux.configfile import load_config, parse_config
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.errors import SinkError
from genesys_mux.sinks.webhook import WebhookSink, generate_secret, sign_webhook, webhook_id
from tests.sinks.conftest import SECRET, real_events

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_example_configuration_is_valid() -> None:
    config = load_config(EXAMPLES / "genesys-mux.toml")
    assert [s.id for s in config.streams] == [
        "voice-main",
        "chat-support",
        "waiting-calls",
        "team-presence",
    ]


async def test_the_library_quickstart_runs_against_the_emulator(tmp_path: Path) -> None:
    # Agents enough that calls are answered (active, for voice-main) soon
    # after they queue: the eight events of both streams come in about 2 s.
    settings = EmulatorSettings(seed=2, queues=3, agents=24, rate=10.0, heartbeat_interval_s=1.0)
    async with Emulator(settings) as emulator:
        env = {
            **os.environ,
            "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "quickstart.py"),
            "--base-url",
            emulator.base_url,
            "--events",
            "8",
            env=env,
            cwd=tmp_path,  # where a dead-letter file would go
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    lines = out.decode().splitlines()
    assert len(lines) == 8
    assert all(line.split()[0] in ("voice-main", "chat-support") for line in lines)


# Pages written and tested elsewhere (their examples may be fragments of a file).
_PAGES_TESTED_ELSEWHERE = frozenset(
    {
        "operations/dashboards-and-alerts.md",
        "operations/deployment.md",
        "sinks/webhook.md",
        "sinks/nats.md",
        "sinks/plugins.md",
    }
)


def _documents() -> list[Path]:
    docs = EXAMPLES.parent / "docs"
    pages = [
        page
        for page in sorted(docs.rglob("*.md"))
        if page.relative_to(docs).as_posix() not in _PAGES_TESTED_ELSEWHERE
    ]
    return [EXAMPLES.parent / "README.md", *pages]


def test_the_configuration_examples_of_the_readme_and_the_docs_are_valid() -> None:
    checked = 0
    for document in _documents():
        text = document.read_text(encoding="utf-8")
        for block in re.findall(r"```toml\n(.*?)```", text, re.DOTALL):
            try:
                config = parse_config(tomllib.loads(block), source=document.name)
            except Exception as exc:
                raise AssertionError(f"a TOML example of {document} is not valid: {exc}") from exc
            assert config.streams, f"a TOML example of {document} has no stream"
            checked += 1
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    assert "```toml\n" in readme, "the README lost its configuration example"
    # The README's, the annotated file's, the first file's, the sinks' and the cluster's.
    assert checked >= 5


async def _line(stream: asyncio.StreamReader, within: float = 10.0) -> str:
    """The example's next line of output, to a deadline."""
    line = await asyncio.wait_for(stream.readline(), within)
    assert line, "the example exited early"
    return line.decode().strip()


async def _start_receiver(env: dict[str, str]) -> asyncio.subprocess.Process:
    """``examples/webhook_receiver.py`` on a free port, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "webhook_receiver.py"),
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_webhook_receiver_example_verifies_the_real_sink() -> None:
    """The example receiver, run as documented, against the webhook sink over real HTTP."""
    events = real_events(6)
    env = {**os.environ, "WEBHOOK_SECRET": f"{SECRET} {generate_secret()}"}
    process = await _start_receiver(env)
    assert process.stdout is not None
    good = wrong = None
    try:
        listening = await _line(process.stdout)
        assert listening.startswith("listening on http://127.0.0.1:"), listening
        url = listening.removeprefix("listening on ")

        good = WebhookSink(url, SECRET, name="good")
        await good.send(events[:3])
        assert await _line(process.stdout) == f"accepted {webhook_id(events[:3])} 3 items"
        # The same batch again, as after a lost answer: taken, not processed twice.
        await good.send(events[:3])
        assert await _line(process.stdout) == f"duplicate {webhook_id(events[:3])}"

        wrong = WebhookSink(url, generate_secret(), name="wrong")
        with pytest.raises(SinkError, match="HTTP 401") as caught:
            await wrong.send(events[3:])
        assert not caught.value.retryable
        assert (await _line(process.stdout)).startswith("refused no webhook-signature matches")

        # A correctly signed request from six minutes ago: a replay.
        body = WebhookSink.body(events[3:])
        stale = str(int(time.time()) - 360)
        msg_id = webhook_id(events[3:])
        async with aiohttp.ClientSession() as session:
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": stale,
                "webhook-signature": sign_webhook(SECRET, msg_id, stale, body),
            }
            async with session.post(url, data=body, headers=headers) as answer:
                assert answer.status == 401
        assert (await _line(process.stdout)).startswith("refused webhook-timestamp is 36")

        # The batch the wrong secret could not deliver, now signed right.
        await good.send(events[3:])
        assert await _line(process.stdout) == f"accepted {msg_id} 3 items"
    finally:
        for sink in (good, wrong):
            if sink is not None:
                await sink.close()
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 10)
    assert SECRET not in err.decode()
    assert "Traceback" not in err.decode(), err.decode()[-2000:]


async def test_the_webhook_receiver_example_refuses_a_bad_secret_at_start() -> None:
    env = {**os.environ, "WEBHOOK_SECRET": "canary-plain-secret"}
    process = await _start_receiver(env)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert out == b""
    assert "WEBHOOK_SECRET is not a Standard Webhooks secret" in err.decode()
    assert "canary" not in err.decode()
