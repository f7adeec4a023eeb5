"""``genesys-mux run -c FILE`` as an operator runs it, against an in-process emulator.

The command is a real process: credentials come from its environment (or a
secrets file), its admin server is probed over HTTP while it runs, its
output is read as a pipe reads it, and Ctrl-C is a real SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from genesys_mux.core.snapshot import event_facts
from genesys_mux.emulator import ClientApp, Emulator
from genesys_mux.sinks.base import EventRecord, decode_record
from tests.cli.conftest import (
    CANARY_CLIENT,
    CANARY_SECRET,
    Result,
    communicating,
    prints_an_event,
    run_cli,
    run_cli_until,
    start_cli,
)
from tests.net.test_multiplexer import org_settings
from tests.sinks.conftest import free_port

DEMO_CREDENTIALS = {
    "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
}
DEADLINE_S = 20.0

TWO_STREAMS = """\
[settings]
dlq_path = "dlq.jsonl"
metric_interval_s = 1

[[streams]]
id = "calls"
priority = 1
filter = { channelType = "voice" }

  [[streams.sinks]]
  type = "jsonl"
  path = "calls.jsonl"
  fsync = "never"

[[streams]]
id = "chats"
filter = { channelType = "chat" }
"""


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_gap_free(sequences: Iterable[int]) -> None:
    seen = list(sequences)
    assert seen == list(range(1, len(seen) + 1)), seen[:20]


async def poll(
    session: aiohttp.ClientSession, url: str, deadline: float, running: asyncio.Future[Any]
) -> tuple[int, str]:
    """GET ``url`` until it answers 200; else the last answer at the deadline or the exit."""
    last: tuple[int, str] = (0, "no answer")
    while time.monotonic() < deadline and not running.done():
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                last = (resp.status, await resp.text())
                if resp.status == 200:
                    return last
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = (0, repr(exc))
        await asyncio.sleep(0.1)  # polling towards a deadline, not synchronisation
    return last


async def test_run_feeds_a_jsonl_sink_prints_the_rest_and_serves_admin(
    emulator: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    port = free_port()
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        "--duration", "3", "--admin-port", str(port), "--log-json",
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
    )  # fmt: skip
    async with communicating(process, DEADLINE_S) as finished:
        base = f"http://127.0.0.1:{port}"
        # --duration counts from the end of start-up, so the admin server
        # answers for 3 s once it is up (events come within a second, the
        # first STREAM_METRIC a second in); the deadline only bounds a hang.
        deadline = time.monotonic() + DEADLINE_S
        async with aiohttp.ClientSession() as session:
            ready = await poll(session, f"{base}/readyz", deadline, finished)
            assert ready[0] == 200, ready
            metrics = await poll(session, f"{base}/metrics", deadline, finished)
            assert metrics[0] == 200, metrics
            health = await poll(session, f"{base}/healthz", deadline, finished)
            assert health[0] == 200, health
            status = await poll(session, f"{base}/status", deadline, finished)
            assert status[0] == 200, status
        out, err = await asyncio.wait_for(finished, DEADLINE_S)
    result = Result(process.returncode or 0, out.decode(), err.decode())
    assert process.returncode == 0, result.why()

    # /status gives the stream's sink figures, and each sink's own.
    sinks = json.loads(status[1])["sinks"]
    assert set(sinks) == {"calls"}  # the one stream with sinks
    (only,) = sinks["calls"]["per_sink"].values()
    assert only["sent"] == sinks["calls"]["sent"]
    assert set(only) >= {"sent", "failed_batches", "dead_lettered", "retries", "last_error"}

    # /metrics is Prometheus text with both streams as labels.
    families = {f.name: f for f in text_string_to_metric_families(metrics[1])}
    assert "genesys_mux_stream_delivered" in families
    labelled = {s.labels.get("stream") for s in families["genesys_mux_stream_delivered"].samples}
    assert labelled >= {"calls", "chats"}, labelled

    # The stream without sinks went to stdout as JSON lines; the sunk one did not.
    printed = json_lines(result.stdout)
    chats = [p for p in printed if p["kind"] == "event" and p["stream_id"] == "chats"]
    assert chats, result.why()
    assert {p["stream_id"] for p in printed} == {"chats"}
    assert_gap_free(p["sequence"] for p in chats)

    # The sunk stream is in its file, each record whole, with its body.
    records = [decode_record(line) for line in (tmp_path / "calls.jsonl").read_bytes().splitlines()]
    calls = [r for r in records if isinstance(r, EventRecord)]
    assert calls, "no events reached the jsonl sink"
    assert {r.stream_id for r in calls} == {"calls"}
    assert_gap_free(r.sequence for r in calls)
    for record in calls:
        # Keyed by content (stream, conversation, state), stamped with the run.
        facts = event_facts(record.topic, bytes(record.event_body))
        assert record.idempotency_key == f"calls:{facts.key}:{facts.hash.hex()}"
        assert json.loads(bytes(record.event_body))["id"] == record.conversation_id
    assert len({r.epoch for r in calls}) == 1
    assert calls[0].epoch
    assert len({r.idempotency_key for r in calls}) == len(calls)

    # Nothing was lost on the way out: a clean stop drains instead of dead-lettering.
    assert not (tmp_path / "dlq.jsonl").exists(), (tmp_path / "dlq.jsonl").read_text()
    # The audit log (stderr) tells the story, and no secret is anywhere.
    audit = [e["event"] for e in json_lines_of(result.stderr)]
    assert {"STREAM_ADDED", "CHANNEL_CONNECTED", "STREAM_METRIC"} <= set(audit), audit
    # One schema on stderr: every line JSON, audit facts and log lines alike.
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    for line in lines:
        assert list(line)[:4] == ["ts", "level", "logger", "event"], line
    assert any(line["logger"] == "genesys_mux.audit" for line in lines)
    assert any(line["logger"] != "genesys_mux.audit" for line in lines)  # "admin server on ..."
    for line in lines:
        if line["event"] == "STREAM_METRIC":
            assert line["stream_id"] in ("calls", "chats")
    assert "demo-secret" not in result.output


def files_written(directory: Path, *, but: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path != but and path.is_file()]


def json_lines_of(text: str) -> list[dict[str, Any]]:
    """The JSON objects among mixed log lines."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


