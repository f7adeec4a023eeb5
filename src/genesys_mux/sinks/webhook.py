"""A sink that POSTs batches of items to an HTTP endpoint, signed with HMAC-SHA256.

Theory of operation
-------------------
Each batch is one ``POST`` with the JSON body ``{"items": [record, ...]}``,
where each record is the shared wire record of :mod:`genesys_mux.sinks.base`.
The body is assembled from the already-encoded records, so each event's
``event_body`` reaches the receiver byte for byte as Genesys sent it.

Headers:

* ``X-Genesys-Mux-Timestamp``: Unix time in whole seconds when the request
  was signed.
* ``X-Genesys-Mux-Signature``: ``sha256=<hex>``, the HMAC-SHA256 under the
  shared secret of the *signed material* ``<timestamp> "." <body bytes>``:
  the timestamp header's exact text, one ASCII full stop, then the exact
  body bytes. Covering the timestamp lets a receiver refuse replays of an
  old request (:func:`verify_signature` allows 300 s of skew by default).
* ``Idempotency-Key``: ``<first key>..<last key>`` of the batch. A re-sent
  batch has the same items, so the same key (and the same body; only the
  timestamp and signature change).
* ``X-Genesys-Mux-Fence`` (in a cluster): the fencing token of the sending
  instance's lease on the stream. It grows at every change of owner, so a
  receiver that keeps the largest token it has seen per stream (the items'
  ``stream_id``) and answers **409** to a smaller one shuts out an ex-owner
  that was frozen past its lease. A 409 to a fenced batch is counted
  (``fenced``), neither retried nor dead-lettered: the stream's new owner
  delivers those events.

Outcomes: any 2xx takes the batch. 5xx, 408, 429, timeouts and connection
failures raise a retryable :class:`~genesys_mux.errors.SinkError`; on 429
and 503 the ``Retry-After`` seconds are carried on the error as
``retry_after`` for the runner to honour. Every other status (redirects
included: a moved endpoint is a configuration error) raises a
non-retryable one, and the runner sends the batch to the dead-letter queue
without trying again.

The secret (and the URL) are held in :class:`~genesys_mux.sinks.base.Hidden`
wrappers; the secret never appears in reprs, logs or
error messages; neither do the URL's user info and query string, which can
carry credentials of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from genesys_mux.core.backoff import parse_retry_after
from genesys_mux.errors import ConfigError, FencedError, SinkError
from genesys_mux.sinks.base import Hidden, Item, batch_idempotency_key, encode_record

__all__ = [
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookSink",
    "sign",
    "verify_signature",
]

log = logging.getLogger("genesys_mux.sinks.webhook")

SIGNATURE_HEADER: Final = "X-Genesys-Mux-Signature"
TIMESTAMP_HEADER: Final = "X-Genesys-Mux-Timestamp"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
FENCE_HEADER: Final = "X-Genesys-Mux-Fence"

# Statuses where the server says "later", not "never".
_RETRY_AFTER_STATUSES = frozenset({429, 503})


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


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
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when ``signature`` is ours for ``body`` and ``timestamp`` is recent.

    For receivers: pass the raw request body and the two headers. The
    comparison runs in constant time; a timestamp more than ``tolerance_s``
    from ``now`` (default: the current time) fails, which stops replays.
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


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class WebhookSink:
    """Batches POSTed as signed JSON to ``url``.

    ``secret`` is the shared HMAC key (required, non-empty). ``timeout_s``
    bounds each request from connect to the end of the answer. ``headers``
    are added to every request (they must not override ours). ``session``
    shares an application's ``aiohttp.ClientSession``; the sink then does
    not close it.
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        timeout_s: float = 10.0,
        name: str = "webhook",
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        fence: int = 0,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ConfigError(
                f"webhook sink url must be an http:// or https:// URL, not {redact_url(url)!r}"
            )
        if not secret:
            raise ConfigError(f"webhook sink {name}: the signing secret must not be empty")
        if timeout_s <= 0:
            raise ConfigError(f"webhook sink {name}: timeout_s must be positive")
        self.name = name
        self.display_url = redact_url(url)
        self.timeout_s = timeout_s
        # Both can carry credentials: kept where no repr or dump shows them.
        self._url = Hidden(url, self.display_url)
        self._secret = Hidden(_secret_bytes(secret))
        self._extra_headers = dict(headers or {})
        ours = {
            SIGNATURE_HEADER,
            TIMESTAMP_HEADER,
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
        return f"WebhookSink(name={self.name!r}, url={self.display_url!r})"

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
        timestamp = str(int(time.time()))
        headers = {
            **self._extra_headers,
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret.value, timestamp, body),
            IDEMPOTENCY_HEADER: batch_idempotency_key(batch),
        }
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
            detail = str(exc).replace(self._url.value, self.display_url)[:200]
            raise SinkError(
                f"sink {self.name}: {type(exc).__name__} posting to {self.display_url}: {detail}",
                retryable=True,
            ) from exc
        raise self._status_error(status, reason, retry_after_header)

    def _status_error(self, status: int, reason: str, retry_after: str | None) -> SinkError:
        if status == 409 and self.fence:
            return FencedError(
                f"sink {self.name}: {self.display_url} refused fencing token {self.fence} "
                "(HTTP 409): the stream has a newer owner"
            )
        retryable = status >= 500 or status in (408, 429)
        hint = parse_retry_after(retry_after) if status in _RETRY_AFTER_STATUSES else None
        # The receiver's reason phrase only: its body could echo our payload.
        message = f"sink {self.name}: HTTP {status} {reason[:60]} from {self.display_url}"
        return SinkError(message.replace("  ", " "), retryable=retryable, retry_after=hint)

    async def close(self) -> None:
        """Close the session if this sink created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
