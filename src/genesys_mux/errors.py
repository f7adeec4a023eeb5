"""Every exception genesys-mux raises on purpose derives from one root.

The tree, split by what the caller can do about it::

    GenesysMuxError                 root: catch this to catch everything we raise
    ├── ConfigError                 the caller gave us something unusable; fix the input
    │   ├── UnknownRegionError      a region name or domain we do not know
    │   ├── InvalidIdError          an entity id that is unsafe in a URL or a topic
    │   ├── InvalidTopicError       a topic that is not in the Genesys grammar
    │   ├── StreamConfigError       one or more stream definitions are invalid;
    │   │   │                       carries every error with its path
    │   │   └── ConfigFileError     the same, for a whole configuration file
    │   ├── CapacityError           the desired topics do not fit in the channels
    │   │                           the platform allows
    │   └── RedisPermissionError    Redis refused a command to the URL's user (its
    │                               ACL): grant the permission; waiting will not help.
    │                               Each Redis role raises it as one of its own kind:
    │                               StatePermissionError (also a StateError),
    │                               ClusterPermissionError (also a ClusterError),
    │                               SinkPermissionError (also a SinkError)
    ├── AuthenticationError         the OAuth client credentials were refused: fatal,
    │                               fix the id, secret or region; never retried
    ├── ApiError                    a REST call failed for good; carries the Genesys
    │   │                           status, code and contextId
    │   ├── RateLimitedError        still throttled (429) after every retry
    │   └── UnusableChannelError    a channel was made, but its answer cannot be used
    │                               (its connectUri on another host, a bad id)
    ├── TransportError              the network failed (connect, timeout, socket);
    │                               transient: the caller may try again later
    ├── FrameError                  bytes from a socket that are not a JSON frame;
    │                               the connection carries on, the frame is reported
    ├── InvalidStateError           a method called when the object cannot serve it
    │                               (before ``start()``, after ``stop()``)
    ├── MissingExtraError           a feature needs a package of an optional extra that
    │                               is not installed; names the ``pip install`` to run
    │                               (also an ImportError)
    ├── StateError                  the state store cannot be used (corrupt, foreign,
    │   │                           a newer schema, unreachable); nothing is overwritten
    │   └── FencedStateError        checkpoints refused: a newer owner claimed the
    │                               streams (a cluster's fencing token)
    ├── ClusterError                the cluster's Redis cannot be reached or used; an
    │                               instance then stops forwarding what it cannot prove
    │                               it owns
    └── SinkError                   a sink could not take a batch; ``retryable`` says
        │                           whether sending the same batch again may succeed
        ├── FencedError             the sink refused the batch: another instance owns
        │                           the stream now (a newer fencing token wrote there)
        └── SinkStartError          a sink cannot start, and waiting will not fix it (a
                                    missing destination, a refused login)

Errors from third-party libraries (aiohttp, redis, msgspec, pydantic, the OS)
are translated into this tree at the boundary where they happen, so callers
never need to import those libraries to handle our failures; the original is
kept as ``__cause__`` (``raise ... from exc``) for whoever debugs it.

Messages never include tokens or secrets: they name *what* was wrong, *where*,
and *what to do*.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ApiError",
    "AuthenticationError",
    "CapacityError",
    "ClusterError",
    "ClusterPermissionError",
    "ConfigError",
    "ConfigFileError",
    "FencedError",
    "FencedStateError",
    "FrameError",
    "GenesysMuxError",
    "InvalidIdError",
    "InvalidStateError",
    "InvalidTopicError",
    "MissingExtraError",
    "RateLimitedError",
    "RedisPermissionError",
    "SinkError",
    "SinkPermissionError",
    "SinkStartError",
    "StateError",
    "StatePermissionError",
    "StreamConfigError",
    "TransportError",
    "UnknownRegionError",
    "UnusableChannelError",
]


class GenesysMuxError(Exception):
    """Root of every exception genesys-mux raises on purpose."""


class ConfigError(GenesysMuxError):
    """The caller supplied a value we cannot use. Retrying will not help."""


class UnknownRegionError(ConfigError):
    """A region name or domain that is not one of the Genesys Cloud regions."""


class InvalidIdError(ConfigError):
    """An entity id that could smuggle characters into a URL path or a topic."""


class InvalidTopicError(ConfigError):
    """A topic string outside the Genesys Notifications topic grammar."""


class StreamConfigError(ConfigError):
    """One or more stream definitions are invalid.

    ``errors`` holds every problem found, as ``(path, message)`` pairs such
    as ``("streams[2].filter.channelType", "Input should be 'voice', ...")``,
    so a config with several mistakes is fixed in one pass rather than one
    error per run. ``str()`` lists them all, one per line.
    """

    #: What the errors are in, for the first line of the message.
    subject = "the stream configuration"

    def __init__(self, errors: Iterable[tuple[str, str]]) -> None:
        self.errors: tuple[tuple[str, str], ...] = tuple(errors)
        # The errors themselves are the args, so the exception pickles and
        # ``repr`` shows the detail without a second copy of the text.
        super().__init__(self.errors)

    def __str__(self) -> str:
        count = len(self.errors)
        noun = "error" if count == 1 else "errors"
        lines = [f"{count} {noun} in {self.subject}:"]
        lines += [f"  {path}: {message}" for path, message in self.errors]
        lines.append(
            "Fix the value at each path shown and try again; "
            "`genesys-mux schema` prints every allowed key."
        )
        return "\n".join(lines)


class ConfigFileError(StreamConfigError):
    """One or more mistakes in a configuration file, each with its path."""

    def __init__(
        self, errors: Iterable[tuple[str, str]], source: str = "the configuration file"
    ) -> None:
        super().__init__(errors)
        self.subject = source


class CapacityError(ConfigError):
    """The desired topics do not fit in the channels the platform allows.

    ``unplaced`` holds the topics that were left out, in the order they were
    asked for. The planner that raised it keeps its previous plan unchanged,
    so the caller can ask for fewer topics and try again.
    """

    def __init__(self, message: str, unplaced: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unplaced = unplaced


class AuthenticationError(GenesysMuxError):
    """Genesys Cloud refused the OAuth client credentials.

    Fatal: retrying would only risk a lock-out. The message says which
    settings to check; it never contains the secret.
    """


class ApiError(GenesysMuxError):
    """A REST call that failed and will not succeed by retrying it as is.

    ``status`` is the HTTP status, ``code`` the Genesys error code (such as
    ``notification.unauthorized.topic``) and ``context_id`` the id Genesys
    support asks for.
    """

    def __init__(
        self, message: str, *, status: int, code: str | None = None, context_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.context_id = context_id


class RateLimitedError(ApiError):
    """Still answered 429 after every retry allowed."""


class UnusableChannelError(ApiError):
    """The platform made a channel, but its answer cannot be used: its connectUri, its id.

    A ``connectUri`` on a host other than the region's (or the base URL's)
    streaming host is not followed: it would carry the subscriptions'
    events elsewhere. Each attempt makes a channel, which counts against
    the client's 20 and may evict another application's idle one, so a
    pool gives up after a few in a row (a proxy or a base URL to fix).
    """


class TransportError(GenesysMuxError):
    """The network failed: no answer, a timeout, a dropped socket. Transient."""


class FrameError(GenesysMuxError):
    """A WebSocket message that is not a JSON document.

    ``data`` holds at most the first 200 bytes of the offending message, for
    diagnostics; notification frames never carry credentials.
    """

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data[:200]


class InvalidStateError(GenesysMuxError):
    """A method was called in a state that cannot serve it; the message says what to do."""


class MissingExtraError(GenesysMuxError, ImportError):
    """A feature needs a package that comes with an optional extra, and it is not installed.

    ``pip install genesys-mux`` (``.`` in a checkout) is the library alone; the Redis sink, state
    store and cluster need ``[redis]``, the NATS sink ``[nats]``, the Prometheus metrics and admin
    server ``[metrics]``, the command line ``[cli]``. The message names the
    feature, the missing package and the command that installs it. It is
    also an :class:`ImportError` (raised while importing the module that
    needs the package), so ``except ImportError`` around an optional import
    keeps working.
    """

    def __init__(self, feature: str, package: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs the Python package {package!r}, which is not installed; "
            f"install it with: pip install 'genesys-mux[{extra}]' "
            f"(in a checkout of genesys-mux: pip install '.[{extra}]')",
            name=package,
        )
        self.feature = feature
        self.package = package
        self.extra = extra


class StateError(GenesysMuxError):
    """The state store cannot be used as it is; the message names it and says what to do."""


class FencedStateError(StateError):
    """The store refused checkpoints: a newer owner claimed their streams (a larger fence).

    ``streams`` maps each refused stream to the fencing token that claimed
    it. This instance lost those streams (a lease that expired while it was
    frozen, say): its checkpoints of them must stop, and nothing it wrote
    for them was kept.
    """

    def __init__(self, message: str, streams: dict[str, int]) -> None:
        super().__init__(message)
        self.streams = streams


class ClusterError(GenesysMuxError):
    """The cluster's Redis cannot be reached or used; the message names it and says what to do."""


