"""What every sink shares: the :class:`Sink` protocol and the wire record of an item.

Theory of operation
-------------------
A sink forwards a stream's items (events and gaps) to one downstream
service. The :class:`~genesys_mux.sinks.runner.SinkRunner` of a stream reads
the stream, forms batches and calls :meth:`Sink.send` with each batch; a sink
either takes the whole batch or raises
:class:`~genesys_mux.errors.SinkError`, whose ``retryable`` flag tells the
runner whether sending the *same* batch again may help. Because a failed
batch is re-sent whole, a downstream service can see an item twice: delivery
is at-least-once, and every record carries an ``idempotency_key`` so the
receiver can drop the repeats.

Every sink writes the same record for an item, built by :func:`encode_record`
(one JSON object, encoded with msgspec):

* events: ``kind`` (``"event"``), ``idempotency_key``
  (``stream_id:key:digest``, see :attr:`StreamEvent.idempotency_key`),
  ``stream_id``, ``epoch`` (the run that delivered it), ``sequence``
  (gap-free within one epoch), ``priority``, ``topic``, ``transition``,
  ``conversation_id``, ``correlation_id``, ``received_at`` (Unix seconds) and
  ``event_body``: the notification's ``eventBody`` embedded *verbatim*, byte
  for byte, never decoded and re-encoded (re-encoding could change number
  formatting or escapes, and with them any hash a consumer computes). A body
  that cannot be embedded on one line as it is (not JSON, or JSON spread
  over several lines, which would break JSON-lines files) is sent as
  ``event_body_b64`` instead, exactly as the dead-letter queue stores it.
* gaps: ``kind`` (``"gap"``), ``idempotency_key``
  (``stream_id:gap:channel_id:start``), ``stream_id``, ``start``, ``end``
  (Unix seconds), ``topics`` (sorted), ``channel_id`` and ``reason``.

:func:`decode_record` reads a record back (receivers, tests, DLQ tooling).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar, runtime_checkable

import msgspec

from genesys_mux.core.frames import is_utf8
from genesys_mux.core.streams import Gap, StreamEvent

__all__ = [
    "Batching",
    "EventRecord",
    "GapRecord",
    "Hidden",
    "Item",
    "Record",
    "Sink",
    "batch_idempotency_key",
    "decode_record",
    "embeddable",
    "encode_record",
    "idempotency_key",
    "to_record",
]

Item = StreamEvent | Gap
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Batching:
    """How a sink wants its batches sent: what its runner applies to every sink it serves.

    Configured per sink (``batch_size``, ``linger_s``, ``max_attempts``, for
    plugin sinks too); sinks of one stream that batch differently get a
    runner each (see :mod:`genesys_mux.sinks.fanout`).
    """

    batch_size: int = 100
    #: How long a batch waits for more items once it has one.
    linger_s: float = 0.05
    #: Attempts per batch (None: until it works).
    max_attempts: int | None = None


@runtime_checkable
class Sink(Protocol):
    """Somewhere downstream to forward a stream's items to: the contract every sink keeps.

    Built-in sinks and third-party plugins (see
    :mod:`genesys_mux.sinks.plugins` and ``docs/sinks/plugins.md``) alike:

    * ``name`` labels the sink in logs, metrics and dead-letter reasons
      (``sink_failed:<name>: ...``); unique among one stream's sinks.
    * ``start`` opens connections or files, or raises
      :class:`~genesys_mux.errors.SinkError`: ``retryable=True`` for a
      service that is briefly down (the runner starts the sink again after
      its backoff, and delivers once it has started), ``retryable=False``
      for what no wait can fix (a refused login, a missing destination: the
      stream cannot be delivered, and ``genesys-mux run`` stops).
    * ``send`` takes a whole batch, in order, or raises ``SinkError``: with
      ``retryable=True`` the runner backs off (or waits ``retry_after``)
      and calls ``send`` again with the *same* batch, up to the sink's
      ``max_attempts``; with ``retryable=False``, or when the attempts run
      out, the batch's events go to the dead-letter queue. Anything it
      half-sent is therefore sent again (at-least-once): give the
      downstream each item's :func:`idempotency_key` so it can drop
      repeats. Any other exception counts as a bug: one batch
      dead-lettered, the stream goes on.
    * ``close`` releases what ``start`` opened and does not raise.

    ``start`` and ``close`` may each be called more than once. The runner
    calls ``send`` for one batch at a time per sink; how big and how
    patient batches are is the configuration's (:class:`Batching`), not
    the sink's.
    """

    name: str

    async def start(self) -> None:
        """Open whatever the sink needs (sessions, clients, files)."""

    async def send(self, batch: Sequence[Item]) -> None:
        """Deliver every item of ``batch``, in order, or raise ``SinkError``."""

    async def close(self) -> None:
        """Release everything :meth:`start` opened."""


class Hidden(Generic[T]):
    """A secret value (a key, a URL with a password) that no repr, log or dump shows.

    ``value`` is the real thing; ``str()`` and ``repr()`` give ``label``.
    Keeping secrets in one of these means ``vars(sink)``, a debugger or a
    crash report cannot leak them by accident.
    """

    __slots__ = ("label", "value")

    def __init__(self, value: T, label: str = "<hidden>") -> None:
        self.value = value
        self.label = label

    def __repr__(self) -> str:
        return self.label

    __str__ = __repr__


class EventRecord(msgspec.Struct, tag_field="kind", tag="event", omit_defaults=True):
    """The wire record of a :class:`~genesys_mux.core.streams.StreamEvent`.

    Exactly one of ``event_body`` (the raw body, verbatim) and
    ``event_body_b64`` is present; an empty ``event_body`` means absent,
    because msgspec cannot put ``Raw`` in a union with ``None``.
    """

    idempotency_key: str
    stream_id: str
    sequence: int
    priority: int
    topic: str
    transition: str | None
    conversation_id: str | None
    correlation_id: str | None
    received_at: float
    #: The run that delivered the event (absent for events built by hand).
    epoch: str = ""
    event_body: msgspec.Raw = msgspec.Raw()
    event_body_b64: str | None = None

    @property
    def raw(self) -> bytes:
        """The event's body bytes, whichever way they were carried."""
        if len(self.event_body):
            return bytes(self.event_body)
        return base64.b64decode(self.event_body_b64 or "")


