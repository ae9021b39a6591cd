"""A FaR (Recipient v3) simulator: a real SOAP 1.1 service answering ``isReachable`` and ``isRegistered``
from a registry of recipients, for the sandbox and the tests. Run it over mutual TLS with
``formedlare.https_server.serve_in_thread(FarSimulator(registry).app, tls)``; the SOAP endpoint is any POST
path (conventionally ``/Recipient/v3``) and ``GET /_simulator/stats`` returns the call statistics as JSON.

Registry file (TOML)::

    [operators.kivra]
    id = "165568402266"; name = "Kivra (simulator)"; service_address = "https://127.0.0.1:8441/service/v3"
    [[recipients]]
    id = "197001011233"; operator = "kivra"; pending = false; opted_out_senders = ["2120000001"]

Unknown recipients answer Type Not, no supplier, SenderAccepted false. Faults (``c3:applicationFault``, HTTP
500): more than 1000 ids (code 5001), a malformed id or organisation number (5002), an unknown operation
or a request that is not SOAP (5000).

The sandbox registry (``default_registry()``), sender 2120000001 (the dev certificates' organisation):

=============  ========  ===============================================
id             operator  state
=============  ========  ===============================================
197001011233   kivra     mailbox, accepts the sender (deliverable)
198112189876   mmp       mailbox, accepts the sender (deliverable)
199001012385   kivra     mailbox pending activation (not deliverable)
197505052386   mmp       opted out of sender 2120000001 (not deliverable)
165560000001   kivra     an organisation with a mailbox (deliverable)
200001012384   —         not in the registry: Type Not (no mailbox)
=============  ========  ===============================================
"""

from __future__ import annotations

import asyncio
import re
import secrets
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from kanalvaxel.domain.errors import InvalidRecipientIdError
from kanalvaxel.domain.identity import RecipientId

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
R1 = "http://minameddelanden.gov.se/schema/Recipient"
R3 = "http://minameddelanden.gov.se/schema/Recipient/v3"
C3 = "http://minameddelanden.gov.se/schema/Common/v3"
MAX_IDS = 1000
CODE_GENERAL = 5000
CODE_TOO_MANY = 5001
CODE_MALFORMED = 5002

_RECIPIENT_ID = re.compile(r"16[0-9]{10}|(18|19|20)[0-9]{2}(0[1-9]|1[0-2])[0-9]{6}")
_ORGANISATION = re.compile(r"16[0-9]{10}")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=False)
_XML = "text/xml; charset=utf-8"


class RegistryError(ValueError):
    """A registry file or value the simulator cannot use."""


@dataclass(frozen=True, slots=True)
class Operator:
    key: str
    id: str
    name: str
    service_address: str
    ui_address: str | None = None


@dataclass(frozen=True, slots=True)
class RegisteredRecipient:
    id: str
    operator: str
    pending: bool = False
    opted_out_senders: frozenset[str] = frozenset()  # ten-digit organisation numbers


@dataclass(frozen=True, slots=True)
class Registry:
    operators: dict[str, Operator]
    recipients: dict[str, RegisteredRecipient]


@dataclass(slots=True)
class SimulatorStats:
    """What the simulator has seen: every SOAP call, including the ones it failed on purpose."""

    calls: int = 0
    ids_per_call: list[int] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "ids_per_call": list(self.ids_per_call),
            "operations": list(self.operations),
            "max_in_flight": self.max_in_flight,
        }


def _ten_digits(org: str) -> str:
    digits = org.removeprefix("16") if len(org) == 12 else org
    if not re.fullmatch(r"[0-9]{10}", digits):
        raise RegistryError(f"inte ett organisationsnummer: {org!r}")
    return digits


def _registry(data: dict[str, object]) -> Registry:
    operators: dict[str, Operator] = {}
    raw_operators = data.get("operators", {})
    if not isinstance(raw_operators, dict):
        raise RegistryError("[operators] ska vara en tabell")
    for key, value in raw_operators.items():
        if not _ORGANISATION.fullmatch(str(value.get("id", ""))):
            raise RegistryError(f"operatören {key}: id ska vara 16 + 10 siffror")
        operators[key] = Operator(
            key=key,
            id=str(value["id"]),
            name=str(value["name"]),
            service_address=str(value["service_address"]),
            ui_address=value.get("ui_address"),
        )
    recipients: dict[str, RegisteredRecipient] = {}
    raw_recipients = data.get("recipients", [])
    if not isinstance(raw_recipients, list):
        raise RegistryError("[[recipients]] ska vara en lista")
    for value in raw_recipients:
        rid = str(value["id"])
        try:
            parsed = RecipientId.parse(rid)
        except InvalidRecipientIdError as exc:
            raise RegistryError(f"ogiltigt mottagar-id {rid!r}: {exc}") from exc
        if parsed.value != rid:
            raise RegistryError(f"mottagar-id {rid!r} ska skrivas med 12 siffror")
        if value["operator"] not in operators:
            raise RegistryError(f"mottagaren {rid}: okänd operatör {value['operator']!r}")
        recipients[rid] = RegisteredRecipient(
            id=rid,
            operator=str(value["operator"]),
            pending=bool(value.get("pending", False)),
            opted_out_senders=frozenset(_ten_digits(str(s)) for s in value.get("opted_out_senders", [])),
        )
    return Registry(operators, recipients)


