"""Which optional extra brings which package, and the error when one is missing.

``pip install genesys-mux`` (``pip install .`` in a checkout) installs the
library's core only (aiohttp, msgspec, pydantic). A module that needs a
package of an extra imports it at its top inside ``try``, and on :class:`ModuleNotFoundError` calls
:func:`raise_if_extra_missing`, so a user who configures, say, a Redis state
store without ``[redis]`` is told which ``pip install`` fixes it instead of
reading a bare ``No module named 'redis'``.
"""

from __future__ import annotations

import importlib.util

from genesys_mux.errors import MissingExtraError

__all__ = ["EXTRA_OF", "missing_extra", "raise_if_extra_missing"]

#: Top-level module -> (the distribution to install, the extra that brings it).
EXTRA_OF: dict[str, tuple[str, str]] = {
    "redis": ("redis", "redis"),
    "nats": ("nats-py", "nats"),
    "prometheus_client": ("prometheus-client", "metrics"),
    "typer": ("typer", "cli"),
    "rich": ("rich", "cli"),
    "structlog": ("structlog", "cli"),
}


def raise_if_extra_missing(exc: ModuleNotFoundError, feature: str) -> None:
    """Raise :class:`MissingExtraError` for ``feature`` if ``exc`` is an extra's package missing.

    Returns when the missing module belongs to no extra (a broken install, a
    typo): the caller then re-raises the original error unchanged.
    """
    top = (exc.name or "").partition(".")[0]
    if top in EXTRA_OF:
        package, extra = EXTRA_OF[top]
        raise MissingExtraError(feature, package, extra) from exc


def missing_extra(module: str, feature: str) -> MissingExtraError | None:
    """The error :func:`raise_if_extra_missing` would raise for ``feature``, or None.

    None when ``module`` (a top-level module of :data:`EXTRA_OF`) is
    installed. It is looked for, not imported: ``genesys-mux validate``
    reports every missing extra of a configuration at once, cheaply.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # A module blocked in sys.modules, or a broken one: not importable either.
        found = False
    if found:
        return None
    package, extra = EXTRA_OF[module]
    return MissingExtraError(feature, package, extra)
