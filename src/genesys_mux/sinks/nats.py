"""A sink that publishes items to NATS JetStream, acknowledged by the server one by one.

Theory of operation
-------------------
Each item becomes one message on a subject made from a template
(``genesys.{stream}`` by default: ``{stream}`` is the genesys-mux stream id),
with the shared wire record of :mod:`genesys_mux.sinks.base` as its payload
and two headers: ``Nats-Msg-Id``, the record's ``idempotency_key``, and, when a
JetStream stream is named, ``Nats-Expected-Stream``, so a message that some
other stream would capture is refused instead of stored in the wrong place.

A batch is published as a whole before any acknowledgement is awaited: every
message goes out on the one connection, in order, each with its own reply
subject under an inbox this sink subscribes to once; then the sink waits (up
to ``ack_timeout_s`` for the whole batch) for JetStream's PubAck of each. The
server stores the messages of one connection in the order it reads them, so
the stream keeps the batch's order. The batch is delivered only when *every*
message is acknowledged; an acknowledgement with ``duplicate: true`` (the
server already had that ``Nats-Msg-Id``) counts as delivered.

Failures follow the Redis sink's rules. A connection that is down or
reconnecting, a missing acknowledgement (timeout), JetStream being
unavailable or out of resources, and "no responders" (no stream captures the
subject) are retryable: the runner backs off and sends the *whole* batch
again. Re-sent messages carry the same ``Nats-Msg-Id``, so within the
stream's duplicate window (two minutes unless the stream says otherwise) the
server drops the ones it stored the first time: a timed-out or cut-off batch
does not leave duplicates in the stream. Errors that waiting cannot fix (a
refused login, a message larger than the server's limit, the wrong stream,
a bad subject) are not retryable, and the runner dead-letters the batch. The
server's ``max_payload`` counts the headers too (and a message over it makes
the server close the connection, which would read as a retryable lost
connection): the sink checks every message of a batch, headers included,
before it publishes any, and refuses the batch when one is too large.

Connecting: :meth:`NatsJetStreamSink.start` connects and, when ``stream`` is
set, checks that the stream exists (or creates it with ``create_stream``).
A server that cannot be reached is not fatal there: ``send`` connects again
on every attempt, as a retryable failure, until it can. A stream that does
not exist is fatal at start (a clear :class:`~genesys_mux.errors.SinkError`)
and a non-retryable failure on a later connection. A lost connection fails
the batch in flight at once (retryable); the next attempt connects anew. The
client's own reconnection loop is off, so the runner's backoff is the only
retry loop and every failure is reported as it happens.

The ``nats-py`` package is imported only when a sink is made, so importing
genesys-mux does not need it; without it, making a sink raises a
:class:`~genesys_mux.errors.MissingExtraError` naming ``pip install
'genesys-mux[nats]'``. Credentials (a password, a token, a credentials or
nkey seed file's contents) are kept in :class:`~genesys_mux.sinks.base.Hidden`
and never appear in reprs, logs or errors; servers are given without
credentials in their URLs. For ``tls://`` servers the certificate is always
verified (against the system's CAs, or ``tls_ca_file``).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import logging
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux.core.redaction import redact_url, url_has_userinfo, userinfo_not_encoded
from genesys_mux.errors import ConfigError, SinkError
from genesys_mux.sinks.base import Hidden, Item, encode_record, idempotency_key

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = [
    "DEFAULT_SUBJECT",
    "NatsJetStreamSink",
    "check_subject_template",
    "render_subject",
    "stream_subjects_for",
]

log = logging.getLogger("genesys_mux.sinks.nats")

#: The subject template by default: one subject per genesys-mux stream.
DEFAULT_SUBJECT: Final = "genesys.{stream}"

_PLACEHOLDER: Final = "{stream}"
# A subject token: no whitespace, no wildcard, not empty (a..b or a trailing dot).
_TOKEN: Final = re.compile(r"^[^\s.*>]+$")
_SCHEMES: Final = ("nats", "tls")

# JetStream error codes (err_code) for limits that a consumer or a trim can
# free again: worth waiting for, like a Redis that is out of memory. The
# server sends these with code 503 too; a message over the stream's size
# limit (10054) or the wrong stream (10060) come as 400 and are final.
_RESOURCE_ERR_CODES: Final = frozenset({10023, 10077})


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish: an acknowledgement or an error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_PUBACK: Final = msgspec.json.Decoder(_PubAck)


def render_subject(template: str, stream_id: str) -> str:
    """The subject of ``stream_id``'s items: ``{stream}`` in ``template`` replaced by it."""
    return template.replace(_PLACEHOLDER, stream_id)


