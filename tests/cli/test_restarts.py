"""``genesys-mux run`` stopped (SIGTERM) or killed (SIGKILL) mid-traffic and started again.

Each case is a real story with real processes: an in-process emulator with
steady traffic, a ``run`` process with a JSON-lines sink, back-fill on and its
state in a SQLite file or a real redis-server, a signal once it has
delivered a good number of events, then a second ``run`` on the same
configuration and state, stopped with SIGTERM once it has delivered more and
back-filled its restart gap.

Beside it, a *witness* (``tests.net.test_chaos.Witness``: its own OAuth
client and channel, plain aiohttp, no library code) is subscribed to the
stream's topics for the whole story, downtime included: what the emulator's
ledger says it sent the witness is what the stream should account for.
Every such notification, from when the first run was subscribed to when
the second was told to stop, is reconciled against the sink's file and the
dead-letter queue. It must be

* delivered: a record of the same ``(topic, CorrelationId)``;
* dead-lettered: a dead letter of the same ``(topic, CorrelationId)``;
* a duplicate: the same state of the same conversation (``event_facts``
  key and digest, the content behind the idempotency key) was delivered
  before it was sent;
* stale: a newer version of the conversation was delivered before;
* or inside a reported gap of its topic, and then covered: a record of the
  same conversation, at least as new, was received after the gap ended
  (from back-fill, or live).

The stream's filter is ``{}``, every conversation of every queue: nothing
is filtered client-side, so "filtered" never applies. Gap bounds are
compared with a margin measured in the same run (the mux's read latency and
the skew between the witness's and the mux's sends of one notification),
as in the chaos test. One thing back-fill cannot cover, by the platform's
design: a call still in its IVR is already on its queue's topic, but the
analytics query back-fill uses finds it only once it reached the queue; such
a snapshot inside a gap is counted apart (``then_not_backfillable_in_ivr``)
when nothing newer about it came before run 2 was stopped.

And, from the sink's file alone:

* within each run (``epoch``) sequences go up by one with no hole, and the
  second run continues the numbering: exactly from the first's last + 1
  after SIGTERM; after SIGKILL from the last checkpoint, so above 1 and at
  most the first's last + 1;
* after SIGTERM no state delivered by the first run is delivered again by
  the second; after SIGKILL only states numbered after the last checkpoint
  (sequence at least the second run's first) and received inside the
  restart gap may be, with the same idempotency key; no state twice within
  one run, and no conversation goes back to an older version;
* there is exactly one ``restart`` gap, on all the stream's topics, between
  the two runs' events: it starts no later than the first run's last
  unacknowledged event (SIGKILL) or its last notification read (SIGTERM,
  and after everything it delivered) and ends no earlier than the second
  run's start and no later than the moment it answered ready.

Neither run may log a traceback. A failure lists every problem at once,
naming the conversation, topic, send time and phase of the story (run 1,
downtime, run 2) of what was lost, with counts of every category.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from genesys_mux.core.snapshot import EventFacts, event_facts
from genesys_mux.core.streams import DeadLetter
from genesys_mux.emulator import ClientApp, Emulator
from genesys_mux.emulator.sockets import LedgerEntry
from genesys_mux.sinks.base import EventRecord, GapRecord, Record, decode_record
from genesys_mux.sinks.dlq import read_dead_letters
from tests.cli.conftest import start_cli
from tests.cli.test_run import DEMO_CREDENTIALS, poll
from tests.net.test_chaos import WITNESS_CLIENT, Outcome, Witness
from tests.net.test_multiplexer import org_settings
from tests.sinks.conftest import RedisServer, free_port

#: New conversations per second: about 20 notifications a second on the
#: general topics of the three queues from a second or two in (half as many
#: conversations take several seconds to get there), enough to be
#: mid-traffic at any time.
RATE = 10.0
#: Events each run delivers before it is stopped.
EACH_RUN = 25
DEADLINE_S = 20.0
STREAM = "all"
SINK = "all.jsonl"
DLQ = "dlq.jsonl"

CONFIG = """\
[settings]
dlq_path = "{dlq}"
backfill = true
pong_timeout = 1
metric_interval_s = 3600

