"""A sink that POSTs batches of items to an HTTP endpoint, signed with HMAC-SHA256.

Theory of operation
-------------------
Each batch is one ``POST`` with the JSON body ``{"items": [record, ...]}``,
where each record is the shared wire record of :mod:`genesys_mux.sinks.base`.
The body is assembled from the already-encoded records, so each event's
``event_body`` reaches the receiver byte for byte as Genesys sent it.

Two signing schemes (``signing``):

``"standard"`` (the default): `Standard Webhooks`_, which receivers can
check with any of that project's libraries.

* ``webhook-id``: ``msg_`` and 32 hex digits naming the batch (see
  :func:`webhook_id`): the same on every retry of a batch, so receivers
  de-duplicate on it, and different for any other batch.
* ``webhook-timestamp``: Unix time in whole seconds of this attempt.
* ``webhook-signature``: ``v1,<base64>`` per signing secret, separated by
  spaces, each the HMAC-SHA256 under that secret of
  ``<id> "." <timestamp> "." <body bytes>``. Several secrets give several
  signatures: a receiver accepts the request when any one matches, which
  lets a secret be rotated without downtime.

The secrets are ``whsec_<base64>``, as the standard serialises them; the
key is the decoded bytes (24 to 64 of them). A secret without the prefix
is refused rather than guessed at: the standard's own libraries read such
a string as base64, a person would read it as text, and the two sides
would then disagree on the key in silence. :func:`generate_secret` makes
a good one.

``"genesys-mux"``: the scheme of earlier releases, unchanged.

* ``X-Genesys-Mux-Timestamp``: Unix time in whole seconds when the request
  was signed.
* ``X-Genesys-Mux-Signature``: ``sha256=<hex>``, the HMAC-SHA256 under the
  shared secret (its UTF-8 bytes, any text) of the *signed material*
  ``<timestamp> "." <body bytes>``.

Both schemes also send:

* ``Idempotency-Key``: ``<first key>..<last key>`` of the batch. A re-sent
  batch has the same items, so the same key (and the same body; only the
  timestamp and signature change).
* ``X-Genesys-Mux-Fence`` (in a cluster): the fencing token of the sending
  instance's lease on the stream. It grows at every change of owner, so a
  receiver that keeps the largest token it has seen per stream (the items'
  ``stream_id``) and answers **409** to a smaller one shuts out an ex-owner
  that was frozen past its lease. A 409 to a fenced batch is counted
  (``fenced``), neither retried nor dead-lettered: the stream's new owner
  delivers those events. The fence is not signed in the standard scheme
  (only id, timestamp and body are); a forger without the secret cannot
  make a body to go with a fence of its choosing anyway.

Covering the timestamp lets a receiver refuse replays of an old request:
:func:`verify` and :func:`verify_signature` allow 300 s of skew by default.

Outcomes: any 2xx takes the batch. 5xx, 408, 429, timeouts and connection
failures raise a retryable :class:`~genesys_mux.errors.SinkError`; on 429
and 503 the ``Retry-After`` seconds are carried on the error as
``retry_after`` for the runner to honour. Every other status (redirects
included: a moved endpoint is a configuration error) raises a
non-retryable one, and the runner sends the batch to the dead-letter queue
without trying again.

The secrets (and the URL) are held in :class:`~genesys_mux.sinks.base.Hidden`
wrappers; they never appear in reprs, logs or error messages; neither do
the URL's user info and query string, which can carry credentials of their
own.

.. _Standard Webhooks: https://www.standardwebhooks.com
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

import aiohttp

from genesys_mux.core.backoff import parse_retry_after
from genesys_mux.core.redaction import (
    REDACTED,
    URL_USERINFO_HINT,
    redact_url,
    scrub_urls,
    userinfo_not_encoded,
)
from genesys_mux.errors import ConfigError, FencedError, GenesysMuxError, SinkError
from genesys_mux.regions import is_loopback_host
from genesys_mux.sinks.base import (
    Hidden,
    Item,
    batch_idempotency_key,
    encode_record,
    idempotency_key,
)

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "FENCE_HEADER",
    "IDEMPOTENCY_HEADER",
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "SIGNING_SCHEMES",
    "TIMESTAMP_HEADER",
    "WEBHOOK_ID_HEADER",
    "WEBHOOK_SIGNATURE_HEADER",
    "WEBHOOK_TIMESTAMP_HEADER",
    "SigningScheme",
    "WebhookSink",
    "WebhookVerificationError",
    "generate_secret",
    "parse_secrets",
    "redact_url",
    "sign",
    "sign_webhook",
    "verify",
    "verify_signature",
    "webhook_id",
    "webhook_url_problem",
]

log = logging.getLogger("genesys_mux.sinks.webhook")

#: ``"standard"``: Standard Webhooks (the default); ``"genesys-mux"``: the older headers.
SigningScheme = Literal["standard", "genesys-mux"]
SIGNING_SCHEMES: Final[tuple[str, ...]] = get_args(SigningScheme)

# The genesys-mux scheme.
SIGNATURE_HEADER: Final = "X-Genesys-Mux-Signature"
TIMESTAMP_HEADER: Final = "X-Genesys-Mux-Timestamp"
# The Standard Webhooks scheme (the standard spells them in lower case).
WEBHOOK_ID_HEADER: Final = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER: Final = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER: Final = "webhook-signature"
# Both.
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
FENCE_HEADER: Final = "X-Genesys-Mux-Fence"

#: How the standard marks a symmetric secret, and the key sizes it allows.
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a format marker, not a secret
MIN_SECRET_BYTES: Final = 24
MAX_SECRET_BYTES: Final = 64
#: How far a request's timestamp may be from the receiver's clock.
DEFAULT_TOLERANCE_S: Final = 300.0

# Statuses where the server says "later", not "never".
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_GENERATE_HINT = (
    'generate one with: python -c "from genesys_mux.sinks.webhook import generate_secret; '
    'print(generate_secret())"'
)


class WebhookVerificationError(GenesysMuxError):
    """A webhook request failed :func:`verify`: the message says which check, never a secret."""


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def generate_secret(size: int = 32) -> str:
    """A new random Standard Webhooks secret, ``whsec_`` and the base64 of ``size`` bytes."""
    if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
        raise ConfigError(
            f"a secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {size}"
        )
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def _decode_secret(text: str, which: str) -> bytes:
    """The key of one ``whsec_<base64>`` secret; ``which`` names it in errors (never its text)."""
    if not text.startswith(SECRET_PREFIX):
        raise ConfigError(
            f"{which} is not a Standard Webhooks secret: it must be {SECRET_PREFIX!r} followed "
            f"by the base64 of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes; "
            f'{_GENERATE_HINT}, or set signing = "genesys-mux" to sign a plain secret '
            "with the X-Genesys-Mux-Signature header instead"
        )
    encoded = text[len(SECRET_PREFIX) :]
    try:
        # Padding is optional, as in the standard's own libraries.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{which}: the part after {SECRET_PREFIX!r} is not standard base64 "
            f"(A-Z, a-z, 0-9, + and /); {_GENERATE_HINT}"
        ) from None  # the cause would quote the secret
    return _checked_key(key, which)


def _checked_key(key: bytes, which: str) -> bytes:
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ConfigError(
            f"{which} holds a key of {len(key)} bytes; Standard Webhooks keys have "
            f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes; {_GENERATE_HINT}"
        )
    return key


def parse_secrets(
    secret: str | bytes | Sequence[str | bytes], *, label: str = "the signing secret"
) -> tuple[bytes, ...]:
    """The HMAC keys of one or more Standard Webhooks secrets.

    ``secret`` is a ``whsec_<base64>`` string, several of them separated by
    whitespace (base64 has none, so the split is unambiguous; this is how
    one environment variable carries a rotation), raw key bytes, or a
    sequence of those. Raises :class:`~genesys_mux.errors.ConfigError`
    naming ``label`` and what is wrong, never the secret.
    """
    parts: list[str | bytes]
    if isinstance(secret, str):
        parts = list(secret.split())
    elif isinstance(secret, bytes | bytearray):
        parts = [bytes(secret)]
    else:
        parts = [p for s in secret for p in (s.split() if isinstance(s, str) else [s])]
    if not parts:
        raise ConfigError(f"{label} is empty; {_GENERATE_HINT}")
    keys = []
    for number, part in enumerate(parts, 1):
        which = label if len(parts) == 1 else f"{label} (secret {number} of {len(parts)})"
        keys.append(
            _decode_secret(part, which) if isinstance(part, str) else _checked_key(part, which)
        )
    return tuple(keys)


def webhook_id(batch: Sequence[Item]) -> str:
    """The ``webhook-id`` of a batch: ``msg_`` and 32 hex digits.

    A digest of the idempotency key of every item in order (of which the
    ``Idempotency-Key`` header, ``first..last``, shows the two ends). A
    re-sent batch is the same items, so it gets the same id, on every retry
    and even from another run or instance; any other batch, even one that
    starts and ends with the same items, gets another. The keys themselves
    are not used as they are because the standard wants no ``.`` in the id
    (the signed material is delimited by full stops), and topics have them.
    """
    digest = hashlib.sha256()
    for item in batch:
        key = idempotency_key(item).encode("utf-8")
        # Length-prefixed, so no two different lists of keys hash the same input.
        digest.update(len(key).to_bytes(4, "big") + key)
    return "msg_" + digest.hexdigest()[:32]


def _digests(keys: Sequence[bytes], msg_id: str, timestamp: str, body: bytes) -> list[bytes]:
    """The HMAC-SHA256 under each key of the standard's signed material."""
    material = msg_id.encode("utf-8") + b"." + timestamp.encode("ascii") + b"." + body
    return [hmac.new(key, material, hashlib.sha256).digest() for key in keys]


