"""The audit log against a live multiplexer and the emulator's faults.

Each control-plane fact the multiplexer reports must come out as one JSON
line with an ISO-8601 UTC timestamp, an upper-case level and event name,
and only the fields we know. Dead-letter writes are the one per-event fact;
an overflow storm must collapse into at most one line per stream per
second whose counts add up to the dead letters written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import itertools
import json
import logging
import re
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.events import (
    ChannelCreated,
    ChannelFailed,
    ControlEvent,
    DeadLettered,
    GapReported,
    LeaseAcquired,
    StreamActivated,
    StreamAdded,
    StreamRemoved,
    TopicRejected,
)
from genesys_mux.core.timestamps import format_iso
from genesys_mux.net.multiplexer import Multiplexer
from genesys_mux.observability import AuditLog
from genesys_mux.observability.audit import WITHHELD
from genesys_mux.observability.sanitize import REDACTED
from genesys_mux.sinks.dlq import JsonlDeadLetterQueue, MemoryDeadLetterQueue, file_lock
from genesys_mux.sinks.runner import SinkRunner
from genesys_mux.sinks.webhook import WebhookSink
from tests.net.conftest import eventually
from tests.net.test_multiplexer import Collector, harness, org_settings
from tests.observability.conftest import audit_lines, client_harness, events, sample_events
from tests.sinks.conftest import SECRET, Receiver

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CONTROL_INFO = {
    "STREAM_ADDED",
    "STREAM_REMOVED",
    "CHANNEL_CREATED",
    "CHANNEL_CONNECTED",
    "CHANNEL_ROTATED",
    "CHANNEL_CLOSED",
    "TOKEN_REFRESHED",
    "QUEUES_REFRESHED",
    "STREAM_METRIC",
}
WARNINGS = {
    "GAP",
    "GAP_UNDELIVERED",
    "DLQ_WRITE",
    "SUBSCRIBE_REJECTED",
    "CHANNEL_LOST",
    "SINK_FAILURE",
}
ERRORS = {"DLQ_DROPPED"}


def check_shape(lines: list[dict[str, object]]) -> None:
    for line in lines:
        assert list(line)[:4] == ["ts", "level", "logger", "event"]
        assert line["logger"] == "genesys_mux.audit"
        assert isinstance(line["ts"], str)
        assert ISO_UTC.fullmatch(line["ts"]), line
        assert line["level"] in ("INFO", "WARNING", "ERROR")
        event = line["event"]
        assert isinstance(event, str)
        assert event == event.upper()
        expected = "WARNING" if event in WARNINGS else "ERROR" if event in ERRORS else "INFO"
        assert line["level"] == expected, line


async def test_control_plane_facts_and_periodic_summaries() -> None:
    out = io.StringIO()
    audit = AuditLog(out)
    async with harness() as h:
        audit.attach(h.mux)
        summaries = asyncio.create_task(audit.run_periodic(h.mux, 0.2))
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}, "priority": 1})
        seen = Collector(h.mux.stream("voice"))
        await eventually(lambda: len(seen.events()) >= 5)

        def logged(name: str, n: int = 1) -> bool:
            return len(events(audit_lines(out), name)) >= n

        # A maintenance warning: make-before-break rotation.
        await h.control("faults", {"fault": "socket_closing", "delay_s": 5})
        await eventually(lambda: logged("CHANNEL_ROTATED"))
        # A socket lost without warning: the channel is lost, the stream gets a gap.
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: logged("GAP") and logged("CHANNEL_LOST"))
        # A revoked token: a new one is fetched (and never written). The
        # first token came in start(), before the audit log was attached.
        refreshed = len(events(audit_lines(out), "TOKEN_REFRESHED"))
        await h.control("faults", {"fault": "revoke_token", "client_id": "demo-client"})
        await eventually(lambda: logged("TOKEN_REFRESHED", refreshed + 1))
        await eventually(lambda: len(seen.events()) >= 20)
        await eventually(lambda: logged("STREAM_METRIC", 3))
        audit.sink_failure("voice", "webhook", ConnectionResetError("peer went away"))
        seen.stop()
        await h.mux.remove_stream("voice")
        summaries.cancel()
        delivered = h.mux.stats()["streams"]
        assert delivered == {}

    lines = audit_lines(out)
    check_shape(lines)
    (added,) = events(lines, "STREAM_ADDED")
    assert added["stream_id"] == "voice"
    assert isinstance(added["topics"], int)
    assert added["topics"] > 0
    assert events(lines, "STREAM_REMOVED")[0]["stream_id"] == "voice"
    created = events(lines, "CHANNEL_CREATED")
    connected = events(lines, "CHANNEL_CONNECTED")
    assert created
    assert connected
    assert {c["slot"] for c in connected} == {0}
    assert all(str(c["channel_id"]).startswith("streaming-0-") for c in created + connected)
    rotated = events(lines, "CHANNEL_ROTATED")[0]
    assert rotated["old_channel_id"] != rotated["channel_id"]
    assert rotated["reason"]
    lost = events(lines, "CHANNEL_LOST")[0]
    assert lost["level"] == "WARNING"
    assert lost["reason"]
    gap = events(lines, "GAP")[0]
    assert gap["stream_id"] == "voice"
    assert ISO_UTC.fullmatch(str(gap["start"]))
    assert ISO_UTC.fullmatch(str(gap["end"]))
    assert isinstance(gap["duration_s"], float)
    assert gap["duration_s"] >= 0
    assert gap["topics"] == added["topics"]
    for token_line in events(lines, "TOKEN_REFRESHED"):
        # The lifetime, never the token.
        assert set(token_line) == {"ts", "level", "logger", "event", "expires_in_s"}
        assert token_line["expires_in_s"] > 0
    (failure,) = events(lines, "SINK_FAILURE")
    assert failure["level"] == "WARNING"
    assert failure["error"] == "ConnectionResetError: peer went away"
    assert failure["sink"] == "webhook"

    metrics = events(lines, "STREAM_METRIC")
    assert all(m["stream_id"] == "voice" and m["level"] == "INFO" for m in metrics)
    last = metrics[-1]
    for key in ("received", "delivered", "duplicates", "stale", "overflowed", "dead_lettered"):
        assert isinstance(last[key], int)
    assert last["delivered"] >= 5
    assert last["gaps"] >= 1
    assert last["delivered_per_s"] is not None
    assert isinstance(last["latency_p50_s"], float)
    assert isinstance(last["latency_p99_s"], float)
    assert last["latency_p50_s"] <= last["latency_p99_s"]
    # Spaced by the interval: one line per stream per interval, not per event.
    times = [datetime.fromisoformat(str(m["ts"]).replace("Z", "+00:00")) for m in metrics]
    for earlier, later in itertools.pairwise(times):
        assert (later - earlier).total_seconds() >= 0.15

    # Nothing at INFO but control-plane facts and the summaries.
    assert {line["event"] for line in lines if line["level"] == "INFO"} <= CONTROL_INFO
    assert len(lines) < 60


async def test_a_forbidden_topic_is_recorded_as_subscribe_rejected() -> None:
    out = io.StringIO()
    async with client_harness(
        "limited-client", "limited-secret", permissions=["routing:queue:view"]
    ) as h:
        AuditLog(out).attach(h.mux)
        user = (await h.control("org"))["users"][0]["id"]
        presence = f"v2.users.{user}.presence"
        rejected = await h.mux.add_stream(
            {"id": "mixed", "filter": {"channelType": "voice"}, "topics": [presence]}
        )
        assert [r.topic for r in rejected] == [presence]
        seen = Collector(h.mux.stream("mixed"))
        await eventually(lambda: len(seen.events()) >= 1)  # the permitted topics carry on
        seen.stop()
    lines = audit_lines(out)
    check_shape(lines)
    (line,) = events(lines, "SUBSCRIBE_REJECTED")
    assert line["level"] == "WARNING"
    assert line["topic"] == presence
    assert line["missing_permissions"] == ["presence:userPresence:view"]
    assert line["reason"]
    assert "limited-secret" not in out.getvalue()


async def test_an_overflow_storm_collapses_into_one_dlq_line_per_second() -> None:
    out = io.StringIO()
    audit = AuditLog(out)
    async with harness(org_settings(rate=40.0)) as h:
        audit.attach(h.mux)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A one-event buffer nobody reads: nearly every event is dead-lettered.
        await h.mux.add_stream({"id": "small", "filter": {}, "buffer_size": 1})
        await eventually(lambda: len(events(audit_lines(out), "DLQ_WRITE")) >= 3, within=20)
        # No await between counting and detaching: the two agree exactly.
        written = sum(1 for d in h.dlq.letters if d.stream_id == "small")
        audit.detach(h.mux)  # writes what the rate limit still held
        elapsed = loop.time() - started

    lines = audit_lines(out)
    check_shape(lines)
    dlq = events(lines, "DLQ_WRITE")
    assert all(line["stream_id"] == "small" for line in dlq)
    assert sum(int(line["count"]) for line in dlq) == written
    assert written > 2 * len(dlq), "the storm was not collapsed"
    assert len(dlq) <= elapsed + 2
    times = [datetime.fromisoformat(str(d["ts"]).replace("Z", "+00:00")) for d in dlq]
    for earlier, later in itertools.pairwise(times[:-1]):
        # The final line is the detach flush; the rest are at least a second apart.
        assert (later - earlier).total_seconds() >= 0.95
    for line in dlq:
        assert line["reasons"] == {"overflow_drop_oldest": line["count"]}
        assert int(line["first_sequence"]) <= int(line["last_sequence"])
    sequences = [(int(d["first_sequence"]), int(d["last_sequence"])) for d in dlq]
    for (_, last), (first, _) in itertools.pairwise(sequences):
        assert first > last  # consecutive windows, nothing counted twice


def _counts(lines: list[dict[str, Any]], event: str) -> int:
    return sum(int(line["count"]) for line in events(lines, event))


async def test_letters_a_full_dead_letter_file_drops_are_audited_as_dropped(
    tmp_path: Path,
) -> None:
    """A real file queue at its dlq_max_bytes: DLQ_WRITE for what it kept, DLQ_DROPPED for the rest.

    The file takes a dozen letters of an overflow storm, then drops them
    (a small one may still fit after a large one did not); it is emptied
    (as ``dlq purge`` does) and takes letters again. Every letter is in
    exactly one line: the writes add up to the letters the files got, the
    drops to the queue's own count, and each line's first and last letter
    really had that fate.
    """
    path = tmp_path / "dlq.jsonl"
    dlq = JsonlDeadLetterQueue(path, max_bytes=20_000)
    out = io.StringIO()
    audit = AuditLog(out)

    def on_file() -> list[int]:
        return [json.loads(line)["sequence"] for line in path.read_text().splitlines()]

    async with harness(org_settings(rate=40.0), dlq=dlq) as h:
        audit.attach(h.mux)
        # A one-event buffer nobody reads: nearly every event is dead-lettered.
        await h.mux.add_stream({"id": "small", "filter": {}, "buffer_size": 1})
        await eventually(lambda: dlq.dropped >= 30, within=30)
        with file_lock(path):  # what dlq purge does, under the writer's lock
            purged = on_file()
            path.write_bytes(b"")
        await eventually(lambda: _counts(audit_lines(out), "DLQ_WRITE") > len(purged), within=30)
        await h.mux.stop(drain=False)  # the last letters, and the queue closed
        audit.detach(h.mux)

    lines = audit_lines(out)
    check_shape(lines)
    kept = set(purged) | set(on_file())
    assert _counts(lines, "DLQ_WRITE") == len(purged) + len(on_file())
    assert _counts(lines, "DLQ_DROPPED") == dlq.dropped >= 30
    for line in events(lines, "DLQ_WRITE"):
        assert {line["first_sequence"], line["last_sequence"]} <= kept, line
    for line in events(lines, "DLQ_DROPPED"):
        assert line["stream_id"] == "small"
        assert not {line["first_sequence"], line["last_sequence"]} & kept, line
    # Collapsed: a line per kind per second at most, not one per letter.
    assert len(events(lines, "DLQ_DROPPED")) < dlq.dropped / 5


def test_the_rate_limit_with_a_fake_clock() -> None:
    now = [100.0]
    out = io.StringIO()
    audit = AuditLog(out, clock=lambda: now[0])
    for sequence in range(1, 501):
        audit.record(DeadLettered("a", sequence, "x"))
    audit.record(DeadLettered("b", 1, "y"))
    lines = events(audit_lines(out), "DLQ_WRITE")
    assert [(d["stream_id"], d["count"]) for d in lines] == [("a", 1), ("b", 1)]
    now[0] += 0.5
    audit.record(DeadLettered("a", 501, "x"))
    assert len(events(audit_lines(out), "DLQ_WRITE")) == 2
    now[0] += 0.5
    audit.record(DeadLettered("a", 502, "z"))
    lines = events(audit_lines(out), "DLQ_WRITE")
    assert len(lines) == 3
    assert lines[2]["count"] == 501
    assert (lines[2]["first_sequence"], lines[2]["last_sequence"]) == (2, 502)
    assert lines[2]["reasons"] == {"x": 500, "z": 1}
    audit.flush()
    assert len(events(audit_lines(out), "DLQ_WRITE")) == 3  # nothing was held


class _Webhook:
    def __str__(self) -> str:
        return "https://user:hunter2@hooks.example/ingest"


def test_free_text_is_redacted_and_ids_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    token = "Zq3kP9sLmX2vB7nR4tYw8cJd6fHg1aE5"
    with AuditLog(path) as audit:
        audit.record(ChannelCreated(2, "streaming-0-abcdefghijklmnopqrstuvwxyz"))
        audit.record(TopicRejected("v2.x", f"Bearer {token}", (), ("s",)))
        audit.record(GapReported("s", "streaming-0-abc", 10.0, 12.5, 3, token))
        audit.sink_failure("s", "webhook", ValueError(f"refused key {token}"))
        audit.sink_failure("s", _Webhook(), "HTTP 500")
        audit.record(ChannelFailed(1, "", "gave up"))
    text = path.read_text()
    assert token not in text
    assert "Bearer" not in text
    assert "hunter2" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    created, rejected, gap, failure, by_object, failed = lines
    assert {k for k in created if k not in ("ts", "level", "logger", "event")} == {
        "slot",
        "channel_id",
    }
    assert created["channel_id"] == "streaming-0-abcdefghijklmnopqrstuvwxyz"
    assert rejected["reason"] == REDACTED
    assert gap["reason"] == REDACTED
    assert gap["duration_s"] == 2.5
    assert gap["start"] == "1970-01-01T00:00:10.000Z"
    assert failure["error"] == REDACTED
    assert by_object["sink"] == "_Webhook"
    assert by_object["error"] == "HTTP 500"
    assert failed["level"] == "ERROR"


def test_every_control_event_type_is_audited() -> None:
    out = io.StringIO()
    audit = AuditLog(out)
    every = sample_events()
    assert len({type(e) for e in every}) == len(typing.get_args(ControlEvent)) >= 17
    assert len({e.kind for e in every}) == len(every), "two event types share a kind"
    for event in every:
        audit.record(event)
    audit.flush()
    written = {line["event"]: line for line in audit_lines(out)}
    for event in every:
        line = written[event.kind.upper()]
        assert line["level"] == event.level
        assert line["logger"] == "genesys_mux.audit"


def _distinct_sample(kind: Any, serial: int) -> ControlEvent:
    """``kind`` with a value per field that no other field has, so each can be found."""
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for number, f in enumerate(dataclasses.fields(kind)):
        hint = hints[f.name]
        unique = 1000 * serial + number + 1
        if hint is int:
            values[f.name] = unique
        elif hint is float:
            values[f.name] = float(unique)
        elif hint is str:
            values[f.name] = f"{f.name}-{unique}"
        elif hint == tuple[str, ...]:
            values[f.name] = (f"{f.name}-{unique}",)
        else:
            raise AssertionError(f"{kind.__name__}.{f.name}: no sample for {hint}")
    event: ControlEvent = kind(**values)
    return event


def _written_values(line: object) -> list[object]:
    """Every value of a decoded line, nested ones and mapping keys too."""
    if isinstance(line, dict):
        return [v for key, value in line.items() for v in (key, *_written_values(value))]
    if isinstance(line, list):
        return [v for item in line for v in _written_values(item)]
    return [line]


def test_every_field_of_every_control_event_is_written_or_deliberately_withheld() -> None:
    """Walks each ControlEvent dataclass: each field's value reaches the line, or WITHHELD says why.

    A new field (or a new event) that nobody added to the audit's allow-list
    fails here instead of being dropped without a word, as a lease's fencing
    token and an activation's ``kept`` count once were.
    """
    kinds = typing.get_args(ControlEvent)
    known = {f"{k.__name__}.{f.name}" for k in kinds for f in dataclasses.fields(k)}
    assert set(WITHHELD) <= known, "WITHHELD names fields that do not exist"
    problems = []
    for serial, kind in enumerate(kinds, 1):
        event = _distinct_sample(kind, serial)
        out = io.StringIO()
        with AuditLog(out) as audit:
            audit.record(event)
        lines = audit_lines(out)
        assert len(lines) == 1, (kind.__name__, lines)
        written = _written_values({k: v for k, v in lines[0].items() if k != "ts"})
        for f in dataclasses.fields(kind):
            name = f"{kind.__name__}.{f.name}"
            value = getattr(event, f.name)
            expected: list[object]
            if isinstance(value, tuple):
                expected = list(value)
            elif isinstance(value, float):
                expected = [format_iso(value)]  # times are written as ISO-8601
            else:
                expected = [value]
            shown = all(v in written for v in expected)
            if name in WITHHELD:
                if shown:
                    problems.append(f"{name} is withheld but written")
            elif not shown:
                problems.append(f"{name} is neither written nor in WITHHELD")
            if REDACTED in written:
                problems.append(f"{kind.__name__}: a field was redacted")
    assert not problems, "\n".join(problems)


def test_a_lease_s_fencing_token_and_an_activation_s_kept_count_are_written() -> None:
    out = io.StringIO()
    with AuditLog(out) as audit:
        audit.record(LeaseAcquired("voice", 1_700_000_000_123, "acquired"))
        audit.record(StreamActivated("voice", 42, "failover"))
    acquired, activated = audit_lines(out)
    assert acquired["event"] == "LEASE_ACQUIRED"
    assert acquired["fence"] == 1_700_000_000_123
    assert "token" not in acquired
    assert (activated["event"], activated["kept"], activated["reason"]) == (
        "STREAM_ACTIVATED",
        42,
        "failover",
    )


DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations" / "index.md"
_DOC_ROW = re.compile(r"^\| `([A-Z_]+)` \| (INFO|WARNING|ERROR) \| (.*) \|$", re.MULTILINE)


def documented_fields() -> dict[str, tuple[str, set[str]]]:
    """The operations page's table: event → (level, field names), asides in brackets left out."""
    text = DOCS.read_text(encoding="utf-8")
    return {
        code: (level, set(re.findall(r"`([a-z0-9_]+)`", re.sub(r"\([^)]*\)", "", fields))))
        for code, level, fields in _DOC_ROW.findall(text)
    }


