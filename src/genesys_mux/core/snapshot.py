"""Facts about one notification body: what a stream filters, de-duplicates and orders on.

Theory of operation
-------------------
The platform sends no sequence numbers (reference §6), so everything the
stream pipeline knows about an event comes from its body. This module turns
a raw ``eventBody`` into a small, immutable :class:`EventFacts`:

``key``
    What the event is about, for de-duplication and ordering: the
    conversation id for conversation snapshots, ``detail:{topic}`` for
    detail events, ``presence:{userId}`` and ``routing:{userId}`` for a user's presence and
    routing status (prefixed so the two never collide with each other or a
    conversation), and the topic itself for anything else.
``version``
    A number that grows as the thing named by ``key`` changes, in Unix
    seconds; ``None`` when the topic has none, which leaves the event to
    exact-duplicate detection alone.
``hash``
    What makes two events the same event, for de-duplication. For a
    conversation snapshot it is the *state digest* (below); for any other
    body it is :func:`canonical_hash`, so key order, whitespace and the
    envelope's ``CorrelationId`` never make a repeat look new.
``conversation``
    For conversation topics, the :class:`ConversationFacts` of the snapshot.

Three shapes of one snapshot
............................
The platform sends a conversation in two shapes (reference §7, "Two body
shapes"), and REST back-fill brings a third:

- **general** topics (``….conversations``) and ``GET
  /api/v2/conversations/{id}``: participants carry ``userId`` and
  ``queueId`` and one list per media (``calls[]``, ``chats[]``...) of
  communications, each with its ``state``;
- **media** topics (``….conversations.calls`` and the other suffixes):
  each participant *is* one communication of the topic's media, with
  ``state``, ``held``, ``disconnectType`` (and ``type`` for messages) on
  itself, and the ids under ``user.id`` and ``queue.id``. Its
  ``messages[]`` are message details, not communications.

A participant with a ``state`` of its own is read as a media participant,
whose media is the topic's (passed in: the body does not say it); any other
participant is read through its media lists. Both feed the same
computation, so the same conversation gives the same media, states, queue
and user ids, predicates, version and state digest in every shape. The one
exception is the platform's: chat, email and callback media participants
have no ``monitoredParticipantId``, so ``monitoring`` reads false there
(streams that filter on it subscribe the general topic instead).

The version key of a conversation snapshot
..........................................
A snapshot carries a timestamp for each thing that *has happened* to it.
Its version is the newest of these (``0.0`` when there is none):

- participant: ``connectedTime``, ``endTime``, ``startAcwTime``,
  ``endAcwTime``, ``wrapup.endTime``;
- every communication of every media list: ``connectedTime``,
  ``disconnectedTime``, ``afterCallWork.startTime``,
  ``afterCallWork.endTime``, ``wrapup.endTime``.

A media participant carries the participant-level fields, which hold the
same instants as its communication's. Once set, none of these changes or
disappears, and participants are never
removed from a conversation, so a later snapshot never has a smaller
maximum: the key never goes backwards. A field that could go backwards
would be worse than a missing one, because the pipeline drops an event
whose version is *older* than one already delivered; a missing field only
leaves two snapshots tied, and ties fall to the content hash. So these are
left out on purpose:

- ``startHoldTime``: the vendor schema describes it as set only *while* the
  communication is on hold, so taking a call off hold may remove it and
  pull the maximum back (the emulator keeps it, which is harmless here);
- callback ``scheduledTime`` / ``callbackScheduledTime``: a plan for the
  future, not an event; it is ahead of every event, and a reschedule can
  move it either way (the digest covers it instead, below);
- message ``messages[].messageTime``: not in the reference, and whether the
  platform truncates that list is unknown;
- a media participant's ``startTime``: the general shape has no such field,
  so counting it would give the same state two versions.

The state digest
................
Two snapshots are the same event when they describe the same state, not
when their bytes match: the platform may re-serialise a frame, and a
back-filled REST body describes the state in another shape. The digest
covers the conversation id, the version key, and for each participant
with a communication (sorted by participant id): its id, purpose, user
and queue ids, wrap-up code, attributes, and per communication its media,
``state``, ``held``, ``startHoldTime``, ``disconnectType``, ``muted``,
``recording``, ``recordingState``, message ``type``, each message
detail's id and ``messageStatus``, and a callback's
``callbackScheduledTime`` (only where there is one, so that every other
communication digests to the bytes it did before it was added: a
reschedule is a change a consumer must see). These are the fields all
three shapes carry. A snapshot differing from a delivered one only elsewhere (names and
addresses, routing data, queue media settings, scripts) counts as a
duplicate; every change a stream filters or orders on is covered, and so
is every change of a communication a consumer can see.

Timestamps are read by msgspec's RFC 3339 parser. One without a zone is
taken as UTC, as :mod:`genesys_mux.core.timestamps` does; one that does not
parse is ignored.

Fast path and tolerant path
...........................
Real snapshots are 3-50 KB and arrive for every change, so the common case
decodes in one pass into private msgspec structs that name only the fields
used here; msgspec skips everything else without building Python objects,
and parses the timestamps in C. Those structs are strict about types, so a
body with one badly typed field (or an unparseable timestamp) fails that
pass. It then takes the *tolerant* path: a generic decode, and a walk that
keeps each well-typed field and treats every other one as absent. Both
paths feed the same computation, so a body gets the same facts whichever
path read it. Only a body that is not a JSON object with a non-empty string
``id`` (or that cannot be decoded at all, such as one nested too deeply)
has no conversation facts.

The walk over the decoded participants (:func:`_walk`, which ends with the
state digest) is also compiled, when the optional C extension ``_speedups``
was built: it returns what :func:`_walk` returns, and gives way to it for
any input not made of this module's structs. It writes the digest's JSON
as it reads the fields, handing every value but plain text to the same
msgspec encoder, so the digest is the same bytes. :func:`_walk` is the
specification either way.

The extension also *reads* most snapshots itself, before either path: one
pass over the bytes that finds the fields the structs name and computes the
facts from them, without building the structs, their strings and datetimes
(which were most of the decode's cost). It answers only a body it is sure
to read as the typed decode and the walk would: well-formed, every named
field of its struct's type or null and named once, the text it uses
plain ASCII without escapes (but for the attributes: any text), every
timestamp ``YYYY-MM-DDTHH:MM:SS[.f]Z`` with at most six digits. Anything
else (an offset, an escaped id, a mistyped field) it leaves to the paths
above, which decide.

Nothing here raises for any input: facts are needed for every event the
pipeline sees, and a malformed body must cost only its own precision.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from operator import attrgetter, itemgetter
from typing import Annotated, Final

import msgspec

from genesys_mux.core._native import extensions_enabled
from genesys_mux.core.topics import Media, Topic, TopicFamily, parse_topic
from genesys_mux.errors import InvalidTopicError

log = logging.getLogger(__name__)

__all__ = [
    "ConversationFacts",
    "EventFacts",
    "canonical_hash",
    "content_hash",
    "conversation_facts",
    "detail_event_version",
    "event_facts",
    "presence_version",
    "routing_status_version",
]


def content_hash(body: bytes) -> bytes:
    """A 16-byte digest of ``body``: identical bytes give identical hashes.

    SHA-256, truncated: measured faster than BLAKE2b here (most CPUs hash
    SHA-256 in hardware), and 128 bits keep accidental collisions out of
    reach for any number of events a process will see.
    """
    return hashlib.sha256(body).digest()[:16]


def canonical_hash(body: bytes) -> bytes:
    """A 16-byte digest of the JSON value in ``body``, whatever its spelling.

    Key order and whitespace do not change it: the value is decoded and
    encoded again with sorted keys. A body that is not JSON is hashed as
    its bytes. Never raises.
    """
    digest = _canonical_hash(body)
    return content_hash(body) if digest is None else digest


def _canonical_hash(body: bytes) -> bytes | None:
    """:func:`canonical_hash`, or None when ``body`` is not one JSON value."""
    try:
        value = _ANY_DECODER.decode(body)
    except _DECODE_ERRORS:
        return None
    try:
        canonical = _encode_sorted(value)
    except (OverflowError, TypeError, RecursionError):
        # JSON, but not re-encodable in sorted form: its bytes stand for it.
        return content_hash(body)
    return content_hash(canonical)


# --------------------------------------------------------------------------
# Public fact types
# --------------------------------------------------------------------------


# gc=False: the fields hold only strings, tuples of strings, a dict of those
# and bytes, which can never form a reference cycle, so the cyclic GC need
# not track one of these per event.
class ConversationFacts(msgspec.Struct, frozen=True, gc=False):
    """What the stream pipeline needs to know about one conversation snapshot.

    ``media`` names the media lists holding at least one communication,
    spelt as the topic suffixes (:class:`~genesys_mux.core.topics.Media`:
    ``calls``, ``chats``, ``cobrowseSessions``...). ``states`` maps each of
    those to its communications' states, in snapshot order; its keys are
    exactly ``media``. ``message_types`` is the ``type`` of every
    ``messages[]`` communication (``sms``, ``webmessaging``...).
    ``queue_ids`` are the ``queueId`` of the ``acd`` and ``agent``
    participants, the queues the conversation was routed through;
    ``user_ids`` the ``userId`` of every participant.

    The predicates are the stream ``state`` filters of DESIGN.md, where a
    participant is *connected* when one of its communications has state
    ``connected``:

    - ``queued``: an ``acd`` participant is connected and no ``agent`` is;
    - ``active``: an ``agent`` or ``user`` participant is connected;
    - ``monitoring``: a connected participant has ``monitoredParticipantId``.

    ``version`` is the snapshot's version key in Unix seconds (see the
    module docstring for the fields it covers), ``0.0`` when the snapshot
    has no timestamp. ``hash`` is :func:`content_hash` of the body.
    """

    conversation_id: str
    media: frozenset[str]
    states: Mapping[str, tuple[str, ...]]
    message_types: frozenset[str]
    queue_ids: frozenset[str]
    user_ids: frozenset[str]
    queued: bool
    active: bool
    monitoring: bool
    version: float
    hash: bytes


class EventFacts(msgspec.Struct, frozen=True, gc=False):
    """Ordering and de-duplication facts about one notification.

    ``key`` names what the event is about: the conversation id for
    conversation topics and detail events, ``presence:{userId}`` or
    ``routing:{userId}`` for those user topics, and the topic itself for
    anything else (including a conversation body too malformed to name its
    conversation). ``version`` is a Unix time that grows as the keyed thing
    changes, or ``None`` when there is none to compare, which leaves the
    event to exact-duplicate detection by ``hash`` (:func:`content_hash`
    of the body). ``conversation`` holds the snapshot's facts for
    conversation topics, ``None`` otherwise.

    Detail events are keyed ``detail:{topic}`` with no version: they are
    separate happenings rather than successive states of one thing, so an
    older one is never superseded by a newer one the way a snapshot is.
    """

    key: str
    version: float | None
    hash: bytes
    conversation: ConversationFacts | None = None
    #: The body is not one JSON value (or is nested too deeply to read).
    #: Never true of a body :func:`~genesys_mux.core.frames.decode_frame`
    #: returned; a consumer of :func:`~genesys_mux.core.frames.split_notification`
    #: decodes the whole frame when it is.
    malformed: bool = False


# --------------------------------------------------------------------------
# Wire structs (private): only the fields the facts need
# --------------------------------------------------------------------------

# An instant with a zone. The zone is required so that every value compares
# with every other; a zoneless one fails the fast path and is read as UTC by
# the tolerant path instead.
_Stamp = Annotated[datetime, msgspec.Meta(tz=True)]


# gc=False throughout: decoded from JSON, so they cannot contain themselves.
class _Wrapup(msgspec.Struct, rename="camel", gc=False):
    code: str | None = None
    end_time: _Stamp | None = None


class _Ref(msgspec.Struct, gc=False):
    """A ``{id, name}`` reference: a media participant's ``user`` and ``queue``."""

    id: str | None = None


