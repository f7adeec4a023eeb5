"""What the streams of one multiplexer remember about each key: one record per key.

Theory of operation
-------------------
A stream drops an event whose state it has delivered already (a duplicate)
and one older than a state it has (stale), so for each key it has seen (a
conversation, a user's presence...) it remembers the newest version and the
last few state digests (:mod:`genesys_mux.core.streams`). Streams overlap:
ten streams over one queue's conversations see every conversation ten
times. A :class:`KeyMemory` keeps **one** :class:`Record` per key for all
the streams that share it, and says with bit masks (one bit per stream)
what is whose:

``streams``
    The streams that remember the key.
``version``
    The newest version any of them accepted. It is the key's, not one
    stream's: a snapshot older than a state the process has delivered on
    one stream is stale on every stream (the conversation has moved on).
``hashes`` and ``holders``
    The last ``hashes_per_key`` digests seen for the key, oldest first, and
    per digest the streams that took it in. A digest is a duplicate for the
    streams whose bit it holds. ``holders`` is None while every member holds
    every digest, as members over the same traffic do: then nothing per
    stream is stored at all.
``in_state``
    The streams for which the key is in their ``state`` filter's state.
``stamp``
    When any stream last saw the key, on the memory's clock. The records
    are kept least recently seen first, in stamp order; a stream's
    checkpoint ranks its keys by stamp.

The clock ticks once per *sighting*: a notification offered to ten streams
one after another is seen once (the memory merges a touch of the record
touched last by a stream that has not touched it yet), so ranks and the
log grow with the traffic, not with the number of streams.

Bound
.....
Each stream brings its own bound (``memory``, 50,000 keys by default).
The memory forgets its least recently seen key while the streams together
remember more keys than their bounds add up to, a key remembered by three
streams counting three times. One stream alone keeps exactly its bound;
ten streams over the same traffic each keep the last 50,000 keys, as one
stream does, in one record per key; streams over different traffic share
the total, so a busy stream may keep more than its bound while a quiet
one's oldest keys go first.

A stream that leaves (removed, or handed to another instance) gives back
its share of the bound at once; its bit is cleared from the records by
:meth:`KeyMemory.sweep`, a slice at a time, and a record only it
remembered is forgotten then. Until the sweep is done, its bit is given to
no other stream.

Checkpoints
...........
Streams checkpoint their own view of the shared records (see
:class:`~genesys_mux.core.streams.CheckpointBuild`). The memory keeps the
one log of sightings those incremental checkpoints read (each stream from
its own last checkpoint on), the keys each stream forgot since its last
one (no more than its bound: past it, the next checkpoint is a complete
one instead), and the builds in progress, which it tells before a record changes
(:meth:`Keeper.keep`) so that each builds its keys as they were when it
began.

Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Protocol

import msgspec

from genesys_mux.core.checkpoint import Remembered

__all__ = ["FORGOTTEN", "Keeper", "KeyMemory", "Record"]

#: The stamp of a record the memory has forgotten (below every real one).
FORGOTTEN = -1
#: Sightings the log holds for incremental checkpoints, at most: 1.6
#: intervals' worth at 10,000 events/s and the default checkpoint interval.
#: A checkpoint that needs older ones reads the records' stamps instead.
LOG_LIMIT = 16_384
#: Distinct masks above 255 kept as one object each, at most.
_MAX_MASKS = 4096


# gc=False, and tuples rather than lists: the memory holds up to 50,000 of
# these per stream's bound, and every full collection of the cyclic GC walks
# each object it tracks. Tracked, they made that pause tens of milliseconds,
# stalling the feed (the p99 latency); untracked, it is a few. They cannot
# form a cycle: they hold floats, bytes, ints and a str.
class Record(msgspec.Struct, gc=False):
    """What the streams sharing a :class:`KeyMemory` remember about one key."""

    key: str
    #: The newest version any stream accepted (None: none had one).
    version: float | None
    #: The newest few state digests, oldest first.
    hashes: tuple[bytes, ...]
    #: Per digest, the streams that took it in; None: every member, each.
    holders: tuple[int, ...] | None
    #: The streams for which the key is in their filter's state.
    in_state: int
    #: The streams that remember the key.
    streams: int
    #: When a stream last saw it, on the memory's clock; :data:`FORGOTTEN` once forgotten.
    stamp: int

    def digests_of(self, bit: int) -> list[bytes]:
        """The digests the stream of ``bit`` took in, oldest first."""
        holders = self.holders
        if not self.streams & bit:
            return []
        if holders is None:
            return list(self.hashes)
        return [h for h, held in zip(self.hashes, holders, strict=True) if held & bit]

    def holds(self, digest: bytes, bit: int) -> bool:
        """True when the stream of ``bit`` took ``digest`` in (a duplicate for it)."""
        hashes = self.hashes
        if digest not in hashes:
            return False
        holders = self.holders
        return holders is None or bool(holders[hashes.index(digest)] & bit)

    def remembered(self, bit: int, rank: int) -> Remembered:
        """The stream of ``bit``'s view of the key, as a checkpoint writes it."""
        holders = self.holders
        if holders is None:
            hashes = b"".join(self.hashes)
        else:
            hashes = b"".join(h for h, held in zip(self.hashes, holders, strict=True) if held & bit)
        return Remembered(self.key, self.version, hashes, bool(self.in_state & bit), rank)


