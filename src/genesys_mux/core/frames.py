"""Decoding of inbound WebSocket frames and encoding of outbound client messages.

Theory of operation
-------------------
Every message on a Notifications socket is one JSON text frame, and the
server mixes several unrelated shapes on the same socket (see the reference,
§4 and §5):

* notifications ``{"topicName", "version", "eventBody", "metadata"}``;
* ``channel.metadata`` frames: heartbeats and pongs;
* system topics the platform sends unasked (``v2.system.socket_closing``,
  ``v2.system.no_longer_subscribed.{id}``, ``v2.system.token_revoked.{id}``,
  ``v2.subscription.updated``, any other ``v2.system.*``);
* acks of socket subscribe/unsubscribe requests ``{"correlationId", "result", ...}``;
* channel failures ``{"result": "404", "message"}`` with no correlation id.

:func:`decode_frame` turns one frame into exactly one of the typed variants
of :data:`Frame`. Notifications are the hot path, so the frame is decoded
once into a single permissive *envelope* struct that has every top-level
field of every shape, all optional. No dict is built, and ``eventBody`` is
captured as :class:`msgspec.Raw`: its bytes are kept verbatim and handed on
undecoded, because only the consumer knows which body type to decode into.
The envelope is then classified by which fields are present. Only the rare
frames (heartbeats, pongs, system topics) pay for a second, small decode of
their body.

Error policy: the connection must survive anything the server (or a broken
proxy) sends, so the outcome for *any* input is a frame or a
:class:`~genesys_mux.errors.FrameError`, never another exception.

* Not JSON at all (invalid UTF-8, empty, truncated, trailing garbage, a
  ``str`` with lone surrogates) raises :class:`FrameError`. So does JSON
  nested deeper than the interpreter's recursion limit (about a thousand
  levels): msgspec cannot walk it, so its validity cannot be checked.
* Valid JSON that fits no known shape is an :class:`UnknownFrame` carrying
  the raw bytes. That includes arrays and scalars, objects whose known
  top-level fields have the wrong JSON type (``"result": 200``,
  ``"topicName": 5``), a notification with no ``eventBody``, and
  ``channel.metadata`` messages other than the heartbeat and the pong. We
  report such frames rather than guess at what they meant.
* The optional fields of system-topic bodies are looser, because the
  platform documents them only vaguely: a field of the wrong type, or a body
  that is not an object at all, reads as ``None`` and the frame keeps its
  system type, so a warning like ``socket_closing`` is never lost to a
  malformed detail.

Outbound messages are produced by :func:`encode_subscribe`,
:func:`encode_unsubscribe` and :data:`PING`. The platform expects them as
WebSocket *text* frames; they are returned as UTF-8 bytes so the caller
decides how to send them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

import msgspec

from genesys_mux.core._native import extensions_enabled
from genesys_mux.errors import ConfigError, FrameError

__all__ = [
    "CHANNEL_METADATA_TOPIC",
    "PING",
    "ChannelFailure",
    "Frame",
    "Heartbeat",
    "NoLongerSubscribed",
    "Notification",
    "Pong",
    "SocketClosing",
    "SubscriptionAck",
    "SubscriptionUpdated",
    "SystemFrame",
    "SystemMessage",
    "TokenRevoked",
    "UnknownFrame",
    "decode_frame",
    "encode_ping",
    "encode_subscribe",
    "encode_unsubscribe",
    "join_notification",
    "split_notification",
]

#: The ``topicName`` of heartbeats and pongs.
CHANNEL_METADATA_TOPIC: Final = "channel.metadata"

_HEARTBEAT_MESSAGE: Final = "WebSocket Heartbeat"
_PONG_MESSAGE: Final = "pong"
#: The ``result`` of the frame that says a channel is gone: ``{"result":"404","message":...}``.
_CHANNEL_GONE: Final = "404"
_SOCKET_CLOSING: Final = "v2.system.socket_closing"
_NO_LONGER_SUBSCRIBED: Final = "v2.system.no_longer_subscribed"
_TOKEN_REVOKED: Final = "v2.system.token_revoked"  # noqa: S105  (a topic, not a secret)
_SUBSCRIPTION_UPDATED: Final = "v2.subscription.updated"
_SYSTEM_PREFIX: Final = "v2.system."
# Every topic _system_type recognises starts with one of these.
_SYSTEM_PREFIXES: Final = (_SYSTEM_PREFIX, _SUBSCRIPTION_UPDATED)


# --------------------------------------------------------------------------
# Inbound frame types
# --------------------------------------------------------------------------


# gc=False: these hold only immutable scalars, so they can never be part of a
# reference cycle, and the cyclic GC need not track one per notification.
class Notification(msgspec.Struct, frozen=True, gc=False):
    """One event on a subscribed topic.

    ``topic`` is the expanded topic name the event arrived under.
    ``version`` is the topic's schema version (``"2"``), *not* a counter:
    the platform has no sequence numbers. ``body`` is the raw JSON text of
    ``eventBody``, byte for byte, left undecoded so the consumer can decode
    it into whatever type suits the topic. ``correlation_id`` is
    ``metadata.CorrelationId`` when present.
    """

    topic: str
    version: str | None
    body: bytes
    correlation_id: str | None = None


class Heartbeat(msgspec.Struct, frozen=True, gc=False):
    """The server's periodic ``WebSocket Heartbeat`` (about every 30 s)."""