class _AfterCallWork(msgspec.Struct, rename="camel", gc=False):
    start_time: _Stamp | None = None
    end_time: _Stamp | None = None


class _MessageDetail(msgspec.Struct, rename="camel", gc=False):
    """One message of a messaging conversation: its id and delivery status.

    The general and REST shapes name the message ``messageId``, the media
    shape ``message.id``.
    """

    message_id: str | None = None
    message: _Ref | None = None
    message_status: str | None = None


class _Communication(msgspec.Struct, rename="camel", gc=False):
    state: str | None = None
    # Only meaningful on messages[] communications (sms, whatsapp...).
    type: str | None = None
    held: bool | None = None
    disconnect_type: str | None = None
    muted: bool | None = None
    recording: bool | None = None
    recording_state: str | None = None
    start_hold_time: _Stamp | None = None
    # A message communication's message details...
    messages: list[_MessageDetail | None] | None = None
    # ...and, when this entry is itself a message detail (a media
    # participant's messages[]), what it says.
    message_id: str | None = None
    message: _Ref | None = None
    message_status: str | None = None
    connected_time: _Stamp | None = None
    disconnected_time: _Stamp | None = None
    after_call_work: _AfterCallWork | None = None
    wrapup: _Wrapup | None = None
    # A callback's appointment: covered by the digest when present.
    callback_scheduled_time: _Stamp | None = None


