"""What genesys-mux asks of a Redis server, the same for each of its three uses.

Redis serves three parts of genesys-mux: the shared state store
(:mod:`genesys_mux.state.redis`), a cluster's members, leases and fencing
counters (:mod:`genesys_mux.cluster.leases`), and the Redis Streams sink
(:mod:`genesys_mux.sinks.redis_streams`). They take the same URLs and refuse
the same ones, with the same words, from here:

- :func:`redis_url_problem` is the URL policy: a ``redis://``, ``rediss://``
  (TLS) or ``unix://`` URL that can be read as it is meant (a password must be
  percent-encoded where it holds ``/``, ``?`` or ``#``: otherwise a piece of
  it is read as the port or the path), with only the query options listed in
  :data:`URL_OPTIONS`, and none that turns TLS verification off. The
  configuration's validation, every client (:func:`connect`) and each
  role's constructor ask it. Its messages never quote the URL, which may
  hold a password.
- :func:`redis_name` names a server in messages: host, port and database,
  never the password; it never raises, whatever the URL.
- :func:`server_problem` is what each role checks when it opens, once the
  server answered: Redis Cluster is not supported (genesys-mux's client
  talks to one server, and its scripts change several keys at once), and
  a server that may evict any key (``maxmemory-policy allkeys-*``) would
  drop keys that have no TTL and must never go (checkpoints, fencing
  counters, records). A server that will not say (``INFO`` or ``CONFIG``
  renamed or not allowed, as some managed services do) is warned about.
- :func:`permission_problem` words a ``NOPERM`` refusal as the
  configuration problem it is: what was refused, and the commands the
  role's ACL user needs (:attr:`RedisRole.commands`), on which keys.

This module imports redis only in what talks to a server, so that the
configuration can be validated without the ``[redis]`` extra.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from genesys_mux.core.redaction import URL_USERINFO_HINT, userinfo_not_encoded
from genesys_mux.errors import ConfigError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "CHECK_COMMANDS",
    "CLUSTER",
    "SINK",
    "STATE",
    "TLS_REFUSED",
    "URL_OPTIONS",
    "URL_TLS_OPTIONS",
    "RedisRole",
    "check_redis_url",
    "connect",
    "is_permission_error",
    "permission_problem",
    "redis_name",
    "redis_url_problem",
    "server_problem",
    "tls_refused",
]

log = logging.getLogger("genesys_mux.redis")

#: The schemes redis-py connects with: TCP, TCP with TLS, a Unix socket.
SCHEMES: Final = ("redis", "rediss", "unix")

#: The query options a Redis URL may carry (redis-py reads them as its
#: connection's arguments), by scheme (``redis`` stands for ``rediss`` too,
#: which also takes :data:`URL_TLS_OPTIONS`). Anything else is refused: redis-py
#: would pass it on to a connection that does not take it (a TypeError at
#: the first command), or change what genesys-mux relies on (decoded
#: answers, the protocol).
URL_OPTIONS: Final = {
    "redis": (
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "health_check_interval",
        "client_name",
    ),
    "unix": (
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "health_check_interval",
        "client_name",
    ),
}

#: The TLS options of a ``rediss://`` URL. Verification of the server's
#: certificate chain and host name stays on: ``ssl_cert_reqs`` may only be
#: ``required`` and ``ssl_check_hostname`` only true (their defaults).
URL_TLS_OPTIONS: Final = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)

#: What redis-py reads as false in a URL's boolean option.
_FALSE: Final = ("0", "F", "FALSE", "N", "NO")
#: A query option's name that may be quoted in a message (a garbled URL
#: could put a piece of a password where a name is expected).
_OPTION_NAME: Final = re.compile(r"^[a-z_]{1,40}$")
_FORM: Final = "redis://[[user]:password@]host:port/db"
_UNREADABLE: Final = "redis:<a url that cannot be read>"


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL for genesys-mux, or None.

    The answer is a sentence about "the url" that quotes none of it (it may
    hold a password): prefix it with where the URL came from. The same
    sentence for the state store, a cluster and the Redis Streams sink.
    """
    if userinfo_not_encoded(url):
        return URL_USERINFO_HINT
    scheme, sep, _ = url.partition("://")
    if sep and "sentinel" in scheme.lower():
        return (
            "the url is a Redis Sentinel URL, and genesys-mux does not support Sentinel: give "
            f"the primary's redis://, rediss:// (TLS) or unix:// URL ({_FORM})"
        )
    if not sep or scheme.lower() not in SCHEMES:
        got = (
            f"the url is a {scheme}:// URL"
            if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme)
            else "the value is not a URL"
        )
        return f"{got}; give a redis://, rediss:// (TLS) or unix:// URL ({_FORM})"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced '[' or ']' in the host
        return f"the url cannot be read as a URL ({_FORM})"
    try:
        parts.port  # noqa: B018 - read to check it
    except ValueError:
        return "the url's port is not a number from 0 to 65535"
    scheme = parts.scheme.lower()
    if scheme == "unix":
        if not parts.path:
            return "the url names no socket: give unix:///path/to/redis.sock"
    elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return "the url's path is not a database number (/0, /1, ...)"
    options = parse_qs(parts.query)
    return _options_problem(scheme, {name: values[0] for name, values in options.items()})


