"""Digital mail end to end inside one process: kanalväxel's worker, the embedded relay (formedlare), and the
FaR and mailbox-operator simulators over real HTTPS with client certificates, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from kanalvaxel.bootstrap import Container, build
from kanalvaxel.entrypoints.worker import Worker
from kanalvaxel.ports import ClientRecord
from kanalvaxel.sandbox.far_simulator import FarSimulator
from kanalvaxel.sandbox.world import SandboxWorld
from tests.integration.conftest import make_letter, settings_for

KIVRA_RECIPIENT = "197001011233"
MMP_RECIPIENT = "198112189876"
PENDING_RECIPIENT = "199001012385"
OPTED_OUT_RECIPIENT = "197505052386"
UNKNOWN_RECIPIENT = "200001012384"


def mm_settings(db_url: str, tmp_path: Path, dev_certs: Path, **mm: Any) -> Any:
    relay_db = db_url if db_url.startswith("postgresql") else f"sqlite:///{tmp_path / 'formedlare.db'}"
    return settings_for(
        db_url,
        tmp_path,
        dev_certs,
        mina_meddelanden={
            "enabled": True,
            "relay_database_url": relay_db,
            "status_poll_seconds": 0.1,
            "status_poll_max_seconds": 0.5,
            "relay_backoff_base_seconds": 0.2,
            "relay_backoff_max_seconds": 1.0,
            **mm,
        },
        worker={"poll_interval_seconds": 0.05, "backoff_base_seconds": 0.2, "threads": 2},
    )


@pytest.fixture
def running(db_url: str, tmp_path: Path, dev_certs: Path) -> Iterator[tuple[Container, SandboxWorld]]:
    c = build(mm_settings(db_url, tmp_path, dev_certs))
    c.migrate()
    assert c.digital_mail is not None
    assert c.digital_mail.world is not None
    w = Worker(c)
    w.start()
    try:
        yield c, c.digital_mail.world
    finally:
        w.stop(grace=5)
        c.close()


def submit(c: Container, client: ClientRecord, recipient: str, key: str) -> str:
    return c.intake.submit(client, key, key, make_letter(recipient=recipient)).shipment.id


def wait_state(c: Container, sid: str, states: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with c.uow() as uow:
            shp = uow.shipment(sid)
            assert shp is not None
            if shp.state in states:
                return shp
        time.sleep(0.05)
    with c.uow() as uow:
        events = [(e.type, e.message) for e in uow.events(sid)]
    raise AssertionError(f"shipment {sid} never reached {states}: {events}")


def events(c: Container, sid: str) -> list[tuple[str, str]]:
    with c.uow() as uow:
        return [(e.type, e.message) for e in uow.events(sid)]


@pytest.fixture
def mm_client(running: tuple[Container, SandboxWorld]) -> ClientRecord:
    return running[0].clients.add("ärendesystem", ["sandbox"]).client


def test_a_letter_reaches_the_operator_far_names_and_shows_delivered_with_its_name(
    running: tuple[Container, SandboxWorld], mm_client: ClientRecord
) -> None:
    c, world = running
    to_kivra = submit(c, mm_client, KIVRA_RECIPIENT, "a")
    to_mmp = submit(c, mm_client, MMP_RECIPIENT, "b")
    shp = wait_state(c, to_kivra, {"DELIVERED", "FAILED"})
    assert (shp.state, shp.channel) == ("DELIVERED", "mina_meddelanden")
    assert shp.result["operator_name"] == "Kivra (simulator)"
    assert any("Kivra (simulator)" in m for t, m in events(c, to_kivra) if t == "DELIVERED")
    assert wait_state(c, to_mmp, {"DELIVERED", "FAILED"}).result["operator_name"] == (
        "Min myndighetspost (simulator)"
    )
    kivra, mmp = world.operators["kivra"], world.operators["mmp"]
    assert [d.message_id for d in kivra.accepted] == [to_kivra]
    assert [d.message_id for d in mmp.accepted] == [to_mmp]
    stored = kivra.accepted[0]
    assert stored.sender_id == "162120000001"
    assert stored.recipient_id == KIVRA_RECIPIENT
    assert stored.subject == "Beslut om bygglov"


@pytest.mark.parametrize(
    ("recipient", "reason_code"),
    [
        (UNKNOWN_RECIPIENT, "NO_MAILBOX"),
        (OPTED_OUT_RECIPIENT, "SENDER_NOT_ACCEPTED"),
        (PENDING_RECIPIENT, "MAILBOX_PENDING"),
    ],
)
def test_without_a_usable_mailbox_the_letter_goes_to_print_with_the_reason(
    running: tuple[Container, SandboxWorld], mm_client: ClientRecord, recipient: str, reason_code: str
) -> None:
    c, world = running
    sid = submit(c, mm_client, recipient, "p")
    shp = wait_state(c, sid, {"HANDED_OVER", "DELIVERED", "FAILED"})
    assert shp.channel == "print"
    assert shp.decision is not None
    skipped = {o["channel"]: o for o in shp.decision["options"]}
    assert skipped["mina_meddelanden"]["codes"] == [reason_code]  # the true reason, and only that
    assert not skipped["mina_meddelanden"]["eligible"]
    assert all(not op.accepted for op in world.operators.values())


def test_a_sender_without_a_signing_certificate_is_never_offered_digital_mail(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    settings = mm_settings(db_url, tmp_path, dev_certs)
    signed = settings.senders[0]
    unsigned = signed.model_copy(
        update={"key": "osignerad", "signing_certificate": None, "signing_key": None, "pkcs12": None}
    )
    c = build(settings.model_copy(update={"senders": (signed, unsigned)}))
    c.migrate()
    try:
        client = c.clients.add("ärendesystem", ["sandbox", "osignerad"]).client
        # The precheck (what a case system asks before sending) already says so ...
        pre = c.queries.precheck(client, replace(make_letter(recipient=KIVRA_RECIPIENT), sender="osignerad"))
        mm = {o["channel"]: o for o in pre["options"]}["mina_meddelanden"]  # type: ignore[attr-defined]
        assert (mm["eligible"], mm["codes"]) == (False, ["CHANNEL_NOT_CONFIGURED"])
        assert pre["channels"] == ["print"]
        # ... while the signing sender, for the same recipient, is offered it.
        ok = c.queries.precheck(client, make_letter(recipient=KIVRA_RECIPIENT))
        assert ok["channels"] == ["mina_meddelanden", "print"]
        # ... and so does the decision of a letter, before anything is tried.
        letter = replace(make_letter(recipient=KIVRA_RECIPIENT), sender="osignerad")
        sid = c.intake.submit(client, "u", "u", letter).shipment.id
        w = Worker(c)
        while w.run_once():
            pass
        shp = wait_state(c, sid, {"HANDED_OVER", "DELIVERED", "FAILED"})
        assert shp.channel == "print"
        options = {o["channel"]: o for o in shp.decision["options"]}
        assert options["mina_meddelanden"]["codes"] == ["CHANNEL_NOT_CONFIGURED"]
        assert [t for t, _ in events(c, sid)].count("CHANNEL_FAILED") == 0  # nothing failed at send time
        assert c.digital_mail is not None
        assert c.digital_mail.world is not None
        assert all(not op.accepted for op in c.digital_mail.world.operators.values())
    finally:
        c.close()


def test_an_operator_answering_5xx_gets_the_letter_once_it_recovers_exactly_once(
    running: tuple[Container, SandboxWorld], mm_client: ClientRecord
) -> None:
    c, world = running
    kivra = world.operators["kivra"]
    kivra.behave(http_status=503, times=3)
    sid = submit(c, mm_client, KIVRA_RECIPIENT, "r")
    shp = wait_state(c, sid, {"DELIVERED", "FAILED"})
    assert shp.state == "DELIVERED"
    assert kivra.requests >= 4
    assert [d.message_id for d in kivra.accepted] == [sid]


def test_a_sender_the_relay_does_not_trust_is_refused_recorded_and_sent_on_paper(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    # A signing certificate from a CA the relay does not trust (a self-signed one with the right org number).
    from tests.formedlare.conftest import issue_identity

    issue_identity(tmp_path, "untrusted", organisation_number="2120000001")  # a CA of its own
    cert, key = tmp_path / "untrusted.pem", tmp_path / "untrusted.key"
    settings = mm_settings(db_url, tmp_path, dev_certs)
    sender = settings.senders[0].model_copy(update={"signing_certificate": cert, "signing_key": key})
    c = build(settings.model_copy(update={"senders": (sender,)}))
    c.migrate()
    w = Worker(c)
    w.start()
    try:
        client = c.clients.add("ärendesystem", ["sandbox"]).client
        sid = submit(c, client, KIVRA_RECIPIENT, "t")
        shp = wait_state(c, sid, {"HANDED_OVER", "DELIVERED", "FAILED"})
        assert shp.channel == "print"
        failed = [m for t, m in events(c, sid) if t == "CHANNEL_FAILED"]
        assert "Förmedlaren vägrade" in failed[0]
        assert c.digital_mail is not None
        assert c.digital_mail.embedded is not None
        refusals = c.digital_mail.embedded.refusals()
        assert len(refusals) == 1
        assert c.digital_mail.world is not None
        assert all(not op.accepted for op in c.digital_mail.world.operators.values())
    finally:
        w.stop(grace=5)
        c.close()
    assert x509.load_pem_x509_certificate(cert.read_bytes())  # the file the test made is a real certificate


def test_while_far_cannot_be_reached_letters_wait_instead_of_going_to_paper(
    running: tuple[Container, SandboxWorld], mm_client: ClientRecord
) -> None:
    c, world = running
    world.far.fail_with(503)
    sid = submit(c, mm_client, KIVRA_RECIPIENT, "w")
    shp = wait_state(c, sid, {"RETRY_WAIT", "HANDED_OVER", "DELIVERED", "FAILED"})
    assert shp.state == "RETRY_WAIT"
    assert shp.channel is None
    assert any("FaR" in m for _, m in events(c, sid))


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def test_a_slow_operator_never_holds_the_embedded_relays_deliveries_to_the_other(
    running: tuple[Container, SandboxWorld], mm_client: ClientRecord
) -> None:
    """Issue 9/14: Min myndighetspost answering after 60 s must not keep Kivra's letters waiting."""
    c, world = running
    kivra, mmp = world.operators["kivra"], world.operators["mmp"]
    mmp.behave(delay=60)
    try:
        to_mmp = [submit(c, mm_client, MMP_RECIPIENT, f"slow-{i}") for i in range(6)]
        # relay_threads = 2: before the fix both delivery threads were now inside a 60 s call.
        _wait_for(lambda: mmp.requests >= 2, 30, "mmp called")
        started = time.monotonic()
        to_kivra = [submit(c, mm_client, KIVRA_RECIPIENT, f"kivra-{i}") for i in range(20)]
        deadline = started + 30  # generous: the issue measured 0 of 20 within 63 s
        delivered = [
            wait_state(c, sid, {"DELIVERED", "FAILED"}, timeout=max(0.1, deadline - time.monotonic()))
            for sid in to_kivra
        ]
        elapsed = time.monotonic() - started
        mmp_states = {wait_state(c, sid, {"HANDED_OVER", "DELIVERED", "FAILED"}).state for sid in to_mmp}
        print(f"\nmmp at 60 s a call: 20 kivra letters delivered {elapsed:.1f} s after submission")
        assert [s.state for s in delivered] == ["DELIVERED"] * 20
        assert sorted(d.message_id for d in kivra.accepted) == sorted(to_kivra)
        assert mmp_states == {"HANDED_OVER"}  # still in the slow operator's calls or queue
        assert mmp.accepted == []
        assert mmp.requests <= 4  # operator_concurrency: its slots, no more
    finally:
        # The calls in flight would sleep for a minute: stopping the slow simulator ends them (its
        # graceful shutdown gives them 5 s) so the relay worker stops at once.
        mmp.behave()
        url = world.operator_urls["mmp"]
        next(s for s in world.servers if url.startswith(s.url)).stop()


