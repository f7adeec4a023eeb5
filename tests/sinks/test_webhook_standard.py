"""Standard Webhooks signing: the spec's vectors, the reference library, real receivers.

The sink's scheme is checked three ways: against the published test vector
(a fixed secret, id, timestamp and body with the signature the standard's
libraries must produce), against the independent ``standardwebhooks``
package in both directions, and end to end against real aiohttp receivers
(see ``Receiver``), which verify every request with that package.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.cli.runtime import build_sink
from genesys_mux.configfile import WebhookSinkSpec, check_environment, parse_config
from genesys_mux.core.backoff import Backoff
from genesys_mux.core.streams import DeadLetter
from genesys_mux.errors import ConfigError, GenesysMuxError, SinkError
from genesys_mux.sinks.base import batch_idempotency_key
from genesys_mux.sinks.runner import SinkRunner
from genesys_mux.sinks.webhook import (
    WebhookSink,
    WebhookVerificationError,
    generate_secret,
    parse_secrets,
    sign,
    sign_webhook,
    verify,
    webhook_id,
)
from tests.net.conftest import eventually
from tests.sinks.conftest import SECRET, SECRET_KEY, Receiver, a_gap, real_events, source

# The test vector the standard's libraries share: this secret, id, timestamp
# and body sign to exactly this.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = "1614265330"
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# The same with its last base64 digit changed: one bit off.
VECTOR_WRONG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="

OLD_SECRET = "whsec_" + base64.b64encode(b"the-previous-secret-key-0123456789").decode()
FAST = Backoff(0.01, 0.05)


def vector_headers(signature: str = VECTOR_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": VECTOR_TIMESTAMP,
        "webhook-signature": signature,
    }


# -- the published vector -------------------------------------------------------------


def test_the_published_vector_signs_and_verifies() -> None:
    assert sign_webhook(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == (
        VECTOR_SIGNATURE
    )
    at = float(VECTOR_TIMESTAMP)
    assert verify(VECTOR_SECRET, VECTOR_BODY, vector_headers(), now=at) == VECTOR_ID
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify(VECTOR_SECRET, VECTOR_BODY, vector_headers(VECTOR_WRONG), now=at)
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify(VECTOR_SECRET, VECTOR_BODY + b" ", vector_headers(), now=at)
    # Unpadded base64 after the prefix is the same key, as in the reference libraries.
    assert parse_secrets(VECTOR_SECRET) == parse_secrets(VECTOR_SECRET.rstrip("="))


def test_any_one_matching_signature_of_a_list_is_enough() -> None:
    # As the reference libraries' multi-signature vector: unknown versions and
    # wrong signatures around the right one.
    offered = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v1a,not-ours-but-harmless",
            VECTOR_SIGNATURE,
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        ]
    )
    headers = vector_headers(offered)
    assert verify(VECTOR_SECRET, VECTOR_BODY, headers, now=float(VECTOR_TIMESTAMP)) == VECTOR_ID
    # The same signature under a version we do not know is not accepted.
    with pytest.raises(WebhookVerificationError):
        verify(
            VECTOR_SECRET,
            VECTOR_BODY,
            vector_headers(VECTOR_SIGNATURE.replace("v1,", "v2,")),
            now=float(VECTOR_TIMESTAMP),
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"webhook-id": ""}, "missing header.*webhook-id"),
        ({"webhook-timestamp": ""}, "missing header.*webhook-timestamp"),
        ({"webhook-signature": ""}, "missing header.*webhook-signature"),
        ({"webhook-timestamp": "hello"}, "not a whole number"),
        ({"webhook-timestamp": "1614265330.5"}, "not a whole number"),
        ({"webhook-id": "msg_another"}, "no webhook-signature matches"),
    ],
)
def test_what_verify_refuses_and_says(change: dict[str, str], message: str) -> None:
    headers = {**vector_headers(), **change}
    with pytest.raises(WebhookVerificationError, match=message) as caught:
        verify(VECTOR_SECRET, VECTOR_BODY, headers, now=float(VECTOR_TIMESTAMP))
    assert isinstance(caught.value, GenesysMuxError)
    assert VECTOR_SECRET[6:] not in str(caught.value)


def test_header_names_are_matched_whatever_their_case() -> None:
    headers = {name.upper(): value for name, value in vector_headers().items()}
    assert verify(VECTOR_SECRET, VECTOR_BODY, headers, now=float(VECTOR_TIMESTAMP)) == VECTOR_ID


def test_the_tolerance_is_five_minutes_either_way() -> None:
    at = int(VECTOR_TIMESTAMP)
    for now in (at - 300, at, at + 300):
        assert verify(VECTOR_SECRET, VECTOR_BODY, vector_headers(), now=now) == VECTOR_ID
    with pytest.raises(WebhookVerificationError, match="301 s old"):
        verify(VECTOR_SECRET, VECTOR_BODY, vector_headers(), now=at + 301)
    with pytest.raises(WebhookVerificationError, match="301 s in the future"):
        verify(VECTOR_SECRET, VECTOR_BODY, vector_headers(), now=at - 301)
    # A receiver may choose another tolerance.
    with pytest.raises(WebhookVerificationError, match="at most 60 s"):
        verify(VECTOR_SECRET, VECTOR_BODY, vector_headers(), now=at + 61, tolerance_s=60)


# -- the reference library, both ways -------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    key=st.binary(min_size=24, max_size=64),
    msg_id=st.from_regex(r"msg_[A-Za-z0-9]{1,40}", fullmatch=True),
    body=st.text(max_size=300),
)
def test_the_reference_library_and_ours_agree(key: bytes, msg_id: str, body: str) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    data = body.encode("utf-8")
    now = datetime.now(tz=UTC)
    stamp = str(int(now.timestamp()))
    ours = sign_webhook(secret, msg_id, stamp, data)
    reference = standardwebhooks.Webhook(secret)
    assert ours == reference.sign(msg_id, datetime.fromtimestamp(int(stamp), tz=UTC), body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": ours}
    reference.verify(data, headers, json_parse=False)  # raises if it disagrees
    assert verify(secret, data, headers) == msg_id
    # Raw key bytes are the same key as their whsec_ form.
    assert sign_webhook(key, msg_id, stamp, data) == ours


def test_the_reference_library_verifies_a_rotation_with_either_secret() -> None:
    stamp = str(int(time.time()))
    both = sign_webhook(f"{SECRET} {OLD_SECRET}", VECTOR_ID, stamp, VECTOR_BODY)
    assert len(both.split()) == 2
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": stamp, "webhook-signature": both}
    for secret in (SECRET, OLD_SECRET):
        standardwebhooks.Webhook(secret).verify(VECTOR_BODY, headers)
        assert verify(secret, VECTOR_BODY, headers) == VECTOR_ID
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(VECTOR_BODY, headers)
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), VECTOR_BODY, headers)
    # A receiver in the middle of a rotation holds both secrets; one match is enough.
    single = sign_webhook(OLD_SECRET, VECTOR_ID, stamp, VECTOR_BODY)
    headers["webhook-signature"] = single
    assert verify([SECRET, OLD_SECRET], VECTOR_BODY, headers) == VECTOR_ID


# -- webhook-id -------------------------------------------------------------------------


def test_the_webhook_id_names_the_batch_and_only_that_batch() -> None:
    events = real_events(6)
    batch = [events[0], events[1], events[2]]
    other_middle = [events[0], events[3], events[2]]
    assert webhook_id(batch) == webhook_id(list(batch))  # a re-sent batch: the same id
    # Same first and last items: the Idempotency-Key cannot tell these apart; the id does.
    assert batch_idempotency_key(batch) == batch_idempotency_key(other_middle)
    assert webhook_id(batch) != webhook_id(other_middle)
    assert webhook_id(batch) != webhook_id(batch[:2])
    assert webhook_id(batch) != webhook_id([*batch, a_gap()])
    # The same states delivered by another run (another epoch, sequence and time
    # of receipt, so another body): the same id, as the receiver already has them.
    again = [
        dataclasses.replace(e, epoch="run-2", sequence=e.sequence + 100, received_at=1.0)
        for e in batch
    ]
    assert WebhookSink.body(again) != WebhookSink.body(batch)
    assert webhook_id(again) == webhook_id(batch)
    for msg_id in (webhook_id(batch), webhook_id([a_gap()])):
        # The standard asks for no full stop in the id: the signed material is dot-delimited.
        assert msg_id.startswith("msg_")
        assert len(msg_id) == 36
        assert "." not in msg_id
        int(msg_id[4:], 16)


# -- the sink, end to end ---------------------------------------------------------------


async def test_the_default_scheme_is_standard_webhooks() -> None:
    events = real_events(4)
    async with Receiver() as receiver:
        sink = WebhookSink(receiver.url, SECRET, name="hook")
        before = int(time.time())
        try:
            await sink.send(events)
        finally:
            await sink.close()
        after = time.time()
    assert receiver.bad_signatures == 0
    [request] = receiver.accepted
    headers = request.headers
    assert headers["webhook-id"] == webhook_id(events)
    assert before <= int(headers["webhook-timestamp"]) <= after
    assert headers["webhook-signature"].startswith("v1,")
    assert len(headers["webhook-signature"].split()) == 1
    assert headers["idempotency-key"] == batch_idempotency_key(events)
    assert headers["content-type"] == "application/json"
    assert "x-genesys-mux-signature" not in headers
    assert "x-genesys-mux-timestamp" not in headers
    assert "x-genesys-mux-fence" not in headers  # no cluster, no token
    assert verify(SECRET, request.body, headers) == webhook_id(events)
    assert [i["sequence"] for i in request.items] == [e.sequence for e in events]
    assert "signing='standard'" in repr(sink)


async def test_signing_genesys_mux_keeps_the_old_headers_exactly() -> None:
    events = real_events(3)
    plain = "a plain old secret, any text"
    async with Receiver(secret=plain, signing="genesys-mux") as receiver:
        sink = WebhookSink(receiver.url, plain, signing="genesys-mux", name="legacy")
        try:
            await sink.send(events)
        finally:
            await sink.close()
    assert receiver.bad_signatures == 0
    [request] = receiver.accepted
    headers = request.headers
    # aiohttp's own headers aside, exactly what earlier releases sent.
    ours = {
        name
        for name in headers
        if name not in {"host", "user-agent", "accept", "accept-encoding", "content-length"}
    }
    assert ours == {
        "content-type",
        "x-genesys-mux-timestamp",
        "x-genesys-mux-signature",
        "idempotency-key",
    }
    stamp = headers["x-genesys-mux-timestamp"]
    assert headers["x-genesys-mux-signature"] == sign(plain, stamp, request.body)
    assert headers["idempotency-key"] == batch_idempotency_key(events)


@pytest.mark.parametrize("signing", ["standard", "genesys-mux"])
async def test_the_fence_header_is_sent_in_both_schemes(signing: str) -> None:
    events = real_events(2)
    async with Receiver(signing=signing, fencing=True) as receiver:  # type: ignore[arg-type]
        sink = WebhookSink(receiver.url, SECRET, signing=signing, fence=7)  # type: ignore[arg-type]
        try:
            await sink.send(events)
        finally:
            await sink.close()
    assert receiver.bad_signatures == 0
    assert receiver.accepted[0].headers["x-genesys-mux-fence"] == "7"
    assert receiver.fences == {events[0].stream_id: 7}


async def test_a_retry_has_the_same_id_and_body_and_a_new_timestamp() -> None:
    events = real_events(3)
    async with Receiver(fail_first=1) as receiver:
        sink = WebhookSink(receiver.url, SECRET, name="hook")
        try:
            with pytest.raises(SinkError) as caught:
                await sink.send(events)
            assert caught.value.retryable
            # Wait (to a deadline) for the clock's next second, so that a fresh
            # timestamp must differ from the first attempt's.
            first_second = int(receiver.requests[0].headers["webhook-timestamp"])
            await eventually(lambda: int(time.time()) > first_second, within=3)
            await sink.send(events)
        finally:
            await sink.close()
    assert receiver.bad_signatures == 0
    first, second = receiver.requests
    assert first.webhook_id == second.webhook_id == webhook_id(events)
    assert first.body == second.body
    assert int(second.headers["webhook-timestamp"]) > first_second
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert receiver.accepted == [second]


async def test_through_a_runner_every_attempt_of_a_batch_carries_one_id() -> None:
    events = real_events(25)
    letters: list[DeadLetter] = []
    async with Receiver(fail_first=2) as receiver:
        sink = WebhookSink(receiver.url, SECRET, name="hook")
        runner = SinkRunner(
            source(events), [sink], letters.append, batch_size=10, backoff=FAST, max_attempts=5
        )
        await asyncio.wait_for(runner.run(), 20)
    assert letters == []
    assert receiver.bad_signatures == 0
    assert runner.retries == 2
    ids = [r.webhook_id for r in receiver.requests]
    assert ids[0] == ids[1] == ids[2]  # the first batch, tried three times
    accepted = [r.webhook_id for r in receiver.accepted]
    assert len(accepted) == len(set(accepted)) == 3  # one id per batch
    assert accepted == [webhook_id(events[i : i + 10]) for i in (0, 10, 20)]
    assert sorted(receiver.accepted_sequences()) == list(range(1, 26))


async def test_a_rotation_signs_with_every_secret_and_either_receiver_accepts() -> None:
    events = real_events(2)
    async with Receiver(secret=OLD_SECRET) as old, Receiver(secret=SECRET) as new:
        for receiver in (old, new):
            sink = WebhookSink(receiver.url, f"{SECRET}  {OLD_SECRET}", name="rotating")
            try:
                await sink.send(events)
            finally:
                await sink.close()
    for receiver in (old, new):
        assert receiver.bad_signatures == 0
        assert len(receiver.accepted) == 1
        assert len(receiver.accepted[0].headers["webhook-signature"].split()) == 2


async def test_a_receiver_with_another_secret_refuses_the_batch() -> None:
    async with Receiver(secret=OLD_SECRET) as receiver:
        sink = WebhookSink(receiver.url, SECRET, name="hook")
        try:
            with pytest.raises(SinkError, match="HTTP 401") as caught:
                await sink.send(real_events(1))
        finally:
            await sink.close()
    assert not caught.value.retryable
    assert receiver.bad_signatures == 1


# -- secrets: checked, never shown ------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("canary-plain-secret-0123456789", "is not a Standard Webhooks secret.*signing = "),
        ("whsec_canary*not*base64*at*all*0123", "is not standard base64"),
        ("whsec_" + base64.b64encode(b"canary-short").decode(), "key of 12 bytes.*24 to 64"),
        ("whsec_" + base64.b64encode(b"canary" * 11).decode(), "key of 66 bytes"),
        ("   ", "is empty"),
        (f"{SECRET} canary-plain-second", r"\(secret 2 of 2\) is not a Standard Webhooks"),
        (b"canary-raw-short", "key of 16 bytes"),
        ([SECRET, "whsec_canary!"], r"\(secret 2 of 2\): the part after"),
    ],
)
def test_a_bad_secret_is_a_clear_error_that_does_not_quote_it(
    secret: str | bytes | list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        WebhookSink("https://crm.example.test/hook", secret, name="crm")
    text = str(caught.value)
    assert text.startswith("webhook sink crm: the signing secret")
    assert "canary" not in text
    assert SECRET not in text
    assert "generate_secret" in text or "signing = " in text
    assert caught.value.__cause__ is None  # a cause could quote the secret


def test_genesys_mux_signing_takes_one_secret_of_any_text() -> None:
    WebhookSink("https://crm.example.test/hook", "short", signing="genesys-mux")
    with pytest.raises(ConfigError, match="signs with one secret, not 2"):
        WebhookSink("https://crm.example.test/hook", [SECRET, OLD_SECRET], signing="genesys-mux")
    with pytest.raises(ConfigError, match="signing must be one of standard, genesys-mux"):
        WebhookSink("https://crm.example.test/hook", SECRET, signing="hmac")  # type: ignore[arg-type]


def test_extra_headers_may_not_override_the_standard_ones() -> None:
    for header in ("Webhook-Signature", "webhook-id", "WEBHOOK-TIMESTAMP", "idempotency-key"):
        with pytest.raises(ConfigError, match="headers may not set"):
            WebhookSink("https://crm.example.test/hook", SECRET, headers={header: "x"})
    WebhookSink("https://crm.example.test/hook", SECRET, headers={"X-Tenant": "t1"})


def test_generated_secrets_are_valid_and_different() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert [len(k) for k in parse_secrets(f"{first} {second}")] == [32, 32]
    assert len(parse_secrets(generate_secret(64))[0]) == 64
    with pytest.raises(ConfigError):
        generate_secret(8)


async def test_secrets_appear_in_no_repr_log_or_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    letters: list[DeadLetter] = []
    rotation = f"{SECRET} {OLD_SECRET}"
    async with Receiver(status=500) as receiver:
        sink = WebhookSink(receiver.url, rotation, name="hook")
        runner = SinkRunner(
            source(real_events(3)), [sink], letters.append, backoff=FAST, max_attempts=2
        )
        failures: list[str] = []
        runner.on_failure.append(lambda _sink, text: failures.append(text))
        await asyncio.wait_for(runner.run(), 20)
    assert len(letters) == 3
    texts = [
        caplog.text,
        repr(sink),
        str(vars(sink)),
        repr(runner),
        str(runner.stats()),
        str(runner.last_error),
        *failures,
        *(letter.reason for letter in letters),
    ]
    key_b64 = base64.b64encode(SECRET_KEY).decode()
    for text in texts:
        for leaked in (SECRET, OLD_SECRET, key_b64, OLD_SECRET[6:], "canary-webhook-secret"):
            assert leaked not in text
        assert repr(SECRET_KEY)[2:-1] not in text


# -- the configuration file -------------------------------------------------------------


def webhook_config(extra: str = "") -> str:
    return (
        '[[streams]]\nid = "calls"\nfilter = { channelType = "voice" }\n'
        '  [[streams.sinks]]\n  type = "webhook"\n'
        '  url = "https://crm.example.test/hook"\n'
        f'  secret_env = "CRM_HOOK_SECRET"\n{extra}'
    )


def load(text: str) -> WebhookSinkSpec:
    import tomllib

    config = parse_config(tomllib.loads(text))
    [spec] = config.sinks["calls"]
    assert isinstance(spec, WebhookSinkSpec)
    return spec


def test_the_config_default_is_standard_and_the_option_is_checked() -> None:
    assert load(webhook_config()).signing == "standard"
    assert load(webhook_config('  signing = "genesys-mux"\n')).signing == "genesys-mux"
    with pytest.raises(ConfigError, match=r"streams\[0\]\.sinks\[0\]\.signing"):
        load(webhook_config('  signing = "sha256"\n'))


def test_check_environment_reports_a_bad_secret_without_quoting_it() -> None:
    import tomllib

    config = parse_config(tomllib.loads(webhook_config()))
    base = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}
    errors, _ = check_environment(config, {**base, "CRM_HOOK_SECRET": "canary-plain-secret"})
    [(where, problem)] = errors
    assert where == "streams[0].sinks[0].secret_env"
    assert problem.startswith("CRM_HOOK_SECRET is not a Standard Webhooks secret")
    assert "canary" not in where + problem
    assert check_environment(config, {**base, "CRM_HOOK_SECRET": SECRET})[0] == []
    legacy = parse_config(tomllib.loads(webhook_config('  signing = "genesys-mux"\n')))
    assert check_environment(legacy, {**base, "CRM_HOOK_SECRET": "canary-plain"})[0] == []


def test_the_cli_builds_the_sink_naming_the_variable_in_errors() -> None:
    spec = load(webhook_config('  signing = "standard"\n'))
    sink = build_sink(spec, {"CRM_HOOK_SECRET": f"{SECRET} {OLD_SECRET}"}, fence=3)
    assert isinstance(sink, WebhookSink)
    assert (sink.signing, sink.fence) == ("standard", 3)
    with pytest.raises(ConfigError, match="environment variable CRM_HOOK_SECRET is not a") as c:
        build_sink(spec, {"CRM_HOOK_SECRET": "canary-plain-secret"})
    assert "canary" not in str(c.value)
    legacy = load(webhook_config('  signing = "genesys-mux"\n'))
    built = build_sink(legacy, {"CRM_HOOK_SECRET": "canary-plain-secret"})
    assert isinstance(built, WebhookSink)
    assert built.signing == "genesys-mux"
