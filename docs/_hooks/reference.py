"""MkDocs hook: reference tables generated from the code at build time.

A page asks for a table with a marker on a line of its own::

    <!-- generated: config -->    the TOML file, from the pydantic models
    <!-- generated: cli -->       every command, argument and option of the typer app
    <!-- generated: metrics -->   every metric family of a real Prometheus registry

The tables are built from the objects the program itself uses (the models
that validate a configuration file, the click tree typer builds, the
registry the admin server scrapes), so the reference cannot drift from the
code: a field, option or metric added there shows up here on the next
build. A marker nobody knows fails the build, so a typo cannot leave a page
silently empty.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace every generation marker of a page with its table."""

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        generator = GENERATORS.get(name)
        if generator is None:
            known = ", ".join(sorted(GENERATORS))
            raise ValueError(f"unknown generated section {name!r}; known ones: {known}")
        return generator()

    return _MARKER.sub(expand, markdown)


# The docstrings cross-reference in Sphinx's roles (":class:`~pkg.Name`"),
# which the Python handler renders as the role's text followed by code.
_ROLE = re.compile(r":(?:class|meth|attr|data|func|mod|exc|obj):<code>(~?)([^<]+)</code>")


def _short(match: re.Match[str]) -> str:
    name = match.group(2)
    # "~pkg.mod.Name" reads as "Name", as Sphinx shows it.
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


# In a table, a pipe inside inline code is escaped with a backslash (as
# GitHub reads it); Python-Markdown keeps the backslash in the code.
_ESCAPED_PIPE_IN_CODE = re.compile(r"<code>([^<]*\\\|[^<]*)</code>")


def _unescape_pipes(match: re.Match[str]) -> str:
    return "<code>" + match.group(1).replace("\\|", "|") + "</code>"


def on_page_content(html: str, **_: Any) -> str:
    """Render Sphinx roles of docstrings as plain code, and table pipes in code as pipes."""
    html = _ESCAPED_PIPE_IN_CODE.sub(_unescape_pipes, html)
    return _ROLE.sub(_short, html)


# --------------------------------------------------------------------------
# Shared Markdown helpers
# --------------------------------------------------------------------------


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _code(text: object) -> str:
    # Backticks inside inline code would end it early; none of our values has one.
    return f"`{_cell(text)}`"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


# --------------------------------------------------------------------------
# Configuration file: the pydantic models
# --------------------------------------------------------------------------


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (it, False)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) < len(get_args(annotation)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
            return inner, True
    return annotation, False


def _unwrap(annotation: Any) -> Any:
    """The type under ``Annotated[...]``."""
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (a model, a list of them, a union of them)."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += _models_in(arg)
    return found


def _type_name(annotation: Any) -> str:
    """A reader's name for a field's type: TOML words, not Python's."""
    annotation = _unwrap(annotation)
    annotation, optional = _strip_optional(annotation)
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        name = " | ".join(
            f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in get_args(annotation)
        )
    elif origin in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        models = _models_in(annotation)
        if models:
            name = "array of tables"
        else:
            name = f"array of {_type_name(args[0])}" if args else "array"
    elif origin in (Union, types.UnionType):
        models = _models_in(annotation)
        name = "table" if models else " or ".join(_type_name(a) for a in get_args(annotation))
    elif origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        name = "table"
    elif annotation is bool:
        name = "boolean"
    elif annotation is int:
        name = "integer"
    elif annotation is float:
        name = "number"
    elif annotation is str:
        name = "string"
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        name = " | ".join(f"`{m.value}`" for m in annotation)
    else:
        name = getattr(annotation, "__name__", str(annotation))
    return f"{name}, optional" if optional else name


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, BaseModel):
        return "(see the table)"
    return str(value)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if value is None:
        return "not set"
    if isinstance(value, list | tuple) and not value:
        return "none"
    return _code(_toml_value(value))


_BOUNDS = (
    (annotated_types.Ge, "ge", "≥ {}"),
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Le, "le", "≤ {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.MinLen, "min_length", "at least {} characters"),
    (annotated_types.MaxLen, "max_length", "at most {} characters"),
)


