"""Tests for genesys_mux.config: stream models, error reporting, filter → topics."""

from __future__ import annotations

import pickle
from types import MappingProxyType
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genesys_mux.config import (
    DEFAULT_MAX_STREAMS,
    StreamConfig,
    StreamFilter,
    filter_topics,
    media_for,
    needs_all_queues,
    parse_stream,
    parse_streams,
    queue_constraint,
    raw_topics,
    requires_sms,
    state_for,
    stream_topics,
)
from genesys_mux.core.topics import Media, TopicFamily, parse_topic
from genesys_mux.errors import ConfigError, GenesysMuxError, InvalidIdError, StreamConfigError

QUEUE = "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
USER = "a1b2c3d4-0000-4000-8000-123456789abc"


def errors_of(data: Any) -> tuple[tuple[str, str], ...]:
    """The (path, message) pairs parse_stream reports for ``data``."""
    with pytest.raises(StreamConfigError) as info:
        parse_stream(data)
    return info.value.errors


def paths_of(data: Any) -> list[str]:
    return [path for path, _ in errors_of(data)]


def stream(**fields: Any) -> StreamConfig:
    """A valid stream with an empty filter unless told otherwise."""
    fields.setdefault("id", "s")
    if "topics" not in fields:
        fields.setdefault("filter", {})
    return parse_stream(fields)


# --------------------------------------------------------------------------
# The documented forms
# --------------------------------------------------------------------------


def test_documented_constructor_form() -> None:
    config = StreamConfig(
        id="chat-support",
        filter={"channelType": "chat", "queueId": QUEUE},
        priority=2,
    )
    assert config.filter == StreamFilter(channel_type="chat", queue_id=QUEUE)
    assert config.priority == 2


def test_documented_parse_form_and_defaults() -> None:
    config = parse_stream(
        {"id": "voice-main", "filter": {"channelType": "voice", "state": "active"}, "priority": 1}
    )
    assert config.id == "voice-main"
    assert config.filter is not None
    assert config.filter.channel_type == "voice"
    assert config.filter.state == "active"
    assert config.filter.queue_id is None
    assert config.filter.user_id is None
    assert config.topics == ()
    assert config.buffer_size == 1000
    assert config.overflow == "drop_oldest"


def test_default_priority_is_three() -> None:
    assert stream().priority == 3


def test_json_schema_uses_public_names_and_forbids_extras() -> None:
    schema = StreamConfig.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["id"]
    flt = schema["$defs"]["StreamFilter"]
    assert flt["additionalProperties"] is False
    assert set(flt["properties"]) == {"channelType", "queueId", "userId", "state"}


def test_filter_accepts_both_spellings_and_dumps_camel_case() -> None:
    by_alias = StreamFilter.model_validate({"channelType": "sms", "userId": USER})
    by_name = StreamFilter.model_validate({"channel_type": "sms", "user_id": USER})
    assert by_alias == by_name
    assert by_alias.model_dump(exclude_none=True) == {"channelType": "sms", "userId": USER}


def test_models_are_frozen_and_hashable() -> None:
    config = stream(filter={"channelType": "chat"})
    with pytest.raises(Exception, match="frozen"):
        config.priority = 1  # type: ignore[misc]
    assert config.filter is not None
    with pytest.raises(Exception, match="frozen"):
        config.filter.state = "active"  # type: ignore[misc]
    assert hash(config) == hash(stream(filter={"channelType": "chat"}))


def test_round_trip_through_dump() -> None:
    config = stream(
        filter={"channelType": "email", "queueId": QUEUE, "state": "queued"},
        topics=["v2.users.U1?presence&routingStatus"],
        priority=5,
        buffer_size=7,
        overflow="backlog",
    )
    assert parse_stream(config.model_dump()) == config
    assert StreamConfig.model_validate_json(config.model_dump_json()) == config


