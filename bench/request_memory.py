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

import argparse
import base64
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._service import rss, start_serve  # noqa: E402
from tests.api.helpers import PDF, payload  # noqa: E402

CHUNK = b"x" * (256 * 1024)


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
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help explains what it measures
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from kanalvaxel.devcerts import ensure_dev_certs

        ensure_dev_certs(root / "certs")
        proc, base = start_serve(f"sqlite:///{root / 'kv.db'}", root, root / "certs")
        port = int(base.rsplit(":", 1)[1])
        try:
            http = httpx.Client(base_url=base, timeout=30, trust_env=False)
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
