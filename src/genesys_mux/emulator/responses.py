"""The JSON response both the emulated API and the control surface answer with.

It lives apart so that :mod:`genesys_mux.emulator.app` and
:mod:`genesys_mux.emulator.control` share it without importing each other.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

__all__ = ["json_response"]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``data`` encoded as a compact JSON body, ``application/json``."""
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        headers=headers,
        content_type="application/json",
    )