def test_parse_stream_returns_a_config_as_is() -> None:
    config = stream()
    assert parse_stream(config) is config


def test_parse_stream_accepts_any_mapping() -> None:
    data = MappingProxyType({"id": "m", "filter": MappingProxyType({"channelType": "voice"})})
    assert parse_stream(data).filter == StreamFilter(channel_type="voice")


# --------------------------------------------------------------------------
# Field validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "A", "0", "voice-main", "q.1_x-Y", "a" * 64])
def test_good_stream_ids(good: str) -> None:
    assert stream(id=good).id == good


@pytest.mark.parametrize(
    "bad", ["", "-a", ".a", "_a", "a b", "a/b", "a:b", "ä", "a" * 65, "a\n", "x*"]
)
def test_bad_stream_ids(bad: str) -> None:
    [(path, message)] = errors_of({"id": bad, "filter": {}})
    assert path == "id"
    assert "1-64" in message
    assert "starting with a letter or digit" in message


def test_stream_id_must_be_a_string() -> None:
    assert paths_of({"id": 5, "filter": {}}) == ["id"]


def test_missing_id() -> None:
    [(path, message)] = errors_of({"filter": {}})
    assert path == "id"
    assert "required" in message.lower()


@pytest.mark.parametrize("channel", ["voice", "chat", "email", "sms", "callback", None])
def test_good_channel_types(channel: str | None) -> None:
    config = stream(filter={"channelType": channel})
    assert config.filter is not None
    assert config.filter.channel_type == channel


@pytest.mark.parametrize("bad", ["video", "VOICE", "calls", "", 1])
def test_bad_channel_types(bad: object) -> None:
    [(path, message)] = errors_of({"id": "s", "filter": {"channelType": bad}})
    assert path == "filter.channelType"
    assert "'voice'" in message


@pytest.mark.parametrize("state", ["active", "queued", "monitoring", None])
def test_good_states(state: str | None) -> None:
    config = stream(filter={"state": state})
    assert state_for(config) == state


@pytest.mark.parametrize("bad", ["Active", "connected", "wrapup", 0])
def test_bad_states(bad: object) -> None:
    assert paths_of({"id": "s", "filter": {"state": bad}}) == ["filter.state"]


@pytest.mark.parametrize("key", ["queueId", "userId"])
@pytest.mark.parametrize("good", [QUEUE, "q", "Q_1-x", "a" * 128])
def test_good_entity_ids(key: str, good: str) -> None:
    stream(filter={key: good})


@pytest.mark.parametrize("key", ["queueId", "userId"])
@pytest.mark.parametrize("bad", ["", "a.b", "a?b", "a&b", "a/b", "-a", "a b", "a" * 129, "é"])
def test_bad_entity_ids(key: str, bad: str) -> None:
    [(path, message)] = errors_of({"id": "s", "filter": {key: bad}})
    assert path == f"filter.{key}"
    assert "not a valid Genesys id" in message
    assert "1-128 ASCII letters, digits, '-' or '_'" in message


def test_entity_id_must_be_a_string() -> None:
    assert paths_of({"id": "s", "filter": {"queueId": 7}}) == ["filter.queueId"]


@pytest.mark.parametrize("priority", [1, 2, 3, 4, 5])
def test_good_priorities(priority: int) -> None:
    assert stream(priority=priority).priority == priority


@pytest.mark.parametrize("bad", [0, 6, -1, 100, "2", 2.0, True, None])
def test_bad_priorities(bad: object) -> None:
    [(path, message)] = errors_of({"id": "s", "filter": {}, "priority": bad})
    assert path == "priority"
    assert "got" in message or bad is None


@pytest.mark.parametrize("size", [1, 2, 1000, 1_000_000])
def test_good_buffer_sizes(size: int) -> None:
    assert stream(buffer_size=size).buffer_size == size


