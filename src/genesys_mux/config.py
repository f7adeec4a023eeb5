"""Configuration models: what a stream is, and the topics it compiles to.

Theory of operation
-------------------
A *stream* is one consumer-facing feed. Users describe it with a
:class:`StreamConfig`, written in JSON, TOML or Python::

    {"id": "voice-main", "filter": {"channelType": "voice", "state": "active"}, "priority": 1}

The models are strict about shape (unknown keys are rejected at every level,
ids are checked before they get near a URL or a topic) and patient about
reporting: :func:`parse_stream` and :func:`parse_streams` collect *every*
mistake, with its path (``streams[2].filter.channelType``), into one
:class:`~genesys_mux.errors.StreamConfigError`, so a config is fixed in one
pass. pydantic stays behind this boundary: callers never see its types.

A filter compiles to Notifications-API topics, because the platform has no
server-side filters, only topics naming concrete entities:

=========================  ==================================================
filter                     topics subscribed
=========================  ==================================================
``queueId``                ``v2.routing.queues.{q}.conversations[.{media}]``
``userId``                 ``v2.users.{u}.conversations[.{media}]``
``queueId`` + ``userId``   the user topic only; the queue is checked
                           client-side (see :func:`queue_constraint`)
neither                    the queue topic of *every* queue in the org
=========================  ==================================================

``channelType`` picks the media suffix (voice → ``calls``, chat → ``chats``,
email → ``emails``, callback → ``callbacks``, sms → ``messages``); without it
the un-suffixed ``...conversations`` topic carries every media. What a topic
cannot express is matched client-side on each snapshot: the media list
(:func:`media_for`), the sms message type (:func:`requires_sms`), the queue
when a user topic was chosen (:func:`queue_constraint`) and the conversation
state (:func:`state_for`). Those constraints apply to the events of the
filter's topics; raw ``topics`` are delivered as they arrive.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    Literal,
    Self,
    Union,
    get_args,
    get_origin,
)

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from genesys_mux.core.topics import (
    Media,
    expand_topic,
    is_valid_id,
    queue_conversations,
    user_conversations,
)
from genesys_mux.errors import ConfigError, InvalidTopicError, StreamConfigError

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "ChannelType",
    "ConversationState",
    "Overflow",
    "StreamConfig",
    "StreamFilter",
    "filter_topics",
    "media_for",
    "needs_all_queues",
    "parse_stream",
    "parse_streams",
    "queue_constraint",
    "raw_topics",
    "requires_sms",
    "state_for",
    "stream_topics",
]

#: The media of a conversation, in the words the seed's filters use.
ChannelType = Literal["voice", "chat", "email", "sms", "callback"]

#: Conversation states a stream can be restricted to (see DESIGN.md for the
#: predicate behind each one).
ConversationState = Literal["active", "queued", "monitoring"]

#: What a full stream buffer does with one more event. Every dropped event
#: goes to the dead-letter queue, so none of these loses anything silently.
Overflow = Literal["drop_oldest", "drop_newest", "backlog"]

#: How many streams one multiplexer accepts unless told otherwise.
DEFAULT_MAX_STREAMS: Final = 10

# sms has no topic of its own: it travels in the ``messages`` media with
# every other messaging type, hence the extra client-side check.
_MEDIA_OF: Final[Mapping[ChannelType, Media]] = {
    "voice": Media.CALLS,
    "chat": Media.CHATS,
    "email": Media.EMAILS,
    "sms": Media.MESSAGES,
    "callback": Media.CALLBACKS,
}

# The media participants of these media have no monitoredParticipantId in
# the vendor's topic models: a monitor shows only in the general shape.
_MONITOR_NOT_IN_MEDIA_SHAPE: Final = frozenset({Media.CHATS, Media.EMAILS, Media.CALLBACKS})

# Stream ids end up in metric labels, file names and Redis keys, so they are
# kept to characters that are safe in all three, and short.
_STREAM_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_STREAM_ID_RE: Final = re.compile(_STREAM_ID_PATTERN)
# For the JSON schema only; ``is_valid_id`` in core.topics is the authority.
_GENESYS_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


def _genesys_id(value: str) -> str:
    if not is_valid_id(value):
        raise PydanticCustomError(
            "genesys_id",
            "{value} is not a valid Genesys id: use 1-128 ASCII letters, digits, '-' or '_', "
            "starting with a letter or digit (Genesys ids are normally UUIDs)",
            {"value": repr(value)[:80]},
        )
    return value


def _stream_id(value: str) -> str:
    if _STREAM_ID_RE.fullmatch(value) is None:
        raise PydanticCustomError(
            "stream_id",
            "{value} is not a valid stream id: use 1-64 ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (it is used in metric labels, file names and "
            "Redis keys)",
            {"value": repr(value)[:80]},
        )
    return value


def _raw_topic(value: str) -> str:
    try:
        expand_topic(value)
    except InvalidTopicError as exc:
        # Re-raised as a pydantic error so it is collected with the others
        # and keeps its position (``topics[1]``) instead of ending the run.
        raise PydanticCustomError("genesys_topic", "{reason}", {"reason": str(exc)}) from exc
    return value


_GenesysId = Annotated[
    str, AfterValidator(_genesys_id), Field(json_schema_extra={"pattern": _GENESYS_ID_PATTERN})
]
_RawTopic = Annotated[str, AfterValidator(_raw_topic)]


class _ConfigModel(BaseModel):
    """A public configuration model whose failures are a :class:`ConfigError`, not pydantic's.

    Building one (``StreamConfig(...)``, ``model_validate``,
    ``model_validate_json``, ``model_validate_strings``) raises what
    :meth:`_config_error` makes of pydantic's report, with every mistake
    and its path, so callers handle one exception tree and never need
    pydantic. Validation as a field of another model stays pydantic's, so
    the outer model still collects every mistake of every part.
    """

    @classmethod
    def _config_error(cls, exc: ValidationError, data: object) -> ConfigError:
        """The error to raise for ``exc``, a failure to validate ``data``."""
        raise NotImplementedError

    @classmethod
    def _pydantic_validate(cls, obj: Any) -> Self:
        """pydantic's own model_validate, raising ValidationError, for code that collects them."""
        return super().model_validate(obj)

    # Hidden from type checkers, which keep the typed keyword signature
    # pydantic gives the constructor.
    if not TYPE_CHECKING:

        def __init__(self, /, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise self._config_error(exc, data) from None

        # Tells pydantic this is not a custom __init__: nested models are
        # then validated without it, their errors collected with the rest.
        __init__.__pydantic_base_init__ = True

        @classmethod
        def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
            try:
                return super().model_validate(obj, *args, **kwargs)
            except ValidationError as exc:
                raise cls._config_error(exc, obj) from None

        @classmethod
        def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Self:
            try:
                return super().model_validate_json(json_data, *args, **kwargs)
            except ValidationError as exc:
                raise cls._config_error(exc, None) from None

        @classmethod
        def model_validate_strings(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
            try:
                return super().model_validate_strings(obj, *args, **kwargs)
            except ValidationError as exc:
                raise cls._config_error(exc, obj) from None


class StreamFilter(_ConfigModel):
    """Which conversations a stream receives; every key is optional.

    The public (JSON, TOML) names are the Genesys camelCase ones:
    ``channelType``, ``queueId``, ``userId``, ``state``. The Python attributes
    are snake_case; both spellings are accepted on input, and dumps use the
    camelCase names. (Type checkers know the snake_case keywords,
    ``StreamFilter(channel_type="chat")``, only with pydantic's mypy
    plugin, and the camelCase ones only without it;
    ``StreamFilter.model_validate({"channelType": "chat"})`` type-checks
    either way: see "Type checking" in the library's documentation.) An
    empty filter, ``{}``, means every conversation of every queue in the org.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True
    )

    channel_type: ChannelType | None = Field(
        default=None,
        alias="channelType",
        description="Only conversations with this media; sms is a kind of message.",
    )
    queue_id: _GenesysId | None = Field(
        default=None, alias="queueId", description="Only conversations routed through this queue."
    )
    user_id: _GenesysId | None = Field(
        default=None, alias="userId", description="Only conversations this user takes part in."
    )
    state: ConversationState | None = Field(
        default=None,
        description="Only conversations in this state; entering and leaving it are marked.",
    )

    @classmethod
    def _config_error(cls, exc: ValidationError, data: object) -> ConfigError:
        return StreamConfigError(
            (_render_path("", e["loc"]), _render_message(e, StreamFilter)) for e in exc.errors()
        )


class StreamConfig(_ConfigModel):
    """One stream: its id, what it receives, and how it is buffered.

    A stream needs a ``filter``, raw ``topics``, or both. ``priority`` runs
    from 1 (served first) to 5; lower priorities are served less often but
    never starved. ``topics`` are extra Genesys topics delivered as they
    arrive (presence, detail events, ...); combined topics
    (``v2.users.{id}?presence&routingStatus``) are accepted.

    >>> StreamConfig(id="voice-main", filter={"channelType": "voice"}, priority=1).priority
    1
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, AfterValidator(_stream_id)] = Field(
        description="Unique name of the stream; used in metric labels, file names and Redis keys.",
        json_schema_extra={"pattern": _STREAM_ID_PATTERN},
    )
    filter: StreamFilter | None = Field(
        default=None, description="Conversations to receive; {} means every conversation."
    )
    # Strict ints: ``true`` or ``"2"`` for a priority is a mistake worth
    # reporting, not something to coerce quietly.
    priority: int = Field(default=3, ge=1, le=5, strict=True, description="1 (highest) to 5.")
    topics: tuple[_RawTopic, ...] = Field(
        default=(), description="Extra raw Genesys topics, delivered unfiltered."
    )
    buffer_size: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        strict=True,
        description="Events held for a slow consumer before the overflow policy applies.",
    )
    overflow: Overflow = Field(
        default="drop_oldest",
        description="What a full buffer does; dropped events go to the dead-letter queue.",
    )

    @field_validator("overflow", mode="before")
    @classmethod
    def _renamed_policy(cls, value: object) -> object:
        if value == "block":
            raise PydanticCustomError(
                "renamed",
                "overflow 'block' is now called 'backlog' (it never blocked the feed: it keeps "
                "up to ten buffers of backlog, then dead-letters new events); use 'backlog'",
            )
        return value

    @model_validator(mode="after")
    def _has_something_to_receive(self) -> StreamConfig:
        if self.filter is None and not self.topics:
            raise PydanticCustomError("filter_or_topics", _NOTHING_TO_RECEIVE)
        return self

    @classmethod
    def _config_error(cls, exc: ValidationError, data: object) -> ConfigError:
        return StreamConfigError(_stream_errors(exc, data, ""))


