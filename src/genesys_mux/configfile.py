"""The TOML configuration file: where to connect, settings, streams and their sinks.

Theory of operation
-------------------
A file has three parts (the documentation's configuration page, docs/configuration.md,
has an annotated example)::

    [genesys]            region or base_url; optionally a secrets_file
    [settings]           the Multiplexer's settings, the DLQ, audit log and admin server
    [[streams]]          StreamConfig fields, plus [[streams.sinks]]

Everything is validated in one pass and *every* mistake is reported with
its path (``streams[1].sinks[0].url``) in a :class:`ConfigFileError`.

Secrets never live in this file and never on a command line. The OAuth
client comes from ``GENESYSCLOUD_OAUTHCLIENT_ID`` /
``GENESYSCLOUD_OAUTHCLIENT_SECRET``, or from a separate secrets file (TOML
with ``client_id`` and ``client_secret``) that should be readable by its
owner only; a webhook's HMAC secret and a Redis URL with a password are
named by the environment variable that holds them.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from genesys_mux._extras import missing_extra
from genesys_mux.config import StreamConfig, parse_streams
from genesys_mux.core.limits import PLATFORM
from genesys_mux.errors import ConfigError, ConfigFileError, StreamConfigError
from genesys_mux.regions import resolve_region
from genesys_mux.sinks.base import Batching
from genesys_mux.sinks.dlq import DEFAULT_DLQ_MAX_BYTES
from genesys_mux.sinks.nats import DEFAULT_SUBJECT, check_subject_template, stream_subjects_for
from genesys_mux.sinks.plugins import ENTRY_POINT_GROUP, LoadedPlugin, load_plugin, plugin_types
from genesys_mux.sinks.webhook import SigningScheme, parse_secrets, redact_url

__all__ = [
    "ConfigFile",
    "Credentials",
    "GenesysSection",
    "JsonlSinkSpec",
    "NatsSinkSpec",
    "OAuthClientSpec",
    "PluginSinkSpec",
    "RedisSinkSpec",
    "Settings",
    "SinkSpec",
    "StateSection",
    "StdoutSinkSpec",
    "WebhookSinkSpec",
    "check_environment",
    "json_schema",
    "load_config",
    "load_credentials",
    "missing_extras",
    "parse_config",
]

# strict: TOML already has types, so `true` is never a number and "5" never
# an int; no infinities or NaN: every number here is a real bound.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _usable_path(value: str | None) -> str | None:
    """A file path someone can actually open: not empty, no NUL."""
    if value is not None and (not value.strip() or "\x00" in value):
        raise ValueError("must be a file path (not empty, no NUL character)")
    return value


#: A path field, checked by :func:`_usable_path`.
PathField = Annotated[str, AfterValidator(_usable_path)]


_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


class OAuthClientSpec(BaseModel):
    """One of several OAuth clients a cluster's instances use (``[[genesys.clients]]``)."""

    model_config = _STRICT

    name: str = Field(pattern=_NAME_PATTERN, description="How [cluster] client names it.")
    id_env: str = Field(
        default="GENESYSCLOUD_OAUTHCLIENT_ID", description="Variable holding the client id."
    )
    secret_env: str = Field(
        default="GENESYSCLOUD_OAUTHCLIENT_SECRET", description="Variable holding its secret."
    )
    secrets_file: PathField | None = Field(
        default=None, description="TOML file with client_id and client_secret, instead."
    )
    channels: int = Field(
        default=PLATFORM.channels_per_client,
        ge=2,
        le=PLATFORM.channels_per_client,
        description="Its channel budget (the platform's is 20; one is kept for rotations).",
    )


class GenesysSection(BaseModel):
    """Where Genesys Cloud is: a region, or a base URL (the emulator)."""

    model_config = _STRICT

    region: str | None = Field(
        default=None, description="Region name or domain; defaults to GENESYSCLOUD_REGION."
    )
    base_url: str | None = Field(
        default=None, description="One URL for login, API and streaming, e.g. the emulator."
    )
    secrets_file: PathField | None = Field(
        default=None,
        description="TOML file with client_id and client_secret, readable by its owner only.",
    )
    clients: list[OAuthClientSpec] = Field(
        default_factory=list,
        description="Several OAuth clients, for a cluster: each instance uses the one its "
        "[cluster] client (or GENESYS_MUX_CLIENT) names.",
    )

    @model_validator(mode="after")
    def _one_place(self) -> GenesysSection:
        if self.region is not None and self.base_url is not None:
            raise ValueError("give region or base_url, not both")
        names = [c.name for c in self.clients]
        if len(set(names)) != len(names):
            raise ValueError(f"client names must be unique: {names}")
        return self

    def client(self, name: str) -> OAuthClientSpec | None:
        """The OAuth client called ``name``; None when no clients are listed.

        Raises ConfigError for a name that is not listed.
        """
        if not self.clients:
            return None
        for spec in self.clients:
            if spec.name == name:
                return spec
        raise ConfigError(
            f"OAuth client {name!r} is not in [[genesys.clients]] "
            f"({', '.join(c.name for c in self.clients)}); set [cluster] client or "
            "GENESYS_MUX_CLIENT to one of them"
        )