[state]
{state}
checkpoint_interval_s = 0.2

[[streams]]
id = "{stream}"
filter = {{}}

  [[streams.sinks]]
  type = "jsonl"
  path = "{sink}"
  fsync = "never"
"""

Key = tuple[str, str]  # (topic, CorrelationId)


class _Frame(msgspec.Struct):
    """A notification frame: only its body, kept verbatim."""

    eventBody: msgspec.Raw


# -- the processes -------------------------------------------------------------------


@dataclass
class RunProcess:
    """One ``genesys-mux run`` process, its admin URL and what it wrote on stderr."""

    process: asyncio.subprocess.Process
    admin: str
    #: Unix time just before the process was spawned.
    spawned_at: float
    exited: asyncio.Future[int]
    stderr: list[bytes] = field(default_factory=list)
    #: Unix time when ``/readyz`` was first seen to answer 200 (its stream added).
    ready_at: float | None = None
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, emulator: Emulator, directory: Path) -> RunProcess:
        port = free_port()
        spawned_at = time.time()
        process = await start_cli(
            "run", "-c", "mux.toml", "--base-url", emulator.base_url,
            "--admin-port", str(port), "--log-json",
            env=DEMO_CREDENTIALS,
            cwd=directory,
        )  # fmt: skip
        run = cls(
            process, f"http://127.0.0.1:{port}", spawned_at, asyncio.ensure_future(process.wait())
        )
        assert process.stdout is not None
        assert process.stderr is not None
        run.readers = [
            asyncio.create_task(run._drain(process.stdout, None)),
            asyncio.create_task(run._drain(process.stderr, run.stderr)),
        ]
        return run

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, into: list[bytes] | None) -> None:
        while line := await stream.readline():
            if into is not None:
                into.append(line)

    def audit(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of stderr whose ``event`` is ``event``."""
        found = []
        for line in self.stderr:
            if line.startswith(b"{"):
                parsed = json.loads(line)
                if parsed.get("event") == event:
                    found.append(parsed)
        return found

    def why(self) -> str:
        code = self.process.returncode
        tail = b"".join(self.stderr[-40:]).decode(errors="replace")
        return f"run exit {code}; stderr tail:\n{tail}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        """Wait until ``/readyz`` answers 200: a channel is live and subscribed."""
        answer = await poll(
            session, f"{self.admin}/readyz", time.monotonic() + DEADLINE_S, self.exited
        )
        assert answer[0] == 200, f"{answer}\n{self.why()}"
        self.ready_at = time.time()

    async def until(self, check: Callable[[], bool], what: str) -> None:
        """Poll ``check`` until it holds; fail naming ``what`` at the deadline or the exit."""
        deadline = time.monotonic() + DEADLINE_S
        while not check():
            assert not self.exited.done(), f"run exited before {what}\n{self.why()}"
            assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}\n{self.why()}"
            await asyncio.sleep(0.05)  # polling towards a deadline, not synchronisation

    async def finish(self, sig: signal.Signals) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status."""
        self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(asyncio.shield(self.exited), DEADLINE_S)
        except TimeoutError:
            raise AssertionError(f"run did not exit within {DEADLINE_S} s of {sig.name}") from None
        await asyncio.gather(*self.readers)
        return code

    async def kill(self) -> None:
        """Make sure it is gone (teardown after a failure)."""
        if self.process.returncode is None:
            self.process.kill()
        await asyncio.wait_for(asyncio.shield(self.exited), DEADLINE_S)
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


