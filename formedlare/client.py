"""A relay (förmedlare) across the network: :class:`RemoteRelay` speaks the Message v3 service (SOAP 1.1
``distributeSecure`` / ``checkDistributionStatus``) over mutual TLS, to our own relay service
(:mod:`formedlare.app`) or another förmedlare offering the same contract.

    relay = RemoteRelay("https://formedlare.example.se/Message/v3", client_certificate=..., client_key=...,
                        ca_bundle=...)
    distribution_id = relay.distribute_secure(signed_delivery)
    relay.check_distribution_status(distribution_id).state   # PENDING, DELIVERED or FAILED

The module also holds the ErrorCode table of our relay service's faults (``c3:applicationFault/ErrorCode``),
shared by both ends. The MM contract gives codes no meaning, so these are ours:

==========  ===========================================================================
ErrorCode   meaning
==========  ===========================================================================
5001        the request is not a SOAP 1.1 envelope we can read (SOAP ``Client`` fault)
5002        unknown operation
5201        refused: not well-formed XML (``MALFORMED_XML``)
5202        refused: not a signed v3 SignedDelivery (``NOT_SIGNED_DELIVERY``)
5203        refused: schema violation (``SCHEMA_VIOLATION``)
5210–5219   refused: the sender's signature; one code per ``formedlare.mm.SignatureProblem`` in its order
            (5210 UNSIGNED ... 5214 DIGEST_MISMATCH, 5215 SIGNATURE_MISMATCH, 5216 CERTIFICATE_UNTRUSTED ...)
5220        refused: the signing certificate's organisation is not the delivery's sender
            (``ORGANISATION_MISMATCH``)
5221        refused: the relay does not deliver for this sender (``SENDER_NOT_RELAYED``)
5299        refused for another reason (the refusal code does not travel)
5300        the relay is temporarily unavailable: try again (HTTP 503)
5301        no distribution with that id
==========  ===========================================================================
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from types import TracebackType

import httpx
from cryptography import x509

from formedlare.api import (
    DeliveryRefusedError,
    DistributionState,
    DistributionStatus,
    RelayUnavailableError,
    UnknownDistributionError,
)
from formedlare.errors import FormedlareError
from formedlare.mm import (
    MmError,
    MmFault,
    SignatureProblem,
    SoapFaultError,
    check_distribution_status_request,
    distribute_secure_request,
    organisation_number_of,
    parse_check_distribution_status_response,
    parse_distribute_secure_response,
    parse_fault,
    parse_xml,
    read_delivery,
)

MALFORMED_REQUEST_ERROR_CODE = 5001
UNKNOWN_OPERATION_ERROR_CODE = 5002
OTHER_REFUSAL_ERROR_CODE = 5299
UNAVAILABLE_ERROR_CODE = 5300
UNKNOWN_DISTRIBUTION_ERROR_CODE = 5301

#: Refusal code (DeliveryRefusedError.code) -> ErrorCode on the wire; one-to-one, see the module docstring.
REFUSAL_ERROR_CODES: dict[str, int] = {
    "MALFORMED_XML": 5201,
    "NOT_SIGNED_DELIVERY": 5202,
    "SCHEMA_VIOLATION": 5203,
    **{problem.value: 5210 + index for index, problem in enumerate(SignatureProblem)},
    "ORGANISATION_MISMATCH": 5220,
    "SENDER_NOT_RELAYED": 5221,
}
_REFUSAL_CODES = {number: code for code, number in REFUSAL_ERROR_CODES.items()}
#: The refusal code a RemoteRelay reports for a fault whose ErrorCode it does not know.
UNKNOWN_REFUSAL = "REFUSED"

_STATES = {
    "Delivered": DistributionState.DELIVERED,
    "Pending": DistributionState.PENDING,
    "DeliveryFailed": DistributionState.FAILED,
}
_DETAILS = {
    DistributionState.DELIVERED: "Levererad till mottagarens digitala brevlåda enligt förmedlaren.",
    DistributionState.PENDING: "Förmedlaren har tagit emot försändelsen men inte levererat den ännu.",
    DistributionState.FAILED: "Förmedlaren kunde inte leverera försändelsen.",
}
_SOAP_HEADERS = {"content-type": "text/xml; charset=utf-8", "soapaction": '""'}


def refusal_error_code(code: str) -> int:
    """The ErrorCode our relay service answers for the refusal `code` (5299 for a code not in the table)."""
    return REFUSAL_ERROR_CODES.get(code, OTHER_REFUSAL_ERROR_CODE)


class RemoteRelayError(FormedlareError):
    """The RemoteRelay cannot be set up (unreadable certificate or key files, no sender id to be found)."""


class RemoteRelay:
    """:class:`formedlare.api.RelayApi` over the network (see the module docstring).

    `url` is the Message v3 endpoint (ours: ``https://host:port/Message/v3``). The client presents
    `client_certificate`/`client_key` and trusts only `ca_bundle` for the server; proxies and
    ``REQUESTS_CA_BUNDLE``-style environment settings are ignored. `sender_id` (12 digits, ``16`` +
    organisation number) is what ``checkDistributionStatus`` names as sender when it did not hand the delivery
    over itself; by default the organisation in the client certificate's serialNumber. `http` replaces the
    transport (its TLS settings are then the caller's; it is not closed by :meth:`close`).

    Raises RemoteRelayError when the files cannot be loaded or no sender id can be found. Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        client_certificate: Path,
        client_key: Path,
        ca_bundle: Path,
        sender_id: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self._own_http = http is None
        if http is None:
            try:
                context = ssl.create_default_context(cafile=str(ca_bundle))
                context.load_cert_chain(str(client_certificate), str(client_key))
            except (OSError, ssl.SSLError) as exc:
                raise RemoteRelayError(f"kunde inte läsa TLS-filerna för förmedlaren: {exc}") from exc
            http = httpx.Client(
                verify=context,
                timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
                trust_env=False,
                headers=_SOAP_HEADERS,
            )
        self._http = http
        self._sender_id = sender_id or _sender_of(client_certificate)
        # Which sender handed over which distribution, so a status question names the right one.
        self._senders: dict[str, str] = {}
        self._lock = threading.Lock()

    def distribute_secure(self, signed_delivery: bytes) -> str:
        """Hand `signed_delivery` (the signed ``SignedDelivery`` bytes, embedded verbatim) to the relay and
        return its distribution id. Idempotency is the relay's (ours: the same delivery gives the same id).

        Raises DeliveryRefusedError for a refusal (its ``code`` from the ErrorCode table; ``REFUSED`` for an
        ErrorCode not in it, ``reason`` = the fault's Description), RelayUnavailableError for transport
        errors, timeouts, HTTP errors without a fault, unreadable answers and ErrorCode 5300. Raises
        MalformedXmlError (not sent) unless `signed_delivery` is a v3 SignedDelivery.
        """
        envelope = distribute_secure_request(signed_delivery)
        answer = self._post(envelope, refusing=True)
        try:
            distribution_id = parse_distribute_secure_response(answer).strip()
        except SoapFaultError as exc:
            raise _refusal(_fault_of(exc)) from exc
        except MmError as exc:
            raise RelayUnavailableError(f"obegripligt svar från förmedlaren: {exc}") from exc
        if not distribution_id:
            raise RelayUnavailableError("förmedlaren svarade utan distributions-id")
        try:
            sender = read_delivery(parse_xml(signed_delivery)).sender_id
        except MmError:
            sender = None
        if sender:
            with self._lock:
                self._senders[distribution_id] = sender
        return distribution_id

    def check_distribution_status(self, distribution_id: str) -> DistributionStatus:
        """The relay's status of `distribution_id`, mapped from ``m1:DistributionStatus``: Delivered →
        DELIVERED, Pending or none → PENDING, DeliveryFailed (or Type Not) → FAILED. ``detail`` is a Swedish
        sentence; the SOAP answer carries no reason, so it is generic.

        Raises UnknownDistributionError (ErrorCode 5301, or an answer without a status) and
        RelayUnavailableError (transport, HTTP errors, unreadable answers, any other fault).
        """
        with self._lock:
            sender = self._senders.get(distribution_id, self._sender_id)
        answer = self._post(check_distribution_status_request(sender, distribution_id), refusing=False)
        try:
            entries = parse_check_distribution_status_response(answer)
        except SoapFaultError as exc:
            fault = _fault_of(exc)
            if fault.error_code == UNKNOWN_DISTRIBUTION_ERROR_CODE:
                raise UnknownDistributionError(fault.description) from exc
            raise RelayUnavailableError(f"förmedlaren svarade med ett fel: {fault.description}") from exc
        except MmError as exc:
            raise RelayUnavailableError(f"obegripligt svar från förmedlaren: {exc}") from exc
        if not entries:
            raise UnknownDistributionError(f"förmedlaren känner inte till {distribution_id}")
        entry = entries[0]
        if entry.kind == "Not":
            state = DistributionState.FAILED
        else:
            state = _STATES.get(entry.status or "Pending", DistributionState.PENDING)
        return DistributionStatus(distribution_id=distribution_id, state=state, detail=_DETAILS[state])

    def close(self) -> None:
        """Close the HTTP client this relay created (not one passed in as `http`)."""
        if self._own_http:
            self._http.close()

    def __enter__(self) -> RemoteRelay:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _post(self, envelope: bytes, *, refusing: bool) -> bytes:
        try:
            response = self._http.post(self.url, content=envelope, headers=_SOAP_HEADERS)
        except httpx.HTTPError as exc:
            raise RelayUnavailableError(f"förmedlaren kunde inte nås: {exc}") from exc
        if response.status_code == 200:
            return response.content
        fault = _try_fault(response.content)
        if response.status_code == 503 or fault is None or fault.error_code == UNAVAILABLE_ERROR_CODE:
            what = fault.description if fault is not None else response.text[:200]
            raise RelayUnavailableError(f"förmedlaren svarade HTTP {response.status_code}: {what}")
        if refusing:
            raise _refusal(fault)
        return response.content  # the caller reads the fault from the envelope


def _try_fault(body: bytes) -> MmFault | None:
    try:
        return parse_fault(body)
    except MmError:
        return None


def _fault_of(exc: SoapFaultError) -> MmFault:
    fault = exc.fault
    assert isinstance(fault, MmFault)
    return fault


def _refusal(fault: MmFault) -> FormedlareError:
    if fault.error_code == UNAVAILABLE_ERROR_CODE:
        return RelayUnavailableError(fault.description)
    code = _REFUSAL_CODES.get(fault.error_code or 0)
    if code is None:
        code = UNKNOWN_REFUSAL if fault.error_code is None else f"{UNKNOWN_REFUSAL}_{fault.error_code}"
    return DeliveryRefusedError(code, fault.description or fault.faultstring)


def _sender_of(certificate: Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (OSError, ValueError) as exc:
        raise RemoteRelayError(f"kunde inte läsa klientcertifikatet {certificate}: {exc}") from exc
    organisation = organisation_number_of(cert)
    if organisation is None:
        raise RemoteRelayError(
            "klientcertifikatet saknar organisationsnummer (serialNumber 16…); ange sender_id"
        )
    return "16" + organisation


__all__ = [
    "MALFORMED_REQUEST_ERROR_CODE",
    "OTHER_REFUSAL_ERROR_CODE",
    "REFUSAL_ERROR_CODES",
    "UNAVAILABLE_ERROR_CODE",
    "UNKNOWN_DISTRIBUTION_ERROR_CODE",
    "UNKNOWN_OPERATION_ERROR_CODE",
    "UNKNOWN_REFUSAL",
    "RemoteRelay",
    "RemoteRelayError",
    "refusal_error_code",
]
