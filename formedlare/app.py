"""The relay as its own HTTPS service: the Message v3 SOAP endpoint senders call, and a small JSON status API.

Routes (run it with :func:`formedlare.https_server.serve_in_thread` / ``serve_forever`` under mutual TLS, so
every caller holds a certificate from the configured client CA):

* POST ``/Message/v3`` — SOAP 1.1 ``distributeSecure`` (returns the distribution id) and
  ``checkDistributionStatus`` (``m1:DistributionStatus``); faults carry ``c3:applicationFault`` with the
  ErrorCodes of :mod:`formedlare.client`. A refusal is HTTP 500 with a ``soap:Client`` fault, a transient
  problem HTTP 503 with a ``soap:Server`` fault.
* GET ``/Message/v3?wsdl`` — our Message v3 WSDL; the schemas it imports are under GET ``/xsd/<file>``.
* GET ``/v1/distributions/{id}`` (status, operator, attempts), ``/v1/refusals?limit=N``, ``/v1/operators``
  (queues), ``/healthz``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from lxml import etree
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from formedlare.api import (
    DeliveryRefusedError,
    DistributionState,
    RelayApi,
    RelayUnavailableError,
    UnknownDistributionError,
)
from formedlare.client import (
    MALFORMED_REQUEST_ERROR_CODE,
    UNAVAILABLE_ERROR_CODE,
    UNKNOWN_DISTRIBUTION_ERROR_CODE,
    UNKNOWN_OPERATION_ERROR_CODE,
    refusal_error_code,
)
from formedlare.mm import (
    InvalidContentError,
    MalformedXmlError,
    check_distribution_status_response,
    distribute_secure_response,
    ns,
    soap_fault,
    soap_request_payload,
)

_MM_DIR = Path(__file__).resolve().parent / "mm"
_XSD_NAME = re.compile(r"[A-Za-z0-9_]+\.xsd")
_SOAP_HEADERS = {"content-type": "text/xml; charset=utf-8"}
_WSDL_SOAP_ADDRESS = "{http://schemas.xmlsoap.org/wsdl/soap/}address"
_DELIVERY_STATUS = {
    DistributionState.DELIVERED: "Delivered",
    DistributionState.PENDING: "Pending",
    DistributionState.FAILED: "DeliveryFailed",
}
#: Larger requests are refused unread (HTTP 413). MM sets no limit; senders keep envelopes near 2 MiB.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


class RelayService(RelayApi, Protocol):
    """What the service needs of a relay: :class:`formedlare.api.RelayApi` plus the status queries of
    :class:`formedlare.relay.Relay` (their answers are dataclasses or mappings, rendered as JSON)."""

    def distribution_detail(self, distribution_id: str) -> Any: ...

    def refusals(self, limit: int = 100) -> Any: ...

    def operator_queues(self) -> Any: ...


class _Fault(Exception):
    def __init__(self, code: int, description: str, *, client: bool, status: int = 500) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.client = client
        self.status = status


def create_app(relay: RelayService, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> ASGIApp:
    """The ASGI app of the relay service around `relay` (see the module docstring). The relay's blocking
    calls run in a thread pool. The app never starts or stops the relay's delivery workers."""
    service = _Service(relay, max_request_bytes)
    return Starlette(
        routes=[
            Route("/Message/v3", service.soap, methods=["POST"]),
            Route("/Message/v3", service.wsdl, methods=["GET"]),
            Route("/xsd/{name}", service.xsd, methods=["GET"]),
            Route("/v1/distributions/{distribution_id}", service.distribution, methods=["GET"]),
            Route("/v1/refusals", service.refusals, methods=["GET"]),
            Route("/v1/operators", service.operators, methods=["GET"]),
            Route("/healthz", service.health, methods=["GET"]),
        ]
    )


