"""The documentation site builds, strictly and offline, and its generated references are whole.

The configuration, command-line and metrics references are generated at
build time (``docs/_hooks/reference.py``); these tests read the built HTML
and check that what the code has (every model field, every command and
option, every metric family, every public name) is really on the pages, so
a generator cannot quietly produce an empty or partial page.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
import typing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel

import genesys_mux
from genesys_mux import Multiplexer, StreamConfig, StreamFilter, configfile
from genesys_mux.cli.app import app
from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import StreamEvent
from genesys_mux.emulator.org import ContactCentre
from genesys_mux.errors import ConfigFileError
from genesys_mux.observability.metrics import MuxMetrics

ROOT = Path(__file__).resolve().parent.parent

# A full build takes a few seconds; a loaded machine may need more.
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with ``mkdocs build --strict`` (a warning fails it)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # No proxy and no network needed: the build must work offline.
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(variable, None)
    result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, (
        "mkdocs build --strict failed (install the docs extra: pip install -e '.[docs]'):\n"
        + result.stderr[-4000:]
    )
    return out


def page(site: Path, name: str) -> str:
    """A built page's HTML, its entities decoded."""
    return html.unescape((site / name / "index.html").read_text(encoding="utf-8"))


def codes(text: str) -> set[str]:
    """Everything set as code on a page."""
    return set(re.findall(r"<code>([^<]*)</code>", text))


