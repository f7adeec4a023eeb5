"""The event loop the command line runs on: uvloop when installed, else asyncio's own.

uvloop (the ``speed`` extra) replaces the loop's machinery (callbacks,
timers, transports) with libuv. The multiplexer wakes its readers and
hands events over through that machinery for every event, so it pays off
far more than for a bare socket reader (see ``bench_pipeline`` in
``benchmarks/README.md``). The library itself never picks a loop: an
application that embeds the multiplexer runs it on whatever loop it runs.
``GENESYS_MUX_LOOP=asyncio`` keeps the default loop even when uvloop is
installed (to rule it out while investigating a problem).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "run"]

_T = TypeVar("_T")


def _factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    if os.environ.get("GENESYS_MUX_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` to completion, as :func:`asyncio.run` does, on the chosen loop."""
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The running loop's name for ``/status`` and logs: ``uvloop`` or ``asyncio``."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
