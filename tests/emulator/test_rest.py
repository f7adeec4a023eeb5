"""The emulator's REST side, limit by limit and fault by fault.

Each test talks to a real in-process emulator over real sockets, with plain
aiohttp and :class:`GenesysClient`, and asserts only what a real client of
Genesys Cloud would observe: status codes, error ``code`` strings, headers
and bodies, as the notifications reference describes them. Waiting is done
against deadlines (polling the API or the control surface) or on frames,
never with a fixed sleep.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import pytest
from yarl import URL

from genesys_mux.emulator import Emulator, PlatformLimits
from tests.emulator.conftest import small_settings
from tests.emulator.genesys import DEADLINE_S, GenesysClient, frame_where, is_notification
from tests.waiting import eventually

T = TypeVar("T")

CHANNELS = "/api/v2/notifications/channels"
QUEUES = "/api/v2/routing/queues"
ANALYTICS = "/api/v2/analytics/conversations/details/query"
ERROR_KEYS = {
    "message",
    "code",
    "status",
    "messageWithParams",
    "messageParams",
    "contextId",
    "details",
    "errors",
}
RATELIMIT_HEADERS = ("inin-ratelimit-allowed", "inin-ratelimit-count", "inin-ratelimit-reset")
CHANNEL_ID = re.compile(r"streaming-0-[a-z0-9]{26}")
INVALID_CLIENT = {
    "error": "invalid_client",
    "description": "authentication failed",
    "error_description": "authentication failed",
}


# -- helpers -----------------------------------------------------------------


def assert_problem(status: int, body: Any, expected_status: int, code: str) -> None:
    """A Genesys-shaped REST error with this status and code."""
    assert status == expected_status, body
    assert isinstance(body, dict), body
    assert body.keys() >= ERROR_KEYS, body
    assert body["code"] == code, body
    assert body["status"] == expected_status
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["messageWithParams"], str)
    assert isinstance(body["messageParams"], dict)
    assert isinstance(body["details"], list)
    assert isinstance(body["errors"], list)
    uuid.UUID(body["contextId"])


def basic(client_id: str, secret: str) -> dict[str, str]:
    """An ``Authorization: Basic`` header for the token endpoint."""
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def raw(
    session: aiohttp.ClientSession, method: str, url: str | URL, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    """One request with no help from GenesysClient: status, decoded JSON (or text), headers."""
    async with session.request(method, url, **kwargs) as resp:
        text = await resp.text()
        try:
            data: Any = (await resp.json(content_type=None)) if text else None
        except ValueError:
            data = text
        return resp.status, data, lower(dict(resp.headers))


async def new_client(
    session: aiohttp.ClientSession,
    base_url: str,
    client_id: str,
    *,
    permissions: list[str] | None = None,
    token_lifetime_s: int | None = None,
    scopes: list[str] | None = None,
) -> tuple[GenesysClient, dict[str, Any]]:
    """Register an OAuth client through the control surface and log in as it."""
    api = GenesysClient(session, base_url)
    spec: dict[str, Any] = {"client_id": client_id, "client_secret": f"{client_id}-secret"}
    if permissions is not None:
        spec["permissions"] = permissions
    if scopes is not None:
        spec["scopes"] = scopes
    if token_lifetime_s is not None:
        spec["token_lifetime_s"] = token_lifetime_s
    await api.control("clients", spec)
    token = await api.login(client_id, f"{client_id}-secret")
    return api, token


async def emulator_channels(api: GenesysClient) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in await api.control("channels")}


async def head(api: GenesysClient, channel_id: str) -> int:
    status, _, _ = await api.call("HEAD", f"{CHANNELS}/{channel_id}")
    return status


async def topics_of(api: GenesysClient, channel_id: str) -> list[str]:
    status, body, _ = await api.call("GET", f"{CHANNELS}/{channel_id}/subscriptions")
    assert status == 200, body
    return [e["id"] for e in body["entities"]]


async def wait_connected(api: GenesysClient, channel_id: str) -> None:
    """Until the emulator counts a socket on the channel."""

    async def connected() -> bool:
        return bool((await emulator_channels(api)).get(channel_id, {}).get("connected"))

    await eventually(connected)


async def first_notification(
    api: GenesysClient, session: aiohttp.ClientSession
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A channel subscribed to every queue's conversations, and the first notification on it."""
    org = await api.control("org")
    channel = await api.create_channel()
    topics = [f"v2.routing.queues.{q['id']}.conversations" for q in org["queues"]]
    status, body, _ = await api.subscribe(channel["id"], topics)
    assert status == 200, body
    ws = await session.ws_connect(channel["connectUri"])
    try:
        note = await frame_where(ws, is_notification)
    finally:
        await ws.close()
    return channel, note


def parse_expires(value: str) -> float:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# -- OAuth ---------------------------------------------------------------------