class Pong(msgspec.Struct, frozen=True, gc=False):
    """The server's answer to a client ``{"message":"ping"}``."""


class SystemFrame(msgspec.Struct, frozen=True, gc=False):
    """Fields shared by every system-topic frame; the base of those frame types.

    :func:`decode_frame` always returns one of the subclasses, never this
    class itself. ``topic`` is the full topic name. ``channel_id``,
    ``reason`` and ``message`` come from the body's ``channelId``,
    ``reason`` and ``message`` and are ``None`` when absent or not strings.
    ``body`` is the raw ``eventBody`` JSON (empty when there was none), for
    anything else it carries, such as ``systemTopicType`` or ``data``.
    """

    topic: str
    channel_id: str | None = None
    reason: str | None = None
    message: str | None = None
    body: bytes = b""


class SocketClosing(SystemFrame, frozen=True, gc=False):
    """``v2.system.socket_closing``: the server will close this socket in about a minute.

    Not guaranteed to precede a maintenance close; a silent close must be
    handled the same way.
    """


class NoLongerSubscribed(SystemFrame, frozen=True, gc=False):
    """``v2.system.no_longer_subscribed.{id}``: this channel lost its subscriptions.

    ``reason`` is e.g. ``another_channel_subscribed``.
    """


class TokenRevoked(SystemFrame, frozen=True, gc=False):
    """``v2.system.token_revoked.{id}``: the token behind the channel was revoked.

    ``reason`` is e.g. ``user_tokens_revoked``; the channel is about to die.
    """


class SubscriptionUpdated(SystemFrame, frozen=True, gc=False):
    """``v2.subscription.updated``: the channel's subscription list changed."""


class SystemMessage(SystemFrame, frozen=True, gc=False):
    """Any other ``v2.system.*`` topic, reported rather than dropped."""


class SubscriptionAck(msgspec.Struct, frozen=True, gc=False):
    """The answer to a subscribe or unsubscribe request sent over the socket.

    ``result`` is a string status code as the server sends it (``"200"``,
    ``"400"``). ``status`` is ``"subscribed"``, ``"unsubscribed"`` or
    ``"error"``; ``message`` explains a failure; ``topics`` lists the
    topics the server reported, often none.
    """

    correlation_id: str
    result: str
    status: str | None = None
    message: str | None = None
    topics: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the request succeeded (``result == "200"``)."""
        return self.result == "200"


class ChannelFailure(msgspec.Struct, frozen=True, gc=False):
    """``{"result": "404", "message": ...}``: the channel expired, was evicted or lost its token.

    The socket is useless after this; open a new channel.
    """

    result: str
    message: str | None = None


class UnknownFrame(msgspec.Struct, frozen=True, gc=False):
    """Valid JSON in no shape we recognise; ``raw`` is the frame's UTF-8 bytes."""

    raw: bytes


