"""`kanalvaxel serve` as a real process: a letter posted over HTTP ends as a PDF in a closed print batch."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    KANALVAXEL,
    free_port,
    letter_json,
    pdftotext,
    process_env,
    start,
    wait_for,
    wait_ready,
)
from tests.integration.conftest import make_pdf

pytestmark = pytest.mark.slow


def test_a_letter_posted_over_http_ends_in_a_closed_vendor_batch(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = process_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_API__PORT=str(port),  # the sandbox's own batch age: the README's example, as printed
    )
    proc = start(["serve"], env, tmp_path, log)
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, timeout=10, trust_env=False)
    try:
        wait_ready(http, log)
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        assert key in log.read_text()  # the start-up banner prints a ready-to-paste example
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "e2e-1"}
        body = letter_json()
        r = http.post("/v1/shipments", json=body, headers=headers)
        assert r.status_code == 202, r.text
        status_url = r.json()["status_url"]

        def delivered() -> bool:
            return str(http.get(status_url, headers=headers).json()["state"]) == "DELIVERED"

        wait_for(delivered, 60, "the letter to be delivered", log)
        shipment = http.get(status_url, headers=headers).json()
        assert shipment["channel"] == "print"
        reasons = {o["channel"]: o for o in shipment["decision"]["options"]}
        assert reasons["print"]["eligible"] is True
        assert reasons["mina_meddelanden"]["codes"] == ["CHANNEL_NOT_CONFIGURED"]
        assert [e["type"] for e in shipment["events"]] == [
            "ACCEPTED",
            "DECIDED",
            "ATTEMPT",
            "HANDED_OVER",
            "DELIVERED",
        ]
        batch_id = shipment["result"]["print_batch"]

        batch = tmp_path / "spool" / "outgoing" / batch_id
        manifest = json.loads((batch / "manifest.json").read_text())
        assert [x["shipment_id"] for x in manifest["letters"]] == [shipment["id"]]
        (pdf,) = batch.glob("*.pdf")
        text = pdftotext(pdf)
        assert "Åsa Öberg" in text
        assert "123 45 Småstad" in text
        assert "Bilaga sida 1" in text
        assert "19121212" not in (batch / "manifest.csv").read_text()
        # `kanalvaxel send` is the by-hand path through the same API: one letter from files.
        attachment = tmp_path / "bilaga.pdf"
        attachment.write_bytes(make_pdf("Handskickad"))
        sent = subprocess.run(
            [
                *KANALVAXEL,
                "send",  # finds the running sandbox and its key by itself (var/sandbox.json, var/dev-api-key)
                "--to",
                "19121212-1212",
                "--subject",
                "Hej",
                "--name",
                "Tolvan Tolvansson",
                "--address",
                "Storgatan 1",
                "--postal-code",
                "123 45",
                "--city",
                "Småstad",
                "--attach",
                str(attachment),
                "--wait",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert f"at {base}" in sent.stdout.splitlines()[0]
        assert "state: DELIVERED  channel: print" in sent.stdout
        assert "  + print: " in sent.stdout
        assert "  - mina_meddelanden: " in sent.stdout
        assert "[CHANNEL_NOT_CONFIGURED]" in sent.stdout
        assert "last event: DELIVERED" in sent.stdout
        refused = subprocess.run(
            [
                *KANALVAXEL,
                "send",
                "--url",
                base,
                "--api-key",
                key,
                "--to",
                "19121212-1213",
                "--subject",
                "Hej",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0
        assert refused.stderr.strip().startswith("kanalvaxel: error:")
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "recipient.id" in refused.stderr

        # The service's log lines (not the start-up banner's example) never carry a personnummer.
        log_lines = [line for line in log.read_text().splitlines() if " INFO " in line or " WARNING " in line]
        assert log_lines
        assert not [line for line in log_lines if "1212-1212" in line or "191212121212" in line]
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit here.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        http.close()
    assert "Application shutdown complete" in log.read_text()
    assert "stopped cleanly" in log.read_text()
