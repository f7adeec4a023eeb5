"""The one way tests wait for a condition: poll it against a deadline.

Never a fixed sleep: ``eventually`` returns as soon as the condition holds,
and fails the test with a clear message when the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["DEADLINE_S", "eventually"]

#: How long a test waits for something that should happen within a second or two.
DEADLINE_S = 15.0

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], within: float = ..., interval: float = ...
) -> T: ...


@overload
async def eventually(check: Callable[[], T], within: float = ..., interval: float = ...) -> T: ...


async def eventually(
    check: Callable[[], Any],
    within: float = DEADLINE_S,
    interval: float = 0.02,
) -> Any:
    """Poll ``check`` (sync or async) until its result is truthy, and return that result.

    Fails the test with an AssertionError if that has not happened ``within``
    seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)