_NOTHING_TO_RECEIVE: Final = (
    'a stream needs a "filter", raw "topics", or both; '
    'use "filter": {} to receive every conversation of every queue'
)


# --------------------------------------------------------------------------
# Parsing with every error reported
# --------------------------------------------------------------------------


def parse_stream(data: Mapping[str, Any] | StreamConfig, *, path: str = "") -> StreamConfig:
    """Validate one stream definition, reporting every mistake at once.

    ``path`` prefixes the error paths (``streams[2]`` gives
    ``streams[2].filter.channelType``). A :class:`StreamConfig` is returned
    as it is: it was validated when it was built. Raises
    :class:`~genesys_mux.errors.StreamConfigError`.
    """
    if isinstance(data, StreamConfig):
        return data
    try:
        return StreamConfig._pydantic_validate(data)
    except ValidationError as exc:
        # Not chained: the errors hold all of pydantic's report, as plain
        # text, and callers must not need pydantic to read it (the I/O
        # boundaries, where a cause helps debugging, do chain theirs).
        raise StreamConfigError(_stream_errors(exc, data, path)) from None


def _stream_errors(exc: ValidationError, data: object, path: str) -> list[tuple[str, str]]:
    """pydantic's report on a stream as (path, message) pairs, ``path`` before each."""
    errors = [(_render_path(path, e["loc"]), _render_message(e)) for e in exc.errors()]
    # pydantic skips model validators once a field has failed, which
    # would hide this mistake until the next run; check it by hand.
    if (
        isinstance(data, Mapping)
        and data.get("filter") is None
        and not data.get("topics")
        and not any(e["type"] == "filter_or_topics" for e in exc.errors())
    ):
        errors.append((path or "(stream)", _NOTHING_TO_RECEIVE))
    return errors


