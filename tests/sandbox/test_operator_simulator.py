"""The mailbox-operator simulator as a real HTTPS service: it stores what verifies and refuses the rest."""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from formedlare.https_server import RunningServer, serve_in_thread
from formedlare.mm import (
    SignatureProblem,
    SigningIdentity,
    TrustPolicy,
    deliver_secure_request,
    parse_deliver_secure_response,
    parse_fault,
    sign_delivery,
)
from kanalvaxel.sandbox.operator_simulator import (
    DELIVERY_SIGNATURE_ERROR_CODE,
    DUPLICATE_ERROR_CODE,
    MALFORMED_ERROR_CODE,
    SCHEMA_ERROR_CODE,
    SEAL_SIGNATURE_ERROR_CODE,
    OperatorSimulator,
)
from tests.sandbox._support import (
    RECIPIENT_ID,
    SENDER_ID,
    SOAP_HEADERS,
    content,
    foreign_identity,
    identity,
    mtls_client,
    sealed,
    server_tls,
    signed_and_sealed,
)


class Operator:
    def __init__(self, sim: OperatorSimulator, server: RunningServer, client: httpx.Client) -> None:
        self.sim = sim
        self.server = server
        self.client = client
        self.url = f"{server.url}/service/v3"

    def post(self, envelope: bytes) -> httpx.Response:
        return self.client.post(self.url, content=envelope, headers=SOAP_HEADERS)

    def deliver(self, sealed_delivery: bytes) -> httpx.Response:
        return self.post(deliver_secure_request(sealed_delivery))


def _start(
    certs: Path, clock: Callable[[], dt.datetime] | None = None
) -> tuple[OperatorSimulator, RunningServer]:
    sim = OperatorSimulator(
        "Kivra (simulator)", "165568402266", TrustPolicy.from_pem_files(certs / "ca.pem"), clock=clock
    )
    return sim, serve_in_thread(sim.app, server_tls(certs, "operator-kivra"), name="operator-kivra")


@pytest.fixture
def operator(dev_certs: Path) -> Iterator[Operator]:
    sim, server = _start(dev_certs)
    with server, mtls_client(dev_certs, "relay-client") as client:
        yield Operator(sim, server, client)


@pytest.fixture(scope="module")
def sender(dev_certs: Path) -> SigningIdentity:
    return identity(dev_certs, "sender")


@pytest.fixture(scope="module")
def relay(dev_certs: Path) -> SigningIdentity:
    return identity(dev_certs, "relay")


def _fault_code(response: httpx.Response) -> int | None:
    assert response.status_code == 500, response.text
    fault = parse_fault(response.content)
    assert fault is not None
    assert fault.call_id is not None
    assert 20 <= len(fault.call_id) <= 50
    return fault.error_code


