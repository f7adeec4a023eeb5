"""A run that stops cleanly says so: why, and what it delivered, in the log and the audit log.

Without it an operator reading the audit file cannot tell a deploy's
SIGTERM from a crash, nor when the instance stopped.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from genesys_mux.emulator import Emulator
from tests.cli.conftest import Result, run_cli, run_cli_until, start_cli
from tests.sinks.conftest import SECRET, Receiver, free_port
from tests.waiting import eventually

DEMO_CREDENTIALS = {
    "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
}

CONFIG = """\
[settings]
audit_path = "audit.jsonl"

[[streams]]
id = "all"
filter = {}
"""


def _stopped(directory: Path) -> dict[str, Any]:
    text = (directory / "audit.jsonl").read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
    (stopped,) = [line for line in lines if line["event"] == "RUN_STOPPED"]
    assert lines[-1] is stopped, "the last fact of the run"
    return stopped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signalled_stop_names_its_signal(
    emulator: Emulator, tmp_path: Path, sig: signal.Signals
) -> None:
    (tmp_path / "mux.toml").write_text(CONFIG)
    ran = await run_cli_until(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        until=lambda line: '"sequence"' in line,
        sig=sig, cwd=tmp_path, env=DEMO_CREDENTIALS,
    )  # fmt: skip
    assert ran.code == 0, ran.why()
    printed = ran.stdout.count('"sequence"')
    assert f"stopping ({sig.name}): draining" in ran.stderr, ran.why()
    said = re.search(
        rf"stopped \({sig.name}\): (\d+) events handed to sinks or the output, "
        r"0 dead-lettered \(0 by the buffers, 0 by sinks\), by the 1 stream\(s\)",
        ran.stderr,
    )
    assert said is not None, ran.why()
    assert int(said.group(1)) == printed
    assert "dlq list" not in ran.stderr  # nothing to point at
    stopped = _stopped(tmp_path)
    assert stopped["reason"] == sig.name
    assert stopped["taken"] == printed
    assert stopped["dead_lettered"] == stopped["sink_dead_lettered"] == 0
    assert stopped["streams"] == 1


async def test_a_stop_at_the_end_of_its_duration_says_so(
    emulator: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(CONFIG)
    ran = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "1",
        cwd=tmp_path, env=DEMO_CREDENTIALS,
    )  # fmt: skip
    assert ran.code == 0, ran.why()
    assert "stopped (--duration 1 s reached)" in ran.stderr, ran.why()
    assert _stopped(tmp_path)["reason"] == "--duration 1 s reached"


def webhook_config(url: str, *sink_keys: str) -> str:
    """One stream with a webhook sink at ``url``; audit and dead letters to files."""
    return (
        '[settings]\naudit_path = "audit.jsonl"\ndlq_path = "dlq.jsonl"\n\n'
        '[[streams]]\nid = "all"\nfilter = {}\n[[streams.sinks]]\ntype = "webhook"\n'
        f'url = "{url}"\nsecret_env = "HOOK_SECRET"\n' + "".join(f"{k}\n" for k in sink_keys)
    )


async def run_into_a_refused_webhook(
    emulator: Emulator, tmp_path: Path, dlq_max_bytes: int | None = None
) -> Result:
    """``run`` for 2 s with a webhook nobody listens for (one attempt a batch)."""
    config = webhook_config(
        f"http://127.0.0.1:{free_port()}/hook", 'signing = "genesys-mux"', "max_attempts = 1"
    )
    if dlq_max_bytes is not None:
        config = config.replace(
            'dlq_path = "dlq.jsonl"\n', f'dlq_path = "dlq.jsonl"\ndlq_max_bytes = {dlq_max_bytes}\n'
        )
    (tmp_path / "mux.toml").write_text(config)
    return await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "2",
        cwd=tmp_path, env={**DEMO_CREDENTIALS, "HOOK_SECRET": "s" * 32},
    )  # fmt: skip


async def test_events_a_sink_refused_are_counted_taken_and_dead_lettered_not_delivered(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A webhook nobody listens for: every event its stream handed it was dead-lettered.

    The stop's numbers say so, instead of counting them as delivered too.
    """
    ran = await run_into_a_refused_webhook(emulator, tmp_path)
    assert ran.code == 0, ran.why()
    stopped = _stopped(tmp_path)
    letters = (tmp_path / "dlq.jsonl").read_text().splitlines()
    by_sinks = sum(json.loads(line)["reason"].startswith("sink_failed:") for line in letters)
    assert stopped["taken"] > 0, ran.why()
    assert stopped["sink_dead_lettered"] == stopped["taken"] == by_sinks
    assert stopped["dead_lettered"] == len(letters)
    by_buffers = len(letters) - by_sinks
    assert (
        f"stopped (--duration 2 s reached): {by_sinks} events handed to sinks or the output, "
        f"{len(letters)} dead-lettered ({by_buffers} by the buffers, {by_sinks} by sinks), "
        "by the 1 stream(s) it held at the end; the letters are in dlq.jsonl: see them with "
        "`genesys-mux dlq list -c CONFIG`, send them on with `genesys-mux dlq replay`"
    ) in ran.stderr, ran.why()


