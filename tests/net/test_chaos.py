"""Chaos: every emulator fault, reconciled against the ledger and an independent witness.

A Multiplexer (client ``demo-client``) runs four streams over the emulator's
simulated org, on three channels, while a seeded injector throws every fault
the emulator has at its channels. Beside it a *witness* (its own OAuth
client ``witness-client`` and its own channel, subscribed to the same
topics, read with plain aiohttp through ``tests.emulator.genesys``, sharing
no code with the library) is never faulted: what it receives is what the
platform meant for the streams.

At the end every notification the witness was sent on a stream's topics is
reconciled against that stream:

* it reached the stream (the mux read it off one of its channels and offered
  it to the stream) and the stream says what became of it: accepted (then
  delivered to the consumer or dead-lettered), or counted as a duplicate,
  stale or filtered;
* or it did not reach the stream, and when it was sent lies inside a
  :class:`Gap` reported to that stream for its topic, within margins
  measured in the same run (see :class:`Margins`).

Anything else is a silent loss. On top of that: each stream's counters add
up and agree with what it was offered, every accepted notification was
handed over exactly once, sequences are ``1..n`` with no holes, no state is
delivered twice, and no snapshot older than one already delivered about the
same conversation (or user, or topic) follows it. The summary, printed and
in the assertion message, counts each category per stream.

**The key.** The emulator builds one envelope per publication and topic
with the publication's ``CorrelationId`` and hands the same bytes to every
subscribed channel (``Emulator.publish``), so ``(topic, CorrelationId)``
names one notification on every channel, the witness's and the mux's alike.
(The ``reserialise`` fault writes a notification in other bytes, with the
same ``CorrelationId``.) Only the ``duplicate`` fault with ``reserialise``
writes a copy with a new ``CorrelationId``; the ledger flags those copies (``duplicate``), and they
are counted as copies, not as notifications of their own.

**The taps.** What the mux did is observed through two public methods,
patched for the test: :meth:`ChannelPool.frames` (every notification read
off a socket, with its channel) and :meth:`Stream.offer` (what each stream
decided about each notification, read off its counters).

**Defects the chaos run found** have tests of their own, each fixed since:
:func:`test_notifications_behind_a_404_are_read_or_in_the_gap`,
:func:`test_live_is_false_while_a_channel_has_lost_its_subscriptions` and
:func:`test_a_stop_while_a_rotation_waits_reports_the_unsubscribed_window`.
The chaos run still keeps the first two triggers out (the injector's guards
in :class:`Chaos`, and a wait for recovery before the stop that asks the
platform, not ``mux.live``), so that its verdict does not depend on the dice.

Environment: ``GENESYS_MUX_CHAOS_S`` is the soak variant's length (300 s;
the short variant runs ``SHORT_S`` in the normal suite),
``GENESYS_MUX_CHAOS_SEED`` the injector's seed, and
``GENESYS_MUX_CHAOS_TRACE`` a path for a JSON trace of the run (faults,
control events, API requests, gaps, ledger, reads) to study a failure.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import inspect
import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from genesys_mux import Gap, Multiplexer, StreamEvent
from genesys_mux.core.events import fields_of
from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import Stream
from genesys_mux.emulator import ClientApp, Emulator
from genesys_mux.net.connection import ChannelPool, InboundNotification
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue
from tests.emulator.genesys import GenesysClient, is_notification
from tests.net.test_multiplexer import FAST_POOL, org_settings
from tests.waiting import eventually

#: The normal suite's run: at least this long, and one whole deck of faults
#: (about 15 s), every fault dealt once; the soak deals them for minutes.
SHORT_S = 10.0
SOAK_S = float(os.environ.get("GENESYS_MUX_CHAOS_S", "300"))
SEED = int(os.environ.get("GENESYS_MUX_CHAOS_SEED", "20240611"))

MUX_CLIENT = ("demo-client", "demo-secret")
WITNESS_CLIENT = ("witness-client", "witness-secret")
#: Four topics per channel: the twelve topics of the streams need three
#: channels, so faults hit one slot while the others carry on, and
#: rotations take turns for the spare channel.
POOL = dataclasses.replace(FAST_POOL, topics_per_channel=4)
#: Large enough that nothing overflows: overflow is tested elsewhere, and
#: here every dead letter would have to be a stop.
BUFFER = 1_000_000
GAP_REASONS = {
    "reconnect",
    "no_longer_subscribed",
    "token_revoked",
    "socket_closing",
    "channel_expiring",
    "token_expiring",
    "stopped",
    "subscriptions_replaced",
}

Key = tuple[str, str]  # (topic, CorrelationId)


# -- the emulator's control surface ------------------------------------------


class Control:
    """``/__emulator__`` over one session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = f"{base_url}/__emulator__"

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.base}/{path}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(f"{self.base}/{path}", json=body) as resp:
            if resp.status in (200, 201):
                return resp.status, await resp.json()
            return resp.status, await resp.text()