@pytest.mark.parametrize("bad", [0, -5, 1_000_001, "10", 10.0, False])
def test_bad_buffer_sizes(bad: object) -> None:
    assert paths_of({"id": "s", "filter": {}, "buffer_size": bad}) == ["buffer_size"]


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "backlog"])
def test_good_overflow(overflow: str) -> None:
    assert stream(overflow=overflow).overflow == overflow


@pytest.mark.parametrize("bad", ["drop", "DROP_OLDEST", "", None, 1])
def test_bad_overflow(bad: object) -> None:
    [(path, message)] = errors_of({"id": "s", "filter": {}, "overflow": bad})
    assert path == "overflow"
    assert "'drop_oldest'" in message


def test_good_raw_topics_including_combined() -> None:
    topics = (
        f"v2.users.{USER}.presence",
        f"v2.users.{USER}?presence&routingStatus",
        f"v2.detail.events.conversation.{QUEUE}.acd.start",
        f"v2.analytics.queues.{QUEUE}.observations",
    )
    assert stream(topics=list(topics)).topics == topics


def test_bad_raw_topics_each_reported_with_its_index() -> None:
    errors = errors_of(
        {
            "id": "s",
            "topics": [
                "v2.users.U1.presence",
                "v2.users.U1.conversations.fax",
                "v2.system.heartbeat",
                "v2.users.U1?presence&presence",
                "v2.users.a.b.presence",
            ],
        }
    )
    assert [p for p, _ in errors] == ["topics[1]", "topics[2]", "topics[3]", "topics[4]"]
    assert "system topic" in errors[1][1]
    assert "distinct" in errors[2][1]


def test_topics_must_be_a_list_of_strings() -> None:
    assert paths_of({"id": "s", "topics": "v2.users.U1.presence"}) == ["topics"]
    assert paths_of({"id": "s", "topics": ["v2.users.U1.presence", 3]}) == ["topics[1]"]


@pytest.mark.parametrize(
    "extra",
    [{"bogus": 1}, {"Priority": 1}, {"channelType": "voice"}, {"max_streams": 3}],
)
def test_unknown_top_level_keys(extra: dict[str, Any]) -> None:
    [(key, _)] = extra.items()
    [(path, message)] = errors_of({"id": "s", "filter": {}, **extra})
    assert path == key
    assert message.startswith("unknown key")
    assert "id, filter, priority, topics, buffer_size, overflow" in message


@pytest.mark.parametrize("key", ["bogus", "channel", "queue_ids", "mediaType", "priority"])
def test_unknown_filter_keys(key: str) -> None:
    [(path, message)] = errors_of({"id": "s", "filter": {key: "x"}})
    assert path == f"filter.{key}"
    assert "channelType, queueId, userId, state" in message


def test_filter_must_be_a_mapping() -> None:
    assert paths_of({"id": "s", "filter": "voice"}) == ["filter"]


def test_stream_must_be_a_mapping() -> None:
    assert paths_of(["id", "s"]) == ["(stream)"]


# --------------------------------------------------------------------------
# The filter-or-topics rule
# --------------------------------------------------------------------------


def test_empty_filter_is_allowed_and_means_every_queue() -> None:
    config = stream(filter={})
    assert needs_all_queues(config)


def test_topics_alone_are_allowed() -> None:
    config = stream(topics=["v2.users.U1.presence"])
    assert config.filter is None
    assert not needs_all_queues(config)


@pytest.mark.parametrize(
    "data",
    [{"id": "s"}, {"id": "s", "filter": None}, {"id": "s", "topics": []}],
)
def test_neither_filter_nor_topics_is_rejected(data: dict[str, Any]) -> None:
    [(path, message)] = errors_of(data)
    assert path == "(stream)"
    assert '"filter"' in message
    assert '"topics"' in message


def test_neither_rule_on_the_constructor() -> None:
    with pytest.raises(StreamConfigError, match="filter"):
        StreamConfig(id="s")