class SinkError(GenesysMuxError):
    """A sink could not take a batch.

    ``retryable`` is True when sending the very same batch again may succeed
    (a restarting Redis, a 5xx, a timeout) and False when it will not (a 4xx,
    a bad key type): the batch then goes to the dead-letter queue at once.
    ``retry_after`` is the server's own ``Retry-After`` hint in seconds, when
    it gave one; the sink runner waits that long instead of its backoff.
    Messages name the sink and the failure, never a secret or a credential.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class FencedError(SinkError):
    """A sink refused a batch whose fencing token is older than the stream's latest.

    Another instance holds the stream now: the batch is its to deliver, so
    it is neither retried nor dead-lettered here, only counted.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class RedisPermissionError(ConfigError):
    """Redis refused a command to the user of its URL: a permission its ACL lacks.

    A ``NOPERM`` answer (a command, a script or a key pattern the user may
    not use) is a configuration to fix, not an outage: no retry succeeds
    until the user is granted what the message lists. Raised as the kind of
    error of the part that met it (:class:`StatePermissionError`,
    :class:`ClusterPermissionError`, :class:`SinkPermissionError`), so that
    code catching that part's errors catches it too.
    """


class StatePermissionError(RedisPermissionError, StateError):
    """The Redis state store was refused a command: its user needs the permissions listed."""


class ClusterPermissionError(RedisPermissionError, ClusterError):
    """A cluster's Redis refused a command to its user: grant the permissions listed.

    Also a :class:`ClusterError`, so code that treats that as an outage stays
    safe (it stops forwarding what it cannot prove it owns); code that knows
    better stops on it, as waiting does not help.
    """


class SinkPermissionError(RedisPermissionError, SinkError):
    """The Redis Streams sink was refused a command: never retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class SinkStartError(SinkError):
    """A sink of a stream cannot start, and no wait will fix it: its configuration must change.

    A missing destination (a NATS stream that does not exist and may not be
    created), a refused login, a file that cannot be created. ``stream_id``
    and ``sink_name`` say which; ``reason`` is the sink's own short message.
    The stream cannot be delivered, so ``genesys-mux run`` stops on it.
    """

    def __init__(self, stream_id: str, sink_name: str, reason: str) -> None:
        super().__init__(
            f"stream {stream_id}: sink {sink_name} cannot start: {reason}", retryable=False
        )
        self.stream_id = stream_id
        self.sink_name = sink_name
        self.reason = reason
