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

Checkpoints are *incremental*. A stream remembers up to 50,000 keys and
may be checkpointed every second, so writing its whole memory each time
would cost more than the events themselves. A checkpoint the stream takes
therefore carries, besides its small header, only the keys seen since the
previous one (``complete`` false) and the keys it has forgotten since
(``forgotten``); the first checkpoint of a run, and the one after a failed
write, carries the whole memory (``complete`` true). Each remembered key
has a ``rank`` that grows with every checkpoint, so a store can keep the
keys one by one and give them back least recently seen first. The
checkpoint's ``floor`` tells a store that keeps them as a log which of
the entries earlier checkpoints wrote it no longer needs: those ranked
below it.

The header and each remembered key are encoded with msgpack; the header
behind a one-byte schema version. Each store records the schema version of
its layout; on open, an older layout is migrated in place by the store's
migration steps (one per version, run in one transaction), a newer one is
refused, clearly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import msgspec

from genesys_mux.errors import StateError

__all__ = [
    "DIGEST_SIZE",
    "SCHEMA_VERSION",
    "Remembered",
    "StreamCheckpoint",
    "apply_checkpoint",
    "decode_checkpoint",
    "decode_memory_block",
    "decode_remembered",
    "encode_checkpoint",
    "encode_memory",
    "encode_memory_block",
    "encode_remembered",
    "fingerprint",
]

#: The version of the checkpoint header's encoding (its first byte). 1: one
#: blob per stream, memory included; 2: the header alone, the store keeping
#: the memory apart. Each store versions its own layout besides (SQLite's
#: ``FILE_SCHEMA_VERSION``, Redis's ``KEYS_SCHEMA_VERSION``).
SCHEMA_VERSION = 2

#: Header encodings this release can read (1's blobs are read to migrate them).
_READABLE = frozenset({1, 2})


#: The size of a state digest (:func:`~genesys_mux.core.snapshot.content_hash`).
DIGEST_SIZE = 16