def models_of(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside a type annotation (lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from models_of(arg)


def test_the_configuration_reference_has_every_key_of_every_model(site: Path) -> None:
    text = page(site, "reference/configuration")
    shown = codes(text)
    models: list[type[BaseModel]] = [
        configfile.GenesysSection,
        configfile.OAuthClientSpec,
        configfile.Settings,
        configfile.StateSection,
        configfile.ClusterSection,
        StreamConfig,
        StreamFilter,
        *models_of(configfile.SinkSpec),
    ]
    assert len(models) >= 11, "the sink union lost its members"
    for model in models:
        for name, info in model.model_fields.items():
            key = info.alias or name
            assert key in shown, f"{model.__name__}.{key} is missing from the configuration page"
            if info.description:
                assert html.unescape(info.description) in text, (
                    f"the description of {model.__name__}.{key} is missing"
                )
    for title in ("[genesys]", "[[genesys.clients]]", "[settings]", "[state]", "[cluster]"):
        assert title in shown
    for sink in ("stdout", "jsonl", "redis", "webhook", "nats"):
        assert f'[[streams.sinks]] type = "{sink}"' in shown
    # A default, a limit and a type, as the models have them.
    assert re.search(
        r"<code>max_streams</code></td>\s*<td>integer</td>\s*<td><code>10</code>", text
    )
    assert "≤ 65535" in text
    assert "<!-- generated:" not in text


def test_the_cli_reference_has_every_command_and_option(site: Path) -> None:
    text = page(site, "reference/cli")
    shown = codes(text)
    stack: list[tuple[str, Any]] = [("genesys-mux", typer.main.get_command(app))]
    commands = 0
    while stack:
        path, command = stack.pop()
        commands += 1
        assert path in shown, f"command {path!r} is missing from the CLI page"
        for param in command.params:
            if param.param_type_name == "option":
                for opt in param.opts:
                    assert opt in shown, f"{path} {opt} is missing from the CLI page"
            else:
                assert (param.name or "").upper() + "..." in shown or (
                    param.name or ""
                ).upper() in shown
            if param.help:
                assert html.unescape(param.help) in text
        sub = getattr(command, "commands", None) or {}
        stack += [(f"{path} {name}", c) for name, c in sub.items()]
    assert commands >= 14, "the command tree looks short"
    # The defaults come from the code: the emulator's port and demo client.
    assert "<code>8080</code>" in text
    assert "<code>demo-client</code>" in text
    # A pipe escaped for a Markdown table reads as a pipe.
    assert "[--region R | --base-url URL]" in text
    assert "\\|" not in text


def test_the_metrics_reference_has_every_family_of_a_real_registry(site: Path) -> None:
    text = page(site, "reference/metrics")
    shown = codes(text)
    mux = Multiplexer(client_id="test", client_secret="test", base_url="http://127.0.0.1:9")
    metrics = MuxMetrics(mux)
    try:
        families = list(metrics.registry.collect())
    finally:
        metrics.close()
    assert len(families) > 30
    for family in families:
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert name in shown, f"metric {name} is missing from the metrics page"
        assert html.unescape(family.documentation) in text
    # Only a cluster's instances export these; the page still lists them.
    assert "genesys_mux_cluster_handovers_total" in shown


def test_the_api_reference_documents_every_public_name(site: Path) -> None:
    text = page(site, "reference/api")
    for name in genesys_mux.__all__:
        assert f'id="genesys_mux.{name}"' in text, f"genesys_mux.{name} has no API entry"
    assert 'id="genesys_mux.Multiplexer.add_stream"' in text
    # Sphinx roles of the docstrings are rendered, not shown raw.
    assert ":class:" not in text


def test_every_page_in_the_navigation_is_built_and_nothing_is_left_unexpanded(
    site: Path,
) -> None:
    pages = [p for p in site.rglob("index.html") if "search" not in p.parts]
    assert len(pages) >= 18
    for built in pages:
        assert "<!-- generated:" not in built.read_text(encoding="utf-8"), built
    # Offline: no web fonts are fetched by the pages.
    assert "fonts.googleapis.com" not in (site / "index.html").read_text(encoding="utf-8")


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_reference_hook", ROOT / "docs" / "_hooks" / "reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_marker_nobody_knows_fails_the_build() -> None:
    hook = load_hook()
    with pytest.raises(ValueError, match="unknown generated section 'confg'"):
        hook.on_page_markdown("# Page\n\n<!-- generated: confg -->\n")
    # A known marker is replaced, and text around it is kept.
    out = hook.on_page_markdown("before\n<!-- generated: metrics -->\nafter\n")
    assert out.startswith("before\n| metric |")
    assert out.rstrip().endswith("after")


def test_the_library_page_s_typed_body_example_reads_both_shapes_of_real_snapshots() -> None:
    """The struct the library page suggests for reading ``raw`` reads what the platform sends.

    Run as written on the emulator's snapshots in both shapes: it finds
    the ids the generic decode finds, and the same queues as the
    multiplexer's own facts.
    """
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    section = text[text.index("**Reading the body cheaply.**") :]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None
    # As a reader would run it: not under this module's postponed annotations.
    code = compile(example.group(1), "docs/library.md", "exec", dont_inherit=True)
    org = ContactCentre(seed=5, queues=3, agents=8, rate=6.0, epoch=1_700_000_000.0)
    shapes: Counter[str] = Counter()
    for publication in org.advance(120.0):
        topic = publication.topics[0]
        facts = event_facts(topic, publication.body).conversation
        if facts is None:
            continue  # presence, routing status, detail events
        shape = "general" if topic.endswith(".conversations") else "media"
        shapes[shape] += 1
        item = StreamEvent(
            "s", 1, 1, topic, None, publication.conversation_id, None, publication.body, 0.0
        )
        namespace: dict[str, Any] = {"item": item}
        exec(code, namespace)  # noqa: S102 - the documentation's own example
        conversation, generic = namespace["conversation"], item.body
        assert conversation.id == generic["id"] == publication.conversation_id
        assert [p.id for p in conversation.participants] == [
            p["id"] for p in generic["participants"]
        ]
        assert namespace["queues"] == facts.queue_ids, (shape, topic)
    assert shapes["general"] >= 20
    assert shapes["media"] >= 20


_ALTERNATIVES = re.compile(r'^(\s*\w+ = )"([a-z_]+)"(\s+# or )([a-z_]+(?:, [a-z_]+)*)\s*$')


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_value_an_example_comment_offers_is_accepted(path: Path) -> None:
    """``overflow = "drop_oldest"  # or drop_newest, backlog``: each of them must validate."""
    import tomllib

    lines = path.read_text(encoding="utf-8").splitlines()
    offered = 0
    for number, line in enumerate(lines):
        match = _ALTERNATIVES.match(line)
        if match is None:
            continue
        for value in match[4].split(", "):
            offered += 1
            edited = [*lines[:number], f'{match[1]}"{value}"', *lines[number + 1 :]]
            try:
                configfile.parse_config(tomllib.loads("\n".join(edited)), base_dir=path.parent)
            except ConfigFileError as exc:
                pytest.fail(f"{path.name}:{number + 1} offers {value!r}, which is refused: {exc}")
    assert offered or "genesys-mux.toml" not in path.name


def test_the_cli_overview_names_every_option_of_each_command() -> None:
    """The hand-written overview table at the top of the CLI reference, against the click tree."""
    page = (ROOT / "docs/reference/cli.md").read_text(encoding="utf-8")
    # A row's first cell, escaped pipes (\|) and all.
    overview = r"^\| `genesys-mux ((?:dlq |state |cluster )?[a-z]+)(?:[^|\\]|\\.)*"
    rows = {m[1]: m[0] for m in re.finditer(overview, page, re.M)}
    group = typer.main.get_group(app)
    checked = 0
    for name, row in rows.items():
        *parents, leaf = name.split()
        command: Any = group
        for part in [*parents, leaf]:
            command = command.commands[part]  # a row for a command that does not exist fails
        if "[...]" in row:
            continue  # the overview points at the generated table for this one
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option" or param.hidden:
                continue
            if param.name == "help":
                continue
            assert any(opt in row for opt in param.opts), f"{name}: {param.opts} not in {row!r}"
            checked += 1
    assert checked > 20


def test_the_operations_page_lists_every_audit_event() -> None:
    from genesys_mux.core.events import ControlEvent
    from genesys_mux.observability.audit import OWN_EVENTS

    page = (ROOT / "docs/operations/index.md").read_text(encoding="utf-8")
    section = page.split("The audit log (`audit_path`", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([A-Z][A-Z_]+)`", section))
    codes = {kind.kind.upper() for kind in typing.get_args(ControlEvent)} | set(OWN_EVENTS)
    assert codes - listed == set(), "audit events the page does not list"
    assert listed - codes == set(), "codes the page lists that the audit log never writes"


def test_the_sinks_page_says_how_a_sinkless_streams_lines_differ_from_the_record() -> None:
    """docs/sinks/index.md names the keys of both shapes; hold it to the code that writes them."""
    import json

    from genesys_mux.cli.runtime import event_line
    from genesys_mux.core.streams import Gap
    from genesys_mux.sinks.base import encode_record

    event = StreamEvent(
        stream_id="s",
        sequence=1,
        priority=1,
        topic="v2.users.u1.conversations",
        transition=None,
        conversation_id="c1",
        correlation_id="k1",
        raw=b"{}",
        received_at=1.0,
        epoch="e1",
    )
    gap = Gap(
        stream_id="s", start=1.0, end=2.0, topics=frozenset({"t"}), channel_id="ch", reason="r"
    )
    page = (ROOT / "docs/sinks/index.md").read_text(encoding="utf-8")
    about = " ".join(page.split("A stream with no\nsinks", 1)[1].split("```", 1)[0].split())
    event_part, gap_part = about.split("a gap's line has", 1)
    for item, text in ((event, event_part), (gap, gap_part)):
        line = set(json.loads(event_line(item)))
        record = set(json.loads(encode_record(item)))
        has, lacks = text.split(" but no " if item is event else " (no ", 1)
        mentioned_has = set(re.findall(r"`([a-z_]+)`", has))
        mentioned_lacks = set(re.findall(r"`([a-z_]+)`", lacks.split(";")[0].split(")")[0]))
        assert mentioned_has == line, text
        assert mentioned_lacks == record - line, text
