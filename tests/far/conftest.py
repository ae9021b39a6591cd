"""A FaR simulator served over mutual TLS on loopback, shared by a module's tests and reset before each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from far_client import FarSettings
from formedlare.https_server import RunningServer, TlsFiles, serve_in_thread
from kanalvaxel.domain.identity import luhn_ok
from kanalvaxel.sandbox.far_simulator import FarSimulator, default_registry


@dataclass
class Far:
    simulator: FarSimulator
    server: RunningServer
    settings: FarSettings


@pytest.fixture(scope="module")
def far_service(dev_certs: Path) -> Iterator[tuple[FarSimulator, RunningServer]]:
    simulator = FarSimulator(default_registry())
    tls = TlsFiles(dev_certs / "server.pem", dev_certs / "server.key", client_ca=dev_certs / "ca.pem")
    with serve_in_thread(simulator.app, tls, name="far-sim") as server:
        yield simulator, server


@pytest.fixture
def far(far_service: tuple[FarSimulator, RunningServer], dev_certs: Path) -> Far:
    simulator, server = far_service
    simulator.reload(default_registry())
    simulator.fail_with(None)
    simulator.delay(0)
    simulator.reset_stats()
    settings = FarSettings(
        url=f"{server.url}/Recipient/v3",
        client_certificate=dev_certs / "client.pem",
        client_key=dev_certs / "client.key",
        ca_bundle=dev_certs / "ca.pem",
        read_timeout=5.0,
    )
    return Far(simulator, server, settings)


def with_settings(far: Far, **changes: object) -> FarSettings:
    return replace(far.settings, **changes)  # type: ignore[arg-type]


class StepClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def personnummer(n: int) -> str:
    """The n-th of a run of distinct valid personnummer (born 1950-1999, Luhn check digit right)."""
    year = 1950 + n % 50
    day = 1 + (n // 50) % 28
    serial = (n // (50 * 28)) % 1000
    stem = f"{year % 100:02d}01{day:02d}{serial:03d}"
    check = next(d for d in "0123456789" if luhn_ok(stem + d))
    return f"{year // 100}{stem}{check}"