class Remembered(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One remembered snapshot key: its newest version and recent state digests.

    Not tracked by the garbage collector, and its digests are one bytes
    value rather than a list: a checkpoint builds tens of thousands of
    these, and as many tracked objects would set off a full collection.
    """

    key: str
    version: float | None
    #: The recent state digests, oldest first, each :data:`DIGEST_SIZE` bytes.
    hashes: bytes
    in_state: bool = False
    #: Orders keys by when they were last seen (higher: more recently).
    rank: int = 0

    def digests(self) -> list[bytes]:
        """The recent state digests, oldest first."""
        data = self.hashes
        return [data[i : i + DIGEST_SIZE] for i in range(0, len(data), DIGEST_SIZE)]


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
    #: Remembered keys, least recently seen first: all of them when
    #: ``complete``, else those seen since the previous checkpoint.
    memory: list[Remembered] = []
    #: False: ``memory`` updates the stored memory instead of replacing it.
    complete: bool = True
    #: Keys forgotten since the previous checkpoint (only when not ``complete``).
    forgotten: list[str] = []
    #: The fencing token of the writer's lease (a cluster's); 0 outside a
    #: cluster. A store refuses a checkpoint older than the stream's claim
    #: (see ``StateStore.claim``).
    fence: int = 0
    #: Once this checkpoint is written, every remembered key's newest entry
    #: is in it or has at least this rank, and every key forgotten so far
    #: had a lower one: a store may drop the entries ranked below it that
    #: earlier checkpoints wrote. 0: not known (not made by a stream).
    floor: int = 0
    #: How far the writer's clock was ahead of the cluster's shared clock
    #: (its Redis's), in seconds, when it wrote this: in the shared clock its
    #: watermark is ``watermark - clock_offset``. A failover's gap is
    #: reckoned on the next owner's clock, another host's. 0 outside a
    #: cluster (and from releases before this field).
    clock_offset: float = 0.0


class _RememberedV1(msgspec.Struct, array_like=True):
    """A remembered key as schema 1 wrote it (its digests a list, no rank)."""

    key: str
    version: float | None
    hashes: list[bytes]
    in_state: bool = False


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(StreamCheckpoint)


def _upgraded(data: bytes) -> StreamCheckpoint:
    """Schema 1's blob: its header as today's, its memory inside, in least-recent order."""
    whole = msgspec.msgpack.decode(data)
    if not isinstance(whole, dict):
        raise msgspec.ValidationError("expected a map")
    old = msgspec.convert(whole.pop("memory", []), list[_RememberedV1])
    header = msgspec.convert(whole, StreamCheckpoint)
    memory = [
        Remembered(r.key, r.version, b"".join(r.hashes), r.in_state, rank)
        for rank, r in enumerate(old, 1)
    ]
    return msgspec.structs.replace(header, memory=memory)


_REMEMBERED = msgspec.msgpack.Decoder(Remembered)
_BLOCK = msgspec.msgpack.Decoder(list[Remembered])


def encode_checkpoint(checkpoint: StreamCheckpoint) -> bytes:
    """The checkpoint's header as bytes: a schema-version byte, then msgpack.

    The memory is left out: stores keep it apart, in blocks
    (:func:`encode_memory_block`).
    """
    header = msgspec.structs.replace(checkpoint, memory=[], forgotten=[], complete=True)
    return bytes((SCHEMA_VERSION,)) + _ENCODER.encode(header)


def decode_checkpoint(data: bytes, where: str) -> StreamCheckpoint:
    """Read bytes written by :func:`encode_checkpoint`, or schema 1's whole blob.

    ``where`` names them in errors. Raises
    :class:`~genesys_mux.errors.StateError` for bytes of a schema this
    release cannot read, or that are not a checkpoint at all.
    """
    if not data:
        raise StateError(f"{where}: empty checkpoint")
    version = data[0]
    if version not in _READABLE:
        newer = version > SCHEMA_VERSION
        raise StateError(
            f"{where}: checkpoint schema {version}, this release reads {SCHEMA_VERSION}"
            + ("; it was written by a newer release" if newer else "")
        )
    try:
        if version == 1:
            return _upgraded(data[1:])
        return _DECODER.decode(data[1:])
    except msgspec.DecodeError as exc:
        raise StateError(f"{where}: not a genesys-mux checkpoint ({exc})") from exc


def encode_remembered(remembered: Remembered) -> bytes:
    """One remembered key as bytes (the store's schema version covers its layout)."""
    return _ENCODER.encode(remembered)


def encode_memory(memory: Iterable[Remembered]) -> list[bytes]:
    """Each remembered key as :func:`encode_remembered` encodes it, in one pass.

    A store encodes every key a checkpoint carries: mapping the encoder's
    own method saves a Python call per key.
    """
    return list(map(_ENCODER.encode, memory))


def encode_memory_block(memory: Sequence[Remembered]) -> bytes:
    """Many remembered keys as one value: a msgpack array of what :func:`encode_remembered` makes.

    For a store that keeps keys in groups rather than one by one: one
    encoder call for the lot costs about half as much per key as a call
    per key, and the store handles one value instead of thousands.
    """
    return _ENCODER.encode(memory)


def decode_memory_block(data: bytes, where: str) -> list[Remembered]:
    """Read bytes written by :func:`encode_memory_block`; ``where`` names them in errors."""
    try:
        return _BLOCK.decode(data)
    except msgspec.DecodeError as exc:
        raise StateError(f"{where}: not a block of remembered keys ({exc})") from exc


def decode_remembered(data: bytes, where: str) -> Remembered:
    """Read bytes written by :func:`encode_remembered`; ``where`` names them in errors."""
    try:
        return _REMEMBERED.decode(data)
    except msgspec.DecodeError as exc:
        raise StateError(f"{where}: not a remembered key ({exc})") from exc


def apply_checkpoint(
    stored: StreamCheckpoint | None, checkpoint: StreamCheckpoint
) -> StreamCheckpoint:
    """The complete checkpoint after ``checkpoint`` is written over ``stored``.

    What every store does, here on whole values (the in-memory store, and
    the tests' model of the others).
    """
    if checkpoint.complete or stored is None:
        memory = list(checkpoint.memory)
    else:
        kept = {r.key: r for r in stored.memory}
        for key in checkpoint.forgotten:
            kept.pop(key, None)
        for remembered in checkpoint.memory:
            kept[remembered.key] = remembered
        memory = sorted(kept.values(), key=lambda r: r.rank)
    return msgspec.structs.replace(checkpoint, memory=memory, forgotten=[], complete=True)


def fingerprint(*parts: str) -> str:
    """A short, stable name for the configuration parts that decide what a stream carries."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:16]
