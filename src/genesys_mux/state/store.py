"""The state store interface, the in-memory store, and turning a setting into a store."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from genesys_mux.core.checkpoint import StreamCheckpoint, apply_checkpoint
from genesys_mux.errors import FencedStateError

__all__ = ["MemoryStateStore", "StateStore", "fenced", "open_store"]


@runtime_checkable
class StateStore(Protocol):
    """Keeps the latest checkpoint of every stream."""

    #: Where the state lives, for messages and ``state show`` (never a password).
    name: str

    async def open(self) -> None:
        """Create the schema, or check that what is there can be read; raise StateError if not."""

    async def load(self, only: Collection[str] | None = None) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint (or those of ``only``), by stream id, with its whole memory."""
        ...

    async def save(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """Write these streams' checkpoints, all or none.

        A ``complete`` checkpoint replaces the stream's; an incremental one
        updates it (see :func:`~genesys_mux.core.checkpoint.apply_checkpoint`).
        Raises :class:`~genesys_mux.errors.FencedStateError`, writing
        nothing, when a checkpoint's ``fence`` is older than its stream's
        claim (a fence of 0, outside a cluster, is never refused).
        """

    async def claim(self, stream_id: str, fence: int) -> None:
        """Record that the owner with fencing token ``fence`` writes the stream from now on.

        From then on checkpoints of the stream with an older (smaller,
        non-zero) fence are refused: an instance that lost the stream's
        lease while frozen cannot overwrite its successor's state when it
        wakes up. Raises :class:`~genesys_mux.errors.FencedStateError` when
        a newer owner claimed it already.
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
        self._fences: dict[str, int] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def load(self, only: Collection[str] | None = None) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint (or those of ``only``), by stream id."""
        found = self._checkpoints
        return dict(found) if only is None else {s: found[s] for s in only if s in found}

    async def claim(self, stream_id: str, fence: int) -> None:
        """Refuse the stream's checkpoints older than ``fence`` from now on."""
        fenced({stream_id: fence}, self._fences, self.name)
        self._fences[stream_id] = max(fence, self._fences.get(stream_id, 0))

    async def save(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """Write these streams' checkpoints, or none if one is fenced off."""
        fenced({c.stream_id: c.fence for c in checkpoints}, self._fences, self.name)
        for checkpoint in checkpoints:
            stream_id = checkpoint.stream_id
            self._checkpoints[stream_id] = apply_checkpoint(
                self._checkpoints.get(stream_id), checkpoint
            )

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        for stream_id in stream_ids:
            self._checkpoints.pop(stream_id, None)
            self._fences.pop(stream_id, None)

    async def close(self) -> None:
        """Nothing to close."""

    async def move_aside(self) -> str:
        """Forget everything (memory has nowhere to keep it)."""
        self._checkpoints.clear()
        return "nowhere (memory)"


def fenced(fences: Mapping[str, int], claims: Mapping[str, int], store: str) -> None:
    """Raise FencedStateError if any of ``fences`` (stream -> token) is older than its claim.

    A fence of 0 (a stream carried outside a cluster) is never refused.
    """
    refused = {
        stream_id: claims[stream_id]
        for stream_id, fence in fences.items()
        if fence and claims.get(stream_id, 0) > fence
    }
    if refused:
        raise FencedStateError(refused_message(store, fences, refused), refused)


def refused_message(store: str, fences: Mapping[str, int], refused: Mapping[str, int]) -> str:
    """What a FencedStateError says: which streams, which tokens, what it means."""
    which = ", ".join(
        f"{s} (fencing token {fences.get(s, 0)}, claimed by {token})"
        for s, token in sorted(refused.items())
    )
    return (
        f"{store}: checkpoints refused, a newer owner claimed {which}; this instance "
        "lost those streams and must stop writing them"
    )


def open_store(
    state: StateStore | str | os.PathLike[str] | None,
    *,
    prefix: str = "genesys-mux:",
    exclusive: bool = True,
    cluster: str | None = None,
    setting: str | None = None,
) -> StateStore:
    """A store for a setting: a store as is, ``redis://``/``rediss://`` URLs, else a file path.

    None is the in-memory store. ``exclusive=False`` opens a SQLite file as
    a reader, without its one-writer lock. ``cluster`` names the cluster of
    an instance that writes a Redis store (another cluster's keys are
    refused at open). ``setting`` is the configuration key that names a
    Redis store, said in its errors as what to fix (``[state] url`` unless
    given). Nothing is opened yet: call ``await store.open()``.
    """
    if state is None:
        return MemoryStateStore()
    if isinstance(state, str) and state.startswith(("redis://", "rediss://", "unix://")):
        from genesys_mux.state.redis import RedisStateStore

        return RedisStateStore(
            state, prefix=prefix, cluster=cluster, setting=setting or "[state] url"
        )
    if isinstance(state, str | os.PathLike):
        from genesys_mux.state.sqlite import SqliteStateStore

        return SqliteStateStore(Path(state), exclusive=exclusive)
    return state
