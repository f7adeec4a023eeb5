"""The version, read from the installed package's metadata: the one place it is written.

``pyproject.toml`` sets it; ``genesys_mux.__version__`` and
``genesys-mux --version`` read it back from the metadata that installing the
package wrote.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "__version__"]

#: The distribution's name on PyPI (the import name is ``genesys_mux``).
DISTRIBUTION = "genesys-mux"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:
    # Imported from a source tree that was never installed (no metadata):
    # say so rather than guess a number that may be wrong.
    __version__ = "0+unknown"