class Ledger:
    """The emulator's ledger, read incrementally."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.entries: list[dict[str, Any]] = []
        #: Channel id -> (topic, correlation id) -> frames sent.
        self.sent: dict[str, Counter[Key]] = defaultdict(Counter)
        self._next = 0

    async def read(self) -> list[dict[str, Any]]:
        data = await self.control.get(f"ledger?since={self._next}")
        for e in data["entries"]:
            self.sent[e["channel_id"]][(e["topic"], e["correlation_id"])] += 1
        self.entries.extend(data["entries"])
        self._next = data["next_seq"] - 1
        return self.entries


# -- taps on the library's public methods -------------------------------------


@dataclass(slots=True)
class Offer:
    """What one stream decided about one notification."""

    topic: str
    correlation_id: str | None
    outcome: str  # accepted, filtered, duplicate, stale


@dataclass
class Tap:
    """What the mux read off its sockets, and what each stream made of it."""

    #: (channel id, topic, correlation id, received_at) for every notification read.
    reads: list[tuple[str, str, str | None, float]] = field(default_factory=list)
    #: How many times each (channel id, topic, correlation id) was read.
    read: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    offers: dict[str, list[Offer]] = field(default_factory=lambda: defaultdict(list))


def install_taps(monkeypatch: pytest.MonkeyPatch) -> Tap:
    tap = Tap()
    original_next_frame = ChannelPool.next_frame_nowait

    # Every notification the mux reads passes here: frames() takes each
    # through it, and the dispatcher drains what is queued with it.
    def next_frame_nowait(self: ChannelPool) -> InboundNotification | None:
        note = original_next_frame(self)
        if note is not None:
            tap.reads.append((note.channel_id, note.topic, note.correlation_id, note.received_at))
            tap.read[(note.channel_id, note.topic, note.correlation_id)] += 1
        return note

    original_offer = Stream.offer
    signature = inspect.signature(original_offer)

    def offer(self: Stream, *args: Any, **kwargs: Any) -> StreamEvent | None:
        arguments = signature.bind(self, *args, **kwargs).arguments
        c = self.counters
        before = (c.filtered, c.duplicates, c.stale)
        event = original_offer(self, *args, **kwargs)
        after = (c.filtered, c.duplicates, c.stale)
        outcome = "accepted"
        for name, was, now in zip(("filtered", "duplicate", "stale"), before, after, strict=True):
            if now != was:
                outcome = name
        tap.offers[self.id].append(Offer(arguments["topic"], arguments["correlation_id"], outcome))
        return event

    monkeypatch.setattr(ChannelPool, "next_frame_nowait", next_frame_nowait)
    monkeypatch.setattr(Stream, "offer", offer)
    return tap


# -- the witness ----------------------------------------------------------------


class Witness:
    """An independent, never-faulted subscriber to the same topics."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.client = GenesysClient(session, base_url)
        self.channel_id = ""
        #: (topic, CorrelationId) -> Unix time read.
        self.received: dict[Key, float] = {}
        #: (topic, CorrelationId) -> the notification frame as read (the first copy).
        self.frames: dict[Key, str] = {}
        self.repeats = 0
        #: Anything a healthy, unfaulted socket should never see.
        self.trouble: list[str] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, topics: set[str]) -> None:
        # Registered here too, for runs whose emulator settings lack it.
        client_id, secret = WITNESS_CLIENT
        await self.client.control("clients", {"client_id": client_id, "client_secret": secret})
        await self.client.login(*WITNESS_CLIENT)
        channel = await self.client.create_channel()
        self.channel_id = channel["id"]
        status, body, _ = await self.client.subscribe(self.channel_id, sorted(topics))
        assert status == 200, body
        assert {e["id"] for e in body["entities"]} == topics, body
        self._ws = await self.client.connect(channel["connectUri"])
        self._task = asyncio.create_task(self._read(self._ws), name="witness")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if is_notification(frame):
                key = (frame["topicName"], frame["metadata"]["CorrelationId"])
                if key in self.received:
                    self.repeats += 1
                else:
                    self.received[key] = time.time()
                    self.frames[key] = message.data
            elif not (isinstance(frame, dict) and frame.get("topicName") == "channel.metadata"):
                self.trouble.append(str(message.data)[:200])
        self.trouble.append(f"the witness socket closed ({ws.close_code})")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()


# -- the fault injector ---------------------------------------------------------


#: Every step of the injector; each runs once per shuffled deck.
STEPS = (
    "drop_socket",
    "close_socket",
    "socket_closing",
    "expire_channel",
    "evict_channel",
    "revoke_token",
    "no_longer_subscribed",
    "no_longer_subscribed_while_throttled",
    "half_open",
    "half_open_then_reset",
    "garbage_frame",
    "duplicate",
    "duplicate_reserialised",
    "reserialise",
    "reorder",
    "delay",
    "http_5xx_on_subscriptions",
)

#: Steps that end the channel they hit (``revoke_token``: every channel).
ENDS = frozenset(STEPS) - {
    "garbage_frame",
    "duplicate",
    "duplicate_reserialised",
    "reserialise",
    "reorder",
    "delay",
}
#: Steps that end a channel with ``{"result":"404"}``.
KILLS = frozenset({"expire_channel", "evict_channel", "revoke_token"})


@dataclass
class Window:
    """A frame fault on one channel, from ``start`` to ``end`` (Unix time)."""

    kind: str
    channel: str
    start: float
    end: float = float("inf")
    delay_s: float = 0.0
    #: A reorder fault's depth: how many later frames release a held one.
    depth: int = 0

    def holds(self, channel: str | None, t: float) -> bool:
        """Whether a notification sent at ``t`` may have been held back by it."""
        return (channel is None or channel == self.channel) and (
            self.start <= t <= self.end + self.delay_s
        )


@dataclass
class Guard:
    """Steps that must not hit a channel for now, and until when."""

    blocked: frozenset[str]
    #: Loop time the guard ends, or None while it waits for the ledger.
    until: float | None
    #: A reorder guard ends once this many frames went out after ``since``.
    frames: int = 0
    since: int = 0
    #: The reorder window that ends with the guard.
    window: Window | None = None