class Settings(BaseModel):
    """Runtime settings (every one optional)."""

    model_config = _STRICT

    max_streams: int = Field(default=10, ge=1, le=1000, description="Streams allowed at once.")
    buffer_threshold: int = Field(
        default=500,
        ge=1,
        le=1_000_000,
        description="Buffer size of streams that do not set their own buffer_size.",
    )
    heartbeat_timeout: float = Field(
        default=75.0, ge=1, le=3600, description="Seconds of silence before the watchdog pings."
    )
    pong_timeout: float = Field(
        default=10.0,
        ge=0.1,
        le=600,
        description="Seconds to wait for the pong before the socket is declared dead.",
    )
    subscription_check_s: float = Field(
        default=300.0,
        ge=10,
        le=86_400,
        description="How often each channel's subscriptions are read back and compared.",
    )
    topics_per_channel: int = Field(
        default=PLATFORM.topics_per_channel,
        ge=1,
        le=PLATFORM.topics_per_channel,
        description="Topics per channel (the platform's limit; combined topics count as parts).",
    )
    max_channels: int = Field(
        default=PLATFORM.channels_per_client,
        ge=2,
        le=PLATFORM.channels_per_client,
        description="Channels per OAuth client (the platform's limit); one is kept for rotation.",
    )
    queue_refresh_s: float = Field(
        default=300.0,
        ge=10,
        le=86_400,
        description="How often streams of every queue re-read the org's queue list.",
    )
    requests_per_minute: int = Field(
        default=PLATFORM.requests_per_minute,
        ge=1,
        le=100_000,
        description="REST budget per token.",
    )
    backfill: bool = Field(
        default=False, description="After a gap, fetch the current snapshots of its conversations."
    )
    dlq_path: PathField = Field(
        default="genesys-mux-dlq.jsonl", description="JSON-lines dead-letter file."
    )
    dlq_max_bytes: int | None = Field(
        default=DEFAULT_DLQ_MAX_BYTES,
        ge=0,
        description="The dead-letter file's size cap; further letters are counted, not "
        "written (none: no cap).",
    )
    audit_path: PathField = Field(default="-", description="Audit log file; '-' is stderr.")
    metric_interval_s: float = Field(
        default=60.0, ge=1, le=86_400, description="STREAM_METRIC period."
    )
    admin_host: str = Field(default="127.0.0.1", description="Admin server interface.")
    sink_unready_after_s: float = Field(
        default=60.0,
        ge=1,
        le=86_400,
        description="/readyz turns 503 when a sink has been failing without a break this long.",
    )
    admin_port: int | None = Field(
        default=None, ge=0, le=65535, description="Admin server port (/metrics, /healthz, ...)."
    )


class _SinkBase(BaseModel):
    model_config = _STRICT

    batch_size: int = Field(default=100, ge=1, le=10_000, description="Events per batch, at most.")
    linger_s: float = Field(
        default=0.05, ge=0, le=60, description="Seconds a batch waits for more events."
    )
    #: None: retry retryable failures forever (the stream's buffer absorbs it).
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="Attempts at a batch before its events are dead-lettered; not set: retry "
        "retryable failures for ever, holding back only this stream.",
    )

    @property
    def batching(self) -> Batching:
        """How this sink's runner batches and retries."""
        return Batching(self.batch_size, self.linger_s, self.max_attempts)


class StdoutSinkSpec(_SinkBase):
    """JSON lines on standard output."""

    type: Literal["stdout"] = Field(description="Selects this sink.")


class JsonlSinkSpec(_SinkBase):
    """A JSON-lines file, rotated by size."""

    type: Literal["jsonl"] = Field(description="Selects this sink.")
    path: PathField = Field(description="The file, relative to the configuration file.")
    max_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1024, description="Size at which the file is rotated."
    )
    backups: int = Field(default=5, ge=0, le=1000, description="Rotated files kept.")
    fsync: Literal["never", "batch", "always"] = Field(
        default="batch", description="When the file is synced to disk."
    )


