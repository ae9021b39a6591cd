"""Talking to mailbox operators: where FaR says a letter goes, and one ``deliverSecure`` call over mutual TLS
with its outcome sorted into delivered, refused for good, or worth another try."""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from far_client import AccountType, Reachability
from formedlare.mm import (
    MalformedXmlError,
    MmFault,
    SoapFaultError,
    parse_deliver_secure_response,
    parse_fault,
)
from formedlare.store import RESPONSE_EXCERPT

#: A mailbox operator's answer to a message id it already stored (the operator simulator's, and ours to
#: recognise): after an attempt whose outcome we never learnt, it means the operator has the letter.
DUPLICATE_ERROR_CODE = 5100

SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


@dataclass(frozen=True, slots=True)
class Route:
    """The mailbox operator FaR names for a recipient."""

    operator_id: str
    operator_name: str
    service_address: str


def route(reachability: Reachability | None) -> Route | str:
    """The operator to deliver to, or the Swedish reason the recipient cannot get this sender's digital mail.

    FaR's own rule (mm-protocol §2.3, §2.4): a secure mailbox with a supplier that has a service address, not
    pending activation, and the recipient has not opted out of the sender. Each reason is final for this
    letter: the sender should use another channel."""
    if reachability is None:
        return "FaR svarade inte för mottagaren"
    account = reachability.account
    supplier = account.service_supplier
    if account.type is not AccountType.SECURE or supplier is None:
        return "Mottagaren har ingen digital brevlåda"
    if account.pending:
        return "Mottagarens digitala brevlåda är inte aktiverad än"
    if not reachability.sender_accepted:
        return "Mottagaren har valt bort digital post från denna avsändare"
    if not supplier.service_address.strip():
        return f"Brevlådeoperatören {supplier.name} saknar tjänsteadress i FaR"
    return Route(
        operator_id=supplier.id, operator_name=supplier.name, service_address=supplier.service_address
    )


class Outcome(enum.StrEnum):
    """Stored in attempt rows; never change the values."""

    DELIVERED = "DELIVERED"  # Delivered=true
    NOT_DELIVERED = "NOT_DELIVERED"  # a well-formed answer with Delivered=false
    FAULT = "FAULT"  # a SOAP fault other than the duplicate one
    DUPLICATE = "DUPLICATE"  # the duplicate fault (DUPLICATE_ERROR_CODE)
    TRANSIENT = "TRANSIENT"  # connection, timeout, 5xx or an unreadable answer: try again later
    FAR_UNAVAILABLE = "FAR_UNAVAILABLE"  # FaR could not be asked: try again later
    UNREACHABLE = "UNREACHABLE"  # FaR says the recipient cannot get this letter digitally


@dataclass(frozen=True, slots=True)
class CallResult:
    outcome: Outcome
    http_status: int | None
    #: Swedish, for people: the fault, the HTTP status or the network error.
    description: str
    #: Whether the operator may have stored the letter although we got no clear yes (timeouts, 5xx, ...).
    outcome_unknown: bool
    excerpt: str
    trans_id: str | None = None
    fault: MmFault | None = None


def operator_http_client(
    *,
    client_certificate: Path,
    client_key: Path,
    ca_bundle: Path,
    connect_timeout: float = 5.0,
    read_timeout: float = 120.0,
    max_connections: int = 64,
) -> httpx.Client:
    """An httpx client for deliverSecure calls: our client certificate, only ``ca_bundle`` trusted for the
    operators' servers, no proxies or CA bundles taken from the environment. Thread-safe; close it after use.
    Raises OSError / ssl.SSLError when the files cannot be loaded."""
    context = ssl.create_default_context(cafile=str(ca_bundle))
    context.load_cert_chain(str(client_certificate), str(client_key))
    return httpx.Client(
        verify=context,
        trust_env=False,
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout
        ),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )


def call_deliver_secure(http: httpx.Client, url: str, envelope: bytes) -> CallResult:
    """POST one deliverSecure envelope to an operator and classify the answer. Never raises for what the
    network or the operator does (those are outcomes); programming errors propagate."""
    try:
        response = http.post(url, content=envelope, headers=SOAP_HEADERS)
    except httpx.ConnectError as exc:
        # Refused before a byte was sent: the operator cannot have the letter.
        return CallResult(Outcome.TRANSIENT, None, f"kunde inte ansluta: {exc}", False, _cut(repr(exc)))
    except httpx.TimeoutException as exc:
        return CallResult(Outcome.TRANSIENT, None, f"tidsgränsen överskreds: {exc!r}", True, _cut(repr(exc)))
    except httpx.HTTPError as exc:
        return CallResult(Outcome.TRANSIENT, None, f"nätverksfel: {exc!r}", True, _cut(repr(exc)))
    body = response.content
    excerpt = _cut(body.decode("utf-8", errors="replace"))
    status = response.status_code
    fault = _fault(body)
    if fault is not None:
        description = f"{fault.error_code} {fault.description or fault.faultstring}".strip()
        if fault.error_code == DUPLICATE_ERROR_CODE:
            return CallResult(Outcome.DUPLICATE, status, description, False, excerpt, fault=fault)
        return CallResult(Outcome.FAULT, status, description, False, excerpt, fault=fault)
    if status != 200:
        # 502/504 come from a gateway that may have passed the request on (and the operator stored it);
        # any other status without a SOAP fault is the operator's own server saying it did not take it.
        unknown = status in (502, 504)
        return CallResult(Outcome.TRANSIENT, status, f"HTTP {status} utan SOAP-fel", unknown, excerpt)
    try:
        trans_id, delivered = parse_deliver_secure_response(body)
    except (MalformedXmlError, SoapFaultError) as exc:
        return CallResult(Outcome.TRANSIENT, status, f"oläsbart svar: {exc}", True, excerpt)
    if not delivered:
        return CallResult(Outcome.NOT_DELIVERED, status, "Delivered=false", False, excerpt, trans_id=trans_id)
    return CallResult(Outcome.DELIVERED, status, "levererad", False, excerpt, trans_id=trans_id)


def _fault(body: bytes) -> MmFault | None:
    try:
        return parse_fault(body)
    except MalformedXmlError:
        return None


def _cut(text: str) -> str:
    return text if len(text) <= RESPONSE_EXCERPT else text[: RESPONSE_EXCERPT - 1] + "…"