def sink_records(path: Path, *, whole: bool = False) -> list[Record]:
    """The records of the sink's file, in order; a line still being written is left out.

    With ``whole``, the file must end with a whole line (all writers gone).
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    if whole:
        assert not data or data.endswith(b"\n"), (
            f"{path.name} ends with a torn line: {data[-200:]!r}"
        )
    return [decode_record(line) for line in data.split(b"\n")[:-1] if line]


def events_outside(path: Path, epochs: set[str]) -> list[EventRecord]:
    return [r for r in sink_records(path) if isinstance(r, EventRecord) and r.epoch not in epochs]


# -- the story ------------------------------------------------------------------------


@dataclass
class Story:
    """When things happened (Unix time) and how the runs ended."""

    signal: signal.Signals
    first: RunProcess
    second: RunProcess
    #: When the first run was sent its signal, and the second its SIGTERM.
    signalled_at: float
    stopped_at: float
    codes: tuple[int, int]

    def phase(self, t: float) -> str:
        if t < self.signalled_at:
            return "run 1"
        if t < self.second.spawned_at:
            return f"after run 1's {self.signal.name}"
        if t < self.stopped_at:
            return "run 2 (or its start-up)"
        return "after run 2's SIGTERM"


async def two_runs(
    emulator: Emulator, session: aiohttp.ClientSession, directory: Path, sig: signal.Signals
) -> Story:
    """Run, signal, run again, stop: the story of one case."""
    sink = directory / SINK
    first = await RunProcess.start(emulator, directory)
    second: RunProcess | None = None
    try:
        await first.ready(session)
        await first.until(
            lambda: len(events_outside(sink, set())) >= EACH_RUN, f"{EACH_RUN} events in run 1"
        )
        signalled_at = time.time()
        code1 = await first.finish(sig)
        expected = 0 if sig == signal.SIGTERM else -signal.SIGKILL
        assert code1 == expected, f"run 1 after {sig.name}: {first.why()}"
        before = {r.epoch for r in events_outside(sink, set())}

        second = again = await RunProcess.start(emulator, directory)
        await again.ready(session)
        await again.until(
            lambda: len(events_outside(sink, before)) >= EACH_RUN and bool(again.audit("BACKFILL")),
            f"{EACH_RUN} events in run 2 and its restart gap back-filled",
        )
        stopped_at = time.time()
        code2 = await again.finish(signal.SIGTERM)
        assert code2 == 0, f"run 2 after SIGTERM: {again.why()}"
    finally:
        await first.kill()
        if second is not None:
            await second.kill()
    return Story(sig, first, again, signalled_at, stopped_at, (code1, code2))


# -- the reconciliation ------------------------------------------------------------------------


@dataclass
class Delivered:
    """One event record of the sink's file, or one dead letter, with its facts."""

    #: Line in the sink's file (dead letters: None).
    line: int | None
    epoch: str
    sequence: int
    topic: str
    correlation_id: str | None
    received_at: float
    idempotency_key: str
    facts: EventFacts

    @property
    def dead(self) -> bool:
        return self.line is None

    @property
    def state(self) -> tuple[str, bytes]:
        """What the idempotency key stands for: the conversation and its state digest."""
        return (self.facts.key, self.facts.hash)

    @property
    def backfilled(self) -> bool:
        # Back-fill offers REST snapshots, which have no CorrelationId.
        return self.correlation_id is None and not self.dead

    @classmethod
    def of_letter(cls, letter: DeadLetter, epoch: str) -> Delivered:
        return cls(
            None,
            epoch,
            letter.sequence,
            letter.topic,
            letter.correlation_id,
            letter.received_at,
            letter.idempotency_key,
            event_facts(letter.topic, letter.raw),
        )