class RedisSinkSpec(_SinkBase):
    """A Redis stream per genesys-mux stream."""

    type: Literal["redis"] = Field(description="Selects this sink.")
    url: str | None = Field(default=None, description="redis://host:port/db (no password here).")
    url_env: str | None = Field(
        default=None, description="Variable holding the URL, if it has a password."
    )
    prefix: str = Field(
        default="genesys-mux:", description="Key prefix: the key is the prefix and the stream id."
    )
    maxlen: int = Field(
        default=100_000, ge=1, description="Approximate length cap (XADD MAXLEN ~)."
    )

    @model_validator(mode="after")
    def _one_url(self) -> RedisSinkSpec:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url or url_env")
        if self.url is not None and "@" in self.url:
            raise ValueError(
                "the url holds credentials; put it in an environment variable named by url_env"
            )
        return self


class WebhookSinkSpec(_SinkBase):
    """Batched, HMAC-signed JSON POSTs."""

    type: Literal["webhook"] = Field(description="Selects this sink.")
    url: str = Field(pattern=r"^https?://", description="Where batches are POSTed.")
    secret_env: str = Field(
        description=(
            'Environment variable holding the HMAC secret: for signing = "standard" one or '
            "more whsec_<base64> secrets separated by spaces (each signs, for rotation); "
            'for "genesys-mux" any text.'
        )
    )
    signing: SigningScheme = Field(
        default="standard",
        description=(
            "standard: Standard Webhooks headers (webhook-id, webhook-timestamp, "
            "webhook-signature); genesys-mux: X-Genesys-Mux-Timestamp and "
            "X-Genesys-Mux-Signature, as in earlier releases."
        ),
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Seconds allowed per request.")
    max_attempts: int | None = Field(
        default=5, ge=1, description="Attempts at a batch before its events are dead-lettered."
    )

    def secret_problem(self, secret: str) -> str | None:
        """What is wrong with ``secret`` for this sink's scheme (None: nothing); never quotes it."""
        if not secret:
            return f"{self.secret_env} is empty"
        if self.signing != "standard":
            return None
        try:
            parse_secrets(secret, label=self.secret_env)
        except ConfigError as exc:
            return str(exc)
        return None


class NatsSinkSpec(_SinkBase):
    """NATS JetStream: one message per item, de-duplicated by ``Nats-Msg-Id``."""

    type: Literal["nats"] = Field(description="Selects this sink.")
    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        min_length=1,
        description="nats:// or tls:// URLs, without credentials.",
    )
    subject: str = Field(
        default=DEFAULT_SUBJECT,
        min_length=1,
        description="Subject template; {stream} is the genesys-mux stream id.",
    )
    stream: str | None = Field(
        default=None,
        pattern=r"^[^\s.*>/\\]{1,255}$",
        description="JetStream stream the messages must land in; checked at start.",
    )
    create_stream: bool = Field(
        default=False, description="Create the stream at start when it does not exist."
    )
    stream_subjects: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Subjects of a created stream; by default the template's ({stream} as >).",
    )
    duplicate_window_s: float = Field(
        default=120.0, gt=0, le=86_400, description="De-duplication window of a created stream."
    )
    storage: Literal["file", "memory"] = Field(
        default="file", description="Storage of a created stream."
    )
    ack_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Seconds a batch's acknowledgements may take."
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Seconds each connection attempt may take."
    )
    user: str | None = Field(
        default=None, min_length=1, description="User name (with password_env)."
    )
    password_env: str | None = Field(
        default=None, min_length=1, description="Variable holding the password."
    )
    token_env: str | None = Field(
        default=None, min_length=1, description="Variable holding an authentication token."
    )
    creds_file: PathField | None = Field(
        default=None, description="A .creds file (JWT and nkey seed); needs the nkeys package."
    )
    nkey_seed_file: PathField | None = Field(
        default=None, description="An nkey seed file; needs the nkeys package."
    )
    tls_ca_file: PathField | None = Field(
        default=None, description="CA bundle to verify tls:// servers with (besides the system's)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> NatsSinkSpec:
        for server in self.servers:
            if not server.startswith(("nats://", "tls://")):
                raise ValueError(f"server {server!r} must be a nats:// or tls:// URL")
            if "@" in server:
                raise ValueError(
                    "a server URL holds credentials; use user with password_env, token_env, "
                    "creds_file or nkey_seed_file"
                )
        problem = check_subject_template(self.subject)
        if problem is not None:
            raise ValueError(f"subject: {problem}")
        kinds = [
            key
            for key in ("password_env", "token_env", "creds_file", "nkey_seed_file")
            if getattr(self, key) is not None
        ]
        if len(kinds) > 1:
            raise ValueError(f"give one kind of credentials, not {' and '.join(kinds)}")
        if (self.user is None) != (self.password_env is None):
            raise ValueError("user and password_env go together")
        if self.create_stream and self.stream is None:
            raise ValueError("create_stream needs the stream's name (stream)")
        if (
            self.create_stream
            and self.stream_subjects is None
            and stream_subjects_for(self.subject) is None
        ):
            raise ValueError(
                "no wildcard covers the subject template; give stream_subjects for the stream "
                "to create"
            )
        return self


SinkSpecModel = StdoutSinkSpec | JsonlSinkSpec | RedisSinkSpec | WebhookSinkSpec | NatsSinkSpec
#: The sink types genesys-mux has itself: they win over plugins of the same name.
BUILTIN_SINK_TYPES: frozenset[str] = frozenset(
    get_args(model.model_fields["type"].annotation)[0]
    for model in (StdoutSinkSpec, JsonlSinkSpec, RedisSinkSpec, WebhookSinkSpec, NatsSinkSpec)
)
BuiltinSinkSpec = Annotated[SinkSpecModel, Field(discriminator="type")]
_BUILTIN_SINK: TypeAdapter[SinkSpecModel] = TypeAdapter(BuiltinSinkSpec)
#: The keys every sink has, plugins' too: the runner's, not the sink's.
_COMMON_SINK_KEYS = frozenset({"type", "batch_size", "linger_s", "max_attempts"})


class _PluginBatching(_SinkBase):
    """The keys of a plugin sink that genesys-mux itself reads."""

    type: str


@dataclass(frozen=True, slots=True)
class PluginSinkSpec:
    """A sink from an installed plugin: its type, validated options and batching."""

    type: str
    #: The plugin's options model, validated (unknown keys refused).
    options: BaseModel
    plugin: LoadedPlugin
    batching: Batching = field(default_factory=Batching)


#: A configured sink: a built-in spec or a plugin's.
SinkSpec = SinkSpecModel | PluginSinkSpec


class _RedisLocation(BaseModel):
    """A Redis server given by ``url`` or, when it holds a password, by ``url_env``."""

    model_config = _STRICT

    url: str | None = Field(default=None, description="redis://host:port/db (no password here).")
    url_env: str | None = Field(
        default=None, description="Variable holding the Redis URL, if it has a password."
    )

    @model_validator(mode="after")
    def _one_url(self) -> _RedisLocation:
        if self.url is not None and self.url_env is not None:
            raise ValueError("give url or url_env, not both")
        if self.url is not None:
            if not self.url.startswith(("redis://", "rediss://")):
                raise ValueError("url must be a redis:// or rediss:// URL")
            if "@" in self.url:
                raise ValueError(
                    "the url holds credentials; put it in an environment variable named by url_env"
                )
        return self

    def redis_url(self, section: str, env: Mapping[str, str] | None = None) -> str | None:
        """The URL from ``url`` or ``url_env`` (None if neither is given)."""
        if self.url is not None:
            return self.url
        if self.url_env is not None:
            value = (os.environ if env is None else env).get(self.url_env)
            if not value:
                raise ConfigError(
                    f"[{section}] url_env names {self.url_env}, which is not set; set it to "
                    "a redis:// URL"
                )
            return value
        return None


class StateSection(_RedisLocation):
    """Where streams keep their checkpoints across restarts (``[state]``)."""

    path: PathField = Field(
        default="genesys-mux-state.db", description="SQLite file (when no url is given)."
    )
    prefix: str = Field(
        default="genesys-mux:", min_length=1, max_length=200, description="Redis key prefix."
    )
    checkpoint_interval_s: float = Field(
        default=1.0, ge=0.05, le=3600, description="Seconds between checkpoints."
    )

    def target(self, env: Mapping[str, str] | None = None) -> str:
        """The store to open: the Redis URL (from ``url`` or ``url_env``), else the file path."""
        return self.redis_url("state", env) or self.path


class ClusterSection(_RedisLocation):
    """Several instances sharing the streams on one Redis (``[cluster]``)."""

    name: str = Field(
        default="genesys-mux",
        pattern=_NAME_PATTERN,
        description="The cluster: instances with the same name on the same Redis share the work.",
    )
    instance_id: str | None = Field(
        default=None,
        pattern=_NAME_PATTERN,
        description="This instance's id; by default host name and process id.",
    )
    lease_ttl_s: float = Field(
        default=10.0,
        ge=1,
        le=300,
        description="Seconds after which a stream whose holder stopped renewing moves.",
    )
    heartbeat_s: float | None = Field(
        default=None, gt=0, description="Lease renewal period; by default a third of lease_ttl_s."
    )
    client: str = Field(
        default="default",
        min_length=1,
        max_length=100,
        description="Name of the OAuth client this instance uses (budgets count per client).",
    )

    @model_validator(mode="after")
    def _renewed_in_time(self) -> ClusterSection:
        if self.url is None and self.url_env is None:
            raise ValueError("give the cluster's Redis: url, or url_env")
        if self.heartbeat_s is not None and self.heartbeat_s >= self.lease_ttl_s:
            raise ValueError("heartbeat_s must be shorter than lease_ttl_s, or leases expire")
        return self

    def client_name(self, env: Mapping[str, str] | None = None) -> str:
        """This instance's OAuth client: ``GENESYS_MUX_CLIENT`` if set, else ``client``.

        The variable lets instances that share one file use different clients.
        """
        return (os.environ if env is None else env).get("GENESYS_MUX_CLIENT") or self.client

    def member_id(self, env: Mapping[str, str] | None = None) -> str:
        """``GENESYS_MUX_INSTANCE_ID`` if set, else ``instance_id``, else host name and process id.

        The variable lets instances that share one file tell themselves apart
        where host name and process id do not (containers sharing a network
        namespace share a host name, and each runs as process 1).
        """
        named = (os.environ if env is None else env).get("GENESYS_MUX_INSTANCE_ID")
        if named:
            if not re.fullmatch(_NAME_PATTERN, named):
                raise ConfigError(
                    f"GENESYS_MUX_INSTANCE_ID={named[:140]!r} is not a usable instance id: "
                    "give 1-128 letters, digits or _ . : @ -, starting with a letter or digit"
                )
            return named
        if self.instance_id is not None:
            return self.instance_id
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:100] or "host"
        return f"{host}-{os.getpid()}"