@dataclass
class Chaos:
    """Seeded faults at the mux's channels (never at the witness's).

    Two combinations are kept apart, each for a stated reason:

    * no ``{"result":"404"}`` (KILLS) on a channel while a ``delay`` holds
      notifications back on it: the mux then discards notifications the
      platform still writes, a known defect with a test of its own
      (:func:`test_notifications_behind_a_404_are_read_or_in_the_gap`);
    * nothing that ends a channel while ``reorder`` holds a frame back on it,
      until the frames after it have released it: the emulator's reorder
      holds a frame until ``depth`` later ones overtook it, for ever if none
      come, and drops it when the socket ends, even in a graceful drain
      after a rotation. That is a lost notification with no gap that no
      client could read or notice (the platform never wrote it), not a
      delivery the mux missed.
    """

    control: Control
    rng: random.Random
    #: The channels the mux serves its slots with now (None: every channel of
    #: its client). The emulator still counts a socket as connected after a
    #: half-open link was given up for a new channel: faults aimed there
    #: would hit nothing the mux reads.
    serving: Callable[[], set[str]] | None = None
    #: (step, Unix time, what the emulator says it applied to).
    log: list[tuple[str, float, list[str]]] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    #: Frame faults to turn off: (loop time, window, fault body).
    _offs: list[tuple[float, Window, dict[str, Any]]] = field(default_factory=list)
    _guards: dict[str, list[Guard]] = field(default_factory=lambda: defaultdict(list))

    async def mux_channels(self) -> list[str]:
        channels = await self.control.get("channels")
        serving = self.serving() if self.serving is not None else None
        return sorted(
            c["id"]
            for c in channels
            if c["client_id"] == MUX_CLIENT[0]
            and c["connected"]
            and (serving is None or c["id"] in serving)
        )

    async def fault(self, name: str, **params: Any) -> list[str]:
        status, body = await self.control.post("faults", {"fault": name, **params})
        if status == 400 and "no channel" in str(body):
            return []  # the channel died between choosing it and aiming at it
        assert status == 200, body
        applied: list[str] = body["applied"]
        return applied

    async def run(self, duration_s: float) -> None:
        """Inject faults for ``duration_s``, and at least one whole deck."""
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s
        deck: list[str] = []
        dealt = 0
        while loop.time() < end or dealt < len(STEPS):
            if not deck:
                deck = list(STEPS)
                self.rng.shuffle(deck)
            step = deck.pop()
            await self._turn_off_due()
            # Aim at a live channel of the mux; after a heavy fault all may
            # still be coming back, and a fault needs something to hit.
            targets: list[str] = []

            async def some_channel(found: list[str] = targets) -> bool:
                found[:] = await self.mux_channels()
                return bool(found)

            await eventually(some_channel, within=60)
            await self._lift_guards(targets)
            guarded = {
                c for c, guards in self._guards.items() if any(step in g.blocked for g in guards)
            }
            targets = [c for c in targets if c not in guarded]
            if not targets or (step == "revoke_token" and guarded):
                deck.insert(0, step)  # dealt again later in this deck
                await asyncio.sleep(0.2)
                continue
            channel = self.rng.choice(targets)
            applied = await self._step(step, channel)
            self.log.append((step, time.time(), applied))
            if applied:
                dealt += 1
            else:
                deck.insert(0, step)  # its channel died first: again, later
            # The cadence of the load: not a wait for anything.
            await asyncio.sleep(self.rng.uniform(0.3, 1.2))
        await self.calm()

    async def _step(self, step: str, channel: str) -> list[str]:
        rng = self.rng
        if step in ("drop_socket", "expire_channel", "evict_channel", "garbage_frame"):
            return await self.fault(step, channel_id=channel)
        if step == "no_longer_subscribed":
            return await self.fault(step, channel_id=channel)
        if step == "close_socket":  # a clean close with no warning
            return await self.fault(step, channel_id=channel, code=rng.choice((1000, 1001)))
        if step == "socket_closing":
            return await self.fault(step, channel_id=channel, delay_s=rng.uniform(0.1, 1.5))
        if step == "revoke_token":  # warned, or not (the platform need not)
            return await self.fault(step, client_id=MUX_CLIENT[0], warn=rng.random() < 0.5)
        if step == "no_longer_subscribed_while_throttled":
            await self.fault(
                "http_429",
                path="/notifications/channels",
                count=rng.randint(1, 3),
                retry_after_s=1,
            )
            return await self.fault("no_longer_subscribed", channel_id=channel)
        if step == "half_open":
            return await self.fault("pause_heartbeats", channel_id=channel)
        if step == "half_open_then_reset":
            applied = await self.fault("pause_heartbeats", channel_id=channel)
            # Reset before the watchdog (heartbeat_timeout_s) would notice.
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            return applied and await self.fault("drop_socket", channel_id=channel)
        if step == "http_5xx_on_subscriptions":
            await self.fault("http_5xx", path="/subscriptions", count=rng.randint(1, 3))
            # A reconnect subscribes again, and meets the failures.
            return await self.fault("drop_socket", channel_id=channel)
        off_at = asyncio.get_running_loop().time() + rng.uniform(1.0, 2.5)
        window = Window(step, channel, time.time())
        if step in ("duplicate", "duplicate_reserialised"):
            applied = await self.fault(
                "duplicate",
                channel_id=channel,
                probability=0.3,
                reserialise=step == "duplicate_reserialised",
            )
            off = {"fault": "duplicate", "probability": 0}
        elif step == "reserialise":  # every frame in other bytes: no fast split
            applied = await self.fault("reserialise", channel_id=channel, probability=1.0)
            off = {"fault": "reserialise", "probability": 0}
        elif step == "reorder":
            window.depth = rng.randint(1, 3)
            applied = await self.fault(
                "reorder", channel_id=channel, probability=0.3, depth=window.depth
            )
            off = {"fault": "reorder", "probability": 0}
            guard = Guard(ENDS, None, frames=window.depth + 1, window=window)
            self._guards[channel].append(guard)
        else:
            assert step == "delay", step
            window.delay_s = rng.uniform(0.1, 0.5)
            applied = await self.fault("delay", channel_id=channel, delay_s=window.delay_s)
            off = {"fault": "delay", "delay_s": 0}
            # Until the last notification held back has gone out.
            self._guards[channel].append(Guard(KILLS, off_at + window.delay_s + 0.2))
        self.windows.append(window)
        self._offs.append((off_at, window, off))
        return applied

    async def _turn_off_due(self, everything: bool = False) -> None:
        now = asyncio.get_running_loop().time()
        due = [o for o in self._offs if everything or o[0] <= now]
        self._offs = [o for o in self._offs if o not in due]
        for _, window, body in due:
            # Frame faults are keyed by channel id: no error if it has died.
            status, answer = await self.control.post(
                "faults", {**body, "channel_id": window.channel}
            )
            assert status == 200, answer
            if window.kind != "reorder":
                window.end = time.time()
            else:  # it ends once the frames held back have gone out
                mark = (await self.control.get("ledger?since=999999999999"))["next_seq"] - 1
                for guard in self._guards[window.channel]:
                    if guard.until is None and not guard.since:
                        guard.since = mark

    async def _lift_guards(self, connected: list[str]) -> None:
        now = asyncio.get_running_loop().time()
        for channel, guards in self._guards.items():
            for guard in list(guards):
                if channel not in connected:
                    lifted = True  # nothing more can reach it
                elif guard.until is not None:
                    lifted = guard.until <= now
                elif guard.since:
                    # A frame held back goes out behind `depth` later ones
                    # (copies of the duplicate fault do not count).
                    sent = await self.control.get(
                        f"ledger?channel_id={channel}&since={guard.since}"
                    )
                    lifted = sum(not e["duplicate"] for e in sent["entries"]) >= guard.frames
                else:
                    lifted = False
                if lifted:
                    guards.remove(guard)
                    if guard.window is not None:
                        guard.window.end = time.time()

    async def calm(self) -> None:
        """Turn every frame fault off."""
        await self._turn_off_due(everything=True)