_Communications = list[_Communication | None] | None


class _Participant(msgspec.Struct, rename="camel", gc=False):
    id: str | None = None
    purpose: str | None = None
    # The general and REST shapes name the user and queue by id...
    user_id: str | None = None
    queue_id: str | None = None
    # ...a media participant by reference, and holds its one communication's
    # fields itself: state, held, disconnectType, and type for messages.
    user: _Ref | None = None
    queue: _Ref | None = None
    state: str | None = None
    held: bool | None = None
    disconnect_type: str | None = None
    type: str | None = None
    muted: bool | None = None
    recording: bool | None = None
    recording_state: str | None = None
    start_hold_time: _Stamp | None = None
    attributes: dict[str, str] | None = None
    monitored_participant_id: str | None = None
    connected_time: _Stamp | None = None
    end_time: _Stamp | None = None
    start_acw_time: _Stamp | None = None
    end_acw_time: _Stamp | None = None
    wrapup: _Wrapup | None = None
    # The media lists, under their snapshot names; note cobrowsesessions and
    # socialExpressions are spelt differently from their topic suffixes. On a
    # media participant of a messages topic, messages[] holds message
    # details instead; they are never read as communications.
    calls: _Communications = None
    callbacks: _Communications = None
    chats: _Communications = None
    emails: _Communications = None
    messages: _Communications = None
    videos: _Communications = None
    cobrowsesessions: _Communications = None
    screenshares: _Communications = None
    social_expressions: _Communications = None
    # A callback media participant's appointment (its communication's field).
    callback_scheduled_time: _Stamp | None = None


