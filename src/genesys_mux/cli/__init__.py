"""The ``genesys-mux`` command line (typer and rich live here, nowhere else).

They come with the ``[cli]`` extra. :func:`main`, the console script, is
kept apart from :mod:`genesys_mux.cli.app` so that a library-only install
answers ``genesys-mux`` with the ``pip install`` that adds the command line,
not with a traceback.
"""

from __future__ import annotations

import sys

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux.errors import MissingExtraError

__all__ = ["main"]


def main() -> None:
    """Console-script entry point: run the command line, or say how to install it."""
    try:
        try:
            from genesys_mux.cli.app import main as run
        except ModuleNotFoundError as exc:
            raise_if_extra_missing(exc, "the genesys-mux command line")
            raise
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run()
