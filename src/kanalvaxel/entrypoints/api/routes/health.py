from __future__ import annotations

import os
import tempfile

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kanalvaxel.domain.errors import UnavailableError
from kanalvaxel.entrypoints.api.deps import ContainerDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the database and configured dependencies answer",
    responses={503: {"description": "Not ready; `checks` says what failed"}},
)
def readyz(c: ContainerDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with c.uow() as uow:
            uow.ping()
        checks["database"] = "ok"
    except UnavailableError as exc:
        checks["database"] = f"failed: {exc.message}"
    except Exception as exc:
        checks["database"] = f"failed: {type(exc).__name__}"
    if c.printing is not None:
        spool = c.settings.print.spool_dir
        try:
            spool.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=spool, prefix=".ready-")
            os.close(fd)
            os.unlink(name)
            checks["print_spool"] = "ok"
        except OSError as exc:
            checks["print_spool"] = f"failed: {exc.strerror}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
    )
