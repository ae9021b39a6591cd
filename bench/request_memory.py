"""Server memory under hostile request bodies: what a client can make `kanalvaxel serve` hold.

Starts the sandbox service (SQLite, no simulators) as its own process and measures its resident memory (RSS,
from /proc) while a client streams big bodies with `Transfer-Encoding: chunked`:
  - the baseline: RSS after one ordinary letter (a 1-page PDF) is accepted,
  - 400 MB without an API key (answered 401 before the body is read),
  - 315 MB with a valid key (answered 413 once the streamed bytes pass the limit),
and prints, for each, the bytes the client got into the socket before the answer, the peak RSS and its
ratio to the baseline.
Usage (from the repo root): python bench/request_memory.py
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.api.helpers import PDF, payload  # noqa: E402

CHUNK = b"x" * (256 * 1024)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Samples a process's RSS every 10 ms in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def stream(port: int, headers: dict[str, str], total: int) -> tuple[int, int]:
    """POST `total` bytes in chunks until the server answers; (bytes sent, status)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = "POST /v1/shipments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sent = 0
    sock.settimeout(1.0)
    try:
        while sent < total:
            try:
                sock.sendall(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
            except TimeoutError:
                break  # the server stopped reading
            sent += len(CHUNK)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(60)
    data = b""
    try:
        while b"\r\n" not in data:
            part = sock.recv(4096)
            if not part:
                break
            data += part
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else 0
    return sent, status


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = socket.create_server(("127.0.0.1", 0)).getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KANALVAXEL_")}
        env |= {
            "KANALVAXEL_DATABASE__URL": f"sqlite:///{root / 'kv.db'}",
            "KANALVAXEL_VAR_DIR": str(root / "var"),
            "KANALVAXEL_PRINT__SPOOL_DIR": str(root / "spool"),
            "KANALVAXEL_DEV_CERTS_DIR": str(root / "certs"),
            "KANALVAXEL_API__PORT": str(port),
            "KANALVAXEL_MINA_MEDDELANDEN__ENABLED": "false",
            "KANALVAXEL_EMAIL__ENABLED": "false",
            "KANALVAXEL_SMS__ENABLED": "false",
            "KANALVAXEL_LOG_LEVEL": "WARNING",
        }
        log = (root / "serve.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kanalvaxel.entrypoints.cli", "serve"], env=env, stdout=log, stderr=log
        )
        try:
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
            for _ in range(300):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            key = (root / "var" / "dev-api-key").read_text().strip()
            auth = {"Authorization": f"Bearer {key}"}
            body = payload(
                attachments=[{"filename": "a.pdf", "content_base64": base64.b64encode(PDF).decode()}]
            )
            r = http.post("/v1/shipments", json=body, headers={**auth, "Idempotency-Key": "b"})
            assert r.status_code == 202, r.text
            time.sleep(1)
            baseline = rss(proc.pid)
            print(f"baseline RSS after one ordinary letter: {baseline / 2**20:.0f} MiB")
            for what, headers, total in (
                ("400 MB chunked, no API key", {}, 400 * 10**6),
                ("315 MB chunked, valid key", {**auth, "Idempotency-Key": "big"}, 315 * 10**6),
            ):
                peak = Peak(proc.pid)
                started = time.perf_counter()
                sent, status = stream(port, {"Content-Type": "application/json", **headers}, total)
                took = time.perf_counter() - started
                top = peak.stop()
                print(
                    f"{what}: answered {status} after {sent / 10**6:.1f} MB sent in {took:.2f} s; "
                    f"peak RSS {top / 2**20:.0f} MiB = {top / baseline:.2f} x baseline"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