def load_registry(path: Path) -> Registry:
    """Read a registry TOML file; raises RegistryError for an unknown operator or an invalid id."""
    with path.open("rb") as f:
        return _registry(tomllib.load(f))


def default_registry() -> Registry:
    """The sandbox's registry (see the module docstring): two operators, five recipients."""
    return _registry(
        {
            "operators": {
                "kivra": {
                    "id": "165568402266",
                    "name": "Kivra (simulator)",
                    "service_address": "https://127.0.0.1:8441/service/v3",
                    "ui_address": "https://kivra.invalid/",
                },
                "mmp": {
                    "id": "162021004748",
                    "name": "Min myndighetspost (simulator)",
                    "service_address": "https://127.0.0.1:8442/service/v3",
                },
            },
            "recipients": [
                {"id": "197001011233", "operator": "kivra"},
                {"id": "198112189876", "operator": "mmp"},
                {"id": "199001012385", "operator": "kivra", "pending": True},
                {"id": "197505052386", "operator": "mmp", "opted_out_senders": ["2120000001"]},
                {"id": "165560000001", "operator": "kivra"},
            ],
        }
    )


class _Fault(Exception):
    def __init__(self, code: int, description: str, *, client: bool = True) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.client = client


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _envelope(body_child: etree._Element) -> bytes:
    envelope = etree.Element(_q(SOAP, "Envelope"), nsmap={"soap": SOAP})
    etree.SubElement(envelope, _q(SOAP, "Body")).append(body_child)
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _fault_body(code: int, description: str, *, client: bool) -> bytes:
    fault = etree.Element(_q(SOAP, "Fault"), nsmap={"soap": SOAP})
    etree.SubElement(fault, "faultcode").text = "soap:Client" if client else "soap:Server"
    etree.SubElement(fault, "faultstring").text = description
    info = etree.SubElement(etree.SubElement(fault, "detail"), _q(C3, "applicationFault"), nsmap={"c3": C3})
    etree.SubElement(info, _q(C3, "ErrorCode")).text = str(code)
    etree.SubElement(info, _q(C3, "Description")).text = description
    # 20..50 characters, as c3:ExceptionInformation requires.
    etree.SubElement(info, _q(C3, "CallId")).text = f"farsim-{secrets.token_hex(12)}"
    return _envelope(fault)


