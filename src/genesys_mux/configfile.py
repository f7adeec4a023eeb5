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
:func:`check_config` (``genesys-mux validate``) goes on past the schema in
the same pass: the parts that parsed, a section's good keys among them,
have their directories and environment checked too, so a file is fixed in
one round; what a problem keeps from being checked is said.

Secrets never live in this file and never on a command line. The OAuth
client comes from ``GENESYSCLOUD_OAUTHCLIENT_ID`` /
``GENESYSCLOUD_OAUTHCLIENT_SECRET``, or from a separate secrets file (TOML
with ``client_id`` and ``client_secret``) that should be readable by its
owner only; a webhook's HMAC secret and a Redis URL with a password are
named by the environment variable that holds them.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar, get_args
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from genesys_mux._extras import missing_extra
from genesys_mux.config import (
    StreamConfig,
    _ConfigModel,
    keys_at,
    parse_streams,
    unknown_key_message,
)
from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.redaction import redact_url
from genesys_mux.core.topics import expand_topic, parse_topic
from genesys_mux.errors import ConfigError, ConfigFileError, StreamConfigError
from genesys_mux.net.auth import ENVIRONMENT_CREDENTIALS
from genesys_mux.regions import Endpoints, is_loopback_host, resolve_region
from genesys_mux.sinks.base import Batching
from genesys_mux.sinks.dlq import DEFAULT_DLQ_MAX_BYTES
from genesys_mux.sinks.nats import DEFAULT_SUBJECT, check_subject_template, stream_subjects_for
from genesys_mux.sinks.plugins import ENTRY_POINT_GROUP, LoadedPlugin, load_plugin, plugin_types
from genesys_mux.sinks.webhook import SigningScheme, parse_secrets, webhook_url_problem
from genesys_mux.state.redis_server import redis_url_problem

__all__ = [
    "ConfigFile",
    "ConfigReport",
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
    "check_config",
    "check_environment",
    "check_sink",
    "configured_region",
    "json_schema",
    "load_config",
    "load_credentials",
    "missing_extras",
    "output_files",
    "parse_config",
    "sink_key_path",
    "sink_key_paths",
]

_M = TypeVar("_M", bound=_ConfigModel)

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


class _FileModel(_ConfigModel):
    """A model of the file's: built directly, it raises :class:`ConfigFileError`, not pydantic's."""

    @classmethod
    def _config_error(cls, exc: ValidationError, data: object) -> ConfigError:
        return ConfigFileError(_pydantic_errors(exc, "", cls), cls.__name__)


class OAuthClientSpec(_FileModel):
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


class GenesysSection(_FileModel):
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

    @field_validator("base_url")
    @classmethod
    def _usable_base_url(cls, value: str | None) -> str | None:
        # What run would refuse, said by validate: never quoting user info.
        if value is not None:
            try:
                Endpoints.custom(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

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


class Settings(_FileModel):
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


class _SinkBase(_FileModel):
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
        if self.url is not None:
            _check_file_redis_url(self.url)
        return self


class WebhookSinkSpec(_SinkBase):
    """Batched, HMAC-signed JSON POSTs."""

    type: Literal["webhook"] = Field(description="Selects this sink.")
    url: str | None = Field(
        default=None, pattern=r"^https?://", description="Where batches are POSTed."
    )
    url_env: str | None = Field(
        default=None,
        description=(
            "Environment variable holding the URL instead, when it carries a secret (a token "
            "in its path or query, a password): logs then show only its scheme and host."
        ),
    )
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
    # Ten: with the runners' backoff (full jitter, 0.2 s doubling to 10 s)
    # the nine waits between them come to about 21 s on average (43 s at
    # most), which rides out a receiver's restart; five came to 1.5 s.
    max_attempts: int | None = Field(
        default=10,
        ge=1,
        description="Attempts at a batch before its events are dead-lettered (ten: about 21 s "
        "of waits on average, at most 43 s, plus each attempt's timeout).",
    )

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSinkSpec:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url or url_env")
        if self.url is not None:
            _check_file_webhook_url(self.url)
        return self

    def url_problem(self, url: str) -> str | None:
        """What is wrong with the URL ``url_env`` holds (None: nothing); never quotes it.

        The sink's own policy (:func:`~genesys_mux.sinks.webhook.webhook_url_problem`)
        for a URL that is a secret, named by its variable.
        """
        problem = webhook_url_problem(url, secret=True)
        return None if problem is None else f"{self.url_env}: {problem}"

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
            # Credentials first: no other message may quote a server that holds them.
            if "@" in server:
                raise ValueError(
                    "a server URL holds credentials; use user with password_env, token_env, "
                    "creds_file or nkey_seed_file"
                )
            if not server.startswith(("nats://", "tls://")):
                raise ValueError(f"server {redact_url(server)!r} must be a nats:// or tls:// URL")
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


class _RedisLocation(_FileModel):
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
            _check_file_redis_url(self.url)
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
            problem = _redis_url_problem(self.url_env, value)
            if problem is not None:
                raise ConfigError(f"[{section}] url_env: {problem}")
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
    """An OAuth client id and secret (the secret never shows in a repr).

    ``source`` says where each was found, for the error that says they
    were refused (``GENESYSCLOUD_OAUTHCLIENT_ID and ...``, a secrets file).
    """

    client_id: str
    client_secret: str
    source: str = ENVIRONMENT_CREDENTIALS

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, client_secret=<hidden>)"


