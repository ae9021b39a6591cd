"""A database outage is a 503 with Retry-After (nothing stored, try again), and /readyz says why; once the
database is back, the same request succeeds. The outage is real: PostgreSQL behind a TCP relay that is cut."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from kanalvaxel.adapters.persistence import database
from kanalvaxel.config import SANDBOX_SENDER_KEY
from kanalvaxel.entrypoints.api.app import create_app

from .helpers import MakeContainer, headers, payload, row_counts


class CuttableRelay:
    """Forwards TCP connections to `target`; `cut()` drops every connection and refuses new ones (a
    database host gone from the network), `mend()` lets them through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def relay(pg_url: str) -> Iterator[tuple[CuttableRelay, str]]:
    url = make_url(pg_url)
    r = CuttableRelay((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield r, url.set(host="127.0.0.1", port=r.port).render_as_string(hide_password=False)
    finally:
        r.close()


def test_a_database_outage_is_503_with_retry_after_and_readyz_says_why(
    relay: tuple[CuttableRelay, str], make_container: MakeContainer
) -> None:
    cuttable, url = relay
    c = make_container(database_url=url)
    key = c.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    with TestClient(create_app(c), raise_server_exceptions=False) as http:
        assert http.get("/readyz").status_code == 200
        cuttable.cut()
        r = http.post("/v1/shipments", json=payload(), headers=headers(key, "during"))
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["Retry-After"]) > 0
        problem = r.json()
        assert problem["type"] == "urn:kanalvaxel:problem:unavailable"
        assert "nothing was stored" in problem["detail"]
        assert "kanalvaxel:" not in problem["detail"]  # no password in what a client sees

        assert http.get("/v1/shipments/x", headers=headers(key)).status_code == 503

        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "failed: the database cannot be reached or is busy"
        assert "127.0.0.1" not in ready.text  # the driver's words (hosts, addresses) stay in our log

        cuttable.mend()
        again = http.post("/v1/shipments", json=payload(), headers=headers(key, "during"))
        assert again.status_code == 202, again.text  # the same request, later: stored once
        assert http.get("/readyz").status_code == 200


def test_the_worker_waits_out_an_outage_with_one_line_and_goes_on_after_it(
    relay: tuple[CuttableRelay, str], make_container: MakeContainer, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    from kanalvaxel.domain.errors import UnavailableError
    from kanalvaxel.entrypoints.worker import Worker

    cuttable, url = relay
    c = make_container(database_url=url, worker={"poll_interval_seconds": 0.05})
    cuttable.cut()
    worker = Worker(c)
    with pytest.raises(UnavailableError):
        worker.run_once()
    with caplog.at_level(logging.WARNING, logger="kanalvaxel.entrypoints.worker"):
        worker.start()
        deadline = time.monotonic() + 10
        while not any("database cannot be reached" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the worker said nothing about the outage"
            time.sleep(0.05)
        cuttable.mend()
        worker.stop(grace=10)
    ours = [r for r in caplog.records if r.name == "kanalvaxel.entrypoints.worker"]
    assert all(r.exc_info is None for r in ours)  # an outage is not a bug: no traceback
    assert worker.run_once() == 0  # the database is back: nothing due, no error


def test_a_database_that_was_never_migrated_is_a_bug_with_a_traceback_not_an_outage(
    make_container: MakeContainer, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    c = make_container(migrate=False)
    with TestClient(create_app(c), raise_server_exceptions=False) as http, caplog.at_level(logging.ERROR):
        r = http.get("/v1/shipments/x", headers={"Authorization": "Bearer kvx_0123456789abcdef_" + "s" * 43})
    assert r.status_code == 500  # "no such table" would never pass by waiting: no Retry-After
    assert "Retry-After" not in r.headers
    assert any(rec.exc_info is not None for rec in caplog.records)


def test_a_sqlite_file_another_process_keeps_locked_is_a_503_and_then_works(
    make_container: MakeContainer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another process (a `kanalvaxel worker`, a backup) holds SQLite's write lock past busy_timeout: the
    letter is refused with 503, nothing stored, and accepted once the lock is let go."""
    monkeypatch.setattr(
        database,
        "SQLITE_PRAGMAS",
        tuple("busy_timeout=200" if p.startswith("busy_timeout=") else p for p in database.SQLITE_PRAGMAS),
    )
    container = make_container()
    key = container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    other = sqlite3.connect(tmp_path / "kanalvaxel.db", isolation_level=None)
    with TestClient(create_app(container)) as http:
        http.get("/v1/shipments/x", headers=headers(key))  # the key is remembered: no read needed below
        other.execute("BEGIN IMMEDIATE")
        try:
            r = http.post("/v1/shipments", json=payload(), headers=headers(key, "locked"))
            assert r.status_code == 503, r.text
            assert r.json()["type"] == "urn:kanalvaxel:problem:unavailable"
            # Readers are not kept waiting by a writer.
            assert http.get("/v1/shipments/x", headers=headers(key)).status_code == 404
        finally:
            other.execute("ROLLBACK")
            other.close()
        again = http.post("/v1/shipments", json=payload(), headers=headers(key, "locked"))
        assert again.status_code == 202, again.text
    assert row_counts(container)["shipments"] == 1
