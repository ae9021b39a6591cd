"""Delivery threads on the real clock: a slow operator holds only its own slots, the per-operator limit
holds under many threads (SQLite and PostgreSQL), and a relay built from settings delivers end to end."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from formedlare.api import DistributionState
from formedlare.mm import SigningIdentity
from formedlare.relay import DeliveryPolicy, Relay, RelayConfigurationError
from formedlare.settings import RelaySettings
from formedlare.worker import RelayWorker
from kanalvaxel.sandbox.world import SandboxWorld
from tests.formedlare.conftest import KIVRA_RECIPIENT, MMP_RECIPIENT, SENDER_ORG, RelayFactory, sign


def _real_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _wait(condition: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def _delivered(relay: Relay, ids: list[str]) -> Callable[[], bool]:
    return lambda: all(relay.check_distribution_status(i).state is DistributionState.DELIVERED for i in ids)


def _max_overlap(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = best = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def test_a_slow_operator_does_not_hold_the_other_operators_letters(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    policy = DeliveryPolicy(operator_concurrency=2, busy_retry=dt.timedelta(seconds=0.1))
    relay = make_relay(sqlite_url, policy=policy, clock=_real_now)
    kivra, mmp = sims.operators["kivra"], sims.operators["mmp"]
    kivra.behave(delay=2.0)
    to_kivra = [relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(4)]
    to_mmp = [relay.distribute_secure(sign(sender, MMP_RECIPIENT)) for _ in range(6)]

    with RelayWorker(relay, threads=4, idle_seconds=0.05):
        mmp_done = _wait(_delivered(relay, to_mmp), timeout=10)
        kivra_stored_meanwhile = len(kivra.accepted)
        all_done = _wait(_delivered(relay, to_kivra), timeout=15)

    print(
        f"\nslow kivra (2 s per call, 2 slots): 6 mmp letters delivered after {mmp_done:.2f} s, "
        f"kivra had {kivra_stored_meanwhile}/4; all kivra after {mmp_done + all_done:.2f} s"
    )
    assert mmp_done < 1.5  # well before kivra's first answer (2 s)
    assert kivra_stored_meanwhile == 0
    assert len(mmp.accepted) == 6
    assert len(kivra.accepted) == 4
    assert kivra.max_concurrent <= 2


def test_per_operator_concurrency_is_never_exceeded(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    policy = DeliveryPolicy(operator_concurrency=3, busy_retry=dt.timedelta(seconds=0.05))
    relay = make_relay(db_url, policy=policy, clock=_real_now)
    kivra = sims.operators["kivra"]
    kivra.behave(delay=0.3)
    ids = [relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(12)]

    with RelayWorker(relay, threads=8, idle_seconds=0.02):
        elapsed = _wait(_delivered(relay, ids), timeout=20)

    print(
        f"\n12 letters, 8 threads, limit 3, 0.3 s per call: {elapsed:.2f} s, "
        f"max concurrent {kivra.max_concurrent}"
    )
    assert len(kivra.accepted) == 12
    assert kivra.max_concurrent == 3  # the limit, and reached: the threads did work in parallel
    intervals = [
        (a.started_at, a.finished_at)
        for i in ids
        for a in relay.distribution_detail(i).attempts
        if a.finished_at is not None
    ]
    assert len(intervals) == 12
    assert _max_overlap(intervals) <= 3


def _settings(certs: Path, world: SandboxWorld, database_url: str, **extra: object) -> RelaySettings:
    values: dict[str, object] = {
        "database_url": database_url,
        "seal_certificate": certs / "relay.pem",
        "seal_key": certs / "relay.key",
        "trust_anchors": [certs / "ca.pem"],
        "relayed_senders": ["16" + SENDER_ORG],
        "far": {
            "url": world.far_url,
            "client_certificate": certs / "relay-client.pem",
            "client_key": certs / "relay-client.key",
            "ca_bundle": certs / "ca.pem",
            "cache_ttl_seconds": 0,
        },
        "client_certificate": certs / "relay-client.pem",
        "client_key": certs / "relay-client.key",
        "operator_ca_bundle": certs / "ca.pem",
    }
    values.update(extra)
    return RelaySettings.model_validate(values)


def test_relay_from_settings_delivers_with_its_worker(
    dev_certs: Path, sims: SandboxWorld, sqlite_url: str, sender: SigningIdentity
) -> None:
    relay = Relay.from_settings(_settings(dev_certs, sims, sqlite_url))
    try:
        assert relay.policy.call_lease >= dt.timedelta(seconds=5 + 2 * 120)
        distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))
        with RelayWorker(relay, threads=2, idle_seconds=0.05):
            _wait(_delivered(relay, [distribution_id]), timeout=10)
        assert relay.check_distribution_status(distribution_id).detail == "Levererad till Kivra (simulator)"
    finally:
        relay.close()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORMEDLARE_DATABASE_URL", f"sqlite:///{tmp_path}/r.db")
    monkeypatch.setenv("FORMEDLARE_RELAYED_SENDERS", '["162120000001", "212000-0019"]')
    monkeypatch.setenv("FORMEDLARE_FAR__URL", "https://far.example/Recipient/v3")
    monkeypatch.setenv("FORMEDLARE_FAR__CLIENT_CERTIFICATE", "/c.pem")
    monkeypatch.setenv("FORMEDLARE_FAR__CLIENT_KEY", "/c.key")
    monkeypatch.setenv("FORMEDLARE_FAR__CA_BUNDLE", "/ca.pem")
    monkeypatch.setenv("FORMEDLARE_OPERATOR_CONCURRENCY", "7")

    settings = RelaySettings()

    assert settings.relayed_senders == ["2120000001", "2120000019"]
    assert settings.far is not None
    assert settings.far.url == "https://far.example/Recipient/v3"
    assert settings.operator_concurrency == 7
    assert settings.backoff_base_seconds == 5
    assert settings.max_age_hours == 72


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"relayed_senders": ["12345"]}, "organisation number"),
        ({"seal_certificate": Path("/x.pem")}, "go together"),
        (
            {"seal_pkcs12": Path("/x.p12"), "seal_certificate": Path("/x.pem"), "seal_key": Path("/x")},
            "not both",
        ),
        ({"operator_concurrency": 0}, "greater than or equal"),
    ],
)
def test_settings_refuse_unusable_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RelaySettings.model_validate(values)


def test_from_settings_needs_trust_anchors(dev_certs: Path, sims: SandboxWorld, sqlite_url: str) -> None:
    with pytest.raises(RelayConfigurationError, match="trust_anchors"):
        Relay.from_settings(_settings(dev_certs, sims, sqlite_url, trust_anchors=[]))


class _Gate(httpx.BaseTransport):
    """Holds every call to one port (an operator that does not answer) until :meth:`open`; others pass."""

    def __init__(self, inner: httpx.BaseTransport, port: int) -> None:
        self._inner = inner
        self._port = port
        self._opened = threading.Event()
        self._lock = threading.Lock()
        self._waiting = 0
        self.held = 0  # calls that reached the gate
        self.most_waiting = 0  # the most calls held at once

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.port == self._port:
            with self._lock:
                self.held += 1
                self._waiting += 1
                self.most_waiting = max(self.most_waiting, self._waiting)
            try:
                self._opened.wait(120)  # bounded only so a broken test cannot hang the run
            finally:
                with self._lock:
                    self._waiting -= 1
        return self._inner.handle_request(request)

    def open(self) -> None:
        self._opened.set()

    def close(self) -> None:
        self._inner.close()


def _port(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None
    return port


@pytest.mark.parametrize("threads", [1, 2])
def test_an_operator_that_does_not_answer_never_holds_every_delivery_thread(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity, threads: int
) -> None:
    gates: list[_Gate] = []

    def gate_mmp(inner: httpx.BaseTransport) -> httpx.BaseTransport:
        gates.append(_Gate(inner, _port(sims.operator_urls["mmp"])))
        return gates[0]

    policy = DeliveryPolicy(operator_concurrency=4, busy_retry=dt.timedelta(seconds=0.1))
    relay = make_relay(db_url, policy=policy, clock=_real_now, transport=gate_mmp)
    gate = gates[0]
    to_mmp = [relay.distribute_secure(sign(sender, MMP_RECIPIENT)) for _ in range(6)]
    worker = RelayWorker(relay, threads=threads, idle_seconds=0.05)
    worker.start()
    try:
        try:
            # As many mmp calls hang as there are delivery threads (before the fix: every one of them).
            _wait(lambda: gate.held >= threads, timeout=20)
            to_kivra = [relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(5)]
            kivra_done = _wait(_delivered(relay, to_kivra), timeout=20)
            held_meanwhile = gate.held
            mmp_pending = [relay.check_distribution_status(i).state for i in to_mmp]
        finally:
            gate.open()
        mmp_done = _wait(_delivered(relay, to_mmp), timeout=20)
    finally:
        worker.stop()

    print(
        f"\n{threads} thread(s), mmp not answering: 5 kivra letters delivered after {kivra_done:.2f} s "
        f"with {held_meanwhile} mmp calls held; 6 mmp letters {mmp_done:.2f} s after it answered"
    )
    assert len(sims.operators["kivra"].accepted) == 5
    assert set(mmp_pending) == {DistributionState.PENDING}
    assert held_meanwhile <= 4
    assert gate.most_waiting <= 4  # the operator's slots, never more
    assert len(sims.operators["mmp"].accepted) == 6


def test_stop_returns_within_its_timeout_while_a_call_hangs_and_the_call_still_records(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    gates: list[_Gate] = []

    def gate_mmp(inner: httpx.BaseTransport) -> httpx.BaseTransport:
        gates.append(_Gate(inner, _port(sims.operator_urls["mmp"])))
        return gates[0]

    relay = make_relay(sqlite_url, clock=_real_now, transport=gate_mmp)
    gate = gates[0]
    distribution_id = relay.distribute_secure(sign(sender, MMP_RECIPIENT))
    worker = RelayWorker(relay, threads=2, idle_seconds=0.05)
    worker.start()
    try:
        _wait(lambda: gate.held == 1, timeout=20)
        started = time.monotonic()
        worker.stop(timeout=0.2)
        stopped_after = time.monotonic() - started
        assert not worker.running
    finally:
        gate.open()
        worker.stop()
    # Nobody waits for the call any more, but it still ends and records while its lease holds.
    _wait(_delivered(relay, [distribution_id]), timeout=20)
    assert stopped_after < 10  # the timeout (0.2 s) plus scheduling, not the call
    assert len(sims.operators["mmp"].accepted) == 1


def test_due_letters_are_looked_up_in_far_together_before_they_are_delivered(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    from tests.formedlare.conftest import NO_MAILBOX_RECIPIENT

    # The real clock (the worker's passes read it) and a FaR cache, as in production.
    relay = make_relay(db_url, far_cache_ttl=dt.timedelta(minutes=5), clock=_real_now)
    recipients = [KIVRA_RECIPIENT, MMP_RECIPIENT, NO_MAILBOX_RECIPIENT] * 10
    ids = [relay.distribute_secure(sign(sender, r)) for r in recipients]
    sims.far.reset_stats()

    def settled() -> bool:
        return all(relay.check_distribution_status(i).state is not DistributionState.PENDING for i in ids)

    # One claim thread: with more, one that waits longer than 2 s for another's prefetch (a slow machine)
    # would ask FaR itself, which is right in production and would only make this count flaky.
    with RelayWorker(relay, threads=1, idle_seconds=0.05):
        _wait(settled, 60)
    reachable = [
        n
        for op, n in zip(sims.far.stats.operations, sims.far.stats.ids_per_call, strict=True)
        if op == "isReachable"
    ]
    assert reachable == [3]  # 30 letters, 3 recipients: one call, and every letter found its answer cached
