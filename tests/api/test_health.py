"""Liveness and readiness: /readyz is 503 when the database or the print spool cannot be used."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kanalvaxel.entrypoints.api.app import create_app

from .helpers import MakeContainer


def test_healthz_is_200_without_a_key(http: TestClient) -> None:
    r = http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_is_200_with_its_checks(http: TestClient) -> None:
    r = http.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "print_spool": "ok"}}


def test_readyz_leaves_out_the_spool_when_print_is_off(make_container: MakeContainer) -> None:
    container = make_container(print={"enabled": False})
    with TestClient(create_app(container)) as http:
        r = http.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok"}


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("where", ["sqlite-path-is-a-directory", "postgresql-port-closed"])
def test_readyz_is_503_when_the_database_is_unreachable(
    make_container: MakeContainer, tmp_path: Path, where: str
) -> None:
    if where == "sqlite-path-is-a-directory":
        directory = tmp_path / "not-a-database"
        directory.mkdir()
        url = f"sqlite:///{directory}"
    else:
        url = f"postgresql+psycopg://kanalvaxel:kanalvaxel@127.0.0.1:{_closed_port()}/kanalvaxel?connect_timeout=2"
    container = make_container(database_url=url, migrate=False)
    with TestClient(create_app(container)) as http:
        r = http.get("/readyz")
        assert http.get("/healthz").status_code == 200  # alive, just not ready
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"].startswith("failed: ")
    assert body["checks"]["print_spool"] == "ok"
    # The reason names the kind of failure, never a connection string or password.
    assert "kanalvaxel:kanalvaxel" not in r.text


def test_readyz_is_503_when_the_print_spool_is_not_usable(make_container: MakeContainer) -> None:
    container = make_container()
    spool = container.settings.print.spool_dir
    shutil.rmtree(spool)
    spool.write_text("a file where the spool directory should be")  # chmod would not stop root
    with TestClient(create_app(container)) as http:
        r = http.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["checks"]["database"] == "ok"
    assert r.json()["checks"]["print_spool"].startswith("failed: ")