def parse_streams(
    items: Sequence[Mapping[str, Any] | StreamConfig], *, max_streams: int = DEFAULT_MAX_STREAMS
) -> list[StreamConfig]:
    """Validate a list of streams, reporting every mistake of every stream at once.

    Besides each stream's own errors (paths ``streams[i]...``) this checks
    that ids are unique and that there are at most ``max_streams`` streams.
    Raises :class:`~genesys_mux.errors.StreamConfigError`.
    """
    if max_streams < 1:
        raise ConfigError(f"max_streams must be at least 1, not {max_streams}")
    # A lone mapping or a string is a Sequence-like of keys or characters;
    # iterating it would produce baffling per-item errors.
    if isinstance(items, Mapping | str | bytes):
        raise StreamConfigError(
            [("streams", f"must be a list of stream definitions, not {type(items).__name__}")]
        )
    configs: list[StreamConfig] = []
    errors: list[tuple[str, str]] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            configs.append(parse_stream(item, path=f"streams[{i}]"))
        except StreamConfigError as exc:
            errors.extend(exc.errors)
        # Duplicates are checked on the raw id too, so a stream that is
        # wrong elsewhere still has its clash reported in the same run.
        stream_id = item.id if isinstance(item, StreamConfig) else _raw_id(item)
        if stream_id is None:
            continue
        if stream_id in first_seen:
            errors.append(
                (
                    f"streams[{i}].id",
                    f"duplicate stream id {stream_id!r}, already used by "
                    f"streams[{first_seen[stream_id]}]; stream ids must be unique",
                )
            )
        else:
            first_seen[stream_id] = i
    if len(items) > max_streams:
        errors.append(
            (
                "streams",
                f"{len(items)} streams configured but at most max_streams={max_streams} are "
                "allowed; remove streams or raise the limit (Multiplexer(max_streams=...))",
            )
        )
    if errors:
        raise StreamConfigError(errors)
    return configs


