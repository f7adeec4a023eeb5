"""OAuth client-credentials tokens: cached, refreshed ahead of expiry, single-flight.

Genesys Cloud gives no refresh token: a new token is a new
``POST login.D/oauth/token`` with HTTP Basic auth. We refresh a margin
before expiry (by default the larger of 60 s and 10 % of the lifetime, and
never more than half the lifetime), so a request never leaves with a token
that dies in flight.

Concurrent callers share one refresh: a hundred channels reconnecting at
once must cost one token request, not a hundred.

Bad credentials are fatal and raised once as :class:`AuthenticationError`;
retrying them would only feed a lock-out. Throttling and server errors are
retried with backoff, honouring ``Retry-After``.

Every failed token request is counted in :attr:`TokenProvider.failures`,
by why it failed (:data:`TOKEN_FAILURE_REASONS`), for the metrics: a refresh
that keeps failing is visible long before the token in use runs out.

Neither the secret nor any token ever appears in a repr, a log line or an
exception message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

import aiohttp
import msgspec

from genesys_mux.core.backoff import Backoff, Retries, Verdict, classify_status, parse_retry_after
from genesys_mux.core.redaction import scrub
from genesys_mux.errors import AuthenticationError, GenesysMuxError, TransportError
from genesys_mux.regions import Endpoints

__all__ = ["TOKEN_FAILURE_REASONS", "AccessToken", "TokenProvider"]

log = logging.getLogger("genesys_mux.auth")

#: Why a token request failed, the keys of :attr:`TokenProvider.failures`:
#: ``refused`` (the credentials were refused: 400, 401, 403), ``unavailable``
#: (no answer, or any other error status: throttled, a server error) and
#: ``invalid_answer`` (a 200 without a usable token).
TOKEN_FAILURE_REASONS: Final = ("refused", "unavailable", "invalid_answer")

#: A token this close to expiry is not handed out even when refreshing fails.
_LAST_RESORT_S = 5.0

#: Where the credentials come from unless the caller says otherwise.
ENVIRONMENT_CREDENTIALS: Final = "GENESYSCLOUD_OAUTHCLIENT_ID and GENESYSCLOUD_OAUTHCLIENT_SECRET"


def _credential_hint(credentials_from: str, login: str | None) -> str:
    """What to check when the login refuses the credentials (``login``: a custom base URL)."""
    where = (
        f"the base URL ({login}) serves the org the client belongs to"
        if login is not None
        else "GENESYSCLOUD_REGION names the region the client was created in"
    )
    return f"check {credentials_from} (a client-credentials OAuth client) and that {where}"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token, when it was asked for and for how long the server granted it.

    ``issued_at`` is on the provider's monotonic clock. The value is hidden
    from ``repr`` so a token can never leak through a log line or a
    traceback.
    """

    value: str = field(repr=False)
    issued_at: float
    #: The lifetime the server granted (``expires_in``), as it said it: kept
    #: rather than worked out from the two instants, whose difference float
    #: rounding can leave a hair off.
    lifetime_s: float

    @property
    def expires_at(self) -> float:
        """When the token stops being usable (monotonic seconds)."""
        return self.issued_at + self.lifetime_s

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.value}"


class _TokenAnswer(msgspec.Struct):
    access_token: str
    expires_in: float
    token_type: str = "bearer"  # noqa: S105 - a token type, not a secret


class _OAuthError(msgspec.Struct):
    error: str = ""
    error_description: str = ""
    description: str = ""