async def test_token_has_the_client_credentials_shape(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    status, body, headers = await raw(
        session,
        "POST",
        f"{emulator.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic("demo-client", "demo-secret"),
    )
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    assert set(body) == {"access_token", "token_type", "expires_in"}  # no refresh token
    assert isinstance(body["access_token"], str)
    assert len(body["access_token"]) >= 20
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86399
    # every call gives a new token
    again = await GenesysClient(session, emulator.base_url).login("demo-client", "demo-secret")
    assert again["access_token"] != body["access_token"]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(basic("demo-client", "wrong-secret")["Authorization"], id="wrong-secret"),
        pytest.param(basic("nobody", "demo-secret")["Authorization"], id="unknown-client"),
        pytest.param(None, id="no-basic-header"),
        pytest.param("Bearer demo-secret", id="not-basic"),
        pytest.param("Basic not*base64!", id="garbled-basic"),
    ],
)
async def test_bad_client_credentials_get_invalid_client(
    emulator: Emulator, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    status, body, _ = await raw(
        session,
        "POST",
        f"{emulator.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=headers,
    )
    assert status == 401
    assert body == INVALID_CLIENT


async def test_invalid_client_status_can_be_400(session: aiohttp.ClientSession) -> None:
    async with Emulator(small_settings(invalid_client_status=400)) as emu:
        status, body, _ = await raw(
            session,
            "POST",
            f"{emu.base_url}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=basic("demo-client", "nope"),
        )
    assert status == 400
    assert body == INVALID_CLIENT


@pytest.mark.parametrize("form", [{"grant_type": "password"}, {"grant_type": ""}, {}])
async def test_unsupported_grant_type_is_400(
    emulator: Emulator, session: aiohttp.ClientSession, form: dict[str, str]
) -> None:
    status, body, _ = await raw(
        session,
        "POST",
        f"{emulator.base_url}/oauth/token",
        data=form,
        headers=basic("demo-client", "demo-secret"),
    )
    assert status == 400, body
    assert body["error"] == "unsupported_grant_type"
    assert "access_token" not in body


async def test_registered_client_gets_its_own_token_lifetime(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    api = GenesysClient(session, emulator.base_url)
    registered = await api.control(
        "clients",
        {
            "client_id": "reporting",
            "client_secret": "reporting-secret",
            "permissions": ["routing:queue:view"],
            "token_lifetime_s": 300,
        },
    )
    assert registered == {"client_id": "reporting", "permissions": ["routing:queue:view"]}
    token = await api.login("reporting", "reporting-secret")
    assert token["expires_in"] == 300
    assert token["token_type"] == "bearer"
    # the other client is unaffected
    demo = await GenesysClient(session, emulator.base_url).login("demo-client", "demo-secret")
    assert demo["expires_in"] == 86399


# -- REST authentication ------------------------------------------------------


REST_CALLS = [
    ("GET", CHANNELS),
    ("POST", CHANNELS),
    ("GET", f"{CHANNELS}/streaming-0-aaaaaaaaaaaaaaaaaaaaaaaaaa/subscriptions"),
    ("PUT", f"{CHANNELS}/streaming-0-aaaaaaaaaaaaaaaaaaaaaaaaaa/subscriptions"),
    ("GET", QUEUES),
    ("GET", f"/api/v2/conversations/{uuid.UUID(int=1)}"),
    ("POST", ANALYTICS),
]


@pytest.mark.parametrize(("method", "path"), REST_CALLS)
@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        pytest.param(None, "authentication.required", id="no-header"),
        pytest.param(
            "Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=", "authentication.required", id="basic"
        ),
        pytest.param("Bearer not-a-token-we-issued", "bad.credentials", id="unknown-token"),
    ],
)
async def test_rest_calls_need_a_valid_bearer_token(
    emulator: Emulator,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    authorization: str | None,
    code: str,
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    status, body, _ = await raw(session, method, emulator.base_url + path, headers=headers, json=[])
    assert_problem(status, body, 401, code)


async def test_head_without_token_is_401(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    channel = await client.create_channel()
    status, body, _ = await raw(session, "HEAD", f"{client.base}{CHANNELS}/{channel['id']}")
    assert status == 401
    assert body is None


async def test_expired_token_is_credentials_expired(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    api, token = await new_client(session, emulator.base_url, "brief", token_lifetime_s=1)
    assert token["expires_in"] == 1
    status, body, _ = await api.call("GET", CHANNELS)
    assert status == 200, body

    async def refused() -> tuple[int, Any] | None:
        status, body, _ = await api.call("GET", CHANNELS)
        return (status, body) if status != 200 else None

    status, body = await eventually(refused, within=5)
    assert_problem(status, body, 401, "credentials.expired")
    # and it stays expired, not unknown, on later calls
    status, body, _ = await api.call("GET", QUEUES)
    assert_problem(status, body, 401, "credentials.expired")
    # a new token works again
    await api.login("brief", "brief-secret")
    status, _, _ = await api.call("GET", CHANNELS)
    assert status == 200


# -- channels --------------------------------------------------------------------


async def test_channel_has_the_documented_shape(client: GenesysClient) -> None:
    before = time.time()
    channels = [await client.create_channel() for _ in range(3)]
    assert len({c["id"] for c in channels}) == 3
    for channel in channels:
        assert set(channel) == {"connectUri", "id", "expires"}
        assert CHANNEL_ID.fullmatch(channel["id"]), channel["id"]
        assert channel["connectUri"].startswith("ws://")
        assert channel["connectUri"].endswith(f"/channels/{channel['id']}")
        lifetime = parse_expires(channel["expires"]) - before
        assert 24 * 3600 - 5 < lifetime < 24 * 3600 + 5


async def test_list_channels_by_token_and_by_oauth_client(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    first = GenesysClient(session, emulator.base_url)
    await first.login("demo-client", "demo-secret")
    second = GenesysClient(session, emulator.base_url)
    await second.login("demo-client", "demo-secret")
    other, _ = await new_client(session, emulator.base_url, "other-app")

    mine = {(await first.create_channel())["id"] for _ in range(2)}
    theirs = {(await second.create_channel())["id"]}
    await other.create_channel()

    async def listed(api: GenesysClient, scope: str) -> set[str]:
        status, body, _ = await api.call("GET", CHANNELS, includechannels=scope)
        assert status == 200, body
        assert set(body) >= {"entities"}
        for entity in body["entities"]:
            assert CHANNEL_ID.fullmatch(entity["id"])
            assert entity["connectUri"].endswith(entity["id"])
        return {e["id"] for e in body["entities"]}

    assert await listed(first, "token") == mine
    assert await listed(second, "token") == theirs
    assert await listed(first, "oauthclient") == mine | theirs
    assert await listed(second, "oauthclient") == mine | theirs


async def test_head_is_200_until_the_channel_expires(client: GenesysClient) -> None:
    channel = await client.create_channel()
    status, body, _ = await client.call("HEAD", f"{CHANNELS}/{channel['id']}")
    assert status == 200
    assert body is None
    result = await client.control(
        "faults", {"fault": "expire_channel", "channel_id": channel["id"]}
    )
    assert result["applied"] == [channel["id"]]
    status, body, _ = await client.call("HEAD", f"{CHANNELS}/{channel['id']}")
    assert status == 404
    assert body is None
    status, body, _ = await client.call("GET", f"{CHANNELS}/{channel['id']}/subscriptions")
    assert_problem(status, body, 404, "not.found")
    status, body, _ = await client.call("GET", CHANNELS, includechannels="oauthclient")
    assert channel["id"] not in {e["id"] for e in body["entities"]}


async def test_there_is_no_delete_for_a_channel(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    channel = await client.create_channel()
    url = f"{client.base}{CHANNELS}/{channel['id']}"
    status, body, _ = await raw(session, "DELETE", url, headers=client.auth)
    assert status in (404, 405)
    assert body["status"] == status
    assert body.keys() >= ERROR_KEYS
    assert await head(client, channel["id"]) == 200


async def test_unknown_api_path_is_a_genesys_shaped_404(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await raw(
        session, "GET", f"{client.base}/api/v2/no/such/thing", headers=client.auth
    )
    assert_problem(status, body, 404, "not.found")


async def test_21st_channel_evicts_the_least_recently_used_without_a_socket(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    created = [await client.create_channel() for _ in range(20)]
    channels = [c["id"] for c in created]
    queue = (await client.control("org"))["queues"][0]["id"]
    sockets = []
    try:
        # The oldest three are in use: [0] and [2] have a socket, [1] was just re-subscribed.
        for index in (0, 2):
            sockets.append(await client.connect(created[index]["connectUri"]))
            await wait_connected(client, channels[index])
        status, body, _ = await client.subscribe(
            channels[1], [f"v2.routing.queues.{queue}.conversations"]
        )
        assert status == 200, body

        newcomer = await client.create_channel()  # the 21st: [3] is LRU with no socket
        assert await head(client, channels[3]) == 404
        for survivor in (0, 1, 2, 4, 19):
            assert await head(client, channels[survivor]) == 200
        assert await head(client, newcomer["id"]) == 200
        ours = [c for c in await client.control("channels") if c["client_id"] == "demo-client"]
        assert len(ours) == 20
        assert channels[3] not in {c["id"] for c in ours}

        await client.create_channel()  # the 22nd: next in line is [4]
        assert await head(client, channels[4]) == 404
        assert await head(client, channels[0]) == 200
        assert await head(client, channels[2]) == 200
    finally:
        for ws in sockets:
            await ws.close()


async def test_channel_lifetime_is_a_setting(session: aiohttp.ClientSession) -> None:
    async with Emulator(small_settings(limits=PlatformLimits(channel_lifetime_s=0.5))) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")
        before = time.time()
        channel = await api.create_channel()
        expires = parse_expires(channel["expires"])
        assert before + 0.4 < expires < time.time() + 0.6
        ws = await api.connect(channel["connectUri"])
        try:
            # the socket hears the channel die, and HEAD agrees
            gone = await frame_where(ws, lambda f: f.get("result") == "404")
            assert "message" in gone
            assert time.time() >= expires - 0.01
            assert await head(api, channel["id"]) == 404
        finally:
            await ws.close()


async def test_channel_dies_with_the_token_that_created_it(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    api, _ = await new_client(session, emulator.base_url, "shortlived", token_lifetime_s=1)
    channel = await api.create_channel()
    ws = await api.connect(channel["connectUri"])
    try:
        gone = await frame_where(ws, lambda f: f.get("result") == "404", timeout=5)
        assert "message" in gone
    finally:
        await ws.close()
    assert channel["id"] not in await emulator_channels(api)
    await api.login("shortlived", "shortlived-secret")
    assert await head(api, channel["id"]) == 404


async def test_channel_outlives_its_token_when_configured(session: aiohttp.ClientSession) -> None:
    limits = PlatformLimits(channels_die_with_token=False)
    async with Emulator(small_settings(limits=limits)) as emu:
        api, _ = await new_client(session, emu.base_url, "shortlived", token_lifetime_s=1)
        channel, _ = await first_notification(api, session)
        ws = await api.connect(channel["connectUri"])
        try:

            async def token_refused() -> float | None:
                status, _, _ = await api.call("GET", CHANNELS)
                return time.time() if status == 401 else None

            expired_at = await eventually(token_refused, within=5)
            assert expired_at is not None

            # The channel keeps delivering well after its token expired.
            def late_notification(frame: Any) -> bool:
                assert frame.get("result") != "404", frame
                return is_notification(frame) and time.time() > expired_at + 0.3

            await frame_where(ws, late_notification)
        finally:
            await ws.close()
        assert channel["id"] in await emulator_channels(api)
        await api.login("shortlived", "shortlived-secret")
        assert await head(api, channel["id"]) == 200


async def test_another_clients_channel_is_not_found(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    channel = await client.create_channel()
    other, _ = await new_client(session, client.base, "intruder")
    path = f"{CHANNELS}/{channel['id']}"
    assert await head(other, channel["id"]) == 404
    status, body, _ = await other.call("GET", f"{path}/subscriptions")
    assert_problem(status, body, 404, "not.found")
    status, body, _ = await other.call(
        "PUT", f"{path}/subscriptions", [{"id": f"v2.users.{uuid.uuid4()}.presence"}]
    )
    assert_problem(status, body, 404, "not.found")
    status, body, _ = await other.call("DELETE", f"{path}/subscriptions")
    assert_problem(status, body, 404, "not.found")
    assert await head(client, channel["id"]) == 200


# -- subscriptions --------------------------------------------------------------


def user_topics(n: int, suffix: str = "presence") -> list[str]:
    return [f"v2.users.{uuid.uuid4()}.{suffix}" for _ in range(n)]


async def test_overlapping_puts_race_when_asked(session: aiohttp.ClientSession) -> None:
    """``subscription_apply_jitter_s``: overlapping PUTs race, as on the platform (section 4)."""
    async with Emulator(small_settings(subscription_apply_jitter_s=0.3, seed=7)) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")
        winners = set()
        for _ in range(6):
            channel = (await api.create_channel())["id"]
            lists = [[t] for t in user_topics(4)]
            answers = await asyncio.gather(*(api.subscribe(channel, topics) for topics in lists))
            assert [status for status, _, _ in answers] == [200] * 4
            winners.add(lists.index(await topics_of(api, channel)))
            async with session.get(f"{emu.base_url}/__emulator__/channels") as resp:
                (listed,) = [c for c in await resp.json() if c["id"] == channel]
            assert listed["most_subscription_calls"] > 1
        assert winners != {3}, "the last one sent won every race: nothing raced"


async def test_subscriptions_get_post_put_delete(client: GenesysClient) -> None:
    channel = (await client.create_channel())["id"]
    path = f"{CHANNELS}/{channel}/subscriptions"
    a, b, c, d = user_topics(4)
    assert await topics_of(client, channel) == []

    status, body, _ = await client.subscribe(channel, [a, b], method="PUT")
    assert status == 200, body
    assert body["entities"] == [{"id": a, "state": "Permitted"}, {"id": b, "state": "Permitted"}]
    assert await topics_of(client, channel) == [a, b]

    status, body, _ = await client.subscribe(channel, [c], method="POST")  # adds
    assert status == 200, body
    assert {e["id"] for e in body["entities"]} >= {c}
    assert set(await topics_of(client, channel)) == {a, b, c}

    status, body, _ = await client.subscribe(channel, [d], method="PUT")  # replaces
    assert status == 200, body
    assert await topics_of(client, channel) == [d]

    status, body, _ = await client.call("DELETE", path)
    assert status == 204
    assert body is None
    assert await topics_of(client, channel) == []


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize(
    "bad_topic",
    [
        pytest.param("v2.nonsense.topic", id="unknown-family"),
        pytest.param(f"v2.users.{uuid.UUID(int=5)}.favouriteColour", id="unknown-suffix"),
        # The grammar allows any event name; the platform only has the ones it lists.
        pytest.param(
            f"v2.detail.events.conversation.{uuid.UUID(int=5)}.agent.start",
            id="unlisted-detail-event",
        ),
        pytest.param(
            f"v2.detail.events.conversation.{uuid.UUID(int=5)}?acd.start&acdStart",
            id="unlisted-detail-event-combined",
        ),
        pytest.param(f"v2.routing.queues.{uuid.UUID(int=5)}.conversations.faxes", id="bad-media"),
        pytest.param("v2.routing.queues..conversations", id="empty-id"),
        pytest.param("v2.users.a/b.presence", id="slash-in-id"),
        pytest.param("v2.users.*.presence", id="wildcard"),
        pytest.param("", id="empty"),
        pytest.param("v2.system.socket_closing", id="system-socket-closing"),
        pytest.param("v2.system.token_revoked.x", id="system-token-revoked"),
    ],
)
async def test_invalid_topic_fails_the_whole_request(
    client: GenesysClient, method: str, bad_topic: str
) -> None:
    channel = (await client.create_channel())["id"]
    kept = user_topics(2)
    status, body, _ = await client.subscribe(channel, kept)
    assert status == 200, body

    good = user_topics(1)
    for ignore_errors in (False, True):
        status, body, _ = await client.subscribe(
            channel, [*good, bad_topic], method=method, ignore_errors=ignore_errors
        )
        assert_problem(status, body, 400, "notification.invalid.topic")
    assert await topics_of(client, channel) == kept


async def test_every_listed_detail_event_and_queue_observations_are_accepted(
    client: GenesysClient,
) -> None:
    channel = (await client.create_channel())["id"]
    conversation = uuid.UUID(int=9)
    events = [
        "acd.start", "acd.end", "acw", "customer.start", "customer.end", "user.start",
        "user.end", "wrapup", "flow.start", "flow.end", "voicemail.start", "voicemail.end",
    ]  # fmt: skip
    wanted = [f"v2.detail.events.conversation.{conversation}.{e}" for e in events]
    wanted.append(f"v2.analytics.queues.{uuid.UUID(int=3)}.observations")
    status, body, _ = await client.subscribe(channel, wanted)
    assert status == 200, body
    assert sorted(await topics_of(client, channel)) == sorted(wanted)


async def test_topic_limit_is_a_setting(session: aiohttp.ClientSession) -> None:
    async with Emulator(small_settings(limits=PlatformLimits(topics_per_channel=5))) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")
        channel = (await api.create_channel())["id"]
        five = user_topics(5)

        status, body, _ = await api.subscribe(channel, five[:3])
        assert status == 200, body
        status, body, _ = await api.subscribe(channel, five[3:], method="POST")
        assert status == 200, body
        assert await topics_of(api, channel) == five

        status, body, _ = await api.subscribe(channel, user_topics(1), method="POST")
        assert_problem(status, body, 400, "notification.subscription.too.many.subscriptions")
        status, body, _ = await api.subscribe(channel, user_topics(6), method="PUT")
        assert_problem(status, body, 400, "notification.subscription.too.many.subscriptions")
        assert await topics_of(api, channel) == five

        # re-adding topics already there does not count twice
        status, body, _ = await api.subscribe(channel, five[:2], method="POST")
        assert status == 200, body
        assert await topics_of(api, channel) == five


async def test_topic_limit_is_1000_per_channel(client: GenesysClient) -> None:
    channel = (await client.create_channel())["id"]
    topics = user_topics(1001)
    status, body, _ = await client.subscribe(channel, topics)
    assert_problem(status, body, 400, "notification.subscription.too.many.subscriptions")
    assert await topics_of(client, channel) == []

    status, body, _ = await client.subscribe(channel, topics[:1000])
    assert status == 200
    assert len(body["entities"]) == 1000
    status, body, _ = await client.subscribe(channel, topics[1000:], method="POST")
    assert_problem(status, body, 400, "notification.subscription.too.many.subscriptions")
    assert len(await topics_of(client, channel)) == 1000


async def test_combined_topics_count_as_their_parts_and_are_stored_expanded(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(small_settings(limits=PlatformLimits(topics_per_channel=5))) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")
        channel = (await api.create_channel())["id"]
        user = uuid.uuid4()
        combined = f"v2.users.{user}?presence&routingStatus&conversations"
        parts = [
            f"v2.users.{user}.presence",
            f"v2.users.{user}.routingStatus",
            f"v2.users.{user}.conversations",
        ]
        status, body, _ = await api.subscribe(channel, [combined])
        assert status == 200, body
        assert [e["id"] for e in body["entities"]] == parts
        assert await topics_of(api, channel) == parts

        # 3 parts + 3 more = 6 > 5, although it is only 2 requested topics
        other = uuid.uuid4()
        status, body, _ = await api.subscribe(
            channel, [f"v2.users.{other}?presence&routingStatus&conversations"], method="POST"
        )
        assert_problem(status, body, 400, "notification.subscription.too.many.subscriptions")
        assert await topics_of(api, channel) == parts

        status, body, _ = await api.subscribe(
            channel, [f"v2.users.{other}?presence&routingStatus"], method="POST"
        )
        assert status == 200, body
        assert len(await topics_of(api, channel)) == 5


@pytest.mark.parametrize(
    ("taken", "one_word", "dotted"),
    [("one_word", 200, 400), ("any", 200, 200), ("none", 400, 400)],
)
async def test_which_combined_topics_are_taken_is_a_setting(
    session: aiohttp.ClientSession, taken: Any, one_word: int, dotted: int
) -> None:
    """The reference shows one-word suffixes only; whether others combine is left open."""
    async with Emulator(small_settings(combined_topics=taken)) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")
        channel = (await api.create_channel())["id"]
        user = uuid.uuid4()
        for combined, expected in (
            (f"v2.users.{user}?presence&routingStatus", one_word),
            (f"v2.users.{user}?presence&conversations.calls", dotted),
        ):
            status, body, _ = await api.subscribe(channel, [combined], method="POST")
            assert status == expected, body
            if expected == 400:
                assert_problem(status, body, 400, "notification.invalid.topic")
        # Each part alone is always taken.
        status, body, _ = await api.subscribe(
            channel, [f"v2.users.{user}.presence", f"v2.users.{user}.conversations.calls"]
        )
        assert status == 200, body


async def test_combined_topic_longer_than_200_characters_is_refused(
    session: aiohttp.ClientSession,
) -> None:
    # Only suffixes of several words make a combination that long.
    async with Emulator(small_settings(combined_topics="any")) as emu:
        client = GenesysClient(session, emu.base_url)
        await client.login("demo-client", "demo-secret")
        await _refuse_over_200(client)


async def _refuse_over_200(client: GenesysClient) -> None:
    channel = (await client.create_channel())["id"]
    prefix = f"v2.users.{uuid.uuid4()}"
    suffixes = [
        "presence",
        "routingStatus",
        "conversations",
        "conversations.calls",
        "conversations.chats",
        "conversations.emails",
        "conversations.messages",
        "conversations.callbacks",
        "conversations.videos",
    ]
    fits = prefix + "?" + "&".join(suffixes[:7])
    too_long = prefix + "?" + "&".join(suffixes)
    assert len(fits) <= 200 < len(too_long)

    status, body, _ = await client.subscribe(channel, [too_long])
    assert_problem(status, body, 400, "notification.invalid.topic")
    assert await topics_of(client, channel) == []

    status, body, _ = await client.subscribe(channel, [fits])
    assert status == 200, body
    assert await topics_of(client, channel) == [f"{prefix}.{s}" for s in suffixes[:7]]


async def test_the_notifications_endpoints_need_the_notifications_scope(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    granted, _ = await new_client(session, emulator.base_url, "granted", scopes=["notifications"])
    channel = (await granted.create_channel())["id"]
    denied, _ = await new_client(session, emulator.base_url, "denied", scopes=["routing"])
    status, body, _ = await denied.call("POST", CHANNELS)
    assert_problem(status, body, 403, "missing.scope")
    assert "'notifications'" in body["message"]
    status, body, _ = await denied.call("GET", CHANNELS)
    assert_problem(status, body, 403, "missing.scope")
    status, body, _ = await denied.call("GET", "/api/v2/notifications/availabletopics")
    assert_problem(status, body, 403, "missing.scope")
    # Other endpoints do not ask for it.
    status, _, _ = await denied.call("GET", "/api/v2/routing/queues")
    assert status == 200
    assert await head(granted, channel) == 200


async def test_forbidden_topic_fails_the_whole_request_unless_errors_are_ignored(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    api, _ = await new_client(
        session, emulator.base_url, "queues-only", permissions=["routing:queue:view"]
    )
    channel = (await api.create_channel())["id"]
    queue = (await api.control("org"))["queues"][0]["id"]
    allowed = f"v2.routing.queues.{queue}.conversations"
    user = uuid.uuid4()
    forbidden = f"v2.users.{user}.presence"
    half_forbidden = f"v2.users.{user}?routingStatus&presence"

    for method in ("PUT", "POST"):
        status, body, _ = await api.subscribe(channel, [allowed, forbidden], method=method)
        assert_problem(status, body, 403, "notification.unauthorized.topic")
        assert await topics_of(api, channel) == []

    status, body, _ = await api.subscribe(
        channel, [allowed, forbidden, half_forbidden], ignore_errors=True
    )
    assert status == 200, body
    states = {e["id"]: e for e in body["entities"]}
    assert states[allowed] == {"id": allowed, "state": "Permitted"}
    rejected = states[forbidden]
    assert rejected["state"] == "Rejected"
    assert isinstance(rejected["rejectionReason"], str)
    assert rejected["rejectionReason"]
    assert rejected["missingPermissions"] == ["presence:userPresence:view"]
    assert states[half_forbidden]["state"] == "Rejected"
    assert set(states[half_forbidden]["missingPermissions"]) == {
        "presence:userPresence:view",
        "routing:agentStatus:view",
    }
    assert await topics_of(api, channel) == [allowed]


# -- rate limit -------------------------------------------------------------------


async def test_rate_limit_per_token(session: aiohttp.ClientSession) -> None:
    async with Emulator(small_settings(limits=PlatformLimits(requests_per_minute=5))) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")

        channel = await api.create_channel()
        answers = [
            await api.call("GET", CHANNELS),
            await api.subscribe(channel["id"], user_topics(1)),
            await api.call("GET", f"{CHANNELS}/{channel['id']}/subscriptions"),
            await api.call("HEAD", f"{CHANNELS}/{channel['id']}"),
        ]
        for status, body, _ in answers:
            assert status == 200, body
        # the first call (the channel) was number 1
        for count, (_, _, headers) in enumerate(answers, start=2):
            headers = lower(headers)
            assert headers["inin-ratelimit-allowed"] == "5"
            assert headers["inin-ratelimit-count"] == str(count)
            assert 0 <= int(headers["inin-ratelimit-reset"]) <= 60

        status, body, headers = await api.call("GET", QUEUES)  # the 6th
        assert_problem(status, body, 429, "too.many.requests.retry.after")
        headers = lower(headers)
        assert 1 <= int(headers["retry-after"]) <= 60
        for name in RATELIMIT_HEADERS:
            assert name in headers
        assert headers["inin-ratelimit-allowed"] == "5"
        assert int(headers["inin-ratelimit-count"]) > 5

        status, body, _ = await api.subscribe(channel["id"], user_topics(1), method="POST")
        assert_problem(status, body, 429, "too.many.requests.retry.after")

        # a second token of the same client has a budget of its own
        second = GenesysClient(session, emu.base_url)
        await second.login("demo-client", "demo-secret")
        status, body, headers = await second.call("GET", CHANNELS, includechannels="oauthclient")
        assert status == 200, body
        assert lower(headers)["inin-ratelimit-count"] == "1"
        assert [e["id"] for e in body["entities"]] == [channel["id"]]


async def test_ratelimit_headers_come_with_error_answers_too(client: GenesysClient) -> None:
    channel = (await client.create_channel())["id"]
    answers = [
        await client.subscribe(channel, ["v2.not.a.topic"]),
        await client.call("GET", f"{CHANNELS}/streaming-0-{'a' * 26}/subscriptions"),
        await client.call("HEAD", f"{CHANNELS}/streaming-0-{'a' * 26}"),
        await client.call("GET", QUEUES, pageSize="0"),
    ]
    for status, _, headers in answers:
        assert status >= 400
        headers = lower(headers)
        for name in RATELIMIT_HEADERS:
            assert name in headers, (status, headers)


# -- injected HTTP faults ----------------------------------------------------------


async def test_injected_429_fails_exactly_count_calls_with_retry_after(
    client: GenesysClient,
) -> None:
    applied = await client.control("faults", {"fault": "http_429", "retry_after_s": 7, "count": 2})
    assert applied["fault"] == "http_429"
    for _ in range(2):
        status, body, headers = await client.call("GET", QUEUES)
        assert_problem(status, body, 429, "too.many.requests.retry.after")
        assert lower(headers)["retry-after"] == "7"
    status, body, _ = await client.call("GET", QUEUES)
    assert status == 200, body
    status, body, _ = await client.call("GET", CHANNELS)
    assert status == 200, body


async def test_injected_429_honours_path_and_method_filters(client: GenesysClient) -> None:
    await client.control(
        "faults",
        {
            "fault": "http_429",
            "retry_after_s": 3,
            "count": 1,
            "path": "/subscriptions",
            "method": "PUT",
        },
    )
    channel = (await client.create_channel())["id"]  # POST channels: not matched
    assert await topics_of(client, channel) == []  # GET subscriptions: wrong method
    status, body, _ = await client.subscribe(channel, user_topics(1), method="POST")
    assert status == 200, body
    topics = user_topics(2)
    status, body, headers = await client.subscribe(channel, topics, method="PUT")
    assert_problem(status, body, 429, "too.many.requests.retry.after")
    assert lower(headers)["retry-after"] == "3"
    status, body, _ = await client.subscribe(channel, topics, method="PUT")
    assert status == 200, body
    assert await topics_of(client, channel) == topics


@pytest.mark.parametrize("status_code", [502, 503])
async def test_injected_5xx(client: GenesysClient, status_code: int) -> None:
    await client.control(
        "faults", {"fault": "http_5xx", "status": status_code, "count": 2, "path": "/routing/"}
    )
    channel = await client.create_channel()  # not on the path
    assert CHANNEL_ID.fullmatch(channel["id"])
    for _ in range(2):
        status, body, _ = await client.call("GET", QUEUES)
        assert status == status_code
        assert body["status"] == status_code
        assert body.keys() >= ERROR_KEYS
    status, body, _ = await client.call("GET", QUEUES)
    assert status == 200, body


async def test_an_injected_5xx_after_the_call_lets_it_take_effect(client: GenesysClient) -> None:
    """A gateway's 5xx on a call the platform completed: the change happened all the same."""
    await client.control(
        "faults",
        {
            "fault": "http_5xx",
            "status": 504,
            "count": 1,
            "path": "/channels",
            "method": "POST",
            "after": True,
        },
    )
    before = {c["id"] for c in (await client.call("GET", CHANNELS))[1]["entities"]}
    status, body, _ = await client.call("POST", CHANNELS)
    assert status == 504
    assert body["status"] == 504
    assert body.keys() >= ERROR_KEYS
    made = {c["id"] for c in (await client.call("GET", CHANNELS))[1]["entities"]} - before
    assert len(made) == 1  # made, though its creator never heard its id
    (channel,) = made

    await client.control(
        "faults",
        {"fault": "http_5xx", "count": 1, "path": "/subscriptions", "method": "PUT", "after": True},
    )
    # A call that fails on its own does not use the fault up.
    status, body, _ = await client.subscribe(
        "streaming-0-" + "z" * 26, user_topics(1), method="PUT"
    )
    assert status == 404, body
    topics = user_topics(2)
    status, body, _ = await client.subscribe(channel, topics, method="PUT")
    assert status == 503
    assert await topics_of(client, channel) == topics
    status, body, _ = await client.subscribe(channel, user_topics(1), method="PUT")
    assert status == 200, body

    async with client.session.post(
        f"{client.base}/__emulator__/faults", json={"fault": "http_5xx", "after": "yes"}
    ) as resp:
        assert resp.status == 400
        assert "after must be true or false" in await resp.text()


async def test_an_injected_slow_call_answers_late_only_the_calls_it_matches(
    client: GenesysClient,
) -> None:
    """``slow_api``: a distant platform, for the next ``count`` matching calls only."""
    channel = await client.create_channel()
    applied = await client.control(
        "faults", {"fault": "slow_api", "method": "HEAD", "delay_s": 2, "count": 1}
    )
    assert applied["applied"] == ["1 x 2 s late"]
    held = asyncio.create_task(client.call("HEAD", f"{CHANNELS}/{channel['id']}"))
    try:
        # Another method passes it by, and so does the next HEAD: the fault is used up.
        status, _, _ = await client.call("GET", CHANNELS)
        assert status == 200
        status, _, _ = await asyncio.wait_for(client.call("HEAD", f"{CHANNELS}/{channel['id']}"), 5)
        assert status == 200
        assert not held.done()
        status, _, _ = await held  # answered in the end, as asked
        assert status == 200
    finally:
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
    for bad, why in (
        ({"delay_s": 61}, "delay_s must be between 0 and 60"),
        ({"count": 0}, "count must be between 1 and 1000"),
    ):
        async with client.session.post(
            f"{client.base}/__emulator__/faults", json={"fault": "slow_api", **bad}
        ) as resp:
            assert resp.status == 400
            assert why in await resp.text()


async def test_injected_5xx_hits_the_token_endpoint_too(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    api = GenesysClient(session, emulator.base_url)
    await api.control("faults", {"fault": "http_5xx", "count": 1, "path": "/oauth/token"})
    status, _, _ = await raw(
        session,
        "POST",
        f"{emulator.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic("demo-client", "demo-secret"),
    )
    assert status == 503
    await api.login("demo-client", "demo-secret")


# -- routing queues -----------------------------------------------------------------


async def test_queue_pages_list_every_queue_once(client: GenesysClient) -> None:
    for n in range(2):
        await client.control("queues", {"name": f"Overflow {n}"})
    org_ids = [q["id"] for q in (await client.control("org"))["queues"]]
    assert len(org_ids) == 5

    seen: list[str] = []
    path: str | None = f"{QUEUES}?pageSize=2&pageNumber=1"
    pages = 0
    while path is not None:
        status, body, _ = await client.call("GET", path)
        assert status == 200, body
        pages += 1
        assert {"entities", "pageNumber", "pageSize", "total", "pageCount"} <= body.keys()
        assert body["pageNumber"] == pages
        assert body["pageSize"] == 2
        assert body["total"] == 5
        assert body["pageCount"] == 3
        assert 1 <= len(body["entities"]) <= 2
        for queue in body["entities"]:
            assert {"id", "name"} <= queue.keys()
        seen.extend(q["id"] for q in body["entities"])
        path = body.get("nextUri")
        if pages == 3:
            assert path is None
            assert len(body["entities"]) == 1
    assert pages == 3
    assert sorted(seen) == sorted(org_ids)
    assert len(seen) == len(set(seen))

    # the default page holds them all
    status, body, _ = await client.call("GET", QUEUES)
    assert status == 200
    assert body["pageNumber"] == 1
    assert body["pageCount"] == 1
    assert "nextUri" not in body
    assert {q["id"] for q in body["entities"]} == set(org_ids)


@pytest.mark.parametrize(
    "params",
    [
        {"pageSize": "0"},
        {"pageSize": "-3"},
        {"pageSize": "ten"},
        {"pageSize": "100000"},
        {"pageNumber": "0"},
        {"pageNumber": "x"},
    ],
)
async def test_bad_queue_paging_is_400(client: GenesysClient, params: dict[str, str]) -> None:
    status, body, _ = await client.call("GET", QUEUES, **params)
    assert_problem(status, body, 400, "bad.request")


async def test_added_queue_appears_in_the_listing(client: GenesysClient) -> None:
    added = await client.control("queues", {"name": "Escalations"})
    assert added["name"] == "Escalations"
    status, body, _ = await client.call("GET", QUEUES, pageSize="100")
    assert status == 200, body
    listed = {q["id"]: q for q in body["entities"]}
    assert listed[added["id"]]["name"] == "Escalations"
    assert body["total"] == 4
    org = await client.control("org")
    assert added["id"] in {q["id"] for q in org["queues"]}


# -- conversations ----------------------------------------------------------------


async def test_conversation_snapshot_for_a_notified_conversation(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    _, note = await first_notification(client, session)
    conversation_id = note["eventBody"]["id"]
    status, body, headers = await client.call("GET", f"/api/v2/conversations/{conversation_id}")
    assert status == 200, body
    assert lower(headers)["content-type"].startswith("application/json")
    assert body["id"] == conversation_id
    assert body["participants"]
    assert "customer" in {p["purpose"] for p in body["participants"]}

    # the ledger names the same conversation
    ledger = await client.control("ledger")
    assert conversation_id in {e["conversation_id"] for e in ledger["entries"]}


async def test_unknown_conversation_is_404(client: GenesysClient) -> None:
    status, body, _ = await client.call("GET", f"/api/v2/conversations/{uuid.uuid4()}")
    assert_problem(status, body, 404, "not.found")


@pytest.mark.parametrize(
    "unsafe",
    ["..%2F..%2Foauth%2Ftoken", "%2E%2E", "a%2Fb", "x..y", "a%20b", "a%3Fb", "%00", "a" * 129],
)
async def test_unsafe_conversation_id_is_400(
    client: GenesysClient, session: aiohttp.ClientSession, unsafe: str
) -> None:
    url = URL(f"{client.base}/api/v2/conversations/{unsafe}", encoded=True)
    status, body, _ = await raw(session, "GET", url, headers=client.auth)
    assert_problem(status, body, 400, "bad.request")


# -- analytics ------------------------------------------------------------------------


WHENEVER = "2026-01-01T00:00:00.000Z/2026-01-02T00:00:00.000Z"


def interval(start: float, end: float) -> str:
    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    return f"{iso(start)}/{iso(end)}"


def queues_touched(record: dict[str, Any]) -> set[str]:
    """Queue ids on the segments of an analytics conversation detail record."""
    return {
        segment["queueId"]
        for participant in record["participants"]
        for session in participant["sessions"]
        for segment in session["segments"]
        if "queueId" in segment
    }


async def analytics(api: GenesysClient, query: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = await api.call("POST", ANALYTICS, query)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def test_analytics_query_finds_the_conversations_of_an_interval(
    client: GenesysClient,
) -> None:
    now = time.time()
    window = interval(now - 3600, now + 3600)

    async def some() -> dict[str, Any] | None:
        body = await analytics(client, {"interval": window, "paging": {"pageSize": 100}})
        return body if body["totalHits"] >= 3 else None

    body = await eventually(some)
    assert len(body["conversations"]) == min(100, body["totalHits"])
    ids = [c["conversationId"] for c in body["conversations"]]
    assert len(ids) == len(set(ids))
    for record in body["conversations"]:
        assert {"conversationId", "conversationStart", "participants"} <= record.keys()
        assert record["participants"]
        assert "customer" in {p["purpose"] for p in record["participants"]}
    # each one is also a conversation the REST API knows
    status, snapshot, _ = await client.call("GET", f"/api/v2/conversations/{ids[0]}")
    assert status == 200, snapshot
    assert snapshot["id"] == ids[0]

    # paging walks the same list
    first = await analytics(
        client, {"interval": window, "paging": {"pageSize": 1, "pageNumber": 1}}
    )
    assert first["totalHits"] >= 3
    assert [c["conversationId"] for c in first["conversations"]] == ids[:1]

    # an interval before any traffic finds nothing
    empty = await analytics(client, {"interval": interval(now - 7200, now - 3600)})
    assert empty["totalHits"] == 0
    assert not empty.get("conversations")


async def test_analytics_query_filters_by_queue(client: GenesysClient) -> None:
    now = time.time()
    window = interval(now - 3600, now + 3600)
    queues = [q["id"] for q in (await client.control("org"))["queues"]]

    async def spread() -> dict[str, Any] | None:
        body = await analytics(client, {"interval": window, "paging": {"pageSize": 100}})
        touched = [queues_touched(c) for c in body.get("conversations", [])]
        return body if all(any(q in t for t in touched) for q in queues[:2]) else None

    everything = await eventually(spread)
    queue = queues[0]
    filtered = await analytics(
        client,
        {
            "interval": window,
            "order": "asc",
            "segmentFilters": [
                {"type": "and", "predicates": [{"dimension": "queueId", "value": queue}]}
            ],
            "paging": {"pageSize": 100},
        },
    )
    assert filtered["totalHits"] >= 1
    for record in filtered["conversations"]:
        assert queue in queues_touched(record), record
    filtered_ids = {c["conversationId"] for c in filtered["conversations"]}
    before = [(c["conversationId"], queues_touched(c)) for c in everything["conversations"]]
    touching = {cid for cid, touched in before if queue in touched}
    elsewhere = {cid for cid, touched in before if touched and queue not in touched}
    assert elsewhere, "traffic reached only one queue"
    assert touching <= filtered_ids
    assert filtered_ids.isdisjoint(elsewhere)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"interval": "yesterday"}, id="words"),
        pytest.param({"interval": "2026-01-01T00:00:00.000Z"}, id="no-end"),
        pytest.param(
            {"interval": "2026-01-01T01:00:00.000Z/2026-01-01T00:00:00.000Z"}, id="backwards"
        ),
        pytest.param(
            {"interval": "2026-13-01T00:00:00.000Z/2026-14-01T00:00:00.000Z"}, id="month-13"
        ),
        pytest.param({"interval": 12}, id="number"),
        pytest.param({}, id="missing"),
        pytest.param([], id="not-an-object"),
        pytest.param({"interval": WHENEVER, "paging": {"pageSize": "lots"}}, id="page-size-word"),
        pytest.param({"interval": WHENEVER, "paging": {"pageSize": 0}}, id="page-size-0"),
        pytest.param({"interval": WHENEVER, "paging": {"pageSize": 101}}, id="page-size-101"),
        pytest.param({"interval": WHENEVER, "paging": "all"}, id="paging-not-object"),
        pytest.param({"interval": WHENEVER, "segmentFilters": "queue"}, id="filters-not-list"),
    ],
)
async def test_malformed_analytics_query_is_400(client: GenesysClient, body: Any) -> None:
    status, answer, _ = await client.call("POST", ANALYTICS, body)
    assert_problem(status, answer, 400, "bad.request")


# -- control surface -------------------------------------------------------------------


async def test_requests_log_records_the_api_calls(client: GenesysClient) -> None:
    channel = (await client.create_channel())["id"]
    await client.call("GET", f"{CHANNELS}/{channel}/subscriptions")
    await client.call("GET", f"/api/v2/conversations/{uuid.uuid4()}")
    await client.control("org")  # control calls are not API requests

    entries = (await client.control("requests"))["requests"]
    seen = [(e["method"], e["path"], e["status"]) for e in entries]
    assert seen == [
        ("POST", "/oauth/token", 200),
        ("POST", CHANNELS, 200),
        ("GET", f"{CHANNELS}/{channel}/subscriptions", 200),
        ("GET", seen[3][1], 404),
    ]
    assert seen[3][1].startswith("/api/v2/conversations/")
    times = [e["time"] for e in entries]
    assert times == sorted(times)
    assert all(abs(t - time.time()) < 60 for t in times)


async def test_reset_invalidates_tokens_and_channels(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    channel = await client.create_channel()
    status, body, _ = await client.subscribe(channel["id"], user_topics(2))
    assert status == 200, body
    ws = await client.connect(channel["connectUri"])
    try:
        await wait_connected(client, channel["id"])
        assert await client.control("reset", {}) == {"reset": True}
        # the socket is gone with the channel
        msg = await asyncio.wait_for(ws.receive(), DEADLINE_S)
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
    finally:
        await ws.close()

    status, body, _ = await client.call("GET", CHANNELS)
    assert_problem(status, body, 401, "bad.credentials")
    assert await client.control("channels") == []
    # the request log starts afresh (the socket may log its own end afterwards)
    after = (await client.control("requests"))["requests"]
    assert ("POST", CHANNELS) not in {(e["method"], e["path"]) for e in after}

    await client.login("demo-client", "demo-secret")
    assert await head(client, channel["id"]) == 404
    status, body, _ = await client.call("GET", CHANNELS, includechannels="oauthclient")
    assert status == 200
    assert body["entities"] == []


async def test_a_client_with_its_own_channel_budget_evicts_past_it(
    client: GenesysClient, session: aiohttp.ClientSession
) -> None:
    await client.control(
        "clients", {"client_id": "small-client", "client_secret": "s3cret", "channels": 5}
    )
    small = GenesysClient(session, client.base)
    await small.login("small-client", "s3cret")
    created = [(await small.create_channel())["id"] for _ in range(6)]
    # The sixth evicted the first; the other client's budget is untouched.
    assert await head(small, created[0]) == 404
    assert all([await head(small, c) == 200 for c in created[1:]])
    ours = [c for c in await client.control("channels") if c["client_id"] == "small-client"]
    assert len(ours) == 5
    others = [(await client.create_channel())["id"] for _ in range(6)]
    assert all([await head(client, c) == 200 for c in others])
    async with session.post(
        f"{client.base}/__emulator__/clients",
        json={"client_id": "bad", "client_secret": "x", "channels": 0},
    ) as resp:
        assert resp.status == 400
        assert "channels must be at least 1" in await resp.text()
