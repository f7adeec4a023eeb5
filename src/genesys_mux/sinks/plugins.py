"""Third-party sinks, found through the ``genesys_mux.sinks`` entry-point group.

Theory of operation
-------------------
A package adds a sink type by naming a :class:`SinkPlugin` under the entry
point group ``genesys_mux.sinks``; the entry point's *name* is the sink
``type`` a configuration uses::

    # the plugin's pyproject.toml
    [project.entry-points."genesys_mux.sinks"]
    kafka = "genesys_mux_kafka:plugin"

    # genesys-mux's configuration
    [[streams.sinks]]
    type = "kafka"
    brokers = ["kafka-1:9092"]      # the plugin's own options
    batch_size = 500                # batching options every sink has

The plugin object has two parts: ``options``, a pydantic model of the
plugin's own keys, and ``build(options, context)``, which returns a
:class:`~genesys_mux.sinks.base.Sink`. The configuration loader validates a
plugin sink's keys against ``options`` (with unknown keys refused, whatever
the model says), so every mistake is reported with its path, like a built-in
sink's; the batching keys (``batch_size``, ``linger_s``, ``max_attempts``)
and ``type`` are taken out first and are the runner's.

Discovery is lazy: listing the installed types reads only package metadata;
a plugin's module is imported the first time a configuration names its
type, never otherwise. Built-in types win: an entry point that reuses one of
their names is ignored (with a warning when the type is listed). Two
installed packages claiming the same name are refused with both named,
since picking one silently would depend on the order of ``sys.path``.

``docs/sinks/plugins.md`` is the guide for plugin authors, with a complete
example.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from genesys_mux.errors import ConfigError
from genesys_mux.sinks.base import Sink

__all__ = [
    "ENTRY_POINT_GROUP",
    "LoadedPlugin",
    "SinkContext",
    "SinkPlugin",
    "build_plugin_sink",
    "installed_plugins",
    "load_plugin",
    "plugin_types",
]

log = logging.getLogger("genesys_mux.sinks.plugins")

#: The entry-point group third-party sinks register under.
ENTRY_POINT_GROUP = "genesys_mux.sinks"


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What genesys-mux tells a plugin when it builds a sink for one stream.

    ``name`` is the sink's name within its stream (the ``type``): give it to
    the sink as its ``name`` attribute, as it labels logs, metrics and
    dead letters. ``environ`` is where secrets are read from (by the
    variable names the options hold: never put a secret in the
    configuration file itself). ``fence`` is the stream's fencing token when
    instances share the streams as a cluster (0 otherwise) and
    ``dedupe_ttl_s`` how long a cluster expects repeats to be dropped; a
    sink that cannot enforce either may ignore them.
    """

    name: str
    stream_id: str
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    fence: int = 0
    dedupe_ttl_s: float = 0.0


@runtime_checkable
class SinkPlugin(Protocol):
    """What a ``genesys_mux.sinks`` entry point names: an options model and a builder.

    A module, a class or any object with these two attributes will do.
    ``build`` is called once per stream that configures the sink, with the
    validated options (an instance of ``options``); it must not do I/O:
    connecting belongs in the sink's ``start``. It raises
    :class:`~genesys_mux.errors.ConfigError` for options that are valid one
    by one but not together, or for a secret variable that is not set.
    """

    options: type[BaseModel]

    def build(self, options: Any, context: SinkContext) -> Sink:
        """The sink for one stream."""
        ...


def installed_plugins() -> dict[str, list[EntryPoint]]:
    """The entry points of the group, by name (several when packages clash). Imports nothing."""
    found: dict[str, list[EntryPoint]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, []).append(point)
    return found


def _origin(point: EntryPoint) -> str:
    dist = point.dist
    package = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
    return f"{point.value} from {package}"


def plugin_types(builtin: frozenset[str]) -> list[str]:
    """The installed plugin types that a configuration can use (built-in names left out)."""
    names = []
    for name, points in sorted(installed_plugins().items()):
        if name in builtin:
            log.warning(
                "sink plugin %s (%s) is ignored: %r is a built-in sink type",
                name,
                ", ".join(_origin(p) for p in points),
                name,
            )
            continue
        names.append(name)
    return names


# Options models with unknown keys refused, by plugin model: made once each.
_STRICT_OPTIONS: dict[type[BaseModel], type[BaseModel]] = {}


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with unknown keys refused (a subclass, so the plugin's isinstance holds)."""
    if model.model_config.get("extra") == "forbid":
        return model
    strict = _STRICT_OPTIONS.get(model)
    if strict is None:
        # A typo in an option must be an error, never a silently ignored key.
        strict = type(model.__name__, (model,), {"model_config": ConfigDict(extra="forbid")})
        _STRICT_OPTIONS[model] = strict
    return strict


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A plugin that was imported and checked: its type name, origin and object."""

    name: str
    origin: str
    plugin: SinkPlugin
    #: The options model used for validation (unknown keys refused).
    options: type[BaseModel]


def load_plugin(type_name: str) -> LoadedPlugin | None:
    """Import the plugin providing ``type_name``; None when no installed package provides it.

    Raises :class:`ConfigError` when two packages provide it, when its module
    cannot be imported, or when the object is not a plugin.
    """
    points = installed_plugins().get(type_name)
    if not points:
        return None
    if len(points) > 1:
        raise ConfigError(
            f"sink type {type_name!r} is provided by {len(points)} installed packages ("
            + "; ".join(_origin(p) for p in points)
            + "); uninstall all but one"
        )
    (point,) = points
    origin = _origin(point)
    try:
        plugin = point.load()
    except Exception as exc:
        raise ConfigError(
            f"sink plugin {type_name!r} ({origin}) could not be loaded: "
            f"{type(exc).__name__}: {exc}; check that its package is installed completely"
        ) from exc
    options = getattr(plugin, "options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)) or not callable(
        getattr(plugin, "build", None)
    ):
        raise ConfigError(
            f"sink plugin {type_name!r} ({origin}) is not a genesys-mux sink plugin: it needs "
            "an `options` pydantic model class and a `build(options, context)` function; "
            "report this to the plugin's authors"
        )
    return LoadedPlugin(type_name, origin, plugin, _strict(options))


def build_plugin_sink(loaded: LoadedPlugin, options: BaseModel, context: SinkContext) -> Sink:
    """Call the plugin's ``build`` and check that what it returns is a sink."""
    try:
        sink = loaded.plugin.build(options, context)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"sink plugin {loaded.name!r} ({loaded.origin}) failed to build the sink of stream "
            f"{context.stream_id}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(sink, Sink):
        raise ConfigError(
            f"sink plugin {loaded.name!r} ({loaded.origin}) returned {type(sink).__name__}, "
            "which is not a sink (it needs name, start, send and close)"
        )
    return sink