class _Document(BaseModel):
    model_config = _STRICT

    genesys: GenesysSection = GenesysSection()
    settings: Settings = Settings()
    state: StateSection = StateSection()
    cluster: ClusterSection | None = None
    streams: list[dict[str, Any]] = Field(default_factory=list)


class _SinkList(BaseModel):
    """The built-in sinks' schema (plugin sinks are validated by :func:`_parse_sinks`)."""

    model_config = _STRICT

    sinks: list[BuiltinSinkSpec] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A validated configuration file."""

    genesys: GenesysSection
    settings: Settings
    streams: tuple[StreamConfig, ...]
    #: Sinks of each stream, by stream id.
    sinks: Mapping[str, tuple[SinkSpec, ...]]
    source: str = "the configuration"
    state: StateSection = field(default_factory=StateSection)
    #: Set when instances share the streams (``[cluster]``).
    cluster: ClusterSection | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """An OAuth client id and secret (the secret never shows in a repr)."""

    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, client_secret=<hidden>)"


def load_config(path: str | os.PathLike[str]) -> ConfigFile:
    """Read and validate a TOML file; raises :class:`ConfigFileError` listing every mistake."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {source} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source} is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError([("(file)", f"not valid TOML: {exc}")], source) from exc
    except RecursionError:
        # The one cause not kept: a RecursionError's traceback is a thousand
        # frames of the TOML parser, and says nothing the message does not.
        raise ConfigFileError(
            [("(file)", "nested too deeply to read; a configuration needs a few levels at most")],
            source,
        ) from None
    return parse_config(data, source=source, base_dir=Path(path).parent)


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "the configuration",
    base_dir: Path | None = None,
) -> ConfigFile:
    """Validate an already-parsed configuration mapping.

    With ``base_dir`` (the file's directory, as :func:`load_config` passes
    it), relative paths (``dlq_path``, ``audit_path``, ``secrets_file``,
    JSON-lines sinks) are taken from there, not from the working directory,
    so ``validate`` and ``run`` agree wherever they are started.
    """
    errors: list[tuple[str, str]] = []
    try:
        document = _Document.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, ""))
        document = _Document.model_construct(
            genesys=GenesysSection(),
            settings=Settings(),
            state=StateSection(),
            streams=_stream_list(data),
        )
    stream_items: list[dict[str, Any]] = []
    sinks: dict[str, tuple[SinkSpec, ...]] = {}
    for i, raw in enumerate(document.streams):
        item = dict(raw)
        raw_sinks = item.pop("sinks", [])
        stream_items.append(item)
        parsed, sink_errors = _parse_sinks(raw_sinks, f"streams[{i}]", item.get("id"))
        errors.extend(sink_errors)
        if not sink_errors and isinstance(item.get("id"), str):
            sinks[item["id"]] = tuple(parsed)
    streams: list[StreamConfig] = []
    try:
        streams = parse_streams(stream_items, max_streams=document.settings.max_streams)
    except StreamConfigError as exc:
        errors.extend(exc.errors)
    genesys, settings, state = document.genesys, document.settings, document.state
    cluster = document.cluster
    if cluster is not None and "path" in state.model_fields_set:
        errors.append(
            (
                "state.path",
                "a cluster shares its streams' state: give [state] a Redis url (or leave "
                "[state] out: the cluster's Redis keeps it)",
            )
        )
    elif cluster is not None and state.url is None and state.url_env is None:
        # The cluster's Redis keeps the state, shared by every instance.
        state = state.model_copy(update={"url": cluster.url, "url_env": cluster.url_env})
    if base_dir is not None and not errors:
        genesys, settings, sinks = _resolved(base_dir, genesys, settings, sinks)
        if not Path(state.path).is_absolute():
            state = state.model_copy(update={"path": str(base_dir / state.path)})
    if not errors:
        errors.extend(_missing_directories(settings, sinks))
        if state.url is None and state.url_env is None:
            directory = Path(state.path).parent
            if not directory.is_dir():
                errors.append(
                    ("state.path", f"directory {directory} of {state.path!r} does not exist")
                )
    if errors:
        raise ConfigFileError(errors, source)
    return ConfigFile(
        genesys=genesys,
        settings=settings,
        streams=tuple(streams),
        sinks={s.id: sinks.get(s.id, ()) for s in streams},
        source=source,
        state=state,
        cluster=cluster,
    )


