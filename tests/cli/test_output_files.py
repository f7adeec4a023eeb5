"""The files ``run`` appends to: one it cannot write is a configuration problem, not a crash.

The audit log, the dead-letter queue and the JSONL sinks: ``validate``
names the key of one whose directory is read-only (or that names a
directory), and ``run`` refuses to start on it with one ``error:`` line
per file and exit status 2, before it connects anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from genesys_mux.cli.runtime import Runtime
from genesys_mux.configfile import Credentials, load_config
from genesys_mux.errors import ConfigError
from tests.cli.conftest import run_cli

CREDENTIALS = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}

as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)


def config(settings: str, sink_path: str = "calls.jsonl") -> str:
    return (
        '[genesys]\nregion = "eu_west_1"\n'
        f"[settings]\n{settings}\n"
        '[[streams]]\nid = "calls"\nfilter = { channelType = "voice" }\n'
        f'  [[streams.sinks]]\n  type = "jsonl"\n  path = "{sink_path}"\n'
    )


async def validate_and_run(tmp_path: Path) -> tuple[dict[str, str], list[str], str]:
    """validate's problems by key, and run's error lines and whole output."""
    checked, ran = await asyncio.gather(
        run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env=CREDENTIALS),
        run_cli("run", "-c", "mux.toml", "--duration", "5", cwd=tmp_path, env=CREDENTIALS),
    )
    assert checked.code == 1, checked.why()
    problems = {p["path"]: p["problem"] for p in json.loads(checked.stdout)["problems"]}
    assert ran.code == 2, ran.why()
    assert "Traceback" not in ran.output, ran.why()
    errors = [line for line in ran.output.splitlines() if line.startswith("error:")]
    return problems, errors, ran.output


async def test_an_audit_path_that_names_a_directory_stops_run_with_its_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "mux.toml").write_text(config('audit_path = "logs"'))
    problems, errors, output = await validate_and_run(tmp_path)
    assert list(problems) == ["settings.audit_path"]
    assert "is a directory" in problems["settings.audit_path"]
    (error,) = errors
    assert error.startswith("error: settings.audit_path: "), output
    assert "is a directory" in error
    # Refused before it connected: no channel, so no audit fact either.
    assert "CHANNEL_CREATED" not in output


async def test_a_jsonl_sink_path_that_names_a_directory_is_named_by_its_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "calls.jsonl").mkdir()
    (tmp_path / "mux.toml").write_text(config('dlq_path = "dlq.jsonl"'))
    problems, errors, _ = await validate_and_run(tmp_path)
    assert list(problems) == ["streams[0].sinks[0].path"]
    assert [e.split(": ")[1] for e in errors] == ["streams[0].sinks[0].path"]


@pytest.mark.parametrize("dlq_path", [".", "/", ".."])
async def test_a_dead_letter_path_that_can_name_no_file_is_a_problem_anywhere(
    tmp_path: Path, dlq_path: str
) -> None:
    """``.`` crashed both commands (no file name to put its ``.lock`` beside).

    ``/`` and ``..``, being outside the file's directory, were only warned
    about as perhaps another machine's; they name a directory on every one.
    """
    (tmp_path / "mux.toml").write_text(config(f'dlq_path = "{dlq_path}"'))
    problems, errors, output = await validate_and_run(tmp_path)
    assert problems == {
        "settings.dlq_path": f"{dlq_path!r} is a directory; name a file (in it, say)"
    }
    (error,) = errors
    assert error.startswith("error: settings.dlq_path: "), output
    assert "is a directory" in error


@pytest.mark.parametrize("state_path", [".", "states"])
async def test_a_state_path_that_names_a_directory_is_a_problem_with_its_key(
    tmp_path: Path, state_path: str
) -> None:
    """validate said valid, and run failed on "unable to open database file", naming no key."""
    (tmp_path / "states").mkdir()
    (tmp_path / "mux.toml").write_text(
        config('dlq_path = "dlq.jsonl"') + f'[state]\npath = "{state_path}"\n'
    )
    problems, errors, output = await validate_and_run(tmp_path)
    assert problems == {"state.path": f"{state_path!r} is a directory; name a file (in it, say)"}
    (error,) = errors
    assert error.startswith("error: state.path: "), output


@as_root
async def test_read_only_directories_are_problems_with_their_keys(tmp_path: Path) -> None:
    """A read-only directory (a read-only mount, say) is found by validate, and refused by run."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "mux.toml").write_text(
        config(
            'audit_path = "locked/audit.jsonl"\ndlq_path = "locked/dlq.jsonl"',
            sink_path="locked/calls.jsonl",
        )
    )
    locked.chmod(0o500)
    try:
        problems, errors, _ = await validate_and_run(tmp_path)
    finally:
        locked.chmod(0o700)
    keys = ["settings.dlq_path", "settings.audit_path", "streams[0].sinks[0].path"]
    assert list(problems) == keys
    assert all("is not writable" in problem for problem in problems.values())
    assert [e.split(": ")[1] for e in errors] == keys