def check_subject_template(template: str, stream_id: str | None = None) -> str | None:
    """Why ``template`` (rendered for ``stream_id`` when given) is not a subject to publish to.

    None when it is fine. Only ``{stream}`` may appear in braces; the
    subject must be dot-separated tokens without spaces or wildcards.
    """
    bare = template.replace(_PLACEHOLDER, "x")
    if "{" in bare or "}" in bare:
        return "only {stream} may appear in braces (the genesys-mux stream id)"
    subject = render_subject(template, stream_id if stream_id is not None else "x")
    if not all(_TOKEN.match(token) for token in subject.split(".")):
        where = f" for stream {stream_id!r}" if stream_id is not None else ""
        return (
            f"{subject!r}{where} is not a NATS subject to publish to: use dot-separated "
            "tokens without spaces, empty tokens or the wildcards * and >"
        )
    return None


def stream_subjects_for(template: str) -> list[str] | None:
    """The subjects a JetStream stream needs to capture every subject of ``template``.

    ``genesys.{stream}`` gives ``genesys.>`` (stream ids may hold dots); a
    template without ``{stream}`` gives itself. None when no wildcard covers
    it (``{stream}`` not at the end): the stream's subjects must then be given.
    """
    if _PLACEHOLDER not in template:
        return [template]
    if template.endswith("." + _PLACEHOLDER) and template.count(_PLACEHOLDER) == 1:
        return [template[: -len(_PLACEHOLDER)] + ">"]
    return None


def _import_nats() -> ModuleType:
    """The ``nats`` package, or a MissingExtraError saying how to install it."""
    try:
        return importlib.import_module("nats")
    except ModuleNotFoundError as exc:
        raise_if_extra_missing(exc, "the NATS sink")
        raise


