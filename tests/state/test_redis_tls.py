"""Redis over TLS: a ``rediss://`` URL verifies the server's chain and host name.

A real ``redis-server`` listens with TLS only (``--port 0``), its
certificate signed by a throwaway CA made with ``openssl`` in the test's
directory. The CA is given as the documentation says, with redis-py's
``ssl_ca_certs`` query option; a server whose certificate comes from
another CA, or names another host, is refused.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from genesys_mux.cluster import LeaseTable
from genesys_mux.core.checkpoint import Remembered, StreamCheckpoint
from genesys_mux.errors import StateError
from genesys_mux.sinks.redis_streams import RedisStreamsSink
from genesys_mux.state import RedisStateStore
from genesys_mux.state.redis_server import connect
from tests.sinks.conftest import START_DEADLINE_S, a_gap, free_port, wait_until_up


def openssl(directory: Path, *args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("openssl is not installed: the TLS test makes its certificates with it")
    subprocess.run(  # noqa: S603 - our own arguments, binary found by shutil.which
        [binary, *args], cwd=directory, check=True, capture_output=True, timeout=60
    )


def a_ca(directory: Path, name: str) -> Path:
    """A self-signed CA in ``directory``: ``{name}.pem`` and ``{name}.key``."""
    openssl(
        directory,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=genesys-mux {name}"),
    )
    return directory / f"{name}.pem"


def a_server_cert(directory: Path, ca: str, name: str, alt_names: str) -> tuple[Path, Path]:
    """A server certificate for ``alt_names`` (``IP:127.0.0.1,DNS:localhost``), signed by ``ca``."""
    (directory / f"{name}.ext").write_text(
        f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        directory,
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key"),
        *("-out", f"{name}.csr", "-subj", f"/CN={name}"),
    )
    openssl(
        directory,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
        *("-set_serial", str(abs(hash(name)) % 10**9), "-days", "1"),
        *("-out", f"{name}.pem", "-extfile", f"{name}.ext"),
    )
    return directory / f"{name}.pem", directory / f"{name}.key"


@dataclass
class TlsRedis:
    """A redis-server that speaks TLS only, and the CA that signed its certificate."""

    port: int
    ca: Path
    process: subprocess.Popen[bytes]

    def url(self, ca: Path | None = None, host: str = "127.0.0.1") -> str:
        query = "" if ca is None else f"?ssl_ca_certs={quote(str(ca), safe='/')}"
        return f"rediss://{host}:{self.port}/0{query}"


def _tls_ping(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=1.0) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def start_tls_redis(directory: Path, ca: Path, cert: Path, key: Path) -> TlsRedis:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log = directory / f"redis-{port}.log"
    errors = directory / f"redis-{port}.err"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, binary found by shutil.which
            [
                binary,
                *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
                *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
                *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
                *("--save", "", "--appendonly", "no", "--dir", str(directory)),
                *("--logfile", str(log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until_up(process, lambda: _tls_ping(port, ca), log, "redis-server with TLS")
    except RuntimeError:
        said = errors.read_text(errors="replace") + (log.read_text() if log.exists() else "")
        if process.poll() is not None and "tls" in said.lower():
            pytest.skip(f"redis-server here is built without TLS: {said.strip()[:200]}")
        raise
    return TlsRedis(port, ca, process)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """A TLS-only redis-server whose certificate names 127.0.0.1 and localhost."""
    ca = a_ca(tmp_path, "ca")
    cert, key = a_server_cert(tmp_path, "ca", "server", "IP:127.0.0.1,DNS:localhost")
    server = start_tls_redis(tmp_path, ca, cert, key)
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=START_DEADLINE_S)


def a_checkpoint() -> StreamCheckpoint:
    memory = [Remembered(f"conversation-{i}", 1000.0 + i, b"\x01" * 8, True, i) for i in range(5)]
    return StreamCheckpoint("calls", "f", 6, 1005.0, "run-1", 1006.0, memory)


async def test_every_role_connects_with_the_ca_given_by_ssl_ca_certs(tls_redis: TlsRedis) -> None:
    url = tls_redis.url(tls_redis.ca)
    store = RedisStateStore(url, prefix="tls:")
    await store.open()
    try:
        await store.save([a_checkpoint()])  # through the pool and the store's own connection
        assert (await store.load()) == {"calls": a_checkpoint()}
    finally:
        await store.close()
    # The name the certificate holds, besides its address.
    store = RedisStateStore(tls_redis.url(tls_redis.ca, host="localhost"), prefix="tls:")
    await store.open()
    await store.close()
    sink = RedisStreamsSink(url, fence=3, dedupe_ttl_s=60)
    await sink.start()
    try:
        await sink.send([a_gap("calls")])
    finally:
        await sink.close()
    client = connect(url, "[cluster]", socket_timeout=5.0)
    try:
        table = LeaseTable(client, cluster="tls", instance="a")
        lease = await table.acquire("calls")
        assert lease is not None
        assert lease.token >= 1
    finally:
        await client.aclose()


async def test_a_server_whose_certificate_another_ca_signed_is_refused(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    other = a_ca(tmp_path, "other-ca")
    for url in (tls_redis.url(other), tls_redis.url()):  # another CA, the system's CAs
        store = RedisStateStore(url, prefix="tls:", timeout_s=2.0)
        with pytest.raises(StateError) as caught:
            await store.open()
        await store.close()
        message = str(caught.value)
        assert "TLS certificate was not accepted" in message
        assert "ssl_ca_certs=/path/to/ca.pem" in message
        assert "CERTIFICATE_VERIFY_FAILED" in message


async def test_a_server_whose_certificate_names_another_host_is_refused(tmp_path: Path) -> None:
    ca = a_ca(tmp_path, "ca")
    cert, key = a_server_cert(tmp_path, "ca", "elsewhere", "DNS:redis.elsewhere.example")
    # Started with a certificate for 127.0.0.1 (the start-up probe checks
    # the name too), then given one for another host.
    good_cert, good_key = a_server_cert(tmp_path, "ca", "server", "IP:127.0.0.1")
    server = start_tls_redis(tmp_path, ca, good_cert, good_key)
    try:
        client = connect(server.url(ca), "test", socket_timeout=5.0)
        try:
            # Both at once: a certificate and a key that do not match are refused.
            await client.config_set("tls-cert-file", str(cert), "tls-key-file", str(key))
        finally:
            await client.aclose()
        store = RedisStateStore(server.url(ca), prefix="tls:", timeout_s=2.0)
        with pytest.raises(StateError) as caught:
            await store.open()
        await store.close()
        assert "TLS certificate was not accepted" in str(caught.value)
        assert "mismatch" in str(caught.value)
    finally:
        server.process.terminate()
        server.process.wait(timeout=START_DEADLINE_S)