def test_building_a_model_directly_raises_our_error_with_every_mistake() -> None:
    """Not pydantic's ValidationError: what the docs promise, as add_stream({...}) does."""
    with pytest.raises(StreamConfigError) as info:
        StreamConfig(id="voice-main", filter={"channelType": "voice"}, priority=9)
    assert info.value.errors == (("priority", "Input should be less than or equal to 5 (got 9)"),)
    assert info.value.__cause__ is None
    with pytest.raises(StreamConfigError) as info:
        StreamConfig.model_validate({"id": "bad id", "filter": {"channelType": "voce", "x": 1}})
    assert [path for path, _ in info.value.errors] == ["id", "filter.channelType", "filter.x"]
    with pytest.raises(StreamConfigError) as info:
        StreamConfig.model_validate_json('{"id": "s"}')
    assert info.value.errors[0][0] == "(stream)"
    with pytest.raises(StreamConfigError) as info:
        StreamFilter(channel_type="fax")
    ((path, message),) = info.value.errors
    assert path == "channel_type"  # the spelling the caller used
    assert "'fax'" in message
    with pytest.raises(StreamConfigError, match="allowed keys are channelType, queueId"):
        StreamFilter.model_validate({"colour": "red"})
    # Valid input is unchanged.
    assert StreamConfig(id="s", filter={}).filter == StreamFilter()


def test_neither_rule_reported_alongside_field_errors() -> None:
    # pydantic skips model validators after a field error; parse_stream must not.
    errors = errors_of({"id": "bad id", "priority": 9})
    assert [p for p, _ in errors] == ["id", "priority", "(stream)"]


# --------------------------------------------------------------------------
# Reporting every error at once
# --------------------------------------------------------------------------


FIVE_MISTAKES: list[dict[str, Any]] = [
    {"id": "voice-main", "filter": {"channelType": "voice", "state": "active"}, "priority": 1},
    {"id": "chat-support", "filter": {"channelType": "chta", "queueId": QUEUE}, "priority": 0},
    {"id": "ok", "filter": {"queueId": "a.b"}, "colour": "red"},
    {"id": "presence", "topics": ["v2.users.U1.presence", "v2.users.U1.presence.mood"]},
]
FIVE_PATHS = [
    "streams[1].filter.channelType",
    "streams[1].priority",
    "streams[2].filter.queueId",
    "streams[2].colour",
    "streams[3].topics[1]",
]


def test_five_mistakes_all_reported_with_paths() -> None:
    with pytest.raises(StreamConfigError) as info:
        parse_streams(FIVE_MISTAKES)
    assert [p for p, _ in info.value.errors] == FIVE_PATHS
    text = str(info.value)
    assert text.startswith("5 errors in the stream configuration:")
    lines = text.splitlines()
    for path in FIVE_PATHS:
        assert sum(line.strip().startswith(f"{path}: ") for line in lines) == 1
    assert "'chta'" in text
    assert "Fix the value at each path" in text


def test_stream_config_error_is_a_config_error_and_pickles() -> None:
    with pytest.raises(StreamConfigError) as info:
        parse_streams(FIVE_MISTAKES)
    exc = info.value
    assert isinstance(exc, ConfigError)
    assert isinstance(exc, GenesysMuxError)
    again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - bytes we just made
    assert again.errors == exc.errors
    assert str(again) == str(exc)


def test_single_error_text() -> None:
    text = str(StreamConfigError([("id", "wrong")]))
    assert text.splitlines()[:2] == ["1 error in the stream configuration:", "  id: wrong"]


def test_path_prefix() -> None:
    with pytest.raises(StreamConfigError) as info:
        parse_stream({"id": "s", "filter": {"state": "x"}}, path="streams[4]")
    assert [p for p, _ in info.value.errors] == ["streams[4].filter.state"]