def load_config(path: str | os.PathLike[str]) -> ConfigFile:
    """Read and validate a TOML file; raises :class:`ConfigFileError` listing every mistake."""
    return parse_config(_read_toml(path), source=str(path), base_dir=Path(path).parent)


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's TOML; ConfigError when it cannot be read, ConfigFileError when it is not TOML."""
    source = str(path)
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
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
    so ``validate`` and ``run`` agree wherever they are started. Raises
    :class:`ConfigFileError` listing every mistake, a missing directory
    among them.
    """
    parsed = _parse(data, source=source, base_dir=base_dir)
    errors = parsed.errors + [
        (where, f"{message}; create it first") for where, message, _ in parsed.directories
    ]
    if errors:
        raise ConfigFileError(errors, source)
    return parsed.config


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What ``genesys-mux validate`` says about a configuration file (see :func:`check_config`).

    ``problems`` are ``(path, problem)`` pairs: ``run`` would refuse the file
    here. ``warnings`` are what may well be set only where the service runs
    (credentials, a sink's secret variable, a directory named by an absolute
    path). ``not_checked`` says which checks could not run because the part
    they read has a problem of its own. ``config`` is the configuration when
    there is no problem, else None.
    """

    problems: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...] = ()
    not_checked: tuple[str, ...] = ()
    config: ConfigFile | None = None


def check_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    here: bool = False,
) -> ConfigReport:
    """Every problem of a configuration file and of what ``run`` needs beyond it, in one go.

    The schema, the directories of the files the run writes and the
    environment (region, secrets file, credentials, sink variables, optional
    packages) are all checked, also when an earlier part has problems: the
    parts of a section that did parse are checked further, so a file is
    fixed in one round. A directory named by an absolute path that is not
    here is a warning: the path names the machine it runs on, which may not
    be this one (a build machine checking a container's file). ``here``
    says it is the machine it runs on: such a directory, or secrets file, is
    then a problem like any other.
    """
    source = str(path)
    try:
        data = _read_toml(path)
    except ConfigFileError as exc:
        return ConfigReport(problems=exc.errors)
    except ConfigError as exc:
        return ConfigReport(problems=(("(file)", str(exc)),))
    parsed = _parse(data, source=source, base_dir=Path(path).parent)
    env_errors, warnings = _environment_problems(parsed.config, environ, parsed, here=here)
    problems = list(parsed.errors)
    for where, message, absolute in parsed.directories:
        if absolute and not here:
            warnings.append(f"{where}: {message} here; it must exist where it runs")
        else:
            problems.append((where, f"{message}; create it first"))
    problems += env_errors
    return ConfigReport(
        problems=tuple(problems),
        warnings=tuple(warnings),
        not_checked=tuple(parsed.not_checked),
        config=None if problems else parsed.config,
    )


