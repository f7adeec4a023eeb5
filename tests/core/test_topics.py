"""Tests for genesys_mux.core.topics: grammar, id validation, combined topics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genesys_mux.core.topics import (
    MAX_COMBINED_TOPIC_LENGTH,
    Media,
    Topic,
    TopicFamily,
    combine_topics,
    conversation_detail_events,
    expand_topic,
    is_valid_id,
    parse_topic,
    queue_conversations,
    queue_observations,
    user_conversations,
    user_presence,
    user_routing_status,
    validate_id,
)
from genesys_mux.errors import ConfigError, InvalidIdError, InvalidTopicError

UUID = "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", fullmatch=True)
# A small pool as well, so that generated lists share prefixes and combine.
ENTITY_IDS = st.sampled_from([UUID, "U1", "q", "a" * 128, "streaming-0-abc"]) | IDS
MEDIA = st.none() | st.sampled_from(list(Media))
# Event names are short in practice; capping them keeps every plain topic
# within the combined-topic limit, which the combine property relies on.
EVENTS = st.sampled_from(
    ["acd.start", "acd.end", "user.start", "user.end", "customer.start", "acw", "wrapup"]
) | st.lists(st.from_regex(r"[a-z][a-zA-Z]{0,8}", fullmatch=True), min_size=1, max_size=3).map(
    ".".join
)


@st.composite
def topics(draw: st.DrawFn) -> Topic:
    """Any valid plain Topic, with only the fields its family uses."""
    family = draw(st.sampled_from(list(TopicFamily)))
    entity_id = draw(ENTITY_IDS)
    match family:
        case TopicFamily.QUEUE_CONVERSATIONS | TopicFamily.USER_CONVERSATIONS:
            return Topic(family, entity_id, media=draw(MEDIA))
        case TopicFamily.CONVERSATION_DETAIL_EVENTS:
            return Topic(family, entity_id, event=draw(EVENTS))
        case TopicFamily.OTHER:
            noun = draw(st.sampled_from(["activity", "users", "workplan", "outcomes", "x-y_z"]))
            lead = draw(st.sampled_from(["v2.users", "v2.routing.queues", "v2.flows"]))
            return Topic(family, "", name=f"{lead}.{entity_id}.{noun}")
        case _:
            return Topic(family, entity_id)


# --------------------------------------------------------------------------
# Parsing every family
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            f"v2.routing.queues.{UUID}.conversations",
            Topic(TopicFamily.QUEUE_CONVERSATIONS, UUID),
        ),
        (
            f"v2.routing.queues.{UUID}.conversations.calls",
            Topic(TopicFamily.QUEUE_CONVERSATIONS, UUID, media=Media.CALLS),
        ),
        (f"v2.users.{UUID}.conversations", Topic(TopicFamily.USER_CONVERSATIONS, UUID)),
        (
            f"v2.users.{UUID}.conversations.cobrowseSessions",
            Topic(TopicFamily.USER_CONVERSATIONS, UUID, media=Media.COBROWSE_SESSIONS),
        ),
        (f"v2.users.{UUID}.presence", Topic(TopicFamily.USER_PRESENCE, UUID)),
        (f"v2.users.{UUID}.routingStatus", Topic(TopicFamily.USER_ROUTING_STATUS, UUID)),
        (
            f"v2.detail.events.conversation.{UUID}.acd.start",
            Topic(TopicFamily.CONVERSATION_DETAIL_EVENTS, UUID, event="acd.start"),
        ),
        (
            f"v2.detail.events.conversation.{UUID}.wrapup",
            Topic(TopicFamily.CONVERSATION_DETAIL_EVENTS, UUID, event="wrapup"),
        ),
        (
            f"v2.analytics.queues.{UUID}.observations",
            Topic(TopicFamily.QUEUE_OBSERVATIONS, UUID),
        ),
    ],
)
def test_every_family_parses(name: str, expected: Topic) -> None:
    topic = parse_topic(name)
    assert topic == expected
    assert str(topic) == name


@pytest.mark.parametrize("media", list(Media))
def test_every_media_parses(media: Media) -> None:
    for prefix in (f"v2.routing.queues.{UUID}", f"v2.users.{UUID}"):
        topic = parse_topic(f"{prefix}.conversations.{media}")
        assert topic.media is media
        assert topic.prefix == prefix
        assert topic.suffix == f"conversations.{media}"


def test_prefix_and_suffix() -> None:
    topic = parse_topic(f"v2.detail.events.conversation.{UUID}.customer.end")
    assert topic.prefix == f"v2.detail.events.conversation.{UUID}"
    assert topic.suffix == "customer.end"


@given(topics())
def test_str_round_trips(topic: Topic) -> None:
    name = str(topic)
    assert parse_topic(name) == topic
    assert str(parse_topic(name)) == name
    assert expand_topic(name) == (name,)


# --------------------------------------------------------------------------
# Invalid topics
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("v2.system.socket_closing", "system topic"),
        ("v2.system.no_longer_subscribed.streaming-0-x", "system topic"),
        ("v2.users.U?presence&routingStatus", "combined topic"),
        ("v2.users.U.presence&routingStatus", "combined topic"),
        ("v2.conversations.calls", "expected one of"),
        ("v3.users.U.presence", "expected one of"),
        ("v2.users.U", "expected one of"),
        ("v2.users..presence", "expected one of"),
        ("", "expected one of"),
        ("v2.users.U.presence.", "expected one of"),
        (" v2.users.U.presence", "expected one of"),
        ("V2.USERS.U.PRESENCE", "expected one of"),
        ("v2.users.U.conversations.faxes", "media: calls, callbacks"),
        ("v2.users.U.conversations.CALLS", "media:"),
        ("v2.routing.queues.Q.conversations.calls.extra", "expected one of"),
        ("v2.detail.events.conversation.C", "expected one of"),
        ("v2.detail.events.conversation.C.ACD", "expected one of"),
        ("v2.detail.events.conversation.C.acd..start", "expected one of"),
    ],
)
def test_invalid_topics_explain_themselves(name: str, hint: str) -> None:
    with pytest.raises(InvalidTopicError, match="topic") as info:
        parse_topic(name)
    assert hint in str(info.value)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    "name",
    [
        "v2.users.U.activity",
        "v2.routing.queues.Q.users",
        "v2.routing.queues.Q.members",
        "v2.flows.outcomes.F-1",
        "v2.architect.prompts.p_1",
    ],
)
def test_other_topics_of_the_platform_s_shape_are_taken_as_given(name: str) -> None:
    """The platform has more topics than the six families: it says which it has (400)."""
    topic = parse_topic(name)
    assert topic.family is TopicFamily.OTHER
    assert str(topic) == name
    assert expand_topic(name) == (name,)
    assert topic.prefix == name.rpartition(".")[0]
    # Never combined: which of their words name the entity is not known here.
    assert combine_topics([name, f"{topic.prefix}.other"]) == [name, f"{topic.prefix}.other"]
    # A combined topic may hold them, when the platform takes it.
    assert expand_topic("v2.users.U?presence&activity") == (
        "v2.users.U.presence",
        "v2.users.U.activity",
    )


@pytest.mark.parametrize(
    "name",
    [
        "v2.system.anything.at.all",
        "v2.users.U.x/y",
        "v2.users.U.a?b",
        "v2.users.U.ümlaut",
        f"v2.users.{'u' * 128}.{'a' * 70}",  # past 200 characters
        "v2.users.U.conversations.faxes",  # a family's shape: a mistake in it
        "v2.analytics.queues.Q.observations.extra",
    ],
)
def test_other_topics_must_have_the_platform_s_shape(name: str) -> None:
    with pytest.raises(InvalidTopicError):
        parse_topic(name)


@pytest.mark.parametrize(
    "bad_id",
    [
        "a.b",
        "a?b",
        "a&b",
        "a/b",
        "a b",
        "ümlaut",
        "\uff41",  # fullwidth letter a
        "\u0663",  # Arabic-Indic digit three: a \d in Unicode regexes
        "",
        "x" * 129,
        "-leading",
        "_leading",
        "trailing\n",
        "a%2Fb",
    ],
)
def test_unsafe_ids_are_rejected_everywhere(bad_id: str) -> None:
    assert not is_valid_id(bad_id)
    with pytest.raises(InvalidIdError, match="not a valid Genesys id"):
        validate_id(bad_id, "queueId")
    for name in (f"v2.users.{bad_id}.presence", f"v2.routing.queues.{bad_id}.conversations"):
        # Refused, or at most another topic of the platform's shape: never
        # the family's topic for an entity named otherwise.
        try:
            topic = parse_topic(name)
        except InvalidTopicError:
            continue
        assert topic.family is TopicFamily.OTHER, (bad_id, topic)
    for build in (queue_conversations, user_conversations, user_presence, user_routing_status):
        with pytest.raises(InvalidIdError):
            build(bad_id)
    with pytest.raises(InvalidIdError):
        queue_observations(bad_id)
    with pytest.raises(InvalidIdError):
        conversation_detail_events(bad_id, "acd.start")


def test_id_message_names_the_kind_and_the_rule() -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_id("a/b", "queueId")
    message = str(info.value)
    assert message.startswith("queueId 'a/b'")
    assert "ASCII letters, digits" in message
    assert "starting with a letter or digit" in message


@pytest.mark.parametrize("value", [None, 5, b"abc"])
def test_validate_id_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidIdError):
        validate_id(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [UUID, "a", "A" * 128, "streaming-0-abc_DEF", "0"])
def test_safe_ids_are_accepted(good: str) -> None:
    assert is_valid_id(good)
    assert validate_id(good) == good


@given(st.text().filter(lambda s: any(c not in SAFE_CHARS for c in s)))
def test_any_id_with_an_unsafe_char_is_rejected(value: str) -> None:
    assert not is_valid_id(value)
    with pytest.raises(InvalidIdError):
        validate_id(value)


@given(st.text(max_size=140))
def test_parsed_ids_are_always_safe(value: str) -> None:
    # An unsafe id may still spell some *other* valid topic (an id "C.acd"
    # in a detail-event topic reads as id "C", event "acd.start"), but
    # whatever parses must carry a safe id.
    for name in (
        f"v2.users.{value}.presence",
        f"v2.detail.events.conversation.{value}.acd.start",
        f"v2.routing.queues.{value}.conversations.calls",
    ):
        try:
            topic = parse_topic(name)
        except InvalidTopicError:
            continue
        assert is_valid_id(topic.entity_id)
        assert str(topic) == name


@given(IDS)
def test_generated_ids_are_valid(value: str) -> None:
    assert validate_id(value) == value


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def test_builders() -> None:
    assert queue_conversations(UUID) == f"v2.routing.queues.{UUID}.conversations"
    assert queue_conversations(UUID, Media.EMAILS) == (
        f"v2.routing.queues.{UUID}.conversations.emails"
    )
    assert user_conversations("U", Media.MESSAGES) == "v2.users.U.conversations.messages"
    assert user_presence("U") == "v2.users.U.presence"
    assert user_routing_status("U") == "v2.users.U.routingStatus"
    assert conversation_detail_events("C", "acd.end") == ("v2.detail.events.conversation.C.acd.end")
    assert queue_observations("Q") == "v2.analytics.queues.Q.observations"


@pytest.mark.parametrize("event", ["", "ACD", "acd.", ".acd", "acd..end", "acd end", "acd?x"])
def test_detail_event_builder_rejects_bad_events(event: str) -> None:
    with pytest.raises(InvalidTopicError, match="detail event name"):
        conversation_detail_events("C", event)


# --------------------------------------------------------------------------
# Combined topics
# --------------------------------------------------------------------------


def test_expand_combined_topic() -> None:
    assert expand_topic("v2.users.U?presence&routingStatus") == (
        "v2.users.U.presence",
        "v2.users.U.routingStatus",
    )


def test_expand_combined_with_dotted_suffixes() -> None:
    assert expand_topic("v2.users.U?conversations.calls&conversations&presence") == (
        "v2.users.U.conversations.calls",
        "v2.users.U.conversations",
        "v2.users.U.presence",
    )
    assert expand_topic("v2.detail.events.conversation.C?acd.start&acd.end") == (
        "v2.detail.events.conversation.C.acd.start",
        "v2.detail.events.conversation.C.acd.end",
    )


def _combined_of_length(length: int) -> str:
    suffixes = "?presence&routingStatus&conversations&conversations.calls&conversations.chats"
    id_length = length - len("v2.users.") - len(suffixes)
    return f"v2.users.{'u' * id_length}{suffixes}"


def test_combined_topic_at_the_limit_is_accepted() -> None:
    name = _combined_of_length(MAX_COMBINED_TOPIC_LENGTH)
    assert len(name) == 200
    assert len(expand_topic(name)) == 5


def test_combined_topic_over_the_limit_is_rejected() -> None:
    name = _combined_of_length(MAX_COMBINED_TOPIC_LENGTH + 1)
    assert len(name) == 201
    with pytest.raises(InvalidTopicError, match="201 characters; the platform allows at most 200"):
        expand_topic(name)


@pytest.mark.parametrize(
    "name",
    [
        "v2.users.U?",
        "v2.users.U?&presence",
        "v2.users.U?presence&",
        "v2.users.U?presence&&routingStatus",
        "?presence&routingStatus",
        "v2.users.U?presence&presence",
    ],
)
def test_empty_or_duplicate_suffix_is_rejected(name: str) -> None:
    with pytest.raises(InvalidTopicError, match="distinct, non-empty suffixes"):
        expand_topic(name)


@pytest.mark.parametrize(
    "name",
    [
        "v2.users?U.presence&V.presence",
        "v2.users?U.presence&U.routingStatus",
        "v2?users.U.presence",
        "v2.detail.events.conversation.C.acd?start&end",
    ],
)
def test_mixed_or_partial_prefix_is_rejected(name: str) -> None:
    with pytest.raises(InvalidTopicError, match="is not an entity prefix"):
        expand_topic(name)


@pytest.mark.parametrize(
    "name",
    [
        "v2.users.U?presence&bo/gus",
        "v2.users.U?presence&conversations.faxes",
        "v2.users.U?presence?routingStatus",
        "v2.users.U?presence&v2.system.socket_closing",
        "v2.users.U/x?presence&routingStatus",
    ],
)
def test_combined_with_an_invalid_part_is_rejected(name: str) -> None:
    with pytest.raises(InvalidTopicError):
        expand_topic(name)


def test_combine_groups_by_prefix_in_order_of_first_appearance() -> None:
    names = [
        "v2.users.U.presence",
        "v2.routing.queues.Q.conversations",
        "v2.users.U.routingStatus",
        "v2.users.U.presence",
        "v2.users.V.presence",
    ]
    assert combine_topics(names) == [
        "v2.users.U?presence&routingStatus",
        "v2.routing.queues.Q.conversations",
        "v2.users.V.presence",
    ]


def test_combine_splits_at_the_length_limit() -> None:
    prefix = f"v2.users.{'u' * 120}"
    suffixes = [
        "presence",
        "routingStatus",
        "conversations",
        *(f"conversations.{m}" for m in Media),
    ]
    out = combine_topics(f"{prefix}.{s}" for s in suffixes)
    assert len(out) > 1
    assert all(len(c) <= MAX_COMBINED_TOPIC_LENGTH for c in out)
    assert [p for c in out for p in expand_topic(c)] == [f"{prefix}.{s}" for s in suffixes]


def test_combine_rejects_invalid_input() -> None:
    with pytest.raises(InvalidTopicError):
        combine_topics(["v2.users.U.presence", "v2.users.U?presence&routingStatus"])


def test_combine_leaves_an_over_long_plain_topic_alone() -> None:
    # The 200-character limit is on combined topics; a plain topic longer
    # than that (only possible with a long detail-event name) passes as is.
    long_topic = f"v2.detail.events.conversation.{'c' * 128}.{'e' * 60}"
    assert len(long_topic) > MAX_COMBINED_TOPIC_LENGTH
    assert combine_topics([long_topic, long_topic]) == [long_topic]
    assert expand_topic(long_topic) == (long_topic,)


def test_combine_empty() -> None:
    assert combine_topics([]) == []


@given(st.lists(topics().map(str), max_size=60))
def test_combine_then_expand_gives_each_distinct_input_once(names: list[str]) -> None:
    combined = combine_topics(names)
    assert all(len(c) <= MAX_COMBINED_TOPIC_LENGTH for c in combined)
    expanded = [part for c in combined for part in expand_topic(c)]
    assert len(expanded) == len(set(expanded))
    assert set(expanded) == set(names)
    # Combining never produces more strings than there were distinct topics.
    assert len(combined) <= len(set(names))


def test_combine_takes_one_word_suffixes_only() -> None:
    """The reference shows ``?presence&routingStatus``; nothing promises more."""
    names = [
        "v2.users.U.conversations.calls",
        "v2.users.U.presence",
        "v2.users.U.conversations",
        "v2.detail.events.conversation.C.acd.start",
        "v2.detail.events.conversation.C.acd.end",
        "v2.users.U.routingStatus",
        "v2.users.U.conversations.calls",
    ]
    assert combine_topics(names) == [
        "v2.users.U.conversations.calls",
        "v2.users.U?presence&conversations&routingStatus",
        "v2.detail.events.conversation.C.acd.start",
        "v2.detail.events.conversation.C.acd.end",
    ]
