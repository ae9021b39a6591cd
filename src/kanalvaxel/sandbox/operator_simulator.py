"""A mailbox operator (brevlådeoperatör) on loopback: the Service v3 ``deliverSecure`` endpoint over SOAP 1.1.

It checks what a real operator checks (mm-protocol §1.3, §4): the whole request against the contract, BOTH
signatures in the MM canonical form (the relay's seal over the SealedDelivery, the sender's over the
SignedDelivery) with both certificates chained to its trust anchors and valid today, and that it has not
stored the message before. What it accepts it keeps in memory for tests to inspect.

    sim = OperatorSimulator("Kivra (simulator)", "165568402266", TrustPolicy.from_pem_files(certs / "ca.pem"))
    with serve_in_thread(sim.app, TlsFiles(certs / "operator-kivra.pem", certs / "operator-kivra.key",
                                           client_ca=certs / "ca.pem")) as server:
        ...  # POST f"{server.url}/service/v3"

Routes: POST ``/service/v3`` (deliverSecure), GET ``/_simulator/messages`` (what it accepted and refused, as
JSON without content), POST ``/_simulator/behaviour`` (the JSON form of :meth:`OperatorSimulator.behave`, for
a sandbox started in another process).

Fault codes it answers with (``c3:applicationFault/ErrorCode``; the contract defines no meanings, so these
are the simulator's own): 5001 not a deliverSecure request, 5002 schema violation, 5003 the seal signature
(or its certificate) refused, 5004 the sender's signature (or its certificate) refused,
:data:`DUPLICATE_ERROR_CODE` a message id it already stored. A fault set with ``behave(fault=...)`` carries
the code given there.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from formedlare.mm import (
    MalformedXmlError,
    SchemaViolationError,
    SignatureInvalidError,
    TrustPolicy,
    deliver_secure_response,
    ns,
    read_delivery,
    signed_delivery_of,
    soap_fault,
    soap_request_payload,
    validate,
    verify_element,
)

DUPLICATE_ERROR_CODE = 5100
MALFORMED_ERROR_CODE = 5001
SCHEMA_ERROR_CODE = 5002
SEAL_SIGNATURE_ERROR_CODE = 5003
DELIVERY_SIGNATURE_ERROR_CODE = 5004

_SOAP_HEADERS = {"content-type": "text/xml; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class AcceptedDelivery:
    """One SealedDelivery the operator stored. ``raw`` is the request exactly as received;
    ``signature_algorithms`` the SignatureMethod URIs of (seal, sender signature)."""

    message_id: str
    message_ids: tuple[str, ...]
    sender_id: str
    recipient_id: str
    subject: str
    trans_id: str
    raw: bytes
    received_at: datetime
    signature_algorithms: tuple[str, str]
    seal_organisation_number: str | None
    sender_organisation_number: str | None


@dataclass(frozen=True, slots=True)
class RejectedDelivery:
    """A request refused with a SOAP fault. ``reason`` is the ErrorCode sent; ``detail`` the Swedish
    description (for signatures it starts with the SignatureProblem)."""

    reason: int
    detail: str
    received_at: datetime


@dataclass(slots=True)
class _Behaviour:
    delay: float = 0.0
    http_status: int | None = None
    fault: tuple[int, str] | None = None
    remaining: int | None = None  # None: until behave() is called again


class _Refusal(Exception):
    def __init__(self, code: int, detail: str, *, client: bool) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.client = client


class OperatorSimulator:
    """A mailbox operator's ``deliverSecure`` service (see the module docstring). Thread-safe: the app runs
    in the server's thread, tests read the records and call :meth:`behave` from theirs."""

    def __init__(
        self,
        name: str,
        operator_id: str,
        trust: TrustPolicy,
        *,
        clock: Callable[[], datetime] | None = None,
        store_dir: Path | None = None,
        history: int = 1000,
    ) -> None:
        """`store_dir`: also write each accepted delivery there as JSON (what `sandbox-inbox` lists).
        `history`: how many accepted and refused deliveries are kept in memory (and listed), the latest
        ones; a volume run of 100,000 letters would otherwise keep every request's bytes (the duplicate
        check remembers every message id regardless)."""
        if history < 1:
            raise ValueError("history must be at least 1")
        self._history = history
        self.name = name
        self._store_dir = store_dir
        if store_dir is not None:
            store_dir.mkdir(parents=True, exist_ok=True)
        self.operator_id = operator_id
        self.trust = trust
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._behaviour = _Behaviour()
        self._stored: set[tuple[str, str]] = set()
        self._in_flight = 0
        self.accepted: list[AcceptedDelivery] = []
        self.rejected: list[RejectedDelivery] = []
        self.requests = 0
        self.max_concurrent = 0
        self.app: ASGIApp = Starlette(
            routes=[
                Route("/service/v3", self._deliver_secure, methods=["POST"]),
                Route("/_simulator/messages", self._messages, methods=["GET"]),
                Route("/_simulator/behaviour", self._set_behaviour, methods=["POST"]),
            ]
        )

    def behave(
        self,
        delay: float = 0.0,
        http_status: int | None = None,
        fault: tuple[int, str] | None = None,
        times: int | None = None,
    ) -> None:
        """Misbehave for the next `times` requests (None: until called again; ``behave()`` restores normal
        service). `delay` seconds pass before answering (asynchronously: concurrent requests overlap);
        `http_status` answers that status without storing anything; `fault` answers a SOAP fault
        (ErrorCode, Description) without storing anything."""
        if http_status is not None and not 100 <= http_status <= 599:
            raise ValueError(f"not an HTTP status: {http_status}")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        with self._lock:
            self._behaviour = _Behaviour(delay, http_status, fault, times)

    def reset(self) -> None:
        """Forget everything stored and counted, and behave normally."""
        with self._lock:
            self._behaviour = _Behaviour()
            self._stored.clear()
            self.accepted.clear()
            self.rejected.clear()
            self.requests = 0
            self.max_concurrent = 0

    # ------------------------------------------------------------------------------------------ requests

    def _take_behaviour(self) -> _Behaviour:
        with self._lock:
            current = self._behaviour
            if current.remaining is None:
                return current
            if current.remaining <= 0:
                self._behaviour = _Behaviour()
                return self._behaviour
            current.remaining -= 1
            if current.remaining == 0:
                self._behaviour = _Behaviour()
            return current

    async def _deliver_secure(self, request: Request) -> Response:
        with self._lock:
            self.requests += 1
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
        try:
            body = await request.body()
            behaviour = self._take_behaviour()
            if behaviour.delay > 0:
                await asyncio.sleep(behaviour.delay)
            if behaviour.http_status is not None:
                return Response(
                    f"simulerat fel {behaviour.http_status}",
                    status_code=behaviour.http_status,
                    media_type="text/plain",
                )
            if behaviour.fault is not None:
                code, description = behaviour.fault
                return _fault(code, description, client=False)
            # Verification is CPU work (c14n, RSA): off the event loop, so slow requests do not queue others.
            return await run_in_threadpool(self._process, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _process(self, body: bytes) -> Response:
        now = self._clock()
        try:
            record = self._check(body, now)
        except _Refusal as refusal:
            with self._lock:
                self.rejected.append(RejectedDelivery(refusal.code, refusal.detail, now))
                del self.rejected[: -self._history]
            return _fault(refusal.code, refusal.detail, client=refusal.client)
        return Response(
            deliver_secure_response(record.trans_id, record.recipient_id, True),
            headers=_SOAP_HEADERS,
        )

    def _check(self, body: bytes, now: datetime) -> AcceptedDelivery:
        try:
            payload = soap_request_payload(body)
        except MalformedXmlError as exc:
            raise _Refusal(MALFORMED_ERROR_CODE, f"ogiltig SOAP-begäran: {exc}", client=True) from exc
        if payload.tag != ns.qname(ns.SERVICE_V3, "deliverSecure"):
            raise _Refusal(MALFORMED_ERROR_CODE, f"okänd operation {payload.tag!s}", client=True)
        try:
            validate(payload)
        except SchemaViolationError as exc:
            raise _Refusal(SCHEMA_ERROR_CODE, f"följer inte schemat: {exc}", client=True) from exc
        sealed = payload.find(ns.qname(ns.SERVICE_V3, "deliverSecure"))
        if sealed is None:  # the schema requires it; kept for the type checker
            raise _Refusal(SCHEMA_ERROR_CODE, "deliverSecure saknar försändelsen", client=True)
        try:
            seal = verify_element(sealed, self.trust, at=now)
        except SignatureInvalidError as exc:
            raise _Refusal(
                SEAL_SIGNATURE_ERROR_CODE,
                f"{exc.reason}: förseglingen godtas inte: {exc.detail}",
                client=True,
            ) from exc
        try:
            signed = signed_delivery_of(sealed)
            sender = verify_element(signed, self.trust, at=now)
        except SignatureInvalidError as exc:
            raise _Refusal(
                DELIVERY_SIGNATURE_ERROR_CODE,
                f"{exc.reason}: avsändarens signatur godtas inte: {exc.detail}",
                client=True,
            ) from exc
        except MalformedXmlError as exc:
            raise _Refusal(SCHEMA_ERROR_CODE, str(exc), client=True) from exc
        delivery = read_delivery(signed)
        keys = {(delivery.sender_id, message_id) for message_id in delivery.message_ids}
        record = AcceptedDelivery(
            message_id=delivery.message_ids[0],
            message_ids=delivery.message_ids,
            sender_id=delivery.sender_id,
            recipient_id=delivery.recipient_id,
            subject=delivery.subjects[0],
            trans_id=str(uuid.uuid4()),
            raw=body,
            received_at=now,
            signature_algorithms=(seal.signature_algorithm, sender.signature_algorithm),
            seal_organisation_number=seal.organisation_number,
            sender_organisation_number=sender.organisation_number,
        )
        with self._lock:
            seen = sorted(message_id for _, message_id in keys & self._stored)
            if seen:
                raise _Refusal(
                    DUPLICATE_ERROR_CODE, f"meddelandet {', '.join(seen)} är redan levererat", client=True
                )
            self._stored |= keys
            self.accepted.append(record)
            del self.accepted[: -self._history]
        if self._store_dir is not None:
            self._store(record)
        return record

    def _store(self, record: AcceptedDelivery) -> None:
        assert self._store_dir is not None
        stamp = record.received_at.strftime("%Y%m%dT%H%M%S.%fZ")
        target = self._store_dir / f"{stamp}-{record.trans_id}.json"
        partial = target.with_suffix(".json.partial")
        data = {"operator": self.name, "operator_id": self.operator_id} | _accepted_json(record)
        partial.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, target)  # renamed into place: a reader never sees half a file

    # ------------------------------------------------------------------------------------------ control

    async def _messages(self, _request: Request) -> JSONResponse:
        with self._lock:
            accepted = [_accepted_json(a) for a in self.accepted]
            rejected = [
                {"reason": r.reason, "detail": r.detail, "received_at": r.received_at.isoformat()}
                for r in self.rejected
            ]
            counts = {"requests": self.requests, "max_concurrent": self.max_concurrent}
        return JSONResponse(
            {
                "operator": {"name": self.name, "id": self.operator_id},
                "accepted": accepted,
                "rejected": rejected,
            }
            | counts
        )

    async def _set_behaviour(self, request: Request) -> JSONResponse:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise TypeError("an object is expected")
            fault = data.get("fault")
            self.behave(
                delay=float(data.get("delay", 0.0)),
                http_status=None if data.get("http_status") is None else int(data["http_status"]),
                fault=None if fault is None else (int(fault["code"]), str(fault["description"])),
                times=None if data.get("times") is None else int(data["times"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": f"ogiltigt beteende: {exc}"}, status_code=422)
        return JSONResponse({"ok": True})


def _accepted_json(record: AcceptedDelivery) -> dict[str, Any]:
    return {
        "message_id": record.message_id,
        "message_ids": list(record.message_ids),
        "sender_id": record.sender_id,
        "recipient_id": record.recipient_id,
        "subject": record.subject,
        "trans_id": record.trans_id,
        "received_at": record.received_at.isoformat(),
        "signature_algorithms": list(record.signature_algorithms),
        "size": len(record.raw),
    }


def _fault(code: int, description: str, *, client: bool) -> Response:
    call_id = uuid.uuid4().hex  # 32 characters: within the contract's 20..50
    envelope = soap_fault(code, description, call_id, faultcode="soap:Client" if client else "soap:Server")
    return Response(envelope, status_code=500, headers=_SOAP_HEADERS)


__all__ = [
    "DELIVERY_SIGNATURE_ERROR_CODE",
    "DUPLICATE_ERROR_CODE",
    "MALFORMED_ERROR_CODE",
    "SCHEMA_ERROR_CODE",
    "SEAL_SIGNATURE_ERROR_CODE",
    "AcceptedDelivery",
    "OperatorSimulator",
    "RejectedDelivery",
]
