"""The simulated contact centre behind the emulator: queues, agents, customers.

Theory of operation
-------------------
:class:`ContactCentre` is a deterministic discrete-event simulation with no
asyncio, no clock reads and no I/O. Time is a float of *simulation seconds*
passed in by the caller; ``epoch`` (unix seconds) is what simulation time 0
maps to, and is used only to render ISO-8601 timestamps.

Every future happening is a *step* on one heap, ordered by ``(time,
sequence number)``. :meth:`ContactCentre.advance` pops and runs every step
due at or before ``now`` and returns what they published. All randomness
comes from one ``random.Random(seed)`` and is drawn while steps run, and
steps never look at ``now``. So the same seed and the same sequence of calls
give byte-identical output however the caller chunks time into ``advance``
calls: one call to ``advance(60)`` or six thousand calls ten milliseconds
apart run the same steps in the same order.

The two calls that change the org from outside keep that property:
:meth:`~ContactCentre.set_rate` schedules its change as a step, and
:meth:`~ContactCentre.add_queue` draws its ids from a second generator and
marks the queue as existing only from ``now`` on, so steps before ``now``
that have not run yet cannot see it.

Time is compressed so that a conversation lasts seconds, not minutes, and
tests and demos see whole lifecycles quickly::

    voice     customer+ivr ─0.2-1s─▶ acd (queued) ─▶ agent alerting ─0.2-1s─▶
              connected ─1-6s─▶ disconnected, after-call work ─0.3-2s─▶ terminated
    chat, message, email
              customer+acd (queued) ─▶ agent alerting ─▶ connected ─▶ ... as above
    callback  customer "scheduled" ─0.15-0.75s─▶ rescheduled (as much later) ─0.3-1.5s─▶
              customer connected + acd ─▶ ... as above

Along the way a few conversations are abandoned in queue, time out while
alerting and go to another agent, are put on hold, are transferred (to a
free agent, or back to the queue when none is free) or are monitored by a
supervisor. Agents take breaks and meals, which shows in presence and
routing status.

Every change to a conversation publishes the *whole* conversation snapshot,
as Genesys does, to the queue topics and to the user topics of every agent
or supervisor still in it; the flat detail events and the presence and
routing-status bodies are published alongside. A user hears the snapshot in
which their part ends (disconnected, or after-call work completed) and
nothing after it. The queue is picked when a conversation arrives, so a
voice call is already on its queue's topics while it is in the IVR.

Body shapes
-----------
The platform sends a snapshot in one of two shapes depending on the topic,
and REST has a third (reference §7, "Two body shapes"); each is rendered
from the same state, so the three always describe the same moment:

- **general** (``….conversations``): participants with ``userId`` and
  ``queueId`` and one list per media of communications with their state;
- **media** (``….conversations.calls`` and the other media suffixes): *media
  participants*, with the communication's state, direction and times on the
  participant itself and ``user``/``queue`` as ``{id, name}``;
- **REST** (``GET /api/v2/conversations/{id}``): close to the general shape,
  with REST's spellings.

Every field matches the vendor's models (``topic_schemas.json``, generated
from the vendor SDK by ``scripts/refresh-topic-schemas``); the conformance
tests hold every shape to them.

Ids are UUIDs drawn from the generator, so they are stable per seed.
"""

from __future__ import annotations

import heapq
import math
import random
import unicodedata
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from genesys_mux.core.timestamps import format_iso
from genesys_mux.core.topics import (
    Media,
    conversation_detail_events,
    queue_conversations,
    user_conversations,
    user_presence,
    user_routing_status,
)

__all__ = [
    "MEDIA_MIX",
    "RETAIN_ENDED",
    "STATES",
    "Agent",
    "ContactCentre",
    "Publication",
    "Queue",
]

#: How new conversations split across media: the probabilities sum to 1.
MEDIA_MIX: Final[tuple[tuple[Media, float], ...]] = (
    (Media.CALLS, 0.45),
    (Media.CHATS, 0.20),
    (Media.EMAILS, 0.10),
    (Media.MESSAGES, 0.15),
    (Media.CALLBACKS, 0.10),
)

#: The communication states each simulated media may show, per the reference.
STATES: Final[dict[Media, frozenset[str]]] = {
    Media.CALLS: frozenset(
        {"alerting", "dialing", "contacting", "offering", "connected", "disconnected", "terminated"}
    ),
    Media.CHATS: frozenset(
        {"alerting", "dialing", "contacting", "offering", "connected", "disconnected", "terminated"}
    ),
    Media.EMAILS: frozenset({"alerting", "connected", "disconnected", "transmitting", "parked"}),
    Media.MESSAGES: frozenset({"alerting", "connected", "disconnected", "parked"}),
    Media.CALLBACKS: frozenset(
        {
            "scheduled",
            "alerting",
            "dialing",
            "contacting",
            "offering",
            "connected",
            "disconnected",
            "terminated",
        }
    ),
}

#: How many ended conversations stay available to :meth:`ContactCentre.conversation`
#: and :meth:`ContactCentre.analytics_query` by default.
RETAIN_ENDED: Final = 20_000

# -- timings (simulation seconds) and odds --------------------------------
# Compressed so that a whole lifecycle fits in a few seconds.
_IVR_S = (0.2, 1.0)
_ALERT_S = (0.2, 1.0)
_TALK_S = (1.0, 6.0)
_ACW_S = (0.3, 2.0)
_CALLBACK_DELAY_S = (0.3, 1.5)
_EMAIL_SEND_S = (0.1, 0.4)
_HOLD_FRACTION = (0.1, 0.3)
_MONITOR_S = (1.0, 4.0)
_RECOVER_S = (1.0, 3.0)
_BREAK_S = (3.0, 10.0)
_MEAL_S = (8.0, 20.0)
# Live customers give up quickly; emails and callbacks wait far longer.
_PATIENCE_S = (2.0, 12.0)
_PATIENCE_DEFERRED_S = (30.0, 60.0)
_ALERT_TIMEOUT_S = 1.5
_BREAK_GAP_MEAN_S = 120.0
_P_TIMEOUT = 0.04
_P_TRANSFER = 0.05
_P_MONITOR = 0.05
_P_HOLD = 0.10
_P_MEAL = 0.25
_P_CUSTOMER_HANGS_UP = 0.6
_MESSAGE_TYPES = (("sms", 0.7), ("webmessaging", 0.2), ("whatsapp", 0.1))
_MAX_PARTICIPANTS = 10

# Primary presence definitions carry the same ids in every Genesys org.
_ON_QUEUE = ("e08eaf1b-ee47-4fa9-a231-1200e284798f", "On Queue")
_BREAK = ("227b37e2-f1d0-4dd0-8f50-badd7cf6d158", "Break")
_MEAL = ("3fd96123-badb-4f69-bc03-1b1ccc6d8014", "Meal")

_MEDIA_TYPE = {
    Media.CALLS: "voice",
    Media.CHATS: "chat",
    Media.EMAILS: "email",
    Media.MESSAGES: "message",
    Media.CALLBACKS: "callback",
}
# Detail events spell disconnect types as analytics does, not as snapshots do.
_DETAIL_DISCONNECT_TYPES = {
    "endpoint": "ENDPOINT",
    "client": "CLIENT",
    "system": "SYSTEM",
    "timeout": "TIMEOUT",
    "transfer": "TRANSFER",
    "transfer.conference": "CONFERENCE_TRANSFER",
    "transfer.consult": "CONSULT_TRANSFER",
    "transfer.forward": "FORWARD_TRANSFER",
    "transfer.noanswer": "NO_ANSWER_TRANSFER",
    "transfer.notavailable": "NOT_AVAILABLE_TRANSFER",
    "transport.failure": "TRANSPORT_FAILURE",
    "error": "ERROR",
    "peer": "PEER",
    "other": "OTHER",
    "spam": "SPAM",
    "uncallable": "UNCALLABLE",
}
_LISTS = ("calls", "callbacks", "chats", "emails", "messages")
# Media whose communications settle in "terminated" once the conversation ends.
_TERMINATES = frozenset({Media.CALLS, Media.CHATS, Media.CALLBACKS})