#: Every value :func:`decode_frame` can return.
Frame: TypeAlias = (
    Notification
    | Heartbeat
    | Pong
    | SocketClosing
    | NoLongerSubscribed
    | TokenRevoked
    | SubscriptionUpdated
    | SystemMessage
    | SubscriptionAck
    | ChannelFailure
    | UnknownFrame
)

# The concrete system frame classes, so that building one from a class
# chosen at run time still type-checks as a Frame.
_SystemKind: TypeAlias = (
    type[SocketClosing]
    | type[NoLongerSubscribed]
    | type[TokenRevoked]
    | type[SubscriptionUpdated]
    | type[SystemMessage]
)

# Frames without state are shared: frozen, so nobody can tell.
_HEARTBEAT: Final = Heartbeat()
_PONG: Final = Pong()


# --------------------------------------------------------------------------
# Wire structs (private)
# --------------------------------------------------------------------------


class _Envelope(msgspec.Struct, rename="camel"):
    """Union of the top-level fields of every inbound shape, all optional.

    An empty :class:`msgspec.Raw` (length 0) means ``eventBody`` was absent:
    msgspec does not allow ``Raw`` inside a union with ``None``, and a
    present body is never zero bytes long. Every other member is read as
    any JSON value and its type checked by hand (:func:`_text`): one member
    of an unexpected type (a ``version`` written as a number, ``metadata``
    as a list) must not cost the notification it comes with, which would
    then be neither delivered nor counted.
    """

    topic_name: object = None
    version: object = None
    event_body: msgspec.Raw = msgspec.Raw()
    metadata: object = None
    correlation_id: object = None
    result: object = None
    status: object = None
    message: object = None
    topics: object = None