def _raw_id(item: object) -> str | None:
    if isinstance(item, Mapping):
        value = item.get("id")
        if isinstance(value, str):
            return value
    return None


def _render_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out or "(stream)"


def _model_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def unknown_key_message(key: object, allowed: Sequence[str] | None) -> str:
    """The message for an unknown key: the likeliest key meant and every allowed one, if known."""
    if not allowed:
        return "unknown key"
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}allowed keys are {', '.join(allowed)}"


def keys_at(root: Any, loc: Sequence[int | str]) -> list[str] | None:
    """The keys allowed where pydantic found the unknown key at ``loc`` (the key last).

    ``root`` is the type validated: a model, or an annotation such as a
    discriminated union, whose members pydantic names in ``loc`` by tag.
    None when the place cannot be told.
    """
    current: Any = root
    for part in loc[:-1]:
        current = _step(current, part)
        if current is None:
            return None
    models = [c for c in _members(current) if _is_model(c)]
    return _model_keys(models[0]) if len(models) == 1 else None


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def _members(annotation: Any) -> list[Any]:
    """The types an annotation may hold: Annotated and unions unwrapped, None left out."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _step(annotation: Any, part: int | str) -> Any:
    """The annotation one step into ``annotation`` along ``part``, or None."""
    members = _members(annotation)
    for member in members:
        origin = get_origin(member)
        if isinstance(part, int) and origin in (list, tuple, Sequence):
            return get_args(member)[0]
        if isinstance(part, str) and origin in (dict, Mapping):
            return get_args(member)[1]
        if isinstance(part, str) and _is_model(member):
            for name, info in member.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
    # A union member, named by its tag (the Literal of its discriminator).
    for member in members:
        if _is_model(member) and any(
            part in get_args(info.annotation)
            for info in member.model_fields.values()
            if get_origin(info.annotation) is Literal
        ):
            return member
    return None


def _render_message(error: ErrorDetails, model: type[BaseModel] | None = None) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        if model is None:
            model = StreamFilter if len(loc) == 2 and loc[0] == "filter" else StreamConfig
        return unknown_key_message(loc[-1] if loc else "", _model_keys(model))
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    value = error.get("input")
    # Echo short scalar inputs so the user sees what was read (TOML and
    # JSON typing surprises are common); our own messages already do.
    if kind not in {"genesys_id", "stream_id", "genesys_topic", "missing"} and isinstance(
        value, str | int | float | bool
    ):
        message += f" (got {repr(value)[:60]})"
    return message


# --------------------------------------------------------------------------
# Filter → topics
# --------------------------------------------------------------------------


def needs_all_queues(config: StreamConfig) -> bool:
    """True when the stream's filter names neither a queue nor a user.

    Such a stream covers every queue of the org, so its topics depend on the
    current queue list (see :func:`stream_topics`).
    """
    f = config.filter
    return f is not None and f.queue_id is None and f.user_id is None


def filter_topics(config: StreamConfig, queue_ids: Iterable[str] = ()) -> frozenset[str]:
    """The topics the stream's filter compiles to (no raw topics).

    ``queue_ids`` is the org's current queue list; it is only read when
    :func:`needs_all_queues` is true. When both ``queueId`` and ``userId``
    are given, only the user topic is subscribed: the user's topic carries
    every conversation the user is in, whichever queue it came through, and
    is far quieter than the queue's, so the queue is checked client-side
    instead (:func:`queue_constraint`). Raises
    :class:`~genesys_mux.errors.InvalidIdError` for an unsafe queue id.

    A ``channelType`` picks the media topic (``….conversations.calls``),
    whose bodies are media participants. One exception: a ``monitoring``
    stream of chats, emails or callbacks subscribes the general topic,
    because those media participants cannot say who monitors whom; the
    media is then checked client-side (:func:`media_for`).
    """
    f = config.filter
    if f is None:
        return frozenset()
    media = media_for(config)
    if f.state == "monitoring" and media in _MONITOR_NOT_IN_MEDIA_SHAPE:
        media = None
    if f.user_id is not None:
        return frozenset({user_conversations(f.user_id, media)})
    if f.queue_id is not None:
        return frozenset({queue_conversations(f.queue_id, media)})
    return frozenset(queue_conversations(q, media) for q in queue_ids)


def raw_topics(config: StreamConfig) -> frozenset[str]:
    """The stream's raw ``topics``, with combined topics expanded to plain ones."""
    return frozenset(t for raw in config.topics for t in expand_topic(raw))