# -- reconciliation --------------------------------------------------------------


@dataclass
class Outcome:
    """The verdict: counts per stream and category, and every problem found."""

    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(text)
        elif len(self.problems) == 40:
            self.problems.append("... (more problems not shown)")

    def summary(self) -> str:
        lines = [*self.notes]
        for stream_id, counts in sorted(self.counts.items()):
            lines.append(
                f"{stream_id}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            )
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


@dataclass
class Run:
    """Everything the reconciliation reads, gathered at the end of a run."""

    topics: dict[str, set[str]]
    ledger: list[dict[str, Any]]
    witness: Witness
    tap: Tap
    events: list[StreamEvent]
    gaps: list[Gap]
    dead_letters: list[Any]
    stats: dict[str, Any]
    #: The frame faults' windows (delay, reorder, duplicate).
    windows: list[Window]
    #: Publications from here on are reconciled: the mux and the witness
    #: were both subscribed and connected by then.
    since: float


@dataclass(frozen=True)
class Margins:
    """How far outside a gap's bounds a lost notification's send time may lie.

    A gap starts at the last frame the mux *read* before the bad news. A
    frame lost in a reset was written after every frame read on that socket
    (TCP keeps order) but possibly before the last of them was read, so its
    send time may precede the gap by the mux's read latency: the largest
    ledger-to-read delay of any notification in the run.

    A notification never sent to the mux's channel has only the witness's
    send time, which stands in for the mux's. Outside the windows of the
    ``delay`` and ``reorder`` faults the two sends of one notification
    differ only by the two writers' lag: ``late`` is the largest lead of the
    witness's send in the run, ``early`` the largest lag. A delay window
    adds its delay (see :func:`reconcile`): notifications it holds back when
    the socket is reset were published before the last frame read, and no
    client can read or see them. A frame a ``reorder`` fault held back is
    recognised by the ledger instead (``held_back`` in :func:`reconcile`).

    All three are measured in the same run on the same machine, not
    constants, and the summary prints them.
    """

    read_latency: float
    late: float
    early: float


def margins(run: Run, mux_sent: dict[tuple[str, str, str], float]) -> Margins:
    # Each read against the last send of its key on its channel before it: a
    # key may go out twice (a copy, or a copy that drew an earlier key).
    sent_at: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for e in run.ledger:
        sent_at[(e["channel_id"], e["topic"], e["correlation_id"])].append(e["time"])
    read_latency = 0.0
    for channel, topic, correlation_id, received_at in run.tap.reads:
        times = sent_at.get((channel, topic, correlation_id or ""), [])
        before = bisect.bisect_right(times, received_at + 0.05)  # read, then recorded
        if before:
            read_latency = max(read_latency, received_at - times[before - 1])
    witness_sent = {
        (e["topic"], e["correlation_id"]): e["time"]
        for e in run.ledger
        if e["channel_id"] == run.witness.channel_id
    }
    late = early = 0.0
    for (channel, topic, correlation_id), sent in mux_sent.items():
        w = witness_sent.get((topic, correlation_id))
        if w is not None and not any(
            x.holds(channel, w) for x in run.windows if x.kind in ("delay", "reorder")
        ):
            late = max(late, sent - w)
            early = max(early, w - sent)
    return Margins(read_latency, late, early)


def reconcile(run: Run) -> Outcome:
    out = Outcome()
    witness_channel = run.witness.channel_id
    witness_entries = [e for e in run.ledger if e["channel_id"] == witness_channel]
    mux_entries = [e for e in run.ledger if e["channel_id"] != witness_channel]
    witness_ledger: dict[Key, float] = {}
    for e in witness_entries:
        key = (e["topic"], e["correlation_id"])
        if e["duplicate"] or key in witness_ledger:
            out.problem(f"witness: a fault reached the witness's channel: {e}")
        witness_ledger[key] = e["time"]
    # The witness is the reference: it must have read all it was sent.
    missing_at_witness = set(witness_ledger) - set(run.witness.received)
    if missing_at_witness or run.witness.repeats or run.witness.trouble:
        out.problem(
            f"witness: {len(missing_at_witness)} sent but not read, {run.witness.repeats} "
            f"repeats, trouble {run.witness.trouble[:3]}"
        )

    # Originals only: (channel, topic, correlation id) -> first send time on
    # a mux channel, and (topic, correlation id) -> every send time on any.
    # Copies of the duplicate fault are set apart: a re-serialised copy's
    # "new" CorrelationId comes from the emulator's fault RNG, seeded like
    # the org's, and may be one the org gave another notification.
    mux_sent: dict[tuple[str, str, str], float] = {}
    sends: dict[Key, list[float]] = defaultdict(list)
    copies: set[Key] = set()
    for e in mux_entries:
        key = (e["topic"], e["correlation_id"])
        if e["duplicate"]:
            copies.add(key)
            continue
        mux_sent.setdefault((e["channel_id"], *key), e["time"])
        sends[key].append(e["time"])
    m = margins(run, mux_sent)
    out.notes.append(
        f"ledger: {len(witness_entries)} to the witness, {len(mux_entries)} to the mux "
        f"({len(copies)} copies); mux read {len(run.tap.reads)}; gaps {len(run.gaps)}; "
        f"margins: read latency {m.read_latency * 1000:.0f} ms, witness ahead by "
        f"{m.late * 1000:.0f} ms, behind by {m.early * 1000:.0f} ms"
    )
    read_keys = Counter((topic, corr or "") for _, topic, corr, _ in run.tap.reads)

    events_by_stream: dict[str, list[StreamEvent]] = defaultdict(list)
    for event in run.events:
        events_by_stream[event.stream_id].append(event)
    letters_by_stream: dict[str, list[Any]] = defaultdict(list)
    for letter in run.dead_letters:
        letters_by_stream[letter.stream_id].append(letter)
    gaps_by_stream: dict[str, list[Gap]] = defaultdict(list)
    for gap in run.gaps:
        gaps_by_stream[gap.stream_id].append(gap)

    def delay_at(t: float) -> float:
        return max((x.delay_s for x in run.windows if x.holds(None, t)), default=0.0)

    # Non-duplicate send times per mux channel, and the topics each carried.
    originals: dict[str, list[float]] = defaultdict(list)
    carried: dict[str, set[str]] = defaultdict(set)
    for e in mux_entries:
        carried[e["channel_id"]].add(e["topic"])
        if not e["duplicate"]:
            originals[e["channel_id"]].append(e["time"])

    def held_back(topic: str, t: float, gaps: list[Gap]) -> bool:
        """Whether a reorder fault held it back on a channel that was then lost.

        The emulator releases a held frame behind the ``depth``-th later one;
        a frame never sent although fewer than ``depth`` later ones went out
        on its channel before a gap on that channel began was still held
        when the channel's socket ended (by the watchdog's verdict on a
        socket that was only slow: the injector keeps its own faults off
        such a channel). Nothing could read it; the gap is that socket's.
        """
        for x in run.windows:
            if x.kind != "reorder" or not x.holds(None, t) or topic not in carried[x.channel]:
                continue
            for g in gaps:
                if g.channel_id == x.channel and topic in g.topics and g.start >= t:
                    later = sum(
                        t < sent <= g.start + m.read_latency for sent in originals[x.channel]
                    )
                    if later < x.depth:
                        return True
        return False

    widest = 0.0
    for stream_id, topics in sorted(run.topics.items()):
        counts = out.counts[stream_id]
        stats = run.stats[stream_id]
        out.notes.append(
            f"{stream_id} counters: received {stats.received}, delivered {stats.delivered}, "
            f"duplicates {stats.duplicates}, stale {stats.stale}, filtered {stats.filtered}, "
            f"dead-lettered {stats.dead_lettered}, overflowed {stats.overflowed}"
        )
        offers = run.tap.offers.get(stream_id, [])
        gaps = gaps_by_stream[stream_id]
        for gap in gaps:
            if not gap.topics <= topics or gap.start > gap.end or gap.reason not in GAP_REASONS:
                out.problem(f"{stream_id}: malformed gap {gap}")
        counts["gaps"] = len(gaps)

        # 1. The counters add up, and agree with what was offered.
        accepted = sum(1 for o in offers if o.outcome == "accepted")
        if stats.received != len(offers) or stats.received != (
            stats.delivered + stats.duplicates + stats.stale + stats.filtered + stats.dead_lettered
        ):
            out.problem(f"{stream_id}: counters do not add up: {stats} ({len(offers)} offered)")
        if stats.delivered + stats.dead_lettered != accepted or stats.overflowed:
            out.problem(f"{stream_id}: {accepted} accepted but {stats}")

        # 2. Every accepted event reached the consumer or the DLQ, once, in sequence.
        events = events_by_stream[stream_id]
        letters = letters_by_stream[stream_id]
        handed = Counter((e.topic, e.correlation_id) for e in events) + Counter(
            (d.topic, d.correlation_id) for d in letters
        )
        wanted = Counter((o.topic, o.correlation_id) for o in offers if o.outcome == "accepted")
        if handed != wanted or len(events) != stats.delivered:
            out.problem(
                f"{stream_id}: accepted {sum(wanted.values())}, handed over "
                f"{sum(handed.values())} ({len(events)} delivered, {len(letters)} dead letters); "
                f"differ on {list((wanted - handed) + (handed - wanted))[:3]}"
            )
        sequences = sorted([e.sequence for e in events] + [d.sequence for d in letters])
        if sequences != list(range(1, accepted + 1)):
            holes = sorted(set(range(1, accepted + 1)) - set(sequences))[:5]
            out.problem(f"{stream_id}: sequences are not 1..{accepted}: holes {holes}")
        if [e.sequence for e in events] != sorted(e.sequence for e in events):
            out.problem(f"{stream_id}: events were handed over out of sequence")
        counts["dead_lettered"] = len(letters)

        # 3. No state twice, no older snapshot after a newer one.
        in_order = sorted(
            [(e.sequence, e.topic, e.raw) for e in events]
            + [(d.sequence, d.topic, d.raw) for d in letters]
        )
        states: Counter[tuple[str, bytes]] = Counter()
        newest: dict[str, float] = {}
        for sequence, topic, raw in in_order:
            facts = event_facts(topic, raw)
            states[(facts.key, facts.hash)] += 1
            if states[(facts.key, facts.hash)] == 2:
                out.problem(f"{stream_id}: state of {facts.key} delivered twice (#{sequence})")
            if facts.version is not None:
                if facts.version < newest.get(facts.key, float("-inf")):
                    out.problem(
                        f"{stream_id}: #{sequence} of {facts.key} is older than one delivered "
                        f"before it ({facts.version} < {newest[facts.key]})"
                    )
                newest[facts.key] = max(facts.version, newest.get(facts.key, facts.version))
        repeated = [k for k, n in wanted.items() if n > 1]
        if repeated:
            out.problem(f"{stream_id}: notifications accepted twice: {repeated[:3]}")

        # 4. Every notification the witness got: accounted for, or in a gap.
        first_outcome: dict[Key, str] = {}
        for o in offers:
            first_outcome.setdefault((o.topic, o.correlation_id or ""), o.outcome)
        for key, witness_time in witness_ledger.items():
            topic = key[0]
            if topic not in topics or witness_time < run.since:
                continue
            outcome = first_outcome.get(key)
            if outcome is not None and key in sends:
                counts[outcome] += 1
                continue
            if read_keys[key] and key not in copies:
                out.problem(f"{stream_id}: read off a socket but never offered: {key}")
                continue
            sent = sends.get(key, [])
            if sent:
                # Sent to the mux and never read: lost on the wire, which
                # only a reset does, after the last frame read.
                kind = "gap_lost_in_flight"
                windows = [(t, m.read_latency, 0.0) for t in sent]
            else:
                # Never sent to the mux: no socket, or no subscription, or
                # held back by a delay (and then reset: nothing can read it).
                kind = "gap_never_sent"
                before = m.read_latency + m.late + delay_at(witness_time)
                windows = [(witness_time, before, m.early)]
            outside = min(
                (
                    max(g.start - t, t - g.end, 0.0)
                    for g in gaps
                    if topic in g.topics
                    for t, before, after in windows
                    if g.start - before <= t <= g.end + after
                ),
                default=None,
            )
            if outside is not None:
                counts[kind] += 1
                if outside > 0:
                    counts["gap_within_margin"] += 1
                    widest = max(widest, outside)
                continue
            if not sent and held_back(topic, witness_time, gaps):
                counts["gap_held_back"] += 1
                continue
            counts["silent_loss"] += 1
            near = min(
                (g for g in gaps if topic in g.topics),
                key=lambda g: min(abs(g.start - witness_time), abs(g.end - witness_time)),
                default=None,
            )
            out.problem(
                f"{stream_id}: silent loss of {key} sent to the witness at {witness_time:.3f}, "
                f"to the mux at {[round(t, 3) for t in sent]}; nearest gap: "
                + (
                    f"{near.reason} [{near.start:.3f}, {near.end:.3f}] on {near.channel_id}"
                    if near
                    else "none"
                )
            )
        # Notifications the stream got that the witness did not: copies only.
        for o in offers:
            key = (o.topic, o.correlation_id or "")
            if key in witness_ledger and key in sends:
                continue
            if key in copies:
                counts[f"copy_{o.outcome}"] += 1
            elif key not in sends:
                out.problem(f"{stream_id}: offered {key}, which the platform never sent")
            elif min(sends[key]) >= run.since:
                out.problem(f"{stream_id}: offered {key}, which the witness never got")
    out.notes.append(f"widest margin used beyond a gap's bounds: {widest * 1000:.0f} ms")
    return out


# -- the run ---------------------------------------------------------------------


def write_trace(
    path: str,
    run: Run,
    outcome: Outcome,
    faults: list[tuple[str, float, list[str]]],
    control_events: list[Any],
    requests: list[Any],
) -> None:
    """Everything needed to replay a failed reconciliation's timeline, as JSON."""
    with open(path, "w") as fh:
        json.dump(
            {
                "problems": outcome.problems,
                "faults": faults,
                "control_events": control_events,
                "requests": requests,
                "gaps": [
                    [g.stream_id, g.start, g.end, g.channel_id, g.reason, sorted(g.topics)]
                    for g in run.gaps
                ],
                "topics": {k: sorted(v) for k, v in run.topics.items()},
                "windows": [dataclasses.asdict(w) for w in run.windows],
                "ledger": run.ledger,
                "reads": run.tap.reads,
            },
            fh,
        )


async def chaos_run(monkeypatch: pytest.MonkeyPatch, duration_s: float, seed: int) -> None:
    tap = install_taps(monkeypatch)
    settings = org_settings(
        rate=15.0,
        clients=[ClientApp(*MUX_CLIENT), ClientApp(*WITNESS_CLIENT)],
        ledger_size=5_000_000,
    )
    dlq = MemoryDeadLetterQueue(limit=1_000_000)
    async with Emulator(settings) as emulator, aiohttp.ClientSession() as session:
        control = Control(session, emulator.base_url)
        org = await control.get("org")
        queues = sorted(q["id"] for q in org["queues"])
        agent = next(u["id"] for u in org["users"] if u["queueIds"])
        q = "v2.routing.queues.{}.conversations"
        topics = {
            "everything": {q.format(i) for i in queues},
            "voice": {q.format(i) + ".calls" for i in queues},
            "chat-active": {q.format(i) + ".chats" for i in queues},
            "agent": {
                f"v2.users.{agent}.conversations",
                f"v2.users.{agent}.presence",
                f"v2.users.{agent}.routingStatus",
            },
        }
        configs: list[dict[str, Any]] = [
            {"id": "everything", "filter": {}, "priority": 3},
            {"id": "voice", "filter": {"channelType": "voice"}, "priority": 1},
            {"id": "chat-active", "filter": {"channelType": "chat", "state": "active"}},
            {
                "id": "agent",
                "filter": {"userId": agent},
                "topics": [f"v2.users.{agent}.presence", f"v2.users.{agent}.routingStatus"],
                "priority": 2,
            },
        ]
        witness = Witness(session, emulator.base_url)
        await witness.start(set().union(*topics.values()))
        mux = Multiplexer(
            client_id=MUX_CLIENT[0],
            client_secret=MUX_CLIENT[1],
            base_url=emulator.base_url,
            pool_settings=POOL,
            buffer_threshold=BUFFER,
            dlq=dlq,
        )
        items: list[StreamEvent | Gap] = []

        async def consume() -> None:
            async for item in mux.events():
                items.append(item)

        def serving() -> set[str]:
            pool = mux.pool
            return set() if pool is None else {c for c in pool.channel_ids().values() if c}

        chaos = Chaos(control, random.Random(seed), serving)
        control_events: list[Any] = []
        requests_log: list[Any] = []
        consumer: asyncio.Task[None] | None = None
        try:
            mux.on_control.append(
                lambda e: control_events.append([time.time(), e.kind, repr(fields_of(e))])
            )
            await mux.start()
            for config in configs:
                assert await mux.add_stream(config) == []
            consumer = asyncio.create_task(consume(), name="chaos-consumer")
            for stream_id, stream_stats in mux.stats()["streams"].items():
                assert stream_stats.topics == len(topics[stream_id]), stream_id
            await eventually(lambda: mux.live)
            since = time.time()

            await chaos.run(duration_s)

            # Calm: recovery, then traffic on every channel of the mux (so a
            # frame still held back by a reorder fault goes out), then stop it.
            # Recovery is read off the platform too: mux.live is also true
            # while a channel that lost its subscriptions waits for its turn
            # to rotate (test_live_is_false_while_a_channel_has_lost_its_subscriptions).
            last: list[Any] = []

            async def recovered() -> bool:
                # Every slot's current channel is connected with all its topics.
                assert mux.pool is not None
                channels = {c["id"]: c for c in await control.get("channels")}
                slots = mux.pool.stats()
                last[:] = [
                    (i, s.state, s.topics, channels.get(mux.pool.channel_ids()[i] or ""))
                    for i, s in slots.items()
                ]
                return mux.live and all(
                    c is not None and c["connected"] and c["topic_count"] == n
                    for _, _, n, c in last
                )

            try:
                await eventually(recovered, within=60)
            except AssertionError:
                raise AssertionError(f"the mux did not recover: {last}") from None
            calm_from = len(tap.reads)
            await eventually(lambda: len(tap.reads) >= calm_from + 150, within=30)
            channels_before = mux.stats()["channels"]
            assert (await control.post("traffic", {"running": False}))[0] == 200

            ledger = Ledger(control)

            async def settled() -> bool:
                # The witness read all it was sent, and the mux all that its
                # current channels were sent (what dead ones lost is for the gaps).
                assert mux.pool is not None
                await ledger.read()
                if any(k not in witness.received for k in ledger.sent[witness.channel_id]):
                    return False
                return all(
                    tap.read[(channel, topic, r)] >= n
                    for channel in mux.pool.channel_ids().values()
                    if channel is not None
                    for (topic, r), n in ledger.sent[channel].items()
                )

            await eventually(settled, within=30)
            await mux.stop(drain=True, timeout_s=10)
            await asyncio.wait_for(consumer, 15)
            entries = await ledger.read()
            requests_log = (await control.get("requests"))["requests"]
        finally:
            if consumer is not None:
                consumer.cancel()
            await mux.stop(drain=False)
            await witness.stop()

    run = Run(
        topics=topics,
        ledger=entries,
        witness=witness,
        tap=tap,
        events=[i for i in items if isinstance(i, StreamEvent)],
        gaps=[i for i in items if isinstance(i, Gap)],
        dead_letters=list(dlq.letters),
        stats=mux.stats()["streams"],
        windows=chaos.windows,
        since=since,
    )
    outcome = reconcile(run)
    applied = Counter(step for step, _, hit in chaos.log if hit)
    outcome.notes.insert(
        0,
        f"seed {seed}, {duration_s:g} s, {len(chaos.log)} faults: "
        + ", ".join(f"{k}={v}" for k, v in sorted(applied.items())),
    )
    outcome.notes.append(
        "channels: "
        + "; ".join(
            f"slot {i}: {s.reconnects} reconnects, {s.rotations} rotations, "
            f"{s.bad_frames} bad frames"
            for i, s in channels_before.items()
        )
    )
    summary = outcome.summary()
    print(summary)
    trace = os.environ.get("GENESYS_MUX_CHAOS_TRACE")
    if trace:
        write_trace(trace, run, outcome, chaos.log, control_events, requests_log)
    assert not outcome.problems, summary
    # The chaos must have bitten, or the reconciliation proves little.
    missed = set(STEPS) - set(applied)
    assert not missed, f"faults never applied: {missed}\n{summary}"
    assert len(chaos.log) >= duration_s / 3, f"the injector fell behind\n{summary}"
    totals: Counter[str] = sum(outcome.counts.values(), Counter())
    for category in ("accepted", "filtered", "gap_never_sent"):
        assert totals[category] > 0, f"no {category} in the whole run\n{summary}"
    assert sum(s.duplicates for s in run.stats.values()) > 0, summary


@pytest.mark.timeout(SHORT_S + 120)
async def test_chaos_reconciles_with_the_ledger_and_a_witness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await chaos_run(monkeypatch, SHORT_S, SEED)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 240)
async def test_chaos_soak(monkeypatch: pytest.MonkeyPatch) -> None:
    await chaos_run(monkeypatch, SOAK_S, SEED + 1)


