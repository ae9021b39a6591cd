"""Bulk claims: one statement leases a batch of due letters, FaR is asked once per sender for the batch, each
letter is delivered exactly once (also with two relays on one PostgreSQL database), a stopping worker gives
back what it has not begun; and the status read answers as the whole row does."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from formedlare.api import DistributionState, RelayUnavailableError, UnknownDistributionError
from formedlare.mm import SigningIdentity
from formedlare.operators import CallResult, Outcome
from formedlare.relay import DeliveryPolicy, Relay, _claim_statement
from formedlare.store import DistributionRow
from formedlare.worker import RelayWorker
from kanalvaxel.sandbox.world import SandboxWorld
from tests.formedlare.conftest import (
    KIVRA_NAME,
    KIVRA_RECIPIENT,
    MMP_RECIPIENT,
    NO_MAILBOX_RECIPIENT,
    RelayFactory,
    sign,
)

KIVRA_ID = "165568402266"


@contextmanager
def _claims_counted(engine: Engine) -> Iterator[list[str]]:
    """The claim statements (UPDATE … SET lease_token …) run on `engine` while the block runs."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE FORMEDLARE_DISTRIBUTIONS SET LEASE_TOKEN"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _engine(relay: Relay) -> Engine:
    return relay._engine  # the relay's own engine, to watch its statements and read its rows


def _message_id(relay: Relay, distribution_id: str) -> str:
    [message_id] = relay.distribution_detail(distribution_id).message_ids
    return message_id


def test_one_claim_leases_a_batch_of_due_letters_and_each_is_delivered_once(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(db_url)
    kivra, mmp = sims.operators["kivra"], sims.operators["mmp"]
    to_kivra = [relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(3)]
    to_mmp = [relay.distribute_secure(sign(sender, MMP_RECIPIENT)) for _ in range(2)]
    sims.far.reset_stats()

    with _claims_counted(_engine(relay)) as claims:
        assert relay.deliver_next() == 5
    assert len(claims) == 1  # five letters, one claim statement

    # One FaR lookup for the batch (the FaR client caches nothing here): two recipients, one sender.
    assert sims.far.stats.ids_per_call == [2]
    for distribution_id in to_kivra + to_mmp:
        status = relay.check_distribution_status(distribution_id)
        assert status.state is DistributionState.DELIVERED
        assert status.attempts == 1
    assert kivra.requests == 3
    assert sorted(a.message_id for a in kivra.accepted) == sorted(_message_id(relay, i) for i in to_kivra)
    assert mmp.requests == 2
    assert sorted(a.message_id for a in mmp.accepted) == sorted(_message_id(relay, i) for i in to_mmp)
    assert relay.deliver_due() == 0


def test_a_batch_is_the_letters_due_first_worked_in_that_order(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(db_url)
    ids = []
    for _ in range(4):
        ids.append(relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)))
        make_relay.clock.advance(seconds=1)
    kivra = sims.operators["kivra"]

    with _claims_counted(_engine(relay)) as claims:
        assert relay.deliver_next(batch=3) == 3
    assert len(claims) == 1

    assert [a.message_id for a in kivra.accepted] == [_message_id(relay, i) for i in ids[:3]]
    last = relay.check_distribution_status(ids[3])
    assert last.state is DistributionState.PENDING
    assert last.attempts == 0
    assert relay.deliver_next(batch=3) == 1
    assert len(kivra.accepted) == 4


def test_deliver_due_claims_in_batches_of_the_policys_size(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url, policy=DeliveryPolicy(claim_batch=3))
    ids = [relay.distribute_secure(sign(sender, MMP_RECIPIENT)) for _ in range(7)]

    with _claims_counted(_engine(relay)) as claims:
        assert relay.deliver_due() == 7
    assert len(claims) == 4  # 3 + 3 + 1, and the one that found nothing due

    assert {relay.check_distribution_status(i).state for i in ids} == {DistributionState.DELIVERED}
    assert sims.operators["mmp"].requests == 7
    assert len(sims.operators["mmp"].accepted) == 7