def _standard_signatures(keys: Sequence[bytes], msg_id: str, timestamp: str, body: bytes) -> str:
    return " ".join(
        "v1," + base64.b64encode(digest).decode("ascii")
        for digest in _digests(keys, msg_id, timestamp, body)
    )


def sign_webhook(
    secret: str | bytes | Sequence[str | bytes], msg_id: str, timestamp: str, body: bytes
) -> str:
    """The ``webhook-signature`` value (Standard Webhooks) for ``body``.

    One ``v1,<base64>`` per secret (see :func:`parse_secrets`), separated by
    spaces; ``timestamp`` is the ``webhook-timestamp`` header's exact text.
    """
    return _standard_signatures(parse_secrets(secret), msg_id, timestamp, body)


def verify(
    secret: str | bytes | Sequence[str | bytes],
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check a Standard Webhooks request; return its ``webhook-id``.

    For receivers: pass the raw request body (before any JSON parsing) and
    the request's headers (any mapping; names are matched without regard
    to case). ``secret`` is the receiver's secret, or several during a
    rotation: any signature made with any of them is accepted. Raises
    :class:`WebhookVerificationError` saying which check failed: a missing
    header, a timestamp further than ``tolerance_s`` from ``now`` (default:
    the current time; this refuses replays), or no matching signature.
    Signatures are compared in constant time. A ``secret`` that is not a
    valid one raises :class:`~genesys_mux.errors.ConfigError` instead.
    """
    keys = parse_secrets(secret, label="the verifying secret")
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(WEBHOOK_ID_HEADER, "")
    timestamp = lowered.get(WEBHOOK_TIMESTAMP_HEADER, "")
    signatures = lowered.get(WEBHOOK_SIGNATURE_HEADER, "")
    missing = [
        name
        for name, value in (
            (WEBHOOK_ID_HEADER, msg_id),
            (WEBHOOK_TIMESTAMP_HEADER, timestamp),
            (WEBHOOK_SIGNATURE_HEADER, signatures),
        )
        if not value
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise WebhookVerificationError(
            f"{WEBHOOK_TIMESTAMP_HEADER} is not a whole number of Unix seconds"
        )
    skew = (time.time() if now is None else now) - int(timestamp)
    if abs(skew) > tolerance_s:
        when = "old" if skew > 0 else "in the future"
        raise WebhookVerificationError(
            f"{WEBHOOK_TIMESTAMP_HEADER} is {abs(skew):.0f} s {when}; "
            f"at most {tolerance_s:g} s is accepted (a replay, or a clock that is off)"
        )
    expected = _digests(keys, msg_id, timestamp, body)
    for offered in signatures.split():
        version, _, encoded = offered.partition(",")
        if version != "v1":
            continue  # another scheme (v1a: asymmetric) or a later version
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every key compared, so the time taken does not say which one matched.
        if sum(hmac.compare_digest(candidate, e) for e in expected):
            return msg_id
    raise WebhookVerificationError(
        f"no {WEBHOOK_SIGNATURE_HEADER} matches the body under the secret(s) given"
    )


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Genesys-Mux-Signature`` value for ``body`` sent at ``timestamp``."""
    material = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(_secret_bytes(secret), material, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    *,
    timestamp: str | None,
    signature: str | None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``signature`` (genesys-mux scheme) is ours for ``body`` at a recent ``timestamp``.

    For receivers of ``signing = "genesys-mux"``: pass the raw request body
    and the two headers. The comparison runs in constant time; a timestamp
    more than ``tolerance_s`` from ``now`` (default: the current time)
    fails, which stops replays.
    """
    if not timestamp or not signature:
        return False
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_url_problem(url: str, *, secret: bool = False) -> str | None:
    """What is wrong with a webhook sink's URL, or None.

    The answer is a sentence about "the url" that quotes none of it (it may
    carry a token or a password): prefix it with where the URL came from.
    :class:`WebhookSink` and the configuration's validation both ask it, so
    a URL is refused alike, with the same words, wherever it is given.

    ``secret`` says the URL as a whole is a secret (a capability URL, kept
    out of the configuration file): it may then go over plain ``http://``
    to a loopback host only, since anywhere else the token in it would
    cross the network in clear.
    """
    if userinfo_not_encoded(url):
        return URL_USERINFO_HINT
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read for its ValueError: a port out of range
    except ValueError:
        return "the url's host or port cannot be read"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the url is not an http:// or https:// URL"
    if secret and parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return (
            f"the url is a plain http:// URL to {parts.hostname}: the secret in it would cross "
            "the network in clear; use https:// (http:// is for loopback only)"
        )
    return None


def _url_secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that may be credentials (user info, query, fragment), as sent."""
    _scheme, _, rest = url.partition("://")
    parts: list[str] = []
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        parts += [userinfo, *userinfo.split(":", 1)]
    for mark in ("?", "#"):
        if mark in rest:
            parts.append(rest.split(mark, 1)[1])
    return _longest_first(parts)


def _path_secrets(url: str) -> list[str]:
    """The path of ``url`` and its longer segments, as sent: a capability URL's token is one.

    Segments under six characters (``api``, ``hooks``) are left: they would
    blank out words of unrelated text, and a token is longer.
    """
    path = urlsplit(url).path
    return [path, *(segment for segment in path.split("/") if len(segment) >= 6)]


def _longest_first(parts: Iterable[str]) -> tuple[str, ...]:
    # Longest first, so a part inside another is not replaced half-way; short
    # pieces (a one-letter user name, "api") would blank out unrelated text.
    return tuple(sorted({p for p in parts if len(p) >= 4}, key=len, reverse=True))


class WebhookSink:
    """Batches POSTed as signed JSON to ``url``.

    ``signing`` picks the scheme: ``"standard"`` (Standard Webhooks, the
    default) or ``"genesys-mux"`` (the ``X-Genesys-Mux-Signature`` header).
    ``secret`` is the shared HMAC key (required): for ``"standard"`` one or
    more ``whsec_<base64>`` secrets (whitespace-separated in one string, or
    a sequence; the request is signed with each, for rotation) or raw key
    bytes; for ``"genesys-mux"`` one secret, any text. ``secret_label``
    says where the secret came from in error messages (for example the
    environment variable). ``timeout_s`` bounds each request from connect to
    the end of the answer. ``headers`` are added to every request (they must
    not override ours). ``session`` shares an application's
    ``aiohttp.ClientSession``; the sink then does not close it.
    ``secret_path`` says the URL's path is a secret too (a capability URL,
    its token in the path, as ``url_env`` in a configuration file gives
    one): messages then show only its scheme and host, and plain
    ``http://`` is refused but to a loopback host. The URL's policy is
    :func:`webhook_url_problem`.
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes | Sequence[str | bytes],
        *,
        signing: SigningScheme = "standard",
        timeout_s: float = 10.0,
        name: str = "webhook",
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        fence: int = 0,
        secret_label: str = "the signing secret",  # noqa: S107 - a label, not a secret
        secret_path: bool = False,
    ) -> None:
        problem = webhook_url_problem(url, secret=secret_path)
        if problem is not None:
            raise ConfigError(f"webhook sink {name}: {problem}")
        if signing not in SIGNING_SCHEMES:
            raise ConfigError(
                f"webhook sink {name}: signing must be one of {', '.join(SIGNING_SCHEMES)}, "
                f"not {signing!r}"
            )
        if not secret:
            raise ConfigError(f"webhook sink {name}: {secret_label} must not be empty")
        if timeout_s <= 0:
            raise ConfigError(f"webhook sink {name}: timeout_s must be positive")
        self.name = name
        self.signing: SigningScheme = signing
        self.display_url = redact_url(url)
        url_secrets = _url_secrets(url)
        if secret_path:
            # Only where it goes: the path is a capability (its token is the secret).
            shown = urlsplit(self.display_url)
            self.display_url = f"{shown.scheme}://{shown.netloc}/{REDACTED}"
            url_secrets = _longest_first({*url_secrets, *_path_secrets(url)})
        self.timeout_s = timeout_s
        # Both can carry credentials: kept where no repr or dump shows them.
        self._url = Hidden(url, self.display_url)
        # The query, fragment and user info (and the path, if secret), should
        # a text carry them in any other form.
        self._url_secrets = Hidden(url_secrets)
        keys: tuple[bytes, ...]
        if signing == "standard":
            keys = parse_secrets(secret, label=f"webhook sink {name}: {secret_label}")
        elif isinstance(secret, str | bytes):
            keys = (_secret_bytes(secret),)
        else:
            raise ConfigError(
                f'webhook sink {name}: signing = "genesys-mux" signs with one secret, '
                f'not {len(secret)}; rotation needs signing = "standard"'
            )
        self._keys = Hidden(keys)
        self._extra_headers = dict(headers or {})
        ours = {
            SIGNATURE_HEADER,
            TIMESTAMP_HEADER,
            WEBHOOK_ID_HEADER,
            WEBHOOK_TIMESTAMP_HEADER,
            WEBHOOK_SIGNATURE_HEADER,
            IDEMPOTENCY_HEADER,
            FENCE_HEADER,
            "content-type",
        }
        clash = {h for h in self._extra_headers if h.lower() in {o.lower() for o in ours}}
        if clash:
            raise ConfigError(f"webhook sink {name}: headers may not set {sorted(clash)}")
        self._session = session
        self._own_session = session is None
        #: The fencing token sent with every batch (0: none, no header).
        self.fence = fence

    def __repr__(self) -> str:
        return (
            f"WebhookSink(name={self.name!r}, url={self.display_url!r}, signing={self.signing!r})"
        )

    async def start(self) -> None:
        """Create the HTTP session, unless one was given."""
        if self._session is None or (self._own_session and self._session.closed):
            self._session = aiohttp.ClientSession(trust_env=True)
            self._own_session = True

    @staticmethod
    def body(batch: Sequence[Item]) -> bytes:
        """The request body for ``batch``: ``{"items":[...]}`` from the encoded records."""
        return b'{"items":[' + b",".join(encode_record(item) for item in batch) + b"]}"

    async def send(self, batch: Sequence[Item]) -> None:
        """POST the batch once; raise ``SinkError`` unless the answer is 2xx."""
        if not batch:
            return
        if self._session is None or self._session.closed:
            await self.start()
        assert self._session is not None
        body = self.body(batch)
        # The time of this attempt: a retry is signed afresh, with a new
        # timestamp, while the id and the body stay the same.
        timestamp = str(int(time.time()))
        headers = {**self._extra_headers, "Content-Type": "application/json"}
        if self.signing == "standard":
            msg_id = webhook_id(batch)
            headers[WEBHOOK_ID_HEADER] = msg_id
            headers[WEBHOOK_TIMESTAMP_HEADER] = timestamp
            headers[WEBHOOK_SIGNATURE_HEADER] = _standard_signatures(
                self._keys.value, msg_id, timestamp, body
            )
        else:
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._keys.value[0], timestamp, body)
        headers[IDEMPOTENCY_HEADER] = batch_idempotency_key(batch)
        if self.fence:
            headers[FENCE_HEADER] = str(self.fence)
        try:
            async with self._session.post(
                self._url.value,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                reason = resp.reason or ""
                retry_after_header = resp.headers.get("Retry-After")
                if 200 <= status < 300:
                    # Read the (small) answer so the connection can be reused.
                    await resp.read()
                    return
        except TimeoutError as exc:
            raise SinkError(
                f"sink {self.name}: no answer from {self.display_url} within {self.timeout_s:g} s",
                retryable=True,
            ) from exc
        except aiohttp.ClientError as exc:
            # aiohttp puts the URL in its texts, normalised (a "/" path added,
            # the host lower-cased): every URL in them is redacted, not just ours.
            detail = " ".join(self._scrub(str(exc)).split())[:200]
            # Not chained: a traceback would print aiohttp's own text, URL and all.
            raise SinkError(
                f"sink {self.name}: {type(exc).__name__} posting to {self.display_url}: {detail}",
                retryable=True,
            ) from None
        raise self._status_error(status, reason, retry_after_header)

    def _scrub(self, text: str) -> str:
        """``text`` with every URL redacted and any part of our URL's credentials removed."""
        text = scrub_urls(text)
        for secret in self._url_secrets.value:
            text = text.replace(secret, REDACTED)
        return text

    def _status_error(self, status: int, reason: str, retry_after: str | None) -> SinkError:
        if status == 409 and self.fence:
            return FencedError(
                f"sink {self.name}: {self.display_url} refused fencing token {self.fence} "
                "(HTTP 409): the stream has a newer owner"
            )
        retryable = status >= 500 or status in (408, 429)
        hint = parse_retry_after(retry_after) if status in _RETRY_AFTER_STATUSES else None
        # The receiver's reason phrase only: its body could echo our payload.
        # Scrubbed before it is cut: a receiver may echo the path it was asked
        # for (a capability URL's token), and a cut could leave a piece of it.
        message = (
            f"sink {self.name}: HTTP {status} {self._scrub(reason)[:60]} from {self.display_url}"
        )
        return SinkError(message.replace("  ", " "), retryable=retryable, retry_after=hint)

    async def close(self) -> None:
        """Close the session if this sink created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