@pytest.mark.timeout(60)
async def test_notifications_behind_a_404_are_read_or_in_the_gap() -> None:
    """A notification published before a channel died is delivered, or inside the gap.

    Under the ``delay`` fault notifications reach the socket a second late,
    while heartbeats and the ``{"result":"404"}`` of an expired channel do
    not wait: the platform writes what it still had in flight after the 404,
    and closes the socket only then. The gap starts at the last frame read
    before the 404, so those notifications, published up to a second
    earlier, are outside it: the mux must read them (as a drain reads
    through the close handshake), or they are lost without a word. The
    witness, never faulted, says what was published and when.
    """
    topic = f"v2.users.{uuid.uuid4()}.conversations"
    settings = org_settings(rate=0.0, clients=[ClientApp(*MUX_CLIENT), ClientApp(*WITNESS_CLIENT)])
    async with Emulator(settings) as emulator, aiohttp.ClientSession() as session:
        control = Control(session, emulator.base_url)
        witness = Witness(session, emulator.base_url)
        await witness.start({topic})
        mux = Multiplexer(
            client_id=MUX_CLIENT[0],
            client_secret=MUX_CLIENT[1],
            base_url=emulator.base_url,
            pool_settings=FAST_POOL,
            dlq=MemoryDeadLetterQueue(),
        )
        items: list[StreamEvent | Gap] = []

        async def consume() -> None:
            async for item in mux.events():
                items.append(item)

        try:
            await mux.start()
            await mux.add_stream({"id": "late", "topics": [topic]})
            consumer = asyncio.create_task(consume())
            chaos = Chaos(control, random.Random(SEED))
            (old,) = await chaos.mux_channels()
            await chaos.fault("delay", channel_id=old, delay_s=1.0)
            blast = {"blast": {"topic": topic, "rate": 50, "count": 150}}
            assert (await control.post("traffic", blast))[0] == 200
            await eventually(lambda: mux.stats()["streams"]["late"].received >= 20)
            assert await chaos.fault("expire_channel", channel_id=old) == [old]
            await eventually(lambda: any(isinstance(i, Gap) for i in items))

            async def blasted() -> bool:
                status, answer = await control.post("traffic", {})
                return status == 200 and not answer["blasting"]

            await eventually(blasted)
            await eventually(lambda: len(witness.received) == 150)
            await eventually(lambda: mux.live)
            await mux.stop(drain=True, timeout_s=5)
            await asyncio.wait_for(consumer, 10)
        finally:
            await mux.stop(drain=False)
            await witness.stop()
    delivered = {(i.topic, i.correlation_id) for i in items if isinstance(i, StreamEvent)}
    gaps = [i for i in items if isinstance(i, Gap)]
    lost = {k: t for k, t in witness.received.items() if k not in delivered}
    outside = sorted(t for t in lost.values() if not any(g.start <= t <= g.end for g in gaps))
    assert not outside, (
        f"{len(outside)} of {len(lost)} undelivered notifications were published outside "
        f"every gap ({[(g.reason, round(g.start, 3), round(g.end, 3)) for g in gaps]}), "
        f"up to {max(gaps[0].start - t for t in outside):.3f} s before it"
    )