def _resolved(
    base: Path,
    genesys: GenesysSection,
    settings: Settings,
    sinks: Mapping[str, tuple[SinkSpec, ...]],
) -> tuple[GenesysSection, Settings, dict[str, tuple[SinkSpec, ...]]]:
    """The sections with every relative path taken from ``base``."""

    def under(path: str) -> str:
        return path if Path(path).is_absolute() else str(base / path)

    if genesys.secrets_file is not None:
        genesys = genesys.model_copy(update={"secrets_file": under(genesys.secrets_file)})
    if any(c.secrets_file is not None for c in genesys.clients):
        clients = [
            c.model_copy(update={"secrets_file": under(c.secrets_file)}) if c.secrets_file else c
            for c in genesys.clients
        ]
        genesys = genesys.model_copy(update={"clients": clients})
    updates = {"dlq_path": under(settings.dlq_path)}
    if settings.audit_path != "-":
        updates["audit_path"] = under(settings.audit_path)
    settings = settings.model_copy(update=updates)

    def sink_paths(spec: SinkSpec) -> SinkSpec:
        if isinstance(spec, JsonlSinkSpec):
            return spec.model_copy(update={"path": under(spec.path)})
        if isinstance(spec, NatsSinkSpec):
            keys = ("creds_file", "nkey_seed_file", "tls_ca_file")
            return spec.model_copy(
                update={k: under(getattr(spec, k)) for k in keys if getattr(spec, k) is not None}
            )
        return spec

    resolved = {stream_id: tuple(map(sink_paths, specs)) for stream_id, specs in sinks.items()}
    return genesys, settings, resolved