def test_kanalvaxel_can_use_a_relay_that_runs_as_its_own_https_service(
    tmp_path: Path, dev_certs: Path
) -> None:
    """relay = "remote": distributeSecure and checkDistributionStatus over mutual TLS to formedlare."""
    from formedlare.app import create_app
    from formedlare.https_server import TlsFiles, serve_in_thread
    from formedlare.relay import Relay
    from formedlare.settings import FarConnection, RelaySettings
    from formedlare.worker import RelayWorker
    from kanalvaxel.sandbox.world import start_world

    world = start_world(dev_certs)
    relay = Relay.from_settings(
        RelaySettings(
            database_url=f"sqlite:///{tmp_path / 'relay-service.db'}",
            seal_certificate=dev_certs / "relay.pem",
            seal_key=dev_certs / "relay.key",
            trust_anchors=[dev_certs / "ca.pem"],
            relayed_senders=["2120000001"],
            far=FarConnection(
                url=world.far_url,
                client_certificate=dev_certs / "relay-client.pem",
                client_key=dev_certs / "relay-client.key",
                ca_bundle=dev_certs / "ca.pem",
            ),
            client_certificate=dev_certs / "relay-client.pem",
            client_key=dev_certs / "relay-client.key",
            operator_ca_bundle=dev_certs / "ca.pem",
        )
    )
    relay_worker = RelayWorker(relay, threads=1, idle_seconds=0.05)
    tls = TlsFiles(dev_certs / "server.pem", dev_certs / "server.key", client_ca=dev_certs / "ca.pem")
    try:
        with serve_in_thread(create_app(relay), tls, name="formedlare") as server:
            relay_worker.start()
            settings = mm_settings(
                f"sqlite:///{tmp_path / 'kanalvaxel.db'}",
                tmp_path,
                dev_certs,
                relay="remote",
                relay_url=f"{server.url}/Message/v3",
                far_url=world.far_url,
            )
            c = build(settings)
            c.migrate()
            assert c.digital_mail is not None
            assert c.digital_mail.embedded is None
            assert c.digital_mail.world is None  # far_url given: kanalväxel starts no simulators of its own
            w = Worker(c)
            w.start()
            try:
                client = c.clients.add("ärendesystem", ["sandbox"]).client
                sid = submit(c, client, MMP_RECIPIENT, "remote")
                shp = wait_state(c, sid, {"DELIVERED", "FAILED"})
                assert (shp.state, shp.channel) == ("DELIVERED", "mina_meddelanden")
                # The name comes from kanalväxel's own FaR answer: the SOAP status carries none.
                assert shp.result["operator_name"] == "Min myndighetspost (simulator)"
                assert [d.message_id for d in world.operators["mmp"].accepted] == [sid]
            finally:
                w.stop(grace=5)
                c.close()
    finally:
        relay_worker.stop()
        relay.close()
        world.stop()