_QUEUE_NAMES = (
    "Support",
    "Sales",
    "Billing",
    "Retention",
    "Technical Support",
    "Claims",
    "Onboarding",
    "Collections",
    "Renewals",
    "Orders",
    "Returns",
    "Escalations",
)
# Names as a real directory has them: most plain ASCII, some not (accents,
# other scripts, a character outside the Basic Multilingual Plane), so that
# every frame path meets UTF-8 text and, when a frame is re-serialised,
# \u escapes (a surrogate pair for the last). Customers name themselves in
# chats and messages, so theirs may also hold text JSON must escape.
_FIRST = (
    "Ava", "Ben", "Chloe", "Daniel", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas",
    "Keira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq",
    "Uma", "Victor", "Wen", "Ximena", "Yusuf", "Zoe", "Zoë", "José", "Åsa", "Łukasz",
    "Søren", "Renée", "Jürgen", "Siân", "Ngọc", "Ágnes", "美咲", "Юлия",
)  # fmt: skip
_LAST = (
    "Adams", "Baker", "Chen", "Dubois", "Evans", "Fischer", "Garcia", "Hughes", "Ivanova",
    "Jensen", "Khan", "Lopez", "Murphy", "Nakamura", "Okafor", "Patel", "Rossi", "Silva",
    "Tanaka", "Usman", "Varga", "Walsh", "Xu", "Yilmaz", "Zimmer", "Müller", "Gómez",
    "Nguyễn", "Ødegård", "Wiśniewska", "Çelik", "Þórsdóttir", "O'Brien", "佐藤", "Δημητρίου",
)  # fmt: skip
_CUSTOMER_LAST = (
    *_LAST,
    'Smith "Smitty"',
    "Lee \\ Park",
    "Ortiz \U0001f680",
    "Bell\tRing",
)


def _mailbox(name: str, index: int) -> str:
    """An e-mail local part for ``first.last``: the ASCII letters of each, else ``agentN``."""
    parts = []
    for part in name.split("."):
        letters = "".join(
            c for c in unicodedata.normalize("NFKD", part) if c.isascii() and c.isalpha()
        )
        if not letters:  # another script: nothing left to spell it with
            return f"agent{index + 1}"
        parts.append(letters.lower())
    return ".".join(parts)


_WRAPUP_NAMES = (
    "Resolved",
    "Information provided",
    "Follow-up required",
    "Escalated",
    "Sale completed",
    "No sale",
    "Billing adjusted",
    "Wrong department",
)
_SUBJECTS = (
    "Question about my invoice",
    "Order not delivered",
    "Change of address",
    "Cancel my subscription",
    "Refund request",
    "Upgrade options",
)
_IVR_NAME = "Inbound Call Flow"
_DNIS = "tel:+18005550100"

_encode = msgspec.json.Encoder().encode


# -- public value types ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publication:
    """One change to publish: a JSON body and every topic it goes to."""

    #: Every plain topic the body is published on.
    topics: tuple[str, ...]
    #: The JSON-encoded ``eventBody``.
    body: bytes
    #: The conversation the body is about; ``None`` for presence and routing status.
    conversation_id: str | None
    #: A UUID for the envelope's ``metadata.CorrelationId``, deterministic per seed.
    correlation_id: str
    #: Simulation time in seconds.
    at: float


@dataclass(slots=True)
class Queue:
    """A routing queue of the simulated org."""

    id: str
    name: str
    #: Simulation seconds; negative for the queues the org started with.
    #: Conversations are routed to the queue only from this time on.
    created_at: float
    #: Ids of the agents who are members, in joining order.
    member_ids: list[str]
    description: str = ""
    division_id: str = ""

    def to_api(self, epoch: float) -> dict[str, Any]:
        """The queue as ``GET /api/v2/routing/queues`` lists it.

        ``epoch`` is the unix time simulation time 0 maps to. Media settings
        show the usual production values, not the compressed simulation ones.
        """

        def media(alert_s: int, duration_ms: int) -> dict[str, Any]:
            return {
                "alertingTimeoutSeconds": alert_s,
                "serviceLevel": {"percentage": 0.8, "durationMs": duration_ms},
            }

        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "dateCreated": format_iso(epoch + self.created_at),
        }
        if self.division_id:
            body["division"] = {
                "id": self.division_id,
                "name": "Home",
                "selfUri": f"/api/v2/authorization/divisions/{self.division_id}",
            }
        body.update(
            {
                "memberCount": len(self.member_ids),
                "userMemberCount": len(self.member_ids),
                "joinedMemberCount": len(self.member_ids),
                "mediaSettings": {
                    "call": media(8, 20_000),
                    "callback": media(30, 20_000),
                    "chat": media(30, 20_000),
                    "email": media(300, 86_400_000),
                    "message": media(30, 20_000),
                },
                "acwSettings": {"wrapupPrompt": "MANDATORY_TIMEOUT", "timeoutMs": 300_000},
                "skillEvaluationMethod": "ALL",
                "autoAnswerOnly": False,
                "enableTranscription": False,
                "enableManualAssignment": False,
                "selfUri": f"/api/v2/routing/queues/{self.id}",
            }
        )
        return body


@dataclass(slots=True)
class Agent:
    """A user of the simulated org who takes conversations from queues."""

    id: str
    name: str
    email: str
    #: Queues the agent is a member of, in joining order.
    queue_ids: list[str]

    def to_api(self) -> dict[str, Any]:
        """The user as ``GET /api/v2/users/{id}`` returns it."""
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "username": self.email,
            "state": "active",
            "selfUri": f"/api/v2/users/{self.id}",
        }


# -- internal simulation state -------------------------------------------

# Agent states. "busy" covers connected and after-call work.
_IDLE, _ALERTING, _BUSY, _NOT_RESPONDING, _ON_BREAK = (
    "idle",
    "alerting",
    "busy",
    "not_responding",
    "break",
)


@dataclass(slots=True, eq=False)
class _Staff:
    """An agent's moment-to-moment state; :class:`Agent` is the public identity."""

    agent: Agent
    index: int
    state: str = _IDLE
    idle_since: float = 0.0
    break_pending: bool = False
    monitoring: _Conversation | None = None
    presence: tuple[str, str] = _ON_QUEUE
    presence_since: float = 0.0
    routing: str = "IDLE"
    routing_since: float = 0.0

    @property
    def free(self) -> bool:
        return self.state == _IDLE and self.monitoring is None


@dataclass(slots=True, eq=False)
class _Segment:
    """One analytics segment; ``end`` is ``None`` while it is open."""

    kind: str
    start: str
    queue_id: str | None
    end: str | None = None
    disconnect_type: str | None = None


@dataclass(slots=True, eq=False)
class _Comm:
    """One communication (a call, chat, ...) of one participant."""

    id: str
    state: str
    initial_state: str
    direction: str = "inbound"
    connected: str | None = None
    disconnected: str | None = None
    disconnect_type: str | None = None
    held: bool = False
    hold_start: str | None = None
    peer_id: str | None = None
    acw_state: str | None = None
    acw_start: str | None = None
    acw_end: str | None = None
    acw_required: bool = False


