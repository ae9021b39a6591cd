"""`kanalvaxel serve` on its sandbox defaults with e-mail and SMS, as a real process: the SMTP sink and the
SMS gateway simulator start with it, letters posted over HTTP arrive there (encrypted when confidential), and
`kanalvaxel sandbox-inbox` lists what they received."""

from __future__ import annotations

import email
import email.policy
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
    process_env,
    start,
    stop_serve,
    wait_for,
    wait_ready,
)
from tests.integration.conftest import make_pdf

pytestmark = pytest.mark.slow

POLICY = """
[[rule]]
name = "ej sekretess"
match.confidentiality = ["public", "internal"]
channels = ["email", "print"]
notices = [{ kind = "sms", with = ["print"] }]

[[rule]]
name = "sekretess"
channels = ["email_encrypted", "print"]
"""


def test_serve_sends_encrypted_and_plain_email_and_sms_notices_through_the_sandbox(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    env = process_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_API__PORT=str(port),
        KANALVAXEL_EMAIL__ENABLED="true",
        KANALVAXEL_SMS__ENABLED="true",
        KANALVAXEL_POLICY_FILE=str(tmp_path / "policy.toml"),
        KANALVAXEL_PRINT__BATCH_MAX_AGE_SECONDS="0",
    )
    proc = start(["serve"], env, tmp_path, log)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False)
    try:
        wait_ready(http, log)
        sandbox = json.loads((tmp_path / "var" / "sandbox.json").read_text())
        assert sandbox["smtp"]["security"] == "starttls"
        assert sandbox["sms_gateway"]["url"].startswith("https://127.0.0.1:")
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}

        secret = letter_json()
        secret["confidentiality"] = "confidential"
        secret["subject"] = "Beslut enligt LSS"
        secret["recipient"] = {  # type: ignore[index]
            **secret["recipient"],  # type: ignore[dict-item]
            "email": "mottagare@example.se",
            "smime_certificate": (dev_certs / "smime-recipient.pem").read_text(),
        }
        public = letter_json("19700101-1233")
        public["recipient"] = {**public["recipient"], "email": "asa@example.se"}  # type: ignore[dict-item]
        paper = letter_json()
        paper["recipient"] = {**paper["recipient"], "mobile": "+46 70 123 45 67"}  # type: ignore[dict-item]
        urls = {}
        for name, body in (("secret", secret), ("public", public), ("paper", paper)):
            r = http.post("/v1/shipments", json=body, headers={**auth, "Idempotency-Key": f"e2e-msg-{name}"})
            assert r.status_code == 202, r.text
            urls[name] = r.json()["status_url"]

        def shipment(name: str) -> dict[str, object]:
            data: dict[str, object] = http.get(urls[name], headers=auth).json()
            return data

        def sms_sent() -> bool:
            result = shipment("paper").get("result") or {}
            return (
                isinstance(result, dict) and result.get("notices", {}).get("sms", {}).get("state") == "SENT"
            )

        wait_for(lambda: shipment("secret")["state"] in ("DELIVERED", "FAILED"), 60, "encrypted e-mail", log)
        wait_for(lambda: shipment("public")["state"] in ("DELIVERED", "FAILED"), 60, "plain e-mail", log)
        wait_for(sms_sent, 60, "the SMS notice beside print", log)
        assert (shipment("secret")["state"], shipment("secret")["channel"]) == (
            "DELIVERED",
            "email_encrypted",
        )
        assert (shipment("public")["state"], shipment("public")["channel"]) == ("DELIVERED", "email")
        assert (shipment("paper")["state"], shipment("paper")["channel"]) == ("DELIVERED", "print")

        # `kanalvaxel send` carries what a letter can: e-mail, mobile, S/MIME certificate, confidentiality.
        attachment = tmp_path / "bilaga.pdf"
        attachment.write_bytes(make_pdf("Handskickad"))
        sent = subprocess.run(
            [*KANALVAXEL, "send", "--to", "19121212-1212", "--subject", "Beslut om färdtjänst",
             "--confidentiality", "confidential", "--email", "mottagare@example.se",
             "--mobile", "070-111 22 33",
             "--smime-certificate", str(dev_certs / "smime-recipient.pem"), "--attach", str(attachment),
             "--wait"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert "state: DELIVERED  channel: email_encrypted" in sent.stdout
        assert "  + email_encrypted: " in sent.stdout
        assert "  - print: ingen postadress angiven" in sent.stdout  # every option, with its reason

        listed = subprocess.run(
            [*KANALVAXEL, "sandbox-inbox", "--json"], env=env, cwd=tmp_path, capture_output=True, check=True
        )
        rows = [json.loads(line) for line in listed.stdout.decode().splitlines()]
        mails = {r["to"]: r for r in rows if r["kind"] == "e-post"}
        assert mails["mottagare@example.se"]["encrypted"] is True
        to_certificate = [r for r in rows if r["kind"] == "e-post" and r["to"] == "mottagare@example.se"]
        assert [r["encrypted"] for r in to_certificate] == [True, True]  # the API's letter and `send`'s
        assert "LSS" not in mails["mottagare@example.se"]["subject"]
        assert mails["asa@example.se"]["subject"] == "Beslut om bygglov"
        [sms] = [r for r in rows if r["kind"] == "sms"]
        assert sms["to"] == "+46701234567"
        assert "posten" in sms["text"]

        raw = Path(to_certificate[0]["file"]).read_bytes()  # the API's letter (files sort by time)
        decrypted = subprocess.run(
            ["openssl", "cms", "-decrypt", "-recip", str(dev_certs / "smime-recipient.pem"),
             "-inkey", str(dev_certs / "smime-recipient.key")],
            input=raw, capture_output=True, check=True,
        ).stdout  # fmt: skip
        verified = subprocess.run(
            ["openssl", "cms", "-verify", "-CAfile", str(dev_certs / "ca.pem")],
            input=decrypted, capture_output=True, check=True,
        ).stdout  # fmt: skip
        inner = email.message_from_bytes(verified, policy=email.policy.default)
        assert inner["Subject"] == "Beslut enligt LSS"
        assert b"Ditt bygglov" not in raw
    finally:
        stop_serve(proc)
        http.close()
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]
    assert "stopped cleanly" in log.read_text()
    assert "mottagare@example.se" not in log.read_text()
    assert "701234567" not in log.read_text()
