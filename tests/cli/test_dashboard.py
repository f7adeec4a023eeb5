"""The ``run --tui`` dashboard: what it shows of each stream."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from pathlib import Path

from rich.console import Console

from genesys_mux.cli.dashboard import AuditTail, Dashboard
from genesys_mux.core.events import Backfilled, GapReported
from tests.cli.conftest import cli_env, run_cli
from tests.cli.test_output_files import CREDENTIALS
from tests.net.test_multiplexer import harness
from tests.sinks.conftest import free_port


def rendered(dashboard: Dashboard) -> str:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(dashboard.render())
    return out.getvalue()


def streams_row(text: str, stream_id: str) -> list[str]:
    """The cells of ``stream_id``'s row in the streams table."""
    (line,) = [line for line in text.splitlines() if f" {stream_id} " in line]
    return [cell.strip() for cell in line.strip("│┃ ").split("│")]


async def test_the_dlq_column_counts_the_letters_of_the_streams_sinks_too() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        plain = Dashboard(h.mux, AuditTail())
        with_sinks = Dashboard(h.mux, AuditTail(), sink_dead_lettered=lambda _stream: 7)
        # Columns: stream, pri, ev/s, deliv, dup, stale, ovfl, DLQ, ...
        assert streams_row(rendered(plain), "voice")[7] == "0"
        assert streams_row(rendered(with_sinks), "voice")[7] == "7"


async def test_tui_refuses_a_stdout_sink_that_would_print_over_it(tmp_path: Path) -> None:
    """A stdout sink on the dashboard's terminal wrote its lines across the display.

    Refused before anything starts, naming the stream and what to do;
    with stdout sent elsewhere, the same command is not refused for it.
    """
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n'
        '[[streams]]\nid = "calls"\nfilter = {}\n  [[streams.sinks]]\n  type = "stdout"\n'
    )
    args = (sys.executable, "-m", "genesys_mux", "run", "-c", "mux.toml", "--tui")
    terminal, terminal_end = os.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=terminal_end,
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
            env=cli_env(CREDENTIALS),
        )
        _, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        os.close(terminal_end)
        os.close(terminal)
    said = err.decode()
    assert process.returncode == 2, said
    assert "error: --tui: stream(s) calls print their events to this terminal" in said
    assert "> events.jsonl" in said
    # Piped, the events go to the pipe: not refused for that. It starts, and
    # with nothing to log in to it stops at the end of its --duration.
    nobody = f"http://127.0.0.1:{free_port()}"
    piped = await run_cli(
        "run", "-c", "mux.toml", "--tui", "--duration", "1", "--base-url", nobody,
        cwd=tmp_path, env=CREDENTIALS,
    )  # fmt: skip
    assert "print their events to this terminal" not in piped.output, piped.why()
    assert "start-up did not finish within --duration 1 s" in piped.output, piped.why()


async def test_the_audit_tail_shows_times_as_clock_times_and_lists_as_their_items() -> None:
    """A gap's window read as raw Unix seconds, cut off at the column's end; a list as a repr."""
    start = time.mktime((2026, 12, 5, 9, 30, 15, 0, 0, -1)) + 0.25
    tail = AuditTail()
    tail(GapReported("voice", "c1", start, start + 2.5, 4, "socket_lost"))
    tail(Backfilled(("voice", "chat"), 12))
    async with harness() as h:
        shown = rendered(Dashboard(h.mux, tail))
    assert "start=09:30:15.250 end=09:30:17.750" in shown, shown
    assert "streams=voice,chat conversations=12" in shown, shown
