"""The FastAPI app factory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from kanalvaxel import __version__
from kanalvaxel.bootstrap import Container
from kanalvaxel.entrypoints.api import errors
from kanalvaxel.entrypoints.api.guard import Guard
from kanalvaxel.entrypoints.api.routes import health, recipients, shipments

#: Where the documentation pages' own scripts and styles are served.
DOCS_ASSETS = "/docs/assets"


def create_app(
    container: Container,
    *,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_startup:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown:
                on_shutdown()

    # Swagger UI (/docs) and ReDoc (/redoc) with their scripts and styles served from the package, never a
    # CDN: an installation on a network without internet shows them too.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="kanalväxel",
        version=__version__,
        description=(
            "Send letters to people and companies through Mina meddelanden, encrypted e-mail or print. "
            "Every `/v1` call needs an API key (`Authorization: Bearer …`). Errors are "
            "`application/problem+json` (RFC 9457) and name the field at fault."
        ),
        lifespan=lifespan,
    )
    app.state.container = container
    errors.install(app)
    max_body = int(container.settings.limits.max_total_attachment_bytes * 1.4) + 1024 * 1024

    app.add_middleware(
        Guard,
        max_body=max_body,
        authenticate=container.clients.authenticate,
        remembered=container.clients.remembered,
    )
    app.include_router(shipments.router)
    app.include_router(recipients.router)
    app.include_router(health.router)
    app.openapi = lambda: _problem_only_openapi(app)  # type: ignore[method-assign]
    return app


def _problem_only_openapi(app: FastAPI) -> dict[str, Any]:
    """Error answers are application/problem+json only; FastAPI also lists application/json for them."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in doc.get("paths", {}).values():
            for op in path.values():
                for status, resp in op.get("responses", {}).items():
                    content = resp.get("content", {})
                    if status.startswith(("4", "5")) and "application/json" in content:
                        # FastAPI adds its own 422 (HTTPValidationError) to routes with parameters that
                        # do not declare one; our handler renders that as a problem as well.
                        content.pop("application/json")
                        content.setdefault(
                            errors.PROBLEM, {"schema": {"$ref": "#/components/schemas/Problem"}}
                        )
        schemas = doc.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            if f'"#/components/schemas/{unused}"' not in json.dumps(doc):
                schemas.pop(unused, None)
        app.openapi_schema = doc
    return app.openapi_schema