def audit_scenario_lines() -> list[dict[str, object]]:
    """Lines of every event, each field the audit writes present in at least one of them."""
    now = [0.0]
    out = io.StringIO()
    with AuditLog(out, clock=lambda: now[0]) as audit:
        for event in sample_events():
            audit.record(event)
        # Collapsed facts: a summary line has what a first one has not.
        for error in ("HTTP 503", "HTTP 502", "timed out"):
            audit.sink_failure("voice-main", "hook", error)
        audit.run_stopped("SIGTERM", 2, 120, 3, 1)
    return audit_lines(out)


async def test_the_operations_page_lists_the_fields_of_every_event() -> None:
    lines = audit_scenario_lines()
    out = io.StringIO()
    audit = AuditLog(out)
    # A queue that keeps one letter: the rest of an overflow are dropped.
    async with harness(org_settings(rate=40.0), dlq=MemoryDeadLetterQueue(limit=1)) as h:
        audit.attach(h.mux)
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        await h.mux.add_stream({"id": "small", "filter": {}, "buffer_size": 1})
        await eventually(lambda: events(audit_lines(out), "DLQ_DROPPED"))
        audit.stream_metrics(h.mux)
        audit.detach(h.mux)
    lines += audit_lines(out)
    observed: dict[str, tuple[str, set[str]]] = {}
    for line in lines:
        level, fields = observed.setdefault(str(line["event"]), (str(line["level"]), set()))
        assert line["level"] == level
        fields.update(k for k in line if k not in ("ts", "level", "logger", "event"))
    documented = documented_fields()
    assert set(documented) == set(observed), "events the table and the audit log disagree on"
    for code, (level, fields) in observed.items():
        assert documented[code] == (level, fields), code