class TokenProvider:
    """Hands out a valid access token, refreshing it before it expires.

    ``refresh_margin_s`` overrides the default margin. Each token request
    may take ``timeout_s``. While the cached token still has life in it, a
    caller waits at most ``early_wait_s`` for its early refresh, then gets
    the cached token (the refresh goes on), until ``last_resort_s`` before
    it expires: a refresh that fails then is raised. ``clock`` is a
    monotonic clock, injectable for tests. ``credentials_from`` says where
    the id and secret came from (the environment's two variables by
    default), for the error that says they were refused.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoints: Endpoints,
        client_id: str,
        client_secret: str,
        *,
        refresh_margin_s: float | None = None,
        backoff: Backoff | None = None,
        max_attempts: int = 6,
        timeout_s: float = 30.0,
        early_wait_s: float = 5.0,
        last_resort_s: float = _LAST_RESORT_S,
        clock: Callable[[], float] = time.monotonic,
        credentials_from: str = ENVIRONMENT_CREDENTIALS,
    ) -> None:
        # A custom base URL (the emulator, a proxy) has no region to check.
        custom = endpoints.login == endpoints.api
        self._hint = _credential_hint(credentials_from, endpoints.login if custom else None)
        if not client_id or not client_secret:
            raise AuthenticationError(f"an OAuth client id and secret are required: {self._hint}")
        self._session = session
        self._url = f"{endpoints.login}/oauth/token"
        self._client_id = client_id
        credential = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._basic = "Basic " + credential
        # What an answer may echo back, never to be quoted (see redact()):
        # the secret as sent or percent-encoded, and the Basic credential.
        self._secrets = (client_secret, quote(client_secret, safe=""), credential)
        # The last access tokens issued: an answer may echo the one in use
        # or the one it just replaced.
        self._issued: deque[str] = deque(maxlen=2)
        self._margin = refresh_margin_s
        self._backoff = backoff or Backoff()
        self._max_attempts = max_attempts
        # A login host that takes the connection and never answers must not
        # hold a request for aiohttp's default five minutes per attempt.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._early_wait_s = early_wait_s
        self._last_resort_s = last_resort_s
        self._clock = clock
        self._token: AccessToken | None = None
        self._refreshing: asyncio.Task[AccessToken] | None = None
        self._slow_refresh: asyncio.Task[AccessToken] | None = None
        self._failed: AuthenticationError | None = None
        self._refusal_said: AuthenticationError | None = None
        #: Called with each new token, e.g. to reset a request budget or audit.
        self.on_refresh: list[Callable[[AccessToken], None]] = []
        #: Token requests that failed, by reason (every one of
        #: :data:`TOKEN_FAILURE_REASONS`, from 0). Each attempt counts, retries
        #: included; a refusal that is raised again without a request does not.
        self.failures: dict[str, int] = dict.fromkeys(TOKEN_FAILURE_REASONS, 0)

    def __repr__(self) -> str:
        return f"TokenProvider(client_id={self._client_id!r}, url={self._url!r})"

    @property
    def current(self) -> AccessToken | None:
        """The cached token, if any, without refreshing."""
        return self._token

    def refresh_due(self, token: AccessToken) -> float:
        """Monotonic time at which ``token`` should be replaced."""
        margin = self._margin
        if margin is None:
            margin = max(60.0, 0.1 * token.lifetime_s)
        # Never refresh in the first half of a token's life: a 2-minute token
        # with a 60 s margin would otherwise be refreshed on every call.
        margin = min(margin, token.lifetime_s / 2)
        return token.expires_at - margin

    async def token(self) -> AccessToken:
        """A token that will stay valid for at least the refresh margin."""
        token = self._token
        if token is not None and self._clock() < self.refresh_due(token):
            return token
        if token is None or self._clock() >= token.expires_at - self._last_resort_s:
            return await self._single_flight()
        # Refreshing early is a precaution: while the cached token still has
        # life in it, a login outage, or a login host that does not answer,
        # must not stop everything else.
        try:
            async with asyncio.timeout(self._early_wait_s):
                return await self._single_flight()
        except TimeoutError:
            if self._clock() >= token.expires_at - self._last_resort_s:
                return await self._single_flight()
            if self._slow_refresh is not self._refreshing:
                # Once per refresh, not once per caller that stopped waiting.
                self._slow_refresh = self._refreshing
                log.warning(
                    "token refresh is taking more than %g s; using the current token meanwhile",
                    self._early_wait_s,
                )
        except TransportError:
            if self._clock() >= token.expires_at - self._last_resort_s:
                raise
            log.warning("token refresh failed; using the current token until it expires")
        except AuthenticationError as exc:
            # Refused (a secret rotated or revoked): lasting, but the token
            # in hand still works, and every event it carries until it
            # expires is one not lost. The refusal is said once, loudly;
            # at the last resort it is raised, and the feed stops.
            if self._clock() >= token.expires_at - self._last_resort_s:
                raise
            if self._refusal_said is not exc:
                self._refusal_said = exc
                log.error(
                    "%s; using the current token until it expires in %.0f s, then the feed stops",
                    exc,
                    token.expires_at - self._clock(),
                )
        return token

    async def outliving(self, expires_at: float) -> AccessToken | None:
        """A token that expires after ``expires_at`` (monotonic), renewed now if need be.

        None when none can be had now (the login down, slow past
        ``early_wait_s``, or refusing): the cached token stays in use, as
        with an early refresh that fails. For a channel about to outlive
        the token that created it: its rotation comes up to five minutes
        before the end, earlier than this provider's own renewal for any
        lifetime under fifty minutes, and a successor made with the same
        token would die with it.
        """
        token = self._token
        if token is not None and token.expires_at > expires_at:
            return token
        try:
            async with asyncio.timeout(self._early_wait_s):
                token = await self._single_flight()
        except (TimeoutError, GenesysMuxError) as exc:
            log.warning("could not renew the OAuth token ahead of time: %s", exc or "timed out")
            return None
        return token if token.expires_at > expires_at else None

    async def close(self) -> None:
        """Stop a token request under way (its session is about to close).

        The request is shielded from its callers, so that one impatient
        caller cannot cancel it for the others; nothing else would stop it,
        and it would go on retrying against a closed session.
        """
        task = self._refreshing
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def refresh(self, stale: AccessToken | None = None) -> AccessToken:
        """Force a new token, e.g. after a 401.

        Passing the token that was refused makes concurrent callers share
        one refresh: if someone already replaced ``stale``, the newer token
        is returned without another request.
        """
        if stale is not None and self._token is not None and self._token is not stale:
            return self._token
        self._token = None
        return await self._single_flight()

    async def _single_flight(self) -> AccessToken:
        if self._failed is not None:
            # Drop the previous raise's traceback: re-raising one instance
            # would otherwise grow its traceback (and pin its frames) per call.
            raise self._failed.with_traceback(None)
        task = self._refreshing
        if task is None or task.done():
            task = asyncio.create_task(self._fetch(), name="genesys-mux-token-refresh")
            # Its callers may all have stopped waiting (see token()): its
            # failure is theirs to see, not asyncio's to log as unretrieved.
            task.add_done_callback(_retrieve)
            self._refreshing = task
        # shield: one impatient caller being cancelled must not cancel the
        # refresh every other caller is waiting for.
        return await asyncio.shield(task)

    async def _fetch(self) -> AccessToken:
        retries = Retries(
            "token request", self._backoff, max_attempts=self._max_attempts, logger=log
        )
        while True:
            started = self._clock()
            cause: BaseException | None = None
            try:
                async with self._session.post(
                    self._url,
                    data={"grant_type": "client_credentials"},
                    headers={"Authorization": self._basic, "Accept": "application/json"},
                    timeout=self._timeout,
                ) as resp:
                    status, body, retry_after = (
                        resp.status,
                        await resp.read(),
                        resp.headers.get("Retry-After"),
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, body, retry_after, cause = 0, b"", None, exc
                problem = f"could not reach {self._url}: {type(exc).__name__}"
            else:
                problem = f"{self._url} answered HTTP {status}"
            if status == 200:
                try:
                    return self._accept(body, started)
                except TransportError:
                    self.failures["invalid_answer"] += 1
                    raise
            if status in (400, 401, 403):
                self.failures["refused"] += 1
                self._failed = self._refused(status, body)
                raise self._failed
            self.failures["unavailable"] += 1
            verdict = Verdict.RETRY if status == 0 else classify_status(status)
            wait = retries.failed(
                problem,
                retry_after_s=parse_retry_after(retry_after),
                retryable=verdict is Verdict.RETRY,
            )
            if wait is None:
                raise TransportError(
                    f"cannot obtain an OAuth token: {problem} (after {retries.attempts} attempts)"
                ) from cause
            await asyncio.sleep(wait)

    def _accept(self, body: bytes, started: float) -> AccessToken:
        try:
            answer = msgspec.json.decode(body, type=_TokenAnswer)
        except msgspec.DecodeError as exc:
            raise TransportError(
                f"{self._url} answered 200 without a usable token body; "
                "is the region or base URL right?"
            ) from exc
        if answer.expires_in <= 0:
            raise TransportError(f"{self._url} issued a token with expires_in={answer.expires_in}")
        token = AccessToken(answer.access_token, started, answer.expires_in)
        self._token = token
        self._issued.append(token.value)
        log.info("OAuth token obtained, valid for %.0f s", answer.expires_in)
        for callback in self.on_refresh:
            callback(token)
        return token

    def redact(self, text: str) -> str:
        """``text`` (from an HTTP answer) without our credentials, before it is quoted.

        The client secret (as sent, or percent-encoded), its Basic
        credential and the last two access tokens are replaced literally,
        whatever their shape; then everything shaped like a credential
        (:func:`~genesys_mux.core.redaction.scrub`).
        """
        return scrub(text, known=(*self._secrets, *self._issued))

    def _refused(self, status: int, body: bytes) -> AuthenticationError:
        try:
            err = msgspec.json.decode(body, type=_OAuthError)
            detail = err.error or "refused"
            if err.error_description or err.description:
                detail += f" ({err.error_description or err.description})"
        except msgspec.DecodeError:
            detail = "refused"
        detail = self.redact(detail)  # a server may echo the secret or the Basic header back
        return AuthenticationError(
            f"Genesys Cloud refused the client credentials for client id {self._client_id!r}: "
            f"HTTP {status} {detail}; {self._hint}"
        )


def _retrieve(task: asyncio.Task[AccessToken]) -> None:
    if not task.cancelled():
        task.exception()