class NatsJetStreamSink:
    """Items published to NATS JetStream, each acknowledged before the batch counts as sent.

    ``servers`` are ``nats://`` or ``tls://`` URLs without credentials.
    ``subject`` is the template of each item's subject (``{stream}`` is the
    genesys-mux stream id). ``stream`` names the JetStream stream the
    messages must land in (checked at start; created with ``create_stream``,
    capturing ``stream_subjects`` or the subjects the template implies, with
    ``duplicate_window_s`` as its de-duplication window and ``storage``).
    ``ack_timeout_s`` bounds the wait for a batch's acknowledgements,
    ``connect_timeout_s`` each connection attempt. Credentials: ``user`` and
    ``password``, or ``token``, or a ``creds_file`` (a JWT and nkey seed),
    or an ``nkey_seed_file``; at most one kind. ``tls_ca_file`` adds a CA
    to verify ``tls://`` servers with.
    """

    def __init__(
        self,
        servers: Sequence[str] = ("nats://127.0.0.1:4222",),
        *,
        subject: str = DEFAULT_SUBJECT,
        stream: str | None = None,
        create_stream: bool = False,
        stream_subjects: Sequence[str] | None = None,
        duplicate_window_s: float = 120.0,
        storage: Literal["file", "memory"] = "file",
        ack_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds_file: str | None = None,
        nkey_seed_file: str | None = None,
        tls_ca_file: str | None = None,
        name: str = "nats",
    ) -> None:
        self._nats = _import_nats()
        servers = list(servers)
        if not servers:
            raise ConfigError(f"NATS sink {name}: give at least one server")
        for server in servers:
            # Credentials first, also those that cannot be read ('/', '?' or
            # '#' not percent-encoded: nats://u:Pa/ss@h reads as the host u),
            # so that no message or repr can quote any of them.
            if userinfo_not_encoded(server):
                raise ConfigError(
                    f"NATS sink {name}: a server URL holds credentials, with '/', '?' or '#' "
                    "not percent-encoded so that part of them reads as the host, port or path; "
                    "take them out of the URL and give them as user and password, token, "
                    "creds_file or nkey_seed_file"
                )
            if url_has_userinfo(server):
                raise ConfigError(
                    f"NATS sink {name}: server {redact_url(server)!r} holds credentials; "
                    "give them as user and password, token, creds_file or nkey_seed_file"
                )
            try:
                parts = urlsplit(server)
                _ = parts.port  # parsed lazily: a bad one fails here, not at connect
            except ValueError:  # "Invalid IPv6 URL", a port that is not a number
                parts = None
            if parts is None or parts.scheme not in _SCHEMES or not parts.hostname:
                raise ConfigError(
                    f"NATS sink {name}: server {redact_url(server)!r} must be a "
                    "nats://host:port or tls://host:port URL"
                )
        problem = check_subject_template(subject)
        if problem is not None:
            raise ConfigError(f"NATS sink {name}: subject {subject!r}: {problem}")
        if ack_timeout_s <= 0 or connect_timeout_s <= 0 or duplicate_window_s < 0:
            raise ConfigError(
                f"NATS sink {name}: ack_timeout_s and connect_timeout_s must be positive, "
                "duplicate_window_s not negative"
            )
        kinds = [
            kind
            for kind, given in (
                ("user/password", user is not None or password is not None),
                ("token", token is not None),
                ("creds_file", creds_file is not None),
                ("nkey_seed_file", nkey_seed_file is not None),
            )
            if given
        ]
        if len(kinds) > 1:
            raise ConfigError(
                f"NATS sink {name}: give one kind of credentials, not {' and '.join(kinds)}"
            )
        for key, path in (("creds_file", creds_file), ("nkey_seed_file", nkey_seed_file)):
            if path is None:
                continue
            if importlib.util.find_spec("nkeys") is None:
                raise ConfigError(
                    f"NATS sink {name}: {key} needs the nkeys package, which is not "
                    "installed: run pip install nkeys"
                )
            if not os.path.isfile(path):
                raise ConfigError(f"NATS sink {name}: {key} {path} does not exist or is not a file")
        if (user is None) != (password is None):
            raise ConfigError(f"NATS sink {name}: user and password go together")
        if create_stream and stream is None:
            raise ConfigError(f"NATS sink {name}: create_stream needs the stream's name (stream)")
        if create_stream and stream_subjects is None:
            stream_subjects = stream_subjects_for(subject)
            if stream_subjects is None:
                raise ConfigError(
                    f"NATS sink {name}: no wildcard covers the subject {subject!r}; give "
                    "stream_subjects for the stream to create"
                )
        self.name = name
        self.servers = servers
        self.subject = subject
        self.stream = stream
        self.create_stream = create_stream
        self.stream_subjects = list(stream_subjects) if stream_subjects is not None else None
        self.duplicate_window_s = duplicate_window_s
        self.storage = storage
        #: How long a batch's acknowledgements may take, all together.
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.user = user
        # The secrets: kept where no repr, log or dump shows them.
        self._password = None if password is None else Hidden(password)
        self._token = None if token is None else Hidden(token)
        self.creds_file = creds_file
        self.nkey_seed_file = nkey_seed_file
        self.tls_ca_file = tls_ca_file
        #: Messages JetStream acknowledged, and those of them it already had.
        self.published = 0
        self.duplicates = 0
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._inbox = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        auth = (
            "user/password"
            if self.user is not None
            else "token"
            if self._token is not None
            else "creds_file"
            if self.creds_file is not None
            else "nkey_seed_file"
            if self.nkey_seed_file is not None
            else "none"
        )
        return (
            f"NatsJetStreamSink(name={self.name!r}, servers={self.servers!r}, "
            f"subject={self.subject!r}, stream={self.stream!r}, auth={auth})"
        )

    def subject_for(self, stream_id: str) -> str:
        """The subject of a genesys-mux stream's items."""
        return render_subject(self.subject, stream_id)

    # -- connecting --------------------------------------------------------------

    async def start(self) -> None:
        """Connect and check (or create) the stream, or raise ``SinkError``.

        A server that cannot be reached is retryable (the sink runner starts
        the sink again after its backoff); a refused login or a missing
        stream is not.
        """
        await self._ready()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not any(urlsplit(s).scheme == "tls" for s in self.servers) and not self.tls_ca_file:
            return None
        # Verification stays on: hostnames and chains are checked, always.
        return ssl.create_default_context(cafile=self.tls_ca_file)

    def _connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "servers": self.servers,
            "name": f"genesys-mux {self.name}",
            "connect_timeout": self.connect_timeout_s,
            # A short, bounded connect per send (two tries per server, the
            # fewest the client allows): the runner's backoff is the only
            # retry loop, so a server that is down is reported at once (the
            # client's own loop would retry for minutes, or for ever, inside
            # a single send), and a lost connection fails the batch in flight
            # at once rather than after its ack timeout.
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "error_cb": self._on_error,
            "closed_cb": self._on_closed,
        }
        tls = self._tls_context()
        if tls is not None:
            options["tls"] = tls
        if self.user is not None and self._password is not None:
            options["user"] = self.user
            options["password"] = self._password.value
        if self._token is not None:
            options["token"] = self._token.value
        if self.creds_file is not None:
            options["user_credentials"] = self.creds_file
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = self.nkey_seed_file
        return options

    async def _on_error(self, exc: Exception) -> None:
        # The client's own errors name servers at most (they hold no
        # credentials: those are refused in server URLs).
        log.debug("NATS client of sink %s: %s: %s", self.name, type(exc).__name__, exc)

    async def _on_closed(self) -> None:
        # The acknowledgements still awaited will never come on this connection.
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the connection to NATS was lost"))

    async def _ready(self) -> Client:
        """The connected client, connecting (and checking the stream) first if needed."""
        async with self._connecting:
            client = self._client
            if client is not None and client.is_connected:
                return client
            if client is not None:
                # Lost since the last send: a fresh connection replaces it.
                log.warning("sink %s: the connection to NATS was lost; reconnecting", self.name)
                await _close_quietly(client)
            self._client = None
            client = await self._connect()
            try:
                if self.stream is not None:
                    await self._check_stream(client)
                self._inbox = client.new_inbox()
                self._subscription = await client.subscribe(f"{self._inbox}.*", cb=self._on_ack)
            except BaseException:
                await _close_quietly(client)
                raise
            self._client = client
            return client

    async def _connect(self) -> Client:
        client: Client = importlib.import_module("nats.aio.client").Client()
        try:
            await client.connect(**self._connect_options())
        except Exception as exc:
            # A refused login leaves the socket open otherwise. After a failed
            # TLS handshake the client's close waits for a goodbye that never
            # comes: a short bound keeps the failure quick to report.
            await _close_quietly(client, timeout_s=0.5)
            raise self._translate(exc, "cannot connect to NATS") from exc
        return client

    async def _check_stream(self, client: Client) -> None:
        assert self.stream is not None
        errors = importlib.import_module("nats.js.errors")
        js = client.jetstream(timeout=self.connect_timeout_s)
        try:
            info = await js.stream_info(self.stream)
        except errors.NotFoundError:
            info = None
        except Exception as exc:
            raise self._translate(
                exc, f"cannot look up the JetStream stream {self.stream}"
            ) from exc
        if info is not None:
            window = info.config.duplicate_window or 0
            if window < self.ack_timeout_s * 2:
                log.warning(
                    "sink %s: JetStream stream %s keeps message ids for %.1f s only; re-sent "
                    "batches may be stored twice",
                    self.name,
                    self.stream,
                    window,
                )
            return
        if not self.create_stream:
            raise SinkError(
                f"sink {self.name}: the JetStream stream {self.stream!r} does not exist on "
                f"{', '.join(self.servers)}; create it (capturing {self.subject!r}) or set "
                "create_stream = true",
                retryable=False,
            )
        api = importlib.import_module("nats.js.api")
        try:
            await js.add_stream(
                name=self.stream,
                subjects=self.stream_subjects,
                duplicate_window=self.duplicate_window_s,
                storage=api.StorageType.FILE if self.storage == "file" else api.StorageType.MEMORY,
            )
        except Exception as exc:
            raise self._translate(exc, f"cannot create the JetStream stream {self.stream}") from exc
        log.info("sink %s: created JetStream stream %s", self.name, self.stream)

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        waiter = self._waiting.pop(token, None)
        # A late answer to a batch that already timed out finds no waiter.
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    # -- sending -----------------------------------------------------------------

    async def send(self, batch: Sequence[Item]) -> None:
        """Publish every item, then wait for every PubAck; raise ``SinkError`` otherwise."""
        if not batch:
            return
        client = await self._ready()
        messages = [(item, encode_record(item), self._headers(item)) for item in batch]
        # Before anything is published: the server closes the connection on a
        # message over its limit (headers included), and that reads as a lost
        # connection, retried for ever. nats-py checks the payload alone.
        for _item, payload, headers in messages:
            self._check_size(client, payload, headers)
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Msg]] = []
        tokens: list[str] = []
        try:
            for item, payload, headers in messages:
                token = str(next(self._tokens))
                waiter: asyncio.Future[Msg] = loop.create_future()
                self._waiting[token] = waiter
                tokens.append(token)
                waiters.append(waiter)
                # Each publish only appends to the client's buffer, in order;
                # its flusher writes them out while the next ones are added.
                await client.publish(
                    self.subject_for(item.stream_id),
                    payload,
                    reply=f"{self._inbox}.{token}",
                    headers=headers,
                )
            done, _ = await asyncio.wait(waiters, timeout=self.ack_timeout_s)
        except SinkError:
            raise
        except Exception as exc:
            raise self._translate(exc, "publishing failed") from exc
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
            for waiter in waiters:
                waiter.cancel()
        self._account(batch, waiters, done)

    def _headers(self, item: Item) -> dict[str, str]:
        headers = {"Nats-Msg-Id": idempotency_key(item)}
        if self.stream is not None:
            headers["Nats-Expected-Stream"] = self.stream
        return headers

    def _check_size(self, client: Client, payload: bytes, headers: dict[str, str]) -> None:
        """Refuse (not retryable) a message the server would take for a protocol violation."""
        limit = client.max_payload
        header_size = _header_size(headers)
        if len(payload) + header_size <= limit:
            return
        # Short, to fit a dead letter's reason; the letter names the record.
        raise SinkError(
            f"sink {self.name}: a record of {len(payload)} bytes plus {header_size} of headers "
            f"is over the server's max_payload of {limit} bytes; raise max_payload on the "
            "NATS servers to send events this large",
            retryable=False,
        )

    def _account(
        self,
        batch: Sequence[Item],
        waiters: Sequence[asyncio.Future[Msg]],
        done: Iterable[asyncio.Future[Msg]],
    ) -> None:
        """Count the acknowledgements; raise for the first kind of failure, permanent first."""
        answered = set(done)
        acked = duplicates = missing = 0
        retryable: list[str] = []
        permanent: list[str] = []
        for item, waiter in zip(batch, waiters, strict=True):
            if waiter not in answered:
                missing += 1
                continue
            if waiter.exception() is not None:
                retryable.append(f"{idempotency_key(item)}: {waiter.exception()}")
                continue
            problem, can_retry, duplicate = self._judge(waiter.result())
            if problem is None:
                acked += 1
                duplicates += duplicate
            elif can_retry:
                retryable.append(f"{idempotency_key(item)}: {problem}")
            else:
                permanent.append(f"{idempotency_key(item)}: {problem}")
        self.published += acked
        self.duplicates += duplicates
        if permanent:
            raise SinkError(
                f"sink {self.name}: JetStream refused {len(permanent)} of {len(batch)} "
                f"messages; first: {permanent[0]}",
                retryable=False,
            )
        if retryable or missing:
            parts = []
            if missing:
                parts.append(
                    f"{missing} of {len(batch)} not acknowledged within {self.ack_timeout_s:g} s"
                )
            if retryable:
                parts.append(f"{len(retryable)} failed, first: {retryable[0]}")
            raise SinkError(f"sink {self.name}: {'; '.join(parts)}", retryable=True)

    def _judge(self, msg: Msg) -> tuple[str | None, bool, bool]:
        """(problem or None, retryable, duplicate) of one reply."""
        status = (msg.headers or {}).get("Status")
        if status == "503":
            return "no JetStream stream captures the subject (no responders)", True, False
        try:
            ack = _PUBACK.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return f"not a JetStream acknowledgement: {msg.data[:100]!r}", False, False
        if ack.error is not None:
            error = ack.error
            retry = error.code >= 500 or error.err_code in _RESOURCE_ERR_CODES
            return (
                f"JetStream error {error.code}/{error.err_code}: {error.description}",
                retry,
                False,
            )
        if not ack.stream:
            return "an empty JetStream acknowledgement", False, False
        return None, False, ack.duplicate

    # -- errors and closing ---------------------------------------------------------

    def _translate(self, exc: Exception, doing: str) -> SinkError:
        """A SinkError for a nats-py (or OS) error, retryable when waiting may fix it."""
        errors = self._nats.errors
        js_errors = importlib.import_module("nats.js.errors")
        name = type(exc).__name__
        detail = str(exc) or getattr(exc, "description", None) or name
        permanent = (
            errors.AuthorizationError,
            errors.MaxPayloadError,
            errors.BadSubjectError,
            errors.BadHeaderError,
            errors.InvalidUserCredentialsError,
            errors.SecureConnRequiredError,
            errors.SecureConnWantedError,
            ssl.SSLCertVerificationError,
            FileNotFoundError,
            PermissionError,
            js_errors.BadRequestError,
        )
        if isinstance(exc, permanent) or "authorization" in detail.lower():
            retryable = False
        elif isinstance(exc, js_errors.APIError):
            code = exc.code or 0
            retryable = code >= 500 or code == 0
        else:
            # Connection refused, timeouts, no servers, closed or stale
            # connections, a full outbound buffer: the server may come back.
            retryable = True
        detail = self._scrub(str(detail))[:200]
        return SinkError(f"sink {self.name}: {doing}: {name}: {detail}", retryable=retryable)

    def _scrub(self, text: str) -> str:
        for secret in (self._password, self._token):
            if secret is not None and secret.value:
                text = text.replace(secret.value, "***")
        return text

    async def close(self) -> None:
        """Close the connection; messages not yet acknowledged are the runner's to re-send."""
        client, self._client = self._client, None
        self._subscription = None
        for waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()
        if client is not None:
            await _close_quietly(client)


def _header_size(headers: dict[str, str]) -> int:
    """The bytes nats-py writes for ``headers``: ``NATS/1.0``, one line each, a blank line."""
    size = len(b"NATS/1.0\r\n") + len(b"\r\n")
    for key, value in headers.items():
        size += len(key.encode()) + len(b": ") + len(value.encode()) + len(b"\r\n")
    return size


async def _close_quietly(client: Client, timeout_s: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await client.close()
    except Exception as exc:
        log.debug("closing a NATS connection: %s", type(exc).__name__)