def _file_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_rotated_audit_file_is_reopened_at_its_path(tmp_path: Path) -> None:
    """logrotate without copytruncate: the file is moved away, or deleted; lines follow the path."""
    path = tmp_path / "audit.jsonl"
    rotated = tmp_path / "audit.jsonl.1"
    with AuditLog(path) as audit:
        audit.record(StreamAdded("voice", 3))
        path.rename(rotated)
        audit.record(StreamRemoved("voice"))
        assert [line["event"] for line in _file_lines(rotated)] == ["STREAM_ADDED"]
        assert [line["event"] for line in _file_lines(path)] == ["STREAM_REMOVED"]
        # Deleted outright: a new file again, nothing written into the unlinked one.
        path.unlink()
        audit.record(StreamAdded("chat", 1))
        assert [line["stream_id"] for line in _file_lines(path)] == ["chat"]
        # Truncated in place (copytruncate): appended at the new end, no hole.
        path.write_bytes(b"")
        audit.record(StreamRemoved("chat"))
        assert [line["event"] for line in _file_lines(path)] == ["STREAM_REMOVED"]
    assert [line["event"] for line in _file_lines(rotated)] == ["STREAM_ADDED"]


def test_an_audit_file_whose_directory_vanished_loses_lines_not_the_feed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.record(StreamAdded("voice", 3))
        path.unlink()
        directory.rmdir()
        with caplog.at_level(logging.WARNING, logger="genesys_mux.observability.audit"):
            audit.record(StreamRemoved("voice"))  # lost, said once, never raised
            audit.record(StreamRemoved("voice"))
        said = [r for r in caplog.records if "cannot write the audit log" in r.getMessage()]
        assert len(said) == 1
        # Which file, and what the system said, not only the exception's type.
        message = said[0].getMessage()
        assert message.startswith(f"cannot write the audit log {path}: No such file or directory")
        assert "(FileNotFoundError)" in message
        directory.mkdir()
        audit.record(StreamAdded("chat", 1))
    assert [line["stream_id"] for line in _file_lines(path)] == ["chat"]