@pytest.mark.timeout(60)
async def test_a_stop_while_a_rotation_waits_reports_the_unsubscribed_window() -> None:
    """A window with no subscription is a gap, even when the stop comes first.

    Found by the chaos run (a stop drained the unsubscribed socket and
    reported nothing); fixed with the slot state machine (core/slot.py).

    Rotations take turns for the spare channel. Channel A rotates
    (``socket_closing``) and holds the turn while the platform throttles the
    DELETE that empties its old channel; meanwhile channel B loses its
    subscriptions (``no_longer_subscribed``) and its rotation waits for the
    turn, so nothing published on B's topic reaches the mux. When the mux
    stops before B's turn comes, that window must be reported as a gap.
    """
    topic_a = f"v2.users.{uuid.uuid4()}.conversations"
    topic_b = f"v2.users.{uuid.uuid4()}.conversations"
    settings = org_settings(rate=0.0, clients=[ClientApp(*MUX_CLIENT), ClientApp(*WITNESS_CLIENT)])
    async with Emulator(settings) as emulator, aiohttp.ClientSession() as session:
        control = Control(session, emulator.base_url)
        witness = Witness(session, emulator.base_url)
        await witness.start({topic_b})
        mux = Multiplexer(
            client_id=MUX_CLIENT[0],
            client_secret=MUX_CLIENT[1],
            base_url=emulator.base_url,
            pool_settings=dataclasses.replace(FAST_POOL, topics_per_channel=1),
            dlq=MemoryDeadLetterQueue(),
        )
        items: list[StreamEvent | Gap] = []

        async def consume() -> None:
            async for item in mux.events():
                items.append(item)

        try:
            await mux.start()
            await mux.add_stream({"id": "a", "topics": [topic_a]})
            await mux.add_stream({"id": "b", "topics": [topic_b]})
            consumer = asyncio.create_task(consume())
            chaos = Chaos(control, random.Random(SEED))
            # Which channel carries A: the one a frame on A's topic goes to.
            probe = {"blast": {"topic": topic_a, "rate": 0, "count": 1}}
            assert (await control.post("traffic", probe))[0] == 200
            ledger = Ledger(control)

            async def probed() -> bool:
                await ledger.read()
                return any(topic_a == t for sent in ledger.sent.values() for t, _ in sent)

            await eventually(probed)
            (a,) = (c for c, sent in ledger.sent.items() if any(t == topic_a for t, _ in sent))
            (b,) = set(await chaos.mux_channels()) - {a}

            await chaos.fault(
                "http_429", path=f"/{a}/subscriptions", method="DELETE", count=4, retry_after_s=1
            )
            await chaos.fault("socket_closing", channel_id=a, delay_s=10)

            async def a_holds_the_turn() -> bool:
                served = (await control.get("requests"))["requests"]
                return any(
                    r["method"] == "DELETE" and a in r["path"] and r["status"] == 429
                    for r in served
                )

            await eventually(a_holds_the_turn)
            assert await chaos.fault("no_longer_subscribed", channel_id=b) == [b]
            blast = {"blast": {"topic": topic_b, "rate": 50, "count": 25}}
            assert (await control.post("traffic", blast))[0] == 200
            await eventually(lambda: len(witness.received) == 25)
            await mux.stop(drain=True, timeout_s=5)
            await asyncio.wait_for(consumer, 10)
        finally:
            await mux.stop(drain=False)
            await witness.stop()
    delivered = {(i.topic, i.correlation_id) for i in items if isinstance(i, StreamEvent)}
    gaps = [i for i in items if isinstance(i, Gap) and i.stream_id == "b"]
    lost = [t for k, t in witness.received.items() if k not in delivered]
    outside = [t for t in lost if not any(g.start <= t <= g.end for g in gaps)]
    assert not outside, (
        f"{len(outside)} of {len(witness.received)} notifications on B's topic were neither "
        f"delivered nor inside a gap of stream b (gaps: {gaps})"
    )