class Keeper(Protocol):
    """A checkpoint being built: told about a record before it changes."""

    def keep(self, record: Record) -> None:
        """``record`` is about to change (seen again, or forgotten)."""


class KeyMemory:
    """One record per key for every stream that joins; see the module docstring.

    A stream joins with :meth:`join` (its bit and bound), touches a key per
    notification with :meth:`touch`, records what it took in with
    :meth:`add_digest`, and leaves with :meth:`leave`.
    """

    def __init__(self, *, hashes_per_key: int = 8, log_limit: int = LOG_LIMIT) -> None:
        """``log_limit``: the sightings logged for incremental checkpoints.

        0 when no checkpoint is taken but by hand (no state store): the log
        would keep the records of the last sightings alive, forgotten or
        not (about 4.5 MiB at the default); a checkpoint then reads the
        records' stamps instead.
        """
        if hashes_per_key < 1:
            raise ValueError(f"hashes_per_key must be at least 1, not {hashes_per_key}")
        self.hashes_per_key = hashes_per_key
        self._records: OrderedDict[str, Record] = OrderedDict()
        self.clock = 0
        # Streams whose touch of the record stamped `clock` merged into that
        # sighting; 0 when the next touch must tick (see touch).
        self._round = 0
        # Every sighting, oldest first: the one at clock value
        # `clock - len(_log) + 1` first (each tick appends one).
        self._log: deque[Record] = deque(maxlen=log_limit)
        self._bounds: dict[int, int] = {}  # bit -> bound
        self._capacity = 0
        # Keys remembered, counted once per member: in all, and per bit.
        self._memberships = 0
        self._counts: dict[int, int] = {}
        # Per bit, the keys forgotten since the stream's last checkpoint
        # took them; None once they outnumber its bound (see _forgot).
        self._forgotten: dict[int, set[str] | None] = {}
        # Bits of streams that left, still set on some records (see sweep),
        # and the records still to clear of them.
        self._retired = 0
        self._sweeping: list[Record] = []
        self._keepers: list[Keeper] = []
        # Masks above the small-int cache, one object each (ten streams'
        # masks would otherwise cost an int object per record).
        self._masks: dict[int, int] = {}

    # -- members -----------------------------------------------------------------

    def join(self, bound: int) -> int:
        """A new stream remembering up to ``bound`` keys; its bit."""
        slot = 0
        while (1 << slot) in self._bounds or (1 << slot) & self._retired:
            slot += 1
        bit = 1 << slot
        self._bounds[bit] = bound
        self._capacity += bound
        self._counts[bit] = 0
        self._forgotten[bit] = set()
        return bit

    def leave(self, bit: int) -> None:
        """The stream of ``bit`` is gone: what it alone remembered is to be forgotten.

        Its share of the bound goes at once; its bit is cleared from the
        records by :meth:`sweep`, a slice at a time (a memory may hold
        hundreds of thousands of records), and is not given to a stream
        that joins until then. Other streams see no difference meanwhile.
        """
        bound = self._bounds.pop(bit, None)
        if bound is None:
            return
        self._capacity -= bound
        self._memberships -= self._counts.pop(bit)
        del self._forgotten[bit]
        self._retired |= bit
        # From the start again, for every bit retired so far: a record
        # already cleared of the others costs one test.
        self._sweeping = list(self._records.values())

    @property
    def sweeping(self) -> bool:
        """True while records still carry the bits of streams that left."""
        return bool(self._retired)

    def sweep(self, limit: int) -> bool:
        """Clear up to ``limit`` more records of the bits of streams that left; True once done.

        A record only they remembered is forgotten (it is no stream's);
        a digest only they took in is dropped.
        """
        retired, sweeping, records = self._retired, self._sweeping, self._records
        if not retired:
            return True
        kept = ~retired
        chunk = sweeping[-limit:]
        del sweeping[-limit:]
        for record in chunk:
            if not record.streams & retired or record.stamp == FORGOTTEN:
                continue
            record.streams = streams = self._mask(record.streams & kept)
            record.in_state = self._mask(record.in_state & kept)
            holders = record.holders
            if holders is not None:
                left = [
                    (h, self._mask(held & kept))
                    for h, held in zip(record.hashes, holders, strict=True)
                    if held & kept
                ]
                record.hashes = tuple(h for h, _ in left)
                record.holders = self._normal(tuple(held for _, held in left), streams)
            if not streams and records.get(record.key) is record:
                del records[record.key]
                record.stamp = FORGOTTEN
        if sweeping:
            return False
        self._retired = 0
        self._evict()
        return True

    @property
    def limit(self) -> int:
        """The streams' bounds added up: memberships past it are forgotten."""
        return self._capacity

    def __len__(self) -> int:
        """How many keys are remembered (by any stream)."""
        return len(self._records)

    def get(self, key: str) -> Record | None:
        """The record of ``key``, if remembered."""
        return self._records.get(key)

    def records(self) -> Iterator[Record]:
        """Every record, least recently seen first."""
        return iter(self._records.values())

    def records_of(self, bit: int) -> list[Record]:
        """The records the stream of ``bit`` remembers, least recently seen first."""
        return [r for r in self._records.values() if r.streams & bit]

    # -- sightings ---------------------------------------------------------------

    def touch(self, key: str, bit: int) -> Record:
        """The stream of ``bit`` sees ``key``: its record, stamped, joined, most recent."""
        records = self._records
        record = records.get(key)
        round_ = self._round
        if record is not None and record.stamp == self.clock and round_ and not round_ & bit:
            # The notification another stream was just offered: one sighting.
            self._round = round_ | bit
        else:
            self.clock += 1
            self._round = bit
            if record is None:
                record = Record(key, None, (), None, 0, 0, 0)
                records[key] = record
            else:
                for keeper in self._keepers:
                    keeper.keep(record)  # before it changes
                records.move_to_end(key)
            record.stamp = self.clock
            self._log.append(record)
        if not record.streams & bit:
            self._add_member(record, bit)
        return record

    def _add_member(self, record: Record, bit: int) -> None:
        members = record.streams
        if members:
            if record.holders is None and record.hashes:
                # The digests are the other members', not this stream's.
                record.holders = (members,) * len(record.hashes)
            members |= bit
            record.streams = members if members < 256 else self._mask(members)
        else:
            record.streams = bit
        forgotten = self._forgotten[bit]
        if forgotten:
            forgotten.discard(record.key)
        self._counts[bit] += 1
        self._memberships += 1
        if self._memberships > self._capacity:
            self._evict()

    def add_digest(self, record: Record, digest: bytes, bit: int) -> None:
        """The stream of ``bit`` took ``digest`` in for ``record``'s key."""
        hashes, holders, members = record.hashes, record.holders, record.streams
        if holders is None and members == bit:
            # Its only member: a ring of the newest few, nothing per stream.
            if len(hashes) < self.hashes_per_key:
                record.hashes = (*hashes, digest)
            else:
                record.hashes = (*hashes[len(hashes) - self.hashes_per_key + 1 :], digest)
            return
        if holders is None:
            holders = (members,) * len(hashes)
        if digest in hashes:
            at = hashes.index(digest)
            holders = (*holders[:at], self._mask(holders[at] | bit), *holders[at + 1 :])
        else:
            hashes, holders = (*hashes, digest), (*holders, bit)
            if len(hashes) > self.hashes_per_key:
                hashes, holders = hashes[1:], holders[1:]
        record.hashes = hashes
        record.holders = self._normal(holders, members)

    def set_in_state(self, record: Record, bit: int, in_state: bool) -> None:
        """Whether ``record``'s key is in the stream of ``bit``'s filter state."""
        mask = record.in_state
        record.in_state = self._mask(mask | bit if in_state else mask & ~bit)

    @staticmethod
    def _normal(holders: tuple[int, ...], members: int) -> tuple[int, ...] | None:
        for held in holders:
            if held != members:
                return holders
        return None

    def _mask(self, mask: int) -> int:
        if mask < 256:
            return mask  # CPython keeps one object per small int already
        masks = self._masks
        if len(masks) >= _MAX_MASKS:
            masks.clear()  # only an economy: never let it grow without bound
        return masks.setdefault(mask, mask)

    def _evict(self) -> None:
        """Forget the least recently seen keys while the streams remember more than their bounds."""
        records, keepers = self._records, self._keepers
        forgotten, counts = self._forgotten, self._counts
        while self._memberships > self._capacity and records:
            key, record = records.popitem(last=False)
            for keeper in keepers:
                keeper.keep(record)
            streams = record.streams
            if streams in forgotten:  # one member, as with one stream
                self._memberships -= 1
                counts[streams] -= 1
                self._forgot(streams, key)
            else:
                streams &= ~self._retired  # left: counted out already
                self._memberships -= streams.bit_count()
                while streams:
                    low = streams & -streams
                    counts[low] -= 1
                    self._forgot(low, key)
                    streams ^= low
            record.stamp = FORGOTTEN  # the log may hold it: not to be built

    def _forgot(self, bit: int, key: str) -> None:
        """The stream of ``bit`` forgot ``key``: listed for its next checkpoint, within bounds."""
        forgotten = self._forgotten[bit]
        if forgotten is None:
            return  # too many to list: the next checkpoint is a complete one
        forgotten.add(key)
        # Only a checkpoint empties the list, and a stream without a store
        # never takes one: a busy feed would grow it by every key it ever
        # forgot. Past the bound, a complete checkpoint (at most the bound's
        # keys) is cheaper than the list anyway.
        if len(forgotten) > self._bounds[bit]:
            self._forgotten[bit] = None

    # -- checkpoints -------------------------------------------------------------

    def floor(self) -> int:
        """The oldest record's stamp (the clock's next value when there is none).

        Every key remembered was seen at or after it, and every key
        forgotten before it: a floor for every stream's checkpoint.
        """
        for record in self._records.values():
            return record.stamp
        return self.clock + 1

    def logged_since(self, last: int) -> list[Record] | None:
        """The sightings after clock value ``last``, oldest first; None if the log lost some."""
        log, clock = self._log, self.clock
        if clock - last > len(log):
            return None
        return list(islice(log, len(log) - (clock - last), None))

    def seen_since(self, last: int, bit: int) -> list[Record]:
        """The records of the stream of ``bit`` stamped after ``last``, least recent first."""
        tail: list[Record] = []
        for record in reversed(self._records.values()):
            if record.stamp <= last:
                break  # and so is every record before it
            if record.streams & bit:
                tail.append(record)
        tail.reverse()
        return tail

    def has_forgotten(self, bit: int) -> bool:
        """True when the stream of ``bit`` forgot keys since :meth:`take_forgotten`."""
        forgotten = self._forgotten[bit]
        return forgotten is None or bool(forgotten)

    def take_forgotten(self, bit: int) -> set[str] | None:
        """The keys the stream of ``bit`` forgot since the last call.

        None when it forgot more than its bound since: too many to list,
        its next checkpoint must carry its whole memory instead.
        """
        forgotten = self._forgotten[bit]
        self._forgotten[bit] = set()
        return forgotten

    def begin_build(self, keeper: Keeper) -> None:
        """A checkpoint starts: tell ``keeper`` of each change until :meth:`end_build`."""
        self._keepers.append(keeper)
        # The next touch ticks, so a change after this point is told.
        self._round = 0

    def end_build(self, keeper: Keeper) -> None:
        """The checkpoint ``keeper`` builds is done, or given up."""
        if keeper in self._keepers:
            self._keepers.remove(keeper)

    def restore(self, bit: int, memory: Iterable[Remembered]) -> None:
        """Add a checkpoint's ``memory`` (least recently seen first) to the stream of ``bit``.

        Each key is stamped after every key seen so far, at its rank if
        that is higher: a stream restored into a fresh memory keeps its
        ranks. The log starts again (incremental checkpoints read stamps).
        """
        records = self._records
        for remembered in memory:
            key = remembered.key
            record = records.get(key)
            if record is None:
                record = Record(key, None, (), None, 0, 0, 0)
                records[key] = record
            else:
                for keeper in self._keepers:
                    keeper.keep(record)
                records.move_to_end(key)
            self.clock = max(self.clock + 1, remembered.rank)
            record.stamp = self.clock
            if not record.streams & bit:
                self._add_member(record, bit)
            if record.stamp == FORGOTTEN:
                continue  # pushed out at once: more than the bounds allow
            version = remembered.version
            if version is not None and (record.version is None or version > record.version):
                record.version = version
            for digest in remembered.digests()[-self.hashes_per_key :]:
                if not record.holds(digest, bit):
                    self.add_digest(record, digest, bit)
            if remembered.in_state:
                self.set_in_state(record, bit, True)
        self._log.clear()
        self._round = 0
