"""The documentation's typed examples pass ``mypy --strict`` as a reader runs it.

A reader's mypy may or may not run pydantic's plugin (this repository's
does, and so hid that the getting-started example failed without it): each
example is checked both ways, on its own, outside this repository's
configuration.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = {
    "getting-started": ("getting-started.md", "## The library in a few lines"),
    "type-checking": ("library.md", "## Type checking"),
}


def example(page: str, heading: str) -> str:
    """The first Python block after ``heading`` on a documentation page."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    found = re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.DOTALL)
    assert found is not None, f"no Python example under {heading!r} in {page}"
    return found.group(1)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache per configuration, shared by the examples (a cold run takes seconds)."""
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.mark.parametrize("plugin", [False, True], ids=["plain", "pydantic-plugin"])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_example_type_checks_with_and_without_the_pydantic_plugin(
    name: str, plugin: bool, tmp_path: Path, caches: Path
) -> None:
    source = tmp_path / f"{name.replace('-', '_')}.py"
    source.write_text(example(*EXAMPLES[name]), encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\n" + ("plugins = pydantic.mypy\n" if plugin else ""),
        encoding="utf-8",
    )
    cache = caches / ("plugin" if plugin else "plain")
    out, err, status = api.run(
        [str(source), "--config-file", str(config), "--cache-dir", str(cache)]
    )
    assert status == 0, out + err
