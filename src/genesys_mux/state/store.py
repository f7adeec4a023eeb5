"""The state store interface, the in-memory store, and turning a setting into a store."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from genesys_mux.core.checkpoint import StreamCheckpoint, apply_checkpoint

__all__ = ["MemoryStateStore", "StateStore", "open_store"]


@runtime_checkable
class StateStore(Protocol):
    """Keeps the latest checkpoint of every stream."""

    #: Where the state lives, for messages and ``state show`` (never a password).
    name: str

    async def open(self) -> None:
        """Create the schema, or check that what is there can be read; raise StateError if not."""

    async def load(self) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint, by stream id, complete (its whole memory)."""
        ...

    async def save(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """Write these streams' checkpoints, all or none.

        A ``complete`` checkpoint replaces the stream's; an incremental one
        updates it (see :func:`~genesys_mux.core.checkpoint.apply_checkpoint`).
        """

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams (``state prune``)."""

    async def close(self) -> None:
        """Release connections and files; the store may be opened again."""

    async def move_aside(self) -> str:
        """Set the current state aside (never deleted) so the next open starts afresh.

        Returns where it went. Call on a closed store.
        """
        ...


class MemoryStateStore:
    """Checkpoints in this process only: the library's default, lost with the process."""

    name = "memory"

    def __init__(self) -> None:
        self._checkpoints: dict[str, StreamCheckpoint] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def load(self) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint, by stream id."""
        return dict(self._checkpoints)

    async def save(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """Write these streams' checkpoints."""
        for checkpoint in checkpoints:
            stream_id = checkpoint.stream_id
            self._checkpoints[stream_id] = apply_checkpoint(
                self._checkpoints.get(stream_id), checkpoint
            )

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        for stream_id in stream_ids:
            self._checkpoints.pop(stream_id, None)

    async def close(self) -> None:
        """Nothing to close."""

    async def move_aside(self) -> str:
        """Forget everything (memory has nowhere to keep it)."""
        self._checkpoints.clear()
        return "nowhere (memory)"


def open_store(
    state: StateStore | str | os.PathLike[str] | None,
    *,
    prefix: str = "genesys-mux:",
    exclusive: bool = True,
) -> StateStore:
    """A store for a setting: a store as is, ``redis://``/``rediss://`` URLs, else a file path.

    None is the in-memory store. ``exclusive=False`` opens a SQLite file as
    a reader, without its one-writer lock. Nothing is opened yet: call
    ``await store.open()``.
    """
    if state is None:
        return MemoryStateStore()
    if isinstance(state, str) and state.startswith(("redis://", "rediss://", "unix://")):
        from genesys_mux.state.redis import RedisStateStore

        return RedisStateStore(state, prefix=prefix)
    if isinstance(state, str | os.PathLike):
        from genesys_mux.state.sqlite import SqliteStateStore

        return SqliteStateStore(Path(state), exclusive=exclusive)
    return state
