"""``run`` keeps its streams' state in a file; ``state show``/``prune``, ``--reset-state``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from genesys_mux.emulator import Emulator
from tests.cli.conftest import prints_an_event, run_cli, run_cli_until, start_cli
from tests.cli.test_run import DEMO_CREDENTIALS, TWO_STREAMS, json_lines
from tests.sinks.conftest import free_port

ONE_STREAM = """\
[settings]
dlq_path = "dlq.jsonl"

[[streams]]
id = "chats"
filter = { channelType = "chat" }
"""


async def run_for(emulator: Emulator, tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    """A ``run`` stopped with SIGTERM once it has printed an event; all it printed."""
    result = await run_cli_until(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, *extra,
        until=prints_an_event,
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.why()
    printed = json_lines(result.stdout)
    assert any(p["kind"] == "event" for p in printed), result.why()
    return printed


async def test_run_continues_its_numbering_and_reports_the_downtime(
    emulator: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    first = await run_for(emulator, tmp_path)
    assert (tmp_path / "genesys-mux-state.db").is_file(), "the default state file"
    second = await run_for(emulator, tmp_path)
    chats_before = [e["sequence"] for e in first if e["kind"] == "event"]
    chats_after = [e["sequence"] for e in second if e["kind"] == "event"]
    assert chats_before
    assert chats_after
    assert chats_after[0] == chats_before[-1] + 1
    restart = [g for g in second if g["kind"] == "gap" and g["reason"] == "restart"]
    assert len(restart) == 1
    assert second[0] == restart[0]

    shown = await run_cli("state", "show", "-c", "mux.toml", "--json", cwd=tmp_path)
    assert shown.code == 0, shown.why()
    state = json.loads(shown.stdout)
    assert state["store"].startswith("sqlite:")
    streams = {s["stream_id"]: s for s in state["streams"]}
    assert set(streams) == {"calls", "chats"}
    assert streams["chats"]["next_sequence"] == chats_after[-1] + 1

    # A stream removed from the configuration keeps its state until pruned.
    (tmp_path / "mux.toml").write_text(ONE_STREAM)
    pruned = await run_cli("state", "prune", "-c", "mux.toml", cwd=tmp_path)
    assert pruned.code == 0, pruned.why()
    assert "removed the state of 1 stream(s)" in pruned.stdout + pruned.stderr
    shown = await run_cli("state", "show", "-c", "mux.toml", "--json", cwd=tmp_path)
    assert [s["stream_id"] for s in json.loads(shown.stdout)["streams"]] == ["chats"]

    # --reset-state moves the file aside and numbering starts again.
    third = await run_for(emulator, tmp_path, "--reset-state")
    assert next(e for e in third if e["kind"] == "event")["sequence"] == 1
    assert [n for n in os.listdir(tmp_path) if n.startswith("genesys-mux-state.db.moved-")]


def a_newer_schema(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE genesys_mux_meta (key TEXT PRIMARY KEY, value TEXT)")
        db.executemany(
            "INSERT INTO genesys_mux_meta VALUES (?, ?)",
            [("application", "genesys-mux"), ("schema_version", "99")],
        )
    db.close()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("corrupt", ["is not a SQLite database", "--reset-state"]),
        ("newer", ["state schema 99", "newer release", "--reset-state"]),
        ("unreachable", ["cannot reach the state store", "redis:127.0.0.1:"]),
    ],
)
async def test_unusable_state_is_a_one_line_error_exit_2_and_left_alone(
    emulator: Emulator, tmp_path: Path, case: str, expected: list[str]
) -> None:
    config, env = TWO_STREAMS, dict(DEMO_CREDENTIALS)
    state = tmp_path / "genesys-mux-state.db"
    if case == "corrupt":
        state.write_bytes(b"not a database" * 100)
    elif case == "newer":
        a_newer_schema(state)
    else:
        # A port nobody listens on, and a password that must not be printed.
        env["MUX_STATE_URL"] = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
        config += '\n[state]\nurl_env = "MUX_STATE_URL"\n'
    before = state.read_bytes() if state.exists() else None
    (tmp_path / "mux.toml").write_text(config)
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "3",
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 2, result.why()
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.why()
    assert all(part in errors[0] for part in expected), result.why()
    assert "hunter2" not in result.output
    # Nothing was written: the file is as it was, and no events were delivered.
    assert (state.read_bytes() if state.exists() else None) == before
    assert not [e for e in json_lines(result.stdout) if e.get("kind") == "event"]


async def test_a_second_run_on_the_same_state_is_refused(
    emulator: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(TWO_STREAMS)
    first = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        assert first.stdout is not None
        # Its first event is printed once it runs, holding the state.
        assert await asyncio.wait_for(first.stdout.readline(), 20.0)
        second = await run_cli(
            "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "3",
            env=DEMO_CREDENTIALS,
            cwd=tmp_path,
        )  # fmt: skip
        assert second.code == 2, second.why()
        assert f"in use by another genesys-mux process (pid {first.pid})" in second.stderr
        # A reader is not refused.
        shown = await run_cli("state", "show", "-c", "mux.toml", "--json", cwd=tmp_path)
        assert shown.code == 0, shown.why()
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.communicate(), 20.0)
    assert first.returncode == 0