def checked_record(
    line: int, record: EventRecord, stream_id: str, topics: Collection[str], out: Outcome
) -> Delivered:
    """A sink's event record, read back: of the stream's topics, keyed by its content."""
    facts = event_facts(record.topic, record.raw)
    if record.stream_id != stream_id or record.topic not in topics:
        out.problem(f"line {line}: a record of {record.stream_id} on {record.topic}")
    # The key names the content: stream, conversation, state digest.
    expected = f"{stream_id}:{facts.key}:{facts.hash.hex()}"
    if record.idempotency_key != expected:
        out.problem(f"line {line}: idempotency key {record.idempotency_key}, not {expected}")
    return Delivered(
        line,
        record.epoch,
        record.sequence,
        record.topic,
        record.correlation_id,
        record.received_at,
        record.idempotency_key,
        facts,
    )


def split_ledger(
    ledger: Iterable[LedgerEntry], witness_channel: str, topics: Collection[str] | None = None
) -> tuple[dict[Key, float], dict[Key, list[float]]]:
    """The ledger's sends (of ``topics``, default all): first to the witness, all to the mux."""
    to_witness: dict[Key, float] = {}
    to_mux: dict[Key, list[float]] = defaultdict(list)
    for e in ledger:
        if topics is not None and e.topic not in topics:
            continue
        key = (e.topic, e.correlation_id)
        if e.channel_id == witness_channel:
            to_witness.setdefault(key, e.time)
        else:
            to_mux[key].append(e.time)
    return to_witness, to_mux


@dataclass
class Evidence:
    """Everything the reconciliation reads, gathered once both runs are gone."""

    story: Story
    topics: set[str]
    records: list[Record]
    letters: list[DeadLetter]
    ledger: list[LedgerEntry]
    witness_channel: str
    witness_frames: dict[Key, str]


@dataclass
class Books:
    """The sink's file and the dead-letter queue, read back, and the ledger's sends."""

    #: The runs' epochs, in order.
    epochs: list[str]
    #: Event records in file order, then dead letters.
    delivered: list[Delivered]
    #: (line, gap) in file order.
    gaps: list[tuple[int, GapRecord]]
    #: (topic, CorrelationId) -> first send to the witness.
    to_witness: dict[Key, float]
    #: (topic, CorrelationId) -> every send to a channel of the mux.
    to_mux: dict[Key, list[float]]
    #: How far outside a gap a notification's send may lie (see :func:`measured_margin`).
    margin: float = 0.0

    def run(self, n: int) -> list[Delivered]:
        return [d for d in self.delivered if d.epoch == self.epochs[n - 1]]


def read_books(ev: Evidence, out: Outcome) -> Books | None:
    """Read the records back and check each one's key; None when there are not two runs."""
    delivered: list[Delivered] = []
    gaps: list[tuple[int, GapRecord]] = []
    for line, record in enumerate(ev.records, 1):
        if isinstance(record, GapRecord):
            gaps.append((line, record))
            continue
        delivered.append(checked_record(line, record, STREAM, ev.topics, out))
    epochs = list(dict.fromkeys(d.epoch for d in delivered))
    if len(epochs) != 2 or not all(epochs):
        out.problem(f"expected the events of two runs, got epochs {epochs}")
        return None
    # Dead letters carry no epoch: they belong to the run that was up when received.
    for letter in ev.letters:
        run = 0 if letter.received_at < ev.story.second.spawned_at else 1
        delivered.append(Delivered.of_letter(letter, epochs[run]))
    to_witness, to_mux = split_ledger(ev.ledger, ev.witness_channel)
    if not to_mux:
        out.problem("the ledger has nothing sent to the mux")
        return None
    books = Books(epochs, delivered, gaps, to_witness, to_mux)
    books.margin = measured_margin(books)
    return books