@dataclass(slots=True, eq=False)
class _Participant:
    id: str
    purpose: str
    name: str
    comm: _Comm
    staff: _Staff | None = None
    address: str | None = None
    queue_id: str | None = None
    connected: str | None = None
    end: str | None = None
    acw_start: str | None = None
    acw_end: str | None = None
    acw_started: float = 0.0
    wrapup_required: bool | None = None
    wrapup_expected: bool | None = None
    wrapup: dict[str, Any] | None = None
    #: The wrap-up code's name: only the REST shape carries it.
    wrapup_name: str | None = None
    routed: bool = False
    alerting_timeout_ms: int | None = None
    monitored_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    #: True while the participant's user topics receive this conversation.
    listening: bool = False
    #: When the participant joined (ISO-8601): the media and REST shapes' ``startTime``.
    start: str = ""
    segments: list[_Segment] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Disconnected and not in after-call work: nothing more will happen to it."""
        c = self.comm
        return c.state in ("disconnected", "terminated") and c.acw_state != "pending"

    def open_segment(self, kind: str, at: str, queue_id: str | None) -> None:
        self.segments.append(_Segment(kind, at, queue_id))

    def close_segment(self, at: str, disconnect_type: str | None = None) -> None:
        if self.segments and self.segments[-1].end is None:
            self.segments[-1].end = at
            self.segments[-1].disconnect_type = disconnect_type


@dataclass(frozen=True, slots=True, eq=False)
class _Transfer:
    """One completed blind transfer, rendered per shape by ``_render_transfer``."""

    id: str
    issued: str
    #: The user id of the agent who transferred.
    initiator: str
    #: The user id it went to; ``None`` when it went back to the queue.
    target_user: str | None


@dataclass(slots=True, eq=False)
class _Conversation:
    id: str
    media: Media
    queue: Queue
    start: float
    customer: _Participant
    participants: list[_Participant]
    divisions: list[dict[str, Any]]
    end: float | None = None
    acd: _Participant | None = None
    agent: _Participant | None = None
    supervisor: _Participant | None = None
    transfers: list[_Transfer] = field(default_factory=list)
    transferred: bool = False
    waiting: bool = False
    wait_gen: int = 0
    wait_key: int = 0
    recording: str = "none"
    message_type: str | None = None
    subject: str | None = None
    callback_numbers: list[str] | None = None
    scheduled_time: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Ended:
    """What is kept of an ended conversation: compressed, about 1.5 KB in all."""

    start: float
    end: float
    queue_id: str
    #: zlib of the final REST conversation JSON.
    snapshot: bytes
    #: zlib of the analytics detail record JSON.
    record: bytes


_Step = tuple[float, int, Callable[..., None], tuple[Any, ...]]


class ContactCentre:
    """A deterministic simulated contact centre that publishes Genesys notifications.

    ``seed`` fixes every id, name and event; ``queues`` and ``agents`` size
    the org; ``rate`` is new conversations per second across the org
    (Poisson arrivals, 0 for none); ``epoch`` is the unix time that
    simulation time 0 maps to, used only to render timestamps.

    Active conversations are all kept. Ended ones are kept for
    :meth:`conversation` and :meth:`analytics_query` up to the last
    ``retain_ended`` (default :data:`RETAIN_ENDED`, 20,000), oldest
    forgotten first, so memory stays bounded however long it runs.

    With the default sizes the org is deliberately overloaded (about 100
    erlangs offered to 50 agents): queues stay busy and many live customers
    abandon, which is what a stream multiplexer wants to be tested against.
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        queues: int = 10,
        agents: int = 50,
        rate: float = 20.0,
        epoch: float,
        retain_ended: int = RETAIN_ENDED,
    ) -> None:
        if queues < 0 or agents < 0:
            raise ValueError("queues and agents must not be negative")
        if retain_ended < 0:
            raise ValueError("retain_ended must not be negative")
        _check_rate(rate)
        #: The unix time simulation time 0 maps to.
        self.epoch = epoch
        self._rng = random.Random(seed)
        # add_queue() runs outside the step order; drawing its ids from the
        # main generator would make them depend on how far advance() has got.
        self._admin_rng = random.Random(f"genesys-mux org admin {seed}")
        self._media_rng = random.Random(f"genesys-mux org media {seed}")
        self._heap: list[_Step] = []
        self._seq = 0
        self._clock = 0.0
        self._out: list[Publication] = []
        self._retain = retain_ended
        self._active: dict[str, _Conversation] = {}
        self._ended: OrderedDict[str, _Ended] = OrderedDict()
        self._queue_names = 0
        self._rate = 0.0
        self._arrival_gen = 0

        self._division_id = self._uuid()
        self._wrapups = [(self._uuid(), name) for name in _WRAPUP_NAMES]

        #: The org's queues, in creation order (including ones added later).
        self.queues: list[Queue] = []
        self._queue_by_id: dict[str, Queue] = {}
        # Queues conversations may be routed to now; queues whose created_at
        # is still ahead wait in a heap ordered by it.
        self._routable: list[Queue] = []
        self._upcoming: list[tuple[float, int, Queue]] = []
        self._waiting: dict[str, deque[tuple[int, _Conversation, int]]] = {}
        self._waiting_live: dict[str, int] = {}
        for _ in range(queues):
            days = self._rng.uniform(30, 700)
            self._add_queue(self._uuid(), self._next_queue_name(), -days * 86_400.0)

        #: The org's agents, in creation order.
        self.agents: list[Agent] = []
        self._staff: dict[str, _Staff] = {}
        emails: set[str] = set()
        for i in range(agents):
            first, last = self._rng.choice(_FIRST), self._rng.choice(_LAST)
            local = _mailbox(f"{first}.{last}", i)
            email = f"{local}@example.com"
            n = 2
            while email in emails:
                email = f"{local}{n}@example.com"
                n += 1
            emails.add(email)
            agent = Agent(self._uuid(), f"{first} {last}", email, [])
            self.agents.append(agent)
            self._staff[agent.id] = _Staff(agent, i)
            if self.queues:
                k = min(len(self.queues), self._rng.randint(1, 3))
                for q in self._rng.sample(self.queues, k):
                    self._join(agent, q)
        # Every queue needs someone to answer it: give each orphan to the
        # agent with the fewest queues, which keeps everyone at 1-3 queues
        # unless there are too few agents for that.
        for q in self.queues:
            if not q.member_ids and self.agents:
                self._join(min(self.agents, key=lambda a: len(a.queue_ids)), q)

        for staff in self._staff.values():
            self._schedule(self._rng.expovariate(1 / _BREAK_GAP_MEAN_S), self._break_due, staff)
        if rate > 0:
            self._apply_rate(0.0, rate)

    # -- public API -------------------------------------------------------

    @property
    def now(self) -> float:
        """The latest simulation time :meth:`advance` has reached."""
        return self._clock

    @property
    def rate(self) -> float:
        """New conversations per second as of the last step run."""
        return self._rate

    def set_rate(self, rate: float, now: float) -> None:
        """Change the arrival rate for arrivals after ``now`` (simulation seconds).

        Conversations already under way finish normally; ``rate`` 0 stops new
        ones. A ``now`` earlier than :attr:`now` counts as :attr:`now`.
        """
        _check_rate(rate)
        self._schedule(max(now, self._clock), self._apply_rate, rate)

    def add_queue(self, name: str | None, now: float) -> Queue:
        """Create a queue, have a few agents join it, and route to it from ``now`` on.

        ``name`` ``None`` picks the next plausible name. The queue is returned
        at once (and listed in :attr:`queues`), but conversations arriving
        before ``now`` never go to it, whatever :meth:`advance` has reached.
        """
        rng = self._admin_rng
        queue_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        queue = self._add_queue(queue_id, name or self._next_queue_name(), max(now, self._clock))
        if self.agents:
            # About as many members as the existing queues have on average.
            size = max(1, round(sum(len(a.queue_ids) for a in self.agents) / len(self.queues)))
            for agent in rng.sample(self.agents, min(size, len(self.agents))):
                self._join(agent, queue)
        return queue

    def remove_queue(self, queue_id: str) -> bool:
        """Delete a queue: nothing new is routed to it and its members leave it.

        Conversations already waiting in it stay until they abandon, as when
        an administrator deletes a queue with calls in it. Returns False for
        an unknown id.
        """
        queue = self._queue_by_id.pop(queue_id, None)
        if queue is None:
            return False
        self.queues.remove(queue)
        if queue in self._routable:
            self._routable.remove(queue)
        self._upcoming = [entry for entry in self._upcoming if entry[2] is not queue]
        heapq.heapify(self._upcoming)
        for agent in self.agents:
            if queue_id in agent.queue_ids:
                agent.queue_ids.remove(queue_id)
        return True

    def advance(self, now: float) -> list[Publication]:
        """Run every step due at or before ``now`` and return what they published, in order.

        ``now`` is simulation seconds (unix time minus ``epoch`` for a real-time
        emulator). An earlier ``now`` than last time is harmless: nothing is due.
        """
        out: list[Publication] = []
        self._out = out
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, step, args = heapq.heappop(heap)
            step(t, *args)
        self._clock = max(self._clock, now)
        return out

    def conversation(self, conversation_id: str) -> bytes | None:
        """The conversation as ``GET /api/v2/conversations/{id}`` gives it, JSON-encoded.

        This is the REST shape (vendor model ``Conversation``), a third one
        beside the two topic shapes, and it shows the state after the last
        step run. ``None`` when the id is unknown or the conversation ended
        so long ago that it was forgotten (see :class:`ContactCentre`).
        """
        conv = self._active.get(conversation_id)
        if conv is not None:
            return _encode(self._render_rest(conv))
        ended = self._ended.get(conversation_id)
        return zlib.decompress(ended.snapshot) if ended is not None else None

    def analytics_query(
        self, start: float, end: float, queue_ids: Collection[str] | None
    ) -> list[dict[str, Any]]:
        """Conversations overlapping ``[start, end)`` (unix seconds), oldest first.

        With ``queue_ids``, only conversations routed to one of those queues.
        Each is shaped like an analytics conversation detail record:
        ``conversationId``, ``conversationStart``, ``conversationEnd`` (once
        ended), ``originatingDirection`` and ``participants`` with their
        sessions and segments.
        """
        wanted = None if queue_ids is None else set(queue_ids)
        # Simulation-time bounds, so the loops compare floats and nothing else.
        lo, hi = start - self.epoch, end - self.epoch
        found: list[tuple[float, str, dict[str, Any]]] = []
        for cid, ended in self._ended.items():
            if (
                ended.start < hi
                and ended.end >= lo
                and (wanted is None or ended.queue_id in wanted)
            ):
                record = msgspec.json.decode(zlib.decompress(ended.record))
                found.append((ended.start, cid, record))
        for cid, conv in self._active.items():
            if conv.start < hi and (wanted is None or conv.queue.id in wanted):
                found.append((conv.start, cid, self._analytics(conv)))
        found.sort(key=lambda f: (f[0], f[1]))
        return [record for _, _, record in found]

    def org(self) -> dict[str, Any]:
        """Queues and users in brief.

        ``{"queues": [{"id", "name"}], "users": [{"id", "name", "queueIds"}]}``.
        """
        return {
            "queues": [{"id": q.id, "name": q.name} for q in self.queues],
            "users": [
                {"id": a.id, "name": a.name, "queueIds": list(a.queue_ids)} for a in self.agents
            ],
        }

    def queue(self, queue_id: str) -> Queue | None:
        """The queue with this id, or ``None``."""
        return self._queue_by_id.get(queue_id)

    def agent(self, user_id: str) -> Agent | None:
        """The agent with this user id, or ``None``."""
        staff = self._staff.get(user_id)
        return staff.agent if staff is not None else None

    def presence(self, user_id: str) -> dict[str, Any] | None:
        """The user's current presence, shaped like the ``v2.users.{id}.presence`` body."""
        staff = self._staff.get(user_id)
        return None if staff is None else self._presence_body(staff)

    def routing_status(self, user_id: str) -> dict[str, Any] | None:
        """The user's routing status, shaped like the ``v2.users.{id}.routingStatus`` body."""
        staff = self._staff.get(user_id)
        return None if staff is None else self._routing_body(staff)

    def active_conversation_ids(self) -> list[str]:
        """Ids of the conversations not yet ended, oldest first."""
        return list(self._active)

    # -- scheduling -------------------------------------------------------

    def _schedule(self, at: float, step: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, step, args))

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _between(self, bounds: tuple[float, float]) -> float:
        return self._rng.uniform(*bounds)

    def _iso(self, t: float) -> str:
        return format_iso(self.epoch + t)

    def _apply_rate(self, t: float, rate: float) -> None:
        self._rate = rate
        # Arrivals are memoryless, so dropping the pending one and drawing
        # afresh from now is exactly a Poisson process at the new rate.
        self._arrival_gen += 1
        if rate > 0:
            self._schedule(t + self._rng.expovariate(rate), self._arrive, self._arrival_gen)

    # -- the org ----------------------------------------------------------

    def _next_queue_name(self) -> str:
        """Support, Sales, ..., then Support 2, Sales 2, ...; never a name in use."""
        taken = {q.name for q in self.queues}
        while True:
            n = self._queue_names
            self._queue_names += 1
            base = _QUEUE_NAMES[n % len(_QUEUE_NAMES)]
            rounds = n // len(_QUEUE_NAMES)
            name = base if rounds == 0 else f"{base} {rounds + 1}"
            if name not in taken:
                return name

    def _add_queue(self, queue_id: str, name: str, created_at: float) -> Queue:
        queue = Queue(
            queue_id,
            name,
            created_at,
            [],
            description=f"{name} enquiries",
            division_id=self._division_id,
        )
        self.queues.append(queue)
        self._queue_by_id[queue_id] = queue
        self._waiting[queue_id] = deque()
        self._waiting_live[queue_id] = 0
        heapq.heappush(self._upcoming, (created_at, len(self.queues), queue))
        return queue

    def _join(self, agent: Agent, queue: Queue) -> None:
        agent.queue_ids.append(queue.id)
        queue.member_ids.append(agent.id)

    def _routable_queues(self, t: float) -> list[Queue]:
        while self._upcoming and self._upcoming[0][0] <= t:
            self._routable.append(heapq.heappop(self._upcoming)[2])
        return self._routable

    # -- publishing -------------------------------------------------------

    def _publish(self, conv: _Conversation, t: float) -> None:
        """Publish the whole conversation to its queue and its users' topics.

        Two publications, as the platform has two body shapes: the general
        shape on the ``….conversations`` topics, the media shape on the
        ``….conversations.{media}`` topics.
        """
        media = conv.media
        general = [queue_conversations(conv.queue.id)]
        by_media = [queue_conversations(conv.queue.id, media)]
        users: set[str] = set()
        for p in conv.participants:
            if p.listening and p.staff is not None:
                uid = p.staff.agent.id
                if uid not in users:
                    users.add(uid)
                    general.append(user_conversations(uid))
                    by_media.append(user_conversations(uid, media))
        out = self._out
        out.append(
            Publication(
                tuple(general), _encode(self._render_general(conv)), conv.id, self._uuid(), t
            )
        )
        # The media publication's correlation id comes from a generator of
        # its own, so the main one draws exactly what it drew before media
        # bodies existed, and every seed keeps its story.
        out.append(
            Publication(
                tuple(by_media),
                _encode(self._render_media(conv)),
                conv.id,
                str(uuid.UUID(int=self._media_rng.getrandbits(128), version=4)),
                t,
            )
        )
        # A user hears the snapshot that ends their part, then nothing more.
        for p in conv.participants:
            if p.listening and p.done:
                p.listening = False

    def _detail(
        self,
        conv: _Conversation,
        event: str,
        p: _Participant,
        t: float,
        disconnect_type: str | None = None,
        **extra: Any,
    ) -> None:
        """Publish one flat ``v2.detail.events.conversation.{id}.{event}`` body."""
        body: dict[str, Any] = {
            "eventTime": round((self.epoch + t) * 1000),
            "conversationId": conv.id,
            "participantId": p.id,
            "sessionId": p.comm.id,
            "mediaType": _MEDIA_TYPE[conv.media].upper(),
        }
        # The customer's events have no queue (their models lack the field).
        if not event.startswith("customer."):
            body["queueId"] = conv.queue.id
        if p.staff is not None:
            body["userId"] = p.staff.agent.id
        if disconnect_type is not None:
            body["disconnectType"] = _DETAIL_DISCONNECT_TYPES[disconnect_type]
        # Detail events spell their enums in upper case (INBOUND, VOICE).
        body["direction"] = p.comm.direction.upper()
        body.update(extra)
        topic = conversation_detail_events(conv.id, event)
        self._out.append(Publication((topic,), _encode(body), conv.id, self._uuid(), t))

    def _presence_body(self, staff: _Staff) -> dict[str, Any]:
        pid, name = staff.presence
        return {
            "source": "PURECLOUD",
            "presenceDefinition": {"id": pid, "systemPresence": name},
            "primary": True,
            "message": "",
            "modifiedDate": self._iso(staff.presence_since),
        }

    def _routing_body(self, staff: _Staff) -> dict[str, Any]:
        return {
            "id": staff.agent.id,
            "routingStatus": {
                "status": staff.routing,
                "startTime": self._iso(staff.routing_since),
            },
        }

    def _set_presence(self, staff: _Staff, presence: tuple[str, str], t: float) -> None:
        staff.presence, staff.presence_since = presence, t
        body = _encode(self._presence_body(staff))
        topic = user_presence(staff.agent.id)
        self._out.append(Publication((topic,), body, None, self._uuid(), t))

    def _set_routing(self, staff: _Staff, status: str, t: float) -> None:
        if staff.routing == status:
            return
        staff.routing, staff.routing_since = status, t
        body = _encode(self._routing_body(staff))
        topic = user_routing_status(staff.agent.id)
        self._out.append(Publication((topic,), body, None, self._uuid(), t))

    # -- rendering ----------------------------------------------------------

    def _render_general(self, conv: _Conversation) -> dict[str, Any]:
        """The body of the general topics (``….conversations``, queue and user alike).

        Participants carry ``userId``/``queueId`` and one list per media, each
        holding communications with their own ``state`` (vendor models
        ``QueueConversationEventTopicConversation`` and
        ``ConversationEventTopicConversation``, which have the same fields).
        """
        return {
            "id": conv.id,
            "participants": self._listed_participants(conv, rest=False),
            "recordingState": conv.recording,
            "maxParticipants": _MAX_PARTICIPANTS,
            "recentTransfers": [self._render_transfer(x, rest=False) for x in conv.transfers],
            "divisions": conv.divisions,
        }

    def _render_media(self, conv: _Conversation) -> dict[str, Any]:
        """The body of the media topics (``….conversations.calls`` and the rest).

        Each participant is a *media participant*: its communication's state,
        direction, times and media fields sit on the participant itself, and
        the user and queue are ``{id, name}`` references (vendor models such
        as ``QueueConversationCallEventTopicCallConversation``). Only calls
        and messages carry ``monitoredParticipantId`` in this shape.
        """
        media = conv.media
        participants = []
        for p in conv.participants:
            c = p.comm
            d = self._participant_common(p)
            d["startTime"] = p.start
            d["state"] = c.state
            d["initialState"] = c.initial_state
            d["direction"] = c.direction
            if c.disconnect_type is not None:
                d["disconnectType"] = c.disconnect_type
            d["held"] = c.held
            if c.hold_start is not None:
                d["startHoldTime"] = c.hold_start
            if p.staff is not None:
                d["user"] = {"id": p.staff.agent.id, "name": p.staff.agent.name}
            if p.queue_id is not None:
                d["queue"] = {"id": p.queue_id, "name": conv.queue.name}
            d["attributes"] = p.attributes
            if c.peer_id is not None:
                d["peer"] = c.peer_id
            if media is Media.CALLS:
                d["provider"] = "Edge"
                d["muted"] = False
                d["confined"] = False
                d["recording"] = conv.recording == "active"
                d["recordingState"] = conv.recording
                if p.monitored_id is not None:
                    d["monitoredParticipantId"] = p.monitored_id
            elif media is Media.CHATS:
                d["provider"] = "PureCloud Webchat v2"
                d["roomId"] = f"{conv.id}@conference.example.genesys"
            elif media is Media.EMAILS:
                d["provider"] = "PureCloud Email"
                d["subject"] = conv.subject
                d["messagesSent"] = _messages_sent(c)
                d["autoGenerated"] = False
                d["spam"] = False
            elif media is Media.MESSAGES:
                d["provider"] = "PureCloud Messaging"
                d["type"] = conv.message_type
                if p.monitored_id is not None:
                    d["monitoredParticipantId"] = p.monitored_id
                if p is conv.customer:
                    # Message *details*, not communications, are what this
                    # list holds here; the message is a reference.
                    d["messages"] = [
                        {"message": {"id": c.id}} | detail for detail in _opening_message(p)
                    ]
            elif media is Media.CALLBACKS:
                d["callbackNumbers"] = conv.callback_numbers
                d["callbackUserName"] = conv.customer.name
                if conv.scheduled_time is not None:
                    d["callbackScheduledTime"] = conv.scheduled_time
                d["skipEnabled"] = False
                d["externalCampaign"] = False
            participants.append(d)
        body: dict[str, Any] = {"id": conv.id, "participants": participants}
        body["otherMediaUris"] = []
        body["divisions"] = conv.divisions
        if media is Media.CALLS:
            body["recordingState"] = conv.recording
            body["securePause"] = False
            body["maxParticipants"] = _MAX_PARTICIPANTS
        return body

    def _render_rest(self, conv: _Conversation) -> dict[str, Any]:
        """The conversation as ``GET /api/v2/conversations/{id}`` returns it.

        Vendor model ``Conversation``.

        Close to the general topic shape, with REST's own differences:
        upper-case ``recordingState``, ``startTime``/``endTime``, the
        wrap-up code's ``name``, no ``wrapupExpected``, addressable references.
        """
        body: dict[str, Any] = {"id": conv.id, "startTime": self._iso(conv.start)}
        if conv.end is not None:
            body["endTime"] = self._iso(conv.end)
        body["participants"] = self._listed_participants(conv, rest=True)
        body["maxParticipants"] = _MAX_PARTICIPANTS
        body["recordingState"] = conv.recording.upper()
        body["divisions"] = conv.divisions
        body["recentTransfers"] = [self._render_transfer(x, rest=True) for x in conv.transfers]
        body["selfUri"] = f"/api/v2/conversations/{conv.id}"
        return body

    def _listed_participants(self, conv: _Conversation, *, rest: bool) -> list[dict[str, Any]]:
        """Participants with ids and one list per media: the general and REST shapes."""
        key = conv.media.value
        participants = []
        for p in conv.participants:
            d = self._participant_common(p, rest=rest)
            if rest:
                d["startTime"] = p.start
            if p.staff is not None:
                d["userId"] = p.staff.agent.id
                if rest:
                    d["userUri"] = f"/api/v2/users/{p.staff.agent.id}"
            if p.queue_id is not None:
                d["queueId"] = p.queue_id
                if rest:
                    d["queueName"] = conv.queue.name
            # The general topics say whether wrap-up is expected; REST does not.
            if p.wrapup_expected is not None and not rest:
                d["wrapupExpected"] = p.wrapup_expected
            if p.monitored_id is not None:
                d["monitoredParticipantId"] = p.monitored_id
            d["attributes"] = p.attributes
            comm = self._render_comm(conv, p, rest=rest)
            for name in _LISTS:
                d[name] = [comm] if name == key else []
            participants.append(d)
        return participants

    def _participant_common(self, p: _Participant, *, rest: bool = False) -> dict[str, Any]:
        """The participant fields every shape spells the same way."""
        d: dict[str, Any] = {"id": p.id, "purpose": p.purpose, "name": p.name}
        if p.address is not None:
            d["address"] = p.address
        if p.connected is not None:
            d["connectedTime"] = p.connected
        if p.end is not None:
            d["endTime"] = p.end
        if p.acw_start is not None:
            d["startAcwTime"] = p.acw_start
        if p.acw_end is not None:
            d["endAcwTime"] = p.acw_end
        if p.wrapup_required is not None:
            d["wrapupRequired"] = p.wrapup_required
        if p.wrapup is not None:
            wrapup = dict(p.wrapup)
            if rest and p.wrapup_name is not None:
                wrapup["name"] = p.wrapup_name
            d["wrapup"] = wrapup
        if p.alerting_timeout_ms is not None:
            d["alertingTimeoutMs"] = p.alerting_timeout_ms
        if p.routed:
            queue: dict[str, str] = {"id": p.queue_id or ""}
            if rest:
                queue["selfUri"] = f"/api/v2/routing/queues/{p.queue_id}"
            d["conversationRoutingData"] = {
                "queue": queue,
                "priority": 0,
                "skills": [],
                "scoredAgents": [],
            }
        return d

    def _render_comm(self, conv: _Conversation, p: _Participant, *, rest: bool) -> dict[str, Any]:
        """A participant's communication in the general (``rest=False``) or REST shape."""
        media = conv.media
        c = p.comm
        d: dict[str, Any] = {
            "id": c.id,
            "state": c.state,
            "initialState": c.initial_state,
        }
        # The general topics' chats carry no direction; REST's do.
        if media is not Media.CHATS or rest:
            d["direction"] = c.direction
        d["held"] = c.held
        if c.connected is not None:
            d["connectedTime"] = c.connected
        if c.disconnected is not None:
            d["disconnectedTime"] = c.disconnected
        if c.disconnect_type is not None:
            d["disconnectType"] = c.disconnect_type
        if c.peer_id is not None:
            d["peerId"] = c.peer_id
        if c.acw_required:
            d["afterCallWorkRequired"] = True
        if c.acw_state is not None:
            acw: dict[str, Any] = {"state": c.acw_state, "startTime": c.acw_start}
            if c.acw_end is not None:
                acw["endTime"] = c.acw_end
            d["afterCallWork"] = acw
        if media is Media.CALLS:
            d["recording"] = conv.recording == "active"
            d["recordingState"] = conv.recording
            d["muted"] = False
            d["confined"] = False
            if c.hold_start is not None:
                d["startHoldTime"] = c.hold_start
            d["provider"] = "Edge"
        elif media is Media.MESSAGES:
            d["type"] = conv.message_type
            if p is conv.customer:
                d["messages"] = [{"messageId": c.id} | detail for detail in _opening_message(p)]
        elif media is Media.EMAILS:
            d["subject"] = conv.subject
            d["messagesSent"] = _messages_sent(c)
        elif media is Media.CALLBACKS:
            d["callbackNumbers"] = conv.callback_numbers
            if conv.scheduled_time is not None:
                d["callbackScheduledTime"] = conv.scheduled_time
        return d

    def _render_transfer(self, transfer: _Transfer, *, rest: bool) -> dict[str, Any]:
        """A ``recentTransfers`` entry: the general topics spell enums in lower case, REST not."""
        body: dict[str, Any] = {
            "id": transfer.id,
            "state": "Complete" if rest else "complete",
            "transferType": "Unattended" if rest else "unattended",
            "dateIssued": transfer.issued,
            "initiator": {"userId": transfer.initiator},
            "modifiedBy": {
                "id": transfer.initiator,
                "selfUri": f"/api/v2/users/{transfer.initiator}",
            },
        }
        if transfer.target_user is not None:
            body["destination"] = {"userId": transfer.target_user}
        return body

    def _analytics(self, conv: _Conversation) -> dict[str, Any]:
        media_type = _MEDIA_TYPE[conv.media]
        record: dict[str, Any] = {
            "conversationId": conv.id,
            "conversationStart": self._iso(conv.start),
        }
        if conv.end is not None:
            record["conversationEnd"] = self._iso(conv.end)
        record["originatingDirection"] = "inbound"
        record["divisionIds"] = [self._division_id]
        participants = []
        for p in conv.participants:
            session: dict[str, Any] = {
                "mediaType": media_type,
                "sessionId": p.comm.id,
                "direction": p.comm.direction,
            }
            if conv.message_type is not None:
                session["messageType"] = conv.message_type
            segments = []
            for s in p.segments:
                seg: dict[str, Any] = {"segmentType": s.kind, "segmentStart": s.start}
                if s.end is not None:
                    seg["segmentEnd"] = s.end
                if s.queue_id is not None:
                    seg["queueId"] = s.queue_id
                if s.disconnect_type is not None:
                    seg["disconnectType"] = s.disconnect_type
                segments.append(seg)
            session["segments"] = segments
            entry: dict[str, Any] = {
                "participantId": p.id,
                "participantName": p.name,
                "purpose": p.purpose,
            }
            if p.staff is not None:
                entry["userId"] = p.staff.agent.id
            entry["sessions"] = [session]
            participants.append(entry)
        record["participants"] = participants
        return record

    # -- conversation lifecycle --------------------------------------------

    def _arrive(self, t: float, gen: int) -> None:
        if gen != self._arrival_gen:
            return  # superseded by a rate change
        rng = self._rng
        self._schedule(t + rng.expovariate(self._rate), self._arrive, gen)
        queues = self._routable_queues(t)
        if not queues:
            return
        queue = rng.choice(queues)
        roll, media = rng.random(), MEDIA_MIX[-1][0]
        for candidate, share in MEDIA_MIX:
            if roll < share:
                media = candidate
                break
            roll -= share
        first, last = rng.choice(_FIRST), rng.choice(_CUSTOMER_LAST)
        name = f"{first} {last}"
        phone = f"+1{rng.randint(201, 989)}555{rng.randint(0, 9999):04d}"
        at = self._iso(t)
        customer = _Participant(
            self._uuid(), "customer", name, _Comm(self._uuid(), "connected", "connected"), start=at
        )
        customer.comm.connected = at
        customer.connected = at
        conv = _Conversation(
            id=self._uuid(),
            media=media,
            queue=queue,
            start=t,
            customer=customer,
            participants=[customer],
            divisions=[
                {
                    "division": {
                        "id": self._division_id,
                        "selfUri": f"/api/v2/authorization/divisions/{self._division_id}",
                    },
                    "entities": [{"id": queue.id, "selfUri": f"/api/v2/routing/queues/{queue.id}"}],
                }
            ],
        )
        self._active[conv.id] = conv
        if media is Media.CALLS:
            customer.address = f"tel:{phone}"
        elif media is Media.EMAILS:
            customer.address = f"{first}.{last}@example.net".lower()
            conv.subject = rng.choice(_SUBJECTS)
        elif media is Media.MESSAGES:
            roll, conv.message_type = rng.random(), _MESSAGE_TYPES[-1][0]
            for kind, share in _MESSAGE_TYPES:
                if roll < share:
                    conv.message_type = kind
                    break
                roll -= share
            if conv.message_type != "webmessaging":
                customer.address = phone
        elif media is Media.CALLBACKS:
            customer.address = f"tel:{phone}"
            conv.callback_numbers = [phone]

        if media is Media.CALLS:
            customer.open_segment("interact", at, None)
            ivr = _Participant(
                self._uuid(),
                "ivr",
                _IVR_NAME,
                _Comm(self._uuid(), "connected", "connected", peer_id=customer.comm.id),
                address=_DNIS,
                connected=at,
                start=at,
            )
            ivr.comm.connected = at
            ivr.open_segment("ivr", at, None)
            conv.participants.append(ivr)
            self._publish(conv, t)
            self._detail(conv, "customer.start", customer, t)
            self._schedule(t + self._between(_IVR_S), self._ivr_done, conv, ivr)
        elif media is Media.CALLBACKS:
            due = t + self._between(_CALLBACK_DELAY_S)
            conv.scheduled_time = self._iso(due)
            customer.comm.state = customer.comm.initial_state = "scheduled"
            customer.comm.connected = customer.connected = None
            self._publish(conv, t)
            self._detail(conv, "customer.start", customer, t)
            # Rescheduled once, half-way there, to as much later: a snapshot
            # that differs from the last only in callbackScheduledTime (no
            # draw from the generator, so every other choice stays put).
            self._schedule((t + due) / 2, self._callback_rescheduled, conv, due + (due - t) / 2)
        else:
            customer.open_segment("interact", at, queue.id)
            acd = self._add_acd(conv, t)
            self._publish(conv, t)
            self._detail(conv, "customer.start", customer, t)
            self._detail(conv, "acd.start", acd, t)
            self._enqueue(conv, t)

    def _add_acd(self, conv: _Conversation, t: float) -> _Participant:
        at = self._iso(t)
        acd = _Participant(
            self._uuid(),
            "acd",
            conv.queue.name,
            _Comm(self._uuid(), "connected", "connected", peer_id=conv.customer.comm.id),
            queue_id=conv.queue.id,
            connected=at,
            routed=True,
            address=_DNIS if conv.media is Media.CALLS else None,
            start=at,
        )
        acd.comm.connected = at
        acd.open_segment("interact", at, conv.queue.id)
        conv.participants.append(acd)
        conv.acd = acd
        return acd

    def _ivr_done(self, t: float, conv: _Conversation, ivr: _Participant) -> None:
        at = self._iso(t)
        self._disconnect(ivr, at, "transfer")
        acd = self._add_acd(conv, t)
        self._publish(conv, t)
        self._detail(conv, "acd.start", acd, t)
        self._enqueue(conv, t)

    def _callback_rescheduled(self, t: float, conv: _Conversation, due: float) -> None:
        conv.scheduled_time = self._iso(due)
        self._publish(conv, t)
        self._schedule(due, self._callback_due, conv)

    def _callback_due(self, t: float, conv: _Conversation) -> None:
        at = self._iso(t)
        customer = conv.customer
        customer.comm.state = "connected"
        customer.comm.connected = customer.connected = at
        customer.open_segment("interact", at, conv.queue.id)
        acd = self._add_acd(conv, t)
        self._publish(conv, t)
        self._detail(conv, "acd.start", acd, t)
        self._enqueue(conv, t)

    def _disconnect(self, p: _Participant, at: str, disconnect_type: str) -> None:
        c = p.comm
        c.state = "disconnected"
        c.disconnected = at
        c.disconnect_type = disconnect_type
        p.end = at
        p.close_segment(at, disconnect_type)

    # -- queueing and routing ------------------------------------------------

    def _free_member(self, queue: Queue, exclude: _Staff | None = None) -> _Staff | None:
        """The member agent idle the longest, if any is free."""
        best: _Staff | None = None
        for uid in queue.member_ids:
            staff = self._staff[uid]
            if (
                staff.free
                and staff is not exclude
                and (
                    best is None or (staff.idle_since, staff.index) < (best.idle_since, best.index)
                )
            ):
                best = staff
        return best

    def _enqueue(self, conv: _Conversation, t: float, *, front: bool = False) -> None:
        """Offer the conversation to a free agent, or wait in the queue for one."""
        staff = self._free_member(conv.queue)
        if staff is not None:
            self._alert(conv, staff, t)
            return
        if conv.wait_key == 0:
            self._seq += 1
            conv.wait_key = self._seq
        conv.waiting = True
        conv.wait_gen += 1
        qid = conv.queue.id
        line = self._waiting[qid]
        entry = (conv.wait_key, conv, conv.wait_gen)
        # Timed-out and transferred conversations already waited their turn.
        if front:
            line.appendleft(entry)
        else:
            line.append(entry)
        self._waiting_live[qid] += 1
        if len(line) > 64 and len(line) > 2 * self._waiting_live[qid]:
            # Abandoned entries are removed lazily at the head; compact when
            # they pile up behind a queue nobody answers.
            self._waiting[qid] = deque(e for e in line if _valid(e))
        live = conv.media in (Media.CALLS, Media.CHATS, Media.MESSAGES)
        patience = self._between(_PATIENCE_S if live else _PATIENCE_DEFERRED_S)
        self._schedule(t + patience, self._abandon, conv, conv.wait_gen)

    def _pick_work(self, staff: _Staff, t: float) -> None:
        """A newly free agent takes the longest-waiting conversation of its queues."""
        best: tuple[int, _Conversation, int] | None = None
        for qid in staff.agent.queue_ids:
            line = self._waiting[qid]
            while line and not _valid(line[0]):
                line.popleft()
            if line and (best is None or line[0][0] < best[0]):
                best = line[0]
        if best is None:
            return
        conv = best[1]
        self._waiting[conv.queue.id].popleft()
        self._waiting_live[conv.queue.id] -= 1
        conv.waiting = False
        self._alert(conv, staff, t)

    def _alert(
        self, conv: _Conversation, staff: _Staff, t: float, *, transfer: bool = False
    ) -> None:
        conv.waiting = False
        staff.state = _ALERTING
        at = self._iso(t)
        agent = staff.agent
        p = _Participant(
            self._uuid(),
            "agent",
            agent.name,
            _Comm(
                self._uuid(),
                "alerting",
                "alerting",
                peer_id=conv.customer.comm.id,
                acw_required=True,
            ),
            staff=staff,
            queue_id=conv.queue.id,
            wrapup_required=True,
            routed=True,
            alerting_timeout_ms=round(_ALERT_TIMEOUT_S * 1000),
            listening=True,
            start=at,
        )
        p.open_segment("alert", at, conv.queue.id)
        conv.participants.append(p)
        conv.agent = p
        self._publish(conv, t)
        self._set_routing(staff, "INTERACTING", t)
        # A transfer's target has been told to expect it, so it never times out.
        if not transfer and self._rng.random() < _P_TIMEOUT:
            self._schedule(t + _ALERT_TIMEOUT_S, self._alert_timeout, conv, p)
        else:
            self._schedule(t + self._between(_ALERT_S), self._answer, conv, p)

    def _alert_timeout(self, t: float, conv: _Conversation, p: _Participant) -> None:
        assert p.staff is not None
        staff = p.staff
        self._disconnect(p, self._iso(t), "timeout")
        p.wrapup_expected = False
        conv.agent = None
        staff.state = _NOT_RESPONDING
        self._publish(conv, t)
        self._set_routing(staff, "NOT_RESPONDING", t)
        self._schedule(t + self._between(_RECOVER_S), self._recover, staff)
        self._enqueue(conv, t, front=True)

    def _abandon(self, t: float, conv: _Conversation, gen: int) -> None:
        if not conv.waiting or conv.wait_gen != gen:
            return  # an agent got there first
        conv.waiting = False
        self._waiting_live[conv.queue.id] -= 1
        at = self._iso(t)
        hang_up = "endpoint" if conv.media in (Media.CALLS, Media.CALLBACKS) else "client"
        self._disconnect(conv.customer, at, hang_up)
        acd = conv.acd
        assert acd is not None
        self._disconnect(acd, at, "peer")
        ended = self._maybe_end(conv, t)
        self._publish(conv, t)
        self._detail(conv, "acd.end", acd, t, "peer")
        self._detail(conv, "customer.end", conv.customer, t, hang_up)
        if ended:
            self._archive(conv)

    def _answer(self, t: float, conv: _Conversation, p: _Participant) -> None:
        assert p.staff is not None
        at = self._iso(t)
        p.comm.state = "connected"
        p.comm.connected = p.connected = at
        p.wrapup_expected = True
        p.close_segment(at)
        p.open_segment("interact", at, conv.queue.id)
        p.staff.state = _BUSY
        acd = conv.acd
        acd_left = acd is not None and acd.comm.state == "connected"
        if acd is not None and acd_left:
            self._disconnect(acd, at, "transfer")
        if conv.media is Media.CALLS:
            conv.recording = "active"
        self._publish(conv, t)
        if acd is not None and acd_left:
            self._detail(conv, "acd.end", acd, t, "transfer")
        self._detail(conv, "user.start", p, t)

        rng = self._rng
        talk = self._between(_TALK_S)
        if not conv.transferred and rng.random() < _P_TRANSFER:
            self._schedule(t + talk * rng.uniform(0.3, 0.7), self._transfer, conv, p)
        else:
            self._schedule(t + talk, self._talk_end, conv, p)
            if conv.media is Media.CALLS and rng.random() < _P_HOLD:
                start = t + talk * rng.uniform(0.2, 0.5)
                self._schedule(start, self._hold, conv, p, True)
                self._schedule(
                    start + talk * self._between(_HOLD_FRACTION), self._hold, conv, p, False
                )
        if rng.random() < _P_MONITOR:
            self._schedule(t + talk * rng.uniform(0.1, 0.5), self._monitor_start, conv, p)

    def _hold(self, t: float, conv: _Conversation, p: _Participant, held: bool) -> None:
        if conv.agent is not p or p.comm.state != "connected":
            return
        at = self._iso(t)
        p.comm.held = held
        if held:
            # startHoldTime stays after the hold ends, as on the platform; it
            # also keeps the newest timestamp of the snapshot from going back.
            p.comm.hold_start = at
        p.close_segment(at)
        p.open_segment("hold" if held else "interact", at, conv.queue.id)
        self._publish(conv, t)

    def _talk_end(self, t: float, conv: _Conversation, p: _Participant) -> None:
        if conv.agent is not p or p.comm.state != "connected":
            return
        if conv.media is Media.EMAILS:
            # The agent's reply goes out before the email interaction closes.
            p.comm.state = "transmitting"
            self._publish(conv, t)
            self._schedule(t + self._between(_EMAIL_SEND_S), self._hang_up, conv, p, False)
            return
        self._hang_up(t, conv, p, self._rng.random() < _P_CUSTOMER_HANGS_UP)

    def _hang_up(self, t: float, conv: _Conversation, p: _Participant, by_customer: bool) -> None:
        at = self._iso(t)
        if by_customer:
            customer_dt = "endpoint" if conv.media in (Media.CALLS, Media.CALLBACKS) else "client"
            agent_dt = "peer"
        else:
            customer_dt, agent_dt = "peer", "client"
        self._disconnect(conv.customer, at, customer_dt)
        self._disconnect(p, at, agent_dt)
        self._start_acw(p, t, at)
        conv.agent = None
        supervisor = self._drop_supervisor(conv, at)
        self._publish(conv, t)
        self._detail(conv, "customer.end", conv.customer, t, customer_dt)
        self._detail(conv, "user.end", p, t, agent_dt)
        if supervisor is not None:
            self._detail(conv, "user.end", supervisor, t, "peer")
            self._release_supervisor(supervisor, t)
        self._schedule(t + self._between(_ACW_S), self._acw_done, conv, p)

    def _start_acw(self, p: _Participant, t: float, at: str) -> None:
        p.acw_started = t
        p.comm.acw_state = "pending"
        p.comm.acw_start = p.acw_start = at
        p.open_segment("wrapup", at, p.queue_id)

    def _acw_done(self, t: float, conv: _Conversation, p: _Participant) -> None:
        assert p.staff is not None
        at = self._iso(t)
        code, name = self._rng.choice(self._wrapups)
        p.comm.acw_state = "complete"
        p.comm.acw_end = p.acw_end = at
        p.wrapup_name = name
        p.wrapup = {
            "code": code,
            "notes": "",
            "durationSeconds": round(t - p.acw_started),
            "endTime": at,
        }
        p.close_segment(at)
        ended = self._maybe_end(conv, t)
        self._publish(conv, t)
        self._detail(conv, "acw", p, t, wrapupCode=code)
        if ended:
            self._archive(conv)
        self._become_idle(p.staff, t)

    def _transfer(self, t: float, conv: _Conversation, p: _Participant) -> None:
        if conv.agent is not p or p.comm.state != "connected":
            return
        assert p.staff is not None
        conv.transferred = True
        at = self._iso(t)
        target = self._free_member(conv.queue, exclude=p.staff)
        self._disconnect(p, at, "transfer")
        self._start_acw(p, t, at)
        conv.agent = None
        supervisor = self._drop_supervisor(conv, at)
        conv.transfers.append(
            _Transfer(
                self._uuid(),
                at,
                p.staff.agent.id,
                target.agent.id if target is not None else None,
            )
        )
        if target is not None:
            # The snapshot shows the first agent leaving and the second alerting.
            self._alert(conv, target, t, transfer=True)
            self._detail(conv, "user.end", p, t, "transfer")
        else:
            acd = self._add_acd(conv, t)
            self._publish(conv, t)
            self._detail(conv, "user.end", p, t, "transfer")
            self._detail(conv, "acd.start", acd, t)
            self._enqueue(conv, t, front=True)
        if supervisor is not None:
            self._detail(conv, "user.end", supervisor, t, "peer")
            self._release_supervisor(supervisor, t)
        self._schedule(t + self._between(_ACW_S), self._acw_done, conv, p)

    # -- supervisors ----------------------------------------------------------

    def _monitor_start(self, t: float, conv: _Conversation, p: _Participant) -> None:
        if conv.agent is not p or p.comm.state != "connected" or conv.supervisor is not None:
            return
        candidates = [s for s in self._staff.values() if s.free]
        if not candidates:
            # Someone on a break can still listen in.
            candidates = [
                s for s in self._staff.values() if s.state == _ON_BREAK and s.monitoring is None
            ]
        if not candidates:
            return
        staff = self._rng.choice(candidates)
        at = self._iso(t)
        s = _Participant(
            self._uuid(),
            "user",
            staff.agent.name,
            _Comm(self._uuid(), "connected", "connected", direction="outbound", peer_id=p.comm.id),
            staff=staff,
            connected=at,
            monitored_id=p.id,
            listening=True,
            start=at,
        )
        s.comm.connected = at
        s.open_segment("interact", at, conv.queue.id)
        conv.participants.append(s)
        conv.supervisor = s
        staff.monitoring = conv
        self._publish(conv, t)
        self._detail(conv, "user.start", s, t)
        self._schedule(t + self._between(_MONITOR_S), self._monitor_end, conv, s)

    def _monitor_end(self, t: float, conv: _Conversation, s: _Participant) -> None:
        if conv.supervisor is not s:
            return
        self._disconnect(s, self._iso(t), "client")
        conv.supervisor = None
        self._publish(conv, t)
        self._detail(conv, "user.end", s, t, "client")
        self._release_supervisor(s, t)

    def _drop_supervisor(self, conv: _Conversation, at: str) -> _Participant | None:
        """Disconnect the supervisor because the monitored agent left; publish is the caller's."""
        s = conv.supervisor
        if s is not None:
            self._disconnect(s, at, "peer")
            conv.supervisor = None
        return s

    def _release_supervisor(self, s: _Participant, t: float) -> None:
        staff = s.staff
        assert staff is not None
        staff.monitoring = None
        if staff.state == _IDLE:
            if staff.break_pending:
                self._start_break(staff, t)
            else:
                self._pick_work(staff, t)

    # -- agents ---------------------------------------------------------------

    def _become_idle(self, staff: _Staff, t: float) -> None:
        """The agent finished something; take a due break or the next conversation."""
        if staff.break_pending and staff.monitoring is None:
            self._start_break(staff, t)
            return
        staff.state = _IDLE
        staff.idle_since = t
        self._set_routing(staff, "IDLE", t)
        if staff.monitoring is None:
            self._pick_work(staff, t)

    def _recover(self, t: float, staff: _Staff) -> None:
        self._become_idle(staff, t)

    def _break_due(self, t: float, staff: _Staff) -> None:
        if staff.free:
            self._start_break(staff, t)
        else:
            staff.break_pending = True

    def _start_break(self, staff: _Staff, t: float) -> None:
        staff.break_pending = False
        staff.state = _ON_BREAK
        meal = self._rng.random() < _P_MEAL
        self._set_presence(staff, _MEAL if meal else _BREAK, t)
        self._set_routing(staff, "OFF_QUEUE", t)
        self._schedule(t + self._between(_MEAL_S if meal else _BREAK_S), self._break_end, staff)

    def _break_end(self, t: float, staff: _Staff) -> None:
        self._set_presence(staff, _ON_QUEUE, t)
        staff.state = _IDLE
        staff.idle_since = t
        self._set_routing(staff, "IDLE", t)
        self._schedule(t + self._rng.expovariate(1 / _BREAK_GAP_MEAN_S), self._break_due, staff)
        if staff.monitoring is None:
            self._pick_work(staff, t)

    # -- the end ----------------------------------------------------------------

    def _maybe_end(self, conv: _Conversation, t: float) -> bool:
        """Mark the conversation ended when nobody is left in it; True if so."""
        if not all(p.done for p in conv.participants):
            return False
        conv.end = t
        if conv.media in _TERMINATES:
            for p in conv.participants:
                p.comm.state = "terminated"
        return True

    def _archive(self, conv: _Conversation) -> None:
        """Forget the live objects of an ended conversation, keeping it compressed."""
        del self._active[conv.id]
        if self._retain == 0:
            return
        assert conv.end is not None
        # Level 1: ended conversations are archived at the arrival rate and
        # read back rarely, so speed matters more than the last few bytes.
        self._ended[conv.id] = _Ended(
            conv.start,
            conv.end,
            conv.queue.id,
            zlib.compress(_encode(self._render_rest(conv)), 1),
            zlib.compress(_encode(self._analytics(conv)), 1),
        )
        if len(self._ended) > self._retain:
            self._ended.popitem(last=False)


def _opening_message(customer: _Participant) -> list[dict[str, Any]]:
    """The message that opened a messaging conversation, less its id (spelt per shape)."""
    return [{"messageTime": customer.start, "messageStatus": "received", "messageSegmentCount": 1}]


def _messages_sent(c: _Comm) -> int:
    """An email interaction has sent the agent's reply once it is transmitting."""
    return 1 if c.state in ("transmitting", "disconnected") else 0


def _valid(entry: tuple[int, _Conversation, int]) -> bool:
    """A queue entry still stands for a waiting conversation."""
    _, conv, gen = entry
    return conv.waiting and conv.wait_gen == gen


def _check_rate(rate: float) -> None:
    if not (rate >= 0 and math.isfinite(rate)):
        raise ValueError(
            f"rate must be a finite number >= 0 conversations per second, not {rate!r}"
        )