class _Conversation(msgspec.Struct, gc=False):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    participants: list[_Participant | None] | None = None


class _Presence(msgspec.Struct, rename="camel", gc=False):
    modified_date: str | None = None


class _RoutingStatusValue(msgspec.Struct, rename="camel", gc=False):
    start_time: str | None = None


class _RoutingStatus(msgspec.Struct, rename="camel", gc=False):
    routing_status: _RoutingStatusValue | None = None


class _DetailEvent(msgspec.Struct, rename="camel", gc=False):
    # Epoch milliseconds; msgspec never turns a JSON bool into an int here.
    event_time: int | float | None = None
    conversation_id: str | None = None


_CONVERSATION_DECODER: Final = msgspec.json.Decoder(_Conversation)
_encode_state: Final = msgspec.json.Encoder().encode
# The compiled read's decoder of an attribute's text that is not plain.
_decode_text: Final = msgspec.json.Decoder(str).decode
_encode_sorted: Final = msgspec.json.Encoder(order="sorted").encode
_first: Final = itemgetter(0)
_sha256: Final = hashlib.sha256
# What the state digest keeps of a communication, read in C: a general
# communication and a media participant spell these fields alike.
# startHoldTime stays a datetime, which the encoder writes in one canonical
# form however the body spelt it.
_communication_state: Final = attrgetter(
    "state",
    "held",
    "start_hold_time",
    "disconnect_type",
    "type",
    "muted",
    "recording",
    "recording_state",
)
_PRESENCE_DECODER: Final = msgspec.json.Decoder(_Presence)
_ROUTING_STATUS_DECODER: Final = msgspec.json.Decoder(_RoutingStatus)
_DETAIL_EVENT_DECODER: Final = msgspec.json.Decoder(_DetailEvent)
# The tolerant path's generic decoder. float_hook=float turns 1e400 into inf
# instead of failing the whole document over a number nobody reads.
_ANY_DECODER: Final = msgspec.json.Decoder(float_hook=float)

# What msgspec raises for a document it cannot walk or that has the wrong
# shape (ValidationError is a DecodeError); RecursionError is how it reports
# nesting too deep to decode, even in fields it only skips.
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeError)

# The topic suffixes of the media lists; note cobrowsesessions and
# socialExpressions are spelt differently in a snapshot.
_CALLS: Final = Media.CALLS.value
_CALLBACKS: Final = Media.CALLBACKS.value
_CHATS: Final = Media.CHATS.value
_EMAILS: Final = Media.EMAILS.value
_VIDEOS: Final = Media.VIDEOS.value
_COBROWSE_SESSIONS: Final = Media.COBROWSE_SESSIONS.value
_SCREENSHARES: Final = Media.SCREENSHARES.value
_SOCIAL_EXPRESSIONS: Final = Media.SOCIAL_EXPRESSIONS.value
_MESSAGES: Final = Media.MESSAGES.value
_CONNECTED: Final = "connected"


def _load_native_walk() -> (
    Callable[[str, list[_Participant | None], str | None], _Walked | None] | None
):
    """The compiled :func:`_walk`, bound to this module's structs; None to walk in Python.

    The extension is optional: a build without a C compiler, or
    ``GENESYS_MUX_NO_EXTENSIONS`` set to anything but ``0`` or empty, walks
    in Python, with the same results (see :mod:`genesys_mux.core._speedups`).
    """
    if not extensions_enabled():
        return None
    try:
        from genesys_mux.core import _speedups
    except ImportError:
        return None
    try:
        _speedups.bind(
            _Participant,
            _Communication,
            _MessageDetail,
            _Ref,
            _Wrapup,
            _AfterCallWork,
            (
                _CALLS,
                _CALLBACKS,
                _CHATS,
                _EMAILS,
                _MESSAGES,
                _VIDEOS,
                _COBROWSE_SESSIONS,
                _SCREENSHARES,
                _SOCIAL_EXPRESSIONS,
            ),
        )
    except TypeError as exc:
        # msgspec laid its structs out otherwise than the walk reads them:
        # slower, not wrong.
        log.warning("the compiled snapshot walk is disabled, walking in Python: %s", exc)
        return None
    # The values it does not write itself go to the very encoder that
    # _state_digest uses, and its bytes to the same hash.
    _speedups.bind_digest(_encode_state, _sha256)
    return _speedups.walk


