"""Package attributes imported on first use (PEP 562), to keep ``import`` cheap.

``import genesys_mux`` runs whenever any of its modules is imported, the
command line's included: if the package's ``__init__`` imported the whole
library (aiohttp, pydantic, the emulator's schemas), ``genesys-mux --help``
would pay for all of it. A package lists its public names with the module
each lives in; the module is imported when a name is first read, and the
value is then cached in the package's namespace. Type checkers and IDEs see
the names through the package's ``if TYPE_CHECKING:`` imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (name -> module)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        # Cached: the next read is a plain dictionary lookup, not this function.
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