def measured_margin(books: Books) -> float:
    """How far outside a gap's bounds a notification's send may lie, measured in this run.

    A gap's bounds are the mux's receive times, and a notification the mux
    never got has only the witness's send time: the margin is the mux's
    largest read latency plus the largest skew between the witness's and the
    mux's sends of one notification, plus 50 ms of scheduling.
    """
    latency = 0.0
    for d in books.delivered:
        if d.correlation_id is not None:
            sent = [
                t
                for t in books.to_mux.get((d.topic, d.correlation_id), [])
                if t <= d.received_at + 0.05
            ]
            if sent:
                latency = max(latency, d.received_at - max(sent))
    skew = max(
        (
            abs(books.to_witness[k] - min(ts))
            for k, ts in books.to_mux.items()
            if k in books.to_witness
        ),
        default=0.0,
    )
    return latency + skew + 0.05


def account_for_notifications(ev: Evidence, books: Books, out: Outcome) -> None:
    """Every notification sent on the stream's topics: delivered, or accounted for."""
    story = ev.story
    # From the first send to the mux (run 1 subscribed) to run 2's SIGTERM.
    start = min(t for ts in books.to_mux.values() for t in ts) + books.margin
    out.notes.append(
        f"{story.signal.name}: {len(books.to_witness)} notifications to the witness, "
        f"{sum(map(len, books.to_mux.values()))} to the mux; reconciled "
        f"{story.stopped_at - start:.1f} s; margin {books.margin * 1000:.0f} ms"
    )
    account_for_sends(
        books,
        out,
        STREAM,
        topics=ev.topics,
        frames=ev.witness_frames,
        window=(start, story.stopped_at),
        phase=story.phase,
    )


def account_for_sends(
    books: Books,
    out: Outcome,
    stream_id: str,
    *,
    topics: Collection[str],
    frames: Mapping[Key, str],
    window: tuple[float, float],
    phase: Callable[[float], str],
) -> None:
    """Every notification the witness was sent on ``topics`` within ``window``, accounted for.

    Delivered, dead-lettered, a duplicate or stale (a state as new delivered
    before it was sent), or inside a gap of its topic and then covered; else
    a problem (a loss) for ``out``, counted under ``stream_id``. Also: nothing
    delivered that the platform did not send to the mux. ``phase`` names the
    part of the story a send time falls in, for the messages.
    """
    counts = out.counts[stream_id]
    margin = books.margin
    start, end = window
    by_notification: dict[Key, list[Delivered]] = defaultdict(list)
    first_of_state: dict[tuple[str, bytes], float] = {}
    by_conversation: dict[str, list[Delivered]] = defaultdict(list)
    for d in books.delivered:
        if d.correlation_id is not None:
            by_notification[(d.topic, d.correlation_id)].append(d)
        first_of_state[d.state] = min(first_of_state.get(d.state, d.received_at), d.received_at)
        by_conversation[d.facts.key].append(d)

    for key, sent_at in sorted(books.to_witness.items(), key=lambda kv: kv[1]):
        topic, correlation_id = key
        if topic not in topics or not start <= sent_at <= end:
            continue
        frame = frames.get(key)
        if frame is None:
            out.problem(f"the witness never read {key}, which the ledger says it was sent")
            continue
        facts = event_facts(topic, bytes(msgspec.json.decode(frame, type=_Frame).eventBody))
        about = f"conversation {facts.key}: {topic} sent at {sent_at:.3f} ({phase(sent_at)})"
        found = by_notification.get(key)
        if found:
            counts["dead_lettered" if found[0].dead else "delivered"] += 1
            if len(found) > 1:
                out.problem(f"{about} delivered {len(found)} times")
            continue
        first = first_of_state.get((facts.key, facts.hash))
        if first is not None and first <= sent_at + margin:
            counts["duplicate"] += 1
            continue
        if facts.version is not None and any(
            d.facts.version is not None
            and d.facts.version > facts.version
            and d.received_at <= sent_at + margin
            for d in by_conversation.get(facts.key, ())
        ):
            counts["stale"] += 1
            continue
        gap = next(
            (
                g
                for _, g in books.gaps
                if topic in g.topics and g.start - margin <= sent_at <= g.end + margin
            ),
            None,
        )
        if gap is not None:
            counts[f"in_{gap.reason}_gap"] += 1
            # Covered: something at least as new about it was delivered after the gap.
            later = [
                d
                for d in by_conversation.get(facts.key, ())
                if d.received_at >= gap.end
                and (facts.version is None or (d.facts.version or 0.0) >= facts.version)
            ]
            if not later and not reached_its_queue(topic, facts):
                # Back-fill finds a queue's conversations by the analytics
                # query, which sees a call only once it reached the queue; one
                # still in its IVR (already on the queue's topic) waits for its
                # next change, live, which may come after run 2 was stopped.
                counts["then_not_backfillable_in_ivr"] += 1
            elif not later:
                out.problem(
                    f"LOST {about}: inside the {gap.reason} gap [{gap.start:.3f}, "
                    f"{gap.end:.3f}], but nothing as new about it was delivered after it "
                    "(back-fill did not cover it)"
                )
            else:
                counts["then_backfilled" if any(d.backfilled for d in later) else "then_live"] += 1
            continue
        counts["silent_loss"] += 1
        near = min(
            (g for _, g in books.gaps if topic in g.topics),
            key=lambda g: min(abs(g.start - sent_at), abs(g.end - sent_at)),
            default=None,
        )
        out.problem(
            f"LOST {about} (CorrelationId {correlation_id}), to the mux at "
            f"{[round(t, 3) for t in books.to_mux.get(key, [])]}: not delivered, not "
            "dead-lettered, its state or a newer one not delivered before, in no gap; nearest "
            + (f"gap: {near.reason} [{near.start:.3f}, {near.end:.3f}]" if near else "gap: none")
        )

    # Nothing delivered that the platform did not send to the mux.
    for d in books.delivered:
        if d.correlation_id is not None and (d.topic, d.correlation_id) not in books.to_mux:
            out.problem(f"#{d.sequence} ({d.topic}, {d.correlation_id}) was never sent to the mux")