def test_a_stopping_worker_gives_back_the_letters_of_its_batch_it_has_not_begun(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url)
    ids = [relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(4)]
    asked = iter([False, True])  # asked before each letter: stop once the first is done

    assert relay.deliver_next(stopping=lambda: next(asked)) == 1

    states = [relay.check_distribution_status(i) for i in ids]
    assert states[0].state is DistributionState.DELIVERED
    assert [(s.state, s.attempts) for s in states[1:]] == [(DistributionState.PENDING, 0)] * 3
    assert [relay.distribution_detail(i).attempts for i in ids[1:]] == [(), (), ()]
    # Given back, not left to their leases: due again at once (the clock has not moved).
    assert relay.deliver_due() == 3
    assert len(sims.operators["kivra"].accepted) == 4
    assert sims.operators["kivra"].requests == 4


@pytest.mark.parametrize(
    ("failure", "lookups"),
    [
        (503, [3]),  # FaR is down: one lookup, and every letter of the batch waits for it
        ("fault", [3, 1, 1, 1]),  # a fault may be one recipient's doing: each is then asked alone
    ],
)
def test_far_failing_for_a_batch_retries_every_letter_later(
    make_relay: RelayFactory,
    sqlite_url: str,
    sims: SandboxWorld,
    sender: SigningIdentity,
    failure: int | Literal["fault"],
    lookups: list[int],
) -> None:
    relay = make_relay(sqlite_url)
    ids = [
        relay.distribute_secure(sign(sender, r))
        for r in (KIVRA_RECIPIENT, MMP_RECIPIENT, NO_MAILBOX_RECIPIENT)
    ]
    sims.far.reset_stats()
    sims.far.fail_with(failure)

    assert relay.deliver_next() == 3

    assert sims.far.stats.ids_per_call == lookups
    for distribution_id in ids:
        status = relay.check_distribution_status(distribution_id)
        assert status.state is DistributionState.PENDING
        assert "FaR" in status.detail
        assert [a.outcome for a in relay.distribution_detail(distribution_id).attempts] == [
            Outcome.FAR_UNAVAILABLE
        ]
    assert sum(op.requests for op in sims.operators.values()) == 0


def test_a_relay_claiming_beside_another_skips_the_letters_the_other_holds(
    make_relay: RelayFactory, pg_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    first = make_relay(pg_url, name="first")
    second = make_relay(pg_url, name="second")
    ids = [first.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(10)]
    now = make_relay.clock.now
    worked: list[int] = []

    # The first relay's claim of five, its transaction still open: those rows are locked and not yet leased.
    with _engine(first).connect() as conn:
        transaction = conn.begin()
        held = conn.execute(
            _claim_statement(5, first.policy.operator_concurrency),
            {
                "b_now": now,
                "b_token": str(uuid.uuid4()),
                "b_owner": "first",
                "b_until": now + first.policy.lease,
            },
        ).all()
        claimer = threading.Thread(target=lambda: worked.append(second.deliver_next(batch=10)))
        claimer.start()
        try:
            claimer.join(20)
            # Without SKIP LOCKED the second claim would wait for the first transaction (or, without FOR
            # UPDATE, lease the same rows once it ends).
            assert not claimer.is_alive(), "the second relay's claim waited for the first one's rows"
        finally:
            transaction.commit()
            claimer.join(60)
    held_ids = {row.id for row in held}

    assert len(held_ids) == 5
    assert worked == [5]
    delivered = {i for i in ids if second.check_distribution_status(i).state is DistributionState.DELIVERED}
    assert delivered == set(ids) - held_ids
    assert second.deliver_due() == 0  # the first relay's five are still leased
    make_relay.clock.advance(seconds=first.policy.lease.total_seconds() + 1)
    assert second.deliver_due() == 5
    kivra = sims.operators["kivra"]
    assert kivra.requests == 10
    assert sorted(a.message_id for a in kivra.accepted) == sorted(_message_id(second, i) for i in ids)


def _real_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout} s"
        time.sleep(0.05)