class FarSimulator:
    """The simulator and its controls; ``app`` is the ASGI application to serve."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.stats = SimulatorStats()
        self._failure: int | Literal["fault"] | None = None
        self._delay = 0.0
        self.app: ASGIApp = Starlette(
            routes=[
                Route("/_simulator/stats", self._stats, methods=["GET"]),
                Route("/{path:path}", self._soap, methods=["POST"]),
            ]
        )

    def set_service_address(self, operator_key: str, url: str) -> None:
        """Point an operator at the address its simulator actually listens on."""
        operator = self._registry.operators[operator_key]
        operators = dict(self._registry.operators)
        operators[operator_key] = replace(operator, service_address=url)
        self._registry = Registry(operators, self._registry.recipients)

    def fail_with(self, status: int | Literal["fault"] | None) -> None:
        """From now on answer every SOAP call with this HTTP status (plain text, no fault), or with a SOAP
        fault ("fault", code 5000); None answers normally again."""
        self._failure = status

    def delay(self, seconds: float) -> None:
        """Wait this long before answering each SOAP call (0: no wait)."""
        self._delay = seconds

    def reload(self, registry: Registry) -> None:
        self._registry = registry

    def reset_stats(self) -> None:
        self.stats = SimulatorStats()

    async def _stats(self, request: Request) -> JSONResponse:
        return JSONResponse(self.stats.as_json())

    async def _soap(self, request: Request) -> Response:
        stats = self.stats
        stats.calls += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            body = await request.body()
            if self._delay:
                await asyncio.sleep(self._delay)
            try:
                operation, ids, answer = self._answer(body)
            except _Fault as fault:
                stats.operations.append("?")
                stats.ids_per_call.append(0)
                return Response(
                    _fault_body(fault.code, fault.description, client=fault.client), 500, media_type=_XML
                )
            stats.operations.append(operation)
            stats.ids_per_call.append(ids)
            if self._failure == "fault":
                return Response(
                    _fault_body(CODE_GENERAL, "Tekniskt fel i FaR (simulerat)", client=False),
                    500,
                    media_type=_XML,
                )
            if isinstance(self._failure, int):
                return Response("simulerat fel", self._failure, media_type="text/plain")
            return Response(_envelope(answer), 200, media_type=_XML)
        finally:
            stats.in_flight -= 1

    def _answer(self, body: bytes) -> tuple[str, int, etree._Element]:
        try:
            root = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError as exc:
            raise _Fault(CODE_GENERAL, "Anropet är inte välformad XML") from exc
        soap_body = root.find(_q(SOAP, "Body")) if root.tag == _q(SOAP, "Envelope") else None
        request = soap_body[0] if soap_body is not None and len(soap_body) else None
        if request is None:
            raise _Fault(CODE_GENERAL, "Anropet är inget SOAP 1.1-anrop")
        ids = [(node.text or "") for node in request.findall(_q(R3, "recipientId"))]
        if request.tag == _q(R3, "isReachable"):
            sender = request.findtext(_q(R3, "senderOrgNr")) or ""
            self._check(ids, minimum=0)
            if not _ORGANISATION.fullmatch(sender):
                raise _Fault(CODE_MALFORMED, "Ogiltigt organisationsnummer för avsändaren")
            return "isReachable", len(ids), self._is_reachable(sender[2:], ids)
        if request.tag == _q(R3, "isRegistered"):
            self._check(ids, minimum=1)
            return "isRegistered", len(ids), self._is_registered(ids)
        raise _Fault(CODE_GENERAL, f"Okänd operation: {etree.QName(request).localname}")

    @staticmethod
    def _check(ids: list[str], *, minimum: int) -> None:
        if len(ids) > MAX_IDS:
            raise _Fault(CODE_TOO_MANY, f"Högst {MAX_IDS} mottagare per anrop, fick {len(ids)}")
        if len(ids) < minimum:
            raise _Fault(CODE_MALFORMED, "Minst en mottagare krävs")
        if any(_RECIPIENT_ID.fullmatch(rid) is None for rid in ids):
            raise _Fault(CODE_MALFORMED, "Ogiltigt mottagar-id")

    def _fill_account(self, status: etree._Element, rid: str) -> RegisteredRecipient | None:
        entry = self._registry.recipients.get(rid)
        etree.SubElement(status, _q(R1, "RecipientId")).text = rid
        etree.SubElement(status, _q(R1, "Type")).text = "Secure" if entry else "Not"
        etree.SubElement(status, _q(R1, "Pending")).text = "true" if entry and entry.pending else "false"
        if entry is not None:
            operator = self._registry.operators[entry.operator]
            supplier = etree.SubElement(status, _q(R1, "ServiceSupplier"))
            etree.SubElement(supplier, _q(R1, "Id")).text = operator.id
            etree.SubElement(supplier, _q(R1, "Name")).text = operator.name
            etree.SubElement(supplier, _q(R1, "ServiceAdress")).text = operator.service_address
            if operator.ui_address:
                etree.SubElement(supplier, _q(R1, "UIAdress")).text = operator.ui_address
            # Always sent, and always empty, in every public sample (mm-protocol §2.2).
            etree.SubElement(supplier, _q(R1, "InternalServiceAdress")).text = ""
            etree.SubElement(status, _q(R1, "LastRegistration")).text = "2024-01-15T09:30:00+01:00"
        return entry

    def _is_reachable(self, sender: str, ids: list[str]) -> etree._Element:
        response = etree.Element(_q(R3, "isReachableResponse"), nsmap={"r3": R3, "r1": R1})
        for rid in ids:
            item = etree.SubElement(response, _q(R3, "return"))
            entry = self._fill_account(etree.SubElement(item, _q(R1, "AccountStatus")), rid)
            accepted = entry is not None and sender not in entry.opted_out_senders
            etree.SubElement(item, _q(R1, "SenderAccepted")).text = "true" if accepted else "false"
            if entry is not None and sender in entry.opted_out_senders:
                etree.SubElement(item, _q(R1, "LastSenderAcceptChange")).text = "2024-03-01T12:00:00+01:00"
        return response

    def _is_registered(self, ids: list[str]) -> etree._Element:
        response = etree.Element(_q(R3, "isRegisteredResponse"), nsmap={"r3": R3, "r1": R1})
        for rid in ids:
            self._fill_account(etree.SubElement(response, _q(R3, "return")), rid)
        return response