def test_no_pydantic_types_leak() -> None:
    with pytest.raises(StreamConfigError) as info:
        parse_stream({"id": "s", "filter": {"state": "x"}})
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    for path, message in info.value.errors:
        assert type(path) is str
        assert type(message) is str


def test_parse_streams_happy_path_keeps_order() -> None:
    configs = parse_streams(
        [
            {"id": "a", "filter": {}},
            StreamConfig(id="b", topics=("v2.users.U1.presence",)),
            {"id": "c", "filter": {"userId": USER}},
        ]
    )
    assert [c.id for c in configs] == ["a", "b", "c"]


def test_parse_streams_empty_list() -> None:
    assert parse_streams([]) == []


def test_duplicate_ids() -> None:
    items: list[Any] = [
        {"id": "a", "filter": {}},
        {"id": "b", "filter": {}},
        StreamConfig(id="a", filter=StreamFilter()),
        {"id": "a", "filter": {}, "priority": 9},  # wrong elsewhere: the clash is still reported
    ]
    with pytest.raises(StreamConfigError) as info:
        parse_streams(items)
    errors = info.value.errors
    assert [p for p, _ in errors] == ["streams[2].id", "streams[3].priority", "streams[3].id"]
    assert "duplicate stream id 'a'" in errors[0][1]
    assert "streams[0]" in errors[0][1]


def test_max_streams_default() -> None:
    items = [{"id": f"s{i}", "filter": {}} for i in range(DEFAULT_MAX_STREAMS)]
    assert len(parse_streams(items)) == DEFAULT_MAX_STREAMS == 10
    with pytest.raises(StreamConfigError) as info:
        parse_streams([*items, {"id": "one-more", "filter": {}}])
    [(path, message)] = info.value.errors
    assert path == "streams"
    assert "11 streams" in message
    assert "max_streams=10" in message
    assert "raise the limit" in message


def test_max_streams_reported_with_other_errors() -> None:
    items: list[Any] = [{"id": "x", "filter": {}}, {"id": "x", "filter": {"bogus": 1}}, {"id": "z"}]
    with pytest.raises(StreamConfigError) as info:
        parse_streams(items, max_streams=2)
    assert [p for p, _ in info.value.errors] == [
        "streams[1].filter.bogus",
        "streams[1].id",
        "streams[2]",
        "streams",
    ]
    assert "max_streams=2" in str(info.value)


def test_max_streams_raised() -> None:
    items = [{"id": f"s{i}", "filter": {}} for i in range(25)]
    assert len(parse_streams(items, max_streams=25)) == 25


def test_max_streams_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_streams"):
        parse_streams([], max_streams=0)


@pytest.mark.parametrize("bad", [{"id": "s", "filter": {}}, "streams"])
def test_parse_streams_wants_a_list(bad: Any) -> None:
    with pytest.raises(StreamConfigError) as info:
        parse_streams(bad)
    [(path, message)] = info.value.errors
    assert path == "streams"
    assert "list" in message


def test_non_mapping_item_in_list() -> None:
    with pytest.raises(StreamConfigError) as info:
        parse_streams([{"id": "a", "filter": {}}, cast(Any, 42)])
    assert [p for p, _ in info.value.errors] == ["streams[1]"]


# --------------------------------------------------------------------------
# Filter → topics
# --------------------------------------------------------------------------

MEDIA_OF = {
    "voice": "calls",
    "chat": "chats",
    "email": "emails",
    "callback": "callbacks",
    "sms": "messages",
}


@pytest.mark.parametrize(("channel", "media"), MEDIA_OF.items())
def test_queue_topic_per_channel_type(channel: str, media: str) -> None:
    config = stream(filter={"channelType": channel, "queueId": QUEUE})
    assert stream_topics(config) == {f"v2.routing.queues.{QUEUE}.conversations.{media}"}
    assert media_for(config) == media
    assert isinstance(media_for(config), Media)


