"""The command line's one log schema, and log lines under the live dashboard."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from rich.console import Console
from rich.live import Live
from rich.text import Text

from genesys_mux.cli.logs import configure_logging
from genesys_mux.observability.audit import AUDIT_LOGGER, AuditLog


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    audit_level = logging.getLogger(AUDIT_LOGGER).level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger(AUDIT_LOGGER).setLevel(audit_level)
        structlog.reset_defaults()


def test_log_lines_and_audit_facts_share_one_json_schema(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="WARNING", json=True)
    logging.getLogger("genesys_mux.sinks.runner").warning(
        "sink %s failed", "crm", extra={"stream_id": "voice"}
    )
    logging.getLogger("genesys_mux.net").info("not shown at WARNING")
    audit = AuditLog(logging.getLogger(AUDIT_LOGGER))
    audit.write("INFO", "stream_added", {"stream_id": "voice", "access_token": "secret-value"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [list(line)[:4] for line in lines] == [["ts", "level", "logger", "event"]] * 2
    failed, added = lines
    assert failed["event"] == "sink crm failed"
    assert failed["level"] == "WARNING"
    assert failed["stream_id"] == "voice"
    # An INFO audit fact still shows at WARNING: the audit record is never filtered.
    assert added["logger"] == AUDIT_LOGGER
    assert added["event"] == "STREAM_ADDED"
    assert added["level"] == "INFO"
    assert added["stream_id"] == "voice"
    assert "secret-value" not in json.dumps(added)
    assert added["ts"].endswith("Z")
    assert len(added["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_a_file_audit_log_has_the_same_keys() -> None:
    stream = io.StringIO()
    AuditLog(stream).write("WARNING", "gap", {"stream_id": "voice"})
    line = json.loads(stream.getvalue())
    assert list(line)[:4] == ["ts", "level", "logger", "event"]
    assert line["logger"] == AUDIT_LOGGER


def test_log_lines_go_above_the_live_dashboard_not_over_it(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="INFO")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with Live(Text("the dashboard"), console=console, refresh_per_second=4):
        logging.getLogger("genesys_mux.net").warning("a line during the display")
    # Printed through the live display's console (above it), never straight
    # to the terminal where the display is being drawn.
    assert "a line during the display" in screen.getvalue()
    assert "a line during the display" not in capsys.readouterr().err


#: Shaped like a bearer token; held in a local of the frame that fails.
_TOKEN = "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm9Nb8Vc7"


def _send_with_a_token_in_hand() -> None:
    headers = {"Authorization": f"Bearer {_TOKEN}"}
    raise RuntimeError(f"Session is closed ({len(headers)} headers)")


@pytest.mark.parametrize("json_lines", [False, True], ids=["console", "json"])
@pytest.mark.parametrize("source", ["logging", "structlog"])
def test_a_logged_exception_shows_its_traceback_but_never_the_frames_locals(
    restored_logging: None, capsys: pytest.CaptureFixture[str], json_lines: bool, source: str
) -> None:
    configure_logging(json=json_lines)
    try:
        _send_with_a_token_in_hand()
    except RuntimeError:
        if source == "logging":
            logging.getLogger("genesys_mux.connection").exception("slot %d: supervisor failed", 0)
        else:
            structlog.get_logger("genesys_mux.cli").exception("supervisor failed")
    err = capsys.readouterr().err
    assert "supervisor failed" in err
    assert _TOKEN not in err
    if json_lines:
        (line,) = [json.loads(text) for text in err.splitlines()]
        text = line["exception"]
    else:
        text = err
    assert "Traceback (most recent call last)" in text
    assert "_send_with_a_token_in_hand" in text
    assert "RuntimeError: Session is closed (1 headers)" in text
