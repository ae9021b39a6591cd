"""The loopback HTTPS runner: mutual TLS is enforced at the handshake, ports are ephemeral, stop is clean."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from formedlare.errors import FormedlareError
from formedlare.https_server import HttpsServerError, TlsFiles, serve_in_thread

SEEN: list[str] = []


async def _whoami(request: Request) -> JSONResponse:
    SEEN.append(request.url.path)
    return JSONResponse({"ok": True})


APP = Starlette(routes=[Route("/whoami", _whoami)])


def _session(dev_certs: Path, *, with_cert: bool) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(dev_certs / "ca.pem")
    if with_cert:
        session.cert = (str(dev_certs / "client.pem"), str(dev_certs / "client.key"))
    return session


def _mtls(dev_certs: Path) -> TlsFiles:
    return TlsFiles(dev_certs / "server.pem", dev_certs / "server.key", client_ca=dev_certs / "ca.pem")


def test_client_with_certificate_gets_200(dev_certs: Path) -> None:
    with serve_in_thread(APP, _mtls(dev_certs), name="t") as server, _session(dev_certs, with_cert=True) as s:
        assert server.url == f"https://127.0.0.1:{server.port}"
        assert server.port != 0
        response = s.get(f"{server.url}/whoami", timeout=5)
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        assert response.headers["x-served-by"] == "t"


def test_client_without_certificate_is_refused_at_tls(dev_certs: Path) -> None:
    SEEN.clear()
    with serve_in_thread(APP, _mtls(dev_certs)) as server:
        # Plain ssl, so the failure is the handshake itself and not something requests made of it.
        context = ssl.create_default_context(cafile=str(dev_certs / "ca.pem"))
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            # TLS 1.3: the client finishes its side first; the refusal arrives on the first read, as an
            # alert or as the server closing the connection.
            try:
                tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = tls.recv(1024)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                answer = b""
        assert answer == b""
        with _session(dev_certs, with_cert=False) as s, pytest.raises(requests.exceptions.ConnectionError):
            s.get(f"{server.url}/whoami", timeout=5)
    assert SEEN == []


def test_client_certificate_from_another_ca_is_refused(dev_certs: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "s.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "s.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with serve_in_thread(APP, _mtls(dev_certs)) as server, _session(dev_certs, with_cert=False) as s:
        s.cert = (str(tmp_path / "s.pem"), str(tmp_path / "s.key"))
        with pytest.raises(requests.exceptions.ConnectionError):
            s.get(f"{server.url}/whoami", timeout=5)


def test_without_client_ca_any_client_is_served(dev_certs: Path) -> None:
    tls = TlsFiles(dev_certs / "server.pem", dev_certs / "server.key")
    with serve_in_thread(APP, tls) as server, _session(dev_certs, with_cert=False) as s:
        assert s.get(f"{server.url}/whoami", timeout=5).status_code == 200


def test_stop_closes_the_port_and_is_idempotent(dev_certs: Path) -> None:
    server = serve_in_thread(APP, _mtls(dev_certs))
    with _session(dev_certs, with_cert=True) as s:
        # A kept-alive connection must not hold the shutdown up.
        assert s.get(f"{server.url}/whoami", timeout=5).status_code == 200
        server.stop()
        server.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            s.get(f"{server.url}/whoami", timeout=2)


def test_unreadable_key_is_an_error_not_a_dead_thread(dev_certs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(HttpsServerError) as caught:
        serve_in_thread(APP, TlsFiles(dev_certs / "server.pem", bad))
    assert isinstance(caught.value, FormedlareError)
