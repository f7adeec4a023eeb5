"""``genesys-mux demo`` as a new user runs it, and with chaos; plus a canary run in-process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from genesys_mux.cli.demo import run_demo
from genesys_mux.cli.runtime import Runtime
from genesys_mux.net.auth import AccessToken
from genesys_mux.observability.audit import AUDIT_LOGGER

DEMO_STREAMS = {"voice-main", "chat-support", "waiting-calls", "sms-inbox", "team-presence"}


async def run_cli(
    *args: str,
    timeout: float = 45.0,
    until: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> tuple[int, list[dict[str, Any]], list[str]]:
    """Run ``genesys-mux ARGS``; its JSON lines on stdout, its exit code and stderr lines.

    With ``until``, the process is sent SIGINT (Ctrl-C) as soon as the lines
    printed so far satisfy it; if it exits first, what it printed is returned
    as is, for the test's assertions to say what was missing.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genesys_mux",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    errors = asyncio.ensure_future(process.stderr.read())
    try:
        async with asyncio.timeout(timeout):
            while raw := await process.stdout.readline():
                if raw.strip():
                    lines.append(json.loads(raw))
                if until is not None and process.returncode is None and until(lines):
                    process.send_signal(signal.SIGINT)
                    until = None
            err = await errors
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        errors.cancel()
    assert process.returncode is not None
    return process.returncode, lines, err.decode().splitlines()


def audit_events(stderr: list[str]) -> list[dict[str, Any]]:
    events = []
    for line in stderr:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and str(record.get("event", "")).isupper():
            events.append(record)
    return events


def every_stream_printed(lines: list[dict[str, Any]]) -> bool:
    return {line["stream_id"] for line in lines if line["kind"] == "event"} >= DEMO_STREAMS


async def test_demo_json_prints_events_for_every_stream_and_exits_zero() -> None:
    # Ctrl-C, as the demo tells its user, once every stream has printed an
    # event (the last, chat-support, about 6 s in); --duration bounds a hang.
    code, lines, stderr = await run_cli(
        "demo", "--json", "--duration", "30", "--admin-port", "0", until=every_stream_printed
    )
    assert code == 0, "\n".join(stderr[-20:])
    counts = Counter(line["stream_id"] for line in lines if line["kind"] == "event")
    assert set(counts) == DEMO_STREAMS
    for line in lines:
        if line["kind"] == "event":
            assert line["sequence"] >= 1
            assert line["latency_ms"] >= 0
    # stderr holds JSON lines only, of one schema (audit facts and log lines).
    for text in stderr:
        record = json.loads(text)
        assert list(record)[:4] == ["ts", "level", "logger", "event"], record
    # No dashboard says them: the run's own lines are there, the port the
    # system chose among them.
    said = [json.loads(text)["event"] for text in stderr]
    (admin,) = [s for s in said if s.startswith("admin server on http://127.0.0.1:")]
    assert int(admin.split(":")[2].split(" ")[0]) > 0, admin
    assert any(s.startswith("stopped (SIGINT)") for s in said), said[-5:]
    # The audit log went to stderr, as JSON lines with upper-case levels.
    audit = audit_events(stderr)
    assert {a["event"] for a in audit} >= {"STREAM_ADDED", "CHANNEL_CREATED", "CHANNEL_CONNECTED"}
    assert all(a["level"] in ("INFO", "WARNING", "ERROR") for a in audit)


async def test_demo_with_chaos_recovers_and_keeps_flowing() -> None:
    # A fault a second: the eighth, the token revoked, comes 8 s in, inside
    # the run, which ends by itself (the demo's --duration).
    code, lines, stderr = await run_cli(
        "demo", "--json", "--chaos", "--chaos-interval", "1", "--duration", "10"
    )
    assert code == 0, "\n".join(stderr[-20:])
    audit = audit_events(stderr)
    kinds = Counter(a["event"] for a in audit)
    # socket_closing → rotation; drop_socket and pause_heartbeats → reconnect and gaps.
    assert kinds["CHANNEL_ROTATED"] >= 1
    assert kinds["CHANNEL_LOST"] >= 1
    assert kinds["GAP"] >= 1
    gaps = [line for line in lines if line["kind"] == "gap"]
    assert gaps, "gaps reach the consumers, not only the audit log"
    # Every stream keeps flowing: each has events after its first gap.
    first_gap: dict[str, float] = {}
    for gap in gaps:
        first_gap.setdefault(gap["stream_id"], gap["end"])
    after: dict[str, int] = defaultdict(int)
    for line in lines:
        if line["kind"] == "event" and line["received_at"] > first_gap.get(line["stream_id"], 0):
            after[line["stream_id"]] += 1
    busy = {"voice-main", "waiting-calls", "sms-inbox", "team-presence"}
    assert all(after[s] > 0 for s in busy), dict(after)
    # Sequences stay gap-free per stream through all of it.
    by_stream: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        if line["kind"] == "event":
            by_stream[line["stream_id"]].append(line["sequence"])
    for sequences in by_stream.values():
        assert sequences == list(range(1, len(sequences) + 1))