def _options_problem(scheme: str, options: dict[str, str]) -> str | None:
    """What is wrong with a Redis URL's query options (values never quoted)."""
    allowed = URL_OPTIONS["unix" if scheme == "unix" else "redis"]
    for name, value in options.items():
        if name in URL_TLS_OPTIONS and scheme != "rediss":
            return (
                f"the url has the TLS option {name} but is not a rediss:// URL: "
                "TLS needs rediss:// (redis:// and unix:// are not encrypted)"
            )
        if name == "ssl_cert_reqs" and value != "required":
            return (
                "the url turns TLS certificate verification off (ssl_cert_reqs), and "
                "genesys-mux keeps it on: remove ssl_cert_reqs, and give the CA that signed "
                "the server's certificate with ssl_ca_certs=/path/to/ca.pem"
            )
        if name == "ssl_exclude_verify_flags":
            return (
                "the url weakens TLS certificate verification (ssl_exclude_verify_flags), and "
                "genesys-mux keeps it whole: remove ssl_exclude_verify_flags"
            )
        if name == "ssl_check_hostname" and value.upper() in _FALSE:
            return (
                "the url turns the TLS host name check off (ssl_check_hostname), and "
                "genesys-mux keeps it on: remove ssl_check_hostname, and connect by a host "
                "name or address that the server's certificate holds"
            )
        if name not in allowed and name not in URL_TLS_OPTIONS:
            shown = f"the query option {name}" if _OPTION_NAME.match(name) else "a query option"
            tls = f", and for TLS {_listed(URL_TLS_OPTIONS)}" if scheme == "rediss" else ""
            return (
                f"the url has {shown}, which genesys-mux does not pass to Redis "
                f"(it takes {_listed(allowed)}{tls})"
            )
        if not _value_ok(name, value):
            return f"the url's option {name} is not a {_KINDS[name]}"
    return None


#: What the options with a value to check must hold.
_KINDS: Final = {
    "db": "database number (0, 1, ...)",
    "socket_timeout": "positive number of seconds",
    "socket_connect_timeout": "positive number of seconds",
    "health_check_interval": "whole number of seconds",
}


def _value_ok(name: str, value: str) -> bool:
    if name in ("db", "health_check_interval"):
        return value.isdigit()
    if name in ("socket_timeout", "socket_connect_timeout"):
        try:
            seconds = float(value)
        except ValueError:
            return False
        return math.isfinite(seconds) and seconds > 0
    return True


def check_redis_url(url: str, where: str) -> None:
    """Raise :class:`~genesys_mux.errors.ConfigError` when :func:`redis_url_problem` finds one.

    ``where`` names the URL's use (``"Redis sink events"``) and starts the
    message; the URL itself is never quoted.
    """
    problem = redis_url_problem(url)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")


