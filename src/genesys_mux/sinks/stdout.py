"""A sink that prints each item as one JSON line: for pipes, ``jq`` and CI.

Theory of operation
-------------------
Each batch becomes one string of JSON lines (the shared record of
:mod:`genesys_mux.sinks.base`) written with a single ``write`` and a flush.
The write runs in a worker thread: a pipe whose reader is slow blocks that
thread, not the event loop, so a stalled ``| less`` holds back only the
stream this sink serves. A process-wide lock keeps batches from different
streams whole when several sinks share one text stream.

``stream`` defaults to whatever ``sys.stdout`` is at the time of each write,
so redirections made after construction are honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from genesys_mux.errors import SinkError
from genesys_mux.sinks.base import Item, encode_record

__all__ = ["StdoutSink"]

# One lock for every StdoutSink: they usually share sys.stdout, and lines of
# two batches must never interleave.
_WRITE_LOCK = threading.Lock()


class StdoutSink:
    """Items as JSON lines on ``stream`` (``sys.stdout`` by default)."""

    def __init__(self, stream: TextIO | None = None, *, name: str = "stdout") -> None:
        self.name = name
        self._stream = stream

    def __repr__(self) -> str:
        return f"StdoutSink(name={self.name!r})"

    async def start(self) -> None:
        """Nothing to open."""

    async def send(self, batch: Sequence[Item]) -> None:
        """Write the batch as JSON lines and flush."""
        if not batch:
            return
        # Records are UTF-8 JSON (bodies that are not are carried as base64),
        # so decoding cannot fail.
        text = b"".join(encode_record(item) + b"\n" for item in batch).decode("utf-8")
        await asyncio.to_thread(self._write, text)

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            with _WRITE_LOCK:
                stream.write(text)
                stream.flush()
        except (OSError, ValueError) as exc:
            # A closed stream or a broken pipe does not heal by itself.
            raise SinkError(
                f"sink {self.name}: cannot write to the output: {type(exc).__name__}: {exc}",
                retryable=False,
            ) from exc

    async def close(self) -> None:
        """Flush; the stream itself belongs to the caller and stays open."""
        stream = self._stream if self._stream is not None else sys.stdout
        # Nothing more can be done for an output that is gone.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