_native_walk: Final = _load_native_walk()


def _load_native_read() -> Callable[[bytes, str | None], ConversationFacts | None] | None:
    """The compiled read of a snapshot's bytes (``_speedups.read``); None to decode and walk.

    It needs the compiled walk (it writes the digest with the same code) and
    this module's structs as they are: a struct with a field it does not
    read disables it, with a warning.
    """
    if _native_walk is None:
        return None
    from genesys_mux.core import _speedups

    try:
        _speedups.bind_reader(_Conversation, ConversationFacts, _decode_text)
    except TypeError as exc:
        log.warning("the compiled snapshot read is disabled, decoding in Python: %s", exc)
        return None
    return _speedups.read


_native_read: Final = _load_native_read()


# --------------------------------------------------------------------------
# Conversation snapshots
# --------------------------------------------------------------------------


def conversation_facts(body: bytes, media: Media | str | None = None) -> ConversationFacts | None:
    """The :class:`ConversationFacts` of a conversation snapshot body, in any shape.

    ``media`` is the media suffix of the topic the body came on (``calls``,
    ``messages``...), ``None`` for a general topic or REST. It names the
    media of a media-shaped body, whose participants do not say it
    themselves; general and REST bodies do not need it.

    ``None`` when ``body`` is not a JSON object with a non-empty string
    ``id``. Missing, null or wrongly typed fields count as absent and
    unparseable timestamps are ignored. Never raises.
    """
    return _conversation_facts(body, None if media is None else str(media))


def _conversation_facts(body: bytes, media: str | None) -> ConversationFacts | None:
    if _native_read is not None:
        # The common case in one compiled pass over the bytes; None for a
        # body it is not sure of, which is decoded and walked below.
        facts = _native_read(body, media)
        if facts is not None:
            return facts
    try:
        conversation = _CONVERSATION_DECODER.decode(body)
    except msgspec.ValidationError:
        # Well-formed JSON with a field of an unexpected type, or no id.
        tolerant = _tolerant_conversation(body)
        if tolerant is None:
            return None
        conversation = tolerant
    except _DECODE_ERRORS:
        return None
    return _facts(conversation, media)


# What a walk over a snapshot's participants finds, as ConversationFacts holds
# it: the media, their states, the message types, queue and user ids, the
# three predicates, the version, and the state digest.
_Walked = tuple[
    frozenset[str],
    dict[str, tuple[str, ...]],
    frozenset[str],
    frozenset[str],
    frozenset[str],
    bool,
    bool,
    bool,
    float,
    bytes,
]


def _facts(conversation: _Conversation, media: str | None) -> ConversationFacts:
    participants = conversation.participants or []
    conversation_id = conversation.id
    walked = None if _native_walk is None else _native_walk(conversation_id, participants, media)
    if walked is None:
        walked = _walk(conversation_id, participants, media)
    # The walk's values are the struct's fields in order; unpacked by name,
    # because that measured cheaper than slicing or star-unpacking them.
    (
        media_names,
        states,
        message_types,
        queue_ids,
        user_ids,
        queued,
        active,
        monitoring,
        version,
        digest,
    ) = walked
    return ConversationFacts(
        conversation_id,
        media_names,
        states,
        message_types,
        queue_ids,
        user_ids,
        queued,
        active,
        monitoring,
        version,
        digest,
    )


