"""The deployment files agree with the code they deploy.

No container runtime, init system or Kubernetes runs here, so each file is
checked against what it relies on, for real where that part can run:

* the Dockerfile and the Compose file: the subcommands and options they run
  exist (``genesys-mux <command> --help``), their health checks are run
  against a real admin server, and the Compose set-up itself runs as
  processes: its emulator command, Redis and its three instances with their
  configuration and environment form one cluster carrying both streams;
* the systemd unit: ``systemd-analyze verify`` (with ExecStart pointed at
  this environment's genesys-mux, since the unit's /opt path does not exist
  here) and ``systemd-analyze security``;
* the Kubernetes manifest: its configuration validates, its probes name the
  admin port and paths a real admin server answers, and what the
  configuration writes is on a writable volume under a read-only root.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis
import yaml

from genesys_mux.configfile import ClusterSection, ConfigFile, parse_config
from genesys_mux.errors import ConfigError
from genesys_mux.observability import AdminServer, MuxMetrics
from tests.cli.conftest import run_cli, start_cli
from tests.deploy.conftest import DEPLOY, run_tool
from tests.net.test_multiplexer import harness
from tests.sinks.conftest import RedisServer, free_port

DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
UNIT = DEPLOY / "systemd" / "genesys-mux.service"
MANIFEST = DEPLOY / "kubernetes" / "genesys-mux.yaml"
#: Where the deployments keep what genesys-mux writes; a temporary directory here.
DATA_DIR = "/var/lib/genesys-mux"
#: What a stop may take: a cluster member's handover (2 x lease_ttl_s), the
#: drain (5 s) and the sinks' last batches (15 s). See cli/runtime.py.
DRAIN_S = 20.0
DEADLINE_S = 30.0


# -- helpers ---------------------------------------------------------------------


def validated(text: str, data_dir: Path) -> ConfigFile:
    """The configuration, validated as ``run`` would, its data directory moved to ``data_dir``."""
    return parse_config(tomllib.loads(text.replace(DATA_DIR, str(data_dir))))


def drain_budget(config: ConfigFile) -> float:
    """Seconds a SIGTERM may take to finish with this configuration."""
    lease_ttl = config.cluster.lease_ttl_s if config.cluster is not None else 0.0
    return 2 * lease_ttl + DRAIN_S


_options: dict[str, set[str]] = {}


async def options_of(command: str) -> set[str]:
    """The options ``genesys-mux COMMAND --help`` lists (fails if there is no such command)."""
    if command not in _options:
        # Each start of the command line costs seconds: ask once per command.
        result = await run_cli(command, "--help")
        assert result.code == 0, result.why()
        _options[command] = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", result.stdout))
    return _options[command]


async def assert_runnable(argv: list[str], where: str) -> None:
    """``argv`` (genesys-mux's arguments) names a subcommand and only options it has."""
    command, rest = argv[0], argv[1:]
    options = await options_of(command)
    used = {arg for arg in rest if arg.startswith("-")}
    assert used <= options, f"{where}: {sorted(used - options)} not options of {command}"


async def healthcheck_passes(test: list[str], port: int) -> bool:
    """Run a Docker-style ``["CMD", ...]`` health check with its URL's port set to ``port``."""
    assert test[0] == "CMD", test
    argv = [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", arg) for arg in test[1:]]
    assert argv[0] == "python", argv
    code, _ = await run_tool(sys.executable, *argv[1:])
    return code == 0


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            found.append((keyword.upper(), args.strip()))
    return found


def manifest() -> dict[str, dict[str, Any]]:
    """The Kubernetes objects by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))}


# -- the Dockerfile --------------------------------------------------------------


async def test_the_dockerfile_builds_a_wheel_and_runs_unprivileged_what_exists() -> None:
    steps = instructions(DOCKERFILE.read_text(encoding="utf-8"))
    stages = [args for keyword, args in steps if keyword == "FROM"]
    assert len(stages) == 2, stages
    assert stages[0].endswith(" AS builder"), stages
    assert "-slim" in stages[1]
    runs = [args for keyword, args in steps if keyword == "RUN"]
    assert any("pip wheel" in run and "'.[all]'" in run for run in runs), runs
    assert any("--no-index" in run and "'genesys-mux[all]'" in run for run in runs), runs

    (user,) = [args for keyword, args in steps if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert dict(steps)["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["genesys-mux"]
    command = json.loads(dict(steps)["CMD"])
    await assert_runnable(command, "Dockerfile CMD")
    admin_port = int(command[command.index("--admin-port") + 1])
    assert dict(steps)["EXPOSE"] == str(admin_port)

    health = dict(steps)["HEALTHCHECK"]
    check = json.loads(health[health.index("CMD") :].removeprefix("CMD").strip())
    assert f"http://127.0.0.1:{admin_port}/healthz" in check[-1]
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        async with AdminServer(h.mux, metrics) as admin:
            port = int(admin.base_url.rsplit(":", 1)[1])
            assert await healthcheck_passes(["CMD", *check], port)
        assert not await healthcheck_passes(["CMD", *check], port)  # nothing listens now
        metrics.close()


# -- Docker Compose ---------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def mux_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if name.startswith("mux-")}


def compose_config(service: dict[str, Any]) -> tuple[Path, str]:
    """The configuration file a service mounts (on this side) and where it sees it."""
    (mount,) = [v for v in service["volumes"] if v.split(":")[1].endswith(".toml")]
    source, target = mount.split(":")[:2]
    return (COMPOSE.parent / source).resolve(), target


def test_the_compose_file_is_consistent(tmp_path: Path) -> None:
    services = compose()["services"]
    assert {"redis", "emulator"} <= set(services)
    instances = mux_services()
    assert len(instances) == 3
    published = {p.rsplit(":", 1)[1] for p in services["emulator"]["ports"]}
    ids = set()
    for name, service in instances.items():
        assert service["network_mode"] == "service:emulator", name
        source, target = compose_config(service)
        assert source.is_file(), f"{name} mounts {source}, which does not exist"
        command = service["command"]
        assert command[command.index("-c") + 1] == target, name
        config = validated(source.read_text(encoding="utf-8"), tmp_path)
        assert config.cluster is not None
        assert config.cluster.url_env in service["environment"]
        for sinks in config.sinks.values():
            for sink in sinks:
                url_env = getattr(sink, "url_env", None)
                assert url_env is None or url_env in service["environment"], (name, url_env)
        port = command[command.index("--admin-port") + 1]
        assert port in published, f"{name}'s admin port {port} is not published"
        assert f"127.0.0.1:{port}/healthz" in service["healthcheck"]["test"][-1], name
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace >= drain_budget(config), name
        ids.add(service["environment"]["GENESYS_MUX_INSTANCE_ID"])
    assert len(ids) == 3, "instances sharing a host name need ids of their own"


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(0.2)  # polling other processes towards a deadline


async def test_the_compose_set_up_runs_as_one_cluster(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The Compose services as processes: ports and the Redis host are this machine's."""
    services = compose()["services"]
    emulator_command = list(services["emulator"]["command"])
    emulator_port = free_port()
    emulator_command[emulator_command.index("--port") + 1] = str(emulator_port)
    processes = [await start_cli(*emulator_command, cwd=tmp_path)]
    client = redis.Redis.from_url(redis_server.url)
    try:
        await assert_runnable(list(services["emulator"]["command"]), "emulator service")
        await _until(lambda: _listening(emulator_port), "the emulator listens")
        admin_ports: dict[str, int] = {}
        for name, service in sorted(mux_services().items()):
            source, _ = compose_config(service)
            directory = tmp_path / name
            directory.mkdir()
            config = directory / "genesys-mux.toml"
            config.write_text(source.read_text().replace(DATA_DIR, str(directory)))
            command = list(service["command"])
            await assert_runnable(command, name)
            command[command.index("-c") + 1] = str(config)
            base_url = command[command.index("--base-url") + 1]
            assert base_url == "http://127.0.0.1:8080"  # the emulator, over the shared loopback
            command[command.index("--base-url") + 1] = f"http://127.0.0.1:{emulator_port}"
            admin_ports[name] = free_port()
            command[command.index("--admin-port") + 1] = str(admin_ports[name])
            env = {
                key: str(value)
                for key, value in service["environment"].items()
                if not key.startswith("REDIS_")
            }
            env["REDIS_URL"] = redis_server.url
            processes.append(await start_cli(*command, env=env, cwd=directory))

        def holders() -> dict[str, str]:
            keys = cast(list[bytes], client.keys("genesys-mux:cluster:{contact-centre}:lease:*"))
            found = {}
            for key in keys:
                value = cast(bytes | None, client.get(key))
                if value is not None:
                    found[key.decode().rsplit(":", 1)[1]] = value.decode().rpartition("|")[0]
            return found

        async def carried() -> bool:
            for process in processes:
                assert process.returncode is None, "a Compose service's process ended"
            return set(holders()) == {"voice", "chat"} and all(
                client.xlen(f"events:{s}") > 0 for s in ("voice", "chat")
            )

        await _until(carried, "both streams carried and written to Redis")
        assert set(holders().values()) <= set(mux_services())

        async def all_ready() -> bool:
            async with aiohttp.ClientSession() as session:
                for port in admin_ports.values():
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            if resp.status != 200:
                                return False
                    except aiohttp.ClientConnectionError:
                        return False
            return True

        await _until(all_ready, "every instance ready (holders and spare)")
        for name, service in mux_services().items():
            assert await healthcheck_passes(service["healthcheck"]["test"], admin_ports[name])
    except AssertionError as exc:
        outputs = []
        for process in processes:
            if process.returncode is None:
                process.kill()
            _, err = await process.communicate()
            outputs.append(err.decode()[-3000:])
        raise AssertionError(f"{exc}\n" + "\n---\n".join(outputs)) from None
    finally:
        client.close()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.communicate()


# -- systemd ---------------------------------------------------------------------


def unit_settings() -> Iterator[tuple[str, str]]:
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


async def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (Debian: apt-get install systemd)")
    settings = dict(unit_settings())
    argv = shlex.split(settings["ExecStart"])
    assert argv[0] == "/opt/genesys-mux/bin/genesys-mux"
    await assert_runnable(argv[1:], "ExecStart")
    assert settings["Restart"] == "on-failure"
    assert settings["KillSignal"] == "SIGTERM"
    assert float(settings["TimeoutStopSec"].removesuffix("s")) >= 2 * 10 + DRAIN_S
    for key in ("DynamicUser", "NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[key] == "yes", key
    assert settings["ProtectSystem"] == "strict"
    assert settings["StateDirectory"] == "genesys-mux"

    # verify wants ExecStart's binary to exist: point it at this environment's.
    here = Path(sys.executable).parent / "genesys-mux"
    assert here.exists(), f"{here} is missing: install the project (scripts/test does)"
    unit = tmp_path / "genesys-mux.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(argv[0], str(here)))
    code, output = await run_tool(analyze, "verify", str(unit))
    assert code == 0, output
    assert output.strip() == "", output  # a misspelt setting is only a warning: none allowed

    code, output = await run_tool(analyze, "security", "--offline=true", str(unit))
    assert code == 0, output
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert exposure is not None, output
    assert float(exposure.group(1)) <= 2.0, output


# -- Kubernetes ------------------------------------------------------------------


async def test_the_kubernetes_manifest_probes_what_the_admin_server_serves(
    tmp_path: Path,
) -> None:
    objects = manifest()
    assert {"ConfigMap", "Deployment", "Service"} <= set(objects)
    config_text = objects["ConfigMap"]["data"]["genesys-mux.toml"]
    config = validated(config_text, tmp_path)
    pod = objects["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    await assert_runnable(container["args"], "container args")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == config.settings.admin_port
    assert config.settings.admin_host == "0.0.0.0"  # noqa: S104 - probes come from the node
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    for probe in probes.values():
        assert probe["port"] in ("admin", ports["admin"]), probe
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"

    # The paths, asked of a real admin server: answered, not 404.
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        async with AdminServer(h.mux, metrics) as admin, aiohttp.ClientSession() as session:
            for kind, probe in probes.items():
                async with session.get(f"{admin.base_url}{probe['path']}") as resp:
                    assert resp.status in (200, 503), (kind, probe, resp.status)
            async with session.get(f"{admin.base_url}/nowhere") as resp:
                assert resp.status == 404  # what a wrong path would get
        metrics.close()

    # Credentials come from the Secret, never from the manifest.
    env = {e["name"]: e for e in container["env"]}
    for name in ("GENESYSCLOUD_OAUTHCLIENT_ID", "GENESYSCLOUD_OAUTHCLIENT_SECRET", "REDIS_URL"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert config.cluster is not None
    assert config.cluster.url_env in env

    assert spec["terminationGracePeriodSeconds"] >= drain_budget(config)
    assert spec["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = dict(instructions(DOCKERFILE.read_text(encoding="utf-8")))["USER"]
    assert str(spec["securityContext"]["runAsUser"]) == dockerfile_user.split(":")[0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # A read-only root: what the configuration writes must be on a writable volume.
    original = parse_config(tomllib.loads(config_text.replace(DATA_DIR, str(tmp_path))))
    assert original.settings.dlq_path.startswith(str(tmp_path))
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert DATA_DIR in writable

    service = objects["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["ports"]
    assert port["targetPort"] in ("admin", ports["admin"])


# -- GENESYS_MUX_INSTANCE_ID ---------------------------------------------------------


def test_the_instance_id_variable_names_a_cluster_member() -> None:
    cluster = ClusterSection(url="redis://127.0.0.1:6379/0", instance_id="from-file")
    assert cluster.member_id({}) == "from-file"
    assert cluster.member_id({"GENESYS_MUX_INSTANCE_ID": "mux-1"}) == "mux-1"
    with pytest.raises(ConfigError, match="GENESYS_MUX_INSTANCE_ID='no spaces' is not a usable"):
        cluster.member_id({"GENESYS_MUX_INSTANCE_ID": "no spaces"})