def stream_topics(config: StreamConfig, queue_ids: Iterable[str] = ()) -> frozenset[str]:
    """Every plain topic the stream needs: its filter's and its raw ones.

    ``queue_ids`` is the org's current queue list, used when the filter
    names neither a queue nor a user (:func:`needs_all_queues`).
    """
    return filter_topics(config, queue_ids) | raw_topics(config)


# --------------------------------------------------------------------------
# What the topics cannot express: matched client-side on each snapshot
# --------------------------------------------------------------------------


def media_for(config: StreamConfig) -> Media | None:
    """The participant media list a snapshot must contain, or None for any.

    This is the topic suffix too (``messages`` for sms). It is checked
    client-side as well because a user topic without a suffix would bring
    every media, and to be safe when a snapshot arrives on a raw topic.
    """
    f = config.filter
    if f is None or f.channel_type is None:
        return None
    return _MEDIA_OF[f.channel_type]


def requires_sms(config: StreamConfig) -> bool:
    """True when a snapshot must have a ``messages[]`` entry with ``type == "sms"``.

    sms shares the ``messages`` topics with web messaging, WhatsApp and the
    rest, so the type can only be told apart in the snapshot.
    """
    f = config.filter
    return f is not None and f.channel_type == "sms"


def queue_constraint(config: StreamConfig) -> str | None:
    """The queue a snapshot must involve, when the topic does not guarantee it.

    Only set when the filter has both ``queueId`` and ``userId``: the user
    topic is subscribed, and a participant of the snapshot must carry this
    ``queueId``.
    """
    f = config.filter
    if f is None or f.queue_id is None or f.user_id is None:
        return None
    return f.queue_id


def state_for(config: StreamConfig) -> ConversationState | None:
    """The conversation state the stream is restricted to, or None for any."""
    return None if config.filter is None else config.filter.state
