"""The ``run --tui`` dashboard: what it shows of each stream."""

from __future__ import annotations

import io

from rich.console import Console

from genesys_mux.cli.dashboard import AuditTail, Dashboard
from tests.net.test_multiplexer import harness


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
