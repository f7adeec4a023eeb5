"""What a store that keeps each stream's memory as a log of blocks knows of them.

SQLite and Redis keep a stream's remembered keys the same way: a
checkpoint appends what it carries as new blocks (each one value of up to
a slice of keys, with the lowest and highest rank in it, and the keys
forgotten since the previous checkpoint when some block may still hold
them); loading replays the blocks in order, a key's newest entry winning,
the keys forgotten dropped. Which blocks can go is decided here, from the
checkpoints' ``floor`` (see
:attr:`~genesys_mux.core.checkpoint.StreamCheckpoint.floor`), by the same
rules for both: nothing here is per key, and nothing depends on where the
blocks are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from genesys_mux.core.checkpoint import Remembered

__all__ = ["Block", "Blocks", "ranks"]


@dataclass(slots=True)
class Block:
    """One block of a stream's memory, as a store keeps track of it."""

    #: The lowest and highest rank of its entries (lo > hi: it has none).
    lo: int
    hi: int
    size: int
    #: It carries keys forgotten (for the blocks before it).
    marked: bool


def ranks(memory: Sequence[Remembered]) -> tuple[int, int]:
    """The lowest and highest rank of a block's entries; (1, 0) for none.

    ``memory`` is least recently seen first, as a checkpoint's is: its
    first and last entries rank lowest and highest. (The ranks only count
    for checkpoints that say their floor, which streams make, in order.)
    """
    return (memory[0].rank, memory[-1].rank) if memory else (1, 0)


@dataclass(slots=True, eq=False)
class Blocks:
    """What a store knows of one stream's blocks, to tell which can go.

    Read again from the store whenever in doubt (after a write that
    failed, or once the store was opened again). Nothing here is per key:
    the stream's checkpoints say, with their ``floor``, which ranks are no
    longer anyone's newest entry.
    """

    #: By number, oldest first.
    blocks: dict[int, Block] = field(default_factory=dict)
    #: Entries in all blocks.
    stored: int = 0
    #: Entries right after the log was last written whole: it is written
    #: whole again once it has grown to four times that (see Blocks.due).
    whole: int = 0
    #: The number the next block gets.
    next: int = 1

    def add(self, number: int, block: Block) -> None:
        """Block ``number`` was written."""
        self.blocks[number] = block
        self.stored += block.size
        self.next = number + 1

    def holding_forgotten(self, floor: int) -> bool:
        """True if some block may still hold an entry of a key forgotten since."""
        if floor <= 0:
            return bool(self.blocks)  # not known: any may
        return any(b.size and b.lo < floor for b in self.blocks.values())

    def prune(self, floor: int) -> list[int]:
        """Forget the blocks that can go (by their numbers, returned) at this floor.

        A block can go once every entry in it ranks below the floor (each
        was written again later, with a rank at least the floor, or its
        key was forgotten) and, if it carries forgotten keys, once no
        block before it may hold their entries (those rank below the
        floor too).
        """
        if floor <= 0:
            return []
        gone: list[int] = []
        holding = False  # some block kept before this one may hold forgotten entries
        for number, block in self.blocks.items():
            if block.hi < floor and not (block.marked and holding):
                gone.append(number)
            elif block.size and block.lo < floor:
                holding = True
        for number in gone:
            self.stored -= self.blocks.pop(number).size
        return gone

    def due(self, block_size: int) -> bool:
        """True when the log is to be written whole: four times what it held then, and more.

        ``block_size`` is the most keys a block holds. With checkpoints
        that say their floor, and refresh, the log holds about three
        entries per key remembered at most; this is for those that do not.
        Written whole, the log holds one entry per key again; at four
        times, that costs about a third of an entry copied per entry
        written, at worst.
        """
        return self.stored > 4 * self.whole + 4 * block_size
