"""URLs and texts made safe to quote: credentials never reach a message or a log."""

from __future__ import annotations

import pytest

from genesys_mux.core.redaction import redact_url, scrub, url_has_userinfo


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:Pw99@example.test/x?token=Tok3n#frag", "https://example.test/x"),
        ("http://user:Pw/99@127.0.0.1:1/x", "http://127.0.0.1:1/x"),
        ("http://user:Pw99@[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://user:Pw99@[::1", "http://[::1"),
        ("http://user:Pw99@example.test:port", "http://example.test"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_drops_user_info_query_and_fragment_and_never_raises(
    url: str, shown: str
) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "held"),
    [
        ("nats://u:Pa/ss@h:4222", True),
        ("http://u:pw@[::1", True),
        ("https://user@example.test/", True),
        ("https://example.test/x?notify=ops@example.test", False),
        ("https://example.test/@team/hook", False),
        ("http://127.0.0.1:8080", False),
    ],
)
def test_url_has_userinfo_reads_the_text_not_a_parser(url: str, held: bool) -> None:
    assert url_has_userinfo(url) is held


def test_scrub_replaces_known_secrets_whatever_their_shape() -> None:
    text = "secret correct-horse-battery-staple-2024 and token abc-token-xyz-9, id ok"
    clean = scrub(text, known=["correct-horse-battery-staple-2024", "abc-token-xyz-9", "ok"])
    # Values too short to be secrets ("ok") are left: they would cut up words.
    assert clean == "secret [REDACTED] and token [REDACTED], id ok"
    # The longer of two overlapping values goes whole.
    assert scrub("pw=hunter22-extra", known=["hunter22", "hunter22-extra"]) == "pw=[REDACTED]"
    assert scrub("correct-horse-battery-staple-2024") == "correct-horse-battery-staple-2024"