def redis_name(url: str) -> str:
    """A Redis URL for messages: host, port and database only, never the password.

    Never raises: a URL that cannot be read (a password not percent-encoded,
    a port that is not a number) is named without any of it.
    """
    if "://" not in url or userinfo_not_encoded(url):
        return _UNREADABLE
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return _UNREADABLE
    if parts.scheme == "unix":
        return f"redis:unix:{parts.path}"
    # Only a database number: whatever else a path holds is not the name's to show.
    db = parts.path if parts.path.strip("/").isdigit() else ""
    return f"redis:{parts.hostname or 'localhost'}:{port or 6379}{db}"


#: What to do when :func:`tls_refused` (a sentence after the server's name).
TLS_REFUSED: Final = (
    "its TLS certificate was not accepted: give the CA that signed it with "
    "ssl_ca_certs=/path/to/ca.pem in the url, and connect by a host name or address "
    "that the certificate holds"
)


def tls_refused(exc: BaseException) -> bool:
    """Whether a failed connection is the server's TLS certificate, not accepted here.

    redis-py raises its ConnectionError for it, with the ssl module's error
    as the cause (or only its words): told apart, the message can say what
    to fix instead of "check that Redis runs there".
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def connect(url: str, where: str, **options: Any) -> aioredis.Redis:
    """A redis-py asyncio client for ``url``: it connects at its first command.

    Every client of genesys-mux's three uses of Redis is made here, so none
    connects to a URL that :func:`redis_url_problem` refuses
    (:class:`~genesys_mux.errors.ConfigError`, its message starting with
    ``where``). ``options`` go to ``Redis.from_url``; the URL's own query
    options win over them, as redis-py has it.
    """
    check_redis_url(url, where)
    import redis.asyncio as aioredis  # the [redis] extra: the callers imported it already

    return aioredis.Redis.from_url(url, **options)


# -- what each role asks of the server ------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisRole:
    """One of genesys-mux's uses of Redis: its name, what it keeps, what its user must run."""

    #: In messages: "the state store", "a cluster", "the Redis Streams sink".
    name: str
    #: What an eviction would lose, and what that costs (for the refusal).
    keeps: str
    #: Every command it sends, its scripts' included, in ACL terms (``script|load``
    #: is SCRIPT LOAD): what the URL's user must be allowed to run.
    commands: tuple[str, ...]


#: Checks at open that may be refused (then a warning): a user that may not
#: run them works, unchecked.
CHECK_COMMANDS: Final = ("info", "config|get")

STATE: Final = RedisRole(
    "the state store",
    "checkpoints and fencing claims, with no TTL: an evicted checkpoint restarts its "
    "stream at 1 with no restart gap",
    (
        "get",
        "set",
        "mget",
        "del",
        "rename",
        "scan",
        "hgetall",
        "hset",
        "hsetnx",
        "hdel",
        "hvals",
        "multi",
        "exec",
        "evalsha",
        "script|load",
    ),
)
CLUSTER: Final = RedisRole(
    "a cluster",
    "members, leases and fencing counters: an evicted lease lets a second instance take a "
    "stream its holder still carries",
    (
        "get",
        "set",
        "mget",
        "del",
        "scan",
        "pttl",
        "pexpire",
        "incr",
        "time",
        "evalsha",
        "script|load",
    ),
)
SINK: Final = RedisRole(
    "the Redis Streams sink",
    "records and their fence and de-duplication keys, with no TTL: an evicted record is "
    "an event lost without a word",
    (
        "ping",
        "xadd",
        "get",
        "set",
        "zadd",
        "zscore",
        "zremrangebyscore",
        "evalsha",
        "script|load",
    ),
)


