"""Media topics and general topics deliver the same conversations, over real sockets.

The platform sends a conversation snapshot in two body shapes: the general
shape on ``….conversations`` topics and the media-participant shape on the
``….conversations.{media}`` topics. A stream with ``channelType`` reads the
media topics, one without reads the general topic. Both must deliver the
same conversations with the same ``enter``/``update``/``exit`` transitions.

One emulator (fixed seed, traffic frozen at start) and one real
:class:`Multiplexer` carry every pair of streams, differing only in
``channelType``:

==============  =========================================  ==============================
pair            media-topic stream                         general-topic stream, kept
==============  =========================================  ==============================
voice-active    ``{channelType: voice, state: active}``    ``{state: active}``, calls
chat-queue      ``{channelType: chat, queueId: Q}``        ``{queueId: Q}``, chats
voice-queued    ``{channelType: voice, state: queued}``    ``{state: queued}``, calls
sms             ``{channelType: sms}``                     ``{}``, SMS messages
user-voice      ``{userId: U, channelType: voice}``        ``{userId: U}``, calls; every U
==============  =========================================  ==============================

Every stream is subscribed on a live channel before traffic starts. Traffic
then runs until each media stream has delivered enough, is frozen again, and
the streams are drained until every frame the emulator's ledger says it sent
on their topics has been read. The scenario runs once for the module; each
test checks one promise about what it recorded.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from genesys_mux import Gap, Multiplexer, StreamEvent
from genesys_mux.config import filter_topics, parse_stream
from genesys_mux.core.snapshot import ConversationFacts, event_facts
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue
from tests.net.conftest import eventually

SETTINGS = EmulatorSettings(
    seed=1,
    queues=2,
    agents=20,
    rate=10.0,
    heartbeat_interval_s=0.5,
    tick_s=0.02,
    traffic=False,
)
#: Conversations each pair must deliver (summed over the users for user-voice).
MIN_CONVERSATIONS = 5
#: Conversations each state pair must have seen leave the state.
MIN_EXITS = 3
#: Wall-clock bounds of the phases; the traffic phase needs about 4 s with this seed.
TRAFFIC_DEADLINE_S = 12.0
DRAIN_DEADLINE_S = 5.0

Keep = Callable[[ConversationFacts], bool]


def _calls(facts: ConversationFacts) -> bool:
    return "calls" in facts.media


def _chats(facts: ConversationFacts) -> bool:
    return "chats" in facts.media


def _sms(facts: ConversationFacts) -> bool:
    return "sms" in facts.message_types


@dataclass(frozen=True, slots=True)
class Pair:
    """Two streams that differ only in ``channelType``, and how to compare them."""

    group: str
    media_id: str
    media_filter: dict[str, str]
    general_id: str
    general_filter: dict[str, str]
    #: The general stream carries every media: keep the conversations this says.
    keep: Keep
    #: The media suffix every topic of the media stream must end with.
    suffix: str
    #: The ``state`` filter both streams share, if any.
    state: str | None


@dataclass(frozen=True, slots=True)
class Seen:
    """One delivered event, reduced to what the comparisons need."""

    conversation_id: str
    transition: str | None
    topic: str
    version: float
    digest: bytes
    facts: ConversationFacts


@dataclass(slots=True)
class Run:
    """What the scenario recorded."""

    pairs: list[Pair]
    delivered: dict[str, list[Seen]]
    gaps: list[Gap]
    dead_letters: int
    #: Stream id → (frames the ledger sent on its topics, frames the stream received).
    accounting: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Stream id → (topics the test expects, topics the multiplexer subscribed).
    topic_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    ledger_entries: int = 0


def build_pairs(queue_id: str, user_ids: Iterable[str]) -> list[Pair]:
    pairs = [
        Pair(
            "voice-active",
            "voice-main",
            {"channelType": "voice", "state": "active"},
            "active-general",
            {"state": "active"},
            _calls,
            "calls",
            state="active",
        ),
        Pair(
            "chat-queue",
            "chat-support",
            {"channelType": "chat", "queueId": queue_id},
            "queue-general",
            {"queueId": queue_id},
            _chats,
            "chats",
            state=None,
        ),
        Pair(
            "voice-queued",
            "voice-queued",
            {"channelType": "voice", "state": "queued"},
            "queued-general",
            {"state": "queued"},
            _calls,
            "calls",
            state="queued",
        ),
        Pair(
            "sms",
            "sms",
            {"channelType": "sms"},
            "all-general",
            {},
            _sms,
            "messages",
            state=None,
        ),
    ]
    for i, user_id in enumerate(user_ids):
        pairs.append(
            Pair(
                "user-voice",
                f"user-{i}-voice",
                {"userId": user_id, "channelType": "voice"},
                f"user-{i}-general",
                {"userId": user_id},
                _calls,
                "calls",
                state=None,
            )
        )
    return pairs


def seen(event: StreamEvent) -> Seen:
    # The same facts the multiplexer computed: the media of a media-shaped
    # body comes from its topic.
    facts = event_facts(event.topic, event.raw).conversation
    assert facts is not None, f"no conversation facts for an event on {event.topic}"
    assert event.conversation_id == facts.conversation_id
    return Seen(
        facts.conversation_id, event.transition, event.topic, facts.version, facts.hash, facts
    )


def by_conversation(
    events: Iterable[Seen], keep: Keep | None = None
) -> dict[str, list[tuple[str, str | None]]]:
    """Conversation id → its ordered (conversation id, transition) list.

    With ``keep``, only conversations with an event whose facts satisfy it.
    """
    grouped: dict[str, list[Seen]] = defaultdict(list)
    for event in events:
        grouped[event.conversation_id].append(event)
    return {
        cid: [(e.conversation_id, e.transition) for e in evs]
        for cid, evs in grouped.items()
        if keep is None or any(keep(e.facts) for e in evs)
    }


def snapshots(events: Iterable[Seen], keep: Keep | None = None) -> dict[str, list[Any]]:
    """Conversation id → its ordered (transition, version, state digest) list."""
    grouped: dict[str, list[Seen]] = defaultdict(list)
    for event in events:
        grouped[event.conversation_id].append(event)
    return {
        cid: [(e.transition, e.version, e.digest.hex()) for e in evs]
        for cid, evs in grouped.items()
        if keep is None or any(keep(e.facts) for e in evs)
    }


class Control:
    """The emulator's control surface, ``/__emulator__/...``."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.base_url}/__emulator__/{path}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post(self, path: str, body: Any) -> Any:
        async with self.session.post(f"{self.base_url}/__emulator__/{path}", json=body) as resp:
            assert resp.status in (200, 201), await resp.text()
            return await resp.json()


