"""The Genesys Notifications topic grammar, id validation and combined topics.

Theory of operation
-------------------
Every notification topic names a concrete entity; there are no wildcards and
no org-wide conversation topic. A topic is a *prefix* that names the entity
(``v2.users.{id}``) followed by a *suffix* that names what about it
(``presence``, ``conversations.calls``)::

    v2.routing.queues.{queueId}.conversations[.{media}]
    v2.users.{userId}.conversations[.{media}]
    v2.users.{userId}.presence
    v2.users.{userId}.routingStatus
    v2.detail.events.conversation.{conversationId}.{event}
    v2.analytics.queues.{queueId}.observations

Any other topic of the platform's shape (``v2`` and three or more words or
ids: ``v2.users.{id}.activity``) is taken as given, as
:attr:`TopicFamily.OTHER`: the platform says whether it has it.

A *combined* topic subscribes several suffixes of one prefix in one string,
``v2.users.{id}?presence&routingStatus``, at most 200 characters long.
Events always arrive under the expanded names, so combining is purely a way
to fit more into one subscription request.

Ids go into URL paths and topic names, so they are validated before use:
only ASCII letters, digits, ``-`` and ``_`` are allowed. That excludes the
separators ``.``, ``?``, ``&`` and ``/`` which would otherwise let one id
impersonate another topic or another URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from genesys_mux.core.limits import PLATFORM
from genesys_mux.errors import InvalidIdError, InvalidTopicError

__all__ = [
    "MAX_COMBINED_TOPIC_LENGTH",
    "Media",
    "Topic",
    "TopicFamily",
    "combine_topics",
    "conversation_detail_events",
    "expand_topic",
    "expanded_topics",
    "is_valid_id",
    "parse_topic",
    "queue_conversations",
    "queue_observations",
    "user_conversations",
    "user_presence",
    "user_routing_status",
    "validate_id",
]

#: The platform's limit on the length of one combined topic string.
MAX_COMBINED_TOPIC_LENGTH = PLATFORM.max_combined_topic_length

# Genesys ids are UUIDs in practice, but channel ids (``streaming-0-...``) and
# a few others are not; treat them as opaque and only forbid what is unsafe.
_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
_ID_RE = re.compile(_ID)
_EVENT_RE = re.compile(r"[a-z][a-zA-Z]*(?:\.[a-z][a-zA-Z]*)*")


class Media(StrEnum):
    """Media-specific suffixes of the conversation topics."""

    CALLS = "calls"
    CALLBACKS = "callbacks"
    CHATS = "chats"
    EMAILS = "emails"
    MESSAGES = "messages"
    VIDEOS = "videos"
    COBROWSE_SESSIONS = "cobrowseSessions"
    SCREENSHARES = "screenshares"
    SOCIAL_EXPRESSIONS = "socialexpressions"


class TopicFamily(StrEnum):
    """The topic families genesys-mux understands."""

    QUEUE_CONVERSATIONS = "queue_conversations"
    USER_CONVERSATIONS = "user_conversations"
    USER_PRESENCE = "user_presence"
    USER_ROUTING_STATUS = "user_routing_status"
    CONVERSATION_DETAIL_EVENTS = "conversation_detail_events"
    QUEUE_OBSERVATIONS = "queue_observations"
    #: Any other topic of the platform's shape (``v2.users.{id}.activity``,
    #: ``v2.routing.queues.{id}.users``...): subscribed as given, its events
    #: keyed by the topic and told apart by content alone. Whether the
    #: platform has it is the platform's to say (400
    #: ``notification.invalid.topic``, reported as a rejection).
    OTHER = "other"


_PREFIXES: dict[TopicFamily, str] = {
    TopicFamily.QUEUE_CONVERSATIONS: "v2.routing.queues.",
    TopicFamily.USER_CONVERSATIONS: "v2.users.",
    TopicFamily.USER_PRESENCE: "v2.users.",
    TopicFamily.USER_ROUTING_STATUS: "v2.users.",
    TopicFamily.CONVERSATION_DETAIL_EVENTS: "v2.detail.events.conversation.",
    TopicFamily.QUEUE_OBSERVATIONS: "v2.analytics.queues.",
}

_MEDIA = "|".join(re.escape(m.value) for m in Media)
_GRAMMAR: tuple[tuple[TopicFamily, re.Pattern[str]], ...] = (
    (
        TopicFamily.QUEUE_CONVERSATIONS,
        re.compile(rf"v2\.routing\.queues\.(?P<id>{_ID})\.conversations(?:\.(?P<media>{_MEDIA}))?"),
    ),
    (
        TopicFamily.USER_CONVERSATIONS,
        re.compile(rf"v2\.users\.(?P<id>{_ID})\.conversations(?:\.(?P<media>{_MEDIA}))?"),
    ),
    (TopicFamily.USER_PRESENCE, re.compile(rf"v2\.users\.(?P<id>{_ID})\.presence")),
    (TopicFamily.USER_ROUTING_STATUS, re.compile(rf"v2\.users\.(?P<id>{_ID})\.routingStatus")),
    (
        TopicFamily.CONVERSATION_DETAIL_EVENTS,
        re.compile(
            rf"v2\.detail\.events\.conversation\.(?P<id>{_ID})\.(?P<event>{_EVENT_RE.pattern})"
        ),
    ),
    (
        TopicFamily.QUEUE_OBSERVATIONS,
        re.compile(rf"v2\.analytics\.queues\.(?P<id>{_ID})\.observations"),
    ),
)
# The platform's shape: v2 and at least three dot-separated words or ids, each
# as safe as an id (no '.', '?', '&' or '/' inside one), at most as long as
# a combined topic may be. System topics are the platform's to send.
_OTHER = re.compile(rf"v2(?:\.{_ID}){{3,}}")
_SYSTEM_PREFIX = "v2.system."
# The shapes of the families above: a name of one of them that does not
# parse is a mistake in it (a media misspelt, an event in capitals), said
# as such, never taken for another topic.
_KNOWN_SHAPES = re.compile(
    r"v2\.(?:(?:routing\.queues|users)\.[^.]*\.(?:conversations|presence|routingStatus)(?:\.|$)"
    # An id with a dot in it (a.b) would shift the family's suffix along.
    r"|(?:routing\.queues|users)\..*\.(?:conversations(?:\.[^.]*)?|presence|routingStatus)$"
    r"|analytics\.queues\.[^.]*\.observations(?:\.|$)|detail\.events\.)",
    re.IGNORECASE,
)


def is_valid_id(value: str) -> bool:
    """True when ``value`` is safe to place in a URL path segment or a topic."""
    return _ID_RE.fullmatch(value) is not None


def validate_id(value: str, kind: str = "id") -> str:
    """Return ``value`` if it is a safe entity id, else raise :class:`InvalidIdError`.

    ``kind`` names the id in the message (``"queueId"``, ``"channel id"``).
    """
    if not isinstance(value, str) or not is_valid_id(value):
        shown = repr(value)[:80]
        raise InvalidIdError(
            f"{kind} {shown} is not a valid Genesys id: use 1-128 ASCII letters, digits, "
            "'-' or '_', starting with a letter or digit (Genesys ids are normally UUIDs)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """One parsed, non-combined notification topic.

    ``str(topic)`` gives the canonical topic name; :func:`parse_topic`
    inverts it exactly.
    """

    family: TopicFamily
    entity_id: str
    media: Media | None = None
    event: str | None = None
    #: The whole name of an :attr:`TopicFamily.OTHER` topic (None for the others).
    name: str | None = None

    @property
    def prefix(self) -> str:
        """The part naming the entity, e.g. ``v2.users.{id}`` (else: all but the last word)."""
        if self.name is not None:
            return self.name.rpartition(".")[0]
        return _PREFIXES[self.family] + self.entity_id

    @property
    def suffix(self) -> str:
        """The part after the prefix, e.g. ``conversations.calls``."""
        if self.name is not None:
            return self.name.rpartition(".")[2]
        match self.family:
            case TopicFamily.QUEUE_CONVERSATIONS | TopicFamily.USER_CONVERSATIONS:
                return "conversations" if self.media is None else f"conversations.{self.media}"
            case TopicFamily.USER_PRESENCE:
                return "presence"
            case TopicFamily.USER_ROUTING_STATUS:
                return "routingStatus"
            case TopicFamily.CONVERSATION_DETAIL_EVENTS:
                assert self.event is not None
                return self.event
            case TopicFamily.QUEUE_OBSERVATIONS:
                return "observations"
            case TopicFamily.OTHER:
                raise AssertionError("an other topic keeps its name")

    def __str__(self) -> str:
        return f"{self.prefix}.{self.suffix}"


def parse_topic(name: str) -> Topic:
    """Parse one plain (non-combined) topic name, or raise :class:`InvalidTopicError`."""
    for family, pattern in _GRAMMAR:
        m = pattern.fullmatch(name)
        if m is not None:
            groups = m.groupdict()
            media = groups.get("media")
            return Topic(
                family=family,
                entity_id=groups["id"],
                media=Media(media) if media else None,
                event=groups.get("event"),
            )
    if (
        len(name) <= MAX_COMBINED_TOPIC_LENGTH
        and not name.startswith(_SYSTEM_PREFIX)
        and _KNOWN_SHAPES.match(name) is None
        and _OTHER.fullmatch(name) is not None
    ):
        return Topic(family=TopicFamily.OTHER, entity_id="", name=name)
    raise InvalidTopicError(_explain_invalid(name))


def _explain_invalid(name: str) -> str:
    shown = repr(name)[:120]
    if "?" in name or "&" in name:
        return f"topic {shown} is a combined topic; expand it with expand_topic() first"
    if name.startswith("v2.system."):
        return (
            f"topic {shown} is a system topic: the platform sends it unasked, "
            "it cannot be subscribed"
        )
    known = (
        "v2.routing.queues.{id}.conversations[.media], v2.users.{id}.conversations[.media], "
        "v2.users.{id}.presence, v2.users.{id}.routingStatus, "
        "v2.detail.events.conversation.{id}.{event}, v2.analytics.queues.{id}.observations "
        f"(media: {', '.join(m.value for m in Media)})"
    )
    if _KNOWN_SHAPES.match(name) is not None:
        return f"topic {shown} is not a Genesys notification topic; expected one of {known}"
    if len(name) > MAX_COMBINED_TOPIC_LENGTH:
        return (
            f"topic {shown}... is {len(name)} characters; expected one of {known}, or "
            f"another of the platform's shape, of at most {MAX_COMBINED_TOPIC_LENGTH}"
        )
    return (
        f"topic {shown} is not a Genesys notification topic: expected one of {known}, or "
        "another of the platform's shape (v2 and three or more words or ids separated by "
        "'.', each of ASCII letters, digits, '-' or '_', such as v2.users.{id}.activity)"
    )


def expand_topic(name: str) -> tuple[str, ...]:
    """Expand a possibly combined topic into its plain parts, validating each.

    ``v2.users.U?presence&routingStatus`` gives
    ``("v2.users.U.presence", "v2.users.U.routingStatus")``; a plain topic
    gives itself. Raises :class:`InvalidTopicError` for an over-long combined
    topic, an empty or repeated part, or any part outside the grammar.
    """
    if "?" not in name:
        parse_topic(name)
        return (name,)
    if len(name) > MAX_COMBINED_TOPIC_LENGTH:
        raise InvalidTopicError(
            f"combined topic {name[:60]!r}... is {len(name)} characters; "
            f"the platform allows at most {MAX_COMBINED_TOPIC_LENGTH}"
        )
    prefix, _, rest = name.partition("?")
    suffixes = rest.split("&")
    if not prefix or "" in suffixes or len(set(suffixes)) != len(suffixes):
        raise InvalidTopicError(
            f"combined topic {name[:120]!r} must look like prefix?suffix&suffix "
            "with distinct, non-empty suffixes"
        )
    parts = tuple(f"{prefix}.{s}" for s in suffixes)
    for part in parts:
        topic = parse_topic(part)
        if topic.prefix != prefix:
            raise InvalidTopicError(
                f"combined topic {name[:120]!r}: {prefix!r} is not an entity prefix "
                f"such as {topic.prefix!r}"
            )
    return parts


def combine_topics(names: Iterable[str], max_length: int = MAX_COMBINED_TOPIC_LENGTH) -> list[str]:
    """Pack plain topics that share a prefix into as few combined topics as fit.

    Only one-word suffixes are combined (``v2.users.U?presence&routingStatus``),
    the only shape the reference shows: whether the platform takes
    ``conversations.calls`` or a detail event's ``acd.start`` after a ``?``
    is not documented, so those go plain. The order of first appearance is
    kept; a prefix with one suffix stays a plain topic. Expanding the result
    gives back exactly the distinct inputs.
    """
    # In order of first appearance: a prefix's group of one-word suffixes,
    # or a topic that goes plain.
    order: list[str | list[str]] = []
    groups: dict[str, list[str]] = {}
    plain: set[str] = set()
    for name in names:
        topic = parse_topic(name)
        if topic.family is TopicFamily.OTHER or "." in topic.suffix:
            text = str(topic)
            if text not in plain:
                plain.add(text)
                order.append(text)
            continue
        suffixes = groups.get(topic.prefix)
        if suffixes is None:
            suffixes = groups[topic.prefix] = [topic.prefix]
            order.append(suffixes)
        if topic.suffix not in suffixes[1:]:
            suffixes.append(topic.suffix)
    return [
        c
        for entry in order
        for c in ([entry] if isinstance(entry, str) else _pack(entry[0], entry[1:], max_length))
    ]


def _pack(prefix: str, suffixes: list[str], max_length: int) -> Iterator[str]:
    group: list[str] = []
    length = len(prefix)
    for suffix in suffixes:
        if group and length + 1 + len(suffix) > max_length:
            yield _join(prefix, group)
            group, length = [], len(prefix)
        group.append(suffix)
        length += 1 + len(suffix)
    if group:
        yield _join(prefix, group)


def _join(prefix: str, suffixes: list[str]) -> str:
    if len(suffixes) == 1:
        return f"{prefix}.{suffixes[0]}"
    return f"{prefix}?{'&'.join(suffixes)}"


def queue_conversations(queue_id: str, media: Media | None = None) -> str:
    """``v2.routing.queues.{queue_id}.conversations[.{media}]``, with the id validated."""
    return str(Topic(TopicFamily.QUEUE_CONVERSATIONS, validate_id(queue_id, "queueId"), media))


def user_conversations(user_id: str, media: Media | None = None) -> str:
    """``v2.users.{user_id}.conversations[.{media}]``, with the id validated."""
    return str(Topic(TopicFamily.USER_CONVERSATIONS, validate_id(user_id, "userId"), media))


def user_presence(user_id: str) -> str:
    """``v2.users.{user_id}.presence``, with the id validated."""
    return str(Topic(TopicFamily.USER_PRESENCE, validate_id(user_id, "userId")))


def user_routing_status(user_id: str) -> str:
    """``v2.users.{user_id}.routingStatus``, with the id validated."""
    return str(Topic(TopicFamily.USER_ROUTING_STATUS, validate_id(user_id, "userId")))


def conversation_detail_events(conversation_id: str, event: str) -> str:
    """``v2.detail.events.conversation.{id}.{event}``, e.g. event ``acd.start``."""
    if _EVENT_RE.fullmatch(event) is None:
        raise InvalidTopicError(f"detail event name {event!r} must look like 'acd.start' or 'acw'")
    cid = validate_id(conversation_id, "conversationId")
    return str(Topic(TopicFamily.CONVERSATION_DETAIL_EVENTS, cid, event=event))


def queue_observations(queue_id: str) -> str:
    """``v2.analytics.queues.{queue_id}.observations``, with the id validated."""
    return str(Topic(TopicFamily.QUEUE_OBSERVATIONS, validate_id(queue_id, "queueId")))


def expanded_topics(topics: Iterable[str]) -> frozenset[str]:
    """Topic names with combined ones split into their parts, in lower case.

    Whether the platform lists a combined subscription as one id or as its
    parts (and in which case) is not documented, so subscription lists are
    compared in this form. A name outside the grammar is kept as it is.
    """
    parts: set[str] = set()
    for topic in topics:
        try:
            parts.update(p.lower() for p in expand_topic(topic))
        except InvalidTopicError:
            parts.add(topic.lower())
    return frozenset(parts)