def _walk(
    conversation_id: str, participants: list[_Participant | None], media: str | None
) -> _Walked:
    """One pass over the participants: what :class:`ConversationFacts` is made of.

    The specification of the native walk (``_speedups.c``), which must return
    equal values for every input; a test holds the two to it. The native
    walk writes the state digest's JSON as it goes instead of building the
    parts below for the encoder: the digest is the same bytes.
    """
    states: dict[str, list[str]] = {}
    stamps: list[datetime | None] = []
    add_stamp = stamps.append
    message_types: set[str] = set()
    queue_ids: set[str] = set()
    user_ids: set[str] = set()
    # One entry per participant with a communication: what the state digest covers.
    digest_parts: list[tuple[object, ...]] = []
    acd_connected = agent_connected = active = monitoring = False

    for participant in participants:
        if participant is None:
            continue
        comms: list[tuple[object, ...]] = []
        state = participant.state
        if state is not None:
            # A media participant: it *is* its one communication, of the
            # topic's media. Its messages[] (on messages topics) are message
            # details, not communications, so the lists are not walked.
            connected = state == _CONNECTED
            if media is not None:
                bucket = states.get(media)
                if bucket is None:
                    bucket = states[media] = []
                bucket.append(state)
            if participant.type is not None:
                message_types.add(participant.type)
            messages = participant.messages
            details = _details(messages) if messages else None
            entry = (media, _communication_state(participant), details)
            scheduled = participant.callback_scheduled_time
            comms.append(entry if scheduled is None else (*entry, scheduled))
        else:
            # The nine media lists, one attribute read each: most participants
            # hold one or two, and a loop over all nine (or an attrgetter of
            # them) measured several times dearer than these tests.
            connected = False
            if participant.calls:
                connected |= _communications(_CALLS, participant.calls, states, stamps, comms)
            if participant.callbacks:
                connected |= _communications(
                    _CALLBACKS, participant.callbacks, states, stamps, comms
                )
            if participant.chats:
                connected |= _communications(_CHATS, participant.chats, states, stamps, comms)
            if participant.emails:
                connected |= _communications(_EMAILS, participant.emails, states, stamps, comms)
            if participant.messages:
                messages = participant.messages
                connected |= _communications(_MESSAGES, messages, states, stamps, comms)
                message_types.update(
                    comm.type for comm in messages if comm is not None and comm.type is not None
                )
            if participant.videos:
                connected |= _communications(_VIDEOS, participant.videos, states, stamps, comms)
            if participant.cobrowsesessions:
                connected |= _communications(
                    _COBROWSE_SESSIONS, participant.cobrowsesessions, states, stamps, comms
                )
            if participant.screenshares:
                connected |= _communications(
                    _SCREENSHARES, participant.screenshares, states, stamps, comms
                )
            if participant.social_expressions:
                connected |= _communications(
                    _SOCIAL_EXPRESSIONS, participant.social_expressions, states, stamps, comms
                )

        add_stamp(participant.connected_time)
        add_stamp(participant.end_time)
        add_stamp(participant.start_acw_time)
        add_stamp(participant.end_acw_time)
        wrapup = participant.wrapup
        if wrapup is not None:
            add_stamp(wrapup.end_time)
        purpose = participant.purpose
        user_id = participant.user_id
        if user_id is None and participant.user is not None:
            user_id = participant.user.id
        if user_id:
            user_ids.add(user_id)
        queue_id = participant.queue_id
        if queue_id is None and participant.queue is not None:
            queue_id = participant.queue.id
        if queue_id and (purpose == "acd" or purpose == "agent"):
            queue_ids.add(queue_id)
        if connected:
            if purpose == "acd":
                acd_connected = True
            elif purpose == "agent":
                agent_connected = active = True
            elif purpose == "user":
                active = True
            if participant.monitored_participant_id:
                monitoring = True
        if comms:
            attributes = participant.attributes
            digest_parts.append(
                (
                    participant.id or "",
                    purpose,
                    user_id,
                    queue_id,
                    None if wrapup is None else wrapup.code,
                    sorted(attributes.items()) if attributes else None,
                    comms,
                )
            )

    # filter(None, ...) drops the Nones in C; a datetime is never falsy. All
    # are zone-aware, so any two compare, and neither comparing nor
    # timestamp() can overflow even at the ends of the calendar.
    newest = max(filter(None, stamps), default=None)
    version = 0.0 if newest is None else newest.timestamp()
    return (
        frozenset(states),
        {name: tuple(found) for name, found in states.items()},
        frozenset(message_types),
        frozenset(queue_ids),
        frozenset(user_ids),
        acd_connected and not agent_connected,
        active,
        monitoring,
        version,
        _state_digest(conversation_id, version, digest_parts),
    )


def _state_digest(conversation_id: str, version: float, parts: list[tuple[object, ...]]) -> bytes:
    """The 16-byte digest of a snapshot's state, the same in every shape.

    It covers what the three shapes all carry (see "The state digest" in
    the module docstring). Participants are sorted by id so that an order
    that differs between shapes does not make a different state.
    """
    parts.sort(key=_first)
    # content_hash, without its call: this runs once per snapshot.
    return _sha256(_encode_state((conversation_id, version, parts))).digest()[:16]


def _communications(
    name: str,
    communications: list[_Communication | None],
    states: dict[str, list[str]],
    stamps: list[datetime | None],
    comms: list[tuple[object, ...]],
) -> bool:
    """Add one media list's states, timestamps and digest entries; whether one is ``connected``.

    ``name`` enters ``states`` only when the list holds a communication
    (a null entry counts as absent).
    """
    connected = False
    bucket: list[str] | None = None
    add_stamp = stamps.append
    for comm in communications:
        if comm is None:
            continue
        if bucket is None:
            bucket = states.get(name)
            if bucket is None:
                bucket = states[name] = []
        state = comm.state
        if state is not None:
            bucket.append(state)
            if state == _CONNECTED:
                connected = True
        messages = comm.messages
        entry = (name, _communication_state(comm), _details(messages) if messages else None)
        scheduled = comm.callback_scheduled_time
        comms.append(entry if scheduled is None else (*entry, scheduled))
        add_stamp(comm.connected_time)
        add_stamp(comm.disconnected_time)
        acw = comm.after_call_work
        if acw is not None:
            add_stamp(acw.start_time)
            add_stamp(acw.end_time)
        wrapup = comm.wrapup
        if wrapup is not None:
            add_stamp(wrapup.end_time)
    return connected


