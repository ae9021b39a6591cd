"""Delivery: FaR routing, sealing, deliverSecure over mutual TLS to the right operator simulator, retries
with backoff, per-operator queues, and the crash between the operator's yes and our record of it."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from formedlare.api import DistributionState
from formedlare.mm import SigningIdentity
from formedlare.operators import Outcome
from formedlare.relay import DeliveryPolicy, Relay
from kanalvaxel.sandbox.world import SandboxWorld
from tests.formedlare.conftest import (
    KIVRA_NAME,
    KIVRA_RECIPIENT,
    MMP_NAME,
    MMP_RECIPIENT,
    NO_MAILBOX_RECIPIENT,
    OPTED_OUT_RECIPIENT,
    PENDING_RECIPIENT,
    SENDER_ORG,
    RelayFactory,
    sign,
)

KIVRA_ID = "165568402266"
RELAY_ORG = "2120000019"  # the dev `relay` certificate, which seals


class _Crash(BaseException):
    """The worker process dying: nothing after the call runs, no handler of ours catches it."""


class AfterCall(httpx.BaseTransport):
    """The real TLS transport, then (the first `times` calls) an exception in place of the answer: the
    operator got and handled the request, we never learn how."""

    def __init__(self, inner: httpx.BaseTransport, error: BaseException, times: int = 1) -> None:
        self._inner = inner
        self._error = error
        self.remaining = times

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if self.remaining > 0:
            self.remaining -= 1
            response.read()
            response.close()
            raise self._error
        return response

    def close(self) -> None:
        self._inner.close()


def _outcomes(relay: Relay, distribution_id: str) -> list[str | None]:
    return [a.outcome for a in relay.distribution_detail(distribution_id).attempts]


@pytest.mark.parametrize(
    ("recipient", "key", "other", "name"),
    [(KIVRA_RECIPIENT, "kivra", "mmp", KIVRA_NAME), (MMP_RECIPIENT, "mmp", "kivra", MMP_NAME)],
)
def test_delivers_to_the_operator_far_names_and_no_other(
    make_relay: RelayFactory,
    db_url: str,
    sims: SandboxWorld,
    sender: SigningIdentity,
    recipient: str,
    key: str,
    other: str,
    name: str,
) -> None:
    relay = make_relay(db_url)
    signed = sign(sender, recipient)
    distribution_id = relay.distribute_secure(signed)

    assert relay.deliver_due() == 1
    assert relay.deliver_due() == 0

    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.DELIVERED
    assert status.detail == f"Levererad till {name}"
    assert status.operator_name == name
    assert status.operator_id == sims.operators[key].operator_id
    assert status.attempts == 1
    [accepted] = sims.operators[key].accepted  # the simulator verified schema, seal and sender signature
    assert accepted.recipient_id == recipient
    assert accepted.sender_organisation_number == SENDER_ORG
    assert accepted.seal_organisation_number == RELAY_ORG
    # The sender's signed bytes travel verbatim inside the seal, less the namespace declaration that the
    # SealedDelivery around them already makes.
    assert signed.replace(b' xmlns="http://minameddelanden.gov.se/schema/Message/v3"', b"", 1) in accepted.raw
    assert relay.distribution_detail(distribution_id).trans_id == accepted.trans_id
    assert sims.operators[other].requests == 0
    assert sims.far.stats.calls == 1


@pytest.mark.parametrize(
    ("recipient", "reason"),
    [
        (NO_MAILBOX_RECIPIENT, "Mottagaren har ingen digital brevlåda"),
        (PENDING_RECIPIENT, "Mottagarens digitala brevlåda är inte aktiverad än"),
        # Opted out of the SENDING authority; asked with the relay's own number FaR would say yes.
        (OPTED_OUT_RECIPIENT, "Mottagaren har valt bort digital post från denna avsändare"),
    ],
)
def test_recipient_who_cannot_get_it_digitally_fails_with_the_reason(
    make_relay: RelayFactory,
    sqlite_url: str,
    sims: SandboxWorld,
    sender: SigningIdentity,
    recipient: str,
    reason: str,
) -> None:
    relay = make_relay(sqlite_url)
    distribution_id = relay.distribute_secure(sign(sender, recipient))

    assert relay.deliver_due() == 1

    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.FAILED
    assert status.detail == reason
    assert _outcomes(relay, distribution_id) == [Outcome.UNREACHABLE]
    assert sum(op.requests for op in sims.operators.values()) == 0


def test_operator_5xx_three_times_then_recovers_delivers_exactly_once(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    policy = DeliveryPolicy(backoff_base=dt.timedelta(seconds=5), backoff_max=dt.timedelta(seconds=600))
    relay = make_relay(db_url, policy=policy)
    clock = make_relay.clock
    kivra = sims.operators["kivra"]
    kivra.behave(http_status=503, times=3)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    for failures in (1, 2, 3):
        assert relay.deliver_due() == 1
        assert relay.check_distribution_status(distribution_id).state is DistributionState.PENDING
        wait = policy.backoff(failures)
        [queue] = [q for q in relay.operator_queues() if q.operator_id == KIVRA_ID]
        assert queue.next_attempt_at == clock.now + wait
        assert queue.consecutive_failures == failures
        assert relay.deliver_due() == 0  # nothing is due before the backoff has passed
        clock.advance(seconds=wait.total_seconds())

    assert relay.deliver_due() == 1
    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.DELIVERED
    assert status.attempts == 4
    assert kivra.requests == 4
    assert len(kivra.accepted) == 1
    detail = relay.distribution_detail(distribution_id)
    assert [a.outcome for a in detail.attempts] == [Outcome.TRANSIENT] * 3 + [Outcome.DELIVERED]
    assert [a.http_status for a in detail.attempts] == [503, 503, 503, 200]
    [queue] = [q for q in relay.operator_queues() if q.operator_id == KIVRA_ID]
    assert queue.consecutive_failures == 0
    assert queue.next_attempt_at is None


def test_a_failing_operator_holds_only_its_own_queue(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url)
    kivra, mmp = sims.operators["kivra"], sims.operators["mmp"]
    kivra.behave(http_status=502)
    first = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))
    assert relay.deliver_due() == 1  # kivra fails: its queue goes into backoff
    second = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))
    to_mmp = relay.distribute_secure(sign(sender, MMP_RECIPIENT))

    relay.deliver_due()

    assert relay.check_distribution_status(to_mmp).state is DistributionState.DELIVERED
    assert len(mmp.accepted) == 1
    assert kivra.requests == 1  # the second kivra letter waited in kivra's queue without a call
    second_status = relay.check_distribution_status(second)
    assert second_status.state is DistributionState.PENDING
    assert second_status.operator_id == KIVRA_ID
    [queue] = [q for q in relay.operator_queues() if q.operator_id == KIVRA_ID]
    assert queue.pending == 2
    assert queue.next_attempt_at is not None

    kivra.behave()
    make_relay.clock.advance(seconds=10)
    assert relay.deliver_due() == 2
    assert relay.check_distribution_status(first).state is DistributionState.DELIVERED
    assert relay.check_distribution_status(second).state is DistributionState.DELIVERED
    assert len(kivra.accepted) == 2


def test_operator_fault_fails_with_the_operators_code_and_description(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url)
    sims.operators["kivra"].behave(fault=(5003, "Mottagarens brevlåda är spärrad"), times=1)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    relay.deliver_due()

    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.FAILED
    assert "5003" in status.detail
    assert "Mottagarens brevlåda är spärrad" in status.detail
    assert _outcomes(relay, distribution_id) == [Outcome.FAULT]


def test_duplicate_fault_without_an_unknown_earlier_attempt_is_a_failure(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    # The operator already holds ANOTHER letter with this message id: nothing of ours may have reached it.
    relay = make_relay(sqlite_url)
    sims.operators["kivra"].behave(fault=(5100, "Meddelandet finns redan"), times=1)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    relay.deliver_due()

    assert relay.check_distribution_status(distribution_id).state is DistributionState.FAILED
    assert _outcomes(relay, distribution_id) == [Outcome.DUPLICATE]


def test_crash_after_the_operator_accepted_gives_one_copy_and_delivered(
    make_relay: RelayFactory, db_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(db_url, transport=lambda inner: AfterCall(inner, _Crash()))
    clock = make_relay.clock
    kivra = sims.operators["kivra"]
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    with pytest.raises(_Crash):
        relay.deliver_due()

    assert len(kivra.accepted) == 1
    assert relay.check_distribution_status(distribution_id).state is DistributionState.PENDING
    [queue] = [q for q in relay.operator_queues() if q.operator_id == KIVRA_ID]
    assert queue.in_flight == 1
    assert relay.deliver_due() == 0  # the dead worker's lease still holds the letter

    clock.advance(seconds=relay.policy.call_lease.total_seconds() + 1)
    assert relay.deliver_due() == 1

    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.DELIVERED
    assert status.detail.startswith(f"Levererad till {KIVRA_NAME}")
    assert len(kivra.accepted) == 1  # exactly one stored copy
    assert kivra.requests == 2
    assert _outcomes(relay, distribution_id) == [None, Outcome.DUPLICATE]


def test_lost_answer_then_duplicate_counts_as_delivered(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(
        sqlite_url, transport=lambda inner: AfterCall(inner, httpx.ReadTimeout("svaret kom bort"))
    )
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    relay.deliver_due()
    [attempt] = relay.distribution_detail(distribution_id).attempts
    assert attempt.outcome == Outcome.TRANSIENT
    assert attempt.outcome_unknown
    make_relay.clock.advance(seconds=relay.policy.backoff(1).total_seconds())
    relay.deliver_due()

    assert relay.check_distribution_status(distribution_id).state is DistributionState.DELIVERED
    assert len(sims.operators["kivra"].accepted) == 1


def test_gives_up_after_max_attempts(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url, policy=DeliveryPolicy(max_attempts=3))
    sims.operators["kivra"].behave(http_status=500)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    for _ in range(5):
        relay.deliver_due()
        make_relay.clock.advance(seconds=relay.policy.backoff_max.total_seconds())

    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.FAILED
    assert status.detail.startswith("Kunde inte levereras efter 3 försök")
    assert sims.operators["kivra"].requests == 3


def test_gives_up_after_max_age(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url, policy=DeliveryPolicy(max_age=dt.timedelta(hours=1)))
    sims.operators["kivra"].behave(http_status=503)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))
    relay.deliver_due()
    make_relay.clock.advance(hours=2)

    relay.deliver_due()

    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.FAILED
    assert status.detail == "Kunde inte levereras inom 1 timmar"
    assert sims.operators["kivra"].requests == 1


def test_far_outage_is_retried(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url)
    sims.far.fail_with(503)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))

    relay.deliver_due()
    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.PENDING
    assert "FaR" in status.detail
    assert sims.operators["kivra"].requests == 0

    sims.far.fail_with(None)
    make_relay.clock.advance(seconds=relay.policy.backoff(1).total_seconds())
    relay.deliver_due()
    assert relay.check_distribution_status(distribution_id).state is DistributionState.DELIVERED
    assert _outcomes(relay, distribution_id) == [Outcome.FAR_UNAVAILABLE, Outcome.DELIVERED]


def test_a_letter_whose_delivery_may_have_happened_is_never_failed_only_retried(
    make_relay: RelayFactory, sqlite_url: str, sims: SandboxWorld, sender: SigningIdentity
) -> None:
    # 504 comes from a gateway that may have passed the letter on: the outcome is unknown. Failing it would
    # make the sender print it too, so the relay keeps trying past max_attempts until the operator answers.
    relay = make_relay(sqlite_url, policy=DeliveryPolicy(max_attempts=2))
    kivra = sims.operators["kivra"]
    kivra.behave(http_status=504)
    distribution_id = relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))
    for _ in range(4):
        relay.deliver_due()
        make_relay.clock.advance(seconds=relay.policy.backoff_max.total_seconds())
    status = relay.check_distribution_status(distribution_id)
    assert status.state is DistributionState.PENDING
    assert "kan ha levererat" in status.detail
    assert kivra.requests == 4

    kivra.behave()
    relay.deliver_due()
    assert relay.check_distribution_status(distribution_id).state is DistributionState.DELIVERED
    assert len(kivra.accepted) == 1
