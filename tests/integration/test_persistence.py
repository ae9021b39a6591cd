"""Migrations, the outbox claim and leases — against SQLite and the real PostgreSQL server."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from kanalvaxel.adapters.persistence import migrate
from kanalvaxel.adapters.persistence.database import make_engine, writer_lock
from kanalvaxel.adapters.persistence.tables import Base, WorkItemRow
from kanalvaxel.bootstrap import Container
from kanalvaxel.ports import ClientRecord, DuplicateIdempotencyKeyError, LeaseLostError
from tests.integration.conftest import ManualClock, make_letter


def test_migrations_build_exactly_the_tables_the_code_declares(container: Container) -> None:
    with container.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrating_twice_is_harmless(container: Container) -> None:
    container.migrate()
    head = ScriptDirectory.from_config(migrate.alembic_config(container.engine)).get_current_head()
    assert head is not None
    assert head >= "0002"
    with container.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head


def test_a_database_at_the_first_revision_upgrades_with_its_data(tmp_path: Path) -> None:
    """An installation from before the send journal keeps its shipments when it upgrades."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        migrate.upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_clients (id, name, key_id, key_hash, senders, created_at) "
                    "VALUES ('c1', 'old', 'k1', 'h', '[]', '2026-01-01 00:00:00')"
                )
            )
        migrate.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM api_clients")).scalar_one() == "old"
            assert conn.execute(text("SELECT count(*) FROM channel_sends")).scalar_one() == 0
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def _submit(container: Container, client: ClientRecord, n: int) -> list[str]:
    return [
        container.intake.submit(client, f"key-{i}", f"hash-{i}", make_letter()).shipment.id for i in range(n)
    ]


def test_concurrent_claims_never_hand_out_the_same_item_twice(
    container: Container, client: ClientRecord
) -> None:
    ids = _submit(container, client, 40)
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def claimer(name: str) -> None:
        start.wait()
        while True:
            with container.uow() as uow:
                got = uow.claim(name, container.clock.now(), timedelta(minutes=5), 3)
                uow.commit()
            if not got:
                return
            with lock:
                claimed.extend(c.shipment_id for c in got)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(claimed)
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}


def test_an_expired_lease_returns_work_and_the_old_holder_can_record_nothing(
    container: Container, client: ClientRecord, clock: ManualClock
) -> None:
    (sid,) = _submit(container, client, 1)
    lease = timedelta(seconds=60)
    with container.uow() as uow:
        (first,) = uow.claim("w1", clock.now(), lease, 10)
        uow.commit()
    clock.advance(seconds=30)
    with container.uow() as uow:
        assert uow.claim("w2", clock.now(), lease, 10) == []
        uow.commit()
    clock.advance(seconds=31)
    with container.uow() as uow:
        (second,) = uow.claim("w2", clock.now(), lease, 10)
        uow.commit()
    assert second.shipment_id == sid
    assert second.token != first.token
    assert second.claims == 2
    with container.uow() as uow, pytest.raises(LeaseLostError):
        uow.complete(first, clock.now())
    with container.uow() as uow:
        uow.complete(second, clock.now())
        uow.commit()
    with container.uow() as uow:
        assert uow.claim("w3", clock.now() + timedelta(hours=1), lease, 10) == []


def test_a_renewed_lease_keeps_the_work_until_the_new_expiry(
    container: Container, client: ClientRecord, clock: ManualClock
) -> None:
    """The dispatcher renews the lease when an attempt starts, so a channel's time bound (a share of the
    lease) counts from the send and not from the claim."""
    _submit(container, client, 1)
    lease = timedelta(seconds=60)
    with container.uow() as uow:
        (claim,) = uow.claim("w1", clock.now(), lease, 1)
        uow.commit()
    clock.advance(seconds=50)
    with container.uow() as uow:
        uow.check_lease(claim, extend_until=clock.now() + lease)
        uow.commit()
    clock.advance(seconds=20)  # past the first expiry, before the renewed one
    with container.uow() as uow:
        assert uow.claim("w2", clock.now(), lease, 1) == []
        uow.commit()
    clock.advance(seconds=41)
    with container.uow() as uow:
        (taken,) = uow.claim("w2", clock.now(), lease, 1)
        uow.commit()
    with container.uow() as uow, pytest.raises(LeaseLostError):  # the old holder cannot renew it back
        uow.check_lease(claim, extend_until=clock.now() + lease)
    assert taken.claims == 2
    assert container.dispatch_settings.lease == timedelta(seconds=container.settings.worker.lease_seconds)