def _details(
    details: list[_MessageDetail | None] | list[_Communication | None],
) -> list[tuple[str | None, str | None]]:
    """Each message's id and status: a new message or a read receipt is a new state."""
    return [
        (d.message_id or (None if d.message is None else d.message.id), d.message_status)
        for d in details
        if d is not None
    ]


# -- the tolerant path -------------------------------------------------------


def _tolerant_conversation(body: bytes) -> _Conversation | None:
    """Decode generically and keep only the well-typed fields the facts use."""
    try:
        tree = _ANY_DECODER.decode(body)
    except _DECODE_ERRORS:
        return None
    if not isinstance(tree, dict):
        return None
    conversation_id = tree.get("id")
    if not isinstance(conversation_id, str) or not conversation_id:
        return None
    participants: list[_Participant | None] = [
        _tolerant_participant(p) for p in _list(tree.get("participants")) if isinstance(p, dict)
    ]
    return _Conversation(id=conversation_id, participants=participants)


def _tolerant_participant(p: dict[str, object]) -> _Participant:
    attributes = p.get("attributes")
    return _Participant(
        id=_str(p.get("id")),
        purpose=_str(p.get("purpose")),
        user_id=_str(p.get("userId")),
        queue_id=_str(p.get("queueId")),
        user=_tolerant_ref(p.get("user")),
        queue=_tolerant_ref(p.get("queue")),
        state=_str(p.get("state")),
        held=_bool(p.get("held")),
        disconnect_type=_str(p.get("disconnectType")),
        type=_str(p.get("type")),
        muted=_bool(p.get("muted")),
        recording=_bool(p.get("recording")),
        recording_state=_str(p.get("recordingState")),
        start_hold_time=_stamp(p.get("startHoldTime")),
        attributes=(
            {k: v for k, v in attributes.items() if isinstance(v, str)}
            if isinstance(attributes, dict)
            else None
        ),
        monitored_participant_id=_str(p.get("monitoredParticipantId")),
        connected_time=_stamp(p.get("connectedTime")),
        end_time=_stamp(p.get("endTime")),
        start_acw_time=_stamp(p.get("startAcwTime")),
        end_acw_time=_stamp(p.get("endAcwTime")),
        wrapup=_tolerant_wrapup(p.get("wrapup")),
        calls=_tolerant_communications(p.get("calls")),
        callbacks=_tolerant_communications(p.get("callbacks")),
        chats=_tolerant_communications(p.get("chats")),
        emails=_tolerant_communications(p.get("emails")),
        messages=_tolerant_communications(p.get("messages")),
        videos=_tolerant_communications(p.get("videos")),
        cobrowsesessions=_tolerant_communications(p.get("cobrowsesessions")),
        screenshares=_tolerant_communications(p.get("screenshares")),
        social_expressions=_tolerant_communications(p.get("socialExpressions")),
        callback_scheduled_time=_stamp(p.get("callbackScheduledTime")),
    )


def _tolerant_communications(value: object) -> list[_Communication | None]:
    return [_tolerant_communication(c) for c in _list(value) if isinstance(c, dict)]


def _tolerant_communication(c: dict[str, object]) -> _Communication:
    acw = c.get("afterCallWork")
    return _Communication(
        state=_str(c.get("state")),
        type=_str(c.get("type")),
        held=_bool(c.get("held")),
        disconnect_type=_str(c.get("disconnectType")),
        muted=_bool(c.get("muted")),
        recording=_bool(c.get("recording")),
        recording_state=_str(c.get("recordingState")),
        start_hold_time=_stamp(c.get("startHoldTime")),
        messages=[_tolerant_detail(d) for d in _list(c.get("messages")) if isinstance(d, dict)]
        or None,
        message_id=_str(c.get("messageId")),
        message=_tolerant_ref(c.get("message")),
        message_status=_str(c.get("messageStatus")),
        connected_time=_stamp(c.get("connectedTime")),
        disconnected_time=_stamp(c.get("disconnectedTime")),
        after_call_work=(
            _AfterCallWork(
                start_time=_stamp(acw.get("startTime")), end_time=_stamp(acw.get("endTime"))
            )
            if isinstance(acw, dict)
            else None
        ),
        wrapup=_tolerant_wrapup(c.get("wrapup")),
        callback_scheduled_time=_stamp(c.get("callbackScheduledTime")),
    )


def _tolerant_wrapup(value: object) -> _Wrapup | None:
    if not isinstance(value, dict):
        return None
    return _Wrapup(code=_str(value.get("code")), end_time=_stamp(value.get("endTime")))