def reached_its_queue(topic: str, facts: EventFacts) -> bool:
    """Whether the snapshot has an ``acd`` or ``agent`` participant of the topic's queue."""
    queue_id = topic.split(".")[3]  # v2.routing.queues.{id}.conversations
    return facts.conversation is not None and queue_id in facts.conversation.queue_ids


def check_sequences(story: Story, books: Books, out: Outcome) -> int:
    """Gap-free numbering within each run, continued by the second; returns its first number."""
    for n in (1, 2):
        run = books.run(n)
        in_file = [d.sequence for d in run if not d.dead]
        if in_file != sorted(in_file):
            out.problem(f"run {n}: sequences out of order in the file")
        numbers = sorted(d.sequence for d in run)
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            holes = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            twice = [s for s, k in Counter(numbers).items() if k > 1]
            out.problem(
                f"run {n}: #{numbers[0]}..#{numbers[-1]}, holes {holes[:9]}, twice {twice[:9]}"
            )
    first1 = min(d.sequence for d in books.run(1))
    last1 = max(d.sequence for d in books.run(1))
    first2 = min(d.sequence for d in books.run(2))
    out.counts[STREAM]["run1_last"] = last1
    out.counts[STREAM]["run2_first"] = first2
    if first1 != 1:
        out.problem(f"run 1 (fresh state) starts at #{first1}, not #1")
    if story.signal == signal.SIGTERM and first2 != last1 + 1:
        out.problem(
            f"after SIGTERM run 2 starts at #{first2}, not at run 1's last + 1 = {last1 + 1}"
        )
    if story.signal == signal.SIGKILL and not 1 < first2 <= last1 + 1:
        out.problem(
            f"after SIGKILL run 2 starts at #{first2}: it should continue from run 1's last "
            f"checkpoint, after #1 and at most at run 1's last + 1 = {last1 + 1}"
        )
    return first2