async def run_scenario() -> Run:
    async with Emulator(SETTINGS) as emulator, aiohttp.ClientSession() as session:
        control = Control(session, emulator.base_url)
        org = await control.get("org")
        queue_ids = [q["id"] for q in org["queues"]]
        pairs = build_pairs(queue_ids[0], [u["id"] for u in org["users"]])
        configs = {p.media_id: p.media_filter for p in pairs}
        configs.update({p.general_id: p.general_filter for p in pairs})
        topics = {
            sid: filter_topics(parse_stream({"id": sid, "filter": f}), queue_ids)
            for sid, f in configs.items()
        }
        dlq = MemoryDeadLetterQueue()
        async with Multiplexer(
            client_id="demo-client",
            client_secret="demo-secret",
            base_url=emulator.base_url,
            dlq=dlq,
            max_streams=len(configs),
            buffer_threshold=100_000,
        ) as mux:
            for sid, f in configs.items():
                # Returns once the stream's topics are subscribed on a live channel.
                assert await mux.add_stream({"id": sid, "filter": f}) == []
            assert mux.live
            assert (await control.get("ledger"))["entries"] == [], "traffic was not frozen"

            items: list[StreamEvent | Gap] = []

            async def read() -> None:
                async for item in mux.events():
                    items.append(item)

            reader = asyncio.create_task(read())
            try:
                await control.post("traffic", {"running": True})

                def enough() -> bool:
                    conversations: dict[str, set[str]] = defaultdict(set)
                    exits: Counter[str] = Counter()
                    group = {p.media_id: p.group for p in pairs}
                    for item in items:
                        if isinstance(item, StreamEvent) and item.stream_id in group:
                            name = group[item.stream_id]
                            conversations[name].add(item.conversation_id or "")
                            exits[name] += item.transition == "exit"
                    return all(
                        len(conversations[p.group]) >= MIN_CONVERSATIONS
                        and (p.state is None or exits[p.group] >= MIN_EXITS)
                        for p in pairs
                    )

                await eventually(enough, within=TRAFFIC_DEADLINE_S)
                await control.post("traffic", {"running": False})

                ledger: dict[str, Any] = {}

                async def drained() -> bool:
                    first = await control.get("ledger")
                    sent = Counter(e["topic"] for e in first["entries"])
                    stats = mux.stats()["streams"]
                    handed = Counter(i.stream_id for i in items if isinstance(i, StreamEvent))
                    for sid, stream_topics in topics.items():
                        s = stats[sid]
                        if s.received != sum(sent[t] for t in stream_topics):
                            return False
                        if s.buffered or handed[sid] != s.delivered:
                            return False
                    # Nothing was still on its way out of the emulator: it shares
                    # this event loop, so a frame still queued for a socket would
                    # have been sent (and entered in the ledger) by now.
                    again = await control.get("ledger")
                    if again["next_seq"] != first["next_seq"]:
                        return False
                    ledger.update(first)
                    return True

                await eventually(drained, within=DRAIN_DEADLINE_S)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

            sent = Counter(e["topic"] for e in ledger["entries"])
            stats = mux.stats()["streams"]
            delivered: dict[str, list[Seen]] = {sid: [] for sid in configs}
            for item in items:
                if isinstance(item, StreamEvent):
                    delivered[item.stream_id].append(seen(item))
            return Run(
                pairs=pairs,
                delivered=delivered,
                gaps=[i for i in items if isinstance(i, Gap)],
                dead_letters=len(dlq.letters),
                accounting={
                    sid: (sum(sent[t] for t in ts), stats[sid].received)
                    for sid, ts in topics.items()
                },
                topic_counts={sid: (len(ts), stats[sid].topics) for sid, ts in topics.items()},
                ledger_entries=len(ledger["entries"]),
            )


