"""One error, one HTTP status, one renderer: application/problem+json (RFC 9457)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kanalvaxel.domain.errors import (
    ConflictError,
    ForbiddenError,
    KanalvaxelError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from kanalvaxel.entrypoints.api.schemas import Problem

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
NO_KEY = "an API key is required: Authorization: Bearer <key>"
UNKNOWN_KEY = "the API key is unknown or revoked"


class AuthError(KanalvaxelError):
    """No API key, or one we do not know (or that is revoked)."""


class BadRequestError(KanalvaxelError):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class PayloadTooLargeError(KanalvaxelError):
    pass


_STATUS: list[tuple[type[Exception], int, str, str]] = [
    (AuthError, 401, "unauthorized", "Authentication required"),
    (ForbiddenError, 403, "forbidden", "Not allowed"),
    (NotFoundError, 404, "not-found", "Not found"),
    (ConflictError, 409, "conflict", "Conflict"),
    (PayloadTooLargeError, 413, "too-large", "Request too large"),
    (BadRequestError, 400, "bad-request", "Bad request"),
    (ValidationError, 422, "validation", "Invalid request"),
    (UnavailableError, 503, "unavailable", "Service unavailable"),
]


def problem(
    status: int, slug: str, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = Problem(type=f"urn:kanalvaxel:problem:{slug}", title=title, status=status, detail=detail, **extra)
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM, headers=headers
    )


def unavailable(exc: UnavailableError) -> JSONResponse:
    """503 with Retry-After: the database is down or overloaded; nothing was stored. The driver's own words
    (host names, addresses) go to our log, never to the client."""
    log.warning("answering 503: %s (%s)", exc.message, exc.cause)
    return problem(
        503,
        "unavailable",
        "Service unavailable",
        f"{exc.message}; nothing was stored, try again later",
        headers={"Retry-After": str(exc.retry_after)},
    )


#: Where FastAPI found a parameter; the first element of an error's `loc`, not part of the field's name.
_LOCATIONS = ("body", "header", "query", "path", "cookie")


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        # Only the first: a field may itself be called `body` (ShipmentIn.body).
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out  # empty: the request body as a whole (not the letter's own `body` field)


def install(app: FastAPI) -> None:
    @app.exception_handler(KanalvaxelError)
    async def _ours(_request: Request, exc: KanalvaxelError) -> JSONResponse:
        if isinstance(exc, UnavailableError):
            return unavailable(exc)
        for kind, status, slug, title in _STATUS:
            if isinstance(exc, kind):
                field = getattr(exc, "field", None)
                detail = getattr(exc, "message", None) or str(exc)
                detail = f"{field}: {detail}" if field and not detail.startswith(f"{field}:") else detail
                return problem(status, slug, title, detail, field=field)
        log.error("unmapped error: %r", exc)
        return problem(500, "internal", "Internal error", "an internal error occurred")

    @app.exception_handler(RequestValidationError)
    async def _payload(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            where = _loc(tuple(e["loc"]))
            errors.append({"field": where, "message": str(e["msg"])} if where else {"message": str(e["msg"])})
        first = exc.errors()[0] if exc.errors() else {"type": "", "loc": ()}
        if first.get("type") == "json_invalid":
            # No `field`: "body" would name the letter's own field of that name.
            return problem(400, "malformed-json", "Malformed JSON", "the request body is not valid JSON")
        if first.get("type") == "missing" and tuple(first.get("loc", ()))[:1] == ("header",):
            name = _loc(tuple(first["loc"])[1:])
            return problem(
                400, "missing-header", "Missing header", f"the {name} header is required", field=name
            )
        summary = "; ".join(f"{e.get('field', 'the request body')}: {e['message']}" for e in errors[:5])
        return problem(
            422,
            "validation",
            "Invalid request",
            summary,
            field=errors[0].get("field") if errors else None,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return problem(413, "too-large", "Request too large", str(exc.detail))
        # Starlette's own headers go with it: Allow on a 405 says which methods the resource has.
        return problem(
            exc.status_code, "http", str(exc.detail), str(exc.detail), headers=dict(exc.headers or {}) or None
        )


def internal_error() -> JSONResponse:
    """What a client sees of a bug: no detail (the traceback is in our log, once)."""
    return problem(500, "internal", "Internal error", "an internal error occurred")


#: Declared on routes so the OpenAPI file documents every error answer.
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {
            "model": Problem,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            "description": next((t for _k, st, _s, t in _STATUS if st == s), "Error"),
        }
        for s in statuses
    }
