"""The running service against its committed OpenAPI file, by schemathesis: examples, coverage, fuzzing and
the stateful phase that follows the links from a created shipment to its state. No answer may be a 5xx, be
outside the spec (status, headers, schema, content type), or be an error that is not problem+json; invalid
input must be refused. A fixed seed makes every run generate the same requests."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port, process_env, start, stop_serve, wait_ready

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "openapi" / "openapi.json"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
    ]
)
SEED = "20261203"


def _template(url: str) -> str:
    path = url.split("?")[0].split("://", 1)[1].split("/", 1)[1]
    path = re.sub(r"^v1/shipments/[^/]+$", "v1/shipments/{shipment_id}", path)
    return "/" + re.sub(r"^v1/recipients/[^/]+/channels$", "v1/recipients/{recipient_id}/channels", path)


def test_the_service_keeps_to_its_openapi_file_under_schemathesis(
    db_url: str, tmp_path: Path, dev_certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = process_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_API__PORT=str(port),
        KANALVAXEL_MINA_MEDDELANDEN__ENABLED="true",  # the precheck asks the sandbox FaR
        KANALVAXEL_LOG_LEVEL="WARNING",
    )
    if db_url.startswith("postgresql"):
        env["KANALVAXEL_MINA_MEDDELANDEN__RELAY_DATABASE_URL"] = db_url
    proc = start(["serve"], env, tmp_path, log)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as http:
            wait_ready(http, log)
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        har = tmp_path / "schemathesis.har"
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", str(SPEC),
                "--url", base,
                "--header", f"Authorization: Bearer {key}",
                "--checks", CHECKS,
                "--phases", "examples,coverage,fuzzing,stateful",
                "--max-examples", "60",
                "--seed", SEED,
                "--generation-deterministic",
                "--workers", "1",
                "--request-timeout", "30",
                "--no-color",
                "--report", "har,json",
                "--report-har-path", str(har),
                "--report-json-path", str(tmp_path / "schemathesis.json"),
            ],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("KANALVAXEL_")},
                 "SCHEMATHESIS_HOOKS": "tests.contract.schemathesis_hooks", "PYTHONPATH": str(REPO)},
            cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        stop_serve(proc)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]

    entries = json.loads(har.read_text())["log"]["entries"]
    by_status: collections.Counter[tuple[str, str, int]] = collections.Counter()
    not_problem = []
    for e in entries:
        status = int(e["response"]["status"])
        by_status[(e["request"]["method"], _template(e["request"]["url"]), status)] += 1
        if status >= 400:
            kind = next(
                (h["value"] for h in e["response"]["headers"] if h["name"].lower() == "content-type"), ""
            )
            if kind != "application/problem+json":
                not_problem.append((e["request"]["method"], e["request"]["url"], status, kind))
    server_errors = sum(n for (_, _, s), n in by_status.items() if s >= 500)
    created = by_status[("POST", "/v1/shipments", 202)]
    followed = by_status[("GET", "/v1/shipments/{shipment_id}", 200)]
    with capsys.disabled():
        print(
            f"\nschemathesis ({db_url.split(':')[0]}): {len(entries)} requests, {server_errors} 5xx, "
            f"{len(not_problem)} errors not problem+json, {created} shipments created, "
            f"{by_status[('POST', '/v1/shipments', 200)]} replays, {followed} created shipments read back"
        )
    assert server_errors == 0
    assert not_problem == []
    # The stateful phase reached the core: letters were created and their links followed.
    assert created >= 10, by_status
    assert followed >= 5, by_status