def test_sink_failures_collapse_with_a_fake_clock() -> None:
    """The first failure at once; those within the interval held, then one line with their count."""
    now = [100.0]
    out = io.StringIO()
    audit = AuditLog(out, clock=lambda: now[0])
    audit.sink_failure("voice", "hook", "HTTP 503 (attempt 1)")
    audit.sink_failure("chat", "hook", "HTTP 503")  # another stream: its own line at once
    for attempt in range(2, 52):
        now[0] += 0.01
        audit.sink_failure("voice", "hook", f"HTTP 503 (attempt {attempt})")
    lines = events(audit_lines(out), "SINK_FAILURE")
    assert [(f["stream_id"], f["count"], f["error"]) for f in lines] == [
        ("voice", 1, "HTTP 503 (attempt 1)"),
        ("chat", 1, "HTTP 503"),
    ]
    assert "last_error" not in lines[0]
    now[0] = 101.0
    audit.sink_failure("voice", "hook", "timed out (attempt 52)")
    lines = events(audit_lines(out), "SINK_FAILURE")
    assert len(lines) == 3
    summary = lines[2]
    assert summary["level"] == "WARNING"
    assert (summary["stream_id"], summary["sink"], summary["count"]) == ("voice", "hook", 51)
    # The first error of the interval is kept, and the latest beside it.
    assert summary["error"] == "HTTP 503 (attempt 2)"
    assert summary["last_error"] == "timed out (attempt 52)"
    audit.flush()
    assert len(events(audit_lines(out), "SINK_FAILURE")) == 3  # nothing was held