class GapRecord(msgspec.Struct, tag_field="kind", tag="gap"):
    """The wire record of a :class:`~genesys_mux.core.streams.Gap`."""

    idempotency_key: str
    stream_id: str
    start: float
    end: float
    topics: list[str]
    channel_id: str
    reason: str


Record = EventRecord | GapRecord

_ENCODER: Final = msgspec.json.Encoder()
_RECORD_DECODER: Final = msgspec.json.Decoder(Record)
# Decoding into Raw walks the document and checks its syntax without
# building any Python objects: the cheapest complete validity check.
_SYNTAX_CHECKER: Final = msgspec.json.Decoder(msgspec.Raw)
# What msgspec raises for bytes it cannot decode: malformed JSON, invalid
# UTF-8 (UnicodeDecodeError), nesting too deep to walk (RecursionError).
DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeError)


def idempotency_key(item: Item) -> str:
    """The key a receiver de-duplicates ``item`` by.

    ``stream_id:key:digest`` for events (the same state always gets the same
    key, whichever run delivers it); ``stream_id:gap:channel_id:start`` for
    gaps.
    """
    if isinstance(item, StreamEvent):
        return item.idempotency_key
    return f"{item.stream_id}:gap:{item.channel_id}:{item.start!r}"


def batch_idempotency_key(batch: Sequence[Item]) -> str:
    """``first..last``: the keys of a batch's first and last items.

    A re-sent batch is the same items in the same order, so it gets the same
    key; receivers that de-duplicate whole requests can use it.
    """
    if not batch:
        return ""
    return f"{idempotency_key(batch[0])}..{idempotency_key(batch[-1])}"


def embeddable(raw: bytes, read_as_json: bool = False) -> bool:
    """True when ``raw`` can go into a JSON record verbatim and be read back byte for byte.

    That is one JSON value of UTF-8 text on one line, with no surrounding
    whitespace (a reader's ``Raw`` would drop it). A body from a socket is
    one unless pretty-printed (the split checked its text, the facts its
    syntax), but a replayed or hand-built event may carry anything, and
    embedding that would corrupt the whole record: it goes base64 instead,
    never re-encoded, which would change its bytes and so its content hash.
    ``read_as_json``: the pipeline's facts read ``raw`` as JSON already
    (:attr:`~genesys_mux.core.streams.StreamEvent.well_formed`), so it is
    not walked again (4 µs of a 7 KB body); its text is checked either way,
    which neither that reading nor the walk does everywhere.
    """
    if not raw or raw != raw.strip() or b"\n" in raw or b"\r" in raw or not is_utf8(raw):
        return False
    if read_as_json:
        return True
    try:
        _SYNTAX_CHECKER.decode(raw)
    except DECODE_ERRORS:
        return False
    return True


def to_record(item: Item) -> Record:
    """The wire record of ``item``, as a struct."""
    if isinstance(item, StreamEvent):
        record = EventRecord(
            idempotency_key=item.idempotency_key,
            stream_id=item.stream_id,
            sequence=item.sequence,
            priority=item.priority,
            topic=item.topic,
            transition=item.transition,
            conversation_id=item.conversation_id,
            correlation_id=item.correlation_id,
            received_at=item.received_at,
            epoch=item.epoch,
        )
        if embeddable(item.raw, item.well_formed):
            record.event_body = msgspec.Raw(item.raw)
        else:
            record.event_body_b64 = base64.b64encode(item.raw).decode("ascii")
        return record
    return GapRecord(
        idempotency_key=idempotency_key(item),
        stream_id=item.stream_id,
        start=item.start,
        end=item.end,
        topics=sorted(item.topics),
        channel_id=item.channel_id,
        reason=item.reason,
    )


def encode_record(item: Item) -> bytes:
    """The JSON record of ``item``: one line, no trailing newline. Every sink uses this."""
    return _ENCODER.encode(to_record(item))


def decode_record(data: bytes | str) -> Record:
    """Read one record back; raises ``msgspec.ValidationError``/``DecodeError`` if it is not one."""
    record: Record = _RECORD_DECODER.decode(data)
    return record