@pytest.mark.parametrize(("channel", "media"), MEDIA_OF.items())
def test_user_topic_per_channel_type(channel: str, media: str) -> None:
    config = stream(filter={"channelType": channel, "userId": USER})
    assert stream_topics(config) == {f"v2.users.{USER}.conversations.{media}"}


def test_no_channel_type_gives_unsuffixed_topic() -> None:
    assert stream_topics(stream(filter={"queueId": QUEUE})) == {
        f"v2.routing.queues.{QUEUE}.conversations"
    }
    assert stream_topics(stream(filter={"userId": USER})) == {f"v2.users.{USER}.conversations"}
    assert media_for(stream(filter={"queueId": QUEUE})) is None


def test_queue_and_user_subscribes_user_only_and_checks_queue_client_side() -> None:
    config = stream(filter={"channelType": "chat", "queueId": QUEUE, "userId": USER})
    assert stream_topics(config, [QUEUE, "other"]) == {f"v2.users.{USER}.conversations.chats"}
    assert queue_constraint(config) == QUEUE
    assert not needs_all_queues(config)


def test_queue_constraint_only_when_both_given() -> None:
    assert queue_constraint(stream(filter={"queueId": QUEUE})) is None
    assert queue_constraint(stream(filter={"userId": USER})) is None
    assert queue_constraint(stream(filter={})) is None
    assert queue_constraint(stream(topics=["v2.users.U1.presence"])) is None


def test_neither_queue_nor_user_covers_every_given_queue() -> None:
    config = stream(filter={"channelType": "voice", "state": "queued"})
    assert needs_all_queues(config)
    assert stream_topics(config, ["q1", "q2", "q3"]) == {
        "v2.routing.queues.q1.conversations.calls",
        "v2.routing.queues.q2.conversations.calls",
        "v2.routing.queues.q3.conversations.calls",
    }
    assert stream_topics(config) == frozenset()
    assert stream_topics(config, iter(["q1", "q1"])) == {"v2.routing.queues.q1.conversations.calls"}


@pytest.mark.parametrize("channel", ["chat", "email", "callback"])
def test_monitoring_without_a_monitor_field_in_the_media_shape_uses_the_general_topic(
    channel: str,
) -> None:
    """Chat, email and callback media participants lack monitoredParticipantId."""
    config = stream(filter={"channelType": channel, "state": "monitoring", "queueId": QUEUE})
    assert stream_topics(config) == {f"v2.routing.queues.{QUEUE}.conversations"}
    assert media_for(config) is not None  # the media is still checked client-side
    other_state = stream(filter={"channelType": channel, "state": "active", "queueId": QUEUE})
    assert stream_topics(other_state) == {
        f"v2.routing.queues.{QUEUE}.conversations.{media_for(config)}"
    }


@pytest.mark.parametrize(("channel", "suffix"), [("voice", "calls"), ("sms", "messages")])
def test_monitoring_of_calls_and_messages_keeps_the_media_topic(channel: str, suffix: str) -> None:
    config = stream(filter={"channelType": channel, "state": "monitoring", "userId": USER})
    assert stream_topics(config) == {f"v2.users.{USER}.conversations.{suffix}"}


def test_empty_filter_covers_every_queue_unsuffixed() -> None:
    assert stream_topics(stream(filter={}), ["q1", "q2"]) == {
        "v2.routing.queues.q1.conversations",
        "v2.routing.queues.q2.conversations",
    }


def test_queue_list_ignored_when_filter_names_an_entity() -> None:
    config = stream(filter={"queueId": QUEUE})
    assert stream_topics(config, ["q1", "q2"]) == stream_topics(config)


def test_unsafe_queue_id_from_the_list_is_refused() -> None:
    with pytest.raises(InvalidIdError):
        stream_topics(stream(filter={}), ["q1", "q1.presence"])