async def server_problem(client: aioredis.Redis, role: RedisRole, where: str) -> str | None:
    """What makes the server at ``client`` unfit for ``role`` (None: nothing found).

    ``where`` names the server (:func:`redis_name`) and starts the answer.
    Asks ``INFO cluster`` and ``CONFIG GET maxmemory-policy``; one that is
    refused or unknown (renamed, not allowed to this user) gets a warning
    saying what to check by hand. A connection that fails raises redis-py's
    error: the caller says the server cannot be reached.
    """
    import redis.exceptions as rexc  # the [redis] extra: the callers imported it already

    unchecked: list[str] = []
    try:
        info = await client.info("cluster")
    except rexc.ResponseError as exc:
        unchecked.append(f"whether it runs as a Redis Cluster (INFO: {exc})")
    else:
        if str(info.get("cluster_enabled", 0)) == "1":
            return (
                f"{where}: this Redis runs as a Redis Cluster (cluster_enabled:1), and "
                f"genesys-mux does not support Redis Cluster for {role.name} (its client "
                "talks to one server, and its scripts change several keys at once): give it "
                "a standalone Redis server, or a primary with replicas"
            )
    try:
        answer = await client.config_get("maxmemory-policy")
    except rexc.ResponseError as exc:
        unchecked.append(f"its maxmemory-policy (CONFIG GET: {exc})")
    else:
        found = next(iter(answer.values()), b"") if answer else b""
        policy = found.decode() if isinstance(found, bytes) else str(found)
        if policy.startswith("allkeys-"):
            # A cluster's leases have a TTL: volatile-* may evict them (see below).
            also = "" if role is CLUSTER else " (or a volatile-* policy)"
            return (
                f"{where}: Redis evicts any key under memory pressure (maxmemory-policy "
                f"{policy}), and the keys of {role.name} must never be evicted ({role.keeps}): "
                f"set maxmemory-policy to noeviction{also}, or give genesys-mux a Redis of "
                "its own"
            )
        if role is CLUSTER and policy.startswith("volatile-"):
            log.warning(
                "%s: maxmemory-policy %s may evict keys with a TTL under memory pressure, "
                "and a cluster's leases and member keys have one: each lease evicted moves "
                "its stream (a failover gap). Prefer noeviction",
                where,
                policy,
            )
    if unchecked:
        log.warning(
            "%s: cannot tell %s; make sure it is a standalone Redis (not a Redis Cluster) "
            "that evicts no key without a TTL (maxmemory-policy noeviction, or volatile-*): "
            "the keys of %s must never be evicted",
            where,
            " nor ".join(unchecked),
            role.name,
        )
    return None


#: How Redis names the command it refused (NOPERM).
_REFUSED_COMMAND: Final = re.compile(r"run the '([a-z|_-]+)' command")


def is_permission_error(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a command or key to the URL's user (its ACL).

    redis-py raises ``NoPermissionError`` for a command it sent; a command
    refused inside a script comes back as a plain error reply saying so.
    """
    import redis.exceptions as rexc  # the [redis] extra: the callers imported it already

    if isinstance(exc, rexc.NoPermissionError):
        return True
    text = str(exc).lower()
    return isinstance(exc, rexc.ResponseError) and (
        "no permissions" in text or "can't run this command" in text
    )


def permission_problem(
    exc: BaseException, role: RedisRole, where: str, keys: str, doing: str
) -> str:
    """The message for a refusal :func:`is_permission_error` told: a configuration to fix.

    Says what could not be done (``doing``, as in "cannot write the
    state"), what was refused (the command, when Redis names it), and what
    to grant: the role's commands on ``keys`` (the pattern of its keys).
    """
    said = str(exc)
    named = _REFUSED_COMMAND.search(said)
    if named is not None:
        refused = f"the command {named[1].upper()}"
    elif "key" in said.lower():
        refused = f"access to a key under {keys}"
    else:
        refused = "a command of genesys-mux's script"
    grant = " ".join(f"+{c}" for c in (*role.commands, *CHECK_COMMANDS))
    return (
        f"{where}: cannot {doing}: Redis refused {refused} to the url's user ({said}). "
        f"That is the user's ACL, not an outage, and no retry fixes it: allow it what "
        f"{role.name} runs ({grant}) on the keys {keys} (see Redis permissions in the "
        "configuration documentation)"
    )