def test_two_relays_on_one_database_deliver_every_letter_exactly_once(
    make_relay: RelayFactory, pg_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    policy = DeliveryPolicy(operator_concurrency=3, busy_retry=dt.timedelta(seconds=0.05), claim_batch=4)
    relays = [make_relay(pg_url, policy=policy, clock=_real_now, name=n) for n in ("first", "second")]
    kivra, mmp = sims.operators["kivra"], sims.operators["mmp"]
    kivra.behave(delay=0.05)
    mmp.behave(delay=0.05)
    recipients = [KIVRA_RECIPIENT, MMP_RECIPIENT] * 15
    ids = [relays[0].distribute_secure(sign(sender, r)) for r in recipients]

    workers = [RelayWorker(r, threads=2, idle_seconds=0.02) for r in relays]
    for worker in workers:
        worker.start()
    try:
        _wait(
            lambda: all(
                relays[1].check_distribution_status(i).state is DistributionState.DELIVERED for i in ids
            ),
            60,
        )
    finally:
        for worker in workers:
            worker.stop()

    with _engine(relays[0]).connect() as conn:
        owners: dict[str | None, int] = {
            owner: count
            for owner, count in conn.execute(
                select(DistributionRow.lease_owner, func.count()).group_by(DistributionRow.lease_owner)
            )
        }
    print(f"\n30 letters, two relays of two claim threads each, batches of 4: claimed by {owners}")
    # Every letter was last leased by one of the two relays (which of them is left to the race).
    assert set(owners) <= {"first", "second"}
    assert {relays[0].check_distribution_status(i).attempts for i in ids} == {1}
    assert kivra.requests == len(kivra.accepted) == 15
    assert mmp.requests == len(mmp.accepted) == 15
    accepted = [a.message_id for a in kivra.accepted + mmp.accepted]
    assert sorted(accepted) == sorted(_message_id(relays[0], i) for i in ids)
    assert kivra.max_concurrent <= 3
    assert mmp.max_concurrent <= 3


def test_the_status_answers_as_the_whole_row_does_through_a_letters_life(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(db_url)
    clock = make_relay.clock
    sims.operators["kivra"].behave(http_status=503, times=1)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    def status_matches_the_row() -> None:
        status = relay.check_distribution_status(distribution_id)
        assert status == relay.distribution_detail(distribution_id).status
        assert status.distribution_id == distribution_id
        assert status.updated_at == clock.now
        assert status.updated_at.utcoffset() == dt.timedelta(0)

    status_matches_the_row()
    received = relay.check_distribution_status(distribution_id)
    assert (received.state, received.attempts, received.operator_id) == (DistributionState.PENDING, 0, None)
    assert received.detail == "Mottagen av förmedlaren, väntar på leverans"

    clock.advance(seconds=1)
    assert relay.deliver_due() == 1
    status_matches_the_row()
    retried = relay.check_distribution_status(distribution_id)
    assert (retried.state, retried.attempts) == (DistributionState.PENDING, 1)
    assert (retried.operator_id, retried.operator_name) == (KIVRA_ID, KIVRA_NAME)
    assert retried.detail.startswith("Nytt försök ")

    clock.advance(seconds=relay.policy.backoff(1).total_seconds())
    assert relay.deliver_due() == 1
    status_matches_the_row()
    delivered = relay.check_distribution_status(distribution_id)
    assert (delivered.state, delivered.attempts) == (DistributionState.DELIVERED, 2)
    assert delivered.detail == f"Levererad till {KIVRA_NAME}"

    with pytest.raises(UnknownDistributionError):
        relay.check_distribution_status(str(uuid.uuid4()))


def test_status_reads_do_not_wait_for_a_writer_on_sqlite(
    make_relay: RelayFactory, sender: SigningIdentity, sqlite_url: str
) -> None:
    """A sender's status poll and the digest check at intake only read: on SQLite they begin deferred and
    are answered while another transaction holds the writers' turn (which they would otherwise wait for,
    up to 30 s)."""
    relay = make_relay(sqlite_url)
    signed = sign(sender, KIVRA_RECIPIENT)
    distribution_id = relay.distribute_secure(signed)
    answers: list[object] = []

    def read() -> None:
        answers.append(relay.check_distribution_status(distribution_id).state)
        answers.append(relay.distribute_secure(signed))  # the same bytes again: found by their digest

    with _engine(relay).begin() as writer:  # holds the writers' turn and SQLite's write lock
        writer.exec_driver_sql("UPDATE formedlare_distributions SET updated_at = updated_at")
        reader = threading.Thread(target=read, daemon=True)
        started = time.monotonic()
        reader.start()
        reader.join(timeout=10)
        waited = time.monotonic() - started
        assert not reader.is_alive(), "the read waited for the writer"
    assert answers == [DistributionState.PENDING, distribution_id]
    assert waited < 10


class _HeldCalls:
    """An OperatorCalls that keeps the calls it is given, to run them when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Callable[[], None]]] = []

    def submit(self, operator_id: str, call: Callable[[], None]) -> None:
        self.calls.append((operator_id, call))


@contextmanager
def _transactions_counted(engine: Engine) -> Iterator[list[int]]:
    """How many transactions begin on `engine` (the relay's, its read-only reads included) in the block."""
    begun = [0]

    def on_begin(conn: Any) -> None:
        begun[0] += 1

    event.listen(engine, "begin", on_begin)
    try:
        yield begun
    finally:
        event.remove(engine, "begin", on_begin)


def test_the_slots_of_a_batch_are_taken_in_one_transaction(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(db_url)
    ids = [
        relay.distribute_secure(sign(sender, r)) for r in (KIVRA_RECIPIENT, MMP_RECIPIENT, KIVRA_RECIPIENT)
    ]
    calls = _HeldCalls()

    with _transactions_counted(_engine(relay)) as begun:
        assert relay.deliver_next(calls=calls) == 3
    assert begun == [2]  # the claim, then every slot of the batch (not one transaction per letter)
    operators = [operator_id for operator_id, _ in calls.calls]
    assert len(operators) == 3
    assert operators.count(KIVRA_ID) == 2
    for distribution_id in ids:
        [attempt] = relay.distribution_detail(distribution_id).attempts
        assert attempt.finished_at is None  # in flight: the slot is taken, the call not yet made
    for _, call in calls.calls:
        call()
    assert {relay.check_distribution_status(i).state for i in ids} == {DistributionState.DELIVERED}
    assert sims.operators["kivra"].requests == 2
    assert sims.operators["mmp"].requests == 1


def _in_flight(relay: Relay, count: int) -> list[tuple[Any, Any, int]]:
    """`count` letters claimed and their slots taken, ready for their outcomes to be recorded."""
    claims = relay._claim(relay._clock(), count)
    answers = relay._reachability(claims)
    routed = [(c, relay._route(c, answers, relay._clock)) for c in claims]
    return relay._take_slots([(c, t) for c, t in routed if t is not None], relay._clock)


def _record_while_another_records(
    relay: Relay,
    slots: list[tuple[Any, Any, int]],
    record: Callable[[tuple[Any, Any, int]], None],
    while_held: Callable[[], None] = lambda: None,
) -> None:
    """`record(slot)` for each slot, each in a thread, while another outcome is being recorded (the
    recorder's turn held here) until all have queued; `while_held()` then runs, and the turn is let go."""
    with relay._recording:
        threads = [threading.Thread(target=record, args=(slot,)) for slot in slots]
        for thread in threads:
            thread.start()
        _wait(lambda: len(relay._outcomes) == len(slots), 10)
        while_held()
    for thread in threads:
        thread.join(10)


def _none_returned(returned: list[str]) -> None:
    assert returned == []  # none returns before its outcome is committed


def test_outcomes_that_end_while_another_is_recorded_are_recorded_together(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url)
    ids = [relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(4)]
    slots = _in_flight(relay, 4)
    delivered = CallResult(Outcome.DELIVERED, 200, "levererad", False, "ok", trans_id="t")
    returned: list[str] = []

    def record(slot: tuple[Any, Any, int]) -> None:
        claim, target, attempt_id = slot
        relay._record(claim, target, attempt_id, delivered, relay._clock())
        returned.append(claim.id)

    with _transactions_counted(_engine(relay)) as begun:
        _record_while_another_records(relay, slots, record, lambda: _none_returned(returned))
    assert begun == [1]
    assert sorted(returned) == sorted(ids)
    for distribution_id in ids:
        status = relay.check_distribution_status(distribution_id)
        assert (status.state, status.attempts) == (DistributionState.DELIVERED, 1)
        [attempt] = relay.distribution_detail(distribution_id).attempts
        assert attempt.outcome == Outcome.DELIVERED.value


def test_an_outcome_that_cannot_be_written_fails_alone_and_the_rest_of_its_group_is_recorded(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url)
    ids = [relay.distribute_secure(sign(sender, KIVRA_RECIPIENT)) for _ in range(3)]
    slots = _in_flight(relay, 3)
    bad = slots[1][0].id
    delivered = CallResult(Outcome.DELIVERED, 200, "levererad", False, "ok", trans_id="t")
    failed: list[str] = []
    returned: list[str] = []

    def record(slot: tuple[Any, Any, int]) -> None:
        claim, target, attempt_id = slot
        try:
            relay._record(claim, target, attempt_id, delivered, relay._clock())
            returned.append(claim.id)
        except RelayUnavailableError:
            failed.append(claim.id)

    def refuse(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith(
            "UPDATE FORMEDLARE_DISTRIBUTIONS SET STATE"
        ) and bad in tuple(parameters):
            raise RuntimeError("this one cannot be written")

    event.listen(_engine(relay), "before_cursor_execute", refuse)
    try:
        with _transactions_counted(_engine(relay)) as begun:
            _record_while_another_records(relay, slots, record)
    finally:
        event.remove(_engine(relay), "before_cursor_execute", refuse)
    assert begun == [1]  # one transaction for the three
    assert failed == [bad]
    assert sorted(returned) == sorted(set(ids) - {bad})
    for distribution_id in ids:
        status = relay.check_distribution_status(distribution_id)
        [attempt] = relay.distribution_detail(distribution_id).attempts
        if distribution_id == bad:
            # Its savepoint undone: as after a crash, it waits for its lease (and the operator's duplicate).
            assert status.state is DistributionState.PENDING
            assert attempt.finished_at is None
        else:
            assert status.state is DistributionState.DELIVERED
            assert attempt.outcome == Outcome.DELIVERED.value


def test_an_answer_from_an_operator_that_was_not_failing_does_not_wait_for_its_row(
    make_relay: RelayFactory, pg_url: str, sender: SigningIdentity
) -> None:
    """Each outcome used to write the operator's row (failures back to 0), so on PostgreSQL every outcome
    waited for the last one's commit on it. Now only an operator that was failing has its row written."""
    relay = make_relay(pg_url)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))
    [(claim, target, attempt_id)] = _in_flight(relay, 1)
    delivered = CallResult(Outcome.DELIVERED, 200, "levererad", False, "ok", trans_id="t")
    recorder = threading.Thread(
        target=relay._record, args=(claim, target, attempt_id, delivered, relay._clock()), daemon=True
    )
    with _engine(relay).connect() as other, other.begin():
        other.exec_driver_sql(
            "SELECT id FROM formedlare_operators WHERE id = %(id)s FOR UPDATE", {"id": KIVRA_ID}
        ).all()
        recorder.start()
        recorder.join(10)
        assert not recorder.is_alive(), "the outcome waited for the operator's row"
    status = relay.check_distribution_status(distribution_id)
    assert (status.state, status.attempts) == (DistributionState.DELIVERED, 1)