async def test_letters_the_dead_letter_file_could_not_take_are_said_lost_not_kept(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A full dead-letter file: the stop must not say the letters are in it, nor exit 0.

    It used to say "the letters are in dlq.jsonl" of letters it had only
    counted, and exit 0: a script read the run as one that lost nothing.
    """
    ran = await run_into_a_refused_webhook(emulator, tmp_path, dlq_max_bytes=0)
    assert ran.code == 1, ran.why()
    stopped = _stopped(tmp_path)
    assert stopped["dead_lettered"] > 0, ran.why()
    assert not (tmp_path / "dlq.jsonl").exists() or not (tmp_path / "dlq.jsonl").read_bytes()
    assert (
        f"{stopped['dead_lettered']} dead letter(s) could not be written to dlq.jsonl and are "
        "lost (see the errors above)"
    ) in ran.stderr, ran.why()
    assert "the letters are in" not in ran.stderr


async def test_a_second_ctrl_c_stops_at_once_and_dead_letters_what_a_hung_sink_holds(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A receiver that never answers would hold the stop for its whole drain; asked again, not."""
    async with Receiver(hang=True) as receiver:
        (tmp_path / "mux.toml").write_text(webhook_config(receiver.url, "timeout_s = 60"))
        process = await start_cli(
            "run", "-c", "mux.toml", "--base-url", emulator.base_url,
            cwd=tmp_path, env={**DEMO_CREDENTIALS, "HOOK_SECRET": SECRET},
        )  # fmt: skip
        assert process.stderr is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(30):
                await receiver.got_request.wait()  # a batch is in flight, and will stay so
                process.send_signal(signal.SIGINT)
                said = b""
                while b"ask again (Ctrl-C) to stop at once" not in said:
                    line = await process.stderr.readline()
                    assert line, said.decode()
                    said += line
                process.send_signal(signal.SIGINT)
                asked_again = loop.time()
                rest = await process.stderr.read()
                await process.wait()
            took = loop.time() - asked_again
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    stderr = (said + rest).decode()
    assert process.returncode == 0, stderr
    # Well within the drain's 5 s and the sinks' 15 s it would have waited.
    assert took < 4.0, (took, stderr)
    assert "asked again: stopping at once" in stderr
    letters = [json.loads(line) for line in (tmp_path / "dlq.jsonl").read_text().splitlines()]
    held = [d for d in letters if d["reason"] == "sink_failed:webhook: cancelled"]
    assert held, [d["reason"] for d in letters]
    stopped = _stopped(tmp_path)
    assert stopped["dead_lettered"] == len(letters)


async def test_a_stop_gives_up_a_hung_sink_s_batch_before_its_last_checkpoint(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch a hung receiver holds is dead-lettered, and so settled, before the checkpoint.

    Otherwise the next run numbers again from that batch's first event: two
    events of the stream with one sequence, one of them in the DLQ.
    """
    from genesys_mux.cli.runtime import Runtime, StopRequest
    from genesys_mux.configfile import Credentials, load_config

    async def one_run(until: Callable[[], Awaitable[object]]) -> None:
        config = load_config(tmp_path / "mux.toml")
        runtime = Runtime(
            config, Credentials("demo-client", "demo-secret"), base_url=emulator.base_url
        )
        runtime.drain_s, runtime.sinks_s = 0.2, 0.5
        stop = StopRequest()
        run = asyncio.ensure_future(runtime.run(stop))
        try:
            async with asyncio.timeout(30):
                await until()
                stop.ask("SIGTERM")
                assert await run == 0
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    monkeypatch.setenv("HOOK_SECRET", SECRET)
    async with Receiver(hang=True) as hung:
        (tmp_path / "mux.toml").write_text(
            webhook_config(hung.url, "timeout_s = 60") + '\n[state]\npath = "state.db"\n'
        )
        await one_run(hung.got_request.wait)
    letters = [json.loads(line) for line in (tmp_path / "dlq.jsonl").read_text().splitlines()]
    held = [d["sequence"] for d in letters if d["reason"] == "sink_failed:webhook: cancelled"]
    assert held, [d["reason"] for d in letters]

    async with Receiver() as working:
        (tmp_path / "mux.toml").write_text(
            webhook_config(working.url, "timeout_s = 60") + '\n[state]\npath = "state.db"\n'
        )

        def sequences() -> list[int]:
            return [i["sequence"] for r in working.requests for i in r.items if "sequence" in i]

        await one_run(lambda: eventually(lambda: bool(sequences())))
    sequences_taken = sequences()
    # The next run went on after every sequence the first one gave out.
    assert min(sequences_taken) > max(d["sequence"] for d in letters), (held, sequences_taken)


async def test_a_stop_during_start_up_says_so_and_ends_the_audit_log(tmp_path: Path) -> None:
    """A SIGTERM while the platform cannot be reached: no drain, but no silent end either."""
    (tmp_path / "mux.toml").write_text(CONFIG)
    # Nothing answers on port 9 (discard): the token request keeps failing.
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", "http://127.0.0.1:9",
        cwd=tmp_path, env=DEMO_CREDENTIALS,
    )  # fmt: skip
    assert process.stderr is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(30):
            while line := (await process.stderr.readline()).decode():
                said.append(line)
                if "token request failed" in line:
                    process.send_signal(signal.SIGTERM)
                    break
            _, rest = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    said.append(rest.decode())
    stderr = "".join(said)
    assert process.returncode == 0, stderr
    assert "stopped during start-up (SIGTERM): 0 events handed to sinks" in stderr, stderr
    stopped = _stopped(tmp_path)
    assert stopped["reason"] == "SIGTERM during start-up"
    assert (stopped["taken"], stopped["dead_lettered"]) == (0, 0)


async def test_a_start_up_cut_short_by_its_duration_ends_the_audit_log(tmp_path: Path) -> None:
    """Not a clean stop (exit 1), nor a crash: the audit log says it ended, and why."""
    (tmp_path / "mux.toml").write_text(CONFIG)
    ran = await run_cli(
        "run", "-c", "mux.toml", "--base-url", "http://127.0.0.1:9", "--duration", "1",
        cwd=tmp_path, env=DEMO_CREDENTIALS,
    )  # fmt: skip
    assert ran.code == 1, ran.why()
    assert "start-up did not finish within --duration 1 s" in ran.stderr, ran.why()
    assert "stopped during start-up (--duration 1 s reached)" in ran.stderr, ran.why()
    assert _stopped(tmp_path)["reason"] == "--duration 1 s reached during start-up"