def test_released_work_is_claimable_at_once(
    container: Container, client: ClientRecord, clock: ManualClock
) -> None:
    _submit(container, client, 1)
    with container.uow() as uow:
        (claim,) = uow.claim("w1", clock.now(), timedelta(minutes=5), 1)
        uow.commit()
    with container.uow() as uow:
        uow.release(claim)
        uow.commit()
    with container.uow() as uow:
        assert len(uow.claim("w2", clock.now(), timedelta(minutes=5), 1)) == 1


def test_submission_writes_shipment_content_event_and_outbox_row_together(
    container: Container, client: ClientRecord
) -> None:
    (sid,) = _submit(container, client, 1)
    with container.uow() as uow:
        shp = uow.shipment(sid)
        content = uow.letter_content(sid)
        events = uow.events(sid)
    assert shp is not None
    assert shp.state == "ACCEPTED"
    assert content is not None
    assert content[1][0].content.startswith(b"%PDF-")
    assert [e.type for e in events] == ["ACCEPTED"]
    with container.engine.connect() as conn:
        live = conn.scalar(
            select(func.count()).select_from(WorkItemRow).where(WorkItemRow.shipment_id == sid)
        )
    assert live == 1


def test_one_live_work_item_per_shipment_is_enforced_by_the_database(
    container: Container, client: ClientRecord, clock: ManualClock
) -> None:
    from sqlalchemy.exc import IntegrityError

    (sid,) = _submit(container, client, 1)
    with container.uow() as uow, pytest.raises(IntegrityError):
        uow.enqueue(sid, clock.now(), clock.now())


def test_a_read_only_unit_of_work_cannot_commit(container: Container, client: ClientRecord) -> None:
    (sid,) = _submit(container, client, 1)
    with container.uow(read_only=True) as uow:
        assert uow.shipment(sid) is not None
        with pytest.raises(RuntimeError, match="read-only"):
            uow.commit()


def test_a_reader_does_not_wait_for_a_writer(container: Container, client: ClientRecord) -> None:
    """While a write transaction is open (on SQLite: the one writer's lock is held), a read-only unit of
    work reads what was committed before it, at once, instead of waiting for the lock."""
    (sid,) = _submit(container, client, 1)
    writing, release = threading.Event(), threading.Event()

    def writer() -> None:
        with container.uow() as uow:
            shp = uow.shipment(sid)
            assert shp is not None
            uow.save_shipment(replace(shp, result={"note": "Ändrat beslut"}))
            writing.set()
            release.wait(30)
            uow.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert writing.wait(10)
        started = time.monotonic()
        with container.uow(read_only=True) as uow:
            seen = uow.shipment(sid)
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join()
    assert seen is not None
    assert seen.result is None
    assert waited < 5  # a reader that waited for the writer would have waited 30 s (busy_timeout)
    with container.uow(read_only=True) as uow:
        after = uow.shipment(sid)
    assert after is not None
    assert after.result == {"note": "Ändrat beslut"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL has no one writer
def test_a_writer_hands_back_its_turn_however_its_transaction_ends(
    container: Container, client: ClientRecord
) -> None:
    """SQLite's writers of one process take turns on a lock: held from BEGIN IMMEDIATE to the end of the
    transaction, whichever way it ends, and never by a reader."""
    lock = writer_lock(container.engine)
    assert lock is not None
    (sid,) = _submit(container, client, 1)
    assert not lock.held  # committed
    with container.uow(read_only=True) as uow:
        first = uow.shipment(sid)
        assert not lock.held
    assert first is not None
    with container.uow() as uow:
        uow.shipment(sid)
        assert lock.held
    assert not lock.held  # rolled back when the block was left without commit
    # The same idempotency key again: refused by the database inside the write transaction.
    with pytest.raises(DuplicateIdempotencyKeyError), container.uow() as uow:
        uow.add_shipment(replace(first, id=str(uuid.uuid4())), {}, ())
    assert not lock.held
    with container.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert lock.held
    assert not lock.held  # the pool's reset of a connection given back mid-transaction


def test_writers_in_many_threads_all_get_their_turn(container: Container, client: ClientRecord) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def submit(t: int) -> None:
        start.wait()
        try:
            for i in range(6):
                container.intake.submit(client, f"t{t}-{i}", f"hash-{t}-{i}", make_letter())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with container.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM shipments")).scalar_one() == 48
        assert conn.execute(text("SELECT count(*) FROM work_items")).scalar_one() == 48
