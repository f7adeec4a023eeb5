"""``genesys-mux run`` with a NATS sink: a real process, the emulator, a real nats-server."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from genesys_mux.emulator import Emulator
from genesys_mux.sinks.base import EventRecord, decode_record
from tests.cli.conftest import Result, communicating, emulator, run_cli, start_cli
from tests.sinks.conftest import NatsServer, free_port
from tests.sinks.test_nats import STREAM, count, stored
from tests.waiting import eventually

__all__ = ["emulator"]  # the CLI tests' emulator fixture

DEMO_CREDENTIALS = {
    "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
}

#: Bounds a hang; the tests end well before it.
DEADLINE_S = 30.0

CONFIG = """\
[settings]
dlq_path = "dlq.jsonl"

[[streams]]
id = "calls"
filter = {{ channelType = "voice" }}

  [[streams.sinks]]
  type = "nats"
  servers = ["{url}"]
  stream = "{stream}"
  create_stream = true
  batch_size = 20
"""


async def test_run_publishes_a_stream_to_jetstream(
    emulator: Emulator, nats_server: NatsServer, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(CONFIG.format(url=nats_server.url, stream=STREAM))
    checked = await run_cli("validate", "-c", "mux.toml", cwd=tmp_path)
    assert checked.code == 0, checked.why()

    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
    )  # fmt: skip
    async with communicating(process, DEADLINE_S) as finished:
        # Stopped (SIGTERM) once the stream holds events: a clean stop
        # drains, so what it had read is published too, and nothing dead-lettered.
        await eventually(
            lambda: finished.done() or count(nats_server), within=DEADLINE_S, interval=0.1
        )
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(asyncio.shield(finished), DEADLINE_S)
    result = Result(process.returncode or 0, out.decode(), err.decode())
    assert process.returncode == 0, result.why()

    messages = await stored(nats_server)
    records = [decode_record(payload) for _subject, _headers, payload in messages]
    events = [r for r in records if isinstance(r, EventRecord)]
    assert events, result.why()
    assert {subject for subject, _h, _p in messages} == {"genesys.calls"}
    sequences = [r.sequence for r in events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert [h["Nats-Msg-Id"] for _s, h, _p in messages] == [r.idempotency_key for r in records]
    assert not (tmp_path / "dlq.jsonl").exists()


async def test_run_stops_with_a_clear_error_when_the_stream_is_missing_and_loses_nothing(
    emulator: Emulator, nats_server: NatsServer, tmp_path: Path
) -> None:
    # The server is down at first, so that events pile up in the stream's
    # buffer; once it is up, the sink finds its stream missing: for good.
    await nats_server.stop()
    config = CONFIG.format(url=nats_server.url, stream="NOPE").replace("create_stream = true", "")
    (tmp_path / "mux.toml").write_text(config)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--admin-port", str(port),
        "--duration", "60",
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
    )  # fmt: skip
    async with communicating(process, DEADLINE_S) as finished:
        async with aiohttp.ClientSession() as session:
            received = 0.0
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and not finished.done():
                status, metrics = await answer(session, f"{base}/metrics")
                if status == 200:
                    name = "genesys_mux_stream_received_total"
                    received = sample(metrics, name, stream="calls") or 0.0
                if received >= 3:
                    break
                await asyncio.sleep(0.1)  # polling towards a deadline
            assert received >= 3, "no events reached the stream"
        started = time.monotonic()
        await nats_server.start()
        # It stops by itself, long before its --duration.
        out, err = await asyncio.wait_for(finished, DEADLINE_S)
        stopped_after = time.monotonic() - started
    result = Result(process.returncode or 0, out.decode(), err.decode())
    # A configuration error: the command line's exit code for those.
    assert process.returncode == 2, result.why()
    assert stopped_after < DEADLINE_S
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(
        "error: stream calls: sink nats cannot start: the JetStream stream 'NOPE' does not exist"
    ), result.why()
    assert "create_stream = true" in line
    # Every event the stream produced is in the dead-letter queue, none delivered.
    letters = [json.loads(x) for x in (tmp_path / "dlq.jsonl").read_text().splitlines()]
    sequences = sorted(letter["sequence"] for letter in letters)
    assert len(sequences) >= received
    assert sequences == list(range(1, len(sequences) + 1))
    assert {letter["stream_id"] for letter in letters} == {"calls"}
    assert await count(nats_server, "NOPE") == 0


async def answer(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """One GET of the admin server: its status and body (0 and the error if it did not answer)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` in a Prometheus scrape, if any."""
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def until_down(config: str) -> str:
    """``config`` whose sinks count as failing for /readyz after one second, audited to a file."""
    return config.replace(
        'dlq_path = "dlq.jsonl"',
        'dlq_path = "dlq.jsonl"\nsink_unready_after_s = 1\naudit_path = "audit.jsonl"',
    )


async def test_run_waits_for_a_nats_server_that_comes_up_late_then_delivers_everything(
    emulator: Emulator, nats_server: NatsServer, tmp_path: Path
) -> None:
    await nats_server.stop()
    (tmp_path / "mux.toml").write_text(
        until_down(CONFIG.format(url=nats_server.url, stream=STREAM))
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--admin-port", str(port),
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
    )  # fmt: skip
    async with communicating(process, DEADLINE_S) as finished:
        async with aiohttp.ClientSession() as session:
            # The sink cannot start: after a second of that, the feed is not ready, and says why.
            status, body = 0, "no answer"
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and not finished.done():
                status, body = await answer(session, f"{base}/readyz")
                if status == 503 and "calls/nats failing" in body:
                    break
                await asyncio.sleep(0.1)  # polling towards a deadline
            assert status == 503, body
            assert "nats: cannot start: cannot connect to NATS" in body
            _, metrics = await answer(session, f"{base}/metrics")
            assert sample(metrics, "genesys_mux_sink_failing", stream="calls", sink="nats") == 1
            retries = sample(metrics, "genesys_mux_sink_retries_total", stream="calls", sink="nats")
            assert retries is not None
            assert retries >= 1
            assert sample(metrics, "genesys_mux_sink_records_sent_total", stream="calls") == 0

            # The server comes up: the sink starts, the feed is ready and delivers.
            await nats_server.start()
            await eventually(lambda: count(nats_server), within=DEADLINE_S, interval=0.2)
            status, body = await answer(session, f"{base}/readyz")
            assert status == 200, body
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(finished, DEADLINE_S)
    result = Result(process.returncode or 0, out.decode(), err.decode())
    assert process.returncode == 0, result.why()
    # The audit log recorded the failed starts, each with the retry to come.
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    failures = [a for a in audit if a["event"] == "SINK_FAILURE"]
    assert failures, result.why()
    assert all(a["stream_id"] == "calls" and a["sink"] == "nats" for a in failures)
    assert all(a["error"].startswith("cannot start: cannot connect to NATS") for a in failures)
    assert "retrying in" in failures[0]["error"]
    # Everything the stream produced was delivered, from the first event on, and nothing was lost.
    messages = await stored(nats_server)
    events = [r for r in (decode_record(p) for _s, _h, p in messages) if isinstance(r, EventRecord)]
    assert [r.sequence for r in events] == list(range(1, len(events) + 1))
    assert not (tmp_path / "dlq.jsonl").exists(), result.why()