@dataclass(slots=True)
class _Parsed:
    """A configuration as far as it parsed, with what was wrong and what could not be checked."""

    #: The parts that parsed (a section with problems keeps its good keys).
    config: ConfigFile
    errors: list[tuple[str, str]] = field(default_factory=list)
    #: Missing directories of files the run writes: (path, problem, the path is absolute).
    directories: list[tuple[str, str, bool]] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    #: The file path of each sink: (stream id, position in config.sinks) -> streams[i].sinks[j].
    sink_paths: dict[tuple[str, int], str] = field(default_factory=dict)
    #: Sections whose problems leave nothing to check further.
    skipped: set[str] = field(default_factory=set)


_AFTER_THE_SCHEMA = {
    "genesys": "the region, the secrets file and the credentials",
    "settings": "the directories of dlq_path and audit_path",
    "state": "the state store (its directory or url_env, and the redis package)",
    "cluster": "the cluster's url_env and the redis package",
}


def _parse(data: Mapping[str, Any], *, source: str, base_dir: Path | None) -> _Parsed:
    """Validate ``data`` as far as it goes, every problem collected (see :func:`parse_config`)."""
    errors: list[tuple[str, str]] = []
    skipped: set[str] = set()
    try:
        document = _Document.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, "", _Document))
        document = _salvage_document(data, exc, skipped)
    parsed = _Parsed(config=ConfigFile(GenesysSection(), Settings(), (), {}), skipped=skipped)
    stream_items: list[dict[str, Any]] = []
    sinks: dict[str, tuple[SinkSpec, ...]] = {}
    for i, raw in enumerate(document.streams):
        item = dict(raw)
        raw_sinks = item.pop("sinks", [])
        stream_items.append(item)
        prefix = f"streams[{i}]"
        found, sink_errors, unchecked = _parse_sinks(raw_sinks, prefix, item.get("id"))
        errors.extend(sink_errors)
        parsed.not_checked += [
            f"{where}: its directory, environment variables and package are checked once "
            "its problems are fixed"
            for where in unchecked
        ]
        stream_id = item.get("id")
        # The sinks of a stream whose id is already taken are reported with
        # the duplicate; they are not checked a second time.
        if isinstance(stream_id, str) and stream_id not in sinks:
            sinks[stream_id] = tuple(spec for _, spec in found)
            for position, (j, _) in enumerate(found):
                parsed.sink_paths[(stream_id, position)] = f"{prefix}.sinks[{j}]"
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
        skipped.add("state")
    elif cluster is not None and state.url is None and state.url_env is None:
        # The cluster's Redis keeps the state, shared by every instance.
        state = state.model_copy(update={"url": cluster.url, "url_env": cluster.url_env})
    # Checked before the paths are resolved: whether a path was absolute
    # decides whether a missing directory is this machine's problem.
    base = Path() if base_dir is None else base_dir
    parsed.directories += _missing_directories(
        None if "settings" in skipped else settings, sinks, parsed.sink_paths, base
    )
    if "state" not in skipped and state.url is None and state.url_env is None:
        parsed.directories += _missing_directory("state.path", state.path, base)
    if base_dir is not None:
        genesys, settings, sinks = _resolved(base_dir, genesys, settings, sinks)
        if not Path(state.path).is_absolute():
            state = state.model_copy(update={"path": str(base_dir / state.path)})
    parsed.not_checked += [
        f"[{name}]: {_AFTER_THE_SCHEMA[name]} are checked once its problems are fixed"
        for name in _AFTER_THE_SCHEMA
        if name in skipped
    ]
    parsed.errors = errors
    parsed.config = ConfigFile(
        genesys=genesys,
        settings=settings,
        streams=tuple(streams),
        sinks=sinks if errors else {s.id: sinks.get(s.id, ()) for s in streams},
        source=source,
        state=state,
        cluster=cluster,
    )
    return parsed


