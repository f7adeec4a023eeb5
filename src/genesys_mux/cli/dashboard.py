"""The live rich dashboard: channels, streams and the latest audit events.

It renders from the same snapshot ``/status`` serves
(:func:`~genesys_mux.observability.admin.status_snapshot`), so what an
operator sees on screen and what a monitor scrapes agree.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from genesys_mux.core.events import ControlEvent, fields_of
from genesys_mux.net.multiplexer import Multiplexer
from genesys_mux.observability.admin import status_snapshot

__all__ = ["AuditTail", "Dashboard"]


@dataclass
class AuditTail:
    """The most recent audit facts, for the dashboard."""

    size: int = 12
    lines: deque[tuple[float, str, dict[str, Any]]] = field(default_factory=deque)

    def __call__(self, event: ControlEvent) -> None:
        self.lines.append((time.time(), event.kind, fields_of(event)))
        while len(self.lines) > self.size:
            self.lines.popleft()


#: Floats above this are Unix times (2001 on): shown as clock times, not seconds.
_EPOCH_FLOOR = 1e9


def _shown(value: object) -> str:
    """An audit field as a person reads it: a time as a clock time, a list as its items."""
    if isinstance(value, float) and value > _EPOCH_FLOOR:
        whole = time.strftime("%H:%M:%S", time.localtime(value))
        return f"{whole}.{int(value % 1 * 1000):03d}"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value) or "-"
    return str(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


class Dashboard:
    """Builds the renderable for one refresh; keeps rates between refreshes."""

    def __init__(
        self,
        mux: Multiplexer,
        audit: AuditTail,
        title: str = "genesys-mux",
        sink_dead_lettered: Callable[[str], int] | None = None,
    ) -> None:
        self.mux = mux
        self.audit = audit
        self.title = title
        #: Events a stream's sinks gave up on (the buffer's own are in the
        #: multiplexer's counters): the DLQ column shows both.
        self.sink_dead_lettered = sink_dead_lettered
        self._last: dict[str, tuple[float, int]] = {}

    def _sink_letters(self, stream_id: str) -> int:
        return 0 if self.sink_dead_lettered is None else self.sink_dead_lettered(stream_id)

    def render(self) -> Group:
        """The dashboard as it is now."""
        status = status_snapshot(self.mux)
        now = time.monotonic()
        channels = Table(
            title=f"{self.title}: channels ({'live' if status['live'] else 'NOT READY'})"
        )
        for column in ("slot", "channel", "topics", "state", "age", "reconnects", "rotations"):
            channels.add_column(
                column, justify="right" if column not in ("channel", "state") else "left"
            )
        wall = time.time()
        for slot, c in status["channels"].items():
            age = None if c["connected_since"] is None else wall - c["connected_since"]
            channels.add_row(
                slot,
                c["channel_id"] or "-",
                str(c["topics"]),
                c["state"],
                "-" if age is None else f"{age:.0f}s",
                str(c["reconnects"]),
                str(c["rotations"]),
            )
        streams = Table(title="streams")
        streams.add_column("stream", no_wrap=True, min_width=13)
        # Short headers: the table must fit an 80-column terminal.
        for column in (
            "pri",
            "ev/s",
            "deliv",
            "dup",
            "stale",
            "ovfl",
            "DLQ",
            "gaps",
            "p50ms",
            "p99ms",
        ):
            streams.add_column(column, justify="right")
        for sid, s in status["streams"].items():
            previous = self._last.get(sid)
            rate = 0.0
            if previous is not None and now > previous[0]:
                rate = (s["delivered"] - previous[1]) / (now - previous[0])
            self._last[sid] = (now, s["delivered"])
            streams.add_row(
                sid,
                str(s["priority"]),
                f"{rate:.1f}",
                str(s["delivered"]),
                str(s["duplicates"]),
                str(s["stale"]),
                str(s["overflowed"]),
                str(s["dead_lettered"] + self._sink_letters(sid)),
                str(s["gaps"]),
                _ms(s["latency_p50_s"]),
                _ms(s["latency_p99_s"]),
            )
        audit = Table(title="latest audit events", show_header=False)
        audit.add_column("time")
        audit.add_column("event")
        audit.add_column("details")
        for at, kind, fields in list(self.audit.lines):
            detail = " ".join(f"{k}={_shown(v)}" for k, v in fields.items() if k != "topics")
            audit.add_row(
                time.strftime("%H:%M:%S", time.localtime(at)), kind.upper(), Text(detail[:90])
            )
        return Group(channels, streams, audit)
