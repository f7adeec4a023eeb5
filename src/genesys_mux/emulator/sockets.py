"""The emulator's notification sockets: the link, its frames and the ledger.

Theory of operation
-------------------
A :class:`SocketLink` is one open notification socket. It has one writer
task fed by a queue, so heartbeats, pongs, notifications and the final
``{"result":"404"}`` go out in the order they were produced, and a slow
client never stalls the traffic pump (one that falls too far behind is
dropped instead). A second task queues a heartbeat every interval.

Notifications enter as :class:`Pending` frames through
:meth:`SocketLink.notify`, which applies the socket's :class:`FrameFaults`
(rewrite, duplicate, reorder, delay) on the way in; every other frame
enters through :meth:`SocketLink.send` and is never held back. A
notification is written to the :class:`Ledger` only once it has been handed
to the transport, so the ledger is the truth about what was *sent*.

The frames themselves are built here too: :func:`envelope` wraps a
notification body, :func:`rewritten` writes a frame anew (the ``reserialise``
fault), :func:`system_frame` builds the ``v2.system.*`` and
``v2.subscription.updated`` frames, and :data:`HEARTBEAT` and :data:`PONG`
are sent as they are. Opening a link, and routing notifications to it, is
:mod:`genesys_mux.emulator.app`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from genesys_mux.emulator.platform import Channel

__all__ = [
    "HEARTBEAT",
    "PONG",
    "FrameFaults",
    "Ledger",
    "LedgerEntry",
    "Pending",
    "SocketLink",
    "envelope",
    "rewritten",
    "system_frame",
]

log = logging.getLogger("genesys_mux.emulator")

HEARTBEAT = b'{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}'
PONG = b'{"topicName":"channel.metadata","eventBody":{"message":"pong"}}'
# Writer-queue sentinel: close the socket once everything before it is sent.
_CLOSE = object()
# A socket whose writer falls this far behind is dropped, as a real server
# would shed a consumer that cannot keep up, instead of buffering forever.
_MAX_PENDING_FRAMES = 100_000


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One notification frame handed to a socket."""

    seq: int
    time: float
    channel_id: str
    topic: str
    correlation_id: str
    conversation_id: str | None
    duplicate: bool

    def to_json(self) -> dict[str, Any]:
        """The entry as ``GET /__emulator__/ledger`` renders it."""
        return {
            "seq": self.seq,
            "time": self.time,
            "channel_id": self.channel_id,
            "topic": self.topic,
            "correlation_id": self.correlation_id,
            "conversation_id": self.conversation_id,
            "duplicate": self.duplicate,
        }


@dataclass(slots=True)
class Pending:
    """A notification frame on its way to a socket, with what the ledger records of it."""

    frame: bytes
    topic: str
    correlation_id: str
    conversation_id: str | None
    duplicate: bool = False


@dataclass(slots=True)
class FrameFaults:
    """The frame faults in force on a socket (or on all of them)."""

    duplicate: float = 0.0
    #: Send duplicates re-serialised (other key order, whitespace, a new
    #: CorrelationId), as the reference allows, instead of byte for byte.
    reserialise: bool = False
    #: The share of notifications written anew before they are sent (other
    #: key order, whitespace, ``\u`` escapes; the same JSON value and
    #: CorrelationId), so the platform's compact layout is not a given.
    rewrite: float = 0.0
    reorder: float = 0.0
    #: How many later frames overtake a held one.
    reorder_depth: int = 1
    #: Notifications reach the socket this late; pongs and heartbeats do not
    #: wait, so a pong may overtake notifications sent before it.
    delay_s: float = 0.0


class Ledger:
    """A bounded record of every notification frame sent, in send order."""

    def __init__(self, size: int) -> None:
        self.entries: deque[LedgerEntry] = deque(maxlen=size)
        self.next_seq = 1

    def record(self, channel_id: str, item: Pending) -> None:
        """Append the frame ``item`` just handed to the socket of ``channel_id``."""
        self.entries.append(
            LedgerEntry(
                self.next_seq,
                time.time(),
                channel_id,
                item.topic,
                item.correlation_id,
                item.conversation_id,
                item.duplicate,
            )
        )
        self.next_seq += 1


