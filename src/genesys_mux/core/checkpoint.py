"""What a stream remembers across a restart, as bytes a state store keeps.

Theory of operation
-------------------
A :class:`StreamCheckpoint` is everything a stream needs to carry on after
its process is replaced: the next sequence number (so numbering continues
instead of starting again at 1), the watermark (the receive time of the
newest event whose fate is settled; the restart gap starts there), and the
de-duplication and ordering memory (so a snapshot delivered before the
restart is not delivered again as new, and an older one arriving late is
still recognised as stale).

``fingerprint`` names the parts of the stream's configuration that decide
*what* it carries (filter, topics). A checkpoint whose fingerprint differs
from the stream's is not applied: the stream starts fresh, and says so.

Checkpoints are encoded with msgpack (compact, and fast enough to write
every second for 50,000 remembered conversations) behind a one-byte schema
version, so that a future release can read or migrate what this one wrote
and this one refuses, clearly, what it cannot read.
"""

from __future__ import annotations

import hashlib

import msgspec

from genesys_mux.errors import StateError

__all__ = [
    "SCHEMA_VERSION",
    "Remembered",
    "StreamCheckpoint",
    "decode_checkpoint",
    "encode_checkpoint",
    "fingerprint",
]

#: The version of the checkpoint encoding this release writes (and reads).
SCHEMA_VERSION = 1


class Remembered(msgspec.Struct, array_like=True, frozen=True):
    """One remembered snapshot key: its newest version and recent state digests."""

    key: str
    version: float | None
    hashes: list[bytes]
    in_state: bool = False


class StreamCheckpoint(msgspec.Struct, frozen=True):
    """A stream's state at one moment, to continue from after a restart."""

    stream_id: str
    fingerprint: str
    next_sequence: int
    #: Receive time (Unix) of the newest event whose fate is settled, if any.
    watermark: float | None
    #: The run that wrote it (``Multiplexer.epoch``).
    epoch: str
    #: When it was taken (Unix).
    saved_at: float
    #: Remembered keys, least recently seen first.
    memory: list[Remembered] = []


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(StreamCheckpoint)


def encode_checkpoint(checkpoint: StreamCheckpoint) -> bytes:
    """The checkpoint as bytes: a schema-version byte, then msgpack."""
    return bytes((SCHEMA_VERSION,)) + _ENCODER.encode(checkpoint)


def decode_checkpoint(data: bytes, where: str) -> StreamCheckpoint:
    """Read bytes written by :func:`encode_checkpoint`; ``where`` names them in errors.

    Raises :class:`~genesys_mux.errors.StateError` for bytes of another
    schema version or that are not a checkpoint at all.
    """
    if not data:
        raise StateError(f"{where}: empty checkpoint")
    version = data[0]
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise StateError(
            f"{where}: checkpoint schema {version}, this release reads {SCHEMA_VERSION}"
            + ("; it was written by a newer release" if newer else "")
        )
    try:
        return _DECODER.decode(data[1:])
    except msgspec.DecodeError as exc:
        raise StateError(f"{where}: not a genesys-mux checkpoint ({exc})") from exc


def fingerprint(*parts: str) -> str:
    """A short, stable name for the configuration parts that decide what a stream carries."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:16]