def _text(value: object) -> str | None:
    """A member's text: a string as it is, a number written out (``2`` -> ``"2"``), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _correlation_id(metadata: object) -> str | None:
    """``metadata.CorrelationId``, as text, if ``metadata`` is an object that has one."""
    return _text(metadata.get("CorrelationId")) if isinstance(metadata, dict) else None


def _texts(value: object) -> tuple[str, ...]:
    """The strings of a list member (``topics``); () for anything else."""
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


class _MetadataBody(msgspec.Struct):
    message: str | None = None


class _SystemBody(msgspec.Struct, rename="camel"):
    # ``object`` rather than ``str | None`` so that one wrongly typed field
    # does not fail the whole body; the types are checked by hand instead.
    channel_id: object = None
    reason: object = None
    message: object = None


class _Command(msgspec.Struct, rename="camel"):
    message: str
    topics: list[str]
    correlation_id: str


_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_Envelope)
_METADATA_BODY_DECODER: Final = msgspec.json.Decoder(_MetadataBody)
_SYSTEM_BODY_DECODER: Final = msgspec.json.Decoder(_SystemBody)
# Decoding into Raw walks the whole document and checks its syntax without
# building any Python objects, and without msgspec's own limits on numbers
# (``1e400`` is valid JSON but out of range for a Python float).
_SYNTAX_CHECKER: Final = msgspec.json.Decoder(msgspec.Raw)
_ENCODER: Final = msgspec.json.Encoder()

# What msgspec can raise on a document that is syntactically valid but not
# of the requested type, or that it cannot walk at all.
_BODY_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeError)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def decode_frame(data: bytes | str) -> Frame:
    """Decode one inbound WebSocket message into its typed :data:`Frame` variant.

    ``data`` is the text frame as received, either ``str`` or UTF-8
    ``bytes``. Returns an :class:`UnknownFrame` for valid JSON of an
    unrecognised shape; raises :class:`~genesys_mux.errors.FrameError` for
    anything that is not JSON, and never any other exception.
    """
    if isinstance(data, bytes):
        # msgspec skips eventBody and unknown fields without validating their
        # UTF-8, so check it here (without decoding where it was compiled);
        # only a frame that fails is decoded, to say where.
        if not _is_utf8(data):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FrameError(
                    f"WebSocket frame is not valid UTF-8 (byte {exc.start})", data
                ) from exc
    elif isinstance(data, bytearray | memoryview):
        return decode_frame(bytes(data))
    elif not isinstance(data, str):
        raise FrameError(f"WebSocket frame must be str or bytes, not {type(data).__name__}")

    try:
        envelope = _ENVELOPE_DECODER.decode(data)
    except msgspec.ValidationError:
        # Valid JSON of another shape, or not JSON at all: msgspec may stop
        # at the first type mismatch before reading the rest, so only a full
        # syntax check can tell.
        return _unknown_or_raise(data)
    except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
        raise _not_json(data, exc) from exc
    return _classify(envelope, data)


# The platform writes a notification compactly, its four members always in
# this order (reference §5): {"topicName":T,"version":V,"eventBody":B,
# "metadata":{"CorrelationId":C}}. T, V and C are ASCII with no escape, so
# their text is their value: printable ASCII other than '"' and '\'.
_PLAIN: Final = rb"[\x20\x21\x23-\x5b\x5d-\x7e]"
# A Raw value excludes the whitespace around it, so a body beginning or
# ending with some would differ from the full decoder's: left to it.
_SPLIT_HEAD: Final = re.compile(
    rb'\{"topicName":"(' + _PLAIN + rb'+)","version":"(' + _PLAIN + rb'*)",'
    rb'"eventBody":(?![ \t\r\n])'
).match
_SPLIT_TAIL: Final = b',"metadata":{"CorrelationId":"'
_SPLIT_END: Final = b'"}}'
_PLAIN_TEXT: Final = re.compile(_PLAIN + b"*").fullmatch
_SPACES: Final = b" \t\r\n"
_NOT_NOTIFICATIONS: Final = (CHANNEL_METADATA_TOPIC, *_SYSTEM_PREFIXES)


def split_notification(data: bytes | str) -> Notification | None:
    """A notification frame in the platform's own layout, split without reading its body.

    A fast path for a consumer that decodes every ``eventBody`` anyway:
    :func:`decode_frame` scans the whole frame to find where the body ends,
    and the consumer's own decode then scans the body again. Here the frame
    is cut at its fixed head and tail instead, so the body is read once.

    **The body is not checked.** The result equals :func:`decode_frame`'s
    whenever the body is one JSON value; when it is not (the frame is
    broken, or is valid JSON laid out otherwise, say with a member
    added), the consumer must decode the whole frame with
    :func:`decode_frame` and go by that. ``None`` when the frame is not in
    this layout (key order, whitespace, a topic, version or correlation id
    that is not plain ASCII, a system or ``channel.metadata`` topic, text
    that is not UTF-8): decode it with :func:`decode_frame`.
    """
    return _split(data)


def _split_in_python(data: bytes | str) -> Notification | None:
    """:func:`split_notification` in Python: the specification of the compiled one."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: decode_frame says so
            return None
    elif not isinstance(data, bytes):
        return None
    head = _SPLIT_HEAD(data)
    if head is None or not data.endswith(_SPLIT_END):
        return None
    body_start = head.end()
    tail = data.rfind(_SPLIT_TAIL, body_start)
    id_start, id_end = tail + len(_SPLIT_TAIL), len(data) - len(_SPLIT_END)
    if (
        tail <= body_start
        or data[tail - 1] in _SPACES
        or _PLAIN_TEXT(data, id_start, id_end) is None
    ):
        return None
    if not data.isascii():
        # msgspec checks the UTF-8 of the strings it decodes, not of those
        # it skips: the whole frame is checked here, as decode_frame does.
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    topic = head.group(1).decode("ascii")
    if topic.startswith(_NOT_NOTIFICATIONS):
        return None
    return Notification(
        topic,
        head.group(2).decode("ascii"),
        data[body_start:tail],
        data[id_start:id_end].decode("ascii"),
    )