async def test_run_without_credentials_exits_2_naming_the_variables(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", "http://127.0.0.1:9", "--duration", "1",
        cwd=tmp_path,
        env={"GENESYSCLOUD_OAUTHCLIENT_SECRET": "half-a-credential"},
    )  # fmt: skip
    assert result.code == 2, result.why()
    assert "GENESYSCLOUD_OAUTHCLIENT_ID" in result.output
    assert "Traceback" not in result.output
    assert "half-a-credential" not in result.output
    # The whole message, on one line: "[genesys]" is text, not rich markup.
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.endswith("or name a secrets_file in [genesys]"), error

    # A secrets file that is not there is named, not a traceback.
    (tmp_path / "mux.toml").write_text('[genesys]\nsecrets_file = "client.toml"\n' + TWO_STREAMS)
    missing = await run_cli(
        "run", "-c", "mux.toml", "--base-url", "http://127.0.0.1:9", "--duration", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert missing.code == 2, missing.why()
    assert "client.toml" in missing.output
    assert "Traceback" not in missing.output

    # Asked for JSON lines, stderr has nothing else: the error is one of them.
    logged = await run_cli(
        "run", "-c", "mux.toml", "--base-url", "http://127.0.0.1:9", "--duration", "1",
        "--log-json",
        cwd=tmp_path,
    )  # fmt: skip
    assert logged.code == 2, logged.why()
    *_, last = [json.loads(line) for line in logged.stderr.splitlines()]
    assert last["level"] == "ERROR", last
    assert last["event"].startswith("error: "), last
    assert "client.toml" in last["event"], last


async def test_a_refused_secret_from_a_secrets_file_is_said_to_come_from_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The refusal named the environment's variables, which were not set at all."""
    secrets = tmp_path / "client.toml"
    secrets.write_text('client_id = "demo-client"\nclient_secret = "not-the-secret"\n')
    secrets.chmod(0o600)
    (tmp_path / "mux.toml").write_text('[genesys]\nsecrets_file = "client.toml"\n' + TWO_STREAMS)
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "10",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 2, result.why()
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "check client_id and client_secret in the secrets file" in error, error
    assert "client.toml" in error, error
    assert "GENESYSCLOUD_OAUTHCLIENT" not in error, error
    assert "not-the-secret" not in result.output


async def test_a_world_readable_secrets_file_warns_and_still_runs(
    emulator: Emulator, tmp_path: Path
) -> None:
    secrets = tmp_path / "client.toml"
    secrets.write_text(f'client_id = "{CANARY_CLIENT}"\nclient_secret = "{CANARY_SECRET}"\n')
    secrets.chmod(0o644)
    (tmp_path / "mux.toml").write_text('[genesys]\nsecrets_file = "client.toml"\n' + TWO_STREAMS)
    # Stopped (SIGTERM) once it has delivered: the warning comes before that.
    result = await run_cli_until(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        until=prints_an_event,
        cwd=tmp_path,
        timeout=DEADLINE_S,
    )  # fmt: skip
    assert result.code == 0, result.why()
    assert "chmod 600" in result.stderr, result.why()
    assert "client.toml" in result.stderr
    assert any(p["kind"] == "event" for p in json_lines(result.stdout)), result.why()
    # The secret is nowhere: not in the output, not in any file the run wrote.
    assert CANARY_SECRET not in result.output
    for path in files_written(tmp_path, but=secrets):
        assert CANARY_SECRET not in path.read_text(errors="replace"), path.name


async def test_ctrl_c_stops_run_cleanly(emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = asyncio.ensure_future(process.stderr.read())
    lines: list[dict[str, Any]] = []
    try:
        while not any(line["kind"] == "event" for line in lines):
            raw = await asyncio.wait_for(process.stdout.readline(), DEADLINE_S)
            assert raw, "run exited before printing an event: " + (await stderr).decode()
            lines.append(json.loads(raw))
        process.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(process.stdout.read(), DEADLINE_S)
        code = await asyncio.wait_for(process.wait(), DEADLINE_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    err = (await stderr).decode()
    assert code == 0, err[-3000:]
    lines += json_lines(rest.decode())
    by_stream: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        if line["kind"] == "event":
            by_stream[line["stream_id"]].append(line["sequence"])
    for sequences in by_stream.values():
        assert_gap_free(sequences)
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    # Whatever the sink had taken is in its file: the stop drained it.
    records = [decode_record(line) for line in (tmp_path / "calls.jsonl").read_bytes().splitlines()]
    assert_gap_free(r.sequence for r in records if isinstance(r, EventRecord))


async def test_ctrl_c_while_still_connecting_stops_at_once(tmp_path: Path) -> None:
    """A wrong URL means token retries with backoff for a minute; Ctrl-C must not wait for them."""
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    nobody = f"http://127.0.0.1:{free_port()}"
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", nobody, env=DEMO_CREDENTIALS, cwd=tmp_path
    )
    assert process.stderr is not None
    try:
        seen = b""
        while b"token request failed" not in seen:
            line = await asyncio.wait_for(process.stderr.readline(), DEADLINE_S)
            assert line, "run exited before retrying: " + seen.decode()
            seen += line
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        try:
            _, err = await asyncio.wait_for(process.communicate(), 10.0)
        except TimeoutError:
            raise AssertionError("Ctrl-C did not stop a run still connecting within 10 s") from None
        took = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, (seen + err).decode()
    assert took < 3.0, f"Ctrl-C took {took:.1f} s to stop a run that was still connecting"
    assert b"Traceback" not in err
    # The cancelled start-up closed what it had opened: asyncio's
    # "Unclosed client session" is an ERROR line that log alerts fire on.
    assert b"Unclosed" not in err, err.decode()
    assert b"[ERROR" not in err, err.decode()


async def test_a_wrong_secret_exits_2_with_one_clear_line(
    emulator: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    wrong = {**DEMO_CREDENTIALS, "GENESYSCLOUD_OAUTHCLIENT_SECRET": "not-the-secret"}
    started = time.monotonic()
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, env=wrong, cwd=tmp_path
    )
    took = time.monotonic() - started
    assert result.code == 2, result.why()
    assert took < 5.0, f"a refused secret took {took:.1f} s to end the run"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.why()
    assert "refused the client credentials" in errors[0]
    assert "GENESYSCLOUD_OAUTHCLIENT_SECRET" in errors[0]
    assert "not-the-secret" not in result.output
    assert "Traceback" not in result.stderr


async def test_credentials_refused_mid_run_stop_it_with_2(tmp_path: Path) -> None:
    """A secret revoked while running: once the token in hand is spent, exit 2.

    A process that lived on delivering nothing would look healthy to
    systemd or Docker (neither probes readiness), and never be restarted.
    That the token in hand is used until then is the token provider's and
    the pool's to show (tests/net): here it lasts 6 s, too short to refresh
    early, so the refusal ends it at once.
    """
    client = ClientApp("short", "short-secret", token_lifetime_s=6)
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    credentials = {
        "GENESYSCLOUD_OAUTHCLIENT_ID": "short",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "short-secret",
    }
    async with Emulator(org_settings(rate=20.0, clients=[client])) as emulator:
        process = await start_cli(
            "run", "-c", "mux.toml", "--base-url", emulator.base_url,
            env=credentials,
            cwd=tmp_path,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            first = await asyncio.wait_for(process.stdout.readline(), DEADLINE_S)
            assert json.loads(first)["kind"] == "event"
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{emulator.base_url}/__emulator__/faults",
                    json={"fault": "http_5xx", "path": "/oauth/token", "status": 401},
                ) as resp,
            ):
                assert resp.status == 200
            out, err = await asyncio.wait_for(process.communicate(), 30.0)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    stderr = err.decode()
    assert process.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "refused the client credentials" in errors[0]
    assert "short-secret" not in stderr + out.decode()
    assert "Traceback" not in stderr


async def test_an_admin_port_in_use_exits_2_with_one_clear_line(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The port is the emulator's own: taken, so the run cannot start its admin server."""
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    taken = emulator.base_url.rsplit(":", 1)[1]
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--admin-port", taken,
        env=DEMO_CREDENTIALS, cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 2, result.why()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.why()
    assert f"cannot listen on 127.0.0.1:{taken}" in errors[0]
    assert "admin_port" in errors[0]
    assert "pick another port" in errors[0]
    assert "Traceback" not in result.stderr


async def test_the_admin_server_answers_while_the_platform_cannot_be_reached(
    tmp_path: Path,
) -> None:
    """/healthz is up from the start and /readyz says why it is not ready yet."""
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    nobody = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", nobody,
        "--admin-port", str(port), "--admin-host", "127.0.0.1",
        env=DEMO_CREDENTIALS, cwd=tmp_path,
    )  # fmt: skip
    async with communicating(process, DEADLINE_S) as finished:
        deadline = time.monotonic() + DEADLINE_S
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            health = await poll(session, f"{base}/healthz", deadline, finished)
            assert health[0] == 200, health
            async with session.get(f"{base}/readyz") as resp:
                assert resp.status == 503
                assert "starting" in (await resp.json())["reason"]
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(asyncio.shield(finished), DEADLINE_S)
    assert process.returncode == 0


async def test_duration_bounds_a_start_up_that_keeps_retrying(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    nobody = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", nobody, "--duration", "2",
        env=DEMO_CREDENTIALS, cwd=tmp_path, timeout=20,
    )  # fmt: skip
    took = time.monotonic() - started
    assert result.code == 1, result.why()
    assert took < 8.0, f"a 2 s run took {took:.1f} s"
    assert "start-up did not finish within --duration 2 s" in result.output
    assert "Traceback" not in result.output
