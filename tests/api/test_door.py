"""The API's door against a hostile client, on a real uvicorn server: a body is never read for someone
without a key, a streamed (chunked) body is counted as it arrives and refused past the limit, and the
access log gets one escaped line per answer."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from kanalvaxel.bootstrap import Container
from kanalvaxel.config import SANDBOX_SENDER_KEY

from .conftest import LiveServer
from .helpers import MakeContainer, payload

CHUNK = b"x" * 65536


def _connect(server: LiveServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        part = sock.recv(65536)
        if not part:
            break
        rest += part
    return status, headers, rest[:length]


def _stream_chunked(sock: socket.socket, headers: dict[str, str], total: int) -> tuple[int, int]:
    """Send a chunked POST of up to `total` bytes; stop when the server answers or stops reading.
    Returns (bytes sent, status)."""
    head = "POST /v1/shipments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sent = 0
    sock.settimeout(0.5)
    try:
        while sent < total:
            try:
                sock.sendall(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
            except TimeoutError:
                break  # the server has stopped reading: its buffers and ours are full
            sent += len(CHUNK)
            sock.setblocking(False)
            try:
                peek = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                peek = b""
            finally:
                sock.setblocking(True)
                sock.settimeout(0.5)
            if peek:
                break  # an answer came before the body was complete
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(30)
    status, _, _ = _read_response(sock)
    return sent, status


@pytest.fixture
def small_limit(make_container: MakeContainer) -> Container:
    # max_body = total attachments * 1.4 + 1 MiB: about 2.4 MB here.
    return make_container(
        limits={"max_total_attachment_bytes": 1024 * 1024, "max_attachment_bytes": 1024 * 1024}
    )


def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(
    small_limit: Container, live_server: Callable[[Container], LiveServer]
) -> None:
    server = live_server(small_limit)
    with _connect(server) as sock:
        sent, status = _stream_chunked(sock, {"Content-Type": "application/json"}, 64 * 1024 * 1024)
    assert status == 401
    # The answer came at once: far less than the 64 MB offered crossed (what sits in socket buffers).
    assert sent < 16 * 1024 * 1024


def test_a_chunked_body_past_the_limit_is_413_as_it_arrives(
    small_limit: Container, live_server: Callable[[Container], LiveServer]
) -> None:
    key = small_limit.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    server = live_server(small_limit)
    with _connect(server) as sock:
        sent, status = _stream_chunked(
            sock,
            {"Content-Type": "application/json", "Authorization": f"Bearer {key}", "Idempotency-Key": "big"},
            64 * 1024 * 1024,
        )
    assert status == 413
    assert sent < 24 * 1024 * 1024  # refused near the 2.4 MB limit, not after the whole 64 MB
    with small_limit.uow() as uow:
        assert uow.shipment_by_idempotency_key(small_limit.clients.list()[0].id, "big") is None


def test_a_chunked_body_within_the_limit_is_accepted(
    small_limit: Container, live_server: Callable[[Container], LiveServer]
) -> None:
    key = small_limit.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    server = live_server(small_limit)
    body = json.dumps(payload()).encode()
    with _connect(server) as sock:
        head = (
            "POST /v1/shipments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\nIdempotency-Key: small\r\n\r\n"
        )
        chunks = b"".join(
            b"%x\r\n" % len(body[i : i + 1000]) + body[i : i + 1000] + b"\r\n"
            for i in range(0, len(body), 1000)
        )
        sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        status, _, answer = _read_response(sock)
    assert status == 202, answer


def test_the_access_log_escapes_what_came_from_outside_and_keeps_ids_whole(
    container: Container, live_server: Callable[[Container], LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = live_server(container)
    shipment_id = "3f1c2a9e-5b7d-4e21-9a0c-123456794092"
    with caplog.at_level(logging.INFO, logger="kanalvaxel.access"), _connect(server) as sock:
        sock.sendall(b"GET /healthz%1b%5b31m%08x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert _read_response(sock)[0] == 404
        sock.sendall(f"GET /v1/shipments/{shipment_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert _read_response(sock)[0] == 401
        deadline = time.monotonic() + 5
        while (
            len([r for r in caplog.records if r.name == "kanalvaxel.access"]) < 2
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "kanalvaxel.access"]
    assert lines[0].startswith("GET /healthz\\x1b[31m\\x08x 404 ")
    assert "\x1b" not in lines[0]
    assert lines[1].startswith(f"GET /v1/shipments/{shipment_id} 401 ")  # an id is not a personnummer


def test_a_500_has_one_access_line_and_one_traceback(
    container: Container, live_server: Callable[[Container], LiveServer], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    key = container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(container.queries, "shipment", broken)
    server = live_server(container)
    with caplog.at_level(logging.INFO), _connect(server) as sock:
        sock.sendall(
            f"GET /v1/shipments/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        )
        status, headers, body = _read_response(sock)
        # The connection lives on after a 500.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 200
    assert status == 500
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["detail"] == "an internal error occurred"
    access = [r.getMessage() for r in caplog.records if r.name == "kanalvaxel.access"]
    assert [a.split(" ")[:3] for a in access] == [
        ["GET", "/v1/shipments/x", "500"],
        ["GET", "/healthz", "200"],
    ]
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1
    assert "GET /v1/shipments/x" in tracebacks[0].getMessage()