def _salvage_document(
    data: Mapping[str, Any], exc: ValidationError, skipped: set[str]
) -> _Document:
    """The document's sections without the keys that have problems, for the later checks.

    A section whose problem is not one key (region and base_url both given,
    say) is left at its defaults and named in ``skipped``: what reads it is
    not checked until it is fixed.
    """
    failed: dict[str, list[tuple[int | str, ...]]] = {}
    for error in exc.errors():
        loc = error["loc"]
        if loc and isinstance(loc[0], str):
            failed.setdefault(loc[0], []).append(loc[1:])
    raw_data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}

    def section(name: str, model: type[_M]) -> _M | None:
        raw = raw_data.get(name, {})
        if name not in failed:
            return model._pydantic_validate(raw)
        kept = _without_failed_keys(raw, failed[name])
        if kept is not None:
            with contextlib.suppress(ValidationError):
                return model._pydantic_validate(kept)
        skipped.add(name)
        return None

    genesys = section("genesys", GenesysSection) or GenesysSection()
    settings = section("settings", Settings) or Settings()
    state = section("state", StateSection) or StateSection()
    cluster = section("cluster", ClusterSection) if "cluster" in raw_data else None
    return _Document.model_construct(
        genesys=genesys,
        settings=settings,
        state=state,
        cluster=cluster,
        streams=_stream_list(raw_data),
    )


def _without_failed_keys(raw: Any, locations: list[tuple[int | str, ...]]) -> dict[str, Any] | None:
    """``raw`` without the keys the errors point into; None if an error is not about one key."""
    if not isinstance(raw, Mapping) or any(not loc for loc in locations):
        return None
    bad = {loc[0] for loc in locations}
    return {key: value for key, value in raw.items() if key not in bad}


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


def sink_key_path(stream_id: str, position: int, paths: Mapping[tuple[str, int], str]) -> str:
    """A sink's key in the file (``streams[0].sinks[1]``), from :func:`sink_key_paths`."""
    return paths.get((stream_id, position), f"sinks of stream {stream_id}: [{position}]")


def output_files(
    settings: Settings | None,
    sinks: Mapping[str, tuple[SinkSpec, ...]],
    paths: Mapping[tuple[str, int], str],
) -> list[tuple[str, str]]:
    """The files ``run`` appends to, each with its key in the file: ``(key, path)``.

    The dead-letter queue, the audit log (unless it is stderr) and the JSONL
    sinks, their paths as loaded. ``settings`` is None when that section
    could not be read: its files are left out.
    """
    files = []
    if settings is not None:
        files.append(("settings.dlq_path", settings.dlq_path))
        if settings.audit_path != "-":
            files.append(("settings.audit_path", settings.audit_path))
    for stream_id, specs in sinks.items():
        files += [
            (f"{sink_key_path(stream_id, j, paths)}.path", spec.path)
            for j, spec in enumerate(specs)
            if isinstance(spec, JsonlSinkSpec)
        ]
    return files


def _missing_directories(
    settings: Settings | None,
    sinks: Mapping[str, tuple[SinkSpec, ...]],
    paths: Mapping[tuple[str, int], str],
    base: Path,
) -> list[tuple[str, str, bool]]:
    """Files the run will write, whose directory is not there: found now, not at run time.

    Relative paths are taken from ``base``; each problem comes as (path in
    the file, problem, the file's path is absolute).
    """
    return [
        problem
        for where, path in output_files(settings, sinks, paths)
        for problem in _missing_directory(where, path, base)
    ]


def _missing_directory(where: str, path: str, base: Path) -> list[tuple[str, str, bool]]:
    """The problem of a file whose directory is not there, if it is not (see above).

    An absolute path says so: it names the machine the service runs on,
    which may not be this one, where a relative one is read from the
    configuration file's own directory.
    """
    absolute = Path(path).is_absolute()
    full = Path(path) if absolute else base / path
    if full.parent.is_dir():
        return []
    return [(where, f"directory {full.parent} of {str(full)!r} does not exist", absolute)]