@pytest.fixture(scope="module")
def run() -> Run:
    """The scenario, once for the module (its own event loop)."""
    return asyncio.run(run_scenario())


GROUPS = ["voice-active", "chat-queue", "voice-queued", "sms", "user-voice"]


def members(run: Run, group: str) -> list[Pair]:
    pairs = [p for p in run.pairs if p.group == group]
    assert pairs, f"no pairs in group {group}"
    return pairs


def test_every_frame_sent_was_read_without_loss(run: Run) -> None:
    assert run.ledger_entries > 0
    assert run.gaps == []
    assert run.dead_letters == 0
    for sid, (expected, subscribed) in run.topic_counts.items():
        assert expected == subscribed, f"{sid}: the multiplexer subscribed other topics"
    for sid, (sent, received) in run.accounting.items():
        assert sent == received, f"{sid}: the ledger sent {sent} frames, {received} were read"


@pytest.mark.parametrize("group", GROUPS)
def test_streams_are_fed_by_their_own_shape(run: Run, group: str) -> None:
    for pair in members(run, group):
        for event in run.delivered[pair.media_id]:
            assert event.topic.endswith(f".conversations.{pair.suffix}"), event.topic
            assert pair.keep(event.facts), f"{pair.media_id}: {event.conversation_id}"
        for event in run.delivered[pair.general_id]:
            assert event.topic.endswith(".conversations"), event.topic
        if pair.state is not None:
            # Each shape's own facts agree with the transition it produced.
            for sid in (pair.media_id, pair.general_id):
                for event in run.delivered[sid]:
                    in_state = getattr(event.facts, pair.state)
                    assert in_state == (event.transition != "exit"), (sid, event)


@pytest.mark.parametrize("group", GROUPS)
def test_media_and_general_topics_deliver_the_same_conversations(run: Run, group: str) -> None:
    total = 0
    transitions: set[str | None] = set()
    for pair in members(run, group):
        media = by_conversation(run.delivered[pair.media_id])
        general = by_conversation(run.delivered[pair.general_id], pair.keep)
        assert set(media) == set(general), (
            f"{pair.media_id} vs {pair.general_id}: only from media topics "
            f"{sorted(set(media) - set(general))}, only from general topics "
            f"{sorted(set(general) - set(media))}"
        )
        for cid in media:
            assert media[cid] == general[cid], (
                f"{pair.media_id} vs {pair.general_id}, conversation {cid}"
            )
        total += len(media)
        transitions.update(t for evs in media.values() for _, t in evs)
    assert total >= MIN_CONVERSATIONS, f"{group}: only {total} conversations"
    if members(run, group)[0].state is not None:
        assert {"enter", "exit"} <= transitions, transitions
        exits = sum(
            t == "exit"
            for pair in members(run, group)
            for evs in by_conversation(run.delivered[pair.media_id]).values()
            for _, t in evs
        )
        assert exits >= MIN_EXITS, f"{group}: only {exits} exits"
        # Every conversation's story starts by entering the state.
        for pair in members(run, group):
            for evs in by_conversation(run.delivered[pair.media_id]).values():
                assert evs[0][1] == "enter", evs
    else:
        assert transitions == {None}


@pytest.mark.parametrize("group", GROUPS)
def test_both_shapes_give_the_same_snapshot_versions_and_digests(run: Run, group: str) -> None:
    for pair in members(run, group):
        media = snapshots(run.delivered[pair.media_id])
        general = snapshots(run.delivered[pair.general_id], pair.keep)
        assert set(media) == set(general)
        for cid in media:
            assert media[cid] == general[cid], (
                f"{pair.media_id} vs {pair.general_id}, conversation {cid}"
            )
