"""A real worker process killed with SIGKILL loses nothing and sends nothing twice after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from kanalvaxel.adapters.persistence.tables import AttemptRow, ShipmentRow
from kanalvaxel.bootstrap import Container, build
from tests.e2e.conftest import process_env, start, wait_for
from tests.integration.conftest import make_letter, settings_for

pytestmark = pytest.mark.slow


def _setup(db_url: str, tmp_path: Path, dev_certs: Path, letters: int) -> tuple[Container, list[str]]:
    c = build(settings_for(db_url, tmp_path, dev_certs))
    c.migrate()
    client = c.clients.add("crash-test", ["sandbox"]).client
    ids = [c.intake.submit(client, f"k{i}", f"h{i}", make_letter()).shipment.id for i in range(letters)]
    return c, ids


def _states(c: Container) -> dict[str, str]:
    with c.engine.connect() as conn:
        return {r.id: r.state for r in conn.execute(select(ShipmentRow.id, ShipmentRow.state))}


def _published(tmp_path: Path) -> Counter[str]:
    """How many times each shipment appears in the closed batches the vendor can see."""
    seen: Counter[str] = Counter()
    outgoing = tmp_path / "spool" / "outgoing"
    for batch in outgoing.iterdir() if outgoing.exists() else []:
        if batch.name.startswith("."):
            continue
        manifest = json.loads((batch / "manifest.json").read_text())
        pdfs = sorted(p.name for p in batch.glob("*.pdf"))
        assert len(pdfs) == manifest["letter_count"] == len(manifest["letters"])
        seen.update(x["shipment_id"] for x in manifest["letters"])
    return seen


def _diagnose(c: Container) -> str:
    """What the database says, for a failure message."""
    from sqlalchemy import func

    from kanalvaxel.adapters.persistence.tables import PrintBatchRow, WorkItemRow

    with c.engine.connect() as conn:
        states = dict(Counter(_states(c).values()))
        batches = conn.execute(
            select(PrintBatchRow.status, func.count()).group_by(PrintBatchRow.status)
        ).all()
        items = conn.execute(
            select(WorkItemRow.status, func.count(), func.max(WorkItemRow.claims)).group_by(
                WorkItemRow.status
            )
        ).all()
    return f"shipments {states}; batches {batches}; work items {items}"


def _worker_env(db_url: str, tmp_path: Path, dev_certs: Path, **extra: str) -> dict[str, str]:
    return process_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_WORKER__LEASE_SECONDS="5",
        KANALVAXEL_PRINT__BATCH_MAX_AGE_SECONDS="1",
        KANALVAXEL_PRINT__BATCH_MAX_LETTERS="7",
        **extra,
    )


def _finish_and_check(c: Container, ids: list[str], db_url: str, tmp_path: Path, dev_certs: Path) -> None:
    log = tmp_path / "worker-final.log"
    proc = start(["worker"], _worker_env(db_url, tmp_path, dev_certs), tmp_path, log)
    try:
        wait_for(lambda: "running" in log.read_text(), 60, "the worker to start", log)
        try:
            wait_for(
                lambda: set(_states(c).values()) == {"DELIVERED"}, 90, "every letter to be delivered", log
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnose(c)}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    published = _published(tmp_path)
    assert sorted(published) == sorted(ids)  # nothing lost
    assert set(published.values()) == {1}  # nothing twice
    assert list((tmp_path / "spool" / "staging").glob("*.pdf")) == []


def test_sigkill_between_send_and_record(db_url: str, tmp_path: Path, dev_certs: Path) -> None:
    c, ids = _setup(db_url, tmp_path, dev_certs, letters=3)
    log = tmp_path / "worker-killed.log"
    env = _worker_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_WORKER__THREADS="1",
        KANALVAXEL_WORKER__FAILPOINTS='{"after_send": 120}',
    )
    proc = start(["worker"], env, tmp_path, log)
    staging = tmp_path / "spool" / "staging"

    def sent_but_not_recorded() -> bool:
        return any(staging.glob("*.pdf")) and "failpoint after_send" in log.read_text()

    try:
        wait_for(sent_but_not_recorded, 60, "the worker to be paused right after a send", log)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    (staged,) = list(staging.glob("*.pdf"))
    victim = staged.stem
    assert _states(c)[victim] == "SENDING"

    _finish_and_check(c, ids, db_url, tmp_path, dev_certs)
    with c.engine.connect() as conn:
        outcomes = [
            r.outcome
            for r in conn.execute(
                select(AttemptRow.outcome)
                .where(AttemptRow.shipment_id == victim)
                .order_by(AttemptRow.attempt_no)
            )
        ]
    assert outcomes == [None, "HANDED_OVER"]  # the interrupted attempt stays visible
    c.close()


def test_sigkill_at_random_moments_under_load(db_url: str, tmp_path: Path, dev_certs: Path) -> None:
    c, ids = _setup(db_url, tmp_path, dev_certs, letters=40)
    env = _worker_env(db_url, tmp_path, dev_certs, KANALVAXEL_WORKER__THREADS="3")
    kills = 0
    for round_no, delay in enumerate((1.5, 0.8, 1.1)):
        log = tmp_path / f"worker-{round_no}.log"
        proc = start(["worker"], env, tmp_path, log)
        wait_for(lambda log=log: "running" in log.read_text(), 60, "the worker to start", log)  # type: ignore[misc]
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
        kills += 1
        time.sleep(5.5)  # let the dead worker's leases run out, as they would in production
    assert kills == 3
    _finish_and_check(c, ids, db_url, tmp_path, dev_certs)
    c.close()


def test_sigkill_after_the_smtp_relay_took_a_letter_never_sends_it_again(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    """The send journal: a worker killed after the relay's 250 and before it recorded the outcome; the next
    worker finds the journal entry and records the delivery without a second e-mail."""
    import email
    import email.policy

    from kanalvaxel.sandbox.smtp_sink import SmtpSink

    c = build(settings_for(db_url, tmp_path, dev_certs))
    try:
        c.migrate()
        client = c.clients.add("crash-test", ["sandbox"]).client
        ids = [
            c.intake.submit(client, f"m{i}", f"h{i}", make_letter(email=f"person{i}@example.se")).shipment.id
            for i in range(3)
        ]
        with SmtpSink(certificate=dev_certs / "server.pem", key=dev_certs / "server.key") as sink:
            mail_env = {
                "KANALVAXEL_EMAIL__ENABLED": "true",
                "KANALVAXEL_EMAIL__SMTP_HOST": "127.0.0.1",
                "KANALVAXEL_EMAIL__SMTP_PORT": str(sink.port),
                "KANALVAXEL_EMAIL__CA_BUNDLE": str(dev_certs / "ca.pem"),
                # at most half the 5 s lease: a send is bounded to 80 % of it
                "KANALVAXEL_EMAIL__DATA_TIMEOUT_SECONDS": "2",
            }
            log = tmp_path / "worker-killed.log"
            env = _worker_env(
                db_url,
                tmp_path,
                dev_certs,
                KANALVAXEL_WORKER__THREADS="1",
                KANALVAXEL_WORKER__FAILPOINTS='{"after_send": 120}',
                **mail_env,
            )
            proc = start(["worker"], env, tmp_path, log)
            try:
                wait_for(
                    lambda: len(sink.messages) == 1 and "failpoint after_send" in log.read_text(),
                    60,
                    "the worker to be paused right after the relay took a letter",
                    log,
                    proc,
                )
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            final_log = tmp_path / "worker-final.log"
            final = start(
                ["worker"], _worker_env(db_url, tmp_path, dev_certs, **mail_env), tmp_path, final_log
            )
            try:
                wait_for(
                    lambda: set(_states(c).values()) == {"DELIVERED"},
                    90,
                    "every letter delivered",
                    final_log,
                    final,
                )
            finally:
                final.send_signal(signal.SIGTERM)
                assert final.wait(timeout=30) == 0, final_log.read_text()[-3000:]
            ids_sent = Counter(
                str(email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"]).split(".")[
                    0
                ][1:]
                for m in sink.messages
            )
        assert sorted(ids_sent) == sorted(ids)  # nothing lost
        assert set(ids_sent.values()) == {1}  # nothing twice
        assert sink.attempts == 3
    finally:
        c.close()