@as_root
def test_files_made_beforehand_in_a_read_only_directory_are_fine_unless_rotated(
    tmp_path: Path,
) -> None:
    """An audit log and a dead-letter queue (with its lock) created by an administrator.

    The run only appends to them, so their directory (``/var/log``, say)
    may be read-only to it; a JSONL sink's is not, as it rotates its file.
    """
    from genesys_mux.cli.tools import unwritable_outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    for name in ("audit.jsonl", "dlq.jsonl", "dlq.jsonl.lock", "calls.jsonl"):
        (locked / name).touch()
    (tmp_path / "mux.toml").write_text(
        config(
            'audit_path = "locked/audit.jsonl"\ndlq_path = "locked/dlq.jsonl"',
            sink_path="locked/calls.jsonl",
        )
    )
    loaded = load_config(tmp_path / "mux.toml")
    locked.chmod(0o500)
    try:
        found = [where for where, _, _ in unwritable_outputs(loaded)]
    finally:
        locked.chmod(0o700)
    assert found == ["streams[0].sinks[0].path"]
    # Without its lock the queue must create one there.
    (locked / "dlq.jsonl.lock").unlink()
    locked.chmod(0o500)
    try:
        found = [where for where, _, _ in unwritable_outputs(loaded)]
    finally:
        locked.chmod(0o700)
    assert found == ["settings.dlq_path", "streams[0].sinks[0].path"]


@as_root
async def test_a_read_only_absolute_directory_is_a_warning_unless_here(tmp_path: Path) -> None:
    """Like a missing one: an absolute path may name the machine it runs on, not this one."""
    locked = tmp_path / "elsewhere"
    locked.mkdir()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mux.toml").write_text(config(f'audit_path = "{locked}/audit.jsonl"'))
    locked.chmod(0o500)
    try:
        away, here = await asyncio.gather(
            run_cli("validate", "-c", "mux.toml", "--json", cwd=conf, env=CREDENTIALS),
            run_cli("validate", "-c", "mux.toml", "--json", "--here", cwd=conf, env=CREDENTIALS),
        )
    finally:
        locked.chmod(0o700)
    assert away.code == 0, away.why()
    (warning,) = json.loads(away.stdout)["warnings"]
    assert warning.startswith("settings.audit_path: ")
    assert warning.endswith("it must be writable where it runs")
    assert here.code == 1, here.why()
    assert [p["path"] for p in json.loads(here.stdout)["problems"]] == ["settings.audit_path"]


async def test_an_audit_directory_gone_after_the_check_is_a_config_error(tmp_path: Path) -> None:
    """The runtime's own guard: the directory went away between the checks and the start."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "mux.toml").write_text(config('audit_path = "logs/audit.jsonl"'))
    loaded = load_config(tmp_path / "mux.toml")
    shutil.rmtree(tmp_path / "logs")
    runtime = Runtime(loaded, Credentials("x", "y"))
    with pytest.raises(ConfigError, match=r"^settings\.audit_path: cannot open the audit log"):
        await runtime.run(asyncio.Event(), duration_s=5)
    assert runtime.mux is None  # stopped before there was a multiplexer