def test_a_valid_delivery_is_accepted_stored_and_listed(
    operator: Operator, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    envelope = deliver_secure_request(signed_and_sealed(sender, relay, "msg-1"))
    response = operator.post(envelope)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    trans_id, delivered = parse_deliver_secure_response(response.content)
    assert delivered is True
    [stored] = operator.sim.accepted
    assert (stored.message_id, stored.sender_id, stored.recipient_id) == ("msg-1", SENDER_ID, RECIPIENT_ID)
    assert stored.subject == "Beslut om bygglov"
    assert stored.trans_id == trans_id
    assert stored.raw == envelope
    assert stored.seal_organisation_number == "2120000019"
    assert stored.sender_organisation_number == "2120000001"
    assert all(a.endswith("rsa-sha256") for a in stored.signature_algorithms)
    assert operator.sim.rejected == []
    listing = operator.client.get(f"{operator.server.url}/_simulator/messages").json()
    assert listing["requests"] == 1
    assert [m["message_id"] for m in listing["accepted"]] == ["msg-1"]
    assert "raw" not in listing["accepted"][0]
    assert "Hej" not in str(listing)  # no content bodies


def test_the_same_message_id_again_is_refused_as_duplicate(
    operator: Operator, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    assert operator.deliver(signed_and_sealed(sender, relay, "dup-1")).status_code == 200
    # A fresh signature and seal over the same message id: still the same message.
    response = operator.deliver(signed_and_sealed(sender, relay, "dup-1"))
    assert _fault_code(response) == DUPLICATE_ERROR_CODE
    assert len(operator.sim.accepted) == 1
    assert [r.reason for r in operator.sim.rejected] == [DUPLICATE_ERROR_CODE]


def _seal_certificate_swapped(sealed_delivery: bytes) -> bytes:
    """The seal's KeyInfo certificate replaced by the sender's (valid, trusted, but not the sealing key)."""
    texts = list(re.finditer(rb"<X509Certificate>([^<]*)</X509Certificate>", sealed_delivery))
    assert len(texts) == 2
    inner, outer = texts
    assert inner.group(1) != outer.group(1)
    return sealed_delivery[: outer.start(1)] + inner.group(1) + sealed_delivery[outer.end(1) :]


def test_refusals(
    operator: Operator, sender: SigningIdentity, relay: SigningIdentity, dev_certs: Path, tmp_path: Path
) -> None:
    good = signed_and_sealed(sender, relay)
    today = dt.date.today().isoformat().encode()
    cases: dict[str, tuple[bytes, int, SignatureProblem | None]] = {
        "byte in Delivery": (
            deliver_secure_request(good.replace(b"om bygglov", b"om bygglow")),
            SEAL_SIGNATURE_ERROR_CODE,
            SignatureProblem.DIGEST_MISMATCH,
        ),
        "Seal ReceivedTime": (
            deliver_secure_request(good.replace(b">" + today + b"<", b">2001-01-01<")),
            SEAL_SIGNATURE_ERROR_CODE,
            SignatureProblem.DIGEST_MISMATCH,
        ),
        "Seal SignaturesOK": (
            deliver_secure_request(good.replace(b">true</SignaturesOK>", b">false</SignaturesOK>")),
            SEAL_SIGNATURE_ERROR_CODE,
            SignatureProblem.DIGEST_MISMATCH,
        ),
        "seal certificate swapped": (
            deliver_secure_request(_seal_certificate_swapped(good)),
            SEAL_SIGNATURE_ERROR_CODE,
            SignatureProblem.SIGNATURE_MISMATCH,
        ),
        "untrusted CA": (
            deliver_secure_request(signed_and_sealed(sender, foreign_identity(tmp_path))),
            SEAL_SIGNATURE_ERROR_CODE,
            SignatureProblem.CERTIFICATE_UNTRUSTED,
        ),
        "schema violation": (
            deliver_secure_request(good.replace(b"</SignaturesOK>", b"</SignaturesOK><Extra/>", 1)),
            SCHEMA_ERROR_CODE,
            None,
        ),
        "not XML": (b"<soap:Envelope", MALFORMED_ERROR_CODE, None),
    }
    # Tamper inside the signed delivery, then seal it: the seal verifies, the sender's signature must not.
    signed = sign_delivery(sender, content())
    tampered_signed = signed.replace(base64.b64encode(b"Hej!"), base64.b64encode(b"Hej?"))
    assert tampered_signed != signed
    cases["sender signature broken under a valid seal"] = (
        deliver_secure_request(sealed(sender, relay, tampered_signed)),
        DELIVERY_SIGNATURE_ERROR_CODE,
        SignatureProblem.DIGEST_MISMATCH,
    )
    for name, (envelope, code, problem) in cases.items():
        before = len(operator.sim.rejected)
        response = operator.post(envelope)
        assert _fault_code(response) == code, name
        rejection = operator.sim.rejected[before]
        assert rejection.reason == code, name
        if problem is not None:
            assert rejection.detail.startswith(str(problem)), (name, rejection.detail)
    assert operator.sim.accepted == []
    assert len(operator.sim.rejected) == len(cases)


def test_expired_certificates_are_refused(
    dev_certs: Path, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    sim, server = _start(dev_certs, clock=lambda: dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    with server, mtls_client(dev_certs, "relay-client") as client:
        envelope = deliver_secure_request(signed_and_sealed(sender, relay))
        response = client.post(f"{server.url}/service/v3", content=envelope, headers=SOAP_HEADERS)
    assert _fault_code(response) == SEAL_SIGNATURE_ERROR_CODE
    assert sim.rejected[0].detail.startswith(str(SignatureProblem.CERTIFICATE_EXPIRED))
    assert sim.accepted == []


def test_http_errors_for_a_number_of_requests_then_service(
    operator: Operator, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    operator.sim.behave(http_status=503, times=2)
    envelope = deliver_secure_request(signed_and_sealed(sender, relay, "retry-1"))
    assert [operator.post(envelope).status_code for _ in range(2)] == [503, 503]
    assert operator.sim.accepted == []
    assert operator.post(envelope).status_code == 200
    assert [a.message_id for a in operator.sim.accepted] == ["retry-1"]
    assert operator.sim.requests == 3


def test_a_configured_fault_is_answered_once(
    operator: Operator, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    operator.sim.behave(fault=(5005, "Tillfälligt fel hos operatören"), times=1)
    envelope = deliver_secure_request(signed_and_sealed(sender, relay))
    response = operator.post(envelope)
    assert _fault_code(response) == 5005
    fault = parse_fault(response.content)
    assert fault is not None
    assert fault.description == "Tillfälligt fel hos operatören"
    assert operator.post(envelope).status_code == 200


def test_behaviour_can_be_set_over_http(
    operator: Operator, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    control = f"{operator.server.url}/_simulator/behaviour"

    def deliver() -> httpx.Response:
        return operator.deliver(signed_and_sealed(sender, relay))

    assert operator.client.post(control, json={"http_status": 502, "times": 1}).status_code == 200
    # A refused update leaves the behaviour in force as it was.
    assert operator.client.post(control, json={"http_status": "many"}).status_code == 422
    assert [deliver().status_code for _ in range(2)] == [502, 200]
    fault = {"fault": {"code": 5005, "description": "Nej"}}
    assert operator.client.post(control, json=fault).status_code == 200
    assert _fault_code(deliver()) == 5005
    assert _fault_code(deliver()) == 5005  # no `times`: until told otherwise
    assert operator.client.post(control, json={}).status_code == 200
    assert deliver().status_code == 200
    assert len(operator.sim.accepted) == 2


def test_delayed_requests_overlap(
    dev_certs: Path, operator: Operator, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    envelopes = [deliver_secure_request(signed_and_sealed(sender, relay)) for _ in range(4)]
    operator.sim.behave(delay=0.4)

    def post(envelope: bytes) -> int:
        with mtls_client(dev_certs, "relay-client") as client:
            return client.post(operator.url, content=envelope, headers=SOAP_HEADERS).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(post, envelopes))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 4
    assert operator.sim.max_concurrent >= 2
    assert elapsed < 4 * 0.4  # serial answers would take at least 1.6 s
    assert len(operator.sim.accepted) == 4


def test_a_client_without_certificate_is_refused_at_tls(operator: Operator, dev_certs: Path) -> None:
    with mtls_client(dev_certs, None) as anonymous, pytest.raises(httpx.TransportError):
        anonymous.post(operator.url, content=b"<x/>", headers=SOAP_HEADERS)
    assert operator.sim.requests == 0


def test_memory_keeps_only_the_latest_deliveries_while_duplicates_are_still_refused(
    dev_certs: Path, sender: SigningIdentity, relay: SigningIdentity
) -> None:
    sim = OperatorSimulator(
        "Kivra (simulator)", "165568402266", TrustPolicy.from_pem_files(dev_certs / "ca.pem"), history=2
    )
    server = serve_in_thread(sim.app, server_tls(dev_certs, "operator-kivra"), name="operator-kivra")
    with server, mtls_client(dev_certs, "relay-client") as client:
        operator = Operator(sim, server, client)
        for n in range(3):
            response = operator.post(deliver_secure_request(signed_and_sealed(sender, relay, f"msg-{n}")))
            assert response.status_code == 200, response.text
        assert [a.message_id for a in sim.accepted] == ["msg-1", "msg-2"]  # the latest two
        again = operator.post(deliver_secure_request(signed_and_sealed(sender, relay, "msg-0")))
        assert _fault_code(again) is not None  # forgotten from the list, still known as delivered
        assert [a.message_id for a in sim.accepted] == ["msg-1", "msg-2"]
    with pytest.raises(ValueError, match="history"):
        OperatorSimulator("x", "165568402266", sim.trust, history=0)
