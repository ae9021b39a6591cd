"""The relay as a real HTTPS service (mutual TLS on loopback), driven through RemoteRelay, delivering to the
operator simulators with the FaR simulator routing; and `formedlare serve` as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from lxml import etree

from formedlare.api import (
    DeliveryRefusedError,
    DistributionState,
    RelayUnavailableError,
    UnknownDistributionError,
)
from formedlare.app import create_app
from formedlare.client import (
    MALFORMED_REQUEST_ERROR_CODE,
    REFUSAL_ERROR_CODES,
    UNKNOWN_OPERATION_ERROR_CODE,
    RemoteRelay,
)
from formedlare.https_server import RunningServer, serve_in_thread
from formedlare.mm import SigningIdentity, parse_fault, sign_delivery
from formedlare.relay import Relay
from formedlare.settings import FarConnection, RelaySettings
from kanalvaxel.sandbox.world import SandboxWorld, start_world
from tests.sandbox._support import (
    RECIPIENT_ID,
    SOAP_HEADERS,
    content,
    foreign_identity,
    identity,
    mtls_client,
    server_tls,
)

MMP_RECIPIENT = "198112189876"  # routed to the mmp simulator by the sandbox registry


@dataclass
class Service:
    world: SandboxWorld
    relay: Relay
    server: RunningServer
    remote: RemoteRelay
    http: httpx.Client

    @property
    def soap_url(self) -> str:
        return f"{self.server.url}/Message/v3"

    def get(self, path: str) -> httpx.Response:
        return self.http.get(f"{self.server.url}{path}")


def _relay_settings(certs: Path, far_url: str, database: Path) -> RelaySettings:
    return RelaySettings(
        database_url=f"sqlite:///{database}",
        seal_certificate=certs / "relay.pem",
        seal_key=certs / "relay.key",
        trust_anchors=[certs / "ca.pem"],
        relayed_senders=["2120000001"],
        far=FarConnection(
            url=far_url,
            client_certificate=certs / "relay-client.pem",
            client_key=certs / "relay-client.key",
            ca_bundle=certs / "ca.pem",
        ),
        client_certificate=certs / "relay-client.pem",
        client_key=certs / "relay-client.key",
        operator_ca_bundle=certs / "ca.pem",
    )


@pytest.fixture(scope="module")
def service(dev_certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    world = start_world(dev_certs)
    try:
        relay = Relay.from_settings(
            _relay_settings(dev_certs, world.far_url, tmp_path_factory.mktemp("relay") / "formedlare.db")
        )
        with (
            serve_in_thread(create_app(relay), server_tls(dev_certs), name="formedlare") as server,
            RemoteRelay(
                f"{server.url}/Message/v3",
                client_certificate=dev_certs / "client.pem",
                client_key=dev_certs / "client.key",
                ca_bundle=dev_certs / "ca.pem",
            ) as remote,
            mtls_client(dev_certs, "client") as http,
        ):
            yield Service(world, relay, server, remote, http)
        relay.close()
    finally:
        world.stop()


@pytest.fixture(scope="module")
def sender(dev_certs: Path) -> SigningIdentity:
    return identity(dev_certs, "sender")


def test_delivered_end_to_end_with_status_over_soap_and_json(
    service: Service, sender: SigningIdentity
) -> None:
    signed = sign_delivery(sender, content("e2e-1"))
    distribution_id = service.remote.distribute_secure(signed)
    assert service.remote.check_distribution_status(distribution_id).state is DistributionState.PENDING
    # Handed over again (a retry after a lost answer): the same distribution, delivered once.
    assert service.remote.distribute_secure(signed) == distribution_id

    assert service.relay.deliver_due() >= 1

    status = service.remote.check_distribution_status(distribution_id)
    assert status.state is DistributionState.DELIVERED
    kivra, mmp = service.world.operators["kivra"], service.world.operators["mmp"]
    assert [a.message_id for a in kivra.accepted if a.message_id == "e2e-1"] == ["e2e-1"]
    assert all(a.message_id != "e2e-1" for a in mmp.accepted)
    # The operator verified the seal made by the relay and the sender's signature inside it.
    stored = next(a for a in kivra.accepted if a.message_id == "e2e-1")
    assert (stored.seal_organisation_number, stored.sender_organisation_number) == (
        "2120000019",
        "2120000001",
    )

    detail = service.get(f"/v1/distributions/{distribution_id}").json()
    assert detail["status"]["state"] == "DELIVERED"
    assert detail["status"]["operator_name"] == "Kivra (simulator)"
    assert detail["recipient_id"] == RECIPIENT_ID
    assert [a["outcome"] for a in detail["attempts"]] == ["DELIVERED"]
    queues = {q["name"]: q for q in service.get("/v1/operators").json()}
    assert queues["Kivra (simulator)"]["pending"] == 0
    assert queues["Kivra (simulator)"]["operator_id"] == "165568402266"


def test_the_status_answer_is_the_contracts_distribution_status(
    service: Service, sender: SigningIdentity
) -> None:
    distribution_id = service.remote.distribute_secure(sign_delivery(sender, content()))
    from formedlare.mm import check_distribution_status_request, parse_check_distribution_status_response

    response = service.http.post(
        service.soap_url,
        content=check_distribution_status_request("162120000001", distribution_id),
        headers=SOAP_HEADERS,
    )
    assert response.status_code == 200
    [entry] = parse_check_distribution_status_response(response.content)
    assert (entry.recipient_id, entry.kind, entry.status) == (RECIPIENT_ID, "Digital", "Pending")
    service.relay.deliver_due()
    response = service.http.post(
        service.soap_url,
        content=check_distribution_status_request("162120000001", distribution_id),
        headers=SOAP_HEADERS,
    )
    assert parse_check_distribution_status_response(response.content)[0].status == "Delivered"


def test_refusals_are_faults_that_remote_relay_maps_and_the_json_api_lists(
    service: Service, sender: SigningIdentity, tmp_path: Path
) -> None:
    tampered = sign_delivery(sender, content("tampered-1")).replace(b"om bygglov", b"om bygglow")
    with pytest.raises(DeliveryRefusedError) as refused:
        service.remote.distribute_secure(tampered)
    assert refused.value.code == "DIGEST_MISMATCH"
    assert "ändrats" in refused.value.reason  # the relay's Swedish reason travels as the Description

    with pytest.raises(DeliveryRefusedError) as untrusted:
        service.remote.distribute_secure(sign_delivery(foreign_identity(tmp_path), content("foreign-1")))
    assert untrusted.value.code == "CERTIFICATE_UNTRUSTED"

    refusals = service.get("/v1/refusals?limit=2").json()
    assert [r["code"] for r in refusals] == ["CERTIFICATE_UNTRUSTED", "DIGEST_MISMATCH"]
    assert refusals[1]["message_ids"] == ["tampered-1"]
    assert service.get("/v1/refusals?limit=0").status_code == 422
    assert all(
        a.message_id not in ("tampered-1", "foreign-1") for a in service.world.operators["kivra"].accepted
    )


def test_a_refusal_is_a_soap_client_fault_with_our_error_code(
    service: Service, sender: SigningIdentity
) -> None:
    from formedlare.mm import distribute_secure_request

    unsigned_sender = sign_delivery(sender, content()).replace(b"om bygglov", b"om bygglow")
    response = service.http.post(
        service.soap_url, content=distribute_secure_request(unsigned_sender), headers=SOAP_HEADERS
    )
    assert response.status_code == 500
    fault = parse_fault(response.content)
    assert fault is not None
    assert fault.error_code == REFUSAL_ERROR_CODES["DIGEST_MISMATCH"]
    assert fault.call_id is not None
    assert 20 <= len(fault.call_id) <= 50
    assert b"soap:Client" in response.content


def test_malformed_and_unknown_requests_are_client_faults(service: Service) -> None:
    for body, code in (
        (b"<not-soap", MALFORMED_REQUEST_ERROR_CODE),
        (
            b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            b'<x:other xmlns:x="urn:x"/></soap:Body></soap:Envelope>',
            UNKNOWN_OPERATION_ERROR_CODE,
        ),
        (
            b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            b'<m3:distributeSecure xmlns:m3="http://minameddelanden.gov.se/schema/Message/v3"/>'
            b"</soap:Body></soap:Envelope>",
            MALFORMED_REQUEST_ERROR_CODE,
        ),
    ):
        response = service.http.post(service.soap_url, content=body, headers=SOAP_HEADERS)
        assert response.status_code == 500
        fault = parse_fault(response.content)
        assert fault is not None
        assert fault.error_code == code


def test_unknown_distribution(service: Service) -> None:
    with pytest.raises(UnknownDistributionError):
        service.remote.check_distribution_status("0f5b1f53-0000-0000-0000-000000000000")
    assert service.get("/v1/distributions/0f5b1f53-0000-0000-0000-000000000000").status_code == 404


def test_unreachable_or_failing_relay_is_unavailable(
    dev_certs: Path, service: Service, sender: SigningIdentity
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    signed = sign_delivery(sender, content())
    kivra = service.world.operators["kivra"]
    for url in (f"https://127.0.0.1:{closed_port}/Message/v3", service.world.operator_urls["kivra"]):
        with RemoteRelay(
            url,
            client_certificate=dev_certs / "client.pem",
            client_key=dev_certs / "client.key",
            ca_bundle=dev_certs / "ca.pem",
            connect_timeout=2,
        ) as remote:
            # The operator simulator is a real HTTPS server answering 503 here, as an overloaded relay would.
            kivra.behave(http_status=503, times=2)
            with pytest.raises(RelayUnavailableError):
                remote.distribute_secure(signed)
            with pytest.raises(RelayUnavailableError):
                remote.check_distribution_status("x")
    kivra.behave()


def test_wsdl_and_its_schemas_are_served(service: Service) -> None:
    response = service.get("/Message/v3?wsdl")
    assert response.status_code == 200
    wsdl = etree.fromstring(response.content, etree.XMLParser(resolve_entities=False, no_network=True))
    [address] = wsdl.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == service.soap_url
    # Every schema the WSDL imports, and every schema those import, can be fetched from the service.
    pending = [(service.soap_url, wsdl)]
    fetched: set[str] = set()
    while pending:
        base, document = pending.pop()
        for element in document.iter():
            location = element.get("schemaLocation") if isinstance(element.tag, str) else None
            if location is None:
                continue
            url = urljoin(base, location)
            if url in fetched:
                continue
            answer = service.http.get(url)
            assert answer.status_code == 200, url
            fetched.add(url)
            pending.append((url, etree.fromstring(answer.content)))
    assert f"{service.server.url}/xsd/Message_v3.xsd" in fetched
    assert service.get("/xsd/..%2Fwsdl%2FMessage.wsdl").status_code == 404
    assert service.get("/healthz").json() == {"status": "ok"}


# ---------------------------------------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env(certs: Path, far_url: str, database: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORMEDLARE_")}
    env.update(
        {
            "FORMEDLARE_DATABASE_URL": f"sqlite:///{database}",
            "FORMEDLARE_SEAL_CERTIFICATE": str(certs / "relay.pem"),
            "FORMEDLARE_SEAL_KEY": str(certs / "relay.key"),
            "FORMEDLARE_TRUST_ANCHORS": f'["{certs / "ca.pem"}"]',
            "FORMEDLARE_RELAYED_SENDERS": '["2120000001"]',
            "FORMEDLARE_FAR__URL": far_url,
            "FORMEDLARE_FAR__CLIENT_CERTIFICATE": str(certs / "relay-client.pem"),
            "FORMEDLARE_FAR__CLIENT_KEY": str(certs / "relay-client.key"),
            "FORMEDLARE_FAR__CA_BUNDLE": str(certs / "ca.pem"),
            "FORMEDLARE_CLIENT_CERTIFICATE": str(certs / "relay-client.pem"),
            "FORMEDLARE_CLIENT_KEY": str(certs / "relay-client.key"),
            "FORMEDLARE_OPERATOR_CA_BUNDLE": str(certs / "ca.pem"),
            "FORMEDLARE_HTTPS__PORT": str(port),
            "FORMEDLARE_HTTPS__CERTIFICATE": str(certs / "server.pem"),
            "FORMEDLARE_HTTPS__KEY": str(certs / "server.key"),
            "FORMEDLARE_HTTPS__CLIENT_CA": str(certs / "ca.pem"),
        }
    )
    return env


@pytest.mark.slow
def test_formedlare_serve_runs_delivers_and_stops_on_sigterm(
    dev_certs: Path, service: Service, sender: SigningIdentity, tmp_path: Path
) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "formedlare", "serve"],
        env=_env(dev_certs, service.world.far_url, tmp_path / "served.db", port),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if service.http.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "formedlare serve did not answer /healthz"
            time.sleep(0.1)
        # Its delivery threads run: a letter handed over reaches the operator without anyone calling them.
        with RemoteRelay(
            f"{url}/Message/v3",
            client_certificate=dev_certs / "client.pem",
            client_key=dev_certs / "client.key",
            ca_bundle=dev_certs / "ca.pem",
        ) as remote:
            distribution_id = remote.distribute_secure(sign_delivery(sender, content("served-1")))
            deadline = time.monotonic() + 20
            while remote.check_distribution_status(distribution_id).state is DistributionState.PENDING:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert remote.check_distribution_status(distribution_id).state is DistributionState.DELIVERED
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err.decode()
    assert b"formedlare stopped" in out


def _wait_until_serving(process: subprocess.Popen[bytes], http: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if http.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, "formedlare serve exited"
        assert time.monotonic() < deadline, "formedlare serve did not answer /healthz"
        time.sleep(0.1)


@pytest.mark.slow
def test_formedlare_serve_delivers_to_one_operator_while_the_other_takes_60_s_a_call(
    dev_certs: Path, sender: SigningIdentity, tmp_path: Path
) -> None:
    """Issue 9/14 with the relay as its own process (worker_threads = 2, operator_concurrency = 4)."""
    world = start_world(dev_certs)  # its own: the slow calls must not linger in the module's world
    kivra, mmp = world.operators["kivra"], world.operators["mmp"]
    mmp.behave(delay=60)
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    with (tmp_path / "out.log").open("wb") as out, (tmp_path / "err.log").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "formedlare", "serve"],
            env=_env(dev_certs, world.far_url, tmp_path / "served.db", port),
            cwd=tmp_path,
            stdout=out,
            stderr=err,
        )
    try:
        with (
            mtls_client(dev_certs, "client") as http,
            RemoteRelay(
                f"{url}/Message/v3",
                client_certificate=dev_certs / "client.pem",
                client_key=dev_certs / "client.key",
                ca_bundle=dev_certs / "ca.pem",
            ) as remote,
        ):
            _wait_until_serving(process, http, url)
            to_mmp = [
                remote.distribute_secure(
                    sign_delivery(sender, replace(content(), recipient_id=MMP_RECIPIENT))
                )
                for _ in range(6)
            ]
            deadline = time.monotonic() + 30
            while mmp.requests < 2:  # before the fix both delivery threads were now in a 60 s call
                assert time.monotonic() < deadline, "mmp was never called"
                time.sleep(0.05)
            started = time.monotonic()
            to_kivra = [remote.distribute_secure(sign_delivery(sender, content())) for _ in range(20)]
            deadline = started + 30
            while any(
                remote.check_distribution_status(i).state is not DistributionState.DELIVERED for i in to_kivra
            ):
                assert time.monotonic() < deadline, f"kivra got {len(kivra.accepted)} of 20 within 30 s"
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            mmp_states = {remote.check_distribution_status(i).state for i in to_mmp}
        print(f"\nformedlare serve, mmp at 60 s a call: 20 kivra letters delivered after {elapsed:.1f} s")
        assert len(kivra.accepted) == 20
        assert mmp_states == {DistributionState.PENDING}
        assert mmp.accepted == []
        assert mmp.requests <= 4  # its slots, no more
    finally:
        # Stopping the slow simulator ends the minute-long calls (5 s grace), so SIGTERM stops at once.
        mmp.behave()
        mmp_url = world.operator_urls["mmp"]
        next(s for s in world.servers if mmp_url.startswith(s.url)).stop()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            world.stop()
    assert process.returncode == 0, (tmp_path / "err.log").read_text()
    assert b"formedlare stopped" in (tmp_path / "out.log").read_bytes()


@pytest.mark.slow
def test_formedlare_serve_without_tls_files_fails_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORMEDLARE_")}
    result = subprocess.run(
        [sys.executable, "-m", "formedlare", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("formedlare: error: https.certificate, https.key, https.client_ca must be set")


def test_settings_come_from_toml_with_the_environment_on_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from formedlare.cli import ConfigurationError, load_settings

    for name in [k for k in os.environ if k.startswith("FORMEDLARE_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "relay.toml"
    config.write_text(
        'relayed_senders = ["162120000001"]\nworker_threads = 3\n[https]\nport = 9443\nhost = "127.0.0.2"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("FORMEDLARE_HTTPS__PORT", "9444")
    settings = load_settings(config)
    assert (settings.https.host, settings.https.port) == ("127.0.0.2", 9444)
    assert (settings.relayed_senders, settings.worker_threads) == (["2120000001"], 3)
    monkeypatch.delenv("FORMEDLARE_HTTPS__PORT")
    config.write_text("[https]\nport = 70000\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"invalid setting https\.port"):
        load_settings(config)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