@contextmanager
def _workers_not_started(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> Iterator[tuple[Container, FarSimulator, ClientRecord]]:
    """A container with digital mail (its workers not started), its FaR simulator and an API client."""
    c = build(mm_settings(db_url, tmp_path, dev_certs))
    c.migrate()
    try:
        assert c.digital_mail is not None
        assert c.digital_mail.world is not None
        yield c, c.digital_mail.world.far, c.clients.add("ärendesystem", ["sandbox"]).client
    finally:
        c.close()


def _is_reachable_calls(far: FarSimulator) -> list[int]:
    """The recipients asked in each isReachable call the simulator has had since its stats were reset."""
    return [
        n for op, n in zip(far.stats.operations, far.stats.ids_per_call, strict=True) if op == "isReachable"
    ]


def test_letters_waiting_at_once_are_looked_up_in_far_together_not_one_call_each(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    from tests.domain.factories import luhn_digit

    # Workers not started: 60 letters wait at once, as after a volume intake.
    with _workers_not_started(db_url, tmp_path, dev_certs) as (c, far, client):
        unknown = [f"1980{m:02d}{d:02d}" for m in range(1, 4) for d in range(1, 19)][:54]
        recipients = [KIVRA_RECIPIENT, MMP_RECIPIENT, OPTED_OUT_RECIPIENT] * 2 + [
            f"19{nine[2:]}{luhn_digit(nine[2:])}" for nine in (f"{u}238" for u in unknown)
        ]
        assert len(recipients) == 60
        ids = [submit(c, client, rid, f"v{i}") for i, rid in enumerate(recipients)]
        far.reset_stats()
        w = Worker(c)
        while w.run_once():
            pass
        reachable = _is_reachable_calls(far)
        assert reachable == [57]  # every distinct recipient in one call, none asked again
        for sid in ids:
            shp = wait_state(c, sid, {"HANDED_OVER", "DELIVERED", "FAILED"})
            assert shp.decision is not None
        with c.uow() as uow:
            kivra = uow.shipment(ids[0])
            unknown_one = uow.shipment(ids[-1])
        assert kivra is not None
        assert unknown_one is not None
        assert kivra.channel == "mina_meddelanden"
        assert unknown_one.channel == "print"


def test_the_letters_of_a_worker_batch_are_looked_up_in_far_together(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    """Letters that arrive one by one (a volume intake while the worker runs) miss the prefetch; the worker
    still asks FaR once per sender for the letters of the batch it claimed, not once per letter."""
    from tests.domain.factories import luhn_digit

    with _workers_not_started(db_url, tmp_path, dev_certs) as (c, far, client):
        unknown = [f"19{nine}{luhn_digit(nine)}" for nine in (f"8003{d:02d}238" for d in range(1, 5))]
        recipients = [KIVRA_RECIPIENT, MMP_RECIPIENT, *unknown]
        ids = [submit(c, client, rid, f"b{i}") for i, rid in enumerate(recipients)]
        far.reset_stats()
        w = Worker(replace(c, prefetch=None))  # as if the letters came after the last prefetch
        assert w.run_once()
        reachable = _is_reachable_calls(far)
        assert reachable == [6]  # the batch's six recipients in one call
        for sid in ids:
            shp = wait_state(c, sid, {"HANDED_OVER", "DELIVERED", "FAILED", "SENDING", "DECIDED"})
            assert shp.decision is not None