def _missing_directories(
    settings: Settings, sinks: Mapping[str, tuple[SinkSpec, ...]]
) -> list[tuple[str, str]]:
    """Files the run will write, whose directory is not there: found now, not at run time."""
    wanted = [("settings.dlq_path", settings.dlq_path)]
    if settings.audit_path != "-":
        wanted.append(("settings.audit_path", settings.audit_path))
    for stream_id, specs in sinks.items():
        wanted += [
            (f"sinks of {stream_id}: jsonl path", spec.path)
            for spec in specs
            if isinstance(spec, JsonlSinkSpec)
        ]
    errors = []
    for where, path in wanted:
        directory = Path(path).parent
        if not directory.is_dir():
            errors.append(
                (where, f"directory {directory} of {path!r} does not exist; create it first")
            )
    return errors


def _stream_list(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    streams = data.get("streams")
    if isinstance(streams, list):
        return [s for s in streams if isinstance(s, dict)]
    return []


def _parse_sinks(
    raw_sinks: Any, prefix: str, stream_id: Any
) -> tuple[list[SinkSpec], list[tuple[str, str]]]:
    """The sinks of one stream, built-in or from plugins, and every mistake with its path.

    A plugin is imported only here, and only when a sink names its type.
    """
    if not isinstance(raw_sinks, list):
        try:
            _SinkList.model_validate({"sinks": raw_sinks})
        except ValidationError as exc:
            return [], _pydantic_errors(exc, prefix)
        return [], []
    specs: list[SinkSpec] = []
    errors: list[tuple[str, str]] = []
    for j, raw in enumerate(raw_sinks):
        where = f"{prefix}.sinks[{j}]"
        kind = raw.get("type") if isinstance(raw, dict) else None
        if not isinstance(kind, str) or kind in BUILTIN_SINK_TYPES:
            try:
                specs.append(_BUILTIN_SINK.validate_python(raw))
            except ValidationError as exc:
                errors.extend(_pydantic_errors(exc, where))
                continue
            spec = specs[-1]
            if isinstance(spec, NatsSinkSpec) and isinstance(stream_id, str):
                problem = check_subject_template(spec.subject, stream_id)
                if problem is not None:
                    errors.append((f"{where}.subject", problem))
            continue
        assert isinstance(raw, dict)
        try:
            loaded = load_plugin(kind)
        except ConfigError as exc:
            errors.append((f"{where}.type", str(exc)))
            continue
        if loaded is None:
            installed = plugin_types(BUILTIN_SINK_TYPES)
            errors.append(
                (
                    f"{where}.type",
                    f"unknown sink type {kind!r}: the built-in types are "
                    f"{', '.join(sorted(BUILTIN_SINK_TYPES))}; installed plugins: "
                    f"{', '.join(installed) or 'none'}. A plugin type needs its package "
                    f"installed (it registers in the {ENTRY_POINT_GROUP} entry-point group)",
                )
            )
            continue
        common = {k: v for k, v in raw.items() if k in _COMMON_SINK_KEYS}
        own = {k: v for k, v in raw.items() if k not in _COMMON_SINK_KEYS}
        batching: _PluginBatching | None = None
        options: BaseModel | None = None
        try:
            batching = _PluginBatching.model_validate(common)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, where))
        try:
            options = loaded.options.model_validate(own)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, where))
        if batching is not None and options is not None:
            specs.append(PluginSinkSpec(kind, options, loaded, batching.batching))
    return specs, errors