class _Service:
    def __init__(self, relay: RelayService, max_request_bytes: int) -> None:
        self.relay = relay
        self.max_request_bytes = max_request_bytes

    # ------------------------------------------------------------------------------------------ SOAP

    async def soap(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            if body is None:
                return Response("för stor begäran", status_code=413, media_type="text/plain")
            try:
                payload = soap_request_payload(body)
            except MalformedXmlError as exc:
                raise _Fault(
                    MALFORMED_REQUEST_ERROR_CODE, f"ogiltig SOAP-begäran: {exc}", client=True
                ) from exc
            if payload.tag == ns.qname(ns.MSG_V3, "distributeSecure"):
                return await self._distribute(payload)
            if payload.tag == ns.qname(ns.MSG_V3, "checkDistributionStatus"):
                return await self._check(payload)
            raise _Fault(UNKNOWN_OPERATION_ERROR_CODE, f"okänd operation {payload.tag!s}", client=True)
        except _Fault as fault:
            envelope = soap_fault(
                fault.code,
                fault.description,
                uuid.uuid4().hex,
                faultcode="soap:Client" if fault.client else "soap:Server",
            )
            return Response(envelope, status_code=fault.status, headers=_SOAP_HEADERS)

    async def _body(self, request: Request) -> bytes | None:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _distribute(self, payload: etree._Element) -> Response:
        signed = payload.find(ns.qname(ns.MSG_V3, "signedDelivery"))
        if signed is None:
            raise _Fault(MALFORMED_REQUEST_ERROR_CODE, "distributeSecure saknar signedDelivery", client=True)
        # mm-protocol §5.2 step 2: the element is signed under its type name. Only the tag changes; lxml
        # writes the text and attributes as parsed, and the relay verifies in the canonical form anyway.
        signed.tag = ns.qname(ns.MSG_V3, "SignedDelivery")
        data = etree.tostring(signed, with_tail=False)
        try:
            distribution_id = await run_in_threadpool(self.relay.distribute_secure, data)
        except DeliveryRefusedError as exc:
            raise _Fault(refusal_error_code(exc.code), exc.reason, client=True) from exc
        except RelayUnavailableError as exc:
            raise _unavailable(exc) from exc
        return Response(distribute_secure_response(distribution_id), headers=_SOAP_HEADERS)

    async def _check(self, payload: etree._Element) -> Response:
        distribution_id = _text(payload, "distributionId")
        if not distribution_id:
            raise _Fault(MALFORMED_REQUEST_ERROR_CODE, "distributionId saknas", client=True)
        try:
            status = await run_in_threadpool(self.relay.check_distribution_status, distribution_id)
            detail = await run_in_threadpool(self.relay.distribution_detail, distribution_id)
        except UnknownDistributionError as exc:
            raise _Fault(
                UNKNOWN_DISTRIBUTION_ERROR_CODE, f"okänd distribution {distribution_id}", client=True
            ) from exc
        except RelayUnavailableError as exc:
            raise _unavailable(exc) from exc
        recipient = _field(detail, "recipient_id")
        try:
            envelope = check_distribution_status_response(
                str(recipient or ""), "Digital", _DELIVERY_STATUS[status.state]
            )
        except InvalidContentError as exc:  # pragma: no cover - the values above are all valid
            raise _Fault(UNAVAILABLE_ERROR_CODE, str(exc), client=False) from exc
        return Response(envelope, headers=_SOAP_HEADERS)

    # ------------------------------------------------------------------------------------------ contracts

    async def wsdl(self, request: Request) -> Response:
        if "wsdl" not in request.query_params:
            return Response("POST SOAP-begäran hit; WSDL: ?wsdl", status_code=405, media_type="text/plain")
        # The endpoint is wherever this service was reached; the file only has a placeholder.
        document = etree.fromstring((_MM_DIR / "wsdl" / "Message.wsdl").read_bytes())
        endpoint = str(request.url.replace(query=""))
        for address in document.iter(_WSDL_SOAP_ADDRESS):
            address.set("location", endpoint)
        return Response(
            etree.tostring(document, xml_declaration=True, encoding="UTF-8"), media_type="text/xml"
        )

    async def xsd(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = _MM_DIR / "xsd" / name
        if not _XSD_NAME.fullmatch(name) or not path.is_file():
            return JSONResponse({"detail": "okänt schema"}, status_code=404)
        return Response(path.read_bytes(), media_type="text/xml")

    # ------------------------------------------------------------------------------------------ JSON

    async def distribution(self, request: Request) -> JSONResponse:
        distribution_id = request.path_params["distribution_id"]
        try:
            detail = await run_in_threadpool(self.relay.distribution_detail, distribution_id)
        except UnknownDistributionError:
            return JSONResponse({"detail": f"okänd distribution {distribution_id}"}, status_code=404)
        return JSONResponse(jsonable(detail))

    async def refusals(self, request: Request) -> JSONResponse:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            return JSONResponse({"detail": "limit ska vara ett heltal 1–1000"}, status_code=422)
        refusals = await run_in_threadpool(self.relay.refusals, int(raw))
        return JSONResponse(jsonable(refusals))

    async def operators(self, _request: Request) -> JSONResponse:
        return JSONResponse(jsonable(await run_in_threadpool(self.relay.operator_queues)))

    async def health(self, _request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})


def _unavailable(exc: RelayUnavailableError) -> _Fault:
    return _Fault(
        UNAVAILABLE_ERROR_CODE, f"förmedlaren är tillfälligt otillgänglig: {exc}", client=False, status=503
    )


def _text(parent: etree._Element, local: str) -> str:
    child = parent.find(ns.qname(ns.MSG_V3, local))
    return "" if child is None or child.text is None else child.text.strip()


def _field(value: object, name: str) -> object:
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def jsonable(value: object) -> Any:
    """`value` as JSON-ready data: dataclasses and mappings become objects, enums their values, dates ISO
    8601 strings, sequences lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "RelayService", "create_app", "jsonable"]