def test_raw_topics_merged_and_combined_expanded() -> None:
    config = stream(
        filter={"channelType": "email", "userId": USER},
        topics=[
            "v2.users.U1?presence&routingStatus",
            "v2.users.U1.presence",
            f"v2.analytics.queues.{QUEUE}.observations",
        ],
    )
    assert raw_topics(config) == {
        "v2.users.U1.presence",
        "v2.users.U1.routingStatus",
        f"v2.analytics.queues.{QUEUE}.observations",
    }
    assert filter_topics(config) == {f"v2.users.{USER}.conversations.emails"}
    assert stream_topics(config) == raw_topics(config) | filter_topics(config)


def test_topics_only_stream() -> None:
    config = stream(topics=["v2.users.U1?presence&routingStatus"])
    assert filter_topics(config, ["q1"]) == frozenset()
    assert stream_topics(config, ["q1"]) == {
        "v2.users.U1.presence",
        "v2.users.U1.routingStatus",
    }


def test_all_queues_plus_raw_topics() -> None:
    config = stream(filter={"channelType": "sms"}, topics=["v2.users.U1.presence"])
    assert stream_topics(config, ["q1"]) == {
        "v2.routing.queues.q1.conversations.messages",
        "v2.users.U1.presence",
    }


# --------------------------------------------------------------------------
# Client-side constraints
# --------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["voice", "chat", "email", "sms", "callback", None])
def test_requires_sms_only_for_sms(channel: str | None) -> None:
    assert requires_sms(stream(filter={"channelType": channel})) is (channel == "sms")


def test_requires_sms_without_filter() -> None:
    assert not requires_sms(stream(topics=["v2.users.U1.presence"]))


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", fullmatch=True)
FILTERS = st.fixed_dictionaries(
    {},
    optional={
        "channelType": st.none() | st.sampled_from(list(MEDIA_OF)),
        "queueId": st.none() | IDS,
        "userId": st.none() | IDS,
        "state": st.none() | st.sampled_from(["active", "queued", "monitoring"]),
    },
)


@given(flt=FILTERS, queues=st.lists(IDS, max_size=5))
def test_every_filter_topic_parses(flt: dict[str, Any], queues: list[str]) -> None:
    config = parse_stream({"id": "p", "filter": flt})
    topics = stream_topics(config, queues)
    channel: str | None = flt.get("channelType")
    # Monitors show in the general shape only for these media (see the
    # monitoring tests above): their monitoring streams read the general topic.
    media: Media | None
    if channel is None or (
        flt.get("state") == "monitoring" and channel in ("chat", "email", "callback")
    ):
        media = None
    else:
        media = Media(MEDIA_OF[channel])
    for name in topics:
        topic = parse_topic(name)
        assert str(topic) == name
        assert topic.media == media
        if flt.get("userId") is not None:
            assert topic.family is TopicFamily.USER_CONVERSATIONS
            assert topic.entity_id == flt["userId"]
        else:
            assert topic.family is TopicFamily.QUEUE_CONVERSATIONS
    if flt.get("userId") is not None or flt.get("queueId") is not None:
        assert len(topics) == 1
    else:
        assert {parse_topic(t).entity_id for t in topics} == set(queues)


@given(
    good=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    junk=st.text(min_size=1, max_size=3).filter(
        lambda s: any(not (c.isascii() and (c.isalnum() or c in "_.-")) for c in s)
    ),
)
def test_stream_id_rule(good: str, junk: str) -> None:
    assert stream(id=good).id == good
    assert paths_of({"id": good + junk, "filter": {}}) == ["id"]


def test_the_renamed_overflow_policy_is_refused_with_the_new_name() -> None:
    with pytest.raises(StreamConfigError) as info:
        parse_stream({"id": "s", "filter": {}, "overflow": "block"})
    ((path, message),) = info.value.errors
    assert path == "overflow"
    assert "use 'backlog'" in message
    assert parse_stream({"id": "s", "filter": {}, "overflow": "backlog"}).overflow == "backlog"