def _load_native_split() -> Callable[[bytes | str], Notification | None] | None:
    """The compiled :func:`_split_in_python`; None to split in Python."""
    if not extensions_enabled():
        return None
    try:
        from genesys_mux.core import _speedups
    except ImportError:
        return None
    _speedups.bind_split(Notification, _NOT_NOTIFICATIONS)
    return _speedups.split


_native_split: Final = _load_native_split()
_split: Final = _split_in_python if _native_split is None else _native_split


def _is_utf8_in_python(data: bytes) -> bool:
    """Whether ``data`` decodes as UTF-8: the specification of the compiled check."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _load_native_utf8() -> Callable[[bytes], bool] | None:
    if not extensions_enabled():
        return None
    try:
        from genesys_mux.core import _speedups
    except ImportError:
        return None
    return _speedups.is_utf8


_native_utf8: Final = _load_native_utf8()
_is_utf8: Final = _is_utf8_in_python if _native_utf8 is None else _native_utf8


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` decodes as UTF-8 (as Python's strict decoder takes it), without decoding."""
    return _is_utf8(data)


def join_notification(topic: str, version: str, body: bytes, correlation_id: str) -> bytes:
    """The frame :func:`split_notification` split into these parts, byte for byte.

    So a consumer need not keep each frame beside its body to recheck the
    few whose body does not decode.
    """
    return b"".join(
        (
            b'{"topicName":"',
            topic.encode("ascii"),
            b'","version":"',
            version.encode("ascii"),
            b'","eventBody":',
            body,
            _SPLIT_TAIL,
            correlation_id.encode("ascii"),
            _SPLIT_END,
        )
    )


def _classify(env: _Envelope, data: bytes | str) -> Frame:
    topic = env.topic_name
    if isinstance(topic, str) and topic:
        if topic == CHANNEL_METADATA_TOPIC:
            return _channel_metadata(env, data)
        system_type = _system_type(topic)
        if system_type is not None:
            return _system_frame(system_type, topic, env)
        if not env.event_body:
            return UnknownFrame(_as_bytes(data))
        return Notification(
            topic=topic,
            version=_text(env.version),
            body=bytes(env.event_body),
            correlation_id=_correlation_id(env.metadata),
        )
    result = _text(env.result)
    if result is not None:
        correlation_id = _text(env.correlation_id)
        if correlation_id is not None:
            return SubscriptionAck(
                correlation_id=correlation_id,
                result=result,
                status=_text(env.status),
                message=_text(env.message),
                topics=_texts(env.topics),
            )
        # Only this result says the channel is gone (reference section 5);
        # another, without a correlation id, is no reason to drop a socket
        # that works (the watchdog finds one that does not).
        if topic is None and result == _CHANNEL_GONE:
            return ChannelFailure(result=result, message=_text(env.message))
    return UnknownFrame(_as_bytes(data))


def _channel_metadata(env: _Envelope, data: bytes | str) -> Frame:
    message: str | None = None
    if env.event_body:
        try:
            message = _METADATA_BODY_DECODER.decode(env.event_body).message
        except _BODY_ERRORS:
            message = None
    if message == _HEARTBEAT_MESSAGE:
        return _HEARTBEAT
    if message == _PONG_MESSAGE:
        return _PONG
    return UnknownFrame(_as_bytes(data))