async def test_canary_secret_and_tokens_appear_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    canary = "canary-secret-5d1e9b7a3f"
    tokens: set[str] = set()
    scraped: dict[str, str] = {}

    replaced = asyncio.Event()
    stop = asyncio.Event()

    def on_runtime(runtime: Runtime) -> None:
        async def spy(rt: Runtime) -> None:
            # Every token the run ever holds, from the provider itself.
            assert rt.mux is not None
            assert rt.mux.tokens is not None
            if rt.mux.tokens.current is not None:
                tokens.add(rt.mux.tokens.current.value)

            def seen(token: AccessToken) -> None:
                tokens.add(token.value)
                if len(tokens) >= 2:
                    replaced.set()

            rt.mux.tokens.on_refresh.append(seen)

        async def scrape(rt: Runtime) -> None:
            # Once the chaos has revoked and replaced a token: what is served
            # then must hold neither the old token nor the new one.
            await replaced.wait()
            assert rt.admin is not None
            async with aiohttp.ClientSession() as session:
                for path in ("metrics", "status", "readyz", "healthz"):
                    async with session.get(f"{rt.admin.base_url}/{path}") as resp:
                        scraped[path] = await resp.text()
            # Seen what there is to see: the run need not last its whole duration.
            stop.set()

        runtime.side_tasks += [spy, scrape]

    audit = io.StringIO()
    stdout = io.StringIO()
    caplog.set_level(logging.DEBUG)
    code = await run_demo(
        stop,
        duration_s=11,
        chaos=True,
        json_lines=True,
        stdout=stdout,
        console=Console(file=io.StringIO()),
        # The token is revoked by the eighth fault, 4 s in, after the seven
        # others; the run stops once it has scraped, well before its 11 s.
        chaos_every_s=0.5,
        audit=audit,
        admin_port=0,
        client_secret=canary,
        on_runtime=on_runtime,
    )
    assert code == 0
    assert len(tokens) >= 2, "the chaos run should have revoked and replaced the token"
    assert set(scraped) == {"metrics", "status", "readyz", "healthz"}
    assert "genesys_mux_stream_delivered_total" in scraped["metrics"]
    revoked = '"CHANNEL_ROTATED"' in audit.getvalue() or "TOKEN_REFRESHED" in audit.getvalue()
    assert revoked
    logs = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    for haystack in (audit.getvalue(), stdout.getvalue(), logs, *scraped.values()):
        assert canary not in haystack
        for token in tokens:
            assert token not in haystack


@pytest.mark.parametrize("level", ["debug", "ERROR"])
async def test_the_log_level_asked_for_is_every_command_s(level: str) -> None:
    """``--log-level`` (before the command) over the command's own default; audit facts stay."""
    code, _, stderr = await run_cli(
        "--log-level",
        level,
        "demo",
        "--json",
        "--duration",
        "30",
        "--admin-port",
        "0",
        until=every_stream_printed,
    )
    assert code == 0, "\n".join(stderr[-20:])
    records = [json.loads(text) for text in stderr]
    levels = {r["level"] for r in records if r["logger"] != AUDIT_LOGGER}
    if level == "debug":
        assert "DEBUG" in levels, levels
    else:
        assert levels <= {"ERROR", "CRITICAL"}, levels
    assert {a["event"] for a in audit_events(stderr)} >= {"STREAM_ADDED", "CHANNEL_CONNECTED"}


async def test_an_unknown_log_level_is_refused_with_the_levels_there_are() -> None:
    code, _, stderr = await run_cli("--log-level", "loud", "demo", "--json")
    assert code == 2
    said = "\n".join(stderr)
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error'" in said, said