@pytest.mark.timeout(60)
async def test_live_is_false_while_a_channel_has_lost_its_subscriptions() -> None:
    """``live`` promises every channel is live *and subscribed*.

    The channel loses its subscriptions (``no_longer_subscribed``) and no
    successor can be created (the platform answers 503): nothing reaches the
    stream until one can, so the multiplexer is not live.
    """
    topic = f"v2.users.{uuid.uuid4()}.conversations"
    async with Emulator(org_settings(rate=0.0)) as emulator, aiohttp.ClientSession() as session:
        control = Control(session, emulator.base_url)
        chaos = Chaos(control, random.Random(SEED))
        async with Multiplexer(
            client_id=MUX_CLIENT[0],
            client_secret=MUX_CLIENT[1],
            base_url=emulator.base_url,
            pool_settings=FAST_POOL,
            dlq=MemoryDeadLetterQueue(),
        ) as mux:
            await mux.add_stream({"id": "s", "topics": [topic]})
            assert mux.live
            (channel,) = await chaos.mux_channels()
            await chaos.fault("http_5xx", path="/notifications/channels", method="POST", count=1000)
            assert await chaos.fault("no_longer_subscribed", channel_id=channel) == [channel]

            async def successor_refused() -> bool:
                served = (await control.get("requests"))["requests"]
                return any(
                    r["method"] == "POST" and r["status"] == 503
                    for r in served
                    if r["path"].endswith("/notifications/channels")
                )

            await eventually(successor_refused)
            channels = {c["id"]: c for c in await control.get("channels")}
            assert channels[channel]["topic_count"] == 0
            assert not mux.live