def _pydantic_errors(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    out = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in BUILTIN_SINK_TYPES and path.endswith("]"):
                continue  # pydantic names the union member; the index says enough
            else:
                path = f"{path}.{part}" if path else str(part)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        out.append((path or "(file)", message))
    return out


def check_environment(
    config: ConfigFile, environ: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """What ``run`` would reject beyond the file's own values: (errors, warnings).

    Errors are wrong whatever the environment (an unknown region, a secrets
    file that is not there). Warnings are what may well be set only where
    the service runs (the credentials, a sink's secret variable): ``run``
    fails if they are still missing then.
    """
    env = os.environ if environ is None else environ
    errors: list[tuple[str, str]] = []
    warnings: list[str] = []
    genesys = config.genesys
    if genesys.region is not None:
        try:
            resolve_region(genesys.region)
        except ConfigError as exc:
            errors.append(("genesys.region", str(exc)))
    elif genesys.base_url is None and not env.get("GENESYSCLOUD_REGION"):
        warnings.append("no region: set genesys.region, or GENESYSCLOUD_REGION where it runs")
    if genesys.secrets_file is not None and not Path(genesys.secrets_file).is_file():
        errors.append(
            ("genesys.secrets_file", f"{genesys.secrets_file} does not exist or is not a file")
        )
    elif genesys.secrets_file is None and not (
        env.get("GENESYSCLOUD_OAUTHCLIENT_ID") and env.get("GENESYSCLOUD_OAUTHCLIENT_SECRET")
    ):
        warnings.append(
            "no OAuth client credentials here: set GENESYSCLOUD_OAUTHCLIENT_ID and "
            "GENESYSCLOUD_OAUTHCLIENT_SECRET where it runs, or name a secrets_file"
        )
    else:
        try:
            warnings.extend(load_credentials(genesys, env)[1])
        except ConfigError as exc:
            errors.append(("genesys.secrets_file", str(exc)))
    for stream_id, specs in config.sinks.items():
        for spec in specs:
            variable = (
                spec.secret_env
                if isinstance(spec, WebhookSinkSpec)
                else spec.url_env
                if isinstance(spec, RedisSinkSpec)
                else (spec.password_env or spec.token_env)
                if isinstance(spec, NatsSinkSpec)
                else None
            )
            if variable is not None and not env.get(variable):
                warnings.append(
                    f"sink {spec.type} of stream {stream_id}: {variable} is not set here; "
                    "set it where it runs"
                )
            elif isinstance(spec, WebhookSinkSpec):
                problem = spec.secret_problem(env.get(spec.secret_env, ""))
                if problem is not None:
                    errors.append(
                        (f"sinks of {stream_id}: webhook {redact_url(spec.url)}", problem)
                    )
    errors.extend(missing_extras(config))
    return errors, warnings


def missing_extras(config: ConfigFile) -> list[tuple[str, str]]:
    """Where the configuration uses a feature whose optional package is not installed.

    As ``(where, message)`` pairs; the message names the ``pip install``
    that fixes it. ``validate`` reports them with the file's other problems;
    ``run`` refuses to start on them rather than fail once it is connected.
    """
    needs: list[tuple[str, str, str]] = []
    for stream_id, specs in config.sinks.items():
        for spec in specs:
            if isinstance(spec, RedisSinkSpec):
                needs.append((f"sinks of {stream_id}: redis", "redis", "the Redis Streams sink"))
            elif isinstance(spec, NatsSinkSpec):
                needs.append((f"sinks of {stream_id}: nats", "nats", "the NATS sink"))
    if config.state.url is not None or config.state.url_env is not None:
        needs.append(("state", "redis", "the Redis state store"))
    if config.cluster is not None:
        needs.append(("cluster", "redis", "a cluster (leases in Redis)"))
    errors = []
    for where, module, feature in needs:
        error = missing_extra(module, feature)
        if error is not None:
            errors.append((where, str(error)))
    return errors


def load_credentials(
    genesys: GenesysSection,
    environ: Mapping[str, str] | None = None,
    *,
    client: str | None = None,
) -> tuple[Credentials, list[str]]:
    """The OAuth client, from the environment or the secrets file, and any warnings.

    ``client`` names one of ``[[genesys.clients]]`` (a cluster's instance);
    its variables and secrets file are read instead of the defaults. The
    environment wins when both are set. A secrets file that group or others
    can read gives a warning (not an error: some platforms mount secrets
    that way), naming the fix.
    """
    env = os.environ if environ is None else environ
    spec = genesys.client(client) if client is not None else None
    id_env = spec.id_env if spec else "GENESYSCLOUD_OAUTHCLIENT_ID"
    secret_env = spec.secret_env if spec else "GENESYSCLOUD_OAUTHCLIENT_SECRET"
    secrets_file = spec.secrets_file if spec else genesys.secrets_file
    warnings: list[str] = []
    client_id = env.get(id_env)
    secret = env.get(secret_env)
    if (not client_id or not secret) and secrets_file:
        file_id, file_secret, warnings = _read_secrets_file(Path(secrets_file))
        client_id = client_id or file_id
        secret = secret or file_secret
    if not client_id or not secret:
        where = "[genesys]" if spec is None else f"client {spec.name} of [[genesys.clients]]"
        raise ConfigError(
            f"no OAuth client credentials: set {id_env} and {secret_env}, or name a "
            f"secrets_file in {where}"
        )
    return Credentials(client_id, secret), warnings


def _read_secrets_file(path: Path) -> tuple[str, str, list[str]]:
    """client_id and client_secret from a TOML secrets file, and a warning if others can read it."""
    try:
        mode = path.stat().st_mode
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read the secrets file {path}: {type(exc).__name__}; it must be TOML "
            "with client_id and client_secret"
        ) from exc
    warnings = []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"secrets file {path} can be read by other users; restrict it with chmod 600"
        )
    file_id, file_secret = data.get("client_id"), data.get("client_secret")
    if not isinstance(file_id, str) or not isinstance(file_secret, str):
        raise ConfigError(f"the secrets file {path} needs string keys client_id and client_secret")
    return file_id, file_secret, warnings


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a configuration file (streams carry StreamConfig fields plus sinks)."""
    schema = _Document.model_json_schema()
    stream_schema = StreamConfig.model_json_schema()
    sink_schema = _SinkList.model_json_schema()
    defs = {
        **schema.pop("$defs", {}),
        **stream_schema.pop("$defs", {}),
        **sink_schema.pop("$defs", {}),
    }
    stream_schema["properties"]["sinks"] = sink_schema["properties"]["sinks"]
    schema["properties"]["streams"] = {"type": "array", "items": stream_schema}
    schema["$defs"] = defs
    schema["title"] = "genesys-mux configuration"
    return schema
