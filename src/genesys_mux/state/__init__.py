"""Where streams keep their checkpoints across restarts: memory, a SQLite file, or Redis.

Theory of operation
-------------------
A :class:`StateStore` keeps one :class:`~genesys_mux.core.checkpoint.StreamCheckpoint`
per stream id. It is opened once (which creates its schema, or checks that
what is there was written by genesys-mux in a schema this release reads),
loaded once at start-up, then saved in batches; every batch is written
atomically, so a crash leaves either the previous checkpoints or the new
ones, never a mix.

Three implementations share the interface:

* :class:`MemoryStateStore`: the library's default; nothing survives the
  process, exactly as before there were stores.
* :class:`SqliteStateStore`: a file (stdlib :mod:`sqlite3`, WAL mode), the
  command line's default; no server needed. Calls run in a worker thread,
  so the event loop never waits on the disk.
* :class:`RedisStateStore`: keys under a prefix on the Redis users already
  run for the Redis Streams sink; what several instances will share.

A store that is corrupt, foreign (not ours), of a newer schema, or
unreachable when opened raises :class:`~genesys_mux.errors.StateError` and
changes nothing. :func:`open_store` turns a configuration value (a path, a
``redis://`` URL, or a store) into a store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genesys_mux._lazy import lazy_exports
from genesys_mux.state.sqlite import SqliteStateStore
from genesys_mux.state.store import MemoryStateStore, StateStore, open_store

if TYPE_CHECKING:
    from genesys_mux.state.redis import RedisStateStore

__all__ = [
    "MemoryStateStore",
    "RedisStateStore",
    "SqliteStateStore",
    "StateStore",
    "open_store",
]

# Redis comes with the [redis] extra: imported when first used, so the
# Multiplexer (which imports this package) runs without it.
if not TYPE_CHECKING:  # type checkers read the imports above, name by name
    __getattr__, __dir__ = lazy_exports(
        __name__, globals(), {"RedisStateStore": "genesys_mux.state.redis"}
    )
