"""far_client against the real FaR simulator over mutual TLS on loopback."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests

from far_client import (
    AccountType,
    FarClient,
    FarError,
    FarFaultError,
    FarResponseError,
    FarTimeoutError,
    FarTransportError,
    InvalidIdentifierError,
)
from kanalvaxel.sandbox.far_simulator import default_registry
from tests.far.conftest import Far, StepClock, personnummer, with_settings

SENDER = "2120000001"
MAILBOX, MAILBOX_MMP, PENDING, OPTED_OUT = "197001011233", "198112189876", "199001012385", "197505052386"
ORGANISATION, UNKNOWN = "165560000001", "200001012384"
ALL = [MAILBOX, MAILBOX_MMP, PENDING, OPTED_OUT, ORGANISATION, UNKNOWN]


def test_answers_per_field(far: Far) -> None:
    with FarClient(far.settings) as client:
        answers = client.is_reachable(SENDER, ALL)
    assert list(answers) == ALL
    assert far.simulator.stats.calls == 1

    mailbox = answers[MAILBOX]
    assert mailbox.account.type is AccountType.SECURE
    assert mailbox.has_mailbox
    assert mailbox.deliverable
    assert mailbox.sender_accepted
    supplier = mailbox.account.service_supplier
    assert supplier is not None
    assert (supplier.id, supplier.name) == ("165568402266", "Kivra (simulator)")
    assert supplier.service_address == "https://127.0.0.1:8441/service/v3"
    assert supplier.ui_address == "https://kivra.invalid/"
    assert supplier.logo is None
    assert mailbox.account.last_registration == datetime(2024, 1, 15, 8, 30, tzinfo=UTC)

    mmp = answers[MAILBOX_MMP].account.service_supplier
    assert mmp is not None
    assert mmp.id == "162021004748"
    assert mmp.ui_address is None
    assert answers[MAILBOX_MMP].deliverable

    pending = answers[PENDING]
    assert pending.account.pending
    assert pending.has_mailbox
    assert not pending.deliverable

    opted_out = answers[OPTED_OUT]
    assert opted_out.has_mailbox
    assert not opted_out.sender_accepted
    assert not opted_out.deliverable
    assert opted_out.last_sender_accept_change is not None

    assert answers[ORGANISATION].deliverable
    assert answers[ORGANISATION].account.recipient_id == ORGANISATION

    unknown = answers[UNKNOWN]
    assert unknown.account.type is AccountType.NOT
    assert unknown.account.service_supplier is None
    assert unknown.account.last_registration is None
    assert not unknown.has_mailbox
    assert not unknown.sender_accepted
    assert not unknown.deliverable


def test_opt_out_is_per_sender_and_16_prefix_is_the_same_sender(far: Far) -> None:
    with FarClient(with_settings(far, cache_ttl=timedelta(0))) as client:
        assert not client.is_reachable("162120000001", [OPTED_OUT])[OPTED_OUT].sender_accepted
        assert client.is_reachable("2021004748", [OPTED_OUT])[OPTED_OUT].deliverable


def test_is_registered_says_nothing_about_the_sender(far: Far) -> None:
    with FarClient(far.settings) as client:
        accounts = client.is_registered([OPTED_OUT, PENDING, UNKNOWN])
    assert accounts[OPTED_OUT].type is AccountType.SECURE
    assert not accounts[OPTED_OUT].pending
    assert accounts[PENDING].pending
    assert accounts[UNKNOWN].type is AccountType.NOT
    assert accounts[UNKNOWN].service_supplier is None
    assert far.simulator.stats.operations == ["isRegistered"]


def test_2500_ids_take_three_calls_of_at_most_1000(far: Far) -> None:
    ids = [personnummer(n) for n in range(2500)]
    with FarClient(far.settings) as client:
        answers = client.is_reachable(SENDER, ids + ids[:10])  # duplicates are asked once
    assert list(answers) == ids
    assert all(a.account.type is AccountType.NOT for a in answers.values())
    assert far.simulator.stats.calls == 3
    assert sorted(far.simulator.stats.ids_per_call) == [500, 1000, 1000]


def test_concurrency_is_bounded(far: Far) -> None:
    far.simulator.delay(0.15)
    ids = [personnummer(n) for n in range(100)]
    with FarClient(with_settings(far, chunk_size=10, max_concurrency=3)) as client:
        assert len(client.is_reachable(SENDER, ids)) == 100
    assert far.simulator.stats.calls == 10
    # More than one at once (the pool works) but never more than the limit.
    assert far.simulator.stats.max_in_flight == 3


def test_second_lookup_comes_from_the_cache_except_pending(far: Far) -> None:
    with FarClient(far.settings) as client:
        first = client.is_reachable(SENDER, ALL)
        far.simulator.reset_stats()
        second = client.is_reachable(SENDER, ALL)
        assert second == first
        # The pending account is asked again, alone; every other answer came from the cache.
        assert far.simulator.stats.ids_per_call == [1]
        far.simulator.reset_stats()
        client.is_reachable(SENDER, [MAILBOX, OPTED_OUT])
        assert far.simulator.stats.calls == 0
        # Another sender is another cache key.
        client.is_reachable("2021004748", [MAILBOX])
        assert far.simulator.stats.calls == 1


def test_cache_expires_after_ttl(far: Far) -> None:
    clock = StepClock()
    with FarClient(with_settings(far, cache_ttl=timedelta(minutes=5)), clock=clock) as client:
        client.is_reachable(SENDER, [MAILBOX])
        clock.advance(timedelta(minutes=4, seconds=59))
        client.is_reachable(SENDER, [MAILBOX])
        assert far.simulator.stats.calls == 1
        clock.advance(timedelta(seconds=1))
        client.is_reachable(SENDER, [MAILBOX])
        assert far.simulator.stats.calls == 2


def test_bypass_asks_again_and_refreshes(far: Far) -> None:
    with FarClient(far.settings) as client:
        assert client.is_reachable(SENDER, [MAILBOX])[MAILBOX].sender_accepted
        # The recipient opts out; the cache still says yes until bypassed, then the new answer sticks.
        registry = default_registry()
        entry = registry.recipients[MAILBOX]
        registry.recipients[MAILBOX] = replace(entry, opted_out_senders=frozenset({SENDER}))
        far.simulator.reload(registry)
        assert client.is_reachable(SENDER, [MAILBOX])[MAILBOX].sender_accepted
        assert not client.is_reachable(SENDER, [MAILBOX], bypass_cache=True)[MAILBOX].sender_accepted
        assert not client.is_reachable(SENDER, [MAILBOX])[MAILBOX].sender_accepted
    assert far.simulator.stats.calls == 2


def test_zero_ttl_disables_the_cache(far: Far) -> None:
    with FarClient(with_settings(far, cache_ttl=timedelta(0))) as client:
        client.is_reachable(SENDER, [MAILBOX])
        client.is_reachable(SENDER, [MAILBOX])
    assert far.simulator.stats.calls == 2


def test_fault_is_mapped_not_retried_not_cached(far: Far) -> None:
    far.simulator.fail_with("fault")
    with FarClient(with_settings(far, retries=3)) as client:
        with pytest.raises(FarFaultError) as caught:
            client.is_reachable(SENDER, [MAILBOX])
        assert far.simulator.stats.calls == 1
        fault = caught.value
        assert fault.error_code == 5000
        assert fault.description == "Tekniskt fel i FaR (simulerat)"
        assert fault.call_id is not None
        assert 20 <= len(fault.call_id) <= 50
        assert not fault.retryable
        assert isinstance(fault, FarError)
        assert fault.__cause__ is not None
        far.simulator.fail_with(None)
        assert client.is_reachable(SENDER, [MAILBOX])[MAILBOX].deliverable
        assert far.simulator.stats.calls == 2


def test_http_500_is_retried_then_raised(far: Far) -> None:
    far.simulator.fail_with(500)
    with FarClient(with_settings(far, retries=2)) as client, pytest.raises(FarTransportError) as caught:
        client.is_reachable(SENDER, [MAILBOX])
    assert far.simulator.stats.calls == 3
    assert caught.value.status_code == 500
    assert caught.value.retryable
    assert not isinstance(caught.value, FarTimeoutError)


def test_http_404_is_not_retried(far: Far) -> None:
    far.simulator.fail_with(404)
    with FarClient(with_settings(far, retries=2)) as client, pytest.raises(FarTransportError) as caught:
        client.is_registered([MAILBOX])
    assert far.simulator.stats.calls == 1
    assert caught.value.status_code == 404
    assert not caught.value.retryable


def test_transient_failure_recovers_within_retries(far: Far) -> None:
    far.simulator.fail_with(503)
    with FarClient(with_settings(far, retries=2, cache_ttl=timedelta(0))) as client:
        with pytest.raises(FarTransportError):
            client.is_reachable(SENDER, [MAILBOX])
        far.simulator.reset_stats()
        far.simulator.fail_with(None)
        assert client.is_reachable(SENDER, [MAILBOX])[MAILBOX].deliverable
        assert far.simulator.stats.calls == 1


def test_read_timeout_is_retried_then_raised(far: Far) -> None:
    far.simulator.delay(0.6)
    settings = with_settings(far, read_timeout=0.2, retries=1)
    with FarClient(settings) as client, pytest.raises(FarTimeoutError) as caught:
        client.is_reachable(SENDER, [MAILBOX])
    assert far.simulator.stats.calls == 2
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, requests.exceptions.Timeout)


def test_refused_connection_is_a_transport_error(far: Far) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = with_settings(far, url=f"https://127.0.0.1:{port}/Recipient/v3", retries=1)
    with FarClient(settings) as client, pytest.raises(FarTransportError) as caught:
        client.is_reachable(SENDER, [MAILBOX])
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, requests.exceptions.ConnectionError)


def test_client_without_certificate_is_refused(far: Far) -> None:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(far.settings.ca_bundle)
    with (
        FarClient(with_settings(far, retries=0), session=session) as client,
        pytest.raises(FarTransportError),
    ):
        client.is_reachable(SENDER, [MAILBOX])
    session.close()
    assert far.simulator.stats.calls == 0


def test_answer_that_is_not_soap_is_a_response_error(far: Far) -> None:
    far.simulator.fail_with(200)  # 200 with a plain-text body
    with FarClient(with_settings(far, retries=2)) as client, pytest.raises(FarResponseError):
        client.is_reachable(SENDER, [MAILBOX])
    assert far.simulator.stats.calls == 1


@pytest.mark.parametrize("sender", ["212000000", "172120000001", "21200000011", "2120-000001", ""])
def test_malformed_sender_is_refused_before_any_call(far: Far, sender: str) -> None:
    with FarClient(far.settings) as client, pytest.raises(InvalidIdentifierError):
        client.is_reachable(sender, [MAILBOX])
    assert far.simulator.stats.calls == 0


@pytest.mark.parametrize(
    "rid", ["7001011233", "19700101-1233", "191913011233", "2120000001", "1970010112330"]
)
def test_malformed_recipient_is_refused_before_any_call(far: Far, rid: str) -> None:
    with FarClient(far.settings) as client:
        with pytest.raises(InvalidIdentifierError) as caught:
            client.is_reachable(SENDER, [MAILBOX, rid])
        # Also a ValueError, for callers that treat bad arguments generically.
        with pytest.raises(ValueError, match="r1:RecipientId"):
            client.is_registered([rid])
    assert rid not in str(caught.value)  # identity numbers stay out of error texts
    assert far.simulator.stats.calls == 0


def test_no_ids_no_call(far: Far) -> None:
    with FarClient(far.settings) as client:
        assert client.is_reachable(SENDER, []) == {}
    assert far.simulator.stats.calls == 0


def test_a_failing_chunk_fails_the_lookup_and_good_chunks_stay_cached(far: Far) -> None:
    ids = [personnummer(n) for n in range(30)]
    with FarClient(with_settings(far, chunk_size=10, max_concurrency=2, retries=0)) as client:
        client.is_reachable(SENDER, ids[:10])
        far.simulator.fail_with("fault")
        with pytest.raises(FarFaultError):
            client.is_reachable(SENDER, ids)
        # The first ten came from the cache; only the other two chunks were asked (and failed).
        assert far.simulator.stats.ids_per_call == [10, 10, 10]
        far.simulator.fail_with(None)
        far.simulator.reset_stats()
        assert len(client.is_reachable(SENDER, ids)) == 30
        assert sorted(far.simulator.stats.ids_per_call) == [10, 10]
