"""Whether to use the optional compiled helpers of ``_speedups.c``.

They are built at install where a C compiler and Python's headers are
found, and each has a Python specification that gives the same results:
:func:`genesys_mux.core.snapshot._walk` and
:func:`genesys_mux.core.frames._split_in_python`. Setting
``GENESYS_MUX_NO_EXTENSIONS`` to anything but ``0`` or empty turns them
off, to rule them out when chasing a problem.
"""

from __future__ import annotations

import os

__all__ = ["extensions_enabled"]


def extensions_enabled() -> bool:
    """False when ``GENESYS_MUX_NO_EXTENSIONS`` asks for the pure-Python paths."""
    return os.environ.get("GENESYS_MUX_NO_EXTENSIONS", "") in ("", "0")