def _stream_list(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    streams = data.get("streams")
    if isinstance(streams, list):
        return [s for s in streams if isinstance(s, dict)]
    return []


def _parse_sinks(
    raw_sinks: Any, prefix: str, stream_id: Any
) -> tuple[list[tuple[int, SinkSpec]], list[tuple[str, str]], list[str]]:
    """The sinks of one stream, built-in or from plugins, and every mistake with its path.

    Returns the sinks that parsed, each with its index in the list (a
    built-in sink with problems is kept without its bad keys, for the later
    checks, when that leaves a valid sink), the mistakes, and the paths of
    the sinks that could not be kept. A plugin is imported only here, and
    only when a sink names its type.
    """
    if not isinstance(raw_sinks, list):
        try:
            _SinkList.model_validate({"sinks": raw_sinks})
        except ValidationError as exc:
            return [], _pydantic_errors(exc, prefix, _SinkList), []
        return [], [], []
    specs: list[tuple[int, SinkSpec]] = []
    errors: list[tuple[str, str]] = []
    unchecked: list[str] = []
    for j, raw in enumerate(raw_sinks):
        where = f"{prefix}.sinks[{j}]"
        kind = raw.get("type") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and kind is None:
            # pydantic would say it cannot "extract tag using discriminator".
            installed = plugin_types(BUILTIN_SINK_TYPES)
            errors.append(
                (
                    f"{where}.type",
                    "missing: every sink names its type, one of "
                    f"{', '.join(sorted(BUILTIN_SINK_TYPES))}"
                    + (f" or an installed plugin's ({', '.join(installed)})" if installed else ""),
                )
            )
            unchecked.append(where)
            continue
        if not isinstance(kind, str) or kind in BUILTIN_SINK_TYPES:
            try:
                spec = _BUILTIN_SINK.validate_python(raw)
            except ValidationError as exc:
                errors.extend(_pydantic_errors(exc, where, BuiltinSinkSpec))
                # pydantic names the union member first: ("webhook", "timeout_s").
                kept = _without_failed_keys(raw, [e["loc"][1:] for e in exc.errors()])
                salvaged = None
                if kept is not None and isinstance(kind, str):
                    with contextlib.suppress(ValidationError):
                        salvaged = _BUILTIN_SINK.validate_python(kept)
                if salvaged is None:
                    if kind != "stdout":
                        unchecked.append(where)
                else:
                    specs.append((j, salvaged))
                continue
            specs.append((j, spec))
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
            batching = _PluginBatching._pydantic_validate(common)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, where, _PluginBatching))
        try:
            options = loaded.options.model_validate(own)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, where, loaded.options))
        if batching is not None and options is not None:
            specs.append((j, PluginSinkSpec(kind, options, loaded, batching.batching)))
    return specs, errors, unchecked


def _pydantic_errors(exc: ValidationError, prefix: str, root: Any) -> list[tuple[str, str]]:
    """Each of pydantic's errors as (key path, message); ``root`` is the type validated."""
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
            # The place the key was found in: a plugin's options, say, as
            # well as the sections and sinks of the file.
            message = unknown_key_message(error["loc"][-1], keys_at(root, error["loc"]))
        elif error["type"] == "value_error":
            # Our own validators' messages, without pydantic's "Value error, ".
            message = str(error.get("ctx", {}).get("error", message.removeprefix("Value error, ")))
        elif error["type"].endswith(("_type", "_parsing")) and isinstance(
            error.get("input"), str | int | float | bool
        ):
            # What was read, as the stream keys say it: TOML's quotes make
            # "9464" a string, which the message alone does not show.
            message += f" (got {repr(error['input'])[:60]})"
        out.append((path or "(file)", message))
    return out


def configured_region(config: ConfigFile, environ: Mapping[str, str] | None = None) -> str | None:
    """The region ``run`` connects to: ``[genesys] region``, else ``GENESYSCLOUD_REGION``.

    None when the file gives a ``base_url`` or neither is set. Raises
    :class:`~genesys_mux.errors.UnknownRegionError` for a region that is not
    one, saying where the value came from, since that is where it must be
    fixed: the file's key wins over the variable.
    """
    genesys = config.genesys
    if genesys.base_url is not None:
        return None
    if genesys.region is not None:
        resolve_region(genesys.region, origin=f"[genesys] region in {config.source}")
        return genesys.region
    value = (os.environ if environ is None else environ).get("GENESYSCLOUD_REGION")
    if not value:
        return None
    resolve_region(value, origin="GENESYSCLOUD_REGION in the environment")
    return value