def _constraints(info: FieldInfo) -> list[str]:
    found: list[str] = []
    metadata = list(info.metadata)
    annotation = info.annotation
    # Constraints written on an Annotated alias (e.g. a path type) live there.
    while get_origin(annotation) is typing.Annotated:
        metadata += list(get_args(annotation)[1:])
        annotation = get_args(annotation)[0]
    for item in metadata:
        for kind, attr, text in _BOUNDS:
            if isinstance(item, kind):
                value = getattr(item, attr)
                found.append(text.format(_toml_value(value)))
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            found.append(f"matches `{pattern}`")
        extra = getattr(item, "json_schema_extra", None)
        if isinstance(extra, dict) and isinstance(extra.get("pattern"), str):
            found.append(f"matches `{extra['pattern']}`")
        if getattr(item, "strict", None) is True and annotation in (int, float):
            found.append("exact type")
    if isinstance(info.json_schema_extra, dict):
        pattern = info.json_schema_extra.get("pattern")
        if isinstance(pattern, str):
            found.append(f"matches `{pattern}`")
    return list(dict.fromkeys(found))


def _field_rows(model: type[BaseModel]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        description = info.description or ""
        limits = _constraints(info)
        if limits:
            description = (
                f"{description} ({'; '.join(limits)})" if description else "; ".join(limits)
            )
        rows.append(
            (
                _code(key),
                _cell(_type_name(info.annotation)),
                _cell(_default(info)),
                _cell(description),
            )
        )
    return rows


def _sections(
    title: str,
    model: type[BaseModel],
    substitutes: Mapping[tuple[type[BaseModel], str], Sequence[tuple[str, type[BaseModel]]]],
) -> Iterator[tuple[str, type[BaseModel]]]:
    """(TOML table name, model) for a model and every model nested in it, depth first."""
    yield title, model
    for name, info in model.model_fields.items():
        key = info.alias or name
        replacement = substitutes.get((model, name))
        if replacement is not None:
            for sub_title, sub_model in replacement:
                yield from _sections(sub_title, sub_model, substitutes)
            continue
        annotation = _unwrap(_strip_optional(_unwrap(info.annotation))[0])
        array = get_origin(annotation) in (list, tuple)
        models = _models_in(annotation)
        for nested in models:
            path = f"{title.strip('[]')}.{key}" if title else key
            label = f"[[{path}]]" if array else f"[{path}]"
            if len(models) > 1:
                # A tagged union (the sinks): one table per member, named by its tag.
                tag = nested.model_fields.get("type")
                literal = _unwrap(tag.annotation) if tag is not None else None
                if get_origin(literal) is Literal:
                    label = f'{label} type = "{get_args(literal)[0]}"'
                else:
                    label = f"{label} ({nested.__name__})"
            yield from _sections(label, nested, substitutes)


def config_reference() -> str:
    """Every table and key of the configuration file, from the models that validate it."""
    from genesys_mux import configfile
    from genesys_mux.config import StreamConfig

    document: type[BaseModel] = configfile._Document  # the file's root model
    sinks: type[BaseModel] = configfile._SinkList  # what [[streams.sinks]] is checked against
    # A file's streams are validated in a second pass (to report every stream's
    # mistakes at once), so the root model holds them as plain tables: the
    # real models stand in for them here.
    stream: type[BaseModel] = StreamConfig
    substitutes = {
        (document, "streams"): [("[[streams]]", stream)],
    }
    out: list[str] = []
    sections = list(_sections("", document, substitutes))
    sections += list(_sections("[[streams]]", sinks, {}))[1:]
    seen: set[str] = set()
    for title, model in sections:
        if not title or title in seen:
            continue
        seen.add(title)
        rows = _field_rows(model)
        if title == "[[streams]]":
            # buffer_size's default is the [settings] buffer_threshold, not the model's.
            rows = [
                (key, kind, "`buffer_threshold`", text)
                if key == "`buffer_size`"
                else (key, kind, default, text)
                for key, kind, default, text in rows
            ]
        if title.endswith(".filter]"):
            title = "filter (inline table of a stream)"
        anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        out.append(f"## `{title}` {{#{anchor}}}\n")
        doc = _first_paragraph(model.__doc__)
        if doc:
            out.append(doc + "\n")
        out.append(_table(("key", "type", "default", "meaning"), rows) + "\n")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Command line: the click tree typer builds
# --------------------------------------------------------------------------


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            if not getattr(sub, "hidden", False):
                yield from _commands(sub, [*path, name])


def _param_type(param: Any) -> str:
    """The value a parameter takes, in the words of the configuration tables."""
    if getattr(param, "is_flag", False):
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is None:
        # Plain click: the parameter's own type object names itself.
        return str(getattr(getattr(param, "type", None), "name", "")).lower()
    annotation, _ = _strip_optional(annotation)
    if annotation is Path:
        return "path"
    if get_origin(annotation) in (list, tuple):
        return _type_name(get_args(annotation)[0])
    return _type_name(annotation)


def _param_default(param: Any) -> str:
    if getattr(param, "required", False):
        return "**required**"
    if getattr(param, "is_flag", False):
        return "off"
    default = getattr(param, "default", None)
    if default is None or callable(default):
        return "none"
    if isinstance(default, list | tuple):
        return "none" if not default else ", ".join(_code(d) for d in default)
    return _code(default)


def _argument_name(param: Any) -> str:
    name = str(getattr(param, "metavar", None) or param.name or "").upper()
    return name + ("..." if getattr(param, "nargs", 1) == -1 else "")


def _param_row(param: Any) -> tuple[str, ...]:
    if getattr(param, "param_type_name", "option") == "argument":
        name = _code(_argument_name(param))
    else:
        names = [*param.opts, *getattr(param, "secondary_opts", [])]
        name = ", ".join(_code(n) for n in names)
    text = _cell(getattr(param, "help", None) or "")
    limits = [
        f"{word} {_toml_value(value)}"
        for word, value in (("≥", getattr(param, "min", None)), ("≤", getattr(param, "max", None)))
        if value is not None
    ]
    if limits:
        text += f" ({'; '.join(limits)})"
    envvar = getattr(param, "envvar", None)
    if envvar:
        text += f" (also from `{envvar}`)"
    return name, _cell(_param_type(param)), _param_default(param), text


def cli_reference() -> str:
    """Every command, argument and option of ``genesys-mux``, with help and defaults."""
    import typer.main

    from genesys_mux.cli.app import app

    root = typer.main.get_command(app)
    out: list[str] = []
    for path, command in _commands(root, ["genesys-mux"]):
        is_group = bool(getattr(command, "commands", None))
        title = " ".join(path)
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        heading = "##" if len(path) <= 2 else "###"
        out.append(f"{heading} `{title}`\n")
        help_text = _first_paragraph(command.help)
        if help_text:
            out.append(help_text + "\n")
        usage_args = " ".join(
            _argument_name(p) for p in params if getattr(p, "param_type_name", "") == "argument"
        )
        suffix = " COMMAND [ARGS]..." if is_group else ""
        out.append(
            f"```\n{title} [OPTIONS]{(' ' + usage_args) if usage_args else ''}{suffix}\n```\n"
        )
        if params:
            rows = [_param_row(p) for p in params]
            out.append(_table(("argument or option", "type", "default", "meaning"), rows) + "\n")
        if is_group:
            rows = [
                (_code(f"{title} {name}"), _cell(_first_paragraph(sub.help)))
                for name, sub in command.commands.items()
                if not getattr(sub, "hidden", False)
            ]
            out.append(_table(("command", "what it does"), rows) + "\n")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Metrics: a real registry, as the admin server builds it
# --------------------------------------------------------------------------


def metrics_reference() -> str:
    """Every metric family a running instance exports, read from a real registry."""
    import redis.asyncio as aioredis

    from genesys_mux import Multiplexer
    from genesys_mux.cluster.leases import LeaseTable
    from genesys_mux.cluster.member import ClusterMember
    from genesys_mux.core.events import StreamAdded
    from genesys_mux.observability.metrics import MuxMetrics

    # Nothing is started: no socket is opened and no Redis is reached; the
    # registry is complete as soon as the parts are wired together.
    mux = Multiplexer(
        client_id="docs",
        client_secret="docs",  # noqa: S106 - never sent: nothing is started
        base_url="http://127.0.0.1:9",
    )
    metrics = MuxMetrics(mux)
    redis = aioredis.Redis()
    member = ClusterMember(
        mux, LeaseTable(redis, cluster="docs", instance="docs"), [], client="default"
    )
    metrics.watch_cluster(member)
    # A stream, as when one is added, so per-stream families show their labels.
    for hook in mux.on_control:
        hook(StreamAdded(stream_id="example", topics=1))
    rows = []
    for family in metrics.registry.collect():
        labels: list[str] = []
        for sample in family.samples:
            labels += [k for k in sample.labels if k not in labels and k not in ("le", "quantile")]
        if not labels:
            labels = list(getattr(family, "_labelnames", ()))
        name = f"{family.name}_total" if family.type == "counter" else family.name
        rows.append(
            (
                _code(name),
                family.type,
                ", ".join(_code(label) for label in labels) or "",
                _cell(family.documentation),
            )
        )
    metrics.close()
    return _table(("metric", "type", "labels", "meaning"), rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "config": config_reference,
    "cli": cli_reference,
    "metrics": metrics_reference,
}