def check_restart_gap(ev: Evidence, books: Books, first2: int, out: Outcome) -> GapRecord | None:
    """One restart gap between the runs, from where run 1 stopped acknowledging to run 2's start."""
    restarts = [(line, g) for line, g in books.gaps if g.reason == "restart"]
    if len(restarts) != 1:
        out.problem(f"expected one restart gap, got {[g for _, g in restarts]}")
        return None
    ((line, gap),) = restarts
    story = ev.story
    out.counts[STREAM]["restart_gap_ms"] = round((gap.end - gap.start) * 1000)
    run1, run2 = books.run(1), books.run(2)
    last1_line = max(d.line or 0 for d in run1)
    first2_line = min(d.line for d in run2 if d.line is not None)
    if not last1_line < line < first2_line:
        out.problem(f"the restart gap is on line {line}, not between the runs' events")
    if set(gap.topics) != ev.topics:
        out.problem(f"the restart gap names {sorted(gap.topics)}, not all the stream's topics")
    live1 = [d.received_at for d in run1 if not d.dead and not d.backfilled]
    if story.signal == signal.SIGTERM:
        # A stop settles everything: the gap starts after what run 1 delivered,
        # and no later than the last notification it was sent.
        if gap.start < max(live1):
            out.problem(
                f"after SIGTERM the restart gap starts at {gap.start:.3f}, before run 1's last "
                f"event ({max(live1):.3f}): it would have back-fill repeat acknowledged events"
            )
        # Run 2 cannot have been sent anything before it was spawned.
        sent1 = max(t for ts in books.to_mux.values() for t in ts if t < story.second.spawned_at)
        if gap.start > sent1 + books.margin:
            out.problem(
                f"the restart gap starts at {gap.start:.3f}, after the last notification sent "
                f"to run 1 ({sent1:.3f})"
            )
    else:
        # It starts at the last checkpoint's watermark: before the kill, and
        # no later than any event numbered after that checkpoint.
        if gap.start > story.signalled_at:
            out.problem(f"after SIGKILL the restart gap starts at {gap.start:.3f}, after the kill")
        after_checkpoint = [d.received_at for d in run1 if d.sequence >= first2]
        if after_checkpoint and gap.start > min(after_checkpoint):
            out.problem(
                f"after SIGKILL the restart gap starts at {gap.start:.3f}, after run 1's first "
                f"event numbered after the last checkpoint (#{first2}, {min(after_checkpoint):.3f})"
            )
    if gap.end < story.second.spawned_at:
        out.problem(f"the restart gap ends at {gap.end:.3f}, before run 2 was started")
    # It ends when run 2 had every topic subscribed again, which is before
    # it answered ready (and may be after its first live event: an event
    # proves only its own channel's subscription).
    ready = story.second.ready_at
    if ready is not None and gap.end > ready:
        out.problem(f"the restart gap ends at {gap.end:.3f}, after run 2 was ready ({ready:.3f})")
    return gap


def check_repeats(story: Story, books: Books, first2: int, gap: GapRecord, out: Outcome) -> None:
    """No state delivered twice as new, and no conversation going back to an older version."""
    run1, run2 = books.run(1), books.run(2)
    for n, run in ((1, run1), (2, run2)):
        for (key, digest), k in Counter(d.state for d in run).items():
            if k > 1:
                out.problem(f"run {n} delivered the state {digest.hex()[:12]} of {key} {k} times")
    by_state = {d.state: d for d in run1}
    for d in run2:
        before = by_state.get(d.state)
        if before is None:
            continue
        out.counts[STREAM]["repeated_after_restart"] += 1
        what = (
            f"run 2's #{d.sequence} ({'back-fill' if d.backfilled else d.topic}) repeats the "
            f"state of {d.facts.key} of run 1's #{before.sequence} "
            f"(received {before.received_at:.3f})"
        )
        if story.signal == signal.SIGTERM:
            out.problem(f"after SIGTERM {what}: delivered again as new")
        elif before.sequence < first2 or before.received_at < gap.start:
            out.problem(f"after SIGKILL {what}, which was acknowledged by the last checkpoint")
        elif before.idempotency_key != d.idempotency_key:
            out.problem(f"{what} under another idempotency key, {d.idempotency_key}")
    check_versions(books, out)


