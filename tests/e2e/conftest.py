"""Helpers for tests that run kanalväxel as real processes."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

KANALVAXEL = [sys.executable, "-m", "kanalvaxel.entrypoints.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(database_url: str, tmp_path: Path, dev_certs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANALVAXEL_")}
    env.update(
        {
            "KANALVAXEL_DATABASE__URL": database_url,
            "KANALVAXEL_PRINT__SPOOL_DIR": str(tmp_path / "spool"),
            "KANALVAXEL_VAR_DIR": str(tmp_path / "var"),
            "KANALVAXEL_DEV_CERTS_DIR": str(dev_certs),
            "KANALVAXEL_WORKER__POLL_INTERVAL_SECONDS": "0.1",
            "KANALVAXEL_LOG_LEVEL": "INFO",
            # Digital mail only where a test turns it on (test_mina_meddelanden.py).
            "KANALVAXEL_MINA_MEDDELANDEN__ENABLED": "false",
            "KANALVAXEL_EMAIL__ENABLED": "false",
            "KANALVAXEL_SMS__ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*KANALVAXEL, *args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `check` until it holds; fail with the log's tail after `timeout`, or once `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(
                f"the process exited ({process.returncode}) while waiting for {what}\n{tail}"
            )
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


def wait_ready(http: httpx.Client, log: Path, timeout: float = 60) -> None:
    """Wait until the service started by a test answers /readyz with 200."""

    def ready() -> bool:
        try:
            return http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout, "the service to be ready", log)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a service started by a test and wait for it; kill it (and fail) if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def pdftotext(path: Path) -> str:
    assert shutil.which("pdftotext"), "poppler-utils (pdftotext) is required; .ci/run installs it"
    return subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True, text=True).stdout


# The same database parametrisation as the integration tests: every e2e test runs on SQLite and PostgreSQL.
from tests.integration.conftest import db_url  # noqa: E402, F401


def letter_json(recipient: str = "19121212-1212") -> dict[str, object]:
    """A whole letter as a case system posts it: postal address, a PDF attachment, support info."""
    from tests.integration.conftest import make_pdf

    return {
        "recipient": {
            "id": recipient,
            "name": "Åsa Öberg",
            "postal_address": {"lines": ["Storgatan 1"], "postal_code": "123 45", "city": "Småstad"},
        },
        "subject": "Beslut om bygglov",
        "body": {"content_type": "text/plain", "content": "Hej!\n\nDitt bygglov är beviljat."},
        "attachments": [
            {"filename": "beslut.pdf", "content_base64": base64.b64encode(make_pdf("Bilaga")).decode()}
        ],
        "confidentiality": "public",
        "message_type": "beslut",
        "case_reference": "BN 2026/42",
        "support_info": {"text": "Frågor? Ring kontaktcenter."},
    }
