"""The committed OpenAPI file is what the app serves, and the CLI's errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

from kanalvaxel.entrypoints.api.errors import PROBLEM
from kanalvaxel.entrypoints.cli import openapi_text
from tests.conftest import run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "openapi" / "openapi.json"


def test_committed_openapi_file_is_up_to_date() -> None:
    assert COMMITTED.is_file(), f"{COMMITTED} is missing: run `kanalvaxel openapi` and commit it"
    committed = COMMITTED.read_text(encoding="utf-8")
    # A plain comparison; on failure: run `kanalvaxel openapi` from the repository root and commit.
    assert committed == openapi_text(), "openapi/openapi.json is out of date: run `kanalvaxel openapi`"


def test_openapi_documents_every_error_answer_as_problem_json() -> None:
    doc = json.loads(openapi_text())
    post = doc["paths"]["/v1/shipments"]["post"]
    assert {"400", "401", "403", "409", "413", "422"} <= set(post["responses"])
    assert "202" in post["responses"]
    assert set(doc["paths"]["/v1/shipments/{shipment_id}"]["get"]["responses"]) >= {"401", "404"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if status.startswith("4"):
                    assert list(resp["content"]) == [PROBLEM], (method, path, status)
    # FastAPI's own validation error shape is never what we answer, so it is not in the file either.
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    [idempotency] = [p for p in post["parameters"] if p["name"] == "Idempotency-Key"]
    assert idempotency["required"] is True
    assert idempotency["in"] == "header"


def test_cli_error_is_one_line_on_stderr(tmp_path: Path, dev_certs: Path) -> None:
    done = run_cli(tmp_path, dev_certs, "clients", "revoke", "nobody")
    assert done.returncode != 0
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == "kanalvaxel: error: no active client named 'nobody'"


def test_cli_error_is_the_only_line_on_stderr(tmp_path: Path, dev_certs: Path) -> None:
    done = run_cli(tmp_path, dev_certs, "clients", "revoke", "nobody")
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("kanalvaxel: error:")
