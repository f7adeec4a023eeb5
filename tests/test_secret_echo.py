"""Secrets we know are kept out of errors literally, whatever their shape.

The shape checks of :func:`~genesys_mux.core.redaction.scrub` catch what
looks like a credential; a client secret a human chose
(``correct-horse-battery-staple-2024``) or a hex digest does not. A token
endpoint or an API that echoes such a value back in its error body must
still not get it into an exception, a log line or the audit log: the token
provider and the REST client replace the values they hold (the client
secret, its Basic credential, the access tokens) before quoting an answer.
The stand-ins are real HTTP servers on loopback.
"""

from __future__ import annotations

import base64
import logging
from contextlib import AbstractAsyncContextManager

import aiohttp
import pytest
from aiohttp import web

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.redaction import REDACTED
from genesys_mux.errors import ApiError, AuthenticationError
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.rest import RestClient
from genesys_mux.observability.sanitize import sanitize_value
from genesys_mux.regions import Endpoints
from tests.net.conftest import stand_in
from tests.sinks.conftest import free_port

SECRETS = [
    "correct-horse-battery-staple-2024",  # a passphrase: lower case only
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # a hex digest
    "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm9Nb8Vc7",  # opaque, as Genesys secrets are
]

#: An access token no shape check takes for one.
TOKEN = "plain-lowercase-access-token-for-this-test"


def _echoing_platform(*, padding: int = 0) -> AbstractAsyncContextManager[str]:
    """Refuses a login echoing the secret it was sent; API errors echo the bearer token."""

    async def token(request: web.Request) -> web.Response:
        credential = request.headers["Authorization"].split()[1]
        client_id, secret = base64.b64decode(credential).decode().split(":", 1)
        if secret.startswith("good-"):
            return web.json_response({"access_token": TOKEN, "expires_in": 3600})
        description = f"client {client_id} presented secret {secret} ({credential}), no match"
        return web.json_response(
            {"error": "invalid_client", "error_description": description}, status=401
        )

    async def api(request: web.Request) -> web.Response:
        bearer = request.headers["Authorization"].removeprefix("Bearer ")
        if request.query.get("plain"):
            # Not JSON, and the token just where a 200-character cut would fall.
            return web.Response(text="x" * padding + bearer, status=400)
        return web.json_response(
            {"code": "bad.request", "message": f"token {bearer} is not valid here"}, status=400
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_route("*", "/api/{tail:.*}", api)
    return stand_in(app, free_port())


@pytest.mark.parametrize("secret", SECRETS, ids=["passphrase", "hex", "opaque"])
async def test_a_login_refusal_that_echoes_the_secret_never_quotes_it(
    secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _echoing_platform() as base, aiohttp.ClientSession() as session:
        tokens = TokenProvider(session, Endpoints.custom(base), "my-client", secret)
        with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationError) as caught:
            await tokens.token()
    text = str(caught.value)
    # What was wrong and where stays; the secret does not.
    assert "refused the client credentials for client id 'my-client': HTTP 401" in text
    assert f"client my-client presented secret {REDACTED} ({REDACTED}), no match" in text
    credential = base64.b64encode(f"my-client:{secret}".encode()).decode()
    for shown in (text, caplog.text, str(sanitize_value(text))):
        assert secret not in shown
        assert credential not in shown


@pytest.mark.parametrize("plain", [False, True], ids=["json", "text"])
async def test_an_api_error_that_echoes_the_token_never_quotes_it(plain: bool) -> None:
    async with (
        _echoing_platform(padding=180) as base,
        aiohttp.ClientSession() as session,
    ):
        endpoints = Endpoints.custom(base)
        tokens = TokenProvider(session, endpoints, "my-client", "good-" + SECRETS[0])
        rest = RestClient(session, endpoints, tokens, backoff=Backoff(0.01, 0.05))
        with pytest.raises(ApiError) as caught:
            await rest.request(
                "GET", "/api/v2/routing/queues", params={"plain": "1"} if plain else None
            )
    text = str(caught.value)
    assert "HTTP 400" in text
    assert REDACTED in text
    # Not even its first characters, as a cut through it would leave.
    assert TOKEN[:12] not in text
