"""`kanalvaxel serve` on its sandbox defaults, as a real process: the simulators of FaR and two mailbox
operators start with it, and a letter posted over HTTP ends in the right operator's store, verified there."""

from __future__ import annotations

import json
import signal
import ssl
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

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("processes", [1, 2], ids=["in-process-worker", "two-worker-processes"])
def test_serve_delivers_digital_mail_to_the_operator_far_names(
    db_url: str, tmp_path: Path, dev_certs: Path, processes: int
) -> None:
    # With worker processes, the letters are signed and relayed in children that use the simulators the
    # serving process started (their addresses passed on), not simulators of their own.
    port = free_port()
    log = tmp_path / "serve.log"
    env = process_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_API__PORT=str(port),
        KANALVAXEL_MINA_MEDDELANDEN__ENABLED="true",
        KANALVAXEL_MINA_MEDDELANDEN__STATUS_POLL_SECONDS="0.2",
        KANALVAXEL_MINA_MEDDELANDEN__STATUS_POLL_MAX_SECONDS="1",
        KANALVAXEL_WORKER__PROCESSES=str(processes),
    )
    if db_url.startswith("postgresql"):  # the relay's buffer beside ours
        env["KANALVAXEL_MINA_MEDDELANDEN__RELAY_DATABASE_URL"] = db_url
    proc = start(["serve"], env, tmp_path, log)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False)
    try:
        wait_ready(http, log)
        sandbox = json.loads((tmp_path / "var" / "sandbox.json").read_text())
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        status_urls = {}
        for n, recipient in enumerate(("19700101-1233", "19750505-2386")):
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"e2e-mm-{n}"}
            r = http.post("/v1/shipments", json=letter_json(recipient), headers=headers)
            assert r.status_code == 202, r.text
            status_urls[recipient] = r.json()["status_url"]
        auth = {"Authorization": f"Bearer {key}"}

        def reached(url: str, *states: str) -> bool:
            return str(http.get(url, headers=auth).json()["state"]) in states

        digital_url, paper_url = status_urls["19700101-1233"], status_urls["19750505-2386"]
        wait_for(lambda: reached(digital_url, "DELIVERED", "FAILED"), 60, "digital delivery", log)
        wait_for(lambda: reached(paper_url, "HANDED_OVER", "DELIVERED", "FAILED"), 60, "print", log)
        digital = http.get(status_urls["19700101-1233"], headers=auth).json()
        assert (digital["state"], digital["channel"]) == ("DELIVERED", "mina_meddelanden"), digital["events"]
        assert digital["result"]["operator_name"] == "Kivra (simulator)"
        assert "Kivra (simulator)" in digital["events"][-1]["message"]
        opted_out = http.get(status_urls["19750505-2386"], headers=auth).json()
        assert opted_out["channel"] == "print"
        reasons = {o["channel"]: o for o in opted_out["decision"]["options"]}
        assert reasons["mina_meddelanden"]["codes"] == ["SENDER_NOT_ACCEPTED"]

        # What the operator simulator stored, asked over its own mutual-TLS endpoint.
        ctx = ssl.create_default_context(cafile=str(dev_certs / "ca.pem"))
        ctx.load_cert_chain(str(dev_certs / "client.pem"), str(dev_certs / "client.key"))
        kivra_base = sandbox["operators"]["kivra"]["url"].removesuffix("/service/v3")
        with httpx.Client(verify=ctx, trust_env=False, timeout=10) as op:
            stored = op.get(f"{kivra_base}/_simulator/messages").json()
        assert stored["operator"]["name"] == "Kivra (simulator)"
        assert [m["message_id"] for m in stored["accepted"]] == [digital["id"]]
        assert stored["rejected"] == []

        # ... and what a newcomer sees without a client certificate: `sandbox-inbox` lists digital mail too.
        listed = subprocess.run(
            [*KANALVAXEL, "sandbox-inbox", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["kind"] == "digital"
        assert (row["operator"], row["to"], row["message_id"]) == (
            "Kivra (simulator)",
            "19700101-****",
            digital["id"],
        )
        assert row["subject"] == letter_json()["subject"]
        assert row["received_at"]
        human = subprocess.run(
            [*KANALVAXEL, "sandbox-inbox"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
            check=True,
        ).stdout  # fmt: skip
        assert "DIGITAL" in human
        assert "Kivra (simulator)" in human
        assert "19700101-****" in human
        assert "19700101-1233" not in human
        assert "197001011233" not in human
    finally:
        stop_serve(proc)
        http.close()
    # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit here.
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]
    assert "stopped cleanly" in log.read_text()