def check_environment(
    config: ConfigFile, environ: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """What ``run`` would reject beyond the file's own values: (errors, warnings).

    Errors are wrong whatever the environment (an unknown region, a secrets
    file that is not there, a variable that holds a value ``run`` refuses).
    Warnings are what may well be set only where the service runs (the
    credentials, a sink's secret variable): ``run`` fails if they are still
    missing then. No value of a secret variable is ever quoted.
    """
    return _environment_problems(config, environ, None)


def _environment_problems(
    config: ConfigFile,
    environ: Mapping[str, str] | None,
    parsed: _Parsed | None,
    *,
    here: bool = False,
) -> tuple[list[tuple[str, str]], list[str]]:
    env = os.environ if environ is None else environ
    skipped = parsed.skipped if parsed is not None else set()
    paths = parsed.sink_paths if parsed is not None else sink_key_paths(config)
    errors: list[tuple[str, str]] = []
    warnings: list[str] = []
    genesys = config.genesys
    if "genesys" not in skipped:
        try:
            configured_region(config, env)
        except ConfigError as exc:
            where = "genesys.region" if genesys.region is not None else "GENESYSCLOUD_REGION"
            errors.append((where, str(exc)))
        # A base_url the schema refused is reported there, not as a missing region.
        refused_base_url = parsed is not None and any(
            where == "genesys.base_url" for where, _ in parsed.errors
        )
        if (
            genesys.region is None
            and genesys.base_url is None
            and not refused_base_url
            and not env.get("GENESYSCLOUD_REGION")
        ):
            warnings.append("no region: set genesys.region, or GENESYSCLOUD_REGION where it runs")
        _check_credentials(genesys, env, errors, warnings, here=here)
    for stream_id, specs in config.sinks.items():
        for j, spec in enumerate(specs):
            check_sink(spec, sink_key_path(stream_id, j, paths), stream_id, env, errors, warnings)
    warnings += advice(config, paths)
    for name, section in (("state", config.state), ("cluster", config.cluster)):
        if section is None or name in skipped or section.url_env is None:
            continue
        value = env.get(section.url_env)
        if not value:
            warnings.append(
                f"[{name}] url_env: {section.url_env} is not set here; set it where it runs"
            )
        elif (problem := _redis_url_problem(section.url_env, value)) is not None:
            errors.append((f"{name}.url_env", problem))
    errors.extend(_missing_extras(config, paths, skipped))
    return errors, warnings


def _check_credentials(
    genesys: GenesysSection,
    env: Mapping[str, str],
    errors: list[tuple[str, str]],
    warnings: list[str],
    *,
    here: bool,
) -> None:
    secrets_file = genesys.secrets_file
    if secrets_file is not None and not Path(secrets_file).is_file():
        message = f"{secrets_file} does not exist or is not a file"
        if Path(secrets_file).is_absolute() and not here:
            # Mounted where it runs (a Kubernetes Secret, say), like the variables.
            warnings.append(f"genesys.secrets_file: {message} here; it must exist where it runs")
        else:
            errors.append(("genesys.secrets_file", message))
    elif secrets_file is None and not (
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


def advice(config: ConfigFile, paths: Mapping[tuple[str, int], str] | None = None) -> list[str]:
    """What ``validate`` and ``run`` warn about in a valid configuration.

    No stream at all, webhooks in clear to another host
    (:func:`clear_text_sinks`) and ids that are not UUIDs
    (:func:`unlikely_ids`).
    """
    empty = [] if config.streams else ["no [[streams]]: nothing would be subscribed or delivered"]
    return empty + clear_text_sinks(config, paths) + unlikely_ids(config)


_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def unlikely_ids(config: ConfigFile) -> list[str]:
    """A warning for each queue, user or conversation id in the streams that is not a UUID.

    Any safe id is accepted (they go into topics as they are), but a
    Genesys id is a UUID: another one is most likely a typo or a name, and
    its topic would be subscribed and carry nothing, without a word.
    """
    found = []
    for i, stream in enumerate(config.streams):
        where = f"streams[{i}]"
        named = stream.filter
        for key, value in (("queueId", named.queue_id), ("userId", named.user_id)) if named else ():
            if value is not None and not _UUID.fullmatch(value):
                found.append(f"{where}.filter.{key}: {value!r} {_NOT_A_UUID}")
        for j, topic in enumerate(stream.topics):
            ids = {t.entity_id for t in map(parse_topic, expand_topic(topic)) if t.entity_id}
            found += [
                f"{where}.topics[{j}]: {entity_id!r} in {topic!r} {_NOT_A_UUID}"
                for entity_id in sorted(ids)
                if not _UUID.fullmatch(entity_id)
            ]
    return found


_NOT_A_UUID: Final = (
    "is not a UUID, as Genesys ids are: check it (a topic for an id the org does not have "
    "may be subscribed all the same, and carry nothing)"
)


def clear_text_sinks(
    config: ConfigFile, paths: Mapping[tuple[str, int], str] | None = None
) -> list[str]:
    """A warning for each webhook sink whose ``url`` is plain ``http://`` to another host.

    Not refused (a receiver on a private network may be reached so), but
    said: the bodies carry customer names, numbers and addresses. A URL
    given by ``url_env`` is a secret itself, and refused there already.
    """
    paths = sink_key_paths(config) if paths is None else paths
    found = []
    for stream_id, specs in config.sinks.items():
        for j, spec in enumerate(specs):
            if not isinstance(spec, WebhookSinkSpec) or spec.url is None:
                continue
            parts = urlsplit(spec.url)
            if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
                found.append(
                    f"{sink_key_path(stream_id, j, paths)}.url: plain http:// to "
                    f"{parts.hostname}: the events (customer names, numbers, addresses) cross "
                    "the network in clear; use https://"
                )
    return found


def check_sink(
    spec: SinkSpec,
    where: str,
    stream_id: str,
    env: Mapping[str, str],
    errors: list[tuple[str, str]],
    warnings: list[str],
) -> None:
    """A sink's variables: a warning when one is not set here, an error when one is refused."""
    checks: list[tuple[str, str | None, Callable[[str], str | None]]] = []
    if isinstance(spec, WebhookSinkSpec):
        checks.append(("url_env", spec.url_env, spec.url_problem))
        checks.append(("secret_env", spec.secret_env, spec.secret_problem))
    elif isinstance(spec, RedisSinkSpec) and spec.url_env is not None:
        redis_variable = spec.url_env
        checks.append(
            ("url_env", redis_variable, lambda value: _redis_url_problem(redis_variable, value))
        )
    elif isinstance(spec, NatsSinkSpec):
        key = "password_env" if spec.password_env else "token_env"
        checks.append((key, spec.password_env or spec.token_env, lambda _: None))
    for key, variable, problem_of in checks:
        if variable is None:
            continue
        value = env.get(variable)
        if not value:
            state = "is not set" if value is None else "is set but empty"
            warnings.append(
                f"{where}.{key}: {variable} {state} here (sink {spec.type} of stream "
                f"{stream_id}); it must hold the sink's value where genesys-mux runs"
            )
        elif (problem := problem_of(value)) is not None:
            errors.append((f"{where}.{key}", problem))


def _redis_url_problem(variable: str, value: str) -> str | None:
    """What is wrong with a Redis URL read from ``variable`` (None: nothing).

    The policy of every Redis genesys-mux uses, in its words (see
    :func:`~genesys_mux.state.redis_server.redis_url_problem`); never quotes
    the value, which may hold a password.
    """
    problem = redis_url_problem(value)
    return None if problem is None else f"{variable}: {problem}"


def _check_file_redis_url(url: str) -> None:
    """ValueError for a Redis ``url`` written in the file: one with credentials, or one refused.

    Credentials never live in the file (they go in the variable ``url_env``
    names); the rest is the policy of every Redis genesys-mux uses.
    """
    if "@" in url:
        raise ValueError(
            "the url holds credentials; put it in an environment variable named by url_env"
        )
    problem = redis_url_problem(url)
    if problem is not None:
        raise ValueError(problem)


# Query parameters that carry a credential in the receivers' usual spellings
# (a function key, a SAS signature, an API key, a token).
_CREDENTIAL_PARAMETER = re.compile(
    r"(?:^|[_.-])(?:token|key|apikey|secret|sig|signature|code|password|passwd|pwd|auth)$",
    re.IGNORECASE,
)


def _check_file_webhook_url(url: str) -> None:
    """ValueError for a webhook ``url`` written in the file: one with credentials, or one refused.

    The file is for what may be read by anyone who reads the configuration:
    a password or a token in the URL goes in the variable ``url_env`` names
    (whose URL logs show only as scheme and host). The rest is the sink's
    own policy.
    """
    problem = webhook_url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    parts = urlsplit(url)
    where = None
    if "@" in parts.netloc:
        where = "user info"
    else:
        for name, _ in parse_qsl(parts.query, keep_blank_values=True):
            if _CREDENTIAL_PARAMETER.search(name):
                where = f"its query parameter {name[:40]!r}"
                break
    if where is not None:
        raise ValueError(
            f"the url holds what looks like a credential ({where}); put the whole URL in an "
            "environment variable named by url_env instead of url"
        )


def sink_key_paths(config: ConfigFile) -> dict[tuple[str, int], str]:
    """Each sink's path in a valid file: its stream's and its own position."""
    return {
        (stream.id, j): f"streams[{i}].sinks[{j}]"
        for i, stream in enumerate(config.streams)
        for j in range(len(config.sinks.get(stream.id, ())))
    }


def missing_extras(config: ConfigFile) -> list[tuple[str, str]]:
    """Where the configuration uses a feature whose optional package is not installed.

    As ``(where, message)`` pairs; the message names the ``pip install``
    that fixes it. ``validate`` reports them with the file's other problems;
    ``run`` refuses to start on them rather than fail once it is connected.
    """
    return _missing_extras(config, sink_key_paths(config), frozenset())


def _missing_extras(
    config: ConfigFile, paths: Mapping[tuple[str, int], str], skipped: set[str] | frozenset[str]
) -> list[tuple[str, str]]:
    needs: list[tuple[str, str, str]] = []
    for stream_id, specs in config.sinks.items():
        for j, spec in enumerate(specs):
            if isinstance(spec, RedisSinkSpec):
                needs.append(
                    (sink_key_path(stream_id, j, paths), "redis", "the Redis Streams sink")
                )
            elif isinstance(spec, NatsSinkSpec):
                needs.append((sink_key_path(stream_id, j, paths), "nats", "the NATS sink"))
    if "state" not in skipped and (
        config.state.url is not None or config.state.url_env is not None
    ):
        needs.append(("state", "redis", "the Redis state store"))
    if config.cluster is not None and "cluster" not in skipped:
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
    id_from, secret_from = id_env, secret_env
    if (not client_id or not secret) and secrets_file:
        file_id, file_secret, warnings = _read_secrets_file(Path(secrets_file))
        in_file = f"the secrets file {secrets_file}"
        if not client_id:
            client_id, id_from = file_id, f"client_id in {in_file}"
        if not secret:
            secret, secret_from = file_secret, f"client_secret in {in_file}"
    if not client_id or not secret:
        where = "[genesys]" if spec is None else f"client {spec.name} of [[genesys.clients]]"
        raise ConfigError(
            f"no OAuth client credentials: set {id_env} and {secret_env}, or name a "
            f"secrets_file in {where}"
        )
    if id_from == id_env and secret_from == secret_env:
        source = f"{id_env} and {secret_env}"
    elif id_from != id_env and secret_from != secret_env:
        source = f"client_id and client_secret in the secrets file {secrets_file}"
    else:
        source = f"{id_from} and {secret_from}"
        # Half from each: a variable left over from another client would be
        # refused with a client id that looks right.
        warnings.append(
            f"the OAuth client id is {id_from} and its secret {secret_from}: "
            "make sure they belong to the same client (the environment wins over the file)"
        )
    return Credentials(client_id, secret, source), warnings


#: The position in a TOML error's text ("... (at line 2, column 17)").
_TOML_POSITION: Final = re.compile(r"\(at (line \d+, column \d+)\)")


def _read_secrets_file(path: Path) -> tuple[str, str, list[str]]:
    """client_id and client_secret from a TOML secrets file, and a warning if others can read it."""
    try:
        mode = path.stat().st_mode
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # Where, for a TOML mistake, but never what: the text may quote the secret.
        at = _TOML_POSITION.search(str(exc)) if isinstance(exc, tomllib.TOMLDecodeError) else None
        raise ConfigError(
            f"cannot read the secrets file {path}: {type(exc).__name__}"
            f"{f' at {at.group(1)}' if at else ''}; it must be TOML with client_id and "
            "client_secret"
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
