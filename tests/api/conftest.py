"""Fixtures for the REST API tests: a migrated container over a SQLite file of its own, two API clients
bound to the sandbox sender, a TestClient over the real app, and a real uvicorn server for races."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from kanalvaxel.bootstrap import Container, build
from kanalvaxel.config import SANDBOX_SENDER_KEY, load_settings
from kanalvaxel.entrypoints.api.app import create_app
from kanalvaxel.ports import Clock

from .helpers import MakeContainer


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # load_settings() also reads ./kanalvaxel.toml and KANALVAXEL_CONFIG: keep a developer's own out.
    monkeypatch.delenv("KANALVAXEL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_container(tmp_path: Path, dev_certs: Path) -> Iterator[MakeContainer]:
    """Build containers from settings overrides (keyword arguments of load_settings); the database is a
    SQLite file in tmp_path unless `database_url` is given. Migrated unless `migrate=False`; the system
    clock unless `clock` is given."""
    made: list[Container] = []

    def make(
        *, database_url: str | None = None, migrate: bool = True, clock: Clock | None = None, **overrides: Any
    ) -> Container:
        # No simulators unless a test asks for them.
        overrides.setdefault("mina_meddelanden", {"enabled": False})
        overrides.setdefault("email", {"enabled": False})
        overrides.setdefault("sms", {"enabled": False})
        settings = load_settings(
            database={"url": database_url or f"sqlite:///{tmp_path / 'kanalvaxel.db'}"},
            print={"spool_dir": tmp_path / "print-spool", **overrides.pop("print", {})},
            var_dir=tmp_path / "var",
            dev_certs_dir=dev_certs,
            **overrides,
        )
        container = build(settings, clock=clock)
        made.append(container)
        if migrate:
            container.migrate()
        return container

    yield make
    for c in made:
        c.close()


@pytest.fixture
def container(make_container: MakeContainer) -> Container:
    return make_container()


@pytest.fixture
def api_key(container: Container) -> str:
    """A client bound to the sandbox sender."""
    return container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key


@pytest.fixture
def other_key(container: Container) -> str:
    """A second client bound to the same sender: it must not see the first one's shipments."""
    return container.clients.add("case-system-b", [SANDBOX_SENDER_KEY]).api_key


@pytest.fixture
def http(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container)) as client:
        yield client


@dataclass(frozen=True)
class LiveServer:
    url: str
    server: uvicorn.Server


@pytest.fixture
def live_server() -> Iterator[Callable[[Container], LiveServer]]:
    """Start a real uvicorn server over a container, on 127.0.0.1 and a free port, in a thread."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(container: Container) -> LiveServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(container), log_config=None, access_log=False, ws="none", lifespan="on"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return LiveServer(f"http://127.0.0.1:{port}", server)

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)
