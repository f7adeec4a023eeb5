"""The webhook sink against real aiohttp receivers that check every signature.

The promise under test: nothing is lost. What a receiver acknowledged plus
what went to the dead-letter queue is every sequence, whatever the receiver
does: fail for a while, hang, or refuse.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

import pytest

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.redaction import REDACTED
from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.errors import ConfigError, FencedError, SinkError
from genesys_mux.sinks.base import batch_idempotency_key
from genesys_mux.sinks.runner import SinkRunner
from genesys_mux.sinks.webhook import WebhookSink, redact_url, sign, verify_signature
from tests.net.conftest import eventually
from tests.net.test_multiplexer import harness, org_settings
from tests.sinks.conftest import SECRET, Receiver, a_gap, real_events, source

FAST = Backoff(0.01, 0.05)


def runner_for(
    receiver: Receiver,
    items: Sequence[StreamEvent | Gap],
    letters: list[DeadLetter],
    name: str,
    **kwargs: object,
) -> SinkRunner:
    timeout_s = kwargs.pop("timeout_s", 5.0)
    sink = WebhookSink(receiver.url, SECRET, timeout_s=timeout_s, name=name)  # type: ignore[arg-type]
    kwargs.setdefault("batch_size", 10)
    kwargs.setdefault("backoff", FAST)
    return SinkRunner(source(items), [sink], letters.append, **kwargs)  # type: ignore[arg-type]


async def test_500_three_times_then_200_delivers_everything_end_to_end() -> None:
    async with Receiver(fail_first=3) as receiver, harness(org_settings(rate=20.0)) as h:
        await h.mux.add_stream({"id": "calls", "filter": {"channelType": "voice"}})
        runner = SinkRunner(
            h.mux.stream("calls"),
            [WebhookSink(receiver.url, SECRET, timeout_s=5.0, name="hook")],
            h.mux.dead_letter,
            batch_size=25,
            linger_s=0.02,
            max_attempts=5,
            backoff=FAST,
            name="calls",
        )
        task = asyncio.create_task(runner.run())
        await eventually(lambda: len(receiver.accepted_sequences()) >= 40, within=30)
        await h.control("traffic", {"running": False})
        await h.mux.stop(drain=True, timeout_s=20)
        await asyncio.wait_for(task, 20)

        delivered = h.mux.stats()["streams"]["calls"].delivered
        assert sorted(set(receiver.accepted_sequences())) == list(range(1, delivered + 1))
        assert h.dlq.letters == []
        assert runner.retries == 3
        assert runner.dead_lettered == 0
        assert runner.failed_batches == 0
        assert receiver.bad_signatures == 0
        # The three failed attempts were the same batch, sent again whole.
        first = receiver.requests[:4]
        assert len({r.body for r in first}) == 1
        assert len({r.idempotency_key for r in first}) == 1
        for request in receiver.requests:
            keys = [i["idempotency_key"] for i in request.items]
            assert request.idempotency_key == f"{keys[0]}..{keys[-1]}"


async def test_a_hanging_receiver_sends_everything_to_the_dlq(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    events = real_events(25)
    letters: list[DeadLetter] = []
    async with Receiver(hang=True) as receiver:
        runner = runner_for(
            receiver, [*events, a_gap()], letters, "slow", timeout_s=0.3, max_attempts=2
        )
        failures: list[tuple[str, str]] = []
        runner.on_failure.append(lambda sink, text: failures.append((sink, text)))
        await asyncio.wait_for(runner.run(), 20)

    batches = math.ceil(26 / 10)
    assert runner.batches == batches
    assert len(receiver.requests) == batches * 2  # every batch tried max_attempts times
    assert receiver.accepted == []
    assert sorted(d.sequence for d in letters) == list(range(1, 26))  # gaps are not letters
    for letter in letters:
        assert letter.reason.startswith("sink_failed:slow: no answer from http://127.0.0.1:")
        assert letter.reason.endswith("within 0.3 s")
    by_sequence = {e.sequence: e for e in events}
    assert all(d.raw == by_sequence[d.sequence].raw for d in letters)
    assert runner.failed_batches == batches
    assert runner.dead_lettered == 25
    assert runner.sent == 0
    assert len(failures) == batches * 2
    assert "gap of stream voice-main not delivered" in caplog.text
    assert_secret_nowhere(runner, caplog, failures, letters)


async def test_a_400_is_not_retried_and_goes_to_the_dlq(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    events = real_events(25)
    letters: list[DeadLetter] = []
    async with Receiver(status=400) as receiver:
        runner = runner_for(receiver, events, letters, "refused", max_attempts=None)
        failures: list[tuple[str, str]] = []
        runner.on_failure.append(lambda sink, text: failures.append((sink, text)))
        await asyncio.wait_for(runner.run(), 20)

    assert runner.batches == 3
    assert len(receiver.requests) == runner.batches  # exactly one request per batch
    assert runner.retries == 0
    assert [len(r.items) for r in receiver.requests] == [10, 10, 5]
    assert sorted(d.sequence for d in letters) == list(range(1, 26))
    assert {d.reason for d in letters} == {
        f"sink_failed:refused: HTTP 400 Bad Request from {receiver.url}"
    }
    assert receiver.bad_signatures == 0
    assert_secret_nowhere(runner, caplog, failures, letters)


async def test_a_mixed_receiver_loses_nothing() -> None:
    """Some batches taken, some refused: acknowledged plus dead-lettered is every sequence."""
    events = real_events(40)
    letters: list[DeadLetter] = []
    async with Receiver(fail_first=2, fail_status=422) as receiver:
        runner = runner_for(receiver, events, letters, "mixed", max_attempts=3)
        await asyncio.wait_for(runner.run(), 20)
    acknowledged = set(receiver.accepted_sequences())
    dead = {d.sequence for d in letters}
    assert acknowledged.isdisjoint(dead)
    assert acknowledged | dead == set(range(1, 41))
    assert len(dead) == 20  # the two refused batches


async def test_retry_after_on_429_is_honoured() -> None:
    letters: list[DeadLetter] = []
    async with Receiver(fail_first=1, fail_status=429, fail_headers={"Retry-After": "1"}) as rec:
        # No backoff of its own: any wait comes from the Retry-After hint.
        runner = runner_for(rec, real_events(3), letters, "limited", backoff=Backoff(0.0, 0.0))
        await asyncio.wait_for(runner.run(), 20)
    assert len(rec.requests) == 2
    assert rec.requests[1].at - rec.requests[0].at >= 0.95
    assert letters == []
    assert runner.retries == 1
    assert sorted(rec.accepted_sequences()) == [1, 2, 3]


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [
        (500, {}, True, None),
        (502, {}, True, None),
        (503, {"Retry-After": "7"}, True, 7.0),
        (429, {"Retry-After": "3"}, True, 3.0),
        (408, {}, True, None),
        (400, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
        (301, {"Location": "/elsewhere"}, False, None),
    ],
)
async def test_status_classification(
    status: int, headers: dict[str, str], retryable: bool, retry_after: float | None
) -> None:
    async with Receiver(fail_first=1, fail_status=status, fail_headers=headers) as receiver:
        sink = WebhookSink(receiver.url, SECRET, name="w")
        try:
            with pytest.raises(SinkError) as caught:
                await sink.send(real_events(2))
        finally:
            await sink.close()
    assert caught.value.retryable is retryable
    assert caught.value.retry_after == retry_after
    assert f"HTTP {status}" in str(caught.value)


async def test_connection_refused_is_retryable() -> None:
    async with Receiver() as receiver:
        url = receiver.url
    sink = WebhookSink(url, SECRET, timeout_s=2.0)  # nobody listens any more
    try:
        with pytest.raises(SinkError) as caught:
            await sink.send(real_events(1))
    finally:
        await sink.close()
    assert caught.value.retryable


def test_signatures_cover_timestamp_and_exact_body() -> None:
    body = WebhookSink.body(real_events(2))
    now = time.time()
    stamp = str(int(now))
    signature = sign(SECRET, stamp, body)
    assert verify_signature(SECRET, body, timestamp=stamp, signature=signature, now=now)
    assert not verify_signature(SECRET, body + b" ", timestamp=stamp, signature=signature, now=now)
    assert not verify_signature("other", body, timestamp=stamp, signature=signature, now=now)
    old = str(int(now) - 3600)
    assert not verify_signature(
        SECRET, body, timestamp=old, signature=sign(SECRET, old, body), now=now
    )
    assert not verify_signature(SECRET, body, timestamp=None, signature=signature)


def test_body_is_the_records_verbatim() -> None:
    events = real_events(3)
    body = WebhookSink.body(events)
    for event in events:
        assert b'"event_body":' + event.raw + b"}" in body
    assert batch_idempotency_key(events) == (
        f"{events[0].idempotency_key}..{events[2].idempotency_key}"
    )


def test_settings_are_checked_without_echoing_secrets() -> None:
    with pytest.raises(ConfigError):
        WebhookSink("http://127.0.0.1/hook", "")
    with pytest.raises(ConfigError) as caught:
        WebhookSink("ftp://user:pw-canary@127.0.0.1/hook", SECRET)
    assert "pw-canary" not in str(caught.value)
    with pytest.raises(ConfigError):
        WebhookSink("http://127.0.0.1/hook", SECRET, headers={"x-genesys-mux-signature": "x"})
    for unreadable in ("http://127.0.0.1:99999/tk-canary", "http://[::1/tk-canary"):
        with pytest.raises(ConfigError, match="host or port cannot be read") as caught:
            WebhookSink(unreadable, SECRET)
        assert "tk-canary" not in str(caught.value)
    sink = WebhookSink("https://user:pw-canary@example.test/hook?token=tk-canary", SECRET)
    for text in (repr(sink), str(vars(sink)), sink.display_url):
        assert SECRET not in text
        assert "pw-canary" not in text
        assert "tk-canary" not in text


def test_a_secret_url_goes_over_plain_http_only_to_loopback() -> None:
    """A library caller's ``secret_path`` gets the policy a configuration's ``url_env`` gets."""
    url = "http://hooks.example.com/hook/tk-canary-77"
    WebhookSink(url, SECRET)  # the path is no secret: the caller's choice
    with pytest.raises(ConfigError, match=r"plain http:// URL to hooks\.example\.com") as caught:
        WebhookSink(url, SECRET, secret_path=True)
    assert "tk-canary" not in str(caught.value)
    for usable in ("http://127.0.0.1:8080/hook/tk-1", "https://hooks.example.com/hook/tk-1"):
        assert WebhookSink(usable, SECRET, secret_path=True).display_url.endswith(REDACTED)


@pytest.mark.parametrize(
    "password", ["s3cr/et-canary", "s3cr#et-canary", "s3cr?et-canary"], ids=["/", "#", "?"]
)
def test_a_password_not_percent_encoded_is_refused_without_echoing_it(password: str) -> None:
    pieces = {p for p in password.replace("#", "/").replace("?", "/").split("/") if p}
    with pytest.raises(ConfigError, match="percent-encode") as caught:
        WebhookSink(f"https://user:{password}@example.test/x", SECRET, name="hook")
    assert "webhook sink hook" in str(caught.value)
    for piece in {password, *pieces}:
        assert piece not in str(caught.value)
    # The redaction itself takes such a URL without raising, and shows none of it.
    shown = redact_url(f"https://user:{password}@example.test/x?token=tk-canary")
    assert shown == "https://example.test/x"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.test/x?notify=ops@example.test",
        "https://hooks.example.test:8443/x?notify=ops@example.test",
        "https://hooks.example.test/@team/hook",
    ],
)
def test_an_at_sign_in_the_path_or_query_is_not_taken_for_a_password(url: str) -> None:
    sink = WebhookSink(url, SECRET, name="hook")
    assert sink.display_url.startswith("https://hooks.example.test")


async def test_a_url_from_the_environment_is_delivered_to_and_shows_only_its_origin() -> None:
    """``url_env``: a capability URL (its token in the path) is a secret like the others."""
    from genesys_mux.cli.runtime import build_sink
    from genesys_mux.configfile import WebhookSinkSpec

    token, query = "tok-canary-4f9a1c", "sig=q-canary-77"
    events = real_events(2)
    spec = WebhookSinkSpec(type="webhook", url_env="HOOK_URL", secret_env="HOOK_SECRET")
    async with Receiver(fail_first=1, fail_echoing=True) as receiver:
        env = {"HOOK_URL": f"{receiver.url}/{token}?{query}", "HOOK_SECRET": SECRET}
        sink = build_sink(spec, env)
        assert isinstance(sink, WebhookSink)
        try:
            with pytest.raises(SinkError) as failed:
                await sink.send(events)
            await sink.send(events)
        finally:
            await sink.close()
    assert [i["sequence"] for r in receiver.accepted for i in r.items] == [1, 2]
    origin = receiver.url.removesuffix("/hook")
    assert sink.display_url == f"{origin}/[REDACTED]"
    # The receiver's reason phrase echoed the path and query: not in the message either.
    assert f"HTTP 500 {REDACTED}" in str(failed.value)
    for text in (str(failed.value), repr(sink), str(vars(sink))):
        assert token not in text
        assert "q-canary" not in text
    # From the file, the path is no secret: errors name it.
    assert WebhookSink(f"{origin}/hook/open", SECRET).display_url == f"{origin}/hook/open"


def assert_secret_nowhere(
    runner: SinkRunner,
    caplog: pytest.LogCaptureFixture,
    failures: list[tuple[str, str]],
    letters: list[DeadLetter],
) -> None:
    texts = [
        caplog.text,
        repr(runner),
        repr(runner.sinks),
        str(vars(runner.sinks[0])),
        str(runner.last_error),
        str(runner.stats()),
        *(text for _sink, text in failures),
        *(letter.reason for letter in letters),
    ]
    for text in texts:
        assert SECRET not in text


async def test_a_receiver_that_fences_shuts_out_an_ex_owner() -> None:
    events = real_events(6)
    async with Receiver(fencing=True) as receiver:
        old = WebhookSink(receiver.url, SECRET, name="old", fence=3)
        new = WebhookSink(receiver.url, SECRET, name="new", fence=4)
        try:
            await old.send(events[:2])
            await new.send(events[2:4])
            with pytest.raises(FencedError, match="refused fencing token 3"):
                await old.send(events[4:])
            # Without a token (no cluster) the header is not sent at all.
            plain = WebhookSink(receiver.url, SECRET, name="plain")
            await plain.send(events[4:])
            await plain.close()
        finally:
            await old.close()
            await new.close()
    assert [r.items[0]["sequence"] for r in receiver.accepted] == [
        events[0].sequence,
        events[2].sequence,
        events[4].sequence,
    ]
    assert receiver.fences == {events[0].stream_id: 4}


def collect_into(failures: list[tuple[str, str]]) -> Callable[[str, str], None]:
    return lambda sink, text: failures.append((sink, text))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    ],
    ids=["bad status code", "no status line", "bad header"],
)
async def test_a_malformed_answer_does_not_echo_the_url_s_credentials(
    answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's error texts carry the URL normalised (a "/" path, the host lower-cased)."""
    caplog.set_level(logging.DEBUG)
    canary = "tk-canary-Q7x"

    async def answer_badly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_badly, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    urls = (
        f"http://127.0.0.1:{port}?token={canary}",
        f"http://LOCALHOST:{port}/h?token={canary}",
        f"http://user:{canary}@127.0.0.1:{port}/h#{canary}",
    )
    async with server:
        for url in urls:
            letters: list[DeadLetter] = []
            sink = WebhookSink(url, SECRET, timeout_s=5.0, name="odd")
            runner = SinkRunner(
                source(real_events(3)), [sink], letters.append, max_attempts=2, backoff=FAST
            )
            failures: list[tuple[str, str]] = []
            runner.on_failure.append(collect_into(failures))
            await asyncio.wait_for(runner.run(), 20)
            assert len(letters) == 3
            assert all("ClientResponseError posting to" in d.reason for d in letters)
            assert len(failures) == 2
            texts = [
                caplog.text,
                repr(runner),
                str(vars(sink)),
                str(runner.last_error),
                str(runner.stats()),
                *(text for _sink, text in failures),
                *(letter.reason for letter in letters),
            ]
            for text in texts:
                assert canary not in text
