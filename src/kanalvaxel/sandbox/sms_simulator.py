"""The sandbox's SMS gateway: the protocol of :mod:`kanalvaxel.adapters.sms` on loopback, keeping what it
"sends" in memory (and optionally as JSON files people can read) instead of reaching a phone.

    sim = SmsGatewaySimulator("sandbox-sms-token", store_dir=Path("var/sandbox/sms"))
    with serve_in_thread(sim.app, TlsFiles(certs / "server.pem", certs / "server.key"), name="sms") as server:
        ...  # SmsGateway(SmsGatewayConfig(url=server.url, ...))

It checks what a real gateway checks: the bearer token (401), an Idempotency-Key (400 without one), the JSON
shape (400 when it is not JSON, 422 with a problem+json body listing each fault): ``to`` in E.164, ``from``
1–11 letters, digits or spaces, ``text`` non-empty and at most ``max_parts`` SMS by the GSM-7/UCS-2 rules, and
``reference`` a non-empty string. A new message is answered ``201 {"id", "parts"}``; the same Idempotency-Key
and body again ``200`` with the same id and nothing sent; the same key with another body ``409``.

Routes: POST ``/messages``; GET ``/_simulator/messages`` (a JSON list of what it sent); POST
``/_simulator/behaviour`` (the JSON form of :meth:`SmsGatewaySimulator.behave`, for a sandbox in another
process).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from kanalvaxel.adapters.sms import sms_length

_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_ORIGINATOR = re.compile(r"[A-Za-z0-9 ]{1,11}")
_PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class SentSms:
    """One SMS the simulator accepted ("sent"). ``to`` is the E.164 number, ``sender`` the originator."""

    id: str
    to: str
    sender: str
    text: str
    parts: int
    reference: str
    received_at: datetime


@dataclass(slots=True)
class _Behaviour:
    status: int | None = None
    remaining: int | None = None  # None: until behave() is called again
    delay: float = 0.0
    retry_after: int | None = None


class SmsGatewaySimulator:
    """An SMS gateway (see the module docstring). Thread-safe: the app runs in the server's thread while
    tests read :attr:`messages` and call :meth:`behave` from theirs."""

    def __init__(self, token: str, *, store_dir: Path | None = None, max_parts: int = 10) -> None:
        if not token:
            raise ValueError("the simulator needs a token")
        if max_parts < 1:
            raise ValueError("max_parts must be at least 1")
        self._token = token
        self._store_dir = store_dir
        self._max_parts = max_parts
        self._lock = threading.Lock()
        self._behaviour = _Behaviour()
        self._messages: list[SentSms] = []
        # Idempotency-Key -> (fingerprint of what was asked, what was sent)
        self._by_key: dict[str, tuple[str, SentSms]] = {}
        self._requests = 0
        if store_dir is not None:
            store_dir.mkdir(parents=True, exist_ok=True)
        self.app: ASGIApp = Starlette(
            routes=[
                Route("/messages", self._post_message, methods=["POST"]),
                Route("/_simulator/messages", self._list_messages, methods=["GET"]),
                Route("/_simulator/behaviour", self._set_behaviour, methods=["POST"]),
            ]
        )

    @property
    def messages(self) -> list[SentSms]:
        """What it sent, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    @property
    def requests(self) -> int:
        """Every POST /messages it received, whatever the answer."""
        with self._lock:
            return self._requests

    def behave(
        self,
        *,
        status: int | None = None,
        times: int | None = None,
        delay: float = 0.0,
        retry_after: int | None = None,
    ) -> None:
        """Misbehave for the next ``times`` requests (None: until called again; ``behave()`` restores normal
        service). ``status`` answers that HTTP status without sending anything (with a ``Retry-After`` header
        of ``retry_after`` seconds when given). ``delay`` holds the answer back that many seconds AFTER the
        message was handled, as when a gateway has sent the SMS and its answer is lost: a client that gives
        up and retries with the same Idempotency-Key then gets the same message back."""
        if status is not None and not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        with self._lock:
            self._behaviour = _Behaviour(status, times, delay, retry_after)

    def reset(self) -> None:
        """Forget everything sent and counted, and behave normally (stored files stay)."""
        with self._lock:
            self._behaviour = _Behaviour()
            self._messages.clear()
            self._by_key.clear()
            self._requests = 0

    # ------------------------------------------------------------------------------------------ requests

    def _take_behaviour(self) -> _Behaviour:
        with self._lock:
            current = self._behaviour
            if current.remaining is None:
                return current
            if current.remaining <= 0:
                self._behaviour = _Behaviour()
                return self._behaviour
            taken = _Behaviour(current.status, current.remaining, current.delay, current.retry_after)
            current.remaining -= 1
            if current.remaining == 0:
                self._behaviour = _Behaviour()
            return taken

    async def _post_message(self, request: Request) -> Response:
        with self._lock:
            self._requests += 1
        behaviour = self._take_behaviour()
        if behaviour.status is not None:
            if behaviour.delay > 0:
                await asyncio.sleep(behaviour.delay)
            headers = {} if behaviour.retry_after is None else {"retry-after": str(behaviour.retry_after)}
            return _problem(behaviour.status, f"simulerat fel {behaviour.status}", headers=headers)
        response = await self._handle(request)
        if behaviour.delay > 0:
            await asyncio.sleep(behaviour.delay)
        return response

    async def _handle(self, request: Request) -> Response:
        if not self._authorised(request.headers.get("authorization", "")):
            return _problem(401, "ogiltig eller saknad token", headers={"www-authenticate": "Bearer"})
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return _problem(400, "Idempotency-Key saknas")
        try:
            body: Any = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _problem(400, "kroppen är inte JSON")
        if not isinstance(body, dict):
            return _problem(422, "kroppen ska vara ett JSON-objekt")
        errors = self._faults(body)
        if errors:
            return _problem(422, "; ".join(f"{field}: {message}" for field, message in errors), errors=errors)
        fingerprint = hashlib.sha256(
            json.dumps([body["to"], body["from"], body["text"]], ensure_ascii=False).encode()
        ).hexdigest()
        with self._lock:
            seen = self._by_key.get(key)
            if seen is not None:
                if seen[0] != fingerprint:
                    return _problem(409, "Idempotency-Key är redan använd för ett annat SMS")
                return JSONResponse({"id": seen[1].id, "parts": seen[1].parts}, status_code=200)
            sms = SentSms(
                id=f"sms-{secrets.token_hex(8)}",
                to=body["to"],
                sender=body["from"],
                text=body["text"],
                parts=sms_length(body["text"]).parts,
                reference=body["reference"],
                received_at=datetime.now(UTC),
            )
            self._by_key[key] = (fingerprint, sms)
            self._messages.append(sms)
        if self._store_dir is not None:
            _store(self._store_dir, sms)
        return JSONResponse({"id": sms.id, "parts": sms.parts}, status_code=201)

    def _authorised(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token.encode()
        )

    def _faults(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        to, sender, text, reference = (body.get(k) for k in ("to", "from", "text", "reference"))
        if not isinstance(to, str) or not _E164.fullmatch(to):
            errors.append(("to", "ska vara ett nummer i E.164-form, t.ex. +46701234567"))
        if not isinstance(sender, str) or not _ORIGINATOR.fullmatch(sender):
            errors.append(("from", "ska vara 1–11 tecken A–Z, a–z, 0–9 eller mellanslag"))
        if not isinstance(text, str) or not text:
            errors.append(("text", "saknas eller är tom"))
        else:
            length = sms_length(text)
            if length.parts > self._max_parts:
                errors.append(
                    ("text", f"tar {length.parts} SMS ({length.encoding}); högst {self._max_parts} godtas")
                )
        if not isinstance(reference, str) or not reference:
            errors.append(("reference", "saknas eller är tom"))
        return errors

    # ------------------------------------------------------------------------------------------ control

    async def _list_messages(self, _request: Request) -> JSONResponse:
        return JSONResponse([_json(sms) for sms in self.messages])

    async def _set_behaviour(self, request: Request) -> JSONResponse:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise TypeError("an object is expected")
            self.behave(
                status=None if data.get("status") is None else int(data["status"]),
                times=None if data.get("times") is None else int(data["times"]),
                delay=float(data.get("delay", 0.0)),
                retry_after=None if data.get("retry_after") is None else int(data["retry_after"]),
            )
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": f"ogiltigt beteende: {exc}"}, status_code=422)
        return JSONResponse({"ok": True})


def _json(sms: SentSms) -> dict[str, Any]:
    return asdict(sms) | {"received_at": sms.received_at.isoformat()}


def _store(directory: Path, sms: SentSms) -> None:
    stamp = sms.received_at.strftime("%Y%m%dT%H%M%S.%fZ")
    target = directory / f"{stamp}-{sms.id}.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(_json(sms), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    # Renamed into place, so someone listing the directory never reads half a file.
    os.replace(partial, target)


def _problem(
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    errors: list[tuple[str, str]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": _TITLES.get(status, "Fel"), "status": status}
    body["detail"] = detail
    if errors:
        body["errors"] = [{"field": field, "message": message} for field, message in errors]
    return JSONResponse(body, status_code=status, headers=headers, media_type=_PROBLEM)


_TITLES = {
    400: "Felaktig begäran",
    401: "Ej behörig",
    409: "Konflikt",
    422: "Ogiltigt SMS",
    429: "För många förfrågningar",
    500: "Internt fel",
    502: "Felaktig gateway",
    503: "Tjänsten är otillgänglig",
    504: "Tidsgräns överskreds",
}