def hook_runner(
    mux: Multiplexer, receiver: Receiver, *, max_attempts: int, linger_s: float = 0.05
) -> SinkRunner:
    """A runner of stream ``all`` to a webhook named ``hook`` at ``receiver``, retrying quickly."""
    return SinkRunner(
        mux.stream("all", settle=False),
        [WebhookSink(receiver.url, SECRET, signing="genesys-mux", name="hook")],
        mux.dead_letter,
        max_attempts=max_attempts,
        linger_s=linger_s,
        backoff=Backoff(0.02, 0.05),
    )


async def test_a_webhook_that_is_down_is_one_sink_failure_line_per_second() -> None:
    """A real webhook answering 503 under a live stream: every attempt counted, few lines."""
    out = io.StringIO()
    audit = AuditLog(out)
    attempts: list[str] = []
    loop = asyncio.get_running_loop()
    async with (
        Receiver(signing="genesys-mux", status=503) as receiver,
        harness(org_settings(rate=20.0)) as h,
    ):
        await h.mux.add_stream({"id": "all", "filter": {}})
        runner = hook_runner(h.mux, receiver, max_attempts=2)
        # Wired as the command line wires it.
        runner.on_failure.append(functools.partial(audit.sink_failure, "all"))
        runner.on_failure.append(lambda sink, text: attempts.append(text))
        started = loop.time()
        task = asyncio.create_task(runner.run())
        try:
            await eventually(
                lambda: len(attempts) >= 40 and loop.time() - started >= 2.0, within=30
            )
        finally:
            runner.stop()
            await asyncio.gather(task, return_exceptions=True)
        elapsed = loop.time() - started
    audit.flush()

    lines = events(audit_lines(out), "SINK_FAILURE")
    check_shape(lines)
    assert len(lines) <= elapsed + 2, "not collapsed to a line per second"
    assert len(lines) < len(attempts) / 3
    assert sum(int(line["count"]) for line in lines) == len(attempts)
    # Each line stands for a run of attempts, in order: its first error is that run's first.
    start = 0
    for line in lines:
        run = attempts[start : start + int(line["count"])]
        assert line["error"] == run[0]
        assert line.get("last_error", run[0]) == run[-1]
        assert "503" in str(line["error"])
        start += len(run)
    assert lines[0]["count"] == 1  # the first one at once
    assert SECRET not in out.getvalue()


