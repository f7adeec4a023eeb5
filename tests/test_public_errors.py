"""The exceptions the documentation tells users to catch are importable from ``genesys_mux``."""

from __future__ import annotations

import re
from pathlib import Path

import genesys_mux
from genesys_mux import errors

ROOT = Path(__file__).resolve().parent.parent


def test_every_error_of_the_tree_is_exported_by_the_package() -> None:
    for name in errors.__all__:
        assert name in genesys_mux.__all__, (
            f"genesys_mux does not export {name} (add it to genesys_mux/__init__.py, "
            "and to docs/reference/api.md)"
        )
        assert getattr(genesys_mux, name) is getattr(errors, name)


def test_every_error_the_documentation_names_can_be_imported_from_the_package() -> None:
    named: set[str] = set()
    for page in ROOT.joinpath("docs").rglob("*.md"):
        named |= set(re.findall(r"\b([A-Z][A-Za-z]*Error)\b", page.read_text(encoding="utf-8")))
    ours = named & set(errors.__all__)
    # What start(), the lifecycle checks and the region lookup raise, at least.
    assert {
        "StateError",
        "InvalidStateError",
        "FencedStateError",
        "UnknownRegionError",
        "RateLimitedError",
    } <= ours
    for name in ours:
        assert name in genesys_mux.__all__, f"the docs name {name}; genesys_mux does not export it"
        assert getattr(genesys_mux, name) is getattr(errors, name)