def check_versions(books: Books, out: Outcome) -> None:
    """No conversation goes back to an older version in the sink, in the sink's order."""
    newest: dict[str, float] = {}
    for d in sorted((d for d in books.delivered if not d.dead), key=lambda d: d.line or 0):
        version = d.facts.version
        if version is None:
            continue
        if version < newest.get(d.facts.key, version):
            out.problem(f"#{d.sequence} of {d.facts.key} is older than one delivered before it")
        newest[d.facts.key] = max(version, newest.get(d.facts.key, version))


def reconcile(ev: Evidence) -> Outcome:
    out = Outcome()
    for n, run in ((1, ev.story.first), (2, ev.story.second)):
        if any(b"Traceback" in line for line in run.stderr):
            out.problem(f"run {n} logged a traceback: {run.why()}")
    books = read_books(ev, out)
    if books is None:
        return out
    counts = out.counts[STREAM]
    counts["records_run1"] = sum(1 for d in books.run(1) if not d.dead)
    counts["records_run2"] = sum(1 for d in books.run(2) if not d.dead)
    counts["backfilled_run2"] = sum(1 for d in books.run(2) if d.backfilled)
    counts["dead_letters"] = sum(1 for d in books.delivered if d.dead)
    out.notes.append(
        "gaps: "
        + "; ".join(f"{g.reason} [{g.start:.3f}, {g.end:.3f}] on line {n}" for n, g in books.gaps)
    )
    account_for_notifications(ev, books, out)
    first2 = check_sequences(ev.story, books, out)
    gap = check_restart_gap(ev, books, first2, out)
    if gap is not None:
        check_repeats(ev.story, books, first2, gap, out)
    # The story proved something: traffic was lost to the downtime and back-filled.
    if not counts["delivered"]:
        out.problem("nothing in the reconciled window was delivered")
    if not counts["in_restart_gap"]:
        out.problem("no notification was sent during the restart gap: the downtime proved nothing")
    if not counts["backfilled_run2"]:
        out.problem("run 2 back-filled nothing")
    return out


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_a_restart_loses_nothing_and_continues_the_numbering(
    store: str, sig: signal.Signals, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "sqlite":
        state = 'path = "state.db"'
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        state = f'url = "{server.url}"\nprefix = "restart-test:"'
    (tmp_path / "mux.toml").write_text(
        CONFIG.format(dlq=DLQ, state=state, stream=STREAM, sink=SINK)
    )
    settings = org_settings(
        rate=RATE,
        clients=[ClientApp("demo-client", "demo-secret"), ClientApp(*WITNESS_CLIENT)],
    )
    async with Emulator(settings) as emulator, aiohttp.ClientSession() as session:
        # The stream's topics, from the org: the general topic of every queue.
        topics = {f"v2.routing.queues.{q.id}.conversations" for q in emulator.centre.queues}
        witness = Witness(session, emulator.base_url)
        await witness.start(topics)
        try:
            story = await two_runs(emulator, session, tmp_path, sig)
        finally:
            await witness.stop()
        ledger = list(emulator.ledger.entries)
    dlq = tmp_path / DLQ
    evidence = Evidence(
        story=story,
        topics=topics,
        records=sink_records(tmp_path / SINK, whole=True),
        letters=list(read_dead_letters(dlq)) if dlq.exists() else [],
        ledger=ledger,
        witness_channel=witness.channel_id,
        witness_frames=witness.frames,
    )
    outcome = reconcile(evidence)
    print(outcome.summary())
    assert not outcome.problems, outcome.summary()