async def test_a_gap_the_sinks_did_not_get_is_audited_with_its_window() -> None:
    """A gap has no body to dead-letter: the audit log is its record (wired as `run` wires it)."""
    out = io.StringIO()
    audit = AuditLog(out)
    async with (
        Receiver(signing="genesys-mux", status=400) as receiver,
        harness(org_settings(rate=20.0)) as h,
    ):
        audit.attach(h.mux)
        await h.mux.add_stream({"id": "all", "filter": {}})
        runner = hook_runner(h.mux, receiver, max_attempts=1, linger_s=0.0)
        runner.on_gap_lost.append(h.mux.gap_undelivered)
        task = asyncio.create_task(runner.run())
        try:
            await eventually(lambda: h.mux.stats()["streams"]["all"].delivered >= 1)
            # A socket lost without warning: a gap, which the refusing webhook never takes.
            await h.control("faults", {"fault": "drop_socket"})
            await eventually(lambda: events(audit_lines(out), "GAP_UNDELIVERED"), within=20)
        finally:
            runner.stop()
            await asyncio.gather(task, return_exceptions=True)
        audit.detach(h.mux)
    lines = audit_lines(out)
    check_shape(lines)
    (reported,) = events(lines, "GAP")
    (undelivered,) = events(lines, "GAP_UNDELIVERED")
    for field in ("stream_id", "channel_id", "start", "end", "duration_s", "topics", "reason"):
        assert undelivered[field] == reported[field], field
    assert str(undelivered["why"]).startswith("sink_failed:hook: ")
    assert "400" in str(undelivered["why"])
    assert SECRET not in out.getvalue()


async def test_stream_metric_counts_the_letters_of_the_streams_sinks_too() -> None:
    """A stream's dead letters are its buffer's and its sinks': the summary gives both."""
    out = io.StringIO()
    audit = AuditLog(out)
    async with harness() as h:
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        audit.stream_metrics(h.mux, lambda stream_id: 7 if stream_id == "voice" else 0)
        audit.stream_metrics(h.mux)
    first, second = events(audit_lines(out), "STREAM_METRIC")
    assert (first["dead_lettered"], first["sink_dead_lettered"]) == (0, 7)
    assert second["sink_dead_lettered"] == 0