class SocketLink:
    """One open notification socket and the task that writes to it."""

    def __init__(
        self,
        channel: Channel,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        ledger: Ledger,
        heartbeat_interval_s: float,
    ) -> None:
        self.channel = channel
        self.ws = ws
        self.transport = request.transport
        self.ledger = ledger
        self.heartbeat_interval_s = heartbeat_interval_s
        self.queue: asyncio.Queue[Pending | bytes | object] = asyncio.Queue()
        self.paused = False
        self.held: Pending | None = None
        self.held_for = 0
        #: Notifications on their way under the ``delay`` fault.
        self.delayed = 0
        self.close_code: int | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the writer and heartbeat tasks (the writer is ``tasks[0]``)."""
        self.tasks = [
            asyncio.create_task(self._writer(), name=f"emulator-writer-{self.channel.id}"),
            asyncio.create_task(self._heartbeats(), name=f"emulator-heartbeat-{self.channel.id}"),
        ]

    def send(self, frame: bytes) -> None:
        """Queue a non-notification frame (heartbeat, pong, system topic)."""
        self.queue.put_nowait(frame)

    def notify(self, pending: Pending, rng: random.Random, faults: FrameFaults) -> None:
        """Queue a notification, applying the rewrite, duplicate and reorder faults."""
        if self.queue.qsize() > _MAX_PENDING_FRAMES:
            log.warning(
                "dropping socket of %s: %d frames behind", self.channel.id, self.queue.qsize()
            )
            self.drop()
            return
        delay = faults.delay_s
        if faults.rewrite and rng.random() < faults.rewrite:
            # The same notification in other bytes; a duplicate of it below
            # repeats these bytes (or writes them anew again, reserialise).
            pending = Pending(
                rewritten(pending.frame, rng),
                pending.topic,
                pending.correlation_id,
                pending.conversation_id,
                pending.duplicate,
            )
        if faults.reorder and self.held is None and rng.random() < faults.reorder:
            # Hold this frame back; it goes out after the next `depth` frames.
            self.held = pending
            self.held_for = faults.reorder_depth
            return
        self._enqueue(pending, delay)
        if faults.duplicate and rng.random() < faults.duplicate:
            if faults.reserialise:
                correlation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                frame = _reserialised(pending.frame, correlation_id)
            else:
                correlation_id, frame = pending.correlation_id, pending.frame
            self._enqueue(
                Pending(frame, pending.topic, correlation_id, pending.conversation_id, True), delay
            )
        if self.held is not None:
            self.held_for -= 1
            if self.held_for <= 0:
                self._enqueue(self.held, delay)
                self.held = None

    def _enqueue(self, pending: Pending, delay_s: float) -> None:
        if delay_s <= 0.0:
            self.queue.put_nowait(pending)
            return
        # Late, but only notifications: pongs and heartbeats overtake them.
        self.delayed += 1
        asyncio.get_running_loop().call_later(delay_s, self._release, pending)

    def _release(self, pending: Pending) -> None:
        self.delayed -= 1
        self.queue.put_nowait(pending)
        if self.delayed == 0 and self.close_code is not None:
            self.queue.put_nowait((_CLOSE, self.close_code))

    def close_after_flush(self, code: int = 1000) -> None:
        """Close the socket once every notification already sent its way is out."""
        if self.held is not None:
            # A frame the reorder fault holds back was sent this way too: it
            # goes out before the close, not nowhere.
            self.queue.put_nowait(self.held)
            self.held = None
        if self.delayed:
            self.close_code = code  # closed by _release, after the last one
        else:
            self.queue.put_nowait((_CLOSE, code))

    def go_silent(self) -> None:
        """Become a half-open link: nothing is sent and nothing is read any more.

        A dead link answers nothing: no heartbeat, no pong, and no reply to
        a close frame, so a client that waits for the close handshake waits
        in vain. Reading stops at the transport, so not even aiohttp's
        automatic replies go out; the kernel still accepts the client's bytes.
        """
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def drop(self) -> None:
        """Lose the TCP connection with no close frame, like a network cut."""
        if self.transport is not None:
            self.transport.abort()
        self.stop_tasks()

    def stop_tasks(self) -> None:
        """Cancel the writer and heartbeat tasks."""
        for task in self.tasks:
            task.cancel()

    async def _heartbeats(self) -> None:
        interval = self.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            self.send(HEARTBEAT)

    async def _writer(self) -> None:
        ledger = self.ledger
        while True:
            item = await self.queue.get()
            if isinstance(item, tuple):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.close(code=item[1])
                return
            if self.paused:
                continue  # half-open: nothing more leaves this socket
            frame = item.frame if isinstance(item, Pending) else item
            assert isinstance(frame, bytes)
            try:
                await self.ws.send_frame(frame, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return
            if isinstance(item, Pending):
                ledger.record(self.channel.id, item)


def envelope(topic: str, body: bytes, correlation_id: str) -> bytes:
    """The notification frame carrying ``body`` (already JSON) on ``topic``."""
    # Built by concatenation: the body is already JSON, and the topic and
    # correlation id contain no characters that need escaping (validated).
    return b"".join(
        (
            b'{"topicName":"',
            topic.encode(),
            b'","version":"2","eventBody":',
            body,
            b',"metadata":{"CorrelationId":"',
            correlation_id.encode(),
            b'"}}',
        )
    )


def _reserialised(frame: bytes, correlation_id: str) -> bytes:
    """The same notification written anew: keys reversed, spaced out, a new CorrelationId."""
    parsed = json.loads(frame)
    parsed["metadata"] = {"CorrelationId": correlation_id}
    return json.dumps(_reversed_keys(parsed), indent=1).encode()


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [_reversed_keys(item) for item in value]
    return value


#: The separators of a rewritten frame without indentation: always some space.
_SPACED: tuple[tuple[str, str], ...] = ((", ", ": "), (" ,", " :"), (" , ", " : "))
#: The indentations of a rewritten frame.
_INDENTS: tuple[int | str, ...] = (1, 2, "\t")
#: How a rewritten frame writes ``/``: both are valid JSON escapes of it.
_SLASHES = ("\\/", "\\u002f", "\\u002F")


def rewritten(frame: bytes, rng: random.Random) -> bytes:
    """The same JSON value as ``frame`` in other bytes, as a platform may re-serialise it.

    Every object's keys are shuffled (the envelope's never stay in the
    platform's order), there is whitespace between tokens (indentation or
    spaced separators, sometimes a trailing newline), every ``/`` is an
    escape (``\\/`` or ``\\u002f``), and every character beyond ASCII
    either a ``\\u`` escape (a surrogate pair beyond the BMP) or, in half
    the rewrites, its UTF-8 as before. Nothing else changes:
    numbers, strings and the CorrelationId decode to what they were. It
    always differs in bytes from a compact original (the platform's layout,
    as :func:`envelope` builds it): byte-equal texts have the same
    whitespace between their tokens, and the rewrite always has some.
    """
    parsed = json.loads(frame)
    shuffled = _shuffled_keys(parsed, rng)
    if isinstance(parsed, dict) and list(shuffled) == list(parsed) and len(parsed) > 1:
        shuffled = {key: shuffled[key] for key in reversed(shuffled)}
    escaped = rng.random() < 0.5
    if rng.random() < 0.5:
        text = json.dumps(shuffled, indent=rng.choice(_INDENTS), ensure_ascii=escaped)
    else:
        text = json.dumps(shuffled, separators=rng.choice(_SPACED), ensure_ascii=escaped)
    # A '/' can only stand inside a string in JSON text, so each one found
    # is in a string, where an escape of it is the same character.
    text = text.replace("/", rng.choice(_SLASHES))
    if rng.random() < 0.25:
        text += "\n"
    return text.encode("utf-8")


def _shuffled_keys(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: _shuffled_keys(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [_shuffled_keys(item, rng) for item in value]
    return value


def system_frame(
    topic: str, channel_id: str, reason: str, message: str, kind: str | None = None
) -> bytes:
    """A system frame on ``topic`` for ``channel_id``; its type is the topic's third part."""
    body = msgspec.json.encode(
        {
            "channelId": channel_id,
            "systemTopicType": kind or topic.split(".")[2],
            "reason": reason,
            "message": message,
            "data": {},
        }
    )
    return envelope(topic, body, str(uuid.uuid4()))