def _tolerant_detail(d: dict[str, object]) -> _MessageDetail:
    return _MessageDetail(
        message_id=_str(d.get("messageId")),
        message=_tolerant_ref(d.get("message")),
        message_status=_str(d.get("messageStatus")),
    )


def _tolerant_ref(value: object) -> _Ref | None:
    return _Ref(id=_str(value.get("id"))) if isinstance(value, dict) else None


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _stamp(value: object) -> datetime | None:
    """An RFC 3339 timestamp as a zone-aware datetime (zoneless means UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _unix(value: str | None) -> float | None:
    """Unix seconds of a timestamp string, or None when absent or unparseable."""
    stamp = _stamp(value)
    return None if stamp is None else stamp.timestamp()


# --------------------------------------------------------------------------
# Other topics
# --------------------------------------------------------------------------


def presence_version(body: bytes) -> float | None:
    """A ``v2.users.{id}.presence`` body's ``modifiedDate`` in Unix seconds.

    ``None`` when it is absent or malformed. Never raises.
    """
    try:
        presence = _PRESENCE_DECODER.decode(body)
    except _DECODE_ERRORS:
        return None
    return _unix(presence.modified_date)


def routing_status_version(body: bytes) -> float | None:
    """A ``v2.users.{id}.routingStatus`` body's ``routingStatus.startTime`` in Unix seconds.

    ``None`` when it is absent or malformed. Never raises.
    """
    try:
        status = _ROUTING_STATUS_DECODER.decode(body).routing_status
    except _DECODE_ERRORS:
        return None
    return None if status is None else _unix(status.start_time)


def detail_event_version(body: bytes) -> float | None:
    """A detail event body's ``eventTime`` (epoch milliseconds) in Unix seconds.

    ``None`` when it is absent or malformed. Never raises.
    """
    try:
        event_time = _DETAIL_EVENT_DECODER.decode(body).event_time
    except _DECODE_ERRORS:
        return None
    return _milliseconds(event_time)


def _milliseconds(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        return value / 1000
    except OverflowError:  # msgspec decodes big JSON integers exactly; too big for a float
        return None


# --------------------------------------------------------------------------
# Dispatch on the topic
# --------------------------------------------------------------------------


# The same few thousand subscribed topics arrive over and over, and parsing
# one costs more than a microsecond of regular expressions; a bounded cache
# keeps the per-event cost to a dict lookup. Detail-event topics name a
# conversation, so they keep churning through it; that only costs a parse.
# Beside the parse: for a conversation topic, its media suffix as a plain
# str, or "" for a general one (an enum's value is a property, read in
# Python); None for any other topic.
@lru_cache(maxsize=8192)
def _parse(topic: str) -> tuple[Topic | None, str | None]:
    try:
        parsed = parse_topic(topic)
    except InvalidTopicError:  # outside the grammar: an "other" topic
        return None, None
    family = parsed.family
    if family is TopicFamily.QUEUE_CONVERSATIONS or family is TopicFamily.USER_CONVERSATIONS:
        return parsed, "" if parsed.media is None else parsed.media.value
    return parsed, None


def event_facts(topic: str, body: bytes) -> EventFacts:
    """The :class:`EventFacts` of one notification, from its topic and raw body.

    Conversation topics give the snapshot's facts and version; detail
    events, presence and routing status their own version; any other or
    unknown topic is keyed by itself with no version. A body that is not
    JSON has no version and is marked ``malformed``. Never raises.
    """
    parsed, media = _parse(topic)
    if media is not None:
        facts = _conversation_facts(body, media or None)
        if facts is None:
            return _opaque(topic, body)
        return EventFacts(facts.conversation_id, facts.version, facts.hash, facts)
    family = parsed.family if parsed is not None else None
    digest = _canonical_hash(body)
    malformed = digest is None
    if digest is None:
        digest = content_hash(body)
    if parsed is None:
        return EventFacts(topic, None, digest, None, malformed)
    if family is TopicFamily.CONVERSATION_DETAIL_EVENTS:
        # Detail events are separate happenings, not successive states of one
        # thing: an older one is never superseded by a newer one. So they get
        # a key of their own (never the snapshot's) and no version to order
        # on: only exact duplicates are removed.
        return EventFacts(f"detail:{topic}", None, digest, None, malformed)
    if family is TopicFamily.USER_PRESENCE:
        key, version = f"presence:{parsed.entity_id}", presence_version(body)
    elif family is TopicFamily.USER_ROUTING_STATUS:
        key, version = f"routing:{parsed.entity_id}", routing_status_version(body)
    else:
        key, version = topic, None
    return EventFacts(key, version, digest, None, malformed)


def _opaque(topic: str, body: bytes) -> EventFacts:
    """The facts of a body nothing is known about: keyed by its topic, hashed canonically."""
    digest = _canonical_hash(body)
    if digest is None:
        return EventFacts(topic, None, content_hash(body), None, True)
    return EventFacts(topic, None, digest)