def _system_type(topic: str) -> _SystemKind | None:
    # Nearly every frame is a notification: one prefix test answers for it.
    if not topic.startswith(_SYSTEM_PREFIXES):
        return None
    if topic == _SOCKET_CLOSING:
        return SocketClosing
    if topic == _SUBSCRIPTION_UPDATED:
        return SubscriptionUpdated
    # The id suffix is checked for its separating dot, so that an unrelated
    # topic such as ``v2.system.token_revoked_v2`` is not mistaken for one.
    if topic == _NO_LONGER_SUBSCRIBED or topic.startswith(_NO_LONGER_SUBSCRIBED + "."):
        return NoLongerSubscribed
    if topic == _TOKEN_REVOKED or topic.startswith(_TOKEN_REVOKED + "."):
        return TokenRevoked
    if topic.startswith(_SYSTEM_PREFIX):
        return SystemMessage
    return None


def _system_frame(kind: _SystemKind, topic: str, env: _Envelope) -> Frame:
    body = _SystemBody()
    if env.event_body:
        try:
            body = _SYSTEM_BODY_DECODER.decode(env.event_body)
        except _BODY_ERRORS:
            # Not an object (or unwalkable): keep the frame's type, lose the details.
            body = _SystemBody()
    return kind(
        topic=topic,
        channel_id=_str_or_none(body.channel_id),
        reason=_str_or_none(body.reason),
        message=_str_or_none(body.message),
        body=bytes(env.event_body),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _unknown_or_raise(data: bytes | str) -> UnknownFrame:
    try:
        _SYNTAX_CHECKER.decode(data)
    except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
        raise _not_json(data, exc) from exc
    return UnknownFrame(_as_bytes(data))


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, bytes):
        return data
    # surrogatepass: only reached for diagnostics of undecodable text, where
    # showing the bad code points beats failing to build the error.
    return data.encode("utf-8", "surrogatepass")


def _not_json(data: bytes | str, cause: Exception) -> FrameError:
    if isinstance(cause, UnicodeError):
        # A str holding lone surrogates cannot be encoded as UTF-8.
        detail = "text is not encodable as UTF-8"
    elif isinstance(cause, RecursionError):
        detail = "nested too deeply to decode"
    else:
        detail = str(cause)
    # Only the head is kept for diagnostics; FrameError truncates it anyway,
    # and encoding a whole 50 KB str just to throw most of it away is waste.
    head = data[:200] if isinstance(data, bytes) else _as_bytes(data[:200])
    return FrameError(f"WebSocket frame is not a JSON document ({detail})", head)


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

#: The client keep-alive request; the server answers with a :class:`Pong`.
PING: Final[bytes] = b'{"message":"ping"}'


def encode_ping() -> bytes:
    """The ping message, ``{"message":"ping"}``, as UTF-8 bytes (same as :data:`PING`)."""
    return PING


def encode_subscribe(topics: Sequence[str], correlation_id: str) -> bytes:
    """``{"message":"subscribe","topics":[...],"correlationId":...}`` as UTF-8 bytes.

    The server answers with a :class:`SubscriptionAck` carrying
    ``correlation_id``. Topics are sent as given; validate them first with
    :mod:`genesys_mux.core.topics`.
    """
    return _encode_command("subscribe", topics, correlation_id)


def encode_unsubscribe(topics: Sequence[str], correlation_id: str) -> bytes:
    """``{"message":"unsubscribe","topics":[...],"correlationId":...}`` as UTF-8 bytes.

    The server answers with a :class:`SubscriptionAck` carrying ``correlation_id``.
    """
    return _encode_command("unsubscribe", topics, correlation_id)


def _encode_command(message: str, topics: Sequence[str], correlation_id: str) -> bytes:
    # A bare str is a Sequence[str] too, and would go out as one topic per
    # character; catch that mistake here rather than at the server.
    if isinstance(topics, str):
        raise ConfigError(
            f"topics for {message} must be a list of topic names, not the single string "
            f"{topics[:80]!r}; wrap it in a list"
        )
    return _ENCODER.encode(_Command(message, list(topics), correlation_id))
